//! [`PartitionSupervisor`]: one per owned journal partition, itself supervised by the
//! node's [`RootSupervisor`](crate::root_supervisor::RootSupervisor). Spawns merchant actors
//! on demand as its linked children and routes messages to them.
//!
//! A merchant actor that fails is restarted lazily (rebuilt on its next message; its state
//! is durable) after the `[supervisor.restart]` backoff; past the restart intensity the
//! supervisor escalates and refuses that merchant until the window has passed. Nothing in
//! the handler may fail the supervisor itself: an error answers the caller instead.

use crate::error::CommandError;
use crate::fresh_keys::FreshKeys;
use crate::merchant_actor::{MerchantActor, MerchantArgs};
use crate::messages::{MerchantMsg, PartitionMsg};
use crate::runtime::Runtime;
use payrail_supervisor::{LazyRestarts, RestartDecision};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// Merchants with a restart record kept per partition at most (oldest dropped first).
const RESTART_RECORDS_MAX: usize = 1_024;

/// Messages held for one stopping merchant actor at most; more are refused (retryable).
const RETIRING_QUEUE_MAX: usize = 1_024;

pub struct PartitionArgs {
    pub runtime: Arc<Runtime>,
    pub partition: i32,
}

pub struct PartitionState {
    args: PartitionArgs,
    merchants: HashMap<String, ActorRef<MerchantMsg>>,
    by_actor: HashMap<ActorId, String>,
    /// Merchant actors told to stop (passivation), with the messages for that merchant
    /// that arrived since: delivered to a new actor once the old one has stopped, so there
    /// is never more than one live actor per merchant.
    retiring: HashMap<String, (ActorId, Vec<MerchantMsg>)>,
    restarts: LazyRestarts,
    /// The partition's idempotency keys, shared with its merchant actors; lives as long as
    /// this supervisor (a partition taken again starts a new one).
    fresh_keys: Arc<FreshKeys>,
    /// Counted in `payrail_actors_live` while this state exists.
    _live: crate::telemetry::Live,
}

pub struct PartitionSupervisor;

impl Actor for PartitionSupervisor {
    type Msg = PartitionMsg;
    type State = PartitionState;
    type Arguments = PartitionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PartitionMsg>,
        args: PartitionArgs,
    ) -> Result<PartitionState, ActorProcessingErr> {
        Ok(PartitionState {
            restarts: LazyRestarts::new(args.runtime.restart, RESTART_RECORDS_MAX),
            fresh_keys: FreshKeys::new(
                args.partition,
                args.runtime.options.fresh_key_filter_capacity,
            ),
            args,
            merchants: HashMap::new(),
            by_actor: HashMap::new(),
            retiring: HashMap::new(),
            _live: crate::telemetry::Live::new(crate::telemetry::ActorKind::Partition),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PartitionMsg>,
        message: PartitionMsg,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PartitionMsg::ToMerchant { merchant_id, msg } => {
                inject_fault(&state.args.runtime, &msg);
                state.deliver(&myself, merchant_id, msg).await;
            }
            PartitionMsg::Passivate { merchant_id, actor } => {
                if let Some(current) = state.merchants.get(&merchant_id) {
                    if current.get_id() == actor {
                        let current = current.clone();
                        state.merchants.remove(&merchant_id);
                        state.retiring.insert(merchant_id, (actor, Vec::new()));
                        crate::telemetry::passivated(crate::telemetry::ActorKind::Merchant);
                        let _ = current.cast(MerchantMsg::Stop);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PartitionMsg>,
        event: SupervisionEvent,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        let Some(merchant_id) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state
            .merchants
            .get(&merchant_id)
            .is_some_and(|a| a.get_id() == cell.get_id())
        {
            state.merchants.remove(&merchant_id);
        }
        if let Some(error) = failure {
            warn!(partition = state.args.partition, %merchant_id, %error, "merchant actor failed");
            state.record_failure(&merchant_id, &error);
        }
        let held = match state.retiring.remove(&merchant_id) {
            Some((actor, held)) if actor == cell.get_id() => held,
            Some(other) => {
                state.retiring.insert(merchant_id.clone(), other);
                Vec::new()
            }
            None => Vec::new(),
        };
        for msg in held {
            state.deliver(&myself, merchant_id.clone(), msg).await;
        }
        Ok(())
    }
}

/// Fault injection (test only, `actors.fault_injection`): a create whose metadata has
/// `payrail_fault = "panic_partition_supervisor"` panics this partition's supervisor, once
/// per process, so that the root supervisor's restart can be seen.
fn inject_fault(runtime: &Runtime, msg: &MerchantMsg) {
    if !runtime.options.fault_injection {
        return;
    }
    let MerchantMsg::Create {
        command: crate::payment::Command::Create(create),
        ..
    } = msg
    else {
        return;
    };
    if create.metadata.get("payrail_fault").map(String::as_str)
        != Some("panic_partition_supervisor")
    {
        return;
    }
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !FIRED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        panic!("injected fault: panic_partition_supervisor");
    }
}

impl PartitionState {
    /// Delivers `msg` to the merchant's actor, spawning it if needed; holds it while the
    /// merchant's previous actor is stopping.
    async fn deliver(
        &mut self,
        myself: &ActorRef<PartitionMsg>,
        merchant_id: String,
        msg: MerchantMsg,
    ) {
        if let Some((_, held)) = self.retiring.get_mut(&merchant_id) {
            if held.len() < RETIRING_QUEUE_MAX {
                held.push(msg);
            } else {
                msg.fail(CommandError::NotReady(
                    "the merchant's actor is restarting; retry".into(),
                ));
            }
            return;
        }
        let actor = match self.merchants.get(&merchant_id) {
            Some(actor) => actor.clone(),
            None => match self.spawn_merchant(myself, &merchant_id).await {
                Ok(actor) => actor,
                Err(error) => {
                    msg.fail(error);
                    return;
                }
            },
        };
        if let Err(error) = actor.cast(msg) {
            warn!(%merchant_id, %error, "merchant actor gone; message dropped");
            if let ractor::MessagingErr::SendErr(msg) = error {
                msg.fail(CommandError::NotReady(
                    "the merchant actor stopped; retry".into(),
                ));
            }
        }
    }

    async fn spawn_merchant(
        &mut self,
        myself: &ActorRef<PartitionMsg>,
        merchant_id: &str,
    ) -> Result<ActorRef<MerchantMsg>, CommandError> {
        if let Err(wait) = self.restarts.check(merchant_id, Instant::now()) {
            return Err(CommandError::NotReady(format!(
                "the merchant is restarting after a failure; retry in {} ms",
                wait.as_millis().max(1)
            )));
        }
        let args = MerchantArgs {
            runtime: self.args.runtime.clone(),
            merchant_id: merchant_id.to_string(),
            partition: self.args.partition,
            parent: myself.clone(),
            fresh_keys: self.fresh_keys.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, MerchantActor, args, myself.get_cell())
            .await
            .map_err(|e| CommandError::NotReady(format!("starting the merchant actor: {e}")))?;
        self.merchants
            .insert(merchant_id.to_string(), actor.clone());
        self.by_actor
            .insert(actor.get_id(), merchant_id.to_string());
        Ok(actor)
    }

    fn record_failure(&mut self, merchant_id: &str, error: &str) {
        let decision = self.restarts.on_failure(merchant_id, Instant::now());
        payrail_supervisor::telemetry::record_decision("partition", &decision);
        match decision {
            RestartDecision::RestartAfter(delay) => {
                debug!(%merchant_id, ?delay, "merchant actor rebuilt after backoff");
            }
            RestartDecision::GiveUp => self.args.runtime.escalations.escalate(
                format!("partition {}", self.args.partition),
                format!("merchant {merchant_id}"),
                format!("restart intensity exceeded; last failure: {error}"),
            ),
        }
    }
}
