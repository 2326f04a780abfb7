//! The pure parts of registry auth: parsing a `WWW-Authenticate` challenge, and how long a token is used. No I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tokens without `expires_in` live this long (the distribution token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token is cached at most this long, whatever its `expires_in` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. Pure.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        fields.insert(key, value.to_owned());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: fields.remove("realm")?,
        service: fields.remove("service"),
        scope: fields.remove("scope"),
    })
}

/// Until when a token fetched at `now` is used: its `expires_in` (the upstream's number, so capped: a huge one
/// must not overflow the clock), less 5 s so a request never carries a token that expires in flight. Pure.
pub(super) fn token_expiry(now: Instant, expires_in: Option<u64>) -> Instant {
    let lifetime = expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME)
        .min(MAX_TOKEN_LIFETIME)
        .saturating_sub(Duration::from_secs(5));
    now.checked_add(lifetime).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_token_expires_in_does_not_overflow_the_clock() {
        let now = Instant::now();
        assert_eq!(
            token_expiry(now, Some(u64::MAX)),
            now + MAX_TOKEN_LIFETIME - Duration::from_secs(5)
        );
        assert_eq!(token_expiry(now, Some(300)), now + Duration::from_secs(295));
        assert_eq!(token_expiry(now, None), now + Duration::from_secs(55));
        assert_eq!(token_expiry(now, Some(0)), now);
    }

    #[test]
    fn challenges() {
        let bearer = |realm: &str, service: Option<&str>, scope: Option<&str>| Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        };
        let cases: &[(&str, Option<Challenge>)] = &[
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
                Some(bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/nginx:pull"),
                )),
            ),
            (
                r#"Bearer realm="http://127.0.0.1:1/t""#,
                Some(bearer("http://127.0.0.1:1/t", None, None)),
            ),
            (
                r#"bearer service="s", realm="r""#,
                Some(bearer("r", Some("s"), None)),
            ),
            (
                r#"Bearer realm=r,service=s"#,
                Some(bearer("r", Some("s"), None)),
            ),
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            (r#"Bearer service="s""#, None),
            ("Negotiate", None),
            (r#"Bearer realm="unterminated"#, None),
        ];
        for (header, expected) in cases {
            assert_eq!(&parse_challenge(header), expected, "{header}");
        }
    }
}
