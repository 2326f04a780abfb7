//! Listings: a repository's tags, the catalog and the referrers of a subject, with the `n`/`last` pagination of the
//! distribution spec. Read-only.

use super::Registry;
use crate::registry::error::{RegistryError, Result};
use crate::registry::manifest::Descriptor;
use crate::registry::names::{Digest, RepoName, Tag};
use crate::registry::storage::StorageError;

/// A page of a sorted listing, and whether more follows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// Sorted `items` after `last`, at most `n` of them.
pub(super) fn paginate<T: Ord + AsRef<str>>(
    items: Vec<T>,
    n: Option<usize>,
    last: Option<&str>,
) -> Page<T> {
    let start = match last {
        Some(last) => items.partition_point(|item| item.as_ref() <= last),
        None => 0,
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    match n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            Page {
                more: n > 0,
                items: rest,
            }
        }
        _ => Page {
            items: rest,
            more: false,
        },
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RepoName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Registry {
    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page<Tag>> {
        let tags = self
            .storage
            .tags(repo)
            .await?
            .ok_or_else(|| RegistryError::NameUnknown(repo.to_string()))?;
        Ok(paginate(tags, n, last))
    }

    /// Every tag of `repo` with the digest it points at, in tag order (none for a repository without tags).
    pub async fn tag_digests(&self, repo: &RepoName) -> Result<Vec<(Tag, Digest)>> {
        let tags = self.storage.tags(repo).await?.unwrap_or_default();
        let mut pointed = Vec::with_capacity(tags.len());
        for tag in tags {
            if let Some(digest) = self.storage.tag_get(repo, &tag).await? {
                pointed.push((tag, digest));
            }
        }
        Ok(pointed)
    }

    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page<RepoName>> {
        Ok(paginate(self.storage.repositories().await?, n, last))
    }

    /// The referrers of `subject` in `repo`, optionally only those of one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let mut descriptors = Vec::new();
        for raw in self.storage.referrers(repo, subject).await? {
            let descriptor: Descriptor = serde_json::from_slice(&raw).map_err(|e| {
                RegistryError::Storage(StorageError::Corrupt(format!(
                    "referrer of {subject} in {repo}: {e}"
                )))
            })?;
            if artifact_type.is_none() || descriptor.artifact_type.as_deref() == artifact_type {
                descriptors.push(descriptor);
            }
        }
        Ok(descriptors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings<T: AsRef<str>>(page: &Page<T>) -> Vec<&str> {
        page.items.iter().map(|i| i.as_ref()).collect()
    }

    #[test]
    fn pagination() {
        let tags = || {
            ["a", "b", "c", "d"]
                .iter()
                .filter_map(|t| Tag::parse(t))
                .collect::<Vec<_>>()
        };
        let check = |n: Option<usize>, last: Option<&str>, expected: &[&str], more: bool| {
            let page = paginate(tags(), n, last);
            assert_eq!(strings(&page), expected, "n={n:?} last={last:?}");
            assert_eq!(page.more, more, "n={n:?} last={last:?}");
        };
        check(None, None, &["a", "b", "c", "d"], false);
        check(Some(2), None, &["a", "b"], true);
        check(Some(2), Some("b"), &["c", "d"], false);
        check(Some(4), None, &["a", "b", "c", "d"], false);
        check(Some(0), None, &[], false);
        check(None, Some("bb"), &["c", "d"], false);
        check(Some(1), Some("d"), &[], false);
        check(Some(10), Some("0"), &["a", "b", "c", "d"], false);
    }
}
