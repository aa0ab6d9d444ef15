//! The analytics pool (`payrail.analytics`): created payments per merchant, UTC day and
//! currency.

use crate::payment::PaymentEvent;
use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// Consumer-group (and offsets) name of the analytics pool, before the namespace prefix.
pub const ANALYTICS_GROUP: &str = "payrail.analytics";

pub struct AnalyticsProjector;

#[async_trait::async_trait]
impl PartitionHandler for AnalyticsProjector {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        if record
            .event_type
            .as_deref()
            .is_some_and(|t| t != "payment.created")
        {
            return Ok(());
        }
        let envelope = record.decode::<PaymentEvent>()?;
        let PaymentEvent::Created(created) = &envelope.payload else {
            return Ok(());
        };
        let day = chrono::DateTime::from_timestamp_micros(envelope.occurred_at_micros)
            .ok_or("occurred_at out of range")?
            .date_naive();
        sqlx::query(
            "INSERT INTO analytics_merchant_daily (merchant_id, day, currency, created_count, created_amount)
             VALUES ($1, $2, $3, 1, $4)
             ON CONFLICT (merchant_id, day, currency) DO UPDATE
             SET created_count = analytics_merchant_daily.created_count + 1,
                 created_amount = analytics_merchant_daily.created_amount + EXCLUDED.created_amount",
        )
        .bind(&envelope.merchant_id)
        .bind(day)
        .bind(created.currency.code())
        .bind(created.amount)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CurrencyMetrics {
    pub currency: String,
    pub created_count: i64,
    pub created_amount: i64,
}

/// The merchant's metrics for one UTC day.
pub async fn payment_metrics(
    pool: &PgPool,
    merchant_id: &str,
    day: chrono::NaiveDate,
) -> Result<Vec<CurrencyMetrics>, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT currency, created_count, created_amount FROM analytics_merchant_daily
         WHERE merchant_id = $1 AND day = $2 ORDER BY currency",
    )
    .bind(merchant_id)
    .bind(day)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(currency, created_count, created_amount)| CurrencyMetrics {
                currency: currency.to_ascii_lowercase(),
                created_count,
                created_amount,
            },
        )
        .collect())
}
