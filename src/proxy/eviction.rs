//! The cache's size: which proxied blobs are cached, how big, and when each was last used; past `maxSize` the
//! least recently used are evicted. Eviction itself (unlink, and delete the content unless pushed content still
//! links it, under the write gate) is the registry service's; this module only decides the order.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::Result;
use super::locked::lock;
use super::target::Targets;
use crate::clock::SharedClock;
use crate::registry::names::{Digest, RepoName};
use crate::registry::Registry;

struct Usage {
    size: u64,
    last_used: Instant,
    /// Every proxied repository the blob is cached for (a layer shared by images of several repositories).
    repos: BTreeSet<RepoName>,
}

/// The cached proxied blobs, their sizes and last uses; empty without `maxSize`.
pub struct Lru {
    registry: Arc<Registry>,
    clock: SharedClock,
    max_size: Option<u64>,
    usage: Mutex<HashMap<Digest, Usage>>,
}

impl Lru {
    pub fn new(registry: Arc<Registry>, clock: SharedClock, max_size: Option<u64>) -> Lru {
        Lru {
            registry,
            clock,
            max_size,
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// How many blobs are accounted.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.usage).len()
    }

    /// Counts the proxied blobs already cached (after a restart), for the size limit.
    pub async fn load(&self, targets: &Targets) -> Result<()> {
        if self.max_size.is_none() {
            return Ok(());
        }
        let mut found = Vec::new();
        for repo in self.registry.catalog(None, None).await?.items {
            // Only the caches of configured upstreams; anything else under proxy/ is not berth's to evict.
            if targets
                .resolve(&repo, None)
                .is_none_or(|target| target.local_repo != repo)
            {
                continue;
            }
            for (digest, size) in self.registry.cache_blobs(&repo).await? {
                found.push((digest, size, repo.clone()));
            }
        }
        for (digest, size, repo) in found {
            self.touch(&digest, size, &repo);
        }
        Ok(())
    }

    /// Records that `repo`'s cached blob `digest` of `size` bytes was just used.
    pub fn touch(&self, digest: &Digest, size: u64, repo: &RepoName) {
        if self.max_size.is_some() {
            let now = self.clock.instant();
            let mut usage = lock(&self.usage);
            let entry = usage.entry(digest.clone()).or_insert_with(|| Usage {
                size,
                last_used: now,
                repos: Default::default(),
            });
            entry.last_used = now;
            entry.repos.insert(repo.clone());
        }
    }

    /// Marks a cached proxied blob as just used (if it is accounted).
    pub fn used(&self, digest: &Digest) {
        if let Some(usage) = lock(&self.usage).get_mut(digest) {
            usage.last_used = self.clock.instant();
        }
    }

    /// Evicts least recently used proxied blobs until the cache fits `maxSize`. Content that any other repository
    /// links (pushed content) stays; only the proxy's link goes. Blobs being fetched (`fetching`) are never chosen.
    pub async fn evict(&self, fetching: &(dyn Fn(&Digest) -> bool + Sync)) -> Result<()> {
        let Some(max) = self.max_size else {
            return Ok(());
        };
        let victims: Vec<(Digest, Vec<RepoName>, u64)> = {
            let usage = lock(&self.usage);
            let mut total: u64 = usage.values().map(|u| u.size).sum();
            if total <= max {
                return Ok(());
            }
            let mut by_age: Vec<(&Digest, &Usage)> =
                usage.iter().filter(|(d, _)| !fetching(d)).collect();
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
            self.registry.cache_evict(&digest, &repos).await?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use crate::proxy::fake::Harness;
    use crate::registry::names::{Digest, RepoName};

    fn blob(name: &str) -> (Digest, Bytes) {
        let content = Bytes::from(format!("blob {name:>5}"));
        assert_eq!(content.len(), 10);
        (Digest::sha256_of(&content), content)
    }

    #[tokio::test]
    async fn the_least_recently_used_blob_goes_first_and_pushed_content_stays() {
        // Room for two of the 10-byte blobs.
        let h = Harness::new(Some(25));
        let target = h.target("team/app");
        let repo = &target.local_repo;
        let [a, b, c, d] = ["a", "b", "c", "d"].map(blob);
        for (digest, content) in [&a, &b, &c, &d] {
            h.upstream.set_blob(digest, content.clone());
        }
        // d is pushed to a local repository too.
        let local = RepoName::parse("team/local").expect("name");
        h.registry
            .upload_monolithic(
                &local,
                &d.0,
                futures_util::stream::iter([Ok::<_, std::io::Error>(d.1.clone())]),
            )
            .await
            .expect("push");
        let proxy = h.proxy.clone();
        let two_cached = move || proxy.lru.len() == 2;
        let linked = |digest: Digest| {
            let (registry, repo) = (h.registry.clone(), repo.clone());
            async move { registry.blob_linked(&repo, &digest).await.expect("linked?") }
        };
        let second = Duration::from_secs(1);

        for (digest, _) in [&d, &a, &b] {
            h.pull(&target, digest).await;
            h.fetches_ended().await;
            h.clock.advance(second);
        }
        // d, the oldest, went: from the cache, but not from the local repository that pushed it.
        h.until("d to be evicted", two_cached.clone()).await;
        assert!(!linked(d.0.clone()).await);
        assert_eq!(
            h.registry.blob_size(&local, &d.0).await.expect("pushed d"),
            10
        );
        assert!(linked(a.0.clone()).await && linked(b.0.clone()).await);

        // a is used again, so b is now the least recently used.
        assert_eq!(h.pull(&target, &a.0).await, a.1);
        h.clock.advance(second);
        h.pull(&target, &c.0).await;
        h.fetches_ended().await;
        h.until("b to be evicted", two_cached.clone()).await;
        assert!(!linked(b.0.clone()).await);
        assert!(!h.registry.linked_anywhere(&b.0).await.expect("anywhere?"));
        assert!(linked(a.0.clone()).await && linked(c.0.clone()).await);
    }
}
