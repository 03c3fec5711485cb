//! Configuration: defaults, then the TOML file (`--config`), then `PORTCULLIS_*` environment
//! variables (nested keys with `__`, e.g. `PORTCULLIS_AUDIT__FSYNC=true`). Every default is safe.
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use portcullis_core::{Tier, TierLimits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    /// `postgres://…` of the application role: selects the scale-out store (PostgreSQL with
    /// row-level security) for `serve` and every CLI command; absent = SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// `postgres://…` of the role that owns the schema: used only to migrate (`portcullis
    /// migrate`, and at start when set).
    pub migration_database_url: Option<String>,
    /// `redis://…`: limits shared by every instance, in Redis (see `[redis]`); absent = each
    /// process limits in memory.
    pub redis_url: Option<String>,
    pub redis: RedisSection,
    pub database: DatabaseSection,
    /// 64 hex characters; otherwise `<data_dir>/secrets/key-pepper` (generated on first start,
    /// embedded shape only: the scale-out shape requires these three secrets to be given).
    pub key_pepper: Option<String>,
    pub key_pepper_file: Option<PathBuf>,
    pub audit_signing_key: Option<String>,
    pub audit_signing_key_file: Option<PathBuf>,
    pub master_key: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub log: LogConfig,
    pub audit: AuditSection,
    pub auth: AuthSection,
    pub http: HttpSection,
    pub limits: LimitsSection,
    pub ip: IpSection,
    pub metrics: MetricsSection,
    pub sessions: SessionsSection,
    pub tiers: BTreeMap<String, TierLimits>,
    pub routes: Vec<portcullis_http::proxy::RouteConfig>,
}

/// Agent sessions.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsSection {
    /// Sessions without activity for this many days are deleted with their events (checked
    /// every hour); 0 keeps them forever.
    pub retention_days: u32,
}

impl Default for SessionsSection {
    fn default() -> Self {
        Self { retention_days: 90 }
    }
}

/// The shared limiter (used when `redis_url` is set).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// Prefix of every key: the same on every instance of one deployment, different between
    /// deployments (or test runs) sharing a Redis.
    pub key_prefix: String,
    /// Longest wait for Redis per call (decision, lease renewal or release, probe).
    pub timeout_ms: u64,
    /// While Redis is unreachable or slower than the timeout: `fail_closed` (503) or `local`
    /// (each instance limits in process).
    pub fail_mode: String,
    /// While degraded: how often to ask Redis whether it is back.
    pub probe_interval_ms: u64,
    /// Concurrency lease: a crashed instance's slots come back after this long.
    pub lease_secs: u64,
    /// `local` mode: each instance enforces every limit divided by this (set it to the number of
    /// instances to keep the deployment near its limits while Redis is away).
    pub fallback_divisor: u32,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            key_prefix: String::from("portcullis"),
            timeout_ms: 100,
            fail_mode: String::from("fail_closed"),
            probe_interval_ms: 250,
            lease_secs: 30,
            fallback_divisor: 1,
        }
    }
}

/// The PostgreSQL pools (used when `database_url` is set).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// Longest wait for a pooled connection, including making a new one. While PostgreSQL is
    /// down every request that needs it waits this long, then gets 503.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self { acquire_timeout_ms: 500 }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Bearer token a Prometheus scraper may present on `/metrics` (operators always may).
    pub bearer_token: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpSection {
    /// CIDR networks or addresses; when non-empty, only these may connect.
    pub allow: Vec<String>,
    /// Always refused (403), checked before anything else.
    pub block: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed (e.g. your load balancer). Default: none.
    pub trusted_proxies: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Per API key / user / JWT subject, per minute (the gateway default of 100).
    pub principal_per_minute: u32,
    /// Whole-gateway requests per second; absent = unlimited.
    pub global_per_second: Option<u32>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self { principal_per_minute: 100, global_per_second: None }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (default) or `text`.
    pub format: String,
    /// tracing filter, e.g. `info` or `portcullis=debug`.
    pub level: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// fsync every batch: acknowledged events survive power loss, not only a killed process.
    pub fsync: bool,
    /// Chain name of this instance; default: `<data_dir>/node-id` (generated once).
    pub writer_id: Option<String>,
    pub checkpoint_every: u64,
    pub checkpoint_interval_secs: u64,
    pub max_batch: usize,
    /// When `serve` answers a request whose event it wrote: `file` (once the event is in this
    /// instance's JSONL file; the database is the query index, filled in the background and
    /// caught up from the files after a crash) or `database` (once the database has committed
    /// it). Default: `file` on the embedded shape, `database` on PostgreSQL, where an instance's
    /// disk may not outlive it. The CLI always waits for the database.
    pub acknowledge: Option<AuditAcknowledge>,
}

/// `audit.acknowledge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditAcknowledge {
    File,
    Database,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub session_ttl_secs: u64,
    /// How often caches poll the change feed: the bound on how long a revoked key, a suspended
    /// tenant or a logged-out session changed by another process keeps working here.
    pub cache_refresh_ms: u64,
    pub key_rotation_grace_secs: u64,
    pub login: LoginSection,
    pub failed_credentials: FailedCredentialsSection,
    pub jwt: Option<portcullis_guard::JwtConfig>,
}

/// Failed API keys / tokens tolerated per client IP and per API-key prefix within `window_secs`;
/// past that, that IP or prefix gets 429 for `backoff_secs` (doubling while it keeps failing).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedCredentialsSection {
    pub max_per_ip: u32,
    pub max_per_key_prefix: u32,
    pub window_secs: u64,
    pub backoff_secs: u64,
}

impl Default for FailedCredentialsSection {
    fn default() -> Self {
        Self { max_per_ip: 600, max_per_key_prefix: 100, window_secs: 60, backoff_secs: 30 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginSection {
    pub max_failures_per_account: u32,
    pub max_failures_per_ip: u32,
    pub window_secs: u64,
    pub base_backoff_secs: u64,
    pub max_backoff_secs: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub cors: portcullis_http::CorsSettings,
    pub max_body_bytes: usize,
    pub request_timeout_secs: u64,
    pub header_read_timeout_secs: u64,
    pub max_header_bytes: usize,
    /// Edge threads serving connections (each with its own runtime and audit lane);
    /// 0 = one per available core.
    pub workers: usize,
    /// Mark the UI session cookie `Secure` always (it is already when a proxy in front sends
    /// `X-Forwarded-Proto: https`). Set it when TLS ends in front of Portcullis.
    pub secure_cookies: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: String::from("127.0.0.1:8080"),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            migration_database_url: None,
            redis_url: None,
            redis: RedisSection::default(),
            database: DatabaseSection::default(),
            key_pepper: None,
            key_pepper_file: None,
            audit_signing_key: None,
            audit_signing_key_file: None,
            master_key: None,
            master_key_file: None,
            log: LogConfig::default(),
            audit: AuditSection::default(),
            auth: AuthSection::default(),
            http: HttpSection::default(),
            limits: LimitsSection::default(),
            ip: IpSection::default(),
            metrics: MetricsSection::default(),
            sessions: SessionsSection::default(),
            routes: Vec::new(),
            tiers: Tier::ALL.iter().map(|t| (t.as_str().to_owned(), TierLimits::default_for(*t))).collect(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: String::from("json"), level: String::from("info") }
    }
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            fsync: false,
            writer_id: None,
            checkpoint_every: 1000,
            checkpoint_interval_secs: 60,
            max_batch: 4096,
            acknowledge: None,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            session_ttl_secs: 12 * 3600,
            cache_refresh_ms: 1000,
            key_rotation_grace_secs: 3600,
            login: LoginSection::default(),
            failed_credentials: FailedCredentialsSection::default(),
            jwt: None,
        }
    }
}

impl Default for LoginSection {
    fn default() -> Self {
        let p = portcullis_guard::LoginPolicy::default();
        Self {
            max_failures_per_account: p.max_failures_per_account,
            max_failures_per_ip: p.max_failures_per_ip,
            window_secs: p.window.as_secs(),
            base_backoff_secs: p.base_backoff.as_secs(),
            max_backoff_secs: p.max_backoff.as_secs(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            cors: Default::default(),
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            max_header_bytes: 32 * 1024,
            workers: 0,
            secure_cookies: false,
        }
    }
}

/// Top-level keys that `PORTCULLIS_*` variables may set; other `PORTCULLIS_*` variables in the
/// environment are not configuration and are ignored.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "migration_database_url",
    "redis_url",
    "redis",
    "database",
    "key_pepper",
    "key_pepper_file",
    "audit_signing_key",
    "audit_signing_key_file",
    "master_key",
    "master_key_file",
    "log",
    "audit",
    "auth",
    "http",
    "tiers",
    "limits",
    "ip",
    "metrics",
    "sessions",
    "routes",
];

pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = file {
        if !f.exists() {
            anyhow::bail!("config file {} does not exist", f.display());
        }
        fig = fig.merge(Toml::file_exact(f));
    }
    fig = fig.merge(Env::prefixed("PORTCULLIS_").split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        // `PORTCULLIS_LOG` itself is the log filter (like `RUST_LOG`), not the `[log]` section.
        ENV_KEYS.iter().any(|n| (k == *n && k != "log") || k.starts_with(&format!("{n}.")))
    }));
    let cfg: Config = fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    for name in cfg.tiers.keys() {
        name.parse::<Tier>().map_err(|e| anyhow::anyhow!("invalid configuration: [tiers.{name}]: {e}"))?;
    }
    if cfg.metrics.bearer_token.as_ref().is_some_and(|t| t.len() < 16) {
        anyhow::bail!("invalid configuration: metrics.bearer_token must have at least 16 characters");
    }
    if cfg.limits.principal_per_minute == 0 || cfg.limits.global_per_second == Some(0) {
        anyhow::bail!("invalid configuration: limits must be positive");
    }
    portcullis_core::iplist::IpPolicy::compile(&portcullis_core::iplist::IpRules {
        allow: cfg.ip.allow.clone(),
        block: cfg.ip.block.clone(),
    })
    .map_err(|e| anyhow::anyhow!("invalid configuration: [ip]: {e}"))?;
    for p in &cfg.ip.trusted_proxies {
        portcullis_core::iplist::parse_net(p)
            .map_err(|e| anyhow::anyhow!("invalid configuration: ip.trusted_proxies: {e}"))?;
    }
    cfg.http.cors.layer().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    for r in &cfg.routes {
        r.validate().map_err(|e| anyhow::anyhow!("invalid configuration: [[routes]] `{}`: {e}", r.prefix))?;
    }
    if cfg.auth.cache_refresh_ms == 0 || cfg.auth.cache_refresh_ms > 60_000 {
        anyhow::bail!("invalid configuration: auth.cache_refresh_ms must be between 1 and 60000");
    }
    if cfg.audit.checkpoint_every == 0 || cfg.audit.max_batch == 0 || cfg.audit.checkpoint_interval_secs == 0 {
        anyhow::bail!(
            "invalid configuration: audit.checkpoint_every, audit.checkpoint_interval_secs and audit.max_batch must be positive"
        );
    }
    let r = &cfg.redis;
    r.fail_mode
        .parse::<portcullis_limiter::shared::FailMode>()
        .map_err(|e| anyhow::anyhow!("invalid configuration: redis.fail_mode: {e}"))?;
    if r.key_prefix.is_empty()
        || r.key_prefix.len() > 100
        || r.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        anyhow::bail!("invalid configuration: redis.key_prefix must be 1 to 100 characters without spaces");
    }
    if !(1..=10_000).contains(&r.timeout_ms) {
        anyhow::bail!("invalid configuration: redis.timeout_ms must be between 1 and 10000");
    }
    if !(10..=60_000).contains(&r.probe_interval_ms) {
        anyhow::bail!("invalid configuration: redis.probe_interval_ms must be between 10 and 60000");
    }
    // A lease is renewed every third of its length; each renewal may take up to the timeout.
    if r.lease_secs == 0 || r.lease_secs > 3600 || r.lease_secs.saturating_mul(1000) < r.timeout_ms.saturating_mul(6) {
        anyhow::bail!(
            "invalid configuration: redis.lease_secs must be between 1 and 3600 and at least six times redis.timeout_ms"
        );
    }
    if r.fallback_divisor == 0 {
        anyhow::bail!("invalid configuration: redis.fallback_divisor must be at least 1");
    }
    if !(1..=60_000).contains(&cfg.database.acquire_timeout_ms) {
        anyhow::bail!("invalid configuration: database.acquire_timeout_ms must be between 1 and 60000");
    }
    Ok(cfg)
}
