//! Asking the cluster and the installed berth: kubectl's jsonpath, pods' phases, berth through its Service (the
//! name verified with the CA from berth's Secret), berth's process as the host sees it.

use super::upstream::{ok, skopeo};
use super::Node;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const NS: &str = "berth-system";
pub const SERVICE_NAME: &str = "berth.berth-system.svc";

/// berth's `/readyz` report of its policy, through the Service.
pub fn policy_status(node: &Node) -> serde_json::Value {
    let (_, body) = berth_get(node, "/readyz");
    serde_json::from_str::<serde_json::Value>(&body)
        .map(|v| v["policy"].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// The ClusterIP of the Service berth.
pub fn cluster_ip(node: &Node) -> std::net::IpAddr {
    let ip = jsonpath(
        node,
        &["-n", NS, "get", "service", "berth"],
        "{.spec.clusterIP}",
    );
    ip.parse()
        .unwrap_or_else(|_| panic!("the Service berth has no ClusterIP: {ip:?}"))
}

/// Pushes `archive` to berth through its Service, as a host that resolves the Service name would: skopeo runs
/// in a private mount namespace whose /etc/hosts maps berth.berth-system.svc to the ClusterIP (the machine's
/// /etc/hosts is not touched), verifies berth's certificate with the CA from berth's Secret, and logs in with
/// `creds` (`user:password`; a ServiceAccount token is the password) through berth's token flow.
pub fn push_to_berth(node: &Node, archive: &Path, reference: &str, creds: &str) {
    let ip = cluster_ip(node);
    let hosts = node.work.join("hosts");
    fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{ip} {SERVICE_NAME}\n"),
    )
    .unwrap();
    let certs = node.work.join("berth-ca");
    fs::create_dir_all(&certs).unwrap();
    fs::write(certs.join("ca.crt"), berth_ca(node)).unwrap();
    let skopeo = skopeo(&node.work);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(&hosts)
        .arg(skopeo.get_program());
    for (k, v) in skopeo.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.args(["copy", "--insecure-policy", "--dest-cert-dir"])
        .arg(&certs)
        .arg("--dest-creds")
        .arg(creds)
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{SERVICE_NAME}:443/{reference}"));
    ok(cmd);
}

pub fn berth_ca(node: &Node) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = node.kubectl_ok(&[
        "-n",
        NS,
        "get",
        "secret",
        "berth-tls",
        "-o",
        r"jsonpath={.data.ca\.crt}",
    ]);
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("ca.crt of berth-tls is base64")
}

/// A token of ServiceAccount `namespace/name` for audience berth, as a CI job gets one (`kubectl create token`).
pub fn service_account_token(node: &Node, namespace: &str, name: &str) -> String {
    let token = node.kubectl_ok(&[
        "-n",
        namespace,
        "create",
        "token",
        name,
        "--audience",
        "berth",
    ]);
    let token = token.trim().to_string();
    assert!(
        token.split('.').count() == 3,
        "kubectl create token printed a JWT: {token:?}"
    );
    token
}

/// GET on berth through its Service (name verified with berth's CA), anonymously.
pub fn berth_get(node: &Node, path: &str) -> (u16, String) {
    berth_get_as(node, path, None)
}

/// GET on berth through its Service with Basic credentials `(user, password)`, or none.
pub fn berth_get_as(node: &Node, path: &str, basic: Option<(&str, &str)>) -> (u16, String) {
    let ip = cluster_ip(node);
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&berth_ca(node)).expect("CA"))
        .resolve(SERVICE_NAME, (ip, 443).into())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut request = client.get(format!("https://{SERVICE_NAME}{path}"));
    if let Some((user, password)) = basic {
        request = request.basic_auth(user, Some(password));
    }
    match request.send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

pub fn jsonpath(node: &Node, args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    let p = format!("jsonpath={path}");
    all.extend(["-o", &p]);
    let out = node.kubectl(&all);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn pod_phase(node: &Node, ns: &str, pod: &str) -> String {
    jsonpath(node, &["-n", ns, "get", "pod", pod], "{.status.phase}")
}

pub fn wait_running(node: &mut Node, ns: &str, pod: &str, deadline: Duration) {
    let (ns, pod) = (ns.to_string(), pod.to_string());
    node.wait_for(deadline, &format!("pod {ns}/{pod} Running"), |n| {
        (pod_phase(n, &ns, &pod) == "Running").then_some(())
    });
}

pub fn wait_ready(node: &mut Node, ns: &str, pod: &str, deadline: Duration) {
    let (ns, pod) = (ns.to_string(), pod.to_string());
    node.wait_for(deadline, &format!("pod {ns}/{pod} Ready"), |n| {
        (jsonpath(
            n,
            &["-n", &ns, "get", "pod", &pod],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        ) == "True")
            .then_some(())
    });
}

/// The node proxy's pod that is not being deleted.
pub fn node_proxy_pod(node: &Node) -> String {
    let pods = jsonpath(
        node,
        &[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=node-proxy",
        ],
        r#"{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}"#,
    );
    pods.lines()
        .find(|l| l.split(' ').nth(1).unwrap_or("").is_empty())
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The host's view of berth's container process: its uid and whether its root file system is read-only.
pub fn berth_process() -> Option<(u32, bool)> {
    let pid = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.starts_with(b"/berth\0serve\0"))
                .unwrap_or(false)
        })?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    let read_only = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 5 && f[4] == "/" && f[5].split(',').any(|o| o == "ro")
    });
    Some((uid, read_only))
}

pub fn apply(node: &Node, yaml: &str) {
    let out = node.cluster().apply_yaml(yaml);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies `yaml`, which the cluster must refuse; kubectl's stderr (the reason).
pub fn apply_refused(node: &Node, yaml: &str) -> String {
    let out = node.cluster().apply_yaml(yaml);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "kubectl apply succeeded, the cluster should have refused:\n{yaml}"
    );
    stderr
}

/// The spec of the test's pods (one container `app`, non-root), indented by `indent` spaces.
fn pod_spec(image: &str, pull: &str, indent: usize) -> String {
    let spec = format!(
        "terminationGracePeriodSeconds: 0
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
containers:
  - name: app
    image: {image}
    imagePullPolicy: {pull}
"
    );
    spec.lines()
        .map(|l| format!("{:indent$}{l}\n", ""))
        .collect()
}

pub fn pod_yaml(ns: &str, name: &str, image: &str, pull: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
spec:
{}",
        pod_spec(image, pull, 2)
    )
}

/// A Deployment `name` of one replica whose pods are [`pod_yaml`]'s.
pub fn deployment_yaml(ns: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{}",
        pod_spec(image, "IfNotPresent", 6)
    )
}
