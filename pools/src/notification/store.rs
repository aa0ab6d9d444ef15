//! Reads and the resend command of the notifications API.

use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

/// Attempts returned per notification at most (the most recent ones).
pub const ATTEMPTS_SHOWN_MAX: i64 = 100;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: i32,
    pub channel: String,
    /// Unix seconds.
    pub attempted_at: i64,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct NotificationView {
    pub id: String,
    pub object: &'static str,
    pub channel: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The webhook event id (`evt_…`) this notification carries.
    pub event: String,
    pub payment_id: Option<String>,
    pub sequence: i64,
    pub status: String,
    pub attempt_count: i32,
    /// Unix seconds; `null` once delivered or dead.
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
    pub created: i64,
    pub attempts: Vec<AttemptView>,
}

type Row = (
    String,
    String,
    String,
    Uuid,
    Option<String>,
    i64,
    String,
    i32,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    chrono::DateTime<chrono::Utc>,
);

#[derive(sqlx::FromRow)]
struct AttemptRow {
    notification_id: String,
    attempt: i32,
    channel: String,
    attempted_at: chrono::DateTime<chrono::Utc>,
    http_status: Option<i32>,
    error: Option<String>,
    duration_ms: i64,
}

const COLUMNS: &str = "id, channel, event_type, event_id, payment_id, sequence, status, attempts,
                       next_attempt_at, last_error, delivered_at, created_at";

async fn with_attempts(
    pool: &PgPool,
    rows: Vec<Row>,
) -> Result<Vec<NotificationView>, sqlx::Error> {
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT notification_id, attempt, channel, attempted_at, http_status, error, duration_ms
           FROM (SELECT a.*, row_number() OVER (PARTITION BY notification_id ORDER BY attempt DESC) AS rn
                   FROM notification_attempts a WHERE notification_id = ANY($1)) recent
          WHERE rn <= $2
          ORDER BY notification_id, attempt",
    )
    .bind(&ids)
    .bind(ATTEMPTS_SHOWN_MAX)
    .fetch_all(pool)
    .await?;
    let mut by_id: HashMap<String, Vec<AttemptView>> = HashMap::new();
    for a in attempts {
        by_id
            .entry(a.notification_id)
            .or_default()
            .push(AttemptView {
                attempt: a.attempt,
                channel: a.channel,
                attempted_at: a.attempted_at.timestamp(),
                http_status: a.http_status,
                error: a.error,
                duration_ms: a.duration_ms,
            });
    }
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                channel,
                event_type,
                event_id,
                payment_id,
                sequence,
                status,
                attempt_count,
                next_attempt_at,
                last_error,
                delivered_at,
                created_at,
            )| {
                let waiting = status == "pending" || status == "failed";
                NotificationView {
                    attempts: by_id.remove(&id).unwrap_or_default(),
                    id,
                    object: "notification",
                    channel,
                    event_type,
                    event: format!("evt_{}", event_id.simple()),
                    payment_id,
                    sequence,
                    status,
                    attempt_count,
                    next_attempt_at: waiting.then(|| next_attempt_at.timestamp()),
                    last_error,
                    delivered_at: delivered_at.map(|d| d.timestamp()),
                    created: created_at.timestamp(),
                }
            },
        )
        .collect())
}

/// The merchant's notifications: of one payment in delivery order (channel, sequence), or
/// the newest ones. Fetches `limit + 1` rows so the caller can tell `has_more`.
pub async fn list(
    pool: &PgPool,
    merchant_id: &str,
    payment_id: Option<&str>,
    limit: i64,
) -> Result<(Vec<NotificationView>, bool), sqlx::Error> {
    let rows: Vec<Row> = match payment_id {
        Some(payment_id) => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM notifications WHERE merchant_id = $1 AND payment_id = $2
                  ORDER BY channel DESC, sequence LIMIT $3"
            ))
            .bind(merchant_id)
            .bind(payment_id)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM notifications WHERE merchant_id = $1
                  ORDER BY created_at DESC, id DESC LIMIT $2"
            ))
            .bind(merchant_id)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?
        }
    };
    let mut rows = rows;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    Ok((with_attempts(pool, rows).await?, has_more))
}

/// One of the merchant's notifications.
pub async fn get(
    pool: &PgPool,
    merchant_id: &str,
    id: &str,
) -> Result<Option<NotificationView>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE merchant_id = $1 AND id = $2"
    ))
    .bind(merchant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(with_attempts(pool, row.into_iter().collect())
        .await?
        .into_iter()
        .next())
}

#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error("no such notification")]
    NotFound,
    #[error("only failed or dead notifications can be resent; this one is {0}")]
    InvalidState(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Puts a failed or dead notification back to `pending`, due now, with a fresh round of
/// attempts (attempt numbers continue). Once dead again it is published to the DLQ again.
pub async fn resend(
    pool: &PgPool,
    merchant_id: &str,
    id: &str,
) -> Result<NotificationView, ResendError> {
    let updated = sqlx::query(
        "UPDATE notifications
            SET status = 'pending', round_start = attempts, next_attempt_at = now(),
                locked_until = '-infinity', dlq_published_at = NULL, updated_at = now()
          WHERE merchant_id = $1 AND id = $2 AND status IN ('failed', 'dead')",
    )
    .bind(merchant_id)
    .bind(id)
    .execute(pool)
    .await?;
    let view = get(pool, merchant_id, id)
        .await?
        .ok_or(ResendError::NotFound)?;
    if updated.rows_affected() == 1 {
        Ok(view)
    } else {
        Err(ResendError::InvalidState(view.status))
    }
}
