//! The merchant API's payment routes: create, read, confirm/capture/cancel, refund, list.

use crate::body::LimitedBody;
use crate::error::{ApiError, ErrorResponse};
use crate::validation::{self, parse_json, CreatePaymentBody};
use crate::{authenticate, forward, json, respond, AppState};
use bytes::Bytes;
use payrail_actors::payment::Command;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;

/// `POST /v1/payments`: records `payment.created` in the journal, then answers.
#[utoipa::path(
    post,
    path = "/v1/payments",
    tag = "payments",
    security(("merchant_api_key" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, max_length = 255,
         description = "A retry with the same key and body answers the first result and records nothing twice."),
    ),
    request_body = CreatePaymentBody,
    responses(
        (status = 201, description = "Created", body = payrail_actors::payment::PaymentView),
        (status = 400, description = "Invalid request", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 422, description = "Idempotency-Key used with another body", body = ErrorResponse),
        (status = 503, description = "Journal unavailable, outcome unknown, or node not ready (Retry-After)", body = ErrorResponse),
    )
)]
pub(crate) async fn create_payment(
    state: Arc<AppState>,
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

/// `GET /v1/payments/{id}`.
#[utoipa::path(
    get,
    path = "/v1/payments/{id}",
    tag = "payments",
    security(("merchant_api_key" = [])),
    params(("id" = String, Path, description = "The payment id (`pay_…`).")),
    responses(
        (status = 200, description = "The payment", body = payrail_actors::payment::PaymentView),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 404, description = "No such payment (or another merchant's)", body = ErrorResponse),
        (status = 503, description = "Not available now (Retry-After)", body = ErrorResponse),
    )
)]
pub(crate) async fn get_payment(
    state: Arc<AppState>,
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

/// `POST /v1/payments/{id}/confirm`: attaches a payment method and asks the PSP.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/confirm",
    tag = "payments",
    security(("merchant_api_key" = [])),
    params(("id" = String, Path, description = "The payment id (`pay_…`).")),
    request_body = validation::ConfirmBody,
    responses(
        (status = 200, description = "The payment after the command", body = payrail_actors::payment::PaymentView),
        (status = 400, description = "Invalid request, or the PSP refused it", body = ErrorResponse),
        (status = 409, description = "A transition the payment's status refuses (`payment_status` says which)", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 404, description = "No such payment", body = ErrorResponse),
        (status = 502, description = "The PSP did not answer; nothing recorded", body = ErrorResponse),
        (status = 503, description = "Not available now (Retry-After)", body = ErrorResponse),
    )
)]
pub(crate) async fn confirm_payment(
    state: Arc<AppState>,
    incoming: forward::Incoming,
    payment_id: String,
    auth: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    payment_action(state, incoming, payment_id, Action::Confirm, auth, body).await
}

/// `POST /v1/payments/{id}/capture`: captures all or part of an authorized amount.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/capture",
    tag = "payments",
    security(("merchant_api_key" = [])),
    params(("id" = String, Path, description = "The payment id (`pay_…`).")),
    request_body(content = Option<validation::CaptureBody>, description = "Optional; empty captures the whole amount."),
    responses(
        (status = 200, description = "The payment after the command", body = payrail_actors::payment::PaymentView),
        (status = 400, description = "Invalid request, or the PSP refused it", body = ErrorResponse),
        (status = 409, description = "A transition the payment's status refuses (`payment_status` says which)", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 404, description = "No such payment", body = ErrorResponse),
        (status = 502, description = "The PSP did not answer; nothing recorded", body = ErrorResponse),
        (status = 503, description = "Not available now (Retry-After)", body = ErrorResponse),
    )
)]
pub(crate) async fn capture_payment(
    state: Arc<AppState>,
    incoming: forward::Incoming,
    payment_id: String,
    auth: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    payment_action(state, incoming, payment_id, Action::Capture, auth, body).await
}

/// `POST /v1/payments/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/cancel",
    tag = "payments",
    security(("merchant_api_key" = [])),
    params(("id" = String, Path, description = "The payment id (`pay_…`).")),
    request_body(content = Option<validation::CancelBody>, description = "Optional."),
    responses(
        (status = 200, description = "The payment after the command", body = payrail_actors::payment::PaymentView),
        (status = 400, description = "Invalid request, or the PSP refused it", body = ErrorResponse),
        (status = 409, description = "A transition the payment's status refuses (`payment_status` says which)", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 404, description = "No such payment", body = ErrorResponse),
        (status = 502, description = "The PSP did not answer; nothing recorded", body = ErrorResponse),
        (status = 503, description = "Not available now (Retry-After)", body = ErrorResponse),
    )
)]
pub(crate) async fn cancel_payment(
    state: Arc<AppState>,
    incoming: forward::Incoming,
    payment_id: String,
    auth: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    payment_action(state, incoming, payment_id, Action::Cancel, auth, body).await
}

/// The payment actions, each its own route.
enum Action {
    Confirm,
    Capture,
    Cancel,
}

async fn payment_action(
    state: Arc<AppState>,
    incoming: forward::Incoming,
    payment_id: String,
    action: Action,
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
            let command = match action {
                Action::Confirm => {
                    let b: validation::ConfirmBody = parse_json(&body)?;
                    b.validate()?;
                    Command::Confirm {
                        payment_method: b.payment_method,
                        capture_method: b.capture_method,
                        psp_reference: None,
                    }
                }
                Action::Capture => {
                    let b: validation::CaptureBody = validation::parse_optional_json(&body)?;
                    validation::optional_amount(b.amount)?;
                    Command::Capture { amount: b.amount }
                }
                Action::Cancel => {
                    let b: validation::CancelBody = validation::parse_optional_json(&body)?;
                    validation::optional_reason(&b.cancellation_reason, "cancellation_reason")?;
                    Command::Cancel {
                        reason: b.cancellation_reason,
                    }
                }
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

/// `POST /v1/payments/{id}/refunds`: refunds all or part of the captured amount.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/refunds",
    tag = "payments",
    security(("merchant_api_key" = [])),
    params(
        ("id" = String, Path, description = "The payment id (`pay_…`)."),
        ("Idempotency-Key" = Option<String>, Header, max_length = 255,
         description = "A retry with the same key finds the same refund instead of refunding twice."),
    ),
    request_body(content = Option<validation::RefundBody>, description = "Optional; empty refunds what is left."),
    responses(
        (status = 201, description = "The refund", body = payrail_actors::payment::RefundView),
        (status = 400, description = "Invalid request, more than is refundable, or the PSP refused it", body = ErrorResponse),
        (status = 409, description = "Not refundable in the payment's status (`payment_status` says which)", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
        (status = 404, description = "No such payment", body = ErrorResponse),
        (status = 502, description = "The PSP did not answer; nothing recorded", body = ErrorResponse),
        (status = 503, description = "Not available now (Retry-After)", body = ErrorResponse),
    )
)]
pub(crate) async fn create_refund(
    state: Arc<AppState>,
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// 1 to 100; default 10.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// A payment id: the page starts after it.
    starting_after: Option<String>,
}

/// A page of payments, newest first.
#[derive(Serialize, utoipa::ToSchema)]
// Its own component name: two `ListResponse`s would be one schema in the document.
#[schema(as = PaymentList)]
pub(crate) struct ListResponse {
    #[schema(value_type = String)]
    object: &'static str,
    data: Vec<payrail_actors::payment::PaymentView>,
    has_more: bool,
    #[schema(value_type = String)]
    url: &'static str,
}

/// `GET /v1/payments`: the merchant's payments, newest first.
#[utoipa::path(
    get,
    path = "/v1/payments",
    tag = "payments",
    security(("merchant_api_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of payments", body = ListResponse),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 401, description = "No or unknown API key", body = ErrorResponse),
    )
)]
pub(crate) async fn list_payments(
    state: Arc<AppState>,
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
