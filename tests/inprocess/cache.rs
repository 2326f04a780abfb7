//! The pull-through cache in process: the whole service (front door → the proxy's handlers → the cache policy)
//! over the memory backend, with the proxy's upstream a [`FakeUpstream`] and the time a [`ManualClock`], through
//! HTTP as a client sees it (`/v2/proxy/up/<repo>/…` and containerd's `?ns=up`). What the upstream was asked is
//! read from the fake's counters; tagTtl passes by moving the clock. Nothing sleeps: a test that waits for the
//! cache's background work polls an observable condition with a deadline. The real upstreams (TLS, auth, real
//! clients) stay in the process tests of `tests/proxy.rs`.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::Method;
use actix_web::test::TestRequest;
use bytes::Bytes;
use serde_json::json;

use berth::clock::ManualClock;
use berth::proxy::upstream::Upstream;
use berth::registry::names::{Digest, RepoName};
use berth::registry::storage::memory::MemoryStorage;
use berth::registry::storage::Storage;
use berth::server::AppState;

use super::fake_upstream::{BlobFault, FakeUpstream};
use super::{Answer, InProcess};
use crate::api::content;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The fake upstream's tagTtl.
const TAG_TTL: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

/// berth in process with one proxied upstream `up` (a [`FakeUpstream`]) over the memory backend.
struct Cache {
    berth: InProcess,
    upstream: Arc<FakeUpstream>,
    clock: Arc<ManualClock>,
    /// The backend behind the registry service, to look for leftover uploads.
    storage: Arc<dyn Storage>,
    _dir: tempfile::TempDir,
}

impl Cache {
    /// `max_size` is the proxy's `maxSize`.
    async fn new(max_size: Option<u64>) -> Cache {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = super::config(&dir.path().join("data"));
        config.proxy.max_size = max_size;
        let clock = ManualClock::new();
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::with_clock(clock.clone()));
        let upstream = FakeUpstream::new("up", TAG_TTL);
        let upstreams: Vec<Arc<dyn Upstream>> = vec![upstream.clone()];
        let state = AppState::with_upstreams(&config, storage.clone(), clock.clone(), upstreams)
            .await
            .unwrap_or_else(|e| panic!("building the server state: {e}"));
        Cache {
            berth: InProcess::mount(state).await,
            upstream,
            clock,
            storage,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.berth.send(TestRequest::get().uri(path)).await
    }

    async fn head(&self, path: &str) -> Answer {
        self.berth
            .send(TestRequest::default().method(Method::HEAD).uri(path))
            .await
    }

    /// The digest of the manifest a GET of `path` answers (asserting a 200 with that body).
    async fn manifest_digest(&self, path: &str) -> String {
        let answer = self.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
        let digest = answer.header("docker-content-digest").to_owned();
        assert_eq!(
            Digest::sha256_of(&answer.body).to_string(),
            digest,
            "{path}: the body is the manifest the digest names"
        );
        digest
    }

    /// Pulls a proxied blob whole, asserting a 200 and its bytes.
    async fn pull_blob(&self, repo: &str, digest: &Digest, expected: &[u8]) {
        let answer = self
            .get(&format!("/v2/proxy/up/{repo}/blobs/{digest}"))
            .await;
        assert_eq!(answer.status, 200, "{digest}");
        assert_eq!(answer.header("docker-content-digest"), digest.to_string());
        assert!(
            answer.body == expected,
            "blob {digest}: {} bytes differ from the {} expected",
            answer.body.len(),
            expected.len()
        );
    }

    /// Whether the blob is linked in the cache of `proxy/up/<repo>`.
    async fn cached(&self, repo: &str, digest: &Digest) -> bool {
        let local = RepoName::parse(&format!("proxy/up/{repo}")).expect("repository name");
        self.berth
            .state
            .registry
            .blob_linked(&local, digest)
            .await
            .expect("asking the registry service")
    }

    /// Waits until `condition` holds (the cache's fetch and eviction tasks run in the background), yielding to
    /// them; fails after a deadline.
    async fn until<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        condition: impl Fn() -> F,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
        }
    }
}

/// A response's body read until it ends or breaks off: the bytes received, and the error if it broke off.
async fn read_to_end(response: ServiceResponse) -> (Vec<u8>, Option<String>) {
    let mut body = pin!(response.into_body());
    let mut bytes = Vec::new();
    while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(e) => return (bytes, Some(e.to_string())),
        }
    }
    (bytes, None)
}

/// An image stored upstream as `repo:tag`: its manifest's digest and its blobs (config, one layer).
fn image(
    upstream: &FakeUpstream,
    repo: &str,
    tag: &str,
    seed: u64,
) -> (Digest, Vec<(Digest, Bytes)>) {
    let config = Bytes::from(format!(r#"{{"os":"linux","seed":{seed}}}"#));
    let layer = Bytes::from(content(50_000, seed));
    let blobs: Vec<(Digest, Bytes)> = [config, layer]
        .into_iter()
        .map(|bytes| (upstream.add_blob(bytes.clone()), bytes))
        .collect();
    let descriptor = |media_type: &str, (digest, bytes): &(Digest, Bytes)| json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &blobs[0]),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &blobs[1])],
    });
    let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
    (upstream.set_manifest(repo, tag, manifest), blobs)
}

#[actix_web::test]
async fn a_pulled_image_is_served_from_the_cache_the_second_time() {
    let cache = Cache::new(None).await;
    let (digest, blobs) = image(&cache.upstream, "team/app", "v1", 1);

    let first = cache
        .manifest_digest("/v2/proxy/up/team/app/manifests/v1")
        .await;
    assert_eq!(first, digest.to_string());
    for (blob, bytes) in &blobs {
        cache.pull_blob("team/app", blob, bytes).await;
        assert!(
            cache.cached("team/app", blob).await,
            "{blob} is cached once pulled whole"
        );
    }
    let asked = cache.upstream.asked();
    assert_eq!((asked.manifest_gets, asked.blob_gets), (1, 2));

    // Again, by tag (within tagTtl), by digest and in containerd's form: all from the cache.
    let by_tag = cache
        .manifest_digest("/v2/proxy/up/team/app/manifests/v1")
        .await;
    assert_eq!(by_tag, first);
    let by_digest = cache
        .manifest_digest(&format!("/v2/proxy/up/team/app/manifests/{digest}"))
        .await;
    assert_eq!(by_digest, first);
    let mirror = cache
        .manifest_digest("/v2/team/app/manifests/v1?ns=up")
        .await;
    assert_eq!(mirror, first, "?ns=up names the same cached repository");
    for (blob, bytes) in &blobs {
        cache.pull_blob("team/app", blob, bytes).await;
    }
    let mirrored = cache
        .get(&format!("/v2/team/app/blobs/{}?ns=up", blobs[1].0))
        .await;
    assert_eq!(mirrored.status, 200);
    assert!(mirrored.body == blobs[1].1);
    assert_eq!(
        cache.upstream.asked(),
        asked,
        "the second pull asked the upstream nothing"
    );
}

#[actix_web::test]
async fn a_tag_is_trusted_for_tag_ttl_then_revalidated_and_a_moved_tag_followed() {
    let cache = Cache::new(None).await;
    let path = "/v2/proxy/up/team/moving/manifests/v1";
    let (old, _) = image(&cache.upstream, "team/moving", "v1", 3);
    assert_eq!(cache.manifest_digest(path).await, old.to_string());
    let (new, _) = image(&cache.upstream, "team/moving", "v1", 5);
    assert_ne!(old, new);

    // Within tagTtl the upstream is not asked, though the tag moved there.
    cache.clock.advance(TAG_TTL - SECOND);
    assert_eq!(cache.manifest_digest(path).await, old.to_string());
    let asked = cache.upstream.asked();
    assert_eq!((asked.tag_heads, asked.manifest_gets), (0, 1));

    // Past it: one HEAD sees the move, one GET fetches the new manifest.
    cache.clock.advance(2 * SECOND);
    assert_eq!(cache.manifest_digest(path).await, new.to_string());
    let asked = cache.upstream.asked();
    assert_eq!((asked.tag_heads, asked.manifest_gets), (1, 2));

    // Trusted again for tagTtl; past it, a tag that did not move costs a HEAD only.
    assert_eq!(cache.manifest_digest(path).await, new.to_string());
    assert_eq!(cache.upstream.asked().tag_heads, 1);
    cache.clock.advance(TAG_TTL + SECOND);
    assert_eq!(cache.manifest_digest(path).await, new.to_string());
    let asked = cache.upstream.asked();
    assert_eq!((asked.tag_heads, asked.manifest_gets), (2, 2));

    // The old image stays pullable by digest, from the cache.
    let by_digest = format!("/v2/proxy/up/team/moving/manifests/{old}");
    assert_eq!(cache.manifest_digest(&by_digest).await, old.to_string());
    assert_eq!(cache.upstream.asked().manifest_gets, 2);
}

#[actix_web::test]
async fn a_down_upstream_serves_the_cached_tag_past_tag_ttl_and_503_for_what_is_not_cached() {
    let cache = Cache::new(None).await;
    let (digest, blobs) = image(&cache.upstream, "team/app", "v1", 7);
    let path = "/v2/proxy/up/team/app/manifests/v1";
    assert_eq!(cache.manifest_digest(path).await, digest.to_string());
    let tags = cache.get("/v2/proxy/up/team/app/tags/list").await;
    assert_eq!(tags.status, 200);

    cache.upstream.set_down(true);
    cache.clock.advance(TAG_TTL + SECOND);
    // Stale-if-error: the revalidation fails, the cached manifest is served.
    assert_eq!(cache.manifest_digest(path).await, digest.to_string());
    assert_eq!(cache.upstream.asked().tag_heads, 1, "it did ask");
    assert_eq!(
        cache
            .manifest_digest("/v2/team/app/manifests/v1?ns=up")
            .await,
        digest.to_string()
    );
    // The tags cached so far stand in for the upstream's list.
    let tags = cache.get("/v2/proxy/up/team/app/tags/list").await;
    assert_eq!(tags.status, 200);
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).expect("json");
    assert_eq!(tags["tags"], json!(["v1"]), "{tags}");

    // Nothing cached: 503 naming the upstream (and Retry-After), for a manifest and a blob alike.
    for path in [
        "/v2/proxy/up/team/other/manifests/v1".to_owned(),
        "/v2/team/other/manifests/v1?ns=up".to_owned(),
        format!("/v2/proxy/up/team/app/blobs/{}", blobs[1].0),
    ] {
        let answer = cache.get(&path).await;
        let message = answer.expect_error(503, "UNKNOWN");
        assert!(message.contains("upstream up"), "{path}: {message}");
        assert!(message.contains("unreachable"), "{path}: {message}");
        assert_eq!(answer.header("retry-after"), "5", "{path}");
    }
}

#[actix_web::test]
async fn concurrent_pulls_of_an_uncached_blob_share_one_upstream_fetch() {
    let cache = Cache::new(None).await;
    let bytes = Bytes::from(content(100_000, 9));
    let digest = cache.upstream.add_blob(bytes.clone());
    let path = format!("/v2/proxy/up/team/app/blobs/{digest}");
    let held = cache.upstream.hold_blobs();

    // Both requests are answered (headers) while the upstream still holds the last byte.
    let (a, b) = futures_util::join!(
        cache.berth.call(TestRequest::get().uri(&path)),
        cache.berth.call(TestRequest::get().uri(&path))
    );
    assert_eq!(a.status().as_u16(), 200);
    assert_eq!(b.status().as_u16(), 200);
    assert_eq!(
        cache.upstream.asked().blob_gets,
        1,
        "one upstream fetch for two clients"
    );
    assert!(
        !cache.cached("team/app", &digest).await,
        "not visible before its last byte is verified"
    );

    held.release();
    let ((bytes_a, error_a), (bytes_b, error_b)) =
        futures_util::join!(read_to_end(a), read_to_end(b));
    assert_eq!((error_a, error_b), (None, None));
    assert!(bytes_a == bytes, "the first body is the blob");
    assert!(bytes_b == bytes, "the second body is the blob");
    assert_eq!(cache.upstream.blob_gets_of(&digest), 1);

    // Cached now: a third pull does not ask the upstream.
    cache.pull_blob("team/app", &digest, &bytes).await;
    assert_eq!(cache.upstream.asked().blob_gets, 1);
}

/// A blob the upstream breaks (`wrong` bytes for its digest, or `fault`): the client gets a body broken off
/// before its end, never a complete one; nothing is linked or left over; the next pull fetches again.
async fn a_broken_blob_is_never_served_whole_nor_cached(wrong: bool, fault: BlobFault) {
    let cache = Cache::new(None).await;
    let right = Bytes::from(content(70_000, 11));
    let digest = cache.upstream.add_blob(right.clone());
    if wrong {
        let mut bytes = right.to_vec();
        bytes[69_999] ^= 0xff;
        cache.upstream.set_blob(&digest, Bytes::from(bytes));
    }
    cache.upstream.set_fault(fault);
    let held = cache.upstream.hold_blobs();
    let path = format!("/v2/proxy/up/team/app/blobs/{digest}");

    let response = cache.berth.call(TestRequest::get().uri(&path)).await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "headers go out before the body is checked"
    );
    held.release();
    let (received, error) = read_to_end(response).await;
    let error = error.expect("the transfer breaks off");
    assert!(
        received.len() < right.len(),
        "{} of {} bytes then {error}: the last byte is withheld",
        received.len(),
        right.len()
    );
    assert!(
        received[..] == right[..received.len()],
        "what came is a prefix of the blob"
    );

    // Nothing was linked, nothing is left over: a HEAD asks the upstream, and no upload remains.
    assert!(!cache.cached("team/app", &digest).await);
    cache
        .until("the failed upload to be deleted", || async {
            cache.storage.uploads().await.expect("uploads").is_empty()
        })
        .await;
    assert_eq!(cache.head(&path).await.status, 200);
    assert_eq!(
        cache.upstream.asked().blob_heads,
        1,
        "the HEAD was answered upstream"
    );

    // The upstream mends: the next pull fetches again and is kept.
    cache.upstream.set_blob(&digest, right.clone());
    cache.upstream.set_fault(BlobFault::None);
    cache.upstream.stop_holding();
    cache.pull_blob("team/app", &digest, &right).await;
    assert_eq!(cache.upstream.blob_gets_of(&digest), 2);
    assert!(cache.cached("team/app", &digest).await);
    assert_eq!(cache.head(&path).await.status, 200);
    assert_eq!(
        cache.upstream.asked().blob_heads,
        1,
        "the HEAD was answered from the cache"
    );
}

#[actix_web::test]
async fn a_blob_with_the_wrong_digest_is_never_served_whole_nor_cached() {
    a_broken_blob_is_never_served_whole_nor_cached(true, BlobFault::None).await;
}

#[actix_web::test]
async fn a_blob_cut_off_upstream_is_never_served_whole_nor_cached() {
    a_broken_blob_is_never_served_whole_nor_cached(false, BlobFault::CutOff).await;
}

#[actix_web::test]
async fn past_max_size_the_least_recently_used_proxied_blob_is_evicted_never_pushed_content() {
    const SIZE: usize = 100_000;
    // Room for three of the four.
    let cache = Cache::new(Some(3 * SIZE as u64 + SIZE as u64 / 2)).await;
    let blobs: Vec<(Digest, Bytes)> = (0..4)
        .map(|i| {
            let bytes = Bytes::from(content(SIZE, 101 + 2 * i));
            (cache.upstream.add_blob(bytes.clone()), bytes)
        })
        .collect();
    // Pushed content in a local repository: never counted, never evicted.
    let local = content(SIZE, 201);
    let local_digest = Digest::sha256_of(&local);
    let pushed = cache
        .berth
        .send(
            TestRequest::post()
                .uri(&format!(
                    "/v2/local/app/blobs/uploads/?digest={local_digest}"
                ))
                .set_payload(local.clone()),
        )
        .await;
    assert_eq!(pushed.status, 201);

    let pull = |i: usize| {
        let (digest, bytes) = &blobs[i];
        // Each use a second later than the last, so the order of use is the order of the clock.
        cache.clock.advance(SECOND);
        cache.pull_blob("team/lru", digest, bytes)
    };
    let cached = |i: usize| cache.cached("team/lru", &blobs[i].0);
    let [a, b, c, d] = [0, 1, 2, 3];
    pull(a).await;
    pull(b).await;
    pull(c).await;
    assert!(cached(a).await && cached(b).await && cached(c).await);
    pull(a).await; // now b is the least recently used
    pull(d).await; // four do not fit: b goes
    cache
        .until("the least recently used blob to be evicted", || async {
            !cached(b).await
        })
        .await;
    assert!(cached(a).await, "a was used recently and must stay");
    assert!(cached(c).await && cached(d).await);

    // b comes back from the upstream when asked, and c (now the least recently used) goes.
    pull(b).await;
    assert_eq!(cache.upstream.blob_gets_of(&blobs[b].0), 2);
    cache
        .until(
            "the next least recently used blob to be evicted",
            || async { !cached(c).await },
        )
        .await;
    assert!(cached(a).await && cached(b).await && cached(d).await);
    assert_eq!(
        cache.upstream.blob_gets_of(&blobs[a].0),
        1,
        "a never left the cache"
    );

    // The pushed blob is still there and served.
    let body = cache
        .get(&format!("/v2/local/app/blobs/{local_digest}"))
        .await;
    assert_eq!(body.status, 200);
    assert!(body.body == local, "the pushed blob is intact");
}

/// Review of issue 10: a manifest's bytes are stored as the blob of its digest but never blob-linked, so evicting a
/// cached blob with the same digest deleted the pushed manifest's content (its GET answered 500). Eviction now
/// keeps content any repository holds as a manifest.
#[actix_web::test]
async fn evicting_a_cached_blob_keeps_a_pushed_manifest_with_the_same_bytes() {
    const SIZE: usize = 100_000;
    // Room for the manifest-sized blob and one big one, not for two big ones.
    let cache = Cache::new(Some(SIZE as u64 + SIZE as u64 / 2)).await;
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
    );
    let pushed = cache
        .berth
        .send(
            TestRequest::put()
                .uri("/v2/local/app/manifests/v1")
                .insert_header(("content-type", "application/vnd.oci.image.index.v1+json"))
                .set_payload(manifest.clone()),
        )
        .await;
    assert_eq!(pushed.status, 201, "{:?}", pushed.body);
    // The upstream has the same bytes as a blob; pulling it through the cache makes it a cached blob.
    let same = cache.upstream.add_blob(manifest.clone());
    assert_eq!(same, Digest::sha256_of(&manifest));
    cache.pull_blob("team/shared", &same, &manifest).await;
    let big: Vec<(Digest, Bytes)> = (0..2)
        .map(|i| {
            let bytes = Bytes::from(content(SIZE, 301 + 2 * i));
            (cache.upstream.add_blob(bytes.clone()), bytes)
        })
        .collect();
    for (digest, bytes) in &big {
        cache.clock.advance(SECOND);
        cache.pull_blob("team/shared", digest, bytes).await;
    }
    // The manifest-sized blob was used least recently: it is evicted from the cache.
    cache
        .until("the least recently used blob to be evicted", || async {
            !cache.cached("team/shared", &same).await
        })
        .await;
    let answer = cache.get("/v2/local/app/manifests/v1").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(answer.body == manifest, "the pushed manifest is intact");
}

#[actix_web::test]
async fn writes_to_a_proxied_repository_are_refused_and_reach_no_upstream() {
    let cache = Cache::new(None).await;
    let (digest, blobs) = image(&cache.upstream, "team/app", "v1", 13);
    let path = "/v2/proxy/up/team/app/manifests/v1";
    assert_eq!(cache.manifest_digest(path).await, digest.to_string());
    let asked = cache.upstream.asked();

    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    for request in [
        TestRequest::put()
            .uri("/v2/proxy/up/team/app/manifests/v2")
            .insert_header(("content-type", OCI_MANIFEST))
            .set_payload(manifest.clone()),
        TestRequest::put()
            .uri("/v2/team/app/manifests/v2?ns=up")
            .insert_header(("content-type", OCI_MANIFEST))
            .set_payload(manifest),
        TestRequest::delete().uri(path),
        TestRequest::delete().uri(&format!("/v2/proxy/up/team/app/blobs/{}", blobs[0].0)),
        TestRequest::post().uri("/v2/proxy/up/team/app/blobs/uploads/"),
    ] {
        let message = cache
            .berth
            .send(request)
            .await
            .expect_error(405, "UNSUPPORTED");
        assert!(
            message.contains("read-only proxy of upstream up"),
            "{message}"
        );
    }
    assert_eq!(
        cache.upstream.asked(),
        asked,
        "a refused write asks the upstream nothing"
    );
    assert_eq!(
        cache.manifest_digest(path).await,
        digest.to_string(),
        "nothing changed"
    );
    cache
        .get("/v2/proxy/up/team/app/manifests/v2")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}
