//! `payrail bench journal`: the raw reference for the write path. The same
//! `Envelope<PaymentEvent::Created>` records, the same [`JournalProducer`] and options, the
//! same broker and the same concurrency as `payrail loadtest --scenario create`, without HTTP
//! and without actors. It writes to a topic of its own (`bench-<uuid>.payment.events`), so it
//! never touches a node's journal.
//!
//! The topic is left on the broker. It is deliberately not deleted: tansu 0.6's DeleteTopics
//! removes *every* topic of the cluster (its `topic_delete_by.sql` deletes by cluster, not by
//! name), and a later produce then kills its storage task. We found this the hard way.

use crate::limits::*;
use crate::report::{ErrorKind, Recorder, Report, RunInfo};
use crate::run::{spawn_progress, Live, Timeline};
use kafka_journal::admin::{self, TopicSpec};
use kafka_journal::producer::NoSignals;
use kafka_journal::{
    partition_for, Codec, Envelope, JournalError, JournalOptions, JournalProducer,
};
use payrail_payment::money::Currency;
use payrail_payment::{PaymentCreated, PaymentEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Request kind of one journal append in reports.
pub const KIND_APPEND: &str = "journal_append";
/// The topic the node journals payments to, inside the benchmark's own namespace.
pub const PAYMENT_EVENTS: &str = "payment.events";

/// `payrail bench journal`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchJournalArgs {
    /// Bootstrap brokers (host:port,…); overrides journal.brokers of the config.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// Concurrent appenders; each waits for its append's acknowledgement before the next.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub connections: u32,
    /// Length of the measured phase, in seconds (after the warm-up).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub duration: u64,
    /// Warm-up before the measured phase, in seconds; excluded from the results.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    pub warmup: u64,
    /// Merchant ids the appenders rotate through (record key and partition).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub merchants: u32,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{flag}: {message}")]
    InvalidArgument { flag: &'static str, message: String },
    #[error("journal configuration: {0}")]
    Config(String),
    #[error("creating the benchmark topic {topic}: {source}")]
    Topic {
        topic: String,
        #[source]
        source: JournalError,
    },
    #[error("the journal producer: {0}")]
    Producer(#[source] JournalError),
    #[error("an appender failed: {0}")]
    Worker(String),
}

fn invalid(flag: &'static str, message: impl Into<String>) -> BenchError {
    BenchError::InvalidArgument {
        flag,
        message: message.into(),
    }
}

/// The journal options the benchmark uses: the node's, with `--brokers` and a fresh
/// namespace `bench-<uuid>.`.
pub fn bench_options(
    node: &JournalOptions,
    args: &BenchJournalArgs,
) -> Result<JournalOptions, BenchError> {
    check_run_flags(args.connections, args.duration, args.warmup, args.merchants)
        .map_err(|e| invalid(e.flag, e.message))?;
    let mut options = node.clone();
    if let Some(brokers) = &args.brokers {
        options.brokers = brokers.clone();
    }
    options.namespace = format!("bench-{}.", Uuid::new_v4().simple());
    options.validate().map_err(BenchError::Config)?;
    Ok(options)
}

/// The `payment.created` envelope the node would journal for a create with an idempotency
/// key (same fields, same sizes).
pub fn created_envelope(
    merchant_id: &str,
    n: u64,
    amount: i64,
    currency: Currency,
) -> Envelope<PaymentEvent> {
    let idempotency_key = Uuid::new_v4().simple().to_string();
    let body =
        format!(r#"{{"amount":{amount},"currency":"eur","order_no":"lt-{n}","channel":"web"}}"#);
    let fingerprint = hex::encode(Sha256::digest(body.as_bytes()));
    let event = PaymentEvent::Created(PaymentCreated {
        amount,
        currency,
        customer_email: None,
        order_no: Some(format!("lt-{n}")),
        channel: Some("web".into()),
        metadata: BTreeMap::new(),
        capture_method: Default::default(),
        idempotency_key: Some(idempotency_key.clone()),
        request_fingerprint: Some(fingerprint),
    });
    Envelope {
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_string(),
        schema_version: payrail_payment::events::SCHEMA_VERSION,
        payment_id: format!("pay_{}", Uuid::now_v7().simple()),
        merchant_id: merchant_id.to_string(),
        sequence: 1,
        occurred_at_micros: kafka_journal::envelope::now_micros(),
        correlation_id: Some(idempotency_key),
        payload: event,
    }
}

fn classify(error: &JournalError) -> ErrorKind {
    match error {
        JournalError::Timeout(_) => ErrorKind::JournalTimeout,
        JournalError::Codec(_) => ErrorKind::Encode,
        JournalError::Kafka(_) | JournalError::Config(_) => ErrorKind::JournalRefused,
    }
}

struct Shared {
    producer: JournalProducer,
    topic: String,
    /// (merchant id, its partition).
    merchants: Vec<(String, i32)>,
    currency: Currency,
    timeline: Timeline,
    live: Arc<Live>,
    connections: u32,
}

async fn appender(shared: Arc<Shared>, connection: u32) -> Recorder {
    let mut rng = StdRng::from_entropy();
    let mut recorder = Recorder::default();
    let end = shared.timeline.end();
    let count = shared.merchants.len().max(1);
    let mut n = u64::from(connection);
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let phase = shared.timeline.phase_at(sent);
        // Rotating merchant ids: appender i takes i, i + N, i + 2N, … modulo the count.
        let index = usize::try_from(n % count as u64).unwrap_or(0);
        let Some((merchant_id, partition)) = shared.merchants.get(index) else {
            break;
        };
        let amount: i64 = rng.gen_range(100..=100_000);
        let envelope = created_envelope(merchant_id, n, amount, shared.currency);
        shared.live.issued.fetch_add(1, Ordering::Relaxed);
        shared.live.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = match shared
            .producer
            .record(&shared.topic, *partition, 0, &envelope)
        {
            Ok(record) => shared.producer.append(std::slice::from_ref(&record)).await,
            Err(e) => Err(e),
        };
        shared.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.live.finished(outcome.is_ok());
        match outcome {
            Ok(_) => recorder.ok(phase, KIND_APPEND, index, sent.elapsed()),
            Err(e) => recorder.error(phase, KIND_APPEND, classify(&e)),
        }
        n = n.saturating_add(u64::from(shared.connections));
    }
    recorder
}

/// Runs the benchmark with the node's journal options (config file and environment).
pub async fn run(node: &JournalOptions, args: &BenchJournalArgs) -> Result<Report, BenchError> {
    let options = bench_options(node, args)?;
    let topic = options.topic(PAYMENT_EVENTS);
    admin::ensure_topics(
        &options,
        &[TopicSpec {
            name: topic.clone(),
            partitions: options.partitions,
        }],
    )
    .await
    .map_err(|source| BenchError::Topic {
        topic: topic.clone(),
        source,
    })?;
    if !args.no_progress {
        eprintln!(
            "payrail bench journal: topic {topic} ({} partitions) on {}",
            options.partitions, options.brokers
        );
    }
    let producer =
        JournalProducer::new(&options, Arc::new(NoSignals)).map_err(BenchError::Producer)?;
    let merchants: Vec<(String, i32)> = (0..args.merchants)
        .map(|_| {
            let id = format!("mer_{}", Uuid::now_v7().simple());
            let partition = partition_for(id.as_bytes(), options.partitions);
            (id, partition)
        })
        .collect();
    let currency = Currency::parse("EUR").map_err(|e| BenchError::Config(e.to_string()))?;
    let timeline = Timeline::new(
        Instant::now(),
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.duration),
    );
    let shared = Arc::new(Shared {
        producer,
        topic: topic.clone(),
        merchants,
        currency,
        timeline,
        live: Arc::new(Live::default()),
        connections: args.connections,
    });
    let progress = (!args.no_progress)
        .then(|| spawn_progress("bench journal", timeline, Arc::clone(&shared.live)));
    let mut workers = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        workers.spawn(appender(Arc::clone(&shared), connection));
    }
    let mut recorder = Recorder::default();
    let mut failure = None;
    while let Some(result) = workers.join_next().await {
        match result {
            Ok(r) => recorder.merge(&r),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let finished = Instant::now();
    shared.live.stop();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    let mut details = BTreeMap::new();
    details.insert("topic".into(), topic.clone());
    details.insert("partitions".into(), options.partitions.to_string());
    details.insert(
        "content_type".into(),
        options.codec.content_type().to_string(),
    );
    details.insert("linger_ms".into(), options.linger_ms.to_string());
    details.insert(
        "topic_after_run".into(),
        "kept (never deleted: tansu 0.6 DeleteTopics drops every topic)".into(),
    );
    if let Some(e) = failure {
        return Err(BenchError::Worker(e));
    }
    let ids: Vec<String> = shared.merchants.iter().map(|(id, _)| id.clone()).collect();
    let run = RunInfo {
        command: "bench journal".into(),
        scenario: KIND_APPEND.into(),
        mode: "closed".into(),
        target: options.brokers.clone(),
        connections: args.connections,
        target_rate_per_s: None,
        warmup_s: args.warmup,
        duration_s: args.duration,
        max_requests: None,
        skew: None,
    };
    let measured = finished.saturating_duration_since(timeline.measure_start());
    Ok(Report::build(run, &recorder, measured, &ids, details))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_journal::CodecKind;

    fn args() -> BenchJournalArgs {
        BenchJournalArgs {
            brokers: None,
            connections: 4,
            duration: 2,
            warmup: 0,
            merchants: 10,
            json: true,
            no_progress: true,
        }
    }

    #[test]
    fn options_get_a_fresh_namespace_and_the_broker_override() {
        let node = JournalOptions::default();
        let mut a = args();
        a.brokers = Some("10.0.0.1:9093".into());
        let one = bench_options(&node, &a).unwrap();
        let two = bench_options(&node, &a).unwrap();
        assert_eq!(one.brokers, "10.0.0.1:9093");
        assert!(one.topic(PAYMENT_EVENTS).starts_with("bench-"));
        assert!(one.topic(PAYMENT_EVENTS).ends_with(".payment.events"));
        assert_ne!(one.namespace, two.namespace);
        assert_eq!(one.partitions, node.partitions);
        a.brokers = Some("nonsense".into());
        assert!(matches!(
            bench_options(&node, &a),
            Err(BenchError::Config(_))
        ));
        a.brokers = None;
        a.connections = 0;
        assert!(bench_options(&node, &a).is_err());
    }

    #[test]
    fn envelope_is_a_payment_created_that_round_trips_both_codecs() {
        let eur = Currency::parse("eur").unwrap();
        let e = created_envelope("mer_x", 7, 1_250, eur);
        assert_eq!(e.event_type, "payment.created");
        assert_eq!(e.sequence, 1);
        assert_eq!(e.event_id.get_version_num(), 7);
        let PaymentEvent::Created(c) = &e.payload else {
            panic!("a bench envelope is payment.created")
        };
        assert_eq!(c.amount, 1_250);
        assert_eq!(c.request_fingerprint.as_ref().map(String::len), Some(64));
        for codec in [CodecKind::Bincode, CodecKind::Json] {
            let bytes = codec.encode(&e).unwrap();
            let back: Envelope<PaymentEvent> = codec.decode(&bytes).unwrap();
            assert_eq!(back, e);
        }
    }
}
