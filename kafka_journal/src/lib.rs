//! The journal: an append-only log of domain events on Kafka.
//!
//! This crate knows nothing about payments. It offers
//! - [`partition_for`]: a stable key → partition mapping every node agrees on;
//! - [`Envelope`] and the [`Codec`]s (bincode 2, JSON) that put it on the wire;
//! - [`fence`]: epoch fencing, so no reader applies a superseded owner's late append;
//! - [`JournalProducer`]: idempotent, `acks=all`, explicit-partition appends, handed to
//!   librdkafka through per-partition lanes (only what it may send, as one group);
//! - [`dead_letters`]: poison records to a pool's DLQ topic, listed and replayed;
//! - [`spool::Spool`]: the durable fallback spool in PostgreSQL and its ordered replay;
//! - [`admin::ensure_topics`]: explicit topic creation (no broker auto-creation needed);
//! - [`consumer::PartitionedConsumer`]: one worker actor per assigned partition, each
//!   committing its consumed offset in the same PostgreSQL transaction as its writes.

pub mod admin;
pub mod client_log;
pub mod codec;
pub mod consumer;
pub mod dead_letters;
pub mod envelope;
pub mod fence;
pub mod lag;
pub mod offsets;
pub mod options;
pub mod partition;
pub mod producer;
pub mod reader;
pub mod record;
pub mod spool;
#[cfg(test)]
mod test_support;

pub use codec::{Codec, CodecError, CodecKind};
pub use envelope::{Envelope, EventHeaders};
pub use options::JournalOptions;
pub use partition::{murmur2, partition_for};
pub use producer::{AppendReceipt, JournalError, JournalProducer};
