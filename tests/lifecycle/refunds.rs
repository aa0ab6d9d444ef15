//! Captures and refunds: partial amounts that add up, and a refund retried with its key.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_capture_then_partial_capture_and_partial_refunds_add_up() {
    let w = world("manual", &[], &[]).await;
    let id = w
        .create(r#"{"amount":1000,"currency":"eur","capture_method":"manual"}"#)
        .await;
    let r = w.confirm(&id, "pm_card_visa").await;
    assert_eq!(r.body["status"], "requires_capture", "{}", r.body);
    assert_eq!(r.body["amount_capturable"], 1000);

    let over = w
        .post(&format!("/v1/payments/{id}/capture"), r#"{"amount":1001}"#)
        .await;
    assert_eq!(over.status, 400, "{}", over.body);
    assert_eq!(over.body["error"]["param"], "amount");
    let captured = w
        .post(&format!("/v1/payments/{id}/capture"), r#"{"amount":600}"#)
        .await;
    assert_eq!(captured.status, 200, "{}", captured.body);
    assert_eq!(captured.body["status"], "succeeded");
    assert_eq!(captured.body["amount_captured"], 600);

    for amount in [200, 300] {
        let refund = w
            .post(
                &format!("/v1/payments/{id}/refunds"),
                &format!(r#"{{"amount":{amount},"reason":"requested_by_customer"}}"#),
            )
            .await;
        assert_eq!(refund.status, 201, "{}", refund.body);
        assert_eq!(refund.body["object"], "refund");
        assert_eq!(refund.body["status"], "succeeded");
        assert_eq!(refund.body["amount"], amount);
    }
    let too_much = w
        .post(&format!("/v1/payments/{id}/refunds"), r#"{"amount":101}"#)
        .await;
    assert_eq!(too_much.status, 400, "{}", too_much.body);
    assert_eq!(too_much.body["error"]["code"], "amount_too_large");
    let rest = w.post(&format!("/v1/payments/{id}/refunds"), "").await;
    assert_eq!(rest.status, 201, "{}", rest.body);
    assert_eq!(rest.body["amount"], 100);

    let payment = w.get(&id).await;
    assert_eq!(payment["amount_captured"], 600);
    assert_eq!(payment["amount_refunded"], 600);
    assert_eq!(payment["refunds"].as_array().unwrap().len(), 3);
    assert_eq!(
        w.events_settled(&id).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.succeeded",
            "refund.created",
            "refund.succeeded",
            "refund.created",
            "refund.succeeded",
            "refund.created",
            "refund.succeeded"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_retried_with_the_same_key_refunds_once() {
    let w = world("refund_idem", &[], &[]).await;
    let id = w.create(r#"{"amount":800,"currency":"eur"}"#).await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "succeeded"
    );
    let path = format!("/v1/payments/{id}/refunds");
    let first = w
        .api
        .send(
            reqwest::Method::POST,
            &path,
            Some(&w.key),
            Some("refund-1"),
            Some(r#"{"amount":300}"#.into()),
        )
        .await;
    let second = w
        .api
        .send(
            reqwest::Method::POST,
            &path,
            Some(&w.key),
            Some("refund-1"),
            Some(r#"{"amount":300}"#.into()),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(w.get(&id).await["amount_refunded"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_retried_with_the_same_key_and_another_amount_is_refused() {
    let w = world("refund_idem_mismatch", &[], &[]).await;
    let id = w.create(r#"{"amount":800,"currency":"eur"}"#).await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "succeeded"
    );
    let path = format!("/v1/payments/{id}/refunds");
    let refund = |amount: &'static str| {
        w.api.send(
            reqwest::Method::POST,
            &path,
            Some(&w.key),
            Some("refund-1"),
            Some(format!(r#"{{"amount":{amount}}}"#)),
        )
    };
    let first = refund("300").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let other = refund("500").await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "idempotency_key_in_use");
    // Nothing changed: one refund of 300.
    let payment = w.get(&id).await;
    assert_eq!(payment["amount_refunded"], 300, "{payment}");
    assert_eq!(payment["refunds"].as_array().map(Vec::len), Some(1));
}
