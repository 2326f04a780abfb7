//! The front door of the registry API: every request under `/v2` comes in here, once. `dispatch` parses the
//! route and the query ([`route`], a leaf), decides whether the repository is local or proxied (the proxy says
//! which upstream, if any, through [`Proxy::resolve`]), refuses writes under `proxy/`, and hands the request to the
//! registry's handlers or to the proxy's ([`crate::proxy::http`]). Registry and proxy are siblings below this
//! module: neither knows the other's routes, and neither decides who serves a path.
//!
//! Must not: hold content semantics (the registry service does), talk to upstreams (the proxy does), or build
//! responses beyond the base endpoint's `{}` (handlers do).

pub mod access;
pub mod route;

use actix_web::http::Method;
use actix_web::middleware::DefaultHeaders;
use actix_web::HttpMessage;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::admission::source::PolicyStore;
use crate::auth::authenticator::{AuthError, Authenticator};
use crate::auth::request::Caller as Allowed;
use crate::auth::{scope, Action};
use crate::proxy::Proxy;
use crate::registry::error::{RegistryError, Result};
use crate::registry::names::{RepoName, Tag};
use crate::registry::{blobs, listings, manifests, referrers, uploads, Registry};
use access::Needed;
use route::{parse_route, Query, Route, RouteError};

impl From<RouteError> for RegistryError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::NotFound(path) => RegistryError::NotFound(path),
            // The spec's code for what was named (NAME_INVALID for a repository).
            RouteError::Name(name) => name.into(),
        }
    }
}

/// Mounts the registry API under `/v2`, every response with the `Docker-Distribution-API-Version` header.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v2")
            .wrap(DefaultHeaders::new().add(("Docker-Distribution-API-Version", "registry/2.0")))
            .default_service(web::to(dispatch)),
    );
}

/// One `/v2` request: the route, who is asking and may they (when auth is on), then who serves it.
async fn dispatch(
    req: HttpRequest,
    body: web::Payload,
    registry: web::Data<Registry>,
    proxy: web::Data<Proxy>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse> {
    let route = parse_route(req.path())?;
    let mut query = Query::parse(req.query_string());
    let target = route
        .repository()
        .and_then(|repo| proxy.resolve(repo, query.get("ns")));
    if auth.enabled() {
        let cache_name = target.as_ref().map(|t| t.local_repo.as_str());
        let needed = access::needed(&route, req.method(), cache_name);
        let who = authorize(&req, &auth, &needed).await?;
        // A cross-repository mount also reads the source: without pull there, the mount is dropped and a plain
        // upload starts (the spec's answer to a mount the registry will not do), so nothing leaks from `from`.
        if let (Route::Uploads(_), Some(from)) = (&route, query.get("from")) {
            if !who.may(Action::Pull, from) {
                query.remove("mount");
                query.remove("from");
            }
        }
    }
    // Seam: the event record of what happened is written here, once, from the route and the response.
    serve(&req, route, target, &query, body, registry.get_ref(), proxy).await
}

/// Authenticates the request and decides whether it may do what it needs. A client without (sufficient)
/// credentials gets 401 with a challenge naming the token endpoint and the scope to ask for; a known identity the
/// rules refuse gets 403 `DENIED` naming the identity, the action, the repository and what decided.
async fn authorize(req: &HttpRequest, auth: &Authenticator, needed: &Needed) -> Result<Allowed> {
    let presented = crate::auth::request::presented(req);
    let unauthorized = |message: String| {
        let info = req.connection_info();
        let realm = access::realm(info.scheme(), info.host(), "localhost");
        RegistryError::Unauthorized {
            challenge: access::challenge(&realm, needed),
            message,
        }
    };
    let authenticated = auth.authenticate(&presented).await.map_err(|e| match e {
        // Not checked (too many failed logins from the address, or too many checks at once): retry later.
        AuthError::Busy {
            message,
            retry_after,
        } => RegistryError::Busy {
            why: message,
            retry_after,
        },
        e => unauthorized(e.to_string()),
    })?;
    // For the access log, refusals included.
    req.extensions_mut().insert(authenticated.identity.clone());
    let policy = crate::auth::request::policy(req).ok_or_else(|| {
        RegistryError::Storage(crate::registry::storage::StorageError::Corrupt(
            "no policy store mounted".into(),
        ))
    })?;
    let allowed = Allowed {
        authenticated,
        policy,
    };
    let identity = &allowed.authenticated.identity;
    let token = allowed.authenticated.grants.is_some();
    match needed {
        // Verified credentials, not merely a token: an anonymous client's token proves nothing (`docker login`
        // checks a password here).
        Needed::Authenticated => {
            if identity.is_authenticated() {
                return Ok(allowed);
            }
            Err(unauthorized("authentication required".into()))
        }
        Needed::Catalog => {
            let granted = match &allowed.authenticated.grants {
                Some(grants) => scope::permits_catalog(grants),
                None => allowed.policy.policy.access().is_admin(identity),
            };
            if granted {
                return Ok(allowed);
            }
            let admin = allowed.policy.policy.access().is_admin(identity);
            if !identity.is_authenticated() || (token && admin) {
                return Err(unauthorized(
                    "listing every repository needs the registry:catalog:* scope (admins)".into(),
                ));
            }
            Err(RegistryError::Denied(format!(
                "{identity} may not list the catalog: only admins may"
            )))
        }
        Needed::Repository { repository, action } => {
            if allowed.may(*action, repository) {
                return Ok(allowed);
            }
            let decision = allowed
                .policy
                .policy
                .access()
                .decide(identity, *action, repository);
            if !identity.is_authenticated() {
                return Err(unauthorized(format!(
                    "authentication required to {action} {repository}"
                )));
            }
            if token && decision.allowed {
                // The rules allow it, the token does not: the client asks for a token with this scope.
                return Err(unauthorized(format!(
                    "the token does not grant {action} on {repository}"
                )));
            }
            Err(RegistryError::Denied(format!(
                "{identity} may not {action} {repository}: {}",
                decision.reason
            )))
        }
    }
}

/// Local or proxied (the proxy resolved the target), the `proxy/` write ban, then that side's handler.
async fn serve(
    req: &HttpRequest,
    route: Route,
    target: Option<crate::proxy::ProxyTarget>,
    query: &Query,
    body: web::Payload,
    registry: &Registry,
    proxy: web::Data<Proxy>,
) -> Result<HttpResponse> {
    if let Some(target) = target {
        return crate::proxy::http::dispatch(&proxy.into_inner(), registry, target, route, req)
            .await;
    }
    // proxy/… belongs to the pull-through cache: nothing may be pushed there, even for an upstream not configured.
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if writes
        && route
            .repository()
            .is_some_and(|repo| repo.as_str().starts_with("proxy/"))
    {
        return Err(RegistryError::Unsupported(
            "repositories under proxy/ are reserved for the pull-through cache".into(),
        ));
    }
    local(registry, req, route, query, body).await
}

/// A request for a local repository (or the base and catalog endpoints): the method picks the registry's handler,
/// and the query parameters it takes are handed to it by name, so the handlers never see the query grammar.
async fn local(
    registry: &Registry,
    req: &HttpRequest,
    route: Route,
    query: &Query,
    body: web::Payload,
) -> Result<HttpResponse> {
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let page = || listings::PageQuery {
        n: query.get("n"),
        last: query.get("last"),
    };
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body("{}")),
        (Route::Catalog, Method::GET) => listings::catalog(registry, page()).await,
        (Route::Tags(repo), Method::GET) => listings::tags(registry, &repo, page()).await,
        (Route::Manifest(repo, reference), Method::GET | Method::HEAD) => {
            manifests::get(registry, &repo, &reference).await
        }
        (Route::Manifest(repo, reference), Method::PUT) => {
            let tags: Vec<&str> = query.get_all("tag").collect();
            let immutable = immutable_tags(req, &repo);
            manifests::put(registry, req, &repo, &reference, &tags, body, &immutable).await
        }
        (Route::Manifest(repo, reference), Method::DELETE) => {
            let immutable = immutable_tags(req, &repo);
            manifests::delete(registry, &repo, &reference, &immutable).await
        }
        (Route::Blob(repo, digest), Method::GET | Method::HEAD) => {
            blobs::get(registry, req, &repo, &digest, head).await
        }
        (Route::Blob(repo, digest), Method::DELETE) => {
            let immutable = immutable_tags(req, &repo);
            blobs::delete(registry, &repo, &digest, &immutable).await
        }
        (Route::Uploads(repo), Method::POST) => {
            let start = uploads::StartQuery {
                mount: query.get("mount"),
                from: query.get("from"),
                digest: query.get("digest"),
            };
            uploads::start(registry, &repo, start, body).await
        }
        (Route::Upload(repo, id), Method::GET) => uploads::status(registry, &repo, &id).await,
        (Route::Upload(repo, id), Method::PATCH) => {
            uploads::patch(registry, req, &repo, &id, body).await
        }
        (Route::Upload(repo, id), Method::PUT) => {
            uploads::finish(registry, req, &repo, &id, query.get("digest"), body).await
        }
        (Route::Upload(repo, id), Method::DELETE) => uploads::cancel(registry, &repo, &id).await,
        (Route::Referrers(repo, digest), Method::GET) => {
            referrers::list(registry, &repo, &digest, query.get("artifactType")).await
        }
        (route, _) => Err(RegistryError::MethodNotAllowed(allowed_methods(&route))),
    }
}

/// Which tags of `repo` the policy in force makes immutable (its `immutableTags`), for the registry service to
/// apply under its lock. The policy is read once per request; a service mounted without a policy store has none.
fn immutable_tags(req: &HttpRequest, repo: &RepoName) -> impl Fn(&Tag) -> Option<String> + Sync {
    let active = req
        .app_data::<web::Data<PolicyStore>>()
        .map(|store| store.current());
    let repo = repo.as_str().to_owned();
    move |tag: &Tag| {
        active
            .as_ref()?
            .policy
            .immutable_tag_rule(&repo, tag.as_str())
            .map(str::to_owned)
    }
}

/// The methods each route answers locally: the one table behind every 405's `Allow` header.
fn allowed_methods(route: &Route) -> &'static str {
    match route {
        Route::Base => "GET, HEAD",
        Route::Blob(..) => "GET, HEAD, DELETE",
        Route::Catalog | Route::Tags(_) | Route::Referrers(..) => "GET",
        Route::Manifest(..) => "GET, HEAD, PUT, DELETE",
        Route::Uploads(_) => "POST",
        Route::Upload(..) => "GET, PATCH, PUT, DELETE",
    }
}
