//! What `berth policy check` and `berth policy eval` print: a policy's summary, the decision on one image, or the
//! validate and mutate responses to a whole AdmissionReview with the patch decoded. Pure: the caller reads files.

use std::fmt::Write as _;

use kube::core::admission::AdmissionResponse;
use serde_json::{json, Value};

use super::image::ImageRef;
use super::policy::{Policy, PolicyError, Verdict};
use super::{review, rewrite, scope, validate};
use crate::auth::access::Subject;
use crate::auth::identity::NODE_PROXY_SERVICE_ACCOUNT;
use crate::auth::{Action, Identity};
use crate::registry::names::RepoName;

/// A summary of a valid policy.
pub fn check(text: &str) -> Result<String, PolicyError> {
    let policy = Policy::from_yaml(text)?;
    let mut out = format!("policy is valid: {}\n", policy.summary());
    if let Some(description) = &policy.description {
        let _ = writeln!(out, "description: {description}");
    }
    for name in policy.rule_names() {
        let _ = writeln!(out, "rule {name}");
    }
    for name in policy.rewrite_names() {
        let _ = writeln!(out, "rewrite {name}");
    }
    let access = policy.access();
    let _ = writeln!(out, "access: {}", access.summary());
    for name in access.rule_names() {
        let _ = writeln!(out, "access rule {name}");
    }
    for name in policy.immutable_tag_names() {
        let _ = writeln!(out, "immutable tags {name}");
    }
    Ok(out)
}

/// A bad `berth policy eval --subject …` question; the message carries the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A subject that does not parse, or one that is not a single identity (`group:`, `namespace:`).
    #[error("--subject {subject:?}: {why}")]
    Subject { subject: String, why: String },
    /// `--group` given for an identity that has no groups.
    #[error("--group is for a ServiceAccount subject only; {subject} has no groups")]
    Groups { subject: String },
    /// An action other than pull, push or delete.
    #[error("--action {0:?}: expected pull, push or delete")]
    Action(String),
    /// A repository name outside the distribution grammar.
    #[error("--repository {0:?}: not a valid repository name")]
    Repository(String),
}

/// The identity `--subject` names (with `--group`s for a ServiceAccount, besides the groups every ServiceAccount
/// has), as berth would see it with verified credentials.
pub fn identity_for(
    subject: &str,
    groups: &[String],
    own_namespace: &str,
) -> Result<Identity, EvalError> {
    let parsed = Subject::parse(subject).map_err(|e| EvalError::Subject {
        subject: subject.to_owned(),
        why: e.to_string(),
    })?;
    let identity = match parsed {
        Subject::ServiceAccount { namespace, name } => {
            return Ok(Identity::service_account(&namespace, &name, groups))
        }
        Subject::User(name) => Identity::User { name },
        Subject::Anonymous => Identity::Anonymous,
        Subject::NodeProxy => Identity::NodeProxy {
            namespace: own_namespace.to_owned(),
            name: NODE_PROXY_SERVICE_ACCOUNT.to_owned(),
            node: None,
        },
        Subject::Group(_) | Subject::Namespace(_) | Subject::Authenticated => {
            return Err(EvalError::Subject {
                subject: subject.to_owned(),
                why: "name one identity: user:<name>, serviceaccount:<namespace>/<name>, node-proxy or anonymous (groups with --group)".into(),
            })
        }
    };
    if !groups.is_empty() {
        return Err(EvalError::Groups {
            subject: subject.to_owned(),
        });
    }
    Ok(identity)
}

/// The access decision on `subject` doing `action` on `repository`, and what decided it.
pub fn eval_access(
    policy: &Policy,
    subject: &str,
    groups: &[String],
    action: &str,
    repository: &str,
    own_namespace: &str,
) -> Result<String, EvalError> {
    let identity = identity_for(subject, groups, own_namespace)?;
    let action = Action::parse(action).ok_or_else(|| EvalError::Action(action.to_owned()))?;
    let repository =
        RepoName::parse(repository).map_err(|_| EvalError::Repository(repository.to_owned()))?;
    let decision = policy
        .access()
        .decide(&identity, action, repository.as_str());
    let mut out = String::new();
    let _ = writeln!(out, "identity:   {identity}");
    if let Identity::ServiceAccount { groups, .. } = &identity {
        let _ = writeln!(out, "groups:     {}", groups.join(", "));
    }
    let _ = writeln!(out, "action:     {action}");
    let _ = writeln!(out, "repository: {repository}");
    let _ = writeln!(
        out,
        "decision:   {}",
        if decision.allowed { "allow" } else { "deny" }
    );
    let _ = writeln!(out, "reason:     {}", decision.reason);
    Ok(out)
}

/// The decision on one image, the rule that decided, and the rewritten image. A path of berth's proxy is decided as
/// the upstream image behind it, as `/validate` does (every upstream is assumed configured: the CLI has no proxy
/// configuration).
pub fn eval_image(policy: &Policy, image: &str, namespace: &str, own_namespace: &str) -> String {
    let scope = scope::Scope::new(own_namespace).assuming_upstreams_of([image]);
    let upstream = scope.upstream_behind(image, policy);
    let decision = policy.decide(upstream.as_deref().unwrap_or(image), namespace);
    let mut out = String::new();
    let _ = writeln!(out, "image:      {image}");
    if let Some(upstream) = &upstream {
        let _ = writeln!(
            out,
            "proxied:    {upstream} (a path of berth's proxy is decided as the upstream image)"
        );
    }
    let _ = writeln!(
        out,
        "normalized: {}",
        decision.normalized.as_deref().unwrap_or("(does not parse)")
    );
    let _ = writeln!(
        out,
        "namespace:  {namespace}{}",
        if policy.excludes(namespace) {
            " (excluded by the policy)"
        } else {
            ""
        }
    );
    let verdict = match decision.verdict {
        Verdict::Allow => "allow",
        Verdict::Warn => "warn (allowed, with a warning)",
        Verdict::Deny => "deny",
    };
    let _ = writeln!(out, "decision:   {verdict}");
    let _ = writeln!(
        out,
        "rule:       {}",
        decision
            .rule
            .as_deref()
            .unwrap_or("(none matched; default action)")
    );
    if let Some(message) = &decision.message {
        let _ = writeln!(out, "message:    {message}");
    }
    let rewrite = ImageRef::parse(image)
        .ok()
        .and_then(|parsed| policy.plan_rewrite(&parsed, namespace));
    match rewrite {
        Some(planned) => {
            let target = planned
                .target
                .map(|t| t.to_string())
                .unwrap_or_else(|e| format!("(invalid: {e})"));
            let _ = writeln!(
                out,
                "rewrite:    {target} (rewrite {:?}, when {:?})",
                planned.rule, planned.when
            );
        }
        None => {
            let _ = writeln!(out, "rewrite:    (none)");
        }
    }
    out
}

/// Every string under an `image` key anywhere in `value`.
fn every_image(value: &Value) -> Vec<String> {
    let mut images = Vec::new();
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match value {
                        Value::String(image) if key == "image" => images.push(image.clone()),
                        _ => stack.push(value),
                    }
                }
            }
            Value::Array(values) => stack.extend(values),
            _ => {}
        }
    }
    images
}

fn response_json(response: &AdmissionResponse) -> Value {
    let mut value = serde_json::to_value(response).unwrap_or_default();
    // Decode the base64 patch so users can read it.
    if let Some(patch) = &response.patch {
        value["patch"] = serde_json::from_slice(patch).unwrap_or(Value::Null);
    }
    value
}

/// Runs a whole AdmissionReview through validate and mutate. `when: available` rewrites are assumed available
/// (the CLI has no registry to ask), and the output says so.
pub fn eval_review(
    policy: &Policy,
    review_json: &str,
    own_namespace: &str,
) -> Result<String, String> {
    let request = review::read_review(review_json.as_bytes()).map_err(|e| e.to_string())?;
    // Like `when: available`, every upstream a proxy path names is assumed configured.
    let images: Vec<String> = request
        .object
        .as_ref()
        .and_then(|object| object.spec.as_ref())
        .map(every_image)
        .unwrap_or_default();
    let scope =
        scope::Scope::new(own_namespace).assuming_upstreams_of(images.iter().map(String::as_str));
    let validated = validate::validate(&request, policy, &scope);
    let plan = rewrite::plan_mutation(&request, policy, &scope);
    let (patch, warnings) = rewrite::build_patch(&plan, &vec![true; plan.candidates.len()]);
    let mut mutated = AdmissionResponse::from(&request);
    if !warnings.is_empty() {
        mutated.warnings = Some(warnings);
    }
    if let Some(patch) = patch {
        mutated = mutated.with_patch(patch).map_err(|e| e.to_string())?;
    }
    let out = json!({
        "validate": response_json(&validated),
        "mutate": response_json(&mutated),
        "note": "rewrites with `when: available` are assumed available here, and every upstream a proxy path names configured",
    });
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_explains_an_access_decision() {
        let policy = Policy::from_yaml(
            "access: {rules: [{name: ci, repositories: ['team-a/.*'], subjects: ['group:ci'], actions: [push, pull]}]}",
        )
        .expect("policy");
        let eval = |subject: &str, groups: &[&str], action: &str, repository: &str| {
            let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
            eval_access(
                &policy,
                subject,
                &groups,
                action,
                repository,
                "berth-system",
            )
        };
        let check = |out: Result<String, EvalError>, needles: &[&str]| {
            let out = out.map_err(|e| e.to_string());
            let text = match &out {
                Ok(text) | Err(text) => text,
            };
            for needle in needles {
                assert!(text.contains(needle), "{out:?} lacks {needle:?}");
            }
        };
        check(
            eval("serviceaccount:team-b/x", &["ci"], "push", "team-a/app"),
            &[
                "decision:   allow",
                "reason:     rule \"ci\"",
                "system:serviceaccounts:team-b, system:authenticated, ci",
            ],
        );
        check(
            eval("serviceaccount:team-b/x", &[], "push", "team-a/app"),
            &["decision:   deny", "no rule allows it"],
        );
        check(
            eval("node-proxy", &[], "pull", "team-a/app"),
            &["identity:   node-proxy:unknown node (serviceaccount:berth-system/berth-node-proxy)", "decision:   allow"],
        );
        check(
            eval("anonymous", &[], "pull", "team-a/app"),
            &["decision:   deny"],
        );
        for (subject, groups, action, repository, error) in [
            ("usr:x", &[][..], "pull", "a/b", "--subject \"usr:x\""),
            ("group:ci", &[], "pull", "a/b", "name one identity"),
            (
                "user:alice",
                &["ci"][..],
                "pull",
                "a/b",
                "--group is for a ServiceAccount",
            ),
            ("user:alice", &[], "write", "a/b", "--action \"write\""),
            ("user:alice", &[], "pull", "A//b", "--repository \"A//b\""),
        ] {
            let result = eval(subject, groups, action, repository);
            assert!(
                result
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains(error)),
                "{subject} {action} {repository}: {result:?}"
            );
        }
        let summary = check_summary();
        assert!(
            summary.contains("access rule ci") && summary.contains("immutable tags releases"),
            "{summary}"
        );
    }

    fn check_summary() -> String {
        check("access: {rules: [{name: ci, repositories: [x], subjects: [anonymous], actions: []}]}\nimmutableTags: [{name: releases, repositories: [x], tags: [y]}]")
            .expect("valid")
    }

    const POLICY: &str = r#"
defaultAction: deny
rules: [{name: hub-official, action: allow, images: ['docker\.io/library/.*']}]
rewrites: [{name: hub, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}]
"#;

    /// `policy eval` decides as `/validate` does: a path of berth's proxy by the upstream image behind it.
    #[test]
    fn eval_decides_a_proxy_path_as_its_upstream_image() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let out = eval_image(
            &policy,
            "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25",
            "apps",
            "berth-system",
        );
        assert!(
            out.contains("proxied:    docker.io/library/nginx:1.25"),
            "{out}"
        );
        assert!(out.contains("decision:   allow"), "{out}");
        let out = eval_image(
            &policy,
            "evil.example/proxy/docker.io/library/nginx:1.25",
            "apps",
            "berth-system",
        );
        assert!(!out.contains("proxied:"), "{out}");
        assert!(out.contains("decision:   deny"), "{out}");

        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p", "namespace": "apps", "operation": "CREATE", "userInfo": {},
            "object": {"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "a", "image": "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25"},
                {"name": "b", "image": "nginx:1.25"}
            ]}}
        }});
        let out: Value = serde_json::from_str(
            &eval_review(&policy, &review.to_string(), "berth-system").expect("eval"),
        )
        .expect("json");
        assert_eq!(out["validate"]["allowed"], true, "{out}");
        assert_eq!(
            out["mutate"]["patch"][0]["value"],
            "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25"
        );
    }
}
