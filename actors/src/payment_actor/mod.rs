//! [`PaymentActor`]: hosts one payment's state. For each command it decides (pure), calls
//! the processor where the command needs it, appends the resulting events to the journal,
//! and only then applies them and replies. Stops itself when idle (passivation).

mod journal;
pub use journal::parked_append_path;

use crate::error::CommandError;
use crate::messages::{CommandMsg, CreateMsg, CreateReply, MerchantMsg, PaymentMsg};
use crate::payment::machine::{decide, evolve, EventContext, RefundStatus};
use crate::payment::{Command, Outcome, Payment, PaymentEvent, PaymentStatus, PaymentView};
use crate::psp::PspError;
use crate::runtime::Runtime;
use kafka_journal::envelope::now_micros;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info_span, warn, Instrument};

/// How soon an actor holding a write in doubt tries it again when no command comes.
const IN_DOUBT_RETRY: Duration = Duration::from_secs(1);

pub struct PaymentArgs {
    pub runtime: Arc<Runtime>,
    /// Shared with the merchant's routing maps (one allocation per live payment, not three).
    pub payment_id: Arc<str>,
    /// Shared by every payment actor of the merchant.
    pub merchant_id: Arc<str>,
    pub partition: i32,
    pub merchant: ActorRef<MerchantMsg>,
    /// `None` for a payment about to be created.
    pub state: Option<Payment>,
    /// A command's records whose journal append had an unknown outcome: written again
    /// before anything else is decided here (issue 22, defect 8).
    pub in_doubt: Option<journal::InDoubt>,
}

pub struct PaymentState {
    args: PaymentArgs,
    last_active: Instant,
    /// Asked the merchant to retire this actor (idle, or create refused).
    retiring: bool,
    /// This actor's state is unknown after an append whose outcome is unknown: commands
    /// still queued here are refused (retryable) until the merchant rebuilds the payment.
    stale: bool,
    /// Counted in `payrail_actors_live` while this state exists.
    _live: crate::telemetry::Live,
    /// Counted against `actors.max_live_payments` while this state exists.
    slot: crate::live_bound::LiveSlot,
}

pub struct PaymentActor;

fn map_psp(error: PspError) -> CommandError {
    match error {
        PspError::Unavailable(reason) => CommandError::PspUnavailable(reason),
        PspError::Refused { code, message } => CommandError::PspRefused { code, message },
    }
}

impl Actor for PaymentActor {
    type Msg = PaymentMsg;
    type State = PaymentState;
    type Arguments = PaymentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PaymentMsg>,
        args: PaymentArgs,
    ) -> Result<PaymentState, ActorProcessingErr> {
        let idle = Duration::from_millis(args.runtime.options.passivate_after_ms);
        let now = Instant::now();
        let slot = args.runtime.payment_idle.bound().enter();
        args.runtime
            .payment_idle
            .check_at((now + idle).into(), myself, slot.token());
        Ok(PaymentState {
            args,
            last_active: now,
            retiring: false,
            stale: false,
            _live: crate::telemetry::Live::new(crate::telemetry::ActorKind::Payment),
            slot,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PaymentMsg>,
        message: PaymentMsg,
        state: &mut PaymentState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the actor's task keeps its future for its whole life, sized for the largest
        // state of a command (an append, a PSP call); boxed, an idle actor holds a pointer.
        Box::pin(handle_message(myself, message, state)).await
    }
}

async fn handle_message(
    myself: ActorRef<PaymentMsg>,
    message: PaymentMsg,
    state: &mut PaymentState,
) -> Result<(), ActorProcessingErr> {
    let span = info_span!(
        "payment",
        payment_id = %state.args.payment_id,
        merchant_id = %state.args.merchant_id,
        partition = state.args.partition
    );
    let from_timer = matches!(message, PaymentMsg::IdleCheck | PaymentMsg::Evict);
    if !from_timer {
        state.last_active = Instant::now();
    }
    if matches!(message, PaymentMsg::Stop) {
        myself.stop(None);
        return Ok(());
    }
    if state.stale {
        message.refuse(CommandError::NotReady(
            "the payment is being rebuilt from the journal; retry".into(),
        ));
        return Ok(());
    }
    // A write in doubt is settled before anything is read or decided (and retried by the
    // idle check, so an actor left alone settles too).
    if state.args.in_doubt.is_some() {
        if let Err(error) = state.args.settle_in_doubt().instrument(span.clone()).await {
            if from_timer {
                // Told to leave with a write in doubt: it stays until that is settled.
                state.slot.decline();
                let at = Instant::now() + IN_DOUBT_RETRY;
                state.args.runtime.payment_idle.check_at(
                    at.into(),
                    myself.clone(),
                    state.slot.token(),
                );
            } else {
                message.refuse(error.clone());
            }
            if state.args.in_doubt.is_none() {
                // The partition moved: the new owner settles it; rebuilt from the store.
                state.stale = true;
                state.args.retire(&myself, true);
            }
            return Ok(());
        }
    }
    let args = &mut state.args;
    let result = match message {
        PaymentMsg::Stop => return Ok(()),
        PaymentMsg::IdleCheck => {
            let idle = Duration::from_millis(args.runtime.options.passivate_after_ms);
            let quiet = state.last_active.elapsed();
            if quiet >= idle {
                if !state.retiring {
                    state.retiring = true;
                    crate::telemetry::passivated(crate::telemetry::ActorKind::Payment);
                    args.retire(&myself, false);
                }
            } else {
                // One check pending per actor: the next one is scheduled only here.
                let at = state.last_active + idle;
                args.runtime
                    .payment_idle
                    .check_at(at.into(), myself.clone(), state.slot.token());
            }
            return Ok(());
        }
        PaymentMsg::Evict => {
            // Its timer entry was taken with the eviction: it leaves (as if idle) now.
            if !state.retiring {
                state.retiring = true;
                crate::telemetry::evicted();
                args.retire(&myself, false);
            }
            return Ok(());
        }
        PaymentMsg::Get(reply) => {
            if let Some(reply) = reply {
                let result = args
                    .state
                    .as_ref()
                    .map(PaymentView::from)
                    .ok_or(CommandError::NotFound);
                let _ = reply.send(result);
            }
            return Ok(());
        }
        PaymentMsg::Create(create) => {
            let CreateMsg {
                command,
                correlation_id,
                reply,
            } = *create;
            if let Command::Create(create) = &command {
                args.inject_fault(Some(&create.metadata), "panic_on_", "create");
            }
            let result = args
                .run(vec![command], correlation_id)
                .instrument(span)
                .await;
            let outcome_unknown = matches!(
                result,
                Err(CommandError::JournalOutcomeUnknown(_) | CommandError::SpoolOutcomeUnknown(_))
            );
            let journal_unknown = matches!(result, Err(CommandError::JournalOutcomeUnknown(_)));
            match reply {
                CreateReply::Caller(port) => {
                    let _ = port.send(result);
                }
                CreateReply::Merchant { idempotency_key } => {
                    let _ = args.merchant.cast(MerchantMsg::CreateSettled {
                        idempotency_key,
                        payment_id: args.payment_id.to_string(),
                        result,
                    });
                }
            }
            if args.state.is_none() {
                // Refused, or its outcome unknown: nothing of it is held here.
                state.retiring = true;
                state.stale = outcome_unknown;
                args.retire(&myself, journal_unknown);
            }
            return Ok(());
        }
        PaymentMsg::Command(request) => {
            let CommandMsg {
                command,
                correlation_id,
                reply,
            } = *request;
            let kind = command.kind();
            args.inject_fault(None, "panic_on_", kind);
            let result = args.execute(command, correlation_id).instrument(span).await;
            if result.is_ok() {
                args.inject_fault(None, "panic_after_append_on_", kind);
            }
            let outcome = result.as_ref().err().cloned();
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
            outcome
        }
        PaymentMsg::Poll(reply) => {
            let result = args.poll().instrument(span).await;
            let outcome = result.as_ref().err().cloned();
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
            outcome
        }
    };
    match result {
        Some(CommandError::JournalOutcomeUnknown(_)) if state.args.in_doubt.is_some() => {
            // Kept here and written again first (see `settle_in_doubt`).
        }
        Some(CommandError::JournalOutcomeUnknown(_)) => {
            // The journal may or may not hold the events: this actor's state is stale. The
            // merchant rebuilds the payment from the journal for its next command.
            state.stale = true;
            state.args.retire(&myself, true);
        }
        Some(CommandError::SpoolOutcomeUnknown(_)) => {
            // The spool transaction may or may not have committed; the snapshot it wrote
            // with the events (or did not) is the truth: rebuilt from it, no journal needed.
            state.stale = true;
            state.args.retire(&myself, false);
        }
        _ => {}
    }
    Ok(())
}

impl PaymentArgs {
    /// Asks the merchant to stop routing here and then stop this actor.
    fn retire(&self, myself: &ActorRef<PaymentMsg>, outcome_unknown: bool) {
        let _ = self.merchant.cast(MerchantMsg::Retire {
            payment_id: self.payment_id.to_string(),
            actor: myself.get_id(),
            outcome_unknown,
        });
    }

    fn payment(&self) -> Result<&Payment, CommandError> {
        self.state.as_ref().ok_or(CommandError::NotFound)
    }

    fn view(&self) -> Result<PaymentView, CommandError> {
        self.payment().map(PaymentView::from)
    }

    /// The events `commands` yield in order, each decided on the state the previous ones
    /// leave (pure; nothing is applied).
    fn plan(&self, commands: &[Command]) -> Result<Vec<PaymentEvent>, CommandError> {
        let mut scratch = self.state.clone();
        let mut sequence = scratch.as_ref().map(|p| p.sequence).unwrap_or(0);
        let mut events = Vec::new();
        for command in commands {
            for event in decide(scratch.as_ref(), command)? {
                sequence += 1;
                let ctx = EventContext {
                    payment_id: &self.payment_id,
                    merchant_id: &self.merchant_id,
                    sequence,
                    occurred_at_micros: now_micros(),
                };
                scratch = evolve(scratch, ctx, &event);
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Plans, journals and applies `commands`; replies with the resulting payment.
    async fn run(
        &mut self,
        commands: Vec<Command>,
        correlation_id: Option<String>,
    ) -> Result<PaymentView, CommandError> {
        let events = self.plan(&commands)?;
        self.persist(events, correlation_id).await?;
        self.view()
    }

    /// Commands that need the processor first call it, then journal what it said.
    async fn execute(
        &mut self,
        command: Command,
        correlation_id: Option<String>,
    ) -> Result<PaymentView, CommandError> {
        let psp = self.runtime.psp.clone();
        match command {
            Command::Confirm {
                payment_method,
                capture_method,
                ..
            } => {
                self.plan(&[Command::Confirm {
                    payment_method: payment_method.clone(),
                    capture_method,
                    psp_reference: None,
                }])?;
                let payment = self.payment()?.clone();
                let method = capture_method.unwrap_or(payment.capture_method);
                let intent = psp
                    .confirm(&payment, &payment_method, method)
                    .await
                    .map_err(map_psp)?;
                let commands = vec![
                    Command::Confirm {
                        payment_method,
                        capture_method: Some(method),
                        psp_reference: Some(intent.id.clone()),
                    },
                    Command::RecordOutcome(intent.outcome()),
                ];
                self.run(commands, correlation_id).await
            }
            Command::Capture { amount } => {
                let events = self.plan(&[Command::Capture { amount }])?;
                let captured = events.iter().find_map(|e| match e {
                    PaymentEvent::Succeeded {
                        amount_captured, ..
                    } => Some(*amount_captured),
                    _ => None,
                });
                let payment = self.payment()?.clone();
                if let (Some(amount), Some(reference)) =
                    (captured, payment.psp_reference.as_deref())
                {
                    psp.capture(&payment, reference, amount)
                        .await
                        .map_err(map_psp)?;
                }
                self.persist(events, correlation_id).await?;
                self.view()
            }
            Command::Cancel { reason } => {
                let events = self.plan(&[Command::Cancel { reason }])?;
                let payment = self.payment()?.clone();
                if payment.status == PaymentStatus::RequiresCapture {
                    if let Some(reference) = payment.psp_reference.as_deref() {
                        psp.cancel(&payment, reference).await.map_err(map_psp)?;
                    }
                }
                self.persist(events, correlation_id).await?;
                self.view()
            }
            Command::CreateRefund {
                refund_id,
                amount,
                reason,
            } => {
                let command = Command::CreateRefund {
                    refund_id: refund_id.clone(),
                    amount,
                    reason,
                };
                // Reserve the amount in the journal first, then ask the processor.
                self.run(vec![command], correlation_id.clone()).await?;
                self.settle_refund(&refund_id, correlation_id).await
            }
            other => self.run(vec![other], correlation_id).await,
        }
    }

    /// Asks the processor to refund a pending refund (idempotent by refund id) and journals
    /// its answer. An unreachable processor leaves the refund pending for the sweeper.
    async fn settle_refund(
        &mut self,
        refund_id: &str,
        correlation_id: Option<String>,
    ) -> Result<PaymentView, CommandError> {
        let payment = self.payment()?.clone();
        let Some(refund) = payment
            .refund(refund_id)
            .filter(|r| r.status == RefundStatus::Pending)
        else {
            return self.view();
        };
        let Some(reference) = payment.psp_reference.clone() else {
            return self.view();
        };
        let outcome = match self
            .runtime
            .psp
            .refund(&payment, &reference, refund_id, refund.amount)
            .await
        {
            Ok(answer) if answer.status == "succeeded" => Some((true, Some(answer.id), None)),
            Ok(answer) if answer.status == "failed" => {
                Some((false, Some(answer.id), Some("refund_failed".to_string())))
            }
            Ok(_) => None,
            Err(PspError::Refused { code, .. }) => Some((false, None, Some(code))),
            Err(PspError::Unavailable(error)) => {
                warn!(%error, refund_id, "refund left pending; the sweeper retries");
                None
            }
        };
        match outcome {
            Some((succeeded, psp_reference, code)) => {
                let command = Command::RecordRefundOutcome {
                    refund_id: refund_id.to_string(),
                    succeeded,
                    psp_reference,
                    code,
                };
                self.run(vec![command], correlation_id).await
            }
            None => self.view(),
        }
    }

    /// The sweeper's visit: act on what is overdue.
    async fn poll(&mut self) -> Result<PaymentView, CommandError> {
        let options = self.runtime.psp.options().clone();
        let payment = self.payment()?.clone();
        let age = Duration::from_micros((now_micros() - payment.updated_at_micros).max(0) as u64);
        match payment.status {
            PaymentStatus::Processing if age >= Duration::from_millis(options.poll_after_ms) => {
                if let Some(reference) = payment.psp_reference.as_deref() {
                    let intent = self
                        .runtime
                        .psp
                        .retrieve(reference)
                        .await
                        .map_err(map_psp)?;
                    let outcome = intent.outcome();
                    if outcome != Outcome::Processing {
                        return self.run(vec![Command::RecordOutcome(outcome)], None).await;
                    }
                }
            }
            PaymentStatus::RequiresCapture
                if age >= Duration::from_millis(options.authorization_ttl_ms) =>
            {
                if let Some(reference) = payment.psp_reference.as_deref() {
                    // Void the hold at the processor; expire here whatever it says.
                    if let Err(error) = self.runtime.psp.cancel(&payment, reference).await {
                        warn!(%error, "voiding a lapsed authorization failed");
                    }
                }
                return self.run(vec![Command::Expire], None).await;
            }
            PaymentStatus::Succeeded => {
                let pending: Vec<String> = payment
                    .refunds
                    .iter()
                    .filter(|r| r.status == RefundStatus::Pending)
                    .map(|r| r.id.clone())
                    .collect();
                for refund_id in pending {
                    self.settle_refund(&refund_id, None).await?;
                }
            }
            _ => {}
        }
        self.view()
    }
}
