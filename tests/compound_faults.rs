//! Compound faults (issue 22, "Must show"): faults that overlap, against two real cluster
//! nodes, the PSP sandbox, a private tansu broker and PostgreSQL, all on loopback.
//!
//! Under a lifecycle load (create → confirm → capture part → refund part, through either
//! node) with every pool running, the ledger slowed on purpose (it lags when the outage
//! starts) and a small in-memory tail (`spool.unprojected_tail_max`):
//! 1. the broker is killed;
//! 2. during the outage every PostgreSQL connection of both nodes is cut, several times,
//!    through a TCP proxy (a statement or COMMIT whose answer never arrives);
//! 3. node b is SIGKILLed during the outage: node a takes its partitions over with the
//!    broker still down (through the spool), then b is restarted, still during the outage,
//!    and takes its share back (a second takeover during the outage);
//! 4. the broker returns, and the connections are cut again while the spools replay.
//!
//! After recovery, read independently: every acknowledged command's event is in the journal,
//! each payment's events are at sequences 1..n with one event per sequence, the spools are
//! empty, and `payrail audit` finds no difference between the read models and the journal.
//! Availability is printed, not asserted: cut connections and a dead node answer 503s
//! (the fault suites assert availability one fault at a time).
//!
//! The test command runs one run at the CI size below (about 2 minutes). Full size, N runs
//! (docs/fault-suite.md): `PAYRAIL_COMPOUND_RUNS=3 PAYRAIL_COMPOUND_OUTAGE_MS=60000
//! PAYRAIL_COMPOUND_CUTS=6 cargo test --release --test compound_faults -- --nocapture`.
//!
//! Environment (defaults are the CI size): `PAYRAIL_COMPOUND_RUNS` (1),
//! `PAYRAIL_COMPOUND_OUTAGE_MS` (20000), `PAYRAIL_COMPOUND_CUTS` (3, during the outage; two
//! more during the replay), `PAYRAIL_COMPOUND_RATE` (40 req/s in a debug build, 150 in
//! release), `PAYRAIL_COMPOUND_TAIL` (200 records).

mod common;

use common::broker::PrivateBroker;
use common::chaos::{audit_with, env_u64, spool_drained, Merchant};
use common::cluster::*;
use common::cut_proxy::{upstream_of, CutProxy};
use common::lifecycle_load::*;
use common::{free_port, Api, SandboxProcess, TestEnv};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 32;
const DEFAULT_RATE: u64 = if cfg!(debug_assertions) { 40 } else { 150 };

/// What one run saw, for the report.
struct RunReport {
    payments: usize,
    commands: usize,
    cut_connections: u64,
    statuses: BTreeMap<u16, usize>,
    served_again_after_death: Option<Duration>,
    replayed_after: Duration,
}

/// Sleeps until `at` after `since`.
async fn until(since: Instant, at: Duration) {
    tokio::time::sleep(at.saturating_sub(since.elapsed())).await;
}

async fn compound_run(run: u64) -> RunReport {
    let outage = Duration::from_millis(env_u64("PAYRAIL_COMPOUND_OUTAGE_MS", 20_000));
    let cuts = env_u64("PAYRAIL_COMPOUND_CUTS", 3).max(1);
    let rate = env_u64("PAYRAIL_COMPOUND_RATE", DEFAULT_RATE).max(1);
    let tail = env_u64("PAYRAIL_COMPOUND_TAIL", 200).max(1).to_string();

    let mut env = TestEnv::new(&format!("compound_{run}")).await;
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let mut broker = PrivateBroker::start(&broker_dir, free_port());
    env.brokers = broker.brokers();
    let proxy = CutProxy::start(upstream_of(&env.database_url)).await;
    let through_proxy = proxy.database_url(&env.database_url);
    let (port_a, port_b) = (free_port(), free_port());
    let sandbox = SandboxProcess::start(&env, port_a, &[]);
    let mut extra: Vec<(String, String)> = sandbox.node_env();
    for (k, v) in [
        ("PAYRAIL__DATABASE__URL", through_proxy.as_str()),
        ("PAYRAIL__DATABASE__MAX_CONNECTIONS", "16"),
        ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "5000"),
        ("PAYRAIL__JOURNAL__ADMIN_TIMEOUT_MS", "2000"),
        ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "500"),
        ("PAYRAIL__SPOOL__REPLAY_INTERVAL_MS", "100"),
        ("PAYRAIL__SPOOL__UNPROJECTED_TAIL_MAX", tail.as_str()),
        ("PAYRAIL__ACTORS__FAULT_INJECTION", "true"),
        ("PAYRAIL__ACTORS__FAULT_SLOW_POOL", "ledger"),
        ("PAYRAIL__ACTORS__FAULT_SLOW_POOL_DELAY_MS", "3"),
    ] {
        extra.push((k.to_string(), v.to_string()));
    }
    let extra_ref: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a = cluster_node_on(&env, "node-a", port_a, &extra_ref).await;
    let mut b = cluster_node_on(&env, "node-b", port_b, &extra_ref).await;
    let apis = [Api::new(&a), Api::new(&b)];
    let owners = settled(&[&apis[0], &apis[1]], Duration::from_secs(90)).await;
    let on_b: Vec<i32> = owners
        .iter()
        .filter(|(_, (node, _))| *node == 1)
        .map(|(p, _)| *p)
        .collect();
    assert!(!on_b.is_empty(), "node b serves a partition: {owners:?}");
    let merchants: Vec<Merchant> = merchants_on_every_partition(&apis[0], 2)
        .await
        .into_values()
        .flatten()
        .map(|(id, api_key)| Merchant {
            id,
            api_key,
            warm_up: String::new(),
        })
        .collect();
    let probe = merchants
        .iter()
        .find(|m| on_b.contains(&partition_of(&m.id)))
        .expect("a merchant on node b's partitions")
        .clone();
    let merchants = Arc::new(merchants);

    let load = Load::new(rate);
    let bases = Arc::new(vec![a.base.clone(), b.base.clone()]);
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(worker(load.clone(), bases.clone(), merchants.clone(), i)))
        .collect();

    // 1. The broker dies under load.
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.kill9();
    let died = Instant::now();
    // 2–3. Connections cut through the outage; node b dies at 30 % and is back at 65 %.
    let mut served_again_after_death = None;
    for cut in 0..cuts {
        until(died, outage * (cut as u32 + 1) / (cuts as u32 + 2)).await;
        proxy.cut();
        if cut == 0 {
            until(died, outage * 3 / 10).await;
            b.kill9();
            let b_died = Instant::now();
            // Node a serves node b's partitions with the broker still down.
            let deadline = b_died + outage / 3;
            while Instant::now() < deadline {
                let reply = apis[0]
                    .create_payment(
                        &probe.api_key,
                        Some(&format!("probe-{run}")),
                        r#"{"amount":700,"currency":"eur"}"#,
                    )
                    .await;
                if reply.status == 201 || reply.status == 200 {
                    served_again_after_death = Some(b_died.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if cut == cuts / 2 {
            until(died, outage * 65 / 100).await;
            b = cluster_node_on(&env, "node-b", port_b, &extra_ref).await;
        }
    }
    until(died, outage).await;
    // 4. The broker returns; the connections are cut while the spools replay.
    broker.restart();
    for delay in [1500, 2500] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        proxy.cut();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    load.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("a load worker panicked");
    }

    let recovery = Instant::now();
    let client = reqwest::Client::new();
    for base in [&a.base, &b.base] {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            match spool_drained(&client, base).await {
                Ok(()) => break,
                Err(left) => assert!(
                    Instant::now() < deadline,
                    "run {run}: spool of {base} not replayed: {left}\n{}",
                    b.log_tail()
                ),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let replayed_after = recovery.elapsed();
    assert!(
        served_again_after_death.is_some(),
        "run {run}: node b's partitions were not served by node a during the outage"
    );

    let observed = load.take_observed();
    let commands = assert_every_acknowledged_step_journaled(
        &env.brokers,
        &env.topic(),
        PARTITIONS,
        &observed.acknowledged,
    );
    // The read models converge on the journal (the slowed ledger may still be applying).
    let partitions = PARTITIONS.to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (clean, differences, text) =
            audit_with(&env, &[("PAYRAIL__JOURNAL__PARTITIONS", &partitions)]);
        if clean && differences == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run {run}: payrail audit not clean: {text}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let statuses = observed.samples.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.status).or_insert(0) += 1;
        m
    });
    drop(sandbox);
    RunReport {
        payments: observed.acknowledged.len(),
        commands,
        cut_connections: proxy.cut_connections(),
        statuses,
        served_again_after_death,
        replayed_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_faults_lose_fork_and_repeat_nothing() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let runs = env_u64("PAYRAIL_COMPOUND_RUNS", 1).max(1);
    for run in 1..=runs {
        let report = compound_run(run).await;
        println!(
            "compound run {run}/{runs}: {} payments, {} acknowledged commands all journaled in order, audit 0 differences; {} connections cut; node b's partitions served again by node a {:?} after its death (broker down); spools replayed {:?} after the load stopped; statuses {:?}",
            report.payments,
            report.commands,
            report.cut_connections,
            report.served_again_after_death,
            report.replayed_after,
            report.statuses,
        );
    }
}
