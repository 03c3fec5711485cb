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
use portcullis_guard::{ContextInput, Grant};

fn portcullis_policy_valid(action: &str) -> bool {
    portcullis_guard::PolicyEngine::valid_action(action)
}
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

#[derive(Serialize, ToSchema, Clone)]
pub struct PolicyErrorView {
    pub policy: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuthorizeResponse {
    /// `allow` or `deny`.
    pub decision: String,
    /// What decided it. Allowed: the ids of the policies that permitted it (built-in ones are
    /// `builtin.rbac.<role>`, tenant ones `pol_…`). Denied: the forbidding (or failing) policy
    /// ids, `default:no_permit` when no policy permits, `scope:not_granted` when the key's
    /// scopes exclude the action, or `limit:<kind>` when a limit refused it.
    pub reasons: Vec<String>,
    /// The policies whose answer decided (also when a limit then refused).
    pub policies: Vec<String>,
    /// Policies that failed to evaluate; each one denies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PolicyErrorView>,
    pub principal: super::auth::PrincipalView,
    pub limits: Option<LimitsView>,
}

pub(crate) fn check_action(action: &str) -> Result<(), ApiError> {
    if portcullis_policy_valid(action) {
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
    req_headers: HeaderMap,
    c: Caller,
    ApiJson(body): ApiJson<AuthorizeRequest>,
) -> Result<Response, ApiError> {
    check_action(&body.action)?;
    let session_id = match req_headers.get(&crate::proxy::X_SESSION_ID) {
        Some(v) => Some(v.to_str().unwrap_or("\u{1}").to_owned()),
        None => body
            .context
            .as_ref()
            .and_then(|c| c.get("session_id"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
    };
    if let Some(id) = &session_id {
        portcullis_core::session::check_session_id(id)
            .map_err(|e| ApiError::BadRequest(format!("X-Session-Id / context.session_id: {e}")))?;
    }
    if let Some(r) = &body.resource
        && (r.kind.is_empty() || r.kind.len() > 64 || r.id.is_empty() || r.id.len() > 256)
    {
        return Err(ApiError::BadRequest(String::from(
            "`resource.type` must be 1–64 bytes and `resource.id` 1–256 bytes",
        )));
    }
    let p = &c.grant.principal;
    let resource = body.resource.as_ref().map(|r| (r.kind.as_str(), r.id.as_str()));
    let mut reasons = Vec::new();
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    let mut limits = None;
    let mut headers = HeaderMap::new();
    let allowed = if !p.scope_allows(&body.action) {
        reasons.push(String::from("scope:not_granted"));
        false
    } else {
        let d = app
            .guard
            .decide(p, &body.action, resource, || {
                ContextInput {
                    ip: c.meta.ip.as_deref().and_then(|i| i.parse().ok()),
                    ..ContextInput::at(app.guard.now_ms())
                }
                .with_caller_context(body.context.as_ref(), resource)
            })
            .await?;
        policies.clone_from(&d.policies);
        errors =
            d.errors.iter().map(|e| PolicyErrorView { policy: e.policy.clone(), message: e.message.clone() }).collect();
        if !d.allowed {
            reasons = d.reasons();
            false
        } else if p.tenant_id.is_none() {
            reasons = d.policies;
            true
        } else {
            match app.guard.admit(p, &format!("authorize:{}", body.action), None, false).await? {
                Ok(a) => {
                    reasons = d.policies;
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
                    e.with_meta("decision_endpoint", serde_json::Value::from("authorize"))
                        .with_meta("policies", serde_json::json!(policies))
                        .with_meta("context", redacted_context(&app, &c, body.context.as_ref()).await);
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
        }
    };
    let mut e = app.guard.event_for(
        &c.grant,
        &c.meta,
        &body.action,
        if allowed { AuditResult::Success } else { AuditResult::Denied },
    );
    if let Some(r) = &body.resource {
        e.resource_type = Some(r.kind.clone());
        e.resource_id = Some(r.id.clone());
    }
    e.reason = (!allowed).then(|| reasons.join(","));
    let context = match &body.context {
        Some(_) => Some(redacted_context(&app, &c, body.context.as_ref()).await),
        None => None,
    };
    if let serde_json::Value::Object(m) = &mut e.metadata {
        m.insert(String::from("decision_endpoint"), serde_json::Value::from("authorize"));
        m.insert(String::from("reasons"), serde_json::json!(reasons));
        m.insert(String::from("policies"), serde_json::json!(policies));
        if !errors.is_empty() {
            m.insert(String::from("policy_errors"), serde_json::json!(errors));
        }
        if let Some(ctx) = context {
            m.insert(String::from("context"), ctx);
        }
    }
    app.guard.record(e).await?;
    if let (Some(id), Some(tenant)) = (&session_id, p.tenant_id.as_ref()) {
        capture_decision(&app, &c, tenant, id, &body, allowed, if allowed { &policies } else { &reasons }).await?;
    }
    let answer = AuthorizeResponse {
        decision: String::from(if allowed { "allow" } else { "deny" }),
        reasons,
        policies,
        errors,
        principal: super::auth::PrincipalView::from(&**p),
        limits,
    };
    Ok((headers, Json(answer)).into_response())
}

/// The caller's context as the audit records it: credentials an agent put in a tool's arguments
/// (API keys, bearer tokens, private keys…) and what the tenant's redact patterns name do not
/// belong in the audit log.
async fn redacted_context(app: &AppState, c: &Caller, ctx: Option<&serde_json::Value>) -> serde_json::Value {
    let mut v = ctx.cloned().unwrap_or(serde_json::Value::Null);
    let tenant_capture = match c.grant.principal.tenant_id.as_ref() {
        Some(t) => app.guard.session_capture(t).await.ok(),
        None => None,
    };
    match &tenant_capture {
        Some(capture) => capture.redactor.json(&mut v),
        None => portcullis_core::session::Redactor::shared_builtin().json(&mut v),
    }
    v
}

/// A decision about a session (named by `X-Session-Id` or `context.session_id`) goes into it: a
/// `tool` event for `tool.request` (allowed or not), a `system` event for other denied actions.
async fn capture_decision(
    app: &AppState,
    c: &Caller,
    tenant: &portcullis_core::TenantId,
    session_id: &str,
    body: &AuthorizeRequest,
    allowed: bool,
    decided_by: &[String],
) -> Result<(), ApiError> {
    use portcullis_core::session::{EventDecision, EventKind};
    let is_tool = body.action == "tool.request";
    // Policy decisions only: a limit's refusal says nothing about the tool (and capturing it
    // would let a flood of refused calls fill the capture queue).
    if (!is_tool && allowed) || (!allowed && decided_by.iter().any(|r| r.starts_with("limit:"))) {
        return Ok(());
    }
    let capture = app.guard.session_capture(tenant).await?;
    if !capture.captures() {
        return Ok(());
    }
    let kind = if is_tool { EventKind::Tool } else { EventKind::System };
    let origin = portcullis_guard::sessions::EventOrigin {
        tenant,
        session_id,
        principal_id: &c.grant.principal.id,
        request_id: &c.meta.request_id,
        now_ms: app.guard.now_ms(),
    };
    let mut e = origin.event(kind);
    let ctx = body.context.as_ref();
    let field = |names: &[&str]| ctx.and_then(|v| names.iter().find_map(|n| v.get(n)));
    if is_tool {
        e.tool_name = field(&["tool", "tool_name"])
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .or_else(|| body.resource.as_ref().filter(|r| r.kind == "tool").map(|r| r.id.clone()));
        e.tool_args = field(&["tool_args", "arguments"]).cloned();
        e.metadata = serde_json::json!({ "phase": "request" });
    } else {
        e.message = Some(format!("{} denied", body.action));
    }
    e.decision = Some(EventDecision {
        result: String::from(if allowed { "allow" } else { "deny" }),
        action: body.action.clone(),
        policies: decided_by.to_vec(),
    });
    capture.prepare(&mut e);
    app.guard.capture_session_events(vec![e]);
    Ok(())
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
        e.with_meta("decision_endpoint", serde_json::Value::from("auth_check"))
            .with_meta("method", serde_json::Value::from(method))
            .with_meta("route", serde_json::Value::from(route_key.clone()));
        e
    };
    if !p.scope_allows(&action) {
        app.guard.record(denied(String::from("scope:not_granted"))).await?;
        return Err(ApiError::Forbidden(String::from("the key's scopes do not include this action")));
    }
    let decision = app
        .guard
        .decide(p, &action, Some(("route", &route_key)), || ContextInput {
            ip: c.meta.ip.as_deref().and_then(|i| i.parse().ok()),
            route: route.as_ref().map(|r| r.cfg.prefix.clone()),
            method: Some(method.to_owned()),
            path: Some(path.to_owned()),
            ..ContextInput::at(app.guard.now_ms())
        })
        .await?;
    if !decision.allowed {
        let mut e = denied(crate::proxy::policy_reason(&decision));
        e.with_meta("policies", serde_json::json!(decision.reasons()));
        app.guard.record(e).await?;
        return Err(crate::proxy::policy_denied(&decision));
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
    e.with_meta("decision_endpoint", serde_json::Value::from("auth_check"))
        .with_meta("method", serde_json::Value::from(method))
        .with_meta("route", serde_json::Value::from(route_key.clone()))
        .with_meta("policies", serde_json::json!(decision.policies));
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
