//! The merchant API's payment routes: create, read, confirm/capture/cancel, refund, list.

use crate::body::LimitedBody;
use crate::error::ApiError;
use crate::validation::{self, parse_json, CreatePaymentBody};
use crate::{authenticate, forward, json, respond, AppState};
use bytes::Bytes;
use payrail_actors::payment::Command;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use warp::http::StatusCode;
use warp::reply::Response;

pub(crate) async fn create_payment(
    state: AppState,
    incoming: forward::Incoming,
    auth: Option<String>,
    idempotency_key: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let body = body?;
            if let Some(answer) = forward::to_owner(&state, &merchant_id, &incoming, &body).await? {
                return Ok(answer);
            }
            let key = validation::idempotency_key(idempotency_key)?;
            let body: CreatePaymentBody = parse_json(&body)?;
            let command = body.into_command(key.clone())?;
            let idempotency = match (&key, &command.request_fingerprint) {
                (Some(k), Some(f)) => Some((k.clone(), f.clone())),
                _ => None,
            };
            let correlation_id = key
                .clone()
                .or_else(|| Some(crate::request_id::of(&incoming.headers)));
            let view = state
                .node
                .create_payment(
                    &merchant_id,
                    payrail_actors::payment::Command::Create(command),
                    idempotency,
                    correlation_id,
                )
                .await?;
            Ok(json(StatusCode::CREATED, &view))
        }
        .await,
    )
}

pub(crate) async fn get_payment(
    state: AppState,
    incoming: forward::Incoming,
    payment_id: String,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            if let Some(answer) =
                forward::to_owner(&state, &merchant_id, &incoming, &Bytes::new()).await?
            {
                return Ok(answer);
            }
            if payment_id.len() > 64 || !payment_id.starts_with("pay_") {
                return Err(ApiError::not_found("No such payment"));
            }
            let view = state.node.get_payment(&merchant_id, &payment_id).await?;
            Ok(json(StatusCode::OK, &view))
        }
        .await,
    )
}

pub(crate) fn valid_payment_id(payment_id: &str) -> Result<(), ApiError> {
    if payment_id.len() > 64 || !payment_id.starts_with("pay_") {
        return Err(ApiError::not_found("No such payment"));
    }
    Ok(())
}

/// The payment actions: `confirm`, `capture`, `cancel`.
pub(crate) async fn payment_action(
    state: AppState,
    incoming: forward::Incoming,
    payment_id: String,
    action: String,
    auth: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let body = body?;
            if let Some(answer) = forward::to_owner(&state, &merchant_id, &incoming, &body).await? {
                return Ok(answer);
            }
            valid_payment_id(&payment_id)?;
            let command = match action.as_str() {
                "confirm" => {
                    let b: validation::ConfirmBody = parse_json(&body)?;
                    b.validate()?;
                    Command::Confirm {
                        payment_method: b.payment_method,
                        capture_method: b.capture_method,
                        psp_reference: None,
                    }
                }
                "capture" => {
                    let b: validation::CaptureBody = validation::parse_optional_json(&body)?;
                    validation::optional_amount(b.amount)?;
                    Command::Capture { amount: b.amount }
                }
                "cancel" => {
                    let b: validation::CancelBody = validation::parse_optional_json(&body)?;
                    validation::optional_reason(&b.cancellation_reason, "cancellation_reason")?;
                    Command::Cancel {
                        reason: b.cancellation_reason,
                    }
                }
                _ => return Err(ApiError::not_found("Unrecognized request URL")),
            };
            let correlation_id = Some(crate::request_id::of(&incoming.headers));
            let view = state
                .node
                .command(&merchant_id, &payment_id, command, correlation_id)
                .await?;
            Ok(json(StatusCode::OK, &view))
        }
        .await,
    )
}

pub(crate) async fn create_refund(
    state: AppState,
    incoming: forward::Incoming,
    payment_id: String,
    auth: Option<String>,
    idempotency_key: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            use sha2::{Digest, Sha256};
            let merchant_id = authenticate(&state, &auth).await?;
            let body = body?;
            if let Some(answer) = forward::to_owner(&state, &merchant_id, &incoming, &body).await? {
                return Ok(answer);
            }
            valid_payment_id(&payment_id)?;
            let key = validation::idempotency_key(idempotency_key)?;
            let b: validation::RefundBody = validation::parse_optional_json(&body)?;
            validation::optional_amount(b.amount)?;
            validation::optional_reason(&b.reason, "reason")?;
            // With an Idempotency-Key the refund id is derived from it, so a retried request
            // finds the same refund instead of refunding twice.
            let refund_id = match &key {
                Some(key) => {
                    let digest = Sha256::digest(format!("{payment_id}:{key}").as_bytes());
                    format!("re_{}", &hex::encode(digest)[..32])
                }
                None => format!("re_{}", uuid::Uuid::now_v7().simple()),
            };
            let command = Command::CreateRefund {
                refund_id: refund_id.clone(),
                amount: b.amount,
                reason: b.reason,
            };
            let correlation_id = key.or_else(|| Some(crate::request_id::of(&incoming.headers)));
            let view = state
                .node
                .command(&merchant_id, &payment_id, command, correlation_id)
                .await?;
            let refund = view
                .refunds
                .iter()
                .find(|r| r.id == refund_id)
                .ok_or_else(|| ApiError::internal("refund missing after creation"))?;
            Ok(json(StatusCode::CREATED, refund))
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ListResponse {
    object: &'static str,
    data: Vec<payrail_actors::payment::PaymentView>,
    has_more: bool,
    url: &'static str,
}

pub(crate) async fn list_payments(
    state: AppState,
    query: ListQuery,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let limit = query.limit.unwrap_or(10);
            if !(1..=100).contains(&limit) {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    "limit must be between 1 and 100",
                    Some("limit"),
                ));
            }
            if let Some(after) = &query.starting_after {
                valid_payment_id(after).map_err(|_| {
                    ApiError::invalid(
                        "parameter_invalid",
                        "starting_after must be a payment id",
                        Some("starting_after"),
                    )
                })?;
            }
            let (payments, has_more) = payrail_actors::snapshots::list_payments(
                &state.pool,
                &merchant_id,
                limit,
                query.starting_after.as_deref(),
            )
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(
                StatusCode::OK,
                &ListResponse {
                    object: "list",
                    data: payments.iter().map(Into::into).collect(),
                    has_more,
                    url: "/v1/payments",
                },
            ))
        }
        .await,
    )
}
