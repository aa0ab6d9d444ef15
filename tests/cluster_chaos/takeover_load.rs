//! Takeover under load (issue 25, lead 6): four nodes, a create load from twelve clients
//! spread over them, then a SIGKILL of one node; every merchant of the killed node's
//! partitions is retried through a survivor every 20 ms until it answers 201. Prints the
//! per-merchant times (p50, p99, max) and, from the survivors' logs, when each lost
//! partition's lease was acquired, caught up to its marker and served — the breakdown.
//! A benchmark, not in the test command:
//! `cargo test --release --test cluster_chaos takeover_under_load -- --ignored --nocapture`
//! (`PAYRAIL_TAKEOVER_KILLS`, default 3; `PAYRAIL_TAKEOVER_CLIENTS`, default 12).

use crate::common::chaos::{env_u64, percentile};
use crate::common::cluster::*;
use crate::common::{Api, TestEnv};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Creates from `clients` tasks, round-robin over merchants and nodes, until `stop`; counts
/// 201s into `served`. A request to a dead node fails at once and is not counted.
fn spawn_load(
    apis: Vec<Api>,
    keys: Vec<String>,
    clients: usize,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let apis = Arc::new(apis);
    let keys = Arc::new(keys);
    (0..clients)
        .map(|c| {
            let (apis, keys, stop, served) =
                (apis.clone(), keys.clone(), stop.clone(), served.clone());
            tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    i += clients;
                    let api = &apis[i % apis.len()];
                    let key = &keys[(i / apis.len()) % keys.len()];
                    let body = r#"{"amount":700,"currency":"eur"}"#;
                    match api.try_create_payment(key, body).await {
                        Some(reply) if reply.status == 201 => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect()
}

/// The nodes' log lines since `marks` (bytes already there) about `partitions` moving:
/// lease acquired, caught up to the marker, serving.
fn takeover_lines(
    nodes: &[crate::common::NodeProcess],
    marks: &[usize],
    partitions: &[i32],
) -> Vec<String> {
    let mut lines = Vec::new();
    for (node, mark) in nodes.iter().zip(marks) {
        let bytes = std::fs::read(&node.log).unwrap_or_default();
        // Plain text: the node colours its log only on a terminal.
        let text = String::from_utf8_lossy(bytes.get(*mark..).unwrap_or_default());
        for line in text.lines() {
            let about = partitions
                .iter()
                .any(|p| line.contains(&format!("partition={p}")));
            let step = ["lease acquired", "caught up", "taken over; serving"]
                .iter()
                .any(|s| line.contains(s));
            if about && step {
                lines.push(format!("{}: {line}", node.port));
            }
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark (minutes): run with --ignored; numbers in BENCHMARKS.md"]
async fn takeover_under_load() {
    let _cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let kills = env_u64("PAYRAIL_TAKEOVER_KILLS", 3) as usize;
    let clients = env_u64("PAYRAIL_TAKEOVER_CLIENTS", 12) as usize;
    let env = TestEnv::new("cluster_takeover_load").await;
    let default_lease = [("PAYRAIL__CLUSTER__LEASE_MS", "3000")];
    let ids = ["node-a", "node-b", "node-c", "node-d"];
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(cluster_node(&env, id, &default_lease).await);
    }
    let apis =
        |nodes: &[crate::common::NodeProcess]| nodes.iter().map(Api::new).collect::<Vec<_>>();
    let current = apis(&nodes);
    served_once(&current.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    let merchants = merchants_on_every_partition(&current[0], 10).await;
    let keys: Vec<String> = merchants
        .values()
        .flatten()
        .map(|(_, k)| k.clone())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = spawn_load(apis(&nodes), keys, clients, stop.clone(), served.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut times = Vec::new();
    for k in 0..kills {
        let current = apis(&nodes);
        let owners = served_once(
            &current.iter().collect::<Vec<_>>(),
            Duration::from_secs(120),
        )
        .await;
        // The owner of a different partition each time (a node may serve none).
        let victim = owners[&((k as i32 * 2) % PARTITIONS as i32)].0;
        let lost: Vec<i32> = owners
            .iter()
            .filter(|(_, (owner, _))| *owner == victim)
            .map(|(p, _)| *p)
            .collect();
        let before = served.load(Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rate =
            (served.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
        let marks: Vec<usize> = nodes
            .iter()
            .map(|n| std::fs::read(&n.log).map(|b| b.len()).unwrap_or(0))
            .collect();
        nodes[victim].kill9();
        let killed = Instant::now();
        println!(
            "kill {k}: SIGKILL at {}",
            chrono::Utc::now().format("%H:%M:%S%.3f")
        );
        let survivor = Arc::new(Api::new(&nodes[(victim + 1) % nodes.len()]));
        let mut probes = Vec::new();
        for partition in &lost {
            for (m, (_, key)) in merchants[partition].iter().enumerate() {
                let (survivor, key) = (survivor.clone(), key.clone());
                let idem = format!("takeover-load-{k}-{partition}-{m}");
                probes.push(tokio::spawn(async move {
                    created_once_served(
                        &survivor,
                        &key,
                        &idem,
                        r#"{"amount":500,"currency":"eur"}"#,
                        killed,
                        Duration::from_secs(60),
                        Duration::from_millis(20),
                    )
                    .await
                    .0
                }));
            }
        }
        let mut these = Vec::new();
        for probe in probes {
            these.push(probe.await.expect("probe"));
        }
        these.sort();
        println!(
            "kill {k}: {} (partitions {lost:?}) under {rate:.0} creates/s → {} merchants served \
             again after p50 {:?}, max {:?}",
            ids[victim],
            these.len(),
            percentile(&these, 50.0),
            percentile(&these, 100.0)
        );
        for line in takeover_lines(&nodes, &marks, &lost) {
            println!("  {line}");
        }
        times.extend(these);
        nodes[victim] = cluster_node(&env, ids[victim], &default_lease).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load.drain(..) {
        let _ = task.await;
    }
    times.sort();
    println!(
        "takeover under load over {kills} kills, {} merchants: p50 {:?} p99 {:?} max {:?}",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        percentile(&times, 100.0)
    );
    assert!(percentile(&times, 100.0) < Duration::from_secs(60));
}
