//! Building the registry's events: what a handler tells the front door it did ([`EventFacts`], carried up in the
//! response's extensions), who asked and from where ([`Request`]: the actor, the client, the request id), and how it
//! ended ([`Outcome`]) become the events [`crate::v2`] records, one per operation (a push to several tags: one per
//! tag, and one `tag-moved` per tag it moved). The request id a client sends is kept only when it is sane
//! ([`request_id`]); a User-Agent is bounded ([`user_agent`]).
//!
//! Pure: no I/O, no HTTP types (headers come in as bytes), no store. Must not decide what is recorded for which
//! route (the front door does) or re-derive what a handler knows.

use std::time::SystemTime;

use super::model::{Actor, ActorKind, Client, Event, EventAction, Outcome, Target};

/// The longest request id kept from a client (`X-Request-Id`); a longer one is replaced by a fresh id.
pub const MAX_REQUEST_ID: usize = 128;

/// The most characters of a User-Agent kept in an event.
pub const MAX_USER_AGENT: usize = 256;

/// What a handler did, as the events it makes: each an action and its target (repository, tag, digest, media type,
/// size, old digest, mount source, upstream). Put in the response's extensions by the handler and taken out by the
/// front door, which adds who, from where and the result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFacts {
    pub facts: Vec<Fact>,
}

/// One event a handler's work makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub action: EventAction,
    pub target: Target,
}

/// A tag a push set, and the digest it pointed at before (`None`: the tag is new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedTag {
    pub tag: String,
    pub old_digest: Option<String>,
}

/// A manifest a push stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest<'a> {
    pub repository: &'a str,
    pub digest: &'a str,
    pub media_type: &'a str,
    pub size: u64,
    /// The tags it set (none for a push by digest without `?tag=`).
    pub tags: &'a [PushedTag],
}

impl EventFacts {
    /// One fact.
    pub fn one(action: EventAction, target: Target) -> EventFacts {
        EventFacts {
            facts: vec![Fact { action, target }],
        }
    }

    /// A push: one `push` per tag set (one without a tag for a push by digest alone), then one `tag-moved` per tag
    /// that pointed at another digest before.
    pub fn pushed(pushed: &PushedManifest<'_>) -> EventFacts {
        let target = |tag: Option<&str>| Target {
            repository: Some(pushed.repository.to_owned()),
            tag: tag.map(str::to_owned),
            digest: Some(pushed.digest.to_owned()),
            media_type: Some(pushed.media_type.to_owned()),
            size: Some(pushed.size),
            ..Target::default()
        };
        let mut facts: Vec<Fact> = if pushed.tags.is_empty() {
            vec![Fact {
                action: EventAction::Push,
                target: target(None),
            }]
        } else {
            pushed
                .tags
                .iter()
                .map(|t| Fact {
                    action: EventAction::Push,
                    target: target(Some(&t.tag)),
                })
                .collect()
        };
        for tag in pushed.tags {
            match &tag.old_digest {
                Some(old) if old != pushed.digest => facts.push(Fact {
                    action: EventAction::TagMoved,
                    target: Target {
                        old_digest: Some(old.clone()),
                        ..target(Some(&tag.tag))
                    },
                }),
                _ => {}
            }
        }
        EventFacts { facts }
    }
}

/// Who asked and from where: what every event of one request shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub actor: Actor,
    pub client: Client,
    pub request_id: String,
}

impl Request {
    /// The events of `facts` for this request, each ended with `result`: the last one takes the request's actor,
    /// client and id rather than copies (most requests make one event).
    pub fn events(
        self,
        facts: Vec<Fact>,
        result: Outcome,
        instance: std::sync::Arc<str>,
        now: SystemTime,
    ) -> Vec<Event> {
        let mut events = Vec::with_capacity(facts.len());
        let mut facts = facts.into_iter().peekable();
        while let Some(fact) = facts.next() {
            let mut event = if facts.peek().is_some() {
                let mut event = Event::new(fact.action, self.actor.clone(), instance.clone(), now);
                event.client = Some(self.client.clone());
                event.request_id = Some(self.request_id.clone());
                event.result = result.clone();
                event
            } else {
                let mut event = Event::new(fact.action, self.actor, instance, now);
                event.client = Some(self.client);
                event.request_id = Some(self.request_id);
                event.result = result;
                event.target = fact.target;
                events.push(event);
                return events;
            };
            event.target = fact.target;
            events.push(event);
        }
        events
    }
}

/// The `proxy-fetch` event: berth (the pull-through cache) fetched `target` from its upstream.
pub fn proxy_fetch(target: Target, instance: &str, now: SystemTime) -> Event {
    let mut event = Event::new(
        EventAction::ProxyFetch,
        Actor::of_kind(ActorKind::Berth),
        instance,
        now,
    );
    event.target = target;
    event
}

/// The request id to use: the client's `X-Request-Id` when it is 1 to [`MAX_REQUEST_ID`] visible ASCII characters
/// (no spaces or controls, so it is safe in a header and a log line), else a fresh one (a ULID).
pub fn request_id(given: Option<&[u8]>, now: SystemTime) -> String {
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id.iter().all(|b| b.is_ascii_graphic()) =>
        {
            // Visible ASCII is UTF-8.
            String::from_utf8_lossy(id).into_owned()
        }
        _ => super::model::new_id(now),
    }
}

/// A User-Agent as kept in an event: its first [`MAX_USER_AGENT`] characters, bytes that are not UTF-8 replaced.
pub fn user_agent(given: &[u8]) -> String {
    let text = String::from_utf8_lossy(given);
    match text.char_indices().nth(MAX_USER_AGENT) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_764_600_000_000)
    }

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        let check = |given: Option<&[u8]>, kept: bool| {
            let id = request_id(given, now());
            match given {
                Some(given) if kept => assert_eq!(id.as_bytes(), given),
                _ => {
                    assert_eq!(id.len(), 26, "a fresh ULID for {given:?}, got {id}");
                    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
                }
            }
        };
        check(Some(b"abc-123"), true);
        check(Some(b"01HZY/trace=7;span=9"), true);
        check(Some("x".repeat(128).as_bytes()), true);
        check(Some("x".repeat(129).as_bytes()), false);
        check(Some(b""), false);
        check(Some(b"has space"), false);
        check(Some(b"tab\there"), false);
        check(Some(b"line\nbreak"), false);
        check(Some("caf\u{e9}".as_bytes()), false);
        check(None, false);
    }

    #[test]
    fn every_event_of_a_request_has_its_actor_client_id_and_result() {
        let request = Request {
            actor: Actor::of_kind(ActorKind::Berth),
            client: Client {
                address: Some("10.0.0.1".into()),
                user_agent: Some("docker/27".into()),
            },
            request_id: "req-1".into(),
        };
        let fact = |tag: &str| Fact {
            action: EventAction::Push,
            target: Target {
                tag: Some(tag.into()),
                ..Target::default()
            },
        };
        for tags in [vec![], vec!["a"], vec!["a", "b", "c"]] {
            let facts = tags.iter().map(|t| fact(t)).collect();
            let events = request
                .clone()
                .events(facts, Outcome::ok(201), "berth-0".into(), now());
            let made: Vec<Option<&str>> = events.iter().map(|e| e.target.tag.as_deref()).collect();
            assert_eq!(made, tags.iter().map(|t| Some(*t)).collect::<Vec<_>>());
            for event in &events {
                assert_eq!(
                    (
                        &event.actor,
                        event.client.as_ref(),
                        event.request_id.as_deref(),
                        event.result.status,
                        &*event.instance,
                    ),
                    (
                        &request.actor,
                        Some(&request.client),
                        Some("req-1"),
                        201,
                        "berth-0"
                    )
                );
            }
        }
    }

    #[test]
    fn user_agents_are_bounded_by_characters() {
        let check = |given: &[u8], expected: &str| assert_eq!(user_agent(given), expected);
        check(b"docker/27.0 go/go1.22", "docker/27.0 go/go1.22");
        check(b"", "");
        check(b"bad\xffbyte", "bad\u{fffd}byte");
        let long = "\u{e9}".repeat(300);
        check(long.as_bytes(), &"\u{e9}".repeat(256));
        check("a".repeat(256).as_bytes(), &"a".repeat(256));
    }

    #[test]
    fn a_push_makes_one_event_per_tag_and_one_tag_moved_per_moved_tag() {
        let tags = [
            PushedTag {
                tag: "v1".into(),
                old_digest: None,
            },
            PushedTag {
                tag: "latest".into(),
                old_digest: Some("sha256:old".into()),
            },
            PushedTag {
                tag: "same".into(),
                old_digest: Some("sha256:new".into()),
            },
        ];
        let pushed = PushedManifest {
            repository: "team/app",
            digest: "sha256:new",
            media_type: "application/vnd.oci.image.manifest.v1+json",
            size: 42,
            tags: &tags,
        };
        let facts = EventFacts::pushed(&pushed).facts;
        let summary: Vec<(EventAction, Option<&str>, Option<&str>)> = facts
            .iter()
            .map(|f| {
                (
                    f.action,
                    f.target.tag.as_deref(),
                    f.target.old_digest.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (EventAction::Push, Some("v1"), None),
                (EventAction::Push, Some("latest"), None),
                (EventAction::Push, Some("same"), None),
                (EventAction::TagMoved, Some("latest"), Some("sha256:old")),
            ]
        );
        assert!(facts
            .iter()
            .all(|f| f.target.digest.as_deref() == Some("sha256:new")
                && f.target.size == Some(42)
                && f.target.repository.as_deref() == Some("team/app")));

        let by_digest = EventFacts::pushed(&PushedManifest {
            tags: &[],
            ..pushed
        })
        .facts;
        assert_eq!(by_digest.len(), 1);
        assert_eq!(by_digest[0].action, EventAction::Push);
        assert_eq!(by_digest[0].target.tag, None);
    }
}
