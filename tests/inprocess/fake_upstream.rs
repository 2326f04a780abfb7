//! An upstream registry in memory, for the in-process tests of the cache: it answers berth's public
//! [`Upstream`] trait (what the proxy asks of any upstream) from what a test stores in it, counts what it is asked
//! by kind, and does on demand what real upstreams do on a bad day: go down, move a tag, hold a blob's last byte
//! until the test releases it, send wrong bytes for a digest, or break a blob off before its end. It keeps no
//! cache policy of its own and never touches berth's state.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use berth::proxy::upstream::{Upstream, UpstreamBlob, UpstreamManifest, UpstreamTag, UpstreamTags};
use berth::proxy::ProxyError;
use berth::registry::error::RegistryError;
use berth::registry::names::{Digest, Reference, Tag};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// How many requests of each kind the fake has been asked (a snapshot, refused ones included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// `HEAD` of a manifest by tag (revalidation).
    pub tag_heads: usize,
    /// `GET` of a manifest, by tag or digest.
    pub manifest_gets: usize,
    /// `HEAD` of a blob.
    pub blob_heads: usize,
    /// `GET` of a blob.
    pub blob_gets: usize,
    /// `GET` of a tag list.
    pub tag_lists: usize,
}

#[derive(Default)]
struct Counters {
    tag_heads: AtomicUsize,
    manifest_gets: AtomicUsize,
    blob_heads: AtomicUsize,
    blob_gets: AtomicUsize,
    tag_lists: AtomicUsize,
}

/// What the fake does to a blob's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlobFault {
    /// Sends it whole.
    #[default]
    None,
    /// Sends all but the last byte, then fails as a broken transfer does.
    CutOff,
}

#[derive(Default)]
struct Content {
    /// (repository, tag) → manifest digest.
    tags: HashMap<(String, String), Digest>,
    /// Every manifest ever stored, by digest (a moved tag's old manifest stays pullable by digest).
    manifests: HashMap<Digest, Bytes>,
    /// digest → the bytes sent for it (wrong ones, if a test says so).
    blobs: HashMap<Digest, Bytes>,
    /// How many times each blob was fetched.
    blob_gets: HashMap<Digest, usize>,
}

/// An upstream registry in memory. Share it as `Arc<FakeUpstream>`: the proxy holds one clone, the test another.
pub struct FakeUpstream {
    name: String,
    tag_ttl: Duration,
    content: Mutex<Content>,
    counters: Counters,
    down: AtomicBool,
    fault: Mutex<BlobFault>,
    /// While set, a blob's last byte (or a cut-off blob's error) waits until the semaphore is closed.
    hold: Mutex<Option<Arc<Semaphore>>>,
}

/// Blobs held back by [`FakeUpstream::hold_blobs`]; [`Held::release`] lets them finish.
pub struct Held(Arc<Semaphore>);

impl Held {
    /// Sends the last bytes of every held blob, and of every blob asked for later.
    pub fn release(&self) {
        self.0.close();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A test that fails before releasing must not leave a fetch waiting forever.
        self.0.close();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeUpstream {
    /// An empty upstream called `name` (its prefix under `proxy/`) whose tags are trusted for `tag_ttl`.
    pub fn new(name: &str, tag_ttl: Duration) -> Arc<FakeUpstream> {
        Arc::new(FakeUpstream {
            name: name.to_owned(),
            tag_ttl,
            content: Mutex::default(),
            counters: Counters::default(),
            down: AtomicBool::new(false),
            fault: Mutex::default(),
            hold: Mutex::default(),
        })
    }

    /// Stores `manifest` under `repository:tag` (moving the tag if it pointed elsewhere); returns its digest.
    pub fn set_manifest(&self, repository: &str, tag: &str, manifest: Bytes) -> Digest {
        let digest = Digest::sha256_of(&manifest);
        let mut content = lock(&self.content);
        content.manifests.insert(digest.clone(), manifest);
        content
            .tags
            .insert((repository.to_owned(), tag.to_owned()), digest.clone());
        digest
    }

    /// Serves `bytes` for `digest` (wrong bytes on purpose, if they do not hash to it).
    pub fn set_blob(&self, digest: &Digest, bytes: Bytes) {
        lock(&self.content).blobs.insert(digest.clone(), bytes);
    }

    /// Stores a blob under its own digest; returns the digest.
    pub fn add_blob(&self, bytes: Bytes) -> Digest {
        let digest = Digest::sha256_of(&bytes);
        self.set_blob(&digest, bytes);
        digest
    }

    /// While `down`, every request fails as an unreachable upstream does (the proxy's `Unavailable`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// What blob bodies sent from now on suffer.
    pub fn set_fault(&self, fault: BlobFault) {
        *lock(&self.fault) = fault;
    }

    /// Holds the last byte of every blob sent from now on until the returned handle is released (or dropped).
    pub fn hold_blobs(&self) -> Held {
        let gate = Arc::new(Semaphore::new(0));
        *lock(&self.hold) = Some(gate.clone());
        Held(gate)
    }

    /// Sends blobs whole again, without waiting.
    pub fn stop_holding(&self) {
        *lock(&self.hold) = None;
    }

    /// What the fake has been asked so far.
    pub fn asked(&self) -> Asked {
        let count = |counter: &AtomicUsize| counter.load(Ordering::SeqCst);
        let c = &self.counters;
        Asked {
            tag_heads: count(&c.tag_heads),
            manifest_gets: count(&c.manifest_gets),
            blob_heads: count(&c.blob_heads),
            blob_gets: count(&c.blob_gets),
            tag_lists: count(&c.tag_lists),
        }
    }

    /// How many times the blob `digest` was fetched.
    pub fn blob_gets_of(&self, digest: &Digest) -> usize {
        lock(&self.content)
            .blob_gets
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    fn count(&self, counter: &AtomicUsize) -> Result<(), ProxyError> {
        counter.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ProxyError::Unavailable {
                upstream: self.name.clone(),
                why: "unreachable (connection failed)".into(),
            });
        }
        Ok(())
    }

    fn tagged(&self, repository: &str, tag: &Tag) -> Option<Digest> {
        lock(&self.content)
            .tags
            .get(&(repository.to_owned(), tag.as_str().to_owned()))
            .cloned()
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag_ttl(&self) -> Duration {
        self.tag_ttl
    }

    async fn tag(&self, repository: &str, tag: &Tag, _: &str) -> Result<UpstreamTag, ProxyError> {
        self.count(&self.counters.tag_heads)?;
        Ok(match self.tagged(repository, tag) {
            Some(digest) => UpstreamTag::At(digest),
            None => UpstreamTag::Missing,
        })
    }

    async fn manifest(
        &self,
        repository: &str,
        reference: &Reference,
        _: &str,
    ) -> Result<UpstreamManifest, ProxyError> {
        self.count(&self.counters.manifest_gets)?;
        let digest = match reference {
            Reference::Tag(tag) => self.tagged(repository, tag),
            Reference::Digest(digest) => Some(digest.clone()),
        };
        let bytes = digest
            .and_then(|digest| lock(&self.content).manifests.get(&digest).cloned())
            .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repository}:{reference}")))?;
        Ok(UpstreamManifest {
            content_type: Some(OCI_MANIFEST.to_owned()),
            bytes,
        })
    }

    async fn blob_size(&self, _: &str, digest: &Digest) -> Result<u64, ProxyError> {
        self.count(&self.counters.blob_heads)?;
        lock(&self.content)
            .blobs
            .get(digest)
            .map(|bytes| bytes.len() as u64)
            .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()).into())
    }

    async fn blob(&self, _: &str, digest: &Digest) -> Result<UpstreamBlob, ProxyError> {
        self.count(&self.counters.blob_gets)?;
        let bytes = {
            let mut content = lock(&self.content);
            *content.blob_gets.entry(digest.clone()).or_default() += 1;
            content
                .blobs
                .get(digest)
                .cloned()
                .ok_or_else(|| RegistryError::BlobUnknown(digest.to_string()))?
        };
        let size = bytes.len() as u64;
        let split = bytes.len().saturating_sub(1);
        let (head, last) = (bytes.slice(..split), bytes.slice(split..));
        let hold = lock(&self.hold).clone();
        let fault = *lock(&self.fault);
        let upstream = self.name.clone();
        let end = async move {
            if let Some(hold) = hold {
                // Returns (with an error) once the test closes the semaphore.
                let _ = hold.acquire().await;
            }
            match fault {
                BlobFault::None => Ok(last),
                BlobFault::CutOff => Err(ProxyError::Unavailable {
                    upstream,
                    why: "blob transfer broke off (the answer broke off)".into(),
                }),
            }
        };
        let body = futures_util::stream::iter([Ok(head)])
            .chain(futures_util::stream::once(end))
            .filter(|chunk: &Result<Bytes, ProxyError>| {
                std::future::ready(chunk.as_ref().map_or(true, |bytes| !bytes.is_empty()))
            });
        Ok(UpstreamBlob {
            size: Some(size),
            body: Box::pin(body),
        })
    }

    async fn tags(&self, repository: &str, _: &str) -> Result<UpstreamTags, ProxyError> {
        self.count(&self.counters.tag_lists)?;
        let tags: BTreeSet<String> = lock(&self.content)
            .tags
            .keys()
            .filter(|(repo, _)| repo == repository)
            .map(|(_, tag)| tag.clone())
            .collect();
        if tags.is_empty() {
            return Err(RegistryError::NameUnknown(repository.to_owned()).into());
        }
        Ok(UpstreamTags {
            content_type: "application/json".into(),
            body: Bytes::from(serde_json::json!({ "name": repository, "tags": tags }).to_string()),
        })
    }
}
