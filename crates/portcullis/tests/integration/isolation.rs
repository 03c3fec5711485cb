//! The isolation matrix: tenant B's credentials against tenant A's objects on every endpoint.
//!
//! Each probe carries its own `X-Request-ID`, so the audit events it caused are found by request
//! id. After every matrix, tenant A (and B where probes could have changed it) is compared with a
//! snapshot taken before: nothing may have changed.
use crate::harness::{Server, problem, uuid_like};
use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{Value, json};
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A tenant with an admin key, a second ("victim") key, and an admin user with a session.
struct Tenant {
    id: String,
    admin_key_id: String,
    admin_key: String,
    victim_key_id: String,
    user_id: String,
    email: String,
    session: String,
}

struct World {
    s: Server,
    op: String,
    a: Tenant,
    b: Tenant,
}

fn tenant(s: &Server, op: &str, name: &str) -> Tenant {
    let id = s.create_tenant(op, name, "free");
    let (admin_key_id, admin_key) = s.create_key(op, &id, "admin");
    let (victim_key_id, _) = s.create_key(op, &id, "editor");
    let (user_id, email, password) = s.create_user(op, &id, "admin");
    let session = s.login(&email, &password);
    Tenant { id, admin_key_id, admin_key, victim_key_id, user_id, email, session }
}

fn world() -> World {
    let s = Server::start();
    let op = s.operator_token();
    let a = tenant(&s, &op, "tenant-a");
    let b = tenant(&s, &op, "tenant-b");
    World { s, op, a, b }
}

/// How a probe presents its credential.
#[derive(Clone, Copy, Debug)]
enum Via {
    BearerKey,
    XApiKey,
    Session,
}

const ALL_VIA: [Via; 3] = [Via::BearerKey, Via::XApiKey, Via::Session];

impl Via {
    fn apply(self, rb: RequestBuilder, t: &Tenant) -> RequestBuilder {
        match self {
            Via::BearerKey => rb.bearer_auth(&t.admin_key),
            Via::XApiKey => rb.header("x-api-key", &t.admin_key),
            Via::Session => rb.bearer_auth(&t.session),
        }
    }
}

/// One matrix row: method, path, optional JSON body.
type Row = (&'static str, String, Option<Value>);

fn send(s: &Server, row: &Row, via: Via, caller: &Tenant, x_tenant: Option<&str>, rid: &str) -> Response {
    let (method, path, body) = row;
    let mut rb = via.apply(s.request(method, path), caller).header("x-request-id", rid);
    if let Some(t) = x_tenant {
        rb = rb.header("x-tenant-id", t);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    rb.send().unwrap()
}

fn rid(tag: &str, i: usize, via: Via) -> String {
    format!("iso-{tag}-{i}-{via:?}-{}", uuid_like())
}

fn row_name(row: &Row, via: Via) -> String {
    format!("{} {} via {via:?}", row.0, row.1)
}

/// Checks status and the problem document; returns the document, or a failure text instead of
/// panicking so every row is tried.
fn expect_status(r: Response, want: u16, name: &str, rid: &str) -> Result<Value, String> {
    let status = r.status().as_u16();
    if status != want {
        return Err(format!("[{name}] expected {want}, got {status}: {}", r.text().unwrap_or_default()));
    }
    let (_, body) = problem(r);
    if body["request_id"] != rid {
        return Err(format!("[{name}] problem request_id {} is not {rid}", body["request_id"]));
    }
    Ok(body)
}

/// A problem document without its per-request field, to compare two answers.
fn comparable(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("request_id");
    body
}

/// All audit events (operator's view, `query` applied) grouped by request id.
fn events_by_request(w: &World, query: &str) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for e in w.s.audit(&w.op, query) {
        if let Some(r) = e["request_id"].as_str() {
            m.entry(r.to_owned()).or_default().push(e);
        }
    }
    m
}

fn report(failures: &[String], what: &str) {
    assert!(failures.is_empty(), "{what}: {} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// A tenant's observable state as the operator reads it: its record, keys and users. Fields that
/// change by mere use (`last_used_at`) are dropped.
fn snapshot(w: &World, tenant: &str) -> Value {
    let get = |path: &str| -> Value {
        let r = w.s.get(path).bearer_auth(&w.op).header("x-tenant-id", tenant).send().unwrap();
        assert_eq!(r.status(), 200, "operator reads {path} of {tenant}");
        r.json().unwrap()
    };
    let mut keys = get("/v1/keys?limit=500");
    for k in keys["items"].as_array_mut().unwrap() {
        k.as_object_mut().unwrap().remove("last_used_at");
    }
    json!({
        "tenant": get(&format!("/v1/tenants/{tenant}")),
        "keys": keys,
        "users": get("/v1/users?limit=500"),
    })
}

fn all_tenants(w: &World) -> Value {
    let r = w.s.get("/v1/tenants?limit=500").bearer_auth(&w.op).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// A's admin key still authenticates, is active and unrotated, and A is active.
fn assert_a_intact(w: &World) {
    let a = &w.a;
    let r = w.s.get("/v1/keys").bearer_auth(&a.admin_key).send().unwrap();
    assert_eq!(r.status(), 200, "A's admin key still authenticates");
    let r = w.s.get(&format!("/v1/keys/{}", a.admin_key_id)).bearer_auth(&a.admin_key).send().unwrap();
    assert_eq!(r.status(), 200);
    let k: Value = r.json().unwrap();
    assert_eq!(k["status"], "active", "A's admin key is still active: {k}");
    assert!(k["revoked_at"].is_null() && k["rotated_to"].is_null(), "A's admin key not revoked/rotated: {k}");
    let r = w.s.get(&format!("/v1/tenants/{}", a.id)).bearer_auth(&a.admin_key).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "active", "tenant A is still active");
    let r = w.s.get("/v1/auth/whoami").bearer_auth(&a.session).send().unwrap();
    assert_eq!(r.status(), 200, "A's session still works");
}

// ---------------------------------------------------------------------------------------------
// Matrix 1: B's admin uses A's ids
// ---------------------------------------------------------------------------------------------

/// What a by-id probe must leave in the audit log.
#[derive(Clone, Copy)]
enum Trace {
    /// 404; B's log: `<action>` denied `not_found`; A's log: `cross_tenant_access_blocked`.
    NotFound(&'static str),
    /// 403 by role before any lookup; B's log: `authz.denied` `role_lacks_permission`.
    RoleDenied,
    /// 403 from the handler; whether it is audited is asserted by
    /// `b_admin_cannot_escape_its_tenant_and_refusals_are_audited`.
    Refused,
}

#[test]
fn b_admin_cannot_reach_a_objects_by_id() {
    let w = world();
    let (a, b) = (&w.a, &w.b);
    let before_a = snapshot(&w, &a.id);
    let before_tenants = all_tenants(&w);

    let grace = Some(json!({ "grace_period": "1h" }));
    let matrix: Vec<(Row, u16, Trace, &str)> = vec![
        (
            ("GET", format!("/v1/keys/{}", a.admin_key_id), None),
            404,
            Trace::NotFound("key.read"),
            a.admin_key_id.as_str(),
        ),
        (
            ("GET", format!("/v1/keys/{}", a.victim_key_id), None),
            404,
            Trace::NotFound("key.read"),
            a.victim_key_id.as_str(),
        ),
        (
            ("DELETE", format!("/v1/keys/{}", a.admin_key_id), None),
            404,
            Trace::NotFound("key.revoke"),
            a.admin_key_id.as_str(),
        ),
        (
            ("DELETE", format!("/v1/keys/{}", a.victim_key_id), None),
            404,
            Trace::NotFound("key.revoke"),
            a.victim_key_id.as_str(),
        ),
        (
            ("POST", format!("/v1/keys/{}/rotate", a.admin_key_id), None),
            404,
            Trace::NotFound("key.rotate"),
            a.admin_key_id.as_str(),
        ),
        (
            ("POST", format!("/v1/keys/{}/rotate", a.victim_key_id), grace),
            404,
            Trace::NotFound("key.rotate"),
            a.victim_key_id.as_str(),
        ),
        (("GET", format!("/v1/users/{}", a.user_id), None), 404, Trace::NotFound("user.read"), a.user_id.as_str()),
        (("GET", format!("/v1/tenants/{}", a.id), None), 404, Trace::NotFound("tenant.read"), a.id.as_str()),
        (("POST", format!("/v1/tenants/{}/suspend", a.id), None), 403, Trace::RoleDenied, a.id.as_str()),
        (("POST", format!("/v1/tenants/{}/resume", a.id), None), 403, Trace::RoleDenied, a.id.as_str()),
        (("GET", format!("/v1/audit?tenant_id={}", a.id), None), 403, Trace::Refused, a.id.as_str()),
    ];

    let mut failures = Vec::new();
    let mut probes = Vec::new();
    for (i, (row, want, trace, id)) in matrix.iter().enumerate() {
        for via in ALL_VIA {
            let rid = rid("byid", i, via);
            let name = row_name(row, via);
            let r = send(&w.s, row, via, b, None, &rid);
            if r.status().is_success() {
                failures.push(format!("[{name}] SUCCEEDED ({}) on another tenant's object", r.status()));
                continue;
            }
            match expect_status(r, *want, &name, &rid) {
                Err(e) => failures.push(e),
                Ok(body) => {
                    // No existence oracle: a made-up id gets the very same answer.
                    let ghost_row: Row = (row.0, row.1.replace(*id, &random_uuid('7')), row.2.clone());
                    let ghost_rid = rid.replace("byid", "ghost");
                    match expect_status(send(&w.s, &ghost_row, via, b, None, &ghost_rid), *want, &name, &ghost_rid) {
                        Err(e) => failures.push(format!("{e} (made-up id)")),
                        Ok(ghost) if comparable(ghost.clone()) != comparable(body.clone()) => {
                            failures.push(format!("[{name}] answer differs from a made-up id's: {body} vs {ghost}"))
                        }
                        Ok(_) => {}
                    }
                }
            }
            probes.push((name, rid, *trace, *id));
        }
    }

    // The audit trail: B's log says "not found" (no oracle), A's log says who tried.
    let a_log = events_by_request(&w, &format!("tenant_id={}", a.id));
    let b_log = events_by_request(&w, &format!("tenant_id={}", b.id));
    let none = Vec::new();
    for (name, rid, trace, id) in &probes {
        let in_a = a_log.get(rid).unwrap_or(&none);
        let in_b = b_log.get(rid).unwrap_or(&none);
        match trace {
            Trace::NotFound(action) => {
                let denial = in_b.iter().any(|e| {
                    e["action"] == *action
                        && e["result"] == "denied"
                        && e["reason"] == "not_found"
                        && e["resource_id"] == *id
                });
                if !denial {
                    failures.push(format!("[{name}] B's log lacks `{action}` denied not_found: {in_b:?}"));
                }
                let blocked = in_a.iter().any(|e| {
                    e["action"] == "cross_tenant_access_blocked"
                        && e["result"] == "denied"
                        && e["tenant_id"] == a.id.as_str()
                        && e["resource_id"] == *id
                        && e["metadata"]["caller_tenant"] == b.id.as_str()
                });
                if !blocked {
                    failures.push(format!(
                        "[{name}] A's log lacks cross_tenant_access_blocked naming caller_tenant B: {in_a:?}"
                    ));
                }
                if in_b.iter().any(|e| e["action"] == "cross_tenant_access_blocked") {
                    failures.push(format!("[{name}] B's log reveals that the id exists elsewhere: {in_b:?}"));
                }
            }
            Trace::RoleDenied => {
                if !in_b.iter().any(|e| e["action"] == "authz.denied" && e["reason"] == "role_lacks_permission") {
                    failures.push(format!("[{name}] B's log lacks authz.denied role_lacks_permission: {in_b:?}"));
                }
            }
            Trace::Refused => {}
        }
        // A's log gets nothing but the cross-tenant notice: no success, no read of A's data.
        if let Some(e) = in_a.iter().find(|e| e["result"] == "success") {
            failures.push(format!("[{name}] A's log records a success for B's probe: {e}"));
        }
    }
    if snapshot(&w, &a.id) != before_a {
        failures.push(format!("tenant A changed after B's probes: {before_a} -> {}", snapshot(&w, &a.id)));
    }
    if all_tenants(&w) != before_tenants {
        failures.push(String::from("the tenant list changed after B's probes"));
    }
    assert_a_intact(&w);
    report(&failures, "B's admin using A's ids");
}

#[test]
fn b_admin_cannot_escape_its_tenant_and_refusals_are_audited() {
    let w = world();
    let (a, b) = (&w.a, &w.b);
    let before_a = snapshot(&w, &a.id);
    let before_b = snapshot(&w, &b.id);
    let before_tenants = all_tenants(&w);
    let operator_email = format!("escalate-{}@example.test", &uuid_like()[..8]);
    let pw = "correct horse battery staple";

    // (row, status, a denied event must be in B's log)
    let matrix: Vec<(Row, u16, bool)> = vec![
        (
            (
                "POST",
                String::from("/v1/users"),
                Some(json!({ "email": operator_email, "password": pw, "role": "operator" })),
            ),
            403,
            true,
        ),
        (("POST", String::from("/v1/tenants"), Some(json!({ "name": "escape", "tier": "free" }))), 403, true),
        (("GET", String::from("/v1/tenants"), None), 403, true),
        (("POST", format!("/v1/tenants/{}/suspend", b.id), None), 403, true),
        (("GET", format!("/v1/audit?tenant_id={}", a.id), None), 403, true),
        // A tenant named in the body or query is an unknown field, never a tenant switch.
        (
            (
                "POST",
                String::from("/v1/users"),
                Some(json!({ "email": "x@example.test", "password": pw, "role": "admin", "tenant_id": a.id })),
            ),
            400,
            false,
        ),
        (
            ("POST", String::from("/v1/keys"), Some(json!({ "name": "x", "role": "admin", "tenant_id": a.id }))),
            400,
            false,
        ),
        (("GET", format!("/v1/keys?tenant_id={}", a.id), None), 400, false),
        (("GET", format!("/v1/users?tenant_id={}", a.id), None), 400, false),
    ];
    let mut failures = Vec::new();
    let mut audited = Vec::new();
    for (i, (row, want, must_audit)) in matrix.iter().enumerate() {
        for via in ALL_VIA {
            let rid = rid("escape", i, via);
            let name = row_name(row, via);
            let r = send(&w.s, row, via, b, None, &rid);
            if r.status().is_success() {
                failures.push(format!("[{name}] SUCCEEDED ({})", r.status()));
                continue;
            }
            if let Err(e) = expect_status(r, *want, &name, &rid) {
                failures.push(e);
            }
            if *must_audit {
                audited.push((name, rid));
            }
        }
    }
    let b_log = events_by_request(&w, &format!("tenant_id={}", b.id));
    let all_log = events_by_request(&w, "");
    for (name, rid) in &audited {
        if !b_log.get(rid).is_some_and(|es| es.iter().any(|e| e["result"] == "denied")) {
            failures.push(format!(
                "[{name}] the 403 left no denied event in B's log (whole log for this request: {:?})",
                all_log.get(rid)
            ));
        }
    }
    if snapshot(&w, &a.id) != before_a {
        failures.push(String::from("tenant A changed"));
    }
    if snapshot(&w, &b.id) != before_b {
        failures.push(String::from("tenant B changed"));
    }
    if all_tenants(&w) != before_tenants {
        failures.push(String::from("the tenant list changed"));
    }
    let r = w.s.post("/v1/auth/login").json(&json!({ "email": operator_email, "password": pw })).send().unwrap();
    if r.status() != 401 {
        failures.push(format!("an operator account was created by a tenant admin (login answered {})", r.status()));
    }
    assert_a_intact(&w);
    report(&failures, "B's admin leaving its tenant");
}

// ---------------------------------------------------------------------------------------------
// Matrix 2: guessed and malformed ids
// ---------------------------------------------------------------------------------------------

/// A random well-formed (canonical lowercase hyphenated) UUID with version `v`.
fn random_uuid(v: char) -> String {
    let h = uuid_like();
    format!("{}-{}-{v}{}-8{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

#[test]
fn guessed_and_malformed_ids_are_not_found() {
    let w = world();
    let (a, b) = (&w.a, &w.b);
    let before_a = snapshot(&w, &a.id);
    let before_b = snapshot(&w, &b.id);

    // Well-formed ids that exist nowhere: 404 and a not_found denial in B's log.
    let guessed = [random_uuid('7'), random_uuid('4'), String::from("00000000-0000-0000-0000-000000000000")];
    // Malformed ids, including non-canonical spellings of A's real ids.
    let malformed = [
        String::from("../x"),
        String::from("%2e%2e"),
        String::from("..%2Fx"),
        String::from("..%2F..%2F..%2Fetc%2Fpasswd"),
        String::from("%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        String::from("%27%20OR%20%271%27%3D%271"),
        String::from("%00"),
        String::from("%20"),
        String::from("*"),
        a.admin_key_id.to_uppercase(),
        format!("%7B{}%7D", a.admin_key_id),
        format!("{}%20", a.admin_key_id),
        format!("{}%00", a.user_id),
        a.id.to_uppercase(),
        a.admin_key_id.replace('-', ""),
    ];
    let templates: [(&str, &str, &str); 5] = [
        ("GET", "/v1/keys/{}", "key.read"),
        ("DELETE", "/v1/keys/{}", "key.revoke"),
        ("POST", "/v1/keys/{}/rotate", "key.rotate"),
        ("GET", "/v1/users/{}", "user.read"),
        ("GET", "/v1/tenants/{}", "tenant.read"),
    ];
    // Ids of one resource type used as another: still only "not found".
    let crossed: Vec<(Row, &str)> = vec![
        (("GET", format!("/v1/keys/{}", b.user_id), None), "key.read"),
        (("GET", format!("/v1/users/{}", b.admin_key_id), None), "user.read"),
        (("GET", format!("/v1/users/{}", a.admin_key_id), None), "user.read"),
        (("GET", format!("/v1/keys/{}", a.id), None), "key.read"),
        (("GET", format!("/v1/tenants/{}", a.user_id), None), "tenant.read"),
    ];

    let mut rows: Vec<(Row, Option<&str>)> = Vec::new();
    for (method, tpl, action) in templates {
        for id in &guessed {
            rows.push(((method, tpl.replace("{}", id), None), Some(action)));
        }
        for id in &malformed {
            rows.push(((method, tpl.replace("{}", id), None), None));
        }
    }
    rows.extend(crossed.into_iter().map(|(r, a)| (r, Some(a))));

    let mut failures = Vec::new();
    let mut audited = Vec::new();
    for (i, (row, action)) in rows.iter().enumerate() {
        let via = Via::BearerKey;
        let rid = rid("guess", i, via);
        let name = row_name(row, via);
        if let Err(e) = expect_status(send(&w.s, row, via, b, None, &rid), 404, &name, &rid) {
            failures.push(e);
        }
        if let Some(action) = action {
            audited.push((name, rid, *action));
        }
    }
    let b_log = events_by_request(&w, &format!("tenant_id={}", b.id));
    let a_log = events_by_request(&w, &format!("tenant_id={}", a.id));
    for (name, rid, action) in &audited {
        let ok = b_log.get(rid).is_some_and(|es| {
            es.iter().any(|e| e["action"] == *action && e["result"] == "denied" && e["reason"] == "not_found")
        });
        if !ok {
            failures.push(format!("[{name}] B's log lacks `{action}` denied not_found: {:?}", b_log.get(rid)));
        }
    }
    // None of these ids is A's, so A's log must not mention any of these requests.
    for (i, (row, _)) in rows.iter().enumerate() {
        let prefix = format!("iso-guess-{i}-");
        if let Some((_, es)) = a_log.iter().find(|(r, _)| r.starts_with(&prefix)) {
            failures
                .push(format!("[{} {}] A's log has events for a probe that named no A object: {es:?}", row.0, row.1));
        }
    }
    report(&failures, "guessed and malformed ids");

    assert_eq!(snapshot(&w, &a.id), before_a, "tenant A changed");
    assert_eq!(snapshot(&w, &b.id), before_b, "tenant B changed");
    assert_a_intact(&w);
}

// ---------------------------------------------------------------------------------------------
// Matrix 3: spoofed X-Tenant-ID
// ---------------------------------------------------------------------------------------------

/// Every authenticated endpoint, with A's ids and B's own ids.
fn every_endpoint(a: &Tenant, b: &Tenant) -> Vec<Row> {
    let user = json!({ "email": format!("spoof-{}@example.test", &uuid_like()[..8]), "password": "correct horse battery staple", "role": "admin" });
    vec![
        ("GET", String::from("/v1/tenants"), None),
        ("POST", String::from("/v1/tenants"), Some(json!({ "name": "spoofed", "tier": "free" }))),
        ("GET", format!("/v1/tenants/{}", a.id), None),
        ("GET", format!("/v1/tenants/{}", b.id), None),
        ("POST", format!("/v1/tenants/{}/suspend", a.id), None),
        ("POST", format!("/v1/tenants/{}/resume", a.id), None),
        ("POST", format!("/v1/tenants/{}/suspend", b.id), None),
        ("GET", String::from("/v1/users"), None),
        ("POST", String::from("/v1/users"), Some(user)),
        ("GET", format!("/v1/users/{}", a.user_id), None),
        ("GET", format!("/v1/users/{}", b.user_id), None),
        ("GET", String::from("/v1/keys"), None),
        ("POST", String::from("/v1/keys"), Some(json!({ "name": "spoofed", "role": "admin" }))),
        ("GET", format!("/v1/keys/{}", a.admin_key_id), None),
        ("GET", format!("/v1/keys/{}", b.victim_key_id), None),
        ("DELETE", format!("/v1/keys/{}", a.admin_key_id), None),
        ("DELETE", format!("/v1/keys/{}", b.victim_key_id), None),
        ("POST", format!("/v1/keys/{}/rotate", a.admin_key_id), Some(json!({ "grace_period": "1h" }))),
        ("POST", format!("/v1/keys/{}/rotate", b.victim_key_id), None),
        ("GET", String::from("/v1/audit"), None),
        ("GET", format!("/v1/audit?tenant_id={}", a.id), None),
        ("GET", format!("/v1/audit?tenant_id={}", b.id), None),
        ("GET", String::from("/v1/auth/whoami"), None),
        // Last: if it wrongly succeeded it would end B's session.
        ("POST", String::from("/v1/auth/logout"), None),
    ]
}

#[test]
fn spoofed_x_tenant_id_is_forbidden_everywhere_and_audited() {
    let w = world();
    let (a, b) = (&w.a, &w.b);
    let before_a = snapshot(&w, &a.id);
    let before_b = snapshot(&w, &b.id);
    let before_tenants = all_tenants(&w);

    let mut failures = Vec::new();
    // (name, request id, X-Tenant-ID sent)
    let mut probes: Vec<(String, String, String)> = Vec::new();
    for via in ALL_VIA {
        for (i, row) in every_endpoint(a, b).iter().enumerate() {
            let rid = rid("spoof", i, via);
            let name = format!("{} with X-Tenant-ID A", row_name(row, via));
            let r = send(&w.s, row, via, b, Some(&a.id), &rid);
            if let Err(e) = expect_status(r, 403, &name, &rid) {
                failures.push(e);
            }
            probes.push((name, rid, a.id.clone()));
        }
    }
    // Other spellings of "not my tenant" on a list endpoint.
    let headers = [
        a.id.to_uppercase(),
        format!("{{{}}}", a.id),
        format!(" {}", a.id),
        random_uuid('7'),
        String::from("*"),
        String::from("null"),
        String::from("../"),
        String::new(),
    ];
    for (i, h) in headers.iter().enumerate() {
        let row: Row = ("GET", String::from("/v1/keys"), None);
        let rid = rid("spoofhdr", i, Via::BearerKey);
        let name = format!("GET /v1/keys with X-Tenant-ID {h:?}");
        if let Err(e) = expect_status(send(&w.s, &row, Via::BearerKey, b, Some(h), &rid), 403, &name, &rid) {
            failures.push(e);
        }
        probes.push((name, rid, h.trim().to_owned()));
    }

    let b_log = events_by_request(&w, &format!("tenant_id={}", b.id));
    for (name, rid, sent) in &probes {
        let es = b_log.get(rid).cloned().unwrap_or_default();
        let ok = es.iter().any(|e| {
            e["action"] == "cross_tenant_access_blocked"
                && e["result"] == "denied"
                && e["reason"] == "x_tenant_id_mismatch"
                && e["tenant_id"] == b.id.as_str()
                && e["metadata"]["requested_tenant"].as_str().map(str::trim) == Some(sent.as_str())
        });
        if !ok {
            failures.push(format!("[{name}] B's log lacks cross_tenant_access_blocked x_tenant_id_mismatch: {es:?}"));
        }
        if es.iter().any(|e| e["result"] == "success") {
            failures.push(format!("[{name}] a success was recorded for a spoofed request: {es:?}"));
        }
    }
    report(&failures, "spoofed X-Tenant-ID");

    // Nothing changed anywhere: no key revoked/rotated/created, no user or tenant created.
    assert_eq!(snapshot(&w, &a.id), before_a, "tenant A changed after spoofed requests");
    assert_eq!(snapshot(&w, &b.id), before_b, "tenant B changed after spoofed requests");
    assert_eq!(all_tenants(&w), before_tenants, "the tenant list changed after spoofed requests");
    assert_a_intact(&w);
    let r = w.s.get("/v1/auth/whoami").bearer_auth(&b.session).send().unwrap();
    assert_eq!(r.status(), 200, "B's session survived the spoofed logout");
    // The same credential without the spoofed header works: the 403s were about the header.
    let r = w.s.get("/v1/keys").bearer_auth(&b.admin_key).header("x-tenant-id", &b.id).send().unwrap();
    assert_eq!(r.status(), 200, "B's key with its own X-Tenant-ID is allowed");
}

// ---------------------------------------------------------------------------------------------
// Tampered keys
// ---------------------------------------------------------------------------------------------

/// CRC-32 (IEEE), as the key checksum uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// `head` + its 6-character base62 checksum: a key of valid shape that was never issued.
fn with_valid_checksum(head: &str) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut v = u64::from(crc32(head.as_bytes()));
    let mut check = [b'0'; 6];
    for slot in check.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    format!("{head}{}", std::str::from_utf8(&check).unwrap())
}

fn change_char(key: &str, at: usize) -> String {
    let mut bytes = key.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn tampered_api_keys_are_unauthenticated() {
    let w = world();
    let a = &w.a;
    let key = a.admin_key.as_str();
    assert_eq!(key.len(), 41, "key format pc_ + 32 + 6");
    // The checksum makes the key's own validity the oracle: re-checksummed edits must fail too.
    let edited_body = change_char(key, 10);
    let forged = with_valid_checksum(&edited_body[..35]);
    assert_eq!(forged.len(), key.len());

    let rows: Vec<(&str, String, &[&str])> = vec![
        ("first body character changed", change_char(key, 3), &["malformed_api_key"]),
        ("middle character changed", change_char(key, 20), &["malformed_api_key"]),
        ("last body character changed", change_char(key, 34), &["malformed_api_key"]),
        ("checksum character changed", change_char(key, 40), &["malformed_api_key"]),
        ("one character appended", format!("{key}a"), &["malformed_api_key"]),
        ("last character dropped", key[..40].to_owned(), &["malformed_api_key"]),
        ("edited and re-checksummed", forged, &["unknown_api_key"]),
        ("lower-cased", key.to_lowercase(), &["malformed_api_key", "unknown_api_key"]),
        ("upper-cased body", format!("pc_{}", key[3..].to_uppercase()), &["malformed_api_key", "unknown_api_key"]),
    ];
    let mut failures = Vec::new();
    for (i, (name, tampered, reasons)) in rows.iter().enumerate() {
        if tampered == key {
            continue;
        }
        for header in ["authorization", "x-api-key"] {
            let rid = format!("iso-tamper-{i}-{header}-{}", uuid_like());
            let value = if header == "authorization" { format!("Bearer {tampered}") } else { tampered.clone() };
            let r = w.s.get("/v1/keys").header(header, value).header("x-request-id", &rid).send().unwrap();
            let row = format!("{name} via {header}");
            if let Err(e) = expect_status(r, 401, &row, &rid) {
                failures.push(e);
                continue;
            }
            let events = w.s.audit(&w.op, "action=auth.failure");
            match events.iter().find(|e| e["request_id"] == rid.as_str()) {
                None => failures.push(format!("[{row}] no auth.failure event")),
                Some(e) => {
                    let reason = e["reason"].as_str().unwrap_or_default();
                    if !reasons.contains(&reason) {
                        failures.push(format!("[{row}] reason `{reason}`, expected one of {reasons:?}"));
                    }
                    if e.to_string().contains(tampered.as_str()) || e.to_string().contains(key) {
                        failures.push(format!("[{row}] the audit event contains the presented key: {e}"));
                    }
                }
            }
        }
    }
    report(&failures, "tampered API keys");
    assert_a_intact(&w);
}

// ---------------------------------------------------------------------------------------------
// Lists and response bodies
// ---------------------------------------------------------------------------------------------

fn get_json(w: &World, path: &str, token: &str) -> Value {
    let r = w.s.get(path).bearer_auth(token).send().unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().unwrap()
}

#[test]
fn list_endpoints_never_contain_another_tenants_objects() {
    let w = world();
    let (a, b) = (&w.a, &w.b);
    // Activity in A: more keys and users, a rotation, a revocation.
    w.s.create_key(&w.op, &a.id, "viewer");
    w.s.create_user(&w.op, &a.id, "viewer");
    let r = w.s.post(&format!("/v1/keys/{}/rotate", a.victim_key_id)).bearer_auth(&a.admin_key).send().unwrap();
    assert_eq!(r.status(), 201, "A rotates its own key");
    let rotated_id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_owned();
    let r = w.s.delete(&format!("/v1/keys/{rotated_id}")).bearer_auth(&a.admin_key).send().unwrap();
    assert_eq!(r.status(), 200, "A revokes its own key");

    let a_keys = get_json(&w, "/v1/keys?limit=500", &a.admin_key);
    let mut a_ids: Vec<String> =
        a_keys["items"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_owned()).collect();
    let a_prefixes: Vec<String> =
        a_keys["items"].as_array().unwrap().iter().map(|k| k["prefix"].as_str().unwrap().to_owned()).collect();
    let a_users = get_json(&w, "/v1/users?limit=500", &a.admin_key);
    a_ids.extend(a_users["items"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_owned()));
    a_ids.push(a.id.clone());
    assert!(a_ids.len() >= 7, "positive control: A sees its own objects: {a_ids:?}");
    assert!(a_keys.to_string().contains(&a.admin_key_id) && a_users.to_string().contains(&a.email));

    let paths = [
        String::from("/v1/keys"),
        String::from("/v1/keys?limit=500"),
        String::from("/v1/keys?limit=1"),
        format!("/v1/keys?cursor={}", "0"),
        format!("/v1/keys?cursor={}", a.admin_key_id),
        String::from("/v1/keys?cursor=%27%20OR%201%3D1%20--"),
        String::from("/v1/users"),
        String::from("/v1/users?limit=500"),
        String::from("/v1/users?cursor=0"),
        format!("/v1/users?cursor={}", a.user_id),
        String::from("/v1/audit?limit=1000"),
        format!("/v1/audit?tenant_id={}", b.id),
        String::from("/v1/audit?action=key.create"),
        String::from("/v1/audit?action=tenant.create"),
        format!("/v1/tenants/{}", b.id),
    ];
    let mut failures = Vec::new();
    for via in ALL_VIA {
        for (i, path) in paths.iter().enumerate() {
            let row: Row = ("GET", path.clone(), None);
            let name = row_name(&row, via);
            let r = send(&w.s, &row, via, b, None, &rid("list", i, via));
            if r.status() != 200 {
                failures.push(format!("[{name}] expected 200, got {}", r.status()));
                continue;
            }
            let body: Value = r.json().unwrap();
            let text = body.to_string();
            for leaked in a_ids.iter().chain(a_prefixes.iter()).chain([&a.email]) {
                if text.contains(leaked.as_str()) {
                    failures.push(format!("[{name}] contains A's `{leaked}`"));
                }
            }
            for item in body["items"].as_array().into_iter().flatten() {
                if item.get("tenant_id").is_some_and(|t| *t != b.id.as_str()) {
                    failures.push(format!("[{name}] item of another tenant: {item}"));
                }
            }
        }
    }
    // Follow B's key pagination to the end: every page stays in B.
    let mut cursor = String::new();
    let mut seen = 0;
    for _ in 0..20 {
        let page = get_json(&w, &format!("/v1/keys?limit=1{cursor}"), &b.admin_key);
        for item in page["items"].as_array().unwrap() {
            seen += 1;
            if item["tenant_id"] != b.id.as_str() {
                failures.push(format!("[paginated keys] item of another tenant: {item}"));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    if seen != 2 {
        failures.push(format!("[paginated keys] B has 2 keys, pagination showed {seen}"));
    }
    // Filtering B's log by A's principal finds nothing, though A's log has its events. (Run
    // last: B's own `audit.query` event records the filter it was given.)
    let by_a = format!("user_id=key:{}", a.admin_key_id);
    assert!(!w.s.audit(&w.op, &format!("tenant_id={}&{by_a}", a.id)).is_empty(), "positive control: A's key acted");
    let seen_by_b = get_json(&w, &format!("/v1/audit?{by_a}"), &b.admin_key);
    if seen_by_b["items"].as_array().is_none_or(|i| !i.is_empty()) {
        failures.push(format!("[GET /v1/audit?{by_a}] B sees events of A's key: {seen_by_b}"));
    }
    report(&failures, "B's lists");

    // Tenant management lists are operators' only.
    let (status, _) = problem(w.s.get("/v1/tenants").bearer_auth(&b.admin_key).send().unwrap());
    assert_eq!(status, 403, "a tenant admin cannot list tenants");
}

/// Field names that must never appear in an API response body.
const SECRET_FIELDS: [&str; 7] = ["hash", "key_hash", "hash_hex", "password_hash", "password", "pepper", "secret"];

fn secret_fields(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if SECRET_FIELDS.contains(&k.as_str()) {
                    out.push(format!("{path}.{k}"));
                }
                secret_fields(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                secret_fields(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn responses_never_expose_secrets_and_keys_only_on_create_or_rotate() {
    let w = world();
    let b = &w.b;
    let password = "another correct horse battery";
    let call = |method: &str, path: &str, body: Option<Value>, want: u16| -> Value {
        let mut rb = w.s.request(method, path).bearer_auth(&b.admin_key);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status(), want, "{method} {path}");
        r.json().unwrap()
    };

    let created =
        call("POST", "/v1/keys", Some(json!({ "name": "probe", "role": "viewer", "expires_in": "30d" })), 201);
    let new_key = created["key"].as_str().expect("create returns the key").to_owned();
    let new_id = created["id"].as_str().unwrap().to_owned();
    let rotated = call("POST", &format!("/v1/keys/{new_id}/rotate"), Some(json!({ "grace_period": "1h" })), 201);
    let rotated_key = rotated["key"].as_str().expect("rotate returns the new key").to_owned();
    assert_ne!(rotated_key, new_key);
    let rotated_id = rotated["id"].as_str().unwrap().to_owned();
    let user = call(
        "POST",
        "/v1/users",
        Some(json!({ "email": "secret-check@example.test", "password": password, "role": "viewer" })),
        201,
    );
    let user_id = user["id"].as_str().unwrap().to_owned();

    // (what, body, may carry `key`)
    let mut bodies: Vec<(String, Value, bool)> = vec![
        (String::from("POST /v1/keys"), created, true),
        (format!("POST /v1/keys/{new_id}/rotate"), rotated, true),
        (String::from("POST /v1/users"), user, false),
    ];
    for path in [
        String::from("/v1/keys"),
        format!("/v1/keys/{new_id}"),
        format!("/v1/keys/{rotated_id}"),
        format!("/v1/keys/{}", b.admin_key_id),
        String::from("/v1/users"),
        format!("/v1/users/{user_id}"),
        format!("/v1/users/{}", b.user_id),
        format!("/v1/tenants/{}", b.id),
        String::from("/v1/auth/whoami"),
    ] {
        bodies.push((format!("GET {path}"), call("GET", &path, None, 200), false));
    }
    bodies.push((
        format!("DELETE /v1/keys/{rotated_id}"),
        call("DELETE", &format!("/v1/keys/{rotated_id}"), None, 200),
        false,
    ));

    let mut failures = Vec::new();
    for (what, body, may_have_key) in &bodies {
        let mut found = Vec::new();
        secret_fields(body, "$", &mut found);
        if !found.is_empty() {
            failures.push(format!("[{what}] exposes {found:?}: {body}"));
        }
        let items: Vec<&Value> = match body["items"].as_array() {
            Some(items) => items.iter().collect(),
            None => vec![body],
        };
        for item in items {
            if !may_have_key && item.get("key").is_some() {
                failures.push(format!("[{what}] has a `key` field: {item}"));
            }
        }
        let text = body.to_string();
        for secret in [new_key.as_str(), rotated_key.as_str(), b.admin_key.as_str(), password] {
            let allowed = *may_have_key && (body["key"] == secret);
            if !allowed && text.contains(secret) {
                failures.push(format!("[{what}] contains a secret ({}…)", &secret[..6]));
            }
        }
    }
    // Nor does the audit log ever hold a full key or a password.
    let log = Value::Array(w.s.audit(&w.op, "")).to_string();
    for secret in [new_key.as_str(), rotated_key.as_str(), b.admin_key.as_str(), w.a.admin_key.as_str(), password] {
        if log.contains(secret) {
            failures.push(format!("[audit log] contains a secret ({}…)", &secret[..6]));
        }
    }
    report(&failures, "secret fields");
}
