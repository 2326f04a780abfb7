//! The in-process tier: berth's whole HTTP service — the state `serve` builds ([`AppState`]), every route, the
//! front door, the handlers and the registry service — mounted with `actix_web::test::init_service`, no process
//! and no socket. Fast, and time is a [`ManualClock`] the test moves, so nothing here sleeps. What needs a real
//! process (clients, crashes, TLS, the API server) stays in the other modules.
//!
//! [`InProcess::start`] takes the three things a test may replace: the config, the storage and the clock;
//! [`Fixture::new`] is the usual set (defaults, the memory backend, a manual clock), [`Fixture::on_filesystem`]
//! the same over a fresh data directory for a test that needs the filesystem backend. [`Fixture::restart`] is
//! the in-process equivalent of restarting berth (a new state over the same storage, which recovers the uploads
//! it finds) and [`Fixture::sweep_uploads`] runs the upload sweep `serve` runs in the background, now.

mod admission;
mod auth;
mod cache;
mod events;
mod events_api;
mod fake_upstream;
mod front_door;
mod immutable_tags;
mod uploads;

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServiceResponse;
use actix_web::http::header::HeaderMap;
use actix_web::test::{self, TestRequest};
use actix_web::App;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use serde_json::Value;

use berth::clock::{ManualClock, SharedClock};
use berth::config::{Config, Limits, PolicySource};
use berth::registry::storage::fs::FsStorage;
use berth::registry::storage::memory::MemoryStorage;
use berth::registry::storage::Storage;
use berth::server::AppState;

/// Sends one request through the mounted service.
type Call = dyn Fn(TestRequest) -> LocalBoxFuture<'static, ServiceResponse>;

/// berth's HTTP service, mounted in this thread's actix system.
pub struct InProcess {
    /// The state the service was built from (the registry service, the proxy, …), for what a test checks beside
    /// HTTP.
    pub state: AppState,
    call: Rc<Call>,
}

/// [`InProcess`] with the default config and a manual clock, over the memory backend (or the filesystem's).
pub struct Fixture {
    pub berth: InProcess,
    /// The one clock of the storage and the state.
    pub clock: Arc<ManualClock>,
    pub config: Config,
    /// What `berth` runs over; [`Fixture::restart`] starts berth again over it.
    pub storage: Arc<dyn Storage>,
    /// Holds the data directory (where the filesystem backend keeps its content; the config names it either way).
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Builds the state from `config`, `storage` and `clock` as `serve` does, and mounts it as `serve` does (minus
    /// the access log and the listener).
    pub async fn start(
        config: &Config,
        storage: Arc<dyn Storage>,
        clock: SharedClock,
    ) -> InProcess {
        let state = AppState::build(config, storage, clock)
            .await
            .unwrap_or_else(|e| panic!("building the server state: {e}"));
        InProcess::mount(state).await
    }

    /// Mounts a state built elsewhere (with injected upstreams, say) as `serve` mounts its own.
    pub async fn mount(state: AppState) -> InProcess {
        let mounted = state.clone();
        let service =
            Rc::new(test::init_service(App::new().configure(|cfg| mounted.configure(cfg))).await);
        let call = move |request: TestRequest| -> LocalBoxFuture<'static, ServiceResponse> {
            let service = service.clone();
            Box::pin(async move { test::call_service(&*service, request.to_request()).await })
        };
        InProcess {
            state,
            call: Rc::new(call),
        }
    }

    /// Sends `request` and returns the response (an error response included).
    pub async fn call(&self, request: TestRequest) -> ServiceResponse {
        (self.call)(request).await
    }

    /// Sends `request` and reads the whole response.
    pub async fn send(&self, request: TestRequest) -> Answer {
        let response = self.call(request).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = test::read_body(response).await;
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header's value, or `""` when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts an OCI error response (status and code) and returns its message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{text}");
        let body: Value =
            serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert_eq!(body["errors"][0]["code"], code, "{body}");
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Fixture {
    /// Defaults, the memory backend and a manual clock.
    pub async fn new() -> Fixture {
        Fixture::with_config(|_| {}).await
    }

    /// Like [`Fixture::new`], with `change` applied to the default config first.
    pub async fn with_config(change: impl FnOnce(&mut Config)) -> Fixture {
        Fixture::build(change, |_, clock| {
            Arc::new(MemoryStorage::with_clock(clock))
        })
        .await
    }

    /// Like [`Fixture::with_config`], over the filesystem backend in a fresh data directory (its upload times are
    /// the files' times, which the manual clock does not move).
    pub async fn on_filesystem(change: impl FnOnce(&mut Config)) -> Fixture {
        Fixture::build(change, |config, _| fs_storage(&config.data_dir)).await
    }

    async fn build(
        change: impl FnOnce(&mut Config),
        storage: impl FnOnce(&Config, SharedClock) -> Arc<dyn Storage>,
    ) -> Fixture {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = config(&dir.path().join("data"));
        change(&mut config);
        let clock = ManualClock::new();
        let storage = storage(&config, clock.clone());
        let berth = InProcess::start(&config, storage.clone(), clock.clone()).await;
        Fixture {
            berth,
            clock,
            config,
            storage,
            _dir: dir,
        }
    }

    /// Stops this berth and starts a new one over the same storage and clock: what a restart of the process keeps
    /// (the content, the uploads) stays, what lives in its memory (upload sessions, running hashes) is built anew
    /// (`AppState::build` recovers the uploads it finds).
    pub async fn restart(&mut self) {
        self.berth = InProcess::start(&self.config, self.storage.clone(), self.clock.clone()).await;
    }

    /// Runs the upload sweep `serve` runs every few minutes, with the config's `upload_max_age`; returns how many
    /// uploads it expired.
    pub async fn sweep_uploads(&self) -> usize {
        self.berth
            .state
            .registry
            .expire_uploads(self.config.upload_max_age)
            .await
            .unwrap_or_else(|e| panic!("sweeping uploads: {e}"))
    }
}

/// The config `berth serve --plain-http --data-dir <data_dir>` would have, with no policy file and no proxy.
pub fn config(data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: data_dir.to_owned(),
        cert_dir: data_dir.with_extension("certs"),
        sans: Vec::new(),
        plain_http: true,
        upload_max_age: Duration::from_secs(24 * 3600),
        shutdown_timeout: Duration::from_secs(25),
        workers: 1,
        limits: Limits::default(),
        policy: PolicySource::Default,
        namespace: "berth".into(),
        managed_certs: None,
        proxy: Default::default(),
        auth: Default::default(),
        events: Default::default(),
        watch_pods: false,
        notifications: Default::default(),
    }
}

/// The filesystem backend over `data_dir`.
pub fn fs_storage(data_dir: &Path) -> Arc<dyn Storage> {
    Arc::new(FsStorage::open(data_dir).expect("opening the data directory"))
}
