//! What every domain actor of a node shares: the node's journal side (producer, database,
//! breaker, leases, the snapshot projector's position, the fallback), options, the PSP
//! client and the idle timer.

use kafka_journal::consumer::ConsumerProgress;
use kafka_journal::JournalProducer;
use payrail_fallback::{JournalFallback, NodeJournal, NodeJournalParts};
use payrail_supervisor::{Escalations, JournalHealth, PartitionOwnership, RestartPolicy};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Options of the domain actors (`[actors]` in config.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorOptions {
    /// Upper bound for one command from HTTP to reply (ms); past it the caller gets 503.
    pub command_timeout_ms: u64,
    /// Upper bound for waiting until the snapshot projector has applied what this node
    /// journaled, when a payment actor is rebuilt (ms).
    pub rebuild_timeout_ms: u64,
    /// Upper bound for catching up the snapshot projector at start-up (ms).
    pub startup_catch_up_timeout_ms: u64,
    /// Idempotency keys remembered in memory per merchant; older ones are read back from
    /// PostgreSQL on demand.
    pub idempotency_cache_per_merchant: usize,
    /// A payment actor with no message for this long stops; it is rebuilt from its
    /// snapshot on demand (ms). Merchant actors stop when idle and childless.
    pub passivate_after_ms: u64,
    /// Idempotency keys per owned partition the fresh-key filter is sized for (~1.25 bytes
    /// each, allocated when the partition is taken): a create whose key the filter has
    /// never seen skips its look-up in PostgreSQL. Past it the filter turns off (every key
    /// is looked up); 0: no filter.
    pub fresh_key_filter_capacity: usize,
    /// Live payment actors on this node at most: past it, the least recently active
    /// passivate at once (memory bounded by count, not only by idle time).
    pub max_live_payments: usize,
    /// Commands (creates, reads, confirms, …) this node works on at once at most; one more
    /// is refused at once with 503 `node_overloaded` instead of queueing in the actors'
    /// mailboxes (load shedding: the mailboxes themselves are unbounded).
    pub max_in_flight_commands: usize,
    /// Commands of one merchant in flight at once at most; one more is refused at once with
    /// 429 `rate_limit` (Retry-After), so one merchant cannot take the node's whole
    /// `max_in_flight_commands` (which caps it).
    pub max_in_flight_commands_per_merchant: usize,
    /// Test only: lets a payment's metadata `payrail_fault = "panic_on_<command>"` make its
    /// actor panic on that command (fault-injection suite). Off in production.
    pub fault_injection: bool,
    /// Test only (with `fault_injection`): this pool (`analytics`, `ledger`, `settlement`)
    /// sleeps `fault_slow_pool_delay_ms` per record and witnesses per-payment order, so a
    /// test can make it lag when an outage starts. Empty: none.
    pub fault_slow_pool: String,
    pub fault_slow_pool_delay_ms: u64,
    /// Test only (with `fault_injection`): how long an append of a payment with metadata
    /// `payrail_fault = "stall_before_append"` is held before it is sent (ms). 0: none.
    pub fault_stall_ms: u64,
}

impl Default for ActorOptions {
    fn default() -> Self {
        Self {
            command_timeout_ms: 8_000,
            rebuild_timeout_ms: 5_000,
            startup_catch_up_timeout_ms: 120_000,
            idempotency_cache_per_merchant: 200,
            passivate_after_ms: 60_000,
            max_live_payments: 50_000,
            fresh_key_filter_capacity: 1_000_000,
            max_in_flight_commands: 10_000,
            max_in_flight_commands_per_merchant: 2_000,
            fault_injection: false,
            fault_slow_pool: String::new(),
            fault_slow_pool_delay_ms: 0,
            fault_stall_ms: 0,
        }
    }
}

impl ActorOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=600_000).contains(&self.command_timeout_ms) {
            return Err("actors.command_timeout_ms: allowed 100..=600000".into());
        }
        if !(100..=600_000).contains(&self.rebuild_timeout_ms) {
            return Err("actors.rebuild_timeout_ms: allowed 100..=600000".into());
        }
        if !(1..=10_000_000).contains(&self.idempotency_cache_per_merchant) {
            return Err("actors.idempotency_cache_per_merchant: allowed 1..=10000000".into());
        }
        if !(10..=86_400_000).contains(&self.passivate_after_ms) {
            return Err("actors.passivate_after_ms: allowed 10..=86400000".into());
        }
        if self.fresh_key_filter_capacity > 100_000_000 {
            return Err("actors.fresh_key_filter_capacity: allowed 0..=100000000".into());
        }
        if !(100..=10_000_000).contains(&self.max_live_payments) {
            return Err("actors.max_live_payments: allowed 100..=10000000".into());
        }
        if self.fault_stall_ms > 60_000 {
            return Err("actors.fault_stall_ms: allowed 0..=60000".into());
        }
        if self.fault_slow_pool_delay_ms > 10_000 {
            return Err("actors.fault_slow_pool_delay_ms: allowed 0..=10000".into());
        }
        if !(1..=1_000_000).contains(&self.max_in_flight_commands) {
            return Err("actors.max_in_flight_commands: allowed 1..=1000000".into());
        }
        if !(1..=1_000_000).contains(&self.max_in_flight_commands_per_merchant) {
            return Err("actors.max_in_flight_commands_per_merchant: allowed 1..=1000000".into());
        }
        Ok(())
    }
}

/// What a [`Runtime`] is built from.
pub struct RuntimeParts {
    pub producer: JournalProducer,
    /// Restart intensity and backoff of every supervisor (`[supervisor.restart]`).
    pub restart: RestartPolicy,
    /// Where supervisors report give-ups (readiness, exit policy).
    pub escalations: Escalations,
    pub pool: PgPool,
    pub topic: String,
    pub partitions: u32,
    pub options: ActorOptions,
    pub health: JournalHealth,
    pub snapshots: ConsumerProgress,
    pub psp: crate::psp::PspClient,
    /// The fallback spool and its state per partition (DESIGN "Journal unavailable").
    pub fallback: JournalFallback,
    /// The partitions this node owns and their owner epochs.
    pub ownership: PartitionOwnership,
}

/// Shared by all actors of one node: the node's journal side ([`NodeJournal`], which it
/// derefs to, so actors read `runtime.producer` or call `runtime.enter_fallback`), the
/// actors' options, the PSP client and the idle timer.
pub struct Runtime {
    /// The producer, breaker, leases, produced offsets and the fallback; shared with the
    /// replayer and the delivery.
    pub journal: Arc<NodeJournal>,
    pub options: ActorOptions,
    pub psp: crate::psp::PspClient,
    /// Tells idle payment actors when to check whether to passivate (one task per node,
    /// not one timer task per actor), and the least recently active to passivate at once
    /// when live payment actors pass `max_live_payments`.
    pub payment_idle: crate::idle_timer::IdleTimer<crate::messages::PaymentMsg>,
}

impl std::ops::Deref for Runtime {
    type Target = NodeJournal;

    fn deref(&self) -> &NodeJournal {
        &self.journal
    }
}

impl Runtime {
    /// Must be called inside a tokio runtime (it starts the idle timer's task).
    pub fn new(parts: RuntimeParts) -> Arc<Self> {
        let rebuild_timeout = Duration::from_millis(parts.options.rebuild_timeout_ms);
        let max_live_payments = parts.options.max_live_payments;
        Arc::new(Self {
            journal: Arc::new(NodeJournal::new(NodeJournalParts {
                producer: parts.producer,
                restart: parts.restart,
                escalations: parts.escalations,
                pool: parts.pool,
                topic: parts.topic,
                partitions: parts.partitions,
                health: parts.health,
                snapshots: parts.snapshots,
                fallback: parts.fallback,
                ownership: parts.ownership,
                rebuild_timeout,
            })),
            options: parts.options,
            psp: parts.psp,
            payment_idle: crate::idle_timer::IdleTimer::start(
                || crate::messages::PaymentMsg::IdleCheck,
                || crate::messages::PaymentMsg::Evict,
                crate::live_bound::LiveBound::new(max_live_payments),
            ),
        })
    }
}
