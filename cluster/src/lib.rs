//! Partition leases in PostgreSQL (DESIGN.md, "Cluster").
//!
//! Each journal partition has at most one owner at a time, recorded in `partition_leases`
//! (migration 0024) with an epoch that every new owner raises. A [`LeaseKeeper`] task per
//! node, every `lease_ms / 3`:
//! 1. renews the leases it holds (only rows whose owner *and* epoch still match);
//! 2. heartbeats in `cluster_nodes` and counts the live nodes;
//! 3. computes its fair share, `ceil(partitions / live nodes)`, and either takes free,
//!    released or expired partitions up to it (raising their epoch), or, when above it
//!    because a node joined, hands the extras over: it marks them releasing (`valid()`
//!    turns false and they leave the change feed at once), waits until the node reports
//!    them drained ([`Leases::drained`]) or the drain timeout passes, then releases them.
//!
//! Every expiry is decided by the database's clock. The node's own view,
//! [`Leases::valid`], uses its monotonic clock from the instant it *sent* its last
//! successful renewal, minus a safety margin: the database executes the renewal after it
//! was sent, so the node stops trusting a lease before the database can give it away.
//! A keeper whose renewals fail therefore loses `valid()` by itself, and forgets the lease
//! one full lease after the last successful renewal; it takes it again only through
//! `acquire`, with a new epoch.
//!
//! The crate knows nothing about payments or the journal; the node wires `valid()` into its
//! write path and follows [`Leases::subscribe`] to start and stop partition workers.

mod error;
mod handle;
mod handover;
mod keeper;
mod options;
mod share;
mod store;

pub use error::{LeaseError, StoreError};
pub use handle::Leases;
pub use keeper::LeaseKeeper;
pub use options::{LeaseOptions, MAX_PARTITIONS};
pub use share::{extras, fair_share};
pub use store::{Lease, LeaseRow, LeaseStore, NodeRow, MAX_NODES};
