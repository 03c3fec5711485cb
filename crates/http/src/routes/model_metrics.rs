//! `GET /v1/model-profiles/{id}/metrics`: live figures of a profile's model from the traffic
//! through the gateway — requests, success rate, latency percentiles (from histograms whose
//! bound is stated), tokens, cost and cost per 1 000 tokens — over a window, with a series for
//! charts.
use crate::error::{ApiError, ProblemDoc};
use crate::extract::{ApiQuery, Authed, perm};
use axum::Json;
use axum::extract::Path;
use portcullis_core::histogram::quantile_micros;
use portcullis_core::timefmt::rfc3339_ms;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Windows a caller may pick, in minutes.
const WINDOWS: &[(&str, i64)] =
    &[("15m", 15), ("1h", 60), ("6h", 360), ("24h", 1_440), ("7d", 10_080), ("30d", 43_200)];
/// Points in the series at most.
const POINTS: i64 = 60;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MetricsParams {
    /// `15m`, `1h` (default), `6h`, `24h`, `7d` or `30d`, ending now.
    pub window: Option<String>,
}

#[derive(Serialize, ToSchema, Default)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct SeriesPoint {
    /// Start of the step (RFC 3339).
    pub from: String,
    pub requests: i64,
    pub success_rate: Option<f64>,
    pub p95_latency_ms: Option<f64>,
    pub cost_usd: f64,
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetrics {
    pub profile_id: String,
    pub model: String,
    pub window: String,
    pub from: String,
    pub to: String,
    pub requests: i64,
    pub status_2xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    /// 2xx/3xx answers over all requests; null without requests.
    pub success_rate: Option<f64>,
    /// Milliseconds from the request reaching the gateway to the response's end. Each figure is
    /// the upper bound of a histogram bucket: never below the true percentile, at most 10 % above.
    pub latency_ms: Percentiles,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nanos: i64,
    pub cost_usd: f64,
    /// Cost per 1 000 tokens (input and output together); null without tokens.
    pub cost_per_1k_tokens_usd: Option<f64>,
    /// One point per step (the window divided into at most 60), oldest first.
    pub series: Vec<SeriesPoint>,
}

/// One step of the series: requests, successes, cost (nano-USD), latency buckets.
type Step = (i64, i64, i64, Vec<(i64, i64)>);

fn rate(ok: i64, n: i64) -> Option<f64> {
    (n > 0).then(|| ok as f64 / n as f64)
}

fn ms(us: Option<f64>) -> Option<f64> {
    us.map(|u| u.round() / 1000.0)
}

/// Live metrics of the profile's model over a window.
#[utoipa::path(get, path = "/v1/model-profiles/{id}/metrics", tag = "model-profiles", params(("id" = String, Path), MetricsParams),
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = ModelMetrics), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub async fn metrics(
    a: Authed<perm::ConfigRead>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<MetricsParams>,
) -> Result<Json<ModelMetrics>, ApiError> {
    let window = p.window.unwrap_or_else(|| String::from("1h"));
    let Some(&(_, minutes)) = WINDOWS.iter().find(|(w, _)| *w == window) else {
        let names: Vec<&str> = WINDOWS.iter().map(|(w, _)| *w).collect();
        return Err(ApiError::BadRequest(format!("`window` must be one of {}", names.join(", "))));
    };
    let scope = a.scope()?.clone();
    let Some(profile) = a.app.guard.store().get_model_profile(&scope, &id).await? else {
        return Err(a.not_found("model_profile.metrics", "model_profile", &id, None).await);
    };
    if let Err(e) = a.app.guard.flush_usage_ledger().await {
        tracing::warn!(error = %e, "usage not yet written; the metrics may miss the last second");
    }
    let now_ms = a.app.guard.now_ms();
    let to_minute = now_ms.div_euclid(60_000) + 1;
    let from_minute = to_minute - minutes;
    let (rows, buckets) = a.app.guard.store().model_metrics(&scope, &profile.model, from_minute, to_minute).await?;

    let step = (minutes + POINTS - 1) / POINTS;
    let point_of = |minute: i64| (minute - from_minute) / step;
    let mut points: BTreeMap<i64, Step> = BTreeMap::new();
    let (mut requests, mut ok, mut s4, mut s5, mut input, mut output, mut cost) = (0, 0, 0, 0, 0i64, 0i64, 0i64);
    for r in &rows {
        requests += r.requests;
        ok += r.status_2xx;
        s4 += r.status_4xx;
        s5 += r.status_5xx;
        input = input.saturating_add(r.input_tokens);
        output = output.saturating_add(r.output_tokens);
        cost = cost.saturating_add(r.cost_nanos);
        let pt = points.entry(point_of(r.minute)).or_default();
        pt.0 += r.requests;
        pt.1 += r.status_2xx;
        pt.2 = pt.2.saturating_add(r.cost_nanos);
    }
    let mut all: Vec<(i64, i64)> = Vec::new();
    for b in &buckets {
        all.push((b.bucket, b.count));
        points.entry(point_of(b.minute)).or_default().3.push((b.bucket, b.count));
    }
    let tokens = input.saturating_add(output);
    let series = (0..(minutes + step - 1) / step)
        .map(|i| {
            let (n, good, c, hist) = points.remove(&i).unwrap_or_default();
            SeriesPoint {
                from: rfc3339_ms((from_minute + i * step) * 60_000),
                requests: n,
                success_rate: rate(good, n),
                p95_latency_ms: ms(quantile_micros(&hist, 0.95)),
                cost_usd: portcullis_core::limits::nanos_to_usd(c),
            }
        })
        .collect();
    a.record_ok("model_profile.metrics", "model_profile", Some(&profile.id)).await?;
    Ok(Json(ModelMetrics {
        profile_id: profile.id,
        model: profile.model,
        window,
        from: rfc3339_ms(from_minute * 60_000),
        to: rfc3339_ms(to_minute * 60_000),
        requests,
        status_2xx: ok,
        status_4xx: s4,
        status_5xx: s5,
        success_rate: rate(ok, requests),
        latency_ms: Percentiles {
            p50: ms(quantile_micros(&all, 0.5)),
            p95: ms(quantile_micros(&all, 0.95)),
            p99: ms(quantile_micros(&all, 0.99)),
        },
        input_tokens: input,
        output_tokens: output,
        cost_nanos: cost,
        cost_usd: portcullis_core::limits::nanos_to_usd(cost),
        cost_per_1k_tokens_usd: (tokens > 0)
            .then(|| portcullis_core::limits::nanos_to_usd(cost) / tokens as f64 * 1000.0),
        series,
    }))
}
