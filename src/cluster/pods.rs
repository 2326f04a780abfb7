//! The pod watch: what runs where. Watches the pods of every namespace through the API server (list, then watch;
//! restarted with back-off after errors) and keeps [`RunningImages`] as one [`RunningContainer`] per container
//! and init container of every pod that has not finished (`Succeeded` and `Failed` pods run nothing): its
//! namespace, pod, node, ServiceAccount and image, and, for an image on one of berth's own hosts (admission's
//! [`Scope`]), berth's repository and tag; the digest is the one the kubelet reports (`imageID`), else the
//! spec's. What a pod runs is read by [`running_containers`], which is pure.
//!
//! Memory: one small entry per running container of the cluster, replaced as pods change; the pods themselves
//! are dropped once read (no reflector cache of whole pods). Must not: decide what is out of date (the report
//! does), or write to the API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;

use super::running::{RunningContainer, RunningImages};
use crate::admission::image::ImageRef;
use crate::admission::policy::Policy;
use crate::admission::scope::Scope;
use crate::admission::PolicyStore;
use crate::registry::names::ReferenceDigest;

/// Events applied before the snapshot is published again: a burst of changes is one replacement, and a long
/// burst still shows within a few thousand events.
const MAX_EVENTS_PER_PUBLISH: usize = 4096;

/// The containers a pod runs, init containers first, or none when it has finished.
pub fn running_containers(pod: &Pod, scope: &Scope, policy: &Policy) -> Vec<RunningContainer> {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let lists = [
        (
            spec.init_containers.as_deref().unwrap_or_default(),
            status.and_then(|s| s.init_container_statuses.as_deref()),
        ),
        (
            spec.containers.as_slice(),
            status.and_then(|s| s.container_statuses.as_deref()),
        ),
    ];
    let mut running = Vec::new();
    for (containers, statuses) in lists {
        for container in containers {
            let Some(image) = container.image.as_deref() else {
                continue;
            };
            let reported = statuses
                .unwrap_or_default()
                .iter()
                .find(|s| s.name == container.name)
                .and_then(reported_digest);
            let parsed = ImageRef::parse(image).ok();
            let berths = parsed.as_ref().filter(|p| scope.serves(p, policy));
            running.push(RunningContainer {
                namespace: namespace.clone(),
                pod: name.clone(),
                node: spec.node_name.clone().filter(|n| !n.is_empty()),
                container: container.name.clone(),
                image: image.to_owned(),
                service_account: service_account.clone(),
                repository: berths.map(|p| p.path.to_string()),
                // No tag and no digest is `latest`, what the kubelet pulls.
                tag: berths.and_then(|p| match (&p.tag, &p.digest) {
                    (Some(tag), _) => Some(tag.to_string()),
                    (None, None) => Some("latest".to_owned()),
                    (None, Some(_)) => None,
                }),
                digest: reported.or_else(|| {
                    parsed
                        .as_ref()
                        .and_then(|p| p.digest.as_ref())
                        .map(ToString::to_string)
                }),
            });
        }
    }
    running
}

/// The manifest digest a container status reports: what follows the last `@` of its `imageID`
/// (`docker.io/library/nginx@sha256:…` from containerd, `docker-pullable://nginx@sha256:…` from Docker), when it is
/// a digest. A bare `sha256:…` (Docker's image id, the config's digest) is not the manifest's, so it is not taken.
pub fn digest_of_image_id(image_id: &str) -> Option<String> {
    let (_, digest) = image_id.rsplit_once('@')?;
    ReferenceDigest::parse(digest).ok().map(|d| d.to_string())
}

fn reported_digest(status: &ContainerStatus) -> Option<String> {
    digest_of_image_id(&status.image_id)
}

/// The pods seen, by namespace and name, and what each runs.
#[derive(Debug, Default)]
struct Pods {
    by_name: BTreeMap<(String, String), Vec<RunningContainer>>,
    /// The pods of a list in progress (after `Init`, until `InitDone`).
    listing: Option<BTreeMap<(String, String), Vec<RunningContainer>>>,
}

impl Pods {
    /// Applies one event; returns whether what is published changed.
    fn apply(&mut self, event: Event<Pod>, scope: &Scope, policy: &Policy) -> bool {
        let key = |pod: &Pod| {
            (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            )
        };
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(pod) => {
                let containers = running_containers(&pod, scope, policy);
                let listing = self.listing.get_or_insert_with(BTreeMap::new);
                if !containers.is_empty() {
                    listing.insert(key(&pod), containers);
                }
                false
            }
            Event::InitDone => {
                self.by_name = self.listing.take().unwrap_or_default();
                true
            }
            Event::Apply(pod) => {
                let containers = running_containers(&pod, scope, policy);
                if containers.is_empty() {
                    self.by_name.remove(&key(&pod)).is_some()
                } else {
                    self.by_name.insert(key(&pod), containers.clone()) != Some(containers)
                }
            }
            Event::Delete(pod) => self.by_name.remove(&key(&pod)).is_some(),
        }
    }

    fn containers(&self) -> Vec<RunningContainer> {
        self.by_name.values().flatten().cloned().collect()
    }
}

/// Watches every pod of the cluster `client` reaches and keeps `running` up to date, until the process ends. API
/// errors (no permission, the API server away) are logged and the watch restarts with back-off; the snapshot
/// keeps what was last seen meanwhile. Images are recognised as berth's with `scope` and the policy in force
/// (its rewrite targets are berth's hosts too) when a pod changes.
pub async fn watch(
    client: kube::Client,
    running: Arc<RunningImages>,
    scope: Arc<Scope>,
    policy: Arc<PolicyStore>,
) {
    let api: kube::Api<Pod> = kube::Api::all(client);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut pods = Pods::default();
    let mut listed_once = false;
    let mut failing = false;
    while let Some(first) = events.next().await {
        let active = policy.current();
        let mut changed = false;
        let mut next = Some(first);
        let mut applied = 0;
        // Everything already arrived is applied before the snapshot is replaced once.
        while let Some(event) = next.take() {
            match event {
                Ok(event) => {
                    let done = matches!(event, Event::InitDone);
                    changed |= pods.apply(event, &scope, &active.policy);
                    if done {
                        if !listed_once || failing {
                            log::info!(
                                "pod watch: {} pods running {} containers",
                                pods.by_name.len(),
                                pods.by_name.values().map(Vec::len).sum::<usize>()
                            );
                        }
                        listed_once = true;
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        log::warn!("pod watch: {e}; retrying with back-off");
                    } else {
                        log::debug!("pod watch: {e}");
                    }
                    failing = true;
                }
            }
            applied += 1;
            if applied < MAX_EVENTS_PER_PUBLISH {
                next = events.next().now_or_never().flatten();
            }
        }
        if changed {
            running.replace(pods.containers());
        }
    }
    log::warn!("pod watch: the watch ended; what runs is no longer updated");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a pod")
    }

    const DIGEST: &str = "sha256:2b8a7fcd3c8b2d5f0e3c4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9";

    #[test]
    fn digests_are_taken_from_image_ids() {
        fn check(image_id: &str, expected: Option<&str>) {
            assert_eq!(
                digest_of_image_id(image_id).as_deref(),
                expected,
                "{image_id}"
            );
        }
        check(&format!("docker.io/library/nginx@{DIGEST}"), Some(DIGEST));
        check(&format!("127.0.0.1:5050/team-a/app@{DIGEST}"), Some(DIGEST));
        check(&format!("docker-pullable://nginx@{DIGEST}"), Some(DIGEST));
        // Docker's image id is the config's digest, not the manifest's.
        check(DIGEST, None);
        check("", None);
        check("nginx@sha256:short", None);
        check("nginx@", None);
    }

    /// Issue 12: one entry per container and init container, berth's images with their repository and tag, the
    /// reported digest before the spec's, and nothing for a finished pod.
    #[test]
    fn what_a_pod_runs() {
        let scope = Scope::new("berth-system").with_hosts(["registry.example.com".to_owned()]);
        let policy = Policy::allow_all();
        let spec_digest = format!("sha256:{}", "a".repeat(64));
        let running_pod = pod(json!({
            "metadata": {"namespace": "team-a", "name": "web-1"},
            "spec": {
                "nodeName": "node-1",
                "serviceAccountName": "runner",
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [
                    {"name": "app", "image": "127.0.0.1:5050/team-a/app:1.2"},
                    {"name": "cache", "image": "localhost:5050/proxy/docker.io/library/redis"},
                    {"name": "pinned", "image": format!("registry.example.com/team-a/tool@{spec_digest}")},
                    {"name": "side", "image": "quay.io/x/side:3"},
                ]
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "app", "image": "", "imageID": format!("127.0.0.1:5050/team-a/app@{DIGEST}"),
                     "ready": true, "restartCount": 0}
                ]
            }
        }));
        let containers = running_containers(&running_pod, &scope, &policy);
        /// (container, repository, tag, digest)
        type Seen<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let seen: Vec<Seen> = containers
            .iter()
            .map(|c| {
                (
                    c.container.as_str(),
                    c.repository.as_deref(),
                    c.tag.as_deref(),
                    c.digest.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("init", None, None, None),
                ("app", Some("team-a/app"), Some("1.2"), Some(DIGEST)),
                (
                    "cache",
                    Some("proxy/docker.io/library/redis"),
                    Some("latest"),
                    None
                ),
                (
                    "pinned",
                    Some("team-a/tool"),
                    None,
                    Some(spec_digest.as_str())
                ),
                ("side", None, None, None),
            ]
        );
        for c in &containers {
            assert_eq!(
                (
                    c.namespace.as_str(),
                    c.pod.as_str(),
                    c.node.as_deref(),
                    c.service_account.as_str()
                ),
                ("team-a", "web-1", Some("node-1"), "runner")
            );
        }

        for phase in ["Succeeded", "Failed"] {
            let mut finished = running_pod.clone();
            if let Some(status) = finished.status.as_mut() {
                status.phase = Some(phase.into());
            }
            assert!(running_containers(&finished, &scope, &policy).is_empty());
        }
        // Pending, not yet scheduled: it runs nowhere yet but is listed, with the default ServiceAccount.
        let pending = pod(json!({
            "metadata": {"namespace": "team-b", "name": "p"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        }));
        let containers = running_containers(&pending, &scope, &policy);
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0].node, None);
        assert_eq!(containers[0].service_account, "default");
        assert_eq!(containers[0].repository, None);
    }

    /// The map behind the snapshot: a relist replaces it whole, changes and deletions apply one by one.
    #[test]
    fn events_keep_the_map() {
        let scope = Scope::new("berth-system");
        let policy = Policy::allow_all();
        let named = |name: &str, phase: &str| {
            pod(json!({
                "metadata": {"namespace": "ns", "name": name},
                "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5050/ns/app:1"}]},
                "status": {"phase": phase}
            }))
        };
        let mut pods = Pods::default();
        let names =
            |pods: &Pods| -> Vec<String> { pods.containers().into_iter().map(|c| c.pod).collect() };
        assert!(!pods.apply(Event::Init, &scope, &policy));
        assert!(!pods.apply(Event::InitApply(named("a", "Running")), &scope, &policy));
        assert!(!pods.apply(
            Event::InitApply(named("done", "Succeeded")),
            &scope,
            &policy
        ));
        assert!(names(&pods).is_empty(), "nothing published during a list");
        assert!(pods.apply(Event::InitDone, &scope, &policy));
        assert_eq!(names(&pods), ["a"]);
        assert!(pods.apply(Event::Apply(named("b", "Pending")), &scope, &policy));
        assert!(
            !pods.apply(Event::Apply(named("b", "Pending")), &scope, &policy),
            "unchanged"
        );
        assert_eq!(names(&pods), ["a", "b"]);
        assert!(pods.apply(Event::Apply(named("a", "Failed")), &scope, &policy));
        assert_eq!(names(&pods), ["b"]);
        assert!(pods.apply(Event::Delete(named("b", "Running")), &scope, &policy));
        assert!(names(&pods).is_empty());
        // A relist drops what it no longer sees.
        pods.apply(Event::Apply(named("gone", "Running")), &scope, &policy);
        pods.apply(Event::Init, &scope, &policy);
        pods.apply(Event::InitApply(named("c", "Running")), &scope, &policy);
        assert_eq!(names(&pods), ["gone"], "the old map until the list is done");
        pods.apply(Event::InitDone, &scope, &policy);
        assert_eq!(names(&pods), ["c"]);
    }
}
