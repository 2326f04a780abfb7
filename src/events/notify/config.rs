//! The `notifications:` section of the config file: the endpoints events are POSTed to, validated once at start
//! (URLs, names, actions, headers, CA files, timeouts). `config.rs` embeds the validated [`NotificationsConfig`].
//!
//! Must not: import `config.rs` (the dependency goes one way), or print a header's value anywhere (in an error,
//! a log line or `Debug`): headers carry the receivers' secrets.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::events::EventAction;
use crate::units::{parse_duration, UnitError};

/// The default time one delivery (a POST and its answer) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `timeout` allowed.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The default first wait after a failed delivery; it doubles on every failure in a row.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The default longest wait between attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The largest `maxBatch` allowed (a batch is one request body of events).
pub const MAX_BATCH: usize = 1000;
/// Headers berth sets itself, which an endpoint's `headers` may not replace.
const RESERVED_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

/// Why the `notifications:` section was refused. Each message names the endpoint and the key; a header's value is
/// never repeated (it may be a secret).
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    /// A `url` that does not parse, or is not http:// or https://, or has no host.
    #[error("notifications.endpoints[{index}].url {url:?}: {why}")]
    Url {
        index: usize,
        url: String,
        why: String,
    },
    /// A `url` with a user name or password in it (they belong in `headers`, which are never shown).
    #[error("notifications.endpoints[{index}].url {url:?}: no credentials in the URL; give them in headers")]
    UrlCredentials { index: usize, url: String },
    /// A `name` that is empty, too long, or holds whitespace, control characters or `/`.
    #[error("notifications.endpoints[{index}].name {name:?}: a name is 1 to 64 characters, without whitespace, control characters or /")]
    Name { index: usize, name: String },
    /// Two endpoints with one name (given, or their URLs' hosts).
    #[error("notifications.endpoints {name:?}: the name is used twice (give each endpoint a distinct name)")]
    DuplicateName { name: String },
    /// An action that berth does not record.
    #[error(
        "notifications.endpoints {name:?}: actions {action:?} is not an action (one of {known})"
    )]
    Action {
        name: String,
        action: String,
        known: String,
    },
    /// A header name that is not a valid HTTP header name, or one berth sets itself.
    #[error("notifications.endpoints {name:?}: headers {header:?}: {why}")]
    HeaderName {
        name: String,
        header: String,
        why: &'static str,
    },
    /// A header value that is not a valid HTTP header value (the value is not shown).
    #[error("notifications.endpoints {name:?}: headers {header:?}: the value is not a valid header value (visible ASCII and spaces only)")]
    HeaderValue { name: String, header: String },
    /// A `caFile` that cannot be read, or holds no PEM certificate.
    #[error("notifications.endpoints {name:?}: caFile {}: {why}", path.display())]
    CaFile {
        name: String,
        path: PathBuf,
        why: String,
    },
    /// A duration (`timeout`, `backoff.initial`, `backoff.max`) that does not parse.
    #[error("notifications.endpoints {name:?}: {key}: {source}")]
    Duration {
        name: String,
        key: &'static str,
        #[source]
        source: UnitError,
    },
    /// A value outside what the key allows.
    #[error("notifications.endpoints {name:?}: {key} {value} is out of range: it must be {bound}")]
    OutOfRange {
        name: String,
        key: &'static str,
        value: String,
        bound: String,
    },
}

/// As written in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationsSpec {
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

/// One endpoint as written.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    /// Names the endpoint in `/readyz`, the metrics and its saved cursor (default: the URL's host).
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
    /// Sent with every request (`Authorization: Bearer …`); values are never shown.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// A PEM file of CA certificates trusted for this endpoint, besides the usual roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Only these actions (none: every action).
    #[serde(default)]
    pub actions: Vec<String>,
    /// How long one delivery may take, e.g. `5s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// More than 1: up to this many events in one request, in the CloudEvents batch format.
    #[serde(default)]
    pub max_batch: Option<usize>,
    #[serde(default)]
    pub backoff: Option<BackoffSpec>,
    /// Where a new endpoint (one with no saved cursor) starts: `latest` (events from now on, the default) or
    /// `oldest` (every event the log keeps first).
    #[serde(default)]
    pub start: Option<Start>,
}

/// Where a new endpoint starts in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Only events committed after the endpoint first starts.
    #[default]
    Latest,
    /// Every event the log still keeps, then the new ones.
    Oldest,
}

/// Headers are secrets: `Debug` shows their names only.
impl std::fmt::Debug for EndpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSpec")
            .field("name", &self.name)
            .field("url", &shown_text(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("ca_file", &self.ca_file)
            .field("actions", &self.actions)
            .field("timeout", &self.timeout)
            .field("max_batch", &self.max_batch)
            .field("backoff", &self.backoff)
            .field("start", &self.start)
            .finish()
    }
}

/// The waits between failed attempts, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    /// The first wait, e.g. `1s`; it doubles after each failure in a row.
    #[serde(default)]
    pub initial: Option<String>,
    /// The longest wait, e.g. `5m`.
    #[serde(default)]
    pub max: Option<String>,
}

/// The validated `notifications:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotificationsConfig {
    pub endpoints: Vec<EndpointConfig>,
}

/// One validated endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    pub name: String,
    pub url: reqwest::Url,
    /// Names and values, valid for HTTP; never shown.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The `caFile` and its PEM content (checked to hold at least one certificate).
    pub ca: Option<(PathBuf, Vec<u8>)>,
    /// Only these actions; empty for every action.
    pub actions: Vec<EventAction>,
    pub timeout: Duration,
    /// Events in one request: 1 sends each event on its own (structured mode), more uses the batch format.
    pub max_batch: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Where it starts when it has no saved cursor.
    pub start: Start,
}

impl EndpointConfig {
    /// Whether events of `action` go to this endpoint.
    pub fn wants(&self, action: EventAction) -> bool {
        self.actions.is_empty() || self.actions.contains(&action)
    }

    /// The URL as shown in `/readyz`, the log and errors: [`shown`].
    pub fn shown_url(&self) -> String {
        shown(&self.url)
    }
}

/// A notification URL as berth shows it: `scheme://host[:port]` only. The path may be the secret (a Slack or
/// Teams webhook is `https://hooks.slack.com/services/T…/B…/<secret>`), the query may hold a token, the user
/// information a password.
pub fn shown(url: &reqwest::Url) -> String {
    let mut text = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        text.push_str(&format!(":{port}"));
    }
    text
}

/// [`shown`] for text that may not parse as a URL: what comes before the first `/`, `?` or `#` after the
/// scheme, without user information (`hooks.slack.com/services/…` shows as `hooks.slack.com/…`).
fn shown_text(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut authority = &rest[..end];
    if let Some((_, host)) = authority.rsplit_once('@') {
        authority = host;
    }
    let mut shown = match scheme {
        Some(scheme) => format!("{scheme}://{authority}"),
        None => authority.to_owned(),
    };
    if end < rest.len() {
        shown.push_str("/…");
    }
    shown
}

/// Headers are secrets: `Debug` shows their names only.
impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &self.shown_url())
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("ca_file", &self.ca.as_ref().map(|(path, _)| path))
            .field("actions", &self.actions)
            .field("timeout", &self.timeout)
            .field("max_batch", &self.max_batch)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("start", &self.start)
            .finish()
    }
}

/// A name an endpoint may have: it is shown in `/readyz`, used as a metrics label and as its cursor's key.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
}

impl NotificationsSpec {
    /// Validates every endpoint; reads each `caFile`.
    pub fn validate(&self) -> Result<NotificationsConfig, NotifyConfigError> {
        let mut endpoints: Vec<EndpointConfig> = Vec::new();
        for (index, spec) in self.endpoints.iter().enumerate() {
            let endpoint = spec.validate(index)?;
            if endpoints.iter().any(|e| e.name == endpoint.name) {
                return Err(NotifyConfigError::DuplicateName {
                    name: endpoint.name,
                });
            }
            endpoints.push(endpoint);
        }
        Ok(NotificationsConfig { endpoints })
    }
}

impl EndpointSpec {
    fn validate(&self, index: usize) -> Result<EndpointConfig, NotifyConfigError> {
        let url_error = |why: &str| NotifyConfigError::Url {
            index,
            url: shown_text(&self.url),
            why: why.to_owned(),
        };
        let url = reqwest::Url::parse(&self.url).map_err(|e| url_error(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(url_error("the scheme must be http or https"));
        }
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.to_owned(),
            _ => return Err(url_error("no host")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            // Neither the user nor the password: the message is printed.
            let shown = shown(&url).replacen("://", "://***@", 1);
            return Err(NotifyConfigError::UrlCredentials { index, url: shown });
        }
        let name = self.name.clone().unwrap_or(host);
        if !valid_name(&name) {
            return Err(NotifyConfigError::Name { index, name });
        }
        let mut actions = Vec::new();
        for action in &self.actions {
            let parsed = EventAction::parse(action).ok_or_else(|| NotifyConfigError::Action {
                name: name.clone(),
                action: action.clone(),
                known: EventAction::ALL
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if !actions.contains(&parsed) {
                actions.push(parsed);
            }
        }
        let mut headers = Vec::new();
        for (header, value) in &self.headers {
            let header_error = |why| NotifyConfigError::HeaderName {
                name: name.clone(),
                header: header.clone(),
                why,
            };
            let header_name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| header_error("not a valid header name"))?;
            if RESERVED_HEADERS.contains(&header_name.as_str()) {
                return Err(header_error("berth sets this header itself"));
            }
            let mut header_value =
                HeaderValue::from_str(value).map_err(|_| NotifyConfigError::HeaderValue {
                    name: name.clone(),
                    header: header.clone(),
                })?;
            header_value.set_sensitive(true);
            headers.push((header_name, header_value));
        }
        let ca = match &self.ca_file {
            Some(path) => {
                let ca_error = |why: String| NotifyConfigError::CaFile {
                    name: name.clone(),
                    path: path.clone(),
                    why,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ca_error(e.to_string()))?;
                if certificates.is_empty() {
                    return Err(ca_error("no PEM certificate in it".into()));
                }
                Some((path.clone(), pem))
            }
            None => None,
        };
        let duration = |key: &'static str, value: &Option<String>, default: Duration| {
            let chosen = match value {
                Some(text) => {
                    parse_duration(text).map_err(|source| NotifyConfigError::Duration {
                        name: name.clone(),
                        key,
                        source,
                    })?
                }
                None => default,
            };
            if chosen.is_zero() || chosen > MAX_TIMEOUT.max(DEFAULT_BACKOFF_MAX) {
                return Err(NotifyConfigError::OutOfRange {
                    name: name.clone(),
                    key,
                    value: value.clone().unwrap_or_default(),
                    bound: "more than 0 and at most 5m".into(),
                });
            }
            Ok(chosen)
        };
        let timeout = duration("timeout", &self.timeout, DEFAULT_TIMEOUT)?;
        let backoff = self.backoff.clone().unwrap_or_default();
        let backoff_initial =
            duration("backoff.initial", &backoff.initial, DEFAULT_BACKOFF_INITIAL)?;
        let backoff_max = duration("backoff.max", &backoff.max, DEFAULT_BACKOFF_MAX)?;
        if backoff_max < backoff_initial {
            return Err(NotifyConfigError::OutOfRange {
                name,
                key: "backoff.max",
                value: backoff.max.unwrap_or_default(),
                bound: "at least backoff.initial".into(),
            });
        }
        let max_batch = self.max_batch.unwrap_or(1);
        if !(1..=MAX_BATCH).contains(&max_batch) {
            return Err(NotifyConfigError::OutOfRange {
                name,
                key: "maxBatch",
                value: max_batch.to_string(),
                bound: format!("from 1 to {MAX_BATCH}"),
            });
        }
        Ok(EndpointConfig {
            name,
            url,
            headers,
            ca,
            actions,
            timeout,
            max_batch,
            backoff_initial,
            backoff_max,
            start: self.start.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section from YAML, validated; an error as its message.
    fn validate(yaml: &str) -> Result<NotificationsConfig, String> {
        serde_yaml_ng::from_str::<NotificationsSpec>(yaml)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_endpoint_gets_the_defaults_and_its_host_as_name() {
        let config = validate("endpoints: [{url: 'https://hooks.example.com/berth?token=s3cret'}]")
            .expect("valid");
        let endpoint = &config.endpoints[0];
        assert_eq!(endpoint.name, "hooks.example.com");
        assert_eq!(endpoint.timeout, DEFAULT_TIMEOUT);
        assert_eq!(endpoint.max_batch, 1);
        assert_eq!(endpoint.backoff_initial, DEFAULT_BACKOFF_INITIAL);
        assert_eq!(endpoint.backoff_max, DEFAULT_BACKOFF_MAX);
        assert_eq!(endpoint.start, Start::Latest);
        assert!(endpoint.wants(EventAction::Pull) && endpoint.wants(EventAction::Denied));
        assert_eq!(endpoint.shown_url(), "https://hooks.example.com");
    }

    #[test]
    fn a_url_is_shown_as_its_scheme_host_and_port_only() {
        let check = |url: &str, expected: &str| {
            let parsed = reqwest::Url::parse(url).expect(url);
            assert_eq!(shown(&parsed), expected, "{url}");
            assert_eq!(shown_text(url), expected, "{url} as text");
        };
        check("https://hooks.slack.com", "https://hooks.slack.com");
        check("http://127.0.0.1:9000", "http://127.0.0.1:9000");
        check("http://[::1]:9000", "http://[::1]:9000");
        let check_parsed = |url: &str, expected: &str| {
            let parsed = reqwest::Url::parse(url).expect(url);
            assert_eq!(shown(&parsed), expected, "{url}");
        };
        check_parsed(
            "https://hooks.slack.com/services/T000/B000/s3cret",
            "https://hooks.slack.com",
        );
        check_parsed(
            "https://h.example:8443/x?token=s3cret#f",
            "https://h.example:8443",
        );
        check_parsed("https://h.example:443/x", "https://h.example");
        let check_text =
            |text: &str, expected: &str| assert_eq!(shown_text(text), expected, "{text}");
        check_text("hooks.slack.com/services/T/B/s3cret", "hooks.slack.com/…");
        check_text("http://u:s3cret@h:1/x", "http://h:1/…");
        check_text("not a url", "not a url");
        check_text("ht!tp://h/s3cret?x", "ht!tp://h/…");
        let spec: NotificationsSpec = serde_yaml_ng::from_str(
            "endpoints: [{url: 'https://hooks.slack.com/services/T/B/s3cret'}]",
        )
        .expect("spec");
        let config = spec.validate().expect("valid");
        for shown in [format!("{spec:?}"), format!("{config:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn a_full_endpoint_keeps_what_it_says_and_never_shows_a_header_value() {
        let config = validate(
            "endpoints:
               - name: audit
                 url: http://127.0.0.1:9000/events
                 headers: {Authorization: Bearer s3cret, X-Team: platform}
                 actions: [push, denied, push]
                 timeout: 2s
                 maxBatch: 50
                 backoff: {initial: 100ms, max: 10s}
                 start: oldest",
        )
        .expect("valid");
        let endpoint = &config.endpoints[0];
        assert_eq!(endpoint.name, "audit");
        assert_eq!(endpoint.actions, [EventAction::Push, EventAction::Denied]);
        assert!(!endpoint.wants(EventAction::Pull));
        assert_eq!(endpoint.timeout, Duration::from_secs(2));
        assert_eq!(endpoint.max_batch, 50);
        assert_eq!(endpoint.backoff_initial, Duration::from_millis(100));
        assert_eq!(endpoint.start, Start::Oldest);
        assert_eq!(endpoint.headers.len(), 2);
        let shown = format!("{config:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn invalid_endpoints_are_refused_naming_the_key_and_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "not a certificate\n").expect("write");
        let check = |endpoint: &str, expected: &str| {
            let error = validate(&format!("endpoints: [{endpoint}]")).expect_err(endpoint);
            assert!(
                error.contains(expected),
                "{endpoint}: {error:?} should say {expected:?}"
            );
            assert!(
                !error.contains("s3cret"),
                "{endpoint}: {error:?} shows a secret"
            );
        };
        check(
            "{url: 'ftp://h/x'}",
            r#"url "ftp://h/…": the scheme must be http or https"#,
        );
        check("{url: 'not a url'}", r#"endpoints[0].url "not a url""#);
        check(
            "{url: 'http://u:s3cret@h/x'}",
            r#"url "http://***@h": no credentials in the URL"#,
        );
        check(
            "{url: 'http://h/', name: 'a b'}",
            r#"endpoints[0].name "a b""#,
        );
        check("{url: 'http://h/', name: ''}", r#"name """#);
        check(
            "{url: 'http://h/', actions: [push, pushed]}",
            r#"actions "pushed" is not an action (one of push, pull"#,
        );
        check(
            "{url: 'http://h/', headers: {'Bad Name': x}}",
            r#"headers "Bad Name": not a valid header name"#,
        );
        check(
            "{url: 'http://h/', headers: {Content-Type: text/plain}}",
            r#"headers "Content-Type": berth sets this header itself"#,
        );
        check(
            "{url: 'http://h/', headers: {Authorization: \"s3cret\\n\"}}",
            r#"headers "Authorization": the value is not a valid header value"#,
        );
        check(
            "{url: 'http://h/', caFile: /nonexistent/ca.pem}",
            "caFile /nonexistent/ca.pem: ",
        );
        check(
            &format!("{{url: 'http://h/', caFile: {}}}", not_pem.display()),
            "no PEM certificate in it",
        );
        check(
            "{url: 'http://h/', timeout: 5 parsecs}",
            r#"endpoints "h": timeout: "#,
        );
        check(
            "{url: 'http://h/', timeout: 0s}",
            "timeout 0s is out of range: it must be more than 0",
        );
        check(
            "{url: 'http://h/', timeout: 1h}",
            "timeout 1h is out of range",
        );
        check(
            "{url: 'http://h/', maxBatch: 0}",
            "maxBatch 0 is out of range: it must be from 1 to 1000",
        );
        check(
            "{url: 'http://h/', backoff: {initial: 10s, max: 1s}}",
            "backoff.max 1s is out of range: it must be at least backoff.initial",
        );
        check("{url: 'http://h/', secret: x}", "unknown field `secret`");
        check(
            "{url: 'http://h/', start: now}",
            "unknown variant `now`, expected `latest` or `oldest`",
        );
        check(
            "{url: 'http://h/a'}, {url: 'https://h/b'}",
            r#"endpoints "h": the name is used twice"#,
        );
    }
}
