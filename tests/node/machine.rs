//! What a one-node cluster changes on the machine, and how it is undone.
//!
//! A kubelet, kube-proxy, containerd's CRI and the bridge CNI plugin change the machine outside their own
//! directories: sysctls (the kubelet's kernel tunables, kube-proxy's `route_localnet`, the bridge plugin's
//! `ip_forward`), iptables chains (kube-proxy's `KUBE-*`), mounts (the kubelet's bind mount of its root, volume
//! tmpfs, network namespaces under /run/netns), cgroups (`kubepods` in every hierarchy), links (the bridge and the
//! pods' veths) and fixed paths (`/var/lib/kubelet/device-plugins`, `/var/log/pods`, `/var/log/containers`,
//! `/var/lib/cni`, /run/containerd). [`Snapshot`] reads all of that; [`undo`] puts back what [`Saved`] recorded
//! before the cluster started, and works from the state file alone, so a run that was killed is cleaned up by the
//! next one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod undo;
pub use undo::undo;

/// The state of a running (or crashed) node: its work dir, the values to restore, its processes.
pub const STATE_FILE: &str = "/run/berth-test-node.state";

/// The bridge every pod is attached to; its address is the node's and the apiserver's.
pub const BRIDGE: &str = "berthnode0";

/// Sysctls that the kubelet, kube-proxy and the bridge plugin may set.
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/default/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv6/conf/all/forwarding",
    "net/ipv6/conf/default/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
];

/// Fixed paths the node's parts create whatever their flags say.
const FIXED_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/netns",
    "/run/containerd",
];

/// Directories whose entries are compared before and after (a new entry is something left behind).
const WATCHED_DIRS: &[&str] = &[
    "/run",
    "/var/lib",
    "/var/log",
    "/etc",
    "/opt",
    "/sys/fs/cgroup",
];

/// What was true before the cluster started, persisted in [`STATE_FILE`].
#[derive(Debug, Clone, Default)]
pub struct Saved {
    pub workdir: PathBuf,
    pub sysctls: Vec<(String, String)>,
    /// Fixed paths that did not exist (removed again).
    pub absent: Vec<PathBuf>,
    /// Processes started: pid and a string that is in their command line (checked before a kill, so a reused
    /// pid is never killed).
    pub procs: Vec<(u32, String)>,
    /// The nftables tables that existed (iptables-nft creates `ip nat` and the others on first use).
    pub tables: Vec<String>,
}

impl Saved {
    /// Reads the machine's values now.
    pub fn now(workdir: &Path) -> Saved {
        Saved {
            workdir: workdir.to_path_buf(),
            sysctls: SYSCTLS
                .iter()
                .filter_map(|k| read_sysctl(k).map(|v| (k.to_string(), v)))
                .collect(),
            absent: FIXED_PATHS
                .iter()
                .map(PathBuf::from)
                .filter(|p| fs::symlink_metadata(p).is_err())
                .collect(),
            procs: Vec::new(),
            tables: nft_tables(),
        }
    }

    pub fn write(&self) {
        let mut s = format!("workdir {}\n", self.workdir.display());
        for (k, v) in &self.sysctls {
            s.push_str(&format!("sysctl {k} {v}\n"));
        }
        for p in &self.absent {
            s.push_str(&format!("absent {}\n", p.display()));
        }
        for (pid, marker) in &self.procs {
            s.push_str(&format!("proc {pid} {marker}\n"));
        }
        for t in &self.tables {
            s.push_str(&format!("table {t}\n"));
        }
        let tmp = format!("{STATE_FILE}.tmp");
        fs::write(&tmp, s).unwrap_or_else(|e| panic!("write {tmp}: {e}"));
        fs::rename(&tmp, STATE_FILE).unwrap_or_else(|e| panic!("rename {tmp}: {e}"));
    }

    pub fn read() -> Option<Saved> {
        let text = fs::read_to_string(STATE_FILE).ok()?;
        let mut saved = Saved::default();
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("workdir ") {
                saved.workdir = PathBuf::from(p);
                continue;
            }
            if let Some(p) = line.strip_prefix("absent ") {
                saved.absent.push(PathBuf::from(p));
                continue;
            }
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("sysctl"), Some(k), Some(v)) => saved.sysctls.push((k.into(), v.into())),
                (Some("table"), Some(family), Some(name)) => {
                    saved.tables.push(format!("{family} {name}"))
                }
                (Some("proc"), Some(pid), Some(marker)) => {
                    if let Ok(pid) = pid.parse() {
                        saved.procs.push((pid, marker.into()));
                    }
                }
                _ => {}
            }
        }
        Some(saved)
    }
}

/// `nft list tables` as "FAMILY NAME" lines (empty where nft is missing).
fn nft_tables() -> Vec<String> {
    Command::new("nft")
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("table ").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The tables iptables-nft and ip6tables-nft create.
const IPTABLES_TABLES: &[&str] = &["filter", "nat", "mangle", "raw", "security"];

fn read_sysctl(key: &str) -> Option<String> {
    fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()
        .map(|v| v.trim().to_string())
}

/// What the test compares before the cluster starts and after it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    sysctls: BTreeMap<String, String>,
    iptables: BTreeMap<String, Vec<String>>,
    mounts: BTreeSet<String>,
    links: BTreeSet<String>,
    paths: BTreeMap<String, bool>,
    tables: BTreeSet<String>,
    procs: BTreeSet<String>,
    entries: BTreeMap<String, BTreeSet<String>>,
    cgroups: BTreeSet<String>,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut iptables = BTreeMap::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            iptables.insert(tool.to_string(), rules(tool));
        }
        let entries = WATCHED_DIRS
            .iter()
            .map(|d| (d.to_string(), dir_entries(Path::new(d))))
            .collect();
        let mut cgroups = BTreeSet::new();
        for hierarchy in dir_entries(Path::new("/sys/fs/cgroup")) {
            for entry in dir_entries(&Path::new("/sys/fs/cgroup").join(&hierarchy)) {
                if fs::metadata(Path::new("/sys/fs/cgroup").join(&hierarchy).join(&entry))
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    cgroups.insert(format!("{hierarchy}/{entry}"));
                }
            }
        }
        Snapshot {
            sysctls: SYSCTLS
                .iter()
                .filter_map(|k| read_sysctl(k).map(|v| (k.to_string(), v)))
                .collect(),
            iptables,
            mounts: mount_points().into_iter().collect(),
            links: dir_entries(Path::new("/sys/class/net")),
            paths: FIXED_PATHS
                .iter()
                .map(|p| (p.to_string(), fs::symlink_metadata(p).is_ok()))
                .collect(),
            tables: nft_tables().into_iter().collect(),
            procs: node_processes(),
            entries,
            cgroups,
        }
    }

    /// What differs from `before`, one line each (empty when the machine is as it was).
    pub fn differences(&self, before: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &before.sysctls {
            if self.sysctls.get(k) != Some(v) {
                out.push(format!(
                    "sysctl {k}: {v} before, {:?} after",
                    self.sysctls.get(k)
                ));
            }
        }
        for (tool, rules) in &before.iptables {
            let after = &self.iptables[tool];
            for r in after.iter().filter(|r| !rules.contains(r)) {
                out.push(format!("{tool}: new {r}"));
            }
            for r in rules.iter().filter(|r| !after.contains(r)) {
                out.push(format!("{tool}: missing {r}"));
            }
        }
        set_diff(&mut out, "mount", &before.mounts, &self.mounts);
        set_diff(&mut out, "link", &before.links, &self.links);
        set_diff(&mut out, "cgroup", &before.cgroups, &self.cgroups);
        set_diff(&mut out, "nftables table", &before.tables, &self.tables);
        set_diff(&mut out, "process", &before.procs, &self.procs);
        for (p, existed) in &before.paths {
            if self.paths[p] != *existed {
                out.push(format!(
                    "{p}: existed {existed} before, {} after",
                    self.paths[p]
                ));
            }
        }
        for (dir, entries) in &before.entries {
            set_diff(
                &mut out,
                &format!("entry of {dir}"),
                entries,
                &self.entries[dir],
            );
        }
        out
    }
}

fn set_diff(
    out: &mut Vec<String>,
    what: &str,
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
) {
    for x in after.difference(before) {
        out.push(format!("{what}: new {x}"));
    }
    for x in before.difference(after) {
        out.push(format!("{what}: gone {x}"));
    }
}

fn dir_entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// iptables rules and chains without counters and comments.
fn rules(tool: &str) -> Vec<String> {
    let out = Command::new(tool).stdin(Stdio::null()).output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| match l.strip_prefix(':') {
            // ":CHAIN POLICY [packets:bytes]"
            Some(chain) => format!(":{}", chain.split(" [").next().unwrap_or(chain)),
            None => l.to_string(),
        })
        .collect()
}

fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount_path))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn run_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cmdline(pid: u32) -> Option<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

/// Every process id in /proc.
fn pids() -> impl Iterator<Item = u32> {
    dir_entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|e| e.parse::<u32>().ok())
}

/// Live processes (not zombies) of a node: the cached Kubernetes binaries, containerd's shims, anything naming a
/// node's work dir; as "pid command line".
fn node_processes() -> BTreeSet<String> {
    let cache = crate::cluster::test_cache_dir()
        .to_string_lossy()
        .into_owned();
    pids()
        .filter(|pid| {
            // "pid (comm) S ...": skip zombies, whose command line is empty anyway.
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .filter_map(|pid| {
            let c = cmdline(pid)?;
            (c.starts_with(&cache) || c.contains("containerd-shim") || c.contains("/berth-node-"))
                .then(|| format!("{pid} {}", c.chars().take(160).collect::<String>()))
        })
        .collect()
}

/// Every process whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    pids()
        .filter(|&pid| pid != me)
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

/// kubepods cgroups, deepest first, in every hierarchy.
fn kubepods_cgroups() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    // cgroup v2 (one hierarchy at the root) and v1 (one per controller below it).
    let mut hierarchies = vec![root.to_path_buf()];
    hierarchies.extend(dir_entries(root).into_iter().map(|h| root.join(h)));
    for h in hierarchies {
        for top in dir_entries(&h) {
            if top.starts_with("kubepods") {
                walk(&h.join(top), &mut out);
            }
        }
    }
    out
}

/// What another Kubernetes on this machine would have, and a node must not touch: `KUBE-*` iptables chains,
/// `kubepods` cgroups, CRI network namespaces, routes into the pod or service range. [`undo`] removes the first
/// three by name, which is safe only because a node refuses to start while any of them exists (and the clean-up
/// after a killed run first checks [`foreign_kubernetes_processes`]).
pub fn foreign_kubernetes() -> Vec<String> {
    let mut found = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        if rules(tool).iter().any(|r| r.contains("KUBE-")) {
            found.push(format!("{tool} shows KUBE-* chains"));
        }
    }
    for cg in kubepods_cgroups() {
        found.push(format!("cgroup {}", cg.display()));
    }
    for e in dir_entries(Path::new("/run/netns")) {
        if e.starts_with("cni-") {
            found.push(format!("network namespace /run/netns/{e}"));
        }
    }
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for r in routes.lines() {
        if route_overlaps(
            r,
            &[
                (Ipv4Addr::new(10, 244, 0, 0), 24),
                (Ipv4Addr::new(10, 96, 0, 0), 16),
            ],
        ) {
            found.push(format!("route {r}"));
        }
    }
    found
}

/// Whether an `ip route` line's destination overlaps one of `ranges` (the default route overlaps nothing: it is
/// what every address falls back to).
fn route_overlaps(line: &str, ranges: &[(Ipv4Addr, u32)]) -> bool {
    const TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "unreachable",
        "blackhole",
        "prohibit",
        "throw",
        "nat",
    ];
    let mut words = line.split_whitespace();
    let mut dest = words.next().unwrap_or("");
    if TYPES.contains(&dest) {
        dest = words.next().unwrap_or("");
    }
    let (addr, len) = match dest.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().unwrap_or(33)),
        None => (dest, 32),
    };
    let Ok(addr) = addr.parse::<Ipv4Addr>() else {
        return false;
    };
    if len > 32 {
        return false;
    }
    let mask = |l: u32| if l == 0 { 0 } else { u32::MAX << (32 - l) };
    ranges.iter().any(|&(net, net_len)| {
        // Two prefixes overlap when the shorter one contains the other's network address.
        let shorter = len.min(net_len);
        (u32::from(addr) & mask(shorter)) == (u32::from(net) & mask(shorter))
    })
}

/// A kubelet, kube-proxy or apiserver that is not one of the test's cached binaries: another Kubernetes, which a
/// node (and the clean-up after a killed one) must leave alone.
pub fn foreign_kubernetes_processes() -> Vec<String> {
    let cache = crate::cluster::test_cache_dir()
        .to_string_lossy()
        .into_owned();
    pids()
        .filter_map(|pid| {
            let c = cmdline(pid)?;
            let program = c.split(' ').next().unwrap_or("");
            let name = Path::new(program)
                .file_name()?
                .to_string_lossy()
                .into_owned();
            let kube = ["kubelet", "kube-proxy", "kube-apiserver", "k3s", "k0s"]
                .iter()
                .any(|k| name == *k || name.starts_with(&format!("{k}-")));
            (kube && !c.starts_with(&cache)).then(|| format!("{pid} {c}"))
        })
        .collect()
}

#[test]
fn route_overlap_is_by_prefix_not_by_text() {
    let ranges = [
        (Ipv4Addr::new(10, 244, 0, 0), 24),
        (Ipv4Addr::new(10, 96, 0, 0), 16),
    ];
    for (line, overlaps) in [
        ("default via 192.0.2.1 dev eth0", false),
        (
            "192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2",
            false,
        ),
        ("10.10.96.0/24 dev x", false),
        ("110.244.0.0/16 dev x", false),
        ("10.0.0.0/8 via 192.0.2.1 dev eth0", true),
        ("10.240.0.0/12 dev x", true),
        ("10.96.3.0/24 dev x", true),
        (
            "local 10.244.0.1 dev berthnode0 table local proto kernel scope host src 10.244.0.1",
            true,
        ),
        ("broadcast 127.255.255.255 dev lo table local", false),
    ] {
        assert_eq!(route_overlaps(line, &ranges), overlaps, "{line}");
    }
}

#[test]
fn mountinfo_paths_are_unescaped() {
    assert_eq!(unescape_mount_path(r"/tmp/a\040b/c"), "/tmp/a b/c");
    assert_eq!(unescape_mount_path(r"/x\134y"), r"/x\y");
    assert_eq!(unescape_mount_path(r"/plain"), "/plain");
    assert_eq!(unescape_mount_path(r"/trailing\04"), r"/trailing\04");
}
