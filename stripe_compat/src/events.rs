//! Stripe event objects for the webhooks of a merchant created with `"webhook_api":
//! "stripe"`: the notification pool builds the body with [`event`] and signs it with a
//! `Stripe-Signature` header, so the merchant's `Webhook.construct_event` /
//! `webhooks.constructEvent` verifies it unchanged.
//!
//! Event types (payrail → Stripe); the data object is the intent, or the refund for
//! `refund.*`, as of the event:
//!
//! | payrail             | Stripe                                  |
//! |---------------------|-----------------------------------------|
//! | `payment.created`   | `payment_intent.created`                |
//! | `payment.processing`| `payment_intent.processing`             |
//! | `payment.authorized`| `payment_intent.amount_capturable_updated` |
//! | `payment.succeeded` | `payment_intent.succeeded`              |
//! | `payment.failed`    | `payment_intent.payment_failed`         |
//! | `payment.canceled`, `payment.expired` | `payment_intent.canceled` |
//! | `refund.created`    | `refund.created`                        |
//! | `refund.succeeded`  | `refund.updated` (status `succeeded`)   |
//! | `refund.failed`     | `refund.failed`                         |
//!
//! payrail has no charge object, so no `charge.*` event is sent (docs/stripe-compat.md).

use crate::objects::{Payment, PaymentIntent, Refund};
use serde_json::{json, Value};

/// The API version the objects are shaped after: that of the pinned SDKs (stripe-python
/// 12.5.1, stripe-node 18.5.0), stated in each event's `api_version`.
pub const API_VERSION: &str = "2025-08-27.basil";

/// Stripe's event type for a payrail event type; `None`: no Stripe counterpart.
pub fn event_type(payrail_event_type: &str) -> Option<&'static str> {
    Some(match payrail_event_type {
        "payment.created" => "payment_intent.created",
        "payment.processing" => "payment_intent.processing",
        "payment.authorized" => "payment_intent.amount_capturable_updated",
        "payment.succeeded" => "payment_intent.succeeded",
        "payment.failed" => "payment_intent.payment_failed",
        "payment.canceled" | "payment.expired" => "payment_intent.canceled",
        "refund.created" => "refund.created",
        "refund.succeeded" => "refund.updated",
        "refund.failed" => "refund.failed",
        _ => return None,
    })
}

/// The Stripe event of a payrail event: `id` is payrail's event id (`evt_…`, the same on a
/// redelivery), `created` Unix seconds, `refund_id` the refund a `refund.*` event is about.
/// `None` when the event has no Stripe counterpart or names a refund the payment lacks.
pub fn event(
    id: &str,
    payrail_event_type: &str,
    created: i64,
    payment: &Payment,
    refund_id: Option<&str>,
) -> Option<Value> {
    let kind = event_type(payrail_event_type)?;
    let object = if kind.starts_with("refund.") {
        let refund = payment
            .refunds
            .iter()
            .find(|r| Some(r.id.as_str()) == refund_id)?;
        json!(Refund::new(payment, refund))
    } else {
        json!(PaymentIntent::from(payment))
    };
    Some(json!({
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::RefundSource;

    fn payment() -> Payment {
        Payment {
            id: "pay_1".into(),
            amount: 2000,
            currency: "usd".into(),
            status: "succeeded".into(),
            capture_method: "automatic".into(),
            amount_captured: 2000,
            refunds: vec![RefundSource {
                id: "re_1".into(),
                amount: 700,
                status: "succeeded".into(),
                reason: None,
                created: 5,
            }],
            ..Payment::default()
        }
    }

    #[test]
    fn every_payrail_event_type_has_a_stripe_type_and_nothing_else_does() {
        for t in [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.succeeded",
            "payment.failed",
            "payment.canceled",
            "payment.expired",
            "refund.created",
            "refund.succeeded",
            "refund.failed",
        ] {
            assert!(event_type(t).is_some(), "{t}");
        }
        assert_eq!(event_type("settlement.created"), None);
        assert_eq!(event_type("journal.owner_changed"), None);
    }

    #[test]
    fn a_payment_event_carries_the_intent_and_a_refund_event_the_refund() {
        let p = payment();
        let e = event("evt_a", "payment.succeeded", 9, &p, None).unwrap();
        assert_eq!(e["object"], "event");
        assert_eq!(e["type"], "payment_intent.succeeded");
        assert_eq!(e["data"]["object"]["object"], "payment_intent");
        assert_eq!(e["data"]["object"]["amount_received"], 2000);
        let r = event("evt_b", "refund.succeeded", 9, &p, Some("re_1")).unwrap();
        assert_eq!(r["type"], "refund.updated");
        assert_eq!(r["data"]["object"]["object"], "refund");
        assert_eq!(r["data"]["object"]["payment_intent"], "pay_1");
        assert_eq!(r["data"]["object"]["status"], "succeeded");
        assert!(event("evt_c", "refund.created", 9, &p, Some("re_404")).is_none());
    }
}
