//! Budgets: the tenant's daily and monthly USD limits (tier defaults, operator overrides),
//! enforced reserve-then-settle through the limiter (in-process, or Redis shared by every
//! instance). A window this process has not used yet starts from what the usage store says was
//! spent in it, so a restart does not hand a tenant its budget again.
use crate::{Guard, GuardError};
use portcullis_core::timefmt::{next_utc_midnight_ms, utc_date, utc_month};
use portcullis_core::{TenantId, TenantScope};
use portcullis_limiter::{BudgetExceeded, BudgetRequest, BudgetWindow, Reservation};

pub enum BudgetOutcome {
    /// The tenant has no budget.
    Unbudgeted,
    Reserved(Reservation),
    Exceeded(BudgetExceeded),
    /// The shared limiter cannot decide and fails closed.
    Unavailable,
}

/// A budget window as the UI shows it: settled spend (written every second) against the limit.
#[derive(Clone, Debug)]
pub struct WindowStatus {
    pub kind: &'static str,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub id: String,
    pub limit_nanos: Option<i64>,
    pub spent_nanos: i64,
    pub reset_ms: i64,
}

impl Guard {
    /// The tenant's daily and monthly spend and limits (`None` when there is no such tenant).
    pub async fn budget_status(&self, tenant: &TenantId) -> Result<Option<[WindowStatus; 2]>, GuardError> {
        let Some(eff) = self.effective_limits(tenant).await? else { return Ok(None) };
        let now = self.now_ms();
        let today = utc_date(now);
        let (month, month_reset) = utc_month(now);
        let scope = TenantScope::authorized(tenant.clone(), false);
        let rows = self.store.usage(&scope, &format!("{month}-01"), &today).await?;
        let sum = |f: &dyn Fn(&str) -> bool| {
            rows.iter().filter(|r| f(&r.day)).fold(0i64, |a, r| a.saturating_add(r.cost_nanos))
        };
        Ok(Some([
            WindowStatus {
                kind: "daily",
                spent_nanos: sum(&|d| d == today),
                id: today.clone(),
                limit_nanos: eff.budget_nanos_per_day,
                reset_ms: next_utc_midnight_ms(now),
            },
            WindowStatus {
                kind: "monthly",
                spent_nanos: sum(&|_| true),
                id: month,
                limit_nanos: eff.budget_nanos_per_month,
                reset_ms: month_reset,
            },
        ]))
    }

    /// Reserves `amount_nanos` (at least 1, so an exhausted budget refuses even unpriced calls)
    /// in each of the tenant's budget windows, or in none.
    pub async fn reserve_budget(&self, tenant: &TenantId, amount_nanos: i64) -> Result<BudgetOutcome, GuardError> {
        let Some(eff) = self.effective_limits(tenant).await? else { return Err(GuardError::NotFound) };
        let now = self.now_ms();
        let mut windows = Vec::with_capacity(2);
        if let Some(limit) = eff.budget_nanos_per_day {
            windows.push(BudgetWindow {
                kind: "daily",
                id: utc_date(now),
                limit_nanos: limit,
                reset_ms: next_utc_midnight_ms(now),
                baseline_nanos: None,
            });
        }
        if let Some(limit) = eff.budget_nanos_per_month {
            let (id, reset_ms) = utc_month(now);
            windows.push(BudgetWindow { kind: "monthly", id, limit_nanos: limit, reset_ms, baseline_nanos: None });
        }
        if windows.is_empty() {
            return Ok(BudgetOutcome::Unbudgeted);
        }
        let mut fresh = Vec::new();
        for w in &mut windows {
            let key = (tenant.to_string(), w.id.clone());
            if !self.budget_seeded.contains_key(&key) {
                w.baseline_nanos = Some(self.spent_in(tenant, w).await?);
                fresh.push(key);
            }
        }
        let req = BudgetRequest {
            tenant: tenant.as_str(),
            windows: &windows,
            amount_nanos: amount_nanos.max(1),
            now_ms: now,
        };
        let outcome = match self.limiter.reserve_budget(&req).await {
            Err(_) => return Ok(BudgetOutcome::Unavailable),
            Ok(Ok(r)) => BudgetOutcome::Reserved(r),
            Ok(Err(e)) => BudgetOutcome::Exceeded(e),
        };
        for key in fresh {
            self.budget_seeded.insert(key, ());
        }
        Ok(outcome)
    }

    /// Settles in the background (the response has ended; nobody waits for this).
    pub fn settle_budget(&self, r: Reservation, actual_nanos: i64) {
        let limiter = self.limiter.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { limiter.settle_budget(&r, actual_nanos).await });
        }
    }

    /// What the usage store holds as spent in a window (this process's unwritten usage first).
    async fn spent_in(&self, tenant: &TenantId, w: &BudgetWindow) -> Result<i64, GuardError> {
        if let Err(e) = self.flush_usage_ledger().await {
            tracing::warn!(error = %e, "usage not yet written; a budget window starts from what is");
        }
        let (from, to) = if w.kind == "monthly" {
            (format!("{}-01", w.id), utc_date(self.now_ms()))
        } else {
            (w.id.clone(), w.id.clone())
        };
        let scope = TenantScope::authorized(tenant.clone(), false);
        let rows = self.store.usage(&scope, &from, &to).await?;
        Ok(rows.iter().fold(0i64, |a, r| a.saturating_add(r.cost_nanos)))
    }
}
