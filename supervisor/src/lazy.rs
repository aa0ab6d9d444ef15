//! Restart bookkeeping for children that are restarted lazily: a failed child is not
//! respawned at once but rebuilt on its next message, once its backoff has passed (payment
//! and merchant actors, whose state is durable). Past the restart intensity the child stays
//! down for the rest of the window and the caller escalates.

use crate::restart::{RestartDecision, RestartPolicy, RestartTracker};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Record {
    tracker: RestartTracker,
    /// Not rebuilt before this instant.
    not_before: Instant,
    last_failure: Instant,
}

/// Per-child restart records of one supervisor, bounded (the oldest are dropped).
pub struct LazyRestarts {
    policy: RestartPolicy,
    records: HashMap<String, Record>,
    max_records: usize,
}

impl LazyRestarts {
    pub fn new(policy: RestartPolicy, max_records: usize) -> Self {
        assert!(max_records > 0, "max_records must be positive");
        Self {
            policy,
            records: HashMap::new(),
            max_records,
        }
    }

    /// `Err(wait)` while `child` is in its backoff (or down after a give-up).
    pub fn check(&self, child: &str, now: Instant) -> Result<(), Duration> {
        match self.records.get(child) {
            Some(record) if record.not_before > now => {
                Err(record.not_before.saturating_duration_since(now))
            }
            _ => Ok(()),
        }
    }

    /// Records a failure of `child` and decides; after `GiveUp` the child stays down for
    /// the policy's window.
    pub fn on_failure(&mut self, child: &str, now: Instant) -> RestartDecision {
        if self.records.len() >= self.max_records && !self.records.contains_key(child) {
            if let Some(oldest) = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.last_failure)
                .map(|(id, _)| id.clone())
            {
                self.records.remove(&oldest);
            }
        }
        let policy = self.policy;
        let record = self
            .records
            .entry(child.to_string())
            .or_insert_with(|| Record {
                tracker: RestartTracker::new(policy),
                not_before: now,
                last_failure: now,
            });
        record.last_failure = now;
        let decision = record.tracker.on_failure(now);
        record.not_before = match decision {
            RestartDecision::RestartAfter(delay) => now + delay,
            RestartDecision::GiveUp => now + Duration::from_millis(policy.window_ms),
        };
        debug_assert!(self.records.len() <= self.max_records);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 2,
            window_ms: 1_000,
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
        }
    }

    #[test]
    fn a_failed_child_waits_for_its_backoff() {
        let mut restarts = LazyRestarts::new(policy(), 8);
        let now = Instant::now();
        assert_eq!(restarts.check("a", now), Ok(()));
        assert_eq!(
            restarts.on_failure("a", now),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert!(restarts.check("a", now).is_err());
        assert_eq!(
            restarts.check("b", now),
            Ok(()),
            "other children unaffected"
        );
        assert_eq!(
            restarts.check("a", now + Duration::from_millis(100)),
            Ok(())
        );
    }

    #[test]
    fn past_the_intensity_the_child_stays_down_for_the_window() {
        let mut restarts = LazyRestarts::new(policy(), 8);
        let now = Instant::now();
        restarts.on_failure("a", now);
        restarts.on_failure("a", now);
        assert_eq!(restarts.on_failure("a", now), RestartDecision::GiveUp);
        assert!(restarts
            .check("a", now + Duration::from_millis(999))
            .is_err());
        assert_eq!(
            restarts.check("a", now + Duration::from_millis(1_000)),
            Ok(())
        );
    }

    #[test]
    fn records_are_bounded() {
        let mut restarts = LazyRestarts::new(policy(), 2);
        let now = Instant::now();
        restarts.on_failure("a", now);
        restarts.on_failure("b", now + Duration::from_millis(1));
        restarts.on_failure("c", now + Duration::from_millis(2));
        assert_eq!(restarts.records.len(), 2);
        assert_eq!(restarts.check("a", now), Ok(()), "the oldest was dropped");
    }
}
