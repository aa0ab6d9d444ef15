//! Graceful handover: partitions marked releasing wait for the node's drain report (or the
//! drain timeout) before the keeper releases them; shutdown hands every partition over.

use crate::handle::Releasing;
use crate::keeper::LeaseKeeper;
use std::time::Instant;
use tokio::time::Instant as TokioInstant;
use tracing::{info, warn};

impl LeaseKeeper {
    /// The earliest of the next round, a future drain deadline and the stop deadline.
    pub(crate) fn next_wake(
        &self,
        next_round: TokioInstant,
        stop: Option<TokioInstant>,
    ) -> TokioInstant {
        let now = Instant::now();
        let drain = self.options.drain_timeout();
        let state = self.shared.lock();
        let drain_due = state
            .held
            .values()
            .filter_map(|h| h.releasing.map(|r| r.since + drain))
            .filter(|due| *due > now)
            .min()
            .map(TokioInstant::from_std);
        [Some(next_round), drain_due, stop]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_round)
    }

    /// Shutdown asked for: hand every partition over and leave the fair share.
    pub(crate) async fn begin_stop(&self) {
        {
            let mut state = self.shared.lock();
            let since = Instant::now();
            for (partition, held) in state.held.iter_mut() {
                if held.releasing.is_none() {
                    held.releasing = Some(Releasing {
                        since,
                        drained: false,
                    });
                    info!(partition, epoch = held.epoch, "shutdown: releasing");
                }
            }
            self.shared.publish(&state);
        }
        if let Err(e) = self.store.leave(&self.options.node_id).await {
            warn!(error = %e, "could not mark this node leaving");
        }
    }

    /// Releases the partitions being handed over that drained or waited long enough.
    pub(crate) async fn process_releases(&self, stop_deadline: Option<TokioInstant>) {
        let drain = self.options.drain_timeout();
        let due: Vec<(i32, u64, bool)> = {
            let state = self.shared.lock();
            let now = Instant::now();
            state
                .held
                .iter()
                .filter_map(|(p, h)| {
                    let r = h.releasing?;
                    (r.drained || now.duration_since(r.since) >= drain)
                        .then_some((*p, h.epoch, r.drained))
                })
                .collect()
        };
        for (partition, epoch, drained) in due {
            if stop_deadline.is_some_and(|d| TokioInstant::now() >= d) {
                return;
            }
            match self
                .store
                .release(&self.options.node_id, partition, epoch)
                .await
            {
                Ok(matched) => {
                    self.shared.lock().held.remove(&partition);
                    info!(partition, epoch, drained, matched, "lease released");
                }
                Err(e) => return warn!(partition, epoch, error = %e, "release failed"),
            }
        }
    }
}
