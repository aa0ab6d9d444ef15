//! Journal options (`[journal]` in config.toml).

use crate::codec::CodecKind;
use serde::{Deserialize, Serialize};

/// Everything the journal needs to know; each field is documented in config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalOptions {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub brokers: String,
    /// Partitions of `payment.events`; fixed for the life of the topic.
    pub partitions: u32,
    /// Prefix for every topic and consumer-group name (lets several deployments or test runs
    /// share one broker without seeing each other).
    pub namespace: String,
    /// Codec for new records (`bincode` or `json`). Consumers read both.
    pub codec: CodecKind,
    /// Upper bound for one append to be acknowledged by the broker (ms). Also librdkafka's
    /// `message.timeout.ms`, so a record that times out is never delivered later.
    pub produce_timeout_ms: u64,
    /// librdkafka `linger.ms`: how long the producer waits to fill a batch (ms).
    pub linger_ms: u64,
    /// librdkafka `queue.buffering.max.messages`: records buffered in the client at most.
    pub max_buffered_records: u32,
    /// Hand librdkafka a partition's records only while it may send them, as one group
    /// (see `producer::lanes`); `false` hands every append over at once.
    pub partition_lanes: bool,
    /// Consumer-group session timeout (ms).
    pub session_timeout_ms: u64,
    /// Records a partition worker applies in one PostgreSQL transaction at most.
    pub worker_batch_max: usize,
    /// Batches queued for one partition worker at most before the consumer waits.
    pub worker_mailbox: usize,
    /// Attempts to apply a record before it is dead-lettered.
    pub worker_max_attempts: u32,
    /// First retry delay of a failing batch (ms); doubles each attempt.
    pub worker_retry_base_ms: u64,
    /// Time allowed for admin requests and metadata look-ups (ms).
    pub admin_timeout_ms: u64,
    /// Replication factor of the topics the node creates when they are missing (1 for the
    /// single development broker; 3 is usual on a production Kafka or Redpanda cluster).
    pub replication_factor: u16,
    /// librdkafka `fetch.min.bytes` for consumers: fewer, larger fetches (each fetch costs
    /// the broker a storage scan, notably with tansu's sqlite engine).
    pub fetch_min_bytes: u32,
    /// librdkafka `fetch.wait.max.ms`: the longest a fetch waits for `fetch_min_bytes` (ms);
    /// bounds the extra lag this adds to pools.
    pub fetch_wait_max_ms: u32,
    /// Shortest time between two log lines of one kind of librdkafka error or log message
    /// per client (ms); repeats in between are counted, not written (see `client_log`).
    pub client_log_every_ms: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            partitions: 6,
            namespace: String::new(),
            codec: CodecKind::Bincode,
            produce_timeout_ms: 5_000,
            linger_ms: 1,
            max_buffered_records: 100_000,
            partition_lanes: true,
            session_timeout_ms: 10_000,
            worker_batch_max: 500,
            worker_mailbox: 4,
            worker_max_attempts: 5,
            worker_retry_base_ms: 100,
            admin_timeout_ms: 10_000,
            replication_factor: 1,
            fetch_min_bytes: 65_536,
            fetch_wait_max_ms: 100,
            client_log_every_ms: 60_000,
        }
    }
}

impl JournalOptions {
    /// The full name of topic `name` in this deployment's namespace.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{}", self.namespace, name)
    }

    /// The bounded log of librdkafka client `client`'s messages.
    pub fn client_log(&self, client: &str) -> crate::client_log::ClientLog {
        crate::client_log::ClientLog::new(
            client,
            std::time::Duration::from_millis(self.client_log_every_ms),
        )
    }

    /// The full name of consumer group `name` in this deployment's namespace.
    pub fn group(&self, name: &str) -> String {
        format!("{}{}", self.namespace, name)
    }

    /// The dead-letter topic of pool `pool` (e.g. `payrail.ledger` → `<namespace>payrail.ledger.dlq`).
    pub fn dead_letter_topic(&self, pool: &str) -> String {
        self.topic(&format!("{pool}.dlq"))
    }

    /// Checks every value; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=3_600_000).contains(&self.client_log_every_ms) {
            return Err("journal.client_log_every_ms: allowed 100..=3600000".into());
        }
        if !(1..=16).contains(&self.replication_factor) {
            return Err("journal.replication_factor: allowed 1..=16".into());
        }
        if self.brokers.trim().is_empty() {
            return Err("journal.brokers: must name at least one host:port".into());
        }
        for broker in self.brokers.split(',') {
            let broker = broker.trim();
            let ok = broker
                .rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                return Err(format!(
                    "journal.brokers: {broker:?} is not host:port (e.g. 127.0.0.1:9092)"
                ));
            }
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(format!(
                "journal.partitions: {} is out of range; allowed 1..=1024",
                self.partitions
            ));
        }
        if !self
            .namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err("journal.namespace: allowed characters are [A-Za-z0-9._-]".into());
        }
        if !(100..=300_000).contains(&self.produce_timeout_ms) {
            return Err("journal.produce_timeout_ms: allowed 100..=300000".into());
        }
        if self.linger_ms > 1_000 {
            return Err("journal.linger_ms: allowed 0..=1000".into());
        }
        if !(1..=10_000).contains(&self.worker_batch_max) {
            return Err("journal.worker_batch_max: allowed 1..=10000".into());
        }
        if !(1..=1_000).contains(&self.worker_mailbox) {
            return Err("journal.worker_mailbox: allowed 1..=1000".into());
        }
        if !(1..=100_000_000).contains(&self.fetch_min_bytes) {
            return Err("journal.fetch_min_bytes: allowed 1..=100000000".into());
        }
        if !(1..=5_000).contains(&self.fetch_wait_max_ms) {
            return Err("journal.fetch_wait_max_ms: allowed 1..=5000".into());
        }
        if !(1..=100).contains(&self.worker_max_attempts) {
            return Err("journal.worker_max_attempts: allowed 1..=100".into());
        }
        Ok(())
    }
}
