//! The circuit breaker: opened by timed-out appends at its threshold, or by a dead broker.

use super::*;
use std::time::{Duration, Instant};

/// Consecutive timed-out appends open the breaker at the threshold, and from then on
/// commands are refused at once (nothing recorded) instead of each waiting for a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_appends_open_the_breaker_at_the_threshold() {
    let (_env, broker, node) = private_setup(
        "faults_breaker_threshold",
        &[
            ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "800"),
            ("PAYRAIL__SUPERVISOR__BREAKER_FAILURE_THRESHOLD", "2"),
            ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "60000"),
            ("PAYRAIL__SPOOL__MAX_ROWS", "0"),
        ],
    )
    .await;
    let api = Api::new(&node);
    // One merchant per append: after an unknown outcome a merchant first needs the
    // journal's end (503 while the broker hangs), which would not reach the breaker.
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(api.merchant(&format!("Breaker{i}")).await.1);
    }
    let body = r#"{"amount":100,"currency":"usd"}"#;
    for key in &keys {
        assert_eq!(api.create_payment(key, Some("ok"), body).await.status, 201);
    }
    assert_eq!(readyz(&api).await.body["breaker"], "closed");

    broker.pause();
    for (i, key) in keys.iter().take(2).enumerate() {
        let r = api
            .create_payment(key, Some(&format!("hung-{i}")), body)
            .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(
            r.body["error"]["code"], "journal_outcome_unknown",
            "{}",
            r.body
        );
    }
    let started = Instant::now();
    let refused = api.create_payment(&keys[2], Some("refused"), body).await;
    let took = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["code"], "journal_unavailable",
        "{}",
        refused.body
    );
    assert!(
        took < Duration::from_millis(500),
        "refused at once, took {took:?}"
    );
    broker.resume();
    let ready = readyz(&api).await;
    assert_eq!(ready.body["breaker"], "open", "{}", ready.body);
    assert_eq!(ready.body["breaker_transitions"], 1, "{}", ready.body);
}

/// All brokers down is a client-wide error: it opens the breaker at once, before any append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_opens_the_breaker_without_any_append() {
    let (_env, mut broker, node) = private_setup(
        "faults_breaker_dead",
        &[("PAYRAIL__SUPERVISOR__BREAKER_FAILURE_THRESHOLD", "1000")],
    )
    .await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("Dead").await;
    assert_eq!(
        api.create_payment(&key, Some("ok"), r#"{"amount":100,"currency":"usd"}"#)
            .await
            .status,
        201
    );
    broker.kill9();
    let opened = eventually(Duration::from_secs(20), || {
        let api = api.clone();
        async move {
            let r = readyz(&api).await;
            (r.body["breaker"] == "open").then_some(r.body)
        }
    })
    .await;
    assert!(opened.is_some(), "breaker open: {}", node.log_tail());
}
