use super::*;

#[test]
fn redact_url_hides_passwords_in_user_info_and_parameters() {
    assert_eq!(redact_url("postgres://app:s3cret@db.example:5432/pc"), "postgres://app:***@db.example:5432/pc");
    assert_eq!(redact_url("postgres://app@db/pc"), "postgres://app@db/pc");
    assert_eq!(
        redact_url("postgres://db/pc?user=app&password=s3cret&sslmode=require"),
        "postgres://db/pc?user=app&password=***&sslmode=require"
    );
    // A password containing `@` or `:` is hidden whole: the host starts after the last `@`.
    assert_eq!(redact_url("postgres://app:p@ss:w@rd@db/pc"), "postgres://app:***@db/pc");
    assert!(!redact_url("postgresql://u:hunter2@h").contains("hunter2"));
}

#[test]
fn quote_ident_doubles_inner_quotes() {
    assert_eq!(quote_ident("app"), "\"app\"");
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
}

#[test]
fn migrations_are_ordered_and_every_table_they_create_has_forced_rls_and_grants() {
    let versions: Vec<i64> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(versions, sorted, "versions strictly increasing");
    assert_eq!(schema_version(), *versions.last().unwrap_or(&0));
    let sql: String = MIGRATIONS.iter().map(|(_, s)| *s).collect::<Vec<_>>().join("\n");
    for line in sql.lines() {
        let Some(rest) = line.trim().strip_prefix("CREATE TABLE ") else { continue };
        let table = rest.split_whitespace().next().unwrap_or_default();
        assert!(sql.contains(&format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;")), "{table}: enable");
        assert!(sql.contains(&format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY;")), "{table}: force");
        assert!(APP_GRANTS.iter().any(|(t, _)| *t == table), "{table}: granted to the app role");
    }
    assert!(!sql.to_ascii_uppercase().contains("SECURITY DEFINER"));
    assert!(!sql.to_ascii_uppercase().contains("CREATE VIEW"));
}

mod policies {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

    use super::*;
    use crate::conformance::{PgDatabase, TENANT_A, TENANT_B, policy, scope, seed_tenants};
    use sqlx::Connection;

    const TABLES: [&str; 2] = ["policies", "policy_versions"];

    /// Raw SQL as the application role, as `raw_sql_as_the_app_role_sees_only_the_tenant_of_its_
    /// transaction` in the integration suite does for the older tables.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn policy_tables_show_the_app_role_only_its_transactions_tenant_and_keep_history_append_only() {
        let db = PgDatabase::migrated().await;
        // `serve`'s start-up check passes: RLS is forced on the new tables too.
        let store = db.store().await;
        seed_tenants(&store).await;
        store
            .create_policy(&scope(TENANT_A), &policy(TENANT_A, "pol_0000000000000000000000000000000a", "a"))
            .await
            .unwrap();
        store
            .create_policy(&scope(TENANT_B), &policy(TENANT_B, "pol_0000000000000000000000000000000b", "b"))
            .await
            .unwrap();

        let mut c = sqlx::PgConnection::connect(&db.app_url).await.unwrap();
        // No tenant set: nothing of anyone.
        for t in TABLES {
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM portcullis.{t}")).fetch_one(&mut c).await.unwrap();
            assert_eq!(n, 0, "{t} without a tenant");
        }
        // An empty tenant is no tenant.
        let mut tx = c.begin().await.unwrap();
        sqlx::query(BEGIN_TENANT).bind("").execute(&mut *tx).await.unwrap();
        for t in TABLES {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}")).fetch_one(&mut *tx).await.unwrap();
            assert_eq!(n, 0, "{t} with an empty tenant");
        }
        tx.rollback().await.unwrap();

        // Tenant A: only A's rows, and B's cannot be touched.
        let mut tx = c.begin().await.unwrap();
        sqlx::query(BEGIN_TENANT).bind(TENANT_A).execute(&mut *tx).await.unwrap();
        for t in TABLES {
            let seen: Vec<String> =
                sqlx::query_scalar(&format!("SELECT DISTINCT tenant_id FROM {t}")).fetch_all(&mut *tx).await.unwrap();
            assert_eq!(seen, vec![TENANT_A.to_owned()], "{t} as tenant A");
        }
        let n = sqlx::query("UPDATE policies SET enabled = false WHERE tenant_id = $1")
            .bind(TENANT_B)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 0);
        let n = sqlx::query("DELETE FROM policies WHERE tenant_id = $1")
            .bind(TENANT_B)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 0);
        tx.commit().await.unwrap();

        // Writing B's tenant_id while A is set: refused by WITH CHECK.
        for statement in [
            format!(
                "INSERT INTO policies VALUES ('pol_0000000000000000000000000000000c', '{TENANT_B}', 'c', '', 'permit (principal, action, resource);', true, 1, 1, 'x', 1, 'x')"
            ),
            format!(
                "INSERT INTO policy_versions VALUES ('{TENANT_B}', 'pol_0000000000000000000000000000000b', 9, 'b', '', 'forbid (principal, action, resource);', true, 'update', 1, 'x')"
            ),
            format!("UPDATE policies SET tenant_id = '{TENANT_B}'"),
        ] {
            let mut tx = c.begin().await.unwrap();
            sqlx::query(BEGIN_TENANT).bind(TENANT_A).execute(&mut *tx).await.unwrap();
            let err = sqlx::query(&statement).execute(&mut *tx).await.expect_err(&statement);
            assert!(err.to_string().contains("row-level security"), "{statement}: {err}");
            tx.rollback().await.unwrap();
        }

        // The history is append-only for the application role, even for its own tenant's rows.
        for statement in [
            "UPDATE policy_versions SET cedar = 'permit (principal, action, resource);'",
            "DELETE FROM policy_versions",
        ] {
            let mut tx = c.begin().await.unwrap();
            sqlx::query(BEGIN_TENANT).bind(TENANT_A).execute(&mut *tx).await.unwrap();
            let err = sqlx::query(statement).execute(&mut *tx).await.expect_err(statement);
            assert!(err.to_string().contains("permission denied"), "{statement}: {err}");
            tx.rollback().await.unwrap();
        }
        let _ = c.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_adds_the_policy_tables_to_a_version_1_schema() {
        let db = PgDatabase::create().await;
        // The schema as the previous binary left it: version 1 only.
        let mut c = sqlx::PgConnection::connect(&db.owner_url).await.unwrap();
        let v1 = format!(
            "CREATE SCHEMA portcullis; SET search_path = portcullis, pg_temp; \
             CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL); {} \
             INSERT INTO schema_migrations VALUES (1, 0);",
            MIGRATIONS[0].1
        );
        sqlx::raw_sql(&v1).execute(&mut c).await.unwrap();
        let _ = c.close().await;

        let report = migrate(&db.owner_url, &db.app).await.unwrap();
        assert_eq!(report.applied, (2..=schema_version()).collect::<Vec<i64>>());
        assert_eq!(report.version, schema_version());
        let pool = connect(&db.app_url, 1).await.unwrap();
        assert_eq!(check_app_role(&pool).await.unwrap().version, schema_version());
        pool.close().await;
        // Running it again applies nothing.
        assert!(migrate(&db.owner_url, &db.app).await.unwrap().applied.is_empty());
    }
}

mod usage {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

    use super::*;
    use crate::conformance::{PgDatabase, TENANT_A, TENANT_B, scope, seed_tenants};

    fn row(tenant: &str, cost_nanos: i64) -> UsageRow {
        UsageRow {
            tenant_id: tenant.to_owned(),
            day: "2026-12-02".to_owned(),
            principal_id: "key:k".to_owned(),
            route: "/llm".to_owned(),
            requests: 1,
            status_2xx: 1,
            cost_nanos,
            ..UsageRow::default()
        }
    }

    fn batch(id: i64) -> LedgerBatch<'static> {
        LedgerBatch { writer: "node-test", id }
    }

    async fn spent(store: &PgStore, tenant: &str) -> i64 {
        store.usage(&scope(tenant), "2026-12-02", "2026-12-02").await.unwrap().iter().map(|r| r.cost_nanos).sum()
    }

    /// The usage ledger retries a failed batch: a batch that spans tenants must land whole or not
    /// at all, or a retry adds the tenants written before the failure a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_usage_batch_that_fails_for_one_tenant_adds_nothing_for_any() {
        let db = PgDatabase::migrated().await;
        let store = db.store().await;
        seed_tenants(&store).await;
        assert!(TENANT_A < TENANT_B, "A's rows are written first");
        store.add_usage(batch(1), &[row(TENANT_B, i64::MAX - 1)]).await.unwrap();
        // B's counter would overflow: the batch fails after A's row was written in it.
        let rows = [row(TENANT_A, 10_000_000), row(TENANT_B, 10)];
        assert!(store.add_usage(batch(2), &rows).await.is_err());
        assert_eq!(spent(&store, TENANT_A).await, 0, "nothing of the failed batch stayed");
        store.add_usage(batch(3), &[row(TENANT_A, 10_000_000), row(TENANT_B, 1)]).await.unwrap();
        assert_eq!(spent(&store, TENANT_A).await, 10_000_000);
        assert_eq!(spent(&store, TENANT_B).await, i64::MAX);
    }
}
