//! `GET /metrics` (admin token): Prometheus text format, from the `metrics` crates.
//!
//! Counters and histograms are recorded where things happen (HTTP requests in
//! [`crate::access`], journal
//! appends, apply delays and dead letters in `kafka_journal`, commands, actors and restarts
//! in `actors` and `supervisor`). Gauges that describe state (breaker, partitions, spool,
//! consumer lag, dead-letter table, PostgreSQL pool) are read when the endpoint is scraped,
//! so they cost nothing between scrapes. docs/API.md lists every family.

use crate::{authorize_admin, respond, AppState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// Histogram buckets (seconds) of every latency: 1 ms to 10 s.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Buckets (seconds) of the append-to-apply delay: the consumers' own lag buckets
/// (`kafka_journal::lag::LAG_BUCKET_BOUNDS_MS`, 1 ms to 5 min), since a pool behind an
/// outage lags minutes, not the 10 s the request buckets end at.
fn apply_delay_buckets_s() -> Vec<f64> {
    kafka_journal::lag::LAG_BUCKET_BOUNDS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect()
}

/// Upper bound for the dead-letter count query of one scrape; past it the gauges keep
/// their last values.
const DEAD_LETTER_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the recorder's histograms are drained into their buckets when nobody scrapes.
/// The exporter keeps every recorded value until a scrape or an upkeep folds it in: a node
/// that was never scraped kept ~150 bytes per create (issue 25: +17 MB a minute at ~2,000
/// creates/s). Bounded by this interval instead.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder (once; later calls reuse it) and starts
/// its upkeep thread.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS_S)
        .map_err(|e| format!("metrics buckets: {e}"))?
        .set_buckets_for_metric(
            Matcher::Full("payrail_consumer_apply_delay_seconds".into()),
            &apply_delay_buckets_s(),
        )
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    // A thread, not a task: the recorder lives as long as the process, whatever runtime
    // (or none) the caller has.
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        })
        .map_err(|e| format!("starting the metrics upkeep thread: {e}"))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
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
pub async fn scrape(state: Arc<AppState>, auth: Option<String>) -> Result<Response, Infallible> {
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
    record_pool(state);
    record_dead_letters(state).await;
    // The lag needs the broker's watermarks; without the broker the rest still renders.
    if let Ok(consumers) = state.consumers.report().await {
        record_lag(&consumers);
    }
}

/// PostgreSQL pool: connections in use and idle, the maximum. sqlx 0.8 counts neither
/// waits nor their time, and the hot paths acquire inside sqlx (`&PgPool` as executor),
/// so the wait is sampled: how long this scrape waited for a connection.
fn record_pool(state: &AppState) {
    let size = state.pool.size();
    let idle = u32::try_from(state.pool.num_idle())
        .unwrap_or(u32::MAX)
        .min(size);
    metrics::gauge!("payrail_db_connections", "state" => "in_use").set(f64::from(size - idle));
    metrics::gauge!("payrail_db_connections", "state" => "idle").set(f64::from(idle));
    metrics::gauge!("payrail_db_connections_max")
        .set(f64::from(state.pool.options().get_max_connections()));
}

/// Dead letters of this node's consumers in `journal_dead_letters`, pending and replayed:
/// one indexed GROUP BY (the primary key starts with `consumer`), bounded in time. The
/// connection's acquire time is the sampled pool wait.
async fn record_dead_letters(state: &AppState) {
    let names = state.consumers.names();
    let query = async {
        let started = Instant::now();
        let mut conn = state.pool.acquire().await?;
        metrics::gauge!("payrail_db_acquire_wait_seconds").set(started.elapsed().as_secs_f64());
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT consumer,
                    count(*) FILTER (WHERE replayed_at IS NULL),
                    count(*) FILTER (WHERE replayed_at IS NOT NULL)
             FROM journal_dead_letters WHERE consumer = ANY($1) GROUP BY consumer",
        )
        .bind(&names)
        .fetch_all(&mut *conn)
        .await
    };
    let rows = match tokio::time::timeout(DEAD_LETTER_QUERY_TIMEOUT, query).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::warn!(%error, "metrics: counting dead letters failed");
            return;
        }
        Err(_) => {
            tracing::warn!("metrics: counting dead letters timed out");
            return;
        }
    };
    let counts: HashMap<String, (i64, i64)> = rows
        .into_iter()
        .map(|(consumer, pending, replayed)| (consumer, (pending, replayed)))
        .collect();
    for name in names {
        let (pending, replayed) = counts.get(&name).copied().unwrap_or((0, 0));
        metrics::gauge!("payrail_dead_letters", "consumer" => name.clone(), "state" => "pending")
            .set(pending as f64);
        metrics::gauge!("payrail_dead_letters", "consumer" => name, "state" => "replayed")
            .set(replayed as f64);
    }
}

/// (consumer, partition) pairs whose lag gauges were set by an earlier scrape.
static LAG_SERIES: Mutex<BTreeSet<(String, i32)>> = Mutex::new(BTreeSet::new());

/// Lag in records per consumer and partition this node applies now. The exporter cannot
/// remove a series, so a partition this node no longer applies (handed over to another
/// node) keeps its series at lag 0 with `payrail_consumer_partition_assigned` 0, instead
/// of its last lag forever.
fn record_lag(consumers: &[kafka_journal::lag::ConsumerLag]) {
    let mut current = BTreeSet::new();
    for consumer in consumers {
        for partition in &consumer.partitions {
            current.insert((consumer.name.clone(), partition.partition));
            let labels = [
                ("consumer", consumer.name.clone()),
                ("partition", partition.partition.to_string()),
            ];
            metrics::gauge!("payrail_consumer_lag_records", &labels)
                .set(partition.lag_records as f64);
            metrics::gauge!("payrail_consumer_partition_assigned", &labels).set(1.0);
        }
    }
    let mut seen = match LAG_SERIES.lock() {
        Ok(seen) => seen,
        Err(poisoned) => poisoned.into_inner(),
    };
    for (consumer, partition) in seen.difference(&current) {
        let labels = [
            ("consumer", consumer.clone()),
            ("partition", partition.to_string()),
        ];
        metrics::gauge!("payrail_consumer_lag_records", &labels).set(0.0);
        metrics::gauge!("payrail_consumer_partition_assigned", &labels).set(0.0);
    }
    // Bounded: consumers × the journal's partitions.
    seen.extend(current);
}

#[cfg(test)]
mod tests {
    use super::record_lag;
    use kafka_journal::lag::{ConsumerLag, LagBuckets, PartitionLag};
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn lag(name: &str, partitions: &[(i32, i64)]) -> ConsumerLag {
        ConsumerLag {
            name: name.into(),
            topic: "t".into(),
            partitions: partitions
                .iter()
                .map(|(partition, lag_records)| PartitionLag {
                    partition: *partition,
                    next_offset: 0,
                    high_watermark: *lag_records,
                    lag_records: *lag_records,
                })
                .collect(),
            lag_records: partitions.iter().map(|(_, l)| l).sum(),
            lag_ms: LagBuckets {
                counts: Vec::new(),
                max_ms: 0,
            },
            lag_bucket_bounds_ms: Vec::new(),
        }
    }

    #[test]
    fn a_partition_handed_over_keeps_no_stale_lag() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            record_lag(&[lag("handover-test", &[(0, 5), (1, 7)])]);
            record_lag(&[lag("handover-test", &[(0, 2)])]);
        });
        let text = handle.render();
        let line = |series: &str| {
            text.lines()
                .find(|l| l.starts_with(series))
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
        };
        let p = |name: &str, partition: i32| {
            format!("{name}{{consumer=\"handover-test\",partition=\"{partition}\"}}")
        };
        assert_eq!(
            line(&p("payrail_consumer_lag_records", 0)).as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            line(&p("payrail_consumer_lag_records", 1)).as_deref(),
            Some("0"),
            "{text}"
        );
        assert_eq!(
            line(&p("payrail_consumer_partition_assigned", 0)).as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            line(&p("payrail_consumer_partition_assigned", 1)).as_deref(),
            Some("0"),
            "{text}"
        );
    }
}
