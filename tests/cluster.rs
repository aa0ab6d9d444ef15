//! Cluster: several `payrail node` processes share the journal's partitions through leases
//! in PostgreSQL (real broker, real PostgreSQL, loopback). Each test runs its own nodes in
//! its own database and topic namespace.

mod common;

use common::cluster::*;
use common::{read_journal, Api, TestEnv};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_the_partitions_and_any_node_serves_any_merchant() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let env = TestEnv::new("cluster_share").await;
    let nodes = [
        cluster_node(&env, "node-a", &[]).await,
        cluster_node(&env, "node-b", &[]).await,
        cluster_node(&env, "node-c", &[]).await,
    ];
    let apis: Vec<Api> = nodes.iter().map(Api::new).collect();
    let owners = settled(&apis.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    let per_node: BTreeSet<usize> = owners.values().map(|(node, _)| *node).collect();
    assert_eq!(
        per_node.len(),
        3,
        "every node serves a share of the partitions: {owners:?}"
    );

    let merchants = merchants_on_every_partition(&apis[0], 2).await;
    let mut created = Vec::new();
    for (i, (partition, list)) in merchants.iter().enumerate() {
        for (j, (merchant_id, key)) in list.iter().enumerate() {
            // Created on one node, cancelled on the next, read on the third: at least two
            // of the three are forwarded to the owner.
            let on = |k: usize| &apis[(i + j + k) % 3];
            let reply = on(0)
                .create_payment(
                    key,
                    Some(&format!("k-{merchant_id}")),
                    r#"{"amount":1200,"currency":"eur"}"#,
                )
                .await;
            assert_eq!(
                reply.status, 201,
                "create for partition {partition}: {}",
                reply.body
            );
            let id = reply.body["id"].as_str().expect("payment id").to_string();
            let again = on(1)
                .create_payment(
                    key,
                    Some(&format!("k-{merchant_id}")),
                    r#"{"amount":1200,"currency":"eur"}"#,
                )
                .await;
            assert_eq!(again.status, 201, "{}", again.body);
            assert_eq!(
                again.body["id"], reply.body["id"],
                "one payment per key across nodes"
            );
            let cancel = on(1)
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/payments/{id}/cancel"),
                    Some(key),
                    None,
                    Some("{}".into()),
                )
                .await;
            assert_eq!(cancel.status, 200, "{}", cancel.body);
            let read = on(2).get_payment(key, &id).await;
            assert_eq!(read.status, 200, "{}", read.body);
            assert_eq!(read.body["status"], "canceled");
            created.push((*partition, id));
        }
    }

    // Every payment event carries the epoch of its partition's lease, after that
    // partition's owner-change marker.
    let records = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    for (partition, (_, epoch)) in &owners {
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.partition == *partition)
            .collect();
        let marker = mine
            .iter()
            .find(|r| event_type(r) == "partition.owner_changed" && owner_epoch(r) == *epoch)
            .unwrap_or_else(|| panic!("partition {partition}: no marker for epoch {epoch}"));
        let events: Vec<_> = mine
            .iter()
            .filter(|r| event_type(r).starts_with("payment."))
            .collect();
        assert!(!events.is_empty(), "partition {partition} has payments");
        for event in events {
            assert_eq!(
                owner_epoch(event),
                *epoch,
                "partition {partition} offset {}",
                event.offset
            );
            assert!(event.offset > marker.offset);
        }
    }
    assert_eq!(created.len(), PARTITIONS as usize * 2);

    // `payrail cluster status`: three live nodes, every partition held, what each serves.
    let partitions = PARTITIONS.to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_payrail"))
        .args(["cluster", "status", "--json"])
        .envs(env.node_env(common::free_port()))
        .env("PAYRAIL__JOURNAL__PARTITIONS", &partitions)
        .output()
        .expect("payrail cluster status");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cluster status JSON");
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let leases = status["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), PARTITIONS as usize);
    for lease in leases {
        let partition = lease["partition"].as_i64().expect("partition") as i32;
        assert_eq!(lease["held"], true, "{lease}");
        assert_eq!(
            lease["epoch"].as_u64(),
            Some(owners[&partition].1),
            "{lease}"
        );
    }
    let served: usize = status["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| r["report"]["serving"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(served, PARTITIONS as usize, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_nodes_partitions_move_and_no_acknowledged_payment_is_lost() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let env = TestEnv::new("cluster_kill").await;
    let mut nodes = [
        cluster_node(&env, "node-a", &[]).await,
        cluster_node(&env, "node-b", &[]).await,
        cluster_node(&env, "node-c", &[]).await,
    ];
    let apis: Vec<Api> = nodes.iter().map(Api::new).collect();
    let owners = settled(&apis.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    let merchants = merchants_on_every_partition(&apis[0], 2).await;
    let mut acknowledged: Vec<(String, String, String)> = Vec::new();
    for list in merchants.values() {
        for (merchant_id, key) in list {
            let reply = apis[0]
                .create_payment(
                    key,
                    Some(&format!("before-{merchant_id}")),
                    r#"{"amount":700,"currency":"usd"}"#,
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            acknowledged.push((
                key.clone(),
                reply.body["id"].as_str().expect("id").to_string(),
                format!("before-{merchant_id}"),
            ));
        }
    }

    // SIGKILL node b; its merchants are served again by a or c.
    let victim = 1;
    let lost: Vec<i32> = owners
        .iter()
        .filter(|(_, (node, _))| *node == victim)
        .map(|(p, _)| *p)
        .collect();
    assert!(!lost.is_empty(), "node b owned partitions: {owners:?}");
    let (merchant_id, key) = merchants[&lost[0]][0].clone();
    nodes[victim].kill9();
    let killed = Instant::now();
    let survivor = &apis[0];
    let (first_2xx, _) = created_once_served(
        survivor,
        &key,
        "after-kill",
        r#"{"amount":800,"currency":"usd"}"#,
        killed,
        Duration::from_secs(60),
        Duration::from_millis(50),
    )
    .await;
    println!("takeover: first 2xx for merchant {merchant_id} {first_2xx:?} after SIGKILL (lease {LEASE_MS} ms)");
    let remaining = [&apis[0], &apis[2]];
    let after = settled(&remaining, Duration::from_secs(60)).await;
    for partition in &lost {
        assert!(
            after[partition].1 > owners[partition].1,
            "partition {partition}: the new owner raised the epoch"
        );
    }

    // The new owners' fresh-key filters answer (issue 25): new keys on each moved
    // partition until one of them skips its look-up, so the checks below go through the
    // filter, not only through PostgreSQL.
    for partition in &lost {
        let (_, key) = &merchants[partition][0];
        until_a_fresh_key_filter_answers(survivor, &remaining, key, &format!("p{partition}")).await;
    }

    // Every payment acknowledged before the kill is readable with its state, through
    // either survivor, and its key still yields that same payment: another body is refused
    // (a new owner that took the key for new would create it again and answer 201).
    for (i, (key, id, idem)) in acknowledged.iter().enumerate() {
        let api = remaining[i % 2];
        let read = api.get_payment(key, id).await;
        assert_eq!(
            read.status, 200,
            "payment {id} after the takeover: {}",
            read.body
        );
        let other = api
            .create_payment(key, Some(idem), r#"{"amount":701,"currency":"usd"}"#)
            .await;
        assert_eq!(
            other.status, 422,
            "{idem} with another body after the takeover: {}",
            other.body
        );
        let again = api
            .create_payment(key, Some(idem), r#"{"amount":700,"currency":"usd"}"#)
            .await;
        assert_eq!(again.status, 201, "{}", again.body);
        assert_eq!(
            again.body["id"].as_str(),
            Some(id.as_str()),
            "one payment per key"
        );
    }
}

/// The zombie: node b owns the merchant's partition, takes a create, and is paused
/// (SIGSTOP) past its lease while that create's append is held (fault injection). Node a
/// takes the partition over and appends its marker; b resumes and its append lands after
/// the marker. The append takes effect nowhere, and b never answers 2xx for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owners_late_append_lands_after_the_marker_and_takes_effect_nowhere() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let env = TestEnv::new("cluster_zombie").await;
    let faults = [
        ("PAYRAIL__ACTORS__FAULT_INJECTION", "true"),
        ("PAYRAIL__ACTORS__FAULT_STALL_MS", "3000"),
        // Longer than stall + pause: the zombie's command must reach its append, not time out.
        ("PAYRAIL__ACTORS__COMMAND_TIMEOUT_MS", "30000"),
    ];
    let TwoNodes {
        nodes,
        apis,
        owners,
        partition,
        merchant_id,
        key,
    } = TwoNodes::start(&env, &faults).await;
    let old_epoch = owners[&partition].1;

    let zombie = apis[1].clone();
    let request = {
        let key = key.clone();
        tokio::spawn(async move {
            zombie
                .client
                .post(format!("{}/v1/payments", zombie.base))
                .bearer_auth(&key)
                .header("Idempotency-Key", "zombie-1")
                .header("content-type", "application/json")
                .body(r#"{"amount":4200,"currency":"eur","metadata":{"payrail_fault":"stall_before_append"}}"#)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    // The append is held for 3 s; pause b well inside that, and keep it paused past its
    // lease (2 s) until a has taken the partition over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[1].signal("-STOP");
    let taken = settled(&[&apis[0]], Duration::from_secs(30)).await;
    let new_epoch = taken[&partition].1;
    assert!(new_epoch > old_epoch);
    nodes[1].signal("-CONT");
    let status = request.await.expect("request task");
    println!("the zombie answered {status:?}");
    assert!(
        !matches!(status, Ok(200..=299)),
        "the zombie answered 2xx for its late append: {status:?}"
    );

    // The late append is in the journal, after the new owner's marker, under the old epoch.
    let journal = common::eventually(Duration::from_secs(20), || async {
        let records = read_journal(&env.brokers, &env.topic(), PARTITIONS);
        let late = records.iter().any(|r| {
            r.partition == partition
                && r.key.as_deref() == Some(merchant_id.as_str())
                && event_type(r) == "payment.created"
        });
        late.then_some(records)
    })
    .await
    .expect("the zombie's append reached the journal");
    let (marker, late) = marker_and_create(&journal, partition, new_epoch, &merchant_id);
    let late = late.expect("the late append");
    assert!(
        late.offset > marker.offset,
        "the late append lands after the marker"
    );
    assert_eq!(
        owner_epoch(late),
        old_epoch,
        "written under the superseded epoch"
    );

    // It takes effect nowhere: no reader applied its event, no snapshot or read model has
    // the payment, and its key is free.
    let pool = env.pool().await;
    let event_id: uuid::Uuid = late.headers["event_id"].parse().expect("event id");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = |sql: &'static str, value: String| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(value)
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            n
        }
    };
    let applied = count(
        "SELECT count(*) FROM journal_processed_events WHERE event_id::text = $1",
        event_id.to_string(),
    );
    assert_eq!(applied.await, 0, "a reader applied the zombie's event");
    let snapshots = count(
        "SELECT count(*) FROM payment_snapshots WHERE merchant_id = $1",
        merchant_id.clone(),
    );
    assert_eq!(snapshots.await, 0, "the zombie's payment has a snapshot");
    let analytics = count(
        "SELECT count(*) FROM analytics_payments WHERE merchant_id = $1",
        merchant_id.clone(),
    );
    assert_eq!(analytics.await, 0, "analytics counted the zombie's payment");
    let retried = apis[0]
        .create_payment(
            &key,
            Some("zombie-1"),
            r#"{"amount":4200,"currency":"eur"}"#,
        )
        .await;
    assert_eq!(
        retried.status, 201,
        "the key is free for the client's retry: {}",
        retried.body
    );
}

/// SIGTERM: the node hands its partitions over before it stops (drain, release), so the
/// survivors take them at once instead of waiting for the lease to expire, and no
/// acknowledged payment of its merchants is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_with_sigterm_hands_its_partitions_over_without_waiting_for_expiry() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let env = TestEnv::new("cluster_term").await;
    // A long lease: a takeover that waited for expiry would take 20 s or more.
    let long_lease = [("PAYRAIL__CLUSTER__LEASE_MS", "30000")];
    let TwoNodes {
        mut nodes,
        apis,
        owners,
        partition,
        merchant_id: _,
        key,
    } = TwoNodes::start(&env, &long_lease).await;
    let before = apis[0]
        .create_payment(
            &key,
            Some("before-term"),
            r#"{"amount":300,"currency":"eur"}"#,
        )
        .await;
    assert_eq!(before.status, 201, "{}", before.body);

    nodes[1].signal("-TERM");
    let stopped = Instant::now();
    assert!(
        nodes[1]
            .exited_within(Duration::from_secs(20))
            .await
            .is_some(),
        "node b did not exit after SIGTERM"
    );
    // Within 15 s: a takeover that waited for the 30 s lease to expire would fail here.
    let (took, _) = created_once_served(
        &apis[0],
        &key,
        "after-term",
        r#"{"amount":400,"currency":"eur"}"#,
        stopped,
        Duration::from_secs(15),
        Duration::from_millis(50),
    )
    .await;
    println!("graceful handover: first 2xx {took:?} after SIGTERM (lease 30 s)");
    let after = settled(&[&apis[0]], Duration::from_secs(15)).await;
    assert!(after[&partition].1 > owners[&partition].1);
    let read = apis[0]
        .get_payment(&key, before.body["id"].as_str().expect("id"))
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
}

/// A node that sees it lost several leases at once stops taking commands on all of them at
/// once, before it drains any: draining them one after another left the later partitions
/// served — taking commands, zombie writes — for the drains of those before (issue 22,
/// defect 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_loses_its_leases_stops_serving_them_all_before_draining_any() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let env = TestEnv::new("cluster_revoke_all").await;
    let node = cluster_node(
        &env,
        "node-a",
        &[
            ("PAYRAIL__ACTORS__FAULT_INJECTION", "true"),
            ("PAYRAIL__ACTORS__FAULT_STALL_MS", "5000"),
            ("PAYRAIL__ACTORS__COMMAND_TIMEOUT_MS", "30000"),
            ("PAYRAIL__CLUSTER__DRAIN_TIMEOUT_MS", "8000"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let owners = settled(&[&api], Duration::from_secs(90)).await;
    assert_eq!(
        owners.len(),
        PARTITIONS as usize,
        "one node serves them all"
    );
    let merchants = merchants_on_every_partition(&api, 1).await;
    // A command on the first partition (the first drained) is in flight, held before its
    // append for 5 s.
    let first = *owners.keys().next().expect("a partition");
    let (_, stalled_key) = merchants[&first][0].clone();
    let stalled = {
        let api = api.clone();
        tokio::spawn(async move {
            api.create_payment(
                &stalled_key,
                Some("held-in-flight"),
                r#"{"amount":1500,"currency":"eur","metadata":{"payrail_fault":"stall_before_append"}}"#,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another node takes every lease under a new epoch (as after a pause past the lease).
    let pool = env.pool().await;
    sqlx::query(
        "UPDATE partition_leases SET owner_node_id = 'node-thief', owner_url = 'http://127.0.0.1:9', \
         epoch = epoch + 1, expires_at = clock_timestamp() + interval '1 minute', renewed_at = clock_timestamp()",
    )
    .execute(&pool)
    .await
    .expect("take the leases");
    let taken = Instant::now();
    // Seen at the node's next renewal (every lease / 3): then it serves none of them, while
    // the held command is still in flight on the first.
    let stopped = common::eventually(Duration::from_secs(10), || async {
        serving(&api).await.filter(|s| s.is_empty()).map(|_| ())
    })
    .await;
    let after = taken.elapsed();
    let still_in_flight = !stalled.is_finished();
    println!("every partition stopped {after:?} after the leases were taken; the held command still in flight: {still_in_flight}");
    assert!(stopped.is_some(), "the node still serves partitions");
    assert!(
        still_in_flight,
        "every partition must stop before the first one's drain ends ({after:?})"
    );
    let held = stalled.await.expect("the held request");
    assert!(
        !(200..300).contains(&held.status),
        "the held command answered 2xx under a lost lease: {}",
        held.body
    );
}
