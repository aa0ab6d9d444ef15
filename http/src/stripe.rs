//! The Stripe-compatible API (issue 26): `/v1/payment_intents…` and `/v1/refunds…` as the
//! official Stripe SDKs call them (form-encoded bodies with bracket notation, Stripe's
//! objects, lists and error types), over the same `NodeHandle` commands as the native
//! routes. This module is the edge only: it decodes (`payrail_stripe_compat::form`), checks,
//! builds payrail commands and translates views and errors back
//! (`payrail_stripe_compat::{objects, error}`); the state machine, journal, idempotency,
//! fallback and cluster routing are the runtime's own. What is and is not supported:
//! docs/stripe-compat.md.

use crate::body::LimitedBody;
use crate::error::ApiError;
use crate::validation::{self, ConfirmBody, CreatePaymentBody};
use crate::{authenticate, forward, with, AppState};
use payrail_actors::payment::{CaptureMethod, Command, PaymentView, Refusal};
use payrail_actors::snapshots::{self, Cursor};
use payrail_actors::CommandError;
use payrail_stripe_compat::objects::{
    self, PaymentIntent, Refund, CANCELLATION_REASONS, REFUND_REASONS,
};
use payrail_stripe_compat::{List, Params, StripeError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

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

/// payrail's view as the compatibility crate reads it.
fn payment_of(view: PaymentView) -> objects::Payment {
    let refunds = view
        .refunds
        .into_iter()
        .map(|r| objects::RefundSource {
            id: r.id,
            amount: r.amount,
            status: r.status,
            reason: r.reason,
            created: r.created,
        })
        .collect();
    objects::Payment {
        id: view.id,
        amount: view.amount,
        currency: view.currency,
        status: view.status,
        capture_method: view.capture_method,
        payment_method: view.payment_method,
        amount_capturable: view.amount_capturable,
        amount_captured: view.amount_captured,
        amount_refunded: view.amount_refunded,
        refunds,
        failure_code: view.failure_code,
        failure_message: view.failure_message,
        customer_email: view.customer_email,
        metadata: view.metadata,
        created: view.created,
    }
}

fn intent_of(view: PaymentView) -> PaymentIntent {
    PaymentIntent::from(&payment_of(view))
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

impl Request<'_> {
    async fn payment(&self, id: &str, param: &str) -> Result<PaymentView, StripeError> {
        if crate::payments::valid_payment_id(id).is_err() {
            return Err(StripeError::no_such("payment_intent", param));
        }
        self.state
            .node
            .get_payment(self.merchant_id, id)
            .await
            .map_err(|e| command_error(e, param))
    }

    async fn command(&self, id: &str, command: Command) -> Result<PaymentView, CommandError> {
        if crate::payments::valid_payment_id(id).is_err() {
            return Err(CommandError::NotFound);
        }
        self.state
            .node
            .command(
                self.merchant_id,
                id,
                command,
                Some(self.correlation_id.clone()),
            )
            .await
    }

    /// `POST /v1/payment_intents`: payrail's create, then its confirm when `confirm=true`.
    async fn create_intent(
        &self,
        mut params: Params,
        fingerprint: String,
    ) -> Result<Response, StripeError> {
        let amount = params
            .integer("amount")?
            .ok_or_else(|| StripeError::missing_param("amount"))?;
        let currency = params.required_string("currency")?;
        let method = params
            .string("payment_method")?
            .map(payment_method)
            .transpose()?;
        let confirm = params.boolean("confirm")?.unwrap_or(false);
        let capture = capture_method(params.string("capture_method")?)?;
        let metadata = params.string_map("metadata")?;
        let receipt_email = params.string("receipt_email")?;
        for (i, kind) in params
            .string_list("payment_method_types")?
            .iter()
            .enumerate()
        {
            if kind != "card" {
                return Err(StripeError::invalid_param(
                    &format!("payment_method_types[{i}]"),
                    "Only `card` payments are supported",
                ));
            }
        }
        if params.contains("description") {
            return Err(StripeError::unsupported_param(
                "description",
                "payrail payments have no description; use metadata",
            ));
        }
        params.finish()?;
        let method = match (confirm, method) {
            (true, None) => return Err(StripeError::missing_param("payment_method")),
            (false, Some(_)) => {
                return Err(StripeError::unsupported_param(
                    "payment_method",
                    "payrail holds no payment method before the confirmation: pass \
                     confirm=true with it, or pass it to /confirm",
                ))
            }
            (_, method) => method,
        };
        let body = CreatePaymentBody {
            amount,
            currency,
            customer_email: receipt_email,
            order_no: None,
            channel: None,
            metadata,
            capture_method: capture,
        };
        let key = self.idempotency_key.clone();
        let mut command = body
            .into_command(key.clone())
            .map_err(|e| stripe_error(e, &[("customer_email", "receipt_email")]))?;
        // Stripe's idempotency covers every parameter of the request (confirm and
        // payment_method too), not only the payment's fields.
        command.request_fingerprint = key.as_ref().map(|_| fingerprint);
        let idempotency = key.clone().zip(command.request_fingerprint.clone());
        let correlation_id = key.or_else(|| Some(self.correlation_id.clone()));
        let view = self
            .state
            .node
            .create_payment(
                self.merchant_id,
                Command::Create(command),
                idempotency,
                correlation_id,
            )
            .await
            .map_err(|e| api(e.into()))?;
        let Some(method) = method else {
            return ok(&intent_of(view));
        };
        if view.status != "requires_payment_method" {
            // A retry of a create that confirmed: its answer is the payment as it is now.
            return confirmed(view);
        }
        let id = view.id.clone();
        let confirm = Command::Confirm {
            payment_method: method,
            capture_method: capture,
            psp_reference: None,
        };
        let view = match self.command(&id, confirm).await {
            // An earlier try of this request confirmed it meanwhile.
            Err(CommandError::Refused(Refusal::InvalidState { .. })) => {
                self.payment(&id, "intent").await?
            }
            other => other.map_err(|e| command_error(e, "intent"))?,
        };
        confirmed(view)
    }

    /// `POST /v1/payment_intents/{id}`: payrail has no update command (a payment's fields
    /// are fixed at creation), so an update may only restate what the payment already has.
    async fn update_intent(&self, id: &str, mut params: Params) -> Result<Response, StripeError> {
        let view = self.payment(id, "intent").await?;
        let unchangeable = |param: &str| {
            StripeError::unsupported_param(
                param,
                "payrail payments cannot be changed after creation (there is no update \
                 command); create a new PaymentIntent",
            )
        };
        if params.integer("amount")?.is_some_and(|a| a != view.amount) {
            return Err(unchangeable("amount"));
        }
        if params
            .string("currency")?
            .is_some_and(|c| !c.eq_ignore_ascii_case(&view.currency))
        {
            return Err(unchangeable("currency"));
        }
        if params
            .string_map("metadata")?
            .is_some_and(|m| m != view.metadata)
        {
            return Err(unchangeable("metadata"));
        }
        if params
            .string("receipt_email")?
            .is_some_and(|e| Some(&e) != view.customer_email.as_ref())
        {
            return Err(unchangeable("receipt_email"));
        }
        if capture_method(params.string("capture_method")?)?
            .is_some_and(|c| c.as_str() != view.capture_method)
        {
            return Err(unchangeable("capture_method"));
        }
        for name in ["payment_method", "description"] {
            if params.contains(name) {
                return Err(unchangeable(name));
            }
        }
        params.finish()?;
        ok(&intent_of(view))
    }

    async fn confirm_intent(&self, id: &str, mut params: Params) -> Result<Response, StripeError> {
        let method = params
            .string("payment_method")?
            .map(payment_method)
            .transpose()?
            .ok_or_else(|| StripeError::missing_param("payment_method"))?;
        let capture = capture_method(params.string("capture_method")?)?;
        params.finish()?;
        let command = Command::Confirm {
            payment_method: method,
            capture_method: capture,
            psp_reference: None,
        };
        let view = self
            .command(id, command)
            .await
            .map_err(|e| command_error(e, "intent"))?;
        confirmed(view)
    }

    async fn capture_intent(&self, id: &str, mut params: Params) -> Result<Response, StripeError> {
        let renames = [("amount", "amount_to_capture")];
        let amount = params.integer("amount_to_capture")?;
        params.finish()?;
        validation::optional_amount(amount).map_err(|e| stripe_error(e, &renames))?;
        let view = self
            .command(id, Command::Capture { amount })
            .await
            .map_err(|e| match e {
                CommandError::NotFound => StripeError::no_such("payment_intent", "intent"),
                e => stripe_error(e.into(), &renames),
            })?;
        ok(&intent_of(view))
    }

    async fn cancel_intent(&self, id: &str, mut params: Params) -> Result<Response, StripeError> {
        let reason = one_of(&mut params, "cancellation_reason", CANCELLATION_REASONS)?;
        params.finish()?;
        let view = self
            .command(id, Command::Cancel { reason })
            .await
            .map_err(|e| command_error(e, "intent"))?;
        ok(&intent_of(view))
    }

    async fn list_intents(&self, mut params: Params) -> Result<Response, StripeError> {
        let (limit, after, before) = page(&mut params)?;
        // PostgreSQL's timestamps end in 294276: bounds past 1970..9999 mean the same as
        // those years, and are clamped there instead of failing in the query (found by the
        // API fuzz test).
        let (low, high) = params.range("created")?;
        let created = (low.map(clamp_unix_s), high.map(clamp_unix_s));
        params.finish()?;
        let param = if after.is_some() {
            "starting_after"
        } else {
            "ending_before"
        };
        let cursor = cursor(&after, &before);
        if let Cursor::After(id) | Cursor::Before(id) = cursor {
            if crate::payments::valid_payment_id(id).is_err() {
                return Err(StripeError::no_such("payment_intent", param));
            }
        }
        let page = snapshots::list_payments_page(
            &self.state.pool,
            self.merchant_id,
            limit,
            cursor,
            created,
        )
        .await
        .map_err(|e| api(ApiError::internal(e)))?;
        let Some((payments, has_more)) = page else {
            return Err(StripeError::no_such("payment_intent", param));
        };
        let data = payments
            .iter()
            .map(|p| intent_of(PaymentView::from(p)))
            .collect();
        ok(&List::new(data, has_more, "/v1/payment_intents"))
    }

    async fn create_refund(&self, mut params: Params) -> Result<Response, StripeError> {
        let payment_id = params.required_string("payment_intent")?;
        let amount = params.integer("amount")?;
        let reason = one_of(&mut params, "reason", REFUND_REASONS)?;
        if params
            .string_map("metadata")?
            .is_some_and(|m| !m.is_empty())
        {
            return Err(StripeError::unsupported_param(
                "metadata",
                "payrail refunds carry no metadata",
            ));
        }
        params.finish()?;
        validation::optional_amount(amount).map_err(api)?;
        if crate::payments::valid_payment_id(&payment_id).is_err() {
            return Err(StripeError::no_such("payment_intent", "payment_intent"));
        }
        let refund_id = refund_id_for(&payment_id, self.idempotency_key.as_deref());
        let command = Command::CreateRefund {
            refund_id: refund_id.clone(),
            amount,
            reason,
        };
        let view = self
            .command(&payment_id, command)
            .await
            .map_err(|e| command_error(e, "payment_intent"))?;
        refund_answer(view, &refund_id)
    }

    async fn retrieve_refund(&self, id: &str) -> Result<Response, StripeError> {
        let missing = || StripeError::no_such("refund", "id");
        if !id.starts_with("re_") || id.len() > 64 {
            return Err(missing());
        }
        let payment_id = match payment_in_refund_id(id) {
            Some(payment_id) => payment_id,
            // A refund made through payrail's own API: its payment from the read model.
            None => {
                snapshots::payment_of_refund(&self.state.pool, self.merchant_id, id)
                    .await
                    .map_err(|e| api(ApiError::internal(e)))?
                    .ok_or_else(missing)?
                    .id
            }
        };
        let view = self
            .state
            .node
            .get_payment(self.merchant_id, &payment_id)
            .await
            .map_err(|e| match e {
                CommandError::NotFound => missing(),
                e => api(e.into()),
            })?;
        if !view.refunds.iter().any(|r| r.id == id) {
            return Err(missing());
        }
        refund_answer(view, id)
    }

    async fn list_refunds(&self, mut params: Params) -> Result<Response, StripeError> {
        let (limit, after, before) = page(&mut params)?;
        let payment_id = params.string("payment_intent")?;
        params.finish()?;
        let param = if after.is_some() {
            "starting_after"
        } else {
            "ending_before"
        };
        let cursor = cursor(&after, &before);
        let missing = || StripeError::no_such("refund", param);
        let (data, has_more) = match &payment_id {
            // One payment's refunds: from the payment itself (on its owner), so a refund just
            // made is listed; newest first.
            Some(payment_id) => {
                let payment = payment_of(self.payment(payment_id, "payment_intent").await?);
                let newest_first: Vec<&objects::RefundSource> =
                    payment.refunds.iter().rev().collect();
                let (refunds, has_more) =
                    page_of(&newest_first, |r| r.id.as_str(), limit, cursor).ok_or_else(missing)?;
                let data = refunds.iter().map(|r| Refund::new(&payment, r)).collect();
                (data, has_more)
            }
            None => {
                let (rows, has_more) = snapshots::list_refunds_page(
                    &self.state.pool,
                    self.merchant_id,
                    None,
                    limit,
                    cursor,
                )
                .await
                .map_err(|e| api(ApiError::internal(e)))?
                .ok_or_else(missing)?;
                let data = rows
                    .iter()
                    .filter_map(|(payment, refund_id)| {
                        let payment = payment_of(PaymentView::from(payment));
                        let refund = payment.refunds.iter().find(|r| &r.id == refund_id)?;
                        Some(Refund::new(&payment, refund))
                    })
                    .collect();
                (data, has_more)
            }
        };
        ok(&List::<Refund>::new(data, has_more, "/v1/refunds"))
    }
}

/// A page of `items` (newest first) from `cursor`, and whether more lie in its direction;
/// `None` when the cursor is not among them.
fn page_of<'i, T>(
    items: &'i [T],
    id: impl Fn(&T) -> &str,
    limit: i64,
    cursor: Cursor<'_>,
) -> Option<(&'i [T], bool)> {
    let limit = usize::try_from(limit).unwrap_or(0);
    let position = |wanted: &str| items.iter().position(|item| id(item) == wanted);
    Some(match cursor {
        Cursor::Newest => (&items[..limit.min(items.len())], items.len() > limit),
        Cursor::After(wanted) => {
            let rest = &items[position(wanted)? + 1..];
            (&rest[..limit.min(rest.len())], rest.len() > limit)
        }
        Cursor::Before(wanted) => {
            let rest = &items[..position(wanted)?];
            (
                &rest[rest.len().saturating_sub(limit)..],
                rest.len() > limit,
            )
        }
    })
}

fn refund_answer(view: PaymentView, refund_id: &str) -> Result<Response, StripeError> {
    let payment = payment_of(view);
    let refund = payment
        .refunds
        .iter()
        .find(|r| r.id == refund_id)
        .ok_or_else(|| api(ApiError::internal("refund missing after creation")))?;
    ok(&Refund::new(&payment, refund))
}

// ---- The OpenAPI document's view of these routes (the handler above serves them all). ----

/// `POST /v1/payment_intents`, form-encoded (`metadata[k]=v`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeCreateIntentForm {
    /// Minor units.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount: i64,
    #[schema(pattern = "^[A-Za-z]{3}$")]
    currency: String,
    /// A test payment method (`pm_card_visa`, …); requires `confirm=true`.
    #[schema(pattern = "^[A-Za-z0-9_]{1,64}$")]
    payment_method: Option<String>,
    confirm: Option<bool>,
    #[schema(pattern = "^(automatic|automatic_async|manual)$")]
    capture_method: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    #[schema(max_length = 254, format = Email)]
    receipt_email: Option<String>,
}

/// `POST /v1/payment_intents/{id}/confirm`, form-encoded.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeConfirmForm {
    #[schema(pattern = "^[A-Za-z0-9_]{1,64}$")]
    payment_method: String,
    #[schema(pattern = "^(automatic|automatic_async|manual)$")]
    capture_method: Option<String>,
}

/// `POST /v1/payment_intents/{id}/capture`, form-encoded.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeCaptureForm {
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount_to_capture: Option<i64>,
}

/// `POST /v1/payment_intents/{id}/cancel`, form-encoded.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeCancelForm {
    #[schema(pattern = "^(duplicate|fraudulent|requested_by_customer|abandoned)$")]
    cancellation_reason: Option<String>,
}

/// `POST /v1/payment_intents/{id}`: only values the payment already has (no update).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeUpdateForm {
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount: Option<i64>,
    metadata: Option<BTreeMap<String, String>>,
}

/// `POST /v1/refunds`, form-encoded.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeRefundForm {
    /// The payment (`pay_…`).
    payment_intent: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount: Option<i64>,
    #[schema(pattern = "^(duplicate|fraudulent|requested_by_customer)$")]
    reason: Option<String>,
}

/// A page of PaymentIntents.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct PaymentIntentList {
    object: String,
    data: Vec<PaymentIntent>,
    has_more: bool,
    url: String,
}

/// A page of Refunds.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct RefundList {
    object: String,
    data: Vec<Refund>,
    has_more: bool,
    url: String,
}

/// Stripe's error object: `{"error": {type, code, decline_code, message, param}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeErrorResponse {
    error: StripeErrorObject,
}

#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeErrorObject {
    /// `invalid_request_error`, `authentication_error`, `card_error`, `idempotency_error`,
    /// `rate_limit_error`, `api_error`.
    #[serde(rename = "type")]
    kind: String,
    code: Option<String>,
    decline_code: Option<String>,
    message: String,
    param: Option<String>,
    #[schema(value_type = Option<Object>)]
    payment_intent: Option<PaymentIntent>,
}

/// Declares the answers every Stripe-compatible operation shares.
macro_rules! stripe_doc {
    ($name:ident, $method:ident, $path:literal, $summary:literal, $body:ty, $ok:ty $(, $param:tt)*) => {
        #[doc = $summary]
        #[utoipa::path(
            $method,
            path = $path,
            tag = "stripe",
            security(("merchant_api_key" = [])),
            params(
                $($param,)*
                ("Idempotency-Key" = Option<String>, Header, max_length = 255,
                 description = "Stripe's semantics: the same key with other parameters is an `idempotency_error`."),
                ("Stripe-Version" = Option<String>, Header, description = "Accepted; the objects have one shape."),
            ),
            request_body(content = $body, content_type = "application/x-www-form-urlencoded"),
            responses(
                (status = 200, description = "The object (`Request-Id` header names the request)", body = $ok),
                (status = 400, description = "`invalid_request_error` naming `param`, or `idempotency_error`", body = StripeErrorResponse),
                (status = 401, description = "`authentication_error`: no or unknown key", body = StripeErrorResponse),
                (status = 402, description = "`card_error`: declined (`decline_code`, `payment_intent`)", body = StripeErrorResponse),
                (status = 404, description = "`resource_missing` (another merchant's objects too)", body = StripeErrorResponse),
                (status = 413, description = "Body too large", body = StripeErrorResponse),
                (status = 429, description = "`rate_limit_error` (Retry-After)", body = StripeErrorResponse),
                (status = 502, description = "`api_error`: the processor did not answer; nothing recorded", body = StripeErrorResponse),
                (status = 503, description = "`api_error`: not available now (Retry-After)", body = StripeErrorResponse),
            )
        )]
        #[allow(dead_code)]
        pub(crate) fn $name() {}
    };
}

/// A read: no body.
macro_rules! stripe_read_doc {
    ($name:ident, $path:literal, $summary:literal, $ok:ty $(, $param:tt)*) => {
        #[doc = $summary]
        #[utoipa::path(
            get,
            path = $path,
            tag = "stripe",
            security(("merchant_api_key" = [])),
            params($($param,)*),
            responses(
                (status = 200, description = "The object or page (`Request-Id` header names the request)", body = $ok),
                (status = 400, description = "`invalid_request_error` naming `param`", body = StripeErrorResponse),
                (status = 401, description = "`authentication_error`: no or unknown key", body = StripeErrorResponse),
                (status = 404, description = "`resource_missing` (another merchant's objects too)", body = StripeErrorResponse),
                (status = 429, description = "`rate_limit_error` (Retry-After)", body = StripeErrorResponse),
                (status = 503, description = "`api_error`: not available now (Retry-After)", body = StripeErrorResponse),
            )
        )]
        #[allow(dead_code)]
        pub(crate) fn $name() {}
    };
}

stripe_doc!(
    create_intent_doc,
    post,
    "/v1/payment_intents",
    "Creates a PaymentIntent (payrail payment); with `confirm=true` also confirms it.",
    StripeCreateIntentForm,
    PaymentIntent
);
stripe_doc!(
    update_intent_doc,
    post,
    "/v1/payment_intents/{id}",
    "Updates a PaymentIntent: only to the values it has (payrail has no update command).",
    StripeUpdateForm,
    PaymentIntent,
    (
        "id" = String,
        Path,
        description = "The payment's id (`pay_…`)."
    )
);
stripe_doc!(
    confirm_intent_doc,
    post,
    "/v1/payment_intents/{id}/confirm",
    "Confirms a PaymentIntent with a payment method.",
    StripeConfirmForm,
    PaymentIntent,
    (
        "id" = String,
        Path,
        description = "The payment's id (`pay_…`)."
    )
);
stripe_doc!(
    capture_intent_doc,
    post,
    "/v1/payment_intents/{id}/capture",
    "Captures all or `amount_to_capture` of an authorized PaymentIntent.",
    StripeCaptureForm,
    PaymentIntent,
    (
        "id" = String,
        Path,
        description = "The payment's id (`pay_…`)."
    )
);
stripe_doc!(
    cancel_intent_doc,
    post,
    "/v1/payment_intents/{id}/cancel",
    "Cancels a PaymentIntent.",
    StripeCancelForm,
    PaymentIntent,
    (
        "id" = String,
        Path,
        description = "The payment's id (`pay_…`)."
    )
);
stripe_doc!(
    create_refund_doc,
    post,
    "/v1/refunds",
    "Refunds all or `amount` of a succeeded PaymentIntent.",
    StripeRefundForm,
    Refund
);
stripe_read_doc!(
    retrieve_intent_doc,
    "/v1/payment_intents/{id}",
    "Retrieves a PaymentIntent.",
    PaymentIntent,
    (
        "id" = String,
        Path,
        description = "The payment's id (`pay_…`)."
    )
);
stripe_read_doc!(
    list_intents_doc,
    "/v1/payment_intents",
    "Lists PaymentIntents, newest first.",
    PaymentIntentList,
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 100),
    ("starting_after" = Option<String>, Query),
    ("ending_before" = Option<String>, Query),
    ("created[gte]" = Option<i64>, Query),
    ("created[lte]" = Option<i64>, Query)
);
stripe_read_doc!(
    retrieve_refund_doc,
    "/v1/refunds/{id}",
    "Retrieves a Refund.",
    Refund,
    (
        "id" = String,
        Path,
        description = "The refund's id (`re_…`)."
    )
);
stripe_read_doc!(
    list_refunds_doc,
    "/v1/refunds",
    "Lists Refunds, newest first.",
    RefundList,
    ("limit" = Option<i64>, Query, minimum = 1, maximum = 100),
    ("starting_after" = Option<String>, Query),
    ("ending_before" = Option<String>, Query),
    ("payment_intent" = Option<String>, Query)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refund_id_made_here_names_its_payment_and_a_native_one_does_not() {
        let payment = format!("pay_{}", "ab".repeat(16));
        let keyed = refund_id_for(&payment, Some("k1"));
        assert_eq!(keyed, refund_id_for(&payment, Some("k1")));
        assert_ne!(keyed, refund_id_for(&payment, Some("k2")));
        assert_eq!(payment_in_refund_id(&keyed), Some(payment.clone()));
        let fresh = refund_id_for(&payment, None);
        assert_eq!(payment_in_refund_id(&fresh), Some(payment));
        assert_eq!(
            payment_in_refund_id(&format!("re_{}", "c".repeat(32))),
            None
        );
        assert_eq!(payment_in_refund_id("re_xyz"), None);
    }

    #[test]
    fn a_page_of_a_payments_refunds_follows_stripes_cursors() {
        let ids = ["r5", "r4", "r3", "r2", "r1"];
        let page = |cursor| page_of(&ids, |id| id, 2, cursor);
        assert_eq!(page(Cursor::Newest), Some((&ids[..2], true)));
        assert_eq!(page(Cursor::After("r4")), Some((&ids[2..4], true)));
        assert_eq!(page(Cursor::After("r2")), Some((&ids[4..], false)));
        assert_eq!(page(Cursor::Before("r2")), Some((&ids[1..3], true)));
        assert_eq!(page(Cursor::Before("r4")), Some((&ids[..1], false)));
        assert_eq!(page(Cursor::After("r9")), None);
    }

    #[test]
    fn payrail_parameter_names_become_the_stripe_requests() {
        let error = ApiError::invalid("email_invalid", "bad", Some("customer_email"));
        let error = stripe_error(error, &[("customer_email", "receipt_email")]);
        assert_eq!(error.param.as_deref(), Some("receipt_email"));
        assert_eq!(error.status, 400);
    }

    #[test]
    fn a_missing_payment_is_no_such_payment_intent_naming_the_param() {
        let error = command_error(CommandError::NotFound, "intent");
        assert_eq!(error.status, 404);
        assert_eq!(error.param.as_deref(), Some("intent"));
        assert_eq!(error.message, "No such payment_intent");
    }
}
