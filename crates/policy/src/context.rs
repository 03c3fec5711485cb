//! The Cedar `context` of a decision, from what the gateway knows (time, client address, route)
//! and what a decision request says it is about to do.
use cedar_policy::RestrictedExpression;
use serde_json::Value;
use std::net::IpAddr;

/// The longest string put into the context (tool arguments are cut there, on a char boundary).
const MAX_TEXT: usize = 8 * 1024;
const MAX_METADATA: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextInput {
    pub time_ms: i64,
    pub ip: Option<IpAddr>,
    pub route: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub message_length: Option<i64>,
    pub tool: Option<String>,
    pub tool_args: Option<String>,
    pub model: Option<String>,
    /// `key=value` for each scalar metadata entry.
    pub metadata: Vec<String>,
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl ContextInput {
    pub fn at(time_ms: i64) -> ContextInput {
        ContextInput { time_ms, ..ContextInput::default() }
    }

    /// Reads the fields a decision request may carry in its free-form `context`:
    /// `message_length` (or `message`, whose length in characters is taken), `tool` (or
    /// `tool_name`), `tool_args` (or `arguments`; any JSON, kept as compact text), `model`, and
    /// `metadata` (an object; its scalar entries). Other fields are ignored here (they are still
    /// recorded in the audit event). A resource of type `tool` names the tool when the context
    /// does not.
    pub fn with_caller_context(mut self, v: Option<&Value>, resource: Option<(&str, &str)>) -> ContextInput {
        let field = |names: &[&str]| v.and_then(|v| names.iter().find_map(|n| v.get(n)));
        self.message_length = match field(&["message_length"]).and_then(Value::as_i64) {
            Some(n) => Some(n),
            None => field(&["message"]).and_then(Value::as_str).map(|m| m.chars().count() as i64),
        };
        self.tool = field(&["tool", "tool_name"]).and_then(Value::as_str).map(cut);
        if self.tool.is_none()
            && let Some(("tool", id)) = resource
        {
            self.tool = Some(cut(id));
        }
        self.tool_args = field(&["tool_args", "arguments"]).map(|a| match a {
            Value::String(s) => cut(s),
            other => cut(&other.to_string()),
        });
        self.model = field(&["model"]).and_then(Value::as_str).map(cut);
        if let Some(Value::Object(m)) = field(&["metadata"]) {
            self.metadata = m
                .iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some(cut(&format!("{k}={v}")))
                })
                .take(MAX_METADATA)
                .collect();
        }
        self
    }

    pub(crate) fn pairs(&self) -> Vec<(String, RestrictedExpression)> {
        let secs = self.time_ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let mut v = vec![
            (String::from("time"), RestrictedExpression::new_long(secs)),
            (String::from("hour"), RestrictedExpression::new_long(secs.rem_euclid(86_400) / 3600)),
            // 1970-01-01 was a Thursday (ISO weekday 4).
            (String::from("weekday"), RestrictedExpression::new_long((days + 3).rem_euclid(7) + 1)),
            (
                String::from("metadata"),
                RestrictedExpression::new_set(
                    self.metadata.iter().map(|m| RestrictedExpression::new_string(m.clone())),
                ),
            ),
        ];
        if let Some(ip) = self.ip {
            v.push((String::from("ip"), RestrictedExpression::new_ip(ip.to_string())));
        }
        let mut text = |k: &str, s: &Option<String>| {
            if let Some(s) = s {
                v.push((k.to_owned(), RestrictedExpression::new_string(s.clone())));
            }
        };
        text("route", &self.route);
        text("method", &self.method);
        text("path", &self.path);
        text("tool", &self.tool);
        text("tool_args", &self.tool_args);
        text("model", &self.model);
        if let Some(n) = self.message_length {
            v.push((String::from("message_length"), RestrictedExpression::new_long(n)));
        }
        v
    }
}
