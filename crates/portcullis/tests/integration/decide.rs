//! Decisions for other gateways: `POST /v1/authorize` (allow/deny by role and by limits, with the
//! reasons, consuming the same rate and quota as proxied requests, audited) and `GET
//! /v1/auth/check` for nginx `auth_request` (identity headers on 200; 401, 403, 429; the route's
//! action audited).
use crate::harness::{problem, uuid_like};
use crate::proxy::{Gateway, gateway_with};
use reqwest::blocking::Response;
use serde_json::{Value, json};

/// `POST /v1/authorize` with a fresh request id: (status, body, request id).
fn authorize(g: &Gateway, key: &str, body: Value) -> (u16, Value, String) {
    let rid = uuid_like();
    let r = g.s.post("/v1/authorize").header("x-api-key", key).header("x-request-id", &rid).json(&body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap(), rid)
}

fn ask(action: &str) -> Value {
    json!({"action": action, "resource": {"type": "tool", "id": "shell"}, "context": {"message_length": 42}})
}

/// The one audit event of a request.
fn event(g: &Gateway, action: &str, rid: &str) -> Value {
    let events: Vec<Value> =
        g.s.audit(&g.op, &format!("action={action}")).into_iter().filter(|e| e["request_id"] == rid).collect();
    assert_eq!(events.len(), 1, "{action} {rid}: one event");
    events[0].clone()
}

/// `GET /v1/auth/check` as nginx sends it: (response, request id).
fn check(g: &Gateway, key: Option<&str>, method: &str, uri: &str) -> (Response, String) {
    let rid = uuid_like();
    let mut req =
        g.s.get("/v1/auth/check")
            .header("x-original-uri", uri)
            .header("x-original-method", method)
            .header("x-request-id", &rid);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    (req.send().unwrap(), rid)
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[test]
fn authorize_decides_by_role_and_says_why() {
    let g = gateway_with(&[], "", "pro", "editor");
    let keys: Vec<(&str, (String, String))> = ["admin", "editor", "viewer", "service"]
        .into_iter()
        .map(|r| (r, g.s.create_key(&g.op, &g.tenant, r)))
        .collect();
    let key = |role: &str| keys.iter().find(|(r, _)| *r == role).map(|(_, k)| k.clone()).unwrap();
    // (role, action, allowed): data-plane actions need `execute`; an admin permission's name is
    // decided by that permission.
    let cases = [
        ("admin", "conversation.send", true),
        ("editor", "tool.request", true),
        ("service", "job.submit", true),
        ("viewer", "conversation.send", false),
        ("viewer", "tool.request", false),
        ("admin", "keys.write", true),
        ("editor", "keys.write", false),
        ("service", "keys.read", false),
        ("viewer", "keys.read", true),
        ("viewer", "audit.read", true),
        ("admin", "tenants.manage", false),
    ];
    for (role, action, allowed) in cases {
        let (id, k) = key(role);
        let (status, v, rid) = authorize(&g, &k, ask(action));
        assert_eq!(status, 200, "{role} {action}: a denial is an answer, not an error: {v}");
        assert_eq!(v["principal"]["id"], format!("key:{id}"));
        assert_eq!(v["principal"]["tenant_id"], g.tenant.as_str());
        assert_eq!(v["principal"]["role"], role);
        let e = event(&g, action, &rid);
        assert_eq!(e["resource_type"], "tool");
        assert_eq!(e["resource_id"], "shell");
        assert_eq!(e["user_id"], format!("key:{id}"));
        if allowed {
            assert_eq!(v["decision"], "allow", "{role} {action}: {v}");
            assert_eq!(v["reasons"], json!([format!("builtin.rbac.{role}")]));
            assert_eq!(e["metadata"]["policies"], json!([format!("builtin.rbac.{role}")]), "{e}");
            assert_eq!(v["limits"]["rate_limit"], 200, "{v}");
            assert!(v["limits"]["rate_remaining"].as_u64().unwrap() < 200);
            assert!(v["limits"]["quota_remaining"].as_u64().unwrap() < 100_000);
            assert_eq!(e["result"], "success");
        } else {
            assert_eq!(v["decision"], "deny", "{role} {action}: {v}");
            assert_eq!(v["reasons"], json!(["default:no_permit"]));
            assert_eq!(e["result"], "denied");
            assert_eq!(e["reason"], "default:no_permit");
        }
    }
    // The bearer form works the same.
    let (_, editor) = key("editor");
    let r = g.s.post("/v1/authorize").bearer_auth(&editor).json(&ask("memory.write")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-ratelimit-remaining"));
    assert_eq!(r.json::<Value>().unwrap()["decision"], "allow");
}

#[test]
fn authorize_refuses_malformed_requests_and_unknown_callers() {
    let g = gateway_with(&[], "", "pro", "editor");
    let other = g.s.create_tenant(&g.op, "other", "pro");
    let bad_bodies = [
        json!({"action": "tool.request", "surprise": true}),
        json!({"action": "tool.request", "resource": {"type": "tool", "id": "shell", "owner": "x"}}),
        json!({"action": "Tool Request"}),
        json!({"action": ""}),
        json!({"action": "tool.request; drop"}),
        json!({"resource": {"type": "tool", "id": "shell"}}),
    ];
    for body in bad_bodies {
        let r = g.s.post("/v1/authorize").header("x-api-key", &g.key).json(&body).send().unwrap();
        assert_eq!(problem(r).0, 400, "{body}");
    }
    let r = g.s.post("/v1/authorize").json(&ask("tool.request")).send().unwrap();
    assert_eq!(problem(r).0, 401);
    let r =
        g.s.post("/v1/authorize").header("x-api-key", "pc_not_a_real_key").json(&ask("tool.request")).send().unwrap();
    assert_eq!(problem(r).0, 401);
    let r =
        g.s.post("/v1/authorize")
            .header("x-api-key", &g.key)
            .header("x-tenant-id", &other)
            .json(&ask("tool.request"))
            .send()
            .unwrap();
    assert_eq!(problem(r).0, 403, "a spoofed X-Tenant-ID is refused");
    assert!(g.s.audit(&g.op, "action=tool.request").is_empty(), "no decision was made");
}

#[test]
fn authorize_consumes_the_same_rate_and_quota_as_proxied_requests() {
    let g = gateway_with(&[], "", "free", "editor");
    for i in 0..6u64 {
        let (_, v, _) = authorize(&g, &g.key, ask("tool.request"));
        assert_eq!(v["decision"], "allow", "{v}");
        assert_eq!(v["limits"]["rate_limit"], 10);
        assert_eq!(v["limits"]["rate_remaining"], 9 - i);
        assert_eq!(v["limits"]["quota_remaining"], 999 - i);
    }
    for i in 0..4u64 {
        let r = g.s.get("/up/echo").header("x-api-key", &g.key).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-remaining").unwrap(), (3 - i).to_string());
    }
    let (status, v, rid) = authorize(&g, &g.key, ask("tool.request"));
    assert_eq!(status, 200);
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["reasons"], json!(["limit:tenant_rate"]));
    assert_eq!(v["limits"]["rate_limit"], 10);
    assert_eq!(v["limits"]["rate_remaining"], 0);
    assert!(v["limits"]["retry_after_secs"].as_u64().unwrap() >= 1, "{v}");
    let e = event(&g, "tool.request", &rid);
    assert_eq!(e["result"], "denied");
    assert_eq!(e["reason"], "limit:tenant_rate");
    assert_eq!(g.s.get("/up/echo").header("x-api-key", &g.key).send().unwrap().status(), 429);
    assert_eq!(g.up.count(), 4);

    // The daily quota too.
    let t = g.s.create_tenant(&g.op, "quota", "free");
    let (_, k) = g.s.create_key(&g.op, &t, "service");
    let r =
        g.s.request("PUT", &format!("/v1/tenants/{t}/limits")).bearer_auth(&g.op).json(&json!({"requests_per_day": 2}));
    assert_eq!(r.send().unwrap().status(), 200);
    for left in [1, 0] {
        let (_, v, _) = authorize(&g, &k, ask("job.submit"));
        assert_eq!(v["decision"], "allow", "{v}");
        assert_eq!(v["limits"]["quota_remaining"], left);
    }
    let (_, v, rid) = authorize(&g, &k, ask("job.submit"));
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["reasons"], json!(["limit:daily_quota"]));
    assert!(v["limits"]["retry_after_secs"].as_u64().unwrap() >= 1);
    assert_eq!(event(&g, "job.submit", &rid)["reason"], "limit:daily_quota");
}

#[test]
fn auth_check_answers_nginx_with_the_callers_identity_and_audits_the_route_action() {
    let g = gateway_with(&[], "", "pro", "editor");
    let (r, rid) = check(&g, Some(&g.key), "POST", "/up/v1/chat?stream=true");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-portcullis-tenant").as_deref(), Some(g.tenant.as_str()));
    assert_eq!(header(&r, "x-portcullis-user"), Some(format!("key:{}", g.key_id)));
    assert_eq!(header(&r, "x-portcullis-role").as_deref(), Some("editor"));
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("200"));
    assert!(r.headers().contains_key("x-ratelimit-remaining"));
    let e = event(&g, "conversation.send", &rid);
    assert_eq!(e["result"], "success");
    assert_eq!(e["resource_id"], "/up/v1/chat");
    assert_eq!(e["metadata"]["method"], "POST");
    assert_eq!(e["user_id"], format!("key:{}", g.key_id));
    // A URI no route matches is recorded as a plain HTTP request.
    let (r, rid) = check(&g, Some(&g.key), "GET", "/elsewhere/page");
    assert_eq!(r.status(), 200);
    assert_eq!(event(&g, "http.request", &rid)["resource_id"], "/elsewhere/page");
    // Bearer credentials work as well.
    let r = g.s.get("/v1/auth/check").bearer_auth(&g.key).header("x-original-uri", "/up/x").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(g.up.count(), 0, "a decision forwards nothing");
}

#[test]
fn auth_check_refuses_with_401_403_and_429() {
    let g = gateway_with(&[], "", "free", "editor");
    let (_, viewer) = g.s.create_key(&g.op, &g.tenant, "viewer");
    let other = g.s.create_tenant(&g.op, "other", "free");
    assert_eq!(problem(check(&g, None, "GET", "/up/x").0).0, 401);
    assert_eq!(problem(check(&g, Some("pc_not_a_real_key"), "GET", "/up/x").0).0, 401);
    let (r, rid) = check(&g, Some(&viewer), "GET", "/up/x");
    assert_eq!(problem(r).0, 403, "viewer");
    let e = event(&g, "conversation.send", &rid);
    assert_eq!(e["result"], "denied");
    assert_eq!(e["reason"], "rbac:no_permit");
    let r =
        g.s.get("/v1/auth/check")
            .header("x-api-key", &g.key)
            .header("x-tenant-id", &other)
            .header("x-original-uri", "/up/x")
            .send()
            .unwrap();
    assert_eq!(problem(r).0, 403, "spoofed X-Tenant-ID");
    // Free tier: ten a minute, then 429 with the headers nginx passes on.
    for i in 0..10u64 {
        let (r, _) = check(&g, Some(&g.key), "GET", "/up/x");
        assert_eq!(r.status(), 200, "check {}", i + 1);
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some((9 - i).to_string()));
    }
    let (r, rid) = check(&g, Some(&g.key), "GET", "/up/x");
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("10"));
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("0"));
    problem(r);
    assert_eq!(event(&g, "conversation.send", &rid)["reason"], "limit:tenant_rate");
    assert_eq!(g.s.get("/up/echo").header("x-api-key", &g.key).send().unwrap().status(), 429, "shared with the proxy");

    // A route's own rate applies to checks of its URIs.
    let t = g.s.create_tenant(&g.op, "metered", "pro");
    let (_, k) = g.s.create_key(&g.op, &t, "service");
    for _ in 0..2 {
        assert_eq!(check(&g, Some(&k), "POST", "/metered/job").0.status(), 200);
    }
    let (r, rid) = check(&g, Some(&k), "POST", "/metered/job");
    assert_eq!(problem(r).0, 429);
    assert_eq!(event(&g, "job.submit", &rid)["reason"], "limit:route_rate");
    assert_eq!(check(&g, Some(&k), "POST", "/up/job").0.status(), 200, "other routes are unaffected");
}
