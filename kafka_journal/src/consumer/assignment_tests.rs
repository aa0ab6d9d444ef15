//! A manually assigned consumer whose partitions change while it runs (a cluster node's
//! leases), against the real broker and PostgreSQL.

use super::tests::{applied, once_each, supervision, wait_until, Recorder, WAIT};
use super::*;
use crate::test_support::World;

async fn start(world: &World, pool: &PgPool, partitions: Vec<i32>) -> ConsumerHandle {
    spawn_consumer(
        &world.options,
        supervision(3, 10),
        ConsumerSpec {
            name: world.options.group("assign"),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(partitions),
            dead_letter_topic: None,
        },
        pool.clone(),
        Arc::new(Recorder::default()),
    )
    .await
    .expect("consumer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_the_partitions_it_gains_and_stops_reading_those_it_loses() {
    let world = World::new("assign", 2).await;
    let pool = world.pool(4).await;
    let records: Vec<_> = (0..5)
        .flat_map(|n| [world.record(0, n), world.record(1, n)])
        .collect();
    world.producer.append(&records).await.expect("append");

    let consumer = start(&world, &pool, vec![]).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        applied(&pool, 0).await.is_empty(),
        "nothing assigned, nothing read"
    );

    consumer.assign([0]);
    wait_until("partition 0 read", WAIT, || {
        consumer.progress.next_offset(0) >= 5
    })
    .await;
    assert_eq!(applied(&pool, 0).await, once_each(0..5));
    assert!(
        applied(&pool, 1).await.is_empty(),
        "partition 1 is not assigned"
    );

    // Partition 0 moves away: records appended to it afterwards are not applied here.
    consumer.assign([1]);
    wait_until("partition 1 read", WAIT, || {
        consumer.progress.next_offset(1) >= 5
    })
    .await;
    world
        .producer
        .append(&[world.record(0, 5)])
        .await
        .expect("append");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        applied(&pool, 0).await,
        once_each(0..5),
        "a lost partition is not read"
    );
    assert_eq!(consumer.assigned(), std::collections::BTreeSet::from([1]));

    // Gained again: it resumes at its stored offset, and applies each record once.
    consumer.assign([0, 1]);
    wait_until("partition 0 read again", WAIT, || {
        consumer.progress.next_offset(0) >= 6
    })
    .await;
    assert_eq!(applied(&pool, 0).await, once_each(0..6));
    assert_eq!(applied(&pool, 1).await, once_each(0..5));
    consumer.stop();
}
