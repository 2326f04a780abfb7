//! berth: an OCI registry that runs inside a Kubernetes cluster and guards it.
//!
//! One actix-web server on one listener serves the OCI Distribution API under `/v2/` ([`registry`]), the
//! admission webhooks `/validate` and `/mutate` ([`admission`]) and health endpoints ([`health`]). [`config`] turns flags and a
//! YAML file into a validated [`config::Config`]; [`tls`] generates, loads and reloads certificates; [`server`]
//! wires it all together. [`proxy`] is the pull-through cache of upstream registries. [`cluster`] manages the webhook certificates in a cluster, and [`node_proxy`] is the
//! node-local pull endpoint (`berth node-proxy`). [`configure`] is the one route table, used by the binary and by tests.

pub mod admission;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod health;
pub mod limits;
pub mod node_proxy;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod tls;
pub mod units;

use actix_web::web;

/// Mounts every subsystem's routes. The caller provides `web::Data` of `registry::Registry`, `proxy::Proxy`,
/// `admission::PolicyStore` and `admission::AdmissionSettings`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    admission::configure(cfg);
    registry::configure(cfg);
}
