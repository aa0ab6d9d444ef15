//! The journal read back with an independent Kafka client, and a group's offsets reset to 0.

use super::{TestEnv, PARTITIONS};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One record read back from the journal.
#[derive(Debug, Clone)]
pub struct JournalRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub value: Vec<u8>,
}

/// Reads every record of `topic` (all `partitions`) up to the current high watermarks.
pub fn read_journal(brokers: &str, topic: &str, partitions: u32) -> Vec<JournalRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("payrail-it-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Timeout::After(Duration::from_secs(10)))
            .expect("watermarks");
        if high > low {
            remaining.insert(p, high);
            list.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("tpl");
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return records;
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !remaining.is_empty() {
        assert!(
            Instant::now() < deadline,
            "journal read timed out; missing {remaining:?}"
        );
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = result.expect("journal record");
        let mut headers = HashMap::new();
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        records.push(JournalRecord {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            value: msg.payload().unwrap_or_default().to_vec(),
        });
        if let Some(high) = remaining.get(&msg.partition()) {
            if msg.offset() + 1 >= *high {
                remaining.remove(&msg.partition());
            }
        }
    }
    records
}

/// The journal's `payment.created` records keyed by `merchant_id`.
pub fn created_for(records: &[JournalRecord], merchant_id: &str) -> Vec<JournalRecord> {
    records
        .iter()
        .filter(|r| r.key.as_deref() == Some(merchant_id))
        .filter(|r| r.headers.get("event_type").map(String::as_str) == Some("payment.created"))
        .cloned()
        .collect()
}

/// Commits offset 0 for every partition of `topic` in consumer group `group` (the group
/// must have no live members), as `kafka-consumer-groups --reset-offsets --to-earliest`.
pub fn reset_group_offsets(brokers: &str, group: &str, topic: &str, partitions: u32) {
    use rdkafka::consumer::CommitMode;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("group admin consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        list.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("tpl");
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .expect("commit offsets 0");
    let committed = consumer
        .committed_offsets(list, Timeout::After(Duration::from_secs(10)))
        .expect("committed offsets");
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Offset(0),
            "group offset reset for partition {}",
            element.partition()
        );
    }
}

/// (sequence, event type) of every journaled event of `payment_id`, in journal order.
pub fn payment_events(env: &TestEnv, payment_id: &str) -> Vec<(u64, String)> {
    use kafka_journal::codec::{Codec, CodecKind};
    read_journal(&env.brokers, &env.topic(), PARTITIONS)
        .into_iter()
        .filter_map(|r| {
            let codec = CodecKind::from_content_type(r.headers.get("content_type")?).ok()?;
            let envelope: kafka_journal::Envelope<payrail_actors::payment::PaymentEvent> =
                codec.decode(&r.value).ok()?;
            (envelope.payment_id == payment_id).then_some((envelope.sequence, envelope.event_type))
        })
        .collect()
}
