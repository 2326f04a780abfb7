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

pub mod images;
pub mod machine;
mod scenario;

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

    fn bring_up(&mut self) {
        let w = self.work.clone();
        // The bridge first: everything listens on its address.
        must(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]));
        must(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE]));
        must(Command::new("ip").args(["link", "set", BRIDGE, "up"]));

        let cluster = Cluster::start_with(&ClusterOptions {
            address: IpAddr::V4(NODE_IP),
            node: true,
            dir_in: Some(w.clone()),
        });
        let marker = cluster.dir().to_string_lossy().into_owned();
        for pid in cluster.pids() {
            self.record(pid, &marker);
        }
        let pki = cluster.dir().join("pki");
        let admin = cluster.kubeconfig.clone();
        let kubelet_kubeconfig =
            cluster.kubeconfig_for(&format!("system:node:{NODE_NAME}"), &["system:nodes"]);
        self.cluster = Some(cluster);

        // containerd with CRI.
        let runc_root = w.join("runc");
        let cni_conf = w.join("cni/net.d");
        fs::create_dir_all(&cni_conf).unwrap();
        fs::write(
            w.join("containerd.toml"),
            crate::clients::containerd_config(&w.join("containerd"), &self.containerd_sock, true)
                + &format!(
                    r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM withholds CAP_SYS_RESOURCE: a negative oom_score_adj (asked for every sandbox) fails every pod.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
                    pause = PAUSE_IMAGE,
                    runc = runc_root.display(),
                    cni = cni_conf.display(),
                ),
        )
        .unwrap();
        fs::write(
            cni_conf.join("10-berth-node.conflist"),
            serde_json::to_string_pretty(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "berth-node",
                "plugins": [{
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "isDefaultGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP.to_string()}]],
                        "dataDir": w.join("cni/ipam").to_string_lossy(),
                    }
                }]
            }))
            .unwrap(),
        )
        .unwrap();
        let conf = w.join("containerd.toml");
        self.spawn(
            "containerd",
            Command::new("containerd").arg("--config").arg(&conf),
        );
        self.wait_for(Duration::from_secs(30), "containerd to answer", |n| {
            n.ctr(&["version"]).status.success().then_some(())
        });
        let pause = w.join("pause.tar");
        images::pause_image(&w.join("images"), &cached("pause"), PAUSE_IMAGE, &pause);
        self.import(&pause);

        // kubelet.
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let kubelet_port = free_port_on(IpAddr::V4(NODE_IP));
        fs::write(
            w.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions ndots:1\n",
        )
        .unwrap();
        fs::write(
            w.join("kubelet.yaml"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: {kubelet_port}
readOnlyPort: 0
healthzPort: 0
cgroupDriver: cgroupfs
failSwapOn: false
makeIPTablesUtilChains: false
volumePluginDir: {plugins}
resolvConf: {resolv}
clusterDomain: cluster.local
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
",
                plugins = w.join("kubelet-plugins").display(),
                resolv = w.join("resolv.conf").display(),
                ca = pki.join("ca.crt").display(),
            ),
        )
        .unwrap();
        let root_dir = w.join("kubelet");
        self.spawn(
            "kubelet",
            Command::new(cached("kubelet"))
                .arg(format!("--config={}", w.join("kubelet.yaml").display()))
                .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
                .arg("--container-runtime=remote")
                .arg(format!(
                    "--container-runtime-endpoint=unix://{}",
                    self.containerd_sock.display()
                ))
                .arg(format!("--root-dir={}", root_dir.display()))
                .arg(format!("--cert-dir={}", w.join("kubelet-pki").display()))
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--node-ip={NODE_IP}"))
                .arg(format!("--pod-infra-container-image={PAUSE_IMAGE}"))
                .arg("--logtostderr=true")
                .arg("--v=2"),
        );
        self.spawn(
            "kube-proxy",
            Command::new(cached("kube-proxy"))
                .arg(format!("--kubeconfig={}", admin.display()))
                .arg("--proxy-mode=iptables")
                .arg(format!("--hostname-override={NODE_NAME}"))
                .arg(format!("--bind-address={NODE_IP}"))
                .arg(format!("--cluster-cidr={POD_SUBNET}"))
                // Leave the machine's conntrack settings alone.
                .arg("--conntrack-max-per-core=0")
                .arg("--conntrack-tcp-timeout-established=0")
                .arg("--conntrack-tcp-timeout-close-wait=0")
                .arg(format!(
                    "--healthz-bind-address=127.0.0.1:{}",
                    free_port_on(localhost)
                ))
                .arg(format!(
                    "--metrics-bind-address=127.0.0.1:{}",
                    free_port_on(localhost)
                ))
                .arg("--logtostderr=true")
                .arg("--v=1"),
        );
        self.spawn(
            "kube-controller-manager",
            Command::new(cached("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", admin.display()))
                .arg("--leader-elect=false")
                .arg(format!(
                    "--service-account-private-key-file={}",
                    pki.join("sa.key").display()
                ))
                .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
                .arg("--node-monitor-period=1s")
                .arg(format!(
                    "--flex-volume-plugin-dir={}",
                    w.join("flex").display()
                ))
                .arg("--port=0")
                .arg("--secure-port=0")
                .arg("--logtostderr=true")
                .arg("--v=1"),
        );
        self.spawn(
            "kube-scheduler",
            Command::new(cached("kube-scheduler"))
                .arg(format!("--kubeconfig={}", admin.display()))
                .arg("--leader-elect=false")
                .arg("--port=0")
                .arg("--secure-port=0")
                .arg("--logtostderr=true")
                .arg("--v=1"),
        );

        self.wait_for(Duration::from_secs(90), "node berth-node Ready", |n| {
            let out = n.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ]);
            (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
        });
        self.wait_for(
            Duration::from_secs(60),
            "the default ServiceAccount's token",
            |n| {
                let out = n.kubectl(&[
                    "get",
                    "serviceaccount",
                    "default",
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ]);
                (out.status.success() && !out.stdout.is_empty()).then_some(())
            },
        );
        self.wait_for(
            Duration::from_secs(30),
            "the kubernetes Service's endpoint",
            |n| {
                let out = n.kubectl(&[
                    "get",
                    "endpoints",
                    "kubernetes",
                    "-o",
                    "jsonpath={.subsets[0].addresses[0].ip}",
                ]);
                (String::from_utf8_lossy(&out.stdout) == NODE_IP.to_string()).then_some(())
            },
        );
        // Kubernetes 1.20 does not label namespaces with their name; the README asks for this label.
        self.kubectl_ok(&["label", "namespace", "kube-system", "berth.dev/ignore=true"]);
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
