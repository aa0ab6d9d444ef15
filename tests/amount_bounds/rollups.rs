//! Analytics rollups past `i64::MAX`: a merchant's day, a channel's day and shards, a batch.

use super::*;
use kafka_journal::consumer::{ConsumedRecord, PartitionHandler};
use kafka_journal::{Codec, CodecKind, Envelope};
use payrail_actors::money::Currency;
use payrail_actors::payment::{CaptureMethod, PaymentCreated, PaymentEvent};
use payrail_pools::analytics::{self, AnalyticsProjector};
use std::collections::BTreeMap;

const CHANNEL: &str = "web";
/// 2023-11-14, the UTC day of [`OCCURRED_AT_MICROS`].
const OCCURRED_AT_MICROS: i64 = 1_700_000_000_000_000;

fn day() -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_micros(OCCURRED_AT_MICROS)
        .expect("timestamp")
        .date_naive()
}

fn envelope(payment_id: &str, sequence: u64, payload: PaymentEvent) -> Envelope<PaymentEvent> {
    Envelope {
        event_id: Uuid::now_v7(),
        event_type: payload.event_type().to_string(),
        schema_version: 1,
        payment_id: payment_id.to_string(),
        merchant_id: MERCHANT.to_string(),
        sequence,
        occurred_at_micros: OCCURRED_AT_MICROS,
        correlation_id: None,
        payload,
    }
}

fn created(payment_id: &str, amount: i64) -> Envelope<PaymentEvent> {
    envelope(
        payment_id,
        1,
        PaymentEvent::Created(PaymentCreated {
            amount,
            currency: Currency::parse("EUR").expect("currency"),
            customer_email: None,
            order_no: None,
            channel: Some(CHANNEL.to_string()),
            metadata: BTreeMap::new(),
            capture_method: CaptureMethod::Automatic,
            idempotency_key: None,
            request_fingerprint: None,
        }),
    )
}

fn succeeded(payment_id: &str, amount: i64) -> Envelope<PaymentEvent> {
    envelope(
        payment_id,
        2,
        PaymentEvent::Succeeded {
            psp_reference: None,
            amount_captured: amount,
        },
    )
}

fn record(envelope: &Envelope<PaymentEvent>, offset: i64) -> ConsumedRecord {
    let codec = CodecKind::Bincode;
    ConsumedRecord {
        topic: "bounds.payment.events".into(),
        partition: 0,
        offset,
        key: Some(MERCHANT.as_bytes().to_vec()),
        event_type: Some(envelope.event_type.clone()),
        event_id: Some(envelope.event_id),
        content_type: Some(codec.content_type().to_string()),
        value: codec.encode(envelope).expect("encode"),
        timestamp_ms: None,
        owner_epoch: 0,
    }
}

/// Applies `events` as one batch of partition 0, the way the analytics pool's worker does
/// (one transaction, `apply_batch`).
async fn apply_analytics(pool: &PgPool, events: &[Envelope<PaymentEvent>]) {
    let records: Vec<ConsumedRecord> = events
        .iter()
        .enumerate()
        .map(|(offset, e)| record(e, offset as i64))
        .collect();
    let refs: Vec<&ConsumedRecord> = records.iter().collect();
    let mut tx = pool.begin().await.expect("transaction");
    AnalyticsProjector
        .apply_batch(&mut tx, &refs)
        .await
        .expect("the analytics batch applies");
    tx.commit().await.expect("commit");
}

/// One stored amount, read as text so that no width is assumed.
async fn stored_amount(pool: &PgPool, sql: &str) -> i128 {
    let text: String = sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("stored amount");
    text.parse().expect("an integer amount")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_day_past_i64_max_keeps_its_exact_total() {
    let pool = TestEnv::new("bounds_merchant_day")
        .await
        .migrated_pool()
        .await;
    let near = i64::MAX - 100;
    sqlx::query(
        "INSERT INTO analytics_merchant_daily
             (merchant_id, day, currency, created_count, created_amount, succeeded_count, succeeded_amount)
         VALUES ($1, $2, 'EUR', 1, $3, 1, $3)",
    )
    .bind(MERCHANT)
    .bind(day())
    .bind(near)
    .execute(&pool)
    .await
    .expect("seed the merchant's day");

    apply_analytics(&pool, &[created("pay_1", 1_000), succeeded("pay_1", 1_000)]).await;

    let expected = i128::from(near) + 1_000;
    for column in ["created_amount", "succeeded_amount"] {
        let stored = stored_amount(
            &pool,
            &format!("SELECT {column}::TEXT FROM analytics_merchant_daily"),
        )
        .await;
        assert_eq!(stored, expected, "stored {column}");
    }
    let metrics = analytics::payment_metrics(&pool, MERCHANT, day())
        .await
        .expect("payment metrics");
    assert_eq!(metrics.len(), 1, "{metrics:?}");
    let eur = &metrics[0];
    assert_eq!(eur.created_count, 2);
    assert_eq!(eur.created_amount, expected);
    assert_eq!(eur.succeeded_amount, expected);
    assert_eq!(eur.revenue, expected);
    assert_eq!(eur.net_revenue, expected, "no fees, no refunds");
    assert_eq!(eur.average_amount, expected / 2);
    let json = serde_json::to_string(eur).expect("JSON");
    assert!(
        json.contains(&format!("\"created_amount\":{expected}")),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_day_past_i64_max_keeps_its_exact_total() {
    let pool = TestEnv::new("bounds_channel_day")
        .await
        .migrated_pool()
        .await;
    let near = i64::MAX - 100;
    sqlx::query(
        "INSERT INTO analytics_channel_daily
             (channel, day, currency, shard, created_count, created_amount, succeeded_count, succeeded_amount)
         VALUES ($1, $2, 'EUR', 0, 1, $3, 1, $3)",
    )
    .bind(CHANNEL)
    .bind(day())
    .bind(near)
    .execute(&pool)
    .await
    .expect("seed the channel's day");

    apply_analytics(&pool, &[created("pay_1", 1_000), succeeded("pay_1", 1_000)]).await;

    let expected = i128::from(near) + 1_000;
    for column in ["created_amount", "succeeded_amount"] {
        let stored = stored_amount(
            &pool,
            &format!("SELECT {column}::TEXT FROM analytics_channel_daily"),
        )
        .await;
        assert_eq!(stored, expected, "stored {column}");
    }
    let channels = analytics::channel_metrics(&pool, day())
        .await
        .expect("channel metrics");
    assert_eq!(channels.len(), 1, "{channels:?}");
    assert_eq!(channels[0].channel, CHANNEL);
    let web = &channels[0].metrics;
    assert_eq!(web.created_count, 2);
    assert_eq!(web.created_amount, expected);
    assert_eq!(web.succeeded_amount, expected);
    assert_eq!(web.revenue, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_shards_past_i64_max_together_read_as_their_exact_sum() {
    let pool = TestEnv::new("bounds_channel_shards")
        .await
        .migrated_pool()
        .await;
    // Each shard's row is within 64 bits; their sum is not.
    let per_shard = i64::MAX - 1;
    for shard in 0..3 {
        sqlx::query(
            "INSERT INTO analytics_channel_daily (channel, day, currency, shard, created_count, created_amount)
             VALUES ($1, $2, 'EUR', $3, 1, $4)",
        )
        .bind(CHANNEL)
        .bind(day())
        .bind(shard)
        .bind(per_shard)
        .execute(&pool)
        .await
        .expect("seed a shard");
    }

    let channels = analytics::channel_metrics(&pool, day())
        .await
        .expect("channel metrics");

    assert_eq!(channels.len(), 1, "{channels:?}");
    let web = &channels[0].metrics;
    assert_eq!(web.created_count, 3);
    assert_eq!(web.created_amount, 3 * i128::from(per_shard));
    assert_eq!(web.average_amount, i128::from(per_shard));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_creates_past_i64_max_adds_up_exactly() {
    let pool = TestEnv::new("bounds_create_batch")
        .await
        .migrated_pool()
        .await;
    // One batch, one rollup row: the batch sums its creates per row before writing.
    let amount = i64::MAX / 2 + 1;
    apply_analytics(
        &pool,
        &[
            created("pay_1", amount),
            created("pay_2", amount),
            created("pay_3", amount),
        ],
    )
    .await;

    let expected = 3 * i128::from(amount);
    let merchant = stored_amount(
        &pool,
        "SELECT created_amount::TEXT FROM analytics_merchant_daily",
    )
    .await;
    let channel = stored_amount(
        &pool,
        "SELECT created_amount::TEXT FROM analytics_channel_daily",
    )
    .await;
    assert_eq!((merchant, channel), (expected, expected));
    let metrics = analytics::payment_metrics(&pool, MERCHANT, day())
        .await
        .expect("payment metrics");
    assert_eq!(metrics[0].created_amount, expected);
    assert_eq!(metrics[0].created_count, 3);
}
