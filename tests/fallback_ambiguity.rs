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
use common::{eventually, TestEnv};
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
    assert_captured_once_without(&mut w, &id, &late_id).await;
}

/// The spool path's twin of the test above (issue 22): the node dies with a capture in
/// doubt *after* its partition entered fallback, the broker goes down, and the restarted
/// node takes the partition over through the spool (its owner-change marker is spooled, not
/// journaled) and decides the client's retry. When the broker returns, the hung broker's
/// copy of the first capture lands *before* the replay journals the marker, so the marker
/// cannot fence it; the range the takeover voided does. Before: two `payment.succeeded` at
/// sequence 4, both applied (a double capture in the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_doubt_landing_before_a_spooled_marker_takes_effect_nowhere() {
    let mut w = outage_world(
        "spooled_marker_in_doubt",
        &[("PAYRAIL__ACTORS__FAULT_INJECTION", "true")],
    )
    .await;
    let body = r#"{"amount":5000,"currency":"eur","capture_method":"manual","metadata":{"payrail_fault":"park_append_and_die_on_payment.succeeded"}}"#;
    let id = w.create("spooled-marker", body).await;
    assert_eq!(w.confirm(&id).await, "requires_capture");
    let capture_path = format!("/v1/payments/{id}/capture");
    // The append is parked (the hung broker holds it), the partition enters fallback, and
    // the node dies before it spools the capture again: no answer reaches the client.
    let first = reqwest::Client::new()
        .post(format!("{}{capture_path}", w.node.base))
        .bearer_auth(&w.key)
        .header("Idempotency-Key", "capture-once")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await;
    assert!(
        first
            .as_ref()
            .map_or(true, |r| r.status().is_server_error()),
        "{first:?}"
    );
    assert!(
        w.node
            .exited_within(Duration::from_secs(10))
            .await
            .is_some(),
        "the node dies with the write in doubt\n{}",
        w.node.log_tail()
    );
    let parked_path = payrail_actors::payment_actor::parked_append_path(&id);
    let parked: Vec<OutgoingRecord> =
        serde_json::from_slice(&std::fs::read(&parked_path).expect("the parked append"))
            .expect("parked records");
    let late_id = parked[0].headers.event_id.clone();
    let pool = w.env.pool().await;
    let spooled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM journal_spool WHERE event_id = $1::uuid")
            .bind(&late_id)
            .fetch_one(&pool)
            .await
            .expect("spool");
    assert_eq!(spooled, 0, "the write in doubt is not in the spool");

    // The broker goes down; the restarted node takes the partition over through the spool
    // and decides the client's retry on its snapshot, which lacks the first capture.
    w.broker.kill9();
    let port = w.node.port;
    let extra: Vec<(&str, &str)> = w
        .node_extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Only this partition was in fallback: the others wait for the journal.
    w.node = common::NodeProcess::start_listening_on(&w.env, port, &extra).await;
    let retried = eventually(Duration::from_secs(30), || async {
        let r = w.post(&capture_path, Some("capture-retried"), "{}").await;
        (r.status == 200 || r.status == 409).then_some(r)
    })
    .await;
    assert!(
        retried.is_some(),
        "the retry is served in fallback\n{}",
        w.node.log_tail()
    );
    let read = w.api.get_payment(&w.key, &id).await;
    assert_eq!(read.body["status"], "succeeded", "{}", read.body);

    // The broker returns and lands the first capture before the node replays its spool
    // (the node is held still meanwhile, so the late write surely comes first).
    w.node.signal("-STOP");
    w.broker.restart();
    let options = JournalOptions {
        brokers: w.env.brokers.clone(),
        ..JournalOptions::default()
    };
    let producer = JournalProducer::new(&options, Arc::new(NoSignals)).expect("producer");
    producer.append(&parked).await.expect("the late append");
    w.node.signal("-CONT");
    w.wait_replayed(Duration::from_secs(60)).await;

    let raw = journaled_events(&w.env);
    assert!(
        raw[&id]
            .values()
            .flatten()
            .any(|(event, _)| *event == late_id),
        "the late capture is in the journal"
    );
    assert_captured_once_without(&mut w, &id, &late_id).await;
}

/// Asserts that every reader (an independent one, the node's snapshot, ledger and analytics
/// through the audit) took `id`'s capture once and dropped the late copy `late_id`; then
/// stops the node and removes the parked file.
async fn assert_captured_once_without(w: &mut common::outage::Outage, id: &str, late_id: &str) {
    let (journal, fenced) = journaled_events_fenced(&w.env).await;
    let types = assert_in_sequence(&journal, id);
    assert_eq!(
        types.iter().filter(|t| *t == "payment.succeeded").count(),
        1,
        "{types:?}"
    );
    assert!(
        fenced.iter().any(|f| f == late_id),
        "the late capture {late_id} is fenced; fenced: {fenced:?}"
    );
    // The audit replays the journal through the same rules as every reader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = w.api.get_payment(&w.key, id).await;
    assert_eq!(read.body["amount_captured"], 5000, "{}", read.body);
    let (ok, differences, text) = common::chaos::audit(&w.env);
    assert!(ok && differences == Some(0), "{text}");
    w.node.kill9();
    let _ = std::fs::remove_file(payrail_actors::payment_actor::parked_append_path(id));
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
        std::sync::Arc::new(payrail_actors::snapshots::SnapshotProjector),
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

/// A takeover in fallback voids what older epochs write from the episode's end on — unless
/// a reader already went past that end: a record there was applied, and voiding it would
/// split the readers. The takeover then spools nothing and waits for the journal.
#[tokio::test]
async fn a_takeover_in_fallback_voids_nothing_a_reader_has_gone_past() {
    let env = TestEnv::new("void_past_reader").await;
    let pool = env.migrated_pool().await;
    let old_owner = node_fallback(&pool);
    old_owner.journaled(
        0,
        vec![journaled_create(1), journaled_create(2)],
        &[0, 1],
        0,
    );
    old_owner
        .enter(0, 0, || 2, || 0, || 0, &pool)
        .await
        .expect("the old owner enters fallback at the journal's end 2");
    sqlx::query(
        "INSERT INTO partition_leases (partition, owner_node_id, epoch) VALUES (0, 'b', 1)",
    )
    .execute(&pool)
    .await
    .expect("the new owner's lease");
    let producer =
        JournalProducer::new(&JournalOptions::default(), Arc::new(NoSignals)).expect("producer");
    let marker =
        kafka_journal::fence::owner_changed_marker(&producer, TOPIC, 0, 1, "b").expect("marker");
    // A pool applied offset 2: the broker was back, and whatever was journaled there counts.
    let mut conn = pool.acquire().await.expect("connection");
    kafka_journal::offsets::store_next_offset(&mut conn, "ledger", TOPIC, 0, 3)
        .await
        .expect("a pool's position");
    let new_owner = node_fallback(&pool);
    let taken = new_owner.take_over(0, 1, &marker, &pool).await;
    assert!(matches!(taken, Ok(None)), "{taken:?}");
    let voids: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_void_fences")
        .fetch_one(&pool)
        .await
        .expect("voids");
    let markers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM journal_spool WHERE event_id = $1::uuid")
            .bind(&marker.headers.event_id)
            .fetch_one(&pool)
            .await
            .expect("spool");
    assert_eq!(
        (voids, markers),
        (0, 0),
        "nothing voided, no marker spooled"
    );

    // No reader past the episode's end: the range is voided and the marker spooled.
    sqlx::query("DELETE FROM journal_offsets")
        .execute(&pool)
        .await
        .expect("positions");
    let taken = new_owner.take_over(0, 1, &marker, &pool).await;
    assert!(matches!(taken, Ok(Some(2))), "{taken:?}");
    let void: (i64, i64) =
        sqlx::query_as("SELECT epoch, from_offset FROM journal_void_fences WHERE topic = $1")
            .bind(TOPIC)
            .fetch_one(&pool)
            .await
            .expect("the voided range");
    assert_eq!(void, (1, 2));
}
