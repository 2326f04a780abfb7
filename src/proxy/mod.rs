//! The pull-through cache: serves repositories of configured upstream registries from berth's store, fetching on
//! first use. Manifests by tag are trusted for `tagTtl`, then revalidated with a cheap `HEAD`; a failing upstream
//! serves the cached copy (stale-if-error). Blobs stream to clients while they are written to the cache, verified
//! before the cached copy becomes visible; concurrent requests share one upstream fetch. Proxied repositories live
//! in the store under `proxy/<upstream>/<repository>` and are read-only; least recently used proxied blobs are
//! evicted past `maxSize`, pushed content never.
//!
//! The cache policy is split by concern: [`target`] (which upstream repository a request is for), [`manifests`]
//! (tagTtl, stale-if-error), [`fetch`] (single-flight blob fetches, the withheld last byte), [`eviction`] (LRU
//! accounting) and [`error`]. It talks to upstreams only through the [`upstream::Upstream`] trait (reqwest lives
//! in `upstream/http.rs`), and it writes nothing itself: every byte it keeps goes through the registry service
//! (`registry/service/cache.rs`), which verifies, commits and evicts under the content gate. It reads the time
//! from a [`SharedClock`]. Knows nothing of actix-web but the error mapping (see `routes.rs`; fetches run as tokio
//! tasks).

pub mod config;
pub mod error;
mod eviction;
mod fetch;
mod manifests;
pub mod routes;
mod target;
pub mod upstream;

#[cfg(test)]
mod fake;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::registry::names::{Digest, RepoName, Tag};
use crate::registry::Registry;
use config::ProxyConfig;
use eviction::Usage;
use fetch::FetchState;
use upstream::http::HttpUpstream;
use upstream::{Upstream, UpstreamError};

pub use error::ProxyError;
pub use manifests::upstream_tags;
pub use target::ProxyTarget;

type Result<T, E = ProxyError> = std::result::Result<T, E>;

/// The local repository prefix under which proxied content is cached.
pub const PROXY_PREFIX: &str = "proxy";

pub struct Proxy {
    upstreams: BTreeMap<String, Arc<dyn Upstream>>,
    /// The only writer of content: every fetched blob and manifest is stored through it.
    registry: Arc<Registry>,
    clock: SharedClock,
    /// (local repo, tag) → until when the cached tag is trusted without asking the upstream.
    fresh_tags: Mutex<HashMap<(RepoName, Tag), std::time::Instant>>,
    /// One lock per manifest reference being fetched, so concurrent requests share one upstream fetch.
    manifest_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    blob_fetches: Mutex<HashMap<Digest, watch::Receiver<FetchState>>>,
    usage: Mutex<HashMap<Digest, Usage>>,
    max_size: Option<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Proxy {
    /// The proxy of the configured upstreams, over HTTP.
    pub fn from_config(
        config: &ProxyConfig,
        registry: Arc<Registry>,
        clock: SharedClock,
    ) -> Result<Proxy, UpstreamError> {
        let mut upstreams: Vec<Arc<dyn Upstream>> = Vec::new();
        for upstream in &config.upstreams {
            upstreams.push(Arc::new(HttpUpstream::new(upstream.clone())?));
        }
        Ok(Proxy::new(upstreams, config.max_size, registry, clock))
    }

    /// The proxy of `upstreams` (by their names), caching through `registry`, evicting past `max_size` bytes.
    pub fn new(
        upstreams: Vec<Arc<dyn Upstream>>,
        max_size: Option<u64>,
        registry: Arc<Registry>,
        clock: SharedClock,
    ) -> Proxy {
        Proxy {
            upstreams: upstreams
                .into_iter()
                .map(|upstream| (upstream.name().to_owned(), upstream))
                .collect(),
            registry,
            clock,
            fresh_tags: Mutex::new(HashMap::new()),
            manifest_locks: Mutex::new(HashMap::new()),
            blob_fetches: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            max_size,
        }
    }

    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.upstreams.keys().map(String::as_str)
    }
}
