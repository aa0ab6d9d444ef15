//! A node in a cluster (`cluster.node_id` set): it serves the partitions it holds a lease
//! on, follows the lease keeper as partitions come and go, and tells the HTTP edge where
//! every other partition is served.
//!
//! Taking a partition over (lease acquired at epoch `e`):
//! 1. the journal consumers (snapshot projector, pools) start reading it from their stored
//!    offsets;
//! 2. a spool the previous owner left (it died during a journal outage) is appended to the
//!    journal first, in spool order: those commands were acknowledged;
//! 3. the `partition.owner_changed {e}` marker is appended; from here on every reader
//!    ignores records of a lower epoch, so a zombie's late append takes effect nowhere;
//! 4. the snapshot projector catches up to the marker (the journal's end as far as this
//!    owner is concerned), so every payment rebuilds with its latest state;
//! 5. the partition's actors start and the node answers for it.
//!
//! While the journal is unavailable (the breaker is not closed) and the previous owner left
//! the partition in fallback, steps 2–4 happen in the spool instead (issue 22, defect 6):
//! the marker is spooled after the previous owner's rows, fenced by the lease, and the
//! partition is served from its snapshots, complete in fallback; the replayer appends the
//! spool — the previous owner's records, the marker, the new owner's — when the journal
//! returns. A partition that was not in fallback waits for the journal: its end is unknown.
//!
//! Losing one (handed over, expired, or shutdown): commands for it are refused at once
//! (503 with `Retry-After`, or forwarded), those in flight get `cluster.drain_timeout_ms`,
//! its actors stop, the consumers stop reading it, and the keeper may release it.

use crate::config::ClusterOptions;
use async_trait::async_trait;
use kafka_journal::consumer::ConsumerHandle;
use kafka_journal::fence::owner_changed_marker;
use payrail_actors::{NodeHandle, Runtime};
use payrail_cluster::{LeaseStore, Leases};
use payrail_http::forward::{Owner, OwnerDirectory};
use payrail_supervisor::BreakerState;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn, Instrument};

/// Pause between attempts of a takeover step that failed (journal or database away).
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What follows the leases: the node's partitions and the consumers that read them.
pub struct Membership {
    pub leases: Leases,
    pub node: NodeHandle,
    pub runtime: Arc<Runtime>,
    /// The snapshot projector first: a new owner waits for it.
    pub snapshots: ConsumerHandle,
    pub pools: Vec<ConsumerHandle>,
    pub options: ClusterOptions,
}

/// How a takeover ended.
enum Taken {
    /// The marker was journaled at this offset and the snapshots caught up to it.
    Journal { marker: i64 },
    /// The journal was unavailable: the marker was spooled after the previous owner's
    /// fallback episode, which accounts for the journal below `journal_end`.
    Spool { journal_end: i64 },
}

/// A finished takeover, or why it must be tried again.
type Outcome = (i32, u64, Result<Taken, String>);

impl Membership {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let span = tracing::info_span!("membership", node_id = %self.leases.node_id());
        tokio::spawn(self.run().instrument(span))
    }

    async fn run(self) {
        let mut feed = self.leases.subscribe();
        let mut serving: BTreeMap<i32, u64> = BTreeMap::new();
        let mut taking: HashMap<i32, (u64, AbortHandle)> = HashMap::new();
        let mut takeovers: JoinSet<Outcome> = JoinSet::new();
        let drain = Duration::from_millis(self.options.drain_timeout_ms);
        loop {
            let held = feed.borrow_and_update().clone();
            // Lost (or re-acquired under another epoch): stop serving, then let go.
            let lost: Vec<i32> = serving
                .iter()
                .filter(|(p, e)| held.get(p) != Some(e))
                .map(|(p, _)| *p)
                .collect();
            // Every lost partition refuses new commands at once, before any is drained:
            // draining them one after another left the later ones taking commands (zombie
            // writes) for the drains of those before (issue 22, defect 3).
            for partition in &lost {
                serving.remove(partition);
                self.node.ownership().revoke(*partition);
            }
            // Then each is drained: its commands in flight may finish (their
            // acknowledgement still checks the lease).
            for partition in lost {
                let left = self.node.stop_partition(partition, drain).await;
                info!(
                    partition,
                    commands_left = left,
                    "partition no longer served here"
                );
                self.leases.drained(partition);
            }
            taking.retain(|partition, (epoch, task)| {
                let keep = held.get(partition) == Some(epoch);
                if !keep {
                    task.abort();
                    self.leases.drained(*partition);
                }
                keep
            });
            let read = held.keys().copied().collect::<Vec<_>>();
            self.snapshots.assign(read.iter().copied());
            for pool in &self.pools {
                pool.assign(read.iter().copied());
            }
            for (&partition, &epoch) in &held {
                if serving.contains_key(&partition) || taking.contains_key(&partition) {
                    continue;
                }
                let task = takeovers.spawn(self.take_over(partition, epoch));
                taking.insert(partition, (epoch, task));
            }

            tokio::select! {
                changed = feed.changed() => {
                    if changed.is_err() {
                        // The keeper is gone: nothing is valid any more.
                        for (partition, _) in std::mem::take(&mut serving) {
                            self.node.stop_partition(partition, drain).await;
                        }
                        return;
                    }
                }
                Some(done) = takeovers.join_next(), if !takeovers.is_empty() => {
                    let (partition, epoch, outcome) = match done {
                        Ok(done) => done,
                        Err(error) => {
                            // Aborted (the lease moved; already forgotten) or panicked: a
                            // panicked takeover is forgotten too, so the next round retries.
                            let id = error.id();
                            taking.retain(|_, (_, task)| task.id() != id);
                            if error.is_panic() {
                                warn!(%error, "a takeover panicked; trying again");
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                            continue;
                        }
                    };
                    if taking.get(&partition).map(|(e, _)| *e) != Some(epoch) {
                        continue;
                    }
                    taking.remove(&partition);
                    match outcome {
                        Ok(taken) if self.leases.valid(partition) == Some(epoch) => {
                            match taken {
                                Taken::Journal { marker } => {
                                    self.runtime.record_produced(partition, marker);
                                    self.runtime.fallback.mark_end_known(partition, marker + 1);
                                }
                                // In fallback: the snapshots are complete, the spool takes
                                // the writes, the replayer appends it when the journal is back.
                                Taken::Spool { journal_end } if journal_end > 0 => {
                                    self.runtime.record_produced(partition, journal_end - 1);
                                }
                                Taken::Spool { .. } => {}
                            }
                            self.node.start_partition(partition, epoch);
                            serving.insert(partition, epoch);
                            info!(partition, epoch, "partition taken over; serving");
                        }
                        Ok(_) => warn!(partition, epoch, "lease lapsed during the takeover"),
                        Err(error) => {
                            warn!(partition, epoch, %error, "takeover failed; trying again");
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }
            }
        }
    }

    /// Steps 2–4 of a takeover (see the module docs), through the journal or — while it
    /// is unavailable and the previous owner left the partition in fallback — through the
    /// spool.
    fn take_over(
        &self,
        partition: i32,
        epoch: u64,
    ) -> impl std::future::Future<Output = Outcome> + Send + 'static {
        let runtime = self.runtime.clone();
        let snapshots = self.snapshots.progress.clone();
        let node_id = self.leases.node_id().to_string();
        let catch_up = Duration::from_millis(self.options.catch_up_timeout_ms);
        let span = tracing::info_span!("takeover", partition, epoch);
        async move {
            let started = Instant::now();
            let outcome = async {
                let offset = loop {
                    // A fresh marker (event id) per attempt: one whose spool write's outcome
                    // was unknown may be there already, and the spool refuses a repeated id.
                    let marker = owner_changed_marker(
                        &runtime.producer,
                        &runtime.topic,
                        partition,
                        epoch,
                        &node_id,
                    )
                    .map_err(|e| e.to_string())?;
                    if runtime.fallback.is_enabled()
                        && runtime.health.state() != BreakerState::Closed
                    {
                        match runtime
                            .fallback
                            .take_over(partition, epoch, &marker, &runtime.pool)
                            .await
                        {
                            Ok(Some(journal_end)) => {
                                info!(
                                    journal_end,
                                    elapsed_ms = started.elapsed().as_millis() as u64,
                                    "taken over through the spool (journal unavailable)"
                                );
                                return Ok(Taken::Spool { journal_end });
                            }
                            // Not in fallback: the journal's end is needed.
                            Ok(None) => {}
                            Err(error) => warn!(%error, "taking over through the spool failed"),
                        }
                    }
                    if payrail_actors::fallback::replay_left_spool(&runtime, partition, epoch).await
                    {
                        match runtime.producer.append(std::slice::from_ref(&marker)).await {
                            Ok(receipts) => match receipts.first() {
                                Some(receipt) => break receipt.offset,
                                None => return Err("the marker append returned no receipt".into()),
                            },
                            Err(error) => {
                                warn!(%error, "appending the owner-change marker failed; retrying");
                            }
                        }
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                };
                if !snapshots.wait_for(partition, offset + 1, catch_up).await {
                    return Err(format!(
                        "snapshots did not reach the marker at offset {offset} within {catch_up:?}"
                    ));
                }
                info!(
                    marker_offset = offset,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "caught up to the owner-change marker"
                );
                Ok(Taken::Journal { marker: offset })
            }
            .await;
            (partition, epoch, outcome)
        }
        .instrument(span)
    }
}

/// Partition owners from `partition_leases`, cached for `cluster.owner_cache_ms`.
pub struct LeaseDirectory {
    store: LeaseStore,
    node_id: String,
    ttl: Duration,
    lease_ms: u64,
    cache: Mutex<Option<(Instant, HashMap<i32, Owner>)>>,
}

impl LeaseDirectory {
    pub fn new(store: LeaseStore, node_id: String, ttl: Duration, lease_ms: u64) -> Self {
        Self {
            store,
            node_id,
            ttl,
            lease_ms,
            cache: Mutex::new(None),
        }
    }

    fn cached(&self, partition: i32) -> Option<Option<Owner>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some((at, owners)) if at.elapsed() < self.ttl => Some(owners.get(&partition).cloned()),
            _ => None,
        }
    }
}

#[async_trait]
impl OwnerDirectory for LeaseDirectory {
    async fn owner(&self, partition: i32, refresh: bool) -> Option<Owner> {
        if !refresh {
            if let Some(owner) = self.cached(partition) {
                return owner;
            }
        }
        let rows = match self.store.table().await {
            Ok(rows) => rows,
            Err(error) => {
                warn!(%error, "reading the lease table for routing failed");
                return None;
            }
        };
        let owners: HashMap<i32, Owner> = rows
            .into_iter()
            .filter(|row| row.held)
            .filter_map(|row| {
                Some((
                    row.partition,
                    Owner {
                        node_id: row.owner_node_id?,
                        url: row.owner_url?,
                    },
                ))
            })
            .collect();
        let owner = owners.get(&partition).cloned();
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), owners));
        owner
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn status(&self) -> Result<serde_json::Value, String> {
        cluster_status(&self.store, self.lease_ms).await
    }
}

/// The lease table and the live nodes as JSON (admin endpoint and `payrail cluster status`).
pub async fn cluster_status(
    store: &LeaseStore,
    lease_ms: u64,
) -> Result<serde_json::Value, String> {
    let leases = store.table().await.map_err(|e| e.to_string())?;
    let nodes = store
        .live_nodes(lease_ms)
        .await
        .map_err(|e| e.to_string())?;
    let leases: Vec<serde_json::Value> = leases
        .into_iter()
        .map(|row| {
            serde_json::json!({
                "partition": row.partition,
                "owner": row.owner_node_id,
                "owner_url": row.owner_url,
                "epoch": row.epoch,
                "held": row.held,
                "expires_at": row.expires_at.map(|t| t.to_rfc3339()),
                "renewed_at": row.renewed_at.map(|t| t.to_rfc3339()),
            })
        })
        .collect();
    let nodes: Vec<serde_json::Value> = nodes
        .into_iter()
        .map(|node| {
            serde_json::json!({
                "node_id": node.node_id,
                "url": node.url,
                "heartbeat_at": node.heartbeat_at.to_rfc3339(),
            })
        })
        .collect();
    Ok(serde_json::json!({"leases": leases, "nodes": nodes}))
}

/// `payrail cluster status`: the lease table and live nodes from PostgreSQL, and what each
/// live node reports serving and its consumers' lag (`GET /v1/admin/cluster`).
pub async fn print_status(
    config: &crate::config::Config,
    pool: sqlx::PgPool,
    json: bool,
) -> anyhow::Result<()> {
    let store = LeaseStore::new(pool, Duration::from_secs(5));
    let mut status = cluster_status(&store, config.cluster.lease_ms)
        .await
        .map_err(|e| anyhow::anyhow!("reading the lease table: {e}"))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut reports = Vec::new();
    for node in status["nodes"].as_array().cloned().unwrap_or_default() {
        let url = node["url"].as_str().unwrap_or_default().to_string();
        let report = match client
            .get(format!("{}/v1/admin/cluster", url.trim_end_matches('/')))
            .bearer_auth(&config.http.admin_token)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => response
                .json::<serde_json::Value>()
                .await
                .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()})),
            Ok(response) => serde_json::json!({"error": format!("HTTP {}", response.status())}),
            Err(error) => serde_json::json!({"error": error.to_string()}),
        };
        reports.push(serde_json::json!({"node_id": node["node_id"], "url": url, "report": report}));
    }
    status["reports"] = serde_json::Value::Array(reports);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<28} {:<28} {:>8}",
        "NODE", "URL", "SERVING (partition:epoch)", "LAG"
    );
    for entry in status["reports"].as_array().cloned().unwrap_or_default() {
        let report = &entry["report"];
        let serving = match report["serving"].as_array() {
            Some(list) => list
                .iter()
                .map(|s| format!("{}:{}", s["partition"], s["epoch"]))
                .collect::<Vec<_>>()
                .join(" "),
            None => format!("unreachable ({})", report["error"].as_str().unwrap_or("?")),
        };
        let lag: i64 = report["consumers"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["lag_records"].as_i64()).sum())
            .unwrap_or(-1);
        println!(
            "{:<16} {:<28} {:<28} {:>8}",
            entry["node_id"].as_str().unwrap_or("?"),
            entry["url"].as_str().unwrap_or("?"),
            serving,
            lag
        );
    }
    println!();
    println!(
        "{:<10} {:<16} {:>6} {:<6} EXPIRES_AT",
        "PARTITION", "OWNER", "EPOCH", "HELD"
    );
    for lease in status["leases"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<10} {:<16} {:>6} {:<6} {}",
            lease["partition"].to_string(),
            lease["owner"].as_str().unwrap_or("-"),
            lease["epoch"].to_string(),
            lease["held"].to_string(),
            lease["expires_at"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}
