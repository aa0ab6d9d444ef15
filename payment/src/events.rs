//! Domain events of a payment. Each is journaled in an [`kafka_journal::Envelope`] whose
//! `event_type` is [`PaymentEvent::event_type`] and whose `sequence` orders it within its
//! payment.

use crate::money::Currency;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Schema version of every payload below; bump per type when a payload changes shape.
pub const SCHEMA_VERSION: u16 = 1;

/// How a confirmed payment is captured.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    /// The processor captures at authorization.
    #[default]
    Automatic,
    /// The merchant captures later (`requires_capture`).
    Manual,
}

impl CaptureMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Automatic => "automatic",
            Self::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCreated {
    pub amount: i64,
    pub currency: Currency,
    pub customer_email: Option<String>,
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub capture_method: CaptureMethod,
    /// The idempotency key the payment was created with, if any.
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the canonical create request, to tell a replay from a mismatch.
    pub request_fingerprint: Option<String>,
}

/// Every event a payment can have. Externally tagged, so both codecs can carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    /// `payment.created`
    Created(PaymentCreated),
    /// `payment.processing`: confirmed with a payment method; the processor decides.
    Processing {
        payment_method: String,
        capture_method: CaptureMethod,
        /// The processor's id for this payment (its payment intent).
        psp_reference: Option<String>,
    },
    /// `payment.authorized`: funds held; waits for capture.
    Authorized {
        psp_reference: Option<String>,
        amount_capturable: i64,
    },
    /// `payment.succeeded`: captured.
    Succeeded {
        psp_reference: Option<String>,
        amount_captured: i64,
    },
    /// `payment.failed`
    Failed { code: String, message: String },
    /// `payment.canceled`
    Canceled { reason: Option<String> },
    /// `payment.expired`: the authorization lapsed before capture.
    Expired,
    /// `refund.created`: pending at the processor.
    RefundCreated {
        refund_id: String,
        amount: i64,
        reason: Option<String>,
    },
    /// `refund.succeeded`
    RefundSucceeded {
        refund_id: String,
        psp_reference: Option<String>,
    },
    /// `refund.failed`
    RefundFailed { refund_id: String, code: String },
}

impl PaymentEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Created(_) => "payment.created",
            Self::Processing { .. } => "payment.processing",
            Self::Authorized { .. } => "payment.authorized",
            Self::Succeeded { .. } => "payment.succeeded",
            Self::Failed { .. } => "payment.failed",
            Self::Canceled { .. } => "payment.canceled",
            Self::Expired => "payment.expired",
            Self::RefundCreated { .. } => "refund.created",
            Self::RefundSucceeded { .. } => "refund.succeeded",
            Self::RefundFailed { .. } => "refund.failed",
        }
    }
}
