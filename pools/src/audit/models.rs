//! The audit's comparisons: each read model against what the replayed payments make of it.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

use super::log::Replayed;
use super::{amount, AuditError, Differences};
use crate::analytics::DEFAULT_CHANNEL;
use crate::ledger::{self, platform_fee, Pricing};
use payrail_payment::{Payment, RefundStatus};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};

/// Ledger balances (debit − credit) per (account, merchant, currency).
pub(super) type Balances = BTreeMap<(String, Option<String>, String), i128>;

/// Each payment's snapshot against its replayed state.
pub(super) async fn snapshots(
    pool: &PgPool,
    payments: &BTreeMap<String, Payment>,
    diffs: &mut Differences,
) -> Result<(), AuditError> {
    // Snapshots.
    let snapshots: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT payment_id, state FROM payment_snapshots")
            .fetch_all(pool)
            .await?;
    let snapshots: HashMap<String, Payment> = snapshots
        .into_iter()
        .filter_map(|(id, state)| serde_json::from_value(state).ok().map(|p| (id, p)))
        .collect();
    for (id, payment) in payments {
        let snapshot = snapshots
            .get(id)
            .map(|p| (p.status, p.amount_captured, p.amount_refunded, p.sequence));
        diffs.check(
            &format!("snapshot of {id}"),
            Some((
                payment.status,
                payment.amount_captured,
                payment.amount_refunded,
                payment.sequence,
            )),
            snapshot,
        );
    }

    Ok(())
}

/// Each merchant's fee terms.
pub(super) async fn pricing(pool: &PgPool) -> Result<HashMap<String, Pricing>, AuditError> {
    Ok(
        sqlx::query_as::<_, (String, i32, i64)>("SELECT id, fee_bps, fee_fixed FROM merchants")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(id, bps, fixed)| {
                (
                    id,
                    Pricing {
                        bps: bps as i64,
                        fixed,
                    },
                )
            })
            .collect(),
    )
}

/// The platform fee on `amount` under `merchant`'s terms (none for an unknown merchant).
pub(super) fn fee_of(pricing: &HashMap<String, Pricing>, merchant: &str, amount: i64) -> i64 {
    platform_fee(
        amount,
        pricing
            .get(merchant)
            .copied()
            .unwrap_or(Pricing { bps: 0, fixed: 0 }),
    )
}

/// The merchant and channel rollups against the replayed payments.
pub(super) async fn analytics(
    pool: &PgPool,
    replayed: &Replayed,
    pricing: &HashMap<String, Pricing>,
    diffs: &mut Differences,
) -> Result<(), AuditError> {
    let (payments, failed) = (&replayed.payments, &replayed.failed);
    let fee_of = |merchant: &str, amount: i64| fee_of(pricing, merchant, amount);
    // Analytics. Amounts are summed in i128, as the rollups hold them (NUMERIC, read as text).
    type Key = (String, chrono::NaiveDate, String);
    let mut analytics: BTreeMap<Key, [i128; 9]> = BTreeMap::new();
    let day_of = |p: &Payment| {
        chrono::DateTime::from_timestamp_micros(p.created_at_micros)
            .map(|d| d.date_naive())
            .unwrap_or_default()
    };
    // Each payment adds to its merchant's row and to its channel's row (the channel rollup
    // has no fees).
    let mut channels: BTreeMap<Key, [i128; 9]> = BTreeMap::new();
    let failed: std::collections::HashSet<&String> = failed.iter().collect();
    for p in payments.values() {
        let mut row = [0i128; 9];
        row[0] = 1;
        row[1] = p.amount.into();
        if p.status == payrail_payment::PaymentStatus::Succeeded {
            row[2] = 1;
            row[3] = p.amount_captured.into();
            row[8] = fee_of(&p.merchant_id, p.amount_captured).into();
        }
        if failed.contains(&p.id) {
            row[4] = 1;
            row[5] = p.amount.into();
        }
        for r in p
            .refunds
            .iter()
            .filter(|r| r.status == RefundStatus::Succeeded)
        {
            row[6] += 1;
            row[7] += i128::from(r.amount);
        }
        let (day, currency) = (day_of(p), p.currency.code().to_string());
        let add = |into: &mut [i128; 9], row: &[i128; 9]| {
            into.iter_mut().zip(row).for_each(|(total, v)| *total += v)
        };
        add(
            analytics
                .entry((p.merchant_id.clone(), day, currency.clone()))
                .or_default(),
            &row,
        );
        row[8] = 0;
        let channel = p
            .channel
            .clone()
            .unwrap_or_else(|| DEFAULT_CHANNEL.to_string());
        add(channels.entry((channel, day, currency)).or_default(), &row);
    }
    let stored: Vec<(String, chrono::NaiveDate, String, i64, String, i64, String, i64, String, i64, String, String)> = sqlx::query_as(
        "SELECT merchant_id, day, currency, created_count, created_amount::TEXT, succeeded_count, succeeded_amount::TEXT,
                failed_count, failed_amount::TEXT, refunded_count, refunded_amount::TEXT, fees::TEXT FROM analytics_merchant_daily",
    )
    .fetch_all(pool)
    .await?;
    let stored: BTreeMap<Key, [i128; 9]> = stored
        .into_iter()
        .map(|(m, d, c, a, b, e, f, g, h, i, j, k)| {
            let row = [
                a.into(),
                amount(&b)?,
                e.into(),
                amount(&f)?,
                g.into(),
                amount(&h)?,
                i.into(),
                amount(&j)?,
                amount(&k)?,
            ];
            Ok(((m, d, c), row))
        })
        .collect::<Result<_, AuditError>>()?;
    for key in analytics
        .keys()
        .chain(stored.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        diffs.check(&format!("analytics {key:?} [created, amount, succeeded, amount, failed, amount, refunded, amount, fees]"), analytics.get(key), stored.get(key));
    }
    let stored: Vec<(String, chrono::NaiveDate, String, i64, String, i64, String, i64, String, i64, String)> = sqlx::query_as(
        "SELECT channel, day, currency, sum(created_count)::BIGINT, sum(created_amount)::TEXT,
                sum(succeeded_count)::BIGINT, sum(succeeded_amount)::TEXT, sum(failed_count)::BIGINT,
                sum(failed_amount)::TEXT, sum(refunded_count)::BIGINT, sum(refunded_amount)::TEXT
         FROM analytics_channel_daily GROUP BY channel, day, currency",
    )
    .fetch_all(pool)
    .await?;
    let stored: BTreeMap<Key, [i128; 9]> = stored
        .into_iter()
        .map(|(ch, d, c, a, b, e, f, g, h, i, j)| {
            let row = [
                a.into(),
                amount(&b)?,
                e.into(),
                amount(&f)?,
                g.into(),
                amount(&h)?,
                i.into(),
                amount(&j)?,
                0,
            ];
            Ok(((ch, d, c), row))
        })
        .collect::<Result<_, AuditError>>()?;
    for key in channels
        .keys()
        .chain(stored.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        diffs.check(&format!("analytics channel {key:?} [created, amount, succeeded, amount, failed, amount, refunded, amount, -]"), channels.get(key), stored.get(key));
    }

    Ok(())
}

/// The ledger's balances against the postings the journal and the settlements make;
/// returns the stored balances and the number of settlements.
pub(super) async fn ledger_balances(
    pool: &PgPool,
    replayed: &Replayed,
    pricing: &HashMap<String, Pricing>,
    diffs: &mut Differences,
) -> Result<(Balances, usize), AuditError> {
    let payments = &replayed.payments;
    let fee_of = |merchant: &str, amount: i64| fee_of(pricing, merchant, amount);
    // Ledger: expected balances per (account, merchant, currency).
    type Account = (String, Option<String>, String);
    // debit − credit, in i128 like the stored sums below: a busy account passes i64::MAX.
    let mut expected: BTreeMap<Account, i128> = BTreeMap::new();
    let mut add = |tx: &ledger::LedgerTransaction| {
        for leg in &tx.legs {
            *expected
                .entry((
                    leg.account.to_string(),
                    leg.merchant_id.clone(),
                    tx.currency.clone(),
                ))
                .or_default() += i128::from(leg.debit) - i128::from(leg.credit);
        }
    };
    for (event_id, merchant, payment_id, captured) in &replayed.captures {
        let currency = payments
            .get(payment_id)
            .map(|p| p.currency.code().to_string())
            .unwrap_or_default();
        add(&ledger::capture_transaction(
            *event_id,
            merchant,
            payment_id,
            &currency,
            *captured,
            fee_of(merchant, *captured),
        )?);
    }
    for (event_id, merchant, payment_id, refund_id) in &replayed.refunds_done {
        let Some(p) = payments.get(payment_id) else {
            continue;
        };
        let amount = p.refund(refund_id).map(|r| r.amount).unwrap_or(0);
        add(&ledger::refund_transaction(
            *event_id,
            merchant,
            payment_id,
            p.currency.code(),
            amount,
        )?);
    }
    let settlements: Vec<(String, String, String, i64, String)> =
        sqlx::query_as("SELECT id, merchant_id, currency, net, status FROM settlements")
            .fetch_all(pool)
            .await?;
    for (id, merchant, currency, net, status) in &settlements {
        add(&ledger::settlement_transaction(
            id, merchant, currency, *net,
        )?);
        if status == "paid" {
            add(&ledger::payout_transaction(id, merchant, currency, *net)?);
        }
    }
    // Every sum below is NUMERIC in PostgreSQL, read as text into i128 (a `::BIGINT` cast
    // failed with "bigint out of range" past i64::MAX, and the audit with it).
    let stored: Vec<(String, Option<String>, String, String)> = sqlx::query_as(
        "SELECT account, merchant_id, currency, (sum(debit) - sum(credit))::TEXT FROM ledger_entries GROUP BY account, merchant_id, currency",
    )
    .fetch_all(pool)
    .await?;
    let stored: BTreeMap<Account, i128> = stored
        .into_iter()
        .map(|(a, m, c, b)| Ok(((a, m, c), amount(&b)?)))
        .collect::<Result<_, AuditError>>()?;
    for key in expected
        .keys()
        .chain(stored.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        diffs.check(
            &format!("ledger balance (debit − credit) of {key:?}"),
            expected.get(key).copied().unwrap_or(0),
            stored.get(key).copied().unwrap_or(0),
        );
    }

    Ok((stored, settlements.len()))
}

/// Per payment, the ledger's movements against its captures and refunds; the settlements
/// against the ledger's pending balances and their items.
pub(super) async fn settlements(
    pool: &PgPool,
    payments: &BTreeMap<String, Payment>,
    stored: &Balances,
    diffs: &mut Differences,
) -> Result<(), AuditError> {
    // Per payment: captured − refunded = merchant net movement + fees.
    let movements: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT payment_id,
                COALESCE(sum(credit - debit) FILTER (WHERE account = 'merchant_pending'), 0)::TEXT,
                COALESCE(sum(credit - debit) FILTER (WHERE account = 'platform_fee_revenue'), 0)::TEXT
         FROM ledger_entries WHERE payment_id IS NOT NULL GROUP BY payment_id",
    )
    .fetch_all(pool)
    .await?;
    for (payment_id, merchant_net, fees) in movements {
        if let Some(p) = payments.get(&payment_id) {
            diffs.check(
                &format!("payment {payment_id}: captured − refunded vs merchant net + fees"),
                i128::from(p.amount_captured) - i128::from(p.amount_refunded),
                amount(&merchant_net)? + amount(&fees)?,
            );
        }
    }

    // Settlements equal the ledger: open items equal pending balances.
    let open: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT merchant_id, currency, sum(gross - fee)::TEXT FROM settlement_items WHERE settlement_id IS NULL GROUP BY merchant_id, currency",
    )
    .fetch_all(pool)
    .await?;
    let open: BTreeMap<(String, String), i128> = open
        .into_iter()
        .map(|(m, c, n)| Ok(((m, c), amount(&n)?)))
        .collect::<Result<_, AuditError>>()?;
    for ((account, merchant, currency), balance) in stored {
        if account == ledger::MERCHANT_PENDING {
            let merchant = merchant.clone().unwrap_or_default();
            diffs.check(
                &format!("unsettled net of {merchant} in {currency} vs ledger pending"),
                open.get(&(merchant.clone(), currency.clone()))
                    .copied()
                    .unwrap_or(0),
                -balance,
            );
        }
    }
    let settled_sums: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT s.id, s.net, COALESCE((SELECT sum(gross - fee) FROM settlement_items i WHERE i.settlement_id = s.id), 0)::TEXT FROM settlements s",
    )
    .fetch_all(pool)
    .await?;
    for (id, net, items) in settled_sums {
        diffs.check(
            &format!("settlement {id} net vs its items"),
            amount(&items)?,
            i128::from(net),
        );
    }

    Ok(())
}
