//! The node's domain side: a [`PartitionSupervisor`] per owned partition, and the cheap,
//! cloneable [`NodeHandle`] the HTTP edge talks to.

use crate::error::CommandError;
use crate::messages::{MerchantMsg, PartitionMsg, Reply};
use crate::payment::{Command, PaymentView};
use crate::root_supervisor::{PartitionRoutes, RootArgs, RootMsg, RootSupervisor};
use crate::runtime::Runtime;
use crate::telemetry;
use payrail_supervisor::PartitionOwnership;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct NodeHandle {
    runtime: Arc<Runtime>,
    /// Maintained by the root supervisor: a partition being restarted has no entry.
    partitions: PartitionRoutes,
    root: ActorRef<RootMsg>,
    ownership: PartitionOwnership,
    ready: Arc<AtomicBool>,
    /// Permits for commands in flight (`actors.max_in_flight_commands`).
    in_flight: Arc<Semaphore>,
    /// Commands in flight per partition, so a partition that moves away is drained first.
    per_partition: Arc<Vec<AtomicUsize>>,
    /// Commands in flight per merchant (`actors.max_in_flight_commands_per_merchant`); a
    /// merchant with none has no entry.
    per_merchant: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One command of a merchant in flight until dropped.
struct MerchantInFlight {
    counts: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    merchant_id: String,
}

impl MerchantInFlight {
    /// Counts one more command for `merchant_id`, unless it has `limit` already.
    fn acquire(
        counts: &Arc<std::sync::Mutex<HashMap<String, usize>>>,
        merchant_id: &str,
        limit: usize,
    ) -> Option<Self> {
        let mut map = counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = map.entry(merchant_id.to_string()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            merchant_id: merchant_id.to_string(),
        })
    }
}

impl Drop for MerchantInFlight {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = map.get_mut(&self.merchant_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.merchant_id);
            }
        }
    }
}

/// Counts one command in flight on a partition until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl NodeHandle {
    /// Starts the root supervisor, which spawns a supervisor per owned partition. The node
    /// is not ready until [`NodeHandle::mark_ready`] (after the snapshot projector caught
    /// up) and every partition has its supervisor.
    pub async fn start(
        runtime: Arc<Runtime>,
        ownership: PartitionOwnership,
    ) -> Result<Self, CommandError> {
        let routes: PartitionRoutes = Arc::new(RwLock::new(HashMap::new()));
        let args = RootArgs {
            runtime: runtime.clone(),
            partitions: ownership.owned(),
            routes: routes.clone(),
        };
        let (root, _) = Actor::spawn(None, RootSupervisor, args)
            .await
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        let in_flight = Arc::new(Semaphore::new(runtime.options.max_in_flight_commands));
        let per_partition = Arc::new(
            (0..runtime.partitions)
                .map(|_| AtomicUsize::new(0))
                .collect::<Vec<_>>(),
        );
        Ok(Self {
            per_merchant: Arc::new(std::sync::Mutex::new(HashMap::new())),
            per_partition,
            runtime,
            partitions: routes,
            root,
            ownership,
            ready: Arc::new(AtomicBool::new(false)),
            in_flight,
        })
    }

    /// Owned partitions without a running supervisor (restarting, or given up).
    pub fn partitions_down(&self) -> Vec<i32> {
        let routes = match self.partitions.read() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.ownership
            .owned()
            .into_iter()
            .filter(|p| !routes.contains_key(p))
            .collect()
    }

    /// Serves `partition` from now on, writing under `epoch` (a cluster node that took it
    /// over, after catching up).
    pub fn start_partition(&self, partition: i32, epoch: u64) {
        self.ownership.grant(partition, epoch);
        let _ = self.root.cast(RootMsg::Start(partition));
    }

    /// Stops serving `partition`: new commands are refused at once, the commands in flight
    /// get up to `drain` to finish, then its actors stop. Returns the commands still in
    /// flight when the drain ended (0 = drained).
    pub async fn stop_partition(&self, partition: i32, drain: Duration) -> usize {
        self.ownership.revoke(partition);
        let started = std::time::Instant::now();
        while self.in_flight(partition) > 0 && started.elapsed() < drain {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = self.in_flight(partition);
        let stopped = self
            .root
            .call(
                |reply| RootMsg::Stop(partition, reply),
                Some(drain.max(Duration::from_secs(10))),
            )
            .await;
        if !matches!(stopped, Ok(CallResult::Success(()))) {
            tracing::warn!(partition, "stopping the partition's actors did not confirm");
        }
        left
    }

    /// Commands in flight on `partition`.
    pub fn in_flight(&self, partition: i32) -> usize {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.per_partition.get(p))
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    pub fn ownership(&self) -> &PartitionOwnership {
        &self.ownership
    }

    /// Stops the actor tree (shutdown).
    pub fn stop(&self) {
        self.root.stop(Some("node shutting down".into()));
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
        let started = Instant::now();
        let result = self
            .ask(merchant_id, |reply| MerchantMsg::Create {
                command,
                idempotency,
                correlation_id,
                reply,
            })
            .await;
        telemetry::command_finished("create", &result, started.elapsed());
        result
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
    /// Its latency, from here to the reply, goes to `payrail_command_duration_seconds`.
    pub async fn command(
        &self,
        merchant_id: &str,
        payment_id: &str,
        command: Command,
        correlation_id: Option<String>,
    ) -> Result<PaymentView, CommandError> {
        let started = Instant::now();
        let kind = command.kind();
        let payment_id = payment_id.to_string();
        let result = self
            .ask(merchant_id, |reply| MerchantMsg::Command {
                payment_id,
                command,
                correlation_id,
                reply: Some(reply),
            })
            .await;
        telemetry::command_finished(kind, &result, started.elapsed());
        result
    }

    /// Asks the payment to act on whatever is overdue (sweeper); waits for it.
    pub async fn poll(
        &self,
        merchant_id: &str,
        payment_id: &str,
    ) -> Result<PaymentView, CommandError> {
        let started = Instant::now();
        let payment_id = payment_id.to_string();
        let result = self
            .ask(merchant_id, |reply| MerchantMsg::Poll {
                payment_id,
                reply: Some(reply),
            })
            .await;
        telemetry::command_finished("poll", &result, started.elapsed());
        result
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
        let counter = usize::try_from(partition)
            .ok()
            .and_then(|p| self.per_partition.get(p))
            .ok_or_else(|| CommandError::Internal(format!("partition {partition} out of range")))?;
        counter.fetch_add(1, Ordering::AcqRel);
        let _counted = InFlight(counter);
        // Checked after counting: a partition being stopped either sees this command in
        // flight and waits for it, or this command sees the partition gone.
        if !self.ownership.owns(partition) {
            return Err(CommandError::NotReady(format!(
                "partition {partition} is not owned by this node"
            )));
        }
        let actor = {
            let routes = match self.partitions.read() {
                Ok(routes) => routes,
                Err(poisoned) => poisoned.into_inner(),
            };
            routes.get(&partition).cloned().ok_or_else(|| {
                CommandError::NotReady(format!(
                    "partition {partition} is restarting after a failure; retry"
                ))
            })?
        };
        // Held until the answer (or the timeout): a bound on what callers have queued in
        // the actors' mailboxes.
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| CommandError::Overloaded(self.runtime.options.max_in_flight_commands))?;
        let options = &self.runtime.options;
        let limit = options
            .max_in_flight_commands_per_merchant
            .min(options.max_in_flight_commands);
        let _merchant_permit = MerchantInFlight::acquire(&self.per_merchant, merchant_id, limit)
            .ok_or(CommandError::MerchantOverloaded(limit))?;
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
            .map_err(|e| {
                CommandError::NotReady(format!(
                    "partition {partition} is not taking commands ({e}); retry"
                ))
            })?;
        match result {
            CallResult::Success(result) => result,
            CallResult::Timeout => Err(CommandError::Timeout),
            // The actor working on it stopped before answering: it may or may not have
            // journaled it.
            CallResult::SenderError => Err(CommandError::JournalOutcomeUnknown(
                "the actor working on the command stopped before answering".into(),
            )),
        }
    }
}
