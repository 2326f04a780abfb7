//! berth with a real kube-apiserver (tests/cluster.rs): the manifests installed through a test overlay whose webhooks
//! call berth at `https://127.0.0.1:PORT`, berth running outside the cluster as its ServiceAccount with
//! `--manage-webhook-certs`, and the API server calling it over verified TLS for real pods and workloads.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::manifests::{documents, render, BASE, FAIL_CLOSED};
use crate::support::{free_port, poll_until, Berth, Options};

const POLICY: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: berth-policy
  namespace: berth-system
data:
  policy.yaml: |
    defaultAction: allow
    rules:
      - name: evil
        action: deny
        images: ['evil\.example/.*']
        message: "images from evil.example are forbidden"
    rewrites:
      - name: hub-via-node
        match: 'docker\.io/(.+)'
        replace: '127.0.0.1:5050/$1'
"#;

/// A kustomization on top of `base_dir` whose webhooks call berth at `host` by URL.
fn test_overlay(dir: &Path, base_dir: &str, host: &str) -> String {
    // kustomize wants a relative path to a base: climb from the overlay to / and descend to the base.
    let absolute = Path::new(env!("CARGO_MANIFEST_DIR")).join(base_dir);
    let depth = dir.components().count().saturating_sub(1);
    let base =
        Path::new(&"../".repeat(depth)).join(absolute.strip_prefix("/").unwrap_or(&absolute));
    let patch = |kind: &str, path: &str| {
        format!(
            "  - target: {{kind: {kind}, name: berth}}\n    patch: |-\n      - op: replace\n        path: /webhooks/0/clientConfig\n        value: {{url: \"https://{host}{path}\"}}\n"
        )
    };
    let kustomization = format!(
        "resources:\n  - {}\npatches:\n{}{}",
        base.display(),
        patch("ValidatingWebhookConfiguration", "/validate"),
        patch("MutatingWebhookConfiguration", "/mutate")
    );
    std::fs::create_dir_all(dir).expect("overlay dir");
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("write kustomization");
    render(dir)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  containers:\n    - name: main\n      image: {image}\n"
    )
}

fn deployment(name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n        - name: main\n          image: {image}\n"
    )
}

/// `kubectl create --dry-run=server`: the API server runs the webhooks but stores nothing.
pub(crate) fn dry_run(cluster: &Cluster, yaml: &str) -> Output {
    cluster.kubectl_as(
        &cluster.kubeconfig,
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(yaml),
    )
}

/// The Secret berth manages, as JSON.
fn berth_tls_secret(cluster: &Cluster) -> Value {
    let json = cluster.kubectl_ok(&[
        "get",
        "secret",
        "-n",
        "berth-system",
        "berth-tls",
        "-o",
        "json",
    ]);
    serde_json::from_str(&json).expect("secret json")
}

/// A key of a Secret's data, decoded.
fn secret_key(secret: &Value, key: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().unwrap_or_default())
        .expect("base64")
}

fn webhook_ca_bundles(cluster: &Cluster) -> Vec<String> {
    let mut bundles = Vec::new();
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let json: Value =
            serde_json::from_str(&cluster.kubectl_ok(&["get", kind, "berth", "-o", "json"]))
                .expect("json");
        for webhook in json["webhooks"].as_array().into_iter().flatten() {
            bundles.push(
                webhook["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    bundles
}

#[test]
fn berth_guards_a_real_api_server() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let host = format!("127.0.0.1:{port}");

    // The manifests pass server-side validation (dry-run) as shipped (their namespace must exist for that), then
    // install with URL webhooks.
    cluster.kubectl_ok(&["create", "namespace", "berth-system"]);
    for dir in [BASE, FAIL_CLOSED] {
        let output = cluster.kubectl_as(
            &cluster.kubeconfig,
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&render(dir)),
        );
        assert!(output.status.success(), "{dir}: {}", stderr(&output));
    }
    let installed = test_overlay(&work.path().join("overlay"), BASE, &host);
    assert!(documents(&installed).len() >= 10);
    // Kubernetes 1.20 has no kubernetes.io/metadata.name label: exclude kube-system by berth's label.
    cluster.kubectl_ok(&["label", "namespace", "kube-system", "berth.dev/ignore=true"]);
    let output = cluster.apply_yaml(&installed);
    assert!(output.status.success(), "install: {}", stderr(&output));
    let output = cluster.apply_yaml(POLICY);
    assert!(output.status.success(), "policy: {}", stderr(&output));
    cluster.kubectl_ok(&["create", "namespace", "apps"]);

    // berth runs as its ServiceAccount, with the RBAC of the manifests and nothing more.
    let kubeconfig = cluster.kubeconfig_for(
        "system:serviceaccount:berth-system:berth",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:berth-system",
        ],
    );
    let mut berth = Berth::start(Options {
        port: Some(port),
        env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
        extra_args: [
            "--policy-configmap",
            "berth-system/berth-policy",
            "--namespace",
            "berth-system",
            "--manage-webhook-certs",
            "--webhook-config",
            "berth",
            "--tls-secret",
            "berth-system/berth-tls",
            "--san",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    });

    // 1. berth created its Secret and patched its CA into every webhook's caBundle.
    let secret = berth_tls_secret(&cluster);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let ca_b64 = secret["data"]["ca.crt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(String::from_utf8_lossy(&secret_key(&secret, "ca.crt")).contains("BEGIN CERTIFICATE"));
    poll_until(
        Duration::from_secs(20),
        "caBundle patched into both webhook configurations",
        || {
            let bundles = webhook_ca_bundles(&cluster);
            (bundles.len() == 2 && bundles.iter().all(|b| *b == ca_b64)).then_some(())
        },
    );
    // The served certificate is the Secret's.
    let served = std::fs::read_to_string(berth.cert_dir.join("tls.crt")).expect("tls.crt");
    assert_eq!(served.as_bytes(), &secret_key(&secret, "tls.crt")[..]);
    // Least privilege: berth's identity cannot read other Secrets or change other webhook configurations.
    let denied = cluster.kubectl_as(&kubeconfig, &["get", "secrets", "-n", "kube-system"], None);
    assert!(
        !denied.status.success(),
        "berth may list kube-system secrets"
    );
    // A caBundle changed by someone else is put back.
    cluster.kubectl_ok(&[
        "patch",
        "mutatingwebhookconfiguration",
        "berth",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":"YnJva2Vu"}]"#,
    ]);
    poll_until(
        Duration::from_secs(20),
        "the caBundle to be re-patched",
        || {
            webhook_ca_bundles(&cluster)
                .iter()
                .all(|b| *b == ca_b64)
                .then_some(())
        },
    );

    // 2. Allowed images are created rewritten and annotated; denied pods and workloads are refused with berth's
    // message, printed by kubectl.
    let output = cluster.apply_yaml(&pod("good", "busybox:1.36"));
    assert!(output.status.success(), "{}", stderr(&output));
    let created: Value = serde_json::from_str(
        &cluster.kubectl_ok(&["get", "pod", "-n", "apps", "good", "-o", "json"]),
    )
    .expect("json");
    assert_eq!(
        created["spec"]["containers"][0]["image"],
        "127.0.0.1:5050/library/busybox:1.36"
    );
    assert_eq!(
        created["metadata"]["annotations"]["berth.dev/original-images"],
        r#"{"main":"busybox:1.36"}"#
    );
    let refused = cluster.apply_yaml(&pod("bad", "evil.example/miner:1"));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            r#"berth denied Pod apps/bad: container "main" image "evil.example/miner:1" is denied by rule "evil": images from evil.example are forbidden"#
        ),
        "{}",
        stderr(&refused)
    );
    let refused = cluster.apply_yaml(&deployment("bad-deploy", "evil.example/miner:1"));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("berth denied Deployment apps/bad-deploy"),
        "{}",
        stderr(&refused)
    );
    // Templates stay as written.
    let output = cluster.apply_yaml(&deployment("web", "nginx:1.25"));
    assert!(output.status.success(), "{}", stderr(&output));
    let web: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "deployment",
        "-n",
        "apps",
        "web",
        "-o",
        "json",
    ]))
    .expect("json");
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );

    // 3. A changed policy ConfigMap decides within 2 s; an invalid one changes nothing and is reported.
    let stricter = POLICY.replace(r"evil\.example/.*", r"(evil\.example|quay\.io)/.*");
    let probe = pod("probe", "quay.io/team/app:1");
    assert!(dry_run(&cluster, &probe).status.success());
    let output = cluster.apply_yaml(&stricter);
    assert!(output.status.success(), "{}", stderr(&output));
    let applied = Instant::now();
    poll_until(
        Duration::from_secs(15),
        "the new policy to refuse quay.io",
        || (!dry_run(&cluster, &probe).status.success()).then_some(()),
    );
    let elapsed = applied.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "the policy change took {elapsed:?}"
    );
    let broken = stricter.replace("action: deny", "action: maybe");
    let output = cluster.apply_yaml(&broken);
    assert!(output.status.success(), "{}", stderr(&output));
    let client = berth.client();
    let error = poll_until(
        Duration::from_secs(15),
        "the invalid policy to be reported",
        || {
            let ready: Value = client
                .get(format!("{}/readyz", berth.base_url))
                .send()
                .ok()?
                .json()
                .ok()?;
            ready["policy"]["lastError"].as_str().map(str::to_owned)
        },
    );
    assert!(error.contains("maybe"), "{error}");
    assert!(
        !dry_run(&cluster, &probe).status.success(),
        "the last good policy still refuses quay.io"
    );

    // 4. berth down: pods are created unmutated (failurePolicy Ignore); with the fail-closed overlay, refused.
    berth.kill9();
    let output = cluster.apply_yaml(&pod("while-down", "busybox:1.36"));
    assert!(output.status.success(), "fail open: {}", stderr(&output));
    let created: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "pod",
        "-n",
        "apps",
        "while-down",
        "-o",
        "json",
    ]))
    .expect("json");
    assert_eq!(created["spec"]["containers"][0]["image"], "busybox:1.36");
    let closed = test_overlay(&work.path().join("closed"), FAIL_CLOSED, &host);
    let output = cluster.apply_yaml(&closed);
    assert!(
        output.status.success(),
        "fail-closed overlay: {}",
        stderr(&output)
    );
    let refused = cluster.apply_yaml(&pod("refused-while-down", "busybox:1.36"));
    assert!(
        !refused.status.success(),
        "fail closed must refuse while berth is down"
    );
    assert!(
        stderr(&refused).contains("validate.berth.dev"),
        "{}",
        stderr(&refused)
    );
    // The caBundle survived the re-apply (the manifests do not carry one).
    assert!(webhook_ca_bundles(&cluster).iter().all(|b| *b == ca_b64));
    let _ = stdout(&output);
}

/// Issue 9, item 1: the report's policy, with `defaultAction: deny`.
const DEFAULT_DENY_POLICY: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: berth-policy
  namespace: berth-system
data:
  policy.yaml: |
    defaultAction: deny
    rules:
      - name: hub-official
        action: allow
        images: ['docker\.io/library/.*']
    rewrites:
      - name: hub-via-cache
        match: 'docker\.io/(.+)'
        replace: '127.0.0.1:5050/proxy/docker.io/$1'
"#;

/// Issue 9, item 1: with `defaultAction: deny` and a rewrite to berth's proxy, `kubectl run --image=nginx:1.25` was
/// refused: `/mutate` rewrote the image, then `/validate` decided the rewritten reference, which no rule allows.
/// Installs the manifests with URL webhooks to a berth on a free loopback port, applies `policy` (a ConfigMap),
/// creates `namespaces`, and starts that berth as its ServiceAccount (the manifests' RBAC: TokenReview included)
/// with `--manage-webhook-certs`, the policy ConfigMap, a docker.io upstream that is never reached (pods stay
/// Pending without a kubelet) and `extra_args`.
pub(crate) fn install_with_a_proxying_berth(
    cluster: &Cluster,
    policy: &str,
    namespaces: &[&str],
    extra_args: &[&str],
) -> Berth {
    let work = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    cluster.kubectl_ok(&["create", "namespace", "berth-system"]);
    cluster.kubectl_ok(&["label", "namespace", "kube-system", "berth.dev/ignore=true"]);
    let installed = test_overlay(&work.path().join("overlay"), BASE, &host);
    let output = cluster.apply_yaml(&installed);
    assert!(output.status.success(), "install: {}", stderr(&output));
    let output = cluster.apply_yaml(policy);
    assert!(output.status.success(), "policy: {}", stderr(&output));
    for namespace in namespaces {
        cluster.kubectl_ok(&["create", "namespace", namespace]);
    }
    let berth_dir = tempfile::tempdir().expect("tempdir");
    let config = berth_dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "proxy:\n  upstreams:\n    - name: docker.io\n      url: 'https://127.0.0.1:9'\n",
    )
    .expect("write config");
    let kubeconfig = cluster.kubeconfig_for(
        "system:serviceaccount:berth-system:berth",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:berth-system",
        ],
    );
    let mut args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--policy-configmap",
        "berth-system/berth-policy",
        "--namespace",
        "berth-system",
        "--manage-webhook-certs",
        "--webhook-config",
        "berth",
        "--san",
        "127.0.0.1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra_args.iter().map(|a| a.to_string()));
    // berth reads the config at start, so the directory may go when this returns.
    Berth::start(Options {
        port: Some(port),
        env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
        extra_args: args,
        ..Options::default()
    })
}

#[test]
fn default_deny_with_a_rewrite_admits_the_pods_berth_rewrote() {
    let cluster = Cluster::start();
    let _berth = install_with_a_proxying_berth(&cluster, DEFAULT_DENY_POLICY, &["apps"], &[]);
    let rewritten = "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25";
    // The webhooks are live once berth patched their caBundle and the API server picked it up.
    poll_until(
        Duration::from_secs(30),
        "berth to refuse a dry-run pod",
        || {
            stderr(&dry_run(&cluster, &pod("probe", "quay.io/team/app:1")))
                .contains("berth denied")
                .then_some(())
        },
    );

    // `kubectl run` of an allowed image: admitted, rewritten, the original recorded.
    let output = cluster.kubectl(&["run", "ok1", "-n", "apps", "--image=nginx:1.25"]);
    assert!(output.status.success(), "kubectl run: {}", stderr(&output));
    let created: Value = serde_json::from_str(
        &cluster.kubectl_ok(&["get", "pod", "-n", "apps", "ok1", "-o", "json"]),
    )
    .expect("json");
    assert_eq!(created["spec"]["containers"][0]["image"], rewritten);
    assert_eq!(
        created["metadata"]["annotations"]["berth.dev/original-images"],
        r#"{"ok1":"nginx:1.25"}"#
    );
    // The proxy path written by hand is decided as the upstream image behind it.
    let output = cluster.apply_yaml(&pod("direct", rewritten));
    assert!(output.status.success(), "proxy path: {}", stderr(&output));

    // An image no rule allows is still denied, however it is written.
    let refused = cluster.kubectl(&["run", "bad", "-n", "apps", "--image=quay.io/team/app:1"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            r#"berth denied Pod apps/bad: container "bad" image "quay.io/team/app:1" is denied by rule "defaultAction""#
        ),
        "{}",
        stderr(&refused)
    );
    let refused = cluster.apply_yaml(&pod(
        "evil-host",
        "evil.example/proxy/docker.io/library/nginx:1.25",
    ));
    assert!(!refused.status.success(), "a proxy path on another host");
    assert!(
        stderr(&refused)
            .contains(r#"image "evil.example/proxy/docker.io/library/nginx:1.25" is denied"#),
        "{}",
        stderr(&refused)
    );

    // A forged annotation claiming an allowed original gains nothing.
    for (name, image, denied) in [
        (
            "forged",
            "quay.io/evil/miner:1",
            r#"image "quay.io/evil/miner:1" is denied"#,
        ),
        (
            "forged-proxied",
            "127.0.0.1:5050/proxy/docker.io/evil/miner:1",
            r#"proxied image "docker.io/evil/miner:1" is denied"#,
        ),
    ] {
        let forged = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: apps\n  annotations:\n    berth.dev/original-images: '{{\"main\":\"nginx:1.25\"}}'\nspec:\n  containers:\n    - name: main\n      image: {image}\n"
        );
        let refused = cluster.apply_yaml(&forged);
        assert!(!refused.status.success(), "{name} admitted");
        assert!(
            stderr(&refused).contains(denied),
            "{name}: {}",
            stderr(&refused)
        );
    }
}

/// Several replicas starting at once against a cluster without the Secret end with one Secret, one CA and one token
/// signing key, and every replica serves a certificate from it and holds the key.
#[test]
fn replicas_racing_on_first_start_share_one_secret() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().expect("tempdir");
    cluster.kubectl_ok(&["create", "namespace", "berth-system"]);
    let installed = test_overlay(&work.path().join("overlay"), BASE, "127.0.0.1:9");
    let output = cluster.apply_yaml(&installed);
    assert!(output.status.success(), "install: {}", stderr(&output));
    let kubeconfig = cluster.kubeconfig_for(
        "system:serviceaccount:berth-system:berth",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:berth-system",
        ],
    );
    let replicas: Vec<Berth> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let kubeconfig = kubeconfig.display().to_string();
                scope.spawn(move || {
                    Berth::start(Options {
                        env: vec![("KUBECONFIG".into(), kubeconfig)],
                        extra_args: [
                            "--namespace",
                            "berth-system",
                            "--manage-webhook-certs",
                            "--san",
                            "127.0.0.1",
                        ]
                        .map(String::from)
                        .to_vec(),
                        ..Options::default()
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replica started"))
            .collect()
    });
    let secrets = cluster.kubectl_ok(&["get", "secrets", "-n", "berth-system", "-o", "name"]);
    assert_eq!(
        secrets.lines().filter(|l| l.contains("berth-tls")).count(),
        1,
        "{secrets}"
    );
    let secret = berth_tls_secret(&cluster);
    let ca = String::from_utf8(secret_key(&secret, "ca.crt")).expect("pem");
    let token_key = String::from_utf8(secret_key(&secret, "token.key")).expect("pem");
    assert!(
        token_key.contains("PRIVATE KEY"),
        "the Secret holds no token key"
    );
    for replica in &replicas {
        // Every replica signs berth's tokens with the Secret's key.
        assert_eq!(
            std::fs::read_to_string(replica.cert_dir.join("token.key")).expect("token.key"),
            token_key,
            "a replica has another token key"
        );
        let served = std::fs::read_to_string(replica.cert_dir.join("tls.crt")).expect("tls.crt");
        assert!(
            served.contains(ca.trim()),
            "a replica serves a certificate from another CA"
        );
        // And a client trusting only the Secret's CA reaches it.
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("pem"))
            .build()
            .expect("client");
        let status = client
            .get(format!("{}/v2/", replica.base_url))
            .send()
            .expect("GET /v2/")
            .status();
        assert_eq!(status.as_u16(), 200);
    }
}

const PULL_AUTHORIZATION_POLICY: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: berth-policy
  namespace: berth-system
data:
  policy.yaml: |
    defaultAction: allow
    access:
      anonymous: none
      rules:
        - name: shared-base-images
          repositories: ['shared/.*']
          subjects: ['authenticated']
          actions: [pull]
    rewrites:
      - name: hub-via-node
        match: 'docker\.io/(.+)'
        replace: '127.0.0.1:5050/proxy/docker.io/$1'
"#;

/// A pod in `namespace` running `image` as `service_account` (none: the namespace's `default`).
fn pod_in(namespace: &str, name: &str, image: &str, service_account: Option<&str>) -> String {
    let account = service_account
        .map(|sa| format!("  serviceAccountName: {sa}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{account}  containers:\n    - name: main\n      image: {image}\n"
    )
}

/// Issue 11, pull authorization at admission: with auth on (`--token-review`), the real API server's pods may only
/// name images on berth that their ServiceAccount may pull. A pod in team-b cannot run team-a's image through the
/// node-local address or the Service name; in team-a it can; a pod berth rewrote to the pull-through cache is
/// authorized as what it now pulls (`proxy/…`, which every identity may pull).
#[test]
fn pods_run_from_berth_only_what_their_service_account_may_pull() {
    let cluster = Cluster::start();
    let _berth = install_with_a_proxying_berth(
        &cluster,
        PULL_AUTHORIZATION_POLICY,
        &["team-a", "team-b"],
        &["--token-review"],
    );
    let team_a_image = "127.0.0.1:5050/team-a/app:1";
    // The webhooks are live (and the ConfigMap's access rules in force) once team-b's pod is refused.
    let refused = poll_until(
        Duration::from_secs(30),
        "berth to refuse team-b's pod of team-a's image",
        || {
            let output = dry_run(&cluster, &pod_in("team-b", "thief", team_a_image, None));
            stderr(&output).contains("berth denied").then_some(output)
        },
    );
    assert!(
        stderr(&refused).contains(
            r#"berth denied Pod team-b/thief: container "main" image "127.0.0.1:5050/team-a/app:1": serviceaccount:team-b/default may not pull repository team-a/app from berth (no rule allows it)"#
        ),
        "{}",
        stderr(&refused)
    );
    // Named another way (berth's Service name), by another ServiceAccount of team-b: refused the same.
    let refused = cluster.apply_yaml(&pod_in(
        "team-b",
        "thief-2",
        "berth.berth-system.svc/team-a/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        Some("ci"),
    ));
    assert!(!refused.status.success(), "team-b/ci ran team-a's image");
    assert!(
        stderr(&refused).contains("serviceaccount:team-b/ci may not pull repository team-a/app"),
        "{}",
        stderr(&refused)
    );
    // In team-a (the built-in: a ServiceAccount pulls its own namespace's repositories), and a shared repository
    // the rules open to every identity: admitted.
    for (namespace, name, image) in [
        ("team-a", "own", team_a_image),
        ("team-b", "shared", "127.0.0.1:5050/shared/base:1"),
    ] {
        let output = cluster.apply_yaml(&pod_in(namespace, name, image, None));
        assert!(
            output.status.success(),
            "{namespace}/{name}: {}",
            stderr(&output)
        );
    }
    // A pod of a public image in team-b: berth rewrites it to the pull-through cache, and the rewritten pod is
    // authorized as what it now pulls.
    let output = cluster.apply_yaml(&pod_in("team-b", "public", "busybox:1.36", None));
    assert!(output.status.success(), "rewritten: {}", stderr(&output));
    let created: Value = serde_json::from_str(
        &cluster.kubectl_ok(&["get", "pod", "-n", "team-b", "public", "-o", "json"]),
    )
    .expect("json");
    assert_eq!(
        created["spec"]["containers"][0]["image"],
        "127.0.0.1:5050/proxy/docker.io/library/busybox:1.36"
    );
    // Images of other registries are the image rules' business, not berth's to authorize.
    let output = cluster.apply_yaml(&pod_in("team-b", "elsewhere", "quay.io/team-a/app:1", None));
    assert!(output.status.success(), "elsewhere: {}", stderr(&output));
}
