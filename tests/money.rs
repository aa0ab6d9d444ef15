//! Ledger, settlement, analytics and the audit, after a mixed workload with a node restart
//! and a consumer-group reset, against the real broker, PostgreSQL and the PSP sandbox.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

async fn post(api: &Api, key: &str, path: &str, body: &str) -> Reply {
    api.send(
        reqwest::Method::POST,
        path,
        Some(key),
        None,
        Some(body.to_string()),
    )
    .await
}

async fn pay(api: &Api, key: &str, amount: i64, method: &str, manual: bool) -> String {
    let body = format!(
        r#"{{"amount":{amount},"currency":"eur","order_no":"o-{amount}-{method}","channel":"web"{}}}"#,
        if manual {
            r#","capture_method":"manual""#
        } else {
            ""
        }
    );
    let created = api.create_payment(key, None, &body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let confirmed = post(
        api,
        key,
        &format!("/v1/payments/{id}/confirm"),
        &format!(r#"{{"payment_method":"{method}"}}"#),
    )
    .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    id
}

fn audit(env: &TestEnv, sandbox: &SandboxProcess) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .arg("audit")
        .envs(env.node_env(free_port()))
        .envs(sandbox.node_env())
        .output()
        .expect("run payrail audit");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn balance(api: &Api, key: &str) -> (i64, i64) {
    let r = api
        .send(reqwest::Method::GET, "/v1/balance", Some(key), None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sum = |field: &str| {
        r.body[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["amount"].as_i64().unwrap())
            .sum::<i64>()
    };
    (sum("pending"), sum("available"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_with_restart_and_reset_audits_clean_and_settles_to_the_ledger() {
    // Its rates and amounts are one UTC day's: start where the whole run falls on one day.
    clear_of_utc_midnight(Duration::from_secs(300)).await;
    let day = today();
    let env = TestEnv::new("money").await;
    let port = free_port();
    let sandbox = SandboxProcess::start(&env, port, &[]);
    let sandbox_env = sandbox.node_env();
    let extra: Vec<(&str, &str)> = sandbox_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut node = NodeProcess::start_on(&env, port, &extra).await;
    let api = Api::new(&node);
    let (_, key_a) = api.merchant("MoneyA").await;
    let (merchant_b, key_b) = api.merchant("MoneyB").await;

    // Merchant A: captures, a partial capture, refunds, a decline.
    let a1 = pay(&api, &key_a, 10_000, "pm_card_visa", false).await;
    let a2 = pay(&api, &key_a, 5_000, "pm_card_visa", true).await;
    assert_eq!(
        post(
            &api,
            &key_a,
            &format!("/v1/payments/{a2}/capture"),
            r#"{"amount":4000}"#
        )
        .await
        .status,
        200
    );
    assert_eq!(
        post(
            &api,
            &key_a,
            &format!("/v1/payments/{a1}/refunds"),
            r#"{"amount":2500}"#
        )
        .await
        .status,
        201
    );
    pay(&api, &key_a, 777, "pm_card_declined", false).await;

    node.kill9();
    let mut node = NodeProcess::start_on(&env, port, &extra).await;
    let api = Api::new(&node);

    // Merchant B after the restart.
    let b1 = pay(&api, &key_b, 20_000, "pm_card_visa", false).await;
    assert_eq!(
        post(
            &api,
            &key_b,
            &format!("/v1/payments/{b1}/refunds"),
            r#"{"amount":20000}"#
        )
        .await
        .status,
        201
    );
    pay(&api, &key_b, 3_000, "pm_card_visa", false).await;
    assert_eq!(
        post(
            &api,
            &key_a,
            &format!("/v1/payments/{a2}/refunds"),
            r#"{"amount":1000}"#
        )
        .await
        .status,
        201
    );

    // Fees: 290 bps + 30. A: 10000 → 320, 4000 → 146. B: 20000 → 610, 3000 → 117.
    let expected_a = (10_000 - 320) + (4_000 - 146) - 2_500 - 1_000;
    let expected_b = (20_000 - 610) - 20_000 + (3_000 - 117);
    let settled = eventually(Duration::from_secs(30), || async {
        let a = balance(&api, &key_a).await;
        let b = balance(&api, &key_b).await;
        (a == (expected_a, 0) && b == (expected_b, 0)).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "pending balances: A {:?} (want {expected_a}), B {:?} (want {expected_b})",
        balance(&api, &key_a).await,
        balance(&api, &key_b).await
    );

    // Reset every pool's group and stored positions: all events come again, nothing doubles.
    node.kill9();
    let pool = env.pool().await;
    for group in ["payrail.analytics", "payrail.ledger", "payrail.settlement"] {
        let group = format!("{}{group}", env.namespace);
        reset_group_offsets(&env.brokers, &group, &env.topic(), PARTITIONS);
        sqlx::query("DELETE FROM journal_offsets WHERE consumer = $1")
            .bind(&group)
            .execute(&pool)
            .await
            .unwrap();
    }
    let node = NodeProcess::start_on(&env, port, &extra).await;
    let api = Api::new(&node);
    let high: i64 = read_journal(&env.brokers, &env.topic(), PARTITIONS).len() as i64;
    let caught_up = eventually(Duration::from_secs(60), || async {
        let groups: Vec<String> = ["payrail.analytics", "payrail.ledger", "payrail.settlement"]
            .iter()
            .map(|g| format!("{}{g}", env.namespace))
            .collect();
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT sum(next_offset)::BIGINT FROM journal_offsets WHERE consumer = ANY($1) GROUP BY consumer",
        )
        .bind(&groups)
        .fetch_all(&pool)
        .await
        .unwrap();
        (applied.len() == groups.len() && applied.iter().all(|n| *n == high)).then_some(())
    })
    .await;
    assert!(caught_up.is_some(), "every pool re-consumed the journal");
    assert_eq!(
        balance(&api, &key_a).await,
        (expected_a, 0),
        "no double posting after the reset"
    );

    let (clean, report) = audit(&env, &sandbox);
    assert!(clean, "audit before settlement:\n{report}");
    assert!(report.contains("audit: 0 differences"), "{report}");
    assert!(
        report.contains("ledger EUR") && report.contains("balanced"),
        "{report}"
    );

    // Settlement: pending moves to available, settlement net equals the ledger.
    let run = api
        .send(
            reqwest::Method::POST,
            "/v1/settlements/run",
            Some(ADMIN_TOKEN),
            None,
            Some("{}".into()),
        )
        .await;
    assert_eq!(run.status, 201, "{}", run.body);
    let settlements = run.body["data"].as_array().unwrap().clone();
    assert_eq!(
        settlements.len(),
        2,
        "one settlement per merchant and currency: {}",
        run.body
    );
    let of_b: &Value = settlements
        .iter()
        .find(|s| s["merchant_id"] == merchant_b.as_str())
        .unwrap();
    assert_eq!(of_b["net"], expected_b);
    assert_eq!(of_b["captured"], 23_000);
    assert_eq!(of_b["refunded"], 20_000);
    assert_eq!(of_b["fees"], 727);
    assert_eq!(balance(&api, &key_b).await, (0, expected_b));
    let listed = api
        .send(
            reqwest::Method::GET,
            "/v1/settlements",
            Some(&key_b),
            None,
            None,
        )
        .await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    let not_admin = api
        .send(
            reqwest::Method::POST,
            "/v1/settlements/run",
            Some(&key_a),
            None,
            Some("{}".into()),
        )
        .await;
    assert_eq!(not_admin.status, 401);

    let id = of_b["id"].as_str().unwrap();
    let paid = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/settlements/{id}/pay"),
            Some(ADMIN_TOKEN),
            None,
            None,
        )
        .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.body["status"], "paid");
    let again = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/settlements/{id}/pay"),
            Some(ADMIN_TOKEN),
            None,
            None,
        )
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(balance(&api, &key_b).await, (0, 0));

    let settlement_events = read_journal(
        &env.brokers,
        &format!("{}settlement.events", env.namespace),
        PARTITIONS,
    );
    let types: Vec<&str> = settlement_events
        .iter()
        .filter_map(|r| r.headers.get("event_type").map(String::as_str))
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "settlement.created").count(),
        2,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "settlement.paid").count(),
        1,
        "{types:?}"
    );

    let (clean, report) = audit(&env, &sandbox);
    assert!(clean, "audit after settlement:\n{report}");

    // Ledger entries of a payment, for its merchant only.
    let entries = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/ledger/entries?payment_id={a1}"),
            Some(&key_a),
            None,
            None,
        )
        .await;
    assert_eq!(entries.status, 200);
    let legs = entries.body["data"].as_array().unwrap();
    let debits: i64 = legs.iter().map(|l| l["debit"].as_i64().unwrap()).sum();
    let credits: i64 = legs.iter().map(|l| l["credit"].as_i64().unwrap()).sum();
    assert_eq!(debits, credits);
    assert_eq!(debits, 10_000 + 2_500);
    let foreign = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/ledger/entries?payment_id={a1}"),
            Some(&key_b),
            None,
            None,
        )
        .await;
    assert_eq!(foreign.status, 404);

    // Analytics of merchant A on the test's day.
    let metrics = api.metrics(&key_a, &day).await;
    let eur = &metrics.body["data"][0];
    assert_eq!(eur["created_count"], 3);
    assert_eq!(eur["succeeded_count"], 2);
    assert_eq!(eur["failed_count"], 1);
    assert_eq!(eur["success_rate_bps"], 6666);
    assert_eq!(eur["revenue"], 14_000);
    assert_eq!(eur["fees"], 466);
    assert_eq!(eur["refunded_amount"], 3_500);
    assert_eq!(eur["net_revenue"], 14_000 - 466 - 3_500);
    assert_eq!(eur["completed_orders"], 2);

    // The admin channel view counts both merchants' payments of channel "web".
    let channels = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/analytics/channel-metrics?date={day}"),
            Some(ADMIN_TOKEN),
            None,
            None,
        )
        .await;
    assert_eq!(channels.status, 200, "{}", channels.body);
    let web = &channels.body["data"][0];
    assert_eq!(web["channel"], "web");
    assert_eq!(web["created_count"], 5);
    assert_eq!(web["succeeded_count"], 4);
    assert_eq!(web["failed_count"], 1);
    assert_eq!(web["refunded_amount"], 23_500);
    let merchant_as_admin = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/analytics/channel-metrics?date={day}"),
            Some(&key_a),
            None,
            None,
        )
        .await;
    assert_eq!(merchant_as_admin.status, 401);

    // Rebuild the ledger and analytics from the journal with the node stopped: same result.
    let before: Vec<(String, i64)> = sqlx::query_as("SELECT account, (sum(debit) - sum(credit))::BIGINT FROM ledger_entries GROUP BY account ORDER BY account")
        .fetch_all(&pool)
        .await
        .unwrap();
    drop(node);
    for pool_name in ["ledger", "analytics"] {
        let output = Command::new(env!("CARGO_BIN_EXE_payrail"))
            .args(["rebuild", pool_name])
            .envs(env.node_env(free_port()))
            .envs(sandbox.node_env())
            .output()
            .expect("run payrail rebuild");
        assert!(
            output.status.success(),
            "rebuild {pool_name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let after: Vec<(String, i64)> = sqlx::query_as("SELECT account, (sum(debit) - sum(credit))::BIGINT FROM ledger_entries GROUP BY account ORDER BY account")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(after, before, "the rebuilt ledger has the same balances");
    let (clean, report) = audit(&env, &sandbox);
    assert!(clean, "audit after rebuild:\n{report}");
    let unknown = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .args(["rebuild", "nonsense"])
        .envs(env.node_env(free_port()))
        .envs(sandbox.node_env())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_an_unbalanced_posting() {
    let env = TestEnv::new("ledger_constraint").await;
    let (_node, _sandbox) = node_with_sandbox(&env).await;
    let pool = env.pool().await;
    let result = sqlx::query(
        "INSERT INTO ledger_entries (posting_id, transaction_id, account, currency, debit, credit) VALUES ($1, 'bad', 'psp_clearing', 'EUR', 100, 0)",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&pool)
    .await;
    let error = result
        .expect_err("an unbalanced transaction must not commit")
        .to_string();
    assert!(error.contains("does not balance"), "{error}");
}
