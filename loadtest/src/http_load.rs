//! `payrail loadtest`: HTTP load against a node, closed or open loop.

use crate::lag::LagSampler;
use crate::limits::*;
use crate::mix::mix_description;
use crate::replies::classify;
use crate::report::{Recorder, Report, RunInfo};
use crate::run::{spawn_progress, Live, Timeline};
use crate::scenario::{iteration_description, Start, Worker};
use crate::schedule::{slots_before, Pacer};
pub use crate::shared::Scenario;
use crate::shared::{Merchant, Shared, Target};
use crate::zipf::{MerchantPicker, PickerError};
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::scenario::KIND_CREATE;

/// `payrail loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Base URL of the node (http only); several nodes of a cluster separated by commas,
    /// each connection talking to one of them (connection i to node i mod n). Merchants are
    /// created and the pools' lag is read through the first.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        default_value = "http://127.0.0.1:8080"
    )]
    pub target: String,
    /// Admin token of the node, to create the merchants (POST /v1/merchants).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PAYRAIL__HTTP__ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: String,
    /// What each iteration does: `create` (1 request), `lifecycle` (create, confirm, capture,
    /// refund: 4 requests) or `mixed` (see below). A failed step ends its iteration and
    /// counts as an error of its kind.
    #[arg(long, value_enum, default_value_t = Scenario::Create)]
    pub scenario: Scenario,
    /// Concurrent connections, each running one iteration at a time: closed loop, each starts
    /// the next iteration when the previous one ended; open loop, the most iterations in flight.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub connections: u32,
    /// Open loop at this many iterations per second in total (for `create`, iterations are
    /// requests); the first request of each iteration is measured from its intended start
    /// (coordinated-omission correction), the later steps from their own send time. Without
    /// it: closed loop.
    #[arg(long, value_name = "ITERATIONS_PER_S")]
    pub rate: Option<u64>,
    /// Length of the measured phase, in seconds (after the warm-up).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub duration: u64,
    /// Warm-up before the measured phase, in seconds; excluded from the results.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    pub warmup: u64,
    /// Stop after this many HTTP requests (warm-up included, every step of every iteration
    /// counts), even before --duration ends.
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
    /// Send creates and refunds without an Idempotency-Key header (by default each carries a
    /// fresh one, as a well-behaved client does).
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

/// Nodes one run talks to at most (`--target`).
pub const MAX_TARGETS: usize = 64;

/// Checks every flag against its limit; returns the targets' base URLs (no trailing slash).
pub fn validate(args: &LoadtestArgs) -> Result<Vec<String>, LoadtestError> {
    let targets: Vec<&str> = args.target.split(',').map(str::trim).collect();
    if targets.len() > MAX_TARGETS {
        return Err(invalid("--target", format!("at most {MAX_TARGETS} URLs")));
    }
    for target in &targets {
        let url = Url::parse(target)
            .map_err(|e| invalid("--target", format!("{target:?} is not a URL: {e}")))?;
        if url.scheme() != "http" {
            return Err(invalid(
                "--target",
                "only http:// targets are supported (this build has no TLS)",
            ));
        }
        if url.host_str().is_none() {
            return Err(invalid("--target", "the URL names no host"));
        }
    }
    if args.admin_token.is_empty() {
        return Err(invalid("--admin-token", "must not be empty"));
    }
    check_run_flags(args.connections, args.duration, args.warmup, args.merchants)
        .map_err(|e| invalid(e.flag, e.message))?;
    if let Some(rate) = args.rate {
        if !(1..=MAX_RATE_PER_S).contains(&rate) {
            return Err(invalid(
                "--rate",
                format!("allowed 1..={MAX_RATE_PER_S} requests per second"),
            ));
        }
    }
    if args.max_requests == Some(0) {
        return Err(invalid("--max-requests", "must be at least 1"));
    }
    if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&args.timeout_ms) {
        return Err(invalid(
            "--timeout-ms",
            format!("allowed 1..={MAX_REQUEST_TIMEOUT_MS} milliseconds"),
        ));
    }
    // Checked here so a bad exponent fails before any merchant is created.
    MerchantPicker::new(1, args.skew)?;
    Ok(targets
        .iter()
        .map(|t| t.trim_end_matches('/').to_string())
        .collect())
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

/// Closed loop: one iteration after the other.
async fn closed_worker(shared: Arc<Shared>, connection: u32) -> Recorder {
    let end = shared.timeline.end();
    let mut worker = Worker::new(shared, connection);
    while Instant::now() < end {
        if !worker.iterate(Start::Now).await {
            break;
        }
    }
    worker.into_recorder()
}

/// Open loop: connection `connection` starts its share of the global schedule of
/// iterations; the first request of each is measured from the intended start.
async fn open_worker(shared: Arc<Shared>, connection: u32, rate_per_s: u64) -> Recorder {
    let timeline = shared.timeline;
    let mut pacer = Pacer::new(connection, shared.connections, rate_per_s);
    let max_requests = shared.max_requests;
    let mut worker = Worker::new(Arc::clone(&shared), connection);
    // Every iteration sends at least one request, so --max-requests bounds the schedule too.
    while let Some(slot) = pacer.next_before(timeline.total, max_requests) {
        let intended = timeline.start + slot.intended;
        if Instant::now() >= timeline.end() {
            break; // behind schedule at the end: the rest is reported as unsent
        }
        tokio::time::sleep_until(intended.into()).await;
        shared.live.issued.fetch_add(1, Ordering::Relaxed);
        if !worker.iterate(Start::Scheduled(intended)).await {
            break;
        }
    }
    worker.into_recorder()
}

/// Runs the load test and returns its report.
pub async fn run(args: &LoadtestArgs) -> Result<Report, LoadtestError> {
    let bases = validate(args)?;
    let base = bases[0].clone();
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections as usize)
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(LoadtestError::Client)?;
    let targets = bases
        .iter()
        .map(|base| {
            Ok(Target {
                base: base.clone(),
                payments_url: Url::parse(&format!("{base}/v1/payments"))
                    .map_err(|e| invalid("--target", e.to_string()))?,
            })
        })
        .collect::<Result<Vec<_>, LoadtestError>>()?;
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
        targets,
        merchants,
        picker,
        scenario: args.scenario,
        idempotency_keys: !args.no_idempotency_keys,
        timeout,
        timeline,
        live: Arc::new(Live::default()),
        max_requests: args.max_requests,
        requests_claimed: AtomicU64::new(0),
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
            None => workers.spawn(closed_worker(shared, connection)),
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
    details.insert("iteration".into(), iteration_description(args.scenario));
    if args.scenario == Scenario::Mixed {
        details.insert("mix_weights".into(), mix_description());
    }
    if let Some(rate) = args.rate {
        // Open-loop slots are iterations.
        let issued = shared.live.issued.load(Ordering::Relaxed);
        let mut scheduled = slots_before(timeline.total, rate);
        if let Some(max) = args.max_requests {
            scheduled = scheduled.min(max);
        }
        if shared.requests_spent() {
            // Stopped by --max-requests, not by falling behind.
            scheduled = scheduled.min(issued);
        }
        details.insert("rate_unit".into(), "iterations per second".into());
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
        target: bases.join(","),
        connections: args.connections,
        target_rate_per_s: args.rate,
        warmup_s: args.warmup,
        duration_s: args.duration,
        max_requests: args.max_requests,
        skew: Some(args.skew),
    };
    let measured = finished.saturating_duration_since(timeline.measure_start());
    if let Err(why) = &pools {
        details.insert("pool_lag".into(), format!("not measured: {why}"));
    }
    let mut report = Report::build(run, &recorder, measured, &ids, details);
    report.pools = pools.unwrap_or_default();
    Ok(report)
}
