//! Every bound the load generator and the benchmark enforce, with its unit in the name.

/// Concurrent connections (closed loop) or in-flight requests (open loop) at most.
pub const MAX_CONNECTIONS: u32 = 10_000;
/// Longest measured phase (`--duration`), in seconds.
pub const MAX_DURATION_S: u64 = 3_600;
/// Longest warm-up (`--warmup`), in seconds.
pub const MAX_WARMUP_S: u64 = 600;
/// Most merchants a load test creates (`--merchants`).
pub const MAX_MERCHANTS: u32 = 100_000;
/// Highest open-loop target rate (`--rate`), in requests per second.
pub const MAX_RATE_PER_S: u64 = 1_000_000;
/// Largest Zipf exponent accepted for `--skew`.
pub const MAX_SKEW_EXPONENT: f64 = 10.0;
/// Longest per-request timeout (`--timeout-ms`), in milliseconds.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 600_000;
/// Timeout for opening one TCP connection to the target, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Merchants created concurrently during set-up at most.
pub const MAX_SETUP_CONCURRENCY: usize = 16;
/// Highest latency the histograms track, in microseconds (one hour); larger values are
/// clamped to it.
pub const MAX_TRACKED_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits the latency histograms keep.
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;
/// Interval of the live progress line on stderr, in milliseconds.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;
/// Bytes of an unexpected response body quoted in a set-up error at most.
pub const ERROR_BODY_QUOTE_BYTES: usize = 300;
/// Interval between samples of the pools' lag in records during a load test, in ms.
pub const LAG_SAMPLE_INTERVAL_MS: u64 = 1_000;
/// Interval between polls of the pools' lag while they catch up after the load, in ms.
pub const LAG_DRAIN_POLL_MS: u64 = 100;
/// Longest wait after the load for the pools to catch up, in ms; a pool still behind then
/// is reported as not caught up.
pub const LAG_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Interval between the polls of a payment whose confirm answered `processing`, while the
/// load test waits for the PSP webhook (the wait itself is bounded by `--timeout-ms`), in
/// milliseconds.
pub const WEBHOOK_POLL_INTERVAL_MS: u64 = 50;
/// Payments a worker remembers for the `mixed` scenario's reads at most.
pub const MIXED_RECENT_PAYMENTS: usize = 64;

/// A flag outside its limit: the flag and what it allows.
#[derive(Debug)]
pub struct OutOfRange {
    pub flag: &'static str,
    pub message: String,
}

/// The limits `payrail loadtest` and `payrail bench journal` share.
pub fn check_run_flags(
    connections: u32,
    duration_s: u64,
    warmup_s: u64,
    merchants: u32,
) -> Result<(), OutOfRange> {
    let out = |flag, message: String| Err(OutOfRange { flag, message });
    if !(1..=MAX_CONNECTIONS).contains(&connections) {
        return out("--connections", format!("allowed 1..={MAX_CONNECTIONS}"));
    }
    if !(1..=MAX_DURATION_S).contains(&duration_s) {
        return out(
            "--duration",
            format!("allowed 1..={MAX_DURATION_S} seconds"),
        );
    }
    if warmup_s > MAX_WARMUP_S {
        return out("--warmup", format!("allowed 0..={MAX_WARMUP_S} seconds"));
    }
    if !(1..=MAX_MERCHANTS).contains(&merchants) {
        return out("--merchants", format!("allowed 1..={MAX_MERCHANTS}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shared_flag_outside_its_limit_is_named() {
        assert!(check_run_flags(1, 1, 0, 1).is_ok());
        let cases = [
            (check_run_flags(0, 1, 0, 1), "--connections"),
            (
                check_run_flags(MAX_CONNECTIONS + 1, 1, 0, 1),
                "--connections",
            ),
            (check_run_flags(1, 0, 0, 1), "--duration"),
            (check_run_flags(1, 1, MAX_WARMUP_S + 1, 1), "--warmup"),
            (check_run_flags(1, 1, 0, 0), "--merchants"),
        ];
        for (result, flag) in cases {
            let err = result.expect_err(flag);
            assert_eq!(err.flag, flag);
            assert!(err.message.starts_with("allowed"), "{}", err.message);
        }
    }
}
