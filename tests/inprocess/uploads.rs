//! Upload semantics through the HTTP service over the memory backend: chunks in order and out of order, the
//! closing `PUT` and its rollback on a wrong digest, the running hash rebuilt after a restart, expiry by the
//! sweep (the manual clock moved, no sleep), monolithic pushes, cancel, and the cap on upload sessions.
//!
//! The same requests over real sockets are in `tests/api.rs` (HTTP/2 bodies, TLS) and `tests/abuse.rs` (what a
//! client can do to the caps); here each behaviour is shown in detail, with every status and header that matters.

use actix_web::http::Method;
use actix_web::test::TestRequest;

use super::{Answer, Fixture, InProcess};
use crate::api::{content, sha256};

/// Starts an upload in `repo`; checks the 202 and returns its location.
async fn start(berth: &InProcess, repo: &str) -> String {
    let started = berth
        .send(TestRequest::post().uri(&format!("/v2/{repo}/blobs/uploads/")))
        .await;
    assert_eq!(started.status, 202, "{:?}", started.body);
    assert_eq!(started.header("range"), "0-0");
    let location = started.header("location").to_owned();
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    let id = location
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("location {location:?} is not under {prefix}"));
    assert_eq!(started.header("docker-upload-uuid"), id);
    location
}

/// `PATCH`es `chunk` into the upload at `location`, with `Content-Range` when `from` is given.
async fn patch(berth: &InProcess, location: &str, from: Option<usize>, chunk: &[u8]) -> Answer {
    let mut request = TestRequest::patch()
        .uri(location)
        .insert_header(("content-type", "application/octet-stream"))
        .set_payload(chunk.to_vec());
    if let Some(from) = from {
        request = request.insert_header(("content-range", content_range(from, chunk.len())));
    }
    berth.send(request).await
}

/// The closing `PUT ?digest=`, with `chunk` as its body (`Content-Range` when `from` is given).
async fn close(
    berth: &InProcess,
    location: &str,
    digest: &str,
    from: Option<usize>,
    chunk: &[u8],
) -> Answer {
    let mut request = TestRequest::put()
        .uri(&format!("{location}?digest={digest}"))
        .set_payload(chunk.to_vec());
    if let Some(from) = from {
        request = request.insert_header(("content-range", content_range(from, chunk.len())));
    }
    berth.send(request).await
}

/// `<first>-<last>` of a chunk of `len` bytes from `from`.
fn content_range(from: usize, len: usize) -> String {
    format!("{from}-{}", from + len - 1)
}

/// Asserts the 202 of an accepted chunk: where the upload continues and that it holds `held` bytes.
#[track_caller]
fn assert_accepted(answer: &Answer, location: &str, held: usize) {
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.header("location"), location);
    assert_eq!(answer.header("range"), format!("0-{}", held - 1));
    assert_eq!(
        Some(answer.header("docker-upload-uuid")),
        location.rsplit('/').next(),
        "Docker-Upload-UUID is the id in the location"
    );
}

/// Asserts the 201 of a blob now visible in `repo`.
#[track_caller]
fn assert_created(answer: &Answer, repo: &str, digest: &str) {
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header("location"),
        format!("/v2/{repo}/blobs/{digest}")
    );
    assert_eq!(answer.header("docker-content-digest"), digest);
}

/// The upload's status: 204 with what it holds (`Range`).
async fn status(berth: &InProcess, location: &str) -> Answer {
    let answer = berth.send(TestRequest::get().uri(location)).await;
    assert_eq!(answer.status, 204, "{:?}", answer.body);
    assert_eq!(answer.header("location"), location);
    answer
}

/// Pulls the blob and checks it is `bytes`.
async fn assert_pulled(berth: &InProcess, repo: &str, digest: &str, bytes: &[u8]) {
    let pulled = berth
        .send(TestRequest::get().uri(&format!("/v2/{repo}/blobs/{digest}")))
        .await;
    assert_eq!(pulled.status, 200);
    assert_eq!(pulled.header("docker-content-digest"), digest);
    assert_eq!(pulled.body.len(), bytes.len());
    assert!(
        pulled.body == bytes,
        "the blob pulled differs from the one pushed"
    );
}

/// The status of a `HEAD` of the blob in `repo`.
async fn head_blob(berth: &InProcess, repo: &str, digest: &str) -> u16 {
    berth
        .call(
            TestRequest::default()
                .method(Method::HEAD)
                .uri(&format!("/v2/{repo}/blobs/{digest}")),
        )
        .await
        .status()
        .as_u16()
}

/// How many uploads the storage holds.
async fn stored_uploads(fixture: &Fixture) -> usize {
    fixture
        .storage
        .uploads()
        .await
        .unwrap_or_else(|e| panic!("listing uploads: {e}"))
        .len()
}

#[actix_web::test]
async fn chunks_in_order_then_the_closing_put_make_the_blob() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let bytes = content(3 * 65_536 + 17, 1);
    let digest = sha256(&bytes);
    let location = start(berth, "team/app").await;
    assert_eq!(status(berth, &location).await.header("range"), "0-0");

    let mut held = 0;
    for chunk in bytes.chunks(65_536) {
        let accepted = patch(berth, &location, Some(held), chunk).await;
        held += chunk.len();
        assert_accepted(&accepted, &location, held);
    }
    assert_eq!(
        status(berth, &location).await.header("range"),
        format!("0-{}", bytes.len() - 1)
    );
    assert_eq!(
        head_blob(berth, "team/app", &digest).await,
        404,
        "not before the PUT"
    );

    let closed = close(berth, &location, &digest, None, b"").await;
    assert_created(&closed, "team/app", &digest);
    assert_pulled(berth, "team/app", &digest, &bytes).await;
    // A finished upload is gone, and so is its session.
    berth
        .send(TestRequest::get().uri(&location))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(berth.state.registry.upload_sessions(), 0);
    assert_eq!(stored_uploads(&fixture).await, 0);
}

#[actix_web::test]
async fn a_chunk_out_of_order_is_416_with_what_is_held_and_loses_nothing() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let bytes = content(3000, 2);
    let digest = sha256(&bytes);
    let (first, rest) = bytes.split_at(1000);
    let (second, last) = rest.split_at(1000);
    let location = start(berth, "team/app").await;
    assert_accepted(
        &patch(berth, &location, Some(0), first).await,
        &location,
        1000,
    );

    // A gap (the chunk starts past the end), then an overlap (it starts before): each is refused with where the
    // upload continues and what it holds.
    for (from, chunk) in [(2000, last), (0, first)] {
        let refused = patch(berth, &location, Some(from), chunk).await;
        let message = refused.expect_error(416, "BLOB_UPLOAD_INVALID");
        assert_eq!(refused.header("range"), "0-999", "{message}");
        assert_eq!(refused.header("location"), location, "{message}");
    }
    assert_eq!(status(berth, &location).await.header("range"), "0-999");

    assert_accepted(
        &patch(berth, &location, Some(1000), second).await,
        &location,
        2000,
    );
    let closed = close(berth, &location, &digest, Some(2000), last).await;
    assert_created(&closed, "team/app", &digest);
    assert_pulled(berth, "team/app", &digest, &bytes).await;
}

#[actix_web::test]
async fn a_wrong_digest_on_the_closing_put_rolls_back_that_put_only() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let bytes = content(200_000, 3);
    let digest = sha256(&bytes);
    let wrong = sha256(b"something else");
    let (first, rest) = bytes.split_at(70_000);
    let location = start(berth, "team/app").await;
    assert_accepted(
        &patch(berth, &location, Some(0), first).await,
        &location,
        first.len(),
    );

    let refused = close(berth, &location, &wrong, Some(first.len()), rest).await;
    let message = refused.expect_error(400, "DIGEST_INVALID");
    assert!(
        message.contains(&digest),
        "the message names the actual digest: {message}"
    );
    // Nothing visible under either digest.
    for candidate in [&digest, &wrong] {
        assert_eq!(
            head_blob(berth, "team/app", candidate).await,
            404,
            "{candidate}"
        );
    }
    // The upload holds what it held before the PUT, so the PUT can be retried as it was.
    assert_eq!(
        status(berth, &location).await.header("range"),
        format!("0-{}", first.len() - 1)
    );
    let retried = close(berth, &location, &digest, Some(first.len()), rest).await;
    assert_created(&retried, "team/app", &digest);
    assert_pulled(berth, "team/app", &digest, &bytes).await;
}

#[actix_web::test]
async fn the_running_hash_is_rebuilt_from_the_stored_bytes_after_a_restart() {
    the_hash_is_rebuilt_after_a_restart(Fixture::new().await).await;
}

/// The same over the filesystem backend, whose restart reads the upload back from disk.
#[actix_web::test]
async fn the_running_hash_is_rebuilt_from_the_stored_file_after_a_restart() {
    the_hash_is_rebuilt_after_a_restart(Fixture::on_filesystem(|_| {}).await).await;
}

async fn the_hash_is_rebuilt_after_a_restart(mut fixture: Fixture) {
    let bytes = content(300_000, 4);
    let digest = sha256(&bytes);
    let (first, rest) = bytes.split_at(100_000);
    let location = start(&fixture.berth, "team/app").await;
    assert_accepted(
        &patch(&fixture.berth, &location, Some(0), first).await,
        &location,
        first.len(),
    );

    // The new berth finds the upload (a session again), but not its running hash: the next PATCH rebuilds it.
    fixture.restart().await;
    assert_eq!(fixture.berth.state.registry.upload_sessions(), 1);
    assert_eq!(
        status(&fixture.berth, &location).await.header("range"),
        format!("0-{}", first.len() - 1)
    );
    assert_accepted(
        &patch(&fixture.berth, &location, Some(first.len()), rest).await,
        &location,
        bytes.len(),
    );

    // And once more before a closing PUT without a body: the PUT rebuilds it.
    fixture.restart().await;
    let closed = close(&fixture.berth, &location, &digest, None, b"").await;
    assert_created(&closed, "team/app", &digest);
    assert_pulled(&fixture.berth, "team/app", &digest, &bytes).await;
}

/// Issue 10: `tests/api.rs` slept 1.5 s to age an upload; here the manual clock ages it.
#[actix_web::test]
async fn the_sweep_expires_an_upload_untouched_for_longer_than_the_max_age() {
    let hour = std::time::Duration::from_secs(3600);
    let fixture = Fixture::with_config(|config| config.upload_max_age = hour).await;
    let berth = &fixture.berth;
    let idle = start(berth, "team/app").await;
    let busy = start(berth, "team/app").await;
    assert_accepted(&patch(berth, &idle, Some(0), b"idle").await, &idle, 4);
    fixture.clock.advance(hour / 2);
    assert_accepted(&patch(berth, &busy, Some(0), b"busy").await, &busy, 4);

    // Both at most an hour old: the sweep keeps them.
    fixture.clock.advance(hour / 2);
    assert_eq!(fixture.sweep_uploads().await, 0);
    assert_eq!(status(berth, &idle).await.header("range"), "0-3");

    // The idle one is older than an hour since its last write; the busy one is not.
    fixture.clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(fixture.sweep_uploads().await, 1);
    berth
        .send(TestRequest::get().uri(&idle))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    patch(berth, &idle, Some(4), b"late")
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(berth.state.registry.upload_sessions(), 1);
    assert_eq!(stored_uploads(&fixture).await, 1);

    // The one that survived is whole: it completes.
    assert_eq!(status(berth, &busy).await.header("range"), "0-3");
    let closed = close(berth, &busy, &sha256(b"busy!"), Some(4), b"!").await;
    assert_created(&closed, "team/app", &sha256(b"busy!"));
    assert_pulled(berth, "team/app", &sha256(b"busy!"), b"busy!").await;
}

#[actix_web::test]
async fn a_monolithic_push_with_a_wrong_digest_leaves_nothing() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let bytes = content(100_000, 5);
    let wrong = sha256(b"something else");
    let message = berth
        .send(
            TestRequest::post()
                .uri(&format!("/v2/team/app/blobs/uploads/?digest={wrong}"))
                .set_payload(bytes.clone()),
        )
        .await
        .expect_error(400, "DIGEST_INVALID");
    assert!(
        message.contains(&sha256(&bytes)),
        "the message names the actual digest: {message}"
    );
    for candidate in [sha256(&bytes), wrong] {
        berth
            .send(TestRequest::get().uri(&format!("/v2/team/app/blobs/{candidate}")))
            .await
            .expect_error(404, "BLOB_UNKNOWN");
    }
    assert_eq!(berth.state.registry.upload_sessions(), 0);
    assert_eq!(stored_uploads(&fixture).await, 0);
}

#[actix_web::test]
async fn a_cancelled_upload_is_gone() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let location = start(berth, "team/app").await;
    assert_accepted(
        &patch(berth, &location, Some(0), b"some bytes").await,
        &location,
        10,
    );

    let cancelled = berth.send(TestRequest::delete().uri(&location)).await;
    assert_eq!(cancelled.status, 204, "{:?}", cancelled.body);
    berth
        .send(TestRequest::get().uri(&location))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    patch(berth, &location, Some(10), b"more")
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    berth
        .send(TestRequest::delete().uri(&location))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(berth.state.registry.upload_sessions(), 0);
    assert_eq!(stored_uploads(&fixture).await, 0);
}

/// The cap `tests/abuse.rs` shows over sockets (429 `TOOMANYREQUESTS` with `Retry-After`), and that a finished
/// upload gives its slot back at once: the refusals compared the sessions with the stored uploads already, and the
/// manual clock keeps the next comparison from being due, so only the finish frees the slot.
#[actix_web::test]
async fn upload_sessions_are_capped_and_a_finished_upload_frees_its_slot() {
    let fixture = Fixture::with_config(|config| config.limits.max_upload_sessions = 2).await;
    let berth = &fixture.berth;
    let first = start(berth, "team/app").await;
    start(berth, "team/app").await;

    let refused = berth
        .send(TestRequest::post().uri("/v2/team/app/blobs/uploads/"))
        .await;
    refused.expect_error(429, "TOOMANYREQUESTS");
    assert_eq!(refused.header("retry-after"), "60");
    let blob = b"monolithic".to_vec();
    let monolithic = berth
        .send(
            TestRequest::post()
                .uri(&format!(
                    "/v2/team/app/blobs/uploads/?digest={}",
                    sha256(&blob)
                ))
                .set_payload(blob.clone()),
        )
        .await;
    monolithic.expect_error(429, "TOOMANYREQUESTS");
    assert_eq!(head_blob(berth, "team/app", &sha256(&blob)).await, 404);

    let finished = close(berth, &first, &sha256(&blob), None, &blob).await;
    assert_created(&finished, "team/app", &sha256(&blob));
    start(berth, "team/app").await;
    assert_eq!(berth.state.registry.upload_sessions(), 2);
}
