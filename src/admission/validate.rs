//! `/validate`'s decision: every container image of a Pod or workload decided by the policy, where a path of
//! berth's proxy is decided as the upstream image behind it and berth's own rewrite as its original, and on UPDATE
//! only what is new. The tests that run `/mutate`'s output through `/validate` are here too, since this is the
//! module that trusts what the rewrite recorded. With pull authorization on, every image on one of berth's own hosts is
//! also decided by the access rules, for the pod's ServiceAccount, as the image is in the pod (a rewritten image as
//! the path of berth it now is). Pure: no I/O.

use std::collections::BTreeMap;

use kube::core::admission::{AdmissionResponse, Operation};

use super::image::ImageRef;
use super::pod::{container_images, object_name, pod_spec, recorded_originals};
use super::policy::{ImageDecision, Mode, Policy, Verdict};
use super::review::Request;
use super::rewrite::original_behind;
use super::scope::{skipped, Scope};
use crate::auth::{Action, Identity};

/// The images `/validate` decides for one container, each with how the denial message names it:
/// - berth's rewrite of the recorded original (see [`original_behind`]): the original only;
/// - otherwise the image, or for a path of berth's proxy the upstream image behind it instead; and a recorded
///   original the rewrite does not explain (forged, or from another policy) as well, so it can only deny more.
fn images_to_decide(
    image: &str,
    recorded_original: Option<&str>,
    policy: &Policy,
    scope: &Scope,
    namespace: &str,
) -> Vec<(String, &'static str)> {
    let parsed = ImageRef::parse(image).ok();
    let original = recorded_original.filter(|o| *o != image);
    if let (Some(original), Some(parsed)) = (original, &parsed) {
        if let Some(decided) = original_behind(original, parsed, policy, namespace) {
            return vec![(decided, "original image")];
        }
    }
    let mut images = match parsed.and_then(|p| scope.proxied_image(&p, policy)) {
        Some(upstream) => vec![(upstream, "proxied image")],
        None => vec![(image.to_owned(), "image")],
    };
    if let Some(original) = original {
        images.push((original.to_owned(), "original image"));
    }
    images
}

/// The ServiceAccount a pod spec runs as: `serviceAccountName`, else the deprecated `serviceAccount`, else
/// `default`.
pub(super) fn service_account_of(spec: &serde_json::Value) -> &str {
    ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|field| spec.get(field).and_then(serde_json::Value::as_str))
        .filter(|name| !name.is_empty())
        .unwrap_or("default")
}

/// Why the pod's ServiceAccount may not pull `image` from berth, and the access decision's reason (`rule "x"`, `no
/// rule allows it`), or `None` when it may or the image is not berth's (another registry's, or one that does not
/// parse: the image rules report that).
fn pull_denial(
    image: &str,
    identity: &Identity,
    policy: &Policy,
    scope: &Scope,
) -> Option<(String, String)> {
    let parsed = ImageRef::parse(image).ok()?;
    if !scope.is_own_host(&parsed.domain, policy) {
        return None;
    }
    let repository = parsed.path.as_str();
    let decision = policy.access().decide(identity, Action::Pull, repository);
    (!decision.allowed).then(|| {
        let message = format!(
            "image {image:?}: {identity} may not pull repository {repository} from berth ({})",
            decision.reason
        );
        (message, decision.reason)
    })
}

/// On UPDATE, the images the old object already had, by container list and name: those are not decided again, so a
/// policy change never blocks scaling, finalizer removal or label changes of what already runs.
fn previous_images(request: &Request) -> BTreeMap<(&'static str, String), String> {
    let mut previous = BTreeMap::new();
    if request.operation != Operation::Update {
        return previous;
    }
    if let Some(spec) = request
        .old_object
        .as_ref()
        .and_then(|old| pod_spec(request, old))
    {
        for container in container_images(spec) {
            previous.insert((container.kind.field(), container.name), container.image);
        }
    }
    previous
}

/// `/validate`'s answer and the rule that decided it (what the event log records).
#[derive(Debug, Clone)]
pub struct Validation {
    pub response: AdmissionResponse,
    /// For a denial, the first rule that denied (an access decision as `access: <its reason>`); for an answer with
    /// warnings, the first rule that warned; otherwise the first rule that allowed an image, or `None` when no rule
    /// matched (the default action allowed, or the review was not one berth decides).
    pub rule: Option<String>,
}

/// `/validate`: allows or denies the object by the policy. A denial names, for every offending image, the container,
/// the normalised image, the rule and its message; warnings go in `warnings`.
pub fn validate(request: &Request, policy: &Policy, scope: &Scope) -> AdmissionResponse {
    decide(request, policy, scope).response
}

/// [`validate`], with the rule that decided.
pub fn decide(request: &Request, policy: &Policy, scope: &Scope) -> Validation {
    decide_observing(request, policy, scope, &mut |_| {})
}

/// [`decide`], showing `observe` every image decision the policy's rules make (the metrics count them by rule).
pub fn decide_observing(
    request: &Request,
    policy: &Policy,
    scope: &Scope,
    observe: &mut dyn FnMut(&ImageDecision),
) -> Validation {
    let mut response = AdmissionResponse::from(request);
    let undecided = |response| Validation {
        response,
        rule: None,
    };
    if skipped(request, policy, scope) {
        return undecided(response);
    }
    let Some(object) = request.object.as_ref() else {
        return undecided(response);
    };
    // An object being deleted only loses finalizers: never stand in its way.
    if object.metadata.deletion_timestamp.is_some() {
        return undecided(response);
    }
    let Some(spec) = pod_spec(request, object) else {
        return undecided(response);
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let originals = if request.kind.kind == "Pod" {
        recorded_originals(object)
    } else {
        BTreeMap::new()
    };

    let previous = previous_images(request);
    let puller = scope
        .authorize_pulls
        .then(|| Identity::service_account(namespace, service_account_of(spec), &[]));
    let mut denials = Vec::new();
    let mut warnings = Vec::new();
    // The first rule that denied, warned and allowed: the event log's `rule` (see `Validation::rule`).
    let (mut denied_by, mut warned_by, mut allowed_by) = (None, None, None);
    for container in container_images(spec) {
        let key = (container.kind.field(), container.name.clone());
        if previous.get(&key) == Some(&container.image) {
            continue;
        }
        if let Some((denial, reason)) = puller
            .as_ref()
            .and_then(|identity| pull_denial(&container.image, identity, policy, scope))
        {
            let rule = Some(format!("access: {reason}"));
            match policy.mode {
                Mode::Enforce => {
                    denied_by = denied_by.or(rule);
                    denials.push(format!("container {:?} {denial}", container.name));
                }
                Mode::Audit => {
                    warned_by = warned_by.or(rule);
                    warnings.push(format!(
                        "container {:?} audit mode, would be denied: {denial}",
                        container.name
                    ));
                }
            }
        }
        let checks = images_to_decide(
            &container.image,
            originals.get(&container.name).map(String::as_str),
            policy,
            scope,
            namespace,
        );
        for (image, label) in checks {
            let image = &image;
            let decision = policy.decide(image, namespace);
            observe(&decision);
            let what = match &decision.normalized {
                Some(normalized) if normalized != image => {
                    format!("{label} {image:?} ({normalized})")
                }
                _ => format!("{label} {image:?}"),
            };
            let why = match (&decision.rule, &decision.message) {
                (Some(rule), Some(message)) => format!("rule {rule:?}: {message}"),
                (Some(rule), None) => format!("rule {rule:?}"),
                (None, Some(message)) => message.clone(),
                (None, None) => String::new(),
            };
            match decision.verdict {
                Verdict::Allow => allowed_by = allowed_by.or(decision.rule),
                Verdict::Warn => {
                    warned_by = warned_by.or(decision.rule);
                    warnings.push(format!("container {:?} {what}: {why}", container.name))
                }
                Verdict::Deny => {
                    denied_by = denied_by.or(decision.rule);
                    denials.push(format!(
                        "container {:?} {what} is denied by {why}",
                        container.name
                    ))
                }
            }
        }
    }
    let rule = if !denials.is_empty() {
        denied_by
    } else if !warnings.is_empty() {
        warned_by
    } else {
        allowed_by
    };
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    if !denials.is_empty() {
        let kind = &request.kind.kind;
        let name = object_name(request, object);
        response = response.deny(format!(
            "berth denied {kind} {namespace}/{name}: {}",
            denials.join("; ")
        ));
        response.result.code = 403;
        response.result.reason = "Forbidden".into();
    }
    Validation { response, rule }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::pod::ORIGINAL_IMAGES_ANNOTATION;
    use crate::admission::rewrite::{build_patch, plan_mutation};
    use crate::admission::testing::{pod, request, scope, POLICY};
    use serde_json::{json, Value};

    /// Issue 11: with pull authorization on, an image on berth's own hosts is decided for the pod's ServiceAccount
    /// by the access rules, as the image is in the pod; other registries' images are not berth's to authorize.
    #[test]
    fn pulls_from_berth_are_authorized_for_the_pods_service_account() {
        let access = r#"
access:
  rules:
    - {name: ci-reads-team-a, repositories: ['team-a/.*'], subjects: ['serviceaccount:team-b/ci', 'group:system:serviceaccounts:team-c'], actions: [pull]}
    - {name: vault-closed, repositories: ['team-c/vault'], subjects: [authenticated], actions: []}
"#;
        let policy = Policy::from_yaml(access).expect("policy");
        let audit = Policy::from_yaml(&format!("mode: audit\n{access}")).expect("policy");
        let on = scope().authorizing_pulls(true);
        // (namespace, serviceAccountName, image, allowed, what the denial says)
        type Case<'a> = (&'a str, Option<&'a str>, &'a str, bool, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "team-b",
                None,
                "127.0.0.1:5050/team-a/app:1",
                false,
                &[
                    "container \"c\" image \"127.0.0.1:5050/team-a/app:1\"",
                    "serviceaccount:team-b/default may not pull repository team-a/app",
                    "(no rule allows it)",
                ],
            ),
            (
                "team-b",
                None,
                "berth.berth-system.svc/team-a/app:1",
                false,
                &["repository team-a/app"],
            ),
            (
                "team-b",
                None,
                "localhost:5050/team-a/app:1",
                false,
                &["repository team-a/app"],
            ),
            ("team-a", None, "127.0.0.1:5050/team-a/app:1", true, &[]),
            (
                "team-b",
                Some("ci"),
                "127.0.0.1:5050/team-a/app:1",
                true,
                &[],
            ),
            (
                "team-c",
                Some("anyone"),
                "127.0.0.1:5050/team-a/app:1",
                true,
                &[],
            ),
            (
                "team-c",
                None,
                "127.0.0.1:5050/team-c/vault:1",
                false,
                &["rule \"vault-closed\""],
            ),
            // A rewritten image is authorized as the path of berth it is: the cache is open to every ServiceAccount.
            (
                "team-b",
                None,
                "127.0.0.1:5050/proxy/docker.io/library/nginx:1",
                true,
                &[],
            ),
            // Not berth's: the image rules alone decide.
            ("team-b", None, "quay.io/team-a/app:1", true, &[]),
            ("team-b", None, "evil.example/team-a/app:1", true, &[]),
        ];
        for (namespace, account, image, allowed, needles) in cases {
            let mut spec = json!({"containers": [{"name": "c", "image": image}]});
            if let Some(account) = account {
                spec["serviceAccountName"] = json!(account);
            }
            let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                "spec": {"template": {"spec": spec.clone()}}});
            for review in [
                request(("", "Pod"), "CREATE", namespace, pod(spec.clone(), None)),
                request(("apps", "Deployment"), "CREATE", namespace, deployment),
            ] {
                let response = validate(&review, &policy, &on);
                assert_eq!(
                    response.allowed, *allowed,
                    "{namespace} {account:?} {image}: {}",
                    response.result.message
                );
                for needle in *needles {
                    assert!(
                        response.result.message.contains(needle),
                        "{:?} lacks {needle:?}",
                        response.result.message
                    );
                }
                // Off (auth off), pulls are not authorized at admission.
                assert!(validate(&review, &policy, &scope()).allowed, "{image}");
                // Audit mode: a warning instead.
                let audited = validate(&review, &audit, &on);
                assert!(audited.allowed);
                let warned = audited.warnings.unwrap_or_default().iter().any(|w| {
                    w.contains("audit mode, would be denied") && w.contains("may not pull")
                });
                assert_eq!(warned, !allowed, "{image}");
            }
        }
    }

    /// Review finding (issue 11): the node-local address spelled another way (`[::ffff:7f00:1]:5050`, any
    /// `127.x.y.z`, `0.0.0.0`, `[::]`) was not berth's own host, so a team-b pod ran team-a's image through the node
    /// proxy without its pull being authorized. Every spelling a kubelet could pull from the node proxy by is decided
    /// for the pod's ServiceAccount; one the reference grammar refuses is denied as unparseable; other ports and
    /// addresses are not berth's.
    #[test]
    fn every_spelling_of_the_node_local_address_is_authorized() {
        let policy = Policy::from_yaml(
            "access: {rules: [{name: proxy-open, repositories: ['proxy/.*'], subjects: [authenticated], actions: [pull]}]}",
        )
        .expect("policy");
        let on = scope().authorizing_pulls(true);
        /// How `/validate` answers a team-b pod naming team-a's image on `host`.
        #[derive(Debug, PartialEq)]
        enum Expected {
            /// Berth's own host: decided for the pod's ServiceAccount, which may not pull team-a's repository.
            PullDenied,
            /// Not a reference (the grammar refuses the host): denied by the image rules.
            Unparseable,
            /// Not berth's: the image rules alone decide, and allow it.
            NotBerths,
        }
        fn check(policy: &Policy, scope: &Scope, host: &str, expected: Expected) {
            let image = format!("{host}/team-a/app:1");
            let spec = json!({"containers": [{"name": "c", "image": image}]});
            let response = validate(
                &request(("", "Pod"), "CREATE", "team-b", pod(spec, None)),
                policy,
                scope,
            );
            let message = &response.result.message;
            let got = if response.allowed {
                Expected::NotBerths
            } else if message
                .contains("serviceaccount:team-b/default may not pull repository team-a/app")
            {
                Expected::PullDenied
            } else if message.contains("invalid image reference") {
                Expected::Unparseable
            } else {
                panic!("{host}: unexpected denial {message}");
            };
            assert_eq!(got, expected, "{host}: {message}");
        }
        use Expected::*;
        let cases = [
            ("127.0.0.1:5050", PullDenied),
            ("localhost:5050", PullDenied),
            ("LOCALHOST:5050", PullDenied),
            ("[::ffff:7f00:1]:5050", PullDenied),
            ("[::FFFF:7F00:1]:5050", PullDenied),
            ("[0:0:0:0:0:ffff:7f00:1]:5050", PullDenied),
            ("[::ffff:7f01:203]:5050", PullDenied),
            ("127.0.0.2:5050", PullDenied),
            ("127.255.255.254:5050", PullDenied),
            ("127.0.0.1:05050", PullDenied),
            ("0.0.0.0:5050", PullDenied),
            ("[::ffff:0:0]:5050", PullDenied),
            ("[::]:5050", PullDenied),
            ("[0:0:0:0:0:0:0:0]:5050", PullDenied),
            ("[::1]:5050", PullDenied),
            ("[0:0:0:0:0:0:0:1]:5050", PullDenied),
            ("node.localhost:5050", PullDenied),
            ("[::ffff:127.0.0.1]:5050", Unparseable),
            // Other ports of the node and other addresses are not the node proxy.
            ("127.0.0.1:5051", NotBerths),
            ("127.0.0.1", NotBerths),
            ("0.0.0.0", NotBerths),
            ("[::1]:5000", NotBerths),
            ("[::ffff:a00:1]:5050", NotBerths),
            ("128.0.0.1:5050", NotBerths),
            ("localhost.evil.example:5050", NotBerths),
            ("evil-localhost:5050", NotBerths),
        ];
        for (host, expected) in cases {
            check(&policy, &on, host, expected);
        }
        // The cache stays open by every spelling: the proxy path is recognised as berth's and decided as the
        // upstream image.
        for host in ["[::ffff:7f00:1]:5050", "127.0.0.2:5050", "[::]:5050"] {
            let image = format!("{host}/proxy/docker.io/library/nginx:1");
            let spec = json!({"containers": [{"name": "c", "image": image}]});
            let response = validate(
                &request(("", "Pod"), "CREATE", "team-b", pod(spec, None)),
                &policy,
                &on,
            );
            assert!(response.allowed, "{image}: {}", response.result.message);
        }
    }

    #[test]
    fn validate_pods_and_workloads() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let spec = json!({
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "containers": [{"name": "web", "image": "nginx"}, {"name": "ok", "image": "quay.io/x:1"}]
        });
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec.clone(), None)),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert_eq!(response.result.code, 403);
        assert_eq!(
            response.result.message,
            "berth denied Pod prod/p: container \"web\" image \"nginx\" (docker.io/library/nginx:latest) is denied by rule \"no-latest\": pin a version"
        );
        assert_eq!(
            response.warnings,
            Some(vec!["container \"init\" image \"busybox:1.36\" (docker.io/library/busybox:1.36): rule \"hub\": prefer the cache".into()])
        );
        assert_eq!(response.uid, "u-1");

        let cronjob = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": spec}}}}});
        let response = validate(
            &request(("batch", "CronJob"), "CREATE", "prod", cronjob),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .starts_with("berth denied CronJob prod/c: container \"web\""),
            "{}",
            response.result.message
        );

        // Excluded namespaces, berth's own namespace, DELETE and kinds without pods are allowed untouched.
        for (kind, operation, namespace) in [
            (("", "Pod"), "CREATE", "kube-system"),
            (("", "Pod"), "CREATE", "berth-system"),
            (("", "Pod"), "DELETE", "prod"),
            (("", "ConfigMap"), "CREATE", "prod"),
        ] {
            let response = validate(
                &request(kind, operation, namespace, pod(spec.clone(), None)),
                &policy,
                &scope(),
            );
            assert!(response.allowed, "{kind:?} {operation} {namespace}");
            assert_eq!(response.warnings, None);
        }
    }

    #[test]
    fn a_rewrite_does_not_launder_a_denied_original() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/docker.io/library/nginx:1"}]});
        let annotations = json!({ORIGINAL_IMAGES_ANNOTATION: "{\"web\":\"nginx:latest\"}"});
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec, Some(annotations))),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("original image \"nginx:latest\""),
            "{}",
            response.result.message
        );
    }

    #[test]
    fn a_forged_original_is_overwritten_and_a_proxy_path_is_judged_by_its_upstream_image() {
        let policy = Policy::from_yaml(
            "rules: [{name: evil, action: deny, images: ['docker\\.io/evil/.*']}]\nrewrites: [{name: hub, match: 'docker\\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}]",
        )
        .expect("policy");
        // The pod claims an innocent original for an evil image; the rewrite records what the pod really asked for.
        let forged = json!({ORIGINAL_IMAGES_ANNOTATION: "{\"web\":\"nginx:1.25\"}"});
        let spec = json!({"containers": [{"name": "web", "image": "evil/miner:1"}]});
        let create = request(("", "Pod"), "CREATE", "prod", pod(spec, Some(forged)));
        let plan = plan_mutation(&create, &policy, &scope());
        let (patch, _) = build_patch(&plan, &[true]);
        let patch = serde_json::to_value(patch.expect("patch")).expect("json");
        assert_eq!(patch[1]["value"], "{\"web\":\"evil/miner:1\"}");

        // Naming the proxy path directly is judged as the upstream image.
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/docker.io/evil/miner:1"}]});
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec, None)),
            &policy,
            &scope(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("proxied image \"docker.io/evil/miner:1\""),
            "{}",
            response.result.message
        );
        // Not for an upstream berth does not proxy.
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/other/evil/miner:1"}]});
        let response = validate(
            &request(("", "Pod"), "CREATE", "prod", pod(spec, None)),
            &policy,
            &scope(),
        );
        assert!(response.allowed);
    }

    /// Issue 9, item 1: the policy of the report. `/validate` decided the image `/mutate` had just written, which no
    /// rule allows, so the default action refused every pod berth rewrote.
    const DEFAULT_DENY: &str = r#"
defaultAction: deny
rules:
  - {name: hub-official, action: allow, images: ['docker\.io/library/.*']}
rewrites:
  - {name: hub-via-cache, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#;

    /// Validates a pod with one container `web` running `image`, with `original` recorded for it.
    /// `/validate`'s answer to the creation of `object`, a pod in namespace `apps`.
    fn validate_pod(policy: &Policy, object: Value) -> AdmissionResponse {
        validate(
            &request(("", "Pod"), "CREATE", "apps", object),
            policy,
            &scope(),
        )
    }

    fn validate_one(policy: &Policy, image: &str, original: Option<&str>) -> AdmissionResponse {
        let annotations = original.map(|o| {
            json!({ORIGINAL_IMAGES_ANNOTATION: serde_json::to_string(&json!({"web": o})).expect("json")})
        });
        let spec = json!({"containers": [{"name": "web", "image": image}]});
        validate_pod(policy, pod(spec, annotations))
    }

    /// Issue 10 and its review: a `sha384` image is decided by the policy like any other (the default allows it: a
    /// pod that pulls fine elsewhere is not broken), and a `when: available` rewrite of it is left out with a
    /// warning that says why (berth verifies sha256 and sha512 only), not a bare "not available".
    #[test]
    fn a_sha384_image_is_decided_by_the_policy_and_its_rewrite_says_why_not() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: allow
rewrites:
  - {name: via-berth, match: 'registry\.example/(.+)', replace: 'berth.berth-system.svc/$1', when: available}
"#,
        )
        .expect("policy");
        let image = format!("registry.example/app@sha384:{}", "e".repeat(96));
        let response = validate_one(&policy, &image, None);
        assert!(response.allowed, "{}", response.result.message);

        let spec = json!({"containers": [{"name": "web", "image": image}]});
        let plan = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", pod(spec, None)),
            &policy,
            &scope(),
        );
        assert_eq!(plan.candidates.len(), 1, "{:?}", plan.candidates);
        // What routes::holds answers for a digest berth cannot store.
        let (patch, warnings) = build_patch(&plan, &[false]);
        assert!(patch.is_none());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("is not available from berth")
                && warnings[0].contains("unsupported digest algorithm (sha256 and sha512 are)"),
            "{warnings:?}"
        );
    }

    /// Review finding: with an upstream named `quay` (no dot), `…/proxy/quay/evil/miner:1` was decided as Docker Hub's
    /// `docker.io/quay/evil/miner:1`, so a rule denying `quay\.io/evil/.*` was bypassed. Such a path is decided as
    /// written.
    #[test]
    fn a_proxy_path_of_an_upstream_named_like_no_registry_is_decided_as_written() {
        let policy = Policy::from_yaml(
            "defaultAction: deny\nrules: [{name: hub, action: allow, images: ['docker\\.io/.*']}]",
        )
        .expect("policy");
        let scope = Scope::new("berth-system").with_proxy_upstreams(["quay".to_owned()]);
        let spec = json!({"containers": [{"name": "web", "image": "127.0.0.1:5050/proxy/quay/evil/miner:1"}]});
        let response = validate(
            &request(("", "Pod"), "CREATE", "apps", pod(spec, None)),
            &policy,
            &scope,
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("image \"127.0.0.1:5050/proxy/quay/evil/miner:1\" is denied"),
            "{}",
            response.result.message
        );
    }

    /// Review finding: with chained rewrites (docker.io -> mirror, mirror -> berth) and reinvocationPolicy IfNeeded, the
    /// second /mutate pass rewrote the mirror image again and recorded the mirror as the original, and /validate then
    /// refused the pod. A container that already is berth's rewrite of its recorded original is left alone.
    #[test]
    fn a_reinvocation_never_rewrites_berths_own_rewrite_again() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: deny
rules: [{name: hub, action: allow, images: ['docker\.io/library/.*']}]
rewrites:
  - {name: to-mirror, match: 'docker\.io/(.+)', replace: 'mirror.example.com/$1'}
  - {name: mirror-to-cache, match: 'mirror\.example\.com/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#,
        )
        .expect("policy");
        let spec = json!({"containers": [{"name": "web", "image": "nginx:1.25"}]});
        let mut object = pod(spec, None);
        for pass in 0..2 {
            let plan = plan_mutation(
                &request(("", "Pod"), "CREATE", "apps", object.clone()),
                &policy,
                &scope(),
            );
            let available = vec![true; plan.candidates.len()];
            match build_patch(&plan, &available).0 {
                Some(patch) => {
                    assert_eq!(pass, 0, "the reinvocation changed the pod again");
                    json_patch::patch(&mut object, &patch).expect("applies");
                }
                None => assert_eq!(pass, 1, "the first pass did not rewrite"),
            }
        }
        assert_eq!(
            object["spec"]["containers"][0]["image"],
            "mirror.example.com/library/nginx:1.25"
        );
        assert_eq!(
            object["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION],
            "{\"web\":\"nginx:1.25\"}"
        );
        let response = validate_pod(&policy, object);
        assert!(response.allowed, "{}", response.result.message);
    }

    /// Review finding: a digest that a later mutating webhook pinned to berth's rewrite made /validate decide the
    /// literal image, refused by a default deny. It is the original at that digest.
    #[test]
    fn a_digest_pinned_to_berths_rewrite_is_the_original_at_that_digest() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: deny
rules:
  - {name: pinned-only, action: deny, images: ['registry\.internal/team/app:1']}
  - {name: internal, action: allow, images: ['registry\.internal/.*']}
rewrites: [{name: internal, match: 'registry\.internal/(.+)', replace: '127.0.0.1:5050/$1'}]
"#,
        )
        .expect("policy");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned = format!("127.0.0.1:5050/team/app:1@{digest}");
        let response = validate_one(&policy, &pinned, Some("registry.internal/team/app:1"));
        assert!(response.allowed, "{}", response.result.message);
        // Unpinned it is the original itself, which the first rule refuses.
        let response = validate_one(
            &policy,
            "127.0.0.1:5050/team/app:1",
            Some("registry.internal/team/app:1"),
        );
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("pinned-only"),
            "{}",
            response.result.message
        );
        // Another digest on another tag is not the rewrite: decided as written (and refused by default).
        let other = format!("127.0.0.1:5050/team/app:2@{digest}");
        let response = validate_one(&policy, &other, Some("registry.internal/team/app:1"));
        assert!(!response.allowed);
    }

    #[test]
    fn default_deny_with_a_rewrite_admits_the_pods_berth_rewrote() {
        let policy = Policy::from_yaml(DEFAULT_DENY).expect("policy");
        let proxied = "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25";
        let evil_proxied = "127.0.0.1:5050/proxy/docker.io/evil/miner:1";
        // (image, recorded original, Ok(()) if allowed or Err(what the denial says))
        let cases: &[(&str, Option<&str>, Result<(), &str>)] = &[
            // What /mutate made of nginx:1.25: decided as nginx:1.25.
            (proxied, Some("nginx:1.25"), Ok(())),
            (proxied, Some("docker.io/library/nginx:1.25"), Ok(())),
            // The same path written by hand (or /mutate was down): decided as the upstream image behind it.
            (proxied, None, Ok(())),
            ("localhost:5050/proxy/docker.io/library/nginx:1.25", None, Ok(())),
            ("berth.berth-system.svc:443/proxy/docker.io/library/nginx:1.25", None, Ok(())),
            ("Berth.Berth-System.svc.cluster.local/proxy/docker.io/nginx:1.25", None, Ok(())),
            // The original is what is decided, so a rewrite launders nothing.
            ("nginx:1.25", None, Ok(())),
            ("evil/miner:1", None, Err("image \"evil/miner:1\" (docker.io/evil/miner:1) is denied by rule \"defaultAction\"")),
            (evil_proxied, Some("evil/miner:1"), Err("original image \"evil/miner:1\" (docker.io/evil/miner:1) is denied")),
            (evil_proxied, None, Err("proxied image \"docker.io/evil/miner:1\" is denied")),
            // A forged original the rewrite does not explain gains nothing: the image itself is decided too.
            (evil_proxied, Some("nginx:1.25"), Err("proxied image \"docker.io/evil/miner:1\" is denied")),
            ("quay.io/evil/miner:1", Some("nginx:1.25"), Err("image \"quay.io/evil/miner:1\" is denied")),
            // And a forged original can only deny more.
            (proxied, Some("evil/miner:1"), Err("original image \"evil/miner:1\" (docker.io/evil/miner:1) is denied")),
            // A proxy path is berth's only on berth's own hosts: elsewhere it is a repository like any other.
            ("evil.example/proxy/docker.io/library/nginx:1.25", None, Err("image \"evil.example/proxy/docker.io/library/nginx:1.25\" is denied")),
            ("evil.example/proxy/docker.io/library/nginx:1.25", Some("nginx:1.25"), Err("image \"evil.example/proxy/docker.io/library/nginx:1.25\" is denied")),
            ("127.0.0.1:5051/proxy/docker.io/library/nginx:1.25", None, Err("is denied")),
            // An upstream berth does not proxy is not behind the path.
            ("127.0.0.1:5050/proxy/quay.io/library/nginx:1.25", None, Err("image \"127.0.0.1:5050/proxy/quay.io/library/nginx:1.25\" is denied")),
        ];
        for (image, original, expected) in cases {
            let response = validate_one(&policy, image, *original);
            match expected {
                Ok(()) => assert!(
                    response.allowed,
                    "{image} (original {original:?}): {}",
                    response.result.message
                ),
                Err(needle) => {
                    assert!(!response.allowed, "{image} (original {original:?}) allowed");
                    assert!(
                        response.result.message.contains(needle),
                        "{image} (original {original:?}): {:?} lacks {needle:?}",
                        response.result.message
                    );
                }
            }
        }

        // The whole round trip: /mutate's output passes /validate.
        let spec = json!({"containers": [{"name": "web", "image": "nginx:1.25"}]});
        let mut object = pod(spec, None);
        let plan = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", object.clone()),
            &policy,
            &scope(),
        );
        let (patch, _) = build_patch(&plan, &[true]);
        json_patch::patch(&mut object, &patch.expect("a patch")).expect("applies");
        assert_eq!(object["spec"]["containers"][0]["image"], proxied);
        let response = validate_pod(&policy, object);
        assert!(response.allowed, "{}", response.result.message);
    }

    /// Issue 11: a pod berth's /mutate rewrote is authorized as the image it now names: a rewrite to berth's own
    /// repositories (not the cache) is a pull of that repository, decided for the pod's ServiceAccount.
    #[test]
    fn a_rewritten_pod_is_authorized_as_what_it_now_pulls() {
        let policy = Policy::from_yaml(
            r#"
rewrites:
  - {name: internal, match: 'registry\.internal/(.+)', replace: '127.0.0.1:5050/$1'}
  - {name: hub, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
"#,
        )
        .expect("policy");
        let on = scope().authorizing_pulls(true);
        for (namespace, image, allowed) in [
            ("team-a", "registry.internal/team-a/app:1", true),
            ("team-b", "registry.internal/team-a/app:1", false),
            ("team-b", "nginx:1.25", true),
        ] {
            let spec = json!({"containers": [{"name": "web", "image": image}]});
            let mut object = pod(spec, None);
            let plan = plan_mutation(
                &request(("", "Pod"), "CREATE", namespace, object.clone()),
                &policy,
                &on,
            );
            let (patch, _) = build_patch(&plan, &[true]);
            json_patch::patch(&mut object, &patch.expect("a patch")).expect("applies");
            let rewritten = object["spec"]["containers"][0]["image"].clone();
            let response = validate(
                &request(("", "Pod"), "CREATE", namespace, object),
                &policy,
                &on,
            );
            assert_eq!(
                response.allowed, allowed,
                "{namespace} {image} -> {rewritten}: {}",
                response.result.message
            );
            if !allowed {
                assert!(
                    response.result.message.contains(
                        "serviceaccount:team-b/default may not pull repository team-a/app"
                    ),
                    "{}",
                    response.result.message
                );
            }
        }
    }

    /// A rewrite to a host of the policy's own is berth's address too, and a verified original decides there as well.
    #[test]
    fn the_policys_rewrite_targets_are_berths_own_hosts() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: deny
rules: [{name: internal, action: allow, images: ['registry\.internal/.*', 'quay\.io/team/.*']}]
rewrites:
  - {name: internal, match: 'registry\.internal/(.+)', replace: 'berth.example.com/$1'}
  - {name: quay, match: 'quay\.io/(.+)', replace: 'berth.example.com/proxy/quay.io/$1'}
"#,
        )
        .expect("policy");
        let scope = Scope::new("berth-system").with_proxy_upstreams(["quay.io".to_owned()]);
        let check = |image: &str, original: Option<&str>| {
            let annotations = original.map(|o| {
                json!({ORIGINAL_IMAGES_ANNOTATION: serde_json::to_string(&json!({"web": o})).expect("json")})
            });
            let spec = json!({"containers": [{"name": "web", "image": image}]});
            validate(
                &request(("", "Pod"), "CREATE", "apps", pod(spec, annotations)),
                &policy,
                &scope,
            )
            .allowed
        };
        assert!(check(
            "berth.example.com/team/app:1",
            Some("registry.internal/team/app:1")
        ));
        assert!(!check("berth.example.com/team/app:1", None));
        assert!(!check(
            "berth.example.com/team/app:1",
            Some("registry.internal/team/other:1")
        ));
        assert!(check(
            "BERTH.example.com:443/proxy/quay.io/team/app:1",
            None
        ));
        assert!(!check("berth.example.com/proxy/quay.io/other/app:1", None));
    }

    /// Issue 9, item 6 (small ones): the README said the first recorded original is kept, the code overwrote it. The
    /// code is right: what the pod asks for is the original, the recorded value is only the pod author's claim. A
    /// reinvocation keeps berth's record, because a container already at its target is not rewritten again.
    #[test]
    fn a_rewrite_records_what_the_pod_asks_for_over_a_recorded_claim() {
        let policy = Policy::from_yaml(DEFAULT_DENY).expect("policy");
        let forged =
            json!({ORIGINAL_IMAGES_ANNOTATION: "{\"web\":\"nginx:1.25\",\"side\":\"busybox:1\"}"});
        let spec = json!({"containers": [
            {"name": "web", "image": "evil/miner:1"},
            {"name": "side", "image": "quay.io/x:1"}
        ]});
        let mut object = pod(spec, Some(forged));
        let plan = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", object.clone()),
            &policy,
            &scope(),
        );
        let (patch, _) = build_patch(&plan, &[true]);
        let patch = patch.expect("a patch");
        json_patch::patch(&mut object, &patch).expect("applies");
        let recorded: BTreeMap<String, String> = serde_json::from_str(
            object["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION]
                .as_str()
                .expect("annotation"),
        )
        .expect("map");
        assert_eq!(
            recorded["web"], "evil/miner:1",
            "the claim did not survive the rewrite"
        );
        // An entry for a container berth did not rewrite stays as written; /validate trusts it only when the
        // policy's rewrite explains the image.
        assert_eq!(recorded["side"], "busybox:1");
        let response = validate_pod(&policy, object.clone());
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("original image \"evil/miner:1\""),
            "{}",
            response.result.message
        );

        // Reinvoked on its own output, /mutate changes nothing, so the first record stays.
        let again = plan_mutation(
            &request(("", "Pod"), "CREATE", "apps", object),
            &policy,
            &scope(),
        );
        assert_eq!(build_patch(&again, &[]).0, None);
    }

    #[test]
    fn updates_decide_only_new_images_and_deletions_pass() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let old = pod(
            json!({"containers": [{"name": "web", "image": "nginx"}]}),
            None,
        );
        // Only labels changed: the already-running :latest image is not decided again.
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"x": "y"});
        let mut update = request(("", "Pod"), "UPDATE", "prod", relabelled);
        update.old_object = serde_json::from_value(old.clone()).ok();
        assert!(validate(&update, &policy, &scope()).allowed);
        // A changed image is decided.
        let changed = pod(
            json!({"containers": [{"name": "web", "image": "busybox"}]}),
            None,
        );
        let mut update = request(("", "Pod"), "UPDATE", "prod", changed);
        update.old_object = serde_json::from_value(old.clone()).ok();
        assert!(!validate(&update, &policy, &scope()).allowed);
        // An object being deleted (finalizers going) always passes.
        let mut deleting = old.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        deleting["spec"]["containers"][0]["image"] = json!("busybox");
        let mut update = request(("", "Pod"), "UPDATE", "prod", deleting);
        update.old_object = serde_json::from_value(old).ok();
        assert!(validate(&update, &policy, &scope()).allowed);
    }
}
