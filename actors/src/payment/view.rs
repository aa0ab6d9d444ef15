//! The API representation of a payment (Stripe conventions: `object`, unix `created`).

use super::machine::Payment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    pub id: String,
    pub object: String,
    pub merchant_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub amount_captured: i64,
    pub amount_refunded: i64,
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
            amount_captured: p.amount_captured,
            amount_refunded: p.amount_refunded,
            customer_email: p.customer_email.clone(),
            order_no: p.order_no.clone(),
            channel: p.channel.clone(),
            metadata: p.metadata.clone(),
            created: p.created_at_micros.div_euclid(1_000_000),
        }
    }
}
