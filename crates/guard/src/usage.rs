//! Usage per tenant, day, caller, model and route: counted in memory on the request path (one
//! map update when a proxied response ends) and added to the store's counters by the
//! maintenance task every `cache_refresh` (1 s by default), costs priced from the tenant's
//! model profiles at that moment. Several instances add to the same rows.
use crate::Guard;
use portcullis_core::{TenantId, TenantScope};
use portcullis_store::{LatencyBucket, LedgerBatch, ModelMinute, ModelProfile, StoreError, UsageRow};
use std::collections::HashMap;
use std::sync::Arc;

/// One finished proxied request.
#[derive(Clone, Debug)]
pub struct UsageEvent {
    pub tenant: TenantId,
    /// The caller as the audit log names it.
    pub principal: String,
    /// The model the response (or else the request) named; empty for non-model traffic.
    pub model: String,
    pub route: String,
    pub status: u16,
    pub latency_ms: u64,
    /// The same, in microseconds (for the model's latency histogram).
    pub latency_us: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cost charged without token counts (added as is; tokens are priced at the flush).
    pub unmetered_nanos: i64,
    pub at_ms: i64,
}

/// (tenant, UTC day number, caller, model, route): the day is formatted only when a row is made.
type Key = (String, i64, String, String, String);

type MinuteKey = (String, String, i64);
/// A model's minute: its counters and its latency buckets (bucket → count).
type MinuteEntry = (ModelMinute, HashMap<i64, i64>);

pub struct UsageLedger {
    pending: std::sync::Mutex<HashMap<Key, UsageRow>>,
    /// Per (tenant, model, minute): counters and latency buckets.
    minutes: std::sync::Mutex<HashMap<MinuteKey, MinuteEntry>>,
    /// A priced batch whose write failed. Its outcome is unknown (the commit may have landed and
    /// only its answer been lost), so it is sent again as it is, under the same id, before
    /// anything newer: the store skips it if it did land.
    held_usage: std::sync::Mutex<Option<(i64, Vec<UsageRow>)>>,
    held_minutes: std::sync::Mutex<Option<HeldMinutes>>,
    /// The next batch id: random at start, so a restarted process never reuses its previous
    /// life's last id.
    next_batch: std::sync::atomic::AtomicI64,
}

type HeldMinutes = (i64, Vec<ModelMinute>, Vec<LatencyBucket>);

impl Default for UsageLedger {
    fn default() -> Self {
        let seed = crate::random_bytes::<8>().map(i64::from_le_bytes).unwrap_or_else(|_| {
            // No randomness: the clock in nanoseconds is as unlikely to repeat a previous life's id.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        });
        Self {
            pending: std::sync::Mutex::default(),
            minutes: std::sync::Mutex::default(),
            held_usage: std::sync::Mutex::default(),
            held_minutes: std::sync::Mutex::default(),
            next_batch: std::sync::atomic::AtomicI64::new(seed),
        }
    }
}

/// Takes what a mutex holds, even from a poisoned one.
fn take_held<T>(m: &std::sync::Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

fn hold<T>(m: &std::sync::Mutex<Option<T>>, v: T) {
    *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const DAY_MS: i64 = 86_400_000;

impl UsageLedger {
    pub fn record(&self, e: UsageEvent) {
        // One request's counters; the rows it is added to carry the keys.
        let (s2, s4, s5) = match e.status {
            200..=399 => (1, 0, 0),
            400..=499 => (0, 1, 0),
            _ => (0, 0, 1),
        };
        let one = UsageRow {
            requests: 1,
            status_2xx: s2,
            status_4xx: s4,
            status_5xx: s5,
            input_tokens: clamp(e.input_tokens),
            output_tokens: clamp(e.output_tokens),
            latency_ms_sum: clamp(e.latency_ms),
            cost_nanos: e.unmetered_nanos,
            ..UsageRow::default()
        };
        if !e.model.is_empty() {
            let minute = e.at_ms.div_euclid(60_000);
            let mut minutes = self.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (m, hist) = minutes.entry((e.tenant.to_string(), e.model.clone(), minute)).or_insert_with_key(|k| {
                (
                    ModelMinute { tenant_id: k.0.clone(), model: k.1.clone(), minute, ..ModelMinute::default() },
                    HashMap::new(),
                )
            });
            m.add(&ModelMinute {
                requests: one.requests,
                status_2xx: one.status_2xx,
                status_4xx: one.status_4xx,
                status_5xx: one.status_5xx,
                input_tokens: one.input_tokens,
                output_tokens: one.output_tokens,
                cost_nanos: one.cost_nanos,
                ..ModelMinute::default()
            });
            *hist.entry(portcullis_core::histogram::bucket(e.latency_us)).or_insert(0) += 1;
        }
        let key = (e.tenant.to_string(), e.at_ms.div_euclid(DAY_MS), e.principal, e.model, e.route);
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending
            .entry(key)
            .or_insert_with_key(|k| UsageRow {
                tenant_id: k.0.clone(),
                day: portcullis_core::timefmt::utc_date(k.1 * DAY_MS),
                principal_id: k.2.clone(),
                model: k.3.clone(),
                route: k.4.clone(),
                ..UsageRow::default()
            })
            .add(&one);
    }

    fn take_minutes(&self) -> Vec<MinuteEntry> {
        let mut m = self.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *m).into_values().collect()
    }

    /// Puts minutes back after a failed write, adding to whatever arrived meanwhile.
    fn restore_minutes(&self, rows: Vec<MinuteEntry>) {
        let mut all = self.minutes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (r, hist) in rows {
            let (m, h) = all.entry((r.tenant_id.clone(), r.model.clone(), r.minute)).or_insert_with(|| {
                (
                    ModelMinute {
                        tenant_id: r.tenant_id.clone(),
                        model: r.model.clone(),
                        minute: r.minute,
                        ..ModelMinute::default()
                    },
                    HashMap::new(),
                )
            });
            m.add(&r);
            for (b, c) in hist {
                *h.entry(b).or_insert(0) += c;
            }
        }
    }

    fn take(&self) -> Vec<UsageRow> {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *pending).into_values().collect()
    }

    /// Puts rows back after a failed write, adding to whatever arrived meanwhile.
    fn restore(&self, rows: Vec<UsageRow>) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in rows {
            let day = portcullis_core::timefmt::parse_rfc3339_ms(&format!("{}T00:00:00Z", r.day)).unwrap_or(0) / DAY_MS;
            let key = (r.tenant_id.clone(), day, r.principal_id.clone(), r.model.clone(), r.route.clone());
            pending.entry(key).or_insert_with(|| UsageRow::keys_of(&r)).add(&r);
        }
    }
}

/// Nano-USD for token counts at prices in micro-USD per 1 000 tokens (= nano-USD per token),
/// saturating.
pub fn cost_nanos_u64(in_price: i64, out_price: i64, input: u64, output: u64) -> i64 {
    clamp(input).saturating_mul(in_price).saturating_add(clamp(output).saturating_mul(out_price))
}

/// The same at a profile's prices.
pub fn cost_nanos(p: &ModelProfile, input: i64, output: i64) -> i64 {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    cost_nanos_u64(p.input_price_micros_per_1k, p.output_price_micros_per_1k, n(input), n(output))
}

impl Guard {
    pub fn record_usage(&self, e: UsageEvent) {
        self.usage.record(e);
    }

    /// The tenant's model profiles, from cache (dropped on a `model_profiles` change).
    pub async fn model_profiles(&self, tenant: &TenantId) -> Result<Arc<Vec<ModelProfile>>, StoreError> {
        if let Some(p) = self.cache.model_profiles.get(tenant) {
            return Ok(p.clone());
        }
        let generation = self.cache.generation();
        let scope = TenantScope::authorized(tenant.clone(), false);
        let profiles = Arc::new(self.store.list_model_profiles(&scope).await?);
        self.cache.model_profiles.insert(tenant.clone(), profiles.clone());
        if self.cache.stale_since(generation) {
            self.cache.model_profiles.remove(tenant);
        }
        Ok(profiles)
    }

    pub fn invalidate_model_profiles(&self, tenant: &TenantId) {
        self.cache.remove_model_profiles(tenant);
    }

    /// What `input` and `output` tokens of `model` cost the tenant (nano-USD) at its model
    /// profile's prices; 0 for a model without a profile.
    pub(crate) async fn token_cost(
        &self,
        tenant: &str,
        model: &str,
        input: i64,
        output: i64,
    ) -> Result<i64, StoreError> {
        if model.is_empty() || (input == 0 && output == 0) {
            return Ok(0);
        }
        let Ok(tenant) = TenantId::parse(tenant) else { return Ok(0) };
        let profiles = self.model_profiles(&tenant).await?;
        Ok(profiles.iter().find(|p| p.model == model).map_or(0, |p| cost_nanos(p, input, output)))
    }

    /// Prices what accumulated and adds it to the store. On failure the rows are kept for the
    /// next attempt (nothing is lost while the process lives), and counted once whatever the
    /// failed attempt did (see [`portcullis_store::LedgerBatch`]).
    pub async fn flush_usage_ledger(&self) -> Result<(), StoreError> {
        let _one = self.usage_flush.lock().await;
        self.flush_model_minutes().await?;
        let writer = self.audit.writer_id();
        if let Some((id, rows)) = take_held(&self.usage.held_usage)
            && let Err(e) = self.store.add_usage(LedgerBatch { writer, id }, &rows).await
        {
            hold(&self.usage.held_usage, (id, rows));
            return Err(e);
        }
        let rows = self.usage.take();
        if rows.is_empty() {
            return Ok(());
        }
        // Priced on a copy: if pricing fails the rows go back as they were.
        let mut priced = rows.clone();
        for r in &mut priced {
            match self.token_cost(&r.tenant_id, &r.model, r.input_tokens, r.output_tokens).await {
                Ok(c) => r.cost_nanos = r.cost_nanos.saturating_add(c),
                Err(e) => {
                    self.usage.restore(rows);
                    return Err(e);
                }
            }
        }
        let id = self.usage.next_batch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.store.add_usage(LedgerBatch { writer, id }, &priced).await {
            hold(&self.usage.held_usage, (id, priced));
            return Err(e);
        }
        Ok(())
    }

    /// Writes the per-model minutes (priced like usage), kept for the next attempt on failure.
    async fn flush_model_minutes(&self) -> Result<(), StoreError> {
        let writer = self.audit.writer_id();
        if let Some((id, minutes, buckets)) = take_held(&self.usage.held_minutes)
            && let Err(e) = self.store.add_model_metrics(LedgerBatch { writer, id }, &minutes, &buckets).await
        {
            hold(&self.usage.held_minutes, (id, minutes, buckets));
            return Err(e);
        }
        let rows = self.usage.take_minutes();
        if rows.is_empty() {
            return Ok(());
        }
        let mut minutes: Vec<ModelMinute> = rows.iter().map(|(m, _)| m.clone()).collect();
        for m in &mut minutes {
            match self.token_cost(&m.tenant_id, &m.model, m.input_tokens, m.output_tokens).await {
                Ok(c) => m.cost_nanos = m.cost_nanos.saturating_add(c),
                Err(e) => {
                    self.usage.restore_minutes(rows);
                    return Err(e);
                }
            }
        }
        let buckets: Vec<LatencyBucket> = rows
            .iter()
            .flat_map(|(m, h)| {
                h.iter().map(|(b, c)| LatencyBucket {
                    tenant_id: m.tenant_id.clone(),
                    model: m.model.clone(),
                    minute: m.minute,
                    bucket: *b,
                    count: *c,
                })
            })
            .collect();
        let id = self.usage.next_batch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.store.add_model_metrics(LedgerBatch { writer, id }, &minutes, &buckets).await {
            hold(&self.usage.held_minutes, (id, minutes, buckets));
            return Err(e);
        }
        Ok(())
    }
}
