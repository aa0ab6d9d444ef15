//! Consumed offsets and processed event ids, kept in PostgreSQL next to the read models.
//!
//! A partition worker writes its read-model changes, the ids of the events it applied and
//! its next offset in one transaction. PostgreSQL, not the broker, is therefore the truth
//! about what a consumer has applied: a crash, a rebalance, a redelivery or a reset of the
//! group's Kafka offsets cannot make an event take effect twice.

use crate::record::ConsumedRecord;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The next offset `consumer` must apply on `topic`/`partition`, if it has applied any.
pub async fn load_next_offset(
    pool: &PgPool,
    consumer: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT next_offset FROM journal_offsets WHERE consumer = $1 AND topic = $2 AND partition = $3",
    )
    .bind(consumer)
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await
}

/// Records that `consumer` has applied everything before `next_offset` (never moves back).
pub async fn store_next_offset(
    conn: &mut PgConnection,
    consumer: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> Result<(), sqlx::Error> {
    store_position(conn, consumer, topic, partition, next_offset, 0).await
}

/// Like [`store_next_offset`], also recording the highest owner epoch seen so far (the
/// consumer's [`crate::fence::EpochFence`]; never moves back either).
pub async fn store_position(
    conn: &mut PgConnection,
    consumer: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
    owner_epoch: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO journal_offsets (consumer, topic, partition, next_offset, owner_epoch, updated_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (consumer, topic, partition)
         DO UPDATE SET next_offset = GREATEST(journal_offsets.next_offset, EXCLUDED.next_offset),
                       owner_epoch = GREATEST(journal_offsets.owner_epoch, EXCLUDED.owner_epoch),
                       updated_at = now()",
    )
    .bind(consumer)
    .bind(topic)
    .bind(partition)
    .bind(next_offset)
    .bind(i64::try_from(owner_epoch).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// The highest owner epoch `consumer` has seen in `topic`/`partition` (0 if none).
pub async fn load_owner_epoch(
    pool: &PgPool,
    consumer: &str,
    topic: &str,
    partition: i32,
) -> Result<u64, sqlx::Error> {
    let epoch: Option<i64> = sqlx::query_scalar(
        "SELECT owner_epoch FROM journal_offsets WHERE consumer = $1 AND topic = $2 AND partition = $3",
    )
    .bind(consumer)
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await?;
    Ok(epoch.and_then(|e| u64::try_from(e).ok()).unwrap_or(0))
}

/// The voided ranges of `topic`/`partition` (see [`crate::fence::VoidFences`]), read under
/// a shared lock held until the caller's transaction ends: a takeover that voids a range
/// takes the same lock exclusively ([`void_from`]), so a batch is judged either wholly
/// before a new range (and its position then shows the takeover what it applied) or wholly
/// after it. An advisory lock, not a row lock: it writes nothing and costs no WAL.
pub async fn load_void_fences(
    conn: &mut PgConnection,
    topic: &str,
    partition: i32,
) -> Result<crate::fence::VoidFences, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtext($1), $2)")
        .bind(topic)
        .bind(partition)
        .execute(&mut *conn)
        .await?;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT epoch, from_offset FROM journal_void_fences WHERE topic = $1 AND partition = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_all(&mut *conn)
    .await?;
    Ok(crate::fence::VoidFences::new(
        rows.into_iter()
            .map(|(epoch, from)| (u64::try_from(epoch).unwrap_or(0), from))
            .collect(),
    ))
}

/// Every partition's voided ranges of `topic`, for a reader outside the pools' transactions
/// (the audit, which runs after the fact).
pub async fn void_fences_of_topic(
    pool: &PgPool,
    topic: &str,
) -> Result<std::collections::HashMap<i32, crate::fence::VoidFences>, sqlx::Error> {
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT partition, epoch, from_offset FROM journal_void_fences WHERE topic = $1",
    )
    .bind(topic)
    .fetch_all(pool)
    .await?;
    let mut by_partition: std::collections::HashMap<i32, Vec<(u64, i64)>> = Default::default();
    for (partition, epoch, from) in rows {
        by_partition
            .entry(partition)
            .or_default()
            .push((u64::try_from(epoch).unwrap_or(0), from));
    }
    Ok(by_partition
        .into_iter()
        .map(|(p, fences)| (p, crate::fence::VoidFences::new(fences)))
        .collect())
}

/// Voids, in the caller's transaction, what epochs below `epoch` wrote to
/// `topic`/`partition` at or past `from` — unless a reader has already gone past `from`
/// (then a record there was applied somewhere and voiding it would split the readers:
/// returns `false` and writes nothing; the caller must take the journal's way). Holds the
/// range's lock exclusively until the transaction ends, so no reader judges a batch
/// between this check and the commit.
pub async fn void_from(
    conn: &mut PgConnection,
    topic: &str,
    partition: i32,
    epoch: u64,
    from: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), $2)")
        .bind(topic)
        .bind(partition)
        .execute(&mut *conn)
        .await?;
    let past: Option<i64> = sqlx::query_scalar(
        "SELECT max(next_offset) FROM journal_offsets WHERE topic = $1 AND partition = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_one(&mut *conn)
    .await?;
    if past.is_some_and(|next| next > from) {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO journal_void_fences (topic, partition, epoch, from_offset)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (topic, partition, epoch)
         DO UPDATE SET from_offset = LEAST(journal_void_fences.from_offset, EXCLUDED.from_offset)",
    )
    .bind(topic)
    .bind(partition)
    .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
    .bind(from)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Marks every id of `event_ids` as applied by `consumer` in one statement; returns the
/// ids that were not marked before (the ones the caller must apply). One round trip per
/// batch instead of one per record.
pub async fn mark_processed_batch(
    conn: &mut PgConnection,
    consumer: &str,
    event_ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(Default::default());
    }
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO journal_processed_events (consumer, event_id)
         SELECT $1, id FROM unnest($2::uuid[]) AS ids(id)
         ON CONFLICT DO NOTHING
         RETURNING event_id",
    )
    .bind(consumer)
    .bind(event_ids)
    .fetch_all(conn)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// Parks a record that failed every attempt, so the partition can move on; keeps what a
/// replay needs to decode it again (see [`crate::dead_letters`]).
pub async fn dead_letter(
    conn: &mut PgConnection,
    consumer: &str,
    record: &ConsumedRecord,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO journal_dead_letters
             (consumer, topic, partition, record_offset, event_id, error, value, event_type, content_type, record_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (consumer, topic, partition, record_offset) DO NOTHING",
    )
    .bind(consumer)
    .bind(&record.topic)
    .bind(record.partition)
    .bind(record.offset)
    .bind(record.event_id)
    .bind(error)
    .bind(&record.value)
    .bind(&record.event_type)
    .bind(&record.content_type)
    .bind(&record.key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets everything `consumer` applied, for a rebuild of its read model.
pub async fn reset_consumer(conn: &mut PgConnection, consumer: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM journal_offsets WHERE consumer = $1")
        .bind(consumer)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM journal_processed_events WHERE consumer = $1")
        .bind(consumer)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The stored `(sequence, state)` of `envelope`'s payment in `table` (a read model with a
/// row per payment: `payment_id`, `sequence`, JSON `state`), locked for the caller's
/// transaction. A payment's first event is not looked up (`None`): the caller's insert must
/// then not overwrite a row that exists already. `table` is a constant of the caller's,
/// never input.
pub async fn stored_state<T: serde::de::DeserializeOwned, P>(
    conn: &mut PgConnection,
    table: &'static str,
    envelope: &crate::Envelope<P>,
) -> Result<Option<(u64, T)>, crate::record::HandlerError> {
    if envelope.sequence <= 1 {
        return Ok(None);
    }
    let row: Option<(i64, serde_json::Value)> = sqlx::query_as(&format!(
        "SELECT sequence, state FROM {table} WHERE payment_id = $1 FOR UPDATE"
    ))
    .bind(&envelope.payment_id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((sequence, state)) => Ok(Some((
            u64::try_from(sequence).unwrap_or(0),
            serde_json::from_value(state)?,
        ))),
        None => Ok(None),
    }
}
