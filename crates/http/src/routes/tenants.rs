use super::{PageParams, paginate};
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, ApiQuery, Authed, perm};
use crate::views::{Page, TenantView};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use portcullis_core::audit::AuditResult;
use portcullis_core::{TenantId, Tier};
use portcullis_store::{Tenant, TenantStatus};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    /// free (default), starter, pro or enterprise.
    pub tier: Option<String>,
}

/// Creates a tenant (operators).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant, security(("bearer" = [])),
    responses((status = 201, body = TenantView), (status = 400, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
pub async fn create(
    a: Authed<perm::TenantsManage>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    let tier = match body.tier.as_deref() {
        None => Tier::Free,
        Some(t) => Tier::from_str(t).map_err(ApiError::BadRequest)?,
    };
    let tenant = a.app.guard.create_tenant(&a.grant, &a.meta, &body.name, tier).await?;
    Ok((StatusCode::CREATED, Json(TenantView::from(&tenant))))
}

/// Lists tenants (operators).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = Page<TenantView>), (status = 403, body = ProblemDoc)))]
pub async fn list(
    a: Authed<perm::TenantsManage>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<TenantView>>, ApiError> {
    let limit = p.limit()?;
    let rows = a.app.guard.store().list_tenants(p.cursor.as_deref(), limit + 1).await?;
    a.record_ok("tenant.list", "tenant", None).await?;
    Ok(Json(paginate(rows, limit, |t| t.id.to_string(), |t| TenantView::from(t))))
}

async fn load(a: &Authed<impl Send + Sync>, id: &str, action: &str) -> Result<Tenant, ApiError> {
    let store = a.app.guard.store();
    let Ok(tid) = TenantId::parse(id) else {
        return Err(a.not_found(action, "tenant", id, None).await);
    };
    // Tenant principals see only their own tenant; any other id is "not found".
    let own = a.grant.principal.is_operator() || a.grant.principal.tenant_id.as_ref() == Some(&tid);
    let found = if own { store.get_tenant(&tid).await? } else { None };
    match found {
        Some(t) => Ok(t),
        None => {
            let owner = store.get_tenant(&tid).await?.map(|t| t.id.to_string());
            Err(a.not_found(action, "tenant", id, owner).await)
        }
    }
}

/// Audits a successful read of something belonging to tenant `t`.
async fn record_read(a: &Authed<impl Send + Sync>, action: &str, t: &Tenant) -> Result<(), ApiError> {
    let mut e = a.event(action, AuditResult::Success);
    e.tenant_id = Some(t.id.to_string());
    e.resource_type = Some(String::from("tenant"));
    e.resource_id = Some(t.id.to_string());
    a.record(e).await
}

/// Reads a tenant: operators any, tenant principals their own.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = ProblemDoc)))]
pub async fn get(a: Authed<perm::TenantRead>, Path(id): Path<String>) -> Result<Json<TenantView>, ApiError> {
    let t = load(&a, &id, "tenant.read").await?;
    record_read(&a, "tenant.read", &t).await?;
    Ok(Json(TenantView::from(&t)))
}

async fn set_status(
    a: Authed<perm::TenantsManage>,
    id: String,
    status: TenantStatus,
) -> Result<Json<TenantView>, ApiError> {
    let action = if status == TenantStatus::Suspended { "tenant.suspend" } else { "tenant.resume" };
    let t = load(&a, &id, action).await?;
    let t = a.app.guard.set_tenant_status(&a.grant, &a.meta, t, status).await?;
    Ok(Json(TenantView::from(&t)))
}

/// Suspends a tenant: every credential of it fails with 403 until resumed (operators).
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = ProblemDoc)))]
pub async fn suspend(a: Authed<perm::TenantsManage>, Path(id): Path<String>) -> Result<Json<TenantView>, ApiError> {
    set_status(a, id, TenantStatus::Suspended).await
}

/// Resumes a suspended tenant (operators).
#[utoipa::path(post, path = "/v1/tenants/{id}/resume", tag = "tenants", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = ProblemDoc)))]
pub async fn resume(a: Authed<perm::TenantsManage>, Path(id): Path<String>) -> Result<Json<TenantView>, ApiError> {
    set_status(a, id, TenantStatus::Active).await
}

#[derive(serde::Serialize, ToSchema)]
pub struct LimitsResponse {
    pub tenant_id: String,
    pub tier: String,
    /// The numbers in force: tier defaults with the overrides on top.
    #[schema(value_type = Object)]
    pub effective: portcullis_core::limits::EffectiveLimits,
    /// What the operator set; absent fields follow the tier.
    #[schema(value_type = Object)]
    pub overrides: portcullis_core::limits::LimitOverrides,
}

async fn limits_view(a: &Authed<impl Send + Sync>, t: &Tenant) -> Result<LimitsResponse, ApiError> {
    let effective = a.app.guard.effective_limits(&t.id).await?.ok_or(ApiError::NotFound)?;
    let overrides = a.app.guard.store().get_limits(&t.id).await?;
    Ok(LimitsResponse { tenant_id: t.id.to_string(), tier: t.tier.to_string(), effective, overrides })
}

/// The tenant's limits: operators any tenant, tenant principals their own.
#[utoipa::path(get, path = "/v1/tenants/{id}/limits", tag = "tenants", params(("id" = String, Path)), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = LimitsResponse), (status = 404, body = ProblemDoc)))]
pub async fn get_limits(a: Authed<perm::TenantRead>, Path(id): Path<String>) -> Result<Json<LimitsResponse>, ApiError> {
    let t = load(&a, &id, "tenant.limits.read").await?;
    record_read(&a, "tenant.limits.read", &t).await?;
    Ok(Json(limits_view(&a, &t).await?))
}

/// Sets a tenant's rate, daily quota and concurrency overrides (operators). PUT replaces the
/// whole set: a field left out follows the tier default again (the CLI's `tenant limits` changes
/// only the flags given). Running servers apply it within `auth.cache_refresh_ms`.
#[utoipa::path(put, path = "/v1/tenants/{id}/limits", tag = "tenants", params(("id" = String, Path)), request_body = Object,
    security(("bearer" = [])),
    responses((status = 200, body = LimitsResponse), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub async fn put_limits(
    a: Authed<perm::TenantsManage>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<portcullis_core::limits::LimitOverrides>,
) -> Result<Json<LimitsResponse>, ApiError> {
    let t = load(&a, &id, "tenant.limits.update").await?;
    a.app.guard.set_limits(&a.grant, &a.meta, &t, &body).await?;
    Ok(Json(limits_view(&a, &t).await?))
}

/// The tenant's IP allow/block lists (CIDR): operators any tenant, tenant readers their own.
#[utoipa::path(get, path = "/v1/tenants/{id}/ip-rules", tag = "tenants", params(("id" = String, Path)), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
pub async fn get_ip_rules(
    a: Authed<perm::ConfigRead>,
    Path(id): Path<String>,
) -> Result<Json<portcullis_core::iplist::IpRules>, ApiError> {
    let t = load(&a, &id, "tenant.ip_rules.read").await?;
    let rules = a.app.guard.store().get_ip_rules(&t.id).await?;
    record_read(&a, "tenant.ip_rules.read", &t).await?;
    Ok(Json(rules))
}

/// Replaces the tenant's IP lists: `{"allow": [CIDR…], "block": [CIDR…]}`. Blocked addresses get
/// 403; with a non-empty allow list, every other address does too. Operators and tenant admins.
#[utoipa::path(put, path = "/v1/tenants/{id}/ip-rules", tag = "tenants", params(("id" = String, Path)), request_body = Object,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Object), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub async fn put_ip_rules(
    a: Authed<perm::ConfigWrite>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<portcullis_core::iplist::IpRules>,
) -> Result<Json<portcullis_core::iplist::IpRules>, ApiError> {
    let t = load(&a, &id, "tenant.ip_rules.update").await?;
    a.app.guard.set_ip_rules(&a.grant, &a.meta, &t.id, &body).await?;
    Ok(Json(body))
}

#[derive(Serialize, ToSchema)]
pub struct BudgetWindowView {
    /// `YYYY-MM-DD` (daily) or `YYYY-MM` (monthly), UTC.
    pub window: String,
    /// `null`: no budget in this window.
    pub limit_usd: Option<f64>,
    /// Settled spend (usage is written every second; requests in flight are not included).
    pub spent_usd: f64,
    /// Spend as a percentage of the limit (`null` without a limit).
    pub percent: Option<f64>,
    /// At or above 90% of the limit.
    pub warning: bool,
    /// At or above the limit: requests get 402 until `resets_at`.
    pub exhausted: bool,
    pub resets_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct BudgetView {
    pub tenant_id: String,
    pub daily: BudgetWindowView,
    pub monthly: BudgetWindowView,
}

fn window_view(w: &portcullis_guard::budget::WindowStatus) -> BudgetWindowView {
    let percent = w.limit_nanos.filter(|l| *l > 0).map(|l| (w.spent_nanos as f64 / l as f64 * 1000.0).round() / 10.0);
    BudgetWindowView {
        window: w.id.clone(),
        limit_usd: w.limit_nanos.map(portcullis_core::limits::nanos_to_usd),
        spent_usd: portcullis_core::limits::nanos_to_usd(w.spent_nanos),
        percent,
        warning: w.limit_nanos.is_some_and(|l| i128::from(w.spent_nanos) * 10 >= i128::from(l) * 9),
        exhausted: w.limit_nanos.is_some_and(|l| w.spent_nanos >= l),
        resets_at: portcullis_core::timefmt::rfc3339_ms(w.reset_ms),
    }
}

/// The tenant's daily and monthly spend against its budgets: operators any tenant, tenant
/// readers their own.
#[utoipa::path(get, path = "/v1/tenants/{id}/budget", tag = "tenants", params(("id" = String, Path)), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = BudgetView), (status = 404, body = ProblemDoc)))]
pub async fn get_budget(a: Authed<perm::TenantRead>, Path(id): Path<String>) -> Result<Json<BudgetView>, ApiError> {
    let t = load(&a, &id, "tenant.budget.read").await?;
    record_read(&a, "tenant.budget.read", &t).await?;
    let [daily, monthly] = a.app.guard.budget_status(&t.id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(BudgetView { tenant_id: t.id.to_string(), daily: window_view(&daily), monthly: window_view(&monthly) }))
}
