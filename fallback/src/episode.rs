//! Starting an episode: a partition enters fallback ([`JournalFallback::enter`]), or a new
//! owner takes over one a previous owner left ([`JournalFallback::take_over`]).

use super::error::{inside_transaction, FallbackError};
use super::writes::{fence_epoch, project};
use super::{lock_tail, JournalFallback, PartitionFallback};
use kafka_journal::producer::OutgoingRecord;
use kafka_journal::spool::SpoolError;
use std::sync::atomic::Ordering;
use tracing::info;

impl JournalFallback {
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
            project(
                &mut tx,
                &self.snapshot_consumer,
                self.projection.as_ref(),
                &own,
            )
            .await?;
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
}
