//! berth's metrics, served at `GET /metrics` in the Prometheus text format (OpenMetrics when the scraper asks for
//! it): requests by route template, method and status, their durations and bytes, admission decisions by rule,
//! the pull-through cache's hits, misses, errors and upstream bytes, uploads in progress, the event log's counts,
//! policy reloads, logins, and the process's memory, descriptors and start time. The node proxy has its own
//! ([`NodeProxyMetrics`]) on its own listener.
//!
//! The families are registered once ([`Metrics::new`]) and shared (`web::Data<Metrics>` in the app, an
//! `Arc<Metrics>` where there is no request, such as the proxy). Values other modules already count (the event
//! log's stats, the upload sessions, policy reloads, logins) are read when scraped ([`Scrape`]), not counted
//! twice.
//!
//! Must not: label anything by a repository, a tag, a digest or an identity (unbounded, and not for a scraper's
//! eyes: `/metrics` is open like `/healthz`); allocate or look up a family's map on the request path for the
//! request metrics (their series are resolved once and kept, see [`HttpMetrics`]; only a status outside the common
//! ones is looked up).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::v2::route::RouteKind;

/// Upper bounds of the duration histograms, in seconds: 1 ms to 30 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Most distinct `rule` values the admission counter keeps; later ones are counted as `other`. A policy has a
/// bounded number of rules, but policies are reloaded, and every name a reload brings stays in the counter.
pub const MAX_RULE_LABELS: usize = 200;

/// `Content-Type` of the Prometheus text format, the default answer.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of the OpenMetrics text format, answered when the scraper's `Accept` asks for it.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a request is labelled by: a route template, never a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteLabel {
    /// A registry route (`/v2/{name}/manifests/{reference}`, …).
    Registry(RouteKind),
    Validate,
    Mutate,
    AuthToken,
    Events,
    Images,
    Healthz,
    Readyz,
    Metrics,
    /// Anything else (a 404, a path outside the registry's grammar).
    Other,
}

/// The routes that are not registry routes, in index order after [`RouteKind::ALL`].
const OTHER_ROUTES: [RouteLabel; 9] = [
    RouteLabel::Validate,
    RouteLabel::Mutate,
    RouteLabel::AuthToken,
    RouteLabel::Events,
    RouteLabel::Images,
    RouteLabel::Healthz,
    RouteLabel::Readyz,
    RouteLabel::Metrics,
    RouteLabel::Other,
];

/// How many route labels there are.
const ROUTES: usize = RouteKind::ALL.len() + OTHER_ROUTES.len();

impl RouteLabel {
    /// The label of a request for `path`. Pure, and allocates nothing.
    pub fn of_path(path: &str) -> RouteLabel {
        if path.starts_with("/v2") {
            return RouteKind::of_path(path).map_or(RouteLabel::Other, RouteLabel::Registry);
        }
        match path {
            "/validate" => RouteLabel::Validate,
            "/mutate" => RouteLabel::Mutate,
            "/auth/token" => RouteLabel::AuthToken,
            "/berth/v1/events" => RouteLabel::Events,
            "/berth/v1/images" => RouteLabel::Images,
            "/healthz" => RouteLabel::Healthz,
            "/readyz" => RouteLabel::Readyz,
            "/metrics" => RouteLabel::Metrics,
            _ => RouteLabel::Other,
        }
    }

    /// The label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Registry(kind) => kind.template(),
            RouteLabel::Validate => "/validate",
            RouteLabel::Mutate => "/mutate",
            RouteLabel::AuthToken => "/auth/token",
            RouteLabel::Events => "/berth/v1/events",
            RouteLabel::Images => "/berth/v1/images",
            RouteLabel::Healthz => "/healthz",
            RouteLabel::Readyz => "/readyz",
            RouteLabel::Metrics => "/metrics",
            RouteLabel::Other => "other",
        }
    }

    fn index(self) -> usize {
        match self {
            RouteLabel::Registry(kind) => RouteKind::ALL
                .iter()
                .position(|k| *k == kind)
                .unwrap_or_default(),
            other => {
                RouteKind::ALL.len()
                    + OTHER_ROUTES
                        .iter()
                        .position(|r| *r == other)
                        .unwrap_or(OTHER_ROUTES.len() - 1)
            }
        }
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

/// A request's method as a label: the registry's methods, and `other` for anything else (a client chooses the
/// method, so it must not make new series).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodLabel {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

const METHODS: usize = 8;

impl MethodLabel {
    pub fn of(method: &Method) -> MethodLabel {
        match *method {
            Method::GET => MethodLabel::Get,
            Method::HEAD => MethodLabel::Head,
            Method::POST => MethodLabel::Post,
            Method::PUT => MethodLabel::Put,
            Method::PATCH => MethodLabel::Patch,
            Method::DELETE => MethodLabel::Delete,
            Method::OPTIONS => MethodLabel::Options,
            _ => MethodLabel::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    method: MethodLabel,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteMethodLabels {
    route: RouteLabel,
    method: MethodLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: RouteLabel,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The statuses whose counters a (route, method) keeps at hand; others are looked up in the family.
const COMMON_STATUSES: [u16; 20] = [
    200, 201, 202, 204, 206, 304, 307, 400, 401, 403, 404, 405, 409, 413, 416, 429, 500, 502, 503,
    504,
];

/// The series of one (route, method), resolved on its first request.
struct RouteMethodSeries {
    duration: Histogram,
    statuses: [OnceLock<Counter>; COMMON_STATUSES.len()],
}

/// The series of one route.
struct RouteSeries {
    request_bytes: Counter,
    response_bytes: Counter,
}

/// The request metrics, shared by berth and the node proxy: four families, and a table of their series by
/// (route, method) filled on first use, so a request costs an index, atomic adds and one histogram observation.
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<RouteMethodLabels>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    by_route_method: Box<[OnceLock<RouteMethodSeries>]>,
    by_route: Box<[OnceLock<RouteSeries>]>,
}

impl HttpMetrics {
    /// The families, registered in `registry` under `prefix` (`berth_http`, `berth_node_proxy_http`).
    fn register(registry: &mut Registry, prefix: &str) -> HttpMetrics {
        let metrics = HttpMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            by_route_method: (0..ROUTES * METHODS).map(|_| OnceLock::new()).collect(),
            by_route: (0..ROUTES).map(|_| OnceLock::new()).collect(),
        };
        registry.register(
            format!("{prefix}_requests"),
            "Requests answered, by route template, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            format!("{prefix}_request_duration_seconds"),
            "Time from a request's arrival to its response head, by route template and method",
            metrics.durations.clone(),
        );
        registry.register(
            format!("{prefix}_request_bytes"),
            "Request body bytes (Content-Length of requests answered below 400), by route template",
            metrics.request_bytes.clone(),
        );
        registry.register(
            format!("{prefix}_response_bytes"),
            "Response body bytes sent (streamed bodies as they are sent), by route template",
            metrics.response_bytes.clone(),
        );
        metrics
    }

    fn route_method(&self, route: RouteLabel, method: MethodLabel) -> &RouteMethodSeries {
        let slot = &self.by_route_method[route.index() * METHODS + method.index()];
        slot.get_or_init(|| RouteMethodSeries {
            duration: self
                .durations
                .get_or_create_owned(&RouteMethodLabels { route, method }),
            statuses: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    fn route(&self, route: RouteLabel) -> &RouteSeries {
        self.by_route[route.index()].get_or_init(|| {
            let labels = RouteLabels { route };
            RouteSeries {
                request_bytes: self.request_bytes.get_or_create_owned(&labels),
                response_bytes: self.response_bytes.get_or_create_owned(&labels),
            }
        })
    }

    /// Counts one answered request.
    pub fn observe(&self, route: RouteLabel, method: MethodLabel, status: u16, elapsed: Duration) {
        let series = self.route_method(route, method);
        series.duration.observe(elapsed.as_secs_f64());
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => {
                series.statuses[i]
                    .get_or_init(|| {
                        self.requests.get_or_create_owned(&RequestLabels {
                            route,
                            method,
                            status,
                        })
                    })
                    .inc();
            }
            None => {
                self.requests
                    .get_or_create(&RequestLabels {
                        route,
                        method,
                        status,
                    })
                    .inc();
            }
        }
    }

    /// Counts request body bytes of `route`.
    pub fn request_bytes(&self, route: RouteLabel, bytes: u64) {
        if bytes > 0 {
            self.route(route).request_bytes.inc_by(bytes);
        }
    }

    /// The counter of response bytes of `route`.
    fn response_bytes(&self, route: RouteLabel) -> &Counter {
        &self.route(route).response_bytes
    }
}

/// Which webhook decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Webhook {
    Validate,
    Mutate,
}

impl EncodeLabelValue for Webhook {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Webhook::Validate => "validate",
            Webhook::Mutate => "mutate",
        }
        .encode(encoder)
    }
}

/// What the webhook decided about one image (or, for a review it could not read, about the review).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// `/validate`: the image is allowed.
    Allowed,
    /// `/validate`: allowed with a warning.
    Warned,
    /// `/validate`: denied.
    Denied,
    /// `/mutate`: the image was rewritten.
    Mutated,
    /// `/mutate`: a rewrite matched, but berth cannot serve the target, so the image was left as it is.
    Unavailable,
    /// The review could not be read (and was refused).
    Invalid,
}

impl EncodeLabelValue for Decision {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Decision::Allowed => "allowed",
            Decision::Warned => "warned",
            Decision::Denied => "denied",
            Decision::Mutated => "mutated",
            Decision::Unavailable => "unavailable",
            Decision::Invalid => "invalid",
        }
        .encode(encoder)
    }
}

impl From<crate::admission::policy::Verdict> for Decision {
    fn from(verdict: crate::admission::policy::Verdict) -> Decision {
        use crate::admission::policy::Verdict;
        match verdict {
            Verdict::Allow => Decision::Allowed,
            Verdict::Warn => Decision::Warned,
            Verdict::Deny => Decision::Denied,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AdmissionLabels {
    webhook: Webhook,
    decision: Decision,
    rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    webhook: Webhook,
}

/// How the pull-through cache answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyResult {
    /// From the cache, the upstream not asked for content.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// The upstream failed (unreachable, an error answer, content that did not verify).
    Error,
}

impl EncodeLabelValue for ProxyResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            ProxyResult::Hit => "hit",
            ProxyResult::Miss => "miss",
            ProxyResult::Error => "error",
        }
        .encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProxyLabels {
    upstream: String,
    result: ProxyResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The notification endpoint's name (or its URL without credentials), as its configuration names it.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LoginLabels {
    method: &'static str,
    result: &'static str,
}

/// Values other modules keep, read when `/metrics` is scraped.
#[derive(Debug, Default)]
pub struct Scrape<'a> {
    /// Upload sessions open ([`crate::registry::Registry::upload_sessions`]).
    pub uploads_in_progress: usize,
    /// The event log's counts (`None` when it is off).
    pub events: Option<&'a crate::events::log::EventStats>,
    /// Policies loaded since start, and policy texts refused.
    pub policy_reloads: (u64, u64),
    /// Credential checks by (method, result, count) ([`crate::auth::Authenticator::login_counts`]).
    pub logins: Vec<(&'static str, &'static str, u64)>,
}

/// Every metric berth serves. Built once and shared; see the module doc.
pub struct Metrics {
    registry: Registry,
    /// The request metrics (`berth_http_*`), counted by [`count_requests`].
    pub http: HttpMetrics,
    admission: Family<AdmissionLabels, Counter>,
    admission_rules: Mutex<HashSet<String>>,
    webhook_durations: HistogramFamily<WebhookLabels>,
    proxy_requests: Family<ProxyLabels, Counter>,
    upstream_bytes: Family<UpstreamLabels, Counter>,
    uploads_in_progress: Gauge,
    events_written: Counter,
    events_dropped: Counter,
    events_queued: Gauge,
    /// `berth_notification_lag_events{endpoint}`: events committed but not yet delivered to an endpoint. The
    /// notifier sets it (see [`Metrics::set_notification_lag`]).
    notification_lag: Family<EndpointLabels, Gauge>,
    policy_reloads: Counter,
    policy_reload_errors: Counter,
    logins: Family<LoginLabels, Counter>,
    process: ProcessMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry, "berth_http");
        let metrics = Metrics {
            http,
            admission: Family::default(),
            admission_rules: Mutex::new(HashSet::new()),
            webhook_durations: Family::new_with_constructor(duration_histogram),
            proxy_requests: Family::default(),
            upstream_bytes: Family::default(),
            uploads_in_progress: Gauge::default(),
            events_written: Counter::default(),
            events_dropped: Counter::default(),
            events_queued: Gauge::default(),
            notification_lag: Family::default(),
            policy_reloads: Counter::default(),
            policy_reload_errors: Counter::default(),
            logins: Family::default(),
            process: ProcessMetrics::register(&mut registry),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "berth_admission_decisions",
            "Admission decisions, per image decided, by webhook, decision and policy rule (none: no rule matched)",
            metrics.admission.clone(),
        );
        r.register(
            "berth_admission_review_duration_seconds",
            "Time to answer an AdmissionReview, by webhook",
            metrics.webhook_durations.clone(),
        );
        r.register(
            "berth_proxy_requests",
            "Pull-through cache lookups by upstream and result (hit, miss, error)",
            metrics.proxy_requests.clone(),
        );
        r.register(
            "berth_proxy_upstream_bytes",
            "Bytes fetched from each upstream",
            metrics.upstream_bytes.clone(),
        );
        r.register(
            "berth_uploads_in_progress",
            "Upload sessions open",
            metrics.uploads_in_progress.clone(),
        );
        r.register(
            "berth_events_written",
            "Events committed to the event log",
            metrics.events_written.clone(),
        );
        r.register(
            "berth_events_dropped",
            "Events lost: the queue was full or the store refused them",
            metrics.events_dropped.clone(),
        );
        r.register(
            "berth_events_queued",
            "Events waiting to be committed",
            metrics.events_queued.clone(),
        );
        r.register(
            "berth_notification_lag_events",
            "Events committed but not yet delivered, by notification endpoint",
            metrics.notification_lag.clone(),
        );
        r.register(
            "berth_policy_reloads",
            "Policies loaded after the first (a changed file or ConfigMap)",
            metrics.policy_reloads.clone(),
        );
        r.register(
            "berth_policy_reload_errors",
            "Policy texts refused (the last good policy stays in force)",
            metrics.policy_reload_errors.clone(),
        );
        r.register(
            "berth_logins",
            "Credential checks by method (basic, bearer, token-review) and result",
            metrics.logins.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts one admission decision. `rule` is the policy rule (or rewrite) that decided, `None` when none
    /// matched; beyond [`MAX_RULE_LABELS`] distinct names, new ones are counted as `other`.
    pub fn admission_decision(&self, webhook: Webhook, decision: Decision, rule: Option<&str>) {
        let rule = match rule {
            None => "none".to_owned(),
            Some(rule) => {
                let mut seen = self
                    .admission_rules
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if seen.contains(rule) {
                    rule.to_owned()
                } else if seen.len() < MAX_RULE_LABELS {
                    seen.insert(rule.to_owned());
                    rule.to_owned()
                } else {
                    "other".to_owned()
                }
            }
        };
        self.admission
            .get_or_create(&AdmissionLabels {
                webhook,
                decision,
                rule,
            })
            .inc();
    }

    /// Observes the time one AdmissionReview took.
    pub fn webhook_duration(&self, webhook: Webhook, elapsed: Duration) {
        self.webhook_durations
            .get_or_create(&WebhookLabels { webhook })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one lookup of the pull-through cache of `upstream` (a configured upstream's name).
    pub fn proxy_request(&self, upstream: &str, result: ProxyResult) {
        self.proxy_requests
            .get_or_create(&ProxyLabels {
                upstream: upstream.to_owned(),
                result,
            })
            .inc();
    }

    /// The counter of bytes fetched from `upstream`, for a stream to add to as it passes.
    pub fn upstream_bytes(&self, upstream: &str) -> Counter {
        self.upstream_bytes.get_or_create_owned(&UpstreamLabels {
            upstream: upstream.to_owned(),
        })
    }

    /// Sets the lag of notification endpoint `endpoint`: events committed and not yet delivered to it.
    pub fn set_notification_lag(&self, endpoint: &str, lag: u64) {
        self.notification_lag
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// The notification-lag family itself, for a notifier that keeps its endpoints' gauges
    /// (`get_or_create_owned` once per endpoint, then `set`).
    pub fn notification_lag(&self) -> &Family<EndpointLabels, Gauge> {
        &self.notification_lag
    }

    /// The text a scraper gets: `openmetrics` chooses the OpenMetrics text format over Prometheus's 0.0.4.
    pub fn render(
        &self,
        scrape: &Scrape<'_>,
        openmetrics: bool,
    ) -> Result<String, std::fmt::Error> {
        self.uploads_in_progress
            .set(i64::try_from(scrape.uploads_in_progress).unwrap_or(i64::MAX));
        if let Some(events) = scrape.events {
            set_counter(&self.events_written, events.written.load(Ordering::Relaxed));
            set_counter(&self.events_dropped, events.dropped.load(Ordering::Relaxed));
            self.events_queued
                .set(i64::try_from(events.queued.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        }
        set_counter(&self.policy_reloads, scrape.policy_reloads.0);
        set_counter(&self.policy_reload_errors, scrape.policy_reloads.1);
        for (method, result, count) in &scrape.logins {
            set_counter(
                &self.logins.get_or_create(&LoginLabels { method, result }),
                *count,
            );
        }
        self.process.update();
        encode(&self.registry, openmetrics)
    }
}

/// Sets a counter whose count another module keeps (a counter only goes up, and so does the count it mirrors).
fn set_counter(counter: &Counter, value: u64) {
    counter.inner().store(value, Ordering::Relaxed);
}

fn encode(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(16 * 1024);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    }
    Ok(text)
}

/// Whether an `Accept` header asks for OpenMetrics (Prometheus sends it first when it can parse it).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept
            .split(',')
            .any(|part| part.trim().starts_with("application/openmetrics-text"))
    })
}

/// The answer to a scrape: the text in the format asked for, or a 500 saying encoding failed (it cannot for
/// these metrics; a `fmt::Error` from a `String` writer would be a bug).
pub fn scrape_response(text: Result<String, std::fmt::Error>, openmetrics: bool) -> HttpResponse {
    match text {
        Ok(text) => HttpResponse::Ok()
            .content_type(if openmetrics {
                OPENMETRICS_TEXT
            } else {
                PROMETHEUS_TEXT
            })
            .body(text),
        Err(e) => {
            log::error!("encoding the metrics: {e}");
            HttpResponse::InternalServerError().body("the metrics could not be encoded\n")
        }
    }
}

/// The process's resident memory, open descriptors and start time (`process_*`, the names Prometheus's own
/// clients use), read from `/proc` when scraped.
struct ProcessMetrics {
    resident_bytes: Gauge,
    open_fds: Gauge,
    start_time: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> ProcessMetrics {
        let metrics = ProcessMetrics {
            resident_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            start_time: Gauge::default(),
        };
        let started = process_start()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        metrics.start_time.set(started.as_secs_f64());
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            metrics.resident_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            metrics.open_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            metrics.start_time.clone(),
        );
        metrics
    }

    fn update(&self) {
        if let Some(bytes) = resident_bytes() {
            self.resident_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let open = entries.count().saturating_sub(1); // the directory being read is one
            self.open_fds.set(i64::try_from(open).unwrap_or(i64::MAX));
        }
    }
}

/// When the process started: the first time metrics were made (at start, in `serve` and the node proxy).
fn process_start() -> SystemTime {
    static START: OnceLock<SystemTime> = OnceLock::new();
    *START.get_or_init(SystemTime::now)
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` text, in bytes. Pure.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The middleware that counts every request into the [`HttpMetrics`] found in the app data (a
/// `web::Data<Metrics>`, or the node proxy's `web::Data<NodeProxyMetrics>`). Wrap it outside everything that
/// answers (the body limits included), so refused requests are counted too.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody, CountingBody>>, actix_web::Error> {
    let http: Option<Arc<dyn AsHttp>> = match req.app_data::<web::Data<Metrics>>() {
        Some(metrics) => Some(metrics.clone().into_inner()),
        None => req
            .app_data::<web::Data<NodeProxyMetrics>>()
            .map(|m| m.clone().into_inner() as Arc<dyn AsHttp>),
    };
    let Some(http) = http else {
        return next
            .call(req)
            .await
            .map(|res| res.map_body(|_, body| EitherBody::left(BoxBody::new(body))));
    };
    let route = RouteLabel::of_path(req.path());
    let method = MethodLabel::of(req.method());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let started = Instant::now();
    let res = next.call(req).await;
    let metrics = http.http();
    let elapsed = started.elapsed();
    let res = match res {
        Ok(res) => res,
        Err(error) => {
            // Answered by actix from the error: counted with the status it gets, no body counted.
            let status = error.as_response_error().status_code().as_u16();
            metrics.observe(route, method, status, elapsed);
            return Err(error);
        }
    };
    let status = res.status().as_u16();
    metrics.observe(route, method, status, elapsed);
    // A declared length is the client's claim: counted only when the body was taken (below 400), so a refused
    // request cannot inflate (or wrap) the counter with a length it never sent.
    if status < 400 {
        metrics.request_bytes(route, declared);
    }
    if method == MethodLabel::Post {
        http.webhook_duration(route, elapsed);
    }
    let response_bytes = metrics.response_bytes(route).clone();
    // A HEAD answer's body size is the GET's; nothing of it is sent.
    let head = method == MethodLabel::Head;
    Ok(res.map_body(move |_, body| match body.size() {
        _ if head => EitherBody::left(BoxBody::new(body)),
        BodySize::Sized(n) => {
            response_bytes.inc_by(n);
            EitherBody::left(BoxBody::new(body))
        }
        BodySize::None => EitherBody::left(BoxBody::new(body)),
        BodySize::Stream => EitherBody::right(CountingBody {
            inner: BoxBody::new(body),
            sent: response_bytes,
        }),
    }))
}

/// What [`count_requests`] needs of a metrics holder.
trait AsHttp: Send + Sync {
    fn http(&self) -> &HttpMetrics;
    /// Also observes the webhooks' latency (berth only).
    fn webhook_duration(&self, _route: RouteLabel, _elapsed: Duration) {}
}

impl AsHttp for Metrics {
    fn http(&self) -> &HttpMetrics {
        &self.http
    }

    fn webhook_duration(&self, route: RouteLabel, elapsed: Duration) {
        match route {
            RouteLabel::Validate => Metrics::webhook_duration(self, Webhook::Validate, elapsed),
            RouteLabel::Mutate => Metrics::webhook_duration(self, Webhook::Mutate, elapsed),
            _ => {}
        }
    }
}

impl AsHttp for NodeProxyMetrics {
    fn http(&self) -> &HttpMetrics {
        &self.http
    }
}

/// A streamed response body that counts its bytes as they are sent.
pub struct CountingBody {
    inner: BoxBody,
    sent: Counter,
}

impl MessageBody for CountingBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            self.sent.inc_by(chunk.len() as u64);
        }
        polled
    }
}

/// The node proxy's metrics (`berth_node_proxy_*`), on its own listener.
pub struct NodeProxyMetrics {
    registry: Registry,
    /// The requests it answered (`berth_node_proxy_http_*`).
    pub http: HttpMetrics,
    upstream_requests: Family<UpstreamResultLabels, Counter>,
    upstream_in_flight: Gauge,
    process: ProcessMetrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamResultLabels {
    result: &'static str,
}

/// How a request the node proxy forwarded to berth ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardResult {
    /// berth answered (whatever the status).
    Answered,
    /// berth could not be reached (connect, TLS or timeout): the client got a 503.
    Unreachable,
    /// berth refused the node proxy's own token (401).
    Refused,
}

impl Default for NodeProxyMetrics {
    fn default() -> NodeProxyMetrics {
        NodeProxyMetrics::new()
    }
}

impl NodeProxyMetrics {
    pub fn new() -> NodeProxyMetrics {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry, "berth_node_proxy_http");
        let upstream_requests = Family::default();
        let upstream_in_flight = Gauge::default();
        registry.register(
            "berth_node_proxy_upstream_requests",
            "Requests forwarded to berth, by result (answered, unreachable, refused: berth refused the node proxy's token)",
            upstream_requests.clone(),
        );
        registry.register(
            "berth_node_proxy_upstream_in_flight",
            "Requests to berth waiting for or streaming its answer",
            upstream_in_flight.clone(),
        );
        let process = ProcessMetrics::register(&mut registry);
        NodeProxyMetrics {
            registry,
            http,
            upstream_requests,
            upstream_in_flight,
            process,
        }
    }

    /// Counts one forwarded request's result.
    pub fn forwarded(&self, result: ForwardResult) {
        let result = match result {
            ForwardResult::Answered => "answered",
            ForwardResult::Unreachable => "unreachable",
            ForwardResult::Refused => "refused",
        };
        self.upstream_requests
            .get_or_create(&UpstreamResultLabels { result })
            .inc();
    }

    /// The gauge of requests in flight to berth.
    pub fn in_flight(&self) -> &Gauge {
        &self.upstream_in_flight
    }

    pub fn render(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        self.process.update();
        encode(&self.registry, openmetrics)
    }
}

/// `GET /metrics` of berth. Open like `/healthz`: it names no repository, tag, digest or identity.
pub async fn metrics_handler(
    req: actix_web::HttpRequest,
    metrics: web::Data<Metrics>,
    registry: web::Data<crate::registry::Registry>,
    events: web::Data<crate::events::EventLog>,
    policy: web::Data<crate::admission::PolicyStore>,
    auth: web::Data<crate::auth::Authenticator>,
    notifications: web::Data<crate::events::notify::Notifications>,
) -> HttpResponse {
    // Endpoints are fixed at start, so the gauges are set here, at scrape time, from each endpoint's cursor.
    for lag in notifications.lags() {
        metrics.set_notification_lag(&lag.endpoint, lag.lag);
    }
    let openmetrics = wants_openmetrics(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let scrape = Scrape {
        uploads_in_progress: registry.upload_sessions(),
        events: events.stats(),
        policy_reloads: policy.reload_counts(),
        logins: auth.login_counts(),
    };
    scrape_response(metrics.render(&scrape, openmetrics), openmetrics)
}

/// Mounts `GET /metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics_handler));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_routes_are_templates() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let check = |path: &str, expected: &str| {
            assert_eq!(RouteLabel::of_path(path).as_str(), expected, "{path}");
        };
        check(
            "/v2/library/ubuntu/manifests/24.04",
            "/v2/{name}/manifests/{reference}",
        );
        check(
            &format!("/v2/a/blobs/{digest}"),
            "/v2/{name}/blobs/{digest}",
        );
        check("/v2/a/b/blobs/uploads/", "/v2/{name}/blobs/uploads/");
        check("/v2/a/blobs/uploads/1234", "/v2/{name}/blobs/uploads/{id}");
        check("/v2/a/tags/list", "/v2/{name}/tags/list");
        check(
            &format!("/v2/a/referrers/{digest}"),
            "/v2/{name}/referrers/{digest}",
        );
        check("/v2/", "/v2/");
        check("/v2/_catalog", "/v2/_catalog");
        check("/v2/nothing-here", "other");
        check("/validate", "/validate");
        check("/mutate", "/mutate");
        check("/auth/token", "/auth/token");
        check("/berth/v1/events", "/berth/v1/events");
        check("/healthz", "/healthz");
        check("/metrics", "/metrics");
        check("/etc/passwd", "other");
        check("/v2x/a/manifests/b", "other");
    }

    #[test]
    fn every_route_label_has_its_own_index() {
        let labels: Vec<RouteLabel> = RouteKind::ALL
            .iter()
            .map(|k| RouteLabel::Registry(*k))
            .chain(OTHER_ROUTES)
            .collect();
        let indexes: HashSet<usize> = labels.iter().map(|l| l.index()).collect();
        assert_eq!(indexes.len(), ROUTES);
        assert!(indexes.iter().all(|i| *i < ROUTES));
    }

    #[test]
    fn requests_are_counted_by_template_method_and_status() {
        let metrics = Metrics::new();
        let route = RouteLabel::of_path("/v2/a/manifests/latest");
        for _ in 0..3 {
            metrics
                .http
                .observe(route, MethodLabel::Get, 200, Duration::from_millis(2));
        }
        metrics
            .http
            .observe(route, MethodLabel::Get, 418, Duration::from_millis(2));
        metrics.http.request_bytes(route, 10);
        let text = metrics.render(&Scrape::default(), false).expect("encode");
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        has(
            r#"berth_http_requests_total{route="/v2/{name}/manifests/{reference}",method="GET",status="200"} 3"#,
        );
        has(
            r#"berth_http_requests_total{route="/v2/{name}/manifests/{reference}",method="GET",status="418"} 1"#,
        );
        has(
            r#"berth_http_request_duration_seconds_bucket{route="/v2/{name}/manifests/{reference}",method="GET",le="0.0025"} 4"#,
        );
        has(r#"berth_http_request_bytes_total{route="/v2/{name}/manifests/{reference}"} 10"#);
    }

    /// The middleware: statuses per template, bytes of sized and streamed bodies as sent, none for a HEAD, and a
    /// refused request's declared length not counted.
    #[actix_web::test]
    async fn the_middleware_counts_statuses_and_bytes_as_sent() {
        use actix_web::{middleware::from_fn, test, App};
        let metrics = web::Data::new(Metrics::new());
        let app = test::init_service(
            App::new()
                .app_data(metrics.clone())
                .wrap(from_fn(count_requests))
                .route(
                    "/v2/{tail:.*}",
                    web::route().to(|req: actix_web::HttpRequest| async move {
                        if req.path().ends_with("/stream") {
                            let chunks = futures_util::stream::iter(["abc", "defg"].map(|c| {
                                Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes()))
                            }));
                            return HttpResponse::Ok().streaming(chunks);
                        }
                        if req.method() == Method::PUT {
                            return HttpResponse::PayloadTooLarge().finish();
                        }
                        HttpResponse::Ok().body("0123456789")
                    }),
                ),
        )
        .await;
        let send = |method: Method, path: &'static str| {
            test::TestRequest::default()
                .method(method)
                .uri(path)
                .insert_header((header::CONTENT_LENGTH, "1000"))
                .to_request()
        };
        for (method, path) in [
            (Method::GET, "/v2/a/manifests/latest"),
            (Method::HEAD, "/v2/a/manifests/latest"),
            (Method::GET, "/v2/a/blobs/stream"),
            (Method::PUT, "/v2/a/manifests/big"),
        ] {
            let body = test::call_and_read_body(&app, send(method, path)).await;
            assert!(body.len() <= 10, "{body:?}");
        }
        let text = metrics.render(&Scrape::default(), false).expect("encode");
        let manifests = "/v2/{name}/manifests/{reference}";
        for line in [
            format!(
                r#"berth_http_requests_total{{route="{manifests}",method="GET",status="200"}} 1"#
            ),
            format!(
                r#"berth_http_requests_total{{route="{manifests}",method="HEAD",status="200"}} 1"#
            ),
            format!(
                r#"berth_http_requests_total{{route="{manifests}",method="PUT",status="413"}} 1"#
            ),
            // The GET's 10 bytes; the HEAD sent none, the 413's body is empty.
            format!(r#"berth_http_response_bytes_total{{route="{manifests}"}} 10"#),
            // The GET's and the HEAD's declared 1000 each; the refused PUT's 1000 not.
            format!(r#"berth_http_request_bytes_total{{route="{manifests}"}} 2000"#),
            r#"berth_http_response_bytes_total{route="/v2/{name}/blobs/{digest}"} 7"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn admission_rules_beyond_the_cap_are_other() {
        let metrics = Metrics::new();
        for i in 0..MAX_RULE_LABELS + 5 {
            metrics.admission_decision(Webhook::Validate, Decision::Denied, Some(&format!("r{i}")));
        }
        metrics.admission_decision(Webhook::Validate, Decision::Denied, Some("r0"));
        metrics.admission_decision(Webhook::Mutate, Decision::Mutated, None);
        let text = metrics.render(&Scrape::default(), false).expect("encode");
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line}");
        has(r#"berth_admission_decisions_total{webhook="validate",decision="denied",rule="r0"} 2"#);
        has(
            r#"berth_admission_decisions_total{webhook="validate",decision="denied",rule="other"} 5"#,
        );
        has(
            r#"berth_admission_decisions_total{webhook="mutate",decision="mutated",rule="none"} 1"#,
        );
    }

    #[test]
    fn scraped_values_are_read_at_scrape_time() {
        let metrics = Metrics::new();
        let stats = crate::events::log::EventStats::default();
        stats.written.store(7, Ordering::Relaxed);
        stats.dropped.store(1, Ordering::Relaxed);
        stats.queued.store(2, Ordering::Relaxed);
        let scrape = Scrape {
            uploads_in_progress: 3,
            events: Some(&stats),
            policy_reloads: (4, 1),
            logins: vec![("basic", "ok", 5)],
        };
        let text = metrics.render(&scrape, false).expect("encode");
        for line in [
            "berth_uploads_in_progress 3",
            "berth_events_written_total 7",
            "berth_events_dropped_total 1",
            "berth_events_queued 2",
            "berth_policy_reloads_total 4",
            "berth_policy_reload_errors_total 1",
            r#"berth_logins_total{method="basic",result="ok"} 5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn openmetrics_is_chosen_by_accept() {
        let check = |accept: Option<&str>, expected: bool| {
            assert_eq!(wants_openmetrics(accept), expected, "{accept:?}");
        };
        check(None, false);
        check(Some("text/plain"), false);
        check(
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            true,
        );
        check(Some("text/plain;q=0.5, application/openmetrics-text"), true);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let check = |status: &str, expected: Option<u64>| {
            assert_eq!(parse_vm_rss(status), expected, "{status}");
        };
        check(
            "Name:\tberth\nVmRSS:\t    2048 kB\nThreads: 4\n",
            Some(2048 * 1024),
        );
        check("Name:\tberth\n", None);
        check("VmRSS:\tlots kB\n", None);
    }
}
