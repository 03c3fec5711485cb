//! `GET /v1/usage`: the tenant's traffic through the gateway by day, caller, model and route —
//! requests by status class, tokens from `openai`-kind routes, latency, cost from the tenant's
//! model profiles.
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiQuery, Authed, perm};
use crate::usage_report::{UsageFilters, UsageQuery, UsageReport};
use axum::Json;
use portcullis_core::audit::AuditResult;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// First day, `YYYY-MM-DD` (UTC), inclusive. Default: `to`.
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC), inclusive. Default: today.
    pub to: Option<String>,
    /// Comma-separated dimensions to group by: `day`, `principal`, `model`, `route`. Default `day`;
    /// empty (`group_by=`) sums the whole range into one row.
    pub group_by: Option<String>,
    /// Only this caller (`key:…`, `user:…`, `jwt:…`).
    pub principal: Option<String>,
    pub model: Option<String>,
    pub route: Option<String>,
}

/// Usage of the caller's tenant (operators: the tenant named by X-Tenant-ID).
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageParams), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = UsageReport), (status = 400, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
pub async fn query(
    a: Authed<perm::ConfigRead>,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let scope = a.scope()?.clone();
    let today = portcullis_core::timefmt::utc_date(a.app.guard.now_ms());
    let filters = UsageFilters { principal: p.principal, model: p.model, route: p.route };
    let q = UsageQuery::new(p.from.as_deref(), p.to.as_deref(), p.group_by.as_deref(), filters, &today)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Read your own traffic: what this instance counted is written first.
    if let Err(e) = a.app.guard.flush_usage_ledger().await {
        tracing::warn!(error = %e, "usage not yet written; the answer may miss the last second");
    }
    let rows = a.app.guard.store().usage(&scope, &q.from, &q.to).await?;
    let mut e = a.event("usage.read", AuditResult::Success);
    e.resource_type = Some(String::from("usage"));
    e.with_meta("from", serde_json::Value::from(q.from.clone())).with_meta("to", serde_json::Value::from(q.to.clone()));
    a.record(e).await?;
    Ok(Json(q.report(&rows)))
}
