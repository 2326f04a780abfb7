//! Immutable tags (issue 11) through the front door: the policy's `immutableTags` refuse moving such a tag to another
//! manifest, deleting it, and deleting the manifest it points at (403 `DENIED`, naming the tag, the repository, the
//! rule and the digest); pushing the identical manifest again succeeds, other tags are unaffected, and of two racing
//! pushes of different manifests to a new immutable tag exactly one wins.

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
