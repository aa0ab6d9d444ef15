//! What the HTTP load test and the journal benchmark share: the timeline of a run, live
//! counters and the progress line on stderr.

use crate::limits::PROGRESS_INTERVAL_MS;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which phase a request belongs to (by its intended send time, or its actual send time in a
/// closed loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measure,
}

/// Start, end of warm-up and end of a run.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub start: Instant,
    pub warmup: Duration,
    pub total: Duration,
}

impl Timeline {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Self {
        Self {
            start,
            warmup,
            total: warmup + duration,
        }
    }

    pub fn measure_start(&self) -> Instant {
        self.start + self.warmup
    }

    pub fn end(&self) -> Instant {
        self.start + self.total
    }

    /// Phase of a request sent (or intended to be sent) at `at`.
    pub fn phase_at(&self, at: Instant) -> Phase {
        if at.saturating_duration_since(self.start) < self.warmup {
            Phase::Warmup
        } else {
            Phase::Measure
        }
    }
}

/// Counters the workers bump and the progress line reads.
#[derive(Debug, Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
    /// Requests started, for `--max-requests` in a closed loop.
    pub issued: AtomicU64,
    stop: AtomicBool,
}

impl Live {
    /// Claims the next request number; `None` once `max` requests were claimed.
    pub fn claim(&self, max: Option<u64>) -> Option<u64> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        match max {
            Some(max) if n >= max => None,
            _ => Some(n),
        }
    }

    pub fn finished(&self, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Prints one progress line per second on stderr until [`Live::stop`]. On a terminal the
/// line is rewritten in place.
pub fn spawn_progress(
    label: &'static str,
    timeline: Timeline,
    live: Arc<Live>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_millis(PROGRESS_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_ok = 0;
        let mut last_at = Instant::now();
        let total_s = timeline.total.as_secs();
        loop {
            tick.tick().await;
            if live.stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            let ok = live.ok.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            let in_flight = live.in_flight.load(Ordering::Relaxed);
            let window = now.duration_since(last_at).as_secs_f64();
            let rate = if window > 0.0 {
                (ok - last_ok) as f64 / window
            } else {
                0.0
            };
            last_ok = ok;
            last_at = now;
            let elapsed = now.saturating_duration_since(timeline.start);
            let phase = match timeline.phase_at(now) {
                Phase::Warmup => "warm-up",
                Phase::Measure if now >= timeline.end() => "draining",
                Phase::Measure => "measure",
            };
            let line = format!(
                "{label} [{:>4}/{total_s} s {phase:<8}] ok {ok}  errors {errors}  {rate:.0} ok/s  in flight {in_flight}",
                elapsed.as_secs()
            );
            let mut err = std::io::stderr().lock();
            let _ = if tty {
                write!(err, "\r\x1b[2K{line}")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
        }
        if tty {
            let _ = writeln!(std::io::stderr());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_at_the_end_of_warm_up() {
        let start = Instant::now();
        let t = Timeline::new(start, Duration::from_secs(2), Duration::from_secs(3));
        assert_eq!(t.phase_at(start), Phase::Warmup);
        assert_eq!(
            t.phase_at(start + Duration::from_millis(1_999)),
            Phase::Warmup
        );
        assert_eq!(t.phase_at(start + Duration::from_secs(2)), Phase::Measure);
        assert_eq!(t.end(), start + Duration::from_secs(5));
        let none = Timeline::new(start, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(none.phase_at(start), Phase::Measure);
    }

    #[test]
    fn claims_stop_at_max_requests() {
        let live = Live::default();
        assert_eq!(live.claim(Some(2)), Some(0));
        assert_eq!(live.claim(Some(2)), Some(1));
        assert_eq!(live.claim(Some(2)), None);
        assert_eq!(live.claim(None), Some(3));
    }
}
