use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the store and the audit log answer.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready"), (status = 503, description = "a dependency is down")))]
pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = s.guard.store().ping().await.is_ok();
    let audit = s.audit.ping().await.is_ok();
    let ok = store && audit;
    let word = |b: bool| if b { "ok" } else { "down" };
    (
        if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE },
        Json(json!({
            "status": if ok { "ready" } else { "unavailable" },
            "checks": { "store": word(store), "audit": word(audit) },
            "audit_queue_depth": s.guard.audit_log().queue_depth(),
        })),
    )
}
