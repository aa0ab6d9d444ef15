//! Fault injection for pools (test only, `actors.fault_injection`): a payment created with
//! metadata `payrail_fault = "panic_in_pool_<pool>"` makes that pool's partition worker
//! panic on the payment's `payment.created` record, once per process. The worker is
//! restarted under `[supervisor.restart]` and applies the record on the next try.

use crate::payment::PaymentEvent;
use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use sqlx::PgConnection;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Wraps a pool's handler; see the module documentation.
pub struct PanickingPool {
    inner: Arc<dyn PartitionHandler>,
    fault: String,
    fired: Mutex<HashSet<uuid::Uuid>>,
}

impl PanickingPool {
    /// `pool`: the pool's short name (`analytics`, `ledger`, `settlement`, `notification`).
    pub fn wrap(pool: &str, inner: Arc<dyn PartitionHandler>) -> Arc<dyn PartitionHandler> {
        Arc::new(Self {
            inner,
            fault: format!("panic_in_pool_{pool}"),
            fired: Mutex::new(HashSet::new()),
        })
    }

    fn inject(&self, record: &ConsumedRecord) {
        if record.event_type.as_deref() != Some("payment.created") {
            return;
        }
        let Ok(envelope) = record.decode::<PaymentEvent>() else {
            return;
        };
        let PaymentEvent::Created(created) = &envelope.payload else {
            return;
        };
        if created.metadata.get("payrail_fault") != Some(&self.fault) {
            return;
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
    }
}

#[async_trait::async_trait]
impl PartitionHandler for PanickingPool {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        self.inject(record);
        self.inner.apply(conn, record).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        for record in records {
            self.inject(record);
        }
        self.inner.apply_batch(conn, records).await
    }
}
