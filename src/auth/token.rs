//! berth's own tokens (the distribution token flow): short-lived JWTs signed with ES256 by the key in the cert
//! dir (`token.key`, P-256; generated there standalone, written there from the managed Secret in a cluster so
//! replicas share it). [`TokenIssuer::issue`] signs the identity and the grants; [`TokenIssuer::verify`] accepts
//! only ES256, issuer and audience `berth`, a good signature and a time inside `nbf`..`exp` (a little leeway), and
//! remembers verified tokens by sha256 until they expire so that the hot path is a hash and a lookup. A token
//! carries when its session began (`auth_time`, the login with real credentials: refreshes keep it, and none is
//! made past [`MAX_SESSION`]) and, for an htpasswd user, the tag of the htpasswd entry it was issued for (checked
//! by the authenticator against the file in force).
//!
//! Must not: log the key or a token, or accept any other algorithm (`none` included).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::scope::Grant;
use super::Identity;
use crate::clock::SharedClock;

/// The file of the signing key in the cert dir.
pub const TOKEN_KEY: &str = "token.key";
/// The issuer and the audience (the service) of berth's tokens.
pub const SERVICE: &str = "berth";
/// Clock difference tolerated on `nbf` and `exp`.
const LEEWAY: Duration = Duration::from_secs(30);
/// Verified tokens remembered at most.
const CACHE_ENTRIES: usize = 8192;
/// The longest a session of refreshed tokens lasts: no token is issued by refresh once this long has passed since
/// the login with real credentials (so a session ends at most this plus `--token-expiry` after it began).
pub const MAX_SESSION: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest token verified (berth's are well under 2 KiB even with many grants).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims of a berth token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// [`Identity::username`].
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// What the token grants, in distribution's shape.
    pub access: Vec<Grant>,
    /// Who it was issued to (private claim).
    #[serde(rename = "berth.dev/identity")]
    pub identity: Identity,
    /// When the session began: the login with real credentials (OpenID Connect's claim; refreshes keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// For an htpasswd user: the tag of the htpasswd entry it was issued for
    /// ([`crate::auth::htpasswd::HtpasswdStore::credential_of`]).
    #[serde(
        rename = "berth.dev/credential",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub credential: Option<String>,
}

/// How a token is issued beyond its identity and grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueOptions {
    /// Shorter than `--token-expiry` (never longer; at least 1 s).
    pub lifetime: Option<Duration>,
    /// The session's start (unix seconds); None: now (a login).
    pub auth_time: Option<u64>,
    /// The htpasswd entry's tag, for an htpasswd user.
    pub credential: Option<String>,
}

/// A token as issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: SystemTime,
    pub claims: Claims,
}

/// A token as verified: whom it names and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub identity: Identity,
    /// Shared, so that a cached token hands its grants to every request without copying them.
    pub grants: Arc<[Grant]>,
    pub expires_at: SystemTime,
    /// When its session began (unix seconds; `iat` for a token without `auth_time`).
    pub auth_time: u64,
    /// The htpasswd entry it is bound to, if any.
    pub credential: Option<String>,
}

/// Why a token was not issued or not accepted. Never carries the token or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read or written.
    #[error("token signing key {path}: {why}")]
    KeyFile { path: String, why: String },
    /// The key is not a P-256 private key.
    #[error("token signing key {path} is not a PEM P-256 (ECDSA) private key: {why}")]
    BadKey { path: String, why: String },
    /// Signing failed.
    #[error("signing a token: {0}")]
    Sign(String),
    /// The token is longer than berth verifies.
    #[error("token of {0} bytes is too long")]
    TooLong(usize),
    /// Not a JWT berth can read, an algorithm other than ES256, a bad signature, another issuer or audience.
    #[error("token is not valid: {0}")]
    Invalid(String),
    /// Past its `exp`.
    #[error("token expired {0} seconds ago")]
    Expired(u64),
    /// Before its `nbf`.
    #[error("token is not valid yet")]
    NotYetValid,
    /// A refresh asked for a session older than [`MAX_SESSION`].
    #[error("its session began {age_seconds} s ago, and a session lasts at most {} s", MAX_SESSION.as_secs())]
    SessionOver { age_seconds: u64 },
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a verified token is still inside its `exp` (with the leeway) at `now`.
fn still_valid(token: &VerifiedToken, now: SystemTime) -> bool {
    token
        .expires_at
        .checked_add(LEEWAY)
        .is_none_or(|until| until > now)
}

/// Issues and verifies berth's tokens.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    expiry: Duration,
    clock: SharedClock,
    verified: Mutex<HashMap<[u8; 32], Arc<VerifiedToken>>>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// Generates a new P-256 key (PKCS#8 PEM).
pub fn generate_key() -> Result<String, TokenError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map(|key| key.serialize_pem())
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Whether `pem` is a P-256 private key berth can sign with.
pub fn key_is_usable(pem: &str) -> bool {
    rcgen::KeyPair::from_pem(pem).is_ok_and(|key| key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// The signing key in `cert_dir`, generated there (mode 0600) when missing.
pub fn load_or_generate_key(cert_dir: &Path) -> Result<String, TokenError> {
    let path = cert_dir.join(TOKEN_KEY);
    let key_error = |why: String| TokenError::KeyFile {
        path: path.display().to_string(),
        why,
    };
    match std::fs::read_to_string(&path) {
        Ok(pem) => Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(cert_dir).map_err(|e| key_error(e.to_string()))?;
            let pem = generate_key()?;
            crate::tls::write_file(&path, &pem, true).map_err(|e| key_error(e.to_string()))?;
            log::info!("generated a token signing key in {}", path.display());
            Ok(pem)
        }
        Err(e) => Err(key_error(e.to_string())),
    }
}

impl TokenIssuer {
    /// An issuer signing with `key_pem` (from `path`, for messages), tokens valid for `expiry`.
    pub fn new(
        key_pem: &str,
        path: &Path,
        expiry: Duration,
        clock: SharedClock,
    ) -> Result<TokenIssuer, TokenError> {
        let bad_key = |why: String| TokenError::BadKey {
            path: path.display().to_string(),
            why,
        };
        let pair = rcgen::KeyPair::from_pem(key_pem).map_err(|e| bad_key(e.to_string()))?;
        if pair.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(bad_key("another algorithm".into()));
        }
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
            .map_err(|e| bad_key(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes())
            .map_err(|e| bad_key(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.algorithms = vec![Algorithm::ES256];
        validation.set_issuer(&[SERVICE]);
        validation.set_audience(&[SERVICE]);
        // Times are checked against berth's clock below.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Ok(TokenIssuer {
            encoding,
            decoding,
            validation,
            expiry,
            clock,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer over the key in `cert_dir` (generated when missing).
    pub fn from_cert_dir(
        cert_dir: &Path,
        expiry: Duration,
        clock: SharedClock,
    ) -> Result<TokenIssuer, TokenError> {
        let pem = load_or_generate_key(cert_dir)?;
        let path: PathBuf = cert_dir.join(TOKEN_KEY);
        TokenIssuer::new(&pem, &path, expiry, clock)
    }

    /// How long issued tokens are valid.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Signs a token for `identity` granting `access` (a new session, valid for `--token-expiry`).
    pub fn issue(
        &self,
        identity: &Identity,
        access: Vec<Grant>,
    ) -> Result<IssuedToken, TokenError> {
        self.issue_with(identity, access, IssueOptions::default())
    }

    /// Signs a token for `identity` granting `access`, as `options` say.
    pub fn issue_with(
        &self,
        identity: &Identity,
        access: Vec<Grant>,
        options: IssueOptions,
    ) -> Result<IssuedToken, TokenError> {
        let issued_at = self.clock.system();
        let now = unix(issued_at);
        let lifetime = options
            .lifetime
            .map_or(self.expiry, |lifetime| lifetime.min(self.expiry));
        let expires_in = lifetime.as_secs().max(1);
        if let Some(auth_time) = options.auth_time {
            let age_seconds = now.saturating_sub(auth_time);
            if age_seconds >= MAX_SESSION.as_secs() {
                return Err(TokenError::SessionOver { age_seconds });
            }
        }
        let claims = Claims {
            iss: SERVICE.into(),
            aud: SERVICE.into(),
            sub: identity.username(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(expires_in),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
            identity: identity.clone(),
            auth_time: Some(options.auth_time.unwrap_or(now).min(now)),
            credential: options.credential,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok(IssuedToken {
            token,
            expires_in,
            issued_at,
            claims,
        })
    }

    /// The token if this issuer verified it before and it has not expired (the hot path: a hash and a lookup,
    /// nothing decoded). None for any other token, including one too long to have been verified.
    pub fn cached(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        self.lookup(&cache_key(token), self.clock.system())
    }

    /// The cached verification under `key`, dropped when it has expired.
    fn lookup(&self, key: &[u8; 32], now: SystemTime) -> Option<Arc<VerifiedToken>> {
        let mut cache = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let hit = cache.get(key)?;
        if still_valid(hit, now) {
            return Some(hit.clone());
        }
        cache.remove(key);
        None
    }

    /// Verifies a token: from the cache of verified tokens (still checking `exp`), else in full.
    pub fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong(token.len()));
        }
        let key = cache_key(token);
        let now = self.clock.system();
        if let Some(hit) = self.lookup(&key, now) {
            return Ok(hit);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let now_unix = unix(now);
        let leeway = LEEWAY.as_secs();
        if claims.exp.saturating_add(leeway) <= now_unix {
            return Err(TokenError::Expired(now_unix - claims.exp));
        }
        if claims.nbf > now_unix.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
        // Checked: only berth's own signed tokens get here, but a time past what SystemTime holds must not panic.
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .ok_or_else(|| TokenError::Invalid(format!("exp {} is out of range", claims.exp)))?;
        let verified = Arc::new(VerifiedToken {
            identity: claims.identity,
            grants: claims.access.into(),
            expires_at,
            auth_time: claims.auth_time.unwrap_or(claims.iat),
            credential: claims.credential,
        });
        let mut cache = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, v| still_valid(v, now));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }
}

/// The key of a verified token in the cache: its sha256 (the token itself is not kept).
fn cache_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` says it was issued by berth (read without verifying: it only picks the verifier).
pub fn claims_berth_issuer(token: &str) -> bool {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|claims| {
            claims
                .get("iss")
                .and_then(|i| i.as_str())
                .map(|i| i == SERVICE)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use base64::Engine as _;

    fn issuer(clock: SharedClock) -> TokenIssuer {
        TokenIssuer::new(
            &generate_key().expect("key"),
            Path::new("token.key"),
            Duration::from_secs(300),
            clock,
        )
        .expect("issuer")
    }

    fn alice() -> Identity {
        Identity::User {
            name: "alice".into(),
        }
    }

    fn pull(name: &str) -> Vec<Grant> {
        vec![Grant {
            resource_type: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn issued_tokens_verify_and_carry_identity_and_grants() {
        let clock = ManualClock::new();
        let issuer = issuer(clock.clone());
        let issued = issuer.issue(&alice(), pull("a")).expect("issue");
        assert_eq!(issued.expires_in, 300);
        assert!(claims_berth_issuer(&issued.token));
        assert_eq!(issuer.cached(&issued.token), None, "not verified yet");
        let verified = issuer.verify(&issued.token).expect("verify");
        assert_eq!(issuer.cached(&issued.token), Some(verified.clone()));
        assert_eq!(verified.identity, alice());
        assert_eq!(&verified.grants[..], &pull("a")[..]);
        // Cached, and the cache still honours the expiry.
        issuer.verify(&issued.token).expect("cached");
        clock.advance(Duration::from_secs(300) + LEEWAY);
        assert_eq!(issuer.cached(&issued.token), None, "expired");
        assert!(matches!(
            issuer.verify(&issued.token),
            Err(TokenError::Expired(_))
        ));
    }

    #[test]
    fn a_session_is_not_renewed_past_its_maximum_age() {
        let clock = ManualClock::new();
        let issuer = issuer(clock.clone());
        let login = issuer.issue(&alice(), vec![]).expect("login");
        let began = login.claims.auth_time.expect("auth_time");
        assert_eq!(began, login.claims.iat);
        clock.advance(MAX_SESSION - Duration::from_secs(1));
        let renew = |auth_time| {
            issuer.issue_with(
                &alice(),
                vec![],
                IssueOptions {
                    auth_time: Some(auth_time),
                    ..Default::default()
                },
            )
        };
        let renewed = renew(began).expect("within the session");
        assert_eq!(renewed.claims.auth_time, Some(began), "a refresh keeps it");
        assert_eq!(
            issuer.verify(&renewed.token).expect("verify").auth_time,
            began
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            renew(began).map(|t| t.claims),
            Err(TokenError::SessionOver {
                age_seconds: MAX_SESSION.as_secs()
            })
        );
    }

    #[test]
    fn a_lifetime_shortens_a_token_and_never_lengthens_it() {
        let issuer = issuer(ManualClock::new());
        let check = |lifetime: Option<Duration>, expected: u64| {
            let issued = issuer
                .issue_with(
                    &alice(),
                    vec![],
                    IssueOptions {
                        lifetime,
                        ..Default::default()
                    },
                )
                .expect("issue");
            assert_eq!(issued.expires_in, expected, "{lifetime:?}");
            assert_eq!(issued.claims.exp - issued.claims.iat, expected);
        };
        check(None, 300);
        check(Some(Duration::from_secs(60)), 60);
        check(Some(Duration::from_secs(3600)), 300);
        check(Some(Duration::ZERO), 1);
    }

    #[test]
    fn only_verified_tokens_are_cached_and_only_until_they_expire() {
        let clock = ManualClock::new();
        let issuer = issuer(clock.clone());
        let token = issuer.issue(&alice(), pull("a")).expect("issue").token;
        assert_eq!(issuer.cached(&token), None, "issued, not yet verified");
        let verified = issuer.verify(&token).expect("verify");
        assert_eq!(issuer.cached(&token), Some(verified));
        // A refused token is not remembered, and does not disturb the good one.
        let tampered = format!("{token}x");
        assert!(issuer.verify(&tampered).is_err());
        assert_eq!(issuer.cached(&tampered), None);
        assert_eq!(issuer.cached(&"a".repeat(MAX_TOKEN_BYTES + 1)), None);
        clock.advance(Duration::from_secs(300) + LEEWAY);
        assert_eq!(issuer.cached(&token), None, "expired");
        assert!(matches!(issuer.verify(&token), Err(TokenError::Expired(_))));
    }

    #[test]
    fn forged_truncated_and_foreign_tokens_are_refused() {
        let clock = ManualClock::new();
        let issuer = issuer(clock.clone());
        let other = self::issuer(clock.clone());
        let good = issuer.issue(&alice(), pull("a")).expect("issue").token;
        let parts: Vec<&str> = good.split('.').collect();
        let claims_json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("payload");
        let mut claims: serde_json::Value = serde_json::from_slice(&claims_json).expect("json");

        let mut widened = claims.clone();
        widened["access"][0]["actions"] = serde_json::json!(["pull", "push"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(widened.to_string().as_bytes()),
            parts[2]
        );
        let alg_none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        let hs256 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"guess"),
        )
        .expect("hs256");
        claims["aud"] = "registry.example".into();
        let wrong_audience =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &issuer.encoding)
                .expect("sign");
        claims["aud"] = SERVICE.into();
        claims["iss"] = "someone-else".into();
        let wrong_issuer =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &issuer.encoding)
                .expect("sign");
        let cases = [
            (
                "signed by another key",
                other.issue(&alice(), pull("a")).expect("issue").token,
            ),
            ("forged claims", forged),
            ("alg none", alg_none),
            ("hs256", hs256),
            ("wrong audience", wrong_audience),
            ("wrong issuer", wrong_issuer),
            ("truncated", good[..good.len() - 10].to_owned()),
            ("two parts", format!("{}.{}", parts[0], parts[1])),
            ("garbage", "not-a-jwt".to_owned()),
            ("empty", String::new()),
        ];
        for (what, token) in cases {
            assert!(
                matches!(issuer.verify(&token), Err(TokenError::Invalid(_))),
                "{what}: {:?}",
                issuer.verify(&token)
            );
        }
        assert_eq!(
            issuer.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
            Err(TokenError::TooLong(MAX_TOKEN_BYTES + 1))
        );
    }

    #[test]
    fn the_key_is_generated_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_generate_key(dir.path()).expect("generate");
        let mode = std::fs::metadata(dir.path().join(TOKEN_KEY))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_generate_key(dir.path()).expect("load"), first);
        assert!(key_is_usable(&first));
        std::fs::write(dir.path().join(TOKEN_KEY), "not a key").expect("write");
        let error =
            TokenIssuer::from_cert_dir(dir.path(), Duration::from_secs(60), ManualClock::new())
                .expect_err("bad key");
        assert!(matches!(error, TokenError::BadKey { .. }), "{error}");
        assert!(!error.to_string().contains("not a key"), "{error}");
    }
}
