//! Authentication through the real binary: `/auth/token` with htpasswd users (GET and the OAuth2 POST), the
//! htpasswd reload, failed logins refused for a while (429), the token key in the cert dir, and ServiceAccount tokens checked with a real
//! kube-apiserver's TokenReview.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::support::{poll_until, write_file, Berth, Options};

/// bcrypt at its lowest cost: the tests check behaviour, not the cost.
fn htpasswd_line(user: &str, password: &str) -> String {
    format!(
        "{user}:{}\n",
        bcrypt::hash(password, 4).expect("bcrypt hash")
    )
}

fn berth_with_users(lines: &str, extra_args: &[&str]) -> Berth {
    Berth::start(Options {
        plain_http: true,
        htpasswd: Some(lines.to_owned()),
        extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    })
}

/// The claims of a JWT (not verified: berth verifies; the test reads what it granted).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// `GET /auth/token` with `query`, as `user:password` if given.
fn get_token(
    berth: &Berth,
    client: &Client,
    query: &str,
    credentials: Option<(&str, &str)>,
) -> reqwest::blocking::Response {
    let mut request = client.get(format!("{}/auth/token?{query}", berth.base_url));
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    request.send().expect("GET /auth/token")
}

fn json_of(response: reqwest::blocking::Response) -> Value {
    response.json().expect("a JSON body")
}

#[test]
fn the_token_endpoint_issues_tokens_to_htpasswd_users() {
    let berth = berth_with_users(&htpasswd_line("alice", "s3cret"), &[]);
    let client = berth.client();
    let response = get_token(
        &berth,
        &client,
        "service=berth&scope=repository:team-a/app:pull,push&scope=repository:team-b/lib:pull",
        Some(("alice", "s3cret")),
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body = json_of(response);
    let token = body["token"].as_str().expect("token");
    assert_eq!(body["access_token"].as_str(), Some(token));
    assert_eq!(body["expires_in"], 300);
    assert!(
        body["issued_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20),
        "{body}"
    );
    let claims = claims_of(token);
    assert_eq!(claims["iss"], "berth");
    assert_eq!(claims["aud"], "berth");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["berth.dev/identity"]["kind"], "user");
    // The grant never exceeds what was asked, per repository.
    for entry in claims["access"].as_array().expect("access") {
        let asked: &[&str] = match entry["name"].as_str() {
            Some("team-a/app") => &["pull", "push"],
            Some("team-b/lib") => &["pull"],
            other => panic!("granted a repository not asked for: {other:?}"),
        };
        for action in entry["actions"].as_array().expect("actions") {
            assert!(asked.contains(&action.as_str().unwrap_or("")), "{claims}");
        }
    }

    // Without credentials: a token for anonymous.
    let anonymous = json_of(get_token(
        &berth,
        &client,
        "service=berth&scope=repository:team-a/app:pull",
        None,
    ));
    assert_eq!(
        claims_of(anonymous["token"].as_str().expect("token"))["sub"],
        "anonymous"
    );

    // The OAuth2 form, as containerd and oras send it; then the token as a refresh token names alice again.
    let response = client
        .post(format!("{}/auth/token", berth.base_url))
        .form(&[
            ("grant_type", "password"),
            ("service", "berth"),
            ("client_id", "test"),
            ("username", "alice"),
            ("password", "s3cret"),
            (
                "scope",
                "repository:team-a/app:pull repository:team-b/lib:pull",
            ),
        ])
        .send()
        .expect("POST /auth/token");
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response);
    let token = body["access_token"].as_str().expect("access_token");
    assert_eq!(claims_of(token)["sub"], "alice");
    let refreshed = client
        .post(format!("{}/auth/token", berth.base_url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("service", "berth"),
            ("refresh_token", token),
        ])
        .send()
        .expect("POST /auth/token");
    assert_eq!(refreshed.status(), StatusCode::OK);
    assert_eq!(
        claims_of(json_of(refreshed)["access_token"].as_str().expect("token"))["sub"],
        "alice"
    );
    // A tampered token is no refresh token.
    let tampered = client
        .post(format!("{}/auth/token", berth.base_url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &format!("{token}x")),
        ])
        .send()
        .expect("POST /auth/token");
    assert_eq!(tampered.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(tampered)["error"], "invalid_client");
}

#[test]
fn the_token_endpoint_refuses_bad_input_with_the_right_status() {
    let berth = berth_with_users(&htpasswd_line("alice", "s3cret"), &[]);
    let client = berth.client();

    let wrong = get_token(&berth, &client, "service=berth", Some(("alice", "nope")));
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some(r#"Basic realm="berth""#)
    );
    let body = json_of(wrong);
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("alice") && !message.contains("nope"),
        "{body}"
    );

    // Each case: the query, the Authorization header (None: alice's good credentials), the status, the code.
    let cases: &[(&str, Option<&str>, StatusCode, &str)] = &[
        (
            "service=registry.example",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            "service=berth&scope=repository:a",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            "service=berth&scope=repository:UPPER:pull",
            None,
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "service=berth&scope=repository:a%22,b:pull",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            "service=berth&scope=repository:a:pull%0d%0aX:1",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            "service=berth",
            Some("Basic !!!"),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            "service=berth&scope=%zz",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            "service=berth",
            Some("Digest abc"),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            "service=berth",
            Some("Bearer not.a.token"),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            "service=berth",
            Some("Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJiZXJ0aCIsInN1YiI6ImFkbWluIn0."),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
    ];
    for (query, header, status, code) in cases {
        let mut request = client.get(format!("{}/auth/token?{query}", berth.base_url));
        request = match header {
            Some(header) => request.header("authorization", *header),
            None => request.basic_auth("alice", Some("s3cret")),
        };
        let response = request.send().expect("GET /auth/token");
        assert_eq!(response.status(), *status, "{query} {header:?}");
        assert_eq!(
            json_of(response)["errors"][0]["code"],
            *code,
            "{query} {header:?}"
        );
    }
    let huge = format!("Bearer {}", "a".repeat(16 * 1024));
    let response = client
        .get(format!("{}/auth/token?service=berth", berth.base_url))
        .header("authorization", huge)
        .send()
        .expect("GET /auth/token");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    for body in [
        format!("grant_type=password&password={}", "a".repeat(100 * 1024)),
        "grant_type=password&grant_type=password&password=x".to_owned(),
    ] {
        let response = client
            .post(format!("{}/auth/token", berth.base_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .expect("POST /auth/token");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json_of(response)["error"], "invalid_request");
    }
    let response = client
        .post(format!("{}/auth/token", berth.base_url))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .expect("POST /auth/token");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(response)["error"], "unsupported_grant_type");
}

#[test]
fn htpasswd_changes_apply_and_a_bad_file_keeps_the_last_good_one() {
    let berth = berth_with_users(&htpasswd_line("alice", "s3cret"), &[]);
    let client = berth.client();
    let status_of = |user: &str, password: &str| {
        get_token(&berth, &client, "service=berth", Some((user, password))).status()
    };
    assert_eq!(status_of("bob", "pw"), StatusCode::UNAUTHORIZED);
    write_file(
        berth.htpasswd_path(),
        htpasswd_line("alice", "s3cret") + &htpasswd_line("bob", "pw"),
    );
    poll_until(Duration::from_secs(10), "bob can log in", || {
        (status_of("bob", "pw") == StatusCode::OK).then_some(())
    });
    write_file(
        berth.htpasswd_path(),
        "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
    );
    let readyz: Value = poll_until(Duration::from_secs(10), "readyz names the bad line", || {
        let readyz: Value = client
            .get(format!("{}/readyz", berth.base_url))
            .send()
            .ok()?
            .json()
            .ok()?;
        readyz["auth"]["htpasswd"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("line 1") && e.contains("alice"))
            .then_some(readyz)
    });
    assert!(!readyz.to_string().contains("W6ph5"), "{readyz}");
    assert_eq!(readyz["auth"]["htpasswd"]["users"], 2);
    assert_eq!(status_of("bob", "pw"), StatusCode::OK);
}

#[test]
fn failed_logins_are_slowed_per_client() {
    let berth = berth_with_users(&htpasswd_line("alice", "s3cret"), &[]);
    let client = berth.client();
    for _ in 0..6 {
        assert_eq!(
            get_token(&berth, &client, "service=berth", Some(("alice", "guess"))).status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Past the free failures, the address is refused at once, without a check (the right password too), and
    // told when to come back; then the right password works again.
    let refused = get_token(&berth, &client, "service=berth", Some(("alice", "s3cret")));
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body = json_of(refused);
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "too many failed logins from 127.0.0.1; retry in 1s"
    );
    poll_until(
        Duration::from_secs(5),
        "the right password to work after the refusal period",
        || {
            (get_token(&berth, &client, "service=berth", Some(("alice", "s3cret"))).status()
                == StatusCode::OK)
                .then_some(())
        },
    );
    assert!(berth
        .log()
        .contains("failed login of user \"alice\" from 127.0.0.1"));
    assert!(!berth.log().contains("guess"), "a password reached the log");
}

#[test]
fn the_token_key_lives_in_the_cert_dir_and_survives_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mut berth = Berth::start(Options {
        htpasswd: Some(htpasswd_line("alice", "s3cret")),
        ..Options::default()
    });
    let key = berth.cert_dir.join("token.key");
    let mode = std::fs::metadata(&key)
        .expect("token.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let client = berth.client();
    let token = json_of(get_token(
        &berth,
        &client,
        "service=berth",
        Some(("alice", "s3cret")),
    ))["token"]
        .as_str()
        .expect("token")
        .to_owned();
    berth.restart();
    let client = berth.client();
    let refreshed = client
        .post(format!("{}/auth/token", berth.base_url))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
        .send()
        .expect("POST /auth/token");
    assert_eq!(
        refreshed.status(),
        StatusCode::OK,
        "the key changed on restart"
    );
    assert!(!berth.log().contains("BEGIN PRIVATE KEY"));
}

#[test]
fn service_account_tokens_are_checked_with_a_real_token_review() {
    let cluster = Cluster::start();
    cluster.kubectl_ok(&["create", "namespace", "team-a"]);
    cluster.kubectl_ok(&["create", "serviceaccount", "ci", "-n", "team-a"]);
    let berth = Berth::start(Options {
        plain_http: true,
        htpasswd: Some(htpasswd_line("alice", "s3cret")),
        extra_args: vec![
            "--token-review".into(),
            "--token-cache-ttl".into(),
            "2s".into(),
        ],
        env: vec![(
            "KUBECONFIG".into(),
            cluster.kubeconfig.display().to_string(),
        )],
        ..Options::default()
    });
    let client = berth.client();
    let token = cluster.create_token("team-a", "ci", "berth");

    // As the password of any user name, and as a Bearer token.
    let body = json_of(get_token(
        &berth,
        &client,
        "service=berth",
        Some(("ci", &token)),
    ));
    let issued = claims_of(body["token"].as_str().expect("token"));
    assert_eq!(issued["sub"], "system:serviceaccount:team-a:ci");
    // berth's token of a ServiceAccount lives no longer than TokenReview's answer is kept (2 s here), but not
    // under the spec's 60 s.
    assert_eq!(body["expires_in"], 60, "{body}");
    assert_eq!(
        issued["exp"]
            .as_u64()
            .zip(issued["iat"].as_u64())
            .map(|(exp, iat)| exp - iat),
        Some(60)
    );
    assert_eq!(issued["berth.dev/identity"]["kind"], "serviceAccount");
    assert!(
        issued["berth.dev/identity"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "system:serviceaccounts:team-a")),
        "{issued}"
    );
    let bearer = client
        .get(format!("{}/auth/token?service=berth", berth.base_url))
        .bearer_auth(&token)
        .send()
        .expect("GET /auth/token");
    assert_eq!(bearer.status(), StatusCode::OK);

    // containerd sends a password without a user name as the refresh token of the OAuth2 form.
    let oauth = client
        .post(format!("{}/auth/token", berth.base_url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("service", "berth"),
            ("client_id", "containerd-client"),
            ("refresh_token", &token),
            ("scope", "repository:team-a/app:pull"),
        ])
        .send()
        .expect("POST /auth/token");
    assert_eq!(oauth.status(), StatusCode::OK);
    assert_eq!(
        claims_of(json_of(oauth)["access_token"].as_str().expect("token"))["sub"],
        "system:serviceaccount:team-a:ci"
    );
    // berth's token of a ServiceAccount is not renewable without the ServiceAccount token.
    let refresh = client
        .post(format!("{}/auth/token", berth.base_url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["token"].as_str().expect("token")),
        ])
        .send()
        .expect("POST /auth/token");
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(refresh)["error"], "invalid_grant");

    // Another audience is refused.
    let other = cluster.create_token("team-a", "ci", "vault");
    assert_eq!(
        get_token(&berth, &client, "service=berth", Some(("ci", &other))).status(),
        StatusCode::UNAUTHORIZED
    );
    // A deleted ServiceAccount stops working once the cached answer (2 s) is gone.
    cluster.kubectl_ok(&["delete", "serviceaccount", "ci", "-n", "team-a"]);
    poll_until(
        Duration::from_secs(15),
        "the deleted ServiceAccount is refused",
        || {
            (get_token(&berth, &client, "service=berth", Some(("ci", &token))).status()
                == StatusCode::UNAUTHORIZED)
                .then_some(())
        },
    );

    // The API server stops answering: ServiceAccount logins fail closed within the timeout, htpasswd logins work.
    cluster.kubectl_ok(&["create", "serviceaccount", "ci2", "-n", "team-a"]);
    let fresh = cluster.create_token("team-a", "ci2", "berth");
    let pids: Vec<String> = cluster.pids().iter().map(u32::to_string).collect();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .args(&pids)
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pids:?}");
    };
    signal("STOP");
    let started = Instant::now();
    let response = get_token(&berth, &client, "service=berth", Some(("ci2", &fresh)));
    let waited = started.elapsed();
    let status = response.status();
    let body = json_of(response);
    let alice = get_token(&berth, &client, "service=berth", Some(("alice", "s3cret"))).status();
    signal("CONT");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot be checked now")),
        "{body}"
    );
    assert_eq!(alice, StatusCode::OK);
}

/// Issue 11 review finding 2: a flood of unknown-user logins from one address neither starves another client's
/// login of bcrypt nor queues without bound — the flood past the per-address cap is told to retry (429), and a
/// real login from elsewhere is answered promptly.
#[test]
fn a_flood_of_unknown_user_logins_does_not_starve_a_real_login() {
    let berth = berth_with_users(&htpasswd_line("alice", "s3cret"), &[]);
    let flood = 80;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(flood + 1));
    let floods: Vec<_> = (0..flood)
        .map(|i| {
            let url = format!("{}/auth/token?service=berth", berth.base_url);
            let client = berth.client();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                client
                    .get(url)
                    .basic_auth(format!("nobody{i}"), Some("guess"))
                    .send()
                    .map(|r| r.status())
                    .ok()
            })
        })
        .collect();
    let elsewhere = reqwest::blocking::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client from 127.0.0.2");
    barrier.wait();
    let started = Instant::now();
    let login = elsewhere
        .get(format!("{}/auth/token?service=berth", berth.base_url))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .expect("GET /auth/token");
    let took = started.elapsed();
    assert_eq!(login.status(), StatusCode::OK);
    assert!(
        took < Duration::from_secs(3),
        "the real login took {took:?}"
    );
    let statuses: Vec<Option<StatusCode>> = floods
        .into_iter()
        .map(|t| t.join().expect("flood thread"))
        .collect();
    assert!(
        statuses.contains(&Some(StatusCode::TOO_MANY_REQUESTS)),
        "no flooding login was told to retry: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| matches!(
            *s,
            Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED)
        )),
        "{statuses:?}"
    );
}
