//! Who is calling, and the tenant scope that proves a tenant was authorised.
//!
//! A [`TenantScope`] is the only way store calls on tenant data are written. It is made by the
//! guard after authentication and authorisation ([`TenantScope::authorized`]), or by the CLI,
//! which runs with the operator's authority on the local store ([`TenantScope::operator_cli`]).
use crate::ids::{KeyId, TenantId, UserId};
use crate::rbac::Role;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// Platform operator (password login).
    Operator,
    /// Tenant user (password login).
    User,
    /// API key.
    ApiKey,
    /// JWT bearer token from a configured issuer.
    Jwt,
}

#[derive(Clone, Debug, Serialize)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// Stable identifier of the caller as written in the audit log (`user_id` field).
    pub id: String,
    /// `None` only for operators.
    pub tenant_id: Option<TenantId>,
    /// `None` only for operators.
    pub role: Option<Role>,
    pub key_id: Option<KeyId>,
    pub user_id: Option<UserId>,
    /// Session token id when the principal logged in with a password.
    pub session_id: Option<String>,
    /// API-key scopes. Empty: the role alone decides. Otherwise every action (an admin
    /// permission name such as `keys.read`, or a data-plane action such as `conversation.send`)
    /// must also match a scope: exactly, `*`, or a `prefix.*` pattern.
    pub scopes: Vec<String>,
}

impl Principal {
    /// An operator acting outside HTTP (the CLI, bootstrap, tools), named `id` in the audit log.
    pub fn system_operator(id: impl Into<String>) -> Self {
        Self {
            kind: PrincipalKind::Operator,
            id: id.into(),
            tenant_id: None,
            role: None,
            key_id: None,
            user_id: None,
            session_id: None,
            scopes: Vec::new(),
        }
    }

    /// Whether the principal's scopes (if any) cover `action`.
    pub fn scope_allows(&self, action: &str) -> bool {
        self.scopes.is_empty()
            || self.scopes.iter().any(|s| {
                s == "*"
                    || s == action
                    || s.strip_suffix('*').is_some_and(|p| p.ends_with('.') && action.starts_with(p))
            })
    }

    pub fn is_operator(&self) -> bool {
        self.kind == PrincipalKind::Operator
    }
}

/// Evidence that the holder may touch rows of exactly one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantScope {
    tenant_id: TenantId,
    /// True when an operator acts inside a tenant (cross-tenant read/write, audited).
    via_operator: bool,
}

impl TenantScope {
    /// Made by the guard once the principal is authenticated and holds the permission.
    pub fn authorized(tenant_id: TenantId, via_operator: bool) -> Self {
        Self { tenant_id, via_operator }
    }
    /// The CLI acts on the local store with the operator's authority; its actions are audited
    /// under the `cli` writer.
    pub fn operator_cli(tenant_id: TenantId) -> Self {
        Self { tenant_id, via_operator: true }
    }
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }
    pub fn via_operator(&self) -> bool {
        self.via_operator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_match_exactly_by_wildcard_or_by_prefix() {
        let mut p = Principal::system_operator("x");
        assert!(p.scope_allows("anything"), "no scopes: the role decides");
        p.scopes = vec![String::from("conversation.send"), String::from("keys.*")];
        assert!(p.scope_allows("conversation.send"));
        assert!(p.scope_allows("keys.read") && p.scope_allows("keys.write"));
        assert!(!p.scope_allows("tool.request"));
        assert!(!p.scope_allows("keysx.read"));
        assert!(!p.scope_allows("conversation.send.more"));
        p.scopes = vec![String::from("*")];
        assert!(p.scope_allows("tool.request"));
    }
}
