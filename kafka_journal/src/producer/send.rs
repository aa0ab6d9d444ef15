//! Handing records to librdkafka: the producer currently in use, and the enqueue of one
//! append's records onto it (which does not wait for the broker).

use super::context::SignalingContext;
use crate::envelope::EventHeaders;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::sync::{Arc, RwLock};

/// One record ready to append.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OutgoingRecord {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub headers: EventHeaders,
    pub value: Vec<u8>,
}

pub(crate) type Producer = Arc<FutureProducer<SignalingContext>>;

/// The producer appends go to, and its generation (bumped each time a failed append
/// replaces it).
pub(crate) struct CurrentProducer(RwLock<(u64, Producer)>);

impl CurrentProducer {
    pub(crate) fn new(producer: FutureProducer<SignalingContext>) -> Self {
        Self(RwLock::new((0, Arc::new(producer))))
    }

    pub(crate) fn get(&self) -> (u64, Producer) {
        let guard = match self.0.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        (guard.0, guard.1.clone())
    }

    /// Installs `fresh` as generation `generation + 1` unless `generation` was already
    /// replaced; says whether it did.
    pub(crate) fn replace(&self, generation: u64, fresh: FutureProducer<SignalingContext>) -> bool {
        let mut guard = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.0 != generation {
            return false;
        }
        let old = std::mem::replace(&mut *guard, (generation + 1, Arc::new(fresh)));
        drop(guard);
        // The last handle of a producer purges and flushes it (up to 500 ms) when dropped:
        // never under the lock. Appends still in flight on it hold handles of their own.
        drop(old);
        true
    }
}

/// Enqueues `records` in order. Returns the deliveries of those enqueued and, if one could
/// not be (the client's buffer is full), why — the records after it are not enqueued.
pub(crate) fn enqueue(
    producer: &FutureProducer<SignalingContext>,
    records: &[OutgoingRecord],
) -> (Vec<DeliveryFuture>, Option<KafkaError>) {
    let mut deliveries = Vec::with_capacity(records.len());
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
        match producer.send_result(future_record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((error, _)) => return (deliveries, Some(error)),
        }
    }
    (deliveries, None)
}
