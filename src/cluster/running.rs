//! What runs in the cluster: every container of every pod berth has seen through its pod watch, with the image it
//! runs and, when the image is berth's, the repository, tag and digest. The watch (in this module's siblings)
//! replaces the snapshot as pods change; the images report and `--outdated` read it. Reading is one atomic load.
//!
//! Must not: talk to the API server (the watch does) or decide what is out of date (the report does).

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

/// One container of a pod, as the pod watch last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningContainer {
    pub namespace: String,
    pub pod: String,
    /// The node it was scheduled on (`spec.nodeName`), once it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub container: String,
    /// The image as the pod spec names it.
    pub image: String,
    /// The pod's ServiceAccount.
    pub service_account: String,
    /// berth's repository for the image (`team-a/app`, `proxy/docker.io/library/nginx`), when the image is on one
    /// of berth's own hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The tag the spec names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The digest that runs: the container status's `imageID` once the kubelet reports it, else the spec's
    /// digest, if it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The shared snapshot of running containers.
#[derive(Debug, Default)]
pub struct RunningImages {
    snapshot: ArcSwap<Snapshot>,
}

/// The containers, and whether a watch fills them (outside a cluster nothing does, and the report says so).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub watching: bool,
    pub containers: Vec<RunningContainer>,
}

impl RunningImages {
    /// An empty snapshot no watch fills.
    pub fn new() -> RunningImages {
        RunningImages::default()
    }

    /// The containers running now (as of the watch's last event).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot (the watch, after each change).
    pub fn replace(&self, containers: Vec<RunningContainer>) {
        self.snapshot.store(Arc::new(Snapshot {
            watching: true,
            containers,
        }));
    }
}
