//! berth installed from manifests/ on a real node, and pods pulled by a real kubelet through `berth node-proxy`.
//!
//! One test, in order: install (tests/node/overlays/install), push from the host through the Service, a pod from
//! the node-local address, a rewrite through the pull-through cache (tests/node/overlays/cache), the failure modes
//! of the README (berth down, an invalid policy, the node proxy restarted during a pull), the README's uninstall,
//! and at the end a machine as it was before.

use super::images::{self, File};
use super::kube::*;
use super::upstream::{ok, skopeo, Forwarder, Upstream};
use super::{Node, NODE_IP, NODE_NAME};
use crate::support::poll_until;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The address the upstream forwarder listens on (tests/node/overlays/cache/config.yaml names it).
const UPSTREAM_PORT: u16 = 5099;
/// The forwarder's pace from the upstream to berth: slow enough that a 24 MiB layer takes seconds.
const UPSTREAM_BYTES_PER_SEC: u64 = 4 << 20;

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The release binary, built now if it is missing or older than the sources (cargo decides; a no-op when fresh).
fn release_berth() -> PathBuf {
    let debug = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    let target = debug
        .parent()
        .and_then(Path::parent)
        .expect("target dir of CARGO_BIN_EXE_berth")
        .to_path_buf();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--bin", "berth"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .status()
        .expect("spawn cargo build --release");
    assert!(status.success(), "cargo build --release --bin berth failed");
    target.join("release/berth")
}

fn kustomize_dir(rel: &str) -> String {
    repo_path(rel).to_string_lossy().into_owned()
}

/// One line per pod of Deployment app: `fields` (jsonpath) of each.
fn app_pods(node: &Node, fields: &str) -> String {
    jsonpath(
        node,
        &["-n", "apps", "get", "pods", "-l", "app=app"],
        &format!("{{range .items[*]}}{fields}{{\"\\n\"}}{{end}}"),
    )
}

/// In an access log (`%a "%r" %s %b %Dms …`), the first answer with `status` to `request` (method and path,
/// any HTTP version): what the line has after the duration (berth: the quoted identity; the node proxy: nothing).
fn answered(log: &str, request: &str, status: &str) -> Option<String> {
    let needle = format!("\"{request} HTTP/");
    log.lines().find_map(|line| {
        let (_, after) = line.split_once(&needle)?;
        let (_, rest) = after.split_once("\" ")?;
        let mut fields = rest.splitn(4, ' ');
        (fields.next()? == status).then(|| fields.nth(2).unwrap_or("").to_string())
    })
}

#[test]
fn berth_installed_from_manifests_serves_a_real_kubelet() {
    let release = release_berth();
    let mut node = Node::start();
    let work = node.work.clone();

    // 1. berth's image from the release binary, in the node's containerd; storage for its volume claim.
    let berth_tar = work.join("berth.tar");
    images::berth_image(
        &work.join("images"),
        &release,
        "berth.test/berth:node",
        &berth_tar,
    );
    node.import(&berth_tar);
    node.host_path_volume("berth-data", 65532, "10Gi");

    // 2. The install.
    let install = kustomize_dir("tests/node/overlays/install");
    node.kubectl_ok(&["apply", "-k", &install]);
    wait_ready(&mut node, NS, "berth-0", Duration::from_secs(120));
    node.wait_for(Duration::from_secs(90), "the node proxy Ready", |n| {
        (jsonpath(
            n,
            &["-n", NS, "get", "daemonset", "berth-node-proxy"],
            "{.status.numberReady}",
        ) == "1")
            .then_some(())
    });
    // berth made its Secret and wrote its CA into both webhook configurations, from inside the cluster.
    use base64::Engine as _;
    let ca = berth_ca(&node);
    assert!(String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE"));
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let bundle = jsonpath(
            &node,
            &["get", kind, "berth"],
            "{.webhooks[0].clientConfig.caBundle}",
        );
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&bundle)
                .ok(),
            Some(ca.clone()),
            "{kind} berth's caBundle is berth's CA"
        );
    }
    let (status, body) = berth_get(&node, "/readyz");
    assert_eq!(status, 200, "berth's /readyz through the Service: {body}");
    // As the manifest says: user 65532, read-only root (seen from the host).
    assert_eq!(
        berth_process(),
        Some((65532, true)),
        "berth's process: (uid, read-only root)"
    );

    // 3. Auth is on by default. A CI job's ServiceAccount pushes from the host through the Service with a token
    //    from `kubectl create token` (built in: a ServiceAccount pushes under its own namespace).
    for ns in ["team-a", "team-b", "apps"] {
        node.kubectl_ok(&["create", "namespace", ns]);
    }
    node.kubectl_ok(&["-n", "team-a", "create", "serviceaccount", "ci"]);
    let ci_token = service_account_token(&node, "team-a", "ci");
    let hello = work.join("hello.tar");
    images::app_image(&work.join("images/hello"), "team-a/app:v1", &[], &hello);
    push_to_berth(&node, &hello, "team-a/app:v1", &format!("ci:{ci_token}"));
    // Nobody pulls it anonymously from the Service.
    let (status, body) = berth_get(&node, "/v2/team-a/app/manifests/v1");
    assert_eq!(status, 401, "an anonymous pull from the Service: {body}");
    assert!(
        body.contains("UNAUTHORIZED"),
        "the spec's error code: {body}"
    );
    // A pod of team-a names the node-local address: admitted (its ServiceAccount pulls its own namespace) and
    // pulled by the kubelet, without credentials, through the node proxy, which authenticates as itself.
    apply(
        &node,
        &pod_yaml(
            "team-a",
            "hello",
            "127.0.0.1:5050/team-a/app:v1",
            "IfNotPresent",
        ),
    );
    wait_running(&mut node, "team-a", "hello", Duration::from_secs(60));
    let proxy_log = node.kubectl_ok(&["-n", NS, "logs", &node_proxy_pod(&node)]);
    // containerd resolves the tag with a HEAD, then fetches by digest.
    assert!(
        answered(&proxy_log, "HEAD /v2/team-a/app/manifests/v1", "200").is_some(),
        "the kubelet's pull went through the node proxy and was answered 200:\n{proxy_log}"
    );
    assert!(
        proxy_log.contains("GET /v2/team-a/app/blobs/sha256:"),
        "the kubelet fetched the layers through the node proxy:\n{proxy_log}"
    );
    // berth's access log names who the pull was authorized as: the node proxy, with the node it runs on.
    let berth_log = node.kubectl_ok(&["-n", NS, "logs", "berth-0"]);
    assert_eq!(
        answered(&berth_log, "HEAD /v2/team-a/app/manifests/v1", "200"),
        Some(format!(
            "\"node-proxy:{NODE_NAME} (serviceaccount:{NS}/berth-node-proxy)\""
        )),
        "berth served the pull to the node proxy of node {NODE_NAME}:\n{berth_log}"
    );
    // A pod of team-b (its default ServiceAccount) naming the same image is refused at admission, and says why.
    node.wait_for(
        Duration::from_secs(30),
        "ServiceAccount team-b/default",
        |n| {
            n.kubectl(&["-n", "team-b", "get", "serviceaccount", "default"])
                .status
                .success()
                .then_some(())
        },
    );
    let refused = apply_refused(
        &node,
        &pod_yaml(
            "team-b",
            "stolen",
            "127.0.0.1:5050/team-a/app:v1",
            "IfNotPresent",
        ),
    );
    assert!(
        refused.contains(
            "serviceaccount:team-b/default may not pull repository team-a/app from berth (no rule allows it)"
        ),
        "the denial names the ServiceAccount, the repository and the reason: {refused}"
    );

    // 4. A rewrite through the pull-through cache: docker.io is a docker-registry on loopback behind a forwarder
    //    on the node's address (pods reach it; 127.0.0.1 would be the pod's own loopback).
    let upstream = Upstream::start(&work);
    let forwarder = Forwarder::start(
        (NODE_IP, UPSTREAM_PORT),
        upstream.host.parse().unwrap(),
        UPSTREAM_BYTES_PER_SEC,
    );
    let app = work.join("app.tar");
    // A layer of its own (not the one team-a/app pushed), so that berth has to fetch it from the upstream.
    let version = work.join("app-version");
    fs::write(&version, "app 1.0\n").unwrap();
    images::app_image(
        &work.join("images/app"),
        "library/app:1.0",
        &[File::new(&version, "/etc/app-version", 0o644)],
        &app,
    );
    let big_file = work.join("big.bin");
    let mut noise = vec![0u8; 24 << 20];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    fs::write(&big_file, &noise).unwrap();
    drop(noise);
    let big = work.join("big.tar");
    images::app_image(
        &work.join("images/big"),
        "library/big:1.0",
        &[File::new(&big_file, "/data/big.bin", 0o644)],
        &big,
    );
    for (archive, reference) in [(&app, "library/app:1.0"), (&big, "library/big:1.0")] {
        let mut cmd = skopeo(&work);
        cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{}/{reference}", upstream.host));
        ok(cmd);
    }
    let cache = kustomize_dir("tests/node/overlays/cache");
    node.kubectl_ok(&["apply", "-k", &cache]);
    // The StatefulSet rolls berth-0 for the new --config; wait for the new pod to be Ready with the config.
    node.wait_for(
        Duration::from_secs(120),
        "berth-0 restarted with --config",
        |n| {
            let args = jsonpath(
                n,
                &["-n", NS, "get", "pod", "berth-0"],
                "{.spec.containers[0].args}",
            );
            let ready = jsonpath(
                n,
                &["-n", NS, "get", "pod", "berth-0"],
                r#"{.status.conditions[?(@.type=="Ready")].status}"#,
            );
            (args.contains("--config=/etc/berth/config.yaml") && ready == "True").then_some(())
        },
    );
    node.wait_for(
        Duration::from_secs(60),
        "berth to load the cache policy",
        |n| {
            let policy = policy_status(n);
            let summary = policy["summary"].as_str().unwrap_or_default();
            (summary.contains("1 rewrites") && policy["lastError"].is_null()).then_some(())
        },
    );
    apply(
        &node,
        &deployment_yaml("apps", "app", "docker.io/library/app:1.0"),
    );
    let app_pod = node.wait_for(
        Duration::from_secs(90),
        "a Running pod of Deployment app",
        |n| {
            let out = app_pods(n, "{.metadata.name} {.status.phase}");
            out.lines()
                .find_map(|l| l.strip_suffix(" Running").map(str::to_string))
        },
    );
    assert_eq!(
        jsonpath(
            &node,
            &["-n", "apps", "get", "pod", &app_pod],
            "{.spec.containers[0].image}"
        ),
        "127.0.0.1:5050/proxy/docker.io/library/app:1.0",
        "the pod runs the rewritten image"
    );
    assert_eq!(
        jsonpath(
            &node,
            &["-n", "apps", "get", "deployment", "app"],
            "{.spec.template.spec.containers[0].image}"
        ),
        "docker.io/library/app:1.0",
        "the Deployment's template is unchanged"
    );
    let proxy_log = node.kubectl_ok(&["-n", NS, "logs", &node_proxy_pod(&node)]);
    assert!(
        proxy_log.contains("/v2/proxy/docker.io/library/app/manifests/1.0 HTTP"),
        "the kubelet pulled the rewritten image through the node proxy:\n{proxy_log}"
    );
    // The image's layer (busybox and a file) came from the upstream, not just the availability check.
    let layers = upstream.layer_bytes("library/app", "1.0");
    assert!(
        forwarder.sent() >= layers,
        "berth fetched the image from the upstream ({} bytes; its layers are {layers})",
        forwarder.sent()
    );

    // 5a. berth down: pods are created, unrewritten (fail open).
    node.kubectl_ok(&["-n", NS, "scale", "statefulset", "berth", "--replicas=0"]);
    // berth drains for up to --shutdown-timeout (25 s): the apiserver keeps an idle HTTP/2 connection to the
    // webhooks open, and an open connection holds the drain until the timeout.
    node.wait_for(Duration::from_secs(120), "berth-0 gone", |n| {
        let out = n.kubectl(&["-n", NS, "get", "pod", "berth-0"]);
        (!out.status.success()).then_some(())
    });
    apply(
        &node,
        &pod_yaml(
            "apps",
            "while-down",
            "docker.io/library/app:1.0",
            "IfNotPresent",
        ),
    );
    assert_eq!(
        jsonpath(
            &node,
            &["-n", "apps", "get", "pod", "while-down"],
            "{.spec.containers[0].image}"
        ),
        "docker.io/library/app:1.0",
        "created while berth was down: admitted unrewritten"
    );
    node.kubectl_ok(&[
        "-n",
        "apps",
        "delete",
        "pod",
        "while-down",
        "--force",
        "--grace-period=0",
    ]);
    node.kubectl_ok(&["-n", NS, "scale", "statefulset", "berth", "--replicas=1"]);
    wait_ready(&mut node, NS, "berth-0", Duration::from_secs(120));
    // Its content survived in the volume: the image pushed in step 3 is still there.
    node.wait_for(
        Duration::from_secs(30),
        "berth back with its content",
        |n| {
            let basic = Some(("ci", ci_token.as_str()));
            (berth_get_as(n, "/v2/team-a/app/tags/list", basic).0 == 200).then_some(())
        },
    );

    // 5b. An invalid policy: reported, and the last good one stays in force.
    apply(
        &node,
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: berth-policy
  namespace: berth-system
data:
  policy.yaml: |
    mode: enforce
    defaultAction: allow
    rewrites:
      - name: broken
        match: '(unclosed'
        replace: 'x'
",
    );
    let why = node.wait_for(
        Duration::from_secs(60),
        "berth to report the invalid policy",
        |n| policy_status(n)["lastError"].as_str().map(str::to_string),
    );
    assert!(why.contains("broken"), "the error names the rule: {why}");
    apply(
        &node,
        &pod_yaml(
            "apps",
            "after-invalid",
            "docker.io/library/app:1.0",
            "IfNotPresent",
        ),
    );
    assert_eq!(
        jsonpath(
            &node,
            &["-n", "apps", "get", "pod", "after-invalid"],
            "{.spec.containers[0].image}"
        ),
        "127.0.0.1:5050/proxy/docker.io/library/app:1.0",
        "the last good policy still rewrites"
    );
    wait_running(&mut node, "apps", "after-invalid", Duration::from_secs(60));
    node.kubectl_ok(&["apply", "-k", &cache]);

    // 5c. The node proxy restarted while the kubelet pulls a 24 MiB layer (paced by the forwarder).
    let first_proxy = node_proxy_pod(&node);
    let before = forwarder.sent();
    apply(
        &node,
        &pod_yaml("apps", "big", "docker.io/library/big:1.0", "IfNotPresent"),
    );
    poll_until(
        Duration::from_secs(60),
        "the big layer's pull under way",
        || (forwarder.sent() > before + (4 << 20)).then_some(()),
    );
    node.kubectl_ok(&[
        "-n",
        NS,
        "delete",
        "pod",
        &first_proxy,
        "--grace-period=1",
        "--wait=false",
    ]);
    wait_running(&mut node, "apps", "big", Duration::from_secs(180));
    let second_proxy = node_proxy_pod(&node);
    assert_ne!(
        first_proxy, second_proxy,
        "the DaemonSet replaced the node proxy"
    );
    // The cut pull failed and the kubelet pulled again through the new proxy.
    let failed = jsonpath(
        &node,
        &[
            "-n",
            "apps",
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=big,reason=Failed",
        ],
        "{.items[*].message}",
    );
    assert!(
        failed.contains("Failed to pull image \"127.0.0.1:5050/proxy/docker.io/library/big:1.0\""),
        "the kubelet's pull was cut by the restart: {failed}"
    );
    let second_log = node.kubectl_ok(&["-n", NS, "logs", &second_proxy]);
    assert!(
        second_log.contains("GET /v2/proxy/docker.io/library/big/blobs/sha256:"),
        "the retried pull went through the new node proxy:\n{second_log}"
    );

    // 6. Uninstall as the README says: the mutating webhook first, restart the workloads, then the rest.
    node.kubectl_ok(&["delete", "mutatingwebhookconfiguration", "berth"]);
    node.kubectl_ok(&["-n", "apps", "rollout", "restart", "deployment", "app"]);
    node.wait_for(
        Duration::from_secs(60),
        "a pod of Deployment app with the original image",
        |n| {
            let images = app_pods(n, "{.spec.containers[0].image}");
            images
                .lines()
                .any(|i| i == "docker.io/library/app:1.0")
                .then_some(())
        },
    );
    node.kubectl_ok(&["delete", "-k", &cache, "--ignore-not-found", "--wait=false"]);
    node.wait_for(
        Duration::from_secs(120),
        "namespace berth-system gone",
        |n| (!n.kubectl(&["get", "namespace", NS]).status.success()).then_some(()),
    );
    for (kind, name) in [
        ("validatingwebhookconfiguration", "berth"),
        ("clusterrole", "berth-webhook-ca"),
        ("clusterrolebinding", "berth-webhook-ca"),
    ] {
        let out = node.kubectl(&["get", kind, name]);
        assert!(
            !out.status.success(),
            "{kind} {name} is left after the uninstall"
        );
    }
    // Left behind, as the README says: the volume (Retain) with the images, and running pods keep running.
    node.wait_for(Duration::from_secs(60), "the volume Released", |n| {
        (jsonpath(n, &["get", "pv", "berth-data"], "{.status.phase}") == "Released").then_some(())
    });
    let tag = work.join("volumes/berth-data/repositories/team-a/app/_tags/v1");
    assert!(
        tag.is_file(),
        "the images are still in the volume ({})",
        tag.display()
    );
    assert_eq!(pod_phase(&node, "team-a", "hello"), "Running");
    // A new pod of an image cached on the node starts; one whose image the node never pulled cannot.
    apply(
        &node,
        &pod_yaml(
            "apps",
            "cached",
            "127.0.0.1:5050/team-a/app:v1",
            "IfNotPresent",
        ),
    );
    wait_running(&mut node, "apps", "cached", Duration::from_secs(60));
    apply(
        &node,
        &pod_yaml(
            "apps",
            "uncached",
            "127.0.0.1:5050/team-a/never:v1",
            "IfNotPresent",
        ),
    );
    node.wait_for(
        Duration::from_secs(60),
        "the kubelet's failed pull of pod uncached",
        |n| {
            let failed = jsonpath(
                n,
                &[
                    "-n",
                    "apps",
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=uncached,reason=Failed",
                ],
                "{.items[*].message}",
            );
            failed
                .contains("127.0.0.1:5050/team-a/never:v1")
                .then_some(())
        },
    );

    drop(forwarder);
    drop(upstream);
    let left = node.stop();
    assert!(
        left.is_empty(),
        "the node left the machine changed: {left:#?}"
    );
}
