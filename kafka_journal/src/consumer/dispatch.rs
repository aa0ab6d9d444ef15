//! The dispatcher task (polls, groups by partition, hands batches to workers) and the
//! per-partition worker supervision it shares with them.

use super::*;

/// What the dispatcher and every partition's supervisor task share.
pub(crate) struct Shared {
    pub(crate) consumer: SharedConsumer,
    pub(crate) spec: ConsumerSpec,
    pub(crate) pool: PgPool,
    pub(crate) handler: Arc<dyn PartitionHandler>,
    pub(crate) workers: Workers,
    pub(crate) progress: ConsumerProgress,
    pub(crate) mailbox: usize,
    pub(crate) max_attempts: u32,
    pub(crate) retry_base: Duration,
    pub(crate) supervision: Supervision,
    pub(crate) manual: bool,
    /// Other consumers read from the same fetch, so a partition is never paused for this
    /// one's sake (see [`Shared::set_paused`]).
    pub(crate) shares_fetch: bool,
    pub(crate) generations: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) dead_letters: Option<Arc<DeadLetterPublisher>>,
}

pub(crate) struct Dispatcher {
    pub(crate) consumer: SharedConsumer,
    pub(crate) manual: bool,
    /// The consumers this fetch feeds (one, unless the fetch is shared).
    pub(crate) sinks: Vec<Arc<Shared>>,
    pub(crate) batch_max: usize,
    /// Manual assignment: the partitions read now. Records of any other are dropped.
    pub(crate) assigned: BTreeSet<i32>,
    pub(crate) assignment: watch::Receiver<BTreeSet<i32>>,
    pub(crate) assignment_open: bool,
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

/// Consumer poll errors, drained without waiting, logged once per run of failures.
///
/// librdkafka queues a client error (e.g. `AllBrokersDown`) on every failed reconnect while
/// the broker is away. Waiting after each one (as this loop once did, 200 ms) left a
/// consumer started during an outage draining its backlog for minutes after the broker
/// returned, consuming nothing meanwhile. Only an error storm far beyond any reconnect
/// rate pauses the loop, so a persistent error cannot spin a core. The log gets one line
/// when polls start failing and one when they succeed again, with the count: an outage is
/// two lines per consumer, not one a second (issue 22).
#[derive(Default)]
pub(crate) struct PollErrors {
    pub(crate) window_started: Option<std::time::Instant>,
    pub(crate) in_window: u32,
    /// Errors since the last successful poll.
    pub(crate) in_run: u64,
}

impl PollErrors {
    const WINDOW: Duration = Duration::from_secs(1);
    /// Errors per window past which the loop pauses.
    const STORM: u32 = 10_000;
    const STORM_PAUSE: Duration = Duration::from_millis(100);

    /// Counts `error`; returns how long to pause, if at all.
    pub(crate) fn record(&mut self, error: &rdkafka::error::KafkaError) -> Option<Duration> {
        let now = std::time::Instant::now();
        metrics::counter!("payrail_journal_consumer_poll_errors_total").increment(1);
        if self.in_run == 0 {
            warn!(%error, "consumer polls failing (logged again when they succeed)");
        } else {
            debug!(%error, "consumer poll error");
        }
        self.in_run += 1;
        match self.window_started {
            Some(started) if now.duration_since(started) < Self::WINDOW => {
                self.in_window += 1;
            }
            _ => {
                self.window_started = Some(now);
                self.in_window = 1;
            }
        }
        (self.in_window >= Self::STORM).then_some(Self::STORM_PAUSE)
    }

    /// A poll succeeded.
    pub(crate) fn clear(&mut self) {
        if self.in_run > 0 {
            info!(errors = self.in_run, "consumer polls succeed again");
        }
        self.window_started = None;
        self.in_window = 0;
        self.in_run = 0;
    }
}

impl Dispatcher {
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(
            manual = self.manual,
            sinks = self.sinks.len(),
            "consumer started"
        );
        let mut poll_errors = PollErrors::default();
        loop {
            let first = tokio::select! {
                _ = shutdown.changed() => break,
                changed = self.assignment.changed(), if self.manual && self.assignment_open => {
                    if changed.is_err() {
                        // Every handle is gone: keep the current assignment.
                        self.assignment_open = false;
                        continue;
                    }
                    let wanted = self.assignment.borrow_and_update().clone();
                    self.reassign(wanted).await;
                    continue;
                }
                msg = self.consumer.recv() => msg,
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
                match futures::FutureExt::now_or_never(self.consumer.recv()) {
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
                if self.manual && !self.assigned.contains(&partition) {
                    // Fetched before the partition was unassigned.
                    continue;
                }
                self.dispatch(partition, records).await;
            }
        }
        for sink in &self.sinks {
            sink.stop_workers();
        }
        info!("consumer stopped");
    }
}

impl Dispatcher {
    /// Hands one partition's `records` to every sink that has not applied all of them yet
    /// (a shared fetch rewound by one sink's seek brings the others records they applied).
    async fn dispatch(&self, partition: i32, records: Vec<ConsumedRecord>) {
        let Some(last) = records.last().map(|r| r.offset) else {
            return;
        };
        let wanting: Vec<&Arc<Shared>> = self
            .sinks
            .iter()
            .filter(|sink| last >= sink.progress.next_offset(partition))
            .collect();
        let Some((final_sink, others)) = wanting.split_last() else {
            return;
        };
        for sink in others {
            sink.dispatch(partition, records.clone()).await;
        }
        final_sink.dispatch(partition, records).await;
    }
}

impl Shared {
    /// Hands `records` to the partition's worker, starting it on first use. Never waits for
    /// a restart: records of a partition whose worker is restarting or given up are dropped
    /// (the restarted worker fetches them again from its stored offset), so one failing
    /// partition cannot hold the others back.
    pub(crate) async fn dispatch(self: &Arc<Self>, partition: i32, records: Vec<ConsumedRecord>) {
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
    pub(crate) async fn start(
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

    pub(crate) async fn spawn_worker(
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
    pub(crate) async fn supervise(
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
            let decision = restarts.on_failure(Instant::now());
            payrail_supervisor::telemetry::record_decision(
                &format!("consumer:{}", self.spec.name),
                &decision,
            );
            match decision {
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

    pub(crate) fn is_current(&self, partition: i32, generation: u64) -> bool {
        lock_workers(&self.workers)
            .get(&partition)
            .is_some_and(|slot| slot.generation == generation)
    }

    /// Sets the state of the partition's slot, unless another assignment took it over.
    pub(crate) fn set_state(&self, partition: i32, generation: u64, state: SlotState) {
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
    /// A shared fetch is never paused for one sink: the others still read the partition,
    /// and the restarted worker seeks back to its stored offset anyway.
    pub(crate) fn set_paused(&self, partition: i32, paused: bool) {
        if self.shares_fetch {
            return;
        }
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
    pub(crate) fn stop_workers(&self) {
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
