//! Roles and the one permission table. Every endpoint names a [`Permission`]; whether a principal
//! holds it is decided here and nowhere else, so the RBAC matrix test reads the same table.
//!
//! The matrix follows the seed's Admin/Editor/Viewer split mapped onto our resource types:
//! admin does everything inside its tenant, editor reads/executes/approves/exports, viewer reads,
//! service only performs data-plane actions. Platform operators are a separate principal kind
//! with every permission (including tenant management) and cross-tenant reads, which are audited.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Editor,
    Viewer,
    Service,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Editor, Role::Viewer, Role::Service];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            "service" => Ok(Role::Service),
            other => Err(format!("unknown role `{other}`: expected one of admin, editor, viewer, service")),
        }
    }
}

/// What an endpoint needs. Named `resource.verb`, the same words the audit log uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Create, list, suspend and resume tenants: platform operators only.
    TenantsManage,
    /// Read the caller's own tenant record.
    TenantRead,
    UsersRead,
    UsersWrite,
    KeysRead,
    KeysWrite,
    AuditRead,
    /// Data-plane actions (conversation.send, memory.write, tool.request, job.submit).
    Execute,
    /// The caller's own session: who am I, log out. Every authenticated principal holds it.
    Session,
    /// Tenant configuration (IP rules, limits as seen by the tenant): the seed's Config row.
    ConfigRead,
    ConfigWrite,
    /// The tenant's Cedar policies: read, evaluate, simulate.
    PoliciesRead,
    /// Create, update and delete the tenant's Cedar policies.
    PoliciesWrite,
}

impl Permission {
    pub const ALL: [Permission; 13] = [
        Permission::TenantsManage,
        Permission::TenantRead,
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::AuditRead,
        Permission::Execute,
        Permission::Session,
        Permission::ConfigRead,
        Permission::ConfigWrite,
        Permission::PoliciesRead,
        Permission::PoliciesWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::TenantsManage => "tenants.manage",
            Permission::TenantRead => "tenant.read",
            Permission::UsersRead => "users.read",
            Permission::UsersWrite => "users.write",
            Permission::KeysRead => "keys.read",
            Permission::KeysWrite => "keys.write",
            Permission::AuditRead => "audit.read",
            Permission::Execute => "execute",
            Permission::Session => "session",
            Permission::ConfigRead => "config.read",
            Permission::ConfigWrite => "config.write",
            Permission::PoliciesRead => "policies.read",
            Permission::PoliciesWrite => "policies.write",
        }
    }

    /// The roles inside a tenant that hold this permission. Operators hold every permission.
    pub fn tenant_roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Permission::TenantsManage => &[],
            Permission::TenantRead => &[Admin, Editor, Viewer],
            Permission::UsersRead => &[Admin, Editor, Viewer],
            Permission::UsersWrite => &[Admin],
            Permission::KeysRead => &[Admin, Editor, Viewer],
            Permission::KeysWrite => &[Admin],
            Permission::AuditRead => &[Admin, Editor, Viewer],
            Permission::Execute => &[Admin, Editor, Service],
            Permission::Session => &[Admin, Editor, Viewer, Service],
            Permission::ConfigRead => &[Admin, Editor, Viewer],
            Permission::ConfigWrite => &[Admin],
            Permission::PoliciesRead => &[Admin, Editor, Viewer],
            Permission::PoliciesWrite => &[Admin],
        }
    }

    pub fn granted_to(self, role: Role) -> bool {
        self.tenant_roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn viewer_only_reads_and_service_only_executes() {
        for p in Permission::ALL {
            let is_read = matches!(
                p,
                Permission::TenantRead
                    | Permission::UsersRead
                    | Permission::KeysRead
                    | Permission::AuditRead
                    | Permission::ConfigRead
                    | Permission::PoliciesRead
            );
            let own = p == Permission::Session;
            assert_eq!(p.granted_to(Role::Viewer), is_read || own, "{p:?}");
            assert_eq!(p.granted_to(Role::Service), p == Permission::Execute || own, "{p:?}");
        }
        assert!(!Permission::TenantsManage.granted_to(Role::Admin));
    }
}
