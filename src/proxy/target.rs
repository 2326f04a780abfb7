//! Which upstream repository a request is for: `proxy/<upstream>/<repo>`, or `<repo>` with containerd's
//! `?ns=<upstream>`, and where it is cached locally. Pure: asks no upstream and reads no storage.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::upstream::Upstream;
use crate::registry::names::RepoName;

/// The local repository prefix under which proxied content is cached.
pub const PROXY_PREFIX: &str = "proxy";

/// A repository served through the proxy.
#[derive(Clone)]
pub struct ProxyTarget {
    pub upstream: Arc<dyn Upstream>,
    /// The repository's name at the upstream (`library/nginx`).
    pub upstream_repo: String,
    /// Where it is cached locally (`proxy/docker.io/library/nginx`).
    pub local_repo: RepoName,
}

/// The configured upstreams, by name.
pub struct Targets {
    upstreams: BTreeMap<String, Arc<dyn Upstream>>,
}

impl Targets {
    pub fn new(upstreams: Vec<Arc<dyn Upstream>>) -> Targets {
        Targets {
            upstreams: upstreams
                .into_iter()
                .map(|upstream| (upstream.name().to_owned(), upstream))
                .collect(),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::ManualClock;
    use crate::proxy::fake::FakeUpstream;
    use crate::proxy::upstream::Upstream;
    use crate::proxy::Proxy;
    use crate::registry::names::RepoName;
    use crate::registry::storage::fs::FsStorage;
    use crate::registry::Registry;

    #[test]
    fn requests_resolve_to_the_upstream_repository_and_one_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = FsStorage::open(dir.path()).expect("open storage");
        let upstreams: Vec<Arc<dyn Upstream>> = ["docker.io", "ghcr.io"]
            .map(|name| Arc::new(FakeUpstream::named(name)) as Arc<dyn Upstream>)
            .into();
        let registry = Arc::new(Registry::new(Arc::new(storage)));
        let proxy = Proxy::new(upstreams, None, registry, ManualClock::new());
        let resolve = |repo: &str, ns: Option<&str>| {
            let repo = RepoName::parse(repo).expect("repository name");
            proxy.resolve(&repo, ns).map(|target| {
                (
                    target.upstream.name().to_owned(),
                    target.upstream_repo,
                    target.local_repo.to_string(),
                )
            })
        };
        let hub = |upstream_repo: &str| {
            Some((
                "docker.io".to_owned(),
                upstream_repo.to_owned(),
                format!("proxy/docker.io/{upstream_repo}"),
            ))
        };
        // Docker Hub's official images get library/, in both forms; both share one cache.
        assert_eq!(resolve("proxy/docker.io/nginx", None), hub("library/nginx"));
        assert_eq!(
            resolve("proxy/docker.io/library/nginx", None),
            hub("library/nginx")
        );
        assert_eq!(resolve("nginx", Some("docker.io")), hub("library/nginx"));
        assert_eq!(resolve("team/app", Some("docker.io")), hub("team/app"));
        assert_eq!(
            resolve("proxy/ghcr.io/o/r", Some("docker.io")),
            Some(("ghcr.io".into(), "o/r".into(), "proxy/ghcr.io/o/r".into())),
            "the path names the upstream; ?ns= does not override it"
        );
        // Local repositories, and upstreams that are not configured.
        assert_eq!(resolve("team/app", None), None);
        assert_eq!(resolve("proxy/quay.io/o/r", None), None);
        assert_eq!(resolve("team/app", Some("quay.io")), None);
        assert!(proxy.serves("proxy/docker.io/library/nginx"));
        assert!(!proxy.serves("proxy/quay.io/o/r"));
        assert!(!proxy.serves("Not A Name"));
    }
}
