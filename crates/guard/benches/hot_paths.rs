//! Hot-path benchmarks: API-key verification (format check, HMAC, cached lookup, tenant state)
//! audit append (single event and group-committed bursts, with and without fsync) and the query
//! index's import.
//! Run: `cargo bench -p portcullis-guard`. Under `cargo test` each runs once as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup fails loudly")]

use divan::Bencher;
use portcullis_audit::{AuditConfig, AuditLog};
use portcullis_core::audit::{AuditEvent, AuditResult};
use portcullis_core::{Permission, Principal, Role, TenantScope, Tier, apikey};
use portcullis_guard::admin::NewKey;
use portcullis_guard::{Credential, Grant, Guard, GuardConfig, LoginPolicy, RequestMeta, SystemClock};
use portcullis_store::sqlite::{SqliteAuditStore, SqliteStore};
use portcullis_store::{AuditStore, Store};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    divan::main();
}

struct Env {
    rt: tokio::runtime::Runtime,
    guard: Arc<Guard>,
    audit: AuditLog,
    key: String,
    _dir: tempfile::TempDir,
}

fn env(fsync: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (guard, audit, key) = rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("p.db")).await.unwrap());
        let audit_db = dir.path().join("audit.db");
        let audit = AuditLog::start(
            AuditConfig {
                writer_id: String::from("bench"),
                dir: dir.path().join("audit"),
                fsync,
                signing_key: [7u8; 32],
                checkpoint_every: 1000,
                checkpoint_interval: Duration::from_secs(60),
                max_batch: 4096,
                exclusive: true,
                acknowledge: portcullis_audit::Acknowledge::FileWrite,
            },
            move || {
                Box::pin(async move {
                    let s = SqliteAuditStore::open(&audit_db, fsync).await.map_err(|e| e.to_string())?;
                    Ok(Arc::new(s) as Arc<dyn AuditStore>)
                })
            },
        )
        .await
        .unwrap();
        let guard = Guard::new(
            GuardConfig {
                credential_throttle: portcullis_guard::CredentialThrottle::default(),
                master_key: portcullis_guard::sealed::MasterKey::new([5u8; 32]),
                limiter: Arc::new(portcullis_limiter::local::LocalLimiter::new()),
                limits: portcullis_guard::LimitsConfig::default(),
                pepper: vec![1u8; 32],
                session_ttl: Duration::from_secs(3600),
                cache_refresh: Duration::from_secs(1),
                login: LoginPolicy::default(),
                jwt: None,
                policy: Arc::new(portcullis_guard::PolicyEngine::new([]).unwrap()),
            },
            store,
            audit.clone(),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let op = Grant {
            principal: Arc::new(Principal::system_operator(String::from("bench"))),
            scope: None,
            permission: Permission::TenantsManage,
        };
        let meta = RequestMeta::default();
        let t = guard.create_tenant(&op, &meta, "bench", Tier::Pro).await.unwrap();
        let scope = TenantScope::operator_cli(t.id);
        let new = NewKey { name: String::from("k"), role: Role::Service, scopes: vec![], expires_in: None };
        let (key, _) = guard.create_key(&op, &meta, &scope, new).await.unwrap();
        (guard, audit, key)
    });
    Env { rt, guard, audit, key, _dir: dir }
}

/// Shape check + checksum + HMAC-SHA-256: the work done for every presented key.
#[divan::bench]
fn key_format_and_hmac(b: Bencher) {
    let key = apikey::generate(&[42u8; 64]);
    let pepper = [9u8; 32];
    b.bench(|| {
        apikey::validate(divan::black_box(&key)).unwrap();
        apikey::hash(&pepper, divan::black_box(&key))
    });
}

/// Full verification of a cached key through the Guard (no store access).
#[divan::bench]
fn authenticate_cached_key(b: Bencher) {
    let e = env(false);
    let meta = RequestMeta::default();
    let cred = Credential::classify(&e.key);
    e.rt.block_on(e.guard.authenticate(Some(cred.clone()), &meta)).unwrap();
    b.bench(|| e.rt.block_on(e.guard.authenticate(Some(cred.clone()), &meta)).unwrap());
}

fn event() -> AuditEvent {
    let mut ev = AuditEvent::new(1_764_000_000_000, "proxy.request", AuditResult::Success);
    ev.tenant_id = Some(String::from("01900000-0000-7000-8000-000000000000"));
    ev.user_id = Some(String::from("key:01900000-0000-7000-8000-000000000001"));
    ev.request_id = Some(String::from("01a2093bd42c77d88f842383aab9bb8f"));
    ev.ip_address = Some(String::from("127.0.0.1"));
    ev
}

/// One event, waited for alone: the latency a lone request pays.
#[divan::bench(args = [false, true], sample_count = 30, sample_size = 10)]
fn audit_append_single(b: Bencher, fsync: bool) {
    let e = env(fsync);
    b.bench(|| e.rt.block_on(e.audit.record(event())).unwrap());
}

/// 256 concurrent events: group commit turns them into a few batches.
#[divan::bench(args = [false, true], sample_count = 20, sample_size = 1)]
fn audit_append_burst_256(b: Bencher, fsync: bool) {
    let e = env(fsync);
    b.counter(divan::counter::ItemsCount::new(256usize)).bench(|| {
        e.rt.block_on(async {
            let handles: Vec<_> = (0..256)
                .map(|_| {
                    let a = e.audit.clone();
                    tokio::spawn(async move { a.record(event()).await })
                })
                .collect();
            for h in handles {
                h.await.unwrap().unwrap();
            }
        })
    });
}

/// The Guard's whole decision for a proxied request of a cached key: authenticate, tenant guard
/// (status, IP lists), permission, then rate + concurrency + quota (no audit: measured above).
#[divan::bench]
fn guard_decision_cached_key(b: Bencher) {
    let e = env(false);
    let meta = RequestMeta { request_id: String::from("r"), ip: Some(String::from("192.0.2.10")), user_agent: None };
    let cred = Credential::classify(&e.key);
    let run = || {
        e.rt.block_on(async {
            let g = e.guard.check(Some(cred.clone()), None, Permission::Execute, &meta).await.unwrap();
            e.guard.admit(&g.principal, "/up", None, true).await.unwrap().is_ok()
        })
    };
    assert!(run());
    b.bench(run);
}

/// One limiter decision (tenant, principal and route rate, concurrency slot, quota), in process.
#[divan::bench]
fn limiter_admit(b: Bencher) {
    use portcullis_limiter::{LimitRequest, Limiter, Limits};
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let lim = portcullis_limiter::local::LocalLimiter::new();
    let limits = Limits {
        tenant_per_minute: 100_000_000,
        principal_per_minute: 100_000_000,
        route_per_minute: Some(100_000_000),
        global_per_second: None,
        concurrency: 1_000,
        requests_per_day: u64::MAX,
    };
    b.bench(|| {
        let req = LimitRequest {
            tenant: "01900000-0000-7000-8000-000000000000",
            principal: "key:01900000-0000-7000-8000-000000000001",
            route: "/up",
            limits: &limits,
            hold_slot: true,
            now_ms: 1_764_000_000_000,
        };
        rt.block_on(lim.admit(&req)).is_ok()
    });
}

/// CIDR lookup in a set of `n` networks (v4 and v6 mixed): one binary search.
#[divan::bench(args = [10, 1_000, 10_000])]
fn cidr_lookup(b: Bencher, n: u32) {
    use portcullis_core::iplist::{IpSet, parse_net};
    let nets: Vec<_> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                parse_net(&format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255)).unwrap()
            } else {
                parse_net(&format!("2001:db8:{:x}::/48", i)).unwrap()
            }
        })
        .collect();
    let set = IpSet::new(&nets);
    let probes: Vec<std::net::IpAddr> =
        ["10.0.3.7", "192.0.2.1", "2001:db8:7::1", "2001:db9::1"].iter().map(|s| s.parse().unwrap()).collect();
    b.bench(|| probes.iter().filter(|ip| set.contains(**ip)).count());
}

/// The query index's import of acknowledged records (the audit writer's thread does this once
/// per batch, ~20 ms behind the log): SQLite, per row, into a table that keeps growing.
#[divan::bench(sample_count = 300, sample_size = 1)]
fn audit_index_import_1024(b: Bencher) {
    use portcullis_core::audit::AuditRecord;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = rt.block_on(SqliteAuditStore::open(&dir.path().join("audit.db"), false)).unwrap();
    let mut seq = 0u64;
    let mut prev = String::from(portcullis_core::audit::GENESIS_HASH);
    b.counter(divan::counter::ItemsCount::new(1024usize))
        .with_inputs(|| {
            (0..1024)
                .map(|_| {
                    seq += 1;
                    let r = AuditRecord::chain("bench", seq, &prev, event());
                    prev.clone_from(&r.hash);
                    r
                })
                .collect::<Vec<_>>()
        })
        .bench_local_values(|records| rt.block_on(store.import(&records)).unwrap());
}
