//! The pools' lag during a load test, read from the node's `GET /v1/admin/consumers`.
//!
//! The node counts, per consumer, every applied record by its append-to-apply delay in a
//! cumulative histogram (`kafka_journal::lag`). The sampler takes one snapshot when the
//! measured phase starts and one after the pools have caught up with the load, so the
//! difference holds the delays of every record the measured phase produced (and of warm-up
//! records applied after it started). Meanwhile it samples the lag in records once per
//! interval, and after the load it measures how long each consumer takes to reach its
//! high watermark.

use crate::limits::{LAG_DRAIN_POLL_MS, LAG_DRAIN_TIMEOUT_MS, LAG_SAMPLE_INTERVAL_MS};
use crate::run::Timeline;
use kafka_journal::lag::{ConsumerLag, LagBuckets, LAG_BUCKET_BOUNDS_MS};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One consumer's lag over the measured phase, as the report shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolLag {
    /// Consumer name (with the node's namespace), e.g. `ns.analytics`.
    pub name: String,
    /// Records applied between the two snapshots.
    pub applied: u64,
    /// Append-to-apply delay quantiles, as upper bounds of the node's histogram buckets
    /// (ms); `None` without records or above the last bucket bound.
    pub p50_le_ms: Option<u64>,
    pub p99_le_ms: Option<u64>,
    /// Bound of the highest non-empty bucket of the window (ms).
    pub max_le_ms: Option<u64>,
    /// Largest lag in records seen by the once-per-interval samples of the measured phase.
    pub max_lag_records: i64,
    /// Time from the end of the load until this consumer had applied everything the broker
    /// held (ms); `None` when it did not within the drain timeout.
    pub caught_up_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ConsumerList {
    data: Vec<ConsumerLag>,
}

/// Polls the node's consumer lag while a load test runs.
pub struct LagSampler {
    stop: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<Result<Vec<PoolLag>, String>>,
}

impl LagSampler {
    pub fn spawn(
        client: reqwest::Client,
        base: &str,
        admin: HeaderValue,
        timeline: Timeline,
    ) -> Self {
        let url = format!("{base}/v1/admin/consumers");
        let (stop, stopped) = watch::channel(None);
        let task = tokio::spawn(sample(client, url, admin, timeline, stopped));
        Self { stop, task }
    }

    /// Tells the sampler the load ended at `finished`; waits until the pools caught up (or
    /// the drain timeout) and returns each consumer's lag, or why it could not be read.
    pub async fn finish(self, finished: Instant) -> Result<Vec<PoolLag>, String> {
        let _ = self.stop.send(Some(finished));
        self.task
            .await
            .map_err(|e| format!("lag sampler failed: {e}"))?
    }
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    admin: &HeaderValue,
) -> Result<Vec<ConsumerLag>, String> {
    let response = client
        .get(url)
        .header(AUTHORIZATION, admin.clone())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let list: ConsumerList = response
        .json()
        .await
        .map_err(|e| format!("GET {url}: unexpected body: {e}"))?;
    Ok(list.data)
}

async fn sample(
    client: reqwest::Client,
    url: String,
    admin: HeaderValue,
    timeline: Timeline,
    mut stopped: watch::Receiver<Option<Instant>>,
) -> Result<Vec<PoolLag>, String> {
    // The start snapshot: at the start of the measured phase (or at once, if the load ended
    // before it).
    let start_at = tokio::time::Instant::from_std(timeline.measure_start());
    tokio::select! {
        _ = tokio::time::sleep_until(start_at) => {}
        _ = stopped.wait_for(|s| s.is_some()) => {}
    }
    let start = fetch(&client, &url, &admin).await?;
    let mut max_records: BTreeMap<String, i64> = start
        .iter()
        .map(|c| (c.name.clone(), c.lag_records))
        .collect();

    let mut tick = tokio::time::interval(Duration::from_millis(LAG_SAMPLE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let finished = loop {
        if let Some(at) = *stopped.borrow() {
            break at;
        }
        tokio::select! {
            _ = tick.tick() => {
                // A failed sample during load is skipped; the snapshots decide the result.
                if let Ok(now) = fetch(&client, &url, &admin).await {
                    for c in now {
                        let max = max_records.entry(c.name).or_insert(0);
                        *max = (*max).max(c.lag_records);
                    }
                }
            }
            _ = stopped.changed() => {}
        }
    };

    // Drain: poll until every consumer has applied up to its high watermark.
    let mut caught_up: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = finished + Duration::from_millis(LAG_DRAIN_TIMEOUT_MS);
    let mut end = fetch(&client, &url, &admin).await?;
    loop {
        let since_end = Instant::now()
            .saturating_duration_since(finished)
            .as_millis() as u64;
        for c in &end {
            if c.lag_records == 0 {
                caught_up.entry(c.name.clone()).or_insert(since_end);
            }
        }
        if end.iter().all(|c| caught_up.contains_key(&c.name)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(LAG_DRAIN_POLL_MS)).await;
        end = fetch(&client, &url, &admin).await?;
    }

    let starts: BTreeMap<&str, &LagBuckets> =
        start.iter().map(|c| (c.name.as_str(), &c.lag_ms)).collect();
    Ok(end
        .iter()
        .map(|c| {
            let window = match starts.get(c.name.as_str()) {
                Some(earlier) => c.lag_ms.since(earlier),
                None => c.lag_ms.clone(),
            };
            PoolLag {
                name: c.name.clone(),
                applied: window.total(),
                p50_le_ms: window.quantile_bound_ms(500),
                p99_le_ms: window.quantile_bound_ms(990),
                max_le_ms: highest_bucket_bound(&window),
                max_lag_records: max_records.get(&c.name).copied().unwrap_or(0),
                caught_up_after_ms: caught_up.get(&c.name).copied(),
            }
        })
        .collect())
}

/// Upper bound of the highest bucket with a record, `None` if empty or above every bound.
fn highest_bucket_bound(window: &LagBuckets) -> Option<u64> {
    let last = window.counts.iter().rposition(|n| *n > 0)?;
    LAG_BUCKET_BOUNDS_MS.get(last).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_bucket_bound_is_that_of_the_last_non_empty_bucket() {
        let mut counts = vec![0; LAG_BUCKET_BOUNDS_MS.len() + 1];
        assert_eq!(
            highest_bucket_bound(&LagBuckets {
                counts: counts.clone(),
                max_ms: 0
            }),
            None
        );
        counts[0] = 5;
        counts[4] = 1;
        let window = LagBuckets { counts, max_ms: 0 };
        assert_eq!(highest_bucket_bound(&window), Some(LAG_BUCKET_BOUNDS_MS[4]));
    }
}
