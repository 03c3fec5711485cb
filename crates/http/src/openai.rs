//! What an `openai`-kind route needs to know of the traffic it carries: the request's model,
//! token cap and streaming, and the response's token usage — from a JSON body or from the
//! final usage chunk of a server-sent-event stream. When a streaming client did not ask for
//! usage, the gateway asks the upstream for it and takes that chunk out of the stream again, so
//! the client sees exactly what it asked for.
use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// The most response bytes kept to find the usage of a non-streamed answer.
const MAX_JSON_BODY: usize = 8 * 1024 * 1024;
/// The longest single SSE event kept while looking for its end.
const MAX_EVENT: usize = 1024 * 1024;

/// What the request said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: Option<String>,
    /// `max_completion_tokens`, else `max_tokens`, else `max_output_tokens`.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// The gateway added `stream_options.include_usage` (and removes its chunk on the way back).
    pub usage_requested_by_gateway: bool,
    /// Bytes of the request body: an upper bound of its prompt tokens.
    pub body_len: u64,
    /// The agent session: the `X-Session-Id` header, else the body's `metadata.session_id`.
    pub session_id: Option<String>,
    /// With a session: the messages this request adds to it (those after the last assistant
    /// message; earlier ones were captured by earlier requests).
    pub new_messages: Vec<Message>,
}

/// A message of a request, as the session store takes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// user, system, developer, tool or assistant.
    pub role: String,
    pub text: String,
    /// A tool result's tool name (or call id).
    pub name: Option<String>,
}

/// The text of a message's `content`: a string, or the text of its parts.
fn content_text(c: Option<&Value>) -> String {
    match c {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The messages after the last assistant message (Chat Completions `messages`, or the
/// Responses API's `input` as a string or a list of messages).
fn new_messages(m: &serde_json::Map<String, Value>) -> Vec<Message> {
    let list = match (m.get("messages"), m.get("input")) {
        (Some(Value::Array(a)), _) | (None, Some(Value::Array(a))) => a.as_slice(),
        (None, Some(Value::String(s))) => {
            return vec![Message { role: String::from("user"), text: s.clone(), name: None }];
        }
        _ => return Vec::new(),
    };
    // A turn ends with the model's output: an assistant message, or (Responses API) one of its
    // output items, which carry a `type` and no role.
    let answered = |v: &Value| {
        v.get("role").and_then(Value::as_str) == Some("assistant")
            || matches!(v.get("type").and_then(Value::as_str), Some("function_call" | "reasoning"))
    };
    let start = list.iter().rposition(answered).map_or(0, |i| i + 1);
    list[start..]
        .iter()
        .take(64)
        .filter_map(|v| {
            if v.get("type").and_then(Value::as_str) == Some("function_call_output") {
                let output = v.get("output").map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned));
                return Some(Message {
                    role: String::from("tool"),
                    text: output.unwrap_or_default(),
                    name: v.get("call_id").and_then(Value::as_str).map(|s| s.chars().take(256).collect()),
                });
            }
            let role = v.get("role").and_then(Value::as_str)?;
            Some(Message {
                role: role.chars().take(32).collect(),
                text: content_text(v.get("content")),
                name: v
                    .get("name")
                    .or_else(|| v.get("tool_call_id"))
                    .and_then(Value::as_str)
                    .map(|s| s.chars().take(256).collect()),
            })
        })
        .collect()
}

/// Reads a JSON request body. Returns the body to forward (changed only to ask a streaming
/// upstream for usage) and what it said; a body that is not a JSON object is forwarded as is.
pub fn inspect_request(body: Bytes, header_session: Option<&str>) -> (Bytes, RequestInfo) {
    let body_len = body.len() as u64;
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&body) else {
        let session_id = header_session.map(str::to_owned);
        return (body, RequestInfo { body_len, session_id, ..RequestInfo::default() });
    };
    let session_id = header_session
        .map(str::to_owned)
        .or_else(|| m.get("metadata").and_then(|md| md.get("session_id")).and_then(Value::as_str).map(str::to_owned));
    let new_messages = if session_id.is_some() { new_messages(&m) } else { Vec::new() };
    let mut info = RequestInfo {
        session_id,
        new_messages,
        model: m.get("model").and_then(Value::as_str).map(|s| s.chars().take(128).collect()),
        max_tokens: ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| m.get(*k).and_then(Value::as_u64)),
        stream: m.get("stream").and_then(Value::as_bool).unwrap_or(false),
        usage_requested_by_gateway: false,
        body_len,
    };
    if info.stream {
        let asked =
            m.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
        if !asked {
            let opts = m.entry("stream_options").or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(o) = opts {
                o.insert(String::from("include_usage"), Value::Bool(true));
                info.usage_requested_by_gateway = true;
            }
        }
    }
    if !info.usage_requested_by_gateway {
        return (body, info);
    }
    match serde_json::to_vec(&Value::Object(m)) {
        Ok(v) => (Bytes::from(v), info),
        Err(_) => (body, RequestInfo { usage_requested_by_gateway: false, ..info }),
    }
}

/// Token counts and the model a response reported; with `collect`, also what it said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub seen: bool,
    /// Reassemble the answer's text and tool calls (for the session store).
    pub collect: bool,
    pub text: String,
    /// (name, arguments as the model wrote them), in order.
    pub tool_calls: Vec<(String, String)>,
}

/// The most answer text kept for the session store.
const MAX_TEXT: usize = 64 * 1024;

fn push_bounded(dst: &mut String, s: &str) {
    if dst.len() < MAX_TEXT {
        let room = MAX_TEXT - dst.len();
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        dst.push_str(&s[..end]);
    }
}

impl Usage {
    /// Takes `usage` (Chat Completions `prompt_tokens`/`completion_tokens`, or the Responses
    /// API's `input_tokens`/`output_tokens`) and `model` from one JSON object.
    fn take(&mut self, v: &Value) {
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            self.model = Some(m.chars().take(128).collect());
        }
        // The Responses API streams `{"type": "response.completed", "response": {…, "usage"}}`.
        let u = v.get("usage").or_else(|| v.get("response").and_then(|r| r.get("usage")));
        if let Some(u) = u.filter(|u| u.is_object()) {
            let n = |a: &str, b: &str| u.get(a).or_else(|| u.get(b)).and_then(Value::as_u64).unwrap_or(0);
            self.input_tokens = n("prompt_tokens", "input_tokens");
            self.output_tokens = n("completion_tokens", "output_tokens");
            self.seen = true;
        }
        if self.collect {
            self.collect_answer(v);
        }
    }

    /// Chat Completions (a whole `message`, or streamed `delta`s whose tool-call arguments
    /// arrive in pieces by index) and the Responses API (its `output` items, whole in the JSON
    /// answer and in the stream's `response.completed`).
    fn collect_answer(&mut self, v: &Value) {
        if let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) {
            let part = choice.get("message").or_else(|| choice.get("delta"));
            if let Some(part) = part {
                if let Some(t) = part.get("content").and_then(Value::as_str) {
                    push_bounded(&mut self.text, t);
                }
                for call in part.get("tool_calls").and_then(Value::as_array).into_iter().flatten().take(64) {
                    let index = call.get("index").and_then(Value::as_u64).map_or(self.tool_calls.len(), |i| i as usize);
                    let f = call.get("function");
                    let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
                    let args = f.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or("");
                    if index < 64 {
                        while self.tool_calls.len() <= index {
                            self.tool_calls.push((String::new(), String::new()));
                        }
                        let slot = &mut self.tool_calls[index];
                        if let Some(n) = name {
                            slot.0 = n.chars().take(256).collect();
                        }
                        push_bounded(&mut slot.1, args);
                    }
                }
            }
            return;
        }
        let response = if v.get("type").and_then(Value::as_str) == Some("response.completed") {
            v.get("response")
        } else {
            Some(v)
        };
        if let Some(output) = response.and_then(|r| r.get("output")).and_then(Value::as_array) {
            self.text.clear();
            self.tool_calls.clear();
            for item in output.iter().take(64) {
                match item.get("type").and_then(Value::as_str) {
                    Some("message") => push_bounded(&mut self.text, &content_text(item.get("content"))),
                    Some("function_call") => {
                        let name = item.get("name").and_then(Value::as_str).unwrap_or("").chars().take(256).collect();
                        let mut args = String::new();
                        push_bounded(&mut args, item.get("arguments").and_then(Value::as_str).unwrap_or(""));
                        self.tool_calls.push((name, args));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Watches a response body go by.
pub enum Scanner {
    /// A JSON answer: kept (up to a bound) and read at the end.
    Json { buf: BytesMut, overflow: bool },
    /// An event stream: read event by event. With `strip`, only whole events are passed on and
    /// the usage-only chunk the gateway asked for is held back.
    Sse { buf: BytesMut, strip: bool },
    /// Anything else: passed through untouched.
    Other,
}

/// Where an SSE event ends (after its blank line), if the buffer holds a whole one.
fn event_end(b: &[u8]) -> Option<usize> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The JSON of an event's `data:` lines, when it is JSON.
fn event_json(event: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    if data.is_empty() || data == "[DONE]" {
        return None;
    }
    serde_json::from_str(&data).ok()
}

/// The usage chunk a gateway-requested `include_usage` adds: usage, and no choices.
fn is_usage_only(v: &Value) -> bool {
    v.get("usage").is_some_and(Value::is_object)
        && v.get("choices").and_then(Value::as_array).is_some_and(|c| c.is_empty())
}

impl Scanner {
    pub fn for_response(content_type: Option<&str>, strip: bool) -> Scanner {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Scanner::Sse { buf: BytesMut::new(), strip }
        } else if ct.starts_with("application/json") || ct.is_empty() {
            Scanner::Json { buf: BytesMut::new(), overflow: false }
        } else {
            Scanner::Other
        }
    }

    /// Takes one chunk from the upstream; returns what to pass on to the client now.
    pub fn push(&mut self, chunk: Bytes, usage: &mut Usage) -> Bytes {
        match self {
            Scanner::Other => chunk,
            Scanner::Json { buf, overflow } => {
                if !*overflow {
                    if buf.len() + chunk.len() > MAX_JSON_BODY {
                        *overflow = true;
                        buf.clear();
                    } else {
                        buf.extend_from_slice(&chunk);
                    }
                }
                chunk
            }
            Scanner::Sse { buf, strip } => {
                buf.extend_from_slice(&chunk);
                let mut out = BytesMut::new();
                while let Some(end) = event_end(buf) {
                    let event = buf.split_to(end);
                    let json = event_json(&event);
                    if let Some(v) = &json {
                        usage.take(v);
                    }
                    if !(*strip && json.as_ref().is_some_and(is_usage_only)) {
                        out.extend_from_slice(&event);
                    }
                }
                if !*strip {
                    // Passed through as it came; only the unfinished tail is kept for scanning.
                    if buf.len() > MAX_EVENT {
                        buf.clear();
                    }
                    return chunk;
                }
                if buf.len() > MAX_EVENT {
                    // An event this long is not a usage chunk: pass it on and stop holding it.
                    out.extend_from_slice(&buf.split());
                }
                out.freeze()
            }
        }
    }

    /// The body ended: reads a JSON answer; returns any bytes still held (an unfinished event).
    pub fn finish(&mut self, usage: &mut Usage) -> Bytes {
        match self {
            Scanner::Json { buf, overflow } => {
                if !*overflow && let Ok(v) = serde_json::from_slice::<Value>(buf) {
                    usage.take(&v);
                }
                Bytes::new()
            }
            Scanner::Sse { buf, strip } => {
                let rest = buf.split().freeze();
                if *strip { rest } else { Bytes::new() }
            }
            Scanner::Other => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn a_streaming_request_is_asked_for_usage_once() {
        let (b, i) = inspect_request(Bytes::from_static(br#"{"model":"m1","stream":true,"max_tokens":50}"#), None);
        assert_eq!(
            (i.model.as_deref(), i.max_tokens, i.stream, i.usage_requested_by_gateway),
            (Some("m1"), Some(50), true, true)
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let asked = Bytes::from_static(br#"{"model":"m1","stream":true,"stream_options":{"include_usage":true}}"#);
        let (b, i) = inspect_request(asked.clone(), None);
        assert!(!i.usage_requested_by_gateway);
        assert_eq!(b, asked, "unchanged");
        let (b, i) = inspect_request(Bytes::from_static(b"not json"), None);
        assert_eq!((b.as_ref(), i), (&b"not json"[..], RequestInfo { body_len: 8, ..RequestInfo::default() }));
    }

    #[test]
    fn a_session_request_yields_the_messages_after_the_last_answer() {
        let body = br#"{"model":"m","metadata":{"session_id":"s-1"},"messages":[
            {"role":"system","content":"be brief"},{"role":"user","content":"hi"},
            {"role":"assistant","content":"hello"},
            {"role":"tool","tool_call_id":"call_1","content":"42"},
            {"role":"user","content":[{"type":"text","text":"and"},{"type":"text","text":"then?"}]}]}"#;
        let (_, i) = inspect_request(Bytes::from_static(body), None);
        assert_eq!(i.session_id.as_deref(), Some("s-1"));
        let got: Vec<(&str, &str, Option<&str>)> =
            i.new_messages.iter().map(|m| (m.role.as_str(), m.text.as_str(), m.name.as_deref())).collect();
        assert_eq!(got, vec![("tool", "42", Some("call_1")), ("user", "and\nthen?", None)]);
        let (_, i) = inspect_request(Bytes::from_static(body), Some("from-header"));
        assert_eq!(i.session_id.as_deref(), Some("from-header"));
        let (_, i) = inspect_request(Bytes::from_static(br#"{"messages":[{"role":"user","content":"x"}]}"#), None);
        assert!(i.session_id.is_none() && i.new_messages.is_empty(), "no session: nothing collected");
        // Responses API: a tool loop's earlier turns end with the model's function call.
        let body = br#"{"model":"m","input":[{"role":"user","content":"weather?"},
            {"type":"function_call","call_id":"c1","name":"weather","arguments":"{}"},
            {"type":"function_call_output","call_id":"c1","output":"sunny"}]}"#;
        let (_, i) = inspect_request(Bytes::from_static(body), Some("s"));
        let got: Vec<(&str, &str, Option<&str>)> =
            i.new_messages.iter().map(|m| (m.role.as_str(), m.text.as_str(), m.name.as_deref())).collect();
        assert_eq!(got, vec![("tool", "sunny", Some("c1"))]);
    }

    #[test]
    fn a_streamed_answer_and_its_tool_calls_are_reassembled() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Let me \"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"check.\",\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"shell\",\"arguments\":\"{\\\"cmd\\\":\"}}]}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"ls\\\"}\"}}]}}]}\n\n\
                      data: [DONE]\n\n";
        for chunk in [1, 5, 1000] {
            let mut s = Scanner::for_response(Some("text/event-stream"), false);
            let mut u = Usage { collect: true, ..Usage::default() };
            for c in stream.as_bytes().chunks(chunk) {
                s.push(Bytes::copy_from_slice(c), &mut u);
            }
            s.finish(&mut u);
            assert_eq!(u.text, "Let me check.");
            assert_eq!(u.tool_calls, vec![(String::from("shell"), String::from(r#"{"cmd":"ls"}"#))]);
        }
        let json = br#"{"choices":[{"message":{"role":"assistant","content":"Hi there"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let mut s = Scanner::for_response(Some("application/json"), false);
        let mut u = Usage { collect: true, ..Usage::default() };
        s.push(Bytes::from_static(json), &mut u);
        s.finish(&mut u);
        assert_eq!((u.text.as_str(), u.output_tokens), ("Hi there", 2));
    }

    #[test]
    fn usage_is_read_from_a_json_answer_split_anywhere() {
        let body = br#"{"id":"x","model":"gpt-x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34}}"#;
        for cut in [1, 7, 40, body.len() - 1] {
            let mut s = Scanner::for_response(Some("application/json"), false);
            let mut u = Usage::default();
            let a = s.push(Bytes::copy_from_slice(&body[..cut]), &mut u);
            let b = s.push(Bytes::copy_from_slice(&body[cut..]), &mut u);
            assert_eq!([a, b].concat(), body.to_vec());
            s.finish(&mut u);
            assert_eq!((u.model.as_deref(), u.input_tokens, u.output_tokens, u.seen), (Some("gpt-x"), 12, 34, true));
        }
    }

    const STREAM: &str = "data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n\
                          data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\r\n\r\n\
                          data: {\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
                          data: [DONE]\n\n";

    fn run(strip: bool, chunk: usize) -> (String, Usage) {
        let mut s = Scanner::for_response(Some("text/event-stream; charset=utf-8"), strip);
        let mut u = Usage::default();
        let mut out = Vec::new();
        for c in STREAM.as_bytes().chunks(chunk) {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c), &mut u));
        }
        out.extend_from_slice(&s.finish(&mut u));
        (String::from_utf8(out).unwrap(), u)
    }

    #[test]
    fn a_stream_passes_unchanged_when_the_client_asked_for_usage() {
        for chunk in [1, 3, 17, 1000] {
            let (out, u) = run(false, chunk);
            assert_eq!(out, STREAM);
            assert_eq!((u.input_tokens, u.output_tokens, u.seen), (5, 2, true));
        }
    }

    #[test]
    fn the_usage_chunk_the_gateway_asked_for_is_taken_out() {
        for chunk in [1, 3, 17, 1000] {
            let (out, u) = run(true, chunk);
            assert!(!out.contains("prompt_tokens"), "{out}");
            assert!(out.contains("Hel") && out.contains("lo") && out.ends_with("data: [DONE]\n\n"), "{out}");
            assert_eq!((u.input_tokens, u.output_tokens), (5, 2));
        }
    }
}
