//! Fault-injection helpers for `tests/fault_suite.rs`: keyed clients that retry the same
//! Idempotency-Key until a 2xx, PostgreSQL backend kills, the pools' catch-up measured from
//! `GET /v1/admin/consumers`, `payrail audit` as a process, and the journal's and the list
//! API's view of which payment ids each key got.

mod audit;
mod catch_up;
mod load;

// Re-exported, so that tests keep naming them `common::chaos::KeySpec`, `chaos::audit`, ...
pub use audit::*;
pub use catch_up::*;
pub use load::*;

use super::{TestEnv, PARTITIONS};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

/// An integer from the environment, or `default` when unset (a malformed value panics).
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

/// xorshift64*: reproducible jitter and key choices from `PAYRAIL_FAULT_SEED`.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// One merchant of the run: id, API key, and the id of its warm-up payment (key
/// `warm-up`, made before any fault).
#[derive(Clone, Debug)]
pub struct Merchant {
    pub id: String,
    pub api_key: String,
    pub warm_up: String,
}

/// At least `min` merchants, each with a warm-up payment, and more until the merchants'
/// journal partitions cover every partition (so a load over them writes to all), at most
/// 32.
pub async fn merchants_covering_partitions(
    api: &super::Api,
    env: &TestEnv,
    min: usize,
    prefix: &str,
) -> Vec<Merchant> {
    let mut out: Vec<Merchant> = Vec::new();
    loop {
        let (id, api_key) = api.merchant(&format!("{prefix}{}", out.len())).await;
        let r = api
            .create_payment(
                &api_key,
                Some("warm-up"),
                r#"{"amount":1,"currency":"eur"}"#,
            )
            .await;
        assert_eq!(r.status, 201, "warm-up payment: {}", r.body);
        let warm_up = r.body["id"].as_str().expect("warm-up id").to_string();
        out.push(Merchant {
            id,
            api_key,
            warm_up,
        });
        if out.len() < min {
            continue;
        }
        // The partitions holding records, from the node's consumers (the snapshot projector
        // reports every partition's high watermark); polled briefly, as it lags a little.
        let client = load_client(Duration::from_secs(10));
        let mut covered = BTreeSet::new();
        for _ in 0..25 {
            if let Ok(sample) = consumers(&client, &api.base).await {
                covered = sample
                    .iter()
                    .filter(|c| c["topic"].as_str() == Some(env.topic().as_str()))
                    .flat_map(|c| c["partitions"].as_array().cloned().unwrap_or_default())
                    .filter(|p| p["high_watermark"].as_i64().unwrap_or(0) > 0)
                    .filter_map(|p| p["partition"].as_i64())
                    .collect();
            }
            if covered.len() == PARTITIONS as usize {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(out.len() < 32, "32 merchants do not cover every partition");
    }
}

/// A `payrail node` child whose stdout and stderr (the node logs to stdout) go to a file,
/// so a failure can quote its log. Stopped by PID (SIGKILL) on drop.
pub struct LoggedNode {
    child: std::process::Child,
    pub port: u16,
    pub base: String,
    pub log: std::path::PathBuf,
}

impl LoggedNode {
    pub async fn start_on(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Self {
        let log = env
            .dir
            .join(format!("node-{port}-{}.log", uuid::Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("node log");
        let err = file.try_clone().expect("node log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_payrail"))
            .arg("node")
            .envs(env.node_env(port))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn,warp=warn")
            .env("NO_COLOR", "1")
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("spawn payrail node");
        let mut node = Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = load_client(Duration::from_secs(3));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("node exited with {status}: {}", node.log_tail(40));
            }
            if let Ok(r) = client.get(format!("{}/readyz", node.base)).send().await {
                if r.status().is_success() {
                    return node;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node not ready in 120 s: {}",
                node.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL: no shutdown hooks, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Terminates every backend of `database` except our own; returns how many were killed.
pub async fn terminate_backends(admin_url: &str, database: &str) -> u64 {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("PostgreSQL reachable for pg_terminate_backend");
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .expect("pg_terminate_backend");
    killed.iter().filter(|(k,)| *k).count() as u64
}

/// The database name of a PostgreSQL URL.
pub fn database_name(url: &str) -> String {
    url.rsplit_once('/')
        .map(|(_, db)| db.split('?').next().unwrap_or(db).to_string())
        .unwrap_or_else(|| panic!("database url without a path: {url}"))
}

/// The node's `/readyz` answered 200 within `timeout`.
pub async fn wait_ready(client: &reqwest::Client, base: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nearest-rank percentile (`q` in 0..=100) of sorted `values`.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A fault's window, for "which keys were in flight during it".
#[derive(Clone, Debug)]
pub struct FaultWindow {
    pub name: String,
    pub start: Instant,
    pub end: Instant,
    pub note: String,
}

impl FaultWindow {
    /// Keys whose [first try, first 2xx] overlaps this window.
    pub fn keys_in_flight<'a>(&self, outcomes: impl Iterator<Item = &'a KeyOutcome>) -> usize {
        outcomes
            .filter(|o| {
                let (Some(s), Some(e)) = (o.first_try, o.first_2xx.or(Some(Instant::now()))) else {
                    return false;
                };
                s <= self.end && e >= self.start
            })
            .count()
    }
}

/// The first panic any tansu log in `broker_dir` reports (file, message line), if any.
/// tansu 0.6 (sqlite storage) can panic in `idempotent_message_check` ("more or less than
/// one row") when the node's idempotent producer resumes after a broker SIGKILL + restart;
/// the broker then stops answering, so the suite says so instead of timing out blind.
pub fn broker_panic(broker_dir: &std::path::Path) -> Option<String> {
    let entries = std::fs::read_dir(broker_dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tansu-") && n.ends_with(".log"));
        if !is_log {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.contains("panicked at") {
                let message = lines.next().unwrap_or_default();
                return Some(format!("{}: {line} {message}", path.display()));
            }
        }
    }
    None
}
