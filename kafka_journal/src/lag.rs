//! How far behind the journal a consumer is, in records and in time.
//!
//! Every partition worker records, for each record it applies, the time from the record's
//! journal timestamp (set when the producer appended it) to the commit of the PostgreSQL
//! transaction that applied it: the end-to-end delay a read model has behind the write
//! path. The delays go into a fixed-bucket histogram of atomic counters, cumulative since
//! start (as a Prometheus histogram), so any number of readers can take two snapshots and
//! subtract them to get the delays of a window without resetting anything.
//!
//! [`ConsumerMonitor`] adds the broker's high watermarks to give the lag in records, for
//! `GET /v1/admin/consumers` and the load generator.

use crate::client_log::{ClientLog, QuietContext};
use crate::consumer::ConsumerHandle;
use crate::options::JournalOptions;
use crate::producer::JournalError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (inclusive, ms) of the lag buckets; one more bucket holds everything above
/// the last bound.
pub const LAG_BUCKET_BOUNDS_MS: [u64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000,
];

const BUCKETS: usize = LAG_BUCKET_BOUNDS_MS.len() + 1;

/// Cumulative counts of applied records by lag bucket.
#[derive(Debug, Default)]
pub struct LagHistogram {
    counts: [AtomicU64; BUCKETS],
    max_ms: AtomicU64,
}

impl LagHistogram {
    /// Counts one applied record that waited `lag_ms` between append and apply.
    pub fn record(&self, lag_ms: u64) {
        let bucket = LAG_BUCKET_BOUNDS_MS
            .iter()
            .position(|bound| lag_ms <= *bound)
            .unwrap_or(BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.max_ms.fetch_max(lag_ms, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LagBuckets {
        LagBuckets {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            max_ms: self.max_ms.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a [`LagHistogram`]: `counts[i]` records with lag ≤
/// `LAG_BUCKET_BOUNDS_MS[i]` (and above the bound before); the last count is above every
/// bound. `max_ms` is the largest lag seen since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagBuckets {
    pub counts: Vec<u64>,
    pub max_ms: u64,
}

impl LagBuckets {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The counts of the window between `earlier` and `self` (both of one consumer).
    pub fn since(&self, earlier: &LagBuckets) -> LagBuckets {
        LagBuckets {
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            max_ms: self.max_ms,
        }
    }

    /// Upper bound (ms) of the bucket holding quantile `per_mille`/1000 of the records, or
    /// `None` without records or when it lies above the last bound. A bucket bound, not an
    /// interpolation: "p99 ≤ 50 ms" is what it says.
    pub fn quantile_bound_ms(&self, per_mille: u64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, rounded up, at least 1.
        let rank = (total * per_mille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return LAG_BUCKET_BOUNDS_MS.get(i).copied();
            }
        }
        None
    }
}

/// One partition of a consumer: what it has applied and what the broker holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// Next offset to apply; -1 when this node has not applied nor loaded any yet.
    pub next_offset: i64,
    pub high_watermark: i64,
    /// Records on the broker not applied yet.
    pub lag_records: i64,
}

/// One consumer (pool) as `GET /v1/admin/consumers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerLag {
    pub name: String,
    pub topic: String,
    /// Partitions this node applies (for a group: those assigned to it now).
    pub partitions: Vec<PartitionLag>,
    pub lag_records: i64,
    /// Records applied since start, by append-to-apply delay.
    pub lag_ms: LagBuckets,
    pub lag_bucket_bounds_ms: Vec<u64>,
}

/// Reads the lag of the node's consumers; cheap to clone.
#[derive(Clone)]
pub struct ConsumerMonitor {
    consumers: Arc<Vec<ConsumerHandle>>,
    brokers: String,
    timeout: Duration,
    /// One metadata client, made on first use and kept: a watermark look-up on a new client
    /// would cost a connection each time.
    client: Arc<Mutex<Option<Arc<BaseConsumer<QuietContext>>>>>,
    client_log_every_ms: u64,
}

impl ConsumerMonitor {
    pub fn new(options: &JournalOptions, consumers: Vec<ConsumerHandle>) -> Self {
        Self {
            consumers: Arc::new(consumers),
            brokers: options.brokers.clone(),
            client_log_every_ms: options.client_log_every_ms,
            timeout: Duration::from_millis(options.admin_timeout_ms),
            client: Arc::new(Mutex::new(None)),
        }
    }

    /// The consumers' names (their offsets' and dead letters' `consumer` key).
    pub fn names(&self) -> Vec<String> {
        self.consumers.iter().map(|c| c.spec.name.clone()).collect()
    }

    fn client(&self) -> Result<Arc<BaseConsumer<QuietContext>>, JournalError> {
        let mut slot = match self.client.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let log = ClientLog::new(
            "payrail-lag",
            Duration::from_millis(self.client_log_every_ms),
        );
        let client: Arc<BaseConsumer<QuietContext>> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .create_with_context(QuietContext::new(log))
                .map_err(|e| JournalError::Config(e.to_string()))?,
        );
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Every consumer's partitions with their watermarks, and its lag histogram.
    pub async fn report(&self) -> Result<Vec<ConsumerLag>, JournalError> {
        let client = self.client()?;
        let consumers = self.consumers.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            // The histograms first, so the window a reader computes starts as close as
            // possible to the moment it asked; the watermark look-ups take round trips.
            let histograms: Vec<LagBuckets> = consumers
                .iter()
                .map(|c| c.progress.lag().snapshot())
                .collect();
            // Consumers share topics: each partition's watermarks are looked up once.
            let mut watermarks: HashMap<(String, i32), (i64, i64)> = HashMap::new();
            let mut out = Vec::with_capacity(consumers.len());
            for (consumer, lag_ms) in consumers.iter().zip(histograms) {
                let mut partitions = Vec::new();
                // A manually assigned consumer reports what it reads now: a cluster node's
                // partitions come and go, and one it gave away is another node's lag.
                let manual = matches!(
                    consumer.spec.assignment,
                    crate::consumer::Assignment::Manual(_)
                );
                let assigned = consumer.assigned();
                for (partition, next_offset) in consumer.progress.partitions() {
                    if manual && !assigned.contains(&partition) {
                        continue;
                    }
                    let key = (consumer.spec.topic.clone(), partition);
                    let (low, high) = match watermarks.get(&key) {
                        Some(known) => *known,
                        None => {
                            let fetched = client.fetch_watermarks(
                                &consumer.spec.topic,
                                partition,
                                Timeout::After(timeout),
                            )?;
                            watermarks.insert(key, fetched);
                            fetched
                        }
                    };
                    let applied_to = if next_offset < 0 { low } else { next_offset };
                    partitions.push(PartitionLag {
                        partition,
                        next_offset,
                        high_watermark: high,
                        lag_records: (high - applied_to).max(0),
                    });
                }
                partitions.sort_by_key(|p| p.partition);
                out.push(ConsumerLag {
                    name: consumer.spec.name.clone(),
                    topic: consumer.spec.topic.clone(),
                    lag_records: partitions.iter().map(|p| p.lag_records).sum(),
                    partitions,
                    lag_ms,
                    lag_bucket_bounds_ms: LAG_BUCKET_BOUNDS_MS.to_vec(),
                });
            }
            Ok(out)
        })
        .await
        .map_err(|e| JournalError::Config(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_lands_in_the_first_bucket_whose_bound_holds_it() {
        let h = LagHistogram::default();
        h.record(0);
        h.record(1);
        h.record(2);
        h.record(51);
        h.record(1_000_000);
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2, "0 and 1 ms are ≤ 1");
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[6], 1, "51 ms is in (50, 100]");
        assert_eq!(s.counts[BUCKETS - 1], 1, "above every bound");
        assert_eq!(s.max_ms, 1_000_000);
        assert_eq!(s.total(), 5);
    }

    #[test]
    fn quantiles_are_bucket_bounds_of_the_window() {
        let h = LagHistogram::default();
        for _ in 0..1000 {
            h.record(300);
        }
        let before = h.snapshot();
        for _ in 0..98 {
            h.record(3);
        }
        h.record(40);
        h.record(700);
        let window = h.snapshot().since(&before);
        assert_eq!(window.total(), 100);
        assert_eq!(window.quantile_bound_ms(500), Some(5));
        assert_eq!(window.quantile_bound_ms(990), Some(50));
        assert_eq!(window.quantile_bound_ms(1000), Some(1_000));
        assert_eq!(
            LagBuckets::since(&before, &before).quantile_bound_ms(500),
            None
        );
    }

    #[test]
    fn a_quantile_above_every_bound_is_unknown() {
        let h = LagHistogram::default();
        h.record(400_000);
        assert_eq!(h.snapshot().quantile_bound_ms(500), None);
    }
}
