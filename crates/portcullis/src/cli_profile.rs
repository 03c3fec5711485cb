//! `portcullis model-profile …`: a tenant's model profiles from the command line, with the same
//! validation and audit as the API (`/v1/model-profiles`).
use crate::cli::{finish, grant, meta, open, print};
use crate::cli_policy::scope_of;
use crate::config::Config;
use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use portcullis_core::TenantScope;
use portcullis_core::timefmt::rfc3339_ms;
use portcullis_guard::profiles::{ModelProfileChange, price_usd};
use portcullis_store::ModelProfile;
use std::process::ExitCode;

/// The writable fields; each is required by `create`, optional for `update`.
#[derive(Args)]
pub struct ProfileFields {
    /// What the model is for, e.g. `chat` (1–64 of a-z 0-9 . _ -).
    #[arg(long)]
    role: Option<String>,
    /// e.g. `realtime`, `batch`, `self-hosted` (1–64 of a-z 0-9 . _ -).
    #[arg(long = "deployment-mode", visible_alias = "mode")]
    deployment_mode: Option<String>,
    /// The model name as requests carry it.
    #[arg(long)]
    model: Option<String>,
    /// http:// or https:// URL with a host.
    #[arg(long = "base-url")]
    base_url: Option<String>,
    /// 0 to 2.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// USD per 1 000 input tokens, at most 6 decimal places.
    #[arg(long = "input-price-per-1k", visible_alias = "input-price", allow_negative_numbers = true)]
    input_price: Option<f64>,
    /// USD per 1 000 output tokens, at most 6 decimal places.
    #[arg(long = "output-price-per-1k", visible_alias = "output-price", allow_negative_numbers = true)]
    output_price: Option<f64>,
}

impl ProfileFields {
    /// `create` needs every field: the first one missing, as its flag.
    fn missing(&self) -> Option<&'static str> {
        [
            ("--role", self.role.is_none()),
            ("--deployment-mode", self.deployment_mode.is_none()),
            ("--model", self.model.is_none()),
            ("--base-url", self.base_url.is_none()),
            ("--temperature", self.temperature.is_none()),
            ("--input-price-per-1k", self.input_price.is_none()),
            ("--output-price-per-1k", self.output_price.is_none()),
        ]
        .into_iter()
        .find_map(|(flag, missing)| missing.then_some(flag))
    }
}

impl From<ProfileFields> for ModelProfileChange {
    fn from(f: ProfileFields) -> Self {
        ModelProfileChange {
            role: f.role,
            deployment_mode: f.deployment_mode,
            model: f.model,
            base_url: f.base_url,
            temperature: f.temperature,
            input_price_per_1k: f.input_price,
            output_price_per_1k: f.output_price,
        }
    }
}

#[derive(Subcommand)]
pub enum ProfileCmd {
    /// The tenant's profiles, ordered by role and deployment mode.
    List {
        #[arg(long)]
        tenant: String,
    },
    Get {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Create a profile (every field required); prints its id.
    Create {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        fields: ProfileFields,
    },
    /// Change any of a profile's fields.
    Update {
        #[arg(long)]
        tenant: String,
        id: String,
        #[command(flatten)]
        fields: ProfileFields,
    },
    Delete {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

/// The same shape as the API's (`GET /v1/model-profiles/{id}`).
fn view(p: &ModelProfile) -> serde_json::Value {
    serde_json::json!({
        "id": p.id, "role": p.role, "deployment_mode": p.deployment_mode, "model": p.model,
        "base_url": p.base_url, "temperature": p.temperature,
        "input_price_per_1k": price_usd(p.input_price_micros_per_1k),
        "output_price_per_1k": price_usd(p.output_price_micros_per_1k),
        "created_at": rfc3339_ms(p.created_at_ms), "created_by": p.created_by,
        "updated_at": rfc3339_ms(p.updated_at_ms), "updated_by": p.updated_by,
    })
}

fn line(p: &ModelProfile) -> String {
    format!(
        "{}  {}/{}  {}  {}  temperature {}  in ${}/1K  out ${}/1K",
        p.id,
        p.role,
        p.deployment_mode,
        p.model,
        p.base_url,
        p.temperature,
        price_usd(p.input_price_micros_per_1k),
        price_usd(p.output_price_micros_per_1k)
    )
}

pub async fn profile(cfg: Config, json: bool, cmd: ProfileCmd) -> anyhow::Result<ExitCode> {
    let o = open(cfg).await?;
    let result = profile_on(&o, json, cmd).await;
    finish(o, result).await
}

async fn load(o: &crate::runtime::Opened, scope: &TenantScope, id: &str) -> anyhow::Result<ModelProfile> {
    o.guard
        .store()
        .get_model_profile(scope, id)
        .await?
        .ok_or_else(|| anyhow!("no model profile `{id}` in tenant {}", scope.tenant_id()))
}

async fn profile_on(o: &crate::runtime::Opened, json: bool, cmd: ProfileCmd) -> anyhow::Result<ExitCode> {
    let g = &o.guard;
    let admin = |e: portcullis_guard::admin::AdminError| anyhow!("{e}");
    match cmd {
        ProfileCmd::List { tenant } => {
            let scope = scope_of(o, &tenant).await?;
            let rows = g.store().list_model_profiles(&scope).await?;
            let views: Vec<serde_json::Value> = rows.iter().map(view).collect();
            print(json, &views, || rows.iter().map(line).collect::<Vec<_>>().join("\n"))?;
        }
        ProfileCmd::Get { tenant, id } => {
            let scope = scope_of(o, &tenant).await?;
            let p = load(o, &scope, &id).await?;
            print(json, &view(&p), || line(&p))?;
        }
        ProfileCmd::Create { tenant, fields } => {
            if let Some(flag) = fields.missing() {
                bail!("`{flag}` is required to create a model profile");
            }
            let scope = scope_of(o, &tenant).await?;
            let p = g
                .create_model_profile(&grant(Some(scope.clone())), &meta(), &scope, fields.into())
                .await
                .map_err(admin)?;
            print(json, &view(&p), || p.id.clone())?;
        }
        ProfileCmd::Update { tenant, id, fields } => {
            let scope = scope_of(o, &tenant).await?;
            let old = load(o, &scope, &id).await?;
            let p = g
                .update_model_profile(&grant(Some(scope.clone())), &meta(), &scope, &old, fields.into())
                .await
                .map_err(admin)?;
            print(json, &view(&p), || line(&p))?;
        }
        ProfileCmd::Delete { tenant, id } => {
            let scope = scope_of(o, &tenant).await?;
            let p = load(o, &scope, &id).await?;
            g.delete_model_profile(&grant(Some(scope.clone())), &meta(), &scope, &p).await.map_err(admin)?;
            print(json, &serde_json::json!({ "deleted": p.id }), || format!("deleted {}", p.id))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
