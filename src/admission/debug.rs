//! What `berth policy check` and `berth policy eval` print: a policy's summary, the decision on one image, or the
//! validate and mutate responses to a whole AdmissionReview with the patch decoded. Pure: the caller reads files.

use std::fmt::Write as _;

use kube::core::admission::AdmissionResponse;
use serde_json::{json, Value};

use super::image::ImageRef;
use super::policy::{Policy, PolicyError, Verdict};
use super::review;

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
    Ok(out)
}

/// The decision on one image, the rule that decided, and the rewritten image.
pub fn eval_image(policy: &Policy, image: &str, namespace: &str) -> String {
    let decision = policy.decide(image, namespace);
    let mut out = String::new();
    let _ = writeln!(out, "image:      {image}");
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
    let scope = review::Scope::new(own_namespace);
    let validated = review::validate(&request, policy, &scope);
    let plan = review::plan_mutation(&request, policy, &scope);
    let (patch, warnings) = review::build_patch(&plan, &vec![true; plan.candidates.len()]);
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
        "note": "rewrites with `when: available` are assumed available here",
    });
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}
