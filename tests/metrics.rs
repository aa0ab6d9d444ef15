//! `GET /metrics` on a real node (real broker and PostgreSQL): the counts it reports agree
//! with the requests made, and it needs the admin token.

mod common;

use common::{Api, NodeProcess, TestEnv, ADMIN_TOKEN, PARTITIONS};
use std::collections::BTreeMap;

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once("=\"")?;
                            Some((k.to_string(), v.trim_end_matches('"').to_string()))
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Some((name, labels, value))
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_requests_made_and_need_the_admin_token() {
    let env = TestEnv::new("metrics").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("metrics").await;
    for n in 0..7 {
        let reply = api
            .create_payment(
                &key,
                Some(&format!("m-{n}")),
                r#"{"amount":100,"currency":"eur"}"#,
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    for _ in 0..2 {
        let reply = api
            .create_payment(&key, None, r#"{"amount":-1,"currency":"eur"}"#)
            .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
    }

    let refused = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("scrape");
    assert_eq!(
        refused.status().as_u16(),
        401,
        "/metrics needs the admin token"
    );

    let response = api
        .client
        .get(format!("{}/metrics", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("metrics text");
    let samples = parse(&text);
    let created = [
        ("method", "POST"),
        ("route", "/v1/payments"),
        ("status", "201"),
    ];
    assert_eq!(
        value(&samples, "payrail_http_requests_total", &created),
        Some(7.0),
        "{text}"
    );
    let refused = [
        ("method", "POST"),
        ("route", "/v1/payments"),
        ("status", "400"),
    ];
    assert_eq!(
        value(&samples, "payrail_http_requests_total", &refused),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "payrail_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/payments")]
        ),
        Some(9.0)
    );
    let appended = value(
        &samples,
        "payrail_journal_append_duration_seconds_count",
        &[("outcome", "ok")],
    )
    .expect("journal append histogram");
    assert!(appended >= 7.0, "{appended} appends for 7 creates");
    assert_eq!(
        value(&samples, "payrail_journal_breaker_state", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "payrail_partitions_owned", &[]),
        Some(f64::from(PARTITIONS))
    );
    assert_eq!(
        value(&samples, "payrail_spool_rows", &[("partition", "0")]),
        Some(0.0)
    );
    assert!(
        value(&samples, "payrail_db_connections", &[("state", "open")]).is_some_and(|n| n >= 1.0)
    );
}
