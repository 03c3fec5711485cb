//! Policy decision latency: the built-in answer (a tenant without policies) and Cedar with 1,
//! 100 and 1 000 tenant documents. Run: `cargo bench -p portcullis-policy`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "benchmark setup fails loudly")]
use portcullis_core::{Principal, PrincipalKind, Role, TenantId};
use portcullis_policy::{ContextInput, DecisionRequest, Document, Engine, TenantPolicies};

fn main() {
    divan::main();
}

fn editor() -> Principal {
    Principal {
        kind: PrincipalKind::ApiKey,
        id: String::from("key:01900000-0000-7000-8000-000000000001"),
        tenant_id: TenantId::parse("01900000-0000-7000-8000-000000000002").ok(),
        role: Some(Role::Editor),
        key_id: None,
        user_id: None,
        session_id: None,
        scopes: Vec::new(),
    }
}

/// `n` documents shaped like real tenant rules: per-tool restrictions on `tool.request`, and every
/// tenth one a rule on another action with a context condition.
fn documents(engine: &Engine, n: usize) -> Vec<(String, String)> {
    let docs: Vec<(String, String)> = (0..n)
        .map(|i| {
            let cedar = if i % 10 == 9 {
                format!(
                    "forbid (principal, action == Portcullis::Action::\"memory.write\", resource) when {{ context has message_length && context.message_length > {} }};",
                    10_000 + i
                )
            } else {
                format!(
                    "forbid (principal, action == Portcullis::Action::\"tool.request\", resource == Portcullis::Tool::\"tool{i}\") unless {{ principal.role == \"admin\" }};"
                )
            };
            (format!("pol_{i:032x}"), cedar)
        })
        .collect();
    for (id, cedar) in &docs {
        if let Err(e) = engine.check(id, cedar) {
            panic!("bench policy does not validate: {e:?}");
        }
    }
    docs
}

fn tenant(engine: &Engine, n: usize) -> TenantPolicies {
    let docs = documents(engine, n);
    engine.compile(docs.iter().map(|(id, cedar)| Document { id, cedar }))
}

#[divan::bench]
fn builtin_only(b: divan::Bencher) {
    let engine = Engine::new([]).unwrap();
    let p = editor();
    let ctx = ContextInput::at(1_700_000_000_000);
    b.bench(|| {
        let req = DecisionRequest {
            principal: &p,
            action: "tool.request",
            resource: Some(("tool", "search")),
            context: &ctx,
        };
        divan::black_box(engine.decide(None, &req))
    });
}

#[divan::bench(args = [1, 100, 1000])]
fn tenant_policies(b: divan::Bencher, n: usize) {
    let engine = Engine::new([]).unwrap();
    let set = tenant(&engine, n);
    let p = editor();
    let ctx = ContextInput { message_length: Some(42), ..ContextInput::at(1_700_000_000_000) };
    let req =
        DecisionRequest { principal: &p, action: "tool.request", resource: Some(("tool", "search")), context: &ctx };
    assert!(engine.decide(Some(&set), &req).allowed);
    b.bench(|| {
        let req = DecisionRequest {
            principal: &p,
            action: "tool.request",
            resource: Some(("tool", "search")),
            context: &ctx,
        };
        divan::black_box(engine.decide(Some(&set), &req))
    });
}

/// Building a tenant's sliced set from stored documents (once per change, then cached).
#[divan::bench(args = [1, 100, 1000])]
fn compile(b: divan::Bencher, n: usize) {
    let engine = Engine::new([]).unwrap();
    let docs = documents(&engine, n);
    b.bench(|| divan::black_box(engine.compile(docs.iter().map(|(id, cedar)| Document { id, cedar })).documents()));
}

/// Validating one document against the schema (on save).
#[divan::bench]
fn validate_on_save(b: divan::Bencher) {
    let engine = Engine::new([]).unwrap();
    let cedar = "forbid (principal, action == Portcullis::Action::\"tool.request\", resource == Portcullis::Tool::\"shell\") unless { principal.role == \"admin\" };";
    b.bench(|| divan::black_box(engine.check("pol_x", cedar).is_ok()));
}
