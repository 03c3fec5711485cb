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
