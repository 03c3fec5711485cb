//! The scale-out limiter: every decision in Redis while Redis answers within the timeout, and the
//! configured fail mode while it does not.
//!
//! - `fail_closed`: refuse (503 with Retry-After, kind [`LimitKind::Unavailable`]). Limits stay
//!   exact — nothing is admitted that Redis would have refused — at the price of availability.
//! - `local`: decide with this instance's in-process limiter ([`LocalLimiter`]), each limit
//!   divided by `fallback_divisor` (set it to the instance count to keep the deployment near its
//!   limits). Traffic keeps flowing; limits are per instance and start from zero, so a deployment
//!   of N instances may admit up to N / divisor times a limit while Redis is away, and a day's
//!   quota counted locally is forgotten when Redis returns.
//!
//! The first failed call (error or timeout) marks the limiter degraded; from then on decisions
//! go straight to the fail mode without touching Redis, so a hung server costs at most one
//! timeout per request in flight when it hung, not one per request. A probe task asks Redis for
//! its time every `probe_interval`; the first answer ends the degraded state — no restart.
use crate::local::LocalLimiter;
use crate::redis::{RedisLimiter, RedisSettings, Unavailable};
use crate::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    FailClosed,
    Local,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::FailClosed => "fail_closed",
            FailMode::Local => "local",
        }
    }
}

impl std::str::FromStr for FailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail_closed" => Ok(FailMode::FailClosed),
            "local" => Ok(FailMode::Local),
            other => Err(format!("unknown fail mode `{other}`: expected `fail_closed` or `local`")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SharedSettings {
    pub redis: RedisSettings,
    pub fail_mode: FailMode,
    /// While degraded: how often to ask Redis whether it is back.
    pub probe_interval: Duration,
    /// `local` mode: each instance enforces every limit divided by this (at least 1 each).
    pub fallback_divisor: u32,
}

/// The refusal of a decision that could not be made (fail closed).
pub fn unavailable(limits: &Limits) -> Rejection {
    Rejection {
        kind: LimitKind::Unavailable,
        retry_after_secs: 1,
        rate: RateInfo { limit: limits.tenant_per_minute, remaining: 0, reset_secs: 1 },
    }
}

struct Inner {
    redis: RedisLimiter,
    fallback: LocalLimiter,
    mode: FailMode,
    divisor: u32,
    probe_interval: Duration,
    degraded: AtomicBool,
    since: Mutex<Option<Degraded>>,
}

pub struct SharedLimiter(Arc<Inner>);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn share(x: u32, n: u32) -> u32 {
    x.div_ceil(n.max(1)).max(1)
}

impl Inner {
    /// Enters the degraded state (or refreshes its reason); logs the transition once.
    fn degrade(&self, op: &'static str, e: &Unavailable) {
        metrics::counter!("portcullis_limiter_redis_errors_total", "op" => op, "kind" => e.label()).increment(1);
        let reason = e.to_string();
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        match since.as_mut() {
            Some(d) => d.reason = reason,
            None => {
                *since = Some(Degraded { reason: reason.clone(), since_ms: now_ms() });
                self.degraded.store(true, Ordering::Release);
                metrics::gauge!("portcullis_limiter_degraded").set(1.0);
                tracing::error!(
                    error = %reason,
                    fail_mode = self.mode.as_str(),
                    "redis limiter unavailable: deciding with the fail mode until redis answers again"
                );
            }
        }
    }

    fn recover(&self) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = since.take() {
            self.degraded.store(false, Ordering::Release);
            metrics::gauge!("portcullis_limiter_degraded").set(0.0);
            tracing::info!(degraded_ms = now_ms() - d.since_ms, "redis limiter answers again: limits are shared again");
        }
    }

    async fn fallback(&self, req: &LimitRequest<'_>) -> Result<Admission, Rejection> {
        metrics::counter!("portcullis_limiter_fallback_decisions_total", "mode" => self.mode.as_str()).increment(1);
        match self.mode {
            FailMode::FailClosed => Err(unavailable(req.limits)),
            FailMode::Local => {
                let l = req.limits;
                let n = self.divisor;
                let scaled = Limits {
                    tenant_per_minute: share(l.tenant_per_minute, n),
                    principal_per_minute: share(l.principal_per_minute, n),
                    route_per_minute: l.route_per_minute.map(|r| share(r, n)),
                    global_per_second: l.global_per_second.map(|g| share(g, n)),
                    concurrency: share(l.concurrency, n),
                    requests_per_day: l.requests_per_day.div_ceil(u64::from(n.max(1))).max(1),
                };
                let local = LimitRequest { limits: &scaled, ..*req };
                self.fallback.admit(&local).await
            }
        }
    }
}

impl SharedLimiter {
    /// Prepares the connection and asks Redis once (bounded by the timeout). Redis being down
    /// is not an error: the limiter starts degraded and recovers when Redis answers. Only a
    /// URL that cannot be used is.
    pub async fn start(s: SharedSettings) -> Result<SharedLimiter, Unavailable> {
        let redis = RedisLimiter::open(&s.redis)?.with_lease(s.redis.lease);
        let inner = Arc::new(Inner {
            redis,
            fallback: LocalLimiter::new(),
            mode: s.fail_mode,
            divisor: s.fallback_divisor.max(1),
            probe_interval: s.probe_interval,
            degraded: AtomicBool::new(false),
            since: Mutex::new(None),
        });
        metrics::gauge!("portcullis_limiter_degraded").set(0.0);
        // Asked once here, on the caller's thread and its own connection (each deciding thread
        // makes its own on first use, see `RedisLimiter`).
        if let Err(e) = inner.redis.ping().await {
            inner.degrade("probe", &e);
        }
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Ok(SharedLimiter(inner))
    }

    pub fn fail_mode(&self) -> FailMode {
        self.0.mode
    }
}

/// While degraded, asks Redis every `probe_interval` until it answers; otherwise only looks at a
/// flag. Holds no strong reference while it sleeps, and ends with the limiter.
async fn probe(inner: Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        let interval = i.probe_interval;
        if i.degraded.load(Ordering::Acquire) {
            match i.redis.ping_all().await {
                Ok(()) => i.recover(),
                Err(e) => i.degrade("probe", &e),
            }
        }
        drop(i);
        tokio::time::sleep(interval).await;
    }
}

#[async_trait]
impl Limiter for SharedLimiter {
    async fn admit(&self, req: &LimitRequest<'_>) -> Result<Admission, Rejection> {
        let i = &self.0;
        if !i.degraded.load(Ordering::Acquire) {
            match i.redis.try_admit(req).await {
                Ok(decision) => return decision,
                Err(e) => i.degrade("admit", &e),
            }
        }
        i.fallback(req).await
    }

    async fn reserve_budget(
        &self,
        req: &BudgetRequest<'_>,
    ) -> Result<Result<Reservation, BudgetExceeded>, BudgetUnavailable> {
        let i = &self.0;
        if !i.degraded.load(Ordering::Acquire) {
            match i.redis.try_reserve(req).await {
                Ok(decision) => return Ok(decision),
                Err(e) => i.degrade("reserve", &e),
            }
        }
        metrics::counter!("portcullis_limiter_fallback_decisions_total", "mode" => i.mode.as_str()).increment(1);
        match i.mode {
            FailMode::FailClosed => Err(BudgetUnavailable),
            // Per instance while Redis is away: each instance spends at most the whole budget
            // (documented: the fail mode `local` trades exactness for availability).
            FailMode::Local => i.fallback.reserve_budget(req).await,
        }
    }

    async fn settle_budget(&self, r: &Reservation, actual_nanos: i64) {
        if r.local {
            self.0.fallback.settle_budget(r, actual_nanos).await;
        } else if let Err(e) = self.0.redis.try_settle(r, actual_nanos).await {
            tracing::warn!(error = %e, "budget settlement lost; the reservation stays counted until its window ends");
        }
    }

    fn in_flight(&self, tenant: &str) -> u32 {
        self.0.redis.held(tenant) + self.0.fallback.in_flight(tenant)
    }

    fn health(&self) -> LimiterHealth {
        let since = self.0.since.lock().unwrap_or_else(PoisonError::into_inner);
        LimiterHealth { backend: "redis", fail_mode: Some(self.0.mode.as_str()), degraded: since.clone() }
    }
}
