//! Tenant Cedar policies end to end: simulated against recorded traffic before they are
//! published, validated with positions when written, applied to `/v1/authorize`, the admin API
//! and proxied requests (forbid wins, an erroring policy denies, a disabled one takes no part),
//! kept per tenant, written by admins only, versioned with diffs, and tried out by dry runs that
//! consume nothing.
use crate::harness::{Server, problem, uuid_like};
use crate::proxy::gateway_with;
use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{Value, json};

/// The issue's example: only admins may ask for the shell.
const SHELL_ADMIN_ONLY: &str = r#"// Only admins may ask for the shell.
forbid (
  principal,
  action == Portcullis::Action::"tool.request",
  resource == Portcullis::Tool::"shell"
) unless { principal.role == "admin" };
"#;

/// `method path` with the API key in `x-api-key`.
fn with_key(s: &Server, method: &str, path: &str, key: &str) -> RequestBuilder {
    s.request(method, path).header("x-api-key", key)
}

/// `POST /v1/policies` with an API key.
fn create(s: &Server, key: &str, name: &str, cedar: &str) -> Response {
    with_key(s, "POST", "/v1/policies", key).json(&json!({"name": name, "cedar": cedar})).send().unwrap()
}

/// Creates a policy that must be accepted; returns what the API answered.
fn created(s: &Server, key: &str, name: &str, cedar: &str) -> Value {
    let r = create(s, key, name, cedar);
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 201, "{name}: {v}");
    assert!(v["id"].as_str().unwrap().starts_with("pol_"), "{v}");
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["name"], name);
    assert_eq!(v["cedar"], cedar);
    assert_eq!(v["enabled"], true);
    assert!(v["warnings"].is_array(), "{v}");
    v
}

fn id_of(p: &Value) -> String {
    p["id"].as_str().unwrap().to_owned()
}

/// The tenant's policies as `key` lists them.
fn list(s: &Server, key: &str) -> Vec<Value> {
    let r = with_key(s, "GET", "/v1/policies", key).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["items"].as_array().unwrap().clone()
}

/// `POST /v1/authorize` with a fresh request id: (answer, request id).
fn authorize(s: &Server, key: &str, body: Value) -> (Value, String) {
    let rid = uuid_like();
    let r = with_key(s, "POST", "/v1/authorize", key).header("x-request-id", &rid).json(&body).send().unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 200, "a decision is an answer: {v}");
    (v, rid)
}

/// `action` on the tool `tool`.
fn ask_tool(action: &str, tool: &str) -> Value {
    json!({"action": action, "resource": {"type": "tool", "id": tool}, "context": {"message_length": 12}})
}

fn assert_decision(v: &Value, decision: &str, reasons: &[&str], what: &str) {
    assert_eq!(v["decision"], decision, "{what}: {v}");
    assert_eq!(v["reasons"], json!(reasons), "{what}: {v}");
}

/// The one audit event of a request.
fn event(s: &Server, op: &str, action: &str, rid: &str) -> Value {
    let events: Vec<Value> =
        s.audit(op, &format!("action={action}")).into_iter().filter(|e| e["request_id"] == rid).collect();
    assert_eq!(events.len(), 1, "{action} {rid}: one event");
    events[0].clone()
}

fn post_json(s: &Server, key: &str, path: &str, body: Value) -> (u16, Value) {
    let r = with_key(s, "POST", path, key).json(&body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn simulate(s: &Server, key: &str, body: Value) -> Value {
    let (status, v) = post_json(s, key, "/v1/policies/simulate", body);
    assert_eq!(status, 200, "{v}");
    v
}

fn evaluate(s: &Server, key: &str, body: Value) -> Value {
    let (status, v) = post_json(s, key, "/v1/policies/evaluate", body);
    assert_eq!(status, 200, "{v}");
    v
}

/// The story the feature was built for: an admin simulates "only admins may use the shell"
/// against what the tenant's callers actually did, sees exactly the editors' shell calls flip,
/// publishes it, and from then on editors are denied the shell (naming the policy) while
/// everything else is decided as before.
#[test]
fn a_simulated_shell_ban_shows_the_editor_calls_it_flips_and_once_published_denies_them() {
    let g = gateway_with(&[], "", "pro", "editor");
    let (editor_id, editor) = (g.key_id.clone(), g.key.clone());
    let (_, admin) = g.s.create_key(&g.op, &g.tenant, "admin");
    let (_, viewer) = g.s.create_key(&g.op, &g.tenant, "viewer");

    // Recorded traffic: a known mix of decisions.
    let mut editor_shell = Vec::new();
    for _ in 0..3 {
        let (v, rid) = authorize(&g.s, &editor, ask_tool("tool.request", "shell"));
        assert_decision(&v, "allow", &["builtin.rbac.editor"], "editor shell before");
        editor_shell.push(rid);
    }
    for _ in 0..2 {
        let (v, _) = authorize(&g.s, &editor, ask_tool("tool.request", "search"));
        assert_decision(&v, "allow", &["builtin.rbac.editor"], "editor search before");
    }
    let (v, _) = authorize(&g.s, &admin, ask_tool("tool.request", "shell"));
    assert_decision(&v, "allow", &["builtin.rbac.admin"], "admin shell before");
    let (v, _) = authorize(&g.s, &viewer, ask_tool("tool.request", "shell"));
    assert_decision(&v, "deny", &["default:no_permit"], "viewer shell before");

    // Simulate the draft over that traffic.
    let draft = "pol_shelldraft";
    let sim = simulate(&g.s, &admin, json!({"drafts": [{"id": draft, "cedar": SHELL_ADMIN_ONLY}]}));
    assert_eq!(sim["evaluated"], 7, "every recorded decision is replayed: {sim}");
    assert_eq!(sim["changed"], 3, "{sim}");
    assert_eq!(sim["allow_to_deny"], 3, "{sim}");
    assert_eq!(sim["deny_to_allow"], 0, "{sim}");
    let examples = sim["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 3, "{sim}");
    let mut flipped: Vec<String> = examples.iter().map(|x| x["request_id"].as_str().unwrap().to_owned()).collect();
    flipped.sort();
    editor_shell.sort();
    assert_eq!(flipped, editor_shell, "the examples are the editors' shell calls");
    for x in examples {
        assert_eq!(x["principal"], format!("key:{editor_id}"), "{x}");
        assert_eq!(x["role"], "editor", "{x}");
        assert_eq!(x["action"], "tool.request", "{x}");
        assert_eq!(x["resource_type"], "tool", "{x}");
        assert_eq!(x["resource_id"], "shell", "{x}");
        assert!(x["timestamp"].as_str().is_some_and(|t| !t.is_empty()), "{x}");
        assert_eq!(x["before"], json!({"decision": "allow", "reasons": ["builtin.rbac.editor"]}), "{x}");
        assert_eq!(x["after"], json!({"decision": "deny", "reasons": [draft]}), "{x}");
    }
    assert!(list(&g.s, &admin).is_empty(), "a simulation saves nothing");

    // Publish it.
    let p = created(&g.s, &admin, "shell-admin-only", SHELL_ADMIN_ONLY);
    let id = id_of(&p);
    assert_eq!(list(&g.s, &admin).len(), 1);

    let (v, rid) = authorize(&g.s, &editor, ask_tool("tool.request", "shell"));
    assert_decision(&v, "deny", &[&id], "editor shell after");
    assert_eq!(v["policies"], json!([id]), "{v}");
    let e = event(&g.s, &g.op, "tool.request", &rid);
    assert_eq!(e["result"], "denied", "{e}");
    assert_eq!(e["reason"], id.as_str(), "{e}");
    assert_eq!(e["metadata"]["policies"], json!([id]), "{e}");
    assert_eq!(e["metadata"]["role"], "editor", "{e}");
    let (v, _) = authorize(&g.s, &admin, ask_tool("tool.request", "shell"));
    assert_decision(&v, "allow", &["builtin.rbac.admin"], "admin shell after");
    let (v, rid) = authorize(&g.s, &editor, ask_tool("tool.request", "search"));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "editor search after");
    assert_eq!(event(&g.s, &g.op, "tool.request", &rid)["result"], "success");

    // Replays now start from the saved set: taking the policy out would let all four editor
    // shell calls through, and change nothing else.
    let sim = simulate(&g.s, &admin, json!({"remove": [id]}));
    assert_eq!(sim["evaluated"], 10, "{sim}");
    assert_eq!(sim["changed"], 4, "{sim}");
    assert_eq!(sim["deny_to_allow"], 4, "{sim}");
    assert_eq!(sim["allow_to_deny"], 0, "{sim}");
    for x in sim["examples"].as_array().unwrap() {
        assert_eq!(x["before"], json!({"decision": "deny", "reasons": [id]}), "{x}");
        assert_eq!(x["after"], json!({"decision": "allow", "reasons": ["builtin.rbac.editor"]}), "{x}");
    }
    let sim = simulate(&g.s, &admin, json!({}));
    assert_eq!(sim["changed"], 0, "the saved set against itself: {sim}");
}

/// The error whose position starts at the first occurrence of `needle` in `text`.
fn at<'a>(errors: &'a [Value], text: &str, needle: &str) -> Option<&'a Value> {
    let offset = text.find(needle).unwrap();
    errors.iter().find(|e| e["offset"] == offset)
}

/// (line, column), 1-based, of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).unwrap();
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[test]
fn policies_that_do_not_parse_or_validate_are_refused_with_positions_and_nothing_is_stored() {
    let g = gateway_with(&[], "", "pro", "admin");
    let syntax = "permit (principal, action, resource);\n\
                  forbid (principal, action, resource)\n\
                  when { principal.role == };\n";
    let unknown_attr = "// editors only\n\
                        forbid (principal, action, resource)\n\
                        when { principal.rol == \"editor\" };\n";
    let unknown_action = "permit (principal, action == Portcullis::Action::\"tool.requets\", resource);";
    let unguarded = "forbid (principal, action, resource)\nwhen { context.tool == \"x\" };";
    let cases = [
        ("syntax", syntax),
        ("unknown attribute", unknown_attr),
        ("unknown action", unknown_action),
        ("unguarded optional attribute", unguarded),
        ("template", "permit (principal == ?principal, action, resource);"),
        ("empty", "  // nothing\n"),
    ];
    let mut answers = Vec::new();
    for (what, cedar) in cases {
        let (status, v) = problem(create(&g.s, &g.key, what, cedar));
        assert_eq!(status, 400, "{what}: {v}");
        let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{what}: errors: {v}")).clone();
        assert!(!errors.is_empty(), "{what}: {v}");
        assert!(errors.iter().all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())), "{what}: {v}");
        answers.push((what, errors));
    }
    let errors = |what: &str| answers.iter().find(|(w, _)| *w == what).unwrap().1.clone();

    // The syntax error points at the `}` where an expression was expected, on line 3.
    let e = errors("syntax");
    let (line, column) = position(syntax, "};");
    assert_eq!((e[0]["line"].as_u64(), e[0]["column"].as_u64()), (Some(line as u64), Some(column as u64)), "{e:?}");
    assert_eq!(line, 3);

    // The misspelt attribute: its line, and a hint at the real one.
    let e = errors("unknown attribute");
    let hit = at(&e, unknown_attr, "principal.rol").unwrap_or_else(|| panic!("an error at `principal.rol`: {e:?}"));
    assert_eq!(hit["line"], 3, "{hit}");
    assert_eq!(hit["column"], position(unknown_attr, "principal.rol").1, "{hit}");
    assert!(hit["help"].as_str().is_some_and(|h| h.contains("role")), "help mentions `role`: {hit}");

    let e = errors("unknown action");
    assert!(e.iter().any(|e| e["message"].as_str().unwrap().contains("tool.requets")), "names the action: {e:?}");
    assert!(at(&e, unknown_action, "Portcullis::Action::\"tool.requets\"").is_some(), "points at it: {e:?}");

    let e = errors("unguarded optional attribute");
    let hit = e.iter().find(|e| e["line"] == 2).unwrap_or_else(|| panic!("an error on line 2: {e:?}"));
    assert!(hit["message"].as_str().unwrap().contains("tool"), "{hit}");

    // Nothing was stored or recorded as created.
    assert!(list(&g.s, &g.key).is_empty());
    assert!(g.s.audit(&g.op, "action=policy.create").is_empty(), "no policy.create event after a 400");

    // A policy that validates is saved (and recorded) as usual: the checks above could fail.
    let p = created(&g.s, &g.key, "fine", SHELL_ADMIN_ONLY);
    assert_eq!(list(&g.s, &g.key).len(), 1);
    let events = g.s.audit(&g.op, "action=policy.create");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["resource_id"], p["id"]);
    // A draft that does not validate is refused the same way by the dry runs.
    for path in ["/v1/policies/evaluate", "/v1/policies/simulate"] {
        let mut body = json!({"drafts": [{"cedar": unknown_attr}]});
        if path.ends_with("evaluate") {
            body["action"] = json!("tool.request");
        }
        let (status, v) = problem(with_key(&g.s, "POST", path, &g.key).json(&body).send().unwrap());
        assert_eq!(status, 400, "{path}: {v}");
        assert!(v["errors"].as_array().is_some_and(|e| e.iter().any(|e| e["line"] == 3)), "{path}: {v}");
    }
}

#[test]
fn a_tenant_permit_widens_a_role_and_a_forbid_beats_every_permit() {
    let g = gateway_with(&[], "", "pro", "admin");
    let admin = g.key.clone();
    let (_, viewer) = g.s.create_key(&g.op, &g.tenant, "viewer");
    let keys_write = json!({"action": "keys.write"});
    let new_key = json!({"name": "made-by-policy", "role": "viewer"});

    let (v, _) = authorize(&g.s, &viewer, keys_write.clone());
    assert_decision(&v, "deny", &["default:no_permit"], "viewer keys.write, no tenant policy");
    assert_eq!(with_key(&g.s, "POST", "/v1/keys", &viewer).json(&new_key).send().unwrap().status(), 403);

    let permit = id_of(&created(
        &g.s,
        &admin,
        "viewers-manage-keys",
        r#"permit (principal, action == Portcullis::Action::"keys.write", resource);"#,
    ));
    let (v, _) = authorize(&g.s, &viewer, keys_write.clone());
    assert_decision(&v, "allow", &[&permit], "viewer keys.write with the permit");
    let r = with_key(&g.s, "POST", "/v1/keys", &viewer).json(&new_key).send().unwrap();
    assert_eq!(r.status(), 201, "the permit reaches the admin API too");

    // tenants.manage stays an operator's, whatever a tenant permits.
    let manage = id_of(&created(
        &g.s,
        &admin,
        "try-to-manage-tenants",
        r#"permit (principal, action == Portcullis::Action::"tenants.manage", resource);"#,
    ));
    assert!(manage.starts_with("pol_"));
    for key in [&viewer, &admin] {
        let (v, _) = authorize(&g.s, key, json!({"action": "tenants.manage"}));
        assert_eq!(v["decision"], "deny", "{v}");
    }

    let forbid = id_of(&created(
        &g.s,
        &admin,
        "nobody-writes-keys",
        r#"forbid (principal, action == Portcullis::Action::"keys.write", resource);"#,
    ));
    let (v, rid) = authorize(&g.s, &viewer, keys_write.clone());
    assert_decision(&v, "deny", &[&forbid], "viewer keys.write with permit and forbid");
    assert_eq!(event(&g.s, &g.op, "keys.write", &rid)["metadata"]["policies"], json!([forbid]));
    let (v, _) = authorize(&g.s, &admin, keys_write.clone());
    assert_decision(&v, "deny", &[&forbid], "the forbid beats the built-in admin permit too");
    for key in [&viewer, &admin] {
        let (status, body) = problem(with_key(&g.s, "POST", "/v1/keys", key).json(&new_key).send().unwrap());
        assert_eq!(status, 403, "{body}");
    }
    // Other actions are untouched.
    let (v, _) = authorize(&g.s, &admin, json!({"action": "users.write"}));
    assert_decision(&v, "allow", &["builtin.rbac.admin"], "admin users.write");
}

#[test]
fn a_forbid_that_fails_to_evaluate_denies_and_says_so() {
    let g = gateway_with(&[], "", "pro", "admin");
    let (_, editor) = g.s.create_key(&g.op, &g.tenant, "editor");
    let cedar = "forbid (principal, action, resource)\n\
                 when { context has message_length && context.message_length + 9223372036854775807 < 0 };";
    let id = id_of(&created(&g.s, &g.key, "overflowing", cedar));

    let (v, rid) = authorize(&g.s, &editor, json!({"action": "conversation.send", "context": {"message_length": 5}}));
    assert_decision(&v, "deny", &[&id], "the overflow errors");
    let errors = v["errors"].as_array().unwrap_or_else(|| panic!("errors: {v}"));
    assert!(!errors.is_empty(), "{v}");
    assert_eq!(errors[0]["policy"], id.as_str(), "{v}");
    assert!(errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let e = event(&g.s, &g.op, "conversation.send", &rid);
    assert_eq!(e["result"], "denied");
    assert_eq!(e["metadata"]["policies"], json!([id]), "{e}");
    assert!(e["metadata"]["policy_errors"].as_array().is_some_and(|a| !a.is_empty()), "{e}");

    let (v, _) = authorize(&g.s, &editor, json!({"action": "conversation.send", "context": {"topic": "x"}}));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "without message_length nothing errors");
    assert!(v.get("errors").is_none_or(|e| e.as_array().is_some_and(Vec::is_empty)), "{v}");
}

#[test]
fn one_tenants_policies_never_touch_another_tenant() {
    let g = gateway_with(&[], "", "pro", "admin");
    let (a_admin, a_tenant) = (g.key.clone(), g.tenant.clone());
    let (_, a_editor) = g.s.create_key(&g.op, &a_tenant, "editor");
    let b_tenant = g.s.create_tenant(&g.op, "tenant-b", "pro");
    let (_, b_admin) = g.s.create_key(&g.op, &b_tenant, "admin");
    let (_, b_editor) = g.s.create_key(&g.op, &b_tenant, "editor");

    let cedar = r#"forbid (principal, action, resource) when { principal.role == "editor" };"#;
    let a_policy = created(&g.s, &a_admin, "no-editors", cedar);
    let id = id_of(&a_policy);

    // A's editors are refused everything; B's are decided as before.
    let v = evaluate(&g.s, &a_admin, json!({"action": "tool.request", "as": {"role": "editor"}}));
    assert_decision(&v, "deny", &[&id], "tenant A evaluate");
    let rid = uuid_like();
    let r = with_key(&g.s, "GET", "/v1/keys", &a_editor).header("x-request-id", &rid).send().unwrap();
    assert_eq!(problem(r).0, 403, "tenant A editor reads no keys");
    let e = event(&g.s, &g.op, "authz.denied", &rid);
    assert_eq!(e["metadata"]["policies"], json!([id]), "{e}");
    for action in ["tool.request", "conversation.send", "job.submit", "keys.read", "session"] {
        let (v, _) = authorize(&g.s, &b_editor, ask_tool(action, "search"));
        assert_decision(&v, "allow", &["builtin.rbac.editor"], &format!("tenant B editor {action}"));
    }
    for p in ["/v1/keys", "/v1/auth/whoami", "/v1/policies"] {
        assert_eq!(with_key(&g.s, "GET", p, &b_editor).send().unwrap().status(), 200, "tenant B editor GET {p}");
    }
    let v = evaluate(&g.s, &b_admin, json!({"action": "tool.request", "as": {"role": "editor"}}));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "tenant B evaluate");

    // B can neither see nor touch A's policy.
    assert!(list(&g.s, &b_admin).is_empty());
    let path = format!("/v1/policies/{id}");
    let probes = [
        ("GET", path.clone(), None),
        ("PUT", path.clone(), Some(json!({"enabled": false}))),
        ("DELETE", path.clone(), None),
        ("GET", format!("{path}/versions"), None),
    ];
    for (method, p, body) in &probes {
        let mut rb = with_key(&g.s, method, p, &b_admin);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let (status, v) = problem(rb.send().unwrap());
        assert_eq!(status, 404, "{method} {p}: {v}");
    }
    // Naming A in X-Tenant-ID is refused.
    let spoofed = [
        with_key(&g.s, "GET", "/v1/policies", &b_admin).header("x-tenant-id", &a_tenant),
        with_key(&g.s, "GET", &path, &b_admin).header("x-tenant-id", &a_tenant),
        with_key(&g.s, "POST", "/v1/policies", &b_admin)
            .header("x-tenant-id", &a_tenant)
            .json(&json!({"name": "planted", "cedar": "forbid (principal, action, resource);"})),
        with_key(&g.s, "DELETE", &path, &b_admin).header("x-tenant-id", &a_tenant),
    ];
    for rb in spoofed {
        let (status, v) = problem(rb.send().unwrap());
        assert_eq!(status, 403, "{v}");
    }
    // A simulation in B that removes A's policy changes nothing.
    let sim = simulate(&g.s, &b_admin, json!({"remove": [id]}));
    assert_eq!(sim["changed"], 0, "{sim}");

    // A's policy is as it was, and A's editors still denied.
    let got: Value = with_key(&g.s, "GET", &path, &a_admin).send().unwrap().json().unwrap();
    assert_eq!(got["version"], 1, "{got}");
    assert_eq!(got["enabled"], true, "{got}");
    assert_eq!(list(&g.s, &a_admin).len(), 1);
    let v = evaluate(&g.s, &a_admin, json!({"action": "tool.request", "as": {"role": "editor"}}));
    assert_decision(&v, "deny", &[&id], "tenant A, after B's attempts");
    // Names are per tenant.
    created(&g.s, &b_admin, "no-editors", SHELL_ADMIN_ONLY);
}

#[test]
fn only_admins_and_operators_write_policies_and_every_reader_reads_them() {
    let g = gateway_with(&[], "", "pro", "admin");
    let admin = g.key.clone();
    let p = created(&g.s, &admin, "base", SHELL_ADMIN_ONLY);
    let id = id_of(&p);
    let path = format!("/v1/policies/{id}");
    let mut readers: Vec<(String, String)> = Vec::new();
    for role in ["editor", "viewer"] {
        readers.push((format!("{role} key"), g.s.create_key(&g.op, &g.tenant, role).1));
    }
    let (_, email, pw) = g.s.create_user(&g.op, &g.tenant, "viewer");
    let viewer_session = g.s.login(&email, &pw);
    let (_, service) = g.s.create_key(&g.op, &g.tenant, "service");
    let auth = |rb: RequestBuilder, cred: &str| {
        if cred.starts_with("pc_") { rb.header("x-api-key", cred) } else { rb.bearer_auth(cred) }
    };
    readers.push((String::from("viewer user"), viewer_session));

    for (who, cred) in &readers {
        for p in ["/v1/policies", path.as_str(), &format!("{path}/versions"), "/v1/policies/schema"] {
            let r = auth(g.s.get(p), cred).send().unwrap();
            assert_eq!(r.status(), 200, "{who} GET {p}");
        }
        let got: Value = auth(g.s.get(&path), cred).send().unwrap().json().unwrap();
        assert_eq!(got["cedar"], SHELL_ADMIN_ONLY, "{who}");
        let writes = [
            auth(g.s.post("/v1/policies"), cred).json(&json!({"name": format!("by {who}"), "cedar": SHELL_ADMIN_ONLY})),
            auth(g.s.request("PUT", &path), cred).json(&json!({"enabled": false})),
            auth(g.s.delete(&path), cred),
        ];
        for (rb, what) in writes.into_iter().zip(["POST", "PUT", "DELETE"]) {
            let (status, v) = problem(rb.send().unwrap());
            assert_eq!(status, 403, "{who} {what}: {v}");
        }
    }
    // The service role reads no policies.
    let (status, _) = problem(with_key(&g.s, "GET", "/v1/policies", &service).send().unwrap());
    assert_eq!(status, 403);
    let denials = g.s.audit(&g.op, "action=authz.denied");
    assert!(
        denials.iter().filter(|e| e["metadata"]["permission"] == "policies.write").count() == 9,
        "the refused writes are audited: {denials:?}"
    );

    // Nothing the readers tried changed the policy.
    let got: Value = with_key(&g.s, "GET", &path, &admin).send().unwrap().json().unwrap();
    assert_eq!((got["version"].as_i64(), got["enabled"].as_bool()), (Some(1), Some(true)), "{got}");
    assert_eq!(list(&g.s, &admin).len(), 1);

    // An admin user's session writes; an operator writes inside a tenant named by X-Tenant-ID.
    let (_, email, pw) = g.s.create_user(&g.op, &g.tenant, "admin");
    let admin_session = g.s.login(&email, &pw);
    let r =
        g.s.post("/v1/policies")
            .bearer_auth(&admin_session)
            .json(&json!({"name": "by admin user", "cedar": SHELL_ADMIN_ONLY}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 201);
    let r =
        g.s.post("/v1/policies")
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .json(&json!({"name": "by operator", "cedar": SHELL_ADMIN_ONLY, "description": "platform rule"}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().unwrap();
    assert_eq!(v["created_by"], "user:admin@localhost", "{v}");
    assert_eq!(v["description"], "platform rule");
    let (status, _) = problem(
        g.s.post("/v1/policies")
            .bearer_auth(&g.op)
            .json(&json!({"name": "nowhere", "cedar": SHELL_ADMIN_ONLY}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 400, "an operator must name the tenant");
    let names: Vec<Value> = list(&g.s, &admin).iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, vec![json!("base"), json!("by admin user"), json!("by operator")]);
}

#[test]
fn every_change_is_a_version_with_its_author_and_diff_and_stale_edits_are_refused() {
    let g = gateway_with(&[], "", "pro", "admin");
    let (admin_id, admin) = (g.key_id.clone(), g.key.clone());
    let (_, editor) = g.s.create_key(&g.op, &g.tenant, "editor");
    let v1 = "// Editors may not do this.\n\
              forbid (principal, action == Portcullis::Action::\"job.submit\", resource)\n\
              when { principal.role == \"editor\" };\n";
    let v2 = v1.replace("job.submit", "tool.request");
    let p = created(&g.s, &admin, "editor-ban", v1);
    let id = id_of(&p);
    let path = format!("/v1/policies/{id}");
    assert_eq!(p["created_by"], format!("key:{admin_id}"));
    let (status, body) = problem(create(&g.s, &admin, "editor-ban", SHELL_ADMIN_ONLY));
    assert_eq!(status, 409, "a name is unique within the tenant: {body}");
    let other = id_of(&created(&g.s, &admin, "other", SHELL_ADMIN_ONLY));
    let (status, body) = problem(
        with_key(&g.s, "PUT", &format!("/v1/policies/{other}"), &admin)
            .json(&json!({"name": "editor-ban"}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 409, "nor can a rename take it: {body}");
    assert_eq!(with_key(&g.s, "DELETE", &format!("/v1/policies/{other}"), &admin).send().unwrap().status(), 204);
    assert_eq!(list(&g.s, &admin).len(), 1);
    // The audit trail claims no change that was refused.
    let creates: Vec<Value> = g.s.audit(&g.op, "action=policy.create");
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert!(
        creates.iter().all(|e| e["resource_id"] == id.as_str() || e["resource_id"] == other.as_str()),
        "{creates:?}"
    );
    assert!(g.s.audit(&g.op, "action=policy.update").is_empty(), "the refused rename");
    let (v, _) = authorize(&g.s, &editor, ask_tool("job.submit", "x"));
    assert_decision(&v, "deny", &[&id], "v1 forbids job.submit");
    let (v, _) = authorize(&g.s, &editor, ask_tool("tool.request", "x"));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "v1 leaves tool.request");

    // v2: the operator changes the text.
    let r =
        g.s.request("PUT", &path)
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .json(&json!({"cedar": v2, "version": 1}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().unwrap();
    assert_eq!(got["version"], 2, "{got}");
    assert_eq!(got["updated_by"], "user:admin@localhost");
    assert_eq!(got["created_by"], format!("key:{admin_id}"));
    let (v, _) = authorize(&g.s, &editor, ask_tool("job.submit", "x"));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "v2 leaves job.submit");
    let (v, _) = authorize(&g.s, &editor, ask_tool("tool.request", "x"));
    assert_decision(&v, "deny", &[&id], "v2 forbids tool.request");

    // An edit based on v1 is stale: refused, nothing changes.
    let (status, body) =
        problem(with_key(&g.s, "PUT", &path, &admin).json(&json!({"enabled": false, "version": 1})).send().unwrap());
    assert_eq!(status, 409, "{body}");
    let got: Value = with_key(&g.s, "GET", &path, &admin).send().unwrap().json().unwrap();
    assert_eq!((got["version"].as_i64(), got["enabled"].as_bool()), (Some(2), Some(true)), "{got}");
    assert_eq!(got["cedar"], v2.as_str());
    let (v, _) = authorize(&g.s, &editor, ask_tool("tool.request", "x"));
    assert_eq!(v["decision"], "deny", "still enforced after the refused edit: {v}");

    // v3: disabled. It takes no part in decisions (nor in evaluations or simulations).
    let r = with_key(&g.s, "PUT", &path, &admin).json(&json!({"enabled": false, "version": 2})).send().unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().unwrap();
    assert_eq!((got["version"].as_i64(), got["enabled"].as_bool()), (Some(3), Some(false)), "{got}");
    let (v, _) = authorize(&g.s, &editor, ask_tool("tool.request", "x"));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "disabled");
    let v = evaluate(&g.s, &admin, json!({"action": "tool.request", "as": {"role": "editor"}}));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "disabled, evaluated");
    // A change that does not validate is refused and is no version.
    let (status, _) =
        problem(with_key(&g.s, "PUT", &path, &admin).json(&json!({"cedar": "forbid (principal"})).send().unwrap());
    assert_eq!(status, 400);

    // v4: deleted. Gone from reads and decisions; its history stays.
    let r = with_key(&g.s, "DELETE", &path, &admin).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(problem(with_key(&g.s, "GET", &path, &admin).send().unwrap()).0, 404);
    assert!(list(&g.s, &admin).is_empty());
    let r = with_key(&g.s, "GET", &format!("{path}/versions"), &editor).send().unwrap();
    assert_eq!(r.status(), 200);
    let items = r.json::<Value>().unwrap()["items"].as_array().unwrap().clone();
    let summary: Vec<(i64, String, String)> = items
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["change"].as_str().unwrap().into(),
                v["changed_by"].as_str().unwrap().into(),
            )
        })
        .collect();
    let key = format!("key:{admin_id}");
    assert_eq!(
        summary,
        vec![
            (1, String::from("create"), key.clone()),
            (2, String::from("update"), String::from("user:admin@localhost")),
            (3, String::from("update"), key.clone()),
            (4, String::from("delete"), key.clone()),
        ],
        "{items:?}"
    );
    assert!(items.iter().all(|v| v["changed_at"].as_str().is_some_and(|t| !t.is_empty())));
    assert_eq!(items[0]["cedar"], v1);
    assert_eq!(items[1]["cedar"], v2.as_str());
    assert_eq!((items[1]["enabled"].as_bool(), items[2]["enabled"].as_bool()), (Some(true), Some(false)));
    let lines = |d: &Value| d.as_str().unwrap().lines().map(str::to_owned).collect::<Vec<_>>();
    let old_line = v1.lines().nth(1).unwrap();
    let new_line = v2.lines().nth(1).unwrap();
    let d1 = lines(&items[0]["diff"]);
    assert!(d1.contains(&format!("+{old_line}")), "v1 diff adds its text: {d1:?}");
    let d2 = lines(&items[1]["diff"]);
    assert!(d2.contains(&format!("-{old_line}")), "v2 diff: {d2:?}");
    assert!(d2.contains(&format!("+{new_line}")), "v2 diff: {d2:?}");
    let changed: Vec<&String> =
        d2.iter().filter(|l| l.starts_with(['+', '-']) && !l.starts_with("+++") && !l.starts_with("---")).collect();
    assert_eq!(changed.len(), 2, "only the changed line: {d2:?}");

    // The name is free again.
    created(&g.s, &admin, "editor-ban", v1);
    let updates: Vec<Value> =
        g.s.audit(&g.op, "action=policy.update").into_iter().filter(|e| e["resource_id"] == id.as_str()).collect();
    assert_eq!(updates.len(), 2, "the two changes made, not the refused ones: {updates:?}");
}

#[test]
fn proxied_requests_a_policy_forbids_are_refused_before_the_upstream() {
    let g = gateway_with(&[], "", "pro", "editor");
    let editor = g.key.clone();
    let (_, admin) = g.s.create_key(&g.op, &g.tenant, "admin");
    let send = |method: &str, path: &str, key: &str| {
        let rid = uuid_like();
        let r = with_key(&g.s, method, path, key).header("x-request-id", &rid).send().unwrap();
        (r, rid)
    };
    let (r, rid) = send("GET", "/up/echo", &editor);
    assert_eq!(r.status(), 200);
    assert_eq!(g.up.count(), 1);
    let e = event(&g.s, &g.op, "conversation.send", &rid);
    assert_eq!(e["metadata"]["policies"], json!(["builtin.rbac.editor"]), "{e}");

    let route_ban = id_of(&created(
        &g.s,
        &admin,
        "up-is-for-admins",
        r#"forbid (principal, action, resource == Portcullis::Route::"/up") unless { principal.role == "admin" };"#,
    ));
    for method in ["GET", "POST"] {
        let (r, rid) = send(method, "/up/echo", &editor);
        let (status, body) = problem(r);
        assert_eq!(status, 403, "{method}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(&route_ban), "the refusal names the policy: {body}");
        let e = event(&g.s, &g.op, "conversation.send", &rid);
        assert_eq!(e["result"], "denied", "{e}");
        assert_eq!(e["reason"], format!("policy:{route_ban}"), "{e}");
        assert_eq!(e["resource_type"], "route");
        assert_eq!(e["resource_id"], "/up");
        assert_eq!(e["metadata"]["policies"], json!([route_ban]), "{e}");
        assert_eq!(e["metadata"]["method"], method);
    }
    assert_eq!(g.up.count(), 1, "a refused request reaches no upstream");
    // Admins still pass; other routes are untouched.
    assert_eq!(send("GET", "/up/echo", &admin).0.status(), 200);
    assert_eq!(send("GET", "/based/echo", &editor).0.status(), 200);
    assert_eq!(g.up.count(), 3);
    // nginx's auth_request decides the same way.
    let r = g.s.get("/v1/auth/check").header("x-api-key", &editor).header("x-original-uri", "/up/x").send().unwrap();
    let (status, body) = problem(r);
    assert_eq!(status, 403);
    assert!(body["detail"].as_str().unwrap().contains(&route_ban), "{body}");

    // A policy on the request's method, for everyone.
    let no_deletes = id_of(&created(
        &g.s,
        &admin,
        "no-deletes",
        r#"forbid (principal, action, resource) when { context has method && context.method == "DELETE" };"#,
    ));
    for (key, path) in [(&editor, "/raw/things/1"), (&admin, "/up/things/1")] {
        let (r, rid) = send("DELETE", path, key);
        let (status, body) = problem(r);
        assert_eq!(status, 403, "DELETE {path}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(&no_deletes), "{body}");
        let e = event(&g.s, &g.op, if path.starts_with("/raw") { "tool.request" } else { "conversation.send" }, &rid);
        assert_eq!(e["reason"], format!("policy:{no_deletes}"), "{e}");
    }
    assert_eq!(g.up.count(), 3, "no DELETE reached the upstream");
    assert_eq!(send("GET", "/raw/things/1", &editor).0.status(), 200);
    assert_eq!(send("PUT", "/up/things/1", &admin).0.status(), 200);
    assert_eq!(g.up.count(), 5);

    // Deleting the route ban lets editors through again at once.
    assert_eq!(with_key(&g.s, "DELETE", &format!("/v1/policies/{route_ban}"), &admin).send().unwrap().status(), 204);
    assert_eq!(send("GET", "/up/echo", &editor).0.status(), 200);
    assert_eq!(g.up.count(), 6);
}

#[test]
fn evaluate_is_a_dry_run_that_saves_nothing_and_consumes_no_limit() {
    // Free tier: 10 requests a minute, 1000 a day.
    let g = gateway_with(&[], "", "free", "editor");
    let editor = g.key.clone();
    let (_, admin) = g.s.create_key(&g.op, &g.tenant, "admin");
    let (first, _) = authorize(&g.s, &editor, ask_tool("tool.request", "search"));
    assert_eq!(first["decision"], "allow", "{first}");
    let quota = first["limits"]["quota_remaining"].as_u64().unwrap();
    let rate = first["limits"]["rate_remaining"].as_u64().unwrap();

    let shell = json!({"type": "tool", "id": "shell"});
    let tryout = json!([{"id": "pol_tryout", "cedar": SHELL_ADMIN_ONLY}]);
    // More dry runs than the tier allows requests a minute.
    for i in 0..12 {
        let v = evaluate(
            &g.s,
            &editor,
            json!({"action": "tool.request", "resource": shell, "as": {"role": "editor"}, "drafts": tryout}),
        );
        assert_decision(&v, "deny", &["pol_tryout"], &format!("dry run {i}"));
        assert_eq!(v["policies"], json!(["pol_tryout"]));
        assert_eq!(v["errors"], json!([]));
    }
    let v = evaluate(
        &g.s,
        &editor,
        json!({"action": "tool.request", "resource": shell, "as": {"role": "admin"}, "drafts": tryout}),
    );
    assert_decision(&v, "allow", &["builtin.rbac.admin"], "as admin");
    let v = evaluate(&g.s, &editor, json!({"action": "tool.request", "resource": shell}));
    assert_decision(&v, "allow", &["builtin.rbac.editor"], "as the caller, saved set");
    let v = evaluate(
        &g.s,
        &editor,
        json!({"action": "tool.request", "resource": shell, "drafts": [{"cedar": SHELL_ADMIN_ONLY}]}),
    );
    assert_eq!(v["decision"], "deny", "an unnamed draft: {v}");

    assert!(list(&g.s, &admin).is_empty(), "a dry run saves nothing");
    assert!(g.s.audit(&g.op, "action=policy.create").is_empty());
    assert_eq!(g.s.audit(&g.op, "action=tool.request").len(), 1, "only the real decision is recorded as one");
    let (second, _) = authorize(&g.s, &editor, ask_tool("tool.request", "search"));
    assert_eq!(second["decision"], "allow", "the dry runs did not use up the rate: {second}");
    assert_eq!(second["limits"]["quota_remaining"], quota - 1, "{second}");
    assert!(second["limits"]["rate_remaining"].as_u64().unwrap() + 1 >= rate, "{second}");

    // With the policy saved: `remove` leaves it out, a draft with its id replaces it.
    let id = id_of(&created(&g.s, &admin, "shell", SHELL_ADMIN_ONLY));
    let ask = |extra: Value| {
        let mut body = json!({"action": "tool.request", "resource": shell, "as": {"role": "editor"}});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        evaluate(&g.s, &editor, body)
    };
    assert_decision(&ask(json!({})), "deny", &[&id], "saved");
    assert_decision(&ask(json!({"remove": [id]})), "allow", &["builtin.rbac.editor"], "removed");
    let harmless = r#"forbid (principal, action == Portcullis::Action::"job.submit", resource);"#;
    assert_decision(
        &ask(json!({"drafts": [{"id": id, "cedar": harmless}]})),
        "allow",
        &["builtin.rbac.editor"],
        "replaced by a draft",
    );
    let got: Value = with_key(&g.s, "GET", &format!("/v1/policies/{id}"), &admin).send().unwrap().json().unwrap();
    assert_eq!((got["version"].as_i64(), got["cedar"].as_str()), (Some(1), Some(SHELL_ADMIN_ONLY)), "{got}");
    // Operators evaluate inside a tenant, as a role they name.
    let r =
        g.s.post("/v1/policies/evaluate")
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .json(&json!({"action": "tool.request", "resource": shell, "as": {"role": "editor"}}))
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    assert_decision(&r.json().unwrap(), "deny", &[&id], "operator as editor");
    let r =
        g.s.post("/v1/policies/evaluate")
            .bearer_auth(&g.op)
            .header("x-tenant-id", &g.tenant)
            .json(&json!({"action": "tool.request"}))
            .send()
            .unwrap();
    assert_eq!(problem(r).0, 400, "an operator must say as whom");
    let (third, _) = authorize(&g.s, &editor, ask_tool("tool.request", "search"));
    assert_eq!(third["limits"]["quota_remaining"], quota - 2, "{third}");
}

/// Simulations replay proxied requests and nginx checks with the route, method and path they
/// were decided with, and agree with what the gateway then decides live.
#[test]
fn simulation_replays_proxied_and_checked_requests_as_they_were_decided() {
    let g = gateway_with(&[], "", "pro", "editor");
    let (_, admin) = g.s.create_key(&g.op, &g.tenant, "admin");
    let mut rids = std::collections::HashMap::new();
    for (name, method, path) in
        [("get-up", "GET", "/up/a"), ("delete-up", "DELETE", "/up/b"), ("get-based", "GET", "/based/c")]
    {
        let rid = uuid_like();
        let r = with_key(&g.s, method, path, &g.key).header("x-request-id", &rid).send().unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
        rids.insert(name, rid);
    }
    for (name, uri) in [("check-up", "/up/x"), ("check-elsewhere", "/elsewhere/y")] {
        let rid = uuid_like();
        let r = with_key(&g.s, "GET", "/v1/auth/check", &g.key)
            .header("x-original-uri", uri)
            .header("x-original-method", "GET")
            .header("x-request-id", &rid)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{uri}");
        rids.insert(name, rid);
    }
    // (draft, the requests it would have denied)
    let cases: [(&str, &[&str]); 4] = [
        (
            r#"forbid (principal, action, resource) when { context has method && context.method == "DELETE" };"#,
            &["delete-up"],
        ),
        (r#"forbid (principal, action, resource == Portcullis::Route::"/up");"#, &["get-up", "delete-up", "check-up"]),
        (
            r#"forbid (principal, action, resource) when { context has route };"#,
            &["get-up", "delete-up", "get-based", "check-up"],
        ),
        (
            r#"forbid (principal, action, resource) when { context has path && context.path like "/elsewhere/*" };"#,
            &["check-elsewhere"],
        ),
    ];
    for (cedar, denied) in cases {
        let sim = simulate(&g.s, &admin, json!({"drafts": [{"cedar": cedar}]}));
        assert_eq!(sim["evaluated"], 5, "{cedar}: {sim}");
        assert_eq!(sim["allow_to_deny"], denied.len(), "{cedar}: {sim}");
        assert_eq!(sim["changed"], denied.len(), "{cedar}: {sim}");
        let mut got: Vec<&str> =
            sim["examples"].as_array().unwrap().iter().map(|x| x["request_id"].as_str().unwrap()).collect();
        let mut want: Vec<&str> = denied.iter().map(|n| rids[n].as_str()).collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{cedar}: {sim}");
    }
    // The window replayed: the most recent `limit`, or a time range.
    let draft = json!([{"cedar": cases[1].0}]);
    let sim = simulate(&g.s, &admin, json!({"drafts": draft, "limit": 2}));
    assert_eq!(sim["evaluated"], 2, "the two most recent: {sim}");
    assert_eq!(sim["changed"], 1, "of which only the matched check was on /up: {sim}");
    let sim = simulate(&g.s, &admin, json!({"drafts": draft, "from": "2999-01-01T00:00:00Z"}));
    assert_eq!((sim["evaluated"].as_u64(), sim["changed"].as_u64()), (Some(0), Some(0)), "{sim}");
    let sim = simulate(&g.s, &admin, json!({"drafts": draft, "to": "2000-01-01T00:00:00Z"}));
    assert_eq!(sim["evaluated"], 0, "{sim}");
    for bad in [
        json!({"limit": 0}),
        json!({"from": "yesterday"}),
        json!({"drafts": [{"id": "not-an-id", "cedar": cases[0].0}]}),
    ] {
        let (status, v) = problem(with_key(&g.s, "POST", "/v1/policies/simulate", &admin).json(&bad).send().unwrap());
        assert_eq!(status, 400, "{bad}: {v}");
    }

    // Live, the gateway decides as the simulation said.
    let id = id_of(&created(&g.s, &admin, "routes-only", cases[2].0));
    let check = |uri: &str| {
        g.s.get("/v1/auth/check").header("x-api-key", &g.key).header("x-original-uri", uri).send().unwrap().status()
    };
    assert_eq!(check("/up/x"), 403);
    assert_eq!(check("/elsewhere/y"), 200, "a URI no route matches has no route");
    let (status, body) = problem(with_key(&g.s, "GET", "/based/c", &g.key).send().unwrap());
    assert_eq!(status, 403);
    assert!(body["detail"].as_str().unwrap().contains(&id));
}
