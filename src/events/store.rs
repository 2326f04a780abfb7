//! The event store's contract: a small trait ([`EventStore`]) so that the embedded SQLite store
//! ([`super::sqlite`]) can later be joined by a server database shared by several replicas. Every method blocks
//! (a database call); async callers run it with `spawn_blocking`. Events get a sequence number in commit order:
//! the cursor of readers that follow the log (the SSE stream, notifications), which, unlike the event id, never
//! lets an event committed late slip behind a cursor.
//!
//! Must not: know HTTP, the registry, or how events are made.

use std::time::SystemTime;

use super::model::{Event, EventAction};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed (full disk, corrupt file, locked too long).
    #[error("event store: {0}")]
    Database(String),
    /// A stored event could not be read back.
    #[error("event store: stored event {seq} unreadable: {why}")]
    Unreadable { seq: u64, why: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An event as stored: its place in commit order and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub event: Event,
}

/// Which events a reader wants. Empty filters match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Any of these actions (none: all).
    pub actions: Vec<EventAction>,
    /// Repositories starting with this (`team-a/` for a namespace's, `team-a/app` for one and those below it).
    pub repository_prefix: Option<String>,
    /// The actor's subject exactly (`serviceaccount:team-a/ci`), or, ending in `*`, a prefix of it
    /// (`serviceaccount:team-a/*`).
    pub actor: Option<String>,
    /// The namespace the event is about ([`Event::namespace`]).
    pub namespace: Option<String>,
    /// At or after this time (milliseconds since the epoch).
    pub since_millis: Option<i64>,
    /// Before this time.
    pub until_millis: Option<i64>,
    /// Only events committed after this sequence number (the cursor of the page before).
    pub after_seq: Option<u64>,
    /// Only events committed before this sequence number (to read up to an event that cannot be read back).
    pub before_seq: Option<u64>,
    /// At most this many, oldest first.
    pub limit: usize,
}

/// The pulls of one manifest of one repository (the images report's numbers), from the `pull` events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullStats {
    pub repository: String,
    /// The manifest pulled (by tag or by digest: a pull event names the digest it sent).
    pub digest: String,
    pub total: u64,
    /// Pulls at or after the `day_since` given to [`EventStore::pull_stats`] (to the minute: the store may count
    /// those of the minute it falls in).
    pub last_day: u64,
    /// Pulls at or after its `week_since`.
    pub last_week: u64,
    /// The last pull's time (milliseconds since the epoch) and actor ([`super::Actor::subject`]).
    pub last_millis: i64,
    pub last_actor: String,
    /// Distinct actors that pulled it.
    pub pullers: u64,
    /// The nodes whose node proxy pulled it, sorted.
    pub nodes: Vec<String>,
}

/// The last push of one digest to one tag of one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushRecord {
    pub repository: String,
    pub tag: String,
    /// The digest the push stored under the tag.
    pub digest: Option<String>,
    pub millis: i64,
    pub actor: String,
}

/// How much the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this are deleted.
    pub max_age: std::time::Duration,
    /// When the events take more than this many bytes, the oldest are deleted until they fit.
    pub max_bytes: u64,
}

/// What a prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub by_age: u64,
    pub by_size: u64,
}

/// Where events are kept.
pub trait EventStore: Send + Sync + 'static {
    /// Stores `events` in one transaction, durably when it returns, in order, each with the next sequence number.
    /// Returns the last sequence number given (that of the last event).
    fn append(&self, events: &[Event]) -> Result<u64>;

    /// Events matching `query`, oldest first (by sequence number).
    fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>>;

    /// The sequence number of the last event committed (0 for an empty store).
    fn last_seq(&self) -> Result<u64>;

    /// Deletes what `retention` no longer keeps, as of `now`.
    fn prune(&self, retention: &Retention, now: SystemTime) -> Result<Pruned>;

    /// A reader's saved position (a notification endpoint's), 0 when it has none.
    fn cursor(&self, name: &str) -> Result<u64>;

    /// Saves a reader's position.
    fn set_cursor(&self, name: &str, seq: u64) -> Result<()>;

    /// A reader's saved position, `None` when it never saved one (a new notification endpoint). The default
    /// takes 0 for never saved; a store that can tell them apart says so.
    fn saved_cursor(&self, name: &str) -> Result<Option<u64>> {
        self.cursor(name).map(|seq| (seq > 0).then_some(seq))
    }

    /// Bytes the events take.
    fn size(&self) -> Result<u64>;

    /// The pull counts of every manifest of `repositories` that was pulled, with `day_since` and `week_since`
    /// (milliseconds since the epoch) splitting off the recent ones. Grouped in the store: the cost is that of
    /// the pulls of these repositories, never of the whole log.
    fn pull_stats(
        &self,
        repositories: &[String],
        day_since: i64,
        week_since: i64,
    ) -> Result<Vec<PullStats>>;

    /// The last push of each digest to each tag of `repositories` (pushes by digest alone name no tag and are
    /// left out).
    fn last_pushes(&self, repositories: &[String]) -> Result<Vec<PushRecord>>;
}
