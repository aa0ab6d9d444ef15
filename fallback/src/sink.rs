//! The receiving side of fallback delivery (`POST /internal/v1/events`): applies a
//! partition's spooled events to the pools this node runs, keeping each pool's per-payment
//! order across the switch from journal to spool.
//!
//! Per pool and partition, in one transaction that locks the pool's offset row (so the
//! pool's journal worker and this never interleave):
//! - a record copied from the journal (it has a journal offset) is applied only at the
//!   pool's next offset, which then moves past it — a pool that lagged when the journal
//!   failed catches up from the spool, in offset order;
//! - a fallback event is applied only once the pool has applied every journal record
//!   below the high watermark recorded when the fallback began;
//! - otherwise the rest of the batch is held back (delivered again later, or read from the
//!   journal once the spool is replayed). Every event is applied at most once per pool
//!   (`journal_processed_events`, by event id).

use kafka_journal::consumer::{ConsumedRecord, ConsumerProgress, PartitionHandler};
use kafka_journal::fence::{EpochFence, FenceVerdict};
use kafka_journal::offsets;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// Events per delivered batch at most (the receiver refuses more).
pub const MAX_EVENTS_PER_BATCH: usize = 5_000;

/// The sender cuts a batch once its events' hex values reach this many bytes (a batch
/// holds at least one event; one is far smaller than this, bounded by the API's body limit).
pub const MAX_BATCH_VALUE_HEX_BYTES: usize = 4 * 1024 * 1024;

/// Largest request body the receiver reads, after authenticating the sender from its
/// headers: the values' bound above plus the JSON around at most `MAX_EVENTS_PER_BATCH`
/// events (~300 bytes each).
pub const MAX_BATCH_BODY_BYTES: u64 = 8 * 1024 * 1024;

/// Time one pool spends on one batch at most before it commits what it applied and
/// answers: a slow pool makes progress in every request, well within the sender's timeout.
const APPLY_BUDGET: std::time::Duration = std::time::Duration::from_millis(300);

/// One partition's spooled events, in spool order, as delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveredBatch {
    pub topic: String,
    pub partition: i32,
    /// The journal's high watermark when this fallback began (or, once rows were replayed,
    /// the journal's end after them).
    pub high_watermark_at_start: i64,
    /// Every record journaled from this offset up to the high watermark was copied into
    /// the spool (offsets absent from the log aside): a pool at or past it catches up from
    /// the copies, skipping gaps. Absent: copies are applied only at the pool's exact
    /// next offset.
    #[serde(default)]
    pub copied_from: Option<i64>,
    /// Only this pool (its consumer name), or every pool of the node when absent. The
    /// sender keeps a position per pool, so a slow pool does not hold back the others.
    #[serde(default)]
    pub pool: Option<String>,
    pub events: Vec<DeliveredEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveredEvent {
    pub spool_sequence: i64,
    /// Set when the record is also in the journal at this offset (copied on entry).
    pub journal_offset: Option<i64>,
    pub key: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: String,
    pub content_type: String,
    /// The encoded envelope, hex.
    pub value_hex: String,
    /// The epoch of the lease it was acknowledged under (see `kafka_journal::fence`).
    #[serde(default)]
    pub owner_epoch: u64,
}

impl DeliveredEvent {
    /// A spooled row as it is delivered; `None` for a row without a valid event id (the
    /// spool refuses those, so none is there).
    pub fn from_spooled(row: kafka_journal::spool::SpooledRecord) -> Option<Self> {
        let event_id = Uuid::parse_str(&row.record.headers.event_id).ok()?;
        Some(Self {
            spool_sequence: row.sequence,
            journal_offset: row.journal_offset,
            key: row.record.key,
            event_id,
            event_type: row.record.headers.event_type,
            schema_version: row.record.headers.schema_version,
            content_type: row.record.headers.content_type,
            value_hex: hex::encode(&row.record.value),
            owner_epoch: row.record.headers.owner_epoch,
        })
    }
}

/// What the pools took of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinkOutcome {
    /// Every pool addressed has taken (applied, or had already) the events up to this
    /// spool sequence.
    pub applied_through: i64,
    /// The same per pool (consumer name → spool sequence); the sender resumes each pool
    /// after its own.
    pub pools: std::collections::BTreeMap<String, i64>,
    /// Pools that did not take the whole batch: they held events back (they have not
    /// applied the journal up to the high watermark yet) or ran out of time.
    pub held_back: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("pool {pool}: {error}")]
    Handler { pool: String, error: String },
}

/// What identifies a spool row's event: id, journal offset, owner epoch, SHA-256 of value.
type SpooledIdentity = (Uuid, Option<i64>, i64, Vec<u8>);

/// A pool of this node, as the sink applies to it.
#[derive(Clone)]
pub struct SinkPool {
    /// Its consumer name (offsets and processed events are stored under it).
    pub consumer: String,
    pub handler: Arc<dyn PartitionHandler>,
    pub progress: ConsumerProgress,
}

/// Cheap, cloneable handle applying delivered batches to this node's pools.
#[derive(Clone)]
pub struct PoolSink {
    pool: PgPool,
    topic: String,
    partitions: u32,
    pools: Arc<Vec<SinkPool>>,
}

impl PoolSink {
    pub fn new(pool: PgPool, topic: String, partitions: u32, pools: Vec<SinkPool>) -> Self {
        Self {
            pool,
            topic,
            partitions,
            pools: Arc::new(pools),
        }
    }

    /// Checks a batch before anything is applied: topic, partition, order, size, values.
    pub fn validate(&self, batch: &DeliveredBatch) -> Result<Vec<ConsumedRecord>, SinkError> {
        if batch.topic != self.topic {
            return Err(SinkError::Invalid(format!(
                "topic {} is not this node's journal",
                batch.topic
            )));
        }
        if !(0..self.partitions as i32).contains(&batch.partition) {
            return Err(SinkError::Invalid(format!(
                "partition {} is out of range",
                batch.partition
            )));
        }
        if batch.events.len() > MAX_EVENTS_PER_BATCH {
            return Err(SinkError::Invalid(format!(
                "at most {MAX_EVENTS_PER_BATCH} events per batch"
            )));
        }
        if batch.high_watermark_at_start < 0 {
            return Err(SinkError::Invalid(
                "high_watermark_at_start must be >= 0".into(),
            ));
        }
        let mut previous = 0;
        let mut records = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            if event.spool_sequence <= previous {
                return Err(SinkError::Invalid(
                    "events must be in rising spool_sequence order, from 1".into(),
                ));
            }
            previous = event.spool_sequence;
            let value = hex::decode(&event.value_hex)
                .map_err(|_| SinkError::Invalid("value_hex is not hex".into()))?;
            records.push(ConsumedRecord {
                topic: batch.topic.clone(),
                partition: batch.partition,
                offset: event.journal_offset.unwrap_or(-1),
                key: Some(event.key.as_bytes().to_vec()),
                event_type: Some(event.event_type.clone()),
                event_id: Some(event.event_id),
                content_type: Some(event.content_type.clone()),
                value,
                timestamp_ms: None,
                owner_epoch: event.owner_epoch,
            });
        }
        Ok(records)
    }

    /// What a batch from the network may be applied as: every event must be the spool's
    /// row at its sequence — same event id, journal offset, owner epoch and value (the
    /// nodes share the database) — and the episode's watermark and promise are the
    /// spool's, not the sender's (the later watermark and promise of the two, or none).
    /// So a forged or buggy batch cannot move a pool's offset past a journaled record, its
    /// fence epoch past the lease's, or apply anything that was not acknowledged. A batch
    /// whose rows were replayed and trimmed meanwhile is refused too: the sender reads the
    /// spool again, and the pools find those records in the journal.
    pub async fn admit(&self, batch: DeliveredBatch) -> Result<DeliveredBatch, SinkError> {
        use sha2::{Digest, Sha256};
        let episode: Option<(Option<i64>, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT high_watermark_at_start, copied_from, replayed_end FROM journal_fallback
             WHERE topic = $1 AND partition = $2",
        )
        .bind(&batch.topic)
        .bind(batch.partition)
        .fetch_optional(&self.pool)
        .await?;
        let Some((Some(high), copied_from, replayed_end)) = episode else {
            return Err(SinkError::Invalid(format!(
                "partition {} has no fallback episode with a watermark",
                batch.partition
            )));
        };
        let sequences: Vec<i64> = batch.events.iter().map(|e| e.spool_sequence).collect();
        #[allow(clippy::type_complexity)]
        let rows: Vec<(i64, Uuid, Option<i64>, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT sequence, event_id, journal_offset, owner_epoch, sha256(value) FROM journal_spool
             WHERE topic = $1 AND partition = $2 AND sequence = ANY($3)",
        )
        .bind(&batch.topic)
        .bind(batch.partition)
        .bind(&sequences)
        .fetch_all(&self.pool)
        .await?;
        let spooled: std::collections::HashMap<i64, SpooledIdentity> = rows
            .into_iter()
            .map(|(sequence, id, offset, epoch, digest)| (sequence, (id, offset, epoch, digest)))
            .collect();
        for event in &batch.events {
            let value = hex::decode(&event.value_hex)
                .map_err(|_| SinkError::Invalid("value_hex is not hex".into()))?;
            let delivered = (
                event.event_id,
                event.journal_offset,
                i64::try_from(event.owner_epoch).unwrap_or(i64::MAX),
                Sha256::digest(&value).to_vec(),
            );
            if spooled.get(&event.spool_sequence) != Some(&delivered) {
                return Err(SinkError::Invalid(format!(
                    "the event at spool sequence {} is not the spool's",
                    event.spool_sequence
                )));
            }
        }
        let high = batch
            .high_watermark_at_start
            .max(high)
            .max(replayed_end.unwrap_or(0));
        let copied_from = match (batch.copied_from, copied_from) {
            (Some(sent), Some(stored)) => Some(sent.max(stored)),
            _ => None,
        };
        Ok(DeliveredBatch {
            high_watermark_at_start: high,
            copied_from,
            ..batch
        })
    }

    /// Applies `batch` to the pools it addresses, each in its own transaction and all at
    /// once (a slow pool does not delay the others' effects); see the module docs.
    pub async fn apply(&self, batch: &DeliveredBatch) -> Result<SinkOutcome, SinkError> {
        let records = self.validate(batch)?;
        let targets: Vec<&SinkPool> = self
            .pools
            .iter()
            .filter(|p| batch.pool.as_ref().is_none_or(|name| *name == p.consumer))
            .collect();
        if let Some(name) = &batch.pool {
            if targets.is_empty() {
                return Err(SinkError::Invalid(format!("no pool {name} on this node")));
            }
        }
        let last = batch.events.last().map(|e| e.spool_sequence).unwrap_or(0);
        let results = futures::future::join_all(
            targets
                .iter()
                .map(|pool| self.apply_to(pool, batch, &records)),
        )
        .await;
        let mut outcome = SinkOutcome {
            applied_through: last,
            pools: Default::default(),
            held_back: Vec::new(),
        };
        for (pool, result) in targets.iter().zip(results) {
            let through = result?;
            if through < last {
                outcome.held_back.push(pool.consumer.clone());
            }
            outcome.applied_through = outcome.applied_through.min(through);
            outcome.pools.insert(pool.consumer.clone(), through);
        }
        Ok(outcome)
    }

    /// Returns the spool sequence through which `pool` has taken the batch.
    async fn apply_to(
        &self,
        pool: &SinkPool,
        batch: &DeliveredBatch,
        records: &[ConsumedRecord],
    ) -> Result<i64, SinkError> {
        let first = batch.events.first().map(|e| e.spool_sequence).unwrap_or(1);
        let mut taken = first - 1;
        let mut tx = self.pool.begin().await?;
        // Created when missing, then locked: the pool's journal worker stores its offset
        // through this row, so the two never interleave.
        offsets::store_next_offset(&mut tx, &pool.consumer, &self.topic, batch.partition, 0)
            .await?;
        let (mut next, epoch): (i64, i64) = sqlx::query_as(
            "SELECT next_offset, owner_epoch FROM journal_offsets
             WHERE consumer = $1 AND topic = $2 AND partition = $3 FOR UPDATE",
        )
        .bind(&pool.consumer)
        .bind(&self.topic)
        .bind(batch.partition)
        .fetch_one(&mut *tx)
        .await?;
        let start = next;
        // The same fence as the pool's journal worker: a superseded owner's event is
        // passed over, not applied.
        let mut fence = EpochFence::at(u64::try_from(epoch).unwrap_or(0));
        let began = std::time::Instant::now();
        for (event, record) in batch.events.iter().zip(records) {
            if began.elapsed() > APPLY_BUDGET {
                break; // commit what is done; the sender resumes after it
            }
            let complete_from_here = batch.copied_from.is_some_and(|from| next >= from);
            match event.journal_offset {
                Some(offset) if offset < next => {}
                Some(offset) if offset == next || complete_from_here => {
                    if fence.admit(record) == FenceVerdict::Apply {
                        apply_once(&mut tx, pool, record).await?;
                    }
                    next = offset + 1;
                }
                Some(_) => break, // the pool lags past the copied records: the journal's turn
                None if next >= batch.high_watermark_at_start => {
                    if fence.admit(record) == FenceVerdict::Apply {
                        apply_once(&mut tx, pool, record).await?;
                    }
                }
                None => break,
            }
            taken = event.spool_sequence;
        }
        if next > start || fence.highest() > u64::try_from(epoch).unwrap_or(0) {
            offsets::store_position(
                &mut tx,
                &pool.consumer,
                &self.topic,
                batch.partition,
                next,
                fence.highest(),
            )
            .await?;
        }
        tx.commit().await?;
        if next > start {
            pool.progress.publish(batch.partition, next);
        }
        Ok(taken)
    }
}

async fn apply_once(
    conn: &mut sqlx::PgConnection,
    pool: &SinkPool,
    record: &ConsumedRecord,
) -> Result<(), SinkError> {
    let Some(event_id) = record.event_id else {
        return Ok(());
    };
    let fresh = offsets::mark_processed_batch(conn, &pool.consumer, &[event_id]).await?;
    if fresh.contains(&event_id) {
        pool.handler
            .apply(conn, record)
            .await
            .map_err(|e| SinkError::Handler {
                pool: pool.consumer.clone(),
                error: e.to_string(),
            })?;
    }
    Ok(())
}
