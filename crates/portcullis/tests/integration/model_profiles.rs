//! Model profiles end to end: created, read, changed and deleted with prices that come back
//! exactly as given; refused (400, nothing stored, nothing claimed in the log) when invalid and
//! (409) when the role and deployment mode are taken; read by every tenant reader, written by
//! admins and operators only, kept per tenant, every write audited with its author; and the
//! same from the CLI.
use crate::harness::{Server, problem};
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};

/// A server with one tenant and an admin key in it.
struct Setup {
    s: Server,
    op: String,
    tenant: String,
    admin_id: String,
    admin: String,
}

fn setup() -> Setup {
    let s = Server::start();
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "acme", "pro");
    let (admin_id, admin) = s.create_key(&op, &tenant, "admin");
    Setup { s, op, tenant, admin_id, admin }
}

/// `method path` with an API key (`pc_…`) or a bearer token.
fn call(s: &Server, method: &str, path: &str, cred: &str) -> RequestBuilder {
    let rb = s.request(method, path);
    if cred.starts_with("pc_") { rb.header("x-api-key", cred) } else { rb.bearer_auth(cred) }
}

fn profile(role: &str, mode: &str) -> Value {
    json!({
        "role": role,
        "deployment_mode": mode,
        "model": "gpt-4o-mini",
        "base_url": "https://api.openai.com/v1",
        "temperature": 0.7,
        "input_price_per_1k": 0.00015,
        "output_price_per_1k": 0.0006,
    })
}

/// Creates a profile that must be accepted; returns what the API answered.
fn created(s: &Server, cred: &str, body: &Value) -> Value {
    let r = call(s, "POST", "/v1/model-profiles", cred).json(body).send().unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 201, "{body}: {v}");
    v
}

fn id_of(p: &Value) -> String {
    p["id"].as_str().unwrap().to_owned()
}

fn list(s: &Server, cred: &str) -> Vec<Value> {
    let r = call(s, "GET", "/v1/model-profiles", cred).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["items"].as_array().unwrap().clone()
}

fn get(s: &Server, cred: &str, id: &str) -> Value {
    let r = call(s, "GET", &format!("/v1/model-profiles/{id}"), cred).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// The writable fields of a profile as the API shows it.
fn writable(v: &Value) -> Value {
    let keys =
        ["role", "deployment_mode", "model", "base_url", "temperature", "input_price_per_1k", "output_price_per_1k"];
    Value::Object(keys.iter().map(|k| ((*k).to_owned(), v[*k].clone())).collect())
}

#[test]
fn profiles_round_trip_with_exact_prices_and_every_write_is_audited_with_its_author() {
    let Setup { s, op, tenant, admin_id, admin } = setup();
    let key_actor = format!("key:{admin_id}");

    // Create: every field comes back as given, the prices exactly.
    let body = profile("chat", "realtime");
    let p = created(&s, &admin, &body);
    let id = id_of(&p);
    let hex = id.strip_prefix("mp_").unwrap_or_else(|| panic!("mp_ id: {id}"));
    assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(writable(&p), body, "{p}");
    assert_eq!(p["input_price_per_1k"].as_f64(), Some(0.00015));
    assert_eq!(p["output_price_per_1k"].as_f64(), Some(0.0006));
    assert_eq!(p["created_by"], key_actor.as_str());
    assert_eq!(p["updated_by"], key_actor.as_str());
    assert_eq!(p["created_at"], p["updated_at"]);
    assert!(p["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{p}");
    assert_eq!(get(&s, &admin, &id), p, "a read shows what the create answered");

    // Other prices at the edges of the range and precision.
    for (i, (input, output)) in [(0.0, 1000.0), (0.000001, 12.345678), (2.5, 0.01)].into_iter().enumerate() {
        let mut b = profile("edges", &format!("m{i}"));
        b["input_price_per_1k"] = json!(input);
        b["output_price_per_1k"] = json!(output);
        let v = created(&s, &admin, &b);
        let got = get(&s, &admin, &id_of(&v));
        assert_eq!(got["input_price_per_1k"].as_f64(), Some(input), "{got}");
        assert_eq!(got["output_price_per_1k"].as_f64(), Some(output), "{got}");
        let r = call(&s, "DELETE", &format!("/v1/model-profiles/{}", id_of(&v)), &admin).send().unwrap();
        assert_eq!(r.status(), 204);
    }

    // List: ordered by role, then deployment mode.
    created(&s, &admin, &profile("chat", "batch"));
    let mut local = profile("agent", "self-hosted");
    local["base_url"] = json!("http://[::1]:11434/v1");
    local["model"] = json!("llama3.1:70b");
    local["temperature"] = json!(0);
    created(&s, &admin, &local);
    let pairs: Vec<(String, String)> = list(&s, &admin)
        .iter()
        .map(|v| (v["role"].as_str().unwrap().to_owned(), v["deployment_mode"].as_str().unwrap().to_owned()))
        .collect();
    let want = [("agent", "self-hosted"), ("chat", "batch"), ("chat", "realtime")];
    assert_eq!(pairs, want.map(|(r, m)| (r.to_owned(), m.to_owned())).to_vec());

    // Update: any subset; the rest keeps its value.
    let path = format!("/v1/model-profiles/{id}");
    let r = call(&s, "PUT", &path, &admin).json(&json!({"temperature": 0.2, "output_price_per_1k": 0.0012})).send();
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    let u: Value = r.json().unwrap();
    let mut expect = body.clone();
    expect["temperature"] = json!(0.2);
    expect["output_price_per_1k"] = json!(0.0012);
    assert_eq!(writable(&u), expect, "{u}");
    assert_eq!(
        (u["id"].as_str(), &u["created_at"], &u["created_by"]),
        (Some(id.as_str()), &p["created_at"], &p["created_by"])
    );
    assert_eq!(get(&s, &admin, &id), u);

    // An operator changes it inside the tenant: the update names the operator.
    let r = s
        .request("PUT", &path)
        .bearer_auth(&op)
        .header("x-tenant-id", &tenant)
        .json(&json!({"model": "gpt-4o", "deployment_mode": "interactive", "base_url": "https://llm.internal:8443/openai"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let u: Value = r.json().unwrap();
    assert_eq!((u["model"].as_str(), u["deployment_mode"].as_str()), (Some("gpt-4o"), Some("interactive")), "{u}");
    assert_eq!(u["updated_by"], "user:admin@localhost");
    assert_eq!(u["created_by"], key_actor.as_str());

    // Delete: gone from reads and the list.
    assert_eq!(call(&s, "DELETE", &path, &admin).send().unwrap().status(), 204);
    assert_eq!(problem(call(&s, "GET", &path, &admin).send().unwrap()).0, 404);
    assert_eq!(problem(call(&s, "DELETE", &path, &admin).send().unwrap()).0, 404);
    assert!(list(&s, &admin).iter().all(|v| v["id"] != id.as_str()));
    assert_eq!(list(&s, &admin).len(), 2);

    // Each write is one event, before the change, naming who made it and what it says.
    let of_id = |action: &str| -> Vec<Value> {
        s.audit(&op, &format!("action={action}&result=success"))
            .into_iter()
            .filter(|e| e["resource_id"] == id.as_str())
            .collect()
    };
    let creates = of_id("model_profile.create");
    assert_eq!(creates.len(), 1, "{creates:?}");
    let e = &creates[0];
    assert_eq!(e["result"], "success");
    assert_eq!(e["user_id"], key_actor.as_str(), "{e}");
    assert_eq!(e["tenant_id"], tenant.as_str());
    assert_eq!(e["resource_type"], "model_profile");
    let m = &e["metadata"];
    assert_eq!(m["profile_role"], "chat", "{e}");
    assert_eq!(m["role"], "admin", "the caller's role stays the caller's: {e}");
    assert_eq!(m["deployment_mode"], "realtime");
    assert_eq!(m["model"], "gpt-4o-mini");
    assert_eq!(m["base_url"], "https://api.openai.com/v1");
    assert_eq!(m["input_price_per_1k"].as_f64(), Some(0.00015), "{e}");
    assert_eq!(m["output_price_per_1k"].as_f64(), Some(0.0006), "{e}");
    let updates = of_id("model_profile.update");
    let actors: Vec<&str> = updates.iter().map(|e| e["user_id"].as_str().unwrap()).collect();
    assert_eq!(actors, vec!["user:admin@localhost", key_actor.as_str()], "newest first: {updates:?}");
    assert_eq!(updates[0]["metadata"]["model"], "gpt-4o");
    assert_eq!(updates[0]["metadata"]["operator_cross_tenant"], true, "{}", updates[0]);
    assert_eq!(updates[1]["metadata"]["output_price_per_1k"].as_f64(), Some(0.0012));
    let deletes = of_id("model_profile.delete");
    assert_eq!(deletes.len(), 1, "one delete, none for the repeated one: {deletes:?}");
    assert_eq!(deletes[0]["user_id"], key_actor.as_str());
    assert_eq!(deletes[0]["metadata"]["deployment_mode"], "interactive");
    // 3 edge profiles + 3 listed.
    assert_eq!(s.audit(&op, "action=model_profile.create").len(), 6);
    assert_eq!(s.audit(&op, "action=model_profile.delete&result=success").len(), 4);
    // The repeated delete found nothing: recorded as such, not as a deletion.
    let missed = s.audit(&op, "action=model_profile.delete&result=denied");
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0]["reason"], "not_found");
}

#[test]
fn invalid_profiles_are_refused_naming_the_field_and_nothing_is_stored_or_recorded() {
    let Setup { s, op, admin, .. } = setup();
    let with = |field: &str, value: Value| {
        let mut b = profile("chat", "realtime");
        b[field] = value;
        b
    };
    let without = |field: &str| {
        let mut b = profile("chat", "realtime");
        b.as_object_mut().unwrap().remove(field);
        b
    };
    let cases = [
        ("uppercase role", with("role", json!("Chat")), "role"),
        ("role with a space", with("role", json!("chat bot")), "role"),
        ("empty role", with("role", json!("")), "role"),
        ("long mode", with("deployment_mode", json!("m".repeat(65))), "deployment_mode"),
        ("mode with a slash", with("deployment_mode", json!("a/b")), "deployment_mode"),
        ("empty model", with("model", json!("")), "model"),
        ("model with a newline", with("model", json!("gpt\n4")), "model"),
        ("long model", with("model", json!("m".repeat(129))), "model"),
        ("negative input price", with("input_price_per_1k", json!(-0.001)), "input_price_per_1k"),
        ("negative output price", with("output_price_per_1k", json!(-1)), "output_price_per_1k"),
        ("price above 1000", with("output_price_per_1k", json!(1000.5)), "output_price_per_1k"),
        ("price finer than a micro-USD", with("input_price_per_1k", json!(0.0000001)), "input_price_per_1k"),
        ("price as text", with("input_price_per_1k", json!("0.1")), "input_price_per_1k"),
        ("temperature 3", with("temperature", json!(3)), "temperature"),
        ("negative temperature", with("temperature", json!(-0.5)), "temperature"),
        ("not a URL", with("base_url", json!("not a url")), "base_url"),
        ("ftp URL", with("base_url", json!("ftp://files.example.com")), "base_url"),
        ("URL without a host", with("base_url", json!("https:///v1")), "base_url"),
        ("URL with credentials", with("base_url", json!("https://u:p@api.example.com")), "base_url"),
        ("URL with a query", with("base_url", json!("https://api.example.com/v1?key=sk")), "base_url"),
        ("URL with a bad port", with("base_url", json!("http://localhost:99999")), "base_url"),
        ("long URL", with("base_url", json!(format!("https://a.example/{}", "p".repeat(2048)))), "base_url"),
        ("unknown field", with("colour", json!("blue")), "colour"),
        ("missing field", without("model"), "model"),
    ];
    for (what, body, field) in &cases {
        let (status, v) = problem(call(&s, "POST", "/v1/model-profiles", &admin).json(body).send().unwrap());
        assert_eq!(status, 400, "{what}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| d.contains(field)), "{what}: detail names `{field}`: {v}");
    }
    assert!(list(&s, &admin).is_empty(), "nothing was stored");
    assert!(s.audit(&op, "action=model_profile.create").is_empty(), "no model_profile.create event after a 400");

    // The same checks guard changes; a refused change changes nothing and is not recorded.
    let p = created(&s, &admin, &profile("chat", "realtime"));
    let path = format!("/v1/model-profiles/{}", id_of(&p));
    for (what, body, field) in [
        ("nothing to change", json!({}), "nothing"),
        ("temperature 3", json!({"temperature": 3}), "temperature"),
        ("negative price", json!({"output_price_per_1k": -0.5}), "output_price_per_1k"),
        ("bad URL", json!({"base_url": "localhost:8080"}), "base_url"),
        ("bad role", json!({"role": "Chat!"}), "role"),
        ("unknown field", json!({"temperature": 1, "version": 2}), "version"),
        ("read-only field", json!({"id": "mp_0"}), "id"),
    ] {
        let (status, v) = problem(call(&s, "PUT", &path, &admin).json(&body).send().unwrap());
        assert_eq!(status, 400, "PUT {what}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| d.contains(field)), "PUT {what}: names `{field}`: {v}");
    }
    let (status, _) = problem(
        call(&s, "POST", "/v1/model-profiles", &admin)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .unwrap(),
    );
    assert_eq!(status, 400, "malformed JSON");
    assert_eq!(get(&s, &admin, &id_of(&p)), p, "unchanged");
    assert_eq!(list(&s, &admin).len(), 1);
    assert!(s.audit(&op, "action=model_profile.update").is_empty(), "no model_profile.update event after a 400");
    assert_eq!(s.audit(&op, "action=model_profile.create").len(), 1);
}

#[test]
fn a_role_and_deployment_mode_hold_one_profile_and_a_refused_duplicate_is_not_recorded() {
    let Setup { s, op, admin, .. } = setup();
    let first = created(&s, &admin, &profile("chat", "realtime"));
    let mut dup = profile("chat", "realtime");
    dup["model"] = json!("another-model");
    let (status, v) = problem(call(&s, "POST", "/v1/model-profiles", &admin).json(&dup).send().unwrap());
    assert_eq!(status, 409, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("chat") && d.contains("realtime")), "{v}");

    // Same role in another mode, or another role in the same mode, is fine.
    let batch = created(&s, &admin, &profile("chat", "batch"));
    created(&s, &admin, &profile("planner", "realtime"));
    // A change onto a taken pair is refused too; onto its own pair it is not.
    let batch_path = format!("/v1/model-profiles/{}", id_of(&batch));
    let (status, v) =
        problem(call(&s, "PUT", &batch_path, &admin).json(&json!({"deployment_mode": "realtime"})).send().unwrap());
    assert_eq!(status, 409, "{v}");
    let (status, _) = problem(
        call(&s, "PUT", &batch_path, &admin)
            .json(&json!({"role": "planner", "deployment_mode": "realtime", "temperature": 1}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 409);
    assert_eq!(get(&s, &admin, &id_of(&batch)), batch, "the refused changes changed nothing");
    assert_eq!(get(&s, &admin, &id_of(&first))["model"], "gpt-4o-mini");
    assert_eq!(list(&s, &admin).len(), 3);
    assert_eq!(s.audit(&op, "action=model_profile.create").len(), 3, "none for the refused duplicate");
    assert!(s.audit(&op, "action=model_profile.update").is_empty(), "none for the refused changes");

    let r = call(&s, "PUT", &batch_path, &admin).json(&json!({"role": "chat", "deployment_mode": "batch"})).send();
    assert_eq!(r.unwrap().status(), 200, "its own pair is not taken");
    // Once deleted, the pair is free again.
    let first_path = format!("/v1/model-profiles/{}", id_of(&first));
    assert_eq!(call(&s, "DELETE", &first_path, &admin).send().unwrap().status(), 204);
    let r = call(&s, "PUT", &batch_path, &admin).json(&json!({"deployment_mode": "realtime"})).send().unwrap();
    assert_eq!(r.status(), 200);
    created(&s, &admin, &profile("chat", "batch"));
}

#[test]
fn every_reader_reads_profiles_and_only_admins_and_operators_write_them() {
    let Setup { s, op, tenant, admin, .. } = setup();
    let p = created(&s, &admin, &profile("chat", "realtime"));
    let id = id_of(&p);
    let path = format!("/v1/model-profiles/{id}");
    let mut readers: Vec<(String, String)> = Vec::new();
    for role in ["editor", "viewer"] {
        readers.push((format!("{role} key"), s.create_key(&op, &tenant, role).1));
    }
    let (_, email, pw) = s.create_user(&op, &tenant, "viewer");
    readers.push((String::from("viewer user"), s.login(&email, &pw)));

    for (who, cred) in &readers {
        assert_eq!(list(&s, cred).len(), 1, "{who}");
        assert_eq!(get(&s, cred, &id), p, "{who}");
        let writes = [
            call(&s, "POST", "/v1/model-profiles", cred).json(&profile("by", "reader")),
            call(&s, "PUT", &path, cred).json(&json!({"temperature": 1.5})),
            call(&s, "DELETE", &path, cred),
        ];
        for (rb, what) in writes.into_iter().zip(["POST", "PUT", "DELETE"]) {
            let (status, v) = problem(rb.send().unwrap());
            assert_eq!(status, 403, "{who} {what}: {v}");
        }
    }
    let denials: Vec<Value> = s
        .audit(&op, "action=authz.denied")
        .into_iter()
        .filter(|e| e["metadata"]["permission"] == "config.write")
        .collect();
    assert_eq!(denials.len(), 9, "every refused write is audited: {denials:?}");
    assert!(denials.iter().all(|e| e["result"] == "denied" && e["tenant_id"] == tenant.as_str()), "{denials:?}");
    // The service role reads none.
    let (_, service) = s.create_key(&op, &tenant, "service");
    assert_eq!(problem(call(&s, "GET", "/v1/model-profiles", &service).send().unwrap()).0, 403);
    assert_eq!(problem(call(&s, "GET", &path, &service).send().unwrap()).0, 403);
    // Nor does anyone without a credential.
    assert_eq!(problem(s.get("/v1/model-profiles").send().unwrap()).0, 401);
    assert_eq!(problem(s.post("/v1/model-profiles").json(&profile("a", "b")).send().unwrap()).0, 401);

    // Nothing the readers tried changed anything, or was recorded as a change.
    assert_eq!(get(&s, &admin, &id), p);
    assert_eq!(list(&s, &admin).len(), 1);
    assert_eq!(s.audit(&op, "action=model_profile.create").len(), 1);
    assert!(s.audit(&op, "action=model_profile.update").is_empty());
    assert!(s.audit(&op, "action=model_profile.delete").is_empty());

    // An admin user's session writes; an operator writes inside the tenant named by X-Tenant-ID.
    let (_, email, pw) = s.create_user(&op, &tenant, "admin");
    let admin_session = s.login(&email, &pw);
    let by_user = created(&s, &admin_session, &profile("chat", "batch"));
    assert_eq!(by_user["created_by"], format!("user:{email}"));
    let r = s
        .post("/v1/model-profiles")
        .bearer_auth(&op)
        .header("x-tenant-id", &tenant)
        .json(&profile("chat", "operator"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let by_op: Value = r.json().unwrap();
    assert_eq!(by_op["created_by"], "user:admin@localhost");
    let r = s.delete(&format!("/v1/model-profiles/{}", id_of(&by_op))).bearer_auth(&op).header("x-tenant-id", &tenant);
    assert_eq!(r.send().unwrap().status(), 204);
    let (status, v) = problem(s.post("/v1/model-profiles").bearer_auth(&op).json(&profile("x", "y")).send().unwrap());
    assert_eq!(status, 400, "an operator must name the tenant: {v}");
    let (status, _) = problem(s.get("/v1/model-profiles").bearer_auth(&op).send().unwrap());
    assert_eq!(status, 400);
    let r = s.get("/v1/model-profiles").bearer_auth(&op).header("x-tenant-id", &tenant).send().unwrap();
    assert_eq!(r.status(), 200);

    let actors: Vec<(String, String)> = s
        .audit(&op, "action=model_profile.create")
        .iter()
        .map(|e| (e["resource_id"].as_str().unwrap().to_owned(), e["user_id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        actors,
        vec![
            (id_of(&by_op), String::from("user:admin@localhost")),
            (id_of(&by_user), format!("user:{email}")),
            (id.clone(), p["created_by"].as_str().unwrap().to_owned()),
        ],
        "newest first"
    );
    let deletes = s.audit(&op, "action=model_profile.delete");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0]["user_id"], "user:admin@localhost");
    assert_eq!(deletes[0]["tenant_id"], tenant.as_str());
}

#[test]
fn one_tenants_profiles_are_invisible_and_untouchable_from_another() {
    let Setup { s, op, tenant: a_tenant, admin: a_admin, .. } = setup();
    let b_tenant = s.create_tenant(&op, "tenant-b", "pro");
    let (_, b_admin) = s.create_key(&op, &b_tenant, "admin");
    let (_, b_viewer) = s.create_key(&op, &b_tenant, "viewer");
    let a_profile = created(&s, &a_admin, &profile("chat", "realtime"));
    let id = id_of(&a_profile);
    let path = format!("/v1/model-profiles/{id}");

    for cred in [&b_admin, &b_viewer] {
        assert!(list(&s, cred).is_empty(), "B never sees A's profiles");
    }
    let probes = [
        ("GET", Some(&b_viewer), None),
        ("GET", Some(&b_admin), None),
        ("PUT", Some(&b_admin), Some(json!({"temperature": 0}))),
        ("DELETE", Some(&b_admin), None),
    ];
    for (method, cred, body) in &probes {
        let mut rb = call(&s, method, &path, cred.unwrap());
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let (status, v) = problem(rb.send().unwrap());
        assert_eq!(status, 404, "{method}: {v}");
    }
    // An operator acting in B does not reach A's profile either.
    let r = s.get(&path).bearer_auth(&op).header("x-tenant-id", &b_tenant).send().unwrap();
    assert_eq!(problem(r).0, 404);
    let r = s.delete(&path).bearer_auth(&op).header("x-tenant-id", &b_tenant).send().unwrap();
    assert_eq!(problem(r).0, 404);
    // Naming A in X-Tenant-ID is refused.
    let spoofed = [
        call(&s, "GET", "/v1/model-profiles", &b_admin).header("x-tenant-id", &a_tenant),
        call(&s, "GET", &path, &b_admin).header("x-tenant-id", &a_tenant),
        call(&s, "POST", "/v1/model-profiles", &b_admin)
            .header("x-tenant-id", &a_tenant)
            .json(&profile("planted", "x")),
        call(&s, "PUT", &path, &b_admin).header("x-tenant-id", &a_tenant).json(&json!({"model": "planted"})),
        call(&s, "DELETE", &path, &b_admin).header("x-tenant-id", &a_tenant),
    ];
    for rb in spoofed {
        let (status, v) = problem(rb.send().unwrap());
        assert_eq!(status, 403, "{v}");
    }
    // B's 404s are audited in B as lookups that found nothing.
    let misses: Vec<Value> = ["model_profile.read", "model_profile.update", "model_profile.delete"]
        .iter()
        .flat_map(|a| s.audit(&op, &format!("action={a}")))
        .filter(|e| e["resource_id"] == id.as_str())
        .collect();
    assert_eq!(misses.len(), 6, "{misses:?}");
    assert!(misses.iter().all(|e| e["result"] == "denied" && e["tenant_id"] == b_tenant.as_str()), "{misses:?}");

    // A's profile is as it was; B may hold its own profile for the same pair.
    assert_eq!(get(&s, &a_admin, &id), a_profile);
    assert_eq!(list(&s, &a_admin).len(), 1);
    let b_profile = created(&s, &b_admin, &profile("chat", "realtime"));
    assert_ne!(b_profile["id"], a_profile["id"]);
    assert_eq!(list(&s, &a_admin), vec![a_profile.clone()]);
    assert_eq!(list(&s, &b_viewer), vec![b_profile.clone()]);
    assert_eq!(
        problem(call(&s, "GET", &format!("/v1/model-profiles/{}", id_of(&b_profile)), &a_admin).send().unwrap()).0,
        404
    );
}

#[test]
fn the_cli_manages_profiles_with_the_same_checks_and_audit() {
    let s = Server::start();
    let t = s.cli_json(&["tenant", "create", "acme"])["id"].as_str().unwrap().to_owned();
    let fields = [
        "--role",
        "chat",
        "--deployment-mode",
        "realtime",
        "--model",
        "gpt-4o-mini",
        "--base-url",
        "https://api.openai.com/v1",
        "--temperature",
        "0.7",
        "--input-price-per-1k",
        "0.00015",
        "--output-price-per-1k",
        "0.0006",
    ];
    let mut args = vec!["model-profile", "create", "--tenant", t.as_str()];
    args.extend_from_slice(&fields);
    let p = s.cli_json(&args);
    let id = id_of(&p);
    assert!(id.starts_with("mp_"), "{p}");
    assert_eq!(writable(&p), profile("chat", "realtime"), "{p}");
    assert_eq!(p["created_by"], "cli:tester");
    // Plain output of `create` is the id alone.
    let mut plain = vec!["model-profile", "create", "--tenant", t.as_str()];
    plain.extend_from_slice(&fields);
    plain[5] = "planner";
    let out = s.cli(&plain);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let planner = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(planner.starts_with("mp_") && !planner.contains(char::is_whitespace), "{planner}");

    // The server reads what the CLI wrote.
    let op = s.operator_token();
    let (_, viewer) = s.create_key(&op, &t, "viewer");
    assert_eq!(get(&s, &viewer, &id), p);

    let listed = s.cli_json(&["model-profile", "list", "--tenant", &t]);
    let roles: Vec<&str> = listed.as_array().unwrap().iter().map(|v| v["role"].as_str().unwrap()).collect();
    assert_eq!(roles, vec!["chat", "planner"]);
    assert_eq!(s.cli_json(&["model-profile", "get", "--tenant", &t, &id]), p);
    let u = s.cli_json(&[
        "model-profile",
        "update",
        "--tenant",
        &t,
        &id,
        "--temperature",
        "1.1",
        "--input-price-per-1k",
        "0.0025",
        "--mode",
        "batch",
    ]);
    assert_eq!((u["temperature"].as_f64(), u["input_price_per_1k"].as_f64()), (Some(1.1), Some(0.0025)), "{u}");
    assert_eq!(u["deployment_mode"], "batch");
    assert_eq!(u["output_price_per_1k"].as_f64(), Some(0.0006));
    assert_eq!(get(&s, &viewer, &id), u);

    // Bad input names the problem, exits non-zero and changes nothing.
    // `create` with role `fresh` (free) and `flag` set to `value`.
    let with = |flag: &str, value: &str| {
        let mut a: Vec<String> = ["model-profile", "create", "--tenant", t.as_str()].map(String::from).to_vec();
        a.extend(fields.iter().map(|x| x.to_string()));
        a[5] = String::from("fresh");
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = value.to_owned();
        a
    };
    let missing: Vec<String> = {
        let mut a = with("--role", "fresh");
        let i = a.iter().position(|x| x == "--model").unwrap();
        a.drain(i..i + 2);
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with("--role", "Bad Role"), "role"),
        (with("--input-price-per-1k", "-1"), "input_price_per_1k"),
        (with("--output-price-per-1k", "0.00000001"), "output_price_per_1k"),
        (with("--temperature", "3"), "temperature"),
        (with("--base-url", "localhost:8080"), "base_url"),
        (
            with("--role", "chat")
                .into_iter()
                .map(|x| if x == "realtime" { String::from("batch") } else { x })
                .collect(),
            "already has a model profile",
        ),
        (with("--temperature", "warm"), "warm"),
        (missing, "--model"),
        (
            vec!["model-profile", "list", "--tenant", "01900000-0000-7000-8000-000000000000"]
                .into_iter()
                .map(String::from)
                .collect(),
            "no tenant",
        ),
        (
            ["model-profile", "update", "--tenant", t.as_str(), "mp_nope", "--temperature", "1"]
                .map(String::from)
                .to_vec(),
            "no model profile",
        ),
        (
            ["model-profile", "update", "--tenant", t.as_str(), id.as_str()].map(String::from).to_vec(),
            "nothing to change",
        ),
        (["model-profile", "delete", "--tenant", t.as_str(), "mp_nope"].map(String::from).to_vec(), "no model profile"),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.cli(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: error `{err}` should name `{needle}`");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    assert_eq!(s.cli_json(&["model-profile", "list", "--tenant", &t]).as_array().unwrap().len(), 2);
    assert_eq!(get(&s, &viewer, &id), u, "unchanged by the refused commands");

    assert!(s.cli(&["model-profile", "delete", "--tenant", &t, &id]).status.success());
    assert!(!s.cli(&["model-profile", "get", "--tenant", &t, &id]).status.success());
    assert_eq!(problem(call(&s, "GET", &format!("/v1/model-profiles/{id}"), &viewer).send().unwrap()).0, 404);

    for (action, n) in [("model_profile.create", 2), ("model_profile.update", 1), ("model_profile.delete", 1)] {
        let events = s.cli_json(&["audit", "query", "--action", action]);
        let events = events.as_array().unwrap();
        assert_eq!(events.len(), n, "{action}: {events:?}");
        assert!(events.iter().all(|e| e["user_id"] == "cli:tester" && e["tenant_id"] == t.as_str()), "{events:?}");
    }
}
