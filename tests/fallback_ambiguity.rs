//! Ambiguous writes during a journal outage (issue 22, defect 2): a spool COMMIT that
//! PostgreSQL applied but whose answer the node never heard must not let a retry decide on
//! the old state. Before the fix the node answered `503 journal_unavailable` ("nothing
//! recorded"), kept the payment actor's old state, and the retry (or the sweeper) spooled a
//! second `refund.succeeded` at the same sequence with a new event id: a double refund in
//! the ledger. Also: a fallback entry whose COMMIT answer was lost is adopted by the next
//! entry instead of failing on the spool's unique event id forever.

mod common;

use common::outage::{
    assert_in_sequence, journaled_events, journaled_events_fenced, outage_world, start_node,
};
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
    let (mut w, id) = capture_in_doubt("late_append", "append_late_on_payment.succeeded").await;
    let capture_path = format!("/v1/payments/{id}/capture");
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

/// A write in doubt when its node dies (issue 22, the single node's half of defect 8's
/// open window): the capture's append timed out on a hung broker (503
/// `journal_outcome_unknown`), the node was SIGKILLed before it could write it again, a
/// new node started and rebuilt the payment from the journal, the client's retry was
/// decided on it — and only then did the hung broker write the first append. A single node
/// used to write under epoch 0 for ever, so the journal then held two `payment.succeeded`
/// at one sequence, both applied by every reader (a double capture in the ledger). Now each
/// start raises the partitions' epochs and journals a marker before the node learns the
/// journal's end: the late record lands behind it under the old epoch, and every reader
/// drops it. The fault `park_append_on_<type>` hands the timed-out append to this test,
/// which plays the hung broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_left_in_doubt_by_a_dead_node_is_fenced_when_it_lands_after_the_restart() {
    let (mut w, id) =
        capture_in_doubt("restart_in_doubt", "park_append_on_payment.succeeded").await;
    let capture_path = format!("/v1/payments/{id}/capture");
    let parked_path = payrail_actors::payment_actor::parked_append_path(&id);
    let parked: Vec<OutgoingRecord> =
        serde_json::from_slice(&std::fs::read(&parked_path).expect("the parked append"))
            .expect("parked records");
    assert_eq!(parked.len(), 1, "{parked:?}");
    let late_id = parked[0].headers.event_id.clone();

    // The node dies with the write in doubt; its next incarnation rebuilds from the journal,
    // which does not hold the capture yet, and the client's retry is decided on that.
    w.node.kill9();
    let port = w.node.port;
    w.node = start_node(&w.env, port, &w.node_extra).await;
    // (The PSP's webhook for the capture it made may decide it first: then the retry finds
    // the payment captured.)
    let retried = w.post(&capture_path, Some("capture-retried"), "{}").await;
    assert!(
        retried.status == 200 || retried.status == 409,
        "{} {}\n{}",
        retried.status,
        retried.body,
        w.node.log_tail()
    );
    let read = w.api.get_payment(&w.key, &id).await;
    assert_eq!(read.body["status"], "succeeded", "{}", read.body);

    // The hung broker writes the first append now.
    let options = JournalOptions {
        brokers: w.env.brokers.clone(),
        ..JournalOptions::default()
    };
    let producer = JournalProducer::new(&options, Arc::new(NoSignals)).expect("producer");
    producer.append(&parked).await.expect("the late append");

    // Every reader drops it: it was written under the dead incarnation's epoch, behind the
    // restarted node's marker.
    let (journal, fenced) = journaled_events_fenced(&w.env);
    let types = assert_in_sequence(&journal, &id);
    assert_eq!(
        types.iter().filter(|t| *t == "payment.succeeded").count(),
        1,
        "{types:?}"
    );
    assert!(
        fenced.contains(&late_id),
        "the late capture {late_id} is fenced; fenced: {fenced:?}"
    );
    // The read models agree: the payment is captured once, and the audit (which replays
    // the journal through the same fence) finds the ledger and analytics right.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = w.api.get_payment(&w.key, &id).await;
    assert_eq!(read.body["amount_captured"], 5000, "{}", read.body);
    let (ok, differences, text) = common::chaos::audit(&w.env);
    assert!(ok && differences == Some(0), "{text}");
    w.node.kill9();
    let _ = std::fs::remove_file(&parked_path);
}

/// A node without fallback (spool off) whose manual-capture payment's capture answered 503
/// `journal_outcome_unknown` because of `fault` (an injected append fault on
/// `payment.succeeded`); returns the world and the payment id.
async fn capture_in_doubt(name: &str, fault: &str) -> (common::outage::Outage, String) {
    let w = outage_world(
        name,
        &[
            ("PAYRAIL__ACTORS__FAULT_INJECTION", "true"),
            ("PAYRAIL__ACTORS__FAULT_STALL_MS", "3000"),
            // No fallback: the ambiguous append cannot be settled through the spool.
            ("PAYRAIL__SPOOL__MAX_ROWS", "0"),
        ],
    )
    .await;
    let body = format!(
        r#"{{"amount":5000,"currency":"eur","capture_method":"manual","metadata":{{"payrail_fault":"{fault}"}}}}"#
    );
    let id = w.create(name, &body).await;
    assert_eq!(w.confirm(&id).await, "requires_capture");
    let first = w
        .post(
            &format!("/v1/payments/{id}/capture"),
            Some("capture-once"),
            "{}",
        )
        .await;
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(
        first.body["error"]["code"], "journal_outcome_unknown",
        "{}",
        first.body
    );
    (w, id)
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
