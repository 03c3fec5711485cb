//! Usage through `openai`-kind routes: tokens read from plain and streamed answers (the gateway
//! asks a streaming upstream for usage when the client did not, and takes that chunk out again),
//! costs priced from the tenant's model profiles, the tier's token cap per request enforced
//! before the upstream, and `GET /v1/usage` grouping, filtering and isolation.
use crate::harness::{Server, problem};
use crate::upstream::Upstream;
use serde_json::{Value, json};

struct Llm {
    s: Server,
    up: Upstream,
    op: String,
    tenant: String,
    key_id: String,
    key: String,
}

fn llm(tier: &str) -> Llm {
    let up = Upstream::start();
    let config = [
        up.route("/llm", "", "conversation.send", "kind = \"openai\""),
        up.route("/plain", "", "conversation.send", ""),
    ]
    .join("\n");
    let s = Server::start_with(&[], Some(&config));
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "llm", tier);
    let (key_id, key) = s.create_key(&op, &tenant, "service");
    Llm { s, up, op, tenant, key_id, key }
}

fn chat(g: &Llm, body: Value) -> (u16, String) {
    let r = g.s.post("/llm/v1/chat/completions").header("x-api-key", &g.key).json(&body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.text().unwrap())
}

fn usage(g: &Llm, query: &str) -> Value {
    let r = g.s.get(&format!("/v1/usage?{query}")).bearer_auth(&g.op).header("x-tenant-id", &g.tenant).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// 0.5 USD per 1K input tokens (500 000 nano-USD per token) and 1.5 USD per 1K output tokens.
fn price_model(g: &Llm, model: &str) {
    let r =
        g.s.post("/v1/model-profiles")
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .json(&json!({
                "role": "chat", "deployment_mode": "realtime", "model": model, "base_url": g.up.url(),
                "temperature": 0.2, "input_price_per_1k": 0.5, "output_price_per_1k": 1.5,
            }))
            .send()
            .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
}

#[test]
fn tokens_and_cost_are_exact_for_plain_and_streamed_answers() {
    let g = llm("pro");
    price_model(&g, "gpt-test");
    // Plain: 11 prompt characters, 20 completion tokens.
    let (status, text) = chat(
        &g,
        json!({"model": "gpt-test", "max_tokens": 20, "messages": [{"role": "user", "content": "hello world"}]}),
    );
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 11);

    // Streamed, the client did not ask for usage: the upstream is asked, the client never sees it.
    let (status, text) = chat(
        &g,
        json!({"model": "gpt-test", "max_tokens": 5, "stream": true, "messages": [{"role": "user", "content": "abc"}]}),
    );
    assert_eq!(status, 200);
    assert!(text.contains("Hel") && text.contains("\"!\"") && text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("prompt_tokens"), "the gateway's usage chunk was taken out: {text}");
    let sent: Vec<Value> =
        g.up.seen_at("/chat/completions").iter().map(|s| serde_json::from_str(&s.body_text).unwrap()).collect();
    assert_eq!(sent[1]["stream_options"]["include_usage"], true, "the upstream was asked for usage");
    assert_eq!(sent[0].get("stream_options"), None, "a plain request is forwarded as sent");

    // Streamed, the client asked: it gets the usage chunk.
    let (_, text) = chat(
        &g,
        json!({"model": "gpt-test", "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "abcd"}]}),
    );
    assert!(text.contains("\"prompt_tokens\":4"), "{text}");

    // A model without a profile is counted, at no cost.
    chat(&g, json!({"model": "unpriced", "max_tokens": 3, "messages": [{"role": "user", "content": "xy"}]}));

    let report = usage(&g, "group_by=model");
    let items = report["items"].as_array().unwrap();
    let priced = items.iter().find(|i| i["model"] == "gpt-test").unwrap();
    assert_eq!(priced["requests"], 3, "{report}");
    assert_eq!(priced["status_2xx"], 3);
    assert_eq!(priced["input_tokens"], 11 + 3 + 4);
    assert_eq!(priced["output_tokens"], 20 + 5 + 6);
    // 18 × 500 000 + 31 × 1 500 000 nano-USD.
    assert_eq!(priced["cost_nanos"], 18 * 500_000 + 31 * 1_500_000, "{priced}");
    assert!((priced["cost_usd"].as_f64().unwrap() - 0.0555).abs() < 1e-12);
    let unpriced = items.iter().find(|i| i["model"] == "unpriced").unwrap();
    assert_eq!((unpriced["input_tokens"].as_i64(), unpriced["cost_nanos"].as_i64()), (Some(2), Some(0)));
    assert_eq!(report["totals"]["requests"], 4);

    let by_caller = usage(&g, "group_by=principal,model&model=gpt-test");
    let items = by_caller["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{by_caller}");
    assert_eq!(items[0]["principal"], format!("key:{}", g.key_id));
    assert!(items[0]["avg_latency_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn a_request_over_the_tiers_token_cap_never_reaches_the_upstream() {
    let g = llm("free");
    let (status, text) = chat(&g, json!({"model": "m", "max_tokens": 5000, "messages": []}));
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["detail"].as_str().unwrap().contains("4096"), "the limit is named: {v}");
    assert!(v["request_id"].is_string());
    assert_eq!(g.up.count(), 0);
    let events = g.s.audit(&g.op, "action=conversation.send&result=denied");
    assert!(events.iter().any(|e| e["reason"] == "limit:max_tokens" && e["metadata"]["limit"] == 4096), "{events:?}");
    // At the cap is fine; `max_completion_tokens` counts the same.
    assert_eq!(chat(&g, json!({"model": "m", "max_tokens": 4096, "messages": []})).0, 200);
    assert_eq!(chat(&g, json!({"model": "m", "max_completion_tokens": 4097, "messages": []})).0, 400);
    assert_eq!(g.up.count(), 1);
}

#[test]
fn usage_counts_every_route_by_status_and_stays_in_its_tenant() {
    let g = llm("pro");
    for path in ["/plain/ok", "/plain/status/404", "/plain/status/503"] {
        g.s.get(path).header("x-api-key", &g.key).send().unwrap();
    }
    let report = usage(&g, "group_by=route");
    let plain = report["items"].as_array().unwrap().iter().find(|i| i["route"] == "/plain").cloned().unwrap();
    assert_eq!(
        (
            plain["requests"].as_i64(),
            plain["status_2xx"].as_i64(),
            plain["status_4xx"].as_i64(),
            plain["status_5xx"].as_i64()
        ),
        (Some(3), Some(1), Some(1), Some(1)),
        "{report}"
    );
    // Another tenant's admin sees none of it, and cannot ask for it.
    let other = g.s.create_tenant(&g.op, "other", "pro");
    let (_, other_admin) = g.s.create_key(&g.op, &other, "admin");
    let r = g.s.get("/v1/usage").header("x-api-key", &other_admin).send().unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(v["totals"]["requests"], 0, "{v}");
    let r = g.s.get("/v1/usage").header("x-api-key", &other_admin).header("x-tenant-id", &g.tenant).send().unwrap();
    assert_eq!(r.status(), 403);
    // The service key holds no config.read: usage is for the tenant's people.
    assert_eq!(g.s.get("/v1/usage").header("x-api-key", &g.key).send().unwrap().status(), 403);
}

#[test]
fn bad_usage_queries_name_the_problem() {
    let g = llm("pro");
    for q in [
        "from=2026-13-01",
        "to=yesterday",
        "group_by=colour",
        "from=2026-12-02&to=2026-12-01",
        "from=2024-01-01&to=2026-01-01",
        "nope=1",
    ] {
        let r = g.s.get(&format!("/v1/usage?{q}")).bearer_auth(&g.op).header("x-tenant-id", &g.tenant).send().unwrap();
        let (status, v) = problem(r);
        assert_eq!(status, 400, "{q}: {v}");
        assert!(v["request_id"].is_string());
    }
}

#[test]
fn model_metrics_match_the_traffic_sent() {
    let g = llm("pro");
    price_model(&g, "timed");
    let profile: Value =
        g.s.get("/v1/model-profiles")
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .send()
            .unwrap()
            .json()
            .unwrap();
    let id = profile["items"][0]["id"].as_str().unwrap().to_owned();
    // 19 answers after 10 ms, one after 300 ms, two upstream failures; each prompt 4 characters,
    // each completion 5 tokens.
    let mut client_ms = Vec::new();
    let mut send = |delay: u64, fail: bool| {
        let started = std::time::Instant::now();
        let (status, _) = chat(
            &g,
            json!({"model": "timed", "max_tokens": 5, "delay_ms": delay, "fail": fail,
                   "messages": [{"role": "user", "content": "abcd"}]}),
        );
        client_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        status
    };
    for _ in 0..19 {
        assert_eq!(send(10, false), 200);
    }
    assert_eq!(send(300, false), 200);
    assert_eq!(send(0, true), 500);
    assert_eq!(send(0, true), 500);

    let m: Value =
        g.s.get(&format!("/v1/model-profiles/{id}/metrics?window=1h"))
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .send()
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(m["model"], "timed");
    assert_eq!(
        (m["requests"].as_i64(), m["status_2xx"].as_i64(), m["status_5xx"].as_i64()),
        (Some(22), Some(20), Some(2)),
        "{m}"
    );
    assert!((m["success_rate"].as_f64().unwrap() - 20.0 / 22.0).abs() < 1e-9);
    // Tokens and cost of the 20 answers: 80 prompt and 100 completion tokens at 0.5 / 1.5 USD per 1K.
    assert_eq!((m["input_tokens"].as_i64(), m["output_tokens"].as_i64()), (Some(80), Some(100)));
    assert_eq!(m["cost_nanos"], 80 * 500_000 + 100 * 1_500_000);
    let per_1k = m["cost_per_1k_tokens_usd"].as_f64().unwrap();
    assert!((per_1k - (0.04 + 0.15) / 180.0 * 1000.0).abs() < 1e-9, "{per_1k}");
    // Percentiles: the gateway's latency of a request is at least the upstream's delay and at most
    // what the client measured; the histogram reports at most 10 % above the true value.
    let quantile = |q: f64| {
        let mut v = client_ms.clone();
        v.sort_by(f64::total_cmp);
        v[((q * v.len() as f64).ceil() as usize).max(1) - 1]
    };
    let p = |name: &str| m["latency_ms"][name].as_f64().unwrap();
    assert!(p("p50") <= quantile(0.5) * 1.1 + 0.01, "{m} vs client {client_ms:?}");
    assert!(p("p95") <= quantile(0.95) * 1.1 + 0.01, "{m} vs client {client_ms:?}");
    assert!(p("p99") >= 300.0 && p("p99") <= quantile(0.99) * 1.1 + 0.01, "{m} vs client {client_ms:?}");
    assert!(p("p50") <= p("p95") && p("p95") <= p("p99"));
    let series = m["series"].as_array().unwrap();
    assert_eq!(series.len(), 60);
    assert_eq!(series.iter().map(|s| s["requests"].as_i64().unwrap()).sum::<i64>(), 22);

    // Bad window, and another tenant, are refused.
    let (status, _) = problem(
        g.s.get(&format!("/v1/model-profiles/{id}/metrics?window=2h"))
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 400);
    let other = g.s.create_tenant(&g.op, "other", "pro");
    let (_, other_admin) = g.s.create_key(&g.op, &other, "admin");
    let r = g.s.get(&format!("/v1/model-profiles/{id}/metrics")).header("x-api-key", &other_admin).send().unwrap();
    assert_eq!(r.status(), 404);
}

/// A client that leaves after the head of a JSON answer does not make it free: the gateway reads
/// the rest of the answer and counts its tokens (the client's own connection, and the upstream
/// connection that belonged to it, are gone by then).
#[test]
fn a_json_answer_the_client_left_is_still_counted() {
    let g = llm("pro");
    ask_and_leave_after_the_head(&g, "left", 300);
    let mut last = Value::Null;
    let counted = crate::harness::eventually(std::time::Duration::from_secs(10), || {
        last = usage(&g, "group_by=model&model=left");
        last["totals"]["output_tokens"] == 9
    });
    assert!(counted, "the answer's tokens are counted: {last}");
    assert_eq!(last["totals"]["input_tokens"], 3, "{last}");
    assert_eq!(last["totals"]["requests"], 1, "{last}");
}

#[test]
fn a_json_answer_the_client_left_is_counted_when_the_server_stops_meanwhile() {
    let mut g = llm("pro");
    ask_and_leave_after_the_head(&g, "left-at-stop", 1500);
    // Let the server see the client go, then stop it while the answer's body is still on its
    // way: the stop waits for that read (within its grace) before the last usage is written.
    std::thread::sleep(std::time::Duration::from_millis(200));
    g.s.restart();
    g.op = g.s.operator_token();
    let last = usage(&g, "group_by=model&model=left-at-stop");
    assert_eq!(last["totals"]["requests"], 1, "{last}");
    assert_eq!(last["totals"]["output_tokens"], 9, "the answer's tokens are counted: {last}");
    assert_eq!(last["totals"]["input_tokens"], 3, "{last}");
}

/// Sends a chat request for `model` whose answer's body the upstream holds `delay_ms` behind its
/// head (9 completion tokens, 3 prompt ones), reads the head, and closes the connection.
fn ask_and_leave_after_the_head(g: &Llm, model: &str, delay_ms: u64) {
    use std::io::{Read, Write};
    let body = json!({"model": model, "max_tokens": 9, "body_delay_ms": delay_ms,
                      "messages": [{"role": "user", "content": "abc"}]})
    .to_string();
    let addr = g.s.base.trim_start_matches("http://").to_owned();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /llm/v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        g.key,
        body.len()
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "the head arrives: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
}
