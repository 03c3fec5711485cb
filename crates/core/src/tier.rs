//! Tenant tiers and their default limits (SPEC §3.4). The defaults are configuration: an operator
//! may replace any number, and a tenant may carry its own overrides on top.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Starter,
    Pro,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Starter, Tier::Pro, Tier::Enterprise];
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Pro => "pro",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "free" => Ok(Tier::Free),
            "starter" => Ok(Tier::Starter),
            "pro" => Ok(Tier::Pro),
            "enterprise" => Ok(Tier::Enterprise),
            other => Err(format!("unknown tier `{other}`: expected one of free, starter, pro, enterprise")),
        }
    }
}

/// Limits a tier grants. `None` means unlimited (only ever chosen explicitly, e.g. enterprise budget).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    pub requests_per_day: u64,
    pub max_tokens_per_request: u64,
    pub concurrency: u32,
    pub rate_per_minute: u32,
    pub budget_usd_per_day: Option<f64>,
    #[serde(default)]
    pub budget_usd_per_month: Option<f64>,
}

impl TierLimits {
    pub fn default_for(tier: Tier) -> TierLimits {
        let (requests_per_day, max_tokens_per_request, concurrency, rate_per_minute, budget) = match tier {
            Tier::Free => (1_000, 4_096, 5, 10, Some(1.0)),
            Tier::Starter => (10_000, 8_192, 10, 50, Some(10.0)),
            Tier::Pro => (100_000, 32_768, 50, 200, Some(100.0)),
            Tier::Enterprise => (1_000_000, 131_072, 500, 1_000, None),
        };
        TierLimits {
            requests_per_day,
            max_tokens_per_request,
            concurrency,
            rate_per_minute,
            budget_usd_per_day: budget,
            budget_usd_per_month: None,
        }
    }
}
