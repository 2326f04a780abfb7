//! Where the active policy comes from, and how it changes: a file that is watched, or a ConfigMap watched through
//! the Kubernetes API. A valid change replaces the policy atomically; an invalid one is logged and the last good
//! policy stays in force; a deleted ConfigMap falls back to the built-in default (allow all, no rewrites).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::policy::{Policy, PolicyError};

/// The key of the policy in its ConfigMap.
pub const CONFIGMAP_KEY: &str = "policy.yaml";
/// How often a policy file is checked for changes.
const FILE_POLL: Duration = Duration::from_millis(500);

/// The policy in force, with where it came from.
#[derive(Debug)]
pub struct ActivePolicy {
    pub policy: Policy,
    /// `file:/path`, `configmap:ns/name`, or `built-in default`.
    pub source: String,
    /// sha256 of the policy text (`-` for the built-in default).
    pub digest: String,
    pub loaded_at: SystemTime,
}

impl ActivePolicy {
    pub fn builtin_default() -> ActivePolicy {
        ActivePolicy {
            policy: Policy::allow_all(),
            source: "built-in default".into(),
            digest: "-".into(),
            loaded_at: SystemTime::now(),
        }
    }

    /// Compiles `text` from `source`.
    pub fn compile(source: &str, text: &str) -> Result<ActivePolicy, PolicyError> {
        Ok(ActivePolicy {
            policy: Policy::from_yaml(text)?,
            source: source.to_owned(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes()))),
            loaded_at: SystemTime::now(),
        })
    }
}

/// Holds the active policy for the webhooks; swapped whole, read without locks.
#[derive(Debug)]
pub struct PolicyStore {
    active: ArcSwap<ActivePolicy>,
    last_error: Mutex<Option<String>>,
    /// Policies swapped in after the first, and texts refused (for the metrics).
    reloads: AtomicU64,
    reload_errors: AtomicU64,
}

impl PolicyStore {
    pub fn new(initial: ActivePolicy) -> PolicyStore {
        log_active(&initial);
        PolicyStore {
            active: ArcSwap::from_pointee(initial),
            last_error: Mutex::new(None),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<ActivePolicy> {
        self.active.load_full()
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Applies a new policy text from `source`. Unchanged text is a no-op; an invalid one keeps the last good
    /// policy and is recorded. Returns whether the policy changed.
    pub fn apply(&self, source: &str, text: &str) -> Result<bool, PolicyError> {
        match ActivePolicy::compile(source, text) {
            Ok(next) => {
                self.set_error(None);
                let current = self.current();
                if current.digest == next.digest && current.source == next.source {
                    return Ok(false);
                }
                log_active(&next);
                self.active.store(Arc::new(next));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                let current = self.current();
                log::error!(
                    "policy from {source} not loaded, keeping {} ({}): {e}",
                    current.source,
                    current.digest
                );
                self.set_error(Some(format!("{source}: {e}")));
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Falls back to the built-in default (allow all, no rewrites), saying why.
    pub fn fall_back_to_default(&self, why: &str) {
        log::warn!("{why}; falling back to the built-in default policy (allow all, no rewrites)");
        self.set_error(Some(why.to_owned()));
        self.active.store(Arc::new(ActivePolicy::builtin_default()));
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Policies swapped in since start, and policy texts refused (the metrics read them).
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_errors.load(Ordering::Relaxed),
        )
    }

    /// What `/readyz` reports about the policy.
    pub fn status(&self) -> serde_json::Value {
        let active = self.current();
        let loaded = active
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "source": active.source,
            "digest": active.digest,
            "loadedAtUnix": loaded,
            "summary": active.policy.summary(),
            "lastError": self.last_error(),
        })
    }
}

fn log_active(active: &ActivePolicy) {
    log::info!(
        "policy in force from {} ({}): {}",
        active.source,
        active.digest,
        active.policy.summary()
    );
}

/// Errors of a policy source at start (berth refuses to start on them).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The policy file could not be read.
    #[error("policy file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The policy file is invalid.
    #[error("policy file {path}: {error}")]
    Invalid { path: PathBuf, error: PolicyError },
}

fn file_source(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// Reads and compiles a policy file.
pub fn load_file(path: &Path) -> Result<ActivePolicy, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })?;
    ActivePolicy::compile(&file_source(path), &text).map_err(|error| SourceError::Invalid {
        path: path.to_owned(),
        error,
    })
}

/// Polls a policy file and applies changes (content, not timestamps, decides). Runs until the process ends.
pub async fn watch_file(store: Arc<PolicyStore>, path: PathBuf) {
    let source = file_source(&path);
    let mut last_seen: Option<String> = None;
    loop {
        tokio::time::sleep(FILE_POLL).await;
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                if last_seen.as_deref() == Some(text.as_str()) {
                    continue;
                }
                let _ = store.apply(&source, &text);
                last_seen = Some(text);
            }
            Err(e) => {
                if last_seen.is_some() {
                    log::warn!(
                        "policy file {} cannot be read, keeping the policy in force: {e}",
                        path.display()
                    );
                    last_seen = None;
                }
            }
        }
    }
}

/// What a ConfigMap event means for the policy.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigMapChange {
    /// The ConfigMap (re)appeared with this `policy.yaml`, or without it (`None`).
    Applied(Option<String>),
    Deleted,
}

/// Applies one ConfigMap change to the store.
pub fn apply_configmap_change(store: &PolicyStore, source: &str, change: ConfigMapChange) {
    match change {
        ConfigMapChange::Applied(Some(text)) => {
            let _ = store.apply(source, &text);
        }
        ConfigMapChange::Applied(None) => {
            let current = store.current();
            log::error!(
                "{source} has no key {CONFIGMAP_KEY}; keeping {} ({})",
                current.source,
                current.digest
            );
            store.set_error(Some(format!("{source} has no key {CONFIGMAP_KEY}")));
        }
        ConfigMapChange::Deleted => store.fall_back_to_default(&format!("{source} was deleted")),
    }
}

fn policy_text(configmap: &ConfigMap) -> Option<String> {
    configmap
        .data
        .as_ref()
        .and_then(|data| data.get(CONFIGMAP_KEY))
        .cloned()
}

/// Watches `namespace/name` through the Kubernetes API (in-cluster config or `KUBECONFIG`) and applies every change.
/// Runs until the process ends; API errors are retried with back-off.
pub async fn watch_configmap(
    store: Arc<PolicyStore>,
    client: kube::Client,
    namespace: String,
    name: String,
) {
    let source = format!("configmap:{namespace}/{name}");
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // During a (re)list, remember whether the ConfigMap was seen, to notice a deletion that happened while away.
    let mut seen_in_list = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => seen_in_list = false,
            Ok(Event::InitApply(configmap)) => {
                seen_in_list = true;
                apply_configmap_change(
                    &store,
                    &source,
                    ConfigMapChange::Applied(policy_text(&configmap)),
                );
            }
            Ok(Event::InitDone) => {
                if !seen_in_list && store.current().source == source {
                    apply_configmap_change(&store, &source, ConfigMapChange::Deleted);
                } else if !seen_in_list {
                    log::warn!(
                        "{source} does not exist; the policy in force is {}",
                        store.current().source
                    );
                }
            }
            Ok(Event::Apply(configmap)) => {
                apply_configmap_change(
                    &store,
                    &source,
                    ConfigMapChange::Applied(policy_text(&configmap)),
                );
            }
            Ok(Event::Delete(_)) => {
                apply_configmap_change(&store, &source, ConfigMapChange::Deleted)
            }
            Err(e) => log::warn!("watching {source}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: &str = "defaultAction: allow\n";
    const DENY: &str = "defaultAction: deny\n";

    #[test]
    fn reload_keeps_the_last_good_policy() {
        let store = PolicyStore::new(ActivePolicy::compile("file:/p", ALLOW).expect("valid"));
        let first = store.current().digest.clone();
        assert_eq!(
            store.apply("file:/p", ALLOW).ok(),
            Some(false),
            "same text: no change"
        );
        assert_eq!(store.apply("file:/p", DENY).ok(), Some(true));
        assert_ne!(store.current().digest, first);
        assert_eq!(
            store.current().policy.decide("x:1", "ns").verdict,
            super::super::policy::Verdict::Deny
        );

        let good = store.current().digest.clone();
        assert!(store
            .apply("file:/p", "rules: [{name: x, action: deny, images: ['(']}]")
            .is_err());
        assert_eq!(
            store.current().digest,
            good,
            "an invalid change keeps the last good policy"
        );
        assert!(store
            .last_error()
            .unwrap_or_default()
            .contains("invalid regex"));
        assert_eq!(store.status()["digest"], good);

        store.apply("file:/p", ALLOW).expect("valid again");
        assert_eq!(store.last_error(), None);
    }

    #[test]
    fn configmap_changes() {
        let store = PolicyStore::new(ActivePolicy::builtin_default());
        let source = "configmap:berth-system/berth-policy";
        apply_configmap_change(&store, source, ConfigMapChange::Applied(Some(DENY.into())));
        assert_eq!(store.current().source, source);
        let digest = store.current().digest.clone();
        apply_configmap_change(&store, source, ConfigMapChange::Applied(None));
        assert_eq!(
            store.current().digest,
            digest,
            "a ConfigMap without the key changes nothing"
        );
        assert!(store
            .last_error()
            .unwrap_or_default()
            .contains("policy.yaml"));
        apply_configmap_change(
            &store,
            source,
            ConfigMapChange::Applied(Some("mode: [".into())),
        );
        assert_eq!(store.current().digest, digest);
        apply_configmap_change(&store, source, ConfigMapChange::Deleted);
        assert_eq!(store.current().source, "built-in default");
        assert_eq!(
            store.current().policy.decide("x:1", "ns").verdict,
            super::super::policy::Verdict::Allow
        );
    }

    #[tokio::test]
    async fn a_watched_file_reloads_within_two_seconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, ALLOW).expect("write");
        let store = Arc::new(PolicyStore::new(load_file(&path).expect("valid")));
        let watcher = tokio::spawn(watch_file(store.clone(), path.clone()));
        let initial = store.current().digest.clone();

        std::fs::write(&path, DENY).expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while store.current().digest == initial {
            assert!(
                tokio::time::Instant::now() < deadline,
                "change not live within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let good = store.current().digest.clone();
        std::fs::write(&path, "defaultAction: sometimes\n").expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while store.last_error().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "invalid change not reported within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(store.current().digest, good);
        watcher.abort();
    }

    #[test]
    fn start_up_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "rules: [{name: r, action: deny, images: ['[']}]").expect("write");
        let error = load_file(&path).expect_err("invalid").to_string();
        assert!(
            error.contains("bad.yaml") && error.contains("\"r\""),
            "{error}"
        );
        assert!(matches!(
            load_file(&dir.path().join("missing.yaml")),
            Err(SourceError::Read { .. })
        ));
    }
}
