//! In-memory caches of credentials and tenant states, keyed for the hot path, with reverse
//! indexes so a change-feed entry (which names an id) finds the cached entry to drop.
use dashmap::DashMap;
use portcullis_core::Principal;
use portcullis_core::iplist::IpPolicy;
use portcullis_core::limits::LimitOverrides;
use portcullis_core::{KeyId, TenantId, Tier};
use portcullis_store::{ApiKeyRecord, Change, ChangeKind, SessionRecord, TenantStatus, User};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Clone, Debug)]
pub struct TenantState {
    pub status: TenantStatus,
    pub tier: Tier,
}

/// A verified key as the hot path needs it: the stored hash already decoded for the
/// constant-time comparison, the principal already built, and when it was last used (written by
/// every request without a lock; the maintenance task flushes it to the store).
pub struct CachedKey {
    pub record: ApiKeyRecord,
    pub hash: [u8; 32],
    pub principal: Arc<Principal>,
    pub last_used_ms: AtomicI64,
}

pub struct CachedSession {
    pub session: SessionRecord,
    pub user: User,
}

/// Fills race with invalidations: a request may read a key from the store just before it is
/// revoked and insert it just after the revocation was applied. Every invalidation bumps
/// `generation`; a fill reads it before going to the store and, if it changed by the time the
/// entry is inserted, removes the entry again, so a stale row is never kept.
#[derive(Default)]
pub struct Caches {
    generation: AtomicU64,
    /// HMAC hex → verified key.
    pub keys: DashMap<String, Arc<CachedKey>>,
    key_index: DashMap<KeyId, String>,
    /// Token SHA-256 hex → session.
    pub sessions: DashMap<String, Arc<CachedSession>>,
    session_index: DashMap<String, String>,
    pub tenants: DashMap<TenantId, TenantState>,
    pub limits: DashMap<TenantId, Arc<LimitOverrides>>,
    pub ip_rules: DashMap<TenantId, Arc<IpPolicy>>,
    /// (tenant + route) → the opened credential, or `None` when the tenant has none there.
    pub upstream: DashMap<String, Option<Arc<(String, String)>>>,
    /// The tenant's model profiles (prices for usage costs).
    pub model_profiles: DashMap<TenantId, Arc<Vec<portcullis_store::ModelProfile>>>,
    /// The tenant's compiled Cedar policy set (built-in + its enabled documents).
    pub policies: DashMap<TenantId, Arc<portcullis_policy::TenantPolicies>>,
    /// The tenant's session capture settings with its compiled redaction.
    pub capture: DashMap<TenantId, Arc<crate::sessions::TenantCapture>>,
}

impl Caches {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether an entry filled after reading `since` must be dropped again.
    pub fn stale_since(&self, since: u64) -> bool {
        self.generation() != since
    }

    pub fn remove_tenant(&self, id: &TenantId) {
        self.bump();
        self.tenants.remove(id);
    }

    pub fn remove_limits(&self, id: &TenantId) {
        self.bump();
        self.limits.remove(id);
    }

    pub fn remove_ip_rules(&self, id: &TenantId) {
        self.bump();
        self.ip_rules.remove(id);
    }

    pub fn remove_model_profiles(&self, id: &TenantId) {
        self.bump();
        self.model_profiles.remove(id);
    }

    pub fn remove_policies(&self, id: &TenantId) {
        self.bump();
        self.policies.remove(id);
    }

    pub fn remove_upstream(&self, key: &str) {
        self.bump();
        self.upstream.remove(key);
    }

    pub fn insert_key(&self, hash_hex: String, key: Arc<CachedKey>) {
        self.key_index.insert(key.record.id.clone(), hash_hex.clone());
        self.keys.insert(hash_hex, key);
    }

    pub fn remove_key(&self, id: &KeyId) {
        self.bump();
        if let Some((_, h)) = self.key_index.remove(id) {
            self.keys.remove(&h);
        }
    }

    pub fn insert_session(&self, hash_hex: String, s: Arc<CachedSession>) {
        self.session_index.insert(s.session.id.clone(), hash_hex.clone());
        self.sessions.insert(hash_hex, s);
    }

    pub fn remove_session(&self, id: &str) {
        self.bump();
        if let Some((_, h)) = self.session_index.remove(id) {
            self.sessions.remove(&h);
        }
    }

    pub fn apply(&self, change: &Change) {
        self.bump();
        match change.kind {
            ChangeKind::Key => {
                if let Ok(id) = KeyId::parse(&change.entity_id) {
                    self.remove_key(&id);
                }
            }
            ChangeKind::Tenant => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.remove_tenant(&id);
                }
            }
            ChangeKind::Session => self.remove_session(&change.entity_id),
            ChangeKind::Limits => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.remove_limits(&id);
                }
            }
            ChangeKind::UpstreamCredential => {
                self.remove_upstream(&change.entity_id);
            }
            ChangeKind::IpRules => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.remove_ip_rules(&id);
                }
            }
            ChangeKind::ModelProfiles => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.remove_model_profiles(&id);
                }
            }
            ChangeKind::Policies => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.remove_policies(&id);
                }
            }
            ChangeKind::SessionSettings => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.bump();
                    self.capture.remove(&id);
                }
            }
            ChangeKind::User => {
                // Rare (user disabled or deleted): drop every cached session rather than index by user.
                self.bump();
                self.sessions.clear();
                self.session_index.clear();
            }
        }
    }
}
