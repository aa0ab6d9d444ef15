//! `payrail audit` and `payrail rebuild <pool>`.
//!
//! The audit recomputes the read models from the journal (and the settlements table, the
//! one business record that is not an event stream) and prints every difference, then the
//! ledger's debits and credits per currency. Exit status 1 when anything differs.

// Rows of SQL queries are read as tuples; naming each tuple type would add nothing.
#![allow(clippy::type_complexity)]

use crate::config::Config;
use crate::node::PAYMENT_EVENTS;
use anyhow::Context;
use kafka_journal::consumer::{
    spawn_consumer, Assignment, ConsumerSpec, PartitionHandler, Supervision,
};
use payrail_actors::payment::machine::{evolve, EventContext};
use payrail_actors::payment::{Payment, PaymentEvent, RefundStatus};
use payrail_pools::analytics::{AnalyticsProjector, ANALYTICS_GROUP, DEFAULT_CHANNEL};
use payrail_pools::ledger::{self, platform_fee, LedgerProjector, Pricing, LEDGER_GROUP};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(300);

struct Differences(Vec<String>);

impl Differences {
    fn check<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, expected: T, actual: T) {
        if expected != actual {
            self.0.push(format!(
                "{what}: journal says {expected:?}, read model has {actual:?}"
            ));
        }
    }
}

pub async fn audit(config: &Config, pool: &PgPool) -> anyhow::Result<bool> {
    let journal = &config.journal;
    let topic = journal.topic(PAYMENT_EVENTS);
    let mut records =
        kafka_journal::reader::read_all(journal, &topic, journal.partitions, READ_TIMEOUT)
            .await
            .context("reading the journal")?;
    // Acknowledged events still in the fallback spool belong to the log too (the pools may
    // have applied them already); after the journal, in spool order. A row that was
    // replayed already is the same event again, which the replay below ignores.
    let spool = kafka_journal::spool::Spool::new(pool.clone(), topic.clone(), 1);
    let mut spooled = 0usize;
    for (partition, _) in spool
        .partitions_in_fallback()
        .await
        .context("reading the fallback spool")?
    {
        let mut after = 0;
        loop {
            let rows = spool
                .after(partition, after, 10_000)
                .await
                .context("reading the fallback spool")?;
            let Some(last) = rows.last().map(|r| r.sequence) else {
                break;
            };
            spooled += rows.len();
            records.extend(
                rows.iter()
                    .map(|r| payrail_actors::fallback::as_consumed(&r.record)),
            );
            after = last;
        }
    }
    if spooled > 0 {
        println!("audit: {spooled} events still in the fallback spool, read after the journal");
    }
    // What the read models take: owner-change markers, a superseded owner's late appends
    // and what a takeover in fallback voided take effect nowhere (see kafka_journal::fence).
    let voided = kafka_journal::offsets::void_fences_of_topic(pool, &topic)
        .await
        .context("reading the voided ranges")?;
    let none = kafka_journal::fence::VoidFences::default();
    let mut fences: HashMap<i32, kafka_journal::fence::EpochFence> = HashMap::new();
    let before = records.len();
    records.retain(|r| {
        fences
            .entry(r.partition)
            .or_default()
            .admit_unless_voided(r, voided.get(&r.partition).unwrap_or(&none))
            == kafka_journal::fence::FenceVerdict::Apply
    });
    if records.len() < before {
        println!(
            "audit: {} owner-change markers or fenced records skipped",
            before - records.len()
        );
    }
    let mut diffs = Differences(Vec::new());

    // Payments, replayed.
    let mut payments: BTreeMap<String, Option<Payment>> = BTreeMap::new();
    let mut captures: Vec<(uuid::Uuid, String, String, i64)> = Vec::new(); // (event, merchant, payment, captured)
    let mut refunds_done: Vec<(uuid::Uuid, String, String, String)> = Vec::new(); // (event, merchant, payment, refund)
    let mut failed: Vec<String> = Vec::new();
    // (payment, sequence) → type of the event applied there.
    let mut applied_types: HashMap<(String, u64), String> = HashMap::new();
    for record in &records {
        let envelope = record.decode::<PaymentEvent>().with_context(|| {
            format!(
                "decoding offset {} of partition {}",
                record.offset, record.partition
            )
        })?;
        let state = payments.remove(&envelope.payment_id).flatten();
        // A sequence already applied: the same event again (a redelivery, a replayed spool
        // row, a retried keyed create) is ignored as every reader ignores it; another kind
        // of event at that sequence is a fork.
        if let Some(current) = state.as_ref().filter(|p| envelope.sequence <= p.sequence) {
            let first = applied_types.get(&(envelope.payment_id.clone(), envelope.sequence));
            if first != Some(&envelope.event_type) {
                diffs.check(
                    &format!(
                        "payment {} event at sequence {} (fork)",
                        envelope.payment_id, envelope.sequence
                    ),
                    first.cloned(),
                    Some(envelope.event_type.clone()),
                );
            }
            debug_assert!(current.sequence >= envelope.sequence);
            payments.insert(envelope.payment_id.clone(), state);
            continue;
        }
        applied_types.insert(
            (envelope.payment_id.clone(), envelope.sequence),
            envelope.event_type.clone(),
        );
        let ctx = EventContext {
            payment_id: &envelope.payment_id,
            merchant_id: &envelope.merchant_id,
            sequence: envelope.sequence,
            occurred_at_micros: envelope.occurred_at_micros,
        };
        match &envelope.payload {
            PaymentEvent::Succeeded {
                amount_captured, ..
            } if *amount_captured > 0 => captures.push((
                envelope.event_id,
                envelope.merchant_id.clone(),
                envelope.payment_id.clone(),
                *amount_captured,
            )),
            PaymentEvent::RefundSucceeded { refund_id, .. } => refunds_done.push((
                envelope.event_id,
                envelope.merchant_id.clone(),
                envelope.payment_id.clone(),
                refund_id.clone(),
            )),
            PaymentEvent::Failed { .. } => failed.push(envelope.payment_id.clone()),
            _ => {}
        }
        let expected_sequence = state.as_ref().map(|p| p.sequence + 1).unwrap_or(1);
        diffs.check(
            &format!("payment {} sequence", envelope.payment_id),
            expected_sequence,
            envelope.sequence,
        );
        payments.insert(
            envelope.payment_id.clone(),
            evolve(state, ctx, &envelope.payload),
        );
    }
    let payments: BTreeMap<String, Payment> = payments
        .into_iter()
        .filter_map(|(k, v)| v.map(|p| (k, p)))
        .collect();

    // Snapshots.
    let snapshots: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT payment_id, state FROM payment_snapshots")
            .fetch_all(pool)
            .await?;
    let snapshots: HashMap<String, Payment> = snapshots
        .into_iter()
        .filter_map(|(id, state)| serde_json::from_value(state).ok().map(|p| (id, p)))
        .collect();
    for (id, payment) in &payments {
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

    // Pricing.
    let pricing: HashMap<String, Pricing> =
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
            .collect();
    let fee_of = |merchant: &str, amount: i64| {
        platform_fee(
            amount,
            pricing
                .get(merchant)
                .copied()
                .unwrap_or(Pricing { bps: 0, fixed: 0 }),
        )
    };

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
        if p.status == payrail_actors::payment::PaymentStatus::Succeeded {
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
        .collect::<anyhow::Result<_>>()?;
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
        .collect::<anyhow::Result<_>>()?;
    for key in channels
        .keys()
        .chain(stored.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        diffs.check(&format!("analytics channel {key:?} [created, amount, succeeded, amount, failed, amount, refunded, amount, -]"), channels.get(key), stored.get(key));
    }

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
    for (event_id, merchant, payment_id, captured) in &captures {
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
    for (event_id, merchant, payment_id, refund_id) in &refunds_done {
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
        .collect::<anyhow::Result<_>>()?;
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
        .collect::<anyhow::Result<_>>()?;
    for ((account, merchant, currency), balance) in &stored {
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

    println!(
        "audit: {} journal records, {} payments, {} settlements",
        records.len(),
        payments.len(),
        settlements.len()
    );
    let totals: Vec<(String, String, String)> = sqlx::query_as("SELECT currency, sum(debit)::TEXT, sum(credit)::TEXT FROM ledger_entries GROUP BY currency ORDER BY currency")
        .fetch_all(pool)
        .await?;
    for (currency, debits, credits) in totals {
        let (debits, credits) = (amount(&debits)?, amount(&credits)?);
        println!(
            "ledger {currency}: debits {debits} credits {credits} {}",
            if debits == credits {
                "balanced"
            } else {
                "UNBALANCED"
            }
        );
        if debits != credits {
            diffs.0.push(format!("ledger {currency} does not balance"));
        }
    }
    for d in &diffs.0 {
        println!("difference: {d}");
    }
    println!("audit: {} differences", diffs.0.len());
    Ok(diffs.0.is_empty())
}

/// A sum of amounts read as text (NUMERIC, which fits `i128`).
fn amount(text: &str) -> anyhow::Result<i128> {
    Ok(payrail_actors::money::sum_from_text(text)?)
}

/// Resets a pool's read model and replays the whole journal into it. Run it with the
/// nodes stopped (their workers hold positions in memory).
pub async fn rebuild(config: &Config, pool: &PgPool, pool_name: &str) -> anyhow::Result<()> {
    let journal = &config.journal;
    let (group, tables, handler): (&str, &[&str], Arc<dyn PartitionHandler>) = match pool_name {
        "analytics" => (
            ANALYTICS_GROUP,
            &["analytics_merchant_daily", "analytics_channel_daily", "analytics_completed_orders", "analytics_payments", "analytics_refunds"],
            Arc::new(AnalyticsProjector),
        ),
        "ledger" => (LEDGER_GROUP, &["ledger_entries", "ledger_payments", "ledger_refunds"], Arc::new(LedgerProjector)),
        other => anyhow::bail!(
            "rebuild: unknown or unsupported pool {other:?}; allowed: analytics, ledger (settlement batches are business records and are not rebuilt)"
        ),
    };
    let name = journal.group(group);
    let topic = journal.topic(PAYMENT_EVENTS);
    let mut tx = pool.begin().await?;
    for table in tables {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await?;
    }
    kafka_journal::offsets::reset_consumer(&mut tx, &name).await?;
    tx.commit().await?;
    let partitions: Vec<i32> = (0..journal.partitions as i32).collect();
    // A rebuild runs in the foreground: a give-up shows as the partition not reaching its
    // offset below, with the reason in the log.
    let consumer = spawn_consumer(
        journal,
        Supervision {
            restart: config.supervisor.restart,
            escalations: Default::default(),
        },
        ConsumerSpec {
            name: name.clone(),
            topic: topic.clone(),
            assignment: Assignment::Manual(partitions.clone()),
            dead_letter_topic: Some(journal.dead_letter_topic(group)),
        },
        pool.clone(),
        handler,
    )
    .await?;
    for partition in partitions {
        let (_, high) = kafka_journal::admin::watermarks(journal, &topic, partition).await?;
        if !consumer
            .progress
            .wait_for(partition, high, READ_TIMEOUT)
            .await
        {
            anyhow::bail!("rebuild: partition {partition} did not reach offset {high}");
        }
    }
    consumer.stop();
    if pool_name == "ledger" {
        // Settlement transfers and payouts come from the settlements table, not the journal.
        let settlements: Vec<(String, String, String, i64, String)> =
            sqlx::query_as("SELECT id, merchant_id, currency, net, status FROM settlements")
                .fetch_all(pool)
                .await?;
        let mut tx = pool.begin().await?;
        for (id, merchant, currency, net, status) in settlements {
            ledger::settlement_transaction(&id, &merchant, &currency, net)?
                .post(&mut tx, &format!("settlement:{id}"))
                .await?;
            if status == "paid" {
                ledger::payout_transaction(&id, &merchant, &currency, net)?
                    .post(&mut tx, &format!("payout:{id}"))
                    .await?;
            }
        }
        tx.commit().await?;
    }
    println!("rebuild of {pool_name} finished");
    Ok(())
}
