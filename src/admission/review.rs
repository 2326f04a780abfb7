//! AdmissionReview in, AdmissionResponse out: finds the pod spec in a Pod or workload, decides every container
//! image by the policy (`/validate`), and plans pod image rewrites as a typed JSON patch (`/mutate`).
//! Pure: the one question that needs storage (is a rewrite target available?) is answered by the caller.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;

use super::image::ImageRef;
use super::policy::{Policy, Verdict, When};

/// Where berth records the images it rewrote: a JSON map of container name → original image.
pub const ORIGINAL_IMAGES_ANNOTATION: &str = "berth.dev/original-images";

/// The three lists of containers a pod spec has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Container,
    Init,
    Ephemeral,
}

impl ContainerKind {
    const ALL: [ContainerKind; 3] = [
        ContainerKind::Init,
        ContainerKind::Container,
        ContainerKind::Ephemeral,
    ];

    /// The pod spec field holding this list.
    pub fn field(self) -> &'static str {
        match self {
            ContainerKind::Container => "containers",
            ContainerKind::Init => "initContainers",
            ContainerKind::Ephemeral => "ephemeralContainers",
        }
    }
}

/// One container's image, and where it is in the pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub kind: ContainerKind,
    pub index: usize,
    pub name: String,
    pub image: String,
}

/// The JSON path from the object's root to its pod spec, for the kinds berth checks.
fn pod_spec_path(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&["spec"]),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some(&["spec", "template", "spec"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// Every container image in a pod spec, init containers first.
pub fn container_images(spec: &Value) -> Vec<ContainerImage> {
    let mut images = Vec::new();
    for kind in ContainerKind::ALL {
        let Some(list) = spec.get(kind.field()).and_then(Value::as_array) else {
            continue;
        };
        for (index, container) in list.iter().enumerate() {
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            // A container without an image is left to the API server's own validation.
            let Some(image) = container.get("image").and_then(Value::as_str) else {
                continue;
            };
            images.push(ContainerImage {
                kind,
                index,
                name,
                image: image.to_owned(),
            });
        }
    }
    images
}

/// The object of a review, as much of it as berth reads: its metadata and its `spec` (where every pod spec lives).
/// Reading only these is several times cheaper than a generic object, whose flattened rest was most of the cost of
/// a review.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Workload {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
}

impl kube::Resource for Workload {
    type DynamicType = ();
    type Scope = kube::core::DynamicResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Workload".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "workloads".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A review request as berth reads it.
pub type Request = AdmissionRequest<Workload>;

/// The pod spec inside the object, for the kinds berth checks.
fn pod_spec<'a>(request: &Request, object: &'a Workload) -> Option<&'a Value> {
    let path = pod_spec_path(&request.kind.group, &request.kind.kind)?;
    let (first, rest) = path.split_first()?;
    debug_assert_eq!(*first, "spec");
    let mut value = object.spec.as_ref()?;
    for key in rest {
        value = value.get(*key)?;
    }
    Some(value)
}

fn object_name(request: &Request, object: &Workload) -> String {
    let name = object
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| request.name.clone());
    if name.is_empty() {
        object
            .metadata
            .generate_name
            .clone()
            .map(|g| format!("{g}*"))
            .unwrap_or_default()
    } else {
        name
    }
}

/// The originals recorded by an earlier mutation, if the annotation is there and readable.
fn recorded_originals(object: &Workload) -> BTreeMap<String, String> {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ORIGINAL_IMAGES_ANNOTATION))
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or_default()
}

/// What the webhooks know about the berth they run in, besides the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// berth's own namespace: never validated nor mutated.
    pub namespace: String,
    /// Names of the proxy's upstreams: `<host>/proxy/<upstream>/<repo>` is `<upstream>/<repo>` in disguise.
    pub proxy_upstreams: Vec<String>,
}

impl Scope {
    pub fn new(namespace: &str) -> Scope {
        Scope {
            namespace: namespace.to_owned(),
            proxy_upstreams: Vec::new(),
        }
    }

    /// The upstream image behind a proxied reference (`127.0.0.1:5050/proxy/docker.io/library/nginx:1` →
    /// `docker.io/library/nginx:1`), so that a pod cannot reach a denied image by naming the proxy path.
    fn proxied_image(&self, image: &str) -> Option<String> {
        let parsed = ImageRef::parse(image).ok()?;
        let (upstream, rest) = parsed.path.strip_prefix("proxy/")?.split_once('/')?;
        if !self.proxy_upstreams.iter().any(|u| u == upstream) {
            return None;
        }
        let mut behind = format!("{upstream}/{rest}");
        if let Some(tag) = &parsed.tag {
            behind.push(':');
            behind.push_str(tag);
        }
        if let Some(digest) = &parsed.digest {
            behind.push('@');
            behind.push_str(digest);
        }
        Some(behind)
    }
}

/// Whether a review is out of berth's scope: not a create/update, berth's own namespace, or excluded by policy.
fn skipped(request: &Request, policy: &Policy, scope: &Scope) -> bool {
    let namespace = request.namespace.as_deref().unwrap_or_default();
    !matches!(request.operation, Operation::Create | Operation::Update)
        || namespace == scope.namespace
        || policy.excludes(namespace)
}

/// On UPDATE, the images the old object already had, by container list and name: those are not decided again, so a
/// policy change never blocks scaling, finalizer removal or label changes of what already runs.
fn previous_images(request: &Request) -> BTreeMap<(&'static str, String), String> {
    let mut previous = BTreeMap::new();
    if request.operation != Operation::Update {
        return previous;
    }
    if let Some(spec) = request
        .old_object
        .as_ref()
        .and_then(|old| pod_spec(request, old))
    {
        for container in container_images(spec) {
            previous.insert((container.kind.field(), container.name), container.image);
        }
    }
    previous
}

/// `/validate`: allows or denies the object by the policy. A denial names, for every offending image, the container,
/// the normalised image, the rule and its message; warnings go in `warnings`.
pub fn validate(request: &Request, policy: &Policy, scope: &Scope) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(request);
    if skipped(request, policy, scope) {
        return response;
    }
    let Some(object) = request.object.as_ref() else {
        return response;
    };
    // An object being deleted only loses finalizers: never stand in its way.
    if object.metadata.deletion_timestamp.is_some() {
        return response;
    }
    let Some(spec) = pod_spec(request, object) else {
        return response;
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let originals = if request.kind.kind == "Pod" {
        recorded_originals(object)
    } else {
        BTreeMap::new()
    };

    let previous = previous_images(request);
    let mut denials = Vec::new();
    let mut warnings = Vec::new();
    for container in container_images(spec) {
        let key = (container.kind.field(), container.name.clone());
        if previous.get(&key) == Some(&container.image) {
            continue;
        }
        // A rewritten pod is judged by its original image too, so a rewrite never launders a denied image; and a
        // proxied reference by the upstream image behind it.
        let original = originals
            .get(&container.name)
            .filter(|o| **o != container.image)
            .cloned();
        let proxied = scope.proxied_image(&container.image);
        let checks = std::iter::once((container.image.clone(), "image"))
            .chain(original.map(|o| (o, "original image")))
            .chain(proxied.map(|p| (p, "proxied image")));
        for (image, label) in checks {
            let image = &image;
            let decision = policy.decide(image, namespace);
            let what = match &decision.normalized {
                Some(normalized) if normalized != image => {
                    format!("{label} {image:?} ({normalized})")
                }
                _ => format!("{label} {image:?}"),
            };
            let why = match (&decision.rule, &decision.message) {
                (Some(rule), Some(message)) => format!("rule {rule:?}: {message}"),
                (Some(rule), None) => format!("rule {rule:?}"),
                (None, Some(message)) => message.clone(),
                (None, None) => String::new(),
            };
            match decision.verdict {
                Verdict::Allow => {}
                Verdict::Warn => {
                    warnings.push(format!("container {:?} {what}: {why}", container.name))
                }
                Verdict::Deny => denials.push(format!(
                    "container {:?} {what} is denied by {why}",
                    container.name
                )),
            }
        }
    }
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    if !denials.is_empty() {
        let kind = &request.kind.kind;
        let name = object_name(request, object);
        response = response.deny(format!(
            "berth denied {kind} {namespace}/{name}: {}",
            denials.join("; ")
        ));
        response.result.code = 403;
        response.result.reason = "Forbidden".into();
    }
    response
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
        let Some(planned) = policy.plan_rewrite(&image, namespace) else {
            continue;
        };
        match planned.target {
            Ok(target) => plan.candidates.push(Candidate { container, target, rule: planned.rule, when: planned.when }),
            Err(e) => plan.warnings.push(format!(
                "container {:?}: rewrite {:?} produced an invalid reference, image left unchanged: {e}",
                container.name, planned.rule
            )),
        }
    }
    plan
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
            warnings.push(format!(
                "container {:?}: {} is not available from berth, image {:?} left unchanged (rewrite {:?})",
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
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    const POLICY: &str = r#"
excludeNamespaces: [kube-system]
rules:
  - {name: no-latest, action: deny, images: ['.*:latest'], message: pin a version}
  - {name: hub, action: warn, images: ['docker\.io/.*'], message: prefer the cache}
rewrites:
  - {name: hub-via-cache, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#;

    fn request(kind: (&str, &str), operation: &str, namespace: &str, object: Value) -> Request {
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

    fn scope() -> Scope {
        Scope {
            namespace: "berth-system".into(),
            proxy_upstreams: vec!["docker.io".into()],
        }
    }

    fn pod(containers: Value, annotations: Option<Value>) -> Value {
        let mut metadata = json!({"name": "p"});
        if let Some(annotations) = annotations {
            metadata["annotations"] = annotations;
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": containers})
    }

    #[test]
    fn validate_pods_and_workloads() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let spec = json!({
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "containers": [{"name": "web", "image": "nginx"}, {"name": "ok", "image": "quay.io/x:1"}]
        });
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec.clone(), None)),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert_eq!(response.result.code, 403);
        assert_eq!(
            response.result.message,
            "berth denied Pod prod/p: container \"web\" image \"nginx\" (docker.io/library/nginx:latest) is denied by rule \"no-latest\": pin a version"
        );
        assert_eq!(
            response.warnings,
            Some(vec!["container \"init\" image \"busybox:1.36\" (docker.io/library/busybox:1.36): rule \"hub\": prefer the cache".into()])
        );
        assert_eq!(response.uid, "u-1");

        let cronjob = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": spec}}}}});
        let response = validate(
            &request(("batch", "CronJob"), "CREATE", "prod", cronjob),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .starts_with("berth denied CronJob prod/c: container \"web\""),
            "{}",
            response.result.message
        );

        // Excluded namespaces, berth's own namespace, DELETE and kinds without pods are allowed untouched.
        for (kind, operation, namespace) in [
            (("", "Pod"), "CREATE", "kube-system"),
            (("", "Pod"), "CREATE", "berth-system"),
            (("", "Pod"), "DELETE", "prod"),
            (("", "ConfigMap"), "CREATE", "prod"),
        ] {
            let response = validate(
                &request(kind, operation, namespace, pod(spec.clone(), None)),
                &policy,
                &scope(),
            );
            assert!(response.allowed, "{kind:?} {operation} {namespace}");
            assert_eq!(response.warnings, None);
        }
    }

    #[test]
    fn a_rewrite_does_not_launder_a_denied_original() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/docker.io/library/nginx:1"}]});
        let annotations = json!({ORIGINAL_IMAGES_ANNOTATION: "{\"web\":\"nginx:latest\"}"});
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec, Some(annotations))),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("original image \"nginx:latest\""),
            "{}",
            response.result.message
        );
    }

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

    #[test]
    fn a_forged_original_is_overwritten_and_a_proxy_path_is_judged_by_its_upstream_image() {
        let policy = Policy::from_yaml(
            "rules: [{name: evil, action: deny, images: ['docker\\.io/evil/.*']}]\nrewrites: [{name: hub, match: 'docker\\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}]",
        )
        .expect("policy");
        // The pod claims an innocent original for an evil image; the rewrite records what the pod really asked for.
        let forged = json!({ORIGINAL_IMAGES_ANNOTATION: "{\"web\":\"nginx:1.25\"}"});
        let spec = json!({"containers": [{"name": "web", "image": "evil/miner:1"}]});
        let create = request(("", "Pod"), "CREATE", "prod", pod(spec, Some(forged)));
        let plan = plan_mutation(&create, &policy, &scope());
        let (patch, _) = build_patch(&plan, &[true]);
        let patch = serde_json::to_value(patch.expect("patch")).expect("json");
        assert_eq!(patch[1]["value"], "{\"web\":\"evil/miner:1\"}");

        // Naming the proxy path directly is judged as the upstream image.
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/docker.io/evil/miner:1"}]});
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec, None)),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("proxied image \"docker.io/evil/miner:1\""),
            "{}",
            response.result.message
        );
        // Not for an upstream berth does not proxy.
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/other/evil/miner:1"}]});
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec, None)),
            &policy,
            &scope(),
        );
        assert!(response.allowed);
    }

    #[test]
    fn updates_decide_only_new_images_and_deletions_pass() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let old = pod(
            json!({"containers": [{"name": "web", "image": "nginx"}]}),
            None,
        );
        // Only labels changed: the already-running :latest image is not decided again.
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"x": "y"});
        let mut update = request(("", "Pod"), "UPDATE", "prod", relabelled);
        update.old_object = serde_json::from_value(old.clone()).ok();
        assert!(validate(&update, &policy, &scope()).allowed);
        // A changed image is decided.
        let changed = pod(
            json!({"containers": [{"name": "web", "image": "busybox"}]}),
            None,
        );
        let mut update = request(("", "Pod"), "UPDATE", "prod", changed);
        update.old_object = serde_json::from_value(old.clone()).ok();
        assert!(!validate(&update, &policy, &scope()).allowed);
        // An object being deleted (finalizers going) always passes.
        let mut deleting = old.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        deleting["spec"]["containers"][0]["image"] = json!("busybox");
        let mut update = request(("", "Pod"), "UPDATE", "prod", deleting);
        update.old_object = serde_json::from_value(old).ok();
        assert!(validate(&update, &policy, &scope()).allowed);
    }
}
