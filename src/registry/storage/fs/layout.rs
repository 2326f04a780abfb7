//! Where the filesystem backend keeps each object: every path derived from validated names (the one place that
//! builds them), and the atomic write (a temporary file, fsync, rename, fsync of the directory) every visible file
//! goes through.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{io_err, Result};
use crate::registry::names::{Digest, RepoName, Tag, UploadId};

/// Paths, all derived from validated names.
#[derive(Clone)]
pub(super) struct Layout {
    pub(super) root: PathBuf,
}

impl Layout {
    pub(super) fn blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }
    pub(super) fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
    pub(super) fn upload_data(&self, id: &UploadId) -> PathBuf {
        self.upload_dir(id).join("data")
    }
    pub(super) fn upload_info(&self, id: &UploadId) -> PathBuf {
        self.upload_dir(id).join("info.json")
    }
    pub(super) fn repo(&self, repo: &RepoName) -> PathBuf {
        let mut path = self.root.join("repositories");
        path.extend(repo.components());
        path
    }
    pub(super) fn blob_link(&self, repo: &RepoName, digest: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }
    pub(super) fn manifest(&self, repo: &RepoName, digest: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_manifests")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }
    pub(super) fn tags(&self, repo: &RepoName) -> PathBuf {
        self.repo(repo).join("_tags")
    }
    pub(super) fn tag(&self, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.tags(repo).join(tag.as_str())
    }
    pub(super) fn referrers(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_referrers")
            .join(subject.algorithm().name())
            .join(subject.hex())
    }
    pub(super) fn referrer(&self, repo: &RepoName, subject: &Digest, referrer: &Digest) -> PathBuf {
        self.referrers(repo, subject).join(format!(
            "{}-{}",
            referrer.algorithm().name(),
            referrer.hex()
        ))
    }
    pub(super) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Writes `bytes` to `target` atomically: a temporary file, fsync, rename, fsync of the directory.
    pub(super) fn write_atomic(&self, target: &Path, bytes: &[u8]) -> Result<()> {
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
    pub(super) fn rename_into_place(&self, from: &Path, to: &Path) -> io::Result<()> {
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
