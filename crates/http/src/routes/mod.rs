//! Route table. Each `routes!` line registers handlers and documents them in OpenAPI at once,
//! so an undocumented route cannot exist.
mod audit;
pub(crate) mod auth;
mod credentials;
mod decide;
mod health;
mod keys;
mod model_metrics;
mod model_profiles;
mod policies;
mod sessions;
mod tenants;
mod usage;
mod users;

use crate::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::whoami))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::get))
        .routes(routes!(tenants::suspend))
        .routes(routes!(tenants::resume))
        .routes(routes!(tenants::get_limits, tenants::put_limits))
        .routes(routes!(tenants::get_budget))
        .routes(routes!(tenants::get_ip_rules, tenants::put_ip_rules))
        .routes(routes!(credentials::list, credentials::put, credentials::delete))
        .routes(routes!(decide::authorize))
        .routes(routes!(decide::check))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::get, keys::revoke))
        .routes(routes!(keys::rotate))
        .routes(routes!(audit::query))
        .routes(routes!(audit::verify))
        .routes(routes!(policies::list, policies::create))
        .routes(routes!(policies::get, policies::update, policies::delete))
        .routes(routes!(policies::versions))
        .routes(routes!(policies::schema))
        .routes(routes!(policies::evaluate))
        .routes(routes!(policies::simulate))
        .routes(routes!(usage::query))
        .routes(routes!(model_metrics::metrics))
        .routes(routes!(model_profiles::list, model_profiles::create))
        .routes(routes!(model_profiles::get, model_profiles::update, model_profiles::delete))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::get))
        .routes(routes!(sessions::timeline))
        .routes(routes!(sessions::append))
        .routes(routes!(sessions::get_settings, sessions::put_settings))
        .routes(routes!(crate::ui::index))
        .routes(routes!(crate::ui::file))
        .routes(routes!(crate::ui::login))
        .routes(routes!(crate::ui::session))
        .routes(routes!(crate::ui::logout))
}

/// Prometheus text format. For operators, or a scraper presenting `metrics.bearer_token`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
        (status = 401, body = crate::error::ProblemDoc), (status = 403, body = crate::error::ProblemDoc)))]
pub async fn metrics(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    meta: axum::Extension<portcullis_guard::RequestMeta>,
) -> Result<axum::response::Response, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token_ok = match (&s.settings.metrics_token, bearer) {
        (Some(want), Some(got)) => subtle::ConstantTimeEq::ct_eq(want.as_bytes(), got.as_bytes()).into(),
        _ => false,
    };
    if !token_ok {
        let principal = s.guard.authenticate(bearer.map(portcullis_guard::Credential::classify), &meta).await?;
        if !principal.is_operator() {
            return Err(ApiError::Forbidden(String::from("metrics are for operators and the configured scrape token")));
        }
    }
    ::metrics::gauge!("portcullis_audit_queue_depth").set(s.guard.audit_log().queue_depth() as f64);
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

pub async fn openapi_json(State(s): State<AppState>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], s.openapi_json.as_str().to_owned())
}

pub const MAX_PAGE: u32 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Items per page (1–500, default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> Result<u32, ApiError> {
        limit_param(self.limit, 100, MAX_PAGE)
    }
}

/// A `limit` parameter: `default` when absent, otherwise 1 to `max`.
pub fn limit_param<N>(limit: Option<N>, default: N, max: N) -> Result<N, ApiError>
where
    N: Copy + PartialOrd + From<u8> + std::fmt::Display,
{
    match limit {
        None => Ok(default),
        Some(n) if n >= N::from(1) && n <= max => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!("limit `{n}` must be between 1 and {max}"))),
    }
}

/// An RFC 3339 time parameter named `field`, as Unix milliseconds.
pub fn time_param(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        portcullis_core::timefmt::parse_rfc3339_ms(s)
            .ok_or_else(|| ApiError::BadRequest(format!("`{field}` must be an RFC 3339 time")))
    })
    .transpose()
}

/// Takes one more than asked to know whether a next page exists.
pub fn paginate<T, V: utoipa::ToSchema>(
    mut rows: Vec<T>,
    limit: u32,
    cursor_of: impl Fn(&T) -> String,
    view: impl Fn(&T) -> V,
) -> crate::views::Page<V> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more { rows.last().map(&cursor_of) } else { None };
    crate::views::Page { items: rows.iter().map(view).collect(), next_cursor }
}
