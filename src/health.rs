//! `/healthz` (the process answers) and `/readyz` (storage accepts writes), outside `/v2/`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::registry::Registry;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(registry: web::Data<Registry>) -> HttpResponse {
    match registry.storage().check_writable().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready", "storage": "writable" })),
        Err(e) => {
            log::warn!("not ready: {e}");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "not ready", "storage": e.to_string() }))
        }
    }
}
