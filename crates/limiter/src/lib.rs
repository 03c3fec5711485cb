//! Limits behind one trait: rate (per tenant, per principal, per route, global), concurrency
//! (per tenant, held for the life of a proxied response) and daily request quotas.
//!
//! One call decides everything that applies to a request ([`Limiter::admit`]), so a backend with a
//! network hop (Redis) can do it in one round trip. [`local::LocalLimiter`] is the in-process
//! implementation of the embedded shape; [`shared::SharedLimiter`] is the scale-out one: the
//! limits live in Redis ([`redis::RedisLimiter`]) and a configured fail mode decides while Redis
//! is unreachable or too slow.
#![forbid(unsafe_code)]

pub mod budget;
pub mod local;
pub mod redis;
pub mod shared;

#[cfg(test)]
mod conformance;

use async_trait::async_trait;

/// Which limit decided a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Global,
    Tenant,
    Principal,
    Route,
    Concurrency,
    Quota,
    /// Not a limit: the shared limiter could not decide in time and the gateway fails closed.
    /// Rendered as 503, never as 429 (the caller did nothing wrong).
    Unavailable,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Global => "global_rate",
            LimitKind::Tenant => "tenant_rate",
            LimitKind::Principal => "principal_rate",
            LimitKind::Route => "route_rate",
            LimitKind::Concurrency => "concurrency",
            LimitKind::Quota => "daily_quota",
            LimitKind::Unavailable => "limiter_unavailable",
        }
    }
}

/// The limits that apply to one request, already resolved from tier defaults and overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub tenant_per_minute: u32,
    pub principal_per_minute: u32,
    /// Per-route limit (per tenant), if the route has one.
    pub route_per_minute: Option<u32>,
    /// Whole-gateway requests per second, if set.
    pub global_per_second: Option<u32>,
    pub concurrency: u32,
    pub requests_per_day: u64,
}

pub struct LimitRequest<'a> {
    pub tenant: &'a str,
    /// Stable id of the caller within the tenant (key id, user id, JWT subject).
    pub principal: &'a str,
    pub route: &'a str,
    pub limits: &'a Limits,
    /// Take a concurrency slot (proxied requests); decisions only check rate and quota.
    pub hold_slot: bool,
    /// Unix milliseconds, for the daily window.
    pub now_ms: i64,
}

/// What the `X-RateLimit-*` headers report: the tenant's per-minute limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A held concurrency slot: dropping it gives the slot back.
pub struct Slot(#[allow(dead_code, reason = "held for its Drop")] Box<dyn Send + Sync>);

impl Slot {
    pub fn new(inner: impl Send + Sync + 'static) -> Self {
        Slot(Box::new(inner))
    }
}

pub struct Admission {
    pub rate: RateInfo,
    pub slot: Option<Slot>,
    pub quota_remaining: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Rejection {
    pub kind: LimitKind,
    pub retry_after_secs: u64,
    pub rate: RateInfo,
}

/// What `/readyz` reports about the limiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimiterHealth {
    /// `local` (in-process) or `redis` (shared by every instance).
    pub backend: &'static str,
    /// What decides while the backend is unreachable: `fail_closed` or `local`; None for the
    /// in-process limiter, which cannot be unreachable.
    pub fail_mode: Option<&'static str>,
    /// Set while decisions are made by the fail mode instead of the backend.
    pub degraded: Option<Degraded>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    /// Why (the last error or timeout), never holding a password.
    pub reason: String,
    /// Unix milliseconds when it began.
    pub since_ms: i64,
}

pub use budget::{BudgetExceeded, BudgetRequest, BudgetWindow, Reservation, WindowUse};

/// The budget store could not decide (Redis unreachable with the fail mode `fail_closed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetUnavailable;

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    async fn admit(&self, req: &LimitRequest<'_>) -> Result<Admission, Rejection>;
    /// Reserves `amount_nanos` in every window, or in none (see [`budget`]).
    async fn reserve_budget(
        &self,
        req: &BudgetRequest<'_>,
    ) -> Result<Result<Reservation, BudgetExceeded>, BudgetUnavailable>;
    /// Settles a reservation at the real cost, giving the rest back.
    async fn settle_budget(&self, r: &Reservation, actual_nanos: i64);
    /// In-flight proxied requests per tenant held by this process.
    fn in_flight(&self, tenant: &str) -> u32;
    fn health(&self) -> LimiterHealth {
        LimiterHealth { backend: "local", fail_mode: None, degraded: None }
    }
}

/// Seconds from `now_ms` to the next UTC midnight: when daily quotas reset.
pub fn seconds_to_utc_midnight(now_ms: i64) -> u64 {
    let day_ms = 86_400_000;
    let next = (now_ms.div_euclid(day_ms) + 1) * day_ms;
    u64::try_from((next - now_ms + 999) / 1000).unwrap_or(0)
}
