//! The referrers API: `GET /v2/<name>/referrers/<digest>[?artifactType=…]` answers an OCI image index of the
//! manifests whose `subject` is `<digest>` (of those of `artifactType` only, when it is given).

use actix_web::HttpResponse;
use serde::Serialize;

use super::error::Result;
use super::manifest::{Descriptor, OCI_INDEX};
use super::names::{Digest, RepoName};
use super::service::Registry;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

pub async fn list(
    registry: &Registry,
    repo: &RepoName,
    digest: &str,
    artifact_type: Option<&str>,
) -> Result<HttpResponse> {
    let subject = Digest::parse(digest)?;
    let manifests = registry.referrers(repo, &subject, artifact_type).await?;
    let mut response = HttpResponse::Ok();
    response.content_type(OCI_INDEX);
    if artifact_type.is_some() {
        response.insert_header(("OCI-Filters-Applied", "artifactType"));
    }
    let index = Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests,
    };
    Ok(response.body(serde_json::to_vec(&index).unwrap_or_default()))
}
