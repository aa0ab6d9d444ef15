//! Fault injection for pools (test only, `actors.fault_injection`): a payment created with
//! metadata `payrail_fault = "panic_in_pool_<pool>"` makes that pool's partition worker
//! panic on the payment's `payment.created` record, once per process. The worker is
//! restarted under `[supervisor.restart]` and applies the record on the next try.
//! `payrail_fault = "fail_in_pool_<pool>"` makes the pool's handler return an error for
//! that record on every attempt, so the record is dead-lettered.

use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use payrail_payment::PaymentEvent;
use sqlx::PgConnection;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Wraps a pool's handler; see the module documentation.
pub struct PanickingPool {
    inner: Arc<dyn PartitionHandler>,
    fault: String,
    fail: String,
    fired: Mutex<HashSet<uuid::Uuid>>,
}

impl PanickingPool {
    /// `pool`: the pool's short name (`analytics`, `ledger`, `settlement`, `notification`).
    pub fn wrap(pool: &str, inner: Arc<dyn PartitionHandler>) -> Arc<dyn PartitionHandler> {
        Arc::new(Self {
            inner,
            fault: format!("panic_in_pool_{pool}"),
            fail: format!("fail_in_pool_{pool}"),
            fired: Mutex::new(HashSet::new()),
        })
    }

    fn inject(&self, record: &ConsumedRecord) -> Result<(), HandlerError> {
        if record.event_type.as_deref() != Some("payment.created") {
            return Ok(());
        }
        let Ok(envelope) = record.decode::<PaymentEvent>() else {
            return Ok(());
        };
        let PaymentEvent::Created(created) = &envelope.payload else {
            return Ok(());
        };
        let fault = created.metadata.get("payrail_fault");
        if fault == Some(&self.fail) {
            return Err(format!(
                "injected fault: {} on event {}",
                self.fail, envelope.event_id
            )
            .into());
        }
        if fault != Some(&self.fault) {
            return Ok(());
        }
        let first_time = match self.fired.lock() {
            Ok(mut fired) => fired.insert(envelope.event_id),
            Err(poisoned) => poisoned.into_inner().insert(envelope.event_id),
        };
        if first_time {
            panic!(
                "injected fault: {} on event {} (payment {})",
                self.fault, envelope.event_id, envelope.payment_id
            );
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl PartitionHandler for PanickingPool {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        self.inject(record)?;
        self.inner.apply(conn, record).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        for record in records {
            self.inject(record)?;
        }
        self.inner.apply_batch(conn, records).await
    }
}

/// A pool slowed on purpose (test only, `actors.fault_slow_pool` with
/// `actors.fault_slow_pool_delay_ms` per record), so it lags when an outage starts; it also
/// witnesses order: a payment's events must reach it with no gap in their sequence (a
/// sequence at or below the last one seen is a re-application after a rolled-back attempt,
/// allowed). A gap is logged as an error with "applied out of order"; a summary line with
/// the counts is logged every 500 events.
pub struct SlowPool {
    inner: Arc<dyn PartitionHandler>,
    pool: String,
    delay: std::time::Duration,
    last: Mutex<std::collections::HashMap<String, u64>>,
    checked: std::sync::atomic::AtomicU64,
    violations: std::sync::atomic::AtomicU64,
}

/// Payments whose last sequence the witness remembers at most (then it forgets them all).
const WITNESS_PAYMENTS_MAX: usize = 1_000_000;

impl SlowPool {
    pub fn wrap(
        pool: &str,
        delay_ms: u64,
        inner: Arc<dyn PartitionHandler>,
    ) -> Arc<dyn PartitionHandler> {
        Arc::new(Self {
            inner,
            pool: pool.to_string(),
            delay: std::time::Duration::from_millis(delay_ms),
            last: Mutex::new(std::collections::HashMap::new()),
            checked: std::sync::atomic::AtomicU64::new(0),
            violations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn witness(&self, record: &ConsumedRecord) {
        use std::sync::atomic::Ordering;
        let Ok(envelope) = record.decode::<PaymentEvent>() else {
            return;
        };
        let mut last = match self.last.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.len() >= WITNESS_PAYMENTS_MAX {
            last.clear();
        }
        let previous = last.get(&envelope.payment_id).copied();
        let known = previous.is_some() || envelope.sequence == 1;
        let expected = previous.unwrap_or(0) + 1;
        if known && envelope.sequence > expected {
            self.violations.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %self.pool, payment_id = %envelope.payment_id, sequence = envelope.sequence, expected, offset = record.offset, "order witness: event applied out of order");
        }
        let entry = last.entry(envelope.payment_id.clone()).or_insert(0);
        *entry = (*entry).max(envelope.sequence);
        let checked = self.checked.fetch_add(1, Ordering::Relaxed) + 1;
        if checked.is_multiple_of(500) {
            tracing::info!(pool = %self.pool, checked, violations = self.violations.load(Ordering::Relaxed), "order witness summary");
        }
    }
}

#[async_trait::async_trait]
impl PartitionHandler for SlowPool {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay).await;
        self.witness(record);
        self.inner.apply(conn, record).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay * records.len() as u32).await;
        for record in records {
            self.witness(record);
        }
        self.inner.apply_batch(conn, records).await
    }
}
