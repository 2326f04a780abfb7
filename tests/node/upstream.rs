//! What the node test runs beside the cluster: Debian's docker-registry on loopback playing a public registry, a
//! forwarder on the node's address that paces and counts what the upstream sends, and skopeo with its own
//! configuration.

use crate::support::poll_until;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A TCP forwarder that paces the bytes from the upstream and counts them.
pub struct Forwarder {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    addr: std::net::SocketAddr,
    accept: Option<thread::JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(
        listen: (std::net::Ipv4Addr, u16),
        to: std::net::SocketAddr,
        bytes_per_sec: u64,
    ) -> Forwarder {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen:?}: {e}"));
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (s, st, cs) = (sent.clone(), stop.clone(), conns.clone());
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                {
                    let mut list = cs.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || copy(client, server, None));
                let counter = s.clone();
                thread::spawn(move || copy(s2, c2, Some((counter, bytes_per_sec))));
            }
        });
        Forwarder {
            sent,
            stop,
            conns,
            addr,
            accept: Some(accept),
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

pub fn copy(mut from: TcpStream, mut to: TcpStream, pace: Option<(Arc<AtomicU64>, u64)>) {
    let mut buf = [0u8; 16 * 1024];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        if let Some((counter, rate)) = &pace {
            counter.fetch_add(n as u64, Ordering::SeqCst);
            let due = Duration::from_secs_f64(total as f64 / *rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Debian's docker-registry, plain HTTP on loopback, no auth: the "public registry" behind the forwarder.
pub struct Upstream {
    child: Child,
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub fn start(work: &Path) -> Upstream {
        let bin = crate::clients::require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("upstream-")
            .tempdir_in(work)
            .unwrap();
        let host = format!("127.0.0.1:{}", crate::support::free_port());
        let conf = dir.path().join("config.yml");
        fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {host}\n  secret: berth-tests\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = crate::cluster::dies_with_test(Command::new(bin).arg("serve").arg(&conf))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap();
        poll_until(Duration::from_secs(30), "docker-registry to answer", || {
            client
                .get(format!("http://{host}/v2/"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        Upstream {
            child,
            host,
            _dir: dir,
        }
    }
}

impl Upstream {
    /// The sum of the layer sizes of `repo:tag`'s manifest.
    pub fn layer_bytes(&self, repo: &str, tag: &str) -> u64 {
        let manifest: serde_json::Value = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/v2/{repo}/manifests/{tag}", self.host))
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .and_then(|r| r.json())
            .expect("the upstream's manifest");
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["size"].as_u64().expect("size"))
            .sum()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// skopeo with its own configuration (no system registries, no policy file needed).
pub fn skopeo(work: &Path) -> Command {
    let conf = work.join("skopeo");
    fs::create_dir_all(conf.join("tmp")).unwrap();
    fs::write(
        conf.join("registries.conf"),
        "unqualified-search-registries = []\n",
    )
    .unwrap();
    let mut cmd = crate::clients::tool("skopeo");
    cmd.env("CONTAINERS_REGISTRIES_CONF", conf.join("registries.conf"))
        .env("TMPDIR", conf.join("tmp"))
        .env("REGISTRY_AUTH_FILE", conf.join("auth.json"));
    fs::write(conf.join("auth.json"), "{\"auths\": {}}\n").unwrap();
    cmd
}

pub fn ok(cmd: Command) -> String {
    let out = crate::clients::run(cmd, Duration::from_secs(180));
    assert!(out.status.success(), "{}", out.describe());
    out.stdout
}
