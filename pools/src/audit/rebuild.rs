//! `payrail rebuild <pool>`: a pool's read model reset and replayed from the journal.

use super::{AuditError, READ_TIMEOUT};
use crate::analytics::{AnalyticsProjector, ANALYTICS_GROUP};
use crate::ledger::{self, LedgerProjector, LEDGER_GROUP};
use kafka_journal::consumer::{
    spawn_consumer, Assignment, ConsumerSpec, PartitionHandler, Supervision,
};
use kafka_journal::JournalOptions;
use payrail_supervisor::RestartPolicy;
use sqlx::PgPool;
use std::sync::Arc;

/// Resets a pool's read model and replays the whole journal into it. Run it with the
/// nodes stopped (their workers hold positions in memory).
pub async fn rebuild(
    journal: &JournalOptions,
    topic: &str,
    restart: RestartPolicy,
    pool: &PgPool,
    pool_name: &str,
) -> Result<(), AuditError> {
    let (group, tables, handler): (&str, &[&str], Arc<dyn PartitionHandler>) = match pool_name {
        "analytics" => (
            ANALYTICS_GROUP,
            &["analytics_merchant_daily", "analytics_channel_daily", "analytics_completed_orders", "analytics_payments", "analytics_refunds"],
            Arc::new(AnalyticsProjector),
        ),
        "ledger" => (LEDGER_GROUP, &["ledger_entries", "ledger_payments", "ledger_refunds"], Arc::new(LedgerProjector)),
        other => {
            return Err(AuditError::Rebuild(format!(
                "unknown or unsupported pool {other:?}; allowed: analytics, ledger (settlement batches are business records and are not rebuilt)"
            )))
        }
    };
    let name = journal.group(group);
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
            restart,
            escalations: Default::default(),
        },
        ConsumerSpec {
            name: name.clone(),
            topic: topic.to_string(),
            assignment: Assignment::Manual(partitions.clone()),
            dead_letter_topic: Some(journal.dead_letter_topic(group)),
        },
        pool.clone(),
        handler,
    )
    .await?;
    for partition in partitions {
        let (_, high) = kafka_journal::admin::watermarks(journal, topic, partition).await?;
        if !consumer
            .progress
            .wait_for(partition, high, READ_TIMEOUT)
            .await
        {
            return Err(AuditError::Rebuild(format!(
                "partition {partition} did not reach offset {high}"
            )));
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
