//! The registry's semantics, between the HTTP handlers and storage: visibility of blobs per repository, upload
//! sessions with streaming verification, manifest validation, tags, referrers and pagination.
//!
//! Knows nothing of actix-web: it takes validated names and byte streams and returns values or a `RegistryError`.
//! Content becomes visible only here, and only after its digest is verified.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::error::{RegistryError, Result};
use super::hashing::{self, Hasher};
use super::manifest::{self, Descriptor, ParsedManifest};
use super::names::{Algorithm, Digest, Reference, RepoName, Tag, UploadId};
use super::storage::{BlobContent, ByteRange, Storage, StoredManifest, UploadInfo, UploadWriter};

/// The running hash of an upload. It is valid while `hashed` equals the upload's stored size; after a restart (or a
/// failed append) it is rebuilt by reading the stored bytes back.
#[derive(Clone)]
struct UploadHash {
    hasher: Hasher,
    hashed: u64,
}

type SessionSlot = Arc<tokio::sync::Mutex<Option<UploadHash>>>;

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
}

pub struct Registry {
    storage: Arc<dyn Storage>,
    /// Held for reading while content is committed or linked; the proxy's eviction holds it for writing while it
    /// decides a blob is unused and deletes it.
    content_gate: Arc<tokio::sync::RwLock<()>>,
    /// One slot per upload session that exists (found on disk at start, or started since); its mutex serialises
    /// requests on the same upload. Its size is the number of sessions, capped by `limits.max_sessions`.
    sessions: Mutex<HashMap<UploadId, SessionSlot>>,
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
            sessions: Mutex::new(HashMap::new()),
            limits,
            streams: Arc::new(tokio::sync::Semaphore::new(limits.max_streams)),
            last_resync: Mutex::new(None),
        }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The gate that serialises content deletion (the proxy's eviction) with commits and links.
    pub fn content_gate(&self) -> Arc<tokio::sync::RwLock<()>> {
        self.content_gate.clone()
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

    /// Makes a blob visible in `repo` if it is visible in `from` (or, without `from`, in any repository).
    /// Returns false when it cannot be mounted; the caller then starts a normal upload.
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
        let visible = match from {
            Some(from) => self.storage.blob_linked(from, digest).await?,
            // Anonymous mount: every repository is readable by every client today, so a stored blob that some
            // repository holds may be mounted. When authorization arrives, this must ask it per repository.
            None => {
                let mut visible = false;
                for candidate in self.storage.repositories().await? {
                    if self.storage.blob_linked(&candidate, digest).await? {
                        visible = true;
                        break;
                    }
                }
                visible
            }
        };
        if visible {
            self.storage.blob_link(repo, digest).await?;
        }
        Ok(visible)
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
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions.remove(id);
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

    /// Appends a request body to an upload. `start`, from `Content-Range`, must be where the upload ends.
    /// A failed append leaves the upload as it was before the request. Returns the new size.
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
        let mut session = slot.lock().await;
        let size = self.upload_size(repo, id).await?;
        if let Some((start, _)) = range {
            if start != size {
                return Err(RegistryError::ChunkOutOfOrder {
                    upload: id.to_string(),
                    location: location.to_owned(),
                    received: size,
                    start,
                });
            }
        }
        // Keep hashing with the algorithm the session started with (a monolithic push knows its digest up front).
        let algorithm = session
            .as_ref()
            .map_or(Algorithm::Sha256, |cached| cached.hasher.algorithm());
        let hash = self
            .current_hash(id, size, session.take(), algorithm)
            .await?;
        match self.append(id, hash.clone(), body).await {
            Ok(appended) => {
                if let Some((start, end)) = range {
                    let announced = end.checked_sub(start).map(|d| d + 1);
                    let received = appended.hashed - size;
                    if announced != Some(received) {
                        self.storage.upload_truncate(id, size).await?;
                        *session = Some(hash);
                        return Err(RegistryError::SizeInvalid(format!(
                            "Content-Range {start}-{end} announces {} bytes, the body had {received}",
                            announced.map_or_else(|| "a negative number of".to_owned(), |n| n.to_string())
                        )));
                    }
                }
                let new_size = appended.hashed;
                *session = Some(appended);
                Ok(new_size)
            }
            Err(error) => {
                // Roll back to the state before this request, so a retry from the reported offset is consistent.
                if self.storage.upload_truncate(id, size).await.is_ok() {
                    *session = Some(hash);
                }
                Err(error)
            }
        }
    }

    /// The running hash for an upload of `size` bytes: the in-memory one when it is current and of the right
    /// algorithm, otherwise rebuilt from the stored bytes.
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
                RegistryError::Storage(super::storage::StorageError::Io {
                    what: format!("read upload {id}"),
                    source: e,
                })
            })?;
            hashed += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(UploadHash { hasher, hashed })
    }

    /// Streams `body` into the upload and the hasher. Received bytes are batched; each batch is written and hashed
    /// by short tasks on the blocking pool while the next batch is received (a pipeline of depth one), so no thread
    /// waits for the client and each upload holds at most two batches in memory.
    async fn append<B, E>(&self, id: &UploadId, hash: UploadHash, mut body: B) -> Result<UploadHash>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let _stream = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.too_many_streams())?;
        let mut writer = Some(self.storage.upload_writer(id).await?);
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
                next = body.next(), if receive => match next {
                    None => ended = true,
                    Some(Err(e)) => break Err(RegistryError::Body(e.to_string())),
                    Some(Ok(chunk)) => {
                        batched = batched.saturating_add(chunk.len());
                        batch.push(chunk);
                    }
                },
                else => break Ok(()),
            }
        };
        // Even when the copy failed: wait until the batch in flight is on disk, so the caller's rollback (a
        // truncation) happens after the last write, never before a late one.
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
            None => Err(super::storage::StorageError::Io {
                what: format!("append to upload {id}"),
                source: std::io::Error::other("upload writer lost"),
            }),
        };
        outcome?;
        let size = size?;
        let hasher = hasher.ok_or_else(|| pipe_failure(hashing::PipeClosed))?;
        if size != hashed {
            return Err(RegistryError::Storage(
                super::storage::StorageError::Corrupt(format!(
                    "upload {id} holds {size} bytes after append, {hashed} were hashed"
                )),
            ));
        }
        Ok(UploadHash { hasher, hashed })
    }

    /// Completes an upload: appends an optional final body, verifies the digest, and makes the blob visible in
    /// `repo`. A digest mismatch discards the upload: nothing is stored.
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
        if let Some(body) = body {
            self.upload_append(repo, id, location, range, body).await?;
        }
        self.upload_size(repo, id).await?;
        let slot = self.slot(id);
        let mut session = slot.lock().await;
        let size = self.upload_size(repo, id).await?;
        let hash = self
            .current_hash(id, size, session.take(), digest.algorithm())
            .await?;
        let actual = hash.hasher.digest();
        if &actual != digest {
            self.storage.upload_delete(id).await?;
            drop(session);
            self.forget(id);
            return Err(RegistryError::DigestInvalid(format!(
                "upload of {size} bytes has digest {actual}, not {digest}; the upload is discarded"
            )));
        }
        let gate = self.content_gate.read().await;
        self.storage.upload_commit(id, digest).await?;
        self.storage.blob_link(repo, digest).await?;
        drop(gate);
        drop(session);
        self.forget(id);
        log::info!("blob {digest} ({size} bytes) pushed to {repo}");
        Ok(())
    }

    /// Pushes a whole blob in one request (`POST ?digest=`).
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
        if self.streams.available_permits() == 0 {
            return Err(self.too_many_streams());
        }
        let hash = UploadHash {
            hasher: Hasher::new(digest.algorithm()),
            hashed: 0,
        };
        let id = self.create_upload(repo, true, hash).await?;
        let location = format!("/v2/{repo}/blobs/uploads/{id}");
        let result = self
            .upload_finish(repo, &id, &location, digest, None, Some(body))
            .await;
        if result.is_err() {
            // A failed monolithic push leaves nothing behind.
            let _ = self.storage.upload_delete(&id).await;
            self.forget(&id);
        }
        result
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
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mut expired = 0;
        for (id, last_write) in self.storage.uploads().await? {
            let age = now.duration_since(last_write).unwrap_or_default();
            if age > max_age {
                let slot = self.slot(&id);
                let _session = slot.lock().await;
                self.storage.upload_delete(&id).await?;
                self.forget(&id);
                expired += 1;
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

    /// Validates and stores a manifest; tags it when `reference` is a tag.
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
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
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::compute(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest has digest {actual}, pushed as {expected}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        self.check_references(repo, &bytes, &parsed).await?;
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
        if let Reference::Tag(tag) = reference {
            self.storage.tag_set(repo, tag, &digest).await?;
        }
        log::info!(
            "manifest {digest} ({}) pushed to {repo} as {reference}",
            parsed.media_type
        );
        Ok(PushedManifest {
            digest,
            subject: parsed.subject,
        })
    }

    /// Every blob a manifest names must be visible in `repo` with the size it declares; every child manifest
    /// must be in `repo`.
    async fn check_references(
        &self,
        repo: &RepoName,
        bytes: &[u8],
        parsed: &ParsedManifest,
    ) -> Result<()> {
        let declared_sizes = declared_sizes(bytes);
        for blob in &parsed.blobs {
            if !self.storage.blob_linked(repo, blob).await? {
                return Err(RegistryError::ManifestBlobUnknown(format!("blob {blob}")));
            }
            let stored = self.storage.blob_size(blob).await?;
            let Some(stored) = stored else {
                return Err(RegistryError::ManifestBlobUnknown(format!("blob {blob}")));
            };
            if let Some(declared) = declared_sizes.get(&blob.to_string()) {
                if !declared.contains(&(stored as i64)) {
                    return Err(RegistryError::ManifestInvalid(format!(
                        "blob {blob} is {stored} bytes, the manifest says {}",
                        declared
                            .iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )));
                }
            }
        }
        for child in &parsed.children {
            if self.storage.manifest_get(repo, child).await?.is_none() {
                return Err(RegistryError::ManifestBlobUnknown(format!(
                    "manifest {child}"
                )));
            }
        }
        Ok(())
    }

    /// Deletes a manifest by digest (with its tags and referrer entry) or a tag.
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
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
                    if self.storage.tag_get(repo, &tag).await?.as_ref() == Some(digest) {
                        self.storage.tag_delete(repo, &tag).await?;
                    }
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
                RegistryError::Storage(super::storage::StorageError::Corrupt(format!(
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
    RegistryError::Storage(super::storage::StorageError::Io {
        what: "hashing an upload".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// digest → the sizes the manifest declares for it (a blob may appear more than once).
fn declared_sizes(bytes: &[u8]) -> HashMap<String, Vec<i64>> {
    #[derive(serde::Deserialize)]
    struct Sizes {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let mut sizes: HashMap<String, Vec<i64>> = HashMap::new();
    if let Ok(parsed) = serde_json::from_slice::<Sizes>(bytes) {
        for descriptor in parsed.config.into_iter().chain(parsed.layers) {
            sizes
                .entry(descriptor.digest)
                .or_default()
                .push(descriptor.size);
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

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
