use portcullis_core::{KeyId, Role, TenantId, Tier, UserId};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TenantStatus::Active),
            "suspended" => Some(TenantStatus::Suspended),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub tier: Tier,
    pub status: TenantStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    /// `None` for platform operators.
    pub tenant_id: Option<TenantId>,
    pub email: String,
    /// Argon2id PHC string. Never serialised into any response.
    pub password_hash: String,
    /// `None` for platform operators.
    pub role: Option<Role>,
    pub disabled: bool,
    pub created_at_ms: i64,
    pub created_by: String,
}

impl User {
    pub fn is_operator(&self) -> bool {
        self.tenant_id.is_none()
    }
}

#[derive(Clone, Debug)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub name: String,
    pub role: Role,
    pub scopes: Vec<String>,
    /// `pc_` + 8 characters, for recognising a key in listings.
    pub prefix: String,
    /// Hex of `HMAC-SHA-256(pepper, key)`. Never serialised into any response.
    pub hash_hex: String,
    pub created_at_ms: i64,
    pub created_by: String,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
    pub rotated_from: Option<KeyId>,
    pub rotated_to: Option<KeyId>,
}

#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub id: String,
    pub token_hash_hex: String,
    pub user_id: UserId,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Key,
    Tenant,
    Session,
    User,
    Limits,
    IpRules,
    /// Entity id: tenant id (36 characters) followed by the route prefix.
    UpstreamCredential,
    /// Entity id: the tenant whose policy set changed.
    Policies,
    /// Entity id: the tenant whose model profiles (prices) changed.
    ModelProfiles,
    /// Entity id: the tenant whose session capture settings changed.
    SessionSettings,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Key => "key",
            ChangeKind::Tenant => "tenant",
            ChangeKind::Session => "session",
            ChangeKind::User => "user",
            ChangeKind::Limits => "limits",
            ChangeKind::IpRules => "ip_rules",
            ChangeKind::UpstreamCredential => "upstream_credential",
            ChangeKind::Policies => "policies",
            ChangeKind::ModelProfiles => "model_profiles",
            ChangeKind::SessionSettings => "session_settings",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key" => Some(ChangeKind::Key),
            "tenant" => Some(ChangeKind::Tenant),
            "session" => Some(ChangeKind::Session),
            "user" => Some(ChangeKind::User),
            "limits" => Some(ChangeKind::Limits),
            "ip_rules" => Some(ChangeKind::IpRules),
            "upstream_credential" => Some(ChangeKind::UpstreamCredential),
            "policies" => Some(ChangeKind::Policies),
            "model_profiles" => Some(ChangeKind::ModelProfiles),
            "session_settings" => Some(ChangeKind::SessionSettings),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Change {
    pub seq: i64,
    pub kind: ChangeKind,
    pub entity_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub writer_id: String,
    pub seq: u64,
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub writer_id: String,
    pub seq: u64,
    pub hash: String,
    pub timestamp: String,
    /// Hex Ed25519 signature over `checkpoint_message(writer_id, seq, hash, timestamp)`.
    pub signature: String,
    /// Hex Ed25519 public key that made it.
    pub public_key: String,
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// `None` reads every tenant (operators only; the caller enforces that).
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub action: Option<String>,
    pub result: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Return rows with a smaller row id than this (newest first paging).
    pub before_id: Option<i64>,
    pub limit: u32,
}

pub fn metadata_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| String::from("{}"))
}

/// A credential the gateway adds to requests it forwards for a tenant on a route. The value is
/// only ever stored sealed (XChaCha20-Poly1305 under the master key).
#[derive(Clone, Debug)]
pub struct UpstreamCredential {
    pub route: String,
    pub header_name: String,
    pub nonce_hex: String,
    pub ciphertext_hex: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub created_by: String,
}

/// A tenant's Cedar policy document (one or more `permit`/`forbid` statements), validated against
/// the schema by the caller before it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    /// `pol_` followed by 32 hex digits; also the id decisions name.
    pub id: String,
    pub tenant_id: TenantId,
    /// Unique within the tenant.
    pub name: String,
    pub description: String,
    pub cedar: String,
    /// A disabled policy is kept (and versioned) but takes no part in decisions.
    pub enabled: bool,
    /// 1 on create, +1 on every update.
    pub version: i64,
    pub created_at_ms: i64,
    pub created_by: String,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// One entry of a policy's history: the document as it was after a create, update or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    pub policy_id: String,
    pub version: i64,
    pub name: String,
    pub description: String,
    pub cedar: String,
    pub enabled: bool,
    /// `create`, `update` or `delete`.
    pub change: String,
    pub changed_at_ms: i64,
    pub changed_by: String,
}

/// How a tenant runs one model for one role: where, how, and at what price.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelProfile {
    /// `mp_` followed by 32 hex digits.
    pub id: String,
    pub tenant_id: TenantId,
    /// What the model is for, e.g. `chat`, `planner`, `summariser`.
    pub role: String,
    /// e.g. `realtime`, `batch`, `self-hosted`. Unique with `role` within the tenant.
    pub deployment_mode: String,
    /// The model name as requests and responses carry it (`model` field).
    pub model: String,
    pub base_url: String,
    pub temperature: f64,
    /// Price in micro-USD per 1 000 tokens (= nano-USD per token).
    pub input_price_micros_per_1k: i64,
    pub output_price_micros_per_1k: i64,
    pub created_at_ms: i64,
    pub created_by: String,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// One write of counters (usage or model metrics) by one writer. The store records, per tenant,
/// the last batch each writer added to each ledger and skips a batch it has already added: a
/// writer whose write failed with an unknown outcome (the commit landed but its answer was lost)
/// sends the same batch again, never a merged one, and it counts once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerBatch<'a> {
    /// The writing process (its audit chain id).
    pub writer: &'a str,
    /// Differs from the writer's previous batch.
    pub id: i64,
}

/// Usage to add to one (tenant, day, caller, model, route) row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant_id: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The caller as the audit log names it (`key:…`, `user:…`, `jwt:…`).
    pub principal_id: String,
    /// Empty when the request named none.
    pub model: String,
    pub route: String,
    pub requests: i64,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub latency_ms_sum: i64,
    /// Nano-USD.
    pub cost_nanos: i64,
}

impl UsageRow {
    /// A row with `other`'s keys and no counts.
    pub fn keys_of(other: &UsageRow) -> UsageRow {
        UsageRow {
            tenant_id: other.tenant_id.clone(),
            day: other.day.clone(),
            principal_id: other.principal_id.clone(),
            model: other.model.clone(),
            route: other.route.clone(),
            ..UsageRow::default()
        }
    }

    /// Adds `other`'s counters to this row's (the keys are the caller's business).
    pub fn add(&mut self, other: &UsageRow) {
        self.requests = self.requests.saturating_add(other.requests);
        self.status_2xx = self.status_2xx.saturating_add(other.status_2xx);
        self.status_4xx = self.status_4xx.saturating_add(other.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(other.status_5xx);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(other.latency_ms_sum);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
    }
}

/// Traffic of one model in one minute, added to (several instances write the same row).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelMinute {
    pub tenant_id: String,
    pub model: String,
    /// Unix minute (ms / 60 000).
    pub minute: i64,
    pub requests: i64,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nanos: i64,
}

impl ModelMinute {
    /// Adds `other`'s counters to this minute's (the keys are the caller's business).
    pub fn add(&mut self, other: &ModelMinute) {
        self.requests = self.requests.saturating_add(other.requests);
        self.status_2xx = self.status_2xx.saturating_add(other.status_2xx);
        self.status_4xx = self.status_4xx.saturating_add(other.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(other.status_5xx);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
    }
}

/// How many requests of a model in a minute fell into one latency bucket (bucket numbering is
/// `portcullis_core::histogram`'s).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyBucket {
    pub tenant_id: String,
    pub model: String,
    pub minute: i64,
    pub bucket: i64,
    pub count: i64,
}

/// One event of an agent session, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionEvent {
    /// `evt_` + UUIDv7: ordered by creation.
    pub id: String,
    pub tenant_id: String,
    pub session_id: String,
    pub kind: portcullis_core::session::EventKind,
    pub message: Option<String>,
    pub tool_name: Option<String>,
    pub tool_args: Option<serde_json::Value>,
    /// A JSON object.
    pub metadata: serde_json::Value,
    pub created_at_ms: i64,
    /// The caller as the audit log names it.
    pub principal_id: Option<String>,
    pub request_id: Option<String>,
    pub decision: Option<portcullis_core::session::EventDecision>,
    pub model: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Nano-USD.
    pub cost_nanos: i64,
}

/// A session's running totals, kept beside its events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionSummary {
    pub tenant_id: String,
    pub session_id: String,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    pub total_events: i64,
    pub user_messages: i64,
    pub assistant_messages: i64,
    pub tool_calls: i64,
    pub denied: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nanos: i64,
    pub last_principal_id: Option<String>,
    pub last_model: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionSort {
    /// Most recent activity first.
    #[default]
    Recent,
    /// Most expensive first.
    Cost,
}

/// Which sessions to list. Keyset pagination: `after` is the sort key and session id of the
/// last row of the previous page.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Sessions with activity at or after this time.
    pub since_ms: Option<i64>,
    /// Sessions that began before this time.
    pub until_ms: Option<i64>,
    /// Substring of the session id.
    pub contains: Option<String>,
    pub sort: SessionSort,
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

impl SessionSummary {
    /// The key the list is sorted by, for the next page's cursor.
    pub fn sort_key(&self, sort: SessionSort) -> i64 {
        match sort {
            SessionSort::Recent => self.last_event_ms,
            SessionSort::Cost => self.cost_nanos,
        }
    }
}
