//! `/mutate`'s decision: which pod images the policy rewrites to berth, planned before availability is known, and
//! the typed JSON patch that applies the available ones and records the originals; also how an image is recognised
//! as berth's rewrite of an original, which `/validate` relies on. Pure: availability is answered by the caller.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use kube::core::admission::Operation;
use serde_json::Value;

use super::image::ImageRef;
use super::pod::{
    container_images, pod_spec, recorded_originals, ContainerImage, ORIGINAL_IMAGES_ANNOTATION,
};
use super::policy::{PlannedRewrite, Policy, When};
use super::review::Request;
use super::scope::{skipped, Scope};

/// The reference to decide for `image` when it is what the policy's rewrite of `original` gives in `namespace`
/// (compared normalised): then berth's `/mutate` made it, or the pod asks for exactly what `/mutate` would have made of
/// `original`. Either way the pod runs `original` by another address, so deciding `original` is deciding the pod. A
/// digest that a later mutating webhook pinned to the rewritten image (a tag target, `@sha256:…` added) is the same
/// image at that digest: `original@digest` is decided.
pub(super) fn original_behind(
    original: &str,
    image: &ImageRef,
    policy: &Policy,
    namespace: &str,
) -> Option<String> {
    let original_ref = ImageRef::parse(original).ok()?;
    let Some(PlannedRewrite {
        target: Ok(target), ..
    }) = policy.plan_rewrite(&original_ref, namespace)
    else {
        return None;
    };
    if target.to_string() == image.to_string() {
        return Some(original.to_owned());
    }
    if target.digest.is_none() && original_ref.digest.is_none() && image.digest.is_some() {
        let unpinned = ImageRef {
            digest: None,
            ..image.clone()
        };
        if unpinned.to_string() == target.to_string() {
            let pinned = ImageRef {
                digest: image.digest.clone(),
                ..original_ref
            };
            return Some(pinned.to_string());
        }
    }
    None
}

/// An image `/mutate` wants to rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub container: ContainerImage,
    pub target: ImageRef,
    pub rule: String,
    pub when: When,
}

/// What `/mutate` would do with a pod, before availability is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MutationPlan {
    pub candidates: Vec<Candidate>,
    pub warnings: Vec<String>,
    originals: BTreeMap<String, String>,
    has_annotations: bool,
}

/// Plans the rewrites of a pod being created. Workload templates are left as written (GitOps tools see no drift).
pub fn plan_mutation(request: &Request, policy: &Policy, scope: &Scope) -> MutationPlan {
    let mut plan = MutationPlan::default();
    if skipped(request, policy, scope)
        || request.operation != Operation::Create
        || !request.kind.group.is_empty()
        || request.kind.kind != "Pod"
        || request.sub_resource.is_some()
    {
        return plan;
    }
    let Some(object) = request.object.as_ref() else {
        return plan;
    };
    let Some(spec) = pod_spec(request, object) else {
        return plan;
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    plan.originals = recorded_originals(object);
    plan.has_annotations = object.metadata.annotations.is_some();
    for container in container_images(spec) {
        // Images that do not parse are /validate's business; they are never rewritten.
        let Ok(image) = ImageRef::parse(&container.image) else {
            continue;
        };
        // Already berth's rewrite of its recorded original (a reinvocation, with reinvocationPolicy IfNeeded): left
        // alone, even if another rewrite matches the target, so the record of the original is never overwritten.
        let rewritten = plan
            .originals
            .get(&container.name)
            .is_some_and(|original| original_behind(original, &image, policy, namespace).is_some());
        if rewritten {
            continue;
        }
        let Some(planned) = policy.plan_rewrite(&image, namespace) else {
            continue;
        };
        match planned.target {
            // Already at the node proxy, spelled another way (`localhost:5050`, `[::]:5050`): the same endpoint as
            // a node-local target, so the image already points at the rewrite's target registry.
            Ok(target) if scope.is_node_proxy(&image.domain) && scope.is_node_proxy(&target.domain) => {}
            Ok(target) => plan.candidates.push(Candidate { container, target, rule: planned.rule, when: planned.when }),
            Err(e) => plan.warnings.push(format!(
                "container {:?}: rewrite {:?} produced an invalid reference, image left unchanged: {e}",
                container.name, planned.rule
            )),
        }
    }
    plan
}

/// The candidates [`build_patch`] applies given the same `available`: what `/mutate` rewrote.
pub fn applied<'a>(
    plan: &'a MutationPlan,
    available: &'a [bool],
) -> impl Iterator<Item = &'a Candidate> + 'a {
    plan.candidates
        .iter()
        .zip(available)
        .filter_map(|(candidate, &available)| available.then_some(candidate))
}

/// Builds the patch for the candidates that may be applied (`available[i]` for candidate `i`); the others stay as
/// they are, with a warning. Returns `None` when nothing changes.
pub fn build_patch(plan: &MutationPlan, available: &[bool]) -> (Option<Patch>, Vec<String>) {
    let mut warnings = plan.warnings.clone();
    let mut operations = Vec::new();
    let mut originals = plan.originals.clone();
    for (candidate, &available) in plan.candidates.iter().zip(available) {
        let container = &candidate.container;
        if !available {
            // Say why when berth could never hold it, so "not available" is not a mystery.
            let why = match candidate.target.digest.as_ref().map(|d| d.stored()) {
                Some(Err(e)) => format!(" ({e})"),
                _ => String::new(),
            };
            warnings.push(format!(
                "container {:?}: {} is not available from berth{why}, image {:?} left unchanged (rewrite {:?})",
                container.name, candidate.target, container.image, candidate.rule
            ));
            continue;
        }
        let index = container.index.to_string();
        operations.push(PatchOperation::Replace(ReplaceOperation {
            path: PointerBuf::from_tokens([
                "spec",
                container.kind.field(),
                index.as_str(),
                "image",
            ]),
            value: Value::String(candidate.target.to_string()),
        }));
        // What the pod asks for now is the original: a recorded value for this container is the pod author's claim,
        // not berth's record (reinvocations never get here for a rewritten container, it is already at its target).
        originals.insert(container.name.clone(), container.image.clone());
    }
    if operations.is_empty() {
        return (None, warnings);
    }
    let annotation = serde_json::to_string(&originals).unwrap_or_default();
    operations.push(if plan.has_annotations {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", ORIGINAL_IMAGES_ANNOTATION]),
            value: Value::String(annotation),
        })
    } else {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: serde_json::json!({ ORIGINAL_IMAGES_ANNOTATION: annotation }),
        })
    });
    (Some(Patch(operations)), warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::review::Reply;
    use crate::admission::testing::{pod, request, scope, POLICY};
    use base64::Engine as _;
    use kube::core::admission::AdmissionResponse;
    use serde_json::json;

    #[test]
    fn mutation_patch_and_idempotence() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let spec = json!({
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "containers": [{"name": "web", "image": "nginx:1.25"}, {"name": "other", "image": "quay.io/x:1"}]
        });
        let create = request(("", "Pod"), "CREATE", "prod", pod(spec, None));
        let plan = plan_mutation(&create, &policy, &scope());
        assert_eq!(plan.candidates.len(), 2);
        let (patch, warnings) = build_patch(&plan, &[true, true]);
        assert!(warnings.is_empty());
        let patch = serde_json::to_value(patch.expect("patch")).expect("json");
        assert_eq!(
            patch,
            json!([
                {"op": "replace", "path": "/spec/initContainers/0/image", "value": "127.0.0.1:5050/proxy/docker.io/library/busybox:1.36"},
                {"op": "replace", "path": "/spec/containers/0/image", "value": "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25"},
                {"op": "add", "path": "/metadata/annotations",
                 "value": {"berth.dev/original-images": "{\"init\":\"busybox:1.36\",\"web\":\"nginx:1.25\"}"}}
            ])
        );

        // Apply it and run the result through again: nothing more to do.
        let mut mutated = pod(
            json!({
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [{"name": "web", "image": "nginx:1.25"}, {"name": "other", "image": "quay.io/x:1"}]
            }),
            None,
        );
        let ops: Patch = serde_json::from_value(patch).expect("patch");
        json_patch::patch(&mut mutated, &ops).expect("applies");
        let again = plan_mutation(
            &request(("", "Pod"), "CREATE", "prod", mutated),
            &policy,
            &scope(),
        );
        assert_eq!(build_patch(&again, &[]).0, None);

        // Unavailable targets stay as written, with a warning; an existing annotation map gets a new key.
        let with_annotations = pod(
            json!({"containers": [{"name": "web", "image": "nginx:1.25"}]}),
            Some(json!({"a": "b"})),
        );
        let plan = plan_mutation(
            &request(("", "Pod"), "CREATE", "prod", with_annotations),
            &policy,
            &scope(),
        );
        let (patch, warnings) = build_patch(&plan, &[false]);
        assert_eq!(patch, None);
        assert!(
            warnings[0].contains("is not available from berth"),
            "{warnings:?}"
        );
        let (patch, _) = build_patch(&plan, &[true]);
        let patch = serde_json::to_value(patch.expect("patch")).expect("json");
        assert_eq!(
            patch[1]["path"],
            "/metadata/annotations/berth.dev~1original-images"
        );
    }

    #[test]
    fn mutation_scope() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let spec = json!({"containers": [{"name": "web", "image": "nginx:1.25"}]});
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": spec}}});
        for review in [
            request(("apps", "Deployment"), "CREATE", "prod", deployment),
            request(
                ("", "Pod"),
                "CREATE",
                "kube-system",
                pod(spec.clone(), None),
            ),
            request(("", "Pod"), "UPDATE", "prod", pod(spec.clone(), None)),
            request(
                ("", "Pod"),
                "CREATE",
                "berth-system",
                pod(spec.clone(), None),
            ),
        ] {
            assert!(
                plan_mutation(&review, &policy, &scope())
                    .candidates
                    .is_empty(),
                "{:?}",
                review.kind
            );
        }
    }

    /// Review finding (issue 11): every spelling of the node-local address is the node proxy, so an image already
    /// there is not rewritten to it again; a Service-name image is still rewritten to the node proxy.
    #[test]
    fn an_image_at_the_node_proxy_by_any_spelling_is_not_rewritten_to_it() {
        let policy = Policy::from_yaml(
            r#"
rewrites:
  - {name: to-node, match: '(?:localhost|[0-9.]+|\[[0-9a-f:]+\]|berth\.berth-system\.svc):5050/(.+)', replace: '127.0.0.1:5050/$1'}
  - {name: svc-to-node, match: 'berth\.berth-system\.svc/(.+)', replace: '127.0.0.1:5050/$1'}
"#,
        )
        .expect("policy");
        fn check(policy: &Policy, image: &str, expected: Option<&str>) {
            let spec = json!({"containers": [{"name": "web", "image": image}]});
            let review = request(("", "Pod"), "CREATE", "prod", pod(spec, None));
            let plan = plan_mutation(&review, policy, &scope());
            let got = plan.candidates.first().map(|c| c.target.to_string());
            assert_eq!(got.as_deref(), expected, "{image}");
        }
        let cases = [
            ("localhost:5050/team/app:1", None),
            ("127.0.0.2:5050/team/app:1", None),
            ("0.0.0.0:5050/team/app:1", None),
            ("[::]:5050/team/app:1", None),
            ("[::ffff:7f00:1]:5050/team/app:1", None),
            ("[::1]:5050/team/app:1", None),
            (
                "10.0.0.1:5050/team/app:1",
                Some("127.0.0.1:5050/team/app:1"),
            ),
            (
                "berth.berth-system.svc/team/app:1",
                Some("127.0.0.1:5050/team/app:1"),
            ),
        ];
        for (image, expected) in cases {
            check(&policy, image, expected);
        }
    }

    /// Issue 9, item 4: kube-core wrote the patch as a JSON array of byte values (a 3 MiB review gave a 38.8 MB
    /// answer); Kubernetes reads base64.
    #[test]
    fn the_patch_is_sent_as_base64() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let containers: Vec<Value> = (0..2000)
            .map(|i| json!({"name": format!("c{i}"), "image": format!("team/app-{i}:1")}))
            .collect();
        let create = request(
            ("", "Pod"),
            "CREATE",
            "prod",
            pod(json!({"containers": containers}), None),
        );
        let plan = plan_mutation(&create, &policy, &scope());
        let (patch, _) = build_patch(&plan, &vec![true; plan.candidates.len()]);
        let patch = patch.expect("a patch");
        let patch_json = serde_json::to_vec(&patch).expect("json");
        let response = AdmissionResponse::from(&create)
            .with_patch(patch)
            .expect("patch");
        let body = serde_json::to_vec(&Reply::new(&response)).expect("reply");
        let reply: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(reply["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(reply["kind"], "AdmissionReview");
        assert_eq!(reply["response"]["uid"], "u-1");
        assert_eq!(reply["response"]["allowed"], true);
        assert_eq!(reply["response"]["patchType"], "JSONPatch");
        let encoded = reply["response"]["patch"]
            .as_str()
            .expect("patch is a string");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("standard base64");
        assert_eq!(decoded, patch_json);
        // Base64 is 4 bytes per 3: the answer is the patch and a little more, not four times it.
        assert!(
            body.len() <= patch_json.len() / 3 * 4 + 512,
            "{} bytes of answer for {} bytes of patch",
            body.len(),
            patch_json.len()
        );

        // Without a patch there is no patch field at all, and a denial keeps its status.
        let denied = AdmissionResponse::from(&create).deny("no");
        let reply: Value = serde_json::to_value(Reply::new(&denied)).expect("json");
        assert_eq!(reply["response"].get("patch"), None);
        assert_eq!(reply["response"].get("patchType"), None);
        assert_eq!(reply["response"]["allowed"], false);
        assert_eq!(reply["response"]["status"]["message"], "no");
    }
}
