//! The proxy's errors and their mapping to HTTP. An upstream that cannot be reached, refuses berth or rate-limits
//! it has its own variants (named by the upstream's configured name, never its address); everything the registry
//! service reports (a storage failure, content the upstream does not have) is answered as the registry answers it.
//!
//! `ProxyError` is `Clone`: one failed upstream fetch is the answer of every client that waited on it.

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::registry::error::{ErrorCode, RegistryError};
use crate::registry::response::envelope_with;

pub type Result<T, E = ProxyError> = std::result::Result<T, E>;

/// Everything that can go wrong serving a proxied repository.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The upstream cannot be reached, failed, or broke off, and nothing is cached (503, `Retry-After: 5`).
    #[error("upstream {upstream}: {why}")]
    Unavailable { upstream: String, why: String },
    /// The upstream answered with something unusable: an error status, refused credentials, wrong content (502).
    #[error("upstream {upstream}: {why}")]
    Failed { upstream: String, why: String },
    /// The upstream rate-limits berth (429, its `Retry-After` passed on).
    #[error("upstream {upstream} is rate limiting; retry later")]
    TooManyRequests {
        upstream: String,
        retry_after: Option<String>,
    },
    /// What the registry answers: the cache's storage failed, or the upstream does not have what was asked for.
    #[error(transparent)]
    Registry(Arc<RegistryError>),
}

impl From<RegistryError> for ProxyError {
    fn from(error: RegistryError) -> Self {
        ProxyError::Registry(Arc::new(error))
    }
}

impl From<crate::registry::names::NameError> for ProxyError {
    fn from(error: crate::registry::names::NameError) -> Self {
        RegistryError::from(error).into()
    }
}

impl ProxyError {
    /// Whether a cached copy is served instead: the upstream is down or overloaded, not authoritative.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProxyError::Unavailable { .. }
                | ProxyError::Failed { .. }
                | ProxyError::TooManyRequests { .. }
        )
    }
}

impl ResponseError for ProxyError {
    fn status_code(&self) -> StatusCode {
        match self {
            ProxyError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Failed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Registry(error) => error.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (code, retry_after) = match self {
            ProxyError::Registry(error) => return error.error_response(),
            ProxyError::Unavailable { .. } => (ErrorCode::Unknown, Some("5")),
            ProxyError::Failed { .. } => (ErrorCode::Unknown, None),
            ProxyError::TooManyRequests { retry_after, .. } => (
                ErrorCode::Toomanyrequests,
                Some(retry_after.as_deref().unwrap_or("60")),
            ),
        };
        let status = self.status_code();
        // Upstream failures name the upstream and carry no address (the cause was logged where it happened).
        let message = self.to_string();
        if status.is_server_error() {
            log::error!("request failed: {message}");
        }
        let mut response = HttpResponse::build(status);
        if let Some(retry_after) = retry_after {
            response.insert_header((header::RETRY_AFTER, retry_after));
        }
        envelope_with(response, code, &message, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn check(error: ProxyError, status: u16, code: &str, retry_after: Option<&str>) {
        let response = error.error_response();
        assert_eq!(response.status().as_u16(), status, "{error}");
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            retry_after,
            "{error}"
        );
        let body = response.into_body().try_into_bytes().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(json["errors"][0]["code"], code, "{error}");
        assert_eq!(json["errors"][0]["message"], error.to_string(), "{error}");
    }

    #[test]
    fn each_proxy_error_maps_to_its_status_code_and_retry_after() {
        let upstream = || "up".to_owned();
        check(
            ProxyError::Unavailable {
                upstream: upstream(),
                why: "unreachable (connection failed)".into(),
            },
            503,
            "UNKNOWN",
            Some("5"),
        );
        check(
            ProxyError::Failed {
                upstream: upstream(),
                why: "answered 400 Bad Request".into(),
            },
            502,
            "UNKNOWN",
            None,
        );
        check(
            ProxyError::TooManyRequests {
                upstream: upstream(),
                retry_after: Some("7".into()),
            },
            429,
            "TOOMANYREQUESTS",
            Some("7"),
        );
        check(
            ProxyError::TooManyRequests {
                upstream: upstream(),
                retry_after: None,
            },
            429,
            "TOOMANYREQUESTS",
            Some("60"),
        );
        check(
            RegistryError::BlobUnknown("sha256:x".into()).into(),
            404,
            "BLOB_UNKNOWN",
            None,
        );
    }
}
