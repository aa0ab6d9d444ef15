//! The fallback spool: a durable, ordered, per-partition queue of journal records in
//! PostgreSQL, for while the broker is unavailable (DESIGN "Journal unavailable").
//!
//! A partition enters fallback with its first spooled record (the journal's high watermark
//! at that moment is recorded when known) and leaves it only when its spool is empty, so
//! no new record overtakes a spooled one. Records keep their headers (event id, type,
//! version, content type) and key, so replaying one twice (a crash between the broker's
//! acknowledgement and the row's removal) is a no-op for every reader, which de-duplicates
//! by event id. This module knows nothing about payments.

use crate::producer::OutgoingRecord;
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
}

mod reads;

#[cfg(test)]
mod tests;
