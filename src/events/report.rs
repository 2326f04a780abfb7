//! The images report and what is out of date, from what the registry holds (each tag's digest), what the event
//! log says (pushes, pull counts) and what runs (the pod watch's snapshot). Pure: the handlers gather the inputs
//! ([`super::routes`]) and these functions join them, so every number and every reason is testable without I/O.
//!
//! A running container is out of date when (a) the tag it names now points at another digest in berth than the
//! one running (for a proxied `proxy/…` repository: the cache's tag as of its last revalidation, not the
//! upstream's now), or (b) its repository has a newer version tag, in semantic-version order, than the one it runs.
//!
//! Must not: read the store, the registry or the snapshot itself, or know HTTP.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use semver::Version;
use serde::Serialize;

use super::store::{PullStats, PushRecord};
use crate::cluster::running::RunningContainer;

/// One tag of a repository and the digest it points at in berth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

/// When and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Who {
    /// RFC 3339, UTC.
    pub time: String,
    /// The actor's subject (`user:alice`, `node-proxy:node-1`).
    pub by: String,
}

impl Who {
    fn at(millis: i64, by: &str) -> Who {
        Who {
            time: rfc3339(millis),
            by: by.to_owned(),
        }
    }
}

/// Pull counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pulls {
    pub total: u64,
    pub last_day: u64,
    pub last_week: u64,
}

/// A container running an image, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningIn {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One line of the images report: a tag of a repository and what is known about its current manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRow {
    pub repository: String,
    pub tag: String,
    /// The digest the tag points at now.
    pub digest: String,
    /// The tag's last push (absent when the log has none: pushed before the log, or pruned).
    pub pushed: Option<Who>,
    /// Pulls of the current digest (by tag or by digest).
    pub pulls: Pulls,
    pub last_pulled: Option<Who>,
    /// Distinct identities that pulled the current digest.
    pub pullers: u64,
    /// Nodes whose node proxy pulled it.
    pub nodes: Vec<String>,
    /// Containers running the current digest now.
    pub running: Vec<RunningIn>,
}

/// Why a running container is out of date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonKind {
    /// The tag it names now points at another digest.
    TagMoved,
    /// Its repository has a newer version tag.
    NewerVersion,
}

/// One reason, with the tag and digest it is about and a sentence saying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub kind: ReasonKind,
    /// `tag-moved`: the tag the container names; `newer-version`: the newer version tag.
    pub tag: String,
    /// The digest that tag points at.
    pub digest: String,
    pub message: String,
}

/// A running container whose image is out of date, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outdated {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub image: String,
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The digest that runs.
    pub digest: String,
    pub reasons: Vec<Reason>,
}

/// The images report: one row per tag in `tags` (in its order), with the pull counts of the digest it points at,
/// its last push, and the containers running that digest.
pub fn images(
    tags: &[TagState],
    pulls: &[PullStats],
    pushes: &[PushRecord],
    running: &[RunningContainer],
) -> Vec<ImageRow> {
    let pulls: HashMap<(&str, &str), &PullStats> = pulls
        .iter()
        .map(|p| ((p.repository.as_str(), p.digest.as_str()), p))
        .collect();
    let pushes = last_push_index(pushes);
    tags.iter()
        .map(|tag| {
            let stats = pulls.get(&(tag.repository.as_str(), tag.digest.as_str()));
            ImageRow {
                repository: tag.repository.clone(),
                tag: tag.tag.clone(),
                digest: tag.digest.clone(),
                pushed: pushes
                    .get(&(
                        tag.repository.as_str(),
                        tag.tag.as_str(),
                        tag.digest.as_str(),
                    ))
                    .map(|p| Who::at(p.millis, &p.actor)),
                pulls: stats.map_or_else(Pulls::default, |s| Pulls {
                    total: s.total,
                    last_day: s.last_day,
                    last_week: s.last_week,
                }),
                last_pulled: stats.map(|s| Who::at(s.last_millis, &s.last_actor)),
                pullers: stats.map_or(0, |s| s.pullers),
                nodes: stats.map_or_else(Vec::new, |s| s.nodes.clone()),
                running: running
                    .iter()
                    .filter(|c| {
                        c.repository.as_deref() == Some(tag.repository.as_str())
                            && c.digest.as_deref().map(bare_digest) == Some(tag.digest.as_str())
                    })
                    .map(|c| RunningIn {
                        namespace: c.namespace.clone(),
                        pod: c.pod.clone(),
                        container: c.container.clone(),
                        node: c.node.clone(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Every container of `running` that is out of date by `tags` (each repository's tags and digests in berth), in
/// the snapshot's order, each with its reasons. Containers of images berth does not hold, or whose digest is not
/// known yet, are left out: nothing can be said of them.
pub fn outdated(
    running: &[RunningContainer],
    tags: &[TagState],
    pushes: &[PushRecord],
) -> Vec<Outdated> {
    let mut by_repository: HashMap<&str, Vec<&TagState>> = HashMap::new();
    for tag in tags {
        by_repository
            .entry(tag.repository.as_str())
            .or_default()
            .push(tag);
    }
    let pushes = last_push_index(pushes);
    let mut found = Vec::new();
    for container in running {
        let (Some(repository), Some(digest)) = (&container.repository, &container.digest) else {
            continue;
        };
        let digest = bare_digest(digest);
        let Some(repo_tags) = by_repository.get(repository.as_str()) else {
            continue;
        };
        let mut reasons = Vec::new();
        if let Some(tag) = &container.tag {
            if let Some(now) = repo_tags.iter().find(|t| &t.tag == tag) {
                if now.digest != digest {
                    reasons.push(tag_moved(
                        repository,
                        now,
                        pushes.get(&(repository.as_str(), tag.as_str(), now.digest.as_str())),
                    ));
                }
            }
        }
        if let Some(newer) = newer_version(container.tag.as_deref(), digest, repo_tags) {
            reasons.push(Reason {
                kind: ReasonKind::NewerVersion,
                message: format!("newer version {} ({})", newer.tag, short(&newer.digest)),
                tag: newer.tag.clone(),
                digest: newer.digest.clone(),
            });
        }
        if !reasons.is_empty() {
            found.push(Outdated {
                namespace: container.namespace.clone(),
                pod: container.pod.clone(),
                container: container.container.clone(),
                node: container.node.clone(),
                image: container.image.clone(),
                repository: repository.clone(),
                tag: container.tag.clone(),
                digest: digest.to_owned(),
                reasons,
            });
        }
    }
    found
}

fn tag_moved(repository: &str, now: &TagState, push: Option<&&PushRecord>) -> Reason {
    let mut message = format!("tag {} now points at {}", now.tag, short(&now.digest));
    if let Some(push) = push {
        message.push_str(&format!(
            " (pushed {} by {})",
            rfc3339(push.millis),
            push.actor
        ));
    }
    if repository.starts_with("proxy/") {
        message.push_str(" in berth's cache, as of its last revalidation of the upstream");
    }
    Reason {
        kind: ReasonKind::TagMoved,
        tag: now.tag.clone(),
        digest: now.digest.clone(),
        message,
    }
}

/// The newest version tag of `tags` above the version a container runs: its tag's, or else the highest version
/// tag pointing at the digest it runs. Pre-releases count only above a pre-release (who runs 1.2.0 is not told
/// of 1.3.0-rc.1). A newer tag pointing at the running digest itself is no news.
fn newer_version<'a>(
    tag: Option<&str>,
    digest: &str,
    tags: &[&'a TagState],
) -> Option<&'a TagState> {
    let versions: Vec<(Version, &TagState)> = tags
        .iter()
        .filter_map(|t| version(&t.tag).map(|v| (v, *t)))
        .collect();
    let running = match tag.and_then(version) {
        Some(v) => v,
        None => versions
            .iter()
            .filter(|(_, t)| t.digest == digest)
            .map(|(v, _)| v.clone())
            .max_by(|a, b| a.cmp_precedence(b))?,
    };
    versions
        .into_iter()
        .filter(|(v, t)| {
            v.cmp_precedence(&running) == Ordering::Greater
                && (v.pre.is_empty() || !running.pre.is_empty())
                && t.digest != digest
        })
        .max_by(|(a, ta), (b, tb)| a.cmp_precedence(b).then_with(|| tb.tag.cmp(&ta.tag)))
        .map(|(_, t)| t)
}

/// A version tag's version: `1.2.3` or `v1.2.3`, with an optional pre-release (`-rc.1`) and build (`+build.5`);
/// anything else (`latest`, `v1`, `1.2`, `01.2.3`) is not a version.
pub fn version(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// The last push of each (repository, tag, digest): the push that made a tag point at its digest, whatever
/// order the events of racing pushes to one tag were committed in.
fn last_push_index(pushes: &[PushRecord]) -> BTreeMap<(&str, &str, &str), &PushRecord> {
    let mut index: BTreeMap<(&str, &str, &str), &PushRecord> = BTreeMap::new();
    for push in pushes {
        let Some(digest) = push.digest.as_deref() else {
            continue;
        };
        let key = (push.repository.as_str(), push.tag.as_str(), digest);
        if index.get(&key).is_none_or(|p| p.millis <= push.millis) {
            index.insert(key, push);
        }
    }
    index
}

/// `sha256:…` of a container status's `imageID` (`docker.io/library/nginx@sha256:…`, `docker-pullable://…@sha256:…`).
fn bare_digest(digest: &str) -> &str {
    digest.rsplit_once('@').map_or(digest, |(_, d)| d)
}

/// A digest cut to 12 hex digits for sentences (`sha256:0123456789ab`).
pub fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > 12 => format!("{algorithm}:{}", &hex[..12]),
        _ => digest.to_owned(),
    }
}

/// Milliseconds since the epoch as RFC 3339 in UTC, to the second.
pub fn rfc3339(millis: i64) -> String {
    let seconds = millis.div_euclid(1000);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| millis.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const NEWER: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn versions_parse_and_order_like_semver() {
        let check = |tag: &str, expected: Option<&str>| {
            assert_eq!(
                version(tag).map(|v| v.to_string()),
                expected.map(str::to_owned),
                "{tag}"
            );
        };
        check("1.2.3", Some("1.2.3"));
        check("v1.2.3", Some("1.2.3"));
        check("v1.3.0-rc.1", Some("1.3.0-rc.1"));
        check("1.0.0+build.5", Some("1.0.0+build.5"));
        check("latest", None);
        check("v1", None);
        check("1.2", None);
        check("01.2.3", None);
        check("V1.2.3", None);
        check("vv1.2.3", None);
        check("", None);
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "v1.0.1",
            "1.10.0",
            "v2.0.0",
        ];
        for pair in ordered.windows(2) {
            let (a, b) = (version(pair[0]).expect("a"), version(pair[1]).expect("b"));
            assert_eq!(
                a.cmp_precedence(&b),
                Ordering::Less,
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
    }

    fn tag(repository: &str, tag: &str, digest: &str) -> TagState {
        TagState {
            repository: repository.into(),
            tag: tag.into(),
            digest: digest.into(),
        }
    }

    fn container(repository: &str, tag: Option<&str>, digest: &str) -> RunningContainer {
        RunningContainer {
            namespace: "team-a".into(),
            pod: "web-1".into(),
            node: Some("node-1".into()),
            container: "app".into(),
            image: format!("berth.example/{repository}:{}", tag.unwrap_or("")),
            service_account: "default".into(),
            repository: Some(repository.into()),
            tag: tag.map(str::to_owned),
            digest: Some(digest.into()),
        }
    }

    #[test]
    fn outdated_containers_say_why() {
        let push = PushRecord {
            repository: "team-a/app".into(),
            tag: "stable".into(),
            digest: Some(NEW.into()),
            millis: 1_764_600_000_000,
            actor: "user:bob".into(),
        };
        let tags = [
            tag("team-a/app", "stable", NEW),
            tag("team-a/app", "v1.2.0", OLD),
            tag("team-a/app", "v1.3.0", NEW),
            tag("team-a/app", "1.4.0-rc.1", NEWER),
            tag("team-a/app", "latest", NEWER),
            tag("proxy/docker.io/library/nginx", "1.27", NEW),
            tag("team-b/lib", "v2.0.0", OLD),
            tag("team-b/lib", "2.0.0", OLD),
        ];
        let check = |running: RunningContainer, expected: &[(ReasonKind, &str)]| {
            let found = outdated(
                std::slice::from_ref(&running),
                &tags,
                std::slice::from_ref(&push),
            );
            let reasons: Vec<(ReasonKind, String)> = found
                .iter()
                .flat_map(|o| o.reasons.iter().map(|r| (r.kind, r.message.clone())))
                .collect();
            let expected: Vec<(ReasonKind, String)> = expected
                .iter()
                .map(|(k, m)| (*k, (*m).to_owned()))
                .collect();
            assert_eq!(reasons, expected, "{running:?}");
        };
        // The tag moved, and a newer version exists.
        check(
            container("team-a/app", Some("stable"), OLD),
            &[
                (
                    ReasonKind::TagMoved,
                    "tag stable now points at sha256:222222222222 (pushed 2025-12-01T14:40:00Z by user:bob)",
                ),
                (ReasonKind::NewerVersion, "newer version v1.3.0 (sha256:222222222222)"),
            ],
        );
        // Up to date: the tag's digest runs and no stable version is newer (the rc is not news for 1.3.0).
        check(container("team-a/app", Some("v1.3.0"), NEW), &[]);
        // A version tag still on its digest, with a newer version.
        check(
            container("team-a/app", Some("v1.2.0"), OLD),
            &[(
                ReasonKind::NewerVersion,
                "newer version v1.3.0 (sha256:222222222222)",
            )],
        );
        // Pinned by digest: its version is that of the tags pointing at it.
        check(
            container("team-a/app", None, OLD),
            &[(
                ReasonKind::NewerVersion,
                "newer version v1.3.0 (sha256:222222222222)",
            )],
        );
        // A pre-release sees newer pre-releases.
        let rc = [
            tag("team-c/x", "1.0.0-rc.1", OLD),
            tag("team-c/x", "1.0.0-rc.2", NEW),
        ];
        let found = outdated(&[container("team-c/x", Some("1.0.0-rc.1"), OLD)], &rc, &[]);
        assert_eq!(found[0].reasons[0].tag, "1.0.0-rc.2");
        // No version tag at all and a tag that did not move: nothing to say.
        check(container("team-a/app", Some("latest"), NEWER), &[]);
        // Proxied: the cache's tag, as of its last revalidation.
        check(
            container("proxy/docker.io/library/nginx", Some("1.27"), OLD),
            &[(
                ReasonKind::TagMoved,
                "tag 1.27 now points at sha256:222222222222 in berth's cache, as of its last revalidation of the upstream",
            )],
        );
        // v2.0.0 and 2.0.0 are one version; nothing newer.
        check(container("team-b/lib", Some("2.0.0"), OLD), &[]);
        // A repository berth does not hold, or a digest not known yet: left out.
        check(container("elsewhere/app", Some("v1.0.0"), OLD), &[]);
        let mut unknown = container("team-a/app", Some("stable"), OLD);
        unknown.digest = None;
        check(unknown, &[]);
    }

    #[test]
    fn the_report_joins_tags_pulls_pushes_and_running_pods() {
        let tags = [tag("team-a/app", "v1", NEW), tag("team-a/app", "old", OLD)];
        let pulls = [PullStats {
            repository: "team-a/app".into(),
            digest: NEW.into(),
            total: 5,
            last_day: 2,
            last_week: 4,
            last_millis: 1_764_600_000_000,
            last_actor: "node-proxy:node-1".into(),
            pullers: 2,
            nodes: vec!["node-1".into()],
        }];
        let pushes = [
            PushRecord {
                repository: "team-a/app".into(),
                tag: "v1".into(),
                digest: Some(NEW.into()),
                millis: 1_764_500_000_000,
                actor: "user:alice".into(),
            },
            // A racing push to the same tag whose event was committed after alice's but whose change came first:
            // the tag holds alice's digest, so hers is the push reported.
            PushRecord {
                repository: "team-a/app".into(),
                tag: "v1".into(),
                digest: Some(OLD.into()),
                millis: 1_764_500_000_001,
                actor: "user:mallory".into(),
            },
        ];
        let running = [
            container(
                "team-a/app",
                Some("v1"),
                &format!("registry.example/team-a/app@{NEW}"),
            ),
            container("team-a/app", Some("v1"), OLD),
        ];
        let rows = images(&tags, &pulls, &pushes, &running);
        assert_eq!(rows.len(), 2);
        let v1 = &rows[0];
        assert_eq!(
            v1.pulls,
            Pulls {
                total: 5,
                last_day: 2,
                last_week: 4
            }
        );
        assert_eq!(v1.pushed, Some(Who::at(1_764_500_000_000, "user:alice")));
        assert_eq!(
            v1.last_pulled,
            Some(Who {
                time: "2025-12-01T14:40:00Z".into(),
                by: "node-proxy:node-1".into()
            })
        );
        assert_eq!(v1.pullers, 2);
        assert_eq!(v1.nodes, ["node-1"]);
        assert_eq!(
            v1.running.len(),
            1,
            "only the container running the tag's digest"
        );
        let old = &rows[1];
        assert_eq!(old.pulls, Pulls::default());
        assert_eq!((old.pushed.clone(), old.last_pulled.clone()), (None, None));
        assert_eq!(old.running.len(), 1);
    }
}
