//! The operator UI's server side: the page and its assets under a strict CSP, the login that
//! puts the session in an HttpOnly SameSite=Strict cookie, and the CSRF rules for requests that
//! cookie authenticates. The pages themselves are walked in a real browser by `browser.rs`.
use crate::harness::{Server, problem};
use crate::upstream::Upstream;
use reqwest::blocking::Response;
use serde_json::{Value, json};

fn bootstrap_login(s: &Server, origin: Option<&str>, proto: Option<&str>) -> Response {
    let pw = s.bootstrap_password.clone().unwrap();
    let mut r = s.post("/ui/login");
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    if let Some(p) = proto {
        r = r.header("x-forwarded-proto", p);
    }
    r.json(&json!({"email": "admin@localhost", "password": pw})).send().unwrap()
}

fn set_cookie(r: &Response) -> String {
    r.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned()
}

fn tenants(s: &Server, cookie: &str) -> usize {
    let r = s.get("/v1/tenants?limit=500").header("cookie", cookie).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["items"].as_array().unwrap().len()
}

#[test]
fn the_page_and_assets_are_served_under_a_strict_csp() {
    let s = Server::start();
    let r = s.get("/ui").send().unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    for forbidden in ["unsafe-inline", "unsafe-eval", "*"] {
        assert!(!csp.contains(forbidden), "{csp}");
    }
    for needed in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(needed), "{needed} in {csp}");
    }
    let html = r.text().unwrap();
    assert!(html.contains("/ui/app.js") && html.contains("/ui/app.css"), "{html}");
    assert!(!html.contains("<script>") && !html.contains(" style=\""), "nothing inline: {html}");
    for (path, ct) in [("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")] {
        let r = s.get(path).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(ct));
        assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    }
    for path in ["/ui/secrets.txt", "/ui/..%2fCargo.toml", "/ui/index.html"] {
        assert_eq!(problem(s.get(path).send().unwrap()).0, 404, "{path}");
    }
}

#[test]
fn the_ui_session_is_an_httponly_cookie_and_every_change_needs_the_csrf_token() {
    let s = Server::start();
    let origin = s.url("");
    let origin = origin.trim_end_matches('/');

    let bad = s.post("/ui/login").json(&json!({"email": "admin@localhost", "password": "wrong"})).send().unwrap();
    let (status, p) = problem(bad);
    assert_eq!(status, 401, "{p}");
    assert!(p["request_id"].is_string());

    let r = bootstrap_login(&s, Some(origin), None);
    assert_eq!(r.status(), 200);
    let sc = set_cookie(&r);
    for attr in ["portcullis_session=pcs_", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(sc.contains(attr), "{attr} in {sc}");
    }
    assert!(!sc.contains("Secure"), "plain HTTP: {sc}");
    let body: Value = r.json().unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 64);
    assert_eq!(body["principal"]["kind"], "operator");
    let cookie = sc.split(';').next().unwrap().to_owned();
    assert!(!csrf.contains(cookie.trim_start_matches("portcullis_session=")), "the CSRF token is not the session");

    // Behind a TLS-terminating proxy the cookie is Secure.
    let tls = bootstrap_login(&s, None, Some("https"));
    assert!(set_cookie(&tls).contains("; Secure"), "{}", set_cookie(&tls));

    // The cookie authenticates reads; the page learns its CSRF token from /ui/session.
    let before = tenants(&s, &cookie);
    let r = s.get("/ui/session").header("cookie", &cookie).send().unwrap();
    assert_eq!(r.json::<Value>().unwrap()["csrf_token"], csrf.as_str());

    // A change without the token, with a wrong one, or from another origin is refused and audited.
    let create = |csrf: Option<&str>, origin: Option<&str>| {
        let mut r = s.post("/v1/tenants").header("cookie", &cookie);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.json(&json!({"name": "from-the-ui", "tier": "free"})).send().unwrap()
    };
    let wrong = "0".repeat(64);
    for (token, from) in
        [(None, None), (Some(wrong.as_str()), None), (Some(csrf.as_str()), Some("http://evil.example"))]
    {
        let (status, p) = problem(create(token, from));
        assert_eq!(status, 403, "{token:?} {from:?}: {p}");
    }
    assert_eq!(tenants(&s, &cookie), before, "nothing was created");
    let op = s.operator_token();
    let refused = s.audit(&op, "action=csrf.rejected");
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0]["result"], "denied");
    assert_eq!(refused[0]["metadata"]["origin"], "http://evil.example");
    // A login posted from another site is refused too (login CSRF).
    assert_eq!(problem(bootstrap_login(&s, Some("http://evil.example"), None)).0, 403);

    let ok = create(Some(&csrf), Some(origin));
    assert_eq!(ok.status(), 201);
    assert_eq!(tenants(&s, &cookie), before + 1);
    // Behind a reverse proxy that rewrites Host, the origin the browser used is X-Forwarded-Host.
    let proxied = s
        .post("/v1/tenants")
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", "https://gw.example.com")
        .header("x-forwarded-host", "gw.example.com")
        .json(&json!({"name": "behind-a-proxy", "tier": "free"}))
        .send()
        .unwrap();
    assert_eq!(proxied.status(), 201);
    // Reads with the cookie from another origin are refused too (a credentialed CORS setting
    // must not hand the session to another site); same-origin reads work.
    let r = s.get("/v1/tenants").header("cookie", &cookie).header("origin", "http://evil.example").send().unwrap();
    assert_eq!(problem(r).0, 403);
    let r = s.get("/ui/session").header("cookie", &cookie).header("origin", origin).send().unwrap();
    assert_eq!(r.status(), 200);
    // A header credential is used as before: no CSRF rule for it (browsers cannot forge it).
    let r = s.post("/v1/tenants").bearer_auth(&op).json(&json!({"name": "by-bearer", "tier": "free"})).send().unwrap();
    assert_eq!(r.status(), 201);

    // Logout needs the token, clears the cookie and ends the session.
    assert_eq!(problem(s.post("/ui/logout").header("cookie", &cookie).send().unwrap()).0, 403);
    let out = s.post("/ui/logout").header("cookie", &cookie).header("x-csrf-token", &csrf).send().unwrap();
    assert_eq!(out.status(), 204);
    assert!(set_cookie(&out).contains("Max-Age=0"), "{}", set_cookie(&out));
    assert_eq!(problem(s.get("/ui/session").header("cookie", &cookie).send().unwrap()).0, 401);
    assert_eq!(problem(s.get("/v1/tenants").header("cookie", &cookie).send().unwrap()).0, 401);
    assert_eq!(problem(s.get("/ui/session").send().unwrap()).0, 401, "no cookie: signed out");
}

#[test]
fn the_ui_session_never_crosses_the_proxy_and_upstream_pages_are_sandboxed() {
    let up = Upstream::start();
    let s = Server::start_with(&[], Some(&up.route("/up", "", "conversation.send", "")));
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "proxied", "pro");
    let (_, key) = s.create_key(&op, &tenant, "service");
    let r = s
        .get("/up/page")
        .header("x-api-key", &key)
        .header("cookie", "portcullis_session=pcs_0123456789abcdef0123456789abcdef; theirs=2")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-security-policy"],
        "sandbox; frame-ancestors 'none'",
        "an upstream document runs in an opaque origin, whatever policy it sent"
    );
    let cookies: Vec<&str> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, ["theirs=1; Path=/"], "an upstream cannot set the UI's session cookie");
    let seen = up.seen_at("/page");
    assert_eq!(seen[0].header("cookie"), Some("theirs=2"), "the UI's cookie is not forwarded");
}
