//! The sending side of fallback delivery: while partitions are in fallback, their spooled
//! events are POSTed to `POST /internal/v1/events` of every node that runs pools
//! (`fallback.targets`, default this node), so read models stay live during an outage.
//! Each target's position is kept per partition and fallback episode; a target answers
//! how far its pools have taken the batch, and what they held back is sent again.

use super::sink::{DeliveredBatch, DeliveredEvent, SinkOutcome};
use crate::runtime::Runtime;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Header carrying `cluster.secret` on internal requests.
pub const CLUSTER_SECRET_HEADER: &str = "x-payrail-cluster-secret";

/// `[fallback]` in config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryOptions {
    /// Base URLs of the nodes running pools (e.g. `http://10.0.0.7:8080`); empty: this
    /// node only.
    pub targets: Vec<String>,
    /// How often spooled events are delivered (ms).
    pub delivery_interval_ms: u64,
    /// Events per delivery request at most.
    pub delivery_batch: u32,
    /// Upper bound for one delivery request (ms).
    pub delivery_timeout_ms: u64,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            delivery_interval_ms: 200,
            delivery_batch: 500,
            delivery_timeout_ms: 5_000,
        }
    }
}

impl DeliveryOptions {
    pub fn validate(&self) -> Result<(), String> {
        for target in &self.targets {
            if !(target.starts_with("http://") || target.starts_with("https://")) {
                return Err(format!("fallback.targets: {target} is not an http(s) URL"));
            }
        }
        if !(10..=60_000).contains(&self.delivery_interval_ms) {
            return Err("fallback.delivery_interval_ms: allowed 10..=60000".into());
        }
        if !(1..=super::sink::MAX_EVENTS_PER_BATCH as u32).contains(&self.delivery_batch) {
            return Err(format!(
                "fallback.delivery_batch: allowed 1..={}",
                super::sink::MAX_EVENTS_PER_BATCH
            ));
        }
        if !(100..=60_000).contains(&self.delivery_timeout_ms) {
            return Err("fallback.delivery_timeout_ms: allowed 100..=60000".into());
        }
        Ok(())
    }
}

/// Starts delivery to `targets` (base URLs) with `secret`, under the node's restart policy.
pub fn spawn_delivery(
    runtime: Arc<Runtime>,
    partitions: Vec<i32>,
    targets: Vec<String>,
    secret: String,
    options: DeliveryOptions,
) -> JoinHandle<()> {
    let restart = runtime.restart;
    let escalations = runtime.escalations.clone();
    payrail_supervisor::supervise_task("fallback_delivery", restart, escalations, move || {
        deliver_forever(
            runtime.clone(),
            partitions.clone(),
            targets.clone(),
            secret.clone(),
            options.clone(),
        )
    })
}

/// (target, partition, episode) → the last spool sequence the target has taken.
type Positions = HashMap<(usize, i32, i64), i64>;

async fn deliver_forever(
    runtime: Arc<Runtime>,
    partitions: Vec<i32>,
    targets: Vec<String>,
    secret: String,
    options: DeliveryOptions,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(options.delivery_timeout_ms))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            warn!(%error, "fallback delivery cannot build its HTTP client");
            return;
        }
    };
    let mut positions = Positions::new();
    let mut tick = tokio::time::interval(Duration::from_millis(options.delivery_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if runtime.fallback.active_partitions().is_empty() {
            positions.clear();
            continue;
        }
        let episodes = match runtime.fallback.spool().episodes().await {
            Ok(episodes) => episodes,
            Err(error) => {
                warn!(%error, "reading the fallback episodes failed");
                continue;
            }
        };
        positions.retain(|(_, partition, episode), _| {
            episodes
                .iter()
                .any(|(p, e, _)| p == partition && e == episode)
        });
        for (partition, episode, high) in episodes {
            let Some(high) = high else { continue };
            if !partitions.contains(&partition) {
                continue;
            }
            for (index, target) in targets.iter().enumerate() {
                let position = positions.entry((index, partition, episode)).or_insert(0);
                deliver(
                    &runtime, &client, target, &secret, partition, high, position, &options,
                )
                .await;
            }
        }
    }
}

/// Sends `partition`'s events after `position` to `target`, one batch; advances
/// `position` to what the target took.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    runtime: &Runtime,
    client: &reqwest::Client,
    target: &str,
    secret: &str,
    partition: i32,
    high_watermark_at_start: i64,
    position: &mut i64,
    options: &DeliveryOptions,
) {
    let spool = runtime.fallback.spool();
    let rows = match spool
        .after(partition, *position, i64::from(options.delivery_batch))
        .await
    {
        Ok(rows) => rows,
        Err(error) => {
            warn!(partition, %error, "reading the spool for delivery failed");
            return;
        }
    };
    if rows.is_empty() {
        return;
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(event_id) = uuid::Uuid::parse_str(&row.record.headers.event_id) else {
            continue;
        };
        events.push(DeliveredEvent {
            spool_sequence: row.sequence,
            journal_offset: row.journal_offset,
            key: row.record.key,
            event_id,
            event_type: row.record.headers.event_type,
            schema_version: row.record.headers.schema_version,
            content_type: row.record.headers.content_type,
            value_hex: hex::encode(&row.record.value),
        });
    }
    let batch = DeliveredBatch {
        topic: spool.topic().to_string(),
        partition,
        high_watermark_at_start,
        events,
    };
    let url = format!("{}/internal/v1/events", target.trim_end_matches('/'));
    let response = client
        .post(&url)
        .header(CLUSTER_SECRET_HEADER, secret)
        .json(&batch)
        .send()
        .await;
    match response {
        Ok(response) if response.status().is_success() => {
            match response.json::<SinkOutcome>().await {
                Ok(outcome) => {
                    debug!(partition, target, through = outcome.applied_through, held_back = ?outcome.held_back, "fallback events delivered");
                    *position = (*position).max(outcome.applied_through);
                }
                Err(error) => warn!(partition, target, %error, "unreadable delivery answer"),
            }
        }
        Ok(response) => {
            warn!(partition, target, status = %response.status(), "fallback delivery refused")
        }
        Err(error) => warn!(partition, target, %error, "fallback delivery failed"),
    }
}
