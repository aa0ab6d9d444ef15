//! `payrail loadtest`: HTTP load against a node, closed or open loop.

use crate::lag::LagSampler;
use crate::limits::*;
use crate::report::{ErrorKind, Recorder, Report, RunInfo};
use crate::run::{spawn_progress, Live, Timeline};
use crate::schedule::{corrected_latency, slots_before, Pacer};
use crate::zipf::{MerchantPicker, PickerError};
use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request kind of `POST /v1/payments` in reports.
pub const KIND_CREATE: &str = "create";

/// What the simulated merchants do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// `POST /v1/payments` only.
    Create,
    /// create → confirm → capture → refund per payment (needs the lifecycle endpoints).
    Lifecycle,
    /// A mix of creates and lifecycle commands (needs the lifecycle endpoints).
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Lifecycle => "lifecycle",
            Self::Mixed => "mixed",
        }
    }
}

/// `payrail loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Base URL of the node (http only).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Admin token of the node, to create the merchants (POST /v1/merchants).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PAYRAIL__HTTP__ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: String,
    /// What to send. Only `create` exists on the server today.
    #[arg(long, value_enum, default_value_t = Scenario::Create)]
    pub scenario: Scenario,
    /// Concurrent connections: closed loop, each waits for its answer before the next
    /// request; open loop, the most requests in flight.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub connections: u32,
    /// Open loop at this many requests per second in total; latency is measured from each
    /// request's intended send time (coordinated-omission correction). Without it: closed loop.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<u64>,
    /// Length of the measured phase, in seconds (after the warm-up).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub duration: u64,
    /// Warm-up before the measured phase, in seconds; excluded from the results.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    pub warmup: u64,
    /// Stop after this many requests (warm-up included), even before --duration ends.
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Merchants to create and spread the load over.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub merchants: u32,
    /// Zipf exponent of the merchant choice: 0 = uniform, 1 = Zipf's law, higher = hotter
    /// top merchants.
    #[arg(long, value_name = "EXPONENT", default_value_t = 0.0)]
    pub skew: f64,
    /// A request without a complete answer after this many milliseconds is a timeout.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Send creates without an Idempotency-Key header (by default each carries a fresh one,
    /// as a well-behaved client does).
    #[arg(long)]
    pub no_idempotency_keys: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("scenario `{0}` is not available yet: the server has no confirm/capture/refund endpoints so far; use --scenario create")]
    ScenarioNotAvailable(&'static str),
    #[error("{flag}: {message}")]
    InvalidArgument { flag: &'static str, message: String },
    #[error(transparent)]
    Picker(#[from] PickerError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("creating merchant #{index} via POST {url} failed: {reason}")]
    MerchantSetup {
        index: u32,
        url: String,
        reason: String,
    },
    #[error("a load worker failed: {0}")]
    Worker(String),
}

fn invalid(flag: &'static str, message: impl Into<String>) -> LoadtestError {
    LoadtestError::InvalidArgument {
        flag,
        message: message.into(),
    }
}

/// Checks every flag against its limit; returns the target's base URL (no trailing slash).
pub fn validate(args: &LoadtestArgs) -> Result<String, LoadtestError> {
    match args.scenario {
        Scenario::Create => {}
        other => return Err(LoadtestError::ScenarioNotAvailable(other.name())),
    }
    let url = Url::parse(&args.target)
        .map_err(|e| invalid("--target", format!("{:?} is not a URL: {e}", args.target)))?;
    if url.scheme() != "http" {
        return Err(invalid(
            "--target",
            "only http:// targets are supported (this build has no TLS)",
        ));
    }
    if url.host_str().is_none() {
        return Err(invalid("--target", "the URL names no host"));
    }
    if args.admin_token.is_empty() {
        return Err(invalid("--admin-token", "must not be empty"));
    }
    if !(1..=MAX_CONNECTIONS).contains(&args.connections) {
        return Err(invalid(
            "--connections",
            format!("allowed 1..={MAX_CONNECTIONS}"),
        ));
    }
    if let Some(rate) = args.rate {
        if !(1..=MAX_RATE_PER_S).contains(&rate) {
            return Err(invalid(
                "--rate",
                format!("allowed 1..={MAX_RATE_PER_S} requests per second"),
            ));
        }
    }
    if !(1..=MAX_DURATION_S).contains(&args.duration) {
        return Err(invalid(
            "--duration",
            format!("allowed 1..={MAX_DURATION_S} seconds"),
        ));
    }
    if args.warmup > MAX_WARMUP_S {
        return Err(invalid(
            "--warmup",
            format!("allowed 0..={MAX_WARMUP_S} seconds"),
        ));
    }
    if args.max_requests == Some(0) {
        return Err(invalid("--max-requests", "must be at least 1"));
    }
    if !(1..=MAX_MERCHANTS).contains(&args.merchants) {
        return Err(invalid(
            "--merchants",
            format!("allowed 1..={MAX_MERCHANTS}"),
        ));
    }
    if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&args.timeout_ms) {
        return Err(invalid(
            "--timeout-ms",
            format!("allowed 1..={MAX_REQUEST_TIMEOUT_MS} milliseconds"),
        ));
    }
    // Checked here so a bad exponent fails before any merchant is created.
    MerchantPicker::new(1, args.skew)?;
    Ok(args.target.trim_end_matches('/').to_string())
}

fn classify(error: &reqwest::Error) -> ErrorKind {
    if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Transport
    }
}

/// A merchant the run created: its id and a ready `Authorization` header.
struct Merchant {
    id: String,
    authorization: HeaderValue,
}

#[derive(serde::Deserialize)]
struct CreatedMerchant {
    id: String,
    api_key: String,
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(ERROR_BODY_QUOTE_BYTES).collect()
}

async fn create_merchant(
    client: &reqwest::Client,
    url: &str,
    admin: &HeaderValue,
    run_id: &str,
    index: u32,
) -> Result<Merchant, LoadtestError> {
    let fail = |reason: String| LoadtestError::MerchantSetup {
        index,
        url: url.to_string(),
        reason,
    };
    let body = format!(r#"{{"name":"loadtest {run_id} #{index}"}}"#);
    let response = client
        .post(url)
        .header(AUTHORIZATION, admin.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| fail(format!("{} ({e})", classify(&e).label())))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| fail(format!("reading the answer: {e}")))?;
    if status != StatusCode::CREATED {
        let hint = if status == StatusCode::UNAUTHORIZED {
            " (is --admin-token the node's http.admin_token?)"
        } else {
            ""
        };
        return Err(fail(format!("HTTP {status}{hint}: {}", quote(&bytes))));
    }
    let created: CreatedMerchant = serde_json::from_slice(&bytes)
        .map_err(|e| fail(format!("unexpected answer ({e}): {}", quote(&bytes))))?;
    let authorization = HeaderValue::from_str(&format!("Bearer {}", created.api_key))
        .map_err(|_| fail("the API key is not a valid header value".into()))?;
    Ok(Merchant {
        id: created.id,
        authorization,
    })
}

struct Shared {
    client: reqwest::Client,
    payments_url: Url,
    merchants: Vec<Merchant>,
    picker: MerchantPicker,
    idempotency_keys: bool,
    timeline: Timeline,
    live: Arc<Live>,
    max_requests: Option<u64>,
    connections: u32,
    rate_per_s: Option<u64>,
}

impl Shared {
    async fn create(&self, merchant: usize, n: u64, rng: &mut StdRng) -> Result<(), ErrorKind> {
        let Some(m) = self.merchants.get(merchant) else {
            return Err(ErrorKind::Transport);
        };
        let amount: i64 = rng.gen_range(100..=100_000);
        let body = format!(
            r#"{{"amount":{amount},"currency":"eur","order_no":"lt-{n}","channel":"web"}}"#
        );
        let mut request = self
            .client
            .post(self.payments_url.clone())
            .header(AUTHORIZATION, m.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if self.idempotency_keys {
            request = request.header("Idempotency-Key", uuid::Uuid::new_v4().simple().to_string());
        }
        let response = request.send().await.map_err(|e| classify(&e))?;
        let status = response.status();
        // Read the whole body so the connection goes back to the pool.
        response.bytes().await.map_err(|e| classify(&e))?;
        if status == StatusCode::CREATED {
            Ok(())
        } else {
            Err(ErrorKind::Http(status.as_u16()))
        }
    }

    fn record(
        &self,
        recorder: &mut Recorder,
        phase: crate::report::Phase,
        merchant: usize,
        outcome: Result<(), ErrorKind>,
        latency: Duration,
    ) {
        self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.live.finished(outcome.is_ok());
        match outcome {
            Ok(()) => recorder.ok(phase, KIND_CREATE, merchant, latency),
            Err(e) => recorder.error(phase, KIND_CREATE, e),
        }
    }
}

/// Closed loop: send, wait for the answer, send the next.
async fn closed_worker(shared: Arc<Shared>) -> Recorder {
    let mut rng = StdRng::from_entropy();
    let mut recorder = Recorder::default();
    let end = shared.timeline.end();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let Some(n) = shared.live.claim(shared.max_requests) else {
            break;
        };
        let phase = shared.timeline.phase_at(sent);
        let merchant = shared.picker.pick(&mut rng);
        shared.live.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = shared.create(merchant, n, &mut rng).await;
        shared.record(&mut recorder, phase, merchant, outcome, sent.elapsed());
    }
    recorder
}

/// Open loop: connection `connection` sends its share of the global schedule; latency runs
/// from the intended send time.
async fn open_worker(shared: Arc<Shared>, connection: u32, rate_per_s: u64) -> Recorder {
    let mut rng = StdRng::from_entropy();
    let mut recorder = Recorder::default();
    let timeline = shared.timeline;
    let mut pacer = Pacer::new(connection, shared.connections, rate_per_s);
    while let Some(slot) = pacer.next_before(timeline.total, shared.max_requests) {
        let intended = timeline.start + slot.intended;
        if Instant::now() >= timeline.end() {
            break; // behind schedule at the end: the rest is reported as unsent
        }
        tokio::time::sleep_until(intended.into()).await;
        shared.live.issued.fetch_add(1, Ordering::Relaxed);
        let phase = timeline.phase_at(intended);
        let merchant = shared.picker.pick(&mut rng);
        shared.live.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = shared.create(merchant, slot.index, &mut rng).await;
        let latency = corrected_latency(slot.intended, timeline.start.elapsed());
        shared.record(&mut recorder, phase, merchant, outcome, latency);
    }
    recorder
}

/// Runs the load test and returns its report.
pub async fn run(args: &LoadtestArgs) -> Result<Report, LoadtestError> {
    let base = validate(args)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections as usize)
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(LoadtestError::Client)?;
    let payments_url = Url::parse(&format!("{base}/v1/payments"))
        .map_err(|e| invalid("--target", e.to_string()))?;
    let merchants_url = format!("{base}/v1/merchants");
    let admin = HeaderValue::from_str(&format!("Bearer {}", args.admin_token))
        .map_err(|_| invalid("--admin-token", "not a valid header value"))?;

    let run_id = uuid::Uuid::now_v7().simple().to_string();
    if !args.no_progress {
        eprintln!(
            "payrail loadtest: creating {} merchants at {base}",
            args.merchants
        );
    }
    let setup_concurrency = (args.connections as usize).clamp(1, MAX_SETUP_CONCURRENCY);
    let merchants: Vec<Merchant> = futures::stream::iter(0..args.merchants)
        .map(|i| create_merchant(&client, &merchants_url, &admin, &run_id, i))
        .buffered(setup_concurrency)
        .try_collect()
        .await?;
    let picker = MerchantPicker::new(merchants.len(), args.skew)?;

    let timeline = Timeline::new(
        Instant::now(),
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.duration),
    );
    let shared = Arc::new(Shared {
        client,
        payments_url,
        merchants,
        picker,
        idempotency_keys: !args.no_idempotency_keys,
        timeline,
        live: Arc::new(Live::default()),
        max_requests: args.max_requests,
        connections: args.connections,
        rate_per_s: args.rate,
    });
    let progress =
        (!args.no_progress).then(|| spawn_progress("loadtest", timeline, Arc::clone(&shared.live)));
    let lag = LagSampler::spawn(shared.client.clone(), &base, admin.clone(), timeline);

    let mut workers = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        let shared = Arc::clone(&shared);
        match shared.rate_per_s {
            Some(rate) => workers.spawn(open_worker(shared, connection, rate)),
            None => workers.spawn(closed_worker(shared)),
        };
    }
    let mut recorder = Recorder::default();
    let mut failure = None;
    while let Some(result) = workers.join_next().await {
        match result {
            Ok(r) => recorder.merge(&r),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let finished = Instant::now();
    shared.live.stop();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    if let Some(e) = failure {
        return Err(LoadtestError::Worker(e));
    }
    if !args.no_progress {
        eprintln!("payrail loadtest: load done; waiting for the node's pools to catch up");
    }
    let pools = lag.finish(finished).await;

    let mut details = BTreeMap::new();
    details.insert("run_id".into(), run_id);
    details.insert(
        "idempotency_keys".into(),
        (!args.no_idempotency_keys).to_string(),
    );
    details.insert("timeout_ms".into(), args.timeout_ms.to_string());
    if let Some(rate) = args.rate {
        let mut scheduled = slots_before(timeline.total, rate);
        if let Some(max) = args.max_requests {
            scheduled = scheduled.min(max);
        }
        let issued = shared.live.issued.load(Ordering::Relaxed);
        details.insert("open_loop_scheduled".into(), scheduled.to_string());
        details.insert(
            "open_loop_unsent".into(),
            scheduled.saturating_sub(issued).to_string(),
        );
    }
    let ids: Vec<String> = shared.merchants.iter().map(|m| m.id.clone()).collect();
    let run = RunInfo {
        command: "loadtest".into(),
        scenario: args.scenario.name().into(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        target: base,
        connections: args.connections,
        target_rate_per_s: args.rate,
        warmup_s: args.warmup,
        duration_s: args.duration,
        max_requests: args.max_requests,
        skew: Some(args.skew),
    };
    let measured = finished.saturating_duration_since(timeline.measure_start());
    match &pools {
        Ok(_) => {}
        Err(why) => {
            details.insert("pool_lag".into(), format!("not measured: {why}"));
        }
    }
    let mut report = Report::build(run, &recorder, measured, &ids, details);
    report.pools = pools.unwrap_or_default();
    Ok(report)
}
