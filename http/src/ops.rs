//! Operations endpoints: readiness.

use crate::{json, AppState};
use payrail_supervisor::Escalation;
use serde::Serialize;
use std::convert::Infallible;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    /// The broker answers a metadata request.
    journal: bool,
    /// The journal breaker: `closed`, `open` or `half_open`.
    breaker: &'static str,
    /// The breaker's state changes since the node started.
    breaker_transitions: u64,
    database: bool,
    /// Every owned partition has caught up and has a running supervisor.
    partitions: bool,
    /// Owned partitions without a running supervisor (restarting, or given up).
    partitions_down: Vec<i32>,
    /// Supervisors that gave up (restart intensity exceeded), most recent last.
    gave_up: Vec<Escalation>,
    /// Why the node is not ready, in words; empty when ready.
    reasons: Vec<String>,
}

/// `GET /readyz`: 200 when the node can take commands, 503 with the reasons otherwise.
pub async fn readyz(state: AppState) -> Result<Response, Infallible> {
    let runtime = state.node.runtime();
    let journal = runtime.producer.is_reachable(Duration::from_secs(2)).await;
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    let partitions_down = state.node.partitions_down();
    let caught_up = state.node.is_ready();
    let gave_up = runtime.escalations.recent();
    let breaker = runtime.health.state();
    let mut reasons = Vec::new();
    if !journal {
        reasons.push("the journal (broker) does not answer".to_string());
    }
    if !database {
        reasons.push("PostgreSQL does not answer".to_string());
    }
    if !caught_up {
        reasons.push("partitions are still catching up with the journal".to_string());
    }
    if !partitions_down.is_empty() {
        reasons.push(format!(
            "partitions without a running supervisor: {partitions_down:?}"
        ));
    }
    for escalation in &gave_up {
        reasons.push(format!(
            "{} gave up on {}: {}",
            escalation.supervisor, escalation.child, escalation.reason
        ));
    }
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(
        status,
        &Readiness {
            ready,
            journal,
            breaker: breaker.as_str(),
            breaker_transitions: runtime.health.transitions(),
            database,
            partitions: caught_up && partitions_down.is_empty(),
            partitions_down,
            gave_up,
            reasons,
        },
    ))
}
