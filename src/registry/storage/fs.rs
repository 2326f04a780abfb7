//! The local filesystem backend: content-addressed, deduplicated, crash-safe.
//!
//! Layout under the data directory (documented in the README's architecture section):
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                      content, immutable once renamed into place
//! uploads/<id>/data, uploads/<id>/info.json          an upload in progress (its size is the file's length)
//! repositories/<name>/_blobs/<alg>/<hex>             empty file: the blob is visible in <name>
//! repositories/<name>/_manifests/<alg>/<hex>         the manifest's media type; its bytes are the blob <alg>:<hex>
//! repositories/<name>/_tags/<tag>                    the digest the tag points at
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>   the referrer's descriptor (JSON)
//! tmp/                                               files being written, renamed into place when complete
//! ```
//! Every file that becomes visible is written to `tmp/`, fsynced and renamed, so a crash leaves either the old or the
//! new state. Repository name components cannot start with `_` (grammar), so `_blobs` never collides with a child.
//! This is the only module that builds paths; it gets them only from validated names.

use std::fs::{self, File, OpenOptions};
use std::future::Future as _;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{
    BlobContent, ByteRange, ByteStream, Result, Storage, StorageError, StoredManifest, UploadInfo,
    UploadWriter,
};
use crate::registry::names::{Digest, RepoName, Tag, UploadId};

/// Read size when streaming a blob out.
const READ_CHUNK: usize = 256 * 1024;

pub struct FsStorage {
    root: PathBuf,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
    let what = what.into();
    move |source| StorageError::Io { what, source }
}

/// Runs blocking filesystem work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|join| StorageError::Io {
            what: "storage task".into(),
            source: io::Error::other(join.to_string()),
        })?
}

/// Small reads of metadata (a stat, a tag, a manifest) run on the calling worker: the handoff to the blocking pool
/// and back costs two context switches, several times the read itself, and dominated manifest GET profiles. Only
/// for files that are small by construction (manifests are at most 4 MiB); content is always read off the workers.
fn inline<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    f()
}

/// `Ok(None)` for a missing file, the error otherwise.
fn not_found_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Paths, all derived from validated names.
#[derive(Clone)]
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }
    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
    fn upload_data(&self, id: &UploadId) -> PathBuf {
        self.upload_dir(id).join("data")
    }
    fn upload_info(&self, id: &UploadId) -> PathBuf {
        self.upload_dir(id).join("info.json")
    }
    fn repo(&self, repo: &RepoName) -> PathBuf {
        let mut path = self.root.join("repositories");
        path.extend(repo.components());
        path
    }
    fn blob_link(&self, repo: &RepoName, digest: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }
    fn manifest(&self, repo: &RepoName, digest: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_manifests")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }
    fn tags(&self, repo: &RepoName) -> PathBuf {
        self.repo(repo).join("_tags")
    }
    fn tag(&self, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.tags(repo).join(tag.as_str())
    }
    fn referrers(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_referrers")
            .join(subject.algorithm().name())
            .join(subject.hex())
    }
    fn referrer(&self, repo: &RepoName, subject: &Digest, referrer: &Digest) -> PathBuf {
        self.referrers(repo, subject).join(format!(
            "{}-{}",
            referrer.algorithm().name(),
            referrer.hex()
        ))
    }
    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Writes `bytes` to `target` atomically: a temporary file, fsync, rename, fsync of the directory.
    fn write_atomic(&self, target: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp().join(uuid::Uuid::new_v4().simple().to_string());
        let what = || format!("write {}", target.display());
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            self.rename_into_place(&tmp, target)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err(what()))
    }

    /// Renames `from` to `to`, creating `to`'s directory, and fsyncs that directory so the rename is durable.
    fn rename_into_place(&self, from: &Path, to: &Path) -> io::Result<()> {
        let dir = to
            .parent()
            .ok_or_else(|| io::Error::other("target has no parent"))?;
        create_dir_all_durably(dir)?;
        fs::rename(from, to)?;
        File::open(dir)?.sync_all()
    }
}

/// Creates `dir` and any missing parents, fsyncing the parent of each directory it creates, so that after a power
/// loss a renamed file never survives without the directory it was renamed into.
fn create_dir_all_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current.filter(|p| !p.exists()) {
        missing.push(path);
        current = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

impl FsStorage {
    /// Opens (creating if needed) the data directory and clears leftovers of interrupted writes in `tmp/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["blobs", "uploads", "repositories", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(format!("create {}", path.display())))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(FsStorage { root })
    }

    fn layout(&self) -> Layout {
        Layout {
            root: self.root.clone(),
        }
    }
}

/// Streams `len` bytes of `file` from its current position, in reads of at most [`READ_CHUNK`] bytes on the blocking
/// pool. When a chunk is handed on, the read of the next one starts, so the disk read overlaps the network send (with
/// one read at a time and none ahead, pulls ran at about 0.7× of the read-ahead thread this replaced); a read never
/// waits for the consumer, so a client that stops reading holds the open file and at most two chunks, and no thread.
fn file_stream(file: File, len: u64) -> ByteStream {
    Box::pin(FileStream {
        file: Some(file),
        remaining: len,
        reading: None,
    })
}

type ChunkRead = tokio::task::JoinHandle<(File, io::Result<Bytes>)>;

struct FileStream {
    /// `None` while a read is in flight (the read owns it), or after the end or an error.
    file: Option<File>,
    /// Bytes not yet read from the file.
    remaining: u64,
    reading: Option<ChunkRead>,
}

impl FileStream {
    /// Starts reading the next chunk, unless one is in flight or everything has been read.
    fn read_next(&mut self) {
        if self.reading.is_some() || self.remaining == 0 {
            return;
        }
        let Some(mut file) = self.file.take() else {
            return;
        };
        let want = self.remaining.min(READ_CHUNK as u64) as usize;
        // Counted when the read starts, so the read ahead never asks for more than the blob's length.
        self.remaining -= want as u64;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let read = read_chunk(&mut file, want);
            (file, read)
        }));
    }
}

/// Reads exactly `want` bytes at the file's position.
fn read_chunk(file: &mut File, want: usize) -> io::Result<Bytes> {
    // read_to_end reads into the vector's spare capacity without zeroing it first (a memset of every chunk showed
    // in pull profiles); `take` stops it at `want` bytes.
    let mut buf = Vec::with_capacity(want);
    loop {
        match file.take((want - buf.len()) as u64).read_to_end(&mut buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob shorter than recorded",
                ))
            }
            Ok(_) if buf.len() == want => return Ok(Bytes::from(buf)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl futures_util::Stream for FileStream {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        this.read_next();
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let outcome = match std::pin::Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(outcome) => outcome,
        };
        this.reading = None;
        match outcome {
            Ok((file, Ok(chunk))) => {
                this.file = Some(file);
                this.read_next();
                Poll::Ready(Some(Ok(chunk)))
            }
            Ok((_, Err(e))) => {
                this.remaining = 0;
                Poll::Ready(Some(Err(e)))
            }
            Err(join) => {
                this.remaining = 0;
                Poll::Ready(Some(Err(io::Error::other(join.to_string()))))
            }
        }
    }
}

/// Appends to an upload. Each batch is written by one task on the blocking pool, which gives the file back when
/// done: no thread is held between batches, however slowly the client sends them.
struct FsUploadWriter {
    /// `None` only if a write task was lost (it panicked).
    file: Option<File>,
    what: String,
    /// The upload's size: its length when the writer was opened plus every batch written since. A failed batch
    /// may have written part of itself and is not counted (the caller truncates after a failed append).
    size: u64,
}

impl FsUploadWriter {
    fn lost(&self) -> StorageError {
        StorageError::Io {
            what: self.what.clone(),
            source: io::Error::other("upload writer stopped"),
        }
    }
}

#[async_trait]
impl UploadWriter for FsUploadWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.write_batch(vec![chunk]).await
    }

    async fn write_batch(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(self.lost());
        };
        let length: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        let written = tokio::task::spawn_blocking(move || {
            let result = chunks.iter().try_for_each(|chunk| file.write_all(chunk));
            (file, result)
        })
        .await;
        match written {
            Ok((file, result)) => {
                self.file = Some(file);
                result.map_err(io_err(self.what.clone()))?;
                self.size = self.size.saturating_add(length);
                Ok(())
            }
            Err(_) => Err(self.lost()),
        }
    }

    fn written(&self) -> u64 {
        self.size
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let Some(file) = self.file.take() else {
            return Err(self.lost());
        };
        let what = self.what.clone();
        blocking(move || file.metadata().map(|m| m.len()).map_err(io_err(what))).await
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.layout().blob(digest);
        inline(move || {
            not_found_is_none(fs::metadata(&path))
                .map(|meta| meta.map(|m| m.len()))
                .map_err(io_err(format!("stat {}", path.display())))
        })
    }

    async fn blob_read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobContent>> {
        let path = self.layout().blob(digest);
        let opened = blocking(move || {
            let what = format!("open {}", path.display());
            let Some(mut file) =
                not_found_is_none(File::open(&path)).map_err(io_err(what.clone()))?
            else {
                return Ok(None);
            };
            let size = file.metadata().map_err(io_err(what.clone()))?.len();
            let len = match range {
                Some(range) => {
                    file.seek(SeekFrom::Start(range.first))
                        .map_err(io_err(what))?;
                    range.len()
                }
                None => size,
            };
            Ok(Some((file, size, len)))
        })
        .await?;
        Ok(opened.map(|(file, size, len)| BlobContent {
            size,
            stream: file_stream(file, len),
        }))
    }

    async fn upload_create(&self, id: &UploadId, info: &UploadInfo) -> Result<()> {
        let layout = self.layout();
        let id = id.clone();
        let info = serde_json::to_vec(info).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        blocking(move || {
            let dir = layout.upload_dir(&id);
            fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
            let created = (|| {
                let data = layout.upload_data(&id);
                File::create(&data).map_err(io_err(format!("create {}", data.display())))?;
                layout.write_atomic(&layout.upload_info(&id), &info)
            })();
            if created.is_err() {
                // No data file without its info (a disk that is full fails the second write, not the first).
                let _ = fs::remove_dir_all(&dir);
            }
            created
        })
        .await
    }

    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>> {
        let layout = self.layout();
        let id = id.clone();
        blocking(move || {
            let info_path = layout.upload_info(&id);
            let Some(raw) = not_found_is_none(fs::read(&info_path))
                .map_err(io_err(format!("read {}", info_path.display())))?
            else {
                return Ok(None);
            };
            let mut info: UploadInfo = serde_json::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("{}: {e}", info_path.display())))?;
            let data = layout.upload_data(&id);
            let Some(meta) = not_found_is_none(fs::metadata(&data))
                .map_err(io_err(format!("stat {}", data.display())))?
            else {
                return Ok(None);
            };
            info.size = meta.len();
            Ok(Some(info))
        })
        .await
    }

    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
        let path = self.layout().upload_data(id);
        let what = format!("append to {}", path.display());
        let (file, size) = {
            let path = path.clone();
            let id = id.clone();
            blocking(move || {
                let opened = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .and_then(|file| Ok((file.metadata()?.len(), file)));
                match opened {
                    Ok((size, file)) => Ok((file, size)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Err(StorageError::UploadMissing(id))
                    }
                    Err(e) => Err(StorageError::Io {
                        what: format!("open {}", path.display()),
                        source: e,
                    }),
                }
            })
            .await?
        };
        Ok(Box::new(FsUploadWriter {
            file: Some(file),
            what,
            size,
        }))
    }

    async fn upload_read(&self, id: &UploadId) -> Result<ByteStream> {
        let path = self.layout().upload_data(id);
        let id = id.clone();
        let (file, len) = blocking(move || {
            let what = format!("open {}", path.display());
            let file = not_found_is_none(File::open(&path)).map_err(io_err(what.clone()))?;
            let file = file.ok_or(StorageError::UploadMissing(id))?;
            let len = file.metadata().map_err(io_err(what))?.len();
            Ok((file, len))
        })
        .await?;
        Ok(file_stream(file, len))
    }

    async fn upload_read_at(&self, id: &UploadId, offset: u64, max: usize) -> Result<Bytes> {
        let path = self.layout().upload_data(id);
        let id = id.clone();
        blocking(move || {
            let what = format!("read {}", path.display());
            let file = not_found_is_none(File::open(&path)).map_err(io_err(what.clone()))?;
            let mut file = file.ok_or(StorageError::UploadMissing(id))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(io_err(what.clone()))?;
            let mut buf = BytesMut::zeroed(max);
            let mut filled = 0;
            while filled < max {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_err(what)(e)),
                }
            }
            buf.truncate(filled);
            Ok(buf.freeze())
        })
        .await
    }

    async fn upload_truncate(&self, id: &UploadId, size: u64) -> Result<()> {
        let path = self.layout().upload_data(id);
        blocking(move || {
            let what = format!("truncate {}", path.display());
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(what.clone()))?;
            file.set_len(size).map_err(io_err(what))
        })
        .await
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        let layout = self.layout();
        let id = id.clone();
        let digest = digest.clone();
        blocking(move || {
            let data = layout.upload_data(&id);
            let target = layout.blob(&digest);
            let what = format!("commit upload {id} as {}", target.display());
            let present = fs::metadata(&target).is_ok();
            if !present {
                let file = File::open(&data).map_err(io_err(what.clone()))?;
                file.sync_all().map_err(io_err(what.clone()))?;
                let synced = file.metadata().map_err(io_err(what.clone()))?.len();
                if synced != size {
                    return Err(StorageError::Corrupt(format!(
                        "upload {id} holds {synced} bytes, {size} were verified; not committed"
                    )));
                }
                layout
                    .rename_into_place(&data, &target)
                    .map_err(io_err(what))?;
            }
            let dir = layout.upload_dir(&id);
            fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))
        })
        .await
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        let dir = self.layout().upload_dir(id);
        blocking(move || match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("remove {}", dir.display()))(e))
            }
            _ => Ok(()),
        })
        .await
    }

    async fn uploads(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let mut found = Vec::new();
            let entries = fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))?;
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().and_then(UploadId::parse) else {
                    continue;
                };
                let modified = entry
                    .path()
                    .join("data")
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH + Duration::ZERO);
                found.push((id, modified));
            }
            Ok(found)
        })
        .await
    }

    async fn upload_modified(&self, id: &UploadId) -> Result<Option<SystemTime>> {
        let layout = self.layout();
        let id = id.clone();
        blocking(move || {
            let data = layout.upload_data(&id);
            let what = format!("stat {}", data.display());
            match not_found_is_none(fs::metadata(&data)).map_err(io_err(what.clone()))? {
                Some(meta) => Ok(Some(meta.modified().map_err(io_err(what))?)),
                // A directory without its data is as old as can be (like in `uploads`), so it expires.
                None => Ok(layout
                    .upload_dir(&id)
                    .exists()
                    .then_some(SystemTime::UNIX_EPOCH)),
            }
        })
        .await
    }

    async fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let layout = self.layout();
        let path = layout.blob_link(repo, digest);
        blocking(move || {
            if path.exists() {
                return Ok(());
            }
            layout.write_atomic(&path, b"")
        })
        .await
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layout().blob_link(repo, digest);
        inline(move || {
            not_found_is_none(fs::metadata(&path))
                .map(|m| m.is_some())
                .map_err(io_err(format!("stat {}", path.display())))
        })
    }

    async fn blob_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layout().blob_link(repo, digest);
        blocking(move || remove_if_present(&path)).await
    }

    async fn blobs_linked(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let dir = self.layout().repo(repo).join("_blobs");
        blocking(move || {
            let mut found = Vec::new();
            let what = format!("list {}", dir.display());
            let Some(algorithms) =
                not_found_is_none(fs::read_dir(&dir)).map_err(io_err(what.clone()))?
            else {
                return Ok(found);
            };
            for algorithm in algorithms.flatten() {
                let Some(name) = algorithm.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                for entry in fs::read_dir(algorithm.path())
                    .map_err(io_err(what.clone()))?
                    .flatten()
                {
                    let Some(hex) = entry.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if let Ok(digest) = Digest::parse(&format!("{name}:{hex}")) {
                        found.push(digest);
                    }
                }
            }
            found.sort();
            Ok(found)
        })
        .await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        let path = self.layout().blob(digest);
        blocking(move || remove_if_present(&path)).await
    }

    async fn manifest_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: &StoredManifest,
    ) -> Result<()> {
        let layout = self.layout();
        let (repo, digest, manifest) = (repo.clone(), digest.clone(), manifest.clone());
        blocking(move || {
            let blob = layout.blob(&digest);
            if !blob.exists() {
                layout.write_atomic(&blob, &manifest.bytes)?;
            }
            layout.write_atomic(
                &layout.manifest(&repo, &digest),
                manifest.media_type.as_bytes(),
            )
        })
        .await
    }

    async fn manifest_get(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>> {
        let layout = self.layout();
        let (repo, digest) = (repo.clone(), digest.clone());
        inline(move || {
            let link = layout.manifest(&repo, &digest);
            let Some(media_type) = not_found_is_none(fs::read_to_string(&link))
                .map_err(io_err(format!("read {}", link.display())))?
            else {
                return Ok(None);
            };
            let blob = layout.blob(&digest);
            let bytes = fs::read(&blob).map_err(io_err(format!("read {}", blob.display())))?;
            Ok(Some(StoredManifest {
                media_type,
                bytes: Bytes::from(bytes),
            }))
        })
    }

    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layout().manifest(repo, digest);
        blocking(move || remove_if_present(&path)).await
    }

    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let layout = self.layout();
        let path = layout.tag(repo, tag);
        let value = digest.to_string();
        blocking(move || layout.write_atomic(&path, value.as_bytes())).await
    }

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.layout().tag(repo, tag);
        inline(move || {
            let Some(raw) = not_found_is_none(fs::read_to_string(&path))
                .map_err(io_err(format!("read {}", path.display())))?
            else {
                return Ok(None);
            };
            Digest::parse(raw.trim()).map(Some).map_err(|_| {
                StorageError::Corrupt(format!("{} holds {raw:?}, not a digest", path.display()))
            })
        })
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let path = self.layout().tag(repo, tag);
        blocking(move || remove_if_present(&path)).await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>> {
        let layout = self.layout();
        let repo = repo.clone();
        blocking(move || {
            let repo_dir = layout.repo(&repo);
            if !is_repository(&repo_dir) {
                return Ok(None);
            }
            let dir = layout.tags(&repo);
            let mut tags: Vec<Tag> = match not_found_is_none(fs::read_dir(&dir))
                .map_err(io_err(format!("list {}", dir.display())))?
            {
                None => Vec::new(),
                Some(entries) => entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(Tag::parse))
                    .collect(),
            };
            tags.sort_unstable();
            Ok(Some(tags))
        })
        .await
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        let dir = self.root.join("repositories");
        blocking(move || {
            let mut found = Vec::new();
            collect_repositories(&dir, "", &mut found)
                .map_err(io_err(format!("list {}", dir.display())))?;
            found.sort_unstable();
            Ok(found)
        })
        .await
    }

    async fn referrer_add(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &[u8],
    ) -> Result<()> {
        let layout = self.layout();
        let path = layout.referrer(repo, subject, referrer);
        let descriptor = descriptor.to_vec();
        blocking(move || layout.write_atomic(&path, &descriptor)).await
    }

    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let path = self.layout().referrer(repo, subject, referrer);
        blocking(move || remove_if_present(&path).map(|_| ())).await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>> {
        let dir = self.layout().referrers(repo, subject);
        blocking(move || {
            let what = format!("list {}", dir.display());
            let Some(entries) =
                not_found_is_none(fs::read_dir(&dir)).map_err(io_err(what.clone()))?
            else {
                return Ok(Vec::new());
            };
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort_unstable();
            let mut descriptors = Vec::with_capacity(paths.len());
            for path in paths {
                // A referrer removed between listing and reading is simply skipped.
                if let Some(bytes) = not_found_is_none(fs::read(&path))
                    .map_err(io_err(format!("read {}", path.display())))?
                {
                    descriptors.push(Bytes::from(bytes));
                }
            }
            Ok(descriptors)
        })
        .await
    }

    async fn check_writable(&self) -> Result<()> {
        let layout = self.layout();
        blocking(move || {
            let probe = layout
                .tmp()
                .join(format!("ready-{}", uuid::Uuid::new_v4().simple()));
            let written = fs::write(&probe, b"ok");
            // Removed whether or not the write succeeded: on a full disk the file is created, then the write fails.
            let removed = match fs::remove_file(&probe) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && written.is_err() => Ok(()),
                other => other,
            };
            written
                .and(removed)
                .map_err(io_err(format!("write {}", probe.display())))
        })
        .await
    }
}

fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
    }
}

/// A directory is a repository when it holds any of the content directories.
fn is_repository(dir: &Path) -> bool {
    ["_manifests", "_tags", "_blobs"]
        .iter()
        .any(|sub| dir.join(sub).is_dir())
}

fn collect_repositories(dir: &Path, prefix: &str, found: &mut Vec<RepoName>) -> io::Result<()> {
    let Some(entries) = not_found_is_none(fs::read_dir(dir))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('_') || !entry.file_type()?.is_dir() {
            continue;
        }
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        if is_repository(&path) {
            if let Ok(repo) = RepoName::parse(&full) {
                found.push(repo);
            }
        }
        collect_repositories(&path, &full, found)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn filesystem_backend_passes_the_shared_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path()).expect("open");
        super::super::suite::run(&storage).await;
        // Nothing is left in tmp/ after a run.
        assert_eq!(
            fs::read_dir(dir.path().join("tmp"))
                .map(|d| d.count())
                .unwrap_or(usize::MAX),
            0
        );
    }

    #[tokio::test]
    async fn a_failed_upload_create_leaves_no_data_file_without_info() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path()).expect("open");
        // The info is written through tmp/: with tmp/ unusable, creating the data file succeeds and the info fails.
        fs::remove_dir(dir.path().join("tmp")).expect("remove tmp");
        fs::write(dir.path().join("tmp"), b"not a directory").expect("block tmp");
        let info = UploadInfo {
            repository: "r".into(),
            size: 0,
            started_unix: 1,
            monolithic: false,
        };
        let created = storage.upload_create(&UploadId::new_random(), &info).await;
        assert!(created.is_err());
        assert_eq!(
            fs::read_dir(dir.path().join("uploads"))
                .map(|d| d.count())
                .unwrap_or(usize::MAX),
            0
        );
    }

    #[tokio::test]
    async fn open_clears_interrupted_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        FsStorage::open(dir.path()).expect("open");
        fs::write(dir.path().join("tmp/half-written"), b"partial").expect("write");
        FsStorage::open(dir.path()).expect("reopen");
        assert_eq!(
            fs::read_dir(dir.path().join("tmp"))
                .map(|d| d.count())
                .unwrap_or(usize::MAX),
            0
        );
    }

    /// Review of issue 9 (second line of defence): a commit renamed whatever the data file held, even bytes that
    /// were not hashed (a write that landed after the digest check). A commit whose durable size differs from the
    /// verified one is refused and keeps the upload.
    #[tokio::test]
    async fn a_commit_of_other_than_the_verified_size_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path()).expect("open");
        let id = UploadId::new_random();
        let info = UploadInfo {
            repository: "commit/size".into(),
            size: 0,
            started_unix: 1,
            monolithic: false,
        };
        storage.upload_create(&id, &info).await.expect("create");
        let mut writer = storage.upload_writer(&id).await.expect("writer");
        writer
            .write(Bytes::from_static(b"goodEVIL"))
            .await
            .expect("write");
        writer.finish().await.expect("finish");
        let digest = Digest::sha256_of(b"good");
        let refused = storage.upload_commit(&id, &digest, 4).await;
        assert!(
            matches!(refused, Err(StorageError::Corrupt(_))),
            "{refused:?}"
        );
        assert_eq!(storage.blob_size(&digest).await.expect("stat"), None);
        let kept = storage.upload_info(&id).await.expect("info");
        assert_eq!(kept.map(|info| info.size), Some(8));
        storage.upload_truncate(&id, 4).await.expect("truncate");
        storage
            .upload_commit(&id, &digest, 4)
            .await
            .expect("commit of the verified size");
        assert_eq!(storage.blob_size(&digest).await.expect("stat"), Some(4));
    }
}
