//! The keyed load: clients retrying one Idempotency-Key until a 2xx, paced by a `LoadControl`.

use super::{Merchant, Rng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
