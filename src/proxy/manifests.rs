//! Manifests of proxied repositories: by digest from the cache once fetched; by tag trusted for the upstream's
//! `tagTtl`, then revalidated with a cheap `HEAD` (refetched if the tag moved); a failing upstream serves the cached
//! copy (stale-if-error), and one that says the tag is gone removes it. Tag lists are passed on from the upstream.
//!
//! Stores nothing itself: fetched manifests are verified and stored by the registry service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{ProxyError, Result};
use super::locked::lock;
use super::target::ProxyTarget;
use super::upstream::{UpstreamTag, MANIFEST_ACCEPT};
use crate::clock::SharedClock;
use crate::events::model::Target;
use crate::events::registry::proxy_fetch;
use crate::events::EventLog;
use crate::registry::error::RegistryError;
use crate::registry::manifests::manifest_target;
use crate::registry::names::{Digest, Reference, RepoName, Tag};
use crate::registry::service::cache::CacheError;
use crate::registry::storage::StoredManifest;
use crate::registry::Registry;

/// After a failed revalidation, the cached tag is served without asking again for this long.
const STALE_RETRY: Duration = Duration::from_secs(30);

/// `now + duration`, or about a century from now for a `tagTtl` too large for the clock (adding it would panic).
fn fresh_until(now: Instant, duration: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(duration)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// The manifests of proxied repositories, and how fresh each cached tag is.
pub struct Manifests {
    registry: Arc<Registry>,
    clock: SharedClock,
    /// (local repo, tag) → until when the cached tag is trusted without asking the upstream.
    fresh_tags: Mutex<HashMap<(RepoName, Tag), Instant>>,
    /// One lock per manifest reference being fetched, so concurrent requests share one upstream fetch.
    manifest_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Counts the answers from the cache (the upstream counts its own, `super::metered`).
    metrics: Arc<crate::events::Metrics>,
    /// Where each fetch from an upstream is recorded (`proxy-fetch`).
    events: EventLog,
}

impl Manifests {
    pub fn new(
        registry: Arc<Registry>,
        clock: SharedClock,
        metrics: Arc<crate::events::Metrics>,
        events: EventLog,
    ) -> Manifests {
        Manifests {
            metrics,
            registry,
            clock,
            events,
            fresh_tags: Mutex::new(HashMap::new()),
            manifest_locks: Mutex::new(HashMap::new()),
        }
    }

    fn is_fresh(&self, repo: &RepoName, tag: &Tag) -> bool {
        let now = self.clock.instant();
        lock(&self.fresh_tags)
            .get(&(repo.clone(), tag.clone()))
            .is_some_and(|until| now < *until)
    }

    /// Trusts the cached tag for `duration` (its tagTtl; or a short while after a failed revalidation, so that the
    /// requests queued behind it do not each wait for the failing upstream again).
    fn mark_fresh(&self, repo: &RepoName, tag: &Tag, duration: Duration) {
        let until = fresh_until(self.clock.instant(), duration);
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
            Reference::Digest(_) => {
                if let Some(cached) = self
                    .registry
                    .cached_manifest(&target.local_repo, reference)
                    .await?
                {
                    self.hit(target);
                    return Ok(cached);
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
        let reference = Reference::Tag(tag.clone());
        let cached = self.registry.cached_manifest(repo, &reference).await?;
        if let Some(cached) = &cached {
            if self.is_fresh(repo, tag) {
                self.hit(target);
                return Ok(cached.clone());
            }
            match target
                .upstream
                .tag(&target.upstream_repo, tag, MANIFEST_ACCEPT)
                .await
            {
                Ok(UpstreamTag::At(digest)) if digest == cached.0 => {
                    self.mark_fresh(repo, tag, target.upstream.tag_ttl());
                    self.hit(target);
                    return Ok(cached.clone());
                }
                Ok(UpstreamTag::At(_) | UpstreamTag::Unknown) => {}
                Ok(UpstreamTag::Missing) => {
                    // Authoritative: the tag is gone upstream.
                    self.registry.cache_untag(repo, tag).await?;
                    return Err(RegistryError::ManifestUnknown(format!(
                        "{}:{tag}",
                        target.upstream_repo
                    ))
                    .into());
                }
                Err(e) if e.is_transient() => {
                    log::warn!(
                        "serving cached {repo}:{tag} ({}) because revalidation failed: {e}",
                        cached.0
                    );
                    self.mark_fresh(repo, tag, STALE_RETRY);
                    self.hit(target);
                    return Ok(cached.clone());
                }
                Err(e) => return Err(e),
            }
        }
        match (self.fetch_manifest(target, &reference).await, cached) {
            (Ok(fetched), _) => {
                self.mark_fresh(repo, tag, target.upstream.tag_ttl());
                Ok(fetched)
            }
            (Err(e), Some(cached)) if e.is_transient() => {
                log::warn!(
                    "serving cached {repo}:{tag} ({}) because the upstream failed: {e}",
                    cached.0
                );
                self.hit(target);
                Ok(cached)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Counts an answer from the cache.
    fn hit(&self, target: &ProxyTarget) {
        self.metrics.proxy_request(
            target.upstream.name(),
            crate::events::metrics::ProxyResult::Hit,
        );
    }

    /// Fetches a manifest from the upstream and has the registry verify and cache it (by tag: and tag it).
    async fn fetch_manifest(
        &self,
        target: &ProxyTarget,
        reference: &Reference,
    ) -> Result<(Digest, StoredManifest)> {
        let upstream = &target.upstream;
        let fetched = upstream
            .manifest(&target.upstream_repo, reference, MANIFEST_ACCEPT)
            .await?;
        let failed = |why: String| ProxyError::Failed {
            upstream: upstream.name().to_owned(),
            why,
        };
        let (digest, manifest) = self
            .registry
            .cache_manifest(
                &target.local_repo,
                reference,
                fetched.content_type.as_deref(),
                fetched.bytes,
            )
            .await
            .map_err(|e| match e {
                CacheError::DigestMismatch { expected, actual } => failed(format!(
                    "served {actual} for manifest {expected}; nothing cached"
                )),
                CacheError::ManifestInvalid(e) => failed(format!("manifest {reference}: {e}")),
                CacheError::Registry(e) => e.into(),
            })?;
        log::info!(
            "cached manifest {}@{digest} from upstream {}",
            target.local_repo,
            upstream.name()
        );
        if self.events.enabled() {
            let fetched = Target {
                upstream: Some(upstream.name().to_owned()),
                ..manifest_target(target.local_repo.as_str(), reference, &digest, &manifest)
            };
            self.events.record(proxy_fetch(
                fetched,
                self.events.instance(),
                self.events.now(),
            ));
        }
        Ok((digest, manifest))
    }
}

/// Passes a `tags/list` request to the upstream: `(content type, body)` of a successful answer; failures map like
/// every other upstream answer (404 → NAME_UNKNOWN, 429 → TOOMANYREQUESTS, …).
pub async fn upstream_tags(target: &ProxyTarget, query: &str) -> Result<(String, Bytes)> {
    let tags = target.upstream.tags(&target.upstream_repo, query).await?;
    Ok((tags.content_type, tags.body))
}

#[cfg(test)]
mod tests {
    use super::fresh_until;
    use crate::proxy::fake::{manifest, Asked, Harness, TAG_TTL};
    use crate::proxy::ProxyError;
    use crate::registry::names::{Digest, Reference, Tag};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    fn v1() -> Reference {
        Reference::Tag(Tag::parse("v1").expect("tag"))
    }

    #[tokio::test]
    async fn a_tag_is_trusted_for_its_ttl_then_revalidated_and_refetched_when_it_moved() {
        let h = Harness::new(None);
        let target = h.target("team/app");
        let asked = &h.upstream.asked;
        h.upstream.set_tag("v1", manifest(1));

        let (first, _) = h.proxy.manifest(&target, &v1()).await.expect("first pull");
        assert_eq!(first, Digest::sha256_of(&manifest(1)));
        assert_eq!(Asked::get(&asked.manifest_gets), 1);

        // Within tagTtl the upstream is not asked at all, even though the tag moved there.
        h.upstream.set_tag("v1", manifest(2));
        h.clock.advance(TAG_TTL - Duration::from_secs(1));
        let (cached, _) = h.proxy.manifest(&target, &v1()).await.expect("cached pull");
        assert_eq!(cached, first, "served from the cache within tagTtl");
        assert_eq!(Asked::get(&asked.tag_heads), 0);
        assert_eq!(Asked::get(&asked.manifest_gets), 1);

        // After tagTtl: a HEAD sees the move, a GET fetches the new manifest.
        h.clock.advance(Duration::from_secs(2));
        let (moved, stored) = h.proxy.manifest(&target, &v1()).await.expect("revalidated");
        assert_eq!(moved, Digest::sha256_of(&manifest(2)));
        assert_eq!(stored.bytes, manifest(2));
        assert_eq!(Asked::get(&asked.tag_heads), 1);
        assert_eq!(Asked::get(&asked.manifest_gets), 2);

        // An unchanged tag after tagTtl costs one HEAD and no GET.
        h.clock.advance(TAG_TTL + Duration::from_secs(1));
        let (same, _) = h.proxy.manifest(&target, &v1()).await.expect("unchanged");
        assert_eq!(same, moved);
        assert_eq!(Asked::get(&asked.tag_heads), 2);
        assert_eq!(Asked::get(&asked.manifest_gets), 2);
    }

    #[tokio::test]
    async fn a_cached_tag_is_served_while_the_upstream_is_down_and_nothing_uncached_is() {
        let h = Harness::new(None);
        let target = h.target("team/app");
        h.upstream.set_tag("v1", manifest(1));
        let (cached, _) = h.proxy.manifest(&target, &v1()).await.expect("first pull");

        h.upstream.down.store(true, Ordering::SeqCst);
        h.clock.advance(TAG_TTL * 2);
        let (stale, stored) = h
            .proxy
            .manifest(&target, &v1())
            .await
            .expect("stale-if-error");
        assert_eq!(stale, cached);
        assert_eq!(stored.bytes, manifest(1));
        assert_eq!(Asked::get(&h.upstream.asked.tag_heads), 1, "it did ask");

        let other = Reference::Tag(Tag::parse("v2").expect("tag"));
        match h.proxy.manifest(&target, &other).await {
            Err(ProxyError::Unavailable { upstream, .. }) => assert_eq!(upstream, "up"),
            Err(e) => panic!("expected the upstream to be unavailable, got {e}"),
            Ok((digest, _)) => panic!("nothing is cached for v2, yet {digest} was served"),
        }
    }

    #[tokio::test]
    async fn a_tag_gone_upstream_is_removed_from_the_cache() {
        let h = Harness::new(None);
        let target = h.target("team/app");
        h.upstream.set_tag("v1", manifest(1));
        h.proxy.manifest(&target, &v1()).await.expect("first pull");

        h.upstream.remove_tag("v1");
        h.clock.advance(TAG_TTL * 2);
        let gone = h.proxy.manifest(&target, &v1()).await;
        assert!(
            matches!(&gone, Err(ProxyError::Registry(e)) if e.to_string().contains("manifest unknown")),
            "{:?}",
            gone.map(|(digest, _)| digest)
        );
        let cached = h
            .registry
            .cached_manifest(&target.local_repo, &v1())
            .await
            .expect("read the cache");
        assert!(cached.is_none(), "the cached tag is removed");
    }

    #[test]
    fn a_huge_tag_ttl_does_not_overflow_the_clock() {
        let now = Instant::now();
        assert!(fresh_until(now, Duration::from_secs(u64::MAX)) > now + Duration::from_secs(3600));
        assert_eq!(
            fresh_until(now, Duration::from_secs(300)),
            now + Duration::from_secs(300)
        );
    }
}
