//! Agent sessions: events appended through the API and captured from `openai` routes (request
//! messages, plain and streamed answers reassembled with their tool calls, tokens and cost),
//! decisions about a session's tool requests naming the policy that decided, redaction and
//! capture settings per tenant, the inspector API (list by activity or cost, filters, pages,
//! statistics, timeline) and tenant isolation — on whichever shape the suite runs.
use crate::harness::{Server, eventually, problem};
use crate::upstream::Upstream;
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};
use std::time::Duration;

struct Tenant {
    id: String,
    key: String,
}

fn tenant(s: &Server, op: &str, name: &str) -> Tenant {
    let id = s.create_tenant(op, name, "pro");
    let (_, key) = s.create_key(op, &id, "service");
    Tenant { id, key }
}

/// `method path` as the operator acting in tenant `t`.
fn as_op(s: &Server, op: &str, t: &Tenant, method: &str, path: &str) -> RequestBuilder {
    s.request(method, path).bearer_auth(op).header("x-tenant-id", &t.id)
}

fn append(s: &Server, t: &Tenant, session: &str, body: Value) -> Value {
    let r = s.post(&format!("/v1/sessions/{session}/events")).header("x-api-key", &t.key).json(&body).send().unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 201, "{v}");
    v
}

fn get(s: &Server, op: &str, t: &Tenant, path: &str) -> Value {
    let r = as_op(s, op, t, "GET", path).send().unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn ids(list: &Value) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|i| i["session_id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn events_appended_through_the_api_make_sessions_with_statistics_pages_and_isolation() {
    let s = Server::start();
    let op = s.operator_token();
    let a = tenant(&s, &op, "sessions-a");
    let b = tenant(&s, &op, "sessions-b");

    // The contract: `{"type": "user", "message": …}` appends an event.
    let first = append(&s, &a, "conv-1", json!({"type": "user", "message": "What is the weather?"}));
    assert!(first["id"].as_str().unwrap().starts_with("evt_"), "{first}");
    assert_eq!((first["type"].as_str(), first["message"].as_str()), (Some("user"), Some("What is the weather?")));
    append(&s, &a, "conv-1", json!({"type": "assistant", "message": "Let me look."}));
    append(
        &s,
        &a,
        "conv-1",
        json!({"type": "tool", "tool_name": "weather", "tool_args": {"city": "Oslo"}, "metadata": {"step": 3}}),
    );
    append(&s, &a, "conv-1", json!({"type": "system", "message": "done"}));
    append(&s, &a, "conv-2", json!({"type": "user", "message": "other"}));
    append(&s, &a, "conv-3", json!({"type": "user", "message": "third"}));
    // Tenant B uses the same session id: a different session.
    append(&s, &b, "conv-1", json!({"type": "user", "message": "B's own words"}));

    let d = get(&s, &op, &a, "/v1/sessions/conv-1");
    let events = d["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user", "assistant", "tool", "system"], "oldest first: {d}");
    assert_eq!(events[2]["tool_args"], json!({"city": "Oslo"}));
    assert_eq!(events[2]["metadata"], json!({"step": 3}));
    assert!(events[0]["principal_id"].as_str().unwrap().starts_with("key:"), "{d}");
    let st = &d["statistics"];
    assert_eq!(
        [&st["total_events"], &st["user_messages"], &st["assistant_messages"], &st["tool_calls"], &st["denied"]],
        [&json!(4), &json!(1), &json!(1), &json!(1), &json!(0)],
        "{st}"
    );
    assert_eq!(st["first_event"], events[0]["created_at"]);
    assert_eq!(st["last_event"], events[3]["created_at"]);

    let tl = get(&s, &op, &a, "/v1/sessions/conv-1/timeline");
    let summaries: Vec<&str> =
        tl["timeline"].as_array().unwrap().iter().map(|i| i["summary"].as_str().unwrap()).collect();
    assert_eq!(summaries, ["User: What is the weather?", "Assistant: Let me look.", "Tool: weather", "System: done"]);

    // Pages of events and of sessions.
    let page = get(&s, &op, &a, "/v1/sessions/conv-1?limit=3");
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = get(&s, &op, &a, &format!("/v1/sessions/conv-1?limit=3&cursor={cursor}"));
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);
    assert_eq!(rest["events"][0]["type"], "system");
    assert!(rest["next_cursor"].is_null());
    let all = get(&s, &op, &a, "/v1/sessions");
    assert_eq!(ids(&all), ["conv-3", "conv-2", "conv-1"], "latest activity first: {all}");
    let p1 = get(&s, &op, &a, "/v1/sessions?limit=2");
    assert_eq!(ids(&p1), ["conv-3", "conv-2"]);
    let p2 = get(&s, &op, &a, &format!("/v1/sessions?limit=2&cursor={}", p1["next_cursor"].as_str().unwrap()));
    assert_eq!(ids(&p2), ["conv-1"]);
    assert!(p2["next_cursor"].is_null());
    assert_eq!(ids(&get(&s, &op, &a, "/v1/sessions?q=v-2")), ["conv-2"]);
    assert!(ids(&get(&s, &op, &a, "/v1/sessions?since=2999-01-01T00:00:00Z")).is_empty());

    // Isolation: B sees its own conv-1 only, and none of A's sessions.
    let bd = get(&s, &op, &b, "/v1/sessions/conv-1");
    assert_eq!(bd["statistics"]["total_events"], 1);
    assert_eq!(bd["events"][0]["message"], "B's own words");
    assert_eq!(ids(&get(&s, &op, &b, "/v1/sessions")), ["conv-1"]);
    let r = as_op(&s, &op, &b, "GET", "/v1/sessions/conv-2").send().unwrap();
    assert_eq!(problem(r).0, 404);
    let r = s.get("/v1/sessions/conv-2/timeline").header("x-api-key", &b.key).send().unwrap();
    assert_eq!(problem(r).0, 403, "a service key appends but does not read sessions");
    let r = s.get("/v1/sessions").header("x-api-key", &a.key).header("x-tenant-id", &b.id).send().unwrap();
    assert_eq!(problem(r).0, 403, "a key cannot act in another tenant");

    // Bad input is refused with a problem and stores nothing.
    for (path, body, needle) in [
        ("/v1/sessions/conv-1/events", json!({"type": "robot", "message": "x"}), "unknown event type"),
        ("/v1/sessions/conv-1/events", json!({"type": "user", "metadata": [1]}), "metadata"),
        ("/v1/sessions/conv-1/events", json!({"type": "user", "colour": "red"}), "unknown field"),
        ("/v1/sessions/bad%20id/events", json!({"type": "user", "message": "x"}), "session id"),
        ("/v1/sessions/conv-1/events", json!({"type": "tool", "tool_name": ""}), "tool_name"),
    ] {
        let r = s.post(path).header("x-api-key", &a.key).json(&body).send().unwrap();
        let (status, p) = problem(r);
        assert_eq!(status, 400, "{body}: {p}");
        assert!(p["detail"].as_str().unwrap().contains(needle), "{body}: {p}");
        assert!(p["request_id"].is_string());
    }
    for q in ["sort=price", "since=yesterday", "limit=0", "cursor=nope"] {
        let r = as_op(&s, &op, &a, "GET", &format!("/v1/sessions?{q}")).send().unwrap();
        assert_eq!(problem(r).0, 400, "{q}");
    }
    assert_eq!(get(&s, &op, &a, "/v1/sessions/conv-1")["statistics"]["total_events"], 4, "nothing was stored");

    // Reads are audited; appends too.
    let audit = s.audit(&op, &format!("tenant_id={}&action=session.read", a.id));
    assert!(!audit.is_empty(), "session reads are audited");
    let appended = s.audit(&op, &format!("tenant_id={}&action=session.event.append", a.id));
    assert_eq!(appended.len(), 6, "{appended:?}");
}

struct Llm {
    s: Server,
    _up: Upstream,
    op: String,
    t: Tenant,
}

fn llm() -> Llm {
    let up = Upstream::start();
    let config = up.route("/llm", "", "conversation.send", "kind = \"openai\"");
    let s = Server::start_with(&[], Some(&config));
    let op = s.operator_token();
    let t = tenant(&s, &op, "sessions-llm");
    // 0.5 USD per 1K input tokens, 1.5 USD per 1K output tokens.
    let r = as_op(&s, &op, &t, "POST", "/v1/model-profiles")
        .json(&json!({"role": "chat", "deployment_mode": "realtime", "model": "gpt-s", "base_url": up.url(),
            "temperature": 0.0, "input_price_per_1k": 0.5, "output_price_per_1k": 1.5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    Llm { s, _up: up, op, t }
}

fn chat(g: &Llm, session_header: Option<&str>, body: Value) -> String {
    let mut r = g.s.post("/llm/v1/chat/completions").header("x-api-key", &g.t.key);
    if let Some(id) = session_header {
        r = r.header("x-session-id", id);
    }
    let r = r.json(&body).send().unwrap();
    let status = r.status();
    let text = r.text().unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

/// The session once it holds `n` events (traffic is written within about a second).
fn session_with(g: &Llm, id: &str, n: u64) -> Value {
    let mut last = Value::Null;
    let found = eventually(Duration::from_secs(10), || {
        let r = as_op(&g.s, &g.op, &g.t, "GET", &format!("/v1/sessions/{id}")).send().unwrap();
        if r.status() != 200 {
            return false;
        }
        last = r.json().unwrap();
        last["statistics"]["total_events"].as_u64() >= Some(n)
    });
    assert!(found, "session {id} did not reach {n} events: {last}");
    last
}

#[test]
fn openai_traffic_is_captured_with_answers_tool_calls_tokens_cost_and_redaction() {
    let g = llm();
    let r = as_op(&g.s, &g.op, &g.t, "PUT", "/v1/session-settings")
        .json(&json!({"capture": "full", "redact_patterns": [r"\bACCT-\d{4}\b"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());

    // A plain exchange: system and user messages, then the answer. Prompt 8 + 36 characters.
    chat(
        &g,
        Some("conv-x"),
        json!({"model": "gpt-s", "max_tokens": 10, "reply": "Your balance is fine.",
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "ACCT-1234 and sk-abcdefghijklmnopqrstu"}]}),
    );
    // The follow-up repeats the history: only the new message is captured. The session id
    // comes from the body this time, and the streamed answer carries a tool call.
    chat(
        &g,
        None,
        json!({"model": "gpt-s", "max_tokens": 4, "stream": true, "metadata": {"session_id": "conv-x"},
            "tool_call": {"name": "shell", "arguments": {"cmd": "ls -la"}},
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"},
                         {"role": "assistant", "content": "Your balance is fine."},
                         {"role": "user", "content": "list files"}]}),
    );
    // A cheaper session.
    chat(
        &g,
        Some("conv-y"),
        json!({"model": "gpt-s", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
    );

    let d = session_with(&g, "conv-x", 6);
    let ev = d["events"].as_array().unwrap();
    let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["system", "user", "assistant", "user", "assistant", "tool"], "{d}");
    assert_eq!(ev[1]["message"], "[REDACTED] and [REDACTED]", "tenant pattern and built-in credential redaction");
    assert_eq!(ev[2]["message"], "Your balance is fine.");
    assert_eq!((ev[2]["input_tokens"].as_i64(), ev[2]["output_tokens"].as_i64()), (Some(8 + 38), Some(10)));
    assert_eq!(ev[2]["model"], "gpt-s");
    assert_eq!(ev[3]["message"], "list files", "only the messages after the last answer");
    assert_eq!(ev[4]["message"], "Hello!", "the streamed answer reassembled");
    assert_eq!(ev[5]["tool_name"], "shell");
    assert_eq!(ev[5]["tool_args"], json!({"cmd": "ls -la"}), "arguments streamed in pieces, parsed");
    let prompt2 = 8 + 1 + 21 + 10;
    let cost = |input: i64, output: i64| (input * 500_000 + output * 1_500_000) as f64 / 1e9;
    let want = cost(8 + 38, 10) + cost(prompt2, 4);
    let st = &d["statistics"];
    assert!((st["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12, "{st} vs {want}");
    assert_eq!(st["input_tokens"], 8 + 38 + prompt2);
    assert_eq!(st["tool_calls"], 1);
    assert!((ev[2]["cost_usd"].as_f64().unwrap() - cost(46, 10)).abs() < 1e-12);

    session_with(&g, "conv-y", 2);
    let by_cost = get(&g.s, &g.op, &g.t, "/v1/sessions?sort=cost");
    assert_eq!(ids(&by_cost), ["conv-x", "conv-y"], "{by_cost}");
    let items = by_cost["items"].as_array().unwrap();
    assert_eq!(items[0]["last_model"], "gpt-s");
    let page = get(&g.s, &g.op, &g.t, "/v1/sessions?sort=cost&limit=1");
    let next = get(
        &g.s,
        &g.op,
        &g.t,
        &format!("/v1/sessions?sort=cost&limit=1&cursor={}", page["next_cursor"].as_str().unwrap()),
    );
    assert_eq!(ids(&next), ["conv-y"]);

    // Metadata mode keeps events without their text; off captures nothing from traffic.
    let put = |capture: &str| {
        let r =
            as_op(&g.s, &g.op, &g.t, "PUT", "/v1/session-settings").json(&json!({"capture": capture})).send().unwrap();
        assert_eq!(r.status(), 200);
    };
    put("metadata");
    chat(
        &g,
        Some("conv-m"),
        json!({"model": "gpt-s", "max_tokens": 1, "messages": [{"role": "user", "content": "secret plan"}]}),
    );
    let m = session_with(&g, "conv-m", 2);
    assert!(m["events"].as_array().unwrap().iter().all(|e| e["message"].is_null()), "{m}");
    assert_eq!(m["events"][1]["output_tokens"], 1, "tokens are kept: {m}");
    put("off");
    chat(
        &g,
        Some("conv-off"),
        json!({"model": "gpt-s", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let r = as_op(&g.s, &g.op, &g.t, "GET", "/v1/sessions/conv-off").send().unwrap();
    assert_eq!(r.status(), 404, "capture off: nothing from traffic");
    assert_eq!(get(&g.s, &g.op, &g.t, "/v1/session-settings")["capture"], "off");

    // Settings are validated and audited.
    let r = as_op(&g.s, &g.op, &g.t, "PUT", "/v1/session-settings")
        .json(&json!({"capture": "full", "redact_patterns": ["(unclosed"]}))
        .send()
        .unwrap();
    let (status, p) = problem(r);
    assert_eq!(status, 400);
    assert!(p["detail"].as_str().unwrap().contains("(unclosed"), "{p}");
    let r = as_op(&g.s, &g.op, &g.t, "PUT", "/v1/session-settings").json(&json!({"capture": "all"})).send().unwrap();
    assert_eq!(problem(r).0, 400);
    assert_eq!(get(&g.s, &g.op, &g.t, "/v1/session-settings")["capture"], "off", "unchanged");
    let audit = g.s.audit(&g.op, &format!("tenant_id={}&action=session_settings.update", g.t.id));
    assert_eq!(audit.len(), 3);

    // A bad session id on the traffic path is a clear 400.
    let r =
        g.s.post("/llm/v1/chat/completions")
            .header("x-api-key", &g.t.key)
            .header("x-session-id", "no spaces")
            .json(&json!({"model": "gpt-s", "messages": []}))
            .send()
            .unwrap();
    assert_eq!(problem(r).0, 400);
}

#[test]
fn a_denied_tool_request_shows_the_policy_that_denied_it_in_the_session() {
    let s = Server::start();
    let op = s.operator_token();
    let t = tenant(&s, &op, "sessions-policy");
    let (_, admin_key) = s.create_key(&op, &t.id, "admin");
    let cedar = "forbid (principal, action == Portcullis::Action::\"tool.request\", resource == Portcullis::Tool::\"shell\")\n\
                 unless { principal.role == \"admin\" };";
    let r = s
        .post("/v1/policies")
        .header("x-api-key", &admin_key)
        .json(&json!({"name": "no-shell", "cedar": cedar}))
        .send()
        .unwrap();
    let status = r.status();
    let policy: Value = r.json().unwrap();
    assert_eq!(status, 201, "{policy}");
    let pid = policy["id"].as_str().unwrap().to_owned();

    let ask = |tool: &str, via_header: bool| {
        let mut body = json!({"action": "tool.request", "resource": {"type": "tool", "id": tool},
            "context": {"tool_args": {"cmd": "rm -rf /", "token": "sk-abcdefghijklmnopqrstuv"}}});
        let mut r = s.post("/v1/authorize").header("x-api-key", &t.key);
        if via_header {
            r = r.header("x-session-id", "agent-7");
        } else {
            body["context"]["session_id"] = json!("agent-7");
        }
        let v: Value = r.json(&body).send().unwrap().json().unwrap();
        v["decision"].as_str().unwrap().to_owned()
    };
    assert_eq!(ask("shell", true), "deny");
    assert_eq!(ask("search", false), "allow");
    append(&s, &t, "agent-7", json!({"type": "user", "message": "clean up the disk"}));

    let mut d = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            d = get(&s, &op, &t, "/v1/sessions/agent-7");
            d["statistics"]["total_events"] == 3
        }),
        "{d}"
    );
    let tools: Vec<&Value> = d["events"].as_array().unwrap().iter().filter(|e| e["type"] == "tool").collect();
    assert_eq!(tools.len(), 2, "{d}");
    let denied = tools.iter().find(|e| e["tool_name"] == "shell").unwrap();
    assert_eq!(denied["decision"], json!({"result": "deny", "action": "tool.request", "policies": [pid]}));
    assert_eq!(denied["tool_args"], json!({"cmd": "rm -rf /", "token": "[REDACTED]"}));
    // The audit record of the decision does not keep the credential either.
    let audited = s.audit(&op, &format!("tenant_id={}&action=tool.request&result=denied", t.id));
    assert_eq!(audited[0]["metadata"]["context"]["tool_args"]["token"], "[REDACTED]", "{:?}", audited[0]);
    let allowed = tools.iter().find(|e| e["tool_name"] == "search").unwrap();
    assert_eq!(allowed["decision"]["result"], "allow");
    assert_eq!(d["statistics"]["denied"], 1);
    let tl = get(&s, &op, &t, "/v1/sessions/agent-7/timeline");
    let line = tl["timeline"].as_array().unwrap().iter().find(|i| i["tool_name"] == "shell").unwrap().clone();
    assert_eq!(line["summary"], format!("Tool: shell — denied by {pid}"));
    assert_eq!(get(&s, &op, &t, "/v1/sessions")["items"][0]["denied"], 1);
}
