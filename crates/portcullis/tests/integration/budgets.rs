//! Budgets, reserve-then-settle: a burst of concurrent requests against a budget that admits
//! exactly k gets exactly k through and 402 for the rest (in-process limiter, and Redis when the
//! suite runs with `PORTCULLIS_TEST_LIMITS=redis`); the 90 % warning header on every response past
//! it and exactly one `budget.warning` audit event per window; spend survives a restart.
use crate::harness::{Server, eventually, problem};
use crate::upstream::Upstream;
use serde_json::{Value, json};

/// One request costs exactly 0.01 USD: input is free, output is 1 USD per 1K tokens, and the
/// scripted upstream completes exactly `max_tokens` = 10 tokens.
const CALL: &str = r#"{"model": "metered", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}"#;
const CALL_NANOS: i64 = 10_000_000;

struct Budgeted {
    s: Server,
    _up: Upstream,
    op: String,
    tenant: String,
    key: String,
}

fn budgeted(daily_usd: f64) -> Budgeted {
    let up = Upstream::start();
    let config = format!(
        "{}\n[limits]\nprincipal_per_minute = 100000\n",
        up.route("/llm", "", "conversation.send", "kind = \"openai\"")
    );
    let s = Server::start_with(&[], Some(&config));
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "metered", "pro");
    let r = s
        .request("PUT", &format!("/v1/tenants/{tenant}/limits"))
        .bearer_auth(&op)
        .json(&json!({"rate_per_minute": 100000, "concurrency": 1000, "budget_usd_per_day": daily_usd}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = s
        .post("/v1/model-profiles")
        .bearer_auth(&op)
        .header("x-tenant-id", &tenant)
        .json(&json!({"role": "chat", "deployment_mode": "realtime", "model": "metered", "base_url": up.url(),
                          "temperature": 0.0, "input_price_per_1k": 0.0, "output_price_per_1k": 1.0}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let (_, key) = s.create_key(&op, &tenant, "service");
    Budgeted { s, _up: up, op, tenant, key }
}

fn call(b: &Budgeted) -> reqwest::blocking::Response {
    b.s.post("/llm/v1/chat/completions")
        .header("x-api-key", &b.key)
        .header("content-type", "application/json")
        .body(CALL)
        .send()
        .unwrap()
}

fn spent_nanos_now(b: &Budgeted) -> i64 {
    let r = b.s.get("/v1/usage").bearer_auth(&b.op).header("x-tenant-id", &b.tenant).send().unwrap();
    let v: Value = r.json().unwrap();
    v["totals"]["cost_nanos"].as_i64().unwrap()
}

/// What the usage store says was spent once it holds at least `expected` (servers write usage
/// every second): the caller then asserts it is exactly that.
fn spent_nanos(b: &Budgeted, expected: i64) -> i64 {
    let mut last = 0;
    eventually(std::time::Duration::from_secs(10), || {
        last = spent_nanos_now(b);
        last >= expected
    });
    last
}

#[test]
fn a_burst_of_200_gets_exactly_what_the_budget_admits_and_402_for_the_rest() {
    // 0.25 USD admits exactly 25 calls of 0.01.
    let b = budgeted(0.25);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..50).map(|_| scope.spawn(|| (0..4).map(|_| call(&b).status().as_u16()).collect::<Vec<u16>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (25, 175), "{statuses:?}");
    assert_eq!(spent_nanos(&b, 25 * CALL_NANOS), 25 * CALL_NANOS, "settled at the real cost, to the nano-dollar");

    let r = call(&b);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    let (status, v) = problem(r);
    assert_eq!(status, 402);
    assert_eq!(v["window"], "daily", "{v}");
    assert_eq!(v["limit_usd"], 0.25);
    assert!(v["reset_at"].as_str().unwrap().ends_with("T00:00:00.000Z"), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("daily budget"), "{v}");
    let denied = b.s.audit(&b.op, "action=conversation.send&result=denied");
    assert!(denied.iter().filter(|e| e["reason"] == "budget:daily").count() >= 175);
}

#[test]
fn past_90_percent_every_answer_warns_and_the_log_says_so_once() {
    let b = budgeted(0.10);
    for i in 1..=8 {
        let r = call(&b);
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-portcullis-budget-warning").is_none(), "call {i}");
    }
    for (i, want) in [(9, "daily=90%"), (10, "daily=100%")] {
        let r = call(&b);
        assert_eq!(r.status(), 200, "call {i}");
        assert_eq!(r.headers()["x-portcullis-budget-warning"], want, "call {i}");
    }
    assert_eq!(call(&b).status(), 402);
    let warnings = b.s.audit(&b.op, "action=budget.warning");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["metadata"]["window"], "daily");
    assert_eq!(warnings[0]["tenant_id"], b.tenant.as_str());
}

#[test]
fn a_restart_does_not_hand_the_budget_back() {
    let mut b = budgeted(0.03);
    assert_eq!(call(&b).status(), 200);
    assert_eq!(call(&b).status(), 200);
    b.s.restart();
    b.op = b.s.operator_token();
    assert_eq!(call(&b).status(), 200, "0.02 of 0.03 was spent before the restart");
    assert_eq!(call(&b).status(), 402);
    assert_eq!(spent_nanos(&b, 3 * CALL_NANOS), 3 * CALL_NANOS);
}

#[test]
fn budgets_are_validated_and_unpriced_calls_stop_at_an_exhausted_budget() {
    let b = budgeted(0.01);
    for bad in
        [json!({"budget_usd_per_day": -1}), json!({"budget_usd_per_day": 0}), json!({"budget_usd_per_month": 1e12})]
    {
        let r =
            b.s.request("PUT", &format!("/v1/tenants/{}/limits", b.tenant))
                .bearer_auth(&b.op)
                .json(&bad)
                .send()
                .unwrap();
        let (status, v) = problem(r);
        assert_eq!(status, 400, "{bad}: {v}");
    }
    assert_eq!(call(&b).status(), 200);
    // A model without a price costs nothing, but an exhausted budget refuses it too.
    let r =
        b.s.post("/llm/v1/chat/completions")
            .header("x-api-key", &b.key)
            .json(&json!({"model": "free-model", "max_tokens": 1, "messages": []}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 402);
}
