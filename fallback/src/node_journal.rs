//! The node's side of the journal: what its payment actors append with, what the breaker,
//! the leases and the local consumers say about each partition, and the fallback. The
//! replayer and the delivery drive it; the actors' runtime holds it (and derefs to it).

use crate::{FallbackError, JournalFallback};
use kafka_journal::consumer::ConsumerProgress;
use kafka_journal::JournalProducer;
use payrail_supervisor::{Escalations, JournalHealth, PartitionOwnership, RestartPolicy};
use sqlx::PgPool;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// What a [`NodeJournal`] is built from.
pub struct NodeJournalParts {
    pub producer: JournalProducer,
    /// Restart intensity and backoff of every supervisor (`[supervisor.restart]`).
    pub restart: RestartPolicy,
    /// Where supervisors report give-ups (readiness, exit policy).
    pub escalations: Escalations,
    pub pool: PgPool,
    pub topic: String,
    pub partitions: u32,
    pub health: JournalHealth,
    /// The snapshot projector's progress.
    pub snapshots: ConsumerProgress,
    /// The fallback spool and its state per partition (DESIGN "Journal unavailable").
    pub fallback: JournalFallback,
    /// The partitions this node owns and their owner epochs.
    pub ownership: PartitionOwnership,
    /// Upper bound for reading a partition's end or waiting for the snapshot projector
    /// (`actors.rebuild_timeout_ms`).
    pub rebuild_timeout: Duration,
}

/// Shared by the node's actors, its replayer and its delivery.
pub struct NodeJournal {
    pub producer: JournalProducer,
    /// Restart intensity and backoff of every supervisor (`[supervisor.restart]`).
    pub restart: RestartPolicy,
    /// Where supervisors report give-ups (readiness, exit policy).
    pub escalations: Escalations,
    pub pool: PgPool,
    pub topic: String,
    pub partitions: u32,
    pub health: JournalHealth,
    pub snapshots: ConsumerProgress,
    pub fallback: JournalFallback,
    pub ownership: PartitionOwnership,
    rebuild_timeout: Duration,
    /// Per partition: one past the highest offset this node has journaled.
    produced: Vec<AtomicI64>,
    /// The pools of this node (besides the snapshot projector), whose progress bounds the
    /// journaled records kept for a fallback (see [`crate`]).
    pools: std::sync::RwLock<Vec<ConsumerProgress>>,
}

impl NodeJournal {
    pub fn new(parts: NodeJournalParts) -> Self {
        let partitions = parts.partitions;
        Self {
            producer: parts.producer,
            restart: parts.restart,
            escalations: parts.escalations,
            pool: parts.pool,
            topic: parts.topic,
            partitions,
            health: parts.health,
            snapshots: parts.snapshots,
            fallback: parts.fallback,
            ownership: parts.ownership,
            rebuild_timeout: parts.rebuild_timeout,
            produced: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            pools: std::sync::RwLock::new(Vec::new()),
        }
    }

    pub fn partition_of(&self, merchant_id: &str) -> i32 {
        kafka_journal::partition_for(merchant_id.as_bytes(), self.partitions)
    }

    pub fn record_produced(&self, partition: i32, offset: i64) {
        if let Some(slot) = self.produced.get(partition as usize) {
            slot.fetch_max(offset + 1, Ordering::AcqRel);
        }
    }

    /// Registers a pool of this node (see the `pools` field).
    pub fn register_pool(&self, progress: ConsumerProgress) {
        match self.pools.write() {
            Ok(mut pools) => pools.push(progress),
            Err(poisoned) => poisoned.into_inner().push(progress),
        }
    }

    /// The lowest next offset of `partition` among the snapshot projector and this node's
    /// pools (an unknown one, -1, counts as 0).
    pub fn applied_floor(&self, partition: i32) -> i64 {
        let pools = match self.pools.read() {
            Ok(pools) => pools,
            Err(poisoned) => poisoned.into_inner(),
        };
        pools
            .iter()
            .map(|p| p.next_offset(partition).max(0))
            .fold(self.snapshots.next_offset(partition).max(0), i64::min)
    }

    /// One past the highest offset this node has journaled to `partition`.
    pub fn produced_offset(&self, partition: i32) -> i64 {
        self.produced
            .get(partition as usize)
            .map(|s| s.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Puts `partition` in fallback (see [`crate`]); no-op when it is.
    pub async fn enter_fallback(&self, partition: i32) -> Result<(), FallbackError> {
        let epoch = self
            .ownership
            .epoch(partition)
            .ok_or(FallbackError::NotServed(partition))?;
        self.fallback
            .enter(
                partition,
                epoch,
                || self.produced_offset(partition),
                || self.snapshots.next_offset(partition),
                || self.applied_floor(partition),
                &self.pool,
            )
            .await
    }

    /// The partition's high watermark on the broker (one past its last record), bounded by
    /// `actors.rebuild_timeout_ms`.
    pub async fn journal_end(&self, partition: i32) -> Result<i64, kafka_journal::JournalError> {
        self.producer
            .high_watermark(&self.topic, partition, self.rebuild_timeout)
            .await
    }

    /// Waits (bounded by `actors.rebuild_timeout_ms`) until the snapshot projector has
    /// applied `partition` up to `next_offset`, so a snapshot read afterwards is complete.
    pub async fn snapshots_reached(&self, partition: i32, next_offset: i64) -> bool {
        self.snapshots
            .wait_for(partition, next_offset, self.rebuild_timeout)
            .await
    }
}
