//! Validated newtypes for everything a client names in a URL: repositories, tags, digests, upload ids.
//!
//! Each type can only be built by parsing, so once a handler holds one it is known to be safe to use as a
//! storage key (no `/..`, no absolute paths, no upper case where the grammar forbids it). Pure: no I/O, and no
//! knowledge of HTTP: a bad name is a [`NameError`]; what a client sees for it is the registry error's business
//! (`RegistryError: From<NameError>`). This module must not import the registry's errors or storage.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest as _, Sha256, Sha512};

/// Why a name, digest or reference was refused. Each message carries the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A repository name outside the distribution-spec grammar, or longer than 255 characters.
    #[error("invalid repository name {0:?}")]
    Repository(String),
    /// A digest that is malformed or uses an algorithm berth cannot verify.
    #[error("{why}: {digest:?}")]
    Digest {
        /// The digest as given.
        digest: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A manifest reference that is neither a tag nor a digest.
    #[error("invalid manifest reference {0:?}: neither a tag nor a digest")]
    Reference(String),
}

/// Longest repository name the distribution-spec allows (including slashes): "MUST be less than 256 characters".
const MAX_NAME_LEN: usize = 255;

static NAME_COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$").expect("static regex"));
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("static regex"));
static UPLOAD_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9a-f]{32}$").expect("static regex"));

/// A repository name per the distribution-spec grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/…)*`, < 256 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .split('/')
                .all(|component| NAME_COMPONENT.is_match(component));
        if valid {
            Ok(RepoName(name.to_owned()))
        } else {
            Err(NameError::Repository(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components, each a valid name component (never empty, never `.` or `..`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. Never starts with `.` or `-`, so it is a safe file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// `None` outside the grammar: what a bad tag means depends on where it came from (an invalid `?tag=`, a
    /// reference that is no tag, a stray file in storage), so the caller names the error.
    pub fn parse(tag: &str) -> Option<Self> {
        TAG.is_match(tag).then(|| Tag(tag.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hash algorithms berth verifies. Others are rejected: a digest that cannot be verified is never accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// A content digest `algorithm:hex` with a supported algorithm and lowercase hex of the right length.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// The digest grammar, one table for every digest berth reads: `algorithm:hex`, lowercase hex of the algorithm's
/// length. sha384 is a digest clients pull by (go-digest knows it), so references may carry it; berth itself
/// verifies and stores only sha256 and sha512 ([`Algorithm`]).
const DIGEST_ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];
const UNSUPPORTED_IN_REFERENCES: &str =
    "unsupported digest algorithm (sha256, sha384 and sha512 are)";
const UNSUPPORTED_BY_BERTH: &str = "unsupported digest algorithm (sha256 and sha512 are)";

/// A digest as an image reference carries it: the digest grammar with any algorithm of [`DIGEST_ALGORITHMS`]. What
/// berth can verify and store is a [`Digest`]; [`ReferenceDigest::stored`] says whether this is one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReferenceDigest {
    algorithm: &'static str,
    hex: String,
}

impl ReferenceDigest {
    pub fn parse(digest: &str) -> Result<Self, NameError> {
        let invalid = |why: &'static str| NameError::Digest {
            digest: digest.to_owned(),
            why,
        };
        let (algorithm, hex) = digest
            .split_once(':')
            .ok_or_else(|| invalid("digest has no algorithm"))?;
        let (algorithm, hex_len) = DIGEST_ALGORITHMS
            .into_iter()
            .find(|(name, _)| *name == algorithm)
            .ok_or_else(|| invalid(UNSUPPORTED_IN_REFERENCES))?;
        let well_formed = hex.len() == hex_len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(invalid(
                "digest is not lowercase hex of the algorithm's length",
            ));
        }
        Ok(ReferenceDigest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The digest as berth stores it, or why berth cannot (an algorithm it does not verify).
    pub fn stored(&self) -> Result<Digest, NameError> {
        let algorithm = match self.algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => {
                return Err(NameError::Digest {
                    digest: self.to_string(),
                    why: UNSUPPORTED_BY_BERTH,
                })
            }
        };
        Ok(Digest {
            algorithm,
            hex: self.hex.clone(),
        })
    }
}

impl fmt::Display for ReferenceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl Digest {
    /// A digest berth verifies: the digest grammar ([`ReferenceDigest`]) with an algorithm of [`Algorithm`].
    pub fn parse(digest: &str) -> Result<Self, NameError> {
        let unsupported = || NameError::Digest {
            digest: digest.to_owned(),
            why: UNSUPPORTED_BY_BERTH,
        };
        match ReferenceDigest::parse(digest) {
            Ok(parsed) => parsed.stored().map_err(|_| unsupported()),
            Err(NameError::Digest { why, .. }) if why == UNSUPPORTED_IN_REFERENCES => {
                Err(unsupported())
            }
            Err(e) => Err(e),
        }
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest of `bytes` with the given algorithm.
    pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let hex = match algorithm {
            Algorithm::Sha256 => hex::encode(Sha256::digest(bytes)),
            Algorithm::Sha512 => hex::encode(Sha512::digest(bytes)),
        };
        Digest { algorithm, hex }
    }

    pub(crate) fn from_parts(algorithm: Algorithm, hex: String) -> Self {
        Digest { algorithm, hex }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part; only `[0-9a-f]`, so it is a safe path component.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(reference: &str) -> Result<Self, NameError> {
        if reference.contains(':') {
            return Digest::parse(reference).map(Reference::Digest);
        }
        Tag::parse(reference)
            .map(Reference::Tag)
            .ok_or_else(|| NameError::Reference(reference.to_owned()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => tag.fmt(f),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

/// An upload session id: 32 lowercase hex characters (a v4 UUID without dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    pub fn new_random() -> Self {
        UploadId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// `None` for anything berth did not hand out: to a client that is an unknown upload, not a malformed one.
    pub fn parse(id: &str) -> Option<Self> {
        UPLOAD_ID.is_match(id).then(|| UploadId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("library/ubuntu", true),
            ("a/b/c/d/e/f", true),
            ("my-app.v2/sub_dir__x/y---z", true),
            ("0", true),
            ("", false),
            ("A", false),
            ("a//b", false),
            ("/a", false),
            ("a/", false),
            ("a/../b", false),
            ("..", false),
            (".a", false),
            ("a-", false),
            ("a___b", false),
            ("a b", false),
            ("a/_layers", false),
            ("a%2fb", false),
        ];
        for (name, ok) in cases {
            assert_eq!(RepoName::parse(name).is_ok(), *ok, "{name:?}");
        }
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        let cases: &[(&str, bool)] = &[
            ("latest", true),
            ("v1.2.3", true),
            ("_x", true),
            ("A-b_C.d", true),
            ("", false),
            (".hidden", false),
            ("-x", false),
            ("a/b", false),
            ("a:b", false),
            ("..", false),
        ];
        for (tag, ok) in cases {
            assert_eq!(Tag::parse(tag).is_some(), *ok, "{tag:?}");
        }
        assert!(Tag::parse(&"a".repeat(128)).is_some());
        assert!(Tag::parse(&"a".repeat(129)).is_none());
    }

    #[test]
    fn digests() {
        let sha256 = format!("sha256:{}", "a".repeat(64));
        let sha512 = format!("sha512:{}", "0".repeat(128));
        let cases: Vec<(String, bool)> = vec![
            (sha256.clone(), true),
            (sha512, true),
            ("sha256:../../etc".into(), false),
            (format!("sha256:{}", "A".repeat(64)), false),
            (format!("sha256:{}", "a".repeat(63)), false),
            (format!("sha256:{}", "a".repeat(65)), false),
            (format!("md5:{}", "a".repeat(32)), false),
            ("sha256".into(), false),
            ("".into(), false),
            (format!("sha512:{}", "a".repeat(64)), false),
        ];
        for (digest, ok) in cases {
            assert_eq!(Digest::parse(&digest).is_ok(), ok, "{digest:?}");
        }
        assert_eq!(
            Digest::parse(&sha256).map(|d| d.to_string()).ok(),
            Some(sha256)
        );
    }

    #[test]
    fn digest_of_known_content() {
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Digest::compute(Algorithm::Sha512, b"")
            .to_string()
            .starts_with("sha512:cf83e1357eefb8bd"));
    }

    #[test]
    fn references() {
        assert!(matches!(Reference::parse("v1"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse(&format!("sha256:{}", "b".repeat(64))),
            Ok(Reference::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("sha256:xyz"),
            Err(NameError::Digest { .. })
        ));
        assert_eq!(
            Reference::parse("bad/tag"),
            Err(NameError::Reference("bad/tag".into()))
        );
    }

    #[test]
    fn errors_name_the_input() {
        let cases: Vec<(NameError, &str)> = vec![
            (
                RepoName::parse("A/b").unwrap_err(),
                r#"invalid repository name "A/b""#,
            ),
            (
                Digest::parse("md5:00").unwrap_err(),
                r#"unsupported digest algorithm (sha256 and sha512 are): "md5:00""#,
            ),
            (
                Digest::parse("sha256").unwrap_err(),
                r#"digest has no algorithm: "sha256""#,
            ),
            (
                Digest::parse("sha256:AB").unwrap_err(),
                r#"digest is not lowercase hex of the algorithm's length: "sha256:AB""#,
            ),
            (
                Reference::parse("-x").unwrap_err(),
                r#"invalid manifest reference "-x": neither a tag nor a digest"#,
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn upload_ids() {
        let id = UploadId::new_random();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        assert!(UploadId::parse("../x").is_none());
        assert!(UploadId::parse("").is_none());
    }
}
