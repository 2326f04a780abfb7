//! Identity and access (issue 11) proven with real clients: docker, podman, skopeo and containerd's `ctr` log in to a
//! real `berth serve` as htpasswd users and as Kubernetes ServiceAccounts (tokens from a real kube-apiserver,
//! `kubectl create token`, checked by berth through TokenReview), go through the distribution token flow, and are
//! refused with berth's `DENIED` message where the access rules or an immutable tag say no.
//!
//! Every test starts what it needs (berth, a private dockerd or containerd, a throw-away API server) and asserts
//! one expected outcome per step; waits are polls with deadlines. htpasswd files are written with the bcrypt crate
//! at its lowest cost (no apache2-utils needed, and fast). Client state stays in per-test directories (see
//! tests/docker.rs and tests/clients.rs).
//!
//! Must not: share a berth, a daemon or a cluster between tests, or depend on the machine's client configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::clients::{ok, run, run_with_input, ClientEnv, Containerd, OciLayout, Output};
use crate::cluster::Cluster;
use crate::docker::{verified_tls_host, verified_tls_options, CertsD, Docker};
use crate::support::{poll_until, write_file, Berth, Options};

/// Deadline for one client command here (the images are a few kilobytes).
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// An htpasswd file of `users` (name, password) in `dir`, bcrypt at cost 4.
pub(crate) fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (user, password) in users {
        let hash = bcrypt::hash(password, 4).expect("bcrypt hash");
        text.push_str(&format!("{user}:{hash}\n"));
    }
    let path = dir.join("htpasswd");
    write_file(&path, text);
    path
}

/// Starts berth with `--htpasswd` of `users` and `--policy-file` holding `policy` (files under `dir`).
pub(crate) fn berth_with_auth(
    dir: &Path,
    users: &[(&str, &str)],
    policy: &str,
    mut opts: Options,
) -> Berth {
    let users = htpasswd(dir, users);
    let policy_file = dir.join("policy.yaml");
    write_file(&policy_file, policy);
    opts.extra_args.extend([
        "--htpasswd".into(),
        users.display().to_string(),
        "--policy-file".into(),
        policy_file.display().to_string(),
    ]);
    Berth::start(opts)
}

/// stdout and stderr of a command, for "the message is visible to the user" checks.
fn shown(out: &Output) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

/// Requires `out` to have failed and to show `expected`.
fn assert_refused(out: &Output, expected: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal showing {expected:?}\n{}",
        out.describe()
    );
    assert!(
        shown(out).contains(expected),
        "the refusal does not show {expected:?}\n{}",
        out.describe()
    );
}

/// Requires `out` to show `expected` too (a refusal's second fragment: loggers such as skopeo's escape the quotes
/// around a rule's name, so a name is checked on its own).
fn assert_shows(out: &Output, expected: &str) {
    assert!(
        shown(out).contains(expected),
        "the output does not show {expected:?}\n{}",
        out.describe()
    );
}

/// Requires berth's request log to hold no 5xx answer: every refusal here is the client's (401, 403, 404).
pub(crate) fn assert_no_server_errors(berth: &Berth) {
    let log = berth.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("middleware::logger"))
        .filter(|line| {
            line.split("HTTP/")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().nth(1))
                .is_some_and(|status| status.starts_with('5'))
        })
        .collect();
    assert!(
        errors.is_empty(),
        "berth answered 5xx:\n{}",
        errors.join("\n")
    );
}

/// `podman login` of `user` (name, password) to `host`, the password on stdin, in `env`'s own auth file.
pub(crate) fn podman_login(env: &ClientEnv, host: &str, user: (&str, &str)) -> Output {
    run_with_input(
        env.reg_cmd(
            "podman",
            &["login"],
            &["--username", user.0, "--password-stdin", host],
        ),
        CLIENT_TIMEOUT,
        Some(user.1.as_bytes()),
    )
}

/// Requires `out` to have succeeded.
pub(crate) fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", out.describe());
}

/// The digest in `docker push`'s output (`<tag>: digest: sha256:… size: N`).
pub(crate) fn pushed_digest(output: &str) -> String {
    output
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(": digest: ")?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no digest in the push output:\n{output}"))
}

/// `docker push`, `docker rmi`, `docker pull` of `image` (imported first): the pulled digest is the pushed one.
fn docker_round_trip(docker: &Docker, image: &str) {
    docker.import_busybox(image);
    let digest = pushed_digest(&docker.ok(&["push", image]));
    docker.ok(&["rmi", image]);
    docker.ok(&["pull", image]);
    let repository = image.rsplit_once(':').map_or(image, |(r, _)| r);
    assert_eq!(docker.repo_digest(image), format!("{repository}@{digest}"));
}

/// The htpasswd users' policy: alice pushes team-a, reads team-b (a named rule refuses her push there); reader only
/// pulls team-a.
const USERS_POLICY: &str = r#"access:
  anonymous: none
  rules:
    - name: alice-team-a
      repositories: ['team-a/.*']
      subjects: ['user:alice']
      actions: [pull, push]
    - name: team-b-read-only
      repositories: ['team-b/.*']
      subjects: ['user:alice']
      actions: [pull]
    - name: reader-pulls-team-a
      repositories: ['team-a/.*']
      subjects: ['user:reader']
      actions: [pull]
"#;

const ALICE: (&str, &str) = ("alice", "alice-s3cret");
const READER: (&str, &str) = ("reader", "reader-s3cret");

#[test]
fn docker_htpasswd_login_push_pull_denied_logout_plain_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = berth_with_auth(
        dir.path(),
        &[ALICE, READER],
        USERS_POLICY,
        Options {
            plain_http: true,
            ..Options::default()
        },
    );
    let host = &berth.host;
    let docker = Docker::start();

    // A wrong password: refused, and docker says so.
    let wrong = docker.login(host, "alice", "not-her-password");
    assert_refused(&wrong, "invalid user name or password");
    assert!(docker.client_config()["auths"].get(host).is_none());

    assert_ok(&docker.login(host, ALICE.0, ALICE.1));
    docker_round_trip(&docker, &format!("{host}/team-a/busybox:1.0"));

    // team-b is read-only for alice: the push is refused with berth's message naming the rule.
    let refused_image = format!("{host}/team-b/busybox:1.0");
    docker.ok(&["tag", &format!("{host}/team-a/busybox:1.0"), &refused_image]);
    let refused = docker.run(&["push", &refused_image]);
    assert_refused(
        &refused,
        r#"user:alice may not push team-b/busybox: rule "team-b-read-only""#,
    );

    // Logged out, the client is anonymous, and anonymous clients may do nothing.
    assert_ok(&docker.logout(host));
    docker.ok(&["rmi", &format!("{host}/team-a/busybox:1.0")]);
    let anonymous = docker.run(&["pull", &format!("{host}/team-a/busybox:1.0")]);
    assert_refused(&anonymous, "authentication required");
    assert_no_server_errors(&berth);
}

#[test]
fn docker_htpasswd_login_push_pull_tls_with_certs_d() {
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = berth_with_auth(dir.path(), &[ALICE], USERS_POLICY, verified_tls_options());
    let host = verified_tls_host(&berth);
    let _ca = CertsD::install(&host, &berth.ca_file());
    let docker = Docker::start();

    let wrong = docker.login(&host, "alice", "nope");
    assert_refused(&wrong, "invalid user name or password");
    assert_ok(&docker.login(&host, ALICE.0, ALICE.1));
    // The realm of the challenge is https://registry.test:PORT/auth/token: the token is fetched over verified TLS.
    docker_round_trip(&docker, &format!("{host}/team-a/tls:1.0"));
    assert_no_server_errors(&berth);
}

/// One small image (one file holding `content`) in an OCI layout of its own under `env`, labelled `name`; returns
/// (its `oci:` reference, its manifest digest).
fn layout_image(env: &ClientEnv, name: &str, content: &[u8]) -> (String, String) {
    let mut layout = OciLayout::new(env.path().join(format!("layout-{name}")));
    let fixture =
        layout.add_simple_image("x", &[("org.example.test", name)], &[("data.txt", content)]);
    (format!("oci:{}:x", layout.dir.display()), fixture.digest)
}

/// `skopeo copy` of `src` to `docker://dst` with `--dest-creds creds` (or none).
fn skopeo_push(env: &ClientEnv, creds: Option<&str>, src: &str, dst: &str) -> Output {
    let mut extra = Vec::new();
    if let Some(creds) = creds {
        extra.extend(["--dest-creds", creds]);
    }
    run(
        env.skopeo_copy(&extra, src, &format!("docker://{dst}")),
        CLIENT_TIMEOUT,
    )
}

/// `skopeo inspect docker://image` with `--creds creds` (or none): the outcome.
fn skopeo_inspect(env: &ClientEnv, creds: Option<&str>, image: &str) -> Output {
    let mut args = Vec::new();
    if let Some(creds) = creds {
        args.extend(["--creds", creds]);
    }
    let target = format!("docker://{image}");
    args.push(&target);
    run(env.skopeo("inspect", &args), CLIENT_TIMEOUT)
}

/// The manifest digest of a `skopeo inspect` that must have succeeded.
fn inspected_digest(out: &Output) -> String {
    assert_ok(out);
    let value: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("skopeo inspect output is not JSON ({e}): {}", out.stdout));
    value["Digest"].as_str().unwrap_or_default().to_owned()
}

/// `user:password`, as `--creds` takes it.
pub(crate) fn creds((user, password): (&str, &str)) -> String {
    format!("{user}:{password}")
}

#[test]
fn podman_skopeo_ctr_with_htpasswd_users_and_a_partial_grant_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = berth_with_auth(
        dir.path(),
        &[ALICE, READER],
        USERS_POLICY,
        Options::default(),
    );
    let host = &berth.host;

    // skopeo --dest-creds / --creds.
    let skopeo = ClientEnv::new(&berth);
    let (src, digest) = layout_image(&skopeo, "skopeo", b"pushed by skopeo\n");
    let image = format!("{host}/team-a/app:v1");
    assert_ok(&skopeo_push(&skopeo, Some(&creds(ALICE)), &src, &image));
    assert_eq!(
        inspected_digest(&skopeo_inspect(&skopeo, Some(&creds(ALICE)), &image)),
        digest
    );
    let wrong = skopeo_inspect(&skopeo, Some("alice:wrong"), &image);
    assert_refused(&wrong, "invalid user name or password");

    // A partial grant: reader gets a token for pull only; it pulls, and its push is refused with DENIED at once.
    assert_eq!(
        inspected_digest(&skopeo_inspect(&skopeo, Some(&creds(READER)), &image)),
        digest
    );
    let started = Instant::now();
    let refused = skopeo_push(
        &skopeo,
        Some(&creds(READER)),
        &src,
        &format!("{host}/team-a/app:v2"),
    );
    assert_refused(&refused, "user:reader may not push team-a/app");
    assert!(
        refused.stderr.contains("denied"),
        "not a DENIED error\n{}",
        refused.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the refused push took {:?} (a retry loop?)",
        started.elapsed()
    );
    // The token it was refused with: asked for pull and push, granted pull (a partial grant, not an error).
    let log = berth.log();
    assert!(
        log.contains("token for user:reader: repository:team-a/app:pull\n")
            && !log.contains("token for user:reader: repository:team-a/app:pull,push"),
        "no pull-only token for reader in the log:\n{log}"
    );

    // podman login / pull / push (its credentials in its own auth file).
    let podman = ClientEnv::new(&berth);
    assert_ok(&podman_login(&podman, host, ALICE));
    ok(podman.reg_cmd("podman", &["pull"], &["-q", &image]));
    let pushed = format!("{host}/team-a/podman:v1");
    ok(podman.cmd("podman", &["tag", &image, &pushed]));
    let digest_file = podman.path().join("pushed-digest");
    let digest_arg = digest_file.display().to_string();
    ok(podman.reg_cmd("podman", &["push"], &["--digestfile", &digest_arg, &pushed]));
    let podman_digest = crate::support::read_to_string(&digest_file)
        .trim()
        .to_owned();
    assert!(podman_digest.starts_with("sha256:"), "{podman_digest}");
    // podman rewrites the manifest it pushes (its own compression and media types): berth serves what it sent.
    assert_eq!(
        inspected_digest(&skopeo_inspect(&skopeo, Some(&creds(ALICE)), &pushed)),
        podman_digest,
    );
    // podman as reader: the same partial grant, refused with DENIED.
    let reader_env = ClientEnv::new(&berth);
    assert_ok(&podman_login(&reader_env, host, READER));
    ok(reader_env.reg_cmd("podman", &["pull"], &["-q", &image]));
    let refused = run(
        reader_env.reg_cmd(
            "podman",
            &["push"],
            &[&image, &format!("docker://{host}/team-a/podman:v2")],
        ),
        CLIENT_TIMEOUT,
    );
    assert_refused(&refused, "user:reader may not push team-a/podman");

    // ctr --user: containerd's resolver answers the challenge with the token flow.
    let daemon = Containerd::start();
    let hosts = daemon.dir.path().join("hosts.d");
    write_file(
        hosts.join(host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
            ca = berth.ca_file().display()
        ),
    );
    let hosts_dir = hosts.to_str().expect("utf-8 path");
    let ctr_pull = |user: Option<&str>| {
        let mut args = vec![
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts_dir,
        ];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.push(&image);
        run(daemon.ctr(&args), CLIENT_TIMEOUT)
    };
    assert_refused(&ctr_pull(None), "401");
    assert_ok(&ctr_pull(Some(&creds(READER))));
    assert_eq!(daemon.listed_digest(&image), Some(digest));
    assert_no_server_errors(&berth);
}

/// A berth that checks ServiceAccount tokens with `cluster`'s API server (as its admin), answers kept 2 s, and has
/// the htpasswd user alice (who may push `alice/…`).
fn berth_for_cluster(dir: &Path, cluster: &Cluster) -> Berth {
    let policy = r#"access:
  anonymous: none
  rules:
    - name: alice-own
      repositories: ['alice/.*']
      subjects: ['user:alice']
      actions: [pull, push]
"#;
    berth_with_auth(
        dir,
        &[ALICE],
        policy,
        Options {
            plain_http: true,
            extra_args: vec![
                "--token-review".into(),
                "--token-cache-ttl".into(),
                "2s".into(),
            ],
            env: vec![(
                "KUBECONFIG".into(),
                cluster.kubeconfig.display().to_string(),
            )],
            ..Options::default()
        },
    )
}

#[test]
fn service_account_tokens_from_the_real_api_server() {
    let mut cluster = Cluster::start();
    for namespace in ["team-a", "team-b"] {
        cluster.kubectl_ok(&["create", "namespace", namespace]);
    }
    cluster.kubectl_ok(&["create", "serviceaccount", "ci", "-n", "team-a"]);
    cluster.kubectl_ok(&["create", "serviceaccount", "builder", "-n", "team-a"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = berth_for_cluster(dir.path(), &cluster);
    let host = berth.host.clone();
    let token = cluster.create_token("team-a", "ci", "berth");

    // docker login with the token as the password (any user name), push to its own namespace, refused elsewhere.
    let docker = Docker::start();
    let other_audience = cluster.create_token("team-a", "ci", "not-berth");
    // With an htpasswd file beside TokenReview, a refused token answers like a wrong password (no hint of which
    // user names are htpasswd users); berth's log keeps the API server's reason.
    assert_refused(
        &docker.login(&host, "ci", &other_audience),
        "invalid user name or password",
    );
    assert!(
        berth
            .log()
            .contains(r#"the Kubernetes API server refused the token: [invalid bearer token, token audiences ["not-berth"] is invalid"#),
        "berth's log does not say why:\n{}",
        berth.log()
    );
    assert_ok(&docker.login(&host, "ci", &token));
    let own = format!("{host}/team-a/app:1.0");
    docker.import_busybox(&own);
    let digest = pushed_digest(&docker.ok(&["push", &own]));
    let elsewhere = format!("{host}/team-b/app:1.0");
    docker.ok(&["tag", &own, &elsewhere]);
    assert_refused(
        &docker.run(&["push", &elsewhere]),
        "serviceaccount:team-a/ci may not push team-b/app",
    );

    // skopeo --creds anything:$TOKEN reads it back, and pushes by the same token.
    let skopeo = ClientEnv::new(&berth);
    let sa_creds = format!("anything:{token}");
    assert_eq!(
        inspected_digest(&skopeo_inspect(&skopeo, Some(&sa_creds), &own)),
        digest
    );
    let (src, skopeo_digest) = layout_image(&skopeo, "sa", b"pushed with a ServiceAccount token\n");
    assert_ok(&skopeo_push(
        &skopeo,
        Some(&sa_creds),
        &src,
        &format!("{host}/team-a/skopeo:1.0"),
    ));
    // skopeo's first request there is a HEAD of a blob (may it pull?): a 403 without a body, so only the status
    // shows.
    assert_refused(
        &skopeo_push(
            &skopeo,
            Some(&sa_creds),
            &src,
            &format!("{host}/team-b/skopeo:1.0"),
        ),
        "403 (Forbidden)",
    );

    // podman login with the token: pull and push in its own namespace, refused elsewhere.
    let podman = ClientEnv::new(&berth);
    assert_ok(&podman_login(&podman, &host, ("ci", &token)));
    let skopeo_image = format!("{host}/team-a/skopeo:1.0");
    ok(podman.reg_cmd("podman", &["pull"], &["-q", &skopeo_image]));
    let podman_image = format!("{host}/team-a/podman:1.0");
    ok(podman.cmd("podman", &["tag", &skopeo_image, &podman_image]));
    ok(podman.reg_cmd("podman", &["push"], &[&podman_image]));
    let refused = run(
        podman.reg_cmd(
            "podman",
            &["push"],
            &[&podman_image, &format!("docker://{host}/team-b/podman:1.0")],
        ),
        CLIENT_TIMEOUT,
    );
    // As with skopeo above: refused at the first HEAD, whose 403 has no body.
    assert_refused(&refused, "403 (Forbidden)");

    // ctr --user anything:$TOKEN: containerd's token flow with a ServiceAccount token.
    let daemon = Containerd::start();
    let user = format!("anything:{token}");
    ok(daemon.ctr(&[
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--plain-http",
        "--user",
        &user,
        &skopeo_image,
    ]));
    assert_eq!(
        daemon.listed_digest(&skopeo_image),
        Some(skopeo_digest.clone())
    );

    // The ServiceAccount deleted: its token stops working once berth's cached answer (2 s) has expired, and the API
    // server's own cache of token answers (10 s in Kubernetes 1.20), so after about 10 s; the deadline bounds both.
    cluster.kubectl_ok(&["delete", "serviceaccount", "ci", "-n", "team-a"]);
    let deleted = Instant::now();
    let refused = poll_until(
        Duration::from_secs(30),
        "the deleted ServiceAccount's token to be refused",
        || {
            let out = skopeo_inspect(&skopeo, Some(&sa_creds), &own);
            (!out.status.success()).then_some(out)
        },
    );
    assert_refused(&refused, "invalid user name or password");
    eprintln!(
        "deleted ServiceAccount refused after {:?}",
        deleted.elapsed()
    );
    assert_refused(
        &skopeo_inspect(&skopeo, Some(&sa_creds), &own),
        "invalid user name or password",
    );

    // The API server stopped: a ServiceAccount login fails closed, quickly and saying why; alice still pushes.
    let builder = format!("x:{}", cluster.create_token("team-a", "builder", "berth"));
    assert_eq!(
        inspected_digest(&skopeo_inspect(&skopeo, Some(&builder), &own)),
        digest
    );
    stop_apiserver(&mut cluster);
    // Past the 2 s during which berth may still remember builder's token.
    let unavailable = poll_until(
        Duration::from_secs(30),
        "ServiceAccount logins to fail with the API server down",
        || {
            let out = skopeo_inspect(&skopeo, Some(&builder), &own);
            (!out.status.success()).then_some(out)
        },
    );
    assert_refused(&unavailable, "ServiceAccount tokens cannot be checked now");
    let started = Instant::now();
    assert_refused(
        &docker.login(&host, "builder", builder.trim_start_matches("x:")),
        "ServiceAccount tokens cannot be checked now",
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the failed login took {:?}",
        started.elapsed()
    );
    assert_ok(&skopeo_push(
        &skopeo,
        Some(&creds(ALICE)),
        &src,
        &format!("{host}/alice/app:1.0"),
    ));
    assert_eq!(
        inspected_digest(&skopeo_inspect(
            &skopeo,
            Some(&creds(ALICE)),
            &format!("{host}/alice/app:1.0")
        )),
        skopeo_digest
    );
    assert_no_server_errors(&berth);
}

/// Stops the cluster's kube-apiserver (etcd keeps running): SIGKILL, as a crash would; the cluster's drop reaps it.
fn stop_apiserver(cluster: &mut Cluster) {
    // `pids()` lists etcd first, then the apiserver.
    let pids = cluster.pids();
    let apiserver = pids.last().expect("the apiserver's pid").to_string();
    let mut kill = Command::new("kill");
    kill.args(["-KILL", &apiserver]);
    ok(kill);
    let server = cluster.server.clone();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cluster.ca_file).expect("cluster CA"))
                .expect("cluster CA PEM"),
        )
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    poll_until(
        Duration::from_secs(10),
        "the API server to stop answering",
        || {
            client
                .get(format!("{server}/readyz"))
                .send()
                .is_err()
                .then_some(())
        },
    );
}

#[test]
fn immutable_tags_with_skopeo() {
    let policy = r#"access:
  rules:
    - name: alice-app
      repositories: ['app']
      subjects: ['user:alice']
      actions: [pull, push, delete]
immutableTags:
  - name: releases
    repositories: ['.*']
    tags: ['v?[0-9]+\.[0-9]+\.[0-9]+.*']
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = berth_with_auth(
        dir.path(),
        &[ALICE],
        policy,
        Options {
            plain_http: true,
            ..Options::default()
        },
    );
    let env = ClientEnv::new(&berth);
    let alice = creds(ALICE);
    let release = format!("{}/app:v1.0.0", berth.host);
    let (first, digest) = layout_image(&env, "first", b"release 1.0.0\n");
    let (second, _) = layout_image(&env, "second", b"something else\n");

    assert_ok(&skopeo_push(&env, Some(&alice), &first, &release));
    // A CI retry: the identical manifest again succeeds.
    assert_ok(&skopeo_push(&env, Some(&alice), &first, &release));
    let moved = skopeo_push(&env, Some(&alice), &second, &release);
    assert_refused(&moved, "tag app:v1.0.0 is immutable (rule");
    assert_shows(&moved, "releases");
    let delete = run(
        env.skopeo(
            "delete",
            &["--creds", &alice, &format!("docker://{release}")],
        ),
        CLIENT_TIMEOUT,
    );
    assert_refused(&delete, "immutable (rule");
    assert_shows(&delete, "releases");
    assert_eq!(
        inspected_digest(&skopeo_inspect(&env, Some(&alice), &release)),
        digest
    );

    // A tag no entry matches moves and is deleted as before.
    let latest = format!("{}/app:latest", berth.host);
    assert_ok(&skopeo_push(&env, Some(&alice), &first, &latest));
    assert_ok(&skopeo_push(&env, Some(&alice), &second, &latest));
    let out = run(
        env.skopeo(
            "delete",
            &["--creds", &alice, &format!("docker://{latest}")],
        ),
        CLIENT_TIMEOUT,
    );
    assert_ok(&out);
    assert_no_server_errors(&berth);
}

#[test]
fn anonymous_pull_with_skopeo_and_ctr_while_anonymous_push_is_refused() {
    let policy = r#"access:
  anonymous: pull
  rules:
    - name: alice-pushes
      repositories: ['public/.*']
      subjects: ['user:alice']
      actions: [pull, push]
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = berth_with_auth(
        dir.path(),
        &[ALICE],
        policy,
        Options {
            plain_http: true,
            ..Options::default()
        },
    );
    let env = ClientEnv::new(&berth);
    let image = format!("{}/public/hello:v1", berth.host);
    let (src, digest) = layout_image(&env, "public", b"for everyone to pull\n");
    assert_ok(&skopeo_push(&env, Some(&creds(ALICE)), &src, &image));

    assert_eq!(
        inspected_digest(&skopeo_inspect(&env, None, &image)),
        digest
    );
    let daemon = Containerd::start();
    ok(daemon.ctr(&[
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--plain-http",
        &image,
    ]));
    assert_eq!(daemon.listed_digest(&image), Some(digest));

    let refused = skopeo_push(&env, None, &src, &format!("{}/public/hello:v2", berth.host));
    assert_refused(&refused, "authentication required to push public/hello");
    assert_no_server_errors(&berth);
}
