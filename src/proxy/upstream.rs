//! One upstream registry: an HTTP client with its CA, and the registry auth flows: anonymous, Basic, and the Bearer
//! token flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…` → token endpoint, with or without credentials).
//! Tokens are cached per scope until they expire and fetched again on a 401.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use super::config::UpstreamConfig;

/// Manifest media types asked for when the client does not say.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Tokens without `expires_in` live this long (the distribution token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token is cached at most this long, whatever its `expires_in` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Errors of talking to an upstream. Their messages are what clients see, so they name the upstream by its
/// configured name and never carry a URL (the upstream's address, a token realm, a redirect target with its
/// signature): the full cause goes to berth's log where it happens.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not be reached or the connection broke.
    #[error("upstream {upstream} unreachable ({})", describe(source))]
    Unreachable {
        upstream: String,
        #[source]
        source: reqwest::Error,
    },
    /// The token endpoint refused or answered nonsense.
    #[error("upstream {upstream}: token request failed: {why}")]
    Token { upstream: String, why: String },
    /// The client could not be built (bad CA file).
    #[error("upstream {upstream}: {why}")]
    Setup { upstream: String, why: String },
}

/// The `Content-Length` header's value (for HEAD answers, whose body is empty whatever the header says).
pub fn header_content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What went wrong with a request, in words that carry no URL (reqwest's own message names the request's URL,
/// which may be an internal address or a signed redirect target). The full cause is [`cause_chain`], for the log.
pub fn describe(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_redirect() {
        "too many redirects"
    } else if error.is_body() || error.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    }
}

/// An error and all its causes, `: `-separated, for the log (reqwest hides the OS error behind its sources).
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// Reads a whole answer of at most `max` bytes; a longer one (declared or streamed) is refused. The error is fit
/// for clients; a broken transfer's cause is logged.
pub async fn read_limited(response: Response, max: usize) -> Result<bytes::Bytes, String> {
    use futures_util::StreamExt;
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("answer larger than {max} bytes"));
    }
    let url = response.url().clone();
    let mut body = response.bytes_stream();
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            log::warn!("reading the answer of {url}: {}", cause_chain(&e));
            format!("answer broke off ({})", describe(&e))
        })?;
        if bytes.len() + chunk.len() > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. Pure.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        fields.insert(key, value.to_owned());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: fields.remove("realm")?,
        service: fields.remove("service"),
        scope: fields.remove("scope"),
    })
}

/// Until when a token fetched at `now` is used: its `expires_in` (the upstream's number, so capped: a huge one
/// must not overflow the clock), less 5 s so a request never carries a token that expires in flight. Pure.
fn token_expiry(now: Instant, expires_in: Option<u64>) -> Instant {
    let lifetime = expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME)
        .min(MAX_TOKEN_LIFETIME)
        .saturating_sub(Duration::from_secs(5));
    now.checked_add(lifetime).unwrap_or(now)
}

struct CachedToken {
    token: String,
    expires: Instant,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    client: reqwest::Client,
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// Whether the upstream asked for Basic auth (then credentials are sent up front).
    basic: Mutex<bool>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let setup = |why: String| UpstreamError::Setup {
            upstream: config.name.clone(),
            why,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| setup(format!("caFile {}: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| setup(format!("caFile {}: {e}", path.display())))?;
            builder = builder.add_root_certificate(ca);
        }
        let client = builder.build().map_err(|e| setup(e.to_string()))?;
        Ok(Upstream {
            config,
            client,
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let (user, password) = self.config.credentials.as_ref()?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).ok()
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.token.clone())
    }

    fn authorization(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(token) = self.cached_token(scope) {
            return HeaderValue::from_str(&format!("Bearer {token}")).ok();
        }
        if *self.basic.lock().unwrap_or_else(|p| p.into_inner()) {
            return self.basic_header();
        }
        None
    }

    /// Sends `method url` for `repository` (the upstream's name for it), answering an auth challenge once.
    pub async fn send(
        &self,
        method: Method,
        repository: &str,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response, UpstreamError> {
        let url = format!("{}/v2/{repository}/{path}", self.config.url);
        let scope = format!("repository:{repository}:pull");
        let unreachable = |source: reqwest::Error| {
            log::warn!(
                "upstream {}: {method} {url}: {}",
                self.config.name,
                cause_chain(&source)
            );
            UpstreamError::Unreachable {
                upstream: self.config.name.clone(),
                source,
            }
        };
        let request = |authorization: Option<HeaderValue>| {
            let mut request = self
                .client
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            request
        };
        let response = request(self.authorization(&scope))
            .send()
            .await
            .map_err(unreachable)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let authorization = match challenge {
            Some(Challenge::Basic) => {
                *self.basic.lock().unwrap_or_else(|p| p.into_inner()) = true;
                match self.basic_header() {
                    Some(header) => header,
                    None => return Ok(response),
                }
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            }) => {
                let scope = challenge_scope.unwrap_or(scope);
                let token = self.fetch_token(&realm, service.as_deref(), &scope).await?;
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    log::warn!(
                        "upstream {}: the token from {realm} is not a valid header value",
                        self.config.name
                    );
                    UpstreamError::Token {
                        upstream: self.config.name.clone(),
                        why: "the token is not a valid header value".into(),
                    }
                })?
            }
            None => return Ok(response),
        };
        request(Some(authorization))
            .send()
            .await
            .map_err(unreachable)
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, UpstreamError> {
        // The realm is the upstream's own address for its token service: logged, not shown.
        let failed = |why: String| {
            log::warn!(
                "upstream {}: token from {realm} for {scope} failed: {why}",
                self.config.name
            );
            UpstreamError::Token {
                upstream: self.config.name.clone(),
                why,
            }
        };
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.client.get(realm).query(&query);
        if let Some(basic) = self.basic_header() {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request.send().await.map_err(|e| {
            log::warn!(
                "upstream {}: token request: {}",
                self.config.name,
                cause_chain(&e)
            );
            failed(describe(&e).to_owned())
        })?;
        if !response.status().is_success() {
            return Err(failed(format!("status {}", response.status())));
        }
        let body = read_limited(response, 64 * 1024).await.map_err(failed)?;
        let body: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("the answer is not a token: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| failed("no token in the answer".into()))?;
        let expires = token_expiry(Instant::now(), body.expires_in);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                scope.to_owned(),
                CachedToken {
                    token: token.clone(),
                    expires,
                },
            );
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_token_expires_in_does_not_overflow_the_clock() {
        let now = Instant::now();
        assert_eq!(
            token_expiry(now, Some(u64::MAX)),
            now + MAX_TOKEN_LIFETIME - Duration::from_secs(5)
        );
        assert_eq!(token_expiry(now, Some(300)), now + Duration::from_secs(295));
        assert_eq!(token_expiry(now, None), now + Duration::from_secs(55));
        assert_eq!(token_expiry(now, Some(0)), now);
    }

    #[test]
    fn challenges() {
        let bearer = |realm: &str, service: Option<&str>, scope: Option<&str>| Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        };
        let cases: &[(&str, Option<Challenge>)] = &[
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
                Some(bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/nginx:pull"),
                )),
            ),
            (
                r#"Bearer realm="http://127.0.0.1:1/t""#,
                Some(bearer("http://127.0.0.1:1/t", None, None)),
            ),
            (
                r#"bearer service="s", realm="r""#,
                Some(bearer("r", Some("s"), None)),
            ),
            (
                r#"Bearer realm=r,service=s"#,
                Some(bearer("r", Some("s"), None)),
            ),
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            (r#"Bearer service="s""#, None),
            ("Negotiate", None),
            (r#"Bearer realm="unterminated"#, None),
        ];
        for (header, expected) in cases {
            assert_eq!(&parse_challenge(header), expected, "{header}");
        }
    }
}
