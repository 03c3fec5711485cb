//! Hot-path benchmarks: API-key verification (format check, HMAC, cached lookup, tenant state)
//! and audit append (single event and group-committed bursts, with and without fsync).
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
            },
            store,
            audit.clone(),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let op = Grant {
            principal: Principal::system_operator(String::from("bench")),
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
