//! The event log as request handlers see it: [`EventLog::record`] hands an event to a bounded queue and returns at
//! once; [`EventLog::record_durable`] waits until it is committed (what a push, delete or tag move answers after).
//! One writer thread drains the queue and commits what it finds in one transaction, so under load a commit carries
//! thousands of events and when idle an event is committed as soon as it arrives (well within the second the
//! guarantee allows); after a batch nobody waits on, it lets the queue fill for a few milliseconds
//! ([`BATCH_WINDOW`]), so recording under load wakes no thread. A clean stop ([`EventLog::shutdown`]) commits
//! everything queued.
//!
//! Failures never reach a pull or an admission: an event that does not fit in the queue is dropped and counted, a
//! batch the store refuses is counted as dropped, and both show in [`EventLog::status`] (`/readyz`), the metrics
//! and the log. Only a durable record reports the failure to its caller, which then does not acknowledge.
//!
//! Must not: run store calls on an async worker thread, or block a request on anything but a durable record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::model::Event;
use super::store::{EventStore, Retention, StoreError};
use crate::clock::SharedClock;

/// Events the queue holds before [`EventLog::record`] drops: about 60 MB of events at worst, and several seconds
/// of the manifest-GET benchmark's rate, so a commit that stalls for a moment drops nothing.
pub const QUEUE_CAPACITY: usize = 131_072;

/// Most events one transaction commits.
const MAX_BATCH: usize = 16_384;

/// How long the writer lets the queue fill after a batch without a durable record or a flush waiting on it. While
/// it waits, [`EventLog::record`] wakes nobody: a writer parked on an empty queue costs every record a thread
/// wake-up (the manifest-GET benchmark ran at 0.65x of berth without the log so), and one commit carries what these
/// milliseconds brought (each commit costs the store an fsync and its index pages again, so fewer and larger is
/// cheaper). A durable record or a flush wakes it at once. Well within the second in which a pull's event is
/// committed.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// How often old events are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Why a durable record failed.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The store did not commit the event.
    #[error("the event log did not store the event: {0}")]
    Store(#[from] StoreError),
    /// The writer has stopped (berth is stopping).
    #[error("the event log is stopped")]
    Stopped,
}

enum Message {
    Event {
        event: Box<Event>,
        committed: Option<oneshot::Sender<Result<(), EventLogError>>>,
    },
    /// Answered once everything queued before it is committed (or dropped).
    Flush(oneshot::Sender<()>),
}

/// Counts since start, for `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Events committed.
    pub written: AtomicU64,
    /// Events lost: the queue was full, or the store refused their batch.
    pub dropped: AtomicU64,
    /// Batches the store refused.
    pub failed_batches: AtomicU64,
    /// Events in the queue.
    pub queued: AtomicU64,
}

struct Shared {
    instance: Arc<str>,
    store: Arc<dyn EventStore>,
    stats: EventStats,
    /// The store's last error and when it happened; cleared by the next commit.
    last_error: Mutex<Option<(String, time::OffsetDateTime)>>,
    /// The last committed sequence number, for readers that follow the log.
    committed: watch::Sender<u64>,
    clock: SharedClock,
}

/// The handle every request shares; cheap to clone. [`EventLog::off`] records nothing.
#[derive(Clone)]
pub struct EventLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer thread, woken by a durable record or a flush from its [`BATCH_WINDOW`].
    waker: Option<std::thread::Thread>,
}

impl Inner {
    fn wake(&self) {
        if let Some(writer) = &self.waker {
            writer.unpark();
        }
    }
}

impl EventLog {
    /// A log that keeps nothing (`--no-event-log`, and tests that do not look at events).
    pub fn off() -> EventLog {
        EventLog { inner: None }
    }

    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn EventStore>, instance: &str, clock: SharedClock) -> EventLog {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        // A store that cannot answer now (it could not be opened) is reported from the start.
        let (last, error) = match store.last_seq() {
            Ok(last) => (last, None),
            Err(e) => (
                0,
                Some((e.to_string(), time::OffsetDateTime::from(clock.system()))),
            ),
        };
        let shared = Arc::new(Shared {
            instance: instance.into(),
            store,
            stats: EventStats::default(),
            last_error: Mutex::new(error),
            committed: watch::Sender::new(last),
            clock,
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("berth-events".into())
            .spawn(move || write_loop(receiver, &writer_shared));
        let writer = match writer {
            Ok(handle) => Some(handle),
            Err(e) => {
                log::error!("event log: cannot start the writer thread: {e}");
                None
            }
        };
        EventLog {
            inner: Some(Arc::new(Inner {
                queue,
                shared,
                waker: writer.as_ref().map(|handle| handle.thread().clone()),
                writer: Mutex::new(writer),
            })),
        }
    }

    /// Whether events are kept.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The name events are recorded under (`berth` when the log is off).
    pub fn instance(&self) -> &str {
        self.inner
            .as_ref()
            .map_or("berth", |inner| &inner.shared.instance)
    }

    /// [`EventLog::instance`] as the string events share.
    pub fn shared_instance(&self) -> Arc<str> {
        self.inner
            .as_ref()
            .map_or_else(|| Arc::from("berth"), |inner| inner.shared.instance.clone())
    }

    /// The time events are stamped with.
    pub fn now(&self) -> std::time::SystemTime {
        self.inner
            .as_ref()
            .map_or_else(std::time::SystemTime::now, |inner| {
                inner.shared.clock.system()
            })
    }

    /// The store, for readers (the events API, reports, notifications).
    pub fn store(&self) -> Option<Arc<dyn EventStore>> {
        self.inner.as_ref().map(|inner| inner.shared.store.clone())
    }

    /// The last committed sequence number, changing as events are committed.
    pub fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        self.inner
            .as_ref()
            .map(|inner| inner.shared.committed.subscribe())
    }

    /// The counts since start.
    pub fn stats(&self) -> Option<&EventStats> {
        self.inner.as_ref().map(|inner| &inner.shared.stats)
    }

    /// Queues `event` and returns at once. A full queue drops it (counted, and logged at most once a minute).
    pub fn record(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        let message = Message::Event {
            event: Box::new(event),
            committed: None,
        };
        // Counted before it is sent, so the writer never takes away what was not yet added.
        inner.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
        match inner.queue.try_send(message) {
            Ok(()) => {}
            Err(_) => {
                inner.shared.stats.queued.fetch_sub(1, Ordering::Relaxed);
                let dropped = inner.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped % 10_000 == 0 {
                    log::warn!(
                        "event log: queue full, events dropped ({} so far)",
                        dropped + 1
                    );
                }
            }
        }
    }

    /// Queues `event` and waits until it is committed. With the log off, returns at once.
    pub async fn record_durable(&self, event: Event) -> Result<(), EventLogError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let (committed, answer) = oneshot::channel();
        let message = Message::Event {
            event: Box::new(event),
            committed: Some(committed),
        };
        inner.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
        if inner.queue.send(message).await.is_err() {
            inner.shared.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(EventLogError::Stopped);
        }
        inner.wake();
        answer.await.map_err(|_| EventLogError::Stopped)?
    }

    /// Waits until every event recorded before the call is committed (or dropped).
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let (done, answer) = oneshot::channel();
        if inner.queue.send(Message::Flush(done)).await.is_ok() {
            inner.wake();
            let _ = answer.await;
        }
    }

    /// Commits everything queued and stops the writer. Events recorded after this are dropped.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        self.flush().await;
        let handle = inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // The writer ends when every sender is gone; the request handlers' clones may outlive the server, so the
        // flush above is what guarantees nothing queued is lost. The thread is detached otherwise.
        drop(handle);
    }

    /// What `/readyz` shows: on or off, the counts, and the store's last error. Never makes berth unready: a
    /// broken event store must not stop pulls or admission.
    pub fn status(&self) -> serde_json::Value {
        let Some(inner) = &self.inner else {
            return serde_json::json!({ "enabled": false });
        };
        let stats = &inner.shared.stats;
        let last_error = inner
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut status = serde_json::json!({
            "enabled": true,
            "state": if last_error.is_some() { "failing" } else { "ok" },
            "written": stats.written.load(Ordering::Relaxed),
            "dropped": stats.dropped.load(Ordering::Relaxed),
            "queued": stats.queued.load(Ordering::Relaxed),
            "lastSeq": *inner.shared.committed.borrow(),
        });
        if let Some((error, at)) = last_error {
            status["lastError"] = error.into();
            status["lastErrorAt"] = at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
                .into();
        }
        status
    }

    /// Prunes what `retention` no longer keeps, now and every [`PRUNE_INTERVAL`]. Runs until the process ends.
    pub async fn prune_forever(self, retention: Retention) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        loop {
            let shared = inner.shared.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                shared.store.prune(&retention, shared.clock.system())
            })
            .await;
            match pruned {
                Ok(Ok(pruned)) if pruned.by_age + pruned.by_size > 0 => log::info!(
                    "event log: pruned {} events older than {:?} and {} over the size limit",
                    pruned.by_age,
                    retention.max_age,
                    pruned.by_size
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    log::warn!("event log: pruning: {e}");
                    inner.shared.failed(&e);
                }
                Err(e) => log::warn!("event log: pruning task: {e}"),
            }
            tokio::time::sleep(PRUNE_INTERVAL).await;
        }
    }
}

impl Shared {
    fn failed(&self, error: &StoreError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((
            error.to_string(),
            time::OffsetDateTime::from(self.clock.system()),
        ));
    }
}

/// The writer thread: takes what is queued (waiting for the first), commits it in one transaction, answers the
/// durable records and flushes, and goes on until every sender is gone.
fn write_loop(mut receiver: mpsc::Receiver<Message>, shared: &Shared) {
    let mut events = Vec::with_capacity(1024);
    let mut waiting: Vec<oneshot::Sender<Result<(), EventLogError>>> = Vec::new();
    let mut flushes = Vec::new();
    let mut last_failure_log: Option<Instant> = None;
    while let Some(first) = receiver.blocking_recv() {
        let mut next = Some(first);
        let mut answered = false;
        while let Some(message) = next.take() {
            match message {
                Message::Event { event, committed } => {
                    events.push(*event);
                    if let Some(committed) = committed {
                        waiting.push(committed);
                        answered = true;
                    }
                }
                Message::Flush(done) => {
                    flushes.push(done);
                    answered = true;
                }
            }
            if events.len() < MAX_BATCH {
                next = receiver.try_recv().ok();
            }
        }
        if !events.is_empty() {
            let count = events.len() as u64;
            shared.stats.queued.fetch_sub(count, Ordering::Relaxed);
            match shared.store.append(&events) {
                Ok(last) => {
                    shared.stats.written.fetch_add(count, Ordering::Relaxed);
                    shared.committed.send_replace(last);
                    let mut last_error = shared
                        .last_error
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    if last_error.take().is_some() {
                        log::info!("event log: the store commits again");
                    }
                    drop(last_error);
                    for committed in waiting.drain(..) {
                        let _ = committed.send(Ok(()));
                    }
                }
                Err(e) => {
                    shared.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                    let lost = count - waiting.len() as u64;
                    shared.stats.dropped.fetch_add(lost, Ordering::Relaxed);
                    if last_failure_log.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                        log::error!("event log: {e}; {lost} events dropped (more may follow, logged once a minute)");
                        last_failure_log = Some(Instant::now());
                    }
                    shared.failed(&e);
                    for committed in waiting.drain(..) {
                        let _ = committed.send(Err(EventLogError::Store(StoreError::Database(
                            e.to_string(),
                        ))));
                    }
                }
            }
            events.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if !answered {
            // Woken early by a durable record or a flush (an unpark before this returns at once).
            std::thread::park_timeout(BATCH_WINDOW);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::{Actor, EventAction};
    use crate::events::store::{EventQuery, Pruned, Result, StoredEvent};

    /// A store that fails while `broken` is set.
    #[derive(Default)]
    struct Flaky {
        broken: std::sync::atomic::AtomicBool,
        events: Mutex<Vec<Event>>,
    }

    impl EventStore for Flaky {
        fn append(&self, events: &[Event]) -> Result<u64> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(StoreError::Database("disk full".into()));
            }
            let mut stored = self.events.lock().expect("lock");
            stored.extend_from_slice(events);
            Ok(stored.len() as u64)
        }
        fn query(&self, _: &EventQuery) -> Result<Vec<StoredEvent>> {
            Ok(Vec::new())
        }
        fn last_seq(&self) -> Result<u64> {
            Ok(self.events.lock().expect("lock").len() as u64)
        }
        fn prune(&self, _: &Retention, _: std::time::SystemTime) -> Result<Pruned> {
            Ok(Pruned::default())
        }
        fn cursor(&self, _: &str) -> Result<u64> {
            Ok(0)
        }
        fn set_cursor(&self, _: &str, _: u64) -> Result<()> {
            Ok(())
        }
        fn size(&self) -> Result<u64> {
            Ok(0)
        }
        fn pull_stats(
            &self,
            _: &[String],
            _: i64,
            _: i64,
        ) -> Result<Vec<crate::events::store::PullStats>> {
            Ok(Vec::new())
        }
        fn last_pushes(&self, _: &[String]) -> Result<Vec<crate::events::store::PushRecord>> {
            Ok(Vec::new())
        }
    }

    fn pull() -> Event {
        Event::new(
            EventAction::Pull,
            Actor::anonymous(),
            "test",
            std::time::SystemTime::now(),
        )
    }

    #[tokio::test]
    async fn recorded_events_are_committed_by_a_flush_and_durable_ones_before_the_answer() {
        let store = Arc::new(Flaky::default());
        let log = EventLog::start(store.clone(), "test", crate::clock::system());
        for _ in 0..1000 {
            log.record(pull());
        }
        log.flush().await;
        assert_eq!(store.events.lock().expect("lock").len(), 1000);
        log.record_durable(pull()).await.expect("durable");
        assert_eq!(store.events.lock().expect("lock").len(), 1001);
        assert_eq!(*log.subscribe().expect("on").borrow(), 1001);
        assert_eq!(log.status()["written"], 1001);
        assert_eq!(log.status()["state"], "ok");
    }

    #[tokio::test]
    async fn a_broken_store_fails_durable_records_and_counts_the_rest_as_dropped() {
        let store = Arc::new(Flaky::default());
        let log = EventLog::start(store.clone(), "test", crate::clock::system());
        store.broken.store(true, Ordering::SeqCst);
        log.record(pull());
        let durable = log.record_durable(pull()).await;
        assert!(
            matches!(durable, Err(EventLogError::Store(_))),
            "{durable:?}"
        );
        log.flush().await;
        let status = log.status();
        assert_eq!(status["state"], "failing");
        assert_eq!(status["dropped"], 1);
        assert_eq!(status["lastError"], "event store: disk full");
        store.broken.store(false, Ordering::SeqCst);
        log.record_durable(pull()).await.expect("recovered");
        assert_eq!(log.status()["state"], "ok");
    }
}
