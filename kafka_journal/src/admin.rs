//! Topic admin: explicit creation, because payrail never relies on broker auto-creation.

use crate::client_log::QuietContext;
use crate::options::JournalOptions;
use crate::producer::JournalError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use std::time::Duration;

/// A topic payrail needs and how many partitions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
}

/// Creates every missing topic; existing topics are left as they are. Returns the names of
/// the topics it created.
pub async fn ensure_topics(
    options: &JournalOptions,
    topics: &[TopicSpec],
) -> Result<Vec<String>, JournalError> {
    let admin: AdminClient<QuietContext> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .create_with_context(QuietContext::new(options.client_log("payrail-admin")))
        .map_err(|e| JournalError::Config(e.to_string()))?;
    let timeout = Duration::from_millis(options.admin_timeout_ms);
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                &t.name,
                t.partitions as i32,
                TopicReplication::Fixed(i32::from(options.replication_factor)),
            )
        })
        .collect();
    // librdkafka waits for an unreachable broker far past the operation timeout; bound it.
    let results = tokio::time::timeout(
        timeout + Duration::from_secs(1),
        admin.create_topics(
            new_topics.iter(),
            &AdminOptions::new().operation_timeout(Some(Timeout::After(timeout))),
        ),
    )
    .await
    .map_err(|_| JournalError::Config(format!("creating topics timed out after {timeout:?}")))??;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(JournalError::Config(format!(
                    "creating topic {name} failed: {code}"
                )))
            }
        }
    }
    Ok(created)
}

/// Number of partitions of `topic` as the broker reports it, if it exists.
pub async fn partition_count(
    options: &JournalOptions,
    topic: &str,
) -> Result<Option<usize>, JournalError> {
    let brokers = options.brokers.clone();
    let topic = topic.to_string();
    let timeout = Duration::from_millis(options.admin_timeout_ms);
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let metadata = rdkafka::consumer::Consumer::fetch_metadata(
            &consumer,
            Some(&topic),
            Timeout::After(timeout),
        )?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0))
    })
    .await
    .map_err(|e| JournalError::Config(e.to_string()))?
}

/// Low and high watermarks of one partition.
pub async fn watermarks(
    options: &JournalOptions,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), JournalError> {
    let brokers = options.brokers.clone();
    let topic = topic.to_string();
    let timeout = Duration::from_millis(options.admin_timeout_ms);
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        Ok(rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            &topic,
            partition,
            Timeout::After(timeout),
        )?)
    })
    .await
    .map_err(|e| JournalError::Config(e.to_string()))?
}
