//! One upstream registry over HTTP: a client with its CA, and the registry auth flows: anonymous, Basic, and the
//! Bearer token flow (`WWW-Authenticate: Bearer realm=…,service=…,scope=…` → token endpoint, with or without
//! credentials). Tokens are cached per scope until they expire and fetched again on a 401. The only module of the
//! proxy that knows reqwest: it answers the [`Upstream`] trait and maps the upstream's statuses to [`ProxyError`]s.
//! It decides nothing of the cache (what to keep, for how long).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

mod auth;

use super::{Upstream, UpstreamBlob, UpstreamManifest, UpstreamTag, UpstreamTags};
use crate::proxy::config::UpstreamConfig;
use crate::proxy::error::ProxyError;
use crate::registry::error::RegistryError;
use crate::registry::manifest::MAX_MANIFEST_BYTES;
use crate::registry::names::{Digest, Reference, Tag};
use auth::{parse_challenge, token_expiry, Challenge};

/// Largest token or tag-list answer read from an upstream.
const MAX_SMALL_BODY: usize = 4 * 1024 * 1024;

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

struct CachedToken {
    token: String,
    expires: Instant,
}

/// An upstream registry reached over HTTP(S).
pub struct HttpUpstream {
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

impl HttpUpstream {
    pub fn new(config: UpstreamConfig) -> Result<HttpUpstream, UpstreamError> {
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
        Ok(HttpUpstream {
            config,
            client,
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(false),
        })
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

impl HttpUpstream {
    /// Sends a request for `repository`; any answer but a success becomes the error a client gets (`not_found` for
    /// a 404).
    async fn request(
        &self,
        method: Method,
        repository: &str,
        path: &str,
        headers: HeaderMap,
        not_found: impl FnOnce() -> RegistryError,
    ) -> Result<Response, ProxyError> {
        let response = self
            .send(method, repository, path, headers)
            .await
            .map_err(upstream_error)?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.status_error(response.status(), response.headers(), not_found()))
    }

    /// Maps the upstream's non-success status to the error a client gets.
    fn status_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        not_found: RegistryError,
    ) -> ProxyError {
        let upstream = self.config.name.clone();
        match status {
            StatusCode::NOT_FOUND => not_found.into(),
            StatusCode::TOO_MANY_REQUESTS => ProxyError::TooManyRequests {
                upstream,
                retry_after: headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProxyError::Failed {
                upstream,
                why: format!("refused berth's credentials ({status})"),
            },
            status if status.is_server_error() => ProxyError::Unavailable {
                upstream,
                why: format!("answered {status}"),
            },
            status => ProxyError::Failed {
                upstream,
                why: format!("answered {status}"),
            },
        }
    }

    fn failed(&self, why: String) -> ProxyError {
        ProxyError::Failed {
            upstream: self.config.name.clone(),
            why,
        }
    }
}

/// The error a client gets; its message names the upstream and carries no URL (the cause was logged by `send`).
fn upstream_error(error: UpstreamError) -> ProxyError {
    match error {
        UpstreamError::Unreachable { upstream, source } => ProxyError::Unavailable {
            upstream,
            why: format!("unreachable ({})", describe(&source)),
        },
        UpstreamError::Token { upstream, why } => ProxyError::Failed {
            upstream,
            why: format!("token request failed: {why}"),
        },
        UpstreamError::Setup { upstream, why } => ProxyError::Failed { upstream, why },
    }
}

fn accept(accept: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(accept) {
        headers.insert(ACCEPT, value);
    }
    headers
}

#[async_trait]
impl Upstream for HttpUpstream {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn tag_ttl(&self) -> Duration {
        self.config.tag_ttl
    }

    async fn tag(
        &self,
        repository: &str,
        tag: &Tag,
        media_types: &str,
    ) -> Result<UpstreamTag, ProxyError> {
        let path = format!("manifests/{tag}");
        let not_found = || RegistryError::ManifestUnknown(tag.to_string());
        let response = match self
            .request(
                Method::HEAD,
                repository,
                &path,
                accept(media_types),
                not_found,
            )
            .await
        {
            Ok(response) => response,
            Err(ProxyError::Registry(e)) if matches!(*e, RegistryError::ManifestUnknown(_)) => {
                return Ok(UpstreamTag::Missing)
            }
            Err(e) => return Err(e),
        };
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        Ok(match digest.map(Digest::parse) {
            Some(Ok(digest)) => UpstreamTag::At(digest),
            _ => UpstreamTag::Unknown,
        })
    }

    async fn manifest(
        &self,
        repository: &str,
        reference: &Reference,
        media_types: &str,
    ) -> Result<UpstreamManifest, ProxyError> {
        let path = format!("manifests/{reference}");
        let response = self
            .request(Method::GET, repository, &path, accept(media_types), || {
                RegistryError::ManifestUnknown(format!("{repository}:{reference}"))
            })
            .await?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(self.failed(format!(
                "manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let bytes = read_limited(response, MAX_MANIFEST_BYTES as usize)
            .await
            .map_err(|why| self.failed(format!("manifest {reference}: {why}")))?;
        Ok(UpstreamManifest {
            content_type,
            bytes,
        })
    }

    async fn blob_size(&self, repository: &str, digest: &Digest) -> Result<u64, ProxyError> {
        let path = format!("blobs/{digest}");
        let response = self
            .request(Method::HEAD, repository, &path, HeaderMap::new(), || {
                RegistryError::BlobUnknown(digest.to_string())
            })
            .await?;
        // A HEAD response has no body, so the length must come from the header itself.
        header_content_length(response.headers())
            .ok_or_else(|| self.failed(format!("no Content-Length for blob {digest}")))
    }

    async fn blob(&self, repository: &str, digest: &Digest) -> Result<UpstreamBlob, ProxyError> {
        let path = format!("blobs/{digest}");
        let response = self
            .request(Method::GET, repository, &path, HeaderMap::new(), || {
                RegistryError::BlobUnknown(digest.to_string())
            })
            .await?;
        let size = response.content_length();
        let upstream = self.config.name.clone();
        let digest = digest.clone();
        let body = response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| {
                log::warn!(
                    "upstream {upstream}: blob {digest} broke off: {}",
                    cause_chain(&e)
                );
                ProxyError::Unavailable {
                    upstream: upstream.clone(),
                    why: format!("blob transfer broke off ({})", describe(&e)),
                }
            })
        });
        Ok(UpstreamBlob {
            size,
            body: Box::pin(body),
        })
    }

    async fn tags(&self, repository: &str, query: &str) -> Result<UpstreamTags, ProxyError> {
        let path = if query.is_empty() {
            "tags/list".to_owned()
        } else {
            format!("tags/list?{query}")
        };
        let response = self
            .request(Method::GET, repository, &path, HeaderMap::new(), || {
                RegistryError::NameUnknown(repository.to_owned())
            })
            .await?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let body = read_limited(response, MAX_SMALL_BODY)
            .await
            .map_err(|why| self.failed(format!("tags of {repository}: {why}")))?;
        Ok(UpstreamTags { content_type, body })
    }
}
