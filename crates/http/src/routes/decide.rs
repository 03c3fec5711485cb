//! Decisions for other gateways: the same Guard phases as the proxy (authenticate → tenant guard
//! → permission → limits → audit), answered instead of forwarded.
use crate::AppState;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, credential_from, meta_from};
use crate::proxy::rate_headers;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::Permission;
use portcullis_core::audit::AuditResult;
use portcullis_guard::Grant;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// e.g. `conversation.send`, `tool.request`, or an admin permission such as `keys.write`.
    pub action: String,
    pub resource: Option<ResourceRef>,
    /// Free-form context recorded with the decision (message length, tool name, metadata…).
    #[schema(value_type = Object)]
    pub context: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct LimitsView {
    pub rate_limit: u32,
    pub rate_remaining: u32,
    pub rate_reset_secs: u64,
    pub quota_remaining: Option<u64>,
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuthorizeResponse {
    /// `allow` or `deny`.
    pub decision: String,
    /// What decided it: `rbac:role:<role>` when allowed, `rbac:role_lacks_permission` or
    /// `limit:<kind>` when denied.
    pub reasons: Vec<String>,
    pub principal: super::auth::PrincipalView,
    pub limits: Option<LimitsView>,
}

/// Admin permission names map to themselves; every other action is a data-plane action.
fn permission_for(action: &str) -> Permission {
    Permission::ALL.into_iter().find(|p| p.as_str() == action).unwrap_or(Permission::Execute)
}

fn check_action(action: &str) -> Result<(), ApiError> {
    let ok = !action.is_empty()
        && action.len() <= 128
        && action.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(String::from("`action` must be lowercase letters, digits, `.`, `_`, `-`")))
    }
}

/// The caller, authenticated and tenant-guarded, without a permission yet.
pub struct Caller {
    grant: Grant,
    meta: portcullis_guard::RequestMeta,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let meta = meta_from(parts);
        let principal = app.guard.authenticate(credential_from(parts), &meta).await?;
        let x_tenant = parts.headers.get("x-tenant-id").map(|v| v.to_str().unwrap_or("(not valid text)").to_owned());
        // Session permission: every principal holds it; the X-Tenant-ID rule applies here.
        let grant = app.guard.authorize(principal, x_tenant.as_deref(), Permission::Session, &meta).await?;
        crate::extract::note_tenant(parts, &grant);
        Ok(Caller { grant, meta })
    }
}

/// Decides whether the caller may perform `action` now, consuming rate and quota exactly like a
/// proxied request. Denials are answers (200 with `"decision": "deny"`), not errors.
#[utoipa::path(post, path = "/v1/authorize", tag = "decisions", request_body = AuthorizeRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = AuthorizeResponse), (status = 400, body = ProblemDoc), (status = 401, body = ProblemDoc),
        (status = 503, body = ProblemDoc, description = "the shared limiter is unavailable and the gateway fails closed")))]
pub async fn authorize(
    State(app): State<AppState>,
    c: Caller,
    ApiJson(body): ApiJson<AuthorizeRequest>,
) -> Result<Response, ApiError> {
    check_action(&body.action)?;
    let p = &c.grant.principal;
    let permission = permission_for(&body.action);
    let role_ok = p.is_operator() || p.role.is_some_and(|r| permission.granted_to(r));
    let mut reasons = Vec::new();
    let mut limits = None;
    let mut headers = HeaderMap::new();
    let allowed = if !role_ok {
        reasons.push(String::from("rbac:role_lacks_permission"));
        false
    } else if !p.scope_allows(&body.action) {
        reasons.push(String::from("scope:not_granted"));
        false
    } else if p.tenant_id.is_none() {
        reasons.push(String::from("rbac:operator"));
        true
    } else {
        match app.guard.admit(p, &format!("authorize:{}", body.action), None, false).await? {
            Ok(a) => {
                reasons.push(format!("rbac:role:{}", p.role.map(|r| r.as_str()).unwrap_or("none")));
                rate_headers(&mut headers, &a.rate);
                limits = Some(LimitsView {
                    rate_limit: a.rate.limit,
                    rate_remaining: a.rate.remaining,
                    rate_reset_secs: a.rate.reset_secs,
                    quota_remaining: Some(a.quota_remaining),
                    retry_after_secs: None,
                });
                true
            }
            Err(r) if r.kind == portcullis_limiter::LimitKind::Unavailable => {
                // Not a decision: the limits could not be looked up. The caller (another
                // gateway) gets 503 and applies its own fail mode; the attempt is audited.
                crate::metrics::limit_rejected(r.kind.as_str());
                let mut e = app.guard.event_for(&c.grant, &c.meta, &body.action, AuditResult::Failure);
                e.reason = Some(format!("limit:{}", r.kind.as_str()));
                e.metadata = serde_json::json!({ "decision_endpoint": "authorize", "context": body.context });
                app.guard.record(e).await?;
                return Err(ApiError::Limited(r));
            }
            Err(r) => {
                crate::metrics::limit_rejected(r.kind.as_str());
                reasons.push(format!("limit:{}", r.kind.as_str()));
                rate_headers(&mut headers, &r.rate);
                limits = Some(LimitsView {
                    rate_limit: r.rate.limit,
                    rate_remaining: r.rate.remaining,
                    rate_reset_secs: r.rate.reset_secs,
                    quota_remaining: None,
                    retry_after_secs: Some(r.retry_after_secs),
                });
                false
            }
        }
    };
    let mut e = app.guard.event_for(
        &c.grant,
        &c.meta,
        &body.action,
        if allowed { AuditResult::Success } else { AuditResult::Denied },
    );
    if let Some(r) = &body.resource {
        e.resource_type = Some(r.kind.chars().take(64).collect());
        e.resource_id = Some(r.id.chars().take(256).collect());
    }
    e.reason = (!allowed).then(|| reasons.join(","));
    e.metadata = serde_json::json!({ "decision_endpoint": "authorize", "reasons": reasons, "context": body.context });
    app.guard.record(e).await?;
    let answer = AuthorizeResponse {
        decision: String::from(if allowed { "allow" } else { "deny" }),
        reasons,
        principal: super::auth::PrincipalView::from(&**p),
        limits,
    };
    Ok((headers, Json(answer)).into_response())
}

/// nginx `auth_request` target: reads `X-Original-URI` and `X-Original-Method`, answers 200 with
/// `X-Portcullis-Tenant`, `X-Portcullis-User` and `X-Portcullis-Role`, or 401/403/429.
#[utoipa::path(get, path = "/v1/auth/check", tag = "decisions", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, description = "allowed"), (status = 401, body = ProblemDoc), (status = 403, body = ProblemDoc), (status = 429, body = ProblemDoc),
        (status = 503, body = ProblemDoc, description = "the shared limiter is unavailable and the gateway fails closed")))]
pub async fn check(State(app): State<AppState>, headers: HeaderMap, c: Caller) -> Result<Response, ApiError> {
    let uri = headers.get("x-original-uri").and_then(|v| v.to_str().ok()).unwrap_or("/");
    let method = headers.get("x-original-method").and_then(|v| v.to_str().ok()).unwrap_or("GET");
    let path = uri.split('?').next().unwrap_or("/");
    let route = app.routes.find(path).cloned();
    let action = route.as_ref().map(|r| r.cfg.action.clone()).unwrap_or_else(|| String::from("http.request"));
    let route_key = route.as_ref().map(|r| r.cfg.prefix.clone()).unwrap_or_else(|| String::from("auth_check"));
    let p = &c.grant.principal;
    let denied = |reason: String| {
        let mut e = app.guard.event_for(&c.grant, &c.meta, &action, AuditResult::Denied);
        e.reason = Some(reason);
        e.resource_type = Some(String::from("uri"));
        e.resource_id = Some(path.chars().take(512).collect());
        e.metadata = serde_json::json!({ "decision_endpoint": "auth_check", "method": method });
        e
    };
    if !p.role.is_some_and(|r| Permission::Execute.granted_to(r)) {
        app.guard.record(denied(String::from("rbac:role_lacks_permission"))).await?;
        return Err(ApiError::Forbidden(String::from("the caller's role does not grant this action")));
    }
    if !p.scope_allows(&action) {
        app.guard.record(denied(String::from("scope:not_granted"))).await?;
        return Err(ApiError::Forbidden(String::from("the key's scopes do not include this action")));
    }
    let admission =
        match app.guard.admit(p, &route_key, route.as_ref().and_then(|r| r.cfg.rate_per_minute), false).await? {
            Ok(a) => a,
            Err(r) => {
                app.guard.record(denied(format!("limit:{}", r.kind.as_str()))).await?;
                return Err(ApiError::Limited(r));
            }
        };
    let mut e = app.guard.event_for(&c.grant, &c.meta, &action, AuditResult::Success);
    e.resource_type = Some(String::from("uri"));
    e.resource_id = Some(path.chars().take(512).collect());
    e.metadata = serde_json::json!({ "decision_endpoint": "auth_check", "method": method });
    app.guard.record(e).await?;
    let mut out = HeaderMap::new();
    rate_headers(&mut out, &admission.rate);
    let mut put = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            out.insert(k, v);
        }
    };
    put("x-portcullis-tenant", p.tenant_id.as_ref().map(|t| t.as_str()).unwrap_or(""));
    put("x-portcullis-user", &p.id);
    put("x-portcullis-role", p.role.map(|r| r.as_str()).unwrap_or(""));
    Ok((StatusCode::OK, out).into_response())
}
