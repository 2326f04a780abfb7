//! Upload handlers: start (`POST`, also monolithic and mount), status (`GET`), chunk (`PATCH`), complete (`PUT`)
//! and cancel (`DELETE`) under `/v2/<name>/blobs/uploads/`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::{RegistryError, Result};
use super::names::{Digest, RepoName, UploadId};
use super::ranges::{parse_content_range, InvalidContentRange};
use super::response::upload_range;
use super::service::Registry;
use crate::events::model::{EventAction, Target};
use crate::events::registry::EventFacts;

fn upload_location(repo: &RepoName, id: &UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn blob_location(repo: &RepoName, digest: &Digest) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

fn upload_id(id: &str) -> Result<UploadId> {
    UploadId::parse(id).ok_or_else(|| RegistryError::BlobUploadUnknown(id.to_owned()))
}

/// 202 with where the upload continues and how much it holds.
fn in_progress(repo: &RepoName, id: &UploadId, size: u64) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, upload_location(repo, id)))
        .insert_header((header::RANGE, upload_range(size)))
        .insert_header(("Docker-Upload-UUID", id.to_string()))
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish()
}

/// 201 for a blob now visible in `repo`.
fn created(repo: &RepoName, digest: &Digest) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((header::LOCATION, blob_location(repo, digest)))
        .insert_header(("Docker-Content-Digest", digest.to_string()))
        .insert_header((header::CONTENT_LENGTH, 0))
        .finish()
}

/// The chunk's `Content-Range`, if any. A malformed one is a 416 that reports what the upload holds, so the client
/// can resume from there.
async fn content_range(
    registry: &Registry,
    req: &HttpRequest,
    repo: &RepoName,
    id: &UploadId,
) -> Result<Option<(u64, u64)>> {
    let Some(value) = req.headers().get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .map_err(|_| InvalidContentRange("not ASCII".into()))
        .and_then(parse_content_range);
    match parsed {
        Ok(range) => Ok(Some(range)),
        Err(why) => Err(RegistryError::ContentRangeInvalid {
            header: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            why: why.to_string(),
            upload: id.to_string(),
            location: upload_location(repo, id),
            received: registry.upload_size(repo, id).await?,
        }),
    }
}

/// What a `POST` to start an upload asks for, each value still to be validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartQuery<'a> {
    /// `?mount=<digest>`: link a blob the registry already holds instead of uploading it.
    pub mount: Option<&'a str>,
    /// `?from=<repository>`: where the mounted blob is linked.
    pub from: Option<&'a str>,
    /// `?digest=<digest>`: the body is the whole blob (a monolithic upload).
    pub digest: Option<&'a str>,
}

pub async fn start(
    registry: &Registry,
    repo: &RepoName,
    query: StartQuery<'_>,
    body: web::Payload,
) -> Result<HttpResponse> {
    if let Some(mount) = query.mount {
        let digest = Digest::parse(mount)?;
        let from = query.from.map(RepoName::parse).transpose()?;
        if registry.blob_mount(repo, &digest, from.as_ref()).await? {
            let mut response = created(repo, &digest);
            response.extensions_mut().insert(EventFacts::one(
                EventAction::Mount,
                Target {
                    repository: Some(repo.to_string()),
                    digest: Some(digest.to_string()),
                    from: from.as_ref().map(ToString::to_string),
                    ..Target::default()
                },
            ));
            return Ok(response);
        }
        // Not mountable: the client proceeds with an ordinary upload.
    } else if let Some(digest) = query.digest {
        let digest = Digest::parse(digest)?;
        registry.upload_monolithic(repo, &digest, body).await?;
        return Ok(created(repo, &digest));
    }
    let id = registry.upload_start(repo).await?;
    Ok(in_progress(repo, &id, 0))
}

pub async fn status(registry: &Registry, repo: &RepoName, id: &str) -> Result<HttpResponse> {
    let id = upload_id(id)?;
    let size = registry.upload_size(repo, &id).await?;
    Ok(HttpResponse::NoContent()
        .insert_header((header::LOCATION, upload_location(repo, &id)))
        .insert_header((header::RANGE, upload_range(size)))
        .insert_header(("Docker-Upload-UUID", id.to_string()))
        .finish())
}

pub async fn patch(
    registry: &Registry,
    req: &HttpRequest,
    repo: &RepoName,
    id: &str,
    body: web::Payload,
) -> Result<HttpResponse> {
    let id = upload_id(id)?;
    let range = content_range(registry, req, repo, &id).await?;
    let size = registry
        .upload_append(repo, &id, &upload_location(repo, &id), range, body)
        .await?;
    Ok(in_progress(repo, &id, size))
}

pub async fn finish(
    registry: &Registry,
    req: &HttpRequest,
    repo: &RepoName,
    id: &str,
    digest: Option<&str>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let id = upload_id(id)?;
    let digest = digest.ok_or_else(|| {
        RegistryError::DigestInvalid("the closing PUT needs ?digest=<digest>".into())
    })?;
    let digest = Digest::parse(digest)?;
    let range = content_range(registry, req, repo, &id).await?;
    // Whether a final chunk came is for the service to see in the body itself: over HTTP/2 a streamed body has
    // neither Content-Length nor Transfer-Encoding, so the headers cannot tell.
    registry
        .upload_finish(
            repo,
            &id,
            &upload_location(repo, &id),
            &digest,
            range,
            Some(body),
        )
        .await?;
    Ok(created(repo, &digest))
}

pub async fn cancel(registry: &Registry, repo: &RepoName, id: &str) -> Result<HttpResponse> {
    let id = upload_id(id)?;
    registry.upload_cancel(repo, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
