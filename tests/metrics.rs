//! `GET /metrics` read by the real parsers: a real Prometheus server (Debian's `prometheus`) scrapes berth over
//! TLS and the node proxy, and its query API returns the request counts the test made; `promtool check metrics`
//! passes the text berth and the node proxy serve. Issue 12.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

use crate::api::Api;
use crate::node_proxy::NodeProxy;
use crate::support::{free_port, poll_until, Berth, Options};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// A Prometheus server with its own config and storage in a temporary directory; killed on drop.
struct Prometheus {
    base: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping every second: `scrape_configs` is the YAML list of jobs.
    fn start(scrape_configs: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("berth-prometheus-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {PROMETHEUS} (tests/run.sh installs it): {e}"));
        let prometheus = Prometheus {
            base: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        let client = Client::new();
        poll_until(Duration::from_secs(30), "prometheus ready", || {
            client
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .ok()
                .filter(|r| r.status() == StatusCode::OK)
        });
        prometheus
    }

    /// The value of an instant query that returns one sample, or `None` while it returns none.
    fn query_one(&self, query: &str) -> Option<f64> {
        let answer: Value = Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", query)])
            .send()
            .ok()?
            .json()
            .ok()?;
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        let result = answer["data"]["result"].as_array()?;
        let sample = result.first()?;
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` returns `expected` (it may return less first: scrapes come every second).
    fn wait_for(&self, query: &str, expected: f64) {
        let mut last = None;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_until(Duration::from_secs(30), query, || {
                last = self.query_one(query);
                last.filter(|v| *v == expected)
            })
        }));
        if found.is_err() {
            panic!(
                "{query}: last {last:?}, expected {expected}\n--- targets ---\n{}\n--- prometheus log ---\n{}",
                self.targets(),
                std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
            );
        }
    }

    fn targets(&self) -> String {
        Client::new()
            .get(format!("{}/api/v1/targets", self.base))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The count of manifest GETs a real Prometheus scraped from berth (over TLS, verifying berth's CA) and from the
/// node proxy is the number the test sent; the admission counter has the rule that denied.
#[test]
fn a_real_prometheus_scrapes_the_request_counts() {
    let berth = Berth::start(Options::default());
    let api = Api::new(&berth);
    api.push_image("team/app", "1.0", 7);
    const GETS: usize = 5;
    for _ in 0..GETS {
        assert_eq!(
            api.get("/v2/team/app/manifests/1.0").status(),
            StatusCode::OK
        );
    }
    // Other methods, statuses and routes are other series.
    assert_eq!(
        api.head("/v2/team/app/manifests/1.0").status(),
        StatusCode::OK
    );
    assert_eq!(
        api.get("/v2/team/app/manifests/nope").status(),
        StatusCode::NOT_FOUND
    );
    let proxy = NodeProxy::start(&berth);
    let plain = Client::builder().no_proxy().build().expect("client");
    for _ in 0..2 {
        let response = plain
            .get(format!("{}/v2/team/app/manifests/1.0", proxy.base))
            .send()
            .expect("GET through the node proxy");
        assert_eq!(response.status(), StatusCode::OK);
    }

    let berth_host = &berth.host;
    let proxy_host = &proxy.host;
    let ca = berth.ca_file();
    let prometheus = Prometheus::start(&format!(
        "  - job_name: berth\n    scheme: https\n    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: ['{berth_host}']\n  - job_name: node-proxy\n    static_configs:\n      - targets: ['{proxy_host}']\n",
        ca.display()
    ));
    let manifests = r#"route="/v2/{name}/manifests/{reference}""#;
    // The node proxy's two GETs reached berth as GETs too.
    prometheus.wait_for(
        &format!(
            r#"sum(berth_http_requests_total{{job="berth",{manifests},method="GET",status="200"}})"#
        ),
        (GETS + 2) as f64,
    );
    prometheus.wait_for(
        &format!(
            r#"sum(berth_http_requests_total{{job="berth",{manifests},method="GET",status="404"}})"#
        ),
        1.0,
    );
    prometheus.wait_for(
        &format!(r#"sum(berth_http_requests_total{{job="berth",{manifests},method="HEAD"}})"#),
        1.0,
    );
    prometheus.wait_for(
        &format!(r#"sum(berth_http_request_duration_seconds_count{{job="berth",{manifests},method="GET"}})"#),
        (GETS + 3) as f64,
    );
    prometheus.wait_for(
        &format!(r#"sum(berth_node_proxy_http_requests_total{{job="node-proxy",{manifests},method="GET",status="200"}})"#),
        2.0,
    );
    prometheus.wait_for(
        r#"sum(berth_node_proxy_upstream_requests_total{job="node-proxy",result="answered"})"#,
        2.0,
    );
    // No label carries a repository name.
    assert_eq!(
        prometheus.query_one(r#"count({__name__=~"berth_.+", route=~".*team.*"})"#),
        None
    );
}

/// `promtool check metrics` (the Prometheus project's linter over its own text parser) passes what berth and the
/// node proxy serve, after requests of several kinds have made series.
#[test]
fn promtool_passes_the_served_metrics() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let api = Api::new(&berth);
    api.push_image("team/lint", "1", 9);
    assert_eq!(
        api.get("/v2/team/lint/manifests/1").status(),
        StatusCode::OK
    );
    assert_eq!(api.get("/nowhere").status(), StatusCode::NOT_FOUND);
    let denied = api
        .client
        .post(api.url("/validate"))
        .header("content-type", "application/json")
        .body("not a review")
        .send()
        .expect("POST /validate");
    assert_eq!(denied.status(), StatusCode::OK);
    let text = api.get("/metrics");
    assert_eq!(text.status(), StatusCode::OK);
    assert!(
        crate::api::header(text.headers(), "content-type").starts_with("text/plain; version=0.0.4"),
        "{:?}",
        text.headers()
    );
    let text = text.text().expect("metrics text");
    promtool_check(&text);
    for line in [
        r#"berth_http_requests_total{route="other",method="GET",status="404"} 1"#,
        r#"berth_admission_decisions_total{webhook="validate",decision="invalid",rule="none"} 1"#,
        "berth_uploads_in_progress 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }

    let proxy_berth = Berth::start(Options::default());
    let proxy = NodeProxy::start(&proxy_berth);
    let response = Client::new()
        .get(format!("{}/v2/", proxy.base))
        .send()
        .expect("GET /v2/");
    assert_eq!(response.status(), StatusCode::OK);
    let text = Client::new()
        .get(format!("{}/metrics", proxy.base))
        .send()
        .and_then(|r| r.text())
        .expect("node proxy metrics");
    promtool_check(&text);
    assert!(
        text.lines().any(|l| l
            == r#"berth_node_proxy_http_requests_total{route="/v2/",method="GET",status="200"} 1"#),
        "{text}"
    );
}

fn promtool_check(text: &str) {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {PROMTOOL} (tests/run.sh installs prometheus): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Admission decisions are counted per image by webhook, decision and the rule that decided; the review latency per
/// webhook; a policy reload and a refused policy text; all read back from `/metrics`.
#[test]
fn admission_decisions_and_policy_reloads_are_counted() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fixture = |name: &str| std::fs::read_to_string(fixtures.join(name)).expect("fixture");
    let policy_dir = tempfile::tempdir().expect("tempdir");
    let policy_path = policy_dir.path().join("policy.yaml");
    std::fs::write(&policy_path, fixture("policy.yaml")).expect("write policy");
    let berth = Berth::start(Options {
        extra_args: vec!["--policy-file".into(), policy_path.display().to_string()],
        ..Options::default()
    });
    let api = Api::new(&berth);
    // The `when: available` rewrite of busybox applies only to what berth holds; nginx:1.25 is not held.
    api.push_image("library/busybox", "1.36", 21);
    for (endpoint, review) in [
        ("/validate", "pod-create.json"),
        ("/mutate", "pod-mutate.json"),
    ] {
        let response = api
            .client
            .post(api.url(endpoint))
            .header("content-type", "application/json")
            .body(fixture(review))
            .send()
            .expect("POST review");
        assert_eq!(response.status(), StatusCode::OK, "{endpoint}");
    }
    let scrape = || api.get("/metrics").text().expect("metrics text");
    let text = scrape();
    promtool_check(&text);
    for line in [
        r#"berth_admission_decisions_total{webhook="validate",decision="denied",rule="no-latest"} 1"#,
        r#"berth_admission_decisions_total{webhook="validate",decision="denied",rule="evil"} 1"#,
        r#"berth_admission_decisions_total{webhook="validate",decision="warned",rule="hub-warning"} 1"#,
        r#"berth_admission_decisions_total{webhook="mutate",decision="mutated",rule="hub-via-berth"} 1"#,
        r#"berth_admission_decisions_total{webhook="mutate",decision="mutated",rule="k8s-always"} 1"#,
        r#"berth_admission_review_duration_seconds_count{webhook="validate"} 1"#,
        r#"berth_admission_review_duration_seconds_count{webhook="mutate"} 1"#,
        "berth_policy_reloads_total 0",
        "berth_policy_reload_errors_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }

    // A changed policy is a reload; a broken one is an error (and the last good one stays).
    std::fs::write(
        &policy_path,
        fixture("policy.yaml").replace("pin a version", "pin it"),
    )
    .expect("write policy");
    poll_until(Duration::from_secs(10), "a policy reload", || {
        scrape()
            .lines()
            .any(|l| l == "berth_policy_reloads_total 1")
            .then_some(())
    });
    std::fs::write(
        &policy_path,
        "rules: [{name: x, action: deny, images: ['[']}]\n",
    )
    .expect("write policy");
    poll_until(Duration::from_secs(10), "a refused policy", || {
        scrape()
            .lines()
            .any(|l| l == "berth_policy_reload_errors_total 1")
            .then_some(())
    });
}

/// Credential checks are counted by method and result: htpasswd passwords, berth's tokens, and a header that does
/// not parse.
#[test]
fn logins_are_counted_by_method_and_result() {
    let htpasswd = format!(
        "alice:{}\n",
        bcrypt::hash("s3cret", 4).expect("bcrypt hash")
    );
    let berth = Berth::start(Options {
        plain_http: true,
        htpasswd: Some(htpasswd),
        ..Options::default()
    });
    let client = Client::builder().no_proxy().build().expect("client");
    let v2 = format!("{}/v2/", berth.base_url);
    let status = |request: reqwest::blocking::RequestBuilder| request.send().expect("GET").status();
    assert_eq!(
        status(client.get(&v2).basic_auth("alice", Some("s3cret"))),
        StatusCode::OK
    );
    assert_eq!(
        status(client.get(&v2).basic_auth("alice", Some("wrong"))),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(client.get(&v2).header("authorization", "Digest nonce=1")),
        StatusCode::UNAUTHORIZED
    );
    let answer: Value = client
        .get(format!(
            "{}/auth/token?service=berth&scope=repository:alice/app:pull",
            berth.base_url
        ))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .and_then(|r| r.json())
        .expect("a token");
    let token = answer["token"].as_str().expect("token");
    for _ in 0..2 {
        assert_eq!(status(client.get(&v2).bearer_auth(token)), StatusCode::OK);
    }
    let text = client
        .get(format!("{}/metrics", berth.base_url))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    for line in [
        r#"berth_logins_total{method="basic",result="ok"} 2"#,
        r#"berth_logins_total{method="basic",result="invalid"} 1"#,
        r#"berth_logins_total{method="bearer",result="ok"} 2"#,
        r#"berth_logins_total{method="unknown",result="invalid"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

/// `--metrics-listen` serves the node proxy's `/metrics` (and `/healthz`) on a second address, and nothing else
/// there: no pull is forwarded from it.
#[test]
fn the_node_proxy_serves_metrics_on_its_metrics_listener_only() {
    let berth = Berth::start(Options::default());
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let proxy = NodeProxy::start_with_args(
        &[
            "--upstream",
            &berth.base_url,
            "--metrics-listen",
            &metrics_addr,
        ],
        &berth.ca_file(),
    );
    let client = Client::builder().no_proxy().build().expect("client");
    let get = |url: String| client.get(url).send().expect("GET");
    assert_eq!(get(format!("{}/v2/", proxy.base)).status(), StatusCode::OK);
    let text = poll_until(Duration::from_secs(10), "the metrics listener", || {
        client
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
            .and_then(|r| r.text().ok())
    });
    assert!(
        text.lines().any(|l| l
            == r#"berth_node_proxy_http_requests_total{route="/v2/",method="GET",status="200"} 1"#),
        "{text}"
    );
    assert_eq!(
        get(format!("http://{metrics_addr}/v2/")).status(),
        StatusCode::NOT_FOUND
    );
}
