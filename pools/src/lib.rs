//! The subscriber pools: partition workers that read `payment.events` and keep the read
//! models in PostgreSQL, each event taking effect once — [`analytics`], [`ledger`],
//! [`settlement`] and [`notification`] (merchant webhooks and e-mail) — and the [`audit`]
//! that recomputes them from the journal (`payrail audit`, `payrail rebuild`).
//!
//! They read the journal and never write a payment: this crate must not know the actors
//! (`payrail-actors`), the fallback or HTTP. It knows the domain (`payrail-payment`), the
//! journal (`kafka_journal`) and supervision (`payrail-supervisor`).

pub mod analytics;
pub mod audit;
mod created;
pub mod fault;
pub mod ledger;
pub mod notification;
pub mod settlement;

/// A sum of amounts read from PostgreSQL as text, as a decode error of the read when it is
/// not one (see [`payrail_payment::money::sum_from_text`]).
pub(crate) fn stored_sum(text: &str) -> Result<i128, sqlx::Error> {
    payrail_payment::money::sum_from_text(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}
