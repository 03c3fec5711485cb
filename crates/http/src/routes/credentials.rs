//! Upstream credentials: what the proxy adds when it forwards a tenant's request on a route
//! (e.g. the tenant's own LLM provider key). Written once, stored sealed, never returned.
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, ApiQuery, Authed, perm};
use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use portcullis_core::audit::AuditResult;
use portcullis_core::timefmt::rfc3339_ms;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCredential {
    /// A configured route prefix, e.g. `/llm`.
    pub route: String,
    /// Header the proxy sets, e.g. `authorization` or `x-api-key`.
    pub header: String,
    /// Its value, e.g. `Bearer sk-…`. Stored sealed; never returned.
    pub value: String,
}

#[derive(Serialize, ToSchema)]
pub struct CredentialView {
    pub route: String,
    pub header: String,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RouteParam {
    pub route: String,
}

const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "proxy-authorization",
    "x-request-id",
    "x-forwarded-for",
];

fn check_route(a: &Authed<impl Send + Sync>, route: &str) -> Result<(), ApiError> {
    match a.app.routes.find(route) {
        Some(r) if r.cfg.prefix == route => Ok(()),
        _ => Err(ApiError::BadRequest(format!(
            "`{}` is not a configured route prefix",
            route.chars().take(100).collect::<String>()
        ))),
    }
}

/// Sets the credential the proxy adds on a route for the caller's tenant (tenant admins; operators
/// with X-Tenant-ID).
#[utoipa::path(put, path = "/v1/upstream-credentials", tag = "upstream credentials", request_body = PutCredential,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = CredentialView), (status = 400, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
pub async fn put(
    a: Authed<perm::ConfigWrite>,
    ApiJson(body): ApiJson<PutCredential>,
) -> Result<Json<CredentialView>, ApiError> {
    check_route(&a, &body.route)?;
    let header = body.header.trim().to_ascii_lowercase();
    let name_ok = HeaderName::from_bytes(header.as_bytes()).is_ok()
        && !FORBIDDEN_HEADERS.contains(&header.as_str())
        && !header.starts_with("x-portcullis-");
    if !name_ok {
        return Err(ApiError::BadRequest(format!(
            "`{}` cannot be set as an upstream credential header",
            header.chars().take(64).collect::<String>()
        )));
    }
    if body.value.is_empty() || body.value.len() > 8192 || HeaderValue::from_str(&body.value).is_err() {
        return Err(ApiError::BadRequest(String::from("`value` must be 1–8192 bytes of valid header text")));
    }
    let c =
        a.app.guard.set_upstream_credential(&a.grant, &a.meta, a.scope()?, &body.route, &header, &body.value).await?;
    Ok(Json(CredentialView {
        route: c.route,
        header: c.header_name,
        created_at: rfc3339_ms(c.created_at_ms),
        updated_at: rfc3339_ms(c.updated_at_ms),
        created_by: c.created_by,
    }))
}

/// Lists which routes have a credential (never the values).
#[utoipa::path(get, path = "/v1/upstream-credentials", tag = "upstream credentials", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Vec<CredentialView>)))]
pub async fn list(a: Authed<perm::ConfigRead>) -> Result<Json<Vec<CredentialView>>, ApiError> {
    let rows = a.app.guard.store().list_upstream_credentials(a.scope()?).await?;
    a.record_ok("upstream_credential.list", "upstream_credential", None).await?;
    Ok(Json(
        rows.into_iter()
            .map(|c| CredentialView {
                route: c.route,
                header: c.header_name,
                created_at: rfc3339_ms(c.created_at_ms),
                updated_at: rfc3339_ms(c.updated_at_ms),
                created_by: c.created_by,
            })
            .collect(),
    ))
}

/// Removes the credential of a route.
#[utoipa::path(delete, path = "/v1/upstream-credentials", tag = "upstream credentials", params(RouteParam),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 204), (status = 404, body = ProblemDoc)))]
pub async fn delete(a: Authed<perm::ConfigWrite>, ApiQuery(p): ApiQuery<RouteParam>) -> Result<StatusCode, ApiError> {
    if a.app.guard.delete_upstream_credential(&a.grant, &a.meta, a.scope()?, &p.route).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        let mut e = a.event("upstream_credential.delete", AuditResult::Denied);
        e.reason = Some(String::from("not_found"));
        e.resource_id = Some(p.route.chars().take(200).collect());
        a.record(e).await?;
        Err(ApiError::NotFound)
    }
}
