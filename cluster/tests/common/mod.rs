//! Test harness: one fresh PostgreSQL database per test (migrated with the workspace's
//! migrations), keepers with short leases, and a simulated node that drains on demand.
#![allow(dead_code)]

pub mod proxy;

use payrail_cluster::{LeaseKeeper, LeaseOptions, LeaseStore, Leases};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Short leases keep the tests quick: renew every 200 ms, valid for 500 ms after a renewal.
pub const LEASE_MS: u64 = 600;
pub const MARGIN_MS: u64 = 100;

/// The server URL (same default and variable as the workspace's tests).
pub fn database_url() -> String {
    std::env::var("PAYRAIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn with_database(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{database}"),
        None => panic!("database url without a path: {url}"),
    }
}

/// A migrated database of its own: `payrail_it_<name>_<uuid>`.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new(label: &str) -> Self {
        let id = format!("{label}_{}", uuid::Uuid::now_v7().simple());
        let name = format!("payrail_it_{}", &id[..id.len().min(50)]).to_lowercase();
        let mut admin = PgConnection::connect(&database_url())
            .await
            .expect("PostgreSQL reachable at PAYRAIL_TEST_DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = with_database(&database_url(), &name);
        let pool = pool(&url, 4).await;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .expect("migrations");
        Self { name, url, pool }
    }

    /// The same database reached through `127.0.0.1:port` (a proxy).
    pub fn url_via(&self, port: u16) -> String {
        let base = database_url();
        match base.split_once("127.0.0.1:5432") {
            Some((scheme, _)) => format!("{scheme}127.0.0.1:{port}/{}", self.name),
            None => panic!("proxy tests expect the server at 127.0.0.1:5432: {base}"),
        }
    }

    pub fn store(&self) -> LeaseStore {
        LeaseStore::new(self.pool.clone(), Duration::from_secs(5))
    }

    /// Drops the database (best effort; a failed test leaves it behind).
    pub async fn drop_database(self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&database_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

/// A small pool, as one node would have; short waits so a stalled link fails fast.
pub async fn pool(url: &str, connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(url)
        .expect("pool")
}

/// Test options: 600 ms leases, 100 ms margin and query timeout.
pub fn options(node: &str, partitions: u32) -> LeaseOptions {
    LeaseOptions {
        node_id: node.into(),
        advertise_url: format!("http://{node}.test:8080"),
        lease_ms: LEASE_MS,
        safety_margin_ms: Some(MARGIN_MS),
        partitions,
        query_timeout_ms: Some(100),
        drain_timeout_ms: 5_000,
        shutdown_timeout_ms: 3_000,
        ..LeaseOptions::default()
    }
}

/// What the simulated node saw and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Gained { partition: i32, epoch: u64 },
    Removed { partition: i32 },
    Drained { partition: i32 },
}

/// A running keeper plus a simulated node that follows its change feed, logs it, and
/// reports each removed partition drained after `drain_delay`.
pub struct Node {
    pub leases: Leases,
    pub task: JoinHandle<()>,
    pub log: Arc<Mutex<Vec<(Instant, Seen)>>>,
    follower: JoinHandle<()>,
}

impl Node {
    pub fn start(pool: PgPool, options: LeaseOptions, drain_delay: Duration) -> Self {
        let keeper = LeaseKeeper::new(pool, options).expect("valid options");
        let leases = keeper.leases();
        let log = Arc::new(Mutex::new(Vec::new()));
        let follower = tokio::spawn(follow(leases.clone(), log.clone(), drain_delay));
        let task = keeper.spawn();
        Self {
            leases,
            task,
            log,
            follower,
        }
    }

    pub fn owned(&self) -> BTreeMap<i32, u64> {
        self.leases.owned()
    }

    pub fn seen(&self) -> Vec<(Instant, Seen)> {
        self.log.lock().expect("log").clone()
    }

    /// Graceful stop; panics if the keeper does not finish in time.
    pub async fn stop(self) {
        self.leases.shutdown().await.expect("graceful shutdown");
        let _ = self.task.await;
        self.follower.abort();
    }
}

async fn follow(leases: Leases, log: Arc<Mutex<Vec<(Instant, Seen)>>>, delay: Duration) {
    let mut feed = leases.subscribe();
    let mut before: BTreeMap<i32, u64> = BTreeMap::new();
    loop {
        let now: BTreeMap<i32, u64> = feed.borrow_and_update().clone();
        let at = Instant::now();
        for (&partition, &epoch) in &now {
            if before.get(&partition) != Some(&epoch) {
                log.lock()
                    .expect("log")
                    .push((at, Seen::Gained { partition, epoch }));
            }
        }
        for &partition in before.keys().filter(|p| !now.contains_key(p)) {
            log.lock()
                .expect("log")
                .push((at, Seen::Removed { partition }));
            let (leases, log) = (leases.clone(), log.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                log.lock()
                    .expect("log")
                    .push((Instant::now(), Seen::Drained { partition }));
                leases.drained(partition);
            });
        }
        before = now;
        if feed.changed().await.is_err() {
            return;
        }
    }
}

/// Asserts that no partition is valid on two of `nodes` at one instant (a sample whose
/// reads took over 20 ms is not an instant and is skipped); returns whether it counted.
pub fn assert_single_owner(nodes: &[&Leases], partitions: u32) -> bool {
    let start = Instant::now();
    let valid: Vec<Vec<Option<u64>>> = nodes
        .iter()
        .map(|l| (0..partitions as i32).map(|p| l.valid(p)).collect())
        .collect();
    if start.elapsed() > Duration::from_millis(20) {
        return false;
    }
    for p in 0..partitions as usize {
        let owners: Vec<&str> = nodes
            .iter()
            .zip(&valid)
            .filter(|(_, v)| v[p].is_some())
            .map(|(l, _)| l.node_id())
            .collect();
        assert!(owners.len() <= 1, "partition {p} valid on {owners:?}");
    }
    true
}

/// Polls `done` every 5 ms (checking single ownership among `nodes` meanwhile) until it
/// holds; panics with `what` after `limit`.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    nodes: &[&Leases],
    partitions: u32,
    mut done: impl FnMut() -> bool,
) {
    let start = Instant::now();
    loop {
        assert_single_owner(nodes, partitions);
        if done() {
            return;
        }
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
