//! Settings: command-line flags and an optional YAML file (`--config`), merged once at start into a validated
//! [`Config`]. Flags win over the file; the file wins over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{parse_duration, parse_size};

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

impl Limits {
    fn from_sources(args: &ServeArgs, file: &FileConfig) -> Result<Limits, ConfigError> {
        /// Longest timeout the limits accept (a year): each is added to the clock per request.
        const MAX_LIMIT_DURATION: Duration = Duration::from_secs(365 * 86_400);
        /// Largest count the limits accept: a semaphore has at most `usize::MAX >> 3` permits, and a million
        /// sessions or streams is already far past what one process serves.
        const MAX_LIMIT_COUNT: usize = 1 << 20;
        let defaults = Limits::default();
        let duration = |flag: Option<Duration>,
                        value: &Option<String>,
                        key: &str,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            let chosen = match flag {
                Some(d) => d,
                None => value
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))?
                    .unwrap_or(default),
            };
            if chosen.is_zero() {
                return Err(ConfigError::Invalid(format!("{key} must be more than 0")));
            }
            // Added to the clock on every request: a value past any sensible timeout would overflow it.
            if chosen > MAX_LIMIT_DURATION {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be at most {}d",
                    MAX_LIMIT_DURATION.as_secs() / 86_400
                )));
            }
            Ok(chosen)
        };
        let count = |flag: Option<usize>,
                     value: Option<usize>,
                     key: &str,
                     default: usize|
         -> Result<usize, ConfigError> {
            match flag.or(value).unwrap_or(default) {
                0 => Err(ConfigError::Invalid(format!("{key} must be at least 1"))),
                n if n > MAX_LIMIT_COUNT => Err(ConfigError::Invalid(format!(
                    "{key} must be at most {MAX_LIMIT_COUNT}"
                ))),
                n => Ok(n),
            }
        };
        let body_memory = match args.body_memory {
            Some(size) => size,
            None => file
                .body_memory
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| ConfigError::Invalid(format!("bodyMemory: {e}")))?
                .unwrap_or(defaults.body_memory),
        };
        // Room for at least one manifest of the largest size, or the limit refuses every big one.
        if body_memory < 2 * crate::registry::manifest::MAX_MANIFEST_BYTES {
            return Err(ConfigError::Invalid(format!(
                "bodyMemory must be at least {} bytes (twice the largest manifest)",
                2 * crate::registry::manifest::MAX_MANIFEST_BYTES
            )));
        }
        Ok(Limits {
            body_idle_timeout: duration(
                args.body_idle_timeout,
                &file.body_idle_timeout,
                "bodyIdleTimeout",
                defaults.body_idle_timeout,
            )?,
            body_timeout: duration(
                args.body_timeout,
                &file.body_timeout,
                "bodyTimeout",
                defaults.body_timeout,
            )?,
            body_memory,
            max_upload_sessions: count(
                args.max_upload_sessions,
                file.max_upload_sessions,
                "maxUploadSessions",
                defaults.max_upload_sessions,
            )?,
            max_concurrent_uploads: count(
                args.max_concurrent_uploads,
                file.max_concurrent_uploads,
                "maxConcurrentUploads",
                defaults.max_concurrent_uploads,
            )?,
            send_timeout: duration(
                args.send_timeout,
                &file.send_timeout,
                "sendTimeout",
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
fn namespaced(reference: &str, what: &str) -> Result<(String, String), ConfigError> {
    match reference.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace.to_owned(), name.to_owned()))
        }
        _ => Err(ConfigError::Invalid(format!(
            "{what} {reference:?} must be written NAMESPACE/NAME"
        ))),
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML of the expected shape.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_yaml_ng::from_str::<Option<FileConfig>>(&raw)
        .map(Option::unwrap_or_default)
        .map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let file_duration =
            |value: &Option<String>, key: &str| -> Result<Option<Duration>, ConfigError> {
                value
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))
            };
        let mut sans = file.san.clone();
        sans.extend(args.sans.iter().cloned());
        let workers = args.workers.or(file.workers).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if workers == 0 {
            return Err(ConfigError::Invalid("workers must be at least 1".into()));
        }
        let limits = Limits::from_sources(args, &file)?;
        let policy_file = args.policy_file.clone().or(file.policy_file);
        let policy_configmap = args.policy_configmap.clone().or(file.policy_configmap);
        let policy = match (policy_file, policy_configmap) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give either a policy file or a policy ConfigMap, not both".into(),
                ))
            }
            (Some(path), None) => PolicySource::File(path),
            (None, Some(reference)) => match reference.split_once('/') {
                Some((namespace, name))
                    if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
                {
                    PolicySource::ConfigMap {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    }
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "policy ConfigMap {reference:?} must be written NAMESPACE/NAME"
                    )))
                }
            },
            (None, None) => PolicySource::Default,
        };
        let namespace = args
            .namespace
            .clone()
            .or(file.namespace)
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "berth-system".to_owned());
        let managed_certs =
            if args.manage_webhook_certs || file.manage_webhook_certs.unwrap_or(false) {
                let (secret_namespace, secret_name) =
                    match args.tls_secret.clone().or(file.tls_secret) {
                        Some(reference) => namespaced(&reference, "TLS Secret")?,
                        None => (namespace.clone(), "berth-tls".to_owned()),
                    };
                let service = args
                    .service_name
                    .clone()
                    .or(file.service_name)
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
                        .or(file.webhook_config)
                        .unwrap_or_else(|| "berth".into()),
                    names,
                })
            } else {
                None
            };
        let proxy = match &file.proxy {
            Some(spec) => spec.validate().map_err(ConfigError::Invalid)?,
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
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            cert_dir: args
                .cert_dir
                .clone()
                .or(file.cert_dir)
                .unwrap_or_else(|| PathBuf::from("./certs")),
            sans,
            plain_http: args.plain_http || file.plain_http.unwrap_or(false),
            upload_max_age: match args.upload_max_age {
                Some(age) => age,
                None => file_duration(&file.upload_max_age, "uploadMaxAge")?
                    .unwrap_or(Duration::from_secs(24 * 3600)),
            },
            shutdown_timeout: match args.shutdown_timeout {
                Some(timeout) => timeout,
                None => file_duration(&file.shutdown_timeout, "shutdownTimeout")?
                    .unwrap_or(Duration::from_secs(25)),
            },
            workers,
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

    #[test]
    fn defaults() {
        let config = Config::from_args(&ServeArgs::default()).expect("defaults");
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
            Config::from_args(&args).map(|c| c.policy).ok(),
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
                matches!(Config::from_args(&args), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
        let args = ServeArgs {
            policy_file: Some("p.yaml".into()),
            namespace: Some("ops".into()),
            ..ServeArgs::default()
        };
        let config = Config::from_args(&args).expect("config");
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
        let managed = Config::from_args(&args)
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
            Config::from_args(&args),
            Err(ConfigError::Invalid(_))
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
        let config = Config::from_args(&args).expect("config");
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.data_dir, PathBuf::from("/flag/data"));
        assert_eq!(config.sans, ["a.example", "b.example"]);
        assert!(config.plain_http);
        assert_eq!(config.upload_max_age, Duration::from_secs(3600));
    }

    #[test]
    fn limits_from_flags_and_file() {
        assert_eq!(
            Config::from_args(&ServeArgs::default())
                .map(|c| c.limits)
                .ok(),
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
        let limits = Config::from_args(&args).expect("config").limits;
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
            let error = Config::from_args(&ServeArgs {
                config: Some(path.clone()),
                ..ServeArgs::default()
            })
            .expect_err(bad);
            assert!(matches!(error, ConfigError::Invalid(_)), "{bad}: {error}");
        }
    }

    #[test]
    fn file_errors_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.yaml");
        std::fs::write(&path, "lisen: 0.0.0.0:9000\n").expect("write");
        let error = Config::from_args(&ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .expect_err("unknown field");
        assert!(error.to_string().contains("lisen"), "{error}");
        std::fs::write(&path, "uploadMaxAge: soon\n").expect("write");
        let error = Config::from_args(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .expect_err("bad duration");
        assert!(error.to_string().contains("uploadMaxAge"), "{error}");
        let missing = ServeArgs {
            config: Some(dir.path().join("nope.yaml")),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::from_args(&missing),
            Err(ConfigError::Read { .. })
        ));
    }
}
