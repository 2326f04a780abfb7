//! Upload sessions and the requests on them: the session map and its cap, start, append (`PATCH`), finish (the
//! closing `PUT`), the monolithic push (`POST ?digest=`) and cancel. Each request's change to the upload runs in an
//! [`UploadJob`] of its own; this module only checks the request against the session and hands the body over.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::upload_job::{
    chunk_length, feed_task, out_of_order, pipe_failure, BodySink, Feed, Shared, UploadJob,
    FEED_DEPTH,
};
use super::{Registry, SessionGuard, SessionSlot, UploadHash};
use crate::registry::error::{RegistryError, Result};
use crate::registry::hashing::{self, Hasher};
use crate::registry::names::{Algorithm, Digest, RepoName, UploadId};
use crate::registry::storage::{StorageError, UploadInfo};

/// How often, at most, a full session map is compared with the uploads on disk.
pub(super) const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

impl Registry {
    pub(super) fn slot(&self, id: &UploadId) -> SessionSlot {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions.entry(id.clone()).or_default().clone()
    }

    pub(super) fn forget(&self, id: &UploadId) {
        self.sessions().remove(id);
    }

    /// What an upload task holds of the registry.
    pub(super) fn shared(&self) -> Shared {
        Shared {
            storage: self.storage.clone(),
            sessions: self.sessions.clone(),
            content_gate: self.content_gate.clone(),
        }
    }

    pub(super) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, SessionSlot>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a session for `id` if the cap allows; the returned slot is held while the upload is created, which
    /// keeps a resync from dropping it before it is on disk.
    pub(super) fn try_reserve(&self, id: &UploadId) -> Option<SessionSlot> {
        let mut sessions = self.sessions();
        if sessions.len() >= self.limits.max_sessions {
            return None;
        }
        Some(sessions.entry(id.clone()).or_default().clone())
    }

    /// Reserves a session for a new upload, or says berth has too many. A full map is first compared with the
    /// uploads on disk (at most every few seconds), so that an entry left behind by a race never blocks uploads.
    pub(super) async fn reserve_session(&self, id: &UploadId) -> Result<SessionSlot> {
        if let Some(slot) = self.try_reserve(id) {
            return Ok(slot);
        }
        let due = {
            let mut last = self
                .last_resync
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = self.clock.instant();
            let due = last.is_none_or(|at| now.saturating_duration_since(at) >= RESYNC_INTERVAL);
            if due {
                *last = Some(now);
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

    pub(super) fn too_many_streams(&self) -> RegistryError {
        RegistryError::Busy {
            why: format!(
                "too many uploads are sending data at once (the limit is {}); retry later",
                self.limits.max_streams
            ),
            retry_after: 5,
        }
    }

    /// Creates an upload on disk with a reserved session, or gives the reservation back.
    pub(super) async fn create_upload(
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
            started_unix: self.now_unix(),
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

    /// The upload's size, if it exists and belongs to `repo`.
    pub async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        let info = self.storage.upload_info(id).await?;
        match info {
            Some(info) if info.repository == repo.as_str() => Ok(info.size),
            _ => Err(RegistryError::BlobUploadUnknown(id.to_string())),
        }
    }

    /// Takes the upload's session (a request at a time) and its size, checking that a `Content-Range` starts where
    /// the upload ends: refused before anything is read or hashed.
    async fn lock_session_at(
        &self,
        repo: &RepoName,
        id: &UploadId,
        location: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(SessionGuard, u64)> {
        // Unknown ids never get a session slot (the map would grow with every guessed id).
        self.upload_size(repo, id).await?;
        let session = self.slot(id).lock_owned().await;
        let size = self.upload_size(repo, id).await?;
        if let Some((start, _)) = range {
            if start != size {
                return Err(out_of_order(id, location, size, start));
            }
        }
        Ok((session, size))
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
        let (mut session, size) = self.lock_session_at(repo, id, location, range).await?;
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
    pub(super) async fn body_sink(
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

    pub(super) fn stream_permit(&self) -> Result<OwnedSemaphorePermit> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.too_many_streams())
    }

    /// The running hash for an upload of `size` bytes: the in-memory one when it is current and of the right
    /// algorithm, otherwise rebuilt from the stored bytes (read and hashed on the blocking pool, one chunk at a
    /// time).
    pub(super) async fn current_hash(
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
        let (mut session, size) = self.lock_session_at(repo, id, location, range).await?;
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
            started_unix: self.now_unix(),
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{
        blob_bytes, body, cut_off, drop_mid_write, eventually, faulty_registry, memory_registry,
        reached, repo, upload_holding_good, Chunks, Faulty,
    };
    use super::*;
    use crate::registry::service::UploadLimits;
    use crate::registry::storage::memory::MemoryStorage;
    use crate::registry::storage::Storage;

    /// Closes the upload with the digest of `expected` and checks the blob holds exactly those bytes.
    async fn commits_as(
        registry: &Registry,
        repo: &RepoName,
        id: &UploadId,
        location: &str,
        expected: &[u8],
        what: &str,
    ) {
        let digest = Digest::sha256_of(expected);
        registry
            .upload_finish(repo, id, location, &digest, None, None::<Chunks>)
            .await
            .expect(what);
        assert_eq!(blob_bytes(registry, repo, &digest).await, expected);
    }

    /// A full session map is compared with the stored uploads at most every RESYNC_INTERVAL on the registry's
    /// clock: an entry whose upload vanished is dropped by the first resync, a second one blocks new uploads
    /// until the interval has passed.
    #[tokio::test]
    async fn a_full_session_map_is_resynced_at_most_every_interval() {
        let clock = crate::clock::ManualClock::new();
        let storage = Arc::new(MemoryStorage::with_clock(clock.clone()));
        let limits = UploadLimits {
            max_sessions: 1,
            max_streams: 4,
        };
        let registry = Registry::with_limits(storage.clone(), limits).with_clock(clock.clone());
        let repo = repo("uploads/resync");
        let vanished = registry.upload_start(&repo).await.expect("first upload");
        storage
            .upload_delete(&vanished)
            .await
            .expect("delete behind the registry's back");
        let next = registry
            .upload_start(&repo)
            .await
            .expect("the first resync drops the vanished upload's session");
        storage
            .upload_delete(&next)
            .await
            .expect("delete behind the registry's back");
        let refused = registry.upload_start(&repo).await;
        assert!(
            matches!(refused, Err(RegistryError::Busy { .. })),
            "no resync within the interval: {refused:?}"
        );
        clock.advance(RESYNC_INTERVAL);
        registry
            .upload_start(&repo)
            .await
            .expect("the interval has passed: resynced");
        assert_eq!(registry.upload_sessions(), 1);
    }

    /// Issue 9: a closing PUT whose digest does not match destroyed the whole upload, chunks acknowledged earlier
    /// included. Only its own bytes are rolled back; the retried PUT completes the blob. A failed monolithic push
    /// still leaves nothing.
    #[tokio::test]
    async fn a_wrong_digest_on_the_closing_put_keeps_earlier_chunks() {
        let registry = memory_registry(crate::clock::system());
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
        commits_as(
            &registry,
            &repo,
            &id,
            &location,
            b"good-more",
            "PUT commits",
        )
        .await;
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
        commits_as(
            &registry,
            &repo,
            &id,
            &location,
            b"good",
            "retried PUT commits",
        )
        .await;
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
}
