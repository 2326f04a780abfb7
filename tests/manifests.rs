//! manifests/ and the Containerfile. `kubectl kustomize` renders the base and each overlay, and the tests check the
//! parsed output for what the install depends on: fail-open webhooks that skip berth's own namespace and
//! kube-system, RBAC limited to berth's own objects, hardened pods, flags that agree with the objects they name, and
//! the shipped policy. `kubernetes-validate --strict` checks every object against the Kubernetes 1.30 schemas.
//!
//! [`render`] and [`documents`] are public so that a test against a real API server can apply the same YAML.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

/// What `kubectl apply -k manifests/` installs.
pub const BASE: &str = "manifests";
/// Validation fails closed.
pub const FAIL_CLOSED: &str = "manifests/overlays/fail-closed";
/// Certificates from cert-manager.
pub const CERT_MANAGER: &str = "manifests/overlays/cert-manager";
/// Scraped by the Prometheus Operator.
pub const PROMETHEUS_OPERATOR: &str = "manifests/overlays/prometheus-operator";

/// The Kubernetes version whose schemas the manifests must satisfy.
const KUBERNETES_VERSION: &str = "1.30.0";

/// Kinds that are not part of Kubernetes, so kubernetes-validate has no schema for them: cert-manager's, in the
/// cert-manager overlay, and the Prometheus Operator's, in the prometheus-operator overlay. They are left out of
/// schema validation by name; any other unknown kind fails the test.
const SKIPPED_KINDS: [(&str, &str); 4] = [
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Renders a kustomization directory (relative to the crate root, or absolute) with `kubectl kustomize`: the YAML
/// stream that `kubectl apply -k` applies. Panics with kubectl's message when it fails.
pub fn render(dir: impl AsRef<Path>) -> String {
    let dir = root().join(dir);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl kustomize {}: {e} (kubectl must be on PATH)",
                dir.display()
            )
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl kustomize: UTF-8 output")
}

/// Splits a YAML stream into its documents, as JSON values (empty documents are dropped).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("a YAML document"))
        .filter(|document| !document.is_null())
        .collect()
}

/// A rendered kustomization.
struct Rendered {
    dir: &'static str,
    yaml: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn of(dir: &'static str) -> Rendered {
        let yaml = render(dir);
        let docs = documents(&yaml);
        Rendered { dir, yaml, docs }
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name} in {:?}", self.dir, self.objects()))
    }

    fn get_mut(&mut self, kind: &str, name: &str) -> &mut Value {
        let dir = self.dir;
        self.docs
            .iter_mut()
            .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{dir}: no {kind} {name}"))
    }

    /// "Kind namespace/name" (or "Kind name" when cluster-scoped) of every object.
    fn objects(&self) -> BTreeSet<String> {
        self.docs
            .iter()
            .map(|doc| {
                let kind = doc["kind"].as_str().unwrap_or("?");
                let name = doc["metadata"]["name"].as_str().unwrap_or("?");
                match doc["metadata"]["namespace"].as_str() {
                    Some(namespace) => format!("{kind} {namespace}/{name}"),
                    None => format!("{kind} {name}"),
                }
            })
            .collect()
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("not a string: {item}"))
        })
        .collect()
}

/// The value of `--name=value` in a container's args.
fn flag<'a>(container: &'a Value, name: &str) -> &'a str {
    let prefix = format!("--{name}=");
    strings(&container["args"])
        .into_iter()
        .find_map(|arg| arg.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {}", container["args"]))
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn only_container(workload: &Value) -> &Value {
    let containers = pod_spec(workload)["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    assert!(
        pod_spec(workload)["initContainers"].is_null(),
        "no init containers"
    );
    &containers[0]
}

/// Whether a Kubernetes label selector (matchLabels, matchExpressions) selects these labels.
fn selects(selector: &Value, labels: &BTreeMap<&str, &str>) -> bool {
    let labels_match = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| labels.get(key.as_str()).copied() == value.as_str());
    let expressions_match = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|expression| {
            let key = expression["key"].as_str().expect("key");
            let value = labels.get(key).copied();
            match expression["operator"].as_str().expect("operator") {
                "In" => value.is_some_and(|v| strings(&expression["values"]).contains(&v)),
                "NotIn" => !value.is_some_and(|v| strings(&expression["values"]).contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("unknown operator {other}"),
            }
        });
    labels_match && expressions_match
}

/// Non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp, a read-only root filesystem, and
/// requests and limits for CPU and memory.
fn assert_hardened(workload: &Value) {
    let name = &workload["metadata"]["name"];
    let pod = &pod_spec(workload)["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true, "{name}");
    assert_eq!(pod["runAsUser"], 65532, "{name}");
    assert_eq!(pod["runAsGroup"], 65532, "{name}");
    assert_eq!(pod["fsGroup"], 65532, "{name}");
    assert_eq!(
        pod["seccompProfile"],
        json!({"type": "RuntimeDefault"}),
        "{name}"
    );
    for key in ["hostPID", "hostIPC"] {
        assert!(pod_spec(workload)[key].is_null(), "{name}: {key}");
    }
    let container = only_container(workload);
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(security["privileged"], false, "{name}");
    assert_eq!(security["runAsNonRoot"], true, "{name}");
    assert_eq!(
        security["capabilities"],
        json!({"drop": ["ALL"]}),
        "{name}: all dropped, none added"
    );
    assert_eq!(
        security["seccompProfile"],
        json!({"type": "RuntimeDefault"}),
        "{name}"
    );
    assert!(
        security["runAsUser"].is_null(),
        "{name}: the pod's user applies"
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "{name}: {kind}.{resource}"
            );
        }
    }
    assert!(
        container["image"]
            .as_str()
            .is_some_and(|image| image.starts_with("ghcr.io/berth-dev/berth:")),
        "{name}: {}",
        container["image"]
    );
}

/// What the only container mounts at `path`, and the pod volume behind it (null for a volumeClaimTemplate).
fn mount<'a>(workload: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let container = only_container(workload);
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}: {}", container["volumeMounts"]));
    assert!(
        mount["subPath"].is_null(),
        "{path}: a subPath mount is never updated"
    );
    let volume = pod_spec(workload)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or(&Value::Null);
    (mount, volume)
}

fn berth_args() -> Vec<&'static str> {
    vec![
        "serve",
        "--listen=0.0.0.0:8443",
        "--data-dir=/var/lib/berth",
        "--cert-dir=/run/berth/certs",
        "--policy-configmap=berth-system/berth-policy",
        "--namespace=$(POD_NAMESPACE)",
        "--manage-webhook-certs",
        "--webhook-config=berth",
        "--tls-secret=berth-system/berth-tls",
        "--token-review",
    ]
}

#[test]
fn the_base_installs_exactly_berths_objects() {
    let base = Rendered::of(BASE);
    let expected: BTreeSet<String> = [
        "Namespace berth-system",
        "ServiceAccount berth-system/berth",
        "ServiceAccount berth-system/berth-node-proxy",
        "Role berth-system/berth",
        "RoleBinding berth-system/berth",
        "ClusterRole berth-webhook-ca",
        "ClusterRoleBinding berth-webhook-ca",
        "ClusterRoleBinding berth-token-review",
        "ClusterRole berth-pod-watch",
        "ClusterRoleBinding berth-pod-watch",
        "ConfigMap berth-system/berth-policy",
        "Service berth-system/berth",
        "Service berth-system/berth-headless",
        "StatefulSet berth-system/berth",
        "DaemonSet berth-system/berth-node-proxy",
        "ValidatingWebhookConfiguration berth",
        "MutatingWebhookConfiguration berth",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(base.objects(), expected);
    for doc in &base.docs {
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/part-of"], "berth",
            "{}",
            doc["metadata"]
        );
    }
    // manifests/ is only an entry point to manifests/base (where the overlays find it).
    assert_eq!(render(BASE), render("manifests/base"));
}

#[test]
fn the_policy_configmap_is_policies_default_yaml() {
    let default =
        std::fs::read(root().join("policies/default.yaml")).expect("policies/default.yaml");
    let copy = std::fs::read(root().join("manifests/base/policy.yaml"))
        .expect("manifests/base/policy.yaml");
    assert!(
        copy == default,
        "manifests/base/policy.yaml must be a byte-identical copy of policies/default.yaml: \
         cp policies/default.yaml manifests/base/policy.yaml"
    );
    let base = Rendered::of(BASE);
    let configmap = base.get("ConfigMap", "berth-policy");
    assert_eq!(
        configmap["data"]["policy.yaml"].as_str().map(str::as_bytes),
        Some(&default[..])
    );
    assert_eq!(
        configmap["data"].as_object().map(|data| data.len()),
        Some(1),
        "only policy.yaml"
    );
    // The name berth watches (no kustomize hash suffix).
    let berth = only_container(base.get("StatefulSet", "berth"));
    assert_eq!(flag(berth, "policy-configmap"), "berth-system/berth-policy");
    assert_eq!(configmap["metadata"]["namespace"], "berth-system");
}

#[test]
fn the_webhooks_fail_open_and_call_berths_service() {
    let base = Rendered::of(BASE);
    let service = base.get("Service", "berth");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP", "appProtocol": "https"}])
    );
    let berth = base.get("StatefulSet", "berth");
    assert_eq!(
        only_container(berth)["ports"],
        json!([{"name": "https", "containerPort": 8443, "protocol": "TCP"}])
    );
    assert_eq!(flag(only_container(berth), "listen"), "0.0.0.0:8443");
    assert_eq!(
        service["spec"]["selector"],
        berth["spec"]["selector"]["matchLabels"]
    );

    for (kind, path) in [
        ("ValidatingWebhookConfiguration", "/validate"),
        ("MutatingWebhookConfiguration", "/mutate"),
    ] {
        let configuration = base.get(kind, "berth");
        let webhooks = configuration["webhooks"].as_array().expect("webhooks");
        assert_eq!(webhooks.len(), 1, "{kind}");
        let webhook = &webhooks[0];
        assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]), "{kind}");
        assert_eq!(webhook["sideEffects"], "None", "{kind}");
        let timeout = webhook["timeoutSeconds"].as_u64().expect("timeoutSeconds");
        assert!((1..=5).contains(&timeout), "{kind}: timeout {timeout}");
        assert_eq!(webhook["failurePolicy"], "Ignore", "{kind}");
        assert_eq!(webhook["matchPolicy"], "Equivalent", "{kind}");
        // No caBundle (berth writes it; an empty one here would wipe it at every apply), no URL.
        assert_eq!(
            webhook["clientConfig"],
            json!({"service": {"name": "berth", "namespace": "berth-system", "port": 443, "path": path}}),
            "{kind}"
        );
        assert!(webhook["objectSelector"].is_null(), "{kind}");
        for rule in webhook["rules"].as_array().expect("rules") {
            assert_eq!(rule["scope"], "Namespaced", "{kind}");
        }
    }

    let validating = &base.get("ValidatingWebhookConfiguration", "berth")["webhooks"][0];
    assert_eq!(validating["name"], "validate.berth.dev");
    let mut validated = BTreeSet::new();
    for rule in validating["rules"].as_array().expect("rules") {
        assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
        for group in strings(&rule["apiGroups"]) {
            for version in strings(&rule["apiVersions"]) {
                for resource in strings(&rule["resources"]) {
                    validated.insert(format!("{group}/{version}/{resource}"));
                }
            }
        }
    }
    let expected: BTreeSet<String> = [
        "/v1/pods",
        "/v1/pods/ephemeralcontainers",
        "/v1/replicationcontrollers",
        "apps/v1/deployments",
        "apps/v1/statefulsets",
        "apps/v1/daemonsets",
        "apps/v1/replicasets",
        "batch/v1/jobs",
        "batch/v1/cronjobs",
        "batch/v1beta1/cronjobs", // CronJob's only version before Kubernetes 1.21
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(validated, expected);

    let mutating = &base.get("MutatingWebhookConfiguration", "berth")["webhooks"][0];
    assert_eq!(mutating["name"], "mutate.berth.dev");
    assert_eq!(mutating["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        mutating["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                "scope": "Namespaced"}])
    );

    // berth patches the caBundle of the configurations its flag names.
    assert_eq!(flag(only_container(berth), "webhook-config"), "berth");
}

#[test]
fn the_webhooks_skip_berth_system_and_kube_system() {
    let base = Rendered::of(BASE);
    let validating =
        &base.get("ValidatingWebhookConfiguration", "berth")["webhooks"][0]["namespaceSelector"];
    let mutating =
        &base.get("MutatingWebhookConfiguration", "berth")["webhooks"][0]["namespaceSelector"];
    assert_eq!(validating, mutating);
    let selector = validating;

    let namespace = base.get("Namespace", "berth-system");
    assert_eq!(namespace["metadata"]["labels"]["berth.dev/ignore"], "true");
    let own_labels: BTreeMap<&str, &str> = namespace["metadata"]["labels"]
        .as_object()
        .expect("labels")
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str().expect("label value")))
        .collect();
    let with_name = |mut labels: BTreeMap<&'static str, &'static str>, name: &'static str| {
        labels.insert("kubernetes.io/metadata.name", name);
        labels
    };
    let labels =
        |pairs: &[(&'static str, &'static str)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();

    let mut berth_system_1_21 = own_labels.clone();
    berth_system_1_21.insert("kubernetes.io/metadata.name", "berth-system");
    // (namespace, its labels, whether the API server calls berth for it)
    let cases = [
        ("berth-system (>= 1.21)", berth_system_1_21, false),
        ("berth-system (1.20: no name label)", own_labels, false),
        (
            "kube-system (>= 1.21)",
            with_name(BTreeMap::new(), "kube-system"),
            false,
        ),
        (
            "kube-system (1.20, labelled as documented)",
            labels(&[("berth.dev/ignore", "true")]),
            false,
        ),
        ("kube-system (1.20, not labelled)", BTreeMap::new(), true),
        ("default", with_name(BTreeMap::new(), "default"), true),
        (
            "prod-shop",
            with_name(labels(&[("team", "shop")]), "prod-shop"),
            true,
        ),
        (
            "opted out",
            with_name(labels(&[("berth.dev/ignore", "true")]), "scratch"),
            false,
        ),
        (
            "not opted out",
            with_name(labels(&[("berth.dev/ignore", "false")]), "apps"),
            true,
        ),
    ];
    for (what, labels, called) in cases {
        assert_eq!(selects(selector, &labels), called, "{what}: {labels:?}");
    }
    // The pod security level that allows the node proxy's hostNetwork.
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[test]
fn the_statefulset_is_hardened_and_keeps_its_data() {
    let base = Rendered::of(BASE);
    let berth = base.get("StatefulSet", "berth");
    assert_hardened(berth);
    assert_eq!(berth["metadata"]["namespace"], "berth-system");
    assert_eq!(berth["spec"]["replicas"], 1);
    let headless = base.get(
        "Service",
        berth["spec"]["serviceName"].as_str().expect("serviceName"),
    );
    assert_eq!(headless["spec"]["clusterIP"], "None");
    // Never lose an image: the volume outlives the StatefulSet (Retain, the default, is not written out).
    let retention = &berth["spec"]["persistentVolumeClaimRetentionPolicy"];
    assert!(
        retention.is_null()
            || *retention == json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        "{retention}"
    );
    let template_labels = &berth["spec"]["template"]["metadata"]["labels"];
    for (key, value) in berth["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &template_labels[key], value,
            "the selector selects the template"
        );
    }

    let pod = pod_spec(berth);
    assert_eq!(pod["serviceAccountName"], "berth");
    assert_eq!(pod["automountServiceAccountToken"], true);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > 25,
        "longer than berth's default --shutdown-timeout of 25s: {grace}"
    );

    let container = only_container(berth);
    assert_eq!(
        container["image"], "ghcr.io/berth-dev/berth:0.1.0",
        "the kustomization's images: entry"
    );
    assert_eq!(strings(&container["args"]), berth_args());
    assert_eq!(
        container["env"],
        json!([
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "RUST_LOG", "value": "info"},
        ])
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(
            container[probe]["httpGet"],
            json!({"path": path, "port": "https", "scheme": "HTTPS"}),
            "{probe}"
        );
    }

    // The root filesystem is read-only: --data-dir and --cert-dir are writable volumes.
    let (data_mount, data_volume) = mount(berth, flag(container, "data-dir"));
    assert!(
        data_volume.is_null(),
        "--data-dir is a volumeClaimTemplate, not a pod volume"
    );
    assert!(data_mount["readOnly"].is_null());
    let claims = berth["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["name"], data_mount["name"]);
    assert_eq!(claims[0]["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert!(claims[0]["spec"]["resources"]["requests"]["storage"].is_string());

    let (certs_mount, certs_volume) = mount(berth, flag(container, "cert-dir"));
    assert!(
        certs_mount["readOnly"].is_null(),
        "berth writes its serving pair into --cert-dir"
    );
    assert_eq!(certs_volume["emptyDir"]["medium"], "Memory");
}

#[test]
fn rbac_reaches_only_berths_own_objects() {
    let base = Rendered::of(BASE);
    let berth = only_container(base.get("StatefulSet", "berth"));
    let (policy_namespace, policy_name) = flag(berth, "policy-configmap")
        .split_once('/')
        .expect("NS/NAME");
    let (secret_namespace, secret_name) =
        flag(berth, "tls-secret").split_once('/').expect("NS/NAME");
    assert_eq!(
        (policy_namespace, secret_namespace),
        ("berth-system", "berth-system")
    );

    let role = base.get("Role", "berth");
    assert_eq!(role["metadata"]["namespace"], "berth-system");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [policy_name],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret_name],
             "verbs": ["get", "list", "watch", "update", "patch"]},
            // Create cannot be limited by name (see rbac.yaml): the one rule without resourceNames.
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        ])
    );

    let cluster_role = base.get("ClusterRole", "berth-webhook-ca");
    assert_eq!(
        cluster_role["rules"],
        json!([{
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
            "resourceNames": [flag(berth, "webhook-config")],
            "verbs": ["get", "list", "watch", "update", "patch"],
        }])
    );

    // No wildcard and no delete anywhere; a rule without resourceNames only creates.
    for rule in role["rules"]
        .as_array()
        .into_iter()
        .chain(cluster_role["rules"].as_array())
        .flatten()
    {
        for key in ["apiGroups", "resources", "verbs", "resourceNames"] {
            if !rule[key].is_null() {
                assert!(!strings(&rule[key]).contains(&"*"), "{rule}");
            }
        }
        let verbs = strings(&rule["verbs"]);
        assert!(
            !verbs
                .iter()
                .any(|verb| verb.starts_with("delete") || *verb == "escalate"),
            "{rule}"
        );
        if rule["resourceNames"].is_null() {
            assert_eq!(verbs, ["create"], "{rule}");
        }
    }

    for (binding, role_kind, role_name) in [
        ("RoleBinding", "Role", "berth"),
        ("ClusterRoleBinding", "ClusterRole", "berth-webhook-ca"),
    ] {
        let binding = base.get(binding, role_name);
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "berth", "namespace": "berth-system"}])
        );
    }

    // TokenReview (--token-review) through Kubernetes' own role for it, and only for berth.
    assert!(strings(&berth["args"]).contains(&"--token-review"));
    assert_eq!(
        base.get("ClusterRoleBinding", "berth-token-review")["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"})
    );
    assert_eq!(
        base.get("ClusterRoleBinding", "berth-token-review")["subjects"],
        json!([{"kind": "ServiceAccount", "name": "berth", "namespace": "berth-system"}])
    );

    // The pod watch (issue 12): list and watch pods in every namespace, nothing else, and only for berth.
    assert_eq!(
        base.get("ClusterRole", "berth-pod-watch")["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])
    );
    let binding = base.get("ClusterRoleBinding", "berth-pod-watch");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "berth-pod-watch"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "berth", "namespace": "berth-system"}])
    );

    // The node proxy has no API access at all: no API token (its only token is a projected one of audience berth,
    // which the API server refuses), and no binding names its account.
    let node_proxy = base.get("DaemonSet", "berth-node-proxy");
    let account = pod_spec(node_proxy)["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    assert_eq!(
        base.get("ServiceAccount", account)["automountServiceAccountToken"],
        false
    );
    assert_eq!(pod_spec(node_proxy)["automountServiceAccountToken"], false);
    for doc in &base.docs {
        if doc["subjects"].is_array() {
            assert!(
                !doc["subjects"].to_string().contains(account),
                "{}",
                doc["metadata"]
            );
        }
    }
}

#[test]
fn the_node_proxy_listens_on_every_nodes_loopback() {
    let base = Rendered::of(BASE);
    let daemonset = base.get("DaemonSet", "berth-node-proxy");
    assert_hardened(daemonset);
    let pod = pod_spec(daemonset);
    assert_eq!(pod["hostNetwork"], true);
    // The proxy resolves no name (it connects to berth's ClusterIP), so pulls do not depend on cluster DNS.
    assert_eq!(pod["dnsPolicy"], "Default");
    // The kubelet's service links give it that ClusterIP and port.
    assert_eq!(pod["enableServiceLinks"], true);
    assert_eq!(
        pod["tolerations"],
        json!([{"operator": "Exists"}]),
        "every node, whatever its taints"
    );
    // Two proxies cannot share a node's 127.0.0.1:5050: no surge (0 is the default, not written out).
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert!(
        rolling["maxSurge"].is_null() || rolling["maxSurge"] == 0,
        "{rolling}"
    );
    assert_eq!(rolling["maxUnavailable"], 1);

    let container = only_container(daemonset);
    assert_eq!(
        container["image"],
        base.get("StatefulSet", "berth")["spec"]["template"]["spec"]["containers"][0]["image"]
    );
    assert_eq!(
        strings(&container["args"]),
        [
            "node-proxy",
            "--listen=127.0.0.1:5050",
            "--upstream=https://berth.berth-system.svc:443",
            "--upstream-address=$(BERTH_SERVICE_HOST):$(BERTH_SERVICE_PORT_HTTPS)",
            "--ca-file=/var/run/berth/ca.crt",
            "--token-file=/var/run/secrets/berth/token",
            "--node-name=$(NODE_NAME)",
        ]
    );
    // The node name the kubelet expands into --node-name is the pod's node, from the downward API.
    assert!(
        container["env"].as_array().expect("env").contains(
            &json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
        ),
        "{}",
        container["env"]
    );
    // The token is a projected ServiceAccount token for berth only, short-lived (the kubelet rotates it), read-only,
    // in a directory mount that follows the rotation.
    let token_file = Path::new(flag(container, "token-file"));
    let (token_mount, token_volume) = mount(
        daemonset,
        token_file.parent().and_then(Path::to_str).expect("dir"),
    );
    assert_eq!(token_mount["readOnly"], true);
    assert_eq!(
        token_volume["projected"],
        json!({
            "sources": [{"serviceAccountToken": {
                "audience": "berth",
                "expirationSeconds": 3600,
                "path": token_file.file_name().and_then(|f| f.to_str()).expect("file"),
            }}],
            "defaultMode": 0o440,
        })
    );
    // No ports: with hostNetwork the API server would turn each containerPort into a hostPort.
    assert!(container["ports"].is_null(), "{}", container["ports"]);
    assert!(!base.yaml.contains("hostPort"));
    assert!(!base.yaml.contains("NodePort"));

    // The probes reach the loopback listener (kubelet and pod share the node's network namespace).
    let (host, port) = flag(container, "listen")
        .rsplit_once(':')
        .expect("HOST:PORT");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"],
            json!({"host": host, "path": "/healthz", "port": port.parse::<u16>().expect("port"), "scheme": "HTTP"}),
            "{probe}"
        );
    }

    // The upstream is berth's Service, on its port.
    let service = base.get("Service", "berth");
    // The address is that Service's service-link variables (the kubelet names them after the Service, upper-case,
    // `-` as `_`, and sets them only for a Service of the pod's namespace with a ClusterIP; `_PORT_<NAME>` is the
    // port of that name, which stays right when ports are added), which kustomize passed through unexpanded.
    let upper = |v: &serde_json::Value| v.as_str().expect("name").to_uppercase().replace('-', "_");
    let prefix = upper(&service["metadata"]["name"]);
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        flag(container, "upstream-address"),
        format!(
            "$({prefix}_SERVICE_HOST):$({prefix}_SERVICE_PORT_{})",
            upper(&port["name"])
        )
    );
    assert_eq!(
        service["metadata"]["namespace"],
        daemonset["metadata"]["namespace"]
    );
    assert_ne!(
        service["spec"]["clusterIP"], "None",
        "a headless Service has no service-link variables"
    );
    assert_eq!(
        flag(container, "upstream"),
        format!(
            "https://{}.{}.svc:{}",
            service["metadata"]["name"].as_str().expect("name"),
            service["metadata"]["namespace"]
                .as_str()
                .expect("namespace"),
            service["spec"]["ports"][0]["port"]
        )
    );

    // Only the key ca.crt of the certificate Secret, read-only, in a directory mount that follows updates.
    let ca_file = Path::new(flag(container, "ca-file"));
    let (ca_mount, ca_volume) = mount(
        daemonset,
        ca_file.parent().and_then(Path::to_str).expect("dir"),
    );
    assert_eq!(ca_mount["readOnly"], true);
    let secret = flag(
        only_container(base.get("StatefulSet", "berth")),
        "tls-secret",
    );
    assert_eq!(
        ca_volume["secret"],
        json!({
            "secretName": secret.split_once('/').expect("NS/NAME").1,
            "items": [{"key": "ca.crt", "path": ca_file.file_name().and_then(|f| f.to_str()).expect("file")}],
            "defaultMode": 0o444,
        })
    );
}

#[test]
fn the_fail_closed_overlay_changes_only_validation() {
    let base = Rendered::of(BASE);
    let mut fail_closed = Rendered::of(FAIL_CLOSED);
    let validating =
        &mut fail_closed.get_mut("ValidatingWebhookConfiguration", "berth")["webhooks"][0];
    assert_eq!(validating["failurePolicy"], "Fail");
    validating["failurePolicy"] = json!("Ignore");
    assert_eq!(
        fail_closed.get("MutatingWebhookConfiguration", "berth")["webhooks"][0]["failurePolicy"],
        "Ignore"
    );
    assert_eq!(
        fail_closed.docs, base.docs,
        "apart from the validating webhook's failurePolicy"
    );
}

#[test]
fn the_cert_manager_overlay_hands_certificates_to_cert_manager() {
    let base = Rendered::of(BASE);
    let overlay = Rendered::of(CERT_MANAGER);

    let berth = overlay.get("StatefulSet", "berth");
    assert_hardened(berth);
    let container = only_container(berth);
    let managed = [
        "--manage-webhook-certs",
        "--webhook-config=berth",
        "--tls-secret=berth-system/berth-tls",
    ];
    let expected: Vec<&str> = berth_args()
        .into_iter()
        .filter(|arg| !managed.contains(arg))
        .collect();
    assert_eq!(strings(&container["args"]), expected);

    // The Secret cert-manager writes is served read-only at --cert-dir.
    let certificate = overlay.get("Certificate", "berth-tls");
    let secret = certificate["spec"]["secretName"]
        .as_str()
        .expect("secretName");
    assert_eq!(
        secret, "berth-tls",
        "the Secret the node proxies read ca.crt from"
    );
    let (certs_mount, certs_volume) = mount(berth, flag(container, "cert-dir"));
    assert_eq!(certs_mount["readOnly"], true);
    assert_eq!(
        certs_volume,
        &json!({"name": "certs", "secret": {"secretName": secret, "defaultMode": 0o440}})
    );

    // The names the API server and the node proxies use for berth's Service.
    let dns_names = strings(&certificate["spec"]["dnsNames"]);
    assert!(
        dns_names.contains(&"berth.berth-system.svc"),
        "{dns_names:?}"
    );
    let upstream = flag(
        only_container(overlay.get("DaemonSet", "berth-node-proxy")),
        "upstream",
    );
    assert!(
        dns_names
            .iter()
            .any(|name| upstream == format!("https://{name}:443")),
        "{upstream}"
    );
    assert_eq!(
        certificate["spec"]["usages"],
        json!(["server auth", "digital signature"])
    );

    // The serving certificate comes from a CA issuer whose CA is a cert-manager certificate.
    let ca_issuer = overlay.get(
        "Issuer",
        certificate["spec"]["issuerRef"]["name"]
            .as_str()
            .expect("issuerRef"),
    );
    let ca_secret = &ca_issuer["spec"]["ca"]["secretName"];
    let ca = overlay
        .docs
        .iter()
        .find(|doc| doc["kind"] == "Certificate" && &doc["spec"]["secretName"] == ca_secret)
        .expect("the CA's Certificate");
    assert_eq!(ca["spec"]["isCA"], true);
    overlay.get(
        "Issuer",
        ca["spec"]["issuerRef"]["name"].as_str().expect("issuerRef"),
    );

    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        let configuration = overlay.get(kind, "berth");
        assert_eq!(
            configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!(
                "berth-system/{}",
                certificate["metadata"]["name"].as_str().expect("name")
            ),
            "{kind}"
        );
        assert_eq!(
            configuration["webhooks"],
            base.get(kind, "berth")["webhooks"],
            "{kind}"
        );
    }

    // berth no longer touches Secrets nor webhook configurations.
    assert!(overlay.find("ClusterRole", "berth-webhook-ca").is_none());
    assert!(overlay
        .find("ClusterRoleBinding", "berth-webhook-ca")
        .is_none());
    assert_eq!(
        overlay.get("Role", "berth")["rules"],
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["berth-policy"],
                "verbs": ["get", "list", "watch"]}])
    );
    for doc in &overlay.docs {
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/part-of"], "berth",
            "{}",
            doc["metadata"]
        );
    }
}

/// Runs `kubernetes-validate --strict` for [`KUBERNETES_VERSION`] on a rendered kustomization. Kinds in
/// [`SKIPPED_KINDS`] are left out; any other kind without a schema fails (the tool itself only warns about those).
fn validate(dir: &'static str) {
    let rendered = Rendered::of(dir);
    let (skipped, checked): (Vec<&Value>, Vec<&Value>) = rendered.docs.iter().partition(|doc| {
        SKIPPED_KINDS
            .iter()
            .any(|(api_version, kind)| doc["apiVersion"] == *api_version && doc["kind"] == *kind)
    });
    if dir != CERT_MANAGER && dir != PROMETHEUS_OPERATOR {
        assert!(skipped.is_empty(), "{dir}: {skipped:?}");
    }
    let mut yaml = String::new();
    for doc in &checked {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml_ng::to_string(doc).expect("YAML"));
    }
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), yaml).expect("write the rendered manifests");

    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate: {e} (tests/run.sh installs it: pip install kubernetes-validate)")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{dir}:\n{report}");
    let lines: Vec<&str> = report
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let passed = lines
        .iter()
        .filter(|line| line.starts_with("INFO ") && line.contains(" passed "))
        .count();
    assert_eq!(
        passed,
        checked.len(),
        "{dir}: one pass per object, no warning:\n{report}"
    );
    assert_eq!(lines.len(), passed, "{dir}: no warning:\n{report}");
}

#[test]
fn the_base_validates_strictly_against_kubernetes_1_30() {
    validate(BASE);
}

#[test]
fn the_fail_closed_overlay_validates_strictly_against_kubernetes_1_30() {
    validate(FAIL_CLOSED);
}

#[test]
fn the_cert_manager_overlay_validates_strictly_against_kubernetes_1_30() {
    validate(CERT_MANAGER);
}

#[test]
fn the_prometheus_operator_overlay_validates_strictly_against_kubernetes_1_30() {
    validate(PROMETHEUS_OPERATOR);
}

/// The labels of a workload's pods.
fn pod_labels(workload: &Value) -> BTreeMap<&str, &str> {
    workload["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels")
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str().expect("label value")))
        .collect()
}

/// The container port named `name`.
fn container_port<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|port| port["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {}", container["ports"]))
}

/// Issue 12: the pod template announces /metrics the conventional way, on the TLS port berth listens on.
#[test]
fn berth_announces_its_metrics_on_the_https_port() {
    let base = Rendered::of(BASE);
    let berth = base.get("StatefulSet", "berth");
    let annotations = &berth["spec"]["template"]["metadata"]["annotations"];
    let container = only_container(berth);
    let port = container_port(container, "https")["containerPort"]
        .as_u64()
        .expect("port");
    assert!(
        flag(container, "listen").ends_with(&format!(":{port}")),
        "{}",
        flag(container, "listen")
    );
    assert_eq!(
        annotations,
        &json!({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": port.to_string(),
            "prometheus.io/path": "/metrics",
            "prometheus.io/scheme": "https",
        })
    );
}

/// Issue 12: the ServiceMonitor scrapes berth's Service on its https port verifying berth's CA; the PodMonitor
/// scrapes each node proxy on the port its --metrics-listen opens; nothing else changes.
#[test]
fn the_prometheus_operator_overlay_scrapes_berth_and_the_node_proxies() {
    let base = Rendered::of(BASE);
    let mut overlay = Rendered::of(PROMETHEUS_OPERATOR);

    let service = overlay.get("Service", "berth");
    let monitor = overlay.get("ServiceMonitor", "berth");
    let service_labels: BTreeMap<&str, &str> = service["metadata"]["labels"]
        .as_object()
        .expect("labels")
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str().expect("label value")))
        .collect();
    assert!(selects(&monitor["spec"]["selector"], &service_labels));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["tlsConfig"]["ca"],
        json!({"secret": {"name": "berth-tls", "key": "ca.crt"}})
    );
    assert_eq!(
        endpoint["tlsConfig"]["serverName"],
        format!(
            "{}.{}.svc",
            service["metadata"]["name"].as_str().expect("name"),
            service["metadata"]["namespace"]
                .as_str()
                .expect("namespace")
        )
    );

    let daemonset = overlay.get("DaemonSet", "berth-node-proxy");
    let pod_monitor = overlay.get("PodMonitor", "berth-node-proxy");
    assert!(selects(
        &pod_monitor["spec"]["selector"],
        &pod_labels(daemonset)
    ));
    let container = only_container(daemonset);
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = container_port(container, endpoint["port"].as_str().expect("port name"));
    assert_eq!(
        flag(container, "metrics-listen"),
        format!("$(POD_IP):{}", port["containerPort"])
    );
    let env = container["env"].as_array().expect("env");
    assert!(
        env.contains(
            &json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        ),
        "{env:?}"
    );

    // Apart from the node proxy's metrics listener and the two monitors, the overlay is the base.
    let base_daemonset = base.get("DaemonSet", "berth-node-proxy").clone();
    *overlay.get_mut("DaemonSet", "berth-node-proxy") = base_daemonset;
    overlay
        .docs
        .retain(|doc| doc["apiVersion"] != "monitoring.coreos.com/v1");
    assert_eq!(overlay.docs, base.docs);
}

#[test]
fn the_container_build_context_holds_what_the_containerfile_copies() {
    let read = |name: &str| {
        std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let ignore = read(".containerignore");
    assert_eq!(
        ignore,
        read(".dockerignore"),
        ".containerignore (podman, buildah) and .dockerignore (docker)"
    );
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_end_matches('/'))
        .collect();
    assert!(
        ignored.contains(&"target"),
        "the build context must never include target/"
    );

    let containerfile = read("Containerfile");
    let instructions: Vec<&str> = containerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .collect();
    let mut copied = 0;
    for line in &instructions {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(root().join(source).exists(), "COPY {source}: no such file");
            assert!(
                !ignored.contains(&source.trim_end_matches('/')),
                "COPY {source} is in .containerignore"
            );
            copied += 1;
        }
    }
    assert!(copied >= 3, "Cargo.toml, Cargo.lock and src");
    assert!(containerfile.contains("cargo build --release --locked"));
    assert!(instructions.contains(&"USER 65532:65532"));
    assert!(instructions.contains(&r#"ENTRYPOINT ["/berth"]"#));
    let bases: Vec<&&str> = instructions
        .iter()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert_eq!(
        bases.len(),
        2,
        "a build stage and a runtime stage: {bases:?}"
    );
    assert!(bases[1].contains("distroless"), "{}", bases[1]);
}
