//! Password login with backoff per account and per client IP. Crossing a threshold locks the
//! key for an exponentially growing time and raises one `security_alert` audit event.
use crate::{Guard, GuardError, RequestMeta, SESSION_PREFIX, password, sha256_hex};
use dashmap::DashMap;
use portcullis_core::audit::AuditResult;
use portcullis_core::{Principal, PrincipalKind};
use portcullis_store::{SessionRecord, TenantStatus};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct LoginPolicy {
    pub max_failures_per_account: u32,
    pub max_failures_per_ip: u32,
    /// Failures older than this are forgotten.
    pub window: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            window: Duration::from_secs(15 * 60),
            base_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Attempts {
    failures: u32,
    first_ms: i64,
    locked_until_ms: i64,
}

pub(crate) struct Throttle {
    policy: LoginPolicy,
    state: DashMap<String, Attempts>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Throttle {
    pub(crate) fn new(policy: LoginPolicy) -> Self {
        Self { policy, state: DashMap::new() }
    }

    pub(crate) fn policy(&self) -> &LoginPolicy {
        &self.policy
    }

    pub(crate) fn retry_after(&self, key: &str, now: i64) -> Option<u64> {
        let a = self.state.get(key)?;
        (a.locked_until_ms > now).then(|| u64::try_from((a.locked_until_ms - now + 999) / 1000).unwrap_or(1))
    }

    /// Counts a failure; returns true when this failure first locked the key in its window
    /// (later failures extend the lock without another alert).
    pub(crate) fn fail(&self, key: String, threshold: u32, now: i64) -> bool {
        let mut a = self.state.entry(key).or_default();
        if now - a.first_ms > ms(self.policy.window) {
            *a = Attempts { failures: 0, first_ms: now, locked_until_ms: 0 };
        }
        a.failures += 1;
        if a.failures >= threshold {
            let doublings = (a.failures - threshold).min(20);
            let backoff =
                ms(self.policy.base_backoff).saturating_mul(1_i64 << doublings).min(ms(self.policy.max_backoff));
            a.locked_until_ms = now + backoff;
            return a.failures == threshold;
        }
        false
    }

    fn clear(&self, key: &str) {
        self.state.remove(key);
    }
}

pub struct LoginOk {
    pub token: String,
    pub session_id: String,
    pub expires_at_ms: i64,
    pub principal: Principal,
}

impl Guard {
    pub async fn login(&self, email: &str, pw: &str, meta: &RequestMeta) -> Result<LoginOk, GuardError> {
        let now = self.now_ms();
        let email = email.trim().to_lowercase();
        let acct_key = format!("account:{email}");
        // The same principal id a successful login records, so one filter finds every attempt.
        let principal_id = format!("user:{email}");
        let ip_key = format!("ip:{}", meta.ip.as_deref().unwrap_or("unknown"));
        let retry = self.login.retry_after(&acct_key, now).max(self.login.retry_after(&ip_key, now));
        if let Some(retry_after_secs) = retry {
            let mut e = self.event(meta, "auth.login", AuditResult::Denied);
            e.user_id = Some(principal_id.clone());
            e.reason = Some(String::from("throttled"));
            e.metadata = serde_json::json!({ "retry_after_secs": retry_after_secs });
            self.record(e).await?;
            return Err(GuardError::Throttled { retry_after_secs });
        }
        // Count the attempt before the (slow) password check, so concurrent guesses cannot all pass
        // the lock check above; a success takes it back.
        let acct_locked = self.login.fail(acct_key.clone(), self.login.policy.max_failures_per_account, now);
        let user = self.store.find_user_by_email(&email).await?;
        let phc = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| password::decoy_hash().to_owned());
        let candidate = pw.to_owned();
        let matches = tokio::task::spawn_blocking(move || password::verify(&candidate, &phc)).await.unwrap_or(false);
        let user = match user {
            Some(u) if matches && !u.disabled => u,
            _ => {
                let mut e = self.event(meta, "auth.login", AuditResult::Failure);
                e.user_id = Some(principal_id.clone());
                e.tenant_id = None;
                e.reason = Some(String::from("invalid_credentials"));
                self.record(e).await?;
                let ip_locked = self.login.fail(ip_key, self.login.policy.max_failures_per_ip, now);
                if acct_locked || ip_locked {
                    let mut e = self.event(meta, "security_alert", AuditResult::Denied);
                    e.user_id = Some(principal_id.clone());
                    e.reason = Some(String::from(if acct_locked {
                        "repeated_login_failures_for_account"
                    } else {
                        "repeated_login_failures_from_ip"
                    }));
                    self.record(e).await?;
                }
                return Err(GuardError::Unauthenticated("invalid credentials"));
            }
        };
        if let Some(t) = &user.tenant_id {
            let suspended = self.store.get_tenant(t).await?.is_none_or(|t| t.status != TenantStatus::Active);
            if suspended {
                let mut e = self.event(meta, "auth.login", AuditResult::Denied);
                e.user_id = Some(principal_id.clone());
                e.tenant_id = Some(t.to_string());
                e.reason = Some(String::from("tenant_suspended"));
                self.record(e).await?;
                return Err(GuardError::Forbidden("tenant suspended"));
            }
        }
        let token_bytes = crate::random_bytes::<32>().map_err(|_| GuardError::Unauthenticated("no randomness"))?;
        let id_bytes = crate::random_bytes::<12>().map_err(|_| GuardError::Unauthenticated("no randomness"))?;
        let token = format!("{SESSION_PREFIX}{}", hex::encode(token_bytes));
        let session = SessionRecord {
            id: format!("ses_{}", hex::encode(id_bytes)),
            token_hash_hex: sha256_hex(&token),
            user_id: user.id.clone(),
            created_at_ms: now,
            expires_at_ms: now + ms(self.session_ttl),
            revoked_at_ms: None,
        };
        let principal = Principal {
            kind: if user.is_operator() { PrincipalKind::Operator } else { PrincipalKind::User },
            id: principal_id,
            tenant_id: user.tenant_id.clone(),
            role: user.role,
            key_id: None,
            user_id: Some(user.id.clone()),
            session_id: Some(session.id.clone()),
            scopes: Vec::new(),
        };
        let mut e = self.event(meta, "auth.login", AuditResult::Success);
        e.user_id = Some(principal.id.clone());
        e.tenant_id = user.tenant_id.as_ref().map(ToString::to_string);
        e.resource_type = Some(String::from("session"));
        e.resource_id = Some(session.id.clone());
        self.record(e).await?;
        self.store.create_session(&session).await?;
        self.login.clear(&acct_key);
        Ok(LoginOk { token, session_id: session.id, expires_at_ms: session.expires_at_ms, principal })
    }
}
