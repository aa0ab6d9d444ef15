//! Poison records: the pool's dead-letter topic, and listing and replaying dead letters.
//!
//! A record that fails every attempt is published to the pool's `<namespace><pool>.dlq`
//! topic (original key, value and event headers, plus where it came from and why it failed)
//! and parked in `journal_dead_letters`; then the partition moves on. The topic is for
//! other systems and operators; the table is what `payrail dlq replay` works from.

use crate::client_log::QuietContext;
use crate::envelope::EventHeaders;
use crate::offsets;
use crate::options::JournalOptions;
use crate::producer::JournalError;
use crate::record::{ConsumedRecord, PartitionHandler};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Headers a dead-letter record carries besides the original event headers.
pub struct DeadLetterHeaders;

impl DeadLetterHeaders {
    pub const ORIGINAL_TOPIC: &'static str = "dlq_original_topic";
    pub const ORIGINAL_PARTITION: &'static str = "dlq_original_partition";
    pub const ORIGINAL_OFFSET: &'static str = "dlq_original_offset";
    pub const ERROR: &'static str = "dlq_error";
    /// The consumer (pool) that gave up on the record.
    pub const CONSUMER: &'static str = "dlq_consumer";
}

/// Publishes a pool's poison records to its dead-letter topic.
pub struct DeadLetterPublisher {
    producer: FutureProducer<QuietContext>,
    topic: String,
    /// Set once the topic is known to exist.
    created: Arc<tokio::sync::OnceCell<()>>,
    options: JournalOptions,
    partitions: u32,
    timeout: Duration,
}

impl DeadLetterPublisher {
    /// A producer for `topic`, and in the background the topic itself (with the journal's
    /// partition count) if it is missing. Never waits for the broker: a node started during
    /// an outage once spent 10 s per pool here before it listened (issue 22); a topic not
    /// made in the background is made on the first publish.
    pub async fn new(options: &JournalOptions, topic: String) -> Result<Self, JournalError> {
        let producer: FutureProducer<QuietContext> = ClientConfig::new()
            .set("bootstrap.servers", &options.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", options.produce_timeout_ms.to_string())
            .set("client.id", "payrail-dead-letters")
            .create_with_context(QuietContext::new(
                options.client_log("payrail-dead-letters"),
            ))
            .map_err(|e| JournalError::Config(e.to_string()))?;
        let publisher = Self {
            producer,
            topic,
            created: Arc::new(tokio::sync::OnceCell::new()),
            options: options.clone(),
            partitions: options.partitions,
            timeout: Duration::from_millis(options.produce_timeout_ms),
        };
        let (created, options, spec) = (
            publisher.created.clone(),
            publisher.options.clone(),
            publisher.spec(),
        );
        tokio::spawn(async move {
            if let Err(error) = created.get_or_try_init(|| create(&options, spec)).await {
                tracing::warn!(%error, "cannot create the dead-letter topic now; it is created on first use");
            }
        });
        Ok(publisher)
    }

    fn spec(&self) -> crate::admin::TopicSpec {
        crate::admin::TopicSpec {
            name: self.topic.clone(),
            partitions: self.partitions,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Appends `record` to the dead-letter topic and waits for the broker's acknowledgement.
    /// It lands in the partition it came from, so dead letters keep their partition's order.
    pub async fn publish(
        &self,
        consumer: &str,
        record: &ConsumedRecord,
        error: &str,
    ) -> Result<(), JournalError> {
        self.created
            .get_or_try_init(|| create(&self.options, self.spec()))
            .await?;
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let event_id = record.event_id.map(|id| id.to_string());
        let mut headers = OwnedHeaders::new_with_capacity(8);
        for (key, value) in [
            (
                DeadLetterHeaders::ORIGINAL_TOPIC,
                Some(record.topic.as_str()),
            ),
            (
                DeadLetterHeaders::ORIGINAL_PARTITION,
                Some(partition.as_str()),
            ),
            (DeadLetterHeaders::ORIGINAL_OFFSET, Some(offset.as_str())),
            (DeadLetterHeaders::ERROR, Some(error)),
            (DeadLetterHeaders::CONSUMER, Some(consumer)),
            (EventHeaders::EVENT_TYPE, record.event_type.as_deref()),
            (EventHeaders::EVENT_ID, event_id.as_deref()),
            (EventHeaders::CONTENT_TYPE, record.content_type.as_deref()),
        ] {
            if let Some(value) = value {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
        }
        let mut out = FutureRecord::to(&self.topic)
            .payload(&record.value)
            .headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key);
        }
        if (0..self.partitions as i32).contains(&record.partition) {
            out = out.partition(record.partition);
        }
        self.producer
            .send(out, self.timeout)
            .await
            .map_err(|(error, _)| JournalError::Kafka(error))?;
        Ok(())
    }
}

/// One row of `journal_dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub record_offset: i64,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub error: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The dead letters of `consumer`, oldest first.
pub async fn list(pool: &PgPool, consumer: &str) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT topic, partition, record_offset, event_id, event_type, error, created_at, replayed_at
         FROM journal_dead_letters WHERE consumer = $1
         ORDER BY created_at, topic, partition, record_offset",
    )
    .bind(consumer)
    .fetch_all(pool)
    .await
}

/// Dead letters of one consumer: all of them, and those not replayed yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterCount {
    pub consumer: String,
    pub total: i64,
    pub pending: i64,
}

/// One of the most recent dead letters, for operators (no record value).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct RecentDeadLetter {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    #[sqlx(rename = "record_offset")]
    pub offset: i64,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub error: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Counts per consumer (every one of `consumers`, zero when it has none) and the `recent`
/// most recent dead letters of those consumers, newest first.
pub async fn summary(
    pool: &PgPool,
    consumers: &[String],
    recent: i64,
) -> Result<(Vec<DeadLetterCount>, Vec<RecentDeadLetter>), sqlx::Error> {
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT c.consumer, count(d.consumer), count(d.consumer) FILTER (WHERE d.replayed_at IS NULL)
         FROM unnest($1::text[]) AS c(consumer)
         LEFT JOIN journal_dead_letters d ON d.consumer = c.consumer
         GROUP BY c.consumer ORDER BY c.consumer",
    )
    .bind(consumers)
    .fetch_all(pool)
    .await?;
    let latest = sqlx::query_as(
        "SELECT consumer, topic, partition, record_offset, event_id, event_type, error, created_at, replayed_at
         FROM journal_dead_letters WHERE consumer = ANY($1)
         ORDER BY created_at DESC, consumer, topic, partition, record_offset DESC
         LIMIT $2",
    )
    .bind(consumers)
    .bind(recent)
    .fetch_all(pool)
    .await?;
    let counts = counts
        .into_iter()
        .map(|(consumer, total, pending)| DeadLetterCount {
            consumer,
            total,
            pending,
        })
        .collect();
    Ok((counts, latest))
}

/// A dead letter's record: event id, event type, content type, key, value.
type StoredRecord = (
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Vec<u8>,
);

/// What one replay run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters applied through the handler now.
    pub applied: usize,
    /// Dead letters whose event had been applied some other way; marked replayed only.
    pub already_applied: usize,
    /// Dead letters that failed again: (topic, partition, offset, error). Left for later.
    pub failed: Vec<(String, i32, i64, String)>,
}

/// Replays `consumer`'s dead letters not replayed yet (or only those of `event_id`) through
/// `handler`, each in one transaction that also marks its event id processed and the dead
/// letter replayed: a dead letter takes effect once however often this runs, and never on
/// top of a normal delivery of the same event.
pub async fn replay(
    pool: &PgPool,
    consumer: &str,
    handler: &dyn PartitionHandler,
    event_id: Option<Uuid>,
) -> Result<ReplayReport, sqlx::Error> {
    let keys: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, record_offset FROM journal_dead_letters
         WHERE consumer = $1 AND replayed_at IS NULL AND ($2::uuid IS NULL OR event_id = $2)
         ORDER BY topic, partition, record_offset",
    )
    .bind(consumer)
    .bind(event_id)
    .fetch_all(pool)
    .await?;
    let mut report = ReplayReport::default();
    for (topic, partition, offset) in keys {
        let mut tx = pool.begin().await?;
        // Locked and checked again: a concurrent replay may have taken it meanwhile.
        let row: Option<StoredRecord> = sqlx::query_as(
            "SELECT event_id, event_type, content_type, record_key, value FROM journal_dead_letters
                 WHERE consumer = $1 AND topic = $2 AND partition = $3 AND record_offset = $4
                   AND replayed_at IS NULL
                 FOR UPDATE SKIP LOCKED",
        )
        .bind(consumer)
        .bind(&topic)
        .bind(partition)
        .bind(offset)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((event_id, event_type, content_type, key, value)) = row else {
            continue;
        };
        let record = ConsumedRecord {
            topic: topic.clone(),
            partition,
            offset,
            key,
            event_type,
            event_id,
            content_type,
            value,
            timestamp_ms: None,
            // It passed the fence when it was parked; a replay applies it regardless.
            owner_epoch: 0,
        };
        let fresh = match event_id {
            Some(id) => offsets::mark_processed_batch(&mut tx, consumer, &[id])
                .await?
                .contains(&id),
            None => true,
        };
        if fresh {
            if let Err(error) = handler.apply(&mut tx, &record).await {
                tx.rollback().await?;
                report
                    .failed
                    .push((topic, partition, offset, error.to_string()));
                continue;
            }
        }
        sqlx::query(
            "UPDATE journal_dead_letters SET replayed_at = now()
             WHERE consumer = $1 AND topic = $2 AND partition = $3 AND record_offset = $4",
        )
        .bind(consumer)
        .bind(&topic)
        .bind(partition)
        .bind(offset)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if fresh {
            report.applied += 1;
        } else {
            report.already_applied += 1;
        }
    }
    Ok(report)
}

/// Creates the dead-letter topic `spec` if it is missing.
async fn create(
    options: &JournalOptions,
    spec: crate::admin::TopicSpec,
) -> Result<(), JournalError> {
    crate::admin::ensure_topics(options, std::slice::from_ref(&spec))
        .await
        .map(|_| ())
}
