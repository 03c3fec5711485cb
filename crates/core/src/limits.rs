//! A tenant's effective limits: the tier's defaults with the tenant's overrides on top.
use crate::tier::TierLimits;
use serde::{Deserialize, Serialize};

/// Per-tenant overrides set by an operator; `None` keeps the tier default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub rate_per_minute: Option<u32>,
    pub requests_per_day: Option<u64>,
    pub concurrency: Option<u32>,
    /// Spend per UTC day on priced model traffic, in USD (reserve-then-settle: never overrun).
    #[serde(default)]
    pub budget_usd_per_day: Option<f64>,
    /// Spend per UTC calendar month, in USD.
    #[serde(default)]
    pub budget_usd_per_month: Option<f64>,
}

/// The largest budget accepted: a billion USD.
pub const MAX_BUDGET_USD: f64 = 1e9;

/// USD to nano-USD, for a finite amount in [0, [`MAX_BUDGET_USD`]].
pub fn usd_to_nanos(usd: f64) -> Option<i64> {
    if !usd.is_finite() || !(0.0..=MAX_BUDGET_USD).contains(&usd) {
        return None;
    }
    // At most 1e18: fits an i64.
    #[allow(clippy::cast_possible_truncation, reason = "range checked above")]
    Some((usd * 1e9).round() as i64)
}

/// Nano-USD to USD, for display and JSON.
pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

impl LimitOverrides {
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_per_minute == Some(0) || self.concurrency == Some(0) || self.requests_per_day == Some(0) {
            return Err(String::from("limits must be positive (suspend the tenant to stop its traffic)"));
        }
        for (name, v) in
            [("budget_usd_per_day", self.budget_usd_per_day), ("budget_usd_per_month", self.budget_usd_per_month)]
        {
            if v.is_some_and(|v| usd_to_nanos(v).is_none_or(|n| n == 0)) {
                return Err(format!("`{name}` must be a positive number of USD up to {MAX_BUDGET_USD}"));
            }
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
    /// Nano-USD per UTC day / month; `None`: no budget. Shown in USD.
    #[serde(rename = "budget_usd_per_day", serialize_with = "nanos_as_usd")]
    pub budget_nanos_per_day: Option<i64>,
    #[serde(rename = "budget_usd_per_month", serialize_with = "nanos_as_usd")]
    pub budget_nanos_per_month: Option<i64>,
}

fn nanos_as_usd<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_f64(nanos_to_usd(*n)),
        None => s.serialize_none(),
    }
}

pub fn effective(tier: &TierLimits, o: &LimitOverrides) -> EffectiveLimits {
    EffectiveLimits {
        rate_per_minute: o.rate_per_minute.unwrap_or(tier.rate_per_minute),
        requests_per_day: o.requests_per_day.unwrap_or(tier.requests_per_day),
        concurrency: o.concurrency.unwrap_or(tier.concurrency),
        max_tokens_per_request: tier.max_tokens_per_request,
        budget_nanos_per_day: o.budget_usd_per_day.or(tier.budget_usd_per_day).and_then(usd_to_nanos),
        budget_nanos_per_month: o.budget_usd_per_month.or(tier.budget_usd_per_month).and_then(usd_to_nanos),
    }
}
