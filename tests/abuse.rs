//! Slow and hostile clients against the real binary on loopback: trickling uploads, readers that never read,
//! unfinished buffered bodies, floods of upload sessions, raw TCP connections that never start TLS. Each test uses a
//! bounded number of connections, checks that a normal pull, push and admission call still complete promptly while
//! the abuse runs, and ends its connections itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::header::{LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;

use crate::api::{content, sha256, Api};
use crate::support::{poll_until, Berth, Options};

/// How long a normal request may take while the abuse runs.
const PROMPT: Duration = Duration::from_secs(5);

fn plain(extra_args: &[&str]) -> Berth {
    Berth::start(Options {
        plain_http: true,
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    })
}

/// A field of /proc/<pid>/status, as a number (the first word of its value).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn threads(berth: &Berth) -> u64 {
    proc_status(berth.pid(), "Threads")
}

/// How long the blocking pool keeps an idle thread (tokio's default).
const POOL_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// berth's threads, polled until they are fewer than `limit` or the idle blocking-pool threads have had time to
/// exit: a burst of short tasks starts threads that linger for [`POOL_KEEP_ALIVE`], and only threads still there
/// after it are held by something. Returns the last count.
fn threads_settled_below(berth: &Berth, limit: u64) -> u64 {
    let deadline = Instant::now() + POOL_KEEP_ALIVE + Duration::from_secs(5);
    loop {
        let count = threads(berth);
        if count < limit || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many connections wait in the accept queue of the loopback listener on `port` (`/proc/net/tcp`: for a
/// listening socket, `rx_queue` is the accept queue's length).
fn accept_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A");
        let queues = fields.get(4).filter(|_| listening)?;
        u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
    })
}

fn rss_mib(berth: &Berth) -> u64 {
    proc_status(berth.pid(), "VmRSS") / 1024
}

fn open_fds(berth: &Berth) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", berth.pid()))
        .map(|d| d.count())
        .expect("/proc fd")
}

/// A raw loopback connection to berth with a deadline on every read and write.
fn connect(berth: &Berth) -> TcpStream {
    let stream = TcpStream::connect(&berth.host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream
}

/// Reads an HTTP/1.1 response head from a raw connection; returns the status and the head.
fn read_head(stream: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!(
                "reading a response head: {e} (so far {:?})",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    (status, head)
}

/// A normal pull, push and admission call, each within [`PROMPT`].
fn normal_traffic_is_prompt(berth: &Berth, seed: u64) {
    let client = berth.client();
    let base = &berth.base_url;
    let timed = |what: &str, run: &dyn Fn() -> StatusCode, expected: StatusCode| {
        let start = Instant::now();
        let status = run();
        assert_eq!(status, expected, "{what}");
        assert!(
            start.elapsed() < PROMPT,
            "{what} took {:?} while the abuse ran",
            start.elapsed()
        );
    };
    let blob = content(300_000, seed);
    let digest = sha256(&blob);
    let push = || {
        client
            .post(format!("{base}/v2/normal/blobs/uploads/?digest={digest}"))
            .body(blob.clone())
            .timeout(PROMPT * 2)
            .send()
            .map(|r| r.status())
            .unwrap_or_else(|e| panic!("push: {e}"))
    };
    timed("blob push", &push, StatusCode::CREATED);
    let pull = || {
        let response = client
            .get(format!("{base}/v2/normal/blobs/{digest}"))
            .timeout(PROMPT * 2)
            .send()
            .unwrap_or_else(|e| panic!("pull: {e}"));
        let status = response.status();
        let body = response.bytes().expect("pull body");
        assert!(body.as_ref() == blob.as_slice(), "pulled other bytes");
        status
    };
    timed("blob pull", &pull, StatusCode::OK);
    let review =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pod-create.json"))
            .expect("fixture");
    let admit = || {
        let response = client
            .post(format!("{base}/validate"))
            .header("content-type", "application/json")
            .body(review.clone())
            .timeout(PROMPT * 2)
            .send()
            .unwrap_or_else(|e| panic!("validate: {e}"));
        let status = response.status();
        let answer: Value = response.json().expect("review JSON");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        status
    };
    timed("admission /validate", &admit, StatusCode::OK);
}

/// Starts `n` upload sessions in `repo`; returns their paths.
fn start_uploads(api: &Api, repo: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| api.start_upload(repo)).collect()
}

/// Opens a chunked PATCH of `location` and sends its first byte; the body is left unfinished.
fn open_trickle(berth: &Berth, location: &str) -> TcpStream {
    let mut stream = connect(berth);
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n",
        berth.host
    )
    .expect("write PATCH");
    stream
}

/// About 260 uploads that trickled a byte every few seconds held two blocking threads each and filled the blocking
/// pool. Now a trickling upload holds no thread between its chunks.
#[test]
fn trickling_uploads_hold_no_thread_between_chunks() {
    let berth = plain(&[]);
    let api = Api::new(&berth);
    normal_traffic_is_prompt(&berth, 1);
    let before = threads(&berth);
    let mut tricklers: Vec<TcpStream> = start_uploads(&api, "abuse/trickle", 120)
        .iter()
        .map(|location| open_trickle(&berth, location))
        .collect();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(250));
        for stream in &mut tricklers {
            stream.write_all(b"1\r\ny\r\n").expect("trickle a byte");
        }
    }
    let during = threads_settled_below(&berth, before + 40);
    assert!(
        during < before + 40,
        "{} trickling uploads raised berth's threads from {before} to {during}",
        tricklers.len()
    );
    normal_traffic_is_prompt(&berth, 2);
    // The tricklers' bytes all arrived: finish one and check its size.
    let mut first = tricklers.swap_remove(0);
    first.write_all(b"0\r\n\r\n").expect("end body");
    let (status, head) = read_head(&mut first);
    assert_eq!(status, 202, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("range: 0-4\r\n"),
        "{head}"
    );
}

/// An upload that stops sending is answered (400 BLOB_UPLOAD_INVALID, saying why) after --body-idle-timeout, and the
/// upload keeps what earlier requests stored.
#[test]
fn a_stalled_upload_body_times_out() {
    let berth = plain(&["--body-idle-timeout", "1s"]);
    let api = Api::new(&berth);
    let location = api.start_upload("abuse/stall");
    let mut stream = open_trickle(&berth, &location);
    let start = Instant::now();
    let (status, head) = read_head(&mut stream);
    assert_eq!(status, 400, "{head}");
    let mut body = vec![0u8; 512];
    let n = stream.read(&mut body).expect("read body");
    let body = String::from_utf8_lossy(&body[..n]);
    assert!(
        body.contains("BLOB_UPLOAD_INVALID") && body.contains("no request body data for 1s"),
        "{body}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        start.elapsed()
    );
    // The failed request was rolled back; the session is still there.
    let response = api.get(&location);
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// Opens `n` connections that ask for a blob and never read the response (their receive buffer is tiny).
fn stalled_readers(berth: &Berth, digest: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut stream = connect(berth);
            socket2::SockRef::from(&stream)
                .set_recv_buffer_size(4096)
                .expect("SO_RCVBUF");
            write!(
                stream,
                "GET /v2/abuse/big/blobs/{digest} HTTP/1.1\r\nHost: {}\r\n\r\n",
                berth.host
            )
            .expect("write GET");
            stream
        })
        .collect()
}

/// About 500 clients that never read a blob response pinned a blocking thread and about 1.5 MB each. Now a
/// stalled reader holds its file and one chunk, no thread.
#[test]
fn stalled_blob_readers_hold_no_thread_and_little_memory() {
    let berth = plain(&[]);
    let api = Api::new(&berth);
    let blob = content(24 << 20, 3);
    let digest = api.push_blob("abuse/big", &blob);
    normal_traffic_is_prompt(&berth, 4);
    let (threads_before, rss_before, fds_before) =
        (threads(&berth), rss_mib(&berth), open_fds(&berth));
    let readers = stalled_readers(&berth, &digest, 150);
    // Every reader's response has started (its connection and file are open) before measuring.
    poll_until(
        Duration::from_secs(20),
        "the stalled responses to start",
        || (open_fds(&berth) >= fds_before + readers.len()).then_some(()),
    );
    let threads_during = threads_settled_below(&berth, threads_before + 20);
    let rss_during = rss_mib(&berth);
    assert!(
        threads_during < threads_before + 20,
        "{} stalled readers raised berth's threads from {threads_before} to {threads_during}",
        readers.len()
    );
    assert!(
        rss_during < rss_before + 120,
        "{} stalled readers raised berth's RSS from {rss_before} to {rss_during} MiB",
        readers.len()
    );
    normal_traffic_is_prompt(&berth, 5);
    drop(readers);
}

/// actix-web has no write timeout: a reader that stopped reading kept its response (and file) open for as long as
/// the kernel retried. `--send-timeout` (TCP_USER_TIMEOUT) now drops it.
#[test]
fn a_stalled_blob_reader_is_dropped_after_the_send_timeout() {
    let berth = plain(&["--send-timeout", "2s"]);
    let api = Api::new(&berth);
    let digest = api.push_blob("abuse/big", &content(24 << 20, 8));
    let fds_before = open_fds(&berth);
    let readers = stalled_readers(&berth, &digest, 10);
    poll_until(
        Duration::from_secs(20),
        "the stalled responses to start",
        || (open_fds(&berth) >= fds_before + 2 * readers.len()).then_some(()),
    );
    // Unacknowledged (zero-window) connections are dropped with their files.
    poll_until(
        Duration::from_secs(20),
        "the stalled connections to be dropped",
        || (open_fds(&berth) <= fds_before).then_some(()),
    );
    drop(readers);
}

/// Sends the head and `sent` bytes of a manifest PUT declaring `declared` bytes, and leaves it unfinished.
fn open_manifest_put(berth: &Berth, tag: &str, declared: usize, sent: usize) -> TcpStream {
    let mut stream = connect(berth);
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    write!(
        stream,
        "PUT /v2/abuse/manifests/{tag} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {declared}\r\n\r\n",
        berth.host
    )
    .expect("write head");
    // Past the budget, berth answers and stops reading: a write may then fail, which is the point.
    let _ = stream.write_all(&vec![b' '; sent]);
    stream
}

/// 100 unfinished 4 MiB manifest bodies took RSS to 444 MiB, with no time limit. Now the bodies being buffered
/// share a memory budget (past it: 429 TOOMANYREQUESTS with Retry-After) and must arrive within --body-timeout.
#[test]
fn unfinished_manifest_bodies_share_a_memory_budget_and_a_deadline() {
    let berth = plain(&["--body-memory", "16MiB", "--body-timeout", "3s"]);
    let rss_before = rss_mib(&berth);
    let start = Instant::now();
    // Manifests get half of 16 MiB: four 2 MiB bodies fit, the rest are refused.
    let mut streams: Vec<TcpStream> = (0..10)
        .map(|i| open_manifest_put(&berth, &format!("t{i}"), 4 << 20, 2 << 20))
        .collect();
    normal_traffic_is_prompt(&berth, 6);
    let mut statuses = Vec::new();
    for stream in &mut streams {
        let (status, head) = read_head(stream);
        if status == 429 {
            assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
        }
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    let timed_out = statuses.iter().filter(|&&s| s == 408).count();
    assert!(
        (5..=8).contains(&refused) && refused + timed_out == statuses.len(),
        "statuses {statuses:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the unfinished bodies were answered after {:?}",
        start.elapsed()
    );
    assert!(
        rss_mib(&berth) < rss_before + 64,
        "RSS grew from {rss_before} to {} MiB",
        rss_mib(&berth)
    );
    // The budget is given back: a manifest push works again.
    let api = Api::new(&berth);
    api.push_image("abuse/after", "v1", 7);
}

/// Admission reviews are capped at what the API server can send (4.5625 MiB), no longer 8 MiB.
#[test]
fn an_admission_review_larger_than_the_api_server_sends_is_refused() {
    let berth = plain(&[]);
    let client = berth.client();
    // A real review's start, then padding past the limit (the API server's JSON escaping can make a small pod's
    // review this large). The refusal must carry the review's uid, or the API server discards it as a failed call
    // and its failurePolicy (Ignore in the shipped install) admits the pod unchecked (review finding).
    let uid = "0d4e4b4c-1a2b-4c3d-8e9f-000000000001";
    let mut body = format!(
        r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"{uid}","object":{{"x":""#
    )
    .into_bytes();
    body.resize(5 << 20, b'<');
    let response = client
        .post(format!("{}/validate", berth.base_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("POST");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().expect("review JSON");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert_eq!(answer["response"]["uid"], uid, "{answer}");
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("limit of 4784128 bytes"), "{message}");
}

/// 40,000 upload sessions in 29 s were kept for 24 h. Now sessions are capped: past the cap, 429 TOOMANYREQUESTS
/// with Retry-After, for chunked and monolithic uploads alike, until a session ends.
#[test]
fn upload_sessions_are_capped() {
    let berth = plain(&["--max-upload-sessions", "3"]);
    let api = Api::new(&berth);
    let sessions = start_uploads(&api, "abuse/sessions", 3);
    let refused = api.post("/v2/abuse/sessions/blobs/uploads/", Vec::new());
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(RETRY_AFTER));
    let body: Value = refused.json().expect("envelope");
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
    let blob = b"monolithic".to_vec();
    let monolithic = api.post(
        &format!("/v2/abuse/sessions/blobs/uploads/?digest={}", sha256(&blob)),
        blob.clone(),
    );
    assert_eq!(monolithic.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(api.delete(&sessions[0]).status(), StatusCode::NO_CONTENT);
    let again = api.post("/v2/abuse/sessions/blobs/uploads/", Vec::new());
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert!(again.headers().contains_key(LOCATION));
}

/// The number of requests streaming into uploads at once is capped; past it, 429 at once instead of queueing.
#[test]
fn concurrent_upload_streams_are_capped() {
    let berth = plain(&["--max-concurrent-uploads", "2"]);
    let api = Api::new(&berth);
    let locations = start_uploads(&api, "abuse/streams", 3);
    let mut holding: Vec<TcpStream> = locations[..2]
        .iter()
        .map(|location| open_trickle(&berth, location))
        .collect();
    // Both streams are in (their first byte is stored) before the third one asks.
    for location in &locations[..2] {
        poll_until(
            Duration::from_secs(10),
            "the first byte to be stored",
            || {
                let response = api.get(location);
                (response
                    .headers()
                    .get("range")
                    .and_then(|v| v.to_str().ok())
                    == Some("0-0"))
                .then_some(())
            },
        );
    }
    let start = Instant::now();
    let refused = api
        .client
        .patch(api.url(&locations[2]))
        .body(b"z".to_vec())
        .send()
        .expect("PATCH");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(start.elapsed() < PROMPT);
    for stream in &mut holding {
        stream.write_all(b"0\r\n\r\n").expect("end body");
        let (status, head) = read_head(stream);
        assert_eq!(status, 202, "{head}");
    }
    let accepted = api
        .client
        .patch(api.url(&locations[2]))
        .body(b"z".to_vec())
        .send()
        .expect("PATCH");
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
}

/// 600 raw TCP connections that never start TLS made every new TLS client wait 2–2.5 s (actix's 256 handshakes a
/// worker). Now they do not delay a new client.
#[test]
fn idle_tcp_connections_do_not_delay_tls_clients() {
    let berth = Berth::start(Options {
        extra_args: vec!["--workers".into(), "2".into()],
        ..Options::default()
    });
    let idle: Vec<TcpStream> = (0..600).map(|_| connect(&berth)).collect();
    // The connections only load berth once it has accepted them: wait until none waits in the listen queue. (Not
    // "until berth holds 600 more sockets": on a loaded machine the first ones reach the TLS handshake timeout and
    // are closed before the last are accepted.)
    let port = berth
        .base_url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse::<u16>().ok())
        .expect("berth's port");
    poll_until(
        Duration::from_secs(30),
        "berth to accept 600 idle connections",
        || (accept_queue(port) == Some(0)).then_some(()),
    );
    for round in 0..3 {
        // A fresh client each time, so every request does a new handshake.
        let client = berth.client();
        let start = Instant::now();
        let response = client
            .get(format!("{}/healthz", berth.base_url))
            .timeout(Duration::from_secs(10))
            .send()
            .expect("GET /healthz");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            start.elapsed() < Duration::from_millis(1000),
            "round {round}: a TLS request took {:?} behind {} idle connections",
            start.elapsed(),
            idle.len()
        );
    }
    drop(idle);
}

/// The upload's size, from its status's `Range: 0-<last>` (the status of an upload that was never written says
/// `0-0` too; the tests here only ask about uploads holding bytes).
fn stored(api: &Api, location: &str) -> u64 {
    let response = api.get(location);
    assert_eq!(
        response.status(),
        StatusCode::NO_CONTENT,
        "status of {location}"
    );
    let range = crate::api::header(response.headers(), "range");
    range
        .strip_prefix("0-")
        .and_then(|last| last.parse::<u64>().ok())
        .map(|last| last + 1)
        .unwrap_or_else(|| panic!("Range {range:?}"))
}

/// Sends a request head announcing a 64 MiB body and the first 2 MiB of it on a raw connection; the rest never
/// comes.
fn open_large_body(berth: &Berth, method: &str, path: &str) -> TcpStream {
    let mut stream = connect(berth);
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        berth.host,
        64 << 20
    )
    .expect("write head");
    stream.write_all(&vec![b'E'; 2 << 20]).expect("write body");
    stream
}

/// Closes a connection with a reset (SO_LINGER 0), as a client that crashed or gave up does.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(stream);
}

/// Review of issue 9: a client that reset its connection mid-PATCH left the PATCH's bytes in the upload (actix
/// drops the request, so no rollback ran), and the write still in flight could land in the blob a closing PUT had
/// just committed, whose bytes then no longer matched its digest. The reset PATCH is rolled back to the size
/// acknowledged before it, and the blob holds exactly the acknowledged bytes.
#[test]
fn a_patch_reset_mid_body_is_rolled_back_and_never_reaches_the_blob() {
    let berth = plain(&[]);
    let api = Api::new(&berth);
    let location = api.start_upload("abuse/reset");
    let good = content(1000, 9);
    let acknowledged = api
        .client
        .patch(api.url(&location))
        .body(good.clone())
        .send()
        .expect("PATCH");
    assert_eq!(acknowledged.status(), StatusCode::ACCEPTED);
    let stream = open_large_body(&berth, "PATCH", &location);
    poll_until(
        Duration::from_secs(10),
        "the second PATCH's bytes to be stored",
        || (stored(&api, &location) > 1000).then_some(()),
    );
    reset(stream);
    poll_until(
        Duration::from_secs(10),
        "the reset PATCH to be rolled back to 1000 bytes",
        || (stored(&api, &location) == 1000).then_some(()),
    );
    let digest = sha256(&good);
    let separator = if location.contains('?') { '&' } else { '?' };
    let committed = api
        .client
        .put(api.url(&format!("{location}{separator}digest={digest}")))
        .send()
        .expect("PUT");
    assert_eq!(committed.status(), StatusCode::CREATED);
    let blob = api.get(&format!("/v2/abuse/reset/blobs/{digest}"));
    assert_eq!(blob.status(), StatusCode::OK);
    let bytes = blob.bytes().expect("blob body");
    assert!(
        bytes.as_ref() == good.as_slice(),
        "blob {digest} serves {} bytes with digest {}",
        bytes.len(),
        sha256(&bytes)
    );
}

/// Review of issue 9: a monolithic `POST ?digest=` cut off by a reset left its upload directory and its session
/// behind (with one session allowed, every later upload was refused). Both are gone once the request is.
#[test]
fn a_monolithic_push_reset_mid_body_leaves_no_upload() {
    let berth = plain(&["--max-upload-sessions", "1"]);
    let api = Api::new(&berth);
    let uploads = berth.data_dir.join("uploads");
    let holding = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|entry| {
                        entry
                            .path()
                            .join("data")
                            .metadata()
                            .is_ok_and(|m| m.len() > 0)
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let digest = sha256(b"never sent in full");
    let stream = open_large_body(
        &berth,
        "POST",
        &format!("/v2/abuse/reset-mono/blobs/uploads/?digest={digest}"),
    );
    poll_until(
        Duration::from_secs(10),
        "the monolithic push's bytes to be stored",
        || (holding(&uploads) == 1).then_some(()),
    );
    reset(stream);
    poll_until(
        Duration::from_secs(10),
        "the reset push's upload to be deleted",
        || {
            std::fs::read_dir(&uploads)
                .map(|entries| entries.count() == 0)
                .unwrap_or(false)
                .then_some(())
        },
    );
    // Its session is gone too: the one session allowed is free.
    api.start_upload("abuse/reset-mono");
}
