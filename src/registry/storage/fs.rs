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
//! This module and its children are the only ones that build paths (`layout.rs`, from validated names only).
//! The children: `layout` (paths, atomic writes), `stream` (reading a file out), `uploads` (uploads and their
//! commit); this file has the `Storage` impl and everything about blobs, links, manifests, tags and referrers.

mod layout;
mod stream;
mod uploads;

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use layout::Layout;
use stream::file_stream;

use super::{
    BlobContent, ByteRange, ByteStream, Result, Storage, StorageError, StoredManifest, UploadInfo,
    UploadWriter,
};
use crate::registry::names::{Digest, RepoName, Tag, UploadId};

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
        uploads::create(self.layout(), id, info).await
    }

    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>> {
        uploads::info(self.layout(), id).await
    }

    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
        uploads::writer(self.layout(), id).await
    }

    async fn upload_read(&self, id: &UploadId) -> Result<ByteStream> {
        uploads::read(self.layout(), id).await
    }

    async fn upload_read_at(&self, id: &UploadId, offset: u64, max: usize) -> Result<Bytes> {
        uploads::read_at(self.layout(), id, offset, max).await
    }

    async fn upload_truncate(&self, id: &UploadId, size: u64) -> Result<()> {
        uploads::truncate(self.layout(), id, size).await
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        uploads::commit(self.layout(), id, digest, size).await
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        uploads::delete(self.layout(), id).await
    }

    async fn uploads(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        uploads::list(self.layout()).await
    }

    async fn upload_modified(&self, id: &UploadId) -> Result<Option<SystemTime>> {
        uploads::modified(self.layout(), id).await
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
