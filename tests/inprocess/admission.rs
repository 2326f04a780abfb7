//! The admission webhooks in process: `/mutate`, where its answer depends on what berth can serve (the registry
//! service and the proxy behind it), and `/validate`'s pull authorization with the admission settings berth runs
//! with when auth is on.

use actix_web::test::TestRequest;
use base64::Engine as _;
use serde_json::{json, Value};

use berth::config::PolicySource;

use super::Fixture;

/// A pod review for `/mutate` with one container running `image`.
fn review(image: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0c0ffee0-0000-4000-8000-000000000384",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "app",
            "namespace": "apps",
            "operation": "CREATE",
            "userInfo": {"username": "dev"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app", "namespace": "apps"},
                "spec": {"containers": [{"name": "web", "image": image}]}
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// Review of issue 10: references by `sha384` parse again (pods pull by them elsewhere), but berth verifies only
/// sha256 and sha512 and refuses such a pull. A rewrite to berth, even `when: always` or to a proxied path that
/// "serves" the repository, would break the pod; it is left out with a warning that says why. A sha256 image of
/// the same rule is rewritten, so the test fails if the rule never applies.
#[actix_web::test]
async fn a_sha384_image_is_never_rewritten_to_berth_which_cannot_serve_it() {
    let policy_dir = tempfile::tempdir().expect("temporary directory");
    let policy = policy_dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        r#"
defaultAction: allow
rewrites:
  - {name: always-berth, match: 'registry\.example/(.+)', replace: 'berth.berth-system.svc/$1', when: always}
"#,
    )
    .expect("writing the policy");
    let fixture = Fixture::with_config(|config| config.policy = PolicySource::File(policy)).await;
    let mutate = |image: String| {
        let berth = &fixture.berth;
        async move {
            let answer = berth
                .send(
                    TestRequest::post()
                        .uri("/mutate")
                        .insert_header(("content-type", "application/json"))
                        .set_payload(review(&image).to_string()),
                )
                .await;
            assert_eq!(answer.status, 200, "{:?}", answer.body);
            let body: Value = serde_json::from_slice(&answer.body).expect("an AdmissionReview");
            body["response"].clone()
        }
    };

    let sha256 = format!("registry.example/app@sha256:{}", "a".repeat(64));
    let response = mutate(sha256).await;
    assert_eq!(response["allowed"], true, "{response}");
    let patch = response["patch"]
        .as_str()
        .expect("the sha256 image is rewritten");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let patch = String::from_utf8_lossy(&patch);
    assert!(
        patch.contains("berth.berth-system.svc/app@sha256:"),
        "{patch}"
    );

    let sha384 = format!("registry.example/app@sha384:{}", "e".repeat(96));
    let response = mutate(sha384).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        response.get("patch").is_none_or(Value::is_null),
        "{response}"
    );
    let warnings = response["warnings"].to_string();
    assert!(
        warnings.contains("is not available from berth")
            && warnings.contains("unsupported digest algorithm (sha256 and sha512 are)"),
        "{warnings}"
    );
}

/// Issue 11: with pull authorization on (the lead sets it when auth is on), `/validate` refuses a pod whose
/// ServiceAccount may not pull the berth image it names, and says who, what and why; the same image in its own
/// namespace is admitted.
#[actix_web::test]
async fn validate_authorizes_pulls_from_berth_for_the_pods_service_account() {
    let fixture = Fixture::new().await;
    let mut state = fixture.berth.state.clone();
    state.settings =
        actix_web::web::Data::new(state.settings.as_ref().clone().authorizing_pulls(true));
    let berth = super::InProcess::mount(state).await;
    for (namespace, allowed) in [("team-b", false), ("team-a", true)] {
        let mut review = review("127.0.0.1:5050/team-a/app:1.0");
        review["request"]["namespace"] = json!(namespace);
        review["request"]["object"]["spec"]["serviceAccountName"] = json!("runner");
        let answer = berth
            .send(
                TestRequest::post()
                    .uri("/validate")
                    .insert_header(("content-type", "application/json"))
                    .set_payload(review.to_string()),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let body: Value = serde_json::from_slice(&answer.body).expect("an AdmissionReview");
        let response = &body["response"];
        assert_eq!(response["allowed"], allowed, "{namespace}: {response}");
        if !allowed {
            assert_eq!(response["status"]["code"], 403, "{response}");
            let message = response["status"]["message"].as_str().unwrap_or_default();
            for needle in [
                "container \"web\"",
                "\"127.0.0.1:5050/team-a/app:1.0\"",
                "serviceaccount:team-b/runner",
                "repository team-a/app",
                "no rule allows it",
            ] {
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
        }
    }
}

/// The events committed after sequence number `after`, once everything queued is committed.
async fn events_after(berth: &super::InProcess, after: u64) -> Vec<berth::events::StoredEvent> {
    berth.state.events.flush().await;
    let store = berth.state.events.store().expect("the event log is on");
    tokio::task::spawn_blocking(move || {
        store.query(&berth::events::EventQuery {
            after_seq: Some(after),
            limit: 100,
            ..Default::default()
        })
    })
    .await
    .expect("the query task")
    .expect("querying the events")
}

/// Issue 12: every `/validate` answer is one event (`denied`, `warned`, `admitted`) and a `/mutate` that rewrote an
/// image one `mutated` event, each with the object, its ServiceAccount, every container's image, the rule that
/// decided, the requesting user as the actor and the review's uid as the request id; a `/mutate` that changed
/// nothing records none, and a review berth cannot read is recorded as `denied` with why.
#[actix_web::test]
async fn each_admission_answer_records_one_event_with_its_decision() {
    let policy_dir = tempfile::tempdir().expect("temporary directory");
    let policy = policy_dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        r#"
defaultAction: allow
rules:
  - {name: no-latest, action: deny, images: ['.*:latest'], message: pin a version}
  - {name: old-redis, action: warn, images: ['docker\.io/library/redis:5\..*'], message: upgrade}
rewrites:
  - {name: example-via-berth, match: 'registry\.example/(.+)', replace: 'berth.berth-system.svc/$1', when: always}
"#,
    )
    .expect("writing the policy");
    let fixture = Fixture::with_config(|config| config.policy = PolicySource::File(policy)).await;
    let berth = &fixture.berth;
    let mut seen = 0;
    // (endpoint, image, the action recorded (none for a no-op mutate), rule, rewritten to)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: &[Case] = &[
        (
            "/validate",
            "nginx:latest",
            Some("denied"),
            Some("no-latest"),
            None,
        ),
        (
            "/validate",
            "redis:5.0",
            Some("warned"),
            Some("old-redis"),
            None,
        ),
        ("/validate", "nginx:1.25", Some("admitted"), None, None),
        (
            "/mutate",
            "registry.example/team-a/app:1",
            Some("mutated"),
            Some("example-via-berth"),
            Some("berth.berth-system.svc/team-a/app:1"),
        ),
        ("/mutate", "nginx:1.25", None, None, None),
    ];
    for (n, (endpoint, image, action, rule, rewritten)) in cases.iter().enumerate() {
        let uid = format!("0c0ffee0-0000-4000-8000-00000000000{n}");
        let mut body = review(image);
        body["request"]["uid"] = json!(uid);
        body["request"]["object"]["spec"]["serviceAccountName"] = json!("runner");
        let answer = berth
            .send(
                TestRequest::post()
                    .uri(endpoint)
                    .insert_header(("content-type", "application/json"))
                    .insert_header(("user-agent", "kube-apiserver-admission"))
                    .set_payload(body.to_string()),
            )
            .await;
        assert_eq!(answer.status, 200, "{endpoint} {image}: {:?}", answer.body);
        let events = events_after(berth, seen).await;
        let Some(action) = action else {
            assert!(events.is_empty(), "{endpoint} {image}: {events:?}");
            continue;
        };
        assert_eq!(events.len(), 1, "{endpoint} {image}: {events:?}");
        seen = events[0].seq;
        let event = serde_json::to_value(&events[0].event).expect("json");
        assert_eq!(event["action"], *action, "{event}");
        assert_eq!(
            event["actor"],
            json!({"kind": "kubernetes", "name": "dev"}),
            "{event}"
        );
        assert_eq!(event["requestId"], uid.as_str(), "{event}");
        assert_eq!(
            event["client"]["userAgent"], "kube-apiserver-admission",
            "{event}"
        );
        let admission = &event["admission"];
        assert_eq!(admission["namespace"], "apps", "{event}");
        assert_eq!(admission["kind"], "Pod", "{event}");
        assert_eq!(admission["name"], "app", "{event}");
        assert_eq!(admission["operation"], "CREATE", "{event}");
        assert_eq!(admission["serviceAccount"], "runner", "{event}");
        assert_eq!(admission["containers"][0]["name"], "web", "{event}");
        assert_eq!(admission["containers"][0]["image"], *image, "{event}");
        assert_eq!(
            admission["containers"][0]["rewritten"].as_str(),
            *rewritten,
            "{event}"
        );
        assert_eq!(admission["rule"].as_str(), *rule, "{event}");
        assert_eq!(event["result"]["status"], 200, "{event}");
        match *action {
            "denied" => assert!(
                event["result"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("pin a version")),
                "{event}"
            ),
            _ => assert!(event["result"].get("message").is_none(), "{event}"),
        }
        match *action {
            "warned" => assert!(
                admission["warnings"][0]
                    .as_str()
                    .is_some_and(|w| w.contains("upgrade")),
                "{event}"
            ),
            _ => assert!(admission.get("warnings").is_none(), "{event}"),
        }
    }

    // Unreadable: answered allowed false, recorded as denied with why, under the uid found in the body.
    let cut = r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"cut-1","kind":"#;
    for endpoint in ["/validate", "/mutate"] {
        let answer = berth
            .send(
                TestRequest::post()
                    .uri(endpoint)
                    .insert_header(("content-type", "application/json"))
                    .set_payload(cut),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let events = events_after(berth, seen).await;
        assert_eq!(events.len(), 1, "{endpoint}: {events:?}");
        seen = events[0].seq;
        let event = &events[0].event;
        assert_eq!(event.action, berth::events::EventAction::Denied);
        assert_eq!(event.request_id.as_deref(), Some("cut-1"));
        assert!(
            event
                .result
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("cannot read the AdmissionReview")),
            "{event:?}"
        );
    }
}
