//! The one mapping of registry errors to HTTP: status, headers and the OCI JSON error envelope.
//!
//! This module is the only place that decides what a client sees for a failure. Client mistakes are 4xx with the
//! distribution-spec code; storage failures are a 500 whose cause is logged here and not shown to the client.
//! [`envelope`] is the one writer of the OCI error body, for every part of berth that answers a registry client
//! (the registry, the proxy, the node proxy). Must not know about storage or the proxy's internals.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use serde::Serialize;

use super::error::{ErrorCode, RegistryError};

#[derive(Serialize)]
struct Envelope<'a> {
    errors: [ErrorBody<'a>; 1],
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

/// The OCI error response: `status` with the body `{"errors":[{"code","message","detail"}]}` (`detail` left out
/// when `None`).
pub fn envelope(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    detail: Option<serde_json::Value>,
) -> HttpResponse {
    envelope_with(HttpResponse::build(status), code, message, detail)
}

/// [`envelope`] on a response that already carries its status and headers (`Location`, `Retry-After`, …).
pub fn envelope_with(
    mut response: HttpResponseBuilder,
    code: ErrorCode,
    message: &str,
    detail: Option<serde_json::Value>,
) -> HttpResponse {
    response.json(Envelope {
        errors: [ErrorBody {
            code,
            message,
            detail,
        }],
    })
}

impl ResponseError for RegistryError {
    fn status_code(&self) -> StatusCode {
        use RegistryError::*;
        match self {
            BlobUnknown(_) | BlobUploadUnknown(_) | ManifestUnknown(_) | NameUnknown(_)
            | NotFound(_) => StatusCode::NOT_FOUND,
            ChunkOutOfOrder { .. } | ContentRangeInvalid { .. } | RangeNotSatisfiable { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            TooManyTags { .. } => StatusCode::URI_TOO_LONG,
            ManifestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EventNotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Denied(_) => StatusCode::FORBIDDEN,
            Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            TagImmutable { .. } => StatusCode::FORBIDDEN,
            BlobUploadInvalid(_)
            | DigestInvalid(_)
            | ManifestBlobUnknown(_)
            | ManifestInvalid(_)
            | ManifestInvalidReference(_)
            | TagInvalid(_)
            | NameInvalid(_)
            | SizeInvalid(_)
            | BadRequest(_)
            | PaginationNumberInvalid(_)
            | Body(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            log::error!("request failed: {self}");
        }
        let mut response = HttpResponse::build(status);
        match self {
            RegistryError::ChunkOutOfOrder {
                location, received, ..
            }
            | RegistryError::ContentRangeInvalid {
                location, received, ..
            } => {
                response.insert_header((header::LOCATION, location.as_str()));
                response.insert_header((header::RANGE, upload_range(*received)));
            }
            RegistryError::RangeNotSatisfiable { size, .. } => {
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            RegistryError::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, *allow));
            }
            RegistryError::Unauthorized { challenge, .. } => {
                response.insert_header((header::WWW_AUTHENTICATE, challenge.as_str()));
            }
            RegistryError::Busy { retry_after, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            RegistryError::EventNotStored(_) => {
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            _ => {}
        }
        envelope_with(response, self.code(), &self.client_message(), None)
    }
}

impl RegistryError {
    /// The message a client is shown for this error (and the event log records): the error itself, but for a
    /// storage failure, whose cause (paths) stays in the log.
    pub fn client_message(&self) -> std::borrow::Cow<'_, str> {
        if matches!(self, RegistryError::Storage(_)) {
            "internal error; see the registry's log".into()
        } else {
            self.to_string().into()
        }
    }
}

/// The `Range` header value for an upload holding `received` bytes: `0-<last byte>`, or `0-0` when empty
/// (the form docker and the conformance suite expect).
pub fn upload_range(received: u64) -> String {
    format!("0-{}", received.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::names::NameError;
    use crate::registry::storage::StorageError;
    use actix_web::body::MessageBody;

    fn check(error: RegistryError, status: u16, code: &str) {
        let response = error.error_response();
        assert_eq!(response.status().as_u16(), status, "{error}");
        let body = response.into_body().try_into_bytes().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(json["errors"][0]["code"], code, "{error}");
        assert!(json["errors"][0]["message"].is_string(), "{error}");
    }

    #[test]
    fn each_error_maps_to_its_status_and_code() {
        check(RegistryError::BlobUnknown("d".into()), 404, "BLOB_UNKNOWN");
        check(
            RegistryError::TagImmutable {
                what: "the tag cannot be deleted",
                repository: "team/app".into(),
                tag: "v1".into(),
                rule: "releases".into(),
                digest: "sha256:0".into(),
            },
            403,
            "DENIED",
        );
        check(
            RegistryError::BlobUploadInvalid("x".into()),
            400,
            "BLOB_UPLOAD_INVALID",
        );
        check(
            RegistryError::BlobUploadUnknown("u".into()),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        );
        check(
            RegistryError::ChunkOutOfOrder {
                upload: "u".into(),
                location: "/l".into(),
                received: 10,
                start: 20,
            },
            416,
            "BLOB_UPLOAD_INVALID",
        );
        check(
            RegistryError::ContentRangeInvalid {
                header: "+0-+0".into(),
                why: "x".into(),
                upload: "u".into(),
                location: "/l".into(),
                received: 0,
            },
            416,
            "BLOB_UPLOAD_INVALID",
        );
        check(
            RegistryError::DigestInvalid("x".into()),
            400,
            "DIGEST_INVALID",
        );
        check(
            RegistryError::EventNotStored("event store: disk full".into()),
            503,
            "UNAVAILABLE",
        );
        check(
            RegistryError::TagInvalid(".x".into()),
            400,
            "MANIFEST_INVALID",
        );
        check(
            RegistryError::TooManyTags {
                count: 101,
                limit: 100,
            },
            414,
            "UNSUPPORTED",
        );
        check(
            RegistryError::ManifestBlobUnknown("d".into()),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        );
        check(
            RegistryError::ManifestInvalid("x".into()),
            400,
            "MANIFEST_INVALID",
        );
        check(
            RegistryError::ManifestInvalidReference("x".into()),
            400,
            "MANIFEST_INVALID",
        );
        check(
            RegistryError::ManifestUnknown("x".into()),
            404,
            "MANIFEST_UNKNOWN",
        );
        check(RegistryError::NameInvalid("X".into()), 400, "NAME_INVALID");
        check(RegistryError::NameUnknown("x".into()), 404, "NAME_UNKNOWN");
        check(RegistryError::SizeInvalid("x".into()), 400, "SIZE_INVALID");
        check(
            RegistryError::ManifestTooLarge { size: 5, limit: 4 },
            413,
            "SIZE_INVALID",
        );
        check(
            RegistryError::RangeNotSatisfiable {
                range: "x".into(),
                size: 1,
            },
            416,
            "UNSUPPORTED",
        );
        check(RegistryError::Unsupported("x".into()), 405, "UNSUPPORTED");
        check(RegistryError::Denied("x".into()), 403, "DENIED");
        let unauthorized = RegistryError::Unauthorized {
            challenge: r#"Bearer realm="https://r/auth/token",service="berth""#.into(),
            message: "x".into(),
        };
        assert_eq!(
            unauthorized
                .error_response()
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok()),
            Some(r#"Bearer realm="https://r/auth/token",service="berth""#)
        );
        check(unauthorized, 401, "UNAUTHORIZED");
        check(
            RegistryError::Busy {
                why: "x".into(),
                retry_after: 5,
            },
            429,
            "TOOMANYREQUESTS",
        );
        check(
            RegistryError::BodyTimeout("x".into()),
            408,
            "BLOB_UPLOAD_INVALID",
        );
        check(
            RegistryError::Storage(StorageError::Corrupt("x".into())),
            500,
            "UNKNOWN",
        );
    }

    #[test]
    fn an_invalid_reference_is_unknown_on_reads() {
        check(
            RegistryError::unknown_if_invalid_reference(RegistryError::ManifestInvalidReference(
                ".x".into(),
            )),
            404,
            "MANIFEST_UNKNOWN",
        );
        check(
            RegistryError::unknown_if_invalid_reference(RegistryError::DigestInvalid(
                "sha256:x".into(),
            )),
            400,
            "DIGEST_INVALID",
        );
    }

    #[test]
    fn name_errors_keep_their_codes() {
        use crate::registry::names::{Digest, Reference, RepoName};
        let reference = |r: &str| Reference::parse(r).map(|_| ()).map_err(RegistryError::from);
        check(
            RepoName::parse("A")
                .map(|_| ())
                .map_err(RegistryError::from)
                .unwrap_err(),
            400,
            "NAME_INVALID",
        );
        check(
            Digest::parse("sha256:x")
                .map(|_| ())
                .map_err(RegistryError::from)
                .unwrap_err(),
            400,
            "DIGEST_INVALID",
        );
        check(reference("sha256:x").unwrap_err(), 400, "DIGEST_INVALID");
        check(reference("-x").unwrap_err(), 400, "MANIFEST_INVALID");
        check(
            Reference::parse("-x")
                .map_err(RegistryError::unknown_if_invalid_reference)
                .unwrap_err(),
            404,
            "MANIFEST_UNKNOWN",
        );
        check(
            Reference::parse("sha256:x")
                .map_err(RegistryError::unknown_if_invalid_reference)
                .unwrap_err(),
            400,
            "DIGEST_INVALID",
        );
        // The message is the name error's, naming the input.
        assert_eq!(
            RegistryError::from(NameError::Repository("A".into())).to_string(),
            r#"invalid repository name "A""#
        );
    }

    #[test]
    fn chunk_out_of_order_reports_what_was_received() {
        let response = RegistryError::ChunkOutOfOrder {
            upload: "u".into(),
            location: "/v2/a/blobs/uploads/u".into(),
            received: 10,
            start: 20,
        }
        .error_response();
        assert_eq!(
            response
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok()),
            Some("0-9")
        );
        assert_eq!(
            response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("/v2/a/blobs/uploads/u")
        );
    }

    #[test]
    fn busy_says_when_to_retry() {
        let response = RegistryError::Busy {
            why: "x".into(),
            retry_after: 7,
        }
        .error_response();
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("7")
        );
    }

    #[test]
    fn the_envelope_has_one_error_and_detail_only_when_given() {
        let body = |response: HttpResponse| {
            let bytes = response.into_body().try_into_bytes().unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default()
        };
        let response = envelope(StatusCode::IM_A_TEAPOT, ErrorCode::Unsupported, "m", None);
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(
            body(response),
            serde_json::json!({"errors": [{"code": "UNSUPPORTED", "message": "m"}]})
        );
        let detail = serde_json::json!({"upstream": "docker.io"});
        let response = envelope(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unknown,
            "m",
            Some(detail.clone()),
        );
        assert_eq!(
            body(response),
            serde_json::json!({"errors": [{"code": "UNKNOWN", "message": "m", "detail": detail}]})
        );
    }

    #[test]
    fn server_errors_do_not_leak_causes() {
        let response =
            RegistryError::Storage(StorageError::Corrupt("/secret/path".into())).error_response();
        let body = response.into_body().try_into_bytes().unwrap_or_default();
        assert!(!String::from_utf8_lossy(&body).contains("/secret/path"));
    }
}
