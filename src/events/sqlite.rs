//! The embedded event store: one SQLite file (`<data-dir>/events/events.db`) in WAL mode, `synchronous=FULL` so a
//! committed batch survives a crash of the machine, not only of the process. One connection writes (the log's
//! writer, and the pruner, serialised by a mutex); readers take their own connections from a small pool, so a
//! long query never holds up the writer (WAL lets readers and the writer run at once).
//!
//! Must not: be reached other than through [`EventStore`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};

use super::model::{Event, EventAction};
use super::store::{
    EventQuery, EventStore, Pruned, PullStats, PushRecord, Result, Retention, StoreError,
    StoredEvent,
};

/// The schema this code writes; a store with a newer one is refused rather than misread.
/// 2: the target's digest and tag in their own columns, for the images report's indexes.
const SCHEMA_VERSION: i64 = 2;

/// Read connections kept open for reuse.
const READ_POOL: usize = 4;

/// Rows one prune statement deletes, so that the writer waits at most for one such chunk.
const PRUNE_CHUNK: i64 = 5_000;

/// Repositories one grouped report statement asks about (SQLite allows 32,766 parameters; this keeps each
/// statement's work and its text small).
const REPORT_CHUNK: usize = 100;

/// `?, ?, …` for `n` parameters.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// The actor column's prefix for the node proxy (`node-proxy:node-1`).
const NODE_PROXY_PREFIX: &str = "node-proxy:";

/// How long a statement waits for the other writer (the pruner or the log's writer) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Database(error.to_string())
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// The file events are kept in under a data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("events").join("events.db")
    }

    /// Opens (creating when missing) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("creating {}: {e}", dir.display())))?;
        }
        let writer = Connection::open(path)?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        // Before any table exists, so that pruned pages can be handed back to the file system.
        writer.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!(
                "{}: journal mode {mode}, not wal",
                path.display()
            )));
        }
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL,
                 time_ms INTEGER NOT NULL,
                 action TEXT NOT NULL,
                 actor TEXT NOT NULL,
                 namespace TEXT,
                 repository TEXT,
                 body TEXT NOT NULL,
                 digest TEXT,
                 tag TEXT
             );
             CREATE INDEX IF NOT EXISTS events_time ON events (time_ms);
             CREATE INDEX IF NOT EXISTS events_repository ON events (repository, seq);
             CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);",
        )?;
        let version: Option<i64> = writer
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |row| {
                row.get(0)
            })
            .optional()?;
        match version {
            None => {
                writer.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Database(format!(
                    "{}: schema version {v} is newer than this berth's ({SCHEMA_VERSION})",
                    path.display()
                )))
            }
            Some(v) if v < SCHEMA_VERSION => {
                writer.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'schema'",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(_) => {}
        }
        add_target_columns(&writer)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a read connection (a pooled one, or a new one), returning it to the pool after.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => {
                let connection = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                connection.busy_timeout(BUSY_TIMEOUT)?;
                connection
            }
        };
        let result = f(&connection);
        let mut pool = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.len() < READ_POOL {
            pool.push(connection);
        }
        result
    }
}

/// Schema 2: the `digest` and `tag` columns (filled from the bodies of the events stored before them) and the
/// images report's indexes over them: its grouped pull counts read `events_pulls` alone (it covers them), never
/// the bodies.
fn add_target_columns(writer: &Connection) -> Result<()> {
    let has_digest: bool = writer.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('events') WHERE name = 'digest'",
        [],
        |row| row.get(0),
    )?;
    if !has_digest {
        writer.execute_batch(
            "BEGIN;
             ALTER TABLE events ADD COLUMN digest TEXT;
             ALTER TABLE events ADD COLUMN tag TEXT;
             UPDATE events SET digest = json_extract(body, '$.target.digest'),
                               tag = json_extract(body, '$.target.tag');
             COMMIT;",
        )?;
    }
    writer.execute_batch(
        "CREATE INDEX IF NOT EXISTS events_pulls ON events (repository, digest, time_ms, actor)
             WHERE action = 'pull';
         CREATE INDEX IF NOT EXISTS events_pushes ON events (repository, tag, time_ms)
             WHERE action = 'push';",
    )?;
    Ok(())
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EventStore for SqliteStore {
    fn append(&self, events: &[Event]) -> Result<u64> {
        let mut writer = self.writer();
        let transaction = writer.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO events (id, time_ms, action, actor, namespace, repository, body, digest, tag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for event in events {
                let body = serde_json::to_string(event)
                    .map_err(|e| StoreError::Database(format!("encoding event: {e}")))?;
                insert.execute(params![
                    event.id,
                    event.unix_millis(),
                    event.action.as_str(),
                    event.actor.subject(),
                    event.namespace(),
                    event.target.repository,
                    body,
                    event.target.digest,
                    event.target.tag,
                ])?;
            }
        }
        let last = transaction.last_insert_rowid();
        transaction.commit()?;
        Ok(u64::try_from(last).unwrap_or(0))
    }

    fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        let mut sql = String::from("SELECT seq, body FROM events WHERE 1=1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if !query.actions.is_empty() {
            sql.push_str(" AND action IN (");
            for (i, action) in query.actions.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                values.push(action.as_str().to_owned().into());
            }
            sql.push(')');
        }
        if let Some(prefix) = &query.repository_prefix {
            // A range on the index rather than LIKE, whose wildcards a repository name would have to escape.
            sql.push_str(" AND repository >= ? AND repository < ?");
            values.push(prefix.clone().into());
            values.push(format!("{prefix}\u{10FFFF}").into());
        }
        if let Some(actor) = &query.actor {
            match actor.strip_suffix('*') {
                Some(prefix) => {
                    sql.push_str(" AND substr(actor, 1, ?) = ?");
                    values.push(i64::try_from(prefix.chars().count()).unwrap_or(0).into());
                    values.push(prefix.to_owned().into());
                }
                None => {
                    sql.push_str(" AND actor = ?");
                    values.push(actor.clone().into());
                }
            }
        }
        if let Some(namespace) = &query.namespace {
            sql.push_str(" AND namespace = ?");
            values.push(namespace.clone().into());
        }
        if let Some(since) = query.since_millis {
            sql.push_str(" AND time_ms >= ?");
            values.push(since.into());
        }
        if let Some(until) = query.until_millis {
            sql.push_str(" AND time_ms < ?");
            values.push(until.into());
        }
        if let Some(after) = query.after_seq {
            sql.push_str(" AND seq > ?");
            values.push(i64::try_from(after).unwrap_or(i64::MAX).into());
        }
        if let Some(before) = query.before_seq {
            sql.push_str(" AND seq < ?");
            values.push(i64::try_from(before).unwrap_or(i64::MAX).into());
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        values.push(i64::try_from(query.limit).unwrap_or(i64::MAX).into());
        self.read(|connection| {
            let mut statement = connection.prepare_cached(&sql)?;
            let rows = statement.query_map(params_from_iter(values), |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (seq, body) = row?;
                let seq = u64::try_from(seq).unwrap_or(0);
                let event = serde_json::from_str(&body).map_err(|e| StoreError::Unreadable {
                    seq,
                    why: e.to_string(),
                })?;
                events.push(StoredEvent { seq, event });
            }
            Ok(events)
        })
    }

    fn last_seq(&self) -> Result<u64> {
        self.read(|connection| {
            let seq: Option<i64> =
                connection.query_row("SELECT max(seq) FROM events", [], |row| row.get(0))?;
            Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
        })
    }

    fn prune(&self, retention: &Retention, now: SystemTime) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let cutoff = millis(now.checked_sub(retention.max_age).unwrap_or(UNIX_EPOCH));
        loop {
            let deleted = self.writer().execute(
                "DELETE FROM events WHERE seq IN
                     (SELECT seq FROM events WHERE time_ms < ?1 ORDER BY seq LIMIT ?2)",
                params![cutoff, PRUNE_CHUNK],
            )?;
            pruned.by_age += deleted as u64;
            if (deleted as i64) < PRUNE_CHUNK {
                break;
            }
        }
        // Over the size limit, the oldest of the plentiful events (pulls, refusals, admission answers, fetches) go
        // first, and only when none is left the oldest changes of content: a flood of pulls or forged reviews cannot
        // push the record of who pushed and deleted out of the log.
        let content_changes = EventAction::ALL
            .iter()
            .filter(|action| action.durable())
            .map(|action| format!("'{}'", action.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let plentiful_first = format!(
            "DELETE FROM events WHERE seq IN
                 (SELECT seq FROM events WHERE action NOT IN ({content_changes}) ORDER BY seq LIMIT ?1)"
        );
        let oldest =
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?1)";
        let mut statement = plentiful_first.as_str();
        while self.size()? > retention.max_bytes {
            let deleted = self.writer().execute(statement, [PRUNE_CHUNK])?;
            if deleted == 0 {
                if statement == oldest {
                    break;
                }
                statement = oldest;
                continue;
            }
            pruned.by_size += deleted as u64;
        }
        if pruned.by_age + pruned.by_size > 0 {
            let writer = self.writer();
            writer.execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        Ok(pruned)
    }

    fn cursor(&self, name: &str) -> Result<u64> {
        Ok(self.saved_cursor(name)?.unwrap_or(0))
    }

    fn saved_cursor(&self, name: &str) -> Result<Option<u64>> {
        self.read(|connection| {
            let seq: Option<i64> = connection
                .query_row("SELECT seq FROM cursors WHERE name = ?1", [name], |row| {
                    row.get(0)
                })
                .optional()?;
            Ok(seq.map(|s| u64::try_from(s).unwrap_or(0)))
        })
    }

    fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.writer().execute(
            "INSERT INTO cursors (name, seq) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            params![name, i64::try_from(seq).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    fn pull_stats(
        &self,
        repositories: &[String],
        day_since: i64,
        week_since: i64,
    ) -> Result<Vec<PullStats>> {
        let mut stats = Vec::new();
        for chunk in repositories.chunks(REPORT_CHUNK) {
            let marks = placeholders(chunk.len());
            // One max() aggregate: SQLite takes the bare `actor` from the row holding the maximum (the last pull).
            let counts = format!(
                "SELECT repository, digest, count(*),
                        sum(time_ms >= ?), sum(time_ms >= ?), max(time_ms), actor, count(DISTINCT actor)
                 FROM events
                 WHERE action = 'pull' AND repository IN ({marks}) AND digest IS NOT NULL
                 GROUP BY repository, digest"
            );
            let nodes = format!(
                "SELECT DISTINCT repository, digest, actor
                 FROM events
                 WHERE action = 'pull' AND repository IN ({marks}) AND digest IS NOT NULL
                   AND actor >= '{NODE_PROXY_PREFIX}' AND actor < 'node-proxy;'
                 ORDER BY repository, digest, actor"
            );
            self.read(|connection| {
                let mut values: Vec<rusqlite::types::Value> =
                    vec![day_since.into(), week_since.into()];
                values.extend(chunk.iter().map(|r| r.clone().into()));
                let mut statement = connection.prepare_cached(&counts)?;
                let rows = statement.query_map(params_from_iter(values), |row| {
                    let count = |i: usize| -> rusqlite::Result<u64> {
                        Ok(u64::try_from(row.get::<_, Option<i64>>(i)?.unwrap_or(0)).unwrap_or(0))
                    };
                    Ok(PullStats {
                        repository: row.get(0)?,
                        digest: row.get(1)?,
                        total: count(2)?,
                        last_day: count(3)?,
                        last_week: count(4)?,
                        last_millis: row.get(5)?,
                        last_actor: row.get(6)?,
                        pullers: count(7)?,
                        nodes: Vec::new(),
                    })
                })?;
                let first = stats.len();
                for row in rows {
                    stats.push(row?);
                }
                let mut statement = connection.prepare_cached(&nodes)?;
                let rows = statement.query_map(params_from_iter(chunk.iter()), |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })?;
                for row in rows {
                    let (repository, digest, actor) = row?;
                    let node = actor.strip_prefix(NODE_PROXY_PREFIX).unwrap_or(&actor);
                    if let Some(entry) = stats[first..]
                        .iter_mut()
                        .find(|s| s.repository == repository && s.digest == digest)
                    {
                        entry.nodes.push(node.to_owned());
                    }
                }
                Ok(())
            })?;
        }
        Ok(stats)
    }

    fn last_pushes(&self, repositories: &[String]) -> Result<Vec<PushRecord>> {
        let mut pushes = Vec::new();
        for chunk in repositories.chunks(REPORT_CHUNK) {
            let sql = format!(
                // The last committed push of each tag (SQLite takes the bare columns from the row of max(seq)):
                // commit order, not the clock, which two pushes in one millisecond share.
                "SELECT repository, tag, time_ms, digest, actor, max(seq)
                 FROM events
                 WHERE action = 'push' AND repository IN ({}) AND tag IS NOT NULL
                 GROUP BY repository, tag",
                placeholders(chunk.len())
            );
            self.read(|connection| {
                let mut statement = connection.prepare_cached(&sql)?;
                let rows = statement.query_map(params_from_iter(chunk.iter()), |row| {
                    Ok(PushRecord {
                        repository: row.get(0)?,
                        tag: row.get(1)?,
                        millis: row.get(2)?,
                        digest: row.get(3)?,
                        actor: row.get(4)?,
                    })
                })?;
                for row in rows {
                    pushes.push(row?);
                }
                Ok(())
            })?;
        }
        Ok(pushes)
    }

    fn size(&self) -> Result<u64> {
        self.read(|connection| {
            let pages: i64 = connection.query_row(
                "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
                [],
                |row| row.get(0),
            )?;
            let page_size: i64 =
                connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            Ok(u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::{Actor, EventAction};

    fn event(action: EventAction, repository: &str, at_millis: u64) -> Event {
        let mut event = Event::new(
            action,
            Actor::anonymous(),
            "test",
            UNIX_EPOCH + Duration::from_millis(at_millis),
        );
        event.target.repository = Some(repository.to_owned());
        event
    }

    #[test]
    fn appended_events_come_back_in_order_and_filtered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let last = store
            .append(&[
                event(EventAction::Push, "team-a/app", 1_000),
                event(EventAction::Pull, "team-a/app", 2_000),
                event(EventAction::Pull, "team-b/app", 3_000),
            ])
            .expect("append");
        assert_eq!(last, 3);
        assert_eq!(store.last_seq().expect("last"), 3);
        let all = |query: EventQuery| {
            store
                .query(&EventQuery {
                    limit: 100,
                    ..query
                })
                .expect("query")
                .into_iter()
                .map(|stored| stored.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(all(EventQuery::default()), [1, 2, 3]);
        assert_eq!(
            all(EventQuery {
                actions: vec![EventAction::Pull],
                ..Default::default()
            }),
            [2, 3]
        );
        assert_eq!(
            all(EventQuery {
                repository_prefix: Some("team-a/".into()),
                ..Default::default()
            }),
            [1, 2]
        );
        assert_eq!(
            all(EventQuery {
                since_millis: Some(2_000),
                until_millis: Some(3_000),
                ..Default::default()
            }),
            [2]
        );
        assert_eq!(
            all(EventQuery {
                after_seq: Some(1),
                actor: Some("anon*".into()),
                ..Default::default()
            }),
            [2, 3]
        );
    }

    #[test]
    fn pruning_deletes_by_age_then_by_size_and_keeps_the_sequence_growing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let day = 86_400_000;
        let batch: Vec<Event> = (0..100)
            .map(|i| event(EventAction::Pull, "team-a/app", i * day / 10))
            .collect();
        store.append(&batch).expect("append");
        let now = UNIX_EPOCH + Duration::from_millis(10 * day);
        let pruned = store
            .prune(
                &Retention {
                    max_age: Duration::from_millis(5 * day),
                    max_bytes: u64::MAX,
                },
                now,
            )
            .expect("prune");
        assert_eq!(pruned.by_age, 50);
        let pruned = store
            .prune(
                &Retention {
                    max_age: Duration::from_millis(100 * day),
                    max_bytes: 0,
                },
                now,
            )
            .expect("prune");
        assert_eq!(pruned.by_size, 50);
        let last = store
            .append(&[event(EventAction::Push, "team-a/app", 11 * day)])
            .expect("append");
        assert_eq!(last, 101, "sequence numbers are never reused");
        store.set_cursor("endpoint", 7).expect("cursor");
        store.set_cursor("endpoint", 9).expect("cursor");
        assert_eq!(store.cursor("endpoint").expect("cursor"), 9);
        assert_eq!(store.cursor("other").expect("cursor"), 0);
        store.set_cursor("at-start", 0).expect("cursor");
        assert_eq!(store.saved_cursor("at-start").expect("cursor"), Some(0));
        assert_eq!(store.saved_cursor("other").expect("cursor"), None);
    }

    #[test]
    fn over_the_size_limit_pulls_go_before_the_pushes_older_than_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let mut batch = vec![event(EventAction::Push, "team-a/app", 1)];
        batch.extend((0..3000).map(|i| event(EventAction::Pull, "team-a/app", 2 + i)));
        batch.push(event(EventAction::Delete, "team-a/app", 5_000));
        store.append(&batch).expect("append");
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        let keep_all_ages = Duration::from_secs(3600);
        let pruned = store
            .prune(
                &Retention {
                    max_age: keep_all_ages,
                    max_bytes: 128 << 10,
                },
                now,
            )
            .expect("prune");
        assert_eq!(pruned.by_size, 3000);
        let left: Vec<EventAction> = store
            .query(&EventQuery {
                limit: 10,
                ..Default::default()
            })
            .expect("query")
            .into_iter()
            .map(|stored| stored.event.action)
            .collect();
        assert_eq!(left, [EventAction::Push, EventAction::Delete]);
        // Only content changes left and still too big: the oldest of them go.
        let pruned = store
            .prune(
                &Retention {
                    max_age: keep_all_ages,
                    max_bytes: 0,
                },
                now,
            )
            .expect("prune");
        assert_eq!(pruned.by_size, 2);
    }

    #[test]
    fn reopening_keeps_what_was_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = SqliteStore::path_in(dir.path());
        SqliteStore::open(&path)
            .expect("open")
            .append(&[event(EventAction::Push, "a", 1)])
            .expect("append");
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.last_seq().expect("last"), 1);
    }

    fn by(action: EventAction, actor: Actor, target: (&str, Option<&str>, &str), at: u64) -> Event {
        let mut event = event(action, target.0, at);
        event.actor = actor;
        event.target.tag = target.1.map(str::to_owned);
        event.target.digest = Some(target.2.to_owned());
        event
    }

    fn actor(identity: crate::auth::Identity) -> Actor {
        Actor::from(&identity)
    }

    #[test]
    fn pull_stats_and_last_pushes_are_grouped_per_manifest_and_tag() {
        use crate::auth::Identity;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let alice = actor(Identity::User {
            name: "alice".into(),
        });
        let bob = actor(Identity::User { name: "bob".into() });
        let node = |name: &str| {
            actor(Identity::NodeProxy {
                namespace: "berth-system".into(),
                name: "berth-node-proxy".into(),
                node: Some(name.into()),
            })
        };
        let app = |tag: Option<&'static str>, digest: &'static str| ("team-a/app", tag, digest);
        store
            .append(&[
                by(
                    EventAction::Push,
                    alice.clone(),
                    app(Some("v1"), "sha256:aa"),
                    1_000,
                ),
                by(
                    EventAction::Push,
                    bob.clone(),
                    app(Some("v1"), "sha256:bb"),
                    2_000,
                ),
                by(
                    EventAction::Pull,
                    alice.clone(),
                    app(Some("v1"), "sha256:aa"),
                    1_500,
                ),
                by(EventAction::Pull, node("n1"), app(None, "sha256:bb"), 3_000),
                by(
                    EventAction::Pull,
                    node("n2"),
                    app(Some("v1"), "sha256:bb"),
                    4_000,
                ),
                by(
                    EventAction::Pull,
                    node("n1"),
                    app(Some("v1"), "sha256:bb"),
                    5_000,
                ),
                by(
                    EventAction::Pull,
                    bob.clone(),
                    app(Some("v1"), "sha256:bb"),
                    6_000,
                ),
                by(
                    EventAction::Pull,
                    bob.clone(),
                    ("team-b/lib", None, "sha256:cc"),
                    7_000,
                ),
            ])
            .expect("append");
        let repos = vec!["team-a/app".to_owned()];
        let mut stats = store.pull_stats(&repos, 5_000, 3_000).expect("stats");
        stats.sort_by(|a, b| a.digest.cmp(&b.digest));
        assert_eq!(
            stats,
            [
                PullStats {
                    repository: "team-a/app".into(),
                    digest: "sha256:aa".into(),
                    total: 1,
                    last_day: 0,
                    last_week: 0,
                    last_millis: 1_500,
                    last_actor: "user:alice".into(),
                    pullers: 1,
                    nodes: vec![],
                },
                PullStats {
                    repository: "team-a/app".into(),
                    digest: "sha256:bb".into(),
                    total: 4,
                    last_day: 2,
                    last_week: 4,
                    last_millis: 6_000,
                    last_actor: "user:bob".into(),
                    pullers: 3,
                    nodes: vec!["n1".into(), "n2".into()],
                },
            ]
        );
        let pushes = store.last_pushes(&repos).expect("pushes");
        assert_eq!(
            pushes,
            [PushRecord {
                repository: "team-a/app".into(),
                tag: "v1".into(),
                digest: Some("sha256:bb".into()),
                millis: 2_000,
                actor: "user:bob".into(),
            }]
        );
        // The grouped pull counts read the covering index, not the table.
        let plan: Vec<String> = store
            .read(|connection| {
                let mut statement = connection.prepare(
                    "EXPLAIN QUERY PLAN SELECT repository, digest,
                         count(*), max(time_ms), actor, count(DISTINCT actor) FROM events
                     WHERE action = 'pull' AND repository IN (?) AND digest IS NOT NULL
                     GROUP BY repository, digest",
                )?;
                let rows = statement.query_map(["team-a/app"], |row| row.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .expect("plan");
        assert!(
            plan.iter()
                .any(|step| step.contains("COVERING INDEX events_pulls")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_schema_1_store_gets_the_target_columns_filled_from_its_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = SqliteStore::path_in(dir.path());
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        let mut pulled = event(EventAction::Pull, "team-a/app", 1_000);
        pulled.target.digest = Some("sha256:aa".into());
        {
            let old = Connection::open(&path).expect("open");
            old.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT INTO meta VALUES ('schema', 1);
                 CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
                     time_ms INTEGER NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL, namespace TEXT,
                     repository TEXT, body TEXT NOT NULL);",
            )
            .expect("schema 1");
            old.execute(
                "INSERT INTO events (id, time_ms, action, actor, repository, body)
                 VALUES (?1, 1000, 'pull', 'anonymous', 'team-a/app', ?2)",
                params![pulled.id, serde_json::to_string(&pulled).expect("json")],
            )
            .expect("insert");
        }
        let store = SqliteStore::open(&path).expect("migrated");
        let stats = store
            .pull_stats(&["team-a/app".to_owned()], 0, 0)
            .expect("stats");
        assert_eq!(
            (stats.len(), stats[0].digest.as_str(), stats[0].total),
            (1, "sha256:aa", 1)
        );
        let version: i64 = store
            .writer()
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |row| {
                row.get(0)
            })
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }
}
