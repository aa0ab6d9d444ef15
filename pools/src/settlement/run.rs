//! Settlement runs and payouts: closing open items into exact settlements per merchant and
//! currency, with their ledger postings, and journaling their events through an outbox.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

use super::model::{
    view, SettlementError, SettlementEvent, SettlementRow, SettlementView, SETTLEMENT_COLUMNS,
    SETTLEMENT_TOTAL_LIMIT,
};
use crate::ledger;
use kafka_journal::{Envelope, JournalProducer};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One settlement as a run fills it: its items and their totals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Batch {
    events: Vec<Uuid>,
    captured: i64,
    refunded: i64,
    fees: i64,
    net: i64,
}

impl Batch {
    /// Adds an item (`gross` > 0 captured, < 0 refunded) if it fits: every total stays
    /// within [`SETTLEMENT_TOTAL_LIMIT`] (an empty batch takes any item whose amounts are
    /// representable) and the net and its negation are representable. Checked arithmetic
    /// throughout; false leaves the batch as it was.
    fn add(&mut self, event_id: Uuid, gross: i64, fee: i64) -> bool {
        let totals = || -> Option<(i64, i64, i64, i64)> {
            let (captured, refunded) = if gross >= 0 {
                (self.captured.checked_add(gross)?, self.refunded)
            } else {
                (
                    self.captured,
                    self.refunded.checked_add(gross.checked_neg()?)?,
                )
            };
            let fees = self.fees.checked_add(fee)?;
            let net = captured.checked_sub(refunded)?.checked_sub(fees)?;
            net.checked_neg()?;
            Some((captured, refunded, fees, net))
        };
        let Some((captured, refunded, fees, net)) = totals() else {
            return false;
        };
        let limit = SETTLEMENT_TOTAL_LIMIT.unsigned_abs();
        let within = [captured, refunded, fees]
            .iter()
            .all(|total| total.unsigned_abs() <= limit);
        if !within && !self.events.is_empty() {
            return false;
        }
        self.events.push(event_id);
        (self.captured, self.refunded, self.fees, self.net) = (captured, refunded, fees, net);
        true
    }
}

/// A run's open items, `(event id, merchant, currency, gross, fee)`, into settlements: per
/// merchant and currency in item order, a new settlement whenever the next item does not
/// fit the current one. Fails, settling nothing, on an item no settlement can hold, and if
/// the settlements' totals differ from their items' (summed in i128, where nothing
/// overflows).
fn split(
    items: Vec<(Uuid, String, String, i64, i64)>,
) -> Result<Vec<((String, String), Batch)>, SettlementError> {
    type Key = (String, String);
    // (captured, refunded, fees, items) per merchant and currency.
    let mut expected: std::collections::BTreeMap<Key, [i128; 4]> = Default::default();
    let mut batches: Vec<(Key, Batch)> = Vec::new();
    for (event_id, merchant_id, currency, gross, fee) in items {
        let key = (merchant_id, currency);
        let totals = expected.entry(key.clone()).or_default();
        if gross >= 0 {
            totals[0] += i128::from(gross);
        } else {
            totals[1] -= i128::from(gross);
        }
        totals[2] += i128::from(fee);
        totals[3] += 1;
        let added = match batches.last_mut() {
            Some((last, batch)) if *last == key => batch.add(event_id, gross, fee),
            _ => false,
        };
        if !added {
            let mut batch = Batch::default();
            if !batch.add(event_id, gross, fee) {
                return Err(SettlementError::ItemOutOfRange(event_id));
            }
            batches.push((key, batch));
        }
    }
    let mut settled: std::collections::BTreeMap<Key, [i128; 4]> = Default::default();
    for (key, batch) in &batches {
        let totals = settled.entry(key.clone()).or_default();
        totals[0] += i128::from(batch.captured);
        totals[1] += i128::from(batch.refunded);
        totals[2] += i128::from(batch.fees);
        totals[3] += batch.events.len() as i128;
        if i128::from(batch.net)
            != i128::from(batch.captured) - i128::from(batch.refunded) - i128::from(batch.fees)
        {
            return Err(SettlementError::Inexact(format!("net of {key:?}")));
        }
    }
    if settled != expected {
        return Err(SettlementError::Inexact(format!(
            "(captured, refunded, fees, items) of the items {expected:?}, of the settlements {settled:?}"
        )));
    }
    Ok(batches)
}

/// What a settlement run writes in the caller's transaction: every open item up to
/// `cutoff` closed into settlements (one per merchant and currency, or several where one
/// would pass [`SETTLEMENT_TOTAL_LIMIT`]) and their ledger transfers. Returns the new
/// settlements' ids; their events are journaled by the outbox
/// ([`SettlementService::emit_pending`]) after the caller commits.
pub async fn close_open_items(
    conn: &mut PgConnection,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, SettlementError> {
    let items: Vec<(Uuid, String, String, i64, i64)> = sqlx::query_as(
        "SELECT event_id, merchant_id, currency, gross, fee FROM settlement_items
         WHERE settlement_id IS NULL AND occurred_at <= $1
         ORDER BY merchant_id, currency, occurred_at, event_id FOR UPDATE",
    )
    .bind(cutoff)
    .fetch_all(&mut *conn)
    .await?;
    let mut ids = Vec::new();
    for ((merchant_id, currency), batch) in split(items)? {
        let id = format!("stl_{}", Uuid::now_v7().simple());
        sqlx::query(
            "INSERT INTO settlements (id, merchant_id, currency, captured, refunded, fees, net, item_count, cutoff, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'created')",
        )
        .bind(&id)
        .bind(&merchant_id)
        .bind(&currency)
        .bind(batch.captured)
        .bind(batch.refunded)
        .bind(batch.fees)
        .bind(batch.net)
        .bind(batch.events.len() as i64)
        .bind(cutoff)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE settlement_items SET settlement_id = $1 WHERE event_id = ANY($2)")
            .bind(&id)
            .bind(&batch.events)
            .execute(&mut *conn)
            .await?;
        ledger::settlement_transaction(&id, &merchant_id, &currency, batch.net)?
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u128, gross: i64, fee: i64) -> (Uuid, String, String, i64, i64) {
        (Uuid::from_u128(n), "mer_1".into(), "EUR".into(), gross, fee)
    }

    #[test]
    fn a_settlement_fills_up_to_the_limit_and_the_next_item_starts_another() {
        let half = SETTLEMENT_TOTAL_LIMIT / 2;
        let batches = split(vec![
            item(1, half, 0),
            item(2, SETTLEMENT_TOTAL_LIMIT - half, 0),
            item(3, 1, 0),
            item(4, i64::MAX, 7),
            item(5, -i64::MAX, 0),
        ])
        .expect("split");
        let settlements: Vec<(usize, i64, i64, i64, i64)> = batches
            .iter()
            .map(|(_, b)| (b.events.len(), b.captured, b.refunded, b.fees, b.net))
            .collect();
        assert_eq!(
            settlements,
            vec![
                (2, SETTLEMENT_TOTAL_LIMIT, 0, 0, SETTLEMENT_TOTAL_LIMIT),
                (1, 1, 0, 0, 1),
                (1, i64::MAX, 0, 7, i64::MAX - 7),
                (1, 0, i64::MAX, 0, -i64::MAX),
            ],
            "exactly at the limit fits; past it, or an item past it alone, starts another"
        );
    }
}
