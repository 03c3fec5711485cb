//! Storage behind narrow traits owned by the domain: [`Store`] for tenants, users, keys,
//! sessions and the change feed; [`AuditStore`] for the chained audit log.
//!
//! Tenant data is reachable only through methods that take a [`TenantScope`]; the few unscoped
//! lookups (key by hash, session by hash, user by email) exist for authentication, which by
//! nature runs before a tenant is known, and return the row's tenant for the guard to check.
//!
//! SQL is written to port: TEXT ids, BIGINT unix-millisecond times, hex text for hashes.
//! The embedded backend is SQLite ([`sqlite`]); the scale-out backend is PostgreSQL with
//! row-level security ([`postgres`]), where even those unscoped lookups run on a named system
//! path that the database's policies bound.
#![forbid(unsafe_code)]

#[cfg(test)]
mod conformance;
mod models;
pub mod postgres;
pub mod sqlite;

pub use models::*;

use async_trait::async_trait;
use portcullis_core::audit::{AuditEvent, AuditRecord};
use portcullis_core::iplist::IpRules;
use portcullis_core::limits::LimitOverrides;
pub use portcullis_core::session::SessionSettings;
use portcullis_core::{KeyId, TenantId, TenantScope, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict(String::from("a record with the same unique value"));
        }
        StoreError::Unavailable(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    // Tenants: operator scope.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>>;
    async fn list_tenants(&self, after: Option<&str>, limit: u32) -> Result<Vec<Tenant>>;
    /// Returns false when no such tenant. Records a `tenant` change.
    async fn set_tenant_status(&self, id: &TenantId, status: TenantStatus, now_ms: i64) -> Result<bool>;

    // Users.
    async fn create_user(&self, user: &User) -> Result<()>;
    /// Login lookup (unscoped by nature: the tenant is not known before the password is checked).
    async fn find_user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// Session resolution (unscoped: the session row names the user).
    async fn get_user_unscoped(&self, id: &UserId) -> Result<Option<User>>;
    async fn get_user(&self, scope: &TenantScope, id: &UserId) -> Result<Option<User>>;
    async fn list_users(&self, scope: &TenantScope, after: Option<&str>, limit: u32) -> Result<Vec<User>>;
    async fn list_operators(&self) -> Result<Vec<User>>;
    async fn count_operators(&self) -> Result<u64>;

    // API keys.
    async fn create_key(&self, scope: &TenantScope, key: &ApiKeyRecord) -> Result<()>;
    /// Authentication lookup by `HMAC(pepper, key)`.
    async fn find_key_by_hash(&self, hash_hex: &str) -> Result<Option<ApiKeyRecord>>;
    async fn get_key(&self, scope: &TenantScope, id: &KeyId) -> Result<Option<ApiKeyRecord>>;
    async fn list_keys(&self, scope: &TenantScope, after: Option<&str>, limit: u32) -> Result<Vec<ApiKeyRecord>>;
    /// Returns false when the key is not in scope or already revoked. Records a `key` change.
    async fn revoke_key(&self, scope: &TenantScope, id: &KeyId, now_ms: i64) -> Result<bool>;
    /// Inserts `new` and ends the old key's validity at `old_valid_until_ms`, atomically.
    async fn rotate_key(
        &self,
        scope: &TenantScope,
        old: &KeyId,
        new: &ApiKeyRecord,
        old_valid_until_ms: i64,
    ) -> Result<bool>;
    async fn touch_keys(&self, used: &[(KeyId, i64)]) -> Result<()>;
    /// Which tenant owns a key id, if any: used only to label cross-tenant probes in the audit.
    async fn key_owner(&self, id: &KeyId) -> Result<Option<TenantId>>;
    async fn user_owner(&self, id: &UserId) -> Result<Option<Option<TenantId>>>;

    // Login sessions.
    async fn create_session(&self, session: &SessionRecord) -> Result<()>;
    async fn find_session(&self, token_hash_hex: &str) -> Result<Option<SessionRecord>>;
    async fn revoke_session(&self, id: &str, now_ms: i64) -> Result<bool>;

    // Limit overrides (operator scope): absent fields keep the tier defaults.
    async fn get_limits(&self, tenant: &TenantId) -> Result<LimitOverrides>;
    /// Replaces the tenant's overrides. Records a `limits` change.
    async fn set_limits(&self, tenant: &TenantId, limits: &LimitOverrides, now_ms: i64) -> Result<()>;

    // Per-tenant IP allow/block lists (CIDR text).
    async fn get_ip_rules(&self, tenant: &TenantId) -> Result<IpRules>;
    /// Replaces the tenant's IP rules. Records an `ip_rules` change.
    async fn set_ip_rules(&self, tenant: &TenantId, rules: &IpRules, now_ms: i64) -> Result<()>;

    // Upstream credentials per tenant and route, sealed with the master key by the caller.
    /// Inserts or replaces. Records an `upstream_credential` change.
    async fn put_upstream_credential(&self, scope: &TenantScope, c: &UpstreamCredential) -> Result<()>;
    async fn get_upstream_credential(&self, scope: &TenantScope, route: &str) -> Result<Option<UpstreamCredential>>;
    async fn list_upstream_credentials(&self, scope: &TenantScope) -> Result<Vec<UpstreamCredential>>;
    async fn delete_upstream_credential(&self, scope: &TenantScope, route: &str, now_ms: i64) -> Result<bool>;

    // Tenant Cedar policies, with their history. Every write records a `policies` change (entity
    // id: the tenant) and appends a [`PolicyVersion`] in the same transaction.
    /// Every policy of the tenant, enabled or not, ordered by name.
    async fn list_policies(&self, scope: &TenantScope) -> Result<Vec<PolicyRecord>>;
    async fn get_policy(&self, scope: &TenantScope, id: &str) -> Result<Option<PolicyRecord>>;
    /// Inserts `p` (its `version` must be 1). [`StoreError::Conflict`] when the tenant already
    /// has a policy of that name (or that id).
    async fn create_policy(&self, scope: &TenantScope, p: &PolicyRecord) -> Result<()>;
    /// Replaces name, description, cedar and enabled of the policy `p.id`, sets `version` to
    /// `p.version`, when its stored version is `p.version - 1`. Returns false when there is no
    /// such policy in scope or its version moved on (the caller re-reads to tell which).
    /// [`StoreError::Conflict`] when the new name is taken by another policy.
    async fn update_policy(&self, scope: &TenantScope, p: &PolicyRecord) -> Result<bool>;
    /// Deletes the policy; its history stays, ending in a `delete` entry. False when not found.
    async fn delete_policy(&self, scope: &TenantScope, id: &str, by: &str, now_ms: i64) -> Result<bool>;
    /// The policy's history, oldest first (also after it was deleted); empty when unknown.
    async fn policy_versions(&self, scope: &TenantScope, id: &str) -> Result<Vec<PolicyVersion>>;

    // Model profiles. Every write records a `model_profiles` change (entity id: the tenant).
    /// Ordered by role, then deployment mode.
    async fn list_model_profiles(&self, scope: &TenantScope) -> Result<Vec<ModelProfile>>;
    async fn get_model_profile(&self, scope: &TenantScope, id: &str) -> Result<Option<ModelProfile>>;
    /// [`StoreError::Conflict`] when the tenant already has a profile for that role and mode.
    async fn create_model_profile(&self, scope: &TenantScope, p: &ModelProfile) -> Result<()>;
    /// Replaces every field but id, tenant and creation. False when not found in scope.
    async fn update_model_profile(&self, scope: &TenantScope, p: &ModelProfile) -> Result<bool>;
    async fn delete_model_profile(&self, scope: &TenantScope, id: &str, now_ms: i64) -> Result<bool>;

    // Usage: counters added to, never overwritten, so several instances may add to one row.
    /// Adds each row's counters to the stored row of the same key (creating it). Rows may belong
    /// to several tenants; each is written in its own tenant's scope. All or nothing; a tenant's
    /// rows are skipped when `batch` is the last one its writer added for that tenant.
    async fn add_usage(&self, batch: LedgerBatch<'_>, rows: &[UsageRow]) -> Result<()>;
    /// The tenant's rows with `from_day <= day <= to_day`.
    async fn usage(&self, scope: &TenantScope, from_day: &str, to_day: &str) -> Result<Vec<UsageRow>>;

    // Per-model traffic by minute, for model-profile metrics. Added to like usage.
    /// All or nothing, and skipped per tenant like [`Store::add_usage`].
    async fn add_model_metrics(
        &self,
        batch: LedgerBatch<'_>,
        minutes: &[ModelMinute],
        latency: &[LatencyBucket],
    ) -> Result<()>;
    /// The tenant's rows for `model` with `from_minute <= minute < to_minute`.
    async fn model_metrics(
        &self,
        scope: &TenantScope,
        model: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<(Vec<ModelMinute>, Vec<LatencyBucket>)>;

    // Agent sessions: events and per-session totals, updated together.
    /// Appends the events (of any tenants, each written in its own tenant's scope) and adds them
    /// to their sessions' totals. An event id already stored is skipped.
    async fn append_session_events(&self, events: &[SessionEvent]) -> Result<()>;
    async fn list_sessions(&self, scope: &TenantScope, filter: &SessionFilter) -> Result<Vec<SessionSummary>>;
    async fn get_session(&self, scope: &TenantScope, session_id: &str) -> Result<Option<SessionSummary>>;
    /// The session's events after the event id `after` (from the start when `None`), oldest
    /// first, at most `limit`.
    async fn session_events(
        &self,
        scope: &TenantScope,
        session_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionEvent>>;
    /// Deletes the tenant's sessions whose last event is older than `before_ms`, with their
    /// events; returns how many sessions went.
    async fn purge_sessions(&self, scope: &TenantScope, before_ms: i64) -> Result<u64>;
    async fn session_settings(&self, tenant: &TenantId) -> Result<SessionSettings>;
    /// Replaces the tenant's capture settings. Records a `session_settings` change.
    async fn set_session_settings(&self, tenant: &TenantId, s: &SessionSettings, now_ms: i64) -> Result<()>;

    // Change feed: how caches in this and other processes learn of revocations.
    async fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<Change>>;
    async fn latest_change_seq(&self) -> Result<i64>;
}

/// Where a batch of chained records is also written (the JSONL files). Called inside the
/// database transaction, after the records are chained and before commit, so a failed file write
/// aborts the batch and a failed commit undoes the file write.
pub trait ChainSink: Send + Sync {
    fn write(&self, records: &[AuditRecord]) -> std::result::Result<SinkUndo, String>;
    fn undo(&self, undo: SinkUndo);
}

/// What a sink needs to take a write back: file paths and their lengths before the write.
#[derive(Debug, Default)]
pub struct SinkUndo(pub Vec<(std::path::PathBuf, u64)>);

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("audit sink failed: {0}")]
    Sink(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;
    /// Chains `events` after the writer's head, writes them to `sink`, inserts them, commits.
    /// `known_head`: the head as this writer last committed it, when the writer is the only one
    /// on its chain (a `serve` process holds its data dir's lock); `None` reads the head inside
    /// the transaction (writers that may run concurrently, like the CLI).
    async fn append(
        &self,
        writer_id: &str,
        known_head: Option<&ChainHead>,
        events: Vec<AuditEvent>,
        sink: &dyn ChainSink,
    ) -> std::result::Result<Vec<AuditRecord>, AppendError>;
    /// Inserts records that already carry their chain (recovery of a file that got ahead of the
    /// database when the process died between file write and commit).
    async fn import(&self, records: &[AuditRecord]) -> Result<()>;
    async fn head(&self, writer_id: &str) -> Result<Option<ChainHead>>;
    async fn heads(&self) -> Result<Vec<ChainHead>>;
    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<()>;
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>>;
    /// Every record of a writer in seq order (verification).
    async fn chain(&self, writer_id: &str) -> Result<Vec<AuditRecord>>;
    async fn query(&self, filter: &AuditFilter) -> Result<Vec<(i64, AuditRecord)>>;
}

/// An event's contribution to its session's counters: user, assistant, tool, denied.
pub(crate) fn session_counts(e: &SessionEvent) -> [i64; 4] {
    use portcullis_core::session::EventKind;
    [
        i64::from(e.kind == EventKind::User),
        i64::from(e.kind == EventKind::Assistant),
        i64::from(e.kind == EventKind::Tool),
        i64::from(e.decision.as_ref().is_some_and(|d| d.denied())),
    ]
}

pub(crate) fn session_settings_from(capture: String, patterns: String) -> Result<SessionSettings> {
    let capture = capture.parse().map_err(|_| StoreError::Corrupt(format!("session settings capture `{capture}`")))?;
    let redact_patterns = serde_json::from_str(&patterns)
        .map_err(|_| StoreError::Corrupt(format!("session settings redact patterns `{patterns}`")))?;
    Ok(SessionSettings { capture, redact_patterns })
}

/// The session tables' row readers, written once for both backends' row types (each backend
/// brings its own `corrupt`).
macro_rules! session_row_readers {
    ($row:ty) => {
        fn session_summary_from(row: &$row) -> Result<SessionSummary> {
            Ok(SessionSummary {
                tenant_id: row.try_get("tenant_id")?,
                session_id: row.try_get("session_id")?,
                first_event_ms: row.try_get("first_event_ms")?,
                last_event_ms: row.try_get("last_event_ms")?,
                total_events: row.try_get("total_events")?,
                user_messages: row.try_get("user_messages")?,
                assistant_messages: row.try_get("assistant_messages")?,
                tool_calls: row.try_get("tool_calls")?,
                denied: row.try_get("denied")?,
                input_tokens: row.try_get("input_tokens")?,
                output_tokens: row.try_get("output_tokens")?,
                cost_nanos: row.try_get("cost_nanos")?,
                last_principal_id: row.try_get("last_principal_id")?,
                last_model: row.try_get("last_model")?,
            })
        }

        fn session_event_from(row: &$row) -> Result<SessionEvent> {
            let kind: String = row.try_get("kind")?;
            let tool_args: Option<String> = row.try_get("tool_args")?;
            let metadata: String = row.try_get("metadata")?;
            let decision: Option<String> = row.try_get("decision")?;
            Ok(SessionEvent {
                id: row.try_get("id")?,
                tenant_id: row.try_get("tenant_id")?,
                session_id: row.try_get("session_id")?,
                kind: kind.parse().map_err(|_| corrupt("session event kind", &kind))?,
                message: row.try_get("message")?,
                tool_name: row.try_get("tool_name")?,
                tool_args: tool_args
                    .map(|t| serde_json::from_str(&t).map_err(|_| corrupt("session event tool_args", &t)))
                    .transpose()?,
                metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("session event metadata", &metadata))?,
                created_at_ms: row.try_get("created_at")?,
                principal_id: row.try_get("principal_id")?,
                request_id: row.try_get("request_id")?,
                decision: decision
                    .map(|d| serde_json::from_str(&d).map_err(|_| corrupt("session event decision", &d)))
                    .transpose()?,
                model: row.try_get("model")?,
                input_tokens: row.try_get("input_tokens")?,
                output_tokens: row.try_get("output_tokens")?,
                cost_nanos: row.try_get("cost_nanos")?,
            })
        }
    };
}
pub(crate) use session_row_readers;
