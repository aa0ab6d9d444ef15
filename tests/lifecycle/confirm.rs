//! Confirming with each test card: succeeded, declined, delayed, its webhook lost, PSP errors.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visa_succeeds_and_its_webhook_adds_no_event() {
    let w = world("visa", &[], &[]).await;
    let id = w.create(r#"{"amount":2500,"currency":"eur"}"#).await;
    let r = w.confirm(&id, "pm_card_visa").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["amount_captured"], 2500);
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_card_fails_with_its_code() {
    let w = world("declined", &[], &[]).await;
    let id = w.create(r#"{"amount":900,"currency":"usd"}"#).await;
    let r = w.confirm(&id, "pm_card_declined").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "failed");
    assert_eq!(r.body["failure_code"], "card_declined");
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.failed"]
    );
    let again = w.confirm(&id, "pm_card_visa").await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.body["error"]["payment_status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_card_stays_processing_until_its_webhook_arrives() {
    let w = world(
        "delayed",
        &[("PAYRAIL__PSP__POLL_AFTER_MS", "600000")],
        &["--outcome-delay-ms", "1500"],
    )
    .await;
    let id = w.create(r#"{"amount":1234,"currency":"gbp"}"#).await;
    let r = w.confirm(&id, "pm_card_delayed").await;
    assert_eq!(r.body["status"], "processing", "{}", r.body);
    w.wait_status(&id, "succeeded", Duration::from_secs(15))
        .await;
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_webhook_is_resolved_by_polling_the_psp() {
    let w = world("lost_webhook", &[], &["--outcome-delay-ms", "300"]).await;
    let id = w.create(r#"{"amount":4321,"currency":"eur"}"#).await;
    let r = w.confirm(&id, "pm_card_lost_webhook").await;
    assert_eq!(r.body["status"], "processing", "{}", r.body);
    let reference = r.body["processor_reference"].as_str().unwrap().to_string();
    let payment = w
        .wait_status(&id, "succeeded", Duration::from_secs(20))
        .await;
    assert_eq!(payment["amount_captured"], 4321);
    let sent = reqwest::get(format!(
        "{}/v1/test/events?payment_intent={reference}",
        w.sandbox.base
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(
        sent["data"].as_array().unwrap().len(),
        0,
        "the sandbox sent no webhook"
    );
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psp_errors_are_retried_with_the_same_idempotency_key() {
    let w = world("psp_error", &[], &["--error-count", "2"]).await;
    let id = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let r = w.confirm(&id, "pm_card_psp_error").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}
