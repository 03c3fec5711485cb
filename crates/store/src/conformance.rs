//! One suite, both backends: the embedded SQLite store (a fresh file in a temp dir) and the
//! PostgreSQL one (a real server: the superuser URL in `PORTCULLIS_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; each test makes its own database and roles,
//! migrated as the owner and used as the plain application role, and drops them again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use crate::postgres::{PgStore, check_app_role};
use crate::sqlite::SqliteStore;
use crate::*;
use portcullis_core::Tier;
use sqlx::Connection;

pub(crate) const TENANT_A: &str = "0190aaaa-0000-7000-8000-00000000000a";
pub(crate) const TENANT_B: &str = "0190bbbb-0000-7000-8000-00000000000b";

pub(crate) fn scope(tenant: &str) -> TenantScope {
    TenantScope::authorized(TenantId::parse(tenant).unwrap(), false)
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:016x}{:08x}{:08x}", t as u64, std::process::id(), n)
}

/// A SQLite store on a fresh file; the directory goes when the value is dropped.
pub(crate) struct SqliteFixture {
    pub store: SqliteStore,
    _dir: tempfile::TempDir,
}

pub(crate) async fn sqlite_store() -> SqliteFixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("portcullis.db")).await.unwrap();
    SqliteFixture { store, _dir: dir }
}

/// The superuser URL of the test PostgreSQL server.
pub(crate) fn pg_admin_url() -> String {
    std::env::var("PORTCULLIS_TEST_PG_URL")
        .unwrap_or_else(|_| String::from("postgres://postgres@127.0.0.1:5432/postgres"))
}

/// `url` with its user, password and database replaced (host, port and parameters kept).
fn pg_url_for(url: &str, user: &str, password: &str, db: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let query = path.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
    if password.is_empty() {
        format!("postgres://{user}@{host}/{db}{query}")
    } else {
        format!("postgres://{user}:{password}@{host}/{db}{query}")
    }
}

async fn pg_exec(url: &str, statements: &[String]) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!("connect to the test PostgreSQL: {e} (set PORTCULLIS_TEST_PG_URL; scripts/test.sh provides one)")
    });
    for s in statements {
        sqlx::raw_sql(s).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let _ = c.close().await;
}

/// A fresh database with an owner role and a plain application role, as a DBA sets them up.
/// Dropped (database and roles) when the value is dropped.
pub(crate) struct PgDatabase {
    server_admin_url: String,
    pub name: String,
    pub owner: String,
    pub app: String,
    pub owner_url: String,
    pub app_url: String,
}

impl PgDatabase {
    pub(crate) async fn create() -> PgDatabase {
        let server_admin_url = pg_admin_url();
        let name = format!("pcs_{}", unique());
        let owner = format!("{name}_owner");
        let app = format!("{name}_app");
        let owner_password = format!("own{}", unique());
        let app_password = format!("app{}", unique());
        pg_exec(
            &server_admin_url,
            &[
                format!("CREATE ROLE {owner} LOGIN PASSWORD '{owner_password}'"),
                format!("CREATE ROLE {app} LOGIN PASSWORD '{app_password}'"),
                format!("CREATE DATABASE {name} OWNER {owner}"),
            ],
        )
        .await;
        PgDatabase {
            owner_url: pg_url_for(&server_admin_url, &owner, &owner_password, &name),
            app_url: pg_url_for(&server_admin_url, &app, &app_password, &name),
            server_admin_url,
            name,
            owner,
            app,
        }
    }

    /// Created and migrated to this binary's schema.
    pub(crate) async fn migrated() -> PgDatabase {
        let db = Self::create().await;
        crate::postgres::migrate(&db.owner_url, &db.app).await.unwrap();
        db
    }

    /// A store on a pool of the application role, checked as `serve` checks it.
    pub(crate) async fn store(&self) -> PgStore {
        let pool = crate::postgres::connect(&self.app_url, 4).await.unwrap();
        check_app_role(&pool).await.unwrap();
        PgStore::new(pool)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Best effort, on a thread of its own (this may run inside the test's runtime): a
        // leftover uniquely named database disturbs no later run.
        let url = self.server_admin_url.clone();
        let stmts = [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            format!("DROP ROLE IF EXISTS {}", self.app),
            format!("DROP ROLE IF EXISTS {}", self.owner),
        ];
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    for s in &stmts {
                        let _ = sqlx::raw_sql(s).execute(&mut c).await;
                    }
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

pub(crate) async fn seed_tenants(store: &dyn Store) {
    for (id, name) in [(TENANT_A, "tenant a"), (TENANT_B, "tenant b")] {
        store
            .create_tenant(&Tenant {
                id: TenantId::parse(id).unwrap(),
                name: name.to_owned(),
                tier: Tier::Free,
                status: TenantStatus::Active,
                created_at_ms: 1,
                updated_at_ms: 1,
            })
            .await
            .unwrap();
    }
}

pub(crate) fn policy(tenant: &str, id: &str, name: &str) -> PolicyRecord {
    PolicyRecord {
        id: id.to_owned(),
        tenant_id: TenantId::parse(tenant).unwrap(),
        name: name.to_owned(),
        description: format!("{name}, described"),
        cedar: format!("permit (principal, action, resource) when {{ context.name == \"{name}\" }};"),
        enabled: true,
        version: 1,
        created_at_ms: 1_000,
        created_by: String::from("user:creator"),
        updated_at_ms: 1_000,
        updated_by: String::from("user:creator"),
    }
}

const P1: &str = "pol_00000000000000000000000000000001";
const P2: &str = "pol_00000000000000000000000000000002";
const P3: &str = "pol_00000000000000000000000000000003";

/// The `policies` changes recorded after `seq`, as entity ids.
async fn policy_changes_since(store: &dyn Store, seq: i64) -> Vec<String> {
    let changes = store.changes_since(seq, 1_000).await.unwrap();
    changes.into_iter().filter(|c| c.kind == ChangeKind::Policies).map(|c| c.entity_id).collect()
}

async fn policies_create_get_list_and_conflicts(store: &dyn Store) {
    seed_tenants(store).await;
    let (a, b) = (scope(TENANT_A), scope(TENANT_B));
    let before = store.latest_change_seq().await.unwrap();
    let beta = policy(TENANT_A, P1, "beta");
    let alpha = policy(TENANT_A, P2, "alpha");
    store.create_policy(&a, &beta).await.unwrap();
    store.create_policy(&a, &alpha).await.unwrap();

    assert_eq!(store.get_policy(&a, P1).await.unwrap(), Some(beta.clone()));
    assert_eq!(store.list_policies(&a).await.unwrap(), vec![alpha.clone(), beta.clone()], "ordered by name");
    assert_eq!(store.get_policy(&a, P3).await.unwrap(), None);
    let versions = store.policy_versions(&a, P1).await.unwrap();
    assert_eq!(
        versions,
        vec![PolicyVersion {
            policy_id: P1.to_owned(),
            version: 1,
            name: beta.name.clone(),
            description: beta.description.clone(),
            cedar: beta.cedar.clone(),
            enabled: true,
            change: String::from("create"),
            changed_at_ms: 1_000,
            changed_by: String::from("user:creator"),
        }]
    );
    assert_eq!(policy_changes_since(store, before).await, vec![TENANT_A.to_owned(), TENANT_A.to_owned()]);

    // The same name (or the same id) again in the tenant: a conflict, and nothing written.
    let seq = store.latest_change_seq().await.unwrap();
    let err = store.create_policy(&a, &policy(TENANT_A, P3, "beta")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = store.create_policy(&a, &policy(TENANT_A, P1, "gamma")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.list_policies(&a).await.unwrap().len(), 2);
    assert!(store.policy_versions(&a, P3).await.unwrap().is_empty());
    assert_eq!(store.latest_change_seq().await.unwrap(), seq, "a refused create records no change");

    // Names are unique per tenant only.
    store.create_policy(&b, &policy(TENANT_B, P3, "beta")).await.unwrap();
    assert_eq!(store.list_policies(&b).await.unwrap().len(), 1);

    // A record naming another tenant than the scope is refused, whichever tenant it names.
    let err = store.create_policy(&a, &policy(TENANT_B, "pol_00000000000000000000000000000004", "x")).await;
    assert!(matches!(&err, Err(StoreError::Corrupt(m)) if m == "policy tenant does not match scope"), "{err:?}");
    assert_eq!(store.list_policies(&a).await.unwrap().len(), 2);
    assert_eq!(store.list_policies(&b).await.unwrap().len(), 1);
}

async fn policies_update_is_optimistic_and_versioned(store: &dyn Store) {
    seed_tenants(store).await;
    let a = scope(TENANT_A);
    let original = policy(TENANT_A, P1, "one");
    store.create_policy(&a, &original).await.unwrap();
    store.create_policy(&a, &policy(TENANT_A, P2, "two")).await.unwrap();

    let before = store.latest_change_seq().await.unwrap();
    let mut next = original.clone();
    next.name = String::from("uno");
    next.description = String::from("renamed");
    next.cedar = String::from("forbid (principal, action, resource);");
    next.enabled = false;
    next.version = 2;
    next.updated_at_ms = 2_000;
    next.updated_by = String::from("user:editor");
    assert!(store.update_policy(&a, &next).await.unwrap());
    assert_eq!(store.get_policy(&a, P1).await.unwrap(), Some(next.clone()));
    let versions = store.policy_versions(&a, P1).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| (v.version, v.change.as_str())).collect::<Vec<_>>(),
        [(1, "create"), (2, "update")]
    );
    let v2 = &versions[1];
    assert_eq!((v2.name.as_str(), v2.cedar.as_str(), v2.enabled), ("uno", next.cedar.as_str(), false));
    assert_eq!((v2.changed_at_ms, v2.changed_by.as_str()), (2_000, "user:editor"));
    assert_eq!(policy_changes_since(store, before).await, vec![TENANT_A.to_owned()]);

    // Stale (the stored version is 2, not 1), skipping ahead, or unknown: false, and nothing
    // written (no history entry, no change).
    let seq = store.latest_change_seq().await.unwrap();
    let mut stale = next.clone();
    stale.description = String::from("stale");
    assert!(!store.update_policy(&a, &stale).await.unwrap());
    stale.version = 4;
    assert!(!store.update_policy(&a, &stale).await.unwrap());
    stale.version = i64::MIN;
    assert!(!store.update_policy(&a, &stale).await.unwrap());
    let mut unknown = policy(TENANT_A, P3, "three");
    unknown.version = 2;
    assert!(!store.update_policy(&a, &unknown).await.unwrap());
    assert_eq!(store.get_policy(&a, P1).await.unwrap(), Some(next.clone()));
    assert_eq!(store.policy_versions(&a, P1).await.unwrap().len(), 2);
    assert!(store.policy_versions(&a, P3).await.unwrap().is_empty());
    assert_eq!(store.latest_change_seq().await.unwrap(), seq);

    // Renaming onto another policy's name: a conflict, nothing written.
    let mut clash = next.clone();
    clash.name = String::from("two");
    clash.version = 3;
    let err = store.update_policy(&a, &clash).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_policy(&a, P1).await.unwrap(), Some(next.clone()));
    assert_eq!(store.policy_versions(&a, P1).await.unwrap().len(), 2);
    assert_eq!(store.latest_change_seq().await.unwrap(), seq);
}

async fn policies_delete_keeps_the_history(store: &dyn Store) {
    seed_tenants(store).await;
    let a = scope(TENANT_A);
    let p = policy(TENANT_A, P1, "one");
    store.create_policy(&a, &p).await.unwrap();
    let mut next = p.clone();
    next.cedar = String::from("forbid (principal, action, resource);");
    next.version = 2;
    next.updated_at_ms = 2_000;
    assert!(store.update_policy(&a, &next).await.unwrap());

    let before = store.latest_change_seq().await.unwrap();
    assert!(store.delete_policy(&a, P1, "user:deleter", 3_000).await.unwrap());
    assert_eq!(store.get_policy(&a, P1).await.unwrap(), None);
    assert!(store.list_policies(&a).await.unwrap().is_empty());
    let versions = store.policy_versions(&a, P1).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| (v.version, v.change.as_str())).collect::<Vec<_>>(),
        [(1, "create"), (2, "update"), (3, "delete")]
    );
    let last = &versions[2];
    assert_eq!(last.cedar, next.cedar, "the delete entry carries the last document");
    assert_eq!((last.name.as_str(), last.changed_at_ms, last.changed_by.as_str()), ("one", 3_000, "user:deleter"));
    assert_eq!(policy_changes_since(store, before).await, vec![TENANT_A.to_owned()]);

    // Gone: a second delete finds nothing and records nothing.
    let seq = store.latest_change_seq().await.unwrap();
    assert!(!store.delete_policy(&a, P1, "user:deleter", 4_000).await.unwrap());
    assert!(!store.delete_policy(&a, P2, "user:deleter", 4_000).await.unwrap());
    assert_eq!(store.latest_change_seq().await.unwrap(), seq);
    assert_eq!(store.policy_versions(&a, P1).await.unwrap().len(), 3);

    // The name is free again.
    store.create_policy(&a, &policy(TENANT_A, P2, "one")).await.unwrap();
}

async fn policies_are_reached_only_through_their_tenant(store: &dyn Store) {
    seed_tenants(store).await;
    let (a, b) = (scope(TENANT_A), scope(TENANT_B));
    let p = policy(TENANT_A, P1, "mine");
    store.create_policy(&a, &p).await.unwrap();
    let seq = store.latest_change_seq().await.unwrap();

    assert_eq!(store.get_policy(&b, P1).await.unwrap(), None);
    assert!(store.list_policies(&b).await.unwrap().is_empty());
    assert!(store.policy_versions(&b, P1).await.unwrap().is_empty());
    // The record names tenant A, but the scope decides: B's update and delete find nothing.
    let mut theirs = p.clone();
    theirs.cedar = String::from("forbid (principal, action, resource);");
    theirs.version = 2;
    assert!(!store.update_policy(&b, &theirs).await.unwrap());
    assert!(!store.delete_policy(&b, P1, "user:intruder", 5_000).await.unwrap());
    assert_eq!(store.latest_change_seq().await.unwrap(), seq);

    assert_eq!(store.get_policy(&a, P1).await.unwrap(), Some(p));
    assert_eq!(store.policy_versions(&a, P1).await.unwrap().len(), 1);
}

fn event(tenant: &str, session: &str, id: u32, kind: portcullis_core::session::EventKind, at: i64) -> SessionEvent {
    SessionEvent {
        id: format!("evt_{id:032}"),
        tenant_id: tenant.to_owned(),
        session_id: session.to_owned(),
        kind,
        message: Some(format!("message {id}")),
        tool_name: None,
        tool_args: None,
        metadata: serde_json::json!({"n": id}),
        created_at_ms: at,
        principal_id: Some(format!("key:{id}")),
        request_id: None,
        decision: None,
        model: Some(String::from("m")),
        input_tokens: 1,
        output_tokens: 2,
        cost_nanos: i64::from(id) * 10,
    }
}

async fn sessions_total_page_isolate_and_expire(store: &dyn Store) {
    use portcullis_core::session::{EventDecision, EventKind};
    seed_tenants(store).await;
    let (a, b) = (scope(TENANT_A), scope(TENANT_B));
    let mut denied = event(TENANT_A, "s1", 3, EventKind::Tool, 3_000);
    denied.decision =
        Some(EventDecision { result: String::from("deny"), action: String::from("tool.request"), policies: vec![] });
    let events = vec![
        event(TENANT_A, "s1", 1, EventKind::User, 1_000),
        event(TENANT_A, "s1", 2, EventKind::Assistant, 2_000),
        denied,
        event(TENANT_A, "s2", 4, EventKind::User, 5_000),
        event(TENANT_B, "s1", 5, EventKind::User, 4_000),
    ];
    store.append_session_events(&events).await.unwrap();
    // A retried batch is skipped event by event: totals do not double.
    store.append_session_events(&events[..2]).await.unwrap();

    let s1 = store.get_session(&a, "s1").await.unwrap().unwrap();
    assert_eq!((s1.total_events, s1.user_messages, s1.assistant_messages, s1.tool_calls, s1.denied), (3, 1, 1, 1, 1));
    assert_eq!((s1.first_event_ms, s1.last_event_ms, s1.cost_nanos, s1.input_tokens), (1_000, 3_000, 60, 3));
    assert_eq!(s1.last_principal_id.as_deref(), Some("key:3"));
    let b1 = store.get_session(&b, "s1").await.unwrap().unwrap();
    assert_eq!(b1.total_events, 1, "B's s1 is another session");

    let list = |sort, after, limit| SessionFilter { sort, after, limit, ..SessionFilter::default() };
    let ids = |v: Vec<SessionSummary>| v.into_iter().map(|s| s.session_id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_sessions(&a, &list(SessionSort::Recent, None, 10)).await.unwrap()), ["s2", "s1"]);
    assert_eq!(ids(store.list_sessions(&a, &list(SessionSort::Cost, None, 10)).await.unwrap()), ["s1", "s2"]);
    let first = store.list_sessions(&a, &list(SessionSort::Cost, None, 1)).await.unwrap();
    let cursor = (first[0].sort_key(SessionSort::Cost), first[0].session_id.clone());
    assert_eq!(ids(store.list_sessions(&a, &list(SessionSort::Cost, Some(cursor), 10)).await.unwrap()), ["s2"]);
    let filtered = SessionFilter { since_ms: Some(4_000), limit: 10, ..SessionFilter::default() };
    assert_eq!(ids(store.list_sessions(&a, &filtered).await.unwrap()), ["s2"]);
    let filtered = SessionFilter { contains: Some(String::from("1")), limit: 10, ..SessionFilter::default() };
    assert_eq!(ids(store.list_sessions(&a, &filtered).await.unwrap()), ["s1"]);
    assert_eq!(ids(store.list_sessions(&b, &list(SessionSort::Recent, None, 10)).await.unwrap()), ["s1"]);

    let evs = store.session_events(&a, "s1", None, 2).await.unwrap();
    assert_eq!(evs.iter().map(|e| e.created_at_ms).collect::<Vec<_>>(), [1_000, 2_000]);
    assert_eq!(evs[0], events[0], "stored as given");
    let rest = store.session_events(&a, "s1", Some(&evs[1].id), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].decision.as_ref().map(|d| d.result.as_str()), Some("deny"));
    // An event id of another tenant is no cursor into this one.
    assert!(store.session_events(&b, "s1", Some(&evs[1].id), 10).await.unwrap().is_empty());
    assert!(store.session_events(&b, "s2", None, 10).await.unwrap().is_empty());

    // Retention: A's sessions idle since before 4 000 go with their events; B's are untouched.
    assert_eq!(store.purge_sessions(&a, 4_000).await.unwrap(), 1);
    assert!(store.get_session(&a, "s1").await.unwrap().is_none());
    assert!(store.session_events(&a, "s1", None, 10).await.unwrap().is_empty());
    assert!(store.get_session(&a, "s2").await.unwrap().is_some());
    assert_eq!(store.get_session(&b, "s1").await.unwrap().unwrap().total_events, 1);

    // Settings: defaults, then replaced, recorded in the change feed.
    assert_eq!(store.session_settings(a.tenant_id()).await.unwrap(), SessionSettings::default());
    let seq = store.latest_change_seq().await.unwrap();
    let st = SessionSettings {
        capture: portcullis_core::session::CaptureMode::Metadata,
        redact_patterns: vec![String::from("x+")],
    };
    store.set_session_settings(a.tenant_id(), &st, 9).await.unwrap();
    assert_eq!(store.session_settings(a.tenant_id()).await.unwrap(), st);
    assert_eq!(store.session_settings(b.tenant_id()).await.unwrap(), SessionSettings::default());
    let changes = store.changes_since(seq, 100).await.unwrap();
    assert!(changes.iter().any(|c| c.kind == ChangeKind::SessionSettings && c.entity_id == TENANT_A));
}

fn usage_row(tenant: &str, cost_nanos: i64) -> UsageRow {
    UsageRow {
        tenant_id: tenant.to_owned(),
        day: String::from("2026-12-02"),
        principal_id: String::from("key:k"),
        model: String::from("m"),
        route: String::from("/llm"),
        requests: 1,
        status_2xx: 1,
        cost_nanos,
        ..UsageRow::default()
    }
}

async fn spent(store: &dyn Store, tenant: &str) -> (i64, i64) {
    let rows = store.usage(&scope(tenant), "2026-12-02", "2026-12-02").await.unwrap();
    (rows.iter().map(|r| r.requests).sum(), rows.iter().map(|r| r.cost_nanos).sum())
}

/// A writer whose write failed with an unknown outcome sends the same batch again: it counts once
/// if the first attempt did land, and every other batch (the writer's next, another writer's)
/// counts as usual.
async fn ledger_batches_count_once_per_writer(store: &dyn Store) {
    seed_tenants(store).await;
    let first = LedgerBatch { writer: "node-a", id: 7 };
    let rows = [usage_row(TENANT_A, 10), usage_row(TENANT_B, 20)];
    store.add_usage(first, &rows).await.unwrap();
    store.add_usage(first, &rows).await.unwrap();
    assert_eq!(spent(store, TENANT_A).await, (1, 10), "a batch sent again counts once");
    assert_eq!(spent(store, TENANT_B).await, (1, 20));
    store.add_usage(LedgerBatch { writer: "node-a", id: 8 }, &rows).await.unwrap();
    store.add_usage(LedgerBatch { writer: "node-b", id: 7 }, &rows[..1]).await.unwrap();
    assert_eq!(spent(store, TENANT_A).await, (3, 30));
    assert_eq!(spent(store, TENANT_B).await, (2, 40));
    // A batch seen for one tenant only is still new for the other.
    store.add_usage(LedgerBatch { writer: "node-b", id: 7 }, &rows).await.unwrap();
    assert_eq!(spent(store, TENANT_A).await, (3, 30));
    assert_eq!(spent(store, TENANT_B).await, (3, 60));

    let minute = ModelMinute {
        tenant_id: TENANT_A.to_owned(),
        model: String::from("m"),
        minute: 100,
        requests: 1,
        status_2xx: 1,
        cost_nanos: 5,
        ..ModelMinute::default()
    };
    let bucket =
        LatencyBucket { tenant_id: TENANT_A.to_owned(), model: String::from("m"), minute: 100, bucket: 3, count: 1 };
    for _ in 0..2 {
        store.add_model_metrics(first, std::slice::from_ref(&minute), std::slice::from_ref(&bucket)).await.unwrap();
    }
    let (minutes, buckets) = store.model_metrics(&scope(TENANT_A), "m", 0, 1_000).await.unwrap();
    assert_eq!(minutes.iter().map(|m| m.requests).sum::<i64>(), 1, "model metrics: once as well");
    assert_eq!(buckets.iter().map(|b| b.count).sum::<i64>(), 1);
    // The usage ledger's marks are its own: the same id on the model ledger was new.
    store.add_model_metrics(LedgerBatch { writer: "node-a", id: 9 }, &[minute], &[bucket]).await.unwrap();
    let (minutes, _) = store.model_metrics(&scope(TENANT_A), "m", 0, 1_000).await.unwrap();
    assert_eq!(minutes.iter().map(|m| m.requests).sum::<i64>(), 2);
}

macro_rules! conformance {
    ($($name:ident),*) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::sqlite_store().await;
                    super::$name(&f.store).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::PgDatabase::migrated().await;
                    super::$name(&db.store().await).await;
                }
            )*
        }
    };
}

conformance!(
    policies_create_get_list_and_conflicts,
    policies_update_is_optimistic_and_versioned,
    policies_delete_keeps_the_history,
    policies_are_reached_only_through_their_tenant,
    sessions_total_page_isolate_and_expire,
    ledger_batches_count_once_per_writer
);
