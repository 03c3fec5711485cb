//! The scale-out store on a real PostgreSQL: the catalog as `portcullis migrate` leaves it, row
//! level security probed with raw SQL as the application role, the refusals at start, and the
//! gateway working end to end (two instances on one database, the audit chain verified).
//!
//! These run in every suite shape: each test makes its own database and roles.
use crate::harness::{self, BIN, PgDatabase, Server, pg_exec};
use portcullis_store::postgres::BEGIN_TENANT;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every table of the schema and whether it holds tenant rows (a `tenant_id` column or, for
/// `tenants`, being one). Written out here, not taken from the code under test.
const TENANT_TABLES: &[&str] = &[
    "tenants",
    "users",
    "api_keys",
    "tenant_limits",
    "tenant_ip_rules",
    "upstream_credentials",
    "audit_events",
    "policies",
    "policy_versions",
    "model_profiles",
    "usage_daily",
    "model_minutes",
    "model_latency",
    "agent_sessions",
    "session_events",
    "session_settings",
    "ledger_marks",
];

/// What the application role must be granted, and nothing more.
const EXPECTED_GRANTS: &[(&str, &[&str])] = &[
    ("agent_sessions", &["DELETE", "INSERT", "SELECT", "UPDATE"]),
    ("api_keys", &["INSERT", "SELECT", "UPDATE"]),
    ("audit_checkpoints", &["INSERT", "SELECT"]),
    ("audit_events", &["INSERT", "SELECT"]),
    ("audit_heads", &["INSERT", "SELECT", "UPDATE"]),
    ("changes", &["INSERT", "SELECT"]),
    ("ledger_marks", &["INSERT", "SELECT", "UPDATE"]),
    ("model_latency", &["INSERT", "SELECT", "UPDATE"]),
    ("model_minutes", &["INSERT", "SELECT", "UPDATE"]),
    ("model_profiles", &["DELETE", "INSERT", "SELECT", "UPDATE"]),
    ("policies", &["DELETE", "INSERT", "SELECT", "UPDATE"]),
    ("policy_versions", &["INSERT", "SELECT"]),
    ("schema_migrations", &["SELECT"]),
    ("session_events", &["DELETE", "INSERT", "SELECT"]),
    ("session_settings", &["INSERT", "SELECT", "UPDATE"]),
    ("sessions", &["INSERT", "SELECT", "UPDATE"]),
    ("tenant_ip_rules", &["INSERT", "SELECT", "UPDATE"]),
    ("tenant_limits", &["INSERT", "SELECT", "UPDATE"]),
    ("tenants", &["INSERT", "SELECT", "UPDATE"]),
    ("upstream_credentials", &["DELETE", "INSERT", "SELECT", "UPDATE"]),
    ("usage_daily", &["INSERT", "SELECT", "UPDATE"]),
    ("users", &["INSERT", "SELECT"]),
];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn migrated() -> PgDatabase {
    let db = PgDatabase::create();
    db.migrate();
    db
}

const TENANT_A: &str = "0190aaaa-0000-7000-8000-00000000000a";
const TENANT_B: &str = "0190bbbb-0000-7000-8000-00000000000b";

/// Two tenants with a key, a user, limits and an upstream credential each, one operator, and
/// audit events of both, written as the superuser (which RLS does not restrict).
fn seed_two_tenants(db: &PgDatabase) {
    let mut sql = vec![String::from("SET search_path = portcullis")];
    for (t, n) in [(TENANT_A, "a"), (TENANT_B, "b")] {
        sql.push(format!("INSERT INTO tenants VALUES ('{t}', 'tenant {n}', 'free', 'active', 1, 1)"));
        sql.push(format!(
            "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at, created_by) \
             VALUES ('0190{n}{n}{n}{n}-0000-7000-8000-0000000000e1', '{t}', '{n}@example.test', 'x', 'admin', 1, 'seed')"
        ));
        sql.push(format!(
            "INSERT INTO api_keys (id, tenant_id, name, role, scopes, prefix, key_hash, created_at, created_by) \
             VALUES ('0190{n}{n}{n}{n}-0000-7000-8000-0000000000f1', '{t}', 'k', 'admin', '[]', 'pc_x', 'hash-{n}', 1, 'seed')"
        ));
        sql.push(format!("INSERT INTO tenant_limits VALUES ('{t}', 5, NULL, NULL, 1)"));
        sql.push(format!(
            "INSERT INTO upstream_credentials VALUES ('{t}', '/llm', 'authorization', 'n', 'c', 1, 1, 'seed')"
        ));
        sql.push(format!(
            "INSERT INTO audit_events (writer_id, seq, prev_hash, hash, ts_ms, timestamp, tenant_id, action, result, metadata) \
             VALUES ('seed-{n}', 1, 'p', 'h', 1, 't', '{t}', 'x', 'success', '{{}}')"
        ));
    }
    sql.push(String::from(
        "INSERT INTO users (id, tenant_id, email, password_hash, created_at, created_by) \
         VALUES ('0190cccc-0000-7000-8000-0000000000c1', NULL, 'op@example.test', 'x', 1, 'seed')",
    ));
    pg_exec(&db.admin_url, &sql);
}

#[test]
fn catalog_every_tenant_table_forces_rls_and_the_app_role_can_bypass_nothing() {
    let db = migrated();
    rt().block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.admin_url).await.unwrap();
        let tables: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'portcullis' AND c.relkind IN ('r', 'p') ORDER BY 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let names: BTreeSet<&str> = tables.iter().map(|(n, _, _)| n.as_str()).collect();
        for t in TENANT_TABLES {
            assert!(names.contains(t), "tenant table {t} exists");
        }
        // Any table with a tenant_id column counts as a tenant table, also ones added later.
        let with_tenant_column: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.columns WHERE table_schema = 'portcullis' AND column_name = 'tenant_id'",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(!with_tenant_column.is_empty());
        for (name, rls, force) in &tables {
            if name == "schema_migrations" {
                continue;
            }
            assert!(*rls && *force, "{name}: relrowsecurity={rls} relforcerowsecurity={force}");
        }
        for t in &with_tenant_column {
            let (_, rls, force) = tables.iter().find(|(n, _, _)| n == t).unwrap();
            assert!(*rls && *force, "tenant table {t} forces RLS");
            let policies: Vec<(String, String)> = sqlx::query_as(
                "SELECT cmd::text, coalesce(qual, with_check) FROM pg_policies WHERE schemaname = 'portcullis' AND tablename = $1",
            )
            .bind(t)
            .fetch_all(&mut c)
            .await
            .unwrap();
            assert!(
                policies.iter().any(|(_, q)| q
                    .to_ascii_lowercase()
                    .contains("tenant_id = nullif(current_setting('app.tenant_id'::text, true), ''::text)")),
                "{t}: a policy admits rows by the transaction's tenant, with an empty setting meaning none: {policies:?}"
            );
        }
        // Every INSERT/UPDATE-capable tenant policy has a WITH CHECK.
        let unchecked: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text || '.' || policyname::text FROM pg_policies WHERE schemaname = 'portcullis' \
             AND cmd IN ('ALL', 'INSERT', 'UPDATE') AND with_check IS NULL",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(unchecked.is_empty(), "policies without WITH CHECK: {unchecked:?}");

        let (superuser, bypass): (bool, bool) =
            sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
                .bind(&db.app)
                .fetch_one(&mut c)
                .await
                .unwrap();
        assert!(!superuser && !bypass, "app role: superuser={superuser} bypassrls={bypass}");
        let owned: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'portcullis' AND pg_has_role($1, c.relowner, 'MEMBER')",
        )
        .bind(&db.app)
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(owned.is_empty(), "app role owns (or may act as the owner of) {owned:?}");
        let schema_owner: String =
            sqlx::query_scalar("SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'portcullis'")
                .fetch_one(&mut c)
                .await
                .unwrap();
        assert_eq!(schema_owner, db.owner);

        let definers: Vec<String> = sqlx::query_scalar(
            "SELECT n.nspname::text || '.' || p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(definers.is_empty(), "SECURITY DEFINER functions: {definers:?}");
        let owner_run_views: Vec<String> = sqlx::query_scalar(
            "SELECT n.nspname::text || '.' || c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND NOT (c.relkind = 'v' AND coalesce(c.reloptions && ARRAY['security_invoker=true', 'security_invoker=on'], false))",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(owner_run_views.is_empty(), "views that run as their owner: {owner_run_views:?}");

        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, privilege_type::text FROM information_schema.role_table_grants \
             WHERE grantee = $1 AND table_schema = 'portcullis' ORDER BY 1, 2",
        )
        .bind(&db.app)
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mut granted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (t, p) in rows {
            granted.entry(t).or_default().push(p);
        }
        let expected: BTreeMap<String, Vec<String>> = EXPECTED_GRANTS
            .iter()
            .map(|(t, ps)| (t.to_string(), ps.iter().map(|p| p.to_string()).collect()))
            .collect();
        assert_eq!(granted, expected, "the app role has exactly the grants it needs");
        let can_create: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, 'portcullis', 'CREATE')")
            .bind(&db.app)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert!(!can_create, "the app role cannot create objects in the schema");
    });
}

#[test]
fn raw_sql_as_the_app_role_sees_only_the_tenant_of_its_transaction() {
    let db = migrated();
    seed_two_tenants(&db);
    rt().block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.app_url).await.unwrap();
        c.execute("SET search_path = portcullis").await.unwrap();
        let count = async |c: &mut sqlx::PgConnection, table: &str| -> i64 {
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(c).await.unwrap()
        };
        // No tenant set: nothing of anyone.
        for t in TENANT_TABLES.iter().chain(["sessions", "changes", "audit_heads"].iter()) {
            assert_eq!(count(&mut c, t).await, 0, "{t} without a tenant");
        }
        // After a transaction that set the tenant locally ended, the setting reads '' (not
        // NULL): still nothing.
        let mut tx = c.begin().await.unwrap();
        sqlx::query(BEGIN_TENANT).bind(TENANT_A).execute(&mut *tx).await.unwrap();
        assert_eq!(count(&mut tx, "api_keys").await, 1);
        tx.commit().await.unwrap();
        let after: String = sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)").fetch_one(&mut c).await.unwrap();
        assert_eq!(after, "", "the trap: a local setting reads '' after its transaction");
        for t in TENANT_TABLES {
            assert_eq!(count(&mut c, t).await, 0, "{t} after a tenant transaction ended");
        }
        // An empty tenant is no tenant.
        let mut tx = c.begin().await.unwrap();
        sqlx::query(BEGIN_TENANT).bind("").execute(&mut *tx).await.unwrap();
        assert_eq!(count(&mut tx, "api_keys").await, 0);
        tx.rollback().await.unwrap();

        // Tenant A: only A, in every tenant table.
        let mut tx = c.begin().await.unwrap();
        sqlx::query(BEGIN_TENANT).bind(TENANT_A).execute(&mut *tx).await.unwrap();
        for (t, col) in [
            ("tenants", "id"),
            ("users", "tenant_id"),
            ("api_keys", "tenant_id"),
            ("tenant_limits", "tenant_id"),
            ("upstream_credentials", "tenant_id"),
            ("audit_events", "tenant_id"),
        ] {
            let seen: Vec<String> =
                sqlx::query_scalar(&format!("SELECT DISTINCT {col} FROM {t}")).fetch_all(&mut *tx).await.unwrap();
            assert_eq!(seen, vec![TENANT_A.to_owned()], "{t} as tenant A");
        }
        // A's transaction cannot touch B: updates find nothing, deletes delete nothing.
        let n = sqlx::query("UPDATE api_keys SET revoked_at = 5 WHERE tenant_id = $1")
            .bind(TENANT_B)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 0);
        let n = sqlx::query("DELETE FROM upstream_credentials WHERE tenant_id = $1")
            .bind(TENANT_B)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 0);
        tx.commit().await.unwrap();

        // INSERT with B's tenant_id while A is set: rejected by WITH CHECK, in every table.
        for insert in [
            format!(
                "INSERT INTO api_keys (id, tenant_id, name, role, scopes, prefix, key_hash, created_at, created_by) \
                 VALUES ('0190dddd-0000-7000-8000-0000000000f9', '{TENANT_B}', 'k', 'admin', '[]', 'pc_x', 'hash-z', 1, 'x')"
            ),
            format!(
                "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at, created_by) \
                 VALUES ('0190dddd-0000-7000-8000-0000000000e9', '{TENANT_B}', 'z@example.test', 'x', 'admin', 1, 'x')"
            ),
            format!("INSERT INTO tenant_ip_rules VALUES ('{TENANT_B}', '{{}}', 1)"),
            format!("INSERT INTO upstream_credentials VALUES ('{TENANT_B}', '/other', 'h', 'n', 'c', 1, 1, 'x')"),
            // Moving one of A's rows to B is the same thing.
            format!("UPDATE api_keys SET tenant_id = '{TENANT_B}'"),
        ] {
            let mut tx = c.begin().await.unwrap();
            sqlx::query(BEGIN_TENANT).bind(TENANT_A).execute(&mut *tx).await.unwrap();
            let err = sqlx::query(&insert).execute(&mut *tx).await.expect_err(&insert);
            let text = err.to_string();
            assert!(text.contains("row-level security"), "{insert}: {text}");
            tx.rollback().await.unwrap();
        }

        // The system scope reaches only what its paths need: no credentials, limits or IP
        // rules, and of a key only its usage time.
        let mut tx = c.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.scope', 'system', true)").execute(&mut *tx).await.unwrap();
        assert_eq!(count(&mut tx, "api_keys").await, 2, "authentication reads keys of every tenant");
        assert_eq!(count(&mut tx, "upstream_credentials").await, 0);
        assert_eq!(count(&mut tx, "tenant_limits").await, 0);
        let n = sqlx::query("UPDATE api_keys SET last_used_at = 7").execute(&mut *tx).await.unwrap().rows_affected();
        assert_eq!(n, 2);
        let err = sqlx::query("UPDATE api_keys SET revoked_at = 7").execute(&mut *tx).await.expect_err("usage only");
        assert!(err.to_string().contains("only record key usage"), "{err}");
        tx.rollback().await.unwrap();
        let mut tx = c.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.scope', 'system', true)").execute(&mut *tx).await.unwrap();
        let err = sqlx::query(&format!(
            "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at, created_by) \
             VALUES ('0190dddd-0000-7000-8000-0000000000e8', '{TENANT_B}', 'y@example.test', 'x', 'admin', 1, 'x')"
        ))
        .execute(&mut *tx)
        .await
        .expect_err("the system scope creates operators only");
        assert!(err.to_string().contains("row-level security"), "{err}");
        tx.rollback().await.unwrap();
        let _ = c.close().await;
    });
}

#[test]
fn a_pooled_connection_never_carries_a_tenant_into_the_next_transaction() {
    let db = migrated();
    seed_two_tenants(&db);
    rt().block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db.app_url).await.unwrap();
        let pid_a: i32;
        {
            // A request for tenant A.
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(BEGIN_TENANT).bind(TENANT_A).execute(&mut *tx).await.unwrap();
            pid_a = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *tx).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(n, 1);
            tx.commit().await.unwrap();
        }
        {
            // A request for tenant B on the same connection that fails before it sets its tenant.
            let mut tx = pool.begin().await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(pid, pid_a, "the pool of one hands out the same connection");
            assert!(sqlx::query("SELECT 1 / 0").execute(&mut *tx).await.is_err());
            drop(tx);
        }
        // What runs next on that connection, with or without a transaction, sees nothing of A.
        let mut tx = pool.begin().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *tx).await.unwrap();
        assert_eq!(pid, pid_a);
        for t in TENANT_TABLES {
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM portcullis.{t}")).fetch_one(&mut *tx).await.unwrap();
            assert_eq!(n, 0, "{t}: nothing of A leaks into a transaction that set no tenant");
        }
        tx.rollback().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM portcullis.api_keys").fetch_one(&pool).await.unwrap();
        assert_eq!(n, 0);
        pool.close().await;
    });
}

/// Runs `portcullis serve` expecting it to refuse to start; returns its stderr.
fn serve_refuses(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORTCULLIS_DATA_DIR", dir.path().join("data"))
        .env("PORTCULLIS_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_LOG", "warn")
        .envs(env.iter().copied())
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(!status.success(), "serve started: {stdout}{stderr}");
            assert!(!stdout.contains("listening"), "serve listened before refusing: {stdout}");
            return stderr;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("serve neither started nor refused within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn with_secrets<'a>(url: &'a str, secrets: &'a [(String, String)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("PORTCULLIS_DATABASE_URL", url)];
    env.extend(secrets.iter().filter(|(k, _)| k != "PORTCULLIS_DATABASE_URL").map(|(k, v)| (k.as_str(), v.as_str())));
    env
}

#[test]
fn serve_refuses_a_role_that_could_bypass_row_level_security() {
    let db = migrated();
    let secrets = harness::scale_out_env(&db);
    // The superuser.
    let err = serve_refuses(&with_secrets(&db.admin_url, &secrets));
    assert!(err.contains("refusing to start") && err.contains("is a superuser"), "{err}");
    // The owner of the tables.
    let err = serve_refuses(&with_secrets(&db.owner_url, &secrets));
    assert!(err.contains("refusing to start") && err.contains(&format!("`{}` owns", db.owner)), "{err}");
    assert!(!err.contains(&db.owner_url), "the URL with its password is not printed: {err}");
    // A role with BYPASSRLS, and a plain role that is a member of the owner's role.
    let bypass = format!("{}_bypass", db.name);
    let member = format!("{}_member", db.name);
    pg_exec(
        &db.admin_url,
        &[
            format!("CREATE ROLE {bypass} LOGIN BYPASSRLS PASSWORD 'pw'"),
            format!("CREATE ROLE {member} LOGIN PASSWORD 'pw' IN ROLE {}", db.owner),
        ],
    );
    let url = |role: &str| harness::pg_url_for(&db.admin_url, role, "pw", &db.name);
    let err = serve_refuses(&with_secrets(&url(&bypass), &secrets));
    assert!(err.contains("refusing to start") && err.contains("has BYPASSRLS"), "{err}");
    let err = serve_refuses(&with_secrets(&url(&member), &secrets));
    assert!(err.contains("refusing to start") && err.contains("member of the owner"), "{err}");
    // RLS switched off behind the application's back.
    pg_exec(&db.admin_url, &[String::from("ALTER TABLE portcullis.api_keys NO FORCE ROW LEVEL SECURITY")]);
    let err = serve_refuses(&with_secrets(&db.app_url, &secrets));
    assert!(err.contains("row-level security is not forced on api_keys"), "{err}");
    pg_exec(
        &db.admin_url,
        &[format!("DROP ROLE {bypass}"), format!("REVOKE {} FROM {member}", db.owner), format!("DROP ROLE {member}")],
    );
}

#[test]
fn serve_refuses_an_unmigrated_schema_and_the_scale_out_shape_without_its_shared_secrets() {
    let db = PgDatabase::create();
    let secrets = harness::scale_out_env(&db);
    let err = serve_refuses(&with_secrets(&db.app_url, &secrets));
    assert!(err.contains("not set up") && err.contains("portcullis migrate"), "{err}");
    db.migrate();
    let err = serve_refuses(&[("PORTCULLIS_DATABASE_URL", &db.app_url)]);
    for name in ["PORTCULLIS_KEY_PEPPER", "PORTCULLIS_MASTER_KEY", "PORTCULLIS_AUDIT_SIGNING_KEY"] {
        assert!(err.contains(name), "names {name}: {err}");
    }
    let pepper = harness::hex32();
    let err = serve_refuses(&[("PORTCULLIS_DATABASE_URL", &db.app_url), ("PORTCULLIS_KEY_PEPPER", &pepper)]);
    assert!(!err.contains("PORTCULLIS_KEY_PEPPER"), "{err}");
    assert!(err.contains("PORTCULLIS_MASTER_KEY") && err.contains("PORTCULLIS_AUDIT_SIGNING_KEY"), "{err}");
    // A `_FILE` variant counts, and a malformed value is named.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master");
    std::fs::write(&file, harness::hex32()).unwrap();
    let file = file.display().to_string();
    let err = serve_refuses(&[
        ("PORTCULLIS_DATABASE_URL", &db.app_url),
        ("PORTCULLIS_KEY_PEPPER", "abc"),
        ("PORTCULLIS_MASTER_KEY_FILE", &file),
        ("PORTCULLIS_AUDIT_SIGNING_KEY", &pepper),
    ]);
    assert!(err.contains("PORTCULLIS_KEY_PEPPER must be 64 hex characters"), "{err}");
    assert!(!err.contains(&db.app_password), "no password in errors: {err}");
}

#[test]
fn migrate_explains_both_roles_and_refuses_what_would_not_hold() {
    let out = Command::new(BIN).args(["migrate", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in
        ["PORTCULLIS_MIGRATION_DATABASE_URL", "PORTCULLIS_DATABASE_URL", "owner role", "application role", "DBA"]
    {
        assert!(help.contains(needle), "`migrate --help` mentions {needle}: {help}");
    }
    let db = PgDatabase::create();
    let migrate = |app_url: &str, owner_url: Option<&str>| {
        let mut c = Command::new(BIN);
        c.env_clear().env("PORTCULLIS_DATABASE_URL", app_url).arg("migrate");
        if let Some(o) = owner_url {
            c.env("PORTCULLIS_MIGRATION_DATABASE_URL", o);
        }
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = migrate(&db.app_url, None);
    assert!(!ok && err.contains("PORTCULLIS_MIGRATION_DATABASE_URL"), "{err}");
    let (ok, err) = migrate(&db.owner_url, Some(&db.owner_url));
    assert!(!ok && err.contains("must not be the migration (owner) role"), "{err}");
    let ghost = harness::pg_url_for(&db.admin_url, &format!("{}_ghost", db.name), "pw", &db.name);
    let (ok, err) = migrate(&ghost, Some(&db.owner_url));
    assert!(!ok && err.contains("does not exist") && err.contains("CREATE ROLE"), "{err}");
    // Nothing was created by the refused runs; a proper run works and is idempotent.
    let (ok, err) = migrate(&db.app_url, Some(&db.owner_url));
    assert!(ok, "{err}");
    let (ok, err) = migrate(&db.app_url, Some(&db.owner_url));
    assert!(ok, "second run: {err}");
}

fn authorize(s: &Server, key: &str) -> u16 {
    s.post("/v1/authorize")
        .header("x-api-key", key)
        .json(&json!({ "action": "conversation.send" }))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Runs the CLI with `env` on `data_dir`: (success, stdout + stderr).
fn cli_with(env: &[(String, String)], data_dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USER", "tester")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORTCULLIS_DATA_DIR", data_dir)
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn migrate_then_two_instances_on_one_database_share_state_and_the_audit_chains_verify() {
    let mut a = Server::start_on_postgres(migrated(), &[]);
    // The second instance: same URL and secrets, its own data dir and listen address.
    let shared: Vec<(&str, &str)> = a.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut b = Server::start_plain(&shared);
    assert!(a.bootstrap_password.is_some(), "the first instance bootstraps the empty database");
    assert!(b.bootstrap_password.is_none(), "the second finds the operator already there");
    let op = a.operator_token();
    let tenant = a.create_tenant(&op, "acme", "pro");
    let (kid, key) = a.create_key(&op, &tenant, "admin");
    assert_eq!(authorize(&a, &key), 200);
    assert_eq!(authorize(&b, &key), 200, "a key made on one instance works on the other");
    // The operator's session works on both (sessions are shared too).
    let r = b.get("/v1/tenants").bearer_auth(&op).send().unwrap();
    assert_eq!(r.status(), 200);
    let listed: Value = r.json().unwrap();
    assert!(listed["items"].as_array().unwrap().iter().any(|t| t["id"] == tenant.as_str()));
    let r = b.get("/v1/keys").header("x-api-key", &key).send().unwrap();
    assert_eq!(r.status(), 200, "a tenant admin call on the other instance");
    // Revoked on a: b stops accepting it within the change feed's refresh.
    let r = a.delete(&format!("/v1/keys/{kid}")).bearer_auth(&op).header("x-tenant-id", &tenant).send().unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(harness::eventually(Duration::from_secs(10), || authorize(&b, &key) == 401), "revocation reaches b");
    // The CLI on the same database sees the same tenants, and its change reaches both servers.
    let t = a.cli_json(&["tenant", "get", &tenant]);
    assert_eq!(t["name"], "acme");
    let (_, key2) = a.create_key(&op, &tenant, "service");
    assert_eq!(authorize(&b, &key2), 200);
    a.cli_json(&["tenant", "suspend", &tenant]);
    assert!(harness::eventually(Duration::from_secs(10), || authorize(&a, &key2) == 403 && authorize(&b, &key2) == 403));
    // After a restart a continues its own chain.
    a.restart();
    assert_eq!(authorize(&a, &key2), 403);
    b.stop();
    a.stop();
    let admin_url = a.pg.as_ref().unwrap().admin_url.clone();
    let chains: Vec<(String, i64, i64)> = rt().block_on(async {
        let mut c = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query_as("SELECT writer_id::text, count(*), max(seq) FROM portcullis.audit_events GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut c)
            .await
            .unwrap()
    });
    assert_eq!(chains.len(), 3, "chains of a, b and the cli: {chains:?}");
    for (w, n, max) in &chains {
        assert_eq!(n, max, "chain {w} is contiguous from 1");
    }
    // Each data dir holds its own instance's directory with its JSONL files. Verifying one data
    // dir checks every chain in the database and the files it has; the other instance's chain is
    // named as kept elsewhere, not as truncated.
    let (ok, report) = cli_with(&a.env, &a.data_dir(), &["audit", "verify"]);
    assert!(ok, "audit verify on a's data dir: {report}");
    assert!(report.contains(&format!("chain {}: its files are not under this data dir", b.writer_id())), "{report}");
    // Both instance directories under one data dir: every chain is checked against its files.
    let merged = tempfile::tempdir().unwrap();
    let merged_data = merged.path().join("data");
    harness::copy_dir(&a.data_dir(), &merged_data);
    for s in [&a, &b] {
        let dir = s.instance_dir();
        harness::copy_dir(&dir, &merged_data.join("instances").join(dir.file_name().unwrap()));
    }
    let (ok, report) = cli_with(&a.env, &merged_data, &["audit", "verify"]);
    assert!(ok, "audit verify: {report}");
    assert!(!report.contains("not under this data dir"), "{report}");
    for s in [&a, &b] {
        assert!(report.contains(&format!("chain {}:", s.writer_id())), "{report}");
    }
    assert!(report.contains("chain cli:"), "{report}");
    // A file of an instance found here that lost its last lines is reported.
    let b_dir = merged_data.join("instances").join(b.instance_dir().file_name().unwrap()).join("audit");
    let mut b_files: Vec<_> = std::fs::read_dir(&b_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("audit-"))
        .collect();
    b_files.sort();
    let last = b_files.last().unwrap();
    let text = std::fs::read_to_string(last).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(last, format!("{}\n", lines.join("\n"))).unwrap();
    let (ok, report) = cli_with(&a.env, &merged_data, &["audit", "verify"]);
    assert!(!ok && report.contains(&format!("writer `{}` ends at seq", b.writer_id())), "{report}");
    // Tampering in the shared database is still found.
    let a_writer = a.writer_id();
    pg_exec(
        &admin_url,
        &[format!("UPDATE portcullis.audit_events SET action = 'forged' WHERE seq = 2 AND writer_id = '{a_writer}'")],
    );
    let (ok, report) = cli_with(&a.env, &a.data_dir(), &["audit", "verify"]);
    assert!(
        !ok && report.contains(&format!("writer `{a_writer}`: seq 2: content does not match its hash")),
        "{report}"
    );
    // No password of the application role in anything the servers printed or logged.
    let password = a.pg.as_ref().unwrap().app_password.clone();
    for s in [&a, &b] {
        assert!(!s.log().contains(&password) && !s.stdout.join("\n").contains(&password));
    }
    drop(b);
}

#[test]
fn store_conformance_a_tenant_scoped_method_cannot_reach_another_tenant() {
    // The store itself, not only raw SQL: the methods that take a tenant see only it even when
    // asked for the other tenant's ids.
    use portcullis_core::{KeyId, TenantId, TenantScope, UserId};
    use portcullis_store::Store;
    use portcullis_store::postgres::{PgStore, check_app_role, connect};
    let db = migrated();
    seed_two_tenants(&db);
    rt().block_on(async {
        let pool = connect(&db.app_url, 2).await.unwrap();
        check_app_role(&pool).await.unwrap();
        let store = PgStore::new(pool);
        let a = TenantScope::authorized(TenantId::parse(TENANT_A).unwrap(), false);
        let b_key = KeyId::parse("0190bbbb-0000-7000-8000-0000000000f1").unwrap();
        let b_user = UserId::parse("0190bbbb-0000-7000-8000-0000000000e1").unwrap();
        assert!(store.get_key(&a, &b_key).await.unwrap().is_none());
        assert!(store.get_user(&a, &b_user).await.unwrap().is_none());
        assert!(!store.revoke_key(&a, &b_key, 9).await.unwrap());
        assert_eq!(store.list_keys(&a, None, 100).await.unwrap().len(), 1);
        assert_eq!(store.list_users(&a, None, 100).await.unwrap().len(), 1);
        assert!(store.get_upstream_credential(&a, "/llm").await.unwrap().is_some());
        assert_eq!(store.list_upstream_credentials(&a).await.unwrap().len(), 1);
        // Authentication lookups (system path) find either tenant's key and name its tenant.
        let found = store.find_key_by_hash("hash-b").await.unwrap().unwrap();
        assert_eq!(found.tenant_id.as_str(), TENANT_B);
        assert_eq!(store.count_operators().await.unwrap(), 1);
        assert_eq!(store.list_tenants(None, 10).await.unwrap().len(), 2);
        assert_eq!(store.key_owner(&b_key).await.unwrap().unwrap().as_str(), TENANT_B);
        // B's key is still unrevoked.
        let b = TenantScope::authorized(TenantId::parse(TENANT_B).unwrap(), false);
        assert!(store.get_key(&b, &b_key).await.unwrap().unwrap().revoked_at_ms.is_none());
        // The change feed orders what both tenants changed.
        let before = store.latest_change_seq().await.unwrap();
        assert!(store.revoke_key(&b, &b_key, 10).await.unwrap());
        let changes = store.changes_since(before, 10).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].entity_id, b_key.as_str());
    });
}

#[test]
fn an_audit_event_holding_a_nul_is_stored_losslessly_and_its_chain_verifies() {
    // PostgreSQL text cannot hold NUL; a probe for `/v1/keys/%00` must still be answered (404,
    // not 503 for an unwritable audit event) and its event read back byte for byte.
    let mut s = Server::start_on_postgres(migrated(), &[]);
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "nul", "free");
    let r = s.get("/v1/keys/%00").bearer_auth(&op).header("x-tenant-id", &tenant).send().unwrap();
    assert_eq!(r.status(), 404);
    let r = s.get("/v1/keys/x%5C0y%00").bearer_auth(&op).header("x-tenant-id", &tenant).send().unwrap();
    assert_eq!(r.status(), 404);
    let events = s.audit(&op, "action=key.read");
    let ids: Vec<&str> = events.iter().filter_map(|e| e["resource_id"].as_str()).collect();
    assert!(ids.contains(&"\0") && ids.contains(&"x\\0y\0"), "{ids:?}");
    s.stop();
    let (ok, report) = cli_with(&s.env, &s.data_dir(), &["audit", "verify"]);
    assert!(ok, "{report}");
    let escaped: i64 = rt().block_on(async {
        let mut c = sqlx::PgConnection::connect(&s.pg.as_ref().unwrap().admin_url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM portcullis.audit_events WHERE nul_escaped")
            .fetch_one(&mut c)
            .await
            .unwrap()
    });
    assert!(escaped >= 2, "the NUL-bearing events are the escaped rows");
}
