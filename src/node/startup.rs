//! A node's start-up steps before it serves: the topics, the partitions' ownership and
//! epochs, and the catch-up of the snapshots (or the resumption of a fallback).

use super::PAYMENT_EVENTS;
use crate::config::Config;
use anyhow::{bail, Context};
use kafka_journal::admin::{self, TopicSpec};
use kafka_journal::consumer::ConsumerProgress;
use kafka_journal::fence::SINGLE_NODE_ID;
use payrail_actors::Runtime;
use payrail_pools::settlement::SETTLEMENT_EVENTS;
use payrail_supervisor::PartitionOwnership;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tracing::info;

/// Attempts at creating the topics at start-up.
const TOPIC_CREATION_ATTEMPTS: u32 = 5;

/// A single node owns every partition, at the epochs it raises now.
pub(super) async fn single_node_ownership(
    config: &Config,
    pool: &PgPool,
) -> anyhow::Result<PartitionOwnership> {
    let journal = &config.journal;
    // A single node raises every partition's epoch at each start and journals a
    // marker before it learns the journal's end (below, or in the replayer when the
    // journal is down): a write its previous incarnation left in doubt on a hung
    // broker then lands behind the marker, fenced, instead of beside the retried
    // command decided again after the rebuild (issue 22).
    let ownership = PartitionOwnership::all(journal.partitions);
    let store = payrail_cluster::LeaseStore::new(pool.clone(), Duration::from_secs(5));
    let epochs = store
        .raise_single_node_epochs(journal.partitions, SINGLE_NODE_ID)
        .await
        .map_err(|e| anyhow::anyhow!("raising the partitions' epochs: {e}"))?;
    anyhow::ensure!(
        epochs.len() == journal.partitions as usize,
        "raising the partitions' epochs returned {} rows for {} partitions",
        epochs.len(),
        journal.partitions
    );
    for (partition, epoch) in epochs {
        ownership.grant(partition, epoch);
    }
    Ok(ownership)
}

/// Brings each owned partition to where the node may serve it: resumed in fallback, or
/// its snapshots caught up to the journal's end (within `actors.startup_catch_up_timeout_ms`
/// from `started`).
pub(super) async fn catch_up_partitions(
    config: &Config,
    runtime: &Runtime,
    snapshots: &ConsumerProgress,
    single_node: bool,
    reachable: bool,
    started: Instant,
) -> anyhow::Result<()> {
    let journal = &config.journal;
    let topic = journal.topic(PAYMENT_EVENTS);
    let ownership = &runtime.ownership;
    // Rebuild: the snapshot projector must have applied the whole journal tail before this
    // node serves its partitions, so every payment is rebuilt with its latest state. A
    // partition left in fallback is complete already (its snapshots were written with its
    // spool); one whose journal is unreachable now waits for it (the replayer retries).
    let in_fallback: std::collections::HashMap<i32, Option<i64>> = runtime
        .fallback
        .spool()
        .partitions_in_fallback()
        .await
        .context("reading the fallback spool")?
        .into_iter()
        .collect();
    let catch_up = Duration::from_millis(config.actors.startup_catch_up_timeout_ms);
    for partition in ownership.owned() {
        if let Some(high_at_start) = in_fallback.get(&partition) {
            if single_node && runtime.fallback.is_enabled() {
                // The start marker goes through the spool, after the previous incarnation's
                // rows: the replay journals them in that order.
                resume_single_node_in_fallback(runtime, partition).await?;
            } else {
                runtime.fallback.resume_active(partition);
            }
            if let Some(high) = high_at_start.filter(|h| *h > 0) {
                runtime.record_produced(partition, high - 1);
            }
            info!(partition, "partition resumes in journal fallback");
        }
        if !reachable {
            continue;
        }
        if single_node && !in_fallback.contains_key(&partition) {
            if let Err(error) =
                payrail_actors::fallback::journal_start_marker(runtime, partition).await
            {
                // The replayer journals it, then learns the end (as after a start in an outage).
                tracing::warn!(partition, %error, "the start marker was not journaled; the partition waits for the journal");
                continue;
            }
        }
        let (_, high) = admin::watermarks(journal, &topic, partition).await?;
        if in_fallback.contains_key(&partition) {
            if high > 0 {
                runtime.record_produced(partition, high - 1);
            }
            continue;
        }
        let remaining = catch_up.saturating_sub(started.elapsed());
        if !snapshots.wait_for(partition, high, remaining).await {
            bail!("partition {partition}: snapshots did not catch up to offset {high} within {catch_up:?}");
        }
        if high > 0 {
            runtime.record_produced(partition, high - 1);
        }
        runtime.fallback.mark_end_known(partition, high);
    }
    Ok(())
}

/// A single node's restart while `partition` is in fallback: its start marker is spooled
/// after the previous incarnation's rows (the replay journals them in that order), and the
/// partition serves from its snapshots, complete in fallback.
async fn resume_single_node_in_fallback(runtime: &Runtime, partition: i32) -> anyhow::Result<()> {
    let epoch = runtime
        .ownership
        .epoch(partition)
        .context("a single node owns every partition")?;
    let marker = kafka_journal::fence::owner_changed_marker(
        &runtime.producer,
        &runtime.topic,
        partition,
        epoch,
        SINGLE_NODE_ID,
    )?;
    let spooled = runtime
        .fallback
        .take_over(partition, epoch, &marker, &runtime.pool)
        .await
        .with_context(|| format!("partition {partition}: spooling the start marker"))?;
    anyhow::ensure!(
        spooled.is_some(),
        "partition {partition}: its fallback ended while the node started"
    );
    Ok(())
}

/// The lease keeper of a cluster node, on a small PostgreSQL pool of its own: renewals must
/// not queue behind the node's command traffic, or a busy node would lose its leases.
pub(super) async fn lease_keeper(config: &Config) -> anyhow::Result<payrail_cluster::LeaseKeeper> {
    let cluster = &config.cluster;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(cluster.lease_ms / 6))
        .connect(&config.database.url)
        .await
        .context("connecting the lease keeper to PostgreSQL (database.url)")?;
    let advertise_url = if cluster.advertise_url.is_empty() {
        format!("http://{}", config.http.bind)
    } else {
        cluster.advertise_url.clone()
    };
    let options = payrail_cluster::LeaseOptions {
        node_id: cluster.node_id.clone(),
        advertise_url,
        lease_ms: cluster.lease_ms,
        safety_margin_ms: (cluster.safety_margin_ms > 0).then_some(cluster.safety_margin_ms),
        partitions: config.journal.partitions,
        drain_timeout_ms: cluster.drain_timeout_ms,
        ..Default::default()
    };
    payrail_cluster::LeaseKeeper::new(pool, options).context("cluster options")
}

/// Creates the journal's topics when missing (bounded retries) and checks the partition
/// count of `topic` against the config.
pub(super) async fn ensure_topics(config: &Config, topic: &str) -> anyhow::Result<()> {
    let journal = &config.journal;
    let topic = topic.to_string();
    let topics = [
        TopicSpec {
            name: topic.clone(),
            partitions: journal.partitions,
        },
        TopicSpec {
            name: journal.topic(SETTLEMENT_EVENTS),
            partitions: journal.partitions,
        },
    ];
    // A busy broker may time out an admin request; try a bounded number of times.
    let mut attempt = 0;
    let created = loop {
        attempt += 1;
        match admin::ensure_topics(journal, &topics).await {
            Ok(created) => break created,
            Err(error) if attempt < TOPIC_CREATION_ATTEMPTS => {
                tracing::warn!(%error, attempt, "creating topics failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error).context("creating topics (journal.brokers)"),
        }
    };
    if !created.is_empty() {
        info!(?created, "created topics");
    }
    match admin::partition_count(journal, &topic).await? {
        Some(n) if n as u32 == journal.partitions => {}
        Some(n) => bail!(
            "journal.partitions: topic {topic} has {n} partitions but the config says {}; they must agree",
            journal.partitions
        ),
        None => bail!("topic {topic} is not visible after creation"),
    }
    Ok(())
}
