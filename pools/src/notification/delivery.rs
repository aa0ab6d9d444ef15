//! The delivery task: one per node. Each round it claims due notifications (a lease in
//! PostgreSQL, so nodes share the work and a crashed node's claims lapse), sends them with at
//! most `notification.concurrency` in flight, records every attempt, and schedules the next
//! one from `notification.retry_schedule_ms` or marks the notification dead. Dead
//! notifications are then published to `<namespace>notification.dlq`.
//!
//! Order: a notification is only claimable when no earlier notification (lower `sequence`)
//! of the same payment and channel is still `pending` or `failed`, so a payment's webhooks
//! arrive in event order and each is delivered (or dead) before the next one is sent.

use super::email::{EmailError, Mailer, RenderedEmail};
use super::options::NotificationOptions;
use futures::StreamExt;
use kafka_journal::producer::OutgoingRecord;
use kafka_journal::{EventHeaders, JournalProducer};
use payrail_supervisor::{Escalations, RestartPolicy};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use uuid::Uuid;

/// Header carrying the webhook signature (`t=<unix>,v1=<hex>`).
pub const SIGNATURE_HEADER: &str = "Payrail-Signature";
/// The same signature, for a merchant whose webhooks are Stripe events: Stripe's header
/// name, which its SDKs' `construct_event` reads (the value's format is Stripe's too).
pub const STRIPE_SIGNATURE_HEADER: &str = "Stripe-Signature";

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("http client: {0}")]
    Client(String),
    #[error(transparent)]
    Email(#[from] EmailError),
}

/// A claimed notification with what sending it needs. No `Debug`: it holds the
/// merchant's webhook signing secret.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: String,
    channel: String,
    merchant_id: String,
    payment_id: Option<String>,
    event_id: Uuid,
    event_type: String,
    payload: Value,
    attempts: i32,
    round_start: i32,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    webhook_api: Option<String>,
    last_error: Option<String>,
}

/// Result of one attempt.
#[derive(Debug)]
enum Outcome {
    Delivered {
        http_status: Option<i32>,
    },
    Failed {
        http_status: Option<i32>,
        error: String,
        /// Retrying cannot help: dead at once.
        permanent: bool,
    },
}

#[derive(Clone)]
struct Delivery {
    pool: PgPool,
    options: NotificationOptions,
    client: reqwest::Client,
    mailer: Option<Mailer>,
    producer: JournalProducer,
    dlq_topic: String,
    dlq_partitions: u32,
}

/// Starts this node's delivery task.
pub fn spawn(
    pool: PgPool,
    options: NotificationOptions,
    producer: JournalProducer,
    dlq_topic: String,
    dlq_partitions: u32,
    supervision: (RestartPolicy, Escalations),
) -> Result<tokio::task::JoinHandle<()>, DeliveryError> {
    let timeout = Duration::from_millis(options.request_timeout_ms);
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect is not a delivery; the merchant must give the final URL.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("payrail-webhooks/1")
        .build()
        .map_err(|e| DeliveryError::Client(e.to_string()))?;
    let mailer = match &options.smtp {
        Some(smtp) => Some(Mailer::new(smtp, timeout)?),
        None => None,
    };
    let delivery = Delivery {
        pool,
        options,
        client,
        mailer,
        producer,
        dlq_topic,
        dlq_partitions,
    };
    info!(
        concurrency = delivery.options.concurrency,
        emails = delivery.mailer.is_some(),
        "notification delivery started"
    );
    let (restart, escalations) = supervision;
    Ok(payrail_supervisor::supervise_task(
        "notification delivery",
        restart,
        escalations,
        move || delivery.clone().run(),
    ))
}

impl Delivery {
    async fn run(self) {
        let idle = Duration::from_millis(self.options.poll_interval_ms);
        loop {
            let claimed = match self.claim().await {
                Ok(claimed) => claimed,
                Err(e) => {
                    warn!(error = %e, "claiming notifications failed");
                    tokio::time::sleep(idle).await;
                    continue;
                }
            };
            let full = claimed.len() as i64 >= self.options.batch;
            futures::stream::iter(claimed)
                .for_each_concurrent(self.options.concurrency, |n| self.deliver(n))
                .await;
            if let Err(e) = self.publish_dead().await {
                warn!(error = %e, "publishing dead notifications to the DLQ failed; will retry");
            }
            if !full {
                tokio::time::sleep(idle).await;
            }
        }
    }

    /// Claims up to `batch` due notifications whose predecessors are delivered or dead.
    async fn claim(&self) -> Result<Vec<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "WITH due AS (
                 SELECT n.id FROM notifications n
                  WHERE n.status IN ('pending', 'failed')
                    AND n.next_attempt_at <= now()
                    AND n.locked_until <= now()
                    AND NOT EXISTS (
                        SELECT 1 FROM notifications e
                         WHERE e.payment_id = n.payment_id AND e.channel = n.channel
                           AND e.sequence < n.sequence AND e.status IN ('pending', 'failed'))
                  ORDER BY n.next_attempt_at, n.sequence
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED)
             UPDATE notifications n
                SET locked_until = now() + make_interval(secs => $2::float8 / 1000)
               FROM due, merchants m
              WHERE n.id = due.id AND m.id = n.merchant_id
          RETURNING n.id, n.channel, n.merchant_id, n.payment_id, n.event_id, n.event_type,
                    n.payload, n.attempts, n.round_start, m.webhook_url, m.webhook_secret,
                    m.webhook_api, n.last_error",
        )
        .bind(self.options.batch)
        .bind(self.options.claim_lease_ms as f64)
        .fetch_all(&self.pool)
        .await
    }

    async fn deliver(&self, n: Claimed) {
        let started = Instant::now();
        let outcome = match n.channel.as_str() {
            "webhook" => self.post_webhook(&n).await,
            "email" => self.send_email(&n).await,
            other => Outcome::Failed {
                http_status: None,
                error: format!("unknown channel {other}"),
                permanent: true,
            },
        };
        let duration_ms = started.elapsed().as_millis() as i64;
        if let Err(e) = self.record(&n, &outcome, duration_ms).await {
            // The lease lapses and the notification is tried again (at least once).
            warn!(notification = %n.id, error = %e, "recording a delivery attempt failed");
        }
    }

    async fn post_webhook(&self, n: &Claimed) -> Outcome {
        let (Some(url), Some(secret)) = (&n.webhook_url, &n.webhook_secret) else {
            return Outcome::Failed {
                http_status: None,
                error: "the merchant has no webhook_url".into(),
                permanent: true,
            };
        };
        let body = match serde_json::to_vec(&n.payload) {
            Ok(body) => body,
            Err(e) => {
                return Outcome::Failed {
                    http_status: None,
                    error: format!("body: {e}"),
                    permanent: true,
                }
            }
        };
        if body.len() as u64 > self.options.max_body_bytes {
            return Outcome::Failed {
                http_status: None,
                error: format!(
                    "body of {} bytes exceeds notification.max_body_bytes",
                    body.len()
                ),
                permanent: true,
            };
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = payrail_signature::header(secret, timestamp, &body);
        let header = match n.webhook_api.as_deref() {
            Some(super::STRIPE_WEBHOOK_API) => STRIPE_SIGNATURE_HEADER,
            _ => SIGNATURE_HEADER,
        };
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header(header, signature)
            .body(body)
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    http_status: None,
                    // Without the URL: it is the merchant's and may carry a token.
                    error: e.without_url().to_string(),
                    permanent: false,
                };
            }
        };
        let status = response.status();
        // Read (and discard) at most max_response_bytes, so a slow or huge answer cannot hold
        // a delivery slot beyond the request timeout or fill memory.
        let mut read = 0u64;
        while read < self.options.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len() as u64,
                Ok(None) | Err(_) => break,
            }
        }
        let http_status = Some(i32::from(status.as_u16()));
        if status.is_success() {
            Outcome::Delivered { http_status }
        } else {
            Outcome::Failed {
                http_status,
                error: format!("HTTP {}", status.as_u16()),
                permanent: false,
            }
        }
    }

    async fn send_email(&self, n: &Claimed) -> Outcome {
        let Some(mailer) = &self.mailer else {
            // Queued while SMTP was configured; it may be again (retried on the schedule).
            return Outcome::Failed {
                http_status: None,
                error: "SMTP is not configured on this node (notification.smtp)".into(),
                permanent: false,
            };
        };
        let email: RenderedEmail = match serde_json::from_value(n.payload.clone()) {
            Ok(email) => email,
            Err(e) => {
                return Outcome::Failed {
                    http_status: None,
                    error: format!("stored e-mail: {e}"),
                    permanent: true,
                }
            }
        };
        if email.text.len() as u64 > self.options.max_body_bytes {
            return Outcome::Failed {
                http_status: None,
                error: "e-mail text exceeds notification.max_body_bytes".into(),
                permanent: true,
            };
        }
        match mailer.send(&email).await {
            Ok(()) => Outcome::Delivered { http_status: None },
            Err(EmailError::Permanent(error)) => Outcome::Failed {
                http_status: None,
                error,
                permanent: true,
            },
            Err(EmailError::Transient(error)) => Outcome::Failed {
                http_status: None,
                error,
                permanent: false,
            },
        }
    }

    /// Records the attempt and the notification's next state in one transaction. Guarded by
    /// the attempt count, so a node whose lease lapsed cannot overwrite a newer attempt.
    async fn record(
        &self,
        n: &Claimed,
        outcome: &Outcome,
        duration_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let attempt = n.attempts + 1;
        let (status, http_status, error, delay_ms): (&str, Option<i32>, Option<&str>, u64) =
            match outcome {
                Outcome::Delivered { http_status } => ("delivered", *http_status, None, 0),
                Outcome::Failed {
                    http_status,
                    error,
                    permanent,
                } => {
                    let delay = if *permanent {
                        None
                    } else {
                        self.options.retry_delay_ms(attempt - n.round_start)
                    };
                    match delay {
                        Some(delay) => ("failed", *http_status, Some(error.as_str()), delay),
                        None => ("dead", *http_status, Some(error.as_str()), 0),
                    }
                }
            };
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE notifications
                SET attempts = $2, status = $3, last_error = $4,
                    next_attempt_at = now() + make_interval(secs => $5::float8 / 1000),
                    delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END,
                    locked_until = '-infinity', updated_at = now()
              WHERE id = $1 AND attempts = $6",
        )
        .bind(&n.id)
        .bind(attempt)
        .bind(status)
        .bind(error)
        .bind(delay_ms as f64)
        .bind(n.attempts)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            warn!(notification = %n.id, attempt, "another delivery recorded this attempt first; dropping ours");
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO notification_attempts (notification_id, attempt, channel, http_status, error, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&n.id)
        .bind(attempt)
        .bind(&n.channel)
        .bind(http_status)
        .bind(error)
        .bind(duration_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        match status {
            "delivered" => debug!(notification = %n.id, attempt, "notification delivered"),
            "dead" => {
                warn!(notification = %n.id, merchant_id = %n.merchant_id, attempt, error = ?error, "notification dead")
            }
            _ => {
                info!(notification = %n.id, attempt, delay_ms, error = ?error, "notification attempt failed; retry scheduled")
            }
        }
        Ok(())
    }

    /// Publishes dead, unpublished notifications to the DLQ topic, then marks them published.
    /// The rows stay locked while publishing, so two nodes do not publish the same one.
    async fn publish_dead(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Claimed> = sqlx::query_as(
            "SELECT n.id, n.channel, n.merchant_id, n.payment_id, n.event_id, n.event_type,
                    n.payload, n.attempts, n.round_start,
                    NULL::text AS webhook_url, NULL::text AS webhook_secret,
                    NULL::text AS webhook_api, n.last_error
               FROM notifications n
              WHERE n.status = 'dead' AND n.dlq_published_at IS NULL
              ORDER BY n.updated_at
              LIMIT $1
              FOR UPDATE SKIP LOCKED",
        )
        .bind(self.options.batch)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for n in &rows {
            let value = json!({
                "notification_id": n.id,
                "channel": n.channel,
                "merchant_id": n.merchant_id,
                "payment_id": n.payment_id,
                "event_id": n.event_id,
                "event_type": n.event_type,
                "attempts": n.attempts,
                "last_error": n.last_error,
                "payload": n.payload,
            });
            records.push(OutgoingRecord {
                topic: self.dlq_topic.clone(),
                partition: kafka_journal::partition_for(
                    n.merchant_id.as_bytes(),
                    self.dlq_partitions,
                ),
                key: n.merchant_id.clone(),
                headers: EventHeaders {
                    event_type: n.event_type.clone(),
                    event_id: n.event_id.to_string(),
                    schema_version: "1".into(),
                    content_type: "application/json".into(),
                    owner_epoch: 0,
                },
                value: serde_json::to_vec(&value)?,
            });
            ids.push(n.id.clone());
        }
        self.producer.append(&records).await?;
        sqlx::query("UPDATE notifications SET dlq_published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        info!(count = ids.len(), topic = %self.dlq_topic, "dead notifications published");
        Ok(())
    }
}
