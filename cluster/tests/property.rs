//! Random schedules of keepers starting, shutting down, crashing (task aborted), and being
//! cut off from the database and back (proxy stalled / resumed): at every sampled instant
//! each partition is valid on one keeper at most, and epochs never go down.

mod common;

use common::proxy::StallProxy;
use common::{assert_single_owner, options, pool, Node, TestDb};
use payrail_cluster::Leases;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
enum Op {
    Start,
    Shutdown,
    Crash,
    Pause,
    Resume,
}

#[derive(Debug, Clone)]
struct Schedule {
    keepers: usize,
    partitions: u32,
    /// (what, which keeper, then sample for this many ms)
    steps: Vec<(Op, usize, u64)>,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    let op = prop_oneof![
        3 => Just(Op::Start),
        1 => Just(Op::Shutdown),
        1 => Just(Op::Crash),
        2 => Just(Op::Pause),
        2 => Just(Op::Resume),
    ];
    (2usize..=4, 1u32..=6).prop_flat_map(move |(keepers, partitions)| {
        prop::collection::vec((op.clone(), 0..keepers, 100u64..600), 3..7).prop_map(move |steps| {
            Schedule {
                keepers,
                partitions,
                steps,
            }
        })
    })
}

/// Everything observed so far, checked at each sample.
struct Observer {
    partitions: u32,
    /// Every keeper handle ever started: stopped and crashed ones must stay safe too.
    handles: Vec<Leases>,
    last_epoch: BTreeMap<i32, u64>,
    samples: usize,
    skipped: usize,
}

impl Observer {
    fn sample(&mut self) {
        let all: Vec<&Leases> = self.handles.iter().collect();
        if !assert_single_owner(&all, self.partitions) {
            self.skipped += 1;
            return;
        }
        self.samples += 1;
        for p in 0..self.partitions as i32 {
            for epoch in self.handles.iter().filter_map(|l| l.valid(p)) {
                let last = self.last_epoch.entry(p).or_insert(epoch);
                assert!(epoch >= *last, "partition {p}: epoch {epoch} after {last}");
                *last = epoch;
            }
        }
    }

    async fn sample_for(&mut self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            self.sample();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn run(schedule: Schedule) {
    let db = TestDb::new("prop").await;
    let mut proxies = Vec::new();
    for _ in 0..schedule.keepers {
        proxies.push(StallProxy::start("127.0.0.1:5432".parse().unwrap()).await);
    }
    let start = |slot: usize| {
        let mut o = options(&format!("k{slot}"), schedule.partitions);
        o.drain_timeout_ms = 200;
        let url = db.url_via(proxies[slot].port);
        async move { Node::start(pool(&url, 2).await, o, Duration::from_millis(20)) }
    };
    let mut observer = Observer {
        partitions: schedule.partitions,
        handles: Vec::new(),
        last_epoch: BTreeMap::new(),
        samples: 0,
        skipped: 0,
    };
    let mut running: Vec<Option<Node>> = Vec::new();
    for slot in 0..schedule.keepers {
        let node = start(slot).await;
        observer.handles.push(node.leases.clone());
        running.push(Some(node));
    }
    let mut stopping = tokio::task::JoinSet::new();
    let mut table_epochs: BTreeMap<i32, u64> = BTreeMap::new();
    for &(op, slot, ms) in &schedule.steps {
        match op {
            Op::Start if running[slot].is_none() => {
                let node = start(slot).await;
                observer.handles.push(node.leases.clone());
                running[slot] = Some(node);
            }
            Op::Shutdown => {
                if let Some(node) = running[slot].take() {
                    // A stalled keeper may not finish; its shutdown is bounded either way.
                    stopping.spawn(async move {
                        let _ = node.leases.shutdown().await;
                        node.task.abort();
                    });
                }
            }
            Op::Crash => {
                if let Some(node) = running[slot].take() {
                    node.task.abort();
                }
            }
            Op::Pause => proxies[slot].pause(),
            Op::Resume => proxies[slot].resume(),
            Op::Start => {}
        }
        observer.sample_for(ms).await;
        for row in db.store().table().await.expect("table") {
            let last = table_epochs.entry(row.partition).or_insert(row.epoch);
            assert!(
                row.epoch >= *last,
                "table epoch of {} went down",
                row.partition
            );
            *last = row.epoch;
        }
    }
    for proxy in &proxies {
        proxy.resume();
    }
    for node in running.into_iter().flatten() {
        stopping.spawn(async move {
            let _ = node.leases.shutdown().await;
            node.task.abort();
        });
    }
    while stopping.join_next().await.is_some() {
        observer.sample();
    }
    assert!(
        observer.samples > 10 * observer.skipped,
        "too few clean samples: {} taken, {} skipped",
        observer.samples,
        observer.skipped
    );
    drop(proxies);
    db.drop_database().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    })]

    #[test]
    fn at_most_one_valid_owner_per_partition_and_epochs_never_go_down(s in schedule()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(s));
    }
}
