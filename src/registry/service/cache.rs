//! What the pull-through cache asks of the registry service: the proxy fetches from upstreams, and every byte it
//! keeps goes through here. A blob fetched into a cache upload is hashed while it is written and becomes visible
//! only when its digest is proven, committed and linked under the content gate; a fetched manifest is verified,
//! parsed and stored under the repository's lock; eviction deletes content only under the write gate, and only
//! when no repository links it any more.
//!
//! Knows nothing of upstreams or HTTP, and decides nothing of the cache's policy (freshness, what to evict).
//! (`check_writable`, for readiness, is here too only because it replaced the public `storage()` while service.rs
//! was being split; it belongs with the service's other methods.)

use bytes::Bytes;

use super::Registry;
use crate::registry::error::{RegistryError, Result};
use crate::registry::hashing::{HashPipe, Hasher};
use crate::registry::manifest;
use crate::registry::names::{Digest, Reference, RepoName, Tag, UploadId};
use crate::registry::storage::{
    ByteRange, ByteStream, StorageError, StoredManifest, UploadInfo, UploadWriter,
};

/// Why content fetched for the cache was not kept.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The content does not hash to the digest it was fetched as; nothing was stored.
    #[error("content has digest {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// The manifest cannot be parsed; nothing was stored.
    #[error("{0}")]
    ManifestInvalid(#[source] RegistryError),
    /// The registry failed to store it (storage, hashing).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A blob being fetched into the cache: one writer for the whole fetch, and the hash of every byte written.
/// Dropping it leaves the upload behind until [`Registry::cache_upload_discard`] or the upload sweeper deletes it
/// (and a restart deletes it, since it is monolithic).
pub struct CacheUpload {
    id: UploadId,
    repo: RepoName,
    digest: Digest,
    writer: Box<dyn UploadWriter>,
    pipe: HashPipe,
    /// Bytes fed to the hash, counted apart from what the writer reports, so the commit's size check compares two
    /// counts.
    hashed: u64,
}

impl CacheUpload {
    /// The upload's id, for readers following it while it is written ([`Registry::cache_upload_read_at`]).
    pub(crate) fn id(&self) -> &UploadId {
        &self.id
    }

    /// Hashes and appends `chunk`; returns the upload's size after it.
    pub(crate) async fn append(&mut self, chunk: Bytes) -> Result<u64> {
        self.hashed = self.hashed.saturating_add(chunk.len() as u64);
        self.pipe
            .feed(chunk.clone())
            .await
            .map_err(|e| RegistryError::Body(e.to_string()))?;
        self.writer.write(chunk).await?;
        Ok(self.writer.written())
    }
}

impl Registry {
    /// Starts an upload of the blob `digest` fetched for `repo`. It holds no session: nobody can resume it, and it
    /// is deleted at the next start if the process dies meanwhile.
    pub(crate) async fn cache_upload_start(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<CacheUpload> {
        let id = UploadId::new_random();
        let info = UploadInfo {
            repository: repo.to_string(),
            size: 0,
            started_unix: self.now_unix(),
            monolithic: true,
        };
        self.storage.upload_create(&id, &info).await?;
        let writer = match self.storage.upload_writer(&id).await {
            Ok(writer) => writer,
            Err(e) => {
                self.discard(&id).await;
                return Err(e.into());
            }
        };
        Ok(CacheUpload {
            id,
            repo: repo.clone(),
            digest: digest.clone(),
            writer,
            pipe: HashPipe::spawn(Hasher::new(digest.algorithm())),
            hashed: 0,
        })
    }

    /// Up to `max` bytes of a cache upload from `offset`, as stored now; `None` once the upload is gone (committed
    /// or discarded).
    pub(crate) async fn cache_upload_read_at(
        &self,
        id: &UploadId,
        offset: u64,
        max: usize,
    ) -> Result<Option<Bytes>> {
        match self.storage.upload_read_at(id, offset, max).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StorageError::UploadMissing(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Verifies the upload's digest, commits it and links it into its repository under the content gate; returns
    /// the blob's size. On any failure the upload is deleted and nothing becomes visible.
    pub(crate) async fn cache_blob_commit(&self, upload: CacheUpload) -> Result<u64, CacheError> {
        let CacheUpload {
            id,
            repo,
            digest,
            writer,
            pipe,
            hashed,
        } = upload;
        let committed = async {
            let written = writer.finish().await.map_err(RegistryError::from)?;
            let actual = pipe
                .finish()
                .await
                .map_err(|e| RegistryError::Body(e.to_string()))?
                .digest();
            if actual != digest {
                return Err(CacheError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            let _gate = self.content_gate.read().await;
            self.storage
                .upload_commit(&id, &digest, hashed)
                .await
                .map_err(RegistryError::from)?;
            self.storage
                .blob_link(&repo, &digest)
                .await
                .map_err(RegistryError::from)?;
            Ok(written)
        }
        .await;
        if committed.is_err() {
            self.discard(&id).await;
        }
        committed
    }

    /// Deletes a cache upload that will not be committed (the upstream broke off).
    pub(crate) async fn cache_upload_discard(&self, upload: CacheUpload) {
        self.discard(&upload.id).await;
    }

    async fn discard(&self, id: &UploadId) {
        if let Err(e) = self.storage.upload_delete(id).await {
            log::warn!("deleting cache upload {id}: {e}");
        }
    }

    /// A range of a committed blob's content, whether or not a repository still links it: a client that followed
    /// a fetch to its end finishes reading even if the blob was evicted from the cache meanwhile while other
    /// repositories keep its content. `None` when the content is gone.
    pub(crate) async fn cache_blob_read(
        &self,
        digest: &Digest,
        range: ByteRange,
    ) -> Result<Option<ByteStream>> {
        Ok(self
            .storage
            .blob_read(digest, Some(range))
            .await?
            .map(|content| content.stream))
    }

    /// Whether the blob is visible in `repo`.
    pub async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.storage.blob_linked(repo, digest).await?)
    }

    /// The blobs visible in `repo` with their sizes (to count a cache's size after a restart).
    pub(crate) async fn cache_blobs(&self, repo: &RepoName) -> Result<Vec<(Digest, u64)>> {
        let mut found = Vec::new();
        for digest in self.storage.blobs_linked(repo).await? {
            if let Some(size) = self.storage.blob_size(&digest).await? {
                found.push((digest, size));
            }
        }
        Ok(found)
    }

    /// A manifest of `repo` by tag or digest, if it is stored.
    pub(crate) async fn cached_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<(Digest, StoredManifest)>> {
        let digest = match reference {
            Reference::Digest(digest) => digest.clone(),
            Reference::Tag(tag) => match self.storage.tag_get(repo, tag).await? {
                Some(digest) => digest,
                None => return Ok(None),
            },
        };
        Ok(self
            .storage
            .manifest_get(repo, &digest)
            .await?
            .map(|manifest| (digest, manifest)))
    }

    /// Stores a fetched manifest in `repo`: by digest, its bytes must hash to it; by tag, the tag is set to it.
    /// Unlike a push, the blobs it names need not be there (the cache fetches them when they are asked for).
    pub(crate) async fn cache_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<(Digest, StoredManifest), CacheError> {
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::compute(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(CacheError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let parsed = manifest::parse(&bytes, content_type).map_err(CacheError::ManifestInvalid)?;
        let manifest = StoredManifest {
            media_type: parsed.media_type,
            bytes,
        };
        let _repo = self.repo_lock(repo).lock().await;
        let _gate = self.content_gate.read().await;
        self.storage
            .manifest_put(repo, &digest, &manifest)
            .await
            .map_err(RegistryError::from)?;
        if let Reference::Tag(tag) = reference {
            self.storage
                .tag_set(repo, tag, &digest)
                .await
                .map_err(RegistryError::from)?;
        }
        Ok((digest, manifest))
    }

    /// Removes a cached tag (the upstream says it is gone); false if there was none.
    pub(crate) async fn cache_untag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let _repo = self.repo_lock(repo).lock().await;
        Ok(self.storage.tag_delete(repo, tag).await?)
    }

    /// Whether any repository uses the content: links it as a blob, or holds a manifest of that digest (a
    /// manifest's bytes are stored as the blob of its digest, and are never blob-linked).
    pub(crate) async fn linked_anywhere(&self, digest: &Digest) -> Result<bool> {
        for repo in self.storage.repositories().await? {
            if self.storage.blob_linked(&repo, digest).await? {
                return Ok(true);
            }
            // A manifest that cannot be read (a damaged store) counts as held: eviction errs on keeping content.
            if !matches!(self.storage.manifest_get(&repo, digest).await, Ok(None)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Evicts a cached blob: unlinks it from `repos` and deletes its content unless another repository (pushed
    /// content) still links it. Runs under the write gate, so no push, mount or fetch links the content while it
    /// is judged unused. Returns whether the content was deleted.
    pub(crate) async fn cache_evict(&self, digest: &Digest, repos: &[RepoName]) -> Result<bool> {
        let _gate = self.content_gate.write().await;
        for repo in repos {
            self.storage.blob_unlink(repo, digest).await?;
        }
        if self.linked_anywhere(digest).await? {
            return Ok(false);
        }
        Ok(self.storage.blob_delete(digest).await?)
    }

    /// Fails unless storage can store new content now (readiness).
    pub(crate) async fn check_writable(&self) -> Result<(), StorageError> {
        self.storage.check_writable().await
    }
}
