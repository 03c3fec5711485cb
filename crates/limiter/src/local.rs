//! In-process limits for the embedded shape. Rate limits are governor GCRA buckets (one per
//! key, created with that key's quota, replaced when the quota changes); concurrency is a tokio
//! semaphore per tenant whose owned permit travels with the response body; quotas are per-tenant
//! counters for the current UTC day.
//!
//! Accuracy trade-off: limits are checked in order (global, tenant, principal, route,
//! concurrency, quota) and governor cannot give a cell back, so a request rejected by a later
//! limit has still used a cell of the earlier ones. This can only under-admit, never over-admit.
//! Quota and concurrency are counted only for requests every other limit admitted.
//! State is per process: it resets when the process restarts.
use crate::*;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::sync::Semaphore;

type Bucket =
    RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock, StateInformationMiddleware>;

struct Rate {
    per: u32,
    bucket: Bucket,
}

struct Pool {
    cap: u32,
    sem: Arc<Semaphore>,
}

struct Day {
    day: i64,
    used: u64,
}

#[derive(Default)]
pub struct LocalLimiter {
    rates: DashMap<String, Arc<Rate>>,
    pools: DashMap<String, Pool>,
    days: DashMap<String, Day>,
    clock: DefaultClock,
    budgets: crate::budget::LocalBudgets,
}

enum Period {
    Minute,
    Second,
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket of the key spelled by `parts` (one lookup in a reused buffer; the key is
    /// allocated only when the bucket is made).
    fn bucket(&self, parts: &[&str], per: u32, period: Period) -> Arc<Rate> {
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with_borrow_mut(|key| {
            key.clear();
            for p in parts {
                key.push_str(p);
            }
            if let Some(r) = self.rates.get(key.as_str())
                && r.per == per
            {
                return r.clone();
            }
            let n = NonZeroU32::new(per.max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = match period {
                Period::Minute => Quota::per_minute(n),
                Period::Second => Quota::per_second(n),
            };
            let r = Arc::new(Rate {
                per,
                bucket: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            });
            self.rates.insert(key.clone(), r.clone());
            r
        })
    }

    /// Takes one cell; on refusal returns the seconds until one is free.
    fn take(&self, r: &Rate) -> Result<(u32, u64), u64> {
        match r.bucket.check() {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                let used = r.per.saturating_sub(remaining);
                let per_cell_ms = 60_000 / u64::from(r.per.max(1));
                Ok((remaining, (u64::from(used) * per_cell_ms).div_ceil(1000)))
            }
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now()).as_secs().max(1)),
        }
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn reserve_budget(
        &self,
        req: &BudgetRequest<'_>,
    ) -> Result<Result<Reservation, BudgetExceeded>, BudgetUnavailable> {
        Ok(self.budgets.reserve(req))
    }

    async fn settle_budget(&self, r: &Reservation, actual_nanos: i64) {
        self.budgets.settle(r, actual_nanos);
    }

    async fn admit(&self, req: &LimitRequest<'_>) -> Result<Admission, Rejection> {
        let l = req.limits;
        let tenant_rate = self.bucket(&["t:", req.tenant], l.tenant_per_minute, Period::Minute);
        let mut info = RateInfo { limit: l.tenant_per_minute, remaining: 0, reset_secs: 60 };
        let reject = |kind, retry_after_secs, rate| Err(Rejection { kind, retry_after_secs, rate });
        if let Some(g) = l.global_per_second {
            let b = self.bucket(&["g"], g, Period::Second);
            if let Err(wait) = self.take(&b) {
                return reject(LimitKind::Global, wait, info);
            }
        }
        match self.take(&tenant_rate) {
            Ok((remaining, reset)) => {
                info.remaining = remaining;
                info.reset_secs = reset;
            }
            Err(wait) => {
                info.reset_secs = wait;
                return reject(LimitKind::Tenant, wait, info);
            }
        }
        let p = self.bucket(&["p:", req.tenant, ":", req.principal], l.principal_per_minute, Period::Minute);
        if let Err(wait) = self.take(&p) {
            return reject(LimitKind::Principal, wait, info);
        }
        if let Some(per) = l.route_per_minute {
            let r = self.bucket(&["r:", req.tenant, ":", req.route], per, Period::Minute);
            if let Err(wait) = self.take(&r) {
                return reject(LimitKind::Route, wait, info);
            }
        }
        let slot = if req.hold_slot {
            let sem = {
                let mut pool = match self.pools.get_mut(req.tenant) {
                    Some(p) => p,
                    None => self.pools.entry(req.tenant.to_owned()).or_insert_with(|| Pool {
                        cap: l.concurrency,
                        sem: Arc::new(Semaphore::new(l.concurrency as usize)),
                    }),
                };
                if pool.cap != l.concurrency {
                    // A changed cap starts a new pool; slots held on the old one drain with their requests.
                    *pool = Pool { cap: l.concurrency, sem: Arc::new(Semaphore::new(l.concurrency as usize)) };
                }
                pool.sem.clone()
            };
            match sem.try_acquire_owned() {
                Ok(permit) => Some(Slot::new(permit)),
                Err(_) => return reject(LimitKind::Concurrency, 1, info),
            }
        } else {
            None
        };
        let today = req.now_ms.div_euclid(86_400_000);
        let mut day = match self.days.get_mut(req.tenant) {
            Some(d) => d,
            None => self.days.entry(req.tenant.to_owned()).or_insert(Day { day: today, used: 0 }),
        };
        if day.day != today {
            *day = Day { day: today, used: 0 };
        }
        if day.used >= l.requests_per_day {
            return reject(LimitKind::Quota, seconds_to_utc_midnight(req.now_ms), info);
        }
        day.used += 1;
        let quota_remaining = l.requests_per_day - day.used;
        Ok(Admission { rate: info, slot, quota_remaining })
    }

    fn in_flight(&self, tenant: &str) -> u32 {
        self.pools
            .get(tenant)
            .map(|p| p.cap.saturating_sub(u32::try_from(p.sem.available_permits()).unwrap_or(u32::MAX)))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32, concurrency: u32, per_day: u64) -> Limits {
        Limits {
            tenant_per_minute: per_minute,
            principal_per_minute: 1000,
            route_per_minute: None,
            global_per_second: None,
            concurrency,
            requests_per_day: per_day,
        }
    }

    fn req<'a>(l: &'a Limits, hold: bool) -> LimitRequest<'a> {
        LimitRequest { tenant: "t", principal: "p", route: "/r", limits: l, hold_slot: hold, now_ms: 1_000 }
    }

    #[tokio::test]
    async fn rate_admits_exactly_the_limit_then_rejects_with_headers() {
        let lim = LocalLimiter::new();
        let l = limits(10, 100, 1000);
        for i in 0..10u32 {
            let a = lim.admit(&req(&l, false)).await.map_err(|r| r.kind);
            assert_eq!(a.as_ref().map(|a| a.rate.remaining).ok(), Some(9 - i));
        }
        let r = lim.admit(&req(&l, false)).await.err().map(|r| (r.kind, r.rate.limit, r.retry_after_secs >= 1));
        assert_eq!(r, Some((LimitKind::Tenant, 10, true)));
    }

    #[tokio::test]
    async fn concurrency_slots_come_back_when_dropped() {
        let lim = LocalLimiter::new();
        let l = limits(1000, 2, 1000);
        let a = lim.admit(&req(&l, true)).await.ok();
        let b = lim.admit(&req(&l, true)).await.ok();
        assert!(a.is_some() && b.is_some());
        assert_eq!(lim.in_flight("t"), 2);
        assert_eq!(lim.admit(&req(&l, true)).await.err().map(|r| r.kind), Some(LimitKind::Concurrency));
        drop(a);
        assert!(lim.admit(&req(&l, true)).await.is_ok());
    }

    #[tokio::test]
    async fn daily_quota_counts_admitted_requests_and_resets_at_midnight() {
        let lim = LocalLimiter::new();
        let l = limits(1000, 10, 3);
        for _ in 0..3 {
            assert!(lim.admit(&req(&l, false)).await.is_ok());
        }
        assert_eq!(lim.admit(&req(&l, false)).await.err().map(|r| r.kind), Some(LimitKind::Quota));
        let mut next_day = req(&l, false);
        next_day.now_ms = 86_400_000 + 5;
        assert!(lim.admit(&next_day).await.is_ok());
    }

    #[test]
    fn midnight() {
        assert_eq!(seconds_to_utc_midnight(0), 86_400);
        assert_eq!(seconds_to_utc_midnight(86_399_000), 1);
    }
}
