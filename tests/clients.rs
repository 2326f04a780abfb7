//! Real-client integration tests: skopeo, buildah, podman and containerd's
//! `ctr` talking to a live `berth serve` on 127.0.0.1.
//!
//! Every test is self-contained: containers/storage lives in a temp dir (vfs
//! driver), the containers-* config files are temp files selected through
//! `CONTAINERS_STORAGE_CONF`, `CONTAINERS_REGISTRIES_CONF` and
//! `CONTAINERS_CONF`, and berth's CA is trusted through a per-test
//! `--cert-dir`. Nothing touches the machine's global podman/containerd state.
//! The client binaries are installed by `tests/run.sh`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{poll_until, read_to_string, write_file, Berth, Options};

/// Deadline for one ordinary client command.
const CMD_TIMEOUT: Duration = Duration::from_secs(180);
/// Deadline for one client command moving the 200 MB layer.
const BIG_TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------
// Running client commands
// ---------------------------------------------------------------------------

/// Absolute path of `name` found in PATH (plus the sbin dirs), or a clear panic.
pub(crate) fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    panic!(
        "client binary `{name}` not found in PATH. The client tests need skopeo, podman, \
         buildah, containerd (ctr) and busybox-static; run `bash tests/run.sh`, which \
         installs them with apt-get"
    );
}

/// A command for `tool` with proxies removed (all traffic stays on 127.0.0.1).
pub(crate) fn tool(name: &str) -> Command {
    tool_at(&require_tool(name))
}

/// [`tool`] for the program at `path`.
pub(crate) fn tool_at(path: &Path) -> Command {
    let mut cmd = Command::new(path);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "*").env("no_proxy", "*");
    cmd
}

pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    desc: String,
}

impl Output {
    pub(crate) fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.desc, self.status, self.stdout, self.stderr
        )
    }
}

/// Run `cmd` to completion with a deadline; kills its whole process group
/// and panics if the deadline passes.
pub(crate) fn run(cmd: Command, timeout: Duration) -> Output {
    run_with_input(cmd, timeout, None)
}

/// [`run`] with `input` written to the command's standard input (then closed); `None`: no standard input.
pub(crate) fn run_with_input(mut cmd: Command, timeout: Duration, input: Option<&[u8]>) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {desc}: {e}"));
    let writer = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => {
            let input = input.to_vec();
            // A thread, so a command that does not read its input cannot block the deadline below.
            Some(thread::spawn(move || {
                let _ = stdin.write_all(&input);
            }))
        }
        _ => None,
    };
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > end {
            kill_group(&mut child);
            let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!(
                "timed out after {timeout:?}: {desc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Output {
        status,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
        desc,
    }
}

/// SIGKILL the process group led by `child` (it was started with
/// `process_group(0)`), then reap the child.
pub(crate) fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Run and require exit status 0; returns stdout.
pub(crate) fn ok(cmd: Command) -> String {
    ok_within(cmd, CMD_TIMEOUT)
}

pub(crate) fn ok_within(cmd: Command, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    assert!(out.status.success(), "command failed\n{}", out.describe());
    out.stdout
}

/// Run and require a non-zero exit status; returns the output.
pub(crate) fn fails(cmd: Command) -> Output {
    let out = run(cmd, CMD_TIMEOUT);
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded\n{}",
        out.describe()
    );
    out
}

// ---------------------------------------------------------------------------
// Hashing and small helpers
// ---------------------------------------------------------------------------

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha256:<hex>` of a (possibly huge) file, via coreutils' sha256sum (fast
/// even though the tests are built without optimisation).
pub(crate) fn sha256_file(path: &Path) -> String {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(path);
    let out = ok(cmd);
    let hex = out.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "unexpected sha256sum output: {out}");
    format!("sha256:{hex}")
}

fn parse_json(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {text}"))
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

/// `Labels` of a `skopeo inspect` document as a sorted map.
fn labels_of(inspect: &Value) -> BTreeMap<String, String> {
    inspect["Labels"]
        .as_object()
        .unwrap_or_else(|| panic!("no Labels in {inspect}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
}

// ---------------------------------------------------------------------------
// Per-test containers/* client environment
// ---------------------------------------------------------------------------

/// An isolated environment for skopeo/buildah/podman: its own storage
/// (vfs driver), registries.conf, containers.conf, auth file, TMPDIR and a
/// cert dir holding berth's CA as `ca.crt`.
pub(crate) struct ClientEnv {
    dir: tempfile::TempDir,
    pub(crate) certs: PathBuf,
    tls: bool,
}

impl ClientEnv {
    pub(crate) fn new(berth: &Berth) -> ClientEnv {
        let dir = tempdir("berth-clients-");
        let d = dir.path();
        for sub in ["storage", "run", "tmp", "libpod-tmp", "certs"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        write_file(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("storage").display(),
                d.join("run").display()
            ),
        );
        // buildah insists that an explicitly named auth file exists.
        write_file(d.join("auth.json"), "{\"auths\": {}}\n");
        write_file(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        );
        write_file(
            d.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\ntmp_dir = \"{}\"\n",
                d.join("libpod-tmp").display()
            ),
        );
        let certs = d.join("certs");
        // Only the CA: berth's own cert dir also holds tls.key, and
        // containers/image rejects a *.key without a matching *.cert.
        if !berth.plain_http {
            fs::copy(berth.ca_file(), certs.join("ca.crt")).unwrap_or_else(|e| {
                panic!("copying {}: {e}", berth.ca_file().display());
            });
        }
        ClientEnv {
            dir,
            certs,
            tls: !berth.plain_http,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn cmd(&self, name: &str, args: &[&str]) -> Command {
        let d = self.path();
        let mut cmd = tool(name);
        cmd.args(args);
        cmd.env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("TMPDIR", d.join("tmp"))
            .current_dir(d);
        cmd
    }

    /// `name SUBCOMMAND... [trust flags] ARGS...`: the registry trust flags
    /// go right after the subcommand (buildah rejects options after the
    /// image name).
    pub(crate) fn reg_cmd(&self, name: &str, sub: &[&str], args: &[&str]) -> Command {
        let mut cmd = self.cmd(name, sub);
        if self.tls {
            cmd.arg("--cert-dir").arg(&self.certs);
        } else {
            cmd.arg("--tls-verify=false");
        }
        cmd.args(args);
        cmd
    }

    pub(crate) fn skopeo(&self, sub: &str, args: &[&str]) -> Command {
        self.reg_cmd("skopeo", &[sub], args)
    }

    /// `skopeo copy` trusting berth on both sides.
    pub(crate) fn skopeo_copy(&self, extra: &[&str], src: &str, dst: &str) -> Command {
        let mut cmd = self.cmd("skopeo", &["copy"]);
        if self.tls {
            cmd.arg("--src-cert-dir").arg(&self.certs);
            cmd.arg("--dest-cert-dir").arg(&self.certs);
        } else {
            cmd.arg("--src-tls-verify=false")
                .arg("--dest-tls-verify=false");
        }
        cmd.args(extra).arg(src).arg(dst);
        cmd
    }

    pub(crate) fn inspect(&self, image: &str) -> Value {
        let out = ok(self.skopeo("inspect", &[image]));
        parse_json(&out, "skopeo inspect output")
    }

    fn inspect_raw(&self, image: &str) -> String {
        ok(self.skopeo("inspect", &["--raw", image]))
    }

    fn list_tags(&self, repo: &str) -> Vec<String> {
        let out = ok(self.skopeo("list-tags", &[repo]));
        let v = parse_json(&out, "skopeo list-tags output");
        v["Tags"]
            .as_array()
            .unwrap_or_else(|| panic!("no Tags array: {out}"))
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// OCI image fixtures written from scratch (exact bytes, so exact digests)
// ---------------------------------------------------------------------------

/// A minimal ustar archive of regular files (uid/gid 0, mtime 0).
fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        assert!(name.len() < 100, "tar name too long: {name}");
        let mut h = [0u8; 512];
        let mut put = |off: usize, s: &[u8]| h[off..off + s.len()].copy_from_slice(s);
        put(0, name.as_bytes());
        put(100, b"0000644\0");
        put(108, b"0000000\0");
        put(116, b"0000000\0");
        put(124, format!("{:011o}\0", data.len()).as_bytes());
        put(136, b"00000000000\0");
        put(148, b"        ");
        put(156, b"0");
        put(257, b"ustar\0");
        put(263, b"00");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// gzip `data` with `gzip -n` (deterministic: no name, no mtime).
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("gzip");
    writer.join().unwrap().expect("write to gzip");
    assert!(out.status.success(), "gzip failed");
    out.stdout
}

/// One image written into an OCI image layout directory.
#[derive(Debug, Clone)]
pub(crate) struct Fixture {
    /// Exact manifest bytes and their digest.
    pub(crate) manifest: Vec<u8>,
    pub(crate) digest: String,
    pub(crate) config_digest: String,
    /// (digest, size) of each layer blob.
    pub(crate) layers: Vec<(String, u64)>,
}

/// An OCI image layout (`oci:` / `oci-archive:` source for skopeo).
pub(crate) struct OciLayout {
    pub(crate) dir: PathBuf,
    index: Vec<Value>,
}

impl OciLayout {
    pub(crate) fn new(dir: PathBuf) -> OciLayout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        write_file(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#);
        OciLayout { dir, index: vec![] }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn add_blob(&self, data: &[u8]) -> (String, u64) {
        let digest = sha256_digest(data);
        write_file(self.blob_path(&digest), data);
        (digest, data.len() as u64)
    }

    /// Move an existing file into the layout as a blob.
    fn add_blob_file(&self, path: &Path) -> (String, u64) {
        let digest = sha256_file(path);
        let size = fs::metadata(path).unwrap().len();
        fs::rename(path, self.blob_path(&digest)).unwrap();
        (digest, size)
    }

    /// Add an image with the given gzip layers (digest, size, diff_id),
    /// labels and architecture, tagged `tag` in index.json.
    fn add_image(
        &mut self,
        tag: &str,
        arch: &str,
        labels: &[(&str, &str)],
        layers: &[(String, u64, String)],
    ) -> Fixture {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {
                "Labels": labels,
                "Cmd": ["/bin/sh"],
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>(),
            },
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "berth client tests"}],
        });
        let (config_digest, config_size) = self.add_blob(&serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers.iter().map(|(d, s, _)| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d,
                "size": s,
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let (digest, size) = self.add_blob(&manifest);
        self.index.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        let index = json!({"schemaVersion": 2, "manifests": self.index});
        write_file(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        );
        Fixture {
            manifest,
            digest,
            config_digest,
            layers: layers.iter().map(|(d, s, _)| (d.clone(), *s)).collect(),
        }
    }

    /// A one-layer image holding `files`.
    pub(crate) fn add_simple_image(
        &mut self,
        tag: &str,
        labels: &[(&str, &str)],
        files: &[(&str, &[u8])],
    ) -> Fixture {
        let tarball = tar(files);
        let diff_id = sha256_digest(&tarball);
        let (d, s) = self.add_blob(&gzip(&tarball));
        self.add_image(tag, "amd64", labels, &[(d, s, diff_id)])
    }

    /// Pack the layout as an `oci-archive:` tarball.
    fn archive(&self, dest: &Path) {
        let mut cmd = Command::new("tar");
        cmd.arg("-C").arg(&self.dir).arg("-cf").arg(dest).arg(".");
        ok(cmd);
    }
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

/// copy (oci-archive and oci layout → docker://), inspect (digest, labels,
/// raw manifest), list-tags (exact list), copy back to dir:, delete.
fn skopeo_flow(berth: &Berth) {
    let env = ClientEnv::new(berth);
    let h = &berth.host;
    let repo = format!("docker://{h}/skopeo/app");

    let mut layout = OciLayout::new(env.path().join("layout"));
    let labels_a = [("org.example.test", "berth"), ("variant", "a")];
    let a = layout.add_simple_image("a", &labels_a, &[("hello.txt", b"hello from image a\n")]);
    let b = layout.add_simple_image(
        "b",
        &[("org.example.test", "berth"), ("variant", "b")],
        &[("hello.txt", b"hello from image b\n")],
    );
    assert_ne!(a.digest, b.digest);
    let archive = env.path().join("images.tar");
    layout.archive(&archive);

    // oci-archive → docker://, twice (v1 and latest); oci layout → v2.
    let digest_file = env.path().join("digest-v1");
    ok(env.skopeo_copy(
        &["--digestfile", digest_file.to_str().unwrap()],
        &format!("oci-archive:{}:a", archive.display()),
        &format!("{repo}:v1"),
    ));
    assert_eq!(read_to_string(&digest_file).trim(), a.digest);
    ok(env.skopeo_copy(
        &[],
        &format!("oci:{}:b", layout.dir.display()),
        &format!("{repo}:v2"),
    ));
    ok(env.skopeo_copy(
        &[],
        &format!("oci-archive:{}:a", archive.display()),
        &format!("{repo}:latest"),
    ));

    // inspect: digest, labels, architecture, layers.
    let info = env.inspect(&format!("{repo}:v1"));
    assert_eq!(info["Digest"], json!(a.digest), "inspect v1: {info}");
    assert_eq!(info["Name"], json!(format!("{h}/skopeo/app")));
    assert_eq!(info["Architecture"], json!("amd64"));
    assert_eq!(info["Os"], json!("linux"));
    assert_eq!(
        labels_of(&info),
        labels_a
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(info["Layers"], json!([a.layers[0].0]));
    let info_b = env.inspect(&format!("{repo}:v2"));
    assert_eq!(info_b["Digest"], json!(b.digest));
    assert_eq!(labels_of(&info_b)["variant"], "b");
    // The manifest is served byte for byte, by tag and by digest.
    assert_eq!(
        env.inspect_raw(&format!("{repo}:v1")).as_bytes(),
        &a.manifest[..]
    );
    assert_eq!(
        env.inspect_raw(&format!("{repo}@{}", b.digest)).as_bytes(),
        &b.manifest[..]
    );
    let config = ok(env.skopeo("inspect", &["--config", "--raw", &format!("{repo}:v1")]));
    assert_eq!(sha256_digest(config.as_bytes()), a.config_digest);

    // list-tags: exact list, lexical order.
    assert_eq!(env.list_tags(&repo), strings(&["latest", "v1", "v2"]));

    // Round trip: pull v2 into a dir: and compare every blob.
    let out_dir = env.path().join("pulled-v2");
    ok(env.skopeo_copy(
        &[],
        &format!("{repo}:v2"),
        &format!("dir:{}", out_dir.display()),
    ));
    assert_eq!(fs::read(out_dir.join("manifest.json")).unwrap(), b.manifest);
    for (digest, size) in &b.layers {
        let file = out_dir.join(digest.trim_start_matches("sha256:"));
        assert_eq!(fs::metadata(&file).unwrap().len(), *size);
        assert_eq!(sha256_file(&file), *digest);
    }

    // delete v2 (by its digest, as skopeo does): gone by tag and by digest,
    // absent from the tag list, and v1 is untouched.
    ok(env.skopeo("delete", &[&format!("{repo}:v2")]));
    let gone = fails(env.skopeo("inspect", &[&format!("{repo}:v2")]));
    assert!(
        gone.stderr.contains("manifest unknown"),
        "expected MANIFEST_UNKNOWN\n{}",
        gone.describe()
    );
    fails(env.skopeo("inspect", &["--raw", &format!("{repo}@{}", b.digest)]));
    assert_eq!(env.list_tags(&repo), strings(&["latest", "v1"]));
    assert_eq!(
        env.inspect(&format!("{repo}:v1"))["Digest"],
        json!(a.digest)
    );
}

#[test]
fn skopeo_copy_inspect_list_tags_delete_tls() {
    let berth = Berth::start(Options::default());
    skopeo_flow(&berth);

    // TLS is really checked: without berth's CA the client refuses.
    let env = ClientEnv::new(&berth);
    let image = format!("docker://{}/skopeo/app:v1", berth.host);
    let out = fails(env.cmd("skopeo", &["inspect", &image]));
    assert!(
        out.stderr
            .contains("certificate signed by unknown authority"),
        "expected an x509 error without the CA\n{}",
        out.describe()
    );
}

#[test]
fn skopeo_copy_inspect_list_tags_delete_plain_http() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    skopeo_flow(&berth);
}

// ---------------------------------------------------------------------------
// buildah + podman
// ---------------------------------------------------------------------------

#[test]
fn buildah_push_podman_pull_and_push() {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox missing: install busybox-static (tests/run.sh does)"
    );
    let berth = Berth::start(Options::default());
    let h = &berth.host;
    let build = ClientEnv::new(&berth);

    // Build FROM scratch: just a static busybox plus some config.
    let ctr = ok(build.cmd("buildah", &["from", "scratch"]));
    let ctr = ctr.trim().to_string();
    assert!(!ctr.is_empty());
    ok(build.cmd("buildah", &["copy", &ctr, "/bin/busybox", "/bin/busybox"]));
    ok(build.cmd(
        "buildah",
        &[
            "config",
            "--entrypoint",
            r#"["/bin/busybox"]"#,
            "--cmd",
            "echo hello",
            "--env",
            "GREETING=hello",
            "--label",
            "org.example.built-by=berth-tests",
            &ctr,
        ],
    ));
    ok(build.cmd(
        "buildah",
        &["commit", "-q", &ctr, "localhost/busybox:built"],
    ));

    // buildah push over TLS trusting berth's CA.
    let image = format!("{h}/buildah/busybox:v1");
    let digest_file = build.path().join("buildah-digest");
    ok(build.reg_cmd(
        "buildah",
        &["push"],
        &[
            "--digestfile",
            digest_file.to_str().unwrap(),
            "localhost/busybox:built",
            &format!("docker://{image}"),
        ],
    ));
    let pushed = read_to_string(&digest_file).trim().to_string();
    assert!(pushed.starts_with("sha256:"), "digest file: {pushed}");

    let info = build.inspect(&format!("docker://{image}"));
    assert_eq!(info["Digest"], json!(pushed), "inspect: {info}");
    assert_eq!(
        labels_of(&info)["org.example.built-by"],
        "berth-tests",
        "inspect: {info}"
    );
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1));
    let config = parse_json(
        &ok(build.skopeo(
            "inspect",
            &["--config", "--raw", &format!("docker://{image}")],
        )),
        "image config",
    );
    assert_eq!(config["config"]["Entrypoint"], json!(["/bin/busybox"]));
    assert_eq!(
        sha256_digest(build.inspect_raw(&format!("docker://{image}")).as_bytes()),
        pushed
    );
    assert_eq!(
        build.list_tags(&format!("docker://{h}/buildah/busybox")),
        strings(&["v1"])
    );
    // The layer as served holds exactly the host's /bin/busybox.
    let copy = build.path().join("pulled");
    ok(build.skopeo_copy(
        &[],
        &format!("docker://{image}"),
        &format!("dir:{}", copy.display()),
    ));
    let layer = info["Layers"][0].as_str().unwrap();
    let extracted = build.path().join("extracted");
    fs::create_dir_all(&extracted).unwrap();
    let mut untar = Command::new("tar");
    untar
        .arg("-xzf")
        .arg(copy.join(layer.trim_start_matches("sha256:")))
        .arg("-C")
        .arg(&extracted);
    ok(untar);
    assert_eq!(
        sha256_file(&extracted.join("bin/busybox")),
        sha256_file(busybox),
        "bin/busybox in the pulled layer differs from /bin/busybox"
    );

    // podman pulls it back into a fresh storage: same digest as skopeo saw.
    let pull = ClientEnv::new(&berth);
    ok(pull.reg_cmd("podman", &["pull"], &["-q", &image]));
    let got = ok(pull.cmd(
        "podman",
        &["image", "inspect", "--format", "{{.Digest}}", &image],
    ));
    assert_eq!(got.trim(), info["Digest"].as_str().unwrap());
    let repo_digests = ok(pull.cmd(
        "podman",
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ],
    ));
    assert!(
        repo_digests.contains(&format!("{h}/buildah/busybox@{pushed}")),
        "RepoDigests: {repo_digests}"
    );

    // podman push of a tagged image into another repository.
    let tagged = format!("{h}/podman/busybox:tagged");
    ok(pull.cmd("podman", &["tag", &image, &tagged]));
    let digest_file = pull.path().join("podman-digest");
    ok(pull.reg_cmd(
        "podman",
        &["push"],
        &["--digestfile", digest_file.to_str().unwrap(), &tagged],
    ));
    let podman_pushed = read_to_string(&digest_file).trim().to_string();
    let info = pull.inspect(&format!("docker://{tagged}"));
    assert_eq!(info["Digest"], json!(podman_pushed), "inspect: {info}");
    assert_eq!(labels_of(&info)["org.example.built-by"], "berth-tests");
    assert_eq!(
        pull.list_tags(&format!("docker://{h}/podman/busybox")),
        strings(&["tagged"])
    );
    // And that one pulls back too.
    let again = ClientEnv::new(&berth);
    ok(again.reg_cmd("podman", &["pull"], &["-q", &tagged]));
    let got = ok(again.cmd(
        "podman",
        &["image", "inspect", "--format", "{{.Digest}}", &tagged],
    ));
    assert_eq!(got.trim(), podman_pushed);
}

// ---------------------------------------------------------------------------
// podman manifest (multi-platform)
// ---------------------------------------------------------------------------

#[test]
fn podman_manifest_push_all_and_pull_by_platform() {
    let berth = Berth::start(Options::default());
    let h = &berth.host;
    let env = ClientEnv::new(&berth);

    for arch in ["amd64", "arm64"] {
        let ctr = ok(env.cmd("buildah", &["from", "scratch"]));
        let ctr = ctr.trim().to_string();
        let file = env.path().join(format!("arch-{arch}.txt"));
        write_file(&file, format!("{arch}\n"));
        ok(env.cmd(
            "buildah",
            &["copy", &ctr, file.to_str().unwrap(), "/arch.txt"],
        ));
        ok(env.cmd(
            "buildah",
            &[
                "config",
                "--arch",
                arch,
                "--os",
                "linux",
                "--label",
                &format!("arch={arch}"),
                &ctr,
            ],
        ));
        ok(env.cmd(
            "buildah",
            &["commit", "-q", &ctr, &format!("localhost/plat:{arch}")],
        ));
    }
    ok(env.cmd("podman", &["manifest", "create", "localhost/multi:v1"]));
    for arch in ["amd64", "arm64"] {
        ok(env.cmd(
            "podman",
            &[
                "manifest",
                "add",
                "localhost/multi:v1",
                &format!("containers-storage:localhost/plat:{arch}"),
            ],
        ));
    }
    let digest_file = env.path().join("list-digest");
    let list_ref = format!("docker://{h}/manifest/multi:v1");
    ok(env.reg_cmd(
        "podman",
        &["manifest", "push"],
        &[
            "--all",
            "--digestfile",
            digest_file.to_str().unwrap(),
            "localhost/multi:v1",
            &list_ref,
        ],
    ));
    let list_digest = read_to_string(&digest_file).trim().to_string();

    // The index as served: digest matches, one child per platform.
    let raw = env.inspect_raw(&list_ref);
    assert_eq!(sha256_digest(raw.as_bytes()), list_digest);
    let index = parse_json(&raw, "pushed index");
    let children: BTreeMap<String, String> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("no manifests in {raw}"))
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        children.keys().cloned().collect::<Vec<_>>(),
        strings(&["amd64", "arm64"]),
        "index: {raw}"
    );
    let (amd64, arm64) = (&children["amd64"], &children["arm64"]);
    assert_ne!(amd64, arm64);
    for child in [amd64, arm64] {
        let raw = env.inspect_raw(&format!("docker://{h}/manifest/multi@{child}"));
        assert_eq!(&sha256_digest(raw.as_bytes()), child);
    }

    // skopeo picks the right child for each platform.
    for (arch, child) in [("arm64", arm64), ("amd64", amd64)] {
        let info = parse_json(
            &ok(env.skopeo("inspect", &["--override-arch", arch, &list_ref])),
            "skopeo inspect",
        );
        assert_eq!(info["Architecture"], json!(arch), "{info}");
        assert_eq!(labels_of(&info)["arch"], arch);
        let out = env.path().join(format!("copy-{arch}"));
        ok(env.skopeo_copy(
            &["--override-arch", arch],
            &list_ref,
            &format!("dir:{}", out.display()),
        ));
        assert_eq!(&sha256_file(&out.join("manifest.json")), child);
    }

    // podman pull --arch arm64 into a fresh storage gets the arm64 child.
    let pull = ClientEnv::new(&berth);
    let image = format!("{h}/manifest/multi:v1");
    ok(pull.reg_cmd("podman", &["pull"], &["-q", "--arch", "arm64", &image]));
    let arch = ok(pull.cmd(
        "podman",
        &["image", "inspect", "--format", "{{.Architecture}}", &image],
    ));
    assert_eq!(arch.trim(), "arm64");
    let repo_digests = ok(pull.cmd(
        "podman",
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ],
    ));
    assert!(
        repo_digests.contains(&format!("{h}/manifest/multi@{arm64}")),
        "arm64 child {arm64} not in RepoDigests {repo_digests}"
    );
    assert!(
        !repo_digests.contains(amd64.as_str()),
        "amd64 child {amd64} unexpectedly in RepoDigests {repo_digests}"
    );
}

// ---------------------------------------------------------------------------
// containerd / ctr
// ---------------------------------------------------------------------------

/// A private containerd daemon (own root, state, socket; no CRI plugin;
/// `native` snapshotter used by the pulls).
pub(crate) struct Containerd {
    child: Option<Child>,
    pub(crate) dir: tempfile::TempDir,
    sock: PathBuf,
}

/// A private containerd's configuration: root, state and plugin dirs under `dir`, its socket at `sock`, and the
/// snapshotters this machine lacks disabled. `cri`: keep the CRI plugin (a kubelet's runtime); its settings follow.
pub(crate) fn containerd_config(dir: &Path, sock: &Path, cri: bool) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{no_cri}
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = sock.display(),
        opt = dir.join("opt").display(),
        no_cri = if cri {
            ""
        } else {
            "\n  \"io.containerd.grpc.v1.cri\","
        },
    )
}

impl Containerd {
    pub(crate) fn start() -> Containerd {
        let bin = require_tool("containerd");
        require_tool("ctr");
        let dir = tempdir("berth-containerd-");
        let d = dir.path();
        let sock = d.join("containerd.sock");
        write_file(d.join("config.toml"), containerd_config(d, &sock, false));
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            child: Some(child),
            dir,
            sock,
        };
        poll_until(
            Duration::from_secs(30),
            "containerd to answer `ctr version`",
            || {
                if let Ok(Some(status)) = c.child.as_mut().unwrap().try_wait() {
                    panic!("containerd exited ({status}):\n{}", c.log());
                }
                run(c.ctr(&["version"]), Duration::from_secs(10))
                    .status
                    .success()
                    .then_some(())
            },
        );
        c
    }

    pub(crate) fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = tool("ctr");
        cmd.arg("--address").arg(&self.sock).args(args);
        cmd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Digest of `reference` in `ctr images ls`, if listed.
    pub(crate) fn listed_digest(&self, reference: &str) -> Option<String> {
        let out = ok(self.ctr(&["images", "ls"]));
        out.lines().find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&reference)).then(|| cols.get(2).unwrap_or(&"").to_string())
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        if thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log());
        }
    }
}

/// Push a small image to `berth` with skopeo; returns its manifest digest.
pub(crate) fn push_fixture(berth: &Berth, env: &ClientEnv, reference: &str) -> String {
    let mut layout = OciLayout::new(env.path().join("ctr-layout"));
    let fx = layout.add_simple_image(
        "x",
        &[("org.example.test", "containerd")],
        &[
            ("hello.txt", b"hello containerd\n"),
            ("etc-release", b"berth\n"),
        ],
    );
    ok(env.skopeo_copy(
        &[],
        &format!("oci:{}:x", layout.dir.display()),
        &format!("docker://{}/{reference}", berth.host),
    ));
    fx.digest
}

#[test]
fn containerd_ctr_pull_tls_with_hosts_dir() {
    let berth = Berth::start(Options::default());
    let env = ClientEnv::new(&berth);
    let digest = push_fixture(&berth, &env, "ctr/hello:v1");
    let daemon = Containerd::start();

    // hosts.toml trusting berth's CA for 127.0.0.1:PORT.
    let hosts = daemon.dir.path().join("hosts.d");
    write_file(
        hosts.join(&berth.host).join("hosts.toml"),
        format!(
            "server = \"https://{h}\"\n\n[host.\"https://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
            h = berth.host,
            ca = berth.ca_file().display()
        ),
    );
    let reference = format!("{}/ctr/hello:v1", berth.host);
    let hosts_dir = hosts.to_str().unwrap();
    ok(daemon.ctr(&[
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        hosts_dir,
        &reference,
    ]));
    assert_eq!(daemon.listed_digest(&reference), Some(digest.clone()));
    // The content really is there and unpacked.
    let check = ok(daemon.ctr(&["images", "check", &format!("name=={reference}")]));
    assert!(check.contains("complete"), "ctr images check: {check}");
    let snapshots = ok(daemon.ctr(&["snapshots", "--snapshotter", "native", "ls"]));
    assert!(
        snapshots.contains("Committed"),
        "no committed snapshot after unpack: {snapshots}"
    );
}

#[test]
fn containerd_ctr_pull_plain_http() {
    let berth = Berth::start(Options {
        plain_http: true,
        ..Options::default()
    });
    let env = ClientEnv::new(&berth);
    let digest = push_fixture(&berth, &env, "ctr/plain:v1");
    let daemon = Containerd::start();
    let reference = format!("{}/ctr/plain:v1", berth.host);
    ok(daemon.ctr(&[
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--plain-http",
        &reference,
    ]));
    assert_eq!(daemon.listed_digest(&reference), Some(digest));
}

/// The node's path: containerd pulls `127.0.0.1:PORT/<repo>:<tag>` from `berth node-proxy` with no hosts.toml and
/// no --plain-http: containerd 1.6 speaks plain HTTP to loopback registries without configuration.
#[test]
fn containerd_pulls_through_node_proxy_without_configuration() {
    let berth = Berth::start(Options::default());
    let env = ClientEnv::new(&berth);
    let digest = push_fixture(&berth, &env, "team/hello:v1");
    let proxy = crate::node_proxy::NodeProxy::start(&berth);
    let daemon = Containerd::start();
    let reference = format!("{}/team/hello:v1", proxy.host);
    ok(daemon.ctr(&["images", "pull", "--snapshotter", "native", &reference]));
    assert_eq!(daemon.listed_digest(&reference), Some(digest));
    let check = ok(daemon.ctr(&["images", "check", &format!("name=={reference}")]));
    assert!(check.contains("complete"), "ctr images check: {check}");
    assert!(
        proxy.log().contains("/v2/team/hello/manifests/v1"),
        "the pull went through the node proxy"
    );
}

// ---------------------------------------------------------------------------
// A 200 MB layer
// ---------------------------------------------------------------------------

#[test]
fn big_layer_200mb_round_trip() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let berth = Berth::start(Options::default());
    let env = ClientEnv::new(&berth);
    let work = env.path().join("big");
    fs::create_dir_all(&work).unwrap();

    // 200 MB of random bytes in a tar, gzipped (gzip -1: random data does
    // not compress, so the blob stays ~200 MB).
    let random = work.join("random.bin");
    {
        let mut src = fs::File::open("/dev/urandom").unwrap().take(SIZE);
        let mut dst = fs::File::create(&random).unwrap();
        assert_eq!(std::io::copy(&mut src, &mut dst).unwrap(), SIZE);
    }
    let layer_tar = work.join("layer.tar");
    let mut cmd = Command::new("tar");
    cmd.arg("-C")
        .arg(&work)
        .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
        .arg(&layer_tar)
        .arg("random.bin");
    ok(cmd);
    fs::remove_file(&random).unwrap();
    let diff_id = sha256_file(&layer_tar);
    let mut cmd = Command::new("gzip");
    cmd.args(["-1", "-n"]).arg(&layer_tar);
    ok_within(cmd, BIG_TIMEOUT);
    let layer_gz = work.join("layer.tar.gz");

    let mut layout = OciLayout::new(env.path().join("layout"));
    let (layer_digest, layer_size) = layout.add_blob_file(&layer_gz);
    assert!(layer_size > SIZE, "gzip shrank random data?");
    let fx = layout.add_image(
        "big",
        "amd64",
        &[("org.example.test", "big")],
        &[(layer_digest.clone(), layer_size, diff_id)],
    );

    let reference = format!("docker://{}/big/blob:v1", berth.host);
    ok_within(
        env.skopeo_copy(
            &[],
            &format!("oci:{}:big", layout.dir.display()),
            &reference,
        ),
        BIG_TIMEOUT,
    );
    let info = env.inspect(&reference);
    assert_eq!(info["Digest"], json!(fx.digest));
    assert_eq!(info["Layers"], json!([layer_digest]));

    // Pulled back with skopeo: byte-identical blob.
    let out = env.path().join("pulled");
    ok_within(
        env.skopeo_copy(&[], &reference, &format!("dir:{}", out.display())),
        BIG_TIMEOUT,
    );
    let pulled = out.join(layer_digest.trim_start_matches("sha256:"));
    assert_eq!(fs::metadata(&pulled).unwrap().len(), layer_size);
    assert_eq!(sha256_file(&pulled), layer_digest);
    fs::remove_dir_all(&out).unwrap();

    // And fetched raw over HTTP: same length and bytes.
    let url = format!("{}/v2/big/blob/blobs/{layer_digest}", berth.base_url);
    let mut resp = berth.client().get(&url).send().expect("GET blob");
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "GET {url}");
    let fetched = env.path().join("fetched.blob");
    let mut file = fs::File::create(&fetched).unwrap();
    let n = resp.copy_to(&mut file).expect("stream blob");
    drop(file);
    assert_eq!(n, layer_size);
    assert_eq!(sha256_file(&fetched), layer_digest);
}
