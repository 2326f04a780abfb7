//! `/healthz` (the process answers) and `/readyz` (storage accepts writes; policy, auth, event log and notification
//! details), outside `/v2/`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::admission::PolicyStore;
use crate::auth::Authenticator;
use crate::events::notify::Notifications;
use crate::events::EventLog;
use crate::registry::Registry;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Ready while storage accepts writes; also reports the policy in force (source, digest, load time, last error)
/// and authentication (on or off, the htpasswd file in force and its last error).
async fn readyz(
    registry: web::Data<Registry>,
    policy: web::Data<PolicyStore>,
    auth: web::Data<Authenticator>,
    events: web::Data<EventLog>,
    notifications: Option<web::Data<Notifications>>,
) -> HttpResponse {
    let policy = policy.status();
    let auth = auth.status();
    // Reported, never a reason to be unready: a broken event log or a dead notification endpoint must not stop
    // pulls or admission.
    let mut events = events.status();
    if let Some(notifications) = notifications.filter(|n| !n.is_empty()) {
        events["notifications"] = notifications.status();
    }
    match registry.check_writable().await {
        Ok(()) => HttpResponse::Ok().json(
            json!({ "status": "ready", "storage": "writable", "policy": policy, "auth": auth, "events": events }),
        ),
        Err(e) => {
            log::warn!("not ready: {e}");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "not ready", "storage": e.to_string(), "policy": policy, "auth": auth, "events": events
            }))
        }
    }
}
