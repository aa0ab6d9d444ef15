//! The HTTP surface (warp): merchant REST API, admin API and ops endpoints.
//!
//! Handlers return complete responses; domain errors become error objects in one place,
//! [`error::ApiError`]. Every body is size-limited (`http.max_body_bytes`).

pub mod error;
pub mod forward;
mod internal;
pub mod notifications;
mod ops;
pub mod validation;

use bytes::Bytes;
use error::ApiError;
use payrail_actors::merchants::MerchantRegistry;
use payrail_actors::payment::Command;
use payrail_actors::pools::analytics;
use payrail_actors::NodeHandle;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;
use validation::{parse_json, CreateMerchantBody, CreatePaymentBody};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// `[http]` in config.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    /// Address the API listens on.
    pub bind: String,
    /// Bearer token of the admin API. Set it through PAYRAIL__HTTP__ADMIN_TOKEN in production.
    pub admin_token: String,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            admin_token: String::new(),
            max_body_bytes: 64 * 1024,
        }
    }
}

impl HttpOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.bind.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "http.bind: {:?} is not ip:port (e.g. 127.0.0.1:8080)",
                self.bind
            ));
        }
        if self.admin_token.len() < 16 || !self.admin_token.chars().all(|c| c.is_ascii_graphic()) {
            return Err("http.admin_token: must be at least 16 visible ASCII characters (set PAYRAIL__HTTP__ADMIN_TOKEN)".into());
        }
        if !(1_024..=10 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err("http.max_body_bytes: allowed 1024..=10485760".into());
        }
        Ok(())
    }
}

/// Largest body of an internal request (a batch of spooled events, hex-encoded).
const INTERNAL_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// What the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub node: NodeHandle,
    pub merchants: MerchantRegistry,
    pub admin_token: String,
    pub pool: sqlx::PgPool,
    /// Shared secret of PSP webhook signatures.
    pub psp_webhook_secret: String,
    /// Accepted age of a signed webhook (s).
    pub psp_webhook_tolerance_s: i64,
    pub settlements: payrail_actors::pools::settlement::SettlementService,
    /// The node's journal consumers (snapshots and the four pools), for their lag.
    pub consumers: kafka_journal::lag::ConsumerMonitor,
    /// `cluster.secret`: authenticates node-to-node requests (`/internal/...`).
    pub cluster_secret: String,
    /// This node's pools, fed spooled events during a journal outage.
    pub pool_sink: payrail_actors::fallback::PoolSink,
    /// In a cluster: sends requests for partitions this node does not own to their owner.
    pub forwarder: Option<forward::Forwarder>,
}

/// A request body read up to `limit` bytes, whether or not the client sent Content-Length
/// (a chunked body is cut off at the limit too).
type LimitedBody = Result<Bytes, ApiError>;

fn limited_body(
    limit: u64,
) -> impl Filter<Extract = (LimitedBody,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, stream| read_limited(limit, length, stream))
}

/// An oversized body is read and discarded up to this many bytes before the 413 is sent, so
/// a client still writing its body can read the error instead of a reset connection. Past
/// it the connection is closed.
const DRAIN_LIMIT_BYTES: u64 = 1024 * 1024;

async fn drain<S, B>(stream: &mut std::pin::Pin<Box<S>>, limit: u64)
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut seen: u64 = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.remaining() as u64;
        if seen > limit {
            break;
        }
    }
}

async fn read_limited<S, B>(
    limit: u64,
    length: Option<u64>,
    stream: S,
) -> Result<LimitedBody, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    use bytes::BufMut;
    use futures::StreamExt;
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "invalid_request_error",
        code: "body_too_large",
        message: format!("The request body is larger than {limit} bytes"),
        param: None,
        payment_status: None,
    };
    let mut stream = Box::pin(stream);
    if length.is_some_and(|l| l > limit) {
        drain(&mut stream, DRAIN_LIMIT_BYTES).await;
        return Ok(Err(too_large()));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let Ok(mut chunk) = chunk else {
            return Ok(Err(ApiError::invalid(
                "body_unreadable",
                "The request body could not be read",
                None,
            )));
        };
        if (body.len() + chunk.remaining()) as u64 > limit {
            drain(&mut stream, DRAIN_LIMIT_BYTES).await;
            return Ok(Err(too_large()));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.put_slice(part);
            chunk.advance(n);
        }
    }
    Ok(Ok(body.freeze()))
}

fn with<T: Clone + Send>(value: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

fn bearer(header: &Option<String>) -> Option<&str> {
    header.as_deref()?.strip_prefix("Bearer ").map(str::trim)
}

async fn authenticate(state: &AppState, header: &Option<String>) -> Result<String, ApiError> {
    let Some(key) = bearer(header) else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. Use Authorization: Bearer <key>.",
        ));
    };
    match state.merchants.authenticate(key).await {
        Ok(Some(merchant_id)) => Ok(merchant_id),
        Ok(None) => Err(ApiError::unauthorized("Invalid API key provided")),
        Err(e) => {
            tracing::error!(error = %e, "authentication lookup failed");
            Err(ApiError::unavailable(
                "database_unavailable",
                "Authentication is unavailable",
            ))
        }
    }
}

fn authorize_admin(state: &AppState, header: &Option<String>) -> Result<(), ApiError> {
    let given = bearer(header).unwrap_or("");
    let ok: bool = given.as_bytes().ct_eq(state.admin_token.as_bytes()).into();
    if ok && !given.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Invalid or missing admin token"))
    }
}

pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn respond(result: Result<Response, ApiError>) -> Result<Response, Infallible> {
    Ok(result.unwrap_or_else(ApiError::into_response))
}

async fn create_merchant(
    state: AppState,
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
                .create(body.name.trim(), body.webhook_url.as_deref())
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(StatusCode::CREATED, &merchant))
        }
        .await,
    )
}

async fn create_payment(
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
                .or_else(|| Some(format!("req_{}", uuid::Uuid::now_v7().simple())));
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

async fn get_payment(
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

fn valid_payment_id(payment_id: &str) -> Result<(), ApiError> {
    if payment_id.len() > 64 || !payment_id.starts_with("pay_") {
        return Err(ApiError::not_found("No such payment"));
    }
    Ok(())
}

/// The payment actions: `confirm`, `capture`, `cancel`.
async fn payment_action(
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
            let correlation_id = Some(format!("req_{}", uuid::Uuid::now_v7().simple()));
            let view = state
                .node
                .command(&merchant_id, &payment_id, command, correlation_id)
                .await?;
            Ok(json(StatusCode::OK, &view))
        }
        .await,
    )
}

async fn create_refund(
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
            let correlation_id =
                key.or_else(|| Some(format!("req_{}", uuid::Uuid::now_v7().simple())));
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
struct ListQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
}

#[derive(Serialize)]
struct ListResponse {
    object: &'static str,
    data: Vec<payrail_actors::payment::PaymentView>,
    has_more: bool,
    url: &'static str,
}

async fn list_payments(
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

#[derive(Debug, Deserialize)]
struct PspEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: PspEventData,
}

#[derive(Debug, Deserialize)]
struct PspEventData {
    object: serde_json::Value,
}

/// `POST /webhooks/psp/{channel}`: verify the signature over the raw body, de-duplicate by
/// the PSP's event id, route the outcome to the payment actor.
async fn psp_webhook(
    state: AppState,
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
            .map_err(|e| match e {
                SignatureError::Missing | SignatureError::Malformed => {
                    ApiError::invalid("signature_invalid", e.to_string(), Some("Stripe-Signature"))
                }
                SignatureError::Stale | SignatureError::Mismatch => ApiError {
                    status: StatusCode::UNAUTHORIZED,
                    kind: "authentication_error",
                    code: "signature_invalid",
                    message: e.to_string(),
                    param: Some("Stripe-Signature".into()),
                    payment_status: None,
                },
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
                Some(Command::RecordOutcome(intent.outcome()))
            } else if event.kind.starts_with("refund.") {
                let refund: payrail_actors::psp::PspRefund = serde_json::from_value(event.data.object.clone())
                    .map_err(|e| ApiError::invalid("parameter_invalid", e.to_string(), Some("data.object")))?;
                match (refund.metadata.get("refund_id"), refund.status.as_str()) {
                    (Some(refund_id), "succeeded" | "failed") => Some(Command::RecordRefundOutcome {
                        refund_id: refund_id.clone(),
                        succeeded: refund.status == "succeeded",
                        psp_reference: Some(refund.id.clone()),
                        code: (refund.status == "failed").then(|| "refund_failed".to_string()),
                    }),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(command) = command {
                match state
                    .node
                    .command(merchant_id, payment_id, command, Some(event.id.clone()))
                    .await
                {
                    Ok(_) | Err(payrail_actors::CommandError::NotFound) | Err(payrail_actors::CommandError::Refused(_)) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            sqlx::query("UPDATE psp_webhook_events SET processed = true WHERE channel = $1 AND event_id = $2")
                .bind(&channel)
                .bind(&event.id)
                .execute(&state.pool)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(json(StatusCode::OK, &serde_json::json!({"received": true})))
        }
        .await,
    )
}

#[derive(Serialize)]
struct BalanceResponse {
    object: &'static str,
    pending: Vec<payrail_actors::pools::ledger::Amount>,
    available: Vec<payrail_actors::pools::ledger::Amount>,
}

async fn balance(state: AppState, auth: Option<String>) -> Result<Response, Infallible> {
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
struct EntriesQuery {
    payment_id: Option<String>,
}

async fn ledger_entries(
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

fn settlement_error(error: payrail_actors::pools::settlement::SettlementError) -> ApiError {
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
struct RunBody {
    /// Unix seconds; default now.
    #[serde(default)]
    cutoff: Option<i64>,
}

async fn run_settlements(
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

async fn pay_settlement(
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

async fn list_settlements(state: AppState, auth: Option<String>) -> Result<Response, Infallible> {
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

async fn channel_metrics(
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
struct MetricsQuery {
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
struct MetricsResponse {
    object: &'static str,
    merchant_id: String,
    date: String,
    data: Vec<analytics::CurrencyMetrics>,
}

async fn payment_metrics(
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

/// `GET /v1/admin/consumers`: each journal consumer of this node with its lag in records
/// (broker high watermark − next offset to apply) and the histogram of its append-to-apply
/// delays since start (see `kafka_journal::lag`).
async fn consumer_lag(state: AppState, auth: Option<String>) -> Result<Response, Infallible> {
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

/// All routes, with error recovery.
pub fn routes(
    state: AppState,
    max_body_bytes: u64,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let auth = warp::header::optional::<String>("authorization");
    let body = limited_body(max_body_bytes);
    // A delivered batch is bounded by its event count, not the API's body limit.
    let internal_body = limited_body(INTERNAL_MAX_BODY_BYTES);

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json(StatusCode::OK, &serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with(state.clone()))
        .and_then(ops::readyz);
    let merchants = warp::path!("v1" / "merchants")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and(body.clone())
        .and_then(create_merchant);
    let create = warp::path!("v1" / "payments")
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(body.clone())
        .and_then(create_payment);
    let get = warp::path!("v1" / "payments" / String)
        .and(warp::get())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and_then(|id, state, incoming, auth| get_payment(state, incoming, id, auth));
    let list = warp::path!("v1" / "payments")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<ListQuery>())
        .and(auth)
        .and_then(list_payments);
    let action = warp::path!("v1" / "payments" / String / String)
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(body.clone())
        .and_then(|id, action, state, incoming, auth, body| {
            payment_action(state, incoming, id, action, auth, body)
        });
    let refunds = warp::path!("v1" / "payments" / String / "refunds")
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(auth)
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(body.clone())
        .and_then(|id, state, incoming, auth, key, body| {
            create_refund(state, incoming, id, auth, key, body)
        });
    let webhook = warp::path!("webhooks" / "psp" / String)
        .and(warp::post())
        .and(with(state.clone()))
        .and(forward::incoming())
        .and(warp::header::optional::<String>("stripe-signature"))
        .and(body.clone())
        .and_then(|channel, state, incoming, signature, body| {
            psp_webhook(state, incoming, channel, signature, body)
        });
    let balance_route = warp::path!("v1" / "balance")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(balance);
    let entries = warp::path!("v1" / "ledger" / "entries")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<EntriesQuery>())
        .and(auth)
        .and_then(ledger_entries);
    let settlements_run = warp::path!("v1" / "settlements" / "run")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and(body.clone())
        .and_then(run_settlements);
    let settlements_pay = warp::path!("v1" / "settlements" / String / "pay")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and_then(|id, state, auth| pay_settlement(state, id, auth));
    let settlements_list = warp::path!("v1" / "settlements")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(list_settlements);
    let channels = warp::path!("v1" / "analytics" / "channel-metrics")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<MetricsQuery>())
        .and(auth)
        .and_then(channel_metrics);
    let consumers = warp::path!("v1" / "admin" / "consumers")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(consumer_lag);
    let journal_admin = warp::path!("v1" / "admin" / "journal")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(ops::journal_status);
    let cluster_admin = warp::path!("v1" / "admin" / "cluster")
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(ops::cluster_status);
    let internal_events = warp::path!("internal" / "v1" / "events")
        .and(warp::post())
        .and(with(state.clone()))
        .and(warp::header::optional::<String>(
            payrail_actors::fallback::CLUSTER_SECRET_HEADER,
        ))
        .and(internal_body)
        .and_then(internal::receive_events);
    let money = balance_route
        .or(entries)
        .unify()
        .or(settlements_run)
        .unify()
        .or(settlements_pay)
        .unify()
        .or(settlements_list)
        .unify()
        .or(channels)
        .unify()
        .or(consumers)
        .unify()
        .or(journal_admin)
        .unify()
        .or(cluster_admin)
        .unify()
        .or(internal_events)
        .unify();
    let metrics = warp::path!("v1" / "analytics" / "payment-metrics")
        .and(warp::get())
        .and(with(state.clone()))
        .and(warp::query::<MetricsQuery>())
        .and(auth)
        .and_then(payment_metrics);

    healthz
        .or(readyz)
        .unify()
        .or(merchants)
        .unify()
        .or(create)
        .unify()
        .or(get)
        .unify()
        .or(metrics)
        .unify()
        .or(list)
        .unify()
        .or(refunds)
        .unify()
        .or(action)
        .unify()
        .or(webhook)
        .unify()
        .or(money)
        .unify()
        .or(notifications::routes(state.clone()))
        .unify()
        .recover(error::recover)
        .unify()
        .with(warp::trace::request())
}
