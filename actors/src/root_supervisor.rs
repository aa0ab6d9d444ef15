//! [`RootSupervisor`]: the top of the node's actor tree. Spawns one linked
//! [`PartitionSupervisor`] per owned partition and restarts a failed one under the
//! `[supervisor.restart]` intensity and backoff (in the background: other partitions keep
//! serving). Past the intensity it escalates (`/readyz` not ready, or exit) and leaves the
//! partition down; its merchants get 503 until an operator acts.
//!
//! The routing table it maintains is shared with [`NodeHandle`](crate::NodeHandle): a
//! partition being restarted has no entry, and its commands get a retryable 503.

use crate::messages::PartitionMsg;
use crate::partition_actor::{PartitionArgs, PartitionSupervisor};
use crate::runtime::Runtime;
use payrail_supervisor::{RestartDecision, RestartTracker};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tracing::{info, warn};

/// Partition → its supervisor, for routing. Written only by the root supervisor.
pub type PartitionRoutes = Arc<RwLock<HashMap<i32, ActorRef<PartitionMsg>>>>;

pub enum RootMsg {
    /// Start (or restart, after its backoff) the supervisor of this partition, if the node
    /// owns it.
    Start(i32),
    /// Stop the partition's supervisor and its actors for good (the partition moved to
    /// another node); replies once they are stopped.
    Stop(i32, ractor::RpcReplyPort<()>),
}

/// How long stopping a partition's actors may take.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct RootArgs {
    pub runtime: Arc<Runtime>,
    pub partitions: Vec<i32>,
    pub routes: PartitionRoutes,
}

pub struct RootState {
    args: RootArgs,
    by_actor: HashMap<ActorId, i32>,
    restarts: HashMap<i32, RestartTracker>,
}

pub struct RootSupervisor;

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        for &partition in &args.partitions {
            myself.cast(RootMsg::Start(partition))?;
        }
        Ok(RootState {
            args,
            by_actor: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::Start(partition) => {
                if !state.args.runtime.ownership.owns(partition) {
                    // A restart scheduled before the partition moved away.
                    return Ok(());
                }
                if state.by_actor.values().any(|p| *p == partition) {
                    return Ok(());
                }
                let args = PartitionArgs {
                    runtime: state.args.runtime.clone(),
                    partition,
                };
                match Actor::spawn_linked(None, PartitionSupervisor, args, myself.get_cell()).await
                {
                    Ok((actor, _)) => {
                        state.by_actor.insert(actor.get_id(), partition);
                        state.set_route(partition, Some(actor));
                        info!(partition, "partition supervisor started");
                    }
                    Err(error) => {
                        state.restart_later(&myself, partition, &error.to_string());
                    }
                }
            }
            RootMsg::Stop(partition, reply) => {
                let running = state.route(partition);
                state.set_route(partition, None);
                state.restarts.remove(&partition);
                state.by_actor.retain(|_, p| *p != partition);
                if let Some(actor) = running {
                    let _ = actor
                        .stop_and_wait(Some("partition moved".into()), Some(STOP_TIMEOUT))
                        .await;
                }
                info!(partition, "partition supervisor stopped (partition moved)");
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            // A partition supervisor never stops by itself: treat it as a failure.
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(partition) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        warn!(partition, %reason, "partition supervisor died");
        state.set_route(partition, None);
        state.restart_later(&myself, partition, &reason);
        Ok(())
    }
}

impl RootState {
    fn route(&self, partition: i32) -> Option<ActorRef<PartitionMsg>> {
        let routes = match self.args.routes.read() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        };
        routes.get(&partition).cloned()
    }

    fn set_route(&self, partition: i32, actor: Option<ActorRef<PartitionMsg>>) {
        let mut routes = match self.args.routes.write() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        };
        match actor {
            Some(actor) => routes.insert(partition, actor),
            None => routes.remove(&partition),
        };
    }

    fn restart_later(&mut self, myself: &ActorRef<RootMsg>, partition: i32, reason: &str) {
        let policy = self.args.runtime.restart;
        let tracker = self
            .restarts
            .entry(partition)
            .or_insert_with(|| RestartTracker::new(policy));
        let decision = tracker.on_failure(Instant::now());
        payrail_supervisor::telemetry::record_decision("root", &decision);
        match decision {
            RestartDecision::RestartAfter(delay) => {
                warn!(partition, ?delay, "restarting partition supervisor");
                myself.send_after(delay, move || RootMsg::Start(partition));
            }
            RestartDecision::GiveUp => self.args.runtime.escalations.escalate(
                "root",
                format!("partition {partition}"),
                format!("restart intensity exceeded; last failure: {reason}"),
            ),
        }
    }
}
