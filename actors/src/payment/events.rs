//! Domain events of a payment. Each is journaled in an [`kafka_journal::Envelope`] whose
//! `event_type` is [`PaymentEvent::event_type`] and whose `sequence` orders it within its
//! payment.

use crate::money::Currency;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version of every payload below; bump per type when a payload changes shape.
pub const SCHEMA_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCreated {
    pub amount: i64,
    pub currency: Currency,
    pub customer_email: Option<String>,
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The idempotency key the payment was created with, if any.
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the canonical create request, to tell a replay from a mismatch.
    pub request_fingerprint: Option<String>,
}

/// Every event a payment can have. Externally tagged, so both codecs can carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    Created(PaymentCreated),
}

impl PaymentEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Created(_) => "payment.created",
        }
    }
}
