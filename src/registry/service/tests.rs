//! What the service's tests share: request bodies, a registry over memory (on a clock the test moves) or over a
//! temporary directory, and `Faulty`, a filesystem backend with faults a test switches on (slow writes, stale
//! listings, failing commits and deletes).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::Registry;
use crate::clock::SharedClock;
use crate::registry::names::{Digest, RepoName, Tag, UploadId};
use crate::registry::storage::fs::FsStorage;
use crate::registry::storage::memory::MemoryStorage;
use crate::registry::storage::{
    BlobContent, ByteRange, ByteStream, Storage, StorageError, StoredManifest, UploadInfo,
    UploadWriter,
};

pub(super) type Chunks = futures_util::stream::Iter<std::vec::IntoIter<std::io::Result<Bytes>>>;

pub(super) fn body(parts: &[&[u8]]) -> Chunks {
    let chunks: Vec<std::io::Result<Bytes>> = parts
        .iter()
        .map(|part| Ok(Bytes::copy_from_slice(part)))
        .collect();
    futures_util::stream::iter(chunks)
}

pub(super) fn registry() -> (tempfile::TempDir, Arc<Registry>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = FsStorage::open(dir.path()).expect("open storage");
    (dir, Arc::new(Registry::new(Arc::new(storage))))
}

/// A registry over the memory backend, both reading `clock`.
pub(super) fn memory_registry(clock: SharedClock) -> Arc<Registry> {
    let storage = MemoryStorage::with_clock(clock.clone());
    Arc::new(Registry::new(Arc::new(storage)).with_clock(clock))
}

pub(super) fn repo(name: &str) -> RepoName {
    RepoName::parse(name).expect("valid name")
}

pub(super) fn tag(name: &str) -> Tag {
    Tag::parse(name).expect("valid tag")
}

/// FsStorage with faults a test switches on: upload writes that take `write_delay` on the blocking pool (a slow
/// disk), counted when they start and when they land; a listing of uploads that reports each as last written
/// long ago (a listing taken before a request wrote to it); one upload whose delete fails.
pub(super) struct Faulty {
    pub(super) fs: FsStorage,
    pub(super) root: std::path::PathBuf,
    pub(super) write_delay: Duration,
    pub(super) writes_started: Arc<tokio::sync::watch::Sender<usize>>,
    pub(super) writes_landed: Arc<tokio::sync::watch::Sender<usize>>,
    pub(super) stale_listing: bool,
    pub(super) undeletable: Mutex<Option<UploadId>>,
    /// Commits that fail before they do anything (a full or read-only disk).
    pub(super) failing_commits: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    pub(super) fn new(root: &std::path::Path, write_delay: Duration) -> Faulty {
        Faulty {
            fs: FsStorage::open(root).expect("open storage"),
            root: root.to_owned(),
            write_delay,
            writes_started: Arc::new(tokio::sync::watch::channel(0).0),
            writes_landed: Arc::new(tokio::sync::watch::channel(0).0),
            stale_listing: false,
            undeletable: Mutex::new(None),
            failing_commits: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// Waits (with a deadline) until `counter` reaches `n`.
pub(super) async fn reached(counter: &tokio::sync::watch::Sender<usize>, n: usize, what: &str) {
    let mut seen = counter.subscribe();
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|count| *count >= n))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {n} {what}"))
        .expect("counter dropped");
}

/// Polls `done` until it holds, with a deadline.
pub(super) async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    done: impl Fn() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) struct SlowWriter {
    file: Option<std::fs::File>,
    delay: Duration,
    started: Arc<tokio::sync::watch::Sender<usize>>,
    landed: Arc<tokio::sync::watch::Sender<usize>>,
}

pub(super) type StorageResult<T> = std::result::Result<T, StorageError>;

#[async_trait::async_trait]
impl UploadWriter for SlowWriter {
    async fn write(&mut self, chunk: Bytes) -> StorageResult<()> {
        self.write_batch(vec![chunk]).await
    }

    async fn write_batch(&mut self, chunks: Vec<Bytes>) -> StorageResult<()> {
        use std::io::Write;
        let mut file = self.file.take().expect("writer has its file");
        let (delay, landed) = (self.delay, self.landed.clone());
        self.started.send_modify(|n| *n += 1);
        let (file, written) = tokio::task::spawn_blocking(move || {
            std::thread::sleep(delay);
            let written = chunks.iter().try_for_each(|chunk| file.write_all(chunk));
            landed.send_modify(|n| *n += 1);
            (file, written)
        })
        .await
        .expect("write task");
        self.file = Some(file);
        written.map_err(|source| StorageError::Io {
            what: "slow write".into(),
            source,
        })
    }

    async fn finish(mut self: Box<Self>) -> StorageResult<u64> {
        let file = self.file.take().expect("writer has its file");
        Ok(file.metadata().expect("stat upload").len())
    }

    fn written(&self) -> u64 {
        self.file
            .as_ref()
            .and_then(|file| file.metadata().ok())
            .map_or(0, |meta| meta.len())
    }
}

#[async_trait::async_trait]
impl Storage for Faulty {
    async fn blob_size(&self, d: &Digest) -> StorageResult<Option<u64>> {
        self.fs.blob_size(d).await
    }
    async fn blob_read(
        &self,
        d: &Digest,
        r: Option<ByteRange>,
    ) -> StorageResult<Option<BlobContent>> {
        self.fs.blob_read(d, r).await
    }
    async fn upload_create(&self, id: &UploadId, info: &UploadInfo) -> StorageResult<()> {
        self.fs.upload_create(id, info).await
    }
    async fn upload_info(&self, id: &UploadId) -> StorageResult<Option<UploadInfo>> {
        self.fs.upload_info(id).await
    }
    async fn upload_writer(&self, id: &UploadId) -> StorageResult<Box<dyn UploadWriter>> {
        let path = self.root.join("uploads").join(id.as_str()).join("data");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| StorageError::Io {
                what: "open upload".into(),
                source,
            })?;
        Ok(Box::new(SlowWriter {
            file: Some(file),
            delay: self.write_delay,
            started: self.writes_started.clone(),
            landed: self.writes_landed.clone(),
        }))
    }
    async fn upload_read(&self, id: &UploadId) -> StorageResult<ByteStream> {
        self.fs.upload_read(id).await
    }
    async fn upload_read_at(&self, id: &UploadId, o: u64, m: usize) -> StorageResult<Bytes> {
        self.fs.upload_read_at(id, o, m).await
    }
    async fn upload_truncate(&self, id: &UploadId, size: u64) -> StorageResult<()> {
        self.fs.upload_truncate(id, size).await
    }
    async fn upload_commit(&self, id: &UploadId, d: &Digest, size: u64) -> StorageResult<()> {
        use std::sync::atomic::Ordering;
        let fail = self
            .failing_commits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(StorageError::Io {
                what: format!("commit upload {id}"),
                source: std::io::Error::other("injected failure"),
            });
        }
        self.fs.upload_commit(id, d, size).await
    }
    async fn upload_delete(&self, id: &UploadId) -> StorageResult<()> {
        if self.undeletable.lock().expect("lock").as_ref() == Some(id) {
            return Err(StorageError::Io {
                what: format!("remove upload {id}"),
                source: std::io::Error::other("injected failure"),
            });
        }
        self.fs.upload_delete(id).await
    }
    async fn uploads(&self) -> StorageResult<Vec<(UploadId, SystemTime)>> {
        let mut uploads = self.fs.uploads().await?;
        if self.stale_listing {
            for (_, modified) in &mut uploads {
                *modified = UNIX_EPOCH;
            }
        }
        Ok(uploads)
    }
    async fn upload_modified(&self, id: &UploadId) -> StorageResult<Option<SystemTime>> {
        self.fs.upload_modified(id).await
    }
    async fn blob_link(&self, r: &RepoName, d: &Digest) -> StorageResult<()> {
        self.fs.blob_link(r, d).await
    }
    async fn blob_linked(&self, r: &RepoName, d: &Digest) -> StorageResult<bool> {
        self.fs.blob_linked(r, d).await
    }
    async fn blob_unlink(&self, r: &RepoName, d: &Digest) -> StorageResult<bool> {
        self.fs.blob_unlink(r, d).await
    }
    async fn blobs_linked(&self, r: &RepoName) -> StorageResult<Vec<Digest>> {
        self.fs.blobs_linked(r).await
    }
    async fn blob_delete(&self, d: &Digest) -> StorageResult<bool> {
        self.fs.blob_delete(d).await
    }
    async fn manifest_put(
        &self,
        r: &RepoName,
        d: &Digest,
        m: &StoredManifest,
    ) -> StorageResult<()> {
        self.fs.manifest_put(r, d, m).await
    }
    async fn manifest_get(
        &self,
        r: &RepoName,
        d: &Digest,
    ) -> StorageResult<Option<StoredManifest>> {
        self.fs.manifest_get(r, d).await
    }
    async fn manifest_delete(&self, r: &RepoName, d: &Digest) -> StorageResult<bool> {
        self.fs.manifest_delete(r, d).await
    }
    async fn tag_set(&self, r: &RepoName, t: &Tag, d: &Digest) -> StorageResult<()> {
        self.fs.tag_set(r, t, d).await
    }
    async fn tag_get(&self, r: &RepoName, t: &Tag) -> StorageResult<Option<Digest>> {
        self.fs.tag_get(r, t).await
    }
    async fn tag_delete(&self, r: &RepoName, t: &Tag) -> StorageResult<bool> {
        self.fs.tag_delete(r, t).await
    }
    async fn tags(&self, r: &RepoName) -> StorageResult<Option<Vec<Tag>>> {
        self.fs.tags(r).await
    }
    async fn repositories(&self) -> StorageResult<Vec<RepoName>> {
        self.fs.repositories().await
    }
    async fn referrer_add(
        &self,
        r: &RepoName,
        s: &Digest,
        f: &Digest,
        d: &[u8],
    ) -> StorageResult<()> {
        self.fs.referrer_add(r, s, f, d).await
    }
    async fn referrer_remove(&self, r: &RepoName, s: &Digest, f: &Digest) -> StorageResult<()> {
        self.fs.referrer_remove(r, s, f).await
    }
    async fn referrers(&self, r: &RepoName, s: &Digest) -> StorageResult<Vec<Bytes>> {
        self.fs.referrers(r, s).await
    }
    async fn check_writable(&self) -> StorageResult<()> {
        self.fs.check_writable().await
    }
}

/// An upload in `name` holding the 4 bytes `good`, acknowledged by a first PATCH (with `range`, if given).
pub(super) async fn upload_holding_good(
    registry: &Registry,
    name: &str,
    range: Option<(u64, u64)>,
) -> (RepoName, UploadId, String) {
    let repo = repo(name);
    let id = registry.upload_start(&repo).await.expect("start");
    let location = format!("/v2/{repo}/blobs/uploads/{id}");
    registry
        .upload_append(&repo, &id, &location, range, body(&[b"good"]))
        .await
        .expect("first PATCH");
    (repo, id, location)
}

/// Runs `request` until `writes` storage writes have started, then drops it, as actix drops the handler of a
/// request whose client reset its connection.
pub(super) async fn drop_mid_write<T: Send + 'static>(
    storage: &Faulty,
    writes: usize,
    request: impl std::future::Future<Output = T> + Send + 'static,
) {
    let task = tokio::spawn(request);
    reached(&storage.writes_started, writes, "writes started").await;
    task.abort();
    assert!(task.await.is_err(), "the request was dropped, not answered");
}

pub(super) fn faulty_registry(
    faulty: impl FnOnce(&std::path::Path) -> Faulty,
) -> (tempfile::TempDir, Arc<Faulty>, Arc<Registry>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(faulty(dir.path()));
    let registry = Arc::new(Registry::new(storage.clone()));
    (dir, storage, registry)
}

/// One chunk, then a client that sends nothing more (until its request is dropped).
pub(super) fn cut_off(
    chunk: &'static [u8],
) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin + Send {
    futures_util::stream::iter(vec![Ok(Bytes::from_static(chunk))])
        .chain(futures_util::stream::pending())
}

pub(super) async fn blob_bytes(registry: &Registry, repo: &RepoName, digest: &Digest) -> Vec<u8> {
    let (content, _) = registry
        .blob_read(repo, digest, |_| Ok(None))
        .await
        .expect("blob");
    let mut bytes = Vec::new();
    let mut stream = content.stream;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    bytes
}
