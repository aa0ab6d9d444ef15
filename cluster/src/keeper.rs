//! `LeaseKeeper`: the task that heartbeats, renews, takes a fair share of the partitions
//! and hands extras over gracefully.

use crate::error::LeaseError;
use crate::handle::{Held, Leases, Phase, Releasing, Shared};
use crate::options::LeaseOptions;
use crate::share::{extras, fair_share};
use crate::store::LeaseStore;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::time::Instant as TokioInstant;
use tracing::{debug, info, warn, Instrument};

/// Keeps this node's partition leases; see the crate docs. Build it, take its `leases()`
/// handle, then `spawn()` it (or await `run()`).
#[derive(Debug)]
pub struct LeaseKeeper {
    pub(crate) options: LeaseOptions,
    pub(crate) store: LeaseStore,
    pub(crate) shared: Arc<Shared>,
}

/// Marks the keeper gone if its future is dropped before finishing (abort, panic): nothing
/// renews the leases any more, so `valid()` turns false at once.
struct PhaseGuard<'a>(&'a Shared);

impl Drop for PhaseGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.stopping = true;
        self.0.publish(&state);
        drop(state);
        self.0.phase.send_if_modified(|p| {
            let dropped = *p != Phase::Stopped;
            if dropped {
                *p = Phase::Dropped;
            }
            dropped
        });
    }
}

impl LeaseKeeper {
    /// Checks `options`; `pool` is this node's PostgreSQL pool (migrated).
    pub fn new(pool: PgPool, options: LeaseOptions) -> Result<Self, LeaseError> {
        options.validate()?;
        let shared = Shared::new(
            options.node_id.clone(),
            options.valid_for(),
            options.shutdown_timeout() + options.query_timeout(),
        );
        Ok(Self {
            store: LeaseStore::new(pool, options.query_timeout()),
            options,
            shared: Arc::new(shared),
        })
    }

    /// The node's handle (clone it freely).
    pub fn leases(&self) -> Leases {
        Leases {
            shared: self.shared.clone(),
        }
    }

    /// The SQL side, e.g. for an admin view of the lease table.
    pub fn store(&self) -> &LeaseStore {
        &self.store
    }

    /// Runs the keeper on the tokio runtime until `Leases::shutdown()`.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Runs until `Leases::shutdown()` finished (or its deadline passed).
    pub async fn run(self) {
        let span = tracing::info_span!("lease_keeper", node_id = %self.options.node_id);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(&self) {
        let _guard = PhaseGuard(&self.shared);
        self.shared.phase.send_replace(Phase::Running);
        if let Err(e) = self.store.prune_nodes(self.options.node_retention_ms).await {
            warn!(error = %e, "could not prune old cluster nodes");
        }
        let interval = self.options.renew_interval();
        let mut next_round = TokioInstant::now();
        let mut stop_deadline: Option<TokioInstant> = None;
        loop {
            let now = TokioInstant::now();
            let stopping = self.shared.lock().stopping;
            if stopping && stop_deadline.is_none() {
                stop_deadline = Some(now + self.options.shutdown_timeout());
                self.begin_stop().await;
            }
            if now >= next_round {
                next_round = now + interval;
                self.round(stopping, now + interval / 2).await;
            }
            self.process_releases(stop_deadline).await;
            if let Some(deadline) = stop_deadline {
                let empty = self.shared.lock().held.is_empty();
                if empty || TokioInstant::now() >= deadline {
                    if !empty {
                        warn!("shutdown deadline passed; the remaining leases will expire");
                    }
                    info!("lease keeper stopped");
                    self.shared.phase.send_replace(Phase::Stopped);
                    return;
                }
            }
            let wake_at = self.next_wake(next_round, stop_deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.shared.wake.notified() => {}
            }
        }
    }

    /// One round: renew, then (unless stopping) heartbeat and rebalance. Past `budget`
    /// (half a renew interval after the round began) no further statement starts, so a
    /// round lasts less than a renew interval and the next renewal is never held up long.
    async fn round(&self, stopping: bool, budget: TokioInstant) {
        self.renew().await;
        let spent = || TokioInstant::now() >= budget;
        if stopping || spent() {
            return;
        }
        let o = &self.options;
        if let Err(e) = self.store.heartbeat(&o.node_id, &o.advertise_url).await {
            warn!(error = %e, "heartbeat failed; not taking partitions this round");
            return;
        }
        if spent() {
            return;
        }
        match self.store.live_nodes(o.lease_ms).await {
            Ok(nodes) if !spent() => self.rebalance(nodes.len(), budget).await,
            Ok(_) => debug!("round budget spent; rebalancing next round"),
            Err(e) => warn!(error = %e, "could not count live nodes"),
        }
    }

    /// Renews every held lease (those being handed over too); forgets the ones the table
    /// no longer gives us, and the ones older than a lease on this node's clock.
    async fn renew(&self) {
        let held: Vec<(i32, u64)> = {
            let state = self.shared.lock();
            state.held.iter().map(|(p, h)| (*p, h.epoch)).collect()
        };
        let sent = Instant::now();
        let outcome = self
            .store
            .renew(&self.options.node_id, &held, self.options.lease_ms)
            .await;
        let mut state = self.shared.lock();
        match outcome {
            Ok(renewed) => {
                let renewed: BTreeSet<i32> = renewed.into_iter().collect();
                for (partition, epoch) in held {
                    if renewed.contains(&partition) {
                        if let Some(h) = state.held.get_mut(&partition) {
                            h.renewed_from = sent;
                        }
                    } else if state.held.remove(&partition).is_some() {
                        warn!(partition, epoch, "lease lost: released or taken over");
                    }
                }
            }
            Err(e) => warn!(error = %e, "renew failed; leases age out on this node's clock"),
        }
        let lease = self.options.lease();
        let now = Instant::now();
        state.held.retain(|partition, h| {
            let alive = now.duration_since(h.renewed_from) < lease;
            if !alive {
                warn!(
                    partition,
                    epoch = h.epoch,
                    "lease lost: expired on this node's clock"
                );
            }
            alive
        });
        self.shared.publish(&state);
    }

    /// Hands extras over when above the fair share, takes free partitions when below.
    async fn rebalance(&self, live_nodes: usize, acquire_until: TokioInstant) {
        let share = fair_share(self.options.partitions, live_nodes);
        let active: Vec<i32> = {
            let state = self.shared.lock();
            state
                .held
                .iter()
                .filter(|(_, h)| h.releasing.is_none())
                .map(|(p, _)| *p)
                .collect()
        };
        if active.len() > share {
            let mut state = self.shared.lock();
            let since = Instant::now();
            for partition in extras(&active, share) {
                if let Some(h) = state.held.get_mut(&partition) {
                    h.releasing = Some(Releasing {
                        since,
                        drained: false,
                    });
                    info!(partition, epoch = h.epoch, share, "handing over: releasing");
                }
            }
            self.shared.publish(&state);
        } else if active.len() < share {
            self.acquire(share - active.len(), acquire_until).await;
        }
    }

    /// Takes up to `wanted` free or expired partitions, within the round's time budget.
    async fn acquire(&self, wanted: usize, until: TokioInstant) {
        let o = &self.options;
        let free = match self.store.free_partitions(o.partitions).await {
            Ok(free) => free,
            Err(e) => return warn!(error = %e, "could not list free partitions"),
        };
        let mut taken = 0;
        for partition in free {
            if taken == wanted || TokioInstant::now() >= until {
                break;
            }
            if self.shared.lock().held.contains_key(&partition) {
                continue;
            }
            let sent = Instant::now();
            match self
                .store
                .acquire(partition, &o.node_id, &o.advertise_url, o.lease_ms)
                .await
            {
                Ok(Some(lease)) => {
                    taken += 1;
                    let mut state = self.shared.lock();
                    // Shutdown began meanwhile: nothing ran under this lease, release it.
                    let releasing = state.stopping.then_some(Releasing {
                        since: sent,
                        drained: true,
                    });
                    state.held.insert(
                        partition,
                        Held {
                            epoch: lease.epoch,
                            renewed_from: sent,
                            releasing,
                        },
                    );
                    self.shared.publish(&state);
                    info!(partition, epoch = lease.epoch, "lease acquired");
                }
                Ok(None) => debug!(partition, "taken by another node meanwhile"),
                Err(e) => return warn!(partition, error = %e, "acquire failed"),
            }
        }
    }
}
