//! Requests for proxied repositories, dispatched here by the front door ([`crate::v2`]) once it has resolved the
//! target: pulls are served from the cache or the upstream; everything else is refused, since proxied repositories
//! are read-only. Must not decide what is proxied (the front door asks [`Proxy::resolve`]) or know the registry's
//! routes; a cached blob is served by the registry's blob handler.

use std::sync::Arc;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::{header, Method};
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use super::{Proxy, ProxyError, ProxyTarget};
use crate::registry::error::{RegistryError, Result};
use crate::registry::names::{Digest, Reference};
use crate::registry::{blobs, Registry};
use crate::v2::route::Route;

/// Answers a request for a proxied repository; a failure is answered here, as its [`ProxyError`] maps.
pub async fn dispatch(
    proxy: &Arc<Proxy>,
    registry: &Registry,
    target: ProxyTarget,
    route: Route,
    req: &HttpRequest,
) -> Result<HttpResponse> {
    Ok(serve(proxy, registry, target, route, req)
        .await
        .unwrap_or_else(|e| e.error_response()))
}

async fn serve(
    proxy: &Arc<Proxy>,
    registry: &Registry,
    target: ProxyTarget,
    route: Route,
    req: &HttpRequest,
) -> Result<HttpResponse, ProxyError> {
    let method = req.method().clone();
    match (route, method) {
        (Route::Manifest(_, reference), Method::GET | Method::HEAD) => {
            let reference = Reference::parse(&reference)
                .map_err(RegistryError::unknown_if_invalid_reference)?;
            let (digest, manifest) = proxy.manifest(&target, &reference).await?;
            Ok(crate::registry::manifests::served(
                target.local_repo.as_str(),
                &reference,
                &digest,
                manifest,
            ))
        }
        (Route::Blob(_, digest), method @ (Method::GET | Method::HEAD)) => {
            let parsed = Digest::parse(&digest)?;
            // Cached: the local path serves it, with Range and HEAD.
            if registry.blob_linked(&target.local_repo, &parsed).await? {
                if method == Method::GET {
                    proxy.used(&parsed);
                }
                return Ok(blobs::get(
                    registry,
                    req,
                    &target.local_repo,
                    &digest,
                    method == Method::HEAD,
                )
                .await?);
            }
            if method == Method::HEAD {
                let size = proxy.blob_size(&target, &parsed).await?;
                let nothing = futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>();
                return Ok(blob_response(&parsed).body(SizedStream::new(size, nothing)));
            }
            // Not cached yet: stream the shared fetch (a Range is ignored until the blob is cached, as HTTP allows).
            let (size, stream) = proxy.blob(&target, &parsed).await?;
            Ok(match size {
                Some(size) => blob_response(&parsed).body(SizedStream::new(size, stream)),
                None => blob_response(&parsed).body(BodyStream::new(stream)),
            })
        }
        (Route::Tags(_), Method::GET) => {
            match super::upstream_tags(&target, req.query_string()).await {
                Ok((content_type, body)) => {
                    Ok(HttpResponse::Ok().content_type(content_type).body(body))
                }
                // The upstream is down: the tags cached so far, if there are any.
                Err(e @ (ProxyError::Unavailable { .. } | ProxyError::TooManyRequests { .. })) => {
                    let Ok(page) = registry.tags(&target.local_repo, None, None).await else {
                        return Err(e);
                    };
                    log::warn!("tags of {} from the cache: {e}", target.local_repo);
                    let tags: Vec<&str> = page.items.iter().map(|t| t.as_str()).collect();
                    Ok(HttpResponse::Ok()
                        .json(serde_json::json!({ "name": target.upstream_repo, "tags": tags })))
                }
                Err(e) => Err(e),
            }
        }
        (Route::Referrers(..), Method::GET) => Err(RegistryError::Unsupported(format!(
            "the referrers of proxied repositories are not served; ask the upstream {}",
            target.upstream.name()
        ))
        .into()),
        _ => Err(RegistryError::Unsupported(format!(
            "{} is a read-only proxy of upstream {}: push and delete there",
            target.local_repo,
            target.upstream.name()
        ))
        .into()),
    }
}

fn blob_response(digest: &Digest) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/octet-stream")
        .insert_header(("Docker-Content-Digest", digest.to_string()))
        .insert_header((header::ETAG, format!("\"{digest}\"")));
    response
}
