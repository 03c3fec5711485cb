//! The outermost layer, on every response: request id (propagated when well-formed, generated
//! otherwise), request smuggling guard (Content-Length together with Transfer-Encoding is
//! refused), security headers, and problem+json rendering with the request id.
use crate::error::ApiError;
use crate::error::{Problem, generic_problem, problem_body};
use crate::metrics::{RouteLabel, TenantCell};
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use portcullis_core::audit::AuditResult;
use portcullis_core::iplist::{IpVerdict, client_ip};
use portcullis_guard::RequestMeta;
use std::net::SocketAddr;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The peer address of the connection, inserted by the server for every request.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// All `X-Forwarded-For` lines joined with `,`, or `None` when there are none.
pub fn forwarded_for(h: &HeaderMap) -> Option<String> {
    let lines: Vec<&str> = h.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn security_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'; base-uri 'none'");
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
}

pub async fn edge(State(app): State<crate::AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    // Every X-Forwarded-For line, in order: a proxy may add its own line instead of appending, and
    // a client's forged line must not be the only one read.
    let forwarded = forwarded_for(req.headers());
    let client = peer.map(|p| client_ip(p, forwarded.as_deref(), &app.settings.trusted_proxies));
    let ip = client.map(|c| c.to_string());
    let user_agent =
        req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(512).collect());
    let meta = RequestMeta { request_id: request_id.clone(), ip, user_agent };
    req.extensions_mut().insert(meta.clone());
    let started = std::time::Instant::now();
    let tenant_cell = TenantCell::default();
    req.extensions_mut().insert(tenant_cell.clone());
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());

    let verdict = client.map(|c| app.settings.global_ip.check(c)).unwrap_or(IpVerdict::Allowed);

    let smuggling =
        req.headers().contains_key(header::CONTENT_LENGTH) && req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut res = if verdict != IpVerdict::Allowed {
        let mut e = app.guard.event(&meta, "ip.denied", AuditResult::Denied);
        e.reason = Some(String::from(if verdict == IpVerdict::Blocked {
            "global_ip_blocked"
        } else {
            "global_ip_not_allowed"
        }));
        match app.guard.record(e).await {
            Ok(()) => ApiError::Forbidden(String::from("the client address is not allowed")).into_response(),
            Err(err) => ApiError::from(err).into_response(),
        }
    } else if smuggling {
        ApiError::BadRequest(String::from(
            "Content-Length and Transfer-Encoding together are refused (request smuggling)",
        ))
        .into_response()
    } else {
        next.run(req).await
    };

    let status = res.status();
    let proxied = res.extensions().get::<crate::proxy::Proxied>().is_some();
    let problem = res.extensions_mut().remove::<Problem>();
    let is_problem_json =
        res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if problem.is_some() || (status.as_u16() >= 400 && !is_problem_json && !proxied) {
        let p = problem.unwrap_or_else(|| generic_problem(status));
        let (mut parts, _) = res.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        parts.headers.remove(header::CONTENT_LENGTH);
        res = Response::from_parts(parts, Body::from(problem_body(status, &p, &request_id)));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let route = res
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.clone())
        .or(matched)
        .unwrap_or_else(|| String::from("unmatched"));
    let tenant = tenant_cell.0.get().map(|t| app.tenant_labels.label(t)).unwrap_or_else(|| String::from("none"));
    metrics::counter!("portcullis_requests_total", "route" => route.clone(), "status" => status.as_str().to_owned(), "tenant" => tenant)
        .increment(1);
    metrics::histogram!("portcullis_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    security_headers(res.headers_mut());
    if smuggling {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}
