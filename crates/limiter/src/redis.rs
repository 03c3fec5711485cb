//! Limits shared by every instance, in Redis: one atomic script per decision (all limits that
//! apply in one round trip), time from Redis (`TIME`), never from the instance clock, and a TTL
//! on every key. Rate limits are exact across instances: the script checks every bucket first
//! and commits them only when all admit, so nothing is over-admitted and a refusal consumes
//! nothing. Concurrency slots are leases in a sorted set scored by their expiry: a crashed
//! instance's slots come back when their leases run out; a live slot's lease is renewed while
//! it is held.
use crate::*;
use ::redis::aio::ConnectionManager;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// KEYS: 1 tenant bucket, 2 principal bucket, 3 route bucket, 4 global bucket, 5 slot set,
///       6 daily quota counter.
/// ARGV: 1 tenant/min, 2 principal/min, 3 route/min (0 = none), 4 global/s (0 = none),
///       5 concurrency cap, 6 hold slot (0/1), 7 lease id, 8 lease ms, 9 requests/day.
/// Returns {admitted, kind, retry_after_ms, remaining, reset_ms, quota_remaining, now_ms}.
/// Buckets are GCRA: the key holds the theoretical arrival time (TAT) in ms; a request is
/// admitted when TAT - now <= tau, i.e. within the burst of `limit` per period.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local specs = {
  {KEYS[4], tonumber(ARGV[4]), 1000, 1},
  {KEYS[1], tonumber(ARGV[1]), 60000, 2},
  {KEYS[2], tonumber(ARGV[2]), 60000, 3},
  {KEYS[3], tonumber(ARGV[3]), 60000, 4},
}
local new_tats = {}
local remaining, reset = 0, 0
for i, s in ipairs(specs) do
  local limit = s[2]
  if limit > 0 then
    local interval = s[3] / limit
    local tau = interval * (limit - 1)
    local tat = tonumber(redis.call('GET', s[1])) or now
    if tat < now then tat = now end
    if tat - now > tau then
      return {0, s[4], math.ceil(tat - now - tau), 0, math.ceil(tat - now), 0, now}
    end
    new_tats[i] = tat + interval
    if s[4] == 2 then
      remaining = math.floor((tau - (tat - now)) / interval)
      reset = math.ceil(new_tats[i] - now)
    end
  end
end
local hold = tonumber(ARGV[6]) == 1
if hold then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[5]) then
    return {0, 5, 1000, remaining, reset, 0, now}
  end
end
local per_day = tonumber(ARGV[9])
local used = tonumber(redis.call('GET', KEYS[6])) or 0
if used >= per_day then
  local midnight = (math.floor(now / 86400000) + 1) * 86400000
  return {0, 6, midnight - now, remaining, reset, 0, now}
end
for i, s in ipairs(specs) do
  if new_tats[i] then
    redis.call('SET', s[1], new_tats[i], 'PX', math.ceil(new_tats[i] - now) + 1000)
  end
end
if hold then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[8]) * 2)
end
redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], 90000)
return {1, 0, 0, remaining, reset, per_day - used - 1, now}
"#;

/// KEYS: 1 slot set. ARGV: 1 lease id, 2 lease ms. Extends a held lease (XX: never re-creates one
/// that was already released or expired).
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"#;

pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    admit: Arc<::redis::Script>,
    renew: Arc<::redis::Script>,
    lease: Duration,
    timeout: Duration,
    leases: AtomicU64,
}

#[derive(Debug)]
pub struct Unavailable(pub String);

impl RedisLimiter {
    /// `prefix` namespaces every key (one deployment, or one test run).
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, Unavailable> {
        let client = ::redis::Client::open(url).map_err(|e| Unavailable(e.to_string()))?;
        let conn = tokio::time::timeout(timeout, ConnectionManager::new(client))
            .await
            .map_err(|_| Unavailable(String::from("redis did not answer in time")))?
            .map_err(|e| Unavailable(e.to_string()))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            admit: Arc::new(::redis::Script::new(ADMIT)),
            renew: Arc::new(::redis::Script::new(RENEW)),
            lease: Duration::from_secs(30),
            timeout,
            leases: AtomicU64::new(0),
        })
    }

    /// Shorter leases (tests of crashed holders).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// One decision in one round trip; `Err` when Redis is unreachable or too slow.
    pub async fn try_admit(&self, req: &LimitRequest<'_>) -> Result<Result<Admission, Rejection>, Unavailable> {
        let l = req.limits;
        let day = req.now_ms.div_euclid(86_400_000).to_string();
        let lease_id = format!("{}-{}", std::process::id(), self.leases.fetch_add(1, Ordering::Relaxed));
        let slots = self.key(&["slots", req.tenant]);
        let mut inv = self.admit.prepare_invoke();
        inv.key(self.key(&["rate", "t", req.tenant]))
            .key(self.key(&["rate", "p", req.tenant, req.principal]))
            .key(self.key(&["rate", "r", req.tenant, req.route]))
            .key(self.key(&["rate", "g"]))
            .key(&slots)
            .key(self.key(&["quota", req.tenant, &day]))
            .arg(l.tenant_per_minute)
            .arg(l.principal_per_minute)
            .arg(l.route_per_minute.unwrap_or(0))
            .arg(l.global_per_second.unwrap_or(0))
            .arg(l.concurrency)
            .arg(u8::from(req.hold_slot))
            .arg(&lease_id)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(30_000))
            .arg(l.requests_per_day);
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| Unavailable(String::from("redis did not answer in time")))?
            .map_err(|e| Unavailable(e.to_string()))?;
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        let secs = |ms: i64| u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000);
        let rate = RateInfo {
            limit: l.tenant_per_minute,
            remaining: u32::try_from(at(3).max(0)).unwrap_or(0),
            reset_secs: secs(at(4)),
        };
        if at(0) != 1 {
            let kind = match at(1) {
                1 => LimitKind::Global,
                2 => LimitKind::Tenant,
                3 => LimitKind::Principal,
                4 => LimitKind::Route,
                5 => LimitKind::Concurrency,
                _ => LimitKind::Quota,
            };
            return Ok(Err(Rejection { kind, retry_after_secs: secs(at(2)).max(1), rate }));
        }
        let slot = req.hold_slot.then(|| Slot::new(Lease::hold(self, slots, lease_id)));
        Ok(Ok(Admission { rate, slot, quota_remaining: u64::try_from(at(5).max(0)).unwrap_or(0) }))
    }
}

/// A held slot: renewed in the background while alive, released when dropped.
struct Lease {
    renewer: tokio::task::JoinHandle<()>,
    release: Option<(ConnectionManager, String, String)>,
}

impl Lease {
    fn hold(l: &RedisLimiter, slots: String, id: String) -> Self {
        let (mut conn, renew, every, ms) =
            (l.conn.clone(), l.renew.clone(), l.lease / 3, u64::try_from(l.lease.as_millis()).unwrap_or(30_000));
        let (key, lease_id) = (slots.clone(), id.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r: Result<i64, _> = renew.key(&key).arg(&lease_id).arg(ms).invoke_async(&mut conn).await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "concurrency lease not renewed; it expires on its own");
                }
            }
        });
        Lease { renewer, release: Some((l.conn.clone(), slots, id)) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        if let Some((mut conn, key, id)) = self.release.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _: Result<i64, _> = ::redis::cmd("ZREM").arg(&key).arg(&id).query_async(&mut conn).await;
            });
        }
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit(&self, req: &LimitRequest<'_>) -> Result<Admission, Rejection> {
        match self.try_admit(req).await {
            Ok(decision) => decision,
            Err(e) => {
                // Fail closed: without the shared state no instance may admit.
                tracing::error!(error = %e.0, "redis limiter unavailable; refusing");
                Err(Rejection {
                    kind: LimitKind::Global,
                    retry_after_secs: 1,
                    rate: RateInfo { limit: req.limits.tenant_per_minute, remaining: 0, reset_secs: 1 },
                })
            }
        }
    }

    fn in_flight(&self, _tenant: &str) -> u32 {
        0
    }
}
