//! [`PartitionSupervisor`]: one per owned journal partition. Spawns merchant actors on
//! demand as its linked children and routes messages to them. A merchant actor that fails
//! is dropped and rebuilt on the next message (its state is durable: snapshots, journal).

use crate::merchant_actor::{MerchantActor, MerchantArgs, MerchantMsg};
use crate::runtime::Runtime;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::warn;

pub enum PartitionMsg {
    /// Deliver `msg` to the merchant's actor, spawning it if needed.
    ToMerchant {
        merchant_id: String,
        msg: MerchantMsg,
    },
}

pub struct PartitionArgs {
    pub runtime: Arc<Runtime>,
    pub partition: i32,
}

pub struct PartitionState {
    args: PartitionArgs,
    merchants: HashMap<String, ActorRef<MerchantMsg>>,
    by_actor: HashMap<ActorId, String>,
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
            args,
            merchants: HashMap::new(),
            by_actor: HashMap::new(),
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
                let actor = match state.merchants.get(&merchant_id) {
                    Some(actor) => actor.clone(),
                    None => {
                        let args = MerchantArgs {
                            runtime: state.args.runtime.clone(),
                            merchant_id: merchant_id.clone(),
                            partition: state.args.partition,
                        };
                        let (actor, _) =
                            Actor::spawn_linked(None, MerchantActor, args, myself.get_cell())
                                .await?;
                        state.merchants.insert(merchant_id.clone(), actor.clone());
                        state.by_actor.insert(actor.get_id(), merchant_id.clone());
                        actor
                    }
                };
                if actor.cast(msg).is_err() {
                    warn!(%merchant_id, "merchant actor gone; message dropped (caller times out)");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<PartitionMsg>,
        event: SupervisionEvent,
        state: &mut PartitionState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => cell,
            SupervisionEvent::ActorFailed(cell, error) => {
                warn!(partition = state.args.partition, %error, "merchant actor failed");
                cell
            }
            _ => return Ok(()),
        };
        if let Some(merchant_id) = state.by_actor.remove(&cell.get_id()) {
            state.merchants.remove(&merchant_id);
        }
        Ok(())
    }
}
