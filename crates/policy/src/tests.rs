#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use super::*;
use portcullis_core::{Permission, TenantId};

fn engine() -> Engine {
    Engine::new(["chat.completions"]).unwrap()
}

fn who(kind: PrincipalKind, role: Option<Role>) -> Principal {
    Principal {
        kind,
        id: String::from("key:k1"),
        tenant_id: TenantId::parse("11111111-1111-1111-1111-111111111111").ok(),
        role,
        key_id: None,
        user_id: None,
        session_id: None,
        scopes: Vec::new(),
    }
}

fn decide(e: &Engine, t: Option<&TenantPolicies>, p: &Principal, action: &str, res: Option<(&str, &str)>) -> Decision {
    let ctx = ContextInput::at(1_700_000_000_000).with_caller_context(None, res);
    e.decide(t, &DecisionRequest { principal: p, action, resource: res, context: &ctx })
}

#[test]
fn builtin_cedar_grants_exactly_the_rbac_table() {
    let e = engine();
    for role in Role::ALL {
        let p = who(PrincipalKind::ApiKey, Some(role));
        for perm in Permission::ALL {
            let action = if perm == Permission::Execute { "conversation.send" } else { perm.as_str() };
            let d = decide(&e, None, &p, action, None);
            assert_eq!(d.allowed, perm.granted_to(role), "{role} {action}");
            if d.allowed {
                assert_eq!(d.policies, vec![format!("builtin.rbac.{role}")]);
            } else {
                assert_eq!(d.reasons(), vec![String::from("default:no_permit")]);
            }
        }
        for action in ["chat.completions", "some.undeclared-action", "tool.request"] {
            let d = decide(&e, None, &p, action, None);
            assert_eq!(d.allowed, Permission::Execute.granted_to(role), "{role} {action}");
        }
    }
    let op = Principal::system_operator("user:op@example.com");
    for perm in Permission::ALL {
        assert!(decide(&e, None, &op, perm.as_str(), None).allowed, "{perm:?}");
    }
}

#[test]
fn memoised_answers_equal_cedar_run_on_the_builtin_set() {
    let e = engine();
    let mut callers: Vec<Principal> = Role::ALL.into_iter().map(|r| who(PrincipalKind::User, Some(r))).collect();
    callers.push(Principal::system_operator("op"));
    callers.push(who(PrincipalKind::Jwt, Some(Role::Service)));
    let mut actions: Vec<String> = e.actions.keys().cloned().collect();
    actions.push(String::from("not.declared"));
    for p in &callers {
        for a in &actions {
            let ctx = ContextInput::at(0);
            let req = DecisionRequest { principal: p, action: a, resource: None, context: &ctx };
            assert_eq!(e.decide(None, &req), e.run_builtin(&req), "{:?} {a}", p.role);
        }
    }
}

const SHELL_ADMIN_ONLY: &str = r#"// Only admins may ask for the shell.
forbid (
  principal,
  action == Portcullis::Action::"tool.request",
  resource == Portcullis::Tool::"shell"
) unless { principal.role == "admin" };"#;

#[test]
fn forbid_beats_the_builtin_permit_and_names_itself() {
    let e = engine();
    e.check("pol_a", SHELL_ADMIN_ONLY).unwrap();
    let t = e.compile([Document { id: "pol_a", cedar: SHELL_ADMIN_ONLY }]);
    let editor = who(PrincipalKind::ApiKey, Some(Role::Editor));
    let d = decide(&e, Some(&t), &editor, "tool.request", Some(("tool", "shell")));
    assert!(!d.allowed);
    assert_eq!(d.policies, vec![String::from("pol_a")]);
    // Another tool, or an admin, is still allowed by the built-in role policy.
    let d = decide(&e, Some(&t), &editor, "tool.request", Some(("tool", "search")));
    assert_eq!((d.allowed, d.policies), (true, vec![String::from("builtin.rbac.editor")]));
    let admin = who(PrincipalKind::User, Some(Role::Admin));
    assert!(decide(&e, Some(&t), &admin, "tool.request", Some(("tool", "shell"))).allowed);
    // Without the tenant's set nothing is forbidden.
    assert!(decide(&e, None, &editor, "tool.request", Some(("tool", "shell"))).allowed);
}

#[test]
fn a_policy_that_errors_during_evaluation_denies() {
    let e = engine();
    // Valid against the schema, but overflows at run time for any message of length ≥ 1.
    let doc = r#"forbid (principal, action, resource)
  when { context has message_length && context.message_length + 9223372036854775807 < 0 };"#;
    e.check("pol_overflow", doc).unwrap();
    let t = e.compile([Document { id: "pol_overflow", cedar: doc }]);
    let editor = who(PrincipalKind::ApiKey, Some(Role::Editor));
    let ctx = ContextInput { message_length: Some(5), ..ContextInput::at(0) };
    let req = DecisionRequest { principal: &editor, action: "conversation.send", resource: None, context: &ctx };
    let d = e.decide(Some(&t), &req);
    assert!(!d.allowed);
    assert_eq!(d.policies, vec![String::from("pol_overflow")]);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].message.contains("overflow"), "{:?}", d.errors);
    // Without a message the condition short-circuits and the built-in permit stands.
    let ctx = ContextInput::at(0);
    let req = DecisionRequest { principal: &editor, action: "conversation.send", resource: None, context: &ctx };
    assert!(e.decide(Some(&t), &req).allowed);
}

#[test]
fn validation_errors_carry_positions() {
    let e = engine();
    let bad_attr = "permit (principal, action, resource)\n  when { principal.rol == \"admin\" };";
    let errs = e.check("pol_x", bad_attr).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, Some(2), "{errs:?}");
    assert!(errs[0].message.contains("rol"), "{errs:?}");

    let syntax = "permit (principal, action, resource)\nwhen { context.hour > };";
    let errs = e.check("pol_x", syntax).unwrap_err();
    assert!(errs.iter().all(|p| p.line == Some(2)), "{errs:?}");

    let unknown_action = r#"forbid (principal, action == Portcullis::Action::"nope", resource);"#;
    assert!(e.check("pol_x", unknown_action).is_err());

    // Optional context attributes must be tested with `has` first (strict validation).
    let unguarded = r#"forbid (principal, action, resource) when { context.tool == "shell" };"#;
    assert!(e.check("pol_x", unguarded).is_err());

    let template = "permit (principal == ?principal, action, resource);";
    assert!(e.check("pol_x", template).unwrap_err()[0].message.contains("templates"));
    assert!(e.check("pol_x", "// nothing").is_err());
    assert!(e.check("pol_x", &"x".repeat(MAX_DOCUMENT_BYTES + 1)).is_err());

    // A configured route action is declared in the schema.
    let ok =
        r#"forbid (principal, action == Portcullis::Action::"chat.completions", resource) when { context.hour < 6 };"#;
    assert_eq!(e.check("pol_x", ok).unwrap().statements, 1);
}

#[test]
fn every_statement_of_a_document_is_named_by_the_document() {
    let e = engine();
    let doc = r#"
forbid (principal, action == Portcullis::Action::"memory.write", resource);
forbid (principal, action == Portcullis::Action::"job.submit", resource);"#;
    assert_eq!(e.check("pol_two", doc).unwrap().statements, 2);
    let t = e.compile([Document { id: "pol_two", cedar: doc }]);
    let p = who(PrincipalKind::ApiKey, Some(Role::Admin));
    for action in ["memory.write", "job.submit"] {
        let d = decide(&e, Some(&t), &p, action, None);
        assert_eq!((d.allowed, d.policies), (false, vec![String::from("pol_two")]), "{action}");
    }
    assert!(decide(&e, Some(&t), &p, "conversation.send", None).allowed);
}

#[test]
fn tenant_documents_never_reach_operators_or_tenant_management() {
    let e = engine();
    let permit_all = "permit (principal, action, resource);";
    let forbid_all = "forbid (principal, action, resource);";
    let t = e.compile([Document { id: "pol_all", cedar: permit_all }]);
    let viewer = who(PrincipalKind::ApiKey, Some(Role::Viewer));
    // A tenant may widen its own roles …
    assert!(decide(&e, Some(&t), &viewer, "keys.write", None).allowed);
    // … but never into the platform.
    assert!(!decide(&e, Some(&t), &viewer, "tenants.manage", None).allowed);
    let t = e.compile([Document { id: "pol_none", cedar: forbid_all }]);
    let op = Principal::system_operator("op");
    assert!(decide(&e, Some(&t), &op, "keys.write", None).allowed);
}

#[test]
fn a_stored_document_that_no_longer_parses_denies_everything() {
    let e = engine();
    let t =
        e.compile([Document { id: "pol_ok", cedar: SHELL_ADMIN_ONLY }, Document { id: "pol_bad", cedar: "permit (" }]);
    let admin = who(PrincipalKind::ApiKey, Some(Role::Admin));
    let d = decide(&e, Some(&t), &admin, "tenant.read", None);
    assert!(!d.allowed);
    assert_eq!(d.policies, vec![String::from("pol_bad")]);
}

#[test]
fn context_carries_time_address_and_caller_fields() {
    let e = engine();
    let doc = r#"
forbid (principal, action, resource) when { context has ip && context.ip.isInRange(ip("10.0.0.0/8")) };
forbid (principal, action, resource) when { context.weekday == 7 && context.hour >= 22 };
forbid (principal, action, resource) when { context has tool_args && context.tool_args like "*rm -rf*" };
forbid (principal, action, resource) when { context.metadata.contains("env=prod") };"#;
    e.check("pol_ctx", doc).unwrap();
    let t = e.compile([Document { id: "pol_ctx", cedar: doc }]);
    let p = who(PrincipalKind::ApiKey, Some(Role::Admin));
    // 2023-11-14T22:13:20Z was a Tuesday.
    let base = ContextInput::at(1_700_000_000_000);
    let ok = |ctx: &ContextInput| {
        e.decide(Some(&t), &DecisionRequest { principal: &p, action: "tool.request", resource: None, context: ctx })
            .allowed
    };
    assert!(ok(&base));
    assert!(!ok(&ContextInput { ip: "10.1.2.3".parse().ok(), ..base.clone() }));
    assert!(ok(&ContextInput { ip: "192.0.2.1".parse().ok(), ..base.clone() }));
    // Sunday 2023-11-19T22:00:00Z.
    assert!(!ok(&ContextInput::at(1_700_431_200_000)));
    assert!(ok(&ContextInput::at(1_700_431_200_000 - 3_600_000)));
    let v = serde_json::json!({ "tool_args": { "cmd": "rm -rf /" } });
    assert!(!ok(&base.clone().with_caller_context(Some(&v), None)));
    let v = serde_json::json!({ "metadata": { "env": "prod", "n": 3 } });
    assert!(!ok(&base.clone().with_caller_context(Some(&v), None)));
    let v = serde_json::json!({ "message": "héllo", "metadata": { "env": "dev" } });
    let c = base.clone().with_caller_context(Some(&v), None);
    assert_eq!(c.message_length, Some(5));
    assert!(ok(&c));
}

#[test]
fn slicing_by_action_and_resource_never_changes_an_answer() {
    let e = engine();
    let docs = [
        ("pol_any", r#"forbid (principal, action, resource) when { context has tool && context.tool == "rm" };"#),
        (
            "pol_group",
            r#"forbid (principal in Portcullis::Role::"viewer", action in Portcullis::Action::"read", resource) when { context.hour == 3 };"#,
        ),
        (
            "pol_exec",
            r#"permit (principal in Portcullis::Role::"viewer", action in [Portcullis::Action::"execute"], resource == Portcullis::Tool::"search");"#,
        ),
        (
            "pol_eq",
            r#"forbid (principal, action == Portcullis::Action::"tool.request", resource == Portcullis::Tool::"shell") unless { principal.role == "admin" };"#,
        ),
        (
            "pol_is",
            r#"forbid (principal, action == Portcullis::Action::"memory.write", resource is Portcullis::Memory) when { context has message_length && context.message_length > 10 };"#,
        ),
        (
            "pol_list",
            r#"forbid (principal, action in [Portcullis::Action::"job.submit", Portcullis::Action::"chat.completions"], resource == Portcullis::Route::"/chat");"#,
        ),
        (
            "pol_keys",
            r#"permit (principal in Portcullis::Role::"service", action == Portcullis::Action::"keys.read", resource);"#,
        ),
    ];
    for (id, cedar) in docs {
        e.check(id, cedar).unwrap_or_else(|p| panic!("{id}: {p:?}"));
    }
    let sliced = e.compile(docs.iter().map(|(id, cedar)| Document { id, cedar }));
    let mut flat = Slice { general: e.builtin.clone(), by_resource: HashMap::new() };
    for (id, cedar) in docs {
        for p in parse_document(id, cedar).unwrap().policies() {
            flat.general.add(p.clone()).unwrap();
        }
    }
    // (`tenants.manage` is refused to tenant callers before any policy is consulted.)
    let mut actions: Vec<String> = e.actions.keys().filter(|a| *a != "tenants.manage").cloned().collect();
    actions.push(String::from("undeclared.thing"));
    let resources = [
        None,
        Some(("tool", "shell")),
        Some(("tool", "search")),
        Some(("memory", "m1")),
        Some(("route", "/chat")),
        Some(("widget", "w")),
    ];
    let contexts = [
        ContextInput::at(0),
        ContextInput { tool: Some(String::from("rm")), message_length: Some(50), ..ContextInput::at(3 * 3_600_000) },
    ];
    let mut checked = 0;
    for role in Role::ALL {
        let p = who(PrincipalKind::ApiKey, Some(role));
        for a in &actions {
            for r in resources {
                for ctx in &contexts {
                    let req = DecisionRequest { principal: &p, action: a, resource: r, context: ctx };
                    assert_eq!(e.decide(Some(&sliced), &req), e.run(&flat, &req), "{role} {a} {r:?} {ctx:?}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500);
    // And the slices do hold only what applies: `tool.request` on `search` evaluates no `pol_eq`.
    assert!(sliced.actions["tool.request"].by_resource.contains_key(&uid("Tool", "shell").unwrap()));
    assert!(!sliced.actions["memory.write"].by_resource.contains_key(&uid("Tool", "shell").unwrap()));
}
