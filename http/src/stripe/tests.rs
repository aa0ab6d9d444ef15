use super::operations::page_of;
use super::*;

#[test]
fn a_refund_id_made_here_names_its_payment_and_a_native_one_does_not() {
    let payment = format!("pay_{}", "ab".repeat(16));
    let keyed = refund_id_for(&payment, Some("k1"));
    assert_eq!(keyed, refund_id_for(&payment, Some("k1")));
    assert_ne!(keyed, refund_id_for(&payment, Some("k2")));
    assert_eq!(payment_in_refund_id(&keyed), Some(payment.clone()));
    let fresh = refund_id_for(&payment, None);
    assert_eq!(payment_in_refund_id(&fresh), Some(payment));
    assert_eq!(
        payment_in_refund_id(&format!("re_{}", "c".repeat(32))),
        None
    );
    assert_eq!(payment_in_refund_id("re_xyz"), None);
}

#[test]
fn a_page_of_a_payments_refunds_follows_stripes_cursors() {
    let ids = ["r5", "r4", "r3", "r2", "r1"];
    let page = |cursor| page_of(&ids, |id| id, 2, cursor);
    assert_eq!(page(Cursor::Newest), Some((&ids[..2], true)));
    assert_eq!(page(Cursor::After("r4")), Some((&ids[2..4], true)));
    assert_eq!(page(Cursor::After("r2")), Some((&ids[4..], false)));
    assert_eq!(page(Cursor::Before("r2")), Some((&ids[1..3], true)));
    assert_eq!(page(Cursor::Before("r4")), Some((&ids[..1], false)));
    assert_eq!(page(Cursor::After("r9")), None);
}

#[test]
fn payrail_parameter_names_become_the_stripe_requests() {
    let error = ApiError::invalid("email_invalid", "bad", Some("customer_email"));
    let error = stripe_error(error, &[("customer_email", "receipt_email")]);
    assert_eq!(error.param.as_deref(), Some("receipt_email"));
    assert_eq!(error.status, 400);
}

#[test]
fn a_missing_payment_is_no_such_payment_intent_naming_the_param() {
    let error = command_error(CommandError::NotFound, "intent");
    assert_eq!(error.status, 404);
    assert_eq!(error.param.as_deref(), Some("intent"));
    assert_eq!(error.message, "No such payment_intent");
}
