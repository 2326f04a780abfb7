//! The image policy: YAML spec → compiled [`Policy`] (every regex compiled once, implicitly anchored) → decisions.
//! Pure: no I/O, no HTTP. Errors name the rule, the field and the pattern.

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::image::{normalize_host, ImageRef, ReferenceError};
use super::pattern::{compile_all, entry_context, unique, Pattern, PatternError};
use crate::auth::access::{AccessError, AccessPolicy, ImmutableTags};

/// `enforce` denies; `audit` never denies, turning what would be denied into warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// What happens to an image no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Allow,
    Deny,
}

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Warn,
}

/// When a rewrite applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    #[default]
    Always,
    /// Only if berth can serve the target (its store holds the manifest, or a proxy upstream serves it).
    Available,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    default_action: DefaultAction,
    #[serde(default)]
    default_message: Option<String>,
    #[serde(default)]
    exclude_namespaces: Vec<String>,
    #[serde(default)]
    rules: Vec<Value>,
    #[serde(default)]
    rewrites: Vec<Value>,
    /// Who may pull, push and delete (compiled by [`AccessPolicy::compile`]).
    #[serde(default)]
    access: Option<Value>,
    /// Tags that may not move nor be deleted once set (compiled by [`ImmutableTags::compile`]).
    #[serde(default)]
    immutable_tags: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleSpec {
    name: String,
    action: Action,
    images: Vec<String>,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewriteSpec {
    name: String,
    #[serde(rename = "match")]
    pattern: String,
    replace: String,
    #[serde(default)]
    when: When,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
}

/// A policy that cannot be loaded; the message says where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(pub String);

impl From<PatternError> for PolicyError {
    fn from(error: PatternError) -> Self {
        PolicyError(error.to_string())
    }
}

impl From<AccessError> for PolicyError {
    fn from(error: AccessError) -> Self {
        PolicyError(error.to_string())
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    action: Action,
    images: Vec<Pattern>,
    namespaces: Option<Vec<Pattern>>,
    message: Option<String>,
}

#[derive(Debug, Clone)]
struct Rewrite {
    name: String,
    pattern: Pattern,
    replace: String,
    when: When,
    namespaces: Option<Vec<Pattern>>,
}

/// A compiled policy, shared immutably and swapped whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub description: Option<String>,
    pub mode: Mode,
    pub default_action: DefaultAction,
    default_message: Option<String>,
    exclude_namespaces: Vec<Pattern>,
    rules: Vec<Rule>,
    rewrites: Vec<Rewrite>,
    /// The registry hosts the rewrites name literally in `replace`, normalised: where the policy sends pods instead of
    /// the original, so berth's own addresses.
    rewrite_hosts: Vec<String>,
    access: AccessPolicy,
    immutable_tags: ImmutableTags,
}

/// The registry host a rewrite's replacement names literally (`127.0.0.1:5050/proxy/docker.io/$1` →
/// `127.0.0.1:5050`), normalised; `None` when the host comes from the match (`$1/…`) or there is none (a Docker Hub
/// name).
fn literal_target_host(replace: &str) -> Option<String> {
    let (first, _) = replace.split_once('/')?;
    if first.contains('$') || !(first.contains(['.', ':']) || first == "localhost") {
        return None;
    }
    normalize_host(first).ok()
}

/// The verdict on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Warn,
    Deny,
}

/// The decision on one image, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDecision {
    /// The image as written in the pod.
    pub image: String,
    /// Its normalised form, if it parses.
    pub normalized: Option<String>,
    pub verdict: Verdict,
    /// The rule that decided (`defaultAction` when none matched and the default denies).
    pub rule: Option<String>,
    pub message: Option<String>,
}

/// A rewrite that applies to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRewrite {
    pub rule: String,
    pub when: When,
    pub target: Result<ImageRef, ReferenceError>,
}

impl Policy {
    /// Allow everything, rewrite nothing: what berth runs without a policy.
    pub fn allow_all() -> Policy {
        Policy::default()
    }

    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        let spec: Option<PolicySpec> =
            serde_yaml_ng::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        let Some(spec) = spec else {
            return Ok(Policy::allow_all());
        };
        let exclude_namespaces = compile_all(
            &spec.exclude_namespaces,
            "excludeNamespaces",
            "excludeNamespaces",
        )?;

        let mut rules = Vec::with_capacity(spec.rules.len());
        for (index, value) in spec.rules.iter().enumerate() {
            let context = entry_context("rules", index, value);
            let rule: RuleSpec = serde_yaml_ng::from_value(value.clone())
                .map_err(|e| PolicyError(format!("{context}: {e}")))?;
            if rule.images.is_empty() {
                return Err(PolicyError(format!(
                    "{context}: field images is empty; a rule needs at least one pattern"
                )));
            }
            rules.push(Rule {
                images: compile_all(&rule.images, &context, "images")?,
                namespaces: rule
                    .namespaces
                    .as_deref()
                    .map(|n| compile_all(n, &context, "namespaces"))
                    .transpose()?,
                name: rule.name,
                action: rule.action,
                message: rule.message,
            });
        }
        unique(rules.iter().map(|r| r.name.clone()), "rules")?;

        let mut rewrites = Vec::with_capacity(spec.rewrites.len());
        for (index, value) in spec.rewrites.iter().enumerate() {
            let context = entry_context("rewrites", index, value);
            let rewrite: RewriteSpec = serde_yaml_ng::from_value(value.clone())
                .map_err(|e| PolicyError(format!("{context}: {e}")))?;
            rewrites.push(Rewrite {
                pattern: Pattern::compile(&rewrite.pattern, &format!("{context}: field match"))?,
                namespaces: rewrite
                    .namespaces
                    .as_deref()
                    .map(|n| compile_all(n, &context, "namespaces"))
                    .transpose()?,
                name: rewrite.name,
                replace: rewrite.replace,
                when: rewrite.when,
            });
        }
        unique(rewrites.iter().map(|r| r.name.clone()), "rewrites")?;
        let mut rewrite_hosts: Vec<String> = rewrites
            .iter()
            .filter_map(|r| literal_target_host(&r.replace))
            .collect();
        rewrite_hosts.sort();
        rewrite_hosts.dedup();
        let access = match &spec.access {
            Some(value) if !value.is_null() => AccessPolicy::compile(value)?,
            _ => AccessPolicy::default(),
        };
        let immutable_tags = ImmutableTags::compile(&spec.immutable_tags)?;

        Ok(Policy {
            description: spec.description,
            mode: spec.mode,
            default_action: spec.default_action,
            default_message: spec.default_message,
            exclude_namespaces,
            rules,
            rewrites,
            rewrite_hosts,
            access,
            immutable_tags,
        })
    }

    /// The normalised registry hosts the rewrites send pods to (only those written literally in `replace`).
    pub fn rewrite_hosts(&self) -> &[String] {
        &self.rewrite_hosts
    }

    /// A one-line summary for logs, `/readyz` and the CLI.
    pub fn summary(&self) -> String {
        format!(
            "mode {}, default {}, {} rules, {} rewrites, {} excluded namespace patterns; access: {}; {} immutable tag rules",
            format!("{:?}", self.mode).to_lowercase(),
            format!("{:?}", self.default_action).to_lowercase(),
            self.rules.len(),
            self.rewrites.len(),
            self.exclude_namespaces.len(),
            self.access.summary(),
            self.immutable_tags.len(),
        )
    }

    /// The access rules (`access:`): who may pull, push and delete.
    pub fn access(&self) -> &AccessPolicy {
        &self.access
    }

    /// The name of the `immutableTags` rule that makes `repository:tag` immutable (`immutableTags[i]` for an
    /// unnamed one), if any.
    pub fn immutable_tag_rule(&self, repository: &str, tag: &str) -> Option<&str> {
        self.immutable_tags.rule_for(repository, tag)
    }

    /// The names of the `immutableTags` rules, in order.
    pub fn immutable_tag_names(&self) -> impl Iterator<Item = &str> {
        self.immutable_tags.names()
    }

    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    pub fn rewrite_names(&self) -> impl Iterator<Item = &str> {
        self.rewrites.iter().map(|r| r.name.as_str())
    }

    /// Namespaces the policy never validates nor mutates.
    pub fn excludes(&self, namespace: &str) -> bool {
        self.exclude_namespaces.iter().any(|p| p.matches(namespace))
    }

    /// The decision for `image` in `namespace`: the first matching rule, else the default action.
    pub fn decide(&self, image: &str, namespace: &str) -> ImageDecision {
        let parsed = match ImageRef::parse(image) {
            Ok(parsed) => parsed,
            Err(e) => {
                return self.apply_mode(ImageDecision {
                    image: image.to_owned(),
                    normalized: None,
                    verdict: Verdict::Deny,
                    rule: None,
                    message: Some(e.to_string()),
                })
            }
        };
        let normalized = parsed.to_string();
        let in_scope = |namespaces: &Option<Vec<Pattern>>| {
            namespaces
                .as_ref()
                .is_none_or(|patterns| patterns.iter().any(|p| p.matches(namespace)))
        };
        let matched = self.rules.iter().find(|rule| {
            in_scope(&rule.namespaces) && rule.images.iter().any(|p| p.matches(&normalized))
        });
        let decision = match matched {
            Some(rule) => ImageDecision {
                image: image.to_owned(),
                normalized: Some(normalized),
                verdict: match rule.action {
                    Action::Allow => Verdict::Allow,
                    Action::Warn => Verdict::Warn,
                    Action::Deny => Verdict::Deny,
                },
                rule: Some(rule.name.clone()),
                message: rule.message.clone(),
            },
            None => match self.default_action {
                DefaultAction::Allow => ImageDecision {
                    image: image.to_owned(),
                    normalized: Some(normalized),
                    verdict: Verdict::Allow,
                    rule: None,
                    message: None,
                },
                DefaultAction::Deny => ImageDecision {
                    image: image.to_owned(),
                    normalized: Some(normalized),
                    verdict: Verdict::Deny,
                    rule: Some("defaultAction".to_owned()),
                    message: Some(self.default_message.clone().unwrap_or_else(|| {
                        "no rule allows this image and the default action is deny".into()
                    })),
                },
            },
        };
        self.apply_mode(decision)
    }

    fn apply_mode(&self, mut decision: ImageDecision) -> ImageDecision {
        if self.mode == Mode::Audit && decision.verdict == Verdict::Deny {
            decision.verdict = Verdict::Warn;
            let message = decision.message.take().unwrap_or_default();
            decision.message = Some(format!("audit mode, would be denied: {message}"));
        }
        decision
    }

    /// The first rewrite whose `match` covers the normalised `image` in `namespace`, with its target. `None` when
    /// no rewrite matches, or the image already points at the target's registry (so a second pass changes nothing).
    pub fn plan_rewrite(&self, image: &ImageRef, namespace: &str) -> Option<PlannedRewrite> {
        let normalized = image.to_string();
        let rewrite = self.rewrites.iter().find(|rewrite| {
            rewrite
                .namespaces
                .as_ref()
                .is_none_or(|patterns| patterns.iter().any(|p| p.matches(namespace)))
                && rewrite.pattern.matches(&normalized)
        })?;
        let replaced = rewrite
            .pattern
            .regex
            .replace(&normalized, rewrite.replace.as_str())
            .into_owned();
        let target = ImageRef::parse(&replaced);
        if let Ok(target) = &target {
            if target.domain == image.domain {
                return None;
            }
        }
        Some(PlannedRewrite {
            rule: rewrite.name.clone(),
            when: rewrite.when,
            target,
        })
    }

    /// The source patterns of every rule (for `berth policy check`).
    pub fn patterns(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().flat_map(|r| {
            r.images
                .iter()
                .map(move |p| (r.name.as_str(), p.source.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
mode: enforce
defaultAction: allow
excludeNamespaces: [kube-system, "tmp-.*"]
rules:
  - name: no-latest
    action: deny
    images: ['.*:latest']
    namespaces: ['prod-.*']
    message: "pin a version; :latest is not allowed in production"
  - name: trusted
    action: allow
    images: ['registry\.internal/.*']
  - name: hub-warning
    action: warn
    images: ['docker\.io/.*']
    message: "prefer the internal registry"
  - name: evil
    action: deny
    images: ['evil\.example/.*']
rewrites:
  - name: hub-via-cache
    match: 'docker\.io/(.+)'
    replace: '127.0.0.1:5050/proxy/docker.io/$1'
    when: available
  - name: internal
    match: 'registry\.internal/(.+)'
    replace: '127.0.0.1:5050/$1'
"#;

    fn policy() -> Policy {
        Policy::from_yaml(POLICY).expect("valid policy")
    }

    #[test]
    fn first_matching_rule_decides() {
        let policy = policy();
        let cases: &[(&str, &str, Verdict, Option<&str>)] = &[
            ("nginx", "prod-web", Verdict::Deny, Some("no-latest")),
            ("nginx", "dev", Verdict::Warn, Some("hub-warning")),
            ("nginx:1.25", "prod-web", Verdict::Warn, Some("hub-warning")),
            (
                "registry.internal/app:latest",
                "prod-web",
                Verdict::Deny,
                Some("no-latest"),
            ),
            (
                "registry.internal/app:1",
                "prod-web",
                Verdict::Allow,
                Some("trusted"),
            ),
            ("evil.example/x:1", "dev", Verdict::Deny, Some("evil")),
            ("quay.io/x:1", "dev", Verdict::Allow, None),
            ("Bad/Image", "dev", Verdict::Deny, None),
            // Implicitly anchored: a partial match is no match.
            (
                "registry.internal.evil.example/x:1",
                "dev",
                Verdict::Allow,
                None,
            ),
        ];
        for (image, namespace, verdict, rule) in cases {
            let decision = policy.decide(image, namespace);
            assert_eq!(
                decision.verdict, *verdict,
                "{image} in {namespace}: {decision:?}"
            );
            assert_eq!(decision.rule.as_deref(), *rule, "{image} in {namespace}");
        }
        let decision = policy.decide("nginx", "prod-web");
        assert_eq!(
            decision.normalized.as_deref(),
            Some("docker.io/library/nginx:latest")
        );
        assert_eq!(
            decision.message.as_deref(),
            Some("pin a version; :latest is not allowed in production")
        );
        assert!(policy
            .decide("", "dev")
            .message
            .unwrap_or_default()
            .contains("empty reference"));
    }

    /// Issue 9, item 5: rules saw the host as written, so other spellings of a denied host got through.
    #[test]
    fn a_rule_on_a_host_covers_every_spelling_of_it() {
        let policy = Policy::from_yaml(
            "rules: [{name: evil, action: deny, images: ['evil\\.example\\.com/.*']}]",
        )
        .expect("valid");
        for image in [
            "evil.example.com/x:1",
            "EVIL.EXAMPLE.COM/x:1",
            "Evil.Example.Com/x:1",
            "evil.example.com:443/x:1",
            "EVIL.example.com:0443/x:1",
        ] {
            let decision = policy.decide(image, "apps");
            assert_eq!(
                (decision.verdict, decision.rule.as_deref()),
                (Verdict::Deny, Some("evil")),
                "{image}"
            );
            assert_eq!(decision.normalized.as_deref(), Some("evil.example.com/x:1"));
        }
        // Another port is another endpoint; the rule's author covers it with `(:[0-9]+)?` if they mean it.
        assert_eq!(
            policy.decide("evil.example.com:8443/x:1", "apps").verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn default_deny_and_audit_mode() {
        let deny = Policy::from_yaml("defaultAction: deny\nrules: [{name: ok, action: allow, images: ['docker\\.io/ok/.*']}]")
            .expect("valid");
        assert_eq!(deny.decide("docker.io/ok/x:1", "a").verdict, Verdict::Allow);
        let decision = deny.decide("other:1", "a");
        assert_eq!(
            (decision.verdict, decision.rule.as_deref()),
            (Verdict::Deny, Some("defaultAction"))
        );

        let audit = Policy::from_yaml("mode: audit\ndefaultAction: deny").expect("valid");
        let decision = audit.decide("other:1", "a");
        assert_eq!(decision.verdict, Verdict::Warn);
        assert!(decision
            .message
            .unwrap_or_default()
            .starts_with("audit mode, would be denied"));
        assert_eq!(audit.decide("Bad/Ref", "a").verdict, Verdict::Warn);
    }

    #[test]
    fn exclusions() {
        let policy = policy();
        assert!(policy.excludes("kube-system"));
        assert!(policy.excludes("tmp-123"));
        assert!(!policy.excludes("kube-system-2"));
        assert!(!policy.excludes("default"));
    }

    #[test]
    fn rewrites_and_idempotence() {
        let policy = policy();
        let image = ImageRef::parse("nginx:1.25").expect("valid");
        let planned = policy.plan_rewrite(&image, "dev").expect("rewrite");
        assert_eq!(planned.rule, "hub-via-cache");
        assert_eq!(planned.when, When::Available);
        let target = planned.target.expect("valid target");
        assert_eq!(
            target.to_string(),
            "127.0.0.1:5050/proxy/docker.io/library/nginx:1.25"
        );
        // Already at the target registry: nothing to do.
        assert_eq!(policy.plan_rewrite(&target, "dev"), None);
        let internal =
            ImageRef::parse(&("registry.internal/team/app@sha256:".to_owned() + &"b".repeat(64)))
                .expect("ok");
        let planned = policy.plan_rewrite(&internal, "dev").expect("rewrite");
        assert_eq!(planned.when, When::Always);
        assert_eq!(
            planned.target.map(|t| t.to_string()).ok(),
            Some(format!("127.0.0.1:5050/team/app@sha256:{}", "b".repeat(64)))
        );
        assert_eq!(
            policy.plan_rewrite(&ImageRef::parse("quay.io/x").expect("ok"), "dev"),
            None
        );
    }

    #[test]
    fn rewrite_hosts_are_the_literal_normalised_targets() {
        let policy = Policy::from_yaml(
            r#"
rewrites:
  - {name: a, match: 'docker\.io/(.+)', replace: '127.0.0.1:5050/proxy/docker.io/$1'}
  - {name: b, match: 'quay\.io/(.+)', replace: 'Berth.Berth-System.svc:443/proxy/quay.io/$1'}
  - {name: c, match: 'ghcr\.io/(.+)', replace: '127.0.0.1:5050/proxy/ghcr.io/$1'}
  - {name: d, match: '([^/]+)/(.+)', replace: '$1/mirror/$2'}
  - {name: e, match: 'x\.io/(.+)', replace: 'team/$1'}
"#,
        )
        .expect("valid");
        assert_eq!(
            policy.rewrite_hosts(),
            ["127.0.0.1:5050", "berth.berth-system.svc"]
        );
    }

    #[test]
    fn errors_name_the_rule_field_and_pattern() {
        let cases: &[(&str, &[&str])] = &[
            ("rules: [{name: broken, action: deny, images: ['ok', '(']}]", &["\"broken\"", "images[1]", "\"(\""]),
            ("rules: [{name: typo, action: deny, imagez: ['x']}]", &["\"typo\"", "imagez"]),
            ("rules: [{name: act, action: maybe, images: ['x']}]", &["\"act\"", "maybe"]),
            ("rules: [{action: deny, images: ['x']}]", &["rules[0]", "name"]),
            ("rules: [{name: e, action: deny, images: []}]", &["\"e\"", "images is empty"]),
            ("rules: [{name: a, action: deny, images: [x]}, {name: a, action: allow, images: [y]}]", &["\"a\"", "twice"]),
            ("rewrites: [{name: rw, match: '[', replace: x}]", &["\"rw\"", "field match", "\"[\""]),
            ("rewrites: [{name: rw, match: 'x', replace: y, when: sometimes}]", &["\"rw\"", "sometimes"]),
            ("excludeNamespaces: ['(']", &["excludeNamespaces[0]", "\"(\""]),
            ("mode: strict", &["strict"]),
            ("unknownTop: 1", &["unknownTop"]),
            ("rules: {}", &["rules"]),
        ];
        for (yaml, needles) in cases {
            let error = Policy::from_yaml(yaml).expect_err(yaml).to_string();
            for needle in *needles {
                assert!(error.contains(needle), "{yaml}: {error:?} lacks {needle:?}");
            }
        }
        assert_eq!(
            Policy::from_yaml("").map(|p| p.summary()).ok(),
            Some(Policy::allow_all().summary())
        );
    }
}

#[cfg(test)]
mod access_sections {
    use super::*;
    use crate::auth::{Action, Identity};

    /// The issue's example: both sections compile with the rest of the document and are reachable from `Policy`.
    #[test]
    fn access_and_immutable_tags_are_compiled_with_the_policy() {
        let policy = Policy::from_yaml(
            r#"
rules: [{name: evil, action: deny, images: ['evil\.example/.*']}]
access:
  anonymous: none
  admins: ['user:ops', 'group:system:masters']
  rules:
    - name: ci-pushes-team-a
      repositories: ['team-a/.*']
      subjects: ['serviceaccount:team-a/ci', 'user:alice', 'group:devs', 'namespace:team-a']
      actions: [pull, push]
immutableTags:
  - repositories: ['.*']
    tags: ['v?[0-9]+\.[0-9]+\.[0-9]+.*']
"#,
        )
        .expect("valid");
        let alice = Identity::User {
            name: "alice".into(),
        };
        let decision = policy.access().decide(&alice, Action::Push, "team-a/app");
        assert_eq!(
            (decision.allowed, decision.reason.as_str()),
            (true, "rule \"ci-pushes-team-a\"")
        );
        assert!(!policy.access().anonymous_pull());
        assert_eq!(
            policy.immutable_tag_rule("team-a/app", "v1.0.0"),
            Some("immutableTags[0]")
        );
        assert_eq!(policy.immutable_tag_rule("team-a/app", "latest"), None);
        assert_eq!(
            policy.summary(),
            "mode enforce, default allow, 1 rules, 0 rewrites, 0 excluded namespace patterns; \
             access: anonymous none, 2 admins, 1 access rules; 1 immutable tag rules"
        );
        for (yaml, needle) in [
            ("access: {rules: [{name: r, repositories: ['('], subjects: [anonymous], actions: []}]}", "access.rules[0] \"r\": field repositories[0]"),
            ("immutableTags: [{repositories: [x], tags: ['(']}]", "immutableTags[0]: field tags[0]"),
            ("access: [1]", "access"),
        ] {
            let error = Policy::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(error.contains(needle), "{yaml}: {error}");
        }
        // An empty section is the default.
        let empty = Policy::from_yaml("access:\nimmutableTags: []").expect("valid");
        assert_eq!(empty.summary(), Policy::allow_all().summary());
    }
}

/// The example policies shipped in `policies/` load, and decide as their comments say.
#[cfg(test)]
mod shipped_policies {
    use super::*;

    fn load(text: &str) -> Policy {
        Policy::from_yaml(text).expect("shipped policy loads")
    }

    #[test]
    fn default_policy() {
        let policy = load(include_str!("../../policies/default.yaml"));
        assert_eq!(policy.decide("nginx:1.25", "apps").verdict, Verdict::Allow);
        assert_eq!(policy.decide("nginx", "apps").verdict, Verdict::Warn);
        assert!(policy.excludes("kube-system"));
        assert_eq!(
            policy.plan_rewrite(&ImageRef::parse("nginx").expect("ok"), "apps"),
            None
        );
    }

    #[test]
    fn production_policy() {
        let policy = load(include_str!("../../policies/production.yaml"));
        assert_eq!(
            policy.immutable_tag_rule("team/app", "v1.2.3"),
            Some("releases")
        );
        assert_eq!(policy.immutable_tag_rule("team/app", "1.2.3-rc1"), None);
        let platform = crate::auth::Identity::service_account("platform", "deployer", &[]);
        assert!(
            policy
                .access()
                .decide(&platform, crate::auth::Action::Delete, "team/app")
                .allowed
        );
        assert!(!policy.access().anonymous_pull());
        let cases: &[(&str, &str, Verdict, Option<&str>)] = &[
            ("nginx", "prod-web", Verdict::Deny, Some("no-latest")),
            (
                "nginx:1.25",
                "prod-web",
                Verdict::Allow,
                Some("official-hub-images"),
            ),
            (
                "bitnami/redis:7",
                "prod-web",
                Verdict::Deny,
                Some("defaultAction"),
            ),
            (
                "bitnami/redis:7",
                "dev-x",
                Verdict::Warn,
                Some("hub-outside-production"),
            ),
            (
                "127.0.0.1:5050/team/app:1",
                "prod-web",
                Verdict::Allow,
                Some("in-cluster-registry"),
            ),
            (
                "berth.berth-system.svc:443/team/app:1",
                "prod-web",
                Verdict::Allow,
                Some("in-cluster-registry"),
            ),
            (
                "registry.k8s.io/pause:3.9",
                "prod-web",
                Verdict::Allow,
                Some("kubernetes-images"),
            ),
            (
                "quay.io/x/y:1",
                "prod-web",
                Verdict::Deny,
                Some("defaultAction"),
            ),
        ];
        for (image, namespace, verdict, rule) in cases {
            let decision = policy.decide(image, namespace);
            assert_eq!(
                (decision.verdict, decision.rule.as_deref()),
                (*verdict, *rule),
                "{image} in {namespace}"
            );
        }
    }

    #[test]
    fn cache_everything_policy() {
        let policy = load(include_str!("../../policies/cache-everything.yaml"));
        let rewrite = |image: &str| {
            let planned = policy.plan_rewrite(&ImageRef::parse(image).expect("ok"), "apps")?;
            assert_eq!(planned.when, When::Available);
            planned.target.ok().map(|t| t.to_string())
        };
        assert_eq!(
            rewrite("nginx:1.25").as_deref(),
            Some("127.0.0.1:5050/proxy/docker.io/library/nginx:1.25")
        );
        assert_eq!(
            rewrite("ghcr.io/o/r:1").as_deref(),
            Some("127.0.0.1:5050/proxy/ghcr.io/o/r:1")
        );
        assert_eq!(rewrite("registry.internal/x:1"), None);
        assert_eq!(rewrite("127.0.0.1:5050/proxy/ghcr.io/o/r:1"), None);
        assert_eq!(
            policy.decide("anything/at:all", "apps").verdict,
            Verdict::Allow
        );
    }
}
