//! The token endpoint of the distribution token flow: `GET /auth/token?service=berth&scope=…` (Basic credentials,
//! or none for anonymous) and `POST /auth/token` (the OAuth2 form: `grant_type=password` or `refresh_token`, as
//! containerd and oras send it). The handlers extract, call [`grant`] (pure: the intersection of what was asked and
//! what the access rules allow) and answer with a signed token; a partial or empty grant is still a token.
//!
//! Must not: decide access itself (the rules do), or answer anything but 400 to a malformed request and 401 to
//! bad credentials.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::access::AccessPolicy;
use super::authenticator::{AuthError, Authenticator, Presented, NODE_NAME_HEADER};
use super::credentials::Credentials;
use super::scope::{parse_scopes, Grant, RequestedScope, ScopeError};
use super::token::{IssueOptions, IssuedToken, TokenError, SERVICE};
use super::{Action, Identity};
use crate::admission::PolicyStore;

/// Largest `POST /auth/token` form read (credentials, a token and scopes fit in a few KiB).
const MAX_FORM_BYTES: u64 = 64 * 1024;

/// The challenge of the token endpoint.
pub const BASIC_CHALLENGE: &str = r#"Basic realm="berth""#;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/auth/token")
            .route(web::get().to(get_token))
            .route(web::post().to(post_token)),
    );
}

/// What a token grants `identity`, of what it asked for: per repository, the actions the rules allow, in the
/// order asked; a repository asked twice is merged. The catalog (`registry:catalog:*`) is granted to admins only. (The rule for it is the
/// access rules' to give). Pure.
pub fn grant(
    identity: &Identity,
    requested: &[RequestedScope],
    rules: &AccessPolicy,
) -> Vec<Grant> {
    let mut grants: Vec<Grant> = Vec::new();
    for scope in requested {
        let (name, actions) = match scope {
            RequestedScope::Repository { name, actions } => (name, actions),
            RequestedScope::Catalog => {
                let listed = grants.iter().any(|g| g.resource_type == "registry");
                if rules.is_admin(identity) && !listed {
                    grants.push(Grant {
                        resource_type: "registry".into(),
                        name: "catalog".into(),
                        actions: vec!["*".into()],
                    });
                }
                continue;
            }
        };
        let allowed: Vec<Action> = actions
            .iter()
            .copied()
            .filter(|action| rules.decide(identity, *action, name).allowed)
            .collect();
        // By type and name: a repository named `catalog` is not the registry's catalog.
        let entry = match grants
            .iter_mut()
            .find(|g| g.resource_type == "repository" && g.name == *name)
        {
            Some(entry) => entry,
            None => {
                grants.push(Grant {
                    resource_type: "repository".into(),
                    name: name.clone(),
                    actions: Vec::new(),
                });
                let last = grants.len() - 1;
                &mut grants[last]
            }
        };
        for action in allowed {
            if !entry.actions.iter().any(|a| a == action.as_str()) {
                entry.actions.push(action.as_str().to_owned());
            }
        }
    }
    grants
}

/// Why a token request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    /// `service` names another service.
    #[error("this token service is for {SERVICE:?}, not {0:?}")]
    WrongService(String),
    /// A scope that does not parse.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// The credentials were not accepted.
    #[error(transparent)]
    Auth(AuthError),
    /// An OAuth2 grant type other than `password` and `refresh_token`.
    #[error("grant_type {0:?} is not supported (password or refresh_token)")]
    GrantType(String),
    /// A form field the grant type needs is missing.
    #[error("{0} is required for this grant_type")]
    Missing(&'static str),
    /// A berth token presented for renewal whose identity does not stand without its credentials.
    #[error("{0}")]
    RefreshToken(String),
    /// Authentication is off: berth issues no tokens.
    #[error("authentication is off: berth issues no tokens")]
    Off,
    /// The query string or the form does not decode (bad percent-encoding, a field given twice, a body too large
    /// or not UTF-8).
    #[error("the request does not decode: {0}")]
    Undecodable(String),
    /// The credentials were not checked (too many failed logins from the address, or too many logins being
    /// checked): 429 with `Retry-After`.
    #[error("{message}")]
    Busy { message: String, retry_after: u32 },
    /// Signing failed (logged; a 500).
    #[error("the token could not be signed")]
    Sign,
}

impl TokenRequestError {
    fn status(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            TokenRequestError::Auth(e) if e.is_malformed() => StatusCode::BAD_REQUEST,
            TokenRequestError::Auth(_) | TokenRequestError::RefreshToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            TokenRequestError::Off => StatusCode::NOT_FOUND,
            TokenRequestError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            TokenRequestError::Sign => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The distribution spec's error code.
    fn code(&self) -> &'static str {
        match self {
            TokenRequestError::Auth(e) if !e.is_malformed() => "UNAUTHORIZED",
            TokenRequestError::RefreshToken(_) => "UNAUTHORIZED",
            TokenRequestError::Scope(ScopeError::BadName(_)) => "NAME_INVALID",
            TokenRequestError::Sign => "UNKNOWN",
            TokenRequestError::Busy { .. } => "TOOMANYREQUESTS",
            _ => "UNSUPPORTED",
        }
    }

    /// The OAuth2 error (RFC 6749 §5.2).
    fn oauth_error(&self) -> &'static str {
        match self {
            TokenRequestError::Auth(e) if !e.is_malformed() => "invalid_client",
            TokenRequestError::RefreshToken(_) => "invalid_grant",
            TokenRequestError::GrantType(_) => "unsupported_grant_type",
            TokenRequestError::Scope(_) => "invalid_scope",
            TokenRequestError::Sign => "server_error",
            TokenRequestError::Busy { .. } => "temporarily_unavailable",
            _ => "invalid_request",
        }
    }

    fn respond(&self, oauth: bool) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        if self.status() == actix_web::http::StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, BASIC_CHALLENGE));
        }
        if let TokenRequestError::Busy { retry_after, .. } = self {
            response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
        }
        let message = self.to_string();
        if oauth {
            response.json(json!({ "error": self.oauth_error(), "error_description": message }))
        } else {
            response.json(
                json!({ "errors": [{ "code": self.code(), "message": message, "detail": null }] }),
            )
        }
    }
}

fn issued_at_text(issued: &IssuedToken) -> String {
    let at = time::OffsetDateTime::from(issued.issued_at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

fn check_service(service: Option<&str>) -> Result<(), TokenRequestError> {
    match service {
        Some(service) if service != SERVICE => Err(TokenRequestError::WrongService(
            service.chars().take(64).collect(),
        )),
        _ => Ok(()),
    }
}

/// Authenticates `presented` and issues a token for `scopes`.
async fn issue(
    auth: &Authenticator,
    policy: &PolicyStore,
    presented: Presented<'_>,
    scopes: Vec<RequestedScope>,
) -> Result<IssuedToken, TokenRequestError> {
    let issuer = auth.issuer().ok_or(TokenRequestError::Off)?;
    let authenticated = auth.authenticate(&presented).await.map_err(|e| match e {
        AuthError::Busy {
            message,
            retry_after,
        } => TokenRequestError::Busy {
            message,
            retry_after,
        },
        e => TokenRequestError::Auth(e),
    })?;
    // A berth token presented here names an identity, not new rights: the rules decide again, and only for an
    // identity that still stands without its original credentials (an htpasswd user's token was checked against
    // the user's entry in force by the authenticator), within the session's maximum age.
    let identity = authenticated.identity;
    let refresh = authenticated.grants.is_some();
    if refresh && !auth.may_refresh(&identity) {
        return Err(TokenRequestError::RefreshToken(format!(
            "a token of {identity} cannot be renewed; log in with its credentials again"
        )));
    }
    let options = IssueOptions {
        lifetime: auth.token_lifetime(&identity),
        auth_time: if refresh {
            authenticated.auth_time
        } else {
            None
        },
        credential: authenticated.credential,
    };
    let current = policy.current();
    let grants = grant(&identity, &scopes, current.policy.access());
    log::info!(
        "token for {identity}: {}",
        if grants.is_empty() {
            "no access".to_owned()
        } else {
            grants
                .iter()
                .map(|g| format!("{}:{}:{}", g.resource_type, g.name, g.actions.join(",")))
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    issuer
        .issue_with(&identity, grants, options)
        .map_err(|e| match e {
            TokenError::SessionOver { .. } => TokenRequestError::RefreshToken(format!(
                "a token of {identity} cannot be renewed: {e}; log in with its credentials again"
            )),
            e => {
                log::error!("{e}");
                TokenRequestError::Sign
            }
        })
}

fn presented(request: &HttpRequest) -> Presented<'_> {
    Presented {
        authorization: request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        node_name: request
            .headers()
            .get(NODE_NAME_HEADER)
            .and_then(|v| v.to_str().ok()),
        client: request.peer_addr().map(|a| a.ip()),
        credentials: None,
    }
}

async fn get_token(
    request: HttpRequest,
    auth: web::Data<Authenticator>,
    policy: web::Data<PolicyStore>,
) -> HttpResponse {
    let answer = async {
        let query = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
            .map_err(|e| TokenRequestError::Undecodable(e.to_string()))?
            .into_inner();
        let service = query
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.as_str());
        check_service(service)?;
        let scopes = parse_scopes(
            query
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        )?;
        issue(&auth, &policy, presented(&request), scopes).await
    }
    .await;
    match answer {
        Ok(issued) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({
                "token": issued.token,
                "access_token": issued.token,
                "expires_in": issued.expires_in,
                "issued_at": issued_at_text(&issued),
            })),
        Err(e) => e.respond(false),
    }
}

/// The OAuth2 form of `POST /auth/token`.
#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    service: Option<String>,
    scope: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    #[allow(dead_code)]
    client_id: Option<String>,
    #[allow(dead_code)]
    access_type: Option<String>,
}

async fn post_token(
    request: HttpRequest,
    body: web::Payload,
    auth: web::Data<Authenticator>,
    policy: web::Data<PolicyStore>,
) -> HttpResponse {
    let answer = async {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = crate::limits::read_to_limit(body, declared, MAX_FORM_BYTES)
            .await
            .map_err(|e| TokenRequestError::Undecodable(e.to_string()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| TokenRequestError::Undecodable("the form is not UTF-8".into()))?;
        // The form is urlencoded like a query string.
        let form = web::Query::<TokenForm>::from_query(text)
            .map_err(|e| TokenRequestError::Undecodable(e.to_string()))?
            .into_inner();
        check_service(form.service.as_deref())?;
        let scopes = parse_scopes(form.scope.iter().map(String::as_str))?;
        // The user name and password as they are (never joined and split again: a `:` in a user name stays).
        let credentials = match form.grant_type.as_deref().unwrap_or("") {
            "password" => {
                let username = form.username.clone().unwrap_or_default();
                let password = form
                    .password
                    .clone()
                    .filter(|p| !p.is_empty())
                    .ok_or(TokenRequestError::Missing("password"))?;
                Credentials::Basic { username, password }
            }
            "refresh_token" => {
                let token = form
                    .refresh_token
                    .as_deref()
                    .filter(|t| !t.is_empty())
                    .ok_or(TokenRequestError::Missing("refresh_token"))?;
                // A berth token (renewed only for an identity that still stands), or a ServiceAccount token:
                // containerd sends a password without a user name as a refresh token.
                Credentials::Bearer(token.to_owned())
            }
            other => {
                return Err(TokenRequestError::GrantType(
                    other.chars().take(64).collect(),
                ))
            }
        };
        // The same bound as credentials in an `Authorization` header: nothing longer is hashed or sent to the API
        // server.
        let length = match &credentials {
            Credentials::Basic { username, password } => username.len() + password.len(),
            Credentials::Bearer(token) => token.len(),
        };
        if length > crate::auth::credentials::MAX_AUTHORIZATION_BYTES {
            return Err(TokenRequestError::Undecodable(format!(
                "credentials of {length} bytes are longer than the {} accepted",
                crate::auth::credentials::MAX_AUTHORIZATION_BYTES
            )));
        }
        let mut presented = presented(&request);
        presented.credentials = Some(&credentials);
        let issued = issue(&auth, &policy, presented, scopes).await;
        issued
    }
    .await;
    match answer {
        Ok(issued) => {
            let scope = issued
                .claims
                .access
                .iter()
                .map(|g| format!("{}:{}:{}", g.resource_type, g.name, g.actions.join(",")))
                .collect::<Vec<_>>()
                .join(" ");
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(json!({
                    "token": issued.token,
                    "access_token": issued.token,
                    "expires_in": issued.expires_in,
                    "issued_at": issued_at_text(&issued),
                    "scope": scope,
                }))
        }
        Err(e) => e.respond(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, actions: &[Action]) -> RequestedScope {
        RequestedScope::Repository {
            name: name.into(),
            actions: actions.to_vec(),
        }
    }

    /// Anonymous may do everything on every repository here, and `user:ops` is an admin.
    fn everything_allowed() -> AccessPolicy {
        let spec = "admins: ['user:ops']\nrules:\n  - name: all\n    repositories: ['.*']\n    subjects: [anonymous]\n    actions: [pull, push, delete]\n";
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(spec).expect("yaml");
        AccessPolicy::compile(&value).expect("access policy")
    }

    fn check(requested: &[RequestedScope], expected: &[(&str, &[&str])]) {
        let got = grant(&Identity::Anonymous, requested, &everything_allowed());
        let expected: Vec<Grant> = expected
            .iter()
            .map(|(name, actions)| Grant {
                resource_type: "repository".into(),
                name: (*name).into(),
                actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            })
            .collect();
        assert_eq!(got, expected, "{requested:?}");
    }

    #[test]
    fn grants_merge_repositories_and_give_the_catalog_to_admins() {
        use Action::*;
        check(&[], &[]);
        check(&[repo("a", &[Pull, Push])], &[("a", &["pull", "push"])]);
        check(
            &[
                repo("a", &[Pull]),
                repo("b", &[Push]),
                repo("a", &[Pull, Delete]),
            ],
            &[("a", &["pull", "delete"]), ("b", &["push"])],
        );
        check(&[RequestedScope::Catalog], &[]);
        check(&[repo("a", &[])], &[("a", &[])]);
        let ops = Identity::User { name: "ops".into() };
        let catalog = grant(
            &ops,
            &[RequestedScope::Catalog, RequestedScope::Catalog],
            &everything_allowed(),
        );
        assert_eq!(
            catalog,
            [Grant {
                resource_type: "registry".into(),
                name: "catalog".into(),
                actions: vec!["*".into()],
            }]
        );
        // Without an access section nobody is an admin, and anonymous gets nothing.
        assert_eq!(
            grant(
                &ops,
                &[RequestedScope::Catalog, repo("a", &[Action::Push])],
                &AccessPolicy::default()
            ),
            [Grant {
                resource_type: "repository".into(),
                name: "a".into(),
                actions: vec![],
            }]
        );
    }

    #[test]
    fn a_repository_named_catalog_is_not_the_catalog() {
        let ops = Identity::User { name: "ops".into() };
        let grants = grant(
            &ops,
            &[
                RequestedScope::Catalog,
                repo("catalog", &[Action::Push]),
                repo("catalog", &[Action::Pull]),
            ],
            &everything_allowed(),
        );
        let shown: Vec<(&str, &str, Vec<&str>)> = grants
            .iter()
            .map(|g| {
                (
                    g.resource_type.as_str(),
                    g.name.as_str(),
                    g.actions.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("registry", "catalog", vec!["*"]),
                ("repository", "catalog", vec!["push", "pull"]),
            ]
        );
    }

    #[test]
    fn errors_map_to_status_and_code() {
        use actix_web::http::StatusCode;
        let cases = [
            (
                TokenRequestError::WrongService("other".into()),
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
            ),
            (
                TokenRequestError::Auth(AuthError::Invalid("x".into())),
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
            ),
            (
                TokenRequestError::Auth(AuthError::Unavailable("x".into())),
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
            ),
            (
                TokenRequestError::Auth(AuthError::Malformed(
                    crate::auth::credentials::CredentialsError::Base64,
                )),
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
            ),
            (
                TokenRequestError::Scope(ScopeError::BadName("x".into())),
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
            ),
            (
                TokenRequestError::Busy {
                    message: "x".into(),
                    retry_after: 1,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status(), error.code()), (status, code), "{error}");
        }
    }
}
