//! Journal health: a circuit breaker fed by append outcomes and client-wide errors.
//!
//! - Closed: appends go to the journal. `failure_threshold` consecutive failed or timed-out
//!   appends, or one client-wide error (all brokers down, via [`JournalHealth::trip`]),
//!   open it.
//! - Open: appends are refused at once (nothing is recorded) instead of each waiting for a
//!   timeout. After `cool_down` the next append is admitted as the one probe and the
//!   breaker is half-open.
//! - Half-open: exactly one probe is in flight; every other append is refused. The probe's
//!   success closes the breaker, its failure reopens it. A probe that never reports (its
//!   caller vanished) is given up after `probe_timeout`, and the next append probes.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether an append may go to the journal now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: this append is the one probe; its outcome decides the breaker.
    Probe,
    /// Open (or a probe is in flight): do not append.
    Refused,
}

#[derive(Debug)]
struct Inner {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// When the breaker opened (Open) or the probe was admitted (HalfOpen), unix ms.
    since_ms: AtomicU64,
    transitions: AtomicU64,
    failure_threshold: u32,
    cool_down: Duration,
    probe_timeout: Duration,
}

/// Cheap, cloneable handle to the node's journal breaker.
#[derive(Debug, Clone)]
pub struct JournalHealth {
    inner: Arc<Inner>,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn name(state: u8) -> &'static str {
    match state {
        OPEN => "open",
        HALF_OPEN => "half_open",
        _ => "closed",
    }
}

impl JournalHealth {
    /// `probe_timeout` should exceed the longest an append can take (the produce timeout).
    pub fn new(failure_threshold: u32, cool_down: Duration, probe_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: AtomicU8::new(CLOSED),
                consecutive_failures: AtomicU32::new(0),
                since_ms: AtomicU64::new(0),
                transitions: AtomicU64::new(0),
                failure_threshold: failure_threshold.max(1),
                cool_down,
                probe_timeout,
            }),
        }
    }

    /// The stored state (an open breaker past its cool-down stays `Open` until the next
    /// append is admitted as the probe).
    pub fn state(&self) -> BreakerState {
        match self.inner.state.load(Ordering::Acquire) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// State changes since start.
    pub fn transitions(&self) -> u64 {
        self.inner.transitions.load(Ordering::Relaxed)
    }

    fn elapsed_since(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.inner.since_ms.load(Ordering::Acquire)))
    }

    /// Moves `from` → `to`; false if another thread moved first.
    fn transition(&self, from: u8, to: u8) -> bool {
        if self
            .inner
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if to != CLOSED {
            self.inner.since_ms.store(now_ms(), Ordering::Release);
        }
        self.inner.transitions.fetch_add(1, Ordering::Relaxed);
        // One line per outage, not per probe: closed → open and back to closed are what an
        // operator acts on; the open ⇄ half-open cycle of each failed probe is debug (the
        // transitions are counted in /metrics).
        match (from, to) {
            (CLOSED, OPEN) => {
                tracing::warn!(from = name(from), to = name(to), "journal breaker opened")
            }
            (_, CLOSED) => tracing::info!(
                from = name(from),
                to = name(to),
                "journal breaker closed: the journal is back"
            ),
            _ => tracing::debug!(from = name(from), to = name(to), "journal breaker"),
        }
        true
    }

    /// Decides whether one append may go to the journal now; see [`Admission`].
    pub fn admit(&self) -> Admission {
        match self.inner.state.load(Ordering::Acquire) {
            CLOSED => Admission::Allowed,
            OPEN if self.elapsed_since() >= self.inner.cool_down => {
                if self.transition(OPEN, HALF_OPEN) {
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
            HALF_OPEN => {
                // A probe that never reported is replaced: the first caller past the probe
                // timeout moves the probe's start and becomes the new probe.
                let since = self.inner.since_ms.load(Ordering::Acquire);
                let now = now_ms();
                if Duration::from_millis(now.saturating_sub(since)) >= self.inner.probe_timeout
                    && self
                        .inner
                        .since_ms
                        .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    Admission::Probe
                } else {
                    Admission::Refused
                }
            }
            _ => Admission::Refused,
        }
    }

    /// An append was acknowledged: the journal works.
    pub fn record_success(&self) {
        self.inner.consecutive_failures.store(0, Ordering::Release);
        let state = self.inner.state.load(Ordering::Acquire);
        if state != CLOSED {
            self.transition(state, CLOSED);
        }
    }

    /// An append failed or timed out.
    pub fn record_failure(&self) {
        let failures = self
            .inner
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        match self.inner.state.load(Ordering::Acquire) {
            HALF_OPEN => {
                self.transition(HALF_OPEN, OPEN);
            }
            CLOSED if failures >= self.inner.failure_threshold => {
                self.transition(CLOSED, OPEN);
            }
            _ => {}
        }
    }

    /// Opens the breaker now (e.g. librdkafka reported all brokers down).
    pub fn trip(&self) {
        match self.inner.state.load(Ordering::Acquire) {
            CLOSED => {
                self.transition(CLOSED, OPEN);
            }
            HALF_OPEN => {
                self.transition(HALF_OPEN, OPEN);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cool_down_ms: u64) -> JournalHealth {
        JournalHealth::new(
            threshold,
            Duration::from_millis(cool_down_ms),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn opens_after_threshold_failures_and_refuses_appends() {
        let health = breaker(2, 60_000);
        health.record_failure();
        assert_eq!(health.state(), BreakerState::Closed);
        assert_eq!(health.admit(), Admission::Allowed);
        health.record_failure();
        assert_eq!(health.state(), BreakerState::Open);
        assert_eq!(health.admit(), Admission::Refused);
    }

    #[test]
    fn a_success_resets_the_count_of_consecutive_failures() {
        let health = breaker(2, 60_000);
        health.record_failure();
        health.record_success();
        health.record_failure();
        assert_eq!(health.state(), BreakerState::Closed);
    }

    #[test]
    fn after_the_cool_down_exactly_one_probe_is_let_through() {
        let health = breaker(1, 0);
        health.record_failure();
        assert_eq!(health.state(), BreakerState::Open);
        assert_eq!(health.admit(), Admission::Probe);
        assert_eq!(health.state(), BreakerState::HalfOpen);
        for _ in 0..10 {
            assert_eq!(health.admit(), Admission::Refused, "one probe at a time");
        }
    }

    #[test]
    fn the_probes_success_closes_the_breaker() {
        let health = breaker(1, 0);
        health.trip();
        assert_eq!(health.admit(), Admission::Probe);
        health.record_success();
        assert_eq!(health.state(), BreakerState::Closed);
        assert_eq!(health.admit(), Admission::Allowed);
    }

    #[test]
    fn the_probes_failure_reopens_the_breaker() {
        let health = JournalHealth::new(5, Duration::from_millis(200), Duration::from_secs(60));
        health.trip();
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(health.admit(), Admission::Probe);
        health.record_failure();
        assert_eq!(health.state(), BreakerState::Open);
        assert_eq!(health.admit(), Admission::Refused, "a new cool-down starts");
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_the_probe_timeout() {
        let health = JournalHealth::new(1, Duration::ZERO, Duration::from_millis(50));
        health.trip();
        assert_eq!(health.admit(), Admission::Probe);
        assert_eq!(health.admit(), Admission::Refused);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(health.admit(), Admission::Probe);
    }

    #[test]
    fn a_client_wide_error_opens_it_at_once() {
        let health = breaker(100, 60_000);
        health.trip();
        assert_eq!(health.state(), BreakerState::Open);
        assert_eq!(health.transitions(), 1);
    }

    #[test]
    fn concurrent_appends_in_half_open_get_one_probe() {
        let health = breaker(1, 0);
        health.trip();
        let probes: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let health = health.clone();
                    s.spawn(move || (health.admit() == Admission::Probe) as usize)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(probes, 1);
    }
}
