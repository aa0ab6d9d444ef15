//! Stripe objects built from payrail's payment view. payrail ids are kept (`pay_…` as the
//! intent's id, `re_…` as the refund's): the same payment is the same object on both APIs
//! (docs/DECISIONS.md, "Stripe-compatible API (issue 26)").
//!
//! Status mapping (payrail → Stripe):
//!
//! | payrail                   | Stripe `status`           | also                              |
//! |---------------------------|---------------------------|-----------------------------------|
//! | `requires_payment_method` | `requires_payment_method` |                                   |
//! | `processing`              | `processing`              |                                   |
//! | `requires_capture`        | `requires_capture`        | `amount_capturable`               |
//! | `succeeded`               | `succeeded`               | `amount_received`                 |
//! | `failed`                  | `requires_payment_method` | `last_payment_error` (card_error) |
//! | `canceled`                | `canceled`                |                                   |
//! | `expired`                 | `canceled`                | `cancellation_reason: automatic`  |
//!
//! `requires_confirmation` never occurs: payrail holds no payment method before the
//! confirmation (a create with `payment_method` must also `confirm`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The parts of payrail's payment view the adapter reads (filled from `PaymentView`; this
/// crate depends on the pure domain only, nothing of the runtime).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payment {
    pub id: String,
    pub amount: i64,
    /// Lower case ISO 4217.
    pub currency: String,
    /// payrail's status (`requires_payment_method`, `processing`, …, `expired`).
    pub status: String,
    pub capture_method: String,
    pub payment_method: Option<String>,
    pub amount_capturable: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub refunds: Vec<RefundSource>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub customer_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: i64,
}

/// payrail's view as this crate reads it (the HTTP answers and the notification pool's
/// Stripe-format webhooks build their objects from the same view).
impl From<payrail_payment::PaymentView> for Payment {
    fn from(view: payrail_payment::PaymentView) -> Self {
        let refunds = view
            .refunds
            .into_iter()
            .map(|r| RefundSource {
                id: r.id,
                amount: r.amount,
                status: r.status,
                reason: r.reason,
                created: r.created,
            })
            .collect();
        Self {
            id: view.id,
            amount: view.amount,
            currency: view.currency,
            status: view.status,
            capture_method: view.capture_method,
            payment_method: view.payment_method,
            amount_capturable: view.amount_capturable,
            amount_captured: view.amount_captured,
            amount_refunded: view.amount_refunded,
            refunds,
            failure_code: view.failure_code,
            failure_message: view.failure_message,
            customer_email: view.customer_email,
            metadata: view.metadata,
            created: view.created,
        }
    }
}

/// A refund of a [`Payment`], as payrail's view has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefundSource {
    pub id: String,
    pub amount: i64,
    /// `pending`, `succeeded`, `failed`.
    pub status: String,
    pub reason: Option<String>,
    pub created: i64,
}

/// `last_payment_error` of an intent whose attempt failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPaymentError {
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub message: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub object: String,
    pub amount: i64,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub currency: String,
    pub status: String,
    pub capture_method: String,
    pub confirmation_method: String,
    pub created: i64,
    pub livemode: bool,
    pub metadata: BTreeMap<String, String>,
    pub description: Option<String>,
    pub receipt_email: Option<String>,
    pub payment_method: Option<String>,
    pub payment_method_types: Vec<String>,
    pub last_payment_error: Option<LastPaymentError>,
    pub cancellation_reason: Option<String>,
    pub canceled_at: Option<i64>,
    pub client_secret: Option<String>,
    pub latest_charge: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub next_action: Option<serde_json::Value>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub object: String,
    pub amount: i64,
    pub currency: String,
    pub payment_intent: String,
    pub status: String,
    pub reason: Option<String>,
    pub created: i64,
    pub metadata: BTreeMap<String, String>,
    pub charge: Option<String>,
}

/// A page of a list (`object: "list"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    pub object: String,
    pub data: Vec<T>,
    pub has_more: bool,
    pub url: String,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>, has_more: bool, url: &str) -> Self {
        Self {
            object: "list".into(),
            data,
            has_more,
            url: url.into(),
        }
    }
}

/// Stripe's `status` for payrail's.
pub fn intent_status(payrail_status: &str) -> &'static str {
    match payrail_status {
        "processing" => "processing",
        "requires_capture" => "requires_capture",
        "succeeded" => "succeeded",
        "canceled" | "expired" => "canceled",
        // `failed`: Stripe returns a failed attempt's intent to `requires_payment_method`.
        _ => "requires_payment_method",
    }
}

/// Stripe's decline codes that arrive under the error code `card_declined`.
const DECLINE_CODES: &[&str] = &[
    "generic_decline",
    "insufficient_funds",
    "lost_card",
    "stolen_card",
    "fraudulent",
    "do_not_honor",
    "card_velocity_exceeded",
    "withdrawal_count_limit_exceeded",
];

/// Error codes that are their own decline code in Stripe's test cards.
const SELF_DECLINING: &[&str] = &[
    "expired_card",
    "incorrect_cvc",
    "processing_error",
    "incorrect_number",
];

/// Stripe's (`code`, `decline_code`) for payrail's failure code (the processor's decline code
/// when it gave one, else its error code).
pub fn decline(failure_code: &str) -> (String, Option<String>) {
    if failure_code == "card_declined" {
        ("card_declined".into(), Some("generic_decline".into()))
    } else if DECLINE_CODES.contains(&failure_code) {
        ("card_declined".into(), Some(failure_code.into()))
    } else if SELF_DECLINING.contains(&failure_code) {
        (failure_code.into(), Some(failure_code.into()))
    } else {
        (failure_code.into(), None)
    }
}

impl From<&Payment> for PaymentIntent {
    fn from(p: &Payment) -> Self {
        let last_payment_error = (p.status == "failed").then(|| {
            let failure = p.failure_code.as_deref().unwrap_or("card_declined");
            let (code, decline_code) = decline(failure);
            LastPaymentError {
                kind: "card_error".into(),
                code,
                decline_code,
                message: p
                    .failure_message
                    .clone()
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "Your card was declined.".into()),
            }
        });
        Self {
            id: p.id.clone(),
            object: "payment_intent".into(),
            amount: p.amount,
            amount_capturable: p.amount_capturable,
            amount_received: p.amount_captured,
            currency: p.currency.clone(),
            status: intent_status(&p.status).into(),
            capture_method: p.capture_method.clone(),
            confirmation_method: "automatic".into(),
            created: p.created,
            livemode: false,
            metadata: p.metadata.clone(),
            description: None,
            receipt_email: p.customer_email.clone(),
            payment_method: p.payment_method.clone(),
            payment_method_types: vec!["card".into()],
            last_payment_error,
            cancellation_reason: (p.status == "expired").then(|| "automatic".into()),
            canceled_at: None,
            client_secret: None,
            latest_charge: None,
            next_action: None,
        }
    }
}

impl Refund {
    pub fn new(payment: &Payment, refund: &RefundSource) -> Self {
        Self {
            id: refund.id.clone(),
            object: "refund".into(),
            amount: refund.amount,
            currency: payment.currency.clone(),
            payment_intent: payment.id.clone(),
            status: refund.status.clone(),
            reason: refund.reason.clone(),
            created: refund.created,
            metadata: BTreeMap::new(),
            charge: None,
        }
    }
}

/// Stripe's refund reasons.
pub const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];
/// Stripe's cancellation reasons a merchant may give.
pub const CANCELLATION_REASONS: &[&str] = &[
    "duplicate",
    "fraudulent",
    "requested_by_customer",
    "abandoned",
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn payment(status: &str) -> Payment {
        Payment {
            id: "pay_0123".into(),
            amount: 2000,
            currency: "usd".into(),
            status: status.into(),
            capture_method: "automatic".into(),
            created: 1_700_000_000,
            ..Payment::default()
        }
    }

    pub(crate) fn intent_with_failure(code: &str) -> PaymentIntent {
        let mut p = payment("failed");
        p.failure_code = Some(code.into());
        p.failure_message = Some("Your card has insufficient funds.".into());
        PaymentIntent::from(&p)
    }

    #[test]
    fn every_payrail_status_maps_onto_a_stripe_status() {
        for (payrail, stripe) in [
            ("requires_payment_method", "requires_payment_method"),
            ("processing", "processing"),
            ("requires_capture", "requires_capture"),
            ("succeeded", "succeeded"),
            ("failed", "requires_payment_method"),
            ("canceled", "canceled"),
            ("expired", "canceled"),
        ] {
            assert_eq!(
                PaymentIntent::from(&payment(payrail)).status,
                stripe,
                "{payrail}"
            );
        }
    }

    #[test]
    fn a_failed_attempt_has_a_last_payment_error_and_others_none() {
        let failed = intent_with_failure("insufficient_funds");
        let error = failed.last_payment_error.expect("last_payment_error");
        assert_eq!(error.kind, "card_error");
        assert_eq!(error.code, "card_declined");
        assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
        assert!(PaymentIntent::from(&payment("requires_payment_method"))
            .last_payment_error
            .is_none());
    }

    #[test]
    fn decline_codes_follow_stripes_test_cards() {
        assert_eq!(
            decline("card_declined"),
            ("card_declined".into(), Some("generic_decline".into()))
        );
        assert_eq!(
            decline("lost_card"),
            ("card_declined".into(), Some("lost_card".into()))
        );
        assert_eq!(
            decline("expired_card"),
            ("expired_card".into(), Some("expired_card".into()))
        );
        assert_eq!(decline("psp_said_no"), ("psp_said_no".into(), None));
    }

    #[test]
    fn an_expired_authorization_is_canceled_automatically() {
        let intent = PaymentIntent::from(&payment("expired"));
        assert_eq!(intent.cancellation_reason.as_deref(), Some("automatic"));
    }

    #[test]
    fn amounts_and_receipt_email_carry_over_in_minor_units() {
        let mut p = payment("succeeded");
        p.amount_captured = 1500;
        p.customer_email = Some("a@example.com".into());
        let intent = PaymentIntent::from(&p);
        assert_eq!((intent.amount, intent.amount_received), (2000, 1500));
        assert_eq!(intent.receipt_email.as_deref(), Some("a@example.com"));
        let json = serde_json::to_value(&intent).unwrap();
        assert_eq!(json["object"], "payment_intent");
        assert_eq!(json["amount_received"], 1500);
    }

    #[test]
    fn a_refund_names_its_payment_intent() {
        let p = payment("succeeded");
        let r = Refund::new(
            &p,
            &RefundSource {
                id: "re_1".into(),
                amount: 500,
                status: "succeeded".into(),
                reason: None,
                created: 1,
            },
        );
        assert_eq!(
            (r.payment_intent.as_str(), r.currency.as_str(), r.amount),
            ("pay_0123", "usd", 500)
        );
    }
}
