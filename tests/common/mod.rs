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

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

/// A `payrail node` child process.
pub struct NodeProcess {
    child: Child,
    pub port: u16,
    pub base: String,
    pub log: PathBuf,
}

impl NodeProcess {
    pub async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        Self::start_on(env, free_port(), extra).await
    }

    pub async fn start_on(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Self {
        let mut node = Self::spawn_on(env, port, extra);
        node.wait_ready(Duration::from_secs(90)).await;
        node
    }

    /// Like [`NodeProcess::start_on`], but returns once the node answers HTTP at all, ready
    /// or not (a node started during an outage serves the partitions it can while the
    /// others wait for the journal).
    pub async fn start_listening_on(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Self {
        let mut node = Self::spawn_on(env, port, extra);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("node exited with {status}: {}", node.log_tail());
            }
            if client
                .get(format!("{}/readyz", node.base))
                .send()
                .await
                .is_ok()
            {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "node not listening: {}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn spawn_on(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Self {
        let log = env
            .dir
            .join(format!("node-{port}-{}.log", uuid::Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("node log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_payrail"));
        command
            .arg("node")
            .envs(env.node_env(port))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            // PAYRAIL_TEST_NODE_LOG overrides the filter, e.g. to debug one module.
            .env(
                "RUST_LOG",
                std::env::var("PAYRAIL_TEST_NODE_LOG")
                    .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
            )
            // The node logs to stdout and panics to stderr: keep both in the log file.
            .stdout(file.try_clone().expect("node log"))
            .stderr(file);
        let child = command.spawn().expect("spawn payrail node");
        Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node exited with {status}: {}", self.log_tail());
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("node not ready in {timeout:?}: {}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The node's exit status if it exits within `timeout`.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// SIGKILL: no shutdown hooks, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`, `-TERM`) to the node.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// HTTP client bound to one node.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Api {
    pub fn new(node: &NodeProcess) -> Self {
        Self {
            base: node.base.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        idem: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idem {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, body }
    }

    /// Like `create_payment`, but a connection failure (node down) is `None`, not a panic.
    pub async fn try_create_payment(&self, key: &str, body: &str) -> Option<Reply> {
        let response = self
            .client
            .post(format!("{}/v1/payments", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.ok()?;
        Some(Reply { status, body })
    }

    /// Creates a merchant; returns (id, api key).
    pub async fn merchant(&self, name: &str) -> (String, String) {
        let r = self
            .send(
                reqwest::Method::POST,
                "/v1/merchants",
                Some(ADMIN_TOKEN),
                None,
                Some(format!(r#"{{"name":"{name}"}}"#)),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        (
            r.body["id"].as_str().expect("merchant id").to_string(),
            r.body["api_key"].as_str().expect("api key").to_string(),
        )
    }

    pub async fn create_payment(&self, key: &str, idem: Option<&str>, body: &str) -> Reply {
        self.send(
            reqwest::Method::POST,
            "/v1/payments",
            Some(key),
            idem,
            Some(body.to_string()),
        )
        .await
    }

    pub async fn get_payment(&self, key: &str, id: &str) -> Reply {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/payments/{id}"),
            Some(key),
            None,
            None,
        )
        .await
    }

    pub async fn metrics(&self, key: &str, date: &str) -> Reply {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/analytics/payment-metrics?date={date}"),
            Some(key),
            None,
            None,
        )
        .await
    }
}

/// One record read back from the journal.
#[derive(Debug, Clone)]
pub struct JournalRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub value: Vec<u8>,
}

/// Reads every record of `topic` (all `partitions`) up to the current high watermarks.
pub fn read_journal(brokers: &str, topic: &str, partitions: u32) -> Vec<JournalRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("payrail-it-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for p in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Timeout::After(Duration::from_secs(10)))
            .expect("watermarks");
        if high > low {
            remaining.insert(p, high);
            list.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("tpl");
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return records;
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !remaining.is_empty() {
        assert!(
            Instant::now() < deadline,
            "journal read timed out; missing {remaining:?}"
        );
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = result.expect("journal record");
        let mut headers = HashMap::new();
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        records.push(JournalRecord {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            value: msg.payload().unwrap_or_default().to_vec(),
        });
        if let Some(high) = remaining.get(&msg.partition()) {
            if msg.offset() + 1 >= *high {
                remaining.remove(&msg.partition());
            }
        }
    }
    records
}

/// The journal's `payment.created` records keyed by `merchant_id`.
pub fn created_for(records: &[JournalRecord], merchant_id: &str) -> Vec<JournalRecord> {
    records
        .iter()
        .filter(|r| r.key.as_deref() == Some(merchant_id))
        .filter(|r| r.headers.get("event_type").map(String::as_str) == Some("payment.created"))
        .cloned()
        .collect()
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

/// Commits offset 0 for every partition of `topic` in consumer group `group` (the group
/// must have no live members), as `kafka-consumer-groups --reset-offsets --to-earliest`.
pub fn reset_group_offsets(brokers: &str, group: &str, topic: &str, partitions: u32) {
    use rdkafka::consumer::CommitMode;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("group admin consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        list.add_partition_offset(topic, p, Offset::Offset(0))
            .expect("tpl");
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .expect("commit offsets 0");
    let committed = consumer
        .committed_offsets(list, Timeout::After(Duration::from_secs(10)))
        .expect("committed offsets");
    for element in committed.elements() {
        assert_eq!(
            element.offset(),
            Offset::Offset(0),
            "group offset reset for partition {}",
            element.partition()
        );
    }
}

/// A `payrail psp-sandbox` child process calling back `node_port`.
pub struct SandboxProcess {
    child: Child,
    pub port: u16,
    pub base: String,
}

impl SandboxProcess {
    pub fn start(env: &TestEnv, node_port: u16, extra: &[&str]) -> Self {
        let port = free_port();
        let log = std::fs::File::create(env.dir.join(format!("sandbox-{port}.log")))
            .expect("sandbox log");
        let child = Command::new(env!("CARGO_BIN_EXE_payrail"))
            .args([
                "psp-sandbox",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--webhook-url",
                &format!("http://127.0.0.1:{node_port}/webhooks/psp/sandbox"),
                "--webhook-secret",
                WEBHOOK_SECRET,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn psp sandbox");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sandbox did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Environment pointing a node at this sandbox.
    pub fn node_env(&self) -> Vec<(String, String)> {
        vec![
            ("PAYRAIL__PSP__SANDBOX_URL".into(), self.base.clone()),
            ("PAYRAIL__PSP__WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
        ]
    }
}

/// A node of `env` wired to a PSP sandbox of its own (which sends it signed webhooks);
/// drop the sandbox after the node's last use.
pub async fn node_with_sandbox(env: &TestEnv) -> (NodeProcess, SandboxProcess) {
    let port = free_port();
    let sandbox = SandboxProcess::start(env, port, &[]);
    let sandbox_env = sandbox.node_env();
    let extra: Vec<(&str, &str)> = sandbox_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = NodeProcess::start_on(env, port, &extra).await;
    (node, sandbox)
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (sequence, event type) of every journaled event of `payment_id`, in journal order.
pub fn payment_events(env: &TestEnv, payment_id: &str) -> Vec<(u64, String)> {
    use kafka_journal::codec::{Codec, CodecKind};
    read_journal(&env.brokers, &env.topic(), PARTITIONS)
        .into_iter()
        .filter_map(|r| {
            let codec = CodecKind::from_content_type(r.headers.get("content_type")?).ok()?;
            let envelope: kafka_journal::Envelope<payrail_actors::payment::PaymentEvent> =
                codec.decode(&r.value).ok()?;
            (envelope.payment_id == payment_id).then_some((envelope.sequence, envelope.event_type))
        })
        .collect()
}
