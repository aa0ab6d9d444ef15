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

use crate::codec::{Codec, CodecError, CodecKind};
use crate::dead_letters::DeadLetterPublisher;
use crate::envelope::{Envelope, EventHeaders};
use crate::fence::{EpochFence, FenceVerdict};
use crate::lag::LagHistogram;
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
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn, Instrument};
use uuid::Uuid;

/// A record as a worker sees it.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub event_type: Option<String>,
    pub event_id: Option<Uuid>,
    pub content_type: Option<String>,
    pub value: Vec<u8>,
    /// The record's journal timestamp (ms since the epoch; the producer's create time).
    pub timestamp_ms: Option<i64>,
    /// Header `owner_epoch` (0 when absent), see [`crate::fence`].
    pub owner_epoch: u64,
}

impl ConsumedRecord {
    /// Whether this is a new owner's `partition.owner_changed` marker.
    pub fn is_owner_change(&self) -> bool {
        self.event_type.as_deref() == Some(crate::fence::OWNER_CHANGED)
    }

    /// Decodes the envelope with the codec its `content_type` header names.
    pub fn decode<P: DeserializeOwned>(&self) -> Result<Envelope<P>, CodecError> {
        let kind = match &self.content_type {
            Some(ct) => CodecKind::from_content_type(ct)?,
            None => CodecKind::Bincode,
        };
        kind.decode(&self.value)
    }
}

pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A read model's reaction to records. Called inside the worker's transaction; whatever it
/// writes through `conn` commits or rolls back together with the consumed offset.
#[async_trait::async_trait]
pub trait PartitionHandler: Send + Sync + 'static {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError>;

    /// Applies `records` (one partition, offset order, each not applied before) in the
    /// worker's transaction. The default applies them one by one; a handler may override it
    /// to write several records per statement, as long as the outcome is the same as
    /// applying them in order.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        for record in records {
            self.apply(conn, record).await?;
        }
        Ok(())
    }
}

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

/// How far each partition has been applied (next offset), for readiness and tests.
#[derive(Clone, Default)]
pub struct ConsumerProgress {
    partitions: Arc<Mutex<HashMap<i32, watch::Sender<i64>>>>,
    lag: Arc<LagHistogram>,
}

impl ConsumerProgress {
    fn sender(&self, partition: i32) -> watch::Sender<i64> {
        let mut map = match self.partitions.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(partition)
            .or_insert_with(|| watch::channel(-1).0)
            .clone()
    }

    /// Records that everything before `next_offset` is applied.
    pub fn publish(&self, partition: i32, next_offset: i64) {
        self.sender(partition).send_if_modified(|current| {
            if next_offset > *current {
                *current = next_offset;
                true
            } else {
                false
            }
        });
    }

    /// Every partition this consumer has worked on, with its next offset (-1 unknown).
    pub fn partitions(&self) -> Vec<(i32, i64)> {
        let map = match self.partitions.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(p, tx)| (*p, *tx.borrow())).collect()
    }

    /// Append-to-apply delays of the records applied since start.
    pub fn lag(&self) -> &LagHistogram {
        &self.lag
    }

    /// Counts `records`, just applied, in the lag histogram.
    fn record_applied(&self, records: &[ConsumedRecord]) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for record in records {
            if let Some(at) = record.timestamp_ms.filter(|t| *t > 0) {
                self.lag.record(now_ms.saturating_sub(at).max(0) as u64);
            }
        }
    }

    /// The next offset to apply, or -1 when unknown yet.
    pub fn next_offset(&self, partition: i32) -> i64 {
        *self.sender(partition).borrow()
    }

    /// Waits until `partition` has applied everything before `next_offset`.
    pub async fn wait_for(&self, partition: i32, next_offset: i64, timeout: Duration) -> bool {
        let mut rx = self.sender(partition).subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= next_offset))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
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
    /// Stops polling; workers finish their current batch.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Makes a manually assigned consumer read exactly `partitions` from now on: a
    /// partition gained starts at its offset stored in PostgreSQL; a partition lost has
    /// its worker drained and stopped, and records of it still fetched are dropped. A
    /// cluster node calls this as its leases change. No effect on a group consumer.
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
}

impl ClientContext for PoolContext {}

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

/// Starts a consumer for `spec` whose workers call `handler`.
pub async fn spawn_consumer(
    options: &JournalOptions,
    supervision: Supervision,
    spec: ConsumerSpec,
    pool: PgPool,
    handler: Arc<dyn PartitionHandler>,
) -> Result<ConsumerHandle, JournalError> {
    let workers: Workers = Arc::new(Mutex::new(HashMap::new()));
    let group_id = match &spec.assignment {
        Assignment::Group(group) => group.clone(),
        Assignment::Manual(_) => format!("{}.manual.{}", spec.name, Uuid::now_v7()),
    };
    let manual = matches!(spec.assignment, Assignment::Manual(_));
    let consumer = new_consumer(options, &spec.name, &group_id, manual, workers.clone())?;
    let progress = ConsumerProgress::default();

    match &spec.assignment {
        Assignment::Group(_) => consumer.subscribe(&[spec.topic.as_str()])?,
        Assignment::Manual(partitions) => {
            let mut list = TopicPartitionList::new();
            for &partition in partitions {
                let stored = offsets::load_next_offset(&pool, &spec.name, &spec.topic, partition)
                    .await
                    .map_err(|e| JournalError::Config(format!("loading offsets: {e}")))?;
                let start = stored.unwrap_or(0);
                progress.publish(partition, start);
                list.add_partition_offset(&spec.topic, partition, Offset::Offset(start))?;
            }
            consumer.assign(&list)?;
        }
    }

    let dead_letters = match &spec.dead_letter_topic {
        Some(topic) => Some(Arc::new(
            DeadLetterPublisher::new(options, topic.clone()).await?,
        )),
        None => None,
    };
    let initial: BTreeSet<i32> = match &spec.assignment {
        Assignment::Manual(partitions) => partitions.iter().copied().collect(),
        Assignment::Group(_) => BTreeSet::new(),
    };
    let (assignment, assignment_rx) = watch::channel(initial.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        consumer,
        spec: spec.clone(),
        pool,
        handler,
        workers,
        progress: progress.clone(),
        mailbox: options.worker_mailbox,
        max_attempts: options.worker_max_attempts,
        retry_base: Duration::from_millis(options.worker_retry_base_ms),
        supervision,
        manual,
        generations: AtomicU64::new(0),
        shutdown: shutdown_rx.clone(),
        dead_letters,
    });
    let dispatcher = Dispatcher {
        shared,
        batch_max: options.worker_batch_max,
        assigned: initial,
        assignment: assignment_rx,
        assignment_open: true,
    };
    let span = tracing::info_span!("consumer", consumer = %spec.name, topic = %spec.topic);
    tokio::spawn(dispatcher.run(shutdown_rx).instrument(span));
    Ok(ConsumerHandle {
        progress,
        shutdown,
        assignment,
        spec,
    })
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

/// What the dispatcher and every partition's supervisor task share.
struct Shared {
    consumer: SharedConsumer,
    spec: ConsumerSpec,
    pool: PgPool,
    handler: Arc<dyn PartitionHandler>,
    workers: Workers,
    progress: ConsumerProgress,
    mailbox: usize,
    max_attempts: u32,
    retry_base: Duration,
    supervision: Supervision,
    manual: bool,
    generations: AtomicU64,
    shutdown: watch::Receiver<bool>,
    dead_letters: Option<Arc<DeadLetterPublisher>>,
}

struct Dispatcher {
    shared: Arc<Shared>,
    batch_max: usize,
    /// Manual assignment: the partitions read now. Records of any other are dropped.
    assigned: BTreeSet<i32>,
    assignment: watch::Receiver<BTreeSet<i32>>,
    assignment_open: bool,
}

impl ConsumedRecord {
    /// Copies a fetched message and the payrail headers it carries.
    pub(crate) fn from_message<M: Message>(msg: &M) -> Self {
        let mut record = ConsumedRecord {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(|k| k.to_vec()),
            event_type: None,
            event_id: None,
            content_type: None,
            value: msg.payload().map(|p| p.to_vec()).unwrap_or_default(),
            timestamp_ms: msg.timestamp().to_millis(),
            owner_epoch: 0,
        };
        if let Some(headers) = msg.headers() {
            for header in headers.iter() {
                let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                    continue;
                };
                match header.key {
                    EventHeaders::EVENT_TYPE => record.event_type = Some(value.to_string()),
                    EventHeaders::EVENT_ID => record.event_id = Uuid::parse_str(value).ok(),
                    EventHeaders::CONTENT_TYPE => record.content_type = Some(value.to_string()),
                    EventHeaders::OWNER_EPOCH => record.owner_epoch = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        record
    }
}

/// Consumer poll errors, drained without waiting and logged at most once a second.
///
/// librdkafka queues a client error (e.g. `AllBrokersDown`) on every failed reconnect while
/// the broker is away. Waiting after each one (as this loop once did, 200 ms) left a
/// consumer started during an outage draining its backlog for minutes after the broker
/// returned, consuming nothing meanwhile. Only an error storm far beyond any reconnect
/// rate pauses the loop, so a persistent error cannot spin a core.
#[derive(Default)]
struct PollErrors {
    window_started: Option<std::time::Instant>,
    in_window: u32,
}

impl PollErrors {
    const WINDOW: Duration = Duration::from_secs(1);
    /// Errors per window past which the loop pauses.
    const STORM: u32 = 10_000;
    const STORM_PAUSE: Duration = Duration::from_millis(100);

    /// Counts `error`; returns how long to pause, if at all.
    fn record(&mut self, error: &rdkafka::error::KafkaError) -> Option<Duration> {
        let now = std::time::Instant::now();
        match self.window_started {
            Some(started) if now.duration_since(started) < Self::WINDOW => {
                self.in_window += 1;
            }
            _ => {
                if self.in_window > 1 {
                    warn!(
                        errors = self.in_window,
                        "consumer poll errors in the last window"
                    );
                }
                warn!(%error, "consumer poll error");
                self.window_started = Some(now);
                self.in_window = 1;
            }
        }
        (self.in_window >= Self::STORM).then_some(Self::STORM_PAUSE)
    }

    fn clear(&mut self) {
        self.window_started = None;
        self.in_window = 0;
    }
}

impl Dispatcher {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(manual = self.shared.manual, "consumer started");
        let mut poll_errors = PollErrors::default();
        loop {
            let first = tokio::select! {
                _ = shutdown.changed() => break,
                changed = self.assignment.changed(), if self.shared.manual && self.assignment_open => {
                    if changed.is_err() {
                        // Every handle is gone: keep the current assignment.
                        self.assignment_open = false;
                        continue;
                    }
                    let wanted = self.assignment.borrow_and_update().clone();
                    self.reassign(wanted).await;
                    continue;
                }
                msg = self.shared.consumer.recv() => msg,
            };
            let mut batch = Vec::new();
            match first {
                Ok(msg) => {
                    poll_errors.clear();
                    batch.push(ConsumedRecord::from_message(&msg))
                }
                Err(e) => {
                    if let Some(pause) = poll_errors.record(&e) {
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            }
            // Take whatever else is already fetched, up to the batch limit.
            while batch.len() < self.batch_max {
                match futures::FutureExt::now_or_never(self.shared.consumer.recv()) {
                    Some(Ok(msg)) => batch.push(ConsumedRecord::from_message(&msg)),
                    _ => break,
                }
            }
            let mut by_partition: HashMap<i32, Vec<ConsumedRecord>> = HashMap::new();
            for record in batch {
                by_partition
                    .entry(record.partition)
                    .or_default()
                    .push(record);
            }
            for (partition, records) in by_partition {
                if self.shared.manual && !self.assigned.contains(&partition) {
                    // Fetched before the partition was unassigned.
                    continue;
                }
                self.shared.dispatch(partition, records).await;
            }
        }
        self.shared.stop_workers();
        info!("consumer stopped");
    }
}

impl Shared {
    /// Hands `records` to the partition's worker, starting it on first use. Never waits for
    /// a restart: records of a partition whose worker is restarting or given up are dropped
    /// (the restarted worker fetches them again from its stored offset), so one failing
    /// partition cannot hold the others back.
    async fn dispatch(self: &Arc<Self>, partition: i32, records: Vec<ConsumedRecord>) {
        let running = {
            let workers = lock_workers(&self.workers);
            match workers.get(&partition).map(|slot| &slot.state) {
                Some(SlotState::Running { actor, mailbox }) => {
                    Some(Some((actor.clone(), mailbox.clone())))
                }
                Some(SlotState::Restarting | SlotState::Stopped) => Some(None),
                None => None,
            }
        };
        let (actor, mailbox) = match running {
            Some(Some(running)) => running,
            Some(None) => {
                debug!(
                    partition,
                    records = records.len(),
                    "worker not running; dropping records"
                );
                return;
            }
            None => match self.start(partition).await {
                Some(running) => running,
                None => return,
            },
        };
        // Only a dying worker closes nothing; the semaphore itself is never closed.
        let Ok(permit) = mailbox.acquire_owned().await else {
            return;
        };
        if actor.cast(WorkerMsg::Batch(records, permit)).is_err() {
            // The worker died; its supervisor task restarts it and the restarted worker
            // fetches these records again from its stored offset.
            debug!(partition, "worker gone; records dropped");
        }
    }

    /// First start of a partition's worker (a new assignment), under a supervisor task
    /// that restarts it on failure. A spawn error is a failure like any other.
    async fn start(
        self: &Arc<Self>,
        partition: i32,
    ) -> Option<(ActorRef<WorkerMsg>, Arc<Semaphore>)> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let spawned = self.spawn_worker(partition, false).await;
        let (running, join) = match spawned {
            Ok((actor, join)) => {
                let mailbox = Arc::new(Semaphore::new(self.mailbox));
                let state = SlotState::Running {
                    actor: actor.clone(),
                    mailbox: mailbox.clone(),
                };
                lock_workers(&self.workers).insert(partition, WorkerSlot { state, generation });
                (Some((actor, mailbox)), Some(join))
            }
            Err(e) => {
                warn!(partition, error = %e, "partition worker failed to start");
                lock_workers(&self.workers).insert(
                    partition,
                    WorkerSlot {
                        state: SlotState::Restarting,
                        generation,
                    },
                );
                (None, None)
            }
        };
        tokio::spawn(
            self.clone()
                .supervise(partition, generation, join)
                .in_current_span(),
        );
        running
    }

    async fn spawn_worker(
        &self,
        partition: i32,
        restarted: bool,
    ) -> Result<(ActorRef<WorkerMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
        let args = WorkerArgs {
            consumer: self.consumer.clone(),
            spec: self.spec.clone(),
            partition,
            pool: self.pool.clone(),
            handler: self.handler.clone(),
            progress: self.progress.clone(),
            max_attempts: self.max_attempts,
            retry_base: self.retry_base,
            store_kafka_offsets: !self.manual,
            stale_batches_max: self.mailbox,
            seek_on_start: restarted,
            dead_letters: self.dead_letters.clone(),
        };
        Actor::spawn(None, PartitionWorker, args).await
    }

    /// One partition's supervisor: waits for its worker to end; a worker that ended while
    /// still the partition's current one failed, and is restarted after the policy's
    /// backoff (in this task, so the dispatcher never waits), or given up on and escalated.
    async fn supervise(
        self: Arc<Self>,
        partition: i32,
        generation: u64,
        mut running: Option<tokio::task::JoinHandle<()>>,
    ) {
        let mut restarts = RestartTracker::new(self.supervision.restart);
        loop {
            if let Some(join) = running.take() {
                let _ = join.await;
                if !self.is_current(partition, generation) {
                    // Stopped on purpose (revoked, or the consumer stopped).
                    return;
                }
            }
            self.set_state(partition, generation, SlotState::Restarting);
            self.set_paused(partition, true);
            match restarts.on_failure(Instant::now()) {
                RestartDecision::RestartAfter(delay) => {
                    warn!(
                        partition,
                        ?delay,
                        "partition worker failed; restarting after backoff"
                    );
                    tokio::time::sleep(delay).await;
                }
                RestartDecision::GiveUp => {
                    self.set_state(partition, generation, SlotState::Stopped);
                    self.supervision.escalations.escalate(
                        format!("consumer {}", self.spec.name),
                        format!("partition worker {partition}"),
                        format!(
                            "more than {} restarts within {} ms; partition {partition} of {} stopped",
                            self.supervision.restart.max_restarts,
                            self.supervision.restart.window_ms,
                            self.spec.topic
                        ),
                    );
                    return;
                }
            }
            if !self.is_current(partition, generation) || *self.shutdown.borrow() {
                return;
            }
            match self.spawn_worker(partition, true).await {
                Ok((actor, join)) => {
                    let mailbox = Arc::new(Semaphore::new(self.mailbox));
                    self.set_state(partition, generation, SlotState::Running { actor, mailbox });
                    self.set_paused(partition, false);
                    info!(partition, "partition worker restarted");
                    running = Some(join);
                }
                Err(e) => warn!(partition, error = %e, "partition worker failed to restart"),
            }
        }
    }

    fn is_current(&self, partition: i32, generation: u64) -> bool {
        lock_workers(&self.workers)
            .get(&partition)
            .is_some_and(|slot| slot.generation == generation)
    }

    /// Sets the state of the partition's slot, unless another assignment took it over.
    fn set_state(&self, partition: i32, generation: u64, state: SlotState) {
        let mut workers = lock_workers(&self.workers);
        if let Some(slot) = workers.get_mut(&partition) {
            if slot.generation == generation {
                if let SlotState::Running { actor, .. } = &slot.state {
                    if !matches!(state, SlotState::Running { .. }) {
                        actor.stop(None);
                    }
                }
                slot.state = state;
            }
        }
    }

    /// Stops fetching a partition while its worker is down (so the dispatcher does not
    /// fetch and drop its backlog in a loop), and fetches again once it is back.
    fn set_paused(&self, partition: i32, paused: bool) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.spec.topic, partition);
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(e) = result {
            warn!(partition, paused, error = %e, "pausing or resuming the partition failed");
        }
    }

    /// Stops every worker when the consumer stops; their supervisor tasks then end too.
    fn stop_workers(&self) {
        let slots: Vec<WorkerSlot> = lock_workers(&self.workers)
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            if let SlotState::Running { actor, .. } = slot.state {
                actor.stop(None);
            }
        }
    }
}

/// Messages of a [`PartitionWorker`].
pub enum WorkerMsg {
    /// Records of this partition in offset order; the permit bounds the mailbox.
    Batch(Vec<ConsumedRecord>, OwnedSemaphorePermit),
    /// Replies once every earlier batch is applied.
    Drain(RpcReplyPort<()>),
}

pub struct WorkerArgs {
    consumer: SharedConsumer,
    spec: ConsumerSpec,
    partition: i32,
    pool: PgPool,
    handler: Arc<dyn PartitionHandler>,
    progress: ConsumerProgress,
    max_attempts: u32,
    retry_base: Duration,
    store_kafka_offsets: bool,
    /// Batches fetched before a seek that can still reach the worker after it (see
    /// [`GapGuard`]): the mailbox plus the one the dispatcher holds, less the one that
    /// caused the seek.
    stale_batches_max: usize,
    /// Seek to the stored offset on start: a restarted worker's records were dropped.
    seek_on_start: bool,
    dead_letters: Option<Arc<DeadLetterPublisher>>,
}

/// What to do with a batch, given the next offset to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GapVerdict {
    Apply,
    /// Drop the batch and seek back to the next offset.
    SeekBack,
    /// Drop the batch: it was fetched before the seek back.
    Drop,
}

/// A seek back that has not been answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingSeek {
    /// The offset sought to (the next offset to apply).
    to: i64,
    /// The first offset of the batch that caused the seek.
    trigger: i64,
    /// Batches dropped since the seek as fetched before it.
    stale_dropped: usize,
}

/// Never lets a batch that starts past the next offset be applied, unless the offsets in
/// between do not exist.
///
/// A batch starting past `next` either was fetched before a seek back (stale: queued in the
/// mailbox behind the batch that caused the seek, or after a restart) or the offsets in
/// between really are absent (compaction, transaction markers, retention). Batches arrive
/// in fetch order and a fetch after the seek starts at the first existing offset at or
/// after `next`, which is at most the offset that caused the seek; stale batches come after
/// that batch and start past it. So after one seek back, a batch starting in
/// `next..=trigger` proves a real gap and is applied; a later-starting one is dropped. At
/// most `stale_batches_max` batches can be stale, so one more past the trigger means the
/// log itself moved (e.g. retention removed the trigger): seek again from there.
#[derive(Debug, Default)]
struct GapGuard {
    pending: Option<PendingSeek>,
}

impl GapGuard {
    fn check(&mut self, next: i64, first: i64, stale_batches_max: usize) -> GapVerdict {
        if first <= next {
            self.pending = None;
            return GapVerdict::Apply;
        }
        match &mut self.pending {
            Some(p) if p.to == next && first <= p.trigger => {
                self.pending = None;
                GapVerdict::Apply
            }
            Some(p) if p.to == next && p.stale_dropped < stale_batches_max => {
                p.stale_dropped += 1;
                GapVerdict::Drop
            }
            _ => {
                self.pending = Some(PendingSeek {
                    to: next,
                    trigger: first,
                    stale_dropped: 0,
                });
                GapVerdict::SeekBack
            }
        }
    }

    /// The seek failed: the next batch past the gap seeks again.
    fn seek_failed(&mut self) {
        self.pending = None;
    }
}

pub struct WorkerState {
    args: WorkerArgs,
    /// Next offset to apply, from PostgreSQL; `None` before this consumer applied anything.
    next_offset: Option<i64>,
    gap: GapGuard,
    /// The highest owner epoch applied so far, stored with the offset.
    fence: EpochFence,
}

/// Applies one partition's records in order, exactly once, in PostgreSQL transactions.
pub struct PartitionWorker;

impl Actor for PartitionWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let next_offset = offsets::load_next_offset(
            &args.pool,
            &args.spec.name,
            &args.spec.topic,
            args.partition,
        )
        .await?;
        if let Some(next) = next_offset {
            args.progress.publish(args.partition, next);
        }
        let fence = EpochFence::at(
            offsets::load_owner_epoch(
                &args.pool,
                &args.spec.name,
                &args.spec.topic,
                args.partition,
            )
            .await?,
        );
        let state = WorkerState {
            args,
            next_offset,
            gap: GapGuard::default(),
            fence,
        };
        if state.args.seek_on_start {
            let to = next_offset.map_or(Offset::Beginning, Offset::Offset);
            state.seek(to).await?;
        }
        debug!(
            partition = state.args.partition,
            ?next_offset,
            "partition worker started"
        );
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Drain(reply) => {
                let _ = reply.send(());
                Ok(())
            }
            WorkerMsg::Batch(records, _permit) => {
                let span = tracing::info_span!(
                    "partition_batch",
                    consumer = %state.args.spec.name,
                    partition = state.args.partition,
                    offset = records.first().map(|r| r.offset).unwrap_or(-1),
                );
                state.apply_batch(records).instrument(span).await
            }
        }
    }
}

impl WorkerState {
    async fn apply_batch(
        &mut self,
        mut records: Vec<ConsumedRecord>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(next) = self.next_offset {
            records.retain(|r| r.offset >= next);
            if let Some(first) = records.first().map(|r| r.offset) {
                match self.gap.check(next, first, self.args.stale_batches_max) {
                    GapVerdict::Apply if first > next => {
                        warn!(
                            from = next,
                            to = first,
                            "offsets absent from the log; skipping the gap"
                        );
                    }
                    GapVerdict::Apply => {}
                    GapVerdict::Drop => {
                        debug!(first, next, "batch fetched before the seek back; dropped");
                        return Ok(());
                    }
                    GapVerdict::SeekBack => {
                        warn!(from = first, to = next, "seeking back to the stored offset");
                        if let Err(e) = self.seek(Offset::Offset(next)).await {
                            warn!(error = %e, "seek failed");
                            self.gap.seek_failed();
                        }
                        return Ok(());
                    }
                }
            }
        }
        let Some(last) = records.last().map(|r| r.offset) else {
            return Ok(());
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit(&records).await {
                Ok(fence) => {
                    self.fence = fence;
                    break;
                }
                Err(e) if attempt < self.args.max_attempts => {
                    let delay = self.args.retry_base * 2u32.saturating_pow(attempt - 1);
                    warn!(attempt, error = %e, ?delay, "batch failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    warn!(error = %e, "batch failed every attempt; applying records one by one");
                    for record in &records {
                        self.apply_alone(record).await?;
                    }
                    break;
                }
            }
        }
        self.args.progress.record_applied(&records);
        self.advance(last + 1);
        Ok(())
    }

    async fn seek(&self, offset: Offset) -> Result<(), ActorProcessingErr> {
        let consumer = self.args.consumer.clone();
        let topic = self.args.spec.topic.clone();
        let partition = self.args.partition;
        tokio::task::spawn_blocking(move || {
            consumer.seek(
                &topic,
                partition,
                offset,
                Timeout::After(Duration::from_secs(5)),
            )
        })
        .await??;
        Ok(())
    }

    fn advance(&mut self, next: i64) {
        self.next_offset = Some(next);
        self.args.progress.publish(self.args.partition, next);
        if self.args.store_kafka_offsets {
            // A hint for where to start after a rebalance; PostgreSQL stays the truth.
            let _ =
                self.args
                    .consumer
                    .store_offset(&self.args.spec.topic, self.args.partition, next);
        }
    }

    /// Applies `records` in one transaction with the consumed offset; returns the fence
    /// after them (kept by the caller only once the transaction committed).
    async fn commit(&self, records: &[ConsumedRecord]) -> Result<EpochFence, HandlerError> {
        let mut fence = self.fence;
        let admitted: Vec<&ConsumedRecord> = records
            .iter()
            .filter(|record| match fence.admit(record) {
                FenceVerdict::Apply => true,
                FenceVerdict::Marker => {
                    info!(
                        offset = record.offset,
                        owner_epoch = record.owner_epoch,
                        "partition owner changed"
                    );
                    false
                }
                FenceVerdict::Fenced => {
                    warn!(
                        offset = record.offset,
                        owner_epoch = record.owner_epoch,
                        fence = fence.highest(),
                        "record of a superseded owner ignored"
                    );
                    false
                }
            })
            .collect();
        let mut tx = self.args.pool.begin().await?;
        let ids: Vec<Uuid> = admitted.iter().filter_map(|r| r.event_id).collect();
        let mut fresh = offsets::mark_processed_batch(&mut tx, &self.args.spec.name, &ids).await?;
        let mut to_apply = Vec::with_capacity(admitted.len());
        for record in admitted {
            if let Some(event_id) = record.event_id {
                // Taken out of the set when kept, so a record delivered twice within one
                // batch is applied once too.
                if !fresh.remove(&event_id) {
                    debug!(offset = record.offset, %event_id, "already applied; skipping");
                    continue;
                }
            }
            to_apply.push(record);
        }
        if !to_apply.is_empty() {
            self.args.handler.apply_batch(&mut tx, &to_apply).await?;
        }
        if let Some(last) = records.last() {
            offsets::store_position(
                &mut tx,
                &self.args.spec.name,
                &self.args.spec.topic,
                self.args.partition,
                last.offset + 1,
                fence.highest(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(fence)
    }

    /// Applies one record with retries. When every attempt fails, publishes it to the
    /// dead-letter topic, then parks it in `journal_dead_letters` with the next offset, so
    /// the partition moves on. The topic comes first: a crash in between publishes it again
    /// (same original offset and event id) rather than never. If the topic cannot be written
    /// the worker fails and is restarted under the restart policy.
    async fn apply_alone(&mut self, record: &ConsumedRecord) -> Result<(), ActorProcessingErr> {
        let mut last_error = String::new();
        for attempt in 1..=self.args.max_attempts {
            match self.commit(std::slice::from_ref(record)).await {
                Ok(fence) => {
                    self.fence = fence;
                    return Ok(());
                }
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(self.args.retry_base * attempt).await;
                }
            }
        }
        error!(offset = record.offset, error = %last_error, "record dead-lettered");
        if let Some(dead_letters) = &self.args.dead_letters {
            dead_letters
                .publish(&self.args.spec.name, record, &last_error)
                .await?;
        }
        let mut tx = self.args.pool.begin().await?;
        offsets::dead_letter(&mut tx, &self.args.spec.name, record, &last_error).await?;
        offsets::store_next_offset(
            &mut tx,
            &self.args.spec.name,
            &self.args.spec.topic,
            self.args.partition,
            record.offset + 1,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

mod assignment;
#[cfg(test)]
mod assignment_tests;
#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod tests;
