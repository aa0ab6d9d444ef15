//! Supervision building blocks shared by the journal's worker pools and the domain actors.
//!
//! - [`RestartPolicy`] / [`RestartTracker`]: restart with exponential backoff, at most
//!   `max_restarts` within `window`; past that the supervisor gives up and escalates.
//! - [`JournalHealth`]: the circuit breaker that watches the producer (fallback mode hangs
//!   off it in a later issue).
//! - [`PartitionOwnership`]: which journal partitions this node owns.

pub mod health;
pub mod ownership;
pub mod restart;

pub use health::{BreakerState, JournalHealth};
pub use ownership::PartitionOwnership;
pub use restart::{RestartDecision, RestartPolicy, RestartTracker};
