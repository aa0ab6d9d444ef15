//! The audit's log: the journal, then what the fallback spool still holds, filtered as
//! every reader filters it, and the payments replayed from it with the domain's `evolve`.

use super::{AuditError, Differences, READ_TIMEOUT};
use kafka_journal::consumer::ConsumedRecord;
use kafka_journal::JournalOptions;
use payrail_payment::machine::{evolve, EventContext};
use payrail_payment::{Payment, PaymentEvent};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};

/// The records of `topic` every read model takes, in the order they take them.
pub(super) async fn read(
    journal: &JournalOptions,
    topic: &str,
    pool: &PgPool,
) -> Result<Vec<ConsumedRecord>, AuditError> {
    let mut records =
        kafka_journal::reader::read_all(journal, topic, journal.partitions, READ_TIMEOUT).await?;
    // Acknowledged events still in the fallback spool belong to the log too (the pools may
    // have applied them already); after the journal, in spool order. A row that was
    // replayed already is the same event again, which the replay below ignores.
    let spool = kafka_journal::spool::Spool::new(pool.clone(), topic.to_string(), 1);
    let mut spooled = 0usize;
    for (partition, _) in spool.partitions_in_fallback().await? {
        let mut after = 0;
        loop {
            let rows = spool.after(partition, after, 10_000).await?;
            let Some(last) = rows.last().map(|r| r.sequence) else {
                break;
            };
            spooled += rows.len();
            records.extend(rows.iter().map(|r| ConsumedRecord::from(&r.record)));
            after = last;
        }
    }
    if spooled > 0 {
        println!("audit: {spooled} events still in the fallback spool, read after the journal");
    }
    // What the read models take: owner-change markers, a superseded owner's late appends
    // and what a takeover in fallback voided take effect nowhere (see kafka_journal::fence).
    let voided = kafka_journal::offsets::void_fences_of_topic(pool, topic).await?;
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
    Ok(records)
}

/// The payments as the journal makes them, with what the money read models need of it.
pub(super) struct Replayed {
    pub payments: BTreeMap<String, Payment>,
    /// (event, merchant, payment, captured)
    pub captures: Vec<(uuid::Uuid, String, String, i64)>,
    /// (event, merchant, payment, refund)
    pub refunds_done: Vec<(uuid::Uuid, String, String, String)>,
    pub failed: Vec<String>,
}

/// Replays `records`, noting every sequence gap and fork in `diffs`.
pub(super) fn replay(
    records: &[ConsumedRecord],
    diffs: &mut Differences,
) -> Result<Replayed, AuditError> {
    // Payments, replayed.
    let mut payments: BTreeMap<String, Option<Payment>> = BTreeMap::new();
    let mut captures: Vec<(uuid::Uuid, String, String, i64)> = Vec::new(); // (event, merchant, payment, captured)
    let mut refunds_done: Vec<(uuid::Uuid, String, String, String)> = Vec::new(); // (event, merchant, payment, refund)
    let mut failed: Vec<String> = Vec::new();
    // (payment, sequence) → type of the event applied there.
    let mut applied_types: HashMap<(String, u64), String> = HashMap::new();
    for record in records {
        let envelope = record
            .decode::<PaymentEvent>()
            .map_err(|source| AuditError::Decode {
                partition: record.partition,
                offset: record.offset,
                source,
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

    Ok(Replayed {
        payments,
        captures,
        refunds_done,
        failed,
    })
}
