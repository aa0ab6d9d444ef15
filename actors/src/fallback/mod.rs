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

pub mod delivery;
mod replay;
pub mod sink;

pub use delivery::{spawn_delivery, DeliveryOptions, CLUSTER_SECRET_HEADER};
pub use replay::{journal_start_marker, replay_left_spool, spawn_replayer};
pub use sink::{PoolSink, SinkPool};

use crate::snapshots::SnapshotProjector;
use kafka_journal::consumer::{ConsumedRecord, PartitionHandler};
use kafka_journal::producer::OutgoingRecord;
use kafka_journal::spool::{Spool, SpoolDepth, SpoolError};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::{RwLock, RwLockReadGuard};
use tracing::{info, warn};
use uuid::Uuid;

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

/// Why a partition cannot take events in fallback now.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("the journal fallback is off (spool.max_rows = 0)")]
    Disabled,
    #[error("the journal's end for partition {0} is not known yet (the node started while the journal was unavailable)")]
    EndUnknown(i32),
    #[error("partition {0}: the snapshot projector lagged by more than spool.unprojected_tail_max records when the journal failed")]
    TailLost(i32),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("projecting spooled events: {0}")]
    Projection(String),
    #[error("partition {partition}: the lease of epoch {epoch} was taken over; nothing spooled")]
    Superseded { partition: i32, epoch: u64 },
    /// This node does not serve the partition (any more): it must not spool for it.
    #[error("partition {0} is not served by this node; nothing spooled")]
    NotServed(i32),
    /// The spool transaction failed after it began: PostgreSQL may have committed it (a
    /// connection cut after COMMIT reached the server) or not. The caller must treat what
    /// it tried to write as possibly written.
    #[error("the spool write's outcome is unknown: {0}")]
    OutcomeUnknown(String),
}

impl FallbackError {
    /// Whether nothing was written for sure (the write was refused, or never began). Every
    /// other failure happened inside a transaction that may have committed.
    pub fn nothing_written(&self) -> bool {
        !matches!(self, FallbackError::OutcomeUnknown(_))
    }
}

/// Maps a failure inside a begun spool transaction: refusals decided before anything was
/// sent (a full spool, a moved lease, a record without an event id) stay definite; anything
/// else (a query or the COMMIT failing, a projection error) may have been committed.
fn inside_transaction(error: FallbackError) -> FallbackError {
    match error {
        FallbackError::Spool(SpoolError::Full(_))
        | FallbackError::Spool(SpoolError::MissingEventId)
        | FallbackError::Superseded { .. }
        | FallbackError::NotServed(_)
        | FallbackError::OutcomeUnknown(_) => error,
        other => FallbackError::OutcomeUnknown(other.to_string()),
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
/// operators. Shared through the [`crate::runtime::Runtime`].
pub struct JournalFallback {
    spool: Spool,
    /// The snapshot projector's consumer name (namespaced), under which spooled events
    /// are marked applied.
    snapshot_consumer: String,
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
        options: SpoolOptions,
        partitions: u32,
    ) -> Self {
        Self {
            spool,
            snapshot_consumer,
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

    /// Puts `partition` in fallback (no-op when it is): waits for its direct appends in
    /// flight, records the journal's end (`journal_end`, read under the gate), copies the
    /// records not yet applied by every local consumer into the spool (with their journal
    /// offsets) and projects them into the snapshots. Refused when the snapshot projector
    /// lagged by more than the tail kept in memory.
    ///
    /// `epoch` is the lease this node serves the partition under (0: records from before epochs, or a test's). Like a
    /// spool append, the entry is fenced by it (`fence_epoch`), and only records written
    /// under it are projected: a paused owner resuming after a takeover must not copy its
    /// fenced records into the snapshots and idempotency keys (issue 22, defect 3) — a
    /// phantom 201 at the new owner on the client's retry.
    pub async fn enter(
        &self,
        partition: i32,
        epoch: u64,
        journal_end: impl FnOnce() -> i64,
        projected_next: impl FnOnce() -> i64,
        applied_floor: impl FnOnce() -> i64,
        pool: &sqlx::PgPool,
    ) -> Result<(), FallbackError> {
        if !self.is_enabled() {
            return Err(FallbackError::Disabled);
        }
        let slot = self.partition(partition);
        let _exclusive = slot.gate.write().await;
        if slot.active.load(Ordering::Acquire) {
            return Ok(());
        }
        if !slot.end_known.load(Ordering::Acquire) {
            return Err(FallbackError::EndUnknown(partition));
        }
        let end = journal_end();
        let projected = projected_next();
        let floor = applied_floor().min(projected);
        let (tail_lost, complete_from) = {
            let tail = lock_tail(slot);
            (
                tail.lost_through >= projected || projected < 0,
                tail.complete_from(),
            )
        };
        if tail_lost {
            return Err(FallbackError::TailLost(partition));
        }
        // What the spool promises a pool (issue 22, defect 1): from this offset on, every
        // journal record below `end` is among the copies. A pool behind it (it lagged past
        // the tail's bound, the node restarted or took the partition over while it was
        // behind, its position is unknown) takes copies only at its exact next offset and
        // otherwise waits for the journal; it never skips what it has not applied.
        let copied_from = complete_from.map(|from| from.max(floor));
        let mut tx = pool.begin().await.map_err(SpoolError::from)?;
        let copied = async {
            fence_epoch(&mut tx, partition, epoch).await?;
            // An earlier entry whose COMMIT answer was lost may have landed: its fallback
            // row and copied records are there. Adopt that episode (copying only what was
            // journaled after its watermark) instead of copying the same event ids again,
            // which the spool's unique event id would refuse on every later try.
            let earlier = self.spool.lock_episode_in(&mut tx, partition).await?;
            let from = match earlier {
                Some(watermark) => floor.max(watermark.unwrap_or(floor)),
                None => floor,
            };
            let (offsets, tail) = self.copy_tail(slot, from, end);
            self.spool
                .append_journaled_in(&mut tx, partition, &tail, &offsets, Some(end), copied_from)
                .await?;
            if earlier.is_some() {
                self.spool
                    .raise_watermark_in(&mut tx, partition, end, copied_from)
                    .await?;
            }
            // Records of an earlier epoch of this node's were projected before it took the
            // partition back (a takeover waits for the snapshots to pass its marker); any
            // written after that marker are fenced and must take effect nowhere.
            let own: Vec<OutgoingRecord> = tail
                .iter()
                .filter(|r| r.headers.owner_epoch == epoch)
                .cloned()
                .collect();
            project(&mut tx, &self.snapshot_consumer, &own).await?;
            tx.commit().await.map_err(SpoolError::from)?;
            Ok((tail.len(), earlier.is_some()))
        }
        .await;
        let (copied, adopted) = copied.map_err(inside_transaction)?;
        slot.active.store(true, Ordering::Release);
        info!(
            partition,
            journal_end = end,
            journaled_copied = copied,
            adopted_earlier_entry = adopted,
            "partition entered journal fallback"
        );
        Ok(())
    }

    /// Takes `partition` over at `epoch` while the journal is unavailable (issue 22, defect
    /// 6). Possible only when the previous owner left the partition in fallback: its
    /// snapshots are then complete — everything journaled below the episode's watermark
    /// was projected when it entered, everything spooled since with its spool write — so
    /// the new owner needs neither the journal's end nor a catch-up. Spools `marker` (the
    /// owner-change marker of `epoch`) after the previous owner's rows, fenced by the lease
    /// like any spool write, and resumes the episode as this node's: when the journal
    /// returns, the replay appends the previous owner's acknowledged records, then the
    /// marker, then this owner's — all under this owner's epoch (the replay re-stamps
    /// them) — and every reader ignores what older epochs wrote from the episode's end on
    /// ([`kafka_journal::fence::VoidFences`], written in the same transaction): a write the
    /// previous owner left in doubt on a hung broker takes effect nowhere, wherever it
    /// lands.
    ///
    /// Returns one past the last journal offset the episode accounts for (its watermark,
    /// or the end of what was replayed of it), or `Ok(None)` when the partition is not in
    /// fallback (its journal's end is then unknown) or a reader already went past that end
    /// (the journal is back): the takeover must then wait for the journal. A failure after BEGIN may have spooled the marker; a retry spools another
    /// (with its own event id), which readers treat as the same fence.
    pub async fn take_over(
        &self,
        partition: i32,
        epoch: u64,
        marker: &OutgoingRecord,
        pool: &sqlx::PgPool,
    ) -> Result<Option<i64>, FallbackError> {
        assert!(epoch > 0, "a takeover raises a lease epoch");
        assert_eq!(
            marker.headers.owner_epoch, epoch,
            "the marker carries its epoch"
        );
        if !self.is_enabled() {
            return Err(FallbackError::Disabled);
        }
        let slot = self.partition(partition);
        let _exclusive = slot.gate.write().await;
        let mut tx = pool.begin().await.map_err(SpoolError::from)?;
        let taken = async {
            fence_epoch(&mut tx, partition, epoch).await?;
            let Some(watermark) = self.spool.lock_episode_in(&mut tx, partition).await? else {
                return Ok(None);
            };
            let replayed: Option<Option<i64>> = sqlx::query_scalar(
                "SELECT replayed_end FROM journal_fallback WHERE topic = $1 AND partition = $2",
            )
            .bind(self.spool.topic())
            .bind(partition)
            .fetch_optional(&mut *tx)
            .await
            .map_err(SpoolError::from)?;
            let end = watermark.unwrap_or(0).max(replayed.flatten().unwrap_or(0));
            // The marker reaches the journal only with the replay: a write the previous
            // owner left in doubt on a hung broker could land before it, beside a command
            // this owner decides without it. Void the older epochs from `end` on, for every
            // reader — unless one already read past `end` (the broker is back): then the
            // journal's way is the safe one.
            if !kafka_journal::offsets::void_from(
                &mut tx,
                self.spool.topic(),
                partition,
                epoch,
                end,
            )
            .await
            .map_err(SpoolError::from)?
            {
                info!(
                    partition,
                    epoch,
                    journal_end = end,
                    "a reader is past the episode's end; the takeover waits for the journal"
                );
                return Ok(None);
            }
            self.spool
                .append_in(&mut tx, partition, std::slice::from_ref(marker), None)
                .await?;
            tx.commit().await.map_err(SpoolError::from)?;
            Ok(Some(end))
        }
        .await;
        let end = taken.map_err(inside_transaction)?;
        if end.is_some() {
            // The tail is complete from nowhere: the previous owner's records are not in
            // it. It becomes complete when this fallback ends (`leave_if_empty`).
            lock_tail(slot).complete_from = None;
            slot.end_known.store(true, Ordering::Release);
            slot.active.store(true, Ordering::Release);
            info!(
                partition,
                epoch,
                journal_end = end,
                "partition taken over in journal fallback (marker spooled)"
            );
        }
        Ok(end)
    }

    /// The tail's records journaled at offsets in `from..end`, in offset order.
    fn copy_tail(
        &self,
        slot: &PartitionFallback,
        from: i64,
        end: i64,
    ) -> (Vec<i64>, Vec<OutgoingRecord>) {
        let tail = lock_tail(slot);
        // Pushed in acknowledgement order, which concurrent appends make differ from
        // offset order: copied in offset order, as a pool applies them.
        let mut copied: Vec<(i64, OutgoingRecord)> = tail
            .records
            .iter()
            .filter(|(offset, _)| *offset >= from && *offset < end)
            .map(|(offset, record)| (*offset, record.clone()))
            .collect();
        copied.sort_by_key(|(offset, _)| *offset);
        copied.into_iter().unzip()
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
            project(&mut tx, &self.snapshot_consumer, records).await?;
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

/// A cluster node spools only under the lease its records carry: the lease row is read
/// `FOR KEY SHARE` in the spool transaction, so a new owner's acquire (which locks the row
/// `FOR UPDATE` before raising the epoch) waits for this commit and then finds these rows
/// in the spool it replays before its marker, or this transaction sees the raised epoch
/// and writes nothing — no spooled row and, above all, no snapshot from a node that lost
/// the partition. `KEY SHARE`, not `SHARE`: the owner's own renewal (`NO KEY UPDATE`)
/// must not queue behind its spool traffic, or a busy spool would cost it every lease in
/// the middle of an outage (issue 22, defect 7). A single node's records carry the epoch
/// it raised in the same table at start, so a second node started by mistake on the same
/// database fences the first one's spool writes. Epoch 0 has no lease row to check.
async fn fence_spool(
    tx: &mut sqlx::PgConnection,
    partition: i32,
    records: &[OutgoingRecord],
) -> Result<(), FallbackError> {
    let epoch = records.first().map_or(0, |r| r.headers.owner_epoch);
    debug_assert!(records.iter().all(|r| r.headers.owner_epoch == epoch));
    fence_epoch(tx, partition, epoch).await
}

/// The lease check of [`fence_spool`] for `epoch` (0: no lease row to check — records written before a single node raised its epochs, or by tests).
async fn fence_epoch(
    tx: &mut sqlx::PgConnection,
    partition: i32,
    epoch: u64,
) -> Result<(), FallbackError> {
    if epoch == 0 {
        return Ok(());
    }
    let current: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM partition_leases WHERE partition = $1 FOR KEY SHARE")
            .bind(partition)
            .fetch_optional(&mut *tx)
            .await
            .map_err(SpoolError::from)?;
    if current.and_then(|e| u64::try_from(e).ok()) != Some(epoch) {
        warn!(
            partition,
            epoch,
            ?current,
            "spool append refused: the lease moved"
        );
        return Err(FallbackError::Superseded { partition, epoch });
    }
    Ok(())
}

/// The consumed form of an outgoing record (no offset yet), for projecting it.
pub fn as_consumed(record: &OutgoingRecord) -> ConsumedRecord {
    ConsumedRecord {
        topic: record.topic.clone(),
        partition: record.partition,
        offset: -1,
        key: Some(record.key.as_bytes().to_vec()),
        event_type: Some(record.headers.event_type.clone()),
        event_id: Uuid::parse_str(&record.headers.event_id).ok(),
        content_type: Some(record.headers.content_type.clone()),
        value: record.value.clone(),
        timestamp_ms: None,
        owner_epoch: record.headers.owner_epoch,
    }
}

/// Applies `records` to the snapshots in the caller's transaction, each once (marked
/// applied for the snapshot projector, which then skips its journal copy).
async fn project(
    conn: &mut sqlx::PgConnection,
    consumer: &str,
    records: &[OutgoingRecord],
) -> Result<(), FallbackError> {
    if records.is_empty() {
        return Ok(());
    }
    let consumed: Vec<ConsumedRecord> = records.iter().map(as_consumed).collect();
    let ids: Vec<Uuid> = consumed.iter().filter_map(|r| r.event_id).collect();
    let mut fresh = kafka_journal::offsets::mark_processed_batch(conn, consumer, &ids)
        .await
        .map_err(SpoolError::from)?;
    let to_apply: Vec<&ConsumedRecord> = consumed
        .iter()
        .filter(|r| r.event_id.is_some_and(|id| fresh.remove(&id)))
        .collect();
    if to_apply.is_empty() {
        return Ok(());
    }
    SnapshotProjector
        .apply_batch(conn, &to_apply)
        .await
        .map_err(|e| {
            warn!(error = %e, "projecting spooled events failed");
            FallbackError::Projection(e.to_string())
        })
}
