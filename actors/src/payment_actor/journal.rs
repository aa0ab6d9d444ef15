//! The payment actor's edge to the journal: the append (persist, then apply) and the
//! test-only fault injection around it.

use super::PaymentArgs;
use crate::error::CommandError;
use crate::payment::machine::{evolve, EventContext};
use crate::payment::PaymentEvent;
use kafka_journal::envelope::now_micros;
use kafka_journal::producer::OutgoingRecord;
use kafka_journal::Envelope;
use std::collections::BTreeMap;

/// A command's records whose journal append had an unknown outcome, kept by the payment
/// actor until they are written again (see `PaymentArgs::settle_in_doubt`).
pub struct InDoubt {
    records: Vec<OutgoingRecord>,
    envelopes: Vec<Envelope<PaymentEvent>>,
    /// The lease epoch they carry.
    epoch: u64,
}
use tracing::{error, warn};
use uuid::Uuid;

/// Rounds of entering fallback and taking the gate before a persist gives up.
const FALLBACK_ENTRY_ATTEMPTS: usize = 3;

/// Whether an injected fault fires now: each (payment, fault) once per process, so the retry
/// after it works.
fn fire_once(payment_id: &str, fault: &str) -> bool {
    static FIRED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut fired = match FIRED.lock() {
        Ok(fired) => fired,
        Err(poisoned) => poisoned.into_inner(),
    };
    if fired.iter().any(|(p, f)| p == payment_id && f == fault) {
        return false;
    }
    fired.push((payment_id.to_string(), fault.to_string()));
    true
}

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
        if fire_once(&self.payment_id, fault) {
            panic!("injected fault: {fault} in payment {}", self.payment_id);
        }
    }

    /// Fault injection (test only): `payrail_fault = "stall_before_append"` holds each of
    /// the payment's appends for `actors.fault_stall_ms`, so a test can pause the node past
    /// its lease while the append is in flight (a zombie's late append).
    async fn stall_if_asked(&self, events: &[PaymentEvent]) {
        let options = &self.runtime.options;
        if !options.fault_injection || options.fault_stall_ms == 0 {
            return;
        }
        let created = events.iter().find_map(|e| match e {
            PaymentEvent::Created(created) => Some(&created.metadata),
            _ => None,
        });
        let metadata = created.or(self.state.as_ref().map(|p| &p.metadata));
        if metadata
            .and_then(|m| m.get("payrail_fault"))
            .map(String::as_str)
            == Some("stall_before_append")
        {
            warn!(payment_id = %self.payment_id, stall_ms = options.fault_stall_ms, "injected fault: append stalled");
            tokio::time::sleep(std::time::Duration::from_millis(options.fault_stall_ms)).await;
        }
    }

    /// Persists `events` — to the journal, or to the fallback spool while the partition is
    /// in fallback (breaker open, an append that failed, or a spool not yet replayed) —
    /// and only then applies them to the state.
    pub(super) async fn persist(
        &mut self,
        events: Vec<PaymentEvent>,
        correlation_id: Option<String>,
    ) -> Result<(), CommandError> {
        if events.is_empty() {
            return Ok(());
        }
        // The epoch this node serves the partition under (a single node raised it at start).
        // A partition that moved away while the command waited is not written at all.
        let Some(epoch) = self.runtime.ownership.epoch(self.partition) else {
            return Err(CommandError::NotReady(format!(
                "partition {} is no longer served by this node; retry",
                self.partition
            )));
        };
        self.stall_if_asked(&events).await;
        let base_sequence = self.state.as_ref().map(|p| p.sequence).unwrap_or(0);
        let occurred_at = now_micros();
        let envelopes: Vec<Envelope<PaymentEvent>> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                event_id: Uuid::now_v7(),
                event_type: event.event_type().to_string(),
                schema_version: crate::payment::events::SCHEMA_VERSION,
                payment_id: self.payment_id.to_string(),
                merchant_id: self.merchant_id.to_string(),
                sequence: base_sequence + i as u64 + 1,
                occurred_at_micros: occurred_at,
                correlation_id: correlation_id.clone(),
                payload: event,
            })
            .collect();
        let producer = &self.runtime.producer;
        let records = envelopes
            .iter()
            .map(|e| producer.record(&self.runtime.topic, self.partition, epoch, e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        if let Err((error, records)) = self.write(records).await {
            if matches!(error, CommandError::JournalOutcomeUnknown(_)) && self.state.is_some() {
                // A journal append that may still land (a hung broker writes what it had
                // read long after the node gave up): this command's records stay here and
                // are written again, same event ids, before anything else is decided on
                // this payment — never a second event at their sequence (issue 22, defect 8).
                self.in_doubt = Some(InDoubt {
                    records,
                    envelopes,
                    epoch,
                });
            }
            return Err(error);
        }
        self.acknowledge(epoch, &envelopes)
    }

    /// After the records of `envelopes` were persisted under `epoch`: checks the lease and
    /// applies them to the state.
    fn acknowledge(
        &mut self,
        epoch: u64,
        envelopes: &[Envelope<PaymentEvent>],
    ) -> Result<(), CommandError> {
        // No acknowledgement without a valid lease: if it lapsed while the append was in
        // flight, another node may own the partition and its marker may precede these
        // records, which then take effect nowhere. The outcome is unknown to the client,
        // and this actor's state is rebuilt before its next command.
        if !self
            .runtime
            .ownership
            .may_acknowledge(self.partition, epoch)
        {
            warn!(
                partition = self.partition,
                epoch, "lease lapsed before the append was acknowledged"
            );
            return Err(CommandError::JournalOutcomeUnknown(format!(
                "partition {}: this node's lease lapsed before the write was acknowledged",
                self.partition
            )));
        }
        let mut state = self.state.take();
        for envelope in envelopes {
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

    /// Writes the records of a command whose journal append had an unknown outcome again,
    /// with their event ids (a reader takes an event id once, so a late copy of the first
    /// append is harmless), and applies them. Until that succeeds nothing else is decided
    /// on this payment. `Err` keeps them in doubt; a moved lease hands the question to the
    /// new owner (its marker fences a late copy) and this actor is rebuilt.
    pub(super) async fn settle_in_doubt(&mut self) -> Result<(), CommandError> {
        let Some(doubt) = self.in_doubt.take() else {
            return Ok(());
        };
        if self.runtime.ownership.epoch(self.partition) != Some(doubt.epoch) {
            return Err(CommandError::JournalOutcomeUnknown(format!(
                "partition {} changed owner while a write was in doubt",
                self.partition
            )));
        }
        let spooled = match doubt
            .records
            .first()
            .map(|r| Uuid::parse_str(&r.headers.event_id))
        {
            Some(Ok(first)) => self.runtime.fallback.spool().holds_event(first).await,
            _ => Ok(false),
        };
        let spooled = match spooled {
            Ok(spooled) => spooled,
            Err(error) => {
                self.in_doubt = Some(doubt);
                return Err(CommandError::JournalOutcomeUnknown(format!(
                    "an earlier write is still in doubt ({error}); retry"
                )));
            }
        };
        if !spooled {
            if let Err((error, records)) = self.write(doubt.records).await {
                self.in_doubt = Some(InDoubt { records, ..doubt });
                return Err(match error {
                    CommandError::JournalUnavailable(reason) => {
                        CommandError::JournalOutcomeUnknown(format!(
                            "an earlier write is still in doubt: {reason}"
                        ))
                    }
                    other => other,
                });
            }
        }
        warn!(
            payment_id = %self.payment_id,
            events = doubt.envelopes.len(),
            already_spooled = spooled,
            "a write in doubt was settled by writing it again"
        );
        self.acknowledge(doubt.epoch, &doubt.envelopes)
    }

    /// The journal append, or the spool; see [`crate::fallback`]. An append that failed
    /// has an unknown outcome: its records are spooled with the same event ids (readers
    /// ignore the second copy), so the command is still acknowledged.
    /// On failure the records come back with the error.
    async fn write(
        &self,
        records: Vec<OutgoingRecord>,
    ) -> Result<(), (CommandError, Vec<OutgoingRecord>)> {
        let runtime = &self.runtime;
        let partition = self.partition;
        let mut attempted = None;
        let mut dies = false;
        {
            let gate = runtime.fallback.gate(partition).await;
            if gate.spooling {
                return self
                    .spool(&gate, &records, None)
                    .await
                    .map_err(|error| (error, records));
            }
            if self.append_late_if_asked(&records) {
                attempted = Some("the append timed out (injected; it lands late)".into());
                dies = self.dies_in_doubt_if_asked(&records);
            } else if runtime.health.admit() != payrail_supervisor::Admission::Refused {
                match runtime.producer.append(&records).await {
                    Ok(receipts) => {
                        runtime.health.record_success();
                        let offsets: Vec<i64> = receipts.iter().map(|r| r.offset).collect();
                        for receipt in &receipts {
                            debug_assert_eq!(receipt.partition, partition);
                            runtime.record_produced(receipt.partition, receipt.offset);
                        }
                        // Every journaled record goes to the tail, lease lapsed or not: a
                        // gap there would let a pool skip a record the journal holds. A
                        // fenced one is kept out of the snapshots by `enter()`'s fence.
                        runtime.fallback.journaled(
                            partition,
                            records,
                            &offsets,
                            runtime.applied_floor(partition),
                        );
                        return Ok(());
                    }
                    Err(error) => {
                        runtime.health.record_failure();
                        warn!(%error, "append failed; its outcome is unknown, spooling it");
                        attempted = Some(error.to_string());
                    }
                }
            }
        }
        // The replayer may end a fallback whose spool is empty before this takes the gate
        // again; then it is entered again (bounded: each round needs that race).
        for _ in 0..FALLBACK_ENTRY_ATTEMPTS {
            if let Err(error) = runtime.enter_fallback(partition).await {
                warn!(partition, %error, "cannot enter journal fallback");
                let error = match attempted {
                    Some(append) => CommandError::JournalOutcomeUnknown(append),
                    None => CommandError::JournalUnavailable(error.to_string()),
                };
                return Err((error, records));
            }
            let gate = runtime.fallback.gate(partition).await;
            if gate.spooling {
                if dies {
                    // Fault injection: the node dies with the write in doubt, its partition
                    // in fallback and the write not spooled (issue 22's spool-path window).
                    error!(payment_id = %self.payment_id, "injected fault: the node dies with a write in doubt");
                    std::process::abort();
                }
                return self
                    .spool(&gate, &records, attempted)
                    .await
                    .map_err(|error| (error, records));
            }
        }
        let error = match attempted {
            Some(append) => CommandError::JournalOutcomeUnknown(append),
            None => {
                CommandError::JournalUnavailable("the partition's fallback keeps ending".into())
            }
        };
        Err((error, records))
    }

    async fn spool(
        &self,
        gate: &crate::fallback::PersistGate<'_>,
        records: &[OutgoingRecord],
        attempted: Option<String>,
    ) -> Result<(), CommandError> {
        let runtime = &self.runtime;
        let result = runtime
            .fallback
            .append(gate, self.partition, records, &runtime.pool)
            .await;
        match self.lose_spool_ack_if_asked(records, result) {
            Ok(()) => Ok(()),
            Err(error) => {
                warn!(partition = self.partition, %error, "spooling failed");
                // Only a write that surely left nothing behind is "nothing recorded"; a
                // spool COMMIT whose answer was lost may have landed, and deciding the
                // retry on this actor's old state would spool a second event at the same
                // sequence (a double refund). Outcome unknown: the actor is rebuilt from
                // the store before its next command.
                Err(match (attempted, error) {
                    (Some(append), _) => CommandError::JournalOutcomeUnknown(append),
                    (None, error) if !error.nothing_written() => {
                        CommandError::SpoolOutcomeUnknown(error.to_string())
                    }
                    (None, error) => CommandError::JournalUnavailable(error.to_string()),
                })
            }
        }
    }

    /// Fault injection (test only): `payrail_fault = "append_late_on_<event type>"` makes
    /// the first append of such an event look timed out to this node while it reaches the
    /// journal `actors.fault_stall_ms` later — what a hung broker does with a request it
    /// had read before it stopped. `"park_append_on_<event type>"` looks the same to the
    /// node, but the records are written (JSON) to [`parked_append_path`] for a test to
    /// journal whenever it chooses.
    fn append_late_if_asked(&self, records: &[OutgoingRecord]) -> bool {
        let options = &self.runtime.options;
        if !options.fault_injection {
            return false;
        }
        let Some(fault) = self
            .state
            .as_ref()
            .and_then(|p| p.metadata.get("payrail_fault"))
        else {
            return false;
        };
        let parked = records.iter().any(|r| {
            *fault == format!("park_append_on_{}", r.headers.event_type)
                || *fault == format!("park_append_and_die_on_{}", r.headers.event_type)
        });
        let path = parked.then(|| parked_append_path(self.payment_id.as_ref()));
        // Once per payment, across restarts too (the file stays until the test removes it).
        if let Some(path) = path.filter(|p| !p.exists() && fire_once(&self.payment_id, fault)) {
            // The request outlives this node: the test plays the hung broker and writes it
            // whenever it likes, e.g. after this node was killed and restarted.
            warn!(payment_id = %self.payment_id, path = %path.display(), "injected fault: the append is parked for the test to land");
            match serde_json::to_vec(records) {
                Ok(bytes) => {
                    if let Err(error) = std::fs::write(&path, bytes) {
                        warn!(%error, "parking the append failed");
                    }
                }
                Err(error) => warn!(%error, "encoding the parked append failed"),
            }
            return true;
        }
        let hit = records
            .iter()
            .any(|r| *fault == format!("append_late_on_{}", r.headers.event_type));
        if !hit || !fire_once(&self.payment_id, fault) {
            return false;
        }
        warn!(payment_id = %self.payment_id, "injected fault: the append lands late");
        let (runtime, late) = (self.runtime.clone(), records.to_vec());
        let delay = std::time::Duration::from_millis(options.fault_stall_ms);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(error) = runtime.producer.append(&late).await {
                warn!(%error, "the injected late append failed");
            }
        });
        true
    }

    /// Fault injection (test only): `payrail_fault = "park_append_and_die_on_<event type>"`
    /// parks the append like `park_append_on_…` and then aborts the node once the partition
    /// is in fallback, before the write in doubt is spooled again: the dead node leaves a
    /// write a hung broker may still land, which no spool row vouches for.
    fn dies_in_doubt_if_asked(&self, records: &[OutgoingRecord]) -> bool {
        self.runtime.options.fault_injection
            && self
                .state
                .as_ref()
                .and_then(|p| p.metadata.get("payrail_fault"))
                .is_some_and(|fault| {
                    records.iter().any(|r| {
                        *fault == format!("park_append_and_die_on_{}", r.headers.event_type)
                    })
                })
    }

    /// Fault injection (test only): `payrail_fault = "lose_spool_ack_on_<event type>"`
    /// turns the first successful spool write of such an event into the error a connection
    /// cut after COMMIT gives: the rows are committed, the node hears a failure.
    fn lose_spool_ack_if_asked(
        &self,
        records: &[OutgoingRecord],
        result: Result<(), crate::fallback::FallbackError>,
    ) -> Result<(), crate::fallback::FallbackError> {
        if result.is_err() || !self.runtime.options.fault_injection {
            return result;
        }
        let Some(fault) = self
            .state
            .as_ref()
            .and_then(|p| p.metadata.get("payrail_fault"))
        else {
            return result;
        };
        let hit = records
            .iter()
            .any(|r| *fault == format!("lose_spool_ack_on_{}", r.headers.event_type));
        if hit && fire_once(&self.payment_id, fault) {
            warn!(payment_id = %self.payment_id, "injected fault: spool COMMIT acknowledgement lost");
            return Err(crate::fallback::FallbackError::OutcomeUnknown(
                "connection reset after COMMIT (injected)".into(),
            ));
        }
        result
    }
}

/// Where the fault `park_append_on_<event type>` leaves the records of `payment_id`'s
/// parked append (test only).
pub fn parked_append_path(payment_id: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("payrail-parked-{payment_id}.json"))
}
