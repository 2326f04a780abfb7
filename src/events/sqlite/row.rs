//! One event as one row (schema 4). An event is mostly what the events before it were too: who asked, from where
//! and through which berth (a **source**: actor, client address, user agent, instance) and what about (a
//! **target**: repository, tag, digest, media type, size). Those are rows of their own in `sources` and
//! `targets`, and an event row refers to them by number; the rest of an event is a handful of numbers, its id
//! and request id as 16 bytes when they are ULIDs (text otherwise), and what few events have (an admission's
//! details, an error's code and message, the extra names of a target) as a small JSON document in `rest`,
//! absent when nothing is left. A pull's row is about 80 bytes and has no JSON: under the manifest-GET benchmark
//! the writer's time goes by the bytes and the values it binds (schema 3, with every field in a column of its
//! own, took twice as long per event).
//!
//! Must not: lose or change a field on the way through; [`insert`] then [`read`] gives back the event as given
//! (its time to the millisecond, which is what [`Event::new`] makes).

use std::borrow::Cow;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, Statement, ToSql};
use serde::{Deserialize, Serialize};

use super::super::model::{
    decode_base32, encode_base32, Actor, ActorKind, Admission, Client, Event, EventAction, Outcome,
    Target,
};
use super::super::store::{Result, StoreError, StoredEvent};

/// The tables of schema 4 (the report tables `pulls` and `tags` are the same as in schema 3). A source or target
/// row keeps the last sequence number that refers to it, so that pruning can drop those no event refers to any
/// more. `seq` is given by the writer, not by SQLite, so that it never goes back even when every event is pruned.
pub(super) const CREATE: &str = "
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id BLOB NOT NULL,
        time_ms INTEGER NOT NULL,
        action TEXT NOT NULL,
        source INTEGER NOT NULL,
        target INTEGER,
        namespace TEXT,
        status INTEGER NOT NULL,
        request_id BLOB,
        rest TEXT
    );
    CREATE INDEX events_target ON events (target, seq);
    CREATE TABLE sources (
        ref INTEGER PRIMARY KEY,
        actor TEXT NOT NULL,
        actor_detail TEXT,
        namespace TEXT,
        client INTEGER NOT NULL,
        address TEXT,
        user_agent TEXT,
        instance TEXT NOT NULL,
        last_seq INTEGER NOT NULL
    );
    CREATE INDEX sources_actor ON sources (actor);
    CREATE INDEX sources_last ON sources (last_seq);
    CREATE TABLE targets (
        ref INTEGER PRIMARY KEY,
        repository TEXT,
        tag TEXT,
        digest TEXT,
        media_type TEXT,
        size INTEGER,
        last_seq INTEGER NOT NULL
    );
    CREATE INDEX targets_repository ON targets (repository, digest);
    CREATE INDEX targets_last ON targets (last_seq);";

/// What [`read`] reads, from `events e` joined with its source `s` and target `t`.
pub(super) const SELECT: &str =
    "SELECT e.seq, e.id, e.time_ms, e.action, e.status, e.request_id, e.rest, \
     s.actor, s.actor_detail, s.client, s.address, s.user_agent, s.instance, \
     t.repository, t.tag, t.digest, t.media_type, t.size \
     FROM events e JOIN sources s ON s.ref = e.source LEFT JOIN targets t ON t.ref = e.target";

/// The statement [`insert`] runs.
pub(super) const INSERT: &str =
    "INSERT INTO events (seq, id, time_ms, action, source, target, namespace, status, request_id, rest)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// The columns of a schema-3 row, in the order [`read_v3`] reads them.
pub(super) const COLUMNS_V3: &str =
    "seq, body, id, time_ms, action, actor, repository, digest, tag, status, \
     request_id, address, user_agent, media_type, size, instance, rest";

/// The columns schema 3 added to a store made before it (`ALTER TABLE events ADD COLUMN …`).
pub(super) const ADDED_COLUMNS: [&str; 8] = [
    "status INTEGER",
    "request_id TEXT",
    "address TEXT",
    "user_agent TEXT",
    "media_type TEXT",
    "size INTEGER",
    "instance TEXT",
    "rest TEXT",
];

/// What of an event its columns and its source and target do not hold (in schema 3, also the actor and an
/// empty client, which schema 4 keeps in `sources`).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rest<'a> {
    /// The actor, when its subject (the `actor` column) does not say all of it (a node proxy's ServiceAccount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor: Option<Cow<'a, Actor>>,
    /// A client without address or user agent (`None` for one is no client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    empty_client: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    old_digest: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admission: Option<Cow<'a, Admission>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<Cow<'a, str>>,
}

/// The actor a subject names when the subject says all of it: `anonymous`, `kubernetes`, `berth`,
/// `user:NAME`, `serviceaccount:NAMESPACE/NAME`.
fn actor_of_subject(subject: &str) -> Option<Actor> {
    let named = |kind, name: &str, namespace: Option<&str>| Actor {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..Actor::of_kind(kind)
    };
    match subject {
        "anonymous" => Some(Actor::anonymous()),
        "kubernetes" => Some(Actor::of_kind(ActorKind::Kubernetes)),
        "berth" => Some(Actor::of_kind(ActorKind::Berth)),
        _ => {
            if let Some(name) = subject.strip_prefix("user:") {
                Some(named(ActorKind::User, name, None))
            } else {
                let (namespace, name) = subject.strip_prefix("serviceaccount:")?.split_once('/')?;
                Some(named(ActorKind::ServiceAccount, name, Some(namespace)))
            }
        }
    }
}

fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An id as stored: the 16 bytes of a ULID in its canonical text form, any other text as it is.
struct StoredId<'a>(&'a str);

impl ToSql for StoredId<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match decode_base32(self.0) {
            Some(value) => ToSqlOutput::Owned(Value::Blob(value.to_be_bytes().to_vec())),
            None => ToSqlOutput::Borrowed(ValueRef::Text(self.0.as_bytes())),
        })
    }
}

/// The text of an id stored by [`StoredId`] (`None` for NULL).
fn read_id(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Null => None,
        ValueRef::Blob(bytes) => match <[u8; 16]>::try_from(bytes) {
            Ok(bytes) => Some(encode_base32(u128::from_be_bytes(bytes))),
            Err(_) => {
                return Err(rusqlite::Error::InvalidColumnType(
                    index,
                    "id".into(),
                    rusqlite::types::Type::Blob,
                ))
            }
        },
        ValueRef::Text(text) => Some(String::from_utf8_lossy(text).into_owned()),
        other => {
            return Err(rusqlite::Error::InvalidColumnType(
                index,
                "id".into(),
                other.data_type(),
            ))
        }
    })
}

/// The rows an event refers to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refs {
    pub source: i64,
    /// `None` for an event without repository, tag, digest, media type or size.
    pub target: Option<i64>,
}

/// Stores `event` as number `seq` with the [`INSERT`] statement.
pub(super) fn insert(
    statement: &mut Statement<'_>,
    seq: i64,
    event: &Event,
    refs: Refs,
) -> Result<()> {
    let target = &event.target;
    let rest = Rest {
        actor: None,
        empty_client: false,
        old_digest: target.old_digest.as_deref().map(Cow::Borrowed),
        from: target.from.as_deref().map(Cow::Borrowed),
        upstream: target.upstream.as_deref().map(Cow::Borrowed),
        scope: target.scope.as_deref().map(Cow::Borrowed),
        admission: event.admission.as_deref().map(Cow::Borrowed),
        code: event.result.code.as_deref().map(Cow::Borrowed),
        message: event.result.message.as_deref().map(Cow::Borrowed),
    };
    let rest = if rest == Rest::default() {
        None
    } else {
        Some(
            serde_json::to_string(&rest)
                .map_err(|e| StoreError::Database(format!("encoding event: {e}")))?,
        )
    };
    statement.execute(params![
        seq,
        StoredId(&event.id),
        event.unix_millis(),
        event.action.as_str(),
        refs.source,
        refs.target,
        event.admission.as_ref().map(|a| a.namespace.as_str()),
        event.result.status,
        event.request_id.as_deref().map(StoredId),
        rest,
    ])?;
    Ok(())
}

/// A source as stored: the actor's subject (what filters and the report tables name it by), the whole actor as
/// JSON when the subject does not say all of it (a node proxy's ServiceAccount), its namespace (for the
/// namespace filter), whether the event had a client at all, and the client's address and user agent.
pub(super) fn find_or_insert_source(
    connection: &Connection,
    actor: &Actor,
    client: Option<&Client>,
    instance: &str,
    seq: i64,
) -> Result<(i64, String)> {
    let subject = actor.subject();
    let detail = if actor_of_subject(&subject).as_ref() == Some(actor) {
        None
    } else {
        Some(
            serde_json::to_string(actor)
                .map_err(|e| StoreError::Database(format!("encoding actor: {e}")))?,
        )
    };
    let address = client.and_then(|c| c.address.as_deref());
    let user_agent = client.and_then(|c| c.user_agent.as_deref());
    let found: Option<i64> = connection
        .prepare_cached(
            "SELECT ref FROM sources WHERE actor = ?1 AND actor_detail IS ?2 AND client = ?3
                 AND address IS ?4 AND user_agent IS ?5 AND instance = ?6 LIMIT 1",
        )?
        .query_row(
            params![
                subject,
                detail,
                client.is_some(),
                address,
                user_agent,
                instance
            ],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(found) = found {
        return Ok((found, subject));
    }
    connection
        .prepare_cached(
            "INSERT INTO sources (actor, actor_detail, namespace, client, address, user_agent, instance, last_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            subject,
            detail,
            actor.namespace,
            client.is_some(),
            address,
            user_agent,
            instance,
            seq
        ])?;
    Ok((connection.last_insert_rowid(), subject))
}

/// A target as stored (the names only some events have go in `rest`): the row that holds its repository, tag,
/// digest, media type and size, made when there is none.
pub(super) fn find_or_insert_target(
    connection: &Connection,
    target: &Target,
    seq: i64,
) -> Result<i64> {
    let size = target.size.map(sql_int);
    let found: Option<i64> = connection
        .prepare_cached(
            "SELECT ref FROM targets WHERE repository IS ?1 AND tag IS ?2 AND digest IS ?3
                 AND media_type IS ?4 AND size IS ?5 LIMIT 1",
        )?
        .query_row(
            params![
                target.repository,
                target.tag,
                target.digest,
                target.media_type,
                size
            ],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(found) = found {
        return Ok(found);
    }
    connection
        .prepare_cached(
            "INSERT INTO targets (repository, tag, digest, media_type, size, last_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            target.repository,
            target.tag,
            target.digest,
            target.media_type,
            size,
            seq
        ])?;
    Ok(connection.last_insert_rowid())
}

/// What an event's columns (with its source and target rows) say: [`Columns::event`] completes it with its
/// [`Rest`].
struct Columns {
    id: String,
    millis: i64,
    action: String,
    actor: Actor,
    client: Option<Client>,
    /// Its repository, tag, digest, media type and size.
    target: Target,
    status: i64,
    request_id: Option<String>,
    instance: String,
}

impl Columns {
    /// The event, or why it is unreadable.
    fn event(self, rest: Rest<'static>) -> std::result::Result<Event, String> {
        let action = EventAction::parse(&self.action)
            .ok_or_else(|| format!("unknown action {:?}", self.action))?;
        let time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.millis) * 1_000_000)
                .map_err(|e| e.to_string())?;
        Ok(Event {
            id: self.id,
            time,
            action,
            actor: self.actor,
            client: self.client,
            target: Target {
                old_digest: rest.old_digest.map(Cow::into_owned),
                from: rest.from.map(Cow::into_owned),
                upstream: rest.upstream.map(Cow::into_owned),
                scope: rest.scope.map(Cow::into_owned),
                ..self.target
            },
            admission: rest.admission.map(|a| Box::new(a.into_owned())),
            result: Outcome {
                status: u16::try_from(self.status).map_err(|e| e.to_string())?,
                code: rest.code.map(Cow::into_owned),
                message: rest.message.map(Cow::into_owned),
            },
            request_id: self.request_id,
            instance: self.instance.into(),
        })
    }
}

/// The `rest` document in column `index` (none: nothing left).
fn read_rest(row: &Row<'_>, index: usize) -> std::result::Result<Rest<'static>, String> {
    match row
        .get::<_, Option<String>>(index)
        .map_err(|e| e.to_string())?
    {
        Some(json) => serde_json::from_str(&json).map_err(|e| e.to_string()),
        None => Ok(Rest::default()),
    }
}

/// The actor a subject names, when it says all of it.
fn subject_actor(subject: &str) -> std::result::Result<Actor, String> {
    actor_of_subject(subject).ok_or_else(|| format!("actor {subject:?} without its details"))
}

fn size_of(size: Option<i64>) -> Option<u64> {
    size.map(|s| u64::try_from(s).unwrap_or(0))
}

/// The event of a row selected with [`SELECT`]; [`StoreError::Unreadable`] when it does not decode.
pub(super) fn read(row: &Row<'_>) -> Result<StoredEvent> {
    let seq = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
    let unreadable = |why: String| StoreError::Unreadable { seq, why };
    let rest = read_rest(row, 6).map_err(unreadable)?;
    let actor = match row.get::<_, Option<String>>(8)? {
        Some(json) => serde_json::from_str(&json).map_err(|e| unreadable(e.to_string()))?,
        None => subject_actor(&row.get::<_, String>(7)?).map_err(unreadable)?,
    };
    let client = if row.get::<_, bool>(9)? {
        Some(Client {
            address: row.get(10)?,
            user_agent: row.get(11)?,
        })
    } else {
        None
    };
    let columns = Columns {
        id: read_id(row, 1)?.ok_or_else(|| unreadable("no id".into()))?,
        millis: row.get(2)?,
        action: row.get(3)?,
        actor,
        client,
        target: Target {
            repository: row.get(13)?,
            tag: row.get(14)?,
            digest: row.get(15)?,
            media_type: row.get(16)?,
            size: size_of(row.get(17)?),
            ..Target::default()
        },
        status: row.get(4)?,
        request_id: read_id(row, 5)?,
        instance: row.get(12)?,
    };
    let event = columns.event(rest).map_err(unreadable)?;
    Ok(StoredEvent { seq, event })
}

/// The event of a schema-3 row selected with [`COLUMNS_V3`] (what [`super::migrate_to_v4`] copies);
/// [`StoreError::Unreadable`] when it does not decode.
pub(super) fn read_v3(row: &Row<'_>) -> Result<StoredEvent> {
    let seq = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
    let unreadable = |why: String| StoreError::Unreadable { seq, why };
    let body: String = row.get(1)?;
    if !body.is_empty() {
        // Stored before schema 3: the whole event as JSON.
        let event = serde_json::from_str(&body).map_err(|e| unreadable(e.to_string()))?;
        return Ok(StoredEvent { seq, event });
    }
    let mut rest = read_rest(row, 16).map_err(unreadable)?;
    let actor = match rest.actor.take() {
        Some(actor) => actor.into_owned(),
        None => subject_actor(&row.get::<_, String>(5)?).map_err(unreadable)?,
    };
    let address: Option<String> = row.get(11)?;
    let user_agent: Option<String> = row.get(12)?;
    let client =
        (address.is_some() || user_agent.is_some() || rest.empty_client).then_some(Client {
            address,
            user_agent,
        });
    let columns = Columns {
        id: row.get(2)?,
        millis: row.get(3)?,
        action: row.get(4)?,
        actor,
        client,
        target: Target {
            repository: row.get(6)?,
            tag: row.get(8)?,
            digest: row.get(7)?,
            media_type: row.get(13)?,
            size: size_of(row.get(14)?),
            ..Target::default()
        },
        status: row.get::<_, Option<i64>>(9)?.unwrap_or(0),
        request_id: row.get(10)?,
        instance: row.get::<_, Option<String>>(15)?.unwrap_or_default(),
    };
    let event = columns.event(rest).map_err(unreadable)?;
    Ok(StoredEvent { seq, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_that_say_the_whole_actor_are_read_back_and_others_are_not() {
        let check = |actor: Actor| {
            let subject = actor.subject();
            (actor_of_subject(&subject) == Some(actor), subject)
        };
        let named = |kind, name: &str, namespace: Option<&str>, node: Option<&str>| Actor {
            kind,
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            node: node.map(Into::into),
        };
        for (actor, whole) in [
            (Actor::anonymous(), true),
            (Actor::of_kind(ActorKind::Kubernetes), true),
            (Actor::of_kind(ActorKind::Berth), true),
            (named(ActorKind::User, "alice", None, None), true),
            (named(ActorKind::User, "a:b/c", None, None), true),
            (
                named(ActorKind::ServiceAccount, "ci", Some("team-a"), None),
                true,
            ),
            (
                named(
                    ActorKind::NodeProxy,
                    "berth-node-proxy",
                    Some("berth-system"),
                    Some("node-1"),
                ),
                false,
            ),
            (Actor::of_kind(ActorKind::NodeProxy), false),
            // A user without a name, a ServiceAccount without a namespace: not what the subject reads back as.
            (Actor::of_kind(ActorKind::User), false),
            (named(ActorKind::ServiceAccount, "ci", None, None), false),
        ] {
            assert_eq!(check(actor.clone()).0, whole, "{actor:?}");
        }
    }
}
