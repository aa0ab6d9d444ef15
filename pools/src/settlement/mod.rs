//! The settlement pool (`payrail.settlement`) and settlement runs.
//!
//! The pool records one item per money movement (capture: gross C and fee F; refund: −R).
//! A settlement run (admin API) closes, per merchant and currency, every open item up to a
//! cutoff into a settlement with `net = captured − refunded − fees`, moves `net` from
//! `merchant_pending` to `merchant_available` in the ledger in the same transaction, and then
//! journals `settlement.created` on `settlement.events`. Paying a settlement posts the payout
//! and journals `settlement.paid`. Journaling uses an outbox flag, so a broker outage delays
//! the events but never loses them.
//!
//! Split by concern: this module holds the pool's projector (items from payment events);
//! [`model`] the settlement's events, view and errors; [`run`] settlement runs and payouts.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

mod model;
mod run;

pub use model::{SettlementError, SettlementEvent, SettlementView, SETTLEMENT_TOTAL_LIMIT};
pub use run::{close_open_items, settlement_event_id, SettlementService};

use super::ledger::{self, platform_fee};
use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use payrail_payment::PaymentEvent;
use sqlx::PgConnection;
use uuid::Uuid;

pub const SETTLEMENT_GROUP: &str = "payrail.settlement";
pub const SETTLEMENT_EVENTS: &str = "settlement.events";

pub struct SettlementProjector;

#[async_trait::async_trait]
impl PartitionHandler for SettlementProjector {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        let envelope = record.decode::<PaymentEvent>()?;
        let occurred = chrono::DateTime::from_timestamp_micros(envelope.occurred_at_micros)
            .ok_or("occurred_at out of range")?;
        match &envelope.payload {
            PaymentEvent::Created(created) => {
                sqlx::query("INSERT INTO settlement_payments (payment_id, merchant_id, currency) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(&envelope.payment_id)
                    .bind(&envelope.merchant_id)
                    .bind(created.currency.code())
                    .execute(&mut *conn)
                    .await?;
            }
            PaymentEvent::Succeeded {
                amount_captured, ..
            } if *amount_captured > 0 => {
                let currency: String = sqlx::query_scalar(
                    "SELECT currency FROM settlement_payments WHERE payment_id = $1",
                )
                .bind(&envelope.payment_id)
                .fetch_one(&mut *conn)
                .await?;
                let fee = platform_fee(
                    *amount_captured,
                    ledger::pricing(conn, &envelope.merchant_id).await?,
                );
                insert_item(
                    conn,
                    envelope.event_id,
                    &envelope.merchant_id,
                    &currency,
                    &envelope.payment_id,
                    "capture",
                    *amount_captured,
                    fee,
                    occurred,
                )
                .await?;
            }
            PaymentEvent::RefundCreated {
                refund_id, amount, ..
            } => {
                sqlx::query("INSERT INTO settlement_refunds (refund_id, payment_id, amount) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(refund_id)
                    .bind(&envelope.payment_id)
                    .bind(amount)
                    .execute(&mut *conn)
                    .await?;
            }
            PaymentEvent::RefundSucceeded { refund_id, .. } => {
                let (amount, currency): (i64, String) = sqlx::query_as(
                    "SELECT r.amount, p.currency FROM settlement_refunds r JOIN settlement_payments p USING (payment_id) WHERE r.refund_id = $1",
                )
                .bind(refund_id)
                .fetch_one(&mut *conn)
                .await?;
                insert_item(
                    conn,
                    envelope.event_id,
                    &envelope.merchant_id,
                    &currency,
                    &envelope.payment_id,
                    "refund",
                    -amount,
                    0,
                    occurred,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The batch's creates in one statement per run of creates (see [`super::created`]).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        super::created::apply_batch_with_creates(
            self,
            super::created::PaymentsTable::Settlement,
            conn,
            records,
        )
        .await
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_item(
    conn: &mut PgConnection,
    event_id: Uuid,
    merchant_id: &str,
    currency: &str,
    payment_id: &str,
    kind: &str,
    gross: i64,
    fee: i64,
    occurred: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settlement_items (event_id, merchant_id, currency, payment_id, kind, gross, fee, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(merchant_id)
    .bind(currency)
    .bind(payment_id)
    .bind(kind)
    .bind(gross)
    .bind(fee)
    .bind(occurred)
    .execute(conn)
    .await?;
    Ok(())
}
