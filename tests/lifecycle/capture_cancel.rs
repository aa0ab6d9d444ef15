//! Manual-capture authorizations: cancelled, expired, and captured after a passivation.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_confirmation_and_of_an_authorization() {
    let w = world("cancel", &[], &[]).await;
    let early = w.create(r#"{"amount":100,"currency":"eur"}"#).await;
    let r = w
        .post(
            &format!("/v1/payments/{early}/cancel"),
            r#"{"cancellation_reason":"abandoned"}"#,
        )
        .await;
    assert_eq!(r.body["status"], "canceled", "{}", r.body);

    let held = w
        .create(r#"{"amount":100,"currency":"eur","capture_method":"manual"}"#)
        .await;
    assert_eq!(
        w.confirm(&held, "pm_card_visa").await.body["status"],
        "requires_capture"
    );
    let r = w.post(&format!("/v1/payments/{held}/cancel"), "").await;
    assert_eq!(r.body["status"], "canceled", "{}", r.body);
    let capture = w.post(&format!("/v1/payments/{held}/capture"), "").await;
    assert_eq!(capture.status, 409, "{}", capture.body);
    assert_eq!(capture.body["error"]["payment_status"], "canceled");
    assert_eq!(
        w.events_settled(&held).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.canceled"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaptured_authorization_expires() {
    let w = world(
        "expire",
        &[("PAYRAIL__PSP__AUTHORIZATION_TTL_MS", "1000")],
        &[],
    )
    .await;
    let id = w
        .create(r#"{"amount":100,"currency":"eur","capture_method":"manual"}"#)
        .await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "requires_capture"
    );
    w.wait_status(&id, "expired", Duration::from_secs(20)).await;
    assert_eq!(
        w.events_settled(&id).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.expired"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_payments_are_rebuilt_with_their_state() {
    let w = world(
        "passivation",
        &[("PAYRAIL__ACTORS__PASSIVATE_AFTER_MS", "200")],
        &[],
    )
    .await;
    let id = w
        .create(r#"{"amount":1500,"currency":"eur","capture_method":"manual"}"#)
        .await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "requires_capture"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rebuilt = w.get(&id).await;
    assert_eq!(rebuilt["status"], "requires_capture");
    assert_eq!(rebuilt["amount_capturable"], 1500);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let captured = w
        .post(&format!("/v1/payments/{id}/capture"), r#"{"amount":1000}"#)
        .await;
    assert_eq!(captured.status, 200, "{}", captured.body);
    assert_eq!(captured.body["amount_captured"], 1000);
    assert_eq!(
        w.events_settled(&id).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.succeeded"
        ]
    );
}
