//! "What runs, and what is out of date" end to end (issue 12): a real `berth serve --watch-pods` (auth off, TLS
//! with berth's own CA) watches a real kube-apiserver (tests/cluster.rs) as its ServiceAccount with the manifests'
//! pod-watch RBAC; images are pushed over HTTP, a pod naming one is created, bound to a node and given a status
//! with the pushed digest (no scheduler, no kubelet), and the real `berth images [--outdated]` binary is run until
//! it reports what the registry and the pod say.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{poll_until, Berth, Options};

/// The node-local spelling of berth's images, which the pod watch maps back to berth's repositories.
const IMAGE: &str = "127.0.0.1:5050/team-a/app:v1.0.0";
/// How long the pod watch and the report may take to see a change.
const SEEN_WITHIN: Duration = Duration::from_secs(20);

/// Pushes a one-blob image whose config says `version`, as `repository:tag`, and returns its digest.
fn push(berth: &Berth, repository: &str, tag: &str, version: &str) -> String {
    let config =
        serde_json::to_vec(&json!({"os": "linux", "config": {"Labels": {"version": version}}}))
            .expect("json");
    crate::events_cli::push_image(berth, repository, tag, &config, None)
}

/// `berth images <args> --server … --ca-file …`, the real binary; its stdout (it must succeed).
fn berth_images(berth: &Berth, args: &[&str]) -> String {
    let ca = berth.ca_file().display().to_string();
    let output: Output = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("images")
        .args(args)
        .args(["--server", &berth.base_url, "--ca-file", &ca])
        .env("RUST_LOG", "warn")
        .output()
        .expect("running berth images");
    assert!(
        output.status.success(),
        "berth images {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    // The session the README shows (the CA's temporary path shortened).
    let mut shown = vec!["berth", "images"];
    shown.extend(args);
    shown.extend(["--server", &berth.base_url, "--ca-file", "certs/ca.crt"]);
    println!("$ {}\n{stdout}", shown.join(" "));
    stdout
}

/// The `--outdated --output json` lines about pod `web`.
fn outdated_web(berth: &Berth) -> Vec<Value> {
    berth_images(berth, &["--outdated", "--output", "json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|o| o["namespace"] == "team-a" && o["pod"] == "web")
        .collect()
}

/// The reasons of one outdated entry, as (kind, tag, digest).
fn reasons(outdated: &Value) -> Vec<(String, String, String)> {
    outdated["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| {
                    let text = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                    (text("kind"), text("tag"), text("digest"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 12's test: after a new digest is pushed to a running pod's tag, `berth images --outdated` lists that
/// pod ("tag moved", naming the new digest), and a newer version tag is reported too; `berth images` shows the
/// pod running the digest it runs.
#[test]
fn a_moved_tag_and_a_newer_version_make_a_running_pod_outdated() {
    let (cluster, kubeconfig) = crate::pod_watch::cluster_as_berth_watching_team_a();
    let berth = Berth::start(Options {
        env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
        extra_args: vec!["--watch-pods".into()],
        ..Options::default()
    });
    let first = push(&berth, "team-a/app", "v1.0.0", "1.0.0");

    // A pod on node-1 running the pushed digest.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team-a\nspec:\n  serviceAccountName: runner\n  containers:\n    - name: main\n      image: {IMAGE}\n"
    );
    let output = cluster.apply_yaml(&pod);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web","namespace":"team-a"},"target":{"apiVersion":"v1","kind":"Node","name":"node-1"}}"#;
    let output = cluster.kubectl_as(&cluster.kubeconfig, &["create", "-f", "-"], Some(binding));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = format!(
        r#"{{"status":{{"phase":"Running","containerStatuses":[{{"name":"main","image":"{IMAGE}","imageID":"127.0.0.1:5050/team-a/app@{first}","ready":true,"restartCount":0,"state":{{"running":{{}}}}}}]}}}}"#
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

    // `berth images` names the pod beside the digest it runs, once the watch has seen it.
    let short = &first[..19];
    let row = poll_until(SEEN_WITHIN, "berth images to show team-a/web", || {
        berth_images(&berth, &[])
            .lines()
            .find(|l| l.starts_with("team-a/app:v1.0.0 ") && l.ends_with(" team-a/web"))
            .map(str::to_owned)
    });
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], short, "{row}");
    let images: Vec<Value> = berth_images(&berth, &["--output", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["digest"], first.as_str());
    assert_eq!(
        images[0]["running"],
        json!([{"namespace": "team-a", "pod": "web", "container": "main", "node": "node-1"}])
    );

    // Up to date: nothing listed, and the table says how much was checked.
    assert_eq!(outdated_web(&berth), Vec::<Value>::new());
    let table = berth_images(&berth, &["--outdated"]);
    assert_eq!(
        table.trim_end(),
        "nothing that runs is out of date (1 container of berth's images checked)",
        "{table}"
    );

    // A new digest pushed to the tag the pod runs: "tag moved", naming the new digest.
    let second = push(&berth, "team-a/app", "v1.0.0", "1.0.0-rebuilt");
    assert_ne!(first, second);
    let listed = poll_until(SEEN_WITHIN, "team-a/web outdated by the moved tag", || {
        let found = outdated_web(&berth);
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["container"], "main");
    assert_eq!(listed[0]["node"], "node-1");
    assert_eq!(listed[0]["image"], IMAGE);
    assert_eq!(listed[0]["digest"], first.as_str(), "the digest that runs");
    assert_eq!(
        reasons(&listed[0]),
        [("tag-moved".into(), "v1.0.0".into(), second.clone())]
    );
    let table = berth_images(&berth, &["--outdated"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NAMESPACE/POD "), "{table}");
    assert!(
        lines[1].starts_with("team-a/web ")
            && lines[1].contains(&format!(" {short} "))
            && lines[1].contains(&format!("tag v1.0.0 now points at {}", &second[..19])),
        "{table}"
    );

    // A newer version tag: reported as well, after the moved tag.
    let newer = push(&berth, "team-a/app", "v1.1.0", "1.1.0");
    let listed = poll_until(SEEN_WITHIN, "team-a/web outdated by v1.1.0 too", || {
        let found = outdated_web(&berth);
        found
            .first()
            .is_some_and(|o| reasons(o).len() == 2)
            .then_some(found)
    });
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        reasons(&listed[0]),
        [
            ("tag-moved".into(), "v1.0.0".into(), second.clone()),
            ("newer-version".into(), "v1.1.0".into(), newer.clone()),
        ]
    );
    let table = berth_images(&berth, &["--outdated"]);
    assert!(
        table.contains(&format!("newer version v1.1.0 ({})", &newer[..19])),
        "{table}"
    );
}
