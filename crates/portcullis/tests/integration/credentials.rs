//! Upstream credentials: set per tenant and route, stored sealed, injected by the proxy in place
//! of anything the caller sent, never returned or logged.
use crate::harness::{self, Server, problem};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// An upstream that answers every request with the request head it received.
fn echo_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let _ =
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}", head.len());
        }
    });
    port
}

#[test]
fn each_tenant_gets_its_own_sealed_credential_injected() {
    let up = echo_upstream();
    let cfg = format!(
        "[[routes]]\nprefix = \"/llm\"\nupstream = \"http://127.0.0.1:{up}\"\naction = \"conversation.send\"\n"
    );
    let s = Server::start_with(&[], Some(&cfg));
    let op = s.operator_token();
    let a = s.create_tenant(&op, "a", "pro");
    let b = s.create_tenant(&op, "b", "pro");
    let (_, a_admin) = s.create_key(&op, &a, "admin");
    let (_, a_viewer) = s.create_key(&op, &a, "viewer");
    let (_, b_admin) = s.create_key(&op, &b, "admin");
    let put = |key: &str, body: Value| {
        s.request("PUT", "/v1/upstream-credentials").bearer_auth(key).json(&body).send().unwrap()
    };

    // Validation and permissions: nothing is stored.
    assert_eq!(problem(put(&a_admin, json!({"route": "/nope", "header": "authorization", "value": "x"}))).0, 400);
    assert_eq!(problem(put(&a_admin, json!({"route": "/llm", "header": "host", "value": "x"}))).0, 400);
    assert_eq!(problem(put(&a_admin, json!({"route": "/llm", "header": "x-portcullis-tenant", "value": "x"}))).0, 400);
    assert_eq!(problem(put(&a_admin, json!({"route": "/llm", "header": "authorization", "value": "a\nb"}))).0, 400);
    assert_eq!(
        put(&a_viewer, json!({"route": "/llm", "header": "authorization", "value": "Bearer sk-A-secret-1"})).status(),
        403
    );

    let r = put(&a_admin, json!({"route": "/llm", "header": "authorization", "value": "Bearer sk-A-secret-1"}));
    assert_eq!(r.status(), 200);
    assert!(!r.text().unwrap().contains("sk-A-secret-1"), "the value is never returned");
    assert_eq!(
        put(&b_admin, json!({"route": "/llm", "header": "authorization", "value": "Bearer sk-B-secret-2"})).status(),
        200
    );

    // The upstream sees the tenant's credential, not the caller's API key.
    let seen_a = s.get("/llm/v1/chat").bearer_auth(&a_admin).send().unwrap().text().unwrap();
    assert!(seen_a.contains("authorization: bearer sk-a-secret-1"), "{seen_a}");
    assert!(!seen_a.contains(&a_admin.to_ascii_lowercase()), "the caller's key never reaches the upstream");
    let seen_b = s.get("/llm/v1/chat").header("x-api-key", &b_admin).send().unwrap().text().unwrap();
    assert!(seen_b.contains("authorization: bearer sk-b-secret-2") && !seen_b.contains("sk-a"), "{seen_b}");

    let listed: Value = s.get("/v1/upstream-credentials").bearer_auth(&a_admin).send().unwrap().json().unwrap();
    assert_eq!(listed[0]["route"], "/llm");
    assert_eq!(listed[0]["header"], "authorization");
    assert!(!listed.to_string().contains("secret"));

    // Nothing on disk or in the audit log holds the value in clear.
    let all_events = serde_json::to_string(&s.audit(&op, "")).unwrap();
    assert!(all_events.contains("upstream_credential.set") && !all_events.contains("secret-1"));
    for entry in walk(&s.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(13).any(|w| w == b"sk-A-secret-1"), "{} holds the credential in clear", entry.display());
    }
    // In the PostgreSQL shape the rows live in the database: no table holds it in clear either.
    if let Some((url, _)) = harness::scale_out_for(&s.data_dir()) {
        let rows = harness::pg_all_rows_text(&url);
        assert!(rows.contains("upstream_credentials:"), "the dump covers the credentials table");
        assert!(!rows.contains("sk-A-secret-1"), "a database row holds the credential in clear");
    }

    // Removed: the upstream no longer gets it.
    let r = s.delete("/v1/upstream-credentials?route=/llm").bearer_auth(&a_admin).send().unwrap();
    assert_eq!(r.status(), 204);
    let seen_a = s.get("/llm/v1/chat").bearer_auth(&a_admin).send().unwrap().text().unwrap();
    assert!(!seen_a.contains("authorization:"), "{seen_a}");
    assert_eq!(s.delete("/v1/upstream-credentials?route=/llm").bearer_auth(&a_admin).send().unwrap().status(), 404);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
