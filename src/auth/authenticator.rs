//! Turns what a request presents (its `Authorization` header, the node proxy's `Berth-Node-Name`, the client's
//! address) into a verified [`Identity`]: htpasswd users, ServiceAccount tokens through TokenReview (Bearer, or the
//! password of Basic with any user name that is not an htpasswd user), berth's own tokens (with what they grant),
//! and the node proxy's ServiceAccount with the node it runs on. A berth token of an htpasswd user stands only while
//! the user's htpasswd entry is the one it was issued for (a changed password or a removed user ends it at once).
//! Failed logins are logged (never the secret) and counted per client address; an address in its refusal period
//! is refused at once, without a check (429 with `Retry-After`).
//!
//! Must not: decide what an identity may do (that is [`super::access`]), know routes, or trust a client's claim
//! (the node name) without a credential that proves it may make it.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use super::credentials::{parse_authorization, Credentials, CredentialsError};
use super::htpasswd::{HtpasswdStore, Verdict, BUSY_RETRY_AFTER, MAX_PASSWORD_BYTES};
use super::scope::Grant;
use super::throttle::{PerClient, Throttle};
use super::token::{claims_berth_issuer, TokenIssuer, VerifiedToken};
use super::tokenreview::{CachedReviews, ServiceAccountUser, TokenReviewError};
use super::Identity;
use crate::clock::SharedClock;

/// The shortest a berth token lives (the distribution token spec's minimum `expires_in`).
pub const MIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// TokenReviews in flight from one client address at most (of the 32 berth sends at once): one address cannot
/// take every slot and make real ServiceAccount logins fail.
const MAX_REVIEWS_PER_CLIENT: usize = 4;

/// The header in which the node proxy names its node.
pub const NODE_NAME_HEADER: &str = "Berth-Node-Name";

/// What a request presents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The raw `Authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
    /// The `Berth-Node-Name` header, if any (believed only from the node proxy's ServiceAccount).
    pub node_name: Option<&'a str>,
    /// The client's address (failed logins are counted per address).
    pub client: Option<IpAddr>,
    /// Credentials already taken apart (the token endpoint's OAuth2 form): used instead of `authorization`.
    pub credentials: Option<&'a Credentials>,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: Identity,
    /// Some for a berth token: what it grants (the front door checks this, not the rules).
    pub grants: Option<Arc<[Grant]>>,
    /// For a berth token: when its session began (unix seconds), which a refresh keeps.
    pub auth_time: Option<u64>,
    /// For an htpasswd user: the tag of the htpasswd entry the password (or the token) was checked against, for
    /// binding a token issued now to it.
    pub credential: Option<String>,
}

impl Authenticated {
    fn of(identity: Identity) -> Authenticated {
        Authenticated {
            identity,
            grants: None,
            auth_time: None,
            credential: None,
        }
    }

    fn of_token(verified: &VerifiedToken) -> Authenticated {
        Authenticated {
            identity: verified.identity.clone(),
            grants: Some(verified.grants.clone()),
            auth_time: Some(verified.auth_time),
            credential: verified.credential.clone(),
        }
    }
}

/// Why a request's credentials were not accepted. The messages are for the client: they name the user, never the
/// secret, and do not tell an unknown user from a wrong password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The `Authorization` header cannot be read (400).
    #[error("{0}")]
    Malformed(CredentialsError),
    /// The credentials are wrong, expired or not accepted here (401 with a challenge).
    #[error("{0}")]
    Invalid(String),
    /// The credentials could not be checked now (the Kubernetes API server unreachable or slow): 401, failing
    /// closed, with a message saying so.
    #[error("{0}")]
    Unavailable(String),
    /// Not checked: the client's address is in its refusal period after failed logins, or too many logins are
    /// being checked (429 `TOOMANYREQUESTS` with `Retry-After`).
    #[error("{message}")]
    Busy {
        message: String,
        /// Seconds to wait.
        retry_after: u32,
    },
}

impl AuthError {
    /// Whether the request is malformed (400) rather than unauthenticated (401).
    pub fn is_malformed(&self) -> bool {
        matches!(self, AuthError::Malformed(_))
    }
}

/// The authenticator shared by every request (`web::Data<Authenticator>`, `AppState::auth`).
pub struct Authenticator {
    htpasswd: Option<Arc<HtpasswdStore>>,
    reviews: Option<CachedReviews>,
    issuer: Option<TokenIssuer>,
    /// The node proxy's ServiceAccount (namespace, name).
    node_proxy: Option<(String, String)>,
    throttle: Throttle,
    /// TokenReviews in flight by client address.
    reviews_in_flight: PerClient,
    /// Credential checks by method and result, for the metrics.
    logins: LoginCounts,
}

/// The methods credentials are checked by, as the metrics name them: an htpasswd password (`basic`, a
/// ServiceAccount token given as a password included), a berth token (`bearer`), a ServiceAccount token as a
/// Bearer (`token-review`), an `Authorization` header that did not parse (`unknown`).
const LOGIN_METHODS: [&str; 4] = ["basic", "bearer", "token-review", "unknown"];
/// Indexes in [`LOGIN_METHODS`].
const BASIC: usize = 0;
const BEARER: usize = 1;
const TOKEN_REVIEW: usize = 2;
const UNKNOWN: usize = 3;
/// How a credential check ended, as the metrics name it.
const LOGIN_RESULTS: [&str; 5] = ["ok", "invalid", "malformed", "unavailable", "throttled"];

/// Credential checks by method and result: relaxed counters, one add per check (the Bearer hot path included).
#[derive(Debug, Default)]
struct LoginCounts([[std::sync::atomic::AtomicU64; LOGIN_RESULTS.len()]; LOGIN_METHODS.len()]);

impl LoginCounts {
    fn count(&self, method: usize, outcome: &Result<Authenticated, AuthError>) {
        let result = match outcome {
            Ok(_) => 0,
            Err(AuthError::Invalid(_)) => 1,
            Err(AuthError::Malformed(_)) => 2,
            Err(AuthError::Unavailable(_)) => 3,
            Err(AuthError::Busy { .. }) => 4,
        };
        self.0[method][result].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The index in [`LOGIN_METHODS`] of `credentials`' method. Reads a Bearer token's claims: not for the hot path.
fn login_method(credentials: &Credentials) -> usize {
    match credentials {
        Credentials::Basic { .. } => BASIC,
        Credentials::Bearer(token) if claims_berth_issuer(token) => BEARER,
        Credentials::Bearer(_) => TOKEN_REVIEW,
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("htpasswd", &self.htpasswd.is_some())
            .field("token_review", &self.reviews.is_some())
            .field("issuer", &self.issuer.is_some())
            .field("node_proxy", &self.node_proxy)
            .finish()
    }
}

/// Why the authenticator could not be set up at start (berth refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The htpasswd file is missing or invalid.
    #[error(transparent)]
    Htpasswd(#[from] super::htpasswd::HtpasswdError),
    /// The token signing key cannot be read, written or used.
    #[error(transparent)]
    TokenKey(#[from] super::token::TokenError),
    /// No Kubernetes client for TokenReview.
    #[error("kubernetes client for TokenReview: {0}")]
    Kube(#[from] kube::Error),
}

/// The parts of an authenticator.
pub struct AuthenticatorParts {
    pub htpasswd: Option<Arc<HtpasswdStore>>,
    pub reviews: Option<CachedReviews>,
    pub issuer: Option<TokenIssuer>,
    pub node_proxy: Option<(String, String)>,
    pub clock: SharedClock,
}

impl Authenticator {
    /// Auth off: every request is anonymous, [`Authenticator::enabled`] is false, no tokens are issued.
    pub fn disabled() -> Authenticator {
        Authenticator::new(AuthenticatorParts {
            htpasswd: None,
            reviews: None,
            issuer: None,
            node_proxy: None,
            clock: crate::clock::system(),
        })
    }

    /// The authenticator the settings describe: the htpasswd file read now, a kube client for TokenReview, the
    /// token signing key from `cert_dir` (generated there when missing). Auth off: [`Authenticator::disabled`].
    pub async fn from_config(
        config: &crate::config::AuthConfig,
        cert_dir: &std::path::Path,
        clock: SharedClock,
    ) -> Result<Authenticator, AuthSetupError> {
        if !config.enabled() {
            return Ok(Authenticator::disabled());
        }
        let htpasswd = match &config.htpasswd {
            Some(path) => Some(Arc::new(HtpasswdStore::load(path, clock.clone())?)),
            None => None,
        };
        let reviews = if config.token_review {
            let client = kube::Client::try_default().await?;
            log::info!(
                "accepting ServiceAccount tokens for audience {} (checked with TokenReview, answers kept {:?})",
                config.token_audiences.join(", "),
                config.token_cache_ttl
            );
            Some(CachedReviews::new(
                Arc::new(super::tokenreview::KubeTokenReviewer::new(client)),
                config.token_audiences.clone(),
                config.token_cache_ttl,
                clock.clone(),
            ))
        } else {
            None
        };
        let issuer = TokenIssuer::from_cert_dir(cert_dir, config.token_expiry, clock.clone())?;
        Ok(Authenticator::new(AuthenticatorParts {
            htpasswd,
            reviews,
            issuer: Some(issuer),
            node_proxy: Some(config.node_proxy_account.clone()),
            clock,
        }))
    }

    pub fn new(parts: AuthenticatorParts) -> Authenticator {
        Authenticator {
            htpasswd: parts.htpasswd,
            reviews: parts.reviews,
            issuer: parts.issuer,
            node_proxy: parts.node_proxy,
            throttle: Throttle::new(parts.clock),
            reviews_in_flight: PerClient::new(MAX_REVIEWS_PER_CLIENT),
            logins: LoginCounts::default(),
        }
    }

    /// Credential checks since start: `(method, result, count)` for every pair checked at least once.
    pub fn login_counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut counts = Vec::new();
        for (method, results) in LOGIN_METHODS.iter().zip(&self.logins.0) {
            for (result, count) in LOGIN_RESULTS.iter().zip(results) {
                let count = count.load(std::sync::atomic::Ordering::Relaxed);
                if count > 0 {
                    counts.push((*method, *result, count));
                }
            }
        }
        counts
    }

    /// Whether auth is on: an htpasswd file or TokenReview is configured.
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.reviews.is_some()
    }

    /// The token issuer (None when auth is off).
    pub fn issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// The htpasswd users (for the file watch).
    pub fn htpasswd(&self) -> Option<&Arc<HtpasswdStore>> {
        self.htpasswd.as_ref()
    }

    /// Whether a berth token naming `identity` may be exchanged for a new one (the refresh grant) without the
    /// original credentials: an htpasswd user still in the file, or anonymous. A ServiceAccount's berth token is not
    /// refreshable: berth cannot ask TokenReview again without the ServiceAccount token, and a chain of refreshes
    /// would outlive a deleted ServiceAccount.
    pub fn may_refresh(&self, identity: &Identity) -> bool {
        match identity {
            Identity::Anonymous => true,
            Identity::User { name } => self.htpasswd.as_ref().is_some_and(|h| h.has_user(name)),
            Identity::ServiceAccount { .. } | Identity::NodeProxy { .. } => false,
        }
    }

    /// How long a token issued to `identity` may live, if shorter than `--token-expiry`: for a ServiceAccount or
    /// the node proxy, no longer than TokenReview's answer is kept (`--token-cache-ttl`), so a deleted
    /// ServiceAccount stops working as soon through a token as with its own, but not under the distribution
    /// spec's minimum of 60 s.
    pub fn token_lifetime(&self, identity: &Identity) -> Option<std::time::Duration> {
        match identity {
            Identity::ServiceAccount { .. } | Identity::NodeProxy { .. } => {
                let ttl = self
                    .reviews
                    .as_ref()
                    .map_or(std::time::Duration::ZERO, CachedReviews::ttl);
                Some(ttl.max(MIN_TOKEN_LIFETIME))
            }
            Identity::Anonymous | Identity::User { .. } => None,
        }
    }

    /// Whether a berth token still stands: for an htpasswd user, its entry must be the one the token was issued
    /// for (a changed password or a removed user ends the token at once). The message is for the client.
    fn token_stands(&self, verified: &VerifiedToken) -> Result<(), String> {
        let Identity::User { name } = &verified.identity else {
            return Ok(());
        };
        let current = self.htpasswd.as_ref().and_then(|h| h.credential_of(name));
        match (current, &verified.credential) {
            (Some(current), Some(bound)) if current == *bound => Ok(()),
            (None, _) => Err(format!(
                "the token of user {name:?} is no longer valid: the user is not in the htpasswd file"
            )),
            _ => Err(format!(
                "the token of user {name:?} is no longer valid: the password changed since it was issued; log in again"
            )),
        }
    }

    /// What `/readyz` reports about authentication.
    pub fn status(&self) -> serde_json::Value {
        json!({
            "enabled": self.enabled(),
            "htpasswd": self.htpasswd.as_ref().map(|h| h.status()),
            "tokenReview": self.reviews.is_some(),
        })
    }

    /// The identity `request` proves. No `Authorization` header is [`Identity::Anonymous`]; with auth off every
    /// request is.
    pub async fn authenticate(&self, request: &Presented<'_>) -> Result<Authenticated, AuthError> {
        if !self.enabled() {
            return Ok(Authenticated::of(Identity::Anonymous));
        }
        let parsed;
        let credentials = match (request.credentials, request.authorization) {
            (Some(credentials), _) => credentials,
            (None, None) => return Ok(Authenticated::of(Identity::Anonymous)),
            (None, Some(header)) => match parse_authorization(header) {
                Ok(credentials) => {
                    parsed = credentials;
                    &parsed
                }
                Err(e) => {
                    log::warn!(
                        "refused credentials from {}: {e}",
                        shown_client(request.client)
                    );
                    let refused = Err(if e.is_challenge() {
                        AuthError::Invalid(e.to_string())
                    } else {
                        AuthError::Malformed(e)
                    });
                    self.logins.count(UNKNOWN, &refused);
                    return refused;
                }
            },
        };
        self.authenticate_credentials(credentials, request).await
    }

    async fn authenticate_credentials(
        &self,
        credentials: &Credentials,
        request: &Presented<'_>,
    ) -> Result<Authenticated, AuthError> {
        // The hot path: a berth token verified before is a hash and a lookup, and a look at the user's entry.
        if let (Credentials::Bearer(token), Some(issuer)) = (credentials, &self.issuer) {
            if let Some(hit) = issuer.cached(token) {
                let outcome = match self.token_stands(&hit) {
                    Ok(()) => Ok(Authenticated::of_token(&hit)),
                    Err(message) => {
                        log::warn!(
                            "refused a token of {} from {}: {message}",
                            hit.identity,
                            shown_client(request.client)
                        );
                        Err(AuthError::Invalid(message))
                    }
                };
                self.logins.count(BEARER, &outcome);
                return outcome;
            }
        }
        let outcome = self.check_uncached(credentials, request).await;
        self.logins.count(login_method(credentials), &outcome);
        outcome
    }

    /// [`Authenticator::authenticate_credentials`] past the cache of berth's tokens.
    async fn check_uncached(
        &self,
        credentials: &Credentials,
        request: &Presented<'_>,
    ) -> Result<Authenticated, AuthError> {
        // Credentials verified before (a ServiceAccount token with a cached answer, an htpasswd password checked
        // recently) are not guesses: the node proxy's pulls, and clients behind a shared address, are not refused for
        // their neighbours' failures.
        let verified_before = self.verified_before(credentials);
        let berth_token = !verified_before
            && matches!(credentials, Credentials::Bearer(token) if claims_berth_issuer(token));
        // An address in its refusal period gets no check at all (berth's own tokens are not guesses: a signature
        // cannot be guessed, and a client holding one is not refused for its neighbours' failures).
        if !berth_token && !verified_before {
            if let (Some(left), Some(client)) =
                (self.throttle.refused_for(request.client), request.client)
            {
                let seconds = u32::try_from(left.as_millis().div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .max(1);
                return Err(AuthError::Busy {
                    message: format!(
                        "too many failed logins from {}; retry in {seconds}s",
                        super::throttle::shown_key(client)
                    ),
                    retry_after: seconds,
                });
            }
        }
        let name = match credentials {
            Credentials::Basic { username, .. } => username.as_str(),
            Credentials::Bearer(_) => "",
        };
        let (user, outcome) = self.check(credentials, request).await;
        match outcome {
            Ok(authenticated) => {
                self.throttle.succeeded(request.client, name);
                Ok(authenticated)
            }
            Err(Failure { for_client, why }) => {
                log::warn!(
                    "failed login of {user} from {}: {why}",
                    shown_client(request.client)
                );
                // Not checked is not a failure, a berth token is not a guess, and the API server's trouble is not
                // the client's (counting it would refuse the address's htpasswd logins while the API server is
                // down). A flood of junk tokens is held by the per-address cap on TokenReviews in flight, the
                // negative cache and the count of refused tokens.
                let counted = !matches!(
                    for_client,
                    AuthError::Busy { .. } | AuthError::Unavailable(_)
                );
                if counted && !berth_token {
                    self.throttle.failed(request.client, name);
                }
                Err(for_client)
            }
        }
    }

    /// Whether these exact credentials were verified before and the answer is still remembered: a cached
    /// TokenReview of the token (Bearer, or a Basic password that is a token), or a recent bcrypt check of an
    /// htpasswd user's password. Lookups only, nothing is checked.
    fn verified_before(&self, credentials: &Credentials) -> bool {
        let reviewed = |token: &str| self.reviews.as_ref().is_some_and(|r| r.is_cached(token));
        match credentials {
            Credentials::Bearer(token) => reviewed(token),
            Credentials::Basic { username, password } => {
                self.htpasswd
                    .as_ref()
                    .is_some_and(|h| h.is_verified(username, password))
                    || (!self.htpasswd.as_ref().is_some_and(|h| h.has_user(username))
                        && reviewed(password))
            }
        }
    }

    /// Checks the credentials; returns who they claim to be (for the log) and the outcome.
    async fn check(
        &self,
        credentials: &Credentials,
        request: &Presented<'_>,
    ) -> (String, Result<Authenticated, Failure>) {
        match credentials {
            Credentials::Basic { username, password } => {
                let shown = format!("user {username:?}");
                if let Some(htpasswd) = &self.htpasswd {
                    if htpasswd.has_user(username) || self.reviews.is_none() {
                        let (verdict, tag) = htpasswd
                            .verify_from(username, password, request.client)
                            .await;
                        let outcome = match verdict {
                            Verdict::Valid => Ok(Authenticated {
                                credential: tag,
                                ..Authenticated::of(Identity::User {
                                    name: username.clone(),
                                })
                            }),
                            Verdict::TooLong => Err(Failure::invalid(
                                format!("the password for {username:?} is longer than {MAX_PASSWORD_BYTES} bytes, more than bcrypt can check"),
                                "password too long",
                            )),
                            Verdict::Busy => Err(Failure::busy()),
                            Verdict::WrongPassword => Err(Failure::invalid(
                                format!("invalid user name or password for {username:?}"),
                                "wrong password",
                            )),
                            Verdict::UnknownUser => Err(Failure::invalid(
                                format!("invalid user name or password for {username:?}"),
                                "no such user",
                            )),
                        };
                        return (shown, outcome);
                    }
                }
                // Any other user name: the password is a ServiceAccount token. A password that cannot be one (not
                // three dot-separated parts) is not sent to the API server; with an htpasswd file, a bcrypt is
                // spent on it so that timing does not tell which users exist.
                if !looks_like_jwt(password) {
                    if let Some(htpasswd) = &self.htpasswd {
                        let (verdict, _) = htpasswd
                            .verify_from(username, password, request.client)
                            .await;
                        if verdict == Verdict::Busy {
                            return (shown, Err(Failure::busy()));
                        }
                    }
                    return (
                        shown,
                        Err(Failure::invalid(
                            format!("invalid user name or password for {username:?}"),
                            "no such user, and the password is not a token",
                        )),
                    );
                }
                let outcome = self.service_account(password, request).await;
                // With an htpasswd file, a refused token answers as a wrong password does, so that the answer does
                // not tell an unknown user from a known one (the log keeps the reason).
                let outcome = match (outcome, &self.htpasswd) {
                    (
                        Err(Failure {
                            for_client: AuthError::Invalid(_),
                            why,
                        }),
                        Some(_),
                    ) => Err(Failure {
                        for_client: AuthError::Invalid(format!(
                            "invalid user name or password for {username:?}"
                        )),
                        why,
                    }),
                    (outcome, _) => outcome,
                };
                (shown, outcome)
            }
            Credentials::Bearer(token) => {
                if claims_berth_issuer(token) {
                    let Some(issuer) = &self.issuer else {
                        return (
                            "a berth token".into(),
                            Err(Failure::invalid(
                                "berth tokens are not accepted here".into(),
                                "no token issuer",
                            )),
                        );
                    };
                    return match issuer.verify(token) {
                        Ok(verified) => (
                            verified.identity.to_string(),
                            self.token_stands(&verified)
                                .map(|()| Authenticated::of_token(&verified))
                                .map_err(|message| Failure {
                                    for_client: AuthError::Invalid(message),
                                    why: "the user's htpasswd entry changed".into(),
                                }),
                        ),
                        Err(e) => (
                            "a berth token".into(),
                            Err(Failure::invalid(e.to_string(), &e.to_string())),
                        ),
                    };
                }
                (
                    "a bearer token".into(),
                    self.service_account(token, request).await,
                )
            }
        }
    }

    async fn service_account(
        &self,
        token: &str,
        request: &Presented<'_>,
    ) -> Result<Authenticated, Failure> {
        let Some(reviews) = &self.reviews else {
            return Err(Failure::invalid(
                "the token is not a berth token and ServiceAccount tokens are not accepted (TokenReview is off)"
                    .into(),
                "unknown token",
            ));
        };
        // The per-address cap counts what asks the API server: not a token answered from the cache, nor one whose
        // review is already being asked (the request waits for that answer).
        let asks = !reviews.is_cached(token) && !reviews.is_pending(token);
        let _in_flight = match request.client {
            Some(client) if asks => match self.reviews_in_flight.enter(client) {
                Some(guard) => Some(guard),
                None => return Err(Failure::busy()),
            },
            _ => None,
        };
        match reviews.review(token).await {
            Ok(user) => self
                .identity_of(user, request.node_name)
                .map(Authenticated::of),
            Err(TokenReviewError::Unavailable(e)) => Err(Failure {
                for_client: AuthError::Unavailable(format!(
                    "ServiceAccount tokens cannot be checked now: {e}"
                )),
                why: e.to_string(),
            }),
            Err(e) => Err(Failure::invalid(e.to_string(), &e.to_string())),
        }
    }

    /// The identity of a confirmed ServiceAccount: the node proxy's, with its node, or any other. Pure.
    fn identity_of(
        &self,
        user: ServiceAccountUser,
        node_header: Option<&str>,
    ) -> Result<Identity, Failure> {
        let is_node_proxy = self
            .node_proxy
            .as_ref()
            .is_some_and(|(ns, name)| *ns == user.namespace && *name == user.name);
        if !is_node_proxy {
            // The header from anyone else is ignored.
            return Ok(Identity::ServiceAccount {
                namespace: user.namespace,
                name: user.name,
                groups: user.groups,
            });
        }
        let header = node_header.map(str::trim).filter(|n| !n.is_empty());
        if let Some(named) = header {
            if !valid_node_name(named) {
                return Err(Failure::invalid(
                    format!("{NODE_NAME_HEADER} {named:?} is not a node name"),
                    "bad node name header",
                ));
            }
        }
        let node = match (header, user.node.as_deref()) {
            (Some(named), Some(bound)) if named != bound => {
                return Err(Failure::invalid(
                    format!(
                        "{NODE_NAME_HEADER} {named:?} differs from the node {bound:?} the token is bound to"
                    ),
                    "node name mismatch",
                ))
            }
            (_, Some(bound)) => Some(bound.to_owned()),
            (Some(named), None) => Some(named.to_owned()),
            (None, None) => None,
        };
        Ok(Identity::NodeProxy {
            namespace: user.namespace,
            name: user.name,
            node,
        })
    }
}

/// Whether `text` has a JWT's shape (three non-empty base64url parts separated by dots); says nothing of its
/// validity.
fn looks_like_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

/// A DNS subdomain (what a Kubernetes node name is).
fn valid_node_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn shown_client(client: Option<IpAddr>) -> String {
    client.map_or_else(|| "an unknown address".into(), |c| c.to_string())
}

/// A failed check: what the client is told, and why (for the log).
struct Failure {
    for_client: AuthError,
    why: String,
}

impl Failure {
    fn invalid(for_client: String, why: &str) -> Failure {
        Failure {
            for_client: AuthError::Invalid(for_client),
            why: why.to_owned(),
        }
    }

    /// No bcrypt slot in time, or too many checks in flight from the address.
    fn busy() -> Failure {
        Failure {
            for_client: AuthError::Busy {
                message: format!(
                    "too many logins are being checked now; retry in {BUSY_RETRY_AFTER}s"
                ),
                retry_after: BUSY_RETRY_AFTER,
            },
            why: "not checked: no bcrypt slot in time, or too many checks from this address".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokenreview::tests::{sa, FakeReviewer};
    use crate::auth::tokenreview::{ReviewOutcome, ReviewedUser, NODE_NAME_EXTRA};
    use crate::clock::ManualClock;
    use base64::Engine as _;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .into_bytes()
    }

    fn node_proxy_token(node: Option<&str>) -> ReviewOutcome {
        let mut extra = BTreeMap::new();
        if let Some(node) = node {
            extra.insert(NODE_NAME_EXTRA.to_owned(), vec![node.to_owned()]);
        }
        ReviewOutcome::Authenticated(ReviewedUser {
            username: "system:serviceaccount:berth-system:berth-node-proxy".into(),
            groups: vec![],
            extra,
        })
    }

    fn authenticator(dir: &std::path::Path) -> Authenticator {
        let clock = ManualClock::new();
        let path = dir.join("htpasswd");
        std::fs::write(
            &path,
            format!("alice:{}\n", bcrypt::hash("s3cret", 4).expect("hash")),
        )
        .expect("write");
        let fake = FakeReviewer::with("ci.tok.en", sa("team-a", "ci"));
        fake.set("np.tok.en", node_proxy_token(None));
        fake.set("np.bou.nd", node_proxy_token(Some("node-1")));
        Authenticator::new(AuthenticatorParts {
            htpasswd: Some(Arc::new(
                HtpasswdStore::load(&path, clock.clone()).expect("htpasswd"),
            )),
            reviews: Some(CachedReviews::new(
                Arc::new(fake),
                vec!["berth".into()],
                Duration::from_secs(30),
                clock.clone(),
            )),
            issuer: Some(
                TokenIssuer::new(
                    &crate::auth::token::generate_key().expect("key"),
                    std::path::Path::new("token.key"),
                    Duration::from_secs(300),
                    clock.clone(),
                )
                .expect("issuer"),
            ),
            node_proxy: Some(("berth-system".into(), "berth-node-proxy".into())),
            clock,
        })
    }

    fn user(name: &str) -> Identity {
        Identity::User { name: name.into() }
    }

    fn ci() -> Identity {
        Identity::ServiceAccount {
            namespace: "team-a".into(),
            name: "ci".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:team-a".into(),
            ],
        }
    }

    fn node_proxy(node: Option<&str>) -> Identity {
        Identity::NodeProxy {
            namespace: "berth-system".into(),
            name: "berth-node-proxy".into(),
            node: node.map(str::to_owned),
        }
    }

    /// What the authenticator answers: the identity, or the error's kind (`malformed`, `invalid`,
    /// `unavailable`).
    async fn outcome(
        auth: &Authenticator,
        header: Option<&[u8]>,
        node: Option<&str>,
    ) -> Result<Identity, &'static str> {
        answer(
            auth,
            Presented {
                authorization: header,
                node_name: node,
                ..Presented::default()
            },
        )
        .await
    }

    /// The identity `presented` gets, or the error's kind.
    async fn answer(
        auth: &Authenticator,
        presented: Presented<'_>,
    ) -> Result<Identity, &'static str> {
        auth.authenticate(&presented)
            .await
            .map(|a| a.identity)
            .map_err(|e| match e {
                AuthError::Malformed(_) => "malformed",
                AuthError::Invalid(_) => "invalid",
                AuthError::Unavailable(_) => "unavailable",
                AuthError::Busy { .. } => "busy",
            })
    }

    #[tokio::test]
    async fn each_credential_maps_to_its_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = authenticator(dir.path());
        type Case<'a> = (Option<Vec<u8>>, Option<&'a str>, Result<Identity, &'a str>);
        let cases: Vec<Case> = vec![
            (None, None, Ok(Identity::Anonymous)),
            (Some(basic("alice", "s3cret")), None, Ok(user("alice"))),
            (Some(basic("alice", "wrong")), None, Err("invalid")),
            // An htpasswd user is checked against htpasswd only, even with a valid token as the password.
            (Some(basic("alice", "ci.tok.en")), None, Err("invalid")),
            (Some(basic("anyone", "ci.tok.en")), None, Ok(ci())),
            (Some(basic("anyone", "bad.tok.en")), None, Err("invalid")),
            // Not a token, not a user: refused without asking the API server.
            (Some(basic("anyone", "password")), None, Err("invalid")),
            (Some(b"Bearer ci.tok.en".to_vec()), None, Ok(ci())),
            // The node header from anyone but the node proxy is ignored.
            (Some(b"Bearer ci.tok.en".to_vec()), Some("node-9"), Ok(ci())),
            (
                Some(b"Bearer np.tok.en".to_vec()),
                Some("node-1"),
                Ok(node_proxy(Some("node-1"))),
            ),
            (
                Some(b"Bearer np.tok.en".to_vec()),
                None,
                Ok(node_proxy(None)),
            ),
            (
                Some(b"Bearer np.bou.nd".to_vec()),
                None,
                Ok(node_proxy(Some("node-1"))),
            ),
            (
                Some(b"Bearer np.bou.nd".to_vec()),
                Some("node-1"),
                Ok(node_proxy(Some("node-1"))),
            ),
            (
                Some(b"Bearer np.bou.nd".to_vec()),
                Some("node-2"),
                Err("invalid"),
            ),
            (
                Some(b"Bearer np.tok.en".to_vec()),
                Some("Node_1"),
                Err("invalid"),
            ),
            (Some(b"Digest x".to_vec()), None, Err("invalid")),
            (Some(b"Basic !!!".to_vec()), None, Err("malformed")),
            (Some(b"Bearer a\x01b".to_vec()), None, Err("malformed")),
        ];
        for (header, node, expected) in cases {
            assert_eq!(
                outcome(&auth, header.as_deref(), node).await,
                expected,
                "{:?} {node:?}",
                header.as_deref().map(String::from_utf8_lossy)
            );
        }
    }

    #[tokio::test]
    async fn berth_tokens_carry_identity_and_grants() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = authenticator(dir.path());
        let grants = vec![Grant {
            resource_type: "repository".into(),
            name: "a".into(),
            actions: vec!["pull".into()],
        }];
        let credential = auth.htpasswd().and_then(|h| h.credential_of("alice"));
        let issued = auth
            .issuer()
            .expect("issuer")
            .issue_with(
                &user("alice"),
                grants.clone(),
                crate::auth::token::IssueOptions {
                    credential: credential.clone(),
                    ..Default::default()
                },
            )
            .expect("issue");
        let header = format!("Bearer {}", issued.token);
        let expected = Authenticated {
            identity: user("alice"),
            grants: Some(grants.into()),
            auth_time: issued.claims.auth_time,
            credential,
        };
        // Verified in full the first time, from the cache of verified tokens after that: the same answer.
        for round in ["verified", "cached"] {
            let authenticated = auth
                .authenticate(&Presented {
                    authorization: Some(header.as_bytes()),
                    ..Presented::default()
                })
                .await
                .expect(round);
            assert_eq!(authenticated, expected, "{round}");
        }
        let tampered = format!("Bearer {}x", issued.token);
        assert_eq!(
            outcome(&auth, Some(tampered.as_bytes()), None).await,
            Err("invalid")
        );
    }

    /// A token for alice as the token endpoint issues it: bound to the entry her password was checked against.
    async fn alice_token(auth: &Authenticator, password: &str) -> String {
        let header = basic("alice", password);
        let login = auth
            .authenticate(&Presented {
                authorization: Some(&header),
                ..Presented::default()
            })
            .await
            .expect("alice logs in");
        assert!(
            login.credential.is_some(),
            "a password login names the entry"
        );
        auth.issuer()
            .expect("issuer")
            .issue_with(
                &login.identity,
                vec![],
                crate::auth::token::IssueOptions {
                    credential: login.credential,
                    ..Default::default()
                },
            )
            .expect("issue")
            .token
    }

    #[tokio::test]
    async fn a_changed_password_or_a_removed_user_ends_the_users_tokens_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = authenticator(dir.path());
        let htpasswd = auth.htpasswd().expect("htpasswd").clone();
        let first = format!("Bearer {}", alice_token(&auth, "s3cret").await);
        let unverified = format!("Bearer {}", alice_token(&auth, "s3cret").await);
        assert_eq!(
            outcome(&auth, Some(first.as_bytes()), None).await,
            Ok(user("alice")),
            "verified, and cached now"
        );
        // Tokens issued without the binding (an htpasswd user's token must carry it) are refused.
        let unbound = format!(
            "Bearer {}",
            auth.issuer()
                .expect("issuer")
                .issue(&user("alice"), vec![])
                .expect("issue")
                .token
        );
        assert_eq!(
            outcome(&auth, Some(unbound.as_bytes()), None).await,
            Err("invalid")
        );
        htpasswd
            .apply(&format!(
                "alice:{}\n",
                bcrypt::hash("n3w", 4).expect("hash")
            ))
            .expect("new password");
        // The cached token and the one never verified before both stop working.
        for token in [&first, &unverified] {
            assert_eq!(
                outcome(&auth, Some(token.as_bytes()), None).await,
                Err("invalid")
            );
        }
        let renewed = format!("Bearer {}", alice_token(&auth, "n3w").await);
        assert_eq!(
            outcome(&auth, Some(renewed.as_bytes()), None).await,
            Ok(user("alice"))
        );
        htpasswd
            .apply(&format!("bob:{}\n", bcrypt::hash("pw", 4).expect("hash")))
            .expect("alice removed");
        assert_eq!(
            outcome(&auth, Some(renewed.as_bytes()), None).await,
            Err("invalid")
        );
    }

    #[test]
    fn service_account_tokens_live_no_longer_than_the_review_cache_but_at_least_60s() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The review cache of the test authenticator keeps answers 30 s: raised to the spec's minimum.
        let auth = authenticator(dir.path());
        let cases = [
            (ci(), Some(MIN_TOKEN_LIFETIME)),
            (node_proxy(None), Some(MIN_TOKEN_LIFETIME)),
            (user("alice"), None),
            (Identity::Anonymous, None),
        ];
        for (identity, expected) in cases {
            assert_eq!(auth.token_lifetime(&identity), expected, "{identity}");
        }
        let issued = auth
            .issuer()
            .expect("issuer")
            .issue_with(
                &ci(),
                vec![],
                crate::auth::token::IssueOptions {
                    lifetime: auth.token_lifetime(&ci()),
                    ..Default::default()
                },
            )
            .expect("issue");
        assert_eq!(issued.expires_in, 60);
        assert_eq!(issued.claims.exp - issued.claims.iat, 60);
    }

    /// The kind of answer a client at `client` gets for `header`.
    async fn outcome_from(
        auth: &Authenticator,
        header: &[u8],
        client: IpAddr,
    ) -> Result<Identity, &'static str> {
        answer(
            auth,
            Presented {
                authorization: Some(header),
                client: Some(client),
                ..Presented::default()
            },
        )
        .await
    }

    #[tokio::test]
    async fn a_throttled_address_is_refused_without_a_check_and_its_own_account_clears_nothing() {
        use crate::auth::throttle::FREE_FAILURES;
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = authenticator(dir.path());
        let attacker: IpAddr = "2001:db8::1".parse().expect("ip");
        let neighbour: IpAddr = "2001:db8::2".parse().expect("ip");
        let elsewhere: IpAddr = "10.0.0.9".parse().expect("ip");
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                outcome_from(&auth, &basic("alice", "guess"), attacker).await,
                Err("invalid")
            );
        }
        // The guesser's own account (here a ServiceAccount token) forgives nothing of alice's failures.
        assert_eq!(
            outcome_from(&auth, b"Bearer ci.tok.en", attacker).await,
            Ok(ci())
        );
        assert_eq!(
            outcome_from(&auth, &basic("alice", "guess"), attacker).await,
            Err("invalid"),
            "the failure past the free ones starts the refusal period"
        );
        // Refused at once, even the right password, from the whole /64.
        let error = auth
            .authenticate(&Presented {
                authorization: Some(&basic("alice", "s3cret")),
                client: Some(neighbour),
                ..Presented::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "too many failed logins from 2001:db8::/64; retry in 1s"
        );
        assert_eq!(
            outcome_from(&auth, &basic("alice", "s3cret"), elsewhere).await,
            Ok(user("alice"))
        );
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_token_review() {
        let slow = FakeReviewer {
            slow: true,
            ..FakeReviewer::default()
        };
        let auth = Authenticator::new(AuthenticatorParts {
            htpasswd: None,
            reviews: Some(
                CachedReviews::new(
                    Arc::new(slow),
                    vec!["berth".into()],
                    Duration::from_secs(30),
                    ManualClock::new(),
                )
                .with_timeout(Duration::from_millis(100)),
            ),
            issuer: None,
            node_proxy: None,
            clock: ManualClock::new(),
        });
        let flooder: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let headers: Vec<Vec<u8>> = (0..=MAX_REVIEWS_PER_CLIENT)
            .map(|i| format!("Bearer junk.tok.en{i}").into_bytes())
            .chain(std::iter::once(b"Bearer junk.tok.other".to_vec()))
            .collect();
        let clients = (0..=MAX_REVIEWS_PER_CLIENT)
            .map(|_| flooder)
            .chain(std::iter::once(other));
        let answers = futures_util::future::join_all(
            headers
                .iter()
                .zip(clients)
                .map(|(header, client)| outcome_from(&auth, header, client)),
        )
        .await;
        let mut expected = vec![Err("unavailable"); MAX_REVIEWS_PER_CLIENT];
        // The one past the cap is told to retry at once; another address is still asked about.
        expected.push(Err("busy"));
        expected.push(Err("unavailable"));
        assert_eq!(answers, expected);
    }

    /// A reviewer that answers after a pause, as the API server does.
    struct Delayed(Arc<FakeReviewer>);

    #[async_trait::async_trait]
    impl crate::auth::tokenreview::TokenReviewer for Delayed {
        async fn review(
            &self,
            token: &str,
            audiences: &[String],
        ) -> Result<ReviewOutcome, crate::auth::tokenreview::ReviewError> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0.review(token, audiences).await
        }
    }

    #[tokio::test]
    async fn the_node_proxy_is_refused_neither_for_pulling_in_parallel_nor_for_its_neighbours_failures(
    ) {
        use crate::auth::throttle::FREE_FAILURES;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        std::fs::write(
            &path,
            format!("alice:{}\n", bcrypt::hash("s3cret", 4).expect("hash")),
        )
        .expect("write");
        let clock = ManualClock::new();
        let fake = Arc::new(FakeReviewer::with("np.tok.en", node_proxy_token(None)));
        let auth = Authenticator::new(AuthenticatorParts {
            htpasswd: Some(Arc::new(
                HtpasswdStore::load(&path, clock.clone()).expect("htpasswd"),
            )),
            reviews: Some(CachedReviews::new(
                Arc::new(Delayed(fake.clone())),
                vec!["berth".into()],
                Duration::from_secs(30),
                clock.clone(),
            )),
            issuer: None,
            node_proxy: Some(("berth-system".into(), "berth-node-proxy".into())),
            clock,
        });
        let node: IpAddr = "10.0.0.5".parse().expect("ip");
        // Many pulls at once with the same token, as when its cached answer has just expired: one review, every
        // pull answered (the per-address cap counts what asks the API server, not who waits for the answer).
        let pulls = futures_util::future::join_all(
            (0..3 * MAX_REVIEWS_PER_CLIENT).map(|_| outcome_from(&auth, b"Bearer np.tok.en", node)),
        )
        .await;
        assert_eq!(
            pulls,
            vec![Ok(node_proxy(None)); 3 * MAX_REVIEWS_PER_CLIENT]
        );
        assert_eq!(fake.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // alice's right password, checked once from the node's address.
        assert_eq!(
            outcome_from(&auth, &basic("alice", "s3cret"), node).await,
            Ok(user("alice"))
        );
        // A process on the node guesses until the address is refused ...
        for _ in 0..=FREE_FAILURES {
            assert_eq!(
                outcome_from(&auth, &basic("alice", "guess"), node).await,
                Err("invalid")
            );
        }
        assert_eq!(
            outcome_from(&auth, &basic("alice", "guess"), node).await,
            Err("busy")
        );
        assert_eq!(
            outcome_from(&auth, b"Bearer new.tok.en", node).await,
            Err("busy"),
            "a token never verified is a guess like any other"
        );
        // ... and credentials verified before still pass: the node proxy's pulls and alice's cached login.
        assert_eq!(
            outcome_from(&auth, b"Bearer np.tok.en", node).await,
            Ok(node_proxy(None))
        );
        assert_eq!(
            outcome_from(&auth, &basic("alice", "s3cret"), node).await,
            Ok(user("alice"))
        );
    }

    #[tokio::test]
    async fn a_password_past_72_bytes_is_not_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        let long = format!("{}A", "x".repeat(72));
        std::fs::write(
            &path,
            format!("alice:{}\n", bcrypt::hash(&long, 4).expect("hash")),
        )
        .expect("write");
        let auth = Authenticator::new(AuthenticatorParts {
            htpasswd: Some(Arc::new(
                HtpasswdStore::load(&path, ManualClock::new()).expect("htpasswd"),
            )),
            reviews: None,
            issuer: None,
            node_proxy: None,
            clock: ManualClock::new(),
        });
        let other = format!("{}B", "x".repeat(72));
        let error = auth
            .authenticate(&Presented {
                authorization: Some(&basic("alice", &other)),
                ..Presented::default()
            })
            .await
            .expect_err("not alice's password");
        assert!(
            error.to_string().contains("longer than 72 bytes"),
            "{error}"
        );
    }

    #[test]
    fn only_identities_that_still_stand_may_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = authenticator(dir.path());
        let cases = [
            (Identity::Anonymous, true),
            (user("alice"), true),
            (user("removed"), false),
            (ci(), false),
            (node_proxy(Some("node-1")), false),
        ];
        for (identity, expected) in cases {
            assert_eq!(auth.may_refresh(&identity), expected, "{identity}");
        }
    }

    #[tokio::test]
    async fn auth_off_is_anonymous_and_errors_classify() {
        let auth = Authenticator::disabled();
        assert!(!auth.enabled());
        assert_eq!(
            outcome(&auth, Some(&basic("alice", "x")), None).await,
            Ok(Identity::Anonymous)
        );
        assert!(AuthError::Malformed(CredentialsError::Base64).is_malformed());
        assert!(!AuthError::Invalid("x".into()).is_malformed());
    }
}
