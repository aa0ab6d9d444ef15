//! Crash recovery and exactly-once read models: nodes are SIGKILLed and restarted against
//! the real broker and PostgreSQL.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_serves_the_same_payment_state() {
    let env = TestEnv::new("restart_state").await;
    let mut node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let mut keys = Vec::new();
    for name in ["R1", "R2", "R3"] {
        keys.push(api.merchant(name).await.1);
    }
    let mut before = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        for j in 0..4 {
            let body = format!(
                r#"{{"amount":{},"currency":"eur","order_no":"o-{i}-{j}","metadata":{{"n":"{j}"}}}}"#,
                100 + j
            );
            let created = api.create_payment(key, None, &body).await;
            assert_eq!(created.status, 201, "{}", created.body);
            before.push((key.clone(), created.body));
        }
    }
    node.kill9();

    let node = NodeProcess::start_on(&env, node.port, &[]).await;
    let api = Api::new(&node);
    for (key, payment) in &before {
        let after = api.get_payment(key, payment["id"].as_str().unwrap()).await;
        assert_eq!(after.status, 200, "{}", after.body);
        assert_eq!(&after.body, payment, "same state after SIGKILL and restart");
    }
}

/// Waits (bounded) until the merchant's analytics count of created payments (over the test's
/// days) equals `expected`; returns the last count seen.
async fn wait_for_count(api: &Api, key: &str, expected: i64) -> i64 {
    let reached =
        eventually(Duration::from_secs(60), || {
            let api = api.clone();
            let key = key.to_string();
            async move {
                (api.metric_total(&key, "created_count").await == expected).then_some(expected)
            }
        })
        .await;
    match reached {
        Some(n) => n,
        None => api.metric_total(key, "created_count").await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_counts_each_payment_once_across_a_sigkill_mid_stream() {
    let env = TestEnv::new("analytics_sigkill").await;
    let mut node = NodeProcess::start(&env, &[]).await;
    let port = node.port;
    let api = Api::new(&node);
    let mut merchants = Vec::new();
    for name in ["K1", "K2", "K3"] {
        merchants.push(api.merchant(name).await);
    }

    // Writers keep creating payments while the node is killed and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Vec<AtomicUsize>> =
        Arc::new((0..merchants.len()).map(|_| AtomicUsize::new(0)).collect());
    let mut writers = Vec::new();
    for w in 0..6 {
        let api = api.clone();
        let (_, key) = merchants[w % merchants.len()].clone();
        let stop = stop.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let mut attempts = 0;
            while !stop.load(Ordering::Relaxed) && attempts < 400 {
                attempts += 1;
                let body = format!(r#"{{"amount":{},"currency":"eur"}}"#, 1 + attempts);
                match api.try_create_payment(&key, &body).await {
                    Some(r) if r.status == 201 => {
                        acknowledged[w % 3].fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) | None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9();
    let before_restart: usize = acknowledged.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    assert!(
        before_restart > 0,
        "payments were acknowledged before the kill"
    );
    let node = NodeProcess::start_on(&env, port, &[]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let after_restart: usize = acknowledged.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    assert!(
        after_restart > before_restart,
        "payments were acknowledged after the restart"
    );

    let journal = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    let api = Api::new(&node);
    for (i, (merchant_id, key)) in merchants.iter().enumerate() {
        let journaled = created_for(&journal, merchant_id).len() as i64;
        let acked = acknowledged[i].load(Ordering::Relaxed) as i64;
        assert!(
            journaled >= acked,
            "every acknowledged payment is journaled ({journaled} < {acked})"
        );
        let counted = wait_for_count(&api, key, journaled).await;
        assert_eq!(
            counted, journaled,
            "analytics counts each journaled payment exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_counts_each_payment_once_after_the_group_offsets_are_reset() {
    let env = TestEnv::new("analytics_reset").await;
    let mut node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let mut merchants = Vec::new();
    for name in ["G1", "G2", "G3"] {
        merchants.push(api.merchant(name).await);
    }
    let mut expected: HashMap<String, i64> = HashMap::new();
    for (i, (merchant_id, key)) in merchants.iter().enumerate() {
        for j in 0..(5 + i) {
            let r = api
                .create_payment(
                    key,
                    None,
                    &format!(r#"{{"amount":{},"currency":"usd"}}"#, 10 + j),
                )
                .await;
            assert_eq!(r.status, 201);
            *expected.entry(merchant_id.clone()).or_default() += 1;
        }
    }
    for (merchant_id, key) in &merchants {
        assert_eq!(
            wait_for_count(&api, key, expected[merchant_id]).await,
            expected[merchant_id]
        );
    }
    node.kill9();

    // Reset the group to the start of the topic, and forget the stored positions too, so
    // every event is delivered again and only de-duplication stands between it and a
    // double count.
    let group = format!("{}payrail.analytics", env.namespace);
    reset_group_offsets(&env.brokers, &group, &env.topic(), PARTITIONS);
    let pool = env.pool().await;
    let forgotten = sqlx::query("DELETE FROM journal_offsets WHERE consumer = $1")
        .bind(&group)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert!(forgotten > 0, "analytics had stored offsets");

    let node = NodeProcess::start_on(&env, node.port, &[]).await;
    let api = Api::new(&node);
    // Every record of the topic: the payments' events and each start's owner-change markers.
    let total = read_journal(&env.brokers, &env.topic(), PARTITIONS).len() as i64;
    assert!(
        total > expected.values().sum::<i64>(),
        "the markers are in the journal too"
    );
    let redelivered = eventually(Duration::from_secs(60), || {
        let pool = pool.clone();
        let group = group.clone();
        async move {
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT sum(next_offset)::BIGINT FROM journal_offsets WHERE consumer = $1",
            )
            .bind(&group)
            .fetch_one(&pool)
            .await
            .unwrap();
            (applied == Some(total)).then_some(())
        }
    })
    .await;
    assert!(
        redelivered.is_some(),
        "the reset group consumed the whole topic again"
    );
    for (merchant_id, key) in &merchants {
        assert_eq!(
            api.metric_total(key, "created_count").await,
            expected[merchant_id],
            "no double count after the reset"
        );
    }
}

/// Every payment's snapshot and idempotency key, as comparable text.
async fn snapshot_rows(pool: &sqlx::PgPool) -> Vec<(String, i64, String, String, String)> {
    let mut rows: Vec<(String, i64, String, String, String)> = sqlx::query_as(
        "SELECT s.payment_id, s.sequence, s.status, s.state::text,
                coalesce(k.idempotency_key || ' ' || k.response::text, '')
         FROM payment_snapshots s
         LEFT JOIN idempotency_keys k ON k.payment_id = s.payment_id
         ORDER BY s.payment_id",
    )
    .fetch_all(pool)
    .await
    .expect("snapshot rows");
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_rebuilt_from_the_whole_journal_equal_the_live_ones() {
    let env = TestEnv::new("snapshot_rebuild").await;
    let mut node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("Rebuild").await;
    // Creates (first events, written in batches on replay) interleaved with cancels (second
    // events of some of the same payments), with and without idempotency keys.
    for i in 0..30 {
        let idem = (i % 2 == 0).then(|| format!("rb-{i}"));
        let r = api
            .create_payment(&key, idem.as_deref(), r#"{"amount":300,"currency":"eur"}"#)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        if i % 3 == 0 {
            let id = r.body["id"].as_str().expect("id");
            let c = api
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/payments/{id}/cancel"),
                    Some(&key),
                    None,
                    Some("{}".into()),
                )
                .await;
            assert_eq!(c.status, 200, "{}", c.body);
        }
    }
    let pool = env.pool().await;
    let live = eventually(Duration::from_secs(20), || async {
        let rows = snapshot_rows(&pool).await;
        (rows.len() == 30 && rows.iter().filter(|r| r.1 == 2).count() == 10).then_some(rows)
    })
    .await
    .expect("30 snapshots, 10 of them canceled");
    node.kill9();

    // Forget the snapshots and everything the projector applied: the restarted node replays
    // the whole journal through the projector before it is ready.
    for sql in [
        "DELETE FROM payment_snapshots",
        "DELETE FROM idempotency_keys",
        "DELETE FROM journal_offsets WHERE consumer LIKE '%payrail.snapshots'",
        "DELETE FROM journal_processed_events WHERE consumer LIKE '%payrail.snapshots'",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    let node = NodeProcess::start_on(&env, node.port, &[]).await;
    let rebuilt = snapshot_rows(&pool).await;
    assert_eq!(rebuilt, live, "replayed snapshots equal the live ones");
    // And the node answers from them: a replayed idempotency key returns its payment.
    let api = Api::new(&node);
    let replay = api
        .create_payment(&key, Some("rb-0"), r#"{"amount":300,"currency":"eur"}"#)
        .await;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert!(live
        .iter()
        .any(|r| r.0 == replay.body["id"].as_str().unwrap_or("")));
}

/// The fresh-key filter (issue 25): after a restart, once the partition's filter answers,
/// a key created before the restart is never taken as new. The same body replays the
/// payment; another body is refused as a mismatch (a filter that missed the key would
/// create the payment again and answer 201).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_before_a_restart_is_never_taken_as_new() {
    const BODY: &str = r#"{"amount":500,"currency":"eur"}"#;
    let env = TestEnv::new("restart_keys").await;
    let mut node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("Keys").await;
    let mut before = Vec::new();
    for i in 0..20 {
        let r = api
            .create_payment(&key, Some(&format!("old-{i}")), BODY)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        before.push(r.body["id"].as_str().expect("id").to_string());
    }
    node.kill9();

    let node = NodeProcess::start_on(&env, node.port, &[]).await;
    let api = Api::new(&node);
    // The first new key starts the partition's load; new keys until the filter answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        let r = api
            .create_payment(&key, Some(&format!("new-{n}")), BODY)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        if api.lookups_skipped().await > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fresh-key filter never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, id) in before.iter().enumerate() {
        let idem = format!("old-{i}");
        let other = api
            .create_payment(&key, Some(&idem), r#"{"amount":501,"currency":"eur"}"#)
            .await;
        assert_eq!(
            other.status, 422,
            "{idem} with another body: {}",
            other.body
        );
        assert_eq!(other.body["error"]["code"], "idempotency_key_in_use");
        let same = api.create_payment(&key, Some(&idem), BODY).await;
        assert_eq!(same.body["id"].as_str(), Some(id.as_str()), "{}", same.body);
    }
}
