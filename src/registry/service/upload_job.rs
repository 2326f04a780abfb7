//! One request's change to an upload, in a task of its own: the body fed over a channel, batched, written and hashed
//! on the blocking pool, and for a closing `PUT` the digest check and the commit under the content gate. On any
//! failure (the request going away included) the upload is rolled back before the session's lock is released.

use std::fmt::Display;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{SessionGuard, SessionMap, UploadHash};
use crate::registry::error::{RegistryError, Result};
use crate::registry::hashing::{self, Hasher};
use crate::registry::names::{Digest, RepoName, UploadId};
use crate::registry::storage::{Storage, StorageError, UploadWriter};

/// Largest batch of received bytes handed to one write and one hash task. While a batch is written and hashed, the
/// next one is received, so each upload holds at most two batches in memory.
pub(super) const UPLOAD_BATCH: usize = 512 * 1024;

/// A chunk that does not start where the upload ends: 416 with what was received.
pub(super) fn out_of_order(
    id: &UploadId,
    location: &str,
    received: u64,
    start: u64,
) -> RegistryError {
    RegistryError::ChunkOutOfOrder {
        upload: id.to_string(),
        location: location.to_owned(),
        received,
        start,
    }
}

/// A message from a request to the task that appends its body.
pub(super) enum Feed {
    Chunk(Bytes),
    /// The body ended. A channel that closes without it means the request went away (or its body broke).
    End,
}

/// Chunks that may wait between a request and its upload task. The channel moves the received `Bytes` as they
/// are; what it holds is bounded by this many of the chunks the HTTP layer hands out.
pub(super) const FEED_DEPTH: usize = 4;

/// The registry's parts an upload task needs; all shared, so the task can outlive the request that spawned it.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) sessions: SessionMap,
    pub(super) content_gate: Arc<tokio::sync::RwLock<()>>,
}

impl Shared {
    pub(super) fn forget(&self, id: &UploadId) {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }
}

/// Where a request's body arrives, and the writer that appends it.
pub(super) struct BodySink {
    pub(super) feed: mpsc::Receiver<Feed>,
    pub(super) writer: Box<dyn UploadWriter>,
}

/// One request's change to an upload: the append of its body, and for a closing `PUT` the digest check and the
/// commit. It runs in a task of its own, which owns the session's lock and the stream permit, and is fed the body
/// over a channel; the request only reads its body into the channel and waits for the outcome.
///
/// Invariant: the lock is released only when the upload is consistent again: every write started has landed, and
/// after a failure — a broken body, a storage error, a bad length or digest, or the request going away (its future
/// dropped when the client resets the connection) — the upload is cut back to its size before the request and the
/// session keeps its hash of that size. So no later request on the upload (a closing `PUT`) can see, hash or commit
/// bytes that a write still in flight is adding.
pub(super) struct UploadJob {
    pub(super) shared: Shared,
    pub(super) id: UploadId,
    /// Held until the job ends; `None` inside while the job runs (the hash is in `before` and the pipeline).
    pub(super) session: SessionGuard,
    /// The upload's size and running hash before this request.
    pub(super) size: u64,
    pub(super) before: UploadHash,
    /// The chunk's `Content-Range` (first, last) and the length it announces.
    pub(super) announced: Option<(u64, u64, u64)>,
    /// `None` for a closing `PUT` without a body.
    pub(super) body: Option<BodySink>,
    /// The stream permit, held until the append is over (rolled back included).
    pub(super) stream: Option<OwnedSemaphorePermit>,
    /// For a closing `PUT`: the repository to link the blob into and the digest it must have.
    pub(super) finish: Option<(RepoName, Digest)>,
}

impl UploadJob {
    /// Returns the upload's new size.
    pub(super) async fn run(mut self) -> Result<u64> {
        let hash = match self.body.take() {
            Some(sink) => self.append(sink).await?,
            None => self.before.clone(),
        };
        drop(self.stream.take());
        let Some((repo, digest)) = self.finish.take() else {
            let size = hash.hashed;
            *self.session = Some(hash);
            return Ok(size);
        };
        let (id, size, storage) = (&self.id, self.size, &self.shared.storage);
        let actual = hash.hasher.clone().digest();
        if actual != digest {
            let total = hash.hashed;
            if total != size {
                storage.upload_truncate(id, size).await?;
            }
            *self.session = Some(self.before.clone());
            return Err(RegistryError::DigestInvalid(format!(
                "upload of {total} bytes has digest {actual}, not {digest}; the upload keeps the {size} bytes \
                 received before this request, so the PUT can be retried"
            )));
        }
        let gate = self.shared.content_gate.read().await;
        if let Err(e) = storage.upload_commit(id, &digest, hash.hashed).await {
            drop(gate);
            // A failed commit keeps the upload: put it back as it was before this request, so that the same PUT
            // can be retried (review finding: the PUT's bytes stayed, and every retry then had the wrong digest).
            if hash.hashed != size {
                if let Err(truncate) = storage.upload_truncate(id, size).await {
                    log::warn!("upload {id}: rolling back a failed commit: {truncate}");
                }
            }
            *self.session = Some(self.before.clone());
            return Err(e.into());
        }
        let linked = storage.blob_link(&repo, &digest).await;
        drop(gate);
        // The upload became the blob, linked or not, so the session has nothing left to continue.
        let UploadJob {
            shared,
            id,
            session,
            ..
        } = self;
        drop(session);
        shared.forget(&id);
        linked?;
        log::info!("blob {digest} ({} bytes) pushed to {repo}", hash.hashed);
        Ok(hash.hashed)
    }

    /// Appends the body; on failure the upload is cut back to `size` and the session keeps `before`, so a retry
    /// from the reported offset is consistent.
    pub(super) async fn append(&mut self, sink: BodySink) -> Result<UploadHash> {
        let appended = pipe(&self.id, sink, self.before.clone()).await;
        let checked = appended.and_then(|appended| {
            let received = appended.hashed.checked_sub(self.size).ok_or_else(|| {
                RegistryError::Storage(StorageError::Corrupt(format!(
                    "upload {} shrank from {} to {} bytes while appending",
                    self.id, self.size, appended.hashed
                )))
            })?;
            match self.announced {
                Some((start, end, length)) if length != received => {
                    Err(RegistryError::SizeInvalid(format!(
                        "Content-Range {start}-{end} announces {length} bytes, the body had {received}"
                    )))
                }
                _ => Ok(appended),
            }
        });
        if checked.is_err() {
            // After the last write (the pipe waited for it), never before a late one.
            match self
                .shared
                .storage
                .upload_truncate(&self.id, self.size)
                .await
            {
                Ok(()) => *self.session = Some(self.before.clone()),
                // The hash is rebuilt from what is stored, whatever that is, by the next request.
                Err(e) => log::warn!("upload {}: rolling back a failed append: {e}", self.id),
            }
        }
        checked
    }
}

/// The length a chunk's `Content-Range` (inclusive) announces; every number in it comes from the client.
pub(super) fn chunk_length(range: Option<(u64, u64)>) -> Result<Option<(u64, u64, u64)>> {
    let Some((start, end)) = range else {
        return Ok(None);
    };
    match end.checked_sub(start).and_then(|d| d.checked_add(1)) {
        Some(length) => Ok(Some((start, end, length))),
        None => Err(RegistryError::BlobUploadInvalid(format!(
            "Content-Range {start}-{end} does not describe a chunk"
        ))),
    }
}

/// Reads `body` into the channel of the task that appends it, then waits for the task's outcome. A body that
/// breaks off gets no end marker: the task sees its channel close and rolls the request back, just as when this
/// future is dropped; the client then hears the body's error.
pub(super) async fn feed_task<T, B, E>(
    task: tokio::task::JoinHandle<Result<T>>,
    feed: Option<(mpsc::Sender<Feed>, B)>,
) -> Result<T>
where
    B: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    let mut broken = None;
    if let Some((feed, mut body)) = feed {
        loop {
            let next = tokio::select! {
                biased;
                next = body.next() => next,
                // The task stopped early (it failed): no need to wait for more of the body to hear why.
                () = feed.closed() => break,
            };
            let message = match next {
                None => Feed::End,
                Some(Ok(chunk)) => Feed::Chunk(chunk),
                Some(Err(e)) => {
                    broken = Some(RegistryError::Body(e.to_string()));
                    break;
                }
            };
            let end = matches!(message, Feed::End);
            // A closed channel: the task stopped early, and its outcome says why.
            if feed.send(message).await.is_err() || end {
                break;
            }
        }
    }
    let outcome = task.await.map_err(|e| {
        RegistryError::Storage(StorageError::Io {
            what: "upload task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })?;
    match broken {
        Some(e) => Err(e),
        None => outcome,
    }
}

/// The request went away before its body ended. Nobody hears it unless the body broke, and then the body's error
/// is what the client gets.
pub(super) fn abandoned(id: &UploadId) -> RegistryError {
    RegistryError::Body(format!("the request on upload {id} ended before its body"))
}

/// Streams the chunks arriving on the sink's channel into its writer and the hasher. Received bytes are batched;
/// each batch is written and hashed by short tasks on the blocking pool while the next batch is received (a
/// pipeline of depth one), so no thread waits for the client and each upload holds at most two batches in memory.
/// Returns only after the batch in flight has landed, whatever the outcome.
pub(super) async fn pipe(id: &UploadId, sink: BodySink, hash: UploadHash) -> Result<UploadHash> {
    let BodySink { mut feed, writer } = sink;
    let mut writer = Some(writer);
    let mut hasher = Some(hash.hasher);
    let mut hashed = hash.hashed;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    let mut ended = false;
    let mut pending: Option<futures_util::future::BoxFuture<'static, Batched>> = None;
    let copied: Result<()> = loop {
        if pending.is_none() && !batch.is_empty() {
            let (Some(current), Some(out)) = (hasher.take(), writer.take()) else {
                break Err(pipe_failure(hashing::PipeClosed));
            };
            let chunks = std::mem::take(&mut batch);
            let len = std::mem::take(&mut batched) as u64;
            pending = Some(Box::pin(write_and_hash(out, current, chunks, len)));
        }
        if pending.is_none() && ended {
            break Ok(());
        }
        let receive = !ended && batched < UPLOAD_BATCH;
        tokio::select! {
            Some((out, done)) = futures_util::future::OptionFuture::from(pending.as_mut()), if pending.is_some() => {
                pending = None;
                writer = Some(out);
                match done {
                    Ok((next, len)) => {
                        hasher = Some(next);
                        hashed = match hashed.checked_add(len) {
                            Some(total) => total,
                            None => break Err(RegistryError::SizeInvalid("upload too large".into())),
                        };
                    }
                    Err(e) => break Err(e),
                }
            }
            next = feed.recv(), if receive => match next {
                None => break Err(abandoned(id)),
                Some(Feed::End) => ended = true,
                Some(Feed::Chunk(chunk)) => {
                    batched = batched.saturating_add(chunk.len());
                    batch.push(chunk);
                }
            },
            else => break Ok(()),
        }
    };
    // The request need not wait on a full channel while the batch in flight lands.
    drop(feed);
    let mut outcome = copied;
    if let Some(last) = pending.take() {
        let (out, done) = last.await;
        writer = Some(out);
        match done {
            Ok((next, len)) => {
                hasher = Some(next);
                hashed = hashed.saturating_add(len);
            }
            Err(e) => {
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
    }
    let size = match writer {
        Some(writer) => writer.finish().await,
        None => Err(StorageError::Io {
            what: format!("append to upload {id}"),
            source: std::io::Error::other("upload writer lost"),
        }),
    };
    outcome?;
    let size = size?;
    let hasher = hasher.ok_or_else(|| pipe_failure(hashing::PipeClosed))?;
    if size != hashed {
        return Err(RegistryError::Storage(StorageError::Corrupt(format!(
            "upload {id} holds {size} bytes after append, {hashed} were hashed"
        ))));
    }
    Ok(UploadHash { hasher, hashed })
}

/// A writer given back by [`write_and_hash`], with the hasher and length of the batch, or why it failed.
pub(super) type Batched = (Box<dyn UploadWriter>, Result<(Hasher, u64)>);

/// Writes one batch and hashes it at the same time, each on the blocking pool; gives the writer back.
pub(super) async fn write_and_hash(
    mut writer: Box<dyn UploadWriter>,
    hasher: Hasher,
    chunks: Vec<Bytes>,
    len: u64,
) -> Batched {
    let hashing = hashing::update_blocking(hasher, chunks.clone());
    let (hashed, written) = futures_util::future::join(hashing, writer.write_batch(chunks)).await;
    let result = match (written, hashed) {
        (Err(e), _) => Err(e.into()),
        (Ok(()), Err(e)) => Err(pipe_failure(e)),
        (Ok(()), Ok(hasher)) => Ok((hasher, len)),
    };
    (writer, result)
}

/// The hashing thread failing is the server's problem, not the client's.
pub(super) fn pipe_failure(e: hashing::PipeClosed) -> RegistryError {
    RegistryError::Storage(StorageError::Io {
        what: "hashing an upload".into(),
        source: std::io::Error::other(e.to_string()),
    })
}
