//! Blob handlers: `GET`/`HEAD` (with `Range`) and `DELETE` of `/v2/<name>/blobs/<digest>`. Thin: parse, call the
//! service, shape the response.

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

use super::error::Result;
use super::names::{Digest, RepoName};
use super::ranges::parse_range;
use super::service::{Immutability, Registry};
use crate::events::model::{EventAction, Target};
use crate::events::registry::EventFacts;

pub async fn get(
    registry: &Registry,
    req: &HttpRequest,
    repo: &RepoName,
    digest: &str,
    head: bool,
) -> Result<HttpResponse> {
    let digest = Digest::parse(digest)?;
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = if head {
        let size = registry.blob_size(repo, &digest).await?;
        // HEAD: actix sends the headers of this sized body (Content-Length) and never polls it.
        let nothing = futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>();
        return Ok(
            blob_headers(&mut HttpResponse::Ok(), &digest).body(SizedStream::new(size, nothing))
        );
    } else {
        HttpResponse::Ok()
    };
    let range_of = |size| match &range_header {
        Some(range) => parse_range(range, size),
        None => Ok(None),
    };
    let (content, range) = registry.blob_read(repo, &digest, range_of).await?;
    let length = match range {
        Some(range) => {
            response.status(actix_web::http::StatusCode::PARTIAL_CONTENT);
            response.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", range.first, range.last, content.size),
            ));
            range.len()
        }
        None => content.size,
    };
    Ok(blob_headers(&mut response, &digest).body(SizedStream::new(length, content.stream)))
}

fn blob_headers<'a>(
    response: &'a mut actix_web::HttpResponseBuilder,
    digest: &Digest,
) -> &'a mut actix_web::HttpResponseBuilder {
    response
        .content_type("application/octet-stream")
        .insert_header(("Docker-Content-Digest", digest.to_string()))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, format!("\"{digest}\"")))
        // Content addressed: the bytes behind a digest never change.
        .insert_header((header::CACHE_CONTROL, "max-age=31536000"))
}

/// `DELETE` of a blob; `immutable` says which tags are immutable (the caller's policy): a blob one of them holds
/// is not deleted.
pub async fn delete(
    registry: &Registry,
    repo: &RepoName,
    digest: &str,
    immutable: Immutability<'_>,
) -> Result<HttpResponse> {
    let digest = Digest::parse(digest)?;
    registry.blob_delete(repo, &digest, immutable).await?;
    let mut response = HttpResponse::Accepted().finish();
    response.extensions_mut().insert(EventFacts::one(
        EventAction::Delete,
        Target {
            repository: Some(repo.to_string()),
            digest: Some(digest.to_string()),
            ..Target::default()
        },
    ));
    Ok(response)
}
