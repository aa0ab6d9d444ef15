//! Open-loop pacing and coordinated-omission correction.
//!
//! At a target rate of `R` requests per second, request number `j` (0-based, over the whole
//! run) is *intended* to be sent at `j / R` seconds after the start. With `N` connections,
//! connection `i` sends requests `i, i + N, i + 2N, …` (the wrk2 scheme), so together they
//! follow the global schedule and each connection has at most one request in flight.
//!
//! When the server stalls, a connection falls behind its schedule and sends late. Measuring
//! from the actual send time would then hide the stall from every request that queued behind
//! it (coordinated omission). The latency we record is therefore measured from the
//! *intended* send time: `done - intended`.

use std::time::Duration;

const NANOS_PER_S: u128 = 1_000_000_000;

/// Offset of request `index` from the start of the run at `rate_per_s` (must be > 0).
pub fn intended_offset(index: u64, rate_per_s: u64) -> Duration {
    let rate = rate_per_s.max(1);
    let seconds = index / rate;
    // remainder < rate <= u64::MAX, so the product fits in u128 and the quotient is < 10^9.
    let nanos = u128::from(index % rate) * NANOS_PER_S / u128::from(rate);
    Duration::new(seconds, u32::try_from(nanos).unwrap_or(0))
}

/// How many requests the global schedule holds before `end` (`j / rate < end`).
pub fn slots_before(end: Duration, rate_per_s: u64) -> u64 {
    let rate = u128::from(rate_per_s.max(1));
    let scaled = end.as_nanos() * rate;
    let slots = scaled.div_ceil(NANOS_PER_S);
    u64::try_from(slots).unwrap_or(u64::MAX)
}

/// Coordinated-omission-corrected latency: from the intended send time to completion.
/// `intended` and `done` are offsets from the same origin.
pub fn corrected_latency(intended: Duration, done: Duration) -> Duration {
    done.saturating_sub(intended)
}

/// The send schedule of one connection in an open-loop run.
#[derive(Debug, Clone)]
pub struct Pacer {
    next_index: u64,
    stride: u64,
    rate_per_s: u64,
}

/// One scheduled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Global request number.
    pub index: u64,
    /// When it should be sent, as an offset from the start of the run.
    pub intended: Duration,
}

impl Pacer {
    /// The schedule of connection `connection` (0-based) of `connections`.
    pub fn new(connection: u32, connections: u32, rate_per_s: u64) -> Self {
        Self {
            next_index: u64::from(connection),
            stride: u64::from(connections.max(1)),
            rate_per_s: rate_per_s.max(1),
        }
    }

    /// The next slot of this connection whose intended time is before `end` and whose index
    /// is below `max_requests` (if set); `None` when the schedule is exhausted.
    pub fn next_before(&mut self, end: Duration, max_requests: Option<u64>) -> Option<Slot> {
        let index = self.next_index;
        if max_requests.is_some_and(|max| index >= max) {
            return None;
        }
        let intended = intended_offset(index, self.rate_per_s);
        if intended >= end {
            return None;
        }
        self.next_index = index.saturating_add(self.stride);
        Some(Slot { index, intended })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn intended_offsets_follow_the_rate() {
        assert_eq!(intended_offset(0, 1_000), Duration::ZERO);
        assert_eq!(intended_offset(1, 1_000), ms(1));
        assert_eq!(intended_offset(2_500, 1_000), ms(2_500));
        assert_eq!(intended_offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(intended_offset(3, 3), Duration::from_secs(1));
        // No overflow at the extremes.
        assert!(intended_offset(u64::MAX, 1) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn connections_together_cover_the_global_schedule_exactly_once() {
        let connections = 7;
        let rate = 1_000;
        let end = ms(1_000);
        let mut seen = BTreeSet::new();
        for c in 0..connections {
            let mut pacer = Pacer::new(c, connections, rate);
            let mut last = None;
            while let Some(slot) = pacer.next_before(end, None) {
                assert_eq!(slot.intended, intended_offset(slot.index, rate));
                if let Some(prev) = last {
                    assert!(slot.intended > prev, "a connection's slots rise");
                }
                last = Some(slot.intended);
                assert!(seen.insert(slot.index), "index {} twice", slot.index);
            }
        }
        assert_eq!(seen.len(), 1_000, "1000 req/s for 1 s");
        assert_eq!(seen.iter().copied().max(), Some(999));
    }

    #[test]
    fn slots_before_counts_the_schedule() {
        assert_eq!(slots_before(ms(1_000), 1_000), 1_000);
        assert_eq!(slots_before(ms(1_001), 1_000), 1_001);
        assert_eq!(
            slots_before(Duration::from_nanos(1), 1_000),
            1,
            "slot 0 at t=0"
        );
        assert_eq!(slots_before(Duration::ZERO, 1_000), 0);
        assert_eq!(slots_before(Duration::from_secs(1), 3), 3);
        let mut n = 0;
        for c in 0..3 {
            let mut p = Pacer::new(c, 3, 7);
            while p.next_before(ms(2_500), None).is_some() {
                n += 1;
            }
        }
        assert_eq!(n, slots_before(ms(2_500), 7));
    }

    #[test]
    fn max_requests_bounds_the_schedule() {
        let mut total = 0;
        for c in 0..4 {
            let mut pacer = Pacer::new(c, 4, 100);
            while pacer.next_before(ms(60_000), Some(10)).is_some() {
                total += 1;
            }
        }
        assert_eq!(total, 10);
    }

    /// A single connection at 1000 req/s whose server stalls 100 ms on the first request
    /// and then answers in 0 ms: every request queued behind the stall is charged the time
    /// it waited, as a client sending at the intended rate would have seen.
    #[test]
    fn a_stall_is_charged_to_every_request_scheduled_during_it() {
        let mut pacer = Pacer::new(0, 1, 1_000);
        let mut now = Duration::ZERO;
        let mut corrected = Vec::new();
        let mut naive = Vec::new();
        for n in 0..200 {
            let Some(slot) = pacer.next_before(ms(200), None) else {
                break;
            };
            let sent = now.max(slot.intended);
            let service = if n == 0 { ms(100) } else { Duration::ZERO };
            now = sent + service;
            corrected.push(corrected_latency(slot.intended, now));
            naive.push(now - sent);
        }
        assert_eq!(corrected.len(), 200);
        assert_eq!(corrected[0], ms(100));
        assert_eq!(corrected[1], ms(99), "scheduled at 1 ms, done at 100 ms");
        assert_eq!(corrected[50], ms(50));
        assert_eq!(corrected[100], Duration::ZERO, "caught up");
        // Without the correction, only one request looks slow.
        assert_eq!(naive.iter().filter(|d| **d > ms(1)).count(), 1);
        assert_eq!(corrected.iter().filter(|d| **d > ms(1)).count(), 99);
    }

    #[test]
    fn corrected_latency_never_underflows() {
        assert_eq!(corrected_latency(ms(5), ms(3)), Duration::ZERO);
    }
}
