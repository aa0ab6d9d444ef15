//! `GET /metrics` (admin token): Prometheus text format, from the `metrics` crates.
//!
//! Counters and histograms are recorded where things happen (HTTP requests here, journal
//! appends in `kafka_journal`). Gauges that describe state (breaker, partitions, spool,
//! consumer lag, PostgreSQL pool) are read when the endpoint is scraped, so they are never
//! stale and cost nothing between scrapes.

use crate::{authorize_admin, respond, AppState};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// Histogram buckets (seconds) of every latency: 1 ms to 10 s.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS_S)
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

static ACCESS_LOG: AtomicBool = AtomicBool::new(true);
static REQUEST_METRICS: AtomicBool = AtomicBool::new(true);

/// `metrics.enabled = false`: requests are not counted nor timed.
pub fn disable_request_metrics() {
    REQUEST_METRICS.store(false, Ordering::Relaxed);
}

/// `log.access_log`: whether [`record_request`] writes the access line.
pub fn set_access_log(enabled: bool) {
    ACCESS_LOG.store(enabled, Ordering::Relaxed);
}

/// Counts and times one request (`warp::log::custom`) and writes its access line: one per
/// request, with the route template and never the query string, body or credentials.
pub fn record_request(info: warp::log::Info<'_>) {
    let counted = REQUEST_METRICS.load(Ordering::Relaxed);
    let logged = ACCESS_LOG.load(Ordering::Relaxed);
    if !counted && !logged {
        return;
    }
    let route = crate::openapi::route_template(info.path());
    let method = info.method().as_str().to_string();
    let status = info.status().as_u16();
    let elapsed = info.elapsed();
    if counted {
        metrics::counter!("payrail_http_requests_total", "method" => method.clone(), "route" => route, "status" => status.to_string())
            .increment(1);
        metrics::histogram!("payrail_http_request_duration_seconds", "method" => method.clone(), "route" => route)
            .record(elapsed.as_secs_f64());
    }
    if logged {
        let request_id = info
            .request_headers()
            .get(crate::request_id::HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::info!(
            target: "payrail::access",
            %method,
            route,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id,
            "request"
        );
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "No or wrong admin token", body = crate::error::ErrorResponse),
    )
)]
pub async fn scrape(state: AppState, auth: Option<String>) -> Result<Response, Infallible> {
    respond(
        async {
            authorize_admin(&state, &auth)?;
            let Some(handle) = HANDLE.get() else {
                return Err(crate::error::ApiError::unavailable(
                    "metrics_unavailable",
                    "the metrics recorder is not installed",
                ));
            };
            record_state(&state).await;
            let mut response = handle.render().into_response();
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(response)
        }
        .await,
    )
}

/// Sets the state gauges from the node's own view, just before rendering.
async fn record_state(state: &AppState) {
    let runtime = state.node.runtime();
    let breaker = match runtime.health.state().as_str() {
        "closed" => 0.0,
        "half_open" => 1.0,
        _ => 2.0,
    };
    metrics::gauge!("payrail_journal_breaker_state").set(breaker);
    metrics::counter!("payrail_journal_breaker_transitions_total")
        .absolute(runtime.health.transitions());
    let ownership = state.node.ownership();
    let owned = ownership.owned();
    metrics::gauge!("payrail_partitions_owned").set(owned.len() as f64);
    for partition in 0..ownership.partitions() as i32 {
        let epoch = ownership.epoch(partition);
        metrics::gauge!("payrail_partition_served", "partition" => partition.to_string())
            .set(if epoch.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("payrail_partition_epoch", "partition" => partition.to_string())
            .set(epoch.unwrap_or(0) as f64);
        metrics::gauge!("payrail_spool_rows", "partition" => partition.to_string()).set(0.0);
        metrics::gauge!("payrail_spool_oldest_age_seconds", "partition" => partition.to_string())
            .set(0.0);
    }
    if let Ok(depths) = runtime.fallback.depths().await {
        for depth in depths {
            let partition = depth.partition.to_string();
            metrics::gauge!("payrail_spool_rows", "partition" => partition.clone())
                .set(depth.rows as f64);
            metrics::gauge!("payrail_spool_oldest_age_seconds", "partition" => partition)
                .set(depth.oldest_age_ms as f64 / 1000.0);
        }
    }
    metrics::gauge!("payrail_db_connections", "state" => "open").set(f64::from(state.pool.size()));
    metrics::gauge!("payrail_db_connections", "state" => "idle").set(state.pool.num_idle() as f64);
    // The lag needs the broker's watermarks; without the broker the rest still renders.
    if let Ok(consumers) = state.consumers.report().await {
        for consumer in consumers {
            for partition in consumer.partitions {
                metrics::gauge!(
                    "payrail_consumer_lag_records",
                    "consumer" => consumer.name.clone(),
                    "partition" => partition.partition.to_string()
                )
                .set(partition.lag_records as f64);
            }
        }
    }
}
