//! The event log's guarantees with the real `berth` process (issue 12): every push acknowledged before a `kill -9`
//! has its event after the restart; a clean stop (SIGTERM) loses no pull event; and under a load of manifest GETs
//! no event is dropped. Events are read from the data directory's store (`events/events.db`) with the store's own
//! API, beside the running berth (SQLite in WAL mode lets a reader in).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::sha256;
use crate::support::{poll_until, Berth, Options};
use berth::events::sqlite::SqliteStore;
use berth::events::{Event, EventAction, EventQuery, EventStore};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &[u8] = br#"{"os":"linux"}"#;
const LAYER: &[u8] = b"layer";

fn berth() -> Berth {
    Berth::start(Options {
        plain_http: true,
        ..Options::default()
    })
}

/// The events of `action` in berth's store.
fn stored(berth: &Berth, action: EventAction) -> Vec<Event> {
    let store = SqliteStore::open(&SqliteStore::path_in(&berth.data_dir)).expect("open the store");
    store
        .query(&EventQuery {
            actions: vec![action],
            limit: 1_000_000,
            ..EventQuery::default()
        })
        .expect("query the store")
        .into_iter()
        .map(|stored| stored.event)
        .collect()
}

/// Pushes the blobs every [`manifest`] names to `repo`.
fn push_blobs(berth: &Berth, client: &reqwest::blocking::Client, repo: &str) {
    for blob in [CONFIG, LAYER] {
        let url = format!(
            "{}/v2/{repo}/blobs/uploads/?digest={}",
            berth.base_url,
            sha256(blob)
        );
        let pushed = client
            .post(url)
            .body(blob.to_vec())
            .send()
            .expect("push blob");
        assert_eq!(pushed.status(), 201);
    }
}

/// A manifest naming [`CONFIG`] and [`LAYER`], unique by `seed`.
fn manifest(seed: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(CONFIG), "size": CONFIG.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(LAYER), "size": LAYER.len()}],
        "annotations": {"seed": seed.to_string()},
    }))
    .expect("json")
}

fn push(
    berth: &Berth,
    client: &reqwest::blocking::Client,
    repo: &str,
    tag: &str,
    manifest: &[u8],
) -> reqwest::Result<reqwest::blocking::Response> {
    client
        .put(format!("{}/v2/{repo}/manifests/{tag}", berth.base_url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.to_vec())
        .send()
}

#[test]
fn every_push_acknowledged_before_a_kill_9_has_its_event_after_the_restart() {
    let mut berth = berth();
    let client = berth.client();
    push_blobs(&berth, &client, "storm/app");
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let pushers: Vec<_> = (0..4u64)
        .map(|worker| {
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            let (client, base) = (client.clone(), berth.base_url.clone());
            thread::spawn(move || {
                for i in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let tag = format!("w{worker}-{i}");
                    let body = manifest(worker * 1_000_000 + i);
                    let answer = client
                        .put(format!("{base}/v2/storm/app/manifests/{tag}"))
                        .header("content-type", OCI_MANIFEST)
                        .body(body.clone())
                        .timeout(Duration::from_secs(10))
                        .send();
                    match answer {
                        Ok(answer) if answer.status() == 201 => {
                            acknowledged
                                .lock()
                                .expect("lock")
                                .push((tag, sha256(&body)));
                        }
                        // Killed mid-request, or refused while dying: not acknowledged.
                        _ => {}
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    berth.kill9();
    stop.store(true, Ordering::SeqCst);
    for pusher in pushers {
        pusher.join().expect("pusher");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() >= 20,
        "only {} pushes acknowledged in 2 s: the storm did not happen",
        acknowledged.len()
    );

    berth.restart();
    let pushes = stored(&berth, EventAction::Push);
    let recorded: std::collections::HashSet<(String, String)> = pushes
        .iter()
        .map(|e| {
            (
                e.target.tag.clone().unwrap_or_default(),
                e.target.digest.clone().unwrap_or_default(),
            )
        })
        .collect();
    let missing: Vec<&(String, String)> = acknowledged
        .iter()
        .filter(|push| !recorded.contains(*push))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged pushes have no event, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        missing.first()
    );
    // Still serving, and still recording.
    let answer = push(&berth, &client, "storm/app", "after", &manifest(7)).expect("push");
    assert_eq!(answer.status(), 201);
}

#[test]
fn a_clean_stop_loses_no_pull_event() {
    const PULLS: usize = 300;
    let mut berth = berth();
    let client = berth.client();
    push_blobs(&berth, &client, "team/app");
    let pushed = push(&berth, &client, "team/app", "v1", &manifest(1)).expect("push");
    assert_eq!(pushed.status(), 201);
    for _ in 0..PULLS {
        let pulled = client
            .get(format!("{}/v2/team/app/manifests/v1", berth.base_url))
            .header("accept", OCI_MANIFEST)
            .send()
            .expect("pull");
        assert_eq!(pulled.status(), 200);
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(berth.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM: {status}");
    let exit = berth.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "berth exited with {exit}\n{}", berth.log());

    berth.restart();
    let pulls = stored(&berth, EventAction::Pull);
    assert_eq!(pulls.len(), PULLS, "every pull before the stop is recorded");
    assert!(pulls
        .iter()
        .all(|e| e.target.tag.as_deref() == Some("v1") && e.result.status == 200));
}

#[test]
fn under_a_load_of_manifest_gets_no_event_is_dropped() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1_250;
    let berth = berth();
    let client = berth.client();
    push_blobs(&berth, &client, "load/app");
    let pushed = push(&berth, &client, "load/app", "v1", &manifest(1)).expect("push");
    assert_eq!(pushed.status(), 201);
    let url = format!("{}/v2/load/app/manifests/v1", berth.base_url);
    let pullers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            thread::spawn(move || {
                for _ in 0..PER_THREAD {
                    let pulled = client.get(&url).send().expect("pull");
                    assert_eq!(pulled.status(), 200);
                }
            })
        })
        .collect();
    for puller in pullers {
        puller.join().expect("puller");
    }
    let expected = (THREADS * PER_THREAD + 1) as u64;
    let events = poll_until(Duration::from_secs(20), "every event written", || {
        let ready: Value = client
            .get(format!("{}/readyz", berth.base_url))
            .send()
            .ok()?
            .json()
            .ok()?;
        let events = ready["events"].clone();
        (events["written"].as_u64() >= Some(expected)).then_some(events)
    });
    assert_eq!(events["dropped"], 0, "{events}");
    assert_eq!(events["written"], expected, "{events}");
    assert_eq!(events["state"], "ok", "{events}");
    assert_eq!(
        stored(&berth, EventAction::Pull).len(),
        THREADS * PER_THREAD
    );
}
