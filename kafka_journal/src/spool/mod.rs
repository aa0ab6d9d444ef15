//! The fallback spool: a durable, ordered, per-partition queue of journal records in
//! PostgreSQL, for while the broker is unavailable (DESIGN "Journal unavailable").
//!
//! A partition enters fallback with its first spooled record (the journal's high watermark
//! at that moment is recorded when known) and leaves it only when its spool is empty, so
//! no new record overtakes a spooled one. Records keep their headers (event id, type,
//! version, content type) and key, so replaying one twice (a crash between the broker's
//! acknowledgement and the row's removal) is a no-op for every reader, which de-duplicates
//! by event id. This module knows nothing about payments.

use crate::envelope::EventHeaders;
use crate::producer::{JournalProducer, OutgoingRecord};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool holds its maximum of {0} rows")]
    Full(u64),
    #[error("a spooled record has no valid event id header")]
    MissingEventId,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("journal: {0}")]
    Journal(#[from] crate::producer::JournalError),
}

/// One spooled record, as replay reads it back.
#[derive(Debug, Clone)]
pub struct SpooledRecord {
    pub sequence: i64,
    /// Set for a record copied from the journal when the fallback began (it is there).
    pub journal_offset: Option<i64>,
    pub record: OutgoingRecord,
}

/// A partition in fallback, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpoolDepth {
    pub partition: i32,
    pub rows: i64,
    /// Age of the oldest spooled row (ms), 0 when empty.
    pub oldest_age_ms: i64,
    /// The journal's high watermark when the fallback began, if it was known.
    pub high_watermark_at_start: Option<i64>,
}

/// Cheap, cloneable handle to the spool of one topic.
#[derive(Clone)]
pub struct Spool {
    pool: PgPool,
    topic: String,
    max_rows: u64,
}

/// See [`Spool::episodes`].
pub type Episode = (i32, i64, Option<i64>, Option<i64>);

type SpoolRow = (
    i64,
    String,
    Uuid,
    String,
    String,
    String,
    Vec<u8>,
    Option<i64>,
    i64,
);

impl Spool {
    /// `max_rows` bounds the whole spool of `topic` (`spool.max_rows`).
    pub fn new(pool: PgPool, topic: impl Into<String>, max_rows: u64) -> Self {
        assert!(max_rows > 0, "spool.max_rows must be positive");
        Self {
            pool,
            topic: topic.into(),
            max_rows,
        }
    }

    /// Writes `records` (all of `partition`, in order) durably, after every record spooled
    /// before them. Returns their spool sequences. Refused with [`SpoolError::Full`] —
    /// nothing written — when the spool would exceed its bound.
    pub async fn append(
        &self,
        partition: i32,
        records: &[OutgoingRecord],
        high_watermark: Option<i64>,
    ) -> Result<Vec<i64>, SpoolError> {
        let mut tx = self.pool.begin().await?;
        let sequences = self
            .append_in(&mut tx, partition, records, high_watermark)
            .await?;
        tx.commit().await?;
        Ok(sequences)
    }

    /// [`Spool::append`] inside the caller's transaction, so the caller can write what
    /// must commit together with the spooled records (e.g. a projection of them).
    /// `high_watermark` is recorded only when this append starts the partition's fallback;
    /// with no records it only starts the fallback.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        records: &[OutgoingRecord],
        high_watermark: Option<i64>,
    ) -> Result<Vec<i64>, SpoolError> {
        let offsets = vec![None; records.len()];
        self.insert_in(conn, partition, records, &offsets, high_watermark, None)
            .await
    }

    /// Like [`Spool::append_in`] for records already in the journal at `journal_offsets`
    /// (copied when the partition enters fallback; see the migration 0022): every record
    /// journaled from `copied_from` up to `high_watermark` (migration 0023); `None`: no
    /// such promise (a pool takes the copies only at its exact next offset).
    pub async fn append_journaled_in(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        records: &[OutgoingRecord],
        journal_offsets: &[i64],
        high_watermark: Option<i64>,
        copied_from: Option<i64>,
    ) -> Result<Vec<i64>, SpoolError> {
        assert_eq!(
            records.len(),
            journal_offsets.len(),
            "one offset per record"
        );
        let offsets: Vec<Option<i64>> = journal_offsets.iter().copied().map(Some).collect();
        self.insert_in(
            conn,
            partition,
            records,
            &offsets,
            high_watermark,
            copied_from,
        )
        .await
    }

    async fn insert_in(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        records: &[OutgoingRecord],
        journal_offsets: &[Option<i64>],
        high_watermark: Option<i64>,
        copied_from: Option<i64>,
    ) -> Result<Vec<i64>, SpoolError> {
        // No early return on no records: the fallback row is still written (a partition
        // enters fallback with nothing to copy).
        // The partitions' counters (migration 0026). Other partitions' writers may add rows
        // concurrently, so the bound can be passed by at most one append per other
        // partition; this partition's writers are serialised by its row below.
        let rows: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(spooled_rows), 0)::bigint FROM journal_fallback WHERE topic = $1",
        )
        .bind(&self.topic)
        .fetch_one(&mut *conn)
        .await?;
        if rows as u64 + records.len() as u64 > self.max_rows {
            return Err(SpoolError::Full(self.max_rows));
        }
        // One statement creates or locks the partition's fallback row, so writers of one
        // partition are serialised and an append never races the end of a fallback
        // (`finish_if_empty` locks the same row).
        let n = records.len() as i64;
        let first: i64 = sqlx::query_scalar(
            "INSERT INTO journal_fallback (topic, partition, high_watermark_at_start, next_sequence, copied_from, spooled_rows)
             VALUES ($1, $2, $3, 1 + $4, $5, $4)
             ON CONFLICT (topic, partition)
             DO UPDATE SET next_sequence = journal_fallback.next_sequence + $4,
                           spooled_rows = journal_fallback.spooled_rows + $4
             RETURNING next_sequence - $4",
        )
        .bind(&self.topic)
        .bind(partition)
        .bind(high_watermark)
        .bind(n)
        .bind(copied_from)
        .fetch_one(&mut *conn)
        .await?;
        let mut sequences = Vec::with_capacity(records.len());
        let (mut keys, mut ids, mut types, mut versions, mut content_types, mut values) = (
            Vec::with_capacity(records.len()),
            Vec::with_capacity(records.len()),
            Vec::with_capacity(records.len()),
            Vec::with_capacity(records.len()),
            Vec::with_capacity(records.len()),
            Vec::with_capacity(records.len()),
        );
        let mut epochs = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            debug_assert_eq!(record.partition, partition, "one partition per append");
            let event_id = Uuid::parse_str(&record.headers.event_id)
                .map_err(|_| SpoolError::MissingEventId)?;
            sequences.push(first + i as i64);
            keys.push(record.key.as_str());
            ids.push(event_id);
            types.push(record.headers.event_type.as_str());
            versions.push(record.headers.schema_version.as_str());
            content_types.push(record.headers.content_type.as_str());
            values.push(record.value.as_slice());
            epochs.push(i64::try_from(record.headers.owner_epoch).unwrap_or(i64::MAX));
        }
        sqlx::query(
            "INSERT INTO journal_spool (topic, partition, sequence, record_key, event_id, event_type, schema_version, content_type, value, journal_offset, owner_epoch)
             SELECT $1, $2, s, k, e, t, v, c, b, o, p
             FROM unnest($3::bigint[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::bigint[], $11::bigint[])
                  AS r(s, k, e, t, v, c, b, o, p)",
        )
        .bind(&self.topic)
        .bind(partition)
        .bind(&sequences)
        .bind(&keys)
        .bind(&ids)
        .bind(&types)
        .bind(&versions)
        .bind(&content_types)
        .bind(&values)
        .bind(journal_offsets)
        .bind(&epochs)
        .execute(&mut *conn)
        .await?;
        Ok(sequences)
    }

    /// Locks `partition`'s fallback row in the caller's transaction and returns the journal's
    /// high watermark recorded when it began (`Some(None)`: not recorded), or `None` when
    /// the partition is not in fallback.
    pub async fn lock_episode_in(
        &self,
        conn: &mut PgConnection,
        partition: i32,
    ) -> Result<Option<Option<i64>>, SpoolError> {
        Ok(sqlx::query_scalar(
            "SELECT high_watermark_at_start FROM journal_fallback
             WHERE topic = $1 AND partition = $2 FOR UPDATE",
        )
        .bind(&self.topic)
        .bind(partition)
        .fetch_optional(&mut *conn)
        .await?)
    }

    /// Raises the high watermark recorded for `partition`'s fallback to `high_watermark`
    /// (an adopted episode now covers the journal up to there), and its `copied_from` to
    /// what the adopting entry can promise.
    pub async fn raise_watermark_in(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        high_watermark: i64,
        copied_from: Option<i64>,
    ) -> Result<(), SpoolError> {
        // The promise holds for the whole episode only where both entries made it: the
        // later of the two offsets, or none (GREATEST alone would skip a NULL).
        sqlx::query(
            "UPDATE journal_fallback
                SET high_watermark_at_start = GREATEST(COALESCE(high_watermark_at_start, 0), $3),
                    copied_from = CASE WHEN copied_from IS NULL OR $4::bigint IS NULL THEN NULL
                                       ELSE GREATEST(copied_from, $4::bigint) END
             WHERE topic = $1 AND partition = $2",
        )
        .bind(&self.topic)
        .bind(partition)
        .bind(high_watermark)
        .bind(copied_from)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

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

#[cfg(test)]
mod tests;
