//! The event log (issue 12) proven with real clients: docker pushes, skopeo, podman and containerd's `ctr` pull, each
//! as a different htpasswd user, and a real `berth node-proxy` (its own ServiceAccount token, checked by berth through
//! TokenReview against a real kube-apiserver, and `--node-name`) pulls for ctr. `/berth/v1/events` and
//! `/berth/v1/images`, read as the admin `ops`, must show exactly those actors, counts and nodes.
//!
//! A client may GET a manifest more than once for one pull; a pull event is a `GET` of a manifest answered 200, so
//! each client's expected count is fixed below from what these clients do against a single-manifest image, and
//! checked against berth's own access log (which names the identity of every request) as well.
//!
//! Must not: share a berth, a daemon or a cluster with another test, or depend on the machine's client configuration.

use std::time::Duration;

use serde_json::Value;

use crate::auth_clients::{
    assert_no_server_errors, assert_ok, berth_with_auth, creds, podman_login, pushed_digest,
    CLIENT_TIMEOUT,
};
use crate::clients::{ok, run, ClientEnv, Containerd};
use crate::cluster::Cluster;
use crate::docker::Docker;
use crate::node_proxy::NodeProxy;
use crate::support::{poll_until, write_file, Berth, Options};

const ALICE: (&str, &str) = ("alice", "alice-s3cret");
const BOB: (&str, &str) = ("bob", "bob-s3cret");
const OPS: (&str, &str) = ("ops", "ops-s3cret");

/// alice pushes and pulls team-a, bob only pulls it, the node proxy pulls everything, ops is the admin.
const POLICY: &str = r#"access:
  anonymous: none
  admins: ['user:ops']
  rules:
    - name: alice-team-a
      repositories: ['team-a/.*']
      subjects: ['user:alice']
      actions: [pull, push]
    - name: bob-reads-team-a
      repositories: ['team-a/.*']
      subjects: ['user:bob']
      actions: [pull]
    - name: nodes-pull
      repositories: ['.*']
      subjects: ['node-proxy']
      actions: [pull]
"#;

/// The subject of an event's `actor` as filters spell it (`user:alice`, `node-proxy:node-1`).
fn subject(actor: &Value) -> String {
    let name = actor["name"].as_str().unwrap_or_default();
    match actor["kind"].as_str().unwrap_or_default() {
        "user" => format!("user:{name}"),
        "node-proxy" => format!("node-proxy:{}", actor["node"].as_str().unwrap_or_default()),
        other => format!("{other}:{name}"),
    }
}

/// GET `path` of berth's read API as ops (Basic), which must answer 200 with JSON.
fn read_api(berth: &Berth, path: &str) -> Value {
    let response = berth
        .client()
        .get(format!("{}{path}", berth.base_url))
        .basic_auth(OPS.0, Some(OPS.1))
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(response.status(), 200, "GET {path}");
    response
        .json()
        .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
}

/// Waits until everything berth recorded before now is in the store: a refused login (an `auth-failed` event,
/// queued after every earlier event) is sent and polled for; `markers` is how many were sent before.
fn settle(berth: &Berth, markers: usize) {
    let refused = berth
        .client()
        .get(format!("{}/v2/team-a/app/manifests/1.0", berth.base_url))
        .basic_auth("nobody", Some("wrong"))
        .send()
        .expect("marker request");
    assert_eq!(refused.status(), 401);
    poll_until(
        Duration::from_secs(20),
        "the marker auth-failed event",
        || {
            let events = read_api(berth, "/berth/v1/events?action=auth-failed&limit=1000");
            let n = events["events"].as_array().map_or(0, Vec::len);
            (n > markers).then_some(())
        },
    );
}

/// Pull events of team-a/app, as (actor subject, digest, tag or "").
fn pull_events(berth: &Berth) -> Vec<(String, String, String)> {
    let page = read_api(
        berth,
        "/berth/v1/events?action=pull&repository=team-a/app&limit=1000",
    );
    assert!(page["next"].is_null(), "more than one page: {page}");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                subject(&e["actor"]),
                e["target"]["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["target"]["tag"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// How many `GET`s of team-a/app's manifests berth's access log shows answered 200 to `subject` (the log's last
/// field is the identity: the subject, for the node proxy followed by its ServiceAccount in parentheses).
fn logged_manifest_gets(berth: &Berth, subject: &str) -> usize {
    let with_account = format!("{subject} (");
    berth
        .log()
        .lines()
        .filter(|line| line.contains("middleware::logger"))
        .filter(|line| line.contains("\"GET /v2/team-a/app/manifests/"))
        .filter(|line| line.contains("HTTP/1.1\" 200 ") || line.contains("HTTP/2.0\" 200 "))
        .filter(|line| {
            let identity = line
                .trim_end()
                .strip_suffix('"')
                .and_then(|rest| rest.rsplit_once('"'))
                .map_or("", |(_, identity)| identity);
            identity == subject || identity.starts_with(&with_account)
        })
        .count()
}

/// Pulls per actor, in the order first seen.
fn count_by_actor(pulls: &[(String, String, String)]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (actor, _, _) in pulls {
        match counts.iter_mut().find(|(a, _)| a == actor) {
            Some((_, n)) => *n += 1,
            None => counts.push((actor.clone(), 1)),
        }
    }
    counts
}

/// The images report's row for team-a/app:1.0.
fn image_row(berth: &Berth) -> Value {
    let report = read_api(berth, "/berth/v1/images?repository=team-a/app");
    let rows = report["images"].as_array().expect("images");
    assert_eq!(rows.len(), 1, "{report}");
    rows[0].clone()
}

#[test]
fn docker_skopeo_podman_ctr_and_the_node_proxy_show_in_the_events_and_the_images_report() {
    let cluster = Cluster::start();
    cluster.kubectl_ok(&["create", "namespace", "berth-system"]);
    cluster.kubectl_ok(&[
        "create",
        "serviceaccount",
        "berth-node-proxy",
        "-n",
        "berth-system",
    ]);
    let node_token = cluster.create_token("berth-system", "berth-node-proxy", "berth");

    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        extra_args: vec!["--token-review".into()],
        env: vec![(
            "KUBECONFIG".into(),
            cluster.kubeconfig.display().to_string(),
        )],
        ..Options::default()
    };
    let berth = berth_with_auth(dir.path(), &[ALICE, BOB, OPS], POLICY, opts);
    let host = berth.host.clone();
    let image = format!("{host}/team-a/app:1.0");

    // docker push as alice (docker takes 127.0.0.1 for an insecure registry: TLS without verification; the
    // other clients verify berth's CA).
    let docker = Docker::start();
    assert_ok(&docker.login(&host, ALICE.0, ALICE.1));
    docker.import_busybox(&image);
    let digest = pushed_digest(&docker.ok(&["push", &image]));

    // skopeo copy (a pull) as bob.
    let skopeo = ClientEnv::new(&berth);
    let layout = skopeo.path().join("copied");
    assert_ok(&run(
        skopeo.skopeo_copy(
            &["--src-creds", &creds(BOB)],
            &format!("docker://{image}"),
            &format!("oci:{}:x", layout.display()),
        ),
        CLIENT_TIMEOUT,
    ));

    // podman pull as alice.
    let podman = ClientEnv::new(&berth);
    assert_ok(&podman_login(&podman, &host, ALICE));
    ok(podman.reg_cmd("podman", &["pull"], &["-q", &image]));

    // ctr pull as bob (--user), berth's CA in a hosts directory.
    let daemon = Containerd::start();
    let hosts = daemon.dir.path().join("hosts.d");
    write_file(
        hosts.join(&host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
            ca = berth.ca_file().display()
        ),
    );
    let hosts_dir = hosts.to_str().expect("utf-8 path");
    let bob = creds(BOB);
    assert_ok(&run(
        daemon.ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts_dir,
            "--user",
            &bob,
            &image,
        ]),
        CLIENT_TIMEOUT,
    ));
    assert_eq!(daemon.listed_digest(&image), Some(digest.clone()));

    settle(&berth, 0);
    let pushes = read_api(&berth, "/berth/v1/events?action=push&repository=team-a/app");
    let pushes = pushes["events"].as_array().expect("events");
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(subject(&pushes[0]["actor"]), "user:alice");
    assert_eq!(pushes[0]["target"]["tag"], "1.0");
    assert_eq!(pushes[0]["target"]["digest"], digest.as_str());

    // Each client GETs the (single, docker schema 2) manifest exactly once: skopeo and podman by tag; ctr resolves
    // the tag with a HEAD (no pull event) and then GETs the manifest by digest. docker's push only HEADs and PUTs.
    // So bob 2 (skopeo, ctr), alice 1 (podman).
    let pulls = pull_events(&berth);
    assert!(
        pulls.iter().all(|(_, d, _)| *d == digest),
        "a pull of another digest: {pulls:?}"
    );
    let expected = [("user:bob", 2), ("user:alice", 1)];
    let counted = count_by_actor(&pulls);
    let expected: Vec<(String, usize)> =
        expected.iter().map(|(a, n)| (a.to_string(), *n)).collect();
    assert_eq!(counted, expected, "{pulls:?}");
    for (actor, n) in &expected {
        assert_eq!(
            logged_manifest_gets(&berth, actor),
            *n,
            "the access log of {actor}:\n{}",
            berth.log()
        );
    }
    // The order: skopeo (bob), podman (alice), ctr (bob).
    let order: Vec<(&str, &str)> = pulls
        .iter()
        .map(|(a, _, tag)| (a.as_str(), tag.as_str()))
        .collect();
    assert_eq!(
        order,
        [("user:bob", "1.0"), ("user:alice", "1.0"), ("user:bob", "")],
        "{pulls:?}"
    );

    let row = image_row(&berth);
    assert_eq!(row["tag"], "1.0", "{row}");
    assert_eq!(row["digest"], digest.as_str(), "{row}");
    assert_eq!(row["pushed"]["by"], "user:alice", "{row}");
    assert_eq!(row["pulls"]["total"], 3, "{row}");
    assert_eq!(row["pullers"], 2, "{row}");
    assert_eq!(row["lastPulled"]["by"], "user:bob", "{row}");
    assert_eq!(row["nodes"], serde_json::json!([]), "{row}");

    // ctr through a node proxy that pulls as itself for node-1.
    let token_file = dir.path().join("node-proxy.token");
    write_file(&token_file, format!("{node_token}\n"));
    let proxy = NodeProxy::start_with_args(
        &[
            "--upstream",
            &berth.base_url,
            "--token-file",
            token_file.to_str().expect("utf-8 path"),
            "--node-name",
            "node-1",
        ],
        &berth.ca_file(),
    );
    // A containerd of its own, as on another machine: the first one holds the manifest already and would only
    // resolve the tag (a HEAD, no pull).
    let node = Containerd::start();
    let through = format!("{}/team-a/app:1.0", proxy.host);
    assert_ok(&run(
        node.ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--plain-http",
            &through,
        ]),
        CLIENT_TIMEOUT,
    ));
    assert_eq!(node.listed_digest(&through), Some(digest.clone()));

    settle(&berth, 1);
    let pulls = pull_events(&berth);
    let node_pulls: Vec<_> = pulls
        .iter()
        .filter(|(a, _, _)| a == "node-proxy:node-1")
        .collect();
    // As ctr directly: one GET of the manifest by digest after the HEAD by tag.
    assert_eq!(node_pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls.len(), 4, "{pulls:?}");
    assert_eq!(
        logged_manifest_gets(&berth, "node-proxy:node-1"),
        1,
        "{}",
        berth.log()
    );

    let row = image_row(&berth);
    assert_eq!(row["pulls"]["total"], 4, "{row}");
    assert_eq!(row["pullers"], 3, "{row}");
    assert_eq!(row["lastPulled"]["by"], "node-proxy:node-1", "{row}");
    assert_eq!(row["nodes"], serde_json::json!(["node-1"]), "{row}");
    assert_no_server_errors(&berth);
}
