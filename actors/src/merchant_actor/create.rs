//! The merchant actor's creates: the idempotency key's history (read only when it can be
//! known) and the start of a payment actor for the create.

use super::MerchantState;
use crate::error::CommandError;
use crate::messages::MerchantMsg;
use crate::messages::{CreateMsg, CreateReply, PaymentMsg, Reply};
use crate::payment::{payment_id_for_key, Command};
use crate::snapshots;
use ractor::{ActorProcessingErr, ActorRef};
use tracing::warn;

impl MerchantState {
    /// Makes snapshot reads complete: waits until the projector has applied everything
    /// this actor does not hold in memory (after an unknown outcome: everything up to the
    /// journal's high watermark). `Err` when that cannot be known now (retryable).
    pub(super) async fn ensure_history_readable(&mut self) -> Result<(), CommandError> {
        let runtime = self.args.runtime.clone();
        let partition = self.args.partition;
        if !runtime.fallback.is_end_known(partition) {
            return Err(CommandError::NotReady(
                "the journal's end is not known yet (it was unavailable at start); retry".into(),
            ));
        }
        if !runtime.fallback.is_active(partition)
            && runtime.fallback.is_enabled()
            && runtime.health.state() != payrail_supervisor::BreakerState::Closed
        {
            // The journal is failing: put the partition in fallback now (its appends in
            // flight end first) rather than wait for snapshots that cannot move.
            if let Err(error) = runtime.enter_fallback(partition).await {
                tracing::debug!(partition, %error, "history read without fallback");
            }
        }
        if runtime.fallback.is_active(partition) && !self.journal_end_needed {
            // In fallback the snapshots are complete: everything below the journal's end
            // when the fallback began, and every spooled event, was projected with it.
            return Ok(());
        }
        let bound = if self.journal_end_needed {
            let end = runtime.journal_end(partition).await.map_err(|error| {
                CommandError::NotReady(format!(
                    "the journal's end is unknown after a failed append ({error}); retry"
                ))
            })?;
            end.max(self.memory_complete_from)
        } else {
            self.memory_complete_from
        };
        if !runtime.snapshots_reached(partition, bound).await {
            return Err(CommandError::NotReady(
                "payment snapshots are behind the journal; retry".into(),
            ));
        }
        if self.journal_end_needed {
            self.journal_end_needed = false;
            self.memory_complete_from = bound;
        }
        Ok(())
    }

    pub(super) async fn create(
        &mut self,
        myself: ActorRef<MerchantMsg>,
        command: Command,
        idempotency: Option<(String, String)>,
        correlation_id: Option<String>,
        reply: Reply,
    ) -> Result<(), ActorProcessingErr> {
        let Some((key, fingerprint)) = idempotency else {
            let payment_id = crate::payment::new_payment_id();
            return self
                .start_create(
                    &myself,
                    payment_id,
                    command,
                    correlation_id,
                    CreateReply::Caller(reply),
                )
                .await;
        };
        let Some(reply) = self.idempotency.answer(&key, &fingerprint, reply) else {
            return Ok(());
        };
        let payment_id = payment_id_for_key(&self.args.merchant_id, &key);
        if let Err(error) = self.check_backoff(&payment_id) {
            let _ = reply.send(Err(error));
            return Ok(());
        }
        // Not in memory: its history must be known before anything is created.
        if let Err(error) = self.ensure_history_readable().await {
            let _ = reply.send(Err(error));
            return Ok(());
        }
        let fresh =
            self.args
                .fresh_keys
                .definitely_new(&self.args.runtime, &self.args.merchant_id, &key);
        crate::telemetry::idempotency_lookup(fresh);
        let known = if fresh {
            Ok(None)
        } else {
            snapshots::load_idempotency(&self.args.runtime.pool, &self.args.merchant_id, &key).await
        };
        match known {
            Ok(Some((first, response))) => {
                let complete = self.memory_complete_from;
                if let Some(raised) =
                    self.idempotency
                        .remember(key.clone(), first, response, complete)
                {
                    self.memory_complete_from = self.memory_complete_from.max(raised);
                }
                let unanswered = self.idempotency.answer(&key, &fingerprint, reply);
                debug_assert!(unanswered.is_none(), "a remembered key answers");
                return Ok(());
            }
            Ok(None) => {}
            Err(error) => {
                warn!(merchant_id = %self.args.merchant_id, %error, "idempotency lookup failed");
                let _ = reply.send(Err(CommandError::NotReady(
                    "the idempotency key's history cannot be read now; retry".into(),
                )));
                return Ok(());
            }
        }
        if self.payments.contains_key(payment_id.as_str())
            || self.retiring.contains_key(&payment_id)
        {
            // Its actor lives, so it was created, yet the key's record is not readable.
            let _ = reply.send(Err(CommandError::NotReady(
                "the payment exists but its idempotency record is not readable yet; retry".into(),
            )));
            return Ok(());
        }
        // In the filter before anything is journaled: a load running now cannot miss it.
        self.args.fresh_keys.insert(&self.args.merchant_id, &key);
        self.idempotency
            .begin(key.clone(), fingerprint, payment_id.clone(), reply);
        self.start_create(
            &myself,
            payment_id,
            command,
            correlation_id,
            CreateReply::Merchant {
                idempotency_key: key,
            },
        )
        .await
    }

    async fn start_create(
        &mut self,
        myself: &ActorRef<MerchantMsg>,
        payment_id: String,
        command: Command,
        correlation_id: Option<String>,
        reply_to: CreateReply,
    ) -> Result<(), ActorProcessingErr> {
        let actor = match self.spawn_payment(myself, &payment_id, None).await {
            Ok(actor) => actor,
            Err(error) => {
                let result = Err(CommandError::Internal(error));
                match reply_to {
                    CreateReply::Caller(port) => {
                        let _ = port.send(result);
                    }
                    CreateReply::Merchant { idempotency_key } => {
                        self.idempotency.settle(idempotency_key, result, 0);
                    }
                }
                return Ok(());
            }
        };
        if let Err(e) = actor.cast(PaymentMsg::Create(Box::new(CreateMsg {
            command,
            correlation_id,
            reply: reply_to,
        }))) {
            warn!(error = %e, "payment actor gone before its create");
        }
        Ok(())
    }
}
