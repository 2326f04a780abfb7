//! Manifest handlers: `GET`/`HEAD`/`PUT`/`DELETE` of `/v2/<name>/manifests/<reference>`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::{RegistryError, Result};
use super::manifest::MAX_MANIFEST_BYTES;
use super::names::{Reference, RepoName, Tag};
use super::service::{Immutability, Registry};
use crate::events::model::{EventAction, Target};
use crate::events::registry::{EventFacts, PushedManifest, PushedTag};
use crate::limits::{read_to_limit, BodyLimitError, ReadError};

/// `GET` and `HEAD` alike: for `HEAD`, actix sends the headers (with Content-Length) and drops the body. The
/// response carries the `pull` it served ([`served`]); the front door records it for a `GET` only.
pub async fn get(registry: &Registry, repo: &RepoName, reference: &str) -> Result<HttpResponse> {
    let reference =
        Reference::parse(reference).map_err(RegistryError::unknown_if_invalid_reference)?;
    let (digest, manifest) = registry.manifest_get(repo, &reference).await?;
    Ok(served(repo.as_str(), &reference, &digest, manifest))
}

/// The 200 of a manifest `GET`/`HEAD` (local or proxied; `repository` is the name it is stored under), with the
/// `pull` fact for the event log.
pub fn served(
    repository: &str,
    reference: &Reference,
    digest: &super::names::Digest,
    manifest: crate::registry::storage::StoredManifest,
) -> HttpResponse {
    let facts = EventFacts::one(
        EventAction::Pull,
        manifest_target(repository, reference, digest, &manifest),
    );
    let mut response = HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, manifest.media_type))
        .insert_header(("Docker-Content-Digest", digest.to_string()))
        .insert_header((header::ETAG, format!("\"{digest}\"")))
        .body(manifest.bytes);
    response.extensions_mut().insert(facts);
    response
}

/// An event's target for `manifest` of `repository`, asked for by `reference` (a pull, a proxy fetch): the tag when
/// asked by tag, the digest, media type and size.
pub fn manifest_target(
    repository: &str,
    reference: &Reference,
    digest: &super::names::Digest,
    manifest: &crate::registry::storage::StoredManifest,
) -> Target {
    Target {
        repository: Some(repository.to_owned()),
        tag: match reference {
            Reference::Tag(tag) => Some(tag.to_string()),
            Reference::Digest(_) => None,
        },
        digest: Some(digest.to_string()),
        media_type: Some(manifest.media_type.clone()),
        size: Some(manifest.bytes.len() as u64),
        ..Target::default()
    }
}

/// Reads the whole body, refusing more than the manifest size limit. The time it may take and the memory all
/// manifest bodies together may hold are bounded by [`crate::limits`].
async fn read_limited(req: &HttpRequest, body: web::Payload) -> Result<bytes::Bytes> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    read_to_limit(body, declared, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge { size, limit } => RegistryError::ManifestTooLarge { size, limit },
            ReadError::Limit(BodyLimitError::Busy { .. }) => RegistryError::Busy {
                why: e.to_string(),
                retry_after: 5,
            },
            ReadError::Limit(limit) => RegistryError::BodyTimeout(limit.to_string()),
            ReadError::Broken(why) => RegistryError::Body(why),
        })
}

/// The most `?tag=` parameters one push may carry (the spec asks for at least 10); more is a 414.
pub const MAX_TAGS_PER_PUSH: usize = 100;

/// The tags of a push by digest (`?tag=a&tag=b`, in `raw` as given), validated. A push by tag takes none: its tag
/// is in the path.
fn query_tags(reference: &Reference, raw: &[&str]) -> Result<Vec<Tag>> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if let Reference::Tag(tag) = reference {
        return Err(RegistryError::BadRequest(format!(
            "?tag= is accepted only when pushing by digest; this push names tag {tag} in its path"
        )));
    }
    if raw.len() > MAX_TAGS_PER_PUSH {
        return Err(RegistryError::TooManyTags {
            count: raw.len(),
            limit: MAX_TAGS_PER_PUSH,
        });
    }
    raw.iter()
        .map(|&tag| Tag::parse(tag).ok_or_else(|| RegistryError::TagInvalid(tag.to_owned())))
        .collect()
}

/// A push by tag or digest; `tag_params` are the `?tag=` values as given, in order. `immutable` says which tags
/// may not move (the caller's policy).
pub async fn put(
    registry: &Registry,
    req: &HttpRequest,
    repo: &RepoName,
    reference: &str,
    tag_params: &[&str],
    body: web::Payload,
    immutable: Immutability<'_>,
) -> Result<HttpResponse> {
    let reference = Reference::parse(reference)?;
    let tags = query_tags(&reference, tag_params)?;
    let bytes = read_limited(req, body).await?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let pushed = registry
        .manifest_put(repo, &reference, &tags, content_type, bytes, immutable)
        .await?;
    let mut response = HttpResponse::Created();
    response
        .insert_header((
            header::LOCATION,
            format!("/v2/{repo}/manifests/{}", pushed.digest),
        ))
        .insert_header(("Docker-Content-Digest", pushed.digest.to_string()))
        .insert_header((header::CONTENT_LENGTH, 0));
    if let Some(subject) = pushed.subject {
        response.insert_header(("OCI-Subject", subject.to_string()));
    }
    // One `OCI-Tag` field per tag the push set from `?tag=` (the spec's confirmation that they were applied).
    if !tags.is_empty() {
        for tag in &pushed.tags {
            response.append_header(("OCI-Tag", tag.as_str()));
        }
    }
    let pushed_tags: Vec<PushedTag> = pushed
        .tags
        .iter()
        .zip(&pushed.previous)
        .map(|(tag, old)| PushedTag {
            tag: tag.to_string(),
            old_digest: old.as_ref().map(ToString::to_string),
        })
        .collect();
    let facts = EventFacts::pushed(&PushedManifest {
        repository: repo.as_str(),
        digest: &pushed.digest.to_string(),
        media_type: &pushed.media_type,
        size: pushed.size,
        tags: &pushed_tags,
    });
    let mut response = response.finish();
    response.extensions_mut().insert(facts);
    Ok(response)
}

/// A delete by tag or digest; `immutable` says which tags may not be deleted, nor the manifests they point at.
pub async fn delete(
    registry: &Registry,
    repo: &RepoName,
    reference: &str,
    immutable: Immutability<'_>,
) -> Result<HttpResponse> {
    let reference = Reference::parse(reference)?;
    let digest = registry
        .manifest_delete(repo, &reference, immutable)
        .await?;
    let mut response = HttpResponse::Accepted().finish();
    response.extensions_mut().insert(EventFacts::one(
        EventAction::Delete,
        Target {
            repository: Some(repo.to_string()),
            tag: match &reference {
                Reference::Tag(tag) => Some(tag.to_string()),
                Reference::Digest(_) => None,
            },
            digest: Some(digest.to_string()),
            ..Target::default()
        },
    ));
    Ok(response)
}
