//! CORS from configuration, and failed credentials limited per client IP and per key prefix.
use crate::harness::{Server, problem};

#[test]
fn cors_answers_only_configured_origins() {
    let cfg = "[http.cors]\nallowed_origins = [\"https://app.example.test\"]\n";
    let s = Server::start_with(&[], Some(cfg));
    let preflight = |origin: &str| {
        s.request("OPTIONS", "/v1/keys")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
            .unwrap()
    };
    let ok = preflight("https://app.example.test");
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.test");
    assert!(ok.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let other = preflight("https://evil.example.test");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Actual requests carry the header (and security headers) for the allowed origin only.
    let r = s.get("/healthz").header("origin", "https://app.example.test").send().unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example.test");
    assert!(r.headers().contains_key("x-request-id"));
    // Without configuration there are no CORS headers at all.
    let plain = Server::start();
    let r = plain.get("/healthz").header("origin", "https://app.example.test").send().unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn failed_credentials_are_limited_per_ip_and_per_key_prefix() {
    let s = Server::start_with(
        &[
            ("PORTCULLIS_AUTH__FAILED_CREDENTIALS__MAX_PER_KEY_PREFIX", "3"),
            ("PORTCULLIS_AUTH__FAILED_CREDENTIALS__MAX_PER_IP", "8"),
            ("PORTCULLIS_AUTH__FAILED_CREDENTIALS__BACKOFF_SECS", "120"),
        ],
        None,
    );
    let op = s.operator_token();
    let t = s.create_tenant(&op, "t", "free");
    let (_, key) = s.create_key(&op, &t, "admin");
    // Guesses sharing the real key's prefix: after 3 failures that prefix is locked, so even the
    // real key waits, while other keys from the same address still work.
    let guess = |i: usize| format!("{}{}", &key[..11], &"0123456789abcdefghijklmnopqrstuvwxyz"[..30 - i.min(1)]);
    for i in 0..3 {
        assert_eq!(s.get("/v1/keys").header("x-api-key", guess(i)).send().unwrap().status(), 401);
    }
    let (status, body) = problem(s.get("/v1/keys").header("x-api-key", &key).send().unwrap());
    assert_eq!(status, 429, "{body}");
    let (_, other) = s.create_key(&op, &t, "viewer");
    assert_eq!(s.get("/v1/keys").header("x-api-key", &other).send().unwrap().status(), 200);
    // Per IP: failures of any kind from one address lock it.
    for i in 0..5 {
        let _ = s.get("/v1/keys").bearer_auth(format!("not-a-token-{i}")).send().unwrap();
    }
    let r = s.get("/v1/keys").header("x-api-key", &other).send().unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let alerts = s.cli_json(&["audit", "query", "--action", "security_alert"]);
    let reasons: Vec<&str> = alerts.as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"repeated_credential_failures_for_key_prefix"), "{reasons:?}");
    assert!(reasons.contains(&"repeated_credential_failures_from_ip"), "{reasons:?}");
}
