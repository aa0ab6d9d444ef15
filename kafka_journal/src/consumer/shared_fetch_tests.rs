//! Consumers that share one fetch ([`spawn_consumers`]), against the real broker and
//! PostgreSQL: each keeps its own offsets and applies every record exactly once.

use super::tests::{once_each, supervision, wait_until, WAIT};
use super::*;
use crate::test_support::World;
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32};

/// Records every applied offset under its consumer's name, in the worker's transaction;
/// optionally panics once at one offset, or sleeps per record.
struct Sink {
    name: String,
    panic_at: Option<i64>,
    panicked: AtomicBool,
    delay: Duration,
    applied: AtomicU32,
}

impl Sink {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            panic_at: None,
            panicked: AtomicBool::new(false),
            delay: Duration::ZERO,
            applied: AtomicU32::new(0),
        })
    }
}

#[async_trait::async_trait]
impl PartitionHandler for Sink {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        if self.panic_at == Some(record.offset) && !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("test: {} fails once at offset {}", self.name, record.offset);
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        sqlx::query(
            "INSERT INTO test_applied_by (sink, partition, record_offset) VALUES ($1, $2, $3)",
        )
        .bind(&self.name)
        .bind(record.partition)
        .bind(record.offset)
        .execute(conn)
        .await?;
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn world(label: &str, partitions: u32) -> (World, PgPool) {
    let world = World::new(label, partitions).await;
    let pool = world.pool(8).await;
    sqlx::query(
        "CREATE TABLE test_applied_by (sink TEXT NOT NULL, partition INTEGER NOT NULL, record_offset BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("test table");
    (world, pool)
}

/// How many times `sink` applied each offset of `partition`.
async fn applied_by(pool: &PgPool, sink: &str, partition: i32) -> BTreeMap<i64, i64> {
    sqlx::query(
        "SELECT record_offset, count(*) AS n FROM test_applied_by WHERE sink = $1 AND partition = $2 GROUP BY 1",
    )
    .bind(sink)
    .bind(partition)
    .fetch_all(pool)
    .await
    .expect("applied")
    .iter()
    .map(|row| (row.get::<i64, _>("record_offset"), row.get::<i64, _>("n")))
    .collect()
}

fn sink(world: &World, name: &str, handler: Arc<Sink>, partitions: Vec<i32>) -> ConsumerSink {
    ConsumerSink {
        spec: ConsumerSpec {
            name: world.options.group(name),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(partitions),
            dead_letter_topic: None,
        },
        handler,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_sharing_a_fetch_each_apply_every_record_once_from_their_own_offsets() {
    let (world, pool) = world("share", 2).await;
    world.produce(0, 12).await;
    world.produce(1, 5).await;
    // The second consumer applied partition 0 up to offset 7 in an earlier life.
    let mut conn = pool.acquire().await.expect("connection");
    offsets::store_next_offset(&mut conn, &world.options.group("b"), &world.topic, 0, 7)
        .await
        .expect("stored offset");
    drop(conn);
    let (a, b) = (Sink::new("a"), Sink::new("b"));
    let handles = spawn_consumers(
        &world.options,
        supervision(3, 50),
        vec![
            sink(&world, "a", a.clone(), vec![0, 1]),
            sink(&world, "b", b.clone(), vec![0, 1]),
        ],
        pool.clone(),
    )
    .await
    .expect("consumers");
    assert_eq!(handles.len(), 2);
    world.produce(0, 3).await;
    for handle in &handles {
        assert!(
            handle.progress.wait_for(0, 15, WAIT).await,
            "{}: partition 0",
            handle.spec.name
        );
        assert!(
            handle.progress.wait_for(1, 5, WAIT).await,
            "{}: partition 1",
            handle.spec.name
        );
    }
    assert_eq!(applied_by(&pool, "a", 0).await, once_each(0..15));
    assert_eq!(applied_by(&pool, "a", 1).await, once_each(0..5));
    assert_eq!(
        applied_by(&pool, "b", 0).await,
        once_each(7..15),
        "b applies from its own stored offset, nothing below it"
    );
    assert_eq!(applied_by(&pool, "b", 1).await, once_each(0..5));
    handles[0].stop();
}

/// A worker that fails rewinds the shared fetch when it restarts; the other consumer is not
/// held back meanwhile and applies nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consumer_on_a_shared_fetch_does_not_hold_back_the_other() {
    let (world, pool) = world("sharefail", 1).await;
    let a = Sink::new("a");
    let b = Arc::new(Sink {
        panic_at: Some(3),
        ..Arc::into_inner(Sink::new("b")).expect("fresh")
    });
    let backoff = Duration::from_millis(3_000);
    let handles = spawn_consumers(
        &world.options,
        supervision(5, backoff.as_millis() as u64),
        vec![
            sink(&world, "a", a.clone(), vec![0]),
            sink(&world, "b", b.clone(), vec![0]),
        ],
        pool.clone(),
    )
    .await
    .expect("consumers");
    world.produce(0, 6).await;
    wait_until("b's panic", WAIT, || b.panicked.load(Ordering::SeqCst)).await;
    let panicked_at = Instant::now();
    world.produce(0, 4).await;
    assert!(
        handles[0].progress.wait_for(0, 10, backoff / 2).await,
        "a waited for b's restart"
    );
    assert!(
        handles[1].progress.wait_for(0, 10, WAIT).await,
        "b did not resume after its restart"
    );
    assert!(panicked_at.elapsed() >= backoff - Duration::from_millis(200));
    assert_eq!(applied_by(&pool, "a", 0).await, once_each(0..10));
    assert_eq!(applied_by(&pool, "b", 0).await, once_each(0..10));
    handles[0].stop();
}

/// The bounded buffer: a slow consumer lets the other run ahead of it, but never by more
/// than its worker's buffer (the batch in hand, `worker_mailbox` queued, one being handed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_the_other_back_only_beyond_its_buffer() {
    let (mut world, pool) = world("shareslow", 1).await;
    world.options.worker_mailbox = 1;
    world.options.worker_batch_max = 5;
    let total = 60;
    world.produce(0, total).await;
    let fast = Sink::new("fast");
    let slow = Arc::new(Sink {
        delay: Duration::from_millis(40),
        ..Arc::into_inner(Sink::new("slow")).expect("fresh")
    });
    let handles = spawn_consumers(
        &world.options,
        supervision(3, 50),
        vec![
            sink(&world, "fast", fast.clone(), vec![0]),
            sink(&world, "slow", slow.clone(), vec![0]),
        ],
        pool.clone(),
    )
    .await
    .expect("consumers");
    let bound = (world.options.worker_mailbox as i64 + 2) * world.options.worker_batch_max as i64;
    let mut widest = 0;
    let deadline = Instant::now() + WAIT;
    while handles[1].progress.next_offset(0) < total as i64 {
        assert!(
            Instant::now() < deadline,
            "the slow consumer did not finish"
        );
        let fast_at = i64::from(fast.applied.load(Ordering::SeqCst));
        let slow_at = i64::from(slow.applied.load(Ordering::SeqCst));
        let ahead = fast_at - slow_at;
        assert!(
            ahead <= bound,
            "the fast consumer ran {ahead} records ahead of the slow one (buffer {bound})"
        );
        widest = widest.max(ahead);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        widest > 0,
        "the fast consumer never ran ahead of the slow one"
    );
    assert_eq!(
        applied_by(&pool, "fast", 0).await,
        once_each(0..total as i64)
    );
    assert_eq!(
        applied_by(&pool, "slow", 0).await,
        once_each(0..total as i64)
    );
    handles[0].stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_on_different_partitions_cannot_share_a_fetch() {
    let (world, pool) = world("sharemismatch", 2).await;
    let result = spawn_consumers(
        &world.options,
        supervision(3, 50),
        vec![
            sink(&world, "a", Sink::new("a"), vec![0]),
            sink(&world, "b", Sink::new("b"), vec![0, 1]),
        ],
        pool,
    )
    .await;
    assert!(matches!(result, Err(JournalError::Config(_))));
}
