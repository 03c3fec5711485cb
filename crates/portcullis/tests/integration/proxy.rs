//! The data plane: configured routes proxied to a scripted upstream (the customer's service).
//! Methods, paths and queries arrive with the prefix stripped (or kept, or under a base path);
//! credentials, hop-by-hop and forged identity headers never cross, identity headers and the
//! request id do; bodies stream both ways (large, chunked, server-sent events one by one);
//! upstream statuses pass through; 502/504/413 are ours; the concurrency slot is given back when
//! the client or the upstream goes away; refused callers never reach the upstream; every proxied
//! request is audited once.
use crate::harness::{Server, eventually, problem};
use crate::upstream::{Upstream, checksum, closed_port, pattern};
use reqwest::blocking::Response;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// A gateway with routes to one upstream, a tenant and a key: what most tests here start from.
pub struct Gateway {
    pub s: Server,
    pub up: Upstream,
    pub op: String,
    pub tenant: String,
    pub key_id: String,
    pub key: String,
}

/// Routes used across this module: `/up` (plain), `/based` (upstream base path `/base`), `/raw`
/// (prefix kept), `/quick` (1 s for the upstream's headers), `/metered` (2 requests a minute per
/// tenant), `/closed` (nothing listens).
fn routes(up: &Upstream) -> String {
    [
        up.route("/up", "", "conversation.send", ""),
        up.route("/based", "/base", "memory.write", ""),
        up.route("/raw", "", "tool.request", "strip_prefix = false"),
        up.route("/quick", "", "job.submit", "timeout_secs = 1"),
        up.route("/metered", "", "job.submit", "rate_per_minute = 2"),
        up.route("/idle", "", "conversation.send", "idle_timeout_secs = 1"),
        format!(
            "[[routes]]\nprefix = \"/closed\"\nupstream = \"http://127.0.0.1:{}\"\naction = \"conversation.send\"\n",
            closed_port()
        ),
    ]
    .join("\n")
}

/// `env` and `toml` (after the routes) configure the server; the tenant is on `tier`, the key
/// has role `role`.
pub fn gateway_with(env: &[(&str, &str)], toml: &str, tier: &str, role: &str) -> Gateway {
    let up = Upstream::start();
    let config = format!("{}\n{toml}", routes(&up));
    let s = Server::start_with(env, Some(&config));
    let op = s.operator_token();
    let tenant = s.create_tenant(&op, "proxied", tier);
    let (key_id, key) = s.create_key(&op, &tenant, role);
    Gateway { s, up, op, tenant, key_id, key }
}

/// Pro tier (200 requests a minute) so these tests never meet a rate limit by accident.
fn gateway() -> Gateway {
    gateway_with(&[], "", "pro", "editor")
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// The echo the upstream sent back.
fn echo(r: Response) -> Value {
    let status = r.status();
    let text = r.text().unwrap();
    assert_eq!(status, 200, "echo answered: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Deterministic bytes that are not the upstream's own pattern.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A response read incrementally over a raw connection: reqwest's blocking client gives no way
/// to watch a body arrive piece by piece, nor to hang up on purpose.
pub struct OpenStream {
    r: BufReader<TcpStream>,
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// The decoded body so far.
    pub body: Vec<u8>,
}

impl OpenStream {
    /// Sends `GET path` with `headers` and reads the response head.
    pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> OpenStream {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        Self::send(addr, req.as_bytes())
    }

    /// Sends raw request bytes and reads the response head.
    pub fn send(addr: &str, request: &[u8]) -> OpenStream {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        (&c).write_all(request).unwrap();
        let mut r = BufReader::new(c);
        let status_line = Self::line(&mut r).expect("a status line");
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
        let mut headers = Vec::new();
        while let Some(l) = Self::line(&mut r) {
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        OpenStream { r, status, headers, chunked, body: Vec::new() }
    }

    fn line(r: &mut impl BufRead) -> Option<String> {
        let mut buf = Vec::new();
        if r.read_until(b'\n', &mut buf).ok()? == 0 {
            return None;
        }
        Some(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Reads one more piece of the body: Some(true) a piece, Some(false) the clean end, None the
    /// connection ended (or failed) without the end of the body.
    fn piece(&mut self) -> Option<bool> {
        if !self.chunked {
            let mut buf = [0u8; 16 * 1024];
            return match self.r.read(&mut buf) {
                Ok(0) => Some(false),
                Ok(n) => {
                    self.body.extend_from_slice(&buf[..n]);
                    Some(true)
                }
                Err(_) => None,
            };
        }
        let size_line = Self::line(&mut self.r)?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(false);
        }
        let start = self.body.len();
        self.body.resize(start + size, 0);
        self.r.read_exact(&mut self.body[start..]).ok()?;
        Self::line(&mut self.r)?;
        Some(true)
    }

    /// Reads until the body contains `needle`; false when the body ends first.
    pub fn read_until(&mut self, needle: &str) -> bool {
        while !self.text().contains(needle) {
            if self.piece() != Some(true) {
                return false;
            }
        }
        true
    }

    /// Reads the rest; whether the body ended cleanly (not cut off).
    pub fn read_to_end(&mut self) -> bool {
        loop {
            match self.piece() {
                Some(true) => continue,
                Some(false) => return true,
                None => return false,
            }
        }
    }

    /// Hangs up.
    pub fn close(self) {
        let _ = self.r.get_ref().shutdown(Shutdown::Both);
    }
}

#[test]
fn methods_paths_and_queries_reach_the_upstream_as_configured() {
    let g = gateway();
    // (method, path at the gateway, path at the upstream, query at the upstream, body)
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a [u8]);
    let cases: &[Case] = &[
        ("GET", "/up/echo?a=1&b=two%20words", "/echo", Some("a=1&b=two%20words"), b""),
        ("POST", "/up/v1/chat/completions", "/v1/chat/completions", None, b"{\"model\":\"m\"}"),
        ("PUT", "/up/items/7?x=y", "/items/7", Some("x=y"), b"put body"),
        ("PATCH", "/up/items/7", "/items/7", None, b"patch body"),
        ("DELETE", "/up/items/7?hard=true", "/items/7", Some("hard=true"), b""),
        ("GET", "/up", "/", None, b""),
        ("GET", "/up?only=query", "/", Some("only=query"), b""),
        ("GET", "/up/", "/", None, b""),
        // Upstream URL with a base path.
        ("GET", "/based/echo?k=v", "/base/echo", Some("k=v"), b""),
        ("POST", "/based/deep/er/path", "/base/deep/er/path", None, b"based"),
        // strip_prefix = false.
        ("GET", "/raw/echo?z=1", "/raw/echo", Some("z=1"), b""),
        ("DELETE", "/raw/things/9", "/raw/things/9", None, b""),
    ];
    for (i, (method, path, upstream_path, query, body)) in cases.iter().enumerate() {
        let r = g.s.request(method, path).header("x-api-key", &g.key).body(body.to_vec()).send().unwrap();
        let e = echo(r);
        assert_eq!(e["method"], *method, "{method} {path}");
        assert_eq!(e["path"], *upstream_path, "{method} {path}");
        assert_eq!(e["query"].as_str(), *query, "{method} {path}");
        assert_eq!(e["body_len"], body.len(), "{method} {path}");
        assert_eq!(e["body_sum"], checksum(body), "{method} {path}");
        let seen = g.up.seen();
        assert_eq!(seen.len(), i + 1, "one upstream request per proxied request");
        assert_eq!(seen[i].path, *upstream_path);
    }
    // Not a route: a prefix matches only at a path-segment boundary.
    for path in ["/upx", "/upx/echo", "/nothing/here", "/base/echo"] {
        let (status, _) = problem(g.s.get(path).header("x-api-key", &g.key).send().unwrap());
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(g.up.count(), cases.len(), "unknown paths reach no upstream");
}

#[test]
fn credentials_hop_by_hop_and_forged_identity_headers_never_reach_the_upstream() {
    let g = gateway();
    let request = format!(
        "GET /up/echo?h=1 HTTP/1.1\r\n\
         Host: {addr}\r\n\
         X-API-Key: {key}\r\n\
         X-Tenant-ID: {tenant}\r\n\
         X-Request-Id: proxy-headers-0001\r\n\
         X-Portcullis-Tenant: forged-tenant\r\n\
         X-Portcullis-Principal: key:forged\r\n\
         X-Portcullis-Role: admin\r\n\
         X-Portcullis-Extra: forged\r\n\
         Connection: keep-alive, X-Secret-Hop\r\n\
         X-Secret-Hop: must-not-cross\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: websocket\r\n\
         Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n\
         X-Forwarded-For: 10.0.0.1\r\n\
         X-Custom: kept\r\n\
         User-Agent: proxy-it\r\n\
         \r\n",
        addr = g.s.addr,
        key = g.key,
        tenant = g.tenant,
    );
    let mut resp = OpenStream::send(&g.s.addr, request.as_bytes());
    assert_eq!(resp.status, 200, "{:?}", resp.headers);
    assert!(resp.read_to_end());
    assert_eq!(resp.header("x-request-id"), Some("proxy-headers-0001"));
    let seen = g.up.seen();
    assert_eq!(seen.len(), 1);
    let u = &seen[0];
    for name in [
        "x-api-key",
        "authorization",
        "x-tenant-id",
        "x-portcullis-extra",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(u.all(name).is_empty(), "upstream saw {name}: {:?}", u.all(name));
    }
    assert!(!u.all("connection").iter().any(|v| v.to_ascii_lowercase().contains("x-secret-hop")));
    // Identity comes from the gateway, once each, never from the caller.
    assert_eq!(u.header("x-portcullis-tenant"), Some(g.tenant.as_str()));
    assert_eq!(u.header("x-portcullis-principal"), Some(format!("key:{}", g.key_id).as_str()));
    assert_eq!(u.header("x-portcullis-role"), Some("editor"));
    assert_eq!(u.header("x-request-id"), Some("proxy-headers-0001"), "the upstream gets the client's request id");
    let xff = u.header("x-forwarded-for").unwrap();
    assert!(xff.starts_with("10.0.0.1") && xff.ends_with("127.0.0.1"), "{xff}");
    assert_eq!(u.header("x-custom"), Some("kept"));
    assert_eq!(u.header("user-agent"), Some("proxy-it"));
    assert_eq!(u.header("host"), Some(g.up.addr.as_str()), "Host names the upstream");
    // On the way back: the upstream's hop-by-hop header is dropped, the rest kept, ours added.
    assert_eq!(resp.header("x-upstream-kept"), Some("1"));
    assert_eq!(resp.header("x-upstream-hop"), None);
    for name in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-content-type-options"] {
        assert!(resp.header(name).is_some(), "response lacks {name}");
    }

    // The bearer form, and a request id the gateway makes up: the client and the upstream see the same.
    let r = g.s.get("/up/echo").bearer_auth(&g.key).header("x-portcullis-role", "admin").send().unwrap();
    let rid = header(&r, "x-request-id").unwrap();
    let e = echo(r);
    assert!(e["headers"].get("authorization").is_none(), "{e}");
    assert_eq!(e["headers"]["x-portcullis-role"], "editor");
    assert_eq!(e["headers"]["x-request-id"], rid.as_str());
}

/// `Proxy-*` headers are hop-by-hop (meant for the proxy, here Portcullis): none crosses. Old
/// clients still send `Proxy-Connection`.
#[test]
fn proxy_headers_never_reach_the_upstream() {
    let g = gateway();
    let r =
        g.s.get("/up/echo")
            .header("x-api-key", &g.key)
            .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
            .header("proxy-connection", "keep-alive")
            .send()
            .unwrap();
    let e = echo(r);
    let leaked: Vec<&String> = e["headers"].as_object().unwrap().keys().filter(|k| k.starts_with("proxy-")).collect();
    assert!(leaked.is_empty(), "the upstream saw {leaked:?}");
}

#[test]
fn large_bodies_stream_both_ways_intact() {
    let g = gateway();
    let up = noise(800 * 1024);
    // With Content-Length.
    let e = echo(g.s.post("/up/upload").header("x-api-key", &g.key).body(up.clone()).send().unwrap());
    assert_eq!(e["body_len"], up.len());
    assert_eq!(e["body_sum"], checksum(&up));
    // Chunked (a reader of unknown length).
    let body = reqwest::blocking::Body::new(std::io::Cursor::new(up.clone()));
    let e = echo(g.s.post("/up/upload").header("x-api-key", &g.key).body(body).send().unwrap());
    assert_eq!(e["headers"]["transfer-encoding"], "chunked", "sent chunked");
    assert_eq!(e["body_len"], up.len());
    assert_eq!(e["body_sum"], checksum(&up));
    // 8 MiB down.
    let n = 8 * 1024 * 1024;
    let r = g.s.get(&format!("/up/big/{n}")).header("x-api-key", &g.key).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-ratelimit-limit"));
    let got = r.bytes().unwrap();
    assert_eq!(got.len(), n);
    assert!(got.as_ref() == pattern(n).as_slice(), "8 MiB body arrived unchanged");
}

#[test]
fn upstream_statuses_and_bodies_pass_through_unchanged() {
    let g = gateway();
    for code in [201u16, 404, 429, 500, 503] {
        let r = g.s.get(&format!("/up/status/{code}")).header("x-api-key", &g.key).send().unwrap();
        assert_eq!(r.status().as_u16(), code);
        assert_eq!(header(&r, "content-type").as_deref(), Some("text/plain"), "{code} is not rewritten");
        assert_eq!(header(&r, "x-upstream").as_deref(), Some("status"));
        for name in ["x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining", "x-frame-options"] {
            assert!(r.headers().contains_key(name), "{code}: missing {name}");
        }
        assert_eq!(r.text().unwrap(), format!("upstream says {code}"));
    }
    assert_eq!(g.up.count(), 5);
}

#[test]
fn server_sent_events_arrive_one_at_a_time() {
    let g = gateway();
    let mut st = OpenStream::get(&g.s.addr, "/up/sse?n=3", &[("x-api-key", &g.key)]);
    assert_eq!(st.status, 200, "headers arrive before any event");
    assert_eq!(st.header("content-type"), Some("text/event-stream"));
    for i in 0..3 {
        assert!(!st.text().contains(&format!("data: {i}\n\n")), "event {i} before the upstream sent it");
        g.up.release(1);
        // The upstream sends event i+1 only after the next release: reading event i here proves
        // it was forwarded on its own, not buffered with the rest.
        assert!(st.read_until(&format!("data: {i}\n\n")), "event {i} arrives; got {:?}", st.text());
    }
    assert!(st.read_to_end(), "the stream ends cleanly");
    assert_eq!(st.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

#[test]
fn unreachable_upstream_is_502_and_silent_upstream_is_504() {
    let g = gateway();
    let (status, body) = problem(g.s.get("/closed/echo").header("x-api-key", &g.key).send().unwrap());
    assert_eq!(status, 502, "{body}");
    for path in ["/quick/hang", "/quick/slow/5000"] {
        let (status, body) = problem(g.s.get(path).header("x-api-key", &g.key).send().unwrap());
        assert_eq!(status, 504, "{path}: {body}");
    }
    assert_eq!(g.up.seen_at("/hang").len(), 1, "the request did reach the upstream");
}

/// `timeout_secs` is the time the route allows its upstream; the API's own request timeout
/// (`http.request_timeout_secs`, 30 s by default, below the routes' default of 60 s) must not cut
/// a proxied request short.
#[test]
fn a_slow_upstream_gets_the_routes_timeout_not_the_api_request_timeout() {
    let g = gateway_with(&[("PORTCULLIS_HTTP__REQUEST_TIMEOUT_SECS", "2")], "", "pro", "editor");
    let r = g.s.get("/up/slow/5000").header("x-api-key", &g.key).send().unwrap();
    let status = r.status();
    let body = r.text().unwrap();
    assert_eq!(status, 200, "the route allows 60 s; the upstream answered after 5 s: {body}");
    assert_eq!(body, "finally");
}

#[test]
fn bodies_over_the_limit_are_413_with_or_without_content_length() {
    let g = gateway();
    let big = vec![b'x'; 2 * 1024 * 1024];
    let (status, _) = problem(g.s.post("/up/echo").header("x-api-key", &g.key).body(big.clone()).send().unwrap());
    assert_eq!(status, 413);
    assert_eq!(g.up.count(), 0, "a declared oversized body is refused before the upstream");

    // Chunked: the limit holds while the body streams through. A writer thread keeps sending
    // while the response is read, as a real client would.
    let c = TcpStream::connect(&g.s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = c.try_clone().unwrap();
    let head = format!(
        "POST /up/echo HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        g.key
    );
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'y'; 64 * 1024];
        let _ = w.write_all(head.as_bytes());
        for _ in 0..32 {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if w.write_all(&framed).is_err() {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n");
    });
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let mut r = &c;
    while !head.ends_with(b"\r\n\r\n") && r.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.to_ascii_lowercase().contains("application/problem+json"), "{head}");
    let _ = c.shutdown(Shutdown::Both);
    let _ = writer.join();
    assert!(g.up.seen().iter().all(|s| !s.complete || s.body_len <= 1024 * 1024), "no oversized body got through");
}

/// Concurrency 1 from the tier (environment form), rates high enough that polling never meets them.
fn one_at_a_time() -> Gateway {
    gateway_with(
        &[
            ("PORTCULLIS_TIERS__FREE__CONCURRENCY", "1"),
            ("PORTCULLIS_TIERS__FREE__RATE_PER_MINUTE", "100000"),
            ("PORTCULLIS_TIERS__FREE__REQUESTS_PER_DAY", "1000000"),
        ],
        "[limits]\nprincipal_per_minute = 100000\n",
        "free",
        "editor",
    )
}

fn echo_status(g: &Gateway) -> u16 {
    g.s.get("/up/echo").header("x-api-key", &g.key).send().unwrap().status().as_u16()
}

/// While a stream holds the tenant's only slot, the next request is refused (concurrency) and
/// audited; nothing reaches the upstream.
fn assert_slot_taken(g: &Gateway) {
    let before = g.up.seen_at("/echo").len();
    let r =
        g.s.get("/up/echo")
            .header("x-api-key", &g.key)
            .header("x-request-id", &crate::harness::uuid_like())
            .send()
            .unwrap();
    let rid = header(&r, "x-request-id").unwrap();
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(r.headers().contains_key("x-ratelimit-limit"));
    let (_, body) = problem(r);
    assert!(body["detail"].as_str().unwrap().contains("concurrency"), "{body}");
    assert_eq!(g.up.seen_at("/echo").len(), before, "a refused request reaches no upstream");
    let events = g.s.audit(&g.op, "action=conversation.send&result=denied");
    let e = events.iter().find(|e| e["request_id"] == rid.as_str()).expect("the refusal is audited");
    assert_eq!(e["reason"], "limit:concurrency");
}

#[test]
fn a_client_hanging_up_mid_stream_gives_the_concurrency_slot_back() {
    let g = one_at_a_time();
    let limits: Value =
        g.s.get(&format!("/v1/tenants/{}/limits", g.tenant)).bearer_auth(&g.op).send().unwrap().json().unwrap();
    assert_eq!(limits["effective"]["concurrency"], 1, "tier concurrency from the environment: {limits}");
    let mut st = OpenStream::get(&g.s.addr, "/up/sse?n=2", &[("x-api-key", &g.key)]);
    assert_eq!(st.status, 200);
    g.up.release(1);
    assert!(st.read_until("data: 0\n\n"));
    assert_slot_taken(&g);
    // The client goes away while the upstream is still between events.
    st.close();
    assert!(
        eventually(Duration::from_secs(30), || echo_status(&g) == 200),
        "the slot comes back after the client hangs up"
    );
    g.up.release(1);
}

#[test]
fn a_client_hanging_up_before_the_upstream_answers_gives_the_concurrency_slot_back() {
    let g = one_at_a_time();
    let mut c = TcpStream::connect(&g.s.addr).unwrap();
    write!(c, "GET /up/hang HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\r\n", g.key).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || g.up.seen_at("/hang").len() == 1),
        "the request reached the upstream"
    );
    assert_slot_taken(&g);
    c.shutdown(Shutdown::Both).unwrap();
    drop(c);
    assert!(
        eventually(Duration::from_secs(30), || echo_status(&g) == 200),
        "the slot comes back when the client leaves before the upstream answers"
    );
}

#[test]
fn an_upstream_failing_mid_stream_gives_the_concurrency_slot_back() {
    let g = one_at_a_time();
    let mut st = OpenStream::get(&g.s.addr, "/up/sse?n=2&abort=1", &[("x-api-key", &g.key)]);
    assert_eq!(st.status, 200);
    g.up.release(1);
    assert!(st.read_until("data: 0\n\n"));
    assert_slot_taken(&g);
    g.up.release(1);
    assert!(!st.read_to_end(), "a body the upstream cut off is not ended cleanly for the client");
    assert!(st.text().contains("data: 1\n\n"), "what the upstream sent before failing arrived: {:?}", st.text());
    assert!(
        eventually(Duration::from_secs(30), || echo_status(&g) == 200),
        "the slot comes back after the upstream fails"
    );
}

#[test]
fn a_stream_that_goes_silent_is_ended_at_the_idle_timeout_and_gives_the_slot_back() {
    let g = one_at_a_time();
    let mut st = OpenStream::get(&g.s.addr, "/idle/sse?n=2", &[("x-api-key", &g.key)]);
    assert_eq!(st.status, 200);
    g.up.release(1);
    assert!(st.read_until("data: 0\n\n"));
    // The upstream now stays silent (event 1 is never released): the route's 1 s idle timeout
    // ends the response, so the client is not left hanging and the slot comes back.
    assert!(!st.read_to_end(), "a body ended by the idle timeout is not ended cleanly");
    assert!(
        eventually(Duration::from_secs(30), || echo_status(&g) == 200),
        "the slot comes back after the idle timeout"
    );
    g.up.release(1);
}

#[test]
fn refused_callers_never_reach_the_upstream() {
    let g = gateway();
    let (_, viewer) = g.s.create_key(&g.op, &g.tenant, "viewer");
    let other = g.s.create_tenant(&g.op, "other", "pro");
    let mut bad = g.key.clone().into_bytes();
    bad[12] = if bad[12] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    let cases: Vec<(&str, reqwest::blocking::RequestBuilder, u16)> = vec![
        ("no credential", g.s.get("/up/echo"), 401),
        ("bad key", g.s.get("/up/echo").header("x-api-key", &bad), 401),
        ("viewer key", g.s.post("/up/echo").header("x-api-key", &viewer).body("hi"), 403),
        ("viewer bearer", g.s.get("/up/echo").bearer_auth(&viewer), 403),
        ("spoofed tenant", g.s.get("/up/echo").header("x-api-key", &g.key).header("x-tenant-id", &other), 403),
        ("operator session", g.s.get("/up/echo").bearer_auth(&g.op), 403),
    ];
    for (what, req, want) in cases {
        let (status, _) = problem(req.send().unwrap());
        assert_eq!(status, want, "{what}");
    }
    assert_eq!(g.up.count(), 0, "nothing reached the upstream");
    assert!(
        g.s.audit(&g.op, "action=conversation.send&result=denied")
            .iter()
            .any(|e| e["reason"] == "rbac:no_permit" && e["metadata"]["role"] == "viewer"),
        "the viewer's refusal is audited"
    );
}

#[test]
fn every_proxied_request_is_audited_once_with_the_route_action_and_request_id() {
    let g = gateway();
    // (request id, method, path, route action, route prefix)
    let cases = [
        ("proxy-audit-0001", "POST", "/up/v1/chat", "conversation.send", "/up"),
        ("proxy-audit-0002", "GET", "/based/recall?q=x", "memory.write", "/based"),
        ("proxy-audit-0003", "GET", "/up/status/500", "conversation.send", "/up"),
        ("proxy-audit-0004", "DELETE", "/raw/item/1", "tool.request", "/raw"),
    ];
    for (rid, method, path, _, _) in cases {
        let r = g.s.request(method, path).header("x-api-key", &g.key).header("x-request-id", rid).send().unwrap();
        assert_eq!(header(&r, "x-request-id").as_deref(), Some(rid));
    }
    let seen = g.up.seen();
    for (rid, method, path, action, prefix) in cases {
        let events: Vec<Value> =
            g.s.audit(&g.op, &format!("action={action}")).into_iter().filter(|e| e["request_id"] == rid).collect();
        assert_eq!(events.len(), 1, "{rid}: one event");
        let e = &events[0];
        assert_eq!(e["result"], "success", "{rid}");
        assert_eq!(e["resource_type"], "route", "{rid}");
        assert_eq!(e["resource_id"], prefix, "{rid}");
        assert_eq!(e["user_id"], format!("key:{}", g.key_id), "{rid}");
        assert_eq!(e["tenant_id"], g.tenant.as_str(), "{rid}");
        assert_eq!(e["metadata"]["method"], method, "{rid}");
        assert_eq!(e["metadata"]["path"], path.split('?').next().unwrap(), "{rid}");
        let at_upstream: Vec<_> = seen.iter().filter(|s| s.header("x-request-id") == Some(rid)).collect();
        assert_eq!(at_upstream.len(), 1, "{rid}: the upstream got the same request id once");
    }
}

/// With `audit.fsync`, requests that arrive together share an fsync (the syncer answers their
/// batch once and the edge thread answers each of them): every one goes through, once its event
/// is on disk, and is audited exactly once.
#[test]
fn with_fsync_requests_arriving_together_each_go_through_audited_once() {
    let g = gateway_with(&[("PORTCULLIS_AUDIT__FSYNC", "true")], "", "pro", "editor");
    let ids: Vec<String> = (0..48).map(|i| format!("fsync-burst-{i:04}")).collect();
    std::thread::scope(|scope| {
        for chunk in ids.chunks(6) {
            let g = &g;
            scope.spawn(move || {
                for rid in chunk {
                    let r =
                        g.s.get("/up/burst").header("x-api-key", &g.key).header("x-request-id", rid).send().unwrap();
                    assert_eq!(r.status(), 200, "{rid}");
                }
            });
        }
    });
    let events = g.s.audit(&g.op, "action=conversation.send");
    for rid in &ids {
        let n = events.iter().filter(|e| e["request_id"] == rid.as_str()).count();
        assert_eq!(n, 1, "{rid}: audited once");
    }
    assert_eq!(
        g.up.seen().iter().filter(|s| s.header("x-request-id").is_some_and(|r| r.starts_with("fsync-burst-"))).count(),
        48
    );
}
