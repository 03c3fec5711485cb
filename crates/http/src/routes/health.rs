use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_guard::RequestMeta;
use serde_json::{Value, json};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the store and the audit log answer, and the limiter decides with its backend.
///
/// `readiness` (and, on a 200, `status`) is `ready`, `degraded` or `unavailable`. Degraded means the shared limiter (Redis)
/// is unreachable and decisions follow its fail mode: with `local` the instance serves (each
/// limit enforced per instance), so it answers 200; with `fail_closed` it refuses every limited
/// request, so it answers 503 like a down store. The reason is in `limiter.reason`.
///
/// A 503 is a problem+json document (as every error here is) that also carries `readiness`,
/// `checks` and `limiter`; `detail` says what is not ready.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready, or degraded but serving"), (status = 503, description = "a dependency is down, or the limiter is degraded and fails closed")))]
pub async fn readyz(State(s): State<AppState>, meta: Option<Extension<RequestMeta>>) -> Response {
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
    let mut body = json!({
        "status": status,
        "readiness": status,
        "checks": { "store": word(store), "audit": word(audit), "limiter": if degraded { "degraded" } else { "ok" } },
        "limiter": limiter_view,
        "audit_queue_depth": s.guard.audit_log().queue_depth(),
    });
    if code == StatusCode::OK {
        return (code, Json(body)).into_response();
    }
    let mut down: Vec<&str> = Vec::new();
    if !store {
        down.push("the store does not answer");
    }
    if !audit {
        down.push("the audit log's database does not answer");
    }
    if degraded && fails_closed {
        down.push("the shared limiter (Redis) does not answer and limited requests are refused (fail_closed)");
    }
    body["type"] = json!("https://portcullis.dev/problems/not-ready");
    body["title"] = json!("Not ready");
    body["detail"] = json!(down.join("; "));
    body["request_id"] = json!(meta.map(|m| m.0.request_id).unwrap_or_default());
    // problem+json's `status` is the HTTP status; the readiness word stays in `readiness`.
    body["status"] = json!(code.as_u16());
    let mut res = (code, body.to_string()).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    res
}
