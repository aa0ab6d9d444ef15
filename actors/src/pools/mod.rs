//! Subscriber pools: consumer groups whose partition workers keep read models.

pub mod analytics;
mod created;
pub mod fault;
pub mod ledger;
pub mod notification;
pub mod settlement;
