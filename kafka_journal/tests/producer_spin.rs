//! The producer's broker thread must sleep while a partition waits for its produce response.
//!
//! librdkafka 2.12's idempotent producer sends a partition's next request only when fewer
//! than 5 *messages* are in flight there, but it sets the broker thread's next wake-up to
//! "now" as soon as a batch is ready, before that limit is applied: with records queued
//! behind a request in flight the thread spins until the response comes back
//! (docs/DECISIONS.md, "Three nodes on one machine"). `JournalProducer` keeps those records
//! in its own partition lane instead, so librdkafka only ever holds what it may send.
//!
//! librdkafka's mock cluster is used here for what a real broker cannot be told to do: take
//! 100 ms to answer every request (a fault injection, per the project's standards).
//! This file is its own test binary, and its tests take turns (`ONE_AT_A_TIME`), so no
//! other test's librdkafka threads are counted.

use kafka_journal::envelope::EventHeaders;
use kafka_journal::producer::{NoSignals, OutgoingRecord};
use kafka_journal::{JournalOptions, JournalProducer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The spin test counts every broker thread of the process: the tests here run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// CPU seconds used so far by this process's librdkafka broker threads (`rdk:broker…`),
/// read from /proc (user + system ticks).
fn broker_threads_cpu_seconds() -> f64 {
    // USER_HZ: 100 on every Linux the project runs on.
    let ticks_per_second = 100.0;
    let mut ticks = 0u64;
    let mut threads = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        panic!("/proc/self/task is not readable");
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("rdk:broker") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        ticks += utime + stime;
        threads += 1;
    }
    // Without this, a renamed thread would make every measurement 0 and the test pass.
    assert!(
        threads > 0,
        "no librdkafka broker thread (rdk:broker…) found"
    );
    ticks as f64 / ticks_per_second
}

fn record(topic: &str, i: usize) -> OutgoingRecord {
    OutgoingRecord {
        topic: topic.to_string(),
        partition: 0,
        key: format!("merchant-{}", i % 7),
        headers: EventHeaders {
            event_type: "spin.test".into(),
            event_id: format!("event-{i}"),
            schema_version: "1".into(),
            content_type: "application/octet-stream".into(),
            owner_epoch: 0,
        },
        value: vec![7u8; 200],
    }
}

/// A producer on a one-partition `topic` of librdkafka's mock broker, connected (its
/// first append done) before every later request is made to take `round_trip`.
async fn slow_broker(
    topic: &str,
    round_trip: Duration,
    produce_timeout_ms: u64,
) -> (
    MockCluster<'static, DefaultProducerContext>,
    JournalProducer,
) {
    let mock = MockCluster::new(1).expect("librdkafka mock cluster");
    mock.create_topic(topic, 1, 1).expect("mock topic");
    let options = JournalOptions {
        brokers: mock.bootstrap_servers(),
        partitions: 1,
        produce_timeout_ms,
        ..JournalOptions::default()
    };
    let producer = JournalProducer::new(&options, Arc::new(NoSignals)).expect("producer");
    producer
        .append(&[record(topic, 0)])
        .await
        .expect("first append");
    mock.broker_round_trip_time(-1, round_trip)
        .expect("round trip delay");
    (mock, producer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_behind_a_slow_produce_response_do_not_spin_the_broker_thread() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const ROUND_TRIP: Duration = Duration::from_millis(100);
    const APPENDS: usize = 200;
    const ARRIVAL_GAP: Duration = Duration::from_millis(5);
    let topic = "spin-test";
    let (_mock, producer) = slow_broker(topic, ROUND_TRIP, 5_000).await;

    let cpu_before = broker_threads_cpu_seconds();
    let started = Instant::now();
    // One append every ARRIVAL_GAP, each from a caller of its own: while a request is in
    // flight (ROUND_TRIP) about twenty more records arrive behind it.
    let mut appenders = Vec::new();
    for i in 0..APPENDS {
        let producer = producer.clone();
        appenders.push(tokio::spawn(async move {
            tokio::time::sleep(ARRIVAL_GAP * i as u32).await;
            let receipts = producer
                .append(&[record(topic, 1 + i)])
                .await
                .expect("append through the slow broker");
            receipts[0].offset
        }));
    }
    let mut offsets = Vec::new();
    for appender in appenders {
        offsets.push(appender.await.expect("appender task"));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = broker_threads_cpu_seconds() - cpu_before;

    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(
        offsets.len(),
        APPENDS,
        "every append got an offset of its own"
    );
    assert!(
        wall >= ROUND_TRIP.as_secs_f64(),
        "the appends waited for the slow broker ({wall:.2} s)"
    );
    let busy = cpu / wall;
    eprintln!("broker threads: {cpu:.2} CPU s over {wall:.2} s wall ({busy:.2} of a core)");
    assert!(
        busy < 0.25,
        "librdkafka's broker threads used {busy:.2} of a core while waiting \
         ({cpu:.2} CPU s over {wall:.2} s): the producer thread spins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_waiting_in_a_lane_fail_at_once_when_the_appends_in_flight_are_abandoned() {
    // The breaker abandons the appends in flight so commands move to the fallback now;
    // appends still waiting in a lane must fail with them, not be handed to the next
    // producer and wait for a broker that is presumed dead.
    let _turn = ONE_AT_A_TIME.lock().await;
    const ROUND_TRIP: Duration = Duration::from_millis(3_000);
    let topic = "abandon-test";
    let (_mock, producer) = slow_broker(topic, ROUND_TRIP, 20_000).await;

    // Five records in flight fill the lane; the three appends after them wait in it.
    let in_flight = {
        let producer = producer.clone();
        let five: Vec<_> = (1..=5).map(|i| record(topic, i)).collect();
        tokio::spawn(async move { producer.append(&five).await })
    };
    // Wide margins (a loaded CI machine may run a spawned task late), still well inside the
    // 3 s round trip of the five in flight.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let waiting: Vec<_> = (6..9)
        .map(|i| {
            let producer = producer.clone();
            tokio::spawn(async move { producer.append(&[record(topic, i)]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let abandoned = Instant::now();
    producer.abandon_in_flight();
    assert!(
        in_flight.await.expect("append task").is_err(),
        "the append in flight was abandoned"
    );
    for append in waiting {
        let outcome = append.await.expect("append task");
        assert!(
            outcome.is_err(),
            "an append waiting in the lane fails with the abandoned ones: {outcome:?}"
        );
    }
    let took = abandoned.elapsed();
    assert!(
        took < ROUND_TRIP / 3,
        "the waiting appends failed at once, not after the slow broker answered ({took:?})"
    );
}
