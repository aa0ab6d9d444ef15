//! The librdkafka client context of the journal producer: client-wide errors go to
//! [`JournalSignals`] (the circuit breaker), log lines to the bounded [`ClientLog`].

use crate::client_log::ClientLog;
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Client-level signals from librdkafka (e.g. all brokers down), for the circuit breaker.
pub trait JournalSignals: Send + Sync + 'static {
    fn client_error(&self, error: &KafkaError, reason: &str);
}

/// Ignores signals; the default until a health monitor is attached.
pub struct NoSignals;
impl JournalSignals for NoSignals {
    fn client_error(&self, _: &KafkaError, _: &str) {}
}

/// Opens the journal breaker on a client-wide error: every broker is down, so no append can
/// succeed and waiting for each one's timeout would only hold callers.
pub struct BreakerSignals(pub payrail_supervisor::JournalHealth);

impl JournalSignals for BreakerSignals {
    fn client_error(&self, error: &KafkaError, _reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.0.trip();
        }
    }
}

/// librdkafka context that forwards client errors to [`JournalSignals`].
pub struct SignalingContext {
    pub(crate) signals: Arc<dyn JournalSignals>,
    pub(crate) client_errors: Arc<AtomicU64>,
    pub(crate) log: Arc<ClientLog>,
}

impl ClientContext for SignalingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        self.log.error(&error, reason);
        self.signals.client_error(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }
}
