//! One event as one row (schema 3): every field of an event that most events have in a column of its own, and
//! what is left (an admission's details, an error's code and message, the extra names of a target, an actor the
//! `actor` column cannot say in full) as a small JSON document in `rest`, absent when nothing is left. A pull is
//! stored without any JSON: under the manifest-GET benchmark, encoding every event as one JSON document and
//! writing it twice its size cost the writer most of its time. Rows from before schema 3 keep their whole event
//! as JSON in `body`; a row of schema 3 has an empty `body`, so both read back the same.
//!
//! Must not: lose or change a field on the way through; [`insert`] then [`read`] gives back the event as given
//! (its time to the millisecond, which is what [`Event::new`] makes).

use std::borrow::Cow;

use rusqlite::{params, Row, Statement};
use serde::{Deserialize, Serialize};

use super::super::model::{Actor, ActorKind, Admission, Client, Event, EventAction, Outcome};
use super::super::store::{Result, StoreError, StoredEvent};

/// The columns [`read`] reads, in its order.
pub(super) const COLUMNS: &str =
    "seq, body, id, time_ms, action, actor, repository, digest, tag, status, \
     request_id, address, user_agent, media_type, size, instance, rest";

/// The statement [`insert`] runs.
pub(super) const INSERT: &str =
    "INSERT INTO events (id, time_ms, action, actor, namespace, repository, body, \
     digest, tag, status, request_id, address, user_agent, media_type, size, instance, rest)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

/// The columns schema 3 adds to a store made before it (`ALTER TABLE events ADD COLUMN …`).
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

/// What of an event its columns do not hold.
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

/// Stores `event` with the [`INSERT`] statement.
pub(super) fn insert(statement: &mut Statement<'_>, event: &Event) -> Result<()> {
    let subject = event.actor.subject();
    let client = event.client.as_ref();
    let target = &event.target;
    let rest = Rest {
        actor: (actor_of_subject(&subject).as_ref() != Some(&event.actor))
            .then_some(Cow::Borrowed(&event.actor)),
        empty_client: client.is_some_and(|c| c.address.is_none() && c.user_agent.is_none()),
        old_digest: target.old_digest.as_deref().map(Cow::Borrowed),
        from: target.from.as_deref().map(Cow::Borrowed),
        upstream: target.upstream.as_deref().map(Cow::Borrowed),
        scope: target.scope.as_deref().map(Cow::Borrowed),
        admission: event.admission.as_ref().map(Cow::Borrowed),
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
        event.id,
        event.unix_millis(),
        event.action.as_str(),
        subject,
        event.namespace(),
        target.repository,
        target.digest,
        target.tag,
        event.result.status,
        event.request_id,
        client.and_then(|c| c.address.as_deref()),
        client.and_then(|c| c.user_agent.as_deref()),
        target.media_type,
        target.size.map(sql_int),
        event.instance,
        rest,
    ])?;
    Ok(())
}

/// The event of a row selected with [`COLUMNS`]; [`StoreError::Unreadable`] when it does not decode.
pub(super) fn read(row: &Row<'_>) -> Result<StoredEvent> {
    let seq = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
    let unreadable = |why: String| StoreError::Unreadable { seq, why };
    let body: String = row.get(1)?;
    if !body.is_empty() {
        // Stored before schema 3: the whole event as JSON.
        let event = serde_json::from_str(&body).map_err(|e| unreadable(e.to_string()))?;
        return Ok(StoredEvent { seq, event });
    }
    let rest: Rest<'static> = match row.get::<_, Option<String>>(16)? {
        Some(json) => serde_json::from_str(&json).map_err(|e| unreadable(e.to_string()))?,
        None => Rest::default(),
    };
    let action: String = row.get(4)?;
    let action = EventAction::parse(&action)
        .ok_or_else(|| unreadable(format!("unknown action {action:?}")))?;
    let subject: String = row.get(5)?;
    let actor = match rest.actor {
        Some(actor) => actor.into_owned(),
        None => actor_of_subject(&subject)
            .ok_or_else(|| unreadable(format!("actor {subject:?} without its details")))?,
    };
    let millis: i64 = row.get(3)?;
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .map_err(|e| unreadable(e.to_string()))?;
    let address: Option<String> = row.get(11)?;
    let user_agent: Option<String> = row.get(12)?;
    let client =
        (address.is_some() || user_agent.is_some() || rest.empty_client).then_some(Client {
            address,
            user_agent,
        });
    let status: i64 = row.get::<_, Option<i64>>(9)?.unwrap_or(0);
    let size: Option<i64> = row.get(14)?;
    let event = Event {
        id: row.get(2)?,
        time,
        action,
        actor,
        client,
        target: super::super::model::Target {
            repository: row.get(6)?,
            tag: row.get(8)?,
            digest: row.get(7)?,
            media_type: row.get(13)?,
            size: size.map(|s| u64::try_from(s).unwrap_or(0)),
            old_digest: rest.old_digest.map(Cow::into_owned),
            from: rest.from.map(Cow::into_owned),
            upstream: rest.upstream.map(Cow::into_owned),
            scope: rest.scope.map(Cow::into_owned),
        },
        admission: rest.admission.map(Cow::into_owned),
        result: Outcome {
            status: u16::try_from(status).map_err(|e| unreadable(e.to_string()))?,
            code: rest.code.map(Cow::into_owned),
            message: rest.message.map(Cow::into_owned),
        },
        request_id: row.get(10)?,
        instance: row.get::<_, Option<String>>(15)?.unwrap_or_default(),
    };
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
