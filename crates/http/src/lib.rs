//! HTTP adapters over the Guard and the stores: the admin API, middleware, problem+json, the
//! OpenAPI document, and hardened serving. Handlers only adapt: they hold an [`extract::Authed`]
//! grant, call the store through its tenant scope, and record the audit event.
#![forbid(unsafe_code)]

pub mod error;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod openai;
pub mod proxy;
mod routes;
pub mod server;
pub mod timer;
pub mod ui;
pub mod usage_report;
pub mod views;

use axum::Router;
use portcullis_guard::Guard;
use portcullis_store::AuditStore;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Cross-origin access for browsers. Absent = no CORS headers at all (same-origin only).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Exact origins, e.g. `https://app.example.com`; `*` only without credentials.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

impl CorsSettings {
    pub fn layer(&self) -> Result<Option<tower_http::cors::CorsLayer>, String> {
        use axum::http::{HeaderName, HeaderValue, Method};
        use tower_http::cors::{AllowOrigin, CorsLayer};
        if self.allowed_origins.is_empty() {
            return Ok(None);
        }
        let any = self.allowed_origins.iter().any(|o| o == "*");
        if any && self.allow_credentials {
            return Err(String::from("http.cors: `*` origins cannot be combined with allow_credentials"));
        }
        let origin = if any {
            AllowOrigin::any()
        } else {
            let list = self
                .allowed_origins
                .iter()
                .map(|o| HeaderValue::from_str(o).map_err(|_| format!("http.cors: bad origin `{o}`")))
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(list)
        };
        let methods = if self.allowed_methods.is_empty() {
            vec![Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
        } else {
            self.allowed_methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("http.cors: bad method `{m}`")))
                .collect::<Result<Vec<_>, _>>()?
        };
        let headers = if self.allowed_headers.is_empty() {
            ["authorization", "content-type", "x-api-key", "x-request-id", "x-tenant-id"]
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect()
        } else {
            self.allowed_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("http.cors: bad header `{h}`")))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Some(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods(methods)
                .allow_headers(headers)
                .allow_credentials(self.allow_credentials)
                .expose_headers([
                    HeaderName::from_static("x-request-id"),
                    HeaderName::from_static("x-ratelimit-limit"),
                    HeaderName::from_static("x-ratelimit-remaining"),
                    HeaderName::from_static("x-ratelimit-reset"),
                    HeaderName::from_static("retry-after"),
                ])
                .max_age(Duration::from_secs(if self.max_age_secs == 0 { 600 } else { self.max_age_secs })),
        ))
    }
}

#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub cors: Option<tower_http::cors::CorsLayer>,
    /// Global IP allow/block lists, checked on every request before anything else.
    pub global_ip: portcullis_core::iplist::IpPolicy,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: portcullis_core::iplist::IpSet,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub key_rotation_default_grace: Duration,
    /// Scrape token accepted on `/metrics` besides operator credentials.
    pub metrics_token: Option<String>,
    pub ui: ui::UiSettings,
    /// What `GET /v1/audit/verify` checks: the files (found when asked) and the trusted key.
    pub audit_verify: Option<AuditVerify>,
}

/// The audit files to verify (looked up at each run: instances come and go) and the key whose
/// signatures the checkpoints must carry.
#[derive(Clone)]
pub struct AuditVerify {
    pub sources: Arc<dyn Fn() -> Result<portcullis_audit::FileSources, String> + Send + Sync>,
    pub key: portcullis_audit::VerifyingKey,
}

impl std::fmt::Debug for AuditVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditVerify")
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            cors: None,
            global_ip: Default::default(),
            trusted_proxies: Default::default(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            key_rotation_default_grace: Duration::from_secs(3600),
            metrics_token: None,
            ui: ui::UiSettings::default(),
            audit_verify: None,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub guard: Arc<Guard>,
    pub audit: Arc<dyn AuditStore>,
    pub settings: Arc<HttpSettings>,
    pub openapi_json: Arc<String>,
    pub routes: Arc<proxy::RouteTable>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub tenant_labels: Arc<metrics::TenantLabels>,
    /// Work a request leaves running after its response (reading the rest of a JSON answer
    /// whose client left, for its usage): each edge thread drives its share of it to the end
    /// before it stops, within the shutdown grace.
    pub background: tokio_util::task::TaskTracker,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis", description = "Multi-tenant security gateway and governance control plane."),
    components(schemas(error::ProblemDoc)),
    modifiers(&SecurityAddon)
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

/// The documented API routes, and the OpenAPI document generated from them as they register.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(routes::router()).split_for_parts()
}

/// What the server runs: the admin API router (with its layers) and, beside it, the data plane's
/// direct path for requests that match a proxy route.
#[derive(Clone)]
pub struct Gateway {
    pub router: Router,
    state: AppState,
}

impl Gateway {
    /// The route a request to `path` is proxied on, when the data plane's own path may take it.
    /// With CORS configured, browser requests (those with an `Origin`) go through the router,
    /// whose CORS layer must see them.
    pub(crate) fn direct_route(&self, req: &hyper::Request<hyper::body::Incoming>) -> Option<&Arc<proxy::Route>> {
        let route = self.state.routes.find(req.uri().path())?;
        if self.state.settings.cors.is_some() && req.headers().contains_key(axum::http::header::ORIGIN) {
            return None;
        }
        Some(route)
    }

    pub(crate) fn state(&self) -> &AppState {
        &self.state
    }
}

/// The whole application: API routes, `/openapi.json`, fallback, and the layers every response
/// passes through (outermost last).
pub fn app(
    guard: Arc<Guard>,
    audit: Arc<dyn AuditStore>,
    settings: HttpSettings,
    routes: proxy::RouteTable,
) -> Gateway {
    let (api, doc) = api();
    let openapi_json = Arc::new(doc.to_json().unwrap_or_else(|_| String::from("{}")));
    let state = AppState {
        guard,
        audit,
        settings: Arc::new(settings.clone()),
        openapi_json,
        routes: Arc::new(routes),
        metrics: metrics::install(),
        tenant_labels: Arc::new(metrics::TenantLabels::default()),
        background: tokio_util::task::TaskTracker::new(),
    };
    // Anything that is not an API route is matched against the configured proxy routes.
    let router = api
        .route("/openapi.json", axum::routing::get(routes::openapi_json))
        // Time limit for API handlers (408). Added before the fallback on purpose: proxied
        // requests have their route's own timeouts and may stream for long.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .fallback(proxy::proxy)
        .with_state(state.clone())
        // Then the body-size limit (413) that also holds for bodies streamed without
        // Content-Length, then the edge layer that stamps request id, security headers and
        // problem bodies on everything below it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(settings.max_body_bytes))
        // CORS answers preflights before authentication (browsers send them without credentials).
        .layer(tower::util::option_layer(settings.cors.clone()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::edge));
    Gateway { router, state }
}
