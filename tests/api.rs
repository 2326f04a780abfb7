//! The OCI distribution API over real sockets against the real `berth` binary (TLS with its generated CA unless a
//! test says otherwise): every endpoint, the error envelope, and bad input.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, CONTENT_RANGE, CONTENT_TYPE, LINK, LOCATION, RANGE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256, Sha512};

use crate::support::{poll_until, Berth, Options};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random content (xorshift), so a failure can be reproduced.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A thin client for the registry API.
pub struct Api {
    pub client: Client,
    pub base: String,
}

impl Api {
    pub fn new(berth: &Berth) -> Api {
        Api {
            client: berth.client(),
            base: berth.base_url.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().expect("GET")
    }

    pub fn head(&self, path: &str) -> Response {
        self.client.head(self.url(path)).send().expect("HEAD")
    }

    pub fn delete(&self, path: &str) -> Response {
        self.client.delete(self.url(path)).send().expect("DELETE")
    }

    pub fn post(&self, path: &str, body: Vec<u8>) -> Response {
        self.client
            .post(self.url(path))
            .body(body)
            .send()
            .expect("POST")
    }

    /// Starts an upload; returns its location.
    pub fn start_upload(&self, repo: &str) -> String {
        let response = self.post(&format!("/v2/{repo}/blobs/uploads/"), Vec::new());
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "start upload in {repo}"
        );
        header(response.headers(), LOCATION.as_str())
    }

    /// Pushes a blob with `POST ?digest=`; returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let response = self.post(
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            bytes.to_vec(),
        );
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "push blob to {repo}"
        );
        digest
    }

    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header(CONTENT_TYPE, media_type)
            .body(body.to_vec())
            .send()
            .expect("PUT manifest")
    }

    /// Pushes a config and one layer and an image manifest referencing them, tagged `tag`; returns the manifest's
    /// bytes and digest.
    pub fn push_image(&self, repo: &str, tag: &str, seed: u64) -> (Vec<u8>, String) {
        let config =
            serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed}))
                .expect("json");
        let layer = content(1000 + seed as usize, seed);
        let config_digest = self.push_blob(repo, &config);
        let layer_digest = self.push_blob(repo, &layer);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
        }))
        .expect("json");
        let response = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest);
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "push manifest {repo}:{tag}"
        );
        let digest = sha256(&manifest);
        assert_eq!(header(response.headers(), "docker-content-digest"), digest);
        (manifest, digest)
    }
}

pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts an error response: status and OCI code; returns the message.
#[track_caller]
pub fn expect_error(response: Response, status: u16, code: &str) -> String {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status for expected {code}"
    );
    let body: Value = response.json().expect("error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn tls_berth() -> (Berth, Api) {
    let berth = Berth::start(Options::default());
    let api = Api::new(&berth);
    (berth, api)
}

#[test]
fn base_endpoint_health_and_http2_over_tls() {
    let (berth, api) = tls_berth();
    let response = api.get("/v2/");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(response.headers(), "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(api.get("/healthz").status(), StatusCode::OK);
    let ready: Value = api.get("/readyz").json().expect("json");
    assert_eq!(ready["status"], "ready");

    // ALPN offers h2: a client that trusts the CA gets HTTP/2 without asking.
    let pem = std::fs::read(berth.ca_file()).expect("ca");
    let h2 = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .no_proxy()
        .build()
        .expect("client");
    let response = h2
        .get(format!("{}/v2/", berth.base_url))
        .send()
        .expect("GET over h2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    // The serving certificate is valid for localhost too.
    let localhost = berth.base_url.replace("127.0.0.1", "localhost");
    assert_eq!(
        h2.get(format!("{localhost}/v2/"))
            .send()
            .expect("localhost")
            .status(),
        StatusCode::OK
    );
    // A client that does not trust the CA is refused by its own verification.
    let untrusting = Client::builder().no_proxy().build().expect("client");
    assert!(untrusting
        .get(format!("{}/v2/", berth.base_url))
        .send()
        .is_err());
}

#[test]
fn blobs_push_pull_range_and_repository_visibility() {
    let (_berth, api) = tls_berth();
    let bytes = content(300_000, 1);
    let digest = api.push_blob("team/app", &bytes);

    let response = api.get(&format!("/v2/team/app/blobs/{digest}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "docker-content-digest"), digest);
    assert_eq!(header(response.headers(), "accept-ranges"), "bytes");
    assert_eq!(response.bytes().expect("body").as_ref(), &bytes[..]);

    let response = api.head(&format!("/v2/team/app/blobs/{digest}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(response.headers(), "content-length"),
        bytes.len().to_string()
    );

    let ranged = api
        .client
        .get(api.url(&format!("/v2/team/app/blobs/{digest}")))
        .header(RANGE, "bytes=100-199");
    let response = ranged.send().expect("range");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(response.headers(), CONTENT_RANGE.as_str()),
        format!("bytes 100-199/{}", bytes.len())
    );
    assert_eq!(response.bytes().expect("body").as_ref(), &bytes[100..200]);

    let suffix = api
        .client
        .get(api.url(&format!("/v2/team/app/blobs/{digest}")))
        .header(RANGE, "bytes=-10");
    assert_eq!(
        suffix
            .send()
            .expect("suffix")
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[bytes.len() - 10..]
    );
    let beyond = api
        .client
        .get(api.url(&format!("/v2/team/app/blobs/{digest}")))
        .header(RANGE, "bytes=999999-");
    let response = beyond.send().expect("beyond");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(response.headers(), CONTENT_RANGE.as_str()),
        format!("bytes */{}", bytes.len())
    );

    // Stored once, visible only where pushed: a guessed digest discloses nothing in another repository.
    expect_error(
        api.get(&format!("/v2/other/blobs/{digest}")),
        404,
        "BLOB_UNKNOWN",
    );
    assert_eq!(
        api.head(&format!("/v2/other/blobs/{digest}")).status(),
        StatusCode::NOT_FOUND
    );

    // Delete removes it from the repository only.
    api.push_blob("team/copy", &bytes);
    assert_eq!(
        api.delete(&format!("/v2/team/app/blobs/{digest}")).status(),
        StatusCode::ACCEPTED
    );
    expect_error(
        api.get(&format!("/v2/team/app/blobs/{digest}")),
        404,
        "BLOB_UNKNOWN",
    );
    expect_error(
        api.delete(&format!("/v2/team/app/blobs/{digest}")),
        404,
        "BLOB_UNKNOWN",
    );
    assert_eq!(
        api.get(&format!("/v2/team/copy/blobs/{digest}"))
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[..]
    );
}

#[test]
fn uploads_post_put_chunked_streamed_status_and_cancel() {
    let (_berth, api) = tls_berth();

    // POST then PUT with the whole body.
    let bytes = content(50_000, 2);
    let location = api.start_upload("up");
    let digest = sha256(&bytes);
    let response = api
        .client
        .put(api.url(&format!("{location}?digest={digest}")))
        .body(bytes.clone())
        .send()
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(response.headers(), LOCATION.as_str()),
        format!("/v2/up/blobs/{digest}")
    );
    assert_eq!(
        api.get(&format!("/v2/up/blobs/{digest}"))
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[..]
    );

    // Chunked with Content-Range, a status check between, an out-of-order chunk refused with what was received,
    // and the last chunk in the closing PUT.
    let bytes = content(3 * 65_536 + 17, 3);
    let digest = sha256(&bytes);
    let mut location = api.start_upload("up");
    let status = api.get(&location);
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(status.headers(), RANGE.as_str()), "0-0");
    let chunks: Vec<&[u8]> = bytes.chunks(65_536).collect();
    let mut offset = 0usize;
    for chunk in &chunks[..3] {
        let response = api
            .client
            .patch(api.url(&location))
            .header(
                CONTENT_RANGE,
                format!("{}-{}", offset, offset + chunk.len() - 1),
            )
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .expect("PATCH");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        offset += chunk.len();
        assert_eq!(
            header(response.headers(), RANGE.as_str()),
            format!("0-{}", offset - 1)
        );
        location = header(response.headers(), LOCATION.as_str());
    }
    let gap = api
        .client
        .patch(api.url(&location))
        .header(CONTENT_RANGE, format!("{}-{}", offset + 10, offset + 20))
        .body(vec![0u8; 11])
        .send()
        .expect("PATCH with a gap");
    assert_eq!(gap.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(gap.headers(), RANGE.as_str()),
        format!("0-{}", offset - 1)
    );
    let overlap = api
        .client
        .patch(api.url(&location))
        .header(CONTENT_RANGE, format!("0-{}", chunks[0].len() - 1))
        .body(chunks[0].to_vec())
        .send()
        .expect("PATCH overlapping");
    assert_eq!(overlap.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let status = api.get(&location);
    assert_eq!(
        header(status.headers(), RANGE.as_str()),
        format!("0-{}", offset - 1)
    );
    let last = chunks[3];
    let response = api
        .client
        .put(api.url(&format!("{location}?digest={digest}")))
        .header(
            CONTENT_RANGE,
            format!("{}-{}", offset, offset + last.len() - 1),
        )
        .body(last.to_vec())
        .send()
        .expect("closing PUT");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().unwrap_or_default()
    );
    assert_eq!(
        api.get(&format!("/v2/up/blobs/{digest}"))
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[..]
    );
    // A finished upload is gone.
    expect_error(api.get(&location), 404, "BLOB_UPLOAD_UNKNOWN");

    // Streamed PATCH without Content-Range (what docker does), then an empty closing PUT.
    let bytes = content(1_000_000, 4);
    let digest = sha256(&bytes);
    let location = api.start_upload("up");
    let response = api
        .client
        .patch(api.url(&location))
        .body(bytes.clone())
        .send()
        .expect("streamed PATCH");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(response.headers(), RANGE.as_str()),
        format!("0-{}", bytes.len() - 1)
    );
    let location = header(response.headers(), LOCATION.as_str());
    let response = api
        .client
        .put(api.url(&format!("{location}?digest={digest}")))
        .send()
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        api.get(&format!("/v2/up/blobs/{digest}"))
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[..]
    );

    // sha512 digests are verified too.
    let bytes = content(10_000, 5);
    let digest512 = format!("sha512:{}", hex::encode(Sha512::digest(&bytes)));
    let response = api.post(
        &format!("/v2/up/blobs/uploads/?digest={digest512}"),
        bytes.clone(),
    );
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        api.get(&format!("/v2/up/blobs/{digest512}"))
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[..]
    );
    let location = api.start_upload("up");
    let response = api
        .client
        .put(api.url(&format!("{location}?digest={digest512}")))
        .body(bytes.clone())
        .send();
    assert_eq!(response.expect("PUT").status(), StatusCode::CREATED);

    // Cancel.
    let location = api.start_upload("up");
    assert_eq!(api.delete(&location).status(), StatusCode::NO_CONTENT);
    expect_error(api.get(&location), 404, "BLOB_UPLOAD_UNKNOWN");
    expect_error(api.delete(&location), 404, "BLOB_UPLOAD_UNKNOWN");

    // An upload belongs to its repository.
    let location = api.start_upload("up");
    let elsewhere = location.replace("/v2/up/", "/v2/other/");
    expect_error(api.get(&elsewhere), 404, "BLOB_UPLOAD_UNKNOWN");
}

/// Issue 9: over HTTP/2 a streamed closing `PUT` has neither `Content-Length` nor `Transfer-Encoding`; berth took
/// it for bodiless, failed the digest and deleted the whole upload, chunks acknowledged with 202 included. The body
/// decides now; and a wrong digest on the `PUT` rolls back only that request's bytes, so the client can retry.
#[test]
fn http2_streamed_closing_put_commits_and_a_wrong_digest_keeps_earlier_chunks() {
    let (_berth, api) = tls_berth();
    let bytes = content(200_000, 41);
    let (first, rest) = bytes.split_at(70_000);
    let digest = sha256(&bytes);
    let streamed = |data: &[u8]| reqwest::blocking::Body::new(std::io::Cursor::new(data.to_vec()));
    let patch_first = |location: &str| {
        let response = api
            .client
            .patch(api.url(location))
            .header(CONTENT_RANGE, format!("0-{}", first.len() - 1))
            .body(first.to_vec())
            .send()
            .expect("PATCH");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    };
    let close = |location: &str, digest: &str| {
        let response = api
            .client
            .put(api.url(&format!("{location}?digest={digest}")))
            .body(streamed(rest))
            .send()
            .expect("PUT");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        response
    };

    // A streamed final chunk in the closing PUT completes the blob.
    let location = api.start_upload("h2/app");
    patch_first(&location);
    let response = close(&location, &digest);
    assert_eq!(response.status(), StatusCode::CREATED);
    let pulled = api.get(&format!("/v2/h2/app/blobs/{digest}"));
    assert_eq!(pulled.bytes().expect("body").as_ref(), &bytes[..]);

    // A wrong digest: 400, the acknowledged chunk stays, and the retried PUT completes the blob.
    let location = api.start_upload("h2/retry");
    patch_first(&location);
    expect_error(close(&location, &sha256(b"wrong")), 400, "DIGEST_INVALID");
    let status = api.get(&location);
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(status.headers(), RANGE.as_str()),
        format!("0-{}", first.len() - 1)
    );
    assert_eq!(close(&location, &digest).status(), StatusCode::CREATED);
    let pulled = api.get(&format!("/v2/h2/retry/blobs/{digest}"));
    assert_eq!(pulled.bytes().expect("body").as_ref(), &bytes[..]);
}

#[test]
fn digest_mismatch_stores_nothing() {
    let (berth, api) = tls_berth();
    let bytes = content(100_000, 6);
    let wrong = sha256(b"something else");
    let message = expect_error(
        api.post(
            &format!("/v2/bad/blobs/uploads/?digest={wrong}"),
            bytes.clone(),
        ),
        400,
        "DIGEST_INVALID",
    );
    assert!(
        message.contains(&sha256(&bytes)),
        "the message names the actual digest: {message}"
    );
    expect_error(
        api.get(&format!("/v2/bad/blobs/{wrong}")),
        404,
        "BLOB_UNKNOWN",
    );
    expect_error(
        api.get(&format!("/v2/bad/blobs/{}", sha256(&bytes))),
        404,
        "BLOB_UNKNOWN",
    );

    let location = api.start_upload("bad");
    let response = api
        .client
        .put(api.url(&format!("{location}?digest={wrong}")))
        .body(bytes)
        .send()
        .expect("PUT");
    expect_error(response, 400, "DIGEST_INVALID");
    // Only what the failed PUT appended is rolled back; the session (empty before it) stays, so the client can
    // retry the PUT or cancel.
    let status = api.get(&location);
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(status.headers(), RANGE.as_str()), "0-0");
    assert_eq!(api.delete(&location).status(), StatusCode::NO_CONTENT);
    expect_error(api.get(&location), 404, "BLOB_UPLOAD_UNKNOWN");

    // Nothing was committed: no blob file, no upload left behind.
    let blobs = files_under(&berth.data_dir.join("blobs"));
    assert!(blobs.is_empty(), "blobs stored after mismatches: {blobs:?}");
    assert!(files_under(&berth.data_dir.join("uploads")).is_empty());
}

pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn cross_repository_and_anonymous_mounts() {
    let (_berth, api) = tls_berth();
    let bytes = content(5_000, 7);
    let digest = api.push_blob("source/repo", &bytes);

    let response = api.post(
        &format!("/v2/target/blobs/uploads/?mount={digest}&from=source/repo"),
        Vec::new(),
    );
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(response.headers(), LOCATION.as_str()),
        format!("/v2/target/blobs/{digest}")
    );
    assert_eq!(header(response.headers(), "docker-content-digest"), digest);
    assert_eq!(
        api.get(&format!("/v2/target/blobs/{digest}"))
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[..]
    );

    // Not visible in `from`: an ordinary upload starts instead.
    let response = api.post(
        &format!("/v2/third/blobs/uploads/?mount={digest}&from=empty/repo"),
        Vec::new(),
    );
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(header(response.headers(), LOCATION.as_str()).starts_with("/v2/third/blobs/uploads/"));
    expect_error(
        api.get(&format!("/v2/third/blobs/{digest}")),
        404,
        "BLOB_UNKNOWN",
    );

    // Unknown digest: also an ordinary upload.
    let unknown = sha256(b"unknown");
    let response = api.post(
        &format!("/v2/third/blobs/uploads/?mount={unknown}&from=source/repo"),
        Vec::new(),
    );
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Anonymous mount (no `from`) into a repository that already holds the blob: mounted.
    let response = api.post(
        &format!("/v2/target/blobs/uploads/?mount={digest}"),
        Vec::new(),
    );
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(response.headers(), LOCATION.as_str()),
        format!("/v2/target/blobs/{digest}")
    );
}

/// Issue 9: an anonymous mount (`?mount=` without `from`) succeeded whenever any repository held the digest, so a
/// guessed digest revealed content of another repository and then copied it (walking every repository on the way).
/// Until authorization can say which repositories the caller may read, it mounts only what the target already
/// holds; otherwise it is an ordinary upload, which reveals nothing.
#[test]
fn anonymous_mount_is_not_an_existence_oracle() {
    let (_berth, api) = tls_berth();
    let bytes = content(5_000, 17);
    let digest = api.push_blob("private/secrets", &bytes);
    let unknown = sha256(b"never pushed");
    for guess in [&digest, &unknown] {
        let response = api.post(
            &format!("/v2/attacker/blobs/uploads/?mount={guess}"),
            Vec::new(),
        );
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "a stored and an unknown digest must look the same"
        );
        assert!(
            header(response.headers(), LOCATION.as_str())
                .starts_with("/v2/attacker/blobs/uploads/"),
            "an ordinary upload session"
        );
    }
    expect_error(
        api.get(&format!("/v2/attacker/blobs/{digest}")),
        404,
        "BLOB_UNKNOWN",
    );
}

#[test]
fn manifests_by_tag_and_digest_byte_for_byte() {
    let (_berth, api) = tls_berth();
    let (manifest, digest) = api.push_image("apps/web", "v1", 8);
    for reference in ["v1", digest.as_str()] {
        let response = api.get(&format!("/v2/apps/web/manifests/{reference}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(response.headers(), CONTENT_TYPE.as_str()),
            OCI_MANIFEST
        );
        assert_eq!(header(response.headers(), "docker-content-digest"), digest);
        assert_eq!(response.bytes().expect("body").as_ref(), &manifest[..]);
        let response = api.head(&format!("/v2/apps/web/manifests/{reference}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(response.headers(), "content-length"),
            manifest.len().to_string()
        );
        assert_eq!(header(response.headers(), "docker-content-digest"), digest);
    }

    // Whitespace and key order are the pusher's: stored and served exactly.
    let config = api.push_blob("apps/web", b"{}");
    let odd = format!(
        "{{\n  \"schemaVersion\" : 2,\n  \"config\": {{\"size\": 2, \"digest\": \"{config}\", \"mediaType\": \"{EMPTY_CONFIG}\"}},\n  \"layers\": [], \"mediaType\": \"{DOCKER_MANIFEST}\"\n}}\n"
    );
    let response = api.put_manifest("apps/web", "odd", DOCKER_MANIFEST, odd.as_bytes());
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = api.get("/v2/apps/web/manifests/odd");
    assert_eq!(
        header(response.headers(), CONTENT_TYPE.as_str()),
        DOCKER_MANIFEST
    );
    assert_eq!(response.bytes().expect("body").as_ref(), odd.as_bytes());

    // Push by digest, then by a tag that moves.
    let (second, second_digest) = api.push_image("apps/web", "v2", 9);
    let response = api.put_manifest("apps/web", &second_digest, OCI_MANIFEST, &second);
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(response.headers(), LOCATION.as_str()),
        format!("/v2/apps/web/manifests/{second_digest}")
    );
    let response = api.put_manifest("apps/web", "v1", OCI_MANIFEST, &second);
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        header(
            api.head("/v2/apps/web/manifests/v1").headers(),
            "docker-content-digest"
        ),
        second_digest
    );

    // A manifest is only visible in its repository.
    expect_error(
        api.get(&format!("/v2/apps/other/manifests/{digest}")),
        404,
        "MANIFEST_UNKNOWN",
    );
    expect_error(
        api.get("/v2/apps/web/manifests/missing"),
        404,
        "MANIFEST_UNKNOWN",
    );

    // Delete by tag removes the tag only; delete by digest removes the manifest and its tags.
    assert_eq!(
        api.delete("/v2/apps/web/manifests/odd").status(),
        StatusCode::ACCEPTED
    );
    expect_error(
        api.get("/v2/apps/web/manifests/odd"),
        404,
        "MANIFEST_UNKNOWN",
    );
    expect_error(
        api.delete("/v2/apps/web/manifests/odd"),
        404,
        "MANIFEST_UNKNOWN",
    );
    assert_eq!(
        api.delete(&format!("/v2/apps/web/manifests/{second_digest}"))
            .status(),
        StatusCode::ACCEPTED
    );
    expect_error(
        api.get(&format!("/v2/apps/web/manifests/{second_digest}")),
        404,
        "MANIFEST_UNKNOWN",
    );
    expect_error(
        api.get("/v2/apps/web/manifests/v2"),
        404,
        "MANIFEST_UNKNOWN",
    );
    expect_error(
        api.get("/v2/apps/web/manifests/v1"),
        404,
        "MANIFEST_UNKNOWN",
    );
    let tags: Value = api.get("/v2/apps/web/tags/list").json().expect("json");
    assert_eq!(tags["tags"], json!([]));
    // The first manifest is still there by digest.
    assert_eq!(
        api.get(&format!("/v2/apps/web/manifests/{digest}"))
            .status(),
        StatusCode::OK
    );
}

#[test]
fn manifest_validation() {
    let (_berth, api) = tls_berth();
    let config = api.push_blob("v/repo", b"{}");
    let layer = content(10, 10);
    let missing_layer = sha256(&layer);
    let image = |layer_digest: &str, size: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": size}],
        }))
        .expect("json")
    };
    // A layer that is not in this repository.
    let message = expect_error(
        api.put_manifest("v/repo", "t", OCI_MANIFEST, &image(&missing_layer, 10)),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    assert!(message.contains(&missing_layer), "{message}");
    // In another repository is not enough.
    api.push_blob("v/elsewhere", &layer);
    expect_error(
        api.put_manifest("v/repo", "t", OCI_MANIFEST, &image(&missing_layer, 10)),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    api.push_blob("v/repo", &layer);
    // A size that does not match the blob.
    expect_error(
        api.put_manifest("v/repo", "t", OCI_MANIFEST, &image(&missing_layer, 11)),
        400,
        "MANIFEST_INVALID",
    );
    assert_eq!(
        api.put_manifest("v/repo", "t", OCI_MANIFEST, &image(&missing_layer, 10))
            .status(),
        StatusCode::CREATED
    );

    // Non-distributable layers may be missing.
    let foreign = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "digest": sha256(b"elsewhere"), "size": 9, "urls": ["https://example.invalid/l"]}],
    }))
    .expect("json");
    assert_eq!(
        api.put_manifest("v/repo", "foreign", OCI_MANIFEST, &foreign)
            .status(),
        StatusCode::CREATED
    );

    let good = image(&missing_layer, 10);
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "not JSON",
            "t".into(),
            b"{not json".to_vec(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "unknown media type",
            "t".into(),
            good.clone(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "schema 1",
            "t".into(),
            br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#.to_vec(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "digest mismatch",
            sha256(b"other"),
            good.clone(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "bad reference",
            "bad%20tag".into(),
            good.clone(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "malformed digest reference",
            "sha256:..%2F..%2Fetc".into(),
            good.clone(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "too large",
            "t".into(),
            vec![b' '; 4 * 1024 * 1024 + 1],
            413,
            "SIZE_INVALID",
        ),
    ];
    for (what, reference, body, status, code) in cases {
        let media_type = if what == "unknown media type" {
            "application/x-unknown"
        } else {
            OCI_MANIFEST
        };
        let response = api.put_manifest("v/repo", &reference, media_type, &body);
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: Value = response.json().expect("JSON error");
        assert_eq!(body["errors"][0]["code"], code, "{what}: {body}");
    }

    // An index needs its children in the repository.
    let (child_bytes, child) = api.push_image("v/repo", "child", 11);
    let index = |children: &[&str]| {
        let manifests: Vec<Value> = children
            .iter()
            .map(|d| json!({"mediaType": OCI_MANIFEST, "digest": d, "size": child_bytes.len(), "platform": {"architecture": "amd64", "os": "linux"}}))
            .collect();
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        )
        .expect("json")
    };
    let unknown_child = sha256(b"no such manifest");
    expect_error(
        api.put_manifest(
            "v/repo",
            "multi",
            OCI_INDEX,
            &index(&[&child, &unknown_child]),
        ),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    let (_, other_child) = api.push_image("v/other", "x", 12);
    expect_error(
        api.put_manifest("v/repo", "multi", OCI_INDEX, &index(&[&other_child])),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    let body = index(&[&child]);
    assert_eq!(
        api.put_manifest("v/repo", "multi", OCI_INDEX, &body)
            .status(),
        StatusCode::CREATED
    );
    let response = api.get("/v2/v/repo/manifests/multi");
    assert_eq!(header(response.headers(), CONTENT_TYPE.as_str()), OCI_INDEX);
    assert_eq!(response.bytes().expect("body").as_ref(), &body[..]);
}

/// Issue 9: a manifest was accepted when *any* descriptor of a digest declared the right size, index children's
/// sizes were not checked, and a layer whose media type merely contained "nondistributable" could be missing.
#[test]
fn manifest_checks_every_descriptor_size_and_exact_non_distributable_types() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    let config = api.push_blob("sizes", b"{}");
    let layer = content(10, 31);
    let layer_digest = api.push_blob("sizes", &layer);
    let image = |layers: Value| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
            "layers": layers,
        }))
        .expect("json")
    };
    let layer_of = |size: usize| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": size});
    // The same blob twice, once with a wrong size.
    for layers in [
        json!([layer_of(10), layer_of(11)]),
        json!([layer_of(11), layer_of(10)]),
    ] {
        let message = expect_error(
            api.put_manifest("sizes", "twice", OCI_MANIFEST, &image(layers)),
            400,
            "MANIFEST_INVALID",
        );
        assert!(message.contains("11"), "{message}");
    }
    let good = image(json!([layer_of(10), layer_of(10)]));
    assert_eq!(
        api.put_manifest("sizes", "twice", OCI_MANIFEST, &good)
            .status(),
        StatusCode::CREATED
    );
    // An index child with a wrong size.
    let child = |size: usize| {
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha256(&good), "size": size}]}),
        )
        .expect("json")
    };
    expect_error(
        api.put_manifest("sizes", "index", OCI_INDEX, &child(good.len() + 1)),
        400,
        "MANIFEST_INVALID",
    );
    assert_eq!(
        api.put_manifest("sizes", "index", OCI_INDEX, &child(good.len()))
            .status(),
        StatusCode::CREATED
    );
    // An invented media type that contains the word does not exempt a missing blob.
    let missing = sha256(b"not pushed");
    let invented = image(
        json!([{"mediaType": "application/x.nondistributable.rootfs.foreign",
        "digest": missing, "size": 3, "urls": ["https://example.invalid/l"]}]),
    );
    expect_error(
        api.put_manifest("sizes", "invented", OCI_MANIFEST, &invented),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
}

/// Issue 9 (spec gap): `PUT /v2/<name>/manifests/<digest>?tag=a&tag=b` ignored the tags. It tags the manifest with
/// each and confirms them in `OCI-Tag`, so a manifest pushed by a non-canonical (sha512) digest can be tagged in
/// the same request.
#[test]
fn manifest_push_by_sha512_digest_with_tag_parameters() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    let config = api.push_blob("tagged", b"{}");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [],
    }))
    .expect("json");
    let digest = format!("sha512:{}", hex::encode(Sha512::digest(&manifest)));
    let response = api.put_manifest(
        "tagged",
        &format!("{digest}?tag=v1.2.3&tag=latest&tag=v1.2.3"),
        OCI_MANIFEST,
        &manifest,
    );
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(response.headers(), "docker-content-digest"), digest);
    let confirmed: Vec<&str> = response
        .headers()
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    assert_eq!(confirmed, ["v1.2.3", "latest"]);
    for tag in ["v1.2.3", "latest"] {
        let pulled = api.get(&format!("/v2/tagged/manifests/{tag}"));
        assert_eq!(pulled.status(), StatusCode::OK, "{tag}");
        assert_eq!(
            header(pulled.headers(), "docker-content-digest"),
            digest,
            "{tag}"
        );
        assert_eq!(
            pulled.bytes().expect("body").as_ref(),
            &manifest[..],
            "{tag}"
        );
    }
    let tags: Value = api.get("/v2/tagged/tags/list").json().expect("json");
    assert_eq!(tags["tags"], json!(["latest", "v1.2.3"]));

    // A bad tag refuses the whole push; tag parameters belong to a push by digest; the count is bounded.
    expect_error(
        api.put_manifest(
            "tagged",
            &format!("{digest}?tag=ok&tag=.bad"),
            OCI_MANIFEST,
            &manifest,
        ),
        400,
        "MANIFEST_INVALID",
    );
    expect_error(
        api.put_manifest("tagged", "v2?tag=other", OCI_MANIFEST, &manifest),
        400,
        "UNSUPPORTED",
    );
    let many: String = (0..101).map(|i| format!("tag=t{i}&")).collect();
    expect_error(
        api.put_manifest(
            "tagged",
            &format!("{digest}?{many}"),
            OCI_MANIFEST,
            &manifest,
        ),
        414,
        "UNSUPPORTED",
    );
    let tags: Value = api.get("/v2/tagged/tags/list").json().expect("json");
    assert_eq!(
        tags["tags"],
        json!(["latest", "v1.2.3"]),
        "refused pushes tag nothing"
    );
}

#[test]
fn referrers_with_subject_and_artifact_type_filter() {
    let (_berth, api) = tls_berth();
    let (_, subject) = api.push_image("sig/app", "v1", 13);
    let empty = api.push_blob("sig/app", b"{}");
    let artifact = |artifact_type: &str, subject: &str, note: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2},
            "layers": [{"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
            "annotations": {"note": note},
        }))
        .expect("json")
    };
    let sbom = artifact("application/spdx+json", &subject, "sbom");
    let signature = artifact(
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        &subject,
        "sig",
    );
    for body in [&sbom, &signature] {
        let digest = sha256(body);
        let response = api.put_manifest("sig/app", &digest, OCI_MANIFEST, body);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(header(response.headers(), "oci-subject"), subject);
    }

    let response = api.get(&format!("/v2/sig/app/referrers/{subject}"));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), CONTENT_TYPE.as_str()), OCI_INDEX);
    assert!(response.headers().get("oci-filters-applied").is_none());
    let index: Value = response.json().expect("json");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let found: BTreeSet<String> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["digest"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(found, BTreeSet::from([sha256(&sbom), sha256(&signature)]));
    let sbom_entry = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["digest"] == sha256(&sbom))
        .cloned();
    let sbom_entry = sbom_entry.unwrap_or_default();
    assert_eq!(sbom_entry["artifactType"], "application/spdx+json");
    assert_eq!(sbom_entry["annotations"]["note"], "sbom");
    assert_eq!(sbom_entry["size"], sbom.len());
    assert_eq!(sbom_entry["mediaType"], OCI_MANIFEST);

    let response = api.get(&format!(
        "/v2/sig/app/referrers/{subject}?artifactType=application/spdx%2Bjson"
    ));
    assert_eq!(
        header(response.headers(), "oci-filters-applied"),
        "artifactType"
    );
    let index: Value = response.json().expect("json");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
    assert_eq!(index["manifests"][0]["digest"], sha256(&sbom));

    // A subject that does not exist (yet) is fine, and an unknown subject lists nothing.
    let dangling = artifact("application/x.later", &sha256(b"future"), "later");
    assert_eq!(
        api.put_manifest("sig/app", "later", OCI_MANIFEST, &dangling)
            .status(),
        StatusCode::CREATED
    );
    let index: Value = api
        .get(&format!("/v2/sig/app/referrers/{}", sha256(b"nothing")))
        .json()
        .expect("json");
    assert_eq!(index["manifests"], json!([]));

    // Deleting a referrer removes it from the list.
    assert_eq!(
        api.delete(&format!("/v2/sig/app/manifests/{}", sha256(&sbom)))
            .status(),
        StatusCode::ACCEPTED
    );
    let index: Value = api
        .get(&format!("/v2/sig/app/referrers/{subject}"))
        .json()
        .expect("json");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
    expect_error(
        api.get("/v2/sig/app/referrers/sha256:nothex"),
        400,
        "DIGEST_INVALID",
    );
}

#[test]
fn tags_and_catalog_are_sorted_and_paginated() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    let (manifest, _) = api.push_image("list/a", "seed", 14);
    let tags = ["v10", "v2", "latest", "V1", "a_b", "1.0"];
    for tag in tags {
        assert_eq!(
            api.put_manifest("list/a", tag, OCI_MANIFEST, &manifest)
                .status(),
            StatusCode::CREATED
        );
    }
    let mut expected: Vec<&str> = tags.to_vec();
    expected.push("seed");
    expected.sort();
    let all: Value = api.get("/v2/list/a/tags/list").json().expect("json");
    assert_eq!(all["name"], "list/a");
    assert_eq!(all["tags"], json!(expected));

    // Walk the pages through the Link headers.
    let mut collected = Vec::new();
    let mut next = Some("/v2/list/a/tags/list?n=3".to_owned());
    while let Some(path) = next.take() {
        let response = api.get(&path);
        let link = header(response.headers(), LINK.as_str());
        let page: Value = response.json().expect("json");
        let items: Vec<String> = page["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        assert!(items.len() <= 3);
        collected.extend(items);
        if !link.is_empty() {
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            next = Some(
                link.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    assert_eq!(collected, expected);
    let zero = api.get("/v2/list/a/tags/list?n=0");
    assert!(zero.headers().get(LINK).is_none());
    assert_eq!(zero.json::<Value>().expect("json")["tags"], json!([]));
    let after: Value = api
        .get("/v2/list/a/tags/list?last=latest")
        .json()
        .expect("json");
    assert_eq!(after["tags"], json!(["seed", "v10", "v2"]));
    expect_error(
        api.get("/v2/list/a/tags/list?n=many"),
        400,
        "PAGINATION_NUMBER_INVALID",
    );
    expect_error(api.get("/v2/list/none/tags/list"), 404, "NAME_UNKNOWN");

    for repo in ["list/c", "list/b", "zzz", "list/a/nested"] {
        api.push_blob(repo, repo.as_bytes());
    }
    let catalog: Value = api.get("/v2/_catalog").json().expect("json");
    assert_eq!(
        catalog["repositories"],
        json!(["list/a", "list/a/nested", "list/b", "list/c", "zzz"])
    );
    let response = api.get("/v2/_catalog?n=2");
    assert_eq!(
        header(response.headers(), LINK.as_str()),
        "</v2/_catalog?n=2&last=list/a/nested>; rel=\"next\""
    );
    let page: Value = api
        .get("/v2/_catalog?n=2&last=list/a/nested")
        .json()
        .expect("json");
    assert_eq!(page["repositories"], json!(["list/b", "list/c"]));
}

/// Issue 9: a `Range` that cannot be used (a unit in capitals, garbage, several ranges) got 416; HTTP says the
/// unit is case-insensitive and an unusable range is ignored (200, the whole blob). A well-formed range outside the
/// blob stays 416.
#[test]
fn unusable_range_headers_get_the_whole_blob() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    let bytes = content(1000, 21);
    let digest = api.push_blob("ranges", &bytes);
    let get = |range: &str| {
        api.client
            .get(api.url(&format!("/v2/ranges/blobs/{digest}")))
            .header(RANGE, range)
            .send()
            .expect("GET")
    };
    let response = get("Bytes=10-19");
    assert_eq!(
        response.status(),
        StatusCode::PARTIAL_CONTENT,
        "Bytes=10-19"
    );
    assert_eq!(
        header(response.headers(), CONTENT_RANGE.as_str()),
        "bytes 10-19/1000"
    );
    assert_eq!(response.bytes().expect("body").as_ref(), &bytes[10..20]);
    for range in [
        "bytes=abc",
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=+1-2",
        "bytes=-",
    ] {
        let response = get(range);
        assert_eq!(response.status(), StatusCode::OK, "{range}");
        assert_eq!(
            header(response.headers(), CONTENT_RANGE.as_str()),
            "",
            "{range}"
        );
        assert_eq!(
            response.bytes().expect("body").as_ref(),
            &bytes[..],
            "{range}"
        );
    }
    let response = get("bytes=1000-");
    assert_eq!(
        header(response.headers(), CONTENT_RANGE.as_str()),
        "bytes */1000"
    );
    expect_error(response, 416, "UNSUPPORTED");
}

/// Issue 9: `Content-Range: 0-18446744073709551615` overflowed the chunk's length (a debug build panicked, a
/// release build wrapped and answered 202); `+0-+0` and `0-1/abc` were accepted. Each is a 416 that reports what the
/// upload holds, and the upload is unharmed.
#[test]
fn content_range_numbers_are_checked() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    let location = api.start_upload("chunks");
    let patch = |range: &str, body: &'static [u8]| {
        api.client
            .patch(api.url(&location))
            .header(CONTENT_RANGE, range)
            .body(body)
            .send()
            .expect("PATCH")
    };
    for range in ["0-18446744073709551615", "+0-+4", "0-4/abc", "0-4/3"] {
        let response = patch(range, b"hello");
        assert_eq!(header(response.headers(), RANGE.as_str()), "0-0", "{range}");
        expect_error(response, 416, "BLOB_UPLOAD_INVALID");
    }
    let response = patch("0-4", b"hello");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = patch("5-18446744073709551615", b"world");
    expect_error(response, 400, "SIZE_INVALID");
    let response = patch("5-9", b"world");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = api
        .client
        .put(api.url(&format!("{location}?digest={}", sha256(b"helloworld"))))
        .send()
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(
        !berth.log().contains("panicked"),
        "server panicked:\n{}",
        berth.log()
    );
}

#[test]
fn bad_input_gets_a_clear_4xx_and_nothing_outside_the_data_dir() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    let digest = api.push_blob("ok", b"content");
    let outside = berth.data_dir.parent().expect("parent").join("escaped");
    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("GET", "/v2/UPPER/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a..b/tags/list", 400, "NAME_INVALID"),
        // The client resolves dot segments itself: this becomes /v2/escaped/tags/list.
        ("GET", "/v2/a/%2e%2e/escaped/tags/list", 404, "NAME_UNKNOWN"),
        ("GET", "/v2/ok/blobs/sha256:..%2F..%2F..%2Fescaped", 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/blobs/notadigest", 400, "DIGEST_INVALID"),
        ("HEAD", "/v2/ok/manifests/sha256:..", 400, "DIGEST_INVALID"),
        ("PUT", "/v2/ok/manifests/..%2F..%2Fescaped", 400, "MANIFEST_INVALID"),
        ("GET", "/v2/ok/blobs/uploads/..%2F..%2Fescaped", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", "/v2/ok/blobs/uploads/00000000000000000000000000000000", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("POST", "/v2/ok/blobs/uploads/?digest=sha256:zz", 400, "DIGEST_INVALID"),
        ("POST", "/v2/ok/blobs/uploads/?mount=bad&from=ok", 400, "DIGEST_INVALID"),
        ("POST", "/v2/ok/blobs/uploads/?mount=sha256:0000000000000000000000000000000000000000000000000000000000000000&from=BAD", 400, "NAME_INVALID"),
        ("GET", "/v2/ok/referrers/sha256:zz", 400, "DIGEST_INVALID"),
        ("DELETE", "/v2/_catalog", 405, "UNSUPPORTED"),
        ("GET", "/v2/ok/unknown/thing", 404, "UNSUPPORTED"),
    ];
    for (method, path, status, code) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = api
            .client
            .request(method.clone(), api.url(path))
            .send()
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        if method != reqwest::Method::HEAD {
            let body: Value = response
                .json()
                .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON: {e}"));
            assert_eq!(body["errors"][0]["code"], code, "{method} {path}: {body}");
        }
    }
    // Malformed ranges.
    let response = api
        .client
        .get(api.url(&format!("/v2/ok/blobs/{digest}")))
        .header(RANGE, "bytes=5-1")
        .send()
        .expect("GET");
    expect_error(response, 416, "UNSUPPORTED");
    let location = api.start_upload("ok");
    let response = api
        .client
        .patch(api.url(&location))
        .header(CONTENT_RANGE, "garbage")
        .body("x")
        .send()
        .expect("PATCH");
    // The spec's answer to a malformed Content-Range: 416, with what the upload holds.
    assert_eq!(header(response.headers(), RANGE.as_str()), "0-0");
    expect_error(response, 416, "BLOB_UPLOAD_INVALID");
    let response = api
        .client
        .patch(api.url(&location))
        .header(CONTENT_RANGE, "0-9")
        .body("short")
        .send()
        .expect("PATCH");
    expect_error(response, 400, "SIZE_INVALID");
    // The failed chunk left nothing: the upload is still empty.
    assert_eq!(header(api.get(&location).headers(), RANGE.as_str()), "0-0");
    let response = api
        .client
        .put(api.url(&location))
        .send()
        .expect("PUT without digest");
    expect_error(response, 400, "DIGEST_INVALID");

    assert!(
        !outside.exists(),
        "a file was written outside the data directory"
    );
    assert!(
        !berth.log().contains("panicked"),
        "server panicked:\n{}",
        berth.log()
    );
    assert_eq!(api.get("/healthz").status(), StatusCode::OK);
}

#[test]
fn concurrent_pushes_of_one_blob_and_one_tag_end_consistent() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let bytes = content(2_000_000, 15);
    let digest = sha256(&bytes);
    let manifests: Vec<(Vec<u8>, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8u64)
            .map(|i| {
                let berth = &berth;
                let bytes = &bytes;
                scope.spawn(move || {
                    let api = Api::new(berth);
                    // Half push monolithically, half in a chunked session.
                    if i % 2 == 0 {
                        api.push_blob("race", bytes);
                    } else {
                        let location = api.start_upload("race");
                        let response = api
                            .client
                            .patch(api.url(&location))
                            .body(bytes.clone())
                            .send()
                            .expect("PATCH");
                        let location = header(response.headers(), LOCATION.as_str());
                        let put = api
                            .client
                            .put(api.url(&format!("{location}?digest={}", sha256(bytes))))
                            .send();
                        assert_eq!(put.expect("PUT").status(), StatusCode::CREATED);
                    }
                    api.push_image("race", "latest", 100 + i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pusher"))
            .collect()
    });
    let api = Api::new(&berth);
    assert_eq!(
        api.get(&format!("/v2/race/blobs/{digest}"))
            .bytes()
            .expect("body")
            .as_ref(),
        &bytes[..]
    );
    let response = api.get("/v2/race/manifests/latest");
    let served_digest = header(response.headers(), "docker-content-digest");
    let served = response.bytes().expect("body");
    assert_eq!(
        sha256(&served),
        served_digest,
        "the tag serves the manifest it names"
    );
    assert!(
        manifests.iter().any(|(_, d)| d == &served_digest),
        "the tag points at one of the pushed manifests"
    );
    for (manifest, digest) in &manifests {
        assert_eq!(
            api.get(&format!("/v2/race/manifests/{digest}"))
                .bytes()
                .expect("body")
                .as_ref(),
            &manifest[..]
        );
    }
    assert!(files_under(&berth.data_dir.join("uploads")).is_empty());
    assert!(files_under(&berth.data_dir.join("tmp")).is_empty());
}

/// What only a process shows: `serve` sweeps stale uploads at start, and the filesystem backend's upload directory
/// goes with the upload. The sweep's judgement itself (the age, an upload touched since) is in the in-process tier
/// (`inprocess::uploads`), on a manual clock. Issue 10: this slept 1.5 s to age the upload; it ages the upload's
/// data file instead (the filesystem backend's upload time is that file's modification time).
#[test]
fn stale_uploads_expire() {
    let mut berth = Berth::start(Options {
        plain_http: true,
        extra_args: vec!["--upload-max-age".into(), "1h".into()],
        ..Options::default()
    });
    let api = Api::new(&berth);
    let location = api.start_upload("stale");
    let response = api
        .client
        .patch(api.url(&location))
        .body(vec![1u8; 100])
        .send()
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = location
        .rsplit('/')
        .next()
        .expect("the location ends with the upload's id");
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .append(true)
        .open(berth.data_dir.join("uploads").join(id).join("data"))
        .and_then(|data| data.set_modified(two_hours_ago))
        .expect("age the upload");
    berth.restart();
    let api = Api::new(&berth);
    poll_until(
        Duration::from_secs(20),
        "the stale upload to be expired",
        || (api.get(&location).status() == StatusCode::NOT_FOUND).then_some(()),
    );
    assert!(files_under(&berth.data_dir.join("uploads")).is_empty());
}
