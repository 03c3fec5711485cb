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
use crate::metrics::{InFlight, RouteLabel};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use portcullis_core::Permission;
use portcullis_core::audit::AuditResult;
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
    authority: String,
    base_path: String,
    /// Keep-alive pool to this route's upstream, with the route's connect timeout.
    client: UpstreamClient,
}

/// Routes by longest prefix first.
#[derive(Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(configs.len());
        for c in configs {
            c.validate()?;
            let uri: Uri = c.upstream.parse().map_err(|_| format!("upstream `{}` is not a URL", c.upstream))?;
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let base_path = uri.path().trim_end_matches('/').to_owned();
            let client = client(Duration::from_secs(c.connect_timeout_secs));
            routes.push(Arc::new(Route { cfg: c.clone(), authority, base_path, client }));
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
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, ApiError> {
        let path = uri.path();
        let rest = if self.cfg.strip_prefix { &path[self.cfg.prefix.len().min(path.len())..] } else { path };
        let mut target = format!("http://{}{}", self.authority, self.base_path);
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
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the caller's credentials never cross the proxy.
fn strip_request_headers(h: &mut HeaderMap) {
    remove_connection_listed(h);
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::HOST,
        header::AUTHORIZATION,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
    // `Proxy-*` headers are meant for the proxy (us), including the legacy `Proxy-Connection`.
    let proxy_headers: Vec<HeaderName> = h.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned().collect();
    for name in proxy_headers {
        h.remove(name);
    }
    h.remove("x-api-key");
    h.remove("x-tenant-id");
    // Identity headers are ours to set: a caller must not be able to forge them.
    let forged: Vec<HeaderName> = h.keys().filter(|k| k.as_str().starts_with("x-portcullis-")).cloned().collect();
    for name in forged {
        h.remove(name);
    }
}

fn strip_response_headers(h: &mut HeaderMap) {
    remove_connection_listed(h);
    for name in [header::CONNECTION, header::TRAILER, header::TRANSFER_ENCODING, header::UPGRADE] {
        h.remove(name);
    }
    h.remove("keep-alive");
}

pub fn rate_headers(h: &mut HeaderMap, r: &RateInfo) {
    let mut put = |k: &'static str, v: u64| {
        if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
            h.insert(k, v);
        }
    };
    put("x-ratelimit-limit", u64::from(r.limit));
    put("x-ratelimit-remaining", u64::from(r.remaining));
    put("x-ratelimit-reset", r.reset_secs);
}

/// The upstream's body, holding the tenant's concurrency slot until it ends, fails, is dropped
/// (client gone), or stays silent for the route's idle timeout.
struct SlotBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _slot: Option<Slot>,
    _in_flight: Option<InFlight>,
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
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let idle = self.idle;
                    Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

mod bytes_alias {
    pub type Bytes = <hyper::body::Incoming as http_body::Body>::Data;
}

/// Fallback handler: requests that match a route are proxied; anything else is 404.
pub async fn proxy(State(app): State<AppState>, req: Request) -> Response {
    let label = app.routes.find(req.uri().path()).map(|r| RouteLabel(r.cfg.prefix.clone()));
    let mut res = match forward(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Some(l) = label {
        res.extensions_mut().insert(l);
    }
    res
}

async fn forward(app: AppState, req: Request) -> Result<Response, ApiError> {
    let Some(route) = app.routes.find(req.uri().path()).cloned() else {
        return Err(ApiError::NotFound);
    };
    let (mut parts, body) = req.into_parts();
    let meta = meta_from(&parts);
    let x_tenant = parts.headers.get("x-tenant-id").map(|v| v.to_str().unwrap_or("(not valid text)").to_owned());
    let grant = app.guard.check(credential_from(&parts), x_tenant.as_deref(), Permission::Execute, &meta).await?;
    crate::extract::note_tenant(&parts, &grant);
    if !grant.principal.scope_allows(&route.cfg.action) {
        let mut e = app.guard.event_for(&grant, &meta, &route.cfg.action, AuditResult::Denied);
        e.resource_type = Some(String::from("route"));
        e.resource_id = Some(route.cfg.prefix.clone());
        e.reason = Some(String::from("scope_lacks_action"));
        app.guard.record(e).await?;
        return Err(ApiError::Forbidden(String::from("the key's scopes do not include this route's action")));
    }
    let admission = match app.guard.admit(&grant.principal, &route.cfg.prefix, route.cfg.rate_per_minute, true).await? {
        Ok(a) => a,
        Err(rejection) => {
            crate::metrics::limit_rejected(rejection.kind.as_str());
            let mut e = app.guard.event_for(&grant, &meta, &route.cfg.action, AuditResult::Denied);
            e.resource_type = Some(String::from("route"));
            e.resource_id = Some(route.cfg.prefix.clone());
            e.reason = Some(format!("limit:{}", rejection.kind.as_str()));
            e.metadata = serde_json::json!({ "method": parts.method.as_str(), "path": parts.uri.path(), "retry_after_secs": rejection.retry_after_secs });
            app.guard.record(e).await?;
            return Err(ApiError::Limited(rejection));
        }
    };
    let mut e = app.guard.event_for(&grant, &meta, &route.cfg.action, AuditResult::Success);
    e.resource_type = Some(String::from("route"));
    e.resource_id = Some(route.cfg.prefix.clone());
    e.metadata = serde_json::json!({ "method": parts.method.as_str(), "path": parts.uri.path() });
    app.guard.record(e).await?;

    let uri = route.upstream_uri(&parts.uri)?;
    strip_request_headers(&mut parts.headers);
    let h = &mut parts.headers;
    let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, "x-request-id", &meta.request_id);
    if let Some(t) = &grant.principal.tenant_id {
        set(h, "x-portcullis-tenant", t.as_str());
    }
    set(h, "x-portcullis-principal", &grant.principal.id);
    if let Some(r) = grant.principal.role {
        set(h, "x-portcullis-role", r.as_str());
    }
    if let Some(ip) = &meta.ip {
        let xff = match crate::middleware::forwarded_for(h) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        set(h, "x-forwarded-for", &xff);
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
    let failed = |e: ApiError| {
        // The request used its rate; say so on the gateway's own error too.
        let mut r = e.into_response();
        rate_headers(r.headers_mut(), &admission.rate);
        Ok(r)
    };
    let res = match tokio::time::timeout(timeout, route.client.request(upstream_req)).await {
        Err(_) => return failed(ApiError::UpstreamTimeout),
        Ok(Err(e)) => {
            if body_too_large(&e) {
                return failed(ApiError::PayloadTooLarge);
            }
            tracing::warn!(error = %e, route = %route.cfg.prefix, "upstream request failed");
            return failed(ApiError::BadGateway);
        }
        Ok(Ok(r)) => r,
    };
    let (mut rparts, rbody) = res.into_parts();
    strip_response_headers(&mut rparts.headers);
    rate_headers(&mut rparts.headers, &admission.rate);
    rparts.extensions.insert(Proxied);
    let in_flight = grant.principal.tenant_id.as_ref().map(|t| InFlight::start(app.tenant_labels.label(t.as_str())));
    let idle = Duration::from_secs(route.cfg.idle_timeout_secs);
    let body = Body::new(SlotBody {
        inner: rbody,
        idle,
        deadline: Box::pin(tokio::time::sleep(idle)),
        _slot: admission.slot,
        _in_flight: in_flight,
    });
    Ok(Response::from_parts(rparts, body))
}

/// Whether a client error came from our body-size limit while streaming the request body.
fn body_too_large(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}
