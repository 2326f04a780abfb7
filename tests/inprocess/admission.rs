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
