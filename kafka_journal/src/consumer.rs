//! Partition-aware consumers: one [`PartitionWorker`] actor per assigned partition.
//!
//! A dispatcher task polls the Kafka consumer, groups the records it gets by partition and
//! hands each batch to that partition's worker (bounded: at most `worker_mailbox` batches
//! queued per worker; the dispatcher waits beyond that). A worker applies a batch in one
//! PostgreSQL transaction together with the event ids it applied and its next offset, so
//! each event takes effect exactly once; see [`crate::offsets`].
//!
//! PostgreSQL is the truth about positions. The group's Kafka offsets are only a hint for
//! where to start fetching: a worker drops records below its stored offset, and never
//! applies a batch that starts past it (see [`GapGuard`]): it seeks back instead.
//!
//! Each partition's worker has a supervisor task. A worker that fails (panics, or cannot
//! start, e.g. PostgreSQL is away in `pre_start`) is restarted after the backoff of a
//! [`RestartTracker`], in that task: the dispatcher never waits for it, so the other
//! partitions keep flowing. Meanwhile the partition is paused and its records are dropped;
//! the restarted worker seeks back to its stored offset. Past the restart intensity the
//! partition stays stopped and the give-up is reported to [`Escalations`].

use crate::dead_letters::DeadLetterPublisher;
use crate::envelope::EventHeaders;
use crate::fence::{EpochFence, FenceVerdict};
use crate::offsets;
use crate::options::JournalOptions;
use crate::producer::JournalError;
use payrail_supervisor::{Escalations, RestartDecision, RestartPolicy, RestartTracker};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn, Instrument};
use uuid::Uuid;

/// Which partitions a consumer reads.
#[derive(Debug, Clone)]
pub enum Assignment {
    /// Partitions come from the broker's consumer group of this name.
    Group(String),
    /// Exactly these partitions, starting at the offsets stored in PostgreSQL.
    Manual(Vec<i32>),
}

/// What one consumer is.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Name under which offsets and processed events are stored in PostgreSQL.
    pub name: String,
    pub topic: String,
    pub assignment: Assignment,
    /// Where records that fail every attempt are published besides `journal_dead_letters`
    /// (a pool's `<namespace><pool>.dlq`, see [`JournalOptions::dead_letter_topic`]); created
    /// at start. `None`: the table only.
    pub dead_letter_topic: Option<String>,
}

/// Cheap, cloneable handle to a running consumer.
#[derive(Clone)]
pub struct ConsumerHandle {
    pub progress: ConsumerProgress,
    shutdown: watch::Sender<bool>,
    /// The partitions a manually assigned consumer reads (see [`ConsumerHandle::assign`]).
    assignment: watch::Sender<BTreeSet<i32>>,
    pub spec: ConsumerSpec,
}

impl ConsumerHandle {
    /// Stops polling; workers finish their current batch. Stops every consumer that shares
    /// this one's fetch.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Makes a manually assigned consumer read exactly `partitions` from now on: a
    /// partition gained starts at its offset stored in PostgreSQL; a partition lost has
    /// its worker drained and stopped, and records of it still fetched are dropped. A
    /// cluster node calls this as its leases change. No effect on a group consumer. Moves
    /// every consumer that shares this one's fetch.
    pub fn assign(&self, partitions: impl IntoIterator<Item = i32>) {
        let wanted: BTreeSet<i32> = partitions.into_iter().collect();
        self.assignment.send_if_modified(|current| {
            if *current == wanted {
                false
            } else {
                *current = wanted;
                true
            }
        });
    }

    /// The partitions this consumer was last told to read (manual assignment).
    pub fn assigned(&self) -> BTreeSet<i32> {
        self.assignment.borrow().clone()
    }
}

type SharedConsumer = Arc<StreamConsumer<PoolContext>>;

/// How a consumer supervises its partition workers.
#[derive(Debug, Clone, Default)]
pub struct Supervision {
    /// Restart intensity and backoff for failed workers (`[supervisor.restart]`).
    pub restart: RestartPolicy,
    /// Where a give-up is reported, so that `/readyz` shows it instead of a silent stall.
    pub escalations: Escalations,
}

/// What the consumer knows about one partition's worker.
enum SlotState {
    /// Applying records.
    Running {
        actor: ActorRef<WorkerMsg>,
        mailbox: Arc<Semaphore>,
    },
    /// Failed; a restart is scheduled. The partition is paused and records that still
    /// arrive are dropped: the restarted worker seeks back to its stored offset.
    Restarting,
    /// Given up on (escalated): the partition stays paused, the other partitions go on.
    Stopped,
}

struct WorkerSlot {
    state: SlotState,
    /// Tells the slot's own supervisor task from that of a later assignment.
    generation: u64,
}

type Workers = Arc<Mutex<HashMap<i32, WorkerSlot>>>;

fn lock_workers(workers: &Workers) -> std::sync::MutexGuard<'_, HashMap<i32, WorkerSlot>> {
    match workers.lock() {
        Ok(w) => w,
        Err(p) => p.into_inner(),
    }
}

/// librdkafka context: on revocation, drains and stops the revoked partitions' workers
/// before the partitions are handed to another member.
pub struct PoolContext {
    workers: Workers,
    drain_timeout: Duration,
    log: crate::client_log::ClientLog,
}

impl ClientContext for PoolContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }
}

impl ConsumerContext for PoolContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            let actors: Vec<ActorRef<WorkerMsg>> = {
                let mut workers = lock_workers(&self.workers);
                revoked
                    .iter()
                    .filter_map(|p| workers.remove(p))
                    .filter_map(|slot| match slot.state {
                        SlotState::Running { actor, .. } => Some(actor),
                        _ => None,
                    })
                    .collect()
            };
            info!(?revoked, "partitions revoked; draining workers");
            let timeout = self.drain_timeout;
            let drain = async move {
                for actor in actors {
                    let _ = actor.call(WorkerMsg::Drain, Some(timeout)).await;
                    actor.stop(None);
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle)
                    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(|| handle.block_on(drain));
                }
                Ok(handle) => {
                    handle.spawn(drain);
                }
                Err(_) => {}
            }
        }
    }
}

/// Starts a consumer for `spec` whose workers call `handler`: a fetch of its own.
pub async fn spawn_consumer(
    options: &JournalOptions,
    supervision: Supervision,
    spec: ConsumerSpec,
    pool: PgPool,
    handler: Arc<dyn PartitionHandler>,
) -> Result<ConsumerHandle, JournalError> {
    let mut handles = spawn_consumers(
        options,
        supervision,
        vec![ConsumerSink { spec, handler }],
        pool,
    )
    .await?;
    handles
        .pop()
        .ok_or_else(|| JournalError::Config("no consumer started".into()))
}

/// One consumer of a shared fetch: what it is and what applies its records.
pub struct ConsumerSink {
    pub spec: ConsumerSpec,
    pub handler: Arc<dyn PartitionHandler>,
}

/// Starts consumers that share one fetch: one Kafka consumer reads each partition once and
/// hands every batch to each sink's own worker for that partition.
///
/// Each sink keeps its own offsets, epoch fence, processed event ids, restarts and dead
/// letters, exactly as with a fetch of its own. The fetch starts each partition at the
/// lowest stored offset of the sinks; a sink drops what it applied already. A worker that
/// seeks back (a restart, a gap) rewinds the shared fetch, and the others drop the records
/// they see again. Each sink's worker holds at most `worker_mailbox` batches: a slow sink
/// holds the others back only once that buffer is full, so they run ahead of it by at most
/// `worker_mailbox × worker_batch_max` records per partition (see docs/DECISIONS.md,
/// "One fetch for the pools").
///
/// Several sinks must read the same topic and be assigned by hand the same partitions; a
/// handle's [`ConsumerHandle::assign`] and [`ConsumerHandle::stop`] act on all of them.
pub async fn spawn_consumers(
    options: &JournalOptions,
    supervision: Supervision,
    sinks: Vec<ConsumerSink>,
    pool: PgPool,
) -> Result<Vec<ConsumerHandle>, JournalError> {
    let Some(first) = sinks.first() else {
        return Err(JournalError::Config(
            "a consumer needs at least one sink".into(),
        ));
    };
    let topic = first.spec.topic.clone();
    let assignment = first.spec.assignment.clone();
    let name = sinks
        .iter()
        .map(|s| s.spec.name.as_str())
        .collect::<Vec<_>>()
        .join("+");
    if sinks.len() > 1 {
        for sink in &sinks {
            let same_partitions = match (&sink.spec.assignment, &assignment) {
                (Assignment::Manual(a), Assignment::Manual(b)) => {
                    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
                }
                _ => false,
            };
            if sink.spec.topic != topic || !same_partitions {
                return Err(JournalError::Config(format!(
                    "consumers sharing a fetch ({name}) must read the same topic and be assigned the same partitions by hand"
                )));
            }
        }
    }
    let workers: Vec<Workers> = sinks
        .iter()
        .map(|_| Arc::new(Mutex::new(HashMap::new())))
        .collect();
    let group_id = match &assignment {
        Assignment::Group(group) => group.clone(),
        Assignment::Manual(_) => format!("{name}.manual.{}", Uuid::now_v7()),
    };
    let manual = matches!(assignment, Assignment::Manual(_));
    let consumer = new_consumer(options, &name, &group_id, manual, workers[0].clone())?;
    let progress: Vec<ConsumerProgress> =
        sinks.iter().map(|_| ConsumerProgress::default()).collect();

    match &assignment {
        Assignment::Group(_) => consumer.subscribe(&[topic.as_str()])?,
        Assignment::Manual(partitions) => {
            let mut list = TopicPartitionList::new();
            for &partition in partitions {
                let mut start = i64::MAX;
                for (sink, progress) in sinks.iter().zip(&progress) {
                    let stored =
                        offsets::load_next_offset(&pool, &sink.spec.name, &topic, partition)
                            .await
                            .map_err(|e| JournalError::Config(format!("loading offsets: {e}")))?;
                    let stored = stored.unwrap_or(0);
                    progress.publish(partition, stored);
                    start = start.min(stored);
                }
                list.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            }
            consumer.assign(&list)?;
        }
    }

    let initial: BTreeSet<i32> = match &assignment {
        Assignment::Manual(partitions) => partitions.iter().copied().collect(),
        Assignment::Group(_) => BTreeSet::new(),
    };
    let (assignment_tx, assignment_rx) = watch::channel(initial.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shares_fetch = sinks.len() > 1;
    let mut shared = Vec::with_capacity(sinks.len());
    let mut handles = Vec::with_capacity(sinks.len());
    for ((sink, workers), progress) in sinks.into_iter().zip(workers).zip(progress) {
        let dead_letters = match &sink.spec.dead_letter_topic {
            Some(topic) => Some(Arc::new(
                DeadLetterPublisher::new(options, topic.clone()).await?,
            )),
            None => None,
        };
        shared.push(Arc::new(Shared {
            consumer: consumer.clone(),
            spec: sink.spec.clone(),
            pool: pool.clone(),
            handler: sink.handler,
            workers,
            progress: progress.clone(),
            mailbox: options.worker_mailbox,
            max_attempts: options.worker_max_attempts,
            retry_base: Duration::from_millis(options.worker_retry_base_ms),
            supervision: supervision.clone(),
            manual,
            shares_fetch,
            generations: AtomicU64::new(0),
            shutdown: shutdown_rx.clone(),
            dead_letters,
        }));
        handles.push(ConsumerHandle {
            progress,
            shutdown: shutdown.clone(),
            assignment: assignment_tx.clone(),
            spec: sink.spec,
        });
    }
    let dispatcher = Dispatcher {
        consumer,
        manual,
        sinks: shared,
        batch_max: options.worker_batch_max,
        assigned: initial,
        assignment: assignment_rx,
        assignment_open: true,
    };
    let span = tracing::info_span!("consumer", consumer = %name, topic = %topic);
    tokio::spawn(dispatcher.run(shutdown_rx).instrument(span));
    Ok(handles)
}

fn new_consumer(
    options: &JournalOptions,
    name: &str,
    group_id: &str,
    manual: bool,
    workers: Workers,
) -> Result<SharedConsumer, JournalError> {
    let context = PoolContext {
        workers,
        drain_timeout: Duration::from_millis(options.session_timeout_ms),
        log: options.client_log(&format!("payrail-{name}")),
    };
    let consumer: StreamConsumer<PoolContext> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", if manual { "false" } else { "true" })
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", options.session_timeout_ms.to_string())
        .set("partition.assignment.strategy", "range")
        .set("fetch.min.bytes", options.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", options.fetch_wait_max_ms.to_string())
        .set("client.id", format!("payrail-{name}"))
        .create_with_context(context)
        .map_err(|e| JournalError::Config(e.to_string()))?;
    Ok(Arc::new(consumer))
}

mod dispatch;
mod progress;
mod worker;

pub use crate::record::{ConsumedRecord, HandlerError, PartitionHandler};
use dispatch::{Dispatcher, Shared};
pub use progress::ConsumerProgress;
pub use worker::{PartitionWorker, WorkerArgs, WorkerMsg, WorkerState};

mod assignment;
#[cfg(test)]
mod assignment_tests;
#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod shared_fetch_tests;
#[cfg(test)]
mod tests;
