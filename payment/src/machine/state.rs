//! The payment's state: statuses, refunds and the [`Payment`] that [`super::evolve`] folds.

use crate::events::CaptureMethod;
use crate::money::Currency;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stripe-compatible payment statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    RequiresPaymentMethod,
    Processing,
    RequiresCapture,
    Succeeded,
    Failed,
    Canceled,
    Expired,
}

impl PaymentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RequiresPaymentMethod => "requires_payment_method",
            Self::Processing => "processing",
            Self::RequiresCapture => "requires_capture",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Expired
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub status: RefundStatus,
    pub reason: Option<String>,
    pub created_at_micros: i64,
}

/// A payment's state: everything needed to decide the next command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub merchant_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub status: PaymentStatus,
    pub capture_method: CaptureMethod,
    pub payment_method: Option<String>,
    /// Authorized and not yet captured (manual capture).
    pub amount_capturable: i64,
    pub amount_captured: i64,
    /// Sum of succeeded refunds.
    pub amount_refunded: i64,
    pub refunds: Vec<Refund>,
    pub psp_reference: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub customer_email: Option<String>,
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub created_at_micros: i64,
    /// When the last event was applied.
    pub updated_at_micros: i64,
    /// Sequence number of the last event applied (1 after creation).
    pub sequence: u64,
}

impl Payment {
    /// Captured amount not yet refunded or reserved by a pending refund.
    pub fn refundable(&self) -> i64 {
        let reserved: i64 = self
            .refunds
            .iter()
            .filter(|r| r.status != RefundStatus::Failed)
            .map(|r| r.amount)
            .sum();
        self.amount_captured - reserved
    }

    pub fn refund(&self, refund_id: &str) -> Option<&Refund> {
        self.refunds.iter().find(|r| r.id == refund_id)
    }
}
