//! [`MerchantActor`]: one per merchant. Owns the merchant's idempotency keys and supervises
//! its payment actors, spawning them on demand (new, or rebuilt from their snapshot).
//!
//! A payment actor that fails is restarted lazily (rebuilt on its next command) after the
//! `[supervisor.restart]` backoff; past the restart intensity the merchant escalates and
//! refuses that payment's commands until the window has passed.

use crate::error::CommandError;
use crate::idempotency::IdempotencyCache;

mod create;

use crate::messages::{CommandMsg, MerchantMsg, PartitionMsg, PaymentMsg, Reply};
use crate::payment_actor::{PaymentActor, PaymentArgs};
use crate::runtime::Runtime;
use crate::snapshots;
use payrail_supervisor::{LazyRestarts, RestartDecision};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Payments with a restart record kept per merchant at most (oldest dropped first).
const RESTART_RECORDS_MAX: usize = 1_024;

/// Messages held for one retiring payment actor at most; more are refused (retryable).
const RETIRING_QUEUE_MAX: usize = 1_024;

pub struct MerchantArgs {
    pub runtime: Arc<Runtime>,
    pub merchant_id: String,
    pub partition: i32,
    /// To ask for passivation.
    pub parent: ActorRef<PartitionMsg>,
    /// The partition's idempotency keys: a key it has never seen is not looked up.
    pub fresh_keys: Arc<crate::fresh_keys::FreshKeys>,
}

pub struct MerchantState {
    args: MerchantArgs,
    /// The live payment actors; the id is shared with the actor's own args.
    payments: HashMap<Arc<str>, ActorRef<PaymentMsg>>,
    by_actor: HashMap<ActorId, Arc<str>>,
    /// `args.merchant_id`, shared with every payment actor of this merchant.
    shared_merchant_id: Arc<str>,
    /// Payment actors told to stop, with the messages for their payment that arrived since:
    /// they are routed to a rebuilt actor once the old one has stopped, so there is never
    /// more than one live actor per payment.
    retiring: HashMap<String, (ActorId, Vec<PaymentMsg>)>,
    idempotency: IdempotencyCache,
    /// Everything this actor does not hold in memory (payments, idempotency keys) was
    /// journaled before this offset, so a snapshot read is complete once the projector has
    /// reached it. Set at start, raised on every eviction or child stop.
    memory_complete_from: i64,
    /// Set when an append's outcome became unknown (or a payment actor failed): records
    /// may be in the journal past what this node knows it produced, so the next read of
    /// a key's or payment's history first waits for the journal's high watermark.
    journal_end_needed: bool,
    restarts: LazyRestarts,
    last_active: Instant,
    passivating: bool,
    /// Told to stop by the partition supervisor (which routes nothing here any more):
    /// stops once every payment child has stopped and no create is pending, so no message
    /// already routed here or to a child is dropped.
    stopping: bool,
    /// Counted in `payrail_actors_live` while this state exists.
    _live: crate::telemetry::Live,
}

pub struct MerchantActor;

impl Actor for MerchantActor {
    type Msg = MerchantMsg;
    type State = MerchantState;
    type Arguments = MerchantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MerchantMsg>,
        args: MerchantArgs,
    ) -> Result<MerchantState, ActorProcessingErr> {
        myself.send_after(
            Duration::from_millis(args.runtime.options.passivate_after_ms),
            || MerchantMsg::IdleCheck,
        );
        let memory_complete_from = args.runtime.produced_offset(args.partition);
        let shared_merchant_id: Arc<str> = Arc::from(args.merchant_id.as_str());
        Ok(MerchantState {
            memory_complete_from,
            journal_end_needed: false,
            last_active: Instant::now(),
            restarts: LazyRestarts::new(args.runtime.restart, RESTART_RECORDS_MAX),
            idempotency: IdempotencyCache::new(args.runtime.options.idempotency_cache_per_merchant),
            args,
            payments: HashMap::new(),
            by_actor: HashMap::new(),
            shared_merchant_id,
            retiring: HashMap::new(),
            passivating: false,
            stopping: false,
            _live: crate::telemetry::Live::new(crate::telemetry::ActorKind::Merchant),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MerchantMsg>,
        message: MerchantMsg,
        state: &mut MerchantState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, MerchantMsg::IdleCheck) {
            state.last_active = Instant::now();
        }
        match message {
            MerchantMsg::IdleCheck => {
                let idle = Duration::from_millis(state.args.runtime.options.passivate_after_ms);
                if state.last_active.elapsed() >= idle
                    && state.payments.is_empty()
                    && state.retiring.is_empty()
                    && !state.idempotency.has_pending()
                {
                    // The partition supervisor stops routing here, then sends `Stop`.
                    if !state.passivating {
                        state.passivating = true;
                        let _ = state.args.parent.cast(PartitionMsg::Passivate {
                            merchant_id: state.args.merchant_id.clone(),
                            actor: myself.get_id(),
                        });
                    }
                }
                myself.send_after(idle, || MerchantMsg::IdleCheck);
                Ok(())
            }
            MerchantMsg::Stop => {
                state.stopping = true;
                // Children that became live after the passivation request finish what was
                // routed to them first.
                let live: Vec<(Arc<str>, ActorRef<PaymentMsg>)> = state.payments.drain().collect();
                for (payment_id, actor) in live {
                    state
                        .retiring
                        .insert(payment_id.to_string(), (actor.get_id(), Vec::new()));
                    let _ = actor.cast(PaymentMsg::Stop);
                }
                state.finish_stopping(&myself);
                Ok(())
            }
            MerchantMsg::Command {
                payment_id,
                command,
                correlation_id,
                reply,
            } => {
                state
                    .route(
                        &myself,
                        payment_id,
                        move |reply| {
                            PaymentMsg::Command(Box::new(CommandMsg {
                                command,
                                correlation_id,
                                reply,
                            }))
                        },
                        reply,
                    )
                    .await
            }
            MerchantMsg::Poll { payment_id, reply } => {
                state
                    .route(&myself, payment_id, PaymentMsg::Poll, reply)
                    .await
            }
            MerchantMsg::Create {
                command,
                idempotency,
                correlation_id,
                reply,
            } => {
                state
                    .create(myself, command, idempotency, correlation_id, reply)
                    .await
            }
            MerchantMsg::Get { payment_id, reply } => {
                state
                    .route(&myself, payment_id, PaymentMsg::Get, Some(reply))
                    .await
            }
            MerchantMsg::CreateSettled {
                idempotency_key,
                payment_id: _,
                result,
            } => {
                if matches!(result, Err(CommandError::JournalOutcomeUnknown(_))) {
                    state.journal_end_needed = true;
                }
                let journaled_before = state.args.runtime.produced_offset(state.args.partition);
                if let Some(raised) =
                    state
                        .idempotency
                        .settle(idempotency_key, result, journaled_before)
                {
                    state.memory_complete_from = state.memory_complete_from.max(raised);
                }
                state.finish_stopping(&myself);
                Ok(())
            }
            MerchantMsg::Retire {
                payment_id,
                actor,
                outcome_unknown,
            } => {
                if outcome_unknown {
                    state.journal_end_needed = true;
                }
                if let Some(current) = state.payments.get(payment_id.as_str()) {
                    if current.get_id() == actor {
                        let current = current.clone();
                        state.payments.remove(payment_id.as_str());
                        state.retiring.insert(payment_id, (actor, Vec::new()));
                        // Queued behind every message routed to it so far.
                        let _ = current.cast(PaymentMsg::Stop);
                    }
                }
                Ok(())
            }
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<MerchantMsg>,
        event: SupervisionEvent,
        state: &mut MerchantState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        state.memory_complete_from = state
            .memory_complete_from
            .max(state.args.runtime.produced_offset(state.args.partition));
        let Some(payment_id) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let payment_id = payment_id.to_string();
        if state
            .payments
            .get(payment_id.as_str())
            .is_some_and(|a| a.get_id() == cell.get_id())
        {
            state.payments.remove(payment_id.as_str());
        }
        let held = match state.retiring.remove(&payment_id) {
            Some((actor, held)) if actor == cell.get_id() => held,
            Some(other) => {
                state.retiring.insert(payment_id.clone(), other);
                Vec::new()
            }
            None => Vec::new(),
        };
        if let Some(error) = &failure {
            state.on_child_failure(&payment_id, error);
        } else {
            debug!(%payment_id, "payment actor stopped");
        }
        // What arrived while it was stopping goes to a rebuilt actor (or gets the reason
        // why there is none yet).
        for message in held {
            match state.live_or_rebuilt(&myself, &payment_id).await {
                Ok(actor) => {
                    if let Err(e) = actor.cast(message) {
                        warn!(error = %e, "rebuilt payment actor gone");
                    }
                }
                Err(error) => message.refuse(error),
            }
        }
        state.finish_stopping(&myself);
        Ok(())
    }
}

impl MerchantState {
    /// Stops this actor if it was told to and nothing is left in flight.
    fn finish_stopping(&self, myself: &ActorRef<MerchantMsg>) {
        if self.stopping
            && self.payments.is_empty()
            && self.retiring.is_empty()
            && !self.idempotency.has_pending()
        {
            myself.stop(Some("passivated".into()));
        }
    }

    /// A payment actor failed: answer its pending create, note the unknown journal state,
    /// and count the failure against the restart intensity.
    fn on_child_failure(&mut self, payment_id: &str, error: &str) {
        warn!(merchant_id = %self.args.merchant_id, %payment_id, %error, "payment actor failed");
        // It may have failed after its append: its records may be in the journal.
        self.journal_end_needed = true;
        // Callers waiting on a create it was working on get an answer now; their retry
        // converges on the same payment id.
        for key in self.idempotency.pending_for(payment_id) {
            self.idempotency.settle(
                key,
                Err(CommandError::JournalOutcomeUnknown(
                    "the payment actor failed while creating".into(),
                )),
                0,
            );
        }
        self.record_failure(payment_id, error);
    }

    /// Restart intensity and backoff of a failed payment actor (rebuilt lazily).
    fn record_failure(&mut self, payment_id: &str, error: &str) {
        let decision = self.restarts.on_failure(payment_id, Instant::now());
        payrail_supervisor::telemetry::record_decision("merchant", &decision);
        match decision {
            RestartDecision::RestartAfter(delay) => {
                debug!(%payment_id, ?delay, "payment actor rebuilt after backoff");
            }
            RestartDecision::GiveUp => self.args.runtime.escalations.escalate(
                format!("merchant {}", self.args.merchant_id),
                format!("payment {payment_id}"),
                format!("restart intensity exceeded; last failure: {error}"),
            ),
        }
    }

    /// Refuses a payment still in its restart backoff.
    fn check_backoff(&self, payment_id: &str) -> Result<(), CommandError> {
        self.restarts
            .check(payment_id, Instant::now())
            .map_err(|wait| {
                CommandError::NotReady(format!(
                    "the payment is restarting after a failure; retry in {} ms",
                    wait.as_millis().max(1)
                ))
            })
    }

    /// Delivers a message built around the reply port to the payment's actor.
    async fn route(
        &mut self,
        myself: &ActorRef<MerchantMsg>,
        payment_id: String,
        build: impl FnOnce(Option<Reply>) -> PaymentMsg,
        reply: Option<Reply>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, held)) = self.retiring.get_mut(&payment_id) {
            if held.len() < RETIRING_QUEUE_MAX {
                held.push(build(reply));
            } else if let Some(reply) = reply {
                let _ = reply.send(Err(CommandError::NotReady(
                    "the payment's actor is restarting; retry".into(),
                )));
            }
            return Ok(());
        }
        match self.live_or_rebuilt(myself, &payment_id).await {
            Ok(actor) => {
                if let Err(e) = actor.cast(build(reply)) {
                    warn!(error = %e, "payment actor gone");
                }
            }
            Err(error) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
        }
        Ok(())
    }

    /// The payment's live actor, or one rebuilt from its snapshot.
    async fn live_or_rebuilt(
        &mut self,
        myself: &ActorRef<MerchantMsg>,
        payment_id: &str,
    ) -> Result<ActorRef<PaymentMsg>, CommandError> {
        if let Some(actor) = self.payments.get(payment_id) {
            return Ok(actor.clone());
        }
        self.check_backoff(payment_id)?;
        self.ensure_history_readable().await?;
        let runtime = self.args.runtime.clone();
        match snapshots::load_snapshot(&runtime.pool, &self.args.merchant_id, payment_id).await {
            Ok(Some(payment)) => self
                .spawn_payment(myself, payment_id, Some(payment))
                .await
                .map_err(CommandError::Internal),
            Ok(None) => Err(CommandError::NotFound),
            Err(e) => Err(CommandError::NotReady(format!(
                "the payment's snapshot cannot be read now ({e}); retry"
            ))),
        }
    }

    async fn spawn_payment(
        &mut self,
        myself: &ActorRef<MerchantMsg>,
        payment_id: &str,
        state: Option<crate::payment::Payment>,
    ) -> Result<ActorRef<PaymentMsg>, String> {
        debug_assert!(
            !self.payments.contains_key(payment_id),
            "one live actor per payment"
        );
        let shared_id: Arc<str> = Arc::from(payment_id);
        let args = PaymentArgs {
            runtime: self.args.runtime.clone(),
            payment_id: shared_id.clone(),
            merchant_id: self.shared_merchant_id.clone(),
            partition: self.args.partition,
            merchant: myself.clone(),
            state,
            in_doubt: None,
        };
        let (actor, _) = Actor::spawn_linked(None, PaymentActor, args, myself.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.payments.insert(shared_id.clone(), actor.clone());
        self.by_actor.insert(actor.get_id(), shared_id);
        Ok(actor)
    }
}
