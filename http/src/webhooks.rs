//! `POST /webhooks/psp/{channel}`: the PSP's signed webhooks.

use crate::body::LimitedBody;
use crate::error::{ApiError, ErrorResponse};
use crate::validation::parse_json;
use crate::{forward, json, respond, AppState};
use payrail_actors::payment::Command;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, Deserialize)]
pub(crate) struct PspEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: PspEventData,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PspEventData {
    object: serde_json::Value,
}

/// The PSP's event (Stripe's shape): `{"id":"evt_…","type":"payment_intent.succeeded",
/// "data":{"object":{…}}}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct PspEventSchema {
    id: String,
    #[schema(rename = "type")]
    kind: String,
    data: PspEventDataSchema,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct PspEventDataSchema {
    object: serde_json::Value,
}

/// `POST /webhooks/psp/{channel}`: verify the signature over the raw body, de-duplicate by
/// the PSP's event id, route the outcome to the payment actor.
#[utoipa::path(
    post,
    path = "/webhooks/psp/{channel}",
    tag = "webhooks",
    security(("psp_signature" = [])),
    params(("channel" = String, Path, description = "The PSP channel; `sandbox`.")),
    request_body = PspEventSchema,
    responses(
        (status = 200, description = "Received (also for duplicates and events of no payrail payment)", body = Object),
        (status = 400, description = "Malformed event", body = ErrorResponse),
        (status = 415, description = "A body that is not JSON (Content-Type)", body = ErrorResponse),
        (status = 401, description = "Signature missing, malformed, not matching the body, or too old", body = ErrorResponse),
        (status = 404, description = "Unknown channel", body = ErrorResponse),
        (status = 503, description = "Not available now (Retry-After)", body = ErrorResponse),
    )
)]
pub(crate) async fn psp_webhook(
    state: Arc<AppState>,
    incoming: forward::Incoming,
    channel: String,
    signature_header: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            use payrail_actors::signature::{verify, SignatureError};
            if channel != "sandbox" {
                return Err(ApiError::not_found("Unknown PSP channel"));
            }
            let body = body?;
            let now = chrono::Utc::now().timestamp();
            verify(
                signature_header.as_deref(),
                &body,
                &state.psp_webhook_secret,
                state.psp_webhook_tolerance_s,
                now,
            )
            // The signature is this route's credential: missing, malformed, stale or wrong,
            // it is refused like any other credential (401, authentication_error).
            .map_err(|e: SignatureError| ApiError {
                status: StatusCode::UNAUTHORIZED,
                kind: "authentication_error",
                code: "signature_invalid",
                message: e.to_string(),
                param: Some("Stripe-Signature".into()),
                payment_status: None,
            })?;
            let event: PspEvent = parse_json(&body)?;
            let metadata = &event.data.object["metadata"];
            let (Some(merchant_id), Some(payment_id)) =
                (metadata["merchant_id"].as_str(), metadata["payment_id"].as_str())
            else {
                return Ok(json(StatusCode::OK, &serde_json::json!({"received": true, "ignored": "no payrail payment"})));
            };
            // Verified here and again by the owner (it gets the same body and signature).
            if let Some(answer) = forward::to_owner(&state, merchant_id, &incoming, &body).await? {
                return Ok(answer);
            }
            let first_time = sqlx::query(
                "INSERT INTO psp_webhook_events (channel, event_id, event_type, payment_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&channel)
            .bind(&event.id)
            .bind(&event.kind)
            .bind(payment_id)
            .execute(&state.pool)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .rows_affected()
                == 1;
            if !first_time {
                let processed: bool = sqlx::query_scalar(
                    "SELECT processed FROM psp_webhook_events WHERE channel = $1 AND event_id = $2",
                )
                .bind(&channel)
                .bind(&event.id)
                .fetch_one(&state.pool)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
                if processed {
                    return Ok(json(StatusCode::OK, &serde_json::json!({"received": true, "duplicate": true})));
                }
            }
            let command = if event.kind.starts_with("payment_intent.") {
                let intent: payrail_actors::psp::PspIntent = serde_json::from_value(event.data.object.clone())
                    .map_err(|e| ApiError::invalid("parameter_invalid", e.to_string(), Some("data.object")))?;
                Some(Command::FromProcessor {
                    psp_reference: intent.id.clone(),
                    command: Box::new(Command::RecordOutcome(intent.outcome())),
                })
            } else if event.kind.starts_with("refund.") {
                let refund: payrail_actors::psp::PspRefund = serde_json::from_value(event.data.object.clone())
                    .map_err(|e| ApiError::invalid("parameter_invalid", e.to_string(), Some("data.object")))?;
                match (refund.metadata.get("refund_id"), refund.status.as_str()) {
                    (Some(refund_id), "succeeded" | "failed") => Some(Command::FromProcessor {
                        // A refund names the intent it refunds; none matches no payment.
                        psp_reference: refund.payment_intent.clone().unwrap_or_default(),
                        command: Box::new(Command::RecordRefundOutcome {
                            refund_id: refund_id.clone(),
                            succeeded: refund.status == "succeeded",
                            psp_reference: Some(refund.id.clone()),
                            code: (refund.status == "failed").then(|| "refund_failed".to_string()),
                        }),
                    }),
                    _ => None,
                }
            } else {
                None
            };
            let mut ignored = None;
            if let Some(command) = command {
                match state
                    .node
                    .command(merchant_id, payment_id, command, Some(event.id.clone()))
                    .await
                {
                    Ok(_) | Err(payrail_actors::CommandError::NotFound) => {}
                    Err(payrail_actors::CommandError::Refused(refusal)) => {
                        // Received (the sender must not retry it), but it changed nothing.
                        tracing::warn!(merchant_id, payment_id, event_id = %event.id, %refusal, "PSP webhook refused");
                        ignored = Some(refusal.to_string());
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            sqlx::query("UPDATE psp_webhook_events SET processed = true WHERE channel = $1 AND event_id = $2")
                .bind(&channel)
                .bind(&event.id)
                .execute(&state.pool)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(StatusCode::OK, &match ignored {
                Some(why) => serde_json::json!({"received": true, "ignored": why}),
                None => serde_json::json!({"received": true}),
            }))
        }
        .await,
    )
}
