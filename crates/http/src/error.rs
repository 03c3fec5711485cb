//! The one place errors become HTTP: every failure is an RFC 9457 problem+json document with the
//! request id. Handlers return [`ApiError`]; the request-id middleware fills in `request_id`
//! (it is the layer that knows it) when it sees the [`Problem`] extension.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_guard::GuardError;
use portcullis_store::StoreError;

/// Set on error responses; rendered into the body by the outer middleware.
#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
    /// Extension members (RFC 9457 §3.2), e.g. `errors` of a policy that does not validate.
    pub extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// 400 with extension members (e.g. `errors` with positions).
    #[error("{0}")]
    Invalid(String, serde_json::Map<String, serde_json::Value>),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("too many requests")]
    Throttled(u64),
    #[error("the request body exceeds the size limit")]
    PayloadTooLarge,
    #[error("limit reached: {}", .0.kind.as_str())]
    Limited(portcullis_limiter::Rejection),
    /// 402: a budget window cannot take this request.
    #[error("budget exhausted")]
    Budget(portcullis_limiter::BudgetExceeded),
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream could not be reached")]
    BadGateway,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Invalid(..) => (StatusCode::BAD_REQUEST, "invalid", "Invalid input"),
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "throttled", "Too many requests"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large"),
            // The caller did nothing wrong when the shared limiter cannot decide: 503, so that
            // clients and dashboards do not read an outage as the tenant's own overuse.
            ApiError::Limited(r) if r.kind == portcullis_limiter::LimitKind::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "limits-unavailable", "Limits unavailable")
            }
            ApiError::Limited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Limit reached"),
            ApiError::Budget(_) => (StatusCode::PAYMENT_REQUIRED, "budget-exhausted", "Budget exhausted"),
            ApiError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", "Upstream timeout"),
            ApiError::BadGateway => (StatusCode::BAD_GATEWAY, "bad-gateway", "Bad gateway"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }
}

impl From<GuardError> for ApiError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::Unauthenticated(r) => ApiError::Unauthenticated(format!("credential rejected: {r}")),
            GuardError::Forbidden(r) => ApiError::Forbidden(r.to_owned()),
            GuardError::NotFound => ApiError::NotFound,
            GuardError::Throttled { retry_after_secs } => ApiError::Throttled(retry_after_secs),
            GuardError::AuditUnavailable(e) => {
                tracing::error!(error = %e, "request refused: audit log unavailable");
                ApiError::Unavailable(String::from("the audit log cannot be written; nothing was changed"))
            }
            GuardError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::Unavailable(msg) => {
                tracing::error!(error = %msg, "store unavailable");
                ApiError::Unavailable(String::from("the store is unavailable"))
            }
            StoreError::Corrupt(msg) => {
                tracing::error!(error = %msg, "corrupt store row");
                ApiError::Internal(msg)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        let detail = match &self {
            // Internal details go to the log, never to the client.
            ApiError::Internal(_) => {
                String::from("an internal error occurred; the request id identifies it in the logs")
            }
            ApiError::NotFound => String::from("no such resource"),
            ApiError::Throttled(s) => format!("too many attempts; retry after {s} s"),
            ApiError::Limited(r) if r.kind == portcullis_limiter::LimitKind::Unavailable => format!(
                "the shared limiter (Redis) is unavailable and this gateway is configured to fail closed; retry after {} s",
                r.retry_after_secs
            ),
            ApiError::Limited(r) => format!(
                "{} limit reached; retry after {} s",
                match r.kind {
                    portcullis_limiter::LimitKind::Global => "the gateway's global rate",
                    portcullis_limiter::LimitKind::Tenant => "the tenant's rate",
                    portcullis_limiter::LimitKind::Principal => "the caller's rate",
                    portcullis_limiter::LimitKind::Route => "this route's rate",
                    portcullis_limiter::LimitKind::Concurrency => "the tenant's concurrency",
                    portcullis_limiter::LimitKind::Quota => "the tenant's daily request quota",
                    portcullis_limiter::LimitKind::Unavailable => "the shared limiter",
                },
                r.retry_after_secs
            ),
            ApiError::Budget(b) => format!(
                "the tenant's {} budget of ${:.2} is used up (${:.6} spent or reserved; this request may cost up to ${:.6}); it resets at {}",
                b.window.kind,
                portcullis_core::limits::nanos_to_usd(b.window.limit_nanos),
                portcullis_core::limits::nanos_to_usd(b.used_nanos),
                portcullis_core::limits::nanos_to_usd(b.amount_nanos),
                portcullis_core::timefmt::rfc3339_ms(b.window.reset_ms)
            ),
            other => other.to_string(),
        };
        let retry = match &self {
            ApiError::Throttled(s) => Some(*s),
            ApiError::Limited(r) => Some(r.retry_after_secs),
            ApiError::Budget(b) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or(0);
                Some(u64::try_from((b.window.reset_ms - now).max(0)).unwrap_or(0).div_ceil(1000))
            }
            _ => None,
        };
        let mut res = status.into_response();
        // No X-RateLimit-* on an unavailable limiter: nothing is known about the caller's rate.
        if let ApiError::Limited(r) = &self
            && r.kind != portcullis_limiter::LimitKind::Unavailable
        {
            crate::proxy::rate_headers(res.headers_mut(), &r.rate);
        }
        if let Some(s) = retry
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        let extensions = match self {
            ApiError::Invalid(_, ext) => Some(ext),
            ApiError::Budget(b) => {
                let mut ext = serde_json::Map::new();
                ext.insert(String::from("window"), serde_json::Value::from(b.window.kind));
                ext.insert(String::from("window_id"), serde_json::Value::from(b.window.id.clone()));
                ext.insert(
                    String::from("limit_usd"),
                    serde_json::json!(portcullis_core::limits::nanos_to_usd(b.window.limit_nanos)),
                );
                ext.insert(
                    String::from("used_usd"),
                    serde_json::json!(portcullis_core::limits::nanos_to_usd(b.used_nanos)),
                );
                ext.insert(
                    String::from("reset_at"),
                    serde_json::Value::from(portcullis_core::timefmt::rfc3339_ms(b.window.reset_ms)),
                );
                Some(ext)
            }
            _ => None,
        };
        res.extensions_mut().insert(Problem { kind, title, detail, retry_after_secs: retry, extensions });
        res
    }
}

/// Renders a problem document.
pub fn problem_body(status: StatusCode, p: &Problem, request_id: &str) -> Vec<u8> {
    let mut doc = serde_json::json!({
        "type": format!("https://portcullis.dev/problems/{}", p.kind),
        "title": p.title,
        "status": status.as_u16(),
        "detail": p.detail,
        "request_id": request_id,
    });
    if let (Some(ext), serde_json::Value::Object(m)) = (&p.extensions, &mut doc) {
        for (k, v) in ext {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// A problem for a status that reached the outer layer without one (405 from the router,
/// 413 from the body limit, 408 from the timeout, …).
pub fn generic_problem(status: StatusCode) -> Problem {
    let (kind, title, detail) = match status.as_u16() {
        404 => ("not-found", "Not found", "no such route"),
        405 => ("method-not-allowed", "Method not allowed", "this route does not accept that method"),
        408 => ("timeout", "Request timeout", "the request took too long"),
        413 => ("payload-too-large", "Payload too large", "the request body exceeds the size limit"),
        415 => ("unsupported-media-type", "Unsupported media type", "send application/json"),
        400..=499 => ("bad-request", "Bad request", "the request could not be processed"),
        _ => ("internal", "Internal error", "an internal error occurred"),
    };
    Problem { kind, title, detail: detail.to_owned(), retry_after_secs: None, extensions: None }
}

/// The problem+json document, for the OpenAPI description.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProblemDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub request_id: String,
}

impl From<portcullis_guard::admin::AdminError> for ApiError {
    fn from(e: portcullis_guard::admin::AdminError) -> Self {
        use portcullis_guard::admin::AdminError;
        match e {
            AdminError::Invalid(m) => ApiError::BadRequest(m),
            AdminError::Conflict(m) => ApiError::Conflict(m),
            AdminError::InvalidPolicy(m, problems) => {
                let mut ext = serde_json::Map::new();
                ext.insert(String::from("errors"), serde_json::to_value(problems).unwrap_or_default());
                ApiError::Invalid(m, ext)
            }
            AdminError::Guard(g) => g.into(),
        }
    }
}
