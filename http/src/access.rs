//! The per-request hook (`warp::log::custom`): request metrics and the access log line.
//! Apart from [`crate::metrics`] (the recorder and `GET /metrics`), because it labels each
//! request with its route template from the OpenAPI document, which documents
//! `GET /metrics` in turn.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// The `method` label: the methods the API knows, every other one `other` — a client's
/// made-up methods must not mint label values (series) without end (issue 23).
fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
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
    let method = method_label(info.method());
    let status = info.status().as_u16();
    let elapsed = info.elapsed();
    if counted {
        metrics::counter!("payrail_http_requests_total", "method" => method, "route" => route, "status" => status.to_string())
            .increment(1);
        metrics::histogram!("payrail_http_request_duration_seconds", "method" => method, "route" => route)
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
