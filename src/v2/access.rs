//! What a `/v2` request needs to be allowed, and how berth asks for it: the route and the method become a
//! [`Needed`] (an action on a repository, the catalog, or just a verified identity), and a refusal without
//! sufficient credentials becomes a distribution token-flow challenge (`WWW-Authenticate: Bearer realm=…`).
//! Pure: no I/O; the front door (`super`) authenticates, decides and answers.

use actix_web::http::Method;

use super::route::Route;
use crate::auth::Action;

/// The token service berth's tokens are issued for, named in every challenge and checked by `/auth/token`.
pub const SERVICE: &str = "berth";

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needed {
    /// `/v2/`: a verified identity (a client probing whether its credentials work, as `docker login` does).
    Authenticated,
    /// `/v2/_catalog`: the whole list of repositories (`registry:catalog:*`).
    Catalog,
    /// An action on one repository.
    Repository { repository: String, action: Action },
}

/// What `method` on `route` needs. `repository` is the name the request is authorized under: the route's own, or
/// for a proxied request the local name of the cache (`proxy/<upstream>/<repo>`, also for containerd's `?ns=`), so
/// one rule covers both spellings. Methods a route does not answer are taken as writes: an anonymous client probing
/// them gets a challenge, not the list of methods.
pub fn needed(route: &Route, method: &Method, repository: Option<&str>) -> Needed {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let action = match route {
        Route::Base => return Needed::Authenticated,
        Route::Catalog => return Needed::Catalog,
        Route::Tags(_) | Route::Referrers(..) if read => Action::Pull,
        Route::Manifest(..) | Route::Blob(..) if read => Action::Pull,
        Route::Manifest(..) | Route::Blob(..) if *method == Method::DELETE => Action::Delete,
        // An upload's status (GET) and cancellation (DELETE) belong to the pusher, like the rest of the upload.
        _ => Action::Push,
    };
    let repository = repository
        .map(str::to_owned)
        .or_else(|| route.repository().map(|r| r.as_str().to_owned()))
        .unwrap_or_default();
    Needed::Repository { repository, action }
}

/// The scope a client asks `/auth/token` for, to be allowed what it needs: a push asks for `pull,push`, as docker
/// and podman do (a push reads blobs and manifests back).
pub fn scope(needed: &Needed) -> Option<String> {
    match needed {
        Needed::Authenticated => None,
        Needed::Catalog => Some("registry:catalog:*".into()),
        Needed::Repository { repository, action } => {
            let actions = match action {
                Action::Push => "pull,push",
                other => other.as_str(),
            };
            Some(format!("repository:{repository}:{actions}"))
        }
    }
}

/// The scope a refused request attempted, as the event log records it: `repository:<name>:<action>` (the one
/// action, where [`scope`] asks for `pull,push`), `registry:catalog:*`, or `None` for the base endpoint.
pub fn attempted_scope(needed: &Needed) -> Option<String> {
    match needed {
        Needed::Authenticated => None,
        Needed::Catalog => Some("registry:catalog:*".into()),
        Needed::Repository { repository, action } => {
            Some(format!("repository:{repository}:{}", action.as_str()))
        }
    }
}

/// The token endpoint's URL for a request that reached berth as `scheme://host`. The host comes from the client's
/// own request, so a client is sent back to the address it used; a host that is not a plain `name[:port]` or
/// `[v6]:port` (quotes, commas, spaces: anything that could break the header) is replaced by `fallback`.
pub fn realm(scheme: &str, host: &str, fallback: &str) -> String {
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    let host = if plain { host } else { fallback };
    format!("{scheme}://{host}/auth/token")
}

/// The `WWW-Authenticate` value of a 401: where to get a token, for which service, and (when the request needs
/// one) the scope to ask for.
pub fn challenge(realm: &str, needed: &Needed) -> String {
    match scope(needed) {
        Some(scope) => format!(r#"Bearer realm="{realm}",service="{SERVICE}",scope="{scope}""#),
        None => format!(r#"Bearer realm="{realm}",service="{SERVICE}""#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::names::RepoName;

    fn repo(name: &str) -> RepoName {
        RepoName::parse(name).expect("valid name")
    }

    #[test]
    fn every_route_and_method_needs_one_thing() {
        let d = "sha256:".to_owned() + &"a".repeat(64);
        let on = |repository: &str, action| Needed::Repository {
            repository: repository.into(),
            action,
        };
        let cases = [
            (Route::Base, Method::GET, Needed::Authenticated),
            (Route::Catalog, Method::GET, Needed::Catalog),
            (Route::Tags(repo("a")), Method::GET, on("a", Action::Pull)),
            (
                Route::Manifest(repo("a/b"), "v1".into()),
                Method::HEAD,
                on("a/b", Action::Pull),
            ),
            (
                Route::Manifest(repo("a"), "v1".into()),
                Method::PUT,
                on("a", Action::Push),
            ),
            (
                Route::Manifest(repo("a"), d.clone()),
                Method::DELETE,
                on("a", Action::Delete),
            ),
            (
                Route::Blob(repo("a"), d.clone()),
                Method::GET,
                on("a", Action::Pull),
            ),
            (
                Route::Blob(repo("a"), d.clone()),
                Method::DELETE,
                on("a", Action::Delete),
            ),
            (
                Route::Uploads(repo("a")),
                Method::POST,
                on("a", Action::Push),
            ),
            (
                Route::Upload(repo("a"), "id".into()),
                Method::GET,
                on("a", Action::Push),
            ),
            (
                Route::Upload(repo("a"), "id".into()),
                Method::DELETE,
                on("a", Action::Push),
            ),
            (
                Route::Referrers(repo("a"), d.clone()),
                Method::GET,
                on("a", Action::Pull),
            ),
            // Not answered: taken as a write.
            (Route::Tags(repo("a")), Method::POST, on("a", Action::Push)),
            (
                Route::Manifest(repo("a"), "v1".into()),
                Method::PATCH,
                on("a", Action::Push),
            ),
        ];
        for (route, method, expected) in cases {
            assert_eq!(
                needed(&route, &method, None),
                expected,
                "{method} {route:?}"
            );
        }
        // A proxied request is authorized under the cache's name.
        assert_eq!(
            needed(
                &Route::Manifest(repo("library/nginx"), "1".into()),
                &Method::GET,
                Some("proxy/docker.io/library/nginx")
            ),
            on("proxy/docker.io/library/nginx", Action::Pull)
        );
    }

    #[test]
    fn challenges_name_the_realm_the_service_and_the_scope() {
        let realm = realm("https", "registry.example:5000", "berth");
        assert_eq!(realm, "https://registry.example:5000/auth/token");
        let push = Needed::Repository {
            repository: "team-a/app".into(),
            action: Action::Push,
        };
        assert_eq!(
            challenge(&realm, &push),
            r#"Bearer realm="https://registry.example:5000/auth/token",service="berth",scope="repository:team-a/app:pull,push""#
        );
        assert_eq!(
            challenge(&realm, &Needed::Authenticated),
            r#"Bearer realm="https://registry.example:5000/auth/token",service="berth""#
        );
        assert_eq!(
            scope(&Needed::Catalog).as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(
            scope(&Needed::Repository {
                repository: "x".into(),
                action: Action::Delete
            })
            .as_deref(),
            Some("repository:x:delete")
        );
    }

    #[test]
    fn the_attempted_scope_names_the_one_action_refused() {
        let check = |needed: Needed, expected: Option<&str>| {
            assert_eq!(attempted_scope(&needed).as_deref(), expected, "{needed:?}");
        };
        let repository = |action| Needed::Repository {
            repository: "team-a/app".into(),
            action,
        };
        check(repository(Action::Push), Some("repository:team-a/app:push"));
        check(repository(Action::Pull), Some("repository:team-a/app:pull"));
        check(
            repository(Action::Delete),
            Some("repository:team-a/app:delete"),
        );
        check(Needed::Catalog, Some("registry:catalog:*"));
        check(Needed::Authenticated, None);
    }

    #[test]
    fn a_host_that_could_break_the_header_is_not_echoed() {
        for host in [
            "",
            "evil\",service=\"x",
            "a b",
            "a,b",
            "a\r\nX-Injected: 1",
            &"a".repeat(300),
        ] {
            assert_eq!(
                realm("https", host, "berth.berth-system.svc"),
                "https://berth.berth-system.svc/auth/token",
                "{host:?}"
            );
        }
        assert_eq!(
            realm("http", "[::1]:5000", "x"),
            "http://[::1]:5000/auth/token"
        );
    }
}
