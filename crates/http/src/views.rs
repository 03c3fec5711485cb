//! What the API returns. Built from store records by hand so no secret field (key hash, password
//! hash, pepper) can ever be serialised by accident: these types simply do not have one.
use portcullis_core::timefmt::rfc3339_ms;
use portcullis_store::{ApiKeyRecord, Tenant, User};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    /// free, starter, pro or enterprise.
    pub tier: String,
    /// active or suspended.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            tier: t.tier.to_string(),
            status: t.status.as_str().to_owned(),
            created_at: rfc3339_ms(t.created_at_ms),
            updated_at: rfc3339_ms(t.updated_at_ms),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    /// Absent for platform operators.
    pub tenant_id: Option<String>,
    pub email: String,
    /// admin, editor, viewer, service — or operator.
    pub role: String,
    pub disabled: bool,
    pub created_at: String,
    pub created_by: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            tenant_id: u.tenant_id.as_ref().map(ToString::to_string),
            email: u.email.clone(),
            role: u.role.map(|r| r.to_string()).unwrap_or_else(|| String::from("operator")),
            disabled: u.disabled,
            created_at: rfc3339_ms(u.created_at_ms),
            created_by: u.created_by.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: String,
    pub scopes: Vec<String>,
    /// The first characters of the key (`pc_` + 8), to recognise it.
    pub prefix: String,
    /// active, revoked, expired, or rotating (old key inside its grace period).
    pub status: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
}

impl KeyView {
    pub fn new(k: &ApiKeyRecord, now_ms: i64) -> Self {
        let status = if k.revoked_at_ms.is_some() {
            "revoked"
        } else if k.expires_at_ms.is_some_and(|e| e <= now_ms) {
            "expired"
        } else if k.rotated_to.is_some() {
            "rotating"
        } else {
            "active"
        };
        Self {
            id: k.id.to_string(),
            tenant_id: k.tenant_id.to_string(),
            name: k.name.clone(),
            role: k.role.to_string(),
            scopes: k.scopes.clone(),
            prefix: k.prefix.clone(),
            status: status.to_owned(),
            created_at: rfc3339_ms(k.created_at_ms),
            created_by: k.created_by.clone(),
            expires_at: k.expires_at_ms.map(rfc3339_ms),
            revoked_at: k.revoked_at_ms.map(rfc3339_ms),
            last_used_at: k.last_used_at_ms.map(rfc3339_ms),
            rotated_from: k.rotated_from.as_ref().map(ToString::to_string),
            rotated_to: k.rotated_to.as_ref().map(ToString::to_string),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    /// The API key. Shown this once; only its keyed hash is stored.
    pub key: String,
    #[serde(flatten)]
    pub record: KeyView,
}

#[derive(Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
