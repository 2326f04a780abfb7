//! The embedded event store: one SQLite file (`<data-dir>/events/events.db`) in WAL mode, `synchronous=FULL` so a
//! committed batch survives a crash of the machine, not only of the process. One connection writes (the log's
//! writer, and the pruner, serialised by a mutex); readers take their own connections from a small pool, so a
//! long query never holds up the writer (WAL lets readers and the writer run at once).
//!
//! Must not: be reached other than through [`EventStore`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};

mod row;

use super::model::{Actor, Client, Event, EventAction, Target};
use super::store::{
    EventQuery, EventStore, Pruned, PullStats, PushRecord, Result, Retention, StoreError,
    StoredEvent,
};

/// The schema this code writes; a store with a newer one is refused rather than misread.
/// 2: the target's digest and tag in their own columns, for the images report's indexes.
/// 3: an event's fields in columns of their own, not one JSON document ([`row`]); pull counts per manifest,
/// actor and minute in a table of their own (`pulls`), in place of an index over every pull event.
/// 4: an event's source (actor, client, instance) and target (repository, tag, digest, media type, size) in tables
/// of their own that its row refers to ([`row`]); ids as 16 bytes; sequence numbers given by the writer.
const SCHEMA_VERSION: i64 = 4;

/// Sources and targets the writer remembers (each a few hundred bytes); past this many it forgets them all and
/// looks them up again.
const REMEMBERED: usize = 8_192;

/// The width of a `pulls` bucket.
const PULL_BUCKET_MILLIS: i64 = 60_000;

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
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
}

/// The writing connection, with what it remembers between batches.
struct Writer {
    connection: Connection,
    /// The last sequence number given (never less than any event's, stored or pruned).
    last_seq: i64,
    sources: Sources,
    targets: Remembered<Target, i64>,
}

/// A source row as the writer remembers it: what it holds (actor, client, instance), its number and the actor's
/// subject.
type Sources = Remembered<(Actor, Option<Client>, Arc<str>), Source>;

/// A source row's number and its actor's subject.
type Source = (i64, Arc<str>);

/// What a target row holds: repository, tag, digest, media type and size.
type TargetView<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<u64>,
);

impl std::ops::Deref for Writer {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl std::ops::DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }
}

/// Rows of `sources` or `targets` the writer has looked up or made, found by a hash of what they hold, so that an
/// event of a client and image seen before costs no query.
struct Remembered<K, V> {
    hasher: RandomState,
    entries: HashMap<u64, Vec<(K, V)>>,
    len: usize,
}

impl<K, V: Clone> Remembered<K, V> {
    fn new() -> Self {
        Remembered {
            hasher: RandomState::new(),
            entries: HashMap::new(),
            len: 0,
        }
    }

    fn hash(&self, view: &impl Hash) -> u64 {
        self.hasher.hash_one(view)
    }

    fn get(&self, hash: u64, matches: impl Fn(&K) -> bool) -> Option<V> {
        self.entries
            .get(&hash)?
            .iter()
            .find(|(key, _)| matches(key))
            .map(|(_, value)| value.clone())
    }

    fn insert(&mut self, hash: u64, key: K, value: V) {
        if self.len >= REMEMBERED {
            self.clear();
        }
        self.entries.entry(hash).or_default().push((key, value));
        self.len += 1;
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }
}

/// What a source is told apart by, borrowed from an event.
fn source_view(event: &Event) -> (&Actor, Option<&Client>, &str) {
    (&event.actor, event.client.as_ref(), &*event.instance)
}

/// What a target row holds, borrowed from a target.
fn target_view(target: &Target) -> TargetView<'_> {
    (
        target.repository.as_deref(),
        target.tag.as_deref(),
        target.digest.as_deref(),
        target.media_type.as_deref(),
        target.size,
    )
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
             CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);",
        )?;
        let version: Option<i64> = writer
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |row| {
                row.get(0)
            })
            .optional()?;
        if let Some(v) = version.filter(|&v| v > SCHEMA_VERSION) {
            return Err(StoreError::Database(format!(
                "{}: schema version {v} is newer than this berth's ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        let mut writer = Writer {
            connection: writer,
            last_seq: 0,
            sources: Remembered::new(),
            targets: Remembered::new(),
        };
        let has_events = has_table(&writer, "events")?;
        let has_sources = has_table(&writer, "sources")?;
        match (has_events, has_sources) {
            (false, _) => {
                writer.execute_batch(&format!("BEGIN; {} {REPORT_TABLES} COMMIT;", row::CREATE))?
            }
            (true, false) => {
                add_target_columns(&writer)?;
                add_event_columns(&writer)?;
                add_report_tables(&writer)?;
                migrate_to_v4(&mut writer)?;
            }
            (true, true) => {}
        }
        writer.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [SCHEMA_VERSION],
        )?;
        writer.last_seq = high_water(&writer)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
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

/// Schema 2: the `digest` and `tag` columns, filled from the bodies of the events stored before them.
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
    Ok(())
}

/// Schema 3: the columns an event is stored in ([`row::ADDED_COLUMNS`]); the rows stored before keep their JSON
/// `body` and read back from it.
fn add_event_columns(writer: &Connection) -> Result<()> {
    let has_rest: bool = writer.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('events') WHERE name = 'rest'",
        [],
        |row| row.get(0),
    )?;
    if !has_rest {
        let mut sql = String::from("BEGIN;");
        for column in row::ADDED_COLUMNS {
            sql.push_str(&format!("ALTER TABLE events ADD COLUMN {column};"));
        }
        sql.push_str("COMMIT;");
        writer.execute_batch(&sql)?;
    }
    Ok(())
}

/// The first event (the lowest sequence number) at or after `millis`, found by bisecting the sequence numbers:
/// events are committed in the order of their times, the clock of one berth permitting (a clock stepped back
/// makes a few events out of order; they are found by a longer scan or pruned a little late, never lost).
fn first_seq_at(connection: &Connection, millis: i64) -> Result<Option<i64>> {
    let mut at_or_after = connection
        .prepare_cached("SELECT seq, time_ms FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    let mut next = |from: i64| -> Result<Option<(i64, i64)>> {
        Ok(at_or_after
            .query_row([from], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    };
    let Some((first, first_time)) = next(i64::MIN)? else {
        return Ok(None);
    };
    if first_time >= millis {
        return Ok(Some(first));
    }
    let last: i64 = connection.query_row("SELECT max(seq) FROM events", [], |row| row.get(0))?;
    // Events up to `low` are older than `millis`; `found` is the first event at or after `high` when it is not.
    let (mut low, mut high, mut found) = (first, last.saturating_add(1), None);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        match next(middle)? {
            Some((seq, time)) if time >= millis => {
                found = Some(seq);
                high = middle;
            }
            Some((seq, _)) => low = seq,
            None => high = middle,
        }
    }
    Ok(found)
}

/// Schema 3: the images report's tables, kept by [`EventStore::append`] in the batch's transaction, in place of
/// indexes over every event (each index cost the writer about a tenth of its time under the manifest-GET
/// benchmark): `pulls`, one row per manifest, actor and minute with the number of pulls and the last one's time
/// (a batch of pulls of one image by one client is one row), and `tags`, the last push of each digest to each tag
/// (keyed by the digest too, so that of two racing pushes to one tag, whose events may commit in either order, the
/// one that set the tag's digest is the one reported as its push). The log has
/// no index on time either: events are committed in time order, so a time is found by its sequence number
/// ([`first_seq_at`]). A store from before gets the tables filled from its events, in one
/// transaction with dropping the old indexes.
fn add_report_tables(writer: &Connection) -> Result<()> {
    let has_tables = has_table(writer, "pulls")?;
    if has_tables {
        return Ok(());
    }
    writer.execute_batch(&format!(
        "BEGIN;
         {REPORT_TABLES}
         INSERT INTO pulls (repository, digest, actor, minute, count, last_ms)
             SELECT repository, digest, actor, time_ms / {PULL_BUCKET_MILLIS}, count(*), max(time_ms)
             FROM events
             WHERE action = 'pull' AND repository IS NOT NULL AND digest IS NOT NULL
             GROUP BY 1, 2, 3, 4;
         INSERT INTO tags (repository, tag, digest, time_ms, actor, seq)
             SELECT repository, tag, digest, time_ms, actor, max(seq)
             FROM events
             WHERE action = 'push' AND repository IS NOT NULL AND tag IS NOT NULL AND digest IS NOT NULL
             GROUP BY repository, tag, digest;
         DROP INDEX IF EXISTS events_pulls;
         DROP INDEX IF EXISTS events_pushes;
         DROP INDEX IF EXISTS events_time;
         COMMIT;"
    ))?;
    Ok(())
}

/// The images report's tables (see [`add_report_tables`]).
const REPORT_TABLES: &str = "
    CREATE TABLE pulls (
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        actor TEXT NOT NULL,
        minute INTEGER NOT NULL,
        count INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        PRIMARY KEY (repository, digest, actor, minute)
    ) WITHOUT ROWID;
    CREATE INDEX pulls_minute ON pulls (minute);
    CREATE TABLE tags (
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (repository, tag, digest)
    ) WITHOUT ROWID;";

/// Schema 4: every event of the schema-3 table (and the older rows in it, read from their JSON) copied into the
/// tables of [`row`], keeping its sequence number, in one transaction (a crash in between leaves the store as it
/// was, and the next start copies again). The report tables were filled before and are left as they are. A row
/// that cannot be read is left out and logged: it could not be read before either.
fn migrate_to_v4(writer: &mut Writer) -> Result<()> {
    let has_sequence = has_table(writer, "sqlite_sequence")?;
    let given: i64 = if has_sequence {
        writer
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0)
    } else {
        0
    };
    let Writer {
        connection,
        sources,
        targets,
        ..
    } = writer;
    let transaction = connection.transaction()?;
    transaction.execute_batch(&format!(
        "ALTER TABLE events RENAME TO events_v3; DROP INDEX IF EXISTS events_repository; {}",
        row::CREATE
    ))?;
    let (mut copied, mut unreadable, mut last) = (0u64, 0u64, given);
    {
        let mut select = transaction.prepare(&format!(
            "SELECT {} FROM events_v3 ORDER BY seq",
            row::COLUMNS_V3
        ))?;
        let mut rows = select.query([])?;
        let mut batch: Vec<(i64, Event)> = Vec::new();
        loop {
            let next = rows.next()?;
            if let Some(found) = next {
                match row::read_v3(found) {
                    Ok(stored) => {
                        let seq = i64::try_from(stored.seq).unwrap_or(i64::MAX);
                        last = last.max(seq);
                        batch.push((seq, stored.event));
                    }
                    Err(e) => {
                        unreadable += 1;
                        log::warn!("event log: not copying an unreadable event to schema 4: {e}");
                    }
                }
            }
            if batch.len() >= 1_000 || (next.is_none() && !batch.is_empty()) {
                let numbered: Vec<(i64, &Event)> =
                    batch.iter().map(|(seq, event)| (*seq, event)).collect();
                write_batch(&transaction, sources, targets, &numbered, false)?;
                copied += batch.len() as u64;
                batch.clear();
            }
            if next.is_none() {
                break;
            }
        }
    }
    transaction.execute_batch("DROP TABLE events_v3;")?;
    keep_last_seq(&transaction, last)?;
    transaction.commit()?;
    log::info!(
        "event log: {copied} events copied to schema 4{}",
        if unreadable > 0 {
            format!(", {unreadable} unreadable left out")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Whether the store has a table called `name`.
fn has_table(connection: &Connection, name: &str) -> Result<bool> {
    Ok(connection.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |row| row.get(0),
    )?)
}

/// Keeps `last` as the last sequence number given (never lowering the one kept), for [`high_water`].
fn keep_last_seq(connection: &Connection, last: i64) -> Result<()> {
    connection.execute(
        "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        [last],
    )?;
    Ok(())
}

/// The last sequence number given: the highest of the events' and the one kept in `meta` (which outlives the
/// events when all of them are pruned).
fn high_water(connection: &Connection) -> Result<i64> {
    Ok(connection.query_row(
        "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'last_seq'), 0),
                    coalesce((SELECT max(seq) FROM events), 0))",
        [],
        |row| row.get(0),
    )?)
}

/// The pulls of one target by one source in one minute: how many, the last one's time, and the repository,
/// digest and actor of the `pulls` row.
type PullCount<'a> = (i64, i64, &'a str, &'a str, Arc<str>);

/// A batch's pulls by target, source and minute.
type PullCounts<'a> = HashMap<(i64, i64, i64), PullCount<'a>>;

fn add_pulls<'a>(
    pulls: &mut PullCounts<'a>,
    key: (i64, i64, i64),
    n: i64,
    last: i64,
    repository: &'a str,
    digest: &'a str,
    actor: Arc<str>,
) {
    let entry = pulls
        .entry(key)
        .or_insert((0, last, repository, digest, actor));
    entry.0 += n;
    entry.1 = entry.1.max(last);
}

/// Writes `events` (each with its sequence number) in `transaction`: each event's row, the source and target
/// rows it refers to (looked up, or made, once per distinct source and target), their last use; with `reports`,
/// also the images report's tables (`tags` for pushes to a tag, `pulls` counted per manifest, actor and minute).
fn write_batch<'a>(
    transaction: &rusqlite::Transaction<'_>,
    sources: &mut Sources,
    targets: &mut Remembered<Target, i64>,
    events: &[(i64, &'a Event)],
    reports: bool,
) -> Result<()> {
    let mut insert = transaction.prepare_cached(row::INSERT)?;
    let mut tag = transaction.prepare_cached(
        "INSERT INTO tags (repository, tag, digest, time_ms, actor, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (repository, tag, digest) DO UPDATE SET
             time_ms = excluded.time_ms, actor = excluded.actor, seq = excluded.seq",
    )?;
    // Per source and target used: the last event that refers to it.
    let mut used_sources: HashMap<i64, i64> = HashMap::new();
    let mut used_targets: HashMap<i64, i64> = HashMap::new();
    // Pulls per target, source and minute: (count, last time), with the names the `pulls` row needs.
    let mut pulls: PullCounts<'a> = HashMap::new();
    // The pulls of one run of events with the same key, added to `pulls` when the key changes.
    let mut counting: Option<((i64, i64, i64), PullCount<'a>)> = None;
    // The source and target of the event before: most events of a batch share them with it.
    let mut previous: Option<(i64, &Event, Source, Option<i64>)> = None;
    for &(seq, event) in events {
        let view = source_view(event);
        let same_source = previous
            .as_ref()
            .filter(|(_, before, _, _)| source_view(before) == view)
            .map(|(_, _, found, _)| found.clone());
        let same_target = previous
            .as_ref()
            .filter(|(_, before, _, _)| target_view(&before.target) == target_view(&event.target))
            .map(|(_, _, _, found)| *found);
        let (source, subject) = if let Some(found) = same_source {
            found
        } else {
            let hash = sources.hash(&view);
            match sources.get(hash, |(actor, client, instance)| {
                (actor, client.as_ref(), &**instance) == view
            }) {
                Some(found) => found,
                None => {
                    let (made, subject) = row::find_or_insert_source(
                        transaction,
                        &event.actor,
                        event.client.as_ref(),
                        &event.instance,
                        seq,
                    )?;
                    let found = (made, Arc::<str>::from(subject));
                    let known = (
                        event.actor.clone(),
                        event.client.clone(),
                        event.instance.clone(),
                    );
                    sources.insert(hash, known, found.clone());
                    found
                }
            }
        };
        let view = target_view(&event.target);
        let target = if let Some(found) = same_target {
            found
        } else if view == (None, None, None, None, None) {
            None
        } else {
            let hash = targets.hash(&view);
            match targets.get(hash, |known| target_view(known) == view) {
                Some(found) => Some(found),
                None => {
                    let made = row::find_or_insert_target(transaction, &event.target, seq)?;
                    let known = Target {
                        repository: event.target.repository.clone(),
                        tag: event.target.tag.clone(),
                        digest: event.target.digest.clone(),
                        media_type: event.target.media_type.clone(),
                        size: event.target.size,
                        ..Target::default()
                    };
                    targets.insert(hash, known, made);
                    Some(made)
                }
            }
        };
        row::insert(&mut insert, seq, event, row::Refs { source, target })?;
        // A source's or target's last use is noted when the next event has another one, and after the loop.
        if let Some((before_seq, _, (before_source, _), before_target)) = &previous {
            if *before_source != source {
                used_sources.insert(*before_source, *before_seq);
            }
            if let Some(before_target) = before_target.filter(|_| *before_target != target) {
                used_targets.insert(before_target, *before_seq);
            }
        }
        previous = Some((seq, event, (source, subject.clone()), target));
        if !reports {
            continue;
        }
        let names = (
            event.target.repository.as_deref(),
            event.target.tag.as_deref(),
            event.target.digest.as_deref(),
        );
        match (event.action, target, names) {
            (EventAction::Push, _, (Some(repository), Some(name), Some(digest))) => {
                tag.execute(params![
                    repository,
                    name,
                    digest,
                    event.unix_millis(),
                    &*subject,
                    seq,
                ])?;
            }
            (EventAction::Pull, Some(target), (Some(repository), _, Some(digest))) => {
                let at = event.unix_millis();
                let key = (target, source, at.div_euclid(PULL_BUCKET_MILLIS));
                match &mut counting {
                    Some((counted, (n, last, ..))) if *counted == key => {
                        *n += 1;
                        *last = (*last).max(at);
                    }
                    _ => {
                        if let Some((key, (n, last, repository, digest, actor))) = counting.take() {
                            add_pulls(&mut pulls, key, n, last, repository, digest, actor);
                        }
                        counting = Some((key, (1, at, repository, digest, subject.clone())));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some((key, (n, last, repository, digest, actor))) = counting.take() {
        add_pulls(&mut pulls, key, n, last, repository, digest, actor);
    }
    if let Some((seq, _, (source, _), target)) = previous {
        used_sources.insert(source, seq);
        if let Some(target) = target {
            used_targets.insert(target, seq);
        }
    }
    let mut count = transaction.prepare_cached(
        "INSERT INTO pulls (repository, digest, actor, minute, count, last_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (repository, digest, actor, minute)
         DO UPDATE SET count = count + excluded.count, last_ms = max(last_ms, excluded.last_ms)",
    )?;
    for ((_, _, minute), (n, at, repository, digest, actor)) in pulls {
        count.execute(params![repository, digest, &*actor, minute, n, at])?;
    }
    let mut source_used = transaction
        .prepare_cached("UPDATE sources SET last_seq = max(last_seq, ?2) WHERE ref = ?1")?;
    for (source, seq) in used_sources {
        source_used.execute([source, seq])?;
    }
    let mut target_used = transaction
        .prepare_cached("UPDATE targets SET last_seq = max(last_seq, ?2) WHERE ref = ?1")?;
    for (target, seq) in used_targets {
        target_used.execute([target, seq])?;
    }
    Ok(())
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EventStore for SqliteStore {
    fn append(&self, events: &[Event]) -> Result<u64> {
        let mut writer = self.writer();
        let Writer {
            connection,
            last_seq,
            sources,
            targets,
        } = &mut *writer;
        let first = *last_seq;
        let written = (|| -> Result<i64> {
            let transaction = connection.transaction()?;
            let mut last = first;
            let batch: Vec<(i64, &Event)> = events
                .iter()
                .map(|event| {
                    last = last.saturating_add(1);
                    (last, event)
                })
                .collect();
            write_batch(&transaction, sources, targets, &batch, true)?;
            keep_last_seq(&transaction, last)?;
            transaction.commit()?;
            Ok(last)
        })();
        match written {
            Ok(last) => {
                *last_seq = last;
                Ok(u64::try_from(last).unwrap_or(0))
            }
            Err(e) => {
                // Rows it made were rolled back with the batch.
                sources.clear();
                targets.clear();
                Err(e)
            }
        }
    }

    fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        let mut sql = format!("{} WHERE 1=1", row::SELECT);
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if !query.actions.is_empty() {
            sql.push_str(" AND e.action IN (");
            for (i, action) in query.actions.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                values.push(action.as_str().to_owned().into());
            }
            sql.push(')');
        }
        if let Some(prefix) = &query.repository_prefix {
            // A range on the index rather than LIKE, whose wildcards a repository name would have to escape.
            sql.push_str(
                " AND e.target IN (SELECT ref FROM targets WHERE repository >= ? AND repository < ?)",
            );
            values.push(prefix.clone().into());
            values.push(format!("{prefix}\u{10FFFF}").into());
        }
        if let Some(actor) = &query.actor {
            match actor.strip_suffix('*') {
                Some(prefix) => {
                    sql.push_str(
                        " AND e.source IN (SELECT ref FROM sources WHERE substr(actor, 1, ?) = ?)",
                    );
                    values.push(i64::try_from(prefix.chars().count()).unwrap_or(0).into());
                    values.push(prefix.to_owned().into());
                }
                None => {
                    sql.push_str(" AND e.source IN (SELECT ref FROM sources WHERE actor = ?)");
                    values.push(actor.clone().into());
                }
            }
        }
        if let Some(namespace) = &query.namespace {
            // An admission's namespace, else the actor's (what `Event::namespace` says).
            sql.push_str(
                " AND (e.namespace = ? OR (e.namespace IS NULL
                       AND e.source IN (SELECT ref FROM sources WHERE namespace = ?)))",
            );
            values.push(namespace.clone().into());
            values.push(namespace.clone().into());
        }
        // A time is a range of sequence numbers (no index on time: see `add_report_tables`); the times themselves are
        // compared too, so that only the scan's length depends on events being committed in time order.
        if let Some(since) = query.since_millis {
            sql.push_str(" AND e.time_ms >= ?");
            values.push(since.into());
            if let Some(first) = self.read(|connection| first_seq_at(connection, since))? {
                sql.push_str(" AND e.seq >= ?");
                values.push(first.into());
            }
        }
        if let Some(until) = query.until_millis {
            sql.push_str(" AND e.time_ms < ?");
            values.push(until.into());
            if let Some(first) = self.read(|connection| first_seq_at(connection, until))? {
                sql.push_str(" AND e.seq < ?");
                values.push(first.into());
            }
        }
        if let Some(after) = query.after_seq {
            sql.push_str(" AND e.seq > ?");
            values.push(i64::try_from(after).unwrap_or(i64::MAX).into());
        }
        if let Some(before) = query.before_seq {
            sql.push_str(" AND e.seq < ?");
            values.push(i64::try_from(before).unwrap_or(i64::MAX).into());
        }
        sql.push_str(" ORDER BY e.seq LIMIT ?");
        values.push(i64::try_from(query.limit).unwrap_or(i64::MAX).into());
        self.read(|connection| {
            let mut statement = connection.prepare_cached(&sql)?;
            let mut rows = statement.query(params_from_iter(values))?;
            let mut events = Vec::new();
            while let Some(found) = rows.next()? {
                events.push(row::read(found)?);
            }
            Ok(events)
        })
    }

    fn last_seq(&self) -> Result<u64> {
        self.read(|connection| Ok(u64::try_from(high_water(connection)?).unwrap_or(0)))
    }

    fn prune(&self, retention: &Retention, now: SystemTime) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let cutoff = millis(now.checked_sub(retention.max_age).unwrap_or(UNIX_EPOCH));
        // The old events are those committed before the first young one (and older themselves).
        let young = first_seq_at(&self.writer(), cutoff)?.unwrap_or(i64::MAX);
        loop {
            let deleted = self.writer().execute(
                "DELETE FROM events WHERE seq IN
                     (SELECT seq FROM events WHERE seq < ?1 AND time_ms < ?2 ORDER BY seq LIMIT ?3)",
                params![young, cutoff, PRUNE_CHUNK],
            )?;
            pruned.by_age += deleted as u64;
            if (deleted as i64) < PRUNE_CHUNK {
                break;
            }
        }
        // The pushes of the images report go with their age too.
        self.writer()
            .execute("DELETE FROM tags WHERE time_ms < ?1", [cutoff])?;
        // The pull counts go with the age of their minute; the size limit leaves them (a row stands for many
        // pulls, and the counts are what the images report is for).
        loop {
            let deleted = self.writer().execute(
                "DELETE FROM pulls WHERE (repository, digest, actor, minute) IN
                     (SELECT repository, digest, actor, minute FROM pulls WHERE minute < ?1 LIMIT ?2)",
                params![cutoff.div_euclid(PULL_BUCKET_MILLIS), PRUNE_CHUNK],
            )?;
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
            let mut writer = self.writer();
            // The sources and targets no event refers to any more (each keeps the last event that did).
            let oldest: i64 = writer.query_row(
                "SELECT coalesce(min(seq), 9223372036854775807) FROM events",
                [],
                |row| row.get(0),
            )?;
            let sources = writer.execute("DELETE FROM sources WHERE last_seq < ?1", [oldest])?;
            let targets = writer.execute("DELETE FROM targets WHERE last_seq < ?1", [oldest])?;
            if sources + targets > 0 {
                writer.sources.clear();
                writer.targets.clear();
            }
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
            // The recent counts are to the minute (the `pulls` bucket).
            let counts = format!(
                "SELECT repository, digest, sum(count),
                        sum(CASE WHEN minute >= ? THEN count ELSE 0 END),
                        sum(CASE WHEN minute >= ? THEN count ELSE 0 END),
                        max(last_ms), actor, count(DISTINCT actor)
                 FROM pulls
                 WHERE repository IN ({marks})
                 GROUP BY repository, digest"
            );
            let nodes = format!(
                "SELECT DISTINCT repository, digest, actor
                 FROM pulls
                 WHERE repository IN ({marks})
                   AND actor >= '{NODE_PROXY_PREFIX}' AND actor < 'node-proxy;'
                 ORDER BY repository, digest, actor"
            );
            self.read(|connection| {
                let mut values: Vec<rusqlite::types::Value> = vec![
                    day_since.div_euclid(PULL_BUCKET_MILLIS).into(),
                    week_since.div_euclid(PULL_BUCKET_MILLIS).into(),
                ];
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
                // The last committed push of each tag: commit order, not the clock, which two pushes in one
                // millisecond share.
                "SELECT repository, tag, time_ms, digest, actor FROM tags WHERE repository IN ({})",
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

    /// The schema version `store` says it has.
    fn schema_of(store: &SqliteStore) -> i64 {
        store
            .writer()
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |row| {
                row.get(0)
            })
            .expect("version")
    }

    /// The first `limit` events of `store`, in order.
    fn events_of(store: &SqliteStore, limit: usize) -> Vec<Event> {
        store
            .query(&EventQuery {
                limit,
                ..Default::default()
            })
            .expect("query")
            .into_iter()
            .map(|stored| stored.event)
            .collect()
    }

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

    #[test]
    fn every_field_of_every_kind_of_event_reads_back_as_stored_and_old_rows_too() {
        use crate::events::model::{
            ActorKind, Admission, AdmittedContainer, Client, Outcome, Target,
        };
        let at = |millis: u64| event(EventAction::Pull, "team-a/app", millis);
        let node_proxy = Actor {
            kind: ActorKind::NodeProxy,
            name: Some("berth-node-proxy".into()),
            namespace: Some("berth-system".into()),
            node: Some("node-1".into()),
        };
        let pulled = Event {
            actor: node_proxy,
            client: Some(Client {
                address: Some("10.0.0.7".into()),
                user_agent: Some("containerd/2.0 \"quoted\" \u{e9}".into()),
            }),
            target: Target {
                tag: Some("v1".into()),
                digest: Some("sha256:aa".into()),
                media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                size: Some(u64::MAX >> 1),
                ..at(1).target
            },
            request_id: Some("client-id-1".into()),
            ..at(1_764_600_000_123)
        };
        let refused = Event {
            action: EventAction::AuthFailed,
            actor: Actor {
                kind: ActorKind::User,
                name: Some("mallory".into()),
                namespace: None,
                node: None,
            },
            client: Some(Client::default()),
            target: Target {
                scope: Some("repository:team-a/app:push".into()),
                ..at(2).target
            },
            result: Outcome {
                status: 403,
                code: Some("DENIED".into()),
                message: Some("not allowed".into()),
            },
            ..at(2)
        };
        let moved = Event {
            action: EventAction::TagMoved,
            actor: Actor {
                kind: ActorKind::ServiceAccount,
                name: Some("ci".into()),
                namespace: Some("team-a".into()),
                node: None,
            },
            target: Target {
                tag: Some("latest".into()),
                digest: Some("sha256:bb".into()),
                old_digest: Some("sha256:aa".into()),
                from: Some("team-b/base".into()),
                upstream: Some("https://registry-1.docker.io".into()),
                ..at(3).target
            },
            ..at(3)
        };
        let mut admitted = Event::new(
            EventAction::Mutated,
            Actor::of_kind(ActorKind::Kubernetes),
            "berth-1",
            UNIX_EPOCH + Duration::from_millis(4),
        );
        admitted.admission = Some(Box::new(Admission {
            namespace: "team-a".into(),
            kind: "Pod".into(),
            name: "web-1".into(),
            operation: Some("CREATE".into()),
            service_account: Some("default".into()),
            containers: vec![AdmittedContainer {
                name: "web".into(),
                image: "nginx".into(),
                rewritten: Some("berth.local/docker.io/library/nginx".into()),
            }],
            rule: Some("rewrite-hub".into()),
            warnings: vec!["w".into()],
            dry_run: true,
            omitted_containers: 3,
        }));
        let fetched = Event {
            actor: Actor::of_kind(ActorKind::Berth),
            action: EventAction::ProxyFetch,
            ..at(5)
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let stored = [pulled, refused, moved, admitted, fetched];
        store.append(&stored).expect("append");
        // A request id that looks like a number stays text, and a client's id that is a ULID is kept as given.
        let numbered = Event {
            request_id: Some("12345".into()),
            ..at(6)
        };
        let given = Event {
            request_id: Some(crate::events::model::new_id(UNIX_EPOCH)),
            ..at(7)
        };
        store
            .append(&[numbered.clone(), given.clone()])
            .expect("append");
        let read: Vec<Event> = events_of(&store, 100);
        let mut expected = stored.to_vec();
        expected.extend([numbered, given]);
        assert_eq!(read, expected);
        // The namespace is an admission's, else the actor's.
        let in_namespace: Vec<EventAction> = store
            .query(&EventQuery {
                namespace: Some("team-a".into()),
                limit: 100,
                ..Default::default()
            })
            .expect("query")
            .into_iter()
            .map(|stored| stored.event.action)
            .collect();
        assert_eq!(in_namespace, [EventAction::TagMoved, EventAction::Mutated]);
        // Only what few events have is JSON: a node proxy's pull has none (its actor is its source's), and nor
        // has the cache's fetch.
        let rests: Vec<Option<String>> = store
            .read(|connection| {
                let mut statement = connection.prepare("SELECT rest FROM events ORDER BY seq")?;
                let rows = statement.query_map([], |row| row.get(0))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .expect("rests");
        let with_json: Vec<bool> = rests.iter().map(Option::is_some).collect();
        assert_eq!(
            with_json,
            [false, true, true, true, false, false, false],
            "{rests:?}"
        );
        // Ids are kept as 16 bytes, and so are request ids that are ULIDs; others as text.
        let kinds: Vec<(String, String)> = store
            .read(|connection| {
                let mut statement = connection
                    .prepare("SELECT typeof(id), typeof(request_id) FROM events ORDER BY seq")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .expect("types");
        assert!(kinds.iter().all(|(id, _)| id == "blob"), "{kinds:?}");
        assert_eq!(
            kinds.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
            ["text", "null", "null", "null", "null", "text", "blob"]
        );
    }

    /// A store of schema 3 as berth made it: its tables and rows (written here as that berth wrote them).
    fn schema_3_store(path: &Path) -> Connection {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        let old = Connection::open(path).expect("open");
        old.execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('schema', 3);
             CREATE TABLE events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, time_ms INTEGER NOT NULL,
                 action TEXT NOT NULL, actor TEXT NOT NULL, namespace TEXT, repository TEXT,
                 body TEXT NOT NULL, digest TEXT, tag TEXT, status INTEGER, request_id TEXT,
                 address TEXT, user_agent TEXT, media_type TEXT, size INTEGER, instance TEXT, rest TEXT);
             CREATE INDEX events_repository ON events (repository, seq);
             CREATE TABLE cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
             {REPORT_TABLES}"
        ))
        .expect("schema 3");
        old
    }

    #[test]
    fn a_schema_3_store_is_copied_to_schema_4_with_its_sequence_numbers() {
        use crate::events::model::{ActorKind, Client};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = SqliteStore::path_in(dir.path());
        let old = schema_3_store(&path);
        // From before schema 3: the whole event as JSON.
        let mut from_json = event(EventAction::Push, "team-a/app", 1_000);
        from_json.target.tag = Some("v1".into());
        from_json.target.digest = Some("sha256:aa".into());
        old.execute(
            "INSERT INTO events (seq, id, time_ms, action, actor, repository, digest, tag, body)
             VALUES (5, ?1, 1000, 'push', 'anonymous', 'team-a/app', 'sha256:aa', 'v1', ?2)",
            params![
                from_json.id,
                serde_json::to_string(&from_json).expect("json")
            ],
        )
        .expect("json row");
        // Schema 3's columns: a node proxy's pull (its actor in `rest`).
        let node_proxy = Actor {
            kind: ActorKind::NodeProxy,
            name: Some("berth-node-proxy".into()),
            namespace: Some("berth-system".into()),
            node: Some("node-1".into()),
        };
        let mut pulled = event(EventAction::Pull, "team-a/app", 2_000);
        pulled.actor = node_proxy.clone();
        pulled.client = Some(Client {
            address: Some("10.0.0.7".into()),
            user_agent: Some("containerd/2.0".into()),
        });
        pulled.target.digest = Some("sha256:aa".into());
        pulled.target.size = Some(42);
        pulled.request_id = Some("client-id".into());
        old.execute(
            "INSERT INTO events (seq, id, time_ms, action, actor, repository, body, digest, status,
                                 request_id, address, user_agent, size, instance, rest)
             VALUES (9, ?1, 2000, 'pull', 'node-proxy:node-1', 'team-a/app', '', 'sha256:aa', 200,
                     'client-id', '10.0.0.7', 'containerd/2.0', 42, 'test', ?2)",
            params![
                pulled.id,
                serde_json::json!({"actor": node_proxy}).to_string()
            ],
        )
        .expect("column row");
        // An unreadable row is left out; the newest event (12) was pruned.
        old.execute(
            "INSERT INTO events (seq, id, time_ms, action, actor, body) VALUES (11, 'x', 3000, 'gone', 'anonymous', '')",
            [],
        )
        .expect("unreadable row");
        old.execute_batch(
            "INSERT INTO events (seq, id, time_ms, action, actor, body) VALUES (12, 'y', 4000, 'pull', 'anonymous', '');
             DELETE FROM events WHERE seq = 12;
             INSERT INTO pulls VALUES ('team-a/app', 'sha256:aa', 'node-proxy:node-1', 0, 1, 2000);",
        )
        .expect("pruned row");
        drop(old);

        let store = SqliteStore::open(&path).expect("migrated");
        let read: Vec<(u64, Event)> = store
            .query(&EventQuery {
                limit: 100,
                ..Default::default()
            })
            .expect("query")
            .into_iter()
            .map(|stored| (stored.seq, stored.event))
            .collect();
        assert_eq!(read, [(5, from_json), (9, pulled)]);
        assert_eq!(store.last_seq().expect("last"), 12);
        let mut later = event(EventAction::Pull, "team-a/app", 5_000);
        later.target.digest = Some("sha256:aa".into());
        let next = store.append(&[later]).expect("append");
        assert_eq!(next, 13, "sequence numbers go on from the old store's");
        // The report tables were not counted again.
        let stats = store
            .pull_stats(&["team-a/app".to_owned()], 0, 0)
            .expect("stats");
        assert_eq!(stats.iter().map(|s| s.total).sum::<u64>(), 2);
        assert_eq!(schema_of(&store), SCHEMA_VERSION);
        let tables: i64 = store
            .writer()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('events_v3', 'events_repository')",
                [],
                |row| row.get(0),
            )
            .expect("tables");
        assert_eq!(tables, 0);
        // A second start finds schema 4 and copies nothing.
        drop(store);
        let store = SqliteStore::open(&path).expect("reopened");
        assert_eq!(store.last_seq().expect("last"), 13);
    }

    #[test]
    fn sources_and_targets_no_event_refers_to_are_pruned_and_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let day = 86_400_000;
        let mut old = event(EventAction::Pull, "team-a/old", 0);
        old.actor = Actor {
            name: Some("alice".into()),
            ..Actor::of_kind(crate::events::model::ActorKind::User)
        };
        let young = event(EventAction::Pull, "team-a/young", 9 * day);
        store
            .append(&[old.clone(), young.clone(), young.clone()])
            .expect("append");
        let count = |table: &str| -> i64 {
            store
                .writer()
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                    row.get(0)
                })
                .expect("count")
        };
        assert_eq!((count("sources"), count("targets")), (2, 2));
        let pruned = store
            .prune(
                &Retention {
                    max_age: Duration::from_millis(5 * day),
                    max_bytes: u64::MAX,
                },
                UNIX_EPOCH + Duration::from_millis(10 * day),
            )
            .expect("prune");
        assert_eq!(pruned.by_age, 1);
        assert_eq!((count("sources"), count("targets")), (1, 1));
        // The pruned source and target are made again when an event needs them.
        store.append(&[old.clone()]).expect("append");
        assert_eq!((count("sources"), count("targets")), (2, 2));
        let read: Vec<Event> = events_of(&store, 10);
        assert_eq!(read, [young.clone(), young, old]);
    }

    #[test]
    fn a_time_is_found_by_its_sequence_number_across_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&SqliteStore::path_in(dir.path())).expect("open");
        let times: Vec<u64> = vec![10, 20, 20, 30, 40, 50, 60, 70, 80, 90];
        let batch: Vec<Event> = times
            .iter()
            .map(|&t| event(EventAction::Pull, "a", t))
            .collect();
        store.append(&batch).expect("append");
        // Gaps: seq 2, 5 and 6 deleted (times 20, 40, 50).
        store
            .writer()
            .execute("DELETE FROM events WHERE seq IN (2, 5, 6)", [])
            .expect("gaps");
        let first = |millis: i64| first_seq_at(&store.writer(), millis).expect("bisect");
        for (millis, expected) in [
            (0, Some(1)),
            (10, Some(1)),
            (11, Some(3)),
            (20, Some(3)),
            (21, Some(4)),
            (31, Some(7)),
            (45, Some(7)),
            (60, Some(7)),
            (61, Some(8)),
            (90, Some(10)),
            (91, None),
        ] {
            assert_eq!(first(millis), expected, "first event at or after {millis}");
        }
        let since = |millis: i64| -> Vec<u64> {
            store
                .query(&EventQuery {
                    since_millis: Some(millis),
                    until_millis: Some(85),
                    limit: 100,
                    ..Default::default()
                })
                .expect("query")
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(since(25), [4, 7, 8, 9]);
        assert_eq!(since(95), Vec::<u64>::new());
        let empty = tempfile::tempdir().expect("tempdir");
        let none = SqliteStore::open(&SqliteStore::path_in(empty.path())).expect("open");
        assert_eq!(first_seq_at(&none.writer(), 0).expect("bisect"), None);
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
                    60_000,
                ),
                by(
                    EventAction::Push,
                    bob.clone(),
                    app(Some("v1"), "sha256:bb"),
                    120_000,
                ),
                by(
                    EventAction::Pull,
                    alice.clone(),
                    app(Some("v1"), "sha256:aa"),
                    90_000,
                ),
                by(
                    EventAction::Pull,
                    node("n1"),
                    app(None, "sha256:bb"),
                    180_000,
                ),
                by(
                    EventAction::Pull,
                    node("n2"),
                    app(Some("v1"), "sha256:bb"),
                    240_000,
                ),
                by(
                    EventAction::Pull,
                    node("n1"),
                    app(Some("v1"), "sha256:bb"),
                    300_000,
                ),
                by(
                    EventAction::Pull,
                    bob.clone(),
                    app(Some("v1"), "sha256:bb"),
                    360_000,
                ),
                by(
                    EventAction::Pull,
                    bob.clone(),
                    ("team-b/lib", None, "sha256:cc"),
                    420_000,
                ),
            ])
            .expect("append");
        let repos = vec!["team-a/app".to_owned()];
        let mut stats = store.pull_stats(&repos, 300_000, 180_000).expect("stats");
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
                    last_millis: 90_000,
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
                    last_millis: 360_000,
                    last_actor: "user:bob".into(),
                    pullers: 3,
                    nodes: vec!["n1".into(), "n2".into()],
                },
            ]
        );
        let mut pushes = store.last_pushes(&repos).expect("pushes");
        pushes.sort_by(|a, b| a.digest.cmp(&b.digest));
        // One per digest the tag was pushed with: the report takes the one of the digest the tag holds.
        assert_eq!(
            pushes,
            [
                PushRecord {
                    repository: "team-a/app".into(),
                    tag: "v1".into(),
                    digest: Some("sha256:aa".into()),
                    millis: 60_000,
                    actor: "user:alice".into(),
                },
                PushRecord {
                    repository: "team-a/app".into(),
                    tag: "v1".into(),
                    digest: Some("sha256:bb".into()),
                    millis: 120_000,
                    actor: "user:bob".into(),
                }
            ]
        );
        // The grouped pull counts read the `pulls` table by its key, not the events.
        let plan: Vec<String> = store
            .read(|connection| {
                let mut statement = connection.prepare(
                    "EXPLAIN QUERY PLAN SELECT repository, digest,
                         sum(count), max(last_ms), actor, count(DISTINCT actor) FROM pulls
                     WHERE repository IN (?)
                     GROUP BY repository, digest",
                )?;
                let rows = statement.query_map(["team-a/app"], |row| row.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .expect("plan");
        assert!(
            plan.iter()
                .any(|step| step.contains("SEARCH pulls USING PRIMARY KEY")),
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
        assert_eq!(schema_of(&store), SCHEMA_VERSION);
    }
}
