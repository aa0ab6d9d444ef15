//! `payrail dlq list|replay <pool>` against real PostgreSQL. The consumer side (poison
//! record → table and topic, replay exactly once) is tested in kafka_journal's consumer
//! tests; this checks the command's wiring to a pool, its output and its exit status.

mod common;

use common::*;
use std::process::Command;
use uuid::Uuid;

fn payrail(env: &TestEnv, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .args(args)
        .envs(env.node_env(free_port()))
        .output()
        .expect("run payrail");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_marks_applied_events_and_keeps_failing_ones() {
    let env = TestEnv::new("dlq_cli").await;
    let pool = env.migrated_pool().await;
    let consumer = format!("{}payrail.ledger", env.namespace);
    let (applied, broken) = (Uuid::now_v7(), Uuid::now_v7());
    // One dead letter whose event was applied meanwhile, one that cannot be decoded.
    sqlx::query("INSERT INTO journal_processed_events (consumer, event_id) VALUES ($1, $2)")
        .bind(&consumer)
        .bind(applied)
        .execute(&pool)
        .await
        .expect("processed");
    for (offset, event_id) in [(7_i64, applied), (8, broken)] {
        sqlx::query(
            "INSERT INTO journal_dead_letters (consumer, topic, partition, record_offset, event_id, error, value, event_type)
             VALUES ($1, $2, 0, $3, $4, 'boom', '\\x00ff'::bytea, 'payment.succeeded')",
        )
        .bind(&consumer)
        .bind(env.topic())
        .bind(offset)
        .bind(event_id)
        .execute(&pool)
        .await
        .expect("dead letter");
    }

    let (code, out) = payrail(&env, &["dlq", "list", "ledger"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 dead letters, 2 not replayed"), "{out}");
    assert!(out.contains(&broken.to_string()), "{out}");

    let (code, out) = payrail(&env, &["dlq", "replay", "ledger"]);
    assert_ne!(code, 0, "a dead letter failed again: {out}");
    assert!(
        out.contains("0 replayed, 1 already applied, 1 failed"),
        "{out}"
    );
    let (code, out) = payrail(
        &env,
        &["dlq", "replay", "ledger", "--event-id", &broken.to_string()],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("0 replayed, 0 already applied, 1 failed"),
        "{out}"
    );

    let (code, out) = payrail(&env, &["dlq", "list", "ledger"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 dead letters, 1 not replayed"), "{out}");
    let (code, out) = payrail(&env, &["dlq", "list", "unknown"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("unknown pool"), "{out}");
}
