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
use sqlx::PgPool;
use std::sync::Arc;

const TOPIC: &str = "spool-fence.payment.events";
const MERCHANT: &str = "mer_spool_fence";

async fn fallback(name: &str) -> (JournalFallback, PgPool) {
    let env = TestEnv::new(name).await;
    let pool = env.migrated_pool().await;
    let fallback = JournalFallback::new(
        Spool::new(pool.clone(), TOPIC, 1_000),
        "spool-fence.payrail.snapshots".into(),
        SpoolOptions::default(),
        1,
    );
    fallback.mark_end_known(0);
    fallback
        .enter(0, || 0, || 0, || 0, &pool)
        .await
        .expect("partition 0 enters fallback");
    // Node b holds partition 0 at epoch 2 (it took it from an owner at epoch 1).
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
