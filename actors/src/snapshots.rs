//! Payment snapshots: the partition owner's projection of `payment.events` into
//! `payment_snapshots` (and the idempotency keys of creates), from which payment actors are
//! rebuilt after passivation, a restart or a takeover.

use crate::payment::machine::{evolve, EventContext};
use crate::payment::{Payment, PaymentEvent, PaymentView};
use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use sqlx::{PgConnection, PgPool};

/// Name of the snapshot projector in `journal_offsets`.
pub const SNAPSHOT_CONSUMER: &str = "payrail.snapshots";

pub struct SnapshotProjector;

#[async_trait::async_trait]
impl PartitionHandler for SnapshotProjector {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        let envelope = record.decode::<PaymentEvent>()?;
        // A payment's first event starts from nothing: no read (the insert below does not
        // overwrite a snapshot that exists already).
        let state: Option<Payment> = if envelope.sequence <= 1 {
            None
        } else {
            let current: Option<(i64, serde_json::Value)> = sqlx::query_as(
                "SELECT sequence, state FROM payment_snapshots WHERE payment_id = $1 FOR UPDATE",
            )
            .bind(&envelope.payment_id)
            .fetch_optional(&mut *conn)
            .await?;
            match current {
                Some((sequence, _)) if sequence as u64 >= envelope.sequence => return Ok(()),
                Some((_, state)) => Some(serde_json::from_value(state)?),
                None => None,
            }
        };
        let ctx = EventContext {
            payment_id: &envelope.payment_id,
            merchant_id: &envelope.merchant_id,
            sequence: envelope.sequence,
            occurred_at_micros: envelope.occurred_at_micros,
        };
        let Some(next) = evolve(state, ctx, &envelope.payload) else {
            return Ok(());
        };
        let mut next = next;
        next.sequence = envelope.sequence;
        let created_at =
            chrono::DateTime::from_timestamp_micros(next.created_at_micros).unwrap_or_default();
        let has_pending_refund = next
            .refunds
            .iter()
            .any(|r| r.status == crate::payment::RefundStatus::Pending);
        let written = sqlx::query(
            "INSERT INTO payment_snapshots (payment_id, merchant_id, partition, sequence, state, created_at, status, has_pending_refund)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (payment_id) DO UPDATE
             SET sequence = EXCLUDED.sequence, state = EXCLUDED.state, updated_at = now(),
                 status = EXCLUDED.status, has_pending_refund = EXCLUDED.has_pending_refund
             WHERE payment_snapshots.sequence < EXCLUDED.sequence",
        )
        .bind(&next.id)
        .bind(&next.merchant_id)
        .bind(record.partition)
        .bind(next.sequence as i64)
        .bind(serde_json::to_value(&next)?)
        .bind(created_at)
        .bind(next.status.as_str())
        .bind(has_pending_refund)
        .execute(&mut *conn)
        .await?;
        if written.rows_affected() == 0 {
            return Ok(()); // the snapshot is already at or past this event
        }
        if let PaymentEvent::Created(created) = &envelope.payload {
            if let (Some(key), Some(fingerprint)) =
                (&created.idempotency_key, &created.request_fingerprint)
            {
                sqlx::query(
                    "INSERT INTO idempotency_keys (merchant_id, idempotency_key, request_fingerprint, payment_id, response)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(&next.merchant_id)
                .bind(key)
                .bind(fingerprint)
                .bind(&next.id)
                .bind(serde_json::to_value(PaymentView::from(&next))?)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }
}

/// The snapshot of `payment_id` if it belongs to `merchant_id`.
pub async fn load_snapshot(
    pool: &PgPool,
    merchant_id: &str,
    payment_id: &str,
) -> Result<Option<Payment>, HandlerError> {
    let state: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT state FROM payment_snapshots WHERE payment_id = $1 AND merchant_id = $2",
    )
    .bind(payment_id)
    .bind(merchant_id)
    .fetch_optional(pool)
    .await?;
    Ok(match state {
        Some(state) => Some(serde_json::from_value(state)?),
        None => None,
    })
}

/// A stored idempotency record: the request's fingerprint and the first response.
pub async fn load_idempotency(
    pool: &PgPool,
    merchant_id: &str,
    key: &str,
) -> Result<Option<(String, PaymentView)>, HandlerError> {
    let row: Option<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT request_fingerprint, response FROM idempotency_keys WHERE merchant_id = $1 AND idempotency_key = $2",
    )
    .bind(merchant_id)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((fingerprint, response)) => Some((fingerprint, serde_json::from_value(response)?)),
        None => None,
    })
}

/// One page of a merchant's payments, newest first (ids are UUIDv7, so id order is creation
/// order). Returns up to `limit` payments and whether more exist.
pub async fn list_payments(
    pool: &PgPool,
    merchant_id: &str,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<(Vec<Payment>, bool), HandlerError> {
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT state FROM payment_snapshots
         WHERE merchant_id = $1 AND ($2::TEXT IS NULL OR payment_id < $2)
         ORDER BY payment_id DESC LIMIT $3",
    )
    .bind(merchant_id)
    .bind(starting_after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    let payments = rows
        .into_iter()
        .take(limit as usize)
        .map(serde_json::from_value)
        .collect::<Result<Vec<Payment>, _>>()?;
    Ok((payments, has_more))
}
