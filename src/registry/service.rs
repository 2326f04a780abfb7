//! The registry's semantics, between the HTTP handlers and storage: visibility of blobs per repository, upload
//! sessions with streaming verification, manifest validation, tags, referrers and pagination.
//!
//! Knows nothing of actix-web: it takes validated names and byte streams and returns values or a `RegistryError`.
//! Content becomes visible only here, and only after its digest is verified.

pub mod cache;

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::error::{RegistryError, Result};
use super::hashing::{self, Hasher};
use super::manifest::{self, Descriptor, ParsedManifest};
use super::names::{Algorithm, Digest, Reference, RepoName, Tag, UploadId};
use super::storage::{
    BlobContent, ByteRange, Storage, StorageError, StoredManifest, UploadInfo, UploadWriter,
};

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

/// A page of a sorted listing, and whether more follows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// Outcome of a manifest push.
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// Every tag now pointing at it (the reference's and the `?tag=` ones), in the order given.
    pub tags: Vec<Tag>,
}

/// How many locks [`RepoLocks`] stripes repositories over.
const REPO_LOCK_STRIPES: usize = 64;

/// Serialises the changes to one repository's manifests, tags and referrers.
///
/// Invariant: `manifest_put` (validate, store, referrer, tags) and `manifest_delete` (read, compare, remove) of a
/// repository run under its lock, so concurrent pushes and deletes take effect in some serial order: a tag never
/// outlives the manifest it names, and a delete never removes a tag that a concurrent push just moved elsewhere.
/// Reads take no lock (each storage read is atomic). Repositories are hashed onto a fixed number of locks, so
/// memory does not grow with the number of repositories; two repositories sharing a stripe only wait for each
/// other. The lock is in-process: several replicas over one shared backend need the backend's conditional writes
/// instead (see `Storage::tag_delete_if`).
struct RepoLocks(Box<[tokio::sync::Mutex<()>]>);

impl RepoLocks {
    fn new() -> Self {
        RepoLocks(
            (0..REPO_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }

    fn get(&self, repo: &RepoName) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        repo.as_str().hash(&mut hasher);
        // The remainder is below the number of stripes, so it fits a usize and indexes in bounds.
        let stripe = (hasher.finish() % self.0.len() as u64) as usize;
        &self.0[stripe]
    }
}

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

/// Largest batch of received bytes handed to one write and one hash task. While a batch is written and hashed, the
/// next one is received, so each upload holds at most two batches in memory.
const UPLOAD_BATCH: usize = 512 * 1024;

/// How often, at most, a full session map is compared with the uploads on disk.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// What [`Registry::recover_uploads`] did at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveredUploads {
    /// Resumable sessions kept.
    pub kept: usize,
    /// Interrupted monolithic uploads and incomplete upload directories deleted.
    pub deleted: usize,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sorted `items` after `last`, at most `n` of them.
fn paginate<T: Ord + AsRef<str>>(items: Vec<T>, n: Option<usize>, last: Option<&str>) -> Page<T> {
    let start = match last {
        Some(last) => items.partition_point(|item| item.as_ref() <= last),
        None => 0,
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    match n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            Page {
                more: n > 0,
                items: rest,
            }
        }
        _ => Page {
            items: rest,
            more: false,
        },
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RepoName {
    fn as_ref(&self) -> &str {
        self.as_str()
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
        }
    }

    #[cfg(test)]
    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    // ----- blobs

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

    /// Removes the blob from `repo` (the content stays while other repositories use it).
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
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

    // ----- uploads

    fn slot(&self, id: &UploadId) -> SessionSlot {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions.entry(id.clone()).or_default().clone()
    }

    fn forget(&self, id: &UploadId) {
        self.sessions().remove(id);
    }

    /// What an upload task holds of the registry.
    fn shared(&self) -> Shared {
        Shared {
            storage: self.storage.clone(),
            sessions: self.sessions.clone(),
            content_gate: self.content_gate.clone(),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, SessionSlot>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a session for `id` if the cap allows; the returned slot is held while the upload is created, which
    /// keeps a resync from dropping it before it is on disk.
    fn try_reserve(&self, id: &UploadId) -> Option<SessionSlot> {
        let mut sessions = self.sessions();
        if sessions.len() >= self.limits.max_sessions {
            return None;
        }
        Some(sessions.entry(id.clone()).or_default().clone())
    }

    /// Reserves a session for a new upload, or says berth has too many. A full map is first compared with the
    /// uploads on disk (at most every few seconds), so that an entry left behind by a race never blocks uploads.
    async fn reserve_session(&self, id: &UploadId) -> Result<SessionSlot> {
        if let Some(slot) = self.try_reserve(id) {
            return Ok(slot);
        }
        let due = {
            let mut last = self
                .last_resync
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= RESYNC_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            let on_disk: HashSet<UploadId> = self
                .storage
                .uploads()
                .await?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            // A slot someone holds (a request in progress, a reservation) stays.
            self.sessions()
                .retain(|id, slot| on_disk.contains(id) || Arc::strong_count(slot) > 1);
            if let Some(slot) = self.try_reserve(id) {
                return Ok(slot);
            }
        }
        Err(RegistryError::Busy {
            why: format!(
                "too many upload sessions in progress (the limit is {}); finish or cancel some, or retry later",
                self.limits.max_sessions
            ),
            retry_after: 60,
        })
    }

    fn too_many_streams(&self) -> RegistryError {
        RegistryError::Busy {
            why: format!(
                "too many uploads are sending data at once (the limit is {}); retry later",
                self.limits.max_streams
            ),
            retry_after: 5,
        }
    }

    /// Creates an upload on disk with a reserved session, or gives the reservation back.
    async fn create_upload(
        &self,
        repo: &RepoName,
        monolithic: bool,
        hash: UploadHash,
    ) -> Result<UploadId> {
        let id = UploadId::new_random();
        let slot = self.reserve_session(&id).await?;
        let info = UploadInfo {
            repository: repo.to_string(),
            size: 0,
            started_unix: now_unix(),
            monolithic,
        };
        if let Err(e) = self.storage.upload_create(&id, &info).await {
            drop(slot);
            self.forget(&id);
            return Err(e.into());
        }
        *slot.lock().await = Some(hash);
        Ok(id)
    }

    /// Starts an upload session in `repo`.
    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadId> {
        let hash = UploadHash {
            hasher: Hasher::new(Algorithm::Sha256),
            hashed: 0,
        };
        self.create_upload(repo, false, hash).await
    }

    /// Number of upload sessions berth knows of.
    pub fn upload_sessions(&self) -> usize {
        self.sessions().len()
    }

    /// At start: deletes uploads nobody can resume (monolithic pushes and proxy fetches interrupted by a crash,
    /// directories without their info) and counts the others as sessions.
    pub async fn recover_uploads(&self) -> Result<RecoveredUploads> {
        let mut recovered = RecoveredUploads::default();
        for (id, _) in self.storage.uploads().await? {
            let resumable = match self.storage.upload_info(&id).await {
                Ok(Some(info)) => !info.monolithic,
                Ok(None) => false,
                Err(e) => {
                    // Kept (and counted): an operator may want to look at it; it expires with its age.
                    log::warn!("upload {id}: {e}");
                    true
                }
            };
            if resumable {
                self.sessions().entry(id).or_default();
                recovered.kept += 1;
            } else {
                self.storage.upload_delete(&id).await?;
                recovered.deleted += 1;
            }
        }
        Ok(recovered)
    }

    /// The upload's size, if it exists and belongs to `repo`.
    pub async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        let info = self.storage.upload_info(id).await?;
        match info {
            Some(info) if info.repository == repo.as_str() => Ok(info.size),
            _ => Err(RegistryError::BlobUploadUnknown(id.to_string())),
        }
    }

    /// Appends a request body to an upload. `range` (from `Content-Range`, inclusive) must start where the upload
    /// ends and announce the body's length. A failed append leaves the upload as it was before the request, and so
    /// does a request that goes away before its body ended (see [`UploadJob`]). Returns the new size.
    pub async fn upload_append<B, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        location: &str,
        range: Option<(u64, u64)>,
        body: B,
    ) -> Result<u64>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        // Unknown ids never get a session slot (the map would grow with every guessed id).
        self.upload_size(repo, id).await?;
        let slot = self.slot(id);
        let mut session = slot.lock_owned().await;
        let size = self.upload_size(repo, id).await?;
        if let Some((start, _)) = range {
            // Refused before anything is read or hashed.
            if start != size {
                return Err(out_of_order(id, location, size, start));
            }
        }
        // Keep hashing with the algorithm the session started with (a monolithic push knows its digest up front).
        let algorithm = session
            .as_ref()
            .map_or(Algorithm::Sha256, |cached| cached.hasher.algorithm());
        // Everything that waits comes before the cached hash is taken out of the session: a request dropped while
        // it waits then leaves the hash in place (review finding: each reset forced a full rehash).
        let announced = chunk_length(range)?;
        let (sink, feed, stream) = self.body_sink(id).await?;
        let hash = self
            .current_hash(id, size, session.take(), algorithm)
            .await?;
        let job = UploadJob {
            shared: self.shared(),
            id: id.clone(),
            session,
            size,
            before: hash,
            announced,
            body: Some(sink),
            stream: Some(stream),
            finish: None,
        };
        feed_task(tokio::spawn(job.run()), Some((feed, body))).await
    }

    /// What an append needs besides the session: a stream permit, the upload's writer, and the channel the body
    /// is fed through.
    async fn body_sink(
        &self,
        id: &UploadId,
    ) -> Result<(BodySink, mpsc::Sender<Feed>, OwnedSemaphorePermit)> {
        let stream = self.stream_permit()?;
        let writer = self.storage.upload_writer(id).await?;
        let (feed, receive) = mpsc::channel(FEED_DEPTH);
        Ok((
            BodySink {
                feed: receive,
                writer,
            },
            feed,
            stream,
        ))
    }

    fn stream_permit(&self) -> Result<OwnedSemaphorePermit> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.too_many_streams())
    }

    /// The running hash for an upload of `size` bytes: the in-memory one when it is current and of the right
    /// algorithm, otherwise rebuilt from the stored bytes (read and hashed on the blocking pool, one chunk at a
    /// time).
    async fn current_hash(
        &self,
        id: &UploadId,
        size: u64,
        cached: Option<UploadHash>,
        algorithm: Algorithm,
    ) -> Result<UploadHash> {
        if let Some(hash) = cached {
            if hash.hashed == size && hash.hasher.algorithm() == algorithm {
                return Ok(hash);
            }
        }
        log::info!(
            "upload {id}: rebuilding the {} hash from {size} stored bytes",
            algorithm.name()
        );
        let mut hasher = Hasher::new(algorithm);
        let mut hashed = 0u64;
        let mut stream = self.storage.upload_read(id).await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                RegistryError::Storage(StorageError::Io {
                    what: format!("read upload {id}"),
                    source: e,
                })
            })?;
            hashed = hashed.saturating_add(chunk.len() as u64);
            hasher = hashing::update_blocking(hasher, vec![chunk])
                .await
                .map_err(pipe_failure)?;
        }
        Ok(UploadHash { hasher, hashed })
    }

    /// Completes an upload: appends the request's body (if it has one), verifies the digest, and makes the blob
    /// visible in `repo`.
    ///
    /// Whether there is a final chunk is decided by the body itself: an empty body is no body. Headers cannot tell
    /// (over HTTP/2 a streamed body has neither `Content-Length` nor `Transfer-Encoding`). On a digest mismatch
    /// only the bytes this request appended are rolled back: the chunks acknowledged earlier stay, and so does the
    /// session, so the client can retry the `PUT` (or cancel the upload).
    pub async fn upload_finish<B, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        location: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: Option<B>,
    ) -> Result<()>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        self.upload_size(repo, id).await?;
        let slot = self.slot(id);
        let mut session = slot.lock_owned().await;
        let size = self.upload_size(repo, id).await?;
        if let Some((start, _)) = range {
            if start != size {
                return Err(out_of_order(id, location, size, start));
            }
        }
        // The first chunk is awaited before the cached hash is taken out of the session: a request dropped while
        // it waits then leaves the hash in place (review finding: each reset forced a full rehash).
        let chunk = match body {
            None => None,
            Some(mut body) => match body.next().await {
                None if range.is_none() => None,
                first => Some(futures_util::stream::iter(first).chain(body)),
            },
        };
        let before = self
            .current_hash(id, size, session.take(), digest.algorithm())
            .await?;
        let prepared = match (chunk, range) {
            (None, Some((start, end))) => Err(RegistryError::SizeInvalid(format!(
                "Content-Range {start}-{end} announces a chunk, the request has no body"
            ))),
            (None, None) => Ok((None, None, None, None)),
            (Some(chunk), range) => match chunk_length(range) {
                Ok(announced) => self.body_sink(id).await.map(|(sink, feed, stream)| {
                    (announced, Some(sink), Some((feed, chunk)), Some(stream))
                }),
                Err(e) => Err(e),
            },
        };
        let (announced, sink, feed, stream) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                *session = Some(before);
                return Err(e);
            }
        };
        let job = UploadJob {
            shared: self.shared(),
            id: id.clone(),
            session,
            size,
            before,
            announced,
            body: sink,
            stream,
            finish: Some((repo.clone(), digest.clone())),
        };
        feed_task(tokio::spawn(job.run()), feed).await.map(|_| ())
    }

    /// Pushes a whole blob in one request (`POST ?digest=`). The upload is created, written, verified and committed
    /// by one task that runs to the end even if the request goes away: it becomes the blob, or nothing is left of
    /// it (neither its directory nor its session).
    pub async fn upload_monolithic<B, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: B,
    ) -> Result<()>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        // Refused before anything is created when every upload stream is in use.
        let stream = self.stream_permit()?;
        let id = UploadId::new_random();
        let slot = self.reserve_session(&id).await?;
        let info = UploadInfo {
            repository: repo.to_string(),
            size: 0,
            started_unix: now_unix(),
            monolithic: true,
        };
        let (feed, receive) = mpsc::channel(FEED_DEPTH);
        let shared = self.shared();
        let (repo, digest) = (repo.clone(), digest.clone());
        let task = tokio::spawn(async move {
            let pushed = async {
                shared.storage.upload_create(&id, &info).await?;
                // Nobody else knows the id yet: the lock is free.
                let session = slot.lock_owned().await;
                let writer = shared.storage.upload_writer(&id).await?;
                let job = UploadJob {
                    shared: shared.clone(),
                    id: id.clone(),
                    session,
                    size: 0,
                    before: UploadHash {
                        hasher: Hasher::new(digest.algorithm()),
                        hashed: 0,
                    },
                    announced: None,
                    body: Some(BodySink {
                        feed: receive,
                        writer,
                    }),
                    stream: Some(stream),
                    finish: Some((repo, digest)),
                };
                job.run().await
            }
            .await;
            let pushed = pushed.map_err(|e| match e {
                // Not the chunked upload's "can be retried": nothing of a monolithic push is kept.
                RegistryError::DigestInvalid(why) => {
                    let what = why.split_once("; ").map_or(why.as_str(), |(what, _)| what);
                    RegistryError::DigestInvalid(format!("{what}; nothing was stored"))
                }
                other => other,
            });
            if pushed.is_err() {
                // A failed (or abandoned) monolithic push leaves nothing behind.
                if let Err(e) = shared.storage.upload_delete(&id).await {
                    log::warn!("failed monolithic upload {id}: {e}");
                }
                shared.forget(&id);
            }
            pushed
        });
        feed_task(task, Some((feed, body))).await.map(|_| ())
    }

    /// Cancels an upload.
    pub async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.upload_size(repo, id).await?;
        let slot = self.slot(id);
        let _session = slot.lock().await;
        self.upload_size(repo, id).await?;
        self.storage.upload_delete(id).await?;
        self.forget(id);
        Ok(())
    }

    /// Deletes uploads untouched for longer than `max_age`; returns how many.
    ///
    /// Each candidate is judged again under its session's lock, since a request may have written to it after the
    /// listing: one a request holds is in use and skipped, one written since is kept. A delete that fails is
    /// logged and the sweep goes on (the next sweep retries it).
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let stale = |last_write: SystemTime| {
            SystemTime::now()
                .duration_since(last_write)
                .unwrap_or_default()
                > max_age
        };
        let mut expired = 0;
        for (id, last_write) in self.storage.uploads().await? {
            if !stale(last_write) {
                continue;
            }
            // An upload without a session (a proxy fetch) gets one while it is judged, so that no request on it
            // runs meanwhile; it is taken out again if the upload stays.
            let (slot, added) = {
                let mut sessions = self.sessions();
                match sessions.get(&id) {
                    Some(slot) => (slot.clone(), false),
                    None => {
                        let slot = SessionSlot::default();
                        sessions.insert(id.clone(), slot.clone());
                        (slot, true)
                    }
                }
            };
            let Ok(session) = slot.clone().try_lock_owned() else {
                continue;
            };
            let delete = match self.storage.upload_modified(&id).await {
                Ok(Some(last_write)) => stale(last_write),
                Ok(None) => {
                    drop(session);
                    self.forget(&id);
                    continue;
                }
                Err(e) => {
                    log::warn!("expiring upload {id}: {e}");
                    false
                }
            };
            if delete {
                match self.storage.upload_delete(&id).await {
                    Ok(()) => {
                        drop(session);
                        self.forget(&id);
                        expired += 1;
                    }
                    Err(e) => log::warn!("expiring upload {id}: {e}"),
                }
            } else {
                drop(session);
                if added {
                    let mut sessions = self.sessions();
                    // Only when nobody else took hold of it meanwhile (the map's reference and ours).
                    if sessions.get(&id).is_some_and(|held| {
                        Arc::ptr_eq(held, &slot) && Arc::strong_count(held) == 2
                    }) {
                        sessions.remove(&id);
                    }
                }
            }
        }
        Ok(expired)
    }

    // ----- manifests

    async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest> {
        match reference {
            Reference::Digest(digest) => Ok(digest.clone()),
            Reference::Tag(tag) => self
                .storage
                .tag_get(repo, tag)
                .await?
                .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}:{tag}"))),
        }
    }

    /// A manifest of `repo` by tag or digest.
    pub async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, StoredManifest)> {
        let digest = self.resolve(repo, reference).await?;
        let manifest = self
            .storage
            .manifest_get(repo, &digest)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}@{digest}")))?;
        Ok((digest, manifest))
    }

    /// The lock that serialises the manifest and tag changes of `repo` (see [`RepoLocks`]).
    fn repo_lock(&self, repo: &RepoName) -> &tokio::sync::Mutex<()> {
        self.repo_locks.get(repo)
    }

    /// Validates and stores a manifest; tags it with `reference` when that is a tag, and with each of `tags`
    /// (the `?tag=` parameters of a push by digest).
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PushedManifest> {
        if bytes.len() as u64 > manifest::MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestTooLarge {
                size: bytes.len() as u64,
                limit: manifest::MAX_MANIFEST_BYTES,
            });
        }
        let parsed = manifest::parse(&bytes, content_type)?;
        let (digest, mut all_tags) = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::compute(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest has digest {actual}, pushed as {expected}"
                    )));
                }
                (actual, Vec::new())
            }
            Reference::Tag(tag) => (Digest::sha256_of(&bytes), vec![tag.clone()]),
        };
        for tag in tags {
            if !all_tags.contains(tag) {
                all_tags.push(tag.clone());
            }
        }
        let _repo = self.repo_lock(repo).lock().await;
        self.check_references(repo, &parsed).await?;
        let stored = StoredManifest {
            media_type: parsed.media_type.clone(),
            bytes,
        };
        self.storage.manifest_put(repo, &digest, &stored).await?;
        if let Some(subject) = &parsed.subject {
            let descriptor = parsed.referrer_descriptor(&digest, stored.bytes.len());
            let descriptor = serde_json::to_vec(&descriptor).map_err(|e| {
                RegistryError::ManifestInvalid(format!("descriptor cannot be encoded: {e}"))
            })?;
            self.storage
                .referrer_add(repo, subject, &digest, &descriptor)
                .await?;
        }
        for tag in &all_tags {
            self.storage.tag_set(repo, tag, &digest).await?;
        }
        log::info!(
            "manifest {digest} ({}) pushed to {repo} as {reference}{}",
            parsed.media_type,
            if tags.is_empty() {
                String::new()
            } else {
                format!(
                    " with tags {}",
                    tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(", ")
                )
            }
        );
        Ok(PushedManifest {
            digest,
            subject: parsed.subject,
            tags: all_tags,
        })
    }

    /// Every blob a manifest names must be visible in `repo`, and every child manifest must be in `repo`, each
    /// with exactly the size its descriptor declares (a digest named twice is checked twice).
    async fn check_references(&self, repo: &RepoName, parsed: &ParsedManifest) -> Result<()> {
        // Each distinct digest is looked up once, however many descriptors name it: a 4 MiB index naming one 4 MiB
        // child 25,000 times read that child 25,000 times on the worker (11 s, review finding).
        let mut blob_sizes: HashMap<&Digest, u64> = HashMap::new();
        for blob in &parsed.blobs {
            let digest = &blob.digest;
            let stored = match blob_sizes.get(digest) {
                Some(&size) => size,
                None => {
                    let stored = if self.storage.blob_linked(repo, digest).await? {
                        self.storage.blob_size(digest).await?
                    } else {
                        None
                    };
                    let Some(stored) = stored else {
                        return Err(RegistryError::ManifestBlobUnknown(format!("blob {digest}")));
                    };
                    blob_sizes.insert(digest, stored);
                    stored
                }
            };
            if stored != blob.size {
                return Err(RegistryError::ManifestInvalid(format!(
                    "blob {digest} is {stored} bytes, a descriptor says {}",
                    blob.size
                )));
            }
        }
        let mut child_sizes: HashMap<&Digest, u64> = HashMap::new();
        for child in &parsed.children {
            let digest = &child.digest;
            let stored = match child_sizes.get(digest) {
                Some(&size) => size,
                None => {
                    let Some(stored) = self.storage.manifest_get(repo, digest).await? else {
                        return Err(RegistryError::ManifestBlobUnknown(format!(
                            "manifest {digest}"
                        )));
                    };
                    let size = stored.bytes.len() as u64;
                    child_sizes.insert(digest, size);
                    size
                }
            };
            if stored != child.size {
                return Err(RegistryError::ManifestInvalid(format!(
                    "child manifest {digest} is {stored} bytes, a descriptor says {}",
                    child.size
                )));
            }
        }
        Ok(())
    }

    /// Deletes a manifest by digest (with its tags and referrer entry) or a tag.
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let _repo = self.repo_lock(repo).lock().await;
        match reference {
            Reference::Tag(tag) => {
                if self.storage.tag_delete(repo, tag).await? {
                    log::info!("tag {repo}:{tag} deleted");
                    Ok(())
                } else {
                    Err(RegistryError::ManifestUnknown(format!("{repo}:{tag}")))
                }
            }
            Reference::Digest(digest) => {
                let Some(stored) = self.storage.manifest_get(repo, digest).await? else {
                    return Err(RegistryError::ManifestUnknown(format!("{repo}@{digest}")));
                };
                for tag in self.storage.tags(repo).await?.unwrap_or_default() {
                    self.storage.tag_delete_if(repo, &tag, digest).await?;
                }
                if let Ok(parsed) = manifest::parse(&stored.bytes, Some(&stored.media_type)) {
                    if let Some(subject) = parsed.subject {
                        self.storage.referrer_remove(repo, &subject, digest).await?;
                    }
                }
                self.storage.manifest_delete(repo, digest).await?;
                log::info!("manifest {repo}@{digest} deleted");
                Ok(())
            }
        }
    }

    // ----- listings

    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page<Tag>> {
        let tags = self
            .storage
            .tags(repo)
            .await?
            .ok_or_else(|| RegistryError::NameUnknown(repo.to_string()))?;
        Ok(paginate(tags, n, last))
    }

    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page<RepoName>> {
        Ok(paginate(self.storage.repositories().await?, n, last))
    }

    /// The referrers of `subject` in `repo`, optionally only those of one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let mut descriptors = Vec::new();
        for raw in self.storage.referrers(repo, subject).await? {
            let descriptor: Descriptor = serde_json::from_slice(&raw).map_err(|e| {
                RegistryError::Storage(StorageError::Corrupt(format!(
                    "referrer of {subject} in {repo}: {e}"
                )))
            })?;
            if artifact_type.is_none() || descriptor.artifact_type.as_deref() == artifact_type {
                descriptors.push(descriptor);
            }
        }
        Ok(descriptors)
    }
}

/// A chunk that does not start where the upload ends: 416 with what was received.
fn out_of_order(id: &UploadId, location: &str, received: u64, start: u64) -> RegistryError {
    RegistryError::ChunkOutOfOrder {
        upload: id.to_string(),
        location: location.to_owned(),
        received,
        start,
    }
}

/// A message from a request to the task that appends its body.
enum Feed {
    Chunk(Bytes),
    /// The body ended. A channel that closes without it means the request went away (or its body broke).
    End,
}

/// Chunks that may wait between a request and its upload task. The channel moves the received `Bytes` as they
/// are; what it holds is bounded by this many of the chunks the HTTP layer hands out.
const FEED_DEPTH: usize = 4;

/// The registry's parts an upload task needs; all shared, so the task can outlive the request that spawned it.
#[derive(Clone)]
struct Shared {
    storage: Arc<dyn Storage>,
    sessions: SessionMap,
    content_gate: Arc<tokio::sync::RwLock<()>>,
}

impl Shared {
    fn forget(&self, id: &UploadId) {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }
}

/// Where a request's body arrives, and the writer that appends it.
struct BodySink {
    feed: mpsc::Receiver<Feed>,
    writer: Box<dyn UploadWriter>,
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
struct UploadJob {
    shared: Shared,
    id: UploadId,
    /// Held until the job ends; `None` inside while the job runs (the hash is in `before` and the pipeline).
    session: SessionGuard,
    /// The upload's size and running hash before this request.
    size: u64,
    before: UploadHash,
    /// The chunk's `Content-Range` (first, last) and the length it announces.
    announced: Option<(u64, u64, u64)>,
    /// `None` for a closing `PUT` without a body.
    body: Option<BodySink>,
    /// The stream permit, held until the append is over (rolled back included).
    stream: Option<OwnedSemaphorePermit>,
    /// For a closing `PUT`: the repository to link the blob into and the digest it must have.
    finish: Option<(RepoName, Digest)>,
}

impl UploadJob {
    /// Returns the upload's new size.
    async fn run(mut self) -> Result<u64> {
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
        if let Err(e) = linked {
            // The upload became the blob, so the session has nothing left to continue.
            let UploadJob {
                shared,
                id,
                session,
                ..
            } = self;
            drop(session);
            shared.forget(&id);
            return Err(e.into());
        }
        let UploadJob {
            shared,
            id,
            session,
            ..
        } = self;
        drop(session);
        shared.forget(&id);
        log::info!("blob {digest} ({} bytes) pushed to {repo}", hash.hashed);
        Ok(hash.hashed)
    }

    /// Appends the body; on failure the upload is cut back to `size` and the session keeps `before`, so a retry
    /// from the reported offset is consistent.
    async fn append(&mut self, sink: BodySink) -> Result<UploadHash> {
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
fn chunk_length(range: Option<(u64, u64)>) -> Result<Option<(u64, u64, u64)>> {
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
async fn feed_task<T, B, E>(
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
fn abandoned(id: &UploadId) -> RegistryError {
    RegistryError::Body(format!("the request on upload {id} ended before its body"))
}

/// Streams the chunks arriving on the sink's channel into its writer and the hasher. Received bytes are batched;
/// each batch is written and hashed by short tasks on the blocking pool while the next batch is received (a
/// pipeline of depth one), so no thread waits for the client and each upload holds at most two batches in memory.
/// Returns only after the batch in flight has landed, whatever the outcome.
async fn pipe(id: &UploadId, sink: BodySink, hash: UploadHash) -> Result<UploadHash> {
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
type Batched = (Box<dyn UploadWriter>, Result<(Hasher, u64)>);

/// Writes one batch and hashes it at the same time, each on the blocking pool; gives the writer back.
async fn write_and_hash(
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
fn pipe_failure(e: super::hashing::PipeClosed) -> RegistryError {
    RegistryError::Storage(StorageError::Io {
        what: "hashing an upload".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::storage::fs::FsStorage;
    use crate::registry::storage::ByteStream;

    type Chunks = futures_util::stream::Iter<std::vec::IntoIter<std::io::Result<Bytes>>>;

    fn body(parts: &[&[u8]]) -> Chunks {
        let chunks: Vec<std::io::Result<Bytes>> = parts
            .iter()
            .map(|part| Ok(Bytes::copy_from_slice(part)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    fn registry() -> (tempfile::TempDir, Arc<Registry>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = FsStorage::open(dir.path()).expect("open storage");
        (dir, Arc::new(Registry::new(Arc::new(storage))))
    }

    fn repo(name: &str) -> RepoName {
        RepoName::parse(name).expect("valid name")
    }

    fn tag(name: &str) -> Tag {
        Tag::parse(name).expect("valid tag")
    }

    /// Pushes a config and a layer to `repo` (once); returns an image manifest naming them, made unique by `seed`.
    async fn image(registry: &Registry, repo: &RepoName, seed: u64) -> Bytes {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let layer = b"layer".to_vec();
        for blob in [&config, &layer] {
            let digest = Digest::sha256_of(blob);
            if registry.blob_size(repo, &digest).await.is_err() {
                registry
                    .upload_monolithic(repo, &digest, body(&[blob]))
                    .await
                    .expect("push blob");
            }
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::sha256_of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": Digest::sha256_of(&layer).to_string(), "size": layer.len()}],
            "annotations": {"seed": seed.to_string()},
        });
        Bytes::from(serde_json::to_vec(&manifest).expect("json"))
    }

    async fn put(
        registry: &Registry,
        repo: &RepoName,
        reference: &Reference,
        bytes: &Bytes,
    ) -> Result<Digest> {
        registry
            .manifest_put(
                repo,
                reference,
                &[],
                Some(manifest::OCI_MANIFEST),
                bytes.clone(),
            )
            .await
            .map(|pushed| pushed.digest)
    }

    /// Issue 9: a closing PUT whose digest does not match destroyed the whole upload, chunks acknowledged earlier
    /// included. Only its own bytes are rolled back; the retried PUT completes the blob. A failed monolithic push
    /// still leaves nothing.
    #[tokio::test]
    async fn a_wrong_digest_on_the_closing_put_keeps_earlier_chunks() {
        let (_dir, registry) = registry();
        let repo = repo("uploads/retry");
        let id = registry.upload_start(&repo).await.expect("start");
        let location = format!("/v2/{repo}/blobs/uploads/{id}");
        let size = registry
            .upload_append(&repo, &id, &location, Some((0, 4)), body(&[b"hel", b"lo"]))
            .await
            .expect("PATCH");
        assert_eq!(size, 5);
        let wrong = Digest::sha256_of(b"something else");
        let refused = registry
            .upload_finish(&repo, &id, &location, &wrong, None, Some(body(&[b"world"])))
            .await;
        assert!(
            matches!(refused, Err(RegistryError::DigestInvalid(_))),
            "{refused:?}"
        );
        assert_eq!(registry.upload_size(&repo, &id).await.expect("size"), 5);
        // An empty closing body is no body: the digest of the five bytes is checked, and refused again.
        let refused = registry
            .upload_finish(&repo, &id, &location, &wrong, None, Some(body(&[])))
            .await;
        assert!(
            matches!(refused, Err(RegistryError::DigestInvalid(_))),
            "{refused:?}"
        );
        let right = Digest::sha256_of(b"helloworld");
        registry
            .upload_finish(
                &repo,
                &id,
                &location,
                &right,
                Some((5, 9)),
                Some(body(&[b"world"])),
            )
            .await
            .expect("retried PUT");
        assert_eq!(registry.blob_size(&repo, &right).await.expect("blob"), 10);

        let monolithic = registry
            .upload_monolithic(&repo, &wrong, body(&[b"helloworld"]))
            .await;
        assert!(
            matches!(monolithic, Err(RegistryError::DigestInvalid(_))),
            "{monolithic:?}"
        );
        assert!(
            registry
                .storage()
                .uploads()
                .await
                .expect("uploads")
                .is_empty(),
            "a failed monolithic push leaves no upload"
        );
    }

    /// Issue 9: a manifest PUT by tag racing a DELETE of the same manifest by digest could leave a tag that
    /// `tags/list` lists but that answers 404. Every round must end as one of the two serial orders would:
    /// PUT then DELETE (no manifest, no tag) or DELETE then PUT (the manifest, tagged).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn put_by_tag_racing_delete_by_digest_never_leaves_a_dangling_tag() {
        let (_dir, registry) = registry();
        let repo = repo("race/put-delete");
        let bytes = image(&registry, &repo, 1).await;
        let digest = Digest::sha256_of(&bytes);
        let by_digest = Reference::Digest(digest.clone());
        for round in 0..300 {
            let t = tag(&format!("t{round}"));
            put(&registry, &repo, &by_digest, &bytes)
                .await
                .expect("push by digest");
            let start = Arc::new(tokio::sync::Barrier::new(2));
            let pusher = tokio::spawn({
                let (registry, repo, bytes, start) =
                    (registry.clone(), repo.clone(), bytes.clone(), start.clone());
                let by_tag = Reference::Tag(t.clone());
                async move {
                    start.wait().await;
                    put(&registry, &repo, &by_tag, &bytes).await
                }
            });
            let deleter = tokio::spawn({
                let (registry, repo, by_digest, start) = (
                    registry.clone(),
                    repo.clone(),
                    by_digest.clone(),
                    start.clone(),
                );
                async move {
                    start.wait().await;
                    registry.manifest_delete(&repo, &by_digest).await
                }
            });
            pusher
                .await
                .expect("join")
                .expect("PUT by tag is acknowledged");
            deleter
                .await
                .expect("join")
                .expect("DELETE by digest is acknowledged");
            let tagged = registry
                .storage()
                .tag_get(&repo, &t)
                .await
                .expect("tag_get");
            let stored = registry
                .storage()
                .manifest_get(&repo, &digest)
                .await
                .expect("manifest_get")
                .is_some();
            match (tagged, stored) {
                // PUT, then DELETE.
                (None, false) => {}
                // DELETE, then PUT.
                (Some(tagged), true) => assert_eq!(tagged, digest, "round {round}"),
                (tagged, stored) => panic!(
                    "round {round}: tag {t} -> {tagged:?} with the manifest stored: {stored}; no serial order gives that"
                ),
            }
            let listed = registry.tags(&repo, None, None).await.expect("tags").items;
            for listed in listed {
                let resolved = registry
                    .manifest_get(&repo, &Reference::Tag(listed.clone()))
                    .await;
                assert!(
                    resolved.is_ok(),
                    "round {round}: listed tag {listed} answers {resolved:?}"
                );
            }
        }
    }

    /// Issue 9: a DELETE of manifest M1 racing a PUT that moves tag `t` from M1 to M2 could delete `t` although
    /// the PUT got 201 (the delete read the tag, compared, then removed it). In both serial orders `t` ends at M2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn delete_racing_a_tag_move_never_loses_the_moved_tag() {
        let (_dir, registry) = registry();
        let repo = repo("race/move");
        let m2 = image(&registry, &repo, 2).await;
        let m2_digest = put(
            &registry,
            &repo,
            &Reference::Digest(Digest::sha256_of(&m2)),
            &m2,
        )
        .await
        .expect("push M2");
        for round in 0..300 {
            let m1 = image(&registry, &repo, 1000 + round).await;
            let t = Reference::Tag(tag(&format!("t{round}")));
            let m1_digest = put(&registry, &repo, &t, &m1).await.expect("push M1 as t");
            let start = Arc::new(tokio::sync::Barrier::new(2));
            let mover = tokio::spawn({
                let (registry, repo, t, m2, start) = (
                    registry.clone(),
                    repo.clone(),
                    t.clone(),
                    m2.clone(),
                    start.clone(),
                );
                async move {
                    start.wait().await;
                    put(&registry, &repo, &t, &m2).await
                }
            });
            let deleter = tokio::spawn({
                let (registry, repo, start) = (registry.clone(), repo.clone(), start.clone());
                let m1 = Reference::Digest(m1_digest.clone());
                async move {
                    start.wait().await;
                    registry.manifest_delete(&repo, &m1).await
                }
            });
            mover
                .await
                .expect("join")
                .expect("PUT moving t is acknowledged");
            deleter
                .await
                .expect("join")
                .expect("DELETE of M1 is acknowledged");
            let Reference::Tag(t) = t else { unreachable!() };
            assert_eq!(
                registry
                    .storage()
                    .tag_get(&repo, &t)
                    .await
                    .expect("tag_get"),
                Some(m2_digest.clone()),
                "round {round}: tag {t} must point at M2 in either serial order"
            );
            assert_eq!(
                registry
                    .storage()
                    .manifest_get(&repo, &m1_digest)
                    .await
                    .expect("get"),
                None,
                "round {round}: M1 was deleted"
            );
        }
    }

    /// FsStorage with faults a test switches on: upload writes that take `write_delay` on the blocking pool (a slow
    /// disk), counted when they start and when they land; a listing of uploads that reports each as last written
    /// long ago (a listing taken before a request wrote to it); one upload whose delete fails.
    struct Faulty {
        fs: FsStorage,
        root: std::path::PathBuf,
        write_delay: Duration,
        writes_started: Arc<tokio::sync::watch::Sender<usize>>,
        writes_landed: Arc<tokio::sync::watch::Sender<usize>>,
        stale_listing: bool,
        undeletable: Mutex<Option<UploadId>>,
        /// Commits that fail before they do anything (a full or read-only disk).
        failing_commits: std::sync::atomic::AtomicUsize,
    }

    impl Faulty {
        fn new(root: &std::path::Path, write_delay: Duration) -> Faulty {
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
    async fn reached(counter: &tokio::sync::watch::Sender<usize>, n: usize, what: &str) {
        let mut seen = counter.subscribe();
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|count| *count >= n))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {n} {what}"))
            .expect("counter dropped");
    }

    /// Polls `done` until it holds, with a deadline.
    async fn eventually<F: std::future::Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    struct SlowWriter {
        file: Option<std::fs::File>,
        delay: Duration,
        started: Arc<tokio::sync::watch::Sender<usize>>,
        landed: Arc<tokio::sync::watch::Sender<usize>>,
    }

    type StorageResult<T> = std::result::Result<T, StorageError>;

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

        fn written(&self) -> u64 {
            self.file
                .as_ref()
                .and_then(|file| file.metadata().ok())
                .map_or(0, |metadata| metadata.len())
        }

        async fn finish(mut self: Box<Self>) -> StorageResult<u64> {
            let file = self.file.take().expect("writer has its file");
            Ok(file.metadata().expect("stat upload").len())
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
    async fn upload_holding_good(
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
    async fn drop_mid_write<T: Send + 'static>(
        storage: &Faulty,
        writes: usize,
        request: impl std::future::Future<Output = T> + Send + 'static,
    ) {
        let task = tokio::spawn(request);
        reached(&storage.writes_started, writes, "writes started").await;
        task.abort();
        assert!(task.await.is_err(), "the request was dropped, not answered");
    }

    fn faulty_registry(
        faulty: impl FnOnce(&std::path::Path) -> Faulty,
    ) -> (tempfile::TempDir, Arc<Faulty>, Arc<Registry>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Arc::new(faulty(dir.path()));
        let registry = Arc::new(Registry::new(storage.clone()));
        (dir, storage, registry)
    }

    /// One chunk, then a client that sends nothing more (until its request is dropped).
    fn cut_off(chunk: &'static [u8]) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin + Send {
        futures_util::stream::iter(vec![Ok(Bytes::from_static(chunk))])
            .chain(futures_util::stream::pending())
    }

    async fn blob_bytes(registry: &Registry, repo: &RepoName, digest: &Digest) -> Vec<u8> {
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

    /// Review of issue 9: a PATCH whose request was dropped (the client reset its connection) left its batch write
    /// running detached while the session's lock was already free, so a closing PUT hashed and committed the
    /// upload, and the late write landed in the committed, content-addressed blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patch_cut_off_mid_write_never_writes_into_a_committed_blob() {
        let (_dir, storage, registry) =
            faulty_registry(|root| Faulty::new(root, Duration::from_millis(300)));
        let (repo, id, location) = upload_holding_good(&registry, "cancel/blob", None).await;
        let (cut, cut_id, cut_location) = (registry.clone(), id.clone(), location.clone());
        let cut_repo = repo.clone();
        drop_mid_write(&storage, 2, async move {
            cut.upload_append(&cut_repo, &cut_id, &cut_location, None, cut_off(b"EVIL"))
                .await
        })
        .await;
        // The closing PUT for the four acknowledged bytes, without a body.
        let digest = Digest::sha256_of(b"good");
        registry
            .upload_finish(&repo, &id, &location, &digest, None, None::<Chunks>)
            .await
            .expect("PUT commits");
        reached(&storage.writes_landed, 2, "writes landed").await;
        let bytes = blob_bytes(&registry, &repo, &digest).await;
        assert_eq!(
            bytes,
            b"good",
            "blob {digest} holds {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }

    /// Review of issue 9: the bytes of a PATCH whose request was dropped stayed in the upload (nothing truncated
    /// them). They are rolled back, and the upload continues from the size acknowledged before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patch_cut_off_mid_write_is_rolled_back() {
        let (_dir, storage, registry) =
            faulty_registry(|root| Faulty::new(root, Duration::from_millis(300)));
        let (repo, id, location) =
            upload_holding_good(&registry, "cancel/rollback", Some((0, 3))).await;
        let (cut, cut_id, cut_location) = (registry.clone(), id.clone(), location.clone());
        let cut_repo = repo.clone();
        drop_mid_write(&storage, 2, async move {
            cut.upload_append(&cut_repo, &cut_id, &cut_location, None, cut_off(b"EVIL"))
                .await
        })
        .await;
        reached(&storage.writes_landed, 2, "writes landed").await;
        // An empty PATCH reports the size under the session's lock.
        let size = registry
            .upload_append(&repo, &id, &location, None, body(&[]))
            .await
            .expect("empty PATCH");
        assert_eq!(size, 4, "the dropped PATCH's bytes are rolled back");
        registry
            .upload_append(&repo, &id, &location, Some((4, 8)), body(&[b"-more"]))
            .await
            .expect("PATCH from the acknowledged offset");
        let digest = Digest::sha256_of(b"good-more");
        registry
            .upload_finish(&repo, &id, &location, &digest, None, None::<Chunks>)
            .await
            .expect("PUT commits");
        assert_eq!(blob_bytes(&registry, &repo, &digest).await, b"good-more");
    }

    /// Review of issue 9: a closing PUT whose commit failed (a full or read-only disk) kept its own bytes, so the
    /// same PUT, retried, had the wrong digest forever. The upload is put back as it was before that PUT.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closing_put_whose_commit_fails_can_be_retried() {
        let (_dir, storage, registry) = faulty_registry(|root| Faulty::new(root, Duration::ZERO));
        storage
            .failing_commits
            .store(1, std::sync::atomic::Ordering::Release);
        let (repo, id, location) = upload_holding_good(&registry, "cancel/commit", None).await;
        let digest = Digest::sha256_of(b"good-more");
        let put = || {
            registry.upload_finish(
                &repo,
                &id,
                &location,
                &digest,
                None,
                Some(body(&[b"-more"])),
            )
        };
        assert!(put().await.is_err(), "the injected commit failure");
        assert_eq!(
            registry.upload_size(&repo, &id).await.expect("size"),
            4,
            "the failed PUT's bytes are rolled back"
        );
        put().await.expect("the same PUT, retried, commits");
        assert_eq!(blob_bytes(&registry, &repo, &digest).await, b"good-more");
    }

    /// Review of issue 9: a closing PUT whose request was dropped mid-body kept its bytes (nothing rolled them
    /// back). They are rolled back like a failed PUT's, and the upload can still be completed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closing_put_cut_off_mid_write_is_rolled_back() {
        let (_dir, storage, registry) =
            faulty_registry(|root| Faulty::new(root, Duration::from_millis(300)));
        let (repo, id, location) = upload_holding_good(&registry, "cancel/put", None).await;
        let (cut, cut_id, cut_location) = (registry.clone(), id.clone(), location.clone());
        let cut_repo = repo.clone();
        drop_mid_write(&storage, 2, async move {
            let digest = Digest::sha256_of(b"goodEVIL");
            cut.upload_finish(
                &cut_repo,
                &cut_id,
                &cut_location,
                &digest,
                None,
                Some(cut_off(b"EVIL")),
            )
            .await
        })
        .await;
        reached(&storage.writes_landed, 2, "writes landed").await;
        let size = registry
            .upload_append(&repo, &id, &location, None, body(&[]))
            .await
            .expect("empty PATCH");
        assert_eq!(size, 4, "the dropped PUT's bytes are rolled back");
        let digest = Digest::sha256_of(b"good");
        registry
            .upload_finish(&repo, &id, &location, &digest, None, None::<Chunks>)
            .await
            .expect("retried PUT commits");
        assert_eq!(blob_bytes(&registry, &repo, &digest).await, b"good");
    }

    /// Review of issue 9: a monolithic `POST ?digest=` whose request was dropped left its upload directory and its
    /// session behind (they were cleaned up only when the push returned an error).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_monolithic_push_cut_off_leaves_no_upload() {
        let (_dir, storage, registry) =
            faulty_registry(|root| Faulty::new(root, Duration::from_millis(300)));
        let repo = repo("cancel/monolithic");
        let push = tokio::spawn({
            let (registry, repo) = (registry.clone(), repo.clone());
            async move {
                let digest = Digest::sha256_of(b"never sent in full");
                registry
                    .upload_monolithic(&repo, &digest, cut_off(b"never"))
                    .await
            }
        });
        reached(&storage.writes_started, 1, "writes started").await;
        assert_eq!(registry.upload_sessions(), 1);
        push.abort();
        assert!(push.await.is_err(), "the POST was dropped, not answered");
        eventually("the abandoned upload to be deleted", || async {
            storage.uploads().await.expect("uploads").is_empty()
        })
        .await;
        eventually("the abandoned session to be forgotten", || async {
            registry.upload_sessions() == 0
        })
        .await;
    }

    /// Review of issue 9: the sweeper judged an upload stale from a listing taken before it took the upload's lock,
    /// and deleted it even when a request had written to it since.
    #[tokio::test]
    async fn the_upload_sweeper_keeps_an_upload_written_after_its_listing() {
        let (_dir, _storage, registry) = faulty_registry(|root| Faulty {
            stale_listing: true,
            ..Faulty::new(root, Duration::ZERO)
        });
        let repo = repo("sweep/fresh");
        let id = registry.upload_start(&repo).await.expect("start");
        let location = format!("/v2/{repo}/blobs/uploads/{id}");
        registry
            .upload_append(&repo, &id, &location, None, body(&[b"fresh"]))
            .await
            .expect("PATCH");
        let expired = registry
            .expire_uploads(Duration::from_secs(3600))
            .await
            .expect("sweep");
        assert_eq!(expired, 0);
        assert_eq!(registry.upload_size(&repo, &id).await.expect("kept"), 5);
        assert_eq!(registry.upload_sessions(), 1);
    }

    /// Review of issue 9: one upload that could not be deleted stopped the sweep, so every stale upload listed
    /// after it stayed.
    #[tokio::test]
    async fn one_failed_delete_does_not_stop_the_upload_sweep() {
        let (dir, storage, registry) = faulty_registry(|root| Faulty::new(root, Duration::ZERO));
        let repo = repo("sweep/stale");
        let stuck = registry.upload_start(&repo).await.expect("start");
        let stale = registry.upload_start(&repo).await.expect("start");
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        for id in [&stuck, &stale] {
            std::fs::File::options()
                .append(true)
                .open(dir.path().join("uploads").join(id.as_str()).join("data"))
                .and_then(|data| data.set_modified(long_ago))
                .expect("age the upload");
        }
        *storage.undeletable.lock().expect("lock") = Some(stuck.clone());
        let expired = registry
            .expire_uploads(Duration::from_secs(3600))
            .await
            .expect("the sweep goes on past a failed delete");
        assert_eq!(expired, 1);
        assert!(
            registry.upload_size(&repo, &stale).await.is_err(),
            "expired"
        );
        assert!(registry.upload_size(&repo, &stuck).await.is_ok(), "kept");
        assert_eq!(registry.upload_sessions(), 1, "the kept upload's session");
    }

    fn strings<T: AsRef<str>>(page: &Page<T>) -> Vec<&str> {
        page.items.iter().map(|i| i.as_ref()).collect()
    }

    #[test]
    fn pagination() {
        let tags = || {
            ["a", "b", "c", "d"]
                .iter()
                .filter_map(|t| Tag::parse(t))
                .collect::<Vec<_>>()
        };
        let check = |n: Option<usize>, last: Option<&str>, expected: &[&str], more: bool| {
            let page = paginate(tags(), n, last);
            assert_eq!(strings(&page), expected, "n={n:?} last={last:?}");
            assert_eq!(page.more, more, "n={n:?} last={last:?}");
        };
        check(None, None, &["a", "b", "c", "d"], false);
        check(Some(2), None, &["a", "b"], true);
        check(Some(2), Some("b"), &["c", "d"], false);
        check(Some(4), None, &["a", "b", "c", "d"], false);
        check(Some(0), None, &[], false);
        check(None, Some("bb"), &["c", "d"], false);
        check(Some(1), Some("d"), &[], false);
        check(Some(10), Some("0"), &["a", "b", "c", "d"], false);
    }
}
