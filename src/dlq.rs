//! `payrail dlq list|replay <pool>`: a pool's dead letters, the records it gave up on after
//! every attempt (also published to `<namespace>payrail.<pool>.dlq`).

use crate::config::Config;
use anyhow::bail;
use kafka_journal::consumer::PartitionHandler;
use kafka_journal::dead_letters;
use payrail_pools::analytics::{AnalyticsProjector, ANALYTICS_GROUP};
use payrail_pools::ledger::{LedgerProjector, LEDGER_GROUP};
use payrail_pools::notification::{NotificationProjector, NOTIFICATION_GROUP};
use payrail_pools::settlement::{SettlementProjector, SETTLEMENT_GROUP};
use sqlx::PgPool;
use uuid::Uuid;

/// The pool's consumer name (with the namespace) and its handler.
fn pool(config: &Config, name: &str) -> anyhow::Result<(String, Box<dyn PartitionHandler>)> {
    let (group, handler): (&str, Box<dyn PartitionHandler>) = match name {
        "analytics" => (ANALYTICS_GROUP, Box::new(AnalyticsProjector)),
        "ledger" => (LEDGER_GROUP, Box::new(LedgerProjector)),
        "settlement" => (SETTLEMENT_GROUP, Box::new(SettlementProjector)),
        "notification" => (
            NOTIFICATION_GROUP,
            Box::new(NotificationProjector::new(&config.notification)),
        ),
        other => bail!(
            "dlq: unknown pool {other:?}; allowed: analytics, ledger, settlement, notification"
        ),
    };
    Ok((config.journal.group(group), handler))
}

/// Prints the pool's dead letters, oldest first.
pub async fn list(config: &Config, db: &PgPool, name: &str) -> anyhow::Result<()> {
    let (consumer, _) = pool(config, name)?;
    let letters = dead_letters::list(db, &consumer).await?;
    for letter in &letters {
        println!(
            "{}/{}@{}\tevent {}\t{}\tdead since {}\t{}\t{}",
            letter.topic,
            letter.partition,
            letter.record_offset,
            letter
                .event_id
                .map_or_else(|| "-".to_string(), |id| id.to_string()),
            letter.event_type.as_deref().unwrap_or("-"),
            letter.created_at.to_rfc3339(),
            letter.replayed_at.map_or_else(
                || "not replayed".to_string(),
                |at| format!("replayed {}", at.to_rfc3339())
            ),
            letter.error,
        );
    }
    let pending = letters.iter().filter(|l| l.replayed_at.is_none()).count();
    println!(
        "dlq {name}: {} dead letters, {pending} not replayed",
        letters.len()
    );
    Ok(())
}

/// Replays the pool's dead letters not replayed yet (or the one of `event_id`) through the
/// pool's handler, each exactly once. Fails if any fails again (it stays for a later try).
pub async fn replay(
    config: &Config,
    db: &PgPool,
    name: &str,
    event_id: Option<Uuid>,
) -> anyhow::Result<()> {
    let (consumer, handler) = pool(config, name)?;
    let report = dead_letters::replay(db, &consumer, handler.as_ref(), event_id).await?;
    for (topic, partition, offset, error) in &report.failed {
        println!("failed again: {topic}/{partition}@{offset}: {error}");
    }
    println!(
        "dlq {name}: {} replayed, {} already applied, {} failed",
        report.applied,
        report.already_applied,
        report.failed.len()
    );
    if !report.failed.is_empty() {
        bail!("{} dead letters failed again", report.failed.len());
    }
    Ok(())
}
