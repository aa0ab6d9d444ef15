//! The snapshot projector's batches against the real PostgreSQL: applying a batch leaves
//! exactly the snapshots and idempotency records that applying its records one by one
//! leaves, for any batch size, for a redelivered batch, and for a batch that lacks events in
//! between (applied before from the journal fallback's spool).

mod common;

use common::*;
use kafka_journal::consumer::{ConsumedRecord, PartitionHandler};
use kafka_journal::{Codec, CodecKind, Envelope};
use payrail_actors::money::Currency;
use payrail_actors::payment::machine::EventContext;
use payrail_actors::payment::{
    decide, evolve, CaptureMethod, Command, CreatePayment, Outcome, PaymentEvent,
};
use payrail_actors::snapshots::SnapshotProjector;
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;

const MERCHANT: &str = "mer_batches";

fn create(amount: i64, capture_method: CaptureMethod, key: Option<&str>) -> Command {
    Command::Create(CreatePayment {
        amount,
        currency: Currency::parse("EUR").expect("currency"),
        customer_email: None,
        order_no: None,
        channel: None,
        metadata: BTreeMap::new(),
        capture_method,
        idempotency_key: key.map(str::to_string),
        request_fingerprint: key.map(|k| format!("fp-{k}")),
    })
}

fn confirm() -> Command {
    Command::Confirm {
        payment_method: "pm_card_visa".into(),
        capture_method: None,
        psp_reference: Some("pi_test".into()),
    }
}

fn outcome(outcome: Outcome) -> Command {
    Command::RecordOutcome(outcome)
}

/// The journal one payment's commands produce, as its actor would append it.
fn journal(payment_id: &str, commands: &[Command]) -> Vec<Envelope<PaymentEvent>> {
    let mut state = None;
    let mut envelopes = Vec::new();
    for command in commands {
        let Ok(events) = decide(state.as_ref(), command) else {
            panic!("{payment_id}: command refused: {command:?}");
        };
        for event in events {
            let sequence = envelopes.len() as u64 + 1;
            let occurred_at_micros = 1_700_000_000_000_000 + sequence as i64;
            let ctx = EventContext {
                payment_id,
                merchant_id: MERCHANT,
                sequence,
                occurred_at_micros,
            };
            state = evolve(state, ctx, &event);
            envelopes.push(Envelope {
                event_id: Uuid::now_v7(),
                event_type: event.event_type().to_string(),
                schema_version: 1,
                payment_id: payment_id.to_string(),
                merchant_id: MERCHANT.to_string(),
                sequence,
                occurred_at_micros,
                correlation_id: None,
                payload: event,
            });
        }
    }
    envelopes
}

/// Six payments along different paths, their events interleaved as one partition's log.
fn partition_log() -> Vec<ConsumedRecord> {
    let journals = [
        journal(
            "pay_auto",
            &[
                create(1_000, CaptureMethod::Automatic, Some("key-auto")),
                confirm(),
                outcome(Outcome::Succeeded {
                    psp_reference: None,
                    amount_captured: 1_000,
                }),
                Command::CreateRefund {
                    refund_id: "re_1".into(),
                    amount: Some(300),
                    reason: None,
                },
                Command::RecordRefundOutcome {
                    refund_id: "re_1".into(),
                    succeeded: true,
                    psp_reference: None,
                    code: None,
                },
            ],
        ),
        journal(
            "pay_manual",
            &[
                create(2_000, CaptureMethod::Manual, Some("key-manual")),
                confirm(),
                outcome(Outcome::Authorized {
                    psp_reference: None,
                    amount_capturable: 2_000,
                }),
                Command::Capture { amount: Some(500) },
                outcome(Outcome::Succeeded {
                    psp_reference: None,
                    amount_captured: 500,
                }),
            ],
        ),
        journal(
            "pay_canceled",
            &[
                create(300, CaptureMethod::Automatic, None),
                Command::Cancel { reason: None },
            ],
        ),
        journal(
            "pay_failed",
            &[
                create(400, CaptureMethod::Automatic, Some("key-failed")),
                confirm(),
                outcome(Outcome::Failed {
                    code: "card_declined".into(),
                    message: "declined".into(),
                }),
            ],
        ),
        journal(
            "pay_refund_pending",
            &[
                create(600, CaptureMethod::Automatic, Some("key-refund-pending")),
                confirm(),
                outcome(Outcome::Succeeded {
                    psp_reference: None,
                    amount_captured: 600,
                }),
                Command::CreateRefund {
                    refund_id: "re_2".into(),
                    amount: Some(100),
                    reason: None,
                },
            ],
        ),
        journal(
            "pay_expired",
            &[
                create(500, CaptureMethod::Manual, None),
                confirm(),
                outcome(Outcome::Authorized {
                    psp_reference: None,
                    amount_capturable: 500,
                }),
                Command::Expire,
            ],
        ),
    ];
    let longest = journals.iter().map(Vec::len).max().unwrap_or(0);
    let mut log = Vec::new();
    for i in 0..longest {
        for journal in &journals {
            if let Some(envelope) = journal.get(i) {
                log.push(record(envelope, log.len() as i64));
            }
        }
    }
    log
}

fn record(envelope: &Envelope<PaymentEvent>, offset: i64) -> ConsumedRecord {
    let codec = CodecKind::Bincode;
    ConsumedRecord {
        topic: "batches.payment.events".into(),
        partition: 0,
        offset,
        key: Some(MERCHANT.as_bytes().to_vec()),
        event_type: Some(envelope.event_type.clone()),
        event_id: Some(envelope.event_id),
        content_type: Some(codec.content_type().to_string()),
        value: codec.encode(envelope).expect("encode"),
        timestamp_ms: None,
        owner_epoch: 0,
    }
}

async fn database(name: &str) -> PgPool {
    TestEnv::new(name).await.migrated_pool().await
}

async fn one_by_one(pool: &PgPool, records: &[ConsumedRecord]) {
    for record in records {
        let mut tx = pool.begin().await.expect("transaction");
        SnapshotProjector
            .apply(&mut tx, record)
            .await
            .expect("apply");
        tx.commit().await.expect("commit");
    }
}

async fn in_batches(pool: &PgPool, records: &[ConsumedRecord], size: usize) {
    for chunk in records.chunks(size) {
        let refs: Vec<&ConsumedRecord> = chunk.iter().collect();
        let mut tx = pool.begin().await.expect("transaction");
        SnapshotProjector
            .apply_batch(&mut tx, &refs)
            .await
            .expect("apply_batch");
        tx.commit().await.expect("commit");
    }
}

/// Every snapshot (id, sequence, state, status, pending refund) and idempotency record.
async fn stored(
    pool: &PgPool,
) -> (
    Vec<(String, i64, String, String, bool)>,
    Vec<(String, String, String)>,
) {
    let snapshots: Vec<(String, i64, String, String, bool)> = sqlx::query_as(
        "SELECT payment_id, sequence, state::text, status, has_pending_refund FROM payment_snapshots ORDER BY payment_id",
    )
    .fetch_all(pool)
    .await
    .expect("snapshots");
    // The columns read without the JSON (status, pending refund, sequence) agree with it.
    for (payment_id, sequence, state, status, pending) in &snapshots {
        let state: serde_json::Value = serde_json::from_str(state).expect("state json");
        assert_eq!(
            state["sequence"], *sequence,
            "{payment_id}: sequence column"
        );
        assert_eq!(
            state["status"],
            status.as_str(),
            "{payment_id}: status column"
        );
        let has_pending = state["refunds"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["status"] == "pending"));
        assert_eq!(
            has_pending, *pending,
            "{payment_id}: has_pending_refund column"
        );
    }
    let keys = sqlx::query_as(
        "SELECT idempotency_key, payment_id, response::text FROM idempotency_keys ORDER BY idempotency_key",
    )
    .fetch_all(pool)
    .await
    .expect("idempotency keys");
    (snapshots, keys)
}

#[tokio::test]
async fn a_batch_leaves_what_applying_its_records_one_by_one_leaves() {
    let log = partition_log();
    let expected = database("snapbatch_ref").await;
    one_by_one(&expected, &log).await;
    let expected = stored(&expected).await;
    assert_eq!(expected.0.len(), 6, "six snapshots");
    assert_eq!(expected.1.len(), 4, "four idempotency records");
    assert!(
        expected.0.iter().any(|row| row.4),
        "a payment ends with a pending refund"
    );
    for size in [2, 3, 7, log.len()] {
        let pool = database(&format!("snapbatch_{size}")).await;
        in_batches(&pool, &log, size).await;
        assert_eq!(stored(&pool).await, expected, "batches of {size}");
    }
}

#[tokio::test]
async fn a_redelivered_batch_changes_nothing() {
    let log = partition_log();
    let pool = database("snapbatch_redeliver").await;
    one_by_one(&pool, &log).await;
    let before = stored(&pool).await;
    in_batches(&pool, &log, log.len()).await;
    in_batches(&pool, &log[3..], 4).await;
    // The whole log twice in one batch: each payment's first event appears twice.
    in_batches(&pool, &[log.clone(), log.clone()].concat(), 2 * log.len()).await;
    assert_eq!(stored(&pool).await, before);
}

/// The journal fallback writes snapshots from its spool; when those events then reach the
/// projector, a batch can hold a payment's first event and a later one without the events in
/// between. The later one must continue the stored state, not the first event's.
#[tokio::test]
async fn a_batch_lacking_events_in_between_continues_the_stored_row() {
    let log = partition_log();
    let expected = database("snapbatch_gap_ref").await;
    one_by_one(&expected, &log).await;
    let expected = stored(&expected).await;

    let pool = database("snapbatch_gap").await;
    let auto: Vec<&ConsumedRecord> = log
        .iter()
        .filter(|r| r.decode::<PaymentEvent>().expect("decode").payment_id == "pay_auto")
        .collect();
    assert!(auto.len() >= 4, "pay_auto has {} events", auto.len());
    // Everything up to pay_auto's last event but one applied one by one (as the spool did)...
    let cut = auto[auto.len() - 2].offset as usize;
    one_by_one(&pool, &log[..=cut]).await;
    // ...then a batch holding its first event again and everything after the cut.
    let mut batch: Vec<ConsumedRecord> = vec![auto[0].clone()];
    batch.extend(log[cut + 1..].iter().cloned());
    in_batches(&pool, &batch, batch.len()).await;
    assert_eq!(stored(&pool).await, expected);
}
