//! `portcullis policy …`: a tenant's Cedar policies from the command line, with the same
//! validation and audit as the API (`POST /v1/policies`).
use crate::cli::{finish, grant, meta, open, print, tenant_id};
use crate::config::Config;
use anyhow::{anyhow, bail};
use clap::Subcommand;
use portcullis_core::TenantScope;
use portcullis_core::timefmt::rfc3339_ms;
use portcullis_guard::admin::AdminError;
use portcullis_guard::policies::PolicyChange;
use portcullis_policy::Problem;
use portcullis_store::PolicyRecord;
use std::io::Read;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate a Cedar file against the schema without saving it; exit 1 listing each problem
    /// as `line:column: message`.
    Check {
        /// A file, or `-` for stdin.
        file: String,
    },
    /// Print the Cedar schema tenant policies are validated against.
    Schema,
    List {
        #[arg(long)]
        tenant: String,
    },
    Get {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Create a policy from a Cedar file (`-` for stdin); prints its id.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        file: String,
        #[arg(long)]
        description: Option<String>,
        /// Save it without enforcing it.
        #[arg(long)]
        disabled: bool,
    },
    /// Change a policy's text (from a file, `-` for stdin), name, or whether it is enforced.
    Update {
        #[arg(long)]
        tenant: String,
        id: String,
        #[arg(long)]
        file: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    Delete {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Who changed the policy, when, and what.
    Versions {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

fn read(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow!("cannot read `{file}`: {e}"))
    }
}

fn problems_text(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            let at = match (p.line, p.column) {
                (Some(l), Some(c)) => format!("{file}:{l}:{c}: "),
                _ => format!("{file}: "),
            };
            let help = p.help.as_deref().map(|h| format!(" ({h})")).unwrap_or_default();
            format!("{at}{}{help}", p.message)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn view(p: &PolicyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": p.id, "name": p.name, "description": p.description, "cedar": p.cedar,
        "enabled": p.enabled, "version": p.version,
        "created_at": rfc3339_ms(p.created_at_ms), "created_by": p.created_by,
        "updated_at": rfc3339_ms(p.updated_at_ms), "updated_by": p.updated_by,
    })
}

/// Turns a validation failure into the CLI's message naming each problem's position.
fn admin(file: &str) -> impl Fn(AdminError) -> anyhow::Error + '_ {
    move |e| match e {
        AdminError::InvalidPolicy(m, problems) => anyhow!("{m}:\n{}", problems_text(file, &problems)),
        other => anyhow!("{other}"),
    }
}

pub async fn policy(cfg: Config, json: bool, cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    if let PolicyCmd::Check { file } = &cmd {
        let engine = portcullis_guard::PolicyEngine::new(cfg.routes.iter().map(|r| r.action.as_str()))
            .map_err(anyhow::Error::msg)?;
        let text = read(file)?;
        return match engine.check("pol_check", &text) {
            Ok(c) => {
                let out = serde_json::json!({ "valid": true, "statements": c.statements, "warnings": c.warnings });
                print(json, &out, || {
                    let mut s = format!("{file}: valid ({} statement(s))", c.statements);
                    if !c.warnings.is_empty() {
                        s.push_str(&format!("\nwarnings:\n{}", problems_text(file, &c.warnings)));
                    }
                    s
                })?;
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                if json {
                    println!("{}", serde_json::json!({ "valid": false, "errors": problems }));
                } else {
                    eprintln!("{}", problems_text(file, &problems));
                }
                Ok(ExitCode::from(1))
            }
        };
    }
    if let PolicyCmd::Schema = &cmd {
        let engine = portcullis_guard::PolicyEngine::new(cfg.routes.iter().map(|r| r.action.as_str()))
            .map_err(anyhow::Error::msg)?;
        println!("{}", engine.schema_text());
        return Ok(ExitCode::SUCCESS);
    }
    let o = open(cfg).await?;
    let result = policy_on(&o, json, cmd).await;
    finish(o, result).await
}

pub(crate) async fn scope_of(o: &crate::runtime::Opened, tenant: &str) -> anyhow::Result<TenantScope> {
    let t = tenant_id(tenant)?;
    if o.guard.store().get_tenant(&t).await?.is_none() {
        bail!("no tenant `{t}`");
    }
    Ok(TenantScope::operator_cli(t))
}

async fn load(o: &crate::runtime::Opened, scope: &TenantScope, id: &str) -> anyhow::Result<PolicyRecord> {
    o.guard
        .store()
        .get_policy(scope, id)
        .await?
        .ok_or_else(|| anyhow!("no policy `{id}` in tenant {}", scope.tenant_id()))
}

async fn policy_on(o: &crate::runtime::Opened, json: bool, cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    let g = &o.guard;
    match cmd {
        PolicyCmd::Check { .. } | PolicyCmd::Schema => {}
        PolicyCmd::List { tenant } => {
            let scope = scope_of(o, &tenant).await?;
            let rows = g.store().list_policies(&scope).await?;
            let views: Vec<serde_json::Value> = rows.iter().map(view).collect();
            print(json, &views, || {
                rows.iter()
                    .map(|p| {
                        format!(
                            "{}  v{:<3} {:<8} {}",
                            p.id,
                            p.version,
                            if p.enabled { "enabled" } else { "disabled" },
                            p.name
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        PolicyCmd::Get { tenant, id } => {
            let scope = scope_of(o, &tenant).await?;
            let p = load(o, &scope, &id).await?;
            print(json, &view(&p), || format!("{} v{} {}\n{}", p.id, p.version, p.name, p.cedar))?;
        }
        PolicyCmd::Create { tenant, name, file, description, disabled } => {
            let scope = scope_of(o, &tenant).await?;
            let change =
                PolicyChange { name: Some(name), cedar: Some(read(&file)?), description, enabled: Some(!disabled) };
            let (p, warnings) =
                g.create_policy(&grant(Some(scope.clone())), &meta(), &scope, change).await.map_err(admin(&file))?;
            let mut v = view(&p);
            v["warnings"] = serde_json::json!(warnings);
            print(json, &v, || p.id.clone())?;
        }
        PolicyCmd::Update { tenant, id, file, name, enable, disable } => {
            let scope = scope_of(o, &tenant).await?;
            let old = load(o, &scope, &id).await?;
            let cedar = file.as_deref().map(read).transpose()?;
            let enabled = if enable {
                Some(true)
            } else if disable {
                Some(false)
            } else {
                None
            };
            let change = PolicyChange { name, cedar, description: None, enabled };
            let label = file.unwrap_or_else(|| String::from("(stored text)"));
            let (p, _) = g
                .update_policy(&grant(Some(scope.clone())), &meta(), &scope, &old, change)
                .await
                .map_err(admin(&label))?;
            print(json, &view(&p), || format!("{} v{}", p.id, p.version))?;
        }
        PolicyCmd::Delete { tenant, id } => {
            let scope = scope_of(o, &tenant).await?;
            let p = load(o, &scope, &id).await?;
            g.delete_policy(&grant(Some(scope.clone())), &meta(), &scope, &p).await.map_err(admin(""))?;
            print(json, &serde_json::json!({ "deleted": p.id }), || format!("deleted {}", p.id))?;
        }
        PolicyCmd::Versions { tenant, id } => {
            let scope = scope_of(o, &tenant).await?;
            let rows = g.store().policy_versions(&scope, &id).await?;
            if rows.is_empty() {
                bail!("no policy `{id}` in tenant {}", scope.tenant_id());
            }
            let views: Vec<serde_json::Value> = rows
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "version": v.version, "change": v.change, "changed_at": rfc3339_ms(v.changed_at_ms),
                        "changed_by": v.changed_by, "name": v.name, "enabled": v.enabled, "cedar": v.cedar,
                    })
                })
                .collect();
            print(json, &views, || {
                rows.iter()
                    .map(|v| {
                        format!("v{:<3} {:<7} {}  {}", v.version, v.change, rfc3339_ms(v.changed_at_ms), v.changed_by)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
