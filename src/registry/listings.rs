//! Listing handlers: `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, sorted, paginated with `n`, `last` and a
//! `Link` header to the next page.

use actix_web::http::header;
use actix_web::HttpResponse;
use serde::Serialize;

use super::error::{RegistryError, Result};
use super::names::RepoName;
use super::service::{Page, Registry};

/// What a listing request asks for: `?n=` (the page size, still to be validated) and `?last=` (where the previous
/// page ended).
#[derive(Debug, Clone, Copy, Default)]
pub struct PageQuery<'a> {
    pub n: Option<&'a str>,
    pub last: Option<&'a str>,
}

fn page_size(query: PageQuery) -> Result<Option<usize>> {
    query
        .n
        .map(|n| {
            n.parse::<usize>().map_err(|_| {
                RegistryError::PaginationNumberInvalid(format!(
                    "n must be a non-negative integer, got {n:?}"
                ))
            })
        })
        .transpose()
}

/// Adds `Link: <path?n=N&last=LAST>; rel="next"` when another page follows.
fn with_next_link<T: AsRef<str>>(
    path: &str,
    n: Option<usize>,
    page: &Page<T>,
) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    if let (true, Some(n), Some(last)) = (page.more, n, page.items.last()) {
        response.insert_header((
            header::LINK,
            format!("<{path}?n={n}&last={}>; rel=\"next\"", last.as_ref()),
        ));
    }
    response
}

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<&'a str>,
}

pub async fn tags(
    registry: &Registry,
    repo: &RepoName,
    query: PageQuery<'_>,
) -> Result<HttpResponse> {
    let n = page_size(query)?;
    let page = registry.tags(repo, n, query.last).await?;
    let body = TagList {
        name: repo.as_str(),
        tags: page.items.iter().map(|t| t.as_str()).collect(),
    };
    Ok(with_next_link(&format!("/v2/{repo}/tags/list"), n, &page).json(body))
}

#[derive(Serialize)]
struct Catalog<'a> {
    repositories: Vec<&'a str>,
}

pub async fn catalog(registry: &Registry, query: PageQuery<'_>) -> Result<HttpResponse> {
    let n = page_size(query)?;
    let page = registry.catalog(n, query.last).await?;
    let body = Catalog {
        repositories: page.items.iter().map(|r| r.as_str()).collect(),
    };
    Ok(with_next_link("/v2/_catalog", n, &page).json(body))
}
