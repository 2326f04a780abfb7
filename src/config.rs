//! Settings: command-line flags, an optional YAML file (`--config`) and the environment, merged once at start into
//! a validated [`Config`]. Flags win over the file; the file wins over the environment and the defaults.
//!
//! The environment and the file's content are inputs ([`Config::build`] is pure), so tests pass their own;
//! subsystems define their own settings (`proxy::config`) and this module embeds them. Errors name the setting
//! and the value; printing them and choosing the exit code is `main`'s job.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod args;
mod error;
mod sources;

pub use args::ServeArgs;
pub use error::ConfigError;

use args::FileConfig;
use sources::{
    Chosen, Key, BODY_IDLE_TIMEOUT, BODY_MEMORY, BODY_TIMEOUT, EVENTS_MAX_SIZE, EVENTS_RETENTION,
    INSTANCE, MAX_CONCURRENT_UPLOADS, MAX_UPLOAD_SESSIONS, NODE_PROXY_ACCOUNT, POLICY_CONFIGMAP,
    SEND_TIMEOUT, SHUTDOWN_TIMEOUT, TLS_SECRET, TOKEN_AUDIENCE, TOKEN_CACHE_TTL, TOKEN_EXPIRY,
    UPLOAD_MAX_AGE, WORKERS,
};

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
    /// Who can log in, and berth's tokens.
    pub auth: AuthConfig,
    /// The event log.
    pub events: EventsConfig,
    /// Whether berth watches the pods of every namespace through the Kubernetes API (`--watch-pods`).
    pub watch_pods: bool,
    /// Where events are sent on (config file only).
    pub notifications: crate::events::notify::NotificationsConfig,
}

/// The event log's settings (the README's "Event log" section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// Whether events are kept (`--no-event-log` turns it off).
    pub enabled: bool,
    /// What is kept.
    pub retention: crate::events::Retention,
    /// The name events are recorded under.
    pub instance: String,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            retention: crate::events::Retention {
                max_age: Duration::from_secs(30 * 86_400),
                max_bytes: 1 << 30,
            },
            instance: "berth".to_owned(),
        }
    }
}

impl EventsConfig {
    fn from_sources(
        args: &ServeArgs,
        file: &FileConfig,
        env: Environment<'_>,
    ) -> Result<EventsConfig, ConfigError> {
        let default = EventsConfig::default();
        let max_age = EVENTS_RETENTION.duration(
            args.events_retention,
            file.events_retention.as_deref(),
            default.retention.max_age,
        )?;
        if max_age.value < Duration::from_secs(60) {
            return Err(max_age.out_of_range("at least 1m".into()));
        }
        let max_bytes = EVENTS_MAX_SIZE.size(
            args.events_max_size,
            file.events_max_size.as_deref(),
            default.retention.max_bytes,
        )?;
        if max_bytes.value < 1 << 20 {
            return Err(max_bytes.out_of_range("at least 1MiB".into()));
        }
        let instance = INSTANCE
            .text(args.instance.as_deref(), file.instance.as_deref())
            .map(|chosen| chosen.value)
            .or_else(|| env("POD_NAME").filter(|n| !n.is_empty()))
            .or_else(|| env("HOSTNAME").filter(|n| !n.is_empty()))
            .unwrap_or(default.instance);
        Ok(EventsConfig {
            enabled: !args.no_event_log && file.event_log.unwrap_or(true),
            retention: crate::events::Retention {
                max_age: max_age.value,
                max_bytes: max_bytes.value,
            },
            instance,
        })
    }
}

/// Authentication settings (the README's "Authentication" section). Auth is on when `htpasswd` is set or
/// `token_review` is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The htpasswd file of users.
    pub htpasswd: Option<PathBuf>,
    /// Whether ServiceAccount tokens are accepted (checked with TokenReview).
    pub token_review: bool,
    /// Audiences a ServiceAccount token must be valid for (any of them).
    pub token_audiences: Vec<String>,
    /// How long a positive TokenReview answer is remembered.
    pub token_cache_ttl: Duration,
    /// How long berth's tokens are valid.
    pub token_expiry: Duration,
    /// The node proxy's ServiceAccount (namespace, name).
    pub node_proxy_account: (String, String),
}

/// Auth off, with the defaults of every other setting (the node proxy account in `berth-system`).
impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            token_review: false,
            token_audiences: vec!["berth".to_owned()],
            token_cache_ttl: Duration::from_secs(30),
            token_expiry: Duration::from_secs(300),
            node_proxy_account: ("berth-system".to_owned(), "berth-node-proxy".to_owned()),
        }
    }
}

impl AuthConfig {
    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.token_review
    }

    fn from_sources(
        args: &ServeArgs,
        file: &FileConfig,
        namespace: &str,
    ) -> Result<AuthConfig, ConfigError> {
        /// Longest a TokenReview answer may be kept: a deleted ServiceAccount must stop working soon.
        const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
        /// Longest a berth token may live (clients fetch a new one when it expires).
        const MAX_EXPIRY: Duration = Duration::from_secs(24 * 3600);
        let token_cache_ttl = TOKEN_CACHE_TTL.duration(
            args.token_cache_ttl,
            file.token_cache_ttl.as_deref(),
            Duration::from_secs(30),
        )?;
        if token_cache_ttl.value > MAX_CACHE_TTL {
            return Err(token_cache_ttl.out_of_range("at most 1h".into()));
        }
        let token_expiry = TOKEN_EXPIRY.duration(
            args.token_expiry,
            file.token_expiry.as_deref(),
            Duration::from_secs(300),
        )?;
        // The distribution spec: a token is never issued with less than 60 s to live (older clients assume it).
        if token_expiry.value < Duration::from_secs(60) {
            return Err(token_expiry.out_of_range("at least 60s".into()));
        }
        if token_expiry.value > MAX_EXPIRY {
            return Err(token_expiry.out_of_range("at most 24h".into()));
        }
        let (audiences, audience_key) = if !args.token_audiences.is_empty() {
            (args.token_audiences.clone(), TOKEN_AUDIENCE.flag_name())
        } else if let Some(list) = &file.token_audiences {
            (list.clone(), TOKEN_AUDIENCE.file_name())
        } else {
            (vec!["berth".to_owned()], TOKEN_AUDIENCE.file_name())
        };
        if audiences.is_empty() {
            return Err(ConfigError::BadAudience {
                key: audience_key,
                value: String::new(),
            });
        }
        if let Some(bad) = audiences
            .iter()
            .find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::BadAudience {
                key: audience_key,
                value: bad.clone(),
            });
        }
        let node_proxy_account = match NODE_PROXY_ACCOUNT.text(
            args.node_proxy_account.as_deref(),
            file.node_proxy_account.as_deref(),
        ) {
            Some(reference) => namespaced(&reference)?,
            None => (namespace.to_owned(), "berth-node-proxy".to_owned()),
        };
        Ok(AuthConfig {
            htpasswd: args.htpasswd.clone().or(file.htpasswd.clone()),
            token_review: args.token_review || file.token_review.unwrap_or(false),
            token_audiences: audiences,
            token_cache_ttl: token_cache_ttl.value,
            token_expiry: token_expiry.value,
            node_proxy_account,
        })
    }
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

/// The process environment as the config reads it: the value of a variable, or `None` when it is unset. `main`
/// passes `std::env::var`; tests pass a map.
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The variable that names berth's own namespace when neither the flag nor the file does (the Downward API sets
/// it in the pod).
pub const NAMESPACE_VARIABLE: &str = "POD_NAMESPACE";

/// Set in every pod of a cluster: where it is, the pod watch is on by default ([`Config::watch_pods`]).
pub const KUBERNETES_SERVICE_VARIABLE: &str = "KUBERNETES_SERVICE_HOST";

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
    /// asked for the namespace, after the flag and the file ([`NAMESPACE_VARIABLE`], ignored when empty), the
    /// event log's instance name, and whether berth is in a cluster (the pod watch's default,
    /// [`KUBERNETES_SERVICE_VARIABLE`]). `--san` values add to the file's `san` list; `--plain-http` and `--manage-webhook-certs` switch on
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
        let auth = AuthConfig::from_sources(args, &file, &namespace)?;
        let events = EventsConfig::from_sources(args, &file, env)?;
        // In a cluster (the variable every pod gets) the watch is on unless turned off; elsewhere only when asked.
        let watch_pods = args.watch_pods.or(file.watch_pods).unwrap_or_else(|| {
            env(KUBERNETES_SERVICE_VARIABLE).is_some_and(|host| !host.is_empty())
        });
        let proxy = match &file.proxy {
            Some(spec) => spec.validate()?,
            None => crate::proxy::config::ProxyConfig::default(),
        };
        let notifications = match &file.notifications {
            Some(spec) => spec.validate()?,
            None => crate::events::notify::NotificationsConfig::default(),
        };
        if !notifications.endpoints.is_empty() && !events.enabled {
            return Err(ConfigError::NotificationsWithoutLog);
        }
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
            auth,
            events,
            watch_pods,
            notifications,
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
    fn auth_settings_from_flags_and_file() {
        let auth = from_args(&ServeArgs::default()).expect("defaults").auth;
        assert!(!auth.enabled());
        assert_eq!(auth.token_audiences, ["berth"]);
        assert_eq!(auth.token_cache_ttl, Duration::from_secs(30));
        assert_eq!(auth.token_expiry, Duration::from_secs(300));
        assert_eq!(
            auth.node_proxy_account,
            ("berth-system".to_owned(), "berth-node-proxy".to_owned())
        );
        let file = ConfigFile {
            path: "berth.yaml".into(),
            content: "htpasswd: /etc/berth/htpasswd\ntokenReview: true\ntokenAudiences: [berth, registry]\ntokenCacheTtl: 10s\ntokenExpiry: 15m\nnodeProxyAccount: infra/np\n".into(),
        };
        let auth = Config::build(&ServeArgs::default(), Some(&file), &|_| None)
            .expect("config")
            .auth;
        assert!(auth.enabled() && auth.token_review);
        assert_eq!(auth.htpasswd, Some(PathBuf::from("/etc/berth/htpasswd")));
        assert_eq!(auth.token_audiences, ["berth", "registry"]);
        assert_eq!(auth.token_cache_ttl, Duration::from_secs(10));
        assert_eq!(auth.token_expiry, Duration::from_secs(900));
        assert_eq!(
            auth.node_proxy_account,
            ("infra".to_owned(), "np".to_owned())
        );
        // Flags replace the file's audiences, and the default node proxy account follows the namespace.
        let args = ServeArgs {
            token_audiences: vec!["other".into()],
            namespace: Some("ops".into()),
            ..ServeArgs::default()
        };
        let auth = from_args(&args).expect("config").auth;
        assert_eq!(auth.token_audiences, ["other"]);
        assert_eq!(auth.node_proxy_account.0, "ops");
        let cases: Vec<(ServeArgs, &str, &str)> = vec![
            (
                ServeArgs::default(),
                "tokenCacheTtl: 2h\n",
                "tokenCacheTtl 2h is out of range: it must be at most 1h",
            ),
            (
                ServeArgs::default(),
                "tokenExpiry: 30s\n",
                "tokenExpiry 30s is out of range: it must be at least 60s",
            ),
            (
                ServeArgs {
                    token_expiry: Some(Duration::from_secs(2 * 86_400)),
                    ..ServeArgs::default()
                },
                "",
                "--token-expiry 2d is out of range: it must be at most 24h",
            ),
            (
                ServeArgs::default(),
                "tokenAudiences: []\n",
                r#"tokenAudiences "" is not an audience (empty, or whitespace or control characters)"#,
            ),
            (
                ServeArgs {
                    token_audiences: vec!["a b".into()],
                    ..ServeArgs::default()
                },
                "",
                r#"--token-audience "a b" is not an audience (empty, or whitespace or control characters)"#,
            ),
            (
                ServeArgs::default(),
                "nodeProxyAccount: np\n",
                r#"nodeProxyAccount "np" must be written NAMESPACE/NAME"#,
            ),
        ];
        for (args, yaml, expected) in cases {
            assert_eq!(error_of(&args, yaml), expected, "{yaml:?} with {args:?}");
        }
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

    /// Issue 12: the pod watch is on in a cluster unless turned off, and elsewhere only when asked (a test's
    /// kubeconfig); the flag spells on and off, the file too, and the flag wins.
    #[test]
    fn the_pod_watch_is_on_in_a_cluster_unless_turned_off() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        fn check(flags: &[&str], yaml: Option<&str>, in_cluster: bool, expected: bool) {
            let args = <Cli as clap::Parser>::try_parse_from(
                std::iter::once("berth").chain(flags.iter().copied()),
            )
            .expect("flags")
            .serve;
            let file = yaml.map(|content| ConfigFile {
                path: "berth.yaml".into(),
                content: content.into(),
            });
            let lookup = |name: &str| {
                (in_cluster && name == KUBERNETES_SERVICE_VARIABLE).then(|| "10.96.0.1".to_owned())
            };
            let config = Config::build(&args, file.as_ref(), &lookup).expect("config");
            assert_eq!(
                config.watch_pods, expected,
                "{flags:?} {yaml:?} in a cluster: {in_cluster}"
            );
        }
        check(&[], None, false, false);
        check(&[], None, true, true);
        check(&["--watch-pods"], None, false, true);
        check(&["--watch-pods=true"], None, false, true);
        check(&["--watch-pods=false"], None, true, false);
        check(&[], Some("watchPods: false\n"), true, false);
        check(&[], Some("watchPods: true\n"), false, true);
        check(&["--watch-pods"], Some("watchPods: false\n"), false, true);
        // An empty variable is not a cluster.
        let config = Config::build(&ServeArgs::default(), None, &|name| {
            (name == KUBERNETES_SERVICE_VARIABLE).then(String::new)
        })
        .expect("config");
        assert!(!config.watch_pods);
    }

    #[test]
    fn the_notifications_section_is_validated_and_needs_the_event_log() {
        let file = ConfigFile {
            path: "berth.yaml".into(),
            content: "notifications:\n  endpoints:\n    - url: https://hooks.example.com/berth\n"
                .into(),
        };
        let config = Config::build(&ServeArgs::default(), Some(&file), &|_| None).expect("config");
        assert_eq!(config.notifications.endpoints[0].name, "hooks.example.com");
        let off = ServeArgs {
            no_event_log: true,
            ..ServeArgs::default()
        };
        let refused = Config::build(&off, Some(&file), &|_| None).expect_err("no log");
        assert!(
            matches!(refused, ConfigError::NotificationsWithoutLog),
            "{refused}"
        );
        let bad = ConfigFile {
            path: "berth.yaml".into(),
            content: "notifications:\n  endpoints:\n    - url: ftp://h/x\n".into(),
        };
        let refused = Config::build(&ServeArgs::default(), Some(&bad), &|_| None).expect_err("ftp");
        assert_eq!(
            refused.to_string(),
            r#"notifications.endpoints[0].url "ftp://h/…": the scheme must be http or https"#
        );
    }
}
