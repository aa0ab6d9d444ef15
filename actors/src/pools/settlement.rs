//! The settlement pool (`payrail.settlement`) and settlement runs.
//!
//! The pool records one item per money movement (capture: gross C and fee F; refund: −R).
//! A settlement run (admin API) closes, per merchant and currency, every open item up to a
//! cutoff into a settlement with `net = captured − refunded − fees`, moves `net` from
//! `merchant_pending` to `merchant_available` in the ledger in the same transaction, and then
//! journals `settlement.created` on `settlement.events`. Paying a settlement posts the payout
//! and journals `settlement.paid`. Journaling uses an outbox flag, so a broker outage delays
//! the events but never loses them.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

use super::ledger::{self, platform_fee};
use crate::payment::PaymentEvent;
use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use kafka_journal::{Envelope, JournalProducer};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
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

/// Events on `settlement.events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettlementEvent {
    /// `settlement.created`
    Created {
        currency: String,
        captured: i64,
        refunded: i64,
        fees: i64,
        net: i64,
    },
    /// `settlement.paid`
    Paid { currency: String, net: i64 },
}

impl SettlementEvent {
    /// The journal's event type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "settlement.created",
            Self::Paid { .. } => "settlement.paid",
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SettlementView {
    pub id: String,
    pub object: &'static str,
    pub merchant_id: String,
    pub currency: String,
    pub captured: i64,
    pub refunded: i64,
    pub fees: i64,
    pub net: i64,
    pub item_count: i64,
    pub status: String,
    /// Unix seconds.
    pub cutoff: i64,
    pub created: i64,
    pub paid_at: Option<i64>,
}

type SettlementRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

const SETTLEMENT_COLUMNS: &str = "id, merchant_id, currency, captured, refunded, fees, net, item_count, status, cutoff, created_at, paid_at";

fn view(row: SettlementRow) -> SettlementView {
    let (
        id,
        merchant_id,
        currency,
        captured,
        refunded,
        fees,
        net,
        item_count,
        status,
        cutoff,
        created,
        paid_at,
    ) = row;
    SettlementView {
        id,
        object: "settlement",
        merchant_id,
        currency: currency.to_ascii_lowercase(),
        captured,
        refunded,
        fees,
        net,
        item_count,
        status,
        cutoff: cutoff.timestamp(),
        created: created.timestamp(),
        paid_at: paid_at.map(|t| t.timestamp()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Unbalanced(#[from] ledger::Unbalanced),
    #[error("no such settlement")]
    NotFound,
    #[error("the settlement is already paid")]
    AlreadyPaid,
    #[error("journal: {0}")]
    Journal(#[from] kafka_journal::JournalError),
}

/// What a settlement run writes in the caller's transaction: every open item up to
/// `cutoff` closed into settlements (one per merchant and currency) and their ledger
/// transfers. Returns the new settlements' ids; their events are journaled by the outbox
/// ([`SettlementService::emit_pending`]) after the caller commits.
pub async fn close_open_items(
    conn: &mut PgConnection,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, SettlementError> {
    let items: Vec<(Uuid, String, String, i64, i64)> = sqlx::query_as(
        "SELECT event_id, merchant_id, currency, gross, fee FROM settlement_items
         WHERE settlement_id IS NULL AND occurred_at <= $1 ORDER BY merchant_id, currency FOR UPDATE",
    )
    .bind(cutoff)
    .fetch_all(&mut *conn)
    .await?;
    let mut groups: std::collections::BTreeMap<(String, String), (Vec<Uuid>, i64, i64, i64)> =
        Default::default();
    for (event_id, merchant_id, currency, gross, fee) in items {
        let entry = groups.entry((merchant_id, currency)).or_default();
        entry.0.push(event_id);
        if gross >= 0 {
            entry.1 += gross;
        } else {
            entry.2 += -gross;
        }
        entry.3 += fee;
    }
    let mut ids = Vec::new();
    for ((merchant_id, currency), (events, captured, refunded, fees)) in groups {
        let id = format!("stl_{}", Uuid::now_v7().simple());
        let net = captured - refunded - fees;
        sqlx::query(
            "INSERT INTO settlements (id, merchant_id, currency, captured, refunded, fees, net, item_count, cutoff, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'created')",
        )
        .bind(&id)
        .bind(&merchant_id)
        .bind(&currency)
        .bind(captured)
        .bind(refunded)
        .bind(fees)
        .bind(net)
        .bind(events.len() as i64)
        .bind(cutoff)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE settlement_items SET settlement_id = $1 WHERE event_id = ANY($2)")
            .bind(&id)
            .bind(&events)
            .execute(&mut *conn)
            .await?;
        ledger::settlement_transaction(&id, &merchant_id, &currency, net)?
            .post(&mut *conn, &format!("settlement:{id}"))
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Settlement runs and payouts; cheap to clone.
#[derive(Clone)]
pub struct SettlementService {
    pub pool: PgPool,
    pub producer: JournalProducer,
    pub topic: String,
    pub partitions: u32,
}

impl SettlementService {
    /// Closes every open item up to `cutoff` into settlements (one per merchant and
    /// currency), posts the ledger transfers, then journals `settlement.created`.
    pub async fn run(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<SettlementView>, SettlementError> {
        let mut tx = self.pool.begin().await?;
        let ids = close_open_items(&mut tx, cutoff).await?;
        tx.commit().await?;
        self.emit_pending().await;
        let mut created = Vec::new();
        for id in ids {
            created.push(self.get(&id).await?);
        }
        Ok(created)
    }

    pub async fn get(&self, id: &str) -> Result<SettlementView, SettlementError> {
        let row: Option<SettlementRow> = sqlx::query_as(&format!(
            "SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(view).ok_or(SettlementError::NotFound)
    }

    pub async fn list(
        &self,
        merchant_id: &str,
        limit: i64,
    ) -> Result<Vec<SettlementView>, SettlementError> {
        let rows: Vec<SettlementRow> = sqlx::query_as(&format!(
            "SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE merchant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(merchant_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(view).collect())
    }

    /// Records the payout of a settlement and posts it in the ledger.
    pub async fn pay(&self, id: &str) -> Result<SettlementView, SettlementError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, String, i64, String)> = sqlx::query_as(
            "SELECT merchant_id, currency, net, status FROM settlements WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let (merchant_id, currency, net, status) = row.ok_or(SettlementError::NotFound)?;
        if status == "paid" {
            return Err(SettlementError::AlreadyPaid);
        }
        sqlx::query("UPDATE settlements SET status = 'paid', paid_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        ledger::payout_transaction(id, &merchant_id, &currency, net)?
            .post(&mut tx, &format!("payout:{id}"))
            .await?;
        tx.commit().await?;
        self.emit_pending().await;
        self.get(id).await
    }

    /// Journals the settlement events not journaled yet (outbox). Failures are logged and
    /// retried on the next call.
    pub async fn emit_pending(&self) {
        if let Err(error) = self.try_emit_pending().await {
            tracing::warn!(%error, "settlement events not journaled yet; will retry");
        }
    }

    /// Journals every pending settlement event; returns how many records it appended.
    ///
    /// Each settlement is claimed with `FOR UPDATE SKIP LOCKED` in a transaction held
    /// across its append, so two callers never journal the same settlement at once and a
    /// payout (which locks the row) cannot slip in between reading the status and marking
    /// what was sent: the flags set are exactly the events appended. Event ids are derived
    /// from the settlement id and the event kind, so an append that succeeded before a crash
    /// and is repeated carries the same ids and is a no-op for every reader.
    pub async fn try_emit_pending(&self) -> Result<usize, SettlementError> {
        let mut appended = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let claimed: Option<PendingSettlement> = sqlx::query_as(
                "SELECT id, merchant_id, currency, captured, refunded, fees, net, status, emitted, paid_emitted, created_at, paid_at
                 FROM settlements
                 WHERE NOT emitted OR (status = 'paid' AND NOT paid_emitted)
                 ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = claimed else {
                return Ok(appended);
            };
            let mut events = Vec::new();
            if !row.emitted {
                let event = SettlementEvent::Created {
                    currency: row.currency.clone(),
                    captured: row.captured,
                    refunded: row.refunded,
                    fees: row.fees,
                    net: row.net,
                };
                events.push((1, row.created_at, event));
            }
            let pays = row.status == "paid" && !row.paid_emitted;
            if pays {
                let event = SettlementEvent::Paid {
                    currency: row.currency.clone(),
                    net: row.net,
                };
                events.push((2, row.paid_at.unwrap_or(row.created_at), event));
            }
            let (id, merchant_id) = (&row.id, &row.merchant_id);
            let partition = kafka_journal::partition_for(merchant_id.as_bytes(), self.partitions);
            let mut records = Vec::new();
            for (sequence, at, event) in &events {
                let envelope = Envelope {
                    event_id: settlement_event_id(id, event.kind()),
                    event_type: event.kind().to_string(),
                    schema_version: 1,
                    payment_id: String::new(),
                    merchant_id: merchant_id.clone(),
                    sequence: *sequence,
                    occurred_at_micros: at.timestamp_micros(),
                    correlation_id: Some(id.clone()),
                    payload: event.clone(),
                };
                records.push(self.producer.record(&self.topic, partition, 0, &envelope)?);
            }
            self.producer.append(&records).await?;
            sqlx::query(
                "UPDATE settlements SET emitted = true, paid_emitted = paid_emitted OR $2 WHERE id = $1",
            )
            .bind(id)
            .bind(pays)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            appended += records.len();
        }
    }
}

/// A settlement with events not journaled yet, as the outbox claims it.
#[derive(sqlx::FromRow)]
struct PendingSettlement {
    id: String,
    merchant_id: String,
    currency: String,
    captured: i64,
    refunded: i64,
    fees: i64,
    net: i64,
    status: String,
    emitted: bool,
    paid_emitted: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    paid_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Namespace of settlement event ids (UUIDv5 of `<settlement id>/<event type>`).
const SETTLEMENT_EVENT_IDS: Uuid = Uuid::from_u128(0x5e77_1e3e_0000_4000_8000_7061_7972_6169);

/// The one event id a settlement event ever has, whatever the number of attempts.
pub fn settlement_event_id(settlement_id: &str, event_type: &str) -> Uuid {
    Uuid::new_v5(
        &SETTLEMENT_EVENT_IDS,
        format!("{settlement_id}/{event_type}").as_bytes(),
    )
}
