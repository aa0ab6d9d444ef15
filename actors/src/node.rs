//! The node's domain side: a [`PartitionSupervisor`] per owned partition, and the cheap,
//! cloneable [`NodeHandle`] the HTTP edge talks to.

use crate::error::CommandError;
use crate::merchant_actor::MerchantMsg;
use crate::partition_actor::{PartitionArgs, PartitionMsg, PartitionSupervisor};
use crate::payment::{Command, PaymentView};
use crate::payment_actor::Reply;
use crate::runtime::Runtime;
use payrail_supervisor::PartitionOwnership;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct NodeHandle {
    runtime: Arc<Runtime>,
    partitions: Arc<HashMap<i32, ActorRef<PartitionMsg>>>,
    ownership: PartitionOwnership,
    ready: Arc<AtomicBool>,
    /// Permits for commands in flight (`actors.max_in_flight_commands`).
    in_flight: Arc<Semaphore>,
}

impl NodeHandle {
    /// Spawns a supervisor per owned partition. The node is not ready until
    /// [`NodeHandle::mark_ready`] (after the snapshot projector caught up).
    pub async fn start(
        runtime: Arc<Runtime>,
        ownership: PartitionOwnership,
    ) -> Result<Self, CommandError> {
        let mut partitions = HashMap::new();
        for partition in ownership.owned() {
            let args = PartitionArgs {
                runtime: runtime.clone(),
                partition,
            };
            let (actor, _) = Actor::spawn(None, PartitionSupervisor, args)
                .await
                .map_err(|e| CommandError::Internal(e.to_string()))?;
            partitions.insert(partition, actor);
        }
        let in_flight = Arc::new(Semaphore::new(runtime.options.max_in_flight_commands));
        Ok(Self {
            runtime,
            partitions: Arc::new(partitions),
            ownership,
            ready: Arc::new(AtomicBool::new(false)),
            in_flight,
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub async fn create_payment(
        &self,
        merchant_id: &str,
        command: Command,
        idempotency: Option<(String, String)>,
        correlation_id: Option<String>,
    ) -> Result<PaymentView, CommandError> {
        self.ask(merchant_id, |reply| MerchantMsg::Create {
            command,
            idempotency,
            correlation_id,
            reply,
        })
        .await
    }

    pub async fn get_payment(
        &self,
        merchant_id: &str,
        payment_id: &str,
    ) -> Result<PaymentView, CommandError> {
        let payment_id = payment_id.to_string();
        self.ask(merchant_id, |reply| MerchantMsg::Get { payment_id, reply })
            .await
    }

    /// A command on an existing payment (confirm, capture, cancel, refund, outcomes).
    pub async fn command(
        &self,
        merchant_id: &str,
        payment_id: &str,
        command: Command,
        correlation_id: Option<String>,
    ) -> Result<PaymentView, CommandError> {
        let payment_id = payment_id.to_string();
        self.ask(merchant_id, |reply| MerchantMsg::Command {
            payment_id,
            command,
            correlation_id,
            reply: Some(reply),
        })
        .await
    }

    /// Asks the payment to act on whatever is overdue (sweeper); waits for it.
    pub async fn poll(
        &self,
        merchant_id: &str,
        payment_id: &str,
    ) -> Result<PaymentView, CommandError> {
        let payment_id = payment_id.to_string();
        self.ask(merchant_id, |reply| MerchantMsg::Poll {
            payment_id,
            reply: Some(reply),
        })
        .await
    }

    /// Whether this node owns the merchant's partition.
    pub fn owns_merchant(&self, merchant_id: &str) -> bool {
        self.ownership.owns(self.runtime.partition_of(merchant_id))
    }

    pub fn owned_partitions(&self) -> Vec<i32> {
        self.ownership.owned()
    }

    async fn ask(
        &self,
        merchant_id: &str,
        build: impl FnOnce(Reply) -> MerchantMsg,
    ) -> Result<PaymentView, CommandError> {
        if !self.is_ready() {
            return Err(CommandError::NotReady("partitions are recovering".into()));
        }
        let partition = self.runtime.partition_of(merchant_id);
        if !self.ownership.owns(partition) {
            return Err(CommandError::NotReady(format!(
                "partition {partition} is not owned by this node"
            )));
        }
        let actor = self.partitions.get(&partition).ok_or_else(|| {
            CommandError::Internal(format!("no supervisor for partition {partition}"))
        })?;
        // Held until the answer (or the timeout): a bound on what callers have queued in
        // the actors' mailboxes.
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| CommandError::Overloaded(self.runtime.options.max_in_flight_commands))?;
        let timeout = Duration::from_millis(self.runtime.options.command_timeout_ms);
        let merchant_id = merchant_id.to_string();
        let result = actor
            .call(
                |reply| PartitionMsg::ToMerchant {
                    merchant_id,
                    msg: build(reply),
                },
                Some(timeout),
            )
            .await
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        match result {
            CallResult::Success(result) => result,
            CallResult::Timeout => Err(CommandError::Timeout),
            CallResult::SenderError => Err(CommandError::Internal("actor stopped".into())),
        }
    }
}
