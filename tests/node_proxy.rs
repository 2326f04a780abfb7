//! `berth node-proxy` against a real berth over TLS: pulls stream through, pushes are refused with a clear error,
//! an unreachable berth is a quick 503; `--upstream-address` reaches berth without resolving its name, and TLS
//! still verifies the name; with `--token-file` and `--node-name` it pulls as itself (its token, rotated in place,
//! and its node name replace whatever the client sent; checked against a recording stand-in for berth); and
//! `berth certs init`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

use crate::api::{content, expect_error, header, sha256, Api};
use crate::support::{poll_until, Berth, Options};

/// A running node proxy; killed on drop.
pub struct NodeProxy {
    pub base: String,
    pub host: String,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl NodeProxy {
    pub fn start(berth: &Berth) -> NodeProxy {
        NodeProxy::start_with_ca(berth, &berth.ca_file())
    }

    /// A node proxy trusting the CA in `ca_file` (which a test may replace while it runs).
    pub fn start_with_ca(berth: &Berth, ca_file: &std::path::Path) -> NodeProxy {
        NodeProxy::start_with_args(&["--upstream", &berth.base_url], ca_file)
    }

    /// A node proxy with `args` (at least `--upstream`) trusting the CA in `ca_file`.
    pub fn start_with_args(args: &[&str], ca_file: &std::path::Path) -> NodeProxy {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["node-proxy", "--listen", &host])
            .args(args)
            .arg("--ca-file")
            .arg(ca_file)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("start node-proxy");
        let proxy = NodeProxy {
            base: format!("http://{host}"),
            host,
            child,
            log,
        };
        let client = Client::new();
        poll_until(Duration::from_secs(20), "node-proxy /healthz", || {
            client
                .get(format!("{}/healthz", proxy.base))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        proxy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pulls_stream_through_and_pushes_are_refused() {
    let mut berth = Berth::start(Options::default());
    let api = Api::new(&berth);
    let (manifest, digest) = api.push_image("team/app", "1.0", 31);
    let big = content(64 * 1024 * 1024, 32);
    let big_digest = api.push_blob("team/app", &big);
    let proxy = NodeProxy::start(&berth);
    let plain = Client::builder().no_proxy().build().expect("client");

    assert_eq!(
        plain
            .get(format!("{}/v2/", proxy.base))
            .send()
            .expect("GET /v2/")
            .status(),
        StatusCode::OK
    );
    let response = plain
        .get(format!("{}/v2/team/app/manifests/1.0", proxy.base))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .expect("GET manifest");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "docker-content-digest"), digest);
    assert_eq!(
        header(response.headers(), "content-type"),
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(response.bytes().expect("body").as_ref(), &manifest[..]);
    let head = plain
        .head(format!("{}/v2/team/app/blobs/{big_digest}", proxy.base))
        .send()
        .expect("HEAD");
    assert_eq!(
        header(head.headers(), "content-length"),
        big.len().to_string()
    );
    let body = plain
        .get(format!("{}/v2/team/app/blobs/{big_digest}", proxy.base))
        .send()
        .expect("GET blob");
    assert_eq!(sha256(&body.bytes().expect("body")), big_digest);
    let ranged = plain
        .get(format!("{}/v2/team/app/blobs/{big_digest}", proxy.base))
        .header("range", "bytes=10-19")
        .send()
        .expect("range");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().expect("body").as_ref(), &big[10..20]);
    expect_error(
        plain
            .get(format!("{}/v2/team/other/manifests/1.0", proxy.base))
            .send()
            .expect("GET"),
        404,
        "MANIFEST_UNKNOWN",
    );

    // Pushes get UNSUPPORTED naming the real registry.
    for (method, path) in [
        ("POST", "/v2/team/app/blobs/uploads/"),
        ("PUT", "/v2/team/app/manifests/x"),
        ("DELETE", "/v2/team/app/manifests/1.0"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = plain
            .request(method.clone(), format!("{}{path}", proxy.base))
            .send()
            .expect("request");
        let message = expect_error(response, 405, "UNSUPPORTED");
        assert!(
            message.contains(&berth.base_url),
            "{method} {path}: {message}"
        );
    }

    // berth gone: a quick 503 with Retry-After, not a hang.
    berth.kill9();
    let started = Instant::now();
    let response = plain
        .get(format!("{}/v2/team/app/manifests/1.0", proxy.base))
        .send()
        .expect("GET");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(header(response.headers(), "retry-after"), "5");
    let body: Value = response.json().expect("json");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("unreachable"));
    assert!(!proxy.log().contains("panicked"));
}

/// `GET <target>` written as is on a new connection (HTTP clients resolve dot segments before sending, so they
/// cannot send these paths): the status and the body of the answer.
fn raw_get(host: &str, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn node_proxy_does_not_forward_paths_outside_v2() {
    let berth = Berth::start(Options::default());
    let api = Api::new(&berth);
    let proxy = NodeProxy::start(&berth);
    for target in [
        "/v2/../readyz",
        "/v2/%2e%2e/readyz",
        "/v2/%2E%2E/readyz",
        "/v2/./../readyz",
        "/v2/team/../../readyz",
        "/v2/../healthz",
    ] {
        let (status, body) = raw_get(&proxy.host, target);
        assert_eq!(status, 404, "{target}: {body}");
        // /readyz answers {"status": "ready", "storage": …}, /healthz "ok".
        assert!(
            !body.contains("storage") && !body.starts_with("ok"),
            "{target} reached berth: {body}"
        );
        let error: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"));
        assert_eq!(
            error["errors"][0]["code"], "UNSUPPORTED",
            "{target}: {body}"
        );
    }
    // What berth is asked for is the canonical path: an escaped digest still pulls.
    let (_, digest) = api.push_image("team/app", "1.1", 34);
    let (status, body) = raw_get(
        &proxy.host,
        &format!("/v2/team/app/manifests/{}", digest.replace(':', "%3A")),
    );
    assert_eq!(status, 200, "{body}");
    assert!(!proxy.log().contains("panicked"));
}

#[test]
fn a_rotated_ca_is_picked_up_without_a_restart() {
    let mut berth = Berth::start(Options::default());
    let api = Api::new(&berth);
    let (_, digest) = api.push_image("team/app", "1.0", 33);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::copy(berth.ca_file(), &ca_file).expect("copy ca");
    let proxy = NodeProxy::start_with_ca(&berth, &ca_file);
    let plain = Client::builder().no_proxy().build().expect("client");
    let manifest_status = || {
        plain
            .get(format!("{}/v2/team/app/manifests/{digest}", proxy.base))
            .send()
            .map(|r| r.status())
            .unwrap_or(StatusCode::BAD_GATEWAY)
    };
    assert_eq!(manifest_status(), StatusCode::OK);

    // berth switches to a certificate from a new CA: the proxy no longer trusts it.
    let ca = berth::tls::generate_ca("rotated CA").expect("ca");
    let (cert, key) =
        berth::tls::issue_serving_cert(&ca, &["localhost".into(), "127.0.0.1".into()])
            .expect("cert");
    std::fs::write(berth.cert_dir.join("tls.key"), key).expect("write key");
    std::fs::write(berth.cert_dir.join("tls.crt"), cert).expect("write cert");
    std::fs::write(berth.cert_dir.join("ca.crt"), &ca.cert).expect("write ca");
    // A restart drops the proxy's pooled connections, so the next pull needs a new handshake.
    berth.restart();
    assert_eq!(
        manifest_status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the old CA must not verify the new certificate"
    );
    // The new CA arrives in the proxy's file (as a Secret volume update would bring it): pulls work again.
    std::fs::write(&ca_file, &ca.cert).expect("write ca");
    poll_until(
        Duration::from_secs(30),
        "the node proxy to trust the new CA",
        || (manifest_status() == StatusCode::OK).then_some(()),
    );
    assert!(proxy.log().contains("reloaded the CA"), "{}", proxy.log());
}

/// The name the manifests' `--upstream` gives, which does not resolve here (there is no cluster DNS).
const SERVICE_NAME: &str = "berth.berth-system.svc";

/// `GET /v2/team/app/manifests/1.0` through `proxy`: the status, and the digest header when there is one.
fn pull_manifest(proxy: &NodeProxy) -> (StatusCode, String) {
    let response = Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/v2/team/app/manifests/1.0", proxy.base))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .expect("GET manifest");
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status(), digest)
}

#[test]
fn node_proxy_upstream_address_reaches_berth_without_resolving_its_name() {
    // berth's certificate names the Service, which no resolver here knows.
    let berth = Berth::start(Options {
        extra_args: vec!["--san".into(), SERVICE_NAME.into()],
        ..Options::default()
    });
    let api = Api::new(&berth);
    let (_, digest) = api.push_image("team/app", "1.0", 35);
    let port = berth.host.rsplit_once(':').expect("HOST:PORT").1;

    // Without the address the name does not resolve here, so nothing else makes the pulls below work.
    let unpinned = NodeProxy::start_with_args(
        &["--upstream", &format!("https://{SERVICE_NAME}:{port}")],
        &berth.ca_file(),
    );
    assert_eq!(
        pull_manifest(&unpinned).0,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        unpinned.log()
    );
    drop(unpinned);

    // The port connected to is the address's, whatever the URL says: the URL with berth's port; with :443 as in
    // the manifests; with another port (reqwest alone would connect to the URL's port).
    let other_port = if port == "8443" { "9443" } else { "8443" };
    for upstream in [
        format!("https://{SERVICE_NAME}:{port}"),
        format!("https://{SERVICE_NAME}:443"),
        format!("https://{SERVICE_NAME}:{other_port}"),
    ] {
        let proxy = NodeProxy::start_with_args(
            &["--upstream", &upstream, "--upstream-address", &berth.host],
            &berth.ca_file(),
        );
        assert_eq!(
            pull_manifest(&proxy),
            (StatusCode::OK, digest.clone()),
            "{upstream}\n{}",
            proxy.log()
        );
        assert!(
            proxy.log().contains(&format!(
                "connecting to {} without resolving {SERVICE_NAME}",
                berth.host
            )),
            "{}",
            proxy.log()
        );
    }

    // The address only replaces name resolution: a name berth's certificate does not cover fails TLS
    // verification, and the proxy answers as for any berth it cannot reach.
    let proxy = NodeProxy::start_with_args(
        &[
            "--upstream",
            &format!("https://other.berth-system.svc:{port}"),
            "--upstream-address",
            &berth.host,
        ],
        &berth.ca_file(),
    );
    let response = Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/v2/team/app/manifests/1.0", proxy.base))
        .send()
        .expect("GET manifest");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(response.headers(), "retry-after"), "5");
    let body: Value = response.json().expect("json");
    assert_eq!(body["errors"][0]["code"], "UNKNOWN", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("(at {}) is unreachable", berth.host)),
        "{body}"
    );
    // The log says why (the whole cause chain, not only reqwest's "error sending request").
    assert!(
        proxy
            .log()
            .contains("certificate not valid for name \"other.berth-system.svc\""),
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains("panicked"));
}

#[test]
fn node_proxy_refuses_an_unexpanded_service_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(
        &ca_file,
        berth::tls::generate_ca("test CA").expect("ca").cert,
    )
    .expect("write ca");
    // What the kubelet passes when the Service berth did not exist as the container started.
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "node-proxy",
            "--listen=127.0.0.1:0",
            "--upstream=https://berth.berth-system.svc:443",
            "--upstream-address=$(BERTH_SERVICE_HOST):$(BERTH_SERVICE_PORT)",
            "--ca-file",
        ])
        .arg(&ca_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node-proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node-proxy started with an unexpanded $(…) in --upstream-address");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "$(BERTH_SERVICE_HOST):$(BERTH_SERVICE_PORT)\": still contains $(…): the variable is not set; \
             the Service berth must exist before the pod starts"
        ),
        "{stderr}"
    );
}

#[test]
fn certs_init_writes_a_usable_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["certs", "init", "--out"])
            .arg(&out)
            .args([
                "--dns",
                "registry.example",
                "localhost",
                "--ip",
                "127.0.0.1",
            ])
            .args(extra)
            .output()
            .expect("run berth certs init")
    };
    let output = run(&[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let info =
        berth::tls::inspect_cert(&std::fs::read_to_string(out.join("tls.crt")).expect("tls.crt"))
            .expect("parse");
    assert_eq!(info.names, ["registry.example", "localhost", "127.0.0.1"]);
    // It refuses to overwrite without --force.
    let again = run(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(run(&["--force"]).status.success());

    // berth serves the set as it is (no regeneration), and clients trusting its CA connect.
    let berth = Berth::start(Options {
        cert_dir: Some(out.clone()),
        ..Options::default()
    });
    let pem = std::fs::read(out.join("ca.crt")).expect("ca");
    let client = Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let url = berth.base_url.replace("127.0.0.1", "localhost");
    assert_eq!(
        client
            .get(format!("{url}/v2/"))
            .send()
            .expect("GET")
            .status(),
        StatusCode::OK
    );
}

/// A plain-HTTP stand-in for berth that keeps the head of every request it gets (lowercase) and answers each with
/// the status in `status` and an empty JSON body, closing the connection.
struct RecordingUpstream {
    url: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

impl RecordingUpstream {
    fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (seen, answer) = (heads.clone(), status.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                seen.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                let status = answer.load(std::sync::atomic::Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     www-authenticate: Bearer realm=\"https://berth.example/auth/token\",service=\"berth\"\r\n\
                     content-length: 2\r\nconnection: close\r\n\r\n{{}}"
                );
            }
        });
        RecordingUpstream { url, heads, status }
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// The header lines named `name` (lowercase) in a request head.
fn header_lines<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter(|line| line.starts_with(&format!("{name}:")))
        .collect()
}

/// Replaces `path`'s content the way the kubelet updates a projected volume: a new file renamed over the old.
fn rotate(path: &std::path::Path, content: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, content).expect("write token");
    std::fs::rename(&next, path).expect("rename token");
}

#[test]
fn node_proxy_pulls_with_its_own_token_and_node_name_and_follows_rotation() {
    let upstream = RecordingUpstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(
        &ca_file,
        berth::tls::generate_ca("test CA").expect("ca").cert,
    )
    .expect("ca");
    let token = dir.path().join("token");
    std::fs::write(&token, "token-one\n").expect("token");
    let proxy = NodeProxy::start_with_args(
        &[
            "--upstream",
            &upstream.url,
            "--token-file",
            token.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
            "--token-reload-interval",
            "100ms",
        ],
        &ca_file,
    );
    let client = Client::builder().no_proxy().build().expect("client");
    // A client's own credentials and node name never reach berth beside the node proxy's.
    let pull = || {
        client
            .get(format!("{}/v2/team/app/manifests/1.0", proxy.base))
            .header("authorization", "Basic dXNlcjpwYXNz")
            .header("berth-node-name", "node-b")
            .send()
            .expect("GET manifest")
    };
    assert_eq!(pull().status(), StatusCode::OK);
    let head = upstream.last_head();
    assert!(
        head.starts_with("get /v2/team/app/manifests/1.0 "),
        "{head}"
    );
    assert_eq!(
        header_lines(&head, "authorization"),
        ["authorization: bearer token-one"],
        "{head}"
    );
    assert_eq!(
        header_lines(&head, "berth-node-name"),
        ["berth-node-name: node-a"],
        "{head}"
    );

    // The kubelet rotates the token: the next pulls carry the new one, without a restart.
    rotate(&token, "token-two\n");
    poll_until(
        Duration::from_secs(10),
        "the rotated token upstream",
        || {
            pull();
            header_lines(&upstream.last_head(), "authorization")
                .contains(&"authorization: bearer token-two")
                .then_some(())
        },
    );
    assert!(
        proxy.log().contains("reloaded the token from"),
        "{}",
        proxy.log()
    );

    // A token file gone bad is logged, and the last token stays in use.
    rotate(&token, "\n");
    poll_until(
        Duration::from_secs(10),
        "the empty token file logged",
        || proxy.log().contains("keeping the last token").then_some(()),
    );
    assert_eq!(pull().status(), StatusCode::OK);
    assert_eq!(
        header_lines(&upstream.last_head(), "authorization"),
        ["authorization: bearer token-two"]
    );

    // berth refuses the token: the kubelet gets the 401 without a challenge it cannot answer, and the log says
    // what to check.
    upstream
        .status
        .store(401, std::sync::atomic::Ordering::SeqCst);
    let refused = pull();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get("www-authenticate").is_none());
    assert!(
        proxy.log().contains("refused the node proxy's token from"),
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains("panicked"));
}

/// Without `--token-file` the node proxy passes the client's credentials on as they are, and sends no node name,
/// even when given one.
#[test]
fn node_proxy_without_a_token_passes_the_clients_credentials_on() {
    let upstream = RecordingUpstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(
        &ca_file,
        berth::tls::generate_ca("test CA").expect("ca").cert,
    )
    .expect("ca");
    let proxy = NodeProxy::start_with_args(
        &["--upstream", &upstream.url, "--node-name", "node-a"],
        &ca_file,
    );
    assert!(
        proxy
            .log()
            .contains("\"node-a\" (--node-name or NODE_NAME) ignored"),
        "{}",
        proxy.log()
    );
    let response = Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/v2/team/app/manifests/1.0", proxy.base))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .header("berth-node-name", "node-b")
        .send()
        .expect("GET manifest");
    assert_eq!(response.status(), StatusCode::OK);
    let head = upstream.last_head();
    assert_eq!(
        header_lines(&head, "authorization"),
        ["authorization: basic dxnlcjpwyxnz"],
        "{head}"
    );
    assert!(header_lines(&head, "berth-node-name").is_empty(), "{head}");
}
