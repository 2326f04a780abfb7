//! The registry's semantics, between the HTTP handlers and storage: visibility of blobs per repository, upload
//! sessions with streaming verification, manifest validation, tags, referrers and pagination.
//!
//! Knows nothing of actix-web: it takes validated names and byte streams and returns values or a `RegistryError`.
//! Content becomes visible only here, and only after its digest is verified.
//!
//! This file holds the [`Registry`] itself (its state, constructors and the helpers every part shares); each concern
//! is an `impl Registry` in a child module: `blobs` (visibility, mounts), `uploads` (sessions and the requests on
//! them), `upload_job` (the task that appends, verifies and commits one request's body), `sweep` (recovery at start
//! and the expiry of stale uploads), `manifests` (validation, tags, the per-repository lock) and `listings` (tags,
//! catalog, referrers, pagination).

mod blobs;
pub mod cache;
mod listings;
mod manifests;
mod sweep;
#[cfg(test)]
mod tests;
mod upload_job;
mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, UNIX_EPOCH};

use super::hashing::Hasher;
use super::names::UploadId;
use super::storage::Storage;
use crate::clock::{self, SharedClock};

pub use listings::Page;
use manifests::RepoLocks;
pub use manifests::{all_tags_mutable, Immutability, PushedManifest};
pub use sweep::RecoveredUploads;

/// The running hash of an upload. It is valid while `hashed` equals the upload's stored size; after a restart (or a
/// failed append) it is rebuilt by reading the stored bytes back.
#[derive(Clone)]
struct UploadHash {
    hasher: Hasher,
    hashed: u64,
}

type SessionSlot = Arc<tokio::sync::Mutex<Option<UploadHash>>>;
type SessionGuard = tokio::sync::OwnedMutexGuard<Option<UploadHash>>;
type SessionMap = Arc<Mutex<HashMap<UploadId, SessionSlot>>>;

pub struct Registry {
    storage: Arc<dyn Storage>,
    /// Held for reading while content is committed or linked; the proxy's eviction holds it for writing while it
    /// decides a blob is unused and deletes it.
    content_gate: Arc<tokio::sync::RwLock<()>>,
    /// One slot per upload session that exists (found on disk at start, or started since); its mutex serialises
    /// requests on the same upload. Its size is the number of sessions, capped by `limits.max_sessions`.
    sessions: SessionMap,
    /// Serialises manifest and tag changes per repository.
    repo_locks: RepoLocks,
    limits: UploadLimits,
    /// One permit per request streaming bytes into an upload.
    streams: Arc<tokio::sync::Semaphore>,
    /// When the session map was last compared with the uploads on disk.
    last_resync: Mutex<Option<Instant>>,
    /// Where upload times come from: the start time recorded with an upload, its age when the sweep judges it,
    /// and the pace of resyncs.
    clock: SharedClock,
}

/// Bounds on uploads (the README's limits table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Upload sessions that may exist at once (started and not yet finished, cancelled or expired).
    pub max_sessions: usize,
    /// Requests that may stream bytes into uploads at once (`PATCH`, a `PUT` with a body, `POST ?digest=`).
    pub max_streams: usize,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_sessions: 1024,
            max_streams: 128,
        }
    }
}

impl Registry {
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self::with_limits(storage, UploadLimits::default())
    }

    pub fn with_limits(storage: Arc<dyn Storage>, limits: UploadLimits) -> Self {
        Registry {
            storage,
            content_gate: Arc::default(),
            sessions: SessionMap::default(),
            repo_locks: RepoLocks::new(),
            limits,
            streams: Arc::new(tokio::sync::Semaphore::new(limits.max_streams)),
            last_resync: Mutex::new(None),
            clock: clock::system(),
        }
    }

    /// The registry with its upload times from `clock` (the real one by default; tests move a `ManualClock`).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock's time in seconds since the Unix epoch.
    fn now_unix(&self) -> u64 {
        self.clock
            .system()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[cfg(test)]
    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}
