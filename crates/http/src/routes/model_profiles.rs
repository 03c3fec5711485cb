//! Model profiles: which model a tenant uses for a role in a deployment mode, where it is served,
//! with what temperature, and at what price per 1 000 input and output tokens.
//!
//! Prices are USD per 1 000 tokens with at most 6 decimal places (stored exactly as micro-USD;
//! finer prices are refused, never rounded). Every write is validated, then audited
//! (`model_profile.create|update|delete`) before it is made.
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, Authed, perm};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use portcullis_core::timefmt::rfc3339_ms;
use portcullis_guard::profiles::{ModelProfileChange, price_usd};
use portcullis_store::ModelProfile;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct ModelProfileView {
    /// `mp_…`.
    pub id: String,
    /// What the model is for, e.g. `chat`, `planner`.
    pub role: String,
    /// e.g. `realtime`, `batch`, `self-hosted`. Unique with `role` within the tenant.
    pub deployment_mode: String,
    /// The model name as requests and responses carry it.
    pub model: String,
    pub base_url: String,
    pub temperature: f64,
    /// USD per 1 000 input tokens.
    pub input_price_per_1k: f64,
    /// USD per 1 000 output tokens.
    pub output_price_per_1k: f64,
    pub created_at: String,
    pub created_by: String,
    pub updated_at: String,
    pub updated_by: String,
}

impl From<&ModelProfile> for ModelProfileView {
    fn from(p: &ModelProfile) -> Self {
        Self {
            id: p.id.clone(),
            role: p.role.clone(),
            deployment_mode: p.deployment_mode.clone(),
            model: p.model.clone(),
            base_url: p.base_url.clone(),
            temperature: p.temperature,
            input_price_per_1k: price_usd(p.input_price_micros_per_1k),
            output_price_per_1k: price_usd(p.output_price_micros_per_1k),
            created_at: rfc3339_ms(p.created_at_ms),
            created_by: p.created_by.clone(),
            updated_at: rfc3339_ms(p.updated_at_ms),
            updated_by: p.updated_by.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelProfileList {
    /// Ordered by role, then deployment mode.
    pub items: Vec<ModelProfileView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModelProfile {
    /// 1–64 characters of `a-z 0-9 . _ -`.
    pub role: String,
    /// 1–64 characters of `a-z 0-9 . _ -`; (role, deployment_mode) is unique within the tenant.
    pub deployment_mode: String,
    /// 1–128 characters, no control characters.
    pub model: String,
    /// `http://` or `https://` with a host (optionally a port and path; no credentials, query
    /// or fragment), at most 2048 characters.
    pub base_url: String,
    /// 0 to 2.
    pub temperature: f64,
    /// USD per 1 000 input tokens: 0 to 1000, at most 6 decimal places.
    pub input_price_per_1k: f64,
    /// USD per 1 000 output tokens: 0 to 1000, at most 6 decimal places.
    pub output_price_per_1k: f64,
}

/// Any non-empty subset of the writable fields; the others keep their value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModelProfile {
    pub role: Option<String>,
    pub deployment_mode: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub temperature: Option<f64>,
    pub input_price_per_1k: Option<f64>,
    pub output_price_per_1k: Option<f64>,
}

/// Lists the tenant's model profiles.
#[utoipa::path(get, path = "/v1/model-profiles", tag = "model-profiles", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = ModelProfileList), (status = 403, body = ProblemDoc)))]
pub async fn list(a: Authed<perm::ConfigRead>) -> Result<Json<ModelProfileList>, ApiError> {
    let scope = a.scope()?;
    let rows = a.app.guard.store().list_model_profiles(scope).await?;
    a.record_ok("model_profile.list", "model_profile", None).await?;
    Ok(Json(ModelProfileList { items: rows.iter().map(ModelProfileView::from).collect() }))
}

/// Creates a model profile. 409 when the tenant has one for that role and deployment mode.
#[utoipa::path(post, path = "/v1/model-profiles", tag = "model-profiles", request_body = CreateModelProfile,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = ModelProfileView), (status = 400, body = ProblemDoc),
        (status = 403, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub async fn create(
    a: Authed<perm::ConfigWrite>,
    ApiJson(body): ApiJson<CreateModelProfile>,
) -> Result<(StatusCode, Json<ModelProfileView>), ApiError> {
    let scope = a.scope()?.clone();
    let change = ModelProfileChange {
        role: Some(body.role),
        deployment_mode: Some(body.deployment_mode),
        model: Some(body.model),
        base_url: Some(body.base_url),
        temperature: Some(body.temperature),
        input_price_per_1k: Some(body.input_price_per_1k),
        output_price_per_1k: Some(body.output_price_per_1k),
    };
    let p = a.app.guard.create_model_profile(&a.grant, &a.meta, &scope, change).await?;
    Ok((StatusCode::CREATED, Json(ModelProfileView::from(&p))))
}

async fn load(a: &Authed<impl Send + Sync>, id: &str, action: &str) -> Result<ModelProfile, ApiError> {
    let scope = a.scope()?;
    match a.app.guard.store().get_model_profile(scope, id).await? {
        Some(p) => Ok(p),
        None => Err(a.not_found(action, "model_profile", id, None).await),
    }
}

/// Reads one model profile.
#[utoipa::path(get, path = "/v1/model-profiles/{id}", tag = "model-profiles", params(("id" = String, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = ModelProfileView), (status = 404, body = ProblemDoc)))]
pub async fn get(a: Authed<perm::ConfigRead>, Path(id): Path<String>) -> Result<Json<ModelProfileView>, ApiError> {
    let p = load(&a, &id, "model_profile.read").await?;
    a.record_ok("model_profile.read", "model_profile", Some(&p.id)).await?;
    Ok(Json(ModelProfileView::from(&p)))
}

/// Changes any of a model profile's fields.
#[utoipa::path(put, path = "/v1/model-profiles/{id}", tag = "model-profiles", params(("id" = String, Path)),
    request_body = UpdateModelProfile, security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = ModelProfileView), (status = 400, body = ProblemDoc),
        (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "the role and deployment mode are taken")))]
pub async fn update(
    a: Authed<perm::ConfigWrite>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateModelProfile>,
) -> Result<Json<ModelProfileView>, ApiError> {
    let scope = a.scope()?.clone();
    let old = load(&a, &id, "model_profile.update").await?;
    let change = ModelProfileChange {
        role: body.role,
        deployment_mode: body.deployment_mode,
        model: body.model,
        base_url: body.base_url,
        temperature: body.temperature,
        input_price_per_1k: body.input_price_per_1k,
        output_price_per_1k: body.output_price_per_1k,
    };
    let p = a.app.guard.update_model_profile(&a.grant, &a.meta, &scope, &old, change).await?;
    Ok(Json(ModelProfileView::from(&p)))
}

/// Deletes a model profile.
#[utoipa::path(delete, path = "/v1/model-profiles/{id}", tag = "model-profiles", params(("id" = String, Path)),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 403, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub async fn delete(a: Authed<perm::ConfigWrite>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let scope = a.scope()?.clone();
    let p = load(&a, &id, "model_profile.delete").await?;
    if !a.app.guard.delete_model_profile(&a.grant, &a.meta, &scope, &p).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}
