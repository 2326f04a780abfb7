//! Starting `berth serve`: the shared state built once ([`AppState`], also what the in-process tests mount),
//! background tasks (the upload sweep, the policy and htpasswd watches, the event log's pruning, the pod watch), and one actix-web server on one listener (TLS with a reloading certificate, or plain HTTP). Graceful shutdown on SIGTERM and SIGINT alike: stop
//! accepting, let in-flight requests finish within the configured timeout, exit.

use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::{from_fn, Logger};
use actix_web::{web, App, HttpServer};

use crate::admission::source::{self, ActivePolicy};
use crate::admission::{AdmissionSettings, PolicyStore};
use crate::auth::Authenticator;
use crate::clock::SharedClock;
use crate::config::{Config, PolicySource};
use crate::events::EventLog;
use crate::limits::BodyLimits;
use crate::proxy::upstream::Upstream;
use crate::proxy::Proxy;
use crate::registry::service::UploadLimits;
use crate::registry::storage::fs::FsStorage;
use crate::registry::storage::{Storage, StorageError};
use crate::registry::Registry;
use crate::tls;

/// How often stale uploads are looked for.
const UPLOAD_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// TLS handshakes one worker runs at once (actix's default is 256). A connection that never sends a ClientHello
/// holds a slot until [`TLS_HANDSHAKE_TIMEOUT`]; with 256, 600 such connections made every new client wait for the
/// timeout. A pending handshake costs a socket and a few KB of TLS state, so 1024 a worker stays a few MB.
const TLS_HANDSHAKES_PER_WORKER: usize = 1024;

/// Longest a TLS handshake may take (actix's default, made explicit): it bounds how long an idle connection holds a
/// handshake slot.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pending connections the kernel queues before berth accepts them.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    Storage {
        path: std::path::PathBuf,
        #[source]
        source: crate::registry::storage::StorageError,
    },
    /// The policy file is missing or invalid.
    #[error(transparent)]
    Policy(#[from] source::SourceError),
    /// No Kubernetes client for the policy ConfigMap.
    #[error("kubernetes client for the policy ConfigMap: {0}")]
    Kube(#[from] kube::Error),
    /// No Kubernetes client for the pod watch (`--watch-pods`, on by default in a cluster).
    #[error("kubernetes client for the pod watch (--watch-pods=false turns it off): {0}")]
    PodWatch(#[source] kube::Error),
    /// Certificates could not be generated or loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The managed webhook certificates could not be set up.
    #[error("managed webhook certificates: {0}")]
    Certs(#[from] crate::cluster::webhook_certs::CertsError),
    /// An upstream of the proxy cannot be set up.
    #[error("proxy: {0}")]
    Proxy(#[source] crate::proxy::upstream::http::UpstreamError),
    /// A notification endpoint's HTTP client cannot be set up.
    #[error(transparent)]
    Notifications(#[from] crate::events::notify::NotifyError),
    /// Authentication could not be set up (the htpasswd file, the token key, the TokenReview client).
    #[error("authentication: {0}")]
    Auth(#[from] crate::auth::authenticator::AuthSetupError),
    /// The SIGTERM/SIGINT handlers could not be installed.
    #[error("installing the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The listener could not be bound, or the server failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The state every request shares, built once from a [`Config`] and the parts a test replaces (the storage and the
/// clock): the registry service, the proxy, the admission policy and settings, and the body limits. [`serve`] mounts
/// it in every worker; the in-process tests mount the same with `actix_web::test::init_service`. Background tasks
/// (the upload sweep, the policy watch, certificate reloads) are not part of it: [`serve`] starts them.
#[derive(Clone)]
pub struct AppState {
    pub registry: web::Data<Registry>,
    pub proxy: web::Data<Proxy>,
    /// The policy read at start (a policy file, or the built-in default until a watched ConfigMap is read).
    pub policy: web::Data<PolicyStore>,
    pub settings: web::Data<AdmissionSettings>,
    pub body_limits: web::Data<BodyLimits>,
    /// Who is asking: htpasswd users, ServiceAccount tokens, berth's tokens (disabled when auth is off).
    pub auth: web::Data<Authenticator>,
    /// The event log (off with `--no-event-log`): what was pushed, pulled, admitted and denied, by whom.
    pub events: web::Data<EventLog>,
    /// What runs in the cluster (filled by the pod watch in a cluster; empty elsewhere).
    pub running: web::Data<crate::cluster::running::RunningImages>,
    /// The open `/berth/v1/events` streams, per reader and in all (each is capped).
    pub event_streams: web::Data<crate::events::routes::StreamLimits>,
    /// The notification endpoints and their progress ([`serve`] starts the delivery; `/readyz` shows it).
    pub notifications: web::Data<crate::events::notify::Notifications>,
    /// `GET /metrics`: every family, registered once; modules without a request hold it as an `Arc`.
    pub metrics: web::Data<crate::events::Metrics>,
    /// The time the registry and the proxy age uploads and cache entries by (`serve` and the tests choose it here).
    pub clock: SharedClock,
}

impl AppState {
    /// Opens the registry service over `storage` (recovering interrupted uploads), the proxy of the configured
    /// upstreams over HTTP (loading its usage records), the policy at start and the admission settings. Starts
    /// nothing in the background.
    pub async fn build(
        config: &Config,
        storage: Arc<dyn Storage>,
        clock: SharedClock,
    ) -> Result<AppState, ServeError> {
        AppState::assemble(config, storage, clock, None).await
    }

    /// Like [`AppState::build`], but the proxy serves `upstreams` (the in-process tests' fakes) instead of the
    /// configured HTTP upstreams: `config.proxy.upstreams` is not read, the rest of the proxy config
    /// (`maxSize`) applies. The admission settings know the upstreams given here, as `build` knows the configured
    /// ones.
    pub async fn with_upstreams(
        config: &Config,
        storage: Arc<dyn Storage>,
        clock: SharedClock,
        upstreams: Vec<Arc<dyn Upstream>>,
    ) -> Result<AppState, ServeError> {
        AppState::assemble(config, storage, clock, Some(upstreams)).await
    }

    /// [`AppState::build`] with the proxy's upstreams given, or (`None`) made from the config.
    async fn assemble(
        config: &Config,
        storage: Arc<dyn Storage>,
        clock: SharedClock,
        upstreams: Option<Vec<Arc<dyn Upstream>>>,
    ) -> Result<AppState, ServeError> {
        let limits = &config.limits;
        let registry = web::Data::new(
            Registry::with_limits(
                storage,
                UploadLimits {
                    max_sessions: limits.max_upload_sessions,
                    max_streams: limits.max_concurrent_uploads,
                },
            )
            .with_clock(clock.clone()),
        );
        let recovered = registry
            .recover_uploads()
            .await
            .map_err(|e| ServeError::Storage {
                path: config.data_dir.clone(),
                source: StorageError::Corrupt(format!("listing uploads: {e}")),
            })?;
        if recovered.deleted > 0 {
            log::info!(
                "deleted {} interrupted uploads that cannot be resumed; {} upload sessions kept",
                recovered.deleted,
                recovered.kept
            );
        }
        let body_limits = web::Data::new(BodyLimits::new(
            limits.body_idle_timeout,
            limits.body_timeout,
            usize::try_from(limits.body_memory).unwrap_or(usize::MAX),
        ));
        let upstreams = match upstreams {
            Some(upstreams) => upstreams,
            None => Proxy::http_upstreams(&config.proxy).map_err(ServeError::Proxy)?,
        };
        let metrics = web::Data::new(crate::events::Metrics::new());
        let events = if config.events.enabled {
            crate::events::open_in(&config.data_dir, &config.events.instance, clock.clone())
        } else {
            EventLog::off()
        };
        let proxy = Proxy::observed(
            upstreams,
            config.proxy.max_size,
            registry.clone().into_inner(),
            clock.clone(),
            metrics.clone().into_inner(),
            events.clone(),
        );
        proxy.load_usage().await.map_err(|e| {
            ServeError::Proxy(crate::proxy::upstream::http::UpstreamError::Setup {
                upstream: "(cache)".into(),
                why: e.to_string(),
            })
        })?;
        let upstreams: Vec<&str> = proxy.upstream_names().collect();
        if !upstreams.is_empty() {
            log::info!(
                "proxying upstreams {} under /v2/proxy/<upstream>/ and ?ns=<upstream>",
                upstreams.join(", ")
            );
        }
        let policy = web::Data::new(PolicyStore::new(initial_policy(&config.policy)?));
        // berth's own addresses: the node proxy and the default Service names (in `Scope::new`), the names of its
        // managed certificate (the Service it is reached by) and every `--san`.
        let own_names = config
            .managed_certs
            .iter()
            .flat_map(|m| m.names.iter())
            .chain(&config.sans)
            .cloned();
        let auth = web::Data::new(
            Authenticator::from_config(&config.auth, &config.cert_dir, clock.clone()).await?,
        );
        let settings = web::Data::new(
            AdmissionSettings::new(&config.namespace)
                .with_hosts(own_names)
                // The upstreams the proxy serves (the configured ones, or a test's), so the two never disagree.
                .with_proxy_upstreams(proxy.upstream_names().map(str::to_owned))
                // With auth on, a pod may only run what its ServiceAccount may pull from berth.
                .authorizing_pulls(auth.enabled()),
        );
        Ok(AppState {
            registry,
            proxy: web::Data::new(proxy),
            policy,
            settings,
            body_limits,
            auth,
            events: web::Data::new(events),
            running: web::Data::new(crate::cluster::running::RunningImages::new()),
            event_streams: web::Data::new(crate::events::routes::StreamLimits::default()),
            notifications: web::Data::new(crate::events::notify::Notifications::new(
                &config.notifications,
            )?),
            metrics,
            clock,
        })
    }

    /// Mounts the state and every route ([`crate::configure`]) behind the middleware each request must pass (the
    /// body limits). For `App::new().configure(|cfg| state.configure(cfg))`; the data is registered on the app, so
    /// middleware the caller wraps around it (the access log) sees it too.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.registry.clone())
            .app_data(self.proxy.clone())
            .app_data(self.policy.clone())
            .app_data(self.settings.clone())
            .app_data(self.body_limits.clone())
            .app_data(self.auth.clone())
            .app_data(self.events.clone())
            .app_data(self.running.clone())
            .app_data(self.event_streams.clone())
            .app_data(self.notifications.clone())
            .app_data(self.metrics.clone())
            // A scope matching every path, so the body limits wrap every route (and the 404 of no route), and the
            // request metrics wrap the body limits (a refused body is counted too).
            .service(
                web::scope("")
                    .wrap(from_fn(crate::limits::limit_bodies))
                    .wrap(from_fn(crate::events::metrics::count_requests))
                    .configure(crate::configure),
            );
    }
}

/// The access log: one line per request with the client, the request line, the status, the bytes sent, the
/// duration and, quoted last, who asked ([`logged_identity`]).
fn access_log() -> Logger {
    Logger::new(r#"%a "%r" %s %b %Dms "%{identity}xo""#)
        .custom_response_replace("identity", |res| logged_identity(res.request()))
}

/// The identity that asked, as the front door verified it (`node-proxy:node-1 (serviceaccount:…)`,
/// `serviceaccount:team-a/ci`, `anonymous`; refused requests too), or `-` when none was checked (auth off, a route
/// outside `/v2`, credentials that did not verify).
fn logged_identity(req: &actix_web::HttpRequest) -> String {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<crate::auth::Identity>()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// Runs the server until it is told to stop.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let storage = FsStorage::open(&config.data_dir).map_err(|source| ServeError::Storage {
        path: config.data_dir.clone(),
        source,
    })?;
    // The certificates (and, in a cluster, the token signing key from the managed Secret) are in the cert dir
    // before the state reads the token key from there.
    if !config.plain_http {
        match &config.managed_certs {
            Some(managed) => start_managed_certs(&config, managed).await?,
            None => {
                tls::ensure_serving_cert(&config.cert_dir, &config.sans)?;
            }
        }
    }
    let state = AppState::build(&config, Arc::new(storage), crate::clock::system()).await?;
    watch_policy(&config, &state.policy).await?;
    if config.watch_pods {
        start_pod_watch(&state).await?;
    }
    if let Some(htpasswd) = state.auth.htpasswd() {
        actix_web::rt::spawn(htpasswd.clone().watch());
    }
    if !state.auth.enabled() {
        log::warn!("authentication is off (no --htpasswd, no --token-review): anyone who reaches berth may push and pull");
    }

    if state.events.enabled() {
        let events = state.events.get_ref().clone();
        actix_web::rt::spawn(events.prune_forever(config.events.retention));
    } else {
        log::warn!("the event log is off (--no-event-log): pushes, pulls and admission decisions are not recorded");
    }
    let events = state.events.clone();
    let delivery = state.notifications.start(state.events.get_ref());

    let sweeper = state.registry.clone();
    let max_age = config.upload_max_age;
    actix_web::rt::spawn(async move {
        loop {
            match sweeper.expire_uploads(max_age).await {
                Ok(0) => {}
                Ok(n) => log::info!("expired {n} uploads older than {max_age:?}"),
                Err(e) => log::warn!("expiring stale uploads: {e}"),
            }
            tokio::time::sleep(UPLOAD_SWEEP_INTERVAL).await;
        }
    });

    let server = HttpServer::new(move || {
        App::new()
            .wrap(access_log())
            .configure(|cfg| state.configure(cfg))
    })
    .workers(config.workers)
    .max_connection_rate(TLS_HANDSHAKES_PER_WORKER)
    .tls_handshake_timeout(TLS_HANDSHAKE_TIMEOUT)
    .shutdown_timeout(config.shutdown_timeout.as_secs())
    .shutdown_signal(shutdown_requested().map_err(ServeError::Signals)?);

    let addr = config.listen;
    let listen_error = |source| ServeError::Listen { addr, source };
    let listener = listener(addr, config.limits.send_timeout).map_err(listen_error)?;
    let server = if config.plain_http {
        log::warn!("serving plain HTTP on {addr}: use this only for local development or behind a TLS-terminating proxy");
        server.listen(listener).map_err(listen_error)?
    } else {
        let cert = tls::ReloadingCert::load(&config.cert_dir)?;
        actix_web::rt::spawn(cert.clone().watch());
        let tls_config = tls::server_config(cert)?;
        log::info!(
            "serving HTTPS on {addr} with the certificate in {} (clients trust {})",
            config.cert_dir.display(),
            config.cert_dir.join(tls::CA_CERT).display()
        );
        server
            .listen_rustls_0_23(listener, tls_config)
            .map_err(listen_error)?
    };
    log::info!(
        "berth listening on {addr}, data in {}",
        config.data_dir.display()
    );
    let served = server.run().await.map_err(listen_error);
    // The endpoints' cursors are saved, so a restart sends nothing twice (a kill sends the last second again).
    delivery.stop().await;
    // Every event recorded by the requests that finished is committed before the process ends.
    events.shutdown().await;
    served?;
    log::info!("berth stopped");
    Ok(())
}

/// The listening socket. Its `TCP_USER_TIMEOUT` (inherited by every accepted connection on Linux) drops a
/// connection whose sent data stays unacknowledged for `send_timeout`, a client that stopped reading (a zero
/// receive window) included: actix-web has no write timeout, and without this a stalled reader holds its response
/// for as long as the kernel retries (about 15 minutes).
fn listener(
    addr: std::net::SocketAddr,
    send_timeout: Duration,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_user_timeout(Some(send_timeout))?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Resolves on the first SIGTERM or SIGINT. Replaces actix's own handlers, which cut in-flight requests on SIGINT
/// (a forced stop); berth lets them finish on both, within the shutdown timeout.
fn shutdown_requested() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log::info!("{name} received: no new connections, finishing in-flight requests");
    })
}

/// The policy berth starts with: a policy file is read now (a bad one stops the start); a ConfigMap applies once
/// [`watch_policy`] has read it, the built-in default until then.
fn initial_policy(policy: &PolicySource) -> Result<ActivePolicy, ServeError> {
    Ok(match policy {
        PolicySource::Default | PolicySource::ConfigMap { .. } => ActivePolicy::builtin_default(),
        PolicySource::File(path) => source::load_file(path)?,
    })
}

/// Starts watching the policy's source, swapping what it reads into `store`.
async fn watch_policy(config: &Config, store: &web::Data<PolicyStore>) -> Result<(), ServeError> {
    match &config.policy {
        PolicySource::Default => {}
        PolicySource::File(path) => {
            actix_web::rt::spawn(source::watch_file(store.clone().into_inner(), path.clone()));
        }
        PolicySource::ConfigMap { namespace, name } => {
            let client = kube::Client::try_default().await?;
            log::info!("watching the policy ConfigMap {namespace}/{name}; until it is read, the built-in default applies");
            let watched = source::watch_configmap(
                store.clone().into_inner(),
                client,
                namespace.clone(),
                name.clone(),
            );
            actix_web::rt::spawn(watched);
        }
    }
    Ok(())
}

/// Starts the pod watch (what runs where) over the in-cluster config or `KUBECONFIG`, filling `state.running`.
async fn start_pod_watch(state: &AppState) -> Result<(), ServeError> {
    let client = kube::Client::try_default()
        .await
        .map_err(ServeError::PodWatch)?;
    log::info!(
        "watching the pods of every namespace (what runs where; --watch-pods=false turns it off)"
    );
    actix_web::rt::spawn(crate::cluster::pods::watch(
        client,
        state.running.clone().into_inner(),
        state.settings.clone().into_inner(),
        state.policy.clone().into_inner(),
    ));
    Ok(())
}

/// Makes the managed Secret valid, installs its serving pair in the cert dir, patches the caBundles, and keeps doing
/// so in the background. A failure here stops the start (the pod restarts and tries again).
async fn start_managed_certs(
    config: &Config,
    managed: &crate::config::ManagedCerts,
) -> Result<(), ServeError> {
    let client = kube::Client::try_default().await?;
    let certs = crate::cluster::WebhookCerts {
        secret_namespace: managed.secret_namespace.clone(),
        secret_name: managed.secret_name.clone(),
        webhook_config: managed.webhook_config.clone(),
        names: managed.names.clone(),
        cert_dir: config.cert_dir.clone(),
    };
    let bundle = certs.ensure(&client).await?;
    if let Err(e) = certs.patch_ca_bundles(&client, &bundle.ca_cert).await {
        log::warn!("{e}; will retry");
    }
    log::info!(
        "webhook certificate from secret {}/{} covers {}",
        managed.secret_namespace,
        managed.secret_name,
        managed.names.join(", ")
    );
    actix_web::rt::spawn(certs.maintain(client));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_names_the_authorized_identity() {
        use actix_web::HttpMessage;
        let check = |identity: Option<crate::auth::Identity>, expected: &str| {
            let req = actix_web::test::TestRequest::default().to_http_request();
            if let Some(identity) = identity {
                req.extensions_mut().insert(identity);
            }
            assert_eq!(logged_identity(&req), expected);
        };
        check(None, "-");
        check(Some(crate::auth::Identity::Anonymous), "anonymous");
        check(
            Some(crate::auth::Identity::NodeProxy {
                namespace: "berth-system".into(),
                name: "berth-node-proxy".into(),
                node: Some("node-1".into()),
            }),
            "node-proxy:node-1 (serviceaccount:berth-system/berth-node-proxy)",
        );
        check(
            Some(crate::auth::Identity::service_account("team-a", "ci", &[])),
            "serviceaccount:team-a/ci",
        );
    }

    #[test]
    fn accepted_connections_inherit_the_send_timeout() {
        let timeout = Duration::from_secs(7);
        let listener = listener("127.0.0.1:0".parse().expect("addr"), timeout).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        listener.set_nonblocking(false).expect("blocking");
        let (accepted, _) = listener.accept().expect("accept");
        assert_eq!(
            socket2::SockRef::from(&accepted)
                .tcp_user_timeout()
                .expect("getsockopt"),
            Some(timeout)
        );
    }
}
