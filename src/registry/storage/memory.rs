//! The in-memory backend: everything in maps behind one lock, with the filesystem backend's semantics (the shared
//! suite runs against both). For tests (the in-process tier, the service's own tests) and small setups.
//!
//! Bounded by nothing but memory, and it keeps nothing across a restart of the process: the one guarantee of the
//! trait it cannot give. Commits, links, tags and manifests are atomic because each call changes the maps under the
//! lock in one step; the lock is never held across an await. Upload times come from a [`Clock`](crate::clock::Clock),
//! so tests age uploads by moving a `ManualClock`. Like every backend, it never verifies digests and knows no HTTP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{
    BlobContent, ByteRange, ByteStream, Result, Storage, StorageError, StoredManifest, UploadInfo,
    UploadWriter,
};
use crate::clock::{self, SharedClock};
use crate::registry::names::{Digest, RepoName, Tag, UploadId};

/// Largest chunk a blob is streamed out in, as the filesystem backend reads it.
const READ_CHUNK: usize = 256 * 1024;

/// Everything the registry keeps, in this process's memory.
pub struct MemoryStorage {
    state: Mutex<State>,
    clock: SharedClock,
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Bytes>,
    /// Each upload behind a lock of its own, which its writer holds a handle to (as a file's writer holds the open
    /// file): a writer of an upload deleted meanwhile writes into nothing anybody reads.
    uploads: HashMap<UploadId, Arc<Mutex<Upload>>>,
    repositories: BTreeMap<RepoName, Repository>,
}

struct Upload {
    /// What `upload_create` was given; its `size` is not kept here but in `size`.
    info: UploadInfo,
    /// The bytes received, as they came.
    chunks: Vec<Bytes>,
    size: u64,
    /// When the upload was created, last written or truncated.
    modified: SystemTime,
}

impl Upload {
    /// Cuts to `size` bytes, or pads with zeros up to it.
    fn set_len(&mut self, size: u64) {
        if size >= self.size {
            let pad = usize::try_from(size - self.size).unwrap_or(usize::MAX);
            if pad > 0 {
                self.chunks.push(Bytes::from(vec![0; pad]));
            }
        } else {
            let mut kept = 0u64;
            let mut chunks = Vec::with_capacity(self.chunks.len());
            for chunk in self.chunks.drain(..) {
                let room = size - kept;
                if room == 0 {
                    break;
                }
                let take = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                kept += take as u64;
                chunks.push(chunk.slice(..take));
            }
            self.chunks = chunks;
        }
        self.size = size;
    }

    /// Up to `max` bytes from `offset`.
    fn read_at(&self, offset: u64, max: usize) -> Bytes {
        let mut out = BytesMut::new();
        let mut start = 0u64;
        for chunk in &self.chunks {
            let end = start + chunk.len() as u64;
            if end > offset && out.len() < max {
                let from = usize::try_from(offset.saturating_sub(start)).unwrap_or(usize::MAX);
                let want = (max - out.len()).min(chunk.len() - from);
                if out.is_empty() && want == max {
                    // Within one chunk: no copy.
                    return chunk.slice(from..from + want);
                }
                out.extend_from_slice(&chunk[from..from + want]);
            }
            start = end;
        }
        out.freeze()
    }

    /// All the bytes, in one piece.
    fn contents(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            chunks => {
                let mut all = BytesMut::with_capacity(usize::try_from(self.size).unwrap_or(0));
                for chunk in chunks {
                    all.extend_from_slice(chunk);
                }
                all.freeze()
            }
        }
    }
}

#[derive(Default)]
struct Repository {
    /// Set by the first blob link, manifest or tag, and never unset: as on disk, where the directories stay, a
    /// repository that once had content is listed (and has a tag list) even when all of it was removed since.
    /// Referrers alone do not make a repository.
    has_content: bool,
    blobs: BTreeSet<Digest>,
    /// Each manifest's media type; its bytes are the blob of the same digest.
    manifests: HashMap<Digest, String>,
    tags: BTreeMap<Tag, Digest>,
    /// The descriptors of each subject's referrers, by `<alg>-<hex>` of the referrer (the order on disk).
    referrers: HashMap<Digest, BTreeMap<String, Bytes>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryStorage {
    /// An empty store on the real clock.
    pub fn new() -> Self {
        Self::with_clock(clock::system())
    }

    /// An empty store whose upload times come from `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        MemoryStorage {
            state: Mutex::default(),
            clock,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn upload(&self, id: &UploadId) -> Result<Arc<Mutex<Upload>>> {
        self.state()
            .uploads
            .get(id)
            .cloned()
            .ok_or_else(|| StorageError::UploadMissing(id.clone()))
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

/// `bytes` as a stream of chunks of at most [`READ_CHUNK`] bytes (slices, no copies).
fn chunked(bytes: Bytes) -> ByteStream {
    let chunks: Vec<io::Result<Bytes>> = (0..bytes.len())
        .step_by(READ_CHUNK)
        .map(|start| Ok(bytes.slice(start..bytes.len().min(start + READ_CHUNK))))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

struct MemoryUploadWriter {
    upload: Arc<Mutex<Upload>>,
    clock: SharedClock,
    written: u64,
}

#[async_trait]
impl UploadWriter for MemoryUploadWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.write_batch(vec![chunk]).await
    }

    async fn write_batch(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        let mut upload = lock(&self.upload);
        for chunk in chunks.into_iter().filter(|chunk| !chunk.is_empty()) {
            upload.size += chunk.len() as u64;
            upload.chunks.push(chunk);
            upload.modified = self.clock.system();
        }
        self.written = upload.size;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64> {
        Ok(lock(&self.upload).size)
    }

    fn written(&self) -> u64 {
        self.written
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .state()
            .blobs
            .get(digest)
            .map(|bytes| bytes.len() as u64))
    }

    async fn blob_read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobContent>> {
        let Some(bytes) = self.state().blobs.get(digest).cloned() else {
            return Ok(None);
        };
        let size = bytes.len() as u64;
        let stream = match range {
            None => chunked(bytes),
            Some(range) if range.last < size => {
                // Both ends are below the blob's length, which is a usize.
                chunked(bytes.slice(range.first as usize..=range.last as usize))
            }
            // The caller checks ranges against the size; a wrong one ends the stream as a short file does.
            Some(_) => Box::pin(futures_util::stream::iter([Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range beyond the {size} bytes of blob {digest}"),
            ))])),
        };
        Ok(Some(BlobContent { size, stream }))
    }

    async fn upload_create(&self, id: &UploadId, info: &UploadInfo) -> Result<()> {
        let upload = Upload {
            info: UploadInfo {
                size: 0,
                ..info.clone()
            },
            chunks: Vec::new(),
            size: 0,
            modified: self.clock.system(),
        };
        self.state()
            .uploads
            .insert(id.clone(), Arc::new(Mutex::new(upload)));
        Ok(())
    }

    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>> {
        let Some(upload) = self.state().uploads.get(id).cloned() else {
            return Ok(None);
        };
        let upload = lock(&upload);
        Ok(Some(UploadInfo {
            size: upload.size,
            ..upload.info.clone()
        }))
    }

    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
        let upload = self.upload(id)?;
        let written = lock(&upload).size;
        Ok(Box::new(MemoryUploadWriter {
            upload,
            clock: self.clock.clone(),
            written,
        }))
    }

    async fn upload_read(&self, id: &UploadId) -> Result<ByteStream> {
        let upload = self.upload(id)?;
        let chunks: Vec<io::Result<Bytes>> = lock(&upload).chunks.iter().cloned().map(Ok).collect();
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }

    async fn upload_read_at(&self, id: &UploadId, offset: u64, max: usize) -> Result<Bytes> {
        let upload = self.upload(id)?;
        let read = lock(&upload).read_at(offset, max);
        Ok(read)
    }

    async fn upload_truncate(&self, id: &UploadId, size: u64) -> Result<()> {
        let upload = self.upload(id)?;
        let mut upload = lock(&upload);
        upload.set_len(size);
        upload.modified = self.clock.system();
        Ok(())
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        let mut state = self.state();
        let upload = state
            .uploads
            .get(id)
            .cloned()
            .ok_or_else(|| StorageError::UploadMissing(id.clone()))?;
        // As on disk: content already stored is kept, and the upload is only removed.
        if !state.blobs.contains_key(digest) {
            let mut upload = lock(&upload);
            if upload.size != size {
                return Err(StorageError::Corrupt(format!(
                    "upload {id} holds {} bytes, {size} were verified; not committed",
                    upload.size
                )));
            }
            let contents = upload.contents();
            upload.chunks.clear();
            upload.size = 0;
            state.blobs.insert(digest.clone(), contents);
        }
        state.uploads.remove(id);
        Ok(())
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        self.state().uploads.remove(id);
        Ok(())
    }

    async fn uploads(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        Ok(self
            .state()
            .uploads
            .iter()
            .map(|(id, upload)| (id.clone(), lock(upload).modified))
            .collect())
    }

    async fn upload_modified(&self, id: &UploadId) -> Result<Option<SystemTime>> {
        Ok(self
            .state()
            .uploads
            .get(id)
            .map(|upload| lock(upload).modified))
    }

    async fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let mut state = self.state();
        let repository = state.repositories.entry(repo.clone()).or_default();
        repository.has_content = true;
        repository.blobs.insert(digest.clone());
        Ok(())
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .state()
            .repositories
            .get(repo)
            .is_some_and(|repository| repository.blobs.contains(digest)))
    }

    async fn blob_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .state()
            .repositories
            .get_mut(repo)
            .is_some_and(|repository| repository.blobs.remove(digest)))
    }

    async fn blobs_linked(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        Ok(self
            .state()
            .repositories
            .get(repo)
            .map(|repository| repository.blobs.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        Ok(self.state().blobs.remove(digest).is_some())
    }

    async fn manifest_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: &StoredManifest,
    ) -> Result<()> {
        let mut state = self.state();
        state
            .blobs
            .entry(digest.clone())
            .or_insert_with(|| manifest.bytes.clone());
        let repository = state.repositories.entry(repo.clone()).or_default();
        repository.has_content = true;
        repository
            .manifests
            .insert(digest.clone(), manifest.media_type.clone());
        Ok(())
    }

    async fn manifest_get(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>> {
        let state = self.state();
        let Some(media_type) = state
            .repositories
            .get(repo)
            .and_then(|repository| repository.manifests.get(digest))
        else {
            return Ok(None);
        };
        // A manifest whose content was deleted is an error, as the missing file is on disk.
        let bytes = state.blobs.get(digest).cloned().ok_or_else(|| {
            StorageError::Corrupt(format!("manifest {repo}@{digest} has no content"))
        })?;
        Ok(Some(StoredManifest {
            media_type: media_type.clone(),
            bytes,
        }))
    }

    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .state()
            .repositories
            .get_mut(repo)
            .is_some_and(|repository| repository.manifests.remove(digest).is_some()))
    }

    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let mut state = self.state();
        let repository = state.repositories.entry(repo.clone()).or_default();
        repository.has_content = true;
        repository.tags.insert(tag.clone(), digest.clone());
        Ok(())
    }

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        Ok(self
            .state()
            .repositories
            .get(repo)
            .and_then(|repository| repository.tags.get(tag).cloned()))
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        Ok(self
            .state()
            .repositories
            .get_mut(repo)
            .is_some_and(|repository| repository.tags.remove(tag).is_some()))
    }

    /// A true compare-and-delete: the read and the removal happen under one lock.
    async fn tag_delete_if(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<bool> {
        let mut state = self.state();
        let Some(repository) = state.repositories.get_mut(repo) else {
            return Ok(false);
        };
        if repository.tags.get(tag) == Some(digest) {
            repository.tags.remove(tag);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>> {
        Ok(self
            .state()
            .repositories
            .get(repo)
            .filter(|repository| repository.has_content)
            .map(|repository| repository.tags.keys().cloned().collect()))
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        Ok(self
            .state()
            .repositories
            .iter()
            .filter(|(_, repository)| repository.has_content)
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn referrer_add(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &[u8],
    ) -> Result<()> {
        self.state()
            .repositories
            .entry(repo.clone())
            .or_default()
            .referrers
            .entry(subject.clone())
            .or_default()
            .insert(referrer_key(referrer), Bytes::copy_from_slice(descriptor));
        Ok(())
    }

    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        if let Some(referrers) = self
            .state()
            .repositories
            .get_mut(repo)
            .and_then(|repository| repository.referrers.get_mut(subject))
        {
            referrers.remove(&referrer_key(referrer));
        }
        Ok(())
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>> {
        Ok(self
            .state()
            .repositories
            .get(repo)
            .and_then(|repository| repository.referrers.get(subject))
            .map(|referrers| referrers.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn check_writable(&self) -> Result<()> {
        Ok(())
    }
}

/// The key referrers are ordered by: the file name the filesystem backend gives them.
fn referrer_key(referrer: &Digest) -> String {
    format!("{}-{}", referrer.algorithm().name(), referrer.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_backend_passes_the_shared_suite() {
        super::super::suite::run(&MemoryStorage::new()).await;
    }

    /// Reads across the chunks an upload was written in, and a truncate that cuts one of them.
    #[test]
    fn an_upload_reads_and_cuts_across_its_chunks() {
        let mut upload = Upload {
            info: UploadInfo {
                repository: "memory/chunks".into(),
                size: 0,
                started_unix: 0,
                monolithic: false,
            },
            chunks: ["ab", "cde", "f"]
                .into_iter()
                .map(|part| Bytes::from_static(part.as_bytes()))
                .collect(),
            size: 6,
            modified: SystemTime::UNIX_EPOCH,
        };
        let check = |upload: &Upload, offset: u64, max: usize, expected: &str| {
            assert_eq!(
                upload.read_at(offset, max),
                Bytes::from(expected.to_owned()),
                "read_at({offset}, {max})"
            );
        };
        check(&upload, 0, 6, "abcdef");
        check(&upload, 1, 3, "bcd");
        check(&upload, 2, 3, "cde");
        check(&upload, 3, 10, "def");
        check(&upload, 5, 1, "f");
        check(&upload, 6, 1, "");
        upload.set_len(3);
        check(&upload, 0, 10, "abc");
        assert_eq!(upload.contents(), Bytes::from_static(b"abc"));
        upload.set_len(5);
        assert_eq!(upload.contents(), Bytes::from_static(b"abc\0\0"));
    }

    /// The caller checks ranges against the blob's size; one beyond it ends the stream with an error, as a file
    /// shorter than recorded does on disk, instead of panicking on the slice.
    #[tokio::test]
    async fn a_range_beyond_the_blob_is_an_error_in_the_stream() {
        use futures_util::StreamExt;
        let storage = MemoryStorage::new();
        let id = UploadId::new_random();
        let info = UploadInfo {
            repository: "memory/range".into(),
            size: 0,
            started_unix: 0,
            monolithic: false,
        };
        storage.upload_create(&id, &info).await.expect("create");
        let mut writer = storage.upload_writer(&id).await.expect("writer");
        writer
            .write(Bytes::from_static(b"four"))
            .await
            .expect("write");
        writer.finish().await.expect("finish");
        let digest = Digest::sha256_of(b"four");
        storage
            .upload_commit(&id, &digest, 4)
            .await
            .expect("commit");
        let content = storage
            .blob_read(&digest, Some(ByteRange { first: 2, last: 9 }))
            .await
            .expect("read")
            .expect("present");
        assert_eq!(content.size, 4);
        let first = content.stream.into_future().await.0.expect("one item");
        assert!(first.is_err(), "{first:?}");
    }
}
