//! HTTP hardening and contract: security headers and request id on every response (errors too),
//! problem+json, request smuggling, header and body limits, slowloris, OpenAPI coverage, login
//! backoff, sessions.
use crate::harness::{Server, problem};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn assert_security_headers(h: &reqwest::header::HeaderMap, what: &str) {
    for name in [
        "content-security-policy",
        "strict-transport-security",
        "x-frame-options",
        "x-content-type-options",
        "referrer-policy",
        "x-request-id",
    ] {
        assert!(h.contains_key(name), "{what}: missing {name}");
    }
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
}

/// Sends raw bytes and returns what the server answered before closing (or the timeout).
fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn every_response_carries_security_headers_and_a_request_id_and_errors_are_problem_json() {
    let s = Server::start();
    let op = s.operator_token();
    let cases: Vec<(&str, reqwest::blocking::Response)> = vec![
        ("200", s.get("/healthz").send().unwrap()),
        ("401", s.get("/v1/keys").send().unwrap()),
        ("404 route", s.get("/no/such/route").send().unwrap()),
        ("405", s.request("PUT", "/v1/auth/login").send().unwrap()),
        (
            "400 json",
            s.post("/v1/tenants")
                .bearer_auth(&op)
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .unwrap(),
        ),
        (
            "400 unknown field",
            s.post("/v1/tenants").bearer_auth(&op).json(&json!({"name": "x", "evil": 1})).send().unwrap(),
        ),
        (
            "413",
            s.post("/v1/tenants")
                .bearer_auth(&op)
                .header("content-type", "application/json")
                .body(vec![b' '; 2 * 1024 * 1024])
                .send()
                .unwrap(),
        ),
    ];
    for (what, r) in cases {
        assert_security_headers(r.headers(), what);
        if r.status().as_u16() >= 400 {
            let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
            let (_, body) = problem(r);
            assert_eq!(body["request_id"], rid.as_str(), "{what}: body and header carry the same request id");
        }
    }
}

#[test]
fn request_id_is_propagated_when_well_formed_and_replaced_otherwise() {
    let s = Server::start();
    let r = s.get("/healthz").header("x-request-id", "trace-abc.123:x").send().unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123:x");
    let r = s.get("/healthz").header("x-request-id", "bad id with spaces <script>").send().unwrap();
    let got = r.headers()["x-request-id"].to_str().unwrap();
    assert!(!got.contains(' ') && !got.is_empty());
    let a = s.get("/healthz").send().unwrap().headers()["x-request-id"].to_str().unwrap().to_owned();
    let b = s.get("/healthz").send().unwrap().headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(a, b);
}

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    let s = Server::start();
    let resp = raw(
        &s.addr,
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[test]
fn oversized_headers_get_431_and_oversized_bodies_413_even_when_streamed() {
    let s = Server::start();
    let big = "a".repeat(64 * 1024);
    let resp = raw(&s.addr, format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert!(resp.starts_with("HTTP/1.1 431"), "{}", &resp[..resp.len().min(200)]);
    // Chunked body with no Content-Length: the limit holds while streaming.
    let mut req = String::from(
        "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let chunk = " ".repeat(64 * 1024);
    for _ in 0..40 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let resp = raw(&s.addr, req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{}", &resp[..resp.len().min(200)]);
}

#[test]
fn a_connection_that_never_finishes_its_headers_is_closed() {
    let s = Server::start_with(&[("PORTCULLIS_HTTP__HEADER_READ_TIMEOUT_SECS", "1")], None);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    let mut buf = [0u8; 512];
    // The server must end the connection (EOF, possibly after a 408) instead of waiting forever.
    let mut closed = false;
    for _ in 0..4 {
        match c.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("connection still open after the read timeout: {e}"),
        }
    }
    assert!(closed, "slowloris connection was closed by the server");
}

#[test]
fn openapi_documents_every_route() {
    let s = Server::start();
    let doc: Value = s.get("/openapi.json").send().unwrap().json().unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/auth/login", "post"),
        ("/v1/auth/logout", "post"),
        ("/v1/auth/whoami", "get"),
        ("/v1/tenants", "get"),
        ("/v1/tenants", "post"),
        ("/v1/tenants/{id}", "get"),
        ("/v1/tenants/{id}/suspend", "post"),
        ("/v1/tenants/{id}/resume", "post"),
        ("/v1/users", "get"),
        ("/v1/users", "post"),
        ("/v1/users/{id}", "get"),
        ("/v1/keys", "get"),
        ("/v1/keys", "post"),
        ("/v1/keys/{id}", "get"),
        ("/v1/keys/{id}", "delete"),
        ("/v1/keys/{id}/rotate", "post"),
        ("/v1/audit", "get"),
        ("/v1/tenants/{id}/limits", "get"),
        ("/v1/tenants/{id}/limits", "put"),
        ("/v1/tenants/{id}/ip-rules", "get"),
        ("/v1/tenants/{id}/ip-rules", "put"),
        ("/v1/upstream-credentials", "get"),
        ("/v1/upstream-credentials", "put"),
        ("/v1/upstream-credentials", "delete"),
        ("/v1/authorize", "post"),
        ("/v1/auth/check", "get"),
        ("/v1/policies", "get"),
        ("/v1/policies", "post"),
        ("/v1/policies/{id}", "get"),
        ("/v1/policies/{id}", "put"),
        ("/v1/policies/{id}", "delete"),
        ("/v1/policies/{id}/versions", "get"),
        ("/v1/policies/schema", "get"),
        ("/v1/policies/evaluate", "post"),
        ("/v1/policies/simulate", "post"),
        ("/v1/model-profiles", "get"),
        ("/v1/model-profiles", "post"),
        ("/v1/model-profiles/{id}", "get"),
        ("/v1/model-profiles/{id}", "put"),
        ("/v1/model-profiles/{id}", "delete"),
        ("/v1/usage", "get"),
        ("/v1/model-profiles/{id}/metrics", "get"),
        ("/v1/sessions", "get"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}/timeline", "get"),
        ("/v1/sessions/{id}/events", "post"),
        ("/v1/session-settings", "get"),
        ("/v1/session-settings", "put"),
        ("/v1/tenants/{id}/budget", "get"),
        ("/v1/audit/verify", "post"),
        ("/ui", "get"),
        ("/ui/{file}", "get"),
        ("/ui/login", "post"),
        ("/ui/session", "get"),
        ("/ui/logout", "post"),
    ];
    for (p, m) in expected {
        assert!(paths.get(p).and_then(|v| v.get(m)).is_some(), "{m} {p} documented");
    }
    // Query parameters are documented as such (not as path parameters).
    for (p, name) in [
        ("/v1/usage", "from"),
        ("/v1/audit", "user_id"),
        ("/v1/model-profiles/{id}/metrics", "window"),
        ("/v1/sessions", "sort"),
        ("/v1/sessions/{id}", "cursor"),
    ] {
        let params = paths[p]["get"]["parameters"].as_array().unwrap();
        let param = params.iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("{p} documents `{name}`"));
        assert_eq!(param["in"], "query", "{p} {name}");
    }
    let documented: usize = paths.values().map(|v| v.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        expected.len(),
        "no undocumented or unexpected operations: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    // Every documented operation answers (not 404/405) on the live server.
    for (p, m) in expected {
        let path = p.replace("{id}", "01900000-0000-7000-8000-000000000000").replace("{file}", "app.js");
        let st = s
            .request(&m.to_uppercase(), &path)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .unwrap()
            .status();
        let answered = st != 405 && (st != 404 || p.contains("{id}"));
        assert!(answered, "{m} {p} → {st}");
    }
}

#[test]
fn repeated_login_failures_back_off_per_account_and_per_ip_and_raise_a_security_alert() {
    let s = Server::start_with(
        &[
            ("PORTCULLIS_AUTH__LOGIN__MAX_FAILURES_PER_ACCOUNT", "3"),
            ("PORTCULLIS_AUTH__LOGIN__MAX_FAILURES_PER_IP", "6"),
            ("PORTCULLIS_AUTH__LOGIN__BASE_BACKOFF_SECS", "120"),
        ],
        None,
    );
    let pw = s.bootstrap_password.clone().unwrap();
    let login =
        |email: &str, pw: &str| s.post("/v1/auth/login").json(&json!({"email": email, "password": pw})).send().unwrap();
    for _ in 0..3 {
        assert_eq!(login("admin@localhost", "wrong password!!").status(), 401);
    }
    let r = login("admin@localhost", &pw);
    assert_eq!(r.status(), 429, "locked even with the right password");
    assert!(r.headers().contains_key("retry-after"));
    problem(r);
    // Per IP: failures spread over other accounts lock the address too.
    for i in 0..3 {
        assert_eq!(login(&format!("nobody{i}@example.test"), "wrong password!!").status(), 401);
    }
    assert_eq!(login("someone@example.test", "wrong password!!").status(), 429);
    // The alert is in the audit log (read directly: every login from this IP is locked now).
    let out = s.cli_json(&["audit", "query", "--action", "security_alert"]);
    let alerts = out.as_array().unwrap();
    assert!(alerts.iter().any(|e| e["reason"] == "repeated_login_failures_for_account"), "{alerts:?}");
    assert!(alerts.iter().any(|e| e["reason"] == "repeated_login_failures_from_ip"), "{alerts:?}");
}

#[test]
fn sessions_expire_on_logout_and_bootstrap_is_printed_only_once() {
    let mut s = Server::start();
    let op = s.operator_token();
    assert_eq!(s.get("/v1/auth/whoami").bearer_auth(&op).send().unwrap().json::<Value>().unwrap()["kind"], "operator");
    assert_eq!(s.post("/v1/auth/logout").bearer_auth(&op).send().unwrap().status(), 204);
    assert_eq!(s.get("/v1/auth/whoami").bearer_auth(&op).send().unwrap().status(), 401);
    assert!(s.stdout.iter().any(|l| l.starts_with("bootstrap password: ")));
    s.stdout.clear();
    s.bootstrap_password = None;
    s.restart();
    assert!(!s.stdout.iter().any(|l| l.contains("bootstrap")), "bootstrap credential printed again: {:?}", s.stdout);
    assert_eq!(s.get("/readyz").send().unwrap().status(), 200);
}

#[test]
fn unknown_query_parameters_and_bad_pagination_are_rejected() {
    let s = Server::start();
    let op = s.operator_token();
    assert_eq!(problem(s.get("/v1/tenants?evil=1").bearer_auth(&op).send().unwrap()).0, 400);
    assert_eq!(problem(s.get("/v1/tenants?limit=0").bearer_auth(&op).send().unwrap()).0, 400);
    for i in 0..3 {
        s.create_tenant(&op, &format!("t{i}"), "free");
    }
    let first: Value = s.get("/v1/tenants?limit=2").bearer_auth(&op).send().unwrap().json().unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value =
        s.get(&format!("/v1/tenants?limit=2&cursor={cursor}")).bearer_auth(&op).send().unwrap().json().unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
}
