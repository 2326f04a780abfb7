//! Where a reviewed object keeps its pods: the pod spec of a Pod or a workload's template, the container images
//! in it, the object's name, and the originals berth recorded when it rewrote images. Pure: reads the review's
//! object, decides nothing.

use std::collections::BTreeMap;

use serde_json::Value;

use super::review::{Request, Workload};

/// Where berth records the images it rewrote: a JSON map of container name → original image.
pub const ORIGINAL_IMAGES_ANNOTATION: &str = "berth.dev/original-images";

/// The three lists of containers a pod spec has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Container,
    Init,
    Ephemeral,
}

impl ContainerKind {
    const ALL: [ContainerKind; 3] = [
        ContainerKind::Init,
        ContainerKind::Container,
        ContainerKind::Ephemeral,
    ];

    /// The pod spec field holding this list.
    pub fn field(self) -> &'static str {
        match self {
            ContainerKind::Container => "containers",
            ContainerKind::Init => "initContainers",
            ContainerKind::Ephemeral => "ephemeralContainers",
        }
    }
}

/// One container's image, and where it is in the pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub kind: ContainerKind,
    pub index: usize,
    pub name: String,
    pub image: String,
}

/// The JSON path from the object's root to its pod spec, for the kinds berth checks.
fn pod_spec_path(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&["spec"]),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some(&["spec", "template", "spec"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// Every container image in a pod spec, init containers first.
pub fn container_images(spec: &Value) -> Vec<ContainerImage> {
    let mut images = Vec::new();
    for kind in ContainerKind::ALL {
        let Some(list) = spec.get(kind.field()).and_then(Value::as_array) else {
            continue;
        };
        for (index, container) in list.iter().enumerate() {
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            // A container without an image is left to the API server's own validation.
            let Some(image) = container.get("image").and_then(Value::as_str) else {
                continue;
            };
            images.push(ContainerImage {
                kind,
                index,
                name,
                image: image.to_owned(),
            });
        }
    }
    images
}

/// The pod spec inside the object, for the kinds berth checks.
pub(super) fn pod_spec<'a>(request: &Request, object: &'a Workload) -> Option<&'a Value> {
    let path = pod_spec_path(&request.kind.group, &request.kind.kind)?;
    let (first, rest) = path.split_first()?;
    debug_assert_eq!(*first, "spec");
    let mut value = object.spec.as_ref()?;
    for key in rest {
        value = value.get(*key)?;
    }
    Some(value)
}

pub(super) fn object_name(request: &Request, object: &Workload) -> String {
    let name = object
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| request.name.clone());
    if name.is_empty() {
        object
            .metadata
            .generate_name
            .clone()
            .map(|g| format!("{g}*"))
            .unwrap_or_default()
    } else {
        name
    }
}

/// The originals recorded by an earlier mutation, if the annotation is there and readable.
pub(super) fn recorded_originals(object: &Workload) -> BTreeMap<String, String> {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ORIGINAL_IMAGES_ANNOTATION))
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or_default()
}
