//! Restart and give-up counters per supervisor (`payrail_supervisor_restarts_total`,
//! `payrail_supervisor_give_ups_total`), recorded by every supervisor where it decides.
//!
//! The `supervisor` label is the supervisor's role (`root`, `partition`, `merchant`,
//! `consumer:<name>`, `task:<name>`), never the id of a payment or merchant: its values are
//! bounded by the code and the configured pools. Failures are rare, so the handles are not
//! cached.

use crate::restart::RestartDecision;

/// Counts `decision` of `supervisor` (a restart scheduled, or a give-up).
pub fn record_decision(supervisor: &str, decision: &RestartDecision) {
    let name = match decision {
        RestartDecision::RestartAfter(_) => "payrail_supervisor_restarts_total",
        RestartDecision::GiveUp => "payrail_supervisor_give_ups_total",
    };
    metrics::counter!(name, "supervisor" => supervisor.to_string()).increment(1);
}
