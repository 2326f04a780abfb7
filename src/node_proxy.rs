//! `berth node-proxy`: the node-local pull endpoint. Plain HTTP on the node's loopback (containerd pulls from
//! `127.0.0.1` over plain HTTP without node configuration), forwarding registry pulls (`GET`/`HEAD` under `/v2/`) to
//! the central berth over verified TLS, streaming both ways without buffering whole blobs. Pushes are refused with a
//! clear `UNSUPPORTED` naming the real registry. An unreachable berth is a quick 503 (the kubelet's back-off applies).
//! Only paths of the registry's route grammar are forwarded, rewritten in canonical form: nothing outside `/v2/`
//! (no `/readyz`, no `/mutate`) is reachable through it, however the path is spelled.
//!
//! With `--upstream-address` it connects to that IP address (berth's ClusterIP) instead of resolving the upstream
//! URL's host, so the node's pull path does not depend on cluster DNS; TLS still verifies the URL's host name.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Logger;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use futures_util::TryStreamExt;

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
}

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
    let upstream = web::Data::new(Upstream {
        target: target.clone(),
        client: arc_swap::ArcSwap::from_pointee(client),
    });
    actix_web::rt::spawn(watch_ca(upstream.clone(), args.clone(), pem));
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
    let server = HttpServer::new(move || {
        App::new()
            .app_data(upstream.clone())
            .wrap(Logger::new(r#"%a "%r" %s %b %Dms"#))
            .route(
                "/healthz",
                web::get().to(|| async { HttpResponse::Ok().body("ok\n") }),
            )
            .default_service(web::to(forward))
    })
    .workers(workers)
    .shutdown_timeout(10)
    .bind(addr)
    .map_err(|source| NodeProxyError::Listen { addr, source })?;
    server
        .run()
        .await
        .map_err(|source| NodeProxyError::Listen { addr, source })
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

async fn forward(req: HttpRequest, upstream: web::Data<Upstream>) -> HttpResponse {
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
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = req.headers().get(&name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
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
    let mut builder = HttpResponse::build(status);
    for name in FORWARDED_RESPONSE_HEADERS {
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
    let body = response.bytes_stream().map_err(std::io::Error::other);
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
