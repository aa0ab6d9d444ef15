//! Supervision: restart intensity, restarted pool workers and partitions, the exit on give-up.

use super::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A payment actor that fails on every try exceeds its restart intensity: the merchant
/// escalates, `/readyz` turns not-ready and names it, and that payment's commands get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_over_its_restart_intensity_makes_readyz_say_so() {
    let (_env, node) = fault_injecting_node(
        "faults_intensity",
        &[
            ("PAYRAIL__SUPERVISOR__RESTART__MAX_RESTARTS", "2"),
            ("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_BASE_MS", "50"),
            ("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_MAX_MS", "50"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("Poison").await;
    let body =
        r#"{"amount":900,"currency":"eur","metadata":{"payrail_fault":"panic_always_on_cancel"}}"#;
    let created = api.create_payment(&key, Some("poison"), body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    let mut statuses = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = cancel(&api, &key, &id).await;
        *statuses.entry(r.status).or_insert(0) += 1;
        let ready = readyz(&api).await;
        if ready.status == 503 {
            // Unauthenticated: the reason, not whose payment (issue 23).
            let public = ready.body.to_string();
            assert!(public.contains("restart intensity"), "{public}");
            assert!(!public.contains(&id), "/readyz names no payment: {public}");
            let status = api
                .send(
                    reqwest::Method::GET,
                    "/v1/admin/status",
                    Some(ADMIN_TOKEN),
                    None,
                    None,
                )
                .await;
            assert_eq!(status.status, 200, "{}", status.body);
            assert!(
                status.body.to_string().contains(&id),
                "the operators' status names the payment: {}",
                status.body
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no escalation: {statuses:?} {}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The payment stays down for the window; other payments are served.
    let other = api
        .create_payment(&key, Some("healthy"), r#"{"amount":1,"currency":"eur"}"#)
        .await;
    assert_eq!(other.status, 201, "{}", other.body);
}

/// A pool worker that panics on one specific record is restarted after its backoff and
/// applies that record, once: the analytics pool counts every payment exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_worker_that_panics_on_one_record_applies_it_once_after_the_backoff() {
    let (_env, node) = fault_injecting_node(
        "faults_pool_panic",
        &[("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_BASE_MS", "300")],
    )
    .await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("PoolPanic").await;
    for (i, metadata) in [
        r#"{"k":"1"}"#,
        r#"{"payrail_fault":"panic_in_pool_analytics"}"#,
        r#"{"k":"3"}"#,
    ]
    .iter()
    .enumerate()
    {
        let body = format!(r#"{{"amount":1000,"currency":"eur","metadata":{metadata}}}"#);
        let r = api
            .create_payment(&key, Some(&format!("pool-{i}")), &body)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let counted = eventually(Duration::from_secs(20), || {
        let api = api.clone();
        let key = key.clone();
        async move { (api.metric_total(&key, "created_count").await == 3).then_some(()) }
    })
    .await;
    assert!(
        counted.is_some(),
        "analytics counted all three after the worker's restart: {}",
        node.log_tail()
    );
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(
        log.contains("injected fault: panic_in_pool_analytics"),
        "the worker did panic"
    );
    // Still exactly three a moment later: the panicking record was not applied twice.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(api.metric_total(&key, "created_count").await, 3);
    assert_eq!(api.metric_total(&key, "created_amount").await, 3000);
}

/// A partition supervisor that dies is restarted by the root supervisor after its backoff:
/// meanwhile its merchants get a retryable 503, then they are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_partition_supervisor_is_restarted_by_the_root() {
    let (_env, node) = fault_injecting_node(
        "faults_partition_restart",
        &[("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_BASE_MS", "500")],
    )
    .await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("PartitionDies").await;
    let body = r#"{"amount":500,"currency":"eur","metadata":{"payrail_fault":"panic_partition_supervisor"}}"#;
    let first = api.create_payment(&key, Some("p-1"), body).await;
    assert_eq!(first.status, 503, "{}", first.body);
    let down = eventually(Duration::from_secs(2), || {
        let api = api.clone();
        async move {
            let r = readyz(&api).await;
            (r.status == 503 && r.body["partitions_down"].as_array().map(Vec::len) == Some(1))
                .then_some(r.body)
        }
    })
    .await;
    assert!(down.is_some(), "not ready while the partition restarts");
    let created = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let key = key.clone();
        async move {
            let r = api.create_payment(&key, Some("p-1"), body).await;
            (r.status == 201 || r.status == 200).then_some(r.body)
        }
    })
    .await;
    assert!(
        created.is_some(),
        "served again after the restart: {}",
        node.log_tail()
    );
    let ready = readyz(&api).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(
        log.contains("injected fault: panic_partition_supervisor"),
        "it did panic"
    );
}

/// With `supervisor.on_give_up = "exit"`, a supervisor past its restart intensity makes the
/// node exit with status 70, so that an orchestrator restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_exits_the_node_when_configured() {
    let (_env, mut node) = fault_injecting_node(
        "faults_give_up_exit",
        &[
            ("PAYRAIL__SUPERVISOR__ON_GIVE_UP", "exit"),
            ("PAYRAIL__SUPERVISOR__RESTART__MAX_RESTARTS", "1"),
            ("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_BASE_MS", "20"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("Exit").await;
    let body =
        r#"{"amount":900,"currency":"eur","metadata":{"payrail_fault":"panic_always_on_cancel"}}"#;
    let created = api.create_payment(&key, Some("exit"), body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    let mut exited = None;
    for _ in 0..20 {
        let _ = api
            .client
            .post(format!("{}/v1/payments/{id}/cancel", api.base))
            .bearer_auth(&key)
            .body("{}")
            .send()
            .await;
        exited = node.exited_within(Duration::from_millis(200)).await;
        if exited.is_some() {
            break;
        }
    }
    let status = exited.unwrap_or_else(|| panic!("the node did not exit: {}", node.log_tail()));
    assert_eq!(status.code(), Some(70), "{}", node.log_tail());
}
