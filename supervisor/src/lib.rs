//! Supervision building blocks shared by the journal's worker pools and the domain actors.
//!
//! - [`RestartPolicy`] / [`RestartTracker`]: restart with exponential backoff, at most
//!   `max_restarts` within `window`; past that the supervisor gives up and escalates.
//! - [`JournalHealth`]: the circuit breaker that watches the producer (fallback mode hangs
//!   off it in a later issue).
//! - [`PartitionOwnership`]: which journal partitions this node owns.
//! - [`Escalations`]: where supervisors report that they gave up (readiness, exit policy).
//! - [`telemetry`]: restart and give-up counters per supervisor.
//!
//! It must not know the journal, the domain or any payrail crate above it: the journal,
//! the fallback, the actors and the pools build on it.

pub mod escalation;
pub mod health;
pub mod lazy;
pub mod ownership;
pub mod restart;
pub mod task;
pub mod telemetry;

pub use escalation::{Escalation, Escalations, GiveUpPolicy};
pub use health::{Admission, BreakerState, JournalHealth};
pub use lazy::LazyRestarts;
pub use ownership::PartitionOwnership;
pub use restart::{RestartDecision, RestartPolicy, RestartTracker};
pub use task::supervise_task;
