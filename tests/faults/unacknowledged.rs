//! A create whose outcome the node never learned (broker hung, ack lost) and its retries: one id.

use super::*;
use crate::common::proxy::LossyProxy;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The defect: an append that timed out (broker hung) was forgotten with its key, and the
/// client's retry created a second payment. Now every try of a key is the same payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_timed_out_and_its_retries_are_one_payment() {
    let (env, broker, node) = private_setup(
        "faults_hung_create",
        &[
            ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "1000"),
            ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "300"),
            ("PAYRAIL__SPOOL__MAX_ROWS", "0"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Hung").await;
    let body = r#"{"amount":1500,"currency":"eur"}"#;
    let warm = api.create_payment(&key, Some("warm-up"), body).await;
    assert_eq!(warm.status, 201, "{}", warm.body);

    broker.pause();
    let during = api.create_payment(&key, Some("order-1"), body).await;
    assert_eq!(during.status, 503, "{}", during.body);
    assert!(
        ["journal_outcome_unknown", "journal_unavailable"]
            .contains(&during.body["error"]["code"].as_str().unwrap_or("")),
        "{}",
        during.body
    );
    // The broker holds the request in its socket; resuming it may still write it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.resume();

    let mut ids = BTreeSet::new();
    let acknowledged = eventually(Duration::from_secs(40), || {
        let api = api.clone();
        let key = key.clone();
        async move {
            let r = api.create_payment(&key, Some("order-1"), body).await;
            (r.status == 201 || r.status == 200).then_some(r.body)
        }
    })
    .await
    .unwrap_or_else(|| panic!("the retry is acknowledged: {}", node.log_tail()));
    ids.insert(acknowledged["id"].as_str().unwrap_or_default().to_string());
    // More retries of the same key answer the same payment.
    for _ in 0..3 {
        let again = api.create_payment(&key, Some("order-1"), body).await;
        assert!(again.status < 300, "{}", again.body);
        ids.insert(again.body["id"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(ids.len(), 1, "one payment id in the responses: {ids:?}");

    let in_journal: BTreeSet<String> = journal_events(&env.brokers, &env.topic())
        .into_iter()
        .filter(|e| e.merchant_id == merchant_id)
        .filter(|e| matches!(&e.payload, PaymentEvent::Created(c) if c.idempotency_key.as_deref() == Some("order-1")))
        .map(|e| e.payment_id)
        .collect();
    assert_eq!(in_journal, ids, "one payment id for the key in the journal");

    let listed = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let key = key.clone();
        async move {
            let r = api
                .send(
                    reqwest::Method::GET,
                    "/v1/payments?limit=100",
                    Some(&key),
                    None,
                    None,
                )
                .await;
            let data = r.body["data"].as_array().cloned().unwrap_or_default();
            (data.len() >= 2).then_some(data)
        }
    })
    .await
    .expect("the list shows the payments");
    let listed_for_key: Vec<_> = listed
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| ids.contains(id)))
        .collect();
    assert_eq!(
        listed_for_key.len(),
        1,
        "one payment for the key in the list: {listed:?}"
    );
    assert_eq!(
        listed.len(),
        2,
        "warm-up + order-1, nothing else: {listed:?}"
    );
}

/// The same defect made deterministic: a proxy loses the broker's answers, so the create is
/// written but never acknowledged. The producer's connection heals first while the node's
/// snapshot projector stays behind (its answers are still lost), and the client retries at
/// once: the retry must not create a second payment while the first record is unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_acknowledgement_was_lost_and_its_retry_are_one_payment() {
    let mut env = TestEnv::new("faults_lost_ack").await;
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let broker_port = free_port();
    let proxy = LossyProxy::start(broker_port).await;
    let _broker = PrivateBroker::start_advertising(&broker_dir, broker_port, proxy.port);
    env.brokers = format!("127.0.0.1:{}", proxy.port);
    let node = NodeProcess::start(
        &env,
        &[
            ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "1000"),
            ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "100"),
            ("PAYRAIL__ACTORS__REBUILD_TIMEOUT_MS", "500"),
            ("PAYRAIL__SPOOL__MAX_ROWS", "0"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("LostAck").await;
    let body = r#"{"amount":2500,"currency":"eur"}"#;
    assert_eq!(
        api.create_payment(&key, Some("warm-up"), body).await.status,
        201
    );

    proxy.lose_answers();
    let lost = api.create_payment(&key, Some("lost-ack"), body).await;
    assert_eq!(lost.status, 503, "{}", lost.body);
    assert_eq!(
        lost.body["error"]["code"], "journal_outcome_unknown",
        "{}",
        lost.body
    );
    assert!(proxy.dropped_bytes() > 0, "the broker's answers were lost");
    proxy.heal_producers();

    // Retries while the projector is still behind: none may create a second payment.
    let mut answered = BTreeSet::new();
    let retry_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < retry_until {
        let r = api.create_payment(&key, Some("lost-ack"), body).await;
        if r.status < 300 {
            answered.insert(r.body["id"].as_str().unwrap_or_default().to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.heal();
    let settled = eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let key = key.clone();
        async move {
            let r = api.create_payment(&key, Some("lost-ack"), body).await;
            (r.status < 300).then_some(r.body)
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "acknowledged once the journal is readable: {}",
            node.log_tail()
        )
    });
    answered.insert(settled["id"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        answered.len(),
        1,
        "one payment id in the responses: {answered:?}"
    );
    let ids: BTreeSet<String> = journal_events(&env.brokers, &env.topic())
        .into_iter()
        .filter(|e| e.merchant_id == merchant_id)
        .filter(|e| matches!(&e.payload, PaymentEvent::Created(c) if c.idempotency_key.as_deref() == Some("lost-ack")))
        .map(|e| e.payment_id)
        .collect();
    assert_eq!(ids, answered, "one payment id for the key in the journal");
}
