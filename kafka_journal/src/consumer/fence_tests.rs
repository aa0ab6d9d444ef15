//! Epoch fencing in the consumer, against the real broker and PostgreSQL: a record written
//! under a superseded owner epoch after a new owner's marker takes effect nowhere, also
//! after the consumer restarts (the fence is stored with its position).

use super::tests::{applied, supervision, wait_until, Recorder, WAIT};
use super::*;
use crate::fence::OWNER_CHANGED;
use crate::test_support::World;

fn with_epoch(
    world: &World,
    n: usize,
    epoch: u64,
    event_type: Option<&str>,
) -> crate::producer::OutgoingRecord {
    let mut record = world.record(0, n);
    record.headers.owner_epoch = epoch;
    if let Some(event_type) = event_type {
        record.headers.event_type = event_type.to_string();
    }
    record
}

async fn start(world: &World, pool: &PgPool, recorder: Arc<Recorder>) -> ConsumerHandle {
    spawn_consumer(
        &world.options,
        supervision(3, 10),
        ConsumerSpec {
            name: world.options.group("fence"),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(vec![0]),
            dead_letter_topic: None,
        },
        pool.clone(),
        recorder,
    )
    .await
    .expect("consumer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_append_after_the_owner_change_marker_takes_effect_nowhere() {
    let world = World::new("fence", 1).await;
    let pool = world.pool(4).await;
    let records = vec![
        with_epoch(&world, 0, 1, None), // offset 0: the old owner
        with_epoch(&world, 1, 2, Some(OWNER_CHANGED)), // offset 1: the new owner's marker
        with_epoch(&world, 2, 1, None), // offset 2: the zombie's late append
        with_epoch(&world, 3, 2, None), // offset 3: the new owner
    ];
    let receipts = world.producer.append(&records).await.expect("append");
    assert_eq!(
        receipts.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );

    let consumer = start(&world, &pool, Arc::new(Recorder::default())).await;
    wait_until("the consumer at offset 4", WAIT, || {
        consumer.progress.next_offset(0) >= 4
    })
    .await;
    assert_eq!(
        applied(&pool, 0).await,
        [(0, 1), (3, 1)].into_iter().collect()
    );
    consumer.stop();

    // Restarted, the consumer still knows epoch 2: another late append is ignored too.
    let stored = offsets::load_owner_epoch(&pool, &world.options.group("fence"), &world.topic, 0)
        .await
        .expect("stored epoch");
    assert_eq!(stored, 2);
    world
        .producer
        .append(&[
            with_epoch(&world, 4, 1, None),
            with_epoch(&world, 5, 2, None),
        ])
        .await
        .expect("append");
    let consumer = start(&world, &pool, Arc::new(Recorder::default())).await;
    wait_until("the consumer at offset 6", WAIT, || {
        consumer.progress.next_offset(0) >= 6
    })
    .await;
    assert_eq!(
        applied(&pool, 0).await,
        [(0, 1), (3, 1), (5, 1)].into_iter().collect()
    );
    consumer.stop();
}
