//! [`PartitionWorker`]: applies one partition's batches, each in one PostgreSQL
//! transaction with its event ids and next offset; guards against gaps; fences epochs.

use super::*;

/// Messages of a [`PartitionWorker`].
pub enum WorkerMsg {
    /// Records of this partition in offset order; the permit bounds the mailbox.
    Batch(Vec<ConsumedRecord>, OwnedSemaphorePermit),
    /// Replies once every earlier batch is applied.
    Drain(RpcReplyPort<()>),
}

pub struct WorkerArgs {
    pub(crate) consumer: SharedConsumer,
    pub(crate) spec: ConsumerSpec,
    pub(crate) partition: i32,
    pub(crate) pool: PgPool,
    pub(crate) handler: Arc<dyn PartitionHandler>,
    pub(crate) progress: ConsumerProgress,
    pub(crate) max_attempts: u32,
    pub(crate) retry_base: Duration,
    pub(crate) store_kafka_offsets: bool,
    /// Batches fetched before a seek that can still reach the worker after it (see
    /// [`GapGuard`]): the mailbox plus the one the dispatcher holds, less the one that
    /// caused the seek.
    pub(crate) stale_batches_max: usize,
    /// Seek to the stored offset on start: a restarted worker's records were dropped.
    pub(crate) seek_on_start: bool,
    pub(crate) dead_letters: Option<Arc<DeadLetterPublisher>>,
}

/// What to do with a batch, given the next offset to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GapVerdict {
    Apply,
    /// Drop the batch and seek back to the next offset.
    SeekBack,
    /// Drop the batch: it was fetched before the seek back.
    Drop,
}

/// A seek back that has not been answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingSeek {
    /// The offset sought to (the next offset to apply).
    pub(crate) to: i64,
    /// The first offset of the batch that caused the seek.
    pub(crate) trigger: i64,
    /// Batches dropped since the seek as fetched before it.
    pub(crate) stale_dropped: usize,
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
pub(crate) struct GapGuard {
    pub(crate) pending: Option<PendingSeek>,
}

impl GapGuard {
    pub(crate) fn check(&mut self, next: i64, first: i64, stale_batches_max: usize) -> GapVerdict {
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
    pub(crate) fn seek_failed(&mut self) {
        self.pending = None;
    }
}

pub struct WorkerState {
    pub(crate) args: WorkerArgs,
    /// Next offset to apply, from PostgreSQL; `None` before this consumer applied anything.
    pub(crate) next_offset: Option<i64>,
    pub(crate) gap: GapGuard,
    /// The highest owner epoch applied so far, stored with the offset.
    pub(crate) fence: EpochFence,
    /// `payrail_consumer_apply_delay_seconds` of this consumer and partition, made once.
    pub(crate) apply_delay: metrics::Histogram,
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
        let apply_delay = metrics::histogram!(
            "payrail_consumer_apply_delay_seconds",
            "consumer" => args.spec.name.clone(),
            "partition" => args.partition.to_string()
        );
        let state = WorkerState {
            args,
            next_offset,
            gap: GapGuard::default(),
            fence,
            apply_delay,
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
    pub(crate) async fn apply_batch(
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
        self.args
            .progress
            .record_applied(&records, &self.apply_delay);
        self.advance(last + 1);
        Ok(())
    }

    pub(crate) async fn seek(&self, offset: Offset) -> Result<(), ActorProcessingErr> {
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

    pub(crate) fn advance(&mut self, next: i64) {
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
    pub(crate) async fn commit(
        &self,
        records: &[ConsumedRecord],
    ) -> Result<EpochFence, HandlerError> {
        let mut fence = self.fence;
        let mut tx = self.args.pool.begin().await?;
        // Judged inside the transaction, under the voided ranges' shared lock: a takeover
        // through the spool either sees this batch's position or this batch sees its range.
        let voided =
            offsets::load_void_fences(&mut tx, &self.args.spec.topic, self.args.partition).await?;
        let admitted: Vec<&ConsumedRecord> = records
            .iter()
            .filter(|record| match fence.admit_unless_voided(record, &voided) {
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
    pub(crate) async fn apply_alone(
        &mut self,
        record: &ConsumedRecord,
    ) -> Result<(), ActorProcessingErr> {
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
        metrics::counter!("payrail_dead_letters_total", "consumer" => self.args.spec.name.clone())
            .increment(1);
        Ok(())
    }
}
