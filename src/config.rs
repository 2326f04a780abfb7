//! Settings: command-line flags, an optional YAML file (`--config`) and the environment, merged once at start into
//! a validated [`Config`]. Flags win over the file; the file wins over the environment and the defaults.
//!
//! The environment and the file's content are inputs ([`Config::build`] is pure), so tests pass their own;
//! subsystems define their own settings (`proxy::config`) and this module embeds them. Errors name the setting
//! and the value; printing them and choosing the exit code is `main`'s job.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{parse_duration, parse_size, UnitError};

/// Flags of `berth serve`. Every one is optional here so that the file can supply it.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// YAML file with the same settings (camelCase keys); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where content is stored [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where tls.crt/tls.key are read (or generated with a CA) [default: ./certs].
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Extra DNS name or IP address for a generated serving certificate (repeatable).
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// Serve plain HTTP (local development, or behind a TLS-terminating ingress).
    #[arg(long)]
    pub plain_http: bool,
    /// Uploads untouched for this long are deleted, e.g. 30m, 24h [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub upload_max_age: Option<Duration>,
    /// How long in-flight requests may run after SIGTERM/SIGINT [default: 25s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Longest pause in any request body before berth gives up on it [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub body_idle_timeout: Option<Duration>,
    /// Longest time a manifest or AdmissionReview body may take to arrive in all [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Memory for manifest and AdmissionReview bodies being received, shared by all clients, e.g. 64MiB
    /// [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub body_memory: Option<u64>,
    /// Upload sessions that may exist at once [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_upload_sessions: Option<usize>,
    /// Requests that may send blob data at once [default: 128].
    #[arg(long, value_name = "N")]
    pub max_concurrent_uploads: Option<usize>,
    /// Longest time data sent to a client may stay unacknowledged (TCP_USER_TIMEOUT) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub send_timeout: Option<Duration>,
    /// HTTP worker threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Image policy file; read at start (invalid: berth refuses to start) and watched.
    #[arg(long, value_name = "FILE", conflicts_with = "policy_configmap")]
    pub policy_file: Option<PathBuf>,
    /// Image policy ConfigMap (key policy.yaml), watched through the Kubernetes API.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub policy_configmap: Option<String>,
    /// berth's own namespace, never validated nor mutated [default: $POD_NAMESPACE, else berth-system].
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Manage the webhook certificates in the cluster: a Secret with a CA and serving certificate, and the
    /// caBundle of the webhook configurations.
    #[arg(long)]
    pub manage_webhook_certs: bool,
    /// Name of the Validating- and MutatingWebhookConfiguration whose caBundle berth keeps [default: berth].
    #[arg(long, value_name = "NAME")]
    pub webhook_config: Option<String>,
    /// The Secret holding the managed certificates [default: <namespace>/berth-tls].
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub tls_secret: Option<String>,
    /// The Service name the webhooks reach berth by [default: berth].
    #[arg(long, value_name = "NAME")]
    pub service_name: Option<String>,
}

/// The YAML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
    #[serde(default)]
    san: Vec<String>,
    plain_http: Option<bool>,
    upload_max_age: Option<String>,
    shutdown_timeout: Option<String>,
    workers: Option<usize>,
    body_idle_timeout: Option<String>,
    body_timeout: Option<String>,
    body_memory: Option<String>,
    max_upload_sessions: Option<usize>,
    max_concurrent_uploads: Option<usize>,
    send_timeout: Option<String>,
    policy_file: Option<PathBuf>,
    policy_configmap: Option<String>,
    namespace: Option<String>,
    manage_webhook_certs: Option<bool>,
    webhook_config: Option<String>,
    tls_secret: Option<String>,
    service_name: Option<String>,
    #[serde(default)]
    proxy: Option<crate::proxy::config::ProxySpec>,
}

/// Validated settings of `berth serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cert_dir: PathBuf,
    pub sans: Vec<String>,
    pub plain_http: bool,
    pub upload_max_age: Duration,
    pub shutdown_timeout: Duration,
    pub workers: usize,
    /// Bounds on what slow or hostile clients can hold.
    pub limits: Limits,
    pub policy: PolicySource,
    pub namespace: String,
    /// Set when berth manages its webhook certificates in the cluster.
    pub managed_certs: Option<ManagedCerts>,
    /// Upstream registries served through the pull-through cache (config file only).
    pub proxy: crate::proxy::config::ProxyConfig,
}

/// Bounds on request bodies, uploads and connections (the README's "Limits" table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub body_idle_timeout: Duration,
    pub body_timeout: Duration,
    pub body_memory: u64,
    pub max_upload_sessions: usize,
    pub max_concurrent_uploads: usize,
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            body_memory: 64 << 20,
            max_upload_sessions: 1024,
            max_concurrent_uploads: 128,
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// A setting's two spellings: the flag of `berth serve` and the key of the config file.
#[derive(Debug, Clone, Copy)]
struct Key {
    flag: &'static str,
    file: &'static str,
}

const UPLOAD_MAX_AGE: Key = Key {
    flag: "upload-max-age",
    file: "uploadMaxAge",
};
const SHUTDOWN_TIMEOUT: Key = Key {
    flag: "shutdown-timeout",
    file: "shutdownTimeout",
};
const WORKERS: Key = Key {
    flag: "workers",
    file: "workers",
};
const BODY_IDLE_TIMEOUT: Key = Key {
    flag: "body-idle-timeout",
    file: "bodyIdleTimeout",
};
const BODY_TIMEOUT: Key = Key {
    flag: "body-timeout",
    file: "bodyTimeout",
};
const BODY_MEMORY: Key = Key {
    flag: "body-memory",
    file: "bodyMemory",
};
const MAX_UPLOAD_SESSIONS: Key = Key {
    flag: "max-upload-sessions",
    file: "maxUploadSessions",
};
const MAX_CONCURRENT_UPLOADS: Key = Key {
    flag: "max-concurrent-uploads",
    file: "maxConcurrentUploads",
};
const SEND_TIMEOUT: Key = Key {
    flag: "send-timeout",
    file: "sendTimeout",
};
const POLICY_CONFIGMAP: Key = Key {
    flag: "policy-configmap",
    file: "policyConfigmap",
};
const TLS_SECRET: Key = Key {
    flag: "tls-secret",
    file: "tlsSecret",
};

/// A value chosen by precedence (flag, else file, else default), remembering how the user spelled its key and
/// the value, so that a range error names both as they were written.
struct Chosen<T> {
    value: T,
    /// `--body-timeout` for a flag, `bodyTimeout` for the file (or the default).
    key: String,
    /// The value as written in the file, or rendered from the flag's or default's parsed value.
    shown: String,
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

    fn out_of_range(&self, bound: String) -> ConfigError {
        ConfigError::OutOfRange {
            key: self.key.clone(),
            value: self.shown.clone(),
            bound,
        }
    }
}

impl Key {
    /// The flag's duration, else the file's (parsed here), else `default`.
    fn duration(
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
    fn size(
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
    fn count(self, flag: Option<usize>, file: Option<usize>, default: usize) -> Chosen<usize> {
        match (flag, file) {
            (Some(value), _) => Chosen::from_flag(self, value, value.to_string()),
            (None, Some(value)) => Chosen::from_file(self, value, value.to_string()),
            (None, None) => Chosen::from_file(self, default, default.to_string()),
        }
    }

    /// The flag's text, else the file's.
    fn text(self, flag: Option<&str>, file: Option<&str>) -> Option<Chosen<String>> {
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

impl Limits {
    fn from_sources(args: &ServeArgs, file: &FileConfig) -> Result<Limits, ConfigError> {
        /// Longest timeout the limits accept (a year): each is added to the clock per request.
        const MAX_LIMIT_DURATION: Duration = Duration::from_secs(365 * 86_400);
        /// Largest count the limits accept: a semaphore has at most `usize::MAX >> 3` permits, and a million
        /// sessions or streams is already far past what one process serves.
        const MAX_LIMIT_COUNT: usize = 1 << 20;
        let defaults = Limits::default();
        let duration = |key: Key,
                        flag: Option<Duration>,
                        value: &Option<String>,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            let chosen = key.duration(flag, value.as_deref(), default)?;
            if chosen.value.is_zero() {
                return Err(chosen.out_of_range("more than 0".into()));
            }
            // Added to the clock on every request: a value past any sensible timeout would overflow it.
            if chosen.value > MAX_LIMIT_DURATION {
                return Err(chosen.out_of_range(format!(
                    "at most {}d",
                    MAX_LIMIT_DURATION.as_secs() / 86_400
                )));
            }
            Ok(chosen.value)
        };
        let count = |key: Key,
                     flag: Option<usize>,
                     value: Option<usize>,
                     default: usize|
         -> Result<usize, ConfigError> {
            let chosen = key.count(flag, value, default);
            match chosen.value {
                0 => Err(chosen.out_of_range("at least 1".into())),
                n if n > MAX_LIMIT_COUNT => {
                    Err(chosen.out_of_range(format!("at most {MAX_LIMIT_COUNT}")))
                }
                n => Ok(n),
            }
        };
        let body_memory = BODY_MEMORY.size(
            args.body_memory,
            file.body_memory.as_deref(),
            defaults.body_memory,
        )?;
        // Room for at least one manifest of the largest size, or the limit refuses every big one.
        if body_memory.value < 2 * crate::registry::manifest::MAX_MANIFEST_BYTES {
            return Err(body_memory.out_of_range(format!(
                "at least {} bytes (twice the largest manifest)",
                2 * crate::registry::manifest::MAX_MANIFEST_BYTES
            )));
        }
        Ok(Limits {
            body_idle_timeout: duration(
                BODY_IDLE_TIMEOUT,
                args.body_idle_timeout,
                &file.body_idle_timeout,
                defaults.body_idle_timeout,
            )?,
            body_timeout: duration(
                BODY_TIMEOUT,
                args.body_timeout,
                &file.body_timeout,
                defaults.body_timeout,
            )?,
            body_memory: body_memory.value,
            max_upload_sessions: count(
                MAX_UPLOAD_SESSIONS,
                args.max_upload_sessions,
                file.max_upload_sessions,
                defaults.max_upload_sessions,
            )?,
            max_concurrent_uploads: count(
                MAX_CONCURRENT_UPLOADS,
                args.max_concurrent_uploads,
                file.max_concurrent_uploads,
                defaults.max_concurrent_uploads,
            )?,
            send_timeout: duration(
                SEND_TIMEOUT,
                args.send_timeout,
                &file.send_timeout,
                defaults.send_timeout,
            )?,
        })
    }
}

/// Where the managed webhook certificates live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedCerts {
    pub secret_namespace: String,
    pub secret_name: String,
    pub webhook_config: String,
    /// Every name the serving certificate covers: the Service's DNS names and each `--san`.
    pub names: Vec<String>,
}

/// Splits `NAMESPACE/NAME`.
fn namespaced(reference: &Chosen<String>) -> Result<(String, String), ConfigError> {
    match reference.value.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace.to_owned(), name.to_owned()))
        }
        _ => Err(ConfigError::NotNamespaced {
            key: reference.key.clone(),
            value: reference.value.clone(),
        }),
    }
}

/// Where the image policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The built-in default: allow all, rewrite nothing.
    Default,
    File(PathBuf),
    ConfigMap {
        namespace: String,
        name: String,
    },
}

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
    /// The `proxy:` section is invalid; the message names the upstream and key.
    #[error("{0}")]
    Proxy(String),
}

/// The process environment as the config reads it: the value of a variable, or `None` when it is unset. `main`
/// passes `std::env::var`; tests pass a map.
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The variable that names berth's own namespace when neither the flag nor the file does (the Downward API sets
/// it in the pod).
pub const NAMESPACE_VARIABLE: &str = "POD_NAMESPACE";

/// The content of the `--config` file and where it was read from (for messages).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub content: String,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let content = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            content,
        })
    }

    fn parse(&self) -> Result<FileConfig, ConfigError> {
        serde_yaml_ng::from_str::<Option<FileConfig>>(&self.content)
            .map(Option::unwrap_or_default)
            .map_err(|source| ConfigError::Parse {
                path: self.path.clone(),
                source,
            })
    }
}

impl Config {
    /// Reads the file `--config` names, if any, then [`Config::build`]s. The only I/O of this module.
    pub fn load(args: &ServeArgs, env: Environment<'_>) -> Result<Config, ConfigError> {
        let file = args.config.as_deref().map(ConfigFile::read).transpose()?;
        Config::build(args, file.as_ref(), env)
    }

    /// The validated settings from the flags, the config file's content and the environment. Pure.
    ///
    /// Precedence, for every setting: a flag wins over the file, the file over the default. The environment is
    /// asked only for the namespace, after the flag and the file ([`NAMESPACE_VARIABLE`], ignored when empty).
    /// `--san` values add to the file's `san` list; `--plain-http` and `--manage-webhook-certs` switch on
    /// whatever the file says.
    pub fn build(
        args: &ServeArgs,
        file: Option<&ConfigFile>,
        env: Environment<'_>,
    ) -> Result<Config, ConfigError> {
        let file = match file {
            Some(file) => file.parse()?,
            None => FileConfig::default(),
        };
        let mut sans = file.san.clone();
        sans.extend(args.sans.iter().cloned());
        let default_workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let workers = WORKERS.count(args.workers, file.workers, default_workers);
        if workers.value == 0 {
            return Err(workers.out_of_range("at least 1".into()));
        }
        let limits = Limits::from_sources(args, &file)?;
        let policy_file = args.policy_file.clone().or(file.policy_file.clone());
        let policy_configmap = POLICY_CONFIGMAP.text(
            args.policy_configmap.as_deref(),
            file.policy_configmap.as_deref(),
        );
        let policy = match (policy_file, policy_configmap) {
            (Some(path), Some(reference)) => {
                return Err(ConfigError::PolicyConflict {
                    file: path,
                    configmap: reference.value,
                })
            }
            (Some(path), None) => PolicySource::File(path),
            (None, Some(reference)) => {
                let (namespace, name) = namespaced(&reference)?;
                PolicySource::ConfigMap { namespace, name }
            }
            (None, None) => PolicySource::Default,
        };
        let namespace = args
            .namespace
            .clone()
            .or(file.namespace.clone())
            .or_else(|| env(NAMESPACE_VARIABLE).filter(|n| !n.is_empty()))
            .unwrap_or_else(|| "berth-system".to_owned());
        let managed_certs =
            if args.manage_webhook_certs || file.manage_webhook_certs.unwrap_or(false) {
                let (secret_namespace, secret_name) =
                    match TLS_SECRET.text(args.tls_secret.as_deref(), file.tls_secret.as_deref()) {
                        Some(reference) => namespaced(&reference)?,
                        None => (namespace.clone(), "berth-tls".to_owned()),
                    };
                let service = args
                    .service_name
                    .clone()
                    .or(file.service_name.clone())
                    .unwrap_or_else(|| "berth".to_owned());
                let mut names = vec![
                    format!("{service}.{namespace}.svc"),
                    format!("{service}.{namespace}.svc.cluster.local"),
                ];
                for san in &sans {
                    if !names.contains(san) {
                        names.push(san.clone());
                    }
                }
                Some(ManagedCerts {
                    secret_namespace,
                    secret_name,
                    webhook_config: args
                        .webhook_config
                        .clone()
                        .or(file.webhook_config.clone())
                        .unwrap_or_else(|| "berth".into()),
                    names,
                })
            } else {
                None
            };
        let proxy = match &file.proxy {
            Some(spec) => spec.validate().map_err(ConfigError::Proxy)?,
            None => crate::proxy::config::ProxyConfig::default(),
        };
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from("./data")),
            cert_dir: args
                .cert_dir
                .clone()
                .or(file.cert_dir.clone())
                .unwrap_or_else(|| PathBuf::from("./certs")),
            sans,
            plain_http: args.plain_http || file.plain_http.unwrap_or(false),
            upload_max_age: UPLOAD_MAX_AGE
                .duration(
                    args.upload_max_age,
                    file.upload_max_age.as_deref(),
                    Duration::from_secs(24 * 3600),
                )?
                .value,
            shutdown_timeout: SHUTDOWN_TIMEOUT
                .duration(
                    args.shutdown_timeout,
                    file.shutdown_timeout.as_deref(),
                    Duration::from_secs(25),
                )?
                .value,
            workers: workers.value,
            limits,
            policy,
            namespace,
            managed_certs,
            proxy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config from flags (and the file they name) in an empty environment.
    fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        Config::load(args, &|_| None)
    }

    #[test]
    fn defaults() {
        let config = from_args(&ServeArgs::default()).expect("defaults");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.cert_dir, PathBuf::from("./certs"));
        assert!(!config.plain_http);
        assert_eq!(config.upload_max_age, Duration::from_secs(86_400));
        assert_eq!(config.policy, PolicySource::Default);
    }

    #[test]
    fn policy_sources() {
        let args = ServeArgs {
            policy_configmap: Some("berth-system/berth-policy".into()),
            ..ServeArgs::default()
        };
        assert_eq!(
            from_args(&args).map(|c| c.policy).ok(),
            Some(PolicySource::ConfigMap {
                namespace: "berth-system".into(),
                name: "berth-policy".into()
            })
        );
        for bad in ["berth-policy", "/x", "a/", "a/b/c"] {
            let args = ServeArgs {
                policy_configmap: Some(bad.into()),
                ..ServeArgs::default()
            };
            assert!(
                matches!(from_args(&args), Err(ConfigError::NotNamespaced { .. })),
                "{bad}"
            );
        }
        let args = ServeArgs {
            policy_file: Some("p.yaml".into()),
            namespace: Some("ops".into()),
            ..ServeArgs::default()
        };
        let config = from_args(&args).expect("config");
        assert_eq!(config.policy, PolicySource::File("p.yaml".into()));
        assert_eq!(config.namespace, "ops");
        assert_eq!(config.managed_certs, None);
    }

    #[test]
    fn managed_certificates() {
        let args = ServeArgs {
            manage_webhook_certs: true,
            namespace: Some("berth-system".into()),
            sans: vec!["127.0.0.1".into()],
            ..ServeArgs::default()
        };
        let managed = from_args(&args)
            .expect("config")
            .managed_certs
            .expect("managed");
        assert_eq!(
            (
                managed.secret_namespace.as_str(),
                managed.secret_name.as_str()
            ),
            ("berth-system", "berth-tls")
        );
        assert_eq!(managed.webhook_config, "berth");
        assert_eq!(
            managed.names,
            [
                "berth.berth-system.svc",
                "berth.berth-system.svc.cluster.local",
                "127.0.0.1"
            ]
        );
        let args = ServeArgs {
            tls_secret: Some("nope".into()),
            ..args
        };
        assert!(matches!(
            from_args(&args),
            Err(ConfigError::NotNamespaced { .. })
        ));
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.yaml");
        std::fs::write(
            &path,
            "listen: 0.0.0.0:9000\ndataDir: /srv/data\nsan: [a.example]\nplainHttp: true\nuploadMaxAge: 1h\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path),
            data_dir: Some("/flag/data".into()),
            sans: vec!["b.example".into()],
            ..ServeArgs::default()
        };
        let config = from_args(&args).expect("config");
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.data_dir, PathBuf::from("/flag/data"));
        assert_eq!(config.sans, ["a.example", "b.example"]);
        assert!(config.plain_http);
        assert_eq!(config.upload_max_age, Duration::from_secs(3600));
    }

    #[test]
    fn limits_from_flags_and_file() {
        assert_eq!(
            from_args(&ServeArgs::default()).map(|c| c.limits).ok(),
            Some(Limits::default())
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.yaml");
        std::fs::write(
            &path,
            "bodyIdleTimeout: 5s\nbodyMemory: 16MiB\nmaxUploadSessions: 10\nsendTimeout: 20s\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path.clone()),
            max_upload_sessions: Some(3),
            max_concurrent_uploads: Some(2),
            ..ServeArgs::default()
        };
        let limits = from_args(&args).expect("config").limits;
        assert_eq!(limits.body_idle_timeout, Duration::from_secs(5));
        assert_eq!(limits.body_timeout, Duration::from_secs(30));
        assert_eq!(limits.body_memory, 16 << 20);
        assert_eq!(limits.max_upload_sessions, 3);
        assert_eq!(limits.max_concurrent_uploads, 2);
        assert_eq!(limits.send_timeout, Duration::from_secs(20));
        for bad in [
            "maxUploadSessions: 0\n",
            "bodyTimeout: 0s\n",
            "bodyMemory: 1MiB\n",
            // Review finding: values that panicked on every request (the clock overflowed) or at start (a semaphore
            // past its maximum).
            "bodyTimeout: 10000000000000000000s\n",
            "bodyIdleTimeout: 366d\n",
            "maxConcurrentUploads: 18446744073709551615\n",
        ] {
            std::fs::write(&path, bad).expect("write");
            let error = from_args(&ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
            .expect_err(bad);
            assert!(
                matches!(error, ConfigError::OutOfRange { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn file_errors_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.yaml");
        std::fs::write(&path, "lisen: 0.0.0.0:9000\n").expect("write");
        let error = from_args(&ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .expect_err("unknown field");
        assert!(error.to_string().contains("lisen"), "{error}");
        std::fs::write(&path, "uploadMaxAge: soon\n").expect("write");
        let error = from_args(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .expect_err("bad duration");
        assert!(error.to_string().contains("uploadMaxAge"), "{error}");
        let missing = ServeArgs {
            config: Some(dir.path().join("nope.yaml")),
            ..ServeArgs::default()
        };
        assert!(matches!(from_args(&missing), Err(ConfigError::Read { .. })));
    }

    /// The error for `args` with `yaml` as the config file's content, in an empty environment.
    fn error_of(args: &ServeArgs, yaml: &str) -> String {
        let file = ConfigFile {
            path: "berth.yaml".into(),
            content: yaml.to_owned(),
        };
        match Config::build(args, Some(&file), &|_| None) {
            Ok(config) => panic!("{yaml:?} with {args:?} accepted: {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let none = ServeArgs::default();
        let smallest_body_memory = 2 * crate::registry::manifest::MAX_MANIFEST_BYTES;
        let cases: Vec<(ServeArgs, &str, String)> = vec![
            (
                none.clone(),
                "bodyTimeout: 10q\n",
                r#"bodyTimeout: invalid duration "10q": unknown unit "q" (ms, s, m, h, d)"#.into(),
            ),
            (
                none.clone(),
                "uploadMaxAge: soon\n",
                r#"uploadMaxAge: invalid duration "soon": expected e.g. 30s, 5m, 24h"#.into(),
            ),
            (
                none.clone(),
                "bodyMemory: lots\n",
                r#"bodyMemory: invalid size "lots": expected e.g. 500MB or 20GiB"#.into(),
            ),
            (
                none.clone(),
                "bodyTimeout: 0s\n",
                "bodyTimeout 0s is out of range: it must be more than 0".into(),
            ),
            (
                ServeArgs {
                    body_timeout: Some(Duration::ZERO),
                    ..ServeArgs::default()
                },
                "bodyTimeout: 5s\n",
                "--body-timeout 0s is out of range: it must be more than 0".into(),
            ),
            (
                none.clone(),
                "sendTimeout: 366d\n",
                "sendTimeout 366d is out of range: it must be at most 365d".into(),
            ),
            (
                ServeArgs {
                    body_idle_timeout: Some(Duration::from_secs(366 * 86_400)),
                    ..ServeArgs::default()
                },
                "",
                "--body-idle-timeout 366d is out of range: it must be at most 365d".into(),
            ),
            (
                none.clone(),
                "maxUploadSessions: 0\n",
                "maxUploadSessions 0 is out of range: it must be at least 1".into(),
            ),
            (
                ServeArgs {
                    max_concurrent_uploads: Some(usize::MAX),
                    ..ServeArgs::default()
                },
                "",
                format!(
                    "--max-concurrent-uploads {} is out of range: it must be at most 1048576",
                    usize::MAX
                ),
            ),
            (
                ServeArgs {
                    workers: Some(0),
                    ..ServeArgs::default()
                },
                "",
                "--workers 0 is out of range: it must be at least 1".into(),
            ),
            (
                none.clone(),
                "bodyMemory: 1MiB\n",
                format!(
                    "bodyMemory 1MiB is out of range: it must be at least {smallest_body_memory} bytes (twice the largest manifest)"
                ),
            ),
            (
                none.clone(),
                "policyConfigmap: berth-policy\n",
                r#"policyConfigmap "berth-policy" must be written NAMESPACE/NAME"#.into(),
            ),
            (
                ServeArgs {
                    policy_configmap: Some("a/b/c".into()),
                    ..ServeArgs::default()
                },
                "",
                r#"--policy-configmap "a/b/c" must be written NAMESPACE/NAME"#.into(),
            ),
            (
                ServeArgs {
                    policy_file: Some("p.yaml".into()),
                    ..ServeArgs::default()
                },
                "policyConfigmap: ns/p\n",
                r#"give either a policy file ("p.yaml") or a policy ConfigMap ("ns/p"), not both"#
                    .into(),
            ),
            (
                none.clone(),
                "manageWebhookCerts: true\ntlsSecret: nope\n",
                r#"tlsSecret "nope" must be written NAMESPACE/NAME"#.into(),
            ),
            (
                none.clone(),
                "proxy: {maxSize: lots}\n",
                r#"proxy.maxSize: invalid size "lots": expected e.g. 500MB or 20GiB"#.into(),
            ),
        ];
        for (args, yaml, expected) in cases {
            assert_eq!(error_of(&args, yaml), expected, "{yaml:?} with {args:?}");
        }
        let unknown = error_of(&none, "lisen: 0.0.0.0:9000\n");
        assert!(
            unknown.starts_with("config file berth.yaml: unknown field `lisen`"),
            "{unknown}"
        );
    }

    #[test]
    fn a_flag_wins_over_a_bad_file_value() {
        let args = ServeArgs {
            body_timeout: Some(Duration::from_secs(3)),
            ..ServeArgs::default()
        };
        let file = ConfigFile {
            path: "berth.yaml".into(),
            content: "bodyTimeout: 10q\n".into(),
        };
        let config = Config::build(&args, Some(&file), &|_| None).expect("the flag wins");
        assert_eq!(config.limits.body_timeout, Duration::from_secs(3));
    }

    #[test]
    fn the_namespace_comes_from_the_environment_after_flag_and_file() {
        let file = |yaml: &str| ConfigFile {
            path: "berth.yaml".into(),
            content: yaml.to_owned(),
        };
        let flag = ServeArgs {
            namespace: Some("from-flag".into()),
            ..ServeArgs::default()
        };
        let none = ServeArgs::default();
        // (flags, file, $POD_NAMESPACE) → namespace
        let cases: Vec<(&ServeArgs, Option<ConfigFile>, Option<&str>, &str)> = vec![
            (&none, None, None, "berth-system"),
            (&none, None, Some("from-env"), "from-env"),
            (&none, None, Some(""), "berth-system"),
            (
                &none,
                Some(file("namespace: from-file\n")),
                Some("from-env"),
                "from-file",
            ),
            (
                &flag,
                Some(file("namespace: from-file\n")),
                Some("from-env"),
                "from-flag",
            ),
        ];
        for (args, file, variable, expected) in cases {
            let lookup = |name: &str| {
                variable
                    .filter(|_| name == NAMESPACE_VARIABLE)
                    .map(str::to_owned)
            };
            let config = Config::build(args, file.as_ref(), &lookup).expect("config");
            assert_eq!(config.namespace, expected, "{args:?} {file:?} {variable:?}");
        }
        // The environment's namespace is also where the managed certificates' Secret and names go.
        let managed = Config::build(
            &ServeArgs {
                manage_webhook_certs: true,
                ..ServeArgs::default()
            },
            None,
            &|name| (name == NAMESPACE_VARIABLE).then(|| "ops".to_owned()),
        )
        .expect("config")
        .managed_certs
        .expect("managed");
        assert_eq!(managed.secret_namespace, "ops");
        assert_eq!(managed.names[0], "berth.ops.svc");
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
