//! The analytics pool (`payrail.analytics`): per merchant/day/currency and per
//! channel/day/currency — created, succeeded, failed and refunded counts and amounts,
//! success rate, average amount, completed orders (distinct `order_no` of succeeded
//! payments), revenue, fees and net revenue. The day is the UTC day the payment was created.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

use super::ledger::{platform_fee, pricing};
use kafka_journal::consumer::{ConsumedRecord, HandlerError, PartitionHandler};
use kafka_journal::Envelope;
use payrail_payment::PaymentEvent;
use sqlx::PgConnection;
mod queries;
pub use queries::{channel_metrics, payment_metrics, ChannelMetrics, CurrencyMetrics};

/// Consumer-group (and offsets) name of the analytics pool, before the namespace prefix.
pub const ANALYTICS_GROUP: &str = "payrail.analytics";

/// Channel recorded for payments created without one.
pub const DEFAULT_CHANNEL: &str = "default";

pub struct AnalyticsProjector;

/// What a rollup row of a payment is keyed by, with its created amount.
struct Dims {
    merchant_id: String,
    currency: String,
    channel: String,
    day: chrono::NaiveDate,
    created_amount: i64,
}

/// The dimensions recorded for `payment_id` by its `payment.created`.
async fn dims(conn: &mut PgConnection, payment_id: &str) -> Result<Dims, HandlerError> {
    let dims: Option<(String, String, String, chrono::NaiveDate, i64)> = sqlx::query_as(
        "SELECT merchant_id, currency, channel, day, amount FROM analytics_payments WHERE payment_id = $1",
    )
    .bind(payment_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((merchant_id, currency, channel, day, created_amount)) = dims else {
        return Err(format!("analytics: payment {payment_id} has no payment.created").into());
    };
    Ok(Dims {
        merchant_id,
        currency,
        channel,
        day,
        created_amount,
    })
}

/// Adds one event of a payment with `dims` to the merchant's and the channel's daily
/// rollups; `amount` defaults to the payment's created amount.
async fn bump(
    conn: &mut PgConnection,
    shard: i32,
    dims: Dims,
    column: &str,
    amount_column: &str,
    amount: Option<i64>,
    fee: i64,
) -> Result<(), HandlerError> {
    let Dims {
        merchant_id,
        currency,
        channel,
        day,
        created_amount,
    } = dims;
    let amount = amount.unwrap_or(created_amount);
    // Column names come from this module's constants only, never from input.
    sqlx::query(&format!(
        "INSERT INTO analytics_merchant_daily (merchant_id, day, currency, {column}, {amount_column}, fees)
         VALUES ($1, $2, $3, 1, $4, $5)
         ON CONFLICT (merchant_id, day, currency) DO UPDATE
         SET {column} = analytics_merchant_daily.{column} + 1,
             {amount_column} = analytics_merchant_daily.{amount_column} + EXCLUDED.{amount_column},
             fees = analytics_merchant_daily.fees + EXCLUDED.fees"
    ))
    .bind(&merchant_id)
    .bind(day)
    .bind(&currency)
    .bind(amount)
    .bind(fee)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO analytics_channel_daily (channel, day, currency, shard, {column}, {amount_column})
         VALUES ($1, $2, $3, $5, 1, $4)
         ON CONFLICT (channel, day, currency, shard) DO UPDATE
         SET {column} = analytics_channel_daily.{column} + 1,
             {amount_column} = analytics_channel_daily.{amount_column} + EXCLUDED.{amount_column}"
    ))
    .bind(&channel)
    .bind(day)
    .bind(&currency)
    .bind(amount)
    .bind(shard)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl AnalyticsProjector {
    /// Applies one decoded event of `partition` (what `apply` does after decoding).
    async fn apply_event(
        &self,
        conn: &mut PgConnection,
        partition: i32,
        envelope: &Envelope<PaymentEvent>,
    ) -> Result<(), HandlerError> {
        match &envelope.payload {
            PaymentEvent::Created(created) => {
                let day = chrono::DateTime::from_timestamp_micros(envelope.occurred_at_micros)
                    .ok_or("occurred_at out of range")?
                    .date_naive();
                let inserted = sqlx::query(
                    "INSERT INTO analytics_payments (payment_id, merchant_id, currency, channel, order_no, day, amount)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                )
                .bind(&envelope.payment_id)
                .bind(&envelope.merchant_id)
                .bind(created.currency.code())
                .bind(created.channel.as_deref().unwrap_or(DEFAULT_CHANNEL))
                .bind(&created.order_no)
                .bind(day)
                .bind(created.amount)
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() == 0 {
                    return Ok(()); // the same payment, created again by a retry
                }
                let known = Dims {
                    merchant_id: envelope.merchant_id.clone(),
                    currency: created.currency.code().to_string(),
                    channel: created
                        .channel
                        .as_deref()
                        .unwrap_or(DEFAULT_CHANNEL)
                        .to_string(),
                    day,
                    created_amount: created.amount,
                };
                bump(
                    conn,
                    partition,
                    known,
                    "created_count",
                    "created_amount",
                    None,
                    0,
                )
                .await?;
            }
            PaymentEvent::Succeeded {
                amount_captured, ..
            } => {
                let fee = platform_fee(
                    *amount_captured,
                    pricing(conn, &envelope.merchant_id).await?,
                );
                let dims = dims(conn, &envelope.payment_id).await?;
                bump(
                    conn,
                    partition,
                    dims,
                    "succeeded_count",
                    "succeeded_amount",
                    Some(*amount_captured),
                    fee,
                )
                .await?;
                sqlx::query(
                    "INSERT INTO analytics_completed_orders (merchant_id, day, currency, order_no)
                     SELECT merchant_id, day, currency, order_no FROM analytics_payments
                     WHERE payment_id = $1 AND order_no IS NOT NULL ON CONFLICT DO NOTHING",
                )
                .bind(&envelope.payment_id)
                .execute(&mut *conn)
                .await?;
            }
            PaymentEvent::Failed { .. } => {
                let dims = dims(conn, &envelope.payment_id).await?;
                bump(
                    conn,
                    partition,
                    dims,
                    "failed_count",
                    "failed_amount",
                    None,
                    0,
                )
                .await?;
            }
            PaymentEvent::RefundCreated {
                refund_id, amount, ..
            } => {
                sqlx::query("INSERT INTO analytics_refunds (refund_id, payment_id, amount) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(refund_id)
                    .bind(&envelope.payment_id)
                    .bind(amount)
                    .execute(&mut *conn)
                    .await?;
            }
            PaymentEvent::RefundSucceeded { refund_id, .. } => {
                let amount: i64 =
                    sqlx::query_scalar("SELECT amount FROM analytics_refunds WHERE refund_id = $1")
                        .bind(refund_id)
                        .fetch_one(&mut *conn)
                        .await?;
                let dims = dims(conn, &envelope.payment_id).await?;
                bump(
                    conn,
                    partition,
                    dims,
                    "refunded_count",
                    "refunded_amount",
                    Some(amount),
                    0,
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl PartitionHandler for AnalyticsProjector {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        record: &ConsumedRecord,
    ) -> Result<(), HandlerError> {
        let envelope = record.decode::<PaymentEvent>()?;
        self.apply_event(conn, record.partition, &envelope).await
    }

    /// A batch's creates are written with three statements (the payments, then the
    /// merchant and channel rollups summed per row); any other event is applied on its own,
    /// after the creates before it, so the outcome is that of applying the records in order.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        records: &[&ConsumedRecord],
    ) -> Result<(), HandlerError> {
        let mut creates = NewCreates::default();
        for record in records {
            let envelope = record.decode::<PaymentEvent>()?;
            let PaymentEvent::Created(created) = &envelope.payload else {
                creates.write(conn).await?;
                self.apply_event(conn, record.partition, &envelope).await?;
                continue;
            };
            let day = chrono::DateTime::from_timestamp_micros(envelope.occurred_at_micros)
                .ok_or("occurred_at out of range")?
                .date_naive();
            creates.push(
                record.partition,
                &envelope.payment_id,
                Dims {
                    merchant_id: envelope.merchant_id.clone(),
                    currency: created.currency.code().to_string(),
                    channel: created
                        .channel
                        .as_deref()
                        .unwrap_or(DEFAULT_CHANNEL)
                        .to_string(),
                    day,
                    created_amount: created.amount,
                },
                created.order_no.clone(),
            );
        }
        creates.write(conn).await
    }
}

/// Creates waiting to be written together by [`AnalyticsProjector::apply_batch`]: the
/// payments' rows, and their counts and amounts summed per rollup row.
#[derive(Default)]
struct NewCreates {
    payment_ids: Vec<String>,
    merchant_ids: Vec<String>,
    currencies: Vec<String>,
    channels: Vec<String>,
    order_nos: Vec<Option<String>>,
    days: Vec<chrono::NaiveDate>,
    amounts: Vec<i64>,
    shards: Vec<i32>,
    /// Position of each payment in the vectors above (a repeated create is pushed once).
    index: std::collections::HashMap<String, usize>,
}

impl NewCreates {
    fn push(&mut self, shard: i32, payment_id: &str, dims: Dims, order_no: Option<String>) {
        if self.index.contains_key(payment_id) {
            return; // a repeated create of the same payment (a retried, keyed create)
        }
        self.index
            .insert(payment_id.to_string(), self.payment_ids.len());
        self.payment_ids.push(payment_id.to_string());
        self.merchant_ids.push(dims.merchant_id);
        self.currencies.push(dims.currency);
        self.channels.push(dims.channel);
        self.order_nos.push(order_no);
        self.days.push(dims.day);
        self.amounts.push(dims.created_amount);
        self.shards.push(shard);
    }

    /// Writes and forgets what is pending (the same rows and sums as applying each create).
    /// Only payments inserted now are counted: a create of a payment already known is the
    /// same payment, created again by a retry.
    async fn write(&mut self, conn: &mut PgConnection) -> Result<(), HandlerError> {
        if self.payment_ids.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(self);
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO analytics_payments (payment_id, merchant_id, currency, channel, order_no, day, amount)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::bigint[])
             ON CONFLICT DO NOTHING RETURNING payment_id",
        )
        .bind(&pending.payment_ids)
        .bind(&pending.merchant_ids)
        .bind(&pending.currencies)
        .bind(&pending.channels)
        .bind(&pending.order_nos)
        .bind(&pending.days)
        .bind(&pending.amounts)
        .fetch_all(&mut *conn)
        .await?;
        // (merchant, day, currency) → (count, amount); (channel, day, currency, shard) → …
        // Amounts are summed in i128 (a batch's creates may add up past i64::MAX; the
        // rollups' columns are NUMERIC) and sent as text, which sqlx can bind.
        let mut merchant_rows: std::collections::BTreeMap<
            (String, chrono::NaiveDate, String),
            (i64, i128),
        > = Default::default();
        let mut channel_rows: std::collections::BTreeMap<
            (String, chrono::NaiveDate, String, i32),
            (i64, i128),
        > = Default::default();
        for payment_id in inserted {
            let Some(&i) = pending.index.get(&payment_id) else {
                continue;
            };
            let (day, amount) = (pending.days[i], pending.amounts[i]);
            let merchant = merchant_rows
                .entry((
                    pending.merchant_ids[i].clone(),
                    day,
                    pending.currencies[i].clone(),
                ))
                .or_default();
            merchant.0 += 1;
            merchant.1 += i128::from(amount);
            let channel = channel_rows
                .entry((
                    pending.channels[i].clone(),
                    day,
                    pending.currencies[i].clone(),
                    pending.shards[i],
                ))
                .or_default();
            channel.0 += 1;
            channel.1 += i128::from(amount);
        }

        let (mut m, mut d, mut c, mut n, mut a) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((merchant, day, currency), (count, amount)) in merchant_rows {
            m.push(merchant);
            d.push(day);
            c.push(currency);
            n.push(count);
            a.push(amount.to_string());
        }
        sqlx::query(
            "INSERT INTO analytics_merchant_daily (merchant_id, day, currency, created_count, created_amount)
             SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::bigint[], $5::text[]::numeric[])
             ON CONFLICT (merchant_id, day, currency) DO UPDATE
             SET created_count = analytics_merchant_daily.created_count + EXCLUDED.created_count,
                 created_amount = analytics_merchant_daily.created_amount + EXCLUDED.created_amount",
        )
        .bind(&m)
        .bind(&d)
        .bind(&c)
        .bind(&n)
        .bind(&a)
        .execute(&mut *conn)
        .await?;

        let (mut ch, mut d, mut c, mut sh, mut n, mut a) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for ((channel, day, currency, shard), (count, amount)) in channel_rows {
            ch.push(channel);
            d.push(day);
            c.push(currency);
            sh.push(shard);
            n.push(count);
            a.push(amount.to_string());
        }
        sqlx::query(
            "INSERT INTO analytics_channel_daily (channel, day, currency, shard, created_count, created_amount)
             SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::int[], $5::bigint[], $6::text[]::numeric[])
             ON CONFLICT (channel, day, currency, shard) DO UPDATE
             SET created_count = analytics_channel_daily.created_count + EXCLUDED.created_count,
                 created_amount = analytics_channel_daily.created_amount + EXCLUDED.created_amount",
        )
        .bind(&ch)
        .bind(&d)
        .bind(&c)
        .bind(&sh)
        .bind(&n)
        .bind(&a)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
