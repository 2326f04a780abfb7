//! The registry's errors as a domain enum, and the OCI error codes they are reported with.
//!
//! Every handler returns `Result<HttpResponse, RegistryError>`. What a client sees for a failure (status,
//! headers, the JSON envelope) is decided in [`super::response`], on the HTTP side; this module knows nothing of
//! HTTP and must not import actix-web.

use serde::Serialize;

use super::names::NameError;
use super::storage::StorageError;

/// The error codes of the OCI distribution-spec, serialised as the spec writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unsupported,
    /// The spec's code for rate limiting (passed on from an upstream registry).
    Toomanyrequests,
    /// Authentication required (the response carries a `WWW-Authenticate` challenge).
    Unauthorized,
    /// The spec's code for an operation the registry refuses to this client (403): not allowed, or refused by a
    /// rule such as an immutable tag.
    Denied,
    /// Not in the spec's table; distribution's code for a bad `n`, which clients know.
    PaginationNumberInvalid,
    /// Not in the spec's table; distribution's code for a registry that cannot answer now (503): the client
    /// retries.
    Unavailable,
    Unknown,
}

impl ErrorCode {
    /// The code as the spec writes it (`DIGEST_INVALID`): its serialised form, so the two never differ.
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => name,
            _ => format!("{self:?}"),
        }
    }
}

/// Everything that can go wrong answering a registry request.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The blob is not in the repository (or not at all).
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    /// The upload cannot be completed as asked.
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// No such upload session (never existed, finished, cancelled or expired).
    #[error("blob upload unknown to registry: {0}")]
    BlobUploadUnknown(String),
    /// A `Content-Range` on an upload chunk that is not `<first>-<last>` of one chunk; `received` bytes are stored.
    #[error("invalid Content-Range {header:?} for upload {upload}: {why}")]
    ContentRangeInvalid {
        header: String,
        why: String,
        upload: String,
        location: String,
        received: u64,
    },
    /// A chunk that does not start where the upload ends; `received` bytes are stored.
    #[error("chunk out of order: upload {upload} holds {received} bytes, chunk starts at {start}")]
    ChunkOutOfOrder {
        upload: String,
        location: String,
        received: u64,
        start: u64,
    },
    /// A malformed digest, or content that does not hash to the digest given.
    #[error("{0}")]
    DigestInvalid(String),
    /// A manifest references a blob or child manifest that is not in the repository.
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(String),
    /// A manifest that cannot be accepted.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// A reference that is neither a tag nor a digest.
    #[error("invalid manifest reference {0:?}: neither a tag nor a digest")]
    ManifestInvalidReference(String),
    /// A `?tag=` value outside the tag grammar.
    #[error("invalid tag {0:?} in ?tag=: a tag is 1 to 128 of [A-Za-z0-9_.-] and does not start with . or -")]
    TagInvalid(String),
    /// More `?tag=` parameters than one push may carry.
    #[error("{count} tags in one push; at most {limit} are accepted")]
    TooManyTags { count: usize, limit: usize },
    /// The manifest is not in the repository.
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// A repository name outside the spec's grammar.
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    /// A repository with no content.
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    /// A declared length that does not match the content.
    #[error("{0}")]
    SizeInvalid(String),
    /// A manifest larger than berth accepts.
    #[error("manifest of {size} bytes is larger than the limit of {limit} bytes")]
    ManifestTooLarge { size: u64, limit: u64 },
    /// A `Range` request header that cannot be served.
    #[error("range {range:?} cannot be satisfied for a blob of {size} bytes")]
    RangeNotSatisfiable { range: String, size: u64 },
    /// A query parameter that is not understood.
    #[error("{0}")]
    BadRequest(String),
    /// A page size that is not a non-negative integer.
    #[error("{0}")]
    PaginationNumberInvalid(String),
    /// An operation berth does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// The route does not exist.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The method is not allowed on the route.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// The client went away or sent a broken body.
    #[error("request body could not be read: {0}")]
    Body(String),
    /// berth is at one of its limits (upload sessions, concurrent uploads, memory for request bodies); the client
    /// may retry after `retry_after` seconds.
    #[error("{why}")]
    Busy { why: String, retry_after: u32 },
    /// The client paused too long while sending a body berth has to wait for.
    #[error("{0}")]
    BodyTimeout(String),
    /// The request needs credentials berth accepts: none were given, they are invalid, or they do not cover what
    /// the request does. `challenge` is the `WWW-Authenticate` value telling the client where to get a token.
    #[error("{message}")]
    Unauthorized { challenge: String, message: String },
    /// The identity is known and the request is refused: the message names the identity, the action, the
    /// repository and what decided.
    #[error("{0}")]
    Denied(String),
    /// A change that an immutable tag forbids: moving the tag to another manifest, deleting it, or deleting the
    /// manifest it points at. `what` says which was refused; `rule` is the policy's `immutableTags` rule.
    #[error("{what}: tag {repository}:{tag} is immutable (rule {rule:?}) and points at {digest}")]
    TagImmutable {
        what: &'static str,
        repository: String,
        tag: String,
        rule: String,
        digest: String,
    },
    /// The event log did not store the event of a push, delete, tag move or mount, so the operation is not
    /// acknowledged (503): its content is stored, and the client retries.
    #[error("the event log did not store the event: {0}")]
    EventNotStored(String),
    /// A storage failure: the client did nothing wrong.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// The OCI error code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        use RegistryError::*;
        match self {
            BlobUnknown(_) => ErrorCode::BlobUnknown,
            BlobUploadInvalid(_)
            | ChunkOutOfOrder { .. }
            | ContentRangeInvalid { .. }
            | Body(_) => ErrorCode::BlobUploadInvalid,
            BlobUploadUnknown(_) => ErrorCode::BlobUploadUnknown,
            DigestInvalid(_) => ErrorCode::DigestInvalid,
            ManifestBlobUnknown(_) => ErrorCode::ManifestBlobUnknown,
            ManifestInvalid(_) | ManifestInvalidReference(_) | TagInvalid(_) => {
                ErrorCode::ManifestInvalid
            }
            ManifestUnknown(_) => ErrorCode::ManifestUnknown,
            NameInvalid(_) => ErrorCode::NameInvalid,
            NameUnknown(_) => ErrorCode::NameUnknown,
            SizeInvalid(_) | ManifestTooLarge { .. } => ErrorCode::SizeInvalid,
            RangeNotSatisfiable { .. } | BadRequest(_) | NotFound(_) | MethodNotAllowed(_) => {
                ErrorCode::Unsupported
            }
            Unsupported(_) | TooManyTags { .. } => ErrorCode::Unsupported,
            PaginationNumberInvalid(_) => ErrorCode::PaginationNumberInvalid,
            Storage(_) => ErrorCode::Unknown,
            EventNotStored(_) => ErrorCode::Unavailable,
            Busy { .. } => ErrorCode::Toomanyrequests,
            Unauthorized { .. } => ErrorCode::Unauthorized,
            Denied(_) => ErrorCode::Denied,
            TagImmutable { .. } => ErrorCode::Denied,
            BodyTimeout(_) => ErrorCode::BlobUploadInvalid,
        }
    }

    /// On reads, a reference that is neither a tag nor a digest names nothing that could exist: it is not found
    /// (404 `MANIFEST_UNKNOWN`, as the conformance suite expects), where a push of it is invalid. A malformed
    /// digest stays `DIGEST_INVALID`. Takes a [`NameError`] or a `RegistryError`, so it serves as
    /// `Reference::parse(r).map_err(RegistryError::unknown_if_invalid_reference)`.
    pub fn unknown_if_invalid_reference(error: impl Into<RegistryError>) -> Self {
        match error.into() {
            RegistryError::ManifestInvalidReference(reference) => {
                RegistryError::ManifestUnknown(reference)
            }
            other => other,
        }
    }
}

/// A bad name is a client mistake reported with the spec's code for what was named (as before the name types had
/// their own error).
impl From<NameError> for RegistryError {
    fn from(error: NameError) -> Self {
        match error {
            NameError::Repository(name) => RegistryError::NameInvalid(name),
            NameError::Digest { .. } => RegistryError::DigestInvalid(error.to_string()),
            NameError::Reference(reference) => RegistryError::ManifestInvalidReference(reference),
        }
    }
}
