//! berth: an OCI registry that runs inside a Kubernetes cluster and guards it.
//!
//! One actix-web server on one listener serves the OCI Distribution API under `/v2/`, the admission webhooks
//! `/validate` and `/mutate` ([`admission`]) and health endpoints ([`health`]). Every `/v2` request enters through
//! one front door, [`v2`]: it parses the route, decides whether the repository is local ([`registry`], the only
//! writer of content) or proxied ([`proxy`], the pull-through cache of upstream registries), refuses writes under
//! `proxy/`, and calls that side's handlers. [`config`] turns flags and a YAML file into a validated
//! [`config::Config`]; [`tls`] generates, loads and reloads certificates; [`server`] builds the shared state once
//! ([`server::AppState`]) and serves it. [`cluster`] manages the webhook certificates in a cluster, and
//! [`node_proxy`] is the node-local pull endpoint (`berth node-proxy`). [`configure`] is the one route table,
//! mounted by [`server::AppState::configure`] for the binary and for the in-process tests alike.

pub mod admission;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod events;
pub mod health;
pub mod limits;
pub mod node_proxy;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod tls;
pub mod units;
pub mod v2;

use actix_web::web;

/// Mounts every subsystem's routes (berth's own read API, `/berth/v1`, from [`events::routes`]). The caller
/// provides `web::Data` of `registry::Registry`, `proxy::Proxy`, `admission::PolicyStore`,
/// `admission::AdmissionSettings`, `auth::Authenticator`, `events::EventLog`, `events::Metrics` and
/// `cluster::running::RunningImages`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    events::metrics::configure(cfg);
    auth::routes::configure(cfg);
    admission::configure(cfg);
    v2::configure(cfg);
    events::routes::configure(cfg);
}
