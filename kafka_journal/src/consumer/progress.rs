//! How far a consumer has applied each partition, for readiness, the fallback and tests.

use crate::lag::LagHistogram;
use crate::record::ConsumedRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How far each partition has been applied (next offset), for readiness and tests.
#[derive(Clone, Default)]
pub struct ConsumerProgress {
    partitions: Arc<Mutex<HashMap<i32, watch::Sender<i64>>>>,
    lag: Arc<LagHistogram>,
}

impl ConsumerProgress {
    fn sender(&self, partition: i32) -> watch::Sender<i64> {
        let mut map = match self.partitions.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(partition)
            .or_insert_with(|| watch::channel(-1).0)
            .clone()
    }

    /// Records that everything before `next_offset` is applied.
    pub fn publish(&self, partition: i32, next_offset: i64) {
        self.sender(partition).send_if_modified(|current| {
            if next_offset > *current {
                *current = next_offset;
                true
            } else {
                false
            }
        });
    }

    /// Every partition this consumer has worked on, with its next offset (-1 unknown).
    pub fn partitions(&self) -> Vec<(i32, i64)> {
        let map = match self.partitions.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(p, tx)| (*p, *tx.borrow())).collect()
    }

    /// Append-to-apply delays of the records applied since start.
    pub fn lag(&self) -> &LagHistogram {
        &self.lag
    }

    /// Counts `records`, just applied, in the lag histogram and in the partition's
    /// `payrail_consumer_apply_delay_seconds` histogram.
    pub(super) fn record_applied(
        &self,
        records: &[ConsumedRecord],
        apply_delay: &metrics::Histogram,
    ) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for record in records {
            if let Some(at) = record.timestamp_ms.filter(|t| *t > 0) {
                let delay_ms = now_ms.saturating_sub(at).max(0) as u64;
                self.lag.record(delay_ms);
                apply_delay.record(delay_ms as f64 / 1000.0);
            }
        }
    }

    /// The next offset to apply, or -1 when unknown yet.
    pub fn next_offset(&self, partition: i32) -> i64 {
        *self.sender(partition).borrow()
    }

    /// Waits until `partition` has applied everything before `next_offset`.
    pub async fn wait_for(&self, partition: i32, next_offset: i64, timeout: Duration) -> bool {
        let mut rx = self.sender(partition).subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= next_offset))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
}
