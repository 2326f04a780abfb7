//! The pull-through cache: serves repositories of configured upstream registries from berth's store, fetching on
//! first use. Manifests by tag are trusted for `tagTtl`, then revalidated with a cheap `HEAD`; a failing upstream
//! serves the cached copy (stale-if-error). Blobs stream to clients while they are written to the cache, verified
//! before the cached copy becomes visible; concurrent requests share one upstream fetch. Proxied repositories live
//! in the store under `proxy/<upstream>/<repository>` and are read-only; least recently used proxied blobs are
//! evicted past `maxSize`, pushed content never.
//!
//! Knows nothing of actix-web (see `http.rs`; fetches run as tokio tasks); talks to upstreams through `upstream.rs`.

pub mod config;
pub mod http;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use reqwest::{Method, StatusCode};
use tokio::sync::watch;

use crate::registry::error::RegistryError;
use crate::registry::hashing::{HashPipe, Hasher};
use crate::registry::manifest::MAX_MANIFEST_BYTES;
use crate::registry::names::{Digest, Reference, RepoName, Tag, UploadId};
use crate::registry::storage::{
    ByteRange, ByteStream, Storage, StorageError, StoredManifest, UploadInfo,
};
use config::ProxyConfig;
use upstream::{Upstream, UpstreamError, MANIFEST_ACCEPT};

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The local repository prefix under which proxied content is cached.
pub const PROXY_PREFIX: &str = "proxy";
/// Bytes gathered from the upstream before they are written and offered to readers (unless the upstream pauses).
const FLUSH_BYTES: usize = 512 * 1024;
/// A pause of the upstream this long flushes what has arrived, so slow upstreams still stream.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);
/// After a failed revalidation, the cached tag is served without asking again for this long.
const STALE_RETRY: Duration = Duration::from_secs(30);
/// Largest token or tag-list answer read from an upstream.
const MAX_SMALL_BODY: usize = 4 * 1024 * 1024;
/// Largest read a follower does at once.
const FOLLOW_READ: usize = 1024 * 1024;

/// A repository served through the proxy.
#[derive(Clone)]
pub struct ProxyTarget {
    pub upstream: Arc<Upstream>,
    /// The repository's name at the upstream (`library/nginx`).
    pub upstream_repo: String,
    /// Where it is cached locally (`proxy/docker.io/library/nginx`).
    pub local_repo: RepoName,
}

impl ProxyTarget {
    /// Sends a request for this repository to the upstream; any answer but a success becomes the error a client
    /// gets (`not_found` for a 404).
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        not_found: impl FnOnce() -> RegistryError,
    ) -> Result<reqwest::Response> {
        let upstream = &self.upstream;
        let response = upstream
            .send(method, &self.upstream_repo, path, headers)
            .await
            .map_err(upstream_error)?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(status_error(
            upstream,
            response.status(),
            response.headers(),
            not_found(),
        ))
    }
}

/// What the upstream says a tag points at.
enum UpstreamTag {
    Missing,
    At(Digest),
    /// It exists, but the answer carried no usable digest: a GET decides.
    Unknown,
}

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
    Failed(Arc<RegistryError>),
}

struct Usage {
    size: u64,
    last_used: Instant,
    /// Every proxied repository the blob is cached for (a layer shared by images of several repositories).
    repos: std::collections::BTreeSet<RepoName>,
}

pub struct Proxy {
    upstreams: BTreeMap<String, Arc<Upstream>>,
    storage: Arc<dyn Storage>,
    /// (local repo, tag) → when it was last confirmed with the upstream.
    /// (local repo, tag) → until when the cached tag is trusted without asking the upstream.
    fresh_tags: Mutex<HashMap<(RepoName, Tag), Instant>>,
    /// One lock per manifest reference being fetched, so concurrent requests share one upstream fetch.
    manifest_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    blob_fetches: Mutex<HashMap<Digest, watch::Receiver<FetchState>>>,
    usage: Mutex<HashMap<Digest, Usage>>,
    max_size: Option<u64>,
    /// Shared with the registry: held for reading while content is committed or linked, for writing while eviction
    /// decides that a blob is unused and deletes it, so a concurrent push never loses its layer.
    content_gate: Arc<tokio::sync::RwLock<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error a client gets; its message names the upstream and carries no URL (the cause was logged by `upstream`).
fn upstream_error(error: UpstreamError) -> RegistryError {
    match error {
        UpstreamError::Unreachable { upstream, source } => RegistryError::UpstreamUnavailable {
            upstream,
            why: format!("unreachable ({})", upstream::describe(&source)),
        },
        UpstreamError::Token { upstream, why } => RegistryError::UpstreamFailed {
            upstream,
            why: format!("token request failed: {why}"),
        },
        UpstreamError::Setup { upstream, why } => RegistryError::UpstreamFailed { upstream, why },
    }
}

/// Maps an upstream's non-success status to the error a client gets.
fn status_error(
    upstream: &Upstream,
    status: StatusCode,
    headers: &HeaderMap,
    not_found: RegistryError,
) -> RegistryError {
    match status {
        StatusCode::NOT_FOUND => not_found,
        StatusCode::TOO_MANY_REQUESTS => RegistryError::UpstreamTooManyRequests {
            upstream: upstream.name().to_owned(),
            retry_after: headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::UpstreamFailed {
            upstream: upstream.name().to_owned(),
            why: format!("refused berth's credentials ({status})"),
        },
        status if status.is_server_error() => RegistryError::UpstreamUnavailable {
            upstream: upstream.name().to_owned(),
            why: format!("answered {status}"),
        },
        status => RegistryError::UpstreamFailed {
            upstream: upstream.name().to_owned(),
            why: format!("answered {status}"),
        },
    }
}

/// `now + duration`, or about a century from now for a `tagTtl` too large for the clock (adding it would panic).
fn fresh_until(now: Instant, duration: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(duration)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// Errors for which a cached copy is served instead (the upstream is down or overloaded, not authoritative).
fn is_transient(error: &RegistryError) -> bool {
    matches!(
        error,
        RegistryError::UpstreamUnavailable { .. }
            | RegistryError::UpstreamFailed { .. }
            | RegistryError::UpstreamTooManyRequests { .. }
    )
}

impl Proxy {
    pub fn new(
        config: &ProxyConfig,
        storage: Arc<dyn Storage>,
        content_gate: Arc<tokio::sync::RwLock<()>>,
    ) -> Result<Proxy, UpstreamError> {
        let mut upstreams = BTreeMap::new();
        for upstream in &config.upstreams {
            upstreams.insert(
                upstream.name.clone(),
                Arc::new(Upstream::new(upstream.clone())?),
            );
        }
        Ok(Proxy {
            upstreams,
            storage,
            fresh_tags: Mutex::new(HashMap::new()),
            manifest_locks: Mutex::new(HashMap::new()),
            blob_fetches: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            max_size: config.max_size,
            content_gate,
        })
    }

    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.upstreams.keys().map(String::as_str)
    }

    /// Which upstream repository a request is for: `proxy/<upstream>/<repo>`, or `<repo>` with containerd's
    /// `?ns=<upstream>`. `None` for local repositories.
    pub fn resolve(&self, repo: &RepoName, ns: Option<&str>) -> Option<ProxyTarget> {
        let (upstream, rest) = match repo
            .as_str()
            .strip_prefix("proxy/")
            .and_then(|rest| rest.split_once('/'))
        {
            Some((name, rest)) if self.upstreams.contains_key(name) => {
                (self.upstreams.get(name)?, rest)
            }
            _ => (self.upstreams.get(ns?)?, repo.as_str()),
        };
        // Docker Hub keeps official images under library/.
        let upstream_repo = if upstream.name() == "docker.io" && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest.to_owned()
        };
        let local_repo = RepoName::parse(&format!(
            "{PROXY_PREFIX}/{}/{upstream_repo}",
            upstream.name()
        ))
        .ok()?;
        Some(ProxyTarget {
            upstream: upstream.clone(),
            upstream_repo,
            local_repo,
        })
    }

    /// Whether an image path (as in `127.0.0.1:5050/<path>`) is served by a configured upstream.
    pub fn serves(&self, path: &str) -> bool {
        RepoName::parse(path)
            .ok()
            .is_some_and(|repo| self.resolve(&repo, None).is_some())
    }

    /// Counts the proxied blobs already cached (after a restart), for the size limit.
    pub async fn load_usage(&self) -> Result<()> {
        if self.max_size.is_none() {
            return Ok(());
        }
        let mut found = Vec::new();
        for repo in self.storage.repositories().await? {
            // Only the caches of configured upstreams; anything else under proxy/ is not berth's to evict.
            if self
                .resolve(&repo, None)
                .is_none_or(|target| target.local_repo != repo)
            {
                continue;
            }
            for digest in self.storage.blobs_linked(&repo).await? {
                if let Some(size) = self.storage.blob_size(&digest).await? {
                    found.push((digest, size, repo.clone()));
                }
            }
        }
        for (digest, size, repo) in found {
            self.touch(&digest, size, &repo);
        }
        Ok(())
    }

    fn touch(&self, digest: &Digest, size: u64, repo: &RepoName) {
        if self.max_size.is_some() {
            let mut usage = lock(&self.usage);
            let entry = usage.entry(digest.clone()).or_insert_with(|| Usage {
                size,
                last_used: Instant::now(),
                repos: Default::default(),
            });
            entry.last_used = Instant::now();
            entry.repos.insert(repo.clone());
        }
    }

    /// Marks a cached proxied blob as just used, for the least-recently-used eviction. Cached blobs are served by
    /// the registry's own handler, which knows nothing of this bookkeeping.
    pub fn used(&self, digest: &Digest) {
        if let Some(usage) = lock(&self.usage).get_mut(digest) {
            usage.last_used = Instant::now();
        }
    }

    // ----- manifests

    fn is_fresh(&self, repo: &RepoName, tag: &Tag) -> bool {
        lock(&self.fresh_tags)
            .get(&(repo.clone(), tag.clone()))
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Trusts the cached tag for `duration` (its tagTtl; or a short while after a failed revalidation, so that the
    /// requests queued behind it do not each wait for the failing upstream again).
    fn mark_fresh(&self, repo: &RepoName, tag: &Tag, duration: Duration) {
        let until = fresh_until(Instant::now(), duration);
        lock(&self.fresh_tags).insert((repo.clone(), tag.clone()), until);
    }

    fn manifest_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.manifest_locks);
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key).or_default().clone()
    }

    /// A manifest of a proxied repository, from the cache or the upstream.
    pub async fn manifest(
        &self,
        target: &ProxyTarget,
        reference: &Reference,
    ) -> Result<(Digest, StoredManifest)> {
        let key = format!(
            "{}/{}@{reference}",
            target.upstream.name(),
            target.upstream_repo
        );
        let single_flight = self.manifest_lock(key);
        let _fetching = single_flight.lock().await;
        match reference {
            Reference::Digest(digest) => {
                if let Some(manifest) = self
                    .storage
                    .manifest_get(&target.local_repo, digest)
                    .await?
                {
                    return Ok((digest.clone(), manifest));
                }
                self.fetch_manifest(target, reference).await
            }
            Reference::Tag(tag) => self.manifest_by_tag(target, tag).await,
        }
    }

    async fn manifest_by_tag(
        &self,
        target: &ProxyTarget,
        tag: &Tag,
    ) -> Result<(Digest, StoredManifest)> {
        let repo = &target.local_repo;
        let cached = match self.storage.tag_get(repo, tag).await? {
            Some(digest) => self
                .storage
                .manifest_get(repo, &digest)
                .await?
                .map(|m| (digest, m)),
            None => None,
        };
        if let Some(cached) = &cached {
            if self.is_fresh(repo, tag) {
                return Ok(cached.clone());
            }
            match self.head_manifest(target, tag).await {
                Ok(UpstreamTag::At(digest)) if digest == cached.0 => {
                    self.mark_fresh(repo, tag, target.upstream.config.tag_ttl);
                    return Ok(cached.clone());
                }
                Ok(UpstreamTag::At(_) | UpstreamTag::Unknown) => {}
                Ok(UpstreamTag::Missing) => {
                    // Authoritative: the tag is gone upstream.
                    self.storage.tag_delete(repo, tag).await?;
                    return Err(RegistryError::ManifestUnknown(format!(
                        "{}:{tag}",
                        target.upstream_repo
                    )));
                }
                Err(e) if is_transient(&e) => {
                    log::warn!(
                        "serving cached {repo}:{tag} ({}) because revalidation failed: {e}",
                        cached.0
                    );
                    self.mark_fresh(repo, tag, STALE_RETRY);
                    return Ok(cached.clone());
                }
                Err(e) => return Err(e),
            }
        }
        let fetched = self
            .fetch_manifest(target, &Reference::Tag(tag.clone()))
            .await;
        match (fetched, cached) {
            (Ok((digest, manifest)), _) => {
                self.storage.tag_set(repo, tag, &digest).await?;
                self.mark_fresh(repo, tag, target.upstream.config.tag_ttl);
                Ok((digest, manifest))
            }
            (Err(e), Some(cached)) if is_transient(&e) => {
                log::warn!(
                    "serving cached {repo}:{tag} ({}) because the upstream failed: {e}",
                    cached.0
                );
                Ok(cached)
            }
            (Err(e), _) => Err(e),
        }
    }

    fn manifest_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        headers
    }

    /// What the upstream's tag points at, asked with a cheap HEAD.
    async fn head_manifest(&self, target: &ProxyTarget, tag: &Tag) -> Result<UpstreamTag> {
        let path = format!("manifests/{tag}");
        let response = match target
            .request(Method::HEAD, &path, Self::manifest_headers(), || {
                RegistryError::ManifestUnknown(tag.to_string())
            })
            .await
        {
            Ok(response) => response,
            Err(RegistryError::ManifestUnknown(_)) => return Ok(UpstreamTag::Missing),
            Err(e) => return Err(e),
        };
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        Ok(match digest.map(Digest::parse) {
            Some(Ok(digest)) => UpstreamTag::At(digest),
            _ => UpstreamTag::Unknown,
        })
    }

    /// Fetches a manifest from the upstream, verifies it, and caches it under its digest.
    async fn fetch_manifest(
        &self,
        target: &ProxyTarget,
        reference: &Reference,
    ) -> Result<(Digest, StoredManifest)> {
        let upstream = &target.upstream;
        let path = format!("manifests/{reference}");
        let response = target
            .request(Method::GET, &path, Self::manifest_headers(), || {
                RegistryError::ManifestUnknown(format!("{}:{reference}", target.upstream_repo))
            })
            .await?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let failed = |why: String| RegistryError::UpstreamFailed {
            upstream: upstream.name().to_owned(),
            why,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(failed(format!(
                "manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let bytes = upstream::read_limited(response, MAX_MANIFEST_BYTES as usize)
            .await
            .map_err(|why| failed(format!("manifest {reference}: {why}")))?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::compute(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(failed(format!(
                        "served {actual} for manifest {expected}; nothing cached"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&bytes),
        };
        let parsed = crate::registry::manifest::parse(&bytes, content_type.as_deref())
            .map_err(|e| failed(format!("manifest {reference}: {e}")))?;
        let manifest = StoredManifest {
            media_type: parsed.media_type,
            bytes,
        };
        self.storage
            .manifest_put(&target.local_repo, &digest, &manifest)
            .await?;
        log::info!(
            "cached manifest {}@{digest} from upstream {}",
            target.local_repo,
            upstream.name()
        );
        Ok((digest, manifest))
    }

    // ----- blobs

    /// The size of a blob of a proxied repository: cached, or as the upstream reports it (nothing is fetched).
    pub async fn blob_size(&self, target: &ProxyTarget, digest: &Digest) -> Result<u64> {
        if self.storage.blob_linked(&target.local_repo, digest).await? {
            if let Some(size) = self.storage.blob_size(digest).await? {
                return Ok(size);
            }
        }
        let upstream = &target.upstream;
        let path = format!("blobs/{digest}");
        let response = target
            .request(Method::HEAD, &path, HeaderMap::new(), || {
                RegistryError::BlobUnknown(digest.to_string())
            })
            .await?;
        // A HEAD response has no body, so the length must come from the header itself.
        upstream::header_content_length(response.headers()).ok_or_else(|| {
            RegistryError::UpstreamFailed {
                upstream: upstream.name().to_owned(),
                why: format!("no Content-Length for blob {digest}"),
            }
        })
    }

    /// A blob of a proxied repository: `(size if known, bytes)`. Cached blobs come from the store; others stream
    /// from the one shared upstream fetch as its bytes arrive.
    pub async fn blob(
        self: &Arc<Self>,
        target: &ProxyTarget,
        digest: &Digest,
    ) -> Result<(Option<u64>, ByteStream)> {
        if let Some(local) = self.cached_blob(target, digest).await? {
            return Ok(local);
        }
        let mut state = self.join_fetch(target, digest);
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                FetchState::Connecting => {
                    if state.changed().await.is_err() {
                        return Err(RegistryError::UpstreamFailed {
                            upstream: target.upstream.name().to_owned(),
                            why: format!("fetch of {digest} stopped"),
                        });
                    }
                }
                FetchState::Failed(error) => return Err(clone_error(&error)),
                FetchState::Done { .. } => {
                    return self
                        .cached_blob(target, digest)
                        .await?
                        .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))
                }
                FetchState::Streaming { size, .. } => {
                    return Ok((size, follow(self.storage.clone(), state, digest.clone())));
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
        if !self.storage.blob_linked(repo, digest).await? {
            return Ok(None);
        }
        let Some(content) = self.storage.blob_read(digest, None).await? else {
            return Ok(None);
        };
        self.touch(digest, content.size, repo);
        Ok(Some((Some(content.size), content.stream)))
    }

    /// The watch of the fetch of `digest`, started if none runs.
    fn join_fetch(
        self: &Arc<Self>,
        target: &ProxyTarget,
        digest: &Digest,
    ) -> watch::Receiver<FetchState> {
        let mut fetches = lock(&self.blob_fetches);
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
            proxy: self.clone(),
            storage: self.storage.clone(),
            target: target.clone(),
            digest: digest.clone(),
            state: sender,
        };
        tokio::spawn(fetch.run());
        receiver
    }

    /// Called when a fetch ends: forget it, account its size, evict past the limit.
    async fn fetch_ended(&self, digest: &Digest, target: &ProxyTarget, size: Option<u64>) {
        lock(&self.blob_fetches).remove(digest);
        if let Some(size) = size {
            self.touch(digest, size, &target.local_repo);
            if let Err(e) = self.evict().await {
                log::warn!("evicting proxied blobs: {e}");
            }
        }
    }

    /// Evicts least recently used proxied blobs until the cache fits `maxSize`. Content that any other repository
    /// links (pushed content) stays; only the proxy's link goes.
    async fn evict(&self) -> Result<()> {
        let Some(max) = self.max_size else {
            return Ok(());
        };
        let victims: Vec<(Digest, Vec<RepoName>, u64)> = {
            let usage = lock(&self.usage);
            let mut total: u64 = usage.values().map(|u| u.size).sum();
            if total <= max {
                return Ok(());
            }
            let fetching = lock(&self.blob_fetches);
            let mut by_age: Vec<(&Digest, &Usage)> = usage
                .iter()
                .filter(|(d, _)| !fetching.contains_key(*d))
                .collect();
            by_age.sort_by_key(|(_, u)| u.last_used);
            let mut victims = Vec::new();
            for (digest, usage) in by_age {
                if total <= max {
                    break;
                }
                total -= usage.size;
                victims.push((
                    digest.clone(),
                    usage.repos.iter().cloned().collect(),
                    usage.size,
                ));
            }
            victims
        };
        for (digest, repos, size) in victims {
            // Exclusive: no push, mount or fetch commits or links content while this one is judged unused.
            let _gate = self.content_gate.write().await;
            for repo in &repos {
                self.storage.blob_unlink(repo, &digest).await?;
            }
            let mut still_used = false;
            for other in self.storage.repositories().await? {
                if self.storage.blob_linked(&other, &digest).await? {
                    still_used = true;
                    break;
                }
            }
            if !still_used {
                self.storage.blob_delete(&digest).await?;
            }
            lock(&self.usage).remove(&digest);
            let names: Vec<&str> = repos.iter().map(RepoName::as_str).collect();
            log::info!(
                "evicted proxied blob {digest} ({size} bytes) from {}",
                names.join(", ")
            );
        }
        Ok(())
    }
}

/// A `RegistryError` for each client of a failed shared fetch.
fn clone_error(error: &RegistryError) -> RegistryError {
    match error {
        RegistryError::BlobUnknown(d) => RegistryError::BlobUnknown(d.clone()),
        RegistryError::UpstreamUnavailable { upstream, why } => {
            RegistryError::UpstreamUnavailable {
                upstream: upstream.clone(),
                why: why.clone(),
            }
        }
        RegistryError::UpstreamTooManyRequests {
            upstream,
            retry_after,
        } => RegistryError::UpstreamTooManyRequests {
            upstream: upstream.clone(),
            retry_after: retry_after.clone(),
        },
        RegistryError::UpstreamFailed { upstream, why } => RegistryError::UpstreamFailed {
            upstream: upstream.clone(),
            why: why.clone(),
        },
        other => RegistryError::Storage(StorageError::Io {
            what: "shared blob fetch".into(),
            source: std::io::Error::other(other.to_string()),
        }),
    }
}

/// One upstream blob fetch, written into an upload and committed once verified.
struct BlobFetch {
    proxy: Arc<Proxy>,
    storage: Arc<dyn Storage>,
    target: ProxyTarget,
    digest: Digest,
    state: watch::Sender<FetchState>,
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
            Err(e) => FetchState::Failed(Arc::new(e)),
        });
        self.proxy
            .fetch_ended(&self.digest, &self.target, size)
            .await;
    }

    async fn fetch(&self) -> Result<u64> {
        let path = format!("blobs/{}", self.digest);
        let response = self
            .target
            .request(Method::GET, &path, HeaderMap::new(), || {
                RegistryError::BlobUnknown(self.digest.to_string())
            })
            .await?;
        let size = response.content_length();
        let id = UploadId::new_random();
        let info = UploadInfo {
            repository: self.target.local_repo.to_string(),
            size: 0,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            monolithic: true,
        };
        self.storage.upload_create(&id, &info).await?;
        let result = self.copy(response, &id, size).await;
        if result.is_err() {
            let _ = self.storage.upload_delete(&id).await;
        }
        result
    }

    /// Streams the upstream body into the upload (and the hasher), publishing progress; verifies and commits.
    async fn copy(
        &self,
        response: reqwest::Response,
        id: &UploadId,
        size: Option<u64>,
    ) -> Result<u64> {
        let upstream = self.target.upstream.name().to_owned();
        let broke = |e: reqwest::Error| {
            log::warn!(
                "upstream {upstream}: blob {} broke off: {}",
                self.digest,
                upstream::cause_chain(&e)
            );
            RegistryError::UpstreamUnavailable {
                upstream: upstream.clone(),
                why: format!("blob transfer broke off ({})", upstream::describe(&e)),
            }
        };
        self.state.send_replace(FetchState::Streaming {
            size,
            written: 0,
            upload: id.clone(),
        });
        let pipe = HashPipe::spawn(Hasher::new(self.digest.algorithm()));
        let mut body = response.bytes_stream();
        let mut pending = BytesMut::new();
        let mut written = 0u64;
        // What was hashed, counted apart from what the file holds, so the commit's size check can catch a
        // difference between the two.
        let mut hashed = 0u64;
        loop {
            let next = if pending.is_empty() {
                Some(body.next().await)
            } else {
                tokio::time::timeout(FLUSH_PAUSE, body.next()).await.ok()
            };
            let finished = matches!(next, Some(None));
            if let Some(Some(chunk)) = next {
                let chunk = chunk.map_err(&broke)?;
                pending.extend_from_slice(&chunk);
                if pending.len() < FLUSH_BYTES {
                    continue;
                }
            }
            if !pending.is_empty() {
                let chunk = pending.split().freeze();
                hashed = hashed.saturating_add(chunk.len() as u64);
                pipe.feed(chunk.clone())
                    .await
                    .map_err(|e| RegistryError::Body(e.to_string()))?;
                let mut writer = self.storage.upload_writer(id).await?;
                writer.write(chunk).await?;
                written = writer.finish().await?;
                self.state.send_replace(FetchState::Streaming {
                    size,
                    written,
                    upload: id.clone(),
                });
            }
            if finished {
                break;
            }
        }
        let actual = pipe
            .finish()
            .await
            .map_err(|e| RegistryError::Body(e.to_string()))?
            .digest();
        if actual != self.digest {
            return Err(RegistryError::UpstreamFailed {
                upstream,
                why: format!(
                    "sent content with digest {actual} for blob {}; nothing cached",
                    self.digest
                ),
            });
        }
        let _gate = self.proxy.content_gate.read().await;
        self.storage.upload_commit(id, &self.digest, hashed).await?;
        self.storage
            .blob_link(&self.target.local_repo, &self.digest)
            .await?;
        log::info!(
            "cached blob {} ({written} bytes) for {} from upstream {upstream}",
            self.digest,
            self.target.local_repo
        );
        Ok(written)
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
    storage: Arc<dyn Storage>,
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
    let start = Phase::Following { state, offset: 0 };
    Box::pin(futures_util::stream::unfold(
        (start, storage, digest),
        |(phase, storage, digest)| async move {
            let mut phase = phase;
            loop {
                match phase {
                    Phase::Ended => return None,
                    Phase::Local(mut stream) => {
                        let item = stream.next().await?;
                        return Some((item, (Phase::Local(stream), storage, digest)));
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
                                match storage.upload_read_at(&upload, offset, max).await {
                                    Ok(bytes) if !bytes.is_empty() => {
                                        let next = offset + bytes.len() as u64;
                                        return Some((
                                            Ok(bytes),
                                            (
                                                Phase::Following {
                                                    state,
                                                    offset: next,
                                                },
                                                storage,
                                                digest,
                                            ),
                                        ));
                                    }
                                    // Committed (renamed) between the check and the read: the state says Done next.
                                    Ok(_) | Err(StorageError::UploadMissing(_)) => {
                                        let _ = state.changed().await;
                                        phase = Phase::Following { state, offset };
                                    }
                                    Err(e) => {
                                        let error = std::io::Error::other(e.to_string());
                                        return Some((Err(error), (Phase::Ended, storage, digest)));
                                    }
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
                                match storage.blob_read(&digest, Some(range)).await {
                                    Ok(Some(content)) => phase = Phase::Local(content.stream),
                                    Ok(None) => {
                                        let error = std::io::Error::other(format!(
                                            "blob {digest} vanished"
                                        ));
                                        return Some((Err(error), (Phase::Ended, storage, digest)));
                                    }
                                    Err(e) => {
                                        return Some((
                                            Err(storage_io_error(e)),
                                            (Phase::Ended, storage, digest),
                                        ));
                                    }
                                }
                            }
                            FetchState::Failed(error) => {
                                let error = std::io::Error::other(error.to_string());
                                return Some((Err(error), (Phase::Ended, storage, digest)));
                            }
                            FetchState::Connecting | FetchState::Streaming { .. } => {
                                if state.changed().await.is_err() {
                                    let error = std::io::Error::other("blob fetch stopped");
                                    return Some((Err(error), (Phase::Ended, storage, digest)));
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

fn storage_io_error(e: StorageError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Passes a `tags/list` request to the upstream: `(content type, body)` of a successful answer; failures map like
/// every other upstream answer (404 → NAME_UNKNOWN, 429 → TOOMANYREQUESTS, …).
pub async fn upstream_tags(target: &ProxyTarget, query: &str) -> Result<(String, Bytes)> {
    let path = if query.is_empty() {
        "tags/list".to_owned()
    } else {
        format!("tags/list?{query}")
    };
    let upstream = &target.upstream;
    let response = target
        .request(Method::GET, &path, HeaderMap::new(), || {
            RegistryError::NameUnknown(target.upstream_repo.clone())
        })
        .await?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = upstream::read_limited(response, MAX_SMALL_BODY)
        .await
        .map_err(|why| RegistryError::UpstreamFailed {
            upstream: upstream.name().to_owned(),
            why: format!("tags of {}: {why}", target.upstream_repo),
        })?;
    Ok((content_type, body))
}

#[cfg(test)]
mod tests {
    use super::{fresh_until, servable};
    use std::time::{Duration, Instant};

    #[test]
    fn a_huge_tag_ttl_does_not_overflow_the_clock() {
        let now = Instant::now();
        assert!(fresh_until(now, Duration::from_secs(u64::MAX)) > now + Duration::from_secs(3600));
        assert_eq!(
            fresh_until(now, Duration::from_secs(300)),
            now + Duration::from_secs(300)
        );
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
