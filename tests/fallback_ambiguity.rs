//! Ambiguous writes during a journal outage (issue 22, defect 2): a spool COMMIT that
//! PostgreSQL applied but whose answer the node never heard must not let a retry decide on
//! the old state. Before the fix the node answered `503 journal_unavailable` ("nothing
//! recorded"), kept the payment actor's old state, and the retry (or the sweeper) spooled a
//! second `refund.succeeded` at the same sequence with a new event id: a double refund in
//! the ledger. Also: a fallback entry whose COMMIT answer was lost is adopted by the next
//! entry instead of failing on the spool's unique event id forever.

mod common;

use common::outage::{assert_in_sequence, journaled_events, outage_world};
use common::TestEnv;
use kafka_journal::producer::{NoSignals, OutgoingRecord};
use kafka_journal::spool::Spool;
use kafka_journal::{JournalOptions, JournalProducer};
use payrail_actors::fallback::{JournalFallback, SpoolOptions};
use payrail_actors::money::Currency;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_spool_commit_answer_never_yields_a_second_event_at_the_same_sequence() {
    let mut w = outage_world(
        "ambiguous_spool_commit",
        &[("PAYRAIL__ACTORS__FAULT_INJECTION", "true")],
    )
    .await;
    let body = r#"{"amount":5000,"currency":"eur","metadata":{"payrail_fault":"lose_spool_ack_on_refund.succeeded"}}"#;
    let id = w.create("paid", body).await;
    assert_eq!(w.confirm(&id).await, "succeeded");

    w.broker.kill9();
    w.wait_all_in_fallback().await;
    let refund_path = format!("/v1/payments/{id}/refunds");
    // refund.created is spooled; the processor refunds; the spool COMMIT of
    // refund.succeeded lands but its answer is lost.
    let first = w
        .post(&refund_path, Some("refund-once"), r#"{"amount":1000}"#)
        .await;
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(
        first.body["error"]["code"], "journal_outcome_unknown",
        "a write that may have landed is not 'nothing recorded': {}",
        first.body
    );
    // The client retries with the same key until it hears an answer.
    let mut last = first;
    for _ in 0..40 {
        last = w
            .post(&refund_path, Some("refund-once"), r#"{"amount":1000}"#)
            .await;
        if last.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let retried = last;
    assert!(
        retried.status == 200 || retried.status == 201,
        "the retried refund: {} {}\n{}",
        retried.status,
        retried.body,
        w.node.log_tail()
    );
    assert_eq!(retried.body["status"], "succeeded", "{}", retried.body);
    let read = w.api.get_payment(&w.key, &id).await;
    assert_eq!(read.body["amount_refunded"], 1000, "{}", read.body);

    w.broker.restart();
    w.wait_replayed(Duration::from_secs(60)).await;
    // One event per sequence: created, processing, succeeded, refund.created,
    // refund.succeeded, and nothing twice.
    let types = assert_in_sequence(&journaled_events(&w.env), &id);
    let refunds_succeeded = types.iter().filter(|t| *t == "refund.succeeded").count();
    assert_eq!(refunds_succeeded, 1, "{types:?}");
    w.node.kill9();
}

/// Issue 22, defect 8: a journal append the node gave up on can still land (a hung broker
/// writes what it had read when it resumes). With the fallback unable to take the records,
/// the command answers 503 `journal_outcome_unknown`; before the fix the payment was
/// rebuilt from the journal at once and the retry decided the capture again — a second
/// `payment.succeeded` with a new event id at the same sequence once the first landed.
/// Now the actor keeps the records in doubt and writes them again (same event ids) before
/// it decides anything else on the payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_landing_append_never_yields_a_second_event_at_its_sequence() {
    let mut w = outage_world(
        "late_append",
        &[
            ("PAYRAIL__ACTORS__FAULT_INJECTION", "true"),
            ("PAYRAIL__ACTORS__FAULT_STALL_MS", "3000"),
            // No fallback: the ambiguous append cannot be settled through the spool.
            ("PAYRAIL__SPOOL__MAX_ROWS", "0"),
        ],
    )
    .await;
    let body = r#"{"amount":5000,"currency":"eur","capture_method":"manual","metadata":{"payrail_fault":"append_late_on_payment.succeeded"}}"#;
    let id = w.create("late", body).await;
    assert_eq!(w.confirm(&id).await, "requires_capture");

    let capture_path = format!("/v1/payments/{id}/capture");
    let first = w.post(&capture_path, Some("capture-once"), "{}").await;
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(
        first.body["error"]["code"], "journal_outcome_unknown",
        "{}",
        first.body
    );
    // The client retries at once, before the first append lands.
    let retried = w.post(&capture_path, Some("capture-retried"), "{}").await;
    assert!(retried.status < 500, "{} {}", retried.status, retried.body);
    let read = w.api.get_payment(&w.key, &id).await;
    assert_eq!(read.body["status"], "succeeded", "{}", read.body);
    assert_eq!(read.body["amount_captured"], 5000, "{}", read.body);

    // The first append lands now; the journal holds one capture at its sequence.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let types = assert_in_sequence(&journaled_events(&w.env), &id);
    assert_eq!(
        types.iter().filter(|t| *t == "payment.succeeded").count(),
        1,
        "{types:?}\n{}",
        w.node.log_tail()
    );
    w.node.kill9();
}

const TOPIC: &str = "ambiguous-entry.payment.events";

fn journaled_create(sequence: u64) -> OutgoingRecord {
    let producer =
        JournalProducer::new(&JournalOptions::default(), Arc::new(NoSignals)).expect("producer");
    let currency = Currency::parse("EUR").expect("currency");
    let envelope = payrail_loadtest::bench::created_envelope(
        &format!("mer_ambiguous_{sequence}"),
        sequence,
        1_000,
        currency,
    );
    producer.record(TOPIC, 0, 0, &envelope).expect("record")
}

fn node_fallback(pool: &sqlx::PgPool) -> JournalFallback {
    let fallback = JournalFallback::new(
        Spool::new(pool.clone(), TOPIC, 1_000),
        "ambiguous-entry.payrail.snapshots".into(),
        SpoolOptions::default(),
        1,
    );
    fallback.mark_end_known(0, 0);
    fallback
}

#[tokio::test]
async fn a_fallback_entry_whose_commit_answer_was_lost_is_adopted_by_the_next_entry() {
    let env = TestEnv::new("ambiguous_entry").await;
    let pool = env.migrated_pool().await;
    let journaled = vec![journaled_create(1), journaled_create(2)];
    // The first entry commits (the journal's records 0 and 1 copied into the spool); the
    // node never hears it, so its partition is not active. Same records, same event ids.
    let first = node_fallback(&pool);
    first.journaled(0, journaled.clone(), &[0, 1], 0);
    first
        .enter(0, 0, || 2, || 0, || 0, &pool)
        .await
        .expect("the first entry");
    let unheard = node_fallback(&pool);
    unheard.journaled(0, journaled.clone(), &[0, 1], 0);
    // Record 2 was journaled after the first entry's watermark.
    unheard.journaled(0, vec![journaled_create(3)], &[2], 0);
    let entered = unheard.enter(0, 0, || 3, || 0, || 0, &pool).await;
    assert!(
        entered.is_ok(),
        "the next entry adopts the earlier one: {entered:?}"
    );
    assert!(unheard.is_active(0));
    let offsets: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT journal_offset FROM journal_spool WHERE topic = $1 ORDER BY sequence",
    )
    .bind(TOPIC)
    .fetch_all(&pool)
    .await
    .expect("spool rows");
    assert_eq!(offsets, vec![Some(0), Some(1), Some(2)], "each record once");
    let watermark: Option<i64> =
        sqlx::query_scalar("SELECT high_watermark_at_start FROM journal_fallback WHERE topic = $1")
            .bind(TOPIC)
            .fetch_one(&pool)
            .await
            .expect("fallback row");
    assert_eq!(
        watermark,
        Some(3),
        "the adopted episode covers the journal to its end"
    );
}
