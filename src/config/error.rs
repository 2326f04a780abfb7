//! Why the settings of `berth serve` were refused.

use std::path::PathBuf;

use crate::units::UnitError;

/// Why the settings of `berth serve` were refused. Each message names the setting as it was written (`--flag`
/// or `fileKey`) and the value given.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML of the expected shape (an unknown key, a value of the wrong type).
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A duration or size in the config file that does not parse; the cause names the value.
    #[error("{key}: {source}")]
    Unit {
        /// The file's key.
        key: &'static str,
        #[source]
        source: UnitError,
    },
    /// A value outside what the setting allows.
    #[error("{key} {value} is out of range: it must be {bound}")]
    OutOfRange {
        /// `--flag` or `fileKey`, as the value was given.
        key: String,
        /// The value as given.
        value: String,
        /// What the setting allows, e.g. `at least 1`.
        bound: String,
    },
    /// A ConfigMap or Secret reference not written `NAMESPACE/NAME`.
    #[error("{key} {value:?} must be written NAMESPACE/NAME")]
    NotNamespaced {
        /// `--flag` or `fileKey`, as the value was given.
        key: String,
        /// The value as given.
        value: String,
    },
    /// A policy file and a policy ConfigMap, one from the flags and one from the file.
    #[error(
        "give either a policy file ({file:?}) or a policy ConfigMap ({configmap:?}), not both"
    )]
    PolicyConflict { file: PathBuf, configmap: String },
    /// A token audience that is empty or holds whitespace or control characters.
    #[error("{key} {value:?} is not an audience (empty, or whitespace or control characters)")]
    BadAudience {
        /// `--token-audience` or `tokenAudiences`, as the value was given.
        key: String,
        /// The value as given.
        value: String,
    },
    /// The `proxy:` section is invalid; the message names the upstream, the key and the value.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::config::ProxyConfigError),
    /// The `notifications:` section is invalid; the message names the endpoint, the key and the value (never a
    /// header's value).
    #[error(transparent)]
    Notifications(#[from] crate::events::notify::NotifyConfigError),
    /// Notification endpoints with the event log off: they are sent from the log.
    #[error("notifications.endpoints need the event log, which is off (--no-event-log or eventLog: false)")]
    NotificationsWithoutLog,
}
