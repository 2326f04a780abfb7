//! `POST /validate` and `POST /mutate`: read the AdmissionReview, run the pure decision, answer, and record the
//! answer in the event log ([`super::event`]; queued, never waited for, never failing the review). Never a 5xx: a
//! review that cannot be read gets `allowed: false` with a message saying why.

use actix_web::{web, HttpRequest, HttpResponse};
use kube::core::admission::AdmissionResponse;

use super::event::{self, Origin};
use super::image::ImageRef;
use super::review;
use super::rewrite::{self, MutationPlan};
use super::source::PolicyStore;
use super::validate;
use crate::events::metrics::{Decision, Metrics, Webhook};
use crate::events::model::Client;
use crate::events::EventLog;
use crate::proxy::Proxy;
use crate::registry::names::{Reference, Tag};
use crate::registry::Registry;

/// Largest review berth reads: 3 MiB is the largest request body the API server accepts for the object (its
/// `MaxRequestBodyBytes`), an UPDATE also carries the stored `oldObject` (at most etcd's default 1.5 MiB request
/// limit), and 64 KiB covers the review's own fields (user info, options). A larger body is not one the API server
/// sent.
const MAX_REVIEW_BYTES: u64 = (3 << 20) + (3 << 19) + (64 << 10);

/// Settings the webhooks need besides the policy.
pub type AdmissionSettings = super::scope::Scope;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/validate", web::post().to(validate))
        .route("/mutate", web::post().to(mutate));
}

/// A review berth cannot decide: why, and the review's `uid` if it can be found at the start of the body.
struct Unreadable {
    why: String,
    uid: Option<String>,
}

/// Reads the body into a review request, or says why it cannot.
async fn read_request(body: web::Payload) -> Result<review::Request, Unreadable> {
    // Time and shared memory are bounded by crate::limits; the size here.
    let mut bytes = web::BytesMut::new();
    if let Err(e) =
        crate::limits::read_to_limit_into(body, None, MAX_REVIEW_BYTES, &mut bytes).await
    {
        return Err(Unreadable {
            why: format!("cannot read the AdmissionReview: {e}"),
            uid: review::uid_of(&bytes),
        });
    }
    review::read_review(&bytes).map_err(|e| Unreadable {
        why: e.to_string(),
        uid: review::uid_of(&bytes),
    })
}

fn answer(response: AdmissionResponse) -> HttpResponse {
    HttpResponse::Ok().json(review::Reply::new(&response))
}

/// Refuses a review berth cannot decide. The answer carries the review's `uid` when the body has one: the API server
/// discards an answer with another uid as a failed call and then applies the webhook's `failurePolicy` (with the
/// shipped `Ignore`, the pod would be admitted unchecked), so with the uid the refusal is what the API server acts on.
fn refuse_unreadable(
    endpoint: &str,
    unreadable: Unreadable,
    req: &HttpRequest,
    events: &EventLog,
) -> HttpResponse {
    log::warn!(
        "{endpoint}: {} (uid {})",
        unreadable.why,
        unreadable.uid.as_deref().unwrap_or("not found")
    );
    if events.enabled() {
        events.record(event::unreadable(
            &unreadable.why,
            unreadable.uid.as_deref(),
            &origin(req, events),
        ));
    }
    let mut response = AdmissionResponse::invalid(unreadable.why);
    if let Some(uid) = unreadable.uid {
        response.uid = uid;
    }
    answer(response)
}

/// Where a review came from and when, for its event.
fn origin(req: &HttpRequest, events: &EventLog) -> Origin {
    let user_agent = req
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    Origin {
        client: Some(Client {
            address: req.peer_addr().map(|a| a.ip().to_string()),
            user_agent,
        }),
        instance: events.shared_instance(),
        now: events.now(),
    }
}

async fn validate(
    req: HttpRequest,
    body: web::Payload,
    store: web::Data<PolicyStore>,
    settings: web::Data<AdmissionSettings>,
    events: web::Data<EventLog>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let request = match read_request(body).await {
        Ok(request) => request,
        Err(unreadable) => {
            metrics.admission_decision(Webhook::Validate, Decision::Invalid, None);
            return refuse_unreadable("/validate", unreadable, &req, &events);
        }
    };
    let active = store.current();
    let validation =
        validate::decide_observing(&request, &active.policy, &settings, &mut |decision| {
            metrics.admission_decision(
                Webhook::Validate,
                decision.verdict.into(),
                decision.rule.as_deref(),
            )
        });
    if events.enabled() {
        events.record(event::validated(
            &request,
            &validation,
            &origin(&req, &events),
        ));
    }
    let response = validation.response;
    if !response.allowed {
        log::info!(
            "validate {}: denied: {}",
            describe(&request),
            response.result.message
        );
    } else if let Some(warnings) = &response.warnings {
        log::info!(
            "validate {}: allowed with warnings: {}",
            describe(&request),
            warnings.join("; ")
        );
    }
    answer(response)
}

// Each argument is an actix extractor (the request, the body and the shared state the answer needs).
#[allow(clippy::too_many_arguments)]
async fn mutate(
    req: HttpRequest,
    body: web::Payload,
    store: web::Data<PolicyStore>,
    settings: web::Data<AdmissionSettings>,
    registry: web::Data<Registry>,
    proxy: web::Data<Proxy>,
    events: web::Data<EventLog>,
    metrics: web::Data<Metrics>,
) -> HttpResponse {
    let request = match read_request(body).await {
        Ok(request) => request,
        Err(unreadable) => {
            metrics.admission_decision(Webhook::Mutate, Decision::Invalid, None);
            return refuse_unreadable("/mutate", unreadable, &req, &events);
        }
    };
    let active = store.current();
    let plan = rewrite::plan_mutation(&request, &active.policy, &settings);
    let available = availability(&plan, &registry, &proxy).await;
    for (candidate, &ok) in plan.candidates.iter().zip(&available) {
        let decision = if ok {
            Decision::Mutated
        } else {
            Decision::Unavailable
        };
        metrics.admission_decision(Webhook::Mutate, decision, Some(&candidate.rule));
    }
    let (patch, warnings) = rewrite::build_patch(&plan, &available);
    if events.enabled() {
        let origin = origin(&req, &events);
        if let Some(event) = event::mutated(&request, &plan, &available, &warnings, &origin) {
            events.record(event);
        }
    }
    let mut response = AdmissionResponse::from(&request);
    if !warnings.is_empty() {
        log::info!("mutate {}: {}", describe(&request), warnings.join("; "));
        response.warnings = Some(warnings);
    }
    if let Some(patch) = patch {
        log::info!(
            "mutate {}: {}",
            describe(&request),
            serde_json::to_string(&patch).unwrap_or_default()
        );
        response = match response.with_patch(patch) {
            Ok(response) => response,
            // Cannot happen for a patch of strings; if it did, the pod is admitted unchanged.
            Err(e) => {
                log::error!(
                    "mutate {}: patch not encoded, pod left unchanged: {e}",
                    describe(&request)
                );
                AdmissionResponse::from(&request)
            }
        };
    }
    answer(response)
}

/// For each candidate: `when: always`, or berth can serve the target (its store holds the manifest, or a
/// configured upstream of the proxy serves that repository). Never a target by a digest berth cannot verify
/// (sha384): berth would refuse that pull whatever the rule says, so the rewrite would break the pod.
async fn availability(plan: &MutationPlan, registry: &Registry, proxy: &Proxy) -> Vec<bool> {
    let mut available = Vec::with_capacity(plan.candidates.len());
    for candidate in &plan.candidates {
        let servable = candidate
            .target
            .digest
            .as_ref()
            .is_none_or(|digest| digest.stored().is_ok());
        let ok = servable
            && match candidate.when {
                super::policy::When::Always => true,
                super::policy::When::Available => {
                    proxy.serves(candidate.target.path.as_str())
                        || holds(registry, &candidate.target).await
                }
            };
        available.push(ok);
    }
    available
}

/// Whether berth's store holds the manifest `target` names (its repository path, by digest or tag).
pub async fn holds(registry: &Registry, target: &ImageRef) -> bool {
    // The target's parts are the registry's own name types (admission/image.rs), so nothing is parsed again here
    // and no reference is "not available" merely because the registry would not take its spelling.
    let reference = match (&target.digest, &target.tag) {
        (Some(digest), _) => match digest.stored() {
            Ok(digest) => Reference::Digest(digest),
            // An algorithm berth does not verify (sha384): berth holds no such manifest.
            Err(_) => return false,
        },
        (None, Some(tag)) => Reference::Tag(tag.clone()),
        (None, None) => match Tag::parse("latest") {
            Some(latest) => Reference::Tag(latest),
            None => return false,
        },
    };
    registry
        .manifest_get(&target.path, &reference)
        .await
        .is_ok()
}

fn describe(request: &review::Request) -> String {
    format!(
        "{:?} {} {}/{} (uid {})",
        request.operation,
        request.kind.kind,
        request.namespace.as_deref().unwrap_or_default(),
        request.name,
        request.uid
    )
}
