//! The settlement outbox journals `settlement.created` and `settlement.paid` exactly once
//! each, whatever runs concurrently with it (real broker, real PostgreSQL; the journal is
//! read back with an independent Kafka client).

mod common;

use common::*;
use kafka_journal::admin::{ensure_topics, TopicSpec};
use kafka_journal::{Codec, CodecKind, Envelope, JournalOptions, JournalProducer};
use payrail_pools::settlement::{settlement_event_id, SettlementEvent, SettlementService};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

struct Outbox {
    env: TestEnv,
    pool: PgPool,
    service: SettlementService,
    topic: String,
}

impl Outbox {
    async fn new(name: &str) -> Self {
        let env = TestEnv::new(name).await;
        let pool = env.migrated_pool().await;
        let options = JournalOptions {
            brokers: env.brokers.clone(),
            partitions: PARTITIONS,
            namespace: env.namespace.clone(),
            ..JournalOptions::default()
        };
        let topic = options.topic("settlement.events");
        ensure_topics(
            &options,
            &[TopicSpec {
                name: topic.clone(),
                partitions: PARTITIONS,
            }],
        )
        .await
        .expect("topic");
        let producer = JournalProducer::new(&options, Arc::new(kafka_journal::producer::NoSignals))
            .expect("producer");
        let service = SettlementService {
            pool: pool.clone(),
            producer,
            topic: topic.clone(),
            partitions: PARTITIONS,
        };
        Self {
            env,
            pool,
            service,
            topic,
        }
    }

    /// A settlement straight in the table, as a run leaves it before its events are sent.
    async fn settlement(&self, id: &str, merchant: &str) {
        sqlx::query(
            "INSERT INTO settlements (id, merchant_id, currency, captured, refunded, fees, net, item_count, cutoff, status)
             VALUES ($1, $2, 'EUR', 10000, 1000, 290, 8710, 3, now(), 'created')",
        )
        .bind(id)
        .bind(merchant)
        .execute(&self.pool)
        .await
        .expect("settlement row");
    }

    /// (settlement id, event type) → the event ids journaled for it.
    fn journaled(&self) -> HashMap<(String, String), Vec<Uuid>> {
        let mut seen: HashMap<(String, String), Vec<Uuid>> = HashMap::new();
        for record in read_journal(&self.env.brokers, &self.topic, PARTITIONS) {
            let content_type = record
                .headers
                .get("content_type")
                .cloned()
                .unwrap_or_default();
            let envelope: Envelope<SettlementEvent> = CodecKind::from_content_type(&content_type)
                .and_then(|codec| codec.decode(&record.value))
                .expect("a settlement envelope");
            let settlement = envelope.correlation_id.clone().unwrap_or_default();
            seen.entry((settlement, envelope.event_type))
                .or_default()
                .push(envelope.event_id);
        }
        seen
    }
}

/// Defect: two concurrent `emit_pending` calls both read every pending settlement and both
/// journaled it, each time with a fresh event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_outbox_runs_journal_each_event_once() {
    let outbox = Outbox::new("outbox_concurrent").await;
    for i in 0..20 {
        outbox
            .settlement(&format!("stl_{i}"), &format!("acct_{}", i % 5))
            .await;
    }
    let (a, b) = tokio::join!(
        outbox.service.try_emit_pending(),
        outbox.service.try_emit_pending()
    );
    let appended = a.expect("first run") + b.expect("second run");
    assert_eq!(appended, 20, "each settlement.created appended by one run");
    let journaled = outbox.journaled();
    assert_eq!(journaled.len(), 20, "{journaled:?}");
    for i in 0..20 {
        let key = (format!("stl_{i}"), "settlement.created".to_string());
        assert_eq!(
            journaled.get(&key).map(Vec::len),
            Some(1),
            "{key:?}: {journaled:?}"
        );
    }
    for ((settlement, kind), ids) in &journaled {
        assert_eq!(
            ids[0],
            settlement_event_id(settlement, kind),
            "derived event id"
        );
    }
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM settlements WHERE NOT emitted")
        .fetch_one(&outbox.pool)
        .await
        .expect("count");
    assert_eq!(unsent, 0);
}

/// Defect: a payout committed between the outbox's read and its update was marked as
/// journaled (`paid_emitted = (status = 'paid')`) although `settlement.paid` never was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_during_the_outbox_run_still_journals_settlement_paid() {
    let outbox = Outbox::new("outbox_paid").await;
    outbox.settlement("stl_1", "acct_1").await;
    // The payout, as `SettlementService::pay` does it: lock the row, mark it paid; it
    // commits while the outbox run is under way.
    let mut payout = outbox.pool.begin().await.expect("payout tx");
    sqlx::query("SELECT id FROM settlements WHERE id = 'stl_1' FOR UPDATE")
        .execute(&mut *payout)
        .await
        .expect("lock");
    sqlx::query("UPDATE settlements SET status = 'paid', paid_at = now() WHERE id = 'stl_1'")
        .execute(&mut *payout)
        .await
        .expect("pay");
    let run = {
        let service = outbox.service.clone();
        tokio::spawn(async move { service.try_emit_pending().await })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    payout.commit().await.expect("payout committed");
    run.await.expect("joined").expect("outbox run");
    // `pay` runs the outbox after its commit.
    outbox.service.try_emit_pending().await.expect("outbox run");
    let journaled = outbox.journaled();
    for kind in ["settlement.created", "settlement.paid"] {
        let key = ("stl_1".to_string(), kind.to_string());
        assert_eq!(
            journaled.get(&key).map(Vec::len),
            Some(1),
            "{kind} once: {journaled:?}"
        );
    }
    for ((settlement, kind), ids) in &journaled {
        assert_eq!(
            ids[0],
            settlement_event_id(settlement, kind),
            "derived event id"
        );
    }
    let flags: (bool, bool) =
        sqlx::query_as("SELECT emitted, paid_emitted FROM settlements WHERE id = 'stl_1'")
            .fetch_one(&outbox.pool)
            .await
            .expect("flags");
    assert_eq!(flags, (true, true));
}
