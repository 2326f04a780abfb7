//! The OCI distribution-spec conformance suite (opencontainers/distribution-spec, `conformance/`), re-created in
//! Rust against `berth serve --plain-http`, grouped as the suite groups its workflows: pull, push, content
//! discovery and content management.
//!
//! Two generations of the suite are covered:
//! - the ginkgo suite (`01_pull_test.go` … `04_management_test.go`, data from `setup.go`): fixed fixtures, one
//!   namespace walked through setup, checks and teardown per workflow. Its teardown order depends on
//!   `OCI_DELETE_MANIFEST_BEFORE_BLOBS`, so both orders are checked; `OCI_CROSSMOUNT_NAMESPACE` is a second
//!   repository; `OCI_AUTOMATIC_CROSSMOUNT` selects the expected answer to a mount without `from`.
//! - the runner that replaced it on the main branch (`run.go`, `api.go`, `testdata.go`): every blob upload method
//!   with sha256 and sha512, range reads, empty blobs, refused digests, and a family of generated data sets
//!   (images, indexes, artifacts, referrers, …) each pushed, listed, pulled, queried and deleted.
//!
//! Checks that `tests/api.rs` already makes are not repeated here unless a workflow needs them as a step.
//!
//! Where the suite accepts several answers (any 2xx, "202 or 404", "201 or 202"), a step here expects the one berth
//! gives, and its comment says which the suite allows: this is berth's regression suite, so a delete that did
//! nothing or a mount that fell back to an upload fails the step. berth's own rules behind an answer (limits,
//! error texts, the anonymous-mount policy, the `proxy/` ban) are tested in the module of their topic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use reqwest::blocking::{Body, RequestBuilder};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::Method;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha512};

use crate::api::{content, sha256, Api};
use crate::support::{Berth, Options};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ND_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
const LAYER_ND_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const OCTET_STREAM: &str = "application/octet-stream";
const EXAMPLE_TYPE_1: &str = "application/vnd.example.oci.conformance.v1";
const EXAMPLE_TYPE_2: &str = "application/vnd.example.oci.conformance.v2";

/// `OCI_NAMESPACE` / `OCI_REPO1`.
const NAMESPACE: &str = "conformance/repo1";
/// `OCI_CROSSMOUNT_NAMESPACE` / `OCI_REPO2`; the ginkgo suite's default is `conformance-<uuid>`.
const CROSSMOUNT_NAMESPACE: &str = "conformance-6f1c2b0e-3d4a-4c55-9e8f-0a1b2c3d4e5f";
/// The reference the suite uses for a manifest that cannot exist (it is not even a valid tag).
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
/// The tag the suite's setup pushes.
const TEST_TAG: &str = "tagtest0";
/// The error codes a 4xx body may carry, as the suite lists them.
const SPEC_ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
];

// ----------------------------------------------------------------------------------------------------------------
// Plumbing

/// A berth over plain HTTP and a client for it.
struct Registry {
    api: Api,
    _berth: Berth,
}

/// A response read to the end.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> String {
        crate::api::header(&self.headers, name)
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn json(&self, what: &str) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the status is `expected`: the one status berth gives for this step (the spec may allow others;
    /// this suite is berth's regression suite, so a change of answer is a change to look at).
    #[track_caller]
    fn expect(&self, expected: u16, what: &str) {
        assert_eq!(
            self.status,
            expected,
            "{what}: status {}, expected {expected}; body: {}",
            self.status,
            self.text()
        );
    }

    /// Asserts a header is present and not empty; returns it.
    #[track_caller]
    fn expect_header(&self, name: &str, what: &str) -> String {
        let value = self.header(name);
        assert!(!value.is_empty(), "{what}: no {name} header");
        value
    }

    /// `Docker-Content-Digest` is optional; when sent it must name the content.
    #[track_caller]
    fn expect_digest_if_sent(&self, digest: &str, what: &str) {
        if self.has_header("docker-content-digest") {
            assert_eq!(
                self.header("docker-content-digest"),
                digest,
                "{what}: Docker-Content-Digest"
            );
        }
    }
}

impl Registry {
    fn start() -> Registry {
        let berth = Berth::start(Options {
            plain_http: true,
            ..Options::default()
        });
        Registry {
            api: Api::new(&berth),
            _berth: berth,
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.api.client.request(method, self.api.url(path))
    }

    #[track_caller]
    fn call(&self, request: RequestBuilder, what: &str) -> Reply {
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    #[track_caller]
    fn get(&self, path: &str, what: &str) -> Reply {
        self.call(self.request(Method::GET, path), what)
    }

    #[track_caller]
    fn head(&self, path: &str, what: &str) -> Reply {
        self.call(self.request(Method::HEAD, path), what)
    }

    #[track_caller]
    fn delete(&self, path: &str, what: &str) -> Reply {
        self.call(self.request(Method::DELETE, path), what)
    }

    /// `POST /v2/<repo>/blobs/uploads/` with no body (what a Go client sends as `Content-Length: 0`).
    #[track_caller]
    fn start_upload(&self, repo: &str, what: &str) -> Reply {
        self.call(
            self.request(Method::POST, &uploads_path(repo))
                .header(CONTENT_LENGTH, "0")
                .body(Vec::new()),
            what,
        )
    }

    /// The suite's setup push: `POST`, then `PUT <location>?digest=` with the whole blob.
    #[track_caller]
    fn post_then_put(&self, repo: &str, bytes: &[u8], what: &str) -> Reply {
        let started = self.start_upload(repo, what);
        let location = started.expect_header("location", what);
        self.call(
            self.request(
                Method::PUT,
                &with_query(&location, "digest", &sha256(bytes)),
            )
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(bytes.to_vec()),
            what,
        )
    }

    #[track_caller]
    fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Reply {
        self.call(
            self.request(Method::PUT, &manifest_path(repo, reference))
                .header(CONTENT_TYPE, media_type)
                .body(body.to_vec()),
            &format!("PUT manifest {repo}:{reference}"),
        )
    }

    /// `GET` with the `Accept` header the suite sends for manifests.
    #[track_caller]
    fn get_manifest(&self, repo: &str, reference: &str, accept: &[&str]) -> Reply {
        let mut request = self.request(Method::GET, &manifest_path(repo, reference));
        for media_type in accept {
            request = request.header(ACCEPT, *media_type);
        }
        self.call(request, &format!("GET manifest {repo}:{reference}"))
    }

    #[track_caller]
    fn head_manifest(&self, repo: &str, reference: &str, accept: &[&str]) -> Reply {
        let mut request = self.request(Method::HEAD, &manifest_path(repo, reference));
        for media_type in accept {
            request = request.header(ACCEPT, *media_type);
        }
        self.call(request, &format!("HEAD manifest {repo}:{reference}"))
    }

    fn tags(&self, repo: &str, query: &[(&str, &str)]) -> Reply {
        self.call(
            self.request(Method::GET, &format!("/v2/{repo}/tags/list"))
                .query(query),
            &format!("GET tags of {repo} {query:?}"),
        )
    }

    fn referrers(&self, repo: &str, subject: &str, artifact_type: Option<&str>) -> Reply {
        let mut request = self.request(Method::GET, &format!("/v2/{repo}/referrers/{subject}"));
        if let Some(artifact_type) = artifact_type {
            request = request.query(&[("artifactType", artifact_type)]);
        }
        self.call(
            request,
            &format!("GET referrers of {subject} ({artifact_type:?})"),
        )
    }
}

fn uploads_path(repo: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/")
}

fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

/// `location` with `key=value` appended to its query (digests need no escaping).
fn with_query(location: &str, key: &str, value: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}{key}={value}")
}

/// The path and query of a `Location` that may be absolute.
fn relative(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned()),
        None => location.to_owned(),
    }
}

fn sha512(bytes: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(bytes)))
}

/// Standard base64, as Go's `encoding/json` writes a `[]byte` field.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let byte = |i: usize| u32::from(group.get(i).copied().unwrap_or(0));
        let bits = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("serialise JSON")
}

/// A descriptor for `bytes`.
fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// The `mediaType` a manifest declares, or the OCI image manifest type when it declares none (as the suite
/// decides which `Content-Type` to send and expect).
fn declared_media_type(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned())
}

fn declared_subject(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["subject"]["digest"].as_str().map(str::to_owned))
}

fn tag_list(reply: &Reply) -> Vec<String> {
    reply.json("tag list")["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect()
}

// ----------------------------------------------------------------------------------------------------------------
// The ginkgo suite's fixtures (setup.go), built the same way: a config per workflow made unique by its author, one
// layer, a manifest per workflow whose config descriptor carries `data` and a field no spec defines, and whose
// layer descriptors carry that field as `null`.

struct Fixtures {
    configs: Vec<Vec<u8>>,
    layer: Vec<u8>,
    manifests: Vec<Vec<u8>>,
    /// Like `manifests[1]` without layers and without a `mediaType` field.
    empty_layer_manifest: Vec<u8>,
    /// 42 bytes pushed as one streamed `PATCH`.
    blob_a: Vec<u8>,
    /// 42 bytes pushed in two chunks.
    blob_b: Vec<u8>,
    /// A digest nothing has.
    dummy_digest: String,
}

impl Fixtures {
    fn new() -> Fixtures {
        let configs: Vec<Vec<u8>> = (0..5u64)
            .map(|workflow| {
                to_json(&json!({
                    "author": format!("conformance-author-{workflow}-{}", hex::encode(content(8, 40 + workflow))),
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": []},
                }))
            })
            .collect();
        let layer = content(149, 77);
        let layer_descriptor = || {
            let mut d = descriptor(LAYER_GZIP, &sha256(&layer), layer.len());
            d["newUnspecifiedField"] = Value::Null;
            d
        };
        let config_descriptor = |config: &[u8]| {
            let mut d = descriptor(OCI_CONFIG, &sha256(config), config.len());
            d["data"] = json!(base64(config));
            d["newUnspecifiedField"] = json!(base64(b"hello world"));
            d
        };
        let manifests = configs
            .iter()
            .map(|config| {
                to_json(&json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": config_descriptor(config),
                    "layers": [layer_descriptor()],
                }))
            })
            .collect();
        let empty_layer_manifest = to_json(&json!({
            "schemaVersion": 2,
            "config": config_descriptor(&configs[1]),
            "layers": [],
        }));
        Fixtures {
            configs,
            layer,
            manifests,
            empty_layer_manifest,
            blob_a: content(42, 1001),
            blob_b: content(42, 1002),
            dummy_digest: sha256(b"hello world"),
        }
    }

    fn manifest_digest(&self, i: usize) -> String {
        sha256(&self.manifests[i])
    }
}

#[test]
fn base64_encodes_like_go() {
    assert_eq!(base64(b"hello world"), "aGVsbG8gd29ybGQ=");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b""), "");
}

// ----------------------------------------------------------------------------------------------------------------
// Pull (01_pull_test.go)

/// The pull workflow's setup: two configs and the layer by `POST` + `PUT`, `manifests[0]` by tag, `manifests[1]`
/// by digest. Every step must answer 201 (created).
fn pull_setup(reg: &Registry, fx: &Fixtures) {
    for (what, blob) in [
        ("config[0]", &fx.configs[0]),
        ("config[1]", &fx.configs[1]),
        ("layer", &fx.layer),
    ] {
        reg.post_then_put(NAMESPACE, blob, &format!("populate {what}"))
            .expect(201, &format!("populate {what}"));
    }
    reg.put_manifest(NAMESPACE, TEST_TAG, OCI_MANIFEST, &fx.manifests[0])
        .expect(201, "populate manifest[0] by tag");
    reg.put_manifest(
        NAMESPACE,
        &fx.manifest_digest(1),
        OCI_MANIFEST,
        &fx.manifests[1],
    )
    .expect(201, "populate manifest[1] by digest");
}

#[test]
fn pull_blobs_and_manifests() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    pull_setup(&reg, &fx);

    // Pull blobs.
    reg.head(
        &blob_path(NAMESPACE, &fx.dummy_digest),
        "HEAD nonexistent blob",
    )
    .expect(404, "HEAD nonexistent blob");
    let config0 = sha256(&fx.configs[0]);
    let head = reg.head(&blob_path(NAMESPACE, &config0), "HEAD config[0]");
    head.expect(200, "HEAD existing blob");
    head.expect_digest_if_sent(&config0, "HEAD existing blob");
    reg.get(
        &blob_path(NAMESPACE, &fx.dummy_digest),
        "GET nonexistent blob",
    )
    .expect(404, "GET nonexistent blob");
    let get = reg.get(&blob_path(NAMESPACE, &config0), "GET config[0]");
    get.expect(200, "GET existing blob");
    assert_eq!(get.body, fx.configs[0]);

    // Pull manifests: a reference that is not even a valid tag is simply not there.
    reg.head_manifest(NAMESPACE, NONEXISTENT_MANIFEST, &[])
        .expect(404, "HEAD nonexistent manifest");
    reg.get_manifest(NAMESPACE, NONEXISTENT_MANIFEST, &[])
        .expect(404, "GET nonexistent manifest");
    for (reference, expected_digest) in [
        (fx.manifest_digest(0), fx.manifest_digest(0)),
        (fx.manifest_digest(1), fx.manifest_digest(1)),
        (TEST_TAG.to_owned(), fx.manifest_digest(0)),
    ] {
        let head = reg.head_manifest(NAMESPACE, &reference, &[OCI_MANIFEST]);
        head.expect(200, &format!("HEAD manifest {reference}"));
        head.expect_digest_if_sent(&expected_digest, &format!("HEAD manifest {reference}"));
        let get = reg.get_manifest(NAMESPACE, &reference, &[OCI_MANIFEST]);
        get.expect(200, &format!("GET manifest {reference}"));
        assert_eq!(
            sha256(&get.body),
            expected_digest,
            "GET manifest {reference}"
        );
    }
}

#[test]
fn pull_error_codes() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    pull_setup(&reg, &fx);
    // A GET of a malformed digest (with a stray body, as the suite sends it): the suite allows 400 with a spec
    // code or 404; berth refuses the digest before looking (400 DIGEST_INVALID).
    let reply = reg.call(
        reg.request(
            Method::GET,
            &manifest_path(NAMESPACE, "sha256:totallywrong"),
        )
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body("blablabla"),
        "GET malformed digest",
    );
    reply.expect(400, "GET malformed digest");
    let body = reply.json("400 body");
    let code = body["errors"][0]["code"].as_str().unwrap_or_default();
    assert!(
        SPEC_ERROR_CODES.contains(&code),
        "400 body names no spec error code: {body}"
    );
}

/// The pull teardown. The suite lets manifests be deleted (2xx) or deletion refused (405), and blobs also be
/// already gone (404); berth deletes each (202), in either order, because deleting a blob does not delete the
/// manifests that name it. `OCI_DELETE_MANIFEST_BEFORE_BLOBS` (default true) picks the order.
fn pull_teardown(reg: &Registry, fx: &Fixtures, manifests_first: bool) {
    let delete_manifests = || {
        for i in [0, 1] {
            reg.delete(
                &manifest_path(NAMESPACE, &fx.manifest_digest(i)),
                "DELETE manifest",
            )
            .expect(202, &format!("delete manifest[{i}]"));
        }
    };
    if manifests_first {
        delete_manifests();
    }
    for (what, digest) in [
        ("config[0]", sha256(&fx.configs[0])),
        ("config[1]", sha256(&fx.configs[1])),
        ("layer", sha256(&fx.layer)),
    ] {
        reg.delete(&blob_path(NAMESPACE, &digest), "DELETE blob")
            .expect(202, &format!("delete {what}"));
    }
    if !manifests_first {
        delete_manifests();
    }
}

#[test]
fn pull_teardown_deletes_manifests_then_blobs() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    pull_setup(&reg, &fx);
    pull_teardown(&reg, &fx, true);
}

#[test]
fn pull_teardown_deletes_blobs_then_manifests() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    pull_setup(&reg, &fx);
    pull_teardown(&reg, &fx, false);
}

// ----------------------------------------------------------------------------------------------------------------
// Push (02_push_test.go)

/// Streamed upload: `POST`, one `PATCH` with the whole blob and no `Content-Range`, then a closing `PUT` whose
/// `Content-Length` is 0.
fn push_streamed_blob_a(reg: &Registry, fx: &Fixtures) {
    let started = reg.start_upload(NAMESPACE, "POST");
    let location = started.expect_header("location", "POST");
    let patched = reg.call(
        reg.request(Method::PATCH, &location)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(fx.blob_a.clone()),
        "PATCH streamed",
    );
    patched.expect(202, "PATCH with the blob in the body");
    let location = patched.expect_header("location", "PATCH streamed");
    let closed = reg.call(
        reg.request(
            Method::PUT,
            &with_query(&location, "digest", &sha256(&fx.blob_a)),
        )
        .header(CONTENT_TYPE, OCTET_STREAM)
        .header(CONTENT_LENGTH, "0")
        .body(Vec::new()),
        "closing PUT",
    );
    closed.expect(201, "PUT to the session URL with the digest");
    closed.expect_header("location", "closing PUT");
}

#[test]
fn push_blob_upload_streamed() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    push_streamed_blob_a(&reg, &fx);
    let get = reg.get(&blob_path(NAMESPACE, &sha256(&fx.blob_a)), "GET blob A");
    get.expect(200, "GET streamed blob");
    assert_eq!(get.body, fx.blob_a);
}

#[test]
fn push_blob_upload_monolithic() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    let config = &fx.configs[1];
    let digest = sha256(config);
    reg.get(&blob_path(NAMESPACE, &fx.dummy_digest), "GET nonexistent")
        .expect(404, "GET nonexistent blob");

    // Single POST with digest and body: the suite allows created (201) or a session to continue (202, nothing
    // stored yet); berth stores it at once (201).
    let posted = reg.call(
        reg.request(Method::POST, &uploads_path(NAMESPACE))
            .query(&[("digest", digest.as_str())])
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(config.clone()),
        "POST with digest and blob",
    );
    posted.expect_header("location", "POST with digest and blob");
    posted.expect(201, "POST with digest and blob");
    let get = reg.get(&blob_path(NAMESPACE, &digest), "GET after POST");
    get.expect(200, "GET blob after single POST");

    // POST then PUT.
    let started = reg.start_upload(NAMESPACE, "POST for a session");
    started.expect(202, "POST yields a session");
    let location = started.expect_header("location", "POST for a session");
    let put = reg.call(
        reg.request(Method::PUT, &with_query(&location, "digest", &digest))
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(config.clone()),
        "PUT blob",
    );
    put.expect_header("location", "PUT blob");
    put.expect(201, "PUT upload of a blob");
    reg.get(&blob_path(NAMESPACE, &digest), "GET config")
        .expect(200, "GET existing blob");

    let put = reg.post_then_put(NAMESPACE, &fx.layer, "push layer");
    put.expect_header("location", "PUT layer");
    put.expect(201, "PUT upload of a layer");
    reg.get(&blob_path(NAMESPACE, &sha256(&fx.layer)), "GET layer")
        .expect(200, "GET existing layer");
}

/// `OCI-Chunk-Min-Length` may raise the chunk size; the suite then rebuilds its blob to `2 * min - 2` bytes.
fn chunked_blob(fx: &Fixtures, started: &Reply) -> Vec<u8> {
    match started.header("oci-chunk-min-length").parse::<usize>() {
        Ok(min) if min > fx.blob_b.len() / 2 + 1 => content(2 * min - 2, 1003),
        _ => fx.blob_b.clone(),
    }
}

#[test]
fn push_blob_upload_chunked() {
    let reg = Registry::start();
    let fx = Fixtures::new();

    // A chunk that does not start at 0 on a fresh session is refused with 416.
    let started = reg.start_upload(NAMESPACE, "POST with Content-Length: 0");
    let location = started.expect_header("location", "POST");
    let blob = chunked_blob(&fx, &started);
    let split = blob.len() / 2 + 1;
    let (first, second) = blob.split_at(split);
    let first_range = format!("0-{}", split - 1);
    let second_range = format!("{split}-{}", blob.len() - 1);
    let patch = |location: &str, range: &str, chunk: &[u8], what: &str| {
        reg.call(
            reg.request(Method::PATCH, location)
                .header(CONTENT_TYPE, OCTET_STREAM)
                .header(CONTENT_RANGE, range)
                .body(chunk.to_vec()),
            what,
        )
    };
    patch(&location, &second_range, second, "out-of-order PATCH")
        .expect(416, "out-of-order blob upload");

    // First chunk accepted, with the range received so far.
    let started = reg.start_upload(NAMESPACE, "POST");
    let session = started.expect_header("location", "POST");
    let accepted = patch(&session, &first_range, first, "first chunk");
    accepted.expect(202, "PATCH with the first chunk");
    assert_eq!(
        accepted.header("range"),
        first_range,
        "Range after the first chunk"
    );

    // The same chunk again is out of order now.
    patch(&session, &first_range, first, "retried chunk")
        .expect(416, "retrying the previous chunk");

    // The session's status: 204 with where to continue and what was received.
    let status = reg.get(&session, "GET upload status");
    status.expect(204, "GET on the upload");
    let location = status.expect_header("location", "GET upload status");
    assert_eq!(status.header("range"), first_range, "Range of the upload");

    let accepted = patch(&location, &second_range, second, "second chunk");
    accepted.expect(202, "PATCH with the second chunk");
    let location = accepted.expect_header("location", "second chunk");

    let closed = reg.call(
        reg.request(
            Method::PUT,
            &with_query(&location, "digest", &sha256(&blob)),
        )
        .header(CONTENT_TYPE, OCTET_STREAM)
        .header(CONTENT_LENGTH, "0")
        .body(Vec::new()),
        "closing PUT",
    );
    closed.expect(201, "PUT with the digest closes the upload");
    closed.expect_header("location", "closing PUT");
    assert_eq!(
        reg.get(&blob_path(NAMESPACE, &sha256(&blob)), "GET chunked blob")
            .body,
        blob
    );
}

#[test]
fn push_cross_repository_blob_mount() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    push_streamed_blob_a(&reg, &fx);
    let digest = sha256(&fx.blob_a);
    let mount = |query: &[(&str, &str)], what: &str| {
        reg.call(
            reg.request(Method::POST, &uploads_path(CROSSMOUNT_NAMESPACE))
                .query(query)
                .header(CONTENT_LENGTH, "0")
                .body(Vec::new()),
            what,
        )
    };

    // A digest nobody has, without `from`: an ordinary session.
    let reply = mount(&[("mount", fx.dummy_digest.as_str())], "mount unknown");
    reply.expect(202, "mount without from yields a session");
    reply.expect_header("location", "mount unknown");

    // From the namespace that holds it: the suite allows mounted (201) or a session (202); berth mounts it
    // (201, at the blob's URL in the target).
    let reply = mount(
        &[("mount", digest.as_str()), ("from", NAMESPACE)],
        "mount from namespace",
    );
    reply.expect(201, "POST to mount another repository's blob");
    let location = relative(&reply.expect_header("location", "mount"));
    assert_eq!(location, blob_path(CROSSMOUNT_NAMESPACE, &digest));
    let get = reg.get(&location, "GET mounted blob");
    get.expect(200, "GET the mounted blob in the target namespace");
    assert_eq!(get.body, fx.blob_a);

    // OCI_AUTOMATIC_CROSSMOUNT: the blob is now in the target namespace, and berth mounts without `from`
    // only what the target already holds, so this mount succeeds.
    mount(&[("mount", digest.as_str())], "mount without from")
        .expect(201, "mount without from, the target holds the blob");
}

#[test]
fn push_manifest_upload_and_teardown() {
    for manifests_first in [true, false] {
        let reg = Registry::start();
        let fx = Fixtures::new();
        for blob in [&fx.configs[1], &fx.layer] {
            reg.post_then_put(NAMESPACE, blob, "push blob")
                .expect(201, "push blob");
        }
        reg.get_manifest(NAMESPACE, NONEXISTENT_MANIFEST, &[])
            .expect(404, "GET nonexistent manifest");
        for i in 0..4 {
            let tag = format!("test{i}");
            let reply = reg.put_manifest(NAMESPACE, &tag, OCI_MANIFEST, &fx.manifests[1]);
            reply.expect_header("location", "PUT manifest");
            reply.expect(201, &format!("PUT manifest as {tag}"));
        }
        // A manifest with no layers and no mediaType field (the Content-Type says what it is).
        let reply = reg.put_manifest(
            NAMESPACE,
            "emptylayer",
            OCI_MANIFEST,
            &fx.empty_layer_manifest,
        );
        reply.expect(201, "manifest with no layers");
        reply.expect_header("location", "manifest with no layers");
        reg.get_manifest(NAMESPACE, &fx.manifest_digest(1), &[OCI_MANIFEST])
            .expect(200, "GET manifest by digest");

        // Teardown in either order.
        let delete_manifests = || {
            for digest in [fx.manifest_digest(1), sha256(&fx.empty_layer_manifest)] {
                reg.delete(&manifest_path(NAMESPACE, &digest), "DELETE manifest")
                    .expect(202, "delete manifest");
            }
        };
        if manifests_first {
            delete_manifests();
        }
        for blob in [&fx.configs[1], &fx.layer] {
            reg.delete(&blob_path(NAMESPACE, &sha256(blob)), "DELETE blob")
                .expect(202, "delete blob");
        }
        if !manifests_first {
            delete_manifests();
        }
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Content discovery (03_discovery_test.go)

/// The referrers fixtures: artifacts whose subject is `manifests[4]` (pushed between them), one index artifact,
/// and one artifact whose subject (`manifests[3]`) is never pushed.
struct Referrers {
    empty_json: Vec<u8>,
    blob_a: Vec<u8>,
    blob_b: Vec<u8>,
    config_a: Vec<u8>,
    config_b: Vec<u8>,
    layer_a: Vec<u8>,
    layer_b: Vec<u8>,
    layer_c: Vec<u8>,
    index: Vec<u8>,
    /// digest → the single annotation each referrer of `manifests[4]` carries.
    annotations: BTreeMap<String, String>,
}

const ANNOTATION_KEY: &str = "org.opencontainers.conformance.test";
const ARTIFACT_TYPE_A: &str = "application/vnd.nhl.peanut.butter.bagel";
const ARTIFACT_TYPE_B: &str = "application/vnd.nba.strawberry.jam.croissant";
const ARTIFACT_TYPE_INDEX: &str = "application/vnd.food.stand";

impl Referrers {
    fn new(fx: &Fixtures) -> Referrers {
        let with_null_field = |mut d: Value| {
            d["newUnspecifiedField"] = Value::Null;
            d
        };
        let empty_json = b"{}".to_vec();
        let empty = with_null_field(descriptor(EMPTY_JSON, &sha256(&empty_json), 2));
        let subject_of = |manifest: &[u8]| {
            with_null_field(descriptor(OCI_MANIFEST, &sha256(manifest), manifest.len()))
        };
        let subject = subject_of(&fx.manifests[4]);
        let blob_a = b"NHL Peanut Butter on my NHL bagel".to_vec();
        let blob_b = b"NBA Strawberry Jam on my NBA croissant".to_vec();
        let blob_descriptor = |media_type: &str, blob: &[u8]| {
            with_null_field(descriptor(media_type, &sha256(blob), blob.len()))
        };
        // The artifact type as the config's media type.
        let config_artifact = |artifact_type: &str, blob: &[u8], note: &str| {
            to_json(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": blob_descriptor(artifact_type, blob),
                "layers": [empty.clone()],
                "subject": subject.clone(),
                "annotations": {ANNOTATION_KEY: note},
            }))
        };
        // The artifact type in `artifactType`, with the empty config.
        let layer_artifact =
            |artifact_type: &str, blob: &[u8], subject: &Value, note: Option<&str>| {
                let mut manifest = json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "artifactType": artifact_type,
                    "config": empty.clone(),
                    "layers": [blob_descriptor(artifact_type, blob)],
                    "subject": subject.clone(),
                });
                if let Some(note) = note {
                    manifest["annotations"] = json!({ANNOTATION_KEY: note});
                }
                to_json(&manifest)
            };
        let config_a = config_artifact(ARTIFACT_TYPE_A, &blob_a, "test config a");
        let config_b = config_artifact(ARTIFACT_TYPE_B, &blob_b, "test config b");
        let layer_a = layer_artifact(ARTIFACT_TYPE_A, &blob_a, &subject, Some("test layer a"));
        let layer_b = layer_artifact(ARTIFACT_TYPE_B, &blob_b, &subject, Some("test layer b"));
        let layer_c = layer_artifact(
            ARTIFACT_TYPE_B,
            &blob_b,
            &subject_of(&fx.manifests[3]),
            None,
        );
        let index = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": ARTIFACT_TYPE_INDEX,
            "manifests": [
                with_null_field(descriptor(OCI_MANIFEST, &sha256(&config_a), config_a.len())),
                with_null_field(descriptor(OCI_MANIFEST, &sha256(&layer_a), layer_a.len())),
            ],
            "subject": subject,
            "annotations": {ANNOTATION_KEY: "test index"},
        }));
        let annotations = [
            (&config_a, "test config a"),
            (&config_b, "test config b"),
            (&layer_a, "test layer a"),
            (&layer_b, "test layer b"),
            (&index, "test index"),
        ]
        .into_iter()
        .map(|(body, note)| (sha256(body), note.to_owned()))
        .collect();
        Referrers {
            empty_json,
            blob_a,
            blob_b,
            config_a,
            config_b,
            layer_a,
            layer_b,
            layer_c,
            index,
            annotations,
        }
    }
}

/// The discovery setup: `manifests[2]` tagged `test0`…`test3`, then the referrers in the suite's order, each
/// answered with `OCI-Subject` naming its subject.
fn discovery_setup(reg: &Registry, fx: &Fixtures, refs: &Referrers) {
    for blob in [&fx.configs[2], &fx.layer] {
        reg.post_then_put(NAMESPACE, blob, "populate blob")
            .expect(201, "populate blob");
    }
    for i in 0..4 {
        reg.put_manifest(
            NAMESPACE,
            &format!("test{i}"),
            OCI_MANIFEST,
            &fx.manifests[2],
        )
        .expect(201, "populate tag");
    }
    assert_eq!(
        sha256(&refs.empty_json),
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    let push_referrer = |body: &[u8], media_type: &str, subject: &str| {
        let reply = reg.put_manifest(NAMESPACE, &sha256(body), media_type, body);
        reply.expect(201, "push referrer");
        assert_eq!(reply.header("oci-subject"), subject, "OCI-Subject");
    };
    let subject = fx.manifest_digest(4);
    // Referrers before their subject exists.
    for blob in [&refs.empty_json, &refs.blob_a] {
        reg.post_then_put(NAMESPACE, blob, "populate blob")
            .expect(201, "populate blob");
    }
    push_referrer(&refs.config_a, OCI_MANIFEST, &subject);
    push_referrer(&refs.layer_a, OCI_MANIFEST, &subject);
    push_referrer(&refs.index, OCI_INDEX, &subject);
    // The subject.
    for blob in [&fx.configs[4], &fx.layer] {
        reg.post_then_put(NAMESPACE, blob, "populate blob")
            .expect(201, "populate blob");
    }
    reg.put_manifest(NAMESPACE, TEST_TAG, OCI_MANIFEST, &fx.manifests[4])
        .expect(201, "populate subject");
    // Referrers after it.
    reg.post_then_put(NAMESPACE, &refs.blob_b, "populate blob")
        .expect(201, "populate blob");
    push_referrer(&refs.config_b, OCI_MANIFEST, &subject);
    push_referrer(&refs.layer_b, OCI_MANIFEST, &subject);
    // A referrer of a subject that is never pushed.
    push_referrer(&refs.layer_c, OCI_MANIFEST, &fx.manifest_digest(3));
}

#[test]
fn discovery_tag_listing_with_n_and_last() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    let refs = Referrers::new(&fx);
    discovery_setup(&reg, &fx, &refs);

    let all = reg.tags(NAMESPACE, &[]);
    all.expect(200, "GET tags");
    let tags = tag_list(&all);
    assert_eq!(tags, ["tagtest0", "test0", "test1", "test2", "test3"]);

    let half = tags.len() / 2;
    let n = half.to_string();
    let page = reg.tags(NAMESPACE, &[("n", n.as_str())]);
    page.expect(200, "GET tags with n");
    let first_page = tag_list(&page);
    assert_eq!(first_page.len(), half, "n limits the number of tags");

    let last = first_page[half - 1].clone();
    let next = reg.tags(NAMESPACE, &[("n", n.as_str()), ("last", last.as_str())]);
    next.expect(200, "GET tags with n and last");
    let next_page = tag_list(&next);
    assert!(next_page.len() <= half, "{next_page:?}");
    assert!(
        !next_page.contains(&last),
        "last is excluded: {next_page:?}"
    );
    assert_eq!(next_page, tags[half..2 * half], "the page after last");
}

#[test]
fn discovery_referrers() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    let refs = Referrers::new(&fx);
    discovery_setup(&reg, &fx, &refs);
    let index_of = |reply: &Reply, what: &str| -> Vec<Value> {
        reply.expect(200, what);
        assert_eq!(
            reply.header("content-type"),
            OCI_INDEX,
            "{what}: Content-Type"
        );
        reply.json(what)["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{what}: no manifests array: {}", reply.text()))
    };
    let check_annotations = |manifests: &[Value]| {
        for m in manifests {
            let digest = m["digest"].as_str().unwrap_or_default();
            let annotations = m["annotations"].as_object().cloned().unwrap_or_default();
            assert_eq!(annotations.len(), 1, "{m}");
            assert_eq!(
                annotations.get(ANNOTATION_KEY).and_then(Value::as_str),
                refs.annotations.get(digest).map(String::as_str),
                "{m}"
            );
        }
    };

    // A digest nothing refers to: 200 with an empty index.
    let none = index_of(
        &reg.referrers(NAMESPACE, &fx.dummy_digest, None),
        "referrers of a nonexistent digest",
    );
    assert!(none.is_empty(), "{none:?}");

    // All five referrers of manifests[4], distinct, each with its annotation.
    let subject = fx.manifest_digest(4);
    let all = index_of(&reg.referrers(NAMESPACE, &subject, None), "referrers");
    assert_eq!(all.len(), 5, "{all:?}");
    let digests: BTreeSet<&str> = all.iter().filter_map(|m| m["digest"].as_str()).collect();
    assert_eq!(digests.len(), 5, "distinct referrers: {all:?}");
    check_annotations(&all);

    // Filtered by artifact type: the config-typed and the artifactType-typed artifact A.
    let reply = reg.referrers(NAMESPACE, &subject, Some(ARTIFACT_TYPE_A));
    let filtered = index_of(&reply, "filtered referrers");
    if reply.has_header("oci-filters-applied") {
        assert_eq!(reply.header("oci-filters-applied"), "artifactType");
        assert_eq!(filtered.len(), 2, "{filtered:?}");
        let expected = BTreeSet::from([sha256(&refs.config_a), sha256(&refs.layer_a)]);
        let found: BTreeSet<String> = filtered
            .iter()
            .filter_map(|m| m["digest"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(found, expected);
    } else {
        assert_eq!(filtered.len(), 5, "unfiltered answer: {filtered:?}");
    }
    check_annotations(&filtered);

    // The subject that was never pushed has its one referrer.
    let missing = index_of(
        &reg.referrers(NAMESPACE, &fx.manifest_digest(3), None),
        "referrers of a missing manifest",
    );
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["digest"], sha256(&refs.layer_c));
}

/// The discovery teardown, whichever order `OCI_DELETE_MANIFEST_BEFORE_BLOBS` picks. The suite lets every
/// deletion find nothing (404) or be refused (405); berth deletes what is there (202) and answers 404 for what
/// an earlier step already deleted: `TEST_TAG` went with `manifests[4]`, the referrers with the manifest list
/// before them.
fn discovery_teardown(reg: &Registry, fx: &Fixtures, refs: &Referrers, manifests_first: bool) {
    let delete_manifests = || {
        let references = [
            (sha256(&refs.index), 202),
            (fx.manifest_digest(2), 202),
            (fx.manifest_digest(4), 202),
            (sha256(&refs.config_a), 202),
            (sha256(&refs.layer_a), 202),
            // Deleting `manifests[4]` by digest deleted the tag that named it.
            (TEST_TAG.to_owned(), 404),
            (sha256(&refs.config_b), 202),
            (sha256(&refs.layer_b), 202),
            (sha256(&refs.layer_c), 202),
        ];
        for (reference, expected) in references {
            reg.delete(&manifest_path(NAMESPACE, &reference), "DELETE manifest")
                .expect(expected, &format!("delete manifest {reference}"));
        }
    };
    let delete_referrers = || {
        for body in [
            &refs.index,
            &refs.config_a,
            &refs.layer_a,
            &fx.manifests[4],
            &refs.config_b,
            &refs.layer_b,
        ] {
            // Every one was in `delete_manifests`' list, which both orders run first.
            reg.delete(&manifest_path(NAMESPACE, &sha256(body)), "DELETE referrer")
                .expect(404, "references teardown");
        }
    };
    if manifests_first {
        delete_manifests();
    }
    for blob in [&fx.configs[2], &fx.layer] {
        reg.delete(&blob_path(NAMESPACE, &sha256(blob)), "DELETE blob")
            .expect(202, "delete a blob created in setup");
    }
    if !manifests_first {
        delete_manifests();
    }
    if manifests_first {
        delete_referrers();
    }
    for blob in [&fx.configs[4], &refs.blob_a, &refs.blob_b, &refs.empty_json] {
        reg.delete(&blob_path(NAMESPACE, &sha256(blob)), "DELETE blob")
            .expect(202, "references teardown");
    }
    if !manifests_first {
        delete_referrers();
    }
}

#[test]
fn discovery_teardown_in_either_order() {
    for manifests_first in [true, false] {
        let reg = Registry::start();
        let fx = Fixtures::new();
        let refs = Referrers::new(&fx);
        discovery_setup(&reg, &fx, &refs);
        discovery_teardown(&reg, &fx, &refs, manifests_first);
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Content management (04_management_test.go)

#[test]
fn management_deletes_tags_manifests_and_blobs() {
    let reg = Registry::start();
    let fx = Fixtures::new();
    for blob in [&fx.configs[3], &fx.layer] {
        reg.post_then_put(NAMESPACE, blob, "populate blob")
            .expect(201, "populate blob");
    }
    reg.put_manifest(NAMESPACE, TEST_TAG, OCI_MANIFEST, &fx.manifests[3])
        .expect(201, "populate tag");
    let before = reg.tags(NAMESPACE, &[]);
    before.expect(200, "tags before deleting");
    let before = tag_list(&before).len();

    // Deleting the tag: the suite allows 202 or a refusal (400 UNSUPPORTED, 405); berth deletes it (202), and
    // the manifest stays until it is deleted by digest (202), then it is gone (404).
    let reply = reg.delete(&manifest_path(NAMESPACE, TEST_TAG), "DELETE tag");
    reply.expect(202, "DELETE tag");
    let digest = fx.manifest_digest(3);
    reg.delete(&manifest_path(NAMESPACE, &digest), "DELETE manifest")
        .expect(202, "DELETE manifest by digest");
    reg.get_manifest(NAMESPACE, &digest, &[])
        .expect(404, "GET deleted manifest");
    let after = reg.tags(NAMESPACE, &[]);
    after.expect(200, "tags after deleting");
    assert!(
        tag_list(&after).len() < before,
        "the tag list reflects the deletion"
    );

    // Blob deletion: the suite allows 202, 404 or 405; berth deletes (202), then the blob is gone.
    for blob in [&fx.configs[3], &fx.layer] {
        reg.delete(&blob_path(NAMESPACE, &sha256(blob)), "DELETE blob")
            .expect(202, "DELETE blob");
    }
    reg.get(
        &blob_path(NAMESPACE, &sha256(&fx.configs[3])),
        "GET deleted blob",
    )
    .expect(404, "GET deleted blob");
}

// ----------------------------------------------------------------------------------------------------------------
// The main-branch runner (run.go, api.go, testdata.go). Its blob methods, each verified the way the runner does:
// status, `Location` (then a GET of it returns the bytes), `Docker-Content-Digest` when sent.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Algo {
    Sha256,
    Sha512,
}

impl Algo {
    fn digest(self, bytes: &[u8]) -> String {
        match self {
            Algo::Sha256 => sha256(bytes),
            Algo::Sha512 => sha512(bytes),
        }
    }
}

/// How a blob is pushed.
#[derive(Clone, Copy, Debug)]
enum Push {
    /// `POST ?digest=` with the body.
    PostOnly,
    /// `POST`, then `PUT ?digest=` with the body.
    PostPut,
    /// `POST`, one `PATCH` sent with chunked transfer encoding and no `Content-Range`, an empty closing `PUT`.
    Stream,
    /// `POST` then `PATCH`es with `Content-Range`; the last chunk in the closing `PUT` when `put_last`; a wrong
    /// chunk before each right one when `out_of_order`.
    Chunked { put_last: bool, out_of_order: bool },
}

const ALL_PUSHES: [Push; 4] = [
    Push::PostPut,
    Push::PostOnly,
    Push::Stream,
    Push::Chunked {
        put_last: false,
        out_of_order: false,
    },
];

/// Pushes `bytes` as `digest` to `repo`. A `bad` digest (one the bytes do not hash to) must end in 400; a good
/// one in 201 with a `Location` serving the bytes.
fn push_blob(reg: &Registry, repo: &str, digest: &str, bytes: &[u8], how: Push, bad: bool) {
    let what = format!("push {digest} to {repo} by {how:?}");
    let done = match how {
        Push::PostOnly => {
            let posted = reg.call(
                reg.request(
                    Method::POST,
                    &with_query(&uploads_path(repo), "digest", digest),
                )
                .header(CONTENT_TYPE, OCTET_STREAM)
                .body(bytes.to_vec()),
                &what,
            );
            // The runner allows a session (202) and falls back to PUT, recording the method as unsupported;
            // berth offers the single POST, so it refuses a bad digest (400) and stores a good one (201).
            if bad {
                posted.expect(400, &what);
                return;
            }
            posted.expect(201, &what);
            posted.expect_header("location", &what);
            posted
        }
        Push::PostPut => {
            let started = reg.call(reg.request(Method::POST, &uploads_path(repo)), &what);
            started.expect(202, &what);
            let location = started.expect_header("location", &what);
            let put = put_whole(reg, &location, digest, bytes, &what);
            if bad {
                put.expect(400, &what);
                return;
            }
            put
        }
        Push::Stream => {
            let started = reg.start_upload(repo, &what);
            started.expect(202, &what);
            let location = started.expect_header("location", &what);
            let patched = reg.call(
                reg.request(Method::PATCH, &location)
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .body(Body::new(Cursor::new(bytes.to_vec()))),
                &what,
            );
            patched.expect(202, &what);
            let location = patched.expect_header("location", &what);
            let closed = close_upload(reg, &location, digest, &what);
            if bad {
                closed.expect(400, &what);
                return;
            }
            closed
        }
        Push::Chunked {
            put_last,
            out_of_order,
        } => match push_chunks(reg, repo, digest, bytes, put_last, out_of_order, bad) {
            Some(closed) => closed,
            None => return,
        },
    };
    done.expect(201, &what);
    done.expect_digest_if_sent(digest, &what);
    let location = done.expect_header("location", &what);
    let get = reg.get(&location, &what);
    get.expect(200, &format!("{what}: GET Location"));
    assert!(
        get.body == bytes,
        "{what}: GET Location returned other bytes"
    );
}

fn put_whole(reg: &Registry, location: &str, digest: &str, bytes: &[u8], what: &str) -> Reply {
    reg.call(
        reg.request(Method::PUT, &with_query(location, "digest", digest))
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(bytes.to_vec()),
        what,
    )
}

fn close_upload(reg: &Registry, location: &str, digest: &str, what: &str) -> Reply {
    reg.call(
        reg.request(Method::PUT, &with_query(location, "digest", digest))
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, "0")
            .body(Vec::new()),
        what,
    )
}

/// The runner's chunked upload: a third of the blob per chunk, at least 1 KiB (or `OCI-Chunk-Min-Length`), at
/// most the blob. Returns the closing reply, or `None` when a bad digest was refused as it must be.
fn push_chunks(
    reg: &Registry,
    repo: &str,
    digest: &str,
    bytes: &[u8],
    put_last: bool,
    out_of_order: bool,
    bad: bool,
) -> Option<Reply> {
    let what = &format!(
        "push {digest} to {repo} in chunks (last in PUT: {put_last}, out of order: {out_of_order})"
    );
    let started = reg.start_upload(repo, what);
    started.expect(202, what);
    let mut location = started.expect_header("location", what);
    let mut chunk = bytes.len() / 3 + 1;
    if let Ok(min) = started.header("oci-chunk-min-length").parse::<usize>() {
        chunk = chunk.max(min);
    }
    let chunk = chunk.max(1024).min(bytes.len());
    let mut sent = 0;
    let mut closed = None;
    while sent < bytes.len() {
        if out_of_order {
            // Skip a chunk ahead (or back to the start when that is past the end): 416, then recover with GET.
            let bad_start = if sent + chunk >= bytes.len() {
                0
            } else {
                sent + chunk
            };
            let bad_end = (bad_start + chunk).min(bytes.len());
            let url = if put_last && bad_end == bytes.len() {
                with_query(&location, "digest", digest)
            } else {
                location.clone()
            };
            let method = if url == location {
                Method::PATCH
            } else {
                Method::PUT
            };
            let refused = reg.call(
                reg.request(method, &url)
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .header(CONTENT_RANGE, format!("{bad_start}-{}", bad_end - 1))
                    .body(bytes[bad_start..bad_end].to_vec()),
                what,
            );
            refused.expect(416, &format!("{what}: out-of-order chunk"));
            let status = reg.get(&url, what);
            status.expect(204, &format!("{what}: upload status after 416"));
            location = status.expect_header("location", what);
            let range = status.header("range");
            let end = range
                .strip_prefix("0-")
                .and_then(|e| e.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{what}: Range {range:?} is not 0-<end>"));
            if sent > 0 {
                assert_eq!(end, sent - 1, "{what}: Range after 416");
            }
        }
        let end = (sent + chunk).min(bytes.len());
        let range = format!("{sent}-{}", end - 1);
        let body = bytes[sent..end].to_vec();
        if put_last && end == bytes.len() {
            let reply = reg.call(
                reg.request(Method::PUT, &with_query(&location, "digest", digest))
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .header(CONTENT_RANGE, range)
                    .body(body),
                what,
            );
            if bad {
                reply.expect(400, what);
                return None;
            }
            closed = Some(reply);
        } else {
            let reply = reg.call(
                reg.request(Method::PATCH, &location)
                    .header(CONTENT_TYPE, OCTET_STREAM)
                    .header(CONTENT_RANGE, range)
                    .body(body),
                what,
            );
            reply.expect(202, &format!("{what}: chunk {sent}-{}", end - 1));
            assert_eq!(
                reply.header("range"),
                format!("0-{}", end - 1),
                "{what}: Range"
            );
            location = reply.expect_header("location", what);
        }
        sent = end;
    }
    let closed = match closed {
        Some(closed) => closed,
        None => close_upload(reg, &location, digest, what),
    };
    if bad {
        closed.expect(400, what);
        return None;
    }
    Some(closed)
}

/// `POST ?mount=&from=`, expecting `expected`: 201 with a `Location` serving the blob, or 202 and the runner
/// falls back to `PUT`. Which one berth gives depends on the case, so each caller says it.
fn mount_blob(
    reg: &Registry,
    repo: &str,
    from: Option<&str>,
    digest: &str,
    bytes: &[u8],
    expected: u16,
) {
    let what = format!("mount {digest} into {repo} from {from:?}");
    let mut query = vec![("mount", digest)];
    if let Some(from) = from {
        query.push(("from", from));
    }
    let reply = reg.call(
        reg.request(Method::POST, &uploads_path(repo)).query(&query),
        &what,
    );
    reply.expect(expected, &what);
    let mut done = reply;
    if expected == 202 {
        let location = done.expect_header("location", &what);
        done = put_whole(reg, &location, digest, bytes, &what);
        done.expect(201, &what);
    }
    done.expect_digest_if_sent(digest, &what);
    let location = done.expect_header("location", &what);
    let get = reg.get(&location, &what);
    get.expect(200, &what);
    assert!(
        get.body == bytes,
        "{what}: GET Location returned other bytes"
    );
}

/// HEAD: 200, no body, the exact `Content-Length`, the digest when sent.
fn head_blob(reg: &Registry, repo: &str, digest: &str, bytes: &[u8]) {
    let what = format!("HEAD blob {digest}");
    let head = reg.head(&blob_path(repo, digest), &what);
    head.expect(200, &what);
    assert!(head.body.is_empty(), "{what}: a body");
    assert_eq!(
        head.header("content-length"),
        bytes.len().to_string(),
        "{what}"
    );
    head.expect_digest_if_sent(digest, &what);
}

/// GET: 200, the bytes, the exact `Content-Length`, the digest when sent.
fn get_blob(reg: &Registry, repo: &str, digest: &str, bytes: &[u8]) {
    let what = format!("GET blob {digest}");
    let get = reg.get(&blob_path(repo, digest), &what);
    get.expect(200, &what);
    assert!(get.body == bytes, "{what}: other bytes");
    assert_eq!(
        get.header("content-length"),
        bytes.len().to_string(),
        "{what}"
    );
    get.expect_digest_if_sent(digest, &what);
}

/// DELETE of a blob that is there: 202 (the runner also allows 405, refused), and it takes effect at once.
fn delete_blob(reg: &Registry, repo: &str, digest: &str) {
    delete_blob_expecting(reg, repo, digest, 202);
}

/// DELETE answered `expected` (202 deleted, 404 nothing to delete); either way the blob is gone after it.
fn delete_blob_expecting(reg: &Registry, repo: &str, digest: &str, expected: u16) {
    let what = format!("DELETE blob {digest} in {repo}");
    reg.delete(&blob_path(repo, digest), &what)
        .expect(expected, &what);
    reg.head(&blob_path(repo, digest), &what)
        .expect(404, &format!("{what}: HEAD after delete"));
}

fn blob_upload_methods(algo: Algo) {
    let reg = Registry::start();
    let repo = NAMESPACE;
    let repo2 = "conformance/repo2";
    let mut seed = 5000 + algo as u64 * 1000;
    let mut blob = |size: usize| {
        seed += 1;
        let bytes = content(size, seed);
        (algo.digest(&bytes), bytes)
    };

    let (missing, _) = blob(512);
    reg.get(&blob_path(repo, &missing), "GET missing blob")
        .expect(404, "GET a blob never pushed");

    // Each method, then HEAD, GET and DELETE of what it pushed.
    let methods = [
        Push::PostOnly,
        Push::PostPut,
        Push::Chunked {
            put_last: false,
            out_of_order: false,
        },
        Push::Stream,
    ];
    for how in methods {
        let (digest, bytes) = blob(512);
        push_blob(&reg, repo, &digest, &bytes, how, false);
        head_blob(&reg, repo, &digest, &bytes);
        get_blob(&reg, repo, &digest, &bytes);
        delete_blob(&reg, repo, &digest);
    }
    // Three chunks, in each combination of closing PUT and out-of-order chunks.
    for (put_last, out_of_order) in [(false, false), (true, false), (false, true), (true, true)] {
        let (digest, bytes) = blob(3 * 1024 - 5);
        let how = Push::Chunked {
            put_last,
            out_of_order,
        };
        push_blob(&reg, repo, &digest, &bytes, how, false);
        head_blob(&reg, repo, &digest, &bytes);
        get_blob(&reg, repo, &digest, &bytes);
        delete_blob(&reg, repo, &digest);
    }
    // Mount from a repository that holds it: 201.
    let (digest, bytes) = blob(512);
    push_blob(&reg, repo2, &digest, &bytes, Push::PostPut, false);
    mount_blob(&reg, repo, Some(repo2), &digest, &bytes, 201);
    head_blob(&reg, repo, &digest, &bytes);
    get_blob(&reg, repo, &digest, &bytes);
    delete_blob(&reg, repo, &digest);
    delete_blob(&reg, repo2, &digest);
    // Anonymous mount (no `from`) of a blob only another repository holds: berth starts an ordinary upload
    // (202, which the runner records as unsupported, not failed), so a guessed digest reveals nothing
    // (`api::anonymous_mount_is_not_an_existence_oracle`).
    let (digest, bytes) = blob(512);
    push_blob(&reg, repo2, &digest, &bytes, Push::PostPut, false);
    mount_blob(&reg, repo, None, &digest, &bytes, 202);
    head_blob(&reg, repo, &digest, &bytes);
    get_blob(&reg, repo, &digest, &bytes);
    delete_blob(&reg, repo, &digest);
    delete_blob(&reg, repo2, &digest);
    // Mount of a blob the source does not have must not claim success.
    let (digest, bytes) = blob(512);
    mount_blob(&reg, repo, Some(repo2), &digest, &bytes, 202);
    head_blob(&reg, repo, &digest, &bytes);
    get_blob(&reg, repo, &digest, &bytes);
    delete_blob(&reg, repo, &digest);
    // A cancelled upload (the runner's `dev` profile): 204, and nothing to delete afterwards.
    let (digest, _) = blob(512);
    let started = reg.call(reg.request(Method::POST, &uploads_path(repo)), "POST");
    started.expect(202, "POST before cancel");
    let location = started.expect_header("location", "POST before cancel");
    reg.call(
        reg.request(Method::DELETE, &location)
            .header(CONTENT_LENGTH, "0")
            .body(Vec::new()),
        "cancel upload",
    )
    .expect(204, "DELETE of an upload session");
    delete_blob_expecting(&reg, repo, &digest, 404);

    // Range reads of a 2 KiB blob: 206 with the exact part, its length and `Content-Range`; 416 when the range
    // is reversed or starts past the end.
    let (digest, bytes) = blob(2048);
    push_blob(&reg, repo, &digest, &bytes, Push::PostPut, false);
    let ranged = |range: &str| {
        reg.call(
            reg.request(Method::GET, &blob_path(repo, &digest))
                .header(RANGE, range),
            &format!("GET Range {range}"),
        )
    };
    for (range, first, last) in [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, 2047),
        ("bytes=-500", 1548, 2047),
        ("bytes=2000-5000", 2000, 2047),
    ] {
        let reply = ranged(range);
        reply.expect(206, range);
        assert!(reply.body == bytes[first..=last], "{range}: other bytes");
        assert_eq!(
            reply.header("content-length"),
            (last - first + 1).to_string(),
            "{range}"
        );
        let content_range = reply.header("content-range");
        assert!(
            content_range == format!("bytes {first}-{last}/2048")
                || content_range == format!("bytes {first}-{last}/*"),
            "{range}: Content-Range {content_range:?}"
        );
    }
    for range in ["bytes=500-0", "bytes=5000-10000"] {
        ranged(range).expect(416, range);
    }
    delete_blob(&reg, repo, &digest);

    // Well-known contents: the empty blob and `{}`, by each method in turn.
    for bytes in [Vec::new(), b"{}".to_vec()] {
        let digest = algo.digest(&bytes);
        for how in ALL_PUSHES {
            push_blob(&reg, repo, &digest, &bytes, how, false);
            head_blob(&reg, repo, &digest, &bytes);
            get_blob(&reg, repo, &digest, &bytes);
            delete_blob(&reg, repo, &digest);
        }
    }

    // Content that does not match its digest: every method ends in 400.
    let bad_methods = [
        Push::PostOnly,
        Push::PostPut,
        Push::Chunked {
            put_last: false,
            out_of_order: false,
        },
        Push::Chunked {
            put_last: true,
            out_of_order: false,
        },
        Push::Stream,
    ];
    for how in bad_methods {
        let (digest, mut bytes) = blob(3 * 1024 - 5);
        bytes.extend_from_slice(b"oh no");
        push_blob(&reg, repo, &digest, &bytes, how, true);
        reg.head(&blob_path(repo, &digest), "HEAD refused blob")
            .expect(404, "a refused blob is not stored");
    }
}

#[test]
fn push_blob_upload_methods_sha256() {
    blob_upload_methods(Algo::Sha256);
}

#[test]
fn push_blob_upload_methods_sha512() {
    blob_upload_methods(Algo::Sha512);
}

// ----------------------------------------------------------------------------------------------------------------
// The runner's data sets (testdata.go): generated images, indexes and artifacts, each pushed (blobs, then
// manifests by digest, then tags), listed, pulled by HEAD and GET, queried for referrers, and deleted.

/// Options for one generated manifest (and, for an index, its children).
#[derive(Clone)]
struct Gen {
    algo: Algo,
    tag: Option<&'static str>,
    artifact_type: Option<&'static str>,
    annotations: Map<String, Value>,
    unique_annotation: bool,
    /// `None`: an image config; otherwise its media type and bytes.
    config: Option<(&'static str, Vec<u8>)>,
    layer_count: usize,
    /// `None`: tar layers; otherwise an artifact blob of this media type.
    layer_media_type: Option<&'static str>,
    layer_bytes: Option<Vec<u8>>,
    compressed: bool,
    subject: Option<Value>,
    platform: (&'static str, &'static str),
    with_data: bool,
    extra_field: bool,
}

impl Default for Gen {
    fn default() -> Gen {
        Gen {
            algo: Algo::Sha256,
            tag: None,
            artifact_type: None,
            annotations: Map::new(),
            unique_annotation: false,
            config: None,
            layer_count: 2,
            layer_media_type: None,
            layer_bytes: None,
            compressed: true,
            subject: None,
            platform: ("linux", "amd64"),
            with_data: false,
            extra_field: false,
        }
    }
}

impl Gen {
    fn tagged(tag: &'static str) -> Gen {
        Gen {
            tag: Some(tag),
            ..Gen::default()
        }
    }

    /// An artifact: empty config, one layer of `artifact_type`, a shared and a unique annotation.
    fn artifact(artifact_type: &'static str) -> Gen {
        let mut annotations = Map::new();
        annotations.insert(
            "org.opencontainers.conformance".into(),
            json!("hello conformance test"),
        );
        Gen {
            artifact_type: Some(artifact_type),
            annotations,
            unique_annotation: true,
            config: Some((EMPTY_JSON, b"{}".to_vec())),
            layer_count: 1,
            layer_media_type: Some(artifact_type),
            ..Gen::default()
        }
    }
}

const PLATFORMS: [(&str, &str); 2] = [("linux", "amd64"), ("linux", "arm64")];

#[derive(Default)]
struct DataSet {
    name: &'static str,
    blobs: BTreeMap<String, Vec<u8>>,
    /// In push order.
    manifests: Vec<(String, Vec<u8>)>,
    tags: BTreeMap<String, String>,
    /// subject → the descriptors its referrers list must hold.
    referrers: BTreeMap<String, Vec<Value>>,
    /// Manifests pushed under a digest they do not have: refused with 400, never pulled.
    bad_digest: BTreeSet<String>,
    seed: u64,
}

impl DataSet {
    fn new(name: &'static str, seed: u64) -> DataSet {
        DataSet {
            name,
            seed,
            ..DataSet::default()
        }
    }

    fn next_seed(&mut self) -> u64 {
        self.seed += 1;
        self.seed
    }

    fn add_blob(&mut self, bytes: Vec<u8>, media_type: &str, g: &Gen) -> Value {
        let digest = g.algo.digest(&bytes);
        let mut d = descriptor(media_type, &digest, bytes.len());
        if g.with_data {
            d["data"] = json!(base64(&bytes));
        }
        self.blobs.insert(digest, bytes);
        d
    }

    /// A field no spec defines, with a fresh name, on a JSON object.
    fn add_extra_field(&mut self, object: &mut Value) {
        let n = self.next_seed();
        object[format!("org.conformance{n}")] = json!(format!("custom value {n}"));
    }

    fn layer(&mut self, n: usize, g: &Gen) -> Value {
        let seed = self.next_seed();
        let bytes = content(300 + n, seed);
        let media_type = if g.compressed { LAYER_GZIP } else { LAYER_TAR };
        self.add_blob(bytes, media_type, g)
    }

    fn image_config(&mut self, diff_ids: Vec<String>, g: &Gen) -> Value {
        let mut config = json!({
            "author": "OCI Conformance Test",
            "architecture": g.platform.1,
            "os": g.platform.0,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if g.extra_field {
            self.add_extra_field(&mut config);
        }
        self.add_blob(serde_json::to_vec(&config).expect("json"), OCI_CONFIG, g)
    }

    fn annotations(&mut self, g: &Gen) -> Option<Value> {
        let mut annotations = g.annotations.clone();
        if g.unique_annotation {
            let n = self.next_seed();
            annotations.insert(format!("org.example.{n}"), json!(format!("unique {n}")));
        }
        (!annotations.is_empty()).then_some(Value::Object(annotations))
    }

    /// Records a manifest (and its tag and referrer entry); returns its descriptor.
    fn add_manifest(&mut self, mut body: Value, g: &Gen, artifact_type: Option<String>) -> Value {
        if let Some(annotations) = self.annotations(g) {
            body["annotations"] = annotations;
        }
        if g.extra_field {
            self.add_extra_field(&mut body);
        }
        let media_type = body["mediaType"]
            .as_str()
            .unwrap_or(OCI_MANIFEST)
            .to_owned();
        let bytes = serde_json::to_vec(&body).expect("json");
        let digest = g.algo.digest(&bytes);
        let mut d = descriptor(&media_type, &digest, bytes.len());
        if g.with_data {
            d["data"] = json!(base64(&bytes));
        }
        if let Some(subject) = g.subject.as_ref().and_then(|s| s["digest"].as_str()) {
            let mut entry = d.clone();
            if let Some(data) = entry.as_object_mut() {
                data.remove("data");
            }
            if let Some(artifact_type) = artifact_type {
                entry["artifactType"] = json!(artifact_type);
            }
            if let Some(annotations) = body.get("annotations") {
                entry["annotations"] = annotations.clone();
            }
            self.referrers
                .entry(subject.to_owned())
                .or_default()
                .push(entry);
        }
        if let Some(tag) = g.tag {
            self.tags.insert(tag.to_owned(), digest.clone());
        }
        self.manifests.push((digest, bytes));
        d
    }

    fn manifest(&mut self, config: Value, layers: Vec<Value>, g: &Gen) -> Value {
        let mut body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layers,
        });
        if let Some(artifact_type) = g.artifact_type {
            body["artifactType"] = json!(artifact_type);
        }
        if let Some(subject) = &g.subject {
            body["subject"] = subject.clone();
        }
        // The referrers API reports an image manifest's artifactType, else its config's media type.
        let artifact_type = g
            .artifact_type
            .map(str::to_owned)
            .or_else(|| body["config"]["mediaType"].as_str().map(str::to_owned));
        self.add_manifest(body, g, artifact_type)
    }

    /// A config, `g.layer_count` layers (or artifact blobs), and the manifest naming them.
    fn image(&mut self, g: &Gen) -> Value {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for n in 0..g.layer_count {
            let layer = match (g.layer_media_type, &g.layer_bytes) {
                (None, _) => self.layer(n, g),
                (Some(media_type), Some(bytes)) => self.add_blob(bytes.clone(), media_type, g),
                (Some(media_type), None) => {
                    let seed = self.next_seed();
                    self.add_blob(content(2048, seed), media_type, g)
                }
            };
            diff_ids.push(layer["digest"].as_str().unwrap_or_default().to_owned());
            layers.push(layer);
        }
        let config = match &g.config {
            None => self.image_config(diff_ids, g),
            Some((media_type, bytes)) => self.add_blob(bytes.clone(), media_type, g),
        };
        self.manifest(config, layers, g)
    }

    fn index(&mut self, children: Vec<Value>, g: &Gen) -> Value {
        let mut body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children,
        });
        if let Some(artifact_type) = g.artifact_type {
            body["artifactType"] = json!(artifact_type);
        }
        if let Some(subject) = &g.subject {
            body["subject"] = subject.clone();
        }
        // An index has no config to fall back on: no artifactType unless it sets one.
        let artifact_type = g.artifact_type.map(str::to_owned);
        self.add_manifest(body, g, artifact_type)
    }

    /// An image per platform (made with the same options, untagged) and the index of them.
    fn image_index(&mut self, platforms: &[(&'static str, &'static str)], g: &Gen) -> Value {
        let mut children = Vec::new();
        for &platform in platforms {
            let child = Gen {
                tag: None,
                platform,
                ..g.clone()
            };
            let mut d = self.image(&child);
            d["platform"] = json!({"os": platform.0, "architecture": platform.1});
            children.push(d);
        }
        self.index(children, g)
    }
}

/// The data sets the runner enables by default (spec version 1.1).
fn data_sets() -> Vec<DataSet> {
    let mut sets = Vec::new();
    let mut seed = 100_000;
    let mut set = |name| {
        seed += 10_000;
        DataSet::new(name, seed)
    };

    let mut ds = set("image");
    ds.image(&Gen::tagged("image"));
    sets.push(ds);

    let mut ds = set("image-uncompressed");
    ds.image(&Gen {
        compressed: false,
        ..Gen::tagged("image-uncompressed")
    });
    sets.push(ds);

    // Just under 4 MiB of annotations: registries should take manifests of at least 4 MiB.
    let mut ds = set("large-manifest");
    let mut large = Map::new();
    for i in 0..390 {
        large.insert(format!("large-annotation-{i}"), json!("A".repeat(10_000)));
    }
    ds.image(&Gen {
        annotations: large,
        ..Gen::tagged("large-manifest")
    });
    sets.push(ds);

    let mut ds = set("index");
    ds.image_index(&PLATFORMS, &Gen::tagged("index"));
    sets.push(ds);

    let mut ds = set("nested-index");
    let mut first = ds.image_index(&PLATFORMS, &Gen::default());
    let mut second = ds.image_index(&PLATFORMS, &Gen::default());
    for d in [&mut first, &mut second] {
        if let Some(d) = d.as_object_mut() {
            d.remove("platform");
        }
    }
    ds.index(vec![first, second], &Gen::tagged("index-of-index"));
    sets.push(ds);

    let mut ds = set("empty-index");
    ds.image_index(&[], &Gen::tagged("index"));
    sets.push(ds);

    let mut ds = set("artifact");
    ds.image(&Gen {
        tag: Some("artifact"),
        annotations: Map::new(),
        unique_annotation: false,
        ..Gen::artifact(EXAMPLE_TYPE_1)
    });
    sets.push(ds);

    let mut ds = set("artifact-index");
    ds.image_index(
        &PLATFORMS,
        &Gen {
            tag: Some("artifact-index"),
            annotations: Map::new(),
            unique_annotation: false,
            ..Gen::artifact(EXAMPLE_TYPE_1)
        },
    );
    sets.push(ds);

    let mut ds = set("artifact-without-layers");
    ds.image(&Gen {
        tag: Some("artifact-without-layers"),
        annotations: Map::new(),
        unique_annotation: false,
        layer_media_type: Some(EMPTY_JSON),
        layer_bytes: Some(b"{}".to_vec()),
        ..Gen::artifact(EXAMPLE_TYPE_1)
    });
    sets.push(ds);

    // An image and artifacts referring to it: a plain image, and two typed artifacts with tags.
    let mut ds = set("artifacts-with-subject");
    let subject = ds.image(&Gen::tagged("image"));
    ds.image(&Gen {
        subject: Some(subject.clone()),
        ..Gen::default()
    });
    ds.image(&Gen {
        subject: Some(subject.clone()),
        tag: Some("tagged-artifact1"),
        ..Gen::artifact(EXAMPLE_TYPE_1)
    });
    ds.image(&Gen {
        subject: Some(subject),
        tag: Some("tagged-artifact2"),
        layer_media_type: Some(OCTET_STREAM),
        ..Gen::artifact(EXAMPLE_TYPE_2)
    });
    sets.push(ds);

    // An index, and an artifact index (whose children refer to it too) referring to it.
    let mut ds = set("index-with-subject");
    let subject = ds.image_index(&PLATFORMS, &Gen::tagged("index"));
    ds.image_index(
        &PLATFORMS,
        &Gen {
            subject: Some(subject),
            tag: Some("tagged-artifact"),
            ..Gen::artifact(EXAMPLE_TYPE_1)
        },
    );
    sets.push(ds);

    let mut ds = set("missing-subject");
    ds.image(&Gen {
        subject: Some(descriptor(OCI_MANIFEST, &sha256(b"missing content"), 123)),
        tag: Some("tagged-artifact"),
        ..Gen::artifact(EXAMPLE_TYPE_1)
    });
    sets.push(ds);

    let mut ds = set("data-field");
    ds.image(&Gen {
        with_data: true,
        ..Gen::tagged("data-field")
    });
    sets.push(ds);

    // Two non-distributable layers that are never pushed, and one ordinary layer.
    let mut ds = set("non-distributable-layers");
    let g = Gen::tagged("non-distributable-image");
    let mut layers = Vec::new();
    for (media_type, size) in [(LAYER_ND_GZIP, 123_456), (LAYER_ND_TAR, 12_345)] {
        let digest = sha256(&content(256, ds.next_seed()));
        let mut d = descriptor(media_type, &digest, size);
        d["urls"] = json!([format!(
            "https://store.example.com/blobs/sha256/{}",
            digest.trim_start_matches("sha256:")
        )]);
        layers.push(d);
    }
    layers.push(ds.layer(1, &g));
    let diff_ids = layers
        .iter()
        .filter_map(|l| l["digest"].as_str().map(str::to_owned))
        .collect();
    let config = ds.image_config(diff_ids, &g);
    ds.manifest(config, layers, &g);
    sets.push(ds);

    let mut ds = set("custom-fields");
    ds.image_index(
        &PLATFORMS,
        &Gen {
            extra_field: true,
            ..Gen::tagged("custom-fields")
        },
    );
    sets.push(ds);

    let mut ds = set("no-layers");
    ds.image(&Gen {
        layer_count: 0,
        ..Gen::tagged("no-layers")
    });
    sets.push(ds);

    // sha512 throughout; pushed by digest only (a tag would need the dev profile's tag parameter).
    let mut ds = set("sha512");
    ds.image_index(
        &PLATFORMS,
        &Gen {
            algo: Algo::Sha512,
            ..Gen::default()
        },
    );
    sets.push(ds);

    // A manifest whose bytes do not match the digest it is pushed under.
    let mut ds = set("bad-digest-image");
    ds.image(&Gen::default());
    if let Some((digest, bytes)) = ds.manifests.last_mut() {
        bytes.extend_from_slice(b"  ");
        ds.bad_digest.insert(digest.clone());
    }
    sets.push(ds);

    sets
}

/// `PUT` a manifest as the runner does (streamed, `Content-Type` from its `mediaType`), then check the answer:
/// 201, `OCI-Subject` for a manifest with a subject, the digest when sent, and a `Location` serving it.
fn push_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    digest: &str,
    body: &[u8],
    bad: bool,
) {
    let what = format!("PUT manifest {repo}:{reference}");
    let media_type = declared_media_type(body);
    let reply = reg.call(
        reg.request(Method::PUT, &manifest_path(repo, reference))
            .header(CONTENT_TYPE, &media_type)
            .body(Body::new(Cursor::new(body.to_vec()))),
        &what,
    );
    if bad {
        reply.expect(400, &what);
        return;
    }
    reply.expect(201, &what);
    if let Some(subject) = declared_subject(body) {
        assert_eq!(reply.header("oci-subject"), subject, "{what}: OCI-Subject");
    }
    reply.expect_digest_if_sent(digest, &what);
    let location = reply.expect_header("location", &what);
    let get = reg.call(
        reg.request(Method::GET, &location)
            .header(ACCEPT, OCI_INDEX)
            .header(ACCEPT, OCI_MANIFEST),
        &what,
    );
    get.expect(200, &format!("{what}: GET Location"));
    assert_eq!(
        get.header("content-type"),
        media_type,
        "{what}: GET Location"
    );
    assert_eq!(
        get.header("content-length"),
        body.len().to_string(),
        "{what}"
    );
    assert!(
        get.body == body,
        "{what}: GET Location returned other bytes"
    );
}

/// HEAD and GET of a manifest by tag or digest: 200, the declared `Content-Type`, the exact `Content-Length`,
/// no body for HEAD and the stored bytes for GET, the digest when sent.
fn pull_manifest(reg: &Registry, repo: &str, reference: &str, digest: &str, body: &[u8]) {
    let media_type = declared_media_type(body);
    let head = reg.head_manifest(repo, reference, &[OCI_INDEX, OCI_MANIFEST]);
    let what = format!("HEAD manifest {reference}");
    head.expect(200, &what);
    assert!(head.body.is_empty(), "{what}: a body");
    assert_eq!(head.header("content-type"), media_type, "{what}");
    assert_eq!(
        head.header("content-length"),
        body.len().to_string(),
        "{what}"
    );
    head.expect_digest_if_sent(digest, &what);
    let get = reg.get_manifest(repo, reference, &[OCI_INDEX, OCI_MANIFEST]);
    let what = format!("GET manifest {reference}");
    get.expect(200, &what);
    assert!(get.body == body, "{what}: other bytes");
    assert_eq!(get.header("content-type"), media_type, "{what}");
    assert_eq!(
        get.header("content-length"),
        body.len().to_string(),
        "{what}"
    );
    get.expect_digest_if_sent(digest, &what);
}

/// The tag list holds every tag of the data set, and `last` splits the sorted list where it says.
fn list_tags(reg: &Registry, repo: &str, ds: &DataSet) {
    let reply = reg.tags(repo, &[]);
    // The suite allows 404 for a data set without tags; berth lists the repository (200, maybe empty), which
    // exists because earlier data sets and this one's manifests are in it.
    reply.expect(200, "tag list");
    let tags = tag_list(&reply);
    for tag in ds.tags.keys() {
        assert!(
            tags.contains(tag),
            "{}: {tag} missing from {tags:?}",
            ds.name
        );
    }
    if tags.len() >= 2 {
        let mut sorted = tags.clone();
        sorted.sort();
        let end = sorted.len() / 2;
        let last = &sorted[end - 1];
        let rest = tag_list(&reg.tags(repo, &[("last", last.as_str())]));
        for tag in &sorted[..end] {
            assert!(
                !rest.contains(tag),
                "{}: {tag} listed after last={last}",
                ds.name
            );
        }
        for tag in &sorted[end..] {
            assert!(
                rest.contains(tag),
                "{}: {tag} missing after last={last}",
                ds.name
            );
        }
    }
}

/// Every expected referrer is listed with its digest, media type, size, artifactType and annotations; filtered
/// by each artifact type, the answer says so and holds exactly the referrers of that type.
fn check_referrers(reg: &Registry, repo: &str, ds: &DataSet) {
    let listed = |reply: &Reply, what: &str| -> Vec<Value> {
        reply.expect(200, what);
        assert_eq!(
            reply.header("content-type"),
            OCI_INDEX,
            "{what}: Content-Type"
        );
        let index = reply.json(what);
        assert_eq!(index["mediaType"], OCI_INDEX, "{what}: {index}");
        assert_eq!(index["schemaVersion"], 2, "{what}: {index}");
        index["manifests"].as_array().cloned().unwrap_or_default()
    };
    let matches = |found: &Value, goal: &Value| {
        let annotations_held = goal["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| found["annotations"][k] == *v);
        found["digest"] == goal["digest"]
            && found["mediaType"] == goal["mediaType"]
            && found["size"] == goal["size"]
            && found["artifactType"] == goal["artifactType"]
            && annotations_held
    };
    for (subject, goals) in &ds.referrers {
        let what = format!("{}: referrers of {subject}", ds.name);
        let all = listed(&reg.referrers(repo, subject, None), &what);
        for goal in goals {
            assert!(
                all.iter().any(|found| matches(found, goal)),
                "{what}: {goal} missing from {all:?}"
            );
        }
        let types: BTreeSet<&str> = goals
            .iter()
            .filter_map(|g| g["artifactType"].as_str())
            .collect();
        for artifact_type in types {
            let reply = reg.referrers(repo, subject, Some(artifact_type));
            let what = format!("{what} of type {artifact_type}");
            let filtered = listed(&reply, &what);
            let applied = reply.header("oci-filters-applied");
            assert!(
                applied.split(',').any(|f| f.trim() == "artifactType"),
                "{what}: OCI-Filters-Applied {applied:?}"
            );
            for goal in goals.iter().filter(|g| g["artifactType"] == artifact_type) {
                assert!(
                    filtered.iter().any(|found| matches(found, goal)),
                    "{what}: {goal} missing from {filtered:?}"
                );
            }
            for found in &filtered {
                assert_eq!(found["artifactType"], artifact_type, "{what}: {found}");
            }
        }
    }
}

/// Tags, then manifests newest first, then blobs: each 202 (or 404), and gone at once.
fn delete_data_set(reg: &Registry, repo: &str, ds: &DataSet) {
    for tag in ds.tags.keys() {
        let what = format!("{}: DELETE tag {tag}", ds.name);
        reg.delete(&manifest_path(repo, tag), &what)
            .expect(202, &what);
        reg.head_manifest(repo, tag, &[OCI_INDEX, OCI_MANIFEST])
            .expect(404, &format!("{what}: HEAD after delete"));
    }
    for (digest, _) in ds.manifests.iter().rev() {
        let what = format!("{}: DELETE manifest {digest}", ds.name);
        let expected = if ds.bad_digest.contains(digest) {
            404
        } else {
            202
        };
        reg.delete(&manifest_path(repo, digest), &what)
            .expect(expected, &what);
        reg.head_manifest(repo, digest, &[OCI_INDEX, OCI_MANIFEST])
            .expect(404, &format!("{what}: HEAD after delete"));
    }
    for digest in ds.blobs.keys() {
        delete_blob(reg, repo, digest);
    }
}

fn run_data_set(reg: &Registry, repo: &str, ds: &DataSet) {
    for (i, (digest, bytes)) in ds.blobs.iter().enumerate() {
        push_blob(
            reg,
            repo,
            digest,
            bytes,
            ALL_PUSHES[i % ALL_PUSHES.len()],
            false,
        );
    }
    for (digest, body) in &ds.manifests {
        push_manifest(
            reg,
            repo,
            digest,
            digest,
            body,
            ds.bad_digest.contains(digest),
        );
    }
    for (tag, digest) in &ds.tags {
        let body = ds
            .manifests
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        push_manifest(reg, repo, tag, digest, &body, false);
    }
    list_tags(reg, repo, ds);
    for (tag, digest) in &ds.tags {
        if let Some((_, body)) = ds.manifests.iter().find(|(d, _)| d == digest) {
            pull_manifest(reg, repo, tag, digest, body);
        }
    }
    for (digest, body) in &ds.manifests {
        if !ds.bad_digest.contains(digest) {
            pull_manifest(reg, repo, digest, digest, body);
        }
    }
    for (digest, bytes) in &ds.blobs {
        head_blob(reg, repo, digest, bytes);
        get_blob(reg, repo, digest, bytes);
    }
    check_referrers(reg, repo, ds);
    delete_data_set(reg, repo, ds);
}

#[test]
fn data_sets_push_list_pull_query_and_delete() {
    let reg = Registry::start();
    // Before anything is pushed: the suite allows an empty tag list or an unknown repository; berth does not
    // know the repository (404). The referrers list is empty, never a 404.
    let reply = reg.tags(NAMESPACE, &[]);
    reply.expect(404, "tag list of an empty repository");
    assert_eq!(
        reply.json("tag list of an empty repository")["errors"][0]["code"],
        "NAME_UNKNOWN"
    );
    let reply = reg.referrers(NAMESPACE, &sha256(b"some subject"), None);
    reply.expect(200, "referrers in an empty repository");
    assert_eq!(reply.header("content-type"), OCI_INDEX);
    let index = reply.json("referrers in an empty repository");
    assert_eq!(index["manifests"], json!([]), "{index}");

    let sets = data_sets();
    assert!(sets.iter().any(|ds| !ds.referrers.is_empty()));
    for ds in &sets {
        run_data_set(&reg, NAMESPACE, ds);
    }
}

#[test]
fn manifest_error_conditions() {
    let reg = Registry::start();
    // Missing manifests, by digest and by a valid tag.
    let missing = sha256(&content(1024, 9001));
    reg.get_manifest(NAMESPACE, &missing, &[OCI_INDEX, OCI_MANIFEST])
        .expect(404, "GET missing manifest by digest");
    reg.get_manifest(
        NAMESPACE,
        "missing-abcdefghijklmnopqrst",
        &[OCI_INDEX, OCI_MANIFEST],
    )
    .expect(404, "GET missing manifest by tag");

    // A reference shaped like a digest that is not one: refused on push, not found (or 400) on pull.
    let mut ds = DataSet::new("invalid-manifest-digest", 9100);
    ds.image(&Gen {
        layer_count: 1,
        ..Gen::default()
    });
    for (digest, bytes) in &ds.blobs {
        push_blob(&reg, NAMESPACE, digest, bytes, Push::PostPut, false);
    }
    let (digest, body) = ds.manifests[0].clone();
    push_manifest(
        &reg,
        NAMESPACE,
        "sha256:baddigeststring",
        &digest,
        &body,
        true,
    );
    reg.get_manifest(
        NAMESPACE,
        "sha256:baddigeststring",
        &[OCI_INDEX, OCI_MANIFEST],
    )
    .expect(400, "GET sha256:baddigeststring");
    ds.bad_digest.insert(digest);
    delete_data_set(&reg, NAMESPACE, &ds);
}
