//! Prometheus metrics on `/metrics`. Label values are bounded: routes come from configuration
//! and the route table, statuses are three digits, limit kinds and auth reasons are fixed sets,
//! and tenants are capped at [`MAX_TENANT_LABELS`] distinct values (later tenants are `other`).
//!
//! `/metrics` names tenants, so it is not public: it answers an operator credential, or the
//! scrape token configured as `metrics.bearer_token`.
use dashmap::DashMap;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub const MAX_TENANT_LABELS: usize = 1000;

const BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Events per audit group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            match PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(String::from("portcullis_audit_batch_events")),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
            {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("portcullis_requests_total", "Requests answered, by route, status and tenant.");
    describe_histogram!(
        "portcullis_request_duration_seconds",
        Unit::Seconds,
        "Time to the response headers, by route (proxied bodies stream after)."
    );
    describe_counter!("portcullis_limit_rejections_total", "Requests refused by a limit, by kind.");
    describe_gauge!("portcullis_in_flight_requests", "Proxied requests whose response is still streaming, by tenant.");
    describe_histogram!("portcullis_audit_write_seconds", Unit::Seconds, "Time until an audit event is durable.");
    describe_histogram!("portcullis_audit_batch_events", "Audit events written together in one group commit.");
    describe_histogram!(
        "portcullis_audit_index_seconds",
        Unit::Seconds,
        "Time to write a batch of acknowledged events into the query index."
    );
    describe_counter!(
        "portcullis_audit_index_failures_total",
        "Query-index writes that failed (the events are in the files; the index is rebuilt from them)."
    );
    describe_counter!("portcullis_audit_failures_total", "Audit writes that failed (their requests were refused).");
    describe_gauge!("portcullis_audit_queue_depth", "Audit events waiting for the writer.");
    describe_counter!("portcullis_auth_failures_total", "Rejected credentials, by reason.");
    // Emitted by the shared (Redis) limiter, crates/limiter/src/{shared,redis}.rs.
    describe_counter!(
        "portcullis_limiter_fallback_decisions_total",
        "Limit decisions made without Redis while it was unreachable, by fail mode (`local`: decided in process; `fail_closed`: refused with 503)."
    );
    describe_counter!(
        "portcullis_limiter_redis_errors_total",
        "Redis calls of the limiter that failed, by operation (`admit`, `renew`, `release`, `probe`) and kind (`timeout`, `error`)."
    );
    describe_gauge!(
        "portcullis_limiter_degraded",
        "1 while the shared limiter cannot reach Redis and decides with its fail mode."
    );
}

#[derive(Default)]
pub struct TenantLabels {
    seen: DashMap<String, ()>,
}

impl TenantLabels {
    pub fn label(&self, tenant: &str) -> String {
        if self.seen.contains_key(tenant) {
            return tenant.to_owned();
        }
        if self.seen.len() < MAX_TENANT_LABELS {
            self.seen.insert(tenant.to_owned(), ());
            return tenant.to_owned();
        }
        String::from("other")
    }
}

/// Filled by whoever learns the request's tenant (guard extractors, proxy); read by the edge
/// layer when it counts the response.
#[derive(Clone, Default)]
pub struct TenantCell(pub Arc<OnceLock<String>>);

/// The route a response belongs to, for the `route` label of proxied requests.
#[derive(Clone)]
pub struct RouteLabel(pub String);

/// Counts a proxied request in flight for a tenant while alive.
pub struct InFlight(metrics::Gauge);

impl InFlight {
    pub fn start(labels: &TenantLabels, tenant: &str) -> Self {
        let g = HANDLES.with(|h| {
            let mut h = h.borrow_mut();
            h.trim();
            if let Some(g) = h.in_flight.get(tenant) {
                return g.clone();
            }
            let g = metrics::gauge!("portcullis_in_flight_requests", "tenant" => labels.label(tenant));
            h.in_flight.insert(tenant.to_owned(), g.clone());
            h.size += 1;
            g
        });
        g.increment(1.0);
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Metric handles by label values, per thread. A `counter!` with dynamic labels builds its key,
/// hashes it and takes a registry shard lock shared by every core on each call — measured,
/// a tenth of an edge thread's time; a handle is one atomic add.
#[derive(Default)]
struct Handles {
    /// route → status → tenant (as seen, before label capping) → counter.
    requests: HashMap<String, HashMap<u16, HashMap<String, metrics::Counter>>>,
    durations: HashMap<String, metrics::Histogram>,
    in_flight: HashMap<String, metrics::Gauge>,
    size: usize,
}

impl Handles {
    /// Bounds the memory of a thread that sees very many tenants.
    fn trim(&mut self) {
        if self.size > 50_000 {
            *self = Handles::default();
        }
    }
}

thread_local! {
    static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::new(Handles::default());
}

/// Counts one answered request and its duration.
pub fn count_request(labels: &TenantLabels, route: &str, status: u16, tenant: Option<&str>, seconds: f64) {
    let tenant_key = tenant.unwrap_or("");
    HANDLES.with(|h| {
        let mut h = h.borrow_mut();
        h.trim();
        let h = &mut *h;
        let counter = h
            .requests
            .get(route)
            .and_then(|by_status| by_status.get(&status))
            .and_then(|by_tenant| by_tenant.get(tenant_key))
            .cloned();
        let counter = match counter {
            Some(c) => c,
            None => {
                let label = tenant.map(|t| labels.label(t)).unwrap_or_else(|| String::from("none"));
                let c = metrics::counter!("portcullis_requests_total", "route" => route.to_owned(), "status" => status.to_string(), "tenant" => label);
                h.requests
                    .entry(route.to_owned())
                    .or_default()
                    .entry(status)
                    .or_default()
                    .insert(tenant_key.to_owned(), c.clone());
                h.size += 1;
                c
            }
        };
        counter.increment(1);
        let histogram = match h.durations.get(route) {
            Some(x) => x.clone(),
            None => {
                let x = metrics::histogram!("portcullis_request_duration_seconds", "route" => route.to_owned());
                h.durations.insert(route.to_owned(), x.clone());
                h.size += 1;
                x
            }
        };
        histogram.record(seconds);
    });
}

pub fn limit_rejected(kind: &'static str) {
    metrics::counter!("portcullis_limit_rejections_total", "kind" => kind).increment(1);
}
