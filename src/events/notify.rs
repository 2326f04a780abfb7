//! Notifications: events sent on to configured HTTP endpoints as CloudEvents 1.0, from the durable log.
//!
//! One task per endpoint follows the store ([`EventStore::query`] after the endpoint's cursor), keeps the
//! events its `actions` filter wants, and POSTs each (or, with `maxBatch` > 1, a batch) in commit order. The
//! cursor advances only past what a 2xx answered (or what the filter skips), and is saved in the store
//! ([`EventStore::set_cursor`] under `notify:<name>`) about once a second while it moves, so a restart resumes
//! there: delivery is at least once (a restart may send the last second's events again), and a receiver dedupes
//! by the CloudEvents `id` (the event id). A new endpoint starts with the events committed after it first starts
//! (`start: latest`) or with the oldest the store keeps (`start: oldest`). A failure is retried with exponential backoff and jitter, never skipping
//! ahead. When it has caught up the task waits for the log's next commit ([`EventLog::subscribe`]).
//!
//! A dead endpoint costs requests nothing: the tasks only read the store, from blocking threads. Events the
//! retention pruned before an endpoint got them are counted, logged, and skipped.
//!
//! Must not: write events, slow a request, or show a header's value (in the log, `/readyz` or an error).

pub mod cloudevents;
pub mod config;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

pub use config::{
    EndpointConfig, NotificationsConfig, NotificationsSpec, NotifyConfigError, Start,
};

use super::store::{EventQuery, EventStore, StoreError, StoredEvent};
use super::EventLog;

/// Events read from the store at once.
const PAGE: usize = 512;

/// How often, at most, the cursor is saved while an endpoint is behind.
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The prefix of an endpoint's cursor in the store.
const CURSOR_PREFIX: &str = "notify:";

/// Why notifications could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The HTTP client of an endpoint could not be built (its CA certificates were refused).
    #[error("notifications.endpoints {name:?}: {why}")]
    Client { name: String, why: String },
}

/// Why one delivery failed (shown in `/readyz` and the log).
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    /// The endpoint answered with a status other than 2xx.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// No answer: connection refused, TLS failed, timed out.
    #[error("{0}")]
    Request(String),
    /// The store could not be read.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The wait before attempt `failures + 1` after `failures` failures in a row: `initial` doubled per failure, at
/// most `max`, then scaled into its upper half by `jitter` (0 to 1), so endpoints failing together spread out.
pub fn backoff(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doubled = initial
        .checked_mul(
            1u32.checked_shl(failures.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .unwrap_or(max)
        .min(max);
    doubled.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A random number from 0 to 1 for the jitter.
fn jitter() -> f64 {
    let bytes = uuid::Uuid::new_v4();
    let value = u32::from_le_bytes([
        bytes.as_bytes()[0],
        bytes.as_bytes()[1],
        bytes.as_bytes()[2],
        bytes.as_bytes()[3],
    ]);
    f64::from(value) / f64::from(u32::MAX)
}

/// What an endpoint's task reports, for `/readyz` and the metrics.
#[derive(Debug, Default)]
struct Progress {
    /// Everything up to this sequence number is delivered (or not wanted).
    cursor: AtomicU64,
    /// Events delivered (2xx answered) since start.
    delivered: AtomicU64,
    /// Failed attempts since start.
    failures: AtomicU64,
    /// Events pruned before they were delivered.
    lost: AtomicU64,
    detail: Mutex<Detail>,
}

#[derive(Debug, Default)]
struct Detail {
    started: bool,
    /// The last failure, when it happened, and whether it is still the current state (no success since).
    last_error: Option<(String, SystemTime)>,
    failing: bool,
    last_success: Option<SystemTime>,
}

impl Progress {
    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Endpoint {
    config: EndpointConfig,
    client: reqwest::Client,
    progress: Progress,
}

/// The configured endpoints and their progress; cheap to share. [`Notifications::start`] starts delivering.
pub struct Notifications {
    endpoints: Vec<Arc<Endpoint>>,
    /// The log's last committed sequence number, once started (for the lag).
    committed: Mutex<Option<watch::Receiver<u64>>>,
}

/// The running delivery tasks. [`Delivery::stop`] ends them and saves their cursors (a clean stop); dropping
/// it only ends them (what was delivered in the last second is sent again after a restart).
pub struct Delivery {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The store and the endpoints, for the cursors [`Delivery::stop`] saves (none with the log off).
    store: Option<Arc<dyn EventStore>>,
    endpoints: Vec<Arc<Endpoint>>,
}

impl Delivery {
    /// Ends every delivery task and saves each endpoint's cursor, so a restart sends nothing twice. An endpoint
    /// in the middle of a request has not moved its cursor past it: that event is sent again.
    pub async fn stop(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let Some(store) = self.store.take() else {
            return;
        };
        let endpoints = std::mem::take(&mut self.endpoints);
        let saved = blocking(move || {
            for endpoint in &endpoints {
                let cursor = endpoint.progress.cursor.load(Ordering::Relaxed);
                // Not before the task has read its saved cursor (it would be 0, and could go back).
                if endpoint.progress.detail().started {
                    store.set_cursor(&endpoint.cursor_key(), cursor)?;
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = saved {
            log::warn!("notifications: saving the cursors at stop: {e}");
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One endpoint's lag, for the metrics (`berth_notification_lag_events{endpoint}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLag {
    pub endpoint: String,
    /// Events committed after the endpoint's cursor.
    pub lag: u64,
}

impl Notifications {
    /// No endpoints.
    pub fn none() -> Notifications {
        Notifications {
            endpoints: Vec::new(),
            committed: Mutex::new(None),
        }
    }

    /// The endpoints of `config`, each with its HTTP client; nothing is sent until [`Notifications::start`].
    pub fn new(config: &NotificationsConfig) -> Result<Notifications, NotifyError> {
        let mut endpoints = Vec::new();
        for endpoint in &config.endpoints {
            let client_error = |why: String| NotifyError::Client {
                name: endpoint.name.clone(),
                why,
            };
            let mut builder = reqwest::Client::builder()
                .connect_timeout(endpoint.timeout)
                .timeout(endpoint.timeout)
                // A redirected POST is not a delivery: the answer must come from the configured URL.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
            if let Some((path, pem)) = &endpoint.ca {
                let certificates = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| client_error(format!("caFile {}: {e}", path.display())))?;
                for certificate in certificates {
                    builder = builder.add_root_certificate(certificate);
                }
            }
            let client = builder.build().map_err(|e| client_error(e.to_string()))?;
            endpoints.push(Arc::new(Endpoint {
                config: endpoint.clone(),
                client,
                progress: Progress::default(),
            }));
        }
        Ok(Notifications {
            endpoints,
            committed: Mutex::new(None),
        })
    }

    /// Whether any endpoint is configured.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Starts one task per endpoint over `log`'s store. With the log off nothing starts (the config refuses
    /// endpoints without the log; a test's [`EventLog::off`] sends nothing).
    pub fn start(&self, log: &EventLog) -> Delivery {
        let (Some(store), Some(committed)) = (log.store(), log.subscribe()) else {
            if !self.endpoints.is_empty() {
                log::warn!("notifications: the event log is off, nothing is sent");
            }
            return Delivery {
                tasks: Vec::new(),
                store: None,
                endpoints: Vec::new(),
            };
        };
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed.clone());
        // What is committed now: where a new endpoint with `start: latest` begins.
        let latest_at_start = *committed.borrow();
        let tasks = self
            .endpoints
            .iter()
            .map(|endpoint| {
                log::info!(
                    "notifications: sending {} to {} ({})",
                    if endpoint.config.actions.is_empty() {
                        "every event".to_owned()
                    } else {
                        endpoint
                            .config
                            .actions
                            .iter()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    endpoint.config.name,
                    endpoint.config.shown_url()
                );
                tokio::spawn(deliver_forever(
                    endpoint.clone(),
                    store.clone(),
                    committed.clone(),
                    latest_at_start,
                    log.clone(),
                ))
            })
            .collect();
        Delivery {
            tasks,
            store: Some(store),
            endpoints: self.endpoints.clone(),
        }
    }

    fn committed(&self) -> u64 {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |committed| *committed.borrow())
    }

    /// Each endpoint's lag: events committed after its cursor (0 before the start).
    pub fn lags(&self) -> Vec<EndpointLag> {
        let committed = self.committed();
        self.endpoints
            .iter()
            .map(|endpoint| EndpointLag {
                endpoint: endpoint.config.name.clone(),
                lag: committed.saturating_sub(endpoint.progress.cursor.load(Ordering::Relaxed)),
            })
            .collect()
    }

    /// What `/readyz` shows under `events.notifications`: per endpoint its name, URL (without the query),
    /// state, cursor, lag, counts, last error and last success. Never a header.
    pub fn status(&self) -> Value {
        let committed = self.committed();
        let rfc3339 = |at: SystemTime| {
            time::OffsetDateTime::from(at)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        Value::Array(
            self.endpoints
                .iter()
                .map(|endpoint| {
                    let progress = &endpoint.progress;
                    let cursor = progress.cursor.load(Ordering::Relaxed);
                    let detail = progress.detail();
                    let mut status = json!({
                        "name": endpoint.config.name,
                        "url": endpoint.config.shown_url(),
                        "state": if !detail.started { "starting" } else if detail.failing { "failing" } else { "ok" },
                        "cursor": cursor,
                        "lag": committed.saturating_sub(cursor),
                        "delivered": progress.delivered.load(Ordering::Relaxed),
                        "failures": progress.failures.load(Ordering::Relaxed),
                        "lost": progress.lost.load(Ordering::Relaxed),
                    });
                    if let Some((error, at)) = &detail.last_error {
                        status["lastError"] = error.clone().into();
                        status["lastErrorAt"] = rfc3339(*at).into();
                    }
                    if let Some(at) = detail.last_success {
                        status["lastSuccessAt"] = rfc3339(at).into();
                    }
                    status
                })
                .collect(),
        )
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Database(format!("store task: {e}"))))
}

/// One endpoint's task: read, filter, send, advance; wait when caught up; back off on failure. `latest_at_start`
/// is the last sequence number committed when delivery started.
async fn deliver_forever(
    endpoint: Arc<Endpoint>,
    store: Arc<dyn EventStore>,
    mut committed: watch::Receiver<u64>,
    latest_at_start: u64,
    log: EventLog,
) {
    let key = endpoint.cursor_key();
    let mut failures = 0u32;
    let start = endpoint.config.start;
    let mut cursor = loop {
        let (store, key) = (store.clone(), key.clone());
        let cursor = blocking(move || match store.saved_cursor(&key)? {
            Some(cursor) => Ok(cursor),
            None if start == config::Start::Oldest => Ok(0),
            // New, starting from now: saved at once, so a restart before the first delivery does not skip ahead.
            None => {
                store.set_cursor(&key, latest_at_start)?;
                Ok(latest_at_start)
            }
        })
        .await;
        match cursor {
            Ok(cursor) => break cursor,
            Err(e) => {
                endpoint
                    .failed(&DeliveryError::Store(e), &mut failures, &log)
                    .await
            }
        }
    };
    endpoint.progress.cursor.store(cursor, Ordering::Relaxed);
    endpoint.progress.detail().started = true;
    let mut saved = cursor;
    let mut last_save = Instant::now();
    // An unreadable event ahead: the events before it are read (and sent) first, then it is passed.
    let mut before: Option<u64> = None;
    loop {
        // Read before the query: what is committed up to here is in the store or was pruned.
        let last_committed = *committed.borrow_and_update();
        let page = {
            let store = store.clone();
            let query = EventQuery {
                after_seq: Some(cursor),
                before_seq: before,
                limit: PAGE,
                ..EventQuery::default()
            };
            blocking(move || store.query(&query)).await
        };
        let page = match page {
            Ok(page) => page,
            // An event that cannot be read back can never be sent: it is passed (and counted), or the endpoint
            // would stop there for good; the events before it are read (and sent) first.
            // Bounded by the unreadable event's own number (not by a count, which a gap the retention left would
            // make reach it again).
            Err(StoreError::Unreadable { seq, .. })
                if seq > cursor.saturating_add(1) && before.is_none_or(|b| seq < b) =>
            {
                before = Some(seq);
                continue;
            }
            Err(StoreError::Unreadable { seq, why }) if seq > cursor => {
                log::error!(
                    "notifications: {}: event {seq} is unreadable ({why}); passing it",
                    endpoint.config.name
                );
                endpoint.progress.lost.fetch_add(1, Ordering::Relaxed);
                cursor = seq;
                endpoint.progress.cursor.store(cursor, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                endpoint
                    .failed(&DeliveryError::Store(e), &mut failures, &log)
                    .await;
                continue;
            }
        };
        // Sequence numbers are never reused and pruning takes the oldest first: a gap after the cursor is what
        // the retention deleted before this endpoint got it.
        // Read up to an unreadable event, an empty page means a gap up to it (not up to the last commit).
        let up_to = before.map_or(last_committed, |b| b.saturating_sub(1));
        let next = page
            .first()
            .map_or(up_to, |first| first.seq.saturating_sub(1));
        if next > cursor && cursor == 0 {
            // Never delivered anything and starting at the oldest event kept: nothing it was owed is missing.
            log::info!(
                "notifications: {}: starting at event {} (the oldest kept)",
                endpoint.config.name,
                next + 1
            );
            cursor = next;
            endpoint.progress.cursor.store(cursor, Ordering::Relaxed);
        } else if next > cursor {
            let lost = next - cursor;
            endpoint.progress.lost.fetch_add(lost, Ordering::Relaxed);
            log::warn!(
                "notifications: {}: {lost} events (after {cursor} up to {next}) were pruned by the retention before they were sent; going on",
                endpoint.config.name
            );
            cursor = next;
            endpoint.progress.cursor.store(cursor, Ordering::Relaxed);
        }
        let caught_up = before.is_none() && page.len() < PAGE;
        before = None;
        for batch in batches(&page, &endpoint.config) {
            loop {
                match endpoint.send(batch.events).await {
                    Ok(()) => {
                        endpoint.succeeded(batch.events.len(), &log, &mut failures);
                        break;
                    }
                    Err(e) => endpoint.failed(&e, &mut failures, &log).await,
                }
            }
            cursor = batch.through;
            endpoint.progress.cursor.store(cursor, Ordering::Relaxed);
            if last_save.elapsed() >= CURSOR_SAVE_INTERVAL {
                save_cursor(&store, &key, cursor, &mut saved).await;
                last_save = Instant::now();
            }
        }
        if let Some(last) = page.last() {
            cursor = cursor.max(last.seq);
            endpoint.progress.cursor.store(cursor, Ordering::Relaxed);
        }
        if !caught_up || *committed.borrow() > cursor {
            continue;
        }
        // Caught up: wait for the next commit, saving the cursor once it is due (at most once a second, so a
        // trickle of events does not add a write to the store per event).
        loop {
            if saved != cursor && last_save.elapsed() >= CURSOR_SAVE_INTERVAL {
                save_cursor(&store, &key, cursor, &mut saved).await;
                last_save = Instant::now();
            }
            let due = CURSOR_SAVE_INTERVAL.saturating_sub(last_save.elapsed());
            tokio::select! {
                changed = committed.changed() => {
                    if changed.is_err() {
                        // The log stopped: nothing more will be committed.
                        save_cursor(&store, &key, cursor, &mut saved).await;
                        return;
                    }
                    break;
                }
                () = tokio::time::sleep(due), if saved != cursor => {}
            }
        }
    }
}

/// Saves `cursor` when it moved since `saved`. A failure is logged and retried with the next save: the endpoint
/// then gets some events twice after a restart, never none.
async fn save_cursor(store: &Arc<dyn EventStore>, key: &str, cursor: u64, saved: &mut u64) {
    if cursor == *saved {
        return;
    }
    let (store, key_owned) = (store.clone(), key.to_owned());
    match blocking(move || store.set_cursor(&key_owned, cursor)).await {
        Ok(()) => *saved = cursor,
        Err(e) => log::warn!("notifications: saving the cursor of {key}: {e}"),
    }
}

/// Events sent in one request, and the sequence number the cursor moves to once they are delivered.
#[derive(Debug, PartialEq)]
struct Batch<'a> {
    events: &'a [StoredEvent],
    through: u64,
}

/// Splits a page into what is sent together, in order: runs of wanted events of at most `max_batch`. Once a batch
/// is delivered the cursor moves to its last event, passing the unwanted events before it; unwanted events after
/// the last wanted one are the caller's to pass (the page's last sequence number).
fn batches<'a>(page: &'a [StoredEvent], endpoint: &EndpointConfig) -> Vec<Batch<'a>> {
    let mut batches = Vec::new();
    let mut start = None;
    for (i, stored) in page.iter().enumerate() {
        let wanted = endpoint.wants(stored.event.action);
        match (start, wanted) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                batches.push(Batch {
                    events: &page[s..i],
                    through: page[i - 1].seq,
                });
                start = None;
            }
            (Some(s), true) if i - s == endpoint.max_batch => {
                batches.push(Batch {
                    events: &page[s..i],
                    through: page[i - 1].seq,
                });
                start = Some(i);
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        batches.push(Batch {
            events: &page[s..],
            through: page[page.len() - 1].seq,
        });
    }
    batches
}

impl Endpoint {
    /// The name of its cursor in the store.
    fn cursor_key(&self) -> String {
        format!("{CURSOR_PREFIX}{}", self.config.name)
    }

    /// POSTs `events`: one structured message, or (maxBatch > 1) a batch of them.
    async fn send(&self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        let (content_type, body) = if self.config.max_batch > 1 {
            let messages: Vec<Value> = events
                .iter()
                .map(|stored| cloudevents::structured(&stored.event))
                .collect();
            (cloudevents::BATCH_CONTENT_TYPE, Value::Array(messages))
        } else {
            let Some(stored) = events.first() else {
                return Ok(());
            };
            (
                cloudevents::CONTENT_TYPE,
                cloudevents::structured(&stored.event),
            )
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| DeliveryError::Request(format!("encoding: {e}")))?;
        let mut request = self
            .client
            .post(self.config.url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            // Without the URL: its query may hold a token.
            .map_err(|e| DeliveryError::Request(error_chain(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }

    fn succeeded(&self, count: usize, log: &EventLog, failures: &mut u32) {
        self.progress
            .delivered
            .fetch_add(count as u64, Ordering::Relaxed);
        let mut detail = self.progress.detail();
        detail.last_success = Some(log.now());
        if detail.failing {
            log::info!("notifications: {} accepts events again", self.config.name);
        }
        detail.failing = false;
        *failures = 0;
    }

    /// Records a failure and waits the backoff.
    async fn failed(&self, error: &DeliveryError, failures: &mut u32, log: &EventLog) {
        *failures = failures.saturating_add(1);
        self.progress.failures.fetch_add(1, Ordering::Relaxed);
        let wait = backoff(
            *failures,
            self.config.backoff_initial,
            self.config.backoff_max,
            jitter(),
        );
        {
            let mut detail = self.progress.detail();
            if !detail.failing || wait >= self.config.backoff_max / 2 {
                log::warn!(
                    "notifications: {} ({}): {error}; attempt {} failed, retrying in {wait:?}",
                    self.config.name,
                    self.config.shown_url(),
                    failures
                );
            }
            detail.failing = true;
            detail.last_error = Some((error.to_string(), log.now()));
        }
        tokio::time::sleep(wait).await;
    }
}

/// An error and its causes on one line (reqwest's own message is often only "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Actor, Event, EventAction};

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_max_with_jitter_in_the_upper_half() {
        let check = |failures: u32, jitter: f64, expected_millis: u64| {
            assert_eq!(
                backoff(
                    failures,
                    Duration::from_secs(1),
                    Duration::from_secs(300),
                    jitter
                ),
                Duration::from_millis(expected_millis),
                "{failures} failures, jitter {jitter}"
            );
        };
        check(1, 1.0, 1_000);
        check(1, 0.0, 500);
        check(2, 1.0, 2_000);
        check(3, 1.0, 4_000);
        check(9, 1.0, 256_000);
        check(10, 1.0, 300_000);
        check(10, 0.0, 150_000);
        check(40, 1.0, 300_000);
        check(u32::MAX, 1.0, 300_000);
        check(0, 1.0, 1_000);
        check(1, 7.0, 1_000);
    }

    fn endpoint(actions: &[EventAction], max_batch: usize) -> EndpointConfig {
        EndpointConfig {
            name: "e".into(),
            url: reqwest::Url::parse("http://127.0.0.1:1/").expect("url"),
            headers: Vec::new(),
            ca: None,
            actions: actions.to_vec(),
            timeout: Duration::from_secs(1),
            max_batch,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
            start: config::Start::Latest,
        }
    }

    #[test]
    fn batches_keep_the_order_cover_skipped_events_and_respect_the_size() {
        let page: Vec<StoredEvent> = [
            EventAction::Push,
            EventAction::Pull,
            EventAction::Push,
            EventAction::Push,
            EventAction::Push,
            EventAction::Pull,
        ]
        .into_iter()
        .zip(11u64..)
        .map(|(action, seq)| StoredEvent {
            seq,
            event: Event::new(action, Actor::anonymous(), "t", SystemTime::now()),
        })
        .collect();
        let check = |actions: &[EventAction], max_batch: usize, expected: &[(&[u64], u64)]| {
            let got: Vec<(Vec<u64>, u64)> = batches(&page, &endpoint(actions, max_batch))
                .into_iter()
                .map(|b| (b.events.iter().map(|e| e.seq).collect(), b.through))
                .collect();
            let expected: Vec<(Vec<u64>, u64)> =
                expected.iter().map(|(s, t)| (s.to_vec(), *t)).collect();
            assert_eq!(got, expected, "{actions:?} by {max_batch}");
        };
        check(
            &[],
            1,
            &[
                (&[11], 11),
                (&[12], 12),
                (&[13], 13),
                (&[14], 14),
                (&[15], 15),
                (&[16], 16),
            ],
        );
        check(
            &[EventAction::Push],
            1,
            &[(&[11], 11), (&[13], 13), (&[14], 14), (&[15], 15)],
        );
        check(
            &[EventAction::Push],
            2,
            &[(&[11], 11), (&[13, 14], 14), (&[15], 15)],
        );
        check(&[], 4, &[(&[11, 12, 13, 14], 14), (&[15, 16], 16)]);
        check(&[EventAction::Pull], 10, &[(&[12], 12), (&[16], 16)]);
        check(&[EventAction::Delete], 10, &[]);
    }
}
