//! Manifests and tags: a pushed manifest is parsed, its digest verified and every blob and child it names checked
//! against the repository before it is stored, referred to and tagged; a delete removes only the tags still naming
//! it. Both run under the repository's lock ([`RepoLocks`]), and so does the immutable-tag check: the caller says
//! which tags are immutable ([`Immutability`]); this module does not know the policy. What an immutable tag holds
//! ([`Registry::immutable_holder`]: its manifest, an index's children, their blobs) is neither deleted nor changed.

use std::collections::HashMap;

use bytes::Bytes;

use super::Registry;
use crate::registry::error::{RegistryError, Result};
use crate::registry::manifest::{self, ParsedManifest};
use crate::registry::names::{Digest, Reference, RepoName, Tag};
use crate::registry::storage::StoredManifest;

/// Outcome of a manifest push.
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// Every tag now pointing at it (the reference's and the `?tag=` ones), in the order given.
    pub tags: Vec<Tag>,
    /// The digest each of `tags` pointed at before the push (read under the repository's lock), `None` for a new
    /// tag: a different digest means the push moved the tag.
    pub previous: Vec<Option<Digest>>,
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Which tags of a repository are immutable, and by which rule (its name, for the error): the caller's decision
/// (the policy's `immutableTags`), applied here under the repository's lock without the service knowing the policy.
/// `None` for a tag that may move and be deleted.
pub type Immutability<'a> = &'a (dyn Fn(&Tag) -> Option<String> + Sync);

/// No tag is immutable.
pub fn all_tags_mutable(_: &Tag) -> Option<String> {
    None
}

/// An immutable tag that holds a manifest or blob in place: the tag, its rule and the manifest it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ImmutableHolder {
    pub(super) tag: Tag,
    pub(super) rule: String,
    /// The manifest the tag points at (the held digest itself, or an index or manifest that names it).
    pub(super) root: Digest,
}

impl ImmutableHolder {
    /// The refusal of a change to what this tag holds; `what` says which change.
    pub(super) fn refuse(self, repo: &RepoName, what: &'static str) -> RegistryError {
        RegistryError::TagImmutable {
            what,
            repository: repo.to_string(),
            tag: self.tag.to_string(),
            rule: self.rule,
            digest: self.root.to_string(),
        }
    }
}

/// How many locks [`RepoLocks`] stripes repositories over.
pub(super) const REPO_LOCK_STRIPES: usize = 64;

/// Serialises the changes to one repository's manifests, tags and referrers.
///
/// Invariant: `manifest_put` (validate, store, referrer, tags) and `manifest_delete` (read, compare, remove) of a
/// repository run under its lock, so concurrent pushes and deletes take effect in some serial order: a tag never
/// outlives the manifest it names, and a delete never removes a tag that a concurrent push just moved elsewhere.
/// Reads take no lock (each storage read is atomic). Repositories are hashed onto a fixed number of locks, so
/// memory does not grow with the number of repositories; two repositories sharing a stripe only wait for each
/// other. The lock is in-process: several replicas over one shared backend need the backend's conditional writes
/// instead (see `Storage::tag_delete_if`).
pub(super) struct RepoLocks(Box<[tokio::sync::Mutex<()>]>);

impl RepoLocks {
    pub(super) fn new() -> Self {
        RepoLocks(
            (0..REPO_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        )
    }

    pub(super) fn get(&self, repo: &RepoName) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        repo.as_str().hash(&mut hasher);
        // The remainder is below the number of stripes, so it fits a usize and indexes in bounds.
        let stripe = (hasher.finish() % self.0.len() as u64) as usize;
        &self.0[stripe]
    }
}

impl Registry {
    pub(super) async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest> {
        match reference {
            Reference::Digest(digest) => Ok(digest.clone()),
            Reference::Tag(tag) => self
                .storage
                .tag_get(repo, tag)
                .await?
                .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}:{tag}"))),
        }
    }

    /// A manifest of `repo` by tag or digest.
    pub async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, StoredManifest)> {
        let digest = self.resolve(repo, reference).await?;
        let manifest = self
            .storage
            .manifest_get(repo, &digest)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}@{digest}")))?;
        Ok((digest, manifest))
    }

    /// The first immutable tag of `repo` (in the order `tags` lists them) that holds `target` in place: the tag
    /// points at `target`, or at a manifest whose config or layers are `target`, or at an index (of indexes) with
    /// such a child manifest. What an immutable tag holds can be neither deleted nor changed, or the release would
    /// be destroyed though it cannot be replaced. Lists the repository's tags and reads the manifests each immutable
    /// one reaches (each once): a cost for deletes, not pulls. Call it under the repository's lock.
    pub(super) async fn immutable_holder(
        &self,
        repo: &RepoName,
        target: &Digest,
        immutable: Immutability<'_>,
    ) -> Result<Option<ImmutableHolder>> {
        let tags = self.storage.tags(repo).await?.unwrap_or_default();
        let mut visited: std::collections::HashSet<Digest> = std::collections::HashSet::new();
        for tag in tags {
            let Some(rule) = immutable(&tag) else {
                continue;
            };
            let Some(root) = self.storage.tag_get(repo, &tag).await? else {
                continue;
            };
            let mut pending = vec![root.clone()];
            let mut holds = false;
            while let Some(digest) = pending.pop() {
                if &digest == target {
                    holds = true;
                    break;
                }
                if !visited.insert(digest.clone()) {
                    continue;
                }
                let Some(stored) = self.storage.manifest_get(repo, &digest).await? else {
                    continue;
                };
                // A stored manifest was parsed when it was pushed; one that no longer parses names nothing.
                let Ok(parsed) = manifest::parse(&stored.bytes, Some(&stored.media_type)) else {
                    continue;
                };
                if parsed.blobs.iter().any(|blob| &blob.digest == target) {
                    holds = true;
                    break;
                }
                pending.extend(parsed.children.into_iter().map(|child| child.digest));
            }
            if holds {
                return Ok(Some(ImmutableHolder { tag, rule, root }));
            }
        }
        Ok(None)
    }

    /// The lock that serialises the manifest and tag changes of `repo` (see [`RepoLocks`]).
    pub(super) fn repo_lock(&self, repo: &RepoName) -> &tokio::sync::Mutex<()> {
        self.repo_locks.get(repo)
    }

    /// Validates and stores a manifest; tags it with `reference` when that is a tag, and with each of `tags`
    /// (the `?tag=` parameters of a push by digest). A tag `immutable` names a rule for may not move: if it points
    /// at another manifest, the push is refused and nothing is stored; pushing the manifest it points at again
    /// succeeds, unless the push would change the media type it is served with (the same bytes without `mediaType`
    /// under another Content-Type): that is refused for every manifest an immutable tag holds, tagged or not.
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        content_type: Option<&str>,
        bytes: Bytes,
        immutable: Immutability<'_>,
    ) -> Result<PushedManifest> {
        if bytes.len() as u64 > manifest::MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestTooLarge {
                size: bytes.len() as u64,
                limit: manifest::MAX_MANIFEST_BYTES,
            });
        }
        let parsed = manifest::parse(&bytes, content_type)?;
        let (digest, mut all_tags) = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::compute(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest has digest {actual}, pushed as {expected}"
                    )));
                }
                (actual, Vec::new())
            }
            Reference::Tag(tag) => (Digest::sha256_of(&bytes), vec![tag.clone()]),
        };
        for tag in tags {
            if !all_tags.contains(tag) {
                all_tags.push(tag.clone());
            }
        }
        let _repo = self.repo_lock(repo).lock().await;
        // Under the repository's lock: of two racing pushes to an immutable tag, the second sees the first's.
        for tag in &all_tags {
            let Some(rule) = immutable(tag) else {
                continue;
            };
            match self.storage.tag_get(repo, tag).await? {
                Some(current) if current != digest => {
                    return Err(RegistryError::TagImmutable {
                        what: "a different manifest cannot be pushed to it",
                        repository: repo.to_string(),
                        tag: tag.to_string(),
                        rule,
                        digest: current.to_string(),
                    })
                }
                _ => {}
            }
        }
        // The identical bytes again with another media type (a manifest without `mediaType`, pushed with another
        // Content-Type) would change what an immutable tag serves: refused, the stored media type stays.
        if let Some(stored) = self.storage.manifest_get(repo, &digest).await? {
            if stored.media_type != parsed.media_type {
                if let Some(holder) = self.immutable_holder(repo, &digest, immutable).await? {
                    return Err(holder.refuse(
                        repo,
                        "the manifest is stored with another media type, which it cannot be pushed to change",
                    ));
                }
            }
        }
        // A manifest's bytes are content (stored as the blob of its digest): held across the check and the store,
        // so the proxy's eviction cannot judge that content unused and delete it in between.
        let _gate = self.content_gate.read().await;
        self.check_references(repo, &parsed).await?;
        let stored = StoredManifest {
            media_type: parsed.media_type.clone(),
            bytes,
        };
        self.storage.manifest_put(repo, &digest, &stored).await?;
        if let Some(subject) = &parsed.subject {
            let descriptor = parsed.referrer_descriptor(&digest, stored.bytes.len());
            let descriptor = serde_json::to_vec(&descriptor).map_err(|e| {
                RegistryError::ManifestInvalid(format!("descriptor cannot be encoded: {e}"))
            })?;
            self.storage
                .referrer_add(repo, subject, &digest, &descriptor)
                .await?;
        }
        let mut previous = Vec::with_capacity(all_tags.len());
        for tag in &all_tags {
            previous.push(self.storage.tag_get(repo, tag).await?);
            self.storage.tag_set(repo, tag, &digest).await?;
        }
        log::info!(
            "manifest {digest} ({}) pushed to {repo} as {reference}{}",
            parsed.media_type,
            if tags.is_empty() {
                String::new()
            } else {
                format!(
                    " with tags {}",
                    tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(", ")
                )
            }
        );
        Ok(PushedManifest {
            digest,
            subject: parsed.subject,
            tags: all_tags,
            previous,
            media_type: parsed.media_type,
            size: stored.bytes.len() as u64,
        })
    }

    /// Every blob a manifest names must be visible in `repo`, and every child manifest must be in `repo`, each
    /// with exactly the size its descriptor declares (a digest named twice is checked twice).
    pub(super) async fn check_references(
        &self,
        repo: &RepoName,
        parsed: &ParsedManifest,
    ) -> Result<()> {
        // Each distinct digest is looked up once, however many descriptors name it: a 4 MiB index naming one 4 MiB
        // child 25,000 times read that child 25,000 times on the worker (11 s, review finding).
        let mut blob_sizes: HashMap<&Digest, u64> = HashMap::new();
        for blob in &parsed.blobs {
            let digest = &blob.digest;
            let stored = match blob_sizes.get(digest) {
                Some(&size) => size,
                None => {
                    let stored = if self.storage.blob_linked(repo, digest).await? {
                        self.storage.blob_size(digest).await?
                    } else {
                        None
                    };
                    let Some(stored) = stored else {
                        return Err(RegistryError::ManifestBlobUnknown(format!("blob {digest}")));
                    };
                    blob_sizes.insert(digest, stored);
                    stored
                }
            };
            if stored != blob.size {
                return Err(RegistryError::ManifestInvalid(format!(
                    "blob {digest} is {stored} bytes, a descriptor says {}",
                    blob.size
                )));
            }
        }
        let mut child_sizes: HashMap<&Digest, u64> = HashMap::new();
        for child in &parsed.children {
            let digest = &child.digest;
            let stored = match child_sizes.get(digest) {
                Some(&size) => size,
                None => {
                    let Some(stored) = self.storage.manifest_get(repo, digest).await? else {
                        return Err(RegistryError::ManifestBlobUnknown(format!(
                            "manifest {digest}"
                        )));
                    };
                    let size = stored.bytes.len() as u64;
                    child_sizes.insert(digest, size);
                    size
                }
            };
            if stored != child.size {
                return Err(RegistryError::ManifestInvalid(format!(
                    "child manifest {digest} is {stored} bytes, a descriptor says {}",
                    child.size
                )));
            }
        }
        Ok(())
    }

    /// Deletes a manifest by digest (with its tags and referrer entry) or a tag. A tag `immutable` names a rule
    /// for is not deleted, nor is a manifest such a tag holds (points at, or names as a child of its index).
    /// Returns the digest deleted, or the one the deleted tag pointed at.
    pub async fn manifest_delete(
        &self,
        repo: &RepoName,
        reference: &Reference,
        immutable: Immutability<'_>,
    ) -> Result<Digest> {
        let _repo = self.repo_lock(repo).lock().await;
        match reference {
            Reference::Tag(tag) => {
                let current = self.storage.tag_get(repo, tag).await?;
                if let (Some(rule), Some(current)) = (immutable(tag), &current) {
                    return Err(RegistryError::TagImmutable {
                        what: "the tag cannot be deleted",
                        repository: repo.to_string(),
                        tag: tag.to_string(),
                        rule,
                        digest: current.to_string(),
                    });
                }
                match current {
                    Some(current) if self.storage.tag_delete(repo, tag).await? => {
                        log::info!("tag {repo}:{tag} deleted");
                        Ok(current)
                    }
                    _ => Err(RegistryError::ManifestUnknown(format!("{repo}:{tag}"))),
                }
            }
            Reference::Digest(digest) => {
                let Some(stored) = self.storage.manifest_get(repo, digest).await? else {
                    return Err(RegistryError::ManifestUnknown(format!("{repo}@{digest}")));
                };
                // Deleting the manifest would delete its immutable tags with it, or break the index such a tag
                // points at.
                if let Some(holder) = self.immutable_holder(repo, digest, immutable).await? {
                    let what = if &holder.root == digest {
                        "the manifest cannot be deleted while an immutable tag points at it"
                    } else {
                        "the manifest cannot be deleted while an index an immutable tag points at names it"
                    };
                    return Err(holder.refuse(repo, what));
                }
                let tags = self.storage.tags(repo).await?.unwrap_or_default();
                for tag in tags {
                    self.storage.tag_delete_if(repo, &tag, digest).await?;
                }
                if let Ok(parsed) = manifest::parse(&stored.bytes, Some(&stored.media_type)) {
                    if let Some(subject) = parsed.subject {
                        self.storage.referrer_remove(repo, &subject, digest).await?;
                    }
                }
                self.storage.manifest_delete(repo, digest).await?;
                log::info!("manifest {repo}@{digest} deleted");
                Ok(digest.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::{body, registry, repo, tag};
    use super::*;

    /// Pushes a config and a layer to `repo` (once); returns an image manifest naming them, made unique by `seed`.
    async fn image(registry: &Registry, repo: &RepoName, seed: u64) -> Bytes {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let layer = b"layer".to_vec();
        for blob in [&config, &layer] {
            let digest = Digest::sha256_of(blob);
            if registry.blob_size(repo, &digest).await.is_err() {
                registry
                    .upload_monolithic(repo, &digest, body(&[blob]))
                    .await
                    .expect("push blob");
            }
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::sha256_of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": Digest::sha256_of(&layer).to_string(), "size": layer.len()}],
            "annotations": {"seed": seed.to_string()},
        });
        Bytes::from(serde_json::to_vec(&manifest).expect("json"))
    }

    async fn put(
        registry: &Registry,
        repo: &RepoName,
        reference: &Reference,
        bytes: &Bytes,
    ) -> Result<Digest> {
        registry
            .manifest_put(
                repo,
                reference,
                &[],
                Some(manifest::OCI_MANIFEST),
                bytes.clone(),
                &all_tags_mutable,
            )
            .await
            .map(|pushed| pushed.digest)
    }

    /// Issue 9: a manifest PUT by tag racing a DELETE of the same manifest by digest could leave a tag that
    /// `tags/list` lists but that answers 404. Every round must end as one of the two serial orders would:
    /// PUT then DELETE (no manifest, no tag) or DELETE then PUT (the manifest, tagged).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn put_by_tag_racing_delete_by_digest_never_leaves_a_dangling_tag() {
        let (_dir, registry) = registry();
        let repo = repo("race/put-delete");
        let bytes = image(&registry, &repo, 1).await;
        let digest = Digest::sha256_of(&bytes);
        let by_digest = Reference::Digest(digest.clone());
        for round in 0..300 {
            let t = tag(&format!("t{round}"));
            put(&registry, &repo, &by_digest, &bytes)
                .await
                .expect("push by digest");
            let start = Arc::new(tokio::sync::Barrier::new(2));
            let pusher = tokio::spawn({
                let (registry, repo, bytes, start) =
                    (registry.clone(), repo.clone(), bytes.clone(), start.clone());
                let by_tag = Reference::Tag(t.clone());
                async move {
                    start.wait().await;
                    put(&registry, &repo, &by_tag, &bytes).await
                }
            });
            let deleter = tokio::spawn({
                let (registry, repo, by_digest, start) = (
                    registry.clone(),
                    repo.clone(),
                    by_digest.clone(),
                    start.clone(),
                );
                async move {
                    start.wait().await;
                    registry
                        .manifest_delete(&repo, &by_digest, &all_tags_mutable)
                        .await
                }
            });
            pusher
                .await
                .expect("join")
                .expect("PUT by tag is acknowledged");
            deleter
                .await
                .expect("join")
                .expect("DELETE by digest is acknowledged");
            let tagged = registry
                .storage()
                .tag_get(&repo, &t)
                .await
                .expect("tag_get");
            let stored = registry
                .storage()
                .manifest_get(&repo, &digest)
                .await
                .expect("manifest_get")
                .is_some();
            match (tagged, stored) {
                // PUT, then DELETE.
                (None, false) => {}
                // DELETE, then PUT.
                (Some(tagged), true) => assert_eq!(tagged, digest, "round {round}"),
                (tagged, stored) => panic!(
                    "round {round}: tag {t} -> {tagged:?} with the manifest stored: {stored}; no serial order gives that"
                ),
            }
            let listed = registry.tags(&repo, None, None).await.expect("tags").items;
            for listed in listed {
                let resolved = registry
                    .manifest_get(&repo, &Reference::Tag(listed.clone()))
                    .await;
                assert!(
                    resolved.is_ok(),
                    "round {round}: listed tag {listed} answers {resolved:?}"
                );
            }
        }
    }

    /// Issue 9: a DELETE of manifest M1 racing a PUT that moves tag `t` from M1 to M2 could delete `t` although
    /// the PUT got 201 (the delete read the tag, compared, then removed it). In both serial orders `t` ends at M2.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn delete_racing_a_tag_move_never_loses_the_moved_tag() {
        let (_dir, registry) = registry();
        let repo = repo("race/move");
        let m2 = image(&registry, &repo, 2).await;
        let m2_digest = put(
            &registry,
            &repo,
            &Reference::Digest(Digest::sha256_of(&m2)),
            &m2,
        )
        .await
        .expect("push M2");
        for round in 0..300 {
            let m1 = image(&registry, &repo, 1000 + round).await;
            let t = Reference::Tag(tag(&format!("t{round}")));
            let m1_digest = put(&registry, &repo, &t, &m1).await.expect("push M1 as t");
            let start = Arc::new(tokio::sync::Barrier::new(2));
            let mover = tokio::spawn({
                let (registry, repo, t, m2, start) = (
                    registry.clone(),
                    repo.clone(),
                    t.clone(),
                    m2.clone(),
                    start.clone(),
                );
                async move {
                    start.wait().await;
                    put(&registry, &repo, &t, &m2).await
                }
            });
            let deleter = tokio::spawn({
                let (registry, repo, start) = (registry.clone(), repo.clone(), start.clone());
                let m1 = Reference::Digest(m1_digest.clone());
                async move {
                    start.wait().await;
                    registry
                        .manifest_delete(&repo, &m1, &all_tags_mutable)
                        .await
                }
            });
            mover
                .await
                .expect("join")
                .expect("PUT moving t is acknowledged");
            deleter
                .await
                .expect("join")
                .expect("DELETE of M1 is acknowledged");
            let Reference::Tag(t) = t else { unreachable!() };
            assert_eq!(
                registry
                    .storage()
                    .tag_get(&repo, &t)
                    .await
                    .expect("tag_get"),
                Some(m2_digest.clone()),
                "round {round}: tag {t} must point at M2 in either serial order"
            );
            assert_eq!(
                registry
                    .storage()
                    .manifest_get(&repo, &m1_digest)
                    .await
                    .expect("get"),
                None,
                "round {round}: M1 was deleted"
            );
        }
    }

    /// Issue 11: two pushes of different manifests to a new immutable tag, on threads of their own, must not both
    /// be acknowledged (the check and the tag write are one step under the repository's lock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_pushes_to_an_immutable_tag_have_one_winner() {
        let (_dir, registry) = registry();
        let repo = repo("race/immutable");
        let immutable = |_: &Tag| Some("releases".to_owned());
        for round in 0..200 {
            let t = Reference::Tag(tag(&format!("v{round}")));
            let a = image(&registry, &repo, 2 * round).await;
            let b = image(&registry, &repo, 2 * round + 1).await;
            let start = Arc::new(tokio::sync::Barrier::new(2));
            let push = |bytes: Bytes| {
                let (registry, repo, t, start) =
                    (registry.clone(), repo.clone(), t.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    registry
                        .manifest_put(
                            &repo,
                            &t,
                            &[],
                            Some(manifest::OCI_MANIFEST),
                            bytes,
                            &immutable,
                        )
                        .await
                        .map(|pushed| pushed.digest)
                })
            };
            let (first, second) = (push(a.clone()), push(b.clone()));
            let results = [first.await.expect("join"), second.await.expect("join")];
            let won: Vec<&Digest> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: {results:?}");
            assert!(
                results
                    .iter()
                    .any(|r| matches!(r, Err(RegistryError::TagImmutable { .. }))),
                "round {round}: {results:?}"
            );
            let Reference::Tag(t) = &t else {
                unreachable!()
            };
            assert_eq!(
                registry
                    .storage()
                    .tag_get(&repo, t)
                    .await
                    .expect("tag_get")
                    .as_ref(),
                Some(won[0]),
                "round {round}"
            );
        }
    }
}
