//! Internal endpoints between nodes, authenticated with `cluster.secret`:
//! `POST /internal/v1/events` takes a partition's spooled events for this node's pools
//! during a journal outage (see `payrail_actors::fallback::sink`).

use crate::body::LimitedBody;
use crate::error::ApiError;
use crate::{json, respond, AppState};
use payrail_actors::fallback::sink::{DeliveredBatch, SinkError};
use std::convert::Infallible;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use warp::http::StatusCode;
use warp::reply::Response;

/// Refuses a request without the cluster secret (compared in constant time). An empty
/// configured secret refuses everything.
fn authorize_cluster(state: &AppState, given: &Option<String>) -> Result<(), ApiError> {
    let given = given.as_deref().unwrap_or("");
    let expected = state.cluster_secret.as_bytes();
    let ok: bool = given.as_bytes().ct_eq(expected).into();
    if ok && !expected.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Invalid or missing cluster secret"))
    }
}

/// Passes only a request carrying the cluster secret; refuses the rest before the route
/// reads its body (an unauthenticated sender makes the node buffer nothing).
pub(crate) fn cluster_authenticated(
    state: Arc<AppState>,
) -> impl warp::Filter<Extract = (), Error = warp::Rejection> + Clone {
    use warp::Filter;
    warp::header::optional::<String>(payrail_actors::fallback::CLUSTER_SECRET_HEADER)
        .and_then(move |given: Option<String>| {
            let state = state.clone();
            async move {
                authorize_cluster(&state, &given)
                    .map_err(|e| warp::reject::custom(crate::error::Refused(e)))
            }
        })
        .untuple_one()
}

/// `POST /internal/v1/events`: applies a batch to the pools this node runs and answers
/// how far they took it (`applied_through`) and which held events back.
#[utoipa::path(
    post,
    path = "/internal/v1/events",
    tag = "internal",
    security(("cluster_secret" = [])),
    request_body(content = Object, description = "A partition's spooled events (`DeliveredBatch`)."),
    responses(
        (status = 200, description = "How far the pools took the batch", body = Object),
        (status = 400, description = "Malformed batch", body = crate::error::ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = crate::error::ErrorResponse),
        (status = 401, description = "No or wrong cluster secret", body = crate::error::ErrorResponse),
    )
)]
pub async fn receive_events(
    state: Arc<AppState>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            let body = body?;
            // A batch is an object: serde would also fill it from an array, positionally.
            if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(ApiError::invalid(
                    "invalid_event_batch",
                    "the event batch must be a JSON object",
                    None,
                ));
            }
            let batch: DeliveredBatch = serde_json::from_slice(&body).map_err(|e| {
                ApiError::invalid(
                    "invalid_event_batch",
                    format!("the event batch is not valid: {e}"),
                    None,
                )
            })?;
            let sink_error = |e| match e {
                SinkError::Invalid(message) => {
                    ApiError::invalid("invalid_event_batch", message, None)
                }
                other => ApiError::unavailable("pools_unavailable", other.to_string()),
            };
            state.pool_sink.validate(&batch).map_err(sink_error)?;
            let batch = state.pool_sink.admit(batch).await.map_err(sink_error)?;
            let outcome = state.pool_sink.apply(&batch).await.map_err(sink_error)?;
            Ok(json(StatusCode::OK, &outcome))
        }
        .await,
    )
}
