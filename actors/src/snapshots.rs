//! Payment snapshots: the partition owner's projection of `payment.events` into
//! `payment_snapshots` (and the idempotency keys of creates), from which payment actors are
//! rebuilt after passivation, a restart or a takeover.

use crate::payment::machine::{evolve, EventContext};
use crate::payment::{Payment, PaymentEvent, PaymentView};
use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use kafka_journal::Envelope;
use payrail_payment::projection::NextState;
use sqlx::{PgConnection, PgPool};

mod pages;
pub use pages::{list_payments_page, list_refunds_page, payment_of_refund, Cursor, Page};

/// Name of the snapshot projector in `journal_offsets`.
pub const SNAPSHOT_CONSUMER: &str = "payrail.snapshots";

pub struct SnapshotProjector;

impl SnapshotProjector {
    /// Applies one decoded event of `partition` (what `apply` does after decoding).
    async fn apply_event(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        envelope: &Envelope<PaymentEvent>,
    ) -> Result<(), HandlerError> {
        let next = match next_state(conn, "payment_snapshots", envelope).await? {
            NextState::Store(next) => *next,
            NextState::AlreadyApplied | NextState::NotApplicable => return Ok(()),
        };
        // The same statements as a batch's, with one row.
        if envelope.sequence <= 1 {
            let mut created = NewSnapshots::default();
            created.push(next, partition, creation_key(&envelope.payload))?;
            return created.write(conn).await;
        }
        let mut row = SnapshotRows::default();
        row.push(&next, partition)?;
        row.upsert(conn).await?;
        Ok(())
    }
}

/// The idempotency key and request fingerprint of a create made under a key.
fn creation_key(event: &PaymentEvent) -> Option<(String, String)> {
    match event {
        PaymentEvent::Created(created) => created
            .idempotency_key
            .clone()
            .zip(created.request_fingerprint.clone()),
        _ => None,
    }
}

#[async_trait::async_trait]
impl PartitionHandler for SnapshotProjector {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        let envelope = record.decode::<PaymentEvent>()?;
        self.apply_event(conn, record.partition, &envelope).await
    }

    /// A batch in a few statements: the snapshots of the payments it continues are read with
    /// one query (locked), every event is applied in order to the states in memory (a
    /// payment's first event starts from nothing, as in `apply`), and the results are
    /// written with two upserts (first events with their idempotency keys, then the
    /// others), each guarded by `sequence < EXCLUDED.sequence`. The outcome is that of
    /// applying the records one by one: `evolve` is deterministic, so a payment's state
    /// after its events is the same whether the intermediate ones are written or not, and
    /// the guard keeps a row that is already further along (a redelivery) untouched.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            events.push((record.partition, record.decode::<PaymentEvent>()?));
        }
        // Payments continued by this batch whose first event is not in it before them.
        let mut started = std::collections::HashSet::new();
        let mut to_read = Vec::new();
        for (_, envelope) in &events {
            if envelope.sequence <= 1 {
                started.insert(envelope.payment_id.as_str());
            } else if !started.contains(envelope.payment_id.as_str()) {
                to_read.push(envelope.payment_id.clone());
            }
        }
        to_read.sort_unstable();
        to_read.dedup();
        let mut states = read_snapshots(conn, &to_read).await?;

        let mut creates = NewSnapshots::default();
        let mut updates = UpdatedSnapshots::default();
        for (partition, envelope) in &events {
            if envelope.sequence <= 1 && states.contains_key(&envelope.payment_id) {
                // A first event of a payment this batch already holds: `apply` would find
                // its row and write nothing.
                continue;
            }
            if envelope.sequence > 1
                && states
                    .get(&envelope.payment_id)
                    .is_some_and(|current| current.sequence + 1 < envelope.sequence)
            {
                // This batch lacks events between the state it holds and this one (they were
                // applied before, e.g. from the journal fallback's spool): judge the event
                // against the stored row, as `apply` would, after writing what is pending.
                creates.write(conn).await?;
                updates.write(conn).await?;
                states.remove(&envelope.payment_id);
                states.extend(
                    read_snapshots(conn, std::slice::from_ref(&envelope.payment_id)).await?,
                );
            }
            let prior = if envelope.sequence <= 1 {
                None
            } else {
                match states.get(&envelope.payment_id) {
                    Some(current) if current.sequence >= envelope.sequence => continue,
                    Some(current) => Some(current.clone()),
                    None => None,
                }
            };
            let ctx = EventContext {
                payment_id: &envelope.payment_id,
                merchant_id: &envelope.merchant_id,
                sequence: envelope.sequence,
                occurred_at_micros: envelope.occurred_at_micros,
            };
            let Some(mut payment) = evolve(prior, ctx, &envelope.payload) else {
                continue; // the event does not apply to the state (as `apply`)
            };
            payment.sequence = envelope.sequence;
            states.insert(payment.id.clone(), payment.clone());
            if envelope.sequence <= 1 {
                creates.push(payment, *partition, creation_key(&envelope.payload))?;
            } else {
                updates.set(payment, *partition);
            }
        }
        // First events before the events that continue them.
        creates.write(conn).await?;
        updates.write(conn).await
    }
}

/// The stored snapshots of `payment_ids`, locked for the transaction (in id order, so two
/// transactions locking several never wait for each other in a cycle).
async fn read_snapshots(
    conn: &mut PgConnection,
    payment_ids: &[String],
) -> Result<std::collections::HashMap<String, Payment>, HandlerError> {
    let mut states = std::collections::HashMap::with_capacity(payment_ids.len());
    if payment_ids.is_empty() {
        return Ok(states);
    }
    let rows: Vec<(String, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT payment_id, sequence, state FROM payment_snapshots WHERE payment_id = ANY($1) ORDER BY payment_id FOR UPDATE",
    )
    .bind(payment_ids)
    .fetch_all(&mut *conn)
    .await?;
    for (payment_id, sequence, state) in rows {
        let mut payment: Payment = serde_json::from_value(state)?;
        // The row's sequence is what `next_state` compares against.
        payment.sequence = sequence as u64;
        states.insert(payment_id, payment);
    }
    Ok(states)
}

/// The latest state of each payment a batch continued, written together by
/// [`SnapshotProjector::apply_batch`].
#[derive(Default)]
struct UpdatedSnapshots {
    /// payment id → (state, partition), the last event's state.
    latest: std::collections::HashMap<String, (Payment, i32)>,
}

impl UpdatedSnapshots {
    fn set(&mut self, payment: Payment, partition: i32) {
        self.latest.insert(payment.id.clone(), (payment, partition));
    }

    /// Writes and forgets what is pending; a row already at or past a state is left alone.
    async fn write(&mut self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        if self.latest.is_empty() {
            return Ok(());
        }
        let mut rows = SnapshotRows::default();
        for (payment, partition) in std::mem::take(&mut self.latest).into_values() {
            rows.push(&payment, partition)?;
        }
        rows.upsert(conn).await?;
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

/// One page of a merchant's payments, newest first by creation time (then id, for ties).
/// `starting_after` is the last payment of the previous page. Returns up to `limit`
/// payments and whether more exist.
pub async fn list_payments(
    pool: &PgPool,
    merchant_id: &str,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<(Vec<Payment>, bool), HandlerError> {
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT state FROM payment_snapshots
         WHERE merchant_id = $1
           AND ($2::TEXT IS NULL OR (created_at, payment_id) <
                (SELECT created_at, payment_id FROM payment_snapshots
                 WHERE payment_id = $2 AND merchant_id = $1))
         ORDER BY created_at DESC, payment_id DESC LIMIT $3",
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

/// Rows of `payment_snapshots`, column by column, written with one statement.
#[derive(Default)]
struct SnapshotRows {
    payment_ids: Vec<String>,
    merchant_ids: Vec<String>,
    partitions: Vec<i32>,
    sequences: Vec<i64>,
    states: Vec<serde_json::Value>,
    created_at: Vec<chrono::DateTime<chrono::Utc>>,
    statuses: Vec<String>,
    pending_refunds: Vec<bool>,
}

impl SnapshotRows {
    fn push(&mut self, payment: &Payment, partition: i32) -> Result<(), HandlerError> {
        debug_assert!(
            !self.payment_ids.contains(&payment.id),
            "one row per payment and statement"
        );
        // The fallible part first, so the columns never get out of step.
        self.states.push(serde_json::to_value(payment)?);
        self.created_at.push(
            chrono::DateTime::from_timestamp_micros(payment.created_at_micros).unwrap_or_default(),
        );
        self.statuses.push(payment.status.as_str().to_string());
        self.pending_refunds.push(
            payment
                .refunds
                .iter()
                .any(|r| r.status == crate::payment::RefundStatus::Pending),
        );
        self.sequences.push(payment.sequence as i64);
        self.partitions.push(partition);
        self.merchant_ids.push(payment.merchant_id.clone());
        self.payment_ids.push(payment.id.clone());
        Ok(())
    }

    /// Inserts each row, or advances a stored one; a stored row already at or past a row's
    /// sequence is left alone. Returns the ids of the rows written.
    async fn upsert(&self, conn: &mut PgConnection) -> Result<Vec<String>, HandlerError> {
        if self.payment_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "INSERT INTO payment_snapshots (payment_id, merchant_id, partition, sequence, state, created_at, status, has_pending_refund)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::jsonb[], $6::timestamptz[], $7::text[], $8::bool[])
             ON CONFLICT (payment_id) DO UPDATE
             SET sequence = EXCLUDED.sequence, state = EXCLUDED.state, updated_at = now(),
                 status = EXCLUDED.status, has_pending_refund = EXCLUDED.has_pending_refund
             WHERE payment_snapshots.sequence < EXCLUDED.sequence
             RETURNING payment_id",
        )
        .bind(&self.payment_ids)
        .bind(&self.merchant_ids)
        .bind(&self.partitions)
        .bind(&self.sequences)
        .bind(&self.states)
        .bind(&self.created_at)
        .bind(&self.statuses)
        .bind(&self.pending_refunds)
        .fetch_all(&mut *conn)
        .await?)
    }
}

/// First events of payments waiting to be written together by
/// [`SnapshotProjector::apply_batch`], with the idempotency records of those written.
#[derive(Default)]
struct NewSnapshots {
    rows: SnapshotRows,
    /// (merchant, key, fingerprint, response) of creates made under an idempotency key,
    /// by payment.
    idempotency: std::collections::HashMap<String, (String, String, String, serde_json::Value)>,
}

impl NewSnapshots {
    fn push(
        &mut self,
        payment: Payment,
        partition: i32,
        idempotency: Option<(String, String)>,
    ) -> Result<(), HandlerError> {
        // The fallible parts first, so the rows and the records stay in step.
        let record = match idempotency {
            Some((key, fingerprint)) => Some((
                payment.merchant_id.clone(),
                key,
                fingerprint,
                serde_json::to_value(PaymentView::from(&payment))?,
            )),
            None => None,
        };
        self.rows.push(&payment, partition)?;
        if let Some(record) = record {
            self.idempotency.insert(payment.id, record);
        }
        Ok(())
    }

    /// Writes and forgets what is pending. A snapshot that exists already is left alone
    /// (as in `apply`), and so is its idempotency key.
    async fn write(&mut self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        let pending = std::mem::take(self);
        let written = pending.rows.upsert(conn).await?;
        let mut idempotency = pending.idempotency;
        let (mut merchants, mut keys, mut fingerprints, mut payments, mut responses) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for payment_id in written {
            let Some((merchant, key, fingerprint, response)) = idempotency.remove(&payment_id)
            else {
                continue;
            };
            merchants.push(merchant);
            keys.push(key);
            fingerprints.push(fingerprint);
            payments.push(payment_id);
            responses.push(response);
        }
        if !keys.is_empty() {
            sqlx::query(
                "INSERT INTO idempotency_keys (merchant_id, idempotency_key, request_fingerprint, payment_id, response)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&merchants)
            .bind(&keys)
            .bind(&fingerprints)
            .bind(&payments)
            .bind(&responses)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The state of `envelope`'s payment after it, from the prior state in `table` (locked for
/// the transaction). A payment's first event starts from nothing without a read; the
/// caller's insert must then not overwrite a row that exists already (`… WHERE
/// sequence < EXCLUDED.sequence`). `table` is one of this crate's table names, never input.
async fn next_state(
    conn: &mut PgConnection,
    table: &'static str,
    envelope: &Envelope<PaymentEvent>,
) -> Result<NextState, HandlerError> {
    let stored = kafka_journal::offsets::stored_state(conn, table, envelope).await?;
    let ctx = EventContext {
        payment_id: &envelope.payment_id,
        merchant_id: &envelope.merchant_id,
        sequence: envelope.sequence,
        occurred_at_micros: envelope.occurred_at_micros,
    };
    Ok(payrail_payment::projection::next_state(
        stored,
        ctx,
        &envelope.payload,
    ))
}
