//! Audited changes to a tenant's Cedar policies, shared by the HTTP API and the CLI. Each one
//! validates against the schema, writes its audit event durably, then changes the store and
//! drops this process's compiled set (other processes learn of it from the change feed).
use crate::admin::AdminError;
use crate::{Grant, Guard, RequestMeta};
use portcullis_core::TenantScope;
use portcullis_core::audit::{AuditEvent, AuditResult};
use portcullis_policy::Problem;
use portcullis_store::{PolicyRecord, StoreError};

/// The most policy documents one tenant may hold.
pub const MAX_POLICIES: usize = 1000;

/// What a new or changed policy says; `None` fields of an update keep their value.
#[derive(Default)]
pub struct PolicyChange {
    pub name: Option<String>,
    pub cedar: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

fn check_name(name: &str) -> Result<(), AdminError> {
    let n = name.chars().count();
    if n == 0 || n > 128 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(AdminError::Invalid(String::from(
            "`name` must be 1–128 characters without control characters or surrounding spaces",
        )));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), AdminError> {
    if d.chars().count() > 2000 {
        return Err(AdminError::Invalid(String::from("`description` must be at most 2000 characters")));
    }
    Ok(())
}

fn name_taken(name: &str) -> impl FnOnce(StoreError) -> AdminError + '_ {
    move |e| match e {
        StoreError::Conflict(_) => AdminError::Conflict(format!("the tenant already has a policy named `{name}`")),
        other => other.into(),
    }
}

pub fn new_policy_id() -> String {
    format!("pol_{}", uuid::Uuid::now_v7().simple())
}

impl Guard {
    /// Validates a document against the schema; the warnings when it validates.
    pub fn check_policy(&self, id: &str, cedar: &str) -> Result<Vec<Problem>, AdminError> {
        self.policy.check(id, cedar).map(|c| c.warnings).map_err(|errors| {
            AdminError::InvalidPolicy(String::from("the policy does not validate against the schema"), errors)
        })
    }

    fn policy_event(&self, g: &Grant, meta: &RequestMeta, action: &str, p: &PolicyRecord) -> AuditEvent {
        let mut e = self.event_for(g, meta, action, AuditResult::Success);
        e.tenant_id = Some(p.tenant_id.to_string());
        e.resource_type = Some(String::from("policy"));
        e.resource_id = Some(p.id.clone());
        e.with_meta("name", serde_json::Value::from(p.name.clone()))
            .with_meta("version", serde_json::Value::from(p.version))
            .with_meta("enabled", serde_json::Value::from(p.enabled));
        e
    }

    pub async fn create_policy(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        change: PolicyChange,
    ) -> Result<(PolicyRecord, Vec<Problem>), AdminError> {
        let name = change.name.ok_or_else(|| AdminError::Invalid(String::from("`name` is required")))?;
        check_name(&name)?;
        let description = change.description.unwrap_or_default();
        check_description(&description)?;
        let cedar = change.cedar.ok_or_else(|| AdminError::Invalid(String::from("`cedar` is required")))?;
        let id = new_policy_id();
        let warnings = self.check_policy(&id, &cedar)?;
        let existing = self.store.list_policies(scope).await?;
        if existing.len() >= MAX_POLICIES {
            return Err(AdminError::Conflict(format!(
                "the tenant already holds {MAX_POLICIES} policies, the most allowed"
            )));
        }
        // Refused before the event is recorded: the log must not claim a creation that cannot
        // happen. (The store's unique constraint still settles a concurrent race.)
        if existing.iter().any(|p| p.name == name) {
            return Err(AdminError::Conflict(format!("the tenant already has a policy named `{name}`")));
        }
        let now = self.now_ms();
        let p = PolicyRecord {
            id,
            tenant_id: scope.tenant_id().clone(),
            name,
            description,
            cedar,
            enabled: change.enabled.unwrap_or(true),
            version: 1,
            created_at_ms: now,
            created_by: g.principal.id.clone(),
            updated_at_ms: now,
            updated_by: g.principal.id.clone(),
        };
        self.record(self.policy_event(g, meta, "policy.create", &p)).await?;
        self.store.create_policy(scope, &p).await.map_err(name_taken(&p.name))?;
        self.invalidate_policies(scope.tenant_id());
        Ok((p, warnings))
    }

    /// Applies `change` to `old` as version `old.version + 1`. Conflict when the policy moved on
    /// since `old` was read, or the new name is taken.
    pub async fn update_policy(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        old: &PolicyRecord,
        change: PolicyChange,
    ) -> Result<(PolicyRecord, Vec<Problem>), AdminError> {
        let mut p = old.clone();
        if let Some(n) = change.name {
            check_name(&n)?;
            p.name = n;
        }
        if let Some(d) = change.description {
            check_description(&d)?;
            p.description = d;
        }
        if let Some(c) = change.cedar {
            p.cedar = c;
        }
        if let Some(e) = change.enabled {
            p.enabled = e;
        }
        let warnings = self.check_policy(&p.id, &p.cedar)?;
        // A rename onto a taken name is refused before the event is recorded (see `create_policy`).
        if p.name != old.name && self.store.list_policies(scope).await?.iter().any(|q| q.id != p.id && q.name == p.name)
        {
            return Err(AdminError::Conflict(format!("the tenant already has a policy named `{}`", p.name)));
        }
        p.version = old.version + 1;
        p.updated_at_ms = self.now_ms();
        p.updated_by = g.principal.id.clone();
        self.record(self.policy_event(g, meta, "policy.update", &p)).await?;
        if !self.store.update_policy(scope, &p).await.map_err(name_taken(&p.name))? {
            return Err(AdminError::Conflict(String::from("the policy changed meanwhile; re-read it")));
        }
        self.invalidate_policies(scope.tenant_id());
        Ok((p, warnings))
    }

    /// Deletes the policy; false when it was gone already.
    pub async fn delete_policy(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        p: &PolicyRecord,
    ) -> Result<bool, AdminError> {
        self.record(self.policy_event(g, meta, "policy.delete", p)).await?;
        let deleted = self.store.delete_policy(scope, &p.id, &g.principal.id, self.now_ms()).await?;
        self.invalidate_policies(scope.tenant_id());
        Ok(deleted)
    }
}
