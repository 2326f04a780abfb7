//! Blobs of proxied repositories: from the cache once fetched; otherwise one upstream fetch per blob, however many
//! clients ask (single-flight), written into a cache upload of the registry service while every client streams
//! what has been written so far. The last byte of a blob whose size is announced is withheld until the registry
//! has verified the digest, so a client never receives a complete body of unverified bytes.
//!
//! Writes nothing itself: the upload, its hash and its commit are the registry service's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::error::{ProxyError, Result};
use super::eviction::Lru;
use super::locked::lock;
use super::target::ProxyTarget;
use super::upstream::UpstreamBlob;
use crate::events::model::Target;
use crate::events::registry::proxy_fetch;
use crate::events::EventLog;
use crate::registry::error::RegistryError;
use crate::registry::names::{Digest, UploadId};
use crate::registry::service::cache::{CacheError, CacheUpload};
use crate::registry::storage::{ByteRange, ByteStream, StorageError};
use crate::registry::Registry;

/// Bytes gathered from the upstream before they are written and offered to readers (unless the upstream pauses).
const FLUSH_BYTES: usize = 512 * 1024;
/// A pause of the upstream this long flushes what has arrived, so slow upstreams still stream.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);
/// Largest read a follower does at once.
const FOLLOW_READ: usize = 1024 * 1024;

/// Progress of one upstream blob fetch, watched by every client streaming it.
#[derive(Debug, Clone)]
enum FetchState {
    Connecting,
    Streaming {
        size: Option<u64>,
        written: u64,
        upload: UploadId,
    },
    Done {
        size: u64,
    },
    Failed(ProxyError),
}

/// The blob fetches in progress, one per digest.
pub struct Fetcher {
    registry: Arc<Registry>,
    /// Told of every blob served from the cache or fetched into it.
    lru: Arc<Lru>,
    fetches: Mutex<HashMap<Digest, watch::Receiver<FetchState>>>,
    /// Counts the blobs served from the cache (the upstream counts its own, `super::metered`).
    metrics: Arc<crate::events::Metrics>,
    /// Where each fetch from an upstream is recorded (`proxy-fetch`).
    events: EventLog,
}

impl Fetcher {
    pub fn new(
        registry: Arc<Registry>,
        lru: Arc<Lru>,
        metrics: Arc<crate::events::Metrics>,
        events: EventLog,
    ) -> Fetcher {
        Fetcher {
            metrics,
            registry,
            lru,
            events,
            fetches: Mutex::new(HashMap::new()),
        }
    }

    /// Whether no fetch is in progress.
    #[cfg(test)]
    pub fn idle(&self) -> bool {
        lock(&self.fetches).is_empty()
    }

    /// The size of a blob of a proxied repository: cached, or as the upstream reports it (nothing is fetched).
    pub async fn blob_size(&self, target: &ProxyTarget, digest: &Digest) -> Result<u64> {
        match self.registry.blob_size(&target.local_repo, digest).await {
            Ok(size) => return Ok(size),
            Err(RegistryError::BlobUnknown(_)) => {}
            Err(e) => return Err(e.into()),
        }
        target
            .upstream
            .blob_size(&target.upstream_repo, digest)
            .await
    }

    /// A blob of a proxied repository: `(size if known, bytes)`. Cached blobs come from the store; others stream
    /// from the one shared upstream fetch as its bytes arrive.
    pub async fn blob(
        self: &Arc<Self>,
        target: &ProxyTarget,
        digest: &Digest,
    ) -> Result<(Option<u64>, ByteStream)> {
        if let Some(local) = self.cached_blob(target, digest).await? {
            self.metrics.proxy_request(
                target.upstream.name(),
                crate::events::metrics::ProxyResult::Hit,
            );
            return Ok(local);
        }
        let mut state = self.join_fetch(target, digest);
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                FetchState::Connecting => {
                    if state.changed().await.is_err() {
                        return Err(ProxyError::Failed {
                            upstream: target.upstream.name().to_owned(),
                            why: format!("fetch of {digest} stopped"),
                        });
                    }
                }
                FetchState::Failed(error) => return Err(error),
                FetchState::Done { .. } => {
                    return self
                        .cached_blob(target, digest)
                        .await?
                        .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()).into())
                }
                FetchState::Streaming { size, .. } => {
                    let stream = follow(self.registry.clone(), state, digest.clone());
                    return Ok((size, stream));
                }
            }
        }
    }

    async fn cached_blob(
        &self,
        target: &ProxyTarget,
        digest: &Digest,
    ) -> Result<Option<(Option<u64>, ByteStream)>> {
        let repo = &target.local_repo;
        let content = match self.registry.blob_read(repo, digest, |_| Ok(None)).await {
            Ok((content, _)) => content,
            Err(RegistryError::BlobUnknown(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.lru.touch(digest, content.size, repo);
        Ok(Some((Some(content.size), content.stream)))
    }

    /// The watch of the fetch of `digest`, started if none runs.
    fn join_fetch(
        self: &Arc<Self>,
        target: &ProxyTarget,
        digest: &Digest,
    ) -> watch::Receiver<FetchState> {
        let mut fetches = lock(&self.fetches);
        // A fetch whose task died (its sender is gone) is replaced rather than waited on forever.
        if let Some(state) = fetches
            .get(digest)
            .filter(|state| state.has_changed().is_ok())
        {
            return state.clone();
        }
        let (sender, receiver) = watch::channel(FetchState::Connecting);
        fetches.insert(digest.clone(), receiver.clone());
        let fetch = BlobFetch {
            fetcher: self.clone(),
            target: target.clone(),
            digest: digest.clone(),
            state: sender,
        };
        tokio::spawn(fetch.run());
        receiver
    }

    /// Called when a fetch ends: forget it, account its size, evict past the limit.
    async fn fetch_ended(&self, digest: &Digest, target: &ProxyTarget, size: Option<u64>) {
        lock(&self.fetches).remove(digest);
        if let Some(size) = size {
            self.lru.touch(digest, size, &target.local_repo);
            let fetching = |digest: &Digest| lock(&self.fetches).contains_key(digest);
            if let Err(e) = self.lru.evict(&fetching).await {
                log::warn!("evicting proxied blobs: {e}");
            }
        }
    }
}

/// One upstream blob fetch, written into a cache upload and committed once verified.
struct BlobFetch {
    fetcher: Arc<Fetcher>,
    target: ProxyTarget,
    digest: Digest,
    state: watch::Sender<FetchState>,
}

/// What a failed fetch tells every client that waits for it: the upstream's answer as it is, a blob the upstream
/// does not have as unknown, a storage failure as it is, and anything else (the hashing) as berth's own failure — never a client
/// error such as BLOB_UPLOAD_INVALID, which none of these clients made.
fn for_waiters(error: ProxyError) -> ProxyError {
    match &error {
        ProxyError::Registry(inner)
            if !matches!(
                **inner,
                RegistryError::BlobUnknown(_) | RegistryError::Storage(_)
            ) =>
        {
            RegistryError::Storage(StorageError::Io {
                what: "shared blob fetch".into(),
                source: std::io::Error::other(inner.to_string()),
            })
            .into()
        }
        _ => error,
    }
}

impl BlobFetch {
    async fn run(self) {
        let outcome = self.fetch().await;
        let size = match &outcome {
            Ok(size) => Some(*size),
            Err(e) => {
                log::warn!(
                    "fetching {} for {} failed: {e}",
                    self.digest,
                    self.target.local_repo
                );
                None
            }
        };
        self.state.send_replace(match outcome {
            Ok(size) => FetchState::Done { size },
            Err(e) => FetchState::Failed(for_waiters(e)),
        });
        self.fetcher
            .fetch_ended(&self.digest, &self.target, size)
            .await;
    }

    async fn fetch(&self) -> Result<u64> {
        let blob = self
            .target
            .upstream
            .blob(&self.target.upstream_repo, &self.digest)
            .await?;
        let registry = &self.fetcher.registry;
        let mut upload = registry
            .cache_upload_start(&self.target.local_repo, &self.digest)
            .await?;
        if let Err(e) = self.copy(blob, &mut upload).await {
            registry.cache_upload_discard(upload).await;
            return Err(e);
        }
        let upstream = self.target.upstream.name();
        let written = registry
            .cache_blob_commit(upload)
            .await
            .map_err(|e| match e {
                CacheError::DigestMismatch { actual, .. } => ProxyError::Failed {
                    upstream: upstream.to_owned(),
                    why: format!(
                        "sent content with digest {actual} for blob {}; nothing cached",
                        self.digest
                    ),
                },
                CacheError::ManifestInvalid(e) | CacheError::Registry(e) => e.into(),
            })?;
        log::info!(
            "cached blob {} ({written} bytes) for {} from upstream {upstream}",
            self.digest,
            self.target.local_repo
        );
        let events = &self.fetcher.events;
        if events.enabled() {
            let fetched = Target {
                repository: Some(self.target.local_repo.to_string()),
                digest: Some(self.digest.to_string()),
                size: Some(written),
                upstream: Some(upstream.to_owned()),
                ..Target::default()
            };
            events.record(proxy_fetch(fetched, events.instance(), events.now()));
        }
        Ok(written)
    }

    /// Streams the upstream body into the upload, publishing progress. One writer for the whole fetch; what has
    /// arrived is written at least every [`FLUSH_BYTES`] or after a [`FLUSH_PAUSE`] of the upstream.
    async fn copy(&self, blob: UpstreamBlob, upload: &mut CacheUpload) -> Result<()> {
        let UpstreamBlob { size, mut body } = blob;
        self.state.send_replace(FetchState::Streaming {
            size,
            written: 0,
            upload: upload.id().clone(),
        });
        let mut pending = BytesMut::new();
        loop {
            let next = if pending.is_empty() {
                Some(body.next().await)
            } else {
                tokio::time::timeout(FLUSH_PAUSE, body.next()).await.ok()
            };
            let finished = matches!(next, Some(None));
            if let Some(Some(chunk)) = next {
                pending.extend_from_slice(&chunk?);
                if pending.len() < FLUSH_BYTES {
                    continue;
                }
            }
            if !pending.is_empty() {
                let written = upload.append(pending.split().freeze()).await?;
                self.state.send_replace(FetchState::Streaming {
                    size,
                    written,
                    upload: upload.id().clone(),
                });
            }
            if finished {
                return Ok(());
            }
        }
    }
}

/// How much of a fetch in progress a follower may send: what is written, but never the last byte of a blob whose
/// size the upstream announced. That byte waits for the digest check, so a client never receives a complete body
/// of unverified bytes: a failed check breaks its transfer off one byte short. (Without a size the body is chunked,
/// and an error before its final chunk breaks it off just the same.)
fn servable(size: Option<u64>, written: u64) -> u64 {
    match size {
        Some(size) => written.min(size.saturating_sub(1)),
        None => written,
    }
}

/// Streams a blob that is being fetched: reads what the fetch has written so far, waits for more, and switches to
/// the committed blob when the fetch is done. A failed fetch ends the stream with an error (the client sees a
/// broken transfer, never wrong bytes as complete).
fn follow(
    registry: Arc<Registry>,
    state: watch::Receiver<FetchState>,
    digest: Digest,
) -> ByteStream {
    enum Phase {
        Following {
            state: watch::Receiver<FetchState>,
            offset: u64,
        },
        Local(ByteStream),
        Ended,
    }
    struct Follower {
        registry: Arc<Registry>,
        digest: Digest,
    }
    let failed = |follower, error: String| {
        Some((Err(std::io::Error::other(error)), (Phase::Ended, follower)))
    };
    let start = Phase::Following { state, offset: 0 };
    let follower = Follower { registry, digest };
    Box::pin(futures_util::stream::unfold(
        (start, follower),
        move |(phase, follower)| async move {
            let mut phase = phase;
            loop {
                match phase {
                    Phase::Ended => return None,
                    Phase::Local(mut stream) => {
                        let item = stream.next().await?;
                        return Some((item, (Phase::Local(stream), follower)));
                    }
                    Phase::Following { mut state, offset } => {
                        let current = state.borrow_and_update().clone();
                        match current {
                            FetchState::Streaming {
                                size,
                                written,
                                upload,
                            } if servable(size, written) > offset => {
                                let max = (servable(size, written) - offset).min(FOLLOW_READ as u64)
                                    as usize;
                                match follower
                                    .registry
                                    .cache_upload_read_at(&upload, offset, max)
                                    .await
                                {
                                    Ok(Some(bytes)) if !bytes.is_empty() => {
                                        let next = offset + bytes.len() as u64;
                                        let phase = Phase::Following {
                                            state,
                                            offset: next,
                                        };
                                        return Some((Ok(bytes), (phase, follower)));
                                    }
                                    // Committed (renamed) between the check and the read: the state says Done next.
                                    Ok(_) => {
                                        let _ = state.changed().await;
                                        phase = Phase::Following { state, offset };
                                    }
                                    Err(e) => return failed(follower, e.to_string()),
                                }
                            }
                            FetchState::Done { size } => {
                                if offset >= size {
                                    return None;
                                }
                                let range = ByteRange {
                                    first: offset,
                                    last: size - 1,
                                };
                                let read = follower
                                    .registry
                                    .cache_blob_read(&follower.digest, range)
                                    .await;
                                match read {
                                    Ok(Some(stream)) => phase = Phase::Local(stream),
                                    Ok(None) => {
                                        let error = format!("blob {} vanished", follower.digest);
                                        return failed(follower, error);
                                    }
                                    Err(e) => return failed(follower, e.to_string()),
                                }
                            }
                            FetchState::Failed(error) => {
                                return failed(follower, error.to_string());
                            }
                            FetchState::Connecting | FetchState::Streaming { .. } => {
                                if state.changed().await.is_err() {
                                    return failed(follower, "blob fetch stopped".into());
                                }
                                phase = Phase::Following { state, offset };
                            }
                        }
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures_util::StreamExt;

    use super::servable;
    use crate::proxy::fake::{drain, Asked, Harness};
    use crate::proxy::locked::lock;
    use crate::registry::names::Digest;

    /// Review of issue 10: a shared fetch that failed inside berth (a hashing failure is a `Body` error) answered
    /// every waiting client with that error, 400 BLOB_UPLOAD_INVALID, a client mistake none of them made. They get
    /// berth's own 500; what the upstream said and a blob it lacks pass as they are.
    #[test]
    fn waiters_of_a_failed_fetch_get_berths_failure_not_a_client_error() {
        use actix_web::ResponseError;

        use super::{for_waiters, ProxyError};
        use crate::registry::error::RegistryError;
        use crate::registry::storage::StorageError;

        let status = |error: ProxyError| for_waiters(error).status_code().as_u16();
        assert_eq!(
            status(RegistryError::Body("hash pipe broke".into()).into()),
            500
        );
        assert_eq!(
            status(RegistryError::Storage(StorageError::Corrupt("x".into())).into()),
            500
        );
        assert_eq!(status(RegistryError::BlobUnknown("d".into()).into()), 404);
        let unavailable = ProxyError::Unavailable {
            upstream: "up".into(),
            why: "refused".into(),
        };
        assert_eq!(status(unavailable), 503);
        // A storage failure is passed on as it is, not wrapped in a second one.
        let storage: ProxyError =
            RegistryError::Storage(StorageError::Corrupt("disk".into())).into();
        assert_eq!(
            for_waiters(storage.clone()).to_string(),
            storage.to_string()
        );
    }

    #[tokio::test]
    async fn concurrent_pulls_of_one_blob_share_one_upstream_fetch() {
        let h = Harness::new(None);
        let target = h.target("team/app");
        let content = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let digest = Digest::sha256_of(&content);
        h.upstream.set_blob(&digest, content.clone());
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        *lock(&h.upstream.hold_last_byte) = Some(hold.clone());

        let (size_a, a) = h.proxy.blob(&target, &digest).await.expect("first pull");
        let (size_b, b) = h.proxy.blob(&target, &digest).await.expect("second pull");
        assert_eq!((size_a, size_b), (Some(100_000), Some(100_000)));
        assert!(
            !h.registry
                .blob_linked(&target.local_repo, &digest)
                .await
                .expect("linked?"),
            "not visible before its last byte is verified"
        );
        hold.add_permits(1);
        let ((bytes_a, error_a), (bytes_b, error_b)) = tokio::join!(drain(a), drain(b));
        assert!(
            error_a.is_none() && error_b.is_none(),
            "{error_a:?} {error_b:?}"
        );
        assert_eq!(bytes_a, content);
        assert_eq!(bytes_b, content);
        assert_eq!(
            Asked::get(&h.upstream.asked.blob_gets),
            1,
            "one upstream fetch"
        );

        // Cached now: a third pull does not ask the upstream.
        h.fetches_ended().await;
        assert_eq!(h.pull(&target, &digest).await, content);
        assert_eq!(Asked::get(&h.upstream.asked.blob_gets), 1);
    }

    #[tokio::test]
    async fn a_blob_with_the_wrong_digest_is_never_served_whole_nor_cached() {
        let h = Harness::new(None);
        let target = h.target("team/app");
        let right = Bytes::from_static(b"the layer the manifest names");
        let wrong = Bytes::from_static(b"the layer an attacker sends!");
        assert_eq!(right.len(), wrong.len());
        let digest = Digest::sha256_of(&right);
        h.upstream.set_blob(&digest, wrong.clone());
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        *lock(&h.upstream.hold_last_byte) = Some(hold.clone());

        let (size, mut stream) = h.proxy.blob(&target, &digest).await.expect("pull");
        assert_eq!(size, Some(wrong.len() as u64));
        // Everything but the last byte streams before the digest can be checked...
        let mut received = Vec::new();
        while received.len() < wrong.len() - 1 {
            let chunk = stream.next().await.expect("more bytes").expect("a chunk");
            received.extend_from_slice(&chunk);
        }
        assert_eq!(received, wrong[..wrong.len() - 1]);
        // ...and the last byte never does: the check fails and the transfer breaks off.
        hold.add_permits(1);
        let (rest, error) = drain(stream).await;
        assert!(rest.is_empty(), "no byte after the check failed: {rest:?}");
        let error = error.expect("the transfer breaks off");
        assert!(error.to_string().contains("nothing cached"), "{error}");

        h.fetches_ended().await;
        assert!(!h
            .registry
            .blob_linked(&target.local_repo, &digest)
            .await
            .expect("linked?"));
        assert!(
            h.storage.uploads().await.expect("uploads").is_empty(),
            "the failed upload is deleted"
        );

        // Nothing was cached: the next pull fetches again, and right bytes are kept.
        h.upstream.set_blob(&digest, right.clone());
        *lock(&h.upstream.hold_last_byte) = None;
        assert_eq!(h.pull(&target, &digest).await, right);
        assert_eq!(Asked::get(&h.upstream.asked.blob_gets), 2);
        h.fetches_ended().await;
        assert!(h
            .registry
            .blob_linked(&target.local_repo, &digest)
            .await
            .expect("linked?"));
    }

    #[test]
    fn the_last_byte_of_a_sized_blob_waits_for_verification() {
        assert_eq!(servable(Some(10), 4), 4);
        assert_eq!(servable(Some(10), 9), 9);
        assert_eq!(servable(Some(10), 10), 9);
        assert_eq!(servable(Some(0), 0), 0);
        assert_eq!(servable(None, 10), 10);
    }
}
