//! Opening what `serve` and the CLI share: data dir, secrets, stores, the audit writer, the guard,
//! on the embedded store (SQLite in the data dir) or the scale-out one (PostgreSQL).
use crate::config::Config;
use anyhow::{Context, bail};
use portcullis_audit::{Acknowledge, AuditConfig, AuditLog};
use portcullis_core::Tier;
use portcullis_guard::{CredentialThrottle, Guard, GuardConfig, JwtConfig, LimitsConfig, LoginPolicy, SystemClock};
use portcullis_limiter::Limiter;
use portcullis_limiter::redis::{RedisSettings, redact_url};
use portcullis_limiter::shared::{FailMode, SharedLimiter, SharedSettings};
use portcullis_store::postgres as pg;
use portcullis_store::sqlite::{SqliteAuditStore, SqliteStore};
use portcullis_store::{AuditStore, Store};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub struct Opened {
    pub cfg: Config,
    pub guard: Arc<Guard>,
    pub audit_reader: Arc<dyn AuditStore>,
    pub signing_key: [u8; 32],
}

fn parse_hex32(what: &str, text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(text.trim()).map_err(|_| anyhow::anyhow!("{what} must be 64 hex characters"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| anyhow::anyhow!("{what} must be 64 hex characters (32 bytes)"))
}

/// A 32-byte secret from (in order) the inline value, the named file, or `<data_dir>/secrets/NAME`,
/// generated there with mode 0600 on first use.
pub fn secret(
    cfg: &Config,
    env_name: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
    name: &str,
) -> anyhow::Result<[u8; 32]> {
    if let Some(v) = secret_given(env_name, inline, file)? {
        return Ok(v);
    }
    let dir = cfg.data_dir.join("secrets");
    let path = dir.join(name);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return parse_hex32(&path.display().to_string(), &text);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = portcullis_guard::random_bytes::<32>().map_err(anyhow::Error::msg)?;
    write_private(&path, hex::encode(bytes).as_bytes())?;
    Ok(bytes)
}

fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    Ok(())
}

/// The chain id of the `serve` process whose own state is in `instance_dir` (the data dir on the
/// embedded shape, its instance directory in the scale-out one): `audit.writer_id`, else
/// `instance_dir/node-id`, made on first start.
pub fn writer_id_for_serve(cfg: &Config, instance_dir: &Path) -> anyhow::Result<String> {
    if let Some(w) = &cfg.audit.writer_id {
        return Ok(w.clone());
    }
    let path = instance_dir.join("node-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_owned());
    }
    let id = format!("node-{}", hex::encode(portcullis_guard::random_bytes::<4>().map_err(anyhow::Error::msg)?));
    write_private(&path, id.as_bytes())?;
    Ok(id)
}

/// Where the audit writer opens its own store, on its own runtime (pools are bound to the
/// runtime that made them).
type OpenAuditStore =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<Arc<dyn AuditStore>, String>>>> + Send + 'static>;

/// The secrets every instance of a scale-out deployment must share. None is generated: an
/// instance that made its own pepper could not verify keys made by the others.
fn shared_secrets(cfg: &Config) -> anyhow::Result<([u8; 32], [u8; 32], [u8; 32])> {
    let wanted: [(&str, &Option<String>, &Option<PathBuf>); 3] = [
        ("PORTCULLIS_KEY_PEPPER", &cfg.key_pepper, &cfg.key_pepper_file),
        ("PORTCULLIS_MASTER_KEY", &cfg.master_key, &cfg.master_key_file),
        ("PORTCULLIS_AUDIT_SIGNING_KEY", &cfg.audit_signing_key, &cfg.audit_signing_key_file),
    ];
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(_, inline, file)| inline.is_none() && file.is_none())
        .map(|(name, _, _)| format!("{name} (or {name}_FILE)"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the scale-out shape (PORTCULLIS_DATABASE_URL) needs the secrets that every instance shares, and these are missing: {}; each is 32 bytes written as 64 hex characters, the same on every instance",
            missing.join(", ")
        );
    }
    let mut out = [[0u8; 32]; 3];
    for (slot, (name, inline, file)) in out.iter_mut().zip(wanted.iter()) {
        *slot = secret_given(name, inline, file)?.ok_or_else(|| anyhow::anyhow!("{name} is missing"))?;
    }
    let [pepper, master, signing] = out;
    Ok((pepper, master, signing))
}

/// A secret from the inline value or the named file, if either is configured.
fn secret_given(env_name: &str, inline: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Option<[u8; 32]>> {
    if let Some(v) = inline {
        return parse_hex32(env_name, v).map(Some);
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).with_context(|| format!("{env_name}_FILE {}", f.display()))?;
        return parse_hex32(&format!("{env_name}_FILE {}", f.display()), &text).map(Some);
    }
    Ok(None)
}

/// Pool sizes per instance: the main store serves requests; the audit writer needs one
/// connection at a time (group commit) plus one for checkpoints; the reader serves audit queries.
const PG_STORE_CONNECTIONS: u32 = 10;
const PG_AUDIT_WRITER_CONNECTIONS: u32 = 2;
const PG_AUDIT_READER_CONNECTIONS: u32 = 3;

/// The scale-out store: migrates first when given the owner's URL, then refuses an application
/// role that could bypass row-level security or a schema at another version.
async fn open_postgres(
    cfg: &Config,
    url: &str,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn AuditStore>, OpenAuditStore)> {
    let acquire = Duration::from_millis(cfg.database.acquire_timeout_ms);
    if let Some(owner_url) = &cfg.migration_database_url {
        let app_role = pg::url_user(url)?;
        let report = pg::migrate(owner_url, &app_role).await?;
        if !report.applied.is_empty() {
            tracing::info!(applied = ?report.applied, version = report.version, "PostgreSQL schema migrated");
        }
    }
    let pool = pg::connect_with_timeout(url, PG_STORE_CONNECTIONS, acquire).await?;
    let checked = pg::check_app_role(&pool).await?;
    tracing::info!(
        database = %pg::redact_url(url),
        role = %checked.role,
        schema_version = checked.version,
        "store: PostgreSQL with row-level security"
    );
    let store: Arc<dyn Store> = Arc::new(pg::PgStore::new(pool));
    let reader: Arc<dyn AuditStore> =
        Arc::new(pg::PgAuditStore::new(pg::connect_with_timeout(url, PG_AUDIT_READER_CONNECTIONS, acquire).await?));
    let url = url.to_owned();
    let open_writer: OpenAuditStore = Box::new(move || {
        Box::pin(async move {
            let pool = pg::connect_with_timeout(&url, PG_AUDIT_WRITER_CONNECTIONS, acquire)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(pg::PgAuditStore::new(pool)) as Arc<dyn AuditStore>)
        })
    });
    Ok((store, reader, open_writer))
}

async fn open_sqlite(cfg: &Config) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn AuditStore>, OpenAuditStore)> {
    let main_db = cfg.data_dir.join("portcullis.db");
    let audit_db = cfg.data_dir.join("audit.db");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&main_db).await.with_context(|| format!("opening store {}", main_db.display()))?);
    let reader: Arc<dyn AuditStore> = Arc::new(
        SqliteAuditStore::open(&audit_db, cfg.audit.fsync)
            .await
            .with_context(|| format!("opening audit database {}", audit_db.display()))?,
    );
    let fsync = cfg.audit.fsync;
    let open_writer: OpenAuditStore = Box::new(move || {
        Box::pin(async move {
            let s = SqliteAuditStore::open(&audit_db, fsync).await.map_err(|e| e.to_string())?;
            Ok(Arc::new(s) as Arc<dyn AuditStore>)
        })
    });
    Ok((store, reader, open_writer))
}

/// The limiter: shared in Redis when `redis_url` is set (with its fail mode), else in process.
/// Redis being down is not an error here (the limiter starts degraded and recovers on its own);
/// a URL that cannot be used is.
async fn open_limiter(cfg: &Config) -> anyhow::Result<Arc<dyn Limiter>> {
    let Some(url) = &cfg.redis_url else {
        return Ok(Arc::new(portcullis_limiter::local::LocalLimiter::new()));
    };
    let r = &cfg.redis;
    let fail_mode: FailMode = r.fail_mode.parse().map_err(|e: String| anyhow::anyhow!("redis.fail_mode: {e}"))?;
    let limiter = SharedLimiter::start(SharedSettings {
        redis: RedisSettings {
            url: url.clone(),
            prefix: r.key_prefix.clone(),
            timeout: Duration::from_millis(r.timeout_ms),
            lease: Duration::from_secs(r.lease_secs),
        },
        fail_mode,
        probe_interval: Duration::from_millis(r.probe_interval_ms),
        fallback_divisor: r.fallback_divisor,
    })
    .await
    .map_err(|e| anyhow::anyhow!("PORTCULLIS_REDIS_URL: {e}"))?;
    let health = limiter.health();
    match &health.degraded {
        None => tracing::info!(
            redis = %redact_url(url),
            key_prefix = %r.key_prefix,
            fail_mode = fail_mode.as_str(),
            timeout_ms = r.timeout_ms,
            "limits: shared in Redis"
        ),
        Some(d) => tracing::warn!(
            redis = %redact_url(url),
            key_prefix = %r.key_prefix,
            fail_mode = fail_mode.as_str(),
            error = %d.reason,
            "limits: Redis does not answer yet; deciding with the fail mode until it does"
        ),
    }
    Ok(Arc::new(limiter))
}

/// When events count as durable. Only an exclusive writer (serve, under its instance lock) can
/// acknowledge at its own files: the embedded log is its files and audit.db the query index rebuilt
/// from them. In the scale-out shape the database is the log unless `audit.acknowledge = "file"`
/// says this instance's disk outlives it (the PostgreSQL rows then follow within the index delay,
/// and a restarted instance catches them up from its files).
pub(crate) fn acknowledge(cfg: &Config, exclusive: bool) -> Acknowledge {
    use crate::config::AuditAcknowledge;
    let wanted = cfg.audit.acknowledge.unwrap_or(if cfg.database_url.is_none() {
        AuditAcknowledge::File
    } else {
        AuditAcknowledge::Database
    });
    if exclusive && wanted == AuditAcknowledge::File { Acknowledge::FileWrite } else { Acknowledge::DatabaseCommit }
}

/// `exclusive`: this process alone writes `writer_id`'s chain (serve, under its lock file).
/// `audit_dir`: where this process's JSONL copy of its chain goes.
///
/// `PORTCULLIS_DATABASE_URL` selects the scale-out shape: every store on PostgreSQL, the shared
/// secrets from the environment. The data dir still holds what is each process's own: a serve
/// instance's chain id, lock and JSONL audit files (in its instance directory), the CLI's files.
/// `PORTCULLIS_REDIS_URL` shares the limits in Redis.
pub async fn open(cfg: Config, writer_id: String, exclusive: bool, audit_dir: PathBuf) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let (pepper, master_key, signing_key) = if cfg.database_url.is_some() {
        shared_secrets(&cfg)?
    } else {
        (
            secret(&cfg, "PORTCULLIS_KEY_PEPPER", &cfg.key_pepper, &cfg.key_pepper_file, "key-pepper")?,
            secret(&cfg, "PORTCULLIS_MASTER_KEY", &cfg.master_key, &cfg.master_key_file, "master-key")?,
            secret(
                &cfg,
                "PORTCULLIS_AUDIT_SIGNING_KEY",
                &cfg.audit_signing_key,
                &cfg.audit_signing_key_file,
                "audit-signing-key",
            )?,
        )
    };
    let (store, audit_reader, open_audit_store) = match &cfg.database_url {
        Some(url) => open_postgres(&cfg, url).await?,
        None => open_sqlite(&cfg).await?,
    };
    let audit = AuditLog::start(
        AuditConfig {
            writer_id,
            dir: audit_dir,
            fsync: cfg.audit.fsync,
            signing_key,
            checkpoint_every: cfg.audit.checkpoint_every,
            checkpoint_interval: Duration::from_secs(cfg.audit.checkpoint_interval_secs),
            max_batch: cfg.audit.max_batch,
            exclusive,
            acknowledge: acknowledge(&cfg, exclusive),
        },
        open_audit_store,
    )
    .await
    .map_err(|e| anyhow::anyhow!("audit log: {e}"))?;
    let limiter = open_limiter(&cfg).await?;
    let login = &cfg.auth.login;
    let guard = Guard::new(
        GuardConfig {
            credential_throttle: CredentialThrottle {
                policy: LoginPolicy {
                    max_failures_per_account: cfg.auth.failed_credentials.max_per_key_prefix,
                    max_failures_per_ip: cfg.auth.failed_credentials.max_per_ip,
                    window: Duration::from_secs(cfg.auth.failed_credentials.window_secs),
                    base_backoff: Duration::from_secs(cfg.auth.failed_credentials.backoff_secs),
                    max_backoff: Duration::from_secs(cfg.auth.failed_credentials.backoff_secs.saturating_mul(30)),
                },
            },
            master_key: portcullis_guard::sealed::MasterKey::new(master_key),
            limiter,
            limits: LimitsConfig {
                tiers: cfg
                    .tiers
                    .iter()
                    .filter_map(|(name, limits)| name.parse::<Tier>().ok().map(|t| (t, limits.clone())))
                    .collect(),
                principal_per_minute: cfg.limits.principal_per_minute,
                global_per_second: cfg.limits.global_per_second,
            },
            pepper: pepper.to_vec(),
            session_ttl: Duration::from_secs(cfg.auth.session_ttl_secs),
            cache_refresh: Duration::from_millis(cfg.auth.cache_refresh_ms),
            login: LoginPolicy {
                max_failures_per_account: login.max_failures_per_account,
                max_failures_per_ip: login.max_failures_per_ip,
                window: Duration::from_secs(login.window_secs),
                base_backoff: Duration::from_secs(login.base_backoff_secs),
                max_backoff: Duration::from_secs(login.max_backoff_secs),
            },
            jwt: cfg.auth.jwt.clone().map(|j: JwtConfig| j),
            policy: Arc::new(
                portcullis_guard::PolicyEngine::new(cfg.routes.iter().map(|r| r.action.as_str()))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
        },
        store,
        audit,
        Arc::new(SystemClock),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Opened { cfg, guard, audit_reader, signing_key })
}
