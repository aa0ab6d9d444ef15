//! The spool is fenced by the lease (real PostgreSQL): a cluster node that lost its
//! partition's lease — a new owner raised the epoch — spools nothing and projects no
//! snapshot, so a paused owner that resumes during a journal outage cannot fork a payment
//! through the spool. The owner of the current epoch spools as usual.

mod common;

use common::TestEnv;
use kafka_journal::producer::{NoSignals, OutgoingRecord};
use kafka_journal::spool::Spool;
use kafka_journal::{JournalOptions, JournalProducer};
use payrail_actors::fallback::{FallbackError, JournalFallback, SpoolOptions};
use payrail_actors::money::Currency;
use payrail_cluster::{LeaseStore, StoreError};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "spool-fence.payment.events";
const MERCHANT: &str = "mer_spool_fence";

async fn fallback(name: &str) -> (JournalFallback, PgPool) {
    let (fallback, pool) = not_in_fallback(name).await;
    fallback
        .enter(0, 2, || 0, || 0, || 0, &pool)
        .await
        .expect("partition 0 enters fallback");
    (fallback, pool)
}

/// Partition 0, not in fallback, its journal's end known; node b holds it at epoch 2 (it
/// took it from an owner at epoch 1).
async fn not_in_fallback(name: &str) -> (JournalFallback, PgPool) {
    let env = TestEnv::new(name).await;
    let pool = env.migrated_pool().await;
    let fallback = JournalFallback::new(
        Spool::new(pool.clone(), TOPIC, 1_000),
        "spool-fence.payrail.snapshots".into(),
        std::sync::Arc::new(payrail_actors::snapshots::SnapshotProjector),
        SpoolOptions::default(),
        1,
    );
    fallback.mark_end_known(0, 0);
    sqlx::query(
        "INSERT INTO partition_leases (partition, owner_node_id, owner_url, epoch, expires_at, renewed_at)
         VALUES (0, 'node-b', 'http://127.0.0.1:1', 2, clock_timestamp() + interval '1 minute', clock_timestamp())",
    )
    .execute(&pool)
    .await
    .expect("lease row");
    (fallback, pool)
}

fn created(epoch: u64) -> OutgoingRecord {
    let options = JournalOptions::default();
    let producer = JournalProducer::new(&options, Arc::new(NoSignals)).expect("producer");
    let currency = Currency::parse("EUR").expect("currency");
    let envelope = payrail_loadtest::bench::created_envelope(MERCHANT, 1, 1_000, currency);
    producer.record(TOPIC, 0, epoch, &envelope).expect("record")
}

fn assert_superseded_at_epoch_1(refused: Result<(), FallbackError>) {
    assert!(
        matches!(
            refused,
            Err(FallbackError::Superseded {
                partition: 0,
                epoch: 1
            })
        ),
        "{refused:?}"
    );
}

async fn counts(pool: &PgPool) -> (i64, i64) {
    let spooled: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_spool")
        .fetch_one(pool)
        .await
        .expect("spool count");
    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_snapshots WHERE merchant_id = $1")
            .bind(MERCHANT)
            .fetch_one(pool)
            .await
            .expect("snapshot count");
    (spooled, snapshots)
}

#[tokio::test]
async fn a_node_whose_lease_was_taken_over_spools_nothing_and_projects_no_snapshot() {
    let (fallback, pool) = fallback("spool_fence_old").await;
    let gate = fallback.gate(0).await;
    assert!(gate.spooling);
    let refused = fallback.append(&gate, 0, &[created(1)], &pool).await;
    assert_superseded_at_epoch_1(refused);
    assert_eq!(counts(&pool).await, (0, 0), "nothing spooled, no snapshot");
}

#[tokio::test]
async fn the_owner_of_the_current_epoch_spools_and_projects() {
    let (fallback, pool) = fallback("spool_fence_current").await;
    let gate = fallback.gate(0).await;
    fallback
        .append(&gate, 0, &[created(2)], &pool)
        .await
        .expect("spooled under the current epoch");
    assert_eq!(counts(&pool).await, (1, 1));
}

#[tokio::test]
async fn a_single_nodes_records_need_no_lease() {
    let (fallback, pool) = fallback("spool_fence_single").await;
    let gate = fallback.gate(0).await;
    fallback
        .append(&gate, 0, &[created(0)], &pool)
        .await
        .expect("epoch 0: no lease to check");
    assert_eq!(counts(&pool).await, (1, 1));
}

/// Holds partition 0's fallback row, which a spool append locks after its lease fence: an
/// append started meanwhile holds its lease-row lock and waits.
async fn hold_fallback_row(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM journal_fallback WHERE topic = $1 AND partition = 0 FOR UPDATE")
        .bind(TOPIC)
        .fetch_one(&mut *blocker)
        .await
        .expect("the fallback row");
    blocker
}

/// Waits until a statement of this database waits for a lock (the append, past its fence).
async fn until_a_statement_waits(pool: &PgPool) {
    for _ in 0..250 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("pg_locks");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the append never waited for the fallback row");
}

#[tokio::test]
async fn a_renewal_does_not_wait_for_a_spool_transaction_in_flight() {
    let (fallback, pool) = fallback("spool_fence_renew").await;
    let gate = fallback.gate(0).await;
    // The shipped renewal bound: a renewal slower than this drops the lease.
    let store = LeaseStore::new(pool.clone(), Duration::from_millis(500));
    let records = [created(2)];
    let blocker = hold_fallback_row(&pool).await;
    let (appended, renewed) = tokio::join!(fallback.append(&gate, 0, &records, &pool), async {
        until_a_statement_waits(&pool).await;
        let renewed = store.renew("node-b", &[(0, 2)], 60_000).await;
        blocker.commit().await.expect("commit");
        renewed
    });
    assert_eq!(
        renewed.expect("renewed within 500 ms while the spool transaction is open"),
        vec![0]
    );
    appended.expect("spooled under the current epoch");
    assert_eq!(counts(&pool).await, (1, 1));
}

#[tokio::test]
async fn a_takeover_waits_for_the_old_epochs_spool_transaction_in_flight() {
    let (fallback, pool) = fallback("spool_fence_takeover").await;
    // Node b's lease (epoch 2) expired: node c may take the partition.
    sqlx::query("UPDATE partition_leases SET expires_at = clock_timestamp() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("expire");
    let gate = fallback.gate(0).await;
    let store = LeaseStore::new(pool.clone(), Duration::from_millis(500));
    let records = [created(2)];
    let blocker = hold_fallback_row(&pool).await;
    let (appended, early) = tokio::join!(fallback.append(&gate, 0, &records, &pool), async {
        until_a_statement_waits(&pool).await;
        let early = store
            .acquire(0, "node-c", "http://127.0.0.1:2", 60_000)
            .await;
        blocker.commit().await.expect("commit");
        early
    });
    assert!(
        matches!(early, Err(StoreError::Timeout { .. })),
        "the takeover must wait for the spool transaction of epoch 2: {early:?}"
    );
    appended.expect("committed before the takeover: spooled under epoch 2");
    assert_eq!(
        counts(&pool).await,
        (1, 1),
        "in the spool the new owner replays"
    );
    let lease = store
        .acquire(0, "node-c", "http://127.0.0.1:2", 60_000)
        .await
        .expect("acquire")
        .expect("taken after the spool commit");
    assert_eq!(lease.epoch, 3);
}

/// A paused owner that resumes after a takeover and then sees the journal fail must not
/// copy what it journaled into the spool or project it into the snapshots (issue 22,
/// defect 3): a phantom payment the new owner would answer 201 for on the client's retry.
#[tokio::test]
async fn a_node_whose_lease_was_taken_over_copies_and_projects_nothing_on_entering_fallback() {
    let (fallback, pool) = not_in_fallback("spool_fence_enter_old").await;
    // Journaled at offset 0 under epoch 1, not yet projected; then the journal fails.
    fallback.journaled(0, vec![created(1)], &[0], 0);
    let refused = fallback.enter(0, 1, || 1, || 0, || 0, &pool).await;
    assert_superseded_at_epoch_1(refused);
    assert_eq!(counts(&pool).await, (0, 0), "nothing copied, no snapshot");
    assert!(!fallback.is_active(0));
}

#[tokio::test]
async fn the_owner_of_the_current_epoch_copies_and_projects_its_tail_on_entering_fallback() {
    let (fallback, pool) = not_in_fallback("spool_fence_enter_current").await;
    fallback.journaled(0, vec![created(2)], &[0], 0);
    fallback
        .enter(0, 2, || 1, || 0, || 0, &pool)
        .await
        .expect("entered under the current epoch");
    assert_eq!(counts(&pool).await, (1, 1), "copied and projected");
}

/// A replayer whose lease moved while its batch was in flight journaled copies under a
/// superseded epoch, which readers fence (or a takeover in fallback voided): the spooled
/// rows must stay for the new owner to journal under its own epoch. Seen in a full-size
/// compound run before this fence: a node replayed a partition handed over seconds earlier
/// (its round's list of partitions was stale), removed the rows, and ~600 acknowledged
/// events were left in the journal only under the old epoch, in the range the new owner's
/// takeover had voided (`payrail audit`: "journal says 1, read model has 2").
#[tokio::test]
async fn a_replay_under_a_moved_lease_removes_no_spooled_row() {
    let (fallback, pool) = fallback("spool_fence_replay").await;
    let gate = fallback.gate(0).await;
    fallback
        .append(&gate, 0, &[created(2)], &pool)
        .await
        .expect("spooled under epoch 2");
    drop(gate);
    assert_superseded_at_epoch_1(fallback.mark_replayed(0, 1, 1, 1, &pool).await);
    assert_eq!(counts(&pool).await.0, 1, "the row stays for the owner");
    fallback
        .mark_replayed(0, 2, 1, 1, &pool)
        .await
        .expect("the owner of epoch 2 removes what it journaled");
    assert_eq!(counts(&pool).await.0, 0);
}
