//! The log during a journal outage (issue 22, defect 10): an operator needs one line per
//! state change (breaker opened, fallback entered, broker back) and counters, not a flood.
//! A node once wrote ~2,000 ERROR lines in a 70 s outage (librdkafka's connection refusals,
//! per client and retry, and the breaker's every probe).

mod common;

use common::outage::outage_world;
use std::collections::BTreeMap;
use std::time::Duration;

/// A log line's level and message, without the fields that change from line to line.
fn level_and_message(line: &str) -> Option<(String, String)> {
    // Plain text: the node colours its log only on a terminal.
    let level = ["ERROR", "WARN"]
        .into_iter()
        .find(|level| line.contains(&format!(" {level} ")))?;
    let after = line.split(": ").nth(1).unwrap_or(line);
    let message: String = after
        .split('=')
        .next()
        .unwrap_or(after)
        .chars()
        .take(60)
        .collect();
    Some((level.to_string(), message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_logs_state_changes_not_every_retry() {
    // The shipped breaker and replay timing, not the fast ones of the other outage tests.
    let mut w = outage_world(
        "outage_log",
        &[
            ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "2000"),
            ("PAYRAIL__SPOOL__REPLAY_INTERVAL_MS", "200"),
        ],
    )
    .await;
    w.create("before", r#"{"amount":700,"currency":"eur"}"#)
        .await;
    let log = w.node.log.clone();
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();

    w.broker.kill9();
    for n in 0..10 {
        w.create(&format!("during-{n}"), r#"{"amount":700,"currency":"eur"}"#)
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let outage = &text[before.min(text.len())..];
    let mut by_message: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in outage.lines() {
        if let Some(key) = level_and_message(line) {
            *by_message.entry(key).or_default() += 1;
        }
    }
    let total: usize = by_message.values().sum();
    eprintln!("WARN/ERROR lines in a 30 s outage: {total}");
    for ((level, message), n) in &by_message {
        eprintln!("{n:6} {level:5} {message}");
    }
    assert!(
        by_message
            .keys()
            .any(|(_, m)| m.contains("journal breaker")),
        "the breaker's opening is logged: {by_message:?}"
    );
    assert!(
        total <= 40,
        "{total} WARN/ERROR lines in a 30 s outage (at most 40): {by_message:?}"
    );
    w.broker.restart();
    w.wait_replayed(Duration::from_secs(60)).await;
    w.node.kill9();
}
