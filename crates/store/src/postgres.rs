//! The scale-out backend: PostgreSQL with row-level security (SPEC §3.3). Several stateless
//! gateway instances share one database; each is its own audit chain writer.
//!
//! # Roles
//! Two roles, both created by the DBA: the **owner** (`PORTCULLIS_MIGRATION_DATABASE_URL`) owns
//! the `portcullis` schema and everything in it and runs [`migrate`]; the **application role**
//! (`PORTCULLIS_DATABASE_URL`) is a plain login role that [`migrate`] grants exactly
//! [`APP_GRANTS`], never ownership. [`check_app_role`] refuses an application role that is a
//! superuser, has BYPASSRLS, or owns (or is a member of the owner of) any table, and a schema
//! whose tables lost their forced row-level security.
//!
//! # Row-level security
//! Every table but `schema_migrations` has `ENABLE` and `FORCE ROW LEVEL SECURITY`. Tenant rows
//! are admitted by `tenant_id = nullif(current_setting('app.tenant_id', true), '')` in `USING`
//! and `WITH CHECK`: a connection whose setting is missing (NULL) or empty (`''`, what a
//! transaction-local setting reads after its transaction ended) sees and writes no tenant row.
//!
//! Every statement of this module runs in a transaction whose first statement is
//! [`BEGIN_TENANT`] or [`BEGIN_SYSTEM`], which set the tenant (or the system scope) and the
//! search path with `set_config(…, true)`: transaction-local, so nothing stays on a pooled
//! connection (or a PgBouncer server connection in transaction mode) for the next borrower.
//! Session-level `SET` is never used.
//!
//! # The system path
//! Some work has no tenant by nature. It runs in a transaction opened by [`system_tx`] that sets
//! `app.scope = 'system'` (and clears the tenant), always naming a [`SystemPath`]. The policies
//! admit that scope only where these paths need it, so even a mistaken use of it reaches no more:
//!
//! | path | methods | what the system scope may do |
//! |---|---|---|
//! | [`SystemPath::Authentication`] | `find_key_by_hash`, `find_session`, `find_user_by_email`, `get_user_unscoped` | read `api_keys`, `sessions`, `users`: the credential names its tenant, which the guard then checks |
//! | [`SystemPath::KeyUsage`] | `touch_keys` | update `api_keys.last_used_at` (a trigger refuses any other column in this scope) |
//! | [`SystemPath::Sessions`] | `create_session`, `revoke_session` | write `sessions` (no tenant column: a session names a user) |
//! | [`SystemPath::Operator`] | `list_tenants`, `list_operators`, `count_operators`, `create_user` of an operator | read `tenants` and `users`; insert users without a tenant |
//! | [`SystemPath::ProbeLabel`] | `key_owner`, `user_owner` | read which tenant owns an id, to label a cross-tenant probe in the audit |
//! | [`SystemPath::ChangeFeed`] | `changes_since`, `latest_change_seq` | read `changes` (kinds and ids, no tenant data) |
//! | [`SystemPath::AuditWriter`] | `append`, `import` | insert audit rows of every tenant in one batch; write the chain head |
//! | [`SystemPath::AuditRead`] | `head`, `heads`, `chain`, `checkpoints`, `insert_checkpoint`, `query` without a tenant | read every chain (verification, operators) |
//!
//! Nothing in the system scope reads `upstream_credentials`, `tenant_limits`,
//! `tenant_ip_rules`, `policies` or `policy_versions`: those are only ever reached in their
//! tenant's transaction. Methods that are given a tenant id (`get_tenant`, `set_limits`,
//! `create_tenant`, …) run in that tenant's transaction even when an operator calls them. No
//! SECURITY DEFINER function and no view exist.
//!
//! RLS is the database's backstop against a query that forgot its tenant; it does not defend
//! against arbitrary SQL run as the application role (which could set any setting itself).
//!
//! # The change feed across instances
//! `changes.seq` comes from a sequence, and sequence numbers are handed out before commit: two
//! transactions could commit out of order and a poller that has seen seq 6 would skip seq 5 for
//! ever. [`record_change`] therefore takes a transaction-level advisory lock before taking its
//! number, so change-recording transactions commit in seq order.
//!
//! SQL is written to port like SQLite's: TEXT ids (collation "C", so ordering and paging match
//! SQLite's byte order), BIGINT unix-millisecond times, hex text for hashes.
use crate::*;
use portcullis_core::audit::{AuditRecord, AuditResult, GENESIS_HASH};
use portcullis_core::iplist::IpRules;
use portcullis_core::limits::LimitOverrides;
use portcullis_core::{Role, Tier};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// The schema every table lives in; owned by the migration role.
pub const SCHEMA: &str = "portcullis";

/// Tables that carry no row-level security: only migration bookkeeping (version numbers).
pub const TABLES_WITHOUT_RLS: &[&str] = &["schema_migrations"];

/// First statement of a tenant transaction. `$1`: the tenant id. The scope is cleared
/// explicitly so that no earlier session-level value could ever widen a tenant transaction.
pub const BEGIN_TENANT: &str = "SELECT set_config('search_path', 'portcullis, pg_temp', true), \
     set_config('app.tenant_id', $1, true), set_config('app.scope', '', true)";

/// First statement of a system-path transaction. `$1`: the [`SystemPath`] name, kept in
/// `app.system_path` for whoever inspects the transaction (and for triggers that might care).
pub const BEGIN_SYSTEM: &str = "SELECT set_config('search_path', 'portcullis, pg_temp', true), \
     set_config('app.tenant_id', '', true), set_config('app.scope', 'system', true), \
     set_config('app.system_path', $1, true)";

/// Advisory lock namespaces (first key of the two-key form).
const LOCK_MIGRATE: i32 = 0x5043_0001;
const LOCK_CHANGES: i32 = 0x5043_0002;
const LOCK_AUDIT_CHAIN: i32 = 0x5043_0003;

/// Ordered migrations, applied by the owner role. Append only; never edit a shipped entry.
/// They run with `search_path = portcullis`.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE tenants (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE users (
    id TEXT COLLATE "C" PRIMARY KEY,
    tenant_id TEXT COLLATE "C" NULL REFERENCES tenants(id),
    email TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX users_tenant ON users(tenant_id, id);
CREATE TABLE api_keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at BIGINT NULL,
    revoked_at BIGINT NULL,
    last_used_at BIGINT NULL,
    rotated_from TEXT NULL,
    rotated_to TEXT NULL
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id, id);
CREATE TABLE sessions (
    id TEXT COLLATE "C" PRIMARY KEY,
    token_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NULL
);
CREATE TABLE changes (
    seq BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE TABLE tenant_limits (
    tenant_id TEXT COLLATE "C" PRIMARY KEY REFERENCES tenants(id),
    rate_per_minute BIGINT NULL,
    requests_per_day BIGINT NULL,
    concurrency BIGINT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE tenant_ip_rules (
    tenant_id TEXT COLLATE "C" PRIMARY KEY REFERENCES tenants(id),
    rules TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE upstream_credentials (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    route TEXT COLLATE "C" NOT NULL,
    header_name TEXT NOT NULL,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant_id, route)
);
CREATE TABLE audit_events (
    id BIGSERIAL PRIMARY KEY,
    writer_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    timestamp TEXT NOT NULL,
    tenant_id TEXT COLLATE "C" NULL,
    user_id TEXT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NULL,
    resource_id TEXT NULL,
    result TEXT NOT NULL,
    reason TEXT NULL,
    metadata TEXT NOT NULL,
    ip_address TEXT NULL,
    user_agent TEXT NULL,
    request_id TEXT NULL,
    -- PostgreSQL text cannot hold NUL, which SQLite and the hashed record can: a row whose
    -- record contains one stores every text column escaped (see `nul_escape`).
    nul_escaped BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (writer_id, seq)
);
CREATE INDEX audit_tenant_time ON audit_events(tenant_id, ts_ms);
CREATE TABLE audit_heads (
    writer_id TEXT COLLATE "C" PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    writer_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    signature TEXT NOT NULL,
    public_key TEXT NOT NULL,
    PRIMARY KEY (writer_id, seq)
);

-- Row-level security. `FORCE` makes it hold for the table owner too; the application role is
-- never the owner anyway (checked at start).
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE changes FORCE ROW LEVEL SECURITY;
ALTER TABLE tenant_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_limits FORCE ROW LEVEL SECURITY;
ALTER TABLE tenant_ip_rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_ip_rules FORCE ROW LEVEL SECURITY;
ALTER TABLE upstream_credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE upstream_credentials FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;

-- A tenant's own rows, in its transaction. (The tenants table's key is `id`.)
CREATE POLICY tenant_rows ON tenants FOR ALL
    USING (id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON users FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON api_keys FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON tenant_limits FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON tenant_ip_rules FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON upstream_credentials FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON audit_events FOR SELECT
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''));

-- The system path (module header of postgres.rs): only what its methods need.
CREATE POLICY system_read ON tenants FOR SELECT
    USING (current_setting('app.scope', true) = 'system');
CREATE POLICY system_read ON users FOR SELECT
    USING (current_setting('app.scope', true) = 'system');
CREATE POLICY system_operators ON users FOR INSERT
    WITH CHECK (tenant_id IS NULL AND current_setting('app.scope', true) = 'system');
CREATE POLICY system_read ON api_keys FOR SELECT
    USING (current_setting('app.scope', true) = 'system');
CREATE POLICY system_key_usage ON api_keys FOR UPDATE
    USING (current_setting('app.scope', true) = 'system')
    WITH CHECK (current_setting('app.scope', true) = 'system');
CREATE POLICY system_rows ON sessions FOR ALL
    USING (current_setting('app.scope', true) = 'system')
    WITH CHECK (current_setting('app.scope', true) = 'system');
-- Every transaction that changes something a cache holds records it, tenant or not.
CREATE POLICY record_change ON changes FOR INSERT WITH CHECK (true);
CREATE POLICY system_read ON changes FOR SELECT
    USING (current_setting('app.scope', true) = 'system');
CREATE POLICY system_rows ON audit_events FOR ALL
    USING (current_setting('app.scope', true) = 'system')
    WITH CHECK (current_setting('app.scope', true) = 'system');
CREATE POLICY system_rows ON audit_heads FOR ALL
    USING (current_setting('app.scope', true) = 'system')
    WITH CHECK (current_setting('app.scope', true) = 'system');
CREATE POLICY system_rows ON audit_checkpoints FOR ALL
    USING (current_setting('app.scope', true) = 'system')
    WITH CHECK (current_setting('app.scope', true) = 'system');

-- RLS cannot limit an UPDATE to one column: in the system scope (key usage), refuse any change
-- but last_used_at. An ordinary (invoker) trigger function: it returns no rows to anyone.
CREATE FUNCTION api_keys_system_update_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('app.scope', true) = 'system'
       AND (to_jsonb(NEW) - 'last_used_at') IS DISTINCT FROM (to_jsonb(OLD) - 'last_used_at') THEN
        RAISE EXCEPTION 'the system scope may only record key usage (last_used_at)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER api_keys_system_update_guard BEFORE UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_system_update_guard();
"#,
    ),
    (
        2,
        // Tenant Cedar policies and their history. The history has no foreign key to the policy:
        // it outlives the policy's deletion. The application role may not update or delete it
        // (see APP_GRANTS).
        r#"
CREATE TABLE policies (
    id TEXT COLLATE "C" PRIMARY KEY,
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    name TEXT COLLATE "C" NOT NULL,
    description TEXT NOT NULL,
    cedar TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE policy_versions (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    policy_id TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    cedar TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    change TEXT NOT NULL,
    changed_at BIGINT NOT NULL,
    changed_by TEXT NOT NULL,
    PRIMARY KEY (policy_id, version)
);

ALTER TABLE policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE policies FORCE ROW LEVEL SECURITY;
ALTER TABLE policy_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE policy_versions FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_rows ON policies FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON policy_versions FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
"#,
    ),
    (
        3,
        // Model profiles (prices in micro-USD per 1 000 tokens, i.e. nano-USD per token) and
        // usage per tenant, day, caller, model and route (costs in nano-USD).
        r#"
CREATE TABLE model_profiles (
    id TEXT COLLATE "C" PRIMARY KEY,
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    role TEXT COLLATE "C" NOT NULL,
    deployment_mode TEXT COLLATE "C" NOT NULL,
    model TEXT COLLATE "C" NOT NULL,
    base_url TEXT NOT NULL,
    temperature DOUBLE PRECISION NOT NULL,
    input_price_micros_per_1k BIGINT NOT NULL,
    output_price_micros_per_1k BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    UNIQUE (tenant_id, role, deployment_mode)
);
CREATE TABLE usage_daily (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    day TEXT COLLATE "C" NOT NULL,
    principal_id TEXT COLLATE "C" NOT NULL,
    model TEXT COLLATE "C" NOT NULL,
    route TEXT COLLATE "C" NOT NULL,
    requests BIGINT NOT NULL,
    status_2xx BIGINT NOT NULL,
    status_4xx BIGINT NOT NULL,
    status_5xx BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    latency_ms_sum BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, principal_id, model, route)
);

ALTER TABLE model_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE model_profiles FORCE ROW LEVEL SECURITY;
ALTER TABLE usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_daily FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_rows ON model_profiles FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON usage_daily FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
"#,
    ),
    (
        4,
        // Budgets per tenant, nano-USD.
        r#"
ALTER TABLE tenant_limits ADD COLUMN budget_daily_nanos BIGINT NULL;
ALTER TABLE tenant_limits ADD COLUMN budget_monthly_nanos BIGINT NULL;
"#,
    ),
    (
        5,
        // Per model and minute: counters, and latency as histogram buckets.
        r#"
CREATE TABLE model_minutes (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    model TEXT COLLATE "C" NOT NULL,
    minute BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    status_2xx BIGINT NOT NULL,
    status_4xx BIGINT NOT NULL,
    status_5xx BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, model, minute)
);
CREATE TABLE model_latency (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    model TEXT COLLATE "C" NOT NULL,
    minute BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, model, minute, bucket)
);
ALTER TABLE model_minutes ENABLE ROW LEVEL SECURITY;
ALTER TABLE model_minutes FORCE ROW LEVEL SECURITY;
ALTER TABLE model_latency ENABLE ROW LEVEL SECURITY;
ALTER TABLE model_latency FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON model_minutes FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON model_latency FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
"#,
    ),
    (
        6,
        // Agent sessions: events, per-session totals, capture settings per tenant.
        r#"
CREATE TABLE agent_sessions (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    session_id TEXT COLLATE "C" NOT NULL,
    first_event_ms BIGINT NOT NULL,
    last_event_ms BIGINT NOT NULL,
    total_events BIGINT NOT NULL,
    user_messages BIGINT NOT NULL,
    assistant_messages BIGINT NOT NULL,
    tool_calls BIGINT NOT NULL,
    denied BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    last_principal_id TEXT NULL,
    last_model TEXT NULL,
    PRIMARY KEY (tenant_id, session_id)
);
CREATE INDEX agent_sessions_recent ON agent_sessions (tenant_id, last_event_ms DESC, session_id DESC);
CREATE INDEX agent_sessions_cost ON agent_sessions (tenant_id, cost_nanos DESC, session_id DESC);
CREATE TABLE session_events (
    id TEXT COLLATE "C" PRIMARY KEY,
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    session_id TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NULL,
    tool_name TEXT NULL,
    tool_args TEXT NULL,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    principal_id TEXT NULL,
    request_id TEXT NULL,
    decision TEXT NULL,
    model TEXT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL
);
CREATE INDEX session_events_by_session ON session_events (tenant_id, session_id, created_at, id);
CREATE TABLE session_settings (
    tenant_id TEXT COLLATE "C" PRIMARY KEY REFERENCES tenants(id),
    capture TEXT NOT NULL,
    redact_patterns TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
ALTER TABLE agent_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE session_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE session_events FORCE ROW LEVEL SECURITY;
ALTER TABLE session_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE session_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON agent_sessions FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON session_events FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
CREATE POLICY tenant_rows ON session_settings FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
"#,
    ),
    (
        7,
        // The last counter batch each writer added per tenant and ledger: a retried batch whose
        // first write landed (its commit's answer lost) is recognised and not added again.
        r#"
CREATE TABLE ledger_marks (
    tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
    writer_id TEXT COLLATE "C" NOT NULL,
    ledger TEXT COLLATE "C" NOT NULL,
    batch BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, writer_id, ledger)
);
ALTER TABLE ledger_marks ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_marks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON ledger_marks FOR ALL
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), ''));
"#,
    ),
];

/// What the application role may do, table by table: exactly what the methods of this module
/// run (`migrate` revokes everything else on the schema first). No DELETE but on upstream
/// credentials and policies (a policy's history is append-only: no UPDATE or DELETE on it); no
/// TRUNCATE, REFERENCES or TRIGGER anywhere; USAGE on the two sequences.
pub const APP_GRANTS: &[(&str, &str)] = &[
    ("schema_migrations", "SELECT"),
    ("tenants", "SELECT, INSERT, UPDATE"),
    ("users", "SELECT, INSERT"),
    ("api_keys", "SELECT, INSERT, UPDATE"),
    ("sessions", "SELECT, INSERT, UPDATE"),
    ("changes", "SELECT, INSERT"),
    ("tenant_limits", "SELECT, INSERT, UPDATE"),
    ("tenant_ip_rules", "SELECT, INSERT, UPDATE"),
    ("upstream_credentials", "SELECT, INSERT, UPDATE, DELETE"),
    ("policies", "SELECT, INSERT, UPDATE, DELETE"),
    ("policy_versions", "SELECT, INSERT"),
    ("model_profiles", "SELECT, INSERT, UPDATE, DELETE"),
    ("usage_daily", "SELECT, INSERT, UPDATE"),
    ("model_minutes", "SELECT, INSERT, UPDATE"),
    ("model_latency", "SELECT, INSERT, UPDATE"),
    ("agent_sessions", "SELECT, INSERT, UPDATE, DELETE"),
    ("session_events", "SELECT, INSERT, DELETE"),
    ("session_settings", "SELECT, INSERT, UPDATE"),
    ("ledger_marks", "SELECT, INSERT, UPDATE"),
    ("audit_events", "SELECT, INSERT"),
    ("audit_heads", "SELECT, INSERT, UPDATE"),
    ("audit_checkpoints", "SELECT, INSERT"),
];

/// The schema version this binary works with.
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0)
}

/// Why a transaction runs without a tenant (see the module header). Every system-scope
/// transaction names one, so each use is deliberate and can be found by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemPath {
    Authentication,
    KeyUsage,
    Sessions,
    Operator,
    ProbeLabel,
    ChangeFeed,
    AuditWriter,
    AuditRead,
}

impl SystemPath {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemPath::Authentication => "authentication",
            SystemPath::KeyUsage => "key_usage",
            SystemPath::Sessions => "sessions",
            SystemPath::Operator => "operator",
            SystemPath::ProbeLabel => "probe_label",
            SystemPath::ChangeFeed => "change_feed",
            SystemPath::AuditWriter => "audit_writer",
            SystemPath::AuditRead => "audit_read",
        }
    }
}

/// Opens a transaction that sees exactly one tenant's rows.
async fn tenant_tx<'a>(pool: &'a PgPool, tenant: &str) -> Result<Transaction<'a, Postgres>> {
    let mut tx = pool.begin().await?;
    enter_tenant(&mut tx, tenant).await?;
    Ok(tx)
}

/// Records `batch` as the last one its writer added to `ledger` for `tenant` (the transaction's
/// tenant); false when it already was: that batch's rows were added by an earlier attempt.
async fn claim_batch(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    batch: LedgerBatch<'_>,
    ledger: &str,
) -> Result<bool> {
    let n = sqlx::query(
        "INSERT INTO ledger_marks AS m (tenant_id, writer_id, ledger, batch) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, writer_id, ledger) DO UPDATE SET batch = excluded.batch WHERE m.batch <> excluded.batch",
    )
    .bind(tenant)
    .bind(batch.writer)
    .bind(ledger)
    .bind(batch.id)
    .execute(&mut **tx)
    .await
    .map_err(denied)?
    .rows_affected();
    Ok(n > 0)
}

/// Points an open transaction at `tenant`. Batched writes that span tenants (usage, model
/// metrics) run in one transaction and enter each tenant in turn: row-level security checks every
/// statement against the setting of its moment, and the batch commits whole or not at all, so a
/// retry after a failure never adds one tenant's counters twice.
async fn enter_tenant(tx: &mut Transaction<'_, Postgres>, tenant: &str) -> Result<()> {
    sqlx::query(BEGIN_TENANT).bind(tenant).execute(&mut **tx).await?;
    Ok(())
}

/// Opens a transaction on the system path. Only the methods listed in the module header call
/// this; a tenant-scoped method never does (it has a tenant, so it uses [`tenant_tx`]).
async fn system_tx(pool: &PgPool, why: SystemPath) -> Result<Transaction<'_, Postgres>> {
    // Two round trips, not `BEGIN; SELECT set_config(…)` in one: if that `SELECT` failed, sqlx
    // would hand the connection back to the pool inside the aborted transaction (its transaction
    // depth is still 0, so nothing rolls it back), and every later borrower would fail on it.
    let mut tx = pool.begin().await?;
    sqlx::query(BEGIN_SYSTEM).bind(why.as_str()).execute(&mut *tx).await?;
    Ok(tx)
}

/// Problems setting up or checking the PostgreSQL store. Messages name the fix; none contains
/// a password (URLs are redacted).
#[derive(Debug, thiserror::Error)]
pub enum PgSetupError {
    #[error("cannot connect to PostgreSQL at `{url}`: {reason}")]
    Connect { url: String, reason: String },
    #[error("invalid PostgreSQL URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "the PostgreSQL schema `portcullis` is not set up for this database: run `portcullis migrate` with PORTCULLIS_MIGRATION_DATABASE_URL (the owner role) and PORTCULLIS_DATABASE_URL"
    )]
    NotMigrated,
    #[error(
        "the PostgreSQL schema is at version {found}, this binary needs version {expected}: run `portcullis migrate` with PORTCULLIS_MIGRATION_DATABASE_URL (the owner role)"
    )]
    SchemaBehind { found: i64, expected: i64 },
    #[error("the PostgreSQL schema is at version {found}, newer than this binary's {expected}: upgrade portcullis")]
    SchemaAhead { found: i64, expected: i64 },
    #[error(
        "refusing to start: the database role `{role}` {why}, so row-level security would not hold; connect PORTCULLIS_DATABASE_URL as the plain application role (see `portcullis migrate --help`)"
    )]
    UnsafeRole { role: String, why: String },
    #[error(
        "refusing to start: row-level security is not forced on {tables}; run `portcullis migrate` with the owner role to restore it"
    )]
    RlsOff { tables: String },
    #[error(
        "the application role `{role}` does not exist; the DBA creates it first as a plain login role (CREATE ROLE {role} LOGIN PASSWORD '…'), then `portcullis migrate` grants it what it needs"
    )]
    NoAppRole { role: String },
    #[error(
        "the application role `{role}` must not be the migration (owner) role: give PORTCULLIS_DATABASE_URL and PORTCULLIS_MIGRATION_DATABASE_URL different users"
    )]
    AppIsOwner { role: String },
    #[error("migration: {0}")]
    Migration(String),
    #[error("PostgreSQL: {0}")]
    Database(String),
}

fn db_err(e: sqlx::Error) -> PgSetupError {
    PgSetupError::Database(e.to_string())
}

/// The URL with its password (in the user info or a `password=` parameter) replaced by `***`,
/// for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

fn options(url: &str) -> std::result::Result<PgConnectOptions, PgSetupError> {
    PgConnectOptions::from_str(url)
        .map(|o| o.application_name("portcullis"))
        .map_err(|e| PgSetupError::BadUrl { url: redact_url(url), reason: e.to_string() })
}

/// The role a URL logs in as (the user part, or libpq's default when it has none).
pub fn url_user(url: &str) -> std::result::Result<String, PgSetupError> {
    Ok(options(url)?.get_username().to_owned())
}

/// How long tools (`migrate`, tests) wait for a connection by default.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool for the application role. Connections are made on demand; the first is made now so
/// a wrong URL fails at start, not at the first request.
pub async fn connect(url: &str, max_connections: u32) -> std::result::Result<PgPool, PgSetupError> {
    connect_with_timeout(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
}

/// [`connect`] with the longest wait for a connection. sqlx keeps retrying a refused connection
/// until this passes, so while PostgreSQL is down every request waits exactly this long before
/// its 503: `serve` sets it small (`database.acquire_timeout_ms`).
pub async fn connect_with_timeout(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> std::result::Result<PgPool, PgSetupError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .connect_with(options(url)?)
        .await
        .map_err(|e| PgSetupError::Connect { url: redact_url(url), reason: e.to_string() })
}

/// Double-quotes an identifier for SQL text (role and database names cannot be bound).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions applied by this run (empty: already current).
    pub applied: Vec<i64>,
    pub version: i64,
    pub owner_role: String,
    pub app_role: String,
}

/// Creates or upgrades the schema as the owner role (`owner_url`) and grants `app_role`
/// exactly [`APP_GRANTS`]. One transaction under an advisory lock: instances starting together
/// migrate once, and a failed migration changes nothing.
pub async fn migrate(owner_url: &str, app_role: &str) -> std::result::Result<MigrateReport, PgSetupError> {
    let pool = connect(owner_url, 1).await?;
    let result = migrate_on(&pool, app_role).await;
    pool.close().await;
    result
}

async fn migrate_on(pool: &PgPool, app_role: &str) -> std::result::Result<MigrateReport, PgSetupError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)").bind(LOCK_MIGRATE).execute(&mut *tx).await.map_err(db_err)?;
    let (owner, db): (String, String) = sqlx::query_as("SELECT current_user::text, current_database()::text")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    if owner == app_role {
        return Err(PgSetupError::AppIsOwner { role: app_role.to_owned() });
    }
    let app: Option<(bool, bool)> = sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
        .bind(app_role)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
    match app {
        None => return Err(PgSetupError::NoAppRole { role: app_role.to_owned() }),
        Some((true, _)) => {
            return Err(PgSetupError::UnsafeRole { role: app_role.to_owned(), why: String::from("is a superuser") });
        }
        Some((_, true)) => {
            return Err(PgSetupError::UnsafeRole { role: app_role.to_owned(), why: String::from("has BYPASSRLS") });
        }
        Some(_) => {}
    }
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS portcullis; SET LOCAL search_path = portcullis, pg_temp; \
         CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| PgSetupError::Migration(format!("creating schema `portcullis` as `{owner}`: {e}")))?;
    let done: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(&mut *tx).await.map_err(db_err)?;
    if let Some(newest) = done.iter().max()
        && *newest > schema_version()
    {
        return Err(PgSetupError::SchemaAhead { found: *newest, expected: schema_version() });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| PgSetupError::Migration(format!("version {version}: {e}")))?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, (extract(epoch from now()) * 1000)::bigint)",
        )
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        applied.push(*version);
    }
    // Grants are re-established on every run, from nothing: whatever else the role was given
    // on the schema's objects is taken back.
    let role = quote_ident(app_role);
    let mut grants = vec![
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA portcullis FROM {role}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA portcullis FROM {role}"),
        format!("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA portcullis FROM {role}"),
        format!("GRANT USAGE ON SCHEMA portcullis TO {role}"),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA portcullis TO {role}"),
    ];
    for (table, privileges) in APP_GRANTS {
        grants.push(format!("GRANT {privileges} ON portcullis.{table} TO {role}"));
    }
    // CONNECT is usually granted to PUBLIC already; grant it only when missing, since only the
    // database's owner may grant it.
    let can_connect: bool = sqlx::query_scalar("SELECT has_database_privilege($1, current_database(), 'CONNECT')")
        .bind(app_role)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    if !can_connect {
        grants.push(format!("GRANT CONNECT ON DATABASE {} TO {role}", quote_ident(&db)));
    }
    for g in &grants {
        sqlx::query(g).execute(&mut *tx).await.map_err(|e| PgSetupError::Migration(format!("{g}: {e}")))?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(MigrateReport { applied, version: schema_version(), owner_role: owner, app_role: app_role.to_owned() })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRoleReport {
    pub role: String,
    pub version: i64,
}

/// Refuses to run as a role that could bypass row-level security, on a schema that is not at
/// this binary's version, or whose tables lost their forced RLS. Run by `serve` and every CLI
/// command before anything else touches the database.
pub async fn check_app_role(pool: &PgPool) -> std::result::Result<AppRoleReport, PgSetupError> {
    let (role, superuser, bypass): (String, bool, bool) =
        sqlx::query_as("SELECT rolname::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await
            .map_err(db_err)?;
    if superuser {
        return Err(PgSetupError::UnsafeRole { role, why: String::from("is a superuser") });
    }
    if bypass {
        return Err(PgSetupError::UnsafeRole { role, why: String::from("has BYPASSRLS") });
    }
    // Owning a table (or being a member of its owner's role, which lets one act as the owner)
    // allows turning row-level security off.
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm') AND pg_has_role(current_user, c.relowner, 'MEMBER') \
         ORDER BY 1",
    )
    .bind(SCHEMA)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    if !owned.is_empty() {
        return Err(PgSetupError::UnsafeRole {
            role,
            why: format!("owns (or is a member of the owner of) the tables {}", owned.join(", ")),
        });
    }
    let schema_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(SCHEMA)
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    if !schema_exists {
        return Err(PgSetupError::NotMigrated);
    }
    let found: Option<i64> =
        match sqlx::query_scalar("SELECT max(version) FROM portcullis.schema_migrations").fetch_one(pool).await {
            Ok(v) => v,
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P01" | "42501" | "3F000")) => {
                return Err(PgSetupError::NotMigrated);
            }
            Err(e) => return Err(db_err(e)),
        };
    let found = found.unwrap_or(0);
    let expected = schema_version();
    if found < expected {
        return Err(PgSetupError::SchemaBehind { found, expected });
    }
    if found > expected {
        return Err(PgSetupError::SchemaAhead { found, expected });
    }
    let unforced: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT (c.relrowsecurity AND c.relforcerowsecurity) \
         AND c.relname::text <> ALL($2) ORDER BY 1",
    )
    .bind(SCHEMA)
    .bind(TABLES_WITHOUT_RLS)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    if !unforced.is_empty() {
        return Err(PgSetupError::RlsOff { tables: unforced.join(", ") });
    }
    Ok(AppRoleReport { role, version: found })
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{v}`"))
}

/// Maps a refusal by a row-level security policy (or the key-usage trigger) to a clear error:
/// it means a code path tried to touch rows outside its scope.
fn denied(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("42501")
    {
        return StoreError::Corrupt(format!("refused by row-level security: {}", db.message()));
    }
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("22021")
    {
        return StoreError::Corrupt(String::from("text with a NUL character cannot be stored in PostgreSQL"));
    }
    StoreError::from(e)
}

/// Tenants, users, keys, sessions, limits, IP rules, upstream credentials and the change feed.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Wraps a pool of the application role; call [`check_app_role`] on it first.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// Records a change for the caches of every instance. Call it last in its transaction: the
/// advisory lock it takes is held until commit, which is what keeps seq order = commit order.
async fn record_change(conn: &mut PgConnection, kind: ChangeKind, id: &str, now_ms: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)").bind(LOCK_CHANGES).execute(&mut *conn).await?;
    sqlx::query("INSERT INTO changes (kind, entity_id, at) VALUES ($1, $2, $3)")
        .bind(kind.as_str())
        .bind(id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(denied)?;
    Ok(())
}

fn tenant_from(row: &PgRow) -> Result<Tenant> {
    let id: String = row.try_get("id")?;
    let tier: String = row.try_get("tier")?;
    let status: String = row.try_get("status")?;
    Ok(Tenant {
        id: TenantId::parse(&id).map_err(|_| corrupt("tenant id", &id))?,
        name: row.try_get("name")?,
        tier: Tier::from_str(&tier).map_err(|_| corrupt("tier", &tier))?,
        status: TenantStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
    })
}

fn user_from(row: &PgRow) -> Result<User> {
    let id: String = row.try_get("id")?;
    let tenant: Option<String> = row.try_get("tenant_id")?;
    let role: Option<String> = row.try_get("role")?;
    Ok(User {
        id: UserId::parse(&id).map_err(|_| corrupt("user id", &id))?,
        tenant_id: tenant.map(|t| TenantId::parse(&t).map_err(|_| corrupt("tenant id", &t))).transpose()?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        role: role.map(|r| Role::from_str(&r).map_err(|_| corrupt("role", &r))).transpose()?,
        disabled: row.try_get("disabled")?,
        created_at_ms: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn opt_key_id(v: Option<String>) -> Result<Option<KeyId>> {
    v.map(|s| KeyId::parse(&s).map_err(|_| corrupt("key id", &s))).transpose()
}

fn key_from(row: &PgRow) -> Result<ApiKeyRecord> {
    let id: String = row.try_get("id")?;
    let tenant: String = row.try_get("tenant_id")?;
    let role: String = row.try_get("role")?;
    let scopes: String = row.try_get("scopes")?;
    Ok(ApiKeyRecord {
        id: KeyId::parse(&id).map_err(|_| corrupt("key id", &id))?,
        tenant_id: TenantId::parse(&tenant).map_err(|_| corrupt("tenant id", &tenant))?,
        name: row.try_get("name")?,
        role: Role::from_str(&role).map_err(|_| corrupt("role", &role))?,
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("scopes", &scopes))?,
        prefix: row.try_get("prefix")?,
        hash_hex: row.try_get("key_hash")?,
        created_at_ms: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at_ms: row.try_get("expires_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
        last_used_at_ms: row.try_get("last_used_at")?,
        rotated_from: opt_key_id(row.try_get("rotated_from")?)?,
        rotated_to: opt_key_id(row.try_get("rotated_to")?)?,
    })
}

fn session_from(row: &PgRow) -> Result<SessionRecord> {
    let user: String = row.try_get("user_id")?;
    Ok(SessionRecord {
        id: row.try_get("id")?,
        token_hash_hex: row.try_get("token_hash")?,
        user_id: UserId::parse(&user).map_err(|_| corrupt("user id", &user))?,
        created_at_ms: row.try_get("created_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
    })
}

fn credential_from(row: &PgRow) -> Result<UpstreamCredential> {
    Ok(UpstreamCredential {
        route: row.try_get("route")?,
        header_name: row.try_get("header_name")?,
        nonce_hex: row.try_get("nonce")?,
        ciphertext_hex: row.try_get("ciphertext")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn model_minute_from(row: &PgRow) -> Result<ModelMinute> {
    Ok(ModelMinute {
        tenant_id: row.try_get("tenant_id")?,
        model: row.try_get("model")?,
        minute: row.try_get("minute")?,
        requests: row.try_get("requests")?,
        status_2xx: row.try_get("status_2xx")?,
        status_4xx: row.try_get("status_4xx")?,
        status_5xx: row.try_get("status_5xx")?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        cost_nanos: row.try_get("cost_nanos")?,
    })
}

fn latency_bucket_from(row: &PgRow) -> Result<LatencyBucket> {
    Ok(LatencyBucket {
        tenant_id: row.try_get("tenant_id")?,
        model: row.try_get("model")?,
        minute: row.try_get("minute")?,
        bucket: row.try_get("bucket")?,
        count: row.try_get("count")?,
    })
}

async fn insert_model_minute(c: &mut PgConnection, m: &ModelMinute) -> Result<()> {
    sqlx::query(
        "INSERT INTO model_minutes (tenant_id, model, minute, requests, status_2xx, status_4xx, status_5xx, input_tokens, \
         output_tokens, cost_nanos) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (tenant_id, model, minute) DO UPDATE SET requests = model_minutes.requests + excluded.requests, status_2xx = model_minutes.status_2xx + excluded.status_2xx, status_4xx = model_minutes.status_4xx + excluded.status_4xx, status_5xx = model_minutes.status_5xx + excluded.status_5xx, input_tokens = model_minutes.input_tokens + excluded.input_tokens, output_tokens = model_minutes.output_tokens + excluded.output_tokens, cost_nanos = model_minutes.cost_nanos + excluded.cost_nanos",
    )
    .bind(&m.tenant_id)
    .bind(&m.model)
    .bind(m.minute)
    .bind(m.requests)
    .bind(m.status_2xx)
    .bind(m.status_4xx)
    .bind(m.status_5xx)
    .bind(m.input_tokens)
    .bind(m.output_tokens)
    .bind(m.cost_nanos)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn insert_latency_bucket(c: &mut PgConnection, l: &LatencyBucket) -> Result<()> {
    sqlx::query(
        "INSERT INTO model_latency (tenant_id, model, minute, bucket, count) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, model, minute, bucket) DO UPDATE SET count = model_latency.count + excluded.count",
    )
    .bind(&l.tenant_id)
    .bind(&l.model)
    .bind(l.minute)
    .bind(l.bucket)
    .bind(l.count)
    .execute(&mut *c)
    .await?;
    Ok(())
}

fn model_profile_from(row: &PgRow) -> Result<ModelProfile> {
    let tenant: String = row.try_get("tenant_id")?;
    Ok(ModelProfile {
        id: row.try_get("id")?,
        tenant_id: TenantId::parse(&tenant).map_err(|_| corrupt("tenant id", &tenant))?,
        role: row.try_get("role")?,
        deployment_mode: row.try_get("deployment_mode")?,
        model: row.try_get("model")?,
        base_url: row.try_get("base_url")?,
        temperature: row.try_get("temperature")?,
        input_price_micros_per_1k: row.try_get("input_price_micros_per_1k")?,
        output_price_micros_per_1k: row.try_get("output_price_micros_per_1k")?,
        created_at_ms: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        updated_at_ms: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}

crate::session_row_readers!(PgRow);

fn usage_from(row: &PgRow) -> Result<UsageRow> {
    Ok(UsageRow {
        tenant_id: row.try_get("tenant_id")?,
        day: row.try_get("day")?,
        principal_id: row.try_get("principal_id")?,
        model: row.try_get("model")?,
        route: row.try_get("route")?,
        requests: row.try_get("requests")?,
        status_2xx: row.try_get("status_2xx")?,
        status_4xx: row.try_get("status_4xx")?,
        status_5xx: row.try_get("status_5xx")?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        latency_ms_sum: row.try_get("latency_ms_sum")?,
        cost_nanos: row.try_get("cost_nanos")?,
    })
}

fn profile_conflict(p: &ModelProfile) -> impl Fn(StoreError) -> StoreError + '_ {
    move |e| match e {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("a model profile for role `{}` in mode `{}`", p.role, p.deployment_mode))
        }
        other => other,
    }
}

fn profile_has_nul(p: &ModelProfile) -> bool {
    [&p.id, &p.role, &p.deployment_mode, &p.model, &p.base_url, &p.created_by, &p.updated_by].iter().any(|s| has_nul(s))
}

fn policy_from(row: &PgRow) -> Result<PolicyRecord> {
    let tenant: String = row.try_get("tenant_id")?;
    Ok(PolicyRecord {
        id: row.try_get("id")?,
        tenant_id: TenantId::parse(&tenant).map_err(|_| corrupt("tenant id", &tenant))?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        cedar: row.try_get("cedar")?,
        enabled: row.try_get("enabled")?,
        version: row.try_get("version")?,
        created_at_ms: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        updated_at_ms: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}

fn policy_version_from(row: &PgRow) -> Result<PolicyVersion> {
    Ok(PolicyVersion {
        policy_id: row.try_get("policy_id")?,
        version: row.try_get("version")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        cedar: row.try_get("cedar")?,
        enabled: row.try_get("enabled")?,
        change: row.try_get("change")?,
        changed_at_ms: row.try_get("changed_at")?,
        changed_by: row.try_get("changed_by")?,
    })
}

const POLICY_COLUMNS: &str =
    "id, tenant_id, name, description, cedar, enabled, version, created_at, created_by, updated_at, updated_by";
const POLICY_VERSION_COLUMNS: &str =
    "policy_id, version, name, description, cedar, enabled, change, changed_at, changed_by";

/// The history entry of `p` as it is after a change of kind `change` (`create`, `update`,
/// `delete`) made at `at_ms` by `by`.
fn policy_version(p: &PolicyRecord, version: i64, change: &str, at_ms: i64, by: &str) -> PolicyVersion {
    PolicyVersion {
        policy_id: p.id.clone(),
        version,
        name: p.name.clone(),
        description: p.description.clone(),
        cedar: p.cedar.clone(),
        enabled: p.enabled,
        change: change.to_owned(),
        changed_at_ms: at_ms,
        changed_by: by.to_owned(),
    }
}

/// Appends one entry to a policy's history, in the caller's tenant transaction.
async fn insert_policy_version(conn: &mut PgConnection, tenant: &str, v: &PolicyVersion) -> Result<()> {
    sqlx::query(
        "INSERT INTO policy_versions (tenant_id, policy_id, version, name, description, cedar, enabled, change, changed_at, changed_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(tenant)
    .bind(&v.policy_id)
    .bind(v.version)
    .bind(&v.name)
    .bind(&v.description)
    .bind(&v.cedar)
    .bind(v.enabled)
    .bind(&v.change)
    .bind(v.changed_at_ms)
    .bind(&v.changed_by)
    .execute(conn)
    .await
    .map_err(denied)?;
    Ok(())
}

/// The conflict of a policy write, named after the policy.
fn policy_conflict(name: &str) -> impl Fn(StoreError) -> StoreError + '_ {
    move |e| match e {
        StoreError::Conflict(_) => StoreError::Conflict(format!("policy `{name}`")),
        other => other,
    }
}

const KEY_COLUMNS: &str = "id, tenant_id, name, role, scopes, prefix, key_hash, created_at, created_by, expires_at, revoked_at, last_used_at, rotated_from, rotated_to";

async fn insert_key(conn: &mut PgConnection, k: &ApiKeyRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, name, role, scopes, prefix, key_hash, created_at, created_by, expires_at, revoked_at, last_used_at, rotated_from, rotated_to) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(k.id.as_str())
    .bind(k.tenant_id.as_str())
    .bind(&k.name)
    .bind(k.role.as_str())
    .bind(serde_json::to_string(&k.scopes).unwrap_or_else(|_| String::from("[]")))
    .bind(&k.prefix)
    .bind(&k.hash_hex)
    .bind(k.created_at_ms)
    .bind(&k.created_by)
    .bind(k.expires_at_ms)
    .bind(k.revoked_at_ms)
    .bind(k.last_used_at_ms)
    .bind(k.rotated_from.as_ref().map(|v| v.as_str()))
    .bind(k.rotated_to.as_ref().map(|v| v.as_str()))
    .execute(conn)
    .await
    .map_err(denied)?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_tenant(&self, t: &Tenant) -> Result<()> {
        // The new tenant's own transaction: the row passes `WITH CHECK (id = tenant)`.
        let mut tx = tenant_tx(&self.pool, t.id.as_str()).await?;
        sqlx::query(
            "INSERT INTO tenants (id, name, tier, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.id.as_str())
        .bind(&t.name)
        .bind(t.tier.as_str())
        .bind(t.status.as_str())
        .bind(t.created_at_ms)
        .bind(t.updated_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        let mut tx = tenant_tx(&self.pool, id.as_str()).await?;
        let row = sqlx::query("SELECT * FROM tenants WHERE id = $1").bind(id.as_str()).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        row.as_ref().map(tenant_from).transpose()
    }

    async fn list_tenants(&self, after: Option<&str>, limit: u32) -> Result<Vec<Tenant>> {
        let mut tx = system_tx(&self.pool, SystemPath::Operator).await?;
        let rows = sqlx::query("SELECT * FROM tenants WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(cursor(after))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(tenant_from).collect()
    }

    async fn set_tenant_status(&self, id: &TenantId, status: TenantStatus, now_ms: i64) -> Result<bool> {
        let mut tx = tenant_tx(&self.pool, id.as_str()).await?;
        let n = sqlx::query("UPDATE tenants SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(now_ms)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(denied)?
            .rows_affected();
        if n > 0 {
            record_change(&mut tx, ChangeKind::Tenant, id.as_str(), now_ms).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn create_user(&self, u: &User) -> Result<()> {
        let mut tx = match &u.tenant_id {
            Some(t) => tenant_tx(&self.pool, t.as_str()).await?,
            None => system_tx(&self.pool, SystemPath::Operator).await?,
        };
        sqlx::query(
            "INSERT INTO users (id, tenant_id, email, password_hash, role, disabled, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(u.id.as_str())
        .bind(u.tenant_id.as_ref().map(|t| t.as_str()))
        .bind(&u.email)
        .bind(&u.password_hash)
        .bind(u.role.map(|r| r.as_str()))
        .bind(u.disabled)
        .bind(u.created_at_ms)
        .bind(&u.created_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| match denied(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("user `{}`", u.email)),
            other => other,
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<User>> {
        if has_nul(email) {
            return Ok(None);
        }
        let mut tx = system_tx(&self.pool, SystemPath::Authentication).await?;
        let row = sqlx::query("SELECT * FROM users WHERE email = $1").bind(email).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn get_user_unscoped(&self, id: &UserId) -> Result<Option<User>> {
        let mut tx = system_tx(&self.pool, SystemPath::Authentication).await?;
        let row = sqlx::query("SELECT * FROM users WHERE id = $1").bind(id.as_str()).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn get_user(&self, scope: &TenantScope, id: &UserId) -> Result<Option<User>> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let row = sqlx::query("SELECT * FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(user_from).transpose()
    }

    async fn list_users(&self, scope: &TenantScope, after: Option<&str>, limit: u32) -> Result<Vec<User>> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query("SELECT * FROM users WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3")
            .bind(tenant)
            .bind(cursor(after))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(user_from).collect()
    }

    async fn list_operators(&self) -> Result<Vec<User>> {
        let mut tx = system_tx(&self.pool, SystemPath::Operator).await?;
        let rows = sqlx::query("SELECT * FROM users WHERE tenant_id IS NULL ORDER BY id").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(user_from).collect()
    }

    async fn count_operators(&self) -> Result<u64> {
        let mut tx = system_tx(&self.pool, SystemPath::Operator).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE tenant_id IS NULL").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn create_key(&self, scope: &TenantScope, key: &ApiKeyRecord) -> Result<()> {
        if key.tenant_id != *scope.tenant_id() {
            return Err(StoreError::Corrupt(String::from("key tenant differs from scope")));
        }
        let mut tx = tenant_tx(&self.pool, scope.tenant_id().as_str()).await?;
        insert_key(&mut tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_key_by_hash(&self, hash_hex: &str) -> Result<Option<ApiKeyRecord>> {
        if has_nul(hash_hex) {
            return Ok(None);
        }
        let mut tx = system_tx(&self.pool, SystemPath::Authentication).await?;
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"))
            .bind(hash_hex)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(key_from).transpose()
    }

    async fn get_key(&self, scope: &TenantScope, id: &KeyId) -> Result<Option<ApiKeyRecord>> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(key_from).transpose()
    }

    async fn list_keys(&self, scope: &TenantScope, after: Option<&str>, limit: u32) -> Result<Vec<ApiKeyRecord>> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(tenant)
        .bind(cursor(after))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(key_from).collect()
    }

    async fn revoke_key(&self, scope: &TenantScope, id: &KeyId, now_ms: i64) -> Result<bool> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let n =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL")
                .bind(now_ms)
                .bind(tenant)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(denied)?
                .rows_affected();
        if n > 0 {
            record_change(&mut tx, ChangeKind::Key, id.as_str(), now_ms).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn rotate_key(
        &self,
        scope: &TenantScope,
        old: &KeyId,
        new: &ApiKeyRecord,
        old_valid_until_ms: i64,
    ) -> Result<bool> {
        if new.tenant_id != *scope.tenant_id() {
            return Err(StoreError::Corrupt(String::from("key tenant differs from scope")));
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        // The old key keeps the earlier of its own expiry and the end of the grace period.
        let n = sqlx::query(
            "UPDATE api_keys SET rotated_to = $1, expires_at = CASE WHEN expires_at IS NULL OR expires_at > $2 THEN $2 ELSE expires_at END \
             WHERE tenant_id = $3 AND id = $4 AND revoked_at IS NULL AND rotated_to IS NULL",
        )
        .bind(new.id.as_str())
        .bind(old_valid_until_ms)
        .bind(tenant)
        .bind(old.as_str())
        .execute(&mut *tx)
        .await
        .map_err(denied)?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        insert_key(&mut tx, new).await?;
        record_change(&mut tx, ChangeKind::Key, old.as_str(), new.created_at_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn touch_keys(&self, used: &[(KeyId, i64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = used.iter().map(|(id, _)| id.as_str()).collect();
        let ats: Vec<i64> = used.iter().map(|(_, at)| *at).collect();
        let mut tx = system_tx(&self.pool, SystemPath::KeyUsage).await?;
        // One statement for the whole batch; keys of every tenant, so the system path.
        sqlx::query(
            "UPDATE api_keys AS k SET last_used_at = u.at FROM unnest($1::text[], $2::bigint[]) AS u(id, at) \
             WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
        )
        .bind(&ids)
        .bind(&ats)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        tx.commit().await?;
        Ok(())
    }

    async fn key_owner(&self, id: &KeyId) -> Result<Option<TenantId>> {
        let mut tx = system_tx(&self.pool, SystemPath::ProbeLabel).await?;
        let t: Option<String> = sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(t.and_then(|t| TenantId::parse(&t).ok()))
    }

    async fn user_owner(&self, id: &UserId) -> Result<Option<Option<TenantId>>> {
        let mut tx = system_tx(&self.pool, SystemPath::ProbeLabel).await?;
        let t: Option<Option<String>> = sqlx::query_scalar("SELECT tenant_id FROM users WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(t.map(|t| t.and_then(|t| TenantId::parse(&t).ok())))
    }

    async fn create_session(&self, s: &SessionRecord) -> Result<()> {
        let mut tx = system_tx(&self.pool, SystemPath::Sessions).await?;
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.id)
        .bind(&s.token_hash_hex)
        .bind(s.user_id.as_str())
        .bind(s.created_at_ms)
        .bind(s.expires_at_ms)
        .bind(s.revoked_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_session(&self, token_hash_hex: &str) -> Result<Option<SessionRecord>> {
        if has_nul(token_hash_hex) {
            return Ok(None);
        }
        let mut tx = system_tx(&self.pool, SystemPath::Authentication).await?;
        let row = sqlx::query("SELECT * FROM sessions WHERE token_hash = $1")
            .bind(token_hash_hex)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(session_from).transpose()
    }

    async fn revoke_session(&self, id: &str, now_ms: i64) -> Result<bool> {
        if has_nul(id) {
            return Ok(false);
        }
        let mut tx = system_tx(&self.pool, SystemPath::Sessions).await?;
        let n = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(denied)?
            .rows_affected();
        if n > 0 {
            record_change(&mut tx, ChangeKind::Session, id, now_ms).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn get_limits(&self, tenant: &TenantId) -> Result<LimitOverrides> {
        let mut tx = tenant_tx(&self.pool, tenant.as_str()).await?;
        let row = sqlx::query(
            "SELECT rate_per_minute, requests_per_day, concurrency, budget_daily_nanos, budget_monthly_nanos FROM tenant_limits WHERE tenant_id = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(LimitOverrides::default()) };
        let num = |name: &str| -> Result<Option<i64>> { Ok(row.try_get::<Option<i64>, _>(name)?) };
        Ok(LimitOverrides {
            rate_per_minute: num("rate_per_minute")?.and_then(|v| u32::try_from(v).ok()),
            requests_per_day: num("requests_per_day")?.and_then(|v| u64::try_from(v).ok()),
            concurrency: num("concurrency")?.and_then(|v| u32::try_from(v).ok()),
            budget_usd_per_day: num("budget_daily_nanos")?.map(portcullis_core::limits::nanos_to_usd),
            budget_usd_per_month: num("budget_monthly_nanos")?.map(portcullis_core::limits::nanos_to_usd),
        })
    }

    async fn set_limits(&self, tenant: &TenantId, limits: &LimitOverrides, now_ms: i64) -> Result<()> {
        let mut tx = tenant_tx(&self.pool, tenant.as_str()).await?;
        sqlx::query(
            "INSERT INTO tenant_limits (tenant_id, rate_per_minute, requests_per_day, concurrency, budget_daily_nanos, budget_monthly_nanos, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant_id) DO UPDATE SET rate_per_minute = excluded.rate_per_minute, \
             requests_per_day = excluded.requests_per_day, concurrency = excluded.concurrency, \
             budget_daily_nanos = excluded.budget_daily_nanos, budget_monthly_nanos = excluded.budget_monthly_nanos, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant.as_str())
        .bind(limits.rate_per_minute.map(i64::from))
        .bind(limits.requests_per_day.and_then(|v| i64::try_from(v).ok()))
        .bind(limits.concurrency.map(i64::from))
        .bind(limits.budget_usd_per_day.and_then(portcullis_core::limits::usd_to_nanos))
        .bind(limits.budget_usd_per_month.and_then(portcullis_core::limits::usd_to_nanos))
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        record_change(&mut tx, ChangeKind::Limits, tenant.as_str(), now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_ip_rules(&self, tenant: &TenantId) -> Result<IpRules> {
        let mut tx = tenant_tx(&self.pool, tenant.as_str()).await?;
        let text: Option<String> = sqlx::query_scalar("SELECT rules FROM tenant_ip_rules WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        match text {
            None => Ok(IpRules::default()),
            Some(t) => serde_json::from_str(&t).map_err(|_| corrupt("ip rules", &t)),
        }
    }

    async fn set_ip_rules(&self, tenant: &TenantId, rules: &IpRules, now_ms: i64) -> Result<()> {
        let text = serde_json::to_string(rules).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = tenant_tx(&self.pool, tenant.as_str()).await?;
        sqlx::query(
            "INSERT INTO tenant_ip_rules (tenant_id, rules, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET rules = excluded.rules, updated_at = excluded.updated_at",
        )
        .bind(tenant.as_str())
        .bind(text)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        record_change(&mut tx, ChangeKind::IpRules, tenant.as_str(), now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_upstream_credential(&self, scope: &TenantScope, c: &UpstreamCredential) -> Result<()> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        sqlx::query(
            "INSERT INTO upstream_credentials (tenant_id, route, header_name, nonce, ciphertext, created_at, updated_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, route) DO UPDATE SET header_name = excluded.header_name, \
             nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at, created_by = excluded.created_by",
        )
        .bind(tenant)
        .bind(&c.route)
        .bind(&c.header_name)
        .bind(&c.nonce_hex)
        .bind(&c.ciphertext_hex)
        .bind(c.created_at_ms)
        .bind(c.updated_at_ms)
        .bind(&c.created_by)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        let entity = format!("{tenant}{}", c.route);
        record_change(&mut tx, ChangeKind::UpstreamCredential, &entity, c.updated_at_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_upstream_credential(&self, scope: &TenantScope, route: &str) -> Result<Option<UpstreamCredential>> {
        if has_nul(route) {
            return Ok(None);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let row = sqlx::query("SELECT * FROM upstream_credentials WHERE tenant_id = $1 AND route = $2")
            .bind(tenant)
            .bind(route)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(credential_from).transpose()
    }

    async fn list_upstream_credentials(&self, scope: &TenantScope) -> Result<Vec<UpstreamCredential>> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query("SELECT * FROM upstream_credentials WHERE tenant_id = $1 ORDER BY route")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(credential_from).collect()
    }

    async fn delete_upstream_credential(&self, scope: &TenantScope, route: &str, now_ms: i64) -> Result<bool> {
        if has_nul(route) {
            return Ok(false);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let n = sqlx::query("DELETE FROM upstream_credentials WHERE tenant_id = $1 AND route = $2")
            .bind(tenant)
            .bind(route)
            .execute(&mut *tx)
            .await
            .map_err(denied)?
            .rows_affected();
        if n > 0 {
            let entity = format!("{tenant}{route}");
            record_change(&mut tx, ChangeKind::UpstreamCredential, &entity, now_ms).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn list_policies(&self, scope: &TenantScope) -> Result<Vec<PolicyRecord>> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query(&format!("SELECT {POLICY_COLUMNS} FROM policies WHERE tenant_id = $1 ORDER BY name"))
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(policy_from).collect()
    }

    async fn get_policy(&self, scope: &TenantScope, id: &str) -> Result<Option<PolicyRecord>> {
        if has_nul(id) {
            return Ok(None);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let row = sqlx::query(&format!("SELECT {POLICY_COLUMNS} FROM policies WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(policy_from).transpose()
    }

    async fn create_policy(&self, scope: &TenantScope, p: &PolicyRecord) -> Result<()> {
        if p.tenant_id != *scope.tenant_id() {
            return Err(StoreError::Corrupt(String::from("policy tenant does not match scope")));
        }
        if p.version != 1 {
            return Err(StoreError::Corrupt(format!("a new policy has version 1, not {}", p.version)));
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        sqlx::query(
            "INSERT INTO policies (id, tenant_id, name, description, cedar, enabled, version, created_at, created_by, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&p.id)
        .bind(tenant)
        .bind(&p.name)
        .bind(&p.description)
        .bind(&p.cedar)
        .bind(p.enabled)
        .bind(p.version)
        .bind(p.created_at_ms)
        .bind(&p.created_by)
        .bind(p.updated_at_ms)
        .bind(&p.updated_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| policy_conflict(&p.name)(denied(e)))?;
        let v = policy_version(p, p.version, "create", p.created_at_ms, &p.created_by);
        insert_policy_version(&mut tx, tenant, &v).await.map_err(policy_conflict(&p.name))?;
        record_change(&mut tx, ChangeKind::Policies, tenant, p.created_at_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_policy(&self, scope: &TenantScope, p: &PolicyRecord) -> Result<bool> {
        // No stored version precedes i64::MIN (versions start at 1); no stored id holds a NUL.
        let Some(previous) = p.version.checked_sub(1) else { return Ok(false) };
        if has_nul(&p.id) {
            return Ok(false);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let n = sqlx::query(
            "UPDATE policies SET name = $1, description = $2, cedar = $3, enabled = $4, version = $5, updated_at = $6, updated_by = $7 \
             WHERE tenant_id = $8 AND id = $9 AND version = $10",
        )
        .bind(&p.name)
        .bind(&p.description)
        .bind(&p.cedar)
        .bind(p.enabled)
        .bind(p.version)
        .bind(p.updated_at_ms)
        .bind(&p.updated_by)
        .bind(tenant)
        .bind(&p.id)
        .bind(previous)
        .execute(&mut *tx)
        .await
        .map_err(|e| policy_conflict(&p.name)(denied(e)))?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        let v = policy_version(p, p.version, "update", p.updated_at_ms, &p.updated_by);
        insert_policy_version(&mut tx, tenant, &v).await?;
        record_change(&mut tx, ChangeKind::Policies, tenant, p.updated_at_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_policy(&self, scope: &TenantScope, id: &str, by: &str, now_ms: i64) -> Result<bool> {
        if has_nul(id) {
            return Ok(false);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let row =
            sqlx::query(&format!("DELETE FROM policies WHERE tenant_id = $1 AND id = $2 RETURNING {POLICY_COLUMNS}"))
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(denied)?;
        let Some(last) = row.as_ref().map(policy_from).transpose()? else { return Ok(false) };
        // The history's last entry: the document as it was, one version after it.
        let version =
            last.version.checked_add(1).ok_or_else(|| corrupt("policy version", &last.version.to_string()))?;
        let v = policy_version(&last, version, "delete", now_ms, by);
        insert_policy_version(&mut tx, tenant, &v).await?;
        record_change(&mut tx, ChangeKind::Policies, tenant, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn policy_versions(&self, scope: &TenantScope, id: &str) -> Result<Vec<PolicyVersion>> {
        if has_nul(id) {
            return Ok(Vec::new());
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query(&format!(
            "SELECT {POLICY_VERSION_COLUMNS} FROM policy_versions WHERE tenant_id = $1 AND policy_id = $2 ORDER BY version"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(policy_version_from).collect()
    }

    async fn list_model_profiles(&self, scope: &TenantScope) -> Result<Vec<ModelProfile>> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query("SELECT * FROM model_profiles WHERE tenant_id = $1 ORDER BY role, deployment_mode")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(model_profile_from).collect()
    }

    async fn get_model_profile(&self, scope: &TenantScope, id: &str) -> Result<Option<ModelProfile>> {
        if has_nul(id) {
            return Ok(None);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let row = sqlx::query("SELECT * FROM model_profiles WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(model_profile_from).transpose()
    }

    async fn create_model_profile(&self, scope: &TenantScope, p: &ModelProfile) -> Result<()> {
        if p.tenant_id != *scope.tenant_id() {
            return Err(StoreError::Corrupt(String::from("model profile tenant does not match scope")));
        }
        if profile_has_nul(p) {
            return Err(StoreError::Corrupt(String::from("text with a NUL character cannot be stored in PostgreSQL")));
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        sqlx::query(
            "INSERT INTO model_profiles (id, tenant_id, role, deployment_mode, model, base_url, temperature, \
             input_price_micros_per_1k, output_price_micros_per_1k, created_at, created_by, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&p.id)
        .bind(tenant)
        .bind(&p.role)
        .bind(&p.deployment_mode)
        .bind(&p.model)
        .bind(&p.base_url)
        .bind(p.temperature)
        .bind(p.input_price_micros_per_1k)
        .bind(p.output_price_micros_per_1k)
        .bind(p.created_at_ms)
        .bind(&p.created_by)
        .bind(p.updated_at_ms)
        .bind(&p.updated_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| profile_conflict(p)(StoreError::from(e)))?;
        record_change(&mut tx, ChangeKind::ModelProfiles, tenant, p.created_at_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_model_profile(&self, scope: &TenantScope, p: &ModelProfile) -> Result<bool> {
        if profile_has_nul(p) {
            return Err(StoreError::Corrupt(String::from("text with a NUL character cannot be stored in PostgreSQL")));
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let n = sqlx::query(
            "UPDATE model_profiles SET role = $1, deployment_mode = $2, model = $3, base_url = $4, temperature = $5, \
             input_price_micros_per_1k = $6, output_price_micros_per_1k = $7, updated_at = $8, updated_by = $9 \
             WHERE tenant_id = $10 AND id = $11",
        )
        .bind(&p.role)
        .bind(&p.deployment_mode)
        .bind(&p.model)
        .bind(&p.base_url)
        .bind(p.temperature)
        .bind(p.input_price_micros_per_1k)
        .bind(p.output_price_micros_per_1k)
        .bind(p.updated_at_ms)
        .bind(&p.updated_by)
        .bind(tenant)
        .bind(&p.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| profile_conflict(p)(StoreError::from(e)))?
        .rows_affected();
        if n > 0 {
            record_change(&mut tx, ChangeKind::ModelProfiles, tenant, p.updated_at_ms).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn delete_model_profile(&self, scope: &TenantScope, id: &str, now_ms: i64) -> Result<bool> {
        if has_nul(id) {
            return Ok(false);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let n = sqlx::query("DELETE FROM model_profiles WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(denied)?
            .rows_affected();
        if n > 0 {
            record_change(&mut tx, ChangeKind::ModelProfiles, tenant, now_ms).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn add_usage(&self, batch: LedgerBatch<'_>, rows: &[UsageRow]) -> Result<()> {
        let mut tenants: Vec<&str> = rows.iter().map(|r| r.tenant_id.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut tx = self.pool.begin().await?;
        for tenant in tenants {
            enter_tenant(&mut tx, tenant).await?;
            if !claim_batch(&mut tx, tenant, batch, "usage").await? {
                continue;
            }
            for r in rows.iter().filter(|r| r.tenant_id == tenant) {
                if [&r.principal_id, &r.model, &r.route].iter().any(|s| has_nul(s)) {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO usage_daily (tenant_id, day, principal_id, model, route, requests, status_2xx, status_4xx, \
                     status_5xx, input_tokens, output_tokens, latency_ms_sum, cost_nanos) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (tenant_id, day, principal_id, model, route) DO UPDATE SET \
                     requests = usage_daily.requests + excluded.requests, status_2xx = usage_daily.status_2xx + excluded.status_2xx, \
                     status_4xx = usage_daily.status_4xx + excluded.status_4xx, status_5xx = usage_daily.status_5xx + excluded.status_5xx, \
                     input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
                     output_tokens = usage_daily.output_tokens + excluded.output_tokens, \
                     latency_ms_sum = usage_daily.latency_ms_sum + excluded.latency_ms_sum, \
                     cost_nanos = usage_daily.cost_nanos + excluded.cost_nanos",
                )
                .bind(&r.tenant_id)
                .bind(&r.day)
                .bind(&r.principal_id)
                .bind(&r.model)
                .bind(&r.route)
                .bind(r.requests)
                .bind(r.status_2xx)
                .bind(r.status_4xx)
                .bind(r.status_5xx)
                .bind(r.input_tokens)
                .bind(r.output_tokens)
                .bind(r.latency_ms_sum)
                .bind(r.cost_nanos)
                .execute(&mut *tx)
                .await
                .map_err(denied)?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage(&self, scope: &TenantScope, from_day: &str, to_day: &str) -> Result<Vec<UsageRow>> {
        if has_nul(from_day) || has_nul(to_day) {
            return Ok(Vec::new());
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query(
            "SELECT * FROM usage_daily WHERE tenant_id = $1 AND day >= $2 AND day <= $3 ORDER BY day, principal_id, model, route",
        )
        .bind(tenant)
        .bind(from_day)
        .bind(to_day)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(usage_from).collect()
    }

    async fn add_model_metrics(
        &self,
        batch: LedgerBatch<'_>,
        minutes: &[ModelMinute],
        latency: &[LatencyBucket],
    ) -> Result<()> {
        let mut tenants: Vec<&str> =
            minutes.iter().map(|m| m.tenant_id.as_str()).chain(latency.iter().map(|l| l.tenant_id.as_str())).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut tx = self.pool.begin().await?;
        for tenant in tenants {
            enter_tenant(&mut tx, tenant).await?;
            if !claim_batch(&mut tx, tenant, batch, "model").await? {
                continue;
            }
            for m in minutes.iter().filter(|m| m.tenant_id == tenant && !has_nul(&m.model)) {
                insert_model_minute(&mut tx, m).await?;
            }
            for l in latency.iter().filter(|l| l.tenant_id == tenant && !has_nul(&l.model)) {
                insert_latency_bucket(&mut tx, l).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn model_metrics(
        &self,
        scope: &TenantScope,
        model: &str,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<(Vec<ModelMinute>, Vec<LatencyBucket>)> {
        if has_nul(model) {
            return Ok((Vec::new(), Vec::new()));
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let minutes = sqlx::query(
            "SELECT * FROM model_minutes WHERE tenant_id = $1 AND model = $2 AND minute >= $3 AND minute < $4 ORDER BY minute",
        )
        .bind(tenant)
        .bind(model)
        .bind(from_minute)
        .bind(to_minute)
        .fetch_all(&mut *tx)
        .await?;
        let latency = sqlx::query(
            "SELECT * FROM model_latency WHERE tenant_id = $1 AND model = $2 AND minute >= $3 AND minute < $4 ORDER BY minute, bucket",
        )
        .bind(tenant)
        .bind(model)
        .bind(from_minute)
        .bind(to_minute)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            minutes.iter().map(model_minute_from).collect::<Result<_>>()?,
            latency.iter().map(latency_bucket_from).collect::<Result<_>>()?,
        ))
    }

    async fn append_session_events(&self, events: &[SessionEvent]) -> Result<()> {
        let mut tenants: Vec<&str> = events.iter().map(|e| e.tenant_id.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        for tenant in tenants {
            let mut tx = tenant_tx(&self.pool, tenant).await?;
            for e in events.iter().filter(|e| e.tenant_id == tenant) {
                let texts = [
                    Some(&e.id),
                    Some(&e.session_id),
                    e.message.as_ref(),
                    e.tool_name.as_ref(),
                    e.principal_id.as_ref(),
                    e.request_id.as_ref(),
                    e.model.as_ref(),
                ];
                if texts.iter().flatten().any(|t| has_nul(t)) {
                    continue;
                }
                let tool_args = e.tool_args.as_ref().map(serde_json::Value::to_string);
                let decision = e.decision.as_ref().map(|d| serde_json::to_string(d).unwrap_or_default());
                let inserted = sqlx::query(
                    "INSERT INTO session_events (id, tenant_id, session_id, kind, message, tool_name, tool_args, metadata, \
                     created_at, principal_id, request_id, decision, model, input_tokens, output_tokens, cost_nanos) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&e.id)
                .bind(&e.tenant_id)
                .bind(&e.session_id)
                .bind(e.kind.as_str())
                .bind(&e.message)
                .bind(&e.tool_name)
                .bind(&tool_args)
                .bind(e.metadata.to_string())
                .bind(e.created_at_ms)
                .bind(&e.principal_id)
                .bind(&e.request_id)
                .bind(&decision)
                .bind(&e.model)
                .bind(e.input_tokens)
                .bind(e.output_tokens)
                .bind(e.cost_nanos)
                .execute(&mut *tx)
                .await
                .map_err(denied)?
                .rows_affected();
                if inserted == 0 {
                    continue;
                }
                let c = session_counts(e);
                sqlx::query(
                    "INSERT INTO agent_sessions AS s (tenant_id, session_id, first_event_ms, last_event_ms, total_events, user_messages, \
                     assistant_messages, tool_calls, denied, input_tokens, output_tokens, cost_nanos, last_principal_id, last_model) \
                     VALUES ($1, $2, $3, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (tenant_id, session_id) DO UPDATE SET \
                     first_event_ms = LEAST(s.first_event_ms, excluded.first_event_ms), \
                     last_principal_id = CASE WHEN excluded.last_event_ms >= s.last_event_ms AND excluded.last_principal_id IS NOT NULL \
                        THEN excluded.last_principal_id ELSE s.last_principal_id END, \
                     last_model = CASE WHEN excluded.last_event_ms >= s.last_event_ms AND excluded.last_model IS NOT NULL \
                        THEN excluded.last_model ELSE s.last_model END, \
                     last_event_ms = GREATEST(s.last_event_ms, excluded.last_event_ms), \
                     total_events = s.total_events + 1, user_messages = s.user_messages + excluded.user_messages, \
                     assistant_messages = s.assistant_messages + excluded.assistant_messages, \
                     tool_calls = s.tool_calls + excluded.tool_calls, denied = s.denied + excluded.denied, \
                     input_tokens = s.input_tokens + excluded.input_tokens, output_tokens = s.output_tokens + excluded.output_tokens, \
                     cost_nanos = s.cost_nanos + excluded.cost_nanos",
                )
                .bind(&e.tenant_id)
                .bind(&e.session_id)
                .bind(e.created_at_ms)
                .bind(c[0])
                .bind(c[1])
                .bind(c[2])
                .bind(c[3])
                .bind(e.input_tokens)
                .bind(e.output_tokens)
                .bind(e.cost_nanos)
                .bind(&e.principal_id)
                .bind(&e.model)
                .execute(&mut *tx)
                .await
                .map_err(denied)?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    async fn list_sessions(&self, scope: &TenantScope, f: &SessionFilter) -> Result<Vec<SessionSummary>> {
        if f.contains.as_deref().is_some_and(has_nul) || f.after.as_ref().is_some_and(|(_, id)| has_nul(id)) {
            return Ok(Vec::new());
        }
        let key = match f.sort {
            SessionSort::Recent => "last_event_ms",
            SessionSort::Cost => "cost_nanos",
        };
        let (after_key, after_id) = match &f.after {
            Some((k, id)) => (Some(*k), Some(id.as_str())),
            None => (None, None),
        };
        let sql = format!(
            "SELECT * FROM agent_sessions WHERE tenant_id = $1 \
             AND ($2::BIGINT IS NULL OR last_event_ms >= $2) AND ($3::BIGINT IS NULL OR first_event_ms < $3) \
             AND ($4::TEXT IS NULL OR strpos(session_id, $4) > 0) \
             AND ($5::BIGINT IS NULL OR ({key}, session_id) < ($5, $6::TEXT)) \
             ORDER BY {key} DESC, session_id DESC LIMIT $7"
        );
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(f.since_ms)
            .bind(f.until_ms)
            .bind(&f.contains)
            .bind(after_key)
            .bind(after_id)
            .bind(i64::from(f.limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(session_summary_from).collect()
    }

    async fn get_session(&self, scope: &TenantScope, session_id: &str) -> Result<Option<SessionSummary>> {
        if has_nul(session_id) {
            return Ok(None);
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let row = sqlx::query("SELECT * FROM agent_sessions WHERE tenant_id = $1 AND session_id = $2")
            .bind(tenant)
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(session_summary_from).transpose()
    }

    async fn session_events(
        &self,
        scope: &TenantScope,
        session_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionEvent>> {
        if has_nul(session_id) || after.is_some_and(has_nul) {
            return Ok(Vec::new());
        }
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        let rows = sqlx::query(
            "SELECT e.* FROM session_events e WHERE e.tenant_id = $1 AND e.session_id = $2 \
             AND ($3::TEXT IS NULL OR (e.created_at, e.id) > \
                  (SELECT a.created_at, a.id FROM session_events a WHERE a.id = $3 AND a.tenant_id = $1)) \
             ORDER BY e.created_at, e.id LIMIT $4",
        )
        .bind(tenant)
        .bind(session_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(session_event_from).collect()
    }

    async fn purge_sessions(&self, scope: &TenantScope, before_ms: i64) -> Result<u64> {
        let tenant = scope.tenant_id().as_str();
        let mut tx = tenant_tx(&self.pool, tenant).await?;
        sqlx::query(
            "DELETE FROM session_events WHERE tenant_id = $1 AND session_id IN \
             (SELECT session_id FROM agent_sessions WHERE tenant_id = $1 AND last_event_ms < $2)",
        )
        .bind(tenant)
        .bind(before_ms)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        let gone = sqlx::query("DELETE FROM agent_sessions WHERE tenant_id = $1 AND last_event_ms < $2")
            .bind(tenant)
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(denied)?
            .rows_affected();
        tx.commit().await?;
        Ok(gone)
    }

    async fn session_settings(&self, tenant: &TenantId) -> Result<SessionSettings> {
        let mut tx = tenant_tx(&self.pool, tenant.as_str()).await?;
        let row = sqlx::query("SELECT capture, redact_patterns FROM session_settings WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref()
            .map(|r| session_settings_from(r.try_get("capture")?, r.try_get("redact_patterns")?))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    async fn set_session_settings(&self, tenant: &TenantId, st: &SessionSettings, now_ms: i64) -> Result<()> {
        let patterns = serde_json::to_string(&st.redact_patterns).unwrap_or_else(|_| String::from("[]"));
        let mut tx = tenant_tx(&self.pool, tenant.as_str()).await?;
        sqlx::query(
            "INSERT INTO session_settings (tenant_id, capture, redact_patterns, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id) DO UPDATE SET capture = excluded.capture, redact_patterns = excluded.redact_patterns, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant.as_str())
        .bind(st.capture.as_str())
        .bind(&patterns)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        record_change(&mut tx, ChangeKind::SessionSettings, tenant.as_str(), now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn changes_since(&self, seq: i64, limit: u32) -> Result<Vec<Change>> {
        let mut tx = system_tx(&self.pool, SystemPath::ChangeFeed).await?;
        let rows = sqlx::query("SELECT seq, kind, entity_id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: String = r.try_get("kind")?;
            out.push(Change {
                seq: r.try_get("seq")?,
                kind: ChangeKind::parse(&kind).ok_or_else(|| corrupt("change kind", &kind))?,
                entity_id: r.try_get("entity_id")?,
            });
        }
        Ok(out)
    }

    async fn latest_change_seq(&self) -> Result<i64> {
        let mut tx = system_tx(&self.pool, SystemPath::ChangeFeed).await?;
        let n: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(n.unwrap_or(0))
    }
}

/// The audit log in the shared database: one chain per writer (instance), all in one table.
#[derive(Clone)]
pub struct PgAuditStore {
    pool: PgPool,
    /// Set when a commit failed: its outcome is unknown (the commit may have happened and only
    /// the answer been lost with the connection, e.g. when PostgreSQL stopped at that moment).
    commit_in_doubt: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The true head after a commit in doubt turned out to have happened, until the exclusive
    /// writer's own idea of its head has caught up with it.
    adopted_head: std::sync::Arc<std::sync::Mutex<Option<ChainHead>>>,
}

impl PgAuditStore {
    /// Wraps a pool of the application role; call [`check_app_role`] on it (or on another pool
    /// of the same URL) first.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, commit_in_doubt: Default::default(), adopted_head: Default::default() }
    }

    /// Tells the store that its last commit's outcome is unknown, as a lost answer would (tests
    /// of the recovery below; nothing else has a reason to call it).
    #[doc(hidden)]
    pub fn mark_commit_in_doubt_for_tests(&self) {
        self.commit_in_doubt.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Where an exclusive writer that believes its head is `known` really continues. Normally
    /// `known`. After a commit in doubt, the head is read back: if that batch did commit, its
    /// records are written to the sink now (the writer took its JSONL lines back when it saw the
    /// error) and the chain continues after them, instead of colliding with them for ever.
    async fn exclusive_start(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        writer_id: &str,
        known: &ChainHead,
        sink: &dyn ChainSink,
    ) -> std::result::Result<(u64, String), AppendError> {
        use std::sync::atomic::Ordering;
        let base = {
            let mut adopted = self.adopted_head.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match adopted.as_ref() {
                Some(h) if h.seq > known.seq => h.clone(),
                _ => {
                    *adopted = None;
                    known.clone()
                }
            }
        };
        if !self.commit_in_doubt.load(Ordering::Acquire) {
            return Ok((base.seq, base.hash));
        }
        let head = sqlx::query("SELECT writer_id, seq, hash FROM audit_heads WHERE writer_id = $1")
            .bind(writer_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::from)?;
        let Some(db) = head.as_ref().map(head_from).transpose()?.filter(|db| db.seq > base.seq) else {
            self.commit_in_doubt.store(false, Ordering::Release);
            return Ok((base.seq, base.hash));
        };
        let rows = sqlx::query("SELECT * FROM audit_events WHERE writer_id = $1 AND seq > $2 ORDER BY seq")
            .bind(writer_id)
            .bind(i64::try_from(base.seq).unwrap_or(i64::MAX))
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::from)?;
        let committed: Vec<AuditRecord> =
            rows.iter().map(|r| record_from(r).map(|(_, rec)| rec)).collect::<Result<_>>()?;
        // Already durable in the database: written to the files for good, never undone.
        sink.write(&committed).map_err(AppendError::Sink)?;
        tracing::warn!(
            writer_id,
            from_seq = base.seq + 1,
            to_seq = db.seq,
            "an audit batch reported as failed had committed; its records are kept and the chain continues after them"
        );
        *self.adopted_head.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(db.clone());
        self.commit_in_doubt.store(false, Ordering::Release);
        Ok((db.seq, db.hash))
    }
}

/// PostgreSQL text cannot contain NUL. A record with one (say a resource id from a path with
/// `%00`) is stored with every text column escaped — `\` as `\\`, NUL as `\0` — and its row's
/// `nul_escaped` set, so it reads back byte for byte and its hash still verifies. Other rows are
/// stored as they are.
fn nul_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\0', "\\0")
}

/// Text that PostgreSQL must store as it is (ids, names): a NUL cannot be stored.
fn nul_free(s: &str) -> Result<&str> {
    if s.contains('\0') {
        return Err(StoreError::Corrupt(String::from("text with a NUL character cannot be stored in PostgreSQL")));
    }
    Ok(s)
}

/// A NUL-bearing value matches no stored text (none can hold one): lookups by it find nothing.
fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// A paging cursor cut at its first NUL: no stored id holds one, so `id > cut` selects exactly
/// the ids that `id > cursor` would.
fn cursor(after: Option<&str>) -> &str {
    let c = after.unwrap_or("");
    c.split('\0').next().unwrap_or("")
}

fn nul_unescape(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('0') => out.push('\0'),
            _ => return Err(corrupt("escaped audit text", s)),
        }
    }
    Ok(out)
}

fn record_has_nul(r: &AuditRecord) -> bool {
    let opt = |v: &Option<String>| v.as_deref().is_some_and(|v| v.contains('\0'));
    [&r.prev_hash, &r.hash, &r.timestamp, &r.action].iter().any(|v| v.contains('\0'))
        || [&r.tenant_id, &r.user_id, &r.resource_type, &r.resource_id, &r.reason, &r.ip_address, &r.user_agent, &r.request_id]
            .iter()
            .any(|v| opt(v))
        // serde_json writes NUL as `\u0000`, but the check costs nothing.
        || metadata_text(&r.metadata).contains('\0')
}

fn record_from(row: &PgRow) -> Result<(i64, AuditRecord)> {
    let escaped: bool = row.try_get("nul_escaped")?;
    let text = |name: &str| -> Result<String> {
        let v: String = row.try_get(name)?;
        if escaped { nul_unescape(&v) } else { Ok(v) }
    };
    let opt_text = |name: &str| -> Result<Option<String>> {
        let v: Option<String> = row.try_get(name)?;
        match v {
            Some(v) if escaped => nul_unescape(&v).map(Some),
            other => Ok(other),
        }
    };
    let result = text("result")?;
    let metadata = text("metadata")?;
    let seq: i64 = row.try_get("seq")?;
    Ok((
        row.try_get("id")?,
        AuditRecord {
            writer_id: row.try_get("writer_id")?,
            seq: u64::try_from(seq).map_err(|_| corrupt("seq", &seq.to_string()))?,
            prev_hash: text("prev_hash")?,
            timestamp: text("timestamp")?,
            tenant_id: opt_text("tenant_id")?,
            user_id: opt_text("user_id")?,
            action: text("action")?,
            resource_type: opt_text("resource_type")?,
            resource_id: opt_text("resource_id")?,
            result: AuditResult::parse(&result).ok_or_else(|| corrupt("result", &result))?,
            reason: opt_text("reason")?,
            metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata", &metadata))?,
            ip_address: opt_text("ip_address")?,
            user_agent: opt_text("user_agent")?,
            request_id: opt_text("request_id")?,
            hash: text("hash")?,
        },
    ))
}

/// Inserts chained records (events of any tenants) and moves their writer's head, in the
/// caller's system-path transaction. One statement for the whole batch: the columns travel as
/// arrays and `unnest` turns them back into rows, in chain order (so `id` order = seq order).
async fn insert_records(conn: &mut PgConnection, records: &[AuditRecord]) -> Result<()> {
    let Some(last) = records.last() else { return Ok(()) };
    let mut writer = Vec::with_capacity(records.len());
    let mut seq = Vec::with_capacity(records.len());
    let mut prev = Vec::with_capacity(records.len());
    let mut hash = Vec::with_capacity(records.len());
    let mut ts_ms = Vec::with_capacity(records.len());
    let mut timestamp = Vec::with_capacity(records.len());
    let mut tenant = Vec::with_capacity(records.len());
    let mut user = Vec::with_capacity(records.len());
    let mut action = Vec::with_capacity(records.len());
    let mut rtype = Vec::with_capacity(records.len());
    let mut rid = Vec::with_capacity(records.len());
    let mut result = Vec::with_capacity(records.len());
    let mut reason = Vec::with_capacity(records.len());
    let mut metadata = Vec::with_capacity(records.len());
    let mut ip = Vec::with_capacity(records.len());
    let mut agent = Vec::with_capacity(records.len());
    let mut request = Vec::with_capacity(records.len());
    let mut escaped = Vec::with_capacity(records.len());
    for r in records {
        let esc = record_has_nul(r);
        let t = |v: &str| if esc { nul_escape(v) } else { v.to_owned() };
        let o = |v: &Option<String>| v.as_deref().map(&t);
        escaped.push(esc);
        // The chain's name is never escaped (it keys the chain and its uniqueness).
        writer.push(nul_free(&r.writer_id)?.to_owned());
        seq.push(i64::try_from(r.seq).unwrap_or(i64::MAX));
        prev.push(t(&r.prev_hash));
        hash.push(t(&r.hash));
        ts_ms.push(portcullis_core::timefmt::parse_rfc3339_ms(&r.timestamp).unwrap_or(0));
        timestamp.push(t(&r.timestamp));
        tenant.push(o(&r.tenant_id));
        user.push(o(&r.user_id));
        action.push(t(&r.action));
        rtype.push(o(&r.resource_type));
        rid.push(o(&r.resource_id));
        result.push(t(r.result.as_str()));
        reason.push(o(&r.reason));
        metadata.push(t(&metadata_text(&r.metadata)));
        ip.push(o(&r.ip_address));
        agent.push(o(&r.user_agent));
        request.push(o(&r.request_id));
    }
    sqlx::query(
        "INSERT INTO audit_events (writer_id, seq, prev_hash, hash, ts_ms, timestamp, tenant_id, user_id, action, resource_type, resource_id, result, reason, metadata, ip_address, user_agent, request_id, nul_escaped) \
         SELECT writer_id, seq, prev_hash, hash, ts_ms, timestamp, tenant_id, user_id, action, resource_type, resource_id, result, reason, metadata, ip_address, user_agent, request_id, nul_escaped \
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], \
                     $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::boolean[]) \
              WITH ORDINALITY AS r(writer_id, seq, prev_hash, hash, ts_ms, timestamp, tenant_id, user_id, action, resource_type, resource_id, result, reason, metadata, ip_address, user_agent, request_id, nul_escaped, ord) \
         ORDER BY ord",
    )
    .bind(&writer)
    .bind(&seq)
    .bind(&prev)
    .bind(&hash)
    .bind(&ts_ms)
    .bind(&timestamp)
    .bind(&tenant)
    .bind(&user)
    .bind(&action)
    .bind(&rtype)
    .bind(&rid)
    .bind(&result)
    .bind(&reason)
    .bind(&metadata)
    .bind(&ip)
    .bind(&agent)
    .bind(&request)
    .bind(&escaped)
    .execute(&mut *conn)
    .await
    .map_err(denied)?;
    sqlx::query(
        "INSERT INTO audit_heads (writer_id, seq, hash) VALUES ($1, $2, $3) \
         ON CONFLICT (writer_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .bind(nul_free(&last.writer_id)?)
    .bind(i64::try_from(last.seq).unwrap_or(i64::MAX))
    .bind(&last.hash)
    .execute(&mut *conn)
    .await
    .map_err(denied)?;
    Ok(())
}

fn head_from(row: &PgRow) -> Result<ChainHead> {
    let seq: i64 = row.try_get("seq")?;
    Ok(ChainHead {
        writer_id: row.try_get("writer_id")?,
        seq: u64::try_from(seq).unwrap_or(0),
        hash: row.try_get("hash")?,
    })
}

#[async_trait]
impl AuditStore for PgAuditStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn append(
        &self,
        writer_id: &str,
        known_head: Option<&ChainHead>,
        events: Vec<AuditEvent>,
        sink: &dyn ChainSink,
    ) -> std::result::Result<Vec<AuditRecord>, AppendError> {
        let mut tx = system_tx(&self.pool, SystemPath::AuditWriter).await?;
        let (mut seq, mut prev) = match known_head {
            Some(h) => self.exclusive_start(&mut tx, writer_id, h, sink).await?,
            None => {
                // Writers that may run concurrently on one chain (CLI invocations on several
                // machines) serialise on the chain's lock until commit, so each reads the true
                // head, even before the chain's first head row exists.
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(LOCK_AUDIT_CHAIN)
                    .bind(writer_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                let head = sqlx::query("SELECT writer_id, seq, hash FROM audit_heads WHERE writer_id = $1")
                    .bind(writer_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                match head.as_ref().map(head_from).transpose()? {
                    Some(h) => (h.seq, h.hash),
                    None => (0, String::from(GENESIS_HASH)),
                }
            }
        };
        let mut records = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let r = AuditRecord::chain(writer_id, seq, &prev, e);
            prev.clone_from(&r.hash);
            records.push(r);
        }
        insert_records(&mut tx, &records).await?;
        let undo = sink.write(&records).map_err(AppendError::Sink)?;
        if let Err(e) = tx.commit().await {
            sink.undo(undo);
            self.commit_in_doubt.store(true, std::sync::atomic::Ordering::Release);
            return Err(AppendError::Store(e.into()));
        }
        Ok(records)
    }

    async fn import(&self, records: &[AuditRecord]) -> Result<()> {
        let mut tx = system_tx(&self.pool, SystemPath::AuditWriter).await?;
        insert_records(&mut tx, records).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn head(&self, writer_id: &str) -> Result<Option<ChainHead>> {
        if has_nul(writer_id) {
            return Ok(None);
        }
        let mut tx = system_tx(&self.pool, SystemPath::AuditRead).await?;
        let row = sqlx::query("SELECT writer_id, seq, hash FROM audit_heads WHERE writer_id = $1")
            .bind(writer_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(head_from).transpose()
    }

    async fn heads(&self) -> Result<Vec<ChainHead>> {
        let mut tx = system_tx(&self.pool, SystemPath::AuditRead).await?;
        let rows =
            sqlx::query("SELECT writer_id, seq, hash FROM audit_heads ORDER BY writer_id").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(head_from).collect()
    }

    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        let mut tx = system_tx(&self.pool, SystemPath::AuditWriter).await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (writer_id, seq, hash, timestamp, signature, public_key) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (writer_id, seq) DO NOTHING",
        )
        .bind(&cp.writer_id)
        .bind(i64::try_from(cp.seq).unwrap_or(i64::MAX))
        .bind(&cp.hash)
        .bind(&cp.timestamp)
        .bind(&cp.signature)
        .bind(&cp.public_key)
        .execute(&mut *tx)
        .await
        .map_err(denied)?;
        tx.commit().await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let mut tx = system_tx(&self.pool, SystemPath::AuditRead).await?;
        let rows = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY writer_id, seq").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq")?;
                Ok(Checkpoint {
                    writer_id: r.try_get("writer_id")?,
                    seq: u64::try_from(seq).unwrap_or(0),
                    hash: r.try_get("hash")?,
                    timestamp: r.try_get("timestamp")?,
                    signature: r.try_get("signature")?,
                    public_key: r.try_get("public_key")?,
                })
            })
            .collect()
    }

    async fn chain(&self, writer_id: &str) -> Result<Vec<AuditRecord>> {
        if has_nul(writer_id) {
            return Ok(Vec::new());
        }
        let mut tx = system_tx(&self.pool, SystemPath::AuditRead).await?;
        let rows = sqlx::query("SELECT * FROM audit_events WHERE writer_id = $1 ORDER BY seq")
            .bind(writer_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| record_from(r).map(|(_, rec)| rec)).collect()
    }

    async fn query(&self, f: &AuditFilter) -> Result<Vec<(i64, AuditRecord)>> {
        // A tenant's query runs in that tenant's transaction, so RLS holds it to that tenant's
        // rows even if the filter below were wrong; only the operators' all-tenant read is a
        // system-path read.
        let mut tx = match &f.tenant_id {
            // A tenant id with a NUL names no tenant; the empty tenant sees nothing.
            Some(t) => tenant_tx(&self.pool, if t.contains('\0') { "" } else { t }).await?,
            None => system_tx(&self.pool, SystemPath::AuditRead).await?,
        };
        // Each text filter is bound twice: as stored in escaped rows ($n) and as stored in plain
        // rows ($n+1, NULL when the value holds a NUL, which no plain row can).
        let esc = |v: &Option<String>| v.as_deref().map(nul_escape);
        let plain = |v: &Option<String>| v.clone().filter(|v| !v.contains('\0'));
        let rows = sqlx::query(
            "SELECT * FROM audit_events WHERE \
             ($1::text IS NULL OR (CASE WHEN nul_escaped THEN tenant_id = $1 ELSE tenant_id = $9::text END)) \
             AND ($2::text IS NULL OR (CASE WHEN nul_escaped THEN user_id = $2 ELSE user_id = $10::text END)) \
             AND ($3::text IS NULL OR (CASE WHEN nul_escaped THEN action = $3 ELSE action = $11::text END)) \
             AND ($4::text IS NULL OR (CASE WHEN nul_escaped THEN result = $4 ELSE result = $12::text END)) \
             AND ($5::bigint IS NULL OR ts_ms >= $5) AND ($6::bigint IS NULL OR ts_ms < $6) \
             AND ($7::bigint IS NULL OR id < $7) ORDER BY id DESC LIMIT $8",
        )
        .bind(esc(&f.tenant_id))
        .bind(esc(&f.user_id))
        .bind(esc(&f.action))
        .bind(esc(&f.result))
        .bind(f.from_ms)
        .bind(f.to_ms)
        .bind(f.before_id)
        .bind(i64::from(f.limit))
        .bind(plain(&f.tenant_id))
        .bind(plain(&f.user_id))
        .bind(plain(&f.action))
        .bind(plain(&f.result))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(record_from).collect()
    }
}

#[cfg(test)]
mod tests;
