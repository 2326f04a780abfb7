//! Scopes of the distribution token flow: what a client asks `/auth/token` for (`repository:team-a/app:pull,push`,
//! `registry:catalog:*`), parsed and checked ([`parse_scopes`]), and what a berth token grants ([`Grant`], the
//! entries of its `access` claim, in distribution's shape). Pure: no I/O, no decisions — the token endpoint
//! intersects a request with the access rules.
//!
//! Must not: accept a scope whose name or actions carry separators or control characters (an injected `,`, `:`,
//! space or quote could widen a grant or break a challenge header).

use serde::{Deserialize, Serialize};

use super::Action;

/// Scopes one request may ask for (repeated `scope` parameters and space-separated lists together).
pub const MAX_SCOPES: usize = 32;
/// Longest scope accepted.
pub const MAX_SCOPE_BYTES: usize = 512;

/// One entry of a token's `access` claim: a resource and the actions granted on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The repository name, or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete` for a repository; `*` for the catalog.
    pub actions: Vec<String>,
}

impl Grant {
    /// Whether this entry grants `action` on `repository`.
    pub fn permits(&self, repository: &str, action: Action) -> bool {
        self.resource_type == "repository"
            && self.name == repository
            && self.actions.iter().any(|a| a == action.as_str())
    }
}

/// Whether any of `grants` permits `action` on `repository` (the front door's check for a berth token).
pub fn permits(grants: &[Grant], repository: &str, action: Action) -> bool {
    grants.iter().any(|g| g.permits(repository, action))
}

/// Whether `grants` include the catalog (`registry:catalog:*`).
pub fn permits_catalog(grants: &[Grant]) -> bool {
    grants.iter().any(|g| {
        g.resource_type == "registry" && g.name == "catalog" && g.actions.iter().any(|a| a == "*")
    })
}

/// A scope as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedScope {
    /// `repository:<name>:<actions>`; actions berth does not know are dropped (never granted), `*` asks for all.
    Repository { name: String, actions: Vec<Action> },
    /// `registry:catalog:*`.
    Catalog,
}

/// Why a scope was refused. Carries the scope (cut to [`MAX_SCOPE_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// More than [`MAX_SCOPES`] scopes.
    #[error("{0} scopes asked for; at most {MAX_SCOPES} are accepted")]
    TooMany(usize),
    /// Longer than [`MAX_SCOPE_BYTES`].
    #[error("scope of {0} bytes is longer than the {MAX_SCOPE_BYTES} accepted")]
    TooLong(usize),
    /// Not `type:name:actions`.
    #[error("scope {0:?} is not of the form type:name:actions")]
    Malformed(String),
    /// A resource type other than `repository` and `registry`.
    #[error("scope {0:?} has an unknown resource type (repository or registry)")]
    UnknownType(String),
    /// A repository name that is not a valid name (lowercase path components).
    #[error("scope {0:?} names an invalid repository")]
    BadName(String),
    /// Control characters, quotes, spaces or other separators inside a scope.
    #[error("scope {0:?} contains characters a scope cannot hold")]
    BadCharacters(String),
}

/// Parses `scope` parameters: each may hold several scopes separated by spaces. Empty parameters are skipped.
pub fn parse_scopes<'a>(
    scope_params: impl Iterator<Item = &'a str>,
) -> Result<Vec<RequestedScope>, ScopeError> {
    let mut scopes = Vec::new();
    let mut count = 0usize;
    for param in scope_params {
        for text in param.split(' ').filter(|s| !s.is_empty()) {
            count = count.saturating_add(1);
            if count > MAX_SCOPES {
                return Err(ScopeError::TooMany(count));
            }
            scopes.push(parse_scope(text)?);
        }
    }
    Ok(scopes)
}

fn shown(text: &str) -> String {
    text.chars().take(MAX_SCOPE_BYTES).collect()
}

/// Parses one scope. The name may hold `:` (a registry host with a port) — the type ends at the first `:`, the
/// actions start after the last.
pub fn parse_scope(text: &str) -> Result<RequestedScope, ScopeError> {
    if text.len() > MAX_SCOPE_BYTES {
        return Err(ScopeError::TooLong(text.len()));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'\'' | b'=' | b';'))
    {
        return Err(ScopeError::BadCharacters(shown(text)));
    }
    let malformed = || ScopeError::Malformed(shown(text));
    let (resource_type, rest) = text.split_once(':').ok_or_else(malformed)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
    if name.is_empty() {
        return Err(malformed());
    }
    // A resource class, `repository(plugin)`, is accepted and ignored, as distribution does.
    let base_type = match resource_type.split_once('(') {
        Some((base, class)) if class.ends_with(')') => base,
        Some(_) => return Err(malformed()),
        None => resource_type,
    };
    match base_type {
        "repository" => {
            if crate::registry::names::RepoName::parse(name).is_err() {
                return Err(ScopeError::BadName(shown(text)));
            }
            let mut granted = Vec::new();
            for action in actions.split(',') {
                if action.is_empty() {
                    return Err(malformed());
                }
                let wanted: Vec<Action> = if action == "*" {
                    Action::ALL.to_vec()
                } else {
                    Action::parse(action).into_iter().collect()
                };
                for a in wanted {
                    if !granted.contains(&a) {
                        granted.push(a);
                    }
                }
            }
            granted.sort();
            Ok(RequestedScope::Repository {
                name: name.to_owned(),
                actions: granted,
            })
        }
        "registry" => {
            if name == "catalog" && actions.split(',').any(|a| a == "*") {
                Ok(RequestedScope::Catalog)
            } else {
                Err(ScopeError::Malformed(shown(text)))
            }
        }
        _ => Err(ScopeError::UnknownType(shown(text))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(params: &[&str], expected: Result<Vec<RequestedScope>, ScopeError>) {
        assert_eq!(parse_scopes(params.iter().copied()), expected, "{params:?}");
    }

    fn repo(name: &str, actions: &[Action]) -> RequestedScope {
        RequestedScope::Repository {
            name: name.into(),
            actions: actions.to_vec(),
        }
    }

    #[test]
    fn scopes_parse_or_say_why_not() {
        use Action::*;
        check(&[], Ok(vec![]));
        check(&[""], Ok(vec![]));
        check(
            &["repository:team-a/app:pull,push"],
            Ok(vec![repo("team-a/app", &[Pull, Push])]),
        );
        check(
            &[
                "repository:a:push,pull,pull",
                "repository:b:pull registry:catalog:*",
            ],
            Ok(vec![
                repo("a", &[Pull, Push]),
                repo("b", &[Pull]),
                RequestedScope::Catalog,
            ]),
        );
        check(
            &["repository:a:*"],
            Ok(vec![repo("a", &[Pull, Push, Delete])]),
        );
        check(&["repository:a:metadata-read"], Ok(vec![repo("a", &[])]));
        check(&["repository(plugin):a:pull"], Ok(vec![repo("a", &[Pull])]));
        let bad = [
            ("repository:a", ScopeError::Malformed("repository:a".into())),
            (
                "repository::pull",
                ScopeError::Malformed("repository::pull".into()),
            ),
            (
                "repository:a:",
                ScopeError::Malformed("repository:a:".into()),
            ),
            (
                "repository:a:pull,,push",
                ScopeError::Malformed("repository:a:pull,,push".into()),
            ),
            (
                "image:a:pull",
                ScopeError::UnknownType("image:a:pull".into()),
            ),
            (
                "repository:A/B:pull",
                ScopeError::BadName("repository:A/B:pull".into()),
            ),
            (
                "repository:a:b:pull",
                ScopeError::BadName("repository:a:b:pull".into()),
            ),
            (
                "repository:../x:pull",
                ScopeError::BadName("repository:../x:pull".into()),
            ),
            (
                "registry:catalog:pull",
                ScopeError::Malformed("registry:catalog:pull".into()),
            ),
            (
                "repository:a\":pull",
                ScopeError::BadCharacters("repository:a\":pull".into()),
            ),
            (
                "repository:a:pull\r\n",
                ScopeError::BadCharacters("repository:a:pull\r\n".into()),
            ),
            (
                "repository:a:pull\tx",
                ScopeError::BadCharacters("repository:a:pull\tx".into()),
            ),
        ];
        for (scope, error) in bad {
            check(&[scope], Err(error));
        }
        let long = format!("repository:{}:pull", "a".repeat(MAX_SCOPE_BYTES));
        check(&[&long], Err(ScopeError::TooLong(long.len())));
        let many = vec!["repository:a:pull"; MAX_SCOPES + 1];
        check(&many, Err(ScopeError::TooMany(MAX_SCOPES + 1)));
    }

    #[test]
    fn grants_permit_exactly_what_they_name() {
        let grants = vec![Grant {
            resource_type: "repository".into(),
            name: "team-a/app".into(),
            actions: vec!["pull".into()],
        }];
        assert!(permits(&grants, "team-a/app", Action::Pull));
        assert!(!permits(&grants, "team-a/app", Action::Push));
        assert!(!permits(&grants, "team-a/app2", Action::Pull));
        assert!(!permits_catalog(&grants));
        assert_eq!(
            serde_json::to_value(&grants).expect("json"),
            serde_json::json!([{"type": "repository", "name": "team-a/app", "actions": ["pull"]}])
        );
    }
}
