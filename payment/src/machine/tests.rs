use super::*;
use crate::events::CaptureMethod;
use crate::money::Currency;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn create(amount: i64, capture_method: CaptureMethod) -> Command {
    Command::Create(CreatePayment {
        amount,
        currency: Currency::parse("EUR").unwrap(),
        customer_email: None,
        order_no: Some("o-1".into()),
        channel: None,
        metadata: BTreeMap::new(),
        capture_method,
        idempotency_key: None,
        request_fingerprint: None,
    })
}

/// Runs commands like an actor does: decide, then apply each event with the next sequence.
/// Returns the final state and the journal (sequence, event) it produced.
fn run(commands: &[Command]) -> (Option<Payment>, Vec<(u64, PaymentEvent)>) {
    let mut state: Option<Payment> = None;
    let mut journal = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        if let Ok(events) = decide(state.as_ref(), command) {
            for event in events {
                let sequence = journal.len() as u64 + 1;
                let ctx = EventContext {
                    payment_id: "pay_1",
                    merchant_id: "mer_1",
                    sequence,
                    occurred_at_micros: i as i64,
                };
                state = evolve(state, ctx, &event);
                journal.push((sequence, event));
            }
        }
    }
    (state, journal)
}

fn status_after(commands: &[Command]) -> PaymentStatus {
    run(commands).0.unwrap().status
}

fn visa_succeeded(amount: i64) -> Command {
    Command::RecordOutcome(Outcome::Succeeded {
        psp_reference: Some("pi_1".into()),
        amount_captured: amount,
    })
}

fn confirm() -> Command {
    Command::Confirm {
        payment_method: "pm_card_visa".into(),
        capture_method: None,
        psp_reference: Some("pi_1".into()),
    }
}

#[test]
fn create_then_confirm_then_success_is_succeeded_with_everything_captured() {
    let (state, journal) = run(&[
        create(1000, CaptureMethod::Automatic),
        confirm(),
        visa_succeeded(1000),
    ]);
    let state = state.unwrap();
    assert_eq!(state.status, PaymentStatus::Succeeded);
    assert_eq!(state.amount_captured, 1000);
    let types: Vec<_> = journal.iter().map(|(_, e)| e.event_type()).collect();
    assert_eq!(
        types,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[test]
fn manual_capture_waits_in_requires_capture_and_captures_partially() {
    let authorized = Command::RecordOutcome(Outcome::Authorized {
        psp_reference: Some("pi_1".into()),
        amount_capturable: 1000,
    });
    let commands = [
        create(1000, CaptureMethod::Manual),
        confirm(),
        authorized.clone(),
    ];
    assert_eq!(status_after(&commands), PaymentStatus::RequiresCapture);
    let mut more = commands.to_vec();
    more.push(Command::Capture { amount: Some(1001) });
    let (state, _) = run(&more);
    assert_eq!(
        state.unwrap().status,
        PaymentStatus::RequiresCapture,
        "over-capture refused"
    );
    let state = run(&commands).0.unwrap();
    assert_eq!(
        decide(Some(&state), &Command::Capture { amount: Some(1001) }),
        Err(Refusal::CaptureExceedsAuthorized {
            requested: 1001,
            capturable: 1000
        })
    );
    more.pop();
    more.push(Command::Capture { amount: Some(600) });
    let state = run(&more).0.unwrap();
    assert_eq!(
        (state.status, state.amount_captured),
        (PaymentStatus::Succeeded, 600)
    );
}

#[test]
fn a_declined_payment_fails_and_stays_failed() {
    let failed = Command::RecordOutcome(Outcome::Failed {
        code: "card_declined".into(),
        message: "declined".into(),
    });
    let commands = [
        create(500, CaptureMethod::Automatic),
        confirm(),
        failed,
        visa_succeeded(500),
    ];
    let (state, journal) = run(&commands);
    assert_eq!(state.unwrap().status, PaymentStatus::Failed);
    assert_eq!(
        journal.len(),
        3,
        "a late success after failure yields nothing"
    );
}

#[test]
fn duplicate_and_reordered_outcomes_yield_no_extra_events() {
    let authorized = Command::RecordOutcome(Outcome::Authorized {
        psp_reference: None,
        amount_capturable: 700,
    });
    let commands = [
        create(700, CaptureMethod::Automatic),
        confirm(),
        visa_succeeded(700),
        visa_succeeded(700),
        authorized,
        Command::RecordOutcome(Outcome::Processing),
    ];
    let (state, journal) = run(&commands);
    assert_eq!(state.unwrap().status, PaymentStatus::Succeeded);
    assert_eq!(journal.len(), 3);
}

#[test]
fn illegal_transitions_are_refused_with_the_current_status() {
    let state = run(&[create(100, CaptureMethod::Automatic)]).0.unwrap();
    assert_eq!(
        decide(Some(&state), &Command::Capture { amount: None }),
        Err(Refusal::InvalidState {
            status: PaymentStatus::RequiresPaymentMethod,
            action: "be captured"
        })
    );
    let refund = Command::CreateRefund {
        refund_id: "re_1".into(),
        amount: None,
        reason: None,
    };
    assert!(matches!(
        decide(Some(&state), &refund),
        Err(Refusal::InvalidState { .. })
    ));
    let processing = run(&[create(100, CaptureMethod::Automatic), confirm()])
        .0
        .unwrap();
    assert!(matches!(
        decide(Some(&processing), &Command::Cancel { reason: None }),
        Err(Refusal::InvalidState { .. })
    ));
    assert_eq!(decide(None, &confirm()), Err(Refusal::NotFound));
}

#[test]
fn refunds_add_up_and_cannot_exceed_the_captured_amount() {
    let base = [
        create(1000, CaptureMethod::Automatic),
        confirm(),
        visa_succeeded(1000),
    ];
    let mut commands = base.to_vec();
    for (id, amount) in [("re_1", 300), ("re_2", 500)] {
        commands.push(Command::CreateRefund {
            refund_id: id.into(),
            amount: Some(amount),
            reason: None,
        });
        commands.push(Command::RecordRefundOutcome {
            refund_id: id.into(),
            succeeded: true,
            psp_reference: None,
            code: None,
        });
    }
    let state = run(&commands).0.unwrap();
    assert_eq!(state.amount_refunded, 800);
    let too_much = Command::CreateRefund {
        refund_id: "re_3".into(),
        amount: Some(201),
        reason: None,
    };
    assert_eq!(
        decide(Some(&state), &too_much),
        Err(Refusal::RefundExceedsCaptured {
            requested: 201,
            refundable: 200
        })
    );
    let rest = Command::CreateRefund {
        refund_id: "re_3".into(),
        amount: None,
        reason: None,
    };
    let events = decide(Some(&state), &rest).unwrap();
    assert_eq!(
        events,
        vec![PaymentEvent::RefundCreated {
            refund_id: "re_3".into(),
            amount: 200,
            reason: None,
        }]
    );
}

#[test]
fn a_failed_refund_frees_its_amount() {
    let mut commands = vec![
        create(1000, CaptureMethod::Automatic),
        confirm(),
        visa_succeeded(1000),
    ];
    commands.push(Command::CreateRefund {
        refund_id: "re_1".into(),
        amount: Some(1000),
        reason: None,
    });
    commands.push(Command::RecordRefundOutcome {
        refund_id: "re_1".into(),
        succeeded: false,
        psp_reference: None,
        code: None,
    });
    let state = run(&commands).0.unwrap();
    assert_eq!(state.refundable(), 1000);
    assert_eq!(state.amount_refunded, 0);
}

/// A payment of 1000 captured at once, then `command`.
fn paid_1000_then(command: Command) -> Payment {
    let commands = [
        create(1000, CaptureMethod::Automatic),
        confirm(),
        visa_succeeded(1000),
        command,
    ];
    run(&commands).0.unwrap()
}

fn keyed_refund(amount: Option<i64>, reason: Option<&str>) -> Command {
    Command::CreateRefund {
        refund_id: "re_key".into(),
        amount,
        reason: reason.map(str::to_string),
    }
}

#[test]
fn a_refund_retried_under_its_key_with_another_amount_or_reason_is_refused() {
    let state = paid_1000_then(keyed_refund(Some(300), None));
    // The same request again finds the first refund: no event.
    assert_eq!(
        decide(Some(&state), &keyed_refund(Some(300), None)),
        Ok(vec![])
    );
    // Another amount or reason under the same key is not answered with the first refund.
    assert_eq!(
        decide(Some(&state), &keyed_refund(Some(500), None)),
        Err(Refusal::IdempotencyMismatch)
    );
    assert_eq!(
        decide(Some(&state), &keyed_refund(Some(300), Some("duplicate"))),
        Err(Refusal::IdempotencyMismatch)
    );
    assert_eq!(state.refunds.len(), 1);
}

#[test]
fn a_refund_retried_under_its_key_without_an_amount_finds_the_first() {
    // "What is left" under the key that refunded 300: what the key refunded stands.
    let state = paid_1000_then(keyed_refund(Some(300), None));
    assert_eq!(decide(Some(&state), &keyed_refund(None, None)), Ok(vec![]));
}

fn from_processor(intent: &str, command: Command) -> Command {
    Command::FromProcessor {
        psp_reference: intent.into(),
        command: Box::new(command),
    }
}

#[test]
fn a_webhook_outcome_for_another_intent_is_refused() {
    let state = run(&[create(1000, CaptureMethod::Automatic), confirm()])
        .0
        .unwrap();
    let foreign = Outcome::Succeeded {
        psp_reference: Some("pi_other".into()),
        amount_captured: 1000,
    };
    assert_eq!(
        decide(
            Some(&state),
            &from_processor("pi_other", Command::RecordOutcome(foreign))
        ),
        Err(Refusal::ForeignIntent)
    );
    // The payment's own intent is decided as the outcome itself.
    let events = decide(Some(&state), &from_processor("pi_1", visa_succeeded(1000))).unwrap();
    assert_eq!(events, decide(Some(&state), &visa_succeeded(1000)).unwrap());
}

#[test]
fn a_refund_webhook_for_another_intent_is_refused() {
    let state = paid_1000_then(Command::CreateRefund {
        refund_id: "re_1".into(),
        amount: Some(1000),
        reason: None,
    });
    let failed = Command::RecordRefundOutcome {
        refund_id: "re_1".into(),
        succeeded: false,
        psp_reference: Some("re_psp".into()),
        code: None,
    };
    // A failed refund frees its amount: from a foreign intent that would allow refunding twice.
    assert_eq!(
        decide(Some(&state), &from_processor("pi_other", failed.clone())),
        Err(Refusal::ForeignIntent)
    );
    assert!(decide(Some(&state), &from_processor("pi_1", failed))
        .unwrap()
        .iter()
        .any(|e| e.event_type() == "refund.failed"));
}

#[test]
fn only_processor_reports_can_come_from_the_processor() {
    let state = run(&[create(1000, CaptureMethod::Automatic), confirm()])
        .0
        .unwrap();
    assert_eq!(
        decide(
            Some(&state),
            &from_processor("pi_1", Command::Cancel { reason: None })
        ),
        Err(Refusal::ForeignIntent)
    );
}

#[test]
fn expiry_only_hits_uncaptured_authorizations() {
    let authorized = Command::RecordOutcome(Outcome::Authorized {
        psp_reference: None,
        amount_capturable: 50,
    });
    assert_eq!(
        status_after(&[
            create(50, CaptureMethod::Manual),
            confirm(),
            authorized,
            Command::Expire
        ]),
        PaymentStatus::Expired
    );
    assert_eq!(
        status_after(&[
            create(50, CaptureMethod::Automatic),
            confirm(),
            visa_succeeded(50),
            Command::Expire
        ]),
        PaymentStatus::Succeeded
    );
}

fn any_command() -> impl Strategy<Value = Command> {
    let refund_id = prop_oneof![
        Just("re_a".to_string()),
        Just("re_b".to_string()),
        Just("re_c".to_string())
    ];
    prop_oneof![
        (
            1i64..5_000,
            prop_oneof![Just(CaptureMethod::Automatic), Just(CaptureMethod::Manual)]
        )
            .prop_map(|(a, m)| create(a, m)),
        prop_oneof![
            Just(None),
            Just(Some(CaptureMethod::Manual)),
            Just(Some(CaptureMethod::Automatic))
        ]
        .prop_map(|capture_method| Command::Confirm {
            payment_method: "pm_card_visa".into(),
            capture_method,
            psp_reference: None,
        }),
        (0i64..6_000).prop_map(|a| Command::RecordOutcome(Outcome::Authorized {
            psp_reference: None,
            amount_capturable: a
        })),
        (0i64..6_000).prop_map(|a| Command::RecordOutcome(Outcome::Succeeded {
            psp_reference: None,
            amount_captured: a
        })),
        Just(Command::RecordOutcome(Outcome::Failed {
            code: "card_declined".into(),
            message: "no".into()
        })),
        Just(Command::RecordOutcome(Outcome::Canceled)),
        Just(Command::RecordOutcome(Outcome::Processing)),
        proptest::option::of(-10i64..6_000).prop_map(|amount| Command::Capture { amount }),
        Just(Command::Cancel { reason: None }),
        Just(Command::Expire),
        (refund_id.clone(), proptest::option::of(-10i64..6_000)).prop_map(|(refund_id, amount)| {
            Command::CreateRefund {
                refund_id,
                amount,
                reason: None,
            }
        }),
        (refund_id, any::<bool>()).prop_map(|(refund_id, succeeded)| {
            Command::RecordRefundOutcome {
                refund_id,
                succeeded,
                psp_reference: None,
                code: None,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn random_sequences_keep_every_invariant(commands in proptest::collection::vec(any_command(), 0..40)) {
        let (state, journal) = run(&commands);
        // Sequence numbers rise by exactly one per event, from 1.
        for (i, (sequence, _)) in journal.iter().enumerate() {
            prop_assert_eq!(*sequence, i as u64 + 1);
        }
        if let Some(p) = &state {
            prop_assert_eq!(p.sequence, journal.len() as u64);
            prop_assert!(p.amount > 0);
            prop_assert!(0 <= p.amount_captured && p.amount_captured <= p.amount);
            prop_assert!(0 <= p.amount_refunded && p.amount_refunded <= p.amount_captured);
            prop_assert!(p.refundable() >= 0, "pending + succeeded refunds exceed the captured amount");
            let succeeded: i64 = p.refunds.iter().filter(|r| r.status == RefundStatus::Succeeded).map(|r| r.amount).sum();
            prop_assert_eq!(succeeded, p.amount_refunded);
            prop_assert!(p.amount_capturable <= p.amount);
            if p.status != PaymentStatus::Succeeded {
                prop_assert!(p.refunds.is_empty());
                prop_assert_eq!(p.amount_captured, 0);
            }
            if p.status != PaymentStatus::RequiresCapture {
                prop_assert_eq!(p.amount_capturable, 0);
            }
        } else {
            prop_assert!(journal.is_empty());
        }
        // Once failed, canceled or expired, nothing else happens.
        let terminal = journal.iter().position(|(_, e)| matches!(e, PaymentEvent::Failed { .. } | PaymentEvent::Canceled { .. } | PaymentEvent::Expired));
        if let Some(at) = terminal {
            prop_assert_eq!(at + 1, journal.len());
        }
    }

    #[test]
    fn replaying_the_journal_rebuilds_the_same_state(commands in proptest::collection::vec(any_command(), 0..40)) {
        let (state, journal) = run(&commands);
        let rebuilt = replay(journal.iter().enumerate().map(|(i, (sequence, event))| {
            // occurred_at as run() used it is the command index; recompute from the journal.
            let _ = i;
            (EventContext { payment_id: "pay_1", merchant_id: "mer_1", sequence: *sequence, occurred_at_micros: 0 }, event)
        }));
        let normalize = |p: Option<Payment>| p.map(|mut p| {
            p.created_at_micros = 0;
            p.updated_at_micros = 0;
            for r in &mut p.refunds { r.created_at_micros = 0; }
            p
        });
        prop_assert_eq!(normalize(rebuilt), normalize(state));
    }

    #[test]
    fn only_positive_bounded_amounts_are_accepted(amount in any::<i64>()) {
        let accepted = decide(None, &create(amount, CaptureMethod::Automatic)).is_ok();
        prop_assert_eq!(accepted, amount > 0 && amount <= crate::money::MAX_AMOUNT);
    }
}
