//! Limits shared by every instance, in Redis: one atomic script per decision (all limits that
//! apply in one round trip), time from Redis (`TIME`), never from the instance clock, and a TTL
//! on every key. Rate limits are exact across instances: the script checks every bucket first
//! and commits them only when all admit, so nothing is over-admitted and a refusal consumes
//! nothing. Concurrency slots are leases in a sorted set scored by their expiry: a crashed
//! instance's slots come back when their leases run out; a live slot's lease is renewed while
//! it is held.
//!
//! Every call is bounded by the configured timeout — decisions, renewals and releases alike — so a
//! hung Redis never wedges a request. A decision that timed out on our side may still be sitting
//! in the hung server's input buffer and would run when the server wakes; the script refuses to
//! change anything past its deadline (see [`ADMIT`]), so such a ghost neither uses rate nor
//! holds a slot nobody owns.
//!
//! This type only talks to Redis and says when it could not; what to decide then is
//! [`crate::shared::SharedLimiter`]'s business.
use crate::*;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// KEYS: 1 tenant bucket, 2 principal bucket, 3 route bucket, 4 global bucket, 5 slot set,
///       6 daily quota.
/// ARGV: 1 tenant/min, 2 principal/min, 3 route/min (0 = none), 4 global/s (0 = none),
///       5 concurrency cap, 6 hold slot (0/1), 7 lease id, 8 lease ms, 9 requests/day,
///       10 deadline in Redis time (ms; 0 = none), 11… leases of this tenant released since this
///       connection's last call, removed from the slot set first (a release rides on the next
///       decision instead of costing a round trip of its own; see [`Lane`]).
/// Returns {admitted, kind, retry_after_ms, remaining, reset_ms, quota_remaining, now_ms};
/// admitted = -1 when the script ran past its deadline (the caller gave up on it already).
///
/// Buckets are GCRA: a bucket is a string `<tat>:<interval>`, the theoretical arrival time (TAT,
/// in ms) and the emission interval it was computed with; a request is admitted when
/// TAT - now <= tau, i.e. within the burst of `limit` per period. When the limit changes (an
/// operator raised or lowered it) the cells already used are kept and re-priced at the new
/// interval, so a raised limit admits the difference at once and a lowered one holds at once.
/// The quota is a string `<UTC day number>:<requests admitted that day>`; its day is Redis's day,
/// so instances with skewed clocks still share one day.
///
/// Shaped for few `redis.call`s, each of which costs Redis's single thread several microseconds
/// (a write more than a read): every value is read with one `MGET` (which answers nil for a
/// missing key), and every write is one `SET … PX` carrying its TTL. Measured on Redis 7.0: ~49 µs
/// a decision, against ~60 µs with a hash per bucket and separate `PEXPIRE`s.
///
/// Atomic because check-then-commit across several keys must not interleave with another
/// instance's decision; `TIME` before writes needs effects replication (the default since Redis 5,
/// the only mode since 7).
pub(crate) const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #ARGV > 10 then
  redis.call('ZREM', KEYS[5], unpack(ARGV, 11))
end
local deadline = tonumber(ARGV[10])
if deadline > 0 and now > deadline then
  return {-1, 0, 0, 0, 0, 0, now}
end
local specs = {
  {KEYS[4], tonumber(ARGV[4]), 1000, 1},
  {KEYS[1], tonumber(ARGV[1]), 60000, 2},
  {KEYS[2], tonumber(ARGV[2]), 60000, 3},
  {KEYS[3], tonumber(ARGV[3]), 60000, 4},
}
local v = redis.call('MGET', KEYS[4], KEYS[1], KEYS[2], KEYS[3], KEYS[6])
local new_tats = {}
local remaining, reset = 0, 0
for i, s in ipairs(specs) do
  local limit = s[2]
  if limit > 0 then
    local interval = s[3] / limit
    local tau = interval * (limit - 1)
    local tat, was = now, nil
    if v[i] then
      local a, b = string.match(v[i], '^([^:]+):([^:]+)$')
      tat = tonumber(a) or now
      was = tonumber(b)
    end
    if tat < now then tat = now end
    if was and was ~= interval then
      -- The limit changed: keep the cells used, at the new cost per cell.
      tat = now + (tat - now) * interval / was
    end
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
local today = math.floor(now / 86400000)
local used = 0
if v[5] then
  local d, n = string.match(v[5], '^([^:]+):([^:]+)$')
  if tonumber(d) == today then used = tonumber(n) or 0 end
end
if used >= per_day then
  return {0, 6, (today + 1) * 86400000 - now, remaining, reset, 0, now}
end
for i, s in ipairs(specs) do
  if new_tats[i] then
    local interval = s[3] / s[2]
    redis.call('SET', s[1], string.format('%.17g:%.17g', new_tats[i], interval), 'PX', math.ceil(new_tats[i] - now) + 1000)
  end
end
if hold then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[8]) * 2)
end
redis.call('SET', KEYS[6], today .. ':' .. (used + 1), 'EX', 172800)
return {1, 0, 0, remaining, reset, per_day - used - 1, now}
"#;

/// KEYS: 1 slot set. ARGV: 1 lease ms, 2… lease ids. Extends held leases, and puts back any that
/// is gone: the set must count the requests really in flight, and a lease can vanish while its
/// request still runs (Redis restarted without persistence, or renewals failed for longer than a
/// lease during an outage). A renewal never runs after the release of a lease it names (see
/// [`Lane`]).
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"#;

/// Why Redis did not decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No answer within the timeout (a hung or overloaded server, or a network partition).
    Timeout,
    /// An error: refused connection, dropped connection, error reply. The text never holds the
    /// URL's password.
    Error(String),
}

impl Unavailable {
    pub fn label(&self) -> &'static str {
        match self {
            Unavailable::Timeout => "timeout",
            Unavailable::Error(_) => "error",
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Timeout => f.write_str("redis did not answer within the timeout"),
            Unavailable::Error(e) => write!(f, "redis: {e}"),
        }
    }
}

/// The redis URL with its password (user info, or a `password=`/`pass=` parameter) replaced by
/// `***`, for logs, errors and `/readyz`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None if scheme.is_some_and(|s| s.starts_with("redis")) && !userinfo.is_empty() => {
                // `redis://secret@host`: a lone user-info part is taken as the password.
                format!("***@{host}")
            }
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") => {
                        format!("{k}=***")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

/// The secrets a URL carries (password in the user info or the query), to scrub from error texts.
fn secrets_of(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        let pw = userinfo.split_once(':').map(|(_, p)| p).unwrap_or(userinfo);
        if !pw.is_empty() {
            out.push(pw.to_owned());
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        for p in query.split('&') {
            if let Some((k, v)) = p.split_once('=')
                && (k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass"))
                && !v.is_empty()
            {
                out.push(v.to_owned());
            }
        }
    }
    out
}

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: String,
    /// Namespaces every key (one deployment, or one test run); must be the same on every
    /// instance of a deployment.
    pub prefix: String,
    /// Bound of every call: decisions, lease renewals and releases, probes.
    pub timeout: Duration,
    /// Concurrency lease: a crashed holder's slot comes back after this long.
    pub lease: Duration,
}

/// Budget reservation over N windows, all or none. KEYS: per window `spent`, `reserved`,
/// `warned`. ARGV: amount, N, then per window limit, ttl_ms, baseline (-1: none). Returns
/// `{0, window index (0-based), used}` when a window cannot take the amount, else
/// `{1, used_1, first_warning_1, …}`. Values are integer nano-USD (exact below 2^53).
const RESERVE: &str = r#"
local amount = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local limit = tonumber(ARGV[3 + i * 3])
  local ttl = tonumber(ARGV[4 + i * 3])
  local base = tonumber(ARGV[5 + i * 3])
  if base >= 0 then redis.call('SET', KEYS[1 + i * 3], base, 'NX', 'PX', ttl) end
  local used = tonumber(redis.call('GET', KEYS[1 + i * 3]) or '0') + tonumber(redis.call('GET', KEYS[2 + i * 3]) or '0')
  if used + amount > limit then return {0, i, used} end
end
local out = {1}
for i = 0, n - 1 do
  local limit = tonumber(ARGV[3 + i * 3])
  local ttl = tonumber(ARGV[4 + i * 3])
  local reserved = redis.call('INCRBY', KEYS[2 + i * 3], amount)
  redis.call('PEXPIRE', KEYS[2 + i * 3], ttl)
  local used = tonumber(redis.call('GET', KEYS[1 + i * 3]) or '0') + reserved
  local first = 0
  if used * 10 >= limit * 9 then
    if redis.call('SET', KEYS[3 + i * 3], '1', 'NX', 'PX', ttl) then first = 1 end
  end
  table.insert(out, used)
  table.insert(out, first)
end
return out
"#;

/// Settles a reservation. KEYS: per window `spent`, `reserved`. ARGV: amount, actual, ttl_ms.
const SETTLE: &str = r#"
for i = 1, #KEYS, 2 do
  redis.call('DECRBY', KEYS[i + 1], ARGV[1])
  redis.call('INCRBY', KEYS[i], ARGV[2])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[3])
end
return 1
"#;

pub struct RedisLimiter {
    client: ::redis::Client,
    config: ConnectionManagerConfig,
    /// One connection per thread that decides: its driver task runs on the runtime of the thread
    /// that first used it — an edge thread's own — so a decision's send and answer wake no other
    /// core. (One shared connection put its driver on another thread: two cross-thread wake-ups
    /// per decision, measured at a sixth of a scale-out instance's CPU.) A lease renews and
    /// releases on the connection it was taken on, wherever it is dropped.
    lanes: thread_local::ThreadLocal<Arc<Lane>>,
    prefix: String,
    admit: Arc<::redis::Script>,
    renew: Arc<::redis::Script>,
    reserve: Arc<::redis::Script>,
    settle: Arc<::redis::Script>,
    lease: Duration,
    timeout: Duration,
    /// Random per process: lease ids must be unique across hosts (process ids are not: every
    /// container's gateway may be pid 1).
    instance: String,
    leases: AtomicU64,
    /// Times a decision found Redis without the admit script and loaded it.
    script_loads: AtomicU64,
    /// Redis clock minus ours (ms), a lower bound learnt from answers; i64::MIN until known.
    offset_ms: AtomicI64,
    held: Arc<DashMap<String, u32>>,
    secrets: Vec<String>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RedisLimiter {
    /// Prepares the connection without making it: an instance may start while Redis is down
    /// and begin using it when it answers. Fails only on a URL that cannot be used.
    pub fn open(s: &RedisSettings) -> Result<Self, Unavailable> {
        let secrets = secrets_of(&s.url);
        let scrub = |e: ::redis::RedisError| {
            let mut text = e.to_string();
            for p in &secrets {
                text = text.replace(p.as_str(), "***");
            }
            Unavailable::Error(format!("invalid redis URL `{}`: {text}", redact_url(&s.url)))
        };
        let client = ::redis::Client::open(s.url.as_str()).map_err(scrub)?;
        // One connection attempt per use, no internal retries with growing back-off: the caller
        // probes on its own schedule, and a reconnect that sleeps inside the connection manager
        // would hold recovery back after Redis returns. Responses are bounded by our own timeout
        // (dropping a request does not tear the connection down, so a slow answer does not cost
        // a reconnect).
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(s.timeout.max(Duration::from_millis(250)) * 4))
            .set_response_timeout(None);
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| Unavailable::Error(format!("no randomness for lease ids: {e}")))?;
        Ok(Self {
            client,
            config,
            lanes: thread_local::ThreadLocal::new(),
            prefix: s.prefix.clone(),
            admit: Arc::new(::redis::Script::new(ADMIT)),
            renew: Arc::new(::redis::Script::new(RENEW)),
            reserve: Arc::new(::redis::Script::new(RESERVE)),
            settle: Arc::new(::redis::Script::new(SETTLE)),
            lease: s.lease,
            timeout: s.timeout,
            instance: random.iter().map(|b| format!("{b:02x}")).collect(),
            leases: AtomicU64::new(0),
            script_loads: AtomicU64::new(0),
            offset_ms: AtomicI64::new(i64::MIN),
            held: Arc::new(DashMap::new()),
            secrets,
        })
    }

    /// Opens and checks that Redis answers (tests, and callers that want to fail early).
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, Unavailable> {
        let l = Self::open(&RedisSettings {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            timeout,
            lease: Duration::from_secs(30),
        })?;
        l.ping().await?;
        Ok(l)
    }

    /// Shorter leases (tests of crashed holders).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        // Lanes renew at their lease's pace: any made already start again, lazily.
        self.lanes = thread_local::ThreadLocal::new();
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This thread's connection, made (lazily: it connects on first use) the first time the
    /// thread asks. Must be called within a Tokio runtime.
    fn conn(&self) -> Result<ConnectionManager, Unavailable> {
        self.lane().map(|l| l.conn.clone())
    }

    /// This thread's lane: its connection and the task that renews and releases the leases taken
    /// on it, started on the thread's runtime the first time the thread asks.
    fn lane(&self) -> Result<Arc<Lane>, Unavailable> {
        self.lanes
            .get_or_try(|| {
                let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
                let lane = Arc::new(Lane {
                    conn,
                    state: std::sync::Mutex::new(LaneState::default()),
                    wake: Arc::new(tokio::sync::Notify::new()),
                });
                tokio::spawn(run_lane(
                    Arc::downgrade(&lane),
                    lane.wake.clone(),
                    self.renew.clone(),
                    self.lease,
                    self.timeout,
                ));
                Ok(lane)
            })
            .cloned()
            .map_err(|e: ::redis::RedisError| self.failed(e))
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = String::new();
        self.key_into(&mut k, parts);
        k
    }

    /// Writes the key of `parts` into `k` (replacing what it held).
    fn key_into(&self, k: &mut String, parts: &[&str]) {
        k.clear();
        k.push_str(&self.prefix);
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
    }

    fn failed(&self, e: ::redis::RedisError) -> Unavailable {
        if e.is_timeout() {
            return Unavailable::Timeout;
        }
        let mut text = e.to_string();
        for p in &self.secrets {
            text = text.replace(p.as_str(), "***");
        }
        Unavailable::Error(text)
    }

    /// Learns the clock offset from an answer: Redis's time was taken before `received`, so
    /// `redis_now - received` is a lower bound of the offset. Only quick answers teach (a slow
    /// one's bound is loose); the latest wins so a stepped clock is followed.
    fn learn_offset(&self, redis_now: i64, sent: i64, received: i64) {
        let rtt = received - sent;
        if redis_now > 0 && rtt >= 0 && rtt * 4 <= i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX) {
            self.offset_ms.store(redis_now - received, Ordering::Relaxed);
        }
    }

    /// Deadline in Redis time for a call sent now: when we give up on it, or a little before
    /// (the offset is a lower bound). 0 while the offset is unknown.
    fn deadline(&self, sent: i64) -> i64 {
        match self.offset_ms.load(Ordering::Relaxed) {
            i64::MIN => 0,
            off => sent + off + i64::try_from(self.timeout.as_millis()).unwrap_or(0),
        }
    }

    /// Whether Redis answers (and what its clock says); bounded by the timeout.
    pub async fn ping(&self) -> Result<(), Unavailable> {
        self.ping_on(self.conn()?).await
    }

    /// Whether Redis answers on every thread's connection, not only this one's. After an outage
    /// a thread that made no decision since still holds its failed reconnect and would answer its
    /// next decision with that stale error: recovery waits until each connection has answered.
    pub async fn ping_all(&self) -> Result<(), Unavailable> {
        self.ping().await?;
        let others: Vec<ConnectionManager> = self.lanes.iter().map(|l| l.conn.clone()).collect();
        for conn in others {
            self.ping_on(conn).await?;
        }
        Ok(())
    }

    async fn ping_on(&self, mut conn: ConnectionManager) -> Result<(), Unavailable> {
        let sent = wall_ms();
        let reply: Vec<String> = tokio::time::timeout(self.timeout, ::redis::cmd("TIME").query_async(&mut conn))
            .await
            .map_err(|_| Unavailable::Timeout)?
            .map_err(|e| self.failed(e))?;
        let received = wall_ms();
        let secs = reply.first().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        let micros = reply.get(1).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        self.learn_offset(secs * 1000 + micros / 1000, sent, received);
        Ok(())
    }

    /// A window's keys outlive its end by a day (late settlements land in it, then it goes).
    fn budget_ttl_ms(w_reset_ms: i64, now_ms: i64) -> i64 {
        (w_reset_ms - now_ms).max(0) + 86_400_000
    }

    /// One budget reservation in one round trip; `Err` when Redis is unreachable or too slow.
    pub async fn try_reserve(
        &self,
        req: &BudgetRequest<'_>,
    ) -> Result<Result<Reservation, BudgetExceeded>, Unavailable> {
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(req.amount_nanos).arg(req.windows.len());
        for w in req.windows {
            inv.key(self.key(&["budget", req.tenant, &w.id, "spent"]))
                .key(self.key(&["budget", req.tenant, &w.id, "reserved"]))
                .key(self.key(&["budget", req.tenant, &w.id, "warned"]))
                .arg(w.limit_nanos)
                .arg(Self::budget_ttl_ms(w.reset_ms, req.now_ms))
                .arg(w.baseline_nanos.unwrap_or(-1));
        }
        let mut conn = self.conn()?;
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| Unavailable::Timeout)?
            .map_err(|e| self.failed(e))?;
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        if at(0) == 0 {
            let i = usize::try_from(at(1)).unwrap_or(0);
            let Some(w) = req.windows.get(i) else { return Err(Unavailable::Error(String::from("budget reply"))) };
            return Ok(Err(BudgetExceeded { window: w.clone(), used_nanos: at(2), amount_nanos: req.amount_nanos }));
        }
        let windows = req
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| WindowUse {
                kind: w.kind,
                id: w.id.clone(),
                used_nanos: at(1 + i * 2),
                limit_nanos: w.limit_nanos,
                reset_ms: w.reset_ms,
                first_warning: at(2 + i * 2) == 1,
            })
            .collect();
        Ok(Ok(Reservation { tenant: req.tenant.to_owned(), amount_nanos: req.amount_nanos, windows, local: false }))
    }

    /// Settles in one round trip; `Err` when Redis is unreachable or too slow (the reservation
    /// then stays counted until its window ends: never an overrun).
    pub async fn try_settle(&self, r: &Reservation, actual_nanos: i64) -> Result<(), Unavailable> {
        let mut inv = self.settle.prepare_invoke();
        let now = wall_ms();
        let ttl = r.windows.iter().map(|w| Self::budget_ttl_ms(w.reset_ms, now)).max().unwrap_or(86_400_000);
        for w in &r.windows {
            inv.key(self.key(&["budget", &r.tenant, &w.id, "spent"]))
                .key(self.key(&["budget", &r.tenant, &w.id, "reserved"]));
        }
        inv.arg(r.amount_nanos).arg(actual_nanos).arg(ttl);
        let mut conn = self.conn()?;
        let _: i64 = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| Unavailable::Timeout)?
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Sends a decision (an `EVALSHA` of the admit script) on the lane's connection, bounded by
    /// the timeout; loads the script first if Redis does not have it (a restarted or flushed
    /// server).
    async fn send_decision(&self, lane: &Lane, cmd: &::redis::Cmd) -> Result<Vec<i64>, Unavailable> {
        let mut conn = lane.conn.clone();
        let started = std::time::Instant::now();
        let first = tokio::time::timeout(self.timeout, self.run_admit(&mut conn, cmd)).await;
        match first.map_err(|_| Unavailable::Timeout)? {
            Ok(reply) => Ok(reply),
            // This thread's connection was dropped since its last use (Redis restarted, an idle
            // connection closed by the server or the network). The manager is reconnecting: try
            // once more within what is left of the same timeout and deadline, instead of
            // degrading the whole instance for one stale connection. Should the first attempt
            // have run after all, the retry holds the same lease (a set member, added once) and
            // at most uses one more cell of rate: never over-admission.
            Err(e)
                if e.is_connection_dropped()
                    || e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error() =>
            {
                let left = self.timeout.saturating_sub(started.elapsed());
                tokio::time::timeout(left, self.run_admit(&mut conn, cmd))
                    .await
                    .map_err(|_| Unavailable::Timeout)?
                    .map_err(|e| self.failed(e))
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Runs a decision's `EVALSHA`; a Redis without the script (NOSCRIPT) gets it loaded first.
    async fn run_admit(&self, conn: &mut ConnectionManager, cmd: &::redis::Cmd) -> ::redis::RedisResult<Vec<i64>> {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) => {
                self.script_loads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("Redis did not have the admit script (restarted, failed over or flushed); loading it");
                self.admit.load_async(conn).await?;
                cmd.query_async(conn).await
            }
            r => r,
        }
    }

    /// One decision in one round trip; `Err` when Redis is unreachable or too slow.
    pub async fn try_admit(&self, req: &LimitRequest<'_>) -> Result<Result<Admission, Rejection>, Unavailable> {
        let l = req.limits;
        let lease_id = format!("{}-{}", self.instance, self.leases.fetch_add(1, Ordering::Relaxed));
        let slots = self.key(&["slots", req.tenant]);
        let sent = wall_ms();
        let lane = self.lane()?;
        let carried = lane.take_carried(&slots);
        // The `EVALSHA` written straight into one command buffer (keys through one scratch
        // string): a decision costs two allocations here, not one per key and argument twice
        // over as a prepared script invocation does.
        let mut key = String::with_capacity(self.prefix.len() + 96);
        let mut cmd = ::redis::Cmd::with_capacity(
            19 + carried.len(),
            256 + req.tenant.len() * 4 + req.principal.len() + req.route.len() + lease_id.len() + carried.len() * 32,
        );
        cmd.arg("EVALSHA").arg(self.admit.get_hash()).arg(6);
        // `gcra`/`day`, not the hashes of earlier versions (`rate`/`quota`): a rolling upgrade
        // must not hand an older instance a value of a type its script cannot read.
        for parts in [
            &["gcra", "t", req.tenant][..],
            &["gcra", "p", req.tenant, req.principal],
            &["gcra", "r", req.tenant, req.route],
            &["gcra", "g"],
        ] {
            self.key_into(&mut key, parts);
            cmd.arg(key.as_str());
        }
        cmd.arg(slots.as_str());
        self.key_into(&mut key, &["day", req.tenant]);
        cmd.arg(key.as_str())
            .arg(l.tenant_per_minute)
            .arg(l.principal_per_minute)
            .arg(l.route_per_minute.unwrap_or(0))
            .arg(l.global_per_second.unwrap_or(0))
            .arg(l.concurrency)
            .arg(u8::from(req.hold_slot))
            .arg(lease_id.as_str())
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(30_000))
            .arg(l.requests_per_day)
            .arg(self.deadline(sent))
            .arg(&carried);
        let reply = match self.send_decision(&lane, &cmd).await {
            Ok(reply) => reply,
            Err(e) => {
                // Perhaps not delivered: the lane's task sends them (a second ZREM is harmless).
                lane.release(carried.into_iter().map(|id| (slots.clone(), id)));
                return Err(e);
            }
        };
        let at = |i: usize| reply.get(i).copied().unwrap_or(0);
        self.learn_offset(at(6), sent, wall_ms());
        if at(0) == -1 {
            return Err(Unavailable::Timeout);
        }
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
        let slot = req.hold_slot.then(|| Slot::new(Lease::hold(self, lane, req.tenant, slots, lease_id)));
        Ok(Ok(Admission { rate, slot, quota_remaining: u64::try_from(at(5).max(0)).unwrap_or(0) }))
    }

    #[cfg(test)]
    pub(crate) fn set_offset_for_test(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn script_loads(&self) -> u64 {
        self.script_loads.load(Ordering::Relaxed)
    }

    /// Releases this thread's lane has not sent yet.
    #[cfg(test)]
    pub(crate) fn unsent_releases(&self) -> usize {
        self.lanes.get().map_or(0, |l| {
            let st = l.lock();
            st.carry.len() + st.after_renewal.len()
        })
    }

    /// Slots this process holds for `tenant` (leases not yet released).
    pub fn held(&self, tenant: &str) -> u32 {
        self.held.get(tenant).map(|n| *n).unwrap_or(0)
    }
}

/// A thread's connection and the leases taken on it. A lease's release rides on the next decision
/// this thread sends for the same tenant (the script removes it before it counts the slots): under
/// load a release costs no round trip at all. What no decision took within [`RELEASE_GRACE`], and
/// every renewal, is sent by the lane's task ([`run_lane`]), in batches (one `ZREM` per slot set).
///
/// Everything goes over the lane's one connection, and Redis runs one connection's commands in
/// order. A renewal must never run after the release of a lease it names (it would put the lease
/// back for a whole lease period): a lease dropped while a renewal naming it is in flight is
/// released by the lane's task after that renewal, never carried by a decision.
struct Lane {
    conn: ConnectionManager,
    state: std::sync::Mutex<LaneState>,
    wake: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct LaneState {
    /// Held leases: id → slot set.
    held: std::collections::HashMap<String, String>,
    /// Released leases not sent yet, which a decision may carry: (slot set, id).
    carry: Vec<(String, String)>,
    /// Released leases named by the renewal in flight: the lane's task sends them after it.
    after_renewal: Vec<(String, String)>,
    /// The ids the renewal in flight names.
    renewing: Option<std::collections::HashSet<String>>,
}

impl LaneState {
    fn pending(&self) -> bool {
        !self.carry.is_empty() || !self.after_renewal.is_empty()
    }
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Released leases of `slots` for a decision to carry (at most [`CARRY_MAX`]).
    fn take_carried(&self, slots: &str) -> Vec<String> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let mut i = 0;
        while i < st.carry.len() && out.len() < CARRY_MAX {
            if st.carry[i].0 == slots {
                out.push(st.carry.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Queues released leases `(slot set, id)`: after the renewal in flight for those it names,
    /// for the next decision (or the lane's task) for the others; wakes the task when the queue
    /// was empty.
    fn release(&self, leases: impl IntoIterator<Item = (String, String)>) {
        let mut st = self.lock();
        let was_pending = st.pending();
        for (key, id) in leases {
            if st.renewing.as_ref().is_some_and(|r| r.contains(&id)) {
                st.after_renewal.push((key, id));
            } else {
                st.carry.push((key, id));
            }
        }
        let now_pending = st.pending();
        drop(st);
        if now_pending && !was_pending {
            self.wake.notify_one();
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Its task ends (it holds the lane weakly).
        self.wake.notify_one();
    }
}

/// Most lease ids in one call: Redis runs a call to its end before any other command.
const LEASE_BATCH: usize = 512;
/// Most releases one decision carries.
const CARRY_MAX: usize = 64;
/// How long a release waits for a decision to carry it before the lane's task sends it. Until
/// then the slot still counts as taken: never an over-admission, at most this much longer wait
/// for a slot at the cap.
const RELEASE_GRACE: Duration = Duration::from_millis(2);

/// The lane's task: releases no decision carried, and renewals every third of the lease. Every
/// call is bounded by the timeout; one that fails is logged and counted, and its leases then
/// expire on their own (a renewal also puts back leases Redis lost, at the next tick).
async fn run_lane(
    weak: std::sync::Weak<Lane>,
    wake: Arc<tokio::sync::Notify>,
    renew: Arc<::redis::Script>,
    lease: Duration,
    timeout: Duration,
) {
    let every = lease / 3;
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(30_000);
    let mut next_renewal = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep_until(next_renewal) => {}
        }
        if tokio::time::Instant::now() < next_renewal {
            // Leave the releases to the next decisions for a moment.
            tokio::time::sleep(RELEASE_GRACE).await;
        }
        let Some(lane) = weak.upgrade() else { return };
        let renewing = tokio::time::Instant::now() >= next_renewal;
        let (released, held) = {
            let mut st = lane.lock();
            let mut released = std::mem::take(&mut st.carry);
            released.append(&mut st.after_renewal);
            let held = if renewing {
                st.renewing = Some(st.held.keys().cloned().collect());
                group(st.held.iter().map(|(id, key)| (key.as_str(), id.as_str())))
            } else {
                Vec::new()
            };
            (released, held)
        };
        let mut conn = lane.conn.clone();
        drop(lane);
        for (key, ids) in group(released.iter().map(|(key, id)| (key.as_str(), id.as_str()))) {
            for chunk in ids.chunks(LEASE_BATCH) {
                let mut cmd = ::redis::cmd("ZREM");
                cmd.arg(&key).arg(chunk);
                if let Err(e) = bounded(timeout, cmd.query_async::<i64>(&mut conn)).await {
                    count_error("release", &e);
                    tracing::warn!(error = %e, leases = chunk.len(), "concurrency leases not released; they expire on their own");
                }
            }
        }
        if renewing {
            next_renewal = tokio::time::Instant::now() + every;
            for (key, ids) in held {
                for chunk in ids.chunks(LEASE_BATCH) {
                    let mut inv = renew.key(key.as_str());
                    inv.arg(lease_ms).arg(chunk);
                    if let Err(e) = bounded(timeout, inv.invoke_async::<i64>(&mut conn)).await {
                        count_error("renew", &e);
                        tracing::warn!(error = %e, leases = chunk.len(), "concurrency leases not renewed; they expire on their own unless a later renewal reaches redis");
                    }
                }
            }
            let Some(lane) = weak.upgrade() else { return };
            let mut st = lane.lock();
            st.renewing = None;
            if st.pending() {
                // Released during the renewal: sent on the next round.
                lane.wake.notify_one();
            }
        }
    }
}

/// (slot set, lease id) pairs grouped by slot set.
fn group<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (key, id) in pairs {
        match out.iter_mut().find(|(k, _)| k == key) {
            Some((_, ids)) => ids.push(id.to_owned()),
            None => out.push((key.to_owned(), vec![id.to_owned()])),
        }
    }
    out
}

/// A held slot: renewed by its lane while alive, released through it when dropped.
struct Lease {
    lane: Arc<Lane>,
    id: String,
    held: Arc<DashMap<String, u32>>,
    tenant: String,
}

/// A background call (renewal, release) bounded by the timeout, its failure as [`Unavailable`].
async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, Unavailable> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Unavailable::Error(e.to_string())),
        Err(_) => Err(Unavailable::Timeout),
    }
}

fn count_error(op: &'static str, e: &Unavailable) {
    metrics::counter!("portcullis_limiter_redis_errors_total", "op" => op, "kind" => e.label()).increment(1);
}

impl Lease {
    fn hold(l: &RedisLimiter, lane: Arc<Lane>, tenant: &str, slots: String, id: String) -> Self {
        lane.lock().held.insert(id.clone(), slots);
        *l.held.entry(tenant.to_owned()).or_insert(0) += 1;
        Lease { lane, id, held: l.held.clone(), tenant: tenant.to_owned() }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(mut n) = self.held.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
        let key = self.lane.lock().held.remove(&self.id);
        if let Some(key) = key {
            self.lane.release([(key, std::mem::take(&mut self.id))]);
        }
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    /// Without a fail mode: refuses (503) whenever Redis cannot decide. Deployments use
    /// [`crate::shared::SharedLimiter`], which adds the configured fail mode.
    async fn admit(&self, req: &LimitRequest<'_>) -> Result<Admission, Rejection> {
        match self.try_admit(req).await {
            Ok(decision) => decision,
            Err(e) => {
                tracing::error!(error = %e, "redis limiter unavailable; refusing");
                Err(crate::shared::unavailable(req.limits))
            }
        }
    }

    async fn reserve_budget(
        &self,
        req: &BudgetRequest<'_>,
    ) -> Result<Result<Reservation, BudgetExceeded>, BudgetUnavailable> {
        self.try_reserve(req).await.map_err(|e| {
            tracing::error!(error = %e, "redis limiter unavailable; refusing budgeted request");
            BudgetUnavailable
        })
    }

    async fn settle_budget(&self, r: &Reservation, actual_nanos: i64) {
        if let Err(e) = self.try_settle(r, actual_nanos).await {
            tracing::warn!(error = %e, "budget settlement lost; the reservation stays counted until its window ends");
        }
    }

    fn in_flight(&self, tenant: &str) -> u32 {
        self.held(tenant)
    }

    fn health(&self) -> LimiterHealth {
        LimiterHealth { backend: "redis", fail_mode: Some("fail_closed"), degraded: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_their_secrets_found() {
        assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://default:s3cret@r.internal:6379/2"), "redis://default:***@r.internal:6379/2");
        assert_eq!(redact_url("redis://:s3cret@r.internal"), "redis://:***@r.internal");
        assert_eq!(redact_url("rediss://s3cret@r.internal"), "rediss://***@r.internal");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(secrets_of("redis://default:s3cret@r.internal:6379/2"), vec![String::from("s3cret")]);
        assert_eq!(secrets_of("redis+unix:///run/redis.sock?password=x1"), vec![String::from("x1")]);
        assert!(secrets_of("redis://127.0.0.1:6379").is_empty());
    }

    #[test]
    fn a_url_that_cannot_be_used_is_refused_without_its_password() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(rt) = rt else { return };
        rt.block_on(async {
            let s = RedisSettings {
                url: String::from("http://user:hunter2@127.0.0.1:6379"),
                prefix: String::from("t"),
                timeout: Duration::from_millis(50),
                lease: Duration::from_secs(30),
            };
            match RedisLimiter::open(&s) {
                Ok(_) => unreachable!("an http URL is not a redis URL"),
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains("invalid redis URL") && !text.contains("hunter2"), "{text}");
                }
            }
        });
    }
}
