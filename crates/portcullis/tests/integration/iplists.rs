//! IP allow/block lists: global (configuration, checked on every request) and per tenant (API),
//! and `X-Forwarded-For` believed only from configured trusted proxies.
use crate::harness::{Server, problem};
use serde_json::{Value, json};
use std::net::IpAddr;

fn from(addr: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().local_address(addr.parse::<IpAddr>().ok()).build().unwrap()
}

fn put_rules(s: &Server, cred: &str, tenant: &str, rules: Value) -> reqwest::blocking::Response {
    s.request("PUT", &format!("/v1/tenants/{tenant}/ip-rules")).bearer_auth(cred).json(&rules).send().unwrap()
}

#[test]
fn tenant_rules_block_and_restrict_only_that_tenant() {
    let s = Server::start();
    let op = s.operator_token();
    let a = s.create_tenant(&op, "a", "free");
    let b = s.create_tenant(&op, "b", "free");
    let (_, a_admin) = s.create_key(&op, &a, "admin");
    let (_, a_viewer) = s.create_key(&op, &a, "viewer");
    let (_, b_admin) = s.create_key(&op, &b, "admin");
    let whoami = |key: &str| s.get("/v1/auth/whoami").header("x-api-key", key).send().unwrap().status().as_u16();

    // Validation first: bad input is 400 and changes nothing.
    let r = put_rules(&s, &a_admin, &a, json!({"allow": ["10.0.0.0/33"]}));
    assert_eq!(problem(r).0, 400);
    let r = put_rules(&s, &a_admin, &a, json!({"deny": ["1.2.3.4"]}));
    assert_eq!(problem(r).0, 400);
    // Viewers read but do not write; another tenant's admin sees nothing.
    assert_eq!(s.get(&format!("/v1/tenants/{a}/ip-rules")).bearer_auth(&a_viewer).send().unwrap().status(), 200);
    assert_eq!(put_rules(&s, &a_viewer, &a, json!({"block": ["127.0.0.1"]})).status(), 403);
    assert_eq!(put_rules(&s, &b_admin, &a, json!({"block": ["127.0.0.1"]})).status(), 404);
    assert_eq!(whoami(&a_admin), 200);

    // An allow list that does not hold the client address locks the tenant's credentials out.
    assert_eq!(put_rules(&s, &op, &a, json!({"allow": ["10.0.0.0/8", "2001:db8::/32"]})).status(), 200);
    assert_eq!(whoami(&a_admin), 403);
    assert_eq!(whoami(&b_admin), 200, "other tenants are unaffected");
    // Block wins over allow.
    assert_eq!(put_rules(&s, &op, &a, json!({"allow": ["127.0.0.0/8"], "block": ["127.0.0.1/32"]})).status(), 200);
    assert_eq!(whoami(&a_admin), 403);
    let got: Value = s.get(&format!("/v1/tenants/{a}/ip-rules")).bearer_auth(&op).send().unwrap().json().unwrap();
    assert_eq!(got["block"], json!(["127.0.0.1/32"]));
    let denials = s.audit(&op, "action=ip.denied");
    assert!(denials.iter().any(|e| e["reason"] == "tenant_ip_not_allowed" && e["tenant_id"] == a.as_str()));
    assert!(denials.iter().any(|e| e["reason"] == "tenant_ip_blocked" && e["ip_address"] == "127.0.0.1"));
    assert_eq!(put_rules(&s, &op, &a, json!({"allow": ["127.0.0.0/8"]})).status(), 200);
    assert_eq!(whoami(&a_admin), 200);
}

#[test]
fn global_lists_apply_to_every_request_before_authentication() {
    let s = Server::start_with(&[], Some("[ip]\nblock = [\"127.0.0.2\"]\n"));
    let blocked = from("127.0.0.2");
    let r = blocked.get(s.url("/healthz")).send().unwrap();
    assert_eq!(problem(r).0, 403);
    assert_eq!(from("127.0.0.1").get(s.url("/healthz")).send().unwrap().status(), 200);
    let op = s.operator_token();
    assert!(
        s.audit(&op, "action=ip.denied")
            .iter()
            .any(|e| e["reason"] == "global_ip_blocked" && e["ip_address"] == "127.0.0.2")
    );

    let s = Server::start_with(&[], Some("[ip]\nallow = [\"127.0.0.1/32\", \"::1\"]\n"));
    assert_eq!(from("127.0.0.3").get(s.url("/healthz")).send().unwrap().status(), 403);
    assert_eq!(from("127.0.0.1").get(s.url("/healthz")).send().unwrap().status(), 200);
}

#[test]
fn forwarded_for_counts_only_from_trusted_proxies() {
    for (trusted, expect_blocked) in [(true, true), (false, false)] {
        let cfg = if trusted { "[ip]\ntrusted_proxies = [\"127.0.0.1\"]\n" } else { "" };
        let s = Server::start_with(&[], Some(cfg));
        let op = s.operator_token();
        let t = s.create_tenant(&op, "t", "free");
        let (_, key) = s.create_key(&op, &t, "admin");
        assert_eq!(put_rules(&s, &op, &t, json!({"block": ["203.0.113.9"]})).status(), 200);
        let status = |xff: &str| {
            s.get("/v1/auth/whoami").header("x-api-key", &key).header("x-forwarded-for", xff).send().unwrap().status()
        };
        assert_eq!(status("203.0.113.9") == 403, expect_blocked, "trusted={trusted}");
        // A client cannot hide behind an address it writes itself: only the right-most untrusted hop counts.
        assert_eq!(status("203.0.113.9, 198.51.100.7"), 200, "trusted={trusted}");
        assert_eq!(status("198.51.100.7"), 200);
    }
}

#[test]
fn bad_global_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[ip]\nblock = [\"300.1.1.1\"]\n").unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .env("PORTCULLIS_DATA_DIR", dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("300.1.1.1"));
}
