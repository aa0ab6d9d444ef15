//! Journal health: a circuit breaker fed by producer outcomes and client errors.
//!
//! Closed: appends go to the journal. Open: the journal is considered unavailable (the
//! fallback spool takes over in a later issue; until then commands answer 503 quickly
//! instead of waiting for a timeout each). Half-open: one probe append is let through.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    opened_at_ms: AtomicU64,
    failure_threshold: u32,
    cool_down: Duration,
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

impl JournalHealth {
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: AtomicU8::new(CLOSED),
                consecutive_failures: AtomicU32::new(0),
                opened_at_ms: AtomicU64::new(0),
                failure_threshold: failure_threshold.max(1),
                cool_down,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.inner.state.load(Ordering::Acquire) {
            OPEN => {
                let opened = self.inner.opened_at_ms.load(Ordering::Acquire);
                if now_ms().saturating_sub(opened) >= self.inner.cool_down.as_millis() as u64 {
                    BreakerState::HalfOpen
                } else {
                    BreakerState::Open
                }
            }
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Whether an append should be attempted now.
    pub fn allows_append(&self) -> bool {
        self.state() != BreakerState::Open
    }

    pub fn record_success(&self) {
        self.inner.consecutive_failures.store(0, Ordering::Release);
        self.inner.state.store(CLOSED, Ordering::Release);
    }

    pub fn record_failure(&self) {
        let failures = self
            .inner
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            + 1;
        if failures >= self.inner.failure_threshold || self.state() == BreakerState::HalfOpen {
            self.trip();
        }
    }

    /// Opens the breaker now (e.g. librdkafka reported all brokers down).
    pub fn trip(&self) {
        self.inner.opened_at_ms.store(now_ms(), Ordering::Release);
        self.inner.state.store(OPEN, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_failures_and_closes_on_success() {
        let health = JournalHealth::new(2, Duration::from_secs(60));
        health.record_failure();
        assert_eq!(health.state(), BreakerState::Closed);
        health.record_failure();
        assert_eq!(health.state(), BreakerState::Open);
        assert!(!health.allows_append());
        health.record_success();
        assert_eq!(health.state(), BreakerState::Closed);
    }

    #[test]
    fn half_opens_after_cool_down() {
        let health = JournalHealth::new(1, Duration::from_millis(0));
        health.trip();
        assert_eq!(health.state(), BreakerState::HalfOpen);
        assert!(health.allows_append());
    }
}
