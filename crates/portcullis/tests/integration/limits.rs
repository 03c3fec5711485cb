//! Limits on the data plane: the tier's rate per tenant (free = 10 a minute) with the
//! `X-RateLimit-*` and `Retry-After` headers, the per-key rate, a route's own rate, the daily
//! quota (until UTC midnight), the global rate, operator overrides through the API and the CLI
//! applied to the running server, tenants independent of each other, and every refusal audited
//! as `limit:<kind>`.
use crate::harness::{eventually, problem, uuid_like};
use crate::proxy::{Gateway, OpenStream, gateway_with};
use reqwest::blocking::Response;
use serde_json::{Value, json};
use std::time::Duration;

/// The documented staleness is `auth.cache_refresh_ms` (1 s); generous slack for a busy machine.
const STALENESS_LIMIT: Duration = Duration::from_secs(15);

/// One proxied request with a fresh request id: (response, request id).
fn call(g: &Gateway, key: &str, path: &str) -> (Response, String) {
    let rid = uuid_like();
    let r = g.s.get(path).header("x-api-key", key).header("x-request-id", &rid).send().unwrap();
    (r, rid)
}

fn num(r: &Response, name: &str) -> u64 {
    r.headers().get(name).unwrap_or_else(|| panic!("missing {name}")).to_str().unwrap().parse().unwrap()
}

/// A refusal: 429 problem+json with `Retry-After` ≥ 1 and the rate headers, audited as
/// `limit:<kind>` under the route's action. Returns Retry-After.
fn assert_limited(g: &Gateway, (r, rid): (Response, String), kind: &str, action: &str, prefix: &str) -> u64 {
    assert_eq!(r.status(), 429, "{kind}");
    let retry = num(&r, "retry-after");
    assert!(retry >= 1, "{kind}: Retry-After {retry}");
    for name in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"] {
        num(&r, name);
    }
    let (_, body) = problem(r);
    assert_eq!(body["request_id"], rid.as_str());
    let events: Vec<Value> =
        g.s.audit(&g.op, &format!("action={action}")).into_iter().filter(|e| e["request_id"] == rid.as_str()).collect();
    assert_eq!(events.len(), 1, "{kind}: the refusal is audited once");
    assert_eq!(events[0]["result"], "denied");
    assert_eq!(events[0]["reason"], format!("limit:{kind}"));
    assert_eq!(events[0]["resource_type"], "route");
    assert_eq!(events[0]["resource_id"], prefix);
    retry
}

fn put_limits(g: &Gateway, tenant: &str, body: Value) -> Response {
    g.s.request("PUT", &format!("/v1/tenants/{tenant}/limits")).bearer_auth(&g.op).json(&body).send().unwrap()
}

fn get_limits(g: &Gateway, tenant: &str) -> Value {
    let r = g.s.get(&format!("/v1/tenants/{tenant}/limits")).bearer_auth(&g.op).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn free() -> Gateway {
    gateway_with(&[], "", "free", "editor")
}

#[test]
fn a_free_tier_key_gets_ten_requests_a_minute_through_a_route_and_the_eleventh_is_429() {
    let g = free();
    for i in 0..10u64 {
        let (r, _) = call(&g, &g.key, "/up/echo");
        assert_eq!(r.status(), 200, "request {}", i + 1);
        assert_eq!(num(&r, "x-ratelimit-limit"), 10);
        assert_eq!(num(&r, "x-ratelimit-remaining"), 9 - i, "request {}", i + 1);
        let reset = num(&r, "x-ratelimit-reset");
        assert!((1..=60).contains(&reset), "X-RateLimit-Reset {reset} s: within the minute");
    }
    let eleventh = call(&g, &g.key, "/up/echo");
    assert_eq!(num(&eleventh.0, "x-ratelimit-limit"), 10);
    assert_eq!(num(&eleventh.0, "x-ratelimit-remaining"), 0);
    assert_limited(&g, eleventh, "tenant_rate", "conversation.send", "/up");
    assert_eq!(g.up.count(), 10, "the refused request reached no upstream");
    // The limit is the tenant's: another key of the same tenant is refused too.
    let (_, other) = g.s.create_key(&g.op, &g.tenant, "service");
    assert_limited(&g, call(&g, &other, "/up/echo"), "tenant_rate", "conversation.send", "/up");
}

#[test]
fn tier_defaults_are_the_documented_ones_and_come_from_the_configuration() {
    // (tier, rate per minute, requests per day, concurrency)
    let documented = [
        ("free", 10, 1_000, 5),
        ("starter", 50, 10_000, 10),
        ("pro", 200, 100_000, 50),
        ("enterprise", 1_000, 1_000_000, 500),
    ];
    let g = free();
    for (tier, rate, day, conc) in documented {
        let t = g.s.create_tenant(&g.op, tier, tier);
        let v = get_limits(&g, &t);
        assert_eq!(v["tier"], tier);
        assert_eq!(v["effective"]["rate_per_minute"], rate, "{tier}");
        assert_eq!(v["effective"]["requests_per_day"], day, "{tier}");
        assert_eq!(v["effective"]["concurrency"], conc, "{tier}");
    }
    // An operator's `[tiers.free]` replaces the free tier's numbers.
    let toml = "[tiers.free]\nrequests_per_day = 500\nmax_tokens_per_request = 1024\nconcurrency = 2\n\
                rate_per_minute = 3\nbudget_usd_per_day = 1.0\n";
    let g = gateway_with(&[], toml, "free", "editor");
    let v = get_limits(&g, &g.tenant);
    assert_eq!(
        v["effective"],
        json!({"rate_per_minute": 3, "requests_per_day": 500, "concurrency": 2, "max_tokens_per_request": 1024,
               "budget_usd_per_day": 1.0, "budget_usd_per_month": null})
    );
    for i in 0..3u64 {
        let (r, _) = call(&g, &g.key, "/up/echo");
        assert_eq!(r.status(), 200);
        assert_eq!(num(&r, "x-ratelimit-limit"), 3);
        assert_eq!(num(&r, "x-ratelimit-remaining"), 2 - i);
    }
    assert_limited(&g, call(&g, &g.key, "/up/echo"), "tenant_rate", "conversation.send", "/up");
}

#[test]
fn each_key_has_its_own_rate_within_the_tenant() {
    let g = gateway_with(&[], "[limits]\nprincipal_per_minute = 3\n", "free", "editor");
    let (_, second) = g.s.create_key(&g.op, &g.tenant, "service");
    for _ in 0..3 {
        assert_eq!(call(&g, &g.key, "/up/echo").0.status(), 200);
    }
    assert_limited(&g, call(&g, &g.key, "/up/echo"), "principal_rate", "conversation.send", "/up");
    let (r, _) = call(&g, &second, "/up/echo");
    assert_eq!(r.status(), 200, "another key of the same tenant still passes");
    assert_eq!(g.up.count(), 4);
}

#[test]
fn a_route_rate_limit_applies_per_tenant_on_that_route_only() {
    let g = gateway_with(&[], "", "pro", "editor");
    let (_, second) = g.s.create_key(&g.op, &g.tenant, "service");
    for _ in 0..2 {
        assert_eq!(call(&g, &g.key, "/metered/echo").0.status(), 200);
    }
    assert_limited(&g, call(&g, &g.key, "/metered/echo"), "route_rate", "job.submit", "/metered");
    assert_limited(&g, call(&g, &second, "/metered/echo"), "route_rate", "job.submit", "/metered");
    assert_eq!(call(&g, &g.key, "/up/echo").0.status(), 200, "other routes are not affected");
    let other = g.s.create_tenant(&g.op, "other", "pro");
    let (_, other_key) = g.s.create_key(&g.op, &other, "editor");
    assert_eq!(call(&g, &other_key, "/metered/echo").0.status(), 200, "another tenant has its own route budget");
}

#[test]
fn a_daily_quota_stops_the_tenant_until_utc_midnight() {
    let g = free();
    let r = put_limits(&g, &g.tenant, json!({"requests_per_day": 3}));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["tenant_id"], g.tenant.as_str());
    assert_eq!(v["tier"], "free");
    assert_eq!(
        v["effective"],
        json!({"rate_per_minute": 10, "requests_per_day": 3, "concurrency": 5, "max_tokens_per_request": 4096,
               "budget_usd_per_day": 1.0, "budget_usd_per_month": null})
    );
    assert_eq!(v["overrides"]["requests_per_day"], 3);
    for _ in 0..3 {
        assert_eq!(call(&g, &g.key, "/up/echo").0.status(), 200);
    }
    let retry = assert_limited(&g, call(&g, &g.key, "/up/echo"), "daily_quota", "conversation.send", "/up");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let to_midnight = 86_400 - now % 86_400;
    assert!(retry.abs_diff(to_midnight) <= 120, "Retry-After {retry} s, UTC midnight in {to_midnight} s");
    // The quota is the tenant's: another key is refused too; another tenant is not.
    let (_, second) = g.s.create_key(&g.op, &g.tenant, "admin");
    assert_limited(&g, call(&g, &second, "/up/echo"), "daily_quota", "conversation.send", "/up");
    let other = g.s.create_tenant(&g.op, "other", "free");
    let (_, other_key) = g.s.create_key(&g.op, &other, "editor");
    assert_eq!(call(&g, &other_key, "/up/echo").0.status(), 200);
    assert_eq!(g.up.count(), 4);
}

#[test]
fn limit_overrides_are_validated_and_only_operators_change_them() {
    let g = free();
    let (_, admin) = g.s.create_key(&g.op, &g.tenant, "admin");
    for body in [
        json!({"rate_per_minute": 0}),
        json!({"concurrency": 0}),
        json!({"requests_per_day": 0}),
        json!({"rate_per_minute": 20, "burst": 5}),
        json!({"rate_per_minute": "twenty"}),
    ] {
        assert_eq!(problem(put_limits(&g, &g.tenant, body.clone())).0, 400, "{body}");
    }
    assert_eq!(get_limits(&g, &g.tenant)["effective"]["rate_per_minute"], 10, "refused bodies changed nothing");
    let r =
        g.s.request("PUT", &format!("/v1/tenants/{}/limits", g.tenant))
            .header("x-api-key", &admin)
            .json(&json!({"rate_per_minute": 1000}))
            .send()
            .unwrap();
    assert_eq!(problem(r).0, 403, "a tenant admin cannot raise its own limits");
    // A tenant reader sees its own tenant's limits.
    let r = g.s.get(&format!("/v1/tenants/{}/limits", g.tenant)).header("x-api-key", &admin).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["effective"]["rate_per_minute"], 10);
    let other = g.s.create_tenant(&g.op, "other", "free");
    let r = g.s.get(&format!("/v1/tenants/{other}/limits")).header("x-api-key", &admin).send().unwrap();
    assert_eq!(problem(r).0, 404, "another tenant's limits are not found for a tenant principal");
    let missing = "/v1/tenants/00000000-0000-0000-0000-000000000000/limits";
    assert_eq!(problem(g.s.get(missing).bearer_auth(&g.op).send().unwrap()).0, 404);
}

#[test]
fn raising_the_rate_and_setting_concurrency_through_the_api_apply_to_the_running_server() {
    let g = free();
    for _ in 0..10 {
        assert_eq!(call(&g, &g.key, "/up/echo").0.status(), 200);
    }
    assert_limited(&g, call(&g, &g.key, "/up/echo"), "tenant_rate", "conversation.send", "/up");
    let r = put_limits(&g, &g.tenant, json!({"rate_per_minute": 20}));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["effective"]["rate_per_minute"], 20);
    assert_eq!(v["overrides"]["rate_per_minute"], 20);
    assert!(
        g.s.audit(&g.op, "action=tenant.limits.update").iter().any(|e| e["resource_id"] == g.tenant.as_str()),
        "the change is audited"
    );
    let (r, _) = call(&g, &g.key, "/up/echo");
    assert_eq!(r.status(), 200, "more requests pass at the raised rate");
    assert_eq!(num(&r, "x-ratelimit-limit"), 20);

    // Concurrency 1: while one stream is open the next request is refused; when it ends, admitted.
    let r = put_limits(&g, &g.tenant, json!({"rate_per_minute": 20, "concurrency": 1}));
    assert_eq!(r.json::<Value>().unwrap()["effective"]["concurrency"], 1);
    let mut st = OpenStream::get(&g.s.addr, "/up/sse?n=1", &[("x-api-key", &g.key)]);
    assert_eq!(st.status, 200);
    assert_limited(&g, call(&g, &g.key, "/up/echo"), "concurrency", "conversation.send", "/up");
    g.up.release(1);
    assert!(st.read_to_end());
    assert!(eventually(STALENESS_LIMIT, || call(&g, &g.key, "/up/echo").0.status() == 200));
}

#[test]
fn overrides_through_the_cli_reach_the_running_server() {
    let g = free();
    for _ in 0..10 {
        assert_eq!(call(&g, &g.key, "/up/echo").0.status(), 200);
    }
    assert_eq!(call(&g, &g.key, "/up/echo").0.status(), 429);
    let v = g.s.cli_json(&["tenant", "limits", &g.tenant, "--rate-per-minute", "20"]);
    assert_eq!(v["tenant_id"], g.tenant.as_str());
    assert_eq!(v["tier"], "free");
    assert_eq!(v["effective"]["rate_per_minute"], 20);
    assert_eq!(v["overrides"]["rate_per_minute"], 20);
    assert!(
        eventually(STALENESS_LIMIT, || {
            let (r, _) = call(&g, &g.key, "/up/echo");
            r.status() == 200 && num(&r, "x-ratelimit-limit") == 20
        }),
        "the raised rate reaches the running server"
    );
    // Each flag replaces its own override; the others stay.
    let v = g.s.cli_json(&["tenant", "limits", &g.tenant, "--concurrency", "1"]);
    assert_eq!(v["effective"]["rate_per_minute"], 20);
    assert_eq!(v["effective"]["concurrency"], 1);
    let text = g.s.cli(&["tenant", "limits", &g.tenant]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("20 requests/min") && text.contains("1 concurrent"), "{text}");
    assert!(
        eventually(STALENESS_LIMIT, || get_limits(&g, &g.tenant)["effective"]["concurrency"] == 1),
        "the running server sees concurrency 1"
    );
    let mut st = OpenStream::get(&g.s.addr, "/up/sse?n=1", &[("x-api-key", &g.key)]);
    assert_eq!(st.status, 200);
    assert_limited(&g, call(&g, &g.key, "/up/echo"), "concurrency", "conversation.send", "/up");
    g.up.release(1);
    assert!(st.read_to_end());
    assert!(g.s.audit(&g.op, "action=tenant.limits.update").len() >= 2, "CLI changes are audited");
}

#[test]
fn tenants_are_limited_independently() {
    let g = free();
    let b = g.s.create_tenant(&g.op, "b", "free");
    let (_, b_key) = g.s.create_key(&g.op, &b, "editor");
    for _ in 0..10 {
        assert_eq!(call(&g, &g.key, "/up/echo").0.status(), 200);
    }
    assert_limited(&g, call(&g, &g.key, "/up/echo"), "tenant_rate", "conversation.send", "/up");
    for i in 0..10u64 {
        let (r, _) = call(&g, &b_key, "/up/echo");
        assert_eq!(r.status(), 200, "tenant B request {}", i + 1);
        assert_eq!(num(&r, "x-ratelimit-remaining"), 9 - i, "tenant B counts from its own 10");
    }
    assert_limited(&g, call(&g, &b_key, "/up/echo"), "tenant_rate", "conversation.send", "/up");
    assert_limited(&g, call(&g, &g.key, "/up/echo"), "tenant_rate", "conversation.send", "/up");
}

#[test]
fn the_global_rate_holds_across_tenants() {
    let g = gateway_with(&[], "[limits]\nglobal_per_second = 2\n", "pro", "editor");
    let b = g.s.create_tenant(&g.op, "b", "pro");
    let (_, b_key) = g.s.create_key(&g.op, &b, "editor");
    let keys = [g.key.clone(), b_key];
    let mut refused = None;
    // Two a second for the whole gateway: a quick run of requests from two tenants meets it.
    for i in 0..60 {
        let (r, rid) = call(&g, &keys[i % 2], "/up/echo");
        if r.status() == 429 {
            refused = Some((r, rid));
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let refused = refused.expect("the global rate refused a request");
    assert_limited(&g, refused, "global_rate", "conversation.send", "/up");
}
