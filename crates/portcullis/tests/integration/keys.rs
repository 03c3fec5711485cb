//! API-key lifecycle: shown once, works, rotation grace, expiry, revocation through the API (at
//! once) and through the CLI from another process (within the documented cache staleness),
//! tenant suspension, malformed keys rejected before any lookup.
use crate::harness::{Server, eventually, problem};
use serde_json::{Value, json};
use std::time::Duration;

/// The documented staleness is `auth.cache_refresh_ms` (1 s); allow generous slack for a busy machine.
const STALENESS_LIMIT: Duration = Duration::from_secs(15);

/// A server with a tenant: (server, operator token, tenant id).
fn tenant() -> (Server, String, String) {
    let s = Server::start();
    let op = s.operator_token();
    let t = s.create_tenant(&op, "k", "free");
    (s, op, t)
}

fn whoami(s: &Server, key: &str) -> u16 {
    s.get("/v1/auth/whoami").header("x-api-key", key).send().unwrap().status().as_u16()
}

#[test]
fn key_is_shown_once_has_the_documented_format_and_never_leaks_its_hash() {
    let (s, op, t) = tenant();
    let r = s
        .post("/v1/keys")
        .bearer_auth(&op)
        .header("x-tenant-id", &t)
        .json(
            &json!({"name": "ci", "role": "editor", "scopes": ["conversation.send", "keys.read"], "expires_in": "30d"}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("pc_") && key.len() == 41, "{key}");
    assert!(key[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(created["prefix"], &key[..11]);
    assert_eq!(created["role"], "editor");
    assert_eq!(created["scopes"], json!(["conversation.send", "keys.read"]));
    assert!(created["expires_at"].is_string());
    assert_eq!(created["created_by"], "user:admin@localhost");
    let id = created["id"].as_str().unwrap();
    let got: Value = s.get(&format!("/v1/keys/{id}")).header("x-api-key", key).send().unwrap().json().unwrap();
    assert!(got.get("key").is_none(), "the key is returned only at creation");
    let listed = s.get("/v1/keys").header("x-api-key", key).send().unwrap().text().unwrap();
    assert!(!listed.contains(key), "listing never contains a key");
    assert!(!listed.contains("hash"), "listing never contains a hash");
    // last_used_at is recorded off the hot path, in batches.
    assert!(eventually(Duration::from_secs(20), || {
        let v: Value = s.get(&format!("/v1/keys/{id}")).header("x-api-key", key).send().unwrap().json().unwrap();
        v["last_used_at"].is_string()
    }));
}

#[test]
fn malformed_and_unknown_keys_are_rejected_and_audited() {
    let (s, op, t) = tenant();
    let (_, key) = s.create_key(&op, &t, "admin");
    let mut bad = key.clone().into_bytes();
    bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    for (k, reason) in [
        (bad.as_str(), "malformed_api_key"),
        ("pc_short", "malformed_api_key"),
        ("pc_0000000000000000000000000000000000000X", "malformed_api_key"),
    ] {
        let (status, _) = problem(s.get("/v1/keys").header("x-api-key", k).send().unwrap());
        assert_eq!(status, 401, "{k}");
        let events = s.audit(&op, "action=auth.failure");
        assert!(events.iter().any(|e| e["reason"] == reason), "{reason} audited");
    }
    // A well-formed key with a valid checksum that was never issued.
    let other = Server::start();
    let other_op = other.operator_token();
    let ot = other.create_tenant(&other_op, "o", "free");
    let (_, foreign) = other.create_key(&other_op, &ot, "admin");
    assert_eq!(whoami(&s, &foreign), 401);
    assert!(s.audit(&op, "action=auth.failure").iter().any(|e| e["reason"] == "unknown_api_key"));
}

#[test]
fn rotation_keeps_old_and_new_valid_until_the_grace_period_ends() {
    let (s, op, t) = tenant();
    let (id, old) = s.create_key(&op, &t, "admin");
    let r = s
        .post(&format!("/v1/keys/{id}/rotate"))
        .header("x-api-key", &old)
        .json(&json!({"grace_period": "3s"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().unwrap();
    let new = v["key"].as_str().unwrap().to_owned();
    assert_eq!(v["rotated_from"], id.as_str());
    assert_ne!(new, old);
    assert_eq!(whoami(&s, &old), 200, "old key works during grace");
    assert_eq!(whoami(&s, &new), 200, "new key works");
    let rec: Value = s.get(&format!("/v1/keys/{id}")).header("x-api-key", &new).send().unwrap().json().unwrap();
    assert_eq!(rec["status"], "rotating");
    // Rotating the same key again is a conflict.
    let again = s.post(&format!("/v1/keys/{id}/rotate")).header("x-api-key", &new).send().unwrap();
    assert_eq!(problem(again).0, 409);
    assert!(eventually(Duration::from_secs(20), || whoami(&s, &old) == 401), "old key ends with the grace period");
    assert_eq!(whoami(&s, &new), 200);
    assert!(s.audit(&op, "action=key.rotate").iter().any(|e| e["resource_id"] == id.as_str()));
}

#[test]
fn expired_key_fails() {
    let (s, op, t) = tenant();
    let r = s
        .post("/v1/keys")
        .bearer_auth(&op)
        .header("x-tenant-id", &t)
        .json(&json!({"name": "short", "role": "viewer", "expires_in": "2s"}))
        .send()
        .unwrap();
    let key = r.json::<Value>().unwrap()["key"].as_str().unwrap().to_owned();
    assert_eq!(whoami(&s, &key), 200);
    assert!(eventually(Duration::from_secs(20), || whoami(&s, &key) == 401));
    assert!(s.audit(&op, "action=auth.failure").iter().any(|e| e["reason"] == "expired_api_key"));
}

#[test]
fn revocation_through_the_api_is_immediate() {
    let (s, op, t) = tenant();
    let (id, key) = s.create_key(&op, &t, "admin");
    assert_eq!(whoami(&s, &key), 200);
    let r = s.delete(&format!("/v1/keys/{id}")).bearer_auth(&op).header("x-tenant-id", &t).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "revoked");
    assert_eq!(whoami(&s, &key), 401);
    assert!(s.audit(&op, "action=auth.failure").iter().any(|e| e["reason"] == "revoked_api_key"));
    assert!(s.audit(&op, "action=key.revoke").iter().any(|e| e["resource_id"] == id.as_str()));
}

#[test]
fn revocation_and_suspension_through_the_cli_reach_the_running_server() {
    let (s, op, t) = tenant();
    let (id, key) = s.create_key(&op, &t, "admin");
    let (_, other) = s.create_key(&op, &t, "viewer");
    assert_eq!(whoami(&s, &key), 200, "cached now");
    let out = s.cli(&["key", "revoke", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(STALENESS_LIMIT, || whoami(&s, &key) == 401),
        "CLI revocation visible within the staleness bound"
    );
    assert_eq!(whoami(&s, &other), 200);
    assert!(s.cli(&["tenant", "suspend", &t]).status.success());
    assert!(eventually(STALENESS_LIMIT, || whoami(&s, &other) == 403), "CLI suspension visible");
    let (status, body) = problem(s.get("/v1/keys").header("x-api-key", &other).send().unwrap());
    assert_eq!(status, 403);
    assert!(body["detail"].as_str().unwrap().contains("suspended"));
    assert!(s.audit(&op, "action=auth.denied").iter().any(|e| e["reason"] == "tenant_suspended"));
    assert!(s.cli(&["tenant", "resume", &t]).status.success());
    assert!(eventually(STALENESS_LIMIT, || whoami(&s, &other) == 200));
}

#[test]
fn suspension_through_the_api_fails_every_credential_of_the_tenant() {
    let (s, op, t) = tenant();
    let (_, key) = s.create_key(&op, &t, "admin");
    let (_, email, pw) = s.create_user(&op, &t, "admin");
    let session = s.login(&email, &pw);
    let r = s.post(&format!("/v1/tenants/{t}/suspend")).bearer_auth(&op).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "suspended");
    assert_eq!(whoami(&s, &key), 403);
    assert_eq!(s.get("/v1/auth/whoami").bearer_auth(&session).send().unwrap().status(), 403);
    let login = s.post("/v1/auth/login").json(&json!({"email": email, "password": pw})).send().unwrap();
    assert_eq!(login.status(), 403);
    assert!(s.audit(&op, "action=tenant.suspend").iter().any(|e| e["resource_id"] == t.as_str()));
    assert_eq!(s.post(&format!("/v1/tenants/{t}/resume")).bearer_auth(&op).send().unwrap().status(), 200);
    assert_eq!(whoami(&s, &key), 200);
}

#[test]
fn key_roles_and_inputs_are_validated() {
    let (s, op, t) = tenant();
    for body in [
        json!({"name": "x", "role": "root"}),
        json!({"name": "", "role": "admin"}),
        json!({"name": "x", "role": "admin", "expires_in": "10y"}),
        json!({"name": "x", "role": "admin", "scopes": ["Bad Scope"]}),
        json!({"name": "x", "role": "admin", "unexpected": true}),
    ] {
        let r = s.post("/v1/keys").bearer_auth(&op).header("x-tenant-id", &t).json(&body).send().unwrap();
        assert_eq!(problem(r).0, 400, "{body}");
    }
    let listed: Value = s.get("/v1/keys").bearer_auth(&op).header("x-tenant-id", &t).send().unwrap().json().unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "bad input changed nothing");
}

#[test]
fn key_scopes_restrict_what_the_role_allows() {
    let (s, op, t) = tenant();
    let make = |scopes: Value| -> String {
        let r = s
            .post("/v1/keys")
            .bearer_auth(&op)
            .header("x-tenant-id", &t)
            .json(&json!({"name": "scoped", "role": "admin", "scopes": scopes}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().unwrap()["key"].as_str().unwrap().to_owned()
    };
    let authorize = |key: &str, action: &str| -> Value {
        s.post("/v1/authorize")
            .header("x-api-key", key)
            .json(&json!({"action": action}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    // An admin key scoped to one data-plane action: no admin API, that action only.
    let conv = make(json!(["conversation.send"]));
    assert_eq!(problem(s.get("/v1/keys").header("x-api-key", &conv).send().unwrap()).0, 403);
    assert_eq!(whoami(&s, &conv), 200, "the own-session endpoints are never scoped away");
    assert_eq!(authorize(&conv, "conversation.send")["decision"], "allow");
    let denied = authorize(&conv, "tool.request");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reasons"], json!(["scope:not_granted"]));
    // Scopes name admin permissions too, exactly or by prefix.
    let reader = make(json!(["keys.read"]));
    assert_eq!(s.get("/v1/keys").header("x-api-key", &reader).send().unwrap().status(), 200);
    let r =
        s.post("/v1/keys").header("x-api-key", &reader).json(&json!({"name": "x", "role": "viewer"})).send().unwrap();
    assert_eq!(r.status(), 403);
    let keys_all = make(json!(["keys.*"]));
    let r =
        s.post("/v1/keys").header("x-api-key", &keys_all).json(&json!({"name": "x", "role": "viewer"})).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(s.get("/v1/users").header("x-api-key", &keys_all).send().unwrap().status(), 403);
    assert!(s.audit(&op, "action=authz.denied").iter().any(|e| e["reason"] == "scope_lacks_permission"));
}
