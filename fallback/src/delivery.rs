//! The sending side of fallback delivery: while partitions are in fallback, their spooled
//! events are POSTed to `POST /internal/v1/events` of every node that runs pools
//! (`fallback.targets`, default this node), so read models stay live during an outage.
//! Each target's position is kept per partition and fallback episode; a target answers
//! how far its pools have taken the batch, and what they held back is sent again.

use super::sink::{DeliveredBatch, DeliveredEvent, SinkOutcome, MAX_BATCH_VALUE_HEX_BYTES};
use crate::NodeJournal;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Header carrying `cluster.secret` on internal requests.
pub const CLUSTER_SECRET_HEADER: &str = "x-payrail-cluster-secret";

/// `[fallback]` in config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryOptions {
    /// Base URLs of the nodes running pools (e.g. `http://10.0.0.7:8080`); empty: this
    /// node only.
    pub targets: Vec<String>,
    /// How often spooled events are delivered (ms).
    pub delivery_interval_ms: u64,
    /// Events per delivery request at most.
    pub delivery_batch: u32,
    /// Upper bound for one delivery request (ms).
    pub delivery_timeout_ms: u64,
    /// Delivery requests (one per target, partition and pool) in flight at once.
    pub delivery_concurrency: usize,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            delivery_interval_ms: 100,
            delivery_batch: 500,
            delivery_timeout_ms: 5_000,
            delivery_concurrency: 8,
        }
    }
}

impl DeliveryOptions {
    pub fn validate(&self) -> Result<(), String> {
        for target in &self.targets {
            if !(target.starts_with("http://") || target.starts_with("https://")) {
                return Err(format!("fallback.targets: {target} is not an http(s) URL"));
            }
        }
        if !(10..=60_000).contains(&self.delivery_interval_ms) {
            return Err("fallback.delivery_interval_ms: allowed 10..=60000".into());
        }
        if !(1..=super::sink::MAX_EVENTS_PER_BATCH as u32).contains(&self.delivery_batch) {
            return Err(format!(
                "fallback.delivery_batch: allowed 1..={}",
                super::sink::MAX_EVENTS_PER_BATCH
            ));
        }
        if !(1..=64).contains(&self.delivery_concurrency) {
            return Err("fallback.delivery_concurrency: allowed 1..=64".into());
        }
        if !(100..=60_000).contains(&self.delivery_timeout_ms) {
            return Err("fallback.delivery_timeout_ms: allowed 100..=60000".into());
        }
        Ok(())
    }
}

/// Starts delivery to `targets` (base URLs) with `secret`, under the node's restart policy.
pub fn spawn_delivery(
    node: Arc<NodeJournal>,
    targets: Vec<String>,
    secret: String,
    options: DeliveryOptions,
) -> JoinHandle<()> {
    let restart = node.restart;
    let escalations = node.escalations.clone();
    payrail_supervisor::supervise_task("fallback_delivery", restart, escalations, move || {
        deliver_forever(
            node.clone(),
            targets.clone(),
            secret.clone(),
            options.clone(),
        )
    })
}

/// (target, pool, partition, episode) → the last spool sequence that pool has taken.
type Positions = HashMap<(usize, String, i32, i64), i64>;

async fn deliver_forever(
    node: Arc<NodeJournal>,
    targets: Vec<String>,
    secret: String,
    options: DeliveryOptions,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(options.delivery_timeout_ms))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            warn!(%error, "fallback delivery cannot build its HTTP client");
            return;
        }
    };
    let mut positions = Positions::new();
    // Each target's pools, learnt from its first answer.
    let mut pools_of: HashMap<usize, Vec<String>> = HashMap::new();
    // Sends in flight, one per stream at most. A stream is sent again on the first tick
    // after its answer, independently of the others: a slow pool (one that spends its whole
    // apply budget per batch) delays only itself, not the read models of the other pools.
    let mut in_flight = FuturesUnordered::new();
    let mut busy: HashSet<Stream> = HashSet::new();
    // When each stream was last sent; never-sent streams (None) sort first.
    let mut last_sent: HashMap<Stream, std::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(options.delivery_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some((stream, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                busy.remove(&stream);
                let Some(outcome): Option<SinkOutcome> = outcome else { continue };
                let Stream { target, partition, episode, .. } = stream;
                pools_of
                    .entry(target)
                    .or_insert_with(|| outcome.pools.keys().cloned().collect());
                for (pool, through) in outcome.pools {
                    let slot = positions.entry((target, pool, partition, episode)).or_insert(0);
                    *slot = (*slot).max(through);
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        if node.fallback.active_partitions().is_empty() {
            positions.clear();
            last_sent.clear();
            continue;
        }
        let episodes = match node.fallback.spool().episodes().await {
            Ok(episodes) => episodes,
            Err(error) => {
                warn!(%error, "reading the fallback episodes failed");
                continue;
            }
        };
        positions.retain(|(_, _, partition, episode), _| {
            episodes
                .iter()
                .any(|(p, e, _, _)| p == partition && e == episode)
        });
        last_sent.retain(|stream, _| {
            episodes
                .iter()
                .any(|(p, e, _, _)| *p == stream.partition && *e == stream.episode)
        });
        // Every (partition, target, pool) not in flight, up to `delivery_concurrency` sends,
        // the longest-waiting first (without that, streams finishing fast would take every
        // slot again each tick and starve the rest).
        let mut ready = Vec::new();
        for (partition, episode, high, copied_from) in episodes {
            let Some(high) = high else { continue };
            // The partitions this node owns now (a cluster node's change with its leases).
            if !node.ownership.owns(partition) {
                continue;
            }
            for (index, target) in targets.iter().enumerate() {
                let sender = Sender {
                    node: node.clone(),
                    client: client.clone(),
                    target: target.clone(),
                    secret: secret.clone(),
                    partition,
                    high_watermark_at_start: high,
                    copied_from,
                    batch: options.delivery_batch,
                };
                // First contact: an empty batch, which names the target's pools.
                let streams: Vec<(Option<String>, i64)> = match pools_of.get(&index) {
                    None => vec![(None, -1)],
                    Some(pools) => pools
                        .iter()
                        .map(|pool| {
                            let position = positions
                                .get(&(index, pool.clone(), partition, episode))
                                .copied()
                                .unwrap_or(0);
                            (Some(pool.clone()), position)
                        })
                        .collect(),
                };
                for (pool, position) in streams {
                    let stream = Stream {
                        target: index,
                        pool: pool.clone(),
                        partition,
                        episode,
                    };
                    if !busy.contains(&stream) {
                        ready.push((stream, sender.clone(), pool, position));
                    }
                }
            }
        }
        ready.sort_by_key(|(stream, ..)| last_sent.get(stream).copied());
        for (stream, sender, pool, position) in fair_order(ready, &busy) {
            if busy.len() >= options.delivery_concurrency {
                break;
            }
            busy.insert(stream.clone());
            last_sent.insert(stream.clone(), std::time::Instant::now());
            in_flight.push(async move { (stream, sender.deliver(pool, position).await) });
        }
    }
}

/// `ready` (longest-waiting first) reordered so that the free slots go round the pools:
/// each next pick is from the pool with the fewest sends in flight, the longest-waiting
/// first among equals. Without it a slow pool (one spending its whole apply budget per
/// batch on every partition) takes every slot it frees again at once — its streams are
/// always the longest-waiting — and the other pools' read models wait behind it (measured:
/// analytics 3.6 s behind during an outage with the ledger slowed). Work-conserving: a
/// pool alone with work still gets every slot.
fn fair_order<T>(
    ready: Vec<(Stream, T, Option<String>, i64)>,
    busy: &HashSet<Stream>,
) -> Vec<(Stream, T, Option<String>, i64)> {
    let mut in_flight: HashMap<Option<String>, usize> = HashMap::new();
    for stream in busy {
        *in_flight.entry(stream.pool.clone()).or_insert(0) += 1;
    }
    // Per pool, its streams in the input order, each with its rank in that order.
    let mut queues: Vec<(Option<String>, VecDeque<(usize, _)>)> = Vec::new();
    for (rank, entry) in ready.into_iter().enumerate() {
        match queues.iter_mut().find(|(pool, _)| *pool == entry.0.pool) {
            Some((_, queue)) => queue.push_back((rank, entry)),
            None => queues.push((entry.0.pool.clone(), VecDeque::from([(rank, entry)]))),
        }
    }
    let mut ordered = Vec::new();
    // The pool with the fewest in flight; among equals, the one whose next stream has
    // waited longest.
    while let Some((pool, queue)) = queues
        .iter_mut()
        .filter_map(|(pool, queue)| {
            let rank = queue.front()?.0;
            Some((
                (in_flight.get(pool).copied().unwrap_or(0), rank),
                pool,
                queue,
            ))
        })
        .min_by_key(|(key, ..)| *key)
        .map(|(_, pool, queue)| (pool, queue))
    {
        let Some((_, entry)) = queue.pop_front() else {
            break;
        };
        *in_flight.entry(pool.clone()).or_insert(0) += 1;
        ordered.push(entry);
    }
    ordered
}

/// One delivery stream: a target's pool (or, before its pools are known, the target) for
/// one partition's fallback episode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Stream {
    target: usize,
    pool: Option<String>,
    partition: i32,
    episode: i64,
}

/// One target and partition, for one round of delivery.
#[derive(Clone)]
struct Sender {
    node: Arc<NodeJournal>,
    client: reqwest::Client,
    target: String,
    secret: String,
    partition: i32,
    high_watermark_at_start: i64,
    copied_from: Option<i64>,
    /// Events per request at most.
    batch: u32,
}

impl Sender {
    /// Sends the partition's events after `position` to the target (for `pool`, or all its
    /// pools), one batch; the target's answer, if any. `position` -1 sends an empty batch
    /// (to learn the target's pools).
    async fn deliver(self, pool: Option<String>, position: i64) -> Option<SinkOutcome> {
        let partition = self.partition;
        let target = self.target.as_str();
        let spool = self.node.fallback.spool();
        let rows = if position < 0 {
            Vec::new()
        } else {
            match spool
                .after(partition, position, i64::from(self.batch))
                .await
            {
                Ok(rows) if rows.is_empty() => return None,
                Ok(rows) => rows,
                Err(error) => {
                    warn!(partition, %error, "reading the spool for delivery failed");
                    return None;
                }
            }
        };
        // Read after the rows: whatever the replay removed before them is below this end,
        // so a pool must have applied the journal up to it before it takes them.
        let replayed_end = if rows.is_empty() {
            None
        } else {
            match spool.replayed_end(partition).await {
                Ok(end) => end,
                Err(error) => {
                    warn!(partition, %error, "reading the replay position failed");
                    return None;
                }
            }
        };
        let high_watermark = self.high_watermark_at_start.max(replayed_end.unwrap_or(0));
        let mut value_bytes = 0;
        let events: Vec<DeliveredEvent> = rows
            .into_iter()
            .filter_map(DeliveredEvent::from_spooled)
            .take_while(|event| {
                let first = value_bytes == 0;
                value_bytes += event.value_hex.len();
                first || value_bytes <= MAX_BATCH_VALUE_HEX_BYTES
            })
            .collect();
        let batch = DeliveredBatch {
            topic: spool.topic().to_string(),
            partition,
            high_watermark_at_start: high_watermark,
            copied_from: self.copied_from,
            pool,
            events,
        };
        let url = format!("{}/internal/v1/events", target.trim_end_matches('/'));
        let response = self
            .client
            .post(&url)
            .header(CLUSTER_SECRET_HEADER, &self.secret)
            .json(&batch)
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => {
                match response.json::<SinkOutcome>().await {
                    Ok(outcome) => {
                        debug!(partition, target, through = outcome.applied_through, held_back = ?outcome.held_back, "fallback events delivered");
                        Some(outcome)
                    }
                    Err(error) => {
                        warn!(partition, target, %error, "unreadable delivery answer");
                        None
                    }
                }
            }
            Ok(response) => {
                warn!(partition, target, status = %response.status(), "fallback delivery refused");
                None
            }
            Err(error) => {
                warn!(partition, target, %error, "fallback delivery failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(pool: &str, partition: i32) -> Stream {
        Stream {
            target: 0,
            pool: Some(pool.to_string()),
            partition,
            episode: 1,
        }
    }

    fn picks(ready: &[Stream], busy: &HashSet<Stream>, slots: usize) -> Vec<Stream> {
        let ready = ready
            .iter()
            .map(|s| (s.clone(), (), s.pool.clone(), 0))
            .collect();
        fair_order(ready, busy)
            .into_iter()
            .take(slots)
            .map(|(s, ..)| s)
            .collect()
    }

    #[test]
    fn a_slow_pool_does_not_take_the_slots_it_frees_from_the_other_pools() {
        // The ledger holds 6 of 8 slots; two of its streams came back and, having waited
        // longest, sort first. The 2 free slots go to the pools with nothing in flight.
        let busy: HashSet<Stream> = (0..6).map(|p| stream("ledger", p)).collect();
        let mut ready: Vec<Stream> = (6..8).map(|p| stream("ledger", p)).collect();
        ready.extend((0..8).map(|p| stream("analytics", p)));
        ready.extend((0..8).map(|p| stream("settlement", p)));
        let chosen = picks(&ready, &busy, 2);
        assert_eq!(
            chosen,
            vec![stream("analytics", 0), stream("settlement", 0)]
        );
    }

    #[test]
    fn a_pool_alone_with_work_gets_every_slot() {
        let ready: Vec<Stream> = (0..8).map(|p| stream("ledger", p)).collect();
        assert_eq!(picks(&ready, &HashSet::new(), 8), ready);
    }

    #[test]
    fn among_pools_with_as_many_in_flight_the_longest_waiting_stream_goes_first() {
        let ready = vec![
            stream("analytics", 3),
            stream("ledger", 1),
            stream("analytics", 4),
            stream("ledger", 2),
        ];
        assert_eq!(
            picks(&ready, &HashSet::new(), 4),
            vec![
                stream("analytics", 3),
                stream("ledger", 1),
                stream("analytics", 4),
                stream("ledger", 2)
            ]
        );
    }
}
