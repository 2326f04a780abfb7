//! AdmissionReview in, AdmissionResponse out: reads only `admission.k8s.io/v1` reviews, finds the pod spec in a Pod
//! or workload, decides every container image by the policy (`/validate`), plans pod image rewrites as a typed JSON
//! patch (`/mutate`), and writes the answer as Kubernetes reads it (the patch in base64).
//! Pure: the one question that needs storage (is a rewrite target available?) is answered by the caller.

use std::collections::BTreeMap;

use base64::Engine as _;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use super::image::{normalize_host, ImageRef};
use super::policy::{PlannedRewrite, Policy, Verdict, When};

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

/// The one review type berth reads and answers: `admission.k8s.io/v1` `AdmissionReview`.
pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
pub const REVIEW_KIND: &str = "AdmissionReview";

/// Why a webhook body is not a review berth can decide; answered with `allowed: false` and this message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not the JSON of an AdmissionReview.
    #[error("cannot read the AdmissionReview: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// Another apiVersion or kind: its fields may mean something else, so it is not decided.
    #[error(
        "berth reads only {REVIEW_API_VERSION} {REVIEW_KIND}, not apiVersion {api_version:?} kind {kind:?}"
    )]
    UnsupportedType { api_version: String, kind: String },
    /// An AdmissionReview without `request` (a response, or empty).
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Reads a webhook body as an `admission.k8s.io/v1` `AdmissionReview` request.
pub fn read_review(body: &[u8]) -> Result<Request, ReviewError> {
    let review: AdmissionReview<Workload> =
        serde_json::from_slice(body).map_err(ReviewError::Unreadable)?;
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != REVIEW_KIND {
        // Echoed in the refusal: a few characters say what was sent, a megabyte would not.
        let shown = |text: String| text.chars().take(100).collect();
        return Err(ReviewError::UnsupportedType {
            api_version: shown(review.types.api_version),
            kind: shown(review.types.kind),
        });
    }
    review.try_into().map_err(|_| ReviewError::NoRequest)
}

/// The `request.uid` of a review body that cannot be read whole (too large, cut off, not valid JSON, another type):
/// the API server writes it near the start (`{"kind":…,"apiVersion":…,"request":{"uid":"…"`), so it is looked for
/// in the first 64 KiB, after `"request"`. Only a plausible uid is taken (1 to 128 characters of letters, digits,
/// `-`, `_`, `.`, `:`), never anything needing unescaping.
pub fn uid_of(body: &[u8]) -> Option<String> {
    let body = &body[..body.len().min(64 * 1024)];
    let find = |haystack: &[u8], needle: &[u8]| {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
    };
    let request = find(body, b"\"request\"")?;
    let rest = &body[request..];
    let key = find(rest, b"\"uid\"")?;
    let rest = &rest[key + b"\"uid\"".len()..];
    fn skip_space(bytes: &[u8]) -> &[u8] {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        &bytes[start..]
    }
    let rest = skip_space(rest).strip_prefix(b":")?;
    let rest = skip_space(rest).strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let uid = &rest[..end];
    let plausible = (1..=128).contains(&uid.len())
        && uid
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    plausible.then(|| String::from_utf8_lossy(uid).into_owned())
}

/// The AdmissionReview berth answers with. kube-core's own serialisation writes `response.patch` (a `Vec<u8>`) as a
/// JSON array of numbers, up to four bytes of response per patch byte; Kubernetes' `patch` is a Go `[]byte`, which
/// JSON carries as a base64 string, so that is what berth sends.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ReplyResponse<'a>,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplyResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube::core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    audit_annotations: &'a std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [String]>,
}

impl<'a> Reply<'a> {
    pub fn new(response: &'a AdmissionResponse) -> Reply<'a> {
        let patch = response
            .patch
            .as_deref()
            .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
        Reply {
            api_version: REVIEW_API_VERSION,
            kind: REVIEW_KIND,
            response: ReplyResponse {
                uid: &response.uid,
                allowed: response.allowed,
                status: &response.result,
                // kube-core sets a patch only with its one patch type, JSONPatch.
                patch_type: patch.as_ref().map(|_| "JSONPatch"),
                patch,
                audit_annotations: &response.audit_annotations,
                warnings: response.warnings.as_deref(),
            },
        }
    }
}

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

/// berth's node-local pull endpoint (`berth node-proxy`, manifests/base/node-proxy.yaml) on every node's loopback.
pub const NODE_PROXY_HOSTS: [&str; 2] = ["127.0.0.1:5050", "localhost:5050"];

/// What the webhooks know about the berth they run in, besides the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// berth's own namespace: never validated nor mutated.
    pub namespace: String,
    /// Names of the proxy's upstreams: `<berth>/proxy/<upstream>/<repo>` is `<upstream>/<repo>` in disguise.
    pub proxy_upstreams: Vec<String>,
    /// berth's own addresses, as normalised registry hosts (besides the policy's rewrite targets): only a proxy path
    /// on one of these is berth's proxy; on any other host, `…/proxy/docker.io/…` is just a repository name.
    pub own_hosts: Vec<String>,
}

impl Scope {
    /// The scope of a berth in `namespace` reached by the default Service name `berth` and the node proxy.
    pub fn new(namespace: &str) -> Scope {
        let service = format!("berth.{namespace}.svc");
        Scope {
            namespace: namespace.to_owned(),
            proxy_upstreams: Vec::new(),
            own_hosts: Vec::new(),
        }
        .with_hosts(
            NODE_PROXY_HOSTS
                .iter()
                .map(|h| h.to_string())
                .chain([format!("{service}.cluster.local"), service]),
        )
    }

    /// Adds names berth is reached by (certificate names: DNS names or IP addresses, optionally with a port). A name
    /// that is not a registry host is skipped.
    pub fn with_hosts(mut self, names: impl IntoIterator<Item = String>) -> Scope {
        for name in names {
            // An IPv6 address in a certificate has no brackets; in an image reference it has.
            let name = match name.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => format!("[{ip}]"),
                Err(_) => name,
            };
            if let Ok(host) = normalize_host(&name) {
                if !self.own_hosts.contains(&host) {
                    self.own_hosts.push(host);
                }
            }
        }
        self
    }

    pub fn with_proxy_upstreams(mut self, upstreams: impl IntoIterator<Item = String>) -> Scope {
        self.proxy_upstreams.extend(upstreams);
        self
    }

    /// Adds the upstream named by every path of berth's proxy among `images`, as if each were configured: for
    /// `berth policy eval`, which has no proxy configuration.
    pub fn assuming_upstreams_of<'a>(mut self, images: impl IntoIterator<Item = &'a str>) -> Scope {
        for image in images {
            let Ok(image) = ImageRef::parse(image) else {
                continue;
            };
            let upstream = image
                .path
                .as_str()
                .strip_prefix("proxy/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(upstream, _)| upstream.to_owned());
            if let Some(upstream) = upstream {
                if !self.proxy_upstreams.contains(&upstream) {
                    self.proxy_upstreams.push(upstream);
                }
            }
        }
        self
    }

    /// The upstream image `/validate` decides instead of `image` when `image` is a path of berth's proxy.
    pub fn upstream_behind(&self, image: &str, policy: &Policy) -> Option<String> {
        self.proxied_image(&ImageRef::parse(image).ok()?, policy)
    }

    /// Whether a normalised registry host is one of berth's own addresses: one of [`Scope::own_hosts`], or a host
    /// the policy's rewrites send pods to.
    fn is_own_host(&self, host: &str, policy: &Policy) -> bool {
        self.own_hosts.iter().any(|h| h == host) || policy.rewrite_hosts().iter().any(|h| h == host)
    }

    /// The upstream image behind a reference to berth's proxy (`127.0.0.1:5050/proxy/docker.io/library/nginx:1` →
    /// `docker.io/library/nginx:1`): only on one of berth's own hosts and for a configured upstream, because
    /// `evil.example/proxy/docker.io/library/nginx` is an image of evil.example, whatever its path says.
    fn proxied_image(&self, image: &ImageRef, policy: &Policy) -> Option<String> {
        if !self.is_own_host(&image.domain, policy) {
            return None;
        }
        let (upstream, rest) = image
            .path
            .as_str()
            .strip_prefix("proxy/")?
            .split_once('/')?;
        if !self.proxy_upstreams.iter().any(|u| u == upstream) {
            return None;
        }
        // The upstream's name stands in for its registry host only when it reads as one: an upstream named `quay`
        // would make `…/proxy/quay/evil/x` look like Docker Hub's `quay/evil/x`. Such a path is decided as written.
        if !(upstream.contains(['.', ':']) || upstream == "localhost") {
            return None;
        }
        let mut behind = format!("{upstream}/{rest}");
        if let Some(tag) = &image.tag {
            behind.push(':');
            behind.push_str(tag.as_str());
        }
        if let Some(digest) = &image.digest {
            behind.push('@');
            behind.push_str(&digest.to_string());
        }
        Some(behind)
    }
}

/// The reference to decide for `image` when it is what the policy's rewrite of `original` gives in `namespace`
/// (compared normalised): then berth's `/mutate` made it, or the pod asks for exactly what `/mutate` would have made of
/// `original`. Either way the pod runs `original` by another address, so deciding `original` is deciding the pod. A
/// digest that a later mutating webhook pinned to the rewritten image (a tag target, `@sha256:…` added) is the same
/// image at that digest: `original@digest` is decided.
fn original_behind(
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

/// The images `/validate` decides for one container, each with how the denial message names it:
/// - berth's rewrite of the recorded original (see [`original_behind`]): the original only;
/// - otherwise the image, or for a path of berth's proxy the upstream image behind it instead; and a recorded
///   original the rewrite does not explain (forged, or from another policy) as well, so it can only deny more.
fn images_to_decide(
    image: &str,
    recorded_original: Option<&str>,
    policy: &Policy,
    scope: &Scope,
    namespace: &str,
) -> Vec<(String, &'static str)> {
    let parsed = ImageRef::parse(image).ok();
    let original = recorded_original.filter(|o| *o != image);
    if let (Some(original), Some(parsed)) = (original, &parsed) {
        if let Some(decided) = original_behind(original, parsed, policy, namespace) {
            return vec![(decided, "original image")];
        }
    }
    let mut images = match parsed.and_then(|p| scope.proxied_image(&p, policy)) {
        Some(upstream) => vec![(upstream, "proxied image")],
        None => vec![(image.to_owned(), "image")],
    };
    if let Some(original) = original {
        images.push((original.to_owned(), "original image"));
    }
    images
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
        let checks = images_to_decide(
            &container.image,
            originals.get(&container.name).map(String::as_str),
            policy,
            scope,
            namespace,
        );
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
        Scope::new("berth-system").with_proxy_upstreams(["docker.io".to_owned()])
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

    /// Issue 9, item 1: the policy of the report. `/validate` decided the image `/mutate` had just written, which no
    /// rule allows, so the default action refused every pod berth rewrote.
    const DEFAULT_DENY: &str = r#"
defaultAction: deny
rules:
  - {name: hub-official, action: allow, images: ['docker\.io/library/.*']}
rewrites:
  - {name: hub-via-cache, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#;

    /// Validates a pod with one container `web` running `image`, with `original` recorded for it.
    fn validate_one(policy: &Policy, image: &str, original: Option<&str>) -> AdmissionResponse {
        let annotations = original.map(|o| {
            json!({ORIGINAL_IMAGES_ANNOTATION: serde_json::to_string(&json!({"web": o})).expect("json")})
        });
        let spec = json!({"containers": [{"name": "web", "image": image}]});
        validate(
            &request(("", "Pod"), "CREATE", "apps", pod(spec, annotations)),
            policy,
            &scope(),
        )
    }

    /// Issue 10: admission's own grammar took `sha384` digests, which the registry refuses, so a `when: available`
    /// rewrite of such an image looked it up, found nothing and answered "not available from berth". The image is
    /// not a reference berth can verify: `/validate` denies it saying why, and `/mutate` plans nothing for it.
    #[test]
    fn a_sha384_image_is_denied_as_invalid_not_reported_unavailable() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: allow
rewrites:
  - {name: via-berth, match: 'registry\.example/(.+)', replace: 'berth.berth-system.svc/$1', when: available}
"#,
        )
        .expect("policy");
        let image = format!("registry.example/app@sha384:{}", "e".repeat(96));
        let response = validate_one(&policy, &image, None);
        assert!(!response.allowed, "a sha384 image was allowed");
        let message = &response.result.message;
        assert!(
            message.contains(&format!("invalid image reference {image:?}: bad digest"))
                && message.contains("sha384"),
            "{message}"
        );

        let spec = json!({"containers": [{"name": "web", "image": image}]});
        let plan = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", pod(spec, None)),
            &policy,
            &scope(),
        );
        assert!(plan.candidates.is_empty(), "{:?}", plan.candidates);
        let (patch, warnings) = build_patch(&plan, &[]);
        assert!(patch.is_none());
        assert!(
            warnings.iter().all(|w| !w.contains("not available")),
            "{warnings:?}"
        );
    }

    /// Review finding: with an upstream named `quay` (no dot), `…/proxy/quay/evil/miner:1` was decided as Docker Hub's
    /// `docker.io/quay/evil/miner:1`, so a rule denying `quay\.io/evil/.*` was bypassed. Such a path is decided as
    /// written.
    #[test]
    fn a_proxy_path_of_an_upstream_named_like_no_registry_is_decided_as_written() {
        let policy = Policy::from_yaml(
            "defaultAction: deny\nrules: [{name: hub, action: allow, images: ['docker\\.io/.*']}]",
        )
        .expect("policy");
        let scope = Scope::new("berth-system").with_proxy_upstreams(["quay".to_owned()]);
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/quay/evil/miner:1"}]});
        let response = validate(
            &request(("", "Pod"), "CREATE", "apps", pod(spec, None)),
            &policy,
            &scope,
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("image \"127.0.0.1:5050/proxy/quay/evil/miner:1\" is denied"),
            "{}",
            response.result.message
        );
    }

    /// Review finding: with chained rewrites (docker.io -> mirror, mirror -> berth) and reinvocationPolicy IfNeeded, the
    /// second /mutate pass rewrote the mirror image again and recorded the mirror as the original, and /validate then
    /// refused the pod. A container that already is berth's rewrite of its recorded original is left alone.
    #[test]
    fn a_reinvocation_never_rewrites_berths_own_rewrite_again() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: deny
rules: [{name: hub, action: allow, images: ['docker\.io/library/.*']}]
rewrites:
  - {name: to-mirror, match: 'docker\.io/(.+)', replace: 'mirror.example.com/$1'}
  - {name: mirror-to-cache, match: 'mirror\.example\.com/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#,
        )
        .expect("policy");
        let spec = json!({"containers": [{"name": "web", "image": "nginx:1.25"}]});
        let mut object = pod(spec, None);
        for pass in 0..2 {
            let plan = plan_mutation(
                &request(("", "Pod"), "CREATE", "apps", object.clone()),
                &policy,
                &scope(),
            );
            let available = vec![true; plan.candidates.len()];
            match build_patch(&plan, &available).0 {
                Some(patch) => {
                    assert_eq!(pass, 0, "the reinvocation changed the pod again");
                    json_patch::patch(&mut object, &patch).expect("applies");
                }
                None => assert_eq!(pass, 1, "the first pass did not rewrite"),
            }
        }
        assert_eq!(
            object["spec"]["containers"][0]["image"],
            "mirror.example.com/library/nginx:1.25"
        );
        assert_eq!(
            object["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION],
            "{\"web\":\"nginx:1.25\"}"
        );
        let response = validate(
            &request(("", "Pod"), "CREATE", "apps", object),
            &policy,
            &scope(),
        );
        assert!(response.allowed, "{}", response.result.message);
    }

    /// Review finding: a digest that a later mutating webhook pinned to berth's rewrite made /validate decide the
    /// literal image, refused by a default deny. It is the original at that digest.
    #[test]
    fn a_digest_pinned_to_berths_rewrite_is_the_original_at_that_digest() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: deny
rules:
  - {name: pinned-only, action: deny, images: ['registry\.internal/team/app:1']}
  - {name: internal, action: allow, images: ['registry\.internal/.*']}
rewrites: [{name: internal, match: 'registry\.internal/(.+)', replace: '127.0.0.1:5050/$1'}]
"#,
        )
        .expect("policy");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned = format!("127.0.0.1:5050/team/app:1@{digest}");
        let response = validate_one(&policy, &pinned, Some("registry.internal/team/app:1"));
        assert!(response.allowed, "{}", response.result.message);
        // Unpinned it is the original itself, which the first rule refuses.
        let response = validate_one(
            &policy,
            "127.0.0.1:5050/team/app:1",
            Some("registry.internal/team/app:1"),
        );
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("pinned-only"),
            "{}",
            response.result.message
        );
        // Another digest on another tag is not the rewrite: decided as written (and refused by default).
        let other = format!("127.0.0.1:5050/team/app:2@{digest}");
        let response = validate_one(&policy, &other, Some("registry.internal/team/app:1"));
        assert!(!response.allowed);
    }

    /// Review finding: a review berth could not read was answered with an empty uid, which the API server discards
    /// (failurePolicy Ignore then admits the pod unchecked). The uid is found at the start of such a body.
    #[test]
    fn the_uid_of_an_unreadable_review_is_found() {
        let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
        let start = format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"{uid}","kind":"#
        );
        let cases: Vec<(String, Option<&str>)> = vec![
            (start.clone(), Some(uid)),
            (format!("{start}{}", "x".repeat(100_000)), Some(uid)),
            (
                format!(r#"{{"apiVersion":"v9","request" : {{ "uid" : "{uid}" }}}}"#),
                Some(uid),
            ),
            (r#"{"request":{"uid":""}}"#.into(), None),
            (r#"{"request":{"uid":"a\"b"}}"#.into(), None),
            (r#"{"uid":"outside","request":{}}"#.into(), None),
            (
                format!(r#"{{"request":{{"uid":"{}"}}}}"#, "u".repeat(129)),
                None,
            ),
            ("not json".into(), None),
        ];
        for (body, expected) in cases {
            assert_eq!(uid_of(body.as_bytes()).as_deref(), expected, "{body:.80}");
        }
    }

    #[test]
    fn default_deny_with_a_rewrite_admits_the_pods_berth_rewrote() {
        let policy = Policy::from_yaml(DEFAULT_DENY).expect("policy");
        let proxied = "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25";
        let evil_proxied = "127.0.0.1:5050/proxy/docker.io/evil/miner:1";
        // (image, recorded original, Ok(()) if allowed or Err(what the denial says))
        let cases: &[(&str, Option<&str>, Result<(), &str>)] = &[
            // What /mutate made of nginx:1.25: decided as nginx:1.25.
            (proxied, Some("nginx:1.25"), Ok(())),
            (proxied, Some("docker.io/library/nginx:1.25"), Ok(())),
            // The same path written by hand (or /mutate was down): decided as the upstream image behind it.
            (proxied, None, Ok(())),
            ("localhost:5050/proxy/docker.io/library/nginx:1.25", None, Ok(())),
            ("berth.berth-system.svc:443/proxy/docker.io/library/nginx:1.25", None, Ok(())),
            ("Berth.Berth-System.svc.cluster.local/proxy/docker.io/nginx:1.25", None, Ok(())),
            // The original is what is decided, so a rewrite launders nothing.
            ("nginx:1.25", None, Ok(())),
            ("evil/miner:1", None, Err("image \"evil/miner:1\" (docker.io/evil/miner:1) is denied by rule \"defaultAction\"")),
            (evil_proxied, Some("evil/miner:1"), Err("original image \"evil/miner:1\" (docker.io/evil/miner:1) is denied")),
            (evil_proxied, None, Err("proxied image \"docker.io/evil/miner:1\" is denied")),
            // A forged original the rewrite does not explain gains nothing: the image itself is decided too.
            (evil_proxied, Some("nginx:1.25"), Err("proxied image \"docker.io/evil/miner:1\" is denied")),
            ("quay.io/evil/miner:1", Some("nginx:1.25"), Err("image \"quay.io/evil/miner:1\" is denied")),
            // And a forged original can only deny more.
            (proxied, Some("evil/miner:1"), Err("original image \"evil/miner:1\" (docker.io/evil/miner:1) is denied")),
            // A proxy path is berth's only on berth's own hosts: elsewhere it is a repository like any other.
            ("evil.example/proxy/docker.io/library/nginx:1.25", None, Err("image \"evil.example/proxy/docker.io/library/nginx:1.25\" is denied")),
            ("evil.example/proxy/docker.io/library/nginx:1.25", Some("nginx:1.25"), Err("image \"evil.example/proxy/docker.io/library/nginx:1.25\" is denied")),
            ("127.0.0.1:5051/proxy/docker.io/library/nginx:1.25", None, Err("is denied")),
            // An upstream berth does not proxy is not behind the path.
            ("127.0.0.1:5050/proxy/quay.io/library/nginx:1.25", None, Err("image \"127.0.0.1:5050/proxy/quay.io/library/nginx:1.25\" is denied")),
        ];
        for (image, original, expected) in cases {
            let response = validate_one(&policy, image, *original);
            match expected {
                Ok(()) => assert!(
                    response.allowed,
                    "{image} (original {original:?}): {}",
                    response.result.message
                ),
                Err(needle) => {
                    assert!(!response.allowed, "{image} (original {original:?}) allowed");
                    assert!(
                        response.result.message.contains(needle),
                        "{image} (original {original:?}): {:?} lacks {needle:?}",
                        response.result.message
                    );
                }
            }
        }

        // The whole round trip: /mutate's output passes /validate.
        let spec = json!({"containers": [{"name": "web", "image": "nginx:1.25"}]});
        let mut object = pod(spec, None);
        let plan = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", object.clone()),
            &policy,
            &scope(),
        );
        let (patch, _) = build_patch(&plan, &[true]);
        json_patch::patch(&mut object, &patch.expect("a patch")).expect("applies");
        assert_eq!(object["spec"]["containers"][0]["image"], proxied);
        let response = validate(
            &request(("", "Pod"), "CREATE", "apps", object),
            &policy,
            &scope(),
        );
        assert!(response.allowed, "{}", response.result.message);
    }

    /// A rewrite to a host of the policy's own is berth's address too, and a verified original decides there as well.
    #[test]
    fn the_policys_rewrite_targets_are_berths_own_hosts() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: deny
rules: [{name: internal, action: allow, images: ['registry\.internal/.*', 'quay\.io/team/.*']}]
rewrites:
  - {name: internal, match: 'registry\.internal/(.+)', replace: 'berth.example.com/$1'}
  - {name: quay, match: 'quay\.io/(.+)', replace: 'berth.example.com/proxy/quay.io/$1'}
"#,
        )
        .expect("policy");
        let scope = Scope::new("berth-system").with_proxy_upstreams(["quay.io".to_owned()]);
        let check = |image: &str, original: Option<&str>| {
            let annotations = original.map(|o| {
                json!({ORIGINAL_IMAGES_ANNOTATION: serde_json::to_string(&json!({"web": o})).expect("json")})
            });
            let spec = json!({"containers": [{"name": "web", "image": image}]});
            validate(
                &request(("", "Pod"), "CREATE", "apps", pod(spec, annotations)),
                &policy,
                &scope,
            )
            .allowed
        };
        assert!(check(
            "berth.example.com/team/app:1",
            Some("registry.internal/team/app:1")
        ));
        assert!(!check("berth.example.com/team/app:1", None));
        assert!(!check(
            "berth.example.com/team/app:1",
            Some("registry.internal/team/other:1")
        ));
        assert!(check(
            "BERTH.example.com:443/proxy/quay.io/team/app:1",
            None
        ));
        assert!(!check("berth.example.com/proxy/quay.io/other/app:1", None));
    }

    #[test]
    fn berths_own_hosts_are_normalised_names() {
        let scope = Scope::new("infra").with_hosts(
            [
                "::1",
                "Berth.Example.com",
                "berth.example.com:443",
                "not a host",
                "10.0.0.7",
            ]
            .map(String::from),
        );
        assert_eq!(
            scope.own_hosts,
            [
                "127.0.0.1:5050",
                "localhost:5050",
                "berth.infra.svc.cluster.local",
                "berth.infra.svc",
                "[::1]",
                "berth.example.com",
                "10.0.0.7"
            ]
        );
    }

    /// Issue 9, item 6: any apiVersion and kind was decided and echoed back.
    #[test]
    fn only_v1_admission_reviews_are_read() {
        let body = |api_version: &str, kind: &str| {
            json!({"apiVersion": api_version, "kind": kind, "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "p", "namespace": "apps", "operation": "CREATE", "userInfo": {},
                "object": pod(json!({"containers": [{"name": "web", "image": "nginx:1.25"}]}), None)
            }})
            .to_string()
        };
        assert_eq!(
            read_review(body("admission.k8s.io/v1", "AdmissionReview").as_bytes())
                .map(|r| r.uid)
                .ok()
                .as_deref(),
            Some("u-1")
        );
        for (api_version, kind) in [
            ("admission.k8s.io/v1beta1", "AdmissionReview"),
            ("admission.k8s.io/v2", "AdmissionReview"),
            ("apiextensions.k8s.io/v1", "ConversionReview"),
            ("admission.k8s.io/v1", "Pod"),
            ("v1", "Pod"),
            ("", ""),
        ] {
            let error = read_review(body(api_version, kind).as_bytes())
                .map(|r| r.uid)
                .expect_err(kind)
                .to_string();
            assert_eq!(
                error,
                format!("berth reads only admission.k8s.io/v1 AdmissionReview, not apiVersion {api_version:?} kind {kind:?}")
            );
        }
        // What was sent is shown, not echoed whole.
        let long = "v".repeat(100_000);
        let error = read_review(body(&long, "AdmissionReview").as_bytes())
            .map(|r| r.uid)
            .expect_err("long")
            .to_string();
        assert!(error.len() < 300, "{} bytes of message", error.len());
        let error =
            read_review(b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}")
                .map(|r| r.uid)
                .expect_err("no request");
        assert_eq!(error.to_string(), "the AdmissionReview has no request");
        assert!(read_review(b"[]")
            .map(|r| r.uid)
            .expect_err("not a review")
            .to_string()
            .starts_with("cannot read the AdmissionReview: "));
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

    /// Issue 9, item 6 (small ones): the README said the first recorded original is kept, the code overwrote it. The
    /// code is right: what the pod asks for is the original, the recorded value is only the pod author's claim. A
    /// reinvocation keeps berth's record, because a container already at its target is not rewritten again.
    #[test]
    fn a_rewrite_records_what_the_pod_asks_for_over_a_recorded_claim() {
        let policy = Policy::from_yaml(DEFAULT_DENY).expect("policy");
        let forged =
            json!({ORIGINAL_IMAGES_ANNOTATION: "{\"web\":\"nginx:1.25\",\"side\":\"busybox:1\"}"});
        let spec = json!({"containers": [
            {"name": "web", "image": "evil/miner:1"},
            {"name": "side", "image": "quay.io/x:1"}
        ]});
        let mut object = pod(spec, Some(forged));
        let plan = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", object.clone()),
            &policy,
            &scope(),
        );
        let (patch, _) = build_patch(&plan, &[true]);
        let patch = patch.expect("a patch");
        json_patch::patch(&mut object, &patch).expect("applies");
        let recorded: BTreeMap<String, String> = serde_json::from_str(
            object["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION]
                .as_str()
                .expect("annotation"),
        )
        .expect("map");
        assert_eq!(
            recorded["web"], "evil/miner:1",
            "the claim did not survive the rewrite"
        );
        // An entry for a container berth did not rewrite stays as written; /validate trusts it only when the
        // policy's rewrite explains the image.
        assert_eq!(recorded["side"], "busybox:1");
        let response = validate(
            &request(("", "Pod"), "CREATE", "apps", object.clone()),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("original image \"evil/miner:1\""),
            "{}",
            response.result.message
        );

        // Reinvoked on its own output, /mutate changes nothing, so the first record stays.
        let again = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", object),
            &policy,
            &scope(),
        );
        assert_eq!(build_patch(&again, &[]).0, None);
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
