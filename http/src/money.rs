//! Balance, ledger entries, settlements and analytics: read models served from PostgreSQL.

use crate::body::LimitedBody;
use crate::error::ApiError;
use crate::payments::valid_payment_id;
use crate::validation;
use crate::{authenticate, authorize_admin, json, respond, AppState};
use payrail_actors::pools::analytics;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Serialize)]
pub(crate) struct BalanceResponse {
    object: &'static str,
    pending: Vec<payrail_actors::pools::ledger::Amount>,
    available: Vec<payrail_actors::pools::ledger::Amount>,
}

pub(crate) async fn balance(state: AppState, auth: Option<String>) -> Result<Response, Infallible> {
    use payrail_actors::pools::ledger::{merchant_balance, MERCHANT_AVAILABLE, MERCHANT_PENDING};
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

#[derive(Debug, Deserialize)]
pub(crate) struct EntriesQuery {
    payment_id: Option<String>,
}

pub(crate) async fn ledger_entries(
    state: AppState,
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
            let entries = payrail_actors::pools::ledger::payment_entries(
                &state.pool,
                &merchant_id,
                &payment_id,
            )
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

pub(crate) fn settlement_error(
    error: payrail_actors::pools::settlement::SettlementError,
) -> ApiError {
    use payrail_actors::pools::settlement::SettlementError;
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunBody {
    /// Unix seconds; default now.
    #[serde(default)]
    cutoff: Option<i64>,
}

pub(crate) async fn run_settlements(
    state: AppState,
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

pub(crate) async fn pay_settlement(
    state: AppState,
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

pub(crate) async fn list_settlements(
    state: AppState,
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

pub(crate) async fn channel_metrics(
    state: AppState,
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
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"object": "channel_metrics", "date": date, "data": data}),
            ))
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct MetricsQuery {
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

#[derive(Serialize)]
pub(crate) struct MetricsResponse {
    object: &'static str,
    merchant_id: String,
    date: String,
    data: Vec<analytics::CurrencyMetrics>,
}

pub(crate) async fn payment_metrics(
    state: AppState,
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
