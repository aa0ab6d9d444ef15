//! The replayer: one supervised task per node that
//! - puts every owned partition in fallback while the breaker is not closed, so a node
//!   killed during an outage restarts with every partition's journal end on record;
//! - appends each partition's spool to the journal in spool order when the breaker lets
//!   it (its appends are the half-open probes), removing rows only after the broker
//!   acknowledged them, and takes the partition out of fallback when its spool is empty;
//! - learns the journal's end of partitions the node started without (journal down at
//!   start) once the journal answers again.

use crate::NodeJournal;
use kafka_journal::producer::OutgoingRecord;
use payrail_supervisor::{Admission, BreakerState};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Appends in flight are abandoned at most this often (see `replay_forever`).
const ABANDON_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// Starts the replayer for the partitions the node owns (read on every round: a cluster
/// node's change with its leases) under the node's restart policy.
pub fn spawn_replayer(node: Arc<NodeJournal>) -> JoinHandle<()> {
    let restart = node.restart;
    let escalations = node.escalations.clone();
    payrail_supervisor::supervise_task("spool_replayer", restart, escalations, move || {
        replay_forever(node.clone())
    })
}

async fn replay_forever(node: Arc<NodeJournal>) {
    let interval = Duration::from_millis(node.fallback.options().replay_interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_closed = true;
    let mut abandoned_at: Option<std::time::Instant> = None;
    // A single node's partitions whose start marker this loop journaled.
    let mut marked: HashSet<i32> = HashSet::new();
    loop {
        tick.tick().await;
        let closed = node.health.state() == BreakerState::Closed;
        // Once per outage: during a recovery the breaker flaps, and a producer replaced
        // again and again never gets its producer id from a broker that just restarted.
        let recently = abandoned_at.is_some_and(|at| at.elapsed() < ABANDON_AT_MOST_EVERY);
        if was_closed && !closed && node.fallback.is_enabled() && !recently {
            abandoned_at = Some(std::time::Instant::now());
            // Appends already sent to the failed journal would hold their commands (and the
            // switch of their partitions to the spool) until their timeout; fail them now.
            info!("journal breaker open: abandoning the appends in flight");
            node.producer.abandon_in_flight();
        }
        was_closed = closed;
        let partitions = node.ownership.owned();
        if !closed && node.fallback.is_enabled() {
            for &partition in &partitions {
                if !node.fallback.is_active(partition) {
                    if let Err(error) = node.enter_fallback(partition).await {
                        warn!(partition, %error, "cannot put the partition in fallback");
                    }
                }
            }
        }
        for &partition in &partitions {
            if !node.fallback.is_end_known(partition) {
                learn_journal_end(&node, partition, &mut marked).await;
            }
            // Read again: the round's list is as old as the round, and a partition handed
            // over meanwhile is the new owner's to replay, under its epoch.
            if let Some(epoch) = node.ownership.epoch(partition) {
                if node.fallback.is_active(partition) {
                    replay_partition(&node, partition, epoch).await;
                }
            }
        }
    }
}

/// Appends `partition`'s spool under `epoch` (this node's lease on it) while the breaker
/// admits appends; leaves fallback when the spool is empty.
async fn replay_partition(node: &NodeJournal, partition: i32, epoch: u64) {
    let fallback = &node.fallback;
    let batch = i64::from(fallback.options().replay_batch);
    loop {
        let pending = match fallback.spool().pending(partition, batch).await {
            Ok(pending) => pending,
            Err(error) => {
                warn!(partition, %error, "reading the spool failed");
                return;
            }
        };
        let Some(last) = pending.last().map(|r| r.sequence) else {
            if node.health.state() == BreakerState::Closed {
                // Leave only once the snapshot projector has applied the journal up to its
                // end. In fallback the snapshots are complete by construction; outside it a
                // command waits for the projector (`ensure_history_readable`), whose
                // consumer reconnects to a returned broker seconds after the producer: two
                // creates once waited `actors.rebuild_timeout_ms` for it and answered 503
                // `node_not_ready` (issue 22, the outage suite at full size). Waits one
                // replay interval at most and tries again on the next tick; commands
                // meanwhile are spooled and answered.
                let end = node.produced_offset(partition);
                let wait = Duration::from_millis(fallback.options().replay_interval_ms);
                if !node.snapshots.wait_for(partition, end, wait).await {
                    debug!(
                        partition,
                        journal_end = end,
                        "leaving fallback waits for the snapshot projector"
                    );
                    return;
                }
                match fallback
                    .leave_if_empty(partition, || node.produced_offset(partition))
                    .await
                {
                    Ok(_) => {}
                    Err(error) => warn!(partition, %error, "ending the fallback failed"),
                }
            }
            return;
        };
        if node.health.admit() == Admission::Refused {
            return;
        }
        // Journaled under this owner's epoch: a previous owner's acknowledged records and
        // markers spooled before a takeover in fallback would otherwise fall in the range
        // the takeover voided for that owner's writes in doubt (`JournalFallback::take_over`).
        // Their event ids stay, so a reader that applied a first copy skips them.
        let records: Vec<OutgoingRecord> = pending
            .into_iter()
            .map(|r| restamped(r.record, epoch))
            .collect();
        match node.producer.append(&records).await {
            Ok(receipts) => {
                node.health.record_success();
                for receipt in &receipts {
                    node.record_produced(receipt.partition, receipt.offset);
                }
                let count = records.len() as u64;
                // Kept like any journaled record until the local consumers applied them, so
                // a pool still behind them can catch up from the spool if the journal fails
                // again right away.
                let offsets: Vec<i64> = receipts.iter().map(|r| r.offset).collect();
                let end = offsets.iter().max().map(|o| o + 1).unwrap_or(0);
                fallback.journaled(partition, records, &offsets, node.applied_floor(partition));
                // Removed only now: a crash before this appends them again, with the same
                // event ids, which every reader ignores. The journal's end is recorded with
                // the removal: HTTP delivery holds later spooled events until a pool has
                // applied the journal up to it (the removed rows come first).
                if let Err(error) = fallback
                    .mark_replayed(partition, epoch, last, end, &node.pool)
                    .await
                {
                    warn!(partition, %error, "removing replayed rows failed; they will be appended again");
                    return;
                }
                fallback.count_replayed(count);
                info!(
                    partition,
                    records = count,
                    through = last,
                    "spool replayed into the journal"
                );
            }
            Err(error) => {
                // A failed probe of an outage is the breaker's news (it logs the outage's
                // start and end); a failure while the breaker was closed is worth a line.
                if node.health.state() == BreakerState::Closed {
                    warn!(partition, %error, "replaying the spool failed; retrying later");
                } else {
                    debug!(partition, %error, "replaying the spool failed; retrying later");
                }
                node.health.record_failure();
                return;
            }
        }
    }
}

/// `record` as this owner journals it: under `epoch` when it was written under an older one.
fn restamped(mut record: OutgoingRecord, epoch: u64) -> OutgoingRecord {
    record.headers.owner_epoch = record.headers.owner_epoch.max(epoch);
    record
}

/// For a partition whose journal end was unknown at start: reads it and waits for the
/// snapshot projector to reach it, then records it as produced. A single node first
/// journals its start marker (once; `marked` remembers it).
async fn learn_journal_end(node: &NodeJournal, partition: i32, marked: &mut HashSet<i32>) {
    if !node.ownership.is_leased() && !marked.contains(&partition) {
        match journal_start_marker(node, partition).await {
            Ok(_) => {
                marked.insert(partition);
            }
            Err(error) => {
                debug!(partition, %error, "the start marker is not journaled yet");
                return;
            }
        }
    }
    let Ok(end) = node.journal_end(partition).await else {
        return;
    };
    if node.snapshots_reached(partition, end).await {
        if end > 0 {
            node.record_produced(partition, end - 1);
        }
        node.fallback.mark_end_known(partition, end);
        info!(
            partition,
            journal_end = end,
            "journal end learnt; partition serves"
        );
    }
}

/// A takeover's first step through the journal: appends the spool a previous owner of
/// `partition` left (it died or lost its lease during a journal outage) to the journal, in
/// spool order, before the new owner writes anything; those commands were acknowledged.
/// One attempt: returns whether the spool is empty and its fallback row gone (also at once
/// when there was none). While the journal is unavailable the caller may take the
/// partition over through the spool instead ([`crate::JournalFallback::take_over`]).
/// Journaled under `epoch`, the lease the caller just acquired (not yet granted).
pub async fn replay_left_spool(node: &NodeJournal, partition: i32, epoch: u64) -> bool {
    match node.fallback.spool().pending(partition, 1).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(_) => {
            info!(partition, "replaying the spool the previous owner left");
            replay_partition(node, partition, epoch).await;
        }
        Err(error) => {
            warn!(partition, %error, "reading the spool failed; retrying");
            return false;
        }
    }
    // Its fallback row goes too: the next outage starts an episode of this owner's.
    match node
        .fallback
        .leave_if_empty(partition, || node.produced_offset(partition))
        .await
    {
        Ok(left) => left,
        Err(error) => {
            warn!(partition, %error, "ending the previous owner's fallback failed; retrying");
            false
        }
    }
}

/// Journals a single node's start marker for `partition`: the `partition.owner_changed`
/// marker of the epoch this incarnation raised at start, appended before the node learns
/// the partition's end. A write the previous incarnation left in doubt on a hung broker
/// that lands after it carries the older epoch and is fenced by every reader; one that
/// landed before it is in the journal the node rebuilds from. Either way no command is
/// decided beside it (issue 22). Returns the marker's offset.
pub async fn journal_start_marker(
    node: &NodeJournal,
    partition: i32,
) -> Result<i64, kafka_journal::producer::JournalError> {
    let epoch = node.ownership.epoch(partition).unwrap_or(0);
    debug_assert!(!node.ownership.is_leased() && epoch > 0);
    let marker = kafka_journal::fence::owner_changed_marker(
        &node.producer,
        &node.topic,
        partition,
        epoch,
        kafka_journal::fence::SINGLE_NODE_ID,
    )?;
    let receipts = node.producer.append(std::slice::from_ref(&marker)).await?;
    let offset = receipts.first().map_or(-1, |r| r.offset);
    if offset >= 0 {
        node.record_produced(partition, offset);
    }
    info!(partition, epoch, offset, "start marker journaled");
    Ok(offset)
}
