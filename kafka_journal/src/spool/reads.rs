//! What the replayer, the delivery and operators read of the spool, and how it drains:
//! pending rows, episodes, depths, replay and removal.

use super::{Episode, Spool, SpoolDepth, SpoolError, SpoolRow, SpooledRecord};
use crate::envelope::EventHeaders;
use crate::producer::{JournalProducer, OutgoingRecord};
use uuid::Uuid;

impl Spool {
    /// Whether the spool holds the event `event_id` (a spool write whose COMMIT answer was
    /// lost may have put it there).
    pub async fn holds_event(&self, event_id: Uuid) -> Result<bool, SpoolError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM journal_spool WHERE event_id = $1)")
                .bind(event_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Partitions in fallback with the journal's high watermark recorded when each began.
    pub async fn partitions_in_fallback(&self) -> Result<Vec<(i32, Option<i64>)>, SpoolError> {
        Ok(sqlx::query_as(
            "SELECT partition, high_watermark_at_start FROM journal_fallback WHERE topic = $1 ORDER BY partition",
        )
        .bind(&self.topic)
        .fetch_all(&self.pool)
        .await?)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The oldest `limit` spooled records of `partition`, in spool order.
    pub async fn pending(
        &self,
        partition: i32,
        limit: i64,
    ) -> Result<Vec<SpooledRecord>, SpoolError> {
        self.after(partition, 0, limit).await
    }

    /// Up to `limit` spooled records of `partition` after spool sequence `after`, in order.
    pub async fn after(
        &self,
        partition: i32,
        after: i64,
        limit: i64,
    ) -> Result<Vec<SpooledRecord>, SpoolError> {
        let rows: Vec<SpoolRow> = sqlx::query_as(
            "SELECT sequence, record_key, event_id, event_type, schema_version, content_type, value, journal_offset, owner_epoch
             FROM journal_spool WHERE topic = $1 AND partition = $2 AND sequence > $3
             ORDER BY sequence LIMIT $4",
        )
        .bind(&self.topic)
        .bind(partition)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    sequence,
                    key,
                    event_id,
                    event_type,
                    schema_version,
                    content_type,
                    value,
                    journal_offset,
                    owner_epoch,
                )| {
                    SpooledRecord {
                        sequence,
                        journal_offset,
                        record: OutgoingRecord {
                            topic: self.topic.clone(),
                            partition,
                            key,
                            headers: EventHeaders {
                                event_type,
                                event_id: event_id.to_string(),
                                schema_version,
                                content_type,
                                owner_epoch: u64::try_from(owner_epoch).unwrap_or(0),
                            },
                            value,
                        },
                    }
                },
            )
            .collect())
    }

    /// Each partition's fallback now: (partition, when it began in µs since the epoch — an
    /// episode's identity, as spool sequences restart with each —, the journal's high
    /// watermark then, the lowest offset copied into the spool then).
    pub async fn episodes(&self) -> Result<Vec<Episode>, SpoolError> {
        Ok(sqlx::query_as(
            "SELECT partition, (EXTRACT(EPOCH FROM began_at) * 1000000)::bigint, high_watermark_at_start, copied_from
             FROM journal_fallback WHERE topic = $1 ORDER BY partition",
        )
        .bind(&self.topic)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Removes `partition`'s rows up to `sequence` (after the broker acknowledged them).
    pub async fn remove_through(&self, partition: i32, sequence: i64) -> Result<(), SpoolError> {
        sqlx::query(
            "WITH gone AS (
                 DELETE FROM journal_spool WHERE topic = $1 AND partition = $2 AND sequence <= $3
                 RETURNING 1)
             UPDATE journal_fallback SET spooled_rows = spooled_rows - (SELECT count(*) FROM gone)
             WHERE topic = $1 AND partition = $2",
        )
        .bind(&self.topic)
        .bind(partition)
        .bind(sequence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// After the broker acknowledged a replayed batch: removes `partition`'s rows up to
    /// `sequence` and records `journal_end` (one past the batch's last offset), in one
    /// transaction; see [`Spool::replayed_end`].
    pub async fn mark_replayed(
        &self,
        partition: i32,
        sequence: i64,
        journal_end: i64,
    ) -> Result<(), SpoolError> {
        let mut conn = self.pool.acquire().await?;
        self.mark_replayed_in(&mut conn, partition, sequence, journal_end)
            .await
    }

    /// [`Spool::mark_replayed`] in the caller's transaction (a replay fenced by the lease).
    pub async fn mark_replayed_in(
        &self,
        conn: &mut sqlx::PgConnection,
        partition: i32,
        sequence: i64,
        journal_end: i64,
    ) -> Result<(), SpoolError> {
        sqlx::query(
            "WITH gone AS (
                 DELETE FROM journal_spool WHERE topic = $1 AND partition = $2 AND sequence <= $3
                 RETURNING 1)
             UPDATE journal_fallback
                SET replayed_end = GREATEST(COALESCE(replayed_end, 0), $4),
                    spooled_rows = spooled_rows - (SELECT count(*) FROM gone)
             WHERE topic = $1 AND partition = $2",
        )
        .bind(&self.topic)
        .bind(partition)
        .bind(sequence)
        .bind(journal_end)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The journal's end after the last replayed batch of `partition`'s fallback, if any:
    /// every spooled record removed so far lies below it, so a reader that has applied the
    /// journal up to here has seen every record before the rows still spooled.
    pub async fn replayed_end(&self, partition: i32) -> Result<Option<i64>, SpoolError> {
        let end: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT replayed_end FROM journal_fallback WHERE topic = $1 AND partition = $2",
        )
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        Ok(end.flatten())
    }

    /// Whether `partition` is in fallback (its fallback row exists).
    pub async fn in_fallback(&self, partition: i32) -> Result<bool, SpoolError> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT partition FROM journal_fallback WHERE topic = $1 AND partition = $2",
        )
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Ends `partition`'s fallback if its spool is empty; returns whether it ended. Locks
    /// the fallback row, so a concurrent append either lands before (and keeps the
    /// partition in fallback) or starts a new fallback after.
    pub async fn finish_if_empty(&self, partition: i32) -> Result<bool, SpoolError> {
        let mut tx = self.pool.begin().await?;
        let locked: Option<i32> = sqlx::query_scalar(
            "SELECT partition FROM journal_fallback WHERE topic = $1 AND partition = $2 FOR UPDATE",
        )
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&mut *tx)
        .await?;
        if locked.is_none() {
            return Ok(true);
        }
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM journal_spool WHERE topic = $1 AND partition = $2",
        )
        .bind(&self.topic)
        .bind(partition)
        .fetch_one(&mut *tx)
        .await?;
        if rows > 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM journal_fallback WHERE topic = $1 AND partition = $2")
            .bind(&self.topic)
            .bind(partition)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every partition in fallback with its spool depth.
    pub async fn depths(&self) -> Result<Vec<SpoolDepth>, SpoolError> {
        let rows: Vec<(i32, i64, Option<f64>, Option<i64>)> = sqlx::query_as(
            "SELECT f.partition, count(s.sequence),
                    EXTRACT(EPOCH FROM (now() - min(s.spooled_at)))::float8 * 1000,
                    f.high_watermark_at_start
             FROM journal_fallback f
             LEFT JOIN journal_spool s ON s.topic = f.topic AND s.partition = f.partition
             WHERE f.topic = $1
             GROUP BY f.partition, f.high_watermark_at_start ORDER BY f.partition",
        )
        .bind(&self.topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(partition, rows, age, high)| SpoolDepth {
                partition,
                rows,
                oldest_age_ms: age.map(|a| a.max(0.0) as i64).unwrap_or(0),
                high_watermark_at_start: high,
            })
            .collect())
    }

    /// Appends `partition`'s spool to the journal in spool order, `batch` rows at a time,
    /// removing rows only after the broker acknowledged them, and ends the partition's
    /// fallback when the spool is empty. Returns the rows replayed. Stops at the first
    /// failed append (the rows stay for the next try).
    pub async fn replay(
        &self,
        producer: &JournalProducer,
        partition: i32,
        batch: i64,
    ) -> Result<u64, SpoolError> {
        let mut replayed = 0u64;
        loop {
            let pending = self.pending(partition, batch.max(1)).await?;
            let Some(last) = pending.last().map(|r| r.sequence) else {
                self.finish_if_empty(partition).await?;
                return Ok(replayed);
            };
            let records: Vec<OutgoingRecord> = pending.iter().map(|r| r.record.clone()).collect();
            let receipts = producer.append(&records).await?;
            let end = receipts.iter().map(|r| r.offset + 1).max().unwrap_or(0);
            self.mark_replayed(partition, last, end).await?;
            replayed += records.len() as u64;
        }
    }
}
