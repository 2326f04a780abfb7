//! The registry's events in process (issue 12): each operation through the front door records exactly one event
//! per action with its fields — push (per tag), tag-moved with both digests, pull for a manifest GET (not a HEAD,
//! not a blob), delete, mount, upload-rejected, auth-failed with the attempted scope, proxy-fetch — carrying the
//! request id the client sent (echoed) or a fresh one. A store that fails makes pushes 503 and never a pull, and
//! shows in `/readyz`. Events are read from the store after [`EventLog::flush`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::Method;
use actix_web::test::TestRequest;
use actix_web::web;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use berth::clock::ManualClock;
use berth::config::PolicySource;
use berth::events::model::ActorKind;
use berth::events::store::{Pruned, PullStats, PushRecord, Result as StoreResult};
use berth::events::{
    Event, EventAction, EventLog, EventQuery, EventStore, Retention, StoreError, StoredEvent,
};
use berth::proxy::upstream::Upstream;
use berth::registry::storage::memory::MemoryStorage;
use berth::registry::storage::Storage;
use berth::server::AppState;

use super::fake_upstream::FakeUpstream;
use super::{Answer, Fixture, InProcess};
use crate::api::{content, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &[u8] = br#"{"os":"linux"}"#;
const LAYER: &[u8] = b"layer";

/// Every event the log committed, oldest first.
async fn events(berth: &InProcess) -> Vec<Event> {
    let log = berth.state.events.get_ref().clone();
    log.flush().await;
    let store = log.store().expect("the event log is on");
    store
        .query(&EventQuery {
            limit: 100_000,
            ..EventQuery::default()
        })
        .expect("querying the store")
        .into_iter()
        .map(|stored| stored.event)
        .collect()
}

/// What a test compares: the action, the repository and the tag.
fn summary(events: &[Event]) -> Vec<(EventAction, String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e.action,
                e.target.repository.clone().unwrap_or_default(),
                e.target.tag.clone(),
            )
        })
        .collect()
}

fn entry(
    action: EventAction,
    repo: &str,
    tag: Option<&str>,
) -> (EventAction, String, Option<String>) {
    (action, repo.to_owned(), tag.map(str::to_owned))
}

/// A manifest naming [`CONFIG`] and [`LAYER`], made unique by `seed`.
fn manifest(seed: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(CONFIG), "size": CONFIG.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(LAYER), "size": LAYER.len()}],
        "annotations": {"seed": seed.to_string()},
    }))
    .expect("json")
}

/// Pushes the config and layer blobs to `repo` (monolithic uploads: no events).
async fn push_blobs(berth: &InProcess, repo: &str, auth: Option<&(&'static str, String)>) {
    for blob in [CONFIG, LAYER] {
        let mut request = TestRequest::post()
            .uri(&format!(
                "/v2/{repo}/blobs/uploads/?digest={}",
                sha256(blob)
            ))
            .set_payload(blob.to_vec());
        if let Some(auth) = auth {
            request = request.insert_header(auth.clone());
        }
        let pushed = berth.send(request).await;
        assert_eq!(pushed.status, 201, "{:?}", pushed.body);
    }
}

fn put(repo: &str, reference: &str, manifest: &[u8]) -> TestRequest {
    TestRequest::put()
        .uri(&format!("/v2/{repo}/manifests/{reference}"))
        .insert_header(("content-type", OCI_MANIFEST))
        .set_payload(manifest.to_vec())
}

async fn expect(berth: &InProcess, request: TestRequest, status: u16) -> Answer {
    let answer = berth.send(request).await;
    assert_eq!(
        answer.status,
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer
}

#[actix_web::test]
async fn each_registry_operation_is_recorded_once_with_its_fields() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    push_blobs(berth, "team/app", None).await;
    let (m1, m2, m3) = (manifest(1), manifest(2), manifest(3));
    let (d1, d2, d3) = (sha256(&m1), sha256(&m2), sha256(&m3));

    expect(berth, put("team/app", "v1", &m1), 201).await;
    // The tag moves to another manifest: a push and a tag-moved with both digests.
    expect(berth, put("team/app", "v1", &m2), 201).await;
    // By digest with two tags: one push per tag.
    expect(
        berth,
        put("team/app", &format!("{d3}?tag=a&tag=b"), &m3),
        201,
    )
    .await;
    // Pulls: a GET is recorded, a HEAD and a blob GET are not.
    let pulled = expect(
        berth,
        TestRequest::get()
            .uri("/v2/team/app/manifests/v1")
            .insert_header(("x-request-id", "trace-42"))
            .insert_header(("user-agent", "containerd/2.0")),
        200,
    )
    .await;
    assert_eq!(
        pulled.header("x-request-id"),
        "trace-42",
        "the id is echoed"
    );
    expect(
        berth,
        TestRequest::default()
            .method(Method::HEAD)
            .uri("/v2/team/app/manifests/v1"),
        200,
    )
    .await;
    expect(
        berth,
        TestRequest::get().uri(&format!("/v2/team/app/blobs/{}", sha256(LAYER))),
        200,
    )
    .await;
    // A pull of nothing is not a pull.
    expect(
        berth,
        TestRequest::get().uri("/v2/team/app/manifests/missing"),
        404,
    )
    .await;
    // A mount from team/app.
    expect(
        berth,
        TestRequest::post().uri(&format!(
            "/v2/team/other/blobs/uploads/?mount={}&from=team/app",
            sha256(LAYER)
        )),
        201,
    )
    .await;
    // An upload whose content does not match its digest.
    let wrong = sha256(b"something else");
    let rejected = expect(
        berth,
        TestRequest::post()
            .uri(&format!("/v2/team/app/blobs/uploads/?digest={wrong}"))
            .set_payload(b"not that".to_vec()),
        400,
    )
    .await;
    let fresh_id = rejected.header("x-request-id").to_owned();
    assert_eq!(
        fresh_id.len(),
        26,
        "a fresh id is made and echoed: {fresh_id:?}"
    );
    // Deletes: a tag, a manifest by digest, a blob.
    expect(
        berth,
        TestRequest::delete().uri("/v2/team/app/manifests/a"),
        202,
    )
    .await;
    expect(
        berth,
        TestRequest::delete().uri(&format!("/v2/team/app/manifests/{d1}")),
        202,
    )
    .await;
    expect(
        berth,
        TestRequest::delete().uri(&format!("/v2/team/other/blobs/{}", sha256(LAYER))),
        202,
    )
    .await;

    let events = events(berth).await;
    assert_eq!(
        summary(&events),
        [
            entry(EventAction::Push, "team/app", Some("v1")),
            entry(EventAction::Push, "team/app", Some("v1")),
            entry(EventAction::TagMoved, "team/app", Some("v1")),
            entry(EventAction::Push, "team/app", Some("a")),
            entry(EventAction::Push, "team/app", Some("b")),
            entry(EventAction::Pull, "team/app", Some("v1")),
            entry(EventAction::Mount, "team/other", None),
            entry(EventAction::UploadRejected, "team/app", None),
            entry(EventAction::Delete, "team/app", Some("a")),
            entry(EventAction::Delete, "team/app", None),
            entry(EventAction::Delete, "team/other", None),
        ]
    );
    let first = &events[0];
    assert_eq!(first.target.digest.as_deref(), Some(d1.as_str()));
    assert_eq!(first.target.media_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(first.target.size, Some(m1.len() as u64));
    assert_eq!(first.result.status, 201);
    assert_eq!(first.actor.kind, ActorKind::Anonymous);
    assert_eq!(&*first.instance, "berth");
    let moved = &events[2];
    assert_eq!(moved.target.old_digest.as_deref(), Some(d1.as_str()));
    assert_eq!(moved.target.digest.as_deref(), Some(d2.as_str()));
    assert_eq!(events[3].target.digest.as_deref(), Some(d3.as_str()));
    let pull = &events[5];
    assert_eq!(pull.target.digest.as_deref(), Some(d2.as_str()));
    assert_eq!(pull.target.size, Some(m2.len() as u64));
    assert_eq!(pull.request_id.as_deref(), Some("trace-42"));
    assert_eq!(
        pull.client.as_ref().and_then(|c| c.user_agent.as_deref()),
        Some("containerd/2.0")
    );
    assert_eq!(pull.result.status, 200);
    let mount = &events[6];
    assert_eq!(mount.target.from.as_deref(), Some("team/app"));
    assert_eq!(mount.target.digest.as_deref(), Some(sha256(LAYER).as_str()));
    let upload = &events[7];
    assert_eq!(upload.target.digest.as_deref(), Some(wrong.as_str()));
    assert_eq!(upload.result.status, 400);
    assert_eq!(upload.result.code.as_deref(), Some("DIGEST_INVALID"));
    assert!(
        upload
            .result
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&wrong)),
        "{:?}",
        upload.result.message
    );
    assert_eq!(upload.request_id.as_deref(), Some(fresh_id.as_str()));
    assert_eq!(
        events[8].target.digest.as_deref(),
        Some(d3.as_str()),
        "the tag's digest"
    );
    assert_eq!(events[9].target.digest.as_deref(), Some(d1.as_str()));
    // Ids sort in the order of recording.
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
}

#[actix_web::test]
async fn a_request_id_that_is_not_sane_is_replaced_and_every_answer_carries_one() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let long = "x".repeat(129);
    for given in ["has space", long.as_str()] {
        let answer = expect(
            berth,
            TestRequest::get()
                .uri("/v2/")
                .insert_header(("x-request-id", given)),
            200,
        )
        .await;
        let id = answer.header("x-request-id");
        assert_eq!(id.len(), 26, "{given:?} replaced by a fresh id, got {id:?}");
    }
    let refused = berth
        .send(TestRequest::get().uri("/v2/team/app/manifests/nope"))
        .await;
    refused.expect_error(404, "MANIFEST_UNKNOWN");
    assert!(
        !refused.header("x-request-id").is_empty(),
        "errors carry it too"
    );
}

fn basic(user: &str, password: &str) -> (&'static str, String) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    ("authorization", format!("Basic {encoded}"))
}

#[actix_web::test]
async fn refusals_by_the_front_door_record_auth_failed_with_the_attempted_scope() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let hash = bcrypt::hash("secret", 4).expect("bcrypt");
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("alice:{hash}\nbob:{hash}\n"),
    )
    .expect("write htpasswd");
    std::fs::write(
        dir.path().join("policy.yaml"),
        r#"
access:
  anonymous: none
  rules:
    - name: bob-reads
      repositories: ['team-a/.*']
      subjects: ['user:bob']
      actions: [pull]
    - name: alice-writes
      repositories: ['team-a/.*']
      subjects: ['user:alice']
      actions: [pull, push]
"#,
    )
    .expect("write policy");
    let fixture = Fixture::with_config(|config| {
        config.auth.htpasswd = Some(dir.path().join("htpasswd"));
        config.policy = PolicySource::File(dir.path().join("policy.yaml"));
    })
    .await;
    let berth = &fixture.berth;
    let alice = basic("alice", "secret");
    push_blobs(berth, "team-a/app", Some(&alice)).await;

    // The challenge every token flow starts with is not a failure.
    expect(berth, TestRequest::get().uri("/v2/"), 401).await;
    expect(
        berth,
        TestRequest::get().uri("/v2/team-a/app/manifests/v1"),
        401,
    )
    .await;
    // bob may pull, not push: 403.
    let refused = berth
        .send(put("team-a/app", "v1", &manifest(1)).insert_header(basic("bob", "secret")))
        .await;
    let message = refused.expect_error(403, "DENIED");
    // A wrong password: 401 to presented credentials.
    expect(
        berth,
        TestRequest::get()
            .uri("/v2/team-a/app/manifests/v1")
            .insert_header(basic("alice", "wrong")),
        401,
    )
    .await;
    // alice's push is recorded with her as the actor.
    expect(
        berth,
        put("team-a/app", "v1", &manifest(1)).insert_header(alice.clone()),
        201,
    )
    .await;

    let events = events(berth).await;
    assert_eq!(
        summary(&events),
        [
            entry(EventAction::AuthFailed, "team-a/app", None),
            entry(EventAction::AuthFailed, "team-a/app", None),
            entry(EventAction::Push, "team-a/app", Some("v1")),
        ]
    );
    let denied = &events[0];
    assert_eq!(denied.actor.subject(), "user:bob");
    assert_eq!(
        denied.target.scope.as_deref(),
        Some("repository:team-a/app:push")
    );
    assert_eq!(denied.result.status, 403);
    assert_eq!(denied.result.code.as_deref(), Some("DENIED"));
    assert_eq!(denied.result.message.as_deref(), Some(message.as_str()));
    let wrong_password = &events[1];
    assert_eq!(wrong_password.actor.kind, ActorKind::Anonymous);
    assert_eq!(
        wrong_password.target.scope.as_deref(),
        Some("repository:team-a/app:pull")
    );
    assert_eq!(wrong_password.result.status, 401);
    assert_eq!(events[2].actor.subject(), "user:alice");
}

#[actix_web::test]
async fn the_pull_through_cache_records_each_fetch_from_its_upstream_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = super::config(&dir.path().join("data"));
    let clock = ManualClock::new();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::with_clock(clock.clone()));
    let upstream = FakeUpstream::new("up", Duration::from_secs(60));
    let layer = Bytes::from(content(50_000, 7));
    let layer_digest = upstream.add_blob(layer.clone());
    let config_blob = Bytes::from_static(CONFIG);
    let config_digest = upstream.add_blob(config_blob.clone());
    let image = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_blob.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .expect("json");
    let digest = upstream.set_manifest("library/app", "v1", Bytes::from(image.clone()));
    let upstreams: Vec<Arc<dyn Upstream>> = vec![upstream.clone()];
    let state = AppState::with_upstreams(&config, storage, clock, upstreams)
        .await
        .expect("state");
    let berth = InProcess::mount(state).await;

    for _ in 0..2 {
        expect(
            &berth,
            TestRequest::get().uri("/v2/proxy/up/library/app/manifests/v1"),
            200,
        )
        .await;
        let blob = expect(
            &berth,
            TestRequest::get().uri(&format!("/v2/proxy/up/library/app/blobs/{layer_digest}")),
            200,
        )
        .await;
        assert_eq!(blob.body, layer);
    }
    // The blob's fetch ends (and is recorded) in the background, after its last byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = events(&berth).await;
        if events
            .iter()
            .filter(|e| e.action == EventAction::ProxyFetch)
            .count()
            >= 2
        {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "no blob fetch recorded: {:?}",
            summary(&events)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let repo = "proxy/up/library/app";
    let fetches: Vec<&Event> = events
        .iter()
        .filter(|e| e.action == EventAction::ProxyFetch)
        .collect();
    assert_eq!(fetches.len(), 2, "{:?}", summary(&events));
    let manifest_fetch = fetches
        .iter()
        .find(|e| e.target.tag.is_some())
        .expect("the manifest's fetch");
    assert_eq!(
        manifest_fetch.target.digest.as_deref(),
        Some(digest.to_string().as_str())
    );
    assert_eq!(manifest_fetch.target.upstream.as_deref(), Some("up"));
    assert_eq!(manifest_fetch.target.repository.as_deref(), Some(repo));
    assert_eq!(manifest_fetch.target.size, Some(image.len() as u64));
    assert_eq!(manifest_fetch.actor.kind, ActorKind::Berth);
    let blob_fetch = fetches
        .iter()
        .find(|e| e.target.tag.is_none())
        .expect("the blob's fetch");
    assert_eq!(
        blob_fetch.target.digest.as_deref(),
        Some(layer_digest.to_string().as_str())
    );
    assert_eq!(blob_fetch.target.size, Some(layer.len() as u64));
    let pulls: Vec<&Event> = events
        .iter()
        .filter(|e| e.action == EventAction::Pull)
        .collect();
    assert_eq!(pulls.len(), 2, "{:?}", summary(&events));
    assert!(pulls
        .iter()
        .all(|e| e.target.repository.as_deref() == Some(repo)));
}

/// A store that fails while `broken` is set, else keeps events in memory.
#[derive(Default)]
struct Flaky {
    broken: AtomicBool,
    events: Mutex<Vec<Event>>,
}

impl EventStore for Flaky {
    fn append(&self, events: &[Event]) -> StoreResult<u64> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Database("disk I/O error".into()));
        }
        let mut stored = self.events.lock().expect("lock");
        stored.extend_from_slice(events);
        Ok(stored.len() as u64)
    }
    fn query(&self, _: &EventQuery) -> StoreResult<Vec<StoredEvent>> {
        Ok(Vec::new())
    }
    fn last_seq(&self) -> StoreResult<u64> {
        Ok(self.events.lock().expect("lock").len() as u64)
    }
    fn prune(&self, _: &Retention, _: SystemTime) -> StoreResult<Pruned> {
        Ok(Pruned::default())
    }
    fn cursor(&self, _: &str) -> StoreResult<u64> {
        Ok(0)
    }
    fn set_cursor(&self, _: &str, _: u64) -> StoreResult<()> {
        Ok(())
    }
    fn size(&self) -> StoreResult<u64> {
        Ok(0)
    }
    fn pull_stats(&self, _: &[String], _: i64, _: i64) -> StoreResult<Vec<PullStats>> {
        Ok(Vec::new())
    }
    fn last_pushes(&self, _: &[String]) -> StoreResult<Vec<PushRecord>> {
        Ok(Vec::new())
    }
}

#[actix_web::test]
async fn a_broken_store_fails_pushes_with_503_never_a_pull_and_shows_in_readyz() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = super::config(&dir.path().join("data"));
    let clock = ManualClock::new();
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::with_clock(clock.clone()));
    let mut state = AppState::build(&config, storage, clock.clone())
        .await
        .expect("state");
    let store = Arc::new(Flaky::default());
    state.events = web::Data::new(EventLog::start(store.clone(), "berth-0", clock));
    let berth = InProcess::mount(state).await;
    push_blobs(&berth, "team/app", None).await;
    expect(&berth, put("team/app", "v1", &manifest(1)), 201).await;

    store.broken.store(true, Ordering::SeqCst);
    let pulled = expect(
        &berth,
        TestRequest::get().uri("/v2/team/app/manifests/v1"),
        200,
    )
    .await;
    assert_eq!(pulled.header("docker-content-digest"), sha256(&manifest(1)));
    let refused = berth.send(put("team/app", "v2", &manifest(2))).await;
    let message = refused.expect_error(503, "UNAVAILABLE");
    assert!(
        message.starts_with("the event log did not store the event: ")
            && message.contains("disk I/O error"),
        "{message}"
    );
    assert_eq!(refused.header("retry-after"), "5");
    let deleted = berth
        .send(TestRequest::delete().uri("/v2/team/app/manifests/v1"))
        .await;
    deleted.expect_error(503, "UNAVAILABLE");

    let ready = expect(&berth, TestRequest::get().uri("/readyz"), 200).await;
    let ready: Value = serde_json::from_slice(&ready.body).expect("json");
    assert_eq!(ready["events"]["state"], "failing", "{ready}");
    assert_eq!(ready["events"]["dropped"], 1, "the pull's event: {ready}");

    // Mended: the client's retry is acknowledged and recorded.
    store.broken.store(false, Ordering::SeqCst);
    expect(&berth, put("team/app", "v2", &manifest(2)), 201).await;
    let stored = store.events.lock().expect("lock").clone();
    assert_eq!(
        summary(&stored),
        [
            entry(EventAction::Push, "team/app", Some("v1")),
            entry(EventAction::Push, "team/app", Some("v2")),
        ]
    );
    assert_eq!(&*stored[1].instance, "berth-0");
}
