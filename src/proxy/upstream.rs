//! The seam between the cache policy and the network: what the proxy asks of an upstream registry, in the proxy's
//! own types. [`http`] answers it over HTTP (reqwest, token auth, challenges); the cache policy's tests answer it
//! from memory. No reqwest type crosses this module's boundary.

pub mod http;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use super::error::ProxyError;
use crate::registry::names::{Digest, Reference, Tag};

/// Manifest media types asked for when the client does not say.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What the upstream says a tag points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTag {
    Missing,
    At(Digest),
    /// It exists, but the answer carried no usable digest: a GET decides.
    Unknown,
}

/// A manifest as the upstream sent it (not yet verified or parsed).
#[derive(Debug, Clone)]
pub struct UpstreamManifest {
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

/// A blob's body as it arrives. An error ends it (the transfer broke off).
pub type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, ProxyError>> + Send>>;

/// A blob the upstream is sending.
pub struct UpstreamBlob {
    /// Its size, if the upstream announced one.
    pub size: Option<u64>,
    pub body: UpstreamBody,
}

/// A tag list as the upstream sent it, passed on as it is.
#[derive(Debug, Clone)]
pub struct UpstreamTags {
    pub content_type: String,
    pub body: Bytes,
}

/// One upstream registry. `repository` is always the upstream's name for it (`library/nginx`). An answer the
/// upstream does not have is the registry's not-found error for it (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`,
/// `NAME_UNKNOWN`); everything else that fails is an upstream error of [`ProxyError`].
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// The configured name (`docker.io`), which is also its prefix under `proxy/`.
    fn name(&self) -> &str;
    /// How long a manifest by tag is trusted without asking again.
    fn tag_ttl(&self) -> Duration;
    /// What the tag points at, asked cheaply (a HEAD); `accept` lists the manifest media types asked for.
    async fn tag(
        &self,
        repository: &str,
        tag: &Tag,
        accept: &str,
    ) -> Result<UpstreamTag, ProxyError>;
    /// A manifest by tag or digest.
    async fn manifest(
        &self,
        repository: &str,
        reference: &Reference,
        accept: &str,
    ) -> Result<UpstreamManifest, ProxyError>;
    /// A blob's size, without its content.
    async fn blob_size(&self, repository: &str, digest: &Digest) -> Result<u64, ProxyError>;
    /// A blob's content, streamed.
    async fn blob(&self, repository: &str, digest: &Digest) -> Result<UpstreamBlob, ProxyError>;
    /// The repository's tags; `query` is the client's query string (`n=…&last=…`), passed on.
    async fn tags(&self, repository: &str, query: &str) -> Result<UpstreamTags, ProxyError>;
}
