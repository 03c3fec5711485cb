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
