//! [`JournalProducer`]: appends records to the journal and returns only once the broker has
//! acknowledged them (idempotent producer, `acks=all`, explicit partition).

use crate::client_log::ClientLog;
use crate::codec::{Codec, CodecError, CodecKind};
use crate::envelope::{Envelope, EventHeaders};
use crate::options::JournalOptions;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

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

/// One record ready to append.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OutgoingRecord {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub headers: EventHeaders,
    pub value: Vec<u8>,
}

/// Client-level signals from librdkafka (e.g. all brokers down), for the circuit breaker.
pub trait JournalSignals: Send + Sync + 'static {
    fn client_error(&self, error: &KafkaError, reason: &str);
}

/// Ignores signals; the default until a health monitor is attached.
pub struct NoSignals;
impl JournalSignals for NoSignals {
    fn client_error(&self, _: &KafkaError, _: &str) {}
}

/// Opens the journal breaker on a client-wide error: every broker is down, so no append can
/// succeed and waiting for each one's timeout would only hold callers.
pub struct BreakerSignals(pub payrail_supervisor::JournalHealth);

impl JournalSignals for BreakerSignals {
    fn client_error(&self, error: &KafkaError, _reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.0.trip();
        }
    }
}

/// librdkafka context that forwards client errors to [`JournalSignals`].
pub struct SignalingContext {
    signals: Arc<dyn JournalSignals>,
    client_errors: Arc<AtomicU64>,
    log: Arc<ClientLog>,
}

impl ClientContext for SignalingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        self.log.error(&error, reason);
        self.signals.client_error(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }
}

/// Cheap, cloneable handle to the node's one producer.
///
/// After a failed append the underlying librdkafka producer is replaced by a fresh one
/// (new producer id). A failed idempotent producer may bump its epoch or carry sequence
/// gaps into the next connection; a fresh producer id starts clean on any broker (and
/// tansu 0.6 panics on a bumped epoch, see docs/DECISIONS.md).
#[derive(Clone)]
pub struct JournalProducer {
    current: Arc<RwLock<(u64, Arc<FutureProducer<SignalingContext>>)>>,
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
        Ok(Self {
            current: Arc::new(RwLock::new((0, Arc::new(producer)))),
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

    fn producer(&self) -> (u64, Arc<FutureProducer<SignalingContext>>) {
        match self.current.read() {
            Ok(guard) => (guard.0, guard.1.clone()),
            Err(poisoned) => {
                let guard = poisoned.into_inner();
                (guard.0, guard.1.clone())
            }
        }
    }

    /// Replaces producer `generation` with a fresh one (no-op if already replaced).
    fn reset(&self, generation: u64) {
        let Ok(fresh) = Self::build(&self.config, &self.signals, &self.client_errors, &self.log)
        else {
            return;
        };
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.0 == generation {
            tracing::info!(
                generation = generation + 1,
                "journal producer replaced after a failed append"
            );
            *guard = (generation + 1, Arc::new(fresh));
        }
    }

    /// Gives up on every append in flight: the producer is replaced and the old one's queued
    /// and in-flight records are purged, so their appends fail now instead of at the
    /// timeout (their outcome stays unknown: some may have reached the broker). Called
    /// when the breaker opens, so commands waiting on a dead broker move to the fallback.
    pub fn abandon_in_flight(&self) {
        let (generation, old) = self.producer();
        self.reset(generation);
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
        let (generation, producer) = self.producer();
        let started = std::time::Instant::now();
        let in_flight = RecordsInFlight::count(records.len());
        let result = self.append_with(&producer, records).await;
        drop(in_flight);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("payrail_journal_append_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("payrail_journal_records_total", "outcome" => outcome)
            .increment(records.len() as u64);
        if result.is_err() {
            self.reset(generation);
        }
        result
    }

    async fn append_with(
        &self,
        producer: &FutureProducer<SignalingContext>,
        records: &[OutgoingRecord],
    ) -> Result<Vec<AppendReceipt>, JournalError> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let epoch = record.headers.owner_epoch.to_string();
            let headers = OwnedHeaders::new_with_capacity(5)
                .insert(Header {
                    key: EventHeaders::EVENT_TYPE,
                    value: Some(record.headers.event_type.as_bytes()),
                })
                .insert(Header {
                    key: EventHeaders::EVENT_ID,
                    value: Some(record.headers.event_id.as_bytes()),
                })
                .insert(Header {
                    key: EventHeaders::SCHEMA_VERSION,
                    value: Some(record.headers.schema_version.as_bytes()),
                })
                .insert(Header {
                    key: EventHeaders::CONTENT_TYPE,
                    value: Some(record.headers.content_type.as_bytes()),
                })
                .insert(Header {
                    key: EventHeaders::OWNER_EPOCH,
                    value: Some(epoch.as_bytes()),
                });
            let future_record = FutureRecord::to(&record.topic)
                .partition(record.partition)
                .key(record.key.as_bytes())
                .payload(&record.value)
                .headers(headers);
            // Enqueueing only waits when the client buffer is full; the broker wait is below.
            let delivery = producer
                .send_result(future_record)
                .map_err(|(e, _)| JournalError::Kafka(e))?;
            pending.push(delivery);
        }
        let mut receipts = Vec::with_capacity(pending.len());
        // librdkafka fails the record itself at message.timeout.ms (checked about once a
        // second); the guard only protects against a lost callback. A record the guard gives
        // up on is purged with the producer it was queued in (see `reset`).
        let guard = self.timeout + Duration::from_secs(2);
        for delivery in pending {
            match tokio::time::timeout(guard, delivery).await {
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
        let (_, producer) = self.producer();
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
        let (_, producer) = self.producer();
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
        let _ = self.producer().1.flush(Timeout::After(timeout));
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
