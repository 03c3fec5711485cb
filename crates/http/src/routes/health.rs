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

/// Readiness: the store and the audit log answer, and the limiter decides with its backend.
///
/// `status` is `ready`, `degraded` or `unavailable`. Degraded means the shared limiter (Redis)
/// is unreachable and decisions follow its fail mode: with `local` the instance serves (each
/// limit enforced per instance), so it answers 200; with `fail_closed` it refuses every limited
/// request, so it answers 503 like a down store. The reason is in `limiter.reason`.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready, or degraded but serving"), (status = 503, description = "a dependency is down, or the limiter is degraded and fails closed")))]
pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = s.guard.store().ping().await.is_ok();
    let audit = s.audit.ping().await.is_ok();
    let limiter = s.guard.limiter().health();
    let fails_closed = limiter.fail_mode == Some("fail_closed");
    let degraded = limiter.degraded.is_some();
    let word = |b: bool| if b { "ok" } else { "down" };
    let (code, status) = match (store && audit, degraded) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, false) => (StatusCode::OK, "ready"),
        (true, true) if fails_closed => (StatusCode::SERVICE_UNAVAILABLE, "degraded"),
        (true, true) => (StatusCode::OK, "degraded"),
    };
    let mut limiter_view = json!({
        "backend": limiter.backend,
        "state": if degraded { "degraded" } else { "ok" },
    });
    if let Some(mode) = limiter.fail_mode {
        limiter_view["fail_mode"] = json!(mode);
    }
    if let Some(d) = &limiter.degraded {
        limiter_view["reason"] = json!(d.reason);
        limiter_view["degraded_since"] = json!(portcullis_core::timefmt::rfc3339_ms(d.since_ms));
    }
    (
        code,
        Json(json!({
            "status": status,
            "checks": { "store": word(store), "audit": word(audit), "limiter": if degraded { "degraded" } else { "ok" } },
            "limiter": limiter_view,
            "audit_queue_depth": s.guard.audit_log().queue_depth(),
        })),
    )
}
