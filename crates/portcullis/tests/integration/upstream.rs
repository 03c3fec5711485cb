//! A scripted upstream HTTP/1.1 server standing for the customer's service behind a route: std
//! threads on `127.0.0.1:0`, keep-alive, Content-Length or chunked request bodies. It records
//! every request it receives so tests can assert what crossed the proxy.
//!
//! Endpoints are chosen by the end of the path, so they work behind any prefix or base path:
//! - `…/status/{code}`: that status with the body `upstream says {code}` (text/plain);
//! - `…/big/{bytes}`: a body of `bytes` bytes of [`pattern`];
//! - `…/slow/{ms}`: waits `ms` before answering headers;
//! - `…/sse?n=N[&abort=1]`: a chunked `text/event-stream` of N events `data: i\n\n`; each event
//!   waits for one [`Upstream::release`]; with `abort=1` the connection is cut after the last
//!   event instead of ending the body;
//! - `…/hang`: reads the request and never answers;
//! - `…/page`: an HTML page with a permissive CSP of its own and two cookies, one of them named
//!   like the gateway's UI session;
//! - `…/completions` with a JSON body holding `messages`: an OpenAI-style chat completion of it
//!   (other bodies get the echo): `prompt_tokens` is the
//!   number of characters of the messages' contents, `completion_tokens` the request's
//!   `max_tokens` (7 when absent); with `"stream": true` three SSE chunks, the usage chunk only
//!   when `stream_options.include_usage` is set (as OpenAI does), then `data: [DONE]`; a
//!   `delay_ms` field waits that long first, `body_delay_ms` that long between the head and the
//!   body of a JSON answer, `"fail": true` answers 500;
//! - anything else: echo, a JSON [`Seen`] of the request.
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long an SSE event waits for [`Upstream::release`] before the stream is cut.
const GATE_LIMIT: Duration = Duration::from_secs(120);

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lowercase names, in arrival order, repeats kept.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_sum: String,
    /// False when the connection ended before the whole body arrived.
    pub complete: bool,
    /// The body as text (lossy), for bodies up to 64 KiB; empty otherwise.
    pub body_text: String,
}

impl Seen {
    /// Every value of a header (name in any case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The single value of a header; panics when it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "header {name} repeated: {all:?}");
        all.first().copied()
    }

    pub fn to_json(&self) -> Value {
        let mut headers = serde_json::Map::new();
        for (k, v) in &self.headers {
            let joined = match headers.get(k).and_then(Value::as_str) {
                Some(prev) => format!("{prev}, {v}"),
                None => v.clone(),
            };
            headers.insert(k.clone(), Value::String(joined));
        }
        json!({
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body_len": self.body_len,
            "body_sum": self.body_sum,
        })
    }
}

/// A local port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// FNV-1a 64, hex: a checksum both sides can compute without extra dependencies.
pub fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The bytes `…/big/{n}` sends.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    /// SSE events the test has allowed to be sent and not yet sent.
    permits: Mutex<u64>,
    /// Signalled on release and on shutdown.
    wake: Condvar,
    stopping: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

pub struct Upstream {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    shared: Arc<Shared>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    sh.conns.lock().unwrap().push(c);
                }
                let sh = sh.clone();
                std::thread::spawn(move || serve(conn, &sh));
            }
        });
        Upstream { addr, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// The requests received whose path ends with `suffix`.
    pub fn seen_at(&self, suffix: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path.ends_with(suffix)).collect()
    }

    /// A `[[routes]]` entry to this upstream: `base` is the upstream URL's path ("" for none),
    /// `extra` further TOML lines (`timeout_secs = 1`, `strip_prefix = false`, ...).
    pub fn route(&self, prefix: &str, base: &str, action: &str, extra: &str) -> String {
        format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{}{base}\"\naction = \"{action}\"\n{extra}\n",
            self.url()
        )
    }

    /// Lets SSE streams send `n` more events (shared by all open streams).
    pub fn release(&self, n: u64) {
        *self.shared.permits.lock().unwrap() += n;
        self.shared.wake.notify_all();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the acceptor so it sees `stopping`.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Reads a CRLF line without the line end; None at EOF.
fn line(r: &mut impl BufRead) -> Option<String> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf).ok()?;
    if n == 0 {
        return None;
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads a body; the bool says whether it arrived whole.
fn body(r: &mut impl BufRead, headers: &[(String, String)]) -> (Vec<u8>, bool) {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_ascii_lowercase());
    let mut out = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let Some(size_line) = line(r) else { return (out, false) };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    match line(r) {
                        Some(l) if l.is_empty() => return (out, true),
                        Some(_) => continue,
                        None => return (out, false),
                    }
                }
            }
            let start = out.len();
            out.resize(start + size, 0);
            if r.read_exact(&mut out[start..]).is_err() {
                out.truncate(start);
                return (out, false);
            }
            if line(r).is_none() {
                return (out, false);
            }
        }
    }
    let len = get("content-length").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
    let mut chunk = [0u8; 64 * 1024];
    while out.len() < len {
        let want = (len - out.len()).min(chunk.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) | Err(_) => return (out, false),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    (out, true)
}

fn respond(w: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} Status\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn chunk(w: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    w.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

/// Serves one connection: requests until EOF, an error, or an endpoint that ends it.
fn serve(conn: TcpStream, sh: &Shared) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        let Some(request_line) = line(&mut r) else { return };
        if request_line.is_empty() {
            continue;
        }
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        loop {
            let Some(l) = line(&mut r) else { return };
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.clone(), None),
        };
        let (bytes, complete) = body(&mut r, &headers);
        let body_text =
            if bytes.len() <= 64 * 1024 { String::from_utf8_lossy(&bytes).into_owned() } else { String::new() };
        let seen = Seen {
            method,
            path,
            query,
            headers,
            body_len: bytes.len(),
            body_sum: checksum(&bytes),
            complete,
            body_text,
        };
        sh.seen.lock().unwrap().push(seen.clone());
        if !complete {
            return;
        }
        if answer(&mut w, &seen, sh).is_err() {
            return;
        }
    }
}

/// Answers one request; Err ends the connection.
fn answer(w: &mut TcpStream, seen: &Seen, sh: &Shared) -> std::io::Result<()> {
    let segs: Vec<&str> = seen.path.split('/').filter(|s| !s.is_empty()).collect();
    let last = segs.last().copied().unwrap_or("");
    let arg = |name: &str| -> Option<u64> {
        let n = segs.len();
        (n >= 2 && segs[n - 2] == name).then(|| segs[n - 1].parse().ok()).flatten()
    };
    let param = |name: &str| -> Option<u64> {
        seen.query.as_deref()?.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))?.parse().ok())
    };
    let text = |s: &str| vec![("content-type", String::from("text/plain")), ("x-upstream", s.to_owned())];
    if let Some(code) = arg("status") {
        let code = u16::try_from(code).unwrap_or(500);
        return respond(w, code, &text("status"), format!("upstream says {code}").as_bytes());
    }
    if let Some(n) = arg("big") {
        let n = usize::try_from(n).unwrap_or(0);
        let body = pattern(n);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n");
        w.write_all(head.as_bytes())?;
        for part in body.chunks(64 * 1024) {
            w.write_all(part)?;
        }
        return w.flush();
    }
    if let Some(ms) = arg("slow") {
        std::thread::sleep(Duration::from_millis(ms));
        return respond(w, 200, &text("slow"), b"finally");
    }
    if last == "completions" && seen.body_text.contains("\"messages\"") {
        return completion(w, seen);
    }
    if last == "page" {
        let headers = [
            ("content-type", String::from("text/html; charset=utf-8")),
            ("content-security-policy", String::from("default-src * 'unsafe-inline'")),
            ("set-cookie", String::from("portcullis_session=pcs_planted; Path=/")),
            ("set-cookie", String::from("theirs=1; Path=/")),
        ];
        return respond(w, 200, &headers, b"<script>fetch('/ui/session')</script>");
    }
    if last == "hang" {
        let mut g = sh.permits.lock().unwrap();
        while !sh.stopping.load(Ordering::SeqCst) {
            g = sh.wake.wait(g).unwrap();
        }
        return Err(std::io::Error::other("hang ends with the upstream"));
    }
    if last == "sse" {
        let n = param("n").unwrap_or(3);
        w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
        )?;
        w.flush()?;
        for i in 0..n {
            wait_for_permit(sh)?;
            chunk(w, format!("data: {i}\n\n").as_bytes())?;
        }
        if param("abort") == Some(1) {
            let _ = w.shutdown(Shutdown::Both);
            return Err(std::io::Error::other("aborted on purpose"));
        }
        w.write_all(b"0\r\n\r\n")?;
        return w.flush();
    }
    let body = serde_json::to_vec(&seen.to_json()).unwrap_or_default();
    respond(
        w,
        200,
        &[
            ("content-type", String::from("application/json")),
            // Hop-by-hop on the way back: the proxy must drop `x-upstream-hop`, keep `x-upstream-kept`.
            ("connection", String::from("keep-alive, x-upstream-hop")),
            ("x-upstream-hop", String::from("1")),
            ("x-upstream-kept", String::from("1")),
        ],
        &body,
    )
}

fn wait_for_permit(sh: &Shared) -> std::io::Result<()> {
    let mut permits = sh.permits.lock().unwrap();
    let deadline = std::time::Instant::now() + GATE_LIMIT;
    while *permits == 0 {
        if sh.stopping.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("upstream stopping"));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::other("no permit in time"));
        }
        permits = sh.wake.wait_timeout(permits, left).unwrap().0;
    }
    *permits -= 1;
    Ok(())
}

/// The scripted chat completion (see the module header).
fn completion(w: &mut TcpStream, seen: &Seen) -> std::io::Result<()> {
    let req: Value = serde_json::from_str(&seen.body_text).unwrap_or(Value::Null);
    if let Some(ms) = req["delay_ms"].as_u64() {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if req["fail"].as_bool() == Some(true) {
        return respond(w, 500, &[("content-type", String::from("application/json"))], br#"{"error":"scripted"}"#);
    }
    let model = req["model"].as_str().unwrap_or("unknown").to_owned();
    let prompt: usize = req["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["content"].as_str()).map(|c| c.chars().count()).sum())
        .unwrap_or(0);
    let completion = req["max_tokens"].as_u64().unwrap_or(7);
    let usage =
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt as u64 + completion});
    // `reply` scripts the answer's text, `tool_call` ({name, arguments}) a tool call in it.
    let reply = req["reply"].as_str().unwrap_or("ok");
    let tool_call = req.get("tool_call").filter(|t| t.is_object());
    if req["stream"].as_bool() != Some(true) {
        let mut message = json!({"role": "assistant", "content": reply});
        if let Some(t) = tool_call {
            message["tool_calls"] = json!([{"id": "call_1", "type": "function",
                "function": {"name": t["name"], "arguments": t["arguments"].to_string()}}]);
        }
        let body = json!({
            "id": "cmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        });
        let body = body.to_string();
        if let Some(ms) = req["body_delay_ms"].as_u64() {
            // The head now, the answer later: a client may have left in between.
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
            w.write_all(head.as_bytes())?;
            w.flush()?;
            std::thread::sleep(Duration::from_millis(ms));
            w.write_all(body.as_bytes())?;
            return w.flush();
        }
        return respond(w, 200, &[("content-type", String::from("application/json"))], body.as_bytes());
    }
    let include = req["stream_options"]["include_usage"].as_bool() == Some(true);
    w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")?;
    for word in ["Hel", "lo", "!"] {
        let mut c = json!({"id": "cmpl-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": word}}]});
        if include {
            c["usage"] = Value::Null;
        }
        chunk(w, format!("data: {c}\n\n").as_bytes())?;
    }
    if let Some(t) = tool_call {
        // The arguments arrive in two pieces, as models stream them.
        let args = t["arguments"].to_string();
        let (a, b) = args.split_at(args.len() / 2);
        for (i, piece) in [a, b].iter().enumerate() {
            let mut f = json!({"arguments": piece});
            if i == 0 {
                f["name"] = t["name"].clone();
            }
            let c = json!({"id": "cmpl-1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": f}]}}]});
            chunk(w, format!("data: {c}\n\n").as_bytes())?;
        }
    }
    if include {
        let c =
            json!({"id": "cmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage});
        chunk(w, format!("data: {c}\n\n").as_bytes())?;
    }
    chunk(w, b"data: [DONE]\n\n")?;
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}
