//! The domain actors' metrics: command latency by kind and outcome, live actors by kind,
//! passivations and evictions (live payment actors past their bound).
//!
//! Labels are bounded by the code: a command's kind (its stable name, see
//! [`Command::kind`](crate::payment::Command::kind)) and outcome, an actor's kind. Never a
//! payment or merchant id. The handles are made once (on first use, after the node has
//! installed its recorder) and kept, so a command costs a few atomic operations.

use crate::error::CommandError;
use metrics::{Counter, Gauge, Histogram};
use std::sync::OnceLock;
use std::time::Duration;

/// The kinds of actor counted in `payrail_actors_live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    Partition,
    Merchant,
    Payment,
}

impl ActorKind {
    const ALL: [ActorKind; 3] = [
        ActorKind::Partition,
        ActorKind::Merchant,
        ActorKind::Payment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Partition => "partition",
            ActorKind::Merchant => "merchant",
            ActorKind::Payment => "payment",
        }
    }
}

/// The `command` label values: the payment commands' kinds and the sweeper's `poll`.
pub const COMMAND_KINDS: [&str; 9] = [
    "create",
    "confirm",
    "record_outcome",
    "capture",
    "cancel",
    "expire",
    "refund",
    "record_refund_outcome",
    "poll",
];

/// The `outcome` label values.
pub const OUTCOMES: [&str; 3] = ["accepted", "refused", "error"];

struct Handles {
    live: Vec<Gauge>,
    passivations: Vec<Counter>,
    /// Payment actors passivated because live ones passed `actors.max_live_payments`.
    evictions: Counter,
    /// Creates with a key not in memory: looked up in PostgreSQL, or skipped (fresh key).
    lookups: [Counter; 2],
    /// `COMMAND_KINDS` × `OUTCOMES`, kind-major.
    commands: Vec<Histogram>,
}

fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(|| Handles {
        live: ActorKind::ALL
            .iter()
            .map(|k| metrics::gauge!("payrail_actors_live", "kind" => k.as_str()))
            .collect(),
        passivations: ActorKind::ALL
            .iter()
            .map(|k| metrics::counter!("payrail_actor_passivations_total", "kind" => k.as_str()))
            .collect(),
        evictions: metrics::counter!("payrail_actor_evictions_total", "kind" => "payment"),
        lookups: [
            metrics::counter!("payrail_idempotency_lookups_total", "result" => "queried"),
            metrics::counter!("payrail_idempotency_lookups_total", "result" => "skipped"),
        ],
        commands: COMMAND_KINDS
            .iter()
            .flat_map(|kind| {
                OUTCOMES.iter().map(move |outcome| {
                    metrics::histogram!(
                        "payrail_command_duration_seconds",
                        "command" => *kind,
                        "outcome" => *outcome
                    )
                })
            })
            .collect(),
    })
}

/// The outcome label of a command's result: `refused` when the payment's rules, the
/// processor or the caller's input said no (a 4xx), `error` when it could not be decided
/// (journal, node, timeout: a 5xx).
pub fn outcome<T>(result: &Result<T, CommandError>) -> &'static str {
    match result {
        Ok(_) => "accepted",
        Err(
            CommandError::NotFound
            | CommandError::Refused(_)
            | CommandError::IdempotencyMismatch
            | CommandError::PspRefused { .. },
        ) => "refused",
        Err(_) => "error",
    }
}

/// Records one command of `kind` (one of [`COMMAND_KINDS`]) that took `elapsed`.
pub fn command_finished<T>(kind: &str, result: &Result<T, CommandError>, elapsed: Duration) {
    let outcome = outcome(result);
    let (Some(k), Some(o)) = (
        COMMAND_KINDS.iter().position(|c| *c == kind),
        OUTCOMES.iter().position(|c| *c == outcome),
    ) else {
        debug_assert!(false, "unknown command kind {kind}");
        return;
    };
    if let Some(histogram) = handles().commands.get(k * OUTCOMES.len() + o) {
        histogram.record(elapsed.as_secs_f64());
    }
}

/// Counts one actor of its kind as live until dropped. Held in the actor's state, so the
/// count falls however the actor ends (stopped, passivated, panicked).
pub struct Live(ActorKind);

impl Live {
    pub fn new(kind: ActorKind) -> Self {
        handles().live[kind as usize].increment(1.0);
        Self(kind)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        handles().live[self.0 as usize].decrement(1.0);
    }
}

/// Counts one create whose key was not in memory: `skipped` when the fresh-key filter
/// knew it new, else looked up in PostgreSQL.
pub fn idempotency_lookup(skipped: bool) {
    handles().lookups[usize::from(skipped)].increment(1);
}

/// Counts one payment actor retired because live payment actors passed their bound.
pub fn evicted() {
    handles().evictions.increment(1);
}

/// Counts one actor of `kind` retired because it was idle.
pub fn passivated(kind: ActorKind) {
    handles().passivations[kind as usize].increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::machine::Refusal;

    #[test]
    fn refusals_are_told_from_errors() {
        assert_eq!(outcome::<()>(&Ok(())), "accepted");
        assert_eq!(
            outcome::<()>(&Err(CommandError::Refused(Refusal::NotFound))),
            "refused"
        );
        assert_eq!(outcome::<()>(&Err(CommandError::Timeout)), "error");
        assert_eq!(
            outcome::<()>(&Err(CommandError::NotReady("x".into()))),
            "error"
        );
    }

    #[test]
    fn every_kind_of_actor_has_its_handle() {
        for (i, kind) in ActorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
        }
    }
}
