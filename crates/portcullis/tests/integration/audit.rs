//! The audit log (SPEC §3.6): one event per action with the request's fields, the JSONL files
//! equal to the database, tampering named by `audit verify` down to the line and seq, a request
//! refused (503, nothing changed) when its event cannot be written, no acknowledged event lost to
//! `kill -9`, the chain continued across restarts, and the `GET /v1/audit` filters.
use crate::harness::{self, Server, copy_dir, problem};
use reqwest::blocking::Response;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn start(env: &[(&str, &str)]) -> Server {
    Server::start_with(env, None)
}

fn request_id(r: &Response) -> String {
    r.headers().get("x-request-id").expect("every response has X-Request-Id").to_str().unwrap().to_owned()
}

/// Where the one server on `data` keeps its own state: the data dir itself (embedded) or its
/// instance directory (scale-out: `instances/<listen address>/`).
fn server_dir(data: &Path) -> PathBuf {
    let instances = data.join("instances");
    if !data.join("node-id").exists() && instances.is_dir() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&instances).unwrap().map(|e| e.unwrap().path()).collect();
        dirs.sort();
        assert_eq!(dirs.len(), 1, "one server on {}: {dirs:?}", data.display());
        return dirs.remove(0);
    }
    data.to_path_buf()
}

fn node_id(data: &Path) -> String {
    std::fs::read_to_string(server_dir(data).join("node-id")).unwrap().trim().to_owned()
}

// ---- the CLI against any data dir (a copy of a stopped server's) ----

fn cli_on(data: &Path, args: &[&str]) -> (i32, String) {
    let env = harness::scale_out_for(data).map(|(_, env)| env).unwrap_or_default();
    let out = Command::new(harness::BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORTCULLIS_DATA_DIR", data)
        .env("USER", "tester")
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// `portcullis audit verify`: (exit code, stdout + stderr).
fn verify(data: &Path) -> (i32, String) {
    cli_on(data, &["audit", "verify"])
}

fn verify_json(data: &Path) -> Value {
    let (_, text) = cli_on(data, &["--json", "audit", "verify"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("verify --json: {e}: {text}"))
}

/// The line the text report prints right after "first broken link:".
fn first_problem(report: &str) -> String {
    report.lines().skip_while(|l| !l.contains("first broken link")).nth(1).unwrap_or("").trim().to_owned()
}

// ---- direct database access ----

fn with_db<T>(data: &Path, f: impl AsyncFnOnce(&sqlx::SqlitePool) -> T) -> T {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("audit.db").display())).await.unwrap();
        let out = f(&pool).await;
        pool.close().await;
        out
    })
}

fn db_exec(data: &Path, statements: &[String]) {
    with_db(data, async |pool| {
        for s in statements {
            sqlx::query(s).execute(pool).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    });
}

/// Every row of `audit_events` as the JSON record the JSONL files hold, ordered by writer and seq:
/// from the data dir's audit.db, or from the server's PostgreSQL database in that shape.
fn db_records(data: &Path) -> Vec<Value> {
    use sqlx::Row;
    if let Some((url, _)) = harness::scale_out_for(data) {
        return tokio::runtime::Runtime::new().unwrap().block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let rows = sqlx::query("SELECT * FROM portcullis.audit_events ORDER BY writer_id, seq")
                .fetch_all(&mut c)
                .await
                .unwrap();
            rows.iter()
                .map(|r| {
                    // Rows of records that hold a NUL are stored escaped (`\\` and `\0`).
                    let escaped: bool = r.try_get("nul_escaped").unwrap();
                    let text = |col: &str| {
                        r.try_get::<Option<String>, _>(col).unwrap().map(|v| if escaped { unescape_nul(&v) } else { v })
                    };
                    json!({
                        "writer_id": text("writer_id"),
                        "seq": r.try_get::<i64, _>("seq").unwrap(),
                        "prev_hash": text("prev_hash"),
                        "timestamp": text("timestamp"),
                        "tenant_id": text("tenant_id"),
                        "user_id": text("user_id"),
                        "action": text("action"),
                        "resource_type": text("resource_type"),
                        "resource_id": text("resource_id"),
                        "result": text("result"),
                        "reason": text("reason"),
                        "metadata": serde_json::from_str::<Value>(&text("metadata").unwrap()).unwrap(),
                        "ip_address": text("ip_address"),
                        "user_agent": text("user_agent"),
                        "request_id": text("request_id"),
                        "hash": text("hash"),
                    })
                })
                .collect()
        });
    }
    with_db(data, async |pool| {
        let rows = sqlx::query("SELECT * FROM audit_events ORDER BY writer_id, seq").fetch_all(pool).await.unwrap();
        rows.iter()
            .map(|r| {
                let text = |c: &str| r.try_get::<Option<String>, _>(c).unwrap();
                let metadata: String = r.try_get("metadata").unwrap();
                json!({
                    "writer_id": text("writer_id"),
                    "seq": r.try_get::<i64, _>("seq").unwrap(),
                    "prev_hash": text("prev_hash"),
                    "timestamp": text("timestamp"),
                    "tenant_id": text("tenant_id"),
                    "user_id": text("user_id"),
                    "action": text("action"),
                    "resource_type": text("resource_type"),
                    "resource_id": text("resource_id"),
                    "result": text("result"),
                    "reason": text("reason"),
                    "metadata": serde_json::from_str::<Value>(&metadata).unwrap(),
                    "ip_address": text("ip_address"),
                    "user_agent": text("user_agent"),
                    "request_id": text("request_id"),
                    "hash": text("hash"),
                })
            })
            .collect()
    })
}

/// Waits until the query index (the database) holds every record of the files: it trails the
/// durable log by a few milliseconds (GET /v1/audit waits for it; a direct read must too).
fn db_caught_up(data: &Path) {
    let caught_up = harness::eventually(Duration::from_secs(5), || db_records(data).len() >= file_records(data).len());
    assert!(caught_up, "the audit database did not catch up with the files");
}

/// Undoes the PostgreSQL store's escaping of rows whose record holds a NUL.
fn unescape_nul(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => panic!("dangling escape in `{v}`"),
        }
    }
    out
}

/// How many signed checkpoints the database holds.
fn db_checkpoints(data: &Path) -> i64 {
    if let Some((url, _)) = harness::scale_out_for(data) {
        return tokio::runtime::Runtime::new().unwrap().block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar("SELECT COUNT(*) FROM portcullis.audit_checkpoints").fetch_one(&mut c).await.unwrap()
        });
    }
    with_db(data, async |pool| {
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_checkpoints").fetch_one(pool).await.unwrap()
    })
}

fn db_request_ids(data: &Path) -> HashSet<String> {
    db_records(data).iter().filter_map(|r| r["request_id"].as_str().map(str::to_owned)).collect()
}

// ---- the JSONL files ----

/// Every audit file under the data dir: the CLI's and the server's (the same directory on the
/// embedded shape).
fn audit_files(data: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![data.join("audit"), server_dir(data).join("audit")];
    dirs.dedup();
    let mut files = Vec::new();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("audit-"))
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    files
}

fn file_records(data: &Path) -> Vec<Value> {
    audit_files(data)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", f.display())))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["seq"].as_u64().unwrap()
}

// ---- paging through GET /v1/audit ----

/// Every page of `GET /v1/audit?{query}&limit={limit}`, following `next_cursor`.
fn audit_pages(s: &Server, token: &str, query: &str, limit: u32) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/v1/audit?limit={limit}&{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = s.get(&url).bearer_auth(token).send().unwrap();
        assert_eq!(r.status(), 200, "GET {url}");
        let v: Value = r.json().unwrap();
        pages.push(v["items"].as_array().unwrap().clone());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 1000, "pagination does not end");
    }
}

fn key_of(e: &Value) -> (String, u64) {
    (e["writer_id"].as_str().unwrap().to_owned(), e["seq"].as_u64().unwrap())
}

// ============================================================================================

struct Expect {
    label: &'static str,
    rid: String,
    action: &'static str,
    result: &'static str,
    tenant: Option<String>,
    user: Option<String>,
    resource: Option<String>,
    reason: Option<&'static str>,
}

#[test]
fn every_request_is_one_event_with_its_fields_and_the_jsonl_file_equals_the_database() {
    let s = start(&[]);
    let data = s.data_dir();
    let ua = |label: &str| format!("audit-it/{label}");
    let op_user = Some(String::from("user:admin@localhost"));
    let mut expect: Vec<Expect> = Vec::new();

    // Operator login.
    let pw = s.bootstrap_password.clone().unwrap();
    let r = s
        .post("/v1/auth/login")
        .header("user-agent", ua("login"))
        .json(&json!({"email": "admin@localhost", "password": pw}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = request_id(&r);
    let login: Value = r.json().unwrap();
    let op = login["token"].as_str().unwrap().to_owned();
    expect.push(Expect {
        label: "login",
        rid,
        action: "auth.login",
        result: "success",
        tenant: None,
        user: op_user.clone(),
        resource: login["session_id"].as_str().map(str::to_owned),
        reason: None,
    });

    // Create a tenant (and a second one, for a cross-tenant attempt).
    let r = s
        .post("/v1/tenants")
        .bearer_auth(&op)
        .header("user-agent", ua("tenant.create"))
        .json(&json!({"name": "audited", "tier": "pro"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let rid = request_id(&r);
    let t = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_owned();
    expect.push(Expect {
        label: "tenant.create",
        rid,
        action: "tenant.create",
        result: "success",
        tenant: Some(t.clone()),
        user: op_user.clone(),
        resource: Some(t.clone()),
        reason: None,
    });
    let other = s.create_tenant(&op, "other", "free");
    let (other_key_id, _) = s.create_key(&op, &other, "viewer");

    // Create keys in the tenant as the operator.
    let mut keys = Vec::new();
    for role in ["admin", "viewer", "editor"] {
        let r = s
            .post("/v1/keys")
            .bearer_auth(&op)
            .header("x-tenant-id", &t)
            .header("user-agent", ua("key.create"))
            .json(&json!({"name": format!("{role}-key"), "role": role}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        let rid = request_id(&r);
        let v: Value = r.json().unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        expect.push(Expect {
            label: "key.create",
            rid,
            action: "key.create",
            result: "success",
            tenant: Some(t.clone()),
            user: op_user.clone(),
            resource: Some(id.clone()),
            reason: None,
        });
        keys.push((id, v["key"].as_str().unwrap().to_owned()));
    }
    let (admin_id, admin_key) = keys[0].clone();
    let (viewer_id, viewer_key) = keys[1].clone();
    let (editor_id, editor_key) = keys[2].clone();
    let admin_user = Some(format!("key:{admin_id}"));

    // Use the admin key to list keys.
    let r = s.get("/v1/keys").header("x-api-key", &admin_key).header("user-agent", ua("key.list")).send().unwrap();
    assert_eq!(r.status(), 200);
    expect.push(Expect {
        label: "key.list",
        rid: request_id(&r),
        action: "key.list",
        result: "success",
        tenant: Some(t.clone()),
        user: admin_user.clone(),
        resource: None,
        reason: None,
    });

    // A client-chosen request id is kept and recorded.
    let r = s
        .get("/v1/auth/whoami")
        .header("x-api-key", &admin_key)
        .header("x-request-id", "audit-it-whoami-0001")
        .header("user-agent", ua("whoami"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(request_id(&r), "audit-it-whoami-0001");
    expect.push(Expect {
        label: "whoami",
        rid: request_id(&r),
        action: "auth.whoami",
        result: "success",
        tenant: Some(t.clone()),
        user: admin_user.clone(),
        resource: admin_user.clone(),
        reason: None,
    });

    // Revoke the editor key with the admin key, then try to use it.
    let r = s
        .delete(&format!("/v1/keys/{editor_id}"))
        .header("x-api-key", &admin_key)
        .header("user-agent", ua("key.revoke"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    expect.push(Expect {
        label: "key.revoke",
        rid: request_id(&r),
        action: "key.revoke",
        result: "success",
        tenant: Some(t.clone()),
        user: admin_user.clone(),
        resource: Some(editor_id.clone()),
        reason: None,
    });
    let r = s.get("/v1/keys").header("x-api-key", &editor_key).header("user-agent", ua("revoked")).send().unwrap();
    assert_eq!(r.status(), 401);
    expect.push(Expect {
        label: "revoked",
        rid: request_id(&r),
        action: "auth.failure",
        result: "failure",
        tenant: None,
        user: None,
        resource: None,
        reason: Some("revoked_api_key"),
    });

    // A denied action: a viewer may not create keys.
    let r = s
        .post("/v1/keys")
        .header("x-api-key", &viewer_key)
        .header("user-agent", ua("denied"))
        .json(&json!({"name": "nope", "role": "admin"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    expect.push(Expect {
        label: "denied",
        rid: request_id(&r),
        action: "authz.denied",
        result: "denied",
        tenant: Some(t.clone()),
        user: Some(format!("key:{viewer_id}")),
        resource: None,
        reason: Some("role_lacks_permission"),
    });

    // Failed login (checked on its own below: the principal was never authenticated).
    let r = s
        .post("/v1/auth/login")
        .header("user-agent", ua("login-failed"))
        .json(&json!({"email": "Admin@Localhost", "password": "wrong password entirely"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let failed_login_rid = request_id(&r);

    // A cross-tenant read: 404 for the caller, and the owner's log learns of it.
    let r = s
        .get(&format!("/v1/keys/{other_key_id}"))
        .header("x-api-key", &admin_key)
        .header("user-agent", ua("cross"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let cross_rid = request_id(&r);

    // The viewer's refused key does not exist (this listing is the last request).
    let listed = s.get("/v1/keys").header("x-api-key", &admin_key).send().unwrap().text().unwrap();
    assert!(!listed.contains("\"nope\""), "a denied create changes nothing: {listed}");

    // ---- the events ----
    db_caught_up(&data);
    let records = db_records(&data);
    let by_rid = |rid: &str| -> Vec<&Value> { records.iter().filter(|e| e["request_id"] == rid).collect() };
    let s_or_null = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| Value::from(s.as_str()));
    for x in &expect {
        let found = by_rid(&x.rid);
        assert_eq!(found.len(), 1, "{}: exactly one event for request {}: {found:#?}", x.label, x.rid);
        let e = found[0];
        assert_eq!(e["action"], x.action, "{}: {e}", x.label);
        assert_eq!(e["result"], x.result, "{}: {e}", x.label);
        assert_eq!(e["tenant_id"], s_or_null(&x.tenant), "{}: tenant_id: {e}", x.label);
        assert_eq!(e["user_id"], s_or_null(&x.user), "{}: user_id: {e}", x.label);
        assert_eq!(e["resource_id"], s_or_null(&x.resource), "{}: resource_id: {e}", x.label);
        if let Some(reason) = x.reason {
            assert_eq!(e["reason"], reason, "{}: {e}", x.label);
        }
        assert_eq!(e["ip_address"], "127.0.0.1", "{}: {e}", x.label);
        assert_eq!(e["user_agent"], ua(x.label).as_str(), "{}: {e}", x.label);
        assert_eq!(e["writer_id"], node_id(&data).as_str());
        let ts = e["timestamp"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "RFC 3339 ms UTC: {ts}");
    }

    let failed = by_rid(&failed_login_rid);
    assert_eq!(failed.len(), 1, "failed login: {failed:#?}");
    let e = failed[0];
    assert_eq!((e["action"].as_str(), e["result"].as_str()), (Some("auth.login"), Some("failure")), "{e}");
    assert_eq!(e["reason"], "invalid_credentials");
    assert_eq!(e["tenant_id"], Value::Null);
    assert!(
        e["user_id"].as_str().is_some_and(|u| u.ends_with("admin@localhost")),
        "the failed login names the attempted account: {e}"
    );
    assert_eq!(e["ip_address"], "127.0.0.1");
    assert_eq!(e["user_agent"], "audit-it/login-failed");

    let cross = by_rid(&cross_rid);
    assert_eq!(cross.len(), 2, "caller's denial plus the owner's cross-tenant event: {cross:#?}");
    let mine = cross.iter().find(|e| e["action"] == "key.read").expect("key.read denied");
    assert_eq!((mine["result"].as_str(), mine["tenant_id"].as_str()), (Some("denied"), Some(t.as_str())));
    assert_eq!(mine["user_id"], admin_user.clone().unwrap().as_str());
    let theirs = cross.iter().find(|e| e["action"] == "cross_tenant_access_blocked").expect("owner's event");
    assert_eq!((theirs["result"].as_str(), theirs["tenant_id"].as_str()), (Some("denied"), Some(other.as_str())));
    assert_eq!(theirs["resource_id"], other_key_id.as_str());

    // The bootstrap: the first operator was created and the bootstrap itself recorded.
    let boot: Vec<&Value> = records.iter().filter(|e| e["action"] == "bootstrap").collect();
    assert_eq!(boot.len(), 1, "{boot:#?}");
    assert_eq!(boot[0]["result"], "success");
    assert_eq!(boot[0]["user_id"], "system:bootstrap");
    let op_created = records
        .iter()
        .find(|e| e["action"] == "user.create" && e["request_id"] == "bootstrap")
        .expect("bootstrap operator's user.create");
    assert_eq!(op_created["resource_id"], boot[0]["resource_id"]);
    assert_eq!(op_created["metadata"]["email"], "admin@localhost");

    // Seqs are contiguous from 1 and linked.
    for (i, e) in records.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "{e}");
        let prev = if i == 0 { "0".repeat(64) } else { records[i - 1]["hash"].as_str().unwrap().to_owned() };
        assert_eq!(e["prev_hash"], prev.as_str(), "{e}");
    }

    // The JSONL files hold exactly the database's records.
    let files = file_records(&data);
    let index = |v: &[Value]| -> BTreeMap<(String, u64), Value> { v.iter().map(|e| (key_of(e), e.clone())).collect() };
    assert_eq!(files.len(), records.len(), "one line per record");
    assert_eq!(index(&files), index(&records), "JSONL lines equal the database rows");

    let (code, out) = verify(&data);
    assert_eq!(code, 0, "{out}");
}

// ============================================================================================

/// A stopped server's data dir with ~25 events and a checkpoint every 5, to tamper with copies of.
struct Evidence {
    _server: Server,
    data: PathBuf,
    writer: String,
    head: u64,
}

fn evidence() -> Evidence {
    let mut s = start(&[("PORTCULLIS_AUDIT__CHECKPOINT_EVERY", "5")]);
    let op = s.operator_token();
    let t = s.create_tenant(&op, "evidence", "free");
    let (_, admin) = s.create_key(&op, &t, "admin");
    let (_, viewer) = s.create_key(&op, &t, "viewer");
    for _ in 0..12 {
        assert_eq!(s.get("/v1/keys").header("x-api-key", &admin).send().unwrap().status(), 200);
    }
    let denied = s.post("/v1/keys").header("x-api-key", &viewer).json(&json!({"name": "x", "role": "admin"})).send();
    assert_eq!(denied.unwrap().status(), 403);
    let failed = s.post("/v1/auth/login").json(&json!({"email": "who@example.test", "password": "nope nope"})).send();
    assert_eq!(failed.unwrap().status(), 401);
    for _ in 0..4 {
        assert_eq!(s.get("/v1/keys").header("x-api-key", &viewer).send().unwrap().status(), 200);
    }
    s.stop();
    let data = s.data_dir();
    let writer = node_id(&data);
    // Not from the database: opening it would race its WAL clean-up against the copies below.
    let head = file_records(&data).len() as u64;
    assert!(head >= 20, "{head}");
    Evidence { _server: s, data, writer, head }
}

type Tamper<'a> = Box<dyn Fn(&Path) + 'a>;

#[test]
fn audit_verify_passes_untouched_and_names_the_first_broken_link_of_each_tampering() {
    if harness::embedded_only("tampers with copies of the data dir, whose database is its audit.db") {
        return;
    }
    let ev = evidence();
    let (w, n) = (ev.writer.clone(), ev.head);
    let work = tempfile::Builder::new().prefix("portcullis-tamper-").tempdir().unwrap();

    // The untouched log verifies, and the clean stop signed the whole chain.
    let untouched = work.path().join("untouched");
    copy_dir(&ev.data, &untouched);
    let (code, out) = verify(&untouched);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit log verified"), "{out}");
    let report = verify_json(&untouched);
    assert_eq!(report["ok"], true, "{report:#}");
    let chain = report["writers"].as_array().unwrap().iter().find(|x| x["writer_id"] == w.as_str()).unwrap().clone();
    assert_eq!(chain["head_seq"], n, "{report:#}");
    assert_eq!(chain["records"], n, "{report:#}");
    // A checkpoint is signed once 5 events are unsigned, at the query index's next flush (which
    // may take in more than 5 at once): some while running, one at the stop, each in both sinks.
    let cp_lines = read_lines(&ev.data.join("audit").join("checkpoints.jsonl"));
    let in_file: Vec<u64> = cp_lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|c| c["writer_id"] == w.as_str())
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert!(in_file.len() >= 2, "a checkpoint before the stop and one at it: {in_file:?}");
    assert_eq!(in_file.last(), Some(&n), "the stop signs the head: {in_file:?}");
    assert!(in_file.windows(2).all(|p| p[1] >= p[0] + 5 || p[1] == n), "at least 5 new events each: {in_file:?}");
    assert_eq!(
        report["checkpoints"].as_u64(),
        Some(2 * in_file.len() as u64),
        "the database holds the same: {report:#}"
    );
    // Tail attacks cut below a signed checkpoint (whether the clean stop signed the very head is
    // `a_clean_stop_signs_the_head_of_the_chain`'s business).
    let signed = chain["last_checkpoint_seq"].as_u64().unwrap();
    assert!(signed >= 20, "{report:#}");

    // The file to tamper with, and where its lines are.
    let files = audit_files(&ev.data);
    let name = files.last().unwrap().file_name().unwrap().to_owned();
    let lines = read_lines(files.last().unwrap());
    assert!(lines.len() >= 12, "the evidence spans midnight UTC; rerun: {} lines", lines.len());
    // Line k (1-based) holds a successful record in the middle of the chain.
    let k = (6..lines.len() - 4).find(|i| lines[i - 1].contains("\"result\":\"success\"")).unwrap();
    let (seq_k, seq_k1) = (seq_of(&lines[k - 1]), seq_of(&lines[k]));
    let last = lines.len();
    let file_at = |dir: &Path| dir.join("audit").join(&name);
    let m = 7u64; // the database row tampered with
    let db_cut = signed - 3;

    // (name, tampering, pieces the first reported problem must contain)
    let cases: Vec<(&str, Tamper<'_>, Vec<String>)> = vec![
        (
            "jsonl: a field of line k edited",
            Box::new(move |d| {
                let p = file_at(d);
                let mut l = read_lines(&p);
                l[k - 1] = l[k - 1].replacen("\"result\":\"success\"", "\"result\":\"denied\"", 1);
                write_lines(&p, &l);
            }),
            vec![format!("line {k}:"), format!("seq {seq_k}: content does not match its hash")],
        ),
        (
            "jsonl: a byte of line k replaced by one that is not UTF-8",
            Box::new(move |d| {
                let p = file_at(d);
                let mut bytes = std::fs::read(&p).unwrap();
                let start: usize = read_lines(&p)[..k - 1].iter().map(|l| l.len() + 1).sum();
                bytes[start + 20] = 0xff;
                std::fs::write(&p, bytes).unwrap();
            }),
            vec![format!("line {k}: not a valid audit record")],
        ),
        (
            "jsonl: line k deleted",
            Box::new(move |d| {
                let p = file_at(d);
                let mut l = read_lines(&p);
                l.remove(k - 1);
                write_lines(&p, &l);
            }),
            vec![format!("line {k}:"), format!("expected seq {seq_k}, found seq {seq_k1}")],
        ),
        (
            "jsonl: lines k and k+1 swapped",
            Box::new(move |d| {
                let p = file_at(d);
                let mut l = read_lines(&p);
                l.swap(k - 1, k);
                write_lines(&p, &l);
            }),
            vec![format!("line {k}:"), format!("expected seq {seq_k}, found seq {seq_k1}")],
        ),
        (
            "jsonl: last 3 lines cut",
            Box::new(move |d| {
                let p = file_at(d);
                let mut l = read_lines(&p);
                l.truncate(l.len() - 3);
                write_lines(&p, &l);
            }),
            vec![
                format!("ends at seq {}", n - 3),
                format!("line {}", last - 3),
                format!("database has seq {n}"),
                String::from("truncated"),
            ],
        ),
        (
            "jsonl: the day's file deleted",
            Box::new(move |d| std::fs::remove_file(file_at(d)).unwrap()),
            vec![format!("database has seq {n}"), String::from("deleted")],
        ),
        (
            "database: action of a row edited",
            Box::new({
                let w = w.clone();
                move |d| {
                    db_exec(
                        d,
                        &[format!("UPDATE audit_events SET action = 'key.read' WHERE writer_id = '{w}' AND seq = {m}")],
                    )
                }
            }),
            vec![
                format!("database: writer `{w}`"),
                format!("seq {m}: content does not match its hash (record edited)"),
            ],
        ),
        (
            "database: a middle row deleted",
            Box::new({
                let w = w.clone();
                move |d| db_exec(d, &[format!("DELETE FROM audit_events WHERE writer_id = '{w}' AND seq = {m}")])
            }),
            vec![format!("database: writer `{w}`"), format!("expected seq {m}, found seq {}", m + 1)],
        ),
        (
            "database: two rows reordered",
            Box::new({
                let w = w.clone();
                move |d| {
                    let q = |from: i64, to: i64| {
                        format!("UPDATE audit_events SET seq = {to} WHERE writer_id = '{w}' AND seq = {from}")
                    };
                    db_exec(d, &[q(m as i64, -1), q(m as i64 + 1, m as i64), q(-1, m as i64 + 1)])
                }
            }),
            vec![format!("database: writer `{w}`"), format!("seq {m}")],
        ),
        (
            "database: tail deleted and head fixed up",
            Box::new({
                let w = w.clone();
                move |d| {
                    db_exec(
                        d,
                        &[
                            format!("DELETE FROM audit_events WHERE writer_id = '{w}' AND seq > {db_cut}"),
                            format!(
                                "UPDATE audit_heads SET seq = {db_cut}, hash = (SELECT hash FROM audit_events WHERE writer_id = '{w}' AND seq = {db_cut}) WHERE writer_id = '{w}'"
                            ),
                        ],
                    )
                }
            }),
            vec![
                String::from("checkpoint of writer"),
                String::from("covers seq"),
                format!("ends at seq {db_cut}"),
                String::from("records truncated"),
            ],
        ),
        (
            "database and file tail hidden, database checkpoints dropped",
            Box::new({
                let w = w.clone();
                move |d| {
                    db_exec(
                        d,
                        &[
                            format!("DELETE FROM audit_events WHERE writer_id = '{w}' AND seq > {db_cut}"),
                            format!(
                                "UPDATE audit_heads SET seq = {db_cut}, hash = (SELECT hash FROM audit_events WHERE writer_id = '{w}' AND seq = {db_cut}) WHERE writer_id = '{w}'"
                            ),
                            format!("DELETE FROM audit_checkpoints WHERE writer_id = '{w}' AND seq > {db_cut}"),
                        ],
                    );
                    let p = file_at(d);
                    let mut l = read_lines(&p);
                    l.truncate(l.len() - 3);
                    write_lines(&p, &l);
                }
            }),
            vec![String::from("checkpoints.jsonl line"), String::from("covers seq"), format!("ends at seq {db_cut}")],
        ),
        (
            "checkpoint forged (no valid signature)",
            Box::new(|d| {
                let p = d.join("audit").join("checkpoints.jsonl");
                let mut l = read_lines(&p);
                let mut cp: Value = serde_json::from_str(l.last().unwrap()).unwrap();
                cp["seq"] = json!(cp["seq"].as_u64().unwrap() - 1);
                l.push(cp.to_string());
                write_lines(&p, &l);
            }),
            vec![String::from("checkpoints.jsonl line"), String::from("no valid signature")],
        ),
    ];

    let mut failures = Vec::new();
    for (i, (label, tamper, wanted)) in cases.iter().enumerate() {
        let copy = work.path().join(format!("case-{i}"));
        copy_dir(&ev.data, &copy);
        tamper(&copy);
        let (code, out) = verify(&copy);
        let first = first_problem(&out);
        let missing: Vec<&String> = wanted.iter().filter(|p| !first.contains(p.as_str())).collect();
        if code != 1 || !missing.is_empty() {
            failures.push(format!("{label}: exit {code}, first problem lacks {missing:?}\n{out}"));
        }
        // A file problem names the file it is in.
        if label.contains("line") {
            let f = file_at(&copy).display().to_string();
            if !out.contains(&f) {
                failures.push(format!("{label}: the report does not name {f}\n{out}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} tamper cases:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn a_clean_stop_signs_the_head_of_the_chain() {
    // No checkpoint by count (1000) or idle time (60 s) during these short lives: only the stop's.
    let mut s = start(&[]);
    let data = s.data_dir();
    let writer = node_id(&data);
    let mut unsigned = Vec::new();
    let mut missing_in_db = 0;
    for life in 0..20 {
        let op = s.operator_token();
        s.create_tenant(&op, &format!("life-{life}"), "free");
        s.stop();
        let report = verify_json(&data);
        assert_eq!(report["ok"], true, "{report:#}");
        let w = report["writers"].as_array().unwrap().iter().find(|w| w["writer_id"] == writer.as_str()).unwrap();
        if w["last_checkpoint_seq"] != w["head_seq"] {
            unsigned
                .push(format!("life {life}: head seq {}, last checkpoint {}", w["head_seq"], w["last_checkpoint_seq"]));
        }
        // Each checkpoint goes to both sinks.
        let in_file = read_lines(&server_dir(&data).join("audit").join("checkpoints.jsonl")).len();
        let in_db = db_checkpoints(&data);
        let gap = in_file as i64 - in_db;
        if gap != missing_in_db {
            unsigned
                .push(format!("life {life}: the stop's checkpoint is in checkpoints.jsonl but not in the database"));
            missing_in_db = gap;
        }
        s.spawn();
    }
    assert!(unsigned.is_empty(), "SIGTERM exited without writing the final signed checkpoint: {unsigned:#?}");
}

// ============================================================================================

#[test]
fn a_request_whose_audit_event_cannot_be_written_is_refused_with_503_and_changes_nothing() {
    let s = start(&[]);
    let data = s.data_dir();
    let op = s.operator_token();
    let t = s.create_tenant(&op, "before", "free");
    let (_, admin) = s.create_key(&op, &t, "admin");

    // Make the audit directory unusable even for root: a regular file where the directory was.
    let audit_dir = server_dir(&data).join("audit");
    let moved = server_dir(&data).join("audit.moved");
    std::fs::rename(&audit_dir, &moved).unwrap();
    std::fs::write(&audit_dir, b"not a directory").unwrap();

    let mut refused_rids = Vec::new();
    let r = s
        .post("/v1/keys")
        .bearer_auth(&op)
        .header("x-tenant-id", &t)
        .json(&json!({"name": "refused-key", "role": "viewer"}))
        .send()
        .unwrap();
    refused_rids.push(request_id(&r));
    let (status, body) = problem(r);
    assert_eq!(status, 503, "{body}");
    let r = s.post("/v1/tenants").bearer_auth(&op).json(&json!({"name": "refused-tenant"})).send().unwrap();
    refused_rids.push(request_id(&r));
    let (status, body) = problem(r);
    assert_eq!(status, 503, "{body}");
    let r =
        s.post("/v1/keys").header("x-api-key", &admin).json(&json!({"name": "refused-too", "role": "viewer"})).send();
    let r = r.unwrap();
    refused_rids.push(request_id(&r));
    assert_eq!(problem(r).0, 503);
    // Reads are refused too: their event cannot be written either.
    let r = s.get("/v1/keys").header("x-api-key", &admin).send().unwrap();
    refused_rids.push(request_id(&r));
    assert_eq!(problem(r).0, 503);

    // Restore the directory.
    std::fs::remove_file(&audit_dir).unwrap();
    std::fs::rename(&moved, &audit_dir).unwrap();

    let keys = s.get("/v1/keys?limit=500").header("x-api-key", &admin).send().unwrap();
    assert_eq!(keys.status(), 200);
    let keys = keys.text().unwrap();
    assert!(!keys.contains("refused-key") && !keys.contains("refused-too"), "a refused key exists: {keys}");
    let tenants = s.get("/v1/tenants?limit=500").bearer_auth(&op).send().unwrap();
    assert_eq!(tenants.status(), 200);
    let tenants = tenants.text().unwrap();
    assert!(!tenants.contains("refused-tenant"), "a refused tenant exists: {tenants}");
    let by_cli = s.cli_json(&["tenant", "list"]).to_string();
    assert!(!by_cli.contains("refused-tenant"), "{by_cli}");

    // No trace of the refused requests in either sink.
    let ids = db_request_ids(&data);
    let file_ids: HashSet<String> =
        file_records(&data).iter().filter_map(|e| e["request_id"].as_str().map(str::to_owned)).collect();
    for rid in &refused_rids {
        assert!(!ids.contains(rid) && !file_ids.contains(rid), "refused request {rid} left an event");
    }

    // Requests succeed again, audited.
    let r = s
        .post("/v1/keys")
        .bearer_auth(&op)
        .header("x-tenant-id", &t)
        .json(&json!({"name": "after-key", "role": "viewer"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let rid = request_id(&r);
    let t2 = s.create_tenant(&op, "after", "free");
    db_caught_up(&data);
    assert!(db_request_ids(&data).contains(&rid));
    let r = s.get(&format!("/v1/tenants/{t2}")).bearer_auth(&op).send().unwrap();
    assert_eq!(r.status(), 200);

    let out = s.cli(&["audit", "verify"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
}

// ============================================================================================

/// What one burst thread saw acknowledged: request ids, and the ids of tenants it created.
#[derive(Default)]
struct Acked {
    rids: Vec<String>,
    tenants: Vec<String>,
    other_statuses: Vec<u16>,
}

fn all_tenant_ids(s: &Server, op: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/tenants?limit=500&cursor={c}"),
            None => String::from("/v1/tenants?limit=500"),
        };
        let v: Value = s.get(&url).bearer_auth(op).send().unwrap().json().unwrap();
        ids.extend(v["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
}

#[test]
fn kill_9_during_a_burst_loses_no_acknowledged_event_and_the_chain_verifies() {
    let mut s = start(&[("PORTCULLIS_AUDIT__CHECKPOINT_EVERY", "5")]);
    let data = s.data_dir();
    let op = s.operator_token();
    let t = s.create_tenant(&op, "burst", "free");
    let (_, key) = s.create_key(&op, &t, "viewer");
    let mut all_acked: Vec<String> = Vec::new();
    for round in 0..3 {
        let op = s.operator_token();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (base, op, key, stop) = (s.base.clone(), op.clone(), key.clone(), stop.clone());
                std::thread::spawn(move || {
                    let c = harness::client();
                    let mut acked = Acked::default();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let creates = i % 2 == 0;
                        let sent = if creates {
                            c.post(format!("{base}/v1/tenants"))
                                .bearer_auth(&op)
                                .json(&json!({"name": format!("burst-{round}-{i}-{n}")}))
                                .send()
                        } else {
                            c.get(format!("{base}/v1/keys?limit=1")).header("x-api-key", &key).send()
                        };
                        let Ok(r) = sent else { break };
                        if !r.status().is_success() {
                            acked.other_statuses.push(r.status().as_u16());
                            continue;
                        }
                        // 2xx is sent only after the event is durable, even if the body is cut.
                        acked.rids.push(request_id(&r));
                        if creates && let Ok(v) = r.json::<Value>() {
                            acked.tenants.push(v["id"].as_str().unwrap().to_owned());
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        let results: Vec<Acked> = workers.into_iter().map(|h| h.join().unwrap()).collect();
        let rids: Vec<&String> = results.iter().flat_map(|a| &a.rids).collect();
        let tenants: Vec<&String> = results.iter().flat_map(|a| &a.tenants).collect();
        let others: Vec<u16> = results.iter().flat_map(|a| a.other_statuses.iter().copied()).collect();
        assert!(others.is_empty(), "round {round}: unexpected statuses during the burst: {others:?}");
        assert!(rids.len() >= 8, "round {round}: the burst barely ran ({} acknowledged)", rids.len());
        all_acked.extend(rids.iter().map(|r| (*r).clone()));

        s.spawn();
        let ids = db_request_ids(&data);
        let lost: Vec<&&String> = rids.iter().filter(|r| !ids.contains(r.as_str())).collect();
        assert!(lost.is_empty(), "round {round}: {} of {} acknowledged events lost: {lost:?}", lost.len(), rids.len());

        let op = s.operator_token();
        let existing = all_tenant_ids(&s, &op);
        let missing: Vec<&&String> = tenants.iter().filter(|t| !existing.contains(t.as_str())).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged tenants missing after restart: {missing:?}");

        let out = s.cli(&["audit", "verify"]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "round {round}: {text}");
    }

    // The operator's view agrees: page through GET /v1/audit and find every burst request.
    let op = s.operator_token();
    let seen: HashSet<String> = audit_pages(&s, &op, "action=tenant.create", 1000)
        .into_iter()
        .flatten()
        .chain(audit_pages(&s, &op, "action=key.list", 1000).into_iter().flatten())
        .filter_map(|e| e["request_id"].as_str().map(str::to_owned))
        .collect();
    let unseen: Vec<&String> = all_acked.iter().filter(|r| !seen.contains(*r)).collect();
    assert!(unseen.is_empty(), "acknowledged but not in GET /v1/audit: {unseen:?}");
    let records = db_records(&data);
    let writer = node_id(&data);
    let seqs: Vec<u64> = records.iter().filter(|e| e["writer_id"] == writer.as_str()).map(|e| key_of(e).1).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "one contiguous chain across the crashes");
}

// ============================================================================================

#[test]
fn restarts_continue_the_servers_chain_and_the_cli_writes_its_own() {
    let mut s = start(&[]);
    let data = s.data_dir();
    let writer = node_id(&data);
    assert!(writer.starts_with("node-") && writer.len() == 13, "{writer}");

    let op = s.operator_token();
    s.create_tenant(&op, "first-life", "free");
    let head_1 = db_records(&data).len() as u64;

    s.restart(); // clean stop
    let op = s.operator_token();
    let r = s.post("/v1/tenants").bearer_auth(&op).json(&json!({"name": "second-life"})).send().unwrap();
    assert_eq!(r.status(), 201);
    let rid_2 = request_id(&r);

    s.kill9(); // crash
    s.spawn();
    let op = s.operator_token();
    let r = s.get("/v1/auth/whoami").bearer_auth(&op).send().unwrap();
    assert_eq!(r.status(), 200);
    let rid_3 = request_id(&r);
    assert_eq!(node_id(&data), writer, "node-id is stable");
    assert_eq!(s.stdout.iter().filter(|l| l.starts_with("bootstrap password")).count(), 1, "bootstrap once");

    // The CLI appends on its own chain, `cli`.
    s.cli_json(&["tenant", "create", "by-cli-1"]);
    s.cli_json(&["tenant", "create", "by-cli-2"]);

    let records = db_records(&data);
    let chain = |w: &str| -> Vec<&Value> { records.iter().filter(|e| e["writer_id"] == w).collect() };
    let mine = chain(&writer);
    let seqs: Vec<u64> = mine.iter().map(|e| key_of(e).1).collect();
    assert_eq!(seqs, (1..=mine.len() as u64).collect::<Vec<_>>(), "no restart started a second seq 1");
    let seq_of_rid = |rid: &str| key_of(mine.iter().find(|e| e["request_id"] == rid).unwrap()).1;
    assert!(seq_of_rid(&rid_2) > head_1 && seq_of_rid(&rid_3) > seq_of_rid(&rid_2), "the chain went on");
    assert_eq!(records.iter().filter(|e| e["action"] == "bootstrap").count(), 1);
    let cli: Vec<&Value> = chain("cli");
    assert_eq!(cli.iter().map(|e| key_of(e).1).collect::<Vec<_>>(), vec![1, 2], "{cli:#?}");
    assert!(cli.iter().all(|e| e["action"] == "tenant.create" && e["user_id"] == "cli:tester"), "{cli:#?}");
    let writers: HashSet<&str> = records.iter().map(|e| e["writer_id"].as_str().unwrap()).collect();
    assert_eq!(writers, HashSet::from([writer.as_str(), "cli"]));

    let report = s.cli_json(&["audit", "verify"]);
    assert_eq!(report["ok"], true, "{report:#}");
    let heads: HashMap<&str, u64> = report["writers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["writer_id"].as_str().unwrap(), w["head_seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(heads, HashMap::from([(writer.as_str(), mine.len() as u64), ("cli", 2)]));
}

// ============================================================================================

#[test]
fn audit_query_filters_paginates_and_is_tenant_scoped() {
    let s = start(&[]);
    let op = s.operator_token();
    let a = s.create_tenant(&op, "tenant-a", "free");
    let b = s.create_tenant(&op, "tenant-b", "free");
    let (a_admin_id, a_admin) = s.create_key(&op, &a, "admin");
    let (a_viewer_id, a_viewer) = s.create_key(&op, &a, "viewer");
    let (_, b_admin) = s.create_key(&op, &b, "admin");
    for _ in 0..5 {
        assert_eq!(s.get("/v1/keys").header("x-api-key", &a_admin).send().unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(s.get("/v1/keys").header("x-api-key", &b_admin).send().unwrap().status(), 200);
    }
    let r = s.post("/v1/keys").header("x-api-key", &a_viewer).json(&json!({"name": "x", "role": "admin"})).send();
    assert_eq!(r.unwrap().status(), 403);
    let r = s.post("/v1/auth/login").json(&json!({"email": "ghost@example.test", "password": "not it at all"})).send();
    assert_eq!(r.unwrap().status(), 401);

    // By user.
    let a_admin_user = format!("key:{a_admin_id}");
    let items = s.audit(&op, &format!("user_id={a_admin_user}"));
    assert_eq!(items.len(), 5, "{items:#?}");
    assert!(items.iter().all(|e| e["user_id"] == a_admin_user.as_str() && e["action"] == "key.list"));

    // By action: both tenants' listings, for the operator.
    let lists = s.audit(&op, "action=key.list");
    assert_eq!(lists.len(), 7, "{lists:#?}");
    assert!(lists.iter().all(|e| e["action"] == "key.list"));

    // By result.
    let denied = s.audit(&op, "result=denied");
    assert!(!denied.is_empty() && denied.iter().all(|e| e["result"] == "denied"), "{denied:#?}");
    assert!(denied.iter().any(|e| e["action"] == "authz.denied" && e["user_id"] == format!("key:{a_viewer_id}")));
    let failed = s.audit(&op, "result=failure");
    assert!(!failed.is_empty() && failed.iter().all(|e| e["result"] == "failure"), "{failed:#?}");
    assert!(failed.iter().any(|e| e["action"] == "auth.login"));
    let combined = s.audit(&op, &format!("action=key.list&result=success&user_id={a_admin_user}"));
    assert_eq!(combined.len(), 5);

    // By time: `from` inclusive, `to` exclusive, together the whole.
    let all = s.audit(&op, "action=key.list");
    let mid = all[3]["timestamp"].as_str().unwrap().to_owned();
    let after = s.audit(&op, &format!("action=key.list&from={mid}"));
    let before = s.audit(&op, &format!("action=key.list&to={mid}"));
    assert!(after.iter().all(|e| e["timestamp"].as_str().unwrap() >= mid.as_str()), "{after:#?}");
    assert!(before.iter().all(|e| e["timestamp"].as_str().unwrap() < mid.as_str()), "{before:#?}");
    assert!(after.iter().any(|e| e["seq"] == all[3]["seq"]), "`from` is inclusive");
    let mut halves: Vec<(String, u64)> = after.iter().chain(&before).map(key_of).collect();
    halves.sort();
    let mut whole: Vec<(String, u64)> = all.iter().map(key_of).collect();
    whole.sort();
    assert_eq!(halves, whole);
    let window = s.audit(&op, &format!("action=key.list&from={mid}&to={mid}"));
    assert!(window.is_empty(), "an empty window: {window:#?}");
    let future = s.audit(&op, "from=2999-01-01T00:00:00Z");
    assert!(future.is_empty());

    // Pagination: newest first, no duplicates, nothing missed, ends with no cursor.
    let snapshot = s.audit(&op, &format!("tenant_id={a}&action=key.list"));
    let pages = audit_pages(&s, &op, &format!("tenant_id={a}&action=key.list"), 2);
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
    let paged: Vec<(String, u64)> = pages.iter().flatten().map(key_of).collect();
    assert_eq!(paged, snapshot.iter().map(key_of).collect::<Vec<_>>(), "pages = the single query, in order");
    assert!(paged.windows(2).all(|w| w[0].1 > w[1].1), "newest first: {paged:?}");
    let every = audit_pages(&s, &op, "", 3).into_iter().flatten().map(|e| key_of(&e)).collect::<Vec<_>>();
    assert_eq!(every.iter().collect::<HashSet<_>>().len(), every.len(), "no duplicates across pages");
    assert!(every.windows(2).all(|w| w[0].1 > w[1].1), "newest first across pages");

    // Tenant scoping: a tenant key sees only its tenant; may not name another one.
    for key in [&a_admin, &a_viewer] {
        let r = s.get("/v1/audit?limit=1000").header("x-api-key", key).send().unwrap();
        assert_eq!(r.status(), 200);
        let items = r.json::<Value>().unwrap()["items"].as_array().unwrap().clone();
        assert!(items.iter().all(|e| e["tenant_id"] == a.as_str()), "{items:#?}");
        assert!(items.iter().any(|e| e["action"] == "key.list"));
        assert!(items.iter().any(|e| e["action"] == "tenant.create"), "the operator's actions in A are A's too");
        let r = s.get(&format!("/v1/audit?tenant_id={b}")).header("x-api-key", key).send().unwrap();
        let (status, body) = problem(r);
        assert_eq!(status, 403, "{body}");
        let r = s.get(&format!("/v1/audit?tenant_id={a}")).header("x-api-key", key).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = s.get("/v1/audit?limit=1000").header("x-api-key", &b_admin).send().unwrap();
    let items = r.json::<Value>().unwrap()["items"].as_array().unwrap().clone();
    assert!(!items.is_empty() && items.iter().all(|e| e["tenant_id"] == b.as_str()), "{items:#?}");
    // Operators may pick a tenant, by parameter or by header.
    let of_b = s.audit(&op, &format!("tenant_id={b}"));
    assert!(!of_b.is_empty() && of_b.iter().all(|e| e["tenant_id"] == b.as_str()), "{of_b:#?}");
    assert_eq!(of_b.iter().filter(|e| e["action"] == "key.list").count(), 2);
    let r = s.get("/v1/audit?limit=1000").bearer_auth(&op).header("x-tenant-id", &b).send().unwrap();
    let by_header = r.json::<Value>().unwrap()["items"].as_array().unwrap().clone();
    assert!(by_header.iter().all(|e| e["tenant_id"] == b.as_str()), "{by_header:#?}");

    // Bad filter input.
    for q in [
        "result=maybe",
        "from=yesterday",
        "to=2026-13-45",
        "limit=0",
        "limit=1001",
        "limit=many",
        "cursor=abc",
        "tenant_id=not-a-tenant",
        "colour=blue",
    ] {
        let r = s.get(&format!("/v1/audit?{q}")).bearer_auth(&op).send().unwrap();
        let (status, body) = problem(r);
        assert_eq!(status, 400, "{q}: {body}");
    }
}

// ============================================================================================

/// The files are the log; the database is the query index. A database that cannot be written
/// refuses no request, and the index catches up from the files once the database is back.
#[test]
fn a_failing_query_index_refuses_nothing_and_catches_up_from_the_files() {
    if harness::embedded_only("the query index is the embedded shape's audit.db; on PostgreSQL the database is the log")
    {
        return;
    }
    let s = start(&[]);
    let data = s.data_dir();
    let op = s.operator_token();
    let t = s.create_tenant(&op, "index-outage", "free");
    let (_, key) = s.create_key(&op, &t, "viewer");
    db_caught_up(&data);
    let before = db_records(&data).len();

    // Hold the audit database's write lock from outside until the server's index writes have
    // failed (its busy timeout is 10 s).
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder_data = data.clone();
    let holder = std::thread::spawn(move || {
        with_db(&holder_data, async |pool| {
            let mut c = pool.acquire().await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE").execute(&mut *c).await.unwrap();
            locked_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || release_rx.recv_timeout(Duration::from_secs(60))).await;
            sqlx::query("COMMIT").execute(&mut *c).await.unwrap();
        })
    });
    locked_rx.recv().unwrap();
    let mut rids = Vec::new();
    for _ in 0..10 {
        let r = s.get("/v1/keys").header("x-api-key", &key).send().unwrap();
        assert_eq!(r.status(), 200, "acknowledged by the file, not the index");
        rids.push(request_id(&r));
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = harness::eventually(Duration::from_secs(30), || s.log().contains("audit query index not written"));
    // Meanwhile the index is behind the files, and the server said why.
    assert!(file_records(&data).len() >= before + rids.len());
    let r = s.get("/v1/keys").header("x-api-key", &key).send().unwrap();
    assert_eq!(r.status(), 200, "still answering while the index is down");
    rids.push(request_id(&r));
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(failed, "the index writes did fail: {}", s.log());

    // Back: every acknowledged event reaches the index, and the log verifies.
    let caught_up = harness::eventually(Duration::from_secs(20), || {
        let ids = db_request_ids(&data);
        rids.iter().all(|r| ids.contains(r))
    });
    assert!(caught_up, "the index did not catch up from the files: {}", s.log());
    let seen: HashSet<String> =
        s.audit(&op, "action=key.list").iter().filter_map(|e| e["request_id"].as_str().map(str::to_owned)).collect();
    assert!(rids.iter().all(|r| seen.contains(r)), "GET /v1/audit shows them");
    let (code, out) = verify(&data);
    assert_eq!(code, 0, "{out}");
}
