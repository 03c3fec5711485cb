//! Budgets in nano-USD per tenant and window (a UTC day, a UTC month), reserve-then-settle:
//! admission reserves the request's most it can cost in every window at once, or none; the
//! response's end settles the real cost and gives the rest back. Concurrent requests therefore
//! cannot overrun a window's limit: what is reserved counts as spent until settled.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetWindow {
    /// `daily` or `monthly`.
    pub kind: &'static str,
    /// `2026-12-02` or `2026-12`.
    pub id: String,
    pub limit_nanos: i64,
    /// Unix ms when the window ends (the next one starts).
    pub reset_ms: i64,
    /// Spent in this window before this process knew it (from the usage store); applied only
    /// when the limiter holds nothing for the window yet.
    pub baseline_nanos: Option<i64>,
}

pub struct BudgetRequest<'a> {
    pub tenant: &'a str,
    pub windows: &'a [BudgetWindow],
    pub amount_nanos: i64,
    pub now_ms: i64,
}

/// How full a window is after a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowUse {
    pub kind: &'static str,
    pub id: String,
    /// Spent and reserved, this reservation included.
    pub used_nanos: i64,
    pub limit_nanos: i64,
    pub reset_ms: i64,
    /// This reservation took the window to 90 % first (exactly one per window).
    pub first_warning: bool,
}

impl WindowUse {
    pub fn at_warning(&self) -> bool {
        i128::from(self.used_nanos) * 10 >= i128::from(self.limit_nanos) * 9
    }
}

/// A reservation to settle: dropping it without settling keeps the amount counted as spent
/// (never an overrun) until the window ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub tenant: String,
    pub amount_nanos: i64,
    pub windows: Vec<WindowUse>,
    /// Decided by the in-process limiter (embedded shape, or the Redis fail mode `local`).
    pub local: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub window: BudgetWindow,
    /// Spent and reserved before this request.
    pub used_nanos: i64,
    pub amount_nanos: i64,
}

/// In-process budgets (embedded shape; the Redis limiter's `local` fail mode).
#[derive(Default)]
pub struct LocalBudgets {
    windows: std::sync::Mutex<std::collections::HashMap<(String, String), Window>>,
}

#[derive(Default)]
struct Window {
    spent: i64,
    reserved: i64,
    warned: bool,
    reset_ms: i64,
}

impl LocalBudgets {
    pub fn reserve(&self, req: &BudgetRequest<'_>) -> Result<Reservation, BudgetExceeded> {
        let mut all = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|_, w| w.reset_ms > req.now_ms);
        for w in req.windows {
            let e = all.entry((req.tenant.to_owned(), w.id.clone())).or_insert_with(|| Window {
                spent: w.baseline_nanos.unwrap_or(0),
                reset_ms: w.reset_ms,
                ..Window::default()
            });
            let used = e.spent.saturating_add(e.reserved);
            if used.saturating_add(req.amount_nanos) > w.limit_nanos {
                return Err(BudgetExceeded { window: w.clone(), used_nanos: used, amount_nanos: req.amount_nanos });
            }
        }
        let mut uses = Vec::with_capacity(req.windows.len());
        for w in req.windows {
            let Some(e) = all.get_mut(&(req.tenant.to_owned(), w.id.clone())) else { continue };
            e.reserved = e.reserved.saturating_add(req.amount_nanos);
            let mut u = WindowUse {
                kind: w.kind,
                id: w.id.clone(),
                used_nanos: e.spent.saturating_add(e.reserved),
                limit_nanos: w.limit_nanos,
                reset_ms: w.reset_ms,
                first_warning: false,
            };
            if u.at_warning() && !e.warned {
                e.warned = true;
                u.first_warning = true;
            }
            uses.push(u);
        }
        Ok(Reservation { tenant: req.tenant.to_owned(), amount_nanos: req.amount_nanos, windows: uses, local: true })
    }

    pub fn settle(&self, r: &Reservation, actual_nanos: i64) {
        let mut all = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for w in &r.windows {
            if let Some(e) = all.get_mut(&(r.tenant.clone(), w.id.clone())) {
                e.reserved = e.reserved.saturating_sub(r.amount_nanos).max(0);
                e.spent = e.spent.saturating_add(actual_nanos);
            }
        }
    }
}
