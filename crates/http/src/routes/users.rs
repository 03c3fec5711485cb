use super::{PageParams, paginate};
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiJson, ApiQuery, Authed, perm};
use crate::views::{Page, UserView};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use portcullis_core::{Role, UserId};
use serde::Deserialize;
use std::str::FromStr;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    /// At least 12 characters.
    pub password: String,
    /// admin, editor, viewer or service; `operator` creates a platform operator (operators only,
    /// without X-Tenant-ID).
    pub role: String,
}

/// Creates a user in the caller's tenant (tenant admins, operators with X-Tenant-ID), or a
/// platform operator (operators).
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUser, security(("bearer" = []), ("api_key" = [])),
    responses((status = 201, body = UserView), (status = 400, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub async fn create(
    a: Authed<perm::UsersWrite>,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let user = if body.role == "operator" {
        if !a.grant.principal.is_operator() || a.grant.scope.is_some() {
            return Err(a
                .deny(
                    "user.create",
                    "operator_creation_not_allowed",
                    "only operators, without X-Tenant-ID, create operators",
                )
                .await);
        }
        a.app.guard.create_user(&a.grant, &a.meta, &body.email, &body.password, None).await?
    } else {
        let role = Role::from_str(&body.role).map_err(ApiError::BadRequest)?;
        a.app.guard.create_user(&a.grant, &a.meta, &body.email, &body.password, Some((a.scope()?, role))).await?
    };
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// Lists the users of the caller's tenant.
#[utoipa::path(get, path = "/v1/users", tag = "users", params(PageParams), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = Page<UserView>)))]
pub async fn list(
    a: Authed<perm::UsersRead>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<UserView>>, ApiError> {
    let limit = p.limit()?;
    let rows = a.app.guard.store().list_users(a.scope()?, p.cursor.as_deref(), limit + 1).await?;
    a.record_ok("user.list", "user", None).await?;
    Ok(Json(paginate(rows, limit, |u| u.id.to_string(), |u| UserView::from(u))))
}

/// Reads one user of the caller's tenant.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path)), security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = UserView), (status = 404, body = ProblemDoc)))]
pub async fn get(a: Authed<perm::UsersRead>, Path(id): Path<String>) -> Result<Json<UserView>, ApiError> {
    let store = a.app.guard.store();
    let Ok(uid) = UserId::parse(&id) else {
        return Err(a.not_found("user.read", "user", &id, None).await);
    };
    match store.get_user(a.scope()?, &uid).await? {
        Some(u) => {
            a.record_ok("user.read", "user", Some(&id)).await?;
            Ok(Json(UserView::from(&u)))
        }
        None => {
            let owner = store.user_owner(&uid).await?.flatten().map(|t| t.to_string());
            Err(a.not_found("user.read", "user", &id, owner).await)
        }
    }
}
