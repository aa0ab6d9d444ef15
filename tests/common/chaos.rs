//! Fault-injection helpers for `tests/fault_suite.rs`: keyed clients that retry the same
//! Idempotency-Key until a 2xx, PostgreSQL backend kills, the pools' catch-up measured from
//! `GET /v1/admin/consumers`, `payrail audit` as a process, and the journal's and the list
//! API's view of which payment ids each key got.

use super::{free_port, read_journal, TestEnv, ADMIN_TOKEN, PARTITIONS};
use kafka_journal::codec::{Codec, CodecKind};
use kafka_journal::Envelope;
use payrail_actors::payment::PaymentEvent;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// One create a client must get acknowledged: the same key and body on every try.
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub index: usize,
    pub merchant: usize,
    pub idempotency_key: String,
    pub body: String,
    pub amount: i64,
    /// The body carries `payrail_fault = panic_on_create`.
    pub panics: bool,
    /// The body carries `payrail_fault = panic_in_pool_analytics`.
    pub pool_panics: bool,
    /// Once acknowledged, the payment is cancelled (a lifecycle step, retried until done).
    pub cancel: bool,
}

impl KeySpec {
    pub fn new(index: usize, merchants: usize, run: &str, panic_every: usize) -> Self {
        let panics = panic_every > 0 && index % panic_every == panic_every / 2;
        let pool_panics = panic_every > 0 && index > 0 && index.is_multiple_of(panic_every * 5);
        let amount = 100 + index as i64;
        let metadata = if panics {
            r#","metadata":{"payrail_fault":"panic_on_create"}"#.to_string()
        } else if pool_panics {
            // The analytics pool's worker panics once on this payment's create record (a few
            // per run: each restart backs off longer within the restart window).
            r#","metadata":{"payrail_fault":"panic_in_pool_analytics"}"#.to_string()
        } else {
            format!(r#","metadata":{{"k":"{index}"}}"#)
        };
        Self {
            index,
            merchant: index % merchants,
            idempotency_key: format!("{run}-key-{index:06}"),
            body: format!(
                r#"{{"amount":{amount},"currency":"eur","order_no":"o-{index}","channel":"web"{metadata}}}"#
            ),
            amount,
            panics,
            pool_panics,
            cancel: false,
        }
    }
}

/// What happened to one key.
#[derive(Clone, Debug, Default)]
pub struct KeyOutcome {
    pub first_try: Option<Instant>,
    pub first_2xx: Option<Instant>,
    pub payment_id: Option<String>,
    pub attempts: u32,
    /// Answers that were not 2xx, by status (`conn` = refused/reset/timeout).
    pub failures: BTreeMap<String, u32>,
    /// For a key with `cancel`: whether the payment is known cancelled (a 200, or a read
    /// showing `canceled` after a retry found it already cancelled).
    pub canceled: Option<bool>,
}

impl KeyOutcome {
    pub fn time_to_2xx(&self) -> Option<Duration> {
        Some(self.first_2xx?.duration_since(self.first_try?))
    }
}

/// Shared state of a keyed load: which keys were released, how the clients are paced.
pub struct LoadControl {
    next: AtomicUsize,
    /// Milliseconds between two keys' release; 0 = as fast as the clients go.
    interval_ms: AtomicU64,
    paused: AtomicBool,
    stop: AtomicBool,
    in_flight: AtomicUsize,
    started: Instant,
    released_at: Mutex<Instant>,
}

impl LoadControl {
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicUsize::new(0),
            interval_ms: AtomicU64::new(interval.as_millis() as u64),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            started: Instant::now(),
            released_at: Mutex::new(Instant::now()),
        })
    }

    /// Releases the remaining keys at once.
    pub fn unpace(&self) {
        self.interval_ms.store(0, Ordering::SeqCst);
    }

    /// No new key is started; keys in flight keep retrying until acknowledged.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Clients exit after their key in flight (for an endless key source).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn started_keys(&self) -> usize {
        self.next.load(Ordering::SeqCst)
    }

    /// Waits until no key is in flight (after [`LoadControl::pause`]).
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The next key index to work on, paced; `None` when stopped or `limit` reached.
    pub async fn take(&self, limit: Option<usize>) -> Option<usize> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if self.paused.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let interval = Duration::from_millis(self.interval_ms.load(Ordering::SeqCst));
            let wait = {
                let mut last = match self.released_at.lock() {
                    Ok(l) => l,
                    Err(p) => p.into_inner(),
                };
                let now = Instant::now();
                let due = *last + interval;
                if interval.is_zero() || now >= due {
                    *last = now.max(self.started);
                    None
                } else {
                    Some(due - now)
                }
            };
            if let Some(wait) = wait {
                tokio::time::sleep(wait.min(Duration::from_millis(50))).await;
                continue;
            }
            // Counted in flight before the index is handed out, so `drained` cannot miss it.
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let index = self.next.fetch_add(1, Ordering::SeqCst);
            if limit.is_some_and(|l| index >= l) {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
            return Some(index);
        }
    }
}

/// The HTTP client of the load: short connect timeout (a dead node refuses at once), a
/// request timeout above the node's command timeout.
pub fn load_client(request_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(1))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

/// Creates one key's payment, retrying the same key and body on every non-2xx answer,
/// timeout or connection error, until a 2xx or `deadline` passes.
pub async fn create_until_acknowledged(
    client: &reqwest::Client,
    base: &str,
    api_key: &str,
    spec: &KeySpec,
    per_key_deadline: Duration,
    rng: &mut Rng,
) -> KeyOutcome {
    let bases = [base.to_string()];
    create_until_acknowledged_via(client, &bases, api_key, spec, per_key_deadline, rng).await
}

/// Like [`create_until_acknowledged`], over several nodes: each try goes to the next node
/// of `bases` (from a random one), so a dead node only costs one try.
pub async fn create_until_acknowledged_via(
    client: &reqwest::Client,
    bases: &[String],
    api_key: &str,
    spec: &KeySpec,
    per_key_deadline: Duration,
    rng: &mut Rng,
) -> KeyOutcome {
    let first = rng.below(bases.len() as u64) as usize;
    let mut outcome = KeyOutcome {
        first_try: Some(Instant::now()),
        ..KeyOutcome::default()
    };
    let deadline = Instant::now() + per_key_deadline;
    let mut backoff = Duration::from_millis(50);
    loop {
        let base = &bases[(first + outcome.attempts as usize) % bases.len()];
        outcome.attempts += 1;
        let sent = client
            .post(format!("{base}/v1/payments"))
            .bearer_auth(api_key)
            .header("Idempotency-Key", &spec.idempotency_key)
            .header("content-type", "application/json")
            .body(spec.body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Option<Value> = response.json().await.ok();
                match (status, body) {
                    (200..=299, Some(body)) => match body["id"].as_str() {
                        Some(id) => {
                            outcome.first_2xx = Some(Instant::now());
                            outcome.payment_id = Some(id.to_string());
                            return outcome;
                        }
                        None => format!("{status}-without-id"),
                    },
                    (200..=299, None) => format!("{status}-unreadable"),
                    (_, Some(body)) => match body["error"]["code"].as_str() {
                        Some(code) => format!("{status}:{code}"),
                        None => status.to_string(),
                    },
                    (_, None) => status.to_string(),
                }
            }
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(e) if e.is_connect() => "refused".into(),
            Err(_) => "conn-error".into(),
        };
        *outcome.failures.entry(failure).or_insert(0) += 1;
        if Instant::now() + backoff > deadline {
            return outcome;
        }
        let jitter = Duration::from_millis(rng.below(backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_millis(1000));
    }
}

/// Cancels payment `id`, each try to the next node of `bases`, retrying on 5xx, timeouts
/// and connection errors until `deadline`. A retry whose first try did go through finds
/// the payment already cancelled (4xx): then a read decides. `false`: not cancelled.
pub async fn cancel_until_done(
    client: &reqwest::Client,
    bases: &[String],
    api_key: &str,
    id: &str,
    deadline: Duration,
    rng: &mut Rng,
    failures: &mut BTreeMap<String, u32>,
) -> bool {
    let until = Instant::now() + deadline;
    let first = rng.below(bases.len() as u64) as usize;
    let mut backoff = Duration::from_millis(50);
    for attempt in 0.. {
        let base = &bases[(first + attempt) % bases.len()];
        let sent = client
            .post(format!("{base}/v1/payments/{id}/cancel"))
            .bearer_auth(api_key)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) if response.status().is_client_error() => {
                let read = client
                    .get(format!("{base}/v1/payments/{id}"))
                    .bearer_auth(api_key)
                    .send()
                    .await;
                match read {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap_or_default();
                        return body["status"] == "canceled";
                    }
                    _ => "cancel-4xx-then-read-failed".to_string(),
                }
            }
            Ok(response) => format!("cancel-{}", response.status().as_u16()),
            Err(e) if e.is_connect() => "cancel-refused".into(),
            Err(_) => "cancel-conn-error".into(),
        };
        *failures.entry(failure).or_insert(0) += 1;
        if Instant::now() + backoff > until {
            return false;
        }
        tokio::time::sleep(backoff + Duration::from_millis(rng.below(50))).await;
        backoff = (backoff * 2).min(Duration::from_millis(1000));
    }
    false
}

/// Runs `clients` clients (each try to the next node of `bases`) over keys made by `make_key(index)` (up to `limit`, or until
/// [`LoadControl::stop`]); returns every started key's spec and outcome, by index.
#[allow(clippy::too_many_arguments)]
pub async fn run_keyed_load(
    bases: Vec<String>,
    merchants: Arc<Vec<Merchant>>,
    clients: usize,
    limit: Option<usize>,
    make_key: Arc<dyn Fn(usize) -> KeySpec + Send + Sync>,
    control: Arc<LoadControl>,
    per_key_deadline: Duration,
    request_timeout: Duration,
    seed: u64,
) -> BTreeMap<usize, (KeySpec, KeyOutcome)> {
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let bases = bases.clone();
        let merchants = merchants.clone();
        let make_key = make_key.clone();
        let control = control.clone();
        let results = results.clone();
        let client = load_client(request_timeout);
        let mut rng = Rng::new(seed.wrapping_add(c as u64 * 7919));
        tasks.push(tokio::spawn(async move {
            while let Some(index) = control.take(limit).await {
                let spec = make_key(index);
                let merchant = &merchants[spec.merchant];
                let mut outcome = create_until_acknowledged_via(
                    &client,
                    &bases,
                    &merchant.api_key,
                    &spec,
                    per_key_deadline,
                    &mut rng,
                )
                .await;
                if let (true, Some(id)) = (spec.cancel, outcome.payment_id.clone()) {
                    let done = cancel_until_done(
                        &client,
                        &bases,
                        &merchant.api_key,
                        &id,
                        per_key_deadline,
                        &mut rng,
                        &mut outcome.failures,
                    )
                    .await;
                    outcome.canceled = Some(done);
                }
                match results.lock() {
                    Ok(mut r) => r.insert(index, (spec, outcome)),
                    Err(p) => p.into_inner().insert(index, (spec, outcome)),
                };
                control.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.expect("a load client panicked");
    }
    let results = match results.lock() {
        Ok(mut r) => std::mem::take(&mut *r),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    results
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

/// `GET /v1/admin/consumers` of the node at `base`.
pub async fn consumers(client: &reqwest::Client, base: &str) -> Result<Vec<Value>, String> {
    let response = client
        .get(format!("{base}/v1/admin/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .map_err(|e| format!("GET /v1/admin/consumers: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("GET /v1/admin/consumers: {e}"))?;
    if status != 200 {
        return Err(format!("GET /v1/admin/consumers: {status} {body}"));
    }
    Ok(body["data"].as_array().cloned().unwrap_or_default())
}

/// `Ok` when no partition is in journal fallback and the spool is empty (every spooled
/// event replayed into the journal), from `GET /v1/admin/journal`.
pub async fn spool_drained(client: &reqwest::Client, base: &str) -> Result<(), String> {
    let response = client
        .get(format!("{base}/v1/admin/journal"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .map_err(|e| format!("GET /v1/admin/journal: {e}"))?;
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("GET /v1/admin/journal: {e}"))?;
    let empty = body["spool_rows"] == 0
        && body["partitions_in_fallback"]
            .as_array()
            .is_some_and(|a| a.is_empty());
    if empty {
        Ok(())
    } else {
        Err(format!("spool not drained: {body}"))
    }
}

/// Each consumer's name → its partitions, from one sample.
pub fn partitions_by_consumer(sample: &[Value]) -> BTreeMap<String, BTreeSet<i64>> {
    sample
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let parts = c["partitions"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["partition"].as_i64()).collect())
                .unwrap_or_default();
            (name, parts)
        })
        .collect()
}

/// `Ok` when the pools in `sample` are caught up; otherwise what is missing.
///
/// A pool lists a partition only once it applied (or was handed) a record of it in this
/// process (its worker starts on the first record), so "has its partitions" is judged on
/// the partitions that hold records: for every consumer of `expected`, each partition whose
/// high watermark (the largest any consumer reports; the snapshot projector is manually
/// assigned and reports them all) is above 0 must be listed, and every listed partition
/// must have lag 0. The loads of the fault suite write to every partition after each
/// fault, so a pool without its assignment shows up as a missing partition or a lag.
pub fn caught_up(
    sample: &[Value],
    expected: &BTreeMap<String, BTreeSet<i64>>,
) -> Result<(), String> {
    let mut high: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for c in sample {
        let topic = c["topic"].as_str().unwrap_or_default().to_string();
        for p in c["partitions"].as_array().into_iter().flatten() {
            if let (Some(partition), Some(hw)) =
                (p["partition"].as_i64(), p["high_watermark"].as_i64())
            {
                let e = high.entry((topic.clone(), partition)).or_insert(0);
                *e = (*e).max(hw);
            }
        }
    }
    let mut missing = Vec::new();
    for name in expected.keys() {
        let Some(c) = sample.iter().find(|c| c["name"].as_str() == Some(name)) else {
            missing.push(format!("{name}: absent"));
            continue;
        };
        let short = name.rsplit('.').next().unwrap_or(name);
        let topic = c["topic"].as_str().unwrap_or_default();
        let listed: BTreeMap<i64, i64> = c["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["partition"].as_i64()?, p["lag_records"].as_i64()?)))
            .collect();
        for ((t, partition), hw) in &high {
            if t == topic && *hw > 0 && !listed.contains_key(partition) {
                missing.push(format!(
                    "{short}: partition {partition} (hw {hw}) not listed"
                ));
            }
        }
        for (partition, lag) in &listed {
            if *lag != 0 {
                missing.push(format!("{short}: partition {partition} lag {lag}"));
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// Polls the consumers every 100 ms until [`caught_up`] and the fallback spool is drained
/// (what the pools applied from the spool is in the journal too); the time it took, or the
/// last state seen after `timeout`.
pub async fn wait_caught_up(
    client: &reqwest::Client,
    base: &str,
    expected: &BTreeMap<String, BTreeSet<i64>>,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let last = match consumers(client, base).await {
            Ok(sample) => match caught_up(&sample, expected) {
                Ok(()) => match spool_drained(client, base).await {
                    Ok(()) => return Ok(started.elapsed()),
                    Err(why) => why,
                },
                Err(why) => why,
            },
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            return Err(format!("after {:?}: {last}", started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Runs `payrail audit` with the test's node environment: (clean, differences, output).
pub fn audit(env: &TestEnv) -> (bool, Option<u64>, String) {
    audit_with(env, &[])
}

/// [`audit`] with settings of its own on top of the node environment (e.g. the partitions).
pub fn audit_with(env: &TestEnv, extra: &[(&str, &str)]) -> (bool, Option<u64>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .arg("audit")
        .envs(env.node_env(free_port()))
        .envs(extra.iter().copied())
        .output()
        .expect("run payrail audit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let differences = text
        .lines()
        .find_map(|l| l.strip_prefix("audit: ")?.strip_suffix(" differences"))
        .and_then(|n| n.trim().parse().ok());
    (output.status.success(), differences, text)
}

/// Every decodable payment event in the journal (independent rdkafka reader).
pub fn journal_events(brokers: &str, topic: &str) -> (Vec<Envelope<PaymentEvent>>, usize) {
    journal_events_in(brokers, topic, PARTITIONS)
}

/// [`journal_events`] of a topic with `partitions` partitions (a cluster test's).
pub fn journal_events_in(
    brokers: &str,
    topic: &str,
    partitions: u32,
) -> (Vec<Envelope<PaymentEvent>>, usize) {
    let records = read_journal(brokers, topic, partitions);
    let total = records.len();
    let events = records
        .into_iter()
        .filter_map(|r| {
            let codec = CodecKind::from_content_type(r.headers.get("content_type")?).ok()?;
            codec.decode(&r.value).ok()
        })
        .collect();
    (events, total)
}

/// `payment.created` in the journal: (merchant, idempotency key) → payment ids, and how
/// many created records there were in all (a repeated create of one id counts each time).
pub fn journal_creates(
    events: &[Envelope<PaymentEvent>],
) -> (BTreeMap<(String, String), BTreeSet<String>>, usize) {
    let mut by_key: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut records = 0;
    for e in events {
        if let PaymentEvent::Created(c) = &e.payload {
            records += 1;
            let key = c.idempotency_key.clone().unwrap_or_default();
            by_key
                .entry((e.merchant_id.clone(), key))
                .or_default()
                .insert(e.payment_id.clone());
        }
    }
    (by_key, records)
}

/// Every payment id of the merchant from `GET /v1/payments`, paging with `starting_after`.
pub async fn list_all(client: &reqwest::Client, base: &str, api_key: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("{base}/v1/payments?limit=100");
        if let Some(a) = &after {
            url.push_str(&format!("&starting_after={a}"));
        }
        let response = client
            .get(&url)
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("list body");
        assert_eq!(status, 200, "GET {url}: {body}");
        let page: Vec<String> = body["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|p| p["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let has_more = body["has_more"].as_bool().unwrap_or(false);
        after = page.last().cloned();
        ids.extend(page);
        if !has_more || after.is_none() {
            return ids;
        }
    }
    panic!("list paging did not end after 10,000 pages");
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
