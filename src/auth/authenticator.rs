//! Turns what a request presents (its `Authorization` header, the node proxy's `Berth-Node-Name`, the client's
//! address) into a verified [`Identity`]: htpasswd users, ServiceAccount tokens through TokenReview (Bearer, or the
//! password of Basic with any user name that is not an htpasswd user), berth's own tokens (with what they grant),
//! and the node proxy's ServiceAccount with the node it runs on. Failed logins are logged (never the secret) and
//! slowed per client address.
//!
//! Must not: decide what an identity may do (that is [`super::access`]), know routes, or trust a client's claim
//! (the node name) without a credential that proves it may make it.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use super::credentials::{parse_authorization, Credentials, CredentialsError};
use super::htpasswd::{HtpasswdStore, Verdict};
use super::scope::Grant;
use super::throttle::Throttle;
use super::token::{claims_berth_issuer, TokenIssuer};
use super::tokenreview::{CachedReviews, ServiceAccountUser, TokenReviewError};
use super::Identity;
use crate::clock::SharedClock;

/// The header in which the node proxy names its node.
pub const NODE_NAME_HEADER: &str = "Berth-Node-Name";

/// What a request presents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The raw `Authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
    /// The `Berth-Node-Name` header, if any (believed only from the node proxy's ServiceAccount).
    pub node_name: Option<&'a str>,
    /// The client's address (failed logins are slowed per address).
    pub client: Option<IpAddr>,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: Identity,
    /// Some for a berth token: what it grants (the front door checks this, not the rules).
    pub grants: Option<Vec<Grant>>,
}

impl Authenticated {
    fn of(identity: Identity) -> Authenticated {
        Authenticated {
            identity,
            grants: None,
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
        }
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
        let Some(header) = request.authorization else {
            return Ok(Authenticated::of(Identity::Anonymous));
        };
        let credentials = match parse_authorization(header) {
            Ok(credentials) => credentials,
            Err(e) => {
                log::warn!(
                    "refused credentials from {}: {e}",
                    shown_client(request.client)
                );
                return Err(if e.is_challenge() {
                    AuthError::Invalid(e.to_string())
                } else {
                    AuthError::Malformed(e)
                });
            }
        };
        let (user, outcome) = self.check(&credentials, request).await;
        match outcome {
            Ok(authenticated) => {
                self.throttle.succeeded(request.client);
                Ok(authenticated)
            }
            Err(Failure { for_client, why }) => {
                log::warn!(
                    "failed login of {user} from {}: {why}",
                    shown_client(request.client)
                );
                let delay = match for_client {
                    // The API server's trouble is not the client's guess.
                    AuthError::Unavailable(_) => std::time::Duration::ZERO,
                    _ => self.throttle.failed(request.client),
                };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Err(for_client)
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
                        let outcome = match htpasswd.verify(username, password).await {
                            Verdict::Valid => Ok(Authenticated::of(Identity::User {
                                name: username.clone(),
                            })),
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
                // Any other user name: the password is a ServiceAccount token.
                (shown, self.service_account(password, request).await)
            }
            Credentials::Bearer(token) => {
                // The hot path: a berth token verified before is a hash and a lookup, without decoding its
                // claims to see who issued it.
                if let Some(verified) = self.issuer.as_ref().and_then(|i| i.cached(token)) {
                    return (
                        // Only a failure is logged with who it claimed to be, and a cached token cannot fail.
                        String::new(),
                        Ok(Authenticated {
                            identity: verified.identity.clone(),
                            grants: Some(verified.grants.clone()),
                        }),
                    );
                }
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
                            Ok(Authenticated {
                                identity: verified.identity.clone(),
                                grants: Some(verified.grants.clone()),
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
        let fake = FakeReviewer::with("ci-token", sa("team-a", "ci"));
        fake.set("np-token", node_proxy_token(None));
        fake.set("np-bound", node_proxy_token(Some("node-1")));
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
        auth.authenticate(&Presented {
            authorization: header,
            node_name: node,
            client: None,
        })
        .await
        .map(|a| a.identity)
        .map_err(|e| match e {
            AuthError::Malformed(_) => "malformed",
            AuthError::Invalid(_) => "invalid",
            AuthError::Unavailable(_) => "unavailable",
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
            (Some(basic("alice", "ci-token")), None, Err("invalid")),
            (Some(basic("anyone", "ci-token")), None, Ok(ci())),
            (Some(basic("anyone", "bad-token")), None, Err("invalid")),
            (Some(b"Bearer ci-token".to_vec()), None, Ok(ci())),
            // The node header from anyone but the node proxy is ignored.
            (Some(b"Bearer ci-token".to_vec()), Some("node-9"), Ok(ci())),
            (
                Some(b"Bearer np-token".to_vec()),
                Some("node-1"),
                Ok(node_proxy(Some("node-1"))),
            ),
            (
                Some(b"Bearer np-token".to_vec()),
                None,
                Ok(node_proxy(None)),
            ),
            (
                Some(b"Bearer np-bound".to_vec()),
                None,
                Ok(node_proxy(Some("node-1"))),
            ),
            (
                Some(b"Bearer np-bound".to_vec()),
                Some("node-1"),
                Ok(node_proxy(Some("node-1"))),
            ),
            (
                Some(b"Bearer np-bound".to_vec()),
                Some("node-2"),
                Err("invalid"),
            ),
            (
                Some(b"Bearer np-token".to_vec()),
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
        let issued = auth
            .issuer()
            .expect("issuer")
            .issue(&user("alice"), grants.clone())
            .expect("issue");
        let header = format!("Bearer {}", issued.token);
        let expected = Authenticated {
            identity: user("alice"),
            grants: Some(grants),
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
