//! The front door in process: the base endpoint, a blob and a manifest through the local side, the `proxy/` write
//! ban on both of its paths (an upstream not configured, and a configured one), the answers for a path that is no
//! route and a method a route does not take, and the body limits the state mounts in front of every route.

use actix_web::body::{BodySize, MessageBody};
use actix_web::test::TestRequest;
use serde_json::json;

use super::Fixture;
use crate::api::{content, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[actix_web::test]
async fn base_endpoint_answers_with_the_api_version_header() {
    let fixture = Fixture::new().await;
    for request in [
        TestRequest::get().uri("/v2/"),
        TestRequest::get().uri("/v2"),
    ] {
        let answer = fixture.berth.send(request).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("docker-distribution-api-version"),
            "registry/2.0"
        );
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(&answer.body[..], b"{}");
    }
}

#[actix_web::test]
async fn monolithic_push_then_pull_of_a_blob() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let blob = content(70_000, 1);
    let digest = sha256(&blob);
    let pushed = berth
        .send(
            TestRequest::post()
                .uri(&format!("/v2/team/app/blobs/uploads/?digest={digest}"))
                .set_payload(blob.clone()),
        )
        .await;
    assert_eq!(pushed.status, 201, "{:?}", pushed.body);
    assert_eq!(
        pushed.header("location"),
        format!("/v2/team/app/blobs/{digest}")
    );
    assert_eq!(pushed.header("docker-content-digest"), digest);

    let pulled = berth
        .send(TestRequest::get().uri(&format!("/v2/team/app/blobs/{digest}")))
        .await;
    assert_eq!(pulled.status, 200);
    assert_eq!(pulled.header("docker-content-digest"), digest);
    assert_eq!(pulled.header("content-type"), "application/octet-stream");
    assert_eq!(pulled.body.len(), blob.len());
    assert!(
        pulled.body == blob,
        "the blob pulled differs from the one pushed"
    );

    // HEAD: the size without the bytes (the listener turns the sized body into Content-Length).
    let head = berth
        .call(
            TestRequest::default()
                .method(actix_web::http::Method::HEAD)
                .uri(&format!("/v2/team/app/blobs/{digest}")),
        )
        .await;
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        head.response().body().size(),
        BodySize::Sized(blob.len() as u64)
    );

    // Visible in the repository it was pushed to only.
    berth
        .send(TestRequest::get().uri(&format!("/v2/team/other/blobs/{digest}")))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
}

#[actix_web::test]
async fn manifest_put_get_delete_by_tag_and_digest() {
    let fixture = Fixture::new().await;
    let berth = &fixture.berth;
    let mut descriptors = Vec::new();
    for (media_type, bytes) in [
        (
            "application/vnd.oci.image.config.v1+json",
            br#"{"os":"linux"}"#.to_vec(),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            content(3000, 2),
        ),
    ] {
        let digest = sha256(&bytes);
        let pushed = berth
            .send(
                TestRequest::post()
                    .uri(&format!("/v2/apps/web/blobs/uploads/?digest={digest}"))
                    .set_payload(bytes.clone()),
            )
            .await;
        assert_eq!(pushed.status, 201);
        descriptors.push(json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptors[0],
        "layers": [descriptors[1]],
    }))
    .expect("json");
    let digest = sha256(&manifest);
    let put = berth
        .send(
            TestRequest::put()
                .uri("/v2/apps/web/manifests/v1")
                .insert_header(("content-type", OCI_MANIFEST))
                .set_payload(manifest.clone()),
        )
        .await;
    assert_eq!(put.status, 201, "{:?}", put.body);
    assert_eq!(put.header("docker-content-digest"), digest);
    assert_eq!(
        put.header("location"),
        format!("/v2/apps/web/manifests/{digest}")
    );

    for reference in ["v1", digest.as_str()] {
        let got = berth
            .send(TestRequest::get().uri(&format!("/v2/apps/web/manifests/{reference}")))
            .await;
        assert_eq!(got.status, 200, "{reference}");
        assert_eq!(got.header("content-type"), OCI_MANIFEST, "{reference}");
        assert_eq!(got.header("docker-content-digest"), digest, "{reference}");
        assert_eq!(&got.body[..], &manifest[..], "{reference}");
    }

    // Deleting the tag leaves the manifest, reachable by its digest.
    let untagged = berth
        .send(TestRequest::delete().uri("/v2/apps/web/manifests/v1"))
        .await;
    assert_eq!(untagged.status, 202);
    berth
        .send(TestRequest::get().uri("/v2/apps/web/manifests/v1"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    let by_digest = format!("/v2/apps/web/manifests/{digest}");
    assert_eq!(
        berth.send(TestRequest::get().uri(&by_digest)).await.status,
        200
    );

    let deleted = berth.send(TestRequest::delete().uri(&by_digest)).await;
    assert_eq!(deleted.status, 202);
    berth
        .send(TestRequest::get().uri(&by_digest))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    berth
        .send(TestRequest::delete().uri(&by_digest))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[actix_web::test]
async fn writes_under_proxy_are_refused_whether_or_not_the_upstream_is_configured() {
    // `up` is configured (at an address nothing listens on: a refused write never reaches it); `nowhere` is not.
    let fixture = Fixture::with_config(|config| {
        let spec: berth::proxy::config::ProxySpec = serde_yaml_ng::from_str(
            "upstreams:\n  - name: up\n    url: http://127.0.0.1:9\n    insecure: true\n",
        )
        .expect("proxy spec");
        config.proxy = spec.validate().expect("valid proxy spec");
    })
    .await;
    let berth = &fixture.berth;
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let writes = |repo: &str| {
        vec![
            TestRequest::put()
                .uri(&format!("/v2/{repo}/manifests/v1"))
                .insert_header(("content-type", OCI_MANIFEST))
                .set_payload(manifest.clone()),
            TestRequest::post().uri(&format!("/v2/{repo}/blobs/uploads/")),
            TestRequest::delete().uri(&format!("/v2/{repo}/manifests/v1")),
            TestRequest::delete().uri(&format!("/v2/{repo}/blobs/{}", sha256(b"x"))),
        ]
    };
    for request in writes("proxy/nowhere/team/app") {
        let message = berth.send(request).await.expect_error(405, "UNSUPPORTED");
        assert!(
            message.contains("reserved for the pull-through cache"),
            "{message}"
        );
    }
    for request in writes("proxy/up/team/app")
        .into_iter()
        .chain([TestRequest::post().uri("/v2/team/app/blobs/uploads/?ns=up")])
    {
        let message = berth.send(request).await.expect_error(405, "UNSUPPORTED");
        assert!(
            message.contains("read-only proxy of upstream up"),
            "{message}"
        );
    }
    // Nothing was stored under proxy/.
    let catalog = berth.send(TestRequest::get().uri("/v2/_catalog")).await;
    assert_eq!(catalog.status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&catalog.body).expect("json"),
        json!({"repositories": []})
    );
}

#[actix_web::test]
async fn a_path_that_is_no_route_is_not_found() {
    let fixture = Fixture::new().await;
    for path in ["/v2/team/app/unknown/thing", "/v2/x", "/v20/x/tags/list"] {
        let answer = fixture.berth.send(TestRequest::get().uri(path)).await;
        if path.starts_with("/v2/") {
            answer.expect_error(404, "UNSUPPORTED");
            assert_eq!(
                answer.header("docker-distribution-api-version"),
                "registry/2.0"
            );
        } else {
            // Outside /v2: not the registry's, so no OCI envelope.
            assert_eq!(answer.status, 404, "{path}");
        }
    }
    fixture
        .berth
        .send(TestRequest::get().uri("/v2/Team/tags/list"))
        .await
        .expect_error(400, "NAME_INVALID");
}

#[actix_web::test]
async fn a_method_a_route_does_not_take_is_405_with_allow() {
    let fixture = Fixture::new().await;
    let digest = sha256(b"x");
    for (request, allow) in [
        (TestRequest::delete().uri("/v2/_catalog"), "GET"),
        (TestRequest::post().uri("/v2/"), "GET, HEAD"),
        (
            TestRequest::post().uri("/v2/team/app/manifests/v1"),
            "GET, HEAD, PUT, DELETE",
        ),
        (
            TestRequest::put().uri(&format!("/v2/team/app/blobs/{digest}")),
            "GET, HEAD, DELETE",
        ),
        (
            TestRequest::get().uri("/v2/team/app/blobs/uploads/"),
            "POST",
        ),
        (TestRequest::post().uri("/v2/team/app/tags/list"), "GET"),
    ] {
        let answer = fixture.berth.send(request).await;
        answer.expect_error(405, "UNSUPPORTED");
        assert_eq!(answer.header("allow"), allow);
    }
}

#[actix_web::test]
async fn the_body_limits_of_the_config_guard_the_mounted_routes() {
    // Manifests get half of the body memory (16 bytes); the first 64 KiB of a body are not charged, the rest of
    // this 100 KiB one is.
    let fixture = Fixture::with_config(|config| config.limits.body_memory = 32).await;
    let berth = &fixture.berth;
    let manifest = vec![b' '; 100 << 10];
    let refused = berth
        .send(
            TestRequest::put()
                .uri("/v2/team/app/manifests/v1")
                .insert_header(("content-type", OCI_MANIFEST))
                .set_payload(manifest),
        )
        .await;
    refused.expect_error(429, "TOOMANYREQUESTS");
    assert_eq!(refused.header("retry-after"), "5");
    // Streamed bodies draw on no budget: a blob push of more than the budget goes through.
    let blob = content(1000, 3);
    let pushed = berth
        .send(
            TestRequest::post()
                .uri(&format!(
                    "/v2/team/app/blobs/uploads/?digest={}",
                    sha256(&blob)
                ))
                .set_payload(blob),
        )
        .await;
    assert_eq!(pushed.status, 201);
}
