//! The sweeper: every `psp.sweep_interval_ms` it finds payments of this node's partitions
//! that need the processor asked (processing too long — a lost webhook), that must expire
//! (authorization older than `psp.authorization_ttl_ms`) or that have refunds pending, and
//! sends each a poll. Driven from snapshots, so it survives restarts and passivation.

use crate::node::NodeHandle;
use crate::psp::PspOptions;
use sqlx::PgPool;
use std::time::Duration;
use tracing::{debug, warn};

/// Payments due for a poll, as (merchant id, payment id).
pub async fn due_payments(
    pool: &PgPool,
    partitions: &[i32],
    options: &PspOptions,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT merchant_id, payment_id FROM payment_snapshots
         WHERE partition = ANY($1)
           AND ((status = 'processing' AND updated_at < now() - make_interval(secs => $2))
             OR (status = 'requires_capture' AND updated_at < now() - make_interval(secs => $3))
             OR (has_pending_refund AND updated_at < now() - make_interval(secs => $2)))
         ORDER BY updated_at LIMIT $4",
    )
    .bind(partitions)
    .bind(options.poll_after_ms as f64 / 1000.0)
    .bind(options.authorization_ttl_ms as f64 / 1000.0)
    .bind(options.sweep_batch)
    .fetch_all(pool)
    .await
}

/// Runs the sweeper until the process ends, supervised (restarted after a panic under the
/// runtime's restart policy).
pub fn spawn_sweeper(
    node: NodeHandle,
    pool: PgPool,
    options: PspOptions,
) -> tokio::task::JoinHandle<()> {
    let restart = node.runtime().restart;
    let escalations = node.runtime().escalations.clone();
    payrail_supervisor::supervise_task("sweeper", restart, escalations, move || {
        sweep_forever(node.clone(), pool.clone(), options.clone())
    })
}

async fn sweep_forever(node: NodeHandle, pool: PgPool, options: PspOptions) {
    let mut tick = tokio::time::interval(Duration::from_millis(options.sweep_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.is_ready() {
            continue;
        }
        let due = match due_payments(&pool, &node.owned_partitions(), &options).await {
            Ok(due) => due,
            Err(error) => {
                warn!(%error, "sweeper query failed");
                continue;
            }
        };
        for (merchant_id, payment_id) in due {
            if let Err(error) = node.poll(&merchant_id, &payment_id).await {
                debug!(%payment_id, %error, "poll did not resolve the payment yet");
            }
        }
    }
}
