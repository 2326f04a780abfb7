//! Precedence for one setting: the flag, else the file, else the default, remembering how the chosen value was
//! written so that an error names the key and the value as the user gave them (`--body-timeout 0s`,
//! `bodyTimeout: 10q`). Knows nothing of what the settings mean.

use std::time::Duration;

use super::error::ConfigError;
use crate::units::{parse_duration, parse_size};

/// A setting's two spellings: the flag of `berth serve` and the key of the config file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    flag: &'static str,
    file: &'static str,
}

pub(super) const UPLOAD_MAX_AGE: Key = Key::new("upload-max-age", "uploadMaxAge");
pub(super) const SHUTDOWN_TIMEOUT: Key = Key::new("shutdown-timeout", "shutdownTimeout");
pub(super) const WORKERS: Key = Key::new("workers", "workers");
pub(super) const BODY_IDLE_TIMEOUT: Key = Key::new("body-idle-timeout", "bodyIdleTimeout");
pub(super) const BODY_TIMEOUT: Key = Key::new("body-timeout", "bodyTimeout");
pub(super) const BODY_MEMORY: Key = Key::new("body-memory", "bodyMemory");
pub(super) const MAX_UPLOAD_SESSIONS: Key = Key::new("max-upload-sessions", "maxUploadSessions");
pub(super) const MAX_CONCURRENT_UPLOADS: Key =
    Key::new("max-concurrent-uploads", "maxConcurrentUploads");
pub(super) const SEND_TIMEOUT: Key = Key::new("send-timeout", "sendTimeout");
pub(super) const POLICY_CONFIGMAP: Key = Key::new("policy-configmap", "policyConfigmap");
pub(super) const TLS_SECRET: Key = Key::new("tls-secret", "tlsSecret");
pub(super) const TOKEN_CACHE_TTL: Key = Key::new("token-cache-ttl", "tokenCacheTtl");
pub(super) const TOKEN_EXPIRY: Key = Key::new("token-expiry", "tokenExpiry");
pub(super) const NODE_PROXY_ACCOUNT: Key = Key::new("node-proxy-account", "nodeProxyAccount");
pub(super) const TOKEN_AUDIENCE: Key = Key::new("token-audience", "tokenAudiences");
pub(super) const EVENTS_RETENTION: Key = Key::new("events-retention", "eventsRetention");
pub(super) const EVENTS_MAX_SIZE: Key = Key::new("events-max-size", "eventsMaxSize");
pub(super) const INSTANCE: Key = Key::new("instance", "instance");

/// A value chosen by precedence (flag, else file, else default), remembering how the user spelled its key and
/// the value, so that a range error names both as they were written.
pub(super) struct Chosen<T> {
    pub(super) value: T,
    /// `--body-timeout` for a flag, `bodyTimeout` for the file (or the default).
    pub(super) key: String,
    /// The value as written in the file, or rendered from the flag's or default's parsed value.
    pub(super) shown: String,
}

impl Key {
    const fn new(flag: &'static str, file: &'static str) -> Key {
        Key { flag, file }
    }

    /// `--flag`, as an error names a value from the flags.
    pub(super) fn flag_name(self) -> String {
        format!("--{}", self.flag)
    }

    /// `fileKey`, as an error names a value from the file (or the default).
    pub(super) fn file_name(self) -> String {
        self.file.to_owned()
    }
}

impl<T> Chosen<T> {
    fn from_flag(key: Key, value: T, shown: String) -> Self {
        Chosen {
            value,
            key: format!("--{}", key.flag),
            shown,
        }
    }

    fn from_file(key: Key, value: T, shown: String) -> Self {
        Chosen {
            value,
            key: key.file.to_owned(),
            shown,
        }
    }

    pub(super) fn out_of_range(&self, bound: String) -> ConfigError {
        ConfigError::OutOfRange {
            key: self.key.clone(),
            value: self.shown.clone(),
            bound,
        }
    }
}

impl Key {
    /// The flag's duration, else the file's (parsed here), else `default`.
    pub(super) fn duration(
        self,
        flag: Option<Duration>,
        file: Option<&str>,
        default: Duration,
    ) -> Result<Chosen<Duration>, ConfigError> {
        Ok(match (flag, file) {
            (Some(value), _) => Chosen::from_flag(self, value, show_duration(value)),
            (None, Some(text)) => {
                let value = parse_duration(text).map_err(|source| ConfigError::Unit {
                    key: self.file,
                    source,
                })?;
                Chosen::from_file(self, value, text.trim().to_owned())
            }
            (None, None) => Chosen::from_file(self, default, show_duration(default)),
        })
    }

    /// The flag's size, else the file's (parsed here), else `default`.
    pub(super) fn size(
        self,
        flag: Option<u64>,
        file: Option<&str>,
        default: u64,
    ) -> Result<Chosen<u64>, ConfigError> {
        Ok(match (flag, file) {
            (Some(value), _) => Chosen::from_flag(self, value, value.to_string()),
            (None, Some(text)) => {
                let value = parse_size(text).map_err(|source| ConfigError::Unit {
                    key: self.file,
                    source,
                })?;
                Chosen::from_file(self, value, text.trim().to_owned())
            }
            (None, None) => Chosen::from_file(self, default, default.to_string()),
        })
    }

    /// The flag's count, else the file's, else `default`.
    pub(super) fn count(
        self,
        flag: Option<usize>,
        file: Option<usize>,
        default: usize,
    ) -> Chosen<usize> {
        match (flag, file) {
            (Some(value), _) => Chosen::from_flag(self, value, value.to_string()),
            (None, Some(value)) => Chosen::from_file(self, value, value.to_string()),
            (None, None) => Chosen::from_file(self, default, default.to_string()),
        }
    }

    /// The flag's text, else the file's.
    pub(super) fn text(self, flag: Option<&str>, file: Option<&str>) -> Option<Chosen<String>> {
        match (flag, file) {
            (Some(value), _) => Some(Chosen::from_flag(self, value.to_owned(), value.to_owned())),
            (None, Some(value)) => {
                Some(Chosen::from_file(self, value.to_owned(), value.to_owned()))
            }
            (None, None) => None,
        }
    }
}

/// A duration as a user would write it: the largest unit that divides it (`366d`, `90s`, `250ms`).
fn show_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 != 0 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    match seconds {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [Key; 15] = [
        UPLOAD_MAX_AGE,
        SHUTDOWN_TIMEOUT,
        WORKERS,
        BODY_IDLE_TIMEOUT,
        BODY_TIMEOUT,
        BODY_MEMORY,
        MAX_UPLOAD_SESSIONS,
        MAX_CONCURRENT_UPLOADS,
        SEND_TIMEOUT,
        POLICY_CONFIGMAP,
        TLS_SECRET,
        TOKEN_CACHE_TTL,
        TOKEN_EXPIRY,
        NODE_PROXY_ACCOUNT,
        TOKEN_AUDIENCE,
    ];

    /// An error must name a flag that exists and a key the file accepts.
    #[test]
    fn every_key_is_spelled_as_the_flags_and_the_file_spell_it() {
        use clap::Args as _;
        let serve = super::super::ServeArgs::augment_args(clap::Command::new("serve"));
        for key in KEYS {
            assert!(
                serve
                    .get_arguments()
                    .any(|a| a.get_long() == Some(key.flag)),
                "--{} is not a flag of berth serve",
                key.flag
            );
            let yaml = format!("{}: ~\n", key.file);
            let parsed = serde_yaml_ng::from_str::<super::super::args::FileConfig>(&yaml);
            assert!(parsed.is_ok(), "{}: {parsed:?}", key.file);
        }
    }

    #[test]
    fn durations_are_shown_as_written() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(366 * 86_400), "366d"),
        ];
        for (duration, shown) in cases {
            assert_eq!(show_duration(duration), shown, "{duration:?}");
        }
    }
}
