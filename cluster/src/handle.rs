//! The state a keeper shares with its node, and `Leases`, the node's cheap handle on it.

use crate::error::LeaseError;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// A partition this node holds.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub epoch: u64,
    /// Taken just before the last successful renew (or the acquire) was sent.
    pub renewed_from: Instant,
    /// Set when the keeper hands the partition over (or shuts down).
    pub releasing: Option<Releasing>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Releasing {
    pub since: Instant,
    /// The node reported that nothing is in flight for the partition any more.
    pub drained: bool,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub held: BTreeMap<i32, Held>,
    /// Shutdown was asked for, or the keeper task is gone: nothing is valid any more.
    pub stopping: bool,
}

/// Where the keeper task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    NotStarted,
    Running,
    /// Finished its shutdown.
    Stopped,
    /// Its future was dropped (aborted or panicked) before finishing.
    Dropped,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub node_id: String,
    pub valid_for: Duration,
    pub shutdown_wait: Duration,
    pub state: Mutex<State>,
    pub feed: watch::Sender<BTreeMap<i32, u64>>,
    /// Wakes the keeper: a partition drained, or shutdown was asked for.
    pub wake: Notify,
    pub phase: watch::Sender<Phase>,
}

impl Shared {
    pub fn new(node_id: String, valid_for: Duration, shutdown_wait: Duration) -> Self {
        Self {
            node_id,
            valid_for,
            shutdown_wait,
            state: Mutex::new(State::default()),
            feed: watch::channel(BTreeMap::new()).0,
            wake: Notify::new(),
            phase: watch::channel(Phase::NotStarted).0,
        }
    }

    /// The state; a panic while it was locked leaves it usable (each change is one step).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the partitions this node owns and is not handing over.
    pub fn publish(&self, state: &State) {
        let owned: BTreeMap<i32, u64> = if state.stopping {
            BTreeMap::new()
        } else {
            state
                .held
                .iter()
                .filter(|(_, h)| h.releasing.is_none())
                .map(|(p, h)| (*p, h.epoch))
                .collect()
        };
        self.feed.send_if_modified(|current| {
            let changed = *current != owned;
            if changed {
                *current = owned;
            }
            changed
        });
    }
}

/// The node's handle on its leases: cheap to clone, usable from any task.
#[derive(Debug, Clone)]
pub struct Leases {
    pub(crate) shared: Arc<Shared>,
}

impl Leases {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The epoch of this node's lease on `partition` if it may acknowledge a command for it
    /// now: the node holds the lease, is not handing it over or shutting down, and the last
    /// successful renewal was *sent* less than `lease_ms - safety_margin_ms` ago on this
    /// node's monotonic clock. Call it after the journal acknowledged the append and answer
    /// 2xx only on `Some`.
    pub fn valid(&self, partition: i32) -> Option<u64> {
        let state = self.shared.lock();
        // Read the clock under the lock: a late reading can only make the answer stricter.
        let now = Instant::now();
        if state.stopping {
            return None;
        }
        let held = state.held.get(&partition)?;
        if held.releasing.is_some() {
            return None;
        }
        let until = held.renewed_from.checked_add(self.shared.valid_for)?;
        (now < until).then_some(held.epoch)
    }

    /// The partitions this node owns and is not handing over, with their epochs. Ownership
    /// here is what the keeper last observed; acknowledgements must still check `valid()`.
    pub fn owned(&self) -> BTreeMap<i32, u64> {
        self.shared.feed.borrow().clone()
    }

    /// Partitions being handed over, waiting for `drained` (or the drain timeout).
    pub fn releasing(&self) -> Vec<i32> {
        let state = self.shared.lock();
        state
            .held
            .iter()
            .filter(|(_, h)| h.releasing.is_some_and(|r| !r.drained))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Follows `owned()`. A partition appears only after its acquire succeeded. When one
    /// disappears, the node must stop taking commands for it, finish or abandon what is in
    /// flight, and then call `drained(partition)`: the keeper releases a handed-over
    /// partition only after that (or after the drain timeout). Calling `drained` for a
    /// partition that was lost rather than handed over is harmless.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<i32, u64>> {
        self.shared.feed.subscribe()
    }

    /// The node has nothing in flight for `partition` any more (see `subscribe`).
    pub fn drained(&self, partition: i32) {
        let mut state = self.shared.lock();
        if let Some(r) = state
            .held
            .get_mut(&partition)
            .and_then(|h| h.releasing.as_mut())
        {
            r.drained = true;
            self.shared.wake.notify_one();
        }
    }

    /// Graceful stop (SIGTERM path): `valid()` turns false for every partition at once, the
    /// node is marked leaving, each partition is released once drained (or after the drain
    /// timeout), and the keeper task ends. Waits `shutdown_timeout_ms` plus one query
    /// timeout at most; leases left behind expire by themselves.
    pub async fn shutdown(&self) -> Result<(), LeaseError> {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            self.shared.publish(&state);
        }
        self.shared.wake.notify_one();
        let mut phase = self.shared.phase.subscribe();
        if *phase.borrow() == Phase::NotStarted {
            return Ok(());
        }
        let finished = phase.wait_for(|p| matches!(p, Phase::Stopped | Phase::Dropped));
        let finished = tokio::time::timeout(self.shared.shutdown_wait, finished)
            .await
            .map(|r| r.map(|p| *p));
        match finished {
            Ok(Ok(Phase::Stopped)) => Ok(()),
            Ok(_) => Err(LeaseError::KeeperGone),
            Err(_) => Err(LeaseError::ShutdownTimeout(
                u64::try_from(self.shared.shutdown_wait.as_millis()).unwrap_or(u64::MAX),
            )),
        }
    }
}
