//! Container images for the node, written as docker-archive tarballs that `ctr images import` and
//! `skopeo copy docker-archive:` read.
//!
//! berth's Containerfile builds on `docker.io/library/rust` and `gcr.io/distroless/cc-debian12`, which cannot be
//! fetched here. [`berth_image`] is as close to its final stage as this machine allows: the release binary at
//! `/berth`, the shared libraries it links (what distroless/cc provides: glibc, libgcc), CA certificates, an
//! `/etc/passwd` with the `nonroot` user 65532, `USER 65532:65532`, `ENTRYPOINT ["/berth"]`, `EXPOSE 8443`.

use sha2::{Digest as _, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file of an image: where it comes from on this machine, where it goes, its mode.
pub struct File {
    pub from: PathBuf,
    pub to: String,
    pub mode: u32,
}

impl File {
    pub fn new(from: impl Into<PathBuf>, to: &str, mode: u32) -> File {
        File {
            from: from.into(),
            to: to.to_string(),
            mode,
        }
    }
}

/// What an image's config says about how it runs.
pub struct Config<'a> {
    pub user: &'a str,
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    pub exposed: &'a [&'a str],
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tar(dir: &Path, out: &Path, args: &[&str]) {
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(args)
        .status()
        .expect("spawn tar");
    assert!(status.success(), "tar -C {} failed", dir.display());
}

/// Writes a one-layer image named `name` (e.g. `berth.test/berth:node`) as a docker-archive at `out`.
pub fn docker_archive(work: &Path, name: &str, files: &[File], config: &Config, out: &Path) {
    let root = work.join("rootfs");
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(&root).unwrap();
    for f in files {
        let to = root.join(f.to.trim_start_matches('/'));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&f.from, &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", f.from.display(), f.to));
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&to, fs::Permissions::from_mode(f.mode)).unwrap();
    }
    // Every image has a /tmp that anyone may write to (distroless too).
    let tmp = root.join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();

    let archive = work.join("archive");
    fs::create_dir_all(&archive).unwrap();
    let layer = archive.join("layer.tar");
    tar(&root, &layer, &["."]);
    let diff_id = format!("sha256:{}", hex(&fs::read(&layer).unwrap()));
    let ports: serde_json::Map<String, serde_json::Value> = config
        .exposed
        .iter()
        .map(|p| (p.to_string(), serde_json::json!({})))
        .collect();
    let image_config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": config.user,
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "ExposedPorts": ports,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config_bytes = serde_json::to_vec(&image_config).unwrap();
    let config_name = format!("{}.json", hex(&config_bytes));
    fs::write(archive.join(&config_name), &config_bytes).unwrap();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": ["layer.tar"],
    }]);
    fs::write(
        archive.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    tar(&archive, out, &["manifest.json", &config_name, "layer.tar"]);
}

/// The shared libraries `binary` loads (with the dynamic loader), as image files at the same paths.
fn libraries_of(binary: &Path) -> Vec<File> {
    let out = Command::new("ldd").arg(binary).output().expect("spawn ldd");
    assert!(out.status.success(), "ldd {} failed", binary.display());
    let mut files = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim().split(' ').next().unwrap_or(""),
            None => line.trim().split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            files.push(File::new(path, path, 0o755));
        }
    }
    assert!(
        files.iter().any(|f| f.to.contains("libc.so")),
        "ldd found no libc for {}",
        binary.display()
    );
    files
}

/// berth's image (see the module docs) from `binary`, written to `out` as `name`.
pub fn berth_image(work: &Path, binary: &Path, name: &str, out: &Path) {
    let etc = work.join("etc-files");
    fs::create_dir_all(&etc).unwrap();
    // distroless's users: root and nonroot (65532).
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    fs::write(etc.join("group"), "root:x:0:\nnonroot:x:65532:\n").unwrap();
    let mut files = vec![
        File::new(binary, "/berth", 0o755),
        File::new(etc.join("passwd"), "/etc/passwd", 0o644),
        File::new(etc.join("group"), "/etc/group", 0o644),
        File::new(
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/ssl/certs/ca-certificates.crt",
            0o644,
        ),
    ];
    files.extend(libraries_of(binary));
    docker_archive(
        &work.join("berth"),
        name,
        &files,
        &Config {
            user: "65532:65532",
            entrypoint: &["/berth"],
            cmd: &[],
            exposed: &["8443/tcp"],
        },
        out,
    );
}

/// The sandbox ("pause") image: the static pause binary built from the Kubernetes source.
pub fn pause_image(work: &Path, binary: &Path, name: &str, out: &Path) {
    docker_archive(
        &work.join("pause"),
        name,
        &[File::new(binary, "/pause", 0o755)],
        &Config {
            user: "65535:65535",
            entrypoint: &["/pause"],
            cmd: &[],
            exposed: &[],
        },
        out,
    );
}

/// A small application image: busybox-static, running `sleep` (and whatever `extra` adds, e.g. a big file).
pub fn app_image(work: &Path, name: &str, extra: &[File], out: &Path) {
    let mut files = vec![File::new("/bin/busybox", "/bin/busybox", 0o755)];
    for f in extra {
        files.push(File::new(&f.from, &f.to, f.mode));
    }
    docker_archive(
        work,
        name,
        &files,
        &Config {
            user: "65532:65532",
            entrypoint: &["/bin/busybox"],
            cmd: &["sleep", "3600"],
            exposed: &[],
        },
        out,
    );
}
