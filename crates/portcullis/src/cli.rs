//! The operator's command line. It works directly on the store (the data dir's, or PostgreSQL
//! when `PORTCULLIS_DATABASE_URL` is set) with the operator's authority; every change is audited on the `cli` chain, and running servers pick
//! changes up from the change feed within `auth.cache_refresh_ms`.
use crate::config::Config;
use crate::runtime::{self, Opened};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use portcullis_core::timefmt::parse_rfc3339_ms;
use portcullis_core::{KeyId, Permission, Principal, Role, TenantId, TenantScope, Tier};
use portcullis_guard::admin::{NewKey, lifetime_ms};
use portcullis_guard::{Grant, RequestMeta};
use portcullis_http::views::{KeyView, TenantView, UserView};
use portcullis_store::postgres as pg;
use portcullis_store::{AuditFilter, TenantStatus};
use serde::Serialize;
use std::io::Read;
use std::process::ExitCode;
use std::str::FromStr;

pub const CLI_WRITER: &str = "cli";

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant; prints its id.
    Create {
        name: String,
        #[arg(long, default_value = "free")]
        tier: String,
    },
    List,
    Get {
        id: String,
    },
    /// Every credential of the tenant fails with 403 until resumed.
    Suspend {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Show the tenant's limits, or override them: each flag given replaces that override;
    /// running servers apply it within `auth.cache_refresh_ms`.
    Limits {
        id: String,
        #[arg(long)]
        rate_per_minute: Option<u32>,
        #[arg(long)]
        requests_per_day: Option<u64>,
        #[arg(long)]
        concurrency: Option<u32>,
        /// Spend per UTC day on priced model traffic, in USD (e.g. 5 or 2.50).
        #[arg(long)]
        budget_usd_per_day: Option<f64>,
        /// Spend per UTC calendar month, in USD.
        #[arg(long)]
        budget_usd_per_month: Option<f64>,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a tenant user (`--tenant ID --role R`) or a platform operator (`--operator`).
    /// The password is read from stdin with `--password-stdin`, else generated and printed once.
    Create(UserCreate),
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Args)]
pub struct UserCreate {
    #[arg(long)]
    email: String,
    #[arg(long, required_unless_present = "operator")]
    tenant: Option<String>,
    #[arg(long, required_unless_present = "operator")]
    role: Option<String>,
    #[arg(long, conflicts_with_all = ["tenant", "role"])]
    operator: bool,
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an API key; the key is printed once (JSON: `id` and `key`).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime such as 30d, 12h.
        #[arg(long)]
        expires: Option<String>,
        /// Comma-separated scopes.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
    Revoke {
        id: String,
    },
    /// New key printed once; the old one keeps working for the grace period.
    Rotate {
        id: String,
        #[arg(long, default_value = "1h")]
        grace: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Newest first.
    Query {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        result: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Check the database log and the JSONL files; exit 0 when whole, 1 naming the first broken link.
    ///
    /// With PORTCULLIS_DATABASE_URL: every chain in the database and every signed checkpoint,
    /// then the files of this data dir — the CLI's own and those of each instance directory
    /// (`instances/*/`); the chains of instances whose files are elsewhere are named as such.
    Verify,
}

fn actor() -> Principal {
    let who = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| String::from("unknown"));
    Principal::system_operator(format!("cli:{who}"))
}

pub(crate) fn grant(scope: Option<TenantScope>) -> Grant {
    Grant { principal: std::sync::Arc::new(actor()), scope, permission: Permission::TenantsManage }
}

pub(crate) fn meta() -> RequestMeta {
    RequestMeta {
        request_id: format!("cli-{}", uuid_text()),
        ip: None,
        user_agent: Some(String::from("portcullis-cli")),
    }
}

fn uuid_text() -> String {
    hex::encode(portcullis_guard::random_bytes::<8>().unwrap_or_default())
}

pub(crate) fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

pub(crate) async fn open(cfg: Config) -> anyhow::Result<Opened> {
    // Several CLI commands may run at once: they read the chain head inside each transaction.
    let audit_dir = cfg.data_dir.join("audit");
    runtime::open(cfg, String::from(CLI_WRITER), false, audit_dir).await
}

/// Runs a command on the opened store, then stops the audit writer cleanly (final signed
/// checkpoint) whether the command succeeded or not.
pub(crate) async fn finish(o: Opened, result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    o.guard.audit_log().shutdown().await;
    result
}

pub(crate) fn tenant_id(raw: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(raw).map_err(|e| anyhow!("{e}"))
}

pub async fn migrate(cfg: Config, json: bool) -> anyhow::Result<ExitCode> {
    match (cfg.database_url.clone(), cfg.migration_database_url.clone()) {
        (None, None) => {
            let dir = cfg.data_dir.display().to_string();
            let o = open(cfg).await?;
            let result = print(json, &serde_json::json!({ "migrated": true, "data_dir": dir }), || {
                format!("store in {dir} is up to date")
            })
            .map(|()| ExitCode::SUCCESS);
            finish(o, result).await
        }
        (None, Some(_)) => bail!(
            "PORTCULLIS_MIGRATION_DATABASE_URL is set but PORTCULLIS_DATABASE_URL is not: migrate grants the application role named in PORTCULLIS_DATABASE_URL, so set both (see `portcullis migrate --help`)"
        ),
        (Some(_), None) => bail!(
            "migrating PostgreSQL needs PORTCULLIS_MIGRATION_DATABASE_URL, a URL of the role that owns the schema (PORTCULLIS_DATABASE_URL is the application role, which may not change the schema); see `portcullis migrate --help`"
        ),
        (Some(app_url), Some(owner_url)) => {
            let app_role = pg::url_user(&app_url)?;
            let report = pg::migrate(&owner_url, &app_role).await?;
            // Prove the result from the application role's side: the same checks `serve` makes.
            let pool = pg::connect(&app_url, 1).await?;
            let checked = pg::check_app_role(&pool).await;
            pool.close().await;
            let checked = checked?;
            let out = serde_json::json!({
                "migrated": true,
                "database": pg::redact_url(&app_url),
                "version": report.version,
                "applied": report.applied,
                "owner_role": report.owner_role,
                "app_role": checked.role,
            });
            print(json, &out, || {
                let applied = if report.applied.is_empty() {
                    String::from("already current")
                } else {
                    format!("applied {:?}", report.applied)
                };
                format!(
                    "PostgreSQL schema `{}` at version {} ({applied}); owner `{}`; application role `{}` granted and checked (no superuser, no BYPASSRLS, owns nothing)",
                    pg::SCHEMA,
                    report.version,
                    report.owner_role,
                    checked.role
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn tenant(cfg: Config, json: bool, cmd: TenantCmd) -> anyhow::Result<ExitCode> {
    let o = open(cfg).await?;
    let result = tenant_on(&o, json, cmd).await;
    finish(o, result).await
}

async fn tenant_on(o: &Opened, json: bool, cmd: TenantCmd) -> anyhow::Result<ExitCode> {
    let g = &o.guard;
    match cmd {
        TenantCmd::Create { name, tier } => {
            let tier = Tier::from_str(&tier).map_err(|e| anyhow!(e))?;
            let t = g.create_tenant(&grant(None), &meta(), &name, tier).await?;
            print(json, &TenantView::from(&t), || t.id.to_string())?;
        }
        TenantCmd::List => {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = g.store().list_tenants(after.as_deref(), 500).await?;
                let Some(last) = page.last().map(|t| t.id.to_string()) else { break };
                all.extend(page);
                after = Some(last);
            }
            let views: Vec<TenantView> = all.iter().map(TenantView::from).collect();
            print(json, &views, || {
                views
                    .iter()
                    .map(|t| format!("{}  {:<10} {:<9} {}", t.id, t.tier, t.status, t.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        TenantCmd::Get { id } => {
            let t = g.store().get_tenant(&tenant_id(&id)?).await?.ok_or_else(|| anyhow!("no tenant `{id}`"))?;
            let v = TenantView::from(&t);
            print(json, &v, || format!("{}  {} {} {}", v.id, v.tier, v.status, v.name))?;
        }
        TenantCmd::Suspend { id } => set_status(o, json, &id, TenantStatus::Suspended).await?,
        TenantCmd::Resume { id } => set_status(o, json, &id, TenantStatus::Active).await?,
        TenantCmd::Limits {
            id,
            rate_per_minute,
            requests_per_day,
            concurrency,
            budget_usd_per_day,
            budget_usd_per_month,
        } => {
            let t = g.store().get_tenant(&tenant_id(&id)?).await?.ok_or_else(|| anyhow!("no tenant `{id}`"))?;
            if rate_per_minute.is_some()
                || requests_per_day.is_some()
                || concurrency.is_some()
                || budget_usd_per_day.is_some()
                || budget_usd_per_month.is_some()
            {
                let mut o = g.store().get_limits(&t.id).await?;
                o.rate_per_minute = rate_per_minute.or(o.rate_per_minute);
                o.requests_per_day = requests_per_day.or(o.requests_per_day);
                o.concurrency = concurrency.or(o.concurrency);
                o.budget_usd_per_day = budget_usd_per_day.or(o.budget_usd_per_day);
                o.budget_usd_per_month = budget_usd_per_month.or(o.budget_usd_per_month);
                g.set_limits(&grant(None), &meta(), &t, &o).await?;
            }
            let effective = g.effective_limits(&t.id).await?.ok_or_else(|| anyhow!("no tenant `{id}`"))?;
            let overrides = g.store().get_limits(&t.id).await?;
            let out = serde_json::json!({ "tenant_id": t.id, "tier": t.tier, "effective": effective, "overrides": overrides });
            print(json, &out, || {
                let budget = |nanos: Option<i64>, per: &str, window: &str| match nanos {
                    Some(n) => format!("budget ${}/{per}", portcullis_core::limits::nanos_to_usd(n)),
                    None => format!("no {window} budget"),
                };
                format!(
                    "{} ({}): {} requests/min, {} requests/day, {} concurrent, {} tokens/request, {}, {}",
                    t.id,
                    t.tier,
                    effective.rate_per_minute,
                    effective.requests_per_day,
                    effective.concurrency,
                    effective.max_tokens_per_request,
                    budget(effective.budget_nanos_per_day, "day", "daily"),
                    budget(effective.budget_nanos_per_month, "month", "monthly")
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_status(o: &Opened, json: bool, id: &str, status: TenantStatus) -> anyhow::Result<()> {
    let t = o.guard.store().get_tenant(&tenant_id(id)?).await?.ok_or_else(|| anyhow!("no tenant `{id}`"))?;
    let t = o.guard.set_tenant_status(&grant(None), &meta(), t, status).await?;
    let v = TenantView::from(&t);
    print(json, &v, || format!("{} {}", v.id, v.status))
}

pub async fn user(cfg: Config, json: bool, cmd: UserCmd) -> anyhow::Result<ExitCode> {
    let o = open(cfg).await?;
    let result = user_on(&o, json, cmd).await;
    finish(o, result).await
}

async fn user_on(o: &Opened, json: bool, cmd: UserCmd) -> anyhow::Result<ExitCode> {
    let g = &o.guard;
    match cmd {
        UserCmd::Create(c) => {
            let (password, generated) = if c.password_stdin {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).context("reading the password from stdin")?;
                (s.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                let raw = portcullis_guard::random_bytes::<24>().map_err(anyhow::Error::msg)?;
                (portcullis_core::apikey::generate(&raw).chars().skip(3).take(24).collect::<String>(), true)
            };
            let user = if c.operator {
                g.create_user(&grant(None), &meta(), &c.email, &password, None).await?
            } else {
                let t = tenant_id(c.tenant.as_deref().unwrap_or_default())?;
                if g.store().get_tenant(&t).await?.is_none() {
                    bail!("no tenant `{t}`");
                }
                let role = Role::from_str(c.role.as_deref().unwrap_or_default()).map_err(|e| anyhow!(e))?;
                let scope = TenantScope::operator_cli(t);
                g.create_user(&grant(Some(scope.clone())), &meta(), &c.email, &password, Some((&scope, role))).await?
            };
            let v = UserView::from(&user);
            #[derive(Serialize)]
            struct Out<'a> {
                #[serde(flatten)]
                user: &'a UserView,
                #[serde(skip_serializing_if = "Option::is_none")]
                password: Option<&'a str>,
            }
            let out = Out { user: &v, password: generated.then_some(password.as_str()) };
            print(json, &out, || {
                if generated { format!("{}\npassword (shown once): {password}", v.id) } else { v.id.clone() }
            })?;
        }
        UserCmd::List { tenant } => {
            let users = match tenant {
                Some(t) => g.store().list_users(&TenantScope::operator_cli(tenant_id(&t)?), None, 10_000).await?,
                None => g.store().list_operators().await?,
            };
            let views: Vec<UserView> = users.iter().map(UserView::from).collect();
            print(json, &views, || {
                views.iter().map(|u| format!("{}  {:<8} {}", u.id, u.role, u.email)).collect::<Vec<_>>().join("\n")
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn key_scope(o: &Opened, id: &str) -> anyhow::Result<(KeyId, TenantScope)> {
    let kid = KeyId::parse(id).map_err(|e| anyhow!("{e}"))?;
    let owner = o.guard.store().key_owner(&kid).await?.ok_or_else(|| anyhow!("no key `{id}`"))?;
    Ok((kid, TenantScope::operator_cli(owner)))
}

#[derive(Serialize)]
struct CreatedOut<'a> {
    key: &'a str,
    #[serde(flatten)]
    record: KeyView,
}

pub async fn key(cfg: Config, json: bool, cmd: KeyCmd) -> anyhow::Result<ExitCode> {
    let o = open(cfg).await?;
    let result = key_on(&o, json, cmd).await;
    finish(o, result).await
}

async fn key_on(o: &Opened, json: bool, cmd: KeyCmd) -> anyhow::Result<ExitCode> {
    let g = &o.guard;
    let now = g.now_ms();
    match cmd {
        KeyCmd::Create { tenant, role, name, expires, scopes } => {
            let t = tenant_id(&tenant)?;
            if g.store().get_tenant(&t).await?.is_none() {
                bail!("no tenant `{t}`");
            }
            let role = Role::from_str(&role).map_err(|e| anyhow!(e))?;
            let scope = TenantScope::operator_cli(t);
            let new = NewKey { name, role, scopes, expires_in: expires };
            let (key, record) = g.create_key(&grant(Some(scope.clone())), &meta(), &scope, new).await?;
            let out = CreatedOut { key: &key, record: KeyView::new(&record, now) };
            print(json, &out, || key.clone())?;
        }
        KeyCmd::List { tenant } => {
            let scope = TenantScope::operator_cli(tenant_id(&tenant)?);
            let keys = g.store().list_keys(&scope, None, 100_000).await?;
            let views: Vec<KeyView> = keys.iter().map(|k| KeyView::new(k, now)).collect();
            print(json, &views, || {
                views
                    .iter()
                    .map(|k| format!("{}  {}…  {:<8} {:<8} {}", k.id, k.prefix, k.role, k.status, k.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        KeyCmd::Revoke { id } => {
            let (kid, scope) = key_scope(o, &id).await?;
            let k = g.store().get_key(&scope, &kid).await?.ok_or_else(|| anyhow!("no key `{id}`"))?;
            let k = g.revoke_key(&grant(Some(scope.clone())), &meta(), &scope, k).await?;
            let v = KeyView::new(&k, now);
            print(json, &v, || format!("{} {}", v.id, v.status))?;
        }
        KeyCmd::Rotate { id, grace } => {
            let (kid, scope) = key_scope(o, &id).await?;
            let grace_ms = lifetime_ms("grace", &grace)?;
            let old = g.store().get_key(&scope, &kid).await?.ok_or_else(|| anyhow!("no key `{id}`"))?;
            let (key, record) = g.rotate_key(&grant(Some(scope.clone())), &meta(), &scope, old, grace_ms).await?;
            let out = CreatedOut { key: &key, record: KeyView::new(&record, now) };
            print(json, &out, || key.clone())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit files of this deployment's shape: the data dir's `audit/` (embedded), or those of
/// every instance under it (scale-out).
pub fn audit_sources(cfg: &Config) -> anyhow::Result<portcullis_audit::FileSources> {
    if cfg.database_url.is_some() {
        scale_out_sources(cfg)
    } else {
        Ok(portcullis_audit::FileSources { dirs: vec![cfg.data_dir.join("audit")], complete: None })
    }
}

/// The scale-out shape's files under this data dir: the CLI's own (`audit/`) and those of every
/// instance directory (`instances/*/audit/`). The chains of those instances (their `node-id`s,
/// or `audit.writer_id` when one is configured) must be whole in their files; the CLI's chain is
/// written from wherever the CLI runs, so its lines here are checked one by one.
fn scale_out_sources(cfg: &Config) -> anyhow::Result<portcullis_audit::FileSources> {
    let mut dirs = vec![cfg.data_dir.join("audit")];
    let mut complete = std::collections::BTreeSet::new();
    let instances = cfg.data_dir.join("instances");
    if instances.is_dir() {
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(&instances)
            .with_context(|| format!("reading {}", instances.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        for inst in found {
            match std::fs::read_to_string(inst.join("node-id")) {
                Ok(id) => {
                    complete.insert(id.trim().to_owned());
                }
                Err(_) => {
                    if let Some(w) = &cfg.audit.writer_id {
                        complete.insert(w.clone());
                    }
                }
            }
            if inst.join("audit").is_dir() {
                dirs.push(inst.join("audit"));
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    Ok(portcullis_audit::FileSources { dirs, complete: Some(complete) })
}

pub async fn audit(cfg: Config, json: bool, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let o = open(cfg).await?;
    let result = audit_on(&o, json, cmd).await;
    finish(o, result).await
}

async fn audit_on(o: &Opened, json: bool, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Query { tenant, user, action, result, since, until, limit } => {
            let time = |name: &str, v: Option<String>| -> anyhow::Result<Option<i64>> {
                v.map(|s| parse_rfc3339_ms(&s).ok_or_else(|| anyhow!("--{name} `{s}` is not an RFC 3339 time")))
                    .transpose()
            };
            if let Some(t) = &tenant {
                tenant_id(t)?;
            }
            let filter = AuditFilter {
                tenant_id: tenant,
                user_id: user,
                action,
                result,
                from_ms: time("since", since)?,
                to_ms: time("until", until)?,
                before_id: None,
                limit: limit.clamp(1, 100_000),
            };
            let rows = o.audit_reader.query(&filter).await?;
            let records: Vec<_> = rows.into_iter().map(|(_, r)| r).collect();
            print(json, &records, || {
                records
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {:<8} {:<28} {:<7} {} {}",
                            r.timestamp,
                            r.writer_id,
                            r.action,
                            r.result.as_str(),
                            r.user_id.as_deref().unwrap_or("-"),
                            r.resource_id.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify => {
            let key = SigningKey::from_bytes(&o.signing_key).verifying_key();
            let sources = audit_sources(&o.cfg)?;
            let report = portcullis_audit::verify_sources(o.audit_reader.as_ref(), &sources, &key)
                .await
                .map_err(|e| anyhow!(e))?;
            print(json, &report, || {
                let mut s = String::new();
                for w in &report.writers {
                    s.push_str(&format!(
                        "chain {}: {} records, head seq {}, last signed checkpoint {}\n",
                        w.writer_id,
                        w.records,
                        w.head_seq,
                        w.last_checkpoint_seq.map(|c| c.to_string()).unwrap_or_else(|| String::from("none"))
                    ));
                }
                for w in &report.files_elsewhere {
                    s.push_str(&format!(
                        "chain {w}: its files are not under this data dir (an instance elsewhere): checked in the database and against its checkpoints\n"
                    ));
                }
                s.push_str(&format!(
                    "{} files, {} file records, {} checkpoints\n",
                    report.files, report.file_records, report.checkpoints
                ));
                if report.unindexed > 0 {
                    s.push_str(&format!(
                        "{} newest file records not in the database yet (a running server indexes them within milliseconds)\n",
                        report.unindexed
                    ));
                }
                if report.ok {
                    s.push_str("audit log verified: every chain is whole");
                } else {
                    s.push_str("AUDIT LOG BROKEN — first broken link:\n");
                    for p in &report.problems {
                        s.push_str(&format!("  {p}\n"));
                    }
                }
                s
            })?;
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
