//! Hosting the payment domain (the `payrail-payment` crate, re-exported here as [`payment`]
//! and [`money`]):
//!
//! - [`PaymentActor`](payment_actor::PaymentActor), [`MerchantActor`](merchant_actor::MerchantActor)
//!   and [`PartitionSupervisor`](partition_actor::PartitionSupervisor): the actors that host
//!   it (persist, then reply), and [`messages`], the protocol between them (one module
//!   all three use, so no actor module imports another);
//! - [`snapshots`]: the projection payment actors are rebuilt from, and [`fresh_keys`]:
//!   which idempotency keys certainly have no payment yet (their look-up is skipped);
//! - [`fallback`] (the `payrail-fallback` crate): the spool that keeps commands durable
//!   while the journal is down;
//! - [`merchants`]: merchant registry and API-key authentication;
//! - [`idle_timer`]: when idle payment actors check whether to passivate, and
//!   [`live_bound`]: how many may be live at once (the least recently active leave first);
//! - [`telemetry`]: command latency, live actors and passivations as metrics.
//!
//! It must not know the subscriber pools (`payrail-pools`) or HTTP (`payrail-http`).

pub mod error;
pub mod fresh_keys;
/// The journal fallback (its own crate, `payrail-fallback`; re-exported so paths stay).
pub use payrail_fallback as fallback;
pub mod idempotency;
pub mod idle_timer;
pub mod live_bound;
pub mod merchant_actor;
pub mod merchants;
pub mod messages;
pub mod node;
pub mod partition_actor;
pub mod payment_actor;
pub mod psp;
pub mod root_supervisor;
pub mod runtime;
/// Webhook signatures (their own crate, so the PSP sandbox needs no actors).
pub use payrail_signature as signature;
pub mod snapshots;
pub mod sweeper;
pub mod telemetry;

pub use payrail_payment as payment;
pub use payrail_payment::money;

pub use error::CommandError;
pub use node::NodeHandle;
pub use runtime::{ActorOptions, Runtime, RuntimeParts};
