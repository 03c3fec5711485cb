//! HTTP adapters over the Guard and the stores: the admin API, middleware, problem+json, the
//! OpenAPI document, and hardened serving. Handlers only adapt: they hold an [`extract::Authed`]
//! grant, call the store through its tenant scope, and record the audit event.
#![forbid(unsafe_code)]

pub mod error;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod proxy;
mod routes;
pub mod server;
pub mod views;

use axum::Router;
use portcullis_guard::Guard;
use portcullis_store::AuditStore;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Global IP allow/block lists, checked on every request before anything else.
    pub global_ip: portcullis_core::iplist::IpPolicy,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: portcullis_core::iplist::IpSet,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub key_rotation_default_grace: Duration,
    /// Scrape token accepted on `/metrics` besides operator credentials.
    pub metrics_token: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            global_ip: Default::default(),
            trusted_proxies: Default::default(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            key_rotation_default_grace: Duration::from_secs(3600),
            metrics_token: None,
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
    pub client: proxy::UpstreamClient,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub tenant_labels: Arc<metrics::TenantLabels>,
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

/// The whole application: API routes, `/openapi.json`, fallback, and the layers every response
/// passes through (outermost last).
pub fn app(guard: Arc<Guard>, audit: Arc<dyn AuditStore>, settings: HttpSettings, routes: proxy::RouteTable) -> Router {
    let (api, doc) = api();
    let openapi_json = Arc::new(doc.to_json().unwrap_or_else(|_| String::from("{}")));
    let state = AppState {
        guard,
        audit,
        settings: Arc::new(settings.clone()),
        openapi_json,
        routes: Arc::new(routes),
        client: proxy::client(),
        metrics: metrics::install(),
        tenant_labels: Arc::new(metrics::TenantLabels::default()),
    };
    // Anything that is not an API route is matched against the configured proxy routes.
    api.route("/openapi.json", axum::routing::get(routes::openapi_json))
        .route("/metrics", axum::routing::get(routes::metrics))
        .fallback(proxy::proxy)
        .with_state(state.clone())
        // Time limit for the whole handler (408), then the body-size limit (413) that also holds
        // for bodies streamed without Content-Length, then the edge layer that stamps request id,
        // security headers and problem bodies on everything below it.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(settings.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state, middleware::edge))
}
