//! Start-up and shutdown of a node: database, topics, snapshot projector, actors, pools, HTTP.

use crate::config::Config;
use anyhow::Context;
use kafka_journal::consumer::{spawn_consumer, Assignment, ConsumerSpec, Supervision};
use kafka_journal::spool::Spool;
use kafka_journal::JournalProducer;
use payrail_actors::fallback::{JournalFallback, PoolSink};
use payrail_actors::merchants::MerchantRegistry;
use payrail_actors::snapshots::{SnapshotProjector, SNAPSHOT_CONSUMER};
use payrail_actors::{NodeHandle, Runtime, RuntimeParts};
use payrail_pools::settlement::{SettlementService, SETTLEMENT_EVENTS};
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

mod pools;
mod startup;

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
        payrail_http::access::disable_request_metrics();
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
        startup::ensure_topics(&config, &topic).await?;
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
                match startup::ensure_topics(&config, &topic).await {
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
        Some(startup::lease_keeper(&config).await?)
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
        None => startup::single_node_ownership(&config, &pool).await?,
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
            Arc::new(SnapshotProjector),
            config.spool.clone(),
            journal.partitions,
        ),
        ownership: ownership.clone(),
    });
    let node = NodeHandle::start(runtime.clone(), ownership.clone()).await?;

    let started = Instant::now();
    startup::catch_up_partitions(
        &config,
        &runtime,
        &snapshots.progress,
        cluster.is_none(),
        reachable,
        started,
    )
    .await?;
    let replayer = payrail_actors::fallback::spawn_replayer(runtime.journal.clone());
    node.mark_ready();
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "partitions ready"
    );

    let started_pools =
        pools::start(&config, &topic, &ownership, &supervision, &pool, &producer).await?;
    for sink_pool in &started_pools.sink_pools {
        runtime.register_pool(sink_pool.progress.clone());
    }
    let pools::StartedPools {
        pools,
        notifications,
        sink_pools,
    } = started_pools;
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
        runtime.journal.clone(),
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
