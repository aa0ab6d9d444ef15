//! `GET /v1/admin/status`: one answer with everything an operator looks at first —
//! readiness, the journal and its breaker, the spool, partitions and their owners, the
//! consumers' lag and the dead letters. `payrail status` and the dashboard read it.
//!
//! Each part that needs the broker or PostgreSQL is looked up concurrently and bounded in
//! time; a part that fails carries an `error` string and the rest still answers, since the
//! status matters most when something is down. No secret goes into it.

use crate::ops::{readiness, Details};
use crate::{authorize_admin, json, respond, AppState};
use kafka_journal::dead_letters::{DeadLetterCount, RecentDeadLetter};
use serde::Serialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;

/// The most recent dead letters shown.
const RECENT_DEAD_LETTERS: i64 = 10;
/// Bound on each look-up of this endpoint (PostgreSQL, the lease table, the broker's
/// watermarks), so the status answers in about this long even when they do not.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Dead-letter error messages are cut to this many characters.
const ERROR_CHARS: usize = 300;

#[derive(Serialize)]
struct DeadLetters {
    error: Option<String>,
    total: i64,
    /// Not replayed yet.
    pending: i64,
    by_consumer: Vec<DeadLetterCount>,
    recent: Vec<RecentDeadLetter>,
}

/// Runs `lookup` for at most [`LOOKUP_TIMEOUT`], its error as a string.
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    lookup: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("cannot read {what}: {e}")),
        Err(_) => Err(format!(
            "cannot read {what}: no answer in {LOOKUP_TIMEOUT:?}"
        )),
    }
}

/// `GET /v1/admin/status`.
#[utoipa::path(
    get,
    path = "/v1/admin/status",
    tag = "admin",
    security(("admin_token" = []), ("admin_basic" = [])),
    responses(
        (status = 200, description = "Health, breaker, spool, partitions and owners, lag, dead letters; a part that cannot be read carries `error`", body = Object),
        (status = 401, description = "No or wrong admin credentials", body = crate::error::ErrorResponse),
    )
)]
pub async fn node_status(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            authorize_admin(&state, &auth)?;
            Ok(json(StatusCode::OK, &status(&state).await))
        }
        .await,
    )
}

async fn status(state: &AppState) -> Value {
    let runtime = state.node.runtime();
    let names = state.consumers.names();
    let leases = async {
        match &state.forwarder {
            Some(forwarder) => {
                Some(bounded("the lease table", forwarder.directory().status()).await)
            }
            None => None,
        }
    };
    let (ready, spool, consumers, dead, leases) = tokio::join!(
        readiness(state, Details::Shown),
        bounded("the spool", runtime.fallback.depths()),
        bounded("the journal's watermarks", state.consumers.report()),
        bounded(
            "the dead letters",
            kafka_journal::dead_letters::summary(&state.pool, &names, RECENT_DEAD_LETTERS),
        ),
        leases,
    );

    let spool = match spool {
        Ok(depths) => json!({
            "error": null,
            "rows": depths.iter().map(|d| d.rows).sum::<i64>(),
            "max_rows": runtime.fallback.options().max_rows,
            "partitions_in_fallback": depths,
            "spooled_since_start": runtime.fallback.spooled_total(),
            "replayed_since_start": runtime.fallback.replayed_total(),
        }),
        Err(error) => json!({
            "error": error,
            "rows": null,
            "max_rows": runtime.fallback.options().max_rows,
            "partitions_in_fallback": [],
            "spooled_since_start": runtime.fallback.spooled_total(),
            "replayed_since_start": runtime.fallback.replayed_total(),
        }),
    };

    let ownership = state.node.ownership();
    let served: Vec<Value> = ownership
        .owned()
        .into_iter()
        .map(|p| json!({"partition": p, "epoch": ownership.epoch(p)}))
        .collect();
    let node_id = state
        .forwarder
        .as_ref()
        .map(|f| f.directory().node_id().to_string());
    // In a cluster the lease table says who owns what; alone, this node owns everything.
    let (owners, owners_error) = match leases {
        None => (
            served
                .iter()
                .map(|s| {
                    json!({"partition": s["partition"], "owner": null, "epoch": s["epoch"], "held": true, "this_node": true})
                })
                .collect::<Vec<_>>(),
            None,
        ),
        Some(Ok(table)) => (
            table["leases"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|lease| {
                    let this = lease["owner"].as_str() == node_id.as_deref() && lease["held"] == true;
                    json!({
                        "partition": lease["partition"],
                        "owner": lease["owner"],
                        "epoch": lease["epoch"],
                        "held": lease["held"],
                        "expires_at": lease["expires_at"],
                        "this_node": this,
                    })
                })
                .collect(),
            None,
        ),
        Some(Err(error)) => (Vec::new(), Some(error)),
    };

    let consumers = match consumers {
        Ok(list) => json!({
            "error": null,
            "data": list.into_iter().map(|c| json!({
                "name": c.name,
                "topic": c.topic,
                "lag_records": c.lag_records,
                "applied_since_start": c.lag_ms.total(),
                "lag_p99_ms_at_most": c.lag_ms.quantile_bound_ms(990),
                "partitions": c.partitions,
            })).collect::<Vec<_>>(),
        }),
        Err(error) => json!({
            "error": error,
            "data": names.iter().map(|name| json!({"name": name})).collect::<Vec<_>>(),
        }),
    };

    let dead_letters = match dead {
        Ok((by_consumer, mut recent)) => {
            for letter in &mut recent {
                if letter.error.chars().count() > ERROR_CHARS {
                    letter.error = letter.error.chars().take(ERROR_CHARS).collect::<String>() + "…";
                }
            }
            DeadLetters {
                error: None,
                total: by_consumer.iter().map(|c| c.total).sum(),
                pending: by_consumer.iter().map(|c| c.pending).sum(),
                by_consumer,
                recent,
            }
        }
        Err(error) => DeadLetters {
            error: Some(error),
            total: 0,
            pending: 0,
            by_consumer: Vec::new(),
            recent: Vec::new(),
        },
    };

    json!({
        "object": "node_status",
        "generated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "node_id": node_id,
        "clustered": state.forwarder.is_some(),
        "ready": ready.ready,
        "reasons": ready.reasons,
        "database": ready.database,
        "journal": {
            "state": ready.journal,
            "breaker": ready.breaker,
            "breaker_transitions": ready.breaker_transitions,
            "partitions_in_fallback": ready.partitions_in_fallback,
            "partitions_waiting_for_journal": ready.partitions_waiting_for_journal,
        },
        "spool": spool,
        "partitions": {
            "count": ownership.partitions(),
            "owned": served.len(),
            "served": served,
            "caught_up": ready.partitions,
            "down": ready.partitions_down,
            "gave_up": ready.gave_up,
            "owners": owners,
            "owners_error": owners_error,
        },
        "consumers": consumers,
        "dead_letters": dead_letters,
    })
}
