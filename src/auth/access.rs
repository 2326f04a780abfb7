//! The access rules of the policy document (`access:` and `immutableTags:`): spec → compiled → decisions. The
//! sections are compiled here, from [`crate::admission::policy::Policy::from_yaml`], with the policy's anchored
//! patterns; errors name the section, the entry, the field and the value.
//!
//! Must not: do I/O, know HTTP, or look at credentials (an [`Identity`] arrives already verified).

use std::fmt;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::{Action, Identity};
use crate::admission::pattern::{compile_all, entry_context, unique, Pattern, PatternError};

/// The decision on one identity, action and repository, with what decided it (for the 403 message, the token's
/// log line and `berth policy eval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDecision {
    pub allowed: bool,
    /// What decided: `rule "ci-pushes-team-a"`, `admins`, `built-in: a ServiceAccount's own namespace`,
    /// `anonymous: pull`, `no rule allows it`, …
    pub reason: String,
}

/// What an unauthenticated client may do (`access.anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Nothing (unless a rule names the `anonymous` subject).
    #[default]
    None,
    /// Pull any repository no rule decides otherwise.
    Pull,
}

/// A subject a rule or the admins list names, parsed at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `user:<name>`: a user of the htpasswd file.
    User(String),
    /// `serviceaccount:<ns>/<name>`: one ServiceAccount (the node proxy's included).
    ServiceAccount { namespace: String, name: String },
    /// `group:<group>`: any ServiceAccount the API server puts in that group (`system:serviceaccounts:team-a`).
    Group(String),
    /// `namespace:<ns>`: any ServiceAccount of that namespace.
    Namespace(String),
    /// `node-proxy`: berth's node proxy.
    NodeProxy,
    /// `anonymous`: a client without credentials.
    Anonymous,
    /// `authenticated`: any verified identity.
    Authenticated,
}

/// A subject that does not parse; the message carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Not one of the subject kinds.
    #[error("unknown subject {0:?}: expected user:<name>, serviceaccount:<namespace>/<name>, group:<group>, namespace:<namespace>, node-proxy, anonymous or authenticated")]
    Unknown(String),
    /// A known kind with a malformed name.
    #[error("invalid subject {subject:?}: {why}")]
    Invalid { subject: String, why: &'static str },
}

/// An `access:` or `immutableTags:` section that cannot be compiled; the message names the section, the entry, the
/// field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// A pattern that does not compile, or an entry name that is empty or used twice.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// An entry that does not parse (a missing, unknown or mistyped field).
    #[error("{context}: {why}")]
    Entry { context: String, why: String },
    /// A list field that needs at least one value.
    #[error("{context}: field {field} is empty; {what}")]
    Empty {
        context: String,
        field: &'static str,
        what: &'static str,
    },
    /// A subject that does not parse.
    #[error("{context}: field {field}[{index}]: {source}")]
    Subject {
        context: String,
        field: &'static str,
        index: usize,
        #[source]
        source: SubjectError,
    },
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A ServiceAccount name: an RFC 1123 subdomain.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// A user or group name: printable, no whitespace, not empty.
fn is_plain_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && text.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

impl Subject {
    /// Parses a subject as rules write it (see [`Subject`]'s variants).
    pub fn parse(text: &str) -> Result<Subject, SubjectError> {
        let invalid = |why| SubjectError::Invalid {
            subject: text.to_owned(),
            why,
        };
        match text {
            "node-proxy" => return Ok(Subject::NodeProxy),
            "anonymous" => return Ok(Subject::Anonymous),
            "authenticated" => return Ok(Subject::Authenticated),
            _ => {}
        }
        let Some((kind, rest)) = text.split_once(':') else {
            return Err(SubjectError::Unknown(text.to_owned()));
        };
        match kind {
            "user" if is_plain_name(rest) => Ok(Subject::User(rest.to_owned())),
            "user" => Err(invalid("a user name is 1 to 256 characters without whitespace")),
            "group" if is_plain_name(rest) => Ok(Subject::Group(rest.to_owned())),
            "group" => Err(invalid("a group is 1 to 256 characters without whitespace")),
            "namespace" if is_dns_label(rest) => Ok(Subject::Namespace(rest.to_owned())),
            "namespace" => Err(invalid("a namespace is a DNS label (lowercase letters, digits and -)")),
            "serviceaccount" => match rest.split_once('/') {
                Some((namespace, name)) if is_dns_label(namespace) && is_dns_subdomain(name) => {
                    Ok(Subject::ServiceAccount {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    })
                }
                _ => Err(invalid(
                    "a ServiceAccount is <namespace>/<name>, each in lowercase letters, digits, - (and . in the name)",
                )),
            },
            _ => Err(SubjectError::Unknown(text.to_owned())),
        }
    }

    /// Whether `identity` is this subject.
    pub fn matches(&self, identity: &Identity) -> bool {
        match (self, identity) {
            (Subject::Anonymous, Identity::Anonymous) => true,
            (Subject::Authenticated, identity) => identity.is_authenticated(),
            (Subject::User(want), Identity::User { name }) => want == name,
            (
                Subject::ServiceAccount { namespace, name },
                Identity::ServiceAccount {
                    namespace: ns,
                    name: n,
                    ..
                }
                | Identity::NodeProxy {
                    namespace: ns,
                    name: n,
                    ..
                },
            ) => namespace == ns && name == n,
            (
                Subject::Namespace(namespace),
                Identity::ServiceAccount { namespace: ns, .. }
                | Identity::NodeProxy { namespace: ns, .. },
            ) => namespace == ns,
            (Subject::Group(group), Identity::ServiceAccount { groups, .. }) => {
                groups.iter().any(|g| g == group)
            }
            (Subject::NodeProxy, Identity::NodeProxy { .. }) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(name) => write!(f, "user:{name}"),
            Subject::ServiceAccount { namespace, name } => {
                write!(f, "serviceaccount:{namespace}/{name}")
            }
            Subject::Group(group) => write!(f, "group:{group}"),
            Subject::Namespace(namespace) => write!(f, "namespace:{namespace}"),
            Subject::NodeProxy => f.write_str("node-proxy"),
            Subject::Anonymous => f.write_str("anonymous"),
            Subject::Authenticated => f.write_str("authenticated"),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessSpec {
    #[serde(default)]
    anonymous: Anonymous,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    rules: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessRuleSpec {
    name: String,
    repositories: Vec<String>,
    subjects: Vec<String>,
    actions: Vec<Action>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ImmutableSpec {
    #[serde(default)]
    name: Option<String>,
    repositories: Vec<String>,
    tags: Vec<String>,
}

#[derive(Debug, Clone)]
struct AccessRule {
    name: String,
    repositories: Vec<Pattern>,
    subjects: Vec<Subject>,
    actions: Vec<Action>,
}

/// The compiled access section of a policy. The default (no `access:` section, or the built-in default policy):
/// anonymous clients get nothing, no admins, no rules, the built-ins.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    anonymous: Anonymous,
    admins: Vec<Subject>,
    rules: Vec<AccessRule>,
}

fn parse_subjects(
    subjects: &[String],
    context: &str,
    field: &'static str,
) -> Result<Vec<Subject>, AccessError> {
    subjects
        .iter()
        .enumerate()
        .map(|(index, s)| {
            Subject::parse(s).map_err(|source| AccessError::Subject {
                context: context.to_owned(),
                field,
                index,
                source,
            })
        })
        .collect()
}

fn non_empty<T>(
    list: &[T],
    context: &str,
    field: &'static str,
    what: &'static str,
) -> Result<(), AccessError> {
    if list.is_empty() {
        return Err(AccessError::Empty {
            context: context.to_owned(),
            field,
            what,
        });
    }
    Ok(())
}

/// Reads one entry (or section) into its spec.
fn entry<T: serde::de::DeserializeOwned>(value: &Value, context: &str) -> Result<T, AccessError> {
    serde_yaml_ng::from_value(value.clone()).map_err(|e| AccessError::Entry {
        context: context.to_owned(),
        why: e.to_string(),
    })
}

/// The reasons of the built-in grants, as decisions name them.
pub const OWN_NAMESPACE: &str = "built-in: a ServiceAccount's own namespace";
pub const PROXY_CACHE: &str = "built-in: every authenticated identity may pull proxy/…";
pub const NODE_PROXY: &str = "built-in: the node proxy may pull everything";
pub const ANONYMOUS_PULL: &str = "anonymous: pull";
pub const NO_RULE: &str = "no rule allows it";

impl AccessPolicy {
    /// Compiles the `access:` section (a YAML mapping).
    pub fn compile(value: &Value) -> Result<AccessPolicy, AccessError> {
        let spec: AccessSpec = entry(value, "access")?;
        let admins = parse_subjects(&spec.admins, "access", "admins")?;
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (index, value) in spec.rules.iter().enumerate() {
            let context = format!("access.{}", entry_context("rules", index, value));
            let rule: AccessRuleSpec = entry(value, &context)?;
            non_empty(
                &rule.repositories,
                &context,
                "repositories",
                "a rule needs at least one pattern",
            )?;
            non_empty(
                &rule.subjects,
                &context,
                "subjects",
                "a rule needs at least one subject",
            )?;
            rules.push(AccessRule {
                repositories: compile_all(&rule.repositories, &context, "repositories")?,
                subjects: parse_subjects(&rule.subjects, &context, "subjects")?,
                name: rule.name,
                actions: rule.actions,
            });
        }
        unique(rules.iter().map(|r| r.name.clone()), "access.rules")?;
        Ok(AccessPolicy {
            anonymous: spec.anonymous,
            admins,
            rules,
        })
    }

    /// Whether an anonymous client may pull what no rule decides otherwise (`anonymous: pull`).
    pub fn anonymous_pull(&self) -> bool {
        self.anonymous == Anonymous::Pull
    }

    /// Whether `identity` is one of the admins (who may do everything, the catalog included).
    pub fn is_admin(&self, identity: &Identity) -> bool {
        self.admins.iter().any(|s| s.matches(identity))
    }

    /// The names of the rules, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// A one-line summary for `/readyz` and `berth policy check`.
    pub fn summary(&self) -> String {
        format!(
            "anonymous {}, {} admins, {} access rules",
            match self.anonymous {
                Anonymous::None => "none",
                Anonymous::Pull => "pull",
            },
            self.admins.len(),
            self.rules.len()
        )
    }

    /// The decision for `identity` doing `action` on `repository`: the admins (everything), then the first rule
    /// whose repository pattern and subject match (it allows what it lists and denies the rest), then the
    /// built-ins (a ServiceAccount pulls and pushes `<its namespace>/…`, every authenticated identity pulls
    /// `proxy/…`, the node proxy pulls everything), then `anonymous: pull`; otherwise denied.
    pub fn decide(&self, identity: &Identity, action: Action, repository: &str) -> AccessDecision {
        let decision = |allowed: bool, reason: String| AccessDecision { allowed, reason };
        if self.is_admin(identity) {
            return decision(true, "admins".into());
        }
        if let Some(rule) = self.rules.iter().find(|rule| {
            rule.repositories.iter().any(|p| p.matches(repository))
                && rule.subjects.iter().any(|s| s.matches(identity))
        }) {
            return decision(
                rule.actions.contains(&action),
                format!("rule {:?}", rule.name),
            );
        }
        let under = |prefix: &str| {
            repository
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| !rest.is_empty())
        };
        match identity {
            Identity::ServiceAccount { namespace, .. }
                if matches!(action, Action::Pull | Action::Push) && under(namespace) =>
            {
                return decision(true, OWN_NAMESPACE.into());
            }
            Identity::NodeProxy { .. } if action == Action::Pull => {
                return decision(true, NODE_PROXY.into());
            }
            _ => {}
        }
        if identity.is_authenticated() && action == Action::Pull && under("proxy") {
            return decision(true, PROXY_CACHE.into());
        }
        if *identity == Identity::Anonymous && action == Action::Pull && self.anonymous_pull() {
            return decision(true, ANONYMOUS_PULL.into());
        }
        decision(false, NO_RULE.into())
    }
}

#[derive(Debug, Clone)]
struct ImmutableRule {
    /// The rule's name, or `immutableTags[i]` when it has none.
    name: String,
    repositories: Vec<Pattern>,
    tags: Vec<Pattern>,
}

/// The compiled `immutableTags:` section: which tags, once set, may not move nor be deleted.
#[derive(Debug, Clone, Default)]
pub struct ImmutableTags {
    rules: Vec<ImmutableRule>,
}

impl ImmutableTags {
    /// Compiles the `immutableTags:` list.
    pub fn compile(values: &[Value]) -> Result<ImmutableTags, AccessError> {
        let mut rules = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let context = entry_context("immutableTags", index, value);
            let spec: ImmutableSpec = entry(value, &context)?;
            non_empty(
                &spec.repositories,
                &context,
                "repositories",
                "an entry needs at least one pattern",
            )?;
            non_empty(
                &spec.tags,
                &context,
                "tags",
                "an entry needs at least one pattern",
            )?;
            rules.push(ImmutableRule {
                repositories: compile_all(&spec.repositories, &context, "repositories")?,
                tags: compile_all(&spec.tags, &context, "tags")?,
                name: spec
                    .name
                    .unwrap_or_else(|| format!("immutableTags[{index}]")),
            });
        }
        unique(rules.iter().map(|r| r.name.clone()), "immutableTags")?;
        Ok(ImmutableTags { rules })
    }

    /// The name of the first rule that makes `repository:tag` immutable.
    pub fn rule_for(&self, repository: &str, tag: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| {
                r.repositories.iter().any(|p| p.matches(repository))
                    && r.tags.iter().any(|p| p.matches(tag))
            })
            .map(|r| r.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCESS: &str = r#"
anonymous: pull
admins: ['user:ops', 'group:system:masters']
rules:
  - name: ci-pushes-team-a
    repositories: ['team-a/.*']
    subjects: ['serviceaccount:team-a/ci', 'user:alice', 'group:devs', 'namespace:tools']
    actions: [pull, push]
  - name: team-a-readers
    repositories: ['team-a/.*']
    subjects: ['authenticated']
    actions: [pull]
  - name: secret-is-closed
    repositories: ['secret/.*']
    subjects: ['anonymous', 'authenticated']
    actions: []
  - name: nodes-may-not-pull-vault
    repositories: ['vault']
    subjects: ['node-proxy']
    actions: []
"#;

    fn policy(yaml: &str) -> AccessPolicy {
        AccessPolicy::compile(&serde_yaml_ng::from_str(yaml).expect("yaml")).expect("valid")
    }

    fn sa(namespace: &str, name: &str, groups: &[&str]) -> Identity {
        Identity::ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn user(name: &str) -> Identity {
        Identity::User { name: name.into() }
    }

    fn node_proxy() -> Identity {
        Identity::NodeProxy {
            namespace: "berth-system".into(),
            name: "berth-node-proxy".into(),
            node: Some("node-1".into()),
        }
    }

    #[track_caller]
    fn check(
        policy: &AccessPolicy,
        identity: &Identity,
        action: Action,
        repository: &str,
        expected: (bool, &str),
    ) {
        let decision = policy.decide(identity, action, repository);
        assert_eq!(
            (decision.allowed, decision.reason.as_str()),
            expected,
            "{identity} {action} {repository}"
        );
    }

    #[test]
    fn the_whole_order() {
        use Action::*;
        let p = policy(ACCESS);
        let rule = |name: &str| format!("rule {name:?}");
        let ci = rule("ci-pushes-team-a");
        let readers = rule("team-a-readers");
        let closed = rule("secret-is-closed");
        let cases: Vec<(Identity, Action, &str, bool, String)> = vec![
            // Admins: everything, before any rule.
            (user("ops"), Delete, "secret/x", true, "admins".into()),
            (
                sa("x", "y", &["system:masters"]),
                Delete,
                "team-a/app",
                true,
                "admins".into(),
            ),
            // The first matching rule decides, allowing what it lists.
            (
                sa("team-a", "ci", &[]),
                Push,
                "team-a/app",
                true,
                ci.clone(),
            ),
            (
                sa("team-a", "ci", &[]),
                Delete,
                "team-a/app",
                false,
                ci.clone(),
            ),
            (user("alice"), Push, "team-a/app", true, ci.clone()),
            (
                sa("b", "c", &["devs"]),
                Push,
                "team-a/app",
                true,
                ci.clone(),
            ),
            (
                sa("tools", "any", &[]),
                Push,
                "team-a/app",
                true,
                ci.clone(),
            ),
            // Not a subject of the first rule: the second one decides (pull only).
            (user("bob"), Pull, "team-a/app", true, readers.clone()),
            (user("bob"), Push, "team-a/app", false, readers.clone()),
            (
                sa("team-b", "default", &[]),
                Push,
                "team-a/app",
                false,
                readers.clone(),
            ),
            // Anchored: team-a-x/app is not team-a/….
            (user("alice"), Push, "team-a-x/app", false, NO_RULE.into()),
            // A rule that lists no action closes the repository, before the built-ins and anonymous pull.
            (
                sa("secret", "app", &[]),
                Pull,
                "secret/app",
                false,
                closed.clone(),
            ),
            (
                Identity::Anonymous,
                Pull,
                "secret/app",
                false,
                closed.clone(),
            ),
            (
                node_proxy(),
                Pull,
                "vault",
                false,
                rule("nodes-may-not-pull-vault"),
            ),
            // Built-in: a ServiceAccount's own namespace, pull and push, not delete.
            (
                sa("team-b", "app", &[]),
                Push,
                "team-b/app",
                true,
                OWN_NAMESPACE.into(),
            ),
            (
                sa("team-b", "app", &[]),
                Pull,
                "team-b/deep/app",
                true,
                OWN_NAMESPACE.into(),
            ),
            (
                sa("team-b", "app", &[]),
                Delete,
                "team-b/app",
                false,
                NO_RULE.into(),
            ),
            (
                sa("team-b", "app", &[]),
                Push,
                "team-b",
                false,
                NO_RULE.into(),
            ),
            (
                sa("team-b", "app", &[]),
                Push,
                "team-bb/app",
                false,
                NO_RULE.into(),
            ),
            (
                sa("team-b", "app", &[]),
                Push,
                "team-c/app",
                false,
                NO_RULE.into(),
            ),
            // Built-in: the pull-through cache for every authenticated identity, pull only.
            (
                user("bob"),
                Pull,
                "proxy/docker.io/library/nginx",
                true,
                PROXY_CACHE.into(),
            ),
            (
                sa("team-b", "app", &[]),
                Pull,
                "proxy/docker.io/x",
                true,
                PROXY_CACHE.into(),
            ),
            (
                user("bob"),
                Push,
                "proxy/docker.io/x",
                false,
                NO_RULE.into(),
            ),
            // Built-in: the node proxy pulls everything, and pushes nothing.
            (node_proxy(), Pull, "team-c/app", true, NODE_PROXY.into()),
            (
                node_proxy(),
                Push,
                "berth-system/app",
                false,
                NO_RULE.into(),
            ),
            // anonymous: pull lets an anonymous client pull, nothing more; not an authenticated one.
            (
                Identity::Anonymous,
                Pull,
                "team-c/app",
                true,
                ANONYMOUS_PULL.into(),
            ),
            (
                Identity::Anonymous,
                Push,
                "team-c/app",
                false,
                NO_RULE.into(),
            ),
            (user("bob"), Pull, "team-c/app", false, NO_RULE.into()),
            // An anonymous client is nobody's rule subject unless named.
            (
                Identity::Anonymous,
                Pull,
                "team-a/app",
                true,
                ANONYMOUS_PULL.into(),
            ),
        ];
        for (identity, action, repository, allowed, reason) in &cases {
            check(&p, identity, *action, repository, (*allowed, reason));
        }
    }

    #[test]
    fn the_default_is_the_built_ins_only() {
        let p = AccessPolicy::default();
        assert!(!p.anonymous_pull());
        check(
            &p,
            &Identity::Anonymous,
            Action::Pull,
            "team-a/app",
            (false, NO_RULE),
        );
        check(
            &p,
            &Identity::Anonymous,
            Action::Pull,
            "proxy/docker.io/x",
            (false, NO_RULE),
        );
        check(
            &p,
            &user("alice"),
            Action::Push,
            "team-a/app",
            (false, NO_RULE),
        );
        check(
            &p,
            &sa("team-a", "ci", &[]),
            Action::Push,
            "team-a/app",
            (true, OWN_NAMESPACE),
        );
        check(
            &p,
            &node_proxy(),
            Action::Pull,
            "team-a/app",
            (true, NODE_PROXY),
        );
        assert_eq!(p.summary(), "anonymous none, 0 admins, 0 access rules");
        assert_eq!(
            policy(ACCESS).summary(),
            "anonymous pull, 2 admins, 4 access rules"
        );
    }

    #[test]
    fn subjects_parse_strictly() {
        let ok: &[(&str, Subject)] = &[
            ("user:alice", Subject::User("alice".into())),
            ("user:a@b.example", Subject::User("a@b.example".into())),
            (
                "group:system:serviceaccounts:team-a",
                Subject::Group("system:serviceaccounts:team-a".into()),
            ),
            ("namespace:team-a", Subject::Namespace("team-a".into())),
            (
                "serviceaccount:team-a/ci.bot",
                Subject::ServiceAccount {
                    namespace: "team-a".into(),
                    name: "ci.bot".into(),
                },
            ),
            ("node-proxy", Subject::NodeProxy),
            ("anonymous", Subject::Anonymous),
            ("authenticated", Subject::Authenticated),
        ];
        for (text, subject) in ok {
            assert_eq!(Subject::parse(text).as_ref(), Ok(subject), "{text}");
            assert_eq!(subject.to_string(), *text);
        }
        for bad in [
            "",
            "alice",
            "users:alice",
            "user:",
            "user:a b",
            "group:",
            "namespace:Team-A",
            "namespace:a/b",
            "serviceaccount:team-a",
            "serviceaccount:/ci",
            "serviceaccount:team-a/",
            "serviceaccount:a/b/c",
            "serviceaccount:Team/ci",
            "Anonymous",
            "node-proxy:node-1",
        ] {
            let error = Subject::parse(bad).expect_err(bad).to_string();
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }

    #[test]
    fn errors_name_the_section_entry_field_and_value() {
        let cases: &[(&str, &[&str])] = &[
            ("anonymous: push", &["access", "push"]),
            ("admins: ['user:ok', 'usr:x']", &["access", "admins[1]", "\"usr:x\""]),
            ("rules: [{name: r, repositories: ['('], subjects: [anonymous], actions: [pull]}]", &["access.rules[0] \"r\"", "repositories[0]", "\"(\""]),
            ("rules: [{name: r, repositories: [x], subjects: ['serviceaccount:a'], actions: [pull]}]", &["\"r\"", "subjects[0]", "\"serviceaccount:a\""]),
            ("rules: [{name: r, repositories: [x], subjects: [anonymous], actions: [pul]}]", &["\"r\"", "pul"]),
            ("rules: [{name: r, repositories: [], subjects: [anonymous], actions: [pull]}]", &["\"r\"", "repositories is empty"]),
            ("rules: [{name: r, repositories: [x], subjects: [], actions: [pull]}]", &["\"r\"", "subjects is empty"]),
            ("rules: [{repositories: [x], subjects: [anonymous], actions: [pull]}]", &["access.rules[0]", "name"]),
            ("rules: [{name: r, repository: [x], subjects: [anonymous], actions: [pull]}]", &["\"r\"", "repository"]),
            ("rules: [{name: a, repositories: [x], subjects: [anonymous], actions: []}, {name: a, repositories: [y], subjects: [anonymous], actions: []}]", &["access.rules", "\"a\"", "twice"]),
            ("admin: []", &["access", "admin"]),
        ];
        for (yaml, needles) in cases {
            let value: Value = serde_yaml_ng::from_str(yaml).expect("yaml");
            let error = AccessPolicy::compile(&value).expect_err(yaml).to_string();
            for needle in *needles {
                assert!(error.contains(needle), "{yaml}: {error:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn immutable_tags() {
        let value: Vec<Value> = serde_yaml_ng::from_str(
            r#"
- name: releases
  repositories: ['team-a/.*', 'base']
  tags: ['v?[0-9]+\.[0-9]+\.[0-9]+.*']
- repositories: ['.*']
  tags: ['stable']
"#,
        )
        .expect("yaml");
        let tags = ImmutableTags::compile(&value).expect("valid");
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("team-a/app", "v1.2.3", Some("releases")),
            ("team-a/app", "1.2.3-rc1", Some("releases")),
            ("base", "1.0.0", Some("releases")),
            ("team-a/app", "latest", None),
            ("team-a/app", "v1.2", None),
            ("team-b/app", "v1.2.3", None),
            ("xbase", "1.0.0", None),
            ("team-b/app", "stable", Some("immutableTags[1]")),
            ("team-b/app", "stable2", None),
        ];
        for (repository, tag, rule) in cases {
            assert_eq!(tags.rule_for(repository, tag), *rule, "{repository}:{tag}");
        }
        let errors: &[(&str, &[&str])] = &[
            ("[{repositories: ['('], tags: [x]}]", &["immutableTags[0]", "repositories[0]", "\"(\""]),
            ("[{name: n, repositories: [x], tags: [x, '[']}]", &["immutableTags[0] \"n\"", "tags[1]", "\"[\""]),
            ("[{name: n, repositories: [x], tags: []}]", &["\"n\"", "tags is empty"]),
            ("[{name: n, repositories: [x]}]", &["\"n\"", "tags"]),
            ("[{name: n, repositories: [x], tags: [y], tag: [z]}]", &["\"n\"", "tag"]),
            ("[{name: n, repositories: [x], tags: [y]}, {name: n, repositories: [x], tags: [y]}]", &["immutableTags", "\"n\"", "twice"]),
        ];
        for (yaml, needles) in errors {
            let value: Vec<Value> = serde_yaml_ng::from_str(yaml).expect("yaml");
            let error = ImmutableTags::compile(&value).expect_err(yaml).to_string();
            for needle in *needles {
                assert!(error.contains(needle), "{yaml}: {error:?} lacks {needle:?}");
            }
        }
    }
}
