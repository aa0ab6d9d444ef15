//! Reads a whole topic up to its current end (audits, rebuild checks). Bounded by the
//! high watermarks taken at the start and by a timeout.

use crate::consumer::ConsumedRecord;
use crate::options::JournalOptions;
use crate::producer::JournalError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every record of `topic` (partitions `0..partitions`) up to the high watermarks at call time,
/// in partition order.
pub async fn read_all(
    options: &JournalOptions,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, JournalError> {
    let brokers = options.brokers.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_blocking(&brokers, &topic, partitions, timeout))
        .await
        .map_err(|e| JournalError::Config(e.to_string()))?
}

fn read_blocking(
    brokers: &str,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, JournalError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("payrail-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let deadline = Instant::now() + timeout;
    let mut list = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in 0..partitions as i32 {
        let (low, high) = consumer.fetch_watermarks(topic, p, Timeout::After(timeout))?;
        if high > low {
            remaining.insert(p, high);
            list.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return Ok(records);
    }
    consumer.assign(&list)?;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(JournalError::Timeout(timeout));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let record = ConsumedRecord::from_message(&message);
        if let Some(high) = remaining.get(&record.partition) {
            if record.offset + 1 >= *high {
                remaining.remove(&record.partition);
            }
        }
        records.push(record);
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}
