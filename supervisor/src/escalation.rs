//! Escalation: where a supervisor reports that it gave up on a child (restart intensity
//! exceeded, or the child cannot be started at all).
//!
//! A give-up must never be silent. Every supervisor of the node holds a clone of one
//! [`Escalations`]; `/readyz` turns not-ready and names each give-up, and with
//! `supervisor.on_give_up = "exit"` the node process exits non-zero so that an orchestrator
//! restarts it (see [`GiveUpPolicy`]).

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// What the node does when a supervisor gives up (`supervisor.on_give_up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpPolicy {
    /// Keep running, report not-ready with the reason (the default: an operator decides).
    #[default]
    NotReady,
    /// Exit the process with a non-zero status, so that an orchestrator restarts it.
    Exit,
}

/// One give-up, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Escalation {
    /// The supervisor that gave up, e.g. `consumer payrail.ledger` or `partition 3`.
    pub supervisor: String,
    /// The child it gave up on, e.g. `partition worker 2`.
    pub child: String,
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// Give-ups kept at most (the oldest are dropped; the count keeps growing).
const ESCALATIONS_KEPT: usize = 64;

#[derive(Debug, Default)]
struct Inner {
    recent: Vec<Escalation>,
    total: u64,
}

/// Cheap, cloneable handle every supervisor of a node reports its give-ups to.
#[derive(Debug, Clone)]
pub struct Escalations {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every give-up, for whoever waits for one (the exit policy).
    changed: watch::Sender<u64>,
}

impl Default for Escalations {
    fn default() -> Self {
        Self::new()
    }
}

impl Escalations {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records that `supervisor` gave up on `child`.
    pub fn escalate(
        &self,
        supervisor: impl Into<String>,
        child: impl Into<String>,
        reason: impl Into<String>,
    ) {
        let escalation = Escalation {
            supervisor: supervisor.into(),
            child: child.into(),
            reason: reason.into(),
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        tracing::error!(
            supervisor = %escalation.supervisor,
            child = %escalation.child,
            reason = %escalation.reason,
            "supervisor gave up; escalating"
        );
        let total = {
            let mut inner = self.lock();
            inner.recent.push(escalation);
            if inner.recent.len() > ESCALATIONS_KEPT {
                inner.recent.remove(0);
            }
            inner.total += 1;
            inner.total
        };
        debug_assert!(self.lock().recent.len() <= ESCALATIONS_KEPT);
        self.changed.send_replace(total);
    }

    /// The most recent give-ups, oldest first.
    pub fn recent(&self) -> Vec<Escalation> {
        self.lock().recent.clone()
    }

    /// Give-ups since start.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Whether no supervisor has given up.
    pub fn is_clear(&self) -> bool {
        self.total() == 0
    }

    /// Waits for the first give-up (returns at once if there was one already).
    pub async fn first(&self) -> Escalation {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|total| *total > 0).await;
        self.recent()
            .into_iter()
            .next()
            .unwrap_or_else(|| Escalation {
                supervisor: "unknown".into(),
                child: "unknown".into(),
                reason: "escalation record lost".into(),
                at_ms: 0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_give_up_is_recorded_and_clears_nothing() {
        let escalations = Escalations::new();
        assert!(escalations.is_clear());
        escalations.escalate("consumer payrail.ledger", "partition worker 2", "boom");
        assert!(!escalations.is_clear());
        let recent = escalations.recent();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].child, "partition worker 2");
        assert_eq!(recent[0].reason, "boom");
    }

    #[test]
    fn only_the_latest_give_ups_are_kept_but_all_are_counted() {
        let escalations = Escalations::new();
        for i in 0..(ESCALATIONS_KEPT + 10) {
            escalations.escalate("s", format!("c{i}"), "r");
        }
        assert_eq!(escalations.recent().len(), ESCALATIONS_KEPT);
        assert_eq!(escalations.total(), (ESCALATIONS_KEPT + 10) as u64);
        assert_eq!(escalations.recent()[0].child, "c10");
    }

    #[tokio::test]
    async fn first_wakes_on_a_give_up() {
        let escalations = Escalations::new();
        let waiter = {
            let escalations = escalations.clone();
            tokio::spawn(async move { escalations.first().await })
        };
        tokio::task::yield_now().await;
        escalations.escalate("root", "partition 1", "too many restarts");
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(first.child, "partition 1");
    }
}
