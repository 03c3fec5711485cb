use crate::AppState;
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, Authed, meta_from, perm};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use portcullis_core::audit::AuditResult;
use portcullis_core::timefmt::rfc3339_ms;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct PrincipalView {
    /// operator, user, api_key or jwt.
    pub kind: String,
    pub id: String,
    pub tenant_id: Option<String>,
    pub role: Option<String>,
}

impl From<&portcullis_core::Principal> for PrincipalView {
    fn from(p: &portcullis_core::Principal) -> Self {
        Self {
            kind: serde_json::to_value(&p.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            id: p.id.clone(),
            tenant_id: p.tenant_id.as_ref().map(ToString::to_string),
            role: p.role.map(|r| r.to_string()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Session token: send as `Authorization: Bearer <token>`.
    pub token: String,
    pub token_type: String,
    pub session_id: String,
    pub expires_at: String,
    pub principal: PrincipalView,
}

pub struct Meta(pub portcullis_guard::RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Meta(meta_from(parts)))
    }
}

/// Password login for operators and tenant users. Repeated failures back off per account and per IP.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ProblemDoc), (status = 429, body = ProblemDoc)))]
pub async fn login(
    State(s): State<AppState>,
    Meta(meta): Meta,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    if body.email.len() > 254 {
        return Err(ApiError::BadRequest(String::from("`email` is too long")));
    }
    let ok = s.guard.login(&body.email, &body.password, &meta).await?;
    Ok(Json(LoginResponse {
        token: ok.token,
        token_type: String::from("Bearer"),
        session_id: ok.session_id,
        expires_at: rfc3339_ms(ok.expires_at_ms),
        principal: PrincipalView::from(&ok.principal),
    }))
}

/// Ends the caller's login session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ProblemDoc), (status = 401, body = ProblemDoc)))]
pub async fn logout(a: Authed<perm::Session>) -> Result<axum::http::StatusCode, ApiError> {
    let Some(sid) = a.grant.principal.session_id.clone() else {
        return Err(ApiError::BadRequest(String::from("only login sessions can log out; revoke an API key instead")));
    };
    end_session(&a.app, &a.grant, &a.meta, &sid).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Audits `auth.logout`, then revokes the login session `sid` everywhere (API and UI sign-out).
pub(crate) async fn end_session(
    app: &AppState,
    grant: &portcullis_guard::Grant,
    meta: &portcullis_guard::RequestMeta,
    sid: &str,
) -> Result<(), ApiError> {
    let mut e = app.guard.event_for(grant, meta, "auth.logout", AuditResult::Success);
    e.resource_type = Some(String::from("session"));
    e.resource_id = Some(sid.to_owned());
    app.guard.record(e).await?;
    app.guard.store().revoke_session(sid, app.guard.now_ms()).await?;
    app.guard.invalidate_session(sid);
    Ok(())
}

/// Who the credential belongs to.
#[utoipa::path(get, path = "/v1/auth/whoami", tag = "auth", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = PrincipalView), (status = 401, body = ProblemDoc)))]
pub async fn whoami(a: Authed<perm::Session>) -> Result<Json<PrincipalView>, ApiError> {
    a.record_ok("auth.whoami", "principal", Some(&a.grant.principal.id)).await?;
    Ok(Json(PrincipalView::from(&*a.grant.principal)))
}
