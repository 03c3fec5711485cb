//! The data plane: configured routes (path prefix → upstream) proxied through the Guard.
//!
//! Phases, in order, over one request: match route → authenticate → tenant guard → permission
//! (`execute`) → limits (rate, concurrency, quota; one limiter call) → audit (durable, before
//! anything reaches the upstream) → forward → stream the response back. The concurrency slot
//! lives inside the response body, so it is released when the body ends, fails, or the client
//! goes away — not when the headers are sent.
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{credential_from, meta_from};
use crate::metrics::{InFlight, RouteLabel, TenantCell};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use portcullis_core::Permission;
use portcullis_core::audit::AuditResult;
use portcullis_guard::budget::BudgetOutcome;
use portcullis_guard::{ContextInput, Decision};
use portcullis_limiter::{RateInfo, Slot};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Http,
    Openai,
}

fn default_kind() -> RouteKind {
    RouteKind::Http
}
fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    60
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_idle_timeout() -> u64 {
    300
}

/// One `[[routes]]` entry of the configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, e.g. `/up`: matches `/up` and `/up/...`.
    pub prefix: String,
    /// `http://host:port[/base]`.
    pub upstream: String,
    /// The action name decisions and the audit log use, e.g. `conversation.send`.
    pub action: String,
    #[serde(default = "default_kind")]
    pub kind: RouteKind,
    /// Remove the prefix before forwarding (`/up/x` → upstream `/x`).
    #[serde(default = "yes")]
    pub strip_prefix: bool,
    /// Time allowed for the upstream's response headers (504 after).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// A streamed response body that sends nothing for this long is ended (and its concurrency
    /// slot given back), e.g. an SSE upstream that went silent.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Per-tenant requests per minute on this route, on top of the tenant's own limit.
    pub rate_per_minute: Option<u32>,
}

const RESERVED: &[&str] = &["/v1", "/healthz", "/readyz", "/openapi.json", "/metrics", "/ui"];

impl RouteConfig {
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.prefix;
        if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains("..") || p.contains("//") {
            return Err(String::from("prefix must start with `/`, not end with `/`, and contain no `..` or `//`"));
        }
        if RESERVED.iter().any(|r| p == r || p.starts_with(&format!("{r}/")) || *r == "/" || p == "/") {
            return Err(format!("prefix `{p}` collides with Portcullis's own paths ({})", RESERVED.join(", ")));
        }
        let uri: Uri = self.upstream.parse().map_err(|_| format!("upstream `{}` is not a URL", self.upstream))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("upstream `{}` must be an http:// URL with a host", self.upstream));
        }
        if self.action.is_empty()
            || !self
                .action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!("action `{}` must be lowercase letters, digits, `.`, `_`, `-`", self.action));
        }
        if self.rate_per_minute == Some(0) || self.timeout_secs == 0 || self.idle_timeout_secs == 0 {
            return Err(String::from("rate_per_minute, timeout_secs and idle_timeout_secs must be positive"));
        }
        Ok(())
    }
}

pub struct Route {
    pub cfg: RouteConfig,
    /// Position in the table: the key of this route's upstream connection in [`ConnUpstreams`].
    id: usize,
    authority: String,
    host: HeaderValue,
    base_path: String,
    /// Keep-alive pool to this route's upstream, with the route's connect timeout; used by
    /// requests that cannot use their client connection's own upstream connection (HTTP/2).
    client: UpstreamClient,
}

/// The upstream connections of one client connection, one per route it has used. An HTTP/1
/// client connection carries one request at a time, so its upstream connection is never shared
/// and needs no pool: no pool lock, no checkout, and the upstream connection's task runs on the
/// same edge thread as the client connection (measured: the shape that keeps up with nginx).
#[derive(Default)]
pub struct ConnUpstreams {
    senders: std::sync::Mutex<Vec<(usize, UpstreamSender)>>,
}

type UpstreamSender = hyper::client::conn::http1::SendRequest<Body>;

impl ConnUpstreams {
    fn take(&self, route: usize) -> Option<UpstreamSender> {
        let mut s = self.senders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = s.iter().position(|(r, _)| *r == route)?;
        Some(s.swap_remove(at).1)
    }

    fn put(&self, route: usize, sender: UpstreamSender) {
        let mut s = self.senders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.push((route, sender));
    }
}

/// Routes by longest prefix first.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(configs.len());
        for (id, c) in configs.iter().enumerate() {
            c.validate()?;
            let uri: Uri = c.upstream.parse().map_err(|_| format!("upstream `{}` is not a URL", c.upstream))?;
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let host = HeaderValue::from_str(&authority)
                .map_err(|_| format!("upstream `{}` has an invalid host", c.upstream))?;
            let base_path = uri.path().trim_end_matches('/').to_owned();
            let client = client(Duration::from_secs(c.connect_timeout_secs));
            routes.push(Arc::new(Route { cfg: c.clone(), id, authority, host, base_path, client }));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.cfg.prefix.len()));
        Ok(Self { routes })
    }

    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            let p = r.cfg.prefix.as_str();
            path == p || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Route {
    /// The upstream target in origin form (`/base/rest?query`).
    fn upstream_path(&self, uri: &Uri) -> Result<Uri, ApiError> {
        let path = uri.path();
        let rest = path.get(self.cfg.prefix.len()..).filter(|_| self.cfg.strip_prefix).unwrap_or(path);
        let mut target = String::with_capacity(self.base_path.len() + rest.len() + 2 + uri.query().map_or(0, str::len));
        target.push_str(&self.base_path);
        if !rest.starts_with('/') {
            target.push('/');
        }
        target.push_str(rest);
        if let Some(q) = uri.query() {
            target.push('?');
            target.push_str(q);
        }
        target.parse().map_err(|_| ApiError::BadRequest(String::from("request path cannot be forwarded")))
    }

    /// Sends over the client connection's own upstream connection when it has one that is free
    /// (opening it on first use), otherwise through the route's pool.
    async fn send(
        &self,
        conn: Option<&ConnUpstreams>,
        mut req: axum::http::Request<Body>,
    ) -> Result<axum::http::Response<hyper::body::Incoming>, UpstreamFailure> {
        let Some(conn) = conn else { return self.send_pooled(req).await };
        let mut sender = match conn.take(self.id) {
            Some(mut s) => match std::future::poll_fn(|cx| Poll::Ready(s.poll_ready(cx))).await {
                Poll::Ready(Ok(())) => s,
                // Closed by the upstream since the last request: open another.
                Poll::Ready(Err(_)) => self.connect().await?,
                // Still busy (a multiplexed client); do not wait for it.
                Poll::Pending => {
                    conn.put(self.id, s);
                    return self.send_pooled(req).await;
                }
            },
            None => self.connect().await?,
        };
        let outcome = match sender.try_send_request(req).await {
            Ok(res) => Ok(res),
            Err(mut e) => match e.take_message() {
                // Never written: the connection closed in between. Once more on a fresh one.
                Some(again) => {
                    req = again;
                    sender = self.connect().await?;
                    sender.send_request(req).await.map_err(|e| UpstreamFailure::from_error(&e))
                }
                None => Err(UpstreamFailure::from_error(e.error())),
            },
        };
        conn.put(self.id, sender);
        outcome
    }

    async fn send_pooled(
        &self,
        mut req: axum::http::Request<Body>,
    ) -> Result<axum::http::Response<hyper::body::Incoming>, UpstreamFailure> {
        let mut absolute = String::with_capacity(self.authority.len() + 64);
        absolute.push_str("http://");
        absolute.push_str(&self.authority);
        absolute.push_str(req.uri().path_and_query().map_or("/", |p| p.as_str()));
        *req.uri_mut() = absolute.parse().map_err(|_| UpstreamFailure::Unreachable)?;
        self.client.request(req).await.map_err(|e| UpstreamFailure::from_error(&e))
    }

    async fn connect(&self) -> Result<UpstreamSender, UpstreamFailure> {
        let limit = Duration::from_secs(self.cfg.connect_timeout_secs);
        let stream = match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&self.authority)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, route = %self.cfg.prefix, "upstream connection failed");
                return Err(UpstreamFailure::Unreachable);
            }
            Err(_) => {
                tracing::warn!(route = %self.cfg.prefix, "upstream connection timed out");
                return Err(UpstreamFailure::Unreachable);
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamFailure::from_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Why a request did not get an upstream response.
#[derive(Debug)]
enum UpstreamFailure {
    /// Our own body-size limit cut the request body while it streamed.
    BodyTooLarge,
    Unreachable,
}

impl UpstreamFailure {
    fn from_error(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return UpstreamFailure::BodyTooLarge;
            }
            source = s.source();
        }
        tracing::warn!(error = %e, "upstream request failed");
        UpstreamFailure::Unreachable
    }
}

pub type UpstreamClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// Marks a response that came from an upstream: the edge layer adds its headers but leaves the
/// status and body alone (an upstream 404 is not ours to rewrite as problem+json).
#[derive(Clone, Copy, Debug)]
pub struct Proxied;

/// Headers named in `Connection` are hop-by-hop for this message (RFC 9110 §7.6.1).
fn remove_connection_listed(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The usual tokens name no header to remove (`keep-alive` is removed anyway).
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the caller's credentials never cross the proxy.
fn strip_request_headers(h: &mut HeaderMap) {
    remove_connection_listed(h);
    // One look at each name the request has (a handful), instead of a hashed removal for every
    // name that might be there.
    let doomed = |k: &HeaderName| {
        let s = k.as_str();
        *k == header::CONNECTION
            || *k == header::TE
            || *k == header::TRAILER
            || *k == header::TRANSFER_ENCODING
            || *k == header::UPGRADE
            || *k == header::HOST
            || *k == header::AUTHORIZATION
            || *k == KEEP_ALIVE
            || *k == X_API_KEY
            || *k == X_TENANT_ID
            // `Proxy-*` headers are meant for the proxy (us), including `Proxy-Authorization`
            // and the legacy `Proxy-Connection`.
            || s.starts_with("proxy-")
            // Identity headers are ours to set: a caller must not be able to forge them.
            || s.starts_with("x-portcullis-")
    };
    while let Some(name) = h.keys().find(|k| doomed(k)).cloned() {
        h.remove(name);
    }
    strip_ui_cookie(h);
}

/// The operator UI's session cookie is ours: it never reaches an upstream (a browser on the
/// gateway's origin sends it with every request).
fn strip_ui_cookie(h: &mut HeaderMap) {
    if !h.contains_key(header::COOKIE) {
        return;
    }
    let prefix = crate::ui::COOKIE_PAIR_PREFIX;
    let kept: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    h.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        h.insert(header::COOKIE, v);
    }
}

fn strip_response_headers(h: &mut HeaderMap) {
    remove_connection_listed(h);
    let doomed = |k: &HeaderName| {
        *k == header::CONNECTION
            || *k == header::TRAILER
            || *k == header::TRANSFER_ENCODING
            || *k == header::UPGRADE
            || *k == KEEP_ALIVE
    };
    while let Some(name) = h.keys().find(|k| doomed(k)).cloned() {
        h.remove(name);
    }
    // An upstream must not set (or plant) the UI's session cookie.
    if h.contains_key(header::SET_COOKIE) {
        let prefix = crate::ui::COOKIE_PAIR_PREFIX;
        let kept: Vec<HeaderValue> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !v.to_str().is_ok_and(|s| s.trim_start().starts_with(prefix)))
            .cloned()
            .collect();
        h.remove(header::SET_COOKIE);
        for v in kept {
            h.append(header::SET_COOKIE, v);
        }
    }
    // A document from an upstream shares the gateway's origin with the operator UI: it is
    // sandboxed (an opaque origin), so its script can reach neither the UI's session nor its API.
    let html = h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let ct = v.as_bytes().trim_ascii_start();
        [&b"text/html"[..], b"application/xhtml", b"image/svg"]
            .iter()
            .any(|p| ct.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)))
    });
    if html {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; frame-ancestors 'none'"));
    }
}

// Names built once: inserting by `&str` parses and validates the name on every request.
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static X_PORTCULLIS_TENANT: HeaderName = HeaderName::from_static("x-portcullis-tenant");
static X_PORTCULLIS_PRINCIPAL: HeaderName = HeaderName::from_static("x-portcullis-principal");
static X_PORTCULLIS_ROLE: HeaderName = HeaderName::from_static("x-portcullis-role");
static X_PORTCULLIS_BUDGET_WARNING: HeaderName = HeaderName::from_static("x-portcullis-budget-warning");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The audit reason of a policy denial: `policy:<ids>`, or `rbac:no_permit` when nothing permitted.
pub fn policy_reason(d: &Decision) -> String {
    if d.policies.is_empty() { String::from("rbac:no_permit") } else { format!("policy:{}", d.policies.join(",")) }
}

/// The 403 of a policy denial, naming the policies that decided it.
pub fn policy_denied(d: &Decision) -> ApiError {
    if d.policies.is_empty() {
        ApiError::Forbidden(String::from("the caller's role does not grant this action"))
    } else if !d.errors.is_empty() {
        ApiError::Forbidden(format!("denied: policy {} failed to evaluate", d.policies.join(", ")))
    } else {
        ApiError::Forbidden(format!("denied by policy {}", d.policies.join(", ")))
    }
}

pub fn rate_headers(h: &mut HeaderMap, r: &RateInfo) {
    h.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(r.limit));
    h.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(r.remaining));
    h.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(r.reset_secs));
}

/// The upstream's body, holding the tenant's concurrency slot until it ends, fails, is dropped
/// (client gone), or stays silent for the route's idle timeout. On `openai` routes it reads the
/// usage as it goes by; on every route its end (or drop) records the request's usage.
struct SlotBody {
    /// Taken only by `Drop`, to finish reading a JSON answer the client left before its end.
    inner: Option<hyper::body::Incoming>,
    idle: Duration,
    deadline: crate::timer::CoarseSleep,
    scanner: Option<crate::openai::Scanner>,
    tap: Option<UsageTap>,
    /// Bytes the scanner still held when the upstream's body ended, sent as the last frame.
    held: Option<bytes::Bytes>,
    ended: bool,
    _slot: Option<Slot>,
    _in_flight: Option<InFlight>,
    /// Where `Drop` spawns that read, so that a stopping server finishes it (JSON answers of
    /// `openai` routes only: a clone is a write to a count every core shares).
    background: Option<tokio_util::task::TaskTracker>,
}

/// A request's usage, recorded when dropped (the body ended, failed, or the client left).
struct UsageTap {
    guard: Arc<portcullis_guard::Guard>,
    tenant: portcullis_core::TenantId,
    principal: String,
    route: String,
    request_model: Option<String>,
    status: u16,
    started: std::time::Instant,
    usage: crate::openai::Usage,
    budget: Option<BudgetHold>,
    /// Charged without token counts (a budgeted success whose usage never arrived).
    unmetered_nanos: i64,
    /// The agent session the answer is captured into.
    session: Option<SessionTap>,
}

/// Where a response's answer goes in the session store.
struct SessionTap {
    id: String,
    capture: Arc<portcullis_guard::sessions::TenantCapture>,
    request_id: String,
}

impl UsageTap {
    /// The answer as session events: the assistant's text (with the tokens, priced at the flush),
    /// one `tool` event per tool call, or a system note when the upstream failed.
    fn session_events(&mut self, s: &SessionTap, model: &str) -> Vec<portcullis_store::SessionEvent> {
        use portcullis_core::session::EventKind;
        let origin = portcullis_guard::sessions::EventOrigin {
            tenant: &self.tenant,
            session_id: &s.id,
            principal_id: &self.principal,
            request_id: &s.request_id,
            now_ms: self.guard.now_ms(),
        };
        let mut out = Vec::new();
        if self.status >= 400 {
            let mut e = origin.event(EventKind::System);
            e.message = Some(format!("the upstream answered {}", self.status));
            e.metadata = serde_json::json!({ "status": self.status });
            out.push(e);
        } else {
            let mut e = origin.event(EventKind::Assistant);
            e.message = Some(std::mem::take(&mut self.usage.text));
            e.model = (!model.is_empty()).then(|| model.to_owned());
            e.input_tokens = i64::try_from(self.usage.input_tokens).unwrap_or(i64::MAX);
            e.output_tokens = i64::try_from(self.usage.output_tokens).unwrap_or(i64::MAX);
            e.metadata =
                serde_json::json!({ "status": self.status, "latency_ms": self.started.elapsed().as_millis() as u64 });
            out.push(e);
            for (name, args) in std::mem::take(&mut self.usage.tool_calls) {
                let mut t = origin.event(EventKind::Tool);
                t.tool_name = Some(if name.is_empty() { String::from("(unnamed)") } else { name });
                t.tool_args = Some(serde_json::from_str(&args).unwrap_or(serde_json::Value::String(args)));
                t.metadata = serde_json::json!({ "phase": "call" });
                out.push(t);
            }
        }
        for e in &mut out {
            s.capture.prepare(e);
        }
        out
    }
}

/// A budget reservation and the prices that settle it.
struct BudgetHold {
    reservation: portcullis_limiter::Reservation,
    in_price: i64,
    out_price: i64,
    guard: Arc<portcullis_guard::Guard>,
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        if let Some(b) = self.budget.take() {
            // Tokens reported: their cost. None reported: an upstream error costs nothing; a
            // success without usage keeps the whole reservation (its cost is unknown).
            let actual = if self.usage.seen {
                portcullis_guard::usage::cost_nanos_u64(
                    b.in_price,
                    b.out_price,
                    self.usage.input_tokens,
                    self.usage.output_tokens,
                )
            } else if self.status >= 400 {
                0
            } else {
                // Recorded as usage too, so that spend read back from the store agrees.
                self.unmetered_nanos = b.reservation.amount_nanos;
                b.reservation.amount_nanos
            };
            b.guard.settle_budget(b.reservation, actual);
        }
        // The model the caller asked for names the profile (an upstream may answer with a dated
        // variant of it); the answer's model when the request named none.
        let model = self.request_model.take().or_else(|| self.usage.model.take()).unwrap_or_default();
        if let Some(s) = self.session.take() {
            let events = self.session_events(&s, &model);
            self.guard.capture_session_events(events);
        }
        self.guard.record_usage(portcullis_guard::usage::UsageEvent {
            tenant: self.tenant.clone(),
            principal: std::mem::take(&mut self.principal),
            model,
            route: std::mem::take(&mut self.route),
            status: self.status,
            latency_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            input_tokens: self.usage.input_tokens,
            output_tokens: self.usage.output_tokens,
            unmetered_nanos: self.unmetered_nanos,
            at_ms: self.guard.now_ms(),
        });
    }
}

impl Drop for SlotBody {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The client left before the end. A JSON answer was paid for upstream all the same:
        // read the rest of it in the background (bounded by the idle timeout and the scanner's
        // size cap) so its usage is recorded. A stream is cut instead (the upstream stops
        // generating); its usage is unknown and the tap charges what was reserved.
        if let (Some(crate::openai::Scanner::Json { .. }), Some(inner), Some(_), Some(_)) =
            (&self.scanner, self.inner.as_ref(), self.tap.as_ref(), self.background.as_ref())
            && !http_body::Body::is_end_stream(inner)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
            && let (Some(mut scanner), Some(mut inner), Some(mut tap), Some(background)) =
                (self.scanner.take(), self.inner.take(), self.tap.take(), self.background.take())
        {
            let idle = self.idle;
            background.spawn_on(
                async move {
                    use http_body_util::BodyExt;
                    while let Ok(Some(Ok(frame))) = tokio::time::timeout(idle, inner.frame()).await {
                        if let Ok(data) = frame.into_data() {
                            scanner.push(data, &mut tap.usage);
                        }
                    }
                    scanner.finish(&mut tap.usage);
                },
                &rt,
            );
            return;
        }
        if let (Some(s), Some(t)) = (self.scanner.as_mut(), self.tap.as_mut()) {
            s.finish(&mut t.usage);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; the response was ended")]
struct IdleTimeout(Duration);

impl http_body::Body for SlotBody {
    type Data = bytes_alias::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        loop {
            if self.ended {
                return Poll::Ready(self.held.take().map(|b| Ok(Frame::data(b))));
            }
            let this = &mut *self;
            let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    this.deadline.reset(std::time::Instant::now() + this.idle);
                    let mut spare = crate::openai::Usage::default();
                    let usage = this.tap.as_mut().map(|t| &mut t.usage).unwrap_or(&mut spare);
                    let out = match frame {
                        None => {
                            this.ended = true;
                            if let Some(scanner) = this.scanner.as_mut() {
                                let rest = scanner.finish(usage);
                                this.held = (!rest.is_empty()).then_some(rest);
                            }
                            // Recorded now: the client has everything but the held tail.
                            drop(this.tap.take());
                            continue;
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        Some(Ok(f)) => match f.into_data() {
                            Err(f) => return Poll::Ready(Some(Ok(f))),
                            Ok(data) => match this.scanner.as_mut() {
                                Some(scanner) => scanner.push(data, usage),
                                None => data,
                            },
                        },
                    };
                    // hyper stops polling a body whose declared length is sent, without waiting
                    // for its end: end it here so usage is recorded when the response is.
                    if this.inner.as_ref().is_none_or(http_body::Body::is_end_stream) {
                        this.ended = true;
                        let mut spare = crate::openai::Usage::default();
                        let usage = this.tap.as_mut().map(|t| &mut t.usage).unwrap_or(&mut spare);
                        let rest = this.scanner.as_mut().map(|s| s.finish(usage)).unwrap_or_default();
                        drop(this.tap.take());
                        let out = if rest.is_empty() { out } else { [out, rest].concat().into() };
                        if out.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    // Everything was held (an unfinished event): read on.
                }
                Poll::Pending => {
                    return match Pin::new(&mut this.deadline).poll(cx) {
                        Poll::Ready(()) => {
                            let idle = this.idle;
                            Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.held.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if matches!(self.scanner, Some(crate::openai::Scanner::Sse { strip: true, .. })) {
            return http_body::SizeHint::default();
        }
        if self.ended {
            return http_body::SizeHint::with_exact(self.held.as_ref().map_or(0, |b| b.len() as u64));
        }
        self.inner.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}

mod bytes_alias {
    pub type Bytes = <hyper::body::Incoming as http_body::Body>::Data;
}

/// Fallback handler of the axum stack: requests that match a route are proxied; anything else is
/// 404. Only requests the data plane's own path does not take come here (CORS requests, which the
/// CORS layer must see first).
pub static X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");

/// The messages an `openai` request adds to its session, queued for the store; returns where
/// the answer goes, or `None` when the tenant does not capture traffic.
async fn capture_request(
    app: &AppState,
    tenant: &portcullis_core::TenantId,
    principal: &str,
    meta: &portcullis_guard::RequestMeta,
    info: &mut crate::openai::RequestInfo,
) -> Result<Option<SessionTap>, ApiError> {
    use portcullis_core::session::EventKind;
    let Some(id) = info.session_id.clone() else { return Ok(None) };
    let capture = app.guard.session_capture(tenant).await?;
    if !capture.captures() {
        return Ok(None);
    }
    let origin = portcullis_guard::sessions::EventOrigin {
        tenant,
        session_id: &id,
        principal_id: principal,
        request_id: &meta.request_id,
        now_ms: app.guard.now_ms(),
    };
    let events = std::mem::take(&mut info.new_messages)
        .into_iter()
        .map(|m| {
            let kind = match m.role.as_str() {
                "user" => EventKind::User,
                "tool" | "function" => EventKind::Tool,
                "assistant" => EventKind::Assistant,
                _ => EventKind::System,
            };
            let mut e = origin.event(kind);
            e.message = Some(m.text);
            e.model.clone_from(&info.model);
            if kind == EventKind::Tool {
                e.tool_name = m.name;
                e.metadata = serde_json::json!({ "phase": "result" });
            } else if m.role != "user" && m.role != "assistant" {
                e.metadata = serde_json::json!({ "role": m.role });
            }
            capture.prepare(&mut e);
            e
        })
        .collect();
    app.guard.capture_session_events(events);
    Ok(Some(SessionTap { id, capture, request_id: meta.request_id.clone() }))
}

/// A policy refused an `openai` request that names its session in `X-Session-Id`: the session
/// shows which policies refused it.
async fn capture_denial(
    app: &AppState,
    grant: &portcullis_guard::Grant,
    headers: &HeaderMap,
    meta: &portcullis_guard::RequestMeta,
    action: &str,
    decision: &portcullis_guard::Decision,
) {
    let (Some(tenant), Some(id)) =
        (grant.principal.tenant_id.as_ref(), headers.get(&X_SESSION_ID).and_then(|v| v.to_str().ok()))
    else {
        return;
    };
    if portcullis_core::session::check_session_id(id).is_err() {
        return;
    }
    let Ok(capture) = app.guard.session_capture(tenant).await else { return };
    if !capture.captures() {
        return;
    }
    let origin = portcullis_guard::sessions::EventOrigin {
        tenant,
        session_id: id,
        principal_id: &grant.principal.id,
        request_id: &meta.request_id,
        now_ms: app.guard.now_ms(),
    };
    let mut e = origin.event(portcullis_core::session::EventKind::System);
    e.message = Some(format!("{action} denied by policy"));
    e.decision = Some(portcullis_core::session::EventDecision {
        result: String::from("deny"),
        action: action.to_owned(),
        policies: decision.reasons(),
    });
    capture.prepare(&mut e);
    app.guard.capture_session_events(vec![e]);
}

pub async fn proxy(State(app): State<AppState>, req: Request) -> Response {
    let Some(route) = app.routes.find(req.uri().path()).cloned() else {
        return ApiError::NotFound.into_response();
    };
    let (parts, body) = req.into_parts();
    let meta = meta_from(&parts);
    let tenant = parts.extensions.get::<TenantCell>().cloned().unwrap_or_default();
    let conn = parts.extensions.get::<crate::server::ConnState>().cloned();
    let mut res = match forward(&app, &route, parts, body, &meta, &tenant, conn.as_deref()).await {
        Ok(mut r) => {
            r.extensions_mut().insert(Proxied);
            r
        }
        Err(e) => e.into_response(),
    };
    res.extensions_mut().insert(RouteLabel(route.cfg.prefix.clone()));
    res
}

/// The data plane's own path, taken straight from the connection for a request that matches a
/// route: the edge phases, the body-size limit and [`forward`], without the admin API's router
/// and layers in between (they cost more than the whole proxy hop did).
pub(crate) async fn handle(
    app: &AppState,
    route: &Arc<Route>,
    req: hyper::Request<hyper::body::Incoming>,
    peer: std::net::SocketAddr,
    conn: crate::server::ConnState,
) -> Response {
    let mut ctx = crate::middleware::EdgeCtx::begin(app, req.headers(), Some(peer.ip()), None);
    if let Some(refused) = ctx.refusal(app).await {
        return ctx.finish(app, refused);
    }
    // Past the edge's own refusals (counted as `unmatched`, as on the router's path), the route
    // labels the request's metrics.
    ctx.label(route.cfg.prefix.clone());
    let (parts, body) = req.into_parts();
    let limit = app.settings.max_body_bytes;
    let res = if crate::middleware::declared_over(&parts.headers, limit) {
        crate::middleware::refuse_unread(body)
    } else {
        // Also holds for bodies streamed without Content-Length: the limit cuts them off.
        let body = Body::new(http_body_util::Limited::new(body, limit));
        match forward(app, route, parts, body, &ctx.meta, &ctx.tenant, Some(&conn)).await {
            Ok(r) => return ctx.finish_proxied(app, r),
            Err(e) => e.into_response(),
        }
    };
    ctx.finish(app, res)
}

/// Phases, in order: authenticate → tenant guard → permission → route scope → limits → audit
/// (durable, before anything reaches the upstream) → forward → stream the response back.
async fn forward(
    app: &AppState,
    route: &Arc<Route>,
    mut parts: axum::http::request::Parts,
    mut body: Body,
    meta: &portcullis_guard::RequestMeta,
    tenant: &TenantCell,
    conn: Option<&ConnUpstreams>,
) -> Result<Response, ApiError> {
    let x_tenant = parts.headers.get(&X_TENANT_ID).map(|v| v.to_str().unwrap_or("(not valid text)").to_owned());
    let grant = app.guard.check(credential_from(&parts), x_tenant.as_deref(), Permission::Execute, meta).await?;
    if let Some(t) = grant.principal.tenant_id.as_ref() {
        let _ = tenant.0.set(t.to_string());
    }
    if !grant.principal.scope_allows(&route.cfg.action) {
        let mut e = app.guard.event_for(&grant, meta, &route.cfg.action, AuditResult::Denied);
        e.resource_type = Some(String::from("route"));
        e.resource_id = Some(route.cfg.prefix.clone());
        e.reason = Some(String::from("scope_lacks_action"));
        app.guard.record(e).await?;
        return Err(ApiError::Forbidden(String::from("the key's scopes do not include this route's action")));
    }
    let decision = app
        .guard
        .decide(&grant.principal, &route.cfg.action, Some(("route", &route.cfg.prefix)), || ContextInput {
            ip: meta.ip.as_deref().and_then(|i| i.parse().ok()),
            route: Some(route.cfg.prefix.clone()),
            method: Some(parts.method.as_str().to_owned()),
            path: Some(parts.uri.path().to_owned()),
            ..ContextInput::at(app.guard.now_ms())
        })
        .await?;
    if !decision.allowed {
        let mut e = app.guard.event_for(&grant, meta, &route.cfg.action, AuditResult::Denied);
        e.resource_type = Some(String::from("route"));
        e.resource_id = Some(route.cfg.prefix.clone());
        e.reason = Some(policy_reason(&decision));
        if let serde_json::Value::Object(m) = &mut e.metadata {
            m.insert(String::from("method"), serde_json::Value::from(parts.method.as_str()));
            m.insert(String::from("path"), serde_json::Value::from(parts.uri.path()));
            m.insert(String::from("policies"), serde_json::json!(decision.reasons()));
        }
        app.guard.record(e).await?;
        if route.cfg.kind == RouteKind::Openai {
            capture_denial(app, &grant, &parts.headers, meta, &route.cfg.action, &decision).await;
        }
        return Err(policy_denied(&decision));
    }
    let started = std::time::Instant::now();
    // `openai` routes: read the request (model, token cap, streaming), hold it to the tenant's
    // per-request token cap, and ask a streaming upstream for usage.
    let mut openai_req = None;
    if route.cfg.kind == RouteKind::Openai {
        let bytes = match http_body_util::BodyExt::collect(body).await {
            Ok(c) => c.to_bytes(),
            Err(_) => return Err(ApiError::PayloadTooLarge),
        };
        let header_session = parts.headers.get(&X_SESSION_ID).map(|v| v.to_str().unwrap_or("\u{1}"));
        let (bytes, info) = crate::openai::inspect_request(bytes, header_session);
        if let Some(id) = &info.session_id {
            portcullis_core::session::check_session_id(id)
                .map_err(|e| ApiError::BadRequest(format!("X-Session-Id / metadata.session_id: {e}")))?;
        }
        if let (Some(asked), Some(t)) = (info.max_tokens, grant.principal.tenant_id.as_ref())
            && let Some(limits) = app.guard.effective_limits(t).await?
            && asked > limits.max_tokens_per_request
        {
            let mut e = app.guard.event_for(&grant, meta, &route.cfg.action, AuditResult::Denied);
            e.resource_type = Some(String::from("route"));
            e.resource_id = Some(route.cfg.prefix.clone());
            e.reason = Some(String::from("limit:max_tokens"));
            e.with_meta("max_tokens", serde_json::Value::from(asked))
                .with_meta("limit", serde_json::Value::from(limits.max_tokens_per_request))
                .with_meta("model", serde_json::json!(info.model));
            app.guard.record(e).await?;
            return Err(ApiError::BadRequest(format!(
                "max_tokens {asked} exceeds this tenant's limit of {} tokens per request",
                limits.max_tokens_per_request
            )));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        parts.headers.remove(header::TRANSFER_ENCODING);
        // Usage is read from the body: ask for it uncompressed.
        parts.headers.remove(header::ACCEPT_ENCODING);
        body = Body::from(bytes);
        openai_req = Some(info);
    }
    let admission = match app.guard.admit(&grant.principal, &route.cfg.prefix, route.cfg.rate_per_minute, true).await? {
        Ok(a) => a,
        Err(rejection) => {
            crate::metrics::limit_rejected(rejection.kind.as_str());
            let mut e = app.guard.event_for(&grant, meta, &route.cfg.action, AuditResult::Denied);
            e.resource_type = Some(String::from("route"));
            e.resource_id = Some(route.cfg.prefix.clone());
            e.reason = Some(format!("limit:{}", rejection.kind.as_str()));
            e.with_meta("method", serde_json::Value::from(parts.method.as_str()))
                .with_meta("path", serde_json::Value::from(parts.uri.path()))
                .with_meta("retry_after_secs", serde_json::Value::from(rejection.retry_after_secs))
                .with_meta("policies", serde_json::json!(decision.policies));
            app.guard.record(e).await?;
            return Err(ApiError::Limited(rejection));
        }
    };
    // Budgets: reserve the most this request can cost (every prompt byte a token, the full
    // completion cap) before anything reaches the upstream; the response's end settles it.
    let mut budget: Option<BudgetHold> = None;
    let mut budget_warnings = Vec::new();
    if let (Some(info), Some(tenant)) = (&openai_req, grant.principal.tenant_id.as_ref()) {
        let profiles = app.guard.model_profiles(tenant).await?;
        let profile = info.model.as_ref().and_then(|m| profiles.iter().find(|p| p.model == *m));
        let (in_price, out_price) =
            profile.map(|p| (p.input_price_micros_per_1k, p.output_price_micros_per_1k)).unwrap_or((0, 0));
        let cap = match info.max_tokens {
            Some(n) => n,
            None => app.guard.effective_limits(tenant).await?.map(|l| l.max_tokens_per_request).unwrap_or(0),
        };
        let most = portcullis_guard::usage::cost_nanos_u64(in_price, out_price, info.body_len, cap);
        match app.guard.reserve_budget(tenant, most).await? {
            BudgetOutcome::Unbudgeted => {}
            BudgetOutcome::Reserved(r) => {
                for w in r.windows.iter().filter(|w| w.at_warning()) {
                    budget_warnings.push(format!(
                        "{}={}%",
                        w.kind,
                        i128::from(w.used_nanos) * 100 / i128::from(w.limit_nanos.max(1))
                    ));
                    if w.first_warning {
                        let mut e = app.guard.event_for(&grant, meta, "budget.warning", AuditResult::Success);
                        e.resource_type = Some(String::from("budget"));
                        e.resource_id = Some(format!("{}:{}", w.kind, w.id));
                        e.with_meta("window", serde_json::Value::from(w.kind))
                            .with_meta(
                                "used_usd",
                                serde_json::json!(portcullis_core::limits::nanos_to_usd(w.used_nanos)),
                            )
                            .with_meta(
                                "limit_usd",
                                serde_json::json!(portcullis_core::limits::nanos_to_usd(w.limit_nanos)),
                            );
                        app.guard.record(e).await?;
                    }
                }
                budget = Some(BudgetHold { reservation: r, in_price, out_price, guard: app.guard.clone() });
            }
            BudgetOutcome::Exceeded(x) => {
                let mut e = app.guard.event_for(&grant, meta, &route.cfg.action, AuditResult::Denied);
                e.resource_type = Some(String::from("route"));
                e.resource_id = Some(route.cfg.prefix.clone());
                e.reason = Some(format!("budget:{}", x.window.kind));
                e.with_meta("window_id", serde_json::Value::from(x.window.id.clone()))
                    .with_meta(
                        "limit_usd",
                        serde_json::json!(portcullis_core::limits::nanos_to_usd(x.window.limit_nanos)),
                    )
                    .with_meta("used_usd", serde_json::json!(portcullis_core::limits::nanos_to_usd(x.used_nanos)))
                    .with_meta(
                        "request_max_usd",
                        serde_json::json!(portcullis_core::limits::nanos_to_usd(x.amount_nanos)),
                    )
                    .with_meta("model", serde_json::json!(info.model));
                app.guard.record(e).await?;
                return Err(ApiError::Budget(x));
            }
            BudgetOutcome::Unavailable => {
                return Err(ApiError::Unavailable(String::from(
                    "budgets cannot be checked (the shared limiter is unavailable and fails closed)",
                )));
            }
        }
    }
    let mut e = app.guard.event_for(&grant, meta, &route.cfg.action, AuditResult::Success);
    e.resource_type = Some(String::from("route"));
    e.resource_id = Some(route.cfg.prefix.clone());
    if let serde_json::Value::Object(m) = &mut e.metadata {
        m.insert(String::from("method"), serde_json::Value::from(parts.method.as_str()));
        m.insert(String::from("path"), serde_json::Value::from(parts.uri.path()));
        m.insert(String::from("policies"), serde_json::json!(decision.policies));
        if let Some(info) = &openai_req {
            m.insert(String::from("model"), serde_json::json!(info.model));
            m.insert(String::from("stream"), serde_json::Value::Bool(info.stream));
        }
    }
    app.guard.record(e).await?;
    let session = match (&mut openai_req, grant.principal.tenant_id.as_ref()) {
        (Some(info), Some(tenant)) if info.session_id.is_some() => {
            // Best effort: a request is never failed (nor its budget stranded) by its capture.
            capture_request(app, tenant, &grant.principal.id, meta, info).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "session capture settings unavailable; this request is not captured");
                None
            })
        }
        _ => None,
    };
    let session = std::sync::Mutex::new(session);

    let uri = route.upstream_path(&parts.uri)?;
    // HTTP/1 callers use their connection's own upstream connection; multiplexed ones the pool.
    let conn = conn.filter(|_| matches!(parts.version, axum::http::Version::HTTP_11 | axum::http::Version::HTTP_10));
    strip_request_headers(&mut parts.headers);
    parts.headers.insert(header::HOST, route.host.clone());
    let h = &mut parts.headers;
    let set = |h: &mut HeaderMap, k: &HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k.clone(), v);
        }
    };
    set(h, &crate::middleware::X_REQUEST_ID, &meta.request_id);
    if let Some(t) = &grant.principal.tenant_id {
        set(h, &X_PORTCULLIS_TENANT, t.as_str());
    }
    set(h, &X_PORTCULLIS_PRINCIPAL, &grant.principal.id);
    if let Some(r) = grant.principal.role {
        h.insert(X_PORTCULLIS_ROLE.clone(), HeaderValue::from_static(r.as_str()));
    }
    if let Some(ip) = &meta.ip {
        let xff = match crate::middleware::forwarded_for(h) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        set(h, &X_FORWARDED_FOR, &xff);
    }
    if let Some(t) = &grant.principal.tenant_id
        && let Some(cred) = app.guard.upstream_credential(t, &route.cfg.prefix).await?
        && let (Ok(name), Ok(mut value)) = (HeaderName::from_bytes(cred.0.as_bytes()), HeaderValue::from_str(&cred.1))
    {
        value.set_sensitive(true);
        parts.headers.insert(name, value);
    }
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    let upstream_req = axum::http::Request::from_parts(parts, body);
    let timeout = Duration::from_secs(route.cfg.timeout_secs);
    // Taken by whichever ends the request: the upstream failure or the response body.
    let budget = std::sync::Mutex::new(budget);
    let tap = |status: u16| {
        let session = session.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        grant.principal.tenant_id.clone().map(|tenant| UsageTap {
            budget: budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(),
            unmetered_nanos: 0,
            guard: app.guard.clone(),
            tenant,
            principal: grant.principal.id.clone(),
            route: route.cfg.prefix.clone(),
            request_model: openai_req.as_ref().and_then(|i| i.model.clone()),
            status,
            started,
            // The answer's text and tool calls are collected only for a captured session.
            usage: crate::openai::Usage { collect: session.is_some(), ..crate::openai::Usage::default() },
            session,
        })
    };
    let failed = |e: ApiError| {
        // The request used its rate; say so on the gateway's own error too.
        let mut r = e.into_response();
        rate_headers(r.headers_mut(), &admission.rate);
        drop(tap(r.status().as_u16()));
        Ok(r)
    };
    let sent = tokio::select! {
        biased;
        sent = route.send(conn, upstream_req) => Some(sent),
        () = crate::timer::CoarseSleep::after(timeout) => None,
    };
    let res = match sent {
        None => return failed(ApiError::UpstreamTimeout),
        Some(Err(UpstreamFailure::BodyTooLarge)) => return failed(ApiError::PayloadTooLarge),
        Some(Err(UpstreamFailure::Unreachable)) => return failed(ApiError::BadGateway),
        Some(Ok(r)) => r,
    };
    let (mut rparts, rbody) = res.into_parts();
    strip_response_headers(&mut rparts.headers);
    // Room for what the gateway adds (rate, request id, security headers) in one growth.
    rparts.headers.reserve(12);
    rate_headers(&mut rparts.headers, &admission.rate);
    if !budget_warnings.is_empty()
        && let Ok(v) = HeaderValue::from_str(&budget_warnings.join(", "))
    {
        rparts.headers.insert(X_PORTCULLIS_BUDGET_WARNING.clone(), v);
    }
    let in_flight = grant.principal.tenant_id.as_ref().map(|t| InFlight::start(&app.tenant_labels, t.as_str()));
    let idle = Duration::from_secs(route.cfg.idle_timeout_secs);
    let scanner = openai_req.as_ref().map(|info| {
        let ct = rparts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        crate::openai::Scanner::for_response(ct, info.usage_requested_by_gateway)
    });
    if scanner.as_ref().is_some_and(|s| matches!(s, crate::openai::Scanner::Sse { strip: true, .. })) {
        // The gateway takes its usage chunk out of the stream: the length changes.
        rparts.headers.remove(header::CONTENT_LENGTH);
    }
    let reads_on = matches!(scanner, Some(crate::openai::Scanner::Json { .. }));
    let body = Body::new(SlotBody {
        inner: Some(rbody),
        idle,
        deadline: crate::timer::CoarseSleep::after(idle),
        scanner,
        tap: tap(rparts.status.as_u16()),
        held: None,
        ended: false,
        _slot: admission.slot,
        _in_flight: in_flight,
        background: reads_on.then(|| app.background.clone()),
    });
    Ok(Response::from_parts(rparts, body))
}
