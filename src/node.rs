//! Start-up and shutdown of a node: database, topics, snapshot projector, actors, pools, HTTP.

use crate::config::{Config, PoolKind};
use anyhow::{bail, Context};
use kafka_journal::admin::{self, TopicSpec};
use kafka_journal::consumer::{
    spawn_consumer, spawn_consumers, Assignment, ConsumerSink, ConsumerSpec, Supervision,
};
use kafka_journal::fence::SINGLE_NODE_ID;
use kafka_journal::spool::Spool;
use kafka_journal::JournalProducer;
use payrail_actors::fallback::{JournalFallback, PoolSink, SinkPool};
use payrail_actors::merchants::MerchantRegistry;
use payrail_actors::snapshots::{SnapshotProjector, SNAPSHOT_CONSUMER};
use payrail_actors::{NodeHandle, Runtime, RuntimeParts};
use payrail_pools::analytics::{AnalyticsProjector, ANALYTICS_GROUP};
use payrail_pools::ledger::{LedgerProjector, LEDGER_GROUP};
use payrail_pools::settlement::{
    SettlementProjector, SettlementService, SETTLEMENT_EVENTS, SETTLEMENT_GROUP,
};
use payrail_supervisor::{Escalations, GiveUpPolicy, JournalHealth, PartitionOwnership};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

pub const PAYMENT_EVENTS: &str = "payment.events";

/// Exit status when a supervisor gave up and `supervisor.on_give_up = "exit"` (EX_SOFTWARE).
const EXIT_GAVE_UP: i32 = 70;

/// Attempts at creating the topics at start-up.
const TOPIC_CREATION_ATTEMPTS: u32 = 5;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let ping_idle_after = Duration::from_millis(config.database.ping_idle_after_ms);
    PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(Duration::from_millis(config.database.acquire_timeout_ms))
        // sqlx pings every connection it hands out by default: a round trip before every
        // query. Only a connection that sat idle (and may have been closed under it, e.g.
        // by a PostgreSQL restart) is pinged; a failing one is replaced, as before.
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= ping_idle_after {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect(&config.database.url)
        .await
        .context("connecting to PostgreSQL (database.url)")
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(())
}

pub async fn migrate_only(config: &Config) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let journal = &config.journal;
    info!(brokers = %journal.brokers, partitions = journal.partitions, namespace = %journal.namespace, bind = %config.http.bind, "starting node");
    // Before anything records a metric: the process-wide Prometheus recorder.
    if config.metrics.enabled {
        payrail_http::metrics::install().map_err(|e| anyhow::anyhow!(e))?;
    } else {
        payrail_http::metrics::disable_request_metrics();
    }
    let pool = connect(&config).await?;
    migrate(&pool).await?;

    let topic = journal.topic(PAYMENT_EVENTS);
    let health = JournalHealth::new(
        config.supervisor.breaker_failure_threshold,
        Duration::from_millis(config.supervisor.breaker_cool_down_ms),
        // A probe is an append: it reports within the produce timeout (+ the guard).
        Duration::from_millis(journal.produce_timeout_ms) + Duration::from_secs(3),
    );
    let producer = JournalProducer::new(
        journal,
        Arc::new(kafka_journal::producer::BreakerSignals(health.clone())),
    )?;
    // Not reachable as soon as librdkafka reports every broker down (the breaker trips),
    // rather than after the whole admin timeout: a node restarted during an outage serves
    // from its spool within seconds (issue 22).
    let reachable = {
        let tripped = async {
            while health.state() == payrail_supervisor::BreakerState::Closed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            reachable = producer.is_reachable(Duration::from_millis(journal.admin_timeout_ms)) => reachable,
            () = tripped => false,
        }
    };
    if reachable {
        ensure_topics(&config, &topic).await?;
    } else {
        // A node restarted during an outage serves the partitions it left in fallback
        // (their spool and snapshots are complete); the others wait for the journal.
        tracing::warn!(brokers = %journal.brokers, "the journal is unreachable at start: serving in fallback where the spool allows it");
        health.trip();
        // The topics are made (and checked) once the journal answers; until then the
        // replay and the pools wait like any other journal client.
        let config = config.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                match ensure_topics(&config, &topic).await {
                    Ok(()) => {
                        info!("the journal answers: topics checked");
                        return;
                    }
                    Err(error) => tracing::debug!(%error, "topics not checked yet"),
                }
            }
        });
    }

    // Every supervisor of this node reports its give-ups here.
    let escalations = Escalations::new();
    if config.supervisor.on_give_up == GiveUpPolicy::Exit {
        let escalations = escalations.clone();
        tokio::spawn(async move {
            let first = escalations.first().await;
            tracing::error!(supervisor = %first.supervisor, child = %first.child, reason = %first.reason, "a supervisor gave up; exiting (supervisor.on_give_up = \"exit\")");
            std::process::exit(EXIT_GAVE_UP);
        });
    }
    // A cluster node owns nothing until its leases are taken over (see `cluster_node`);
    // a single node owns every partition, at the epochs it raises now.
    let cluster = if config.cluster.is_clustered() {
        Some(lease_keeper(&config).await?)
    } else {
        None
    };
    let ownership = match &cluster {
        Some(keeper) => {
            let leases = keeper.leases();
            PartitionOwnership::leased(
                journal.partitions,
                Arc::new(move |partition| leases.valid(partition)),
            )
        }
        None => {
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
            ownership
        }
    };
    let supervision = Supervision {
        restart: config.supervisor.restart,
        escalations: escalations.clone(),
    };

    let snapshots = spawn_consumer(
        journal,
        supervision.clone(),
        ConsumerSpec {
            name: journal.group(SNAPSHOT_CONSUMER),
            topic: topic.clone(),
            assignment: Assignment::Manual(ownership.owned()),
            dead_letter_topic: None,
        },
        pool.clone(),
        Arc::new(SnapshotProjector),
    )
    .await?;

    let psp = payrail_actors::psp::PspClient::new(&config.psp)
        .map_err(|e| anyhow::anyhow!("psp client: {e}"))?;
    let runtime = Runtime::new(RuntimeParts {
        producer: producer.clone(),
        restart: config.supervisor.restart,
        escalations: escalations.clone(),
        pool: pool.clone(),
        topic: topic.clone(),
        partitions: journal.partitions,
        options: config.actors.clone(),
        health,
        snapshots: snapshots.progress.clone(),
        psp,
        fallback: JournalFallback::new(
            // The spool itself needs a bound; 0 (fallback off) is enforced by the fallback.
            Spool::new(pool.clone(), topic.clone(), config.spool.max_rows.max(1)),
            journal.group(SNAPSHOT_CONSUMER),
            config.spool.clone(),
            journal.partitions,
        ),
        ownership: ownership.clone(),
    });
    let node = NodeHandle::start(runtime.clone(), ownership.clone()).await?;

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
    let started = Instant::now();
    let catch_up = Duration::from_millis(config.actors.startup_catch_up_timeout_ms);
    for partition in ownership.owned() {
        if let Some(high_at_start) = in_fallback.get(&partition) {
            if cluster.is_none() && runtime.fallback.is_enabled() {
                // The start marker goes through the spool, after the previous incarnation's
                // rows: the replay journals them in that order.
                resume_single_node_in_fallback(&runtime, partition).await?;
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
        if cluster.is_none() && !in_fallback.contains_key(&partition) {
            if let Err(error) =
                payrail_actors::fallback::journal_start_marker(&runtime, partition).await
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
        if !snapshots
            .progress
            .wait_for(partition, high, remaining)
            .await
        {
            bail!("partition {partition}: snapshots did not catch up to offset {high} within {catch_up:?}");
        }
        if high > 0 {
            runtime.record_produced(partition, high - 1);
        }
        runtime.fallback.mark_end_known(partition, high);
    }
    let replayer = payrail_actors::fallback::spawn_replayer(runtime.clone());
    node.mark_ready();
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "partitions ready"
    );

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
                topic: topic.clone(),
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
            &topic,
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

    for sink_pool in &sink_pools {
        runtime.register_pool(sink_pool.progress.clone());
    }
    let pool_sink = PoolSink::new(pool.clone(), topic.clone(), journal.partitions, sink_pools);

    let sweeper =
        payrail_actors::sweeper::spawn_sweeper(node.clone(), pool.clone(), config.psp.clone());
    let settlements = SettlementService {
        pool: pool.clone(),
        producer: producer.clone(),
        topic: journal.topic(SETTLEMENT_EVENTS),
        partitions: journal.partitions,
    };
    let forwarder = match &cluster {
        Some(keeper) => Some(
            payrail_http::forward::Forwarder::new(
                Arc::new(crate::cluster_node::LeaseDirectory::new(
                    keeper.store().clone(),
                    config.cluster.node_id.clone(),
                    Duration::from_millis(config.cluster.owner_cache_ms),
                    config.cluster.lease_ms,
                )),
                Duration::from_millis(config.cluster.forward_timeout_ms),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        ),
        None => None,
    };
    let leases = cluster.as_ref().map(|keeper| keeper.leases());
    if let Some(keeper) = cluster {
        let mut followed: Vec<_> = pools.clone();
        followed.extend(notifications.iter().map(|n| n.consumer.clone()));
        crate::cluster_node::Membership {
            leases: keeper.leases(),
            node: node.clone(),
            runtime: runtime.clone(),
            snapshots: snapshots.clone(),
            pools: followed,
            options: config.cluster.clone(),
        }
        .spawn();
        keeper.spawn();
        info!(node_id = %config.cluster.node_id, "cluster member: taking partition leases");
    }
    let mut monitored = vec![snapshots.clone()];
    monitored.extend(notifications.iter().map(|n| n.consumer.clone()));
    monitored.extend(pools.iter().cloned());
    let consumers = kafka_journal::lag::ConsumerMonitor::new(journal, monitored);
    let state = payrail_http::AppState {
        consumers,
        settlements,
        psp_webhook_secret: config.psp.webhook_secret.clone(),
        psp_webhook_tolerance_s: config.psp.webhook_tolerance_s,
        node: node.clone(),
        merchants: MerchantRegistry::with_limits(
            pool.clone(),
            payrail_actors::merchants::AuthLimits {
                failed_per_minute: config.http.failed_auth_per_minute,
            },
        ),
        admin_token: config.http.admin_token.clone(),
        pool: pool.clone(),
        cluster_secret: config.cluster.secret.clone(),
        pool_sink,
        forwarder,
    };
    let addr: SocketAddr = config.http.bind.parse().context("http.bind")?;
    let routes = payrail_http::routes(state, config.http.max_body_bytes);
    // A cluster node hands its partitions over before it stops answering, so the requests
    // of its merchants move to the new owners instead of failing.
    let handover = {
        let leases = leases.clone();
        async move {
            shutdown_signal().await;
            if let Some(leases) = leases {
                info!("handing partitions over");
                if let Err(error) = leases.shutdown().await {
                    tracing::warn!(%error, "handover incomplete; the leases left expire by themselves");
                }
            }
        }
    };
    let (bound, server) = payrail_http::request_id::serve(
        routes,
        addr,
        payrail_http::limits::ServerLimits::from_options(&config.http),
        handover,
    )
    .map_err(|e| anyhow::anyhow!("binding http.bind {addr}: {e}"))?;
    // Spooled events reach the pools over HTTP during an outage: this node's own
    // endpoint unless `fallback.targets` names the nodes that run pools.
    let targets = if config.fallback.targets.is_empty() {
        vec![format!("http://{bound}")]
    } else {
        config.fallback.targets.clone()
    };
    let delivery = payrail_actors::fallback::spawn_delivery(
        runtime.clone(),
        targets,
        config.cluster.secret.clone(),
        config.fallback.clone(),
    );
    info!(url = %format!("http://{bound}"), "payrail node listening");
    server.await;
    info!("shutting down");
    sweeper.abort();
    replayer.abort();
    delivery.abort();
    node.stop();
    for consumer in &pools {
        consumer.stop();
    }
    if let Some(notifications) = &notifications {
        notifications.stop();
    }
    snapshots.stop();
    producer.flush(Duration::from_secs(5));
    Ok(())
}

/// The lease keeper of a cluster node, on a small PostgreSQL pool of its own: renewals must
/// not queue behind the node's command traffic, or a busy node would lose its leases.
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

async fn lease_keeper(config: &Config) -> anyhow::Result<payrail_cluster::LeaseKeeper> {
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
async fn ensure_topics(config: &Config, topic: &str) -> anyhow::Result<()> {
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

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
