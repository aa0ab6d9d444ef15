//! Consumer tests against the real broker (`PAYRAIL_TEST_BROKERS`, default 127.0.0.1:9092)
//! and real PostgreSQL (`PAYRAIL_TEST_DATABASE_URL`); each test has its own database and
//! topic namespace. `bash scripts/test.sh` starts both.

use super::worker::{GapGuard, GapVerdict};
use super::*;
use crate::test_support::World;
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

pub(super) const WAIT: Duration = Duration::from_secs(20);

/// Records every applied offset in `test_applied`, in the worker's transaction (so a
/// rolled-back batch leaves no trace); panics on chosen offsets a chosen number of times.
#[derive(Default)]
pub(super) struct Recorder {
    /// (partition, offset) → panics left (u32::MAX: always).
    panics: Mutex<HashMap<(i32, i64), u32>>,
    panicked: AtomicBool,
}

impl Recorder {
    fn panicking_on(partition: i32, offset: i64, times: u32) -> Self {
        let recorder = Self::default();
        if let Ok(mut panics) = recorder.panics.lock() {
            panics.insert((partition, offset), times);
        }
        recorder
    }

    fn should_panic(&self, record: &ConsumedRecord) -> bool {
        let Ok(mut panics) = self.panics.lock() else {
            return false;
        };
        match panics.get_mut(&(record.partition, record.offset)) {
            Some(left) if *left > 0 => {
                *left = left.saturating_sub(1);
                true
            }
            _ => false,
        }
    }
}

#[async_trait::async_trait]
impl PartitionHandler for Recorder {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        if self.should_panic(record) {
            self.panicked.store(true, Ordering::SeqCst);
            panic!("test: poison record at offset {}", record.offset);
        }
        sqlx::query("INSERT INTO test_applied (partition, record_offset) VALUES ($1, $2)")
            .bind(record.partition)
            .bind(record.offset)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// How many times each offset of `partition` was applied.
pub(super) async fn applied(pool: &PgPool, partition: i32) -> BTreeMap<i64, i64> {
    sqlx::query(
        "SELECT record_offset, count(*) AS n FROM test_applied WHERE partition = $1 GROUP BY 1",
    )
    .bind(partition)
    .fetch_all(pool)
    .await
    .expect("applied")
    .iter()
    .map(|row| (row.get::<i64, _>("record_offset"), row.get::<i64, _>("n")))
    .collect()
}

pub(super) fn once_each(offsets: std::ops::Range<i64>) -> BTreeMap<i64, i64> {
    offsets.map(|o| (o, 1)).collect()
}

pub(super) fn supervision(max_restarts: u32, backoff_ms: u64) -> Supervision {
    Supervision {
        restart: RestartPolicy {
            max_restarts,
            window_ms: 60_000,
            backoff_base_ms: backoff_ms,
            backoff_max_ms: backoff_ms,
        },
        escalations: Escalations::new(),
    }
}

pub(super) async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Defect: after a seek back, a batch already queued behind the one that caused it, which
/// also starts past the next offset, was applied, and the offsets in between were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_queued_behind_a_seek_back_is_not_applied_past_the_gap() {
    let world = World::new("gap", 1).await;
    let offsets = world.produce(0, 20).await;
    assert_eq!(offsets.first(), Some(&0));
    let pool = world.pool(4).await;
    let name = world.options.group("gap");
    // PostgreSQL says offset 5 is next; the broker starts the consumer at 10 (as a stale
    // group offset or a reset would).
    let mut conn = pool.acquire().await.expect("connection");
    offsets::store_next_offset(&mut conn, &name, &world.topic, 0, 5)
        .await
        .expect("stored offset");
    drop(conn);
    let workers: Workers = Arc::new(Mutex::new(HashMap::new()));
    let consumer =
        new_consumer(&world.options, &name, "gap-test", true, workers.clone()).expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&world.topic, 0, Offset::Offset(10))
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let progress = ConsumerProgress::default();
    let shared = Arc::new(Shared {
        consumer: consumer.clone(),
        spec: ConsumerSpec {
            name: name.clone(),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(vec![0]),
            dead_letter_topic: None,
        },
        pool: pool.clone(),
        handler: Arc::new(Recorder::default()),
        workers,
        progress: progress.clone(),
        mailbox: 4,
        max_attempts: 3,
        retry_base: Duration::from_millis(50),
        supervision: supervision(3, 50),
        manual: true,
        shares_fetch: false,
        generations: AtomicU64::new(0),
        shutdown: shutdown_rx.clone(),
        dead_letters: None,
    });
    // Two batches fetched from offset 10 before any seek: the first makes the worker seek
    // back to 5, the second waits in its mailbox behind it.
    let (actor, mailbox) = shared.start(0).await.expect("worker started");
    let batch = |from: i64| -> Vec<ConsumedRecord> {
        (from..from + 2)
            .map(|offset| ConsumedRecord {
                topic: world.topic.clone(),
                partition: 0,
                offset,
                key: None,
                event_type: Some("test.event".into()),
                event_id: Some(Uuid::now_v7()),
                content_type: Some("application/json".into()),
                value: b"{}".to_vec(),
                timestamp_ms: None,
                owner_epoch: 0,
            })
            .collect()
    };
    for from in [10, 12] {
        let permit = mailbox.clone().acquire_owned().await.expect("permit");
        actor
            .cast(WorkerMsg::Batch(batch(from), permit))
            .expect("worker alive");
    }
    let (_assignment, assignment_rx) = watch::channel(std::collections::BTreeSet::from([0]));
    let dispatcher = Dispatcher {
        consumer,
        manual: true,
        sinks: vec![shared.clone()],
        batch_max: 500,
        assigned: std::collections::BTreeSet::from([0]),
        assignment: assignment_rx,
        assignment_open: true,
    };
    tokio::spawn(dispatcher.run(shutdown_rx));
    assert!(
        progress.wait_for(0, 20, WAIT).await,
        "partition 0 did not reach offset 20"
    );
    assert_eq!(
        applied(&pool, 0).await,
        once_each(5..20),
        "no offset skipped"
    );
}

/// Defect: the restart backoff slept inside the dispatcher, stalling every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_partition_does_not_hold_back_the_others() {
    let world = World::new("stall", 2).await;
    let pool = world.pool(4).await;
    let recorder = Arc::new(Recorder::panicking_on(0, 2, 1));
    let backoff = Duration::from_millis(3_000);
    let consumer = spawn_consumer(
        &world.options,
        supervision(5, backoff.as_millis() as u64),
        ConsumerSpec {
            name: world.options.group("stall"),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(vec![0, 1]),
            dead_letter_topic: None,
        },
        pool.clone(),
        recorder.clone(),
    )
    .await
    .expect("consumer");
    world.produce(0, 5).await;
    wait_until("the worker's panic", WAIT, || {
        recorder.panicked.load(Ordering::SeqCst)
    })
    .await;
    let panicked_at = Instant::now();
    // More for the failed partition, then for the healthy one.
    world.produce(0, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.produce(1, 4).await;
    assert!(
        consumer.progress.wait_for(1, 4, backoff / 2).await,
        "partition 1 waited for partition 0's restart backoff"
    );
    assert!(
        consumer.progress.wait_for(0, 6, WAIT).await,
        "partition 0 did not resume after its restart"
    );
    assert!(
        panicked_at.elapsed() >= backoff - Duration::from_millis(200),
        "partition 0 resumed before its backoff ({:?})",
        panicked_at.elapsed()
    );
    assert_eq!(applied(&pool, 0).await, once_each(0..6));
    assert_eq!(applied(&pool, 1).await, once_each(0..4));
    consumer.stop();
}

/// Defect: a worker that could not start (PostgreSQL away in `pre_start`) ended the
/// consumer silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_is_retried_with_backoff() {
    let world = World::new("spawn", 1).await;
    // One connection: while the test holds it, the worker's `pre_start` cannot load its
    // offset (acquire times out after 300 ms).
    let pool = world.pool(1).await;
    let sup = supervision(10, 200);
    let escalations = sup.escalations.clone();
    let consumer = spawn_consumer(
        &world.options,
        sup,
        ConsumerSpec {
            name: world.options.group("spawn"),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(vec![0]),
            dead_letter_topic: None,
        },
        pool.clone(),
        Arc::new(Recorder::default()),
    )
    .await
    .expect("consumer");
    let held = pool.acquire().await.expect("the only connection");
    world.produce(0, 4).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        consumer.progress.next_offset(0),
        0,
        "nothing can be applied while PostgreSQL is away"
    );
    drop(held);
    assert!(
        consumer.progress.wait_for(0, 4, WAIT).await,
        "the worker was not started again once PostgreSQL was back"
    );
    assert_eq!(applied(&pool, 0).await, once_each(0..4));
    assert!(escalations.is_clear(), "{:?}", escalations.recent());
    consumer.stop();
}

/// Defect: a worker over its restart intensity ended the consumer silently. Now the give-up
/// is escalated, that partition stays stopped and the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_intensity_escalates_and_the_others_go_on() {
    let world = World::new("giveup", 2).await;
    let pool = world.pool(4).await;
    let sup = supervision(2, 50);
    let escalations = sup.escalations.clone();
    let name = world.options.group("giveup");
    let consumer = spawn_consumer(
        &world.options,
        sup,
        ConsumerSpec {
            name: name.clone(),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(vec![0, 1]),
            dead_letter_topic: None,
        },
        pool.clone(),
        Arc::new(Recorder::panicking_on(0, 1, u32::MAX)),
    )
    .await
    .expect("consumer");
    world.produce(0, 3).await;
    let escalation = tokio::time::timeout(WAIT, escalations.first())
        .await
        .expect("a give-up is escalated");
    assert_eq!(escalation.child, "partition worker 0");
    assert_eq!(escalation.supervisor, format!("consumer {name}"));
    world.produce(1, 3).await;
    assert!(
        consumer.progress.wait_for(1, 3, WAIT).await,
        "partition 1 stopped with partition 0"
    );
    assert_eq!(applied(&pool, 1).await, once_each(0..3));
    let stopped = applied(&pool, 0).await;
    assert!(
        stopped.iter().all(|(offset, n)| *offset < 1 && *n == 1),
        "partition 0 stopped at the poison: {stopped:?}"
    );
    consumer.stop();
}

#[test]
fn a_real_gap_is_crossed_after_one_seek_back() {
    let mut guard = GapGuard::default();
    // Offsets 5..8 do not exist; the broker fetched from 10 first.
    assert_eq!(guard.check(5, 10, 4), GapVerdict::SeekBack);
    assert_eq!(guard.check(5, 12, 4), GapVerdict::Drop, "stale batch");
    // The fetch after the seek starts at the first existing offset, 8.
    assert_eq!(guard.check(5, 8, 4), GapVerdict::Apply);
    assert_eq!(guard.check(10, 10, 4), GapVerdict::Apply);
}

#[test]
fn stale_batches_are_bounded_then_the_guard_seeks_again() {
    let mut guard = GapGuard::default();
    assert_eq!(guard.check(5, 10, 2), GapVerdict::SeekBack);
    assert_eq!(guard.check(5, 12, 2), GapVerdict::Drop);
    assert_eq!(guard.check(5, 14, 2), GapVerdict::Drop);
    // More than the mailbox can hold: fetched after the seek, so the log starts past 10
    // (e.g. retention); seek once more and accept what the broker then starts at.
    assert_eq!(guard.check(5, 30, 2), GapVerdict::SeekBack);
    assert_eq!(guard.check(5, 30, 2), GapVerdict::Apply);
}

#[test]
fn a_failed_seek_is_retried_by_the_next_batch() {
    let mut guard = GapGuard::default();
    assert_eq!(guard.check(5, 10, 4), GapVerdict::SeekBack);
    guard.seek_failed();
    assert_eq!(guard.check(5, 12, 4), GapVerdict::SeekBack);
}

/// Fails (an error, not a panic) on chosen offsets until healed; records the rest like
/// [`Recorder`].
#[derive(Default)]
struct Poisoned {
    poison: Vec<(i32, i64)>,
    healed: AtomicBool,
    recorder: Recorder,
}

#[async_trait::async_trait]
impl PartitionHandler for Poisoned {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        if !self.healed.load(Ordering::SeqCst)
            && self.poison.contains(&(record.partition, record.offset))
        {
            return Err(format!("test: cannot apply offset {}", record.offset).into());
        }
        self.recorder.apply(conn, record).await
    }
}

/// Reads every record of `topic`'s partition 0 with an independent client.
fn read_all(options: &JournalOptions, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", format!("dlq-reader-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Timeout::After(WAIT))
        .expect("watermarks");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(low))
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while (out.len() as i64) < high - low {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.expect("record").detach());
        }
    }
    out
}

fn header(message: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A record that fails every attempt lands in `journal_dead_letters` and in the pool's DLQ
/// topic, the partition moves on, and a replay applies it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_to_table_and_topic_and_replayed_once() {
    let mut world = World::new("dlq", 1).await;
    world.options.worker_max_attempts = 2;
    world.options.worker_retry_base_ms = 10;
    let pool = world.pool(4).await;
    let name = world.options.group("payrail.test");
    let dlq_topic = world.options.dead_letter_topic("payrail.test");
    let handler = Arc::new(Poisoned {
        poison: vec![(0, 2)],
        ..Poisoned::default()
    });
    let consumer = spawn_consumer(
        &world.options,
        supervision(3, 50),
        ConsumerSpec {
            name: name.clone(),
            topic: world.topic.clone(),
            assignment: Assignment::Manual(vec![0]),
            dead_letter_topic: Some(dlq_topic.clone()),
        },
        pool.clone(),
        handler.clone(),
    )
    .await
    .expect("consumer");
    let offsets = world.produce(0, 5).await;
    assert!(
        consumer.progress.wait_for(0, 5, WAIT).await,
        "the partition moved on past the poison record"
    );
    let mut expected = once_each(0..5);
    expected.remove(&2);
    assert_eq!(applied(&pool, 0).await, expected);

    let letters = crate::dead_letters::list(&pool, &name).await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].record_offset, offsets[2]);
    assert!(letters[0].error.contains("cannot apply offset 2"));
    assert_eq!(letters[0].replayed_at, None);

    let published = read_all(&world.options, &dlq_topic);
    assert_eq!(published.len(), 1, "one record on {dlq_topic}");
    let dead = &published[0];
    assert_eq!(
        header(dead, "dlq_original_topic").as_deref(),
        Some(world.topic.as_str())
    );
    assert_eq!(header(dead, "dlq_original_partition").as_deref(), Some("0"));
    assert_eq!(header(dead, "dlq_original_offset").as_deref(), Some("2"));
    assert!(header(dead, "dlq_error").is_some_and(|e| e.contains("cannot apply offset 2")));
    assert_eq!(
        header(dead, EventHeaders::EVENT_ID),
        letters[0].event_id.map(|id| id.to_string())
    );
    assert_eq!(dead.payload(), Some(&b"{\"n\":2}"[..]));

    // The handler is fixed; the replay applies the dead letter once, a second one nothing.
    handler.healed.store(true, Ordering::SeqCst);
    let first = crate::dead_letters::replay(&pool, &name, handler.as_ref(), None)
        .await
        .expect("replay");
    assert_eq!(first.applied, 1, "{first:?}");
    let second = crate::dead_letters::replay(&pool, &name, handler.as_ref(), None)
        .await
        .expect("second replay");
    assert_eq!(second, Default::default(), "nothing left to replay");
    assert_eq!(applied(&pool, 0).await, once_each(0..5));
    let letters = crate::dead_letters::list(&pool, &name).await.expect("list");
    assert!(letters[0].replayed_at.is_some());
    consumer.stop();
}
