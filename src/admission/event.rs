//! What the event log records of a review: one event per `/validate` answer (`admitted`, `denied`, `warned`), one
//! per `/mutate` that rewrote an image (`mutated`), and a `denied` one for a review berth could not read. The API
//! server is the actor, named by the user the review is for (who created the pod); the object, its
//! ServiceAccount, every container's image, the rule that decided and the warnings are the details. Pure: builds
//! the event from the review and the decision; recording it is the handler's.
//!
//! Anyone who reaches the webhook port can post a review, so what an event records is what the caller posted: every
//! text is bounded ([`bound`]) so a forged review cannot write a 3 MiB event.

use std::time::SystemTime;

use kube::core::admission::{AdmissionResponse, Operation};

use super::pod::{container_images, object_name, pod_spec};
use super::review::Request;
use super::rewrite::{self, MutationPlan};
use super::validate::{service_account_of, Validation};
use crate::events::model::{Admission, AdmittedContainer, Client, Outcome};
use crate::events::{Actor, ActorKind, Event, EventAction};

/// The most characters of a client's User-Agent recorded.
pub const MAX_USER_AGENT_CHARS: usize = 256;
/// The most containers an admission event records (the rest are counted in `omittedContainers`).
pub const MAX_CONTAINERS: usize = 64;
/// The most characters of an image (and of every other text of a review: names, the rule, the message) recorded.
pub const MAX_TEXT_CHARS: usize = 512;
/// The most warnings an admission event records.
pub const MAX_WARNINGS: usize = 16;

/// `text` cut to `max` characters, the cut marked with `…`.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => {
            let mut cut: String = text[..end].chars().take(max.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
    }
}

fn clip_in_place(text: &mut String, max: usize) {
    if text.chars().nth(max).is_some() {
        *text = clip(text, max);
    }
}

/// An admission event with what the caller posted bounded: at most [`MAX_CONTAINERS`] containers, [`MAX_WARNINGS`]
/// warnings, [`MAX_TEXT_CHARS`] characters in each text, [`MAX_USER_AGENT_CHARS`] in the User-Agent.
pub fn bound(mut event: Event) -> Event {
    if let Some(client) = &mut event.client {
        if let Some(agent) = &mut client.user_agent {
            clip_in_place(agent, MAX_USER_AGENT_CHARS);
        }
    }
    for text in [
        event.actor.name.as_mut(),
        event.request_id.as_mut(),
        event.result.message.as_mut(),
        event.result.code.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        clip_in_place(text, MAX_TEXT_CHARS);
    }
    if let Some(admission) = &mut event.admission {
        if admission.containers.len() > MAX_CONTAINERS {
            admission.omitted_containers = admission
                .omitted_containers
                .saturating_add(admission.containers.len() - MAX_CONTAINERS);
            admission.containers.truncate(MAX_CONTAINERS);
        }
        admission.warnings.truncate(MAX_WARNINGS);
        for container in &mut admission.containers {
            clip_in_place(&mut container.name, MAX_TEXT_CHARS);
            clip_in_place(&mut container.image, MAX_TEXT_CHARS);
            if let Some(rewritten) = &mut container.rewritten {
                clip_in_place(rewritten, MAX_TEXT_CHARS);
            }
        }
        for text in admission.warnings.iter_mut().chain([
            &mut admission.namespace,
            &mut admission.kind,
            &mut admission.name,
        ]) {
            clip_in_place(text, MAX_TEXT_CHARS);
        }
        for text in [
            admission.operation.as_mut(),
            admission.service_account.as_mut(),
            admission.rule.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            clip_in_place(text, MAX_TEXT_CHARS);
        }
    }
    event
}

/// Where the review came from and when, as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub client: Option<Client>,
    /// The berth recording it.
    pub instance: std::sync::Arc<str>,
    pub now: SystemTime,
}

impl Origin {
    fn event(&self, action: EventAction, actor: Actor) -> Event {
        let mut event = Event::new(action, actor, self.instance.clone(), self.now);
        event.client = self.client.clone();
        event
    }
}

/// The event of a `/validate` answer: `denied` when refused, `warned` when allowed with warnings, else
/// `admitted`. The result's message is the denial's.
pub fn validated(request: &Request, validation: &Validation, origin: &Origin) -> Event {
    let response = &validation.response;
    let action = if !response.allowed {
        EventAction::Denied
    } else if response.warnings.as_ref().is_some_and(|w| !w.is_empty()) {
        EventAction::Warned
    } else {
        EventAction::Admitted
    };
    let mut event = origin.event(action, requester(request));
    let mut admission = details(request);
    admission.rule = validation.rule.clone();
    admission.warnings = response.warnings.clone().unwrap_or_default();
    event.admission = Some(Box::new(admission));
    event.result = outcome(response);
    event.request_id = Some(request.uid.clone());
    bound(event)
}

/// The event of a `/mutate` answer, when it rewrote at least one image (`available` as given to
/// [`rewrite::build_patch`]): `mutated`, each rewritten container with the image it now runs, the rule of the
/// first rewrite, the warnings. `None` for a mutation that changed nothing.
pub fn mutated(
    request: &Request,
    plan: &MutationPlan,
    available: &[bool],
    warnings: &[String],
    origin: &Origin,
) -> Option<Event> {
    let mut applied = rewrite::applied(plan, available).peekable();
    let rule = applied.peek()?.rule.clone();
    let mut admission = details(request);
    for candidate in applied {
        if let Some(container) = admission
            .containers
            .iter_mut()
            .find(|c| c.name == candidate.container.name && c.image == candidate.container.image)
        {
            container.rewritten = Some(candidate.target.to_string());
        }
    }
    admission.rule = Some(rule);
    admission.warnings = warnings.to_vec();
    let mut event = origin.event(EventAction::Mutated, requester(request));
    event.admission = Some(Box::new(admission));
    event.request_id = Some(request.uid.clone());
    Some(bound(event))
}

/// The event of a review berth could not read: `denied` (that is what it answered), with why, under the review's
/// uid when the body had one.
pub fn unreadable(why: &str, uid: Option<&str>, origin: &Origin) -> Event {
    let mut event = origin.event(EventAction::Denied, Actor::of_kind(ActorKind::Kubernetes));
    event.result = Outcome {
        status: 200,
        code: None,
        message: Some(why.to_owned()),
    };
    event.request_id = uid.map(str::to_owned);
    bound(event)
}

/// The API server, calling for the user the review names (`kubernetes` with that user's name; a controller's
/// ServiceAccount for the pods of a Deployment).
fn requester(request: &Request) -> Actor {
    Actor {
        name: request
            .user_info
            .username
            .clone()
            .filter(|name| !name.is_empty()),
        ..Actor::of_kind(ActorKind::Kubernetes)
    }
}

/// The object reviewed: namespace, kind, name (or `generateName*`), operation, whether it is a dry run, and, for an
/// object with a pod spec, its ServiceAccount and every container's image. A DELETE's object is its old one.
fn details(request: &Request) -> Admission {
    let object = request.object.as_ref().or(request.old_object.as_ref());
    let name = object.map_or_else(|| request.name.clone(), |o| object_name(request, o));
    let spec = object.and_then(|o| pod_spec(request, o));
    Admission {
        namespace: request.namespace.clone().unwrap_or_default(),
        kind: request.kind.kind.clone(),
        name,
        operation: Some(operation_name(&request.operation).to_owned()),
        service_account: spec.map(|s| service_account_of(s).to_owned()),
        containers: spec
            .map(container_images)
            .unwrap_or_default()
            .into_iter()
            .map(|c| AdmittedContainer {
                name: c.name,
                image: c.image,
                rewritten: None,
            })
            .collect(),
        rule: None,
        warnings: Vec::new(),
        dry_run: request.dry_run,
        omitted_containers: 0,
    }
}

/// The operation as Kubernetes spells it.
fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Status 200 (an admission answer is a 200 whatever it decides), the denial's message when refused.
fn outcome(response: &AdmissionResponse) -> Outcome {
    Outcome {
        status: 200,
        code: None,
        message: (!response.allowed).then(|| response.result.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::policy::Policy;
    use crate::admission::testing::{pod, request, scope, POLICY};
    use crate::admission::{rewrite, validate};
    use serde_json::json;

    fn origin() -> Origin {
        Origin {
            client: None,
            instance: "berth-0".into(),
            now: SystemTime::now(),
        }
    }

    #[test]
    fn clip_cuts_at_a_character_and_marks_the_cut() {
        let check = |text: &str, max: usize, expected: &str| {
            assert_eq!(clip(text, max), expected, "{text} {max}")
        };
        check("", 3, "");
        check("abc", 3, "abc");
        check("abcd", 3, "ab…");
        check("ééééé", 4, "ééé…");
        check("ab", 0, "…");
    }

    #[test]
    fn a_forged_review_cannot_write_a_large_event() {
        let policy = Policy::from_yaml("defaultAction: allow\n").expect("policy");
        let image = format!("registry.example/{}:1", "a".repeat(5000));
        let containers: Vec<_> = (0..100)
            .map(|i| json!({"name": format!("c{i}"), "image": image}))
            .collect();
        let review = request(
            ("", "Pod"),
            "CREATE",
            "apps",
            pod(json!({"containers": containers}), None),
        );
        let validation = validate::decide(&review, &policy, &scope());
        let mut origin = origin();
        origin.client = Some(Client {
            address: Some("10.0.0.9".into()),
            user_agent: Some("x".repeat(10_000)),
        });
        let event = validated(&review, &validation, &origin);
        let admission = event.admission.as_ref().expect("admission details");
        assert_eq!(admission.containers.len(), MAX_CONTAINERS);
        assert_eq!(admission.omitted_containers, 100 - MAX_CONTAINERS);
        assert!(admission
            .containers
            .iter()
            .all(|c| c.image.chars().count() == MAX_TEXT_CHARS && c.image.ends_with('…')));
        let agent = event.client.as_ref().and_then(|c| c.user_agent.as_deref());
        assert_eq!(agent.map(|a| a.chars().count()), Some(MAX_USER_AGENT_CHARS));
        let size = serde_json::to_vec(&event).expect("json").len();
        assert!(size < 64 * 1024, "{size} bytes");

        let mut warned = event.clone();
        if let Some(admission) = &mut warned.admission {
            admission.warnings = vec!["w".repeat(2000); 40];
        }
        let warned = bound(warned);
        let warnings = &warned.admission.as_ref().expect("admission").warnings;
        assert_eq!(warnings.len(), MAX_WARNINGS);
        assert!(warnings.iter().all(|w| w.chars().count() == MAX_TEXT_CHARS));
    }

    /// Issue 12: each `/validate` decision is one event of its action, with the rule that decided, the containers,
    /// the ServiceAccount and the denial's message.
    #[test]
    fn validate_events_name_the_decision_and_its_rule() {
        let policy = Policy::from_yaml(
            r#"
defaultAction: allow
rules:
  - {name: no-latest, action: deny, images: ['.*:latest'], message: pin a version}
  - {name: old-nginx, action: warn, images: ['docker.io/library/nginx:1\.1.*']}
  - {name: trusted, action: allow, images: ['quay\.io/.*']}
"#,
        )
        .expect("policy");
        // (image, action, rule, the message contains)
        let check = |image: &str,
                     action: EventAction,
                     rule: Option<&str>,
                     message: Option<&str>| {
            let spec = json!({"serviceAccountName": "runner", "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [{"name": "web", "image": image}]});
            let review = request(("", "Pod"), "CREATE", "apps", pod(spec, None));
            let validation = validate::decide(&review, &policy, &scope());
            let event = validated(&review, &validation, &origin());
            assert_eq!(event.action, action, "{image}");
            let admission = event.admission.as_ref().expect("admission details");
            assert_eq!(admission.rule.as_deref(), rule, "{image}");
            assert_eq!(admission.namespace, "apps");
            assert_eq!(admission.kind, "Pod");
            assert_eq!(admission.operation.as_deref(), Some("CREATE"));
            assert_eq!(admission.service_account.as_deref(), Some("runner"));
            let images: Vec<(&str, &str)> = admission
                .containers
                .iter()
                .map(|c| (c.name.as_str(), c.image.as_str()))
                .collect();
            assert_eq!(images, [("init", "busybox:1.36"), ("web", image)]);
            assert_eq!(event.result.status, 200);
            match message {
                Some(needle) => assert!(
                    event
                        .result
                        .message
                        .as_deref()
                        .unwrap_or("")
                        .contains(needle),
                    "{:?} lacks {needle:?}",
                    event.result.message
                ),
                None => assert_eq!(event.result.message, None),
            }
            assert_eq!(event.request_id.as_deref(), Some(review.uid.as_str()));
            assert_eq!(event.actor.kind, ActorKind::Kubernetes);
            assert_eq!(
                admission.warnings.len(),
                usize::from(action == EventAction::Warned),
                "{image}"
            );
        };
        check(
            "nginx:latest",
            EventAction::Denied,
            Some("no-latest"),
            Some("pin a version"),
        );
        check("nginx:1.19", EventAction::Warned, Some("old-nginx"), None);
        check(
            "quay.io/app:1",
            EventAction::Admitted,
            Some("trusted"),
            None,
        );
        check("nginx:1.25", EventAction::Admitted, None, None);
    }

    /// A denial by the access rules names them as the rule; the user who asked is the actor's name.
    #[test]
    fn a_pull_denial_is_decided_by_access_and_the_requester_is_named() {
        let policy = Policy::allow_all();
        let on = scope().authorizing_pulls(true);
        let mut review = request(
            ("", "Pod"),
            "CREATE",
            "team-b",
            pod(
                json!({"containers": [{"name": "c", "image": "127.0.0.1:5050/team-a/app:1"}]}),
                None,
            ),
        );
        review.user_info.username = Some("alice".into());
        let event = validated(&review, &validate::decide(&review, &policy, &on), &origin());
        assert_eq!(event.action, EventAction::Denied);
        let admission = event.admission.expect("details");
        assert_eq!(admission.rule.as_deref(), Some("access: no rule allows it"));
        assert_eq!(admission.service_account.as_deref(), Some("default"));
        assert_eq!(event.actor.name.as_deref(), Some("alice"));
        assert_eq!(event.actor.subject(), "kubernetes");
    }

    /// `mutated` only when an image was rewritten, with the image it now is and the rewrite's rule.
    #[test]
    fn a_mutation_records_what_it_rewrote_and_nothing_else() {
        let policy = Policy::from_yaml(POLICY).expect("policy");
        let spec = json!({"containers": [{"name": "web", "image": "nginx:1.25"}, {"name": "other", "image": "quay.io/x:1"}]});
        let review = request(("", "Pod"), "CREATE", "prod", pod(spec, None));
        let plan = rewrite::plan_mutation(&review, &policy, &scope());
        assert!(
            !plan.candidates.is_empty(),
            "the test policy rewrites nginx"
        );
        let available = vec![true; plan.candidates.len()];
        let (_, warnings) = rewrite::build_patch(&plan, &available);
        let event = mutated(&review, &plan, &available, &warnings, &origin()).expect("an event");
        assert_eq!(event.action, EventAction::Mutated);
        let admission = event.admission.expect("details");
        assert_eq!(
            admission.rule.as_deref(),
            Some(plan.candidates[0].rule.as_str())
        );
        let web = &admission.containers[0];
        assert_eq!(web.name, "web");
        assert_eq!(
            web.rewritten.as_deref(),
            Some(plan.candidates[0].target.to_string().as_str())
        );
        assert_eq!(admission.containers[1].rewritten, None);
        // Nothing available: nothing rewritten, no event.
        let none = vec![false; plan.candidates.len()];
        let (_, warnings) = rewrite::build_patch(&plan, &none);
        assert!(mutated(&review, &plan, &none, &warnings, &origin()).is_none());
    }

    /// A dry run (nothing created) says so; a real review does not.
    #[test]
    fn a_dry_run_is_marked() {
        let policy = Policy::allow_all();
        let spec = json!({"containers": [{"name": "c", "image": "nginx:1.25"}]});
        let mut review = request(("", "Pod"), "CREATE", "apps", pod(spec, None));
        for dry_run in [false, true] {
            review.dry_run = dry_run;
            let event = validated(
                &review,
                &validate::decide(&review, &policy, &scope()),
                &origin(),
            );
            let json = serde_json::to_value(&event).expect("json");
            assert_eq!(
                json["admission"].get("dryRun").and_then(|v| v.as_bool()),
                dry_run.then_some(true),
                "{json}"
            );
        }
    }

    #[test]
    fn an_unreadable_review_is_a_denial_with_its_reason() {
        let event = unreadable(
            "cannot read the AdmissionReview: eof",
            Some("u-1"),
            &origin(),
        );
        assert_eq!(event.action, EventAction::Denied);
        assert_eq!(
            event.result.message.as_deref(),
            Some("cannot read the AdmissionReview: eof")
        );
        assert_eq!(event.request_id.as_deref(), Some("u-1"));
        assert_eq!(event.admission, None);
    }
}
