//! The RBAC matrix: every principal kind × every endpoint × method, expected status from one
//! table written here (the test's own statement of the permission matrix, not the product's).
use crate::harness::{Server, problem};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Anonymous,
    Operator,
    AdminKey,
    EditorKey,
    ViewerKey,
    ServiceKey,
    AdminUser,
    ViewerUser,
}

use Who::*;

const TENANT_ROLES: &[Who] = &[AdminKey, EditorKey, ViewerKey, ServiceKey, AdminUser, ViewerUser];
const ALL: &[Who] = &[Anonymous, Operator, AdminKey, EditorKey, ViewerKey, ServiceKey, AdminUser, ViewerUser];

struct Row {
    method: &'static str,
    /// `{T}` tenant, `{T2}` spare tenant, `{U}` user, `{K}` key, `{FRESH}` a new key per call.
    path: &'static str,
    body: Option<fn() -> Value>,
    /// Who gets the success status; everyone else authenticated gets 403, anonymous 401.
    allowed: &'static [Who],
    ok: u16,
}

fn readers() -> &'static [Who] {
    &[Operator, AdminKey, EditorKey, ViewerKey, AdminUser, ViewerUser]
}

fn table() -> Vec<Row> {
    vec![
        Row { method: "GET", path: "/v1/tenants", body: None, allowed: &[Operator], ok: 200 },
        Row { method: "POST", path: "/v1/tenants", body: Some(|| json!({"name": "m"})), allowed: &[Operator], ok: 201 },
        Row { method: "GET", path: "/v1/tenants/{T}", body: None, allowed: readers(), ok: 200 },
        Row { method: "POST", path: "/v1/tenants/{T2}/suspend", body: None, allowed: &[Operator], ok: 200 },
        Row { method: "POST", path: "/v1/tenants/{T2}/resume", body: None, allowed: &[Operator], ok: 200 },
        Row { method: "GET", path: "/v1/users", body: None, allowed: readers(), ok: 200 },
        Row {
            method: "POST",
            path: "/v1/users",
            body: Some(
                || json!({"email": format!("u{}@example.test", crate::harness::uuid_like()), "password": "a long enough password", "role": "viewer"}),
            ),
            allowed: &[Operator, AdminKey, AdminUser],
            ok: 201,
        },
        Row { method: "GET", path: "/v1/users/{U}", body: None, allowed: readers(), ok: 200 },
        Row { method: "GET", path: "/v1/keys", body: None, allowed: readers(), ok: 200 },
        Row {
            method: "POST",
            path: "/v1/keys",
            body: Some(|| json!({"name": "m", "role": "viewer"})),
            allowed: &[Operator, AdminKey, AdminUser],
            ok: 201,
        },
        Row { method: "GET", path: "/v1/keys/{K}", body: None, allowed: readers(), ok: 200 },
        Row {
            method: "DELETE",
            path: "/v1/keys/{FRESH}",
            body: None,
            allowed: &[Operator, AdminKey, AdminUser],
            ok: 200,
        },
        Row {
            method: "POST",
            path: "/v1/keys/{FRESH}/rotate",
            body: None,
            allowed: &[Operator, AdminKey, AdminUser],
            ok: 201,
        },
        Row { method: "GET", path: "/v1/audit", body: None, allowed: readers(), ok: 200 },
        Row { method: "GET", path: "/v1/tenants/{T}/limits", body: None, allowed: readers(), ok: 200 },
        Row {
            method: "PUT",
            path: "/v1/tenants/{T}/limits",
            body: Some(|| json!({"rate_per_minute": 1000})),
            allowed: &[Operator],
            ok: 200,
        },
        Row { method: "GET", path: "/v1/tenants/{T}/ip-rules", body: None, allowed: readers(), ok: 200 },
        Row {
            method: "PUT",
            path: "/v1/tenants/{T}/ip-rules",
            body: Some(|| json!({"allow": [], "block": ["192.0.2.0/24"]})),
            allowed: &[Operator, AdminKey, AdminUser],
            ok: 200,
        },
        Row {
            method: "GET",
            path: "/v1/auth/whoami",
            body: None,
            allowed: &[Operator, AdminKey, EditorKey, ViewerKey, ServiceKey, AdminUser, ViewerUser],
            ok: 200,
        },
        Row { method: "GET", path: "/healthz", body: None, allowed: ALL, ok: 200 },
        Row { method: "GET", path: "/readyz", body: None, allowed: ALL, ok: 200 },
        Row { method: "GET", path: "/openapi.json", body: None, allowed: ALL, ok: 200 },
    ]
}

struct Fixture {
    s: Server,
    op: String,
    tenant: String,
    spare: String,
    user: String,
    key: String,
    creds: Vec<(Who, String)>,
}

fn fixture() -> Fixture {
    let s = Server::start();
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "matrix", "pro");
    let spare = s.create_tenant(&op, "spare", "free");
    let (user, _, _) = s.create_user(&op, &tenant, "viewer");
    let (key, _) = s.create_key(&op, &tenant, "viewer");
    let mut creds = vec![(Operator, op.clone())];
    for (who, role) in [(AdminKey, "admin"), (EditorKey, "editor"), (ViewerKey, "viewer"), (ServiceKey, "service")] {
        creds.push((who, s.create_key(&op, &tenant, role).1));
    }
    for (who, role) in [(AdminUser, "admin"), (ViewerUser, "viewer")] {
        let (_, email, pw) = s.create_user(&op, &tenant, role);
        creds.push((who, s.login(&email, &pw)));
    }
    Fixture { s, op, tenant, spare, user, key, creds }
}

#[test]
fn every_role_on_every_endpoint_gets_the_status_of_the_table() {
    let f = fixture();
    let mut failures = Vec::new();
    for row in table() {
        for who in ALL {
            let mut path = row
                .path
                .replace("{T}", &f.tenant)
                .replace("{T2}", &f.spare)
                .replace("{U}", &f.user)
                .replace("{K}", &f.key);
            if path.contains("{FRESH}") {
                let (id, _) = f.s.create_key(&f.op, &f.tenant, "viewer");
                path = path.replace("{FRESH}", &id);
            }
            let mut req = f.s.request(row.method, &path);
            // Operators act inside the tenant with X-Tenant-ID on tenant-scoped endpoints.
            let tenant_scoped = ["/v1/users", "/v1/keys", "/v1/audit"].iter().any(|p| path.starts_with(p));
            if let Some(cred) = f.creds.iter().find(|(w, _)| w == who).map(|(_, c)| c) {
                req = req.bearer_auth(cred);
                if *who == Operator && tenant_scoped {
                    req = req.header("x-tenant-id", &f.tenant);
                }
            }
            if let Some(body) = row.body {
                req = req.json(&body());
            }
            let res = req.send().unwrap();
            let got = res.status().as_u16();
            let public = row.allowed == ALL;
            let expected = if row.allowed.contains(who) {
                row.ok
            } else if *who == Anonymous && !public {
                401
            } else {
                403
            };
            if got != expected {
                failures.push(format!("{who:?} {} {} → {got}, expected {expected}", row.method, row.path));
            } else if got >= 400 {
                problem(res);
            }
        }
    }
    assert!(failures.is_empty(), "RBAC matrix mismatches:\n{}", failures.join("\n"));
    assert!(TENANT_ROLES.iter().all(|w| f.creds.iter().any(|(c, _)| c == w)));
}

#[test]
fn denials_are_audited_with_the_permission_and_principal() {
    let f = fixture();
    let viewer = &f.creds.iter().find(|(w, _)| *w == ViewerKey).unwrap().1;
    let r = f.s.post("/v1/keys").bearer_auth(viewer).json(&json!({"name": "x", "role": "admin"})).send().unwrap();
    assert_eq!(r.status(), 403);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let events = f.s.audit(&f.op, "action=authz.denied");
    let e = events.iter().find(|e| e["request_id"] == rid.as_str()).expect("denial audited");
    assert_eq!(e["result"], "denied");
    assert_eq!(e["tenant_id"], f.tenant.as_str());
    assert_eq!(e["metadata"]["permission"], "keys.write");
    assert!(e["user_id"].as_str().unwrap().starts_with("key:"));
}

#[test]
fn operator_must_name_a_tenant_for_tenant_scoped_endpoints() {
    let f = fixture();
    let (status, body) = problem(f.s.get("/v1/keys").bearer_auth(&f.op).send().unwrap());
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("X-Tenant-ID"));
    // An unknown tenant is not found, and audited.
    let r =
        f.s.get("/v1/keys")
            .bearer_auth(&f.op)
            .header("x-tenant-id", "01900000-0000-7000-8000-000000000000")
            .send()
            .unwrap();
    assert_eq!(r.status(), 404);
}
