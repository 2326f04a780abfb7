//! `berth node-proxy`: the node-local pull endpoint. Plain HTTP on the node's loopback (containerd pulls from
//! `127.0.0.1` over plain HTTP without node configuration), forwarding registry pulls (`GET`/`HEAD` under `/v2/`) to
//! the central berth over verified TLS, streaming both ways without buffering whole blobs. Pushes are refused with a
//! clear `UNSUPPORTED` naming the real registry. An unreachable berth is a quick 503 (the kubelet's back-off applies).
//! Only paths of the registry's route grammar are forwarded, rewritten in canonical form: nothing outside `/v2/`
//! (no `/readyz`, no `/mutate`) is reachable through it, however the path is spelled.
//!
//! With `--upstream-address` it connects to that IP address (berth's ClusterIP) instead of resolving the upstream
//! URL's host, so the node's pull path does not depend on cluster DNS; TLS still verifies the URL's host name.
//!
//! With `--token-file` it pulls as itself: every forwarded request carries `Authorization: Bearer <token>` (its
//! projected ServiceAccount token, re-read every few seconds as the kubelet rotates it; never read per request)
//! and, with `--node-name`, `Berth-Node-Name: <node>`. Whatever `Authorization` or `Berth-Node-Name` the client
//! sent is dropped then, so a client's credentials are never mixed with the node proxy's identity. Without
//! `--token-file` the client's own `Authorization` is passed on as it is and no node name is sent. It does not
//! decide who may pull: berth does.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::from_fn;
use actix_web::middleware::Logger;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use futures_util::{StreamExt, TryStreamExt};

use crate::events::metrics::{ForwardResult, NodeProxyMetrics};
use crate::registry::names::{Digest, Reference};
use crate::registry::response::{envelope, envelope_with};
use crate::registry::{ErrorCode, RegistryError};
use crate::v2::route::{parse_route, Route};

/// Flags of `berth node-proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeProxyArgs {
    /// Address to listen on; keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub listen: SocketAddr,
    /// The central berth, e.g. https://berth.berth-system.svc:443.
    #[arg(long)]
    pub upstream: String,
    /// Connect to this IP address and port (berth's ClusterIP) instead of resolving the upstream URL's host; TLS
    /// still verifies the certificate for that host name. `10.96.0.10:443`, `[fd00::1]:443` or `fd00::1:443`.
    #[arg(long, value_name = "IP:PORT")]
    pub upstream_address: Option<String>,
    /// CA that signed berth's serving certificate (the `ca.crt` of its Secret).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for a connection to berth before answering 503.
    #[arg(long, default_value = "2s", value_parser = crate::units::parse_duration)]
    pub connect_timeout: Duration,
    /// How long a response from berth may stall before the pull is cut off.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub read_timeout: Duration,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The node proxy's own ServiceAccount token (a projected token of audience `berth`), sent to berth as
    /// `Authorization: Bearer` on every pull instead of anything the client sent. Re-read every
    /// `--token-reload-interval` (the kubelet rotates it); must be readable at start.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The node this proxy runs on (the downward API's `spec.nodeName`), sent as `Berth-Node-Name` beside the
    /// token; berth trusts it only from the node proxy's identity. Ignored (with a warning) without
    /// `--token-file`: a stray NODE_NAME in the environment (CI agents set one) does not stop the proxy.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// How often the token file is re-read.
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
    pub token_reload_interval: Duration,
    /// Also serve `GET /metrics` (and `/healthz`, nothing else) on this address, for a scraper that cannot reach
    /// the loopback `--listen` (with hostNetwork, the node's IP: `$(POD_IP):5051`). `/metrics` is always served on
    /// `--listen` too.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The header that names the node a node proxy runs on. berth must believe it only on a request authenticated as
/// the node proxy's ServiceAccount.
pub const NODE_NAME_HEADER: &str = "berth-node-name";

#[derive(Debug, thiserror::Error)]
pub enum NodeProxyError {
    /// The upstream URL is not an http(s) URL.
    #[error("upstream {0:?} must be an http:// or https:// URL")]
    Upstream(String),
    /// `--upstream-address` is not an IP address with a port.
    #[error("upstream address {value:?}: {problem}")]
    UpstreamAddress {
        value: String,
        #[source]
        problem: AddressProblem,
    },
    /// `--upstream-address` was given, but the upstream URL names an IP address, not a host name to stand in for.
    #[error(
        "upstream {0:?}: --upstream-address needs a host name in the URL (the name TLS verifies)"
    )]
    UpstreamAddressWithoutName(String),
    /// The CA file cannot be read or parsed.
    #[error("CA file {path}: {why}")]
    Ca { path: PathBuf, why: String },
    /// The HTTP client cannot be built.
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    /// The token file is missing, unreadable, empty or not a token.
    #[error("token file {path}: {why}")]
    Token { path: PathBuf, why: String },
    /// `--node-name` is not a Kubernetes node name.
    #[error("node name {value:?}: {problem}")]
    NodeName {
        value: String,
        #[source]
        problem: NodeNameProblem,
    },
    /// The listener failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with an `--upstream-address` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressProblem {
    /// A `$(VAR)` the kubelet left as it is because the variable is not set.
    #[error(
        "still contains $(…): the variable is not set; the Service berth must exist before the pod starts \
         (the kubelet sets BERTH_SERVICE_HOST only for Services that existed when the container started); \
         the container restarts and gets it"
    )]
    Unexpanded,
    /// No `:PORT` at the end.
    #[error("no port; write IP:PORT")]
    NoPort,
    /// The port is not a number from 1 to 65535.
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// The host is not an IP literal (a name would need the DNS this flag avoids).
    #[error("{0:?} is not an IP address (give berth's ClusterIP; a host name would need DNS)")]
    NotAnIp(String),
    /// `0.0.0.0` or `::`, which name no host to connect to.
    #[error("{0} is the unspecified address, not one to connect to")]
    Unspecified(IpAddr),
}

/// What is wrong with a token file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// Nothing but white space.
    #[error("empty (is the projected token volume mounted?)")]
    Empty,
    /// A byte that cannot be sent in an HTTP header (tokens are printable ASCII without spaces).
    #[error("byte {byte:#04x} at offset {offset} cannot be part of a bearer token")]
    Byte { byte: u8, offset: usize },
}

/// A token file's content → the token: surrounding white space (a trailing newline) dropped, the rest printable
/// ASCII without spaces. Pure.
pub fn parse_token(text: &[u8]) -> Result<&str, TokenProblem> {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(TokenProblem::Empty)?;
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |last| last + 1);
    let token = &text[start..end];
    if let Some(offset) = token.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(TokenProblem::Byte {
            byte: token[offset],
            offset: start + offset,
        });
    }
    // Only ASCII graphic bytes are left.
    std::str::from_utf8(token).map_err(|_| TokenProblem::Empty)
}

/// What is wrong with a `--node-name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameProblem {
    /// A `$(NODE_NAME)` the kubelet left as it is: the variable is not set.
    #[error("still contains $(…): set NODE_NAME from the downward API (fieldRef spec.nodeName)")]
    Unexpanded,
    /// Not a DNS subdomain: 1 to 253 characters, dot-separated labels of 1 to 63 of `[a-z0-9-]`, each starting
    /// and ending with a letter or digit.
    #[error("not a Kubernetes node name (a lowercase DNS subdomain of at most 253 characters)")]
    Invalid,
}

/// Checks `--node-name`: a Kubernetes node name (a lowercase RFC 1123 subdomain). Pure.
pub fn parse_node_name(value: &str) -> Result<&str, NodeNameProblem> {
    if value.contains("$(") {
        return Err(NodeNameProblem::Unexpanded);
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        (1..=63).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-')
    };
    if value.is_empty() || value.len() > 253 || !value.split('.').all(label_ok) {
        return Err(NodeNameProblem::Invalid);
    }
    Ok(value)
}

/// The node proxy's identity: the `Authorization` value it sends (replaced when the token file changes) and the
/// node name.
struct NodeIdentity {
    token_file: PathBuf,
    /// `Bearer <token>`.
    authorization: arc_swap::ArcSwap<String>,
    node_name: Option<String>,
}

/// `Bearer <token>` from the token file at `path`.
fn read_token(path: &std::path::Path) -> Result<String, NodeProxyError> {
    let why = |why: String| NodeProxyError::Token {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read(path).map_err(|e| why(e.to_string()))?;
    let token = parse_token(&text).map_err(|e| why(e.to_string()))?;
    Ok(format!("Bearer {token}"))
}

impl NodeIdentity {
    /// Reads the token (an error when it cannot be read: the node proxy does not start without its identity)
    /// and checks the node name.
    fn load(
        token_file: Option<&std::path::Path>,
        node_name: Option<&str>,
    ) -> Result<Option<NodeIdentity>, NodeProxyError> {
        let Some(token_file) = token_file else {
            if let Some(node) = node_name {
                log::warn!(
                    "node name {node:?} (--node-name or NODE_NAME) ignored: without --token-file no node name is \
                     sent, berth believes one only from the node proxy's identity"
                );
            }
            return Ok(None);
        };
        let node_name = node_name
            .map(|value| {
                parse_node_name(value)
                    .map(str::to_owned)
                    .map_err(|problem| NodeProxyError::NodeName {
                        value: value.to_owned(),
                        problem,
                    })
            })
            .transpose()?;
        let authorization = read_token(token_file)?;
        Ok(Some(NodeIdentity {
            token_file: token_file.to_owned(),
            authorization: arc_swap::ArcSwap::from_pointee(authorization),
            node_name,
        }))
    }
}

/// Re-reads the token file every `interval` (the kubelet writes a rotated token in place); a file that cannot be
/// read or holds no token is logged (once per distinct problem) and the last token stays in use.
async fn watch_token(identity: std::sync::Arc<NodeIdentity>, interval: Duration) {
    let path = identity.token_file.clone();
    let mut last_problem: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        match read_token(&path) {
            Ok(authorization) => {
                if last_problem.take().is_some() {
                    log::info!("token file {} readable again", path.display());
                }
                if *identity.authorization.load_full() != authorization {
                    identity
                        .authorization
                        .store(std::sync::Arc::new(authorization));
                    log::info!("reloaded the token from {}", path.display());
                }
            }
            Err(e) => {
                let problem = e.to_string();
                if last_problem.as_deref() != Some(problem.as_str()) {
                    log::error!("{problem}; keeping the last token");
                    last_problem = Some(problem);
                }
            }
        }
    }
}

/// Parses `--upstream-address`: `IPv4:PORT`, `[IPv6]:PORT`, or `IPv6:PORT` unbracketed, split at the last `:`
/// (what `$(BERTH_SERVICE_HOST):$(BERTH_SERVICE_PORT)` gives for an IPv6 ClusterIP). Only IP literals. Pure.
pub fn parse_upstream_address(value: &str) -> Result<SocketAddr, AddressProblem> {
    if value.contains("$(") {
        return Err(AddressProblem::Unexpanded);
    }
    let ip_of = |host: &str| match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<IpAddr>().ok(),
    };
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(AddressProblem::NoPort);
    };
    let ip = match ip_of(host) {
        Some(ip) => ip,
        // `fd00::1` or `[fd00::1]` alone: an address without a port.
        None if ip_of(value).is_some() => return Err(AddressProblem::NoPort),
        None => return Err(AddressProblem::NotAnIp(host.to_owned())),
    };
    if port.is_empty() {
        return Err(AddressProblem::NoPort);
    }
    // Digits only: `u16::from_str` would take `+443`.
    let port = match port.parse::<u16>() {
        Ok(number) if number != 0 && port.bytes().all(|b| b.is_ascii_digit()) => number,
        _ => return Err(AddressProblem::Port(port.to_owned())),
    };
    if ip.is_unspecified() {
        return Err(AddressProblem::Unspecified(ip));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Where pulls are sent, validated once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// `--upstream` without a trailing `/`: how messages name berth.
    pub base: String,
    /// The URL requests go to: `base`, with the port of `--upstream-address` when one is given (reqwest connects
    /// to the port written in the URL, not to the port of a DNS override).
    pub request_base: String,
    /// The URL's host name and the address connected to for it, from `--upstream-address`.
    pub pinned: Option<(String, SocketAddr)>,
}

impl UpstreamTarget {
    /// `--upstream` and `--upstream-address` → the target. Pure.
    pub fn new(upstream: &str, address: Option<&str>) -> Result<UpstreamTarget, NodeProxyError> {
        let base = upstream.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(NodeProxyError::Upstream(upstream.to_owned()));
        }
        let Some(address) = address else {
            return Ok(UpstreamTarget {
                request_base: base.clone(),
                base,
                pinned: None,
            });
        };
        let addr =
            parse_upstream_address(address).map_err(|problem| NodeProxyError::UpstreamAddress {
                value: address.to_owned(),
                problem,
            })?;
        let mut url = reqwest::Url::parse(&base)
            .map_err(|_| NodeProxyError::Upstream(upstream.to_owned()))?;
        // `domain()` is `None` for an IP address.
        let Some(host) = url.domain().map(str::to_owned) else {
            return Err(NodeProxyError::UpstreamAddressWithoutName(
                upstream.to_owned(),
            ));
        };
        url.set_port(Some(addr.port()))
            .map_err(|()| NodeProxyError::Upstream(upstream.to_owned()))?;
        Ok(UpstreamTarget {
            base,
            request_base: url.as_str().trim_end_matches('/').to_owned(),
            pinned: Some((host, addr)),
        })
    }

    /// `base`, and the address connected to when it is pinned: for logs and error messages.
    fn describe(&self) -> String {
        match &self.pinned {
            Some((_, addr)) => format!("{} (at {addr})", self.base),
            None => self.base.clone(),
        }
    }
}

/// Request headers a pull needs passed on.
const FORWARDED_REQUEST_HEADERS: [header::HeaderName; 5] = [
    header::ACCEPT,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::AUTHORIZATION,
    header::USER_AGENT,
];
/// Response headers passed back (Content-Length is set from the body size).
const FORWARDED_RESPONSE_HEADERS: [&str; 9] = [
    "content-type",
    "docker-content-digest",
    "docker-distribution-api-version",
    "content-range",
    "accept-ranges",
    "etag",
    "cache-control",
    "www-authenticate",
    "oci-filters-applied",
];

struct Upstream {
    target: UpstreamTarget,
    /// With `--token-file`: who the node proxy is to berth.
    identity: Option<std::sync::Arc<NodeIdentity>>,
    /// Replaced whole when the CA file changes (berth's CA was rotated).
    client: arc_swap::ArcSwap<reqwest::Client>,
}

/// How often the CA file is checked for a change.
const CA_POLL: Duration = Duration::from_secs(10);

fn read_ca(path: &std::path::Path) -> Result<(Vec<u8>, reqwest::Certificate), NodeProxyError> {
    let pem = std::fs::read(path).map_err(|e| NodeProxyError::Ca {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| NodeProxyError::Ca {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    Ok((pem, ca))
}

/// Rebuilds the client when the CA file's content changes (a Secret volume updates in place); a broken file is
/// logged and the previous client stays in use.
async fn watch_ca(upstream: web::Data<Upstream>, args: NodeProxyArgs, mut last: Vec<u8>) {
    let pinned = upstream.target.pinned.clone();
    let Some(path) = args.ca_file.clone() else {
        return;
    };
    loop {
        tokio::time::sleep(CA_POLL).await;
        match read_ca(&path) {
            Ok((pem, _)) if pem == last => {}
            Ok((pem, ca)) => match build_client(&args, pinned.as_ref(), Some(&ca)) {
                Ok(client) => {
                    upstream.client.store(std::sync::Arc::new(client));
                    last = pem;
                    log::info!("reloaded the CA from {}", path.display());
                }
                Err(e) => log::warn!("CA from {} not loaded: {e}", path.display()),
            },
            Err(e) => log::warn!("{e}; keeping the previous CA"),
        }
    }
}

/// The client to berth. With `pinned`, the host name is never resolved: connections go to the address, and TLS
/// (SNI and verification) and the Host header still use the name.
fn build_client(
    args: &NodeProxyArgs,
    pinned: Option<&(String, SocketAddr)>,
    ca: Option<&reqwest::Certificate>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(args.connect_timeout)
        .read_timeout(args.read_timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some((host, addr)) = pinned {
        builder = builder.resolve(host, *addr);
    }
    if let Some(ca) = ca {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone());
    }
    builder.build()
}

/// Runs the node proxy until SIGTERM/SIGINT.
pub async fn run(args: NodeProxyArgs) -> Result<(), NodeProxyError> {
    let target = UpstreamTarget::new(&args.upstream, args.upstream_address.as_deref())?;
    let (pem, ca) = match &args.ca_file {
        Some(path) => {
            let (pem, ca) = read_ca(path)?;
            (pem, Some(ca))
        }
        None => (Vec::new(), None),
    };
    // Fail at start, not at the first pull, if the client cannot be built.
    let client = build_client(&args, target.pinned.as_ref(), ca.as_ref())?;
    let identity = NodeIdentity::load(args.token_file.as_deref(), args.node_name.as_deref())?
        .map(std::sync::Arc::new);
    let upstream = web::Data::new(Upstream {
        target: target.clone(),
        identity: identity.clone(),
        client: arc_swap::ArcSwap::from_pointee(client),
    });
    actix_web::rt::spawn(watch_ca(upstream.clone(), args.clone(), pem));
    match &identity {
        Some(identity) => {
            log::info!(
                "pulling as the ServiceAccount token in {}{}",
                identity.token_file.display(),
                match &identity.node_name {
                    Some(node) => format!(" for node {node}"),
                    None => " (no --node-name)".to_owned(),
                }
            );
            actix_web::rt::spawn(watch_token(identity.clone(), args.token_reload_interval));
        }
        None => log::info!("no --token-file: pulls carry the client's own credentials, if any"),
    }
    let addr = args.listen;
    if !addr.ip().is_loopback() {
        log::warn!("node-proxy listening on {addr}, not on loopback: pulls are served without TLS to the network");
    }
    match &target.pinned {
        Some((host, to)) => log::info!(
            "node-proxy on http://{addr} forwarding pulls to {}, connecting to {to} without resolving {host}, \
             keeping the name for TLS and the Host header",
            target.base
        ),
        None => log::info!(
            "node-proxy on http://{addr} forwarding pulls to {}",
            target.base
        ),
    }
    let workers = args.workers.max(1);
    let metrics = web::Data::new(NodeProxyMetrics::new());
    let served_metrics = metrics.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(upstream.clone())
            .app_data(served_metrics.clone())
            .wrap(from_fn(crate::events::metrics::count_requests))
            .wrap(Logger::new(r#"%a "%r" %s %b %Dms"#))
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok\n") }),
            )
            .route("/metrics", web::get().to(serve_metrics))
            .default_service(web::to(forward))
    })
    .workers(workers)
    .shutdown_timeout(10)
    .bind(addr)
    .map_err(|source| NodeProxyError::Listen { addr, source })?;
    let metrics_server = match args.metrics_listen {
        Some(metrics_addr) => {
            log::info!("node-proxy serving /metrics on http://{metrics_addr} too");
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(metrics.clone())
                    .route(
                        "/healthz",
                        web::get().to(|| async { HttpResponse::Ok().body("ok\n") }),
                    )
                    .route("/metrics", web::get().to(serve_metrics))
            })
            .workers(1)
            .shutdown_timeout(1)
            .bind(metrics_addr)
            .map_err(|source| NodeProxyError::Listen {
                addr: metrics_addr,
                source,
            })?
            .run();
            Some((metrics_addr, server))
        }
        None => None,
    };
    let served = server.run();
    match metrics_server {
        Some((metrics_addr, metrics_server)) => {
            let (served, metrics_served) = futures_util::future::join(served, metrics_server).await;
            metrics_served.map_err(|source| NodeProxyError::Listen {
                addr: metrics_addr,
                source,
            })?;
            served.map_err(|source| NodeProxyError::Listen { addr, source })
        }
        None => served
            .await
            .map_err(|source| NodeProxyError::Listen { addr, source }),
    }
}

/// `GET /metrics` of the node proxy: its requests, bytes, and forwarding to berth (open, like `/healthz`).
async fn serve_metrics(req: HttpRequest, metrics: web::Data<NodeProxyMetrics>) -> HttpResponse {
    let openmetrics = crate::events::metrics::wants_openmetrics(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    crate::events::metrics::scrape_response(metrics.render(openmetrics), openmetrics)
}

/// A request to berth in flight, counted in the gauge until dropped.
struct InFlight(web::Data<NodeProxyMetrics>);

impl InFlight {
    fn start(metrics: web::Data<NodeProxyMetrics>) -> InFlight {
        metrics.in_flight().inc();
        InFlight(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight().dec();
    }
}

/// The path berth is asked for: `path` parsed by the registry's own route grammar ([`parse_route`]) and written
/// out again in canonical form, so only registry pulls leave the node and no dot segment, escape or odd spelling
/// reaches berth (an HTTP client resolves `/v2/../readyz` and `/v2/%2e%2e/readyz` to `/readyz`). Pure.
///
/// A path outside the grammar, or a reference or digest berth would refuse, is answered here with the error berth
/// gives for it.
pub fn upstream_path(path: &str) -> Result<String, RegistryError> {
    Ok(match parse_route(path)? {
        Route::Base => "/v2/".to_owned(),
        Route::Catalog => "/v2/_catalog".to_owned(),
        Route::Tags(repo) => format!("/v2/{repo}/tags/list"),
        Route::Manifest(repo, reference) => {
            let reference = Reference::parse(&reference)
                .map_err(RegistryError::unknown_if_invalid_reference)?;
            format!("/v2/{repo}/manifests/{reference}")
        }
        Route::Blob(repo, digest) => format!("/v2/{repo}/blobs/{}", Digest::parse(&digest)?),
        Route::Referrers(repo, digest) => {
            format!("/v2/{repo}/referrers/{}", Digest::parse(&digest)?)
        }
        Route::Uploads(_) | Route::Upload(..) => {
            return Err(RegistryError::Unsupported(
                "the node-local endpoint only serves pulls; uploads go to the registry".into(),
            ))
        }
    })
}

async fn forward(
    req: HttpRequest,
    upstream: web::Data<Upstream>,
    metrics: web::Data<NodeProxyMetrics>,
) -> HttpResponse {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let message = format!(
            "the node-local endpoint only serves pulls; push to the registry at {} instead",
            upstream.target.base
        );
        return envelope(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            &message,
            None,
        );
    }
    let method = if req.method() == Method::HEAD {
        reqwest::Method::HEAD
    } else {
        reqwest::Method::GET
    };
    let path = match upstream_path(req.path()) {
        Ok(path) => path,
        Err(e) => return e.error_response(),
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let client = upstream.client.load_full();
    let mut request = client.request(
        method,
        format!("{}{path_and_query}", upstream.target.request_base),
    );
    let identity = upstream.identity.as_deref();
    for name in FORWARDED_REQUEST_HEADERS {
        // The node proxy's identity replaces the client's credentials; the two are never sent together.
        if identity.is_some() && name == header::AUTHORIZATION {
            continue;
        }
        if let Some(value) = req.headers().get(&name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    if let Some(identity) = identity {
        request = request.header(
            reqwest::header::AUTHORIZATION,
            identity.authorization.load().as_str(),
        );
        if let Some(node) = &identity.node_name {
            request = request.header(NODE_NAME_HEADER, node.as_str());
        }
    }
    let in_flight = InFlight::start(metrics.clone());
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            metrics.forwarded(ForwardResult::Unreachable);
            log::warn!(
                "{} {path_and_query}: berth at {} unreachable: {}",
                req.method(),
                upstream.target.describe(),
                crate::proxy::upstream::http::cause_chain(&e)
            );
            let mut response = HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE);
            response.insert_header((header::RETRY_AFTER, "5"));
            let message = format!(
                "berth at {} is unreachable; retry later",
                upstream.target.describe()
            );
            return envelope_with(response, ErrorCode::Unknown, &message, None);
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    // berth refusing the node proxy's own token is the node proxy's problem, not the kubelet's: say so here, and
    // do not pass on a challenge the kubelet cannot answer (it would send containerd to berth's token endpoint).
    let refused_identity = identity.filter(|_| status == StatusCode::UNAUTHORIZED);
    metrics.forwarded(if refused_identity.is_some() {
        ForwardResult::Refused
    } else {
        ForwardResult::Answered
    });
    if let Some(identity) = refused_identity {
        log::error!(
            "{} {path_and_query}: berth at {} refused the node proxy's token from {} (401): expired, not yet \
             valid, for another audience, or not accepted by berth's TokenReview (the token must be of audience \
             berth; berth needs --token-review and the system:auth-delegator binding)",
            req.method(),
            upstream.target.describe(),
            identity.token_file.display()
        );
    }
    let mut builder = HttpResponse::build(status);
    for name in FORWARDED_RESPONSE_HEADERS {
        if refused_identity.is_some() && name == "www-authenticate" {
            continue;
        }
        if let Some(value) = response.headers().get(name) {
            builder.insert_header((name, value.as_bytes()));
        }
    }
    // A HEAD answer has no body: its length is the header's.
    let length = if req.method() == Method::HEAD {
        crate::proxy::upstream::http::header_content_length(response.headers())
    } else {
        response.content_length()
    };
    // The request stays in flight until its body is sent (or the client goes away and the stream is dropped).
    let body = response
        .bytes_stream()
        .map_err(std::io::Error::other)
        .inspect(move |_| {
            let _held = &in_flight;
        });
    match length {
        // HEAD: the length of what a GET would send; actix sends the headers only.
        Some(length) => builder.body(SizedStream::new(length, body)),
        None => builder.body(BodyStream::new(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `path` → the path forwarded to berth, or the status and OCI code answered locally.
    fn check(path: &str, expected: Result<&str, (u16, &str)>) {
        match (upstream_path(path), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{path}"),
            (Err(e), Err((status, code))) => {
                assert_eq!(e.status_code().as_u16(), status, "{path}: {e}");
                assert_eq!(
                    serde_json::to_value(e.code()).ok(),
                    Some(json!(code)),
                    "{path}: {e}"
                );
            }
            (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn node_proxy_forwards_only_canonical_registry_paths() {
        let d = format!("sha256:{}", "a".repeat(64));
        let ok = |path: String, want: String| check(&path, Ok(&want));
        ok("/v2".into(), "/v2/".into());
        ok("/v2/".into(), "/v2/".into());
        ok("/v2/_catalog".into(), "/v2/_catalog".into());
        ok("/v2/a/b/tags/list".into(), "/v2/a/b/tags/list".into());
        ok(
            "/v2/team/app/manifests/1.0".into(),
            "/v2/team/app/manifests/1.0".into(),
        );
        ok(
            format!("/v2/x/manifests/{}", d.replace(':', "%3a")),
            format!("/v2/x/manifests/{d}"),
        );
        ok(format!("/v2/x/blobs/{d}"), format!("/v2/x/blobs/{d}"));
        ok(
            format!("/v2/x/referrers/{d}"),
            format!("/v2/x/referrers/{d}"),
        );

        let not_found = Err((404, "UNSUPPORTED"));
        for path in [
            "/readyz",
            "/v2/../readyz",
            "/v2/%2e%2e/readyz",
            "/v2/%2E%2E/readyz",
            "/v2/./../readyz",
            "/v2/x/../../readyz",
            "/v2/..%2freadyz",
            "/v20/x/tags/list",
            "",
        ] {
            check(path, not_found);
        }
        for path in [
            "/v2/a/../../readyz/manifests/x",
            "/v2/%2e%2e/x/manifests/y",
            "/v2/a%2F..%2F..%2Freadyz/tags/list",
        ] {
            check(path, Err((400, "NAME_INVALID")));
        }
        // A reference that is no tag names nothing; an escaped `/` never becomes one.
        check(
            "/v2/a/manifests/x%2F..%2F..%2F..%2Freadyz",
            Err((404, "MANIFEST_UNKNOWN")),
        );
        check("/v2/a/blobs/..%2F..%2Freadyz", Err((400, "DIGEST_INVALID")));
        check("/v2/a/blobs/uploads/", Err((405, "UNSUPPORTED")));
        check("/v2/a/blobs/uploads/0123", Err((405, "UNSUPPORTED")));
    }

    /// `--upstream-address` values → the address, or the problem.
    #[test]
    fn node_proxy_upstream_address_is_an_ip_literal_with_a_port() {
        let ok = |value: &str, want: &str| {
            assert_eq!(
                parse_upstream_address(value),
                Ok(want.parse::<SocketAddr>().expect("want")),
                "{value}"
            )
        };
        ok("10.96.0.10:443", "10.96.0.10:443");
        ok("127.0.0.1:1", "127.0.0.1:1");
        ok("[fd00::1]:443", "[fd00::1]:443");
        // What $(BERTH_SERVICE_HOST):$(BERTH_SERVICE_PORT) gives for an IPv6 ClusterIP: split at the last ':'.
        ok("fd00::1:443", "[fd00::1]:443");
        ok("fd00:10:96::a:65535", "[fd00:10:96::a]:65535");
        ok("[::ffff:10.0.0.1]:443", "[::ffff:10.0.0.1]:443");

        use AddressProblem::*;
        for (value, want) in [
            ("$(BERTH_SERVICE_HOST):$(BERTH_SERVICE_PORT)", Unexpanded),
            ("10.96.0.10:$(BERTH_SERVICE_PORT)", Unexpanded),
            ("$(BERTH_SERVICE_HOST):443", Unexpanded),
            (
                "berth.berth-system.svc:443",
                NotAnIp("berth.berth-system.svc".into()),
            ),
            ("localhost:443", NotAnIp("localhost".into())),
            (":443", NotAnIp(String::new())),
            ("[10.96.0.10]:443", NotAnIp("[10.96.0.10]".into())),
            ("fe80::1%eth0:443", NotAnIp("fe80::1%eth0".into())),
            ("10.96.0.10", NoPort),
            ("10.96.0.10:", NoPort),
            ("[fd00::1]", NoPort),
            ("", NoPort),
            ("10.96.0.10:0", Port("0".into())),
            ("10.96.0.10:65536", Port("65536".into())),
            ("10.96.0.10:99999999999", Port("99999999999".into())),
            ("10.96.0.10:+443", Port("+443".into())),
            ("10.96.0.10:https", Port("https".into())),
            ("10.96.0.10:443 ", Port("443 ".into())),
            ("[fd00::1]:0", Port("0".into())),
            ("0.0.0.0:443", Unspecified("0.0.0.0".parse().expect("ip"))),
            ("[::]:443", Unspecified("::".parse().expect("ip"))),
        ] {
            assert_eq!(parse_upstream_address(value), Err(want), "{value}");
        }
        // The message says why and what to do.
        let message = NodeProxyError::UpstreamAddress {
            value: "$(BERTH_SERVICE_HOST):$(BERTH_SERVICE_PORT)".into(),
            problem: Unexpanded,
        }
        .to_string();
        assert!(
            message.contains(
                "the variable is not set; the Service berth must exist before the pod starts"
            ),
            "{message}"
        );
    }

    #[test]
    fn node_proxy_token_file_content_is_one_printable_token() {
        fn check(text: &[u8], expected: Result<&str, TokenProblem>) {
            assert_eq!(
                parse_token(text),
                expected,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        check(
            b"eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
            Ok("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        );
        check(b"abc\n", Ok("abc"));
        check(b"  \r\nabc\t\n", Ok("abc"));
        check(b"a-b_c.d~e+f/g=", Ok("a-b_c.d~e+f/g="));
        check(b"", Err(TokenProblem::Empty));
        check(b" \n\t", Err(TokenProblem::Empty));
        check(
            b"ab cd",
            Err(TokenProblem::Byte {
                byte: b' ',
                offset: 2,
            }),
        );
        check(
            b"\nab\ncd\n",
            Err(TokenProblem::Byte {
                byte: b'\n',
                offset: 3,
            }),
        );
        check(b"ab\0", Err(TokenProblem::Byte { byte: 0, offset: 2 }));
        check(
            "tök".as_bytes(),
            Err(TokenProblem::Byte {
                byte: 0xc3,
                offset: 1,
            }),
        );
        check(
            b"ab\x7f",
            Err(TokenProblem::Byte {
                byte: 0x7f,
                offset: 2,
            }),
        );
    }

    #[test]
    fn node_proxy_node_name_is_a_dns_subdomain() {
        fn check(value: &str, expected: Result<(), NodeNameProblem>) {
            assert_eq!(parse_node_name(value).map(|_| ()), expected, "{value:?}");
        }
        for ok in [
            "node-a",
            "ip-10-0-0-1.eu-west-1.compute.internal",
            "a",
            "0",
            &"a".repeat(63),
            &[
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61),
            ]
            .join("."),
        ] {
            check(ok, Ok(()));
        }
        check("$(NODE_NAME)", Err(NodeNameProblem::Unexpanded));
        for bad in [
            "",
            "Node-A",
            "node_a",
            "-node",
            "node-",
            "a..b",
            ".a",
            "a.",
            "node a",
            "node\r\nx-evil: 1",
            &"a".repeat(64),
            &[
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(62),
            ]
            .join("."),
        ] {
            check(bad, Err(NodeNameProblem::Invalid));
        }
    }

    #[test]
    fn node_proxy_identity_needs_a_readable_token_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("token");
        let message = NodeIdentity::load(Some(&missing), Some("node-a"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.starts_with(&format!("token file {}: ", missing.display())),
            "{message}"
        );
        std::fs::write(&missing, "\n").expect("write");
        let message = NodeIdentity::load(Some(&missing), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.ends_with("empty (is the projected token volume mounted?)"),
            "{message}"
        );
        std::fs::write(&missing, "tok\n").expect("write");
        assert!(matches!(
            NodeIdentity::load(Some(&missing), Some("$(NODE_NAME)")),
            Err(NodeProxyError::NodeName {
                problem: NodeNameProblem::Unexpanded,
                ..
            })
        ));
        let identity = NodeIdentity::load(Some(&missing), Some("node-a"))
            .expect("load")
            .expect("an identity");
        assert_eq!(*identity.authorization.load_full(), "Bearer tok");
        assert_eq!(identity.node_name.as_deref(), Some("node-a"));
        assert!(NodeIdentity::load(None, None).expect("load").is_none());
        // A node name alone is no identity (and no reason not to start).
        assert!(NodeIdentity::load(None, Some("node-a"))
            .expect("load")
            .is_none());
    }

    #[test]
    fn node_proxy_target_connects_to_the_address_and_keeps_the_name() {
        let target = |upstream: &str, address: Option<&str>| UpstreamTarget::new(upstream, address);
        assert_eq!(
            target("https://berth.berth-system.svc:443/", None).expect("target"),
            UpstreamTarget {
                base: "https://berth.berth-system.svc:443".into(),
                request_base: "https://berth.berth-system.svc:443".into(),
                pinned: None,
            }
        );
        assert_eq!(
            target("https://berth.berth-system.svc:443", Some("10.96.0.10:443")).expect("target"),
            UpstreamTarget {
                base: "https://berth.berth-system.svc:443".into(),
                request_base: "https://berth.berth-system.svc".into(),
                pinned: Some((
                    "berth.berth-system.svc".into(),
                    "10.96.0.10:443".parse().expect("addr")
                )),
            }
        );
        // The address's port is the one connected to, whatever port the URL names.
        let moved =
            target("https://Berth.berth-system.svc:443", Some("127.0.0.1:8443")).expect("target");
        assert_eq!(moved.request_base, "https://berth.berth-system.svc:8443");
        assert_eq!(moved.pinned.expect("pinned").0, "berth.berth-system.svc");
        assert_eq!(
            target("https://berth.berth-system.svc", Some("[fd00::1]:8443"))
                .expect("target")
                .request_base,
            "https://berth.berth-system.svc:8443"
        );

        for (upstream, address) in [
            ("https://10.96.0.10:443", "10.96.0.11:443"),
            ("https://[fd00::1]:443", "[fd00::2]:443"),
        ] {
            assert!(
                matches!(
                    target(upstream, Some(address)),
                    Err(NodeProxyError::UpstreamAddressWithoutName(_))
                ),
                "{upstream}"
            );
        }
        assert!(matches!(
            target("berth.berth-system.svc:443", Some("10.96.0.10:443")),
            Err(NodeProxyError::Upstream(_))
        ));
        assert!(matches!(
            target("https://berth.berth-system.svc", Some("berth:443")),
            Err(NodeProxyError::UpstreamAddress {
                problem: AddressProblem::NotAnIp(_),
                ..
            })
        ));
    }
}
