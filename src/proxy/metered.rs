//! An [`Upstream`] that counts what it asks of the one it wraps, for the metrics: a manifest or blob fetched is a
//! cache miss, an upstream that failed an error (an answer that the content does not exist is the upstream's
//! answer, not its failure), and the bytes of what it sent. Hits are counted where the cache answers
//! (`manifests`, `fetch`). Must not: change what the wrapped upstream answers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::error::ProxyError;
use super::upstream::{Upstream, UpstreamBlob, UpstreamManifest, UpstreamTag, UpstreamTags};
use crate::events::metrics::ProxyResult;
use crate::events::Metrics;
use crate::registry::names::{Digest, Reference, Tag};

pub struct Metered {
    inner: Arc<dyn Upstream>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn Upstream>, metrics: Arc<Metrics>) -> Arc<dyn Upstream> {
        Arc::new(Metered { inner, metrics })
    }

    /// Counts a failure of the upstream; a not-found answer is not one.
    fn failed<T>(&self, result: Result<T, ProxyError>) -> Result<T, ProxyError> {
        if let Err(error) = &result {
            if !matches!(error, ProxyError::Registry(_)) {
                self.metrics
                    .proxy_request(self.inner.name(), ProxyResult::Error);
            }
        }
        result
    }
}

#[async_trait]
impl Upstream for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn tag_ttl(&self) -> Duration {
        self.inner.tag_ttl()
    }

    async fn tag(
        &self,
        repository: &str,
        tag: &Tag,
        accept: &str,
    ) -> Result<UpstreamTag, ProxyError> {
        self.failed(self.inner.tag(repository, tag, accept).await)
    }

    async fn manifest(
        &self,
        repository: &str,
        reference: &Reference,
        accept: &str,
    ) -> Result<UpstreamManifest, ProxyError> {
        let fetched = self.failed(self.inner.manifest(repository, reference, accept).await)?;
        let name = self.inner.name();
        self.metrics.proxy_request(name, ProxyResult::Miss);
        self.metrics
            .upstream_bytes(name)
            .inc_by(fetched.bytes.len() as u64);
        Ok(fetched)
    }

    async fn blob_size(&self, repository: &str, digest: &Digest) -> Result<u64, ProxyError> {
        self.failed(self.inner.blob_size(repository, digest).await)
    }

    async fn blob(&self, repository: &str, digest: &Digest) -> Result<UpstreamBlob, ProxyError> {
        let blob = self.failed(self.inner.blob(repository, digest).await)?;
        let name = self.inner.name();
        self.metrics.proxy_request(name, ProxyResult::Miss);
        let bytes = self.metrics.upstream_bytes(name);
        let body = blob.body.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                bytes.inc_by(chunk.len() as u64);
            }
        });
        Ok(UpstreamBlob {
            size: blob.size,
            body: Box::pin(body),
        })
    }

    async fn tags(&self, repository: &str, query: &str) -> Result<UpstreamTags, ProxyError> {
        self.failed(self.inner.tags(repository, query).await)
    }
}
