//! The raw settings of `berth serve`: its flags (clap) and the YAML file's shape (serde), before precedence and
//! validation. Declarations only: no defaults are applied and nothing is checked here beyond what parsing does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::parse_duration;

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
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
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
    /// Users and bcrypt hashes (htpasswd file); turns authentication on; reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Accept Kubernetes ServiceAccount tokens, checked with the TokenReview API; turns authentication on.
    #[arg(long)]
    pub token_review: bool,
    /// Audience a ServiceAccount token must be for (repeatable) [default: berth].
    #[arg(long = "token-audience", value_name = "AUDIENCE")]
    pub token_audiences: Vec<String>,
    /// How long a positive TokenReview answer is remembered (never past the token's expiry) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub token_cache_ttl: Option<Duration>,
    /// How long berth's own tokens (from /auth/token) are valid [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub token_expiry: Option<Duration>,
    /// The node proxy's ServiceAccount, the only one whose Berth-Node-Name header is believed
    /// [default: <namespace>/berth-node-proxy].
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub node_proxy_account: Option<String>,
    /// Keep no event log (no `events.db`, no `/berth/v1/events`).
    #[arg(long)]
    pub no_event_log: bool,
    /// Events older than this are pruned, e.g. 7d [default: 30d].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub events_retention: Option<Duration>,
    /// When the event log takes more than this, its oldest events are pruned, e.g. 2GiB [default: 1GiB].
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub events_max_size: Option<u64>,
    /// The name this berth records its events under [default: $POD_NAME, else $HOSTNAME, else berth].
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Watch the pods of every namespace (what runs where, for the images report); `--watch-pods=false` turns it
    /// off [default: on in a cluster ($KUBERNETES_SERVICE_HOST set), else off].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub watch_pods: Option<bool>,
}

/// The YAML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<SocketAddr>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) cert_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) san: Vec<String>,
    pub(super) plain_http: Option<bool>,
    pub(super) upload_max_age: Option<String>,
    pub(super) shutdown_timeout: Option<String>,
    pub(super) workers: Option<usize>,
    pub(super) body_idle_timeout: Option<String>,
    pub(super) body_timeout: Option<String>,
    pub(super) body_memory: Option<String>,
    pub(super) max_upload_sessions: Option<usize>,
    pub(super) max_concurrent_uploads: Option<usize>,
    pub(super) send_timeout: Option<String>,
    pub(super) policy_file: Option<PathBuf>,
    pub(super) policy_configmap: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) manage_webhook_certs: Option<bool>,
    pub(super) webhook_config: Option<String>,
    pub(super) tls_secret: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) htpasswd: Option<PathBuf>,
    pub(super) token_review: Option<bool>,
    pub(super) token_audiences: Option<Vec<String>>,
    pub(super) token_cache_ttl: Option<String>,
    pub(super) token_expiry: Option<String>,
    pub(super) node_proxy_account: Option<String>,
    pub(super) event_log: Option<bool>,
    pub(super) events_retention: Option<String>,
    pub(super) events_max_size: Option<String>,
    pub(super) instance: Option<String>,
    pub(super) watch_pods: Option<bool>,
    #[serde(default)]
    pub(super) proxy: Option<crate::proxy::config::ProxySpec>,
    #[serde(default)]
    pub(super) notifications: Option<crate::events::notify::NotificationsSpec>,
}
