//! What must hold for any input to berth's parsers of client-supplied text: no panic, and, for what a parser
//! accepts, the properties below. Shared, word for word, by the cargo-fuzz targets (tests/fuzz/fuzz_targets, run
//! with libFuzzer for as long as one likes) and by the seeded randomized test in the suite (tests/randomized.rs,
//! a few seconds on every run), so the two never check different things.
//!
//! Each check panics with the offending input when a property fails: a panic is what libFuzzer reports, and it
//! fails the test.
#![allow(dead_code)]

use berth::admission::image::ImageRef;
use berth::registry::manifest::{self, Kind};
use berth::registry::names::{Digest, Reference, RepoName, Tag};
use berth::registry::ranges::{parse_content_range, parse_range};
use berth::v2::route::parse_route;

/// Media types a manifest may arrive with (chosen by the input's first byte).
pub const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some(manifest::OCI_MANIFEST),
    Some(manifest::OCI_INDEX),
    Some(manifest::DOCKER_MANIFEST),
    Some(manifest::DOCKER_MANIFEST_LIST),
    Some("application/json"),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    Some("text/plain"),
];

/// `Range: <header>` against a blob of `size` bytes: a range served lies inside the blob, first ≤ last.
pub fn check_range(header: &str, size: u64) -> bool {
    let parsed = parse_range(header, size);
    if let Ok(Some(range)) = &parsed {
        assert!(
            range.first <= range.last && range.last < size,
            "Range {header:?} on a blob of {size} bytes gave {}-{}",
            range.first,
            range.last
        );
    }
    parsed.is_ok()
}

/// `Content-Range: <header>` of an upload chunk: first ≤ last, and the canonical `first-last` means the same.
pub fn check_content_range(header: &str) -> bool {
    let parsed = parse_content_range(header);
    if let Ok((first, last)) = parsed {
        assert!(
            first <= last,
            "Content-Range {header:?} gave {first}-{last}"
        );
        let canonical = format!("{first}-{last}");
        assert_eq!(
            parse_content_range(&canonical).ok(),
            Some((first, last)),
            "Content-Range {header:?} gave {canonical}, which does not parse back"
        );
    }
    parsed.is_ok()
}

/// Names, tags, digests, references: what is accepted is written back exactly as given (Display round-trips), and
/// a repository name is a safe storage key.
pub fn check_names(text: &str) -> bool {
    let mut accepted = false;
    if let Ok(repo) = RepoName::parse(text) {
        accepted = true;
        assert_eq!(repo.to_string(), text, "repository {text:?}");
        assert!(text.len() < 256, "repository {text:?} is too long");
        for component in repo.components() {
            assert!(
                !component.is_empty() && component != "." && component != "..",
                "repository {text:?} has component {component:?}"
            );
        }
    }
    if let Some(tag) = Tag::parse(text) {
        accepted = true;
        assert_eq!(tag.to_string(), text, "tag {text:?}");
        assert!(
            !text.starts_with(['.', '-']) && !text.contains('/'),
            "tag {text:?} is not a safe file name"
        );
    }
    if let Ok(digest) = Digest::parse(text) {
        accepted = true;
        assert_eq!(digest.to_string(), text, "digest {text:?}");
        assert!(
            digest.hex().bytes().all(|b| b.is_ascii_hexdigit()),
            "digest {text:?}"
        );
    }
    if let Ok(reference) = Reference::parse(text) {
        accepted = true;
        assert_eq!(reference.to_string(), text, "reference {text:?}");
    }
    accepted
}

/// A request path: the route grammar never panics, and a repository it names is one [`check_names`] accepts.
pub fn check_route(path: &str) -> bool {
    let Ok(route) = parse_route(path) else {
        return false;
    };
    assert!(
        path == "/v2" || path.starts_with("/v2/"),
        "path {path:?} outside /v2/ gave {route:?}"
    );
    {
        if let Some(repo) = route.repository() {
            assert!(
                RepoName::parse(repo.as_str()).is_ok(),
                "path {path:?} gave repository {repo}"
            );
        }
    }
    true
}

/// An image reference as a pod writes it: its normalised form parses again to the same normalised form (so
/// policy rules, which see the normalised form, see one spelling per image).
pub fn check_image(text: &str) -> bool {
    let Ok(image) = ImageRef::parse(text) else {
        return false;
    };
    {
        let normalised = image.to_string();
        let again = ImageRef::parse(&normalised).unwrap_or_else(|e| {
            panic!("{text:?} normalised to {normalised:?}, which is refused: {e}")
        });
        assert_eq!(
            again.to_string(),
            normalised,
            "{text:?} normalised to {normalised:?}, which normalises further"
        );
    }
    true
}

/// A pushed manifest: an accepted one has the shape its kind says, and every digest it lists is valid.
pub fn check_manifest(bytes: &[u8], content_type: Option<&str>) -> bool {
    let Ok(parsed) = manifest::parse(bytes, content_type) else {
        return false;
    };
    {
        match parsed.kind {
            Kind::Image => assert!(
                parsed.children.is_empty() && !parsed.blobs.is_empty(),
                "image manifest with children or without a config: {parsed:?}"
            ),
            Kind::Index => assert!(parsed.blobs.is_empty(), "index with blobs: {parsed:?}"),
        }
        let required = parsed.blobs.iter().chain(&parsed.children);
        for digest in required.map(|r| &r.digest).chain(&parsed.subject) {
            let text = digest.to_string();
            assert_eq!(
                Digest::parse(&text).ok().as_ref(),
                Some(digest),
                "manifest digest {text:?}"
            );
        }
    }
    true
}

/// One fuzz input for the range parsers: 8 bytes of blob size (little endian; short inputs give small sizes),
/// then the header text. Whether a parser accepted it (the randomized test counts these, so that it knows its
/// inputs reach the properties).
pub fn ranges_input(data: &[u8]) -> bool {
    let (size, header) = if data.len() >= 8 {
        let mut size = [0u8; 8];
        size.copy_from_slice(&data[..8]);
        (u64::from_le_bytes(size), &data[8..])
    } else {
        (data.first().copied().unwrap_or(0) as u64, data)
    };
    let header = String::from_utf8_lossy(header);
    let whole = check_range(&header, size);
    let small = check_range(&header, size % 1024);
    let chunk = check_content_range(&header);
    whole || small || chunk
}

/// One fuzz input for the name parsers and the route grammar.
pub fn names_input(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let name = check_names(&text);
    let path = check_route(&text);
    let under_v2 = check_route(&format!("/v2/{text}"));
    let glued = check_route(&format!("/v2{text}"));
    name || path || under_v2 || glued
}

/// One fuzz input for the image-reference parser.
pub fn image_input(data: &[u8]) -> bool {
    check_image(&String::from_utf8_lossy(data))
}

/// One fuzz input for the manifest parser: the first byte picks the Content-Type, the rest is the body.
pub fn manifest_input(data: &[u8]) -> bool {
    let Some((&selector, body)) = data.split_first() else {
        return false;
    };
    let content_type = CONTENT_TYPES[selector as usize % CONTENT_TYPES.len()];
    check_manifest(body, content_type)
}
