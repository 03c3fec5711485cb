//! Agent sessions: the events of one conversation (user and assistant messages, tool calls,
//! system notes such as a policy decision), their statistics, timeline summaries and the
//! redaction applied before anything is stored. No I/O.
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    User,
    Assistant,
    Tool,
    System,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::User => "user",
            EventKind::Assistant => "assistant",
            EventKind::Tool => "tool",
            EventKind::System => "system",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user" => Ok(EventKind::User),
            "assistant" => Ok(EventKind::Assistant),
            "tool" => Ok(EventKind::Tool),
            "system" => Ok(EventKind::System),
            other => Err(format!("unknown event type `{other}`: expected user, assistant, tool or system")),
        }
    }
}

pub const MAX_SESSION_ID: usize = 128;
/// Longest message kept per event (longer ones are cut, and the event says so).
pub const MAX_MESSAGE_CHARS: usize = 32 * 1024;

/// Session ids come from clients: printable, short, no spaces or slashes.
pub fn check_session_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SESSION_ID {
        return Err(format!("session id must have 1 to {MAX_SESSION_ID} characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@')) {
        return Err(String::from("session id may contain only letters, digits and `-_.:@`"));
    }
    Ok(())
}

/// How a policy decision about the event went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDecision {
    /// `allow` or `deny`.
    pub result: String,
    pub action: String,
    /// The policies that decided it (for a deny: the forbids that matched, or none when nothing
    /// permitted).
    pub policies: Vec<String>,
}

impl EventDecision {
    pub fn denied(&self) -> bool {
        self.result == "deny"
    }
}

/// What a tenant wants captured from its traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Messages and tool arguments, after redaction.
    #[default]
    Full,
    /// Events without message text or tool arguments: who, when, which tool, tokens, decisions.
    Metadata,
    /// Nothing from traffic (events appended through the API are still stored).
    Off,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Full => "full",
            CaptureMode::Metadata => "metadata",
            CaptureMode::Off => "off",
        }
    }
}

impl FromStr for CaptureMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(CaptureMode::Full),
            "metadata" => Ok(CaptureMode::Metadata),
            "off" => Ok(CaptureMode::Off),
            other => Err(format!("capture `{other}`: expected `full`, `metadata` or `off`")),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSettings {
    pub capture: CaptureMode,
    /// Regular expressions whose matches are replaced by `[REDACTED]` in messages, tool
    /// arguments and metadata, besides the built-in credential patterns.
    pub redact_patterns: Vec<String>,
}

pub const MAX_REDACT_PATTERNS: usize = 32;
pub const REDACTED: &str = "[REDACTED]";

/// Credentials that must never land in a transcript, whatever the tenant configured: our own
/// key and session formats, common provider keys, bearer tokens and private key blocks.
const BUILTIN: &[&str] = &[
    r"\bpc_[A-Za-z0-9]{20,}\b",
    r"\bpcs_[0-9a-f]{32,}\b",
    r"\bsk-[A-Za-z0-9_\-]{16,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{16,}=*",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
];

/// The compiled redaction of one tenant.
#[derive(Clone, Debug)]
pub struct Redactor {
    patterns: Vec<Regex>,
}

impl Redactor {
    /// Compiles the built-in patterns and the tenant's; names the first pattern that does not
    /// compile. Patterns are size-limited so a hostile one cannot exhaust memory.
    pub fn new(extra: &[String]) -> Result<Redactor, String> {
        if extra.len() > MAX_REDACT_PATTERNS {
            return Err(format!("at most {MAX_REDACT_PATTERNS} redact patterns"));
        }
        let mut patterns = Vec::with_capacity(BUILTIN.len() + extra.len());
        for p in BUILTIN.iter().copied().chain(extra.iter().map(String::as_str)) {
            if p.is_empty() || p.len() > 512 {
                return Err(String::from("a redact pattern must have 1 to 512 characters"));
            }
            let re = regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("redact pattern `{p}` is not a valid regular expression: {e}"))?;
            if re.is_match("") {
                return Err(format!(
                    "redact pattern `{p}` matches the empty text (it would redact between every character)"
                ));
            }
            patterns.push(re);
        }
        Ok(Redactor { patterns })
    }

    pub fn builtin() -> Redactor {
        // The built-in patterns are constants that compile; an empty list is the safe fallback.
        Redactor::new(&[]).unwrap_or(Redactor { patterns: Vec::new() })
    }

    /// The built-in redaction, compiled once per process.
    pub fn shared_builtin() -> &'static Redactor {
        static BUILTIN_REDACTOR: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
        BUILTIN_REDACTOR.get_or_init(Redactor::builtin)
    }

    pub fn text(&self, s: &str) -> String {
        let mut out = std::borrow::Cow::Borrowed(s);
        for re in &self.patterns {
            if re.is_match(&out) {
                out = std::borrow::Cow::Owned(re.replace_all(&out, REDACTED).into_owned());
            }
        }
        out.into_owned()
    }

    /// Redacts every string in a JSON value (keys stay).
    pub fn json(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = self.text(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.json(x)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| self.json(x)),
            _ => {}
        }
    }
}

/// The length of a JSON value's compact text, counted without building the text.
pub fn json_len(v: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Text as stored: NUL characters (which PostgreSQL text cannot hold) replaced, cut to
/// [`MAX_MESSAGE_CHARS`]. Returns whether it was cut.
pub fn clean_text(s: &str) -> (String, bool) {
    let mut out: String = s.chars().take(MAX_MESSAGE_CHARS).map(|c| if c == '\0' { '\u{FFFD}' } else { c }).collect();
    let cut = s.chars().nth(MAX_MESSAGE_CHARS).is_some();
    if cut {
        out.push('…');
    }
    (out, cut)
}

/// One line for the timeline.
pub fn summary(
    kind: EventKind,
    message: Option<&str>,
    tool_name: Option<&str>,
    decision: Option<&EventDecision>,
) -> String {
    let short = |s: &str| {
        let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() > 80 {
            format!("{}…", one_line.chars().take(80).collect::<String>())
        } else {
            one_line
        }
    };
    let verdict = decision.map(|d| {
        if d.denied() {
            if d.policies.is_empty() {
                String::from(" — denied (no policy permits it)")
            } else {
                format!(" — denied by {}", d.policies.join(", "))
            }
        } else {
            String::from(" — allowed")
        }
    });
    let base = match kind {
        EventKind::User => format!("User: {}", short(message.unwrap_or(""))),
        EventKind::Assistant => format!("Assistant: {}", short(message.unwrap_or(""))),
        EventKind::Tool => format!("Tool: {}", tool_name.unwrap_or("(unnamed)")),
        EventKind::System => format!("System: {}", short(message.unwrap_or(""))),
    };
    format!("{base}{}", verdict.unwrap_or_default())
}

/// The counters of a session, as the inspector shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total_events: u64,
    pub user_messages: u64,
    pub assistant_messages: u64,
    pub tool_calls: u64,
    pub denied: u64,
}

impl Counts {
    pub fn add(&mut self, kind: EventKind, denied: bool) {
        self.total_events += 1;
        match kind {
            EventKind::User => self.user_messages += 1,
            EventKind::Assistant => self.assistant_messages += 1,
            EventKind::Tool => self.tool_calls += 1,
            EventKind::System => {}
        }
        if denied {
            self.denied += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn session_ids_are_checked() {
        assert!(check_session_id("sess-1:a@b.c_d").is_ok());
        assert!(check_session_id("").is_err());
        assert!(check_session_id("a/b").is_err());
        assert!(check_session_id("a b").is_err());
        assert!(check_session_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn builtin_redaction_hides_credentials_and_keeps_the_rest() {
        let r = Redactor::builtin();
        let s = r.text("use sk-abcdefghijklmnop1234 and Bearer abcdefghijklmnopqrstu please");
        assert_eq!(s, "use [REDACTED] and [REDACTED] please");
        assert_eq!(r.text("nothing secret"), "nothing secret");
    }

    #[test]
    fn tenant_patterns_apply_to_json_strings() {
        let r = Redactor::new(&[String::from(r"\b\d{3}-\d{2}-\d{4}\b")]).unwrap();
        let mut v = serde_json::json!({"ssn": "123-45-6789", "n": 5, "list": ["ok", "987-65-4321"]});
        r.json(&mut v);
        assert_eq!(v, serde_json::json!({"ssn": "[REDACTED]", "n": 5, "list": ["ok", "[REDACTED]"]}));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let e = Redactor::new(&[String::from("(unclosed")]).err().unwrap_or_default();
        assert!(e.contains("(unclosed"), "{e}");
        let e = Redactor::new(&[String::from("a*")]).err().unwrap_or_default();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn json_len_is_the_length_of_the_text() {
        let v = serde_json::json!({"a": [1, "é\u{0}", null], "b": {"c": true}});
        assert_eq!(json_len(&v), v.to_string().len());
    }

    #[test]
    fn text_is_cleaned_and_cut() {
        assert_eq!(clean_text("a\0b"), (String::from("a\u{FFFD}b"), false));
        let long = "x".repeat(MAX_MESSAGE_CHARS + 5);
        let (s, cut) = clean_text(&long);
        assert!(cut);
        assert_eq!(s.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn summaries_name_the_denying_policy() {
        let d = EventDecision {
            result: String::from("deny"),
            action: String::from("tool.request"),
            policies: vec![String::from("p1")],
        };
        assert_eq!(summary(EventKind::Tool, None, Some("shell"), Some(&d)), "Tool: shell — denied by p1");
        assert_eq!(summary(EventKind::User, Some("hello\n  world"), None, None), "User: hello world");
    }
}
