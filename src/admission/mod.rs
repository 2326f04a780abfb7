//! Admission webhooks on the registry's listener: `/validate` allows or denies pods and workloads by the image
//! policy; `/mutate` rewrites pod images to berth. Only `routes.rs` knows actix-web; reference parsing
//! (`image.rs`), policy evaluation (`policy.rs`), the review's envelope (`review.rs`), the pods in it (`pod.rs`),
//! berth's own names (`scope.rs`), the two decisions (`validate.rs`, `rewrite.rs`: pod → JSON patch) and the event
//! each answer is recorded as (`event.rs`) are pure.

pub mod debug;
pub mod event;
pub mod image;
pub mod pattern;
pub mod pod;
pub mod policy;
pub mod review;
pub mod rewrite;
pub mod routes;
pub mod scope;
pub mod source;
#[cfg(test)]
mod testing;
pub mod validate;

pub use routes::{configure, AdmissionSettings};
pub use source::PolicyStore;
