//! The pull-through proxy cache (src/proxy) against real upstreams on loopback: a second berth over TLS with its own
//! CA, Debian's docker-registry (CNCF distribution 2.8) behind htpasswd Basic auth, and tests/proxy/upstream.py, a
//! small upstream that can demand Bearer tokens, rate-limit, stream slowly or serve wrong bytes. Pulled with skopeo,
//! podman, containerd's `ctr` (berth as a docker.io mirror) and plain HTTP.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::blocking::Response;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api::{content, expect_error, header, Api};
use crate::clients::{ok, push_fixture, require_tool, run, ClientEnv, Containerd, OciLayout};
use crate::support::{poll_until, write_file, Berth, Options};

// ---------------------------------------------------------------------------
// Harness: a berth with a `proxy:` config, the Python upstream, docker-registry
// ---------------------------------------------------------------------------

/// A berth started with `--config` holding a `proxy:` section.
struct ProxyBerth {
    berth: Berth,
    api: Api,
    _config: tempfile::TempDir,
}

/// `proxy:` with these `upstreams` entries (see [`upstream`]) and extra lines such as `  maxSize: 10MB\n`.
fn start_proxy(upstreams: &[String], extra: &str, opts: Options) -> ProxyBerth {
    let dir = tempfile::Builder::new()
        .prefix("berth-proxy-config-")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().join("config.yaml");
    write_file(
        &path,
        format!("proxy:\n  upstreams:\n{}{extra}", upstreams.concat()),
    );
    let mut opts = opts;
    opts.extra_args
        .splice(0..0, ["--config".to_owned(), path.display().to_string()]);
    let berth = Berth::start(opts);
    let api = Api::new(&berth);
    ProxyBerth {
        berth,
        api,
        _config: dir,
    }
}

fn plain() -> Options {
    Options {
        plain_http: true,
        ..Options::default()
    }
}

/// One `proxy.upstreams` entry; `fields` are more `key: value` pairs (values written as given).
fn upstream(name: &str, url: &str, fields: &[(&str, String)]) -> String {
    let mut entry = format!("    - name: {name}\n      url: '{url}'\n");
    for (key, value) in fields {
        entry += &format!("      {key}: {value}\n");
    }
    entry
}

/// The entry for an upstream berth over TLS, trusting its CA.
fn berth_upstream(name: &str, up: &Berth, tag_ttl: &str) -> String {
    upstream(
        name,
        &up.base_url,
        &[
            ("caFile", format!("'{}'", up.ca_file().display())),
            ("tagTtl", tag_ttl.to_owned()),
        ],
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// tests/proxy/upstream.py: one image under any repository name, misbehaving as its flags say.
struct PyUpstream {
    child: Child,
    url: String,
    info: Value,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PyUpstream {
    fn start(args: &[&str]) -> PyUpstream {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxy/upstream.py");
        let dir = tempfile::Builder::new()
            .prefix("berth-pyupstream-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("upstream.log");
        let mut child = Command::new(require_tool("python3"))
            .arg(&script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start tests/proxy/upstream.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Hashing a 500 MB layer takes Python a few seconds.
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let info: Value = match serde_json::from_str(&line) {
            Ok(info) => info,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "upstream.py {args:?} did not start ({e}): {line:?}\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        PyUpstream {
            child,
            url: format!("http://127.0.0.1:{}", info["port"]),
            info,
            log,
            _dir: dir,
        }
    }

    fn get(&self, key: &str) -> String {
        self.info[key].as_str().expect(key).to_owned()
    }

    /// What it was asked so far: `token_requests` and `requests` (`method`, `path`, `status`).
    fn stats(&self) -> Value {
        http()
            .get(format!("{}/_stats", self.url))
            .send()
            .and_then(|r| r.json())
            .expect("upstream.py /_stats")
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- upstream.py log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Debian's docker-registry (distribution 2.8) over TLS (a certificate from `berth certs init`) with htpasswd Basic
/// auth for one user.
struct DockerRegistry {
    child: Child,
    host: String,
    ca: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    fn start(user: &str, password: &str) -> DockerRegistry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("berth-docker-registry-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let certs = d.join("certs");
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["certs", "init", "--out"])
            .arg(&certs)
            .args(["--ip", "127.0.0.1"])
            .output()
            .expect("berth certs init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut htpasswd = Command::new(require_tool("htpasswd"));
        htpasswd.args(["-Bbn", user, password]);
        write_file(d.join("htpasswd"), ok(htpasswd));
        let host = format!("127.0.0.1:{}", free_port());
        write_file(
            d.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {host}\n  secret: berth-tests\n  \
                 tls:\n    certificate: {crt}\n    key: {key}\nauth:\n  htpasswd:\n    realm: berth-tests\n    path: {pw}\n",
                root = d.join("data").display(),
                crt = certs.join("tls.crt").display(),
                key = certs.join("tls.key").display(),
                pw = d.join("htpasswd").display(),
            ),
        );
        let log = d.join("registry.log");
        let file = fs::File::create(&log).expect("log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start docker-registry");
        let ca = certs.join("ca.crt");
        let registry = DockerRegistry {
            child,
            host,
            ca,
            log,
            _dir: dir,
        };
        let pem = fs::read(&registry.ca).expect("ca.crt");
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .build()
            .expect("client");
        poll_until(
            Duration::from_secs(30),
            "docker-registry to ask for credentials",
            || {
                client
                    .get(format!("https://{}/v2/", registry.host))
                    .send()
                    .ok()
                    .filter(|r| r.status() == StatusCode::UNAUTHORIZED)
            },
        );
        registry
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- docker-registry log ---\n{}", self.log());
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// coreutils' sha256sum fed as bytes arrive (the tests are built without optimisation; sha256sum is fast).
struct Sha256Sum(Child);

impl Sha256Sum {
    fn new() -> Sha256Sum {
        Sha256Sum(
            Command::new("sha256sum")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("sha256sum"),
        )
    }

    fn write(&mut self, data: &[u8]) {
        self.0
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(data)
            .expect("feed sha256sum");
    }

    fn finish(mut self) -> String {
        drop(self.0.stdin.take());
        let out = self.0.wait_with_output().expect("sha256sum");
        let text = String::from_utf8_lossy(&out.stdout);
        format!(
            "sha256:{}",
            text.split_whitespace().next().unwrap_or_default()
        )
    }
}

fn sha256_fast(data: &[u8]) -> String {
    let mut sum = Sha256Sum::new();
    sum.write(data);
    sum.finish()
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    fs::File::open("/dev/urandom")
        .expect("urandom")
        .take(len as u64)
        .read_to_end(&mut bytes)
        .expect("read urandom");
    assert_eq!(bytes.len(), len);
    bytes
}

/// Where berth keeps a blob (README's on-disk layout).
fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Lines of a berth request log (`%a "%r" %s %b %Dms "<identity>"`) for `GET <path>`, whatever the HTTP version.
fn count_gets(log: &str, path: &str) -> usize {
    let needle = format!("\"GET {path} HTTP/");
    log.lines().filter(|line| line.contains(&needle)).count()
}

fn digest_of(response: Response, what: &str) -> String {
    assert_eq!(response.status(), StatusCode::OK, "{what}");
    header(response.headers(), "docker-content-digest")
}

/// Asserts a proxy error: status, OCI code, and a message naming the upstream; returns the message.
#[track_caller]
fn expect_upstream_error(response: Response, status: u16, code: &str, upstream: &str) -> String {
    let message = expect_error(response, status, code);
    assert!(
        message.contains(&format!("upstream {upstream}")),
        "the message names upstream {upstream}: {message}"
    );
    message
}

// ---------------------------------------------------------------------------
// 1. First pull through the cache; served with the upstream stopped
// ---------------------------------------------------------------------------

#[test]
fn proxy_first_pull_is_cached_and_served_with_the_upstream_stopped() {
    let mut up = Berth::start(Options::default());
    let up_env = ClientEnv::new(&up);
    let digest = push_fixture(&up, &up_env, "team/app:v1");
    let proxy = start_proxy(&[berth_upstream("up", &up, "1s")], "", Options::default());
    let env = ClientEnv::new(&proxy.berth);
    let h = &proxy.berth.host;
    let image = format!("{h}/proxy/up/team/app:v1");

    // skopeo and podman pull through berth (TLS, berth's CA) from the upstream (TLS, its own CA).
    assert_eq!(
        env.inspect(&format!("docker://{image}"))["Digest"],
        json!(digest)
    );
    let first = env.path().join("first");
    ok(env.skopeo_copy(
        &[],
        &format!("docker://{image}"),
        &format!("dir:{}", first.display()),
    ));
    assert_eq!(
        sha256_fast(&fs::read(first.join("manifest.json")).expect("manifest")),
        digest
    );
    ok(env.reg_cmd("podman", &["pull"], &["-q", &image]));
    let pulled = ok(env.cmd(
        "podman",
        &["image", "inspect", "--format", "{{.Digest}}", &image],
    ));
    assert_eq!(pulled.trim(), digest);
    assert!(count_gets(&up.log(), "/v2/team/app/manifests/v1") >= 1);
    // containerd's mirror form names the same cached repository.
    assert_eq!(
        digest_of(
            proxy.api.get("/v2/team/app/manifests/v1?ns=up"),
            "?ns=up form"
        ),
        digest
    );
    // A client pushing into the proxied repository is refused, and says why.
    let push = run(
        env.skopeo_copy(
            &[],
            &format!("dir:{}", first.display()),
            &format!("docker://{h}/proxy/up/team/app:pushed"),
        ),
        Duration::from_secs(120),
    );
    assert!(!push.status.success(), "{}", push.describe());
    assert!(
        push.stderr.contains("read-only proxy of upstream up"),
        "{}",
        push.describe()
    );

    up.kill9();
    // By tag: past tagTtl the revalidation fails (upstream down) and the cached manifest is served all along.
    poll_until(
        Duration::from_secs(20),
        "berth to revalidate the tag and fall back to its cache",
        || {
            let response = proxy.api.get("/v2/proxy/up/team/app/manifests/v1");
            assert_eq!(digest_of(response, "cached tag"), digest);
            proxy
                .berth
                .log()
                .contains("because revalidation failed")
                .then_some(())
        },
    );
    // Real clients, with empty storage, by tag and by digest.
    let after = ClientEnv::new(&proxy.berth);
    assert_eq!(
        after.inspect(&format!("docker://{image}"))["Digest"],
        json!(digest)
    );
    let by_digest = format!("{h}/proxy/up/team/app@{digest}");
    let second = after.path().join("second");
    ok(after.skopeo_copy(
        &[],
        &format!("docker://{by_digest}"),
        &format!("dir:{}", second.display()),
    ));
    for file in files_under(&first) {
        let name = file.file_name().expect("name");
        assert_eq!(
            fs::read(second.join(name)).expect("same file pulled by digest"),
            fs::read(&file).expect("file"),
            "{name:?}"
        );
    }
    ok(after.reg_cmd("podman", &["pull"], &["-q", &by_digest]));
    assert_eq!(
        digest_of(
            proxy
                .api
                .get(&format!("/v2/team/app/manifests/{digest}?ns=up")),
            "by digest, ?ns=up"
        ),
        digest
    );
}

// ---------------------------------------------------------------------------
// 2. A moved tag is seen after tagTtl
// ---------------------------------------------------------------------------

#[test]
fn proxy_sees_a_moved_tag_after_tag_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let up = Berth::start(Options::default());
    let up_api = Api::new(&up);
    let (_, old) = up_api.push_image("team/moving", "v1", 1);
    let proxy = start_proxy(&[berth_upstream("up", &up, "2s")], "", plain());
    let path = "/v2/proxy/up/team/moving/manifests/v1";

    let seeded = Instant::now();
    assert_eq!(digest_of(proxy.api.get(path), "first pull"), old);
    let (_, new) = up_api.push_image("team/moving", "v1", 2);
    assert_ne!(old, new);

    // berth marked the tag fresh after `seeded`: an answer received less than TTL after `seeded` must be the old
    // digest, and the new one cannot come before TTL has passed since then.
    let mut old_within_ttl = 0;
    loop {
        let got = digest_of(proxy.api.get(path), "the moving tag");
        let since = seeded.elapsed();
        if got == new {
            assert!(
                since >= TTL,
                "the moved tag was served {since:?} after the first pull, before tagTtl"
            );
            break;
        }
        assert_eq!(got, old);
        if since < TTL {
            old_within_ttl += 1;
        }
        assert!(
            since < TTL + Duration::from_secs(15),
            "the moved tag was not seen {since:?} after the first pull"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        old_within_ttl > 0,
        "no request was answered within tagTtl (pushing upstream took too long to check)"
    );
    // The old image stays pullable by digest.
    assert_eq!(
        digest_of(
            proxy
                .api
                .get(&format!("/v2/proxy/up/team/moving/manifests/{old}")),
            "old digest"
        ),
        old
    );
}

// ---------------------------------------------------------------------------
// 3. Concurrent pulls share one upstream fetch
// ---------------------------------------------------------------------------

#[test]
fn proxy_concurrent_pulls_of_a_100mb_layer_fetch_it_once() {
    const CLIENTS: usize = 8;
    let up = Berth::start(Options::default());
    let up_api = Api::new(&up);
    let layer = Arc::new(random_bytes(100_000_000));
    let digest = sha256_fast(&layer);
    let response = up_api.post(
        &format!("/v2/team/big/blobs/uploads/?digest={digest}"),
        layer.to_vec(),
    );
    assert_eq!(response.status(), StatusCode::CREATED, "push upstream");
    let proxy = start_proxy(&[berth_upstream("up", &up, "1m")], "", plain());

    let url = proxy
        .api
        .url(&format!("/v2/proxy/up/team/big/blobs/{digest}"));
    let start = Arc::new(Barrier::new(CLIENTS));
    let pulls: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (url, layer, start) = (url.clone(), layer.clone(), start.clone());
            let client = proxy.berth.client();
            thread::spawn(move || {
                start.wait();
                let mut response = client.get(&url).send().expect("GET");
                assert_eq!(response.status(), StatusCode::OK, "client {i}");
                let mut buf = vec![0u8; 1 << 20];
                let mut offset = 0;
                loop {
                    let n = response
                        .read(&mut buf)
                        .unwrap_or_else(|e| panic!("client {i} at byte {offset}: {e}"));
                    if n == 0 {
                        break;
                    }
                    assert!(
                        offset + n <= layer.len() && buf[..n] == layer[offset..offset + n],
                        "client {i}: wrong bytes at {offset}"
                    );
                    offset += n;
                }
                assert_eq!(offset, layer.len(), "client {i}: length");
            })
        })
        .collect();
    for pull in pulls {
        pull.join().expect("a client failed");
    }
    // The upstream logs a request when its response ends.
    let blob_path = format!("/v2/team/big/blobs/{digest}");
    poll_until(Duration::from_secs(10), "the upstream's log line", || {
        (count_gets(&up.log(), &blob_path) > 0).then_some(())
    });
    assert_eq!(
        count_gets(&up.log(), &blob_path),
        1,
        "upstream blob fetches for {CLIENTS} concurrent pulls"
    );
    // Cached: a later pull does not ask the upstream either.
    let again = proxy
        .api
        .get(&format!("/v2/proxy/up/team/big/blobs/{digest}"))
        .bytes()
        .expect("cached body");
    assert!(again.len() == layer.len() && again[..] == layer[..]);
    assert_eq!(count_gets(&up.log(), &blob_path), 1);
}

// ---------------------------------------------------------------------------
// 4. Wrong bytes from the upstream: nothing cached, the client gets an error
// ---------------------------------------------------------------------------

#[test]
fn proxy_caches_nothing_when_the_upstream_serves_wrong_bytes() {
    let py = PyUpstream::start(&["--wrong-blob", "--layer-size", "2000000"]);
    let layer = py.get("layer_digest");
    let size = py.info["layer_size"].as_u64().expect("size") as usize;
    let wrong = http()
        .get(format!("{}/v2/x/blobs/{layer}", py.url))
        .send()
        .and_then(|r| r.bytes())
        .expect("the wrong bytes, straight from upstream.py");
    assert_eq!(wrong.len(), size);
    assert_ne!(sha256_fast(&wrong), layer);
    let proxy = start_proxy(
        &[upstream("bad", &py.url, &[("insecure", "true".into())])],
        "",
        plain(),
    );
    // The manifest is fine.
    assert_eq!(
        digest_of(
            proxy.api.get("/v2/proxy/bad/team/x/manifests/v1"),
            "manifest"
        ),
        py.get("manifest_digest")
    );
    // Each attempt fails: an error status, or a body broken off before its end. Never the wrong bytes as complete.
    for attempt in 0..2 {
        let response = proxy
            .api
            .get(&format!("/v2/proxy/bad/team/x/blobs/{layer}"));
        let status = response.status();
        if status == StatusCode::OK {
            match response.bytes() {
                Ok(body) => panic!(
                    "attempt {attempt}: a complete body of {} bytes (wrong bytes: {})",
                    body.len(),
                    body[..] == wrong[..]
                ),
                Err(e) => eprintln!("attempt {attempt}: body broken off as it should be: {e}"),
            }
        } else {
            expect_upstream_error(response, 502, "UNKNOWN", "bad");
        }
    }
    // Nothing of it stays: no blob, no leftover upload, no file holding the wrong bytes.
    let data = &proxy.berth.data_dir;
    poll_until(
        Duration::from_secs(10),
        "the failed uploads to be deleted",
        || files_under(&data.join("uploads")).is_empty().then_some(()),
    );
    assert!(!blob_file(data, &layer).exists());
    for file in files_under(data) {
        let len = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(
            len != size as u64 || fs::read(&file).expect("read")[..] != wrong[..],
            "{} holds the wrong bytes",
            file.display()
        );
    }
    assert!(proxy.berth.log().contains("nothing cached"));
}

// ---------------------------------------------------------------------------
// 5. Time to first byte of a 500 MB layer on a cold cache
// ---------------------------------------------------------------------------

#[test]
fn proxy_streams_a_cold_500mb_layer_before_it_is_all_fetched() {
    // upstream.py streams at most 150 MB/s, so the whole transfer takes seconds whatever the machine.
    let py = PyUpstream::start(&[
        "--layer-size",
        "500000000",
        "--seed",
        "5",
        "--rate",
        "150000000",
    ]);
    let proxy = start_proxy(
        &[upstream("slow", &py.url, &[("insecure", "true".into())])],
        "",
        plain(),
    );
    let layer = py.get("layer_digest");
    let started = Instant::now();
    let mut response = proxy
        .api
        .get(&format!("/v2/proxy/slow/team/big/blobs/{layer}"));
    assert_eq!(response.status(), StatusCode::OK);
    let mut buf = vec![0u8; 1 << 20];
    let mut sum = Sha256Sum::new();
    let mut first_byte = None;
    let mut total = 0u64;
    loop {
        let n = response.read(&mut buf).expect("read the layer");
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| started.elapsed());
        sum.write(&buf[..n]);
        total += n as u64;
    }
    let all = started.elapsed();
    let first_byte = first_byte.expect("some bytes");
    assert_eq!(total, 500_000_000);
    assert_eq!(sum.finish(), layer);
    eprintln!(
        "500 MB layer through a cold cache: first byte after {first_byte:?}, all after {all:?}"
    );
    assert!(
        first_byte * 4 < all,
        "first byte after {first_byte:?}, all after {all:?}: berth does not stream while it fetches"
    );
}

// ---------------------------------------------------------------------------
// 6. Bearer token auth
// ---------------------------------------------------------------------------

#[test]
fn proxy_fetches_a_bearer_token_once_and_reuses_it() {
    let py = PyUpstream::start(&["--token", "puller:s3cret", "--layer-size", "300000"]);
    let proxy = start_proxy(
        &[
            // tagTtl 0s: every pull by tag revalidates with the upstream (one more authorized request). (1ms was
            // flaky: two pulls can land within a millisecond.)
            upstream(
                "tok",
                &py.url,
                &[
                    ("insecure", "true".into()),
                    ("username", "puller".into()),
                    ("password", "s3cret".into()),
                    ("tagTtl", "0s".into()),
                ],
            ),
            upstream(
                "tokbad",
                &py.url,
                &[
                    ("insecure", "true".into()),
                    ("username", "puller".into()),
                    ("password", "wrong".into()),
                ],
            ),
        ],
        "",
        plain(),
    );
    let manifest_digest = py.get("manifest_digest");
    for _ in 0..3 {
        assert_eq!(
            digest_of(
                proxy.api.get("/v2/proxy/tok/team/app/manifests/v1"),
                "by tag"
            ),
            manifest_digest
        );
    }
    for key in ["config_digest", "layer_digest"] {
        let digest = py.get(key);
        let body = proxy
            .api
            .get(&format!("/v2/proxy/tok/team/app/blobs/{digest}"))
            .bytes()
            .expect("blob");
        assert_eq!(sha256_fast(&body), digest, "{key}");
    }
    let stats = py.stats();
    assert_eq!(stats["token_requests"], 1, "{stats}");
    let authorized = stats["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["status"] == 200)
        .count();
    // GET manifest, 2 HEAD revalidations, 2 blobs.
    assert!(authorized >= 5, "{stats}");

    // Credentials the token endpoint refuses: a clear error naming the upstream, no 500.
    let message = expect_upstream_error(
        proxy.api.get("/v2/proxy/tokbad/team/app/manifests/v1"),
        502,
        "UNKNOWN",
        "tokbad",
    );
    assert!(message.contains("token"), "{message}");
    assert!(
        !message.contains("127.0.0.1") && !message.contains("/token"),
        "the token realm is the upstream's internal address, for the log only: {message}"
    );
    assert_eq!(py.stats()["token_requests"], 2);
}

#[test]
fn proxy_survives_a_token_whose_expires_in_overflows_the_clock() {
    let py = PyUpstream::start(&[
        "--token",
        "puller:s3cret",
        "--token-expires-in",
        "18446744073709551615",
    ]);
    let proxy = start_proxy(
        &[upstream(
            "tok",
            &py.url,
            &[
                ("insecure", "true".into()),
                ("username", "puller".into()),
                ("password", "s3cret".into()),
            ],
        )],
        "",
        plain(),
    );
    assert_eq!(
        digest_of(
            proxy.api.get("/v2/proxy/tok/team/app/manifests/v1"),
            "by tag"
        ),
        py.get("manifest_digest")
    );
    assert!(
        !proxy.berth.log().contains("panicked"),
        "{}",
        proxy.berth.log()
    );
}

// ---------------------------------------------------------------------------
// 7. Basic auth: docker-registry with htpasswd; containerd pulls docker.io through berth
// ---------------------------------------------------------------------------

#[test]
fn proxy_basic_auth_with_docker_registry_and_containerd_mirror() {
    let registry = DockerRegistry::start("puller", "pw-good");
    let ca = format!("'{}'", registry.ca.display());
    let url = format!("https://{}", registry.host);
    let proxy = start_proxy(
        &[
            // Named after the host containerd sends in ?ns=.
            upstream(
                "docker.io",
                &url,
                &[
                    ("caFile", ca.clone()),
                    ("username", "puller".into()),
                    ("password", "pw-good".into()),
                ],
            ),
            upstream(
                "badauth",
                &url,
                &[
                    ("caFile", ca),
                    ("username", "puller".into()),
                    ("password", "pw-bad".into()),
                ],
            ),
        ],
        "",
        Options::default(),
    );
    // Push a real (gzip tar) image into the registry: skopeo trusts both CAs.
    let env = ClientEnv::new(&proxy.berth);
    fs::copy(&registry.ca, env.certs.join("registry.crt")).expect("registry CA");
    let mut layout = OciLayout::new(env.path().join("layout"));
    let fixture = layout.add_simple_image(
        "x",
        &[("org.example.test", "docker-registry")],
        &[("hello.txt", b"hello through berth\n")],
    );
    ok(env.skopeo_copy(
        &["--dest-creds", "puller:pw-good"],
        &format!("oci:{}:x", layout.dir.display()),
        &format!("docker://{}/library/hello:v1", registry.host),
    ));
    let h = &proxy.berth.host;

    // skopeo through berth; `hello` is `library/hello` on the docker.io upstream.
    let info = env.inspect(&format!("docker://{h}/proxy/docker.io/hello:v1"));
    assert_eq!(info["Digest"], json!(fixture.digest));
    assert_eq!(info["Labels"]["org.example.test"], "docker-registry");

    // containerd: a hosts.toml for docker.io whose mirror is berth; containerd adds ?ns=docker.io itself. The
    // `server` it falls back to when the mirror fails is a closed loopback port, never the real Docker Hub.
    let daemon = Containerd::start();
    let hosts = daemon.dir.path().join("hosts.d");
    write_file(
        hosts.join("docker.io/hosts.toml"),
        format!(
            "server = \"https://127.0.0.1:{closed}\"\n\n[host.\"https://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
            closed = free_port(),
            ca = proxy.berth.ca_file().display()
        ),
    );
    let reference = "docker.io/library/hello:v1";
    ok(daemon.ctr(&[
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        hosts.to_str().expect("path"),
        reference,
    ]));
    assert_eq!(
        daemon.listed_digest(reference),
        Some(fixture.digest.clone())
    );
    let check = ok(daemon.ctr(&["images", "check", &format!("name=={reference}")]));
    assert!(check.contains("complete"), "ctr images check: {check}");
    assert!(
        proxy
            .berth
            .log()
            .contains("/v2/library/hello/manifests/v1?ns=docker.io"),
        "containerd pulled through berth's ?ns= form"
    );
    assert!(
        registry.log().contains("berth/"),
        "berth asked the registry"
    );

    // A wrong password: a clear error naming the upstream, never a 500.
    let message = expect_upstream_error(
        proxy
            .api
            .get("/v2/proxy/badauth/library/hello/manifests/v1"),
        502,
        "UNKNOWN",
        "badauth",
    );
    assert!(message.contains("credentials"), "{message}");
    expect_upstream_error(
        proxy.api.get(&format!(
            "/v2/proxy/badauth/library/hello/blobs/{}",
            fixture.config_digest
        )),
        502,
        "UNKNOWN",
        "badauth",
    );
    let refused = run(
        env.skopeo(
            "inspect",
            &[&format!("docker://{h}/proxy/badauth/library/hello:v1")],
        ),
        Duration::from_secs(120),
    );
    // containers/image prints no body of a 5xx answer, only its status: a gateway error, not a 500.
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("502 Bad Gateway"),
        "{}",
        refused.describe()
    );
}

// ---------------------------------------------------------------------------
// 8. Upstream errors: 404, unreachable, 429
// ---------------------------------------------------------------------------

#[test]
fn proxy_passes_on_upstream_errors_without_a_500() {
    let up = Berth::start(Options::default());
    let up_api = Api::new(&up);
    let (_, digest) = up_api.push_image("team/app", "v1", 3);
    let limited = PyUpstream::start(&["--too-many-requests"]);
    let proxy = start_proxy(
        &[
            berth_upstream("up", &up, "1m"),
            upstream("down", &format!("https://127.0.0.1:{}", free_port()), &[]),
            upstream("limited", &limited.url, &[("insecure", "true".into())]),
        ],
        "",
        plain(),
    );
    let api = &proxy.api;
    let missing = format!("sha256:{}", "0".repeat(64));

    // Not found upstream: the spec's codes.
    expect_error(
        api.get("/v2/proxy/up/team/nothing/manifests/v1"),
        404,
        "MANIFEST_UNKNOWN",
    );
    expect_error(
        api.get("/v2/proxy/up/team/app/manifests/v2"),
        404,
        "MANIFEST_UNKNOWN",
    );
    expect_error(
        api.get(&format!("/v2/proxy/up/team/app/manifests/{missing}")),
        404,
        "MANIFEST_UNKNOWN",
    );
    expect_error(
        api.get(&format!("/v2/proxy/up/team/app/blobs/{missing}")),
        404,
        "BLOB_UNKNOWN",
    );
    assert_eq!(
        api.head(&format!("/v2/proxy/up/team/app/blobs/{missing}"))
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        digest_of(api.get("/v2/proxy/up/team/app/manifests/v1"), "present"),
        digest
    );

    // Unreachable with nothing cached: 502/503 with an OCI body naming the upstream.
    for path in [
        "/v2/proxy/down/team/app/manifests/v1".to_owned(),
        format!("/v2/proxy/down/team/app/blobs/{digest}"),
        "/v2/team/app/manifests/v1?ns=down".to_owned(),
    ] {
        let response = api.get(&path);
        let status = response.status().as_u16();
        assert!(status == 502 || status == 503, "{path}: {status}");
        expect_upstream_error(response, status, "UNKNOWN", "down");
    }

    // Rate limited: 429 passed on with the upstream's Retry-After.
    for path in [
        "/v2/proxy/limited/team/app/manifests/v1".to_owned(),
        format!("/v2/proxy/limited/team/app/blobs/{digest}"),
    ] {
        let response = api.get(&path);
        assert_eq!(header(response.headers(), "retry-after"), "42", "{path}");
        expect_upstream_error(response, 429, "TOOMANYREQUESTS", "limited");
    }
    assert!(!proxy.berth.log().contains("panicked"));
}

#[test]
fn proxy_unreachable_upstream_503_does_not_show_the_upstream_request_url() {
    let port = free_port();
    let proxy = start_proxy(
        &[upstream(
            "down",
            &format!("http://127.0.0.1:{port}"),
            &[("insecure", "true".into())],
        )],
        "",
        plain(),
    );
    let digest = format!("sha256:{}", "1".repeat(64));
    for path in [
        "/v2/proxy/down/team/app/manifests/v1".to_owned(),
        format!("/v2/proxy/down/team/app/manifests/{digest}"),
        format!("/v2/proxy/down/team/app/blobs/{digest}"),
        "/v2/proxy/down/team/app/tags/list".to_owned(),
        "/v2/team/app/manifests/v1?ns=down".to_owned(),
    ] {
        let message = expect_upstream_error(proxy.api.get(&path), 503, "UNKNOWN", "down");
        assert!(
            !message.contains(&port.to_string())
                && !message.contains("127.0.0.1")
                && !message.contains("http"),
            "{path}: the client sees the upstream's name, not its address: {message}"
        );
        assert!(message.contains("unreachable"), "{path}: {message}");
    }
    // The operator still gets the whole cause.
    let log = proxy.berth.log();
    assert!(
        log.contains(&format!("127.0.0.1:{port}/v2/team/app/manifests/v1")),
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// 9. Proxied repositories are read-only
// ---------------------------------------------------------------------------

#[test]
fn proxy_refuses_push_and_delete_with_unsupported() {
    let up = Berth::start(Options::default());
    let up_api = Api::new(&up);
    let (manifest, digest) = up_api.push_image("team/app", "v1", 4);
    let proxy = start_proxy(&[berth_upstream("up", &up, "1m")], "", plain());
    let api = &proxy.api;
    assert_eq!(
        digest_of(api.get("/v2/proxy/up/team/app/manifests/v1"), "pull"),
        digest
    );
    let layer = serde_json::from_slice::<Value>(&manifest).expect("manifest")["layers"][0]
        ["digest"]
        .as_str()
        .expect("layer")
        .to_owned();
    let writes: Vec<(Method, String)> = vec![
        (Method::POST, "/v2/proxy/up/team/app/blobs/uploads/".into()),
        (
            Method::POST,
            format!("/v2/proxy/up/team/app/blobs/uploads/?digest={layer}"),
        ),
        (
            Method::PATCH,
            "/v2/proxy/up/team/app/blobs/uploads/some-id".into(),
        ),
        (Method::PUT, "/v2/proxy/up/team/app/manifests/v2".into()),
        (Method::DELETE, "/v2/proxy/up/team/app/manifests/v1".into()),
        (
            Method::DELETE,
            format!("/v2/proxy/up/team/app/manifests/{digest}"),
        ),
        (
            Method::DELETE,
            format!("/v2/proxy/up/team/app/blobs/{layer}"),
        ),
        (Method::POST, "/v2/team/app/blobs/uploads/?ns=up".into()),
        (Method::DELETE, "/v2/team/app/manifests/v1?ns=up".into()),
    ];
    for (method, path) in writes {
        let response = api
            .client
            .request(method.clone(), api.url(&path))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .expect("request");
        let message = expect_error(response, 405, "UNSUPPORTED");
        assert!(
            message.contains("read-only proxy of upstream up"),
            "{method} {path}: {message}"
        );
    }
    // Nothing changed, here or upstream.
    assert_eq!(
        digest_of(api.get("/v2/proxy/up/team/app/manifests/v1"), "after"),
        digest
    );
    assert_eq!(
        digest_of(up_api.get("/v2/team/app/manifests/v1"), "upstream"),
        digest
    );
    assert_eq!(
        api.get(&format!("/v2/proxy/up/team/app/blobs/{layer}"))
            .status(),
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------
// 10. maxSize: least recently used proxied blobs are evicted, pushed content never
// ---------------------------------------------------------------------------

#[test]
fn proxy_max_size_evicts_least_recently_used_blobs_never_pushed_ones() {
    const SIZE: usize = 3_000_000;
    let up = Berth::start(Options::default());
    let up_api = Api::new(&up);
    let blobs: Vec<(Vec<u8>, String)> = (0..4)
        .map(|i| {
            // content() ignores a seed's lowest bit: odd seeds only.
            let bytes = content(SIZE, 101 + 2 * i);
            let digest = up_api.push_blob("team/lru", &bytes);
            (bytes, digest)
        })
        .collect();
    // Room for three of the four.
    let proxy = start_proxy(
        &[berth_upstream("up", &up, "1m")],
        "  maxSize: 10MB\n",
        plain(),
    );
    let data = proxy.berth.data_dir.clone();
    // Pushed content in a normal repository: never counted, never evicted.
    let local = content(SIZE, 201);
    let local_digest = proxy.api.push_blob("local/app", &local);

    let pull = |i: usize| {
        let (bytes, digest) = &blobs[i];
        let body = proxy
            .api
            .get(&format!("/v2/proxy/up/team/lru/blobs/{digest}"))
            .bytes()
            .expect("blob");
        assert!(body[..] == bytes[..], "blob {i}");
    };
    let upstream_gets =
        |i: usize| count_gets(&up.log(), &format!("/v2/team/lru/blobs/{}", blobs[i].1));
    let cached = |i: usize| blob_file(&data, &blobs[i].1).exists();
    let [a, b, c, d] = [0, 1, 2, 3];

    pull(a);
    pull(b);
    pull(c);
    assert!(cached(a) && cached(b) && cached(c));
    pull(a); // now b is the least recently used
    pull(d); // 12 MB > 10 MB: b goes
             // Gone from disk, and logged (after the deletion).
    let evicted = |i: usize| {
        let logged = format!("evicted proxied blob {}", blobs[i].1);
        (!cached(i) && proxy.berth.log().contains(&logged)).then_some(())
    };
    poll_until(
        Duration::from_secs(10),
        "the LRU blob to be evicted",
        || evicted(b),
    );
    assert!(cached(a), "a was used recently and must stay");
    assert!(cached(c) && cached(d));

    // b comes back from the upstream when asked; a never left the cache.
    pull(b);
    poll_until(Duration::from_secs(10), "b fetched again upstream", || {
        (upstream_gets(b) == 2).then_some(())
    });
    assert_eq!(upstream_gets(a), 1);
    // Now c is the least recently used.
    poll_until(
        Duration::from_secs(10),
        "the next LRU blob to be evicted",
        || evicted(c),
    );
    assert!(cached(a) && cached(b) && cached(d));

    // The pushed blob is still there and served.
    assert!(blob_file(&data, &local_digest).exists());
    let body = proxy
        .api
        .get(&format!("/v2/local/app/blobs/{local_digest}"))
        .bytes()
        .expect("local blob");
    assert!(body[..] == local[..]);
}

// ---------------------------------------------------------------------------
// 11. The mutating webhook treats a configured upstream as available
// ---------------------------------------------------------------------------

#[test]
fn proxy_upstream_makes_a_when_available_rewrite_apply() {
    let up = Berth::start(Options::default());
    let policy_dir = tempfile::tempdir().expect("tempdir");
    let policy = policy_dir.path().join("policy.yaml");
    write_file(
        &policy,
        r#"rewrites:
  - name: via-up
    match: 'registry\.example/(.+)'
    replace: '127.0.0.1:5050/proxy/up/$1'
    when: available
  - name: via-unconfigured
    match: 'other\.example/(.+)'
    replace: '127.0.0.1:5050/proxy/elsewhere/$1'
    when: available
"#,
    );
    let proxy = start_proxy(
        &[berth_upstream("up", &up, "1m")],
        "",
        Options {
            extra_args: vec!["--policy-file".into(), policy.display().to_string()],
            ..Options::default()
        },
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pod-mutate.json");
    let mut review: Value =
        serde_json::from_str(&fs::read_to_string(fixture).expect("fixture")).expect("json");
    review["request"]["object"]["spec"] = json!({"containers": [
        {"name": "web", "image": "registry.example/team/app:1"},
        {"name": "tools", "image": "other.example/tools/x:2"},
    ]});
    let response = proxy
        .api
        .client
        .post(proxy.api.url("/mutate"))
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .expect("POST /mutate");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().expect("review");
    let answer = &answer["response"];
    assert_eq!(answer["allowed"], true);
    let patch = crate::admission::patch_of(answer).expect("a patch");
    let ops = patch.as_array().expect("ops");
    assert_eq!(
        ops[0],
        json!({"op": "replace", "path": "/spec/containers/0/image", "value": "127.0.0.1:5050/proxy/up/team/app:1"})
    );
    assert!(
        !ops.iter()
            .any(|op| op["path"] == "/spec/containers/1/image"),
        "an unconfigured upstream is not available: {patch}"
    );
    let warnings = answer["warnings"].to_string();
    assert!(
        warnings.contains("proxy/elsewhere/tools/x:2") && warnings.contains("left unchanged"),
        "{warnings}"
    );
    // Deciding fetched nothing.
    assert!(!proxy.berth.data_dir.join("repositories/proxy").exists());
    assert_eq!(count_gets(&up.log(), "/v2/team/app/manifests/1"), 0);
}
