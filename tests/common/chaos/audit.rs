//! `payrail audit` as a process, and which payment ids the journal and the list API hold per key.

use super::super::{free_port, read_journal, TestEnv, PARTITIONS};
use kafka_journal::codec::{Codec, CodecKind};
use kafka_journal::Envelope;
use payrail_actors::payment::PaymentEvent;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Runs `payrail audit` with the test's node environment: (clean, differences, output).
pub fn audit(env: &TestEnv) -> (bool, Option<u64>, String) {
    audit_with(env, &[])
}

/// [`audit`] with settings of its own on top of the node environment (e.g. the partitions).
pub fn audit_with(env: &TestEnv, extra: &[(&str, &str)]) -> (bool, Option<u64>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .arg("audit")
        .envs(env.node_env(free_port()))
        .envs(extra.iter().copied())
        .output()
        .expect("run payrail audit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let differences = text
        .lines()
        .find_map(|l| l.strip_prefix("audit: ")?.strip_suffix(" differences"))
        .and_then(|n| n.trim().parse().ok());
    (output.status.success(), differences, text)
}

/// Every decodable payment event in the journal (independent rdkafka reader).
pub fn journal_events(brokers: &str, topic: &str) -> (Vec<Envelope<PaymentEvent>>, usize) {
    journal_events_in(brokers, topic, PARTITIONS)
}

/// [`journal_events`] of a topic with `partitions` partitions (a cluster test's).
pub fn journal_events_in(
    brokers: &str,
    topic: &str,
    partitions: u32,
) -> (Vec<Envelope<PaymentEvent>>, usize) {
    let records = read_journal(brokers, topic, partitions);
    let total = records.len();
    let events = records
        .into_iter()
        .filter_map(|r| {
            let codec = CodecKind::from_content_type(r.headers.get("content_type")?).ok()?;
            codec.decode(&r.value).ok()
        })
        .collect();
    (events, total)
}

/// `payment.created` in the journal: (merchant, idempotency key) → payment ids, and how
/// many created records there were in all (a repeated create of one id counts each time).
pub fn journal_creates(
    events: &[Envelope<PaymentEvent>],
) -> (BTreeMap<(String, String), BTreeSet<String>>, usize) {
    let mut by_key: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut records = 0;
    for e in events {
        if let PaymentEvent::Created(c) = &e.payload {
            records += 1;
            let key = c.idempotency_key.clone().unwrap_or_default();
            by_key
                .entry((e.merchant_id.clone(), key))
                .or_default()
                .insert(e.payment_id.clone());
        }
    }
    (by_key, records)
}

/// Every payment id of the merchant from `GET /v1/payments`, paging with `starting_after`.
pub async fn list_all(client: &reqwest::Client, base: &str, api_key: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("{base}/v1/payments?limit=100");
        if let Some(a) = &after {
            url.push_str(&format!("&starting_after={a}"));
        }
        let response = client
            .get(&url)
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("list body");
        assert_eq!(status, 200, "GET {url}: {body}");
        let page: Vec<String> = body["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|p| p["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let has_more = body["has_more"].as_bool().unwrap_or(false);
        after = page.last().cloned();
        ids.extend(page);
        if !has_more || after.is_none() {
            return ids;
        }
    }
    panic!("list paging did not end after 10,000 pages");
}
