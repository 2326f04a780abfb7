//! What one event says: the operation ([`EventAction`]), who did it ([`Actor`]), from where ([`Client`]), on what
//! ([`Target`], or the admission details [`Admission`]), and how it ended ([`Outcome`]). Plain data with its JSON
//! shape (camelCase, absent fields left out), which the API and notifications send (the SQLite store keeps it in
//! columns, see `sqlite/row.rs`). Pure: no I/O, no knowledge of HTTP or of the store.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::auth::Identity;

/// One operation berth did or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Sortable and unique: 48 bits of milliseconds since the epoch and 80 random bits, Crockford base32 (a ULID).
    /// Ids made in one process increase strictly.
    pub id: String,
    /// When it happened: RFC 3339 in UTC with milliseconds.
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    pub action: EventAction,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Client>,
    /// What the operation was on (registry events).
    #[serde(default, skip_serializing_if = "Target::is_empty")]
    pub target: Target,
    /// What was admitted, denied, warned about or mutated (admission events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Box<Admission>>,
    pub result: Outcome,
    /// The request's id (`X-Request-Id`, given by the client or made by berth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The berth that recorded it (`--instance`, by default the pod's or host's name); one string that every event
    /// of this berth shares.
    pub instance: Arc<str>,
}

impl Event {
    /// An event of `action` by `actor` now, with a fresh id, an empty target and a 200 result: the caller fills
    /// in the rest.
    pub fn new(
        action: EventAction,
        actor: Actor,
        instance: impl Into<Arc<str>>,
        now: SystemTime,
    ) -> Event {
        Event {
            id: new_id(now),
            time: to_millisecond(now),
            action,
            actor,
            client: None,
            target: Target::default(),
            admission: None,
            result: Outcome::ok(200),
            request_id: None,
            instance: instance.into(),
        }
    }

    /// The namespace an event is about: an admission's namespace, else the actor's (a ServiceAccount's).
    pub fn namespace(&self) -> Option<&str> {
        self.admission
            .as_ref()
            .map(|a| a.namespace.as_str())
            .or(self.actor.namespace.as_deref())
    }

    /// Milliseconds since the epoch of [`Event::time`] (what the store indexes and filters on).
    pub fn unix_millis(&self) -> i64 {
        i64::try_from(self.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }
}

/// The operations berth records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventAction {
    /// A manifest stored (by tag or digest).
    Push,
    /// A manifest sent (one per manifest GET; HEADs and blob bytes are counted in the metrics, not logged).
    Pull,
    /// A manifest, tag or blob deleted.
    Delete,
    /// A push moved a tag from one digest to another.
    TagMoved,
    /// A blob mounted from another repository.
    Mount,
    /// An upload refused at its end (the digest did not match, or was invalid).
    UploadRejected,
    /// Credentials refused, or an identity refused what it asked (401/403), with the attempted scope.
    AuthFailed,
    /// The pull-through cache fetched a manifest or blob from an upstream.
    ProxyFetch,
    /// `/validate` allowed an object.
    Admitted,
    /// `/validate` refused an object.
    Denied,
    /// `/validate` allowed an object with warnings (audit mode, or a rule's warning).
    Warned,
    /// `/mutate` rewrote an object's images.
    Mutated,
}

impl EventAction {
    /// Every action, in the order of the enum.
    pub const ALL: [EventAction; 12] = [
        EventAction::Push,
        EventAction::Pull,
        EventAction::Delete,
        EventAction::TagMoved,
        EventAction::Mount,
        EventAction::UploadRejected,
        EventAction::AuthFailed,
        EventAction::ProxyFetch,
        EventAction::Admitted,
        EventAction::Denied,
        EventAction::Warned,
        EventAction::Mutated,
    ];

    /// The action's name in events, filters and the CLI (`tag-moved`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Push => "push",
            EventAction::Pull => "pull",
            EventAction::Delete => "delete",
            EventAction::TagMoved => "tag-moved",
            EventAction::Mount => "mount",
            EventAction::UploadRejected => "upload-rejected",
            EventAction::AuthFailed => "auth-failed",
            EventAction::ProxyFetch => "proxy-fetch",
            EventAction::Admitted => "admitted",
            EventAction::Denied => "denied",
            EventAction::Warned => "warned",
            EventAction::Mutated => "mutated",
        }
    }

    /// The action named `name` ([`EventAction::as_str`]).
    pub fn parse(name: &str) -> Option<EventAction> {
        EventAction::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether the client's answer waits until the event is durably stored: what changes content (push, delete, a
    /// tag moved, a mount). Pulls, refusals and admission decisions are committed within about a second.
    pub fn durable(self) -> bool {
        matches!(
            self,
            EventAction::Push | EventAction::Delete | EventAction::TagMoved | EventAction::Mount
        )
    }
}

impl std::fmt::Display for EventAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub kind: ActorKind,
    /// The user's or ServiceAccount's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A ServiceAccount's namespace (the node proxy's too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The node the node proxy runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The kinds of actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    Anonymous,
    User,
    #[serde(rename = "serviceaccount")]
    ServiceAccount,
    NodeProxy,
    /// The Kubernetes API server calling a webhook (admission events; the object's ServiceAccount is in
    /// [`Admission::service_account`]).
    Kubernetes,
    /// berth itself (the pull-through cache fetching from an upstream, background work).
    Berth,
}

impl Actor {
    /// Nobody authenticated (auth off, or no credentials).
    pub fn anonymous() -> Actor {
        Actor::of_kind(ActorKind::Anonymous)
    }

    /// An actor with only a kind.
    pub fn of_kind(kind: ActorKind) -> Actor {
        Actor {
            kind,
            name: None,
            namespace: None,
            node: None,
        }
    }

    /// The subject as access rules and filters spell it: `user:alice`, `serviceaccount:team-a/ci`,
    /// `node-proxy:node-1`, `anonymous`, `kubernetes`, `berth`.
    pub fn subject(&self) -> String {
        let name = self.name.as_deref().unwrap_or("");
        match self.kind {
            ActorKind::Anonymous => "anonymous".to_owned(),
            ActorKind::User => format!("user:{name}"),
            ActorKind::ServiceAccount => {
                format!(
                    "serviceaccount:{}/{name}",
                    self.namespace.as_deref().unwrap_or("")
                )
            }
            ActorKind::NodeProxy => match &self.node {
                Some(node) => format!("node-proxy:{node}"),
                None => "node-proxy".to_owned(),
            },
            ActorKind::Kubernetes => "kubernetes".to_owned(),
            ActorKind::Berth => "berth".to_owned(),
        }
    }
}

impl From<&Identity> for Actor {
    fn from(identity: &Identity) -> Actor {
        match identity {
            Identity::Anonymous => Actor::anonymous(),
            Identity::User { name } => Actor {
                name: Some(name.clone()),
                ..Actor::of_kind(ActorKind::User)
            },
            Identity::ServiceAccount {
                namespace, name, ..
            } => Actor {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Actor::of_kind(ActorKind::ServiceAccount)
            },
            Identity::NodeProxy {
                namespace,
                name,
                node,
            } => Actor {
                kind: ActorKind::NodeProxy,
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                node: node.clone(),
            },
        }
    }
}

/// Where the request came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// What a registry operation was on. Every field is optional: a refused request may name only a repository.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `tag-moved`: the digest the tag pointed at before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_digest: Option<String>,
    /// `mount`: the repository the blob came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `proxy-fetch`: the upstream asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `auth-failed`: the scope that was asked for (`repository:team-a/app:push`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Target {
    pub fn is_empty(&self) -> bool {
        self == &Target::default()
    }
}

/// An admission decision's details.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    pub namespace: String,
    /// The object's kind (`Pod`, `Deployment`, …) and name (a pod made by a controller may have only a
    /// generateName).
    pub kind: String,
    pub name: String,
    /// CREATE, UPDATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The object's ServiceAccount (`default` when the pod names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    pub containers: Vec<AdmittedContainer>,
    /// The rule that decided, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The warnings given with an allowed object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A dry run (`kubectl apply --dry-run=server`, a GitOps diff): decided, but nothing was created or changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Containers of the object not recorded (an event keeps at most the first 64).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_containers: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One container of an admitted object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmittedContainer {
    pub name: String,
    pub image: String,
    /// `mutated`: the image it was rewritten to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten: Option<String>,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The HTTP status answered (200 for an admission answer, whatever it decided).
    pub status: u16,
    /// The OCI error code of a refusal (`DENIED`, `DIGEST_INVALID`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Outcome {
    pub fn ok(status: u16) -> Outcome {
        Outcome {
            status,
            code: None,
            message: None,
        }
    }
}

/// `now` to the millisecond: what an event says and the store keeps.
fn to_millisecond(now: SystemTime) -> time::OffsetDateTime {
    let exact = time::OffsetDateTime::from(now);
    exact
        .replace_nanosecond(u32::from(exact.millisecond()) * 1_000_000)
        .unwrap_or(exact)
}

/// The last id made and the milliseconds it was made in, so ids made in one millisecond still increase.
static LAST_ID: std::sync::Mutex<(u64, u128)> = std::sync::Mutex::new((0, 0));

/// A ULID for `now`: strictly greater than every id this process made before (within one millisecond, or when the
/// clock steps back, the previous id plus one).
pub fn new_id(now: SystemTime) -> String {
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        & ((1 << 48) - 1);
    let random = ((u128::from(random_u64()) << 64) | u128::from(random_u64())) & ((1 << 80) - 1);
    let fresh = (u128::from(millis) << 80) | random;
    let value = {
        let mut last = LAST_ID
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let value = if fresh > last.1 {
            fresh
        } else {
            last.1.wrapping_add(1)
        };
        *last = (millis, value);
        value
    };
    encode_base32(value)
}

thread_local! {
    /// The state of this thread's id generator, seeded once from the system's randomness.
    static RANDOM: std::cell::Cell<u64> = std::cell::Cell::new(
        u64::from_le_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[1; 8])),
    );
}

/// 64 random bits for an id's random part (splitmix64 over a per-thread seed): ids need to be unique, which the
/// strictly increasing [`new_id`] guarantees, not unpredictable, and a system call per id (two per recorded request)
/// cost the manifest-GET benchmark measurably.
fn random_u64() -> u64 {
    RANDOM.with(|state| {
        let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Crockford's base32 of a 128-bit value, 26 characters (the ULID text form).
pub fn encode_base32(value: u128) -> String {
    let mut text = [0u8; 26];
    for (i, c) in text.iter_mut().rev().enumerate() {
        *c = ULID_ALPHABET[((value >> (i * 5)) & 31) as usize];
    }
    // The alphabet is ASCII.
    String::from_utf8_lossy(&text).into_owned()
}

/// The 128-bit value of a ULID in its canonical text form (what [`encode_base32`] makes: 26 characters of
/// Crockford's alphabet in upper case, at most 128 bits); `None` for anything else, so that encoding the value
/// gives back exactly `text`.
pub fn decode_base32(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 26 || bytes[0] > b'7' {
        return None;
    }
    bytes
        .iter()
        .try_fold(0u128, |value, &c| match ULID_DIGITS[usize::from(c)] {
            NOT_A_DIGIT => None,
            digit => Some((value << 5) | u128::from(digit)),
        })
}

const ULID_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

const NOT_A_DIGIT: u8 = u8::MAX;

/// The value of each byte as a digit of [`ULID_ALPHABET`] ([`NOT_A_DIGIT`] for the others).
const ULID_DIGITS: [u8; 256] = {
    let mut digits = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ULID_ALPHABET.len() {
        digits[ULID_ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    digits
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_are_ulids_that_increase_within_a_millisecond_and_when_the_clock_steps_back() {
        let now = UNIX_EPOCH + Duration::from_millis(1_764_600_000_000);
        let first = new_id(now);
        let second = new_id(now);
        let earlier = new_id(now - Duration::from_secs(5));
        assert_eq!(first.len(), 26);
        assert!(first < second, "{first} < {second}");
        assert!(second < earlier, "{second} < {earlier}");
        let later = new_id(now + Duration::from_secs(1));
        assert!(earlier < later);
        assert!(later.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn canonical_ulids_decode_to_the_value_they_encode_and_nothing_else_does() {
        for value in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let text = encode_base32(value);
            assert_eq!(text.len(), 26);
            assert_eq!(decode_base32(&text), Some(value), "{text}");
        }
        let id = new_id(UNIX_EPOCH + Duration::from_millis(1_764_600_000_000));
        assert_eq!(decode_base32(&id).map(encode_base32), Some(id.clone()));
        for other in [
            "",
            "client-id-1",
            &id.to_lowercase(),
            &id[..25],
            &format!("{id}0"),
            // More than 128 bits.
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            // Letters Crockford leaves out.
            "01ARZ3NDEKTSV4RRFFQ69G5FAI",
            "01ARZ3NDEKTSV4RRFFQ69G5FAU",
        ] {
            assert_eq!(decode_base32(other), None, "{other:?}");
        }
    }

    #[test]
    fn actors_spell_their_subject_like_the_access_rules() {
        let check = |identity: Identity, expected: &str| {
            assert_eq!(Actor::from(&identity).subject(), expected);
        };
        check(Identity::Anonymous, "anonymous");
        check(
            Identity::User {
                name: "alice".into(),
            },
            "user:alice",
        );
        check(
            Identity::service_account("team-a", "ci", &[]),
            "serviceaccount:team-a/ci",
        );
        check(
            Identity::NodeProxy {
                namespace: "berth-system".into(),
                name: "berth-node-proxy".into(),
                node: Some("node-1".into()),
            },
            "node-proxy:node-1",
        );
    }

    #[test]
    fn the_json_shape_leaves_out_what_is_absent() {
        let mut event = Event::new(
            EventAction::TagMoved,
            Actor::anonymous(),
            "berth-0",
            UNIX_EPOCH + Duration::from_millis(1_764_600_000_123),
        );
        event.target.repository = Some("team-a/app".into());
        event.target.old_digest = Some("sha256:aa".into());
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["action"], "tag-moved");
        assert_eq!(json["time"], "2025-12-01T14:40:00.123Z");
        assert_eq!(json["target"]["oldDigest"], "sha256:aa");
        assert_eq!(json["actor"], serde_json::json!({"kind": "anonymous"}));
        assert!(json.get("admission").is_none());
        let back: Event = serde_json::from_value(json).expect("back");
        assert_eq!(back, event);
        for action in EventAction::ALL {
            assert_eq!(EventAction::parse(action.as_str()), Some(action));
        }
    }
}
