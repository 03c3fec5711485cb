//! In-memory caches of credentials and tenant states, keyed for the hot path, with reverse
//! indexes so a change-feed entry (which names an id) finds the cached entry to drop.
use dashmap::DashMap;
use portcullis_core::iplist::IpPolicy;
use portcullis_core::limits::LimitOverrides;
use portcullis_core::{KeyId, TenantId, Tier};
use portcullis_store::{ApiKeyRecord, Change, ChangeKind, SessionRecord, TenantStatus, User};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct TenantState {
    pub status: TenantStatus,
    pub tier: Tier,
}

pub struct CachedSession {
    pub session: SessionRecord,
    pub user: User,
}

#[derive(Default)]
pub struct Caches {
    /// HMAC hex → key record.
    pub keys: DashMap<String, Arc<ApiKeyRecord>>,
    key_index: DashMap<KeyId, String>,
    /// Token SHA-256 hex → session.
    pub sessions: DashMap<String, Arc<CachedSession>>,
    session_index: DashMap<String, String>,
    pub tenants: DashMap<TenantId, TenantState>,
    pub limits: DashMap<TenantId, Arc<LimitOverrides>>,
    pub ip_rules: DashMap<TenantId, Arc<IpPolicy>>,
    /// (tenant + route) → the opened credential, or `None` when the tenant has none there.
    pub upstream: DashMap<String, Option<Arc<(String, String)>>>,
}

impl Caches {
    pub fn insert_key(&self, hash_hex: String, record: Arc<ApiKeyRecord>) {
        self.key_index.insert(record.id.clone(), hash_hex.clone());
        self.keys.insert(hash_hex, record);
    }

    pub fn remove_key(&self, id: &KeyId) {
        if let Some((_, h)) = self.key_index.remove(id) {
            self.keys.remove(&h);
        }
    }

    pub fn insert_session(&self, hash_hex: String, s: Arc<CachedSession>) {
        self.session_index.insert(s.session.id.clone(), hash_hex.clone());
        self.sessions.insert(hash_hex, s);
    }

    pub fn remove_session(&self, id: &str) {
        if let Some((_, h)) = self.session_index.remove(id) {
            self.sessions.remove(&h);
        }
    }

    pub fn apply(&self, change: &Change) {
        match change.kind {
            ChangeKind::Key => {
                if let Ok(id) = KeyId::parse(&change.entity_id) {
                    self.remove_key(&id);
                }
            }
            ChangeKind::Tenant => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.tenants.remove(&id);
                }
            }
            ChangeKind::Session => self.remove_session(&change.entity_id),
            ChangeKind::Limits => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.limits.remove(&id);
                }
            }
            ChangeKind::UpstreamCredential => {
                self.upstream.remove(&change.entity_id);
            }
            ChangeKind::IpRules => {
                if let Ok(id) = TenantId::parse(&change.entity_id) {
                    self.ip_rules.remove(&id);
                }
            }
            ChangeKind::User => {
                // Rare (user disabled or deleted): drop every cached session rather than index by user.
                self.sessions.clear();
                self.session_index.clear();
            }
        }
    }
}
