//! Partition lanes: librdkafka gets a partition's records only while it may send them.
//!
//! librdkafka 2.12's idempotent producer sends a partition's next produce request only
//! while fewer than [`IDEMPOTENT_IN_FLIGHT`] of its *records* are in flight (it compares a
//! record count with a request limit), and it sets its broker thread's next wake-up to "now"
//! as soon as a batch is ready — before that limit is applied. Records queued behind a
//! request in flight therefore make the thread spin until the response returns: 74 % of a
//! node's CPU with three nodes on one machine (docs/DECISIONS.md, "Three nodes on one
//! machine"). A lane applies the same limit one step earlier: an append whose partition
//! already has that many records in flight waits in the lane, and when the partition drops
//! below the limit every waiting append is handed to librdkafka at once, in arrival order,
//! so they leave as one request (a group commit). librdkafka then only ever holds records
//! it may send, and its thread sleeps until the response.
//!
//! The lane never reorders one caller's records, never holds records of a caller who has
//! stopped waiting (a closed reply is skipped, not sent), and hands records only to the
//! producer that is current when they leave the lane.

use super::send::{enqueue, CurrentProducer, OutgoingRecord, Producer};
use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// librdkafka's `RD_KAFKA_IDEMP_MAX_INFLIGHT`: below this many records in flight on a
/// partition it sends another request there.
pub(crate) const IDEMPOTENT_IN_FLIGHT: usize = 5;

/// One lane per topic partition the node appends to (created on first use; a node appends
/// to at most its topics × partitions, so the map stays small).
pub(crate) struct Lanes {
    current: Arc<CurrentProducer>,
    by_topic: Mutex<HashMap<String, HashMap<i32, Arc<Lane>>>>,
}

impl Lanes {
    pub(crate) fn new(current: Arc<CurrentProducer>) -> Self {
        Self {
            current,
            by_topic: Mutex::new(HashMap::new()),
        }
    }

    /// The lane of `topic`/`partition`.
    pub(crate) fn lane(&self, topic: &str, partition: i32) -> Arc<Lane> {
        let mut by_topic = lock(&self.by_topic);
        if let Some(lane) = by_topic.get(topic).and_then(|lanes| lanes.get(&partition)) {
            return lane.clone();
        }
        let lane = Arc::new(Lane {
            current: self.current.clone(),
            state: Mutex::new(LaneState::default()),
        });
        by_topic
            .entry(topic.to_string())
            .or_default()
            .insert(partition, lane.clone());
        lane
    }

    /// Fails every append still waiting in a lane, as librdkafka fails the records it
    /// purges: called when the breaker abandons the appends in flight, so callers move to
    /// the fallback now instead of after another produce timeout.
    pub(crate) fn abandon_waiting(&self) {
        let lanes: Vec<Arc<Lane>> = lock(&self.by_topic)
            .values()
            .flat_map(|lanes| lanes.values().cloned())
            .collect();
        for lane in lanes {
            let waiting: Vec<Waiter> = lock(&lane.state).waiting.drain(..).collect();
            for waiter in waiting {
                let _ = waiter.reply.send(Admitted {
                    producer: None,
                    deliveries: Err(KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue)),
                    _ticket: Ticket::empty(&lane),
                });
            }
        }
    }
}

/// The records of one topic partition that are in librdkafka's hands, and the appends
/// waiting for room.
pub(crate) struct Lane {
    current: Arc<CurrentProducer>,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    /// Records handed to librdkafka whose appends have not finished.
    in_flight: usize,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    records: Vec<OutgoingRecord>,
    reply: oneshot::Sender<Admitted>,
}

/// Records handed to librdkafka: their deliveries (or why they could not be enqueued), the
/// producer that took them, and the ticket that holds their room in the lane.
pub(crate) struct Admitted {
    /// The producer's generation and handle, `None` when the records never reached a
    /// producer (abandoned while waiting). The handle keeps a replaced producer alive (its
    /// drop purges what it holds) until this append's deliveries are in.
    pub producer: Option<(u64, Producer)>,
    pub deliveries: Result<Vec<DeliveryFuture>, KafkaError>,
    /// Dropped when the append ends, which frees its room and may let the waiters go.
    pub _ticket: Ticket,
}

/// How an append entered its lane.
pub(crate) enum Submitted {
    Now(Admitted),
    /// Queued behind the records in flight; the receiver yields when they are handed over.
    Later(oneshot::Receiver<Admitted>),
}

impl Lane {
    /// Hands `records` (all of this lane's partition) to librdkafka now if the partition
    /// has room and nobody is waiting, else queues them behind the waiters.
    pub(crate) fn submit(self: &Arc<Self>, records: &[OutgoingRecord]) -> Submitted {
        let mut state = lock(&self.state);
        if state.in_flight < IDEMPOTENT_IN_FLIGHT && state.waiting.is_empty() {
            let admitted = self.hand_over(&mut state, records);
            return Submitted::Now(admitted);
        }
        let (reply, admitted) = oneshot::channel();
        state.waiting.push_back(Waiter {
            records: records.to_vec(),
            reply,
        });
        Submitted::Later(admitted)
    }

    /// Enqueues `records` with the current producer and counts them in flight. Called with
    /// the lane locked, so a group enters librdkafka's queue whole and in order.
    fn hand_over(self: &Arc<Self>, state: &mut LaneState, records: &[OutgoingRecord]) -> Admitted {
        let (generation, producer) = self.current.get();
        let (deliveries, error) = enqueue(&producer, records);
        state.in_flight += deliveries.len();
        let ticket = Ticket {
            lane: self.clone(),
            records: deliveries.len(),
        };
        Admitted {
            producer: Some((generation, producer)),
            deliveries: match error {
                Some(error) => Err(error),
                None => Ok(deliveries),
            },
            _ticket: ticket,
        }
    }

    /// An append with `records` in flight ended: frees their room, and if the partition is
    /// now below the limit hands every waiting append over at once. Replies are sent after
    /// the lock is released (a reply nobody receives drops its ticket, which comes back here).
    fn finish(self: &Arc<Self>, records: usize) {
        let mut replies = Vec::new();
        {
            let mut state = lock(&self.state);
            // Tickets are only made by `hand_over`, which counted their records.
            debug_assert!(state.in_flight >= records, "lane in flight below a ticket");
            state.in_flight = state.in_flight.saturating_sub(records);
            if state.in_flight < IDEMPOTENT_IN_FLIGHT {
                let waiting: Vec<Waiter> = state.waiting.drain(..).collect();
                for waiter in waiting {
                    if waiter.reply.is_closed() {
                        continue; // its caller gave up: its records never leave the lane
                    }
                    let admitted = self.hand_over(&mut state, &waiter.records);
                    replies.push((waiter.reply, admitted));
                }
            }
        }
        for (reply, admitted) in replies {
            let _ = reply.send(admitted);
        }
    }
}

/// Room of one append's records in its lane, freed on drop (however the append ends).
pub(crate) struct Ticket {
    lane: Arc<Lane>,
    records: usize,
}

impl Ticket {
    fn empty(lane: &Arc<Lane>) -> Self {
        Self {
            lane: lane.clone(),
            records: 0,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.records > 0 {
            self.lane.finish(self.records);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
