//! Extractors. [`Authed<P>`] is the evidence a handler holds: it exists only after the guard
//! authenticated the caller, applied the tenant guard and found permission `P` granted, so a
//! handler cannot forget to check. It runs before any body extractor, so an unauthenticated
//! caller gets 401, never a body-parsing error.
use crate::AppState;
use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use portcullis_core::audit::{AuditEvent, AuditResult};
use portcullis_core::{Permission, TenantScope};
use portcullis_guard::{Credential, Grant, RequestMeta};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

pub trait PermissionMarker: Send + Sync + 'static {
    const PERMISSION: Permission;
}

macro_rules! markers {
    ($($name:ident),*) => {
        pub mod perm {
            use super::*;
            $(
                pub struct $name;
                impl PermissionMarker for $name {
                    const PERMISSION: Permission = Permission::$name;
                }
            )*
        }
    };
}
markers!(
    TenantsManage,
    TenantRead,
    UsersRead,
    UsersWrite,
    KeysRead,
    KeysWrite,
    AuditRead,
    Execute,
    Session,
    ConfigRead,
    ConfigWrite,
    PoliciesRead,
    PoliciesWrite
);

pub fn credential_from(parts: &Parts) -> Option<Credential> {
    // A non-Bearer Authorization (e.g. Basic meant for the upstream) does not hide X-API-Key.
    if let Some(token) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
    {
        return Some(Credential::classify(token.trim()));
    }
    let v = parts.headers.get("x-api-key")?.to_str().ok()?;
    Some(Credential::classify(v.trim()))
}

pub fn meta_from(parts: &Parts) -> RequestMeta {
    parts.extensions.get::<RequestMeta>().cloned().unwrap_or_default()
}

/// Tells the edge layer which tenant the request acted in (for the metrics label).
pub fn note_tenant(parts: &Parts, grant: &Grant) {
    let tenant = grant.scope.as_ref().map(|s| s.tenant_id()).or(grant.principal.tenant_id.as_ref());
    if let (Some(cell), Some(t)) = (parts.extensions.get::<crate::metrics::TenantCell>(), tenant) {
        let _ = cell.0.set(t.to_string());
    }
}

pub struct Authed<P> {
    pub grant: Grant,
    pub meta: RequestMeta,
    pub app: AppState,
    _p: PhantomData<P>,
}

impl<P: PermissionMarker, S: Send + Sync> FromRequestParts<S> for Authed<P>
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let app = AppState::from_ref(state);
        let meta = meta_from(parts);
        let credential = match credential_from(parts) {
            Some(c) => Some(c),
            // The UI's cookie, only where no header credential is sent, and only with its CSRF
            // token (and a same-origin Origin) on anything that changes state.
            None => match crate::ui::cookie_token(&parts.headers) {
                Some(token) => {
                    if let Some(why) = crate::ui::csrf_violation(&parts.method, &parts.headers, &token) {
                        return Err(crate::ui::refuse_csrf(
                            &app,
                            &meta,
                            &parts.method,
                            &parts.uri,
                            &parts.headers,
                            why,
                        )
                        .await);
                    }
                    Some(Credential::Session(token))
                }
                None => None,
            },
        };
        let x_tenant = parts.headers.get("x-tenant-id").map(|v| v.to_str().unwrap_or("(not valid text)").to_owned());
        let grant = app.guard.check(credential, x_tenant.as_deref(), P::PERMISSION, &meta).await?;
        note_tenant(parts, &grant);
        Ok(Authed { grant, meta, app, _p: PhantomData })
    }
}

impl<P> Authed<P> {
    /// The tenant this request acts in. Operators must name one with `X-Tenant-ID`.
    pub fn scope(&self) -> Result<&TenantScope, ApiError> {
        self.grant.scope.as_ref().ok_or_else(|| {
            ApiError::BadRequest(String::from("operators must select a tenant with the X-Tenant-ID header"))
        })
    }

    pub fn event(&self, action: &str, result: AuditResult) -> AuditEvent {
        self.app.guard.event_for(&self.grant, &self.meta, action, result)
    }

    /// Writes the event durably; fails the request (503) when it cannot.
    pub async fn record(&self, event: AuditEvent) -> Result<(), ApiError> {
        Ok(self.app.guard.record(event).await?)
    }

    pub async fn record_ok(
        &self,
        action: &str,
        resource_type: &str,
        resource_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut e = self.event(action, AuditResult::Success);
        e.resource_type = Some(resource_type.to_owned());
        e.resource_id = resource_id.map(str::to_owned);
        self.record(e).await
    }

    /// Refuses the request (403) after auditing the refusal. Handlers use this for every
    /// decision they make beyond the permission table, so no refusal goes unrecorded.
    pub async fn deny(&self, action: &str, reason: &str, detail: &str) -> ApiError {
        let mut e = self.event(action, AuditResult::Denied);
        e.reason = Some(reason.to_owned());
        match self.record(e).await {
            Ok(()) => ApiError::Forbidden(detail.to_owned()),
            Err(err) => err,
        }
    }

    /// A lookup by id found nothing in the caller's tenant: answer 404 like any missing id, and
    /// audit it. When the id belongs to another tenant, that tenant's log gets a
    /// `cross_tenant_access_blocked` event too (the caller's own log does not say so: no oracle).
    pub async fn not_found(&self, action: &str, resource_type: &str, id: &str, owner: Option<String>) -> ApiError {
        let mut e = self.event(action, AuditResult::Denied);
        e.resource_type = Some(resource_type.to_owned());
        e.resource_id = Some(id.to_owned());
        e.reason = Some(String::from("not_found"));
        let mut events = vec![e];
        let caller_tenant = self.grant.scope.as_ref().map(|s| s.tenant_id().to_string());
        if let Some(owner) = owner.filter(|o| Some(o) != caller_tenant.as_ref()) {
            let mut x = self.event("cross_tenant_access_blocked", AuditResult::Denied);
            x.tenant_id = Some(owner);
            x.resource_type = Some(resource_type.to_owned());
            x.resource_id = Some(id.to_owned());
            x.reason = Some(String::from("object belongs to another tenant"));
            x.metadata = serde_json::json!({ "caller_tenant": caller_tenant, "attempted_action": action });
            events.push(x);
        }
        match self.app.guard.audit_log().record_all(events).await {
            Ok(()) => ApiError::NotFound,
            Err(e) => ApiError::from(portcullis_guard::GuardError::from(e)),
        }
    }
}

/// JSON body with unknown fields rejected (the types use `deny_unknown_fields`) and every
/// rejection rendered as problem+json.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge;
    }
    match r {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::BadRequest(String::from("expected a JSON body with Content-Type: application/json"))
        }
        other => ApiError::BadRequest(format!("invalid JSON body: {}", other.body_text())),
    }
}

pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid query: {}", r.body_text()))
}
