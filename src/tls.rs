//! Certificates: generate a small CA and a serving certificate (rcgen), load PEM files, and serve them through a
//! resolver that swaps in new files when they change on disk, without a restart.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// How long a generated serving certificate is valid.
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a generated CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How often the certificate files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {why}")]
    Pem { path: PathBuf, why: String },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` as a new file that replaces the old one in one rename: readable by the owner only
/// when `secret` (a key), else by everyone (a certificate).
///
/// The data goes to a temporary file in the same directory, created exclusively (`O_EXCL`: never an existing file,
/// never through a symlink) with its final mode, then fsynced, renamed over `path`, and the directory fsynced. So a
/// key never takes the mode of the file it replaces (a `tls.key` left at 0644 gets a new 0600 inode), and a reader
/// sees the old file or the new one, never half of one.
pub(crate) fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    })()
    .map_err(io_error(&tmp));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(path)(e));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Warns when a key file can be read by others than its owner (an operator's file; berth's own are 0600).
fn warn_if_readable_by_others(key_path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = fs::metadata(key_path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!(
                "private key {} has mode {mode:04o}: others than its owner can read it (chmod 600 it)",
                key_path.display()
            );
        }
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

/// A CA (certificate and key, PEM).
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

/// Generates a new CA.
pub fn generate_ca(common_name: &str) -> Result<CaPem> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues a serving certificate for `names` (DNS names or IP addresses), signed by `ca`. Returns (cert, key) PEM.
pub fn issue_serving_cert(ca: &CaPem, names: &[String]) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("berth"),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, SERVING_VALIDITY);
    let cert = params.signed_by(&key, &issuer)?;
    // The chain: serving certificate, then the CA, so clients that only trust the CA can verify.
    Ok((format!("{}{}", cert.pem(), ca.cert), key.serialize_pem()))
}

/// Makes sure `dir` holds `tls.crt`/`tls.key`. When they are missing, issues them for `localhost`, `127.0.0.1` and
/// `extra_names`, signed by `ca.crt`/`ca.key` in `dir` (generated first when missing). Returns true if it wrote files.
pub fn ensure_serving_cert(dir: &Path, extra_names: &[String]) -> Result<bool> {
    if dir.join(TLS_CERT).exists()
        && dir.join(TLS_KEY).exists()
        && !generated_and_due(dir, extra_names)
    {
        return Ok(false);
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let (ca_cert_path, ca_key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let ca = if ca_cert_path.exists() && ca_key_path.exists() {
        warn_if_readable_by_others(&ca_key_path);
        CaPem {
            cert: fs::read_to_string(&ca_cert_path).map_err(io_error(&ca_cert_path))?,
            key: fs::read_to_string(&ca_key_path).map_err(io_error(&ca_key_path))?,
        }
    } else {
        let ca = generate_ca("berth CA")?;
        write_file(&ca_key_path, &ca.key, true)?;
        write_file(&ca_cert_path, &ca.cert, false)?;
        ca
    };
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let (cert, key) = issue_serving_cert(&ca, &names)?;
    // Key first: the reloader picks up a new pair when the certificate changes.
    write_file(&dir.join(TLS_KEY), &key, true)?;
    write_file(&dir.join(TLS_CERT), &cert, false)?;
    log::info!(
        "generated a serving certificate for {} in {}; clients trust it through {}",
        names.join(", "),
        dir.display(),
        ca_cert_path.display()
    );
    Ok(true)
}

/// Writes a new CA and a serving certificate for `names` into `dir` (`berth certs init`). Existing files are kept
/// unless `force`.
pub fn write_new_cert_set(dir: &Path, names: &[String], force: bool) -> Result<()> {
    let files = [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY];
    if !force {
        if let Some(existing) = files.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
            return Err(TlsError::Io {
                path: existing,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists (use --force to replace)",
                ),
            });
        }
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let ca = generate_ca("berth CA")?;
    let (cert, key) = issue_serving_cert(&ca, names)?;
    write_file(&dir.join(CA_KEY), &ca.key, true)?;
    write_file(&dir.join(CA_CERT), &ca.cert, false)?;
    write_file(&dir.join(TLS_KEY), &key, true)?;
    write_file(&dir.join(TLS_CERT), &cert, false)
}

/// Whether the serving certificate in `dir` was generated by berth (its CA key is there) and needs reissuing: it
/// expires within 30 days, or a `--san` given now is not in it. Certificates brought by the operator are never
/// touched.
fn generated_and_due(dir: &Path, extra_names: &[String]) -> bool {
    if !dir.join(CA_KEY).exists() {
        return false;
    }
    let Ok(info) = fs::read_to_string(dir.join(TLS_CERT))
        .map_err(|_| ())
        .and_then(|pem| inspect_cert(&pem).map_err(|_| ()))
    else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expiring = info.not_after_unix - now < 30 * 24 * 3600;
    let missing = extra_names.iter().find(|name| !info.names.contains(name));
    if expiring || missing.is_some() {
        log::info!(
            "reissuing the generated serving certificate in {}: {}",
            dir.display(),
            missing.map_or_else(
                || "it expires within 30 days".to_owned(),
                |name| format!("it does not cover {name}")
            )
        );
    }
    expiring || missing.is_some()
}

/// Loads a certificate chain and key from PEM files.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_owned(),
            why: e.to_string(),
        })?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_owned(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path.to_owned(),
            why: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
        path: key_path.to_owned(),
        why: e.to_string(),
    })?;
    let provider = default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Pem {
            path: key_path.to_owned(),
            why: e.to_string(),
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| TlsError::Pem {
        path: key_path.to_owned(),
        why: format!(
            "does not match the certificate in {}: {e}",
            cert_path.display()
        ),
    })?;
    Ok(certified)
}

/// What berth needs to know about a certificate it may reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// DNS names and IP addresses (as text) of the subject alternative names.
    pub names: Vec<String>,
    pub is_ca: bool,
}

/// Reads the first certificate of a PEM chain.
pub fn inspect_cert(pem: &str) -> Result<CertInfo> {
    let pem_error = |why: String| TlsError::Pem {
        path: PathBuf::from("(certificate)"),
        why,
    };
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| pem_error("no certificate in the PEM".into()))?
        .map_err(|e| pem_error(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| pem_error(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    };
                    names.extend(ip);
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        names,
        is_ca: cert.is_ca(),
    })
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .filter_map(|c| c.ok())
        .collect();
    let Ok(key) = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) else {
        return false;
    };
    let Ok(signing_key) = default_provider().key_provider.load_private_key(key) else {
        return false;
    };
    !certs.is_empty() && CertifiedKey::new(certs, signing_key).keys_match().is_ok()
}

/// Writes a serving pair (and the CA certificate) into `dir` for the reloader: key first, then certificate, each
/// through a temporary file and a rename ([`write_file`]).
pub fn install_serving_pair(dir: &Path, ca_cert: &str, cert: &str, key: &str) -> Result<()> {
    // Unchanged files stay untouched, so the reloader sees no change.
    let same = |name: &str, contents: &str| {
        fs::read_to_string(dir.join(name)).is_ok_and(|current| current == contents)
    };
    if same(TLS_KEY, key) && same(TLS_CERT, cert) && same(CA_CERT, ca_cert) {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    for (name, contents, secret) in [
        (TLS_KEY, key, true),
        (CA_CERT, ca_cert, false),
        (TLS_CERT, cert, false),
    ] {
        write_file(&dir.join(name), contents, secret)?;
    }
    Ok(())
}

/// Serves the current certificate; [`ReloadingCert::watch`] replaces it when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ReloadingCert {
    pub fn load(dir: &Path) -> Result<Arc<Self>> {
        let (cert_path, key_path) = (dir.join(TLS_CERT), dir.join(TLS_KEY));
        let current = load_certified_key(&cert_path, &key_path)?;
        warn_if_readable_by_others(&key_path);
        Ok(Arc::new(ReloadingCert {
            current: ArcSwap::from_pointee(current),
            cert_path,
            key_path,
        }))
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let cert = fs::metadata(&self.cert_path)
            .and_then(|m| m.modified())
            .ok()?;
        let key = fs::metadata(&self.key_path)
            .and_then(|m| m.modified())
            .ok()?;
        Some((cert, key))
    }

    /// Polls the files and swaps in a new pair when they change and load cleanly; a broken pair is logged and the
    /// previous one stays in use. Runs until the process ends.
    pub async fn watch(self: Arc<Self>) {
        let mut seen = self.modified();
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let now = self.modified();
            if now == seen {
                continue;
            }
            match load_certified_key(&self.cert_path, &self.key_path) {
                Ok(key) => {
                    self.current.store(Arc::new(key));
                    seen = now;
                    log::info!(
                        "reloaded the serving certificate from {}",
                        self.cert_path.display()
                    );
                }
                // Possibly half-way through an update of the two files: try again next round.
                Err(e) => {
                    log::warn!("certificate change not loaded, keeping the previous one: {e}")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1) serving `cert`.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_and_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(ensure_serving_cert(dir.path(), &["registry.example".into()]).expect("generate"));
        for (file, mode) in [(CA_KEY, 0o600), (TLS_KEY, 0o600)] {
            use std::os::unix::fs::PermissionsExt;
            let actual = fs::metadata(dir.path().join(file))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(actual, mode, "{file}");
        }
        let loaded = ReloadingCert::load(dir.path()).expect("load");
        assert_eq!(
            loaded.current.load().cert.len(),
            2,
            "serving certificate and CA"
        );
        // A second call keeps the existing files.
        assert!(!ensure_serving_cert(dir.path(), &[]).expect("second call"));
    }

    #[test]
    fn a_new_san_reissues_a_generated_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_serving_cert(dir.path(), &[]).expect("generate");
        assert!(!ensure_serving_cert(dir.path(), &[]).expect("again"));
        assert!(ensure_serving_cert(dir.path(), &["registry.example".into()]).expect("new san"));
        let info = inspect_cert(&fs::read_to_string(dir.path().join(TLS_CERT)).expect("cert"))
            .expect("parse");
        assert!(info.names.contains(&"registry.example".to_owned()));
        // A certificate brought by the operator (no CA key here) is left alone.
        fs::remove_file(dir.path().join(CA_KEY)).expect("rm");
        assert!(!ensure_serving_cert(dir.path(), &["other.example".into()]).expect("operator's"));
    }

    #[test]
    fn reissue_keeps_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_serving_cert(dir.path(), &[]).expect("generate");
        let ca = fs::read(dir.path().join(CA_CERT)).expect("ca");
        fs::remove_file(dir.path().join(TLS_CERT)).expect("rm");
        assert!(ensure_serving_cert(dir.path(), &[]).expect("reissue"));
        assert_eq!(fs::read(dir.path().join(CA_CERT)).expect("ca"), ca);
    }

    #[test]
    fn inspected_certificates() {
        let ca = generate_ca("test CA").expect("ca");
        let (cert, key) = issue_serving_cert(
            &ca,
            &["svc.example".into(), "10.1.2.3".into(), "::1".into()],
        )
        .expect("cert");
        let info = inspect_cert(&cert).expect("inspect");
        assert_eq!(info.names, ["svc.example", "10.1.2.3", "::1"]);
        assert!(!info.is_ca);
        let lifetime = info.not_after_unix - info.not_before_unix;
        assert!(
            (SERVING_VALIDITY.as_secs() as i64..=SERVING_VALIDITY.as_secs() as i64 + 3600)
                .contains(&lifetime)
        );
        assert!(inspect_cert(&ca.cert).expect("ca").is_ca);
        assert!(key_matches(&cert, &key));
        assert!(!key_matches(&cert, &ca.key));
        assert!(inspect_cert("garbage").is_err());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn make_world_readable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    /// No file but the four of a set (no temporary file left behind).
    fn assert_only_the_set(dir: &Path) {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY]);
    }

    #[test]
    fn a_reissued_key_is_private_even_over_a_world_readable_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_serving_cert(dir.path(), &[]).expect("generate");
        make_world_readable(&dir.path().join(TLS_KEY));
        assert!(ensure_serving_cert(dir.path(), &["registry.example".into()]).expect("reissue"));
        assert_eq!(mode(&dir.path().join(TLS_KEY)), 0o600);
        assert_eq!(mode(&dir.path().join(TLS_CERT)) & 0o600, 0o600);
        assert_only_the_set(dir.path());
        ReloadingCert::load(dir.path()).expect("the reissued pair loads");
    }

    #[test]
    fn certs_init_force_writes_private_keys_over_world_readable_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_new_cert_set(dir.path(), &["localhost".into()], false).expect("init");
        for key in [CA_KEY, TLS_KEY] {
            make_world_readable(&dir.path().join(key));
        }
        write_new_cert_set(dir.path(), &["localhost".into()], true).expect("init --force");
        for key in [CA_KEY, TLS_KEY] {
            assert_eq!(mode(&dir.path().join(key)), 0o600, "{key}");
        }
        assert_only_the_set(dir.path());
    }

    #[test]
    fn an_installed_webhook_key_is_private_whatever_was_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca("test CA").expect("ca");
        let (cert, key) = issue_serving_cert(&ca, &["svc.example".into()]).expect("cert");
        install_serving_pair(dir.path(), &ca.cert, &cert, &key).expect("install");
        make_world_readable(&dir.path().join(TLS_KEY));
        // Leftovers of an interrupted install, world-readable, are never written through.
        for leftover in [".tls.key.tmp", ".tls.crt.tmp"] {
            fs::write(dir.path().join(leftover), "stale").expect("leftover");
            make_world_readable(&dir.path().join(leftover));
        }
        let (cert, key) = issue_serving_cert(&ca, &["svc.example".into()]).expect("cert");
        install_serving_pair(dir.path(), &ca.cert, &cert, &key).expect("reinstall");
        assert_eq!(mode(&dir.path().join(TLS_KEY)), 0o600);
        assert_eq!(
            fs::read_to_string(dir.path().join(TLS_KEY)).expect("key"),
            key
        );
        assert!(key_matches(
            &fs::read_to_string(dir.path().join(TLS_CERT)).expect("cert"),
            &key
        ));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        ensure_serving_cert(one.path(), &[]).expect("generate");
        ensure_serving_cert(two.path(), &[]).expect("generate");
        let error = load_certified_key(&one.path().join(TLS_CERT), &two.path().join(TLS_KEY))
            .expect_err("mismatch");
        assert!(error.to_string().contains("does not match"), "{error}");
    }
}
