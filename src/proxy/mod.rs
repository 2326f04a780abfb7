//! The pull-through cache: serves repositories of configured upstream registries from berth's store, fetching on
//! first use. Manifests by tag are trusted for `tagTtl`, then revalidated with a cheap `HEAD`; a failing upstream
//! serves the cached copy (stale-if-error). Blobs stream to clients while they are written to the cache, verified
//! before the cached copy becomes visible; concurrent requests share one upstream fetch. Proxied repositories live
//! in the store under `proxy/<upstream>/<repository>` and are read-only; least recently used proxied blobs are
//! evicted past `maxSize`, pushed content never.
//!
//! The cache policy is split by concern, each part with its own state, composed here: [`target`] (which upstream
//! repository a request is for), [`manifests`] (tagTtl, stale-if-error), [`fetch`] (single-flight blob fetches,
//! the withheld last byte), [`eviction`] (LRU accounting) and [`error`]. The parts never import this file. It
//! talks to upstreams only through the [`upstream::Upstream`] trait (reqwest lives in `upstream/http.rs`), and it
//! writes nothing itself: every byte it keeps goes through the registry service (`registry/service/cache.rs`),
//! which verifies, commits and evicts under the content gate. It reads the time from a [`SharedClock`]. Knows
//! nothing of actix-web but the error mapping (see `http.rs`; fetches run as tokio tasks).

pub mod config;
pub mod error;
mod eviction;
mod fetch;
pub mod http;
mod locked;
mod manifests;
mod metered;
mod target;
pub mod upstream;

#[cfg(test)]
mod fake;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::events::{EventLog, Metrics};
use crate::registry::names::{Digest, Reference};
use crate::registry::storage::{ByteStream, StoredManifest};
use crate::registry::Registry;
use config::ProxyConfig;
use error::Result;
use eviction::Lru;
use fetch::Fetcher;
use manifests::Manifests;
use target::Targets;
use upstream::http::{HttpUpstream, UpstreamError};
use upstream::Upstream;

pub use error::ProxyError;
pub use manifests::upstream_tags;
pub use target::{ProxyTarget, PROXY_PREFIX};

pub struct Proxy {
    targets: Targets,
    manifests: Manifests,
    fetcher: Arc<Fetcher>,
    lru: Arc<Lru>,
}

impl Proxy {
    /// The proxy of the configured upstreams, over HTTP.
    pub fn from_config(
        config: &ProxyConfig,
        registry: Arc<Registry>,
        clock: SharedClock,
    ) -> Result<Proxy, UpstreamError> {
        let upstreams = Proxy::http_upstreams(config)?;
        Ok(Proxy::new(upstreams, config.max_size, registry, clock))
    }

    /// The configured upstreams as clients over HTTP, in the config's order (what [`Proxy::from_config`] proxies;
    /// a test gives [`Proxy::new`] other [`Upstream`]s instead).
    pub fn http_upstreams(config: &ProxyConfig) -> Result<Vec<Arc<dyn Upstream>>, UpstreamError> {
        let mut upstreams: Vec<Arc<dyn Upstream>> = Vec::new();
        for upstream in &config.upstreams {
            upstreams.push(Arc::new(HttpUpstream::new(upstream.clone())?));
        }
        Ok(upstreams)
    }

    /// The proxy of `upstreams` (by their names), caching through `registry` (the only writer of content),
    /// evicting past `max_size` bytes.
    pub fn new(
        upstreams: Vec<Arc<dyn Upstream>>,
        max_size: Option<u64>,
        registry: Arc<Registry>,
        clock: SharedClock,
    ) -> Proxy {
        Proxy::observed(
            upstreams,
            max_size,
            registry,
            clock,
            Arc::new(Metrics::new()),
            EventLog::off(),
        )
    }

    /// [`Proxy::new`] counting its hits, misses, upstream errors and upstream bytes into `metrics`, and recording a
    /// `proxy-fetch` event into `events` for every manifest and blob it fetches from an upstream and caches (where
    /// the fetch is known to have succeeded, once however many clients wait for it).
    pub fn observed(
        upstreams: Vec<Arc<dyn Upstream>>,
        max_size: Option<u64>,
        registry: Arc<Registry>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        events: EventLog,
    ) -> Proxy {
        let upstreams = upstreams
            .into_iter()
            .map(|upstream| metered::Metered::wrap(upstream, metrics.clone()))
            .collect();
        let lru = Arc::new(Lru::new(registry.clone(), clock.clone(), max_size));
        Proxy {
            targets: Targets::new(upstreams),
            manifests: Manifests::new(registry.clone(), clock, metrics.clone(), events.clone()),
            fetcher: Arc::new(Fetcher::new(registry, lru.clone(), metrics, events)),
            lru,
        }
    }

    /// The names of the upstreams proxied (each also its prefix under `proxy/`), in name order.
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.targets.names()
    }

    /// Which upstream repository a request is for: `proxy/<upstream>/<repo>`, or `<repo>` with containerd's
    /// `?ns=<upstream>`. `None` for local repositories.
    pub fn resolve(
        &self,
        repo: &crate::registry::names::RepoName,
        ns: Option<&str>,
    ) -> Option<ProxyTarget> {
        self.targets.resolve(repo, ns)
    }

    /// Whether an image path (as in `127.0.0.1:5050/<path>`) is served by a configured upstream.
    pub fn serves(&self, path: &str) -> bool {
        self.targets.serves(path)
    }

    /// Counts the proxied blobs already cached (after a restart), for the size limit.
    pub async fn load_usage(&self) -> Result<()> {
        self.lru.load(&self.targets).await
    }

    /// Marks a cached proxied blob as just used, for the least-recently-used eviction. Cached blobs are served by
    /// the registry's own handler, which knows nothing of this bookkeeping.
    pub fn used(&self, digest: &Digest) {
        self.lru.used(digest);
    }

    /// A manifest of a proxied repository, from the cache or the upstream.
    pub async fn manifest(
        &self,
        target: &ProxyTarget,
        reference: &Reference,
    ) -> Result<(Digest, StoredManifest)> {
        self.manifests.manifest(target, reference).await
    }

    /// The size of a blob of a proxied repository: cached, or as the upstream reports it (nothing is fetched).
    pub async fn blob_size(&self, target: &ProxyTarget, digest: &Digest) -> Result<u64> {
        self.fetcher.blob_size(target, digest).await
    }

    /// A blob of a proxied repository: `(size if known, bytes)`. Cached blobs come from the store; others stream
    /// from the one shared upstream fetch as its bytes arrive.
    pub async fn blob(
        &self,
        target: &ProxyTarget,
        digest: &Digest,
    ) -> Result<(Option<u64>, ByteStream)> {
        self.fetcher.blob(target, digest).await
    }
}
