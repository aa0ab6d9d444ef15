//! `GET /v1/notifications` and `POST /v1/notifications/{id}/resend` (merchant API key).

use crate::error::{ApiError, ErrorResponse};
use crate::{authenticate, json, respond, with, AppState};
use payrail_pools::notification::store::{self, ResendError};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// Notifications listed per request at most (`limit`).
const LIST_MAX: i64 = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this payment's notifications (`pay_…`).
    payment_id: Option<String>,
    /// 1 to 100; default 100.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A page of notifications, newest first.
#[derive(Serialize, utoipa::ToSchema)]
// Its own component name: two `ListResponse`s would be one schema in the document.
#[schema(as = NotificationList)]
pub(crate) struct ListResponse {
    #[schema(value_type = String)]
    object: &'static str,
    data: Vec<store::NotificationView>,
    has_more: bool,
    #[schema(value_type = String)]
    url: &'static str,
}

fn valid_notification_id(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("ntf_")
}

/// `GET /v1/notifications`: the webhooks sent (or being sent) to the merchant.
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "notifications",
    security(("merchant_api_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of notifications", body = ListResponse),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
    )
)]
pub(crate) async fn list(
    state: Arc<AppState>,
    query: ListQuery,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let limit = query.limit.unwrap_or(LIST_MAX);
            if !(1..=LIST_MAX).contains(&limit) {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    format!("limit must be between 1 and {LIST_MAX}"),
                    Some("limit"),
                ));
            }
            if let Some(payment_id) = &query.payment_id {
                if payment_id.len() > 64 || !payment_id.starts_with("pay_") {
                    return Err(ApiError::invalid(
                        "parameter_invalid",
                        "payment_id must be a payment id (pay_…)",
                        Some("payment_id"),
                    ));
                }
            }
            let (data, has_more) = store::list(
                &state.pool,
                &merchant_id,
                query.payment_id.as_deref(),
                limit,
            )
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(
                StatusCode::OK,
                &ListResponse {
                    object: "list",
                    data,
                    has_more,
                    url: "/v1/notifications",
                },
            ))
        }
        .await,
    )
}

/// `POST /v1/notifications/{id}/resend`: delivers a dead notification again.
#[utoipa::path(
    post,
    path = "/v1/notifications/{id}/resend",
    tag = "notifications",
    security(("merchant_api_key" = [])),
    params(("id" = String, Path, description = "The notification id (`ntf_…`).")),
    responses(
        (status = 200, description = "The notification, queued again", body = store::NotificationView),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 404, description = "No such notification", body = ErrorResponse),
        (status = 409, description = "Not in a state that can be resent", body = ErrorResponse),
    )
)]
pub(crate) async fn resend(
    state: Arc<AppState>,
    id: String,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            if !valid_notification_id(&id) {
                return Err(ApiError::not_found("No such notification"));
            }
            match store::resend(&state.pool, &merchant_id, &id).await {
                Ok(view) => Ok(json(StatusCode::OK, &view)),
                Err(ResendError::NotFound) => Err(ApiError::not_found("No such notification")),
                Err(e @ ResendError::InvalidState(_)) => Err(ApiError {
                    status: StatusCode::CONFLICT,
                    kind: "invalid_request_error",
                    code: "notification_unexpected_state",
                    message: e.to_string(),
                    param: None,
                    payment_status: None,
                }),
                Err(ResendError::Database(e)) => Err(ApiError::internal(e.to_string())),
            }
        }
        .await,
    )
}

/// The notification routes.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let auth = warp::header::optional::<String>("authorization");
    let list = warp::path!("v1" / "notifications")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<ListQuery>())
        .and(auth)
        .and_then(list);
    let resend = warp::path!("v1" / "notifications" / String / "resend")
        .and(warp::post())
        .and(with(state))
        .and(auth)
        .and_then(|id, state, auth| resend(state, id, auth));
    list.or(resend).unify().map(|r: Response| r.into_response())
}
