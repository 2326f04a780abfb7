//! A real docker daemon (Debian's `docker.io`) against a real berth: `docker push`, `docker rmi`, `docker pull`
//! over plain HTTP on loopback and over verified TLS with berth's CA in `/etc/docker/certs.d/<host:port>/ca.crt`.
//!
//! Each test starts its own `dockerd` (it is ready in well under a second here) without networking
//! (`--iptables=false --ip6tables=false --bridge=none`), with the vfs storage driver and its data root, exec root,
//! socket, pid file and `daemon.json` in a temporary directory; it dies with the test, also when the test binary is
//! killed. Images are `docker import`s of a tarball holding busybox-static. Nothing here runs a container.
//!
//! docker treats every registry in 127.0.0.0/8 as insecure (it falls back to plain HTTP and skips certificate
//! verification there), so the TLS test serves berth on `[::1]` under the name `registry.test`, which only the
//! daemon resolves: dockerd runs in its own mount namespace with its own `/etc/hosts` bind-mounted over the
//! machine's, which stays untouched. The only system path written is the per-test `certs.d` directory, removed by
//! a guard even when the test fails.
//!
//! For the auth tests (htpasswd users, ServiceAccount tokens): [`Docker::login`] / [`Docker::logout`] run the real
//! `docker login --password-stdin` / `docker logout` and keep the credentials in the test's own `DOCKER_CONFIG`;
//! [`Docker::client_config`] shows what was stored.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::clients::{kill_group, require_tool, run, run_with_input, tool, tool_at, Output};
use crate::cluster::dies_with_test;
use crate::support::{poll_until, write_file, Berth, Options};

/// Deadline for one docker command (a push or pull of the small test image takes a second or two).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `dockerd` may take to answer `docker version`.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// The registry name the daemon's own `/etc/hosts` maps to `::1` (see the module doc).
pub const REGISTRY_NAME: &str = "registry.test";

/// A private `dockerd` (and the containerd it starts), stopped on drop.
pub struct Docker {
    child: Option<Child>,
    /// Short on purpose: the daemon's and containerd's unix sockets live under it (108-byte limit).
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Docker {
    /// Starts the daemon and waits until `docker version` reaches it; panics with its log when it does not come up.
    pub fn start() -> Docker {
        let dockerd = require_tool("dockerd");
        require_tool("unshare");
        let dir = tempfile::Builder::new()
            .prefix("bd-")
            .tempdir_in("/tmp")
            .expect("docker temp dir");
        let d = dir.path();
        let socket = d.join("d.sock");
        fs::create_dir_all(d.join("config")).expect("docker config dir");
        // Not the machine's /etc/docker/daemon.json: only the flags below apply.
        write_file(d.join("daemon.json"), "{}\n");
        write_file(
            d.join("hosts"),
            format!("127.0.0.1 localhost\n::1 {REGISTRY_NAME}\n"),
        );
        let log = fs::File::create(d.join("dockerd.log")).expect("dockerd log");
        // unshare execs (no fork) and sh execs dockerd: one process from setpriv on, so the parent-death signal
        // set by `dies_with_test` reaches dockerd itself, and containerd dies with dockerd. The mount namespace
        // also takes dockerd's own mounts (it bind-mounts its data root) away with it.
        let mut daemon = tool("unshare");
        daemon
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(d.join("hosts"))
            .arg(dockerd)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("x"))
            .arg("--pidfile")
            .arg(d.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()));
        let child = dies_with_test(&daemon)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn dockerd");
        let mut docker = Docker {
            child: Some(child),
            dir,
            socket,
        };
        let started = Instant::now();
        poll_until(
            STARTUP_DEADLINE,
            "dockerd to answer `docker version`",
            || {
                if let Some(Ok(Some(status))) = docker.child.as_mut().map(Child::try_wait) {
                    panic!("dockerd exited ({status}):\n{}", docker.log());
                }
                run(docker.cmd(&["version"]), Duration::from_secs(10))
                    .status
                    .success()
                    .then_some(())
            },
        );
        eprintln!("dockerd ready in {:?}", started.elapsed());
        docker
    }

    /// `docker ARGS…` talking to this daemon, with its own client configuration (`DOCKER_CONFIG`: credentials
    /// stored by [`Docker::login`] stay in the test's directory).
    pub fn cmd(&self, args: &[&str]) -> Command {
        // The client of the daemon's own package when it is there (another one in PATH may be newer).
        let client = Path::new("/usr/bin/docker");
        let mut cmd = if client.exists() {
            tool_at(client)
        } else {
            tool("docker")
        };
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.path().join("config"))
            .args(args);
        cmd
    }

    /// Runs `docker ARGS…` and requires success; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cmd(args), DOCKER_TIMEOUT);
        assert!(
            out.status.success(),
            "docker failed\n{}\n--- dockerd log (tail) ---\n{}",
            out.describe(),
            tail(&self.log(), 30)
        );
        out.stdout
    }

    /// Runs `docker ARGS…`, whatever the outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd(args), DOCKER_TIMEOUT)
    }

    /// `docker login HOST --username USER --password-stdin`: the outcome, for the test to judge (a refused login
    /// is a non-zero status). The credentials land in this daemon's `DOCKER_CONFIG`.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Output {
        run_with_input(
            self.cmd(&["login", "--username", user, "--password-stdin", host]),
            DOCKER_TIMEOUT,
            Some(password.as_bytes()),
        )
    }

    /// `docker logout HOST`: the outcome.
    pub fn logout(&self, host: &str) -> Output {
        self.run(&["logout", host])
    }

    /// The client configuration (`config.json`: `auths` after a login), or `{}` when there is none yet.
    pub fn client_config(&self) -> serde_json::Value {
        fs::read_to_string(self.dir.path().join("config/config.json"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// Imports a one-layer image holding busybox-static as `/bin/busybox` (and `/bin/sh` linking to it), tagged
    /// `reference`.
    pub fn import_busybox(&self, reference: &str) {
        let busybox = require_tool("busybox");
        let root = self.dir.path().join("rootfs");
        fs::create_dir_all(root.join("bin")).expect("rootfs");
        fs::copy(&busybox, root.join("bin/busybox"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", busybox.display()));
        let sh = root.join("bin/sh");
        if !sh.exists() {
            std::os::unix::fs::symlink("busybox", &sh).expect("symlink sh");
        }
        let tarball = self.dir.path().join("busybox.tar");
        let mut tar = Command::new("tar");
        tar.arg("-C")
            .arg(&root)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tarball)
            .arg("bin");
        let out = run(tar, DOCKER_TIMEOUT);
        assert!(out.status.success(), "{}", out.describe());
        self.ok(&["import", tarball.to_str().expect("utf-8 path"), reference]);
    }

    /// `{{index .RepoDigests 0}}` of `image`: `<repository>@sha256:…`, the digest of the manifest it was pulled
    /// by or pushed as.
    pub fn repo_digest(&self, image: &str) -> String {
        self.ok(&[
            "image",
            "inspect",
            "--format",
            "{{index .RepoDigests 0}}",
            image,
        ])
        .trim()
        .to_owned()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM first: dockerd stops containerd and cleans up; SIGKILL if it has not gone in 10 s.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(50)),
                _ => {
                    kill_group(&mut child);
                    break;
                }
            }
        }
        if thread::panicking() {
            eprintln!("--- dockerd log (tail) ---\n{}", tail(&self.log(), 60));
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `/etc/docker/certs.d/<host:port>/ca.crt` holding berth's CA, removed (the whole `<host:port>` directory) on
/// drop, also when the test fails. The port makes the directory the test's own.
pub struct CertsD {
    dir: PathBuf,
}

impl CertsD {
    pub fn install(host: &str, ca_file: &Path) -> CertsD {
        let dir = Path::new("/etc/docker/certs.d").join(host);
        assert!(
            !dir.exists(),
            "{} exists already: another test's or a leftover",
            dir.display()
        );
        let guard = CertsD { dir };
        fs::create_dir_all(&guard.dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", guard.dir.display()));
        fs::copy(ca_file, guard.dir.join("ca.crt"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", ca_file.display()));
        guard
    }
}

impl Drop for CertsD {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// The digest in `docker push`'s last line, `<tag>: digest: sha256:… size: N`.
fn pushed_digest(output: &str) -> String {
    output
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(": digest: ")?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no digest in the push output:\n{output}"))
}

/// Imports busybox as `<host>/team/busybox:1.0`, pushes it to berth (reached by docker as `host`), removes it
/// locally, pulls it back, and checks that the pulled digest is the pushed one and that berth serves that manifest.
fn push_rmi_pull(docker: &Docker, berth: &Berth, host: &str) {
    let image = format!("{host}/team/busybox:1.0");
    docker.import_busybox(&image);
    let digest = pushed_digest(&docker.ok(&["push", &image]));
    assert!(digest.starts_with("sha256:"), "{digest}");

    docker.ok(&["rmi", &image]);
    let listed = docker.ok(&["images", "--quiet", &format!("{host}/team/busybox")]);
    assert_eq!(listed.trim(), "", "the image is still there after rmi");
    docker.ok(&["pull", &image]);
    assert_eq!(
        docker.repo_digest(&image),
        format!("{host}/team/busybox@{digest}")
    );

    let response = berth
        .client()
        .get(format!("{}/v2/team/busybox/manifests/1.0", berth.base_url))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .expect("GET manifest");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let header = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(header, digest);
    let body = response.bytes().expect("manifest body");
    assert_eq!(crate::api::sha256(&body), digest);
}

#[test]
fn docker_push_rmi_pull_round_trip_plain_http_on_loopback() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let docker = Docker::start();
    push_rmi_pull(&docker, &berth, &berth.host);
}

/// Options for a berth docker verifies over TLS: on `[::1]` (docker skips verification for 127.0.0.0/8), with a
/// certificate for `::1` and [`REGISTRY_NAME`], which only the test's dockerd resolves.
pub fn verified_tls_options() -> Options {
    Options {
        listen_ip: Some(std::net::Ipv6Addr::LOCALHOST.into()),
        extra_args: vec![
            "--san".into(),
            "::1".into(),
            "--san".into(),
            REGISTRY_NAME.into(),
        ],
        ..Options::default()
    }
}

/// `registry.test:<port>`: how the test's dockerd reaches a berth started with [`verified_tls_options`].
pub fn verified_tls_host(berth: &Berth) -> String {
    let port = berth.host.rsplit_once(':').expect("HOST:PORT").1;
    format!("{REGISTRY_NAME}:{port}")
}

#[test]
fn docker_push_rmi_pull_round_trip_tls_with_certs_d() {
    let berth = Berth::start(verified_tls_options());
    let host = verified_tls_host(&berth);
    let docker = Docker::start();

    // Without berth's CA docker refuses the certificate: TLS is verified here, not skipped as on 127.0.0.1.
    let image = format!("{host}/team/untrusted:1.0");
    docker.import_busybox(&image);
    let refused = docker.run(&["push", &image]);
    assert!(!refused.status.success(), "{}", refused.describe());
    assert!(
        refused.stderr.contains("x509") || refused.stderr.contains("certificate"),
        "{}",
        refused.describe()
    );

    let _ca = CertsD::install(&host, &berth.ca_file());
    push_rmi_pull(&docker, &berth, &host);
}

/// The login helpers the auth tests build on: credentials land in the test's own `DOCKER_CONFIG`, never the
/// machine's, and `logout` takes them away. berth has no auth configured here, so any password is accepted.
#[test]
fn docker_login_and_logout_use_the_tests_own_client_config() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let docker = Docker::start();
    let login = docker.login(&berth.host, "ci", "s3cret");
    assert!(login.status.success(), "{}", login.describe());
    assert!(
        docker.client_config()["auths"][&berth.host]["auth"].is_string(),
        "{}",
        docker.client_config()
    );
    let logout = docker.logout(&berth.host);
    assert!(logout.status.success(), "{}", logout.describe());
    assert!(
        docker.client_config()["auths"].get(&berth.host).is_none(),
        "{}",
        docker.client_config()
    );
}
