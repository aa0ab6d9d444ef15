//! The payment state machine as two pure functions, in the style of an event-sourced
//! behaviour: [`decide`] turns a command into events or a refusal, [`evolve`] folds an event
//! into the state. Actors only move messages, call the processor and the journal.
//!
//! | from                      | command                    | events                  | to                        |
//! |---------------------------|----------------------------|-------------------------|---------------------------|
//! | (none)                    | `Create`                   | `payment.created`       | `requires_payment_method` |
//! | `requires_payment_method` | `Confirm`                  | `payment.processing`    | `processing`              |
//! | `requires_payment_method` | `Cancel`                   | `payment.canceled`      | `canceled`                |
//! | `processing`              | `RecordOutcome(Succeeded)` | `payment.succeeded`     | `succeeded`               |
//! | `processing`              | `RecordOutcome(Authorized)`| `payment.authorized`    | `requires_capture`        |
//! | `processing`              | `RecordOutcome(Failed)`    | `payment.failed`        | `failed`                  |
//! | `requires_capture`        | `RecordOutcome(Succeeded)` | `payment.succeeded`     | `succeeded`               |
//! | `requires_capture`        | `Capture { amount ≤ auth }`| `payment.succeeded`     | `succeeded`               |
//! | `requires_capture`        | `Cancel`                   | `payment.canceled`      | `canceled`                |
//! | `requires_capture`        | `Expire`                   | `payment.expired`       | `expired`                 |
//! | `succeeded`               | `CreateRefund { amount }`  | `refund.created`        | `succeeded` (+ refund)    |
//! | `succeeded`               | `RecordRefundOutcome`      | `refund.succeeded`/`failed` | `succeeded`           |
//!
//! A webhook's outcome arrives as `FromProcessor { psp_reference, command }` and is refused
//! unless `psp_reference` is the payment's own intent: a signed event of another intent
//! whose metadata names this payment (the metadata is the sender's to write) changes
//! nothing.
//!
//! Outcomes from the processor arrive more than once and out of order (synchronous answer,
//! webhooks, polling). An outcome that the state already reflects, or that is older than the
//! state (e.g. `authorized` after `succeeded`), yields no events and no refusal, so
//! duplicates are harmless. Terminal states: `succeeded` (refunds still allowed), `failed`,
//! `canceled`, `expired`. The pending and succeeded refunds of a payment never exceed its
//! captured amount.

use super::events::{PaymentCreated, PaymentEvent};

mod command;
mod state;

pub use command::{Command, CreatePayment, Outcome, Refusal};
pub use state::{Payment, PaymentStatus, Refund, RefundStatus};

fn invalid(payment: &Payment, action: &'static str) -> Refusal {
    Refusal::InvalidState {
        status: payment.status,
        action,
    }
}

/// Decides which events `command` produces in `state`. Pure.
pub fn decide(state: Option<&Payment>, command: &Command) -> Result<Vec<PaymentEvent>, Refusal> {
    use PaymentStatus as S;
    let payment = match (state, command) {
        (Some(_), Command::Create(_)) => return Err(Refusal::AlreadyExists),
        (None, Command::Create(create)) => {
            if create.amount <= 0 || create.amount > crate::money::MAX_AMOUNT {
                return Err(Refusal::InvalidAmount {
                    max: crate::money::MAX_AMOUNT,
                });
            }
            return Ok(vec![PaymentEvent::Created(PaymentCreated {
                amount: create.amount,
                currency: create.currency,
                customer_email: create.customer_email.clone(),
                order_no: create.order_no.clone(),
                channel: create.channel.clone(),
                metadata: create.metadata.clone(),
                capture_method: create.capture_method,
                idempotency_key: create.idempotency_key.clone(),
                request_fingerprint: create.request_fingerprint.clone(),
            })]);
        }
        (None, _) => return Err(Refusal::NotFound),
        (Some(payment), _) => payment,
    };
    match command {
        Command::Create(_) => Err(Refusal::AlreadyExists),
        Command::Confirm {
            payment_method,
            capture_method,
            psp_reference,
        } => match payment.status {
            S::RequiresPaymentMethod => Ok(vec![PaymentEvent::Processing {
                payment_method: payment_method.clone(),
                capture_method: capture_method.unwrap_or(payment.capture_method),
                psp_reference: psp_reference.clone(),
            }]),
            _ => Err(invalid(payment, "be confirmed")),
        },
        Command::RecordOutcome(outcome) => Ok(decide_outcome(payment, outcome)),
        Command::Capture { amount } => {
            if payment.status != S::RequiresCapture {
                return Err(invalid(payment, "be captured"));
            }
            let requested = amount.unwrap_or(payment.amount_capturable);
            if requested <= 0 {
                return Err(Refusal::InvalidAmount {
                    max: payment.amount_capturable,
                });
            }
            if requested > payment.amount_capturable {
                return Err(Refusal::CaptureExceedsAuthorized {
                    requested,
                    capturable: payment.amount_capturable,
                });
            }
            Ok(vec![PaymentEvent::Succeeded {
                psp_reference: payment.psp_reference.clone(),
                amount_captured: requested,
            }])
        }
        Command::Cancel { reason } => match payment.status {
            S::RequiresPaymentMethod | S::RequiresCapture => Ok(vec![PaymentEvent::Canceled {
                reason: reason.clone(),
            }]),
            S::Canceled => Ok(vec![]),
            _ => Err(invalid(payment, "be canceled")),
        },
        Command::Expire => match payment.status {
            S::RequiresCapture => Ok(vec![PaymentEvent::Expired]),
            _ => Ok(vec![]),
        },
        Command::CreateRefund {
            refund_id,
            amount,
            reason,
        } => {
            if let Some(first) = payment.refund(refund_id) {
                // The same refund id is the same Idempotency-Key: a retry of the same
                // request finds the first refund; another amount or reason is refused. A
                // retry without an amount ("what is left") matches the first refund of any
                // amount: what that key refunded stands, and nothing is refunded twice. (The
                // journal's events are bincode: a request fingerprint would be a new field,
                // which old records cannot be decoded with.)
                let same_request =
                    amount.is_none_or(|a| a == first.amount) && reason == &first.reason;
                return if same_request {
                    Ok(vec![])
                } else {
                    Err(Refusal::IdempotencyMismatch)
                };
            }
            if payment.status != S::Succeeded {
                return Err(invalid(payment, "be refunded"));
            }
            let refundable = payment.refundable();
            let requested = amount.unwrap_or(refundable);
            if requested <= 0 && amount.is_some() {
                return Err(Refusal::InvalidAmount { max: refundable });
            }
            if requested <= 0 || requested > refundable {
                return Err(Refusal::RefundExceedsCaptured {
                    requested,
                    refundable,
                });
            }
            Ok(vec![PaymentEvent::RefundCreated {
                refund_id: refund_id.clone(),
                amount: requested,
                reason: reason.clone(),
            }])
        }
        Command::RecordRefundOutcome {
            refund_id,
            succeeded,
            psp_reference,
            code,
        } => {
            let refund = payment.refund(refund_id).ok_or(Refusal::UnknownRefund)?;
            if refund.status != RefundStatus::Pending {
                return Ok(vec![]);
            }
            Ok(vec![if *succeeded {
                PaymentEvent::RefundSucceeded {
                    refund_id: refund_id.clone(),
                    psp_reference: psp_reference.clone(),
                }
            } else {
                PaymentEvent::RefundFailed {
                    refund_id: refund_id.clone(),
                    code: code.clone().unwrap_or_else(|| "refund_failed".into()),
                }
            }])
        }
        Command::FromProcessor {
            psp_reference,
            command,
        } => {
            let reported = matches!(
                **command,
                Command::RecordOutcome(_) | Command::RecordRefundOutcome { .. }
            );
            if !reported || payment.psp_reference.as_deref() != Some(psp_reference.as_str()) {
                return Err(Refusal::ForeignIntent);
            }
            decide(Some(payment), command)
        }
    }
}

/// Outcomes are facts reported by the processor: apply the ones that move the payment
/// forward, ignore duplicates and stale ones.
fn decide_outcome(payment: &Payment, outcome: &Outcome) -> Vec<PaymentEvent> {
    use PaymentStatus as S;
    match (payment.status, outcome) {
        (
            S::Processing,
            Outcome::Authorized {
                psp_reference,
                amount_capturable,
            },
        ) => {
            vec![PaymentEvent::Authorized {
                psp_reference: psp_reference.clone(),
                amount_capturable: (*amount_capturable).clamp(0, payment.amount),
            }]
        }
        (
            S::Processing | S::RequiresCapture,
            Outcome::Succeeded {
                psp_reference,
                amount_captured,
            },
        ) => {
            let ceiling = if payment.status == S::RequiresCapture {
                payment.amount_capturable
            } else {
                payment.amount
            };
            vec![PaymentEvent::Succeeded {
                psp_reference: psp_reference
                    .clone()
                    .or_else(|| payment.psp_reference.clone()),
                amount_captured: (*amount_captured).clamp(0, ceiling),
            }]
        }
        (S::Processing, Outcome::Failed { code, message }) => vec![PaymentEvent::Failed {
            code: code.clone(),
            message: message.clone(),
        }],
        (S::Processing | S::RequiresCapture, Outcome::Canceled) => {
            vec![PaymentEvent::Canceled {
                reason: Some("canceled_by_processor".into()),
            }]
        }
        _ => vec![],
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

/// Applies one event to the state. Pure. Sets `sequence` from the event.
pub fn evolve(
    state: Option<Payment>,
    ctx: EventContext<'_>,
    event: &PaymentEvent,
) -> Option<Payment> {
    use PaymentStatus as S;
    let mut payment = match (state, event) {
        (None, PaymentEvent::Created(created)) => {
            return Some(Payment {
                id: ctx.payment_id.to_string(),
                merchant_id: ctx.merchant_id.to_string(),
                amount: created.amount,
                currency: created.currency,
                status: S::RequiresPaymentMethod,
                capture_method: created.capture_method,
                payment_method: None,
                amount_capturable: 0,
                amount_captured: 0,
                amount_refunded: 0,
                refunds: Vec::new(),
                psp_reference: None,
                failure_code: None,
                failure_message: None,
                customer_email: created.customer_email.clone(),
                order_no: created.order_no.clone(),
                channel: created.channel.clone(),
                metadata: created.metadata.clone(),
                idempotency_key: created.idempotency_key.clone(),
                created_at_micros: ctx.occurred_at_micros,
                updated_at_micros: ctx.occurred_at_micros,
                sequence: ctx.sequence,
            })
        }
        (None, _) => return None,
        (Some(payment), _) => payment,
    };
    match event {
        PaymentEvent::Created(_) => return Some(payment),
        PaymentEvent::Processing {
            payment_method,
            capture_method,
            psp_reference,
        } => {
            payment.status = S::Processing;
            payment.payment_method = Some(payment_method.clone());
            payment.capture_method = *capture_method;
            payment.psp_reference = psp_reference.clone();
        }
        PaymentEvent::Authorized {
            psp_reference,
            amount_capturable,
        } => {
            payment.status = S::RequiresCapture;
            payment.amount_capturable = *amount_capturable;
            if psp_reference.is_some() {
                payment.psp_reference = psp_reference.clone();
            }
        }
        PaymentEvent::Succeeded {
            psp_reference,
            amount_captured,
        } => {
            payment.status = S::Succeeded;
            payment.amount_captured = *amount_captured;
            payment.amount_capturable = 0;
            if psp_reference.is_some() {
                payment.psp_reference = psp_reference.clone();
            }
        }
        PaymentEvent::Failed { code, message } => {
            payment.status = S::Failed;
            payment.failure_code = Some(code.clone());
            payment.failure_message = Some(message.clone());
        }
        PaymentEvent::Canceled { .. } => {
            payment.status = S::Canceled;
            payment.amount_capturable = 0;
        }
        PaymentEvent::Expired => {
            payment.status = S::Expired;
            payment.amount_capturable = 0;
        }
        PaymentEvent::RefundCreated {
            refund_id,
            amount,
            reason,
        } => payment.refunds.push(Refund {
            id: refund_id.clone(),
            amount: *amount,
            status: RefundStatus::Pending,
            reason: reason.clone(),
            created_at_micros: ctx.occurred_at_micros,
        }),
        PaymentEvent::RefundSucceeded { refund_id, .. } => {
            if let Some(refund) = payment.refunds.iter_mut().find(|r| &r.id == refund_id) {
                refund.status = RefundStatus::Succeeded;
                payment.amount_refunded += refund.amount;
            }
        }
        PaymentEvent::RefundFailed { refund_id, .. } => {
            if let Some(refund) = payment.refunds.iter_mut().find(|r| &r.id == refund_id) {
                refund.status = RefundStatus::Failed;
            }
        }
    }
    payment.sequence = ctx.sequence;
    payment.updated_at_micros = ctx.occurred_at_micros;
    debug_assert!(payment.amount_refunded <= payment.amount_captured);
    debug_assert!(payment.amount_captured <= payment.amount);
    Some(payment)
}

/// Applies a whole history; what a rebuild from the journal does.
pub fn replay<'a>(
    events: impl IntoIterator<Item = (EventContext<'a>, &'a PaymentEvent)>,
) -> Option<Payment> {
    events
        .into_iter()
        .fold(None, |state, (ctx, event)| evolve(state, ctx, event))
}

#[cfg(test)]
mod tests;
