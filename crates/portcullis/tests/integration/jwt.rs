//! JWT bearer tokens against the real binary: valid HS256/RS256/EdDSA tokens, role checks, and
//! the known traps (alg none, algorithm confusion, kid injection, jku/x5u/jwk headers, missing or
//! wrong registered claims, leeway, suspended tenants, tampered payloads, JWKS files).
//!
//! Every rejected token must answer 401 problem+json and leave an `auth.failure` event carrying
//! the request id, so each probe sends its own `X-Request-ID` and the event is looked up by it.
use crate::harness::{Server, eventually, problem, uuid_like};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::blocking::Response;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const ISS: &str = "https://issuer.test";
const AUD: &str = "portcullis";
const HS_SECRET: &str = "at-least-32-bytes-of-shared-secret-here";

// ---------------------------------------------------------------------------------------------
// Key material (generated once per test binary with the openssl CLI)
// ---------------------------------------------------------------------------------------------

/// PEM bytes of the server's keys and of an attacker's keys.
struct Material {
    rsa_priv: Vec<u8>,
    rsa_pub: Vec<u8>,
    ed_priv: Vec<u8>,
    ed_pub: Vec<u8>,
    evil_rsa_priv: Vec<u8>,
    evil_ed_priv: Vec<u8>,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// (private PEM, public PEM) of a fresh key made by `openssl genpkey`.
fn keypair(dir: &Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let private_s = private.to_str().unwrap();
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", private_s]);
    openssl(&args);
    openssl(&["pkey", "-in", private_s, "-pubout", "-out", public.to_str().unwrap()]);
    (std::fs::read(&private).unwrap(), std::fs::read(&public).unwrap())
}

fn material() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
        let ed = ["-algorithm", "ed25519"];
        let (rsa_priv, rsa_pub) = keypair(dir.path(), "rsa", &rsa);
        let (ed_priv, ed_pub) = keypair(dir.path(), "ed", &ed);
        let (evil_rsa_priv, _) = keypair(dir.path(), "evil-rsa", &rsa);
        let (evil_ed_priv, _) = keypair(dir.path(), "evil-ed", &ed);
        Material { rsa_priv, rsa_pub, ed_priv, ed_pub, evil_rsa_priv, evil_ed_priv }
    })
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&material().rsa_priv).unwrap()
}
fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&material().ed_priv).unwrap()
}
fn hs_key() -> EncodingKey {
    EncodingKey::from_secret(HS_SECRET.as_bytes())
}
fn evil_rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&material().evil_rsa_priv).unwrap()
}
fn evil_ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&material().evil_ed_priv).unwrap()
}
fn evil_hs_key() -> EncodingKey {
    EncodingKey::from_secret(b"attacker-chosen-secret-of-at-least-32-bytes")
}

// ---------------------------------------------------------------------------------------------
// Token building
// ---------------------------------------------------------------------------------------------

fn now() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(d.as_secs()).unwrap()
}

/// A complete, valid claim set for `tenant` and `role`.
fn claims(tenant: &str, role: &str) -> Value {
    let t = now();
    json!({
        "sub": "alice",
        "tenant_id": tenant,
        "role": role,
        "iss": ISS,
        "aud": AUD,
        "iat": t,
        "nbf": t - 5,
        "exp": t + 300,
    })
}

fn without(mut c: Value, field: &str) -> Value {
    c.as_object_mut().unwrap().remove(field);
    c
}

fn with(mut c: Value, field: &str, v: Value) -> Value {
    c[field] = v;
    c
}

/// A token made by the `jsonwebtoken` library (the well-behaved issuer's path).
fn mint(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A token with a hand-written header: signed with `sign` (key, algorithm) or, with `None`, an
/// empty signature.
fn raw(header: &Value, claims: &Value, sign: Option<(&EncodingKey, Algorithm)>) -> String {
    let msg =
        format!("{}.{}", b64url(&serde_json::to_vec(header).unwrap()), b64url(&serde_json::to_vec(claims).unwrap()));
    let sig = match sign {
        Some((key, alg)) => jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{msg}.{sig}")
}

// ---------------------------------------------------------------------------------------------
// Server fixture
// ---------------------------------------------------------------------------------------------

/// A server with HS256 (`hs1`), RS256 (`rs1`, from a file) and EdDSA (`ed1`, inline PEM) keys,
/// and one active tenant.
struct Env {
    s: Server,
    op: String,
    tenant: String,
    _keys: tempfile::TempDir,
}

fn jwt_toml(rsa_pub_file: &Path, ed_pub_pem: &str) -> String {
    format!(
        r#"
[auth.jwt]
issuer = "{ISS}"
audience = "{AUD}"
leeway_secs = 30
tenant_claim = "tenant_id"
role_claim = "role"
subject_claim = "sub"

[[auth.jwt.keys]]
kid = "hs1"
alg = "HS256"
secret = "{HS_SECRET}"

[[auth.jwt.keys]]
kid = "rs1"
alg = "RS256"
public_key_file = "{}"

[[auth.jwt.keys]]
kid = "ed1"
alg = "EdDSA"
public_key_pem = """
{ed_pub_pem}"""
"#,
        rsa_pub_file.display()
    )
}

impl Env {
    fn start() -> Env {
        let m = material();
        let keys = tempfile::tempdir().unwrap();
        let rsa_pub_file: PathBuf = keys.path().join("rsa_pub.pem");
        std::fs::write(&rsa_pub_file, &m.rsa_pub).unwrap();
        let toml = jwt_toml(&rsa_pub_file, std::str::from_utf8(&m.ed_pub).unwrap());
        let s = Server::start_with(&[], Some(&toml));
        let op = s.operator_token();
        let tenant = s.create_tenant(&op, "jwt-tenant", "free");
        Env { s, op, tenant, _keys: keys }
    }

    fn whoami(&self, token: &str, request_id: &str) -> Response {
        self.s.get("/v1/auth/whoami").bearer_auth(token).header("x-request-id", request_id).send().unwrap()
    }

    /// The `auth.failure` event with this request id, as the operator sees it.
    fn failure_event(&self, request_id: &str) -> Option<Value> {
        let mut found = None;
        eventually(Duration::from_secs(5), || {
            found = self
                .s
                .audit(&self.op, "action=auth.failure")
                .into_iter()
                .find(|e| e["request_id"].as_str() == Some(request_id));
            found.is_some()
        });
        found
    }

    /// Each row's token must be refused with 401 and audited as `auth.failure` with one of the
    /// row's reasons; all rows are tried, then every failure is reported at once.
    fn expect_rejected(&self, rows: &[Attack]) {
        let mut failures = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let rid = format!("jwt-attack-{i}-{}", uuid_like());
            let r = self.whoami(&row.token, &rid);
            if r.status() != 401 {
                failures.push(format!(
                    "[{}] expected 401, got {}: {}",
                    row.name,
                    r.status(),
                    r.text().unwrap_or_default()
                ));
                continue;
            }
            let (_, body) = problem(r);
            assert_eq!(body["request_id"], rid.as_str(), "[{}] problem carries the request id", row.name);
            let Some(ev) = self.failure_event(&rid) else {
                failures.push(format!("[{}] no auth.failure audit event with request_id {rid}", row.name));
                continue;
            };
            let reason = ev["reason"].as_str().unwrap_or_default();
            if ev["result"] != "failure" || !row.reasons.contains(&reason) {
                failures.push(format!(
                    "[{}] audit event has result {} reason `{reason}`, expected one of {:?}",
                    row.name, ev["result"], row.reasons
                ));
            }
            if ev["metadata"]["credential"] != "jwt" {
                failures.push(format!("[{}] audit metadata.credential is {}, expected jwt", row.name, ev["metadata"]));
            }
            // The credential itself must never be written to the audit log.
            let sig = row.token.rsplit('.').next().unwrap_or_default();
            if ev.to_string().contains(&row.token) || (sig.len() > 16 && ev.to_string().contains(sig)) {
                failures.push(format!("[{}] audit event contains the presented token", row.name));
            }
        }
        assert!(failures.is_empty(), "rejected-token failures:\n{}", failures.join("\n"));
    }
}

/// One attack: a token that must be refused, and the audit reasons that describe it.
struct Attack {
    name: String,
    token: String,
    reasons: &'static [&'static str],
}

fn attack(name: impl Into<String>, token: String, reasons: &'static [&'static str]) -> Attack {
    Attack { name: name.into(), token, reasons }
}

const MALFORMED_OR_ALG: &[&str] = &["malformed_jwt", "jwt_algorithm_not_allowed"];
const KEY_OR_SIGNATURE: &[&str] = &["jwt_unknown_key", "jwt_bad_signature", "jwt_algorithm_not_allowed"];
const MISSING_CLAIM: &[&str] = &["jwt_missing_claim"];

fn assert_whoami(env: &Env, token: &str, role: &str, what: &str) {
    let r = env.whoami(token, &format!("jwt-ok-{}", uuid_like()));
    let status = r.status();
    let body: Value = r.json().unwrap();
    assert_eq!(status, 200, "{what}: whoami should accept the token: {body}");
    assert_eq!(body["kind"], "jwt", "{what}: {body}");
    assert_eq!(body["id"], "jwt:alice", "{what}: {body}");
    assert_eq!(body["tenant_id"], env.tenant.as_str(), "{what}: {body}");
    assert_eq!(body["role"], role, "{what}: {body}");
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_hs256_rs256_and_eddsa_tokens_authenticate() {
    let env = Env::start();
    let rows = [
        ("HS256 kid hs1", mint(Algorithm::HS256, Some("hs1"), &hs_key(), &claims(&env.tenant, "viewer")), "viewer"),
        ("RS256 kid rs1", mint(Algorithm::RS256, Some("rs1"), &rsa_key(), &claims(&env.tenant, "editor")), "editor"),
        ("EdDSA kid ed1", mint(Algorithm::EdDSA, Some("ed1"), &ed_key(), &claims(&env.tenant, "admin")), "admin"),
        ("EdDSA service", mint(Algorithm::EdDSA, Some("ed1"), &ed_key(), &claims(&env.tenant, "service")), "service"),
    ];
    for (what, token, role) in &rows {
        assert_whoami(&env, token, role, what);
    }
    // Success is audited under the JWT principal in the token's tenant.
    let events = env.s.audit(&env.op, &format!("tenant_id={}&action=auth.whoami", env.tenant));
    assert!(
        events.iter().any(|e| e["user_id"] == "jwt:alice" && e["result"] == "success"),
        "whoami by a JWT principal is audited in its tenant: {events:?}"
    );
}

#[test]
fn jwt_role_decides_admin_api_access() {
    let env = Env::start();
    let create = |token: &str| {
        env.s.post("/v1/keys").bearer_auth(token).json(&json!({ "name": "from-jwt", "role": "viewer" })).send().unwrap()
    };
    for role in ["viewer", "service"] {
        let token = mint(Algorithm::HS256, Some("hs1"), &hs_key(), &claims(&env.tenant, role));
        let (status, body) = problem(create(&token));
        assert_eq!(status, 403, "a {role} JWT must not create keys: {body}");
    }
    let viewer = mint(Algorithm::HS256, Some("hs1"), &hs_key(), &claims(&env.tenant, "viewer"));
    let r = env.s.get("/v1/keys").bearer_auth(&viewer).send().unwrap();
    assert_eq!(r.status(), 200, "a viewer JWT reads keys");

    let admin = mint(Algorithm::RS256, Some("rs1"), &rsa_key(), &claims(&env.tenant, "admin"));
    let r = create(&admin);
    assert_eq!(r.status(), 201, "an admin JWT creates keys");
    let v: Value = r.json().unwrap();
    assert_eq!(v["tenant_id"], env.tenant.as_str(), "the key lands in the JWT's tenant: {v}");
    assert!(v["key"].as_str().is_some_and(|k| k.starts_with("pc_")), "created key is returned once: {v}");
    assert_eq!(v["created_by"], "jwt:alice", "creator is the JWT principal: {v}");

    // The JWT's tenant is the only one it can act in.
    let other = env.s.create_tenant(&env.op, "other", "free");
    let r = env.s.get("/v1/keys").bearer_auth(&admin).header("x-tenant-id", &other).send().unwrap();
    let (status, _) = problem(r);
    assert_eq!(status, 403, "a JWT with a spoofed X-Tenant-ID is forbidden");
    let blocked = env.s.audit(&env.op, &format!("tenant_id={}&action=cross_tenant_access_blocked", env.tenant));
    assert!(
        blocked.iter().any(|e| e["user_id"] == "jwt:alice" && e["reason"] == "x_tenant_id_mismatch"),
        "spoofed X-Tenant-ID by a JWT is audited: {blocked:?}"
    );
}

#[test]
fn expired_within_leeway_is_accepted() {
    let env = Env::start();
    let c = with(claims(&env.tenant, "viewer"), "exp", json!(now() - 10));
    let token = mint(Algorithm::HS256, Some("hs1"), &hs_key(), &c);
    assert_whoami(&env, &token, "viewer", "expired 10 s ago (leeway 30 s)");
}

#[test]
fn jwks_file_keys_are_accepted() {
    let keys = tempfile::tempdir().unwrap();
    let mut jwk = Jwk::from_encoding_key(&rsa_key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(String::from("jwks-rs1"));
    let jwks_file = keys.path().join("jwks.json");
    std::fs::write(&jwks_file, serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap()).unwrap();
    let toml =
        format!("[auth.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"{}\"\n", jwks_file.display());
    let s = Server::start_with(&[], Some(&toml));
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "jwks-tenant", "free");
    let env = Env { s, op, tenant, _keys: keys };

    let token = mint(Algorithm::RS256, Some("jwks-rs1"), &rsa_key(), &claims(&env.tenant, "editor"));
    assert_whoami(&env, &token, "editor", "RS256 signed with the JWKS key");

    let c = claims(&env.tenant, "admin");
    env.expect_rejected(&[
        attack(
            "attacker key with the JWKS kid",
            mint(Algorithm::RS256, Some("jwks-rs1"), &evil_rsa_key(), &c),
            KEY_OR_SIGNATURE,
        ),
        attack("unknown kid", mint(Algorithm::RS256, Some("rs1"), &rsa_key(), &c), KEY_OR_SIGNATURE),
        attack("HS256 is not configured", mint(Algorithm::HS256, Some("jwks-rs1"), &hs_key(), &c), KEY_OR_SIGNATURE),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------------------------

#[test]
fn alg_none_is_rejected() {
    let env = Env::start();
    let c = claims(&env.tenant, "admin");
    let mut rows = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        rows.push(attack(format!("alg {alg}"), raw(&json!({ "alg": alg, "typ": "JWT" }), &c, None), MALFORMED_OR_ALG));
        rows.push(attack(
            format!("alg {alg} with kid hs1"),
            raw(&json!({ "alg": alg, "typ": "JWT", "kid": "hs1" }), &c, None),
            MALFORMED_OR_ALG,
        ));
    }
    // A real signature with the header switched to none afterwards.
    let signed = mint(Algorithm::HS256, Some("hs1"), &hs_key(), &c);
    let (_, rest) = signed.split_once('.').unwrap();
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    rows.push(attack("alg none header over an HS256 signature", format!("{header}.{rest}"), MALFORMED_OR_ALG));
    rows.push(attack(
        "no signature part",
        raw(&json!({ "alg": "none" }), &c, None).trim_end_matches('.').to_owned(),
        &["malformed_jwt"],
    ));
    // An unsupported but real algorithm is refused too.
    rows.push(attack(
        "HS512 signed with the shared secret",
        mint(Algorithm::HS512, Some("hs1"), &hs_key(), &c),
        &["jwt_algorithm_not_allowed", "jwt_unknown_key"],
    ));
    env.expect_rejected(&rows);
}

#[test]
fn rs256_to_hs256_confusion_is_rejected() {
    let env = Env::start();
    let c = claims(&env.tenant, "admin");
    let m = material();
    let pem = EncodingKey::from_secret(&m.rsa_pub);
    // Some libraries hash the PEM without its trailing newline; cover both spellings.
    let pem_trimmed = EncodingKey::from_secret(std::str::from_utf8(&m.rsa_pub).unwrap().trim_end().as_bytes());
    let ed_pem = EncodingKey::from_secret(&m.ed_pub);
    env.expect_rejected(&[
        attack("HS256 with RSA public PEM, kid rs1", mint(Algorithm::HS256, Some("rs1"), &pem, &c), KEY_OR_SIGNATURE),
        attack("HS256 with RSA public PEM, no kid", mint(Algorithm::HS256, None, &pem, &c), KEY_OR_SIGNATURE),
        attack("HS256 with RSA public PEM, kid hs1", mint(Algorithm::HS256, Some("hs1"), &pem, &c), KEY_OR_SIGNATURE),
        attack(
            "HS256 with trimmed RSA public PEM, kid rs1",
            mint(Algorithm::HS256, Some("rs1"), &pem_trimmed, &c),
            KEY_OR_SIGNATURE,
        ),
        attack(
            "HS256 with trimmed RSA public PEM, no kid",
            mint(Algorithm::HS256, None, &pem_trimmed, &c),
            KEY_OR_SIGNATURE,
        ),
        attack(
            "HS256 with Ed25519 public PEM, kid ed1",
            mint(Algorithm::HS256, Some("ed1"), &ed_pem, &c),
            KEY_OR_SIGNATURE,
        ),
        attack("HS256 with Ed25519 public PEM, no kid", mint(Algorithm::HS256, None, &ed_pem, &c), KEY_OR_SIGNATURE),
    ]);
}

#[test]
fn kid_injection_is_rejected() {
    let env = Env::start();
    let c = claims(&env.tenant, "admin");
    let kids = [
        "../../../../etc/passwd",
        "../../../../dev/null",
        "' OR '1'='1",
        "hs1' --",
        "http://127.0.0.1:1/jwks.json",
        "file:///etc/passwd",
        "hs1\u{0}",
        "",
    ];
    let mut rows = Vec::new();
    for kid in kids {
        rows.push(attack(
            format!("kid {kid:?} RS256 attacker key"),
            mint(Algorithm::RS256, Some(kid), &evil_rsa_key(), &c),
            KEY_OR_SIGNATURE,
        ));
        rows.push(attack(
            format!("kid {kid:?} HS256 attacker secret"),
            mint(Algorithm::HS256, Some(kid), &evil_hs_key(), &c),
            KEY_OR_SIGNATURE,
        ));
        rows.push(attack(
            format!("kid {kid:?} EdDSA attacker key"),
            mint(Algorithm::EdDSA, Some(kid), &evil_ed_key(), &c),
            KEY_OR_SIGNATURE,
        ));
        // /dev/null read as a key would be an empty HMAC secret.
        rows.push(attack(
            format!("kid {kid:?} HS256 empty secret"),
            mint(Algorithm::HS256, Some(kid), &EncodingKey::from_secret(b""), &c),
            KEY_OR_SIGNATURE,
        ));
    }
    env.expect_rejected(&rows);
}

#[test]
fn jku_x5u_and_embedded_jwk_headers_are_ignored() {
    let env = Env::start();
    let c = claims(&env.tenant, "admin");
    let evil = evil_rsa_key();
    let mut evil_jwk = serde_json::to_value(Jwk::from_encoding_key(&evil, Algorithm::RS256).unwrap()).unwrap();
    evil_jwk["kid"] = json!("rs1");
    let rs = Some((&evil, Algorithm::RS256));
    let evil_hs = evil_hs_key();
    let oct_jwk = json!({ "kty": "oct", "k": b64url(b"attacker-chosen-secret-of-at-least-32-bytes"), "alg": "HS256", "kid": "hs1" });
    let url = "http://127.0.0.1:1/jwks.json";
    env.expect_rejected(&[
        attack("jku, no kid", raw(&json!({ "alg": "RS256", "jku": url }), &c, rs), KEY_OR_SIGNATURE),
        attack("jku, kid rs1", raw(&json!({ "alg": "RS256", "kid": "rs1", "jku": url }), &c, rs), KEY_OR_SIGNATURE),
        attack(
            "jku, attacker kid",
            raw(&json!({ "alg": "RS256", "kid": "evil", "jku": url }), &c, rs),
            KEY_OR_SIGNATURE,
        ),
        attack(
            "x5u, no kid",
            raw(&json!({ "alg": "RS256", "x5u": "http://127.0.0.1:1/cert.pem" }), &c, rs),
            KEY_OR_SIGNATURE,
        ),
        attack(
            "x5u, kid rs1",
            raw(&json!({ "alg": "RS256", "kid": "rs1", "x5u": "http://127.0.0.1:1/cert.pem" }), &c, rs),
            KEY_OR_SIGNATURE,
        ),
        attack("embedded jwk, no kid", raw(&json!({ "alg": "RS256", "jwk": evil_jwk }), &c, rs), KEY_OR_SIGNATURE),
        attack(
            "embedded jwk, kid rs1",
            raw(&json!({ "alg": "RS256", "kid": "rs1", "jwk": evil_jwk }), &c, rs),
            KEY_OR_SIGNATURE,
        ),
        attack(
            "embedded oct jwk, kid hs1",
            raw(&json!({ "alg": "HS256", "kid": "hs1", "jwk": oct_jwk }), &c, Some((&evil_hs, Algorithm::HS256))),
            KEY_OR_SIGNATURE,
        ),
    ]);
}

#[test]
fn missing_registered_claims_are_rejected() {
    let env = Env::start();
    let c = claims(&env.tenant, "admin");
    let mut rows = Vec::new();
    for field in ["aud", "iss", "nbf", "exp"] {
        for (alg, kid, key) in [
            (Algorithm::HS256, "hs1", hs_key()),
            (Algorithm::RS256, "rs1", rsa_key()),
            (Algorithm::EdDSA, "ed1", ed_key()),
        ] {
            let token = mint(alg, Some(kid), &key, &without(c.clone(), field));
            rows.push(attack(format!("{alg:?} without {field}"), token, MISSING_CLAIM));
        }
    }
    // Null is not a value either.
    for field in ["aud", "iss", "nbf", "exp"] {
        let token = mint(Algorithm::HS256, Some("hs1"), &hs_key(), &with(c.clone(), field, Value::Null));
        rows.push(attack(format!("{field}: null"), token, &["jwt_missing_claim", "invalid_jwt", "malformed_jwt"]));
    }
    // Our own claims: no tenant, no role, unknown tenant, unknown role, no subject.
    let ours: &[&str] =
        &["jwt_missing_tenant", "jwt_missing_role", "jwt_missing_subject", "unknown_tenant", "jwt_missing_claim"];
    for (name, claims) in [
        ("no tenant claim", without(c.clone(), "tenant_id")),
        ("no role claim", without(c.clone(), "role")),
        ("no sub claim", without(c.clone(), "sub")),
        ("unknown tenant", with(c.clone(), "tenant_id", json!("0190a0b0-0000-7000-8000-000000000000"))),
        ("role operator", with(c.clone(), "role", json!("operator"))),
        ("role superuser", with(c.clone(), "role", json!("superuser"))),
    ] {
        rows.push(attack(name, mint(Algorithm::HS256, Some("hs1"), &hs_key(), &claims), ours));
    }
    env.expect_rejected(&rows);
}

#[test]
fn wrong_issuer_or_audience_is_rejected() {
    let env = Env::start();
    let c = claims(&env.tenant, "admin");
    let hs = |claims: &Value| mint(Algorithm::HS256, Some("hs1"), &hs_key(), claims);
    let rs = |claims: &Value| mint(Algorithm::RS256, Some("rs1"), &rsa_key(), claims);
    let aud: &[&str] = &["jwt_wrong_audience"];
    let iss: &[&str] = &["jwt_wrong_issuer"];
    env.expect_rejected(&[
        attack("aud other", hs(&with(c.clone(), "aud", json!("other-service"))), aud),
        attack("aud case-changed", rs(&with(c.clone(), "aud", json!("Portcullis"))), aud),
        attack("aud list without ours", hs(&with(c.clone(), "aud", json!(["a", "b"]))), aud),
        attack("aud empty string", hs(&with(c.clone(), "aud", json!(""))), aud),
        attack("iss other", hs(&with(c.clone(), "iss", json!("https://evil.test"))), iss),
        attack("iss with trailing slash", rs(&with(c.clone(), "iss", json!("https://issuer.test/"))), iss),
        attack("iss prefix match", hs(&with(c.clone(), "iss", json!("https://issuer.test.evil"))), iss),
    ]);
}

#[test]
fn time_claims_are_checked_with_a_30s_leeway() {
    let env = Env::start();
    let c = claims(&env.tenant, "admin");
    let t = now();
    let hs = |claims: &Value| mint(Algorithm::HS256, Some("hs1"), &hs_key(), claims);
    let ed = |claims: &Value| mint(Algorithm::EdDSA, Some("ed1"), &ed_key(), claims);
    env.expect_rejected(&[
        // jsonwebtoken's default 60 s leeway would accept this one.
        attack("HS256 expired 45 s ago", hs(&with(c.clone(), "exp", json!(t - 45))), &["expired_jwt"]),
        attack("EdDSA expired 45 s ago", ed(&with(c.clone(), "exp", json!(t - 45))), &["expired_jwt"]),
        attack("expired a day ago", hs(&with(c.clone(), "exp", json!(t - 86_400))), &["expired_jwt"]),
        attack("nbf 120 s in the future", hs(&with(c.clone(), "nbf", json!(t + 120))), &["jwt_not_yet_valid"]),
        attack("EdDSA nbf 120 s in the future", ed(&with(c.clone(), "nbf", json!(t + 120))), &["jwt_not_yet_valid"]),
        attack(
            "exp as text",
            hs(&with(c.clone(), "exp", json!((t + 300).to_string()))),
            &["invalid_jwt", "jwt_missing_claim", "malformed_jwt"],
        ),
    ]);
}

#[test]
fn tampered_payload_is_rejected() {
    let env = Env::start();
    let other = env.s.create_tenant(&env.op, "victim", "free");
    let mut rows = Vec::new();
    for (alg, kid, key) in
        [(Algorithm::HS256, "hs1", hs_key()), (Algorithm::RS256, "rs1", rsa_key()), (Algorithm::EdDSA, "ed1", ed_key())]
    {
        let c = claims(&env.tenant, "viewer");
        let signed = mint(alg, Some(kid), &key, &c);
        let parts: Vec<&str> = signed.split('.').collect();
        assert_eq!(parts.len(), 3);
        for (what, edited) in [
            ("tenant claim", with(c.clone(), "tenant_id", json!(other))),
            ("role claim", with(c.clone(), "role", json!("admin"))),
            ("exp claim", with(c.clone(), "exp", json!(now() + 86_400 * 365))),
        ] {
            let payload = b64url(&serde_json::to_vec(&edited).unwrap());
            let token = format!("{}.{payload}.{}", parts[0], parts[2]);
            rows.push(attack(format!("{alg:?} {what} edited after signing"), token, &["jwt_bad_signature"]));
        }
        // A signature from a different token of the same key.
        let another = mint(alg, Some(kid), &key, &with(c.clone(), "sub", json!("mallory")));
        let foreign_sig = another.rsplit('.').next().unwrap();
        rows.push(attack(
            format!("{alg:?} signature of another token"),
            format!("{}.{}.{foreign_sig}", parts[0], parts[1]),
            &["jwt_bad_signature"],
        ));
    }
    env.expect_rejected(&rows);
    // The untampered token still works: the refusals were about the edits.
    let token = mint(Algorithm::HS256, Some("hs1"), &hs_key(), &claims(&env.tenant, "viewer"));
    assert_whoami(&env, &token, "viewer", "untampered token");
}

#[test]
fn token_for_a_suspended_tenant_is_forbidden() {
    let env = Env::start();
    let token = mint(Algorithm::RS256, Some("rs1"), &rsa_key(), &claims(&env.tenant, "admin"));
    assert_whoami(&env, &token, "admin", "before suspension");

    let r = env.s.post(&format!("/v1/tenants/{}/suspend", env.tenant)).bearer_auth(&env.op).send().unwrap();
    assert_eq!(r.status(), 200, "operator suspends the tenant");

    let rid = format!("jwt-suspended-{}", uuid_like());
    let (status, body) = problem(env.whoami(&token, &rid));
    assert_eq!(status, 403, "a token of a suspended tenant is forbidden: {body}");
    let r = env.s.get("/v1/keys").bearer_auth(&token).send().unwrap();
    assert_eq!(r.status(), 403, "suspension covers the admin API too");
    let denied = env.s.audit(&env.op, &format!("tenant_id={}&action=auth.denied", env.tenant));
    assert!(
        denied.iter().any(|e| e["request_id"] == rid.as_str() && e["reason"] == "tenant_suspended"),
        "the refusal is audited as tenant_suspended: {denied:?}"
    );

    let r = env.s.post(&format!("/v1/tenants/{}/resume", env.tenant)).bearer_auth(&env.op).send().unwrap();
    assert_eq!(r.status(), 200, "operator resumes the tenant");
    assert_whoami(&env, &token, "admin", "after resumption");
}
