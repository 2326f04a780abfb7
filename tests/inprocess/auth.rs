//! The front door with auth on, in process: who is asking (anonymous, Basic credentials straight to `/v2`, berth's
//! tokens from `/auth/token`) and what they get — the token-flow challenge for too little, 403 `DENIED` naming the
//! identity, action, repository and rule for what the rules refuse, a token checked against what it grants, the
//! catalog for admins only, and a cross-repository mount that the source's rules do not allow turned into a plain
//! upload. The review's regressions too: a user's tokens end with a changed password or the user's removal, a
//! chain of refreshes ends a day after the login, a throttled address gets 429 without a check, and the password
//! grant keeps a `:` in a user name.

use actix_web::test::TestRequest;
use base64::Engine;
use serde_json::Value;

use super::{Answer, Fixture};
use crate::api::{content, sha256};
use berth::config::PolicySource;

const POLICY: &str = r#"
access:
  anonymous: none
  admins: ['user:ops']
  rules:
    - name: bob-reads-team-a
      repositories: ['team-a/.*']
      subjects: ['user:bob']
      actions: [pull]
    - name: alice-team-a
      repositories: ['team-a/.*']
      subjects: ['user:alice']
      actions: [pull, push]
"#;

/// A berth with auth on: htpasswd users alice, bob and ops (password `secret`, bcrypt cost 4 to keep it fast) and
/// [`POLICY`]. The returned directory holds both files.
async fn berth_with_auth() -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let hash = bcrypt::hash("secret", 4).expect("bcrypt");
    let users: String = ["alice", "bob", "ops"]
        .iter()
        .map(|user| format!("{user}:{hash}\n"))
        .collect();
    std::fs::write(dir.path().join("htpasswd"), users).expect("write htpasswd");
    std::fs::write(dir.path().join("policy.yaml"), POLICY).expect("write policy");
    let htpasswd = dir.path().join("htpasswd");
    let policy = dir.path().join("policy.yaml");
    let fixture = Fixture::with_config(|config| {
        config.auth.htpasswd = Some(htpasswd);
        config.policy = PolicySource::File(policy);
    })
    .await;
    (fixture, dir)
}

fn basic(user: &str, password: &str) -> (&'static str, String) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    ("authorization", format!("Basic {encoded}"))
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// `GET uri` with `credentials` (an `Authorization` header).
async fn get(fixture: &Fixture, uri: &str, credentials: (&'static str, String)) -> Answer {
    let request = TestRequest::get().uri(uri).insert_header(credentials);
    fixture.berth.send(request).await
}

/// `POST uri` (no body) with `credentials`.
async fn post(fixture: &Fixture, uri: &str, credentials: (&'static str, String)) -> Answer {
    let request = TestRequest::post().uri(uri).insert_header(credentials);
    fixture.berth.send(request).await
}

/// A token from `/auth/token` for `user` and the `scopes`.
async fn token(fixture: &Fixture, user: &str, scopes: &[&str]) -> String {
    let query: String = scopes.iter().map(|s| format!("&scope={s}")).collect();
    let answer = get(
        fixture,
        &format!("/auth/token?service=berth{query}"),
        basic(user, "secret"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body: Value = serde_json::from_slice(&answer.body).expect("token JSON");
    body["token"].as_str().expect("token").to_owned()
}

/// Pushes a blob to `repo` with `credentials` and returns the status.
async fn push_blob(fixture: &Fixture, repo: &str, credentials: (&str, String), seed: u64) -> u16 {
    let blob = content(1000, seed);
    let digest = sha256(&blob);
    fixture
        .berth
        .send(
            TestRequest::post()
                .uri(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
                .insert_header(credentials)
                .set_payload(blob),
        )
        .await
        .status
}

#[actix_web::test]
async fn anonymous_clients_are_challenged_with_the_scope_they_need() {
    let (fixture, _dir) = berth_with_auth().await;
    let base = fixture.berth.send(TestRequest::get().uri("/v2/")).await;
    base.expect_error(401, "UNAUTHORIZED");
    assert_eq!(
        base.header("www-authenticate"),
        r#"Bearer realm="http://localhost:8080/auth/token",service="berth""#
    );
    let pull = fixture
        .berth
        .send(TestRequest::get().uri("/v2/team-a/app/manifests/v1"))
        .await;
    let message = pull.expect_error(401, "UNAUTHORIZED");
    assert_eq!(message, "authentication required to pull team-a/app");
    assert_eq!(
        pull.header("www-authenticate"),
        r#"Bearer realm="http://localhost:8080/auth/token",service="berth",scope="repository:team-a/app:pull""#
    );
    let push = fixture
        .berth
        .send(TestRequest::post().uri("/v2/team-a/app/blobs/uploads/"))
        .await;
    push.expect_error(401, "UNAUTHORIZED");
    assert!(
        push.header("www-authenticate")
            .ends_with(r#"scope="repository:team-a/app:pull,push""#),
        "{}",
        push.header("www-authenticate")
    );
}

#[actix_web::test]
async fn basic_credentials_straight_to_v2_are_decided_by_the_rules() {
    let (fixture, _dir) = berth_with_auth().await;
    let base = get(&fixture, "/v2/", basic("alice", "secret")).await;
    assert_eq!(base.status, 200);
    assert_eq!(
        push_blob(&fixture, "team-a/app", basic("alice", "secret"), 1).await,
        201
    );
    let refused = post(
        &fixture,
        "/v2/team-b/app/blobs/uploads/",
        basic("alice", "secret"),
    )
    .await;
    let message = refused.expect_error(403, "DENIED");
    assert_eq!(
        message,
        "user:alice may not push team-b/app: no rule allows it"
    );
    // The first matching rule decides: bob's rule lists pull only.
    let bob = post(
        &fixture,
        "/v2/team-a/app/blobs/uploads/",
        basic("bob", "secret"),
    )
    .await;
    assert_eq!(
        bob.expect_error(403, "DENIED"),
        r#"user:bob may not push team-a/app: rule "bob-reads-team-a""#
    );
    // A wrong password is a challenge again, not a denial.
    let wrong = get(
        &fixture,
        "/v2/team-a/app/tags/list",
        basic("alice", "wrong"),
    )
    .await;
    wrong.expect_error(401, "UNAUTHORIZED");
    assert!(wrong
        .header("www-authenticate")
        .starts_with("Bearer realm="));
    for header in [
        "Basic",
        "Basic !!!",
        "Negotiate abc",
        "Bearer",
        "Bearer a.b.c",
    ] {
        let answer = get(
            &fixture,
            "/v2/team-a/app/tags/list",
            ("authorization", header.to_string()),
        )
        .await;
        answer.expect_error(401, "UNAUTHORIZED");
        assert!(
            answer
                .header("www-authenticate")
                .starts_with("Bearer realm="),
            "{header}"
        );
    }
}

#[actix_web::test]
async fn a_token_allows_what_it_grants_and_a_denial_names_the_rule() {
    let (fixture, _dir) = berth_with_auth().await;
    // A partial grant: team-b is not alice's, and the token simply leaves it out.
    let alice = token(
        &fixture,
        "alice",
        &[
            "repository:team-a/app:pull,push",
            "repository:team-b/app:pull",
        ],
    )
    .await;
    assert_eq!(
        push_blob(&fixture, "team-a/app", bearer(&alice), 2).await,
        201
    );
    let team_b = get(&fixture, "/v2/team-b/app/tags/list", bearer(&alice)).await;
    assert_eq!(
        team_b.expect_error(403, "DENIED"),
        "user:alice may not pull team-b/app: no rule allows it"
    );
    // A token asked for pull only: the rules would allow the push, so the client is told to get a token for it.
    let pull_only = token(&fixture, "alice", &["repository:team-a/app:pull"]).await;
    let push = post(
        &fixture,
        "/v2/team-a/app/blobs/uploads/",
        bearer(&pull_only),
    )
    .await;
    assert_eq!(
        push.expect_error(401, "UNAUTHORIZED"),
        "the token does not grant push on team-a/app"
    );
    assert!(push
        .header("www-authenticate")
        .ends_with(r#"scope="repository:team-a/app:pull,push""#));
    // bob asked for push and got pull only; his push is refused by his rule.
    let bob = token(&fixture, "bob", &["repository:team-a/app:pull,push"]).await;
    let push = post(&fixture, "/v2/team-a/app/blobs/uploads/", bearer(&bob)).await;
    assert_eq!(
        push.expect_error(403, "DENIED"),
        r#"user:bob may not push team-a/app: rule "bob-reads-team-a""#
    );
    // A token opens /v2/ too (clients probe it with the token they got), but an anonymous client's does not.
    let base = get(&fixture, "/v2/", bearer(&bob)).await;
    assert_eq!(base.status, 200);
    let anonymous = fixture
        .berth
        .send(TestRequest::get().uri("/auth/token?service=berth&scope=repository:team-a/app:pull"))
        .await;
    assert_eq!(anonymous.status, 200);
    let anonymous: Value = serde_json::from_slice(&anonymous.body).expect("token JSON");
    let base = get(
        &fixture,
        "/v2/",
        bearer(anonymous["token"].as_str().unwrap_or_default()),
    )
    .await;
    base.expect_error(401, "UNAUTHORIZED");
}

#[actix_web::test]
async fn the_catalog_is_for_admins() {
    let (fixture, _dir) = berth_with_auth().await;
    let alice = get(&fixture, "/v2/_catalog", basic("alice", "secret")).await;
    assert_eq!(
        alice.expect_error(403, "DENIED"),
        "user:alice may not list the catalog: only admins may"
    );
    let ops = get(&fixture, "/v2/_catalog", basic("ops", "secret")).await;
    assert_eq!(ops.status, 200, "{:?}", ops.body);
    let catalog_token = token(&fixture, "ops", &["registry:catalog:*"]).await;
    let with_token = get(&fixture, "/v2/_catalog", bearer(&catalog_token)).await;
    assert_eq!(with_token.status, 200, "{:?}", with_token.body);
    // alice asked for the catalog and got a token without it: refused, as with her password.
    let alice_token = token(&fixture, "alice", &["registry:catalog:*"]).await;
    let refused = get(&fixture, "/v2/_catalog", bearer(&alice_token)).await;
    refused.expect_error(403, "DENIED");
    // An admin's token without the scope: the client is told to ask for it.
    let ops_token = token(&fixture, "ops", &["repository:a/b:pull"]).await;
    let challenged = get(&fixture, "/v2/_catalog", bearer(&ops_token)).await;
    challenged.expect_error(401, "UNAUTHORIZED");
    assert!(challenged
        .header("www-authenticate")
        .ends_with(r#"scope="registry:catalog:*""#));
}

#[actix_web::test]
async fn a_mount_from_a_repository_the_client_may_not_pull_is_a_plain_upload() {
    let (fixture, _dir) = berth_with_auth().await;
    let blob = content(1000, 7);
    let digest = sha256(&blob);
    let pushed = fixture
        .berth
        .send(
            TestRequest::post()
                .uri(&format!("/v2/secret/app/blobs/uploads/?digest={digest}"))
                .insert_header(basic("ops", "secret"))
                .set_payload(blob),
        )
        .await;
    assert_eq!(pushed.status, 201);
    let mount = |user: &'static str| {
        TestRequest::post()
            .uri(&format!(
                "/v2/team-a/app/blobs/uploads/?mount={digest}&from=secret/app"
            ))
            .insert_header(basic(user, "secret"))
    };
    // alice may push team-a but not pull secret/app: no mount, an upload session instead.
    let alice = fixture.berth.send(mount("alice")).await;
    assert_eq!(alice.status, 202, "{:?}", alice.body);
    let blob_in_team_a = get(
        &fixture,
        &format!("/v2/team-a/app/blobs/{digest}"),
        basic("alice", "secret"),
    )
    .await;
    blob_in_team_a.expect_error(404, "BLOB_UNKNOWN");
    // An admin may pull both: the mount happens.
    let ops = fixture.berth.send(mount("ops")).await;
    assert_eq!(ops.status, 201, "{:?}", ops.body);
}

#[actix_web::test]
async fn forged_altered_and_expired_tokens_are_challenged_not_served() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (fixture, _dir) = berth_with_auth().await;
    let alice = token(&fixture, "alice", &["repository:team-a/app:pull"]).await;
    let parts: Vec<&str> = alice.split('.').collect();
    assert_eq!(parts.len(), 3, "{alice}");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64")).expect("json");
    // The same claims made an admin's, with everything granted.
    let mut admin = claims.clone();
    admin["sub"] = "ops".into();
    admin["berth.dev/identity"] = serde_json::json!({"kind": "user", "name": "ops"});
    admin["access"] = serde_json::json!([
        {"type": "repository", "name": "team-b/app", "actions": ["pull", "push", "delete"]}
    ]);
    let admin_payload = URL_SAFE_NO_PAD.encode(admin.to_string());
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"none"}"#);
    let hs256_header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"HS256"}"#);
    let forged = [
        ("alg none", format!("{none_header}.{admin_payload}.")),
        (
            "alg HS256",
            format!("{hs256_header}.{admin_payload}.{}", parts[2]),
        ),
        (
            "claims changed under alice's signature",
            format!("{}.{admin_payload}.{}", parts[0], parts[2]),
        ),
        ("truncated", alice[..alice.len() - 10].to_owned()),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
    ];
    for (what, token) in forged {
        let answer = get(&fixture, "/v2/team-b/app/tags/list", bearer(&token)).await;
        answer.expect_error(401, "UNAUTHORIZED");
        assert!(
            answer
                .header("www-authenticate")
                .starts_with("Bearer realm="),
            "{what}"
        );
    }
    // alice's genuine token works until it expires (5 minutes by default), then is challenged.
    let tags = |token: String| {
        TestRequest::get()
            .uri("/v2/team-a/app/tags/list")
            .insert_header(bearer(&token))
    };
    let before = fixture.berth.send(tags(alice.clone())).await;
    before.expect_error(404, "NAME_UNKNOWN");
    fixture
        .clock
        .advance(std::time::Duration::from_secs(6 * 60));
    let after = fixture.berth.send(tags(alice)).await;
    after.expect_error(401, "UNAUTHORIZED");
}

/// Replaces the htpasswd file in force with `text`, as a reload of the file does.
fn set_htpasswd(fixture: &Fixture, text: &str) {
    fixture
        .berth
        .state
        .auth
        .htpasswd()
        .expect("htpasswd")
        .apply(text)
        .expect("valid htpasswd");
}

/// An htpasswd line for `user` with `password` (bcrypt cost 4, a new salt each time).
fn line(user: &str, password: &str) -> String {
    format!("{user}:{}\n", bcrypt::hash(password, 4).expect("bcrypt"))
}

/// Issue 11 review finding 1: a berth token of an htpasswd user is bound to the user's htpasswd entry — a changed
/// password ends it at once at `/v2` and for refreshes, a removed user's token stops pushing at once.
#[actix_web::test]
async fn a_changed_password_or_a_removed_user_ends_their_tokens_at_once() {
    let (fixture, dir) = berth_with_auth().await;
    let alice = token(&fixture, "alice", &["repository:team-a/app:pull,push"]).await;
    let bob = token(&fixture, "bob", &["repository:team-a/app:pull"]).await;
    let tags = |token: &str| {
        TestRequest::get()
            .uri("/v2/team-a/app/tags/list")
            .insert_header(bearer(token))
    };
    fixture
        .berth
        .send(tags(&alice))
        .await
        .expect_error(404, "NAME_UNKNOWN");
    fixture
        .berth
        .send(tags(&bob))
        .await
        .expect_error(404, "NAME_UNKNOWN");
    // bob's line stays as it is (a line written again, even with the same password, has a new salt and ends
    // the user's tokens too).
    let bob_line = std::fs::read_to_string(dir.path().join("htpasswd"))
        .expect("htpasswd")
        .lines()
        .find(|l| l.starts_with("bob:"))
        .expect("bob")
        .to_owned();
    set_htpasswd(
        &fixture,
        &format!("{}{bob_line}\n", line("alice", "changed")),
    );
    let refused = fixture.berth.send(tags(&alice)).await;
    let message = refused.expect_error(401, "UNAUTHORIZED");
    assert!(message.contains("password changed"), "{message}");
    // Nor can the old token be renewed, by either form of the refresh.
    let renew = fixture
        .berth
        .send(
            TestRequest::get()
                .uri("/auth/token?service=berth&scope=repository:team-a/app:pull")
                .insert_header(bearer(&alice)),
        )
        .await;
    assert_eq!(renew.status, 401, "{:?}", renew.body);
    let refresh = fixture
        .berth
        .send(
            TestRequest::post()
                .uri("/auth/token")
                .insert_header(("content-type", "application/x-www-form-urlencoded"))
                .set_payload(format!(
                    "grant_type=refresh_token&service=berth&refresh_token={alice}"
                )),
        )
        .await;
    assert_eq!(refresh.status, 401, "{:?}", refresh.body);
    // bob's password did not change: his token stands, until he is removed.
    fixture
        .berth
        .send(tags(&bob))
        .await
        .expect_error(404, "NAME_UNKNOWN");
    set_htpasswd(&fixture, &line("alice", "changed"));
    fixture
        .berth
        .send(tags(&bob))
        .await
        .expect_error(401, "UNAUTHORIZED");
}

/// Issue 11 review finding 7: the POST password grant takes the user name as sent — a `:` in it is not the
/// password's start.
#[actix_web::test]
async fn the_password_grant_keeps_a_colon_in_the_user_name() {
    let (fixture, _dir) = berth_with_auth().await;
    set_htpasswd(&fixture, &line("alice", "pass:word"));
    let login = |username: &str, password: &str| {
        TestRequest::post()
            .uri("/auth/token")
            .insert_header(("content-type", "application/x-www-form-urlencoded"))
            .set_payload(format!(
                "grant_type=password&service=berth&username={}&password={}",
                username.replace(':', "%3A"),
                password.replace(':', "%3A")
            ))
    };
    let wrong = fixture.berth.send(login("alice:pass", "word")).await;
    assert_eq!(wrong.status, 401, "{:?}", wrong.body);
    let right = fixture.berth.send(login("alice", "pass:word")).await;
    assert_eq!(right.status, 200, "{:?}", right.body);
    // A password or refresh token longer than an Authorization header may be is refused before anything checks
    // it (second review: the form skipped the header's bound).
    let long = "a.b.".to_owned() + &"c".repeat(9000);
    for form in [
        format!("grant_type=password&service=berth&username=ci&password={long}"),
        format!("grant_type=refresh_token&service=berth&refresh_token={long}"),
    ] {
        let answer = fixture
            .berth
            .send(
                TestRequest::post()
                    .uri("/auth/token")
                    .insert_header(("content-type", "application/x-www-form-urlencoded"))
                    .set_payload(form),
            )
            .await;
        assert_eq!(answer.status, 400, "{:?}", answer.body);
    }
}

/// Issue 11 review finding 3: an address in its refusal period after failed logins is refused at once, without a
/// check — the right password included — with 429 and `Retry-After`, at `/v2` and at the token endpoint.
#[actix_web::test]
async fn a_throttled_address_gets_429_with_retry_after_without_a_check() {
    let (fixture, _dir) = berth_with_auth().await;
    let guesser: std::net::SocketAddr = "192.0.2.7:40000".parse().expect("address");
    let tags = |user: &str, password: &str| {
        TestRequest::get()
            .uri("/v2/team-a/app/tags/list")
            .peer_addr(guesser)
            .insert_header(basic(user, password))
    };
    for _ in 0..=berth::auth::throttle::FREE_FAILURES {
        fixture
            .berth
            .send(tags("alice", "guess"))
            .await
            .expect_error(401, "UNAUTHORIZED");
    }
    let refused = fixture.berth.send(tags("alice", "secret")).await;
    let message = refused.expect_error(429, "TOOMANYREQUESTS");
    assert_eq!(
        message,
        "too many failed logins from 192.0.2.7; retry in 1s"
    );
    assert_eq!(refused.header("retry-after"), "1");
    let token = fixture
        .berth
        .send(
            TestRequest::get()
                .uri("/auth/token?service=berth")
                .peer_addr(guesser)
                .insert_header(basic("alice", "secret")),
        )
        .await;
    assert_eq!(
        (token.status, token.header("retry-after")),
        (429, "1"),
        "{:?}",
        token.body
    );
    // Once the period is over, the right password works again.
    fixture.clock.advance(berth::auth::throttle::MAX_DELAY);
    fixture
        .berth
        .send(tags("alice", "secret"))
        .await
        .expect_error(404, "NAME_UNKNOWN");
}

/// Issue 11 review finding 1: refreshes do not make a session last for ever — each keeps the login's
/// `auth_time`, and none is made 24 h after it.
#[actix_web::test]
async fn a_chain_of_refreshes_ends_a_day_after_the_login() {
    let (fixture, _dir) = berth_with_auth().await;
    let mut current = token(&fixture, "alice", &["repository:team-a/app:pull"]).await;
    let step = std::time::Duration::from_secs(4 * 60);
    let refresh = |token: &str| {
        TestRequest::get()
            .uri("/auth/token?service=berth&scope=repository:team-a/app:pull")
            .insert_header(bearer(token))
    };
    let mut elapsed = std::time::Duration::ZERO;
    let day = berth::auth::token::MAX_SESSION;
    let last = loop {
        fixture.clock.advance(step);
        elapsed += step;
        let answer = fixture.berth.send(refresh(&current)).await;
        if answer.status != 200 {
            break answer;
        }
        let body: Value = serde_json::from_slice(&answer.body).expect("token JSON");
        current = body["token"].as_str().expect("token").to_owned();
        assert!(
            elapsed < day,
            "a token was renewed {elapsed:?} after the login"
        );
    };
    assert_eq!(last.status, 401, "{:?}", last.body);
    assert!(elapsed >= day, "refused after only {elapsed:?}");
    let message = String::from_utf8_lossy(&last.body);
    assert!(
        message.contains("log in with its credentials again"),
        "{message}"
    );
    // A login starts a new session.
    token(&fixture, "alice", &["repository:team-a/app:pull"]).await;
}
