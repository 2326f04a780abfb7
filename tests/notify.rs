//! Notifications (src/events/notify.rs): events sent on as CloudEvents to a receiver in this process — a small
//! HTTP/1.1 server on loopback that can fail (500) for its first requests or while told to. The event log and the
//! delivery run in-process over a real SQLite store in a temporary directory, and a restart is a new log and new
//! notifications over the same file; one test starts the real binary to see the config and `/readyz`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;

use berth::events::model::Admission;
use berth::events::notify::{Delivery, Notifications, NotificationsSpec};
use berth::events::sqlite::SqliteStore;
use berth::events::{Actor, Event, EventAction, EventLog, EventStore, Retention};

use crate::support::{poll_until, write_file, Berth, Options};

/// How long a test waits for deliveries that should come promptly.
const DELIVERED: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// One request the receiver answered 2xx.
#[derive(Debug, Clone)]
struct Received {
    content_type: String,
    authorization: Option<String>,
    body: Value,
}

#[derive(Default)]
struct ReceiverState {
    /// Requests answered 500 before the first 200.
    fail_first: usize,
    /// Answer 500 while set.
    failing: AtomicBool,
    requests: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

/// An HTTP receiver on loopback, answering each POST 200 (keeping it) or 500.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// A plain HTTP receiver answering 500 to its first `fail_first` requests.
    fn start(fail_first: usize) -> Receiver {
        Receiver::listen(fail_first, None)
    }

    /// An HTTPS receiver with this certificate and key (PEM).
    fn start_tls(cert: &str, key: &str) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certificate");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        Receiver::listen(0, Some(Arc::new(config)))
    }

    fn listen(fail_first: usize, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(ReceiverState {
            fail_first,
            ..ReceiverState::default()
        });
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                let tls = tls.clone();
                thread::spawn(move || match tls {
                    Some(config) => {
                        let Ok(connection) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve_connection(rustls::StreamOwned::new(connection, stream), &state);
                    }
                    None => serve_connection(stream, &state),
                });
            }
        });
        Receiver { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook?token=t0ken", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    /// Every CloudEvent received, batches flattened, in arrival order (duplicates included).
    fn events(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .flat_map(|r| match r.body {
                Value::Array(batch) => batch,
                single => vec![single],
            })
            .collect()
    }

    /// The ids received, each once, in the order they first arrived.
    fn unique_ids(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.events()
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .filter(|id| seen.insert(id.clone()))
            .collect()
    }
}

/// Answers the requests of one keep-alive connection until the client closes it.
fn serve_connection(stream: impl Read + Write, state: &ReceiverState) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut content_type = String::new();
        let mut authorization = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim().to_owned();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().expect("content-length"),
                    "content-type" => content_type = value,
                    "authorization" => authorization = Some(value),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = state.requests.fetch_add(1, Ordering::SeqCst);
        let fail = n < state.fail_first || state.failing.load(Ordering::SeqCst);
        if !fail {
            state.received.lock().expect("lock").push(Received {
                content_type,
                authorization,
                body: serde_json::from_slice(&body).expect("a JSON body"),
            });
        }
        let status = if fail {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        let writer = reader.get_mut();
        if write!(writer, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").is_err()
            || writer.flush().is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// berth's side, in-process
// ---------------------------------------------------------------------------

/// A runtime for the delivery tasks; the test thread itself stays outside it, so it may poll and sleep.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The event log over the store in `dir` (reopened by a second call: a restart).
fn open_log(dir: &Path) -> (EventLog, Arc<SqliteStore>) {
    let store =
        Arc::new(SqliteStore::open(&SqliteStore::path_in(dir)).expect("open the event store"));
    let log = EventLog::start(store.clone(), "berth-test", berth::clock::system());
    (log, store)
}

/// Notifications from a `notifications:` section, started over `log`.
fn notify(
    runtime: &tokio::runtime::Runtime,
    log: &EventLog,
    yaml: &str,
) -> (Notifications, Delivery) {
    let spec: NotificationsSpec = serde_yaml_ng::from_str(yaml).expect("notifications yaml");
    let config = spec.validate().expect("valid notifications");
    let notifications = Notifications::new(&config).expect("clients");
    let _entered = runtime.enter();
    let delivery = notifications.start(log);
    (notifications, delivery)
}

/// An endpoint entry with fast retries.
fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!(
        "endpoints:\n  - {{name: {name}, url: '{url}', backoff: {{initial: 20ms, max: 200ms}}, timeout: 2s{extra}}}\n"
    )
}

/// An event of `action` as the registry or the webhook would record it, numbered `i`.
fn event(action: EventAction, i: usize) -> Event {
    let mut event = Event::new(
        action,
        Actor::anonymous(),
        "berth-test",
        std::time::SystemTime::now(),
    );
    if matches!(
        action,
        EventAction::Admitted | EventAction::Denied | EventAction::Warned | EventAction::Mutated
    ) {
        event.admission = Some(Box::new(Admission {
            namespace: "team-a".into(),
            kind: "Pod".into(),
            name: format!("web-{i}"),
            ..Admission::default()
        }));
    } else {
        event.target.repository = Some("team-a/app".into());
        event.target.tag = Some(format!("v{i}"));
    }
    event
}

/// Records `count` events cycling through `actions`, each durably (committed when it returns); their ids in order.
fn record(
    runtime: &tokio::runtime::Runtime,
    log: &EventLog,
    actions: &[EventAction],
    count: usize,
) -> Vec<(String, EventAction)> {
    (0..count)
        .map(|i| {
            let action = actions[i % actions.len()];
            let event = event(action, i);
            let id = event.id.clone();
            runtime
                .block_on(log.record_durable(event))
                .expect("recorded");
            (id, action)
        })
        .collect()
}

/// Checks each received CloudEvent's envelope against the event in its data.
fn check_cloudevents(events: &[Value]) {
    for message in events {
        assert_eq!(message["specversion"], "1.0", "{message}");
        assert_eq!(message["source"], "berth://berth-test", "{message}");
        assert_eq!(message["datacontenttype"], "application/json", "{message}");
        let data: Event =
            serde_json::from_value(message["data"].clone()).expect("data is an event");
        assert_eq!(message["id"], data.id.as_str(), "{message}");
        assert_eq!(
            message["type"],
            berth::events::notify::cloudevents::event_type(data.action),
            "{message}"
        );
        let subject = match &data.admission {
            Some(admission) => format!("{}/{}", admission.namespace, admission.name),
            None => format!("team-a/app:{}", data.target.tag.as_deref().expect("a tag")),
        };
        assert_eq!(message["subject"], subject.as_str(), "{message}");
        assert!(
            time::OffsetDateTime::parse(
                message["time"].as_str().expect("time"),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{message}"
        );
    }
}

fn status_of(notifications: &Notifications, name: &str) -> Value {
    notifications
        .status()
        .as_array()
        .expect("an array")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for {name}"))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn a_receiver_that_fails_at_first_gets_every_event_once_it_recovers_in_order() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _store) = open_log(dir.path());
    let receiver = Receiver::start(4);
    let (notifications, _delivery) = notify(
        &runtime,
        &log,
        &endpoint(
            "audit",
            &receiver.url(),
            ", headers: {Authorization: Bearer s3cret}",
        ),
    );
    let recorded = record(
        &runtime,
        &log,
        &[
            EventAction::Push,
            EventAction::Pull,
            EventAction::TagMoved,
            EventAction::Denied,
            EventAction::Mutated,
        ],
        30,
    );
    let expected: Vec<String> = recorded.iter().map(|(id, _)| id.clone()).collect();
    poll_until(DELIVERED, "every event delivered", || {
        (receiver.unique_ids().len() == expected.len()).then_some(())
    });
    assert_eq!(receiver.unique_ids(), expected, "in the order recorded");
    check_cloudevents(&receiver.events());
    for request in receiver.received() {
        assert_eq!(request.content_type, "application/cloudevents+json");
        assert_eq!(request.authorization.as_deref(), Some("Bearer s3cret"));
    }
    assert!(
        receiver.state.requests.load(Ordering::SeqCst) >= 34,
        "the 4 failures were retried"
    );
    let status = poll_until(DELIVERED, "the lag back to 0", || {
        let status = status_of(&notifications, "audit");
        (status["lag"] == 0).then_some(status)
    });
    assert_eq!(status["state"], "ok", "{status}");
    assert_eq!(status["delivered"], 30, "{status}");
    assert_eq!(status["failures"], 4, "{status}");
    assert_eq!(status["lastError"], "answered HTTP 500", "{status}");
    assert!(status["lastSuccessAt"].is_string(), "{status}");
    assert_eq!(
        status["url"],
        format!("http://{}", receiver.addr),
        "shown without the path and query"
    );
    assert!(!status.to_string().contains("s3cret"), "{status}");
}

#[test]
fn a_restart_resumes_from_the_saved_cursor_and_loses_nothing() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(0);
    let config = endpoint("audit", &receiver.url(), "");
    let actions = [EventAction::Push, EventAction::Pull];

    // First run: 10 delivered and the cursor saved; then the receiver fails and 10 more wait.
    let (log, store) = open_log(dir.path());
    let (notifications, delivery) = notify(&runtime, &log, &config);
    let mut recorded = record(&runtime, &log, &actions, 10);
    poll_until(DELIVERED, "the cursor saved after the first 10", || {
        (store.cursor("notify:audit").expect("cursor") == 10).then_some(())
    });
    receiver.state.failing.store(true, Ordering::SeqCst);
    recorded.extend(record(&runtime, &log, &actions, 10));
    poll_until(DELIVERED, "a failed attempt on the 11th", || {
        (status_of(&notifications, "audit")["state"] == "failing").then_some(())
    });
    assert_eq!(status_of(&notifications, "audit")["lag"], 10);
    // Stopped hard: no goodbye, as when the process is killed.
    drop(delivery);
    drop(notifications);
    runtime.block_on(log.shutdown());
    drop(log);
    drop(store);

    // Second run over the same store: 5 more, the receiver recovers.
    receiver.state.failing.store(false, Ordering::SeqCst);
    let (log, store) = open_log(dir.path());
    recorded.extend(record(&runtime, &log, &actions, 5));
    let (notifications, _delivery) = notify(&runtime, &log, &config);
    let expected: Vec<String> = recorded.iter().map(|(id, _)| id.clone()).collect();
    poll_until(DELIVERED, "every event after the restart", || {
        (receiver.unique_ids().len() == expected.len()).then_some(())
    });
    assert_eq!(receiver.unique_ids(), expected, "in order, nothing lost");
    assert_eq!(
        receiver.events().len(),
        25,
        "the first 10 were saved as delivered, so none came twice"
    );
    check_cloudevents(&receiver.events());
    poll_until(DELIVERED, "the cursor saved at the end", || {
        (store.cursor("notify:audit").expect("cursor") == 25).then_some(())
    });
    assert_eq!(status_of(&notifications, "audit")["lag"], 0);
}

#[test]
fn a_clean_stop_saves_the_cursor_at_once() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, store) = open_log(dir.path());
    let receiver = Receiver::start(0);
    let (notifications, delivery) = notify(&runtime, &log, &endpoint("audit", &receiver.url(), ""));
    let expected: Vec<String> = record(&runtime, &log, &[EventAction::Push], 5)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    poll_until(DELIVERED, "the events", || {
        (receiver.unique_ids() == expected).then_some(())
    });
    // The task moves its cursor just after the answer.
    poll_until(DELIVERED, "the cursor at 5", || {
        (notifications.lags()[0].lag == 0).then_some(())
    });
    runtime.block_on(delivery.stop());
    assert_eq!(store.cursor("notify:audit").expect("cursor"), 5);
}

#[test]
fn the_actions_filter_sends_only_the_chosen_actions_and_the_cursor_passes_the_rest() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, store) = open_log(dir.path());
    let receiver = Receiver::start(0);
    let (_notifications, _delivery) = notify(
        &runtime,
        &log,
        &endpoint("pushes", &receiver.url(), ", actions: [push, denied]"),
    );
    let recorded = record(
        &runtime,
        &log,
        &[
            EventAction::Pull,
            EventAction::Push,
            EventAction::Pull,
            EventAction::Denied,
            EventAction::Admitted,
        ],
        20,
    );
    poll_until(DELIVERED, "the cursor past every event", || {
        (store.cursor("notify:pushes").expect("cursor") == 20).then_some(())
    });
    let expected: Vec<String> = recorded
        .iter()
        .filter(|(_, action)| matches!(action, EventAction::Push | EventAction::Denied))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(expected.len(), 8);
    assert_eq!(receiver.unique_ids(), expected);
    let types: HashSet<String> = receiver
        .events()
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect();
    assert_eq!(
        types,
        HashSet::from([
            "dev.berth.image.pushed".to_owned(),
            "dev.berth.admission.denied".to_owned()
        ])
    );
}

#[test]
fn a_dead_endpoint_holds_up_neither_the_requests_nor_a_live_endpoint() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _store) = open_log(dir.path());
    let receiver = Receiver::start(0);
    let dead = format!("http://127.0.0.1:{}/hook", crate::support::free_port());
    let config = format!(
        "{}  - {{name: dead, url: '{dead}', backoff: {{initial: 20ms, max: 200ms}}, timeout: 1s}}\n",
        endpoint("live", &receiver.url(), "")
    );
    let (notifications, _delivery) = notify(&runtime, &log, &config);
    let started = Instant::now();
    let recorded = record(&runtime, &log, &[EventAction::Push, EventAction::Pull], 50);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "50 durable records took {:?}",
        started.elapsed()
    );
    let expected: Vec<String> = recorded.into_iter().map(|(id, _)| id).collect();
    poll_until(DELIVERED, "the live endpoint has everything", || {
        (receiver.unique_ids() == expected).then_some(())
    });
    let dead_status = poll_until(DELIVERED, "the dead endpoint failing", || {
        let status = status_of(&notifications, "dead");
        (status["state"] == "failing" && status["failures"].as_u64() >= Some(2)).then_some(status)
    });
    assert_eq!(dead_status["lag"], 50, "{dead_status}");
    assert_eq!(dead_status["delivered"], 0, "{dead_status}");
    let error = dead_status["lastError"].as_str().expect("lastError");
    assert!(
        error.to_lowercase().contains("connect"),
        "a refused connection: {error}"
    );
    // The live one's cursor moves just after its receiver has the last event.
    poll_until(DELIVERED, "the lags for the metrics", || {
        let lags: Vec<(String, u64)> = notifications
            .lags()
            .into_iter()
            .map(|l| (l.endpoint, l.lag))
            .collect();
        (lags == [("live".to_owned(), 0), ("dead".to_owned(), 50)]).then_some(())
    });
}

#[test]
fn a_new_endpoint_starts_with_the_events_after_it_starts_unless_told_oldest() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, store) = open_log(dir.path());
    let before: Vec<String> = record(&runtime, &log, &[EventAction::Push], 3)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let latest = Receiver::start(0);
    let oldest = Receiver::start(0);
    let config = format!(
        "{}  - {{name: oldest, url: '{}', start: oldest}}\n",
        endpoint("latest", &latest.url(), ""),
        oldest.url()
    );
    let (_notifications, _delivery) = notify(&runtime, &log, &config);
    let after: Vec<String> = record(&runtime, &log, &[EventAction::Pull], 2)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    poll_until(DELIVERED, "both cursors at the end", || {
        (store.cursor("notify:latest").expect("cursor") == 5
            && store.cursor("notify:oldest").expect("cursor") == 5)
            .then_some(())
    });
    assert_eq!(latest.unique_ids(), after);
    assert_eq!(oldest.unique_ids(), [before, after].concat());
}

/// Five pushes recorded; the events up to `pruned` deleted (as the retention would), `corrupt` made unreadable;
/// an endpoint starting at the oldest gets exactly the events at `delivered` (indexes into the five), and counts
/// one lost.
fn check_unreadable_passed(pruned: i64, corrupt: i64, delivered: std::ops::Range<usize>) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _store) = open_log(dir.path());
    let recorded: Vec<String> = record(&runtime, &log, &[EventAction::Push], 5)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let database = rusqlite::Connection::open(SqliteStore::path_in(dir.path())).expect("open");
    database
        .execute("DELETE FROM events WHERE seq <= ?1", [pruned])
        .expect("prune");
    database
        .execute("UPDATE events SET rest = '{' WHERE seq = ?1", [corrupt])
        .expect("corrupt an event");
    drop(database);
    let receiver = Receiver::start(0);
    let (notifications, _delivery) = notify(
        &runtime,
        &log,
        &endpoint("audit", &receiver.url(), ", start: oldest"),
    );
    let expected: Vec<String> = recorded
        .iter()
        .enumerate()
        .filter(|(i, _)| delivered.contains(i) && *i as i64 + 1 != corrupt)
        .map(|(_, id)| id.clone())
        .collect();
    poll_until(DELIVERED, "the readable events", || {
        (receiver.unique_ids() == expected).then_some(())
    });
    let status = poll_until(DELIVERED, "the lag at 0", || {
        let status = status_of(&notifications, "audit");
        (status["lag"] == 0).then_some(status)
    });
    assert_eq!(status["lost"], 1, "{status}");
}

#[test]
fn an_unreadable_stored_event_is_passed_and_counted_and_the_others_still_sent() {
    check_unreadable_passed(0, 3, 0..5);
}

/// Review finding: with a gap the retention left before an unreadable event, reading "as many events as lie
/// before it" reached it again, for ever. The read is now bounded by its number.
#[test]
fn an_unreadable_event_after_a_pruned_gap_is_passed_too() {
    check_unreadable_passed(2, 5, 2..4);
}

#[test]
fn with_max_batch_events_arrive_in_batches_in_order() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _store) = open_log(dir.path());
    // Recorded before the delivery starts, so the first read sees all of them.
    let recorded = record(&runtime, &log, &[EventAction::Push, EventAction::Pull], 25);
    let receiver = Receiver::start(1);
    let (_notifications, _delivery) = notify(
        &runtime,
        &log,
        &endpoint("batches", &receiver.url(), ", maxBatch: 10, start: oldest"),
    );
    let expected: Vec<String> = recorded.into_iter().map(|(id, _)| id).collect();
    poll_until(DELIVERED, "every event in batches", || {
        (receiver.unique_ids().len() == expected.len()).then_some(())
    });
    assert_eq!(receiver.unique_ids(), expected);
    let received = receiver.received();
    assert_eq!(
        received
            .iter()
            .map(|r| r.body.as_array().map_or(0, Vec::len))
            .collect::<Vec<_>>(),
        [10, 10, 5]
    );
    for request in &received {
        assert_eq!(request.content_type, "application/cloudevents-batch+json");
    }
    check_cloudevents(&receiver.events());
}

#[test]
fn events_pruned_before_delivery_are_counted_as_lost_and_the_rest_still_sent() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, store) = open_log(dir.path());
    // Ten events from long ago, the endpoint had got the first; the retention prunes all ten.
    let old: Vec<Event> = (0..10)
        .map(|i| {
            let mut event = event(EventAction::Pull, i);
            event.time = time::OffsetDateTime::from(UNIX_EPOCH + Duration::from_secs(1_000_000));
            event
        })
        .collect();
    store.append(&old).expect("append");
    store.set_cursor("notify:audit", 1).expect("cursor");
    let pruned = store
        .prune(
            &Retention {
                max_age: Duration::from_secs(86_400),
                max_bytes: u64::MAX,
            },
            std::time::SystemTime::now(),
        )
        .expect("prune");
    assert_eq!(pruned.by_age, 10);
    let recorded = record(&runtime, &log, &[EventAction::Push], 3);
    let receiver = Receiver::start(0);
    let (notifications, _delivery) =
        notify(&runtime, &log, &endpoint("audit", &receiver.url(), ""));
    let expected: Vec<String> = recorded.into_iter().map(|(id, _)| id).collect();
    poll_until(DELIVERED, "the kept events", || {
        (receiver.unique_ids() == expected).then_some(())
    });
    assert_eq!(status_of(&notifications, "audit")["lost"], 9);
}

#[test]
fn an_https_endpoint_is_trusted_through_its_ca_file_and_refused_without_it() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _store) = open_log(dir.path());
    let ca = berth::tls::generate_ca("receiver CA").expect("CA");
    let (cert, key) =
        berth::tls::issue_serving_cert(&ca, &["127.0.0.1".into()]).expect("serving certificate");
    let ca_file = dir.path().join("receiver-ca.pem");
    write_file(&ca_file, &ca.cert);
    let receiver = Receiver::start_tls(&cert, &key);
    let url = format!("https://{}/hook", receiver.addr);
    let config = format!(
        "{}  - {{name: untrusted, url: '{url}', backoff: {{initial: 20ms, max: 200ms}}, timeout: 2s}}\n",
        endpoint("trusted", &url, &format!(", caFile: '{}'", ca_file.display()))
    );
    let (notifications, _delivery) = notify(&runtime, &log, &config);
    let expected: Vec<String> = record(&runtime, &log, &[EventAction::Push], 3)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    poll_until(DELIVERED, "the events over HTTPS", || {
        (receiver.unique_ids() == expected).then_some(())
    });
    let untrusted = poll_until(DELIVERED, "the untrusted endpoint failing", || {
        let status = status_of(&notifications, "untrusted");
        (status["state"] == "failing").then_some(status)
    });
    let error = untrusted["lastError"].as_str().expect("lastError");
    assert!(
        error.to_lowercase().contains("certificate"),
        "a certificate error: {error}"
    );
    assert_eq!(untrusted["delivered"], 0);
    assert_eq!(receiver.events().len(), 3, "only the trusted endpoint's");
}

/// Appends `count` events alternating push and pull to the store in `data_dir` (berth stopped, or not yet
/// started); the ids of the pushes.
fn append_to_store(data_dir: &Path, count: usize) -> Vec<String> {
    let store = SqliteStore::open(&SqliteStore::path_in(data_dir)).expect("open the event store");
    let events: Vec<Event> = (0..count)
        .map(|i| event([EventAction::Push, EventAction::Pull][i % 2], i))
        .collect();
    store.append(&events).expect("append");
    events
        .into_iter()
        .filter(|e| e.action == EventAction::Push)
        .map(|e| e.id)
        .collect()
}

#[test]
fn berth_serve_delivers_from_its_log_resumes_after_kill_9_and_refuses_a_bad_section() {
    let receiver = Receiver::start(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let mut expected = append_to_store(&data_dir, 10);
    let good = dir.path().join("good.yaml");
    write_file(
        &good,
        format!(
            "notifications:\n  endpoints:\n    - name: audit\n      url: '{}'\n      headers: {{Authorization: Bearer s3cret}}\n      actions: [push]\n      backoff: {{initial: 50ms, max: 500ms}}\n      start: oldest\n",
            receiver.url()
        ),
    );
    let mut berth = Berth::start(Options {
        plain_http: true,
        data_dir: Some(data_dir.clone()),
        extra_args: vec!["--config".into(), good.display().to_string()],
        ..Options::default()
    });
    poll_until(DELIVERED, "the pushes in the log delivered", || {
        (receiver.unique_ids() == expected).then_some(())
    });
    let readyz = poll_until(DELIVERED, "the lag at 0 in /readyz", || {
        let readyz: Value = berth
            .client()
            .get(format!("{}/readyz", berth.base_url))
            .send()
            .expect("readyz")
            .json()
            .expect("json");
        (readyz["events"]["notifications"][0]["lag"] == 0).then_some(readyz)
    });
    let endpoints = readyz["events"]["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("no notifications in {readyz}"));
    assert_eq!(endpoints.len(), 1, "{readyz}");
    assert_eq!(endpoints[0]["name"], "audit");
    assert_eq!(
        endpoints[0]["url"],
        format!("http://{}", receiver.addr),
        "shown without the path"
    );
    assert_eq!(endpoints[0]["cursor"], 10, "{readyz}");
    assert_eq!(endpoints[0]["delivered"], 5, "{readyz}");
    assert_eq!(endpoints[0]["failures"], 2, "{readyz}");
    assert!(!readyz.to_string().contains("s3cret"));

    // Killed, more events committed while it is down: the restart sends them, and nothing is lost.
    berth.kill9();
    expected.extend(append_to_store(&data_dir, 10));
    berth.restart();
    poll_until(DELIVERED, "every push after the restart", || {
        (receiver.unique_ids() == expected).then_some(())
    });
    check_cloudevents(&receiver.events());
    assert!(!berth.log().contains("s3cret"), "{}", berth.log());

    // A clean stop saves the cursor: past all 20 events (the pulls at the end passed by the filter).
    poll_until(DELIVERED, "the lag at 0 after the restart", || {
        let readyz: Value = berth
            .client()
            .get(format!("{}/readyz", berth.base_url))
            .send()
            .expect("readyz")
            .json()
            .expect("json");
        (readyz["events"]["notifications"][0]["lag"] == 0).then_some(())
    });
    let term = std::process::Command::new("kill")
        .args(["-TERM", &berth.pid().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    assert!(berth.wait_exit(Duration::from_secs(30)).success());
    let store = SqliteStore::open(&SqliteStore::path_in(&data_dir)).expect("open the event store");
    assert_eq!(store.cursor("notify:audit").expect("cursor"), 20);

    let bad = dir.path().join("bad.yaml");
    write_file(
        &bad,
        "notifications:\n  endpoints:\n    - url: 'http://127.0.0.1:9/x'\n      actions: [pushed]\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--plain-http",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("other-data"))
        .output()
        .expect("run berth");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains(r#"notifications.endpoints "127.0.0.1": actions "pushed" is not an action"#),
        "{stderr}"
    );
}
