//! The one decision engine. Every request that touches Portcullis data or asks for a decision
//! goes through [`Guard`]: authenticate → tenant guard → permission, each failure audited, and
//! the answer is a [`Grant`] carrying the [`TenantScope`] that store calls need.
//!
//! The hot path (API-key verification) never touches the store for a cached key: keys, sessions
//! and tenant states are cached in memory and invalidated from the store's change feed, which
//! also carries changes made by other processes (the CLI, other instances). Staleness is bounded
//! by `cache_refresh` (default 1 s).
#![forbid(unsafe_code)]

pub mod admin;
pub mod budget;
mod cache;
pub mod jwt;
mod login;
pub mod password;
pub mod policies;
pub mod profiles;
pub mod sealed;
pub mod sessions;
pub mod usage;

pub use jwt::{JwtConfig, JwtKeyConfig};
pub use login::{LoginOk, LoginPolicy};
pub use portcullis_policy::{ContextInput, Decision, Engine as PolicyEngine};

use portcullis_audit::{AuditLog, AuditUnavailable};
use portcullis_core::audit::{AuditEvent, AuditResult};
use portcullis_core::iplist::{IpPolicy, IpVerdict};
use portcullis_core::limits::{EffectiveLimits, effective};
use portcullis_core::{KeyId, Permission, Principal, PrincipalKind, TenantId, TenantScope, Tier, TierLimits, apikey};
use portcullis_limiter::{Admission, LimitRequest, Limiter, Limits, Rejection};
use portcullis_store::{Store, StoreError, TenantStatus};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// What the HTTP layer knows about a request, for audit events.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A presented credential, classified by shape only.
#[derive(Clone)]
pub enum Credential {
    ApiKey(String),
    Session(String),
    Jwt(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a credential.
        match self {
            Credential::ApiKey(k) => write!(f, "ApiKey({}…)", apikey::display_prefix(k)),
            Credential::Session(_) => f.write_str("Session(…)"),
            Credential::Jwt(_) => f.write_str("Jwt(…)"),
        }
    }
}

impl Credential {
    pub fn classify(token: &str) -> Credential {
        if token.starts_with(apikey::PREFIX) {
            Credential::ApiKey(token.to_owned())
        } else if token.starts_with(SESSION_PREFIX) {
            Credential::Session(token.to_owned())
        } else {
            Credential::Jwt(token.to_owned())
        }
    }
}

pub const SESSION_PREFIX: &str = "pcs_";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("authentication required")]
    Unauthenticated(&'static str),
    #[error("forbidden")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("too many attempts")]
    Throttled { retry_after_secs: u64 },
    #[error("audit log unavailable")]
    AuditUnavailable(#[from] AuditUnavailable),
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
}

/// Proof that a principal may do something; `scope` is set when the action is inside a tenant.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Shared with the credential cache: a request does not copy its caller.
    pub principal: Arc<Principal>,
    pub scope: Option<TenantScope>,
    pub permission: Permission,
}

/// Failed credentials (API keys, session tokens, JWTs) allowed per client IP and per API-key
/// prefix within `policy.window` before further attempts from there are refused with 429.
#[derive(Clone, Debug)]
pub struct CredentialThrottle {
    pub policy: LoginPolicy,
}

impl Default for CredentialThrottle {
    fn default() -> Self {
        Self {
            policy: LoginPolicy {
                max_failures_per_account: 100,
                max_failures_per_ip: 600,
                window: Duration::from_secs(60),
                base_backoff: Duration::from_secs(30),
                max_backoff: Duration::from_secs(15 * 60),
            },
        }
    }
}

pub struct GuardConfig {
    pub credential_throttle: CredentialThrottle,
    pub master_key: sealed::MasterKey,
    pub limiter: Arc<dyn Limiter>,
    pub limits: LimitsConfig,
    pub pepper: Vec<u8>,
    pub session_ttl: Duration,
    pub cache_refresh: Duration,
    pub login: LoginPolicy,
    pub jwt: Option<JwtConfig>,
    /// The Cedar schema and built-in policies (with the configured route actions declared).
    pub policy: Arc<portcullis_policy::Engine>,
}

/// Limit defaults that are configuration, not per tenant.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub tiers: HashMap<Tier, TierLimits>,
    /// Per key / user / JWT subject (the seed's gateway default: 100 per minute).
    pub principal_per_minute: u32,
    pub global_per_second: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            tiers: Tier::ALL.iter().map(|t| (*t, TierLimits::default_for(*t))).collect(),
            principal_per_minute: 100,
            global_per_second: None,
        }
    }
}

pub struct Guard {
    /// Failed credentials per `ip:` and per `prefix:` (API-key prefix); thresholds from
    /// `max_failures_per_ip` and `max_failures_per_account` of its policy.
    failed: login::Throttle,
    master_key: sealed::MasterKey,
    limiter: Arc<dyn Limiter>,
    limits: LimitsConfig,
    store: Arc<dyn Store>,
    audit: AuditLog,
    clock: Arc<dyn Clock>,
    pepper: zeroize::Zeroizing<Vec<u8>>,
    session_ttl: Duration,
    cache_refresh: Duration,
    cache: cache::Caches,
    login: login::Throttle,
    jwt: Option<jwt::JwtVerifier>,
    change_seq: AtomicI64,
    policy: Arc<portcullis_policy::Engine>,
    usage: usage::UsageLedger,
    sessions: sessions::Pending,
    /// Held for the whole of a usage flush (take, price, write): the flush at shutdown waits
    /// for one the maintenance task has in flight instead of finding its rows already taken and
    /// exiting while they are still being written.
    usage_flush: tokio::sync::Mutex<()>,
    /// Budget windows this process has started from the usage store: (tenant, window id).
    budget_seeded: dashmap::DashMap<(String, String), ()>,
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Guard {
    pub async fn new(
        cfg: GuardConfig,
        store: Arc<dyn Store>,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Guard>, String> {
        let jwt = match cfg.jwt {
            Some(j) => Some(jwt::JwtVerifier::new(j)?),
            None => None,
        };
        let seq = store.latest_change_seq().await.map_err(|e| e.to_string())?;
        Ok(Arc::new(Guard {
            failed: login::Throttle::new(cfg.credential_throttle.policy),
            master_key: cfg.master_key,
            limiter: cfg.limiter,
            limits: cfg.limits,
            store,
            audit,
            clock,
            pepper: zeroize::Zeroizing::new(cfg.pepper),
            session_ttl: cfg.session_ttl,
            cache_refresh: cfg.cache_refresh,
            cache: cache::Caches::default(),
            login: login::Throttle::new(cfg.login),
            jwt,
            change_seq: AtomicI64::new(seq),
            policy: cfg.policy,
            usage: usage::UsageLedger::default(),
            sessions: sessions::Pending::default(),
            usage_flush: tokio::sync::Mutex::new(()),
            budget_seeded: dashmap::DashMap::new(),
        }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn pepper(&self) -> &[u8] {
        &self.pepper
    }

    /// An event stamped with the request's metadata.
    pub fn event(&self, meta: &RequestMeta, action: &str, result: AuditResult) -> AuditEvent {
        let mut e = AuditEvent::new(self.now_ms(), action, result);
        e.request_id = Some(meta.request_id.clone());
        e.ip_address = meta.ip.clone();
        e.user_agent = meta.user_agent.clone();
        e
    }

    /// An event attributed to a principal (and its tenant, or the scope's tenant for operators).
    pub fn event_for(&self, grant: &Grant, meta: &RequestMeta, action: &str, result: AuditResult) -> AuditEvent {
        let mut e = self.event(meta, action, result);
        e.user_id = Some(grant.principal.id.clone());
        e.tenant_id = grant
            .scope
            .as_ref()
            .map(|s| s.tenant_id().to_string())
            .or_else(|| grant.principal.tenant_id.as_ref().map(ToString::to_string));
        if let serde_json::Value::Object(m) = &mut e.metadata {
            m.insert(String::from("auth"), serde_json::json!(grant.principal.kind));
            if let Some(r) = grant.principal.role {
                m.insert(String::from("role"), serde_json::Value::from(r.as_str()));
            }
            if grant.scope.as_ref().is_some_and(TenantScope::via_operator) {
                m.insert(String::from("operator_cross_tenant"), serde_json::Value::Bool(true));
            }
        }
        e
    }

    /// Writes an event durably; the caller must not acknowledge its request if this fails.
    pub async fn record(&self, event: AuditEvent) -> Result<(), GuardError> {
        let started = std::time::Instant::now();
        let outcome = self.audit.record(event).await;
        metrics::histogram!("portcullis_audit_write_seconds").record(started.elapsed().as_secs_f64());
        if outcome.is_err() {
            metrics::counter!("portcullis_audit_failures_total").increment(1);
        }
        Ok(outcome?)
    }

    /// Authenticate → tenant guard → permission. Every refusal is audited before it is returned.
    pub async fn check(
        &self,
        credential: Option<Credential>,
        x_tenant_id: Option<&str>,
        permission: Permission,
        meta: &RequestMeta,
    ) -> Result<Grant, GuardError> {
        let principal = self.authenticate(credential, meta).await?;
        self.authorize(principal, x_tenant_id, permission, meta).await
    }

    pub async fn authorize(
        &self,
        principal: Arc<Principal>,
        x_tenant_id: Option<&str>,
        permission: Permission,
        meta: &RequestMeta,
    ) -> Result<Grant, GuardError> {
        let denied = |reason: &'static str, action: &str| {
            let mut e = self.event(meta, action, AuditResult::Denied);
            e.user_id = Some(principal.id.clone());
            e.tenant_id = principal.tenant_id.as_ref().map(ToString::to_string);
            e.reason = Some(String::from(reason));
            e.metadata = serde_json::json!({ "permission": permission.as_str(), "requested_tenant": x_tenant_id });
            e
        };
        if principal.is_operator() {
            let scope = match x_tenant_id {
                None => None,
                Some(raw) => {
                    let Ok(t) = TenantId::parse(raw) else {
                        self.record(denied("invalid_tenant_header", "authz.denied")).await?;
                        return Err(GuardError::Forbidden("invalid X-Tenant-ID"));
                    };
                    if self.tenant_state(&t).await?.is_none() {
                        self.record(denied("unknown_tenant", "authz.denied")).await?;
                        return Err(GuardError::NotFound);
                    }
                    Some(TenantScope::authorized(t, true))
                }
            };
            return Ok(Grant { principal, scope, permission });
        }
        let Some(tenant) = principal.tenant_id.clone() else {
            return Err(GuardError::Forbidden("principal without tenant"));
        };
        if let Some(raw) = x_tenant_id
            && raw != tenant.as_str()
        {
            self.record(denied("x_tenant_id_mismatch", "cross_tenant_access_blocked")).await?;
            return Err(GuardError::Forbidden("X-Tenant-ID does not match the credential's tenant"));
        }
        // Tenant guard, second half: the tenant's own IP allow/block lists.
        if let Some(ip) = meta.ip.as_deref().and_then(|i| i.parse::<std::net::IpAddr>().ok()) {
            let policy = self.ip_policy(&tenant).await?;
            let verdict = policy.check(ip);
            if verdict != IpVerdict::Allowed {
                let reason = if verdict == IpVerdict::Blocked { "tenant_ip_blocked" } else { "tenant_ip_not_allowed" };
                self.record(denied(reason, "ip.denied")).await?;
                return Err(GuardError::Forbidden("the client address is not allowed for this tenant"));
            }
        }
        if principal.role.is_none() {
            return Err(GuardError::Forbidden("principal without role"));
        }
        // Data-plane permission is decided per action by the caller (route, decision request),
        // with the tenant's policies; the caller's own session (whoami, logout, asking for a
        // decision) is every tenant principal's and no tenant policy takes it away; every other
        // permission is an action of its own here.
        if !matches!(permission, Permission::Execute | Permission::Session) {
            let ctx = || ContextInput {
                ip: meta.ip.as_deref().and_then(|i| i.parse().ok()),
                ..ContextInput::at(self.now_ms())
            };
            let d = self.decide(&principal, permission.as_str(), None, ctx).await?;
            if !d.allowed {
                let mut e = denied(
                    if d.policies.is_empty() { "role_lacks_permission" } else { "policy_denied" },
                    "authz.denied",
                );
                if let serde_json::Value::Object(m) = &mut e.metadata {
                    m.insert(String::from("policies"), serde_json::json!(d.reasons()));
                    if !d.errors.is_empty() {
                        m.insert(String::from("policy_errors"), serde_json::json!(d.errors));
                    }
                }
                self.record(e).await?;
                return Err(GuardError::Forbidden(if d.policies.is_empty() {
                    "the caller's role does not grant this action"
                } else {
                    "a tenant policy denies this action"
                }));
            }
        }
        // Data-plane permissions are checked against the action by the caller (route, decision);
        // the own-session permission is never scoped away.
        if !matches!(permission, Permission::Execute | Permission::Session)
            && !principal.scope_allows(permission.as_str())
        {
            self.record(denied("scope_lacks_permission", "authz.denied")).await?;
            return Err(GuardError::Forbidden("the key's scopes do not include this action"));
        }
        Ok(Grant { principal, scope: Some(TenantScope::authorized(tenant, false)), permission })
    }

    pub async fn authenticate(
        &self,
        credential: Option<Credential>,
        meta: &RequestMeta,
    ) -> Result<Arc<Principal>, GuardError> {
        let Some(credential) = credential else {
            let mut e = self.event(meta, "auth.failure", AuditResult::Failure);
            e.reason = Some(String::from("missing_credential"));
            self.record(e).await?;
            return Err(GuardError::Unauthenticated("missing credential"));
        };
        let outcome = match &credential {
            Credential::ApiKey(k) => self.verify_key(k).await,
            Credential::Session(t) => self.verify_session(t).await,
            Credential::Jwt(t) => self.verify_jwt(t).await,
        };
        match outcome {
            Ok(p) => Ok(p),
            Err(AuthFailure::Store(e)) => Err(GuardError::Store(e)),
            Err(AuthFailure::Suspended { principal_id, tenant }) => {
                let mut e = self.event(meta, "auth.denied", AuditResult::Denied);
                e.reason = Some(String::from("tenant_suspended"));
                e.user_id = Some(principal_id);
                e.tenant_id = Some(tenant.to_string());
                self.record(e).await?;
                Err(GuardError::Forbidden("tenant suspended"))
            }
            Err(AuthFailure::Invalid(reason)) => {
                metrics::counter!("portcullis_auth_failures_total", "reason" => reason).increment(1);
                let (kind, hint) = match &credential {
                    Credential::ApiKey(k) => ("api_key", Some(apikey::display_prefix(k).to_owned())),
                    Credential::Session(_) => ("session", None),
                    Credential::Jwt(_) => ("jwt", None),
                };
                // Guessing is limited per client IP and per key prefix (checksum-valid keys
                // only: a prefix is visible to tenant readers, so junk carrying it must not lock
                // the real key).
                let now = self.now_ms();
                let ip_key = format!("ip:{}", meta.ip.as_deref().unwrap_or("unknown"));
                let prefix_key = match &credential {
                    Credential::ApiKey(k) if apikey::validate(k).is_ok() => {
                        Some(format!("prefix:{}", apikey::display_prefix(k)))
                    }
                    _ => None,
                };
                // Only failures are ever refused for guessing: a credential that verifies passes
                // even from a locked address or prefix.
                let policy = self.failed.policy();
                // Locked by earlier failures (this one counts towards the next lock, not this answer).
                let locked = self
                    .failed
                    .retry_after(&ip_key, now)
                    .max(prefix_key.as_deref().and_then(|k| self.failed.retry_after(k, now)));
                let ip_locked = self.failed.fail(ip_key.clone(), policy.max_failures_per_ip, now);
                let prefix_locked = prefix_key
                    .as_ref()
                    .is_some_and(|k| self.failed.fail(k.clone(), policy.max_failures_per_account, now));
                if ip_locked || prefix_locked {
                    let mut alert = self.event(meta, "security_alert", AuditResult::Denied);
                    alert.reason = Some(String::from(if ip_locked {
                        "repeated_credential_failures_from_ip"
                    } else {
                        "repeated_credential_failures_for_key_prefix"
                    }));
                    alert.metadata = serde_json::json!({ "credential": kind, "key_prefix": hint });
                    self.record(alert).await?;
                }
                if let Some(retry_after_secs) = locked {
                    let mut e = self.event(meta, "auth.throttled", AuditResult::Denied);
                    e.reason = Some(String::from("too_many_failed_credentials"));
                    e.metadata = serde_json::json!({ "credential": kind, "key_prefix": hint, "failure": reason, "retry_after_secs": retry_after_secs });
                    self.record(e).await?;
                    return Err(GuardError::Throttled { retry_after_secs });
                }
                let mut e = self.event(meta, "auth.failure", AuditResult::Failure);
                e.reason = Some(String::from(reason));
                e.metadata = serde_json::json!({ "credential": kind, "key_prefix": hint });
                self.record(e).await?;
                Err(GuardError::Unauthenticated(reason))
            }
        }
    }

    async fn tenant_state(&self, id: &TenantId) -> Result<Option<cache::TenantState>, StoreError> {
        if let Some(s) = self.cache.tenants.get(id) {
            return Ok(Some(s.clone()));
        }
        let generation = self.cache.generation();
        let Some(t) = self.store.get_tenant(id).await? else { return Ok(None) };
        let s = cache::TenantState { status: t.status, tier: t.tier };
        self.cache.tenants.insert(id.clone(), s.clone());
        if self.cache.stale_since(generation) {
            self.cache.tenants.remove(id);
        }
        Ok(Some(s))
    }

    async fn tenant_active(&self, id: &TenantId, principal_id: &str) -> Result<(), AuthFailure> {
        match self.tenant_state(id).await.map_err(AuthFailure::Store)? {
            Some(s) if s.status == TenantStatus::Active => Ok(()),
            Some(_) => Err(AuthFailure::Suspended { principal_id: principal_id.to_owned(), tenant: id.clone() }),
            None => Err(AuthFailure::Invalid("unknown_tenant")),
        }
    }

    async fn verify_key(&self, key: &str) -> Result<Arc<Principal>, AuthFailure> {
        // Shape and checksum first: garbage never reaches the cache or the store.
        apikey::validate(key).map_err(|_| AuthFailure::Invalid("malformed_api_key"))?;
        let hash = apikey::hash(&self.pepper, key);
        let hash_hex = hex::encode(hash);
        let cached = match self.cache.keys.get(&hash_hex) {
            Some(k) => k.clone(),
            None => {
                let generation = self.cache.generation();
                let Some(r) = self.store.find_key_by_hash(&hash_hex).await.map_err(AuthFailure::Store)? else {
                    return Err(AuthFailure::Invalid("unknown_api_key"));
                };
                let Some(stored) = hex::decode(&r.hash_hex).ok().and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                else {
                    return Err(AuthFailure::Invalid("unknown_api_key"));
                };
                let principal = Arc::new(Principal {
                    kind: PrincipalKind::ApiKey,
                    id: format!("key:{}", r.id),
                    tenant_id: Some(r.tenant_id.clone()),
                    role: Some(r.role),
                    key_id: Some(r.id.clone()),
                    user_id: None,
                    session_id: None,
                    scopes: r.scopes.clone(),
                });
                let k = Arc::new(cache::CachedKey {
                    record: r,
                    hash: stored,
                    principal,
                    last_used_ms: std::sync::atomic::AtomicI64::new(0),
                });
                self.cache.insert_key(hash_hex.clone(), k.clone());
                if self.cache.stale_since(generation) {
                    self.cache.keys.remove(&hash_hex);
                }
                k
            }
        };
        // The lookup matched on the hash; compare again in constant time so equality of the
        // stored value is never decided by a short-circuiting comparison.
        if !apikey::hashes_equal(&cached.hash, &hash) {
            return Err(AuthFailure::Invalid("unknown_api_key"));
        }
        let record = &cached.record;
        let now = self.now_ms();
        if record.revoked_at_ms.is_some() {
            return Err(AuthFailure::Invalid("revoked_api_key"));
        }
        if record.expires_at_ms.is_some_and(|e| e <= now) {
            return Err(AuthFailure::Invalid("expired_api_key"));
        }
        self.tenant_active(&record.tenant_id, &cached.principal.id).await?;
        cached.last_used_ms.store(now, std::sync::atomic::Ordering::Relaxed);
        Ok(cached.principal.clone())
    }

    async fn verify_session(&self, token: &str) -> Result<Arc<Principal>, AuthFailure> {
        if token.len() > 128 {
            return Err(AuthFailure::Invalid("malformed_session_token"));
        }
        let hash_hex = sha256_hex(token);
        let entry = match self.cache.sessions.get(&hash_hex) {
            Some(s) => s.clone(),
            None => {
                let generation = self.cache.generation();
                let Some(s) = self.store.find_session(&hash_hex).await.map_err(AuthFailure::Store)? else {
                    return Err(AuthFailure::Invalid("unknown_session"));
                };
                let Some(user) = self.store.get_user_unscoped(&s.user_id).await.map_err(AuthFailure::Store)? else {
                    return Err(AuthFailure::Invalid("unknown_session"));
                };
                let entry = Arc::new(cache::CachedSession { session: s, user });
                self.cache.insert_session(hash_hex.clone(), entry.clone());
                if self.cache.stale_since(generation) {
                    self.cache.sessions.remove(&hash_hex);
                }
                entry
            }
        };
        let now = self.now_ms();
        if entry.session.revoked_at_ms.is_some() {
            return Err(AuthFailure::Invalid("revoked_session"));
        }
        if entry.session.expires_at_ms <= now {
            return Err(AuthFailure::Invalid("expired_session"));
        }
        if entry.user.disabled {
            return Err(AuthFailure::Invalid("disabled_user"));
        }
        let user = &entry.user;
        let principal_id = format!("user:{}", user.email);
        if let Some(t) = &user.tenant_id {
            self.tenant_active(t, &principal_id).await?;
        }
        Ok(Arc::new(Principal {
            kind: if user.is_operator() { PrincipalKind::Operator } else { PrincipalKind::User },
            id: principal_id,
            tenant_id: user.tenant_id.clone(),
            role: user.role,
            key_id: None,
            user_id: Some(user.id.clone()),
            session_id: Some(entry.session.id.clone()),
            scopes: Vec::new(),
        }))
    }

    async fn verify_jwt(&self, token: &str) -> Result<Arc<Principal>, AuthFailure> {
        let Some(v) = &self.jwt else {
            return Err(AuthFailure::Invalid("jwt_not_configured"));
        };
        let claims = v.verify(token).map_err(AuthFailure::Invalid)?;
        let principal_id = format!("jwt:{}", claims.subject);
        self.tenant_active(&claims.tenant, &principal_id).await?;
        Ok(Arc::new(Principal {
            kind: PrincipalKind::Jwt,
            id: principal_id,
            tenant_id: Some(claims.tenant),
            role: Some(claims.role),
            key_id: None,
            user_id: None,
            session_id: None,
            scopes: Vec::new(),
        }))
    }

    pub fn policy_engine(&self) -> &Arc<portcullis_policy::Engine> {
        &self.policy
    }

    /// RBAC + the tenant's Cedar policies for `action` by `principal`. `context` is only built
    /// when the tenant has policies of its own (the built-in answers need none).
    pub async fn decide(
        &self,
        principal: &Principal,
        action: &str,
        resource: Option<(&str, &str)>,
        context: impl FnOnce() -> ContextInput,
    ) -> Result<Decision, StoreError> {
        let tenant = match &principal.tenant_id {
            Some(t) if !principal.is_operator() => Some(self.tenant_policies(t).await?),
            _ => None,
        };
        let empty = ContextInput::default();
        let owned;
        let ctx = match tenant.as_deref() {
            Some(t) if !t.is_empty() => {
                owned = context();
                &owned
            }
            _ => &empty,
        };
        let req = portcullis_policy::DecisionRequest { principal, action, resource, context: ctx };
        let d = self.policy.decide(tenant.as_deref(), &req);
        if !d.errors.is_empty() {
            metrics::counter!("portcullis_policy_errors_total").increment(1);
            tracing::warn!(principal = %principal.id, action, errors = ?d.errors, "policy evaluation failed; denied");
        }
        Ok(d)
    }

    /// The tenant's compiled policy set, from cache.
    pub async fn tenant_policies(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<portcullis_policy::TenantPolicies>, StoreError> {
        if let Some(p) = self.cache.policies.get(tenant) {
            return Ok(p.clone());
        }
        let generation = self.cache.generation();
        let scope = TenantScope::authorized(tenant.clone(), false);
        let docs = self.store.list_policies(&scope).await?;
        let compiled = Arc::new(self.policy.compile(
            docs.iter().filter(|d| d.enabled).map(|d| portcullis_policy::Document { id: &d.id, cedar: &d.cedar }),
        ));
        self.cache.policies.insert(tenant.clone(), compiled.clone());
        if self.cache.stale_since(generation) {
            self.cache.policies.remove(tenant);
        }
        Ok(compiled)
    }

    pub fn invalidate_policies(&self, tenant: &TenantId) {
        self.cache.remove_policies(tenant);
    }

    /// The limits that apply to a tenant now (tier defaults + overrides), from cache.
    pub async fn effective_limits(&self, tenant: &TenantId) -> Result<Option<EffectiveLimits>, StoreError> {
        let Some(state) = self.tenant_state(tenant).await? else { return Ok(None) };
        let overrides = match self.cache.limits.get(tenant) {
            Some(o) => o.clone(),
            None => {
                let generation = self.cache.generation();
                let o = Arc::new(self.store.get_limits(tenant).await?);
                self.cache.limits.insert(tenant.clone(), o.clone());
                if self.cache.stale_since(generation) {
                    self.cache.limits.remove(tenant);
                }
                o
            }
        };
        let tier = self.limits.tiers.get(&state.tier).cloned().unwrap_or_else(|| TierLimits::default_for(state.tier));
        Ok(Some(effective(&tier, &overrides)))
    }

    /// Rate → concurrency → quota for one request of `principal` on `route`, in one limiter call.
    /// `hold_slot` keeps a concurrency slot until the returned admission is dropped.
    pub async fn admit(
        &self,
        principal: &Principal,
        route: &str,
        route_per_minute: Option<u32>,
        hold_slot: bool,
    ) -> Result<Result<Admission, Rejection>, GuardError> {
        let Some(tenant) = &principal.tenant_id else {
            return Err(GuardError::Forbidden("platform operators have no tenant to act in on the data plane"));
        };
        let Some(eff) = self.effective_limits(tenant).await? else { return Err(GuardError::NotFound) };
        let limits = Limits {
            tenant_per_minute: eff.rate_per_minute,
            principal_per_minute: self.limits.principal_per_minute,
            route_per_minute,
            global_per_second: self.limits.global_per_second,
            concurrency: eff.concurrency,
            requests_per_day: eff.requests_per_day,
        };
        let req = LimitRequest {
            tenant: tenant.as_str(),
            principal: &principal.id,
            route,
            limits: &limits,
            hold_slot,
            now_ms: self.now_ms(),
        };
        Ok(self.limiter.admit(&req).await)
    }

    async fn ip_policy(&self, tenant: &TenantId) -> Result<Arc<IpPolicy>, StoreError> {
        if let Some(p) = self.cache.ip_rules.get(tenant) {
            return Ok(p.clone());
        }
        let generation = self.cache.generation();
        let rules = self.store.get_ip_rules(tenant).await?;
        // Stored rules were validated on save; a row that no longer compiles denies nothing
        // rather than everything, and is reported.
        let policy = Arc::new(IpPolicy::compile(&rules).unwrap_or_else(|e| {
            tracing::error!(tenant = %tenant, error = %e, "stored IP rules do not compile");
            IpPolicy::default()
        }));
        self.cache.ip_rules.insert(tenant.clone(), policy.clone());
        if self.cache.stale_since(generation) {
            self.cache.ip_rules.remove(tenant);
        }
        Ok(policy)
    }

    /// The (header, value) to add when forwarding for `tenant` on `route`, opened from its sealed
    /// form once and cached until the change feed says it changed.
    pub async fn upstream_credential(
        &self,
        tenant: &TenantId,
        route: &str,
    ) -> Result<Option<Arc<(String, String)>>, GuardError> {
        let key = format!("{tenant}{route}");
        if let Some(c) = self.cache.upstream.get(&key) {
            return Ok(c.clone());
        }
        let scope = TenantScope::authorized(tenant.clone(), false);
        let generation = self.cache.generation();
        let opened = match self.store.get_upstream_credential(&scope, route).await? {
            None => None,
            Some(c) => {
                let ctx = sealed::credential_context(tenant.as_str(), route, &c.header_name);
                let plain = self.master_key.open(&ctx, &c.nonce_hex, &c.ciphertext_hex).map_err(|e| {
                    tracing::error!(tenant = %tenant, route, error = %e, "upstream credential does not open");
                    GuardError::Store(StoreError::Corrupt(String::from("upstream credential does not open")))
                })?;
                let value = String::from_utf8(plain).map_err(|_| {
                    GuardError::Store(StoreError::Corrupt(String::from("upstream credential is not text")))
                })?;
                Some(Arc::new((c.header_name, value)))
            }
        };
        self.cache.upstream.insert(key.clone(), opened.clone());
        if self.cache.stale_since(generation) {
            self.cache.upstream.remove(&key);
        }
        Ok(opened)
    }

    pub fn invalidate_upstream_credential(&self, tenant: &TenantId, route: &str) {
        self.cache.remove_upstream(&format!("{tenant}{route}"));
    }

    pub(crate) fn master_key(&self) -> &sealed::MasterKey {
        &self.master_key
    }

    pub fn invalidate_ip_rules(&self, tenant: &TenantId) {
        self.cache.remove_ip_rules(tenant);
    }

    pub fn limiter(&self) -> &Arc<dyn Limiter> {
        &self.limiter
    }

    pub fn invalidate_limits(&self, tenant: &TenantId) {
        self.cache.remove_limits(tenant);
    }

    /// Forget cached state for something this process just changed (other processes learn of it
    /// through the change feed).
    pub fn invalidate_key(&self, id: &KeyId) {
        self.cache.remove_key(id);
    }

    pub fn invalidate_tenant(&self, id: &TenantId) {
        self.cache.remove_tenant(id);
    }

    pub fn invalidate_session(&self, id: &str) {
        self.cache.remove_session(id);
    }

    /// Background upkeep: apply the change feed and flush key usage; in a task of its own, write
    /// captured session events (so a slow write never delays a revocation). Runs until the guard
    /// is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.cache_refresh;
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(g) = sessions.upgrade() else { break };
                if let Err(e) = g.flush_sessions().await {
                    tracing::warn!(error = %e, "session events could not be written; kept in memory for the next attempt");
                }
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut since_flush = Duration::ZERO;
            loop {
                tick.tick().await;
                let Some(g) = weak.upgrade() else { break };
                if let Err(e) = g.apply_changes().await {
                    tracing::warn!(error = %e, "change feed unavailable; caches keep their entries until it returns");
                }
                if let Err(e) = g.flush_usage_ledger().await {
                    tracing::warn!(error = %e, "usage could not be written; kept in memory for the next attempt");
                }
                since_flush += every;
                if since_flush >= Duration::from_secs(5) {
                    since_flush = Duration::ZERO;
                    g.flush_usage().await;
                }
            }
        });
    }

    pub async fn apply_changes(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        loop {
            let since = self.change_seq.load(Ordering::Acquire);
            let changes = self.store.changes_since(since, 1000).await?;
            let Some(last) = changes.last().map(|c| c.seq) else { return Ok(()) };
            for c in &changes {
                self.cache.apply(c);
            }
            self.change_seq.store(last, Ordering::Release);
            if changes.len() < 1000 {
                return Ok(());
            }
        }
    }

    pub async fn flush_usage(&self) {
        let used: Vec<(KeyId, i64)> = self
            .cache
            .keys
            .iter()
            .filter_map(|e| {
                let at = e.value().last_used_ms.swap(0, std::sync::atomic::Ordering::Relaxed);
                (at > 0).then(|| (e.value().record.id.clone(), at))
            })
            .collect();
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.store.touch_keys(&used).await {
            tracing::warn!(error = %e, "could not record key last_used_at");
        }
    }

    /// Makes a fresh API key for `record_template` (fills prefix and hash). Returns the key text,
    /// which is shown once and never stored.
    pub fn mint_key(&self, random: &[u8]) -> (String, String, String) {
        let key = apikey::generate(random);
        let hash_hex = hex::encode(apikey::hash(&self.pepper, &key));
        let prefix = apikey::display_prefix(&key).to_owned();
        (key, prefix, hash_hex)
    }
}

enum AuthFailure {
    Invalid(&'static str),
    Suspended { principal_id: String, tenant: TenantId },
    Store(StoreError),
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness available: {e}"))?;
    Ok(buf)
}
