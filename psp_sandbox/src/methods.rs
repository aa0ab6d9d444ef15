//! The test payment methods the sandbox knows and the outcomes they stand for: payrail's
//! own and Stripe's documented ones (a table of data, with the look-ups over it).

use crate::objects::PaymentError;

pub(crate) const PAYMENT_METHODS: &[&str] = &[
    "pm_card_visa",
    "pm_card_declined",
    "pm_card_delayed",
    "pm_card_lost_webhook",
    "pm_card_psp_error",
];

/// Stripe's test payment methods that succeed (Stripe docs, "Testing": cards by brand).
pub const STRIPE_SUCCEEDING: &[&str] = &[
    "pm_card_visa_debit",
    "pm_card_mastercard",
    "pm_card_mastercard_debit",
    "pm_card_mastercard_prepaid",
    "pm_card_amex",
    "pm_card_discover",
    "pm_card_diners",
    "pm_card_jcb",
    "pm_card_unionpay",
];

/// Stripe's declining test payment methods, by the suffix after `pm_card_` or
/// `pm_card_visa_`: (`code`, `decline_code`, message), as Stripe answers them.
pub const STRIPE_DECLINING: &[(&str, &str, &str, &str)] = &[
    ("chargeDeclined", "card_declined", "generic_decline", "Your card was declined."),
    ("chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds", "Your card has insufficient funds."),
    ("chargeDeclinedLostCard", "card_declined", "lost_card", "Your card was declined."),
    ("chargeDeclinedStolenCard", "card_declined", "stolen_card", "Your card was declined."),
    ("chargeDeclinedFraudulent", "card_declined", "fraudulent", "Your card was declined."),
    ("chargeDeclinedVelocityLimitExceeded", "card_declined", "card_velocity_exceeded", "Your card was declined for making repeated attempts too frequently or exceeding its amount limit."),
    ("chargeDeclinedExpiredCard", "expired_card", "expired_card", "Your card has expired."),
    ("chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    ("chargeDeclinedProcessingError", "processing_error", "processing_error", "An error occurred while processing your card. Try again in a little bit."),
];

/// The decline a Stripe test payment method stands for.
pub(crate) fn stripe_decline(payment_method: &str) -> Option<PaymentError> {
    let suffix = payment_method
        .strip_prefix("pm_card_visa_")
        .or_else(|| payment_method.strip_prefix("pm_card_"))?;
    STRIPE_DECLINING
        .iter()
        .find(|(name, ..)| *name == suffix)
        .map(|(_, code, decline_code, message)| PaymentError {
            code: (*code).into(),
            decline_code: Some((*decline_code).into()),
            message: (*message).into(),
        })
}

/// Whether the sandbox knows `payment_method`.
pub(crate) fn known_payment_method(payment_method: &str) -> bool {
    PAYMENT_METHODS.contains(&payment_method)
        || STRIPE_SUCCEEDING.contains(&payment_method)
        || stripe_decline(payment_method).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_declining_test_cards_carry_stripes_codes() {
        let insufficient = stripe_decline("pm_card_visa_chargeDeclinedInsufficientFunds")
            .expect("a Stripe test card");
        assert_eq!(insufficient.code, "card_declined");
        assert_eq!(
            insufficient.decline_code.as_deref(),
            Some("insufficient_funds")
        );
        let expired =
            stripe_decline("pm_card_chargeDeclinedExpiredCard").expect("a Stripe test card");
        assert_eq!(expired.code, "expired_card");
        let generic = stripe_decline("pm_card_chargeDeclined").expect("a Stripe test card");
        assert_eq!(generic.decline_code.as_deref(), Some("generic_decline"));
    }

    #[test]
    fn stripes_brand_cards_are_known_and_made_up_ones_are_not() {
        for method in [
            "pm_card_visa",
            "pm_card_mastercard",
            "pm_card_amex",
            "pm_card_declined",
        ] {
            assert!(known_payment_method(method), "{method}");
        }
        for method in [
            "pm_card_chargeDeclinedNope",
            "pm_card_",
            "pm_card_visa_visa",
            "tok_visa",
        ] {
            assert!(!known_payment_method(method), "{method}");
        }
    }
}
