//! What an HTTP request presents to the authenticator, and the verified caller with what decides for it: the one
//! place both the registry's front door ([`crate::v2`]) and berth's own API (`/berth/v1`, [`crate::events`]) turn a
//! request into an identity and a decision, so the two cannot drift apart.
//!
//! Must not: build responses (each caller answers in its own error format) or decide anything itself (the access
//! rules and a token's grants do).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest};

use super::authenticator::{Authenticated, Presented, NODE_NAME_HEADER};
use super::{scope, Action};
use crate::admission::source::{ActivePolicy, PolicyStore};

/// What `req` presents: its `Authorization` header, the node proxy's node name and the client's address.
pub fn presented(req: &HttpRequest) -> Presented<'_> {
    let headers = req.headers();
    Presented {
        authorization: headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        node_name: headers.get(NODE_NAME_HEADER).and_then(|v| v.to_str().ok()),
        client: req.peer_addr().map(|a| a.ip()),
        credentials: None,
    }
}

/// The policy in force, when a policy store is mounted.
pub fn policy(req: &HttpRequest) -> Option<Arc<ActivePolicy>> {
    req.app_data::<web::Data<PolicyStore>>()
        .map(|store| store.current())
}

/// The verified identity of a request, with what decides for it.
pub struct Caller {
    pub authenticated: Authenticated,
    pub policy: Arc<ActivePolicy>,
}

impl Caller {
    /// Whether this identity may do `action` on `repository`: what its berth token grants, or else the rules.
    pub fn may(&self, action: Action, repository: &str) -> bool {
        match &self.authenticated.grants {
            Some(grants) => scope::permits(grants, repository, action),
            None => self.rules_allow(action, repository),
        }
    }

    /// Whether the access rules let this identity do `action` on `repository`, whatever a token grants.
    pub fn rules_allow(&self, action: Action, repository: &str) -> bool {
        self.policy
            .policy
            .access()
            .decide(&self.authenticated.identity, action, repository)
            .allowed
    }

    /// Whether the rules make this identity an admin.
    pub fn is_admin(&self) -> bool {
        self.policy
            .policy
            .access()
            .is_admin(&self.authenticated.identity)
    }
}
