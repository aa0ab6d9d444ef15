//! Operations endpoints: readiness, and the journal's fallback state for operators.

use crate::body::LimitedBody;
use crate::error::{ApiError, ErrorResponse};
use crate::validation::{parse_json, parse_optional_json, CreateMerchantBody};
use crate::{authorize_admin, json, respond, AppState};
use payrail_supervisor::Escalation;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;

/// `GET /healthz`: the process answers (liveness).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"})))
)]
pub(crate) async fn healthz() -> Result<Response, Infallible> {
    Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
}

/// Whether the node can take commands, and why not: `/readyz` and `/v1/admin/status`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    /// `ok` (the broker answers and no partition is in fallback), `fallback` (commands of
    /// some partitions are spooled: serving, durably) or `unavailable`.
    #[schema(value_type = String)]
    pub(crate) journal: &'static str,
    /// Owned partitions in journal fallback.
    pub(crate) partitions_in_fallback: Vec<i32>,
    /// Owned partitions that can neither use the journal nor enter fallback: the node
    /// started while the journal was unavailable and has no spool for them.
    pub(crate) partitions_waiting_for_journal: Vec<i32>,
    /// The journal breaker: `closed`, `open` or `half_open`.
    #[schema(value_type = String)]
    pub(crate) breaker: &'static str,
    /// The breaker's state changes since the node started.
    pub(crate) breaker_transitions: u64,
    pub(crate) database: bool,
    /// Every owned partition has caught up and has a running supervisor.
    pub(crate) partitions: bool,
    /// Owned partitions without a running supervisor (restarting, or given up).
    pub(crate) partitions_down: Vec<i32>,
    /// Supervisors that gave up (restart intensity exceeded), most recent last.
    #[schema(value_type = Vec<Object>)]
    pub(crate) gave_up: Vec<Escalation>,
    /// Why the node is not ready, in words; empty when ready.
    pub(crate) reasons: Vec<String>,
}

/// `GET /readyz`: 200 when the node can take commands, 503 with the reasons otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `reasons` says why", body = Readiness),
    )
)]
pub async fn readyz(state: Arc<AppState>) -> Result<Response, Infallible> {
    let readiness = readiness(&state, Details::Hidden).await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(status, &readiness))
}

/// Whether a readiness answer names what gave up. `/readyz` has no authentication, and a
/// supervisor's give-up names merchants and payments and carries panic text: there only
/// their number is told; the operators' `GET /v1/admin/status` shows them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Details {
    Shown,
    Hidden,
}

/// Checks the journal, PostgreSQL and the partitions (each look-up bounded by 2 s).
pub(crate) async fn readiness(state: &AppState, details: Details) -> Readiness {
    let runtime = state.node.runtime();
    let journal = runtime.producer.is_reachable(Duration::from_secs(2)).await;
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    let partitions_down = state.node.partitions_down();
    let caught_up = state.node.is_ready();
    let gave_up = runtime.escalations.recent();
    let breaker = runtime.health.state();
    let owned = state.node.owned_partitions();
    let in_fallback: Vec<i32> = owned
        .iter()
        .copied()
        .filter(|p| runtime.fallback.is_active(*p))
        .collect();
    let waiting: Vec<i32> = owned
        .iter()
        .copied()
        .filter(|p| !runtime.fallback.is_end_known(*p) && !runtime.fallback.is_active(*p))
        .collect();
    let mut reasons = Vec::new();
    let journal_state = match (journal, in_fallback.is_empty()) {
        (_, false) => "fallback",
        (true, true) => "ok",
        (false, true) => "unavailable",
    };
    if journal_state == "unavailable" {
        reasons.push(
            "the journal (broker) does not answer and no partition is in fallback".to_string(),
        );
    }
    if !waiting.is_empty() {
        reasons.push(format!(
            "partitions waiting for the journal (unavailable at start, no spool): {waiting:?}"
        ));
    }
    if !database {
        reasons.push("PostgreSQL does not answer".to_string());
    }
    if !caught_up {
        reasons.push("partitions are still catching up with the journal".to_string());
    }
    if !partitions_down.is_empty() {
        reasons.push(format!(
            "partitions without a running supervisor: {partitions_down:?}"
        ));
    }
    let gave_up = match details {
        Details::Shown => {
            for escalation in &gave_up {
                reasons.push(format!(
                    "{} gave up on {}: {}",
                    escalation.supervisor, escalation.child, escalation.reason
                ));
            }
            gave_up
        }
        Details::Hidden => {
            if !gave_up.is_empty() {
                reasons.push(format!(
                    "{} supervisor(s) gave up (restart intensity exceeded); details in GET /v1/admin/status",
                    gave_up.len()
                ));
            }
            Vec::new()
        }
    };
    Readiness {
        ready: reasons.is_empty(),
        journal: journal_state,
        partitions_in_fallback: in_fallback,
        partitions_waiting_for_journal: waiting,
        breaker: breaker.as_str(),
        breaker_transitions: runtime.health.transitions(),
        database,
        partitions: caught_up && partitions_down.is_empty(),
        partitions_down,
        gave_up,
        reasons,
    }
}

#[derive(Serialize)]
struct JournalStatus {
    object: &'static str,
    /// The breaker: `closed`, `open` or `half_open`.
    breaker: &'static str,
    breaker_transitions: u64,
    /// Partitions in fallback with their spool depth, oldest spooled age (ms) and the
    /// journal's high watermark when the fallback began.
    partitions_in_fallback: Vec<kafka_journal::spool::SpoolDepth>,
    /// Rows in the spool now, and its bound (`spool.max_rows`).
    spool_rows: i64,
    spool_max_rows: u64,
    /// Events spooled and replayed into the journal by this node since it started.
    spooled_since_start: u64,
    replayed_since_start: u64,
}

/// `GET /v1/admin/journal`: the breaker, the partitions in fallback and the spool.
#[utoipa::path(
    get,
    path = "/v1/admin/journal",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The journal's state", body = Object),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorResponse),
    )
)]
pub async fn journal_status(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    crate::respond(
        async {
            crate::authorize_admin(&state, &auth)?;
            let runtime = state.node.runtime();
            let depths = runtime.fallback.depths().await.map_err(|e| {
                crate::error::ApiError::unavailable(
                    "database_unavailable",
                    format!("cannot read the spool: {e}"),
                )
            })?;
            Ok(json(
                StatusCode::OK,
                &JournalStatus {
                    object: "journal_status",
                    breaker: runtime.health.state().as_str(),
                    breaker_transitions: runtime.health.transitions(),
                    spool_rows: depths.iter().map(|d| d.rows).sum(),
                    spool_max_rows: runtime.fallback.options().max_rows,
                    partitions_in_fallback: depths,
                    spooled_since_start: runtime.fallback.spooled_total(),
                    replayed_since_start: runtime.fallback.replayed_total(),
                },
            ))
        }
        .await,
    )
}

/// `GET /v1/admin/cluster`: this node's partitions (served, with epochs) and, in a cluster,
/// the lease table, the live nodes and this node's consumers' lag.
#[utoipa::path(
    get,
    path = "/v1/admin/cluster",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Partitions, owners, epochs, nodes, lag", body = Object),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 503, description = "PostgreSQL unavailable", body = ErrorResponse),
    )
)]
pub async fn cluster_status(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    crate::respond(
        async {
            crate::authorize_admin(&state, &auth)?;
            let ownership = state.node.ownership();
            let serving: Vec<serde_json::Value> = ownership
                .owned()
                .into_iter()
                .map(|p| serde_json::json!({"partition": p, "epoch": ownership.epoch(p)}))
                .collect();
            let mut body = serde_json::json!({
                "object": "cluster_status",
                "clustered": state.forwarder.is_some(),
                "partitions": ownership.partitions(),
                "serving": serving,
            });
            if let Some(forwarder) = &state.forwarder {
                let directory = forwarder.directory();
                body["node_id"] = directory.node_id().into();
                let status = directory.status().await.map_err(|e| {
                    crate::error::ApiError::unavailable(
                        "database_unavailable",
                        format!("cannot read the lease table: {e}"),
                    )
                })?;
                body["leases"] = status["leases"].clone();
                body["nodes"] = status["nodes"].clone();
            }
            // The lag needs the broker; without it the rest still answers.
            body["consumers"] = match state.consumers.report().await {
                Ok(consumers) => serde_json::to_value(consumers).unwrap_or_default(),
                Err(error) => serde_json::json!({"error": error.to_string()}),
            };
            Ok(json(StatusCode::OK, &body))
        }
        .await,
    )
}

/// `POST /v1/merchants` (admin): creates a merchant; its API key is shown once.
#[utoipa::path(
    post,
    path = "/v1/merchants",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = CreateMerchantBody,
    responses(
        (status = 201, description = "Created; `api_key` and `webhook_secret` are shown only now", body = payrail_actors::merchants::CreatedMerchant),
        (status = 400, description = "Invalid request", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
    )
)]
pub(crate) async fn create_merchant(
    state: Arc<AppState>,
    auth: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            authorize_admin(&state, &auth)?;
            let body = body?;
            let body: CreateMerchantBody = parse_json(&body)?;
            body.validate()?;
            let merchant = state
                .merchants
                .create_with_webhook_api(
                    body.name.trim(),
                    body.webhook_url.as_deref(),
                    body.webhook_api.unwrap_or_default(),
                )
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(StatusCode::CREATED, &merchant))
        }
        .await,
    )
}

/// `POST /v1/merchants/{id}/roll_api_key`'s optional body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollApiKeyBody {
    /// Seconds the old key keeps working; 0 (the default) refuses it at once. At most
    /// 604800 (7 days).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    pub(crate) expire_old_in_s: u64,
}

/// `POST /v1/merchants/{id}/roll_api_key` (admin): gives the merchant a new API key, shown
/// once; the old key works until `expire_old_in_s` from now, then is refused on every node
/// (within 1 s).
#[utoipa::path(
    post,
    path = "/v1/merchants/{id}/roll_api_key",
    tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The merchant's id (`mer_…`)")),
    request_body(content = Option<RollApiKeyBody>, description = "Optional; no body is `{\"expire_old_in_s\": 0}`"),
    responses(
        (status = 200, description = "Rolled; `api_key` is shown only now", body = payrail_actors::merchants::RolledApiKey),
        (status = 400, description = "Invalid request (e.g. `expire_old_in_s` out of range); nothing changed", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such merchant", body = ErrorResponse),
    )
)]
pub(crate) async fn roll_api_key(
    state: Arc<AppState>,
    merchant_id: String,
    auth: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    use payrail_actors::merchants::{MerchantError, MAX_ROLLED_KEY_GRACE};
    respond(
        async {
            authorize_admin(&state, &auth)?;
            let body: RollApiKeyBody = parse_optional_json(&body?)?;
            let grace = Duration::from_secs(body.expire_old_in_s);
            let rolled = state
                .merchants
                .roll_api_key(&merchant_id, grace)
                .await
                .map_err(|e| match e {
                    MerchantError::GraceTooLong => ApiError::invalid(
                        "parameter_invalid",
                        format!(
                            "expire_old_in_s must be 0 to {} (7 days)",
                            MAX_ROLLED_KEY_GRACE.as_secs()
                        ),
                        Some("expire_old_in_s"),
                    ),
                    MerchantError::UnknownMerchant(_) => ApiError::not_found("No such merchant"),
                    MerchantError::Database(e) => ApiError::internal(e),
                })?;
            Ok(json(StatusCode::OK, &rolled))
        }
        .await,
    )
}

/// `GET /v1/admin/consumers`: each journal consumer of this node with its lag in records
/// (broker high watermark − next offset to apply) and the histogram of its append-to-apply
/// delays since start (see `kafka_journal::lag`).
#[utoipa::path(
    get,
    path = "/v1/admin/consumers",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Each consumer's lag", body = Object),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 503, description = "The journal's watermarks cannot be read", body = ErrorResponse),
    )
)]
pub(crate) async fn consumer_lag(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            authorize_admin(&state, &auth)?;
            let consumers = state.consumers.report().await.map_err(|e| {
                ApiError::unavailable(
                    "journal_unavailable",
                    format!("cannot read the journal's watermarks: {e}"),
                )
            })?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"object": "list", "data": consumers}),
            ))
        }
        .await,
    )
}
