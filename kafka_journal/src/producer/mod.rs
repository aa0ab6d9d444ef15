//! [`JournalProducer`]: appends records to the journal and returns only once the broker has
//! acknowledged them (idempotent producer, `acks=all`, explicit partition).
//!
//! - `context`: the librdkafka client context (client errors to the breaker, bounded logs);
//! - `send`: the producer in use and the enqueue of records onto it;
//! - `lanes`: per-partition lanes that hand librdkafka only what it may send now.

mod context;
mod lanes;
mod send;

pub use context::{BreakerSignals, JournalSignals, NoSignals, SignalingContext};
pub use send::OutgoingRecord;

use crate::client_log::ClientLog;
use crate::codec::{Codec, CodecError, CodecKind};
use crate::envelope::{Envelope, EventHeaders};
use crate::options::JournalOptions;
use lanes::{Admitted, Lanes, Submitted};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::util::Timeout;
use send::{enqueue, CurrentProducer};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal did not acknowledge the append within {0:?}")]
    Timeout(Duration),
    #[error("the journal refused the append: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("journal configuration: {0}")]
    Config(String),
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    pub partition: i32,
    pub offset: i64,
}

/// Cheap, cloneable handle to the node's one producer.
///
/// After a failed append the underlying librdkafka producer is replaced by a fresh one
/// (new producer id). A failed idempotent producer may bump its epoch or carry sequence
/// gaps into the next connection; a fresh producer id starts clean on any broker (and
/// tansu 0.6 panics on a bumped epoch, see docs/DECISIONS.md).
#[derive(Clone)]
pub struct JournalProducer {
    current: Arc<CurrentProducer>,
    /// `None` with `journal.partition_lanes = false`: every append goes to librdkafka at once.
    lanes: Option<Arc<Lanes>>,
    /// Behind an `Arc`: the producer is cloned into every request's state.
    config: Arc<ClientConfig>,
    signals: Arc<dyn JournalSignals>,
    client_errors: Arc<AtomicU64>,
    /// Shared by every producer this handle builds, so a replaced producer does not start
    /// its log limits over.
    log: Arc<ClientLog>,
    codec: CodecKind,
    timeout: Duration,
}

impl JournalProducer {
    /// Builds the producer from options. Does not contact the broker yet.
    pub fn new(
        options: &JournalOptions,
        signals: Arc<dyn JournalSignals>,
    ) -> Result<Self, JournalError> {
        let client_errors = Arc::new(AtomicU64::new(0));
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", options.produce_timeout_ms.to_string())
            .set("linger.ms", options.linger_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                options.max_buffered_records.to_string(),
            )
            .set("client.id", "payrail-journal");
        let log = Arc::new(options.client_log("payrail-journal"));
        let producer = Self::build(&config, &signals, &client_errors, &log)?;
        let current = Arc::new(CurrentProducer::new(producer));
        let lanes = options
            .partition_lanes
            .then(|| Arc::new(Lanes::new(current.clone())));
        Ok(Self {
            current,
            lanes,
            config: Arc::new(config),
            signals,
            client_errors,
            log,
            codec: options.codec,
            timeout: Duration::from_millis(options.produce_timeout_ms),
        })
    }

    fn build(
        config: &ClientConfig,
        signals: &Arc<dyn JournalSignals>,
        client_errors: &Arc<AtomicU64>,
        log: &Arc<ClientLog>,
    ) -> Result<FutureProducer<SignalingContext>, JournalError> {
        let context = SignalingContext {
            signals: signals.clone(),
            client_errors: client_errors.clone(),
            log: log.clone(),
        };
        config
            .create_with_context(context)
            .map_err(|e| JournalError::Config(e.to_string()))
    }

    /// Replaces producer `generation` with a fresh one (no-op if already replaced).
    fn reset(&self, generation: u64) {
        let Ok(fresh) = Self::build(&self.config, &self.signals, &self.client_errors, &self.log)
        else {
            return;
        };
        if self.current.replace(generation, fresh) {
            tracing::info!(
                generation = generation + 1,
                "journal producer replaced after a failed append"
            );
        }
    }

    /// Gives up on every append in flight: the producer is replaced and the old one's queued
    /// and in-flight records are purged, so their appends fail now instead of at the
    /// timeout (their outcome stays unknown: some may have reached the broker); appends
    /// still waiting in a partition lane fail the same way. Called when the breaker opens,
    /// so commands waiting on a dead broker move to the fallback.
    pub fn abandon_in_flight(&self) {
        let (generation, old) = self.current.get();
        self.reset(generation);
        // The waiters first: the purge fails the appends in flight, and their tickets, once
        // dropped, would hand the waiters to the fresh producer before they were failed.
        if let Some(lanes) = &self.lanes {
            lanes.abandon_waiting();
        }
        old.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    pub fn codec(&self) -> CodecKind {
        self.codec
    }

    /// Encodes `envelope` with the configured codec into a record for `topic`/`partition`,
    /// keyed by the envelope's merchant id, written under lease epoch `owner_epoch` (0 for
    /// topics without owners).
    pub fn record<P: Serialize>(
        &self,
        topic: &str,
        partition: i32,
        owner_epoch: u64,
        envelope: &Envelope<P>,
    ) -> Result<OutgoingRecord, JournalError> {
        Ok(OutgoingRecord {
            topic: topic.to_string(),
            partition,
            key: envelope.merchant_id.clone(),
            headers: EventHeaders::for_envelope(envelope, self.codec.content_type(), owner_epoch),
            value: self.codec.encode(envelope)?,
        })
    }

    /// Appends `records` in order and waits until the broker has acknowledged every one.
    /// On error some leading records may have been written: callers must treat their own
    /// state as unknown and rebuild it from the journal.
    pub async fn append(
        &self,
        records: &[OutgoingRecord],
    ) -> Result<Vec<AppendReceipt>, JournalError> {
        let started = Instant::now();
        let in_flight = RecordsInFlight::count(records.len());
        let (generation, result) = self.append_with(records, started).await;
        drop(in_flight);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("payrail_journal_append_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("payrail_journal_records_total", "outcome" => outcome)
            .increment(records.len() as u64);
        if let (Err(_), Some(generation)) = (&result, generation) {
            self.reset(generation);
        }
        result
    }

    /// Hands `records` to librdkafka — through their partition's lane when they share one —
    /// and waits for their deliveries. Returns the generation of the producer that took
    /// them (`None` if none did).
    async fn append_with(
        &self,
        records: &[OutgoingRecord],
        started: Instant,
    ) -> (Option<u64>, Result<Vec<AppendReceipt>, JournalError>) {
        // librdkafka fails the record itself at message.timeout.ms (checked about once a
        // second); the guard only protects against a lost callback or a lane that never
        // lets the records go. A record the guard gives up on is purged with the producer
        // it was queued in (see `reset`); one still in its lane never leaves it.
        let guard = self.timeout + Duration::from_secs(2);
        let lane = match (&self.lanes, records.first()) {
            (Some(lanes), Some(first))
                if records
                    .iter()
                    .all(|r| r.partition == first.partition && r.topic == first.topic) =>
            {
                Some(lanes.lane(&first.topic, first.partition))
            }
            _ => None,
        };
        let admitted = match lane.map(|lane| lane.submit(records)) {
            Some(Submitted::Now(admitted)) => admitted,
            Some(Submitted::Later(waiting)) => match tokio::time::timeout(guard, waiting).await {
                Ok(Ok(admitted)) => admitted,
                Ok(Err(_closed)) => return (None, Err(JournalError::Kafka(KafkaError::Canceled))),
                Err(_) => return (None, Err(JournalError::Timeout(self.timeout))),
            },
            None => {
                // The handle stays alive until the deliveries are in (see `Admitted`).
                let (generation, producer) = self.current.get();
                let (deliveries, error) = enqueue(&producer, records);
                let deliveries = match error {
                    Some(error) => Err(error),
                    None => Ok(deliveries),
                };
                let result = self.delivered(deliveries, started + guard).await;
                drop(producer);
                return (Some(generation), result);
            }
        };
        let Admitted {
            producer,
            deliveries,
            _ticket,
        } = admitted;
        let result = self.delivered(deliveries, started + guard).await;
        drop(_ticket);
        (producer.map(|(generation, _)| generation), result)
    }

    /// Waits for every delivery until `deadline`, in order.
    async fn delivered(
        &self,
        deliveries: Result<Vec<DeliveryFuture>, KafkaError>,
        deadline: Instant,
    ) -> Result<Vec<AppendReceipt>, JournalError> {
        let deliveries = deliveries.map_err(JournalError::Kafka)?;
        let mut receipts = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match tokio::time::timeout_at(deadline.into(), delivery).await {
                Err(_) => return Err(JournalError::Timeout(self.timeout)),
                Ok(Err(_canceled)) => {
                    return Err(JournalError::Kafka(KafkaError::Canceled));
                }
                Ok(Ok(Err((error, _)))) => {
                    return Err(match error {
                        KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                        ) => JournalError::Timeout(self.timeout),
                        other => JournalError::Kafka(other),
                    })
                }
                Ok(Ok(Ok(delivered))) => receipts.push(AppendReceipt {
                    partition: delivered.partition,
                    offset: delivered.offset,
                }),
            }
        }
        Ok(receipts)
    }

    /// Whether the broker answers a metadata request within `timeout`.
    pub async fn is_reachable(&self, timeout: Duration) -> bool {
        let (_, producer) = self.current.get();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// The high watermark of `topic`/`partition` (one past its last record), asked of the
    /// broker through this producer's connection.
    pub async fn high_watermark(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<i64, JournalError> {
        let (_, producer) = self.current.get();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, partition, Timeout::After(timeout))
                .map(|(_, high)| high)
                .map_err(JournalError::Kafka)
        })
        .await
        .map_err(|e| JournalError::Config(format!("watermark task: {e}")))?
    }

    /// Client errors reported by librdkafka since start.
    pub fn client_errors(&self) -> u64 {
        self.client_errors.load(Ordering::Relaxed)
    }

    /// Waits for buffered records to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.current.get().1.flush(Timeout::After(timeout));
    }
}

/// `payrail_journal_records_in_flight`, raised for one append and lowered when it ends —
/// also when the append's future is dropped (a stopped actor), so the gauge cannot drift.
struct RecordsInFlight(usize);

impl RecordsInFlight {
    fn count(records: usize) -> Self {
        metrics::gauge!("payrail_journal_records_in_flight").increment(records as f64);
        Self(records)
    }
}

impl Drop for RecordsInFlight {
    fn drop(&mut self) {
        metrics::gauge!("payrail_journal_records_in_flight").decrement(self.0 as f64);
    }
}
