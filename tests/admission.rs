//! The admission webhooks through the real HTTP endpoints of a running berth over TLS: fixture AdmissionReviews
//! from tests/fixtures, exact decisions, messages and patches; policy reload from a watched file; the policy CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::api::{sha256, Api};
use crate::support::{poll_until, Berth, Options};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A berth over TLS whose policy is a copy of tests/fixtures/policy.yaml (so tests can change it).
struct Webhooks {
    berth: Berth,
    api: Api,
    policy_path: PathBuf,
    _policy_dir: tempfile::TempDir,
}

fn start() -> Webhooks {
    start_with_policy(&fixture("policy.yaml"))
}

fn start_with_policy(policy: &str) -> Webhooks {
    let policy_dir = tempfile::tempdir().expect("tempdir");
    let policy_path = policy_dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).expect("write policy");
    let berth = Berth::start(Options {
        extra_args: vec!["--policy-file".into(), policy_path.display().to_string()],
        ..Options::default()
    });
    let api = Api::new(&berth);
    Webhooks {
        berth,
        api,
        policy_path,
        _policy_dir: policy_dir,
    }
}

impl Webhooks {
    /// POSTs a review body to an endpoint; the answer is always 200 with an AdmissionReview.
    fn review(&self, endpoint: &str, body: impl Into<reqwest::blocking::Body>) -> Value {
        let response = self
            .api
            .client
            .post(self.api.url(endpoint))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("POST review");
        assert_eq!(response.status().as_u16(), 200, "{endpoint}");
        let review: Value = response.json().expect("AdmissionReview JSON");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        review["response"].clone()
    }
}

/// The decoded JSON patch of a response: a base64 string (standard alphabet, padded), as the API server requires.
pub(crate) fn patch_of(response: &Value) -> Option<Value> {
    let encoded = match &response["patch"] {
        Value::Null => return None,
        Value::String(encoded) => encoded,
        other => panic!("the patch must be a base64 string, not {other}"),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 patch");
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).expect("patch JSON"))
}

#[test]
fn validate_decides_every_container_of_pods_and_workloads() {
    let hooks = start();
    let response = hooks.review("/validate", fixture("pod-create.json"));
    assert_eq!(response["uid"], "7f0b2ad4-0a39-4c1b-9f0e-000000000001");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(
        response["status"]["message"],
        "berth denied Pod prod-shop/web: \
         container \"web\" image \"nginx\" (docker.io/library/nginx:latest) is denied by rule \"no-latest\": pin a version; \
         container \"debug\" image \"evil.example/tools:1\" is denied by rule \"evil\": images from evil.example are forbidden"
    );
    assert_eq!(
        response["warnings"],
        json!(["container \"migrate\" image \"busybox:1.36\" (docker.io/library/busybox:1.36): rule \"hub-warning\": prefer the in-cluster registry"])
    );

    let response = hooks.review("/validate", fixture("pod-ephemeral.json"));
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"]["message"],
        "berth denied Pod apps/api: container \"debugger\" image \"evil.example/shell:1\" is denied by rule \"evil\": images from evil.example are forbidden"
    );

    let response = hooks.review("/validate", fixture("pod-update.json"));
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"]["message"],
        "berth denied Pod prod-shop/api: container \"api\" image \"quay.io/team/api:latest\" is denied by rule \"no-latest\": pin a version"
    );

    let response = hooks.review("/validate", fixture("deployment.json"));
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"]["message"],
        "berth denied Deployment prod-shop/shop: container \"shop\" image \"docker.io/team/shop:latest\" is denied by rule \"no-latest\": pin a version"
    );
    assert_eq!(
        response["warnings"],
        json!(null),
        "a denied image is not also warned about"
    );

    let response = hooks.review("/validate", fixture("cronjob.json"));
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"]["message"],
        "berth denied CronJob apps/report: container \"fetch\" image \"evil.example/fetch:2\" is denied by rule \"evil\": images from evil.example are forbidden"
    );

    let response = hooks.review("/validate", fixture("pod-delete.json"));
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], "7f0b2ad4-0a39-4c1b-9f0e-000000000005");
    assert!(response.get("warnings").is_none());

    // Templates are never mutated (GitOps tools would see drift).
    let response = hooks.review("/mutate", fixture("deployment.json"));
    assert_eq!(response["allowed"], true);
    assert_eq!(patch_of(&response), None);
}

#[test]
fn unreadable_reviews_are_refused_with_a_message_never_a_500() {
    let hooks = start();
    let huge = format!("{{\"padding\": \"{}\"}}", "x".repeat(9 * 1024 * 1024));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed",
            fixture("malformed.json").into_bytes(),
            "cannot read the AdmissionReview",
        ),
        (
            "not JSON",
            b"hello".to_vec(),
            "cannot read the AdmissionReview",
        ),
        ("empty", Vec::new(), "cannot read the AdmissionReview"),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "has no request",
        ),
        ("huge", huge.into_bytes(), "larger than"),
    ];
    for endpoint in ["/validate", "/mutate"] {
        for (what, body, needle) in &cases {
            let response = hooks.review(endpoint, body.clone());
            assert_eq!(response["allowed"], false, "{endpoint} {what}");
            let message = response["status"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{endpoint} {what}: {message:?}");
        }
    }
    assert!(!hooks.berth.log().contains("panicked"));
}

#[test]
fn mutate_rewrites_available_images_and_is_idempotent() {
    let hooks = start();
    // berth holds library/busybox:1.36, so the `when: available` rewrite of busybox applies; nginx:1.25 is not held.
    let (_, busybox_digest) = hooks.api.push_image("library/busybox", "1.36", 21);

    let response = hooks.review("/mutate", fixture("pod-mutate.json"));
    assert_eq!(response["uid"], "7f0b2ad4-0a39-4c1b-9f0e-000000000002");
    assert_eq!(response["allowed"], true);
    let patch = patch_of(&response).expect("a patch");
    assert_eq!(
        patch,
        json!([
            {"op": "replace", "path": "/spec/initContainers/0/image", "value": "127.0.0.1:5050/library/busybox:1.36"},
            {"op": "replace", "path": "/spec/containers/1/image", "value": "127.0.0.1:5050/k8s/pause:3.9"},
            {"op": "add", "path": "/metadata/annotations/berth.dev~1original-images",
             "value": "{\"migrate\":\"busybox:1.36\",\"pause\":\"registry.k8s.io/pause:3.9\"}"}
        ])
    );
    assert_eq!(
        response["warnings"],
        json!(["container \"web\": 127.0.0.1:5050/library/nginx:1.25 is not available from berth, image \"nginx:1.25\" left unchanged (rewrite \"hub-via-berth\")"])
    );

    // Kubernetes may reinvoke the webhook on the mutated pod: nothing more changes.
    let mut review: Value = serde_json::from_str(&fixture("pod-mutate.json")).expect("fixture");
    let ops: json_patch::Patch = serde_json::from_value(patch).expect("patch");
    json_patch::patch(&mut review["request"]["object"], &ops).expect("patch applies to the pod");
    let again = hooks.review("/mutate", review.to_string());
    assert_eq!(patch_of(&again), None, "second pass: {again}");

    // A digest-pinned image is available by digest.
    let mut review: Value = serde_json::from_str(&fixture("pod-mutate.json")).expect("fixture");
    review["request"]["object"]["spec"]["initContainers"][0]["image"] =
        json!(format!("busybox@{busybox_digest}"));
    let response = hooks.review("/mutate", review.to_string());
    let patch = patch_of(&response).expect("a patch");
    assert_eq!(
        patch[0]["value"],
        format!("127.0.0.1:5050/library/busybox@{busybox_digest}")
    );

    // Excluded namespaces are untouched.
    let mut review: Value = serde_json::from_str(&fixture("pod-mutate.json")).expect("fixture");
    review["request"]["namespace"] = json!("kube-system");
    assert_eq!(patch_of(&hooks.review("/mutate", review.to_string())), None);
    // The validated result of the mutation is allowed (the rewritten images and their originals pass the policy).
    let mut review: Value = serde_json::from_str(&fixture("pod-mutate.json")).expect("fixture");
    let mutated = hooks.review("/mutate", review.to_string());
    let ops: json_patch::Patch =
        serde_json::from_value(patch_of(&mutated).expect("patch")).expect("patch");
    json_patch::patch(&mut review["request"]["object"], &ops).expect("applies");
    assert_eq!(
        hooks.review("/validate", review.to_string())["allowed"],
        true
    );
}

/// A review of a pod in `apps` creating `containers`, with `annotations`.
fn pod_review(containers: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p", "namespace": "apps", "operation": "CREATE", "userInfo": {"username": "bob"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "p", "namespace": "apps", "annotations": annotations},
                       "spec": {"containers": containers}},
            "oldObject": null, "dryRun": false
        }
    })
}

/// Issue 9, item 1: with `defaultAction: deny`, `/validate` decided the image `/mutate` had just written, which no
/// rule allows, and refused every pod berth rewrote.
#[test]
fn default_deny_admits_the_pods_berth_rewrote() {
    let hooks = start_with_policy(
        r#"
defaultAction: deny
rules:
  - {name: hub-official, action: allow, images: ['docker\.io/library/.*']}
rewrites:
  - {name: hub-via-cache, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#,
    );
    let mut review = pod_review(json!([{"name": "web", "image": "nginx:1.25"}]), json!({}));
    let mutated = hooks.review("/mutate", review.to_string());
    let ops: json_patch::Patch =
        serde_json::from_value(patch_of(&mutated).expect("a patch")).expect("patch");
    json_patch::patch(&mut review["request"]["object"], &ops).expect("applies");
    let pod = &review["request"]["object"];
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25"
    );
    let response = hooks.review("/validate", review.to_string());
    assert_eq!(response["allowed"], true, "{response}");

    // A forged annotation gains nothing: the image itself is decided.
    let forged = pod_review(
        json!([{"name": "web", "image": "quay.io/evil/miner:1"}]),
        json!({"berth.dev/original-images": "{\"web\":\"nginx:1.25\"}"}),
    );
    let response = hooks.review("/validate", forged.to_string());
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("image \"quay.io/evil/miner:1\" is denied by rule \"defaultAction\""),
        "{response}"
    );
}

/// Issue 9, item 6: reviews of any apiVersion and kind were decided and echoed back.
#[test]
fn reviews_of_another_api_version_or_kind_are_refused() {
    let hooks = start();
    for (api_version, kind) in [
        ("admission.k8s.io/v1beta1", "AdmissionReview"),
        ("admission.k8s.io/v1", "ConversionReview"),
        ("v1", "Pod"),
    ] {
        // A DELETE, which a v1 review has allowed.
        let mut review: Value = serde_json::from_str(&fixture("pod-delete.json")).expect("fixture");
        review["apiVersion"] = json!(api_version);
        review["kind"] = json!(kind);
        for endpoint in ["/validate", "/mutate"] {
            let response = hooks.review(endpoint, review.to_string());
            assert_eq!(
                response["allowed"], false,
                "{endpoint} {api_version} {kind}"
            );
            assert_eq!(
                response["status"]["message"],
                format!("berth reads only admission.k8s.io/v1 AdmissionReview, not apiVersion {api_version:?} kind {kind:?}"),
                "{endpoint}"
            );
        }
    }
}

/// Issue 9, item 4: the patch went out as a JSON array of byte values (kube-core's `Vec<u8>`), so a 3 MiB review
/// got a 38.8 MB answer. It is base64 now, and the answer stays proportional to the patch.
#[test]
fn mutate_answers_with_a_base64_patch_proportional_to_the_review() {
    let hooks = start();
    // About 1 MiB of review: containers whose images the fixture policy always rewrites (`k8s-always`).
    let containers: Vec<Value> = (0..6000)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("registry.k8s.io/team/{}-{i}:1", "a".repeat(120))}))
        .collect();
    let review = pod_review(json!(containers), json!({})).to_string();
    let response = hooks
        .api
        .client
        .post(hooks.api.url("/mutate"))
        .header("content-type", "application/json")
        .body(review.clone())
        .send()
        .expect("POST review");
    assert_eq!(response.status().as_u16(), 200);
    let body = response.bytes().expect("body");
    let reply: Value = serde_json::from_slice(&body).expect("AdmissionReview JSON");
    let patch = patch_of(&reply["response"]).expect("a patch");
    assert_eq!(patch.as_array().map(Vec::len), Some(6001));
    assert_eq!(
        patch[5999]["value"],
        format!("127.0.0.1:5050/k8s/team/{}-5999:1", "a".repeat(120))
    );
    let patch_len = serde_json::to_vec(&patch).expect("json").len();
    assert!(
        body.len() <= patch_len / 3 * 4 + 4096,
        "{} bytes of answer for a {patch_len}-byte patch",
        body.len()
    );
    assert!(
        body.len() <= 4 * review.len(),
        "{} bytes of answer for a {}-byte review",
        body.len(),
        review.len()
    );
}

#[test]
fn a_changed_policy_file_is_live_within_two_seconds_and_a_bad_one_changes_nothing() {
    let hooks = start();
    let ready: Value = hooks.api.get("/readyz").json().expect("readyz");
    let initial = ready["policy"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(initial, sha256(fixture("policy.yaml").as_bytes()));
    assert_eq!(
        ready["policy"]["source"],
        format!("file:{}", hooks.policy_path.display())
    );

    let quay = "rules:\n  - {name: no-quay, action: deny, images: ['quay\\.io/.*'], message: quay is gone}\n";
    std::fs::write(&hooks.policy_path, quay).expect("write");
    let written = Instant::now();
    poll_until(Duration::from_secs(10), "the new policy to decide", || {
        let response = hooks.review("/validate", fixture("pod-update.json"));
        let message = response["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        message.contains("rule \"no-quay\"").then_some(())
    });
    let elapsed = written.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "the change took {elapsed:?}"
    );

    std::fs::write(
        &hooks.policy_path,
        "rules: [{name: broken, action: deny, images: ['(']}]\n",
    )
    .expect("write");
    let error = poll_until(
        Duration::from_secs(10),
        "the invalid policy to be reported",
        || {
            let ready: Value = hooks.api.get("/readyz").json().ok()?;
            ready["policy"]["lastError"].as_str().map(str::to_owned)
        },
    );
    assert!(
        error.contains("\"broken\"") && error.contains("invalid regex"),
        "{error}"
    );
    let ready: Value = hooks.api.get("/readyz").json().expect("readyz");
    assert_eq!(
        ready["policy"]["digest"],
        sha256(quay.as_bytes()),
        "the last good policy stays in force"
    );
    let response = hooks.review("/validate", fixture("pod-update.json"));
    assert!(response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("rule \"no-quay\""));
    assert!(
        hooks.berth.log().contains("not loaded, keeping"),
        "the rejection is logged"
    );
}

fn berth_command(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("run berth");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn repo_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// `berth policy eval --subject` explains an access decision (exit 0 whether allowed or denied, 1 for bad input);
/// `berth policy check` shows the access summary.
#[test]
fn policy_cli_explains_access_decisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("access.yaml");
    std::fs::write(
        &file,
        r#"
access:
  admins: ['user:ops']
  rules:
    - name: ci-pushes-team-a
      repositories: ['team-a/.*']
      subjects: ['serviceaccount:team-a/ci', 'group:devs']
      actions: [pull, push]
immutableTags:
  - name: releases
    repositories: ['.*']
    tags: ['v.*']
"#,
    )
    .expect("write");
    let file = file.display().to_string();
    let (code, out, err) = berth_command(&["policy", "check", &file]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "access: anonymous none, 1 admins, 1 access rules",
        "access rule ci-pushes-team-a",
        "immutable tags releases",
    ] {
        assert!(out.contains(needle), "{out} lacks {needle:?}");
    }
    let eval = |args: &[&str]| {
        let mut all = vec!["policy", "eval", file.as_str()];
        all.extend_from_slice(args);
        berth_command(&all)
    };
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &[
                "--subject",
                "serviceaccount:team-a/ci",
                "--action",
                "push",
                "--repository",
                "team-a/app",
            ],
            0,
            &["decision:   allow", "reason:     rule \"ci-pushes-team-a\""],
        ),
        (
            &[
                "--subject",
                "serviceaccount:team-b/x",
                "--group",
                "devs",
                "--action",
                "push",
                "--repository",
                "team-a/app",
            ],
            0,
            &["decision:   allow", "devs"],
        ),
        (
            &[
                "--subject",
                "serviceaccount:team-a/ci",
                "--action",
                "delete",
                "--repository",
                "team-a/app",
            ],
            0,
            &["decision:   deny", "rule \"ci-pushes-team-a\""],
        ),
        (
            &[
                "--subject",
                "serviceaccount:team-b/app",
                "--action",
                "push",
                "--repository",
                "team-b/app",
            ],
            0,
            &[
                "decision:   allow",
                "built-in: a ServiceAccount's own namespace",
            ],
        ),
        (
            &[
                "--subject",
                "anonymous",
                "--action",
                "pull",
                "--repository",
                "team-b/app",
            ],
            0,
            &["decision:   deny", "no rule allows it"],
        ),
        (
            &[
                "--subject",
                "user:ops",
                "--action",
                "delete",
                "--repository",
                "x",
            ],
            0,
            &["reason:     admins"],
        ),
        (
            &[
                "--subject",
                "usr:ops",
                "--action",
                "pull",
                "--repository",
                "x",
            ],
            1,
            &["--subject \"usr:ops\""],
        ),
        (
            &[
                "--subject",
                "user:ops",
                "--action",
                "write",
                "--repository",
                "x",
            ],
            1,
            &["--action \"write\""],
        ),
        (
            &[
                "--subject",
                "user:ops",
                "--action",
                "pull",
                "--repository",
                "Bad//Name",
            ],
            1,
            &["--repository"],
        ),
    ];
    for (args, expected, needles) in cases {
        let (code, out, err) = eval(args);
        assert_eq!(code, *expected, "{args:?}: {out}{err}");
        for needle in *needles {
            assert!(
                out.contains(needle) || err.contains(needle),
                "{args:?}: {out}{err} lacks {needle:?}"
            );
        }
    }
    // --subject needs --action and --repository (clap refuses, exit 2).
    let (code, _, err) = eval(&["--subject", "user:ops"]);
    assert_ne!(code, 0, "{err}");
}

#[test]
fn policy_cli_checks_and_explains() {
    for shipped in [
        "policies/default.yaml",
        "policies/production.yaml",
        "policies/cache-everything.yaml",
    ] {
        let (code, out, err) = berth_command(&["policy", "check", &repo_file(shipped)]);
        assert_eq!(code, 0, "{shipped}: {err}");
        assert!(out.starts_with("policy is valid: "), "{out}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - name: typo\n    action: deny\n    imagez: ['x']\n",
    )
    .expect("write");
    let (code, _, err) = berth_command(&["policy", "check", &bad.display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("\"typo\"") && err.contains("imagez"), "{err}");

    let (code, out, _) = berth_command(&[
        "policy",
        "eval",
        &repo_file("policies/production.yaml"),
        "--image",
        "nginx",
        "--namespace",
        "prod-web",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("normalized: docker.io/library/nginx:latest"),
        "{out}"
    );
    assert!(out.contains("decision:   deny"), "{out}");
    assert!(out.contains("rule:       no-latest"), "{out}");
    let (_, out, _) = berth_command(&[
        "policy",
        "eval",
        &repo_file("policies/cache-everything.yaml"),
        "--image",
        "ghcr.io/o/r:1",
    ]);
    assert!(
        out.contains("rewrite:    127.0.0.1:5050/proxy/ghcr.io/o/r:1"),
        "{out}"
    );

    let (code, out, err) = berth_command(&[
        "policy",
        "eval",
        &repo_file("tests/fixtures/policy.yaml"),
        "--review",
        &repo_file("tests/fixtures/pod-create.json"),
    ]);
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(&out).expect("eval --review prints JSON");
    assert_eq!(printed["validate"]["allowed"], false);
    assert!(printed["validate"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("rule \"no-latest\""));
    // The patch is printed decoded.
    assert_eq!(printed["mutate"]["patch"][0]["op"], "replace");
    assert_eq!(
        printed["mutate"]["patch"][0]["path"],
        "/spec/initContainers/0/image"
    );
}

#[test]
fn an_invalid_policy_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("policy.yaml");
    std::fs::write(&bad, "rewrites: [{name: rw, match: '[', replace: x}]\n").expect("write");
    let data = dir.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--plain-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--policy-file")
        .arg(&bad)
        .output()
        .expect("run berth");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy.yaml")
            && stderr.contains("\"rw\"")
            && stderr.contains("field match"),
        "{stderr}"
    );
}
