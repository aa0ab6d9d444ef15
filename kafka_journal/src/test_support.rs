//! Shared by the crate's tests against the real broker (`PAYRAIL_TEST_BROKERS`, default
//! 127.0.0.1:9092) and real PostgreSQL (`PAYRAIL_TEST_DATABASE_URL`): each test gets its own
//! migrated database and topic namespace. `bash scripts/test.sh` starts both.

use crate::admin::{ensure_topics, TopicSpec};
use crate::envelope::EventHeaders;
use crate::options::JournalOptions;
use crate::producer::OutgoingRecord;
use crate::JournalProducer;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

/// A fresh database (migrated) and a fresh topic for one test.
pub(crate) struct World {
    pub options: JournalOptions,
    pub topic: String,
    pub database_url: String,
    pub producer: JournalProducer,
}

impl World {
    pub async fn new(label: &str, partitions: u32) -> Self {
        let id = Uuid::now_v7().simple().to_string();
        let base = env_or(
            "PAYRAIL_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let db = format!("payrail_kj_{label}_{id}");
        let mut admin = PgConnection::connect(&base).await.expect("PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&mut admin)
            .await
            .expect("create database");
        let database_url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{db}"),
            None => panic!("database url without a path: {base}"),
        };
        let options = JournalOptions {
            brokers: env_or("PAYRAIL_TEST_BROKERS", "127.0.0.1:9092"),
            partitions,
            namespace: format!("kj-{label}-{id}."),
            fetch_min_bytes: 1,
            ..JournalOptions::default()
        };
        let topic = options.topic("events");
        ensure_topics(
            &options,
            &[TopicSpec {
                name: topic.clone(),
                partitions,
            }],
        )
        .await
        .expect("topic");
        let producer =
            JournalProducer::new(&options, Arc::new(crate::producer::NoSignals)).expect("producer");
        let world = Self {
            options,
            topic,
            database_url,
            producer,
        };
        let pool = world.pool(4).await;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .expect("migrations");
        sqlx::query(
            "CREATE TABLE test_applied (partition INTEGER NOT NULL, record_offset BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("test table");
        world
    }

    pub async fn pool(&self, connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_millis(300))
            .connect(&self.database_url)
            .await
            .expect("test database")
    }

    /// A test record `n` for `partition`, with a fresh event id.
    pub fn record(&self, partition: i32, n: usize) -> OutgoingRecord {
        OutgoingRecord {
            topic: self.topic.clone(),
            partition,
            key: format!("key-{partition}"),
            headers: EventHeaders {
                event_type: "test.event".into(),
                event_id: Uuid::now_v7().to_string(),
                schema_version: "1".into(),
                content_type: "application/json".into(),
                owner_epoch: 0,
            },
            value: format!("{{\"n\":{n}}}").into_bytes(),
        }
    }

    /// Appends `count` records to `partition`; returns their offsets.
    pub async fn produce(&self, partition: i32, count: usize) -> Vec<i64> {
        let records: Vec<OutgoingRecord> = (0..count).map(|i| self.record(partition, i)).collect();
        let receipts = self.producer.append(&records).await.expect("append");
        receipts.iter().map(|r| r.offset).collect()
    }
}
