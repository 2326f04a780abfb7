//! The grammar of the registry API's paths and query strings: `/v2/…` paths are parsed into a [`Route`]
//! (repository names have any number of slashes, so the resource is recognised from the end of the path), query
//! strings into a [`Query`]. A leaf: it knows the registry's name types (and the error they return) and nothing
//! else — no actix-web, no handlers, no decision about who serves a route (that is the front door's, `super`).

use crate::registry::names::{NameError, RepoName};

/// Why a path is not a route of the registry API.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The path is not one of the API's routes (the full path is kept).
    #[error("no such route: {0}")]
    NotFound(String),
    /// The path has the shape of a route, but the repository name in it is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// A parsed registry path. The `String`s are still to be validated by the handler (tag, digest, upload id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, String),
    /// `/v2/<name>/blobs/uploads/`
    Uploads(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, String),
}

impl Route {
    /// The repository the route addresses, if any.
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(repo)
            | Route::Manifest(repo, _)
            | Route::Blob(repo, _)
            | Route::Uploads(repo)
            | Route::Upload(repo, _)
            | Route::Referrers(repo, _) => Some(repo),
        }
    }
}

/// The kind of a registry route, without its repository or reference: what metrics label a request by (a
/// template such as `/v2/{name}/manifests/{reference}`, never a name or a digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    Uploads,
    Upload,
    Referrers,
}

impl RouteKind {
    /// Every kind, in a fixed order (metrics index tables by it).
    pub const ALL: [RouteKind; 8] = [
        RouteKind::Base,
        RouteKind::Catalog,
        RouteKind::Tags,
        RouteKind::Manifest,
        RouteKind::Blob,
        RouteKind::Uploads,
        RouteKind::Upload,
        RouteKind::Referrers,
    ];

    /// The route's template.
    pub fn template(self) -> &'static str {
        match self {
            RouteKind::Base => "/v2/",
            RouteKind::Catalog => "/v2/_catalog",
            RouteKind::Tags => "/v2/{name}/tags/list",
            RouteKind::Manifest => "/v2/{name}/manifests/{reference}",
            RouteKind::Blob => "/v2/{name}/blobs/{digest}",
            RouteKind::Uploads => "/v2/{name}/blobs/uploads/",
            RouteKind::Upload => "/v2/{name}/blobs/uploads/{id}",
            RouteKind::Referrers => "/v2/{name}/referrers/{digest}",
        }
    }

    /// The kind of the route `path` has the shape of, by the rules of [`parse_route`] but without validating the
    /// repository name or allocating (it runs on every request). A shape with an invalid name is still its kind:
    /// the request is a client's mistake on that route.
    pub fn of_path(path: &str) -> Option<RouteKind> {
        let rest = match path.strip_prefix("/v2") {
            Some("") => return Some(RouteKind::Base),
            Some(rest) => rest.strip_prefix('/')?,
            None => return None,
        };
        if rest.is_empty() {
            return Some(RouteKind::Base);
        }
        if rest == "_catalog" {
            return Some(RouteKind::Catalog);
        }
        // The last three segments decide, as in `parse_route`; a name needs at least one segment before them.
        let mut segments = rest.rsplit('/');
        let last = segments.next()?;
        let decoded;
        let last = if last.contains('%') {
            decoded = percent_decode(last);
            decoded.as_str()
        } else {
            last
        };
        let second = segments.next();
        let third = segments.next();
        let has_name_before = |n: usize| rest.split('/').count() > n;
        if second == Some("tags") && last == "list" && has_name_before(2) {
            return Some(RouteKind::Tags);
        }
        if third == Some("blobs") && second == Some("uploads") && has_name_before(3) {
            return Some(if last.is_empty() {
                RouteKind::Uploads
            } else {
                RouteKind::Upload
            });
        }
        if !has_name_before(2) {
            return None;
        }
        match second {
            Some("manifests") => Some(RouteKind::Manifest),
            Some("blobs") if last == "uploads" => Some(RouteKind::Uploads),
            Some("blobs") => Some(RouteKind::Blob),
            Some("referrers") => Some(RouteKind::Referrers),
            _ => None,
        }
    }
}

impl Route {
    /// The route's kind.
    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Base => RouteKind::Base,
            Route::Catalog => RouteKind::Catalog,
            Route::Tags(_) => RouteKind::Tags,
            Route::Manifest(..) => RouteKind::Manifest,
            Route::Blob(..) => RouteKind::Blob,
            Route::Uploads(_) => RouteKind::Uploads,
            Route::Upload(..) => RouteKind::Upload,
            Route::Referrers(..) => RouteKind::Referrers,
        }
    }
}

/// Decodes `%XX` escapes in one path segment (clients may send `sha256%3A…`). Invalid escapes are kept as they
/// are; the validators then reject the segment.
fn percent_decode(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_owned();
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|v| v as u8);
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the path of a request under `/v2` (the full path, e.g. `/v2/library/ubuntu/manifests/latest`).
pub fn parse_route(path: &str) -> Result<Route, RouteError> {
    let not_found = || RouteError::NotFound(path.to_owned());
    // `/v2` itself or `/v2/…`; `/v20/…` is another path, not repository `0/…`.
    let rest = match path.strip_prefix("/v2") {
        Some("") => "",
        Some(rest) => rest.strip_prefix('/').ok_or_else(not_found)?,
        None => return Err(not_found()),
    };
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    // Only the last segment (a reference, digest or upload id) is decoded: an escaped `/` never splits a name.
    let mut segments: Vec<String> = rest.split('/').map(str::to_owned).collect();
    if let Some(last) = segments.last_mut() {
        *last = percent_decode(last);
    }
    let n = segments.len();
    let name = |end: usize| -> Result<RepoName, RouteError> {
        if end == 0 {
            return Err(not_found());
        }
        Ok(RepoName::parse(&segments[..end].join("/"))?)
    };
    let at = |i: usize| segments.get(i).map(String::as_str);
    if n >= 3 && at(n - 2) == Some("tags") && at(n - 1) == Some("list") {
        return Ok(Route::Tags(name(n - 2)?));
    }
    if n >= 4 && at(n - 3) == Some("blobs") && at(n - 2) == Some("uploads") {
        let id = &segments[n - 1];
        return Ok(if id.is_empty() {
            Route::Uploads(name(n - 3)?)
        } else {
            Route::Upload(name(n - 3)?, id.clone())
        });
    }
    if n >= 2 {
        let last = segments[n - 1].clone();
        match at(n - 2) {
            Some("manifests") => return Ok(Route::Manifest(name(n - 2)?, last)),
            Some("blobs") if last == "uploads" => return Ok(Route::Uploads(name(n - 2)?)),
            Some("blobs") => return Ok(Route::Blob(name(n - 2)?, last)),
            Some("referrers") => return Ok(Route::Referrers(name(n - 2)?, last)),
            _ => {}
        }
    }
    Err(not_found())
}

/// The query string: every `key=value` pair in the order given. A key may repeat (`?tag=a&tag=b` pushes two tags),
/// so this is a list, not a map.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a query string as a form (`application/x-www-form-urlencoded`): pairs split at `&`, key and value
    /// at the first `=` (a pair without one has an empty value), `+` is a space and `%XX` escapes are decoded.
    /// Every string is a query, so this cannot fail: invalid escapes are kept and invalid UTF-8 is replaced, and
    /// the validators of the values then reject them.
    pub fn parse(query: &str) -> Query {
        let decode = |part: &str| percent_decode(&part.replace('+', " "));
        Query(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Drops every value of `key` (the front door drops a mount the client may not do).
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// Every key given, in order (repeated keys repeat).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> RepoName {
        RepoName::parse(name).expect("valid")
    }

    /// The metrics' route kind agrees with the grammar: for a valid path it is the parsed route's kind, for a
    /// route's shape with an invalid name it is still that route's, and other paths have none.
    #[test]
    fn route_kinds_follow_the_grammar() {
        let d = format!("sha256:{}", "a".repeat(64));
        let check = |path: &str, expected: Option<RouteKind>| {
            assert_eq!(RouteKind::of_path(path), expected, "{path}");
            if let Ok(route) = parse_route(path) {
                assert_eq!(Some(route.kind()), expected, "{path} parsed");
            }
        };
        check("/v2/", Some(RouteKind::Base));
        check("/v2", Some(RouteKind::Base));
        check("/v2/_catalog", Some(RouteKind::Catalog));
        check("/v2/a/b/tags/list", Some(RouteKind::Tags));
        check("/v2/a/manifests/latest", Some(RouteKind::Manifest));
        check("/v2/a/b/c/manifests/tags", Some(RouteKind::Manifest));
        check(&format!("/v2/a/blobs/{d}"), Some(RouteKind::Blob));
        check("/v2/a/blobs/uploads/", Some(RouteKind::Uploads));
        check("/v2/a/blobs/uploads", Some(RouteKind::Uploads));
        check("/v2/a/blobs/upl%6Fads", Some(RouteKind::Uploads));
        check("/v2/a/blobs/uploads/0f3c-id", Some(RouteKind::Upload));
        check(&format!("/v2/a/referrers/{d}"), Some(RouteKind::Referrers));
        check("/v2/manifests/latest", None);
        check("/v2/tags/list", None);
        check("/v2/blobs/uploads/", None);
        check("/v2/a/unknown/x", None);
        check("/v20/a/manifests/x", None);
        check("/healthz", None);
        check("/v2/Bad_Name/manifests/latest", Some(RouteKind::Manifest));
    }

    #[test]
    fn route_table() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases: Vec<(String, Route)> = vec![
            ("/v2/".into(), Route::Base),
            ("/v2".into(), Route::Base),
            ("/v2/_catalog".into(), Route::Catalog),
            ("/v2/a/tags/list".into(), Route::Tags(repo("a"))),
            ("/v2/a/b/c/tags/list".into(), Route::Tags(repo("a/b/c"))),
            (
                "/v2/a/manifests/latest".into(),
                Route::Manifest(repo("a"), "latest".into()),
            ),
            (
                format!("/v2/x/y/manifests/{d}"),
                Route::Manifest(repo("x/y"), d.clone()),
            ),
            (
                format!("/v2/x/manifests/{}", d.replace(':', "%3A")),
                Route::Manifest(repo("x"), d.clone()),
            ),
            (
                format!("/v2/x/blobs/{d}"),
                Route::Blob(repo("x"), d.clone()),
            ),
            ("/v2/x/blobs/uploads/".into(), Route::Uploads(repo("x"))),
            ("/v2/x/blobs/uploads".into(), Route::Uploads(repo("x"))),
            (
                "/v2/x/y/blobs/uploads/abc".into(),
                Route::Upload(repo("x/y"), "abc".into()),
            ),
            (
                format!("/v2/x/referrers/{d}"),
                Route::Referrers(repo("x"), d.clone()),
            ),
            // Repositories may be named like the resources.
            (
                "/v2/blobs/uploads/blobs/uploads/".into(),
                Route::Uploads(repo("blobs/uploads")),
            ),
            (
                "/v2/manifests/manifests/v1".into(),
                Route::Manifest(repo("manifests"), "v1".into()),
            ),
            (
                "/v2/tags/list/tags/list".into(),
                Route::Tags(repo("tags/list")),
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(parse_route(&path).ok(), Some(expected), "{path}");
        }
    }

    #[test]
    fn query_keeps_repeated_keys_in_order() {
        let query = Query::parse("tag=a&digest=sha256%3Ax&tag=b&tag=a%2Bb&empty=");
        assert_eq!(query.get_all("tag").collect::<Vec<_>>(), ["a", "b", "a+b"]);
        assert_eq!(query.get("tag"), Some("a"));
        assert_eq!(query.get("digest"), Some("sha256:x"));
        assert_eq!(query.get("empty"), Some(""));
        assert_eq!(query.get("missing"), None);
        assert_eq!(query.get_all("missing").count(), 0);
        assert_eq!(Query::parse(""), Query::default());
    }

    #[test]
    fn query_decodes_as_a_form() {
        let query = Query::parse("a+b=c+d&&bare&x=1=2&bad=%zz%4&utf8=%C3%A9&broken=%FF");
        let pairs: Vec<(&str, &str)> = query
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a b", "c d"),
                ("bare", ""),
                ("x", "1=2"),
                ("bad", "%zz%4"),
                ("utf8", "é"),
                ("broken", "\u{FFFD}"),
            ]
        );
    }

    #[test]
    fn bad_paths() {
        for path in [
            "/v2/x",
            "/v2/manifests/v1",
            "/v2/x/unknown/y",
            "/v2/tags/list",
            "/v3/x/tags/list",
            "/v20/x/tags/list",
            "/v2x/manifests/v1",
        ] {
            assert!(
                matches!(parse_route(path), Err(RouteError::NotFound(_))),
                "{path}"
            );
        }
        for path in [
            "/v2/A/tags/list",
            "/v2/a/../b/manifests/v1",
            "/v2/a//b/blobs/x",
            "/v2/a%2Fb/tags/list",
        ] {
            assert!(
                matches!(
                    parse_route(path),
                    Err(RouteError::Name(NameError::Repository(_)))
                ),
                "{path}"
            );
        }
    }
}
