//! Webhook certificates managed by berth itself (`--manage-webhook-certs`): a Secret holds a CA and a serving
//! certificate for berth's Service; berth creates it when missing, reuses it while valid, renews it well before
//! expiry, installs the serving pair in `--cert-dir` (where the TLS reloader picks it up), and keeps the CA in the
//! `caBundle` of every webhook of the two webhook configurations. The same Secret keeps the signing key of berth's
//! tokens (`token.key`): generated once, kept across certificate renewals, written into `--cert-dir` beside the
//! serving pair, so that every replica signs and verifies with the same key. Replicas racing on first start end with one Secret
//! and one CA: creation conflicts are resolved by re-reading, updates use the resourceVersion.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::StreamExt;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use serde_json::Value;

use crate::tls::{self, CaPem};

/// Renew the serving certificate when less than this is left (it is issued for a year).
const SERVING_RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Replace the CA when less than this is left (it is issued for ten years).
const CA_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often the Secret and the webhook configurations are checked even without a change event.
const RECHECK: Duration = Duration::from_secs(600);
const KEY_CA_CERT: &str = "ca.crt";
const KEY_CA_KEY: &str = "ca.key";
const KEY_CERT: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const KEY_TOKEN_KEY: &str = crate::auth::token::TOKEN_KEY;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The Kubernetes API refused or failed.
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// Certificates could not be generated or installed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A token signing key could not be generated.
    #[error("generating the token signing key: {0}")]
    TokenKey(String),
    /// Racing writers kept changing the Secret.
    #[error("secret {0} kept changing while it was being written; giving up for now")]
    Contended(String),
}

type Result<T, E = CertsError> = std::result::Result<T, E>;

/// The PEM documents berth keeps in its Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    /// The token signing key (empty when a Secret written before berth had tokens holds none).
    pub token_key: String,
}

/// What to do with the bundle found in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Reuse,
    /// Keep the CA, issue a new serving certificate (why).
    NewServing(String),
    /// Issue a new CA and serving certificate (why).
    NewAll(String),
    /// Keep the certificates, add a token signing key (why).
    NewTokenKey(String),
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Decides whether `existing` can serve `names` at `now`. Pure.
pub fn plan(existing: Option<&Bundle>, names: &[String], now: SystemTime) -> Plan {
    let now = unix(now);
    let Some(bundle) = existing else {
        return Plan::NewAll("no certificate yet".into());
    };
    let ca = match tls::inspect_cert(&bundle.ca_cert) {
        Ok(ca) => ca,
        Err(e) => return Plan::NewAll(format!("the CA does not parse: {e}")),
    };
    if !ca.is_ca || !tls::key_matches(&bundle.ca_cert, &bundle.ca_key) {
        return Plan::NewAll("the CA certificate and key do not belong together".into());
    }
    if ca.not_after_unix - now < CA_RENEW_BEFORE.as_secs() as i64 {
        return Plan::NewAll("the CA expires within a year".into());
    }
    let serving = match tls::inspect_cert(&bundle.cert) {
        Ok(serving) => serving,
        Err(e) => return Plan::NewServing(format!("the serving certificate does not parse: {e}")),
    };
    if !tls::key_matches(&bundle.cert, &bundle.key) {
        return Plan::NewServing("the serving certificate and key do not belong together".into());
    }
    if !bundle.cert.contains(bundle.ca_cert.trim()) {
        return Plan::NewServing("the serving certificate was not issued by the current CA".into());
    }
    if let Some(missing) = names.iter().find(|name| !serving.names.contains(name)) {
        return Plan::NewServing(format!("the serving certificate does not cover {missing}"));
    }
    if serving.not_before_unix > now + 300 {
        return Plan::NewServing("the serving certificate is not valid yet".into());
    }
    if serving.not_after_unix - now < SERVING_RENEW_BEFORE.as_secs() as i64 {
        return Plan::NewServing("the serving certificate expires within 90 days".into());
    }
    if !crate::auth::token::key_is_usable(&bundle.token_key) {
        return Plan::NewTokenKey("no usable token signing key yet".into());
    }
    Plan::Reuse
}

/// Carries out a plan; `Reuse` returns the bundle unchanged. A usable token key is kept whatever else changes.
pub fn carry_out(plan: &Plan, existing: Option<&Bundle>, names: &[String]) -> Result<Bundle> {
    let token_key = match existing {
        Some(bundle) if crate::auth::token::key_is_usable(&bundle.token_key) => {
            bundle.token_key.clone()
        }
        _ => crate::auth::token::generate_key().map_err(|e| CertsError::TokenKey(e.to_string()))?,
    };
    let ca = match (plan, existing) {
        (Plan::Reuse, Some(bundle)) => return Ok(bundle.clone()),
        (Plan::NewTokenKey(_), Some(bundle)) => {
            return Ok(Bundle {
                token_key,
                ..bundle.clone()
            })
        }
        (Plan::NewServing(_), Some(bundle)) => CaPem {
            cert: bundle.ca_cert.clone(),
            key: bundle.ca_key.clone(),
        },
        _ => tls::generate_ca("berth webhook CA")?,
    };
    let (cert, key) = tls::issue_serving_cert(&ca, names)?;
    Ok(Bundle {
        ca_cert: ca.cert,
        ca_key: ca.key,
        cert,
        key,
        token_key,
    })
}

fn bundle_of(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Some(Bundle {
        ca_cert: text(KEY_CA_CERT)?,
        ca_key: text(KEY_CA_KEY)?,
        cert: text(KEY_CERT)?,
        key: text(KEY_KEY)?,
        token_key: text(KEY_TOKEN_KEY).unwrap_or_default(),
    })
}

fn secret_data(bundle: &Bundle) -> BTreeMap<String, ByteString> {
    [
        (KEY_CA_CERT, &bundle.ca_cert),
        (KEY_CA_KEY, &bundle.ca_key),
        (KEY_CERT, &bundle.cert),
        (KEY_KEY, &bundle.key),
        (KEY_TOKEN_KEY, &bundle.token_key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect()
}

/// The JSON patch that puts `ca_pem` into every webhook's `caBundle` of a webhook configuration, guarded by its
/// resourceVersion; `None` if every webhook already has it. Pure.
pub fn ca_bundle_patch(configuration: &Value, ca_pem: &str) -> Option<json_patch::Patch> {
    let desired = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let webhooks = configuration.get("webhooks")?.as_array()?;
    let mut operations = Vec::new();
    for (index, webhook) in webhooks.iter().enumerate() {
        let current = webhook
            .pointer("/clientConfig/caBundle")
            .and_then(Value::as_str);
        if current != Some(desired.as_str()) {
            let index = index.to_string();
            operations.push(PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens([
                    "webhooks",
                    index.as_str(),
                    "clientConfig",
                    "caBundle",
                ]),
                value: Value::String(desired.clone()),
            }));
        }
    }
    if operations.is_empty() {
        return None;
    }
    let version = configuration
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null);
    operations.insert(
        0,
        PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
            value: version,
        }),
    );
    Some(json_patch::Patch(operations))
}

/// Settings of the managed certificates.
#[derive(Debug, Clone)]
pub struct WebhookCerts {
    pub secret_namespace: String,
    pub secret_name: String,
    pub webhook_config: String,
    /// DNS names and IPs the serving certificate must cover.
    pub names: Vec<String>,
    pub cert_dir: PathBuf,
}

fn kube_error(what: String) -> impl FnOnce(kube::Error) -> CertsError {
    move |source| CertsError::Kube { what, source }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl WebhookCerts {
    fn secret_ref(&self) -> String {
        format!("{}/{}", self.secret_namespace, self.secret_name)
    }

    /// Makes the Secret hold a valid bundle for `names` and installs the serving pair in the cert dir.
    pub async fn ensure(&self, client: &kube::Client) -> Result<Bundle> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.secret_namespace);
        let what = self.secret_ref();
        for _attempt in 0..5 {
            let existing = secrets
                .get_opt(&self.secret_name)
                .await
                .map_err(kube_error(format!("read secret {what}")))?;
            let current = existing.as_ref().and_then(bundle_of);
            let plan = plan(current.as_ref(), &self.names, SystemTime::now());
            let bundle = carry_out(&plan, current.as_ref(), &self.names)?;
            let written = match (&plan, existing) {
                (Plan::Reuse, _) => Ok(()),
                (Plan::NewAll(why) | Plan::NewServing(why) | Plan::NewTokenKey(why), None) => {
                    log::info!("creating secret {what}: {why}");
                    let secret = Secret {
                        metadata: kube::api::ObjectMeta {
                            name: Some(self.secret_name.clone()),
                            namespace: Some(self.secret_namespace.clone()),
                            labels: Some(
                                [("app.kubernetes.io/name".to_owned(), "berth".to_owned())].into(),
                            ),
                            ..Default::default()
                        },
                        type_: Some("kubernetes.io/tls".into()),
                        data: Some(secret_data(&bundle)),
                        ..Default::default()
                    };
                    secrets
                        .create(&PostParams::default(), &secret)
                        .await
                        .map(drop)
                }
                (
                    Plan::NewAll(why) | Plan::NewServing(why) | Plan::NewTokenKey(why),
                    Some(mut secret),
                ) => {
                    log::info!("renewing secret {what}: {why}");
                    // The resourceVersion read above makes a racing writer's change a conflict, not a loss.
                    secret.data = Some(secret_data(&bundle));
                    secret.type_ = Some("kubernetes.io/tls".into());
                    secrets
                        .replace(&self.secret_name, &PostParams::default(), &secret)
                        .await
                        .map(drop)
                }
            };
            match written {
                Ok(()) => {
                    tls::install_serving_pair(
                        &self.cert_dir,
                        &bundle.ca_cert,
                        &bundle.cert,
                        &bundle.key,
                    )?;
                    install_token_key(&self.cert_dir, &bundle.token_key)?;
                    return Ok(bundle);
                }
                // Another replica wrote first (AlreadyExists is a 409 too): read theirs and reuse it.
                Err(e) if is_conflict(&e) => {
                    log::info!("secret {what} was written by another replica; reading it again");
                }
                Err(e) => return Err(kube_error(format!("write secret {what}"))(e)),
            }
        }
        Err(CertsError::Contended(what))
    }

    /// Puts the CA into the caBundle of every webhook of both configurations named `webhook_config`. A missing
    /// configuration is skipped (it may not be applied yet); the next check tries again.
    pub async fn patch_ca_bundles(&self, client: &kube::Client, ca_pem: &str) -> Result<()> {
        for resource in webhook_resources() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let what = format!("{} {}", resource.kind, self.webhook_config);
            let Some(configuration) = api
                .get_opt(&self.webhook_config)
                .await
                .map_err(kube_error(format!("read {what}")))?
            else {
                log::warn!("{what} does not exist yet; its caBundle will be set when it appears");
                continue;
            };
            let value = serde_json::to_value(&configuration).unwrap_or(Value::Null);
            let Some(patch) = ca_bundle_patch(&value, ca_pem) else {
                continue;
            };
            match api
                .patch(
                    &self.webhook_config,
                    &PatchParams::default(),
                    &Patch::Json::<()>(patch),
                )
                .await
            {
                Ok(_) => log::info!("patched the CA into the caBundle of {what}"),
                // Changed since it was read (the test operation failed): the watch brings the next version.
                Err(kube::Error::Api(status)) if [409, 422].contains(&status.code) => {
                    log::info!("{what} changed while being patched; will retry")
                }
                Err(e) => return Err(kube_error(format!("patch {what}"))(e)),
            }
        }
        Ok(())
    }

    /// Keeps the Secret valid and the caBundles right: on every change of a webhook configuration and every
    /// [`RECHECK`]. Runs until the process ends; errors are logged and retried.
    pub async fn maintain(self, client: kube::Client) {
        let selector = format!("metadata.name={}", self.webhook_config);
        let streams = webhook_resources().into_iter().map(|resource| {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            watcher::watcher(api, watcher::Config::default().fields(&selector))
                .default_backoff()
                .boxed()
        });
        let mut changes = futures_util::stream::select_all(streams);
        let mut ticker = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                event = changes.next() => match event {
                    Some(Ok(watcher::Event::Apply(_) | watcher::Event::InitApply(_))) => {}
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => { log::warn!("watching the webhook configurations: {e}"); continue }
                    None => tokio::time::sleep(RECHECK).await,
                },
                _ = ticker.tick() => {}
            }
            match self.ensure(&client).await {
                Ok(bundle) => {
                    if let Err(e) = self.patch_ca_bundles(&client, &bundle.ca_cert).await {
                        log::warn!("{e}");
                    }
                }
                Err(e) => log::warn!("keeping the webhook certificate: {e}"),
            }
        }
    }
}

/// Writes the token signing key into the cert dir (mode 0600) unless it is already there.
fn install_token_key(dir: &std::path::Path, token_key: &str) -> Result<()> {
    let path = dir.join(KEY_TOKEN_KEY);
    if std::fs::read_to_string(&path).is_ok_and(|current| current == token_key) {
        return Ok(());
    }
    tls::write_file(&path, token_key, true)?;
    Ok(())
}

fn webhook_resources() -> [ApiResource; 2] {
    [
        ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        ApiResource::erase::<MutatingWebhookConfiguration>(&()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> Vec<String> {
        vec![
            "berth.berth-system.svc".into(),
            "berth.berth-system.svc.cluster.local".into(),
            "127.0.0.1".into(),
        ]
    }

    #[test]
    fn plans() {
        let now = SystemTime::now();
        assert!(matches!(plan(None, &names(), now), Plan::NewAll(_)));
        let bundle = carry_out(&Plan::NewAll("test".into()), None, &names()).expect("issue");
        assert_eq!(plan(Some(&bundle), &names(), now), Plan::Reuse);

        // A new name needs a new serving certificate from the same CA.
        let mut more = names();
        more.push("berth.example".into());
        let needed = plan(Some(&bundle), &more, now);
        assert!(
            matches!(&needed, Plan::NewServing(why) if why.contains("berth.example")),
            "{needed:?}"
        );
        let renewed = carry_out(&needed, Some(&bundle), &more).expect("renew");
        assert_eq!(renewed.ca_cert, bundle.ca_cert);
        assert_ne!(renewed.cert, bundle.cert);
        assert_eq!(plan(Some(&renewed), &more, now), Plan::Reuse);

        // Close to expiry: 300 days from now the serving certificate has less than 90 days left.
        let later = now + Duration::from_secs(300 * 24 * 3600);
        assert!(matches!(
            plan(Some(&bundle), &names(), later),
            Plan::NewServing(_)
        ));
        // Nine and a half years from now, the CA itself is due.
        let much_later = now + Duration::from_secs(9 * 365 * 24 * 3600 + 180 * 24 * 3600);
        assert!(matches!(
            plan(Some(&bundle), &names(), much_later),
            Plan::NewAll(_)
        ));

        // Broken pieces.
        let swapped = Bundle {
            key: bundle.ca_key.clone(),
            ..bundle.clone()
        };
        assert!(matches!(
            plan(Some(&swapped), &names(), now),
            Plan::NewServing(_)
        ));
        let other = carry_out(&Plan::NewAll("other".into()), None, &names()).expect("issue");
        let foreign = Bundle {
            cert: other.cert.clone(),
            key: other.key.clone(),
            ..bundle.clone()
        };
        assert!(
            matches!(plan(Some(&foreign), &names(), now), Plan::NewServing(why) if why.contains("current CA"))
        );
        let garbage = Bundle {
            ca_cert: "garbage".into(),
            ..bundle.clone()
        };
        assert!(matches!(
            plan(Some(&garbage), &names(), now),
            Plan::NewAll(_)
        ));
    }

    #[test]
    fn the_token_key_is_added_once_and_kept_across_renewals() {
        let now = SystemTime::now();
        let bundle = carry_out(&Plan::NewAll("test".into()), None, &names()).expect("issue");
        assert!(crate::auth::token::key_is_usable(&bundle.token_key));
        // A Secret from before berth had tokens: only the key is added, the certificates stay.
        let old = Bundle {
            token_key: String::new(),
            ..bundle.clone()
        };
        let needed = plan(Some(&old), &names(), now);
        assert!(matches!(needed, Plan::NewTokenKey(_)), "{needed:?}");
        let added = carry_out(&needed, Some(&old), &names()).expect("add");
        assert_eq!(
            (&added.cert, &added.ca_cert),
            (&bundle.cert, &bundle.ca_cert)
        );
        assert!(crate::auth::token::key_is_usable(&added.token_key));
        // Renewing the certificates, even the CA, keeps the key.
        for renewal in [Plan::NewServing("test".into()), Plan::NewAll("test".into())] {
            let renewed = carry_out(&renewal, Some(&bundle), &names()).expect("renew");
            assert_ne!(renewed.cert, bundle.cert);
            assert_eq!(renewed.token_key, bundle.token_key);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        install_token_key(dir.path(), &bundle.token_key).expect("install");
        assert_eq!(
            crate::auth::token::load_or_generate_key(dir.path()).expect("load"),
            bundle.token_key
        );
    }

    #[test]
    fn secret_round_trip() {
        let bundle = carry_out(&Plan::NewAll("test".into()), None, &names()).expect("issue");
        let secret = Secret {
            data: Some(secret_data(&bundle)),
            ..Default::default()
        };
        assert_eq!(bundle_of(&secret), Some(bundle.clone()));
        // A Secret without a token key still reads (the plan adds one).
        let mut data = secret_data(&bundle);
        data.remove(KEY_TOKEN_KEY);
        let old = Secret {
            data: Some(data),
            ..Default::default()
        };
        assert_eq!(bundle_of(&old).map(|b| b.token_key), Some(String::new()));
        assert_eq!(bundle_of(&Secret::default()), None);
    }

    #[test]
    fn ca_bundle_patches() {
        let ca = "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n";
        let encoded = base64::engine::general_purpose::STANDARD.encode(ca);
        let configuration = json!({
            "metadata": {"name": "berth", "resourceVersion": "42"},
            "webhooks": [
                {"name": "a.berth.dev", "clientConfig": {"service": {"name": "berth"}}},
                {"name": "b.berth.dev", "clientConfig": {"caBundle": encoded}},
                {"name": "c.berth.dev", "clientConfig": {"caBundle": "b2xk"}}
            ]
        });
        let patch = serde_json::to_value(ca_bundle_patch(&configuration, ca).expect("patch"))
            .expect("json");
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": encoded},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": encoded}
            ])
        );
        let mut patched = configuration.clone();
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("patch");
        json_patch::patch(&mut patched, &patch).expect("applies");
        assert_eq!(
            ca_bundle_patch(&patched, ca),
            None,
            "nothing left to change"
        );
        assert_eq!(ca_bundle_patch(&json!({"metadata": {}}), ca), None);
    }
}
