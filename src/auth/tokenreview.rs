//! Kubernetes ServiceAccount tokens, checked with the TokenReview API: a [`TokenReviewer`] asks (the real one
//! through the kube client; tests use a fake), and [`CachedReviews`] bounds the wait, refuses what is not a
//! ServiceAccount, and remembers positive answers for a short time keyed by sha256 of the token (never past the
//! token's own `exp`, and a bounded number of them). Negative answers (refused, not a ServiceAccount) are
//! remembered briefly too ([`NEGATIVE_TTL`]), so that the same junk token sent again costs no API-server call.
//!
//! Must not: log or keep a token (only its hash), or trust anything in the token that the API server did not
//! confirm (the `exp` read here only shortens how long an answer is kept).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};

use crate::clock::SharedClock;

/// How long a TokenReview may take before the login fails closed.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Positive answers remembered at most (and negative ones, apart).
const CACHE_ENTRIES: usize = 4096;
/// How long a negative answer is remembered: short, so a token just created is not refused long.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// TokenReviews in flight at most: a flood of bad tokens waits here (within the timeout) instead of flooding the
/// API server.
const MAX_IN_FLIGHT: usize = 32;
/// The key of the node name in a bound token's TokenReview `extra`.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What the API server said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// The token is valid for one of the audiences.
    Authenticated(ReviewedUser),
    /// The token is not valid (expired, revoked, another audience, its ServiceAccount deleted): the API server's
    /// reason, if it gave one.
    Rejected(String),
}

/// The user a TokenReview confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReviewedUser {
    pub username: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a TokenReview could not be answered (the API server unreachable, slow or refusing berth).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server did not answer within the timeout.
    #[error("the Kubernetes API server did not answer the TokenReview within {0:?}")]
    Timeout(Duration),
    /// The request failed (connection refused, 403 for berth's own ServiceAccount, …).
    #[error("TokenReview failed: {0}")]
    Api(String),
}

/// Asks whether a token is valid for `audiences`.
#[async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    async fn review(&self, token: &str, audiences: &[String])
        -> Result<ReviewOutcome, ReviewError>;
}

/// The real reviewer: `POST authentication.k8s.io/v1 tokenreviews` through the kube client.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> KubeTokenReviewer {
        KubeTokenReviewer { client }
    }
}

#[async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewOutcome, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(audiences.to_vec()),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Api(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(ReviewOutcome::Rejected(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the token is not valid".into()),
            ));
        }
        // The API server answers with the audiences the token is valid for; none of ours means not for berth.
        if let Some(valid_for) = &status.audiences {
            if !valid_for.iter().any(|a| audiences.contains(a)) {
                return Ok(ReviewOutcome::Rejected(format!(
                    "the token is not for audience {}",
                    audiences.join(", ")
                )));
            }
        }
        let user = status.user.unwrap_or_default();
        Ok(ReviewOutcome::Authenticated(ReviewedUser {
            username: user.username.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }
}

/// A confirmed ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountUser {
    pub namespace: String,
    pub name: String,
    pub groups: Vec<String>,
    /// The node a bound token names (TokenReview `extra`), if any.
    pub node: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenReviewError {
    /// The API server said no.
    #[error("the Kubernetes API server refused the token: {0}")]
    Rejected(String),
    /// The token belongs to a user that is not a ServiceAccount.
    #[error("only ServiceAccount tokens are accepted, not the token of {0:?}")]
    NotServiceAccount(String),
    /// No answer (fail closed).
    #[error(transparent)]
    Unavailable(ReviewError),
}

/// Maps `system:serviceaccount:<ns>:<name>` to its parts. Pure.
pub fn service_account_of(user: &ReviewedUser) -> Result<ServiceAccountUser, TokenReviewError> {
    let not_sa = || TokenReviewError::NotServiceAccount(user.username.clone());
    let rest = user
        .username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(not_sa)?;
    let (namespace, name) = rest.split_once(':').ok_or_else(not_sa)?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return Err(not_sa());
    }
    Ok(ServiceAccountUser {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        groups: user.groups.clone(),
        node: user
            .extra
            .get(NODE_NAME_EXTRA)
            .and_then(|nodes| nodes.first())
            .cloned(),
    })
}

/// The `exp` claim of a JWT, read without verifying it (only to keep an answer no longer than the token lives).
pub fn unverified_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

struct Cached {
    user: ServiceAccountUser,
    until: Instant,
}

/// TokenReview with a timeout and a cache of positive answers.
pub struct CachedReviews {
    reviewer: Arc<dyn TokenReviewer>,
    audiences: Vec<String>,
    ttl: Duration,
    timeout: Duration,
    clock: SharedClock,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    refused: Mutex<HashMap<[u8; 32], (TokenReviewError, Instant)>>,
    in_flight: tokio::sync::Semaphore,
    /// The reviews being asked now, by token hash: concurrent requests with the same token (the node proxy's pulls
    /// when its cached answer expires) wait for one answer instead of each asking the API server.
    pending: Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<Answer>>>>,
}

/// What one review of a token came to.
type Answer = Result<ServiceAccountUser, TokenReviewError>;

impl CachedReviews {
    pub fn new(
        reviewer: Arc<dyn TokenReviewer>,
        audiences: Vec<String>,
        ttl: Duration,
        clock: SharedClock,
    ) -> CachedReviews {
        CachedReviews {
            reviewer,
            audiences,
            ttl,
            timeout: REVIEW_TIMEOUT,
            clock,
            cache: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The same with another timeout (tests).
    pub fn with_timeout(mut self, timeout: Duration) -> CachedReviews {
        self.timeout = timeout;
        self
    }

    /// How long a positive answer is kept (`--token-cache-ttl`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether a positive answer for `token` is cached and current: the token was verified before (no guess).
    pub fn is_cached(&self, token: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.instant();
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .is_some_and(|hit| hit.until > now)
    }

    /// Whether a review of `token` is being asked now (a request with it would wait for that answer, not ask).
    pub fn is_pending(&self, token: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .is_some_and(|cell| !cell.initialized())
    }

    /// The ServiceAccount `token` belongs to, from the caches or the API server.
    pub async fn review(&self, token: &str) -> Result<ServiceAccountUser, TokenReviewError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.instant();
        {
            let mut refused = self
                .refused
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match refused.get(&key) {
                Some((error, until)) if *until > now => return Err(error.clone()),
                Some(_) => {
                    refused.remove(&key);
                }
                None => {}
            }
        }
        let outcome = self.review_uncached(token, key, now).await;
        if let Err(
            error @ (TokenReviewError::Rejected(_) | TokenReviewError::NotServiceAccount(_)),
        ) = &outcome
        {
            let mut refused = self
                .refused
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if refused.len() >= CACHE_ENTRIES {
                refused.retain(|_, (_, until)| *until > now);
                if refused.len() >= CACHE_ENTRIES {
                    refused.clear();
                }
            }
            refused.insert(key, (error.clone(), now + NEGATIVE_TTL));
        }
        outcome
    }

    async fn review_uncached(
        &self,
        token: &str,
        key: [u8; 32],
        now: Instant,
    ) -> Result<ServiceAccountUser, TokenReviewError> {
        {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match cache.get(&key) {
                Some(hit) if hit.until > now => return Ok(hit.user.clone()),
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        // One review a token at a time: the first request asks, the others with the same token wait for its answer
        // (a cell left initialized by a cancelled leader is replaced, so no answer outlives its review).
        let cell = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match pending.get(&key) {
                Some(cell) if !cell.initialized() => cell.clone(),
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    pending.insert(key, cell.clone());
                    cell
                }
            }
        };
        let answer = cell.get_or_init(|| self.ask(token, key, now)).await.clone();
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            pending.remove(&key);
        }
        answer
    }

    /// Asks the API server about `token` (bounded by the timeout and the slots) and caches a positive answer.
    async fn ask(&self, token: &str, key: [u8; 32], now: Instant) -> Answer {
        let answer = tokio::time::timeout(self.timeout, async {
            let _slot = self.in_flight.acquire().await;
            self.reviewer.review(token, &self.audiences).await
        })
        .await
        .map_err(|_| TokenReviewError::Unavailable(ReviewError::Timeout(self.timeout)))?
        .map_err(TokenReviewError::Unavailable)?;
        let user = match answer {
            ReviewOutcome::Authenticated(user) => service_account_of(&user)?,
            ReviewOutcome::Rejected(why) => return Err(TokenReviewError::Rejected(why)),
        };
        // Kept for the TTL, and never past the token's own expiry.
        let mut keep = self.ttl;
        if let Some(exp) = unverified_expiry(token) {
            let left = exp
                .duration_since(self.clock.system())
                .unwrap_or(Duration::ZERO);
            keep = keep.min(left);
        }
        if !keep.is_zero() {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, entry| entry.until > now);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                key,
                Cached {
                    user: user.clone(),
                    until: now + keep,
                },
            );
        }
        Ok(user)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::{Clock as _, ManualClock};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a table of token → outcome, counting the calls; `slow` never answers.
    #[derive(Default)]
    pub(crate) struct FakeReviewer {
        pub(crate) answers: Mutex<HashMap<String, ReviewOutcome>>,
        pub(crate) calls: AtomicUsize,
        pub(crate) slow: bool,
    }

    impl FakeReviewer {
        pub(crate) fn with(token: &str, outcome: ReviewOutcome) -> FakeReviewer {
            let fake = FakeReviewer::default();
            fake.set(token, outcome);
            fake
        }

        pub(crate) fn set(&self, token: &str, outcome: ReviewOutcome) {
            self.answers
                .lock()
                .expect("lock")
                .insert(token.to_owned(), outcome);
        }
    }

    #[async_trait]
    impl TokenReviewer for FakeReviewer {
        async fn review(
            &self,
            token: &str,
            _audiences: &[String],
        ) -> Result<ReviewOutcome, ReviewError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.slow {
                std::future::pending::<()>().await;
            }
            Ok(self
                .answers
                .lock()
                .expect("lock")
                .get(token)
                .cloned()
                .unwrap_or_else(|| ReviewOutcome::Rejected("unknown token".into())))
        }
    }

    pub(crate) fn sa(namespace: &str, name: &str) -> ReviewOutcome {
        ReviewOutcome::Authenticated(ReviewedUser {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ],
            extra: BTreeMap::new(),
        })
    }

    #[test]
    fn usernames_map_to_service_accounts_or_are_refused() {
        let check = |username: &str, expected: Option<(&str, &str)>| {
            let user = ReviewedUser {
                username: username.into(),
                ..Default::default()
            };
            let got = service_account_of(&user)
                .ok()
                .map(|sa| (sa.namespace, sa.name));
            let expected = expected.map(|(ns, n)| (ns.to_owned(), n.to_owned()));
            assert_eq!(got, expected, "{username}");
        };
        check("system:serviceaccount:team-a:ci", Some(("team-a", "ci")));
        check("system:serviceaccount:team-a", None);
        check("system:serviceaccount::ci", None);
        check("system:serviceaccount:a:b:c", None);
        check("kubernetes-admin", None);
        check("system:node:node-1", None);
    }

    #[tokio::test]
    async fn answers_are_cached_for_the_ttl_and_not_past_the_token_expiry() {
        let clock = ManualClock::new();
        let fake = Arc::new(FakeReviewer::with("tok", sa("team-a", "ci")));
        let reviews = CachedReviews::new(
            fake.clone(),
            vec!["berth".into()],
            Duration::from_secs(30),
            clock.clone(),
        );
        let user = reviews.review("tok").await.expect("accepted");
        assert_eq!(
            (user.namespace.as_str(), user.name.as_str()),
            ("team-a", "ci")
        );
        reviews.review("tok").await.expect("cached");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        // The ServiceAccount is deleted: the cache answers until the TTL, then the API server's no.
        fake.set("tok", ReviewOutcome::Rejected("deleted".into()));
        clock.advance(Duration::from_secs(29));
        reviews.review("tok").await.expect("still cached");
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            reviews.review("tok").await,
            Err(TokenReviewError::Rejected("deleted".into()))
        );

        // A token expiring in 5 s is kept 5 s, not 30.
        let exp = clock
            .system()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 5;
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
        let short = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig");
        fake.set(&short, sa("team-a", "ci"));
        reviews.review(&short).await.expect("accepted");
        fake.set(&short, ReviewOutcome::Rejected("expired".into()));
        clock.advance(Duration::from_secs(6));
        assert!(matches!(
            reviews.review(&short).await,
            Err(TokenReviewError::Rejected(_))
        ));
    }

    #[tokio::test]
    async fn a_refused_token_is_not_asked_again_for_a_few_seconds() {
        let clock = ManualClock::new();
        let fake = Arc::new(FakeReviewer::default());
        let reviews = CachedReviews::new(
            fake.clone(),
            vec!["berth".into()],
            Duration::from_secs(30),
            clock.clone(),
        );
        let refused = Err(TokenReviewError::Rejected("unknown token".into()));
        assert_eq!(reviews.review("junk.tok.en").await, refused);
        assert_eq!(reviews.review("junk.tok.en").await, refused);
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            1,
            "the second answer is remembered"
        );
        // Created meanwhile: accepted once the negative answer is forgotten.
        fake.set("junk.tok.en", sa("team-a", "ci"));
        clock.advance(NEGATIVE_TTL);
        assert!(reviews.review("junk.tok.en").await.is_ok());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_users_are_refused_and_a_slow_api_server_fails_closed() {
        let fake = Arc::new(FakeReviewer::with(
            "admin",
            ReviewOutcome::Authenticated(ReviewedUser {
                username: "kubernetes-admin".into(),
                ..Default::default()
            }),
        ));
        let reviews = CachedReviews::new(
            fake,
            vec!["berth".into()],
            Duration::from_secs(30),
            ManualClock::new(),
        );
        assert_eq!(
            reviews.review("admin").await,
            Err(TokenReviewError::NotServiceAccount(
                "kubernetes-admin".into()
            ))
        );
        let slow = Arc::new(FakeReviewer {
            slow: true,
            ..Default::default()
        });
        let reviews = CachedReviews::new(
            slow,
            vec!["berth".into()],
            Duration::from_secs(30),
            ManualClock::new(),
        )
        .with_timeout(Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(
            reviews.review("tok").await,
            Err(TokenReviewError::Unavailable(ReviewError::Timeout(
                Duration::from_millis(100)
            )))
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
