//! A settlement run whose items add up past `i64::MAX` closes them into exact settlements.

use super::*;
use payrail_pools::settlement;
use std::collections::{BTreeMap, BTreeSet};

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
