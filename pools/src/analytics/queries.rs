//! The analytics read side: per-currency metrics of a merchant and of the channels.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

use serde::Serialize;
use sqlx::PgPool;

/// A merchant's or a channel's totals for one UTC day and currency. Amounts are integers in
/// minor units; as sums of many payments, they may exceed 64 bits.
// Amounts are i128: the rollups hold them as NUMERIC(38,0), every value of which fits, so
// past i64::MAX they stay exact. JSON carries them as plain integers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CurrencyMetrics {
    pub currency: String,
    pub created_count: i64,
    pub created_amount: i128,
    pub succeeded_count: i64,
    pub succeeded_amount: i128,
    pub failed_count: i64,
    pub failed_amount: i128,
    pub refunded_count: i64,
    pub refunded_amount: i128,
    /// succeeded ÷ (succeeded + failed), in basis points (10000 = 100 %); integer, no floats.
    pub success_rate_bps: i64,
    /// Average created amount, minor units, rounded down.
    pub average_amount: i128,
    pub completed_orders: i64,
    /// Captured amount.
    pub revenue: i128,
    pub fees: i128,
    /// revenue − fees − refunded.
    pub net_revenue: i128,
}

// A stored amount, read as text (`NUMERIC(38,0)`): see `payrail_payment::money::sum_from_text`.
use crate::stored_sum as amount;

fn out_of_range(what: &str, currency: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("analytics: {what} of {currency} is out of range").into())
}

/// Fills in the derived fields (rate, average, revenue, net revenue), with checked
/// arithmetic: totals that cannot be derived exactly are an error.
fn derive(mut m: CurrencyMetrics) -> Result<CurrencyMetrics, sqlx::Error> {
    let decided = i128::from(m.succeeded_count) + i128::from(m.failed_count);
    m.success_rate_bps = if decided == 0 {
        0
    } else {
        i64::try_from(i128::from(m.succeeded_count) * 10_000 / decided)
            .map_err(|_| out_of_range("the success rate", &m.currency))?
    };
    m.average_amount = if m.created_count == 0 {
        0
    } else {
        m.created_amount
            .checked_div(i128::from(m.created_count))
            .ok_or_else(|| out_of_range("the average amount", &m.currency))?
    };
    m.revenue = m.succeeded_amount;
    m.net_revenue = m
        .revenue
        .checked_sub(m.fees)
        .and_then(|net| net.checked_sub(m.refunded_amount))
        .ok_or_else(|| out_of_range("the net revenue", &m.currency))?;
    m.currency = m.currency.to_ascii_lowercase();
    Ok(m)
}

/// The merchant's metrics for one UTC day.
pub async fn payment_metrics(
    pool: &PgPool,
    merchant_id: &str,
    day: chrono::NaiveDate,
) -> Result<Vec<CurrencyMetrics>, sqlx::Error> {
    let rows: Vec<(String, i64, String, i64, String, i64, String, i64, String, i64, String)> =
        sqlx::query_as(
            "SELECT d.currency, d.created_count, d.created_amount::TEXT, d.succeeded_count,
                    d.succeeded_amount::TEXT, d.failed_count, d.failed_amount::TEXT,
                    d.refunded_count, d.refunded_amount::TEXT,
                    (SELECT count(*) FROM analytics_completed_orders o
                      WHERE o.merchant_id = d.merchant_id AND o.day = d.day AND o.currency = d.currency),
                    d.fees::TEXT
             FROM analytics_merchant_daily d WHERE d.merchant_id = $1 AND d.day = $2 ORDER BY d.currency",
        )
        .bind(merchant_id)
        .bind(day)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|(currency, cc, ca, sc, sa, fc, fa, rc, ra, orders, fees)| {
            derive(CurrencyMetrics {
                currency,
                created_count: cc,
                created_amount: amount(&ca)?,
                succeeded_count: sc,
                succeeded_amount: amount(&sa)?,
                failed_count: fc,
                failed_amount: amount(&fa)?,
                refunded_count: rc,
                refunded_amount: amount(&ra)?,
                success_rate_bps: 0,
                average_amount: 0,
                completed_orders: orders,
                revenue: 0,
                fees: amount(&fees)?,
                net_revenue: 0,
            })
        })
        .collect()
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChannelMetrics {
    pub channel: String,
    #[serde(flatten)]
    pub metrics: CurrencyMetrics,
}

/// Every channel's metrics for one UTC day (admin view): the sums of the channel's shards.
pub async fn channel_metrics(
    pool: &PgPool,
    day: chrono::NaiveDate,
) -> Result<Vec<ChannelMetrics>, sqlx::Error> {
    let rows: Vec<(
        String,
        String,
        i64,
        String,
        i64,
        String,
        i64,
        String,
        i64,
        String,
    )> = sqlx::query_as(
        "SELECT channel, currency, sum(created_count)::BIGINT, sum(created_amount)::TEXT,
                    sum(succeeded_count)::BIGINT, sum(succeeded_amount)::TEXT,
                    sum(failed_count)::BIGINT, sum(failed_amount)::TEXT,
                    sum(refunded_count)::BIGINT, sum(refunded_amount)::TEXT
             FROM analytics_channel_daily WHERE day = $1
             GROUP BY channel, currency ORDER BY channel, currency",
    )
    .bind(day)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(channel, currency, cc, ca, sc, sa, fc, fa, rc, ra)| {
            Ok(ChannelMetrics {
                channel,
                metrics: derive(CurrencyMetrics {
                    currency,
                    created_count: cc,
                    created_amount: amount(&ca)?,
                    succeeded_count: sc,
                    succeeded_amount: amount(&sa)?,
                    failed_count: fc,
                    failed_amount: amount(&fa)?,
                    refunded_count: rc,
                    refunded_amount: amount(&ra)?,
                    success_rate_bps: 0,
                    average_amount: 0,
                    completed_orders: 0,
                    revenue: 0,
                    fees: 0,
                    net_revenue: 0,
                })?,
            })
        })
        .collect()
}
