//! The `proxy:` section of the config file: upstream registries berth serves through its cache.
//!
//! The proxy defines its own settings here and validates them; `config.rs` embeds them in the validated `Config`.
//! This module must not import `config.rs` (the dependency goes one way: config → proxy settings).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{parse_duration, parse_size, UnitError};

/// Why the `proxy:` section was refused. Each message names the upstream (or `proxy.maxSize`) and the value.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    /// An upstream name that is not a single repository-name component.
    #[error(
        "proxy.upstreams {name:?}: the name must be one lowercase path component, like docker.io"
    )]
    Name { name: String },
    /// Two upstreams with one name.
    #[error("proxy.upstreams {name:?}: the name is used twice")]
    DuplicateName { name: String },
    /// A plain `http://` URL without `insecure: true`.
    #[error("proxy.upstreams {name:?}: url {url:?} is plain HTTP; set insecure: true to allow it")]
    PlainHttp { name: String, url: String },
    /// A URL that is neither https:// nor (allowed) http://.
    #[error("proxy.upstreams {name:?}: url {url:?} must start with https://")]
    Scheme { name: String, url: String },
    /// Both `password` and `passwordFile`.
    #[error("proxy.upstreams {name:?}: give password or passwordFile, not both")]
    TwoPasswords { name: String },
    /// The `passwordFile` cannot be read.
    #[error("proxy.upstreams {name:?}: passwordFile {}: {source}", path.display())]
    PasswordFile {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A username without a password, or the reverse.
    #[error("proxy.upstreams {name:?}: username and password go together")]
    HalfCredentials { name: String },
    /// A `tagTtl` that is not a duration.
    #[error("proxy.upstreams {name:?}: tagTtl: {source}")]
    TagTtl {
        name: String,
        #[source]
        source: UnitError,
    },
    /// A `maxSize` that is not a size.
    #[error("proxy.maxSize: {source}")]
    MaxSize {
        #[source]
        source: UnitError,
    },
}

/// As written in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySpec {
    #[serde(default)]
    pub upstreams: Vec<UpstreamSpec>,
    /// Upper bound on cached proxied blobs, e.g. `20GiB`; least recently used content is evicted past it.
    #[serde(default)]
    pub max_size: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Used in paths (`/v2/proxy/<name>/…`) and in containerd's `?ns=<name>`.
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allows a plain `http://` URL.
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub tag_ttl: Option<String>,
}

/// A validated upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    /// Base URL without a trailing slash.
    pub url: String,
    pub credentials: Option<(String, String)>,
    pub ca_file: Option<PathBuf>,
    pub tag_ttl: Duration,
}

/// The validated proxy configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    pub upstreams: Vec<UpstreamConfig>,
    pub max_size: Option<u64>,
}

/// The default time a tag is trusted before it is revalidated.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);

/// Upstream names are single path components of a repository name (`docker.io`, `ghcr.io`, `internal`).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && crate::registry::names::RepoName::parse(name).is_ok()
}

impl ProxySpec {
    pub fn validate(&self) -> Result<ProxyConfig, ProxyConfigError> {
        let mut upstreams = Vec::new();
        for spec in &self.upstreams {
            let name = || spec.name.clone();
            if !valid_name(&spec.name) {
                return Err(ProxyConfigError::Name { name: name() });
            }
            if upstreams
                .iter()
                .any(|u: &UpstreamConfig| u.name == spec.name)
            {
                return Err(ProxyConfigError::DuplicateName { name: name() });
            }
            let url = spec.url.trim_end_matches('/').to_owned();
            match (
                url.split_once("://").map(|(scheme, _)| scheme),
                spec.insecure,
            ) {
                (Some("https"), _) | (Some("http"), true) => {}
                (Some("http"), false) => {
                    return Err(ProxyConfigError::PlainHttp { name: name(), url })
                }
                _ => return Err(ProxyConfigError::Scheme { name: name(), url }),
            }
            let password = match (&spec.password, &spec.password_file) {
                (Some(_), Some(_)) => return Err(ProxyConfigError::TwoPasswords { name: name() }),
                (Some(password), None) => Some(password.clone()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|source| ProxyConfigError::PasswordFile {
                            name: name(),
                            path: path.clone(),
                            source,
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                ),
                (None, None) => None,
            };
            let credentials = match (&spec.username, password) {
                (Some(user), Some(password)) => Some((user.clone(), password)),
                (None, None) => None,
                _ => return Err(ProxyConfigError::HalfCredentials { name: name() }),
            };
            let tag_ttl = match &spec.tag_ttl {
                Some(ttl) => parse_duration(ttl).map_err(|source| ProxyConfigError::TagTtl {
                    name: name(),
                    source,
                })?,
                None => DEFAULT_TAG_TTL,
            };
            upstreams.push(UpstreamConfig {
                name: spec.name.clone(),
                url,
                credentials,
                ca_file: spec.ca_file.clone(),
                tag_ttl,
            });
        }
        let max_size = self
            .max_size
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|source| ProxyConfigError::MaxSize { source })?;
        Ok(ProxyConfig {
            upstreams,
            max_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<ProxyConfig, String> {
        serde_yaml_ng::from_str::<ProxySpec>(yaml)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn upstreams() {
        let config = spec(
            "upstreams:\n  - {name: docker.io, url: 'https://registry-1.docker.io/', tagTtl: 1m}\n  - {name: local, url: 'http://127.0.0.1:5000', insecure: true, username: u, password: p}\nmaxSize: 1GiB\n",
        )
        .expect("valid");
        assert_eq!(config.max_size, Some(1 << 30));
        assert_eq!(config.upstreams[0].url, "https://registry-1.docker.io");
        assert_eq!(config.upstreams[0].tag_ttl, Duration::from_secs(60));
        assert_eq!(
            config.upstreams[1].credentials,
            Some(("u".into(), "p".into()))
        );
        assert_eq!(config.upstreams[1].tag_ttl, DEFAULT_TAG_TTL);

        let errors: &[(&str, &str)] = &[
            ("upstreams: [{name: x, url: 'http://h'}]", "insecure: true"),
            ("upstreams: [{name: x, url: 'ftp://h'}]", "https://"),
            (
                "upstreams: [{name: 'a/b', url: 'https://h'}]",
                "one lowercase path component",
            ),
            (
                "upstreams: [{name: x, url: 'https://h'}, {name: x, url: 'https://i'}]",
                "twice",
            ),
            (
                "upstreams: [{name: x, url: 'https://h', username: u}]",
                "go together",
            ),
            (
                "upstreams: [{name: x, url: 'https://h', tagTtl: soon}]",
                "tagTtl",
            ),
            (
                "upstreams: [{name: x, url: 'https://h', bogus: 1}]",
                "bogus",
            ),
            ("maxSize: lots", "maxSize"),
        ];
        for (yaml, needle) in errors {
            let error = spec(yaml).expect_err(yaml);
            assert!(error.contains(needle), "{yaml}: {error}");
        }
    }

    #[test]
    fn errors_name_the_upstream_and_the_value() {
        let cases: &[(&str, &str)] = &[
            (
                "upstreams: [{name: x, url: 'http://h'}]",
                r#"proxy.upstreams "x": url "http://h" is plain HTTP; set insecure: true to allow it"#,
            ),
            (
                "upstreams: [{name: x, url: 'https://h', tagTtl: 10q}]",
                r#"proxy.upstreams "x": tagTtl: invalid duration "10q": unknown unit "q" (ms, s, m, h, d)"#,
            ),
            (
                "upstreams: [{name: x, url: 'https://h', username: u, passwordFile: /nonexistent/berth-pw}]",
                r#"proxy.upstreams "x": passwordFile /nonexistent/berth-pw: No such file or directory (os error 2)"#,
            ),
            (
                "maxSize: 5XB",
                r#"proxy.maxSize: invalid size "5XB": unknown unit "XB""#,
            ),
        ];
        for (yaml, message) in cases {
            assert_eq!(spec(yaml).expect_err(yaml), *message, "{yaml}");
        }
    }
}
