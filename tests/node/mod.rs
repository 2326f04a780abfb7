//! A real one-node Kubernetes cluster (v1.20.2) on this machine: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, a private containerd 1.6 with its CRI plugin, a kubelet and kube-proxy. The binaries are
//! built from Debian's `kubernetes` source and cached by tests/k8s/ensure-kubernetes.sh.
//!
//! Networking: a bridge [`BRIDGE`] with the address [`NODE_IP`] is created first. The apiserver listens and
//! advertises there (the `kubernetes` Service's endpoint may not be a loopback address), the kubelet registers the
//! node with it as its InternalIP, and the bridge CNI plugin attaches pods to the same bridge (pods get
//! 10.244.0.0/24, their default route via [`NODE_IP`]). kube-proxy (iptables mode) makes ClusterIPs work from pods
//! and from the host. There is no cluster DNS: nothing in the test needs one (see manifests/base/node-proxy.yaml).
//!
//! What the node changes on the machine is undone by [`machine::undo`] when the node stops, also after a failed
//! test (Drop) and after a killed one (the next start reads the state file). Only one node runs at a time: a lock.

mod bring_up;
pub mod images;
mod kube;
pub mod machine;
mod scenario;
mod upstream;

use crate::cluster::{Cluster, ClusterOptions, PROXY_VARS};
use machine::{Saved, Snapshot, BRIDGE};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub const K8S_VERSION: &str = "v1.20.2";
/// The node's address, on [`BRIDGE`]: the apiserver, the kubelet and the pods' gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const POD_SUBNET: &str = "10.244.0.0/24";
pub const NODE_NAME: &str = "berth-node";
pub const PAUSE_IMAGE: &str = "berth.test/pause:v1.20.2";
const LOCK_FILE: &str = "/run/berth-test-node.lock";

pub fn cached(name: &str) -> PathBuf {
    let p = crate::cluster::test_cache_dir().join(format!("{name}-{K8S_VERSION}"));
    assert!(
        p.is_file(),
        "{} is missing: run `bash tests/k8s/ensure-kubernetes.sh` (builds and caches the Kubernetes binaries; \
         tests/run.sh does it before the tests)",
        p.display()
    );
    p
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

pub struct Node {
    pub cluster: Option<Cluster>,
    pub work: PathBuf,
    procs: Vec<Proc>,
    containerd_sock: PathBuf,
    saved: Saved,
    before: Snapshot,
    stopped: bool,
    _lock: NodeLock,
}

/// The machine-wide lock: `flock` holds it for a child shell that lives until its stdin closes, which happens
/// when the Node is dropped or the test process dies however it dies. (std's File::lock is newer than berth's
/// minimum Rust version.)
struct NodeLock {
    child: Child,
}

impl NodeLock {
    fn take() -> NodeLock {
        let mut child = Command::new("flock")
            .args(["--exclusive", LOCK_FILE, "sh", "-c", "echo locked; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn flock (util-linux)");
        let mut line = String::new();
        use std::io::BufRead as _;
        let mut out = std::io::BufReader::new(child.stdout.take().expect("flock's stdout"));
        out.read_line(&mut line).expect("read from flock");
        assert_eq!(
            line.trim(),
            "locked",
            "flock {LOCK_FILE} did not take the lock"
        );
        NodeLock { child }
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn free_port_on(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
}

fn must(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{:?} {:?} failed: {}{}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Node {
    /// Brings the node up: cleans up after a killed run, records the machine, starts every part and waits until
    /// the node is Ready, the `default` ServiceAccount exists and the `kubernetes` Service has its endpoint.
    pub fn start() -> Node {
        for tool in [
            "containerd",
            "ctr",
            "iptables-save",
            "ip",
            "umount",
            "tar",
            "ldd",
        ] {
            crate::clients::require_tool(tool);
        }
        let lock = NodeLock::take();
        let foreign = machine::foreign_kubernetes_processes();
        assert!(
            foreign.is_empty(),
            "another Kubernetes runs on this machine; the test node (and its clean-up) would disturb it: {foreign:#?}"
        );
        if let Some(stale) = Saved::read() {
            eprintln!(
                "node: cleaning up after a run that did not stop ({})",
                stale.workdir.display()
            );
            let errors = machine::undo(&stale);
            assert!(
                errors.is_empty(),
                "cannot clean up after the previous run: {errors:#?}"
            );
        }
        assert!(
            !Path::new("/sys/class/net").join(BRIDGE).exists(),
            "link {BRIDGE} exists already"
        );
        let foreign = machine::foreign_kubernetes();
        assert!(
            foreign.is_empty(),
            "another Kubernetes seems to run on this machine; the test node would disturb it: {foreign:#?}"
        );
        let before = Snapshot::take();
        let work = tempfile::Builder::new()
            .prefix("berth-node-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let saved = Saved::now(&work);
        saved.write();
        let mut node = Node {
            cluster: None,
            work: work.clone(),
            procs: Vec::new(),
            containerd_sock: work.join("containerd.sock"),
            saved,
            before,
            stopped: false,
            _lock: lock,
        };
        node.bring_up();
        node
    }

    fn record(&mut self, pid: u32, marker: &str) {
        self.saved.procs.push((pid, marker.to_string()));
        self.saved.write();
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = self.work.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        let mut wrapped = crate::cluster::dies_with_test(cmd);
        let child = wrapped
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        // What marks the process as this node's in its command line: the work dir if it names it, else the
        // program (the cached binaries' paths are unique).
        let work = self.work.to_string_lossy().into_owned();
        let marker = if cmd.get_args().any(|a| a.to_string_lossy().contains(&work)) {
            work
        } else {
            cmd.get_program().to_string_lossy().into_owned()
        };
        self.record(child.id(), &marker);
        self.procs.push(Proc { name, child, log });
    }

    fn check_alive(&mut self) {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{} exited with {status}:\n{}", p.name, tail(&p.log, 80));
            }
        }
    }

    /// Polls `f` until it gives a value, failing early if a part of the node died.
    pub fn wait_for<T>(
        &mut self,
        deadline: Duration,
        what: &str,
        mut f: impl FnMut(&Node) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            self.check_alive();
            if let Some(v) = f(self) {
                return v;
            }
            if start.elapsed() > deadline {
                panic!(
                    "timed out after {deadline:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            s.push_str(&format!("----- {} -----\n{}\n", p.name, tail(&p.log, 40)));
        }
        s
    }

    pub fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster running")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.cluster().kubectl(args)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.cluster().kubectl_ok(args)
    }

    /// `ctr -n k8s.io ...` against the node's containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd_sock)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ctr")
    }

    /// Imports a docker-archive into the node's containerd (namespace k8s.io, where the kubelet's images are).
    pub fn import(&self, archive: &Path) {
        let out = self.ctr(&[
            "images",
            "import",
            "--no-unpack",
            &archive.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "ctr images import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A directory on the node for a hostPath PersistentVolume, owned by `uid` (hostPath gets no fsGroup).
    pub fn host_path_volume(&self, name: &str, uid: u32, size: &str) {
        let dir = self.work.join("volumes").join(name);
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
        let yaml = format!(
            "apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
spec:
  capacity:
    storage: {size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: \"\"
  hostPath:
    path: {path}
    type: Directory
",
            path = dir.display()
        );
        let out = self.cluster().apply_yaml(&yaml);
        assert!(
            out.status.success(),
            "apply PV: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the node the way a cluster is drained, undoes what it changed on the machine and returns what still
    /// differs from before it started (empty when the machine is as it found it).
    pub fn stop(mut self) -> Vec<String> {
        self.shutdown()
    }

    fn stop_proc(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|p| p.name == name) {
            let mut p = self.procs.remove(i);
            let pid = p.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = p.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    fn shutdown(&mut self) -> Vec<String> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let mut notes = Vec::new();
        // Nothing may create pods any more; then every pod goes while the kubelet still runs, so that their
        // containers, network namespaces and veths go with them.
        self.stop_proc("kube-controller-manager");
        self.stop_proc("kube-scheduler");
        if self.cluster.is_some() && self.procs.iter().any(|p| p.name == "kubelet") {
            let _ = self.kubectl(&[
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--force",
                "--grace-period=0",
                "--wait=false",
            ]);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let tasks = self.ctr(&["tasks", "ls", "-q"]);
                let sandboxes_gone = fs::read_dir("/run/netns")
                    .map(|rd| {
                        rd.flatten()
                            .all(|e| !e.file_name().to_string_lossy().starts_with("cni-"))
                    })
                    .unwrap_or(true);
                if tasks.status.success() && tasks.stdout.is_empty() && sandboxes_gone {
                    break;
                }
                if Instant::now() > deadline {
                    notes.push(format!(
                        "pods' containers still running 60 s after their deletion: {}",
                        String::from_utf8_lossy(&tasks.stdout)
                    ));
                    break;
                }
                thread::sleep(Duration::from_millis(250));
            }
        }
        for name in ["kubelet", "kube-proxy", "containerd"] {
            self.stop_proc(name);
        }
        self.cluster = None; // etcd and the apiserver
        for p in self.procs.drain(..).collect::<Vec<_>>() {
            let mut p = p;
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        notes.extend(machine::undo(&self.saved));
        let after = Snapshot::take();
        notes.extend(after.differences(&self.before));
        notes
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let notes = self.shutdown();
        if !notes.is_empty() {
            eprintln!("node: after stopping, the machine differs: {notes:#?}");
        }
    }
}
