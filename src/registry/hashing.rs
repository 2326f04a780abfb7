//! Hashing content while it streams: a [`Hasher`] for the supported algorithms, [`update_blocking`] that hashes one
//! batch on the blocking pool, and a [`HashPipe`] that runs a hasher on a blocking thread of its own.

use bytes::Bytes;
use sha2::{Digest as _, Sha256, Sha512};
use tokio::sync::mpsc;

use super::names::{Algorithm, Digest};

/// An incremental hash of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::default()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn digest(self) -> Digest {
        let algorithm = self.algorithm();
        let hex = match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        Digest::from_parts(algorithm, hex)
    }
}

/// Hashes `chunks` in one short task on the blocking pool and gives the hasher back: nothing is held between
/// batches, so a client's pace never costs a thread.
pub async fn update_blocking(hasher: Hasher, chunks: Vec<Bytes>) -> Result<Hasher, PipeClosed> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        for chunk in &chunks {
            hasher.update(chunk);
        }
        hasher
    })
    .await
    .map_err(|_| PipeClosed)
}

/// A hasher fed from async code and run on the blocking pool. It holds a blocking thread until it is finished, so
/// it is only for content whose pace berth controls (a proxy fetch from an upstream), never a client's upload.
pub struct HashPipe {
    tx: mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<Hasher>,
}

impl HashPipe {
    pub fn spawn(hasher: Hasher) -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(8);
        let done = tokio::task::spawn_blocking(move || {
            let mut hasher = hasher;
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        HashPipe { tx, done }
    }

    /// Hashes `chunk` (a cheap reference-counted clone of what is being written).
    pub async fn feed(&self, chunk: Bytes) -> Result<(), PipeClosed> {
        self.tx.send(chunk).await.map_err(|_| PipeClosed)
    }

    /// Waits for everything fed so far to be hashed and returns the hasher.
    pub async fn finish(self) -> Result<Hasher, PipeClosed> {
        drop(self.tx);
        self.done.await.map_err(|_| PipeClosed)
    }
}

/// The hashing thread is gone (it panicked or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("hashing task stopped")]
pub struct PipeClosed;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_hashes_like_one_shot() {
        let content: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let pipe = HashPipe::spawn(Hasher::new(algorithm));
            for chunk in content.chunks(65_536) {
                pipe.feed(Bytes::copy_from_slice(chunk))
                    .await
                    .expect("feed");
            }
            let digest = pipe.finish().await.expect("finish").digest();
            assert_eq!(digest, Digest::compute(algorithm, &content));
        }
    }

    #[tokio::test]
    async fn batches_hash_like_one_shot() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut hasher = Hasher::new(algorithm);
            for batch in content.chunks(100_000) {
                let chunks = batch.chunks(7_000).map(Bytes::copy_from_slice).collect();
                hasher = update_blocking(hasher, chunks).await.expect("hash");
            }
            assert_eq!(hasher.digest(), Digest::compute(algorithm, &content));
        }
    }
}
