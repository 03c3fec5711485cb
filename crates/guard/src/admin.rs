//! Audited administrative operations, shared by the HTTP API and the CLI so both change the
//! store the same way. Each one validates, writes its audit event durably, and only then
//! changes the store: if the audit cannot be written nothing changes.
use crate::{Grant, Guard, GuardError, RequestMeta, password};
use portcullis_core::audit::AuditResult;
use portcullis_core::iplist::{IpPolicy, IpRules};
use portcullis_core::limits::LimitOverrides;
use portcullis_core::timefmt::{parse_duration_secs, rfc3339_ms};
use portcullis_core::{KeyId, Role, TenantId, TenantScope, Tier, UserId};
use portcullis_store::{ApiKeyRecord, Tenant, TenantStatus, UpstreamCredential, User};

/// Longest validity a key or a grace period may be given.
pub const MAX_LIFETIME_SECS: i64 = 5 * 365 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// A Cedar policy that does not parse or validate, with every problem and its position.
    #[error("{0}")]
    InvalidPolicy(String, Vec<portcullis_policy::Problem>),
    #[error(transparent)]
    Guard(#[from] GuardError),
}

impl From<portcullis_store::StoreError> for AdminError {
    fn from(e: portcullis_store::StoreError) -> Self {
        AdminError::Guard(GuardError::Store(e))
    }
}

pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub scopes: Vec<String>,
    /// Lifetime text such as `30d`.
    pub expires_in: Option<String>,
}

/// A user-supplied name: trimmed, 1–`max` characters, no control characters.
pub fn check_name(field: &str, v: &str, max: usize) -> Result<String, AdminError> {
    let t = v.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!("`{field}` must be 1–{max} characters without control characters")));
    }
    Ok(t.to_owned())
}

pub fn normalise_email(raw: &str) -> Result<String, AdminError> {
    let e = raw.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(AdminError::Invalid(format!("`{}` is not a valid email address", raw.chars().take(64).collect::<String>())))
    }
}

pub fn lifetime_ms(field: &str, v: &str) -> Result<i64, AdminError> {
    let secs = parse_duration_secs(v).map_err(AdminError::Invalid)?;
    if secs > MAX_LIFETIME_SECS {
        return Err(AdminError::Invalid(format!("`{field}` may be at most 5 years")));
    }
    Ok(secs * 1000)
}

fn check_scopes(scopes: &[String]) -> Result<(), AdminError> {
    if scopes.len() > 32 {
        return Err(AdminError::Invalid(String::from("at most 32 scopes")));
    }
    for s in scopes {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'-' | b'*'));
        if !ok {
            return Err(AdminError::Invalid(format!(
                "scope `{}` must be 1–64 characters of a-z, 0-9, . _ : - *",
                s.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

impl Guard {
    fn id_text(&self) -> Result<String, AdminError> {
        Ok(uuid::Uuid::now_v7().hyphenated().to_string())
    }

    pub async fn create_tenant(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        name: &str,
        tier: Tier,
    ) -> Result<Tenant, AdminError> {
        let name = check_name("name", name, 200)?;
        let now = self.now_ms();
        let id = TenantId::parse(&self.id_text()?).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let tenant = Tenant { id, name, tier, status: TenantStatus::Active, created_at_ms: now, updated_at_ms: now };
        let mut e = self.event_for(g, meta, "tenant.create", AuditResult::Success);
        e.tenant_id = Some(tenant.id.to_string());
        e.resource_type = Some(String::from("tenant"));
        e.resource_id = Some(tenant.id.to_string());
        e.metadata = serde_json::json!({ "name": tenant.name, "tier": tier.as_str() });
        self.record(e).await?;
        self.store.create_tenant(&tenant).await?;
        Ok(tenant)
    }

    pub async fn set_tenant_status(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        mut tenant: Tenant,
        status: TenantStatus,
    ) -> Result<Tenant, AdminError> {
        let action = if status == TenantStatus::Suspended { "tenant.suspend" } else { "tenant.resume" };
        let mut e = self.event_for(g, meta, action, AuditResult::Success);
        e.tenant_id = Some(tenant.id.to_string());
        e.resource_type = Some(String::from("tenant"));
        e.resource_id = Some(tenant.id.to_string());
        e.metadata = serde_json::json!({ "from": tenant.status.as_str(), "to": status.as_str() });
        self.record(e).await?;
        let now = self.now_ms();
        self.store.set_tenant_status(&tenant.id, status, now).await?;
        self.invalidate_tenant(&tenant.id);
        tenant.status = status;
        tenant.updated_at_ms = now;
        Ok(tenant)
    }

    pub async fn set_limits(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        tenant: &Tenant,
        limits: &LimitOverrides,
    ) -> Result<(), AdminError> {
        limits.validate().map_err(AdminError::Invalid)?;
        let mut e = self.event_for(g, meta, "tenant.limits.update", AuditResult::Success);
        e.tenant_id = Some(tenant.id.to_string());
        e.resource_type = Some(String::from("tenant"));
        e.resource_id = Some(tenant.id.to_string());
        e.metadata = serde_json::to_value(limits).unwrap_or_default();
        self.record(e).await?;
        self.store.set_limits(&tenant.id, limits, self.now_ms()).await?;
        self.invalidate_limits(&tenant.id);
        Ok(())
    }

    pub async fn set_ip_rules(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        tenant: &TenantId,
        rules: &IpRules,
    ) -> Result<(), AdminError> {
        IpPolicy::compile(rules).map_err(AdminError::Invalid)?;
        let mut e = self.event_for(g, meta, "tenant.ip_rules.update", AuditResult::Success);
        e.tenant_id = Some(tenant.to_string());
        e.resource_type = Some(String::from("tenant"));
        e.resource_id = Some(tenant.to_string());
        e.metadata = serde_json::json!({ "allow": rules.allow.len(), "block": rules.block.len() });
        self.record(e).await?;
        self.store.set_ip_rules(tenant, rules, self.now_ms()).await?;
        self.invalidate_ip_rules(tenant);
        Ok(())
    }

    /// Seals and stores the credential the proxy adds on `route` for this tenant.
    pub async fn set_upstream_credential(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        route: &str,
        header: &str,
        value: &str,
    ) -> Result<UpstreamCredential, AdminError> {
        let ctx = crate::sealed::credential_context(scope.tenant_id().as_str(), route, header);
        let (nonce_hex, ciphertext_hex) =
            self.master_key().seal(&ctx, value.as_bytes()).map_err(AdminError::Invalid)?;
        let now = self.now_ms();
        let c = UpstreamCredential {
            route: route.to_owned(),
            header_name: header.to_owned(),
            nonce_hex,
            ciphertext_hex,
            created_at_ms: now,
            updated_at_ms: now,
            created_by: g.principal.id.clone(),
        };
        let mut e = self.event_for(g, meta, "upstream_credential.set", AuditResult::Success);
        e.tenant_id = Some(scope.tenant_id().to_string());
        e.resource_type = Some(String::from("upstream_credential"));
        e.resource_id = Some(route.to_owned());
        e.metadata = serde_json::json!({ "header": header });
        self.record(e).await?;
        self.store.put_upstream_credential(scope, &c).await?;
        self.invalidate_upstream_credential(scope.tenant_id(), route);
        Ok(c)
    }

    pub async fn delete_upstream_credential(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        route: &str,
    ) -> Result<bool, AdminError> {
        if self.store.get_upstream_credential(scope, route).await?.is_none() {
            return Ok(false);
        }
        let mut e = self.event_for(g, meta, "upstream_credential.delete", AuditResult::Success);
        e.tenant_id = Some(scope.tenant_id().to_string());
        e.resource_type = Some(String::from("upstream_credential"));
        e.resource_id = Some(route.to_owned());
        self.record(e).await?;
        let gone = self.store.delete_upstream_credential(scope, route, self.now_ms()).await?;
        self.invalidate_upstream_credential(scope.tenant_id(), route);
        Ok(gone)
    }

    /// `tenant: None` creates a platform operator.
    pub async fn create_user(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        email: &str,
        pw: &str,
        tenant: Option<(&TenantScope, Role)>,
    ) -> Result<User, AdminError> {
        let email = normalise_email(email)?;
        password::check_policy(pw).map_err(AdminError::Invalid)?;
        if self.store.find_user_by_email(&email).await?.is_some() {
            // Emails are unique across tenants (login is by email); do not echo whose it is.
            return Err(AdminError::Conflict(String::from("a user with this email already exists")));
        }
        let candidate = pw.to_owned();
        let hash = tokio::task::spawn_blocking(move || password::hash(&candidate))
            .await
            .map_err(|e| AdminError::Invalid(e.to_string()))?
            .map_err(AdminError::Invalid)?;
        let user = User {
            id: UserId::parse(&self.id_text()?).map_err(|e| AdminError::Invalid(e.to_string()))?,
            tenant_id: tenant.map(|(s, _)| s.tenant_id().clone()),
            email,
            password_hash: hash,
            role: tenant.map(|(_, r)| r),
            disabled: false,
            created_at_ms: self.now_ms(),
            created_by: g.principal.id.clone(),
        };
        let mut e = self.event_for(g, meta, "user.create", AuditResult::Success);
        e.tenant_id = user.tenant_id.as_ref().map(ToString::to_string);
        e.resource_type = Some(String::from("user"));
        e.resource_id = Some(user.id.to_string());
        e.metadata =
            serde_json::json!({ "email": user.email, "role": user.role.map(|r| r.as_str()).unwrap_or("operator") });
        self.record(e).await?;
        self.store.create_user(&user).await?;
        Ok(user)
    }

    /// Returns the key text (shown once) and its record.
    pub async fn create_key(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        new: NewKey,
    ) -> Result<(String, ApiKeyRecord), AdminError> {
        let name = check_name("name", &new.name, 100)?;
        check_scopes(&new.scopes)?;
        let now = self.now_ms();
        let expires_at_ms =
            new.expires_in.as_deref().map(|v| lifetime_ms("expires_in", v)).transpose()?.map(|ms| now + ms);
        let (key, prefix, hash_hex) = self.mint()?;
        let record = ApiKeyRecord {
            id: KeyId::parse(&self.id_text()?).map_err(|e| AdminError::Invalid(e.to_string()))?,
            tenant_id: scope.tenant_id().clone(),
            name,
            role: new.role,
            scopes: new.scopes,
            prefix,
            hash_hex,
            created_at_ms: now,
            created_by: g.principal.id.clone(),
            expires_at_ms,
            revoked_at_ms: None,
            last_used_at_ms: None,
            rotated_from: None,
            rotated_to: None,
        };
        let mut e = self.event_for(g, meta, "key.create", AuditResult::Success);
        e.tenant_id = Some(scope.tenant_id().to_string());
        e.resource_type = Some(String::from("api_key"));
        e.resource_id = Some(record.id.to_string());
        e.metadata = serde_json::json!({ "name": record.name, "role": record.role.as_str(), "prefix": record.prefix, "expires_at": expires_at_ms.map(rfc3339_ms) });
        self.record(e).await?;
        self.store.create_key(scope, &record).await?;
        Ok((key, record))
    }

    pub async fn revoke_key(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        mut k: ApiKeyRecord,
    ) -> Result<ApiKeyRecord, AdminError> {
        if k.revoked_at_ms.is_some() {
            return Ok(k);
        }
        let now = self.now_ms();
        let mut e = self.event_for(g, meta, "key.revoke", AuditResult::Success);
        e.tenant_id = Some(scope.tenant_id().to_string());
        e.resource_type = Some(String::from("api_key"));
        e.resource_id = Some(k.id.to_string());
        e.metadata = serde_json::json!({ "prefix": k.prefix });
        self.record(e).await?;
        self.store.revoke_key(scope, &k.id, now).await?;
        self.invalidate_key(&k.id);
        k.revoked_at_ms = Some(now);
        Ok(k)
    }

    /// Returns the new key text and record; the old key stays valid for `grace_ms`.
    pub async fn rotate_key(
        &self,
        g: &Grant,
        meta: &RequestMeta,
        scope: &TenantScope,
        old: ApiKeyRecord,
        grace_ms: i64,
    ) -> Result<(String, ApiKeyRecord), AdminError> {
        let now = self.now_ms();
        if old.revoked_at_ms.is_some() || old.expires_at_ms.is_some_and(|e| e <= now) || old.rotated_to.is_some() {
            return Err(AdminError::Conflict(String::from(
                "only an active key that was not rotated yet can be rotated; this one is revoked, expired or already rotated",
            )));
        }
        let (key, prefix, hash_hex) = self.mint()?;
        let new = ApiKeyRecord {
            id: KeyId::parse(&self.id_text()?).map_err(|e| AdminError::Invalid(e.to_string()))?,
            tenant_id: old.tenant_id.clone(),
            name: old.name.clone(),
            role: old.role,
            scopes: old.scopes.clone(),
            prefix,
            hash_hex,
            created_at_ms: now,
            created_by: g.principal.id.clone(),
            expires_at_ms: old.expires_at_ms,
            revoked_at_ms: None,
            last_used_at_ms: None,
            rotated_from: Some(old.id.clone()),
            rotated_to: None,
        };
        let old_until = now + grace_ms;
        let mut e = self.event_for(g, meta, "key.rotate", AuditResult::Success);
        e.tenant_id = Some(scope.tenant_id().to_string());
        e.resource_type = Some(String::from("api_key"));
        e.resource_id = Some(old.id.to_string());
        e.metadata = serde_json::json!({ "new_key_id": new.id.to_string(), "new_prefix": new.prefix, "old_valid_until": rfc3339_ms(old_until) });
        self.record(e).await?;
        if !self.store.rotate_key(scope, &old.id, &new, old_until).await? {
            return Err(AdminError::Conflict(String::from("a concurrent rotation or revocation changed this key")));
        }
        self.invalidate_key(&old.id);
        Ok((key, new))
    }

    fn mint(&self) -> Result<(String, String, String), AdminError> {
        let random = crate::random_bytes::<64>().map_err(AdminError::Invalid)?;
        Ok(self.mint_key(&random))
    }
}
