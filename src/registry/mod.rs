//! The OCI Distribution API's local side: handlers (the only parts that know actix-web; [`crate::v2`] routes
//! requests to them), the registry service (semantics and verification), validated names, manifest parsing, and
//! storage behind a trait. Must not know routes or the proxy: which handler serves a request is the front door's
//! decision.

pub mod blobs;
pub mod error;
pub mod hashing;
pub mod listings;
pub mod manifest;
pub mod manifests;
pub mod names;
pub mod ranges;
pub mod referrers;
pub mod response;
pub mod service;
pub mod storage;
pub mod uploads;

pub use error::{ErrorCode, RegistryError};
pub use service::Registry;
