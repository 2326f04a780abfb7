//! Admission webhooks on the registry's listener: `/validate` allows or denies pods and workloads by the image
//! policy; `/mutate` rewrites pod images to berth. Only `routes.rs` knows actix-web; reference parsing
//! (`image.rs`), policy evaluation (`policy.rs`) and review/patch building (`review.rs`) are pure.

pub mod debug;
pub mod image;
pub mod policy;
pub mod review;
pub mod routes;
pub mod source;

pub use routes::{configure, AdmissionSettings};
pub use source::PolicyStore;
