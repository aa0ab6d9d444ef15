//! Recording outcomes during a run and the final report (text or one JSON object).

use crate::limits::{HISTOGRAM_SIGNIFICANT_DIGITS, MAX_TRACKED_LATENCY_US};
pub use crate::run::Phase;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The server answered with an unexpected HTTP status.
    Http(u16),
    /// The server answered as expected, but the payment (or refund) is in another status
    /// than the step leads to, e.g. `failed` after a confirm.
    UnexpectedStatus(&'static str),
    /// No connection could be opened.
    Connect,
    /// No complete answer within the request timeout.
    Timeout,
    /// Any other client-side failure (connection reset, malformed response, …).
    Transport,
    /// The journal did not acknowledge within its produce timeout.
    JournalTimeout,
    /// The journal refused the append.
    JournalRefused,
    /// The event could not be encoded.
    Encode,
}

impl ErrorKind {
    /// Stable label used in reports, e.g. `http_503`.
    pub fn label(&self) -> String {
        match self {
            Self::Http(status) => format!("http_{status}"),
            Self::UnexpectedStatus(status) => format!("status_{status}"),
            Self::Connect => "connect".into(),
            Self::Timeout => "timeout".into(),
            Self::Transport => "transport".into(),
            Self::JournalTimeout => "journal_timeout".into(),
            Self::JournalRefused => "journal_refused".into(),
            Self::Encode => "encode".into(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (1 <= low, high >= 2 * low, digits <= 5);
    // no input reaches this.
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, HISTOGRAM_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Counts and latencies of one request kind in one phase.
#[derive(Debug, Clone)]
pub struct KindStats {
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Latencies of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Default for KindStats {
    fn default() -> Self {
        Self {
            requests: 0,
            ok: 0,
            errors: BTreeMap::new(),
            latency_us: new_histogram(),
        }
    }
}

impl KindStats {
    fn merge(&mut self, other: &KindStats) {
        self.requests += other.requests;
        self.ok += other.ok;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        // Same bounds on both sides, so adding cannot fail; saturate instead if it did.
        if self.latency_us.add(&other.latency_us).is_err() {
            for v in other.latency_us.iter_recorded() {
                self.latency_us
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Everything one worker saw; workers merge theirs at the end (no shared locks while
/// running).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub warmup: BTreeMap<&'static str, KindStats>,
    pub measure: BTreeMap<&'static str, KindStats>,
    /// Successful requests per merchant index over the whole run (warm-up included).
    pub ok_per_merchant: BTreeMap<usize, u64>,
}

impl Recorder {
    fn phase(&mut self, phase: Phase) -> &mut BTreeMap<&'static str, KindStats> {
        match phase {
            Phase::Warmup => &mut self.warmup,
            Phase::Measure => &mut self.measure,
        }
    }

    pub fn ok(&mut self, phase: Phase, kind: &'static str, merchant: usize, latency: Duration) {
        let stats = self.phase(phase).entry(kind).or_default();
        stats.requests += 1;
        stats.ok += 1;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        stats.latency_us.saturating_record(us.max(1));
        *self.ok_per_merchant.entry(merchant).or_default() += 1;
    }

    pub fn error(&mut self, phase: Phase, kind: &'static str, error: ErrorKind) {
        let stats = self.phase(phase).entry(kind).or_default();
        stats.requests += 1;
        *stats.errors.entry(error).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (phase, theirs) in [
            (Phase::Warmup, &other.warmup),
            (Phase::Measure, &other.measure),
        ] {
            let ours = self.phase(phase);
            for (kind, stats) in theirs {
                ours.entry(kind).or_default().merge(stats);
            }
        }
        for (m, n) in &other.ok_per_merchant {
            *self.ok_per_merchant.entry(*m).or_default() += n;
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Number of latencies (successful requests).
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The measured phase of one request kind.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindReport {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub throughput_per_s: f64,
    pub latency_us: Percentiles,
}

/// Totals of one phase over every kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PhaseTotals {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// Successful requests per kind.
    pub ok_by_kind: BTreeMap<String, u64>,
}

/// Successful requests of one merchant over the whole run (warm-up included).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MerchantCount {
    pub id: String,
    pub ok: u64,
}

/// How the run was set up; echoed in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunInfo {
    /// `loadtest` or `bench journal`.
    pub command: String,
    /// `create`, `lifecycle` or `mixed` for `loadtest`; `journal_append` for the benchmark.
    pub scenario: String,
    /// `closed` (N connections, each sends when its previous answer arrived) or `open`
    /// (fixed target rate, latency from the intended send time).
    pub mode: String,
    /// Target URL, or broker list and topic.
    pub target: String,
    pub connections: u32,
    pub target_rate_per_s: Option<u64>,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub max_requests: Option<u64>,
    /// Zipf exponent of the merchant choice (0 = uniform); `None` for round-robin.
    pub skew: Option<f64>,
}

/// The final report. `throughput_per_s` counts successful requests of the measured phase.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunInfo,
    /// Length of the measured phase as it happened (until the last answer), in seconds.
    pub measured_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub throughput_per_s: f64,
    /// Latencies of every successful request of the measured phase.
    pub latency_us: Percentiles,
    /// The measured phase per request kind.
    pub kinds: BTreeMap<String, KindReport>,
    /// The warm-up phase (not in any number above).
    pub warmup: PhaseTotals,
    /// The whole run, warm-up included.
    pub total: PhaseTotals,
    /// Per merchant, whole run.
    pub merchants: Vec<MerchantCount>,
    /// Extra facts of the run (topic, codec, partitions, …).
    pub details: BTreeMap<String, String>,
    /// The node's journal consumers (snapshots and the four pools) over the measured phase;
    /// empty for the journal benchmark or when the node did not show them.
    pub pools: Vec<crate::lag::PoolLag>,
}

fn totals(phases: &[&BTreeMap<&'static str, KindStats>]) -> PhaseTotals {
    let mut t = PhaseTotals::default();
    for phase in phases {
        for (kind, s) in phase.iter() {
            t.requests += s.requests;
            t.ok += s.ok;
            t.errors += s.error_count();
            *t.ok_by_kind.entry(kind.to_string()).or_default() += s.ok;
        }
    }
    t
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

impl Report {
    /// Builds the report from the merged recorder. `measured` is the measured phase's real
    /// length; `merchant_ids[k]` names merchant index `k`.
    pub fn build(
        run: RunInfo,
        recorder: &Recorder,
        measured: Duration,
        merchant_ids: &[String],
        details: BTreeMap<String, String>,
    ) -> Self {
        let seconds = measured.as_secs_f64();
        let mut all = new_histogram();
        let mut errors_by_kind = BTreeMap::new();
        let mut kinds = BTreeMap::new();
        for (kind, s) in &recorder.measure {
            let _ = all.add(&s.latency_us);
            let mut by_kind = BTreeMap::new();
            for (e, n) in &s.errors {
                *by_kind.entry(e.label()).or_default() += n;
                *errors_by_kind.entry(e.label()).or_default() += n;
            }
            kinds.insert(
                kind.to_string(),
                KindReport {
                    requests: s.requests,
                    ok: s.ok,
                    errors: s.error_count(),
                    errors_by_kind: by_kind,
                    throughput_per_s: per_second(s.ok, seconds),
                    latency_us: Percentiles::of(&s.latency_us),
                },
            );
        }
        let measure = totals(&[&recorder.measure]);
        let merchants = merchant_ids
            .iter()
            .enumerate()
            .map(|(k, id)| MerchantCount {
                id: id.clone(),
                ok: recorder.ok_per_merchant.get(&k).copied().unwrap_or(0),
            })
            .collect();
        Self {
            run,
            measured_s: seconds,
            requests: measure.requests,
            ok: measure.ok,
            errors: measure.errors,
            errors_by_kind,
            throughput_per_s: per_second(measure.ok, seconds),
            latency_us: Percentiles::of(&all),
            kinds,
            warmup: totals(&[&recorder.warmup]),
            total: totals(&[&recorder.warmup, &recorder.measure]),
            merchants,
            details,
            pools: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Human-readable report.
    pub fn to_text(&self) -> String {
        let r = &self.run;
        let mut out = String::new();
        let rate = r
            .target_rate_per_s
            .map(|v| format!(", target {v} req/s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "payrail {}: scenario {}, {} loop, {} connections{rate}, target {}",
            r.command, r.scenario, r.mode, r.connections, r.target
        );
        let _ = writeln!(
            out,
            "warm-up {} s ({} requests, excluded), measured {:.2} s",
            r.warmup_s, self.warmup.requests, self.measured_s
        );
        for (k, v) in &self.details {
            let _ = writeln!(out, "  {k}: {v}");
        }
        let _ = writeln!(
            out,
            "requests {}  ok {}  errors {}  throughput {:.1}/s",
            self.requests, self.ok, self.errors, self.throughput_per_s
        );
        if !self.errors_by_kind.is_empty() {
            let list: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(out, "errors by kind: {}", list.join(", "));
        }
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "ok", "req/s", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let ms = |us: u64| us as f64 / 1_000.0;
        for (kind, k) in &self.kinds {
            let l = &k.latency_us;
            let _ = writeln!(
                out,
                "{:<16} {:>9} {:>9.1} {:>10.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                kind,
                k.ok,
                k.throughput_per_s,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.mean / 1_000.0
            );
        }
        if !self.pools.is_empty() {
            let _ = writeln!(
                out,
                "{:<32} {:>9} {:>10} {:>10} {:>10} {:>12} {:>14}",
                "pool lag (append→apply)",
                "applied",
                "p50 ≤ ms",
                "p99 ≤ ms",
                "max ≤ ms",
                "max records",
                "caught up (ms)"
            );
            let bound = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |v| v.to_string());
            for p in &self.pools {
                let _ = writeln!(
                    out,
                    "{:<32} {:>9} {:>10} {:>10} {:>10} {:>12} {:>14}",
                    p.name,
                    p.applied,
                    bound(p.p50_le_ms),
                    bound(p.p99_le_ms),
                    bound(p.max_le_ms),
                    p.max_lag_records,
                    p.caught_up_after_ms
                        .map_or_else(|| "not in time".to_string(), |v| v.to_string())
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
