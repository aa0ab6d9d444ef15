//! `payrail loadtest` against a real node (real broker, real PostgreSQL), and
//! `payrail bench journal` against the real broker.

mod common;

use common::*;
use serde_json::Value;
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
    assert_eq!(
        records.len() as u64,
        total_ok,
        "the test's journal holds only the load test's creates"
    );
    // The node's five consumers were sampled: each applied at least the measured phase's
    // creates (their records are appended after the start snapshot) and at most the whole
    // run's, and caught up after the load.
    let pools = report["pools"].as_array().expect("pools in the report");
    assert_eq!(pools.len(), 5, "{report}");
    for pool in pools {
        let applied = pool["applied"].as_u64().expect("applied");
        assert!(
            applied >= report["ok"].as_u64().unwrap() && applied <= total_ok,
            "{pool}"
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

#[test]
fn lifecycle_and_mixed_scenarios_fail_clearly_until_the_server_has_them() {
    for scenario in ["lifecycle", "mixed"] {
        let output = payrail(&[
            "loadtest",
            "--target",
            "http://127.0.0.1:9",
            "--admin-token",
            ADMIN_TOKEN,
            "--scenario",
            scenario,
        ]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("scenario `{scenario}` is not available yet")),
            "{stderr}"
        );
        assert!(output.stdout.is_empty());
    }
}
