//! Ledger sums past `i64::MAX`: a merchant's balance, and the audit's ledger and open-item sums.

use super::*;

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
