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

/// CRC-32 (IEEE), as the key format uses it, to forge well-formed keys in the test.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// A key with a valid checksum whose first 11 characters are `prefix`.
fn forge(prefix: &str, n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let head = format!("{prefix}{:0>24}", n);
    let mut v = u64::from(crc32(head.as_bytes()));
    let mut check = [b'0'; 6];
    for slot in check.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    format!("{head}{}", String::from_utf8(check.to_vec()).unwrap())
}

#[test]
fn failed_credentials_are_limited_per_ip_and_per_key_prefix() {
    let s = Server::start_with(
        &[
            ("PORTCULLIS_AUTH__FAILED_CREDENTIALS__MAX_PER_KEY_PREFIX", "3"),
            ("PORTCULLIS_AUTH__FAILED_CREDENTIALS__MAX_PER_IP", "10"),
            ("PORTCULLIS_AUTH__FAILED_CREDENTIALS__BACKOFF_SECS", "120"),
        ],
        None,
    );
    let op = s.operator_token();
    let t = s.create_tenant(&op, "t", "free");
    let (_, key) = s.create_key(&op, &t, "admin");
    let status = |k: &str| s.get("/v1/keys").header("x-api-key", k).send().unwrap().status().as_u16();
    // Well-formed guesses carrying the real key's visible prefix: 3 are answered 401, then the
    // prefix is locked and further guesses get 429.
    for i in 0..3 {
        assert_eq!(status(&forge(&key[..11], i)), 401, "guess {i}");
    }
    let r = s.get("/v1/keys").header("x-api-key", forge(&key[..11], 3)).send().unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    problem(r);
    // The real key still works: only failing credentials are ever refused for guessing.
    assert_eq!(status(&key), 200);
    // Junk with the prefix (bad checksum) does not count against the prefix…
    assert_eq!(status(&format!("{}garbage", &key[..11])), 401);
    // …but every failure counts against the client address, until it is locked too.
    let mut refused = false;
    for i in 0..10 {
        if s.get("/v1/keys").bearer_auth(format!("not-a-token-{i}")).send().unwrap().status() == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the address is locked after 10 failures");
    assert_eq!(status(&key), 200, "a valid credential from a locked address still passes");
    let alerts = s.cli_json(&["audit", "query", "--action", "security_alert"]);
    let reasons: Vec<&str> = alerts.as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "repeated_credential_failures_for_key_prefix").count(),
        1,
        "{reasons:?}"
    );
    assert!(reasons.contains(&"repeated_credential_failures_from_ip"), "{reasons:?}");
    assert!(s.cli_json(&["audit", "query", "--action", "auth.throttled"]).as_array().is_some_and(|a| !a.is_empty()));
}
