//! Spool tests against the real PostgreSQL and, for replay, the real broker.

use super::*;
use crate::envelope::EventHeaders;
use crate::test_support::World;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use std::time::Duration;

fn record(world: &World, partition: i32, n: usize) -> OutgoingRecord {
    world.record(partition, n)
}

/// (event id, value) of every record of `partition`, in journal order.
fn journal(world: &World, partition: i32) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &world.options.brokers)
        .set("group.id", format!("spool-test-{}", Uuid::now_v7()))
        .create()
        .expect("reader");
    let (low, high) = consumer
        .fetch_watermarks(&world.topic, partition, Duration::from_secs(10))
        .expect("watermarks");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(&world.topic, partition, rdkafka::Offset::Offset(low))
        .expect("tpl");
    consumer.assign(&list).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (out.len() as i64) < high - low && std::time::Instant::now() < deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) {
            let id = msg
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == EventHeaders::EVENT_ID)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .unwrap_or_default();
            out.push((id, msg.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_back_in_spool_order_with_their_headers() {
    let world = World::new("spool_order", 2).await;
    let spool = Spool::new(world.pool(2).await, world.topic.clone(), 100);
    let first: Vec<_> = (0..3).map(|n| record(&world, 1, n)).collect();
    let second: Vec<_> = (3..5).map(|n| record(&world, 1, n)).collect();
    assert_eq!(
        spool.append(1, &first, Some(7)).await.expect("spooled"),
        vec![1, 2, 3]
    );
    assert_eq!(
        spool.append(1, &second, Some(99)).await.expect("spooled"),
        vec![4, 5]
    );
    let pending = spool.pending(1, 10).await.expect("pending");
    let ids: Vec<_> = pending
        .iter()
        .map(|r| r.record.headers.event_id.clone())
        .collect();
    let expected: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|r| r.headers.event_id.clone())
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(pending[0].record.value, first[0].value);
    assert!(spool.in_fallback(1).await.expect("state"));
    assert!(!spool.in_fallback(0).await.expect("state"));
    let depths = spool.depths().await.expect("depths");
    assert_eq!(depths.len(), 1);
    assert_eq!(depths[0].rows, 5);
    assert_eq!(
        depths[0].high_watermark_at_start,
        Some(7),
        "the first append's watermark"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_and_records_nothing() {
    let world = World::new("spool_full", 1).await;
    let spool = Spool::new(world.pool(2).await, world.topic.clone(), 3);
    let two: Vec<_> = (0..2).map(|n| record(&world, 0, n)).collect();
    spool.append(0, &two, None).await.expect("within the bound");
    let more: Vec<_> = (2..4).map(|n| record(&world, 0, n)).collect();
    assert!(matches!(
        spool.append(0, &more, None).await,
        Err(SpoolError::Full(3))
    ));
    assert_eq!(
        spool.pending(0, 10).await.expect("pending").len(),
        2,
        "nothing of it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_appends_in_order_removes_acknowledged_rows_and_ends_the_fallback() {
    let world = World::new("spool_replay", 2).await;
    let spool = Spool::new(world.pool(2).await, world.topic.clone(), 100);
    world.produce(0, 2).await; // journal records from before the fallback
    let spooled: Vec<_> = (0..5).map(|n| record(&world, 0, n)).collect();
    spool
        .append(0, &spooled[..2], Some(2))
        .await
        .expect("spooled");
    spool
        .append(0, &spooled[2..], Some(2))
        .await
        .expect("spooled");
    let replayed = spool.replay(&world.producer, 0, 2).await.expect("replayed");
    assert_eq!(replayed, 5);
    assert!(spool.pending(0, 10).await.expect("pending").is_empty());
    assert!(
        !spool.in_fallback(0).await.expect("state"),
        "fallback ended"
    );
    let journal = journal(&world, 0);
    let tail: Vec<_> = journal[2..].iter().map(|(id, _)| id.clone()).collect();
    let expected: Vec<_> = spooled.iter().map(|r| r.headers.event_id.clone()).collect();
    assert_eq!(tail, expected, "spool order, same event ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_rows_left_stays_in_fallback() {
    let world = World::new("spool_stays", 1).await;
    let spool = Spool::new(world.pool(2).await, world.topic.clone(), 100);
    spool
        .append(0, &[record(&world, 0, 0)], None)
        .await
        .expect("spooled");
    assert!(!spool.finish_if_empty(0).await.expect("checked"));
    assert!(spool.in_fallback(0).await.expect("state"));
    let pending = spool.pending(0, 1).await.expect("pending");
    spool
        .remove_through(0, pending[0].sequence)
        .await
        .expect("removed");
    assert!(spool.finish_if_empty(0).await.expect("checked"));
    assert!(!spool.in_fallback(0).await.expect("state"));
}

/// The spool.max_rows check reads a per-partition counter (migration 0026) instead of
/// counting the spool; it must follow appends and removals exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_counter_follows_appends_and_removals() {
    let world = World::new("spool_counter", 2).await;
    let pool = world.pool(2).await;
    let spool = Spool::new(pool.clone(), world.topic.clone(), 4);
    let counted = || async {
        let counter: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(spooled_rows), 0)::bigint FROM journal_fallback WHERE topic = $1",
        )
        .bind(&world.topic)
        .fetch_one(&pool)
        .await
        .expect("counter");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_spool WHERE topic = $1")
            .bind(&world.topic)
            .fetch_one(&pool)
            .await
            .expect("rows");
        (counter, rows)
    };
    let three: Vec<_> = (0..3).map(|n| record(&world, 0, n)).collect();
    spool.append(0, &three, None).await.expect("spooled");
    spool
        .append(1, &[record(&world, 1, 0)], None)
        .await
        .expect("spooled");
    assert_eq!(counted().await, (4, 4));
    assert!(
        matches!(
            spool.append(1, &[record(&world, 1, 1)], None).await,
            Err(SpoolError::Full(4))
        ),
        "the bound holds"
    );
    spool.mark_replayed(0, 2, 2).await.expect("replayed");
    assert_eq!(counted().await, (2, 2));
    spool.remove_through(1, 1).await.expect("removed");
    assert_eq!(counted().await, (1, 1));
    spool
        .append(1, &[record(&world, 1, 2)], None)
        .await
        .expect("room again");
    assert_eq!(counted().await, (2, 2));
}
