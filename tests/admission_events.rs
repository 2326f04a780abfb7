//! Admission events through the real kube-apiserver (issue 12): berth installed as in tests/e2e.rs (URL webhooks,
//! its ServiceAccount with the manifests' RBAC, `--watch-pods`), pods created with kubectl, and the events read from
//! berth's event store (`<data-dir>/events/events.db`, opened beside the running berth: SQLite in WAL mode lets a
//! reader in while berth writes).

use std::time::Duration;

use berth::events::sqlite::SqliteStore;
use berth::events::{EventAction, EventQuery, EventStore};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::e2e::{dry_run, install_with_a_proxying_berth, stderr};
use crate::support::{poll_until, Berth};

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
      - name: quay-soon-gone
        action: warn
        images: ['quay\.io/.*']
        message: "quay.io goes away next month"
    rewrites:
      - name: hub-via-cache
        match: 'docker\.io/(.+)'
        replace: '127.0.0.1:5050/proxy/docker.io/$1'
"#;

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: apps\nspec:\n  serviceAccountName: runner\n  containers:\n    - name: main\n      image: {image}\n"
    )
}

/// The events about object `name` (by action), as JSON, once `count` of them are committed.
fn events_of(berth: &Berth, name: &str, count: usize) -> Vec<Value> {
    let path = SqliteStore::path_in(&berth.data_dir);
    poll_until(
        Duration::from_secs(10),
        &format!("{count} events of {name}"),
        || {
            let store = SqliteStore::open(&path).ok()?;
            let events: Vec<Value> = store
                .query(&EventQuery {
                    actions: vec![
                        EventAction::Admitted,
                        EventAction::Denied,
                        EventAction::Warned,
                        EventAction::Mutated,
                    ],
                    limit: 1000,
                    ..Default::default()
                })
                .ok()?
                .into_iter()
                .filter(|stored| {
                    stored
                        .event
                        .admission
                        .as_ref()
                        .is_some_and(|a| a.name == name)
                })
                .filter_map(|stored| serde_json::to_value(stored.event).ok())
                .collect();
            (events.len() >= count).then_some(events)
        },
    )
}

/// Issue 12's test: admitted, denied, warned and mutated pods appear with namespace, ServiceAccount and rule, the
/// user who created them as the actor; and `berth serve --watch-pods` lists the pods with the manifests' RBAC.
#[test]
fn admitted_denied_warned_and_mutated_pods_are_in_the_event_log() {
    let cluster = Cluster::start();
    let berth = install_with_a_proxying_berth(&cluster, POLICY, &["apps"], &["--watch-pods"]);
    poll_until(
        Duration::from_secs(30),
        "berth to refuse a dry-run pod",
        || {
            stderr(&dry_run(&cluster, &pod("probe", "evil.example/x:1")))
                .contains("berth denied")
                .then_some(())
        },
    );
    // The pod watch listed the cluster's pods as berth's ServiceAccount.
    poll_until(
        Duration::from_secs(20),
        "the pod watch's first list",
        || berth.log().contains("pod watch: ").then_some(()),
    );
    assert!(
        !berth.log().contains("retrying with back-off"),
        "{}",
        berth.log()
    );

    // The probes were dry runs, and say so.
    let probes = events_of(&berth, "probe", 1);
    assert!(
        probes.iter().all(|e| e["admission"]["dryRun"] == true),
        "{probes:#?}"
    );

    // Rewritten, then admitted: a `mutated` and an `admitted` event.
    let output = cluster.apply_yaml(&pod("web", "nginx:1.25"));
    assert!(output.status.success(), "{}", stderr(&output));
    let events = events_of(&berth, "web", 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["mutated", "admitted"], "{events:#?}");
    let mutated = &events[0];
    assert!(mutated["admission"].get("dryRun").is_none(), "{mutated}");
    assert_eq!(mutated["actor"]["kind"], "kubernetes");
    assert_eq!(mutated["actor"]["name"], "admin", "the user who created it");
    assert_eq!(mutated["admission"]["namespace"], "apps");
    assert_eq!(mutated["admission"]["kind"], "Pod");
    assert_eq!(mutated["admission"]["operation"], "CREATE");
    assert_eq!(mutated["admission"]["serviceAccount"], "runner");
    assert_eq!(mutated["admission"]["rule"], "hub-via-cache");
    assert_eq!(
        mutated["admission"]["containers"][0],
        serde_json::json!({"name": "main", "image": "nginx:1.25",
            "rewritten": "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25"})
    );
    // /validate saw the rewritten pod.
    assert_eq!(
        events[1]["admission"]["containers"][0]["image"],
        "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25"
    );
    // One review, one uid: the two webhooks' reviews have their own.
    assert!(mutated["requestId"].as_str().is_some_and(|u| !u.is_empty()));
    assert_ne!(mutated["requestId"], events[1]["requestId"]);

    // Denied, with the rule and berth's message.
    let refused = cluster.apply_yaml(&pod("miner", "evil.example/miner:1"));
    assert!(!refused.status.success());
    let events = events_of(&berth, "miner", 1);
    let denied: Vec<&Value> = events.iter().filter(|e| e["action"] == "denied").collect();
    assert_eq!(denied.len(), 1, "{events:#?}");
    assert_eq!(denied[0]["admission"]["rule"], "evil");
    assert_eq!(denied[0]["admission"]["serviceAccount"], "runner");
    assert!(
        denied[0]["result"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("images from evil.example are forbidden")),
        "{}",
        denied[0]
    );

    // Warned: admitted with the rule's warning.
    let output = cluster.apply_yaml(&pod("quay", "quay.io/team/app:1"));
    assert!(output.status.success(), "{}", stderr(&output));
    let events = events_of(&berth, "quay", 1);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["action"], "warned");
    assert_eq!(events[0]["admission"]["rule"], "quay-soon-gone");
    assert!(
        events[0]["admission"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("quay.io goes away next month")),
        "{}",
        events[0]
    );
}
