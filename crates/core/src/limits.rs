//! A tenant's effective limits: the tier's defaults with the tenant's overrides on top.
use crate::tier::TierLimits;
use serde::{Deserialize, Serialize};

/// Per-tenant overrides set by an operator; `None` keeps the tier default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub rate_per_minute: Option<u32>,
    pub requests_per_day: Option<u64>,
    pub concurrency: Option<u32>,
}

impl LimitOverrides {
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_per_minute == Some(0) || self.concurrency == Some(0) || self.requests_per_day == Some(0) {
            return Err(String::from("limits must be positive (suspend the tenant to stop its traffic)"));
        }
        if self.rate_per_minute.is_some_and(|r| r > 10_000_000)
            || self.concurrency.is_some_and(|c| c > 1_000_000)
            || self.requests_per_day.is_some_and(|d| d > 1_000_000_000_000)
        {
            return Err(String::from("limit is implausibly large"));
        }
        Ok(())
    }
}

/// The numbers that apply to a tenant now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveLimits {
    pub rate_per_minute: u32,
    pub requests_per_day: u64,
    pub concurrency: u32,
    pub max_tokens_per_request: u64,
}

pub fn effective(tier: &TierLimits, o: &LimitOverrides) -> EffectiveLimits {
    EffectiveLimits {
        rate_per_minute: o.rate_per_minute.unwrap_or(tier.rate_per_minute),
        requests_per_day: o.requests_per_day.unwrap_or(tier.requests_per_day),
        concurrency: o.concurrency.unwrap_or(tier.concurrency),
        max_tokens_per_request: tier.max_tokens_per_request,
    }
}
