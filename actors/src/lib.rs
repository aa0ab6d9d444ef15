//! The payment and merchant domain.
//!
//! - [`payment`]: the pure state machine, its events and the API view;
//! - [`PaymentActor`](payment_actor::PaymentActor), [`MerchantActor`](merchant_actor::MerchantActor)
//!   and [`PartitionSupervisor`](partition_actor::PartitionSupervisor): the actors that host
//!   it (persist, then reply);
//! - [`snapshots`]: the projection payment actors are rebuilt from;
//! - [`fallback`]: the spool that keeps commands durable while the journal is down;
//! - [`pools`]: the subscriber pools' read models;
//! - [`merchants`]: merchant registry and API-key authentication;
//! - [`idle_timer`]: when idle payment actors check whether to passivate;
//! - [`telemetry`]: command latency, live actors and passivations as metrics.

pub mod error;
pub mod fallback;
pub mod idempotency;
pub mod idle_timer;
pub mod merchant_actor;
pub mod merchants;
pub mod money;
pub mod node;
pub mod partition_actor;
pub mod payment;
pub mod payment_actor;
pub mod pools;
pub mod psp;
pub mod root_supervisor;
pub mod runtime;
/// Webhook signatures (their own crate, so the PSP sandbox needs no actors).
pub use payrail_signature as signature;
pub mod snapshots;
pub mod sweeper;
pub mod telemetry;

pub use error::CommandError;
pub use node::NodeHandle;
pub use runtime::{ActorOptions, Runtime, RuntimeParts};
