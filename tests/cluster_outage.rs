//! A cluster through a journal outage: a node that dies while the broker is down leaves its
//! acknowledged commands in the spool, and the node that takes its partitions over serves
//! them — during the outage through the spool, after it through the journal — losing,
//! forking and repeating nothing (real broker, real PostgreSQL, loopback).

mod common;

use common::chaos::{audit_with, journal_events_in};
use common::cluster::*;
use common::{read_journal, TestEnv};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Short timeouts so an outage is noticed and a takeover retried within a test's patience.
const FAST: [(&str, &str); 4] = [
    ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "2000"),
    ("PAYRAIL__JOURNAL__ADMIN_TIMEOUT_MS", "2000"),
    ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "500"),
    ("PAYRAIL__SPOOL__REPLAY_INTERVAL_MS", "100"),
];

/// A broker of the test's own (it is killed and restarted), used by `env`'s nodes.
fn private_broker(env: &mut TestEnv) -> common::broker::PrivateBroker {
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let broker = common::broker::PrivateBroker::start(&broker_dir, common::free_port());
    env.brokers = broker.brokers();
    broker
}

/// Creates a payment through `api` until it answers 201 (with the broker down: spooled);
/// its id.
async fn spooled_create(
    api: &common::Api,
    key: &str,
    idempotency_key: &str,
    amount: u64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = format!(r#"{{"amount":{amount},"currency":"eur"}}"#);
    loop {
        let reply = api.create_payment(key, Some(idempotency_key), &body).await;
        if reply.status == 201 {
            return reply.body["id"].as_str().expect("id").to_string();
        }
        assert!(Instant::now() < deadline, "never spooled: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of `partition`'s spool and whether its fallback row is there.
async fn spool_of(pool: &sqlx::PgPool, partition: i32) -> (Vec<(String, i64)>, bool) {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, owner_epoch FROM journal_spool WHERE partition = $1 ORDER BY sequence",
    )
    .bind(partition)
    .fetch_all(pool)
    .await
    .expect("spool rows");
    let fallback: i64 =
        sqlx::query_scalar("SELECT count(*) FROM journal_fallback WHERE partition = $1")
            .bind(partition)
            .fetch_one(pool)
            .await
            .expect("fallback rows");
    (rows, fallback > 0)
}

/// Waits until `partition`'s spool is replayed and its fallback row gone.
async fn spool_emptied(pool: &sqlx::PgPool, partition: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (rows, in_fallback) = spool_of(pool, partition).await;
        if rows.is_empty() && !in_fallback {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition}: spool not replayed within {limit:?}: {rows:?}, fallback row: {in_fallback}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// No payment has two different events at one sequence, in the journal as an independent
/// reader sees it (a repeated event id is one event).
fn assert_no_fork(brokers: &str, topic: &str) {
    let (events, _) = journal_events_in(brokers, topic, PARTITIONS);
    let mut at: BTreeMap<(String, u64), uuid::Uuid> = BTreeMap::new();
    for event in &events {
        let slot = (event.payment_id.clone(), event.sequence);
        if let Some(other) = at.insert(slot.clone(), event.event_id) {
            assert_eq!(
                other, event.event_id,
                "payment {} has two events at sequence {}",
                slot.0, slot.1
            );
        }
    }
}
/// A node dies during a journal outage with acknowledged commands in its spool. Whichever
/// way the node that takes its partition over does it (through the spool while the broker
/// is down, through the journal once it is back), that spool reaches the journal before the
/// new owner's owner-change marker (those commands were acknowledged, so they count); the
/// payment is readable with its state, and the spool and its fallback row are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spool_left_by_a_node_that_died_in_an_outage_is_replayed_by_the_new_owner_before_its_marker(
) {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut env = TestEnv::new("cluster_spool").await;
    let mut broker = private_broker(&mut env);
    let TwoNodes {
        mut nodes,
        apis,
        owners: _,
        partition,
        merchant_id,
        key,
    } = TwoNodes::start(&env, &FAST).await;

    broker.kill9();
    let spooled = spooled_create(&apis[1], &key, "spooled-1", 900).await;
    let pool = env.pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_spool WHERE partition = $1")
        .bind(partition)
        .fetch_one(&pool)
        .await
        .expect("spool rows");
    assert!(rows > 0, "the acknowledged create is in the spool");
    nodes[1].kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();

    // Node a takes the partition over once the broker is back, and serves it.
    created_once_served(
        &apis[0],
        &key,
        "after-1",
        r#"{"amount":901,"currency":"eur"}"#,
        Instant::now(),
        Duration::from_secs(90),
        Duration::from_millis(200),
    )
    .await;
    let read = apis[0].get_payment(&key, &spooled).await;
    assert_eq!(
        read.status, 200,
        "the payment acknowledged from the dead node's spool: {}",
        read.body
    );
    assert_eq!(read.body["amount"], 900);

    let taken = settled(&[&apis[0]], Duration::from_secs(30)).await;
    let epoch = taken[&partition].1;
    // The dead owner's fallback row goes with its spool (issue 22, defect 4): otherwise the
    // new owner's next outage inherits its watermark, and /readyz shows the partition in
    // fallback forever.
    spool_emptied(&pool, partition, Duration::from_secs(60)).await;
    let records = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    let (marker, spooled_record) = marker_and_create(&records, partition, epoch, &merchant_id);
    let spooled_record = spooled_record.expect("the spooled create in the journal");
    assert!(
        spooled_record.offset < marker.offset,
        "the dead owner's spool precedes the new owner's marker"
    );
    let journal = apis[0]
        .send(
            reqwest::Method::GET,
            "/v1/admin/journal",
            Some(common::ADMIN_TOKEN),
            None,
            None,
        )
        .await;
    assert_eq!(journal.status, 200, "{}", journal.body);
    let listed = journal.body["partitions_in_fallback"]
        .as_array()
        .is_some_and(|a| a.iter().any(|d| d["partition"] == partition));
    assert!(!listed, "{}", journal.body);
}

/// A node dies during a journal outage, and the node that takes its partition over serves it
/// while the broker is still down (issue 22, defect 6): its owner-change marker goes through
/// the spool, after the dead owner's acknowledged rows and fenced by the lease, and the
/// partition's payments are served from their snapshots, complete in fallback. When the
/// broker returns, the journal holds the dead owner's records, then the marker, then the new
/// owner's; no payment has two events at one sequence, and the audit finds no difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_whose_owner_died_during_an_outage_is_served_again_before_the_journal_returns()
{
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut env = TestEnv::new("cluster_outage_takeover").await;
    let mut broker = private_broker(&mut env);
    let TwoNodes {
        mut nodes,
        apis,
        owners,
        partition,
        merchant_id,
        key,
    } = TwoNodes::start(&env, &FAST).await;
    let dead_epoch = owners[&partition].1;

    broker.kill9();
    let spooled = spooled_create(&apis[1], &key, "before-death", 700).await;
    let pool = env.pool().await;
    nodes[1].kill9();
    let died = Instant::now();

    // Served by node a with the broker still down: a new create is acknowledged (spooled).
    let (served_after, tries) = created_once_served(
        &apis[0],
        &key,
        "after-death",
        r#"{"amount":701,"currency":"eur"}"#,
        died,
        Duration::from_secs(30),
        Duration::from_millis(200),
    )
    .await;
    println!("cluster-outage: served again {served_after:?} after the owner's death ({tries} tries), broker down");
    // The dead owner's acknowledged payment, from its snapshot; its idempotent retry finds it.
    let read = apis[0].get_payment(&key, &spooled).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["amount"], 700);
    let retried = apis[0]
        .create_payment(
            &key,
            Some("before-death"),
            r#"{"amount":700,"currency":"eur"}"#,
        )
        .await;
    assert!(
        retried.status == 200 || retried.status == 201,
        "{}",
        retried.body
    );
    assert_eq!(
        retried.body["id"],
        spooled.as_str(),
        "the retry is the same payment"
    );
    let (rows, in_fallback) = spool_of(&pool, partition).await;
    assert!(in_fallback, "the partition is served in fallback");
    let marker_at = rows
        .iter()
        .position(|(t, e)| t == "partition.owner_changed" && *e as u64 > dead_epoch)
        .unwrap_or_else(|| panic!("no owner-change marker in the spool: {rows:?}"));
    assert!(
        rows[..marker_at]
            .iter()
            .all(|(_, e)| *e as u64 == dead_epoch),
        "only the dead owner's rows precede the marker: {rows:?}"
    );
    assert!(
        rows[marker_at..]
            .iter()
            .all(|(_, e)| *e as u64 > dead_epoch),
        "only the new owner's rows follow it: {rows:?}"
    );
    assert!(
        marker_at > 0,
        "the dead owner's create precedes the marker: {rows:?}"
    );
    assert!(
        rows.len() > marker_at + 1,
        "the new owner's create follows it: {rows:?}"
    );

    broker.restart();
    spool_emptied(&pool, partition, Duration::from_secs(90)).await;
    let records = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    let epoch = records
        .iter()
        .filter(|r| r.partition == partition && event_type(r) == "partition.owner_changed")
        .map(owner_epoch)
        .max()
        .expect("a marker in the journal");
    assert!(epoch > dead_epoch);
    let (marker, first_create) = marker_and_create(&records, partition, epoch, &merchant_id);
    let first_create = first_create.expect("the dead owner's create in the journal");
    assert!(
        first_create.offset < marker.offset,
        "the dead owner's records precede the marker"
    );
    assert!(
        records.iter().any(|r| r.partition == partition
            && r.offset > marker.offset
            && event_type(r) == "payment.created"
            && owner_epoch(r) == epoch),
        "the new owner's create follows the marker"
    );
    assert_no_fork(&env.brokers, &env.topic());
    let partitions = PARTITIONS.to_string();
    let (clean, differences, output) =
        audit_with(&env, &[("PAYRAIL__JOURNAL__PARTITIONS", &partitions)]);
    assert!(clean, "audit: {differences:?}\n{output}");
    assert_eq!(differences, Some(0), "{output}");
}
