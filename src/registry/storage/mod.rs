//! The storage trait: everything the registry keeps, behind one interface so that an S3-compatible backend can be
//! added without touching handlers.
//!
//! The trait speaks in validated names (`RepoName`, `Digest`, `Tag`, `UploadId`) and byte streams, never in file
//! paths. It knows nothing of HTTP and does not verify digests: the registry service hashes content while it streams
//! and only calls [`Storage::upload_commit`] once the digest is proven. What a backend must guarantee:
//! - a committed blob or manifest is durable before the call returns, and is never visible half-written;
//! - tag, link and manifest updates are atomic (a reader sees the old or the new state, nothing in between);
//! - an upload's size is exactly the bytes appended so far, and survives a restart of the process (a backend that
//!   keeps nothing across restarts, like `memory`, says so);
//! - reading, writing, truncating or committing an upload that does not exist fails with
//!   [`StorageError::UploadMissing`] (its info is `None`; deleting it again is fine).
//!
//! Read-compare-write sequences over tags and manifests (a delete that removes only the tags still naming a
//! manifest) are made atomic by the registry service, which serialises the changes of one repository; the trait
//! names them ([`Storage::tag_delete_if`]) so that a backend shared by several processes can implement them with
//! conditional writes.

pub mod fs;
pub mod memory;
#[cfg(test)]
pub(crate) mod suite;

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use super::names::{Digest, RepoName, Tag, UploadId};

/// A stream of content read from storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Failures of the storage layer. None of them is the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O operation failed; `what` names the operation and the object.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Stored metadata could not be read back.
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// The named upload does not exist.
    #[error("upload {0} does not exist")]
    UploadMissing(UploadId),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A blob's content, or a range of it.
pub struct BlobContent {
    /// Total size of the blob.
    pub size: u64,
    /// The bytes asked for (the whole blob, or the range).
    pub stream: ByteStream,
}

/// What is known about an upload session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The repository the upload was started in.
    pub repository: String,
    /// Bytes received so far.
    #[serde(skip)]
    pub size: u64,
    /// When the session was started (seconds since the Unix epoch).
    pub started_unix: u64,
    /// Written by one request (`POST ?digest=`, a proxy fetch): nobody can resume it, so an upload left behind by a
    /// crash is deleted at the next start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub monolithic: bool,
}

/// A stored manifest: its exact bytes and the media type it was pushed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// An inclusive byte range `first..=last`, already checked against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Appends the bytes of one request to an upload. Dropping it without [`UploadWriter::finish`] keeps whatever was
/// written (the upload's size says how much).
#[async_trait]
pub trait UploadWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Appends a batch of chunks, in order. Backends override it to write a batch in one step.
    async fn write_batch(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        for chunk in chunks {
            self.write(chunk).await?;
        }
        Ok(())
    }
    /// The upload's total size after the writes so far.
    fn written(&self) -> u64;
    /// Flushes and returns the upload's new total size.
    async fn finish(self: Box<Self>) -> Result<u64>;
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    // --- blobs: content-addressed, shared by all repositories
    /// The size of the blob, if stored.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// The blob's bytes (or the given range of them), if stored.
    async fn blob_read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobContent>>;

    // --- uploads
    async fn upload_create(&self, id: &UploadId, info: &UploadInfo) -> Result<()>;
    /// The upload's metadata with its current size, if it exists.
    async fn upload_info(&self, id: &UploadId) -> Result<Option<UploadInfo>>;
    /// A writer appending to the end of the upload.
    async fn upload_writer(&self, id: &UploadId) -> Result<Box<dyn UploadWriter>>;
    /// Everything received so far (used to re-hash after a restart).
    async fn upload_read(&self, id: &UploadId) -> Result<ByteStream>;
    /// Up to `max` bytes of the upload from `offset`: what is stored now (empty at the end). Lets readers follow an
    /// upload that is still being written.
    async fn upload_read_at(&self, id: &UploadId, offset: u64, max: usize) -> Result<Bytes>;
    /// Cuts the upload back to `size` bytes (after a failed append). A `size` beyond the end pads the upload with
    /// zero bytes, as a file's `set_len` does (the service never asks for that).
    async fn upload_truncate(&self, id: &UploadId, size: u64) -> Result<()>;
    /// Makes the upload's bytes durably the blob `digest` and removes the upload. The caller has verified the digest
    /// of `size` bytes; the commit is refused (`Corrupt`, the upload kept) if the durable upload holds any other
    /// number, which would mean a write the caller did not hash reached it.
    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()>;
    async fn upload_delete(&self, id: &UploadId) -> Result<()>;
    /// Every upload with when it was last written, to expire stale ones.
    async fn uploads(&self) -> Result<Vec<(UploadId, SystemTime)>>;
    /// When the upload was last written, if it exists. The default looks it up in [`Storage::uploads`].
    async fn upload_modified(&self, id: &UploadId) -> Result<Option<SystemTime>> {
        Ok(self
            .uploads()
            .await?
            .into_iter()
            .find_map(|(upload, modified)| (&upload == id).then_some(modified)))
    }

    // --- which blobs a repository may serve
    async fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<()>;
    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Removes the link; false if there was none.
    async fn blob_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// The blobs linked in `repo`.
    async fn blobs_linked(&self, repo: &RepoName) -> Result<Vec<Digest>>;
    /// Deletes the blob's content. The caller makes sure no repository links it any more.
    async fn blob_delete(&self, digest: &Digest) -> Result<bool>;

    // --- manifests and tags
    /// Stores the manifest bytes durably and makes them visible in `repo` under `digest` (already verified).
    async fn manifest_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: &StoredManifest,
    ) -> Result<()>;
    async fn manifest_get(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>>;
    /// Removes the manifest from `repo`; false if it was not there.
    async fn manifest_delete(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()>;
    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;
    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// Removes the tag only if it points at `digest`; true if it did.
    ///
    /// The default reads, compares and removes. That is atomic only because the registry service serialises the
    /// tag changes of a repository within its process; a backend shared by several processes (S3 behind several
    /// replicas) overrides it with a conditional delete (compare-and-swap) of its own.
    async fn tag_delete_if(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<bool> {
        if self.tag_get(repo, tag).await?.as_ref() == Some(digest) {
            self.tag_delete(repo, tag).await
        } else {
            Ok(false)
        }
    }
    /// The repository's tags in byte order, or `None` if the repository has no content at all.
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>>;
    /// Every repository with content, in byte order.
    async fn repositories(&self) -> Result<Vec<RepoName>>;

    // --- referrers: manifests whose `subject` is a given digest
    /// Records `descriptor` (a JSON OCI descriptor of `referrer`) as a referrer of `subject`.
    async fn referrer_add(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &[u8],
    ) -> Result<()>;
    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()>;
    /// The recorded descriptors of the referrers of `subject`, ordered by referrer digest.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>>;

    /// Fails unless the backend can store new content now (readiness).
    async fn check_writable(&self) -> Result<()>;
}
