//! librdkafka's client errors and log lines, bounded. During a broker outage every client
//! reports every failed reconnect: one node once wrote ~2,000 ERROR lines in a 70 s outage,
//! hiding the few lines that matter (breaker opened, fallback entered, broker back, which
//! the breaker and the fallback log once each). Here each kind of message (an error code,
//! a log facility) is written when it first appears and then at most once per
//! `journal.client_log_every_ms`, with the count of the lines held back; every client
//! error is counted in `payrail_journal_client_errors_total{client}`.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Distinct kinds tracked per client at most; later kinds share one slot.
const MAX_KINDS: usize = 64;

/// Rate limit for one client's messages; see the module docs.
pub struct ClientLog {
    client: String,
    every: Duration,
    kinds: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    last_written: Instant,
    held_back: u64,
}

/// What to do with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Write it, saying that `held_back` lines of its kind were not written since the last.
    Write { held_back: u64 },
    /// Count it only.
    HoldBack,
}

impl ClientLog {
    /// `client` names the librdkafka client (a fixed name such as `payrail-journal`);
    /// `every` is the shortest time between two lines of one kind.
    pub fn new(client: impl Into<String>, every: Duration) -> Self {
        Self {
            client: client.into(),
            every,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a message of `kind` seen at `now` is written.
    pub fn admit(&self, kind: &str, now: Instant) -> Admission {
        let mut kinds = match self.kinds.lock() {
            Ok(kinds) => kinds,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = if kinds.len() >= MAX_KINDS && !kinds.contains_key(kind) {
            "other"
        } else {
            kind
        };
        match kinds.get_mut(key) {
            Some(slot) if now.saturating_duration_since(slot.last_written) < self.every => {
                slot.held_back += 1;
                Admission::HoldBack
            }
            Some(slot) => {
                let held_back = std::mem::take(&mut slot.held_back);
                slot.last_written = now;
                Admission::Write { held_back }
            }
            None => {
                kinds.insert(
                    key.to_string(),
                    Slot {
                        last_written: now,
                        held_back: 0,
                    },
                );
                Admission::Write { held_back: 0 }
            }
        }
    }

    /// A client-wide error from librdkafka (its context's `error`).
    pub fn error(&self, error: &KafkaError, reason: &str) {
        metrics::counter!("payrail_journal_client_errors_total", "client" => self.client.clone())
            .increment(1);
        let kind = format!("error:{:?}", error.rdkafka_error_code());
        if let Admission::Write { held_back } = self.admit(&kind, Instant::now()) {
            tracing::warn!(
                client = %self.client,
                %error,
                reason,
                held_back,
                "journal client error (repeats of it are held back for journal.client_log_every_ms)"
            );
        }
    }

    /// A log line from librdkafka (its context's `log`).
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            tracing::debug!(target: "librdkafka", client = %self.client, facility, message);
            return;
        }
        let Admission::Write { held_back } = self.admit(&format!("log:{facility}"), Instant::now())
        else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", client = %self.client, facility, held_back, message)
            }
            _ => {
                tracing::info!(target: "librdkafka", client = %self.client, facility, held_back, message)
            }
        }
    }
}

/// A librdkafka context that only bounds its client's log (for the lag monitor, the
/// dead-letter producer and admin clients).
pub struct QuietContext(ClientLog);

impl QuietContext {
    pub fn new(log: ClientLog) -> Self {
        Self(log)
    }
}

impl rdkafka::ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_written_first_then_held_back_within_the_interval() {
        let log = ClientLog::new("payrail-journal", Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.admit("e", t0), Admission::Write { held_back: 0 });
        for s in 1..59 {
            assert_eq!(
                log.admit("e", t0 + Duration::from_secs(s)),
                Admission::HoldBack
            );
        }
        assert_eq!(
            log.admit("e", t0 + Duration::from_secs(60)),
            Admission::Write { held_back: 58 }
        );
    }

    #[test]
    fn kinds_are_limited_separately() {
        let log = ClientLog::new("payrail-journal", Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.admit("a", t0), Admission::Write { held_back: 0 });
        assert_eq!(log.admit("b", t0), Admission::Write { held_back: 0 });
        assert_eq!(log.admit("a", t0), Admission::HoldBack);
    }

    #[test]
    fn the_kinds_tracked_are_bounded() {
        let log = ClientLog::new("payrail-journal", Duration::from_secs(60));
        let t0 = Instant::now();
        for k in 0..1_000 {
            log.admit(&format!("kind-{k}"), t0);
        }
        let tracked = log.kinds.lock().map(|k| k.len()).unwrap_or(usize::MAX);
        assert!(tracked <= MAX_KINDS + 1, "{tracked} kinds tracked");
        assert_eq!(log.admit("kind-999", t0), Admission::HoldBack);
    }
}
