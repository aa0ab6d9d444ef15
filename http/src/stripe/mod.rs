//! The Stripe-compatible API (issue 26): `/v1/payment_intents…` and `/v1/refunds…` as the
//! official Stripe SDKs call them (form-encoded bodies with bracket notation, Stripe's
//! objects, lists and error types), over the same `NodeHandle` commands as the native
//! routes. This module is the edge only: it decodes (`payrail_stripe_compat::form`), checks,
//! builds payrail commands and translates views and errors back
//! (`payrail_stripe_compat::{objects, error}`); the state machine, journal, idempotency,
//! fallback and cluster routing are the runtime's own. What is and is not supported:
//! docs/stripe-compat.md.
//!
//! Split by concern: this module routes a request, decodes its parameters and translates
//! between payrail and Stripe (errors, views); [`operations`] holds the operations
//! themselves (one method of `Request` each); [`doc`] is the OpenAPI document's view of
//! these routes.

use crate::body::LimitedBody;
use crate::error::ApiError;
use crate::validation::{self, ConfirmBody};
use crate::{authenticate, forward, with, AppState};
use payrail_actors::payment::{CaptureMethod, PaymentView};
use payrail_actors::snapshots::Cursor;
use payrail_actors::CommandError;
use payrail_stripe_compat::objects::{self, PaymentIntent};
use payrail_stripe_compat::{Params, StripeError};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

pub(crate) mod doc;
mod operations;

/// The Stripe header naming a request (Stripe's SDKs show it in their errors).
const REQUEST_ID_HEADER: &str = "request-id";

/// Which Stripe operation a request is.
#[derive(Debug, Clone)]
enum Route {
    CreateIntent,
    ListIntents,
    RetrieveIntent(String),
    UpdateIntent(String),
    ConfirmIntent(String),
    CaptureIntent(String),
    CancelIntent(String),
    CreateRefund,
    ListRefunds,
    RetrieveRefund(String),
}

/// The Stripe-compatible routes. Boxed: one handler behind ten paths keeps the route tree
/// (and the crate's compile time) small.
pub(crate) fn routes(state: Arc<AppState>, max_body_bytes: u64) -> BoxedFilter<(Response,)> {
    let intents = warp::path!("v1" / "payment_intents")
        .and(warp::post())
        .map(|| Route::CreateIntent)
        .or(warp::path!("v1" / "payment_intents")
            .and(warp::get())
            .map(|| Route::ListIntents))
        .unify()
        .or(warp::path!("v1" / "payment_intents" / String)
            .and(warp::get())
            .map(Route::RetrieveIntent))
        .unify()
        .or(warp::path!("v1" / "payment_intents" / String)
            .and(warp::post())
            .map(Route::UpdateIntent))
        .unify()
        .boxed();
    let actions = warp::path!("v1" / "payment_intents" / String / "confirm")
        .and(warp::post())
        .map(Route::ConfirmIntent)
        .or(warp::path!("v1" / "payment_intents" / String / "capture")
            .and(warp::post())
            .map(Route::CaptureIntent))
        .unify()
        .or(warp::path!("v1" / "payment_intents" / String / "cancel")
            .and(warp::post())
            .map(Route::CancelIntent))
        .unify()
        .boxed();
    let refunds = warp::path!("v1" / "refunds")
        .and(warp::post())
        .map(|| Route::CreateRefund)
        .or(warp::path!("v1" / "refunds")
            .and(warp::get())
            .map(|| Route::ListRefunds))
        .unify()
        .or(warp::path!("v1" / "refunds" / String)
            .and(warp::get())
            .map(Route::RetrieveRefund))
        .unify()
        .boxed();
    intents
        .or(actions)
        .unify()
        .or(refunds)
        .unify()
        .and(with(state))
        .and(forward::incoming())
        .and(crate::body::limited_body(max_body_bytes))
        .and_then(handle)
        .boxed()
}

async fn handle(
    route: Route,
    state: Arc<AppState>,
    incoming: forward::Incoming,
    body: LimitedBody,
) -> Result<Response, Infallible> {
    let request_id = crate::request_id::of(&incoming.headers);
    let mut response = match serve(route, &state, &incoming, body, &request_id).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}

fn error_response(error: &StripeError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response =
        warp::reply::with_status(warp::reply::json(&error.body()), status).into_response();
    if matches!(error.status, 429 | 503) {
        response.headers_mut().insert(
            warp::http::header::RETRY_AFTER,
            HeaderValue::from_static(crate::error::RETRY_AFTER_S),
        );
    }
    response
}

fn ok(value: &impl Serialize) -> Result<Response, StripeError> {
    Ok(crate::json(StatusCode::OK, value))
}

/// One of payrail's errors in Stripe's terms; `renames` maps payrail's parameter names to
/// the Stripe request's (`customer_email` is `receipt_email`).
fn stripe_error(error: ApiError, renames: &[(&str, &str)]) -> StripeError {
    let param = error.param.as_deref().map(|param| {
        renames
            .iter()
            .find(|(from, _)| *from == param)
            .map_or(param, |(_, to)| to)
    });
    StripeError::from_payrail(
        error.status.as_u16(),
        error.kind,
        error.code,
        &error.message,
        param,
    )
}

fn api(error: ApiError) -> StripeError {
    stripe_error(error, &[])
}

/// A command's error; a missing payment is `No such payment_intent` naming `param`.
fn command_error(error: CommandError, param: &str) -> StripeError {
    let error = ApiError::from(error);
    if error.status == StatusCode::NOT_FOUND {
        return StripeError::no_such("payment_intent", param);
    }
    api(error)
}

fn intent_of(view: PaymentView) -> PaymentIntent {
    PaymentIntent::from(&objects::Payment::from(view))
}

/// The intent as the answer of a request that confirmed it: a decline known now is Stripe's
/// 402 `card_error` (with the intent), as the SDKs expect.
fn confirmed(view: PaymentView) -> Result<Response, StripeError> {
    let declined = view.status == "failed";
    let intent = intent_of(view);
    if declined {
        return Err(StripeError::card(intent));
    }
    ok(&intent)
}

fn header<'a>(incoming: &'a forward::Incoming, name: &str) -> Option<&'a str> {
    incoming.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's parameters: the query of a GET, the form body of a POST.
fn params_of(incoming: &forward::Incoming, body: &[u8]) -> Result<Params, StripeError> {
    let params = if incoming.method == warp::http::Method::GET {
        let query = incoming
            .path_and_query
            .split_once('?')
            .map_or("", |(_, q)| q);
        Params::decode(query.as_bytes())?
    } else {
        Params::decode(body)?
    };
    Ok(params)
}

async fn serve(
    route: Route,
    state: &AppState,
    incoming: &forward::Incoming,
    body: LimitedBody,
    request_id: &str,
) -> Result<Response, StripeError> {
    let auth = header(incoming, "authorization").map(str::to_string);
    let merchant_id = authenticate(state, &auth).await.map_err(api)?;
    let body = body.map_err(api)?;
    let mut params = params_of(incoming, &body)?;
    // Lists read the shared read models: any node serves them. The rest, and one payment's
    // refunds (read from the payment itself), is the owner's.
    let shared = match route {
        Route::ListIntents => true,
        Route::ListRefunds => !params.contains("payment_intent"),
        _ => false,
    };
    if !shared {
        if let Some(answer) = forward::to_owner(state, &merchant_id, incoming, &body)
            .await
            .map_err(api)?
        {
            return Ok(answer);
        }
    }
    // Of every parameter as sent, before any is read.
    let fingerprint = matches!(route, Route::CreateIntent)
        .then(|| params.fingerprint("POST /v1/payment_intents"))
        .unwrap_or_default();
    let expand = params.string_list("expand")?;
    if !expand.is_empty() {
        return Err(StripeError::unsupported_param(
            "expand",
            "no expansion is supported (the objects have no expandable fields here)",
        ));
    }
    let idempotency_key =
        validation::idempotency_key(header(incoming, "idempotency-key").map(str::to_string))
            .map_err(api)?;
    let request = Request {
        state,
        merchant_id: &merchant_id,
        idempotency_key,
        correlation_id: request_id.to_string(),
    };
    match route {
        Route::CreateIntent => request.create_intent(params, fingerprint).await,
        Route::ListIntents => request.list_intents(params).await,
        Route::RetrieveIntent(id) => {
            params.finish()?;
            ok(&intent_of(request.payment(&id, "intent").await?))
        }
        Route::UpdateIntent(id) => request.update_intent(&id, params).await,
        Route::ConfirmIntent(id) => request.confirm_intent(&id, params).await,
        Route::CaptureIntent(id) => request.capture_intent(&id, params).await,
        Route::CancelIntent(id) => request.cancel_intent(&id, params).await,
        Route::CreateRefund => request.create_refund(params).await,
        Route::ListRefunds => request.list_refunds(params).await,
        Route::RetrieveRefund(id) => {
            params.finish()?;
            request.retrieve_refund(&id).await
        }
    }
}

/// An authenticated request of a merchant, served on the node owning its partition.
struct Request<'a> {
    state: &'a AppState,
    merchant_id: &'a str,
    idempotency_key: Option<String>,
    /// Of the journaled events: the Idempotency-Key, else the request id.
    correlation_id: String,
}

fn capture_method(value: Option<String>) -> Result<Option<CaptureMethod>, StripeError> {
    match value.as_deref() {
        None => Ok(None),
        Some("automatic") | Some("automatic_async") => Ok(Some(CaptureMethod::Automatic)),
        Some("manual") => Ok(Some(CaptureMethod::Manual)),
        Some(_) => Err(StripeError::invalid_param(
            "capture_method",
            "Invalid capture_method: must be one of automatic, automatic_async or manual",
        )),
    }
}

fn payment_method(value: String) -> Result<String, StripeError> {
    let confirm = ConfirmBody {
        payment_method: value,
        capture_method: None,
    };
    confirm.validate().map_err(api)?;
    Ok(confirm.payment_method)
}

fn one_of(
    params: &mut Params,
    name: &str,
    allowed: &[&str],
) -> Result<Option<String>, StripeError> {
    match params.string(name)? {
        Some(value) if !allowed.contains(&value.as_str()) => Err(StripeError::invalid_param(
            name,
            format!("Invalid {name}: must be one of {}", allowed.join(", ")),
        )),
        value => Ok(value),
    }
}

/// The last second of the year 9999.
const MAX_UNIX_S: i64 = 253_402_300_799;

fn clamp_unix_s(t: i64) -> i64 {
    t.clamp(0, MAX_UNIX_S)
}

/// A list's `limit` (1 to 100, default 10), `starting_after` and `ending_before`.
type PageParams = (i64, Option<String>, Option<String>);

fn page(params: &mut Params) -> Result<PageParams, StripeError> {
    let limit = params.integer("limit")?.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(StripeError::invalid_param(
            "limit",
            "Invalid limit: must be between 1 and 100",
        ));
    }
    let starting_after = params.string("starting_after")?;
    let ending_before = params.string("ending_before")?;
    if starting_after.is_some() && ending_before.is_some() {
        return Err(StripeError::invalid_param(
            "ending_before",
            "You may only specify one of these parameters: starting_after, ending_before",
        ));
    }
    Ok((limit, starting_after, ending_before))
}

fn cursor<'p>(starting_after: &'p Option<String>, ending_before: &'p Option<String>) -> Cursor<'p> {
    match (starting_after, ending_before) {
        (Some(id), _) => Cursor::After(id),
        (_, Some(id)) => Cursor::Before(id),
        _ => Cursor::Newest,
    }
}

/// Refunds created here carry their payment in their id (`re_<payment><16 hex>`), so a
/// retrieve reads the payment itself (consistent, on its owner) instead of a read model.
fn refund_id_for(payment_id: &str, idempotency_key: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let payment_hex = payment_id.strip_prefix("pay_").unwrap_or(payment_id);
    let suffix = match idempotency_key {
        Some(key) => hex::encode(Sha256::digest(
            format!("stripe:{payment_id}:{key}").as_bytes(),
        )),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    format!("re_{payment_hex}{}", &suffix[..16])
}

/// The payment of a refund id made by [`refund_id_for`].
fn payment_in_refund_id(refund_id: &str) -> Option<String> {
    let hex = refund_id.strip_prefix("re_")?;
    (hex.len() == 48 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("pay_{}", &hex[..32]))
}

#[cfg(test)]
mod tests;
