//! `GET /v1/usage`: the tenant's traffic through the gateway by day, caller, model and route —
//! requests by status class, tokens from `openai`-kind routes, latency, cost from the tenant's
//! model profiles.
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiQuery, Authed, perm};
use axum::Json;
use portcullis_core::audit::AuditResult;
use portcullis_store::UsageRow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// The longest range one query may span.
const MAX_DAYS: i64 = 366;

#[derive(Debug, Deserialize, IntoParams)]
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

#[derive(Serialize, ToSchema, Default, Clone)]
pub struct UsageItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub requests: i64,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Mean time from the request reaching the gateway to the response's end, in ms.
    pub avg_latency_ms: f64,
    /// Exact cost in nano-USD (10⁻⁹ USD), from the model profile's prices when the tokens were
    /// counted; 0 for models without a profile.
    pub cost_nanos: i64,
    pub cost_usd: f64,
}

impl UsageItem {
    fn add(&mut self, r: &UsageRow) {
        self.requests += r.requests;
        self.status_2xx += r.status_2xx;
        self.status_4xx += r.status_4xx;
        self.status_5xx += r.status_5xx;
        self.input_tokens = self.input_tokens.saturating_add(r.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(r.output_tokens);
        // Sum first; `finish` turns it into the mean.
        self.avg_latency_ms += r.latency_ms_sum as f64;
        self.cost_nanos = self.cost_nanos.saturating_add(r.cost_nanos);
    }

    fn finish(mut self) -> Self {
        self.avg_latency_ms = if self.requests > 0 { self.avg_latency_ms / self.requests as f64 } else { 0.0 };
        self.cost_usd = self.cost_nanos as f64 / 1e9;
        self
    }
}

#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group_by: Vec<String>,
    pub items: Vec<UsageItem>,
    pub totals: UsageItem,
}

fn day(field: &str, v: &str) -> Result<i64, ApiError> {
    portcullis_core::timefmt::parse_rfc3339_ms(&format!("{v}T00:00:00Z"))
        .filter(|_| v.len() == 10)
        .ok_or_else(|| ApiError::BadRequest(format!("`{field}` must be a day, YYYY-MM-DD")))
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
    let to = p.to.clone().unwrap_or(today);
    let from = p.from.clone().unwrap_or_else(|| to.clone());
    let (from_ms, to_ms) = (day("from", &from)?, day("to", &to)?);
    if from_ms > to_ms {
        return Err(ApiError::BadRequest(String::from("`from` is after `to`")));
    }
    if (to_ms - from_ms) / 86_400_000 >= MAX_DAYS {
        return Err(ApiError::BadRequest(format!("a query spans at most {MAX_DAYS} days")));
    }
    let group_by: Vec<String> = match p.group_by.as_deref() {
        None => vec![String::from("day")],
        Some(g) => g.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    };
    if let Some(bad) = group_by.iter().find(|g| !["day", "principal", "model", "route"].contains(&g.as_str())) {
        return Err(ApiError::BadRequest(format!("cannot group by `{bad}`: use day, principal, model, route")));
    }
    // Read your own traffic: what this instance counted is written first.
    if let Err(e) = a.app.guard.flush_usage_ledger().await {
        tracing::warn!(error = %e, "usage not yet written; the answer may miss the last second");
    }
    let rows = a.app.guard.store().usage(&scope, &from, &to).await?;
    let by = |g: &str| group_by.iter().any(|x| x == g);
    let mut groups: BTreeMap<(String, String, String, String), UsageItem> = BTreeMap::new();
    let mut totals = UsageItem::default();
    for r in rows.iter().filter(|r| {
        p.principal.as_ref().is_none_or(|x| *x == r.principal_id)
            && p.model.as_ref().is_none_or(|x| *x == r.model)
            && p.route.as_ref().is_none_or(|x| *x == r.route)
    }) {
        let pick = |on: bool, v: &str| if on { v.to_owned() } else { String::new() };
        let key = (
            pick(by("day"), &r.day),
            pick(by("principal"), &r.principal_id),
            pick(by("model"), &r.model),
            pick(by("route"), &r.route),
        );
        let item = groups.entry(key).or_insert_with(|| UsageItem {
            day: by("day").then(|| r.day.clone()),
            principal: by("principal").then(|| r.principal_id.clone()),
            model: by("model").then(|| r.model.clone()),
            route: by("route").then(|| r.route.clone()),
            ..UsageItem::default()
        });
        item.add(r);
        totals.add(r);
    }
    let mut e = a.event("usage.read", AuditResult::Success);
    e.resource_type = Some(String::from("usage"));
    e.with_meta("from", serde_json::Value::from(from.clone())).with_meta("to", serde_json::Value::from(to.clone()));
    a.record(e).await?;
    Ok(Json(UsageReport {
        from,
        to,
        group_by,
        items: groups.into_values().map(UsageItem::finish).collect(),
        totals: totals.finish(),
    }))
}
