//! The CLI as scripts use it: `--json` output, keys printed once, human errors that name the
//! problem and change nothing.
use crate::harness::Server;
use serde_json::Value;

#[test]
fn tenant_and_key_commands_are_scriptable_and_their_keys_work_over_http() {
    let s = Server::start();
    let t = s.cli_json(&["tenant", "create", "acme", "--tier", "pro"]);
    let tid = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["tier"], "pro");
    let list = s.cli_json(&["tenant", "list"]);
    assert!(list.as_array().unwrap().iter().any(|x| x["id"] == tid.as_str()));
    let k = s.cli_json(&["key", "create", "--tenant", &tid, "--role", "admin", "--name", "deploy", "--expires", "30d"]);
    let key = k["key"].as_str().unwrap().to_owned();
    assert!(k["id"].is_string() && key.starts_with("pc_"));
    let r = s.get("/v1/keys").header("x-api-key", &key).send().unwrap();
    assert_eq!(r.status(), 200);
    let listed = s.cli_json(&["key", "list", "--tenant", &tid]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0].get("key").is_none());
    // Plain output of `key create` is the key alone, for `KEY=$(portcullis key create ...)`.
    let out = s.cli(&["key", "create", "--tenant", &tid, "--role", "viewer"]);
    let plain = String::from_utf8(out.stdout).unwrap();
    assert!(plain.trim().starts_with("pc_") && plain.trim().lines().count() == 1);
    let rotated = s.cli_json(&["key", "rotate", k["id"].as_str().unwrap(), "--grace", "1h"]);
    assert_eq!(rotated["rotated_from"], k["id"]);
    let events = s.cli_json(&["audit", "query", "--action", "key.create"]);
    let e = &events.as_array().unwrap()[0];
    assert_eq!(e["writer_id"], "cli");
    assert_eq!(e["user_id"], "cli:tester");
    assert_eq!(e["tenant_id"], tid.as_str());
}

#[test]
fn bad_input_names_the_problem_and_changes_nothing() {
    let s = Server::start();
    let before = s.cli_json(&["tenant", "list"]).as_array().unwrap().len();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["tenant", "create", "x", "--tier", "platinum"], "platinum"),
        (vec!["key", "create", "--tenant", "not-a-uuid", "--role", "admin"], "not-a-uuid"),
        (vec!["key", "create", "--tenant", "01900000-0000-7000-8000-000000000000", "--role", "admin"], "no tenant"),
        (vec!["key", "revoke", "01900000-0000-7000-8000-000000000000"], "no key"),
        (vec!["tenant", "suspend", "01900000-0000-7000-8000-000000000000"], "no tenant"),
        (vec!["audit", "query", "--since", "yesterday"], "yesterday"),
    ];
    for (args, needle) in cases {
        let out = s.cli(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: error `{err}` should name `{needle}`");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    let t = s.cli_json(&["tenant", "create", "ok"]);
    let out = s.cli(&["key", "create", "--tenant", t["id"].as_str().unwrap(), "--role", "superuser"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("superuser"));
    assert_eq!(s.cli_json(&["key", "list", "--tenant", t["id"].as_str().unwrap()]).as_array().unwrap().len(), 0);
    assert_eq!(s.cli_json(&["tenant", "list"]).as_array().unwrap().len(), before + 1);
}

#[test]
fn operators_created_by_the_cli_can_log_in_and_migrate_is_idempotent() {
    let s = Server::start();
    let u: Value = s.cli_json(&["user", "create", "--email", "ops@example.test", "--operator"]);
    let pw = u["password"].as_str().unwrap();
    assert_eq!(u["role"], "operator");
    let token = s.login("ops@example.test", pw);
    let who: Value = s.get("/v1/auth/whoami").bearer_auth(&token).send().unwrap().json().unwrap();
    assert_eq!(who["kind"], "operator");
    assert!(s.cli_migrate().status.success());
    assert!(s.cli_migrate().status.success());
    let v = s.cli(&["audit", "verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn policy_commands_validate_with_positions_and_the_server_enforces_what_they_save() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(&bad, "permit (principal, action, resource)\n  when { principal.rol == \"admin\" };\n").unwrap();
    let good = dir.path().join("shell.cedar");
    std::fs::write(
        &good,
        "forbid (principal, action == Portcullis::Action::\"tool.request\", resource == Portcullis::Tool::\"shell\")\n  unless { principal.role == \"admin\" };\n",
    )
    .unwrap();
    let (bad, good) = (bad.to_str().unwrap(), good.to_str().unwrap());

    let out = s.cli(&["policy", "check", bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{bad}:2:10:")) && err.contains("did you mean `role`?"), "{err}");
    assert!(s.cli(&["policy", "check", good]).status.success());

    let t = s.cli_json(&["tenant", "create", "acme"])["id"].as_str().unwrap().to_owned();
    let out = s.cli(&["policy", "create", "--tenant", &t, "--name", "bad", bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":2:10:"));
    let p = s.cli_json(&["policy", "create", "--tenant", &t, "--name", "shell is for admins", good]);
    let id = p["id"].as_str().unwrap().to_owned();
    assert_eq!(
        s.cli_json(&["policy", "list", "--tenant", &t]).as_array().unwrap().len(),
        1,
        "the bad one was not saved"
    );

    // The running server picks the CLI's change up from the change feed and enforces it.
    let (_, editor) = s.create_key(&s.operator_token(), &t, "editor");
    let ask = serde_json::json!({"action": "tool.request", "resource": {"type": "tool", "id": "shell"}});
    let denied = crate::harness::eventually(std::time::Duration::from_secs(10), || {
        let v: Value = s.post("/v1/authorize").header("x-api-key", &editor).json(&ask).send().unwrap().json().unwrap();
        v["decision"] == "deny" && v["reasons"] == serde_json::json!([id])
    });
    assert!(denied, "the editor's shell request is denied by {id}");

    let out = s.cli_json(&["policy", "update", "--tenant", &t, &id, "--disable"]);
    assert_eq!(out["version"], 2);
    let versions = s.cli_json(&["policy", "versions", "--tenant", &t, &id]);
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert!(s.cli(&["policy", "delete", "--tenant", &t, &id]).status.success());
    assert!(!s.cli(&["policy", "get", "--tenant", &t, &id]).status.success());
    let events = s.cli_json(&["audit", "query", "--action", "policy.create"]);
    assert_eq!(events.as_array().unwrap().len(), 1, "one create, none for the refused one");
}

#[test]
fn usage_reads_what_the_server_wrote_as_the_api_reports_it() {
    let up = crate::upstream::Upstream::start();
    let config = up.route("/llm", "", "conversation.send", "kind = \"openai\"");
    let s = Server::start_with(&[], Some(&config));
    let op = s.operator_token();
    let t = s.create_tenant(&op, "llm", "pro");
    let (_, key) = s.create_key(&op, &t, "service");
    let r = s
        .post("/v1/model-profiles")
        .bearer_auth(&op)
        .header("x-tenant-id", &t)
        .json(&serde_json::json!({
            "role": "chat", "deployment_mode": "realtime", "model": "gpt-test", "base_url": up.url(),
            "temperature": 0.2, "input_price_per_1k": 0.5, "output_price_per_1k": 1.5,
        }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    // The scripted upstream answers as many prompt tokens as the content has characters, and
    // `max_tokens` completion tokens.
    for (model, content, max_tokens) in [("gpt-test", "hello world", 20), ("gpt-test", "abc", 5), ("unpriced", "xy", 3)]
    {
        let body = serde_json::json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]});
        let r = s.post("/llm/v1/chat/completions").header("x-api-key", &key).json(&body).send().unwrap();
        assert_eq!(r.status(), 200);
    }

    // Another process: it sees what the server has written (every second), and flushes nothing.
    let mut cli = Value::Null;
    let written = crate::harness::eventually(std::time::Duration::from_secs(5), || {
        cli = s.cli_json(&["usage", "--tenant", &t, "--group-by", "model"]);
        cli["totals"]["requests"] == 3
    });
    assert!(written, "the server's usage reached the store: {cli}");
    let priced = cli["items"].as_array().unwrap().iter().find(|i| i["model"] == "gpt-test").cloned().unwrap();
    assert_eq!((priced["input_tokens"].as_i64(), priced["output_tokens"].as_i64()), (Some(14), Some(25)), "{cli}");
    assert_eq!(priced["cost_nanos"], 14 * 500_000 + 25 * 1_500_000);
    let api = |query: &str| -> Value {
        let r = s.get(&format!("/v1/usage?{query}")).bearer_auth(&op).header("x-tenant-id", &t).send().unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    };
    assert_eq!(cli, api("group_by=model"), "the same report, field for field");
    assert_eq!(
        s.cli_json(&["usage", "--tenant", &t, "--group-by", "principal,route", "--model", "gpt-test"]),
        api("group_by=principal,route&model=gpt-test")
    );
    let today = cli["to"].as_str().unwrap().to_owned();
    assert_eq!(
        s.cli_json(&["usage", "--tenant", &t, "--from", &today, "--to", &today, "--group-by", ""]),
        api(&format!("from={today}&to={today}&group_by="))
    );
    let out = s.cli(&["usage", "--tenant", &t, "--group-by", "model"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("gpt-test") && text.contains("unpriced") && text.contains("$0.0445"), "{text}");
    assert!(text.lines().last().unwrap().starts_with("TOTAL"), "{text}");

    for (args, needle) in [
        (vec!["--from", "2026-13-01"], "2026-13-01"),
        (vec!["--to", "yesterday"], "yesterday"),
        (vec!["--group-by", "colour"], "colour"),
        (vec!["--from", "2026-12-02", "--to", "2026-12-01"], "after"),
        (vec!["--from", "2024-01-01", "--to", "2026-01-01"], "366 days"),
    ] {
        let mut all = vec!["usage", "--tenant", t.as_str()];
        all.extend_from_slice(&args);
        let out = s.cli(&all);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: `{err}` should name `{needle}`");
    }
    for (tenant, needle) in [("not-a-uuid", "not-a-uuid"), ("01900000-0000-7000-8000-000000000000", "no tenant")] {
        let out = s.cli(&["usage", "--tenant", tenant]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle), "{tenant}");
    }
}
