//! The credentials a request presents in its `Authorization` header: `Basic base64(user:password)` or
//! `Bearer <token>`, parsed and checked (length, base64, UTF-8, control characters). Pure: it verifies nothing —
//! whether a password or token is right is the authenticator's business.
//!
//! Must not: log or put into an error any part of a password or token.

use std::fmt;

use base64::Engine as _;

/// Longest `Authorization` header accepted (a ServiceAccount token is about 1 KiB; 8 KiB leaves room for large
/// groups claims without letting a client make berth hash megabytes).
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// What the header presents. `Debug` hides the secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic`: a user name and a password (the password may be a ServiceAccount token).
    Basic { username: String, password: String },
    /// `Bearer`: a berth token or a ServiceAccount token.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => {
                write!(f, "Basic {{ username: {username:?}, password: <hidden> }}")
            }
            Credentials::Bearer(_) => f.write_str("Bearer(<hidden>)"),
        }
    }
}

/// Why an `Authorization` header was refused. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The header is longer than [`MAX_AUTHORIZATION_BYTES`].
    #[error(
        "authorization header of {0} bytes is longer than the {MAX_AUTHORIZATION_BYTES} accepted"
    )]
    TooLong(usize),
    /// The header is empty or only whitespace.
    #[error("authorization header is empty")]
    Empty,
    /// A scheme other than Basic or Bearer (the scheme, cut to 32 characters).
    #[error("authorization scheme {0:?} is not supported (use Basic or Bearer)")]
    UnknownScheme(String),
    /// The scheme without credentials after it.
    #[error("{0} authorization without credentials")]
    MissingValue(&'static str),
    /// Bytes outside visible ASCII (control characters, non-ASCII) in the header or the decoded credentials.
    #[error("{0} contains control characters or bytes that are not visible ASCII")]
    BadCharacters(&'static str),
    /// The Basic credentials are not valid base64.
    #[error("basic credentials are not valid base64")]
    Base64,
    /// The decoded Basic credentials are not UTF-8.
    #[error("basic credentials are not UTF-8")]
    Utf8,
    /// The decoded Basic credentials have no `:` between user and password.
    #[error("basic credentials have no ':' between the user name and the password")]
    MissingColon,
    /// The password (or token) of Basic credentials is empty.
    #[error("basic credentials of user {0:?} have an empty password")]
    EmptyPassword(String),
}

impl CredentialsError {
    /// Whether the client should be challenged again (401) rather than told its request is malformed (400): a scheme
    /// berth does not speak is a reason to offer the ones it does.
    pub fn is_challenge(&self) -> bool {
        matches!(
            self,
            CredentialsError::UnknownScheme(_) | CredentialsError::EmptyPassword(_)
        )
    }
}

/// Parses an `Authorization` header value. The scheme is case-insensitive; one or more spaces separate it from
/// the credentials.
pub fn parse_authorization(header: &[u8]) -> Result<Credentials, CredentialsError> {
    if header.len() > MAX_AUTHORIZATION_BYTES {
        return Err(CredentialsError::TooLong(header.len()));
    }
    if !header
        .iter()
        .all(|b| (0x20..0x7f).contains(b) || *b == b'\t')
    {
        return Err(CredentialsError::BadCharacters("authorization header"));
    }
    // Only visible ASCII, space and tab are left: the header is valid UTF-8.
    let text = std::str::from_utf8(header).map_err(|_| CredentialsError::Utf8)?;
    let text = text.trim_matches([' ', '\t']);
    if text.is_empty() {
        return Err(CredentialsError::Empty);
    }
    let (scheme, rest) = match text.split_once([' ', '\t']) {
        Some((scheme, rest)) => (scheme, rest.trim_start_matches([' ', '\t'])),
        None => (text, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        if rest.is_empty() {
            return Err(CredentialsError::MissingValue("Basic"));
        }
        basic(rest)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(CredentialsError::MissingValue("Bearer"));
        }
        // A byte scan: only visible ASCII, space and tab are left (a char-pattern search decodes UTF-8 per char,
        // on every Bearer request).
        if rest.bytes().any(|b| b == b' ' || b == b'\t') {
            return Err(CredentialsError::BadCharacters("bearer token"));
        }
        Ok(Credentials::Bearer(rest.to_owned()))
    } else {
        Err(CredentialsError::UnknownScheme(
            scheme.chars().take(32).collect(),
        ))
    }
}

fn basic(encoded: &str) -> Result<Credentials, CredentialsError> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| CredentialsError::Base64)?;
    let decoded = String::from_utf8(decoded).map_err(|_| CredentialsError::Utf8)?;
    if decoded.chars().any(char::is_control) {
        return Err(CredentialsError::BadCharacters("basic credentials"));
    }
    let (username, password) = decoded
        .split_once(':')
        .ok_or(CredentialsError::MissingColon)?;
    if password.is_empty() {
        return Err(CredentialsError::EmptyPassword(username.to_owned()));
    }
    Ok(Credentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn basic_of(user: &str, password: &str) -> Result<Credentials, CredentialsError> {
        Ok(Credentials::Basic {
            username: user.into(),
            password: password.into(),
        })
    }

    fn check(header: &[u8], expected: Result<Credentials, CredentialsError>) {
        assert_eq!(
            parse_authorization(header),
            expected,
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }

    #[test]
    fn headers_parse_or_say_why_not() {
        use CredentialsError::*;
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES));
        let cases: Vec<(Vec<u8>, Result<Credentials, CredentialsError>)> = vec![
            (
                format!("Basic {}", b64("alice:s3cret")).into(),
                basic_of("alice", "s3cret"),
            ),
            (
                format!("basic {}", b64("alice:s3cret")).into(),
                basic_of("alice", "s3cret"),
            ),
            (
                format!("BASIC   {}  ", b64("alice:a:b")).into(),
                basic_of("alice", "a:b"),
            ),
            (
                format!("Basic {}", b64(":token")).into(),
                basic_of("", "token"),
            ),
            (
                b"Bearer abc.def.ghi".to_vec(),
                Ok(Credentials::Bearer("abc.def.ghi".into())),
            ),
            (b"bEaReR x".to_vec(), Ok(Credentials::Bearer("x".into()))),
            (b"".to_vec(), Err(Empty)),
            (b"   ".to_vec(), Err(Empty)),
            (b"Basic".to_vec(), Err(MissingValue("Basic"))),
            (b"Bearer ".to_vec(), Err(MissingValue("Bearer"))),
            (b"Digest abc".to_vec(), Err(UnknownScheme("Digest".into()))),
            (b"Basicx abc".to_vec(), Err(UnknownScheme("Basicx".into()))),
            (b"Basic !!!".to_vec(), Err(Base64)),
            (format!("Basic {}", b64("alice")).into(), Err(MissingColon)),
            (
                format!("Basic {}", b64("alice:")).into(),
                Err(EmptyPassword("alice".into())),
            ),
            (
                format!("Basic {}", b64("al\nice:x")).into(),
                Err(BadCharacters("basic credentials")),
            ),
            (
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x'])
                )
                .into(),
                Err(Utf8),
            ),
            (b"Bearer a b".to_vec(), Err(BadCharacters("bearer token"))),
            (b"Bearer a\tb".to_vec(), Err(BadCharacters("bearer token"))),
            (
                b"Bearer a\r\nX-Injected: 1".to_vec(),
                Err(BadCharacters("authorization header")),
            ),
            (
                b"Bearer \xc3\xa9".to_vec(),
                Err(BadCharacters("authorization header")),
            ),
            (long.clone().into(), Err(TooLong(long.len()))),
        ];
        for (header, expected) in cases {
            check(&header, expected);
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!(
            "{:?} {:?}",
            basic_of("alice", "s3cret").expect("basic"),
            Credentials::Bearer("tok3n".into())
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert!(shown.contains("alice"), "{shown}");
    }
}
