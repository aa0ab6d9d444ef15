//! `POST /internal/v1/events` (fallback delivery between nodes) over real HTTP: refused
//! without the cluster secret or with a wrong one, a malformed batch is a 400 error object,
//! and a valid batch is answered with how far the pools took it.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "internal-api-cluster-secret-0123456789";

async fn post(node: &NodeProcess, secret: Option<&str>, body: String) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/internal/v1/events", node.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(secret) = secret {
        request = request.header("x-payrail-cluster-secret", secret);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_error(status: StatusCode, body: &Value, expected: u16) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert!(body["error"]["type"].is_string(), "an error object: {body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_events_need_the_cluster_secret_and_a_valid_batch() {
    let env = TestEnv::new("internal_api").await;
    let node = NodeProcess::start(&env, &[("PAYRAIL__CLUSTER__SECRET", SECRET)]).await;
    let valid = json!({
        "topic": env.topic(),
        "partition": 0,
        "high_watermark_at_start": 0,
        "events": [],
    })
    .to_string();

    let (status, body) = post(&node, None, valid.clone()).await;
    assert_error(status, &body, 401);
    let (status, body) = post(
        &node,
        Some("internal-api-cluster-secret-0123456780"),
        valid.clone(),
    )
    .await;
    assert_error(status, &body, 401);
    let (status, body) = post(&node, Some(ADMIN_TOKEN), valid.clone()).await;
    assert_error(status, &body, 401);

    let (status, body) = post(&node, Some(SECRET), "{not json".into()).await;
    assert_error(status, &body, 400);
    let wrong_topic = json!({
        "topic": "someone-else.payment.events",
        "partition": 0,
        "high_watermark_at_start": 0,
        "events": [],
    })
    .to_string();
    let (status, body) = post(&node, Some(SECRET), wrong_topic).await;
    assert_error(status, &body, 400);
    let bad_partition = json!({
        "topic": env.topic(),
        "partition": PARTITIONS,
        "high_watermark_at_start": 0,
        "events": [],
    })
    .to_string();
    let (status, body) = post(&node, Some(SECRET), bad_partition).await;
    assert_error(status, &body, 400);
    // The valid batch's fields in an array: serde would fill the struct positionally.
    let positional = json!([env.topic(), 0, 0, null, null, []]).to_string();
    let (status, body) = post(&node, Some(SECRET), positional).await;
    assert_error(status, &body, 400);
    assert_eq!(body["error"]["code"], "invalid_event_batch", "{body}");

    // Well-formed, but for a partition in no journal outage: nothing of it is the spool's.
    let (status, body) = post(&node, Some(SECRET), valid).await;
    assert_error(status, &body, 400);
    assert_eq!(body["error"]["code"], "invalid_event_batch", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_batch_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new("internal_unauth").await;
    let node = NodeProcess::start(&env, &[("PAYRAIL__CLUSTER__SECRET", SECRET)]).await;
    // Announce 8 MiB, send none of it: the answer comes from the headers alone.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
        .await
        .expect("connect");
    let head = format!(
        "POST /internal/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        node.port,
        8 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("headers");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("authentication_error"), "{answer}");
}
