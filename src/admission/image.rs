//! Image references as pods write them, parsed and normalised per the distribution reference grammar:
//! `nginx` → `docker.io/library/nginx:latest`, `user/app:1` → `docker.io/user/app:1`, `localhost:5000/a@sha256:…`,
//! `[::1]:5000/x:tag@sha256:…`. The registry host is normalised too ([`normalize_host`]): one registry has one
//! spelling, so a rule on a host cannot be dodged by writing the host another way. Pure: no I/O.
//!
//! What follows the host is the registry's own grammar: the repository path, tag and digest are
//! [`crate::registry::names`]' types (issue 10: a second grammar here had drifted from the registry's). A digest is
//! a [`ReferenceDigest`]: pods may pull by any digest clients know (sha384 too), and a policy decides them like any
//! other; whether berth could hold one (`when: available`) is asked of [`ReferenceDigest::stored`], and a rewrite
//! that cannot apply says why. This module adds only what a reference has on top: the registry host, Docker Hub's
//! defaults (`docker.io`, `library/`), ports.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

use crate::registry::names::{ReferenceDigest, RepoName, Tag};

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";
/// Longest `domain/path` the grammar allows.
const MAX_NAME_LEN: usize = 255;
/// A reference names no scheme; clients reach a registry over HTTPS first, so HTTPS's port is the host itself.
const DEFAULT_HTTPS_PORT: u16 = 443;

static DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let ipv6 = r"\[[a-fA-F0-9:]+\]";
    Regex::new(&format!(
        r"^(?:{component}(?:\.{component})*|{ipv6})(?::[0-9]+)?$"
    ))
    .expect("static regex")
});

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host as [`normalize_host`] spells it, with port if any (`docker.io`, `registry:5000`, `[::1]:5000`).
    pub domain: String,
    /// Repository path within the registry (`library/nginx`).
    pub path: RepoName,
    pub tag: Option<Tag>,
    /// Any digest clients pull by (sha384 included); whether berth could hold it is `ReferenceDigest::stored`.
    pub digest: Option<ReferenceDigest>,
}

/// Why a reference could not be parsed; the message names the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    /// What is wrong with it; for a digest, the registry's reason after `bad digest: `.
    pub reason: String,
}

/// The one spelling of a registry host (`host[:port]`, as the reference grammar allows it): lower case (host names
/// are case-insensitive), the port as a plain decimal number, and no port at all for 443, HTTPS's default, which
/// is what a client uses for a host without one (except for a one-label name such as `MyRegistry`, which is a host
/// only with a port, so it becomes `myregistry:443`). Port 80 is kept: a client asked for `host` tries HTTPS on 443
/// first, so `host:80` is not the same endpoint. `index.docker.io` is `docker.io`. The error is the reason.
pub fn normalize_host(host: &str) -> Result<String, &'static str> {
    if !DOMAIN.is_match(host) {
        return Err("bad registry host");
    }
    let host = host.to_ascii_lowercase();
    // A ':' after the closing bracket of an IPv6 address, or any ':' in a name, starts the port.
    let name_end = host.rfind(']').map_or(0, |i| i + 1);
    let (name, port) = match host[name_end..].rfind(':') {
        Some(i) => (&host[..name_end + i], Some(&host[name_end + i + 1..])),
        None => (host.as_str(), None),
    };
    // A one-label name other than localhost reads as a registry host only with its port (`useqx/app` is Docker
    // Hub's `useqx/app`): such a host keeps the port, 443 included, so its normalised form stays a host.
    let one_label = !name.contains(['.', '[']) && name != "localhost";
    let port = match port {
        None if one_label => Some(DEFAULT_HTTPS_PORT),
        None => None,
        Some(digits) => match digits.parse::<u16>() {
            Ok(0) | Err(_) => return Err("bad registry port (expected 1-65535)"),
            Ok(DEFAULT_HTTPS_PORT) if !one_label => None,
            Ok(port) => Some(port),
        },
    };
    let name = if name == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_owned()
    } else {
        canonical_ipv6(name).unwrap_or_else(|| name.to_owned())
    };
    Ok(match port {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    })
}

/// `[…]` with the IPv6 address in its one compressed spelling (`[0:0:0:0:0:0:0:1]` and `[::0001]` are `[::1]`),
/// always in hex groups (the reference grammar refuses dots inside brackets). An IPv4-mapped address
/// (`[::ffff:7f00:1]`, `[0:0:0:0:0:FFFF:7F00:1]`) is the IPv4 address it maps, in dotted form (`127.0.0.1`): a client
/// connecting to it reaches that IPv4 address, so it is that host (review finding: `[::ffff:7f00:1]:5050` was not
/// berth's node-local `127.0.0.1:5050` to admission, though containerd pulled from it as loopback).
fn canonical_ipv6(name: &str) -> Option<String> {
    let inner = name.strip_prefix('[')?.strip_suffix(']')?;
    let ip: std::net::Ipv6Addr = inner.parse().ok()?;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4.to_string());
    }
    let text = ip.to_string();
    if !text.contains('.') {
        return Some(format!("[{text}]"));
    }
    let groups: Vec<String> = ip.segments().iter().map(|g| format!("{g:x}")).collect();
    Some(format!("[{}]", groups.join(":")))
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
        let error = |reason: &str| ReferenceError {
            reference: reference.to_owned(),
            reason: reason.to_owned(),
        };
        if reference.is_empty() {
            return Err(error("empty reference"));
        }
        if reference.trim() != reference {
            return Err(error("surrounding whitespace"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => match ReferenceDigest::parse(digest) {
                Ok(digest) => (rest, Some(digest)),
                Err(e) => return Err(error(&format!("bad digest: {e}"))),
            },
            None => (reference, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag =
                    Tag::parse(&rest[last_slash + i + 1..]).ok_or_else(|| error("bad tag"))?;
                (&rest[..last_slash + i], Some(tag))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(error("no repository name"));
        }
        // The first component is a registry host when it looks like one (has '.' or ':', is localhost, or has
        // upper case, which repositories cannot); otherwise the image is on Docker Hub.
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (normalize_host(first).map_err(error)?, remainder)
            }
            _ => (DEFAULT_DOMAIN.to_owned(), name),
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(error("repository names must be lowercase"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPOSITORY_PREFIX}{path}")
        } else {
            path.to_owned()
        };
        // The registry bounds the path alone; the reference grammar bounds the host and the path together.
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(error("name longer than 255 characters"));
        }
        let path = RepoName::parse(&path).map_err(|_| error("bad repository name"))?;
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

/// The normalised form: `domain/path[:tag][@digest]`, with `:latest` when neither tag nor digest is given.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        match (&self.tag, &self.digest) {
            (None, None) => write!(f, ":latest"),
            (tag, digest) => {
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expected` is the normalised form, or the reason up to its first `": "` (a digest's reason goes on with
    /// the registry's own wording, which is the registry's to test).
    fn check(input: &str, expected: Result<&str, &str>) {
        let got = ImageRef::parse(input).map(|r| r.to_string());
        let got = match &got {
            Ok(normalized) => Ok(normalized.as_str()),
            Err(e) => Err(e.reason.split(": ").next().unwrap_or_default()),
        };
        assert_eq!(got, expected, "{input:?}");
    }

    #[test]
    fn normalisation() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases: Vec<(String, Result<String, &str>)> = vec![
            ("nginx".into(), Ok("docker.io/library/nginx:latest".into())),
            (
                "nginx:1.25".into(),
                Ok("docker.io/library/nginx:1.25".into()),
            ),
            ("user/app:1".into(), Ok("docker.io/user/app:1".into())),
            (
                "docker.io/nginx".into(),
                Ok("docker.io/library/nginx:latest".into()),
            ),
            (
                "index.docker.io/library/nginx".into(),
                Ok("docker.io/library/nginx:latest".into()),
            ),
            (
                "registry:5000/a/b".into(),
                Ok("registry:5000/a/b:latest".into()),
            ),
            (
                format!("registry:5000/a/b@{d}"),
                Ok(format!("registry:5000/a/b@{d}")),
            ),
            (
                format!("nginx:1.25@{d}"),
                Ok(format!("docker.io/library/nginx:1.25@{d}")),
            ),
            (
                format!("nginx@{d}"),
                Ok(format!("docker.io/library/nginx@{d}")),
            ),
            ("localhost/x".into(), Ok("localhost/x:latest".into())),
            ("localhost:5000/x:v".into(), Ok("localhost:5000/x:v".into())),
            ("[::1]:5000/x:v".into(), Ok("[::1]:5000/x:v".into())),
            ("[fe80::1]/a/b".into(), Ok("[fe80::1]/a/b:latest".into())),
            (
                "127.0.0.1:5050/proxy/docker.io/library/nginx:1".into(),
                Ok("127.0.0.1:5050/proxy/docker.io/library/nginx:1".into()),
            ),
            (
                "Registry.Example/a".into(),
                Ok("registry.example/a:latest".into()),
            ),
            (
                "gcr.io/a/b/c/d:tag_1.0-x".into(),
                Ok("gcr.io/a/b/c/d:tag_1.0-x".into()),
            ),
            ("a__b/c--d".into(), Ok("docker.io/a__b/c--d:latest".into())),
            ("".into(), Err("empty reference")),
            ("Nginx".into(), Err("repository names must be lowercase")),
            (
                "docker.io/Library/nginx".into(),
                Err("repository names must be lowercase"),
            ),
            ("nginx@sha256:abc".into(), Err("bad digest")),
            (format!("nginx@{}", d.to_uppercase()), Err("bad digest")),
            ("nginx:".into(), Err("bad tag")),
            ("nginx:-x".into(), Err("bad tag")),
            (":tag".into(), Err("no repository name")),
            ("a//b".into(), Err("bad repository name")),
            ("a/b/".into(), Err("bad repository name")),
            ("-a".into(), Err("bad repository name")),
            (" nginx".into(), Err("surrounding whitespace")),
            ("bad_host.example:port/x".into(), Err("bad registry host")),
            (
                format!("{}/x", "a".repeat(260)),
                Err("name longer than 255 characters"),
            ),
        ];
        for (input, expected) in &cases {
            check(input, expected.as_deref().map_err(|e| *e));
        }
    }

    /// Issue 9, item 5: a rule denying `evil\.example\.com/.*` let `EVIL.EXAMPLE.COM/x:1`, `Evil.Example.Com/x:1` and
    /// `evil.example.com:443/x:1` through, because hosts were matched as written.
    #[test]
    fn host_names_are_normalised_not_matched_as_written() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("EVIL.EXAMPLE.COM/x:1", Ok("evil.example.com/x:1")),
            ("Evil.Example.Com/x:1", Ok("evil.example.com/x:1")),
            ("evil.example.com:443/x:1", Ok("evil.example.com/x:1")),
            ("EVIL.example.com:443/x:1", Ok("evil.example.com/x:1")),
            ("evil.example.com:0443/x:1", Ok("evil.example.com/x:1")),
            ("evil.example.com:00080/x:1", Ok("evil.example.com:80/x:1")),
            // Port 80 and every other port stay: they are other endpoints.
            ("evil.example.com:80/x:1", Ok("evil.example.com:80/x:1")),
            ("evil.example.com:8443/x:1", Ok("evil.example.com:8443/x:1")),
            ("LOCALHOST:443/x", Ok("localhost/x:latest")),
            ("localhost:5000/x", Ok("localhost:5000/x:latest")),
            ("[FE80::1]:443/x", Ok("[fe80::1]/x:latest")),
            // One spelling of an IPv6 address (review finding: `[0:0:0:0:0:0:0:1]` slipped past a rule on `[::1]`).
            ("[0:0:0:0:0:0:0:1]:5000/x", Ok("[::1]:5000/x:latest")),
            ("[::0001]:5000/x", Ok("[::1]:5000/x:latest")),
            // An IPv4-mapped address is the IPv4 address it maps (review finding: `[::ffff:7f00:1]:5050` was not
            // `127.0.0.1:5050`); an IPv4-compatible one (deprecated, not routed as IPv4) stays IPv6.
            ("[::ffff:102:304]/x", Ok("1.2.3.4/x:latest")),
            ("[::ffff:7f00:1]:5050/x", Ok("127.0.0.1:5050/x:latest")),
            ("[::FFFF:7F00:1]:5050/x", Ok("127.0.0.1:5050/x:latest")),
            (
                "[0:0:0:0:0:ffff:7f00:1]:5050/x",
                Ok("127.0.0.1:5050/x:latest"),
            ),
            ("[::ffff:7f00:1]:443/x", Ok("127.0.0.1/x:latest")),
            ("[::ffff:0:0]:5050/x", Ok("0.0.0.0:5050/x:latest")),
            ("[::102:304]/x", Ok("[::102:304]/x:latest")),
            // Dots inside brackets are not the reference grammar's (nor containerd's): refused, never a host.
            ("[::ffff:127.0.0.1]:5050/x", Err("bad registry host")),
            ("[::1]:5000/x", Ok("[::1]:5000/x:latest")),
            ("Docker.IO/nginx", Ok("docker.io/library/nginx:latest")),
            ("docker.io:443/nginx", Ok("docker.io/library/nginx:latest")),
            (
                "Index.Docker.IO:443/nginx",
                Ok("docker.io/library/nginx:latest"),
            ),
            ("127.0.0.1:443/x", Ok("127.0.0.1/x:latest")),
            // A one-label host keeps its port, or its normalised form would name a Docker Hub repository
            // (`useqx/app:1` is docker.io/useqx/app:1; found by tests/randomized.rs).
            ("useQx/app:1", Ok("useqx:443/app:1")),
            ("EvilHost:443/x:1", Ok("evilhost:443/x:1")),
            ("evilhost:443/x:1", Ok("evilhost:443/x:1")),
            ("evilhost:5000/x:1", Ok("evilhost:5000/x:1")),
            (
                "evil.example.com:0/x",
                Err("bad registry port (expected 1-65535)"),
            ),
            (
                "evil.example.com:65536/x",
                Err("bad registry port (expected 1-65535)"),
            ),
            (
                "evil.example.com:99999999999999999999999/x",
                Err("bad registry port (expected 1-65535)"),
            ),
            ("evil.example.com./x", Err("bad registry host")),
            ("evil.example.com:/x", Err("bad registry host")),
        ];
        for (input, expected) in cases {
            check(input, *expected);
        }
        assert_eq!(
            normalize_host("Berth.Berth-System.SVC:443"),
            Ok("berth.berth-system.svc".into())
        );
    }

    /// The digests a reference may carry: the registry's digest grammar (names.rs), which knows sha384 as a digest
    /// clients pull by; the registry verifies and stores sha256 and sha512 only.
    #[test]
    fn digests_are_the_registrys_grammar() {
        let sha256 = format!("sha256:{}", "a".repeat(64));
        let sha384 = format!("sha384:{}", "c".repeat(96));
        let sha512 = format!("sha512:{}", "b".repeat(128));
        let cases: Vec<(String, Result<String, &str>)> = vec![
            (
                format!("nginx@{sha256}"),
                Ok(format!("docker.io/library/nginx@{sha256}")),
            ),
            (
                format!("registry.example/a:1@{sha512}"),
                Ok(format!("registry.example/a:1@{sha512}")),
            ),
            (
                format!("nginx@{sha384}"),
                Ok(format!("docker.io/library/nginx@{sha384}")),
            ),
            (format!("nginx@md5:{}", "d".repeat(32)), Err("bad digest")),
            (
                format!("nginx@sha512:{}", "b".repeat(64)),
                Err("bad digest"),
            ),
            (
                format!("nginx@sha256:{}", "a".repeat(63)),
                Err("bad digest"),
            ),
            ("nginx@".into(), Err("bad digest")),
            ("nginx@sha256".into(), Err("bad digest")),
        ];
        for (input, expected) in &cases {
            check(input, expected.as_deref().map_err(|e| *e));
        }
        for (input, _) in cases.iter().filter(|(_, expected)| expected.is_ok()) {
            let digest = ImageRef::parse(input)
                .expect("valid")
                .digest
                .expect("a digest");
            let registry = crate::registry::names::Digest::parse(&digest.to_string());
            assert_eq!(
                digest.stored().ok(),
                registry.ok(),
                "{input}: admission's stored digest is the registry's"
            );
        }
    }

    /// Issue 10 and its review: the old grammar here took `sha384` and the registry did not, so `when: available`
    /// said "not available" with no reason; refusing such references instead would deny pods that pull fine. A
    /// `sha384` reference parses; berth says it cannot hold it, naming the algorithm.
    #[test]
    fn a_sha384_reference_parses_and_berth_says_it_cannot_hold_it() {
        let reference = format!("registry.example/app@sha384:{}", "e".repeat(96));
        let image = ImageRef::parse(&reference).expect("sha384 is a digest clients pull by");
        let digest = image.digest.expect("a digest");
        assert_eq!(digest.to_string(), format!("sha384:{}", "e".repeat(96)));
        let why = digest.stored().expect_err("berth stores sha256 and sha512");
        assert!(why.to_string().contains("sha256 and sha512"), "{why}");
    }

    #[test]
    fn parts() {
        let image = ImageRef::parse("registry:5000/team/app:v1").expect("valid");
        assert_eq!(image.domain, "registry:5000");
        assert_eq!(image.path.as_str(), "team/app");
        assert_eq!(image.tag.as_ref().map(Tag::as_str), Some("v1"));
        assert_eq!(image.repository(), "registry:5000/team/app");
        let error = ImageRef::parse("team/App").expect_err("invalid");
        assert!(error.to_string().contains("\"team/App\""), "{error}");
    }
}
