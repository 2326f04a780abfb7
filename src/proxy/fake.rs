//! For the cache policy's tests: an [`Upstream`] answered from memory (it counts what it is asked, can be taken
//! down, and can hold a blob's last byte until it is released), and a proxy over it caching into a registry on a
//! temporary directory, with a [`ManualClock`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::locked::lock;
use super::upstream::{Upstream, UpstreamBlob, UpstreamManifest, UpstreamTag, UpstreamTags};
use super::{Proxy, ProxyError, ProxyTarget};
use crate::clock::ManualClock;
use crate::registry::error::RegistryError;
use crate::registry::manifest::OCI_MANIFEST;
use crate::registry::names::{Digest, Reference, RepoName, Tag};
use crate::registry::storage::fs::FsStorage;
use crate::registry::storage::{ByteStream, Storage};
use crate::registry::Registry;

pub const TAG_TTL: Duration = Duration::from_secs(300);

/// What the fake upstream was asked, by kind.
#[derive(Default)]
pub struct Asked {
    pub tag_heads: AtomicUsize,
    pub manifest_gets: AtomicUsize,
    pub blob_gets: AtomicUsize,
}

impl Asked {
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
pub struct FakeUpstream {
    /// Its name; `up` when empty.
    name: String,
    /// tag → manifest bytes.
    tags: Mutex<HashMap<String, Bytes>>,
    /// digest → content served for it (which may be wrong, on purpose).
    blobs: Mutex<HashMap<Digest, Bytes>>,
    /// While set, every request fails as an unreachable upstream would.
    pub down: AtomicBool,
    /// When set, a blob's last byte is sent only once this semaphore has a permit.
    pub hold_last_byte: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    pub asked: Asked,
}

impl FakeUpstream {
    pub fn named(name: &str) -> FakeUpstream {
        FakeUpstream {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    pub fn set_tag(&self, tag: &str, manifest: Bytes) {
        lock(&self.tags).insert(tag.to_owned(), manifest);
    }

    pub fn remove_tag(&self, tag: &str) {
        lock(&self.tags).remove(tag);
    }

    /// Serves `content` for `digest` (wrong content if it does not hash to it).
    pub fn set_blob(&self, digest: &Digest, content: Bytes) {
        lock(&self.blobs).insert(digest.clone(), content);
    }

    fn check_up(&self) -> Result<(), ProxyError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ProxyError::Unavailable {
                upstream: self.name().to_owned(),
                why: "unreachable (connection failed)".into(),
            });
        }
        Ok(())
    }

    fn manifest_for(&self, reference: &Reference) -> Option<Bytes> {
        let tags = lock(&self.tags);
        match reference {
            Reference::Tag(tag) => tags.get(tag.as_str()).cloned(),
            Reference::Digest(digest) => tags
                .values()
                .find(|bytes| &Digest::sha256_of(bytes) == digest)
                .cloned(),
        }
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    fn name(&self) -> &str {
        if self.name.is_empty() {
            "up"
        } else {
            &self.name
        }
    }

    fn tag_ttl(&self) -> Duration {
        TAG_TTL
    }

    async fn tag(&self, _: &str, tag: &Tag, _: &str) -> Result<UpstreamTag, ProxyError> {
        self.asked.tag_heads.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        Ok(match lock(&self.tags).get(tag.as_str()) {
            Some(bytes) => UpstreamTag::At(Digest::sha256_of(bytes)),
            None => UpstreamTag::Missing,
        })
    }

    async fn manifest(
        &self,
        repository: &str,
        reference: &Reference,
        _: &str,
    ) -> Result<UpstreamManifest, ProxyError> {
        self.asked.manifest_gets.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let bytes = self
            .manifest_for(reference)
            .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repository}:{reference}")))?;
        Ok(UpstreamManifest {
            content_type: Some(OCI_MANIFEST.to_owned()),
            bytes,
        })
    }

    async fn blob_size(&self, _: &str, digest: &Digest) -> Result<u64, ProxyError> {
        self.check_up()?;
        lock(&self.blobs)
            .get(digest)
            .map(|content| content.len() as u64)
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()).into())
    }

    async fn blob(&self, _: &str, digest: &Digest) -> Result<UpstreamBlob, ProxyError> {
        self.asked.blob_gets.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let content = lock(&self.blobs)
            .get(digest)
            .cloned()
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))?;
        let size = content.len() as u64;
        let split = content.len().saturating_sub(1);
        let (head, last) = (content.slice(..split), content.slice(split..));
        let hold = lock(&self.hold_last_byte).clone();
        let body = futures_util::stream::iter([Ok(head)])
            .chain(futures_util::stream::once(async move {
                if let Some(hold) = hold {
                    // Closed only when the test is over; a closed semaphore sends the byte too.
                    let _ = hold.acquire().await;
                }
                Ok(last)
            }))
            .filter(|chunk: &Result<Bytes, ProxyError>| {
                std::future::ready(chunk.as_ref().map_or(true, |bytes| !bytes.is_empty()))
            });
        Ok(UpstreamBlob {
            size: Some(size),
            body: Box::pin(body),
        })
    }

    async fn tags(&self, _: &str, _: &str) -> Result<UpstreamTags, ProxyError> {
        self.check_up()?;
        let tags: Vec<String> = lock(&self.tags).keys().cloned().collect();
        Ok(UpstreamTags {
            content_type: "application/json".into(),
            body: Bytes::from(serde_json::json!({ "tags": tags }).to_string()),
        })
    }
}

/// A proxy of one fake upstream `up`, caching into a registry on a temporary directory.
pub struct Harness {
    _dir: tempfile::TempDir,
    /// The registry's storage, for looking behind it (uploads left over).
    pub storage: Arc<dyn Storage>,
    pub registry: Arc<Registry>,
    pub upstream: Arc<FakeUpstream>,
    pub clock: Arc<ManualClock>,
    pub proxy: Arc<Proxy>,
    /// What the proxy counts.
    pub metrics: Arc<crate::events::Metrics>,
}

impl Harness {
    pub fn new(max_size: Option<u64>) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage: Arc<dyn Storage> =
            Arc::new(FsStorage::open(dir.path()).expect("open storage"));
        let registry = Arc::new(Registry::new(storage.clone()));
        let upstream = Arc::new(FakeUpstream::default());
        let clock = ManualClock::new();
        let metrics = Arc::new(crate::events::Metrics::new());
        let proxy = Arc::new(Proxy::observed(
            vec![upstream.clone()],
            max_size,
            registry.clone(),
            clock.clone(),
            metrics.clone(),
            crate::events::EventLog::off(),
        ));
        Harness {
            _dir: dir,
            storage,
            registry,
            upstream,
            clock,
            proxy,
            metrics,
        }
    }

    /// `proxy/up/<repo>`.
    pub fn target(&self, repo: &str) -> ProxyTarget {
        let name = RepoName::parse(&format!("proxy/up/{repo}")).expect("repository name");
        self.proxy
            .resolve(&name, None)
            .expect("a proxied repository")
    }

    /// Waits (yielding, with a deadline) until no blob fetch is in progress. On the tests' single-threaded
    /// runtime, a fetch that is forgotten has also been counted for eviction.
    pub async fn fetches_ended(&self) {
        self.until("the blob fetches to end", || self.proxy.fetcher.idle())
            .await;
    }

    /// Waits (yielding, with a deadline) until `done` holds.
    pub async fn until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Pulls a blob through the proxy to its end.
    pub async fn pull(&self, target: &ProxyTarget, digest: &Digest) -> Vec<u8> {
        let (_, stream) = self.proxy.blob(target, digest).await.expect("pull");
        let (bytes, error) = drain(stream).await;
        assert!(error.is_none(), "pull of {digest} failed: {error:?}");
        bytes
    }
}

/// An image manifest, different for each `seed`.
pub fn manifest(seed: u64) -> Bytes {
    let config = Digest::sha256_of(b"config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.to_string(), "size": 6},
        "layers": [],
        "annotations": {"seed": seed.to_string()},
    });
    Bytes::from(serde_json::to_vec(&manifest).expect("json"))
}

/// Everything a stream yields until it ends or fails: the bytes, and the error if it failed.
pub async fn drain(mut stream: ByteStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(e) => return (bytes, Some(e)),
        }
    }
    (bytes, None)
}
