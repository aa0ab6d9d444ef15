//! The subscriber pools a node runs (`pools.run`), started on the partitions it owns.

use crate::config::{Config, PoolKind};
use kafka_journal::consumer::{
    spawn_consumer, spawn_consumers, Assignment, ConsumerHandle, ConsumerSink, ConsumerSpec,
    Supervision,
};
use kafka_journal::JournalProducer;
use payrail_actors::fallback::SinkPool;
use payrail_pools::analytics::{AnalyticsProjector, ANALYTICS_GROUP};
use payrail_pools::ledger::{LedgerProjector, LEDGER_GROUP};
use payrail_pools::notification::NotificationPool;
use payrail_pools::settlement::{SettlementProjector, SETTLEMENT_GROUP};
use payrail_supervisor::PartitionOwnership;
use sqlx::PgPool;
use std::sync::Arc;
use tracing::info;

/// The pools a node started.
pub(super) struct StartedPools {
    /// Analytics, ledger and settlement.
    pub pools: Vec<ConsumerHandle>,
    pub notifications: Option<NotificationPool>,
    /// Every pool, as the fallback's sink applies spooled events to it.
    pub sink_pools: Vec<SinkPool>,
}

/// Starts the pools of `pools.run` on the partitions `ownership` holds now.
pub(super) async fn start(
    config: &Config,
    topic: &str,
    ownership: &PartitionOwnership,
    supervision: &Supervision,
    pool: &PgPool,
    producer: &JournalProducer,
) -> anyhow::Result<StartedPools> {
    let journal = &config.journal;
    // The subscriber pools this node runs (`pools.run`). Each reads the partitions this node
    // owns, assigned by hand from PostgreSQL offsets rather than through a broker consumer
    // group: tansu's group coordinator left pools without partitions for minutes after a
    // restart (see docs/DECISIONS.md, "Subscriber pools").
    let mut sinks = Vec::new();
    for (kind, group, handler) in [
        (
            PoolKind::Analytics,
            ANALYTICS_GROUP,
            Arc::new(AnalyticsProjector) as Arc<dyn kafka_journal::consumer::PartitionHandler>,
        ),
        (PoolKind::Ledger, LEDGER_GROUP, Arc::new(LedgerProjector)),
        (
            PoolKind::Settlement,
            SETTLEMENT_GROUP,
            Arc::new(SettlementProjector),
        ),
    ] {
        if !config.pools.runs(kind) {
            info!(pool = group, "pool not run on this node (pools.run)");
            continue;
        }
        let handler = if config.actors.fault_injection {
            let name = group.strip_prefix("payrail.").unwrap_or(group);
            let handler = payrail_pools::fault::PanickingPool::wrap(name, handler);
            if config.actors.fault_slow_pool == name {
                payrail_pools::fault::SlowPool::wrap(
                    name,
                    config.actors.fault_slow_pool_delay_ms,
                    handler,
                )
            } else {
                handler
            }
        } else {
            handler
        };
        sinks.push(ConsumerSink {
            spec: ConsumerSpec {
                name: journal.group(group),
                topic: topic.to_string(),
                assignment: Assignment::Manual(ownership.owned()),
                dead_letter_topic: Some(journal.dead_letter_topic(group)),
            },
            handler,
        });
    }
    if config.pools.runs(PoolKind::Notification) {
        sinks.push(payrail_pools::notification::consumer_sink(
            journal,
            &config.notification,
            topic,
            ownership.owned(),
        ));
    } else {
        info!("notification pool not run on this node (pools.run)");
    }
    let notification_name = journal.group(payrail_pools::notification::NOTIFICATION_GROUP);
    let handlers: Vec<_> = sinks.iter().map(|sink| sink.handler.clone()).collect();
    // One fetch per partition feeds every pool (`pools.shared_fetch`), or each its own.
    let mut consumers = Vec::new();
    if config.pools.shared_fetch && !sinks.is_empty() {
        consumers = spawn_consumers(journal, supervision.clone(), sinks, pool.clone()).await?;
    } else {
        for sink in sinks {
            consumers.push(
                spawn_consumer(
                    journal,
                    supervision.clone(),
                    sink.spec,
                    pool.clone(),
                    sink.handler,
                )
                .await?,
            );
        }
    }
    let mut pools = Vec::new();
    let mut sink_pools = Vec::new();
    let mut notifications = None;
    for (consumer, handler) in consumers.into_iter().zip(handlers) {
        sink_pools.push(SinkPool {
            consumer: consumer.spec.name.clone(),
            handler: handler.clone(),
            progress: consumer.progress.clone(),
        });
        if consumer.spec.name == notification_name {
            notifications = Some(
                payrail_pools::notification::start(
                    journal,
                    supervision.clone(),
                    &config.notification,
                    consumer,
                    handler,
                    pool.clone(),
                    producer.clone(),
                )
                .await?,
            );
        } else {
            pools.push(consumer);
        }
    }

    Ok(StartedPools {
        pools,
        notifications,
        sink_pools,
    })
}
