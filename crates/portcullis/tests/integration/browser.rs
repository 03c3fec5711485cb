//! The operator UI in a real headless Chromium (Debian's `/usr/bin/chromium`, driven by
//! `playwright-core` from `tests/browser/`): this module starts the real server, sends real
//! traffic through an `openai` route and the decision API, stores XSS payloads wherever users
//! write text, and hands the facts to `tests/browser/ui.mjs`, which logs in, walks every page,
//! creates and revokes a key, finds the most expensive session of today and the policy that
//! denied its tool call, checks the payloads stay inert, the CSP blocks injected script and a
//! cross-site form post is refused — taking a screenshot of each page (`target/ui-screenshots/`).
use crate::harness::{Server, eventually, uuid_like};
use crate::upstream::Upstream;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const XSS: &[&str] = &[
    "<img src=x onerror=alert('img')>",
    "<svg onload=alert('svg')>",
    "\"><script>alert('script')</script>",
    "javascript:alert('link')",
];

const SHELL_ADMIN_ONLY: &str = "forbid (\n  principal,\n  action == Portcullis::Action::\"tool.request\",\n  \
                                resource == Portcullis::Tool::\"shell\"\n) unless { principal.role == \"admin\" };\n";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `npm ci` when the test's node modules are not installed yet (the README's test command
/// installs them; this covers a bare `cargo test`).
fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let out = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("npm ci in {} failed: {}", dir.display(), String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("npm is needed for the browser test (scripts/test.sh installs it): {e}"),
    }
}

fn ok(r: reqwest::blocking::Response, what: &str) -> Value {
    let status = r.status();
    let v: Value = r.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "{what}: {status} {v}");
    v
}

#[test]
fn the_operator_ui_works_in_a_real_browser_with_live_data() {
    if crate::harness::embedded_only("one shape is enough for the pages; the API tests cover both") {
        return;
    }
    let chromium = std::env::var("PORTCULLIS_CHROMIUM").unwrap_or_else(|_| String::from("/usr/bin/chromium"));
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (scripts/test.sh does) or set PORTCULLIS_CHROMIUM"
    );
    let dir = browser_dir();
    ensure_node_modules(&dir);

    let up = Upstream::start();
    let s = Server::start_with(&[], Some(&up.route("/llm", "", "conversation.send", "kind = \"openai\"")));
    let op = s.operator_token();
    let tenant_name = format!("Acme {}", XSS[0]);
    let r = s.post("/v1/tenants").bearer_auth(&op).json(&json!({"name": tenant_name, "tier": "pro"})).send().unwrap();
    let tenant = ok(r, "tenant")["id"].as_str().unwrap().to_owned();
    let (_, service_key) = s.create_key(&op, &tenant, "service");
    let (_, admin_key) = s.create_key(&op, &tenant, "admin");
    let (_, admin_email, admin_password) = s.create_user(&op, &tenant, "admin");
    let in_tenant = |method: &str, path: &str| s.request(method, path).bearer_auth(&op).header("x-tenant-id", &tenant);

    ok(
        in_tenant("POST", "/v1/keys").json(&json!({"name": XSS[1], "role": "viewer"})).send().unwrap(),
        "a key named with a payload",
    );
    let profile = ok(
        in_tenant("POST", "/v1/model-profiles")
            .json(&json!({"role": "chat", "deployment_mode": "realtime", "model": "gpt-ui", "base_url": up.url(),
                "temperature": 0.2, "input_price_per_1k": 0.5, "output_price_per_1k": 1.5}))
            .send()
            .unwrap(),
        "model profile",
    );
    ok(
        s.request("PUT", &format!("/v1/tenants/{tenant}/limits"))
            .bearer_auth(&op)
            .json(&json!({"budget_usd_per_day": 5.0, "budget_usd_per_month": 50.0}))
            .send()
            .unwrap(),
        "budgets",
    );
    let policy = ok(
        s.post("/v1/policies")
            .header("x-api-key", &admin_key)
            .json(&json!({"name": "shell-admins-only", "description": XSS[2], "cedar": SHELL_ADMIN_ONLY}))
            .send()
            .unwrap(),
        "policy",
    );

    // Live traffic: an expensive session whose agent then asks for the shell and is denied, and
    // a cheaper one.
    let expensive = format!("checkout-{}", &uuid_like()[..8]);
    let chat = |session: &str, max_tokens: u64, text: &str| {
        let r = s
            .post("/llm/v1/chat/completions")
            .header("x-api-key", &service_key)
            .header("x-session-id", session)
            .json(&json!({"model": "gpt-ui", "max_tokens": max_tokens, "reply": format!("Sure: {text}"),
                "messages": [{"role": "system", "content": "You are a shopping agent."},
                             {"role": "user", "content": text}]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    };
    chat(&expensive, 900, "Find the cheapest flight to Oslo and book it");
    chat("triage-2", 40, "Summarise yesterday's tickets");
    chat("triage-3", 10, "hello");
    let denied = ok(
        s.post("/v1/authorize")
            .header("x-api-key", &service_key)
            .header("x-session-id", &expensive)
            .json(&json!({"action": "tool.request", "resource": {"type": "tool", "id": "shell"},
                "context": {"tool_args": {"cmd": "curl http://pay.example/book"}}}))
            .send()
            .unwrap(),
        "authorize",
    );
    assert_eq!(denied["decision"], "deny", "{denied}");

    // A session whose every text field carries the payloads.
    let xss_session = "xss-probe";
    for p in XSS {
        for body in [
            json!({"type": "user", "message": p}),
            json!({"type": "tool", "tool_name": p, "tool_args": {"q": p, "link": p}, "metadata": {"note": p}}),
            json!({"type": "assistant", "message": format!("see {p}"), "metadata": {"href": p}}),
        ] {
            ok(
                s.post(&format!("/v1/sessions/{xss_session}/events"))
                    .header("x-api-key", &service_key)
                    .json(&body)
                    .send()
                    .unwrap(),
                "xss event",
            );
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = in_tenant("GET", "/v1/sessions?sort=cost&limit=1").send().unwrap();
            let v: Value = r.json().unwrap();
            v["items"][0]["session_id"] == expensive.as_str() && v["items"][0]["denied"] == 1
        }),
        "the traffic reached the session store"
    );

    let fixture = json!({
        "base_url": s.url(""),
        "operator": {"email": "admin@localhost", "password": s.bootstrap_password.clone().unwrap()},
        "tenant": {"id": tenant, "name": tenant_name},
        "tenant_admin": {"email": admin_email, "password": admin_password},
        "expensive_session": expensive,
        "denying_policy": {"id": policy["id"], "name": policy["name"]},
        "xss_session": xss_session,
        "xss_payloads": XSS,
        "model_profile_id": profile["id"],
    });
    let fixture_path = s.data_dir().join("ui-fixture.json");
    std::fs::write(&fixture_path, serde_json::to_vec_pretty(&fixture).unwrap()).unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    let out = Command::new("node")
        .arg("ui.mjs")
        .current_dir(&dir)
        .env("PORTCULLIS_UI_FIXTURE", &fixture_path)
        .env("PORTCULLIS_UI_SCREENSHOTS", &shots)
        .env("PORTCULLIS_CHROMIUM", &chromium)
        .output()
        .expect("node runs (scripts/test.sh installs nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser test failed:\n{stdout}\n{stderr}\nserver log:\n{}", s.log());
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    for shot in ["login", "tenants", "keys", "sessions", "timeline", "models", "audit", "policies", "usage"] {
        let found = std::fs::read_dir(&shots).unwrap().filter_map(Result::ok).any(|e| {
            e.file_name().to_string_lossy().contains(shot) && e.path().extension().is_some_and(|x| x == "png")
        });
        assert!(found, "a screenshot of `{shot}` in {}", shots.display());
    }
}
