//! The notification pool (`payrail.notification`): signed webhooks to the merchant and
//! customer e-mails, through a transactional outbox.
//!
//! - The **projector** ([`NotificationProjector`], one partition worker per assigned partition
//!   of `payment.events`) folds each payment's events into its own state table and, inside
//!   the worker's PostgreSQL transaction, inserts one `notifications` row per channel
//!   (webhook if the merchant has a `webhook_url`, in payrail's format or, with
//!   `webhook_api = 'stripe'`, as a Stripe event; e-mail if SMTP is configured, the payment
//!   has a `customer_email` and the event type has a template). So each event yields its
//!   notifications exactly once, whatever the redeliveries.
//! - The **delivery task** ([`delivery`], one per node) claims due rows, sends them with
//!   bounded concurrency, in order per payment and channel, records every attempt, retries
//!   on `notification.retry_schedule_ms`, and publishes dead ones to `notification.dlq`.
//!
//! Settlement events (`settlement.created`, `settlement.paid`) come later from the
//! settlement pool's topic: a handler for that topic builds its body and calls [`enqueue`]
//! with `payment_id: None` (no per-payment ordering) — see docs/DECISIONS.md.

pub mod delivery;
pub mod email;
pub mod options;
pub mod store;

use kafka_journal::consumer::{
    Assignment, ConsumedRecord, ConsumerHandle, ConsumerSink, ConsumerSpec, HandlerError,
    PartitionHandler, Supervision,
};
use kafka_journal::{Envelope, JournalOptions, JournalProducer};
use options::NotificationOptions;
use payrail_payment::machine::EventContext;
use payrail_payment::projection::{next_state, NextState};
use payrail_payment::{Payment, PaymentEvent, PaymentView, RefundView};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use uuid::Uuid;

/// Consumer-group (and offsets) name of the notification pool, before the namespace prefix.
pub const NOTIFICATION_GROUP: &str = "payrail.notification";
/// Dead-letter topic of the pool, before the namespace prefix.
pub const DLQ_TOPIC: &str = "notification.dlq";

/// Delivery channel of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Webhook,
    Email,
}

impl Channel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
        }
    }
}

/// One outbox row to insert.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub channel: Channel,
    pub merchant_id: &'a str,
    /// Rows of one payment and channel are delivered in `sequence` order; `None` = unordered.
    pub payment_id: Option<&'a str>,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub sequence: i64,
    pub payload: &'a Value,
}

/// Inserts a notification (in the caller's transaction). A second insert for the same event
/// and channel inserts nothing; returns whether a row was inserted.
pub async fn enqueue(
    conn: &mut PgConnection,
    n: &NewNotification<'_>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO notifications (id, channel, merchant_id, payment_id, event_id, event_type, sequence, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (event_id, channel) DO NOTHING",
    )
    .bind(format!("ntf_{}", Uuid::now_v7().simple()))
    .bind(n.channel.as_str())
    .bind(n.merchant_id)
    .bind(n.payment_id)
    .bind(n.event_id)
    .bind(n.event_type)
    .bind(n.sequence)
    .bind(n.payload)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

fn refund_id(event: &PaymentEvent) -> Option<&str> {
    match event {
        PaymentEvent::RefundCreated { refund_id, .. }
        | PaymentEvent::RefundSucceeded { refund_id, .. }
        | PaymentEvent::RefundFailed { refund_id, .. } => Some(refund_id),
        _ => None,
    }
}

/// The webhook body of a payment or refund event: `{id, object:"event", type, created,
/// sequence, data:{object}}`, where `object` is the payment (or the refund) as of the event.
pub fn webhook_body(envelope: &Envelope<PaymentEvent>, payment: &Payment) -> Value {
    let object = match refund_id(&envelope.payload).and_then(|id| payment.refund(id)) {
        Some(refund) => json!(RefundView::new(payment, refund)),
        None => json!(PaymentView::from(payment)),
    };
    json!({
        "id": format!("evt_{}", envelope.event_id.simple()),
        "object": "event",
        "type": envelope.event_type,
        "created": envelope.occurred_at_micros.div_euclid(1_000_000),
        "sequence": envelope.sequence,
        "data": { "object": object },
    })
}

/// `merchants.webhook_api` of a merchant whose webhooks are Stripe event objects.
pub const STRIPE_WEBHOOK_API: &str = "stripe";

/// The webhook body for a merchant with `"webhook_api": "stripe"`: the Stripe event of a
/// payment or refund event (`payrail_stripe_compat::events`), with payrail's event id;
/// `None` for an event without a Stripe counterpart (none is sent).
pub fn stripe_webhook_body(envelope: &Envelope<PaymentEvent>, payment: &Payment) -> Option<Value> {
    payrail_stripe_compat::events::event(
        &format!("evt_{}", envelope.event_id.simple()),
        &envelope.event_type,
        envelope.occurred_at_micros.div_euclid(1_000_000),
        &payrail_stripe_compat::Payment::from(PaymentView::from(payment)),
        refund_id(&envelope.payload),
    )
}

/// The pool's partition handler; see the module documentation.
pub struct NotificationProjector {
    emails: bool,
}

impl NotificationProjector {
    pub fn new(options: &NotificationOptions) -> Self {
        Self {
            emails: options.smtp.is_some(),
        }
    }
}

#[async_trait::async_trait]
impl PartitionHandler for NotificationProjector {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        let envelope = record.decode::<PaymentEvent>()?;
        let stored =
            kafka_journal::offsets::stored_state(conn, "notification_payment_states", &envelope)
                .await?;
        let ctx = EventContext {
            payment_id: &envelope.payment_id,
            merchant_id: &envelope.merchant_id,
            sequence: envelope.sequence,
            occurred_at_micros: envelope.occurred_at_micros,
        };
        let payment = match next_state(stored, ctx, &envelope.payload) {
            NextState::Store(payment) => *payment,
            NextState::AlreadyApplied => return Ok(()),
            NextState::NotApplicable => {
                tracing::warn!(event_id = %envelope.event_id, event_type = %envelope.event_type, "event does not apply to the payment; no notification");
                return Ok(());
            }
        };
        let written = sqlx::query(
            "INSERT INTO notification_payment_states (payment_id, merchant_id, sequence, state)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (payment_id) DO UPDATE
             SET sequence = EXCLUDED.sequence, state = EXCLUDED.state, updated_at = now()
             WHERE notification_payment_states.sequence < EXCLUDED.sequence",
        )
        .bind(&payment.id)
        .bind(&payment.merchant_id)
        .bind(payment.sequence as i64)
        .bind(serde_json::to_value(&payment)?)
        .execute(&mut *conn)
        .await?;
        if written.rows_affected() == 0 {
            return Ok(()); // already notified up to this event
        }

        let merchant: Option<(String, Option<String>, String)> =
            sqlx::query_as("SELECT name, webhook_url, webhook_api FROM merchants WHERE id = $1")
                .bind(&envelope.merchant_id)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((merchant_name, webhook_url, webhook_api)) = merchant else {
            tracing::warn!(merchant_id = %envelope.merchant_id, "unknown merchant; no notification");
            return Ok(());
        };
        let sequence = i64::try_from(envelope.sequence)?;
        let body = match (webhook_url.is_some(), webhook_api.as_str()) {
            (false, _) => None,
            (true, STRIPE_WEBHOOK_API) => stripe_webhook_body(&envelope, &payment),
            (true, _) => Some(webhook_body(&envelope, &payment)),
        };
        if let Some(body) = body {
            enqueue(
                conn,
                &NewNotification {
                    channel: Channel::Webhook,
                    merchant_id: &envelope.merchant_id,
                    payment_id: Some(&envelope.payment_id),
                    event_id: envelope.event_id,
                    event_type: &envelope.event_type,
                    sequence,
                    payload: &body,
                },
            )
            .await?;
        }
        if self.emails {
            let refund = refund_id(&envelope.payload);
            if let Some(email) =
                email::render(&envelope.event_type, &payment, refund, &merchant_name)
            {
                let payload = serde_json::to_value(&email)?;
                enqueue(
                    conn,
                    &NewNotification {
                        channel: Channel::Email,
                        merchant_id: &envelope.merchant_id,
                        payment_id: Some(&envelope.payment_id),
                        event_id: envelope.event_id,
                        event_type: &envelope.event_type,
                        sequence,
                        payload: &payload,
                    },
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// What [`start`] runs; stop both on shutdown.
pub struct NotificationPool {
    pub consumer: ConsumerHandle,
    pub delivery: tokio::task::JoinHandle<()>,
    /// The projector, also fed spooled events during a journal outage.
    pub handler: Arc<dyn kafka_journal::consumer::PartitionHandler>,
}

impl NotificationPool {
    pub fn stop(&self) {
        self.delivery.abort();
        self.consumer.stop();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("notification delivery: {0}")]
    Delivery(#[from] delivery::DeliveryError),
}

/// The pool's consumer on `partitions` of `topic` (the node's own; offsets from
/// PostgreSQL): its spec and projector, to run on a fetch of its own or a shared one.
pub fn consumer_sink(
    journal: &JournalOptions,
    options: &NotificationOptions,
    topic: &str,
    partitions: Vec<i32>,
) -> ConsumerSink {
    ConsumerSink {
        spec: ConsumerSpec {
            name: journal.group(NOTIFICATION_GROUP),
            topic: topic.to_string(),
            assignment: Assignment::Manual(partitions),
            dead_letter_topic: Some(journal.dead_letter_topic(NOTIFICATION_GROUP)),
        },
        handler: Arc::new(NotificationProjector::new(options)),
    }
}

/// Creates `<namespace>notification.dlq` and starts this node's delivery task for the pool
/// whose consumer (started from [`consumer_sink`]) is `consumer`, applying through
/// `handler`.
pub async fn start(
    journal: &JournalOptions,
    supervision: Supervision,
    options: &NotificationOptions,
    consumer: ConsumerHandle,
    handler: Arc<dyn kafka_journal::consumer::PartitionHandler>,
    pool: PgPool,
    producer: JournalProducer,
) -> Result<NotificationPool, StartError> {
    let dlq_topic = journal.topic(DLQ_TOPIC);
    // Made in the background, and again on the first dead letter when the journal is
    // unreachable now: a node started during an outage must not wait for the broker here
    // before it listens (issue 22).
    let (options_for_topic, spec) = (
        journal.clone(),
        kafka_journal::admin::TopicSpec {
            name: dlq_topic.clone(),
            partitions: journal.partitions,
        },
    );
    tokio::spawn(async move {
        if let Err(error) =
            kafka_journal::admin::ensure_topics(&options_for_topic, std::slice::from_ref(&spec))
                .await
        {
            tracing::warn!(topic = %spec.name, %error, "cannot create the notification dead-letter topic now");
        }
    });
    let delivery = delivery::spawn(
        pool,
        options.clone(),
        producer,
        dlq_topic,
        journal.partitions,
        (supervision.restart, supervision.escalations),
    )?;
    Ok(NotificationPool {
        consumer,
        delivery,
        handler,
    })
}
