//! The payment actor's edge to the journal: the append (persist, then apply) and the
//! test-only fault injection around it.

use super::PaymentArgs;
use crate::error::CommandError;
use crate::payment::machine::{evolve, EventContext};
use crate::payment::PaymentEvent;
use kafka_journal::envelope::now_micros;
use kafka_journal::Envelope;
use std::collections::BTreeMap;
use tracing::warn;
use uuid::Uuid;

impl PaymentArgs {
    /// Fault injection (test only, `actors.fault_injection`): the payment's metadata
    /// `payrail_fault = "panic_on_<command>"` panics before the command,
    /// `"panic_after_append_on_<command>"` after its events were journaled (mid-command);
    /// each once per payment and process, so the retry after the restart works.
    /// `"panic_always_on_<command>"` panics every time (restart intensity).
    pub(super) fn inject_fault(
        &self,
        metadata: Option<&BTreeMap<String, String>>,
        stage: &str,
        command: &str,
    ) {
        if !self.runtime.options.fault_injection {
            return;
        }
        let metadata = metadata.or(self.state.as_ref().map(|p| &p.metadata));
        let Some(fault) = metadata.and_then(|m| m.get("payrail_fault")) else {
            return;
        };
        if *fault == format!("panic_always_on_{command}") && stage == "panic_on_" {
            panic!("injected fault: {fault} in payment {}", self.payment_id);
        }
        if *fault != format!("{stage}{command}") {
            return;
        }
        static FIRED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut fired = match FIRED.lock() {
            Ok(fired) => fired,
            Err(poisoned) => poisoned.into_inner(),
        };
        if fired.contains(&self.payment_id) {
            return;
        }
        fired.push(self.payment_id.clone());
        drop(fired);
        panic!("injected fault: {fault} in payment {}", self.payment_id);
    }

    /// Appends `events` to the journal; only after the broker acknowledged them are they
    /// applied to the state.
    pub(super) async fn persist(
        &mut self,
        events: Vec<PaymentEvent>,
        correlation_id: Option<String>,
    ) -> Result<(), CommandError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.runtime.health.admit() == payrail_supervisor::Admission::Refused {
            return Err(CommandError::JournalUnavailable(
                "circuit breaker open".into(),
            ));
        }
        let base_sequence = self.state.as_ref().map(|p| p.sequence).unwrap_or(0);
        let occurred_at = now_micros();
        let envelopes: Vec<Envelope<PaymentEvent>> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                event_id: Uuid::now_v7(),
                event_type: event.event_type().to_string(),
                schema_version: crate::payment::events::SCHEMA_VERSION,
                payment_id: self.payment_id.clone(),
                merchant_id: self.merchant_id.clone(),
                sequence: base_sequence + i as u64 + 1,
                occurred_at_micros: occurred_at,
                correlation_id: correlation_id.clone(),
                payload: event,
            })
            .collect();
        let producer = &self.runtime.producer;
        let records = envelopes
            .iter()
            .map(|e| producer.record(&self.runtime.topic, self.partition, e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        match producer.append(&records).await {
            Ok(receipts) => {
                self.runtime.health.record_success();
                for receipt in &receipts {
                    debug_assert_eq!(receipt.partition, self.partition);
                    self.runtime
                        .record_produced(receipt.partition, receipt.offset);
                }
            }
            Err(error) => {
                self.runtime.health.record_failure();
                warn!(%error, "append failed; its outcome is unknown");
                return Err(CommandError::JournalOutcomeUnknown(error.to_string()));
            }
        }
        let mut state = self.state.take();
        for envelope in &envelopes {
            let ctx = EventContext {
                payment_id: &envelope.payment_id,
                merchant_id: &envelope.merchant_id,
                sequence: envelope.sequence,
                occurred_at_micros: envelope.occurred_at_micros,
            };
            state = evolve(state, ctx, &envelope.payload);
        }
        assert!(
            state.as_ref().is_none_or(
                |p| p.amount_refunded <= p.amount_captured && p.amount_captured <= p.amount
            ),
            "money invariant broken for payment {}",
            self.payment_id
        );
        self.state = state;
        Ok(())
    }
}
