//! [`MerchantActor`]: one per merchant. Owns the merchant's idempotency keys and supervises
//! its payment actors, spawning them on demand (new, or rebuilt from their snapshot).

use crate::error::CommandError;
use crate::payment::{Command, PaymentView};
use crate::payment_actor::{CreateReply, PaymentActor, PaymentArgs, PaymentMsg, Reply};
use crate::runtime::Runtime;
use crate::snapshots;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tracing::{debug, warn};

pub enum MerchantMsg {
    Create {
        command: Command,
        /// (key, fingerprint of the request).
        idempotency: Option<(String, String)>,
        correlation_id: Option<String>,
        reply: Reply,
    },
    Get {
        payment_id: String,
        reply: Reply,
    },
    /// A command for an existing payment.
    Command {
        payment_id: String,
        command: Command,
        correlation_id: Option<String>,
        reply: Option<Reply>,
    },
    /// The sweeper's visit to a payment.
    Poll {
        payment_id: String,
        reply: Option<Reply>,
    },
    /// Passivation timer.
    IdleCheck,
    /// A payment actor's outcome for a create made under an idempotency key.
    CreateSettled {
        idempotency_key: String,
        payment_id: String,
        result: Result<PaymentView, CommandError>,
    },
}

enum IdempotencyEntry {
    /// The create is being journaled; these callers wait for its outcome.
    Pending {
        fingerprint: String,
        waiters: Vec<Reply>,
    },
    /// The first response, replayed to every later request with the same key and body.
    Done {
        fingerprint: String,
        response: Box<PaymentView>,
        /// Everything this key's create journaled lies before this offset (the partition's
        /// produced offset when the create settled). Evicting the entry raises
        /// `memory_complete_from` to it, so a later snapshot read of the key waits for the
        /// projector only as far as needed to see it; an old entry needs no wait at all.
        journaled_before: i64,
    },
}

pub struct MerchantArgs {
    pub runtime: Arc<Runtime>,
    pub merchant_id: String,
    pub partition: i32,
}

pub struct MerchantState {
    args: MerchantArgs,
    payments: HashMap<String, ActorRef<PaymentMsg>>,
    by_actor: HashMap<ActorId, String>,
    idempotency: HashMap<String, IdempotencyEntry>,
    /// Settled keys in insertion order, to bound the in-memory cache.
    settled_order: VecDeque<String>,
    /// Everything this actor does not hold in memory (payments, idempotency keys) was
    /// journaled before this offset, so a snapshot read is complete once the projector has
    /// reached it. Set at start, raised on every eviction or child stop. This keeps reads of
    /// cold data from waiting on records this actor produced itself (e.g. while the broker
    /// is down and the projector cannot move).
    memory_complete_from: i64,
    last_active: std::time::Instant,
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
            std::time::Duration::from_millis(args.runtime.options.passivate_after_ms),
            || MerchantMsg::IdleCheck,
        );
        let memory_complete_from = args.runtime.produced_offset(args.partition);
        Ok(MerchantState {
            memory_complete_from,
            last_active: std::time::Instant::now(),
            args,
            payments: HashMap::new(),
            by_actor: HashMap::new(),
            idempotency: HashMap::new(),
            settled_order: VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MerchantMsg>,
        message: MerchantMsg,
        state: &mut MerchantState,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, MerchantMsg::IdleCheck) {
            state.last_active = std::time::Instant::now();
        }
        match message {
            MerchantMsg::IdleCheck => {
                let idle =
                    std::time::Duration::from_millis(state.args.runtime.options.passivate_after_ms);
                let pending = state
                    .idempotency
                    .values()
                    .any(|e| matches!(e, IdempotencyEntry::Pending { .. }));
                if state.last_active.elapsed() >= idle && state.payments.is_empty() && !pending {
                    myself.stop(Some("passivated".into()));
                } else {
                    myself.send_after(idle, || MerchantMsg::IdleCheck);
                }
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
                        move |reply| PaymentMsg::Command {
                            command,
                            correlation_id,
                            reply,
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
            MerchantMsg::Get { payment_id, reply } => state.get(myself, payment_id, reply).await,
            MerchantMsg::CreateSettled {
                idempotency_key,
                payment_id: _,
                result,
            } => {
                state.settle(idempotency_key, result);
                Ok(())
            }
        }
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<MerchantMsg>,
        event: SupervisionEvent,
        state: &mut MerchantState,
    ) -> Result<(), ActorProcessingErr> {
        // A payment actor that stopped or failed is forgotten; its state is durable, so the
        // next command rebuilds it (a lazy restart).
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, error) => {
                warn!(merchant_id = %state.args.merchant_id, %error, "payment actor failed");
                (cell, None)
            }
            _ => return Ok(()),
        };
        state.memory_complete_from = state.args.runtime.produced_offset(state.args.partition);
        if let Some(payment_id) = state.by_actor.remove(&cell.get_id()) {
            debug!(%payment_id, ?failure, "payment actor stopped");
            if state
                .payments
                .get(&payment_id)
                .is_some_and(|a| a.get_id() == cell.get_id())
            {
                state.payments.remove(&payment_id);
            }
        }
        Ok(())
    }
}

impl MerchantState {
    async fn create(
        &mut self,
        myself: ActorRef<MerchantMsg>,
        command: Command,
        idempotency: Option<(String, String)>,
        correlation_id: Option<String>,
        reply: Reply,
    ) -> Result<(), ActorProcessingErr> {
        let reply_to = match idempotency {
            None => CreateReply::Caller(reply),
            Some((key, fingerprint)) => {
                if !self.idempotency.contains_key(&key) {
                    self.load_idempotency(&key).await;
                }
                match self.idempotency.get_mut(&key) {
                    Some(IdempotencyEntry::Pending {
                        fingerprint: first,
                        waiters,
                    }) => {
                        if *first == fingerprint {
                            waiters.push(reply);
                        } else {
                            let _ = reply.send(Err(CommandError::IdempotencyMismatch));
                        }
                        return Ok(());
                    }
                    Some(IdempotencyEntry::Done {
                        fingerprint: first,
                        response,
                        ..
                    }) => {
                        let _ = reply.send(if *first == fingerprint {
                            Ok(PaymentView::clone(response))
                        } else {
                            Err(CommandError::IdempotencyMismatch)
                        });
                        return Ok(());
                    }
                    None => {
                        self.idempotency.insert(
                            key.clone(),
                            IdempotencyEntry::Pending {
                                fingerprint,
                                waiters: vec![reply],
                            },
                        );
                        CreateReply::Merchant {
                            idempotency_key: key,
                        }
                    }
                }
            }
        };
        let payment_id = format!("pay_{}", uuid::Uuid::now_v7().simple());
        let actor = match self.spawn_payment(&myself, &payment_id, None).await {
            Ok(actor) => actor,
            Err(error) => {
                let result = Err(CommandError::Internal(error));
                match reply_to {
                    CreateReply::Caller(port) => {
                        let _ = port.send(result);
                    }
                    CreateReply::Merchant { idempotency_key } => {
                        self.settle(idempotency_key, result)
                    }
                }
                return Ok(());
            }
        };
        if let Err(e) = actor.cast(PaymentMsg::Create {
            command,
            correlation_id,
            reply: reply_to,
        }) {
            warn!(error = %e, "payment actor gone before its create");
        }
        Ok(())
    }

    /// Reads a key this actor does not remember (after a restart or eviction).
    async fn load_idempotency(&mut self, key: &str) {
        let runtime = &self.args.runtime;
        if !runtime
            .snapshots_reached(self.args.partition, self.memory_complete_from)
            .await
        {
            warn!(merchant_id = %self.args.merchant_id, "snapshots lag; idempotency read may miss a key");
        }
        match snapshots::load_idempotency(&runtime.pool, &self.args.merchant_id, key).await {
            Ok(Some((fingerprint, response))) => {
                // Read from a complete snapshot: evicting it again needs no wait.
                let complete = self.memory_complete_from;
                self.remember(key.to_string(), fingerprint, response, complete);
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "idempotency lookup failed"),
        }
    }

    /// Caches a settled key. `journaled_before`: an offset past every record of its create.
    fn remember(
        &mut self,
        key: String,
        fingerprint: String,
        response: PaymentView,
        journaled_before: i64,
    ) {
        self.idempotency.insert(
            key.clone(),
            IdempotencyEntry::Done {
                fingerprint,
                response: Box::new(response),
                journaled_before,
            },
        );
        self.settled_order.push_back(key);
        while self.settled_order.len() > self.args.runtime.options.idempotency_cache_per_merchant {
            let Some(old) = self.settled_order.pop_front() else {
                break;
            };
            if let Some(IdempotencyEntry::Done {
                journaled_before, ..
            }) = self.idempotency.get(&old)
            {
                // The key now lives only in PostgreSQL: reads must see its snapshot.
                self.memory_complete_from = self.memory_complete_from.max(*journaled_before);
                self.idempotency.remove(&old);
            }
        }
        debug_assert!(
            self.settled_order.len() <= self.args.runtime.options.idempotency_cache_per_merchant
        );
    }

    fn settle(&mut self, key: String, result: Result<PaymentView, CommandError>) {
        let Some(IdempotencyEntry::Pending {
            fingerprint,
            waiters,
        }) = self.idempotency.remove(&key)
        else {
            return;
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        if let Ok(response) = result {
            // The create's append was acknowledged before the payment actor answered, so
            // the produced offset is past its record.
            let journaled_before = self.args.runtime.produced_offset(self.args.partition);
            self.remember(key, fingerprint, response, journaled_before);
        }
        // On failure the key is forgotten, so a retry with the same key may succeed.
    }

    async fn get(
        &mut self,
        myself: ActorRef<MerchantMsg>,
        payment_id: String,
        reply: Reply,
    ) -> Result<(), ActorProcessingErr> {
        let actor = match self.live_or_rebuilt(&myself, &payment_id).await {
            Ok(actor) => actor,
            Err(error) => {
                let _ = reply.send(Err(error));
                return Ok(());
            }
        };
        if let Err(e) = actor.cast(PaymentMsg::Get(reply)) {
            warn!(error = %e, "payment actor gone");
        }
        Ok(())
    }

    /// Delivers a message built around the reply port to the payment's actor.
    async fn route(
        &mut self,
        myself: &ActorRef<MerchantMsg>,
        payment_id: String,
        build: impl FnOnce(Option<Reply>) -> PaymentMsg,
        reply: Option<Reply>,
    ) -> Result<(), ActorProcessingErr> {
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
        let runtime = self.args.runtime.clone();
        if !runtime
            .snapshots_reached(self.args.partition, self.memory_complete_from)
            .await
        {
            return Err(CommandError::NotReady(
                "payment snapshots are behind the journal".into(),
            ));
        }
        match snapshots::load_snapshot(&runtime.pool, &self.args.merchant_id, payment_id).await {
            Ok(Some(payment)) => self
                .spawn_payment(myself, payment_id, Some(payment))
                .await
                .map_err(CommandError::Internal),
            Ok(None) => Err(CommandError::NotFound),
            Err(e) => Err(CommandError::Internal(e.to_string())),
        }
    }

    async fn spawn_payment(
        &mut self,
        myself: &ActorRef<MerchantMsg>,
        payment_id: &str,
        state: Option<crate::payment::Payment>,
    ) -> Result<ActorRef<PaymentMsg>, String> {
        let args = PaymentArgs {
            runtime: self.args.runtime.clone(),
            payment_id: payment_id.to_string(),
            merchant_id: self.args.merchant_id.clone(),
            partition: self.args.partition,
            merchant: myself.clone(),
            state,
        };
        let (actor, _) = Actor::spawn_linked(None, PaymentActor, args, myself.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.payments.insert(payment_id.to_string(), actor.clone());
        self.by_actor.insert(actor.get_id(), payment_id.to_string());
        Ok(actor)
    }
}
