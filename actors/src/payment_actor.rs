//! [`PaymentActor`]: hosts one payment's state; persists events, then replies.

use crate::error::CommandError;
use crate::merchant_actor::MerchantMsg;
use crate::payment::machine::{decide, evolve, EventContext};
use crate::payment::{Command, Payment, PaymentEvent, PaymentView};
use crate::runtime::Runtime;
use kafka_journal::envelope::now_micros;
use kafka_journal::Envelope;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use tracing::{info_span, warn, Instrument};
use uuid::Uuid;

pub type Reply = RpcReplyPort<Result<PaymentView, CommandError>>;

/// Where the outcome of a create goes.
pub enum CreateReply {
    /// Straight to the caller.
    Caller(Reply),
    /// To the merchant actor, which answers every request waiting on this idempotency key.
    Merchant { idempotency_key: String },
}

pub enum PaymentMsg {
    Create {
        command: Command,
        correlation_id: Option<String>,
        reply: CreateReply,
    },
    Get(Reply),
}

pub struct PaymentArgs {
    pub runtime: Arc<Runtime>,
    pub payment_id: String,
    pub merchant_id: String,
    pub partition: i32,
    pub merchant: ActorRef<MerchantMsg>,
    /// `None` for a payment about to be created.
    pub state: Option<Payment>,
}

pub struct PaymentActor;

impl Actor for PaymentActor {
    type Msg = PaymentMsg;
    type State = PaymentArgs;
    type Arguments = PaymentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PaymentMsg>,
        args: PaymentArgs,
    ) -> Result<PaymentArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<PaymentMsg>,
        message: PaymentMsg,
        state: &mut PaymentArgs,
    ) -> Result<(), ActorProcessingErr> {
        let span = info_span!(
            "payment",
            payment_id = %state.payment_id,
            merchant_id = %state.merchant_id,
            partition = state.partition
        );
        match message {
            PaymentMsg::Get(reply) => {
                let result = state
                    .state
                    .as_ref()
                    .map(PaymentView::from)
                    .ok_or(CommandError::NotFound);
                let _ = reply.send(result);
            }
            PaymentMsg::Create {
                command,
                correlation_id,
                reply,
            } => {
                let result = state
                    .execute(&command, correlation_id)
                    .instrument(span)
                    .await;
                let unknown_state = matches!(result, Err(CommandError::JournalUnavailable(_)));
                match reply {
                    CreateReply::Caller(port) => {
                        let _ = port.send(result);
                    }
                    CreateReply::Merchant { idempotency_key } => {
                        let _ = state.merchant.cast(MerchantMsg::CreateSettled {
                            idempotency_key,
                            payment_id: state.payment_id.clone(),
                            result,
                        });
                    }
                }
                if unknown_state || state.state.is_none() {
                    // After a failed append the journal may or may not hold the events:
                    // stop, and let the next command rebuild this payment from the journal.
                    myself.stop(Some("state unknown after a failed append".into()));
                }
            }
        }
        Ok(())
    }
}

impl PaymentArgs {
    /// Decide, journal, then apply: the reply is sent only after the broker acknowledged.
    async fn execute(
        &mut self,
        command: &Command,
        correlation_id: Option<String>,
    ) -> Result<PaymentView, CommandError> {
        let events = decide(self.state.as_ref(), command)?;
        if !self.runtime.health.allows_append() {
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
                warn!(%error, "append failed");
                return Err(CommandError::JournalUnavailable(error.to_string()));
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
            if let Some(p) = state.as_mut() {
                p.sequence = envelope.sequence;
            }
        }
        self.state = state;
        self.state
            .as_ref()
            .map(PaymentView::from)
            .ok_or_else(|| CommandError::Internal("no state after applying events".into()))
    }
}
