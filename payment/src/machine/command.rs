//! What can be asked of a payment ([`Command`]) and why it can be refused ([`Refusal`]).

use super::PaymentStatus;
use crate::events::CaptureMethod;
use crate::money::Currency;
use std::collections::BTreeMap;

/// A validated create request (the HTTP edge validates; the machine re-checks invariants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePayment {
    pub amount: i64,
    pub currency: Currency,
    pub customer_email: Option<String>,
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub capture_method: CaptureMethod,
    pub idempotency_key: Option<String>,
    pub request_fingerprint: Option<String>,
}

/// What the processor says about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Authorized for `amount_capturable`, waiting for capture.
    Authorized {
        psp_reference: Option<String>,
        amount_capturable: i64,
    },
    /// Captured `amount_captured`.
    Succeeded {
        psp_reference: Option<String>,
        amount_captured: i64,
    },
    Failed {
        code: String,
        message: String,
    },
    /// Canceled at the processor (e.g. voided authorization).
    Canceled,
    /// Still undecided.
    Processing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create(CreatePayment),
    Confirm {
        payment_method: String,
        capture_method: Option<CaptureMethod>,
        /// The processor's intent, created before the confirmation is journaled.
        psp_reference: Option<String>,
    },
    RecordOutcome(Outcome),
    /// Capture `amount` (default: everything authorized).
    Capture {
        amount: Option<i64>,
    },
    Cancel {
        reason: Option<String>,
    },
    Expire,
    CreateRefund {
        refund_id: String,
        amount: Option<i64>,
        reason: Option<String>,
    },
    RecordRefundOutcome {
        refund_id: String,
        succeeded: bool,
        psp_reference: Option<String>,
        code: Option<String>,
    },
    /// `command` (`RecordOutcome` or `RecordRefundOutcome`) as a processor's webhook
    /// reports it for the intent `psp_reference`: decided only if that is the payment's.
    FromProcessor {
        psp_reference: String,
        command: Box<Command>,
    },
}

impl Command {
    /// The command's name, for logs and fault injection.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Create(_) => "create",
            Command::Confirm { .. } => "confirm",
            Command::RecordOutcome(_) => "record_outcome",
            Command::Capture { .. } => "capture",
            Command::Cancel { .. } => "cancel",
            Command::Expire => "expire",
            Command::CreateRefund { .. } => "refund",
            Command::RecordRefundOutcome { .. } => "record_refund_outcome",
            Command::FromProcessor { command, .. } => command.kind(),
        }
    }
}

/// Why a command yields no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the payment already exists")]
    AlreadyExists,
    #[error("the payment does not exist")]
    NotFound,
    #[error("amount must be between 1 and {max} minor units")]
    InvalidAmount { max: i64 },
    #[error("this payment is {status} and cannot {action}", status = .status.as_str())]
    InvalidState {
        status: PaymentStatus,
        action: &'static str,
    },
    #[error("capture amount {requested} exceeds the authorized {capturable}")]
    CaptureExceedsAuthorized { requested: i64, capturable: i64 },
    #[error("refund amount {requested} exceeds the refundable {refundable}")]
    RefundExceedsCaptured { requested: i64, refundable: i64 },
    #[error("no such refund")]
    UnknownRefund,
    #[error("the idempotency key was first used with other parameters")]
    IdempotencyMismatch,
    #[error("the processor's event is for another intent than this payment's")]
    ForeignIntent,
}
