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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

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
    /// Other directories of the node to remove (the control plane's, the upstream's).
    pub dirs: Vec<PathBuf>,
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
            dirs: Vec::new(),
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
        for d in &self.dirs {
            s.push_str(&format!("dir {}\n", d.display()));
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
            if let Some(p) = line.strip_prefix("dir ") {
                saved.dirs.push(PathBuf::from(p));
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
        for (k, v) in &self.sysctls {
            if !before.sysctls.contains_key(k) {
                out.push(format!("sysctl {k}: absent before, {v} after"));
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
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
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

/// Live processes (not zombies) of a node: the cached Kubernetes binaries, containerd's shims, anything naming a
/// node's work dir; as "pid command line".
fn node_processes() -> BTreeSet<String> {
    let cache = crate::cluster::test_cache_dir()
        .to_string_lossy()
        .into_owned();
    dir_entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|e| e.parse::<u32>().ok())
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
    dir_entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|e| e.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

fn kill(pid: u32, signal: &str) {
    run_quiet("kill", &[signal, &pid.to_string()]);
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
/// `kubepods` cgroups, CRI network namespaces, routes into the pod or service range. [`undo`] removes these by
/// name, which is safe only because a node refuses to start while any of them exists.
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
        if r.contains("10.244.") || r.contains("10.96.") {
            found.push(format!("route {r}"));
        }
    }
    found
}

/// Removes `KUBE-*` chains and the rules that jump to them, in every table, IPv4 and IPv6.
fn remove_kube_chains() -> Vec<String> {
    let mut errors = Vec::new();
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        let Ok(out) = Command::new(save).stdin(Stdio::null()).output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut script = String::new();
        let mut table = String::new();
        let mut chains = Vec::new();
        let mut deletes = Vec::new();
        let flush = |script: &mut String,
                     table: &str,
                     chains: &mut Vec<String>,
                     deletes: &mut Vec<String>| {
            if table.is_empty() || (chains.is_empty() && deletes.is_empty()) {
                chains.clear();
                deletes.clear();
                return;
            }
            script.push_str(&format!("*{table}\n"));
            for d in deletes.drain(..) {
                script.push_str(&d);
                script.push('\n');
            }
            for c in chains.iter() {
                script.push_str(&format!("-F {c}\n"));
            }
            for c in chains.drain(..) {
                script.push_str(&format!("-X {c}\n"));
            }
            script.push_str("COMMIT\n");
        };
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if let Some(chain) = line.strip_prefix(':') {
                let name = chain.split(' ').next().unwrap_or("");
                if name.starts_with("KUBE-") {
                    chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split(' ').next().unwrap_or("");
                if !chain.starts_with("KUBE-") && rule.contains("KUBE-") {
                    deletes.push(format!("-D {rule}"));
                }
            } else if line == "COMMIT" {
                flush(&mut script, &table, &mut chains, &mut deletes);
                table.clear();
            }
        }
        if script.is_empty() {
            continue;
        }
        let mut child = match Command::new(restore)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{restore}: {e}"));
                continue;
            }
        };
        use std::io::Write as _;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        match child.wait_with_output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => errors.push(format!(
                "{restore} --noflush failed: {}\n{script}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => errors.push(format!("{restore}: {e}")),
        }
    }
    errors
}

/// Puts the machine back as `saved` recorded it: stops every process of the node, unmounts, removes iptables
/// chains, links, cgroups and the paths that were absent, restores the sysctls and removes the work dir and the
/// state file. Best effort, idempotent; returns what could not be undone.
pub fn undo(saved: &Saved) -> Vec<String> {
    let mut errors = Vec::new();
    let workdir = saved.workdir.to_string_lossy().into_owned();

    // Processes: those recorded, anything naming the work dir (containerd's shims), anything in kubepods.
    for (pid, marker) in &saved.procs {
        if cmdline(*pid).is_some_and(|c| c.contains(marker.as_str())) {
            kill(*pid, "-KILL");
        }
    }
    if !workdir.is_empty() {
        for pid in processes_mentioning(&workdir) {
            kill(pid, "-KILL");
        }
    }
    for cg in kubepods_cgroups() {
        for pid in fs::read_to_string(cg.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                kill(pid, "-KILL");
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && (saved
            .procs
            .iter()
            .any(|(pid, m)| cmdline(*pid).is_some_and(|c| c.contains(m.as_str())))
            || (!workdir.is_empty() && !processes_mentioning(&workdir).is_empty()))
    {
        thread::sleep(Duration::from_millis(100));
    }

    // Mounts under the work dir, the kubelet's fixed dirs and the pods' network namespaces, deepest first.
    let mut under: Vec<String> = vec!["/run/netns/cni-".into()];
    if !workdir.is_empty() {
        under.push(workdir.clone());
    }
    for p in &saved.absent {
        under.push(p.to_string_lossy().into_owned());
    }
    let mut mounts: Vec<String> = mount_points()
        .into_iter()
        .filter(|m| {
            under.iter().any(|u| {
                // /run/netns/cni-* by name, the rest as paths (so /var/lib/kubelet-x is not /var/lib/kubelet).
                if u.ends_with('-') {
                    m.starts_with(u.as_str())
                } else {
                    Path::new(m).starts_with(u)
                }
            })
        })
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    for m in &mounts {
        // A path may be mounted several times over; unmount until it is gone.
        for _ in 0..8 {
            if !mount_points().contains(m) {
                break;
            }
            if !run_quiet("umount", &[m]) {
                run_quiet("umount", &["-l", m]);
            }
        }
        if mount_points().contains(m) {
            errors.push(format!("cannot unmount {m}"));
        }
    }
    for entry in dir_entries(Path::new("/run/netns")) {
        if entry.starts_with("cni-") {
            let _ = fs::remove_file(Path::new("/run/netns").join(entry));
        }
    }

    errors.extend(remove_kube_chains());
    // Tables that iptables-nft created for the node's rules (empty now).
    for table in nft_tables() {
        let mut parts = table.split(' ');
        let (Some(family), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !(family == "ip" || family == "ip6")
            || !IPTABLES_TABLES.contains(&name)
            || saved.tables.contains(&table)
        {
            continue;
        }
        let save = if family == "ip" {
            "iptables-save"
        } else {
            "ip6tables-save"
        };
        let rules = Command::new(save)
            .args(["-t", name])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if rules.lines().any(|l| l.starts_with("-A ")) {
            errors.push(format!(
                "nftables table {table} is new but still has rules; left as it is"
            ));
        } else if !run_quiet("nft", &["delete", "table", family, name]) {
            errors.push(format!("cannot delete nftables table {table}"));
        }
    }

    // Links: the pods' veths on the bridge, then the bridge.
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        for port in dir_entries(&Path::new("/sys/class/net").join(BRIDGE).join("brif")) {
            run_quiet("ip", &["link", "del", &port]);
        }
        if !run_quiet("ip", &["link", "del", BRIDGE]) {
            errors.push(format!("cannot delete link {BRIDGE}"));
        }
    }

    for cg in kubepods_cgroups() {
        let mut removed = false;
        for _ in 0..20 {
            if fs::remove_dir(&cg).is_ok() || !cg.exists() {
                removed = true;
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if !removed {
            errors.push(format!("cannot remove cgroup {}", cg.display()));
        }
    }

    for (k, v) in &saved.sysctls {
        if read_sysctl(k).as_deref() != Some(v.as_str())
            && fs::write(Path::new("/proc/sys").join(k), v).is_err()
        {
            errors.push(format!("cannot restore sysctl {k}={v}"));
        }
    }

    for p in &saved.absent {
        if mount_points().iter().any(|m| Path::new(m).starts_with(p)) {
            errors.push(format!("{} still has mounts; not removed", p.display()));
            continue;
        }
        let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
    }
    if !workdir.is_empty() && saved.workdir.exists() {
        if mount_points()
            .iter()
            .any(|m| Path::new(m).starts_with(&saved.workdir))
        {
            errors.push(format!("{workdir} still has mounts; not removed"));
        } else if let Err(e) = fs::remove_dir_all(&saved.workdir) {
            errors.push(format!("remove {workdir}: {e}"));
        }
    }
    for d in &saved.dirs {
        if d.exists() && !mount_points().iter().any(|m| Path::new(m).starts_with(d)) {
            let _ = fs::remove_dir_all(d);
        }
    }
    if errors.is_empty() {
        let _ = fs::remove_file(STATE_FILE);
    }
    errors
}
