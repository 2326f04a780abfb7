//! Undoing what a node changed on the machine (see the parent module).

use super::*;

fn kill(pid: u32, signal: &str) {
    run_quiet("kill", &[signal, &pid.to_string()]);
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
        // Empty: only the table, its base chains and their hook lines (no rule, set or map).
        let listing = Command::new("nft")
            .args(["list", "table", family, name])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let has_content = listing.lines().map(str::trim).any(|l| {
            !(l.is_empty()
                || l.starts_with("table ")
                || l.starts_with("chain ")
                || l.starts_with("type ")
                || l == "}")
        });
        if has_content {
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
    if errors.is_empty() {
        let _ = fs::remove_file(STATE_FILE);
    }
    errors
}
