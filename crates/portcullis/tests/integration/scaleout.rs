//! The scale-out shape as operators run it: several real `portcullis serve` processes with the
//! same PostgreSQL and Redis URLs and their own listen addresses, on one data dir — one
//! deployment. One shared limit admits exactly its amount across them, with consistent
//! `X-RateLimit-*` headers; a concurrency cap holds across them and a killed holder's slots come
//! back after the lease; Redis stopped, hung and back gives the configured fail mode within the
//! timeout and recovery without restart (`fail_closed` and `local`); PostgreSQL stopped and back
//! gives fast 503s and recovery; no acknowledged audit event is lost and `audit verify` passes;
//! a change on one instance reaches the others' caches within the documented bound; each
//! instance keeps its own chain in its own directory.
//!
//! These run in every suite shape: each test makes its own database (and, for the fault tests,
//! its own Redis or PostgreSQL server, which it stops).
use crate::harness::{self, PgCluster, PgDatabase, RedisServer, Server, eventually, problem, uuid_like};
use crate::proxy::OpenStream;
use crate::upstream::Upstream;
use reqwest::blocking::Response;
use serde_json::{Value, json};
use sqlx::Connection;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// How long a test waits for something the gateway should do on its own (a change reaching
/// another instance, a recovery): generous, for debug builds on a busy machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// While a dependency is away, no request may hang: the configured bounds are 100 ms (Redis) and
/// 500 ms (PostgreSQL acquire). Generous for a starved debug build: a hang lasts until the
/// dependency returns (the tests keep it away far longer than this) or the client gives up.
const NO_HANG: Duration = Duration::from_secs(20);

/// The typical (median) request while a dependency is away: bounded by its timeout, not by the
/// old 5 s acquire wait or a hung server.
const TYPICAL: Duration = Duration::from_secs(2);

/// Ends a test's load threads when the scope's body returns or fails (a failed assertion must not
/// leave the scope waiting for the clients for ever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Several instances of one deployment behind no load balancer (the tests spread the load), a
/// scripted upstream, an operator, a tenant and a key.
struct Deployment {
    instances: Vec<Server>,
    up: Upstream,
    op: String,
    tenant: String,
    key: String,
}

impl Deployment {
    /// `n` instances on `db`, with `env` (Redis settings and the like), the tenant on `tier`.
    fn start(n: usize, db: PgDatabase, env: &[(&str, &str)], tier: &str) -> Deployment {
        let up = Upstream::start();
        // The per-key rate (100 a minute by default) is raised out of the way: these tests are
        // about the tenant's limits, shared by all its keys.
        let config = [
            up.route("/up", "", "conversation.send", ""),
            String::from("[auth]\ncache_refresh_ms = 200\n[limits]\nprincipal_per_minute = 1000000\n"),
        ]
        .join("\n");
        let first = Server::start_on(Some(db), env, Some(&config));
        let mut instances = vec![first];
        for _ in 1..n {
            let next = instances[0].start_instance(&[]);
            instances.push(next);
        }
        let op = instances[0].operator_token();
        let tenant = instances[0].create_tenant(&op, "scaled", tier);
        let (_, key) = instances[0].create_key(&op, &tenant, "editor");
        Deployment { instances, up, op, tenant, key }
    }

    /// Overrides the tenant's limits. Called before any instance decided for the tenant, each
    /// reads them on first use (no cache to wait for).
    fn set_limits(&self, body: Value) {
        let r = self.instances[0]
            .request("PUT", &format!("/v1/tenants/{}/limits", self.tenant))
            .bearer_auth(&self.op)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    fn admin_url(&self) -> String {
        self.instances[0].pg.as_ref().unwrap().admin_url.clone()
    }

    /// Every request id the audit log holds (read from the database as its superuser).
    fn audited_request_ids(&self) -> HashSet<String> {
        let url = self.admin_url();
        rt().block_on(async {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let ids: Vec<Option<String>> =
                sqlx::query_scalar("SELECT request_id FROM portcullis.audit_events").fetch_all(&mut c).await.unwrap();
            ids.into_iter().flatten().collect()
        })
    }

    /// Stops every instance, then `portcullis audit verify` on the shared data dir: (ok, report).
    fn stop_and_verify(&mut self) -> (bool, String) {
        for s in &mut self.instances {
            s.stop();
        }
        let out = self.instances[0].cli(&["audit", "verify"]);
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }
}

fn redis_env(url: &str, timeout_ms: &str) -> Vec<(String, String)> {
    vec![
        (String::from("PORTCULLIS_REDIS_URL"), url.to_owned()),
        (String::from("PORTCULLIS_REDIS__KEY_PREFIX"), format!("pct-scaleout:{}", uuid_like())),
        (String::from("PORTCULLIS_REDIS__TIMEOUT_MS"), timeout_ms.to_owned()),
    ]
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn num(r: &Response, name: &str) -> u64 {
    header(r, name).unwrap_or_else(|| panic!("missing {name}")).parse().unwrap()
}

/// One proxied request: (response, its request id, how long it took).
fn call(s: &Server, key: &str) -> (Response, String, Duration) {
    let rid = uuid_like();
    let started = Instant::now();
    let r = s.get("/up/echo").header("x-api-key", key).header("x-request-id", &rid).send().unwrap();
    (r, rid, started.elapsed())
}

fn readyz(s: &Server) -> (u16, Value) {
    let r = s.get("/readyz").send().unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

fn metric(s: &Server, op: &str, name_and_labels: &str) -> f64 {
    let text = s.get("/metrics").bearer_auth(op).send().unwrap().text().unwrap();
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

// ============================================================================================

/// Three instances, one tenant limit L (the free tier's 10 a minute), many concurrent clients
/// spread over the three with several keys: exactly L are admitted in the burst, their
/// `X-RateLimit-Remaining` counts L-1 down to 0 once each across the instances, and every refusal
/// is a 429 with the headers and `Retry-After`.
#[test]
fn three_instances_admit_exactly_one_shared_limit() {
    const L: usize = 10;
    let env = redis_env(&harness::redis_url(), "2000");
    let d = Deployment::start(3, PgDatabase::create().migrated(), &refs(&env), "free");
    // More concurrent clients than the free tier's 5 slots: the cap raised so only the rate decides.
    d.set_limits(json!({"concurrency": 100}));
    let keys: Vec<String> = (0..3).map(|_| d.instances[0].create_key(&d.op, &d.tenant, "editor").1).collect();
    let clients = 12;
    let per_client = 6;
    let barrier = Arc::new(Barrier::new(clients));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..clients {
            let (barrier, results, keys, instances) = (barrier.clone(), results.clone(), &keys, &d.instances);
            scope.spawn(move || {
                barrier.wait();
                for j in 0..per_client {
                    let s = &instances[(c + j) % instances.len()];
                    let (r, _, _) = call(s, &keys[c % keys.len()]);
                    let status = r.status().as_u16();
                    let row = (
                        status,
                        num(&r, "x-ratelimit-limit"),
                        num(&r, "x-ratelimit-remaining"),
                        num(&r, "x-ratelimit-reset"),
                        header(&r, "retry-after").map(|v| v.parse::<u64>().unwrap()),
                        s.addr.clone(),
                    );
                    results.lock().unwrap().push(row);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let rows = results.lock().unwrap().clone();
    assert_eq!(rows.len(), clients * per_client);
    let admitted: Vec<_> = rows.iter().filter(|r| r.0 == 200).collect();
    let refused: Vec<_> = rows.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(admitted.len() + refused.len(), rows.len(), "only 200 and 429: {rows:?}");
    // One cell comes back every 6 s (10 a minute): exact while the burst is shorter than that,
    // and never more than those refills on a machine slow enough to take longer.
    let refills = (elapsed.as_millis() / 6_000) as usize;
    assert!(
        admitted.len() >= L && admitted.len() <= L + refills,
        "{} admitted across three instances in {elapsed:?}, limit {L}",
        admitted.len()
    );
    if refills == 0 {
        assert_eq!(admitted.len(), L, "exactly the limit, not the limit per instance");
        let remaining: BTreeSet<u64> = admitted.iter().map(|r| r.2).collect();
        assert_eq!(remaining, (0..L as u64).collect::<BTreeSet<_>>(), "each remaining count once: {admitted:?}");
    }
    let served_by: BTreeSet<&String> = admitted.iter().map(|r| &r.5).collect();
    assert!(served_by.len() >= 2, "the admitted requests were spread over the instances: {admitted:?}");
    for r in &rows {
        assert_eq!(r.1, L as u64, "X-RateLimit-Limit is the tenant's limit on every instance");
        assert!(r.3 <= 60, "X-RateLimit-Reset within the minute: {r:?}");
    }
    for r in &refused {
        assert_eq!(r.2, 0, "a refusal has nothing remaining");
        assert!(r.4.is_some_and(|s| (1..=6).contains(&s)), "Retry-After within one refill: {r:?}");
    }
    // The next one is refused on every instance too.
    for s in &d.instances {
        let (r, _, _) = call(s, &d.key);
        assert_eq!(r.status(), 429, "{}", s.addr);
        let (_, body) = problem(r);
        assert_eq!(body["type"], "https://portcullis.dev/problems/rate-limited");
    }
}

/// A concurrency cap of 3 held across three instances (slow upstream: server-sent events held
/// open), and an instance killed with `kill -9` while it holds a slot: the slot comes back when
/// its lease runs out, while the live instances' leases are renewed and keep theirs.
#[test]
fn a_concurrency_cap_holds_across_instances_and_a_killed_holders_slot_returns_after_its_lease() {
    let mut env = redis_env(&harness::redis_url(), "300");
    env.push((String::from("PORTCULLIS_REDIS__LEASE_SECS"), String::from("3")));
    let mut d = Deployment::start(3, PgDatabase::create().migrated(), &refs(&env), "pro");
    d.set_limits(json!({"concurrency": 3}));
    let stream = |s: &Server| OpenStream::get(&s.addr, "/up/sse?n=1", &[("x-api-key", &d.key)]);
    let mut held: Vec<OpenStream> = d.instances.iter().map(stream).collect();
    for st in &held {
        assert_eq!(st.status, 200, "one slot on each instance");
    }
    for s in &d.instances {
        let (r, _, _) = call(s, &d.key);
        assert_eq!(r.status(), 429, "the cap is the tenant's across instances ({})", s.addr);
        assert_eq!(r.json::<Value>().unwrap()["detail"].as_str().map(|t| t.contains("concurrency")), Some(true));
    }
    // The third instance dies holding its slot: nothing releases it.
    let killed_at = Instant::now();
    d.instances[2].kill9();
    let (r, _, _) = call(&d.instances[0], &d.key);
    if killed_at.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(r.status(), 429, "the dead holder's lease still counts until it expires");
    }
    let back = eventually(PATIENCE, || {
        let st = stream(&d.instances[0]);
        if st.status == 200 {
            held.push(st);
            true
        } else {
            false
        }
    });
    assert!(back, "the killed instance's slot came back after its lease");
    assert!(killed_at.elapsed() >= Duration::from_secs(2), "not before the lease ran out: {:?}", killed_at.elapsed());
    // The survivors' slots were renewed past their first lease: the cap is full again.
    for s in &d.instances[..2] {
        let (r, _, _) = call(s, &d.key);
        assert_eq!(r.status(), 429, "live leases are renewed and still held ({})", s.addr);
    }
    d.up.release(100);
    for mut st in held.drain(..).take(2) {
        assert!(st.read_to_end());
    }
    assert!(eventually(PATIENCE, || call(&d.instances[1], &d.key).0.status() == 200), "released slots are free");
}

// ============================================================================================

/// What one round of requests (one to each instance) saw.
struct Round {
    statuses: Vec<u16>,
    limits: Vec<Option<u64>>,
    problems: Vec<Option<String>>,
    slowest: Duration,
    took: Vec<Duration>,
    ok_ids: Vec<String>,
}

fn round(d: &Deployment) -> Round {
    let mut out = Round {
        statuses: Vec::new(),
        limits: Vec::new(),
        problems: Vec::new(),
        slowest: Duration::ZERO,
        took: Vec::new(),
        ok_ids: Vec::new(),
    };
    for s in &d.instances {
        let (r, rid, took) = call(s, &d.key);
        out.slowest = out.slowest.max(took);
        out.took.push(took);
        let status = r.status().as_u16();
        out.statuses.push(status);
        out.limits.push(header(&r, "x-ratelimit-limit").map(|v| v.parse().unwrap()));
        if status == 200 {
            out.ok_ids.push(rid);
            out.problems.push(None);
        } else {
            let (_, body) = problem(r);
            out.problems.push(body["type"].as_str().map(str::to_owned));
        }
    }
    out
}

/// Redis stopped, then hung (SIGSTOP), then back, under one fail mode: requests follow the mode
/// within the timeout, `/readyz` says degraded (with the reason) then ready, the limits are shared
/// again without a restart, the metrics count the fallback, the password never shows, and every
/// answered request is in the verified audit log.
fn redis_outages_follow_the_fail_mode(mode: &str) {
    let password = format!("pw{}", uuid_like());
    let mut redis = RedisServer::start(Some(&password));
    let mut env = redis_env(&redis.url(), "100");
    env.extend([
        (String::from("PORTCULLIS_REDIS__FAIL_MODE"), mode.to_owned()),
        (String::from("PORTCULLIS_REDIS__PROBE_INTERVAL_MS"), String::from("100")),
        (String::from("PORTCULLIS_REDIS__LEASE_SECS"), String::from("3")),
        (String::from("PORTCULLIS_REDIS__FALLBACK_DIVISOR"), String::from("2")),
    ]);
    // 100 000 a minute shared; the local fallback enforces half of it per instance.
    let mut d = Deployment::start(2, PgDatabase::create().migrated(), &refs(&env), "pro");
    d.set_limits(json!({"rate_per_minute": 100_000, "concurrency": 100}));
    let mut ok_ids = Vec::new();
    let mut readyz_bodies = Vec::new();
    let healthy = |d: &Deployment, ok_ids: &mut Vec<String>| {
        eventually(PATIENCE, || {
            let r = round(d);
            ok_ids.extend(r.ok_ids.clone());
            r.statuses.iter().all(|s| *s == 200)
                && r.limits.iter().all(|l| *l == Some(100_000))
                && d.instances.iter().all(|s| {
                    let (code, v) = readyz(s);
                    code == 200 && v["readiness"] == "ready"
                })
        })
    };
    assert!(healthy(&d, &mut ok_ids), "starts with shared limits");
    let (_, v) = readyz(&d.instances[0]);
    assert_eq!(v["limiter"]["backend"], "redis");
    assert_eq!(v["limiter"]["fail_mode"], mode);

    for outage in ["stopped", "hung"] {
        match outage {
            "stopped" => redis.stop(),
            _ => redis.hang(),
        }
        // The first request of each instance notices; from then on the mode decides.
        let degraded = |r: &Round| match mode {
            "fail_closed" => {
                r.statuses.iter().all(|s| *s == 503)
                    && r.problems
                        .iter()
                        .all(|p| p.as_deref() == Some("https://portcullis.dev/problems/limits-unavailable"))
            }
            _ => r.statuses.iter().all(|s| *s == 200) && r.limits.iter().all(|l| *l == Some(50_000)),
        };
        let mut slowest = Duration::ZERO;
        let noticed = eventually(PATIENCE, || {
            let r = round(&d);
            slowest = slowest.max(r.slowest);
            ok_ids.extend(r.ok_ids.clone());
            degraded(&r)
        });
        assert!(noticed, "redis {outage}: the {mode} mode decides");
        let mut took = Vec::new();
        for _ in 0..10 {
            let r = round(&d);
            slowest = slowest.max(r.slowest);
            took.extend(r.took.clone());
            ok_ids.extend(r.ok_ids.clone());
            assert!(degraded(&r), "redis {outage}, {mode}: {:?} {:?} {:?}", r.statuses, r.limits, r.problems);
        }
        assert!(slowest < NO_HANG, "redis {outage}: no request waits for redis, slowest {slowest:?}");
        let typical = median(took);
        eprintln!("redis {outage}, {mode}: median {typical:?}, slowest {slowest:?}");
        assert!(typical < TYPICAL, "redis {outage}: decided without waiting for redis, median {typical:?}");
        for s in &d.instances {
            let (code, v) = readyz(s);
            assert_eq!(v["readiness"], "degraded", "{v}");
            assert_eq!(v["checks"]["limiter"], "degraded");
            assert_eq!(code, if mode == "fail_closed" { 503 } else { 200 }, "{v}");
            let reason = v["limiter"]["reason"].as_str().unwrap_or_default().to_owned();
            assert!(reason.contains("redis"), "{v}");
            if outage == "hung" {
                assert!(reason.contains("did not answer within the timeout"), "{v}");
            }
            readyz_bodies.push(v.to_string());
        }
        match outage {
            "stopped" => redis.start_again(),
            _ => redis.wake(),
        }
        assert!(healthy(&d, &mut ok_ids), "redis back after being {outage}: shared limits again, no restart");
    }
    // Proxied requests hold slots in Redis again: a stale decision of the hung period holds none.
    let r = round(&d);
    assert!(r.statuses.iter().all(|s| *s == 200), "{:?}", r.statuses);
    ok_ids.extend(r.ok_ids);

    let fallback =
        metric(&d.instances[0], &d.op, &format!("portcullis_limiter_fallback_decisions_total{{mode=\"{mode}\"}}"));
    assert!(fallback >= 10.0, "fallback decisions counted: {fallback}");
    let errors = metric(&d.instances[0], &d.op, "portcullis_limiter_redis_errors_total");
    assert!(errors >= 2.0, "redis errors counted: {errors}");
    assert_eq!(metric(&d.instances[0], &d.op, "portcullis_limiter_degraded"), 0.0);

    let audited = d.audited_request_ids();
    let lost: Vec<&String> = ok_ids.iter().filter(|id| !audited.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} answered requests missing from the audit log", lost.len(), ok_ids.len());
    let (ok, report) = d.stop_and_verify();
    assert!(ok, "{report}");
    for s in &d.instances {
        assert!(!s.log().contains(&password), "the redis password is not logged");
        let printed = s.all_stdout();
        assert!(!printed.contains(&password), "nor printed");
        assert!(printed.lines().any(|l| l.contains("limits:") && l.contains(":***@")), "{printed}");
    }
    assert!(!readyz_bodies.join("").contains(&password));
}

#[test]
fn redis_stopped_hung_and_back_fail_closed_refuses_with_503_and_recovers() {
    redis_outages_follow_the_fail_mode("fail_closed");
}

#[test]
fn redis_stopped_hung_and_back_local_decides_per_instance_and_recovers() {
    redis_outages_follow_the_fail_mode("local");
}

/// One answer under load: (status, request id, how long it took, problem type).
type Answer = (u16, String, Duration, Option<String>);

/// PostgreSQL stopped (`pg_ctl stop -m immediate`) under load and started again: clear 503s
/// within the pool's acquire timeout (no hang), `/readyz` unavailable, recovery without a
/// restart, and every request answered 200 is in the audit log, which verifies.
#[test]
fn postgres_stopped_and_back_gives_fast_503s_recovers_and_loses_no_acknowledged_event() {
    let cluster = PgCluster::start();
    let db = PgDatabase::create_on(&cluster.admin_url()).migrated();
    let env = redis_env(&harness::redis_url(), "2000");
    let mut d = Deployment::start(2, db, &refs(&env), "enterprise");
    d.set_limits(json!({"rate_per_minute": 1_000_000}));
    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<Answer>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let _stop_load = StopOnDrop(&stop);
        for c in 0..4 {
            let (stop, seen, d) = (&stop, &seen, &d);
            scope.spawn(move || {
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let s = &d.instances[i % d.instances.len()];
                    i += 1;
                    let (r, rid, took) = call(s, &d.key);
                    let status = r.status().as_u16();
                    let kind = if status == 200 { None } else { problem(r).1["type"].as_str().map(str::to_owned) };
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push((status, rid, took, kind));
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        let count = |pred: &dyn Fn(&Answer) -> bool| {
            seen.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|r| pred(r)).count()
        };
        assert!(eventually(PATIENCE, || count(&|r| r.0 == 200) >= 20), "serving before the outage");
        cluster.stop_immediate();
        let outage_began = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        assert!(eventually(PATIENCE, || count(&|r| r.0 == 503) >= 20), "503s while PostgreSQL is down");
        for s in &d.instances {
            let (code, v) = readyz(s);
            assert_eq!((code, v["readiness"].as_str()), (503, Some("unavailable")), "{v}");
            assert_eq!(v["checks"]["store"], "down", "{v}");
        }
        cluster.start_again();
        let recovered_at = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        assert!(
            eventually(PATIENCE, || {
                let all = seen.lock().unwrap_or_else(|e| e.into_inner());
                all.len() > recovered_at + 8 && all[all.len() - 8..].iter().all(|r| r.0 == 200)
            }),
            "serving again without a restart"
        );
        stop.store(true, Ordering::SeqCst);
        let all = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let during = &all[outage_began..recovered_at];
        let slowest = during.iter().map(|r| r.2).max().unwrap_or_default();
        assert!(slowest < NO_HANG, "no hang while PostgreSQL was down: slowest {slowest:?}");
        let typical = median(during.iter().filter(|r| r.0 == 503).map(|r| r.2).collect());
        eprintln!("postgres down: median 503 {typical:?}, slowest {slowest:?}");
        assert!(typical < TYPICAL, "503s within the acquire timeout, not after seconds: median {typical:?}");
        for r in all.iter() {
            assert!(r.0 == 200 || r.0 == 503, "only 200 and 503: {r:?}");
            if r.0 == 503 {
                assert_eq!(r.3.as_deref(), Some("https://portcullis.dev/problems/unavailable"), "{r:?}");
            }
        }
    });
    for s in &d.instances {
        assert!(eventually(PATIENCE, || readyz(s).0 == 200), "ready again");
    }
    let audited = d.audited_request_ids();
    let answered: Vec<String> =
        seen.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|r| r.0 == 200).map(|r| r.1.clone()).collect();
    let lost: Vec<&String> = answered.iter().filter(|id| !audited.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged requests missing from the audit log", lost.len(), answered.len());
    let (ok, report) = d.stop_and_verify();
    assert!(ok, "{report}");
}

/// `audit.acknowledge = "file"`: an instance answers once an event is in its own JSONL file, and
/// PostgreSQL is the query index. With PostgreSQL stopped, cached keys keep being served and
/// every answer is still audited (in the files); back, the index catches up. Killed with -9 under
/// load during another outage and restarted, the instance brings every event it acknowledged
/// (from its files alone) into PostgreSQL, and the chain verifies.
#[test]
fn file_acknowledged_instances_serve_through_a_postgres_outage_and_lose_no_event_to_kill_9() {
    let cluster = PgCluster::start();
    let db = PgDatabase::create_on(&cluster.admin_url()).migrated();
    let mut d = Deployment::start(1, db, &[("PORTCULLIS_AUDIT__ACKNOWLEDGE", "file")], "enterprise");
    d.set_limits(json!({"rate_per_minute": 1_000_000}));
    let banner = d.instances[0].all_stdout();
    assert!(banner.contains("audit:    acknowledged at the instance's JSONL write"), "{banner}");
    let mut answered: Vec<String> = Vec::new();
    // Lets the change feed (polled every 200 ms here) apply what is pending — the limits just set,
    // or the cache reset that follows an outage — so the requests after it warm caches that stay.
    let settle = || std::thread::sleep(Duration::from_millis(1_000));
    let served = |d: &Deployment, answered: &mut Vec<String>| {
        let (r, rid, _) = call(&d.instances[0], &d.key);
        assert_eq!(r.status(), 200, "{:?}", r.text());
        answered.push(rid);
    };
    settle();
    for _ in 0..5 {
        served(&d, &mut answered);
    }
    cluster.stop_immediate();
    for _ in 0..20 {
        served(&d, &mut answered);
    }
    cluster.start_again();
    let all_in_database = |d: &Deployment, answered: &[String]| {
        let audited = d.audited_request_ids();
        answered.iter().filter(|id| !audited.contains(*id)).count()
    };
    assert!(
        eventually(PATIENCE, || all_in_database(&d, &answered) == 0),
        "{} answered during the outage never reached the index",
        all_in_database(&d, &answered)
    );

    // kill -9 in the middle of a burst served while PostgreSQL is away again: what was answered
    // 200 is only in the instance's files when it dies, and its restart brings it into PostgreSQL.
    // (The caches start over once the change feed returns after an outage: warm them first.)
    settle();
    for _ in 0..3 {
        served(&d, &mut answered);
    }
    cluster.stop_immediate();
    let stop = AtomicBool::new(false);
    let burst: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let _stop_load = StopOnDrop(&stop);
        for _ in 0..4 {
            let (stop, burst) = (&stop, &burst);
            let (url, key) = (d.instances[0].url("/up/echo"), d.key.clone());
            scope.spawn(move || {
                let c = harness::client();
                while !stop.load(Ordering::SeqCst) {
                    let rid = uuid_like();
                    let sent = c.get(&url).header("x-api-key", &key).header("x-request-id", &rid).send();
                    match sent {
                        Ok(r) if r.status() == 200 => burst.lock().unwrap_or_else(|e| e.into_inner()).push(rid),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
        }
        assert!(eventually(PATIENCE, || burst.lock().unwrap_or_else(|e| e.into_inner()).len() >= 50));
        d.instances[0].kill9();
        stop.store(true, Ordering::SeqCst);
    });
    let burst = burst.into_inner().unwrap_or_else(|e| e.into_inner());
    cluster.start_again();
    let audited = d.audited_request_ids();
    assert!(burst.iter().all(|id| !audited.contains(id)), "the burst was answered from the files alone");
    answered.extend(burst);
    d.instances[0].spawn();
    assert!(
        eventually(PATIENCE, || all_in_database(&d, &answered) == 0),
        "{} of {} acknowledged events missing from PostgreSQL after the restart",
        all_in_database(&d, &answered),
        answered.len()
    );
    let (ok, report) = d.stop_and_verify();
    assert!(ok, "{report}");
}

// ============================================================================================

/// A change made on one instance reaches the others' caches through the change feed within the
/// documented bound (`auth.cache_refresh_ms`, 200 ms here, plus one poll): key revoked, key
/// rotated (the old key's grace ends), tenant suspended and resumed, limits lowered, tenant IP
/// list changed.
#[test]
fn changes_on_one_instance_reach_the_others_within_the_refresh_bound() {
    let d = Deployment::start(3, PgDatabase::create().migrated(), &[], "pro");
    let a = &d.instances[0];
    let others = &d.instances[1..];
    let authorize = |s: &Server, key: &str| -> Response {
        s.post("/v1/authorize").header("x-api-key", key).json(&json!({"action": "conversation.send"})).send().unwrap()
    };
    let bound = Duration::from_secs(5);
    let mut took = BTreeMap::new();
    let mut reaches = |what: &str, ok: &dyn Fn(&Server) -> bool| {
        let started = Instant::now();
        for s in others {
            assert!(eventually(bound, || ok(s)), "{what} reached {} within {bound:?}", s.addr);
        }
        took.insert(what.to_owned(), started.elapsed());
    };
    // Warm every cache first: a cold one would read the store and prove nothing.
    let (kid, key) = a.create_key(&d.op, &d.tenant, "service");
    for s in &d.instances {
        assert_eq!(authorize(s, &key).status(), 200);
    }
    let r = a.delete(&format!("/v1/keys/{kid}")).bearer_auth(&d.op).header("x-tenant-id", &d.tenant).send().unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    reaches("key revoked", &|s| authorize(s, &key).status() == 401);

    let (kid, old) = a.create_key(&d.op, &d.tenant, "service");
    for s in &d.instances {
        assert_eq!(authorize(s, &old).status(), 200);
    }
    let r = a
        .post(&format!("/v1/keys/{kid}/rotate"))
        .bearer_auth(&d.op)
        .header("x-tenant-id", &d.tenant)
        .json(&json!({"grace_period": "1s"}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let new = r.json::<Value>().unwrap()["key"].as_str().unwrap().to_owned();
    reaches("key rotated: new key works", &|s| authorize(s, &new).status() == 200);
    reaches("key rotated: old key's grace over", &|s| authorize(s, &old).status() == 401);

    for s in &d.instances {
        assert_eq!(authorize(s, &new).status(), 200);
    }
    assert_eq!(a.post(&format!("/v1/tenants/{}/suspend", d.tenant)).bearer_auth(&d.op).send().unwrap().status(), 200);
    reaches("tenant suspended", &|s| authorize(s, &new).status() == 403);
    assert_eq!(a.post(&format!("/v1/tenants/{}/resume", d.tenant)).bearer_auth(&d.op).send().unwrap().status(), 200);
    reaches("tenant resumed", &|s| authorize(s, &new).status() == 200);

    let r = a
        .request("PUT", &format!("/v1/tenants/{}/limits", d.tenant))
        .bearer_auth(&d.op)
        .json(&json!({"rate_per_minute": 7}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    reaches("limits lowered", &|s| header(&authorize(s, &new), "x-ratelimit-limit").as_deref() == Some("7"));
    let r = a
        .request("PUT", &format!("/v1/tenants/{}/limits", d.tenant))
        .bearer_auth(&d.op)
        .json(&json!({"rate_per_minute": 1000}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    reaches("limits raised", &|s| header(&authorize(s, &new), "x-ratelimit-limit").as_deref() == Some("1000"));

    let put_rules = |rules: Value| {
        let r = a.request("PUT", &format!("/v1/tenants/{}/ip-rules", d.tenant)).bearer_auth(&d.op).json(&rules).send();
        assert_eq!(r.unwrap().status(), 200);
    };
    put_rules(json!({"block": ["127.0.0.1"]}));
    reaches("IP block added", &|s| authorize(s, &new).status() == 403);
    put_rules(json!({"block": []}));
    reaches("IP block removed", &|s| authorize(s, &new).status() == 200);
    eprintln!("cross-instance staleness observed (cache_refresh_ms = 200): {took:?}");
}

/// Instances of one deployment share the data dir: each keeps its lock, chain id and audit files
/// in `instances/<listen address>/`; a restart on the same address continues its chain; the
/// embedded shape still allows one `serve` per data dir.
#[test]
fn instances_on_one_data_dir_keep_their_own_chains_and_a_restart_continues_it() {
    let d = Deployment::start(2, PgDatabase::create().migrated(), &[], "pro");
    let mut instances = d.instances;
    let dirs: Vec<_> = instances.iter().map(Server::instance_dir).collect();
    assert_ne!(dirs[0], dirs[1]);
    for (s, dir) in instances.iter().zip(&dirs) {
        assert_eq!(dir.parent().unwrap(), s.data_dir().join("instances"));
        assert!(dir.join("node-id").exists() && dir.join("audit").is_dir() && dir.join("serve.lock").exists());
    }
    assert_ne!(instances[0].writer_id(), instances[1].writer_id(), "one chain each");
    assert!(!instances[0].data_dir().join("node-id").exists(), "nothing of an instance at the top of the data dir");
    let head = |s: &Server, writer: &str| -> u64 {
        let v = s.cli_json(&["audit", "verify"]);
        assert_eq!(v["ok"], true, "{v:#}");
        v["writers"].as_array().unwrap().iter().find(|w| w["writer_id"] == writer).unwrap()["head_seq"]
            .as_u64()
            .unwrap()
    };
    let writer = instances[1].writer_id();
    for _ in 0..3 {
        assert_eq!(call(&instances[1], &d.key).0.status(), 200);
    }
    instances[1].stop();
    let before = head(&instances[0], &writer);
    instances[1].spawn();
    assert_eq!(instances[1].writer_id(), writer, "the same address, the same chain");
    assert_eq!(call(&instances[1], &d.key).0.status(), 200);
    instances[1].stop();
    let after = head(&instances[0], &writer);
    assert!(after > before, "the chain continued from seq {before} to {after}");
    let v = instances[0].cli_json(&["audit", "verify"]);
    let w = v["writers"].as_array().unwrap().iter().find(|w| w["writer_id"] == writer.as_str()).unwrap().clone();
    assert_eq!(w["records"], w["head_seq"], "one contiguous chain: {w}");
    drop(d.up);

    // Embedded: a second `serve` on the same data dir is still refused.
    let s = Server::start_on(None, &[], None);
    let out = std::process::Command::new(harness::BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORTCULLIS_DATA_DIR", s.data_dir())
        .env("PORTCULLIS_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another `portcullis serve` is using the data dir"));
}

/// The audit writer of an instance whose last commit's outcome was unknown (PostgreSQL went away
/// between commit and answer) reads its chain head back: a batch that did commit is kept, its
/// lines restored to the files, and the chain continues after it instead of colliding with it.
#[test]
fn an_audit_commit_in_doubt_that_did_commit_is_kept_and_the_chain_continues() {
    use portcullis_core::audit::{AuditEvent, AuditResult, GENESIS_HASH};
    use portcullis_store::postgres::{PgAuditStore, check_app_role, connect};
    use portcullis_store::{AuditStore, ChainHead, ChainSink, SinkUndo};
    struct Lines(Mutex<Vec<u64>>);
    impl ChainSink for Lines {
        fn write(&self, records: &[portcullis_core::audit::AuditRecord]) -> Result<SinkUndo, String> {
            self.0.lock().unwrap().extend(records.iter().map(|r| r.seq));
            Ok(SinkUndo::default())
        }
        fn undo(&self, _: SinkUndo) {}
    }
    let db = PgDatabase::create().migrated();
    rt().block_on(async {
        let pool = connect(&db.app_url, 2).await.unwrap();
        check_app_role(&pool).await.unwrap();
        let store = PgAuditStore::new(pool);
        let sink = Lines(Mutex::new(Vec::new()));
        let genesis = ChainHead { writer_id: String::from("w"), seq: 0, hash: String::from(GENESIS_HASH) };
        let event = || AuditEvent::new(1_764_000_000_000, "test.event", AuditResult::Success);
        // The batch committed; pretend its answer was lost: the writer still believes in genesis.
        let first = store.append("w", Some(&genesis), vec![event(), event()], &Lines(Mutex::new(Vec::new()))).await;
        assert_eq!(first.unwrap().len(), 2);
        store.mark_commit_in_doubt_for_tests();
        let next = store.append("w", Some(&genesis), vec![event()], &sink).await.unwrap();
        assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3], "continues after the kept batch");
        assert_eq!(*sink.0.lock().unwrap(), vec![1, 2, 3], "the kept batch's lines are restored to the files");
        let chain = store.chain("w").await.unwrap();
        assert_eq!(chain.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        // Its own idea of the head catches up: the next batch follows normally.
        let head = ChainHead { writer_id: String::from("w"), seq: 3, hash: next[0].hash.clone() };
        let last = store.append("w", Some(&head), vec![event()], &sink).await.unwrap();
        assert_eq!(last[0].seq, 4);
    });
}

/// A Redis URL that cannot be used, or a `[redis]` setting out of range, stops `serve` at start
/// with a message naming it — and never printing the URL's password. (Redis merely being down is
/// not a refusal: see the outage tests.)
#[test]
fn an_unusable_redis_setting_is_refused_at_start_naming_it_without_the_password() {
    let run = |env: &[(&str, &str)]| -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(harness::BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORTCULLIS_DATA_DIR", dir.path().join("data"))
            .env("PORTCULLIS_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .arg("serve")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, text) = run(&[("PORTCULLIS_REDIS_URL", "http://user:hunter2@127.0.0.1:6379")]);
    assert!(!ok && text.contains("PORTCULLIS_REDIS_URL") && text.contains("invalid redis URL"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let (ok, text) = run(&[("PORTCULLIS_REDIS_URL", &harness::redis_url()), ("PORTCULLIS_REDIS__FAIL_MODE", "open")]);
    assert!(!ok && text.contains("redis.fail_mode") && text.contains("`open`"), "{text}");
    let (ok, text) = run(&[("PORTCULLIS_REDIS__LEASE_SECS", "0")]);
    assert!(!ok && text.contains("redis.lease_secs"), "{text}");
    let (ok, text) = run(&[("PORTCULLIS_DATABASE__ACQUIRE_TIMEOUT_MS", "0")]);
    assert!(!ok && text.contains("database.acquire_timeout_ms"), "{text}");
}
