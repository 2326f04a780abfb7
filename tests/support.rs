//! Test harness shared by all integration tests: starts a real `berth serve`
//! process on a free loopback port with its own temporary directories.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long `Berth::start`/`restart` waits for `GET /healthz` to answer 200.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Options for [`Berth::start`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve plain HTTP (`--plain-http`) instead of TLS.
    pub plain_http: bool,
    /// Extra arguments appended to `berth serve ...`.
    pub extra_args: Vec<String>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Use this certificate directory instead of a fresh temporary one.
    pub cert_dir: Option<PathBuf>,
    /// Listen on this port instead of a free one picked at start.
    pub port: Option<u16>,
    /// Extra environment variables for the berth process (e.g. KUBECONFIG).
    pub env: Vec<(String, String)>,
    /// With `plain_http`, do not pass `--plain-http`: the setting comes from a `--config` file in `extra_args`.
    pub plain_http_in_config: bool,
    /// Listen on this loopback address instead of `127.0.0.1` (e.g. `::1`: docker treats every 127.0.0.0/8
    /// registry as insecure and skips TLS verification there, but not `::1`). berth's certificate must name it
    /// (`--san ::1` in `extra_args`).
    pub listen_ip: Option<std::net::IpAddr>,
    /// htpasswd content: written to `<tmp>/htpasswd` ([`Berth::htpasswd_path`]) and passed as `--htpasswd`.
    pub htpasswd: Option<String>,
}

/// A running `berth serve` child process.
pub struct Berth {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// `https://127.0.0.1:PORT` or `http://127.0.0.1:PORT`
    pub base_url: String,
    pub data_dir: PathBuf,
    pub cert_dir: PathBuf,
    pub plain_http: bool,
    /// berth's working directory and `TMPDIR`: an empty directory, so files created outside the data directory
    /// show up in [`Berth::files_outside_data_dir`].
    pub work_dir: PathBuf,
    plain_http_flag: bool,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    child: Option<Child>,
    // Dropped last: holds data_dir (unless given), cert_dir and the log.
    tmp: tempfile::TempDir,
}

/// Bind 127.0.0.1:0, take the port the kernel picked and release it.
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Bind `ip`:0, take the port the kernel picked and release it.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    listener.local_addr().expect("local_addr").port()
}

impl Berth {
    /// Start berth and wait until `GET /healthz` answers 200 (panics with the
    /// server log when it does not come up within 30 s or exits early).
    pub fn start(opts: Options) -> Berth {
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let cert_dir = opts
            .cert_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("certs"));
        let work_dir = tmp.path().join("work");
        let mut extra_args = opts.extra_args;
        if let Some(htpasswd) = &opts.htpasswd {
            let path = tmp.path().join("htpasswd");
            fs::write(&path, htpasswd).expect("write htpasswd");
            extra_args.push("--htpasswd".into());
            extra_args.push(path.display().to_string());
        }
        fs::create_dir_all(&data_dir).expect("create data dir");
        fs::create_dir_all(&cert_dir).expect("create cert dir");
        fs::create_dir_all(&work_dir).expect("create work dir");
        let ip = opts
            .listen_ip
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        // `[::1]:PORT` for IPv6, as URLs and --listen write it.
        let host = std::net::SocketAddr::new(ip, opts.port.unwrap_or_else(|| free_port_on(ip)))
            .to_string();
        let scheme = if opts.plain_http { "http" } else { "https" };
        let mut berth = Berth {
            base_url: format!("{scheme}://{host}"),
            host,
            data_dir,
            cert_dir,
            plain_http: opts.plain_http,
            work_dir,
            plain_http_flag: opts.plain_http && !opts.plain_http_in_config,
            extra_args,
            env: opts.env,
            log_path: tmp.path().join("berth.log"),
            child: None,
            tmp,
        };
        berth.spawn_and_wait();
        berth
    }

    /// Where [`Options::htpasswd`] was written.
    pub fn htpasswd_path(&self) -> PathBuf {
        self.tmp.path().join("htpasswd")
    }

    /// `cert_dir/ca.crt`, generated by berth on its first TLS start.
    pub fn ca_file(&self) -> PathBuf {
        self.cert_dir.join("ca.crt")
    }

    /// A blocking HTTP client for this server (trusts `ca.crt` when TLS is on,
    /// never uses a proxy, 300 s overall request timeout).
    pub fn client(&self) -> reqwest::blocking::Client {
        self.try_client()
            .unwrap_or_else(|e| panic!("building HTTP client for {}: {e}", self.base_url))
    }

    fn try_client(&self) -> Result<reqwest::blocking::Client, String> {
        let mut builder = reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300));
        if !self.plain_http {
            let pem = fs::read(self.ca_file())
                .map_err(|e| format!("reading {}: {e}", self.ca_file().display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
        builder.build().map_err(|e| e.to_string())
    }

    /// SIGKILL the server (no graceful shutdown) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // std's kill() is SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// The server's process id (panics when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berth is not running").id()
    }

    /// Wait for the server to exit by itself (after a signal, say) and return its status; panics with the log
    /// (after killing it) when it is still running at `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        let child = self.child.as_mut().expect("berth is not running");
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return status;
                }
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(50)),
                Ok(None) => {
                    self.kill9();
                    panic!(
                        "berth on {} still running {deadline:?} later\n--- berth log ---\n{}",
                        self.host,
                        self.log()
                    );
                }
                Err(e) => panic!("waiting for berth on {}: {e}", self.host),
            }
        }
    }

    /// Every file under this instance's temporary directory except the data directory and the log: the
    /// certificates, and anything berth wrote to its working directory or `TMPDIR`. Sorted.
    pub fn files_outside_data_dir(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, skip: &[&Path], found: &mut Vec<PathBuf>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if skip.contains(&path.as_path()) {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, skip, found);
                } else {
                    found.push(path);
                }
            }
        }
        let mut found = Vec::new();
        walk(
            self.tmp.path(),
            &[self.data_dir.as_path(), self.log_path.as_path()],
            &mut found,
        );
        found.sort();
        found
    }

    /// Start the server again on the same port with the same directories
    /// (kills it first if it is still running).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait();
    }

    /// Everything berth wrote to stdout/stderr so far (across restarts).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open berth log");
        let log_err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(&self.host)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--cert-dir")
            .arg(&self.cert_dir);
        if self.plain_http_flag {
            cmd.arg("--plain-http");
        }
        cmd.args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.work_dir)
            .env("TMPDIR", &self.work_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", env!("CARGO_BIN_EXE_berth")));
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let url = format!("{}/healthz", self.base_url);
        let mut client: Option<reqwest::blocking::Client> = None;
        let mut last_err = String::from("no attempt yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "berth exited during startup ({status}) on {}\n--- berth log ---\n{}",
                        self.host,
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "berth on {} not healthy within {:?} (last error: {last_err})\n--- berth log ---\n{}",
                    self.host,
                    STARTUP_DEADLINE,
                    self.log()
                );
            }
            if client.is_none() {
                match self.try_client() {
                    Ok(c) => client = Some(c),
                    Err(e) => last_err = e, // ca.crt not written yet
                }
            }
            if let Some(c) = &client {
                match c.get(&url).timeout(Duration::from_secs(2)).send() {
                    Ok(resp) if resp.status() == reqwest::StatusCode::OK => return,
                    Ok(resp) => last_err = format!("GET /healthz -> {}", resp.status()),
                    Err(e) => last_err = format!("GET /healthz: {e}"),
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Path of the temporary directory owned by this instance.
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!("--- berth log ({}) ---\n{}", self.host, self.log());
        }
    }
}

/// Call `f` until it returns `Some`, every 100 ms; panic naming `what` if
/// `deadline` passes first.
pub fn poll_until<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Read a whole file to a String (panics with the path on error).
pub fn read_to_string(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Create (truncate) a file and write `data` to it.
pub fn write_file(path: impl AsRef<Path>, data: impl AsRef<[u8]>) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::io::Write::write_all(&mut f, data.as_ref())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
