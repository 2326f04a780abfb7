//! The event log: one structured event per operation — pushes, pulls, deletes, tag moves, mounts, rejected
//! uploads, auth failures, proxy fetches, admission decisions — with who did it, from where, and how it ended.
//!
//! - [`model`]: the event (pure data and its JSON shape);
//! - [`store`]: the store's trait ([`EventStore`]), so a server database can later serve several replicas;
//! - [`sqlite`]: the embedded store (SQLite in WAL mode in the data directory);
//! - [`registry`]: building the registry's events from what a handler did and who asked (pure);
//! - [`log`]: [`EventLog`], what handlers record into: a bounded queue and one writer committing in batches, and
//!   the durable record a push answers after.
//!
//! Operations are recorded where they are decided, once: the registry's in the front door ([`crate::v2`]), the
//! admission decisions in the webhook handlers. Must not: be read or written on a request path other than through
//! [`EventLog::record`] / [`EventLog::record_durable`] (readers use the store from blocking tasks).

pub mod log;
pub mod model;
pub mod registry;
pub mod sqlite;
pub mod store;

pub use log::{EventLog, EventLogError};
pub use model::{Actor, ActorKind, Event, EventAction};
pub use store::{EventQuery, EventStore, Retention, StoreError, StoredEvent};

use std::path::Path;
use std::sync::Arc;

use crate::clock::SharedClock;

/// Opens the embedded store in `data_dir` and starts the log's writer over it.
pub fn open_in(
    data_dir: &Path,
    instance: &str,
    clock: SharedClock,
) -> Result<EventLog, StoreError> {
    let store = sqlite::SqliteStore::open(&sqlite::SqliteStore::path_in(data_dir))?;
    Ok(EventLog::start(Arc::new(store), instance, clock))
}
