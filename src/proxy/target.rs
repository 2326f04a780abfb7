//! Which upstream repository a request is for: `proxy/<upstream>/<repo>`, or `<repo>` with containerd's
//! `?ns=<upstream>`, and where it is cached locally. Pure: asks no upstream and reads no storage.

use std::sync::Arc;

use super::upstream::Upstream;
use super::{Proxy, PROXY_PREFIX};
use crate::registry::names::RepoName;

/// A repository served through the proxy.
#[derive(Clone)]
pub struct ProxyTarget {
    pub upstream: Arc<dyn Upstream>,
    /// The repository's name at the upstream (`library/nginx`).
    pub upstream_repo: String,
    /// Where it is cached locally (`proxy/docker.io/library/nginx`).
    pub local_repo: RepoName,
}

impl Proxy {
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
