//! Balance, ledger entries, settlements and analytics: read models served from PostgreSQL.

use crate::body::LimitedBody;
use crate::error::{ApiError, ErrorResponse};
use crate::payments::valid_payment_id;
use crate::validation;
use crate::{authenticate, authorize_admin, json, respond, AppState};
use payrail_pools::analytics;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;

/// Money owed to the merchant per currency: `pending` (captured, not settled yet) and
/// `available` (settled, not paid out).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BalanceResponse {
    #[schema(value_type = String)]
    object: &'static str,
    pending: Vec<payrail_pools::ledger::Amount>,
    available: Vec<payrail_pools::ledger::Amount>,
}

/// `GET /v1/balance`: the merchant's balance from the ledger.
#[utoipa::path(
    get,
    path = "/v1/balance",
    tag = "money",
    security(("merchant_api_key" = [])),
    responses(
        (status = 200, description = "The balance", body = BalanceResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
    )
)]
pub(crate) async fn balance(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    use payrail_pools::ledger::{merchant_balance, MERCHANT_AVAILABLE, MERCHANT_PENDING};
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let pending = merchant_balance(&state.pool, &merchant_id, MERCHANT_PENDING)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let available = merchant_balance(&state.pool, &merchant_id, MERCHANT_AVAILABLE)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(
                StatusCode::OK,
                &BalanceResponse {
                    object: "balance",
                    pending,
                    available,
                },
            ))
        }
        .await,
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EntriesQuery {
    /// Required: the payment (`pay_…`) whose entries to list.
    payment_id: Option<String>,
}

/// A list of ledger entries.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct EntryList {
    object: String,
    data: Vec<payrail_pools::ledger::EntryView>,
    has_more: bool,
}

/// A list of settlements.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct SettlementList {
    object: String,
    data: Vec<payrail_pools::settlement::SettlementView>,
    has_more: bool,
}

/// `GET /v1/ledger/entries?payment_id=`: the double-entry postings of one payment.
#[utoipa::path(
    get,
    path = "/v1/ledger/entries",
    tag = "money",
    security(("merchant_api_key" = [])),
    params(EntriesQuery),
    responses(
        (status = 200, description = "The payment's entries", body = EntryList),
        (status = 400, description = "payment_id missing", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 404, description = "No such payment", body = ErrorResponse),
    )
)]
pub(crate) async fn ledger_entries(
    state: Arc<AppState>,
    query: EntriesQuery,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let Some(payment_id) = query.payment_id else {
                return Err(ApiError::invalid(
                    "parameter_missing",
                    "payment_id is required",
                    Some("payment_id"),
                ));
            };
            valid_payment_id(&payment_id)?;
            let entries =
                payrail_pools::ledger::payment_entries(&state.pool, &merchant_id, &payment_id)
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .ok_or_else(|| ApiError::not_found("No such payment"))?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"object": "list", "data": entries, "has_more": false}),
            ))
        }
        .await,
    )
}

pub(crate) fn settlement_error(error: payrail_pools::settlement::SettlementError) -> ApiError {
    use payrail_pools::settlement::SettlementError;
    match error {
        SettlementError::NotFound => ApiError::not_found("No such settlement"),
        SettlementError::AlreadyPaid => ApiError {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            code: "settlement_already_paid",
            message: "The settlement is already paid".into(),
            param: None,
            payment_status: None,
        },
        other => ApiError::internal(other.to_string()),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunBody {
    /// Unix seconds; default now. Captures and refunds before it are settled.
    #[serde(default)]
    cutoff: Option<i64>,
}

/// `POST /v1/settlements/run` (admin): settles every merchant's unsettled captures and
/// refunds before the cutoff, once per cluster.
#[utoipa::path(
    post,
    path = "/v1/settlements/run",
    tag = "admin",
    security(("admin_token" = [])),
    request_body(content = Option<RunBody>, description = "Optional."),
    responses(
        (status = 201, description = "The settlements created", body = SettlementList),
        (status = 400, description = "Invalid cutoff", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
    )
)]
pub(crate) async fn run_settlements(
    state: Arc<AppState>,
    auth: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            authorize_admin(&state, &auth)?;
            let body: RunBody = validation::parse_optional_json(&body?)?;
            let cutoff = match body.cutoff {
                None => chrono::Utc::now(),
                Some(t) => chrono::DateTime::from_timestamp(t, 0).ok_or_else(|| {
                    ApiError::invalid(
                        "parameter_invalid",
                        "cutoff must be unix seconds",
                        Some("cutoff"),
                    )
                })?,
            };
            let created = state
                .settlements
                .run(cutoff)
                .await
                .map_err(settlement_error)?;
            Ok(json(
                StatusCode::CREATED,
                &serde_json::json!({"object": "list", "data": created, "has_more": false}),
            ))
        }
        .await,
    )
}

/// `POST /v1/settlements/{id}/pay` (admin): marks a settlement paid out.
#[utoipa::path(
    post,
    path = "/v1/settlements/{id}/pay",
    tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The settlement id (`stl_…`).")),
    responses(
        (status = 200, description = "The settlement, paid", body = payrail_pools::settlement::SettlementView),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such settlement", body = ErrorResponse),
        (status = 409, description = "Already paid", body = ErrorResponse),
    )
)]
pub(crate) async fn pay_settlement(
    state: Arc<AppState>,
    id: String,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            authorize_admin(&state, &auth)?;
            let paid = state.settlements.pay(&id).await.map_err(settlement_error)?;
            Ok(json(StatusCode::OK, &paid))
        }
        .await,
    )
}

/// `GET /v1/settlements`: the merchant's settlements, newest first (at most 100).
#[utoipa::path(
    get,
    path = "/v1/settlements",
    tag = "money",
    security(("merchant_api_key" = [])),
    responses(
        (status = 200, description = "The settlements", body = SettlementList),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
    )
)]
pub(crate) async fn list_settlements(
    state: Arc<AppState>,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let list = state
                .settlements
                .list(&merchant_id, 100)
                .await
                .map_err(settlement_error)?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"object": "list", "data": list, "has_more": false}),
            ))
        }
        .await,
    )
}

/// `GET /v1/analytics/channel-metrics?date=` (admin): every channel's totals for a UTC day.
#[utoipa::path(
    get,
    path = "/v1/analytics/channel-metrics",
    tag = "admin",
    security(("admin_token" = [])),
    params(MetricsQuery),
    responses(
        (status = 200, description = "Per channel and currency", body = Object),
        (status = 400, description = "date missing or not YYYY-MM-DD", body = ErrorResponse),
        (status = 401, description = "No or wrong admin token", body = ErrorResponse),
    )
)]
pub(crate) async fn channel_metrics(
    state: Arc<AppState>,
    query: MetricsQuery,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            authorize_admin(&state, &auth)?;
            let (date, day) = query.day()?;
            let data = analytics::channel_metrics(&state.pool, day)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(channel_metrics_reply(date, data))
        }
        .await,
    )
}

/// Every channel's totals for one UTC day. A struct rather than `json!`: the amounts are
/// `i128`, which a `serde_json::Value` cannot hold past `u64::MAX` (`json!` would panic).
#[derive(Serialize)]
struct ChannelMetricsResponse {
    object: &'static str,
    date: String,
    data: Vec<analytics::ChannelMetrics>,
}

fn channel_metrics_reply(date: String, data: Vec<analytics::ChannelMetrics>) -> Response {
    json(
        StatusCode::OK,
        &ChannelMetricsResponse {
            object: "channel_metrics",
            date,
            data,
        },
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct MetricsQuery {
    /// Required: the UTC day, `YYYY-MM-DD`.
    #[param(format = Date)]
    date: Option<String>,
}

impl MetricsQuery {
    /// The required `date` parameter, as given and as a UTC day.
    fn day(self) -> Result<(String, chrono::NaiveDate), ApiError> {
        let Some(date) = self.date else {
            return Err(ApiError::invalid(
                "parameter_missing",
                "date is required (YYYY-MM-DD)",
                Some("date"),
            ));
        };
        let day = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").map_err(|_| {
            ApiError::invalid("parameter_invalid", "date must be YYYY-MM-DD", Some("date"))
        })?;
        Ok((date, day))
    }
}

/// A merchant's totals for one UTC day, per currency.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MetricsResponse {
    #[schema(value_type = String)]
    object: &'static str,
    merchant_id: String,
    date: String,
    data: Vec<analytics::CurrencyMetrics>,
}

/// `GET /v1/analytics/payment-metrics?date=`: the merchant's totals for a UTC day.
#[utoipa::path(
    get,
    path = "/v1/analytics/payment-metrics",
    tag = "money",
    security(("merchant_api_key" = [])),
    params(MetricsQuery),
    responses(
        (status = 200, description = "Per currency", body = MetricsResponse),
        (status = 400, description = "date missing or not YYYY-MM-DD", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
    )
)]
pub(crate) async fn payment_metrics(
    state: Arc<AppState>,
    query: MetricsQuery,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let (date, day) = query.day()?;
            let data = analytics::payment_metrics(&state.pool, &merchant_id, day)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(
                StatusCode::OK,
                &MetricsResponse {
                    object: "payment_metrics",
                    merchant_id,
                    date,
                    data,
                },
            ))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channel_metrics_past_u64_max_are_answered_exactly() {
        let past = i128::from(u64::MAX) + 1;
        let metrics = analytics::CurrencyMetrics {
            currency: "eur".into(),
            created_count: 2,
            created_amount: past,
            succeeded_count: 0,
            succeeded_amount: 0,
            failed_count: 0,
            failed_amount: 0,
            refunded_count: 0,
            refunded_amount: 0,
            success_rate_bps: 0,
            average_amount: past / 2,
            completed_orders: 0,
            revenue: 0,
            fees: 0,
            net_revenue: 0,
        };
        let data = vec![analytics::ChannelMetrics {
            channel: "web".into(),
            metrics,
        }];
        let reply = channel_metrics_reply("2023-11-14".into(), data);
        assert_eq!(reply.status(), StatusCode::OK);
        let body = warp::hyper::body::to_bytes(reply.into_body())
            .await
            .expect("body");
        let body = String::from_utf8(body.to_vec()).expect("UTF-8");
        assert!(
            body.contains(&format!("\"created_amount\":{past}")),
            "{body}"
        );
    }
}
