//! The `proxy:` section of the config file: upstream registries berth serves through its cache.
//!
//! The proxy defines its own settings here and validates them; `config.rs` embeds them in the validated `Config`.
//! This module must not import `config.rs` (the dependency goes one way: config → proxy settings).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{parse_duration, parse_size};

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
    pub fn validate(&self) -> Result<ProxyConfig, String> {
        let mut upstreams = Vec::new();
        for spec in &self.upstreams {
            let context = format!("proxy.upstreams {:?}", spec.name);
            if !valid_name(&spec.name) {
                return Err(format!(
                    "{context}: the name must be one lowercase path component, like docker.io"
                ));
            }
            if upstreams
                .iter()
                .any(|u: &UpstreamConfig| u.name == spec.name)
            {
                return Err(format!("{context}: the name is used twice"));
            }
            let url = spec.url.trim_end_matches('/').to_owned();
            match (
                url.split_once("://").map(|(scheme, _)| scheme),
                spec.insecure,
            ) {
                (Some("https"), _) | (Some("http"), true) => {}
                (Some("http"), false) => {
                    return Err(format!(
                        "{context}: url {url:?} is plain HTTP; set insecure: true to allow it"
                    ))
                }
                _ => return Err(format!("{context}: url {url:?} must start with https://")),
            }
            let password = match (&spec.password, &spec.password_file) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{context}: give password or passwordFile, not both"
                    ))
                }
                (Some(password), None) => Some(password.clone()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("{context}: passwordFile {}: {e}", path.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                ),
                (None, None) => None,
            };
            let credentials = match (&spec.username, password) {
                (Some(user), Some(password)) => Some((user.clone(), password)),
                (None, None) => None,
                _ => return Err(format!("{context}: username and password go together")),
            };
            let tag_ttl = match &spec.tag_ttl {
                Some(ttl) => parse_duration(ttl).map_err(|e| format!("{context}: tagTtl: {e}"))?,
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
            .map_err(|e| format!("proxy.maxSize: {e}"))?;
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
}
