//! Immutable tags (issue 11) through the front door: the policy's `immutableTags` refuse moving such a tag to another
//! manifest, deleting it, and deleting the manifest it points at (403 `DENIED`, naming the tag, the repository, the
//! rule and the digest); pushing the identical manifest again succeeds, other tags are unaffected, and of two racing
//! pushes of different manifests to a new immutable tag exactly one wins. What such a tag holds stays whole: the
//! blobs of its manifest and the children of its index are not deleted, and its media type is not changed.

use actix_web::test::TestRequest;
use futures_util::future::join;
use serde_json::json;

use super::{Fixture, InProcess};
use crate::api::sha256;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

const POLICY: &str = r#"
immutableTags:
  - name: releases
    repositories: ['team/.*']
    tags: ['v[0-9]+\.[0-9]+\.[0-9]+']
"#;

/// berth with [`POLICY`] in force, and the config and layer blob every manifest of `team/app` names.
async fn berth() -> Fixture {
    let fixture = Fixture::new().await;
    fixture
        .berth
        .state
        .policy
        .apply("test", POLICY)
        .expect("the policy is valid");
    for blob in [&br#"{"os":"linux"}"#[..], b"layer"] {
        let pushed = fixture
            .berth
            .send(
                TestRequest::post()
                    .uri(&format!(
                        "/v2/team/app/blobs/uploads/?digest={}",
                        sha256(blob)
                    ))
                    .set_payload(blob.to_vec()),
            )
            .await;
        assert_eq!(pushed.status, 201, "{:?}", pushed.body);
    }
    fixture
}

/// A manifest of `team/app` naming the blobs [`berth`] pushed, made unique by `seed`.
fn manifest(seed: u32) -> Vec<u8> {
    let config = br#"{"os":"linux"}"#;
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"layer"), "size": 5}],
        "annotations": {"seed": seed.to_string()},
    }))
    .expect("json")
}

fn put(reference: &str, manifest: &[u8]) -> TestRequest {
    TestRequest::put()
        .uri(&format!("/v2/team/app/manifests/{reference}"))
        .insert_header(("content-type", OCI_MANIFEST))
        .set_payload(manifest.to_vec())
}

/// What `reference` resolves to (its digest), or `None` when it is unknown.
async fn resolved(berth: &InProcess, reference: &str) -> Option<String> {
    let got = berth
        .send(TestRequest::get().uri(&format!("/v2/team/app/manifests/{reference}")))
        .await;
    (got.status == 200).then(|| got.header("docker-content-digest").to_owned())
}

#[actix_web::test]
async fn the_identical_manifest_again_succeeds_and_a_different_one_is_refused() {
    let fixture = berth().await;
    let berth = &fixture.berth;
    let (first, second) = (manifest(1), manifest(2));
    assert_eq!(berth.send(put("v1.0.0", &first)).await.status, 201);
    // A CI retry of the same push.
    let again = berth.send(put("v1.0.0", &first)).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(again.header("docker-content-digest"), sha256(&first));

    let message = berth
        .send(put("v1.0.0", &second))
        .await
        .expect_error(403, "DENIED");
    for needle in [
        "team/app:v1.0.0",
        "rule \"releases\"",
        &sha256(&first),
        "a different manifest",
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert_eq!(resolved(berth, "v1.0.0").await, Some(sha256(&first)));
    // The refused manifest was not stored either.
    assert_eq!(resolved(berth, &sha256(&second)).await, None);

    // ?tag= on a push by digest is held to the same rule.
    let by_digest = format!("{}?tag=v1.0.0&tag=v9.9.9", sha256(&second));
    berth
        .send(put(&by_digest, &second))
        .await
        .expect_error(403, "DENIED");
    assert_eq!(resolved(berth, "v9.9.9").await, None);
}

#[actix_web::test]
async fn an_immutable_tag_cannot_be_deleted_nor_the_manifest_it_points_at() {
    let fixture = berth().await;
    let berth = &fixture.berth;
    let first = manifest(1);
    let digest = sha256(&first);
    assert_eq!(berth.send(put("v1.0.0", &first)).await.status, 201);

    let message = berth
        .send(TestRequest::delete().uri("/v2/team/app/manifests/v1.0.0"))
        .await
        .expect_error(403, "DENIED");
    assert!(
        message.contains("cannot be deleted") && message.contains("rule \"releases\""),
        "{message}"
    );
    let message = berth
        .send(TestRequest::delete().uri(&format!("/v2/team/app/manifests/{digest}")))
        .await
        .expect_error(403, "DENIED");
    assert!(
        message.contains("team/app:v1.0.0") && message.contains(&digest),
        "{message}"
    );
    assert_eq!(resolved(berth, "v1.0.0").await, Some(digest.clone()));
    assert_eq!(resolved(berth, &digest).await, Some(digest));
    // An immutable tag that does not exist is simply unknown.
    berth
        .send(TestRequest::delete().uri("/v2/team/app/manifests/v2.0.0"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[actix_web::test]
async fn tags_no_rule_names_move_and_are_deleted_as_before() {
    let fixture = berth().await;
    let berth = &fixture.berth;
    let (first, second) = (manifest(1), manifest(2));
    for tag in ["latest", "v1.0", "v1.0.0-rc1"] {
        assert_eq!(berth.send(put(tag, &first)).await.status, 201, "{tag}");
        assert_eq!(berth.send(put(tag, &second)).await.status, 201, "{tag}");
        assert_eq!(resolved(berth, tag).await, Some(sha256(&second)), "{tag}");
    }
    let deleted = berth
        .send(TestRequest::delete().uri("/v2/team/app/manifests/latest"))
        .await;
    assert_eq!(deleted.status, 202);
    // The manifest the remaining mutable tags point at can be deleted.
    let deleted = berth
        .send(TestRequest::delete().uri(&format!("/v2/team/app/manifests/{}", sha256(&second))))
        .await;
    assert_eq!(deleted.status, 202);
    assert_eq!(resolved(berth, "v1.0").await, None);
}

#[actix_web::test]
async fn of_two_racing_pushes_to_a_new_immutable_tag_exactly_one_wins() {
    let fixture = berth().await;
    let berth = &fixture.berth;
    for round in 0..20u32 {
        let tag = format!("v1.0.{round}");
        let (a, b) = (manifest(2 * round), manifest(2 * round + 1));
        let (first, second) = join(berth.send(put(&tag, &a)), berth.send(put(&tag, &b))).await;
        let winner = match (first.status, second.status) {
            (201, 403) => sha256(&a),
            (403, 201) => sha256(&b),
            other => panic!("round {round}: statuses {other:?}; exactly one push may win"),
        };
        assert_eq!(resolved(berth, &tag).await, Some(winner), "round {round}");
    }
}

/// An OCI index of `team/app` naming `children` (image manifests already pushed), made unique by `seed`.
fn index(children: &[&[u8]], seed: u32) -> Vec<u8> {
    index_of(OCI_MANIFEST, children, seed)
}

/// An OCI index naming `children` of media type `media_type`, made unique by `seed`.
fn index_of(media_type: &str, children: &[&[u8]], seed: u32) -> Vec<u8> {
    let manifests: Vec<_> = children
        .iter()
        .map(|child| json!({"mediaType": media_type, "digest": sha256(child), "size": child.len()}))
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
        "annotations": {"seed": seed.to_string()},
    }))
    .expect("json")
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn put_as(reference: &str, content_type: &str, manifest: &[u8]) -> TestRequest {
    TestRequest::put()
        .uri(&format!("/v2/team/app/manifests/{reference}"))
        .insert_header(("content-type", content_type))
        .set_payload(manifest.to_vec())
}

fn delete_blob(blob: &[u8]) -> TestRequest {
    TestRequest::delete().uri(&format!("/v2/team/app/blobs/{}", sha256(blob)))
}

/// Whether `blob` is still visible in `team/app`.
async fn blob_present(berth: &InProcess, blob: &[u8]) -> bool {
    let got = berth
        .send(TestRequest::get().uri(&format!("/v2/team/app/blobs/{}", sha256(blob))))
        .await;
    got.status == 200
}

/// Review finding: `DELETE /v2/<repo>/blobs/<digest>` of a layer or config of an immutably tagged manifest (or of a
/// child of an immutably tagged index) succeeded, destroying a release that cannot be replaced.
#[actix_web::test]
async fn a_blob_an_immutable_tag_holds_cannot_be_deleted() {
    let fixture = berth().await;
    let berth = &fixture.berth;
    let (config, layer) = (&br#"{"os":"linux"}"#[..], &b"layer"[..]);
    let first = manifest(1);
    assert_eq!(berth.send(put("v1.0.0", &first)).await.status, 201);
    for blob in [layer, config] {
        let message = berth
            .send(delete_blob(blob))
            .await
            .expect_error(403, "DENIED");
        for needle in [
            "the blob cannot be deleted",
            "team/app:v1.0.0",
            "rule \"releases\"",
            &sha256(&first),
        ] {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        assert!(blob_present(berth, blob).await);
    }

    // Held through an index: the child is pushed by digest only, the index under an immutable tag.
    let fixture = self::berth().await;
    let berth = &fixture.berth;
    let child = manifest(2);
    assert_eq!(berth.send(put(&sha256(&child), &child)).await.status, 201);
    let release = index(&[&child], 1);
    assert_eq!(
        berth
            .send(put_as("v2.0.0", OCI_INDEX, &release))
            .await
            .status,
        201
    );
    let message = berth
        .send(delete_blob(layer))
        .await
        .expect_error(403, "DENIED");
    assert!(
        message.contains("team/app:v2.0.0") && message.contains(&sha256(&release)),
        "{message}"
    );
    assert!(blob_present(berth, layer).await);

    // A blob only mutable tags hold is deleted as before.
    let fixture = self::berth().await;
    let berth = &fixture.berth;
    assert_eq!(berth.send(put("latest", &manifest(3))).await.status, 201);
    assert_eq!(berth.send(delete_blob(layer)).await.status, 202);
    assert!(!blob_present(berth, layer).await);
}

/// Review finding: a child manifest of an immutably tagged index could be deleted by digest.
#[actix_web::test]
async fn a_child_of_an_immutably_tagged_index_cannot_be_deleted() {
    let fixture = berth().await;
    let berth = &fixture.berth;
    let (child, other) = (manifest(1), manifest(2));
    for manifest in [&child, &other] {
        let pushed = berth.send(put(&sha256(manifest), manifest)).await;
        assert_eq!(pushed.status, 201);
    }
    let release = index(&[&child], 1);
    assert_eq!(
        berth
            .send(put_as("v1.0.0", OCI_INDEX, &release))
            .await
            .status,
        201
    );
    // An index of indexes holds its grandchildren too.
    let nested = index_of(OCI_INDEX, &[&release], 2);
    assert_eq!(
        berth
            .send(put_as("v1.1.0", OCI_INDEX, &nested))
            .await
            .status,
        201
    );
    let message = berth
        .send(TestRequest::delete().uri(&format!("/v2/team/app/manifests/{}", sha256(&child))))
        .await
        .expect_error(403, "DENIED");
    for needle in [
        "an index an immutable tag points at",
        "team/app:v1.0.0",
        "rule \"releases\"",
        &sha256(&release),
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert_eq!(resolved(berth, &sha256(&child)).await, Some(sha256(&child)));
    // The index v1.1.0 names is held by v1.1.0 though it is also tagged itself.
    berth
        .send(TestRequest::delete().uri(&format!("/v2/team/app/manifests/{}", sha256(&release))))
        .await
        .expect_error(403, "DENIED");
    // A manifest no immutable tag holds is deleted as before.
    let deleted = berth
        .send(TestRequest::delete().uri(&format!("/v2/team/app/manifests/{}", sha256(&other))))
        .await;
    assert_eq!(deleted.status, 202);
}

/// Review finding: the identical bytes of an immutably tagged manifest without a `mediaType` field, pushed again
/// with another Content-Type, changed the media type the tag serves. Refused; the stored media type stays, and the
/// identical push (same Content-Type) still succeeds.
#[actix_web::test]
async fn the_media_type_an_immutable_tag_serves_cannot_be_changed() {
    const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    let fixture = berth().await;
    let berth = &fixture.berth;
    let bare = {
        let mut value: serde_json::Value = serde_json::from_slice(&manifest(1)).expect("json");
        value.as_object_mut().expect("object").remove("mediaType");
        serde_json::to_vec(&value).expect("json")
    };
    let digest = sha256(&bare);
    assert_eq!(
        berth
            .send(put_as("v1.0.0", OCI_MANIFEST, &bare))
            .await
            .status,
        201
    );
    let again = berth.send(put_as("v1.0.0", OCI_MANIFEST, &bare)).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    for reference in ["v1.0.0", digest.as_str()] {
        let message = berth
            .send(put_as(reference, DOCKER_MANIFEST, &bare))
            .await
            .expect_error(403, "DENIED");
        for needle in ["another media type", "team/app:v1.0.0", "rule \"releases\""] {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
    }
    let served = berth
        .send(TestRequest::get().uri("/v2/team/app/manifests/v1.0.0"))
        .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), OCI_MANIFEST);

    // A manifest no immutable tag holds takes the new media type as before.
    let other = {
        let mut value: serde_json::Value = serde_json::from_slice(&bare).expect("json");
        value["annotations"]["seed"] = json!("2");
        serde_json::to_vec(&value).expect("json")
    };
    assert_eq!(
        berth
            .send(put_as("latest", OCI_MANIFEST, &other))
            .await
            .status,
        201
    );
    assert_eq!(
        berth
            .send(put_as("latest", DOCKER_MANIFEST, &other))
            .await
            .status,
        201
    );
    let retyped = berth
        .send(TestRequest::get().uri("/v2/team/app/manifests/latest"))
        .await;
    assert_eq!(retyped.header("content-type"), DOCKER_MANIFEST);
}
