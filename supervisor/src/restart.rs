//! Restart intensity and backoff (Erlang/OTP's `intensity`/`period`, with a delay).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a supervisor restarts a failed child (`[supervisor]` in config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    /// Restarts allowed within `window_ms` before the supervisor escalates.
    pub max_restarts: u32,
    /// The sliding window for `max_restarts` (ms).
    pub window_ms: u64,
    /// Delay before the first restart (ms); doubles with every restart in the window.
    pub backoff_base_ms: u64,
    /// Largest delay between restarts (ms).
    pub backoff_max_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            window_ms: 60_000,
            backoff_base_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

/// What to do about one more failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// Too many restarts in the window: stop and escalate.
    GiveUp,
}

/// Remembers recent restarts of one child.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        let window = Duration::from_millis(self.policy.window_ms);
        while let Some(&first) = self.recent.front() {
            if now.duration_since(first) > window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u32 >= self.policy.max_restarts {
            return RestartDecision::GiveUp;
        }
        let exponent = self.recent.len().min(20) as u32;
        self.recent.push_back(now);
        let delay = self
            .policy
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.policy.backoff_max_ms);
        RestartDecision::RestartAfter(Duration::from_millis(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window_ms: 1_000,
            backoff_base_ms: 10,
            backoff_max_ms: 25,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut tracker = RestartTracker::new(policy());
        let now = Instant::now();
        assert_eq!(
            tracker.on_failure(now),
            RestartDecision::RestartAfter(Duration::from_millis(10))
        );
        assert_eq!(
            tracker.on_failure(now),
            RestartDecision::RestartAfter(Duration::from_millis(20))
        );
        assert_eq!(
            tracker.on_failure(now),
            RestartDecision::RestartAfter(Duration::from_millis(25))
        );
    }

    #[test]
    fn gives_up_past_the_intensity_limit() {
        let mut tracker = RestartTracker::new(policy());
        let now = Instant::now();
        for _ in 0..3 {
            assert!(matches!(
                tracker.on_failure(now),
                RestartDecision::RestartAfter(_)
            ));
        }
        assert_eq!(tracker.on_failure(now), RestartDecision::GiveUp);
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut tracker = RestartTracker::new(policy());
        let start = Instant::now();
        for _ in 0..3 {
            tracker.on_failure(start);
        }
        let later = start + Duration::from_millis(1_500);
        assert_eq!(
            tracker.on_failure(later),
            RestartDecision::RestartAfter(Duration::from_millis(10))
        );
    }
}
