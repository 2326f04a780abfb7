//! The pod watch against a real kube-apiserver (tests/cluster.rs): `berth::cluster::pods::watch` runs in the test
//! with the manifests' RBAC for berth's ServiceAccount and nothing more, pods are created, bound and given a status
//! with kubectl (there is no scheduler nor kubelet: pods stay Pending until their status is patched), and the
//! running-images snapshot is polled until it shows what runs where.

use std::sync::Arc;
use std::time::Duration;

use berth::admission::scope::Scope;
use berth::admission::source::ActivePolicy;
use berth::admission::PolicyStore;
use berth::cluster::running::{RunningContainer, RunningImages};

use crate::cluster::Cluster;
use crate::manifests::{documents, render, BASE};
use crate::support::poll_until;

const DIGEST: &str = "sha256:5f2e8c4a1b3d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

/// How long the watch may take to see a change.
const SEEN_WITHIN: Duration = Duration::from_secs(20);

fn pod_yaml(name: &str, node: Option<&str>, image: &str) -> String {
    let node = node.map_or(String::new(), |n| format!("  nodeName: {n}\n"));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: team-a\nspec:\n{node}  serviceAccountName: runner\n  initContainers:\n    - name: init\n      image: busybox:1.36\n  containers:\n    - name: main\n      image: {image}\n"
    )
}

/// The test cluster with the manifests' pod-watch role and binding (exactly as shipped) and a namespace `team-a`,
/// and a kubeconfig for berth's ServiceAccount with nothing more: what `berth serve --watch-pods` runs as.
pub(crate) fn cluster_as_berth_watching_team_a() -> (Cluster, std::path::PathBuf) {
    let cluster = Cluster::start();
    for doc in documents(&render(BASE)) {
        if doc["metadata"]["name"] == "berth-pod-watch" {
            let output = cluster.apply_yaml(&doc.to_string());
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    cluster.kubectl_ok(&["create", "namespace", "team-a"]);
    let kubeconfig = cluster.kubeconfig_for(
        "system:serviceaccount:berth-system:berth",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:berth-system",
        ],
    );
    (cluster, kubeconfig)
}

/// The containers of `pod` in the snapshot, if it has any.
fn containers_of(running: &RunningImages, pod: &str) -> Vec<RunningContainer> {
    running
        .snapshot()
        .containers
        .iter()
        .filter(|c| c.namespace == "team-a" && c.pod == pod)
        .cloned()
        .collect()
}

/// Issue 12 ("what runs, and what is out of date"): with only the ClusterRole the manifests give berth, the watch
/// sees every container and init container with its node, ServiceAccount, berth's repository and tag, and the
/// digest the status reports (else the spec's); a finished pod and a deleted one are no longer running.
#[test]
fn the_pod_watch_shows_what_runs_where() {
    let (cluster, kubeconfig) = cluster_as_berth_watching_team_a();

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let running = Arc::new(RunningImages::new());
    let client = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        kube::Client::try_from(config).expect("client")
    });
    let watch = runtime.spawn(berth::cluster::pods::watch(
        client,
        running.clone(),
        Arc::new(Scope::new("berth-system")),
        Arc::new(PolicyStore::new(ActivePolicy::builtin_default())),
    ));

    // A pod created on a node, its status then reporting the digest that runs.
    let output = cluster.apply_yaml(&pod_yaml(
        "web",
        Some("node-1"),
        "127.0.0.1:5050/team-a/app:1.0",
    ));
    assert!(output.status.success(), "{output:?}");
    let status = format!(
        r#"{{"status":{{"phase":"Running","containerStatuses":[{{"name":"main","image":"127.0.0.1:5050/team-a/app:1.0","imageID":"127.0.0.1:5050/team-a/app@{DIGEST}","ready":true,"restartCount":0,"state":{{"running":{{}}}}}}]}}}}"#
    );
    cluster.kubectl_ok(&[
        "patch",
        "pod",
        "web",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    let web = poll_until(SEEN_WITHIN, "web running with its digest", || {
        let containers = containers_of(&running, "web");
        containers
            .iter()
            .any(|c| c.container == "main" && c.digest.is_some())
            .then_some(containers)
    });
    assert!(running.snapshot().watching);
    let main = web.iter().find(|c| c.container == "main").expect("main");
    assert_eq!(main.node.as_deref(), Some("node-1"));
    assert_eq!(main.service_account, "runner");
    assert_eq!(main.image, "127.0.0.1:5050/team-a/app:1.0");
    assert_eq!(main.repository.as_deref(), Some("team-a/app"));
    assert_eq!(main.tag.as_deref(), Some("1.0"));
    assert_eq!(main.digest.as_deref(), Some(DIGEST));
    let init = web.iter().find(|c| c.container == "init").expect("init");
    assert_eq!(init.image, "busybox:1.36");
    assert_eq!(init.repository, None, "not berth's image");
    assert_eq!(web.len(), 2, "{web:?}");

    // A pod pinned by digest, created unscheduled, then bound to a node (pods/binding, as a scheduler does).
    let pinned = format!("berth.berth-system.svc/team-a/tool@{DIGEST}");
    let output = cluster.apply_yaml(&pod_yaml("tool", None, &pinned));
    assert!(output.status.success(), "{output:?}");
    let tool = poll_until(SEEN_WITHIN, "the tool pod", || {
        let containers = containers_of(&running, "tool");
        (!containers.is_empty()).then_some(containers)
    });
    let main = tool.iter().find(|c| c.container == "main").expect("main");
    assert_eq!(main.node, None, "not scheduled yet");
    assert_eq!(main.repository.as_deref(), Some("team-a/tool"));
    assert_eq!(main.tag, None);
    assert_eq!(main.digest.as_deref(), Some(DIGEST), "the spec's digest");
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"tool","namespace":"team-a"},"target":{"apiVersion":"v1","kind":"Node","name":"node-2"}}"#;
    let output = cluster.kubectl_as(&cluster.kubeconfig, &["create", "-f", "-"], Some(binding));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    poll_until(SEEN_WITHIN, "the tool pod on node-2", || {
        containers_of(&running, "tool")
            .iter()
            .all(|c| c.node.as_deref() == Some("node-2"))
            .then_some(())
    });

    // A finished pod runs nothing; a deleted one is gone.
    cluster.kubectl_ok(&[
        "patch",
        "pod",
        "tool",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    poll_until(SEEN_WITHIN, "the finished pod to leave", || {
        containers_of(&running, "tool").is_empty().then_some(())
    });
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "web",
        "-n",
        "team-a",
        "--grace-period=0",
        "--force",
    ]);
    poll_until(SEEN_WITHIN, "the deleted pod to leave", || {
        containers_of(&running, "web").is_empty().then_some(())
    });
    assert!(
        running.snapshot().containers.is_empty(),
        "{:?}",
        running.snapshot().containers
    );
    watch.abort();
}
