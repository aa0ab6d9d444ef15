//! Sums of money at the bound of 64 bits (issue 23), against the real PostgreSQL: the
//! analytics rollups keep exact totals past `i64::MAX` (their amount columns are
//! `NUMERIC(38,0)`, read as `i128`), and a settlement run whose items add up past
//! `i64::MAX` closes them into several settlements, each exact, instead of overflowing.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

mod common;

use common::*;
use kafka_journal::consumer::{ConsumedRecord, PartitionHandler};
use kafka_journal::{Codec, CodecKind, Envelope};
use payrail_actors::money::Currency;
use payrail_actors::payment::{CaptureMethod, PaymentCreated, PaymentEvent};
use payrail_pools::analytics::{self, AnalyticsProjector};
use payrail_pools::settlement;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

const MERCHANT: &str = "mer_bounds";
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

/// An open settlement item straight in the table, as the settlement pool records it.
async fn settlement_item(pool: &PgPool, merchant: &str, gross: i64, fee: i64) {
    sqlx::query(
        "INSERT INTO settlement_items (event_id, merchant_id, currency, payment_id, kind, gross, fee, occurred_at)
         VALUES ($1, $2, 'EUR', $3, $4, $5, $6, now() - interval '1 minute')",
    )
    .bind(Uuid::now_v7())
    .bind(merchant)
    .bind(format!("pay_{}", Uuid::now_v7().simple()))
    .bind(if gross >= 0 { "capture" } else { "refund" })
    .bind(gross)
    .bind(fee)
    .execute(pool)
    .await
    .expect("settlement item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_run_past_i64_max_splits_into_exact_settlements() {
    let pool = TestEnv::new("bounds_settlement")
        .await
        .migrated_pool()
        .await;
    // Three captures that together exceed i64::MAX, with small movements around them.
    let huge = i64::MAX / 3;
    settlement_item(&pool, MERCHANT, 10_000, 320).await;
    for _ in 0..3 {
        settlement_item(&pool, MERCHANT, huge, huge / 100).await;
    }
    settlement_item(&pool, MERCHANT, -2_500, 0).await;
    settlement_item(&pool, "mer_small", 5_000, 175).await;

    let mut tx = pool.begin().await.expect("transaction");
    let ids = settlement::close_open_items(&mut tx, chrono::Utc::now())
        .await
        .expect("the settlement run");
    tx.commit().await.expect("commit");

    // Every item settled, by one of this run's settlements.
    let unsettled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM settlement_items i
         WHERE i.settlement_id IS NULL OR NOT EXISTS (SELECT 1 FROM settlements s WHERE s.id = i.settlement_id)",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(unsettled, 0, "every item belongs to a settlement");
    // Each settlement's totals are exactly its items' (summed in NUMERIC, read as i128).
    let settlements: Vec<(
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        String,
        String,
        String,
        i64,
    )> = sqlx::query_as(
        "SELECT s.id, s.merchant_id, s.captured, s.refunded, s.fees, s.net, s.item_count,
                    COALESCE(sum(i.gross) FILTER (WHERE i.gross >= 0), 0)::TEXT,
                    COALESCE(-sum(i.gross) FILTER (WHERE i.gross < 0), 0)::TEXT,
                    sum(i.fee)::TEXT, count(i.event_id)
             FROM settlements s JOIN settlement_items i ON i.settlement_id = s.id
             GROUP BY s.id ORDER BY s.id",
    )
    .fetch_all(&pool)
    .await
    .expect("settlements with their items");
    assert_eq!(
        settlements
            .iter()
            .map(|s| s.0.clone())
            .collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "the run returns the settlements it created"
    );
    let parse = |text: &str| text.parse::<i128>().expect("an integer");
    let mut per_merchant: BTreeMap<String, (usize, i128, i128, i128, i128)> = BTreeMap::new();
    for (
        id,
        merchant,
        captured,
        refunded,
        fees,
        net,
        count,
        items_captured,
        items_refunded,
        items_fees,
        items,
    ) in &settlements
    {
        assert_eq!(
            (
                i128::from(*captured),
                i128::from(*refunded),
                i128::from(*fees),
                *count
            ),
            (
                parse(items_captured),
                parse(items_refunded),
                parse(items_fees),
                *items
            ),
            "settlement {id}: totals and item count are its items'"
        );
        assert_eq!(
            i128::from(*net),
            i128::from(*captured) - i128::from(*refunded) - i128::from(*fees),
            "settlement {id}: net"
        );
        let totals = per_merchant.entry(merchant.clone()).or_default();
        totals.0 += 1;
        totals.1 += i128::from(*captured);
        totals.2 += i128::from(*refunded);
        totals.3 += i128::from(*fees);
        totals.4 += i128::from(*net);
    }
    // Together, the merchant's settlements hold exactly its items.
    let captured = 3 * i128::from(huge) + 10_000;
    let fees = 3 * i128::from(huge / 100) + 320;
    let (count, all_captured, all_refunded, all_fees, all_net) = per_merchant[MERCHANT];
    assert!(
        count >= 2,
        "past i64::MAX the run splits: {count} settlement(s)"
    );
    assert_eq!(
        (all_captured, all_refunded, all_fees, all_net),
        (captured, 2_500, fees, captured - 2_500 - fees)
    );
    assert_eq!(
        per_merchant["mer_small"],
        (1, 5_000, 0, 175, 4_825),
        "a merchant within the bound has one settlement"
    );
}

/// A balanced ledger transaction straight in the table, as the ledger pool posts a capture:
/// the PSP clearing account debited, the merchant's pending account credited.
async fn ledger_capture(pool: &PgPool, merchant: &str, amount: i64) {
    let transaction = format!("evt_{}", Uuid::now_v7().simple());
    let payment = format!("pay_{}", Uuid::now_v7().simple());
    let mut tx = pool.begin().await.expect("begin");
    for (account, merchant_id, debit, credit) in [
        ("psp_clearing", None, amount, 0),
        ("merchant_pending", Some(merchant), 0, amount),
    ] {
        sqlx::query(
            "INSERT INTO ledger_entries (posting_id, transaction_id, account, merchant_id, currency, debit, credit, payment_id)
             VALUES ($1, $2, $3, $4, 'EUR', $5, $6, $7)",
        )
        .bind(Uuid::now_v7())
        .bind(&transaction)
        .bind(account)
        .bind(merchant_id)
        .bind(debit)
        .bind(credit)
        .bind(&payment)
        .execute(&mut *tx)
        .await
        .expect("ledger entry");
    }
    tx.commit().await.expect("commit");
}

/// Three postings of `i64::MAX / 2` each: their sum is past `i64::MAX`.
const BIG_POSTING: i64 = i64::MAX / 2;

fn three_big_postings() -> i128 {
    3 * i128::from(BIG_POSTING)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_balance_past_i64_max_reads_as_its_exact_sum() {
    let pool = TestEnv::new("bounds_balance").await.migrated_pool().await;
    for _ in 0..3 {
        ledger_capture(&pool, MERCHANT, BIG_POSTING).await;
    }
    let pending = payrail_pools::ledger::merchant_balance(
        &pool,
        MERCHANT,
        payrail_pools::ledger::MERCHANT_PENDING,
    )
    .await
    .expect("the balance reads past i64::MAX");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].currency, "eur");
    assert_eq!(pending[0].amount, three_big_postings());
    assert!(pending[0].amount > i128::from(i64::MAX));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reads_ledger_and_open_item_sums_past_i64_max_exactly() {
    use kafka_journal::admin::{ensure_topics, TopicSpec};
    use kafka_journal::JournalOptions;
    let env = TestEnv::new("bounds_audit").await;
    let pool = env.migrated_pool().await;
    let options = JournalOptions {
        brokers: env.brokers.clone(),
        partitions: PARTITIONS,
        namespace: env.namespace.clone(),
        ..JournalOptions::default()
    };
    ensure_topics(
        &options,
        &[TopicSpec {
            name: env.topic(),
            partitions: PARTITIONS,
        }],
    )
    .await
    .expect("topic");
    // Postings and open items no journal event made: the audit must name them as
    // differences, with their exact sums (it failed with "bigint out of range" instead).
    for _ in 0..3 {
        ledger_capture(&pool, MERCHANT, BIG_POSTING).await;
        settlement_item(&pool, MERCHANT, BIG_POSTING, 0).await;
    }
    let (clean, differences, text) = common::chaos::audit_with(&env, &[]);
    let exact = three_big_postings().to_string();
    assert!(
        text.contains(&format!(
            "ledger EUR: debits {exact} credits {exact} balanced"
        )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("difference: ledger balance")
                && l.contains("merchant_pending")
                && l.ends_with(&format!("read model has -{exact}"))),
        "{text}"
    );
    // The open items (their sum past i64::MAX too) equal the pending balance: no difference.
    assert!(!text.contains("difference: unsettled net of"), "{text}");
    assert!(differences.is_some_and(|n| n > 0), "{text}");
    assert!(!clean, "differences make the audit fail");
}
