//! The access rules of the policy document (`access:` and `immutableTags:`): spec → compiled → decisions. Pure: no
//! I/O, no HTTP. (Placeholder interface; the rules land with issue 11.)

use super::{Action, Identity};

/// The decision on one identity, action and repository, with what decided it (for the 403 message, the token's
/// log line and `berth policy eval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDecision {
    pub allowed: bool,
    /// What decided: `rule "ci-pushes-team-a"`, `admins`, `built-in: own namespace`, `anonymous: pull`, `no rule
    /// allows it`, …
    pub reason: String,
}

/// The compiled access section of a policy.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {}

impl AccessPolicy {
    /// The decision for `identity` doing `action` on `repository`.
    pub fn decide(&self, identity: &Identity, action: Action, repository: &str) -> AccessDecision {
        let _ = (identity, action, repository);
        AccessDecision {
            allowed: true,
            reason: "access rules are not implemented yet".into(),
        }
    }
}
