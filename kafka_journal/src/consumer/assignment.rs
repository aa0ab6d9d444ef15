//! Changing a manually assigned consumer's partitions while it runs (a cluster node's
//! leases come and go).

use super::{lock_workers, offsets, Dispatcher, SlotState, WorkerMsg};
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::Duration;
use tracing::{info, warn};

/// How long a lost partition's worker may take to finish the batches it holds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Dispatcher {
    /// Moves the consumer to `wanted`: lost partitions first (their workers drained and
    /// stopped, so no worker of this consumer applies them any more), then gained ones
    /// from the offsets stored in PostgreSQL, where the previous reader left them.
    pub(super) async fn reassign(&mut self, wanted: BTreeSet<i32>) {
        let Some(topic) = self.sinks.first().map(|sink| sink.spec.topic.clone()) else {
            return;
        };
        let lost: Vec<i32> = self.assigned.difference(&wanted).copied().collect();
        let gained: Vec<i32> = wanted.difference(&self.assigned).copied().collect();
        if !lost.is_empty() {
            let mut list = TopicPartitionList::new();
            for &partition in &lost {
                list.add_partition(&topic, partition);
                self.assigned.remove(&partition);
            }
            if let Err(error) = self.consumer.incremental_unassign(&list) {
                warn!(?lost, %error, "unassigning partitions failed");
            }
            let actors: Vec<_> = self
                .sinks
                .iter()
                .flat_map(|sink| {
                    let mut workers = lock_workers(&sink.workers);
                    lost.iter()
                        .filter_map(|p| workers.remove(p))
                        .filter_map(|slot| match slot.state {
                            SlotState::Running { actor, .. } => Some(actor),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            for actor in actors {
                let _ = actor.call(WorkerMsg::Drain, Some(DRAIN_TIMEOUT)).await;
                actor.stop(None);
            }
            info!(?lost, "partitions unassigned");
        }
        if gained.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        let mut added = Vec::new();
        'gained: for &partition in &gained {
            // Every sink's stored offset; the fetch starts at the lowest.
            let mut starts = Vec::with_capacity(self.sinks.len());
            for sink in &self.sinks {
                let stored =
                    offsets::load_next_offset(&sink.pool, &sink.spec.name, &topic, partition).await;
                match stored {
                    Ok(stored) => starts.push(stored.unwrap_or(0)),
                    Err(error) => {
                        // Not assigned now; the next change of the assignment tries again.
                        warn!(partition, consumer = %sink.spec.name, %error, "loading the stored offset failed; partition not assigned");
                        continue 'gained;
                    }
                }
            }
            for (sink, start) in self.sinks.iter().zip(&starts) {
                sink.progress.publish(partition, *start);
            }
            let start = starts.iter().copied().min().unwrap_or(0);
            if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(start))
            {
                warn!(partition, %error, "partition not assigned");
                continue;
            }
            added.push(partition);
        }
        match self.consumer.incremental_assign(&list) {
            Ok(()) => {
                self.assigned.extend(added.iter().copied());
                info!(gained = ?added, "partitions assigned");
            }
            Err(error) => warn!(gained = ?added, %error, "assigning partitions failed"),
        }
    }
}
