//! The OCI Distribution API (`/v2/…`): routes and handlers (the only parts that know actix-web), the registry
//! service (semantics and verification), validated names, manifest parsing, and storage behind a trait.

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
pub mod routes;
pub mod service;
pub mod storage;
pub mod uploads;

pub use error::{ErrorCode, RegistryError};
pub use routes::configure;
pub use service::Registry;
