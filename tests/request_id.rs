//! Request ids on a real node: every reply carries `X-Request-Id` (the client's when sane, a
//! new one otherwise), and a create without an Idempotency-Key journals it as its events'
//! correlation id.

mod common;

use common::chaos::journal_events;
use common::{Api, NodeProcess, TestEnv};

async fn create(api: &Api, key: &str, request_id: Option<&str>) -> (u16, Option<String>, String) {
    let mut request = api
        .client
        .post(format!("{}/v1/payments", api.base))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(r#"{"amount":250,"currency":"eur"}"#);
    if let Some(id) = request_id {
        request = request.header("X-Request-Id", id);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let echoed = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body: serde_json::Value = response.json().await.expect("body");
    (
        status,
        echoed,
        body["id"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_carries_a_request_id_and_a_create_journals_it_as_its_correlation() {
    let env = TestEnv::new("request_id").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("request-id").await;

    let (status, echoed, kept_payment) = create(&api, &key, Some("client-req-42")).await;
    assert_eq!(status, 201);
    assert_eq!(
        echoed.as_deref(),
        Some("client-req-42"),
        "a sane client id is kept"
    );

    let (status, echoed, made_payment) = create(&api, &key, None).await;
    assert_eq!(status, 201);
    let made = echoed.expect("a request id is made when none is given");
    assert!(made.starts_with("req_"), "{made}");

    let too_long = "x".repeat(65);
    let (_, echoed, _) = create(&api, &key, Some(&too_long)).await;
    let replaced = echoed.expect("request id");
    assert_ne!(replaced, too_long, "an id over 64 characters is replaced");
    assert!(replaced.starts_with("req_"));

    let health = api
        .client
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .expect("healthz");
    assert!(
        health.headers().contains_key("x-request-id"),
        "every route, not only the API"
    );

    let (events, _) = journal_events(&env.brokers, &env.topic());
    let correlation = |payment: &str| {
        events
            .iter()
            .find(|e| e.payment_id == payment)
            .and_then(|e| e.correlation_id.clone())
    };
    assert_eq!(correlation(&kept_payment).as_deref(), Some("client-req-42"));
    assert_eq!(correlation(&made_payment), Some(made));
}
