//! Shared fixtures of the admission tests: a review request around an object, a pod around containers, berth's
//! scope and the policy most tests decide by. Test-only.

use kube::core::admission::AdmissionReview;
use serde_json::{json, Value};

use super::review::{Request, Workload};
use super::scope::Scope;

pub(super) const POLICY: &str = r#"
excludeNamespaces: [kube-system]
rules:
  - {name: no-latest, action: deny, images: ['.*:latest'], message: pin a version}
  - {name: hub, action: warn, images: ['docker\.io/.*'], message: prefer the cache}
rewrites:
  - {name: hub-via-cache, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#;

pub(super) fn request(
    kind: (&str, &str),
    operation: &str,
    namespace: &str,
    object: Value,
) -> Request {
    let (group, kind) = kind;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1", "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "x"},
            "name": "obj", "namespace": namespace, "operation": operation, "userInfo": {},
            "object": object, "oldObject": null, "dryRun": false
        }
    });
    let review: AdmissionReview<Workload> = serde_json::from_value(review).expect("review");
    review.try_into().expect("request")
}

pub(super) fn scope() -> Scope {
    Scope::new("berth-system").with_proxy_upstreams(["docker.io".to_owned()])
}

pub(super) fn pod(containers: Value, annotations: Option<Value>) -> Value {
    let mut metadata = json!({"name": "p"});
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": containers})
}
