//! The payment domain, pure: the state machine ([`machine`]: `decide(state, command) ->
//! events`, `evolve(state, event) -> state`), its events ([`events`]), money ([`money`]:
//! integer minor units, ISO-4217), the API view of a payment ([`view`]) and what a
//! payment-keyed read model does with the next event ([`projection`]).
//!
//! It must not know how it is hosted or stored: no tokio, sqlx, rdkafka or HTTP here (CI
//! checks it with `cargo tree`). The actors (`payrail-actors`) host it; the pools
//! (`payrail-pools`) read its events.

pub mod events;
pub mod machine;
pub mod money;
pub mod projection;
pub mod view;

pub use events::{CaptureMethod, PaymentCreated, PaymentEvent};
pub use machine::{
    decide, evolve, Command, CreatePayment, Outcome, Payment, PaymentStatus, Refund, RefundStatus,
    Refusal,
};
pub use view::{PaymentView, RefundView};

/// Namespace of payment ids derived from idempotency keys (UUIDv5).
const KEYED_PAYMENT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5e0f_3a1c_9b7d_4c2e_8a61_f0d4_27b9_c3e5);

/// The payment id of a create made under `key` by `merchant_id`: the same for every try of
/// that key, on any node, so a retry after an ambiguous failure (an append that timed out,
/// a node killed mid-request) converges on one payment instead of creating a second one.
pub fn payment_id_for_key(merchant_id: &str, key: &str) -> String {
    let mut name = Vec::with_capacity(merchant_id.len() + key.len() + 1);
    name.extend_from_slice(merchant_id.as_bytes());
    name.push(0); // merchant ids never contain NUL, so (merchant, key) pairs never collide
    name.extend_from_slice(key.as_bytes());
    format!(
        "pay_{}",
        uuid::Uuid::new_v5(&KEYED_PAYMENT_NAMESPACE, &name).simple()
    )
}

/// A payment id of a create without an idempotency key (UUIDv7: unique, time-ordered).
pub fn new_payment_id() -> String {
    format!("pay_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn a_key_always_yields_the_same_payment_id() {
        assert_eq!(
            payment_id_for_key("mer_1", "order-7"),
            payment_id_for_key("mer_1", "order-7")
        );
    }

    #[test]
    fn keys_of_different_merchants_yield_different_ids() {
        assert_ne!(
            payment_id_for_key("mer_1", "order-7"),
            payment_id_for_key("mer_2", "order-7")
        );
        assert_ne!(
            payment_id_for_key("mer_1a", "b"),
            payment_id_for_key("mer_1", "ab")
        );
    }

    #[test]
    fn keyed_ids_look_like_other_payment_ids() {
        let keyed = payment_id_for_key("mer_1", "k");
        let fresh = new_payment_id();
        assert_eq!(keyed.len(), fresh.len());
        assert!(keyed.starts_with("pay_") && keyed[4..].chars().all(|c| c.is_ascii_hexdigit()));
    }
}
