//! `berth events` and `berth images [--outdated]`, the real binaries, against a real `berth serve` over TLS with
//! auth on: a berth token (from `/auth/token`) given with `--token` and `--token-file`, berth's CA with
//! `--ca-file`; the table and JSON outputs, filters, `--limit`, and the refusal without credentials. The events
//! are written into berth's event store from the test (the registry's own recording is tested with it).

use std::process::{Command, Output};
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::api::sha256;
use crate::support::{Berth, Options};
use berth::events::sqlite::SqliteStore;
use berth::events::{Actor, Event, EventAction, EventStore};

const POLICY: &str = "access:\n  anonymous: none\n  admins: ['user:ops']\n";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn berth_cli(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running berth");
    println!(
        "$ berth {}\n{}{}",
        args.iter()
            .map(|a| if a.len() > 60 { "…" } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

/// Pushes a one-blob image as `ops` and returns its digest.
fn push(berth: &Berth, repository: &str, tag: &str) -> String {
    push_image(
        berth,
        repository,
        tag,
        br#"{"os":"linux"}"#,
        Some(("ops", "secret")),
    )
}

/// Pushes an image of no layers whose config blob is `config` as `repository:tag` (with Basic `credentials`, if
/// any) and returns the manifest's digest.
pub(crate) fn push_image(
    berth: &Berth,
    repository: &str,
    tag: &str,
    config: &[u8],
    credentials: Option<(&str, &str)>,
) -> String {
    let client = berth.client();
    let authorized = |request: reqwest::blocking::RequestBuilder| match credentials {
        Some((user, password)) => request.basic_auth(user, Some(password)),
        None => request,
    };
    let blob = authorized(client.post(format!(
        "{}/v2/{repository}/blobs/uploads/?digest={}",
        berth.base_url,
        sha256(config)
    )))
    .body(config.to_vec())
    .send()
    .expect("push blob");
    assert_eq!(blob.status(), 201);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
        "layers": [],
    }))
    .expect("json");
    let put = authorized(client.put(format!(
        "{}/v2/{repository}/manifests/{tag}",
        berth.base_url
    )))
    .header("content-type", OCI_MANIFEST)
    .body(manifest.clone())
    .send()
    .expect("push manifest");
    assert_eq!(put.status(), 201);
    sha256(&manifest)
}

#[test]
fn berth_events_and_berth_images_read_a_real_berth_over_tls_with_a_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let berth = Berth::start(Options {
        htpasswd: Some(format!(
            "ops:{}\n",
            bcrypt::hash("secret", 4).expect("bcrypt")
        )),
        extra_args: vec!["--policy-file".into(), policy.display().to_string()],
        ..Options::default()
    });
    let digest = push(&berth, "team-a/app", "v1.0.0");
    let token: Value = berth
        .client()
        .get(format!("{}/auth/token?service=berth", berth.base_url))
        .basic_auth("ops", Some("secret"))
        .send()
        .expect("token")
        .json()
        .expect("token JSON");
    let token = token["token"].as_str().expect("token").to_owned();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");

    let store = SqliteStore::open(&SqliteStore::path_in(&berth.data_dir)).expect("the event store");
    let now = SystemTime::now();
    // The push above is in the log already (berth recorded it before answering); the node proxy's pulls are
    // written beside it, as a node proxy in a cluster would have caused them.
    let node = Actor::from(&berth::auth::Identity::NodeProxy {
        namespace: "berth-system".into(),
        name: "berth-node-proxy".into(),
        node: Some("node-1".into()),
    });
    let mut pulls = Vec::new();
    for _ in 0..2 {
        let mut pull = Event::new(EventAction::Pull, node.clone(), "berth-0", now);
        pull.target.repository = Some("team-a/app".into());
        pull.target.tag = Some("v1.0.0".into());
        pull.target.digest = Some(digest.clone());
        pulls.push(pull);
    }
    store.append(&pulls).expect("append");

    let ca = berth.ca_file().display().to_string();
    let server = berth.base_url.as_str();
    let table = stdout(&berth_cli(&[
        "events",
        "--server",
        server,
        "--token",
        &token,
        "--ca-file",
        &ca,
    ]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("TIME "), "{table}");
    let short = &digest[..19];
    assert!(
        lines[1].contains("push")
            && lines[1].contains("user:ops")
            && lines[1].contains(&format!("team-a/app:v1.0.0@{short}"))
            && lines[1].ends_with("201"),
        "{table}"
    );
    assert!(
        lines[2].contains("pull") && lines[2].contains("node-proxy:node-1"),
        "{table}"
    );

    let json_lines = stdout(&berth_cli(&[
        "events",
        "--server",
        server,
        "--token-file",
        &token_file.display().to_string(),
        "--ca-file",
        &ca,
        "--action",
        "pull",
        "--since",
        "1h",
        "--output",
        "json",
    ]));
    let events: Vec<Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), 2, "{json_lines}");
    assert!(
        events
            .iter()
            .all(|e| e["action"] == "pull" && e["actor"]["node"] == "node-1"),
        "{json_lines}"
    );
    let limited = stdout(&berth_cli(&[
        "events",
        "--server",
        server,
        "--token",
        &token,
        "--ca-file",
        &ca,
        "--limit",
        "1",
    ]));
    assert_eq!(limited.lines().count(), 2, "{limited}");

    let images = stdout(&berth_cli(&[
        "images",
        "--server",
        server,
        "--token",
        &token,
        "--ca-file",
        &ca,
    ]));
    let row = images
        .lines()
        .find(|l| l.starts_with("team-a/app:v1.0.0 "))
        .unwrap_or_else(|| panic!("no team-a/app:v1.0.0 row: {images}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], short, "{images}");
    assert_eq!(cells[3], "user:ops", "{images}");
    assert_eq!(&cells[4..7], ["2", "2", "2"], "{images}");
    assert_eq!(cells[8], "node-proxy:node-1", "{images}");
    assert_eq!(&cells[9..11], ["1", "node-1"], "{images}");
    let outdated = stdout(&berth_cli(&[
        "images",
        "--outdated",
        "--server",
        server,
        "--token",
        &token,
        "--ca-file",
        &ca,
    ]));
    assert!(
        outdated.contains("berth is not watching pods"),
        "{outdated}"
    );

    let refused = berth_cli(&["events", "--server", server, "--ca-file", &ca]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("answered 401: authentication required"),
        "{stderr}"
    );
    let untrusted = berth_cli(&[
        "events",
        "--server",
        server,
        "--token",
        &token,
        "--cert-dir",
        &tmp.path().display().to_string(),
    ]);
    assert_eq!(
        untrusted.status.code(),
        Some(1),
        "berth's certificate is not trusted without its CA"
    );
}
