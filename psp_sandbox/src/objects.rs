//! The sandbox's wire objects: what it answers (intents, refunds, events, errors) and the
//! request bodies it takes, in Stripe's shapes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PaymentError {
    pub(crate) code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decline_code: Option<String>,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Intent {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) status: String,
    pub(crate) capture_method: String,
    pub(crate) payment_method: String,
    pub(crate) amount_capturable: i64,
    pub(crate) amount_received: i64,
    pub(crate) metadata: HashMap<String, String>,
    pub(crate) last_payment_error: Option<PaymentError>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RefundObject {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) payment_intent: String,
    pub(crate) status: String,
    pub(crate) metadata: HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) created: i64,
    pub(crate) data: Value,
    #[serde(skip)]
    pub(crate) payment_intent: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateIntent {
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) payment_method: String,
    #[serde(default)]
    pub(crate) capture_method: Option<String>,
    #[serde(default)]
    pub(crate) metadata: HashMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct CaptureBody {
    #[serde(default)]
    pub(crate) amount_to_capture: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateRefund {
    pub(crate) payment_intent: String,
    #[serde(default)]
    pub(crate) amount: Option<i64>,
    #[serde(default)]
    pub(crate) metadata: HashMap<String, String>,
}
