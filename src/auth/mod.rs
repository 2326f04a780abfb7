//! Who is asking, and may they: identities (anonymous, htpasswd users, Kubernetes ServiceAccounts checked through
//! TokenReview, the node proxy), the credentials that prove them (an `Authorization` header: Basic, a berth token or
//! a ServiceAccount token as Bearer), berth's own short-lived tokens (the distribution token flow), and the access
//! rules of the policy document that turn an identity, an action and a repository into a decision.
//!
//! The front door ([`crate::v2`]) authenticates and authorizes every `/v2` request once, through this module; the
//! token endpoint (`/auth/token`) and `/validate` (pull authorization at admission) use the same decisions. The
//! decisions themselves ([`access`]) are pure: no I/O, no HTTP.
//!
//! Must not: know routes or handlers (the front door maps a route to an [`Action`]), or store content.

pub mod access;
pub mod authenticator;
pub mod credentials;
pub mod htpasswd;
pub mod identity;
pub mod request;
pub mod routes;
pub mod scope;
pub mod throttle;
pub mod token;
pub mod tokenreview;

pub use authenticator::{AuthError, Authenticated, Authenticator, Presented};
pub use identity::{Action, Identity};
pub use scope::{parse_scopes, Grant, RequestedScope};
