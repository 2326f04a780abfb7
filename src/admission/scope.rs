//! What the webhooks know about the berth they run in, besides the policy: its namespace (never reviewed), the
//! names it is reached by, the proxy's upstreams, and so which images are paths of berth's proxy and which upstream
//! image is behind one. Pure: the names are given at start, nothing is looked up.

use kube::core::admission::Operation;

use super::image::{normalize_host, ImageRef};
use super::policy::Policy;
use super::review::Request;

/// berth's node-local pull endpoint (`berth node-proxy`, manifests/base/node-proxy.yaml) on every node's loopback.
pub const NODE_PROXY_HOSTS: [&str; 2] = ["127.0.0.1:5050", "localhost:5050"];

/// The port of [`NODE_PROXY_HOSTS`]: on it, every loopback or unspecified address is the node proxy.
pub const NODE_PROXY_PORT: u16 = 5050;

/// What the webhooks know about the berth they run in, besides the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// berth's own namespace: never validated nor mutated.
    pub namespace: String,
    /// Names of the proxy's upstreams: `<berth>/proxy/<upstream>/<repo>` is `<upstream>/<repo>` in disguise.
    pub proxy_upstreams: Vec<String>,
    /// berth's own addresses, as normalised registry hosts (besides the policy's rewrite targets): only a proxy path
    /// on one of these is berth's proxy; on any other host, `…/proxy/docker.io/…` is just a repository name.
    pub own_hosts: Vec<String>,
    /// Whether `/validate` decides, for every image on one of berth's own hosts, whether the pod's ServiceAccount
    /// may pull it by the policy's access rules (set when auth is on; off, pulls are not authorized at admission).
    pub authorize_pulls: bool,
    /// The node proxy's port: on it, every spelling of the node's own address (see [`is_node_local`]) is berth's.
    /// `None` for a scope without the node proxy.
    pub node_proxy_port: Option<u16>,
}

impl Scope {
    /// The scope of a berth in `namespace` reached by the default Service name `berth` and the node proxy.
    pub fn new(namespace: &str) -> Scope {
        let service = format!("berth.{namespace}.svc");
        Scope {
            namespace: namespace.to_owned(),
            proxy_upstreams: Vec::new(),
            own_hosts: Vec::new(),
            authorize_pulls: false,
            node_proxy_port: Some(NODE_PROXY_PORT),
        }
        .with_hosts(
            NODE_PROXY_HOSTS
                .iter()
                .map(|h| h.to_string())
                .chain([format!("{service}.cluster.local"), service]),
        )
    }

    /// Adds names berth is reached by (certificate names: DNS names or IP addresses, optionally with a port). A name
    /// that is not a registry host is skipped.
    pub fn with_hosts(mut self, names: impl IntoIterator<Item = String>) -> Scope {
        for name in names {
            // An IPv6 address in a certificate has no brackets; in an image reference it has.
            let name = match name.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => format!("[{ip}]"),
                Err(_) => name,
            };
            if let Ok(host) = normalize_host(&name) {
                if !self.own_hosts.contains(&host) {
                    self.own_hosts.push(host);
                }
            }
        }
        self
    }

    /// The scope with pull authorization at admission on or off (see [`Scope::authorize_pulls`]).
    pub fn authorizing_pulls(mut self, on: bool) -> Scope {
        self.authorize_pulls = on;
        self
    }

    pub fn with_proxy_upstreams(mut self, upstreams: impl IntoIterator<Item = String>) -> Scope {
        self.proxy_upstreams.extend(upstreams);
        self
    }

    /// Adds the upstream named by every path of berth's proxy among `images`, as if each were configured: for
    /// `berth policy eval`, which has no proxy configuration.
    pub fn assuming_upstreams_of<'a>(mut self, images: impl IntoIterator<Item = &'a str>) -> Scope {
        for image in images {
            let Ok(image) = ImageRef::parse(image) else {
                continue;
            };
            let upstream = image
                .path
                .as_str()
                .strip_prefix("proxy/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(upstream, _)| upstream.to_owned());
            if let Some(upstream) = upstream {
                if !self.proxy_upstreams.contains(&upstream) {
                    self.proxy_upstreams.push(upstream);
                }
            }
        }
        self
    }

    /// The upstream image `/validate` decides instead of `image` when `image` is a path of berth's proxy.
    pub fn upstream_behind(&self, image: &str, policy: &Policy) -> Option<String> {
        self.proxied_image(&ImageRef::parse(image).ok()?, policy)
    }

    /// Whether `image` is on one of berth's own hosts (see [`Scope::is_own_host`]): then its path is a repository
    /// of berth (what the pod watch reports of running images).
    pub fn serves(&self, image: &ImageRef, policy: &Policy) -> bool {
        self.is_own_host(&image.domain, policy)
    }

    /// Whether a normalised registry host is one of berth's own addresses: one of [`Scope::own_hosts`], a host
    /// the policy's rewrites send pods to, or any spelling of the node's own address on the node proxy's port
    /// (`127.0.0.2:5050`, `0.0.0.0:5050`, `[::1]:5050`, `[::]:5050`, `foo.localhost:5050`; see [`is_node_local`]).
    pub(super) fn is_own_host(&self, host: &str, policy: &Policy) -> bool {
        self.own_hosts.iter().any(|h| h == host)
            || policy.rewrite_hosts().iter().any(|h| h == host)
            || self.is_node_proxy(host)
    }

    /// Whether a normalised registry host is the node proxy: [`NODE_PROXY_HOSTS`] or any other spelling of the
    /// node's own address on its port (see [`is_node_local`]).
    pub(super) fn is_node_proxy(&self, host: &str) -> bool {
        self.node_proxy_port
            .is_some_and(|port| is_node_local(host, port))
    }

    /// The upstream image behind a reference to berth's proxy (`127.0.0.1:5050/proxy/docker.io/library/nginx:1` →
    /// `docker.io/library/nginx:1`): only on one of berth's own hosts and for a configured upstream, because
    /// `evil.example/proxy/docker.io/library/nginx` is an image of evil.example, whatever its path says.
    pub(super) fn proxied_image(&self, image: &ImageRef, policy: &Policy) -> Option<String> {
        if !self.is_own_host(&image.domain, policy) {
            return None;
        }
        let (upstream, rest) = image
            .path
            .as_str()
            .strip_prefix("proxy/")?
            .split_once('/')?;
        if !self.proxy_upstreams.iter().any(|u| u == upstream) {
            return None;
        }
        // The upstream's name stands in for its registry host only when it reads as one: an upstream named `quay`
        // would make `…/proxy/quay/evil/x` look like Docker Hub's `quay/evil/x`. Such a path is decided as written.
        if !(upstream.contains(['.', ':']) || upstream == "localhost") {
            return None;
        }
        let mut behind = format!("{upstream}/{rest}");
        if let Some(tag) = &image.tag {
            behind.push(':');
            behind.push_str(tag.as_str());
        }
        if let Some(digest) = &image.digest {
            behind.push('@');
            behind.push_str(&digest.to_string());
        }
        Some(behind)
    }
}

/// Whether a normalised registry host (as [`normalize_host`] spells it) names `port` on the node itself: an address
/// a connection from the node reaches the node proxy's loopback listener by. That is every loopback address
/// (`127.0.0.0/8`, `[::1]`; an IPv4-mapped one is already its IPv4 form), the unspecified addresses (`0.0.0.0` and
/// `[::]`, which Linux connects to the local host) and `localhost` with its subdomains (RFC 6761; systemd's
/// resolver answers them with loopback). Spelled another way, a node-local image would skip pull authorization at
/// admission while the kubelet still pulls it through the node proxy, which may pull everything.
pub fn is_node_local(host: &str, port: u16) -> bool {
    let Some((name, host_port)) = host.rsplit_once(':') else {
        return false;
    };
    if host_port.parse::<u16>() != Ok(port) {
        return false;
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let ip = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(std::net::IpAddr::V6),
        None => name.parse::<std::net::Ipv4Addr>().map(std::net::IpAddr::V4),
    };
    ip.map(|ip| ip.to_canonical())
        .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// Whether a review is out of berth's scope: not a create/update, berth's own namespace, or excluded by policy.
pub(super) fn skipped(request: &Request, policy: &Policy, scope: &Scope) -> bool {
    let namespace = request.namespace.as_deref().unwrap_or_default();
    !matches!(request.operation, Operation::Create | Operation::Update)
        || namespace == scope.namespace
        || policy.excludes(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which normalised hosts are the node proxy on port 5050 (review finding: only the two literal spellings were).
    #[test]
    fn node_local_spellings() {
        fn check(host: &str, expected: bool) {
            assert_eq!(is_node_local(host, NODE_PROXY_PORT), expected, "{host}");
        }
        let cases = [
            ("127.0.0.1:5050", true),
            ("127.1.2.3:5050", true),
            ("0.0.0.0:5050", true),
            ("[::1]:5050", true),
            ("[::]:5050", true),
            ("localhost:5050", true),
            ("a.b.localhost:5050", true),
            // Not normalised (normalize_host writes it as 127.0.0.1), still the loopback.
            ("[::ffff:7f00:1]:5050", true),
            ("127.0.0.1:5051", false),
            ("127.0.0.1", false),
            ("[::1]", false),
            ("localhost", false),
            ("10.0.0.1:5050", false),
            ("[fe80::1]:5050", false),
            ("[::2]:5050", false),
            ("localhost.example:5050", false),
            ("xlocalhost:5050", false),
            ("berth.berth-system.svc:5050", false),
            ("", false),
            (":5050", false),
        ];
        for (host, expected) in cases {
            check(host, expected);
        }
        // Through normalize_host and the scope: a scope without the node proxy has no node-local host.
        let policy = Policy::default();
        let scope = Scope::new("berth-system");
        for spelling in ["[::FFFF:7F00:1]:5050", "127.9.9.9:5050", "[0::0]:5050"] {
            let host = normalize_host(spelling).expect("a host");
            assert!(scope.is_own_host(&host, &policy), "{spelling} ({host})");
            assert!(!Scope::default().is_own_host(&host, &policy), "{spelling}");
        }
    }

    #[test]
    fn berths_own_hosts_are_normalised_names() {
        let scope = Scope::new("infra").with_hosts(
            [
                "::1",
                "Berth.Example.com",
                "berth.example.com:443",
                "not a host",
                "10.0.0.7",
            ]
            .map(String::from),
        );
        assert_eq!(
            scope.own_hosts,
            [
                "127.0.0.1:5050",
                "localhost:5050",
                "berth.infra.svc.cluster.local",
                "berth.infra.svc",
                "[::1]",
                "berth.example.com",
                "10.0.0.7"
            ]
        );
    }
}
