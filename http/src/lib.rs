//! The HTTP surface (warp): merchant REST API, admin API and ops endpoints.
//!
//! Handlers return complete responses; domain errors become error objects in one place,
//! [`error::ApiError`]. Every body is size-limited (`http.max_body_bytes`).

pub mod error;
pub mod validation;

use bytes::Bytes;
use error::ApiError;
use payrail_actors::merchants::MerchantRegistry;
use payrail_actors::pools::analytics;
use payrail_actors::NodeHandle;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
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

/// What the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub node: NodeHandle,
    pub merchants: MerchantRegistry,
    pub admin_token: String,
    pub pool: sqlx::PgPool,
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
    if length.is_some_and(|l| l > limit) {
        return Ok(Err(too_large()));
    }
    let mut stream = Box::pin(stream);
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

fn json(status: StatusCode, value: &impl Serialize) -> Response {
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
    auth: Option<String>,
    idempotency_key: Option<String>,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            let body = body?;
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
    payment_id: String,
    auth: Option<String>,
) -> Result<Response, Infallible> {
    respond(
        async {
            let merchant_id = authenticate(&state, &auth).await?;
            if payment_id.len() > 64 || !payment_id.starts_with("pay_") {
                return Err(ApiError::not_found("No such payment"));
            }
            let view = state.node.get_payment(&merchant_id, &payment_id).await?;
            Ok(json(StatusCode::OK, &view))
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
struct MetricsQuery {
    date: Option<String>,
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
            let Some(date) = query.date else {
                return Err(ApiError::invalid(
                    "parameter_missing",
                    "date is required (YYYY-MM-DD)",
                    Some("date"),
                ));
            };
            let day = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").map_err(|_| {
                ApiError::invalid("parameter_invalid", "date must be YYYY-MM-DD", Some("date"))
            })?;
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

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    journal: bool,
    database: bool,
    partitions: bool,
}

async fn readyz(state: AppState) -> Result<Response, Infallible> {
    let journal = state
        .node
        .runtime()
        .producer
        .is_reachable(Duration::from_secs(2))
        .await;
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    let partitions = state.node.is_ready();
    let ready = journal && database && partitions;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(
        status,
        &Readiness {
            ready,
            journal,
            database,
            partitions,
        },
    ))
}

/// All routes, with error recovery.
pub fn routes(
    state: AppState,
    max_body_bytes: u64,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let auth = warp::header::optional::<String>("authorization");
    let body = limited_body(max_body_bytes);

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json(StatusCode::OK, &serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with(state.clone()))
        .and_then(readyz);
    let merchants = warp::path!("v1" / "merchants")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and(body.clone())
        .and_then(create_merchant);
    let create = warp::path!("v1" / "payments")
        .and(warp::post())
        .and(with(state.clone()))
        .and(auth)
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(body)
        .and_then(create_payment);
    let get = warp::path!("v1" / "payments" / String)
        .and(warp::get())
        .and(with(state.clone()))
        .and(auth)
        .and_then(|id, state, auth| get_payment(state, id, auth));
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
        .recover(error::recover)
        .unify()
        .with(warp::trace::request())
}
