//! The identity behind a request and the actions it may be granted. A leaf: plain data, no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a request does to a repository. `push` covers everything an upload and a manifest PUT do; `delete` is
/// deleting a manifest, a tag or a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    /// Every action, in the order scopes list them.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The action's name in scopes, rules and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// Parses a scope's or rule's action name (exactly `pull`, `push` or `delete`).
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is asking. Built by the authenticator from verified credentials only (never from what a client claims
/// without proof); carried in berth's tokens so a token names the identity it was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Identity {
    /// No credentials.
    Anonymous,
    /// A user of the htpasswd file.
    User { name: String },
    /// A Kubernetes ServiceAccount, as the TokenReview API answered for its token: `system:serviceaccount:<ns>:<name>`
    /// with the groups the API server gave (`system:serviceaccounts`, `system:serviceaccounts:<ns>`, …).
    ServiceAccount {
        namespace: String,
        name: String,
        groups: Vec<String>,
    },
    /// berth's node proxy: its ServiceAccount (the one configured as the node proxy's), and the node it says it runs
    /// on — trusted only because the ServiceAccount is the node proxy's.
    NodeProxy {
        namespace: String,
        name: String,
        node: Option<String>,
    },
}

/// The node proxy's ServiceAccount name in berth's namespace (manifests/base/node-proxy.yaml).
pub const NODE_PROXY_SERVICE_ACCOUNT: &str = "berth-node-proxy";

impl Identity {
    /// A ServiceAccount with the groups the API server gives every ServiceAccount (`system:serviceaccounts`,
    /// `system:serviceaccounts:<ns>`, `system:authenticated`), followed by `extra_groups`: what a pod's
    /// ServiceAccount is when berth decides for it without its token (`/validate`, `berth policy eval`).
    pub fn service_account(namespace: &str, name: &str, extra_groups: &[String]) -> Identity {
        let mut groups = vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_owned(),
        ];
        for group in extra_groups {
            if !groups.contains(group) {
                groups.push(group.clone());
            }
        }
        Identity::ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            groups,
        }
    }

    /// The Kubernetes user name of a ServiceAccount (`system:serviceaccount:<ns>:<name>`), the user's name, or
    /// `anonymous`.
    pub fn username(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".into(),
            Identity::User { name } => name.clone(),
            Identity::ServiceAccount {
                namespace, name, ..
            }
            | Identity::NodeProxy {
                namespace, name, ..
            } => format!("system:serviceaccount:{namespace}:{name}"),
        }
    }

    /// Whether the request had verified credentials.
    pub fn is_authenticated(&self) -> bool {
        !matches!(self, Identity::Anonymous)
    }
}

/// How messages and logs name an identity, in the spelling of the access rules' subjects: `anonymous`,
/// `user:alice`, `serviceaccount:team-a/ci`, `node-proxy:node-1 (serviceaccount:berth-system/berth-node-proxy)`.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::User { name } => write!(f, "user:{name}"),
            Identity::ServiceAccount {
                namespace, name, ..
            } => write!(f, "serviceaccount:{namespace}/{name}"),
            Identity::NodeProxy {
                namespace,
                name,
                node,
            } => write!(
                f,
                "node-proxy:{} (serviceaccount:{namespace}/{name})",
                node.as_deref().unwrap_or("unknown node")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_exactly() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        for bad in ["", "Pull", "pull ", "*", "pull,push"] {
            assert_eq!(Action::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn identities_are_named_as_subjects() {
        let sa = Identity::ServiceAccount {
            namespace: "team-a".into(),
            name: "ci".into(),
            groups: vec![],
        };
        assert_eq!(sa.to_string(), "serviceaccount:team-a/ci");
        assert_eq!(sa.username(), "system:serviceaccount:team-a:ci");
        assert_eq!(
            Identity::User {
                name: "alice".into()
            }
            .to_string(),
            "user:alice"
        );
        assert!(!Identity::Anonymous.is_authenticated());
    }
}
