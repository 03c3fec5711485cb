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

/// The edge's view of one request: opened before anything else runs, closed on the response.
/// The axum layer ([`edge`]) and the data plane's own path both go through it, so every response
/// gets the same request id, security headers, problem rendering and metrics.
pub(crate) struct EdgeCtx {
    pub meta: RequestMeta,
    pub tenant: TenantCell,
    started: std::time::Instant,
    matched: Option<String>,
    smuggling: bool,
    verdict: IpVerdict,
}

impl EdgeCtx {
    pub(crate) fn begin(
        app: &crate::AppState,
        headers: &HeaderMap,
        peer: Option<std::net::IpAddr>,
        matched: Option<String>,
    ) -> EdgeCtx {
        let request_id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let mut buf = uuid::Uuid::encode_buffer();
                uuid::Uuid::now_v7().simple().encode_lower(&mut buf).to_owned()
            });
        // Every X-Forwarded-For line, in order: a proxy may add its own line instead of
        // appending, and a client's forged line must not be the only one read.
        let client = peer.map(|p| {
            if app.settings.trusted_proxies.contains(p) {
                client_ip(p, forwarded_for(headers).as_deref(), &app.settings.trusted_proxies)
            } else {
                p
            }
        });
        let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| {
            // At most 512 characters (a header value is visible ASCII, so bytes are characters).
            s.get(..512).unwrap_or(s).to_owned()
        });
        let verdict = client.map(|c| app.settings.global_ip.check(c)).unwrap_or(IpVerdict::Allowed);
        let smuggling = headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING);
        EdgeCtx {
            meta: RequestMeta { request_id, ip: client.map(ip_text), user_agent },
            tenant: TenantCell::default(),
            started: std::time::Instant::now(),
            matched,
            smuggling,
            verdict,
        }
    }

    /// Names the route the request's metrics are counted under.
    pub(crate) fn label(&mut self, route: String) {
        self.matched = Some(route);
    }

    /// The edge's own refusals, before any route runs: a client address the global lists do not
    /// allow (audited), and Content-Length with Transfer-Encoding (request smuggling).
    pub(crate) async fn refusal(&self, app: &crate::AppState) -> Option<Response> {
        if self.verdict != IpVerdict::Allowed {
            let mut e = app.guard.event(&self.meta, "ip.denied", AuditResult::Denied);
            e.reason = Some(String::from(if self.verdict == IpVerdict::Blocked {
                "global_ip_blocked"
            } else {
                "global_ip_not_allowed"
            }));
            return Some(match app.guard.record(e).await {
                Ok(()) => ApiError::Forbidden(String::from("the client address is not allowed")).into_response(),
                Err(err) => ApiError::from(err).into_response(),
            });
        }
        if self.smuggling {
            return Some(
                ApiError::BadRequest(String::from(
                    "Content-Length and Transfer-Encoding together are refused (request smuggling)",
                ))
                .into_response(),
            );
        }
        None
    }

    pub(crate) fn finish(self, app: &crate::AppState, res: Response) -> Response {
        let proxied = res.extensions().get::<crate::proxy::Proxied>().is_some();
        self.close(app, res, proxied)
    }

    /// [`EdgeCtx::finish`] for a response that came from the upstream (or carries the proxy's
    /// own problem): an upstream's error bodies are passed through, not replaced.
    pub(crate) fn finish_proxied(self, app: &crate::AppState, res: Response) -> Response {
        self.close(app, res, true)
    }

    fn close(self, app: &crate::AppState, mut res: Response, proxied: bool) -> Response {
        let status = res.status();
        let problem = res.extensions_mut().remove::<Problem>();
        let is_problem_json = res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
        if problem.is_some() || (status.as_u16() >= 400 && !is_problem_json && !proxied) {
            let p = problem.unwrap_or_else(|| generic_problem(status));
            let (mut parts, _) = res.into_parts();
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
            parts.headers.remove(header::CONTENT_LENGTH);
            res = Response::from_parts(parts, Body::from(problem_body(status, &p, &self.meta.request_id)));
        }
        if let Ok(v) = HeaderValue::from_str(&self.meta.request_id) {
            res.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        let route = match res.extensions_mut().remove::<RouteLabel>() {
            Some(r) => r.0,
            None => self.matched.unwrap_or_else(|| String::from("unmatched")),
        };
        crate::metrics::count_request(
            &app.tenant_labels,
            &route,
            status.as_u16(),
            self.tenant.0.get().map(String::as_str),
            self.started.elapsed().as_secs_f64(),
        );
        security_headers(res.headers_mut());
        if self.smuggling {
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

/// An address as text; IPv4 (nearly every request's) written without the formatting machinery.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// Whether the request declares a body longer than `limit` (refused before reading it).
pub(crate) fn declared_over(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// What a refused request body may still send, and for how long, before its connection closes.
const LINGER_BYTES: usize = 64 * 1024 * 1024;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The 413 of a body refused for its declared length, unread. The rest of the body is read and
/// discarded in the background within [`LINGER_BYTES`] and [`LINGER_TIME`], and the connection
/// closes after: closing it with the client's bytes unread resets it, and a client still sending
/// then sees a broken pipe instead of the 413 (nginx's lingering close does the same).
pub(crate) fn refuse_unread<B>(body: B) -> Response
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            use http_body_util::BodyExt;
            let mut body = std::pin::pin!(body);
            let mut read = 0usize;
            let deadline = crate::timer::CoarseSleep::after(LINGER_TIME);
            tokio::pin!(deadline);
            while read <= LINGER_BYTES {
                tokio::select! {
                    frame = body.frame() => match frame {
                        Some(Ok(f)) => read += f.data_ref().map_or(0, bytes::Buf::remaining),
                        _ => return,
                    },
                    () = &mut deadline => return,
                }
            }
        });
    }
    let mut res = ApiError::PayloadTooLarge.into_response();
    res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

pub async fn edge(State(app): State<crate::AppState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let ctx = EdgeCtx::begin(&app, req.headers(), peer, matched);
    req.extensions_mut().insert(ctx.meta.clone());
    req.extensions_mut().insert(ctx.tenant.clone());
    let res = match ctx.refusal(&app).await {
        Some(r) => r,
        None if declared_over(req.headers(), app.settings.max_body_bytes) => refuse_unread(req.into_body()),
        None => next.run(req).await,
    };
    ctx.finish(&app, res)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_text_matches_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.100.255", "192.168.9.99", "::1", "2001:db8::7"] {
            let ip: std::net::IpAddr = ip.parse().unwrap_or(std::net::IpAddr::from([1, 1, 1, 1]));
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
    }
}
