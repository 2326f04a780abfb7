//! Blobs as a repository sees them: a blob is visible in a repository only while it is linked there, and a mount
//! links it under the content gate so that eviction cannot delete it in between. A delete is refused for a blob an
//! immutable tag holds (the caller says which tags are immutable). Never writes content itself.

use super::{Immutability, Registry};
use crate::registry::error::{RegistryError, Result};
use crate::registry::names::{Digest, RepoName};
use crate::registry::storage::{BlobContent, ByteRange};

impl Registry {
    /// The size of a blob visible in `repo`.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        if !self.storage.blob_linked(repo, digest).await? {
            return Err(RegistryError::BlobUnknown(digest.to_string()));
        }
        self.storage
            .blob_size(digest)
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))
    }

    /// A blob visible in `repo`, or a range of it (the range is resolved against the size by `range`).
    pub async fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: impl FnOnce(u64) -> Result<Option<ByteRange>>,
    ) -> Result<(BlobContent, Option<ByteRange>)> {
        let size = self.blob_size(repo, digest).await?;
        let range = range(size)?;
        let content = self
            .storage
            .blob_read(digest, range)
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))?;
        Ok((content, range))
    }

    /// Removes the blob from `repo` (the content stays while other repositories use it). A blob an immutable tag
    /// holds (a config or layer of the manifest it points at, or of a child of its index) is not removed: the
    /// release would be broken though it cannot be replaced. Runs under the repository's lock, so a push that
    /// checked the blob and is about to set an immutable tag cannot lose it in between.
    pub async fn blob_delete(
        &self,
        repo: &RepoName,
        digest: &Digest,
        immutable: Immutability<'_>,
    ) -> Result<()> {
        let _repo = self.repo_lock(repo).lock().await;
        if let Some(holder) = self.immutable_holder(repo, digest, immutable).await? {
            return Err(holder.refuse(
                repo,
                "the blob cannot be deleted while a manifest an immutable tag holds names it",
            ));
        }
        if self.storage.blob_unlink(repo, digest).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown(digest.to_string()))
        }
    }

    /// Makes a blob visible in `repo` if it is visible in `from`. Returns false when it cannot be mounted; the
    /// caller then starts a normal upload.
    ///
    /// Without `from` (an anonymous mount) the mount succeeds only when the blob is already visible in `repo`:
    /// berth cannot yet tell which repositories the caller may read, so it never looks elsewhere. That keeps a
    /// guessed digest from revealing (or copying) content of another repository, and costs one lookup instead of
    /// a walk over every repository. When authorization arrives, it can widen this to the repositories the caller
    /// may pull from.
    pub async fn blob_mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool> {
        // Held across the check and the link, so eviction cannot delete the content in between.
        let _gate = self.content_gate.read().await;
        if self.storage.blob_size(digest).await?.is_none() {
            return Ok(false);
        }
        let source = from.unwrap_or(repo);
        if !self.storage.blob_linked(source, digest).await? {
            return Ok(false);
        }
        if source != repo {
            self.storage.blob_link(repo, digest).await?;
        }
        Ok(true)
    }
}
