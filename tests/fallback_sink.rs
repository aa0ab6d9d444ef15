//! The pools' side of fallback delivery against the real PostgreSQL: a pool that lagged
//! when the journal failed catches up from the journal records copied into the spool, in
//! offset order, and applies the partition's fallback events only after every journal
//! record below the high watermark recorded when the fallback began; a redelivered batch
//! takes effect once. A recording handler stands in for a pool's projection.

mod common;

use common::*;
use kafka_journal::consumer::{ConsumedRecord, ConsumerProgress, HandlerError, PartitionHandler};
use kafka_journal::spool::Spool;
use payrail_actors::fallback::sink::{DeliveredBatch, DeliveredEvent};
use payrail_actors::fallback::{JournalFallback, PoolSink, SinkPool, SpoolOptions};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use uuid::Uuid;

const TOPIC: &str = "sink-test.payment.events";
const CONSUMER: &str = "sink-test.payrail.ledger";

/// Records what it applied, in the pool's transaction (so a rolled-back apply leaves none).
struct Recording;

#[async_trait::async_trait]
impl PartitionHandler for Recording {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        // A label the test wrote, or (an encoded envelope) the event's offset.
        let label = String::from_utf8(record.value.clone())
            .ok()
            .filter(|text| !text.contains('\0'))
            .unwrap_or_else(|| format!("journal@{}", record.offset));
        sqlx::query("INSERT INTO sink_applied (label) VALUES ($1)")
            .bind(label)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn sink(name: &str) -> (PoolSink, PgPool) {
    let env = TestEnv::new(name).await;
    let pool = env.migrated_pool().await;
    sqlx::query("CREATE TABLE sink_applied (n BIGSERIAL PRIMARY KEY, label TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("test table");
    let sink = PoolSink::new(
        pool.clone(),
        TOPIC.into(),
        3,
        vec![SinkPool {
            consumer: CONSUMER.into(),
            handler: Arc::new(Recording),
            progress: ConsumerProgress::default(),
        }],
    );
    (sink, pool)
}

async fn set_offset(pool: &PgPool, next: i64) {
    let mut conn = pool.acquire().await.expect("connection");
    kafka_journal::offsets::store_next_offset(&mut conn, CONSUMER, TOPIC, 1, next)
        .await
        .expect("offset");
}

async fn stored_offset(pool: &PgPool) -> Option<i64> {
    kafka_journal::offsets::load_next_offset(pool, CONSUMER, TOPIC, 1)
        .await
        .expect("offset")
}

async fn applied(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT label FROM sink_applied ORDER BY n")
        .fetch_all(pool)
        .await
        .expect("applied")
}

/// A spool row: copied from the journal at `offset`, or a fallback event (`None`).
fn event(sequence: i64, offset: Option<i64>, label: &str) -> DeliveredEvent {
    DeliveredEvent {
        spool_sequence: sequence,
        journal_offset: offset,
        key: "mer_1".into(),
        event_id: Uuid::now_v7(),
        event_type: "payment.created".into(),
        schema_version: "1".into(),
        content_type: "application/json".into(),
        value_hex: hex::encode(label),
        owner_epoch: 0,
    }
}

fn batch(high: i64, events: Vec<DeliveredEvent>) -> DeliveredBatch {
    DeliveredBatch {
        topic: TOPIC.into(),
        partition: 1,
        high_watermark_at_start: high,
        copied_from: Some(3),
        pool: None,
        events,
    }
}

/// Journal offsets 3..=7 were copied (the journal ended at 8), then two fallback events.
fn outage_spool() -> Vec<DeliveredEvent> {
    let mut events: Vec<DeliveredEvent> = (3..=7)
        .map(|o| event(o - 2, Some(o), &format!("journal@{o}")))
        .collect();
    events.push(event(6, None, "fallback-1"));
    events.push(event(7, None, "fallback-2"));
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_pool_catches_up_from_copied_records_before_it_applies_fallback_events() {
    let (sink, pool) = sink("sink_catch_up").await;
    set_offset(&pool, 5).await; // applied 0..=4 from the journal before it failed
    let outcome = sink
        .apply(&batch(8, outage_spool()))
        .await
        .expect("applied");
    assert_eq!(outcome.applied_through, 7);
    assert!(outcome.held_back.is_empty());
    assert_eq!(
        applied(&pool).await,
        [
            "journal@5",
            "journal@6",
            "journal@7",
            "fallback-1",
            "fallback-2"
        ],
        "offset order first, then the fallback events; nothing below its offset again"
    );
    assert_eq!(stored_offset(&pool).await, Some(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_events_wait_while_the_pool_is_below_the_high_watermark() {
    let (sink, pool) = sink("sink_hold_back").await;
    set_offset(&pool, 2).await; // lagged past what was copied (3..=7)
    let spool = outage_spool();
    let outcome = sink
        .apply(&batch(8, spool.clone()))
        .await
        .expect("answered");
    assert_eq!(outcome.applied_through, 0, "nothing taken");
    assert_eq!(outcome.held_back, vec![CONSUMER.to_string()]);
    assert!(applied(&pool).await.is_empty(), "no event out of order");

    // Fallback events alone (nothing copied covers the pool's gap, e.g. a pool on
    // another node) wait too.
    let fallback_only: Vec<DeliveredEvent> = spool[5..].to_vec();
    let outcome = sink
        .apply(&batch(8, fallback_only.clone()))
        .await
        .expect("answered");
    assert_eq!(outcome.applied_through, 5, "nothing taken");
    assert!(applied(&pool).await.is_empty(), "no event out of order");

    // The journal returned and the pool applied it up to the high watermark.
    set_offset(&pool, 8).await;
    let outcome = sink.apply(&batch(8, spool)).await.expect("applied");
    assert_eq!(outcome.applied_through, 7);
    assert_eq!(applied(&pool).await, ["fallback-1", "fallback-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_batch_takes_effect_once() {
    let (sink, pool) = sink("sink_once").await;
    set_offset(&pool, 8).await;
    let spool = outage_spool();
    sink.apply(&batch(8, spool.clone())).await.expect("first");
    let again = sink.apply(&batch(8, spool)).await.expect("second");
    assert_eq!(again.applied_through, 7);
    assert_eq!(applied(&pool).await, ["fallback-1", "fallback-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_batch_is_refused_and_applies_nothing() {
    let (sink, pool) = sink("sink_invalid").await;
    set_offset(&pool, 8).await;
    let mut unordered = outage_spool();
    unordered.swap(5, 6);
    assert!(sink.apply(&batch(8, unordered)).await.is_err());
    let mut bad_hex = outage_spool();
    bad_hex[6].value_hex = "zz".into();
    assert!(sink.apply(&batch(8, bad_hex)).await.is_err());
    let mut wrong_topic = batch(8, outage_spool());
    wrong_topic.topic = "other.payment.events".into();
    assert!(sink.apply(&wrong_topic).await.is_err());
    let mut wrong_partition = batch(8, outage_spool());
    wrong_partition.partition = 3;
    assert!(sink.apply(&wrong_partition).await.is_err());
    assert!(applied(&pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_records_are_applied_across_offsets_absent_from_the_log() {
    let (gap_sink, pool) = sink("sink_gap").await;
    let (strict, strict_pool) = sink("sink_gap_strict").await;
    set_offset(&pool, 4).await;
    // Offset 5 is absent from the log (the broker skipped it); everything journaled from 3
    // was copied.
    let mut events: Vec<DeliveredEvent> = [3, 4, 6, 7]
        .iter()
        .enumerate()
        .map(|(i, o)| event(i as i64 + 1, Some(*o), &format!("journal@{o}")))
        .collect();
    events.push(event(5, None, "fallback-1"));
    let outcome = gap_sink
        .apply(&batch(8, events.clone()))
        .await
        .expect("applied");
    assert_eq!(outcome.applied_through, 5);
    assert_eq!(
        applied(&pool).await,
        ["journal@4", "journal@6", "journal@7", "fallback-1"]
    );
    assert_eq!(stored_offset(&pool).await, Some(8));

    // Without the promise that the copies are complete, a gap stops the pool.
    set_offset(&strict_pool, 4).await;
    let mut unpromised = batch(8, events);
    unpromised.copied_from = None;
    let outcome = strict.apply(&unpromised).await.expect("answered");
    assert_eq!(outcome.applied_through, 2, "stops before the gap");
    assert_eq!(applied(&strict_pool).await, ["journal@4"]);
}

/// The HTTP sink fences like the journal worker: after a new owner's marker, a spooled
/// event of the superseded epoch is passed over, and the raised epoch is stored with the
/// pool's offset for its journal worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_owners_event_is_applied_nowhere_by_the_sink() {
    let (sink, pool) = sink("sink_fence").await;
    set_offset(&pool, 0).await;
    let mut marker = event(2, None, "marker");
    marker.event_type = kafka_journal::fence::OWNER_CHANGED.into();
    marker.owner_epoch = 2;
    let mut zombie = event(3, None, "zombie");
    zombie.owner_epoch = 1;
    let mut current = event(4, None, "current");
    current.owner_epoch = 2;
    let mut old = event(1, None, "before-takeover");
    old.owner_epoch = 1;
    sink.apply(&batch(0, vec![old, marker, zombie, current]))
        .await
        .expect("applied");
    assert_eq!(applied(&pool).await, ["before-takeover", "current"]);
    let epoch = kafka_journal::offsets::load_owner_epoch(&pool, CONSUMER, TOPIC, 1)
        .await
        .expect("epoch");
    assert_eq!(epoch, 2);
}

// Issue 22, defect 1: the promise a fallback entry writes (`copied_from`) must hold for
// the pool that relies on it. The tail in memory holds only what this node journaled since
// it learnt the journal's end, less what its bound pushed out; a pool behind that must not
// be told the copies are complete, or it jumps past records it never applied.

/// A create journaled to partition 1 (a real envelope: entering fallback projects it).
fn journaled_create(n: u64) -> kafka_journal::producer::OutgoingRecord {
    let producer = kafka_journal::JournalProducer::new(
        &kafka_journal::JournalOptions::default(),
        Arc::new(kafka_journal::producer::NoSignals),
    )
    .expect("producer");
    let currency = payrail_actors::money::Currency::parse("EUR").expect("currency");
    let envelope =
        payrail_loadtest::bench::created_envelope(&format!("mer_tail_{n}"), n, 1_000, currency);
    producer.record(TOPIC, 1, 0, &envelope).expect("record")
}

/// A node's fallback for the sink's topic that learnt the journal's end at `end`, keeping
/// at most `tail_max` unapplied records, that then journaled `offsets` (applied by every
/// consumer below `floor`).
fn node_fallback(
    pool: &PgPool,
    end: i64,
    tail_max: usize,
    offsets: &[i64],
    floor: i64,
) -> JournalFallback {
    let fallback = JournalFallback::new(
        Spool::new(pool.clone(), TOPIC, 1_000),
        "sink-test.payrail.snapshots".into(),
        std::sync::Arc::new(payrail_actors::snapshots::SnapshotProjector),
        SpoolOptions {
            unprojected_tail_max: tail_max,
            ..SpoolOptions::default()
        },
        3,
    );
    fallback.mark_end_known(1, end);
    for offset in offsets {
        fallback.journaled(1, vec![journaled_create(*offset as u64)], &[*offset], floor);
    }
    fallback
}

/// What the node's delivery sends the pool for partition 1: the spool's rows with the
/// episode's watermark and promise.
async fn delivered(fallback: &JournalFallback) -> DeliveredBatch {
    let episodes = fallback.spool().episodes().await.expect("episodes");
    let (_, _, high, copied_from) = episodes
        .into_iter()
        .find(|(partition, ..)| *partition == 1)
        .expect("partition 1 in fallback");
    let rows = fallback.spool().after(1, 0, 1_000).await.expect("rows");
    DeliveredBatch {
        topic: TOPIC.into(),
        partition: 1,
        high_watermark_at_start: high.expect("watermark"),
        copied_from,
        pool: None,
        events: rows
            .into_iter()
            .filter_map(DeliveredEvent::from_spooled)
            .collect(),
    }
}

/// A pool at `pool_at` when a node that learnt the journal's end at `end` (keeping
/// `tail_max` records) journaled `offsets` up to 7 and entered fallback; the node's
/// delivery then reached the pool. What the pool took, what it applied, where it stands.
async fn pool_after_the_entry(
    name: &str,
    pool_at: i64,
    end: i64,
    tail_max: usize,
    offsets: &[i64],
) -> (Vec<String>, Vec<String>, Option<i64>) {
    let (sink, pool) = sink(name).await;
    set_offset(&pool, pool_at).await;
    let fallback = node_fallback(&pool, end, tail_max, offsets, pool_at);
    fallback
        .enter(1, 0, || 7, || 7, || pool_at, &pool)
        .await
        .expect("entered");
    let outcome = sink
        .apply(&delivered(&fallback).await)
        .await
        .expect("answered");
    (
        outcome.held_back,
        applied(&pool).await,
        stored_offset(&pool).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_behind_where_a_restarted_node_began_waits_for_the_journal() {
    // Behind (at 2) when the node restarted at journal end 5.
    let (held_back, applied, offset) =
        pool_after_the_entry("tail_restarted", 2, 5, 100, &[5, 6]).await;
    assert_eq!(held_back, vec![CONSUMER.to_string()]);
    assert!(applied.is_empty(), "records 2..=4 are in no copy");
    assert_eq!(offset, Some(2), "no jump past 2..=4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_the_tails_bound_pushed_past_waits_for_the_journal() {
    // The tail keeps 2 records: 3 and 4 are pushed out before the pool applied them (the
    // snapshot projector had: only a pool's loss, which does not stop the entry).
    let (held_back, applied, offset) =
        pool_after_the_entry("tail_overflowed", 3, 0, 2, &[3, 4, 5, 6]).await;
    assert_eq!(held_back, vec![CONSUMER.to_string()]);
    assert!(applied.is_empty(), "records 3 and 4 are in no copy");
    assert_eq!(offset, Some(3), "no jump past 3 and 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_where_the_tail_is_complete_catches_up_from_the_copies() {
    let (held_back, applied, offset) =
        pool_after_the_entry("tail_complete", 5, 5, 100, &[5, 6]).await;
    assert!(held_back.is_empty(), "{held_back:?}");
    assert_eq!(applied, ["journal@5", "journal@6"]);
    assert_eq!(offset, Some(7));
}

/// A node that journaled 5 and 6 from end 5 and entered fallback at 7, its pool at 5: the
/// batch its delivery sends, as the network brings it.
async fn entered_and_delivered(name: &str) -> (PoolSink, PgPool, DeliveredBatch) {
    let (sink, pool) = sink(name).await;
    set_offset(&pool, 5).await;
    let fallback = node_fallback(&pool, 5, 100, &[5, 6], 5);
    fallback
        .enter(1, 0, || 7, || 7, || 5, &pool)
        .await
        .expect("entered");
    let batch = delivered(&fallback).await;
    assert_eq!(batch.events.len(), 2, "the two copies");
    (sink, pool, batch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_is_the_spools_is_admitted_with_the_spools_watermark_and_promise() {
    let (sink, _pool, mut batch) = entered_and_delivered("admit_genuine").await;
    let (high, copied_from) = (batch.high_watermark_at_start, batch.copied_from);
    // A sender that says less than the spool: the spool's later watermark holds.
    batch.high_watermark_at_start = 0;
    let admitted = sink.admit(batch).await.expect("the spool's own rows");
    assert_eq!(admitted.high_watermark_at_start, high);
    assert_eq!(admitted.copied_from, copied_from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_is_not_the_spools_is_refused_and_moves_no_offset_or_epoch() {
    type Forgery = (&'static str, fn(&mut DeliveredBatch));
    let forgeries: [Forgery; 5] = [
        ("journal offset far ahead", |b| {
            b.events[0].journal_offset = Some(1_000_000_000)
        }),
        ("owner epoch far ahead", |b| {
            b.events[0].owner_epoch = 1 << 40
        }),
        ("another value", |b| {
            b.events[1].value_hex = hex::encode("forged")
        }),
        ("another event id", |b| {
            b.events[1].event_id = Uuid::now_v7()
        }),
        ("a sequence the spool never had", |b| {
            b.events[1].spool_sequence = 999
        }),
    ];
    let (sink, pool, genuine) = entered_and_delivered("admit_forged").await;
    for (case, forge) in forgeries {
        let mut batch = genuine.clone();
        forge(&mut batch);
        let refused = sink.admit(batch).await;
        assert!(
            matches!(
                refused,
                Err(payrail_actors::fallback::sink::SinkError::Invalid(_))
            ),
            "{case}: {refused:?}"
        );
    }
    let epoch: i64 = sqlx::query_scalar(
        "SELECT owner_epoch FROM journal_offsets WHERE consumer = $1 AND partition = 1",
    )
    .bind(CONSUMER)
    .fetch_one(&pool)
    .await
    .expect("offset row");
    assert_eq!(stored_offset(&pool).await, Some(5), "no offset moved");
    assert_eq!(epoch, 0, "no epoch moved");
    assert!(applied(&pool).await.is_empty());
}
