//! The payment state machine as two pure functions, in the style of an event-sourced
//! behaviour: [`decide`] turns a command into events or a refusal, [`evolve`] folds an event
//! into the state. Actors only move messages and call the journal.
//!
//! | from                       | command   | events            | to                       |
//! |----------------------------|-----------|-------------------|--------------------------|
//! | (none)                     | `create`  | `payment.created` | `requires_payment_method`|
//!
//! The lifecycle issue extends this table (confirm, capture, cancel, refund, expiry).

use super::events::{PaymentCreated, PaymentEvent};
use crate::money::Currency;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stripe-compatible payment statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A payment's state: everything needed to decide the next command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub merchant_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub status: PaymentStatus,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub customer_email: Option<String>,
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub created_at_micros: i64,
    /// Sequence number of the last event applied (1 after creation).
    pub sequence: u64,
}

/// A validated create request (the HTTP edge validates; the machine re-checks invariants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePayment {
    pub amount: i64,
    pub currency: Currency,
    pub customer_email: Option<String>,
    pub order_no: Option<String>,
    pub channel: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub request_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create(CreatePayment),
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
}

/// Decides which events `command` produces in `state`. Pure.
pub fn decide(state: Option<&Payment>, command: &Command) -> Result<Vec<PaymentEvent>, Refusal> {
    match (state, command) {
        (Some(_), Command::Create(_)) => Err(Refusal::AlreadyExists),
        (None, Command::Create(create)) => {
            if create.amount <= 0 || create.amount > crate::money::MAX_AMOUNT {
                return Err(Refusal::InvalidAmount {
                    max: crate::money::MAX_AMOUNT,
                });
            }
            Ok(vec![PaymentEvent::Created(PaymentCreated {
                amount: create.amount,
                currency: create.currency,
                customer_email: create.customer_email.clone(),
                order_no: create.order_no.clone(),
                channel: create.channel.clone(),
                metadata: create.metadata.clone(),
                idempotency_key: create.idempotency_key.clone(),
                request_fingerprint: create.request_fingerprint.clone(),
            })])
        }
    }
}

/// Identity and timing of an event, from its envelope.
#[derive(Debug, Clone, Copy)]
pub struct EventContext<'a> {
    pub payment_id: &'a str,
    pub merchant_id: &'a str,
    pub sequence: u64,
    pub occurred_at_micros: i64,
}

/// Applies one event to the state. Pure. An event that does not fit the state (which the
/// journal's ordering rules out) leaves the state unchanged.
pub fn evolve(
    state: Option<Payment>,
    ctx: EventContext<'_>,
    event: &PaymentEvent,
) -> Option<Payment> {
    match (state, event) {
        (None, PaymentEvent::Created(created)) => {
            debug_assert_eq!(ctx.sequence, 1, "payment.created is always sequence 1");
            Some(Payment {
                id: ctx.payment_id.to_string(),
                merchant_id: ctx.merchant_id.to_string(),
                amount: created.amount,
                currency: created.currency,
                status: PaymentStatus::RequiresPaymentMethod,
                amount_captured: 0,
                amount_refunded: 0,
                customer_email: created.customer_email.clone(),
                order_no: created.order_no.clone(),
                channel: created.channel.clone(),
                metadata: created.metadata.clone(),
                idempotency_key: created.idempotency_key.clone(),
                created_at_micros: ctx.occurred_at_micros,
                sequence: ctx.sequence,
            })
        }
        (Some(payment), PaymentEvent::Created(_)) => Some(payment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn create(amount: i64) -> Command {
        Command::Create(CreatePayment {
            amount,
            currency: Currency::parse("EUR").unwrap(),
            customer_email: None,
            order_no: Some("o-1".into()),
            channel: None,
            metadata: BTreeMap::new(),
            idempotency_key: None,
            request_fingerprint: None,
        })
    }

    fn ctx(seq: u64) -> EventContext<'static> {
        EventContext {
            payment_id: "pay_1",
            merchant_id: "mer_1",
            sequence: seq,
            occurred_at_micros: 1,
        }
    }

    #[test]
    fn create_on_nothing_yields_created_and_requires_payment_method() {
        let events = decide(None, &create(1000)).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type(), "payment.created");
        let state = evolve(None, ctx(1), &events[0]).unwrap();
        assert_eq!(state.status, PaymentStatus::RequiresPaymentMethod);
        assert_eq!(state.amount, 1000);
        assert_eq!(state.sequence, 1);
    }

    #[test]
    fn create_twice_is_refused_without_events() {
        let events = decide(None, &create(1000)).unwrap();
        let state = evolve(None, ctx(1), &events[0]).unwrap();
        assert_eq!(
            decide(Some(&state), &create(1000)),
            Err(Refusal::AlreadyExists)
        );
    }

    proptest! {
        #[test]
        fn only_positive_bounded_amounts_are_accepted(amount in any::<i64>()) {
            let accepted = decide(None, &create(amount)).is_ok();
            prop_assert_eq!(accepted, amount > 0 && amount <= crate::money::MAX_AMOUNT);
        }
    }
}
