//! The spool's fenced writes: the lease check every spool transaction makes, and the
//! projection of spooled records into the snapshots in the same transaction.

use super::error::FallbackError;
use kafka_journal::consumer::{ConsumedRecord, PartitionHandler};
use kafka_journal::producer::OutgoingRecord;
use kafka_journal::spool::SpoolError;
use tracing::warn;
use uuid::Uuid;

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
pub(super) async fn fence_spool(
    tx: &mut sqlx::PgConnection,
    partition: i32,
    records: &[OutgoingRecord],
) -> Result<(), FallbackError> {
    let epoch = records.first().map_or(0, |r| r.headers.owner_epoch);
    debug_assert!(records.iter().all(|r| r.headers.owner_epoch == epoch));
    fence_epoch(tx, partition, epoch).await
}

/// The lease check of [`fence_spool`] for `epoch` (0: no lease row to check — records written before a single node raised its epochs, or by tests).
pub(super) async fn fence_epoch(
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

/// Applies `records` to the snapshots in the caller's transaction, each once (marked
/// applied for the snapshot projector, which then skips its journal copy).
pub(super) async fn project(
    conn: &mut sqlx::PgConnection,
    consumer: &str,
    projection: &dyn PartitionHandler,
    records: &[OutgoingRecord],
) -> Result<(), FallbackError> {
    if records.is_empty() {
        return Ok(());
    }
    let consumed: Vec<ConsumedRecord> = records.iter().map(ConsumedRecord::from).collect();
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
    projection.apply_batch(conn, &to_apply).await.map_err(|e| {
        warn!(error = %e, "projecting spooled events failed");
        FallbackError::Projection(e.to_string())
    })
}
