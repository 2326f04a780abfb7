//! A real, throw-away Kubernetes control plane for tests: etcd plus kube-apiserver v1.20.2 on loopback.
//!
//! The apiserver binary is built once and cached by `tests/k8s/ensure-kubernetes.sh` (tests/run.sh calls it);
//! etcd comes from Debian's etcd-server and kubectl from the machine. There is no controller manager,
//! scheduler or kubelet: objects are stored and admission webhooks run, but pods stay Pending and
//! namespaces have no `kubernetes.io/metadata.name` label (API level 1.20, no `matchConditions`).
//!
//! Webhook behaviour of this apiserver (checked against it): it calls `https://127.0.0.1:PORT/path` from a
//! `url:` with a `caBundle` directly (no proxy, no aggregator routing needed), POSTs `application/json`
//! `admission.k8s.io/v1` reviews to `/path?timeout=Ns` (note the query), and needs a response with the same
//! `apiVersion` and the request's `uid`. `response.patch` must be a base64 (standard alphabet, padded) string
//! and needs `patchType: JSONPatch`; a raw JSON array, a raw string, base64url or a patch without patchType
//! all fail the call ("failed calling webhook", HTTP 500 to the client). A JSON patch whose path does not exist
//! fails the request too. `allowed: false` without `status` reads "denied the request without
//! explanation"; `status.code` becomes the client's HTTP status; `warnings` reach kubectl. Webhook
//! configurations and RBAC bindings take effect a moment after they are created (informers): poll.
//!
//! Identities (static token file, fixed at start):
//! - `admin`, group `system:masters` (the default kubeconfig),
//! - `berth`, group `system:serviceaccounts`,
//! - `alice`, no extra group.
//!
//! Any other user/group set gets an x509 client certificate signed by the cluster CA (see
//! [`Cluster::kubeconfig_for`]). The same CA can issue serving certificates for webhooks
//! ([`Cluster::issue_serving_cert`], [`Cluster::ca_bundle`]).
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Where tests/k8s/ensure-kubernetes.sh caches the Kubernetes binaries it builds: $BERTH_TEST_CACHE, by default
/// /var/cache/berth-test (the same rule as the script's).
pub fn test_cache_dir() -> PathBuf {
    std::env::var_os("BERTH_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-test"))
}

/// The cached kube-apiserver.
pub fn apiserver_bin() -> PathBuf {
    test_cache_dir().join("kube-apiserver-v1.20.2")
}
const ETCD_BIN: &str = "/usr/bin/etcd";
/// Loopback only: a proxy from the environment must not see the apiserver's, kubectl's or webhook traffic.
pub const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// Static-token users of every cluster: (user, groups). Their tokens are random per cluster.
const STATIC_USERS: &[(&str, &[&str])] = &[
    ("admin", &["system:masters"]),
    ("berth", &["system:serviceaccounts"]),
    ("alice", &[]),
];

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = berth-test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
";

/// How [`Cluster::start_with`] starts the control plane. The default is the webhook-test cluster on 127.0.0.1
/// described above; `node: true` is the control plane of the one-node cluster (tests/node/).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The address the apiserver binds to and advertises (also in its certificate).
    pub address: std::net::IpAddr,
    /// A control plane for a real node: `Node,RBAC` authorization, the ServiceAccount admission plugin, the
    /// `kubernetes` Service's endpoint kept by the apiserver (lease reconciler), a kubelet client certificate,
    /// and a certificate valid for the Service's ClusterIP 10.96.0.1 and `kubernetes.default.svc` (pods reach
    /// the apiserver that way).
    pub node: bool,
    /// Where the cluster's directory goes (default: the system's temporary directory).
    pub dir_in: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            node: false,
            dir_in: None,
        }
    }
}

pub struct Cluster {
    /// kubeconfig of the cluster-admin `admin` (group system:masters), static token.
    pub kubeconfig: PathBuf,
    /// `https://ADDRESS:PORT` (127.0.0.1 unless [`ClusterOptions::address`] says otherwise)
    pub server: String,
    /// PEM of the CA that signed the apiserver's serving certificate (and accepts client certificates).
    pub ca_file: PathBuf,
    /// Bearer token of `admin`.
    pub token: String,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    tokens: Vec<(String, String, Vec<String>)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz` answers ok.
    /// Panics when the cached apiserver is missing (run tests/k8s/ensure-kubernetes.sh) or it does not
    /// become ready (with both logs).
    pub fn start() -> Cluster {
        Cluster::start_with(&ClusterOptions::default())
    }

    /// [`Cluster::start`] with other options.
    pub fn start_with(opts: &ClusterOptions) -> Cluster {
        assert!(
            apiserver_bin().is_file(),
            "{} is missing: run `bash tests/k8s/ensure-kubernetes.sh` (builds and caches it, \
             ~10 min cold; tests/run.sh does it before the tests)",
            apiserver_bin().display()
        );
        assert!(
            Path::new(ETCD_BIN).is_file(),
            "{ETCD_BIN} is missing: run `bash tests/k8s/ensure-kubernetes.sh` (installs etcd-server)"
        );
        // Free ports are picked by binding :0 and letting go; another process may grab one in between,
        // so a start that fails on a taken port is retried with new ports.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Cluster::try_start(opts) {
                Ok(c) => return c,
                Err((msg, retry)) => {
                    if !retry {
                        panic!("{msg}");
                    }
                    last_err = msg;
                }
            }
        }
        panic!("cluster did not start after 3 attempts; last: {last_err}");
    }

    fn try_start(opts: &ClusterOptions) -> Result<Cluster, (String, bool)> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("berth-cluster-");
        let dir = match &opts.dir_in {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .expect("tempdir");
        let d = dir.path().to_path_buf();
        let pki = d.join("pki");
        fs::create_dir_all(&pki).unwrap();
        make_pki(&pki, opts);

        let mut tokens = Vec::new();
        let mut csv = String::new();
        for (user, groups) in STATIC_USERS {
            let token = format!("{user}-{}", random_hex(16));
            // token,user,uid[,"group1,group2"]
            csv.push_str(&format!("{token},{user},uid-{user}"));
            if !groups.is_empty() {
                csv.push_str(&format!(",\"{}\"", groups.join(",")));
            }
            csv.push('\n');
            tokens.push((
                user.to_string(),
                token,
                groups.iter().map(|g| g.to_string()).collect(),
            ));
        }
        fs::write(pki.join("tokens.csv"), csv).unwrap();

        // etcd listens on loopback, the apiserver on the cluster's address (one set of ports when they are the same
        // address, so that the three differ).
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let [etcd_client, etcd_peer, api_port] = if opts.address == loopback {
            free_ports(loopback)
        } else {
            let [client, peer] = free_ports(loopback);
            let [api] = free_ports(opts.address);
            [client, peer, api]
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_log = d.join("etcd.log");
        let etcd = spawn_logged(
            Command::new(ETCD_BIN)
                .arg("--name=berth-test")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=berth-test={peer_url}"))
                .arg("--initial-cluster-state=new")
                .arg("--quota-backend-bytes=1073741824")
                .arg("--log-level=warn")
                .arg("--logger=zap"),
            &etcd_log,
        );

        let server = format!(
            "https://{}",
            std::net::SocketAddr::new(opts.address, api_port)
        );
        let api_log = d.join("apiserver.log");
        let mut api = Command::new(apiserver_bin());
        api.arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address={}", opts.address))
            .arg(format!("--advertise-address={}", opts.address))
            .arg(format!("--secure-port={api_port}"))
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", pki.display()))
            .arg(format!(
                "--tls-cert-file={}",
                pki.join("apiserver.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.join("apiserver.key").display()
            ))
            .arg(format!("--client-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--token-auth-file={}",
                pki.join("tokens.csv").display()
            ))
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--logtostderr=true")
            .arg("--v=1");
        if opts.node {
            api.arg("--authorization-mode=Node,RBAC")
                .arg("--endpoint-reconciler-type=lease")
                .arg(format!(
                    "--kubelet-client-certificate={}",
                    pki.join("kubelet-client.crt").display()
                ))
                .arg(format!(
                    "--kubelet-client-key={}",
                    pki.join("kubelet-client.key").display()
                ))
                .arg("--kubelet-preferred-address-types=InternalIP");
        } else {
            api.arg("--authorization-mode=RBAC")
                .arg("--endpoint-reconciler-type=none")
                .arg("--disable-admission-plugins=ServiceAccount");
        }
        let apiserver = spawn_logged(&mut api, &api_log);

        let ca_file = pki.join("ca.crt");
        let (_, admin_token, _) = tokens[0].clone();
        let mut cluster = Cluster {
            kubeconfig: d.join("kubeconfig"),
            server,
            ca_file,
            token: admin_token.clone(),
            etcd: Some(etcd),
            apiserver: Some(apiserver),
            tokens,
            dir,
        };
        write_kubeconfig(
            &cluster.kubeconfig,
            &cluster.server,
            &cluster.ca_file,
            "admin",
            Credential::Token(&admin_token),
        );
        cluster.wait_ready().map_err(|msg| {
            let logs = cluster.logs();
            let taken = logs.contains("address already in use");
            (format!("{msg}\n{logs}"), taken)
        })?;
        Ok(cluster)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let ca = fs::read(&self.ca_file).unwrap();
        let client = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client");
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_DEADLINE {
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    return Err(format!(
                        "{name} exited with {status} before the apiserver was ready"
                    ));
                }
            }
            match client
                .get(format!("{}/readyz", self.server))
                .bearer_auth(&self.token)
                .send()
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("{}: {}", r.status(), r.text().unwrap_or_default()),
                Err(e) => last = format!("{e}"),
            }
            thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "kube-apiserver not ready at {}/readyz within {READY_DEADLINE:?}; last: {last}",
            self.server
        ))
    }

    fn logs(&self) -> String {
        format!(
            "----- etcd log -----\n{}\n----- kube-apiserver log -----\n{}",
            tail(&self.etcd_log(), 60),
            tail(&self.log(), 120)
        )
    }

    /// Runs kubectl against this cluster as `admin`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args, None)
    }

    /// Runs kubectl with the given kubeconfig (e.g. from [`Cluster::kubeconfig_for`]), optionally feeding stdin.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            // A wedged apiserver fails the test instead of hanging it.
            .arg("--request-timeout=60s")
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kubectl-cache").display()
            ))
            .args(args)
            .env_remove("KUBECONFIG");
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawn kubectl (is it installed? tests/k8s/ensure-kubernetes.sh): {e}")
        });
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_owned();
            // Write from a thread so a large stdin can't deadlock against a full stdout pipe.
            let writer = thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
            let out = child.wait_with_output().expect("kubectl output");
            let _ = writer.join();
            out
        } else {
            child.wait_with_output().expect("kubectl output")
        }
    }

    /// Runs kubectl as `admin`; panics with its stderr unless it succeeds. Returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("kubectl stdout is utf-8")
    }

    /// `kubectl apply -f -` with `yaml` on stdin, as `admin`.
    pub fn apply_yaml(&self, yaml: &str) -> Output {
        self.kubectl_as(&self.kubeconfig, &["apply", "-f", "-"], Some(yaml))
    }

    /// The kube-apiserver's log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// etcd's log so far.
    pub fn etcd_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Writes (and returns the path of) a kubeconfig for `user` in `groups`. The static-token users
    /// (`admin`/system:masters, `berth`/system:serviceaccounts, `alice`/none) get their bearer token;
    /// any other user/groups pair gets a fresh client certificate (CN=user, O=groups) from the cluster CA.
    /// Every authenticated user is also in `system:authenticated`.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{safe}-{}", random_hex(4)));
        let static_user = self
            .tokens
            .iter()
            .find(|(u, _, g)| u == user && g.iter().map(String::as_str).eq(groups.iter().copied()));
        match static_user {
            Some((_, token, _)) => write_kubeconfig(
                &path,
                &self.server,
                &self.ca_file,
                user,
                Credential::Token(token),
            ),
            None => {
                let (cert, key) = self.issue_client_cert(user, groups);
                write_kubeconfig(
                    &path,
                    &self.server,
                    &self.ca_file,
                    user,
                    Credential::Cert(&cert, &key),
                );
            }
        }
        path
    }

    /// A token of ServiceAccount `namespace/name` for `audience` (`kubectl create token`), as a CI job or a
    /// developer gets one.
    pub fn create_token(&self, namespace: &str, name: &str, audience: &str) -> String {
        self.kubectl_ok(&[
            "create",
            "token",
            name,
            "-n",
            namespace,
            "--audience",
            audience,
        ])
        .trim()
        .to_owned()
    }

    /// Bearer token of a static-token user (`admin`, `berth`, `alice`).
    pub fn token_of(&self, user: &str) -> String {
        self.tokens
            .iter()
            .find(|(u, _, _)| u == user)
            .map(|(_, t, _)| t.clone())
            .unwrap_or_else(|| panic!("{user} is not a static-token user of the test cluster"))
    }

    /// base64 of the cluster CA's PEM, for a webhook configuration's `caBundle` when the webhook's
    /// certificate comes from [`Cluster::issue_serving_cert`].
    pub fn ca_bundle(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(fs::read(&self.ca_file).unwrap())
    }

    /// Issues a serving certificate (PEM cert, PEM key) from the cluster CA for `name`, valid for
    /// 127.0.0.1, ::1, localhost and `name` as a DNS name.
    pub fn issue_serving_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let pki = self.dir.path().join("pki");
        let stem = format!(
            "serving-{}-{}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            random_hex(4)
        );
        issue_cert(&pki, &stem, &format!("/CN={name}"), &server_ext(&[name]))
    }

    pub fn issue_client_cert(&self, user: &str, groups: &[&str]) -> (PathBuf, PathBuf) {
        let pki = self.dir.path().join("pki");
        let mut subj = String::new();
        for g in groups {
            subj.push_str(&format!("/O={}", escape_subj(g)));
        }
        subj.push_str(&format!("/CN={}", escape_subj(user)));
        let stem = format!("client-{}", random_hex(6));
        issue_cert(&pki, &stem, &subj, "client")
    }

    /// Process ids of etcd and the apiserver.
    pub fn pids(&self) -> Vec<u32> {
        [&self.etcd, &self.apiserver]
            .into_iter()
            .flatten()
            .map(Child::id)
            .collect()
    }

    /// Working directory of this cluster (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

enum Credential<'a> {
    Token(&'a str),
    Cert(&'a Path, &'a Path),
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &str, cred: Credential) {
    let user_fields = match cred {
        Credential::Token(t) => format!("    token: \"{t}\"\n"),
        Credential::Cert(c, k) => format!(
            "    client-certificate: \"{}\"\n    client-key: \"{}\"\n",
            c.display(),
            k.display()
        ),
    };
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: berth-test
  cluster:
    server: \"{server}\"
    certificate-authority: \"{ca}\"
users:
- name: \"{user}\"
  user:
{user_fields}contexts:
- name: berth-test
  context:
    cluster: berth-test
    user: \"{user}\"
    namespace: default
current-context: berth-test
",
        ca = ca.display()
    );
    fs::write(path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `cmd` run through `setpriv --pdeathsig SIGKILL`: the process is killed when the thread that started it ends,
/// also when the test process is killed and no Drop runs. So start it from the thread that owns it for its whole
/// life (a test's own thread). Only the program, arguments, environment changes and working directory are carried
/// over; set stdio, process group and the like on the returned command.
pub fn dies_with_test(cmd: &Command) -> Command {
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(["--pdeathsig", "SIGKILL", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = dies_with_test(cmd);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

fn free_ports<const N: usize>(address: std::net::IpAddr) -> [u16; N] {
    // Hold all listeners at once so the N ports differ.
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| {
            TcpListener::bind((address, 0)).unwrap_or_else(|e| panic!("bind {address}:0: {e}"))
        })
        .collect();
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr().unwrap().port();
    }
    ports
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `openssl` in `pki` with the whitespace-separated `args` followed by `extra` (for arguments with spaces).
fn openssl(pki: &Path, args: &str, extra: &[&str]) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .args(extra)
        .current_dir(pki)
        .env("OPENSSL_CONF", pki.join("openssl.cnf"))
        .stdin(Stdio::null())
        .output()
        .expect("spawn openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args} {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn server_ext(names: &[&str]) -> String {
    let mut san = String::from("IP:127.0.0.1,IP:::1,DNS:localhost");
    for n in names {
        if n.parse::<std::net::IpAddr>().is_ok() {
            san.push_str(&format!(",IP:{n}"));
        } else if !n.is_empty() && *n != "localhost" {
            san.push_str(&format!(",DNS:{n}"));
        }
    }
    format!(
        "basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = {san}\n"
    )
}

/// Creates `<stem>.key` (P-256) and `<stem>.crt` signed by pki/ca.{crt,key}. `ext` is either the name of a
/// section of pki/openssl.cnf or the text of an extensions section. `stem` must have no whitespace.
fn issue_cert(pki: &Path, stem: &str, subj: &str, ext: &str) -> (PathBuf, PathBuf) {
    let (extfile, section) = if ext.contains('=') {
        let f = format!("{stem}.ext");
        fs::write(pki.join(&f), format!("[ext]\n{ext}")).unwrap();
        (f, "ext")
    } else {
        ("openssl.cnf".to_string(), ext)
    };
    let serial = random_hex(8);
    openssl(
        pki,
        &format!("ecparam -name prime256v1 -genkey -noout -out {stem}.key"),
        &[],
    );
    openssl(
        pki,
        &format!("req -new -key {stem}.key -out {stem}.csr -subj"),
        &[subj],
    );
    openssl(
        pki,
        &format!(
            "x509 -req -in {stem}.csr -CA ca.crt -CAkey ca.key -set_serial 0x{serial} -days 7 -sha256 \
             -extfile {extfile} -extensions {section} -out {stem}.crt"
        ),
        &[],
    );
    (
        pki.join(format!("{stem}.crt")),
        pki.join(format!("{stem}.key")),
    )
}

fn make_pki(pki: &Path, opts: &ClusterOptions) {
    fs::write(pki.join("openssl.cnf"), OPENSSL_CNF).unwrap();
    openssl(
        pki,
        "ecparam -name prime256v1 -genkey -noout -out ca.key",
        &[],
    );
    openssl(
        pki,
        "req -x509 -new -key ca.key -subj /CN=berth-test-ca -days 7 -sha256 -extensions ca -out ca.crt",
        &[],
    );
    let address = opts.address.to_string();
    let ext = server_ext(&[
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        // The `kubernetes` Service's ClusterIP (first address of --service-cluster-ip-range).
        "10.96.0.1",
        &address,
    ]);
    issue_cert(pki, "apiserver", "/CN=kube-apiserver", &ext);
    if opts.node {
        // How the apiserver authenticates to the kubelet (logs, exec): system:masters passes the kubelet's
        // webhook authorization.
        issue_cert(
            pki,
            "kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "client",
        );
    }
    openssl(
        pki,
        "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key",
        &[],
    );
    openssl(pki, "pkey -in sa.key -pubout -out sa.pub", &[]);
}

fn escape_subj(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('/', "\\/")
        .replace('=', "\\=")
        .replace('+', "\\+")
}

#[test]
fn cluster_starts_and_serves_kubectl() {
    let c = Cluster::start();
    assert!(c.server.starts_with("https://127.0.0.1:"), "{}", c.server);

    c.kubectl_ok(&["create", "namespace", "smoke"]);
    c.kubectl_ok(&[
        "-n",
        "smoke",
        "create",
        "configmap",
        "greeting",
        "--from-literal=hello=world",
    ]);
    let got = c.kubectl_ok(&[
        "-n",
        "smoke",
        "get",
        "configmap",
        "greeting",
        "-o",
        "jsonpath={.data.hello}",
    ]);
    assert_eq!(got, "world");

    let pod = "apiVersion: v1
kind: Pod
metadata:
  name: dry
  namespace: smoke
spec:
  containers:
  - name: app
    image: registry.example/app:1
";
    let out = c.kubectl_as(
        &c.kubeconfig,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(pod),
    );
    assert!(
        out.status.success(),
        "dry-run apply failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/dry created (server dry run)"));
    // Dry run stored nothing.
    let out = c.kubectl(&["-n", "smoke", "get", "pod", "dry"]);
    assert!(!out.status.success(), "dry-run pod was stored");

    // A real apply creates it (it stays Pending: no scheduler or kubelet).
    let out = c.apply_yaml(pod);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phase = c.kubectl_ok(&[
        "-n",
        "smoke",
        "get",
        "pod",
        "dry",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase, "Pending");

    // Other identities: alice (static token, no RBAC grants) is forbidden; admin is allowed.
    let alice = c.kubeconfig_for("alice", &[]);
    let out = c.kubectl_as(&alice, &["-n", "smoke", "get", "configmaps"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("User \"alice\" cannot list resource \"configmaps\""),
        "{err}"
    );

    // A certificate identity in a made-up group.
    let bob = c.kubeconfig_for("bob", &["team-a"]);
    let out = c.kubectl_as(&bob, &["-n", "smoke", "get", "configmaps"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("User \"bob\" cannot list"), "{err}");
    // Not `--clusterrole=view`: view/edit/admin are aggregated ClusterRoles whose rules the controller
    // manager fills in, and there is none, so they grant nothing here.
    c.kubectl_ok(&[
        "-n",
        "smoke",
        "create",
        "role",
        "cm-reader",
        "--verb=get,list",
        "--resource=configmaps",
    ]);
    c.kubectl_ok(&[
        "-n",
        "smoke",
        "create",
        "rolebinding",
        "team-a-read",
        "--role=cm-reader",
        "--group=team-a",
    ]);
    // The RBAC authorizer reads bindings from an informer: allow a moment for the new one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = c.kubectl_as(
            &bob,
            &["-n", "smoke", "get", "configmap", "greeting", "-o", "name"],
            None,
        );
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configmap/greeting"
    );
}

/// A tiny HTTPS admission webhook in Python (ssl + http.server): /validate denies, /mutate adds a label with a
/// base64 JSONPatch. Every AdmissionReview it gets is appended to `reviews.jsonl` in its dir.
const PY_WEBHOOK: &str = r#"
import base64, http.server, json, ssl, sys
cert, key, log = sys.argv[1:4]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "review": review}) + "\n")
        req = review["request"]
        resp = {"uid": req["uid"]}
        if self.path.startswith("/validate"):
            resp.update(allowed=False, status={"code": 403, "message": "denied by the test webhook"})
        else:
            patch = [{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}]
            resp.update(allowed=True, patchType="JSONPatch",
                        patch=base64.b64encode(json.dumps(patch).encode()).decode())
        body = json.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview",
                           "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cluster_calls_https_webhooks_on_loopback() {
    use std::io::BufRead as _;

    let c = Cluster::start();
    let (cert, key) = c.issue_serving_cert("test-webhook");
    let script = c.dir().join("webhook.py");
    let reviews = c.dir().join("reviews.jsonl");
    fs::write(&script, PY_WEBHOOK).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .arg(&reviews)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _webhook = KillOnDrop(child);
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("webhook port line: {line:?}"));

    c.kubectl_ok(&["create", "namespace", "guarded"]);
    c.kubectl_ok(&["label", "namespace", "guarded", "berth-test/webhooks=on"]);
    let config = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: test-validate
webhooks:
- name: validate.test.berth
  clientConfig:
    url: "https://127.0.0.1:{port}/validate"
    caBundle: "{ca}"
  rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE"]
    resources: ["pods"]
  namespaceSelector:
    matchLabels:
      berth-test/webhooks: "on"
  failurePolicy: Fail
  sideEffects: None
  admissionReviewVersions: ["v1"]
  timeoutSeconds: 5
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: test-mutate
webhooks:
- name: mutate.test.berth
  clientConfig:
    url: "https://127.0.0.1:{port}/mutate"
    caBundle: "{ca}"
  rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE"]
    resources: ["configmaps"]
  namespaceSelector:
    matchLabels:
      berth-test/webhooks: "on"
  failurePolicy: Fail
  sideEffects: None
  reinvocationPolicy: Never
  admissionReviewVersions: ["v1"]
  timeoutSeconds: 5
"#,
        ca = c.ca_bundle()
    );
    let out = c.apply_yaml(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The apiserver picks webhook configurations up from an informer: poll with server-side dry runs
    // (called too, since sideEffects: None) until the webhook answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let denied = loop {
        let out = c.kubectl(&[
            "-n",
            "guarded",
            "run",
            "probe",
            "--image=registry.example/app:1",
            "--dry-run=server",
        ]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && err.contains("denied by the test webhook") {
            break err;
        }
        assert!(
            Instant::now() < deadline,
            "webhook never called; last: {err}\n{}",
            c.log()
        );
        thread::sleep(Duration::from_millis(300));
    };
    assert!(
        denied.contains("admission webhook \"validate.test.berth\" denied the request"),
        "{denied}"
    );

    let out = c.kubectl(&[
        "-n",
        "guarded",
        "run",
        "app",
        "--image=registry.example/app:1",
    ]);
    assert!(!out.status.success(), "pod was admitted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("denied the request: denied by the test webhook"),
        "{err}"
    );
    // Outside the selected namespace the webhook is not called.
    c.kubectl_ok(&[
        "-n",
        "default",
        "run",
        "app",
        "--image=registry.example/app:1",
    ]);

    // The mutating webhook's base64 JSONPatch is applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = c.kubectl(&[
            "-n",
            "guarded",
            "delete",
            "configmap",
            "cm",
            "--ignore-not-found",
        ]);
        c.kubectl_ok(&[
            "-n",
            "guarded",
            "create",
            "configmap",
            "cm",
            "--from-literal=a=b",
        ]);
        let label = c.kubectl_ok(&[
            "-n",
            "guarded",
            "get",
            "configmap",
            "cm",
            "-o",
            "jsonpath={.metadata.labels.mutated}",
        ]);
        if label == "yes" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mutating webhook never applied\n{}",
            c.log()
        );
        thread::sleep(Duration::from_millis(300));
    }

    // What the apiserver sent: admission.k8s.io/v1 reviews with the object inline.
    let sent = fs::read_to_string(&reviews).unwrap();
    let first: serde_json::Value = serde_json::from_str(sent.lines().next().unwrap()).unwrap();
    // The apiserver appends the webhook's timeout as a query: route on the path alone.
    assert_eq!(first["path"], "/validate?timeout=5s");
    assert_eq!(first["review"]["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(first["review"]["kind"], "AdmissionReview");
    assert_eq!(first["review"]["request"]["kind"]["kind"], "Pod");
    assert_eq!(first["review"]["request"]["namespace"], "guarded");
    assert_eq!(first["review"]["request"]["userInfo"]["username"], "admin");
}
