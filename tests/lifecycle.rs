//! The server's life cycle against the real `berth` binary: SIGKILL in the middle of uploads and a restart on the
//! same data, graceful shutdown on SIGTERM/SIGINT with a request in flight, certificate reload without a restart,
//! and the `--config` file.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use reqwest::blocking::{Body, Client};
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::StatusCode;

use crate::api::{content, expect_error, files_under, header, sha256, Api};
use crate::support::{poll_until, write_file, Berth, Options};

const MIB: usize = 1 << 20;

/// A request body that trickles out in `piece`-byte pieces, sleeping `delay` before each, and that stops once
/// `pause_at` bytes are out: it reports on `reached` and blocks until `release` says go on (then it continues) or
/// is dropped (then the body fails, as a client cut off mid-request would).
struct SlowBody {
    data: Vec<u8>,
    pos: usize,
    piece: usize,
    delay: Duration,
    pause_at: usize,
    gate: Option<(Sender<()>, Receiver<()>)>,
}

impl SlowBody {
    /// The body and (reached, release) for its pause.
    fn new(
        data: Vec<u8>,
        piece: usize,
        delay: Duration,
        pause_at: usize,
    ) -> (SlowBody, Receiver<()>, Sender<()>) {
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let body = SlowBody {
            data,
            pos: 0,
            piece,
            delay,
            pause_at,
            gate: Some((reached_tx, release_rx)),
        };
        (body, reached_rx, release_tx)
    }
}

impl Read for SlowBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.pause_at {
            if let Some((reached, release)) = self.gate.take() {
                let _ = reached.send(());
                if release.recv().is_err() {
                    return Err(io::Error::other("request body cut off by the test"));
                }
            }
        }
        let limit = if self.pos < self.pause_at {
            self.pause_at
        } else {
            self.data.len()
        };
        let into_piece = self.pos % self.piece;
        let n = buf.len().min(self.piece - into_piece).min(limit - self.pos);
        if n > 0 && into_piece == 0 && !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `PATCH` one chunk with its `Content-Range`; asserts 202 and the new `Range`; returns the next location.
fn patch_chunk(api: &Api, location: &str, offset: usize, chunk: &[u8]) -> String {
    let response = api
        .client
        .patch(api.url(location))
        .header(
            CONTENT_RANGE,
            format!("{offset}-{}", offset + chunk.len() - 1),
        )
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(chunk.to_vec())
        .send()
        .expect("PATCH");
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "PATCH {offset}+{}",
        chunk.len()
    );
    assert_eq!(
        header(response.headers(), RANGE.as_str()),
        format!("0-{}", offset + chunk.len() - 1)
    );
    header(response.headers(), LOCATION.as_str())
}

/// The size an upload holds according to `GET <location>` (which must answer 204 with `Range: 0-<last>`).
fn upload_status(api: &Api, location: &str) -> usize {
    let response = api.get(location);
    assert_eq!(response.status(), StatusCode::NO_CONTENT, "GET {location}");
    let range = header(response.headers(), RANGE.as_str());
    let last = range
        .strip_prefix("0-")
        .and_then(|last| last.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("GET {location}: Range {range:?}"));
    // `0-0` is both "empty" and "one byte": the API cannot tell them apart, and no caller here needs to.
    if last == 0 {
        0
    } else {
        last + 1
    }
}

/// Asserts `repo` serves `digest` with exactly `bytes`.
#[track_caller]
fn assert_blob(api: &Api, repo: &str, digest: &str, bytes: &[u8]) {
    let response = api.get(&format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {repo}@{digest}");
    let body = response.bytes().expect("blob body");
    assert_eq!(body.len(), bytes.len(), "size of {repo}@{digest}");
    assert_eq!(sha256(&body), digest, "content of {repo}@{digest}");
}

/// An upload that is cut off by the SIGKILL: where it is, how much the server held at the kill.
struct Interrupted {
    repo: String,
    location: String,
    bytes: Vec<u8>,
    held: usize,
}

#[test]
fn kill9_during_concurrent_uploads_then_restart_and_resume() {
    const COMPLETE: usize = 4;
    const INTERRUPT: usize = 4;
    let mut berth = Berth::start(Options::default());
    let outside_before = berth.files_outside_data_dir();
    let deadline = Duration::from_secs(120);

    // Four uploads complete (chunked PATCHes, last chunk in the closing PUT) and report their blob; four send
    // 2..5 whole chunks and then stop half-way through the next PATCH's body, and report where they are.
    let (done_tx, done_rx) = mpsc::channel::<(String, String, Vec<u8>)>();
    let (paused_tx, paused_rx) = mpsc::channel::<(usize, String, Vec<u8>, usize)>();
    let mut releases: Vec<Sender<()>> = Vec::new();
    let mut workers = Vec::new();
    for i in 0..COMPLETE {
        let api = Api::new(&berth);
        let done_tx = done_tx.clone();
        workers.push(thread::spawn(move || {
            let repo = format!("crash/done-{i}");
            let bytes = content(3 * MIB + 1000 * i + 7, 700 + i as u64);
            let digest = sha256(&bytes);
            let mut location = api.start_upload(&repo);
            let chunks: Vec<&[u8]> = bytes.chunks(MIB).collect();
            let (last, whole) = chunks.split_last().expect("chunks");
            let mut offset = 0;
            for chunk in whole {
                location = patch_chunk(&api, &location, offset, chunk);
                offset += chunk.len();
            }
            let response = api
                .client
                .put(api.url(&format!("{location}?digest={digest}")))
                .header(
                    CONTENT_RANGE,
                    format!("{offset}-{}", offset + last.len() - 1),
                )
                .body(last.to_vec())
                .send()
                .expect("closing PUT");
            assert_eq!(response.status(), StatusCode::CREATED, "closing PUT {repo}");
            done_tx.send((repo, digest, bytes)).expect("report");
        }));
    }
    for i in 0..INTERRUPT {
        let api = Api::new(&berth);
        let paused_tx = paused_tx.clone();
        let repo = format!("crash/cut-{i}");
        let bytes = content(16 * MIB + 13 * i, 800 + i as u64);
        let whole_chunks = 2 + i;
        let offset = whole_chunks * MIB;
        let (body, reached, release) = SlowBody::new(
            bytes[offset..offset + MIB].to_vec(),
            64 * 1024,
            Duration::ZERO,
            MIB / 2,
        );
        releases.push(release);
        workers.push(thread::spawn(move || {
            let mut location = api.start_upload(&repo);
            for n in 0..whole_chunks {
                location = patch_chunk(&api, &location, n * MIB, &bytes[n * MIB..(n + 1) * MIB]);
            }
            let url = api.url(&location);
            let client = api.client.clone();
            let patch = thread::spawn(move || {
                client
                    .patch(url)
                    .header(CONTENT_RANGE, format!("{offset}-{}", offset + MIB - 1))
                    .body(Body::sized(body, MIB as u64))
                    .send()
            });
            reached
                .recv_timeout(Duration::from_secs(60))
                .expect("the PATCH body reaches its pause");
            paused_tx
                .send((i, location, bytes, offset + MIB / 2))
                .expect("report");
            // The server dies under this request: it must not succeed.
            if let Ok(response) = patch.join().expect("PATCH thread") {
                panic!("interrupted PATCH answered {}", response.status());
            }
        }));
    }
    drop((done_tx, paused_tx));

    let start = Instant::now();
    let remaining = || deadline.saturating_sub(start.elapsed());
    let mut completed = Vec::new();
    for _ in 0..COMPLETE {
        completed.push(
            done_rx
                .recv_timeout(remaining())
                .expect("every completing upload finishes before the kill"),
        );
    }
    let checker = Api::new(&berth);
    let mut interrupted = Vec::new();
    for _ in 0..INTERRUPT {
        let (i, location, bytes, held) = paused_rx
            .recv_timeout(remaining())
            .expect("every interrupted upload pauses mid-PATCH before the kill");
        // Everything sent so far has reached the upload's file: the server is in the middle of this PATCH.
        poll_until(
            Duration::from_secs(30),
            "the paused PATCH's bytes to be stored",
            || (upload_status(&checker, &location) == held).then_some(()),
        );
        interrupted.push(Interrupted {
            repo: format!("crash/cut-{i}"),
            location,
            bytes,
            held,
        });
    }
    drop(checker);

    berth.kill9();
    // Let the cut-off request bodies fail and the workers end.
    drop(releases);
    for worker in workers {
        worker.join().expect("upload worker");
    }
    // What a crash in the middle of an atomic write leaves behind: restart must clear it.
    write_file(
        berth
            .data_dir
            .join("tmp")
            .join("0123456789abcdef0123456789abcdef"),
        b"half-written",
    );

    berth.restart();
    let tmp = files_under(&berth.data_dir.join("tmp"));
    assert!(tmp.is_empty(), "tmp/ after the restart: {tmp:?}");
    let api = Api::new(&berth);
    for (repo, digest, bytes) in &completed {
        assert_blob(&api, repo, digest, bytes);
    }
    for upload in &interrupted {
        let digest = sha256(&upload.bytes);
        expect_error(
            api.get(&format!("/v2/{}/blobs/{digest}", upload.repo)),
            404,
            "BLOB_UNKNOWN",
        );
        assert_eq!(
            upload_status(&api, &upload.location),
            upload.held,
            "{}: the upload holds what the server had stored at the kill",
            upload.repo
        );
    }
    // Resume each from the offset the server reports, in 1 MiB chunks, and close with an empty PUT.
    for upload in &interrupted {
        let mut location = upload.location.clone();
        let mut offset = upload.held;
        for chunk in upload.bytes[offset..].chunks(MIB) {
            location = patch_chunk(&api, &location, offset, chunk);
            offset += chunk.len();
        }
        let digest = sha256(&upload.bytes);
        let response = api
            .client
            .put(api.url(&format!("{location}?digest={digest}")))
            .send()
            .expect("closing PUT");
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "closing PUT of the resumed {}",
            upload.repo
        );
        assert_blob(&api, &upload.repo, &digest, &upload.bytes);
    }
    // The completed blobs are still intact, nothing is left in progress, nothing was written elsewhere.
    for (repo, digest, bytes) in &completed {
        assert_blob(&api, repo, digest, bytes);
    }
    let uploads = files_under(&berth.data_dir.join("uploads"));
    assert!(uploads.is_empty(), "uploads left: {uploads:?}");
    let tmp = files_under(&berth.data_dir.join("tmp"));
    assert!(tmp.is_empty(), "tmp/ at the end: {tmp:?}");
    assert_eq!(
        berth.files_outside_data_dir(),
        outside_before,
        "files created outside the data directory"
    );
    assert!(!berth.log().contains("panicked"), "server panicked");
}

/// Sends `signal` (TERM or INT) to berth.
fn send_signal(berth: &Berth, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(berth.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed: {status}");
}

/// With a PATCH trickling in, `signal` makes berth refuse new connections, finish the PATCH, and exit 0.
fn graceful_shutdown(signal: &str, plain_http: bool, seed: u64) {
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
    let mut berth = Berth::start(Options {
        plain_http,
        extra_args: vec!["--shutdown-timeout".into(), "5s".into()],
        ..Options::default()
    });
    let api = Api::new(&berth);
    let repo = "graceful";
    let location = api.start_upload(repo);
    let bytes = content(MIB, seed);
    // 16 pieces of 64 KiB, 75 ms apart (about 1.2 s); paused after 4 until the signal has taken effect.
    let paused_at = 256 * 1024;
    let (body, reached, release) = SlowBody::new(
        bytes.clone(),
        64 * 1024,
        Duration::from_millis(75),
        paused_at,
    );
    let (result_tx, result_rx) = mpsc::channel();
    {
        let client = api.client.clone();
        let url = api.url(&location);
        let len = bytes.len();
        thread::spawn(move || {
            let result = client
                .patch(url)
                .header(CONTENT_RANGE, format!("0-{}", len - 1))
                .body(Body::sized(body, len as u64))
                .send()
                .map(|response| {
                    (
                        response.status(),
                        header(response.headers(), RANGE.as_str()),
                    )
                })
                .map_err(|e| format!("{e:?}"));
            let _ = result_tx.send(result);
        });
    }
    reached
        .recv_timeout(Duration::from_secs(30))
        .expect("the PATCH body reaches its pause");
    poll_until(
        Duration::from_secs(30),
        "the first part of the PATCH to be stored",
        || (upload_status(&api, &location) == paused_at).then_some(()),
    );

    send_signal(&berth, signal);
    let signalled = Instant::now();
    let addr: SocketAddr = berth.host.parse().expect("host");
    poll_until(
        Duration::from_secs(3),
        "new connections to be refused after the signal",
        || match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    );
    release.send(()).expect("release the PATCH body");
    let (status, range) = result_rx
        .recv_timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(10))
        .expect("the in-flight PATCH gets an answer")
        .unwrap_or_else(|e| {
            panic!(
                "in-flight PATCH failed after SIG{signal}: {e}\n--- berth log ---\n{}",
                berth.log()
            )
        });
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "in-flight PATCH after SIG{signal}"
    );
    assert_eq!(range, format!("0-{}", bytes.len() - 1));
    assert!(
        signalled.elapsed() < SHUTDOWN_TIMEOUT,
        "the PATCH finished {:?} after SIG{signal}, past the shutdown timeout",
        signalled.elapsed()
    );
    let status = berth.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status after SIG{signal}");
    assert!(
        berth.log().contains("berth stopped"),
        "no clean stop logged:\n{}",
        berth.log()
    );

    // The PATCH that finished during shutdown is durable: restart and complete the upload.
    berth.restart();
    let api = Api::new(&berth);
    assert_eq!(upload_status(&api, &location), bytes.len());
    let digest = sha256(&bytes);
    let response = api
        .client
        .put(api.url(&format!("{location}?digest={digest}")))
        .send()
        .expect("closing PUT");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_blob(&api, repo, &digest, &bytes);
}

#[test]
fn sigterm_finishes_in_flight_request_and_exits_0() {
    graceful_shutdown("TERM", false, 900);
}

#[test]
fn sigint_finishes_in_flight_request_and_exits_0() {
    graceful_shutdown("INT", true, 901);
}

/// `GET /v2/` from a new client that trusts only `ca_pem` (a new connection, so a new TLS handshake: a pooled
/// HTTP/2 connection would keep the certificate it was opened with).
fn base_ok(ca_pem: &str, berth: &Berth) -> Result<(), String> {
    let client = Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    match client.get(format!("{}/v2/", berth.base_url)).send() {
        Ok(response) if response.status() == StatusCode::OK => Ok(()),
        Ok(response) => Err(format!("GET /v2/ -> {}", response.status())),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// Log lines that warn about `tls.crt`.
fn cert_warnings(berth: &Berth) -> usize {
    berth
        .log()
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("tls.crt"))
        .count()
}

#[test]
fn certificate_reload_without_restart() {
    let berth = Berth::start(Options::default());
    let old_ca = std::fs::read_to_string(berth.ca_file()).expect("ca.crt");
    base_ok(&old_ca, &berth).expect("the generated certificate is served");
    let (cert_path, key_path) = (
        berth.cert_dir.join("tls.crt"),
        berth.cert_dir.join("tls.key"),
    );

    // A broken tls.crt is refused with a warning, and the certificate in service stays, round after round.
    assert_eq!(cert_warnings(&berth), 0);
    write_file(&cert_path, b"this is not a certificate\n");
    poll_until(
        Duration::from_secs(20),
        "a warning about the broken tls.crt",
        || {
            base_ok(&old_ca, &berth).expect("old certificate while tls.crt is broken");
            (cert_warnings(&berth) >= 1).then_some(())
        },
    );
    poll_until(
        Duration::from_secs(20),
        "another reload round with the broken tls.crt",
        || {
            base_ok(&old_ca, &berth).expect("old certificate while tls.crt is broken");
            (cert_warnings(&berth) >= 2).then_some(())
        },
    );
    base_ok(&old_ca, &berth).expect("old certificate while tls.crt is broken");

    // A new pair from another CA, key first: clients of the new CA get through, clients of the old one no longer.
    let new_ca = berth::tls::generate_ca("rotated CA").expect("generate CA");
    let (cert, key) =
        berth::tls::issue_serving_cert(&new_ca, &["localhost".into(), "127.0.0.1".into()])
            .expect("issue serving certificate");
    assert!(
        base_ok(&new_ca.cert, &berth).is_err(),
        "the new CA is trusted before the rotation"
    );
    write_file(&key_path, key);
    write_file(&cert_path, cert);
    poll_until(
        Duration::from_secs(20),
        "a client trusting only the new CA to get through",
        || base_ok(&new_ca.cert, &berth).ok(),
    );
    let refused = base_ok(&old_ca, &berth).expect_err("the old CA still verifies after the reload");
    assert!(
        refused.to_lowercase().contains("certificate"),
        "old-CA client fails for another reason: {refused}"
    );
    assert!(berth.log().contains("reloaded the serving certificate"));
    // The same process served throughout.
    assert_eq!(
        berth.log().matches("berth listening on").count(),
        1,
        "berth restarted"
    );
}

#[test]
fn config_file_plain_http_and_upload_max_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.yaml");
    write_file(&config, "plainHttp: true\nuploadMaxAge: 1h\n");
    let mut berth = Berth::start(Options {
        plain_http: true,
        plain_http_in_config: true,
        extra_args: vec!["--config".into(), config.display().to_string()],
        ..Options::default()
    });
    // Plain HTTP (the harness reached /healthz over http://), no TLS, no certificates generated.
    let api = Api::new(&berth);
    assert_eq!(api.get("/v2/").status(), StatusCode::OK);
    let tls = Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    assert!(tls
        .get(format!("https://{}/v2/", berth.host))
        .send()
        .is_err());
    assert!(berth.files_outside_data_dir().is_empty());

    // uploadMaxAge 1h: at the next start, an upload untouched for 2 h is expired, one of 30 min is kept.
    let old = api.start_upload("aged");
    let young = api.start_upload("aged");
    for (location, age) in [(&old, 2 * 3600), (&young, 1800)] {
        patch_chunk(&api, location, 0, b"some bytes");
        let id = location.rsplit('/').next().expect("upload id");
        let data = berth.data_dir.join("uploads").join(id).join("data");
        std::fs::File::options()
            .write(true)
            .open(&data)
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(age)))
            .unwrap_or_else(|e| panic!("set mtime of {}: {e}", data.display()));
    }
    berth.restart();
    poll_until(
        Duration::from_secs(20),
        "the sweep at start to expire the 2 h old upload",
        || {
            berth
                .log()
                .contains("expired 1 uploads older than 3600s")
                .then_some(())
        },
    );
    let api = Api::new(&berth);
    expect_error(api.get(&old), 404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(upload_status(&api, &young), 10);
}

#[test]
fn invalid_config_file_fails_fast_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.yaml");
    write_file(
        &config,
        "plainHttp: true\nuploadMaxAge: 1h\nuplodMaxAge: 2h\n",
    );
    let data_dir = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--cert-dir")
        .arg(dir.path().join("certs"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let deadline = Duration::from_secs(10);
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("berth output");
            panic!(
                "berth still running {deadline:?} after start with a bad config file: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("berth output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "berth accepted an unknown key: {stderr}"
    );
    assert!(
        stderr.contains("uplodMaxAge"),
        "the error does not name the unknown key: {stderr}"
    );
    assert!(
        stderr.contains(&config.display().to_string()),
        "the error does not name the file: {stderr}"
    );
    assert!(!data_dir.exists(), "berth started on a bad config");
}

/// A monolithic upload (`POST ?digest=`) cut off by a crash can never be resumed (nobody knows its id): it is
/// deleted at the next start instead of staying for --upload-max-age. An ordinary session is kept.
#[test]
fn interrupted_monolithic_upload_is_deleted_at_start() {
    use std::io::Write as _;
    let mut berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    let session = api.start_upload("crash/mono");
    patch_chunk(&api, &session, 0, b"kept bytes");
    let blob = content(4 * MIB, 11);
    let mut stream = TcpStream::connect(&berth.host).expect("connect");
    write!(
        stream,
        "POST /v2/crash/mono/blobs/uploads/?digest={} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        sha256(&blob),
        berth.host,
        blob.len()
    )
    .expect("write head");
    stream.write_all(&blob[..MIB]).expect("write a part");
    let uploads = berth.data_dir.join("uploads");
    let stored = |dir: &std::path::Path| -> Vec<(String, u64)> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let size = e.path().join("data").metadata().map_or(0, |m| m.len());
                        (e.file_name().to_string_lossy().into_owned(), size)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    poll_until(
        Duration::from_secs(10),
        "the monolithic upload's first MiB on disk",
        || (stored(&uploads).iter().any(|(_, size)| *size == MIB as u64)).then_some(()),
    );
    berth.restart();
    let session_id = session.rsplit('/').next().expect("upload id").to_owned();
    let left: Vec<String> = stored(&uploads).into_iter().map(|(id, _)| id).collect();
    assert_eq!(left, [session_id]);
    assert!(berth.log().contains("deleted 1 interrupted uploads"));
    let api = Api::new(&berth);
    assert_eq!(upload_status(&api, &session), 10);
    drop(stream);
}

/// Unmounts a test's tmpfs when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// On ENOSPC every /readyz probe left an empty file in tmp/, and a failed upload start left a data file without
/// its info. Now a full disk leaves nothing behind. (Mounts a 1 MiB tmpfs: needs root, like tests/run.sh.)
#[test]
fn a_full_disk_leaves_no_debris() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mounting a tmpfs failed: this test needs root"
    );
    let _unmount = Mounted(dir.path().to_owned());
    let data_dir = dir.path().join("data");
    let berth = Berth::start(Options {
        plain_http: true,
        data_dir: Some(data_dir.clone()),
        ..Options::default()
    });
    let api = Api::new(&berth);
    assert_eq!(api.get("/readyz").status(), StatusCode::OK);
    let mut filler = std::fs::File::create(dir.path().join("filler")).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while filler.write_all(&block).is_ok() {}
    drop(filler);
    for _ in 0..3 {
        assert_eq!(api.get("/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let refused = api.post("/v2/full/blobs/uploads/", Vec::new());
    assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let entries = |sub: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(data_dir.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    assert_eq!(entries("tmp"), Vec::<std::path::PathBuf>::new());
    assert_eq!(entries("uploads"), Vec::<std::path::PathBuf>::new());
    std::fs::remove_file(dir.path().join("filler")).expect("free the disk");
    assert_eq!(api.get("/readyz").status(), StatusCode::OK);
    drop(berth);
}
