//! The event store when its database could not be opened at start (a corrupt file, an unwritable or full volume):
//! berth starts anyway — a broken event log must never stop pulls or admission — and every use tries to open the
//! database again, at most once every [`RETRY_EVERY`]. Until it opens, every call fails with the reason, which the
//! log reports in `/readyz`, the metrics and the log (and a push, whose event must be stored, is answered 503).
//!
//! Must not: hide the failure (every call while broken is an error), or retry on every call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::sqlite::SqliteStore;
use super::store::{
    EventQuery, EventStore, Pruned, PullStats, PushRecord, Result, Retention, StoreError,
    StoredEvent,
};

/// How often a broken database is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(10);

/// A SQLite store opened on first success.
pub struct Reopening {
    path: PathBuf,
    retry_every: Duration,
    state: Mutex<State>,
}

enum State {
    Open(Arc<SqliteStore>),
    Broken {
        error: StoreError,
        next_try: Instant,
    },
}

impl Reopening {
    /// A store over `path` that failed to open with `error`; tried again `retry_every` from now, and so on.
    pub fn broken(path: PathBuf, error: &StoreError, retry_every: Duration) -> Reopening {
        Reopening {
            path,
            retry_every,
            state: Mutex::new(State::Broken {
                error: error.clone(),
                next_try: Instant::now() + retry_every,
            }),
        }
    }

    /// The open store, opening it if it is time to try again.
    fn store(&self) -> Result<Arc<SqliteStore>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*state {
            State::Open(store) => Ok(store.clone()),
            State::Broken { error, next_try } if Instant::now() < *next_try => Err(error.clone()),
            State::Broken { .. } => match SqliteStore::open(&self.path) {
                Ok(store) => {
                    log::info!("event log: {} opened", self.path.display());
                    let store = Arc::new(store);
                    *state = State::Open(store.clone());
                    Ok(store)
                }
                Err(e) => {
                    *state = State::Broken {
                        error: e.clone(),
                        next_try: Instant::now() + self.retry_every,
                    };
                    Err(e)
                }
            },
        }
    }
}

impl EventStore for Reopening {
    fn append(&self, events: &[Event]) -> Result<u64> {
        self.store()?.append(events)
    }
    fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        self.store()?.query(query)
    }
    fn last_seq(&self) -> Result<u64> {
        self.store()?.last_seq()
    }
    fn prune(&self, retention: &Retention, now: SystemTime) -> Result<Pruned> {
        self.store()?.prune(retention, now)
    }
    fn cursor(&self, name: &str) -> Result<u64> {
        self.store()?.cursor(name)
    }
    fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.store()?.set_cursor(name, seq)
    }
    fn saved_cursor(&self, name: &str) -> Result<Option<u64>> {
        self.store()?.saved_cursor(name)
    }
    fn size(&self) -> Result<u64> {
        self.store()?.size()
    }
    fn pull_stats(
        &self,
        repositories: &[String],
        day_since: i64,
        week_since: i64,
    ) -> Result<Vec<PullStats>> {
        self.store()?
            .pull_stats(repositories, day_since, week_since)
    }
    fn last_pushes(&self, repositories: &[String]) -> Result<Vec<PushRecord>> {
        self.store()?.last_pushes(repositories)
    }
}

use super::model::Event;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::{Actor, EventAction};

    #[test]
    fn a_database_that_could_not_be_opened_is_opened_once_it_can_be() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = SqliteStore::path_in(dir.path());
        // A directory where the file should be: SQLite cannot open it.
        std::fs::create_dir_all(&path).expect("block the file");
        let error = SqliteStore::open(&path).expect_err("a directory is no database");
        let store = Reopening::broken(path.clone(), &error, Duration::ZERO);
        let event = Event::new(
            EventAction::Push,
            Actor::anonymous(),
            "test",
            SystemTime::now(),
        );
        assert!(store.append(std::slice::from_ref(&event)).is_err());
        std::fs::remove_dir(&path).expect("unblock");
        assert_eq!(store.append(&[event]).expect("opened now"), 1);
        assert_eq!(store.last_seq().expect("last"), 1);
    }

    #[test]
    fn a_broken_database_is_not_tried_again_before_its_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = SqliteStore::path_in(dir.path());
        let store = Reopening::broken(
            path,
            &StoreError::Database("disk full".into()),
            Duration::from_secs(3600),
        );
        // The file could be opened now, but the next try is an hour away: the old reason is answered.
        let error = store.last_seq().expect_err("not yet");
        assert_eq!(error.to_string(), "event store: disk full");
    }
}
