//! `payrail loadtest` against a real node (real broker, real PostgreSQL), and
//! `payrail bench journal` against the real broker.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

fn payrail(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payrail"))
        .args(args)
        .env("RUST_LOG", "warn,librdkafka=error,rdkafka=error")
        .stdin(Stdio::null())
        .output()
        .expect("run payrail")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "payrail failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_creates_are_all_in_the_journal_and_the_report_counts_them() {
    let env = TestEnv::new("loadtest_create").await;
    let node = NodeProcess::start(&env, &[]).await;
    let output = tokio::task::spawn_blocking({
        let base = node.base.clone();
        move || {
            payrail(&[
                "loadtest",
                "--target",
                &base,
                "--admin-token",
                ADMIN_TOKEN,
                "--duration",
                "3",
                "--warmup",
                "1",
                "--connections",
                "4",
                "--merchants",
                "20",
                "--skew",
                "1.0",
                "--json",
            ])
        }
    })
    .await
    .unwrap();
    let report = json_of(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ok/s"),
        "a progress line on stderr: {stderr}"
    );

    assert_eq!(report["command"], "loadtest");
    assert_eq!(report["scenario"], "create");
    assert_eq!(report["mode"], "closed");
    assert_eq!(report["connections"], 4);
    assert!(
        report["throughput_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["total"]["errors"], 0, "no errors in warm-up either");
    let latency = &report["latency_us"];
    assert!(latency["p50"].as_u64().unwrap() > 0);
    assert!(latency["p50"].as_u64() <= latency["p99"].as_u64());
    assert!(latency["p99"].as_u64() <= latency["max"].as_u64());

    // Every reported success is a payment.created in the journal, per merchant, and nothing
    // else is there for these merchants.
    let total_ok = report["total"]["ok"].as_u64().unwrap();
    assert_eq!(report["total"]["ok_by_kind"]["create"], total_ok);
    assert!(
        total_ok >= report["ok"].as_u64().unwrap(),
        "the whole run includes the measured phase"
    );
    let merchants = report["merchants"].as_array().unwrap();
    assert_eq!(merchants.len(), 20);
    let records = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    let mut journaled = 0u64;
    for m in merchants {
        let id = m["id"].as_str().unwrap();
        let created = created_for(&records, id).len() as u64;
        assert_eq!(created, m["ok"].as_u64().unwrap(), "merchant {id}");
        journaled += created;
    }
    assert_eq!(journaled, total_ok);
    // Besides the node's start markers (one per partition).
    let events = records
        .iter()
        .filter(|r| r.headers["event_type"] != kafka_journal::fence::OWNER_CHANGED)
        .count();
    assert_eq!(
        events as u64, total_ok,
        "the test's journal holds only the load test's creates"
    );
    // The node's five consumers were sampled: each applied at most the whole run's creates
    // and nearly all of the measured phase's (the start snapshot is taken over HTTP just
    // after the measured phase begins, so records applied in that moment fall before it),
    // and caught up after the load.
    let pools = report["pools"].as_array().expect("pools in the report");
    assert_eq!(pools.len(), 5, "{report}");
    let measured_ok = report["ok"].as_u64().unwrap();
    for pool in pools {
        let applied = pool["applied"].as_u64().expect("applied");
        assert!(
            applied * 10 >= measured_ok * 9 && applied <= total_ok,
            "{pool}: measured {measured_ok}, whole run {total_ok}"
        );
        assert!(pool["caught_up_after_ms"].is_u64(), "{pool}");
        assert!(pool["p99_le_ms"].is_u64(), "{pool}");
    }
    // With skew 1 the top-ranked merchant gets the most traffic.
    let top = merchants[0]["ok"].as_u64().unwrap();
    let last = merchants[19]["ok"].as_u64().unwrap();
    assert!(top > last, "zipf skew: top {top} vs last {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_journal_appends_to_its_own_topic() {
    let brokers = brokers();
    let output = tokio::task::spawn_blocking(move || {
        payrail(&[
            "bench",
            "journal",
            "--brokers",
            &brokers,
            "--duration",
            "2",
            "--warmup",
            "1",
            "--connections",
            "4",
            "--json",
        ])
    })
    .await
    .unwrap();
    let report = json_of(&output);
    assert_eq!(report["command"], "bench journal");
    assert!(
        report["throughput_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    for p in ["p50", "p99", "max"] {
        assert!(
            report["latency_us"][p].as_u64().unwrap() > 0,
            "latency_us.{p}"
        );
    }
    let topic = report["details"]["topic"].as_str().unwrap();
    assert!(
        topic.starts_with("bench-") && topic.ends_with(".payment.events"),
        "{topic}"
    );
}

/// `payrail loadtest --scenario <scenario>` against `base`: tiny and bounded (the shared
/// broker must not be overloaded), parsed from `--json`.
async fn scenario_loadtest(base: &str, scenario: &str, connections: u32, max: u32) -> Value {
    let args: Vec<String> = [
        "loadtest",
        "--target",
        base,
        "--admin-token",
        ADMIN_TOKEN,
        "--scenario",
        scenario,
        "--connections",
        &connections.to_string(),
        "--max-requests",
        &max.to_string(),
        "--duration",
        "30",
        "--warmup",
        "1",
        "--merchants",
        "5",
        "--json",
        "--no-progress",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        payrail(&args)
    })
    .await
    .unwrap();
    let report = json_of(&output);
    assert_eq!(report["scenario"], scenario);
    assert_eq!(report["total"]["errors"], 0, "{report}");
    assert_eq!(
        report["total"]["requests"].as_u64(),
        Some(u64::from(max)),
        "--max-requests bounds every HTTP request: {report}"
    );
    report
}

/// Successful requests of `kind` over the whole run (warm-up included).
fn ok_of(report: &Value, kind: &str) -> u64 {
    report["total"]["ok_by_kind"][kind].as_u64().unwrap_or(0)
}

/// How many events of each type the test's journal holds.
fn event_counts(env: &TestEnv) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in read_journal(&env.brokers, &env.topic(), PARTITIONS) {
        let kind = record
            .headers
            .get("event_type")
            .cloned()
            .unwrap_or_default();
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

fn count(counts: &BTreeMap<String, u64>, event_type: &str) -> u64 {
    counts.get(event_type).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_lifecycle_creates_confirms_captures_and_refunds_in_the_journal() {
    let env = TestEnv::new("loadtest_lifecycle").await;
    let (node, _sandbox) = node_with_sandbox(&env).await;
    let report = scenario_loadtest(&node.base, "lifecycle", 3, 120).await;

    let kinds = ["create", "confirm", "capture", "refund"];
    for kind in kinds {
        assert!(ok_of(&report, kind) > 0, "{kind}: {report}");
    }
    // Each step follows a successful one; only the request budget may cut the last
    // iterations short (at most one per connection).
    for pair in kinds.windows(2) {
        let (before, after) = (ok_of(&report, pair[0]), ok_of(&report, pair[1]));
        assert!(before >= after && before - after <= 3, "{pair:?}: {report}");
    }
    for (_, k) in report["kinds"].as_object().unwrap() {
        assert_eq!(k["errors"], 0, "{report}");
        let l = &k["latency_us"];
        assert!(l["p50"].as_u64() <= l["p999"].as_u64());
        assert!(l["p999"].as_u64() <= l["max"].as_u64());
    }
    assert!(
        report["kinds"].get("webhook_wait").is_none(),
        "pm_card_visa answers at once: {report}"
    );

    // What the report counts really happened, event by event.
    let events = event_counts(&env);
    assert_eq!(count(&events, "payment.created"), ok_of(&report, "create"));
    assert_eq!(
        count(&events, "payment.processing"),
        ok_of(&report, "confirm")
    );
    assert_eq!(
        count(&events, "payment.authorized"),
        ok_of(&report, "confirm")
    );
    assert_eq!(
        count(&events, "payment.succeeded"),
        ok_of(&report, "capture")
    );
    assert_eq!(count(&events, "refund.created"), ok_of(&report, "refund"));
    assert_eq!(count(&events, "payment.failed"), 0, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_mixed_sends_every_kind_of_the_mix() {
    let env = TestEnv::new("loadtest_mixed").await;
    let (node, _sandbox) = node_with_sandbox(&env).await;
    let report = scenario_loadtest(&node.base, "mixed", 4, 300).await;

    for kind in ["create", "confirm", "capture", "refund", "get", "list"] {
        assert!(ok_of(&report, kind) > 0, "{kind}: {report}");
    }
    assert_eq!(
        report["details"]["mix_weights"],
        "create 50, lifecycle 15, create_confirm 15, get 15, list 5"
    );
    // Half the iterations are plain creates, so creates dominate.
    assert!(
        ok_of(&report, "create") > ok_of(&report, "confirm"),
        "{report}"
    );

    let events = event_counts(&env);
    assert_eq!(count(&events, "payment.created"), ok_of(&report, "create"));
    assert_eq!(
        count(&events, "payment.processing"),
        ok_of(&report, "confirm")
    );
    assert_eq!(count(&events, "refund.created"), ok_of(&report, "refund"));
    // Confirms with manual capture are authorized and succeed on capture; the others
    // (automatic capture) succeed at once: both kinds of confirm were sent.
    let authorized = count(&events, "payment.authorized");
    let automatic = ok_of(&report, "confirm") - authorized;
    assert!(authorized > 0 && automatic > 0, "{events:?}");
    assert_eq!(
        count(&events, "payment.succeeded"),
        ok_of(&report, "capture") + automatic,
        "{events:?}"
    );
}

/// The Stripe-compatible create (issue 26) under the load generator: every request is a
/// form-encoded `POST /v1/payment_intents` answered 200, and each is one journaled payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_stripe_create_journals_one_payment_per_acknowledged_intent() {
    let env = TestEnv::new("loadtest_stripe").await;
    let node = NodeProcess::start(&env, &[]).await;
    let report = scenario_loadtest(&node.base, "stripe-create", 3, 90).await;
    assert_eq!(ok_of(&report, "create"), 90, "{report}");
    let events = event_counts(&env);
    assert_eq!(count(&events, "payment.created"), 90, "{events:?}");
}

/// The `read` scenario (the node's per-request floor in BENCHMARKS): each connection creates
/// one payment, then only reads its own payment back; every read answers that payment and
/// journals nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_read_reads_each_connections_payment_and_journals_only_its_creates() {
    let env = TestEnv::new("loadtest_read").await;
    let node = NodeProcess::start(&env, &[]).await;
    let report = scenario_loadtest(&node.base, "read", 3, 90).await;
    assert_eq!(
        ok_of(&report, "create"),
        3,
        "one create per connection: {report}"
    );
    assert_eq!(ok_of(&report, "get"), 87, "{report}");
    assert_eq!(report["total"]["errors"], 0, "{report}");
    let events = event_counts(&env);
    assert_eq!(count(&events, "payment.created"), 3, "{events:?}");
    // Besides the creates only the node's start markers (no event type of a payment).
    let payment_events: u64 = events
        .iter()
        .filter(|(kind, _)| kind.starts_with("payment.") || kind.starts_with("refund."))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(payment_events, 3, "reads journal nothing: {events:?}");
}
