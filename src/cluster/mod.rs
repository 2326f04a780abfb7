//! Running inside Kubernetes: webhook certificates that berth manages itself (a Secret, the webhooks' caBundle),
//! and the pod watch (what runs where: [`pods`] fills [`running::RunningImages`]). Talks to the API server through
//! kube; nothing here is on a request path.

pub mod pods;
pub mod running;
pub mod webhook_certs;

pub use webhook_certs::WebhookCerts;
