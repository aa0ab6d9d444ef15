//! Journal fallback (DESIGN "Journal unavailable: fallback"): while the journal cannot take
//! a partition's events, its payment actors write them to the PostgreSQL spool before they
//! reply, and a replayer appends the spool to the journal in order when it returns.
//!
//! Per partition, a gate orders the two ways of persisting: a direct append holds the
//! gate shared; entering or leaving fallback holds it exclusively. So when a partition
//! enters fallback no direct append of it is in flight, the journal's end for it is
//! exactly what this node knows it produced, and no record of it reaches the journal
//! directly until its spool is empty again.
//!
//! Snapshots stay complete in fallback: the spool transaction also projects the spooled
//! events into `payment_snapshots` (and marks them applied for the snapshot projector,
//! which skips them when they come back through the journal). Entering fallback first
//! copies the records this node journaled that the projector has not applied yet (kept in
//! memory, bounded) into the spool and projects them too. A payment actor rebuilt in
//! fallback — after a passivation or a crash of the node — reads a complete snapshot.
//!
//! The pools are fed during the outage over HTTP ([`delivery`] sends, [`sink`] applies).
//! [`NodeJournal`] is the node's side of the journal the replayer and the delivery drive.
//!
//! It knows the journal (`kafka_journal`) and the supervisor's breaker, leases and restart
//! policy; it must not know the payment domain, the actors, the pools or HTTP. The snapshot
//! projection it keeps complete in the spool's transactions is handed to it as a
//! [`PartitionHandler`] (the actors' `SnapshotProjector`), and the pools are reached
//! through the [`SinkPool`]s the node registers.

pub mod delivery;
mod episode;
mod error;
pub mod node_journal;
mod replay;
pub mod sink;
mod writes;

pub use delivery::{spawn_delivery, DeliveryOptions, CLUSTER_SECRET_HEADER};
use error::inside_transaction;
pub use error::FallbackError;
pub use node_journal::{NodeJournal, NodeJournalParts};
pub use replay::{journal_start_marker, replay_left_spool, spawn_replayer};
pub use sink::{PoolSink, SinkPool};
use writes::{fence_epoch, fence_spool, project};

use kafka_journal::consumer::PartitionHandler;
use kafka_journal::producer::OutgoingRecord;
use kafka_journal::spool::{Spool, SpoolDepth, SpoolError};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{RwLock, RwLockReadGuard};
use tracing::info;

/// `[spool]` in config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolOptions {
    /// Rows the whole spool holds at most; past it commands get 503 `journal_unavailable`
    /// and nothing is recorded. 0 turns the fallback off: every command answers 503 while
    /// the journal is unavailable.
    pub max_rows: u64,
    /// Spooled records appended to the journal per replay append.
    pub replay_batch: u32,
    /// How often the replayer looks at the breaker and the spool (ms).
    pub replay_interval_ms: u64,
    /// Records journaled but not yet applied by the snapshot projector, kept in memory per
    /// partition so a partition entering fallback can complete its snapshots. A partition
    /// whose projector lagged by more cannot enter fallback (503 until the journal returns).
    pub unprojected_tail_max: usize,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            replay_batch: 100,
            replay_interval_ms: 200,
            unprojected_tail_max: 50_000,
        }
    }
}

impl SpoolOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_rows > 100_000_000 {
            return Err("spool.max_rows: allowed 0..=100000000 (0: no fallback)".into());
        }
        if !(1..=10_000).contains(&self.replay_batch) {
            return Err("spool.replay_batch: allowed 1..=10000".into());
        }
        if !(10..=60_000).contains(&self.replay_interval_ms) {
            return Err("spool.replay_interval_ms: allowed 10..=60000".into());
        }
        if !(1..=10_000_000).contains(&self.unprojected_tail_max) {
            return Err("spool.unprojected_tail_max: allowed 1..=10000000".into());
        }
        Ok(())
    }
}

/// Journaled records of one partition not yet applied by every local consumer.
struct UnprojectedTail {
    records: VecDeque<(i64, OutgoingRecord)>,
    /// The highest offset dropped from `records` before the projector applied it (-1).
    lost_through: i64,
    /// The highest offset dropped from `records` for any reason (-1): applied by every
    /// consumer registered then, or pushed out by the bound.
    dropped_through: i64,
    /// Every record journaled to the partition at or past this offset was pushed here
    /// (dropped ones aside): the journal's end when this node learnt it (at start, at a
    /// takeover's marker, or when a fallback it resumed at start ended). Before that the
    /// tail holds only part of the journal — a previous process's or owner's records are
    /// not in it. `None`: not known (resumed in fallback at start).
    complete_from: Option<i64>,
}

impl UnprojectedTail {
    fn new() -> Self {
        Self {
            records: VecDeque::new(),
            lost_through: -1,
            dropped_through: -1,
            complete_from: None,
        }
    }

    /// The lowest offset from which the tail holds every journaled record still needed:
    /// a consumer at or past it finds all it lacks below the journal's end here.
    fn complete_from(&self) -> Option<i64> {
        self.complete_from
            .map(|from| from.max(self.dropped_through + 1))
    }
}

struct PartitionFallback {
    gate: RwLock<()>,
    active: AtomicBool,
    /// The journal's end is known to this node (read at start, or the partition was in
    /// fallback then), so its produced offset bounds the journal.
    end_known: AtomicBool,
    tail: Mutex<UnprojectedTail>,
}

/// The node's fallback state: one entry per partition, the spool, and counters for
/// operators. Shared through the [`NodeJournal`].
pub struct JournalFallback {
    spool: Spool,
    /// The snapshot projector's consumer name (namespaced), under which spooled events
    /// are marked applied.
    snapshot_consumer: String,
    /// The snapshot projection, applied to spooled events in the spool's transaction.
    projection: Arc<dyn PartitionHandler>,
    options: SpoolOptions,
    partitions: Vec<PartitionFallback>,
    spooled_total: AtomicU64,
    replayed_total: AtomicU64,
}

/// Held while persisting to a partition; see the module docs.
pub struct PersistGate<'a> {
    _guard: RwLockReadGuard<'a, ()>,
    /// The partition was in fallback when the gate was taken (events go to the spool).
    pub spooling: bool,
}

impl JournalFallback {
    pub fn new(
        spool: Spool,
        snapshot_consumer: String,
        projection: Arc<dyn PartitionHandler>,
        options: SpoolOptions,
        partitions: u32,
    ) -> Self {
        Self {
            spool,
            snapshot_consumer,
            projection,
            options,
            partitions: (0..partitions)
                .map(|_| PartitionFallback {
                    gate: RwLock::new(()),
                    active: AtomicBool::new(false),
                    end_known: AtomicBool::new(false),
                    tail: Mutex::new(UnprojectedTail::new()),
                })
                .collect(),
            spooled_total: AtomicU64::new(0),
            replayed_total: AtomicU64::new(0),
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    pub fn options(&self) -> &SpoolOptions {
        &self.options
    }

    /// Off with `spool.max_rows = 0`: an outage then means 503 for every command.
    pub fn is_enabled(&self) -> bool {
        self.options.max_rows > 0
    }

    fn partition(&self, partition: i32) -> &PartitionFallback {
        let slot = self.partitions.get(partition as usize);
        assert!(slot.is_some(), "partition {partition} out of range");
        match slot {
            Some(slot) => slot,
            None => unreachable!(),
        }
    }

    /// Whether `partition`'s events currently go to the spool.
    pub fn is_active(&self, partition: i32) -> bool {
        self.partition(partition).active.load(Ordering::Acquire)
    }

    /// Partitions in fallback now.
    pub fn active_partitions(&self) -> Vec<i32> {
        (0..self.partitions.len() as i32)
            .filter(|p| self.is_active(*p))
            .collect()
    }

    pub fn is_end_known(&self, partition: i32) -> bool {
        self.partition(partition).end_known.load(Ordering::Acquire)
    }

    /// The journal's end of `partition` is known: `end` (read at start, or one past a
    /// takeover's marker). Every record journaled from `end` on is this node's and enters
    /// the tail, so the tail is complete from there (issue 22, defect 1).
    pub fn mark_end_known(&self, partition: i32, end: i64) {
        let slot = self.partition(partition);
        let mut tail = lock_tail(slot);
        tail.complete_from = Some(end);
        slot.end_known.store(true, Ordering::Release);
    }

    /// At start: `partition` was left in fallback (its spool is authoritative). The tail
    /// is complete from nowhere until that fallback ends.
    pub fn resume_active(&self, partition: i32) {
        let slot = self.partition(partition);
        lock_tail(slot).complete_from = None;
        slot.end_known.store(true, Ordering::Release);
        slot.active.store(true, Ordering::Release);
    }

    pub fn spooled_total(&self) -> u64 {
        self.spooled_total.load(Ordering::Relaxed)
    }

    pub fn replayed_total(&self) -> u64 {
        self.replayed_total.load(Ordering::Relaxed)
    }

    /// Takes `partition`'s gate for one persist.
    pub async fn gate(&self, partition: i32) -> PersistGate<'_> {
        let slot = self.partition(partition);
        let guard = slot.gate.read().await;
        PersistGate {
            spooling: slot.active.load(Ordering::Acquire),
            _guard: guard,
        }
    }

    /// Remembers records the journal acknowledged at `offsets`, until every local consumer
    /// has applied them (`applied_floor`: the lowest next offset among the snapshot
    /// projector and the pools of this node, for the partition).
    pub fn journaled(
        &self,
        partition: i32,
        records: Vec<OutgoingRecord>,
        offsets: &[i64],
        applied_floor: i64,
    ) {
        debug_assert_eq!(records.len(), offsets.len());
        let mut tail = lock_tail(self.partition(partition));
        // Roughly in offset order (acknowledgement order): trimming from the front may keep
        // a few applied records longer, never drops an unapplied one.
        while let Some(offset) = tail
            .records
            .front()
            .map(|(offset, _)| *offset)
            .filter(|offset| *offset < applied_floor)
        {
            tail.records.pop_front();
            // Applied by every consumer registered now; one that registers later (or
            // whose position is unknown) must not count on the tail below it.
            tail.dropped_through = tail.dropped_through.max(offset);
        }
        for (record, offset) in records.into_iter().zip(offsets) {
            tail.records.push_back((*offset, record));
        }
        while tail.records.len() > self.options.unprojected_tail_max {
            if let Some((offset, _)) = tail.records.pop_front() {
                // Lost for whoever has not applied it; only the snapshot projector's loss
                // stops a fallback (checked on entry), a pool's only delays it.
                tail.lost_through = tail.lost_through.max(offset);
                tail.dropped_through = tail.dropped_through.max(offset);
            }
        }
    }

    /// Spools `records` of `partition` (in fallback, under its gate) and projects them into
    /// the snapshots, in one transaction.
    pub async fn append(
        &self,
        gate: &PersistGate<'_>,
        partition: i32,
        records: &[OutgoingRecord],
        pool: &sqlx::PgPool,
    ) -> Result<(), FallbackError> {
        debug_assert!(gate.spooling, "spooled only in fallback, under the gate");
        let mut tx = pool.begin().await.map_err(SpoolError::from)?;
        let written = async {
            fence_spool(&mut tx, partition, records).await?;
            // Projected first: the spool append locks the partition's fallback row (its
            // sequence) until the commit, serialising the partition's writers; the
            // projection touches only this payment's rows and need not run under that lock.
            project(
                &mut tx,
                &self.snapshot_consumer,
                self.projection.as_ref(),
                records,
            )
            .await?;
            self.spool
                .append_in(&mut tx, partition, records, None)
                .await?;
            tx.commit().await.map_err(SpoolError::from)?;
            Ok(())
        }
        .await;
        written.map_err(inside_transaction)?;
        self.spooled_total
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Ends `partition`'s fallback if its spool is empty (under the gate, so no persist
    /// is in flight); returns whether it is out of fallback. The fallback row is removed
    /// even when this node never entered that fallback: a previous owner that died or lost
    /// the partition during an outage leaves its row behind, and a new owner must not
    /// inherit its watermark (nor show the partition in fallback forever).
    ///
    /// `journal_end` (one past the last record this node journaled) is where the tail
    /// becomes complete if it was not (a fallback resumed at start): from here on every
    /// record journaled to the partition is a direct append of this node's.
    pub async fn leave_if_empty(
        &self,
        partition: i32,
        journal_end: impl FnOnce() -> i64,
    ) -> Result<bool, SpoolError> {
        let slot = self.partition(partition);
        let _exclusive = slot.gate.write().await;
        if !self.spool.finish_if_empty(partition).await? {
            return Ok(false);
        }
        {
            let mut tail = lock_tail(slot);
            if tail.complete_from.is_none() {
                tail.complete_from = Some(journal_end());
            }
        }
        if slot.active.swap(false, Ordering::AcqRel) {
            info!(
                partition,
                "partition left journal fallback (spool replayed)"
            );
        }
        Ok(true)
    }

    /// Removes `partition`'s rows through `sequence`, journaled by this node under `epoch`
    /// (the journal's end after them is `journal_end`) — only while the lease still holds
    /// `epoch`. A replayer whose lease moved while its batch was in flight journaled copies
    /// under a superseded epoch, which readers fence (or a takeover in fallback voided):
    /// the rows must stay for the new owner, who journals them again under its own epoch.
    pub async fn mark_replayed(
        &self,
        partition: i32,
        epoch: u64,
        sequence: i64,
        journal_end: i64,
        pool: &sqlx::PgPool,
    ) -> Result<(), FallbackError> {
        let mut tx = pool.begin().await.map_err(SpoolError::from)?;
        fence_epoch(&mut tx, partition, epoch).await?;
        self.spool
            .mark_replayed_in(&mut tx, partition, sequence, journal_end)
            .await?;
        tx.commit().await.map_err(SpoolError::from)?;
        Ok(())
    }

    pub(crate) fn count_replayed(&self, n: u64) {
        self.replayed_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Partitions in fallback with their spool depth (operators' view).
    pub async fn depths(&self) -> Result<Vec<SpoolDepth>, SpoolError> {
        self.spool.depths().await
    }
}

fn lock_tail(slot: &PartitionFallback) -> std::sync::MutexGuard<'_, UnprojectedTail> {
    match slot.tail.lock() {
        Ok(tail) => tail,
        Err(poisoned) => poisoned.into_inner(),
    }
}
