//! The event envelope: the metadata every journaled event carries around its payload.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One journaled domain event. `P` is the domain payload; the journal never looks inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// UUIDv7: unique, and sortable by creation time.
    pub event_id: Uuid,
    /// Dotted event type, e.g. `payment.created`.
    pub event_type: String,
    /// Version of the payload's schema for this event type.
    pub schema_version: u16,
    /// The aggregate (payment) this event belongs to; empty for non-payment events.
    pub payment_id: String,
    /// The merchant; also the Kafka key.
    pub merchant_id: String,
    /// Per-aggregate sequence number, starting at 1 and rising by exactly 1 per event.
    pub sequence: u64,
    /// When the event happened, in microseconds since the Unix epoch (UTC).
    pub occurred_at_micros: i64,
    /// Request id or idempotency key that caused the event.
    pub correlation_id: Option<String>,
    /// The domain payload.
    pub payload: P,
}

/// The Kafka headers that repeat envelope fields, so a consumer can route without decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeaders {
    pub event_type: String,
    pub event_id: String,
    pub schema_version: String,
    pub content_type: String,
    /// Epoch of the partition lease its writer held (see [`crate::fence`]); 0 without
    /// leases.
    pub owner_epoch: u64,
}

impl EventHeaders {
    pub const EVENT_TYPE: &'static str = "event_type";
    pub const EVENT_ID: &'static str = "event_id";
    pub const SCHEMA_VERSION: &'static str = "schema_version";
    pub const CONTENT_TYPE: &'static str = "content_type";
    pub const OWNER_EPOCH: &'static str = "owner_epoch";

    pub fn for_envelope<P>(envelope: &Envelope<P>, content_type: &str, owner_epoch: u64) -> Self {
        Self {
            event_type: envelope.event_type.clone(),
            event_id: envelope.event_id.to_string(),
            schema_version: envelope.schema_version.to_string(),
            content_type: content_type.to_string(),
            owner_epoch,
        }
    }
}

/// Current time in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
