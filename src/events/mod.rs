//! The event log: one structured event per operation — pushes, pulls, deletes, tag moves, mounts, rejected
//! uploads, auth failures, proxy fetches, admission decisions — with who did it, from where, and how it ended.
//!
//! - [`model`]: the event (pure data and its JSON shape);
//! - [`store`]: the store's trait ([`EventStore`]), so a server database can later serve several replicas;
//! - [`sqlite`]: the embedded store (SQLite in WAL mode in the data directory);
//! - [`metrics`]: `GET /metrics` ([`metrics::Metrics`]) and the node proxy's ([`metrics::NodeProxyMetrics`]);
//! - [`registry`]: building the registry's events from what a handler did and who asked (pure);
//! - [`log`]: [`EventLog`], what handlers record into: a bounded queue and one writer committing in batches, and
//!   the durable record a push answers after;
//! - [`notify`]: notifications, the log's events POSTed as CloudEvents to configured endpoints;
//! - [`report`]: the images report and what is out of date (pure);
//! - [`routes`]: `/berth/v1`, reading the log and the images report over HTTP;
//! - [`client`]: `berth events` and `berth images`, the command-line readers of that API.
//!
//! Operations are recorded where they are decided, once: the registry's in the front door ([`crate::v2`]), the
//! admission decisions in the webhook handlers. Must not: be read or written on a request path other than through
//! [`EventLog::record`] / [`EventLog::record_durable`] (readers use the store from blocking tasks, as [`routes`] does).

pub mod client;
pub mod log;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod registry;
pub mod reopen;
pub mod report;
pub mod routes;
pub mod sqlite;
pub mod store;

pub use log::{EventLog, EventLogError};
pub use metrics::Metrics;
pub use model::{Actor, ActorKind, Event, EventAction};
pub use store::{
    EventQuery, EventStore, PullStats, PushRecord, Retention, StoreError, StoredEvent,
};

use std::path::Path;
use std::sync::Arc;

use crate::clock::SharedClock;

/// Opens the embedded store in `data_dir` and starts the log's writer over it. A database that cannot be opened
/// does not stop berth: the log starts over a store that tries again every [`reopen::RETRY_EVERY`] and reports
/// the failure until then ([`reopen`]).
pub fn open_in(data_dir: &Path, instance: &str, clock: SharedClock) -> EventLog {
    let path = sqlite::SqliteStore::path_in(data_dir);
    let store: Arc<dyn EventStore> = match sqlite::SqliteStore::open(&path) {
        Ok(store) => Arc::new(store),
        Err(e) => {
            ::log::error!(
                "event log: {e}; berth serves without it and tries again every {:?}",
                reopen::RETRY_EVERY
            );
            Arc::new(reopen::Reopening::broken(path, &e, reopen::RETRY_EVERY))
        }
    };
    EventLog::start(store, instance, clock)
}
