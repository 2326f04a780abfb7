//! An event as a CloudEvents 1.0 message in the structured JSON format: the envelope's attributes (`id`,
//! `source`, `type`, `subject`, `time`) from the event, and the event's own JSON as `data`. Pure: no I/O.
//!
//! Must not: know how the message is sent, or add anything to `data` that the event log does not keep (the
//! receiver gets what `GET /berth/v1/events` shows).

use serde_json::{json, Value};

use crate::events::{Event, EventAction};

/// `Content-Type` of one event in the structured mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// `Content-Type` of a batch (a JSON array of structured events).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// The CloudEvents `type` of an action: `dev.berth.<subject>.<verb>` (`dev.berth.image.pushed`).
pub fn event_type(action: EventAction) -> &'static str {
    match action {
        EventAction::Push => "dev.berth.image.pushed",
        EventAction::Pull => "dev.berth.image.pulled",
        EventAction::Delete => "dev.berth.image.deleted",
        EventAction::TagMoved => "dev.berth.tag.moved",
        EventAction::Mount => "dev.berth.blob.mounted",
        EventAction::UploadRejected => "dev.berth.upload.rejected",
        EventAction::AuthFailed => "dev.berth.auth.failed",
        EventAction::ProxyFetch => "dev.berth.proxy.fetched",
        EventAction::Admitted => "dev.berth.admission.admitted",
        EventAction::Denied => "dev.berth.admission.denied",
        EventAction::Warned => "dev.berth.admission.warned",
        EventAction::Mutated => "dev.berth.admission.mutated",
    }
}

/// The CloudEvents `source`: `berth://<instance>`, the instance percent-encoded where a URI needs it.
pub fn source(instance: &str) -> String {
    let mut source = String::from("berth://");
    for byte in instance.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            source.push(char::from(byte));
        } else {
            source.push_str(&format!("%{byte:02X}"));
        }
    }
    source
}

/// The CloudEvents `subject`: what the event is about. `namespace/name` for an admission decision;
/// `repository:tag`, else `repository@digest`, else `repository` for a registry event; none when the event names
/// neither (a refused login).
pub fn subject(event: &Event) -> Option<String> {
    if let Some(admission) = &event.admission {
        return Some(format!("{}/{}", admission.namespace, admission.name));
    }
    let target = &event.target;
    let repository = target.repository.as_deref()?;
    Some(match (&target.tag, &target.digest) {
        (Some(tag), _) => format!("{repository}:{tag}"),
        (None, Some(digest)) => format!("{repository}@{digest}"),
        (None, None) => repository.to_owned(),
    })
}

/// The structured-mode message of `event`.
pub fn structured(event: &Event) -> Value {
    let mut message = json!({
        "specversion": "1.0",
        "id": event.id,
        "source": source(&event.instance),
        "type": event_type(event.action),
        "time": event
            .time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "datacontenttype": "application/json",
        "data": event,
    });
    if let Some(subject) = subject(event) {
        message["subject"] = subject.into();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::Admission;
    use crate::events::Actor;
    use std::time::{Duration, UNIX_EPOCH};

    fn event(action: EventAction) -> Event {
        Event::new(
            action,
            Actor::anonymous(),
            "berth-0",
            UNIX_EPOCH + Duration::from_millis(1_764_600_000_123),
        )
    }

    #[test]
    fn every_action_has_a_type_under_dev_berth() {
        let check = |action: EventAction, expected: &str| {
            assert_eq!(event_type(action), expected, "{action}");
        };
        check(EventAction::Push, "dev.berth.image.pushed");
        check(EventAction::Pull, "dev.berth.image.pulled");
        check(EventAction::Delete, "dev.berth.image.deleted");
        check(EventAction::TagMoved, "dev.berth.tag.moved");
        check(EventAction::Mount, "dev.berth.blob.mounted");
        check(EventAction::UploadRejected, "dev.berth.upload.rejected");
        check(EventAction::AuthFailed, "dev.berth.auth.failed");
        check(EventAction::ProxyFetch, "dev.berth.proxy.fetched");
        check(EventAction::Admitted, "dev.berth.admission.admitted");
        check(EventAction::Denied, "dev.berth.admission.denied");
        check(EventAction::Warned, "dev.berth.admission.warned");
        check(EventAction::Mutated, "dev.berth.admission.mutated");
        let mut types: Vec<_> = EventAction::ALL.into_iter().map(event_type).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), EventAction::ALL.len(), "types are distinct");
    }

    #[test]
    fn the_subject_names_the_tag_the_digest_or_the_object() {
        let check = |repository: Option<&str>,
                     tag: Option<&str>,
                     digest: Option<&str>,
                     admission: Option<(&str, &str)>,
                     expected: Option<&str>| {
            let mut event = event(EventAction::Push);
            event.target.repository = repository.map(str::to_owned);
            event.target.tag = tag.map(str::to_owned);
            event.target.digest = digest.map(str::to_owned);
            event.admission = admission.map(|(namespace, name)| {
                Box::new(Admission {
                    namespace: namespace.into(),
                    name: name.into(),
                    kind: "Pod".into(),
                    ..Admission::default()
                })
            });
            assert_eq!(subject(&event).as_deref(), expected);
        };
        check(
            Some("team-a/app"),
            Some("v1"),
            Some("sha256:aa"),
            None,
            Some("team-a/app:v1"),
        );
        check(
            Some("team-a/app"),
            None,
            Some("sha256:aa"),
            None,
            Some("team-a/app@sha256:aa"),
        );
        check(Some("team-a/app"), None, None, None, Some("team-a/app"));
        check(None, None, None, None, None);
        check(
            None,
            None,
            None,
            Some(("team-a", "web-1")),
            Some("team-a/web-1"),
        );
    }

    #[test]
    fn the_source_is_a_uri_with_the_instance() {
        let check = |instance: &str, expected: &str| assert_eq!(source(instance), expected);
        check("berth-0", "berth://berth-0");
        check("host.example", "berth://host.example");
        check("a b/c", "berth://a%20b%2Fc");
    }

    #[test]
    fn the_structured_message_carries_the_event_as_data() {
        let mut pushed = event(EventAction::Push);
        pushed.target.repository = Some("team-a/app".into());
        pushed.target.tag = Some("v1".into());
        let message = structured(&pushed);
        assert_eq!(message["specversion"], "1.0");
        assert_eq!(message["id"], pushed.id.as_str());
        assert_eq!(message["source"], "berth://berth-0");
        assert_eq!(message["type"], "dev.berth.image.pushed");
        assert_eq!(message["subject"], "team-a/app:v1");
        assert_eq!(message["time"], "2025-12-01T14:40:00.123Z");
        assert_eq!(message["datacontenttype"], "application/json");
        let data: Event = serde_json::from_value(message["data"].clone()).expect("data");
        assert_eq!(data, pushed);
        let login = structured(&event(EventAction::AuthFailed));
        assert!(login.get("subject").is_none(), "{login}");
    }
}
