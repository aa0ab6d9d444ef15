//! Test harness: real PostgreSQL (one fresh database per test), the real broker (one topic
//! namespace per test), and real `payrail node` processes that tests can SIGKILL.
#![allow(dead_code)]

pub mod broker;
pub mod chaos;
pub mod cluster;
pub mod cut_proxy;
pub mod lifecycle_load;
pub mod outage;
pub mod proxy;

mod api;
mod journal;
mod node;
mod sandbox;

// Re-exported, so that tests keep naming them `common::Api`, `common::NodeProcess`, ...
pub use api::*;
pub use journal::*;
pub use node::*;
pub use sandbox::*;

use sqlx::{Connection, PgConnection, PgPool};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "integration-admin-token-0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_integration_0123456789";
pub const PARTITIONS: u32 = 3;

pub fn brokers() -> String {
    std::env::var("PAYRAIL_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn database_url() -> String {
    std::env::var("PAYRAIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A loopback port for a child process to bind later.
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768–60999): a port
/// the kernel hands out for `bind(:0)` is also what it hands out as the local port of
/// outgoing connections (Kafka, PostgreSQL, HTTP clients), so a port probed that way
/// could be taken by a connection before the child binds it (seen in CI: "Address
/// already in use"). A process-wide counter keeps this test binary's parallel tests
/// apart; the start depends on the pid so consecutive binaries do not retry the same
/// ports, and a bind probe skips ports that something else holds.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 64) * 199;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000-32767")
}

fn with_database(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{database}"),
        None => panic!("database url without a path: {url}"),
    }
}

/// One test's world: its own database and its own topic namespace on the shared broker.
pub struct TestEnv {
    pub id: String,
    pub database_url: String,
    pub namespace: String,
    pub brokers: String,
    pub dir: PathBuf,
    /// This test's cluster secret, shared by its nodes (never config.toml's placeholder).
    pub cluster_secret: String,
}

impl TestEnv {
    pub async fn new(name: &str) -> Self {
        let id = format!("{}_{}", name, uuid::Uuid::now_v7().simple());
        let db = format!("payrail_it_{}", &id[..id.len().min(50)]).to_lowercase();
        let mut admin = PgConnection::connect(&database_url())
            .await
            .expect("PostgreSQL reachable");
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let dir = std::env::temp_dir().join(format!("payrail-it-{id}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        Self {
            database_url: with_database(&database_url(), &db),
            namespace: format!("it-{id}."),
            brokers: brokers(),
            dir,
            id,
            cluster_secret: format!("it-cluster-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    pub fn topic(&self) -> String {
        format!("{}payment.events", self.namespace)
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.database_url)
            .await
            .expect("test database")
    }

    /// A pool on this test's database with every migration applied.
    pub async fn migrated_pool(&self) -> PgPool {
        let pool = self.pool().await;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .expect("migrations");
        pool
    }

    /// Environment for a node of this test.
    pub fn node_env(&self, port: u16) -> Vec<(String, String)> {
        vec![
            ("PAYRAIL__JOURNAL__BROKERS".into(), self.brokers.clone()),
            (
                "PAYRAIL__JOURNAL__PARTITIONS".into(),
                PARTITIONS.to_string(),
            ),
            ("PAYRAIL__JOURNAL__NAMESPACE".into(), self.namespace.clone()),
            ("PAYRAIL__JOURNAL__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("PAYRAIL__DATABASE__URL".into(), self.database_url.clone()),
            ("PAYRAIL__DATABASE__MAX_CONNECTIONS".into(), "8".into()),
            ("PAYRAIL__HTTP__BIND".into(), format!("127.0.0.1:{port}")),
            ("PAYRAIL__HTTP__ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            (
                "PAYRAIL__CLUSTER__SECRET".into(),
                self.cluster_secret.clone(),
            ),
        ]
    }
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// The UTC days a test's analytics rows can fall on: yesterday and today. Analytics files a
/// payment under the UTC day of its event, so a test that crosses midnight has rows on two
/// days; each test has its own database and none runs for a day, so these two hold them all.
pub fn test_days() -> [String; 2] {
    let now = chrono::Utc::now();
    let yesterday = now - chrono::Duration::days(1);
    [
        yesterday.format("%Y-%m-%d").to_string(),
        now.format("%Y-%m-%d").to_string(),
    ]
}

/// Waits, when UTC midnight is less than `margin` away, until it has passed: for a test
/// that reads one day's analytics figures that cannot be summed across days (rates).
pub async fn clear_of_utc_midnight(margin: Duration) {
    let now = chrono::Utc::now();
    let Some(midnight) = (now.date_naive() + chrono::Duration::days(1)).and_hms_opt(0, 0, 1) else {
        return;
    };
    let left = (midnight.and_utc() - now).to_std().unwrap_or_default();
    if left < margin {
        tokio::time::sleep(left).await;
    }
}
