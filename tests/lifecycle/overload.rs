//! Admission: a command past the node's or a merchant's in-flight limit is refused at once.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_the_in_flight_limit_is_refused_at_once_and_records_nothing() {
    // One command at a time, and a confirm that holds its slot while the node retries the
    // failing PSP (3 errors, 400 ms base backoff: about 2.8 s).
    let w = world(
        "overloaded",
        &[
            ("PAYRAIL__ACTORS__MAX_IN_FLIGHT_COMMANDS", "1"),
            ("PAYRAIL__PSP__RETRY_BASE_MS", "400"),
        ],
        &["--error-count", "3"],
    )
    .await;
    let id = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let confirm = {
        let api = Api::new(&w.node);
        let (key, id) = (w.key.clone(), id.clone());
        tokio::spawn(async move {
            api.send(
                reqwest::Method::POST,
                &format!("/v1/payments/{id}/confirm"),
                Some(&key),
                None,
                Some(r#"{"payment_method":"pm_card_psp_error"}"#.to_string()),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let refused = w
        .api
        .create_payment(&w.key, Some("shed-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["code"], "node_overloaded",
        "{}",
        refused.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not after a wait"
    );

    let confirmed = confirm.await.expect("confirm task");
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    assert_eq!(confirmed.body["status"], "succeeded");
    // Nothing was recorded for the refused create: the same key now creates the payment.
    let created = w
        .api
        .create_payment(&w.key, Some("shed-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let records = read_journal(&w.env.brokers, &w.env.topic(), PARTITIONS);
    let creates = records
        .iter()
        .filter(|r| r.headers.get("event_type").map(String::as_str) == Some("payment.created"))
        .count();
    assert_eq!(creates, 2, "the first payment and the retried create only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_past_its_in_flight_quota_is_refused_while_another_is_served() {
    // One command per merchant at a time, ten for the node; A's confirm holds A's slot
    // while the node retries the failing PSP (about 2.8 s).
    let w = world(
        "merchant_quota",
        &[
            ("PAYRAIL__ACTORS__MAX_IN_FLIGHT_COMMANDS", "10"),
            ("PAYRAIL__ACTORS__MAX_IN_FLIGHT_COMMANDS_PER_MERCHANT", "1"),
            ("PAYRAIL__PSP__RETRY_BASE_MS", "400"),
        ],
        &["--error-count", "3"],
    )
    .await;
    let id = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let confirm = {
        let api = Api::new(&w.node);
        let (key, id) = (w.key.clone(), id.clone());
        tokio::spawn(async move {
            api.send(
                reqwest::Method::POST,
                &format!("/v1/payments/{id}/confirm"),
                Some(&key),
                None,
                Some(r#"{"payment_method":"pm_card_psp_error"}"#.to_string()),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = w
        .api
        .create_payment(&w.key, Some("quota-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["code"], "rate_limit",
        "{}",
        refused.body
    );
    // Another merchant is served meanwhile: A's load does not take the node.
    let (_, other_key) = w.api.merchant("Other").await;
    let other = w
        .api
        .create_payment(&other_key, None, r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(other.status, 201, "{}", other.body);
    assert!(!confirm.is_finished(), "A's confirm still held its slot");

    assert_eq!(confirm.await.expect("confirm task").status, 200);
    let created = w
        .api
        .create_payment(&w.key, Some("quota-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(
        created.status, 201,
        "nothing was recorded for the refused create: {}",
        created.body
    );
}
