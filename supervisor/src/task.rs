//! Supervised background tasks (the sweeper, notification delivery): a task that panics or
//! returns is restarted under a [`RestartPolicy`]; past its intensity the supervisor
//! escalates and leaves it stopped.

use crate::escalation::Escalations;
use crate::restart::{RestartDecision, RestartPolicy, RestartTracker};
use std::future::Future;
use std::time::Instant;
use tokio::task::JoinHandle;

/// Aborts the supervised task when the supervisor is aborted or dropped.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Runs `make()`'s future as a task and restarts it whenever it panics or ends. Aborting
/// the returned handle stops the task too.
pub fn supervise_task<F, Fut>(
    name: &'static str,
    policy: RestartPolicy,
    escalations: Escalations,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tracker = RestartTracker::new(policy);
        loop {
            let mut child = AbortOnDrop(Some(tokio::spawn(make())));
            let outcome = match child.0.as_mut() {
                Some(handle) => handle.await,
                None => return,
            };
            child.0 = None;
            let reason = match outcome {
                Ok(()) => "the task ended".to_string(),
                Err(error) if error.is_panic() => format!("the task panicked: {error}"),
                Err(error) => format!("the task was cancelled: {error}"),
            };
            let decision = tracker.on_failure(Instant::now());
            crate::telemetry::record_decision(
                &format!("task:{}", name.replace(' ', "_")),
                &decision,
            );
            match decision {
                RestartDecision::RestartAfter(delay) => {
                    tracing::warn!(task = name, %reason, ?delay, "restarting supervised task");
                    tokio::time::sleep(delay).await;
                }
                RestartDecision::GiveUp => {
                    escalations.escalate(
                        "task supervisor",
                        name,
                        format!("restart intensity exceeded; last failure: {reason}"),
                    );
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn policy(max_restarts: u32) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            window_ms: 60_000,
            backoff_base_ms: 1,
            backoff_max_ms: 5,
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_then_runs() {
        let runs = Arc::new(AtomicU32::new(0));
        let escalations = Escalations::new();
        let counted = runs.clone();
        let handle = supervise_task("flaky", policy(5), escalations.clone(), move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("injected");
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while runs.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("restarted twice");
        assert!(escalations.is_clear());
        handle.abort();
    }

    #[tokio::test]
    async fn past_the_intensity_the_supervisor_escalates() {
        let escalations = Escalations::new();
        let handle = supervise_task("doomed", policy(2), escalations.clone(), || async {
            panic!("always")
        });
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("gives up")
            .expect("supervisor itself does not panic");
        let recent = escalations.recent();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].child, "doomed");
    }

    #[tokio::test]
    async fn aborting_the_supervisor_stops_the_task() {
        let alive = Arc::new(AtomicU32::new(0));
        let counter = alive.clone();
        let handle = supervise_task("ticker", policy(5), Escalations::new(), move || {
            let alive = counter.clone();
            async move {
                loop {
                    alive.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        handle.abort();
        let _ = handle.await;
        let seen = alive.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(alive.load(Ordering::SeqCst) <= seen + 1, "the task stopped");
    }
}
