//! The API representation of a payment and its refunds (Stripe conventions: `object`, unix
//! `created`, lower-case currency).

use super::machine::{Payment, Refund};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundView {
    pub id: String,
    pub object: String,
    pub payment_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub reason: Option<String>,
    pub created: i64,
}

impl RefundView {
    pub fn new(payment: &Payment, refund: &Refund) -> Self {
        Self {
            id: refund.id.clone(),
            object: "refund".into(),
            payment_id: payment.id.clone(),
            amount: refund.amount,
            currency: payment.currency.api_code(),
            status: refund.status.as_str().into(),
            reason: refund.reason.clone(),
            created: refund.created_at_micros.div_euclid(1_000_000),
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    pub id: String,
    pub object: String,
    pub merchant_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub capture_method: String,
    pub payment_method: Option<String>,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub refunds: Vec<RefundView>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    /// The processor's id for this payment.
    pub processor_reference: Option<String>,
    pub customer_email: Option<String>,
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: i64,
}

impl From<&Payment> for PaymentView {
    fn from(p: &Payment) -> Self {
        Self {
            id: p.id.clone(),
            object: "payment".into(),
            merchant_id: p.merchant_id.clone(),
            amount: p.amount,
            currency: p.currency.api_code(),
            status: p.status.as_str().into(),
            capture_method: p.capture_method.as_str().into(),
            payment_method: p.payment_method.clone(),
            amount_capturable: p.amount_capturable,
            amount_captured: p.amount_captured,
            amount_refunded: p.amount_refunded,
            refunds: p.refunds.iter().map(|r| RefundView::new(p, r)).collect(),
            failure_code: p.failure_code.clone(),
            failure_message: p.failure_message.clone(),
            processor_reference: p.psp_reference.clone(),
            customer_email: p.customer_email.clone(),
            order_no: p.order_no.clone(),
            channel: p.channel.clone(),
            metadata: p.metadata.clone(),
            created: p.created_at_micros.div_euclid(1_000_000),
        }
    }
}
