//! Pages of the snapshot read model for the Stripe-compatible lists (issue 26): a
//! merchant's payments and refunds, newest first, from Stripe's `starting_after` /
//! `ending_before` cursors, and the payment holding a refund.

use crate::payment::Payment;
use kafka_journal::consumer::HandlerError;
use sqlx::PgPool;

/// Where a page of a list starts: after (older than) or before (newer than) an object of
/// the list, or at the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor<'a> {
    Newest,
    After(&'a str),
    Before(&'a str),
}

impl<'a> Cursor<'a> {
    /// The cursor's id, whether the page lies before it, and the comparison with the
    /// cursor's row and the order that select the page: before a cursor, the newer rows
    /// nearest first (the caller turns them back to newest first).
    fn sql(self) -> (Option<&'a str>, bool, &'static str, &'static str) {
        match self {
            Cursor::Newest => (None, false, "<", "DESC"),
            Cursor::After(id) => (Some(id), false, "<", "DESC"),
            Cursor::Before(id) => (Some(id), true, ">", "ASC"),
        }
    }
}

/// A page of a list, newest first, and whether more exist in the page's direction.
/// `None` when the cursor names no object of the merchant's.
pub type Page<T> = Option<(Vec<T>, bool)>;

/// One page of a merchant's payments, newest first (by creation time, then id), created
/// within `created` (inclusive unix seconds), from `cursor` (Stripe's `starting_after` /
/// `ending_before`).
pub async fn list_payments_page(
    pool: &PgPool,
    merchant_id: &str,
    limit: i64,
    cursor: Cursor<'_>,
    created: (Option<i64>, Option<i64>),
) -> Result<Page<Payment>, HandlerError> {
    let (cursor_id, before, comparison, order) = cursor.sql();
    if let Some(id) = cursor_id {
        let known: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM payment_snapshots WHERE payment_id = $1 AND merchant_id = $2",
        )
        .bind(id)
        .bind(merchant_id)
        .fetch_optional(pool)
        .await?;
        if known.is_none() {
            return Ok(None);
        }
    }
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(&format!(
        "SELECT state FROM payment_snapshots
         WHERE merchant_id = $1
           AND ($2::TEXT IS NULL OR (created_at, payment_id) {comparison}
                (SELECT created_at, payment_id FROM payment_snapshots
                 WHERE payment_id = $2 AND merchant_id = $1))
           AND ($4::BIGINT IS NULL OR created_at >= to_timestamp($4::BIGINT))
           AND ($5::BIGINT IS NULL OR created_at < to_timestamp($5::BIGINT + 1))
         ORDER BY created_at {order}, payment_id {order} LIMIT $3"
    ))
    .bind(merchant_id)
    .bind(cursor_id)
    .bind(limit + 1)
    .bind(created.0)
    .bind(created.1)
    .fetch_all(pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    let mut payments = rows
        .into_iter()
        .take(limit as usize)
        .map(serde_json::from_value)
        .collect::<Result<Vec<Payment>, _>>()?;
    if before {
        payments.reverse();
    }
    Ok(Some((payments, has_more)))
}

/// The payment holding the refund `refund_id`, if it is the merchant's.
pub async fn payment_of_refund(
    pool: &PgPool,
    merchant_id: &str,
    refund_id: &str,
) -> Result<Option<Payment>, HandlerError> {
    let state: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT state FROM payment_snapshots
         WHERE merchant_id = $1
           AND state->'refunds' @> jsonb_build_array(jsonb_build_object('id', $2::TEXT))
         LIMIT 1",
    )
    .bind(merchant_id)
    .bind(refund_id)
    .fetch_optional(pool)
    .await?;
    Ok(match state {
        Some(state) => Some(serde_json::from_value(state)?),
        None => None,
    })
}

/// One page of a merchant's refunds (of one payment's, with `payment_id`), newest first by
/// creation time, then id: each with its payment. Reads every refund of the merchant's
/// payments (no index on refunds).
pub async fn list_refunds_page(
    pool: &PgPool,
    merchant_id: &str,
    payment_id: Option<&str>,
    limit: i64,
    cursor: Cursor<'_>,
) -> Result<Page<(Payment, String)>, HandlerError> {
    let (cursor_id, before, comparison, order) = cursor.sql();
    let rows: Vec<(serde_json::Value, String, bool)> = sqlx::query_as(&format!(
        "WITH refunds AS (
             SELECT p.state, r->>'id' AS id, (r->>'created_at_micros')::BIGINT AS at
             FROM payment_snapshots p, jsonb_array_elements(p.state->'refunds') r
             WHERE p.merchant_id = $1 AND ($2::TEXT IS NULL OR p.payment_id = $2)
         ), mark AS (SELECT at, id FROM refunds WHERE id = $3)
         SELECT state, id, EXISTS (SELECT 1 FROM mark) FROM refunds
         WHERE $3::TEXT IS NULL OR (at, id) {comparison} (SELECT at, id FROM mark)
         ORDER BY at {order}, id {order} LIMIT $4"
    ))
    .bind(merchant_id)
    .bind(payment_id)
    .bind(cursor_id)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    if cursor_id.is_some() && rows.first().is_none_or(|(_, _, marked)| !marked) {
        // No rows: the cursor is unknown, or the page past it is empty.
        let known: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM payment_snapshots WHERE merchant_id = $1
               AND state->'refunds' @> jsonb_build_array(jsonb_build_object('id', $2::TEXT))",
        )
        .bind(merchant_id)
        .bind(cursor_id)
        .fetch_optional(pool)
        .await?;
        if known.is_none() {
            return Ok(None);
        }
    }
    let has_more = rows.len() as i64 > limit;
    let mut refunds = rows
        .into_iter()
        .take(limit as usize)
        .map(|(state, id, _)| Ok((serde_json::from_value(state)?, id)))
        .collect::<Result<Vec<(Payment, String)>, HandlerError>>()?;
    if before {
        refunds.reverse();
    }
    Ok(Some((refunds, has_more)))
}
