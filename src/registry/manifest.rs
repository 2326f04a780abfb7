//! Manifest parsing and validation: which media type a pushed document is, what it references, what it says about
//! its subject. Pure: the registry service checks the references against storage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::RegistryError;
use super::names::Digest;

/// Largest manifest berth accepts (the distribution-spec suggests registries accept at least 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The two shapes a manifest can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A config and layers (OCI image manifest, Docker schema 2 manifest, artifacts).
    Image,
    /// A list of child manifests (OCI index, Docker manifest list).
    Index,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
        _ => None,
    }
}

/// An OCI content descriptor, as written in manifests and referrers lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Content a manifest names and that must be in the repository: its digest and the size the descriptor declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    pub digest: Digest,
    pub size: u64,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    pub kind: Kind,
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Blobs (config and distributable layers) that must be in the repository, one entry per descriptor (a blob
    /// named twice is checked twice: each descriptor must declare the stored size).
    pub blobs: Vec<Required>,
    /// Child manifests (of an index) that must be in the repository, one entry per descriptor.
    pub children: Vec<Required>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without one, the config's media type (as the referrers API reports).
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ParsedManifest {
    /// The descriptor this manifest has in a referrers list.
    pub fn referrer_descriptor(&self, digest: &Digest, size: usize) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: digest.to_string(),
            size: size as i64,
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
            urls: None,
        }
    }
}

/// The layer media types that registries need not hold, exactly as the OCI image-spec and Docker's schema 2 name
/// them: their bytes live elsewhere (`urls`) by the image's author's choice. Any other media type is a blob that
/// must be pushed, even one whose name merely contains these words.
pub const NON_DISTRIBUTABLE_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

fn is_non_distributable(media_type: &str) -> bool {
    NON_DISTRIBUTABLE_LAYERS.contains(&media_type)
}

fn invalid(why: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(why.into())
}

fn descriptor_digest(descriptor: &Descriptor, role: &str) -> Result<Digest, RegistryError> {
    required(descriptor, role).map(|required| required.digest)
}

/// The digest and size a descriptor declares; a negative size is invalid.
fn required(descriptor: &Descriptor, role: &str) -> Result<Required, RegistryError> {
    let size = u64::try_from(descriptor.size)
        .map_err(|_| invalid(format!("{role} {} has a negative size", descriptor.digest)))?;
    let digest =
        Digest::parse(&descriptor.digest).map_err(|e| invalid(format!("{role} digest: {e}")))?;
    Ok(Required { digest, size })
}

/// The media type given in a `Content-Type` header, without parameters; `None` when it says nothing useful.
fn header_media_type(content_type: Option<&str>) -> Option<&str> {
    let media_type = content_type?.split(';').next()?.trim();
    match media_type {
        "" | "application/octet-stream" | "application/json" => None,
        other => Some(other),
    }
}

/// Parses and validates a manifest pushed with the given `Content-Type`.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, RegistryError> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a JSON manifest: {e}")))?;
    if raw.schema_version != Some(2) {
        return Err(invalid(match raw.schema_version {
            Some(1) => "schema 1 manifests are not supported; push schema 2 or OCI".to_owned(),
            other => format!("schemaVersion must be 2, found {other:?}"),
        }));
    }
    let header = header_media_type(content_type);
    let media_type = match (header, raw.media_type.as_deref()) {
        (Some(header), Some(body)) if header != body => {
            return Err(invalid(format!(
                "Content-Type {header:?} does not match the manifest's mediaType {body:?}"
            )))
        }
        (Some(known), _) | (None, Some(known)) => known.to_owned(),
        // An OCI manifest may omit mediaType; its shape tells which it is.
        (None, None) => match (&raw.manifests, &raw.config) {
            (Some(_), None) => OCI_INDEX.to_owned(),
            (None, Some(_)) => OCI_MANIFEST.to_owned(),
            _ => {
                return Err(invalid(
                    "no media type: set Content-Type or the mediaType field",
                ))
            }
        },
    };
    let kind = kind_of(&media_type)
        .ok_or_else(|| invalid(format!("unknown manifest media type {media_type:?}")))?;

    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut artifact_type = raw.artifact_type.clone();
    match kind {
        Kind::Image => {
            if raw.manifests.is_some() {
                return Err(invalid(format!("{media_type} must not have manifests")));
            }
            let config = raw
                .config
                .as_ref()
                .ok_or_else(|| invalid(format!("{media_type} requires a config")))?;
            blobs.push(required(config, "config")?);
            for layer in raw.layers.iter().flatten() {
                let layer_blob = required(layer, "layer")?;
                if !is_non_distributable(&layer.media_type) {
                    blobs.push(layer_blob);
                }
            }
            if artifact_type.is_none() {
                artifact_type = Some(config.media_type.clone());
            }
        }
        Kind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(invalid(format!(
                    "{media_type} must not have a config or layers"
                )));
            }
            let manifests = raw
                .manifests
                .as_ref()
                .ok_or_else(|| invalid(format!("{media_type} requires manifests")))?;
            for child in manifests {
                children.push(required(child, "child manifest")?);
            }
        }
    }
    let subject = raw
        .subject
        .as_ref()
        .map(|s| descriptor_digest(s, "subject"))
        .transpose()?;
    Ok(ParsedManifest {
        kind,
        media_type,
        blobs,
        children,
        subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(seed: &str) -> String {
        Digest::sha256_of(seed.as_bytes()).to_string()
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
                "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
                "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}}]{extra}}}"#,
            digest("config"),
            digest("layer")
        )
    }

    #[test]
    fn image_manifest_lists_its_blobs() {
        let parsed = parse(image("").as_bytes(), Some(OCI_MANIFEST)).expect("valid");
        assert_eq!(parsed.kind, Kind::Image);
        assert_eq!(parsed.media_type, OCI_MANIFEST);
        let blobs: Vec<(String, u64)> = parsed
            .blobs
            .iter()
            .map(|r| (r.digest.to_string(), r.size))
            .collect();
        assert_eq!(blobs, [(digest("config"), 2), (digest("layer"), 3)]);
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(parsed.subject, None);
    }

    #[test]
    fn artifact_with_subject() {
        let extra = format!(
            r#","artifactType":"application/x.sbom","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}},
               "annotations":{{"k":"v"}}"#,
            digest("subject")
        );
        let parsed = parse(image(&extra).as_bytes(), None).expect("valid");
        assert_eq!(parsed.artifact_type.as_deref(), Some("application/x.sbom"));
        assert_eq!(
            parsed.subject.as_ref().map(|d| d.to_string()),
            Some(digest("subject"))
        );
        let descriptor = parsed.referrer_descriptor(&Digest::sha256_of(b"m"), 10);
        assert_eq!(descriptor.size, 10);
        assert_eq!(
            descriptor
                .annotations
                .and_then(|a| a.get("k").cloned())
                .as_deref(),
            Some("v")
        );
    }

    #[test]
    fn index_lists_its_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,
                "platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
            digest("child")
        );
        let parsed = parse(body.as_bytes(), Some(OCI_INDEX)).expect("valid");
        assert_eq!(parsed.kind, Kind::Index);
        assert_eq!(
            parsed
                .children
                .iter()
                .map(|r| (r.digest.to_string(), r.size))
                .collect::<Vec<_>>(),
            [(digest("child"), 5)]
        );
        // Without a Content-Type or mediaType the shape decides.
        assert_eq!(
            parse(body.as_bytes(), None)
                .map(|p| p.media_type)
                .ok()
                .as_deref(),
            Some(OCI_INDEX)
        );
    }

    #[test]
    fn docker_types_and_foreign_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
                "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":2}},
                "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":3,
                "urls":["https://example.invalid/layer"]}}]}}"#,
            digest("config"),
            digest("foreign")
        );
        let parsed = parse(body.as_bytes(), Some(DOCKER_MANIFEST)).expect("valid");
        assert_eq!(
            parsed
                .blobs
                .iter()
                .map(|r| r.digest.to_string())
                .collect::<Vec<_>>(),
            [digest("config")]
        );
        // The header may carry parameters.
        assert!(parse(
            body.as_bytes(),
            Some(&format!("{DOCKER_MANIFEST}; charset=utf-8"))
        )
        .is_ok());
    }

    /// Issue 9: a layer was exempt from being pushed when its media type merely contained "nondistributable" or
    /// "rootfs.foreign". Only the spec's exact media types are exempt.
    #[test]
    fn non_distributable_layers_are_recognised_by_exact_media_type() {
        let check = |layer_type: &str, exempt: bool| {
            let body = image("").replace("application/vnd.oci.image.layer.v1.tar+gzip", layer_type);
            let parsed = parse(body.as_bytes(), Some(OCI_MANIFEST)).expect("valid");
            let required: Vec<String> = parsed.blobs.iter().map(|r| r.digest.to_string()).collect();
            let expected = if exempt {
                vec![digest("config")]
            } else {
                vec![digest("config"), digest("layer")]
            };
            assert_eq!(required, expected, "layer media type {layer_type:?}");
        };
        for exact in NON_DISTRIBUTABLE_LAYERS {
            check(exact, true);
        }
        for invented in [
            "application/x.nondistributable",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+x",
            "application/vnd.example.rootfs.foreign",
            "APPLICATION/VND.OCI.IMAGE.LAYER.NONDISTRIBUTABLE.V1.TAR",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "",
        ] {
            check(invented, false);
        }
    }

    #[test]
    fn invalid_manifests() {
        let bad_digest = image("").replace(&digest("layer"), "sha256:../../etc");
        let cases: Vec<(String, Option<&str>, &str)> = vec![
            ("not json".into(), Some(OCI_MANIFEST), "not a JSON manifest"),
            ("[]".into(), Some(OCI_MANIFEST), "not a JSON manifest"),
            (
                r#"{"schemaVersion":1,"fsLayers":[]}"#.into(),
                None,
                "schema 1",
            ),
            (
                r#"{"mediaType":"x"}"#.into(),
                None,
                "schemaVersion must be 2",
            ),
            (image(""), Some(OCI_INDEX), "does not match"),
            (
                image("").replace(OCI_MANIFEST, "application/x-unknown"),
                None,
                "unknown manifest media type",
            ),
            (bad_digest, None, "layer digest"),
            (r#"{"schemaVersion":2}"#.into(), None, "no media type"),
            (
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}"}}"#),
                None,
                "requires a config",
            ),
            (
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#),
                None,
                "requires manifests",
            ),
            (
                image("").replace("\"size\":3", "\"size\":-3"),
                None,
                "negative size",
            ),
        ];
        for (body, content_type, expected) in cases {
            match parse(body.as_bytes(), content_type) {
                Err(RegistryError::ManifestInvalid(message)) => {
                    assert!(
                        message.contains(expected),
                        "{body}: {message:?} lacks {expected:?}"
                    )
                }
                other => panic!("{body}: expected MANIFEST_INVALID, got {other:?}"),
            }
        }
    }
}
