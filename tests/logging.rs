//! `log.format = "json"` on a real node: every line is a JSON object, each request gets
//! exactly one access line carrying its request id and route template, and secrets (the API
//! key) appear nowhere. The default text format written to a file carries no terminal
//! colour codes.

mod common;

use common::{Api, NodeProcess, TestEnv};
use serde_json::Value;

fn access_lines(log: &str, request_id: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["target"] == "payrail::access" && v["fields"]["request_id"] == request_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_access_line_per_request_with_its_request_id_and_no_secrets() {
    let env = TestEnv::new("logging").await;
    let node = NodeProcess::start(&env, &[("PAYRAIL__LOG__FORMAT", "json")]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("logging").await;

    let mut ids = Vec::new();
    for (n, body) in [
        r#"{"amount":500,"currency":"eur"}"#,
        r#"{"amount":-1,"currency":"eur"}"#,
    ]
    .iter()
    .enumerate()
    {
        let request_id = format!("log-test-{n}");
        let response = api
            .client
            .post(format!("{}/v1/payments", api.base))
            .bearer_auth(&key)
            .header("X-Request-Id", &request_id)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        assert!(response.status().as_u16() == 201 || response.status().as_u16() == 400);
        ids.push((request_id, response.status().as_u16()));
    }
    let unknown = api
        .client
        .get(format!("{}/v1/payments/pay_x/explode?secret=1", api.base))
        .header("X-Request-Id", "log-test-unknown")
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status().as_u16(), 404);

    // The access line is written after the reply; give the writer a moment.
    let path = node.log.clone();
    let log = common::eventually(std::time::Duration::from_secs(5), move || {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let done = !access_lines(&log, "log-test-unknown").is_empty();
        async move { done.then_some(log) }
    })
    .await
    .expect("access lines written");

    let node_lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!node_lines.is_empty());
    for line in &node_lines {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON line: {line}");
    }

    for (request_id, status) in &ids {
        let lines = access_lines(&log, request_id);
        assert_eq!(
            lines.len(),
            1,
            "one access line for {request_id}: {lines:?}"
        );
        let fields = &lines[0]["fields"];
        assert_eq!(fields["route"], "/v1/payments");
        assert_eq!(fields["method"], "POST");
        assert_eq!(fields["status"].as_u64(), Some(u64::from(*status)));
        assert!(fields["duration_ms"].as_f64().is_some());
    }
    let unknown = access_lines(&log, "log-test-unknown");
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        unknown[0]["fields"]["route"], "other",
        "ids and queries never label"
    );
    assert!(!log.contains("secret=1"), "the query string is not logged");
    assert!(!log.contains(&key), "the API key is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_log_written_to_a_file_has_no_terminal_colour_codes() {
    let env = TestEnv::new("logging_plain").await;
    let node = NodeProcess::start(&env, &[("PAYRAIL__LOG__FORMAT", "text")]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("plain-log").await;
    let created = api
        .create_payment(&key, None, r#"{"amount":700,"currency":"eur"}"#)
        .await;
    assert_eq!(created.status, 201, "{}", created.body);

    // The access line of the create is written after the reply; give the writer a moment.
    let path = node.log.clone();
    let log = common::eventually(std::time::Duration::from_secs(5), move || {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let done = log
            .lines()
            .any(|l| l.contains("payrail::access") && l.contains("/v1/payments"));
        async move { done.then_some(log) }
    })
    .await
    .expect("access line written");
    let coloured: Vec<&str> = log.lines().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        coloured.is_empty(),
        "{} of {} lines carry escape codes, e.g. {:?}",
        coloured.len(),
        log.lines().count(),
        coloured.first()
    );
    // Fields stay greppable as `key=value`.
    assert!(
        log.lines().any(|l| l.contains(r#"route="/v1/payments""#)),
        "no access line with route=\"/v1/payments\""
    );
}
