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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::fake::{manifest, Harness};
    use crate::registry::names::{Digest, Reference, Tag};

    /// The proxy's series in the metrics text, sorted (a family's series come in no fixed order).
    fn proxy_lines(h: &Harness) -> std::collections::BTreeSet<String> {
        let text = h
            .metrics
            .render(&crate::events::metrics::Scrape::default(), false)
            .expect("encode");
        text.lines()
            .filter(|l| l.starts_with("berth_proxy_") && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn misses_hits_errors_and_upstream_bytes_are_counted() {
        let h = Harness::new(None);
        let target = h.target("team/app");
        let content = Bytes::from(vec![7u8; 1000]);
        let digest = Digest::sha256_of(&content);
        h.upstream.set_blob(&digest, content.clone());
        let body = manifest(1);
        h.upstream.set_tag("1.0", body.clone());
        let tag = Reference::Tag(Tag::parse("1.0").expect("tag"));

        assert_eq!(h.pull(&target, &digest).await, content.to_vec());
        h.fetches_ended().await;
        assert_eq!(h.pull(&target, &digest).await, content.to_vec());
        h.proxy.manifest(&target, &tag).await.expect("fetched");
        h.proxy
            .manifest(&target, &tag)
            .await
            .expect("cached, fresh");
        // Not there upstream: an answer, not an error.
        let missing = Digest::sha256_of(b"missing");
        assert!(h.proxy.blob(&target, &missing).await.is_err());
        h.upstream
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let other = Digest::sha256_of(b"other");
        assert!(h.proxy.blob(&target, &other).await.is_err());

        let bytes = content.len() + body.len();
        assert_eq!(
            proxy_lines(&h),
            std::collections::BTreeSet::from([
                r#"berth_proxy_requests_total{upstream="up",result="miss"} 2"#.to_owned(),
                r#"berth_proxy_requests_total{upstream="up",result="hit"} 2"#.to_owned(),
                r#"berth_proxy_requests_total{upstream="up",result="error"} 1"#.to_owned(),
                format!(r#"berth_proxy_upstream_bytes_total{{upstream="up"}} {bytes}"#),
            ])
        );
    }
}
