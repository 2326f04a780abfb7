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

use actix_web::http::{header, Method};
use actix_web::middleware::DefaultHeaders;
use actix_web::HttpMessage;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::admission::source::PolicyStore;
use crate::auth::authenticator::{AuthError, Authenticator};
use crate::auth::request::Caller as Allowed;
use crate::auth::Identity;
use crate::auth::{scope, Action};
use crate::events::model::{Actor, Client, EventAction, Outcome, Target};
use crate::events::registry::{EventFacts, Fact};
use crate::events::{self, EventLog, EventLogError};
use crate::proxy::Proxy;
use crate::registry::error::{RegistryError, Result};
use crate::registry::names::{Digest, RepoName, Tag};
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

/// The header a request id travels in, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// One `/v2` request: the route, who is asking and may they (when auth is on), then who serves it; then the
/// event of what happened, once, here (see [`record`]). Every answer carries the request id.
async fn dispatch(
    req: HttpRequest,
    body: web::Payload,
    registry: web::Data<Registry>,
    proxy: web::Data<Proxy>,
    auth: web::Data<Authenticator>,
    events: web::Data<EventLog>,
) -> HttpResponse {
    let request_id = events::registry::request_id(
        req.headers().get(REQUEST_ID).map(|v| v.as_bytes()),
        events.now(),
    );
    // A sane id, or a fresh one: always a valid header value.
    let id_header = header::HeaderValue::from_str(&request_id).ok();
    let answered = answer(&req, body, &registry, proxy, &auth).await;
    let mut response = if events.enabled() {
        record(&req, &events, request_id, answered).await
    } else {
        answered.unwrap_or_else(|failed| failed.error().error_response())
    };
    if let Some(value) = id_header {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID), value);
    }
    response
}

/// How a request failed, as the event log tells failures apart.
enum Failed {
    /// Refused by [`authorize`] (401, 403), with the scope it asked for.
    Refused {
        error: RegistryError,
        scope: Option<String>,
    },
    /// An upload ended with a digest that was invalid or did not match, with the digest given (when it is one).
    UploadRejected {
        error: RegistryError,
        digest: Option<String>,
    },
    /// Anything else (not recorded).
    Error(RegistryError),
}

impl Failed {
    fn error(&self) -> &RegistryError {
        match self {
            Failed::Refused { error, .. }
            | Failed::UploadRejected { error, .. }
            | Failed::Error(error) => error,
        }
    }
}

impl From<RegistryError> for Failed {
    fn from(error: RegistryError) -> Self {
        Failed::Error(error)
    }
}

/// The route, the authorization and the handler's answer.
async fn answer(
    req: &HttpRequest,
    body: web::Payload,
    registry: &Registry,
    proxy: web::Data<Proxy>,
    auth: &Authenticator,
) -> std::result::Result<HttpResponse, Failed> {
    let route = parse_route(req.path()).map_err(RegistryError::from)?;
    let mut query = Query::parse(req.query_string());
    let target = route
        .repository()
        .and_then(|repo| proxy.resolve(repo, query.get("ns")));
    if auth.enabled() {
        let cache_name = target.as_ref().map(|t| t.local_repo.as_str());
        let needed = access::needed(&route, req.method(), cache_name);
        let who = authorize(req, auth, &needed)
            .await
            .map_err(|error| match error {
                RegistryError::Unauthorized { .. } | RegistryError::Denied(_) => Failed::Refused {
                    error,
                    scope: access::attempted_scope(&needed),
                },
                error => Failed::Error(error),
            })?;
        // A cross-repository mount also reads the source: without pull there, the mount is dropped and a plain
        // upload starts (the spec's answer to a mount the registry will not do), so nothing leaks from `from`.
        if let (Route::Uploads(_), Some(from)) = (&route, query.get("from")) {
            if !who.may(Action::Pull, from) {
                query.remove("mount");
                query.remove("from");
            }
        }
    }
    // The closing PUT of an upload, or a monolithic POST ?digest=: a DIGEST_INVALID there is a rejected upload.
    let ends_upload = matches!(
        (&route, req.method()),
        (Route::Upload(..), &Method::PUT) | (Route::Uploads(_), &Method::POST)
    );
    let served = serve(req, route, target, &query, body, registry, proxy).await;
    served.map_err(|error| match error {
        RegistryError::DigestInvalid(_) if ends_upload => Failed::UploadRejected {
            error,
            digest: query
                .get("digest")
                .and_then(|d| Digest::parse(d).ok())
                .map(|d| d.to_string()),
        },
        error => Failed::Error(error),
    })
}

/// The event log's record of one request: the facts the handler put in the response (a `pull` only for a `GET`
/// answered 200), or the refusal's event (`auth-failed`, `upload-rejected`); with the actor, the client, the
/// request id and the result. Events that change content are stored durably before the answer: when the store
/// fails, the answer is 503 instead (the content is stored; the client retries). The rest is queued.
async fn record(
    req: &HttpRequest,
    events: &EventLog,
    request_id: String,
    answered: std::result::Result<HttpResponse, Failed>,
) -> HttpResponse {
    let (response, facts, result) = match answered {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let facts = response
                .extensions_mut()
                .remove::<EventFacts>()
                .map(|facts| facts.facts)
                .unwrap_or_default();
            let pulled = *req.method() == Method::GET && status == 200;
            let facts: Vec<Fact> = facts
                .into_iter()
                .filter(|fact| fact.action != EventAction::Pull || pulled)
                .collect();
            (response, facts, Outcome::ok(status))
        }
        Err(failed) => {
            let error = failed.error();
            let result = Outcome {
                status: error.status_code().as_u16(),
                code: Some(error.code().name()),
                message: Some(error.client_message().into_owned()),
            };
            let facts = refusal_facts(req, &failed);
            (error.error_response(), facts, result)
        }
    };
    if facts.is_empty() {
        return response;
    }
    let request = events::registry::Request {
        actor: req
            .extensions()
            .get::<Identity>()
            .map_or_else(Actor::anonymous, Actor::from),
        client: Client {
            address: req.peer_addr().map(|a| a.ip().to_string()),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .map(|v| events::registry::user_agent(v.as_bytes())),
        },
        request_id,
    };
    let now = events.now();
    let mut durable = Vec::new();
    for event in request.events(facts, result, events.shared_instance(), now) {
        if event.action.durable() {
            durable.push(events.record_durable(event));
        } else {
            events.record(event);
        }
    }
    if durable.is_empty() {
        return response;
    }
    let stored = futures_util::future::join_all(durable).await;
    match stored.into_iter().find_map(std::result::Result::err) {
        None => response,
        Some(e) => {
            let why = match e {
                EventLogError::Store(e) => e.to_string(),
                e @ EventLogError::Stopped => e.to_string(),
            };
            RegistryError::EventNotStored(why).error_response()
        }
    }
}

/// The event of a refusal: `auth-failed` for a 403, and for a 401 to a client that presented credentials (a 401
/// to a request without any is the challenge every token flow starts with, not a failure); `upload-rejected`
/// for an upload whose digest was invalid or did not match.
fn refusal_facts(req: &HttpRequest, failed: &Failed) -> Vec<Fact> {
    let repository = || {
        parse_route(req.path())
            .ok()
            .and_then(|route| route.repository().map(|r| r.to_string()))
    };
    let (action, target) = match failed {
        Failed::Error(_) => return Vec::new(),
        Failed::Refused {
            error: RegistryError::Unauthorized { .. },
            ..
        } if !req.headers().contains_key(header::AUTHORIZATION) => return Vec::new(),
        Failed::Refused { scope, .. } => (
            EventAction::AuthFailed,
            Target {
                repository: repository(),
                scope: scope.clone(),
                ..Target::default()
            },
        ),
        Failed::UploadRejected { digest, .. } => (
            EventAction::UploadRejected,
            Target {
                repository: repository(),
                digest: digest.clone(),
                ..Target::default()
            },
        ),
    };
    vec![Fact { action, target }]
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
