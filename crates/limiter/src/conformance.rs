//! One suite, every backend: the in-process limiter and the Redis one (a real server: the URL in
//! `PORTCULLIS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`, keys under a fresh prefix).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use crate::local::LocalLimiter;
use crate::redis::{ADMIT, RedisLimiter, RedisSettings};
use crate::shared::{FailMode, SharedLimiter, SharedSettings};
use crate::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn limits(per_minute: u32, concurrency: u32, per_day: u64) -> Limits {
    Limits {
        tenant_per_minute: per_minute,
        principal_per_minute: 1_000_000,
        route_per_minute: None,
        global_per_second: None,
        concurrency,
        requests_per_day: per_day,
    }
}

fn req<'a>(tenant: &'a str, l: &'a Limits, hold: bool) -> LimitRequest<'a> {
    LimitRequest { tenant, principal: "p", route: "/r", limits: l, hold_slot: hold, now_ms: 1_764_000_000_000 }
}

fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| String::from("redis://127.0.0.1:6379"))
}

fn fresh_prefix() -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("portcullis-test:{}:{n}", std::process::id())
}

async fn redis_limiter(prefix: &str) -> RedisLimiter {
    RedisLimiter::connect(&redis_url(), prefix, Duration::from_secs(5))
        .await
        .expect("a Redis server for the limiter tests (the README's test command starts one)")
}

async fn rate_admits_exactly_the_limit(lim: &dyn Limiter) {
    let l = limits(10, 100, 1_000);
    for i in 0..10u32 {
        let a = lim.admit(&req("t1", &l, false)).await.unwrap_or_else(|r| panic!("request {i} refused: {r:?}"));
        assert_eq!(a.rate.limit, 10);
        assert_eq!(a.rate.remaining, 9 - i, "remaining after request {i}");
    }
    let r = lim.admit(&req("t1", &l, false)).await.err().expect("the 11th is refused");
    assert_eq!(r.kind, LimitKind::Tenant);
    assert!(r.retry_after_secs >= 1 && r.retry_after_secs <= 6, "{r:?}");
    assert!(lim.admit(&req("t2", &l, false)).await.is_ok(), "another tenant is unaffected");
}

async fn slots_come_back_when_released(lim: &dyn Limiter) {
    let l = limits(1_000, 2, 1_000);
    let a = lim.admit(&req("t1", &l, true)).await.ok();
    let b = lim.admit(&req("t1", &l, true)).await.ok();
    assert!(a.is_some() && b.is_some());
    assert_eq!(lim.admit(&req("t1", &l, true)).await.err().map(|r| r.kind), Some(LimitKind::Concurrency));
    drop(a);
    let mut admitted = false;
    for _ in 0..50 {
        if let Ok(c) = lim.admit(&req("t1", &l, true)).await {
            admitted = true;
            drop(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "a released slot is available again");
    drop(b);
}

async fn daily_quota_counts_admitted_requests(lim: &dyn Limiter) {
    let l = limits(1_000, 10, 3);
    for _ in 0..3 {
        assert!(lim.admit(&req("t1", &l, false)).await.is_ok());
    }
    let r = lim.admit(&req("t1", &l, false)).await.err().expect("over quota");
    assert_eq!(r.kind, LimitKind::Quota);
    assert!(r.retry_after_secs > 0 && r.retry_after_secs <= 86_400);
}

fn shared_settings(url: &str, prefix: &str, mode: FailMode, divisor: u32) -> SharedSettings {
    SharedSettings {
        redis: RedisSettings {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            timeout: Duration::from_millis(200),
            lease: Duration::from_secs(30),
        },
        fail_mode: mode,
        probe_interval: Duration::from_millis(100),
        fallback_divisor: divisor,
    }
}

async fn shared_limiter(prefix: &str) -> SharedLimiter {
    let l = SharedLimiter::start(shared_settings(&redis_url(), prefix, FailMode::FailClosed, 1)).await.unwrap();
    assert_eq!(l.health().degraded, None, "the test Redis answers");
    l
}

/// A loopback port nothing listens on (bound a moment ago, then released).
fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("redis://127.0.0.1:{port}")
}

async fn a_raised_rate_applies_at_once(lim: &dyn Limiter) {
    let l = limits(10, 100, 1_000);
    for _ in 0..10 {
        assert!(lim.admit(&req("t1", &l, false)).await.is_ok());
    }
    assert_eq!(lim.admit(&req("t1", &l, false)).await.err().map(|r| r.kind), Some(LimitKind::Tenant));
    let raised = limits(20, 100, 1_000);
    for i in 0..10 {
        let a = lim.admit(&req("t1", &raised, false)).await.unwrap_or_else(|r| panic!("request {i} refused: {r:?}"));
        assert_eq!(a.rate.limit, 20);
    }
}

/// Redis keeps the cells used when a limit changes (the in-process limiter starts a new bucket):
/// a lowered rate holds at once.
#[tokio::test(flavor = "multi_thread")]
async fn redis_a_lowered_rate_holds_at_once() {
    let lim = redis_limiter(&fresh_prefix()).await;
    let l = limits(20, 100, 1_000);
    for _ in 0..10 {
        assert!(lim.admit(&req("t1", &l, false)).await.is_ok());
    }
    let lowered = limits(5, 100, 1_000);
    assert_eq!(lim.admit(&req("t1", &lowered, false)).await.err().map(|r| r.kind), Some(LimitKind::Tenant));
}

fn windows(daily: i64, monthly: i64, baseline: Option<i64>) -> Vec<BudgetWindow> {
    vec![
        BudgetWindow {
            kind: "daily",
            id: String::from("2025-11-24"),
            limit_nanos: daily,
            reset_ms: 1_764_028_800_000,
            baseline_nanos: baseline,
        },
        BudgetWindow {
            kind: "monthly",
            id: String::from("2025-11"),
            limit_nanos: monthly,
            reset_ms: 1_764_547_200_000,
            baseline_nanos: None,
        },
    ]
}

fn budget_req<'a>(tenant: &'a str, w: &'a [BudgetWindow], amount: i64) -> BudgetRequest<'a> {
    BudgetRequest { tenant, windows: w, amount_nanos: amount, now_ms: 1_764_000_000_000 }
}

async fn budgets_reserve_then_settle(lim: &dyn Limiter) {
    let w = windows(1_000, 10_000, None);
    // Reservations count as spent: 3 × 300 fit, a fourth does not.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(lim.reserve_budget(&budget_req("b1", &w, 300)).await.unwrap().unwrap());
    }
    let over = lim.reserve_budget(&budget_req("b1", &w, 300)).await.unwrap().unwrap_err();
    assert_eq!((over.window.kind, over.used_nanos), ("daily", 900));
    // Settling below the reservation gives the rest back.
    lim.settle_budget(&held[0], 100).await;
    let r = lim.reserve_budget(&budget_req("b1", &w, 300)).await.unwrap().unwrap();
    assert_eq!(r.windows[0].used_nanos, 100 + 300 + 300 + 300);
    // The first reservation at or past 90 % (the third: 900 of 1 000) says so, once per window.
    let firsts: Vec<bool> = held.iter().map(|h| h.windows[0].first_warning).collect();
    assert_eq!(firsts, [false, false, true]);
    assert!(r.windows[0].at_warning() && !r.windows[0].first_warning, "{r:?}");
    lim.settle_budget(&r, 0).await;
    // 100 spent + 2 × 300 held + 200 = 900: at 90 % again, but the warning was given.
    let again = lim.reserve_budget(&budget_req("b1", &w, 200)).await.unwrap().unwrap();
    assert_eq!(again.windows[0].used_nanos, 900);
    assert!(again.windows[0].at_warning() && !again.windows[0].first_warning, "{again:?}");
    assert!(!again.windows[1].at_warning());
    // Another tenant is untouched; a baseline counts when the window is new.
    let fresh = windows(1_000, 10_000, Some(950));
    assert_eq!(lim.reserve_budget(&budget_req("b2", &fresh, 100)).await.unwrap().unwrap_err().used_nanos, 950);
    let r = lim.reserve_budget(&budget_req("b3", &w, 1_000)).await.unwrap().unwrap();
    assert_eq!(r.windows[0].used_nanos, 1_000);
    // The next day is a new window: the daily budget starts over (the month's does not).
    let mut next = windows(1_000, 10_000, None);
    next[0].id = String::from("2025-11-25");
    next[0].reset_ms += 86_400_000;
    let tomorrow = BudgetRequest { now_ms: 1_764_028_800_000 + 1, ..budget_req("b3", &next, 1_000) };
    let r = lim.reserve_budget(&tomorrow).await.unwrap().unwrap();
    assert_eq!((r.windows[0].used_nanos, r.windows[1].used_nanos), (1_000, 2_000));
    // And it is enforced like the one before.
    assert_eq!(lim.reserve_budget(&tomorrow).await.unwrap().unwrap_err().window.kind, "daily");
}

async fn budgets_are_never_overrun_by_a_burst(lim: &dyn Limiter) {
    // 200 concurrent reservations of 7 against 700: exactly 100 fit, settled or not.
    let w = windows(700, 1_000_000, None);
    let attempts = (0..200).map(|i| {
        let w = &w;
        async move {
            match lim.reserve_budget(&budget_req("burst", w, 7)).await.unwrap() {
                Ok(r) => {
                    if i % 2 == 0 {
                        lim.settle_budget(&r, 7).await;
                    }
                    true
                }
                Err(_) => false,
            }
        }
    });
    let admitted = futures_join_all(attempts).await.into_iter().filter(|ok| *ok).count();
    assert_eq!(admitted, 100);
}

/// Runs the futures concurrently on this task (they interleave at every Redis round trip).
async fn futures_join_all<F: std::future::Future<Output = bool>>(fs: impl Iterator<Item = F>) -> Vec<bool> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out = vec![false; set.len()];
    let mut pending: Vec<usize> = (0..set.len()).collect();
    std::future::poll_fn(|cx| {
        pending.retain(|&i| match set[i].as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                out[i] = v;
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    out
}

macro_rules! conformance {
    ($($name:ident),*) => {
        mod local_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(&LocalLimiter::new()).await;
                }
            )*
        }
        mod redis_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(&redis_limiter(&fresh_prefix()).await).await;
                }
            )*
        }
        mod shared_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(&shared_limiter(&fresh_prefix()).await).await;
                }
            )*
        }
    };
}

conformance!(
    rate_admits_exactly_the_limit,
    slots_come_back_when_released,
    daily_quota_counts_admitted_requests,
    a_raised_rate_applies_at_once,
    budgets_reserve_then_settle,
    budgets_are_never_overrun_by_a_burst
);

/// Three instances sharing one Redis and one limit, hammered concurrently: exactly the limit is
/// admitted in total — no over-admission across instances.
#[tokio::test(flavor = "multi_thread")]
async fn redis_limits_are_exact_across_instances() {
    let prefix = fresh_prefix();
    let instances =
        Arc::new([redis_limiter(&prefix).await, redis_limiter(&prefix).await, redis_limiter(&prefix).await]);
    let l = Arc::new(limits(50, 1_000, 1_000_000));
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let (instances, l) = (instances.clone(), l.clone());
        tasks.push(tokio::spawn(async move { instances[i % 3].admit(&req("shared", &l, false)).await.is_ok() }));
    }
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 50);
}

/// A refused request uses nothing: with the concurrency cap full, rate and quota stay untouched.
#[tokio::test(flavor = "multi_thread")]
async fn redis_refusals_consume_nothing() {
    let lim = redis_limiter(&fresh_prefix()).await;
    let l = limits(3, 1, 3);
    let held = lim.admit(&req("t", &l, true)).await.ok();
    for _ in 0..5 {
        assert_eq!(lim.admit(&req("t", &l, true)).await.err().map(|r| r.kind), Some(LimitKind::Concurrency));
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(lim.admit(&req("t", &l, false)).await.is_ok());
    assert!(lim.admit(&req("t", &l, false)).await.is_ok());
    let r = lim.admit(&req("t", &l, false)).await.err().expect("rate 3: the fourth admitted request is refused");
    assert_eq!(r.kind, LimitKind::Tenant);
}

/// A release rides on the next decision for the tenant (no round trip of its own), and the slot
/// it frees counts in that very decision; a release no decision takes is sent by the lane itself.
#[tokio::test]
async fn redis_a_release_rides_on_the_next_decision_or_goes_alone() {
    let prefix = fresh_prefix();
    let lim = redis_limiter(&prefix).await;
    let l = limits(1_000, 1, 1_000);
    let slots = format!("{prefix}:slots:t");
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let held = lim.admit(&req("t", &l, true)).await.unwrap_or_else(|r| panic!("refused: {r:?}"));
    drop(held);
    // Nothing has yielded to the lane's task since (one thread): the release is still queued.
    assert_eq!(lim.unsent_releases(), 1);
    let next = lim.admit(&req("t", &l, true)).await.unwrap_or_else(|r| panic!("the freed slot is refused: {r:?}"));
    assert_eq!(lim.unsent_releases(), 0, "the decision carried the release");
    let n: i64 = ::redis::cmd("ZCARD").arg(&slots).query_async(&mut c).await.unwrap();
    assert_eq!(n, 1, "only the new lease is in the set");
    drop(next);
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n: i64 = ::redis::cmd("ZCARD").arg(&slots).query_async(&mut c).await.unwrap();
        if n == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the lane sent the release no decision carried");
    assert_eq!(lim.unsent_releases(), 0);
}

/// A Redis that lost its scripts (restarted, failed over, `SCRIPT FLUSH`) answers a decision's
/// `EVALSHA` with NOSCRIPT: the decision loads the script and is made all the same.
#[tokio::test]
async fn redis_a_server_without_the_script_gets_it_loaded_by_the_decision() {
    let prefix = fresh_prefix();
    let lim = redis_limiter(&prefix).await;
    let l = limits(1_000, 10, 1_000);
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let hash = ::redis::Script::new(ADMIT).get_hash().to_owned();
    // The script cache is the server's, shared with the tests running beside this one: one of
    // them may load the script again between the flush and this decision. Flush until this
    // decision is the one that found it missing.
    let mut held = Vec::new();
    for _ in 0..20 {
        let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut c).await.unwrap();
        let loads = lim.script_loads();
        let a = lim.admit(&req("t", &l, true)).await.unwrap_or_else(|r| panic!("refused: {r:?}"));
        assert!(a.slot.is_some());
        held.push(a);
        if lim.script_loads() > loads {
            break;
        }
    }
    assert!(lim.script_loads() > 0, "a decision found the script missing and loaded it");
    let known: Vec<i64> = ::redis::cmd("SCRIPT").arg("EXISTS").arg(&hash).query_async(&mut c).await.unwrap();
    assert_eq!(known, [1], "the decision loaded the admit script");
    let n: i64 = ::redis::cmd("ZCARD").arg(format!("{prefix}:slots:t")).query_async(&mut c).await.unwrap();
    assert_eq!(usize::try_from(n).unwrap(), held.len(), "and each decision took its slot");
}

/// An instance that dies holding a slot (no release, no renewal) gives it back at lease expiry.
#[test]
fn redis_slots_of_a_crashed_instance_come_back_after_the_lease() {
    let prefix = fresh_prefix();
    let l = limits(1_000, 1, 1_000);
    let crashed = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    crashed.block_on(async {
        let lim = redis_limiter(&prefix).await.with_lease(Duration::from_millis(1_500));
        let a = lim.admit(&req("t", &l, true)).await.unwrap_or_else(|r| panic!("slot refused: {r:?}"));
        std::mem::forget(a);
    });
    // Dropping the runtime stops the renewal task, as a killed process would.
    drop(crashed);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let lim = redis_limiter(&prefix).await;
        assert_eq!(lim.admit(&req("t", &l, true)).await.err().map(|r| r.kind), Some(LimitKind::Concurrency));
        let mut back = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if lim.admit(&req("t", &l, true)).await.is_ok() {
                back = true;
                break;
            }
        }
        assert!(back, "the crashed holder's slot comes back after its lease expires");
    });
}

/// A decision that reaches Redis after its deadline (it sat in a hung server's buffer while the
/// caller gave up) changes nothing: no rate used, no slot taken.
#[tokio::test(flavor = "multi_thread")]
async fn redis_a_decision_past_its_deadline_commits_nothing() {
    let lim = redis_limiter(&fresh_prefix()).await;
    let l = limits(5, 1, 1_000);
    for _ in 0..3 {
        // Pretend Redis's clock is an hour behind ours: the deadline sent is long past. (Each
        // answer teaches the true offset again, so set it before every call.)
        lim.set_offset_for_test(-3_600_000);
        assert_eq!(
            lim.try_admit(&req("t", &l, true)).await.err(),
            Some(crate::redis::Unavailable::Timeout),
            "the script refuses to decide past its deadline"
        );
    }
    lim.ping().await.unwrap();
    let a = lim.admit(&req("t", &l, true)).await.unwrap_or_else(|r| panic!("refused: {r:?}"));
    assert_eq!(a.rate.remaining, 4, "the late decisions used no rate");
    assert!(a.slot.is_some(), "and held no slot");
}

/// Fail closed: with Redis unreachable every decision is refused as unavailable (not as a
/// limit), quickly, and health says degraded with the reason and no password.
#[tokio::test(flavor = "multi_thread")]
async fn shared_fail_closed_refuses_while_redis_is_unreachable() {
    let url = closed_port_url().replace("redis://", "redis://user:hunter2@");
    let lim = SharedLimiter::start(shared_settings(&url, &fresh_prefix(), FailMode::FailClosed, 1)).await.unwrap();
    let h = lim.health();
    let d = h.degraded.expect("degraded from the start");
    assert!(!d.reason.contains("hunter2"), "{}", d.reason);
    assert_eq!(h.fail_mode, Some("fail_closed"));
    let l = limits(1_000, 10, 1_000);
    let started = Instant::now();
    for _ in 0..20 {
        let r = lim.admit(&req("t", &l, true)).await.err().expect("refused");
        assert_eq!(r.kind, LimitKind::Unavailable);
        assert_eq!(r.retry_after_secs, 1);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "degraded decisions do not wait for Redis");
}

/// Local fallback: decisions continue in process, each limit divided by the divisor.
#[tokio::test(flavor = "multi_thread")]
async fn shared_local_fallback_enforces_the_divided_limits() {
    let lim =
        SharedLimiter::start(shared_settings(&closed_port_url(), &fresh_prefix(), FailMode::Local, 2)).await.unwrap();
    assert!(lim.health().degraded.is_some());
    let l = limits(10, 4, 1_000);
    for i in 0..5u32 {
        let a = lim.admit(&req("t", &l, false)).await.unwrap_or_else(|r| panic!("request {i} refused: {r:?}"));
        assert_eq!(a.rate.limit, 5, "half of 10 per instance");
    }
    assert_eq!(lim.admit(&req("t", &l, false)).await.err().map(|r| r.kind), Some(LimitKind::Tenant));
    let l = limits(1_000, 4, 1_000);
    let a = lim.admit(&req("u", &l, true)).await.ok();
    let b = lim.admit(&req("u", &l, true)).await.ok();
    assert!(a.is_some() && b.is_some());
    assert_eq!(lim.in_flight("u"), 2);
    assert_eq!(lim.admit(&req("u", &l, true)).await.err().map(|r| r.kind), Some(LimitKind::Concurrency));
}

/// A lease that vanished while its request still runs (Redis restarted without persistence) is
/// put back by the next renewal: the set counts the requests really in flight.
#[tokio::test(flavor = "multi_thread")]
async fn redis_a_lost_lease_is_put_back_by_its_renewal() {
    let prefix = fresh_prefix();
    let lim = redis_limiter(&prefix).await.with_lease(Duration::from_millis(900));
    let l = limits(1_000, 1, 1_000);
    let held = lim.admit(&req("t", &l, true)).await.unwrap_or_else(|r| panic!("refused: {r:?}"));
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = ::redis::cmd("DEL").arg(format!("{prefix}:slots:t")).query_async(&mut c).await.unwrap();
    let mut put_back = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n: i64 = ::redis::cmd("ZCARD").arg(format!("{prefix}:slots:t")).query_async(&mut c).await.unwrap();
        if n == 1 {
            put_back = true;
            break;
        }
    }
    assert!(put_back, "the renewal put the lease back");
    assert_eq!(lim.admit(&req("t", &l, true)).await.err().map(|r| r.kind), Some(LimitKind::Concurrency));
    drop(held);
}
