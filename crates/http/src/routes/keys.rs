use super::{PageParams, paginate};
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, ApiQuery, Authed, perm};
use crate::views::{CreatedKey, KeyView, Page};
use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use portcullis_core::{KeyId, Role};
use portcullis_guard::admin::{NewKey, lifetime_ms};
use portcullis_store::ApiKeyRecord;
use serde::Deserialize;
use std::str::FromStr;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// admin, editor, viewer or service.
    pub role: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime such as `30d`, `12h`; absent = no expiry.
    pub expires_in: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, e.g. `1h` (default) or `7d`.
    pub grace_period: Option<String>,
}

/// Creates an API key. The key is in this response only; it is stored as a keyed hash.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey, security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = CreatedKey), (status = 400, body = ProblemDoc), (status = 403, body = ProblemDoc)))]
pub async fn create(
    a: Authed<perm::KeysWrite>,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let role = Role::from_str(&body.role).map_err(ApiError::BadRequest)?;
    let new = NewKey { name: body.name, role, scopes: body.scopes, expires_in: body.expires_in };
    let (key, record) = a.app.guard.create_key(&a.grant, &a.meta, a.scope()?, new).await?;
    let now = a.app.guard.now_ms();
    Ok((StatusCode::CREATED, Json(CreatedKey { key, record: KeyView::new(&record, now) })))
}

/// Lists the API keys of the caller's tenant (never the keys themselves).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(PageParams), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Page<KeyView>)))]
pub async fn list(
    a: Authed<perm::KeysRead>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<KeyView>>, ApiError> {
    let limit = p.limit()?;
    let rows = a.app.guard.store().list_keys(a.scope()?, p.cursor.as_deref(), limit + 1).await?;
    a.record_ok("key.list", "api_key", None).await?;
    let now = a.app.guard.now_ms();
    Ok(Json(paginate(rows, limit, |k| k.id.to_string(), |k| KeyView::new(k, now))))
}

async fn load<P>(a: &Authed<P>, id: &str, action: &str) -> Result<ApiKeyRecord, ApiError> {
    let store = a.app.guard.store();
    let Ok(kid) = KeyId::parse(id) else {
        return Err(a.not_found(action, "api_key", id, None).await);
    };
    match store.get_key(a.scope()?, &kid).await? {
        Some(k) => Ok(k),
        None => {
            let owner = store.key_owner(&kid).await?.map(|t| t.to_string());
            Err(a.not_found(action, "api_key", id, owner).await)
        }
    }
}

/// Reads one API key's record.
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = KeyView), (status = 404, body = ProblemDoc)))]
pub async fn get(a: Authed<perm::KeysRead>, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    let k = load(&a, &id, "key.read").await?;
    a.record_ok("key.read", "api_key", Some(&id)).await?;
    Ok(Json(KeyView::new(&k, a.app.guard.now_ms())))
}

/// Revokes an API key at once (every instance within the documented cache staleness).
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", params(("id" = String, Path)), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = KeyView), (status = 404, body = ProblemDoc)))]
pub async fn revoke(a: Authed<perm::KeysWrite>, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    let k = load(&a, &id, "key.revoke").await?;
    let k = a.app.guard.revoke_key(&a.grant, &a.meta, a.scope()?, k).await?;
    let now = a.app.guard.now_ms();
    Ok(Json(KeyView::new(&k, now)))
}

/// Rotates a key: returns a new key; the old one keeps working until the grace period ends.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", params(("id" = String, Path)), request_body(content = RotateKey, description = "optional"),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = CreatedKey), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub async fn rotate(
    a: Authed<perm::KeysWrite>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let req: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let old = load(&a, &id, "key.rotate").await?;
    let grace_ms = match req.grace_period.as_deref() {
        Some(v) => lifetime_ms("grace_period", v)?,
        None => i64::try_from(a.app.settings.key_rotation_default_grace.as_millis()).unwrap_or(3_600_000),
    };
    let (key, new) = a.app.guard.rotate_key(&a.grant, &a.meta, a.scope()?, old, grace_ms).await?;
    let now = a.app.guard.now_ms();
    Ok((StatusCode::CREATED, Json(CreatedKey { key, record: KeyView::new(&new, now) })))
}
