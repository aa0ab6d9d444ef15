//! `payrail psp-sandbox`: a stand-in card processor.
//!
//! A small Stripe-like JSON API (payment intents, capture, cancel, refunds, retrieve) whose
//! outcomes are chosen by the test payment method, and which calls the node back with
//! Stripe-style signed webhooks (`Stripe-Signature: t=<unix>,v1=<hex>`):
//!
//! | payment method         | answer                                   | webhook                      |
//! |------------------------|------------------------------------------|------------------------------|
//! | `pm_card_visa`         | `succeeded` (or `requires_capture` if manual) | after `webhook_delay_ms`  |
//! | `pm_card_declined`     | `requires_payment_method` + `last_payment_error.code = card_declined` | `payment_intent.payment_failed` |
//! | `pm_card_delayed`      | `processing`; final after `outcome_delay_ms` | when final                |
//! | `pm_card_lost_webhook` | `processing`; final after `outcome_delay_ms` | never (the node must poll) |
//! | `pm_card_psp_error`    | HTTP 500 `error_count` times per idempotency key, then like visa | like visa |
//!
//! Stripe's documented test payment methods (issue 26) answer as Stripe documents them:
//! `pm_card_mastercard`, `pm_card_amex` and the other brands ([`STRIPE_SUCCEEDING`]) like
//! `pm_card_visa`; `pm_card_chargeDeclined…` / `pm_card_visa_chargeDeclined…`
//! ([`STRIPE_DECLINING`]) like `pm_card_declined`, with Stripe's `code`, `decline_code`
//! and message in `last_payment_error`.
//!
//! Idempotency keys are honoured per endpoint; a replay returns the resource's *current*
//! state (Stripe returns the first response; the current state is what polling needs).
//! For tests, `GET /v1/test/events?payment_intent=` lists the webhooks sent and
//! `POST /v1/test/events/{id}/resend` sends one again (duplicates, reordering).

use payrail_signature as signature;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub bind: SocketAddr,
    pub webhook_url: String,
    pub webhook_secret: String,
    /// Delay before a final outcome's webhook is sent (ms).
    pub webhook_delay_ms: u64,
    /// Delay before `pm_card_delayed` / `pm_card_lost_webhook` reach their outcome (ms).
    pub outcome_delay_ms: u64,
    /// 500 answers per idempotency key for `pm_card_psp_error`.
    pub error_count: u32,
    /// Webhook delivery attempts at most.
    pub webhook_attempts: u32,
}

#[derive(Debug, Clone, Serialize)]
struct PaymentError {
    code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    decline_code: Option<String>,
    message: String,
}

#[derive(Debug, Clone, Serialize)]
struct Intent {
    id: String,
    object: &'static str,
    amount: i64,
    currency: String,
    status: String,
    capture_method: String,
    payment_method: String,
    amount_capturable: i64,
    amount_received: i64,
    metadata: HashMap<String, String>,
    last_payment_error: Option<PaymentError>,
}

#[derive(Debug, Clone, Serialize)]
struct RefundObject {
    id: String,
    object: &'static str,
    amount: i64,
    currency: String,
    payment_intent: String,
    status: String,
    metadata: HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
struct Event {
    id: String,
    object: &'static str,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: Value,
    #[serde(skip)]
    payment_intent: String,
}

#[derive(Default)]
struct State {
    intents: HashMap<String, Intent>,
    refunds: HashMap<String, RefundObject>,
    /// (endpoint, idempotency key) → resource id.
    idempotency: HashMap<(String, String), String>,
    /// 500s already answered per idempotency key (pm_card_psp_error).
    errors_answered: HashMap<String, u32>,
    events: Vec<Event>,
}

#[derive(Clone)]
struct Sandbox {
    options: Arc<SandboxOptions>,
    state: Arc<Mutex<State>>,
    http: reqwest::Client,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    warp::reply::with_status(
        warp::reply::json(
            &json!({"error": {"type": "invalid_request_error", "code": code, "message": message}}),
        ),
        status,
    )
    .into_response()
}

fn ok(value: &impl Serialize) -> Response {
    warp::reply::json(value).into_response()
}

#[derive(Debug, Deserialize)]
struct CreateIntent {
    amount: i64,
    currency: String,
    payment_method: String,
    #[serde(default)]
    capture_method: Option<String>,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
struct CaptureBody {
    #[serde(default)]
    amount_to_capture: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct CreateRefund {
    payment_intent: String,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

const PAYMENT_METHODS: &[&str] = &[
    "pm_card_visa",
    "pm_card_declined",
    "pm_card_delayed",
    "pm_card_lost_webhook",
    "pm_card_psp_error",
];

/// Stripe's test payment methods that succeed (Stripe docs, "Testing": cards by brand).
pub const STRIPE_SUCCEEDING: &[&str] = &[
    "pm_card_visa_debit",
    "pm_card_mastercard",
    "pm_card_mastercard_debit",
    "pm_card_mastercard_prepaid",
    "pm_card_amex",
    "pm_card_discover",
    "pm_card_diners",
    "pm_card_jcb",
    "pm_card_unionpay",
];

/// Stripe's declining test payment methods, by the suffix after `pm_card_` or
/// `pm_card_visa_`: (`code`, `decline_code`, message), as Stripe answers them.
pub const STRIPE_DECLINING: &[(&str, &str, &str, &str)] = &[
    ("chargeDeclined", "card_declined", "generic_decline", "Your card was declined."),
    ("chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds", "Your card has insufficient funds."),
    ("chargeDeclinedLostCard", "card_declined", "lost_card", "Your card was declined."),
    ("chargeDeclinedStolenCard", "card_declined", "stolen_card", "Your card was declined."),
    ("chargeDeclinedFraudulent", "card_declined", "fraudulent", "Your card was declined."),
    ("chargeDeclinedVelocityLimitExceeded", "card_declined", "card_velocity_exceeded", "Your card was declined for making repeated attempts too frequently or exceeding its amount limit."),
    ("chargeDeclinedExpiredCard", "expired_card", "expired_card", "Your card has expired."),
    ("chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    ("chargeDeclinedProcessingError", "processing_error", "processing_error", "An error occurred while processing your card. Try again in a little bit."),
];

/// The decline a Stripe test payment method stands for.
fn stripe_decline(payment_method: &str) -> Option<PaymentError> {
    let suffix = payment_method
        .strip_prefix("pm_card_visa_")
        .or_else(|| payment_method.strip_prefix("pm_card_"))?;
    STRIPE_DECLINING
        .iter()
        .find(|(name, ..)| *name == suffix)
        .map(|(_, code, decline_code, message)| PaymentError {
            code: (*code).into(),
            decline_code: Some((*decline_code).into()),
            message: (*message).into(),
        })
}

/// Whether the sandbox knows `payment_method`.
fn known_payment_method(payment_method: &str) -> bool {
    PAYMENT_METHODS.contains(&payment_method)
        || STRIPE_SUCCEEDING.contains(&payment_method)
        || stripe_decline(payment_method).is_some()
}

impl Sandbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Moves `intent` to its final state for a card that works.
    fn succeed(intent: &mut Intent) {
        if intent.capture_method == "manual" {
            intent.status = "requires_capture".into();
            intent.amount_capturable = intent.amount;
        } else {
            intent.status = "succeeded".into();
            intent.amount_received = intent.amount;
        }
    }

    fn event_type_for(intent: &Intent) -> &'static str {
        match intent.status.as_str() {
            "succeeded" => "payment_intent.succeeded",
            "requires_capture" => "payment_intent.amount_capturable_updated",
            "canceled" => "payment_intent.canceled",
            "processing" => "payment_intent.processing",
            _ => "payment_intent.payment_failed",
        }
    }

    /// Records an event about `intent` and delivers it after `delay`.
    fn emit_intent(&self, intent: &Intent, delay: Duration) {
        let event = Event {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            object: "event",
            kind: Self::event_type_for(intent).into(),
            created: chrono::Utc::now().timestamp(),
            data: json!({ "object": intent }),
            payment_intent: intent.id.clone(),
        };
        self.lock().events.push(event.clone());
        self.deliver_later(event, delay);
    }

    fn emit_refund(&self, refund: &RefundObject) {
        let event = Event {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            object: "event",
            kind: "refund.updated".into(),
            created: chrono::Utc::now().timestamp(),
            data: json!({ "object": refund }),
            payment_intent: refund.payment_intent.clone(),
        };
        self.lock().events.push(event.clone());
        self.deliver_later(event, Duration::from_millis(self.options.webhook_delay_ms));
    }

    fn deliver_later(&self, event: Event, delay: Duration) {
        let sandbox = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            sandbox.deliver(&event).await;
        });
    }

    async fn deliver(&self, event: &Event) -> bool {
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(_) => return false,
        };
        for attempt in 0..self.options.webhook_attempts.max(1) {
            let t = chrono::Utc::now().timestamp();
            let header = signature::header(&self.options.webhook_secret, t, &body);
            let sent = self
                .http
                .post(&self.options.webhook_url)
                .header("Stripe-Signature", header)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    tracing::warn!(event = %event.id, status = %r.status(), attempt, "webhook refused")
                }
                Err(e) => tracing::warn!(event = %event.id, error = %e, attempt, "webhook failed"),
            }
            tokio::time::sleep(Duration::from_millis(200u64 << attempt.min(6))).await;
        }
        false
    }

    fn create_intent(&self, key: Option<String>, body: CreateIntent) -> Response {
        if body.amount <= 0 {
            return error(
                StatusCode::BAD_REQUEST,
                "amount_invalid",
                "amount must be positive",
            );
        }
        if !known_payment_method(&body.payment_method) {
            return error(
                StatusCode::BAD_REQUEST,
                "resource_missing",
                "No such PaymentMethod",
            );
        }
        let idem = key.map(|k| ("payment_intents".to_string(), k));
        if body.payment_method == "pm_card_psp_error" {
            let mut state = self.lock();
            let answered = state
                .errors_answered
                .entry(idem.as_ref().map(|(_, k)| k.clone()).unwrap_or_default())
                .or_insert(0);
            if *answered < self.options.error_count {
                *answered += 1;
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "simulated processor error",
                );
            }
        }
        if let Some(idem) = &idem {
            let state = self.lock();
            if let Some(intent) = state
                .idempotency
                .get(idem)
                .and_then(|id| state.intents.get(id))
            {
                return ok(intent);
            }
        }
        let mut intent = Intent {
            id: format!("pi_{}", uuid::Uuid::now_v7().simple()),
            object: "payment_intent",
            amount: body.amount,
            currency: body.currency.to_ascii_lowercase(),
            status: "processing".into(),
            capture_method: body.capture_method.unwrap_or_else(|| "automatic".into()),
            payment_method: body.payment_method.clone(),
            amount_capturable: 0,
            amount_received: 0,
            metadata: body.metadata,
            last_payment_error: None,
        };
        let webhook_delay = Duration::from_millis(self.options.webhook_delay_ms);
        let outcome_delay = Duration::from_millis(self.options.outcome_delay_ms);
        match body.payment_method.as_str() {
            "pm_card_declined" => {
                intent.status = "requires_payment_method".into();
                intent.last_payment_error = Some(PaymentError {
                    code: "card_declined".into(),
                    decline_code: None,
                    message: "Your card was declined.".into(),
                });
            }
            method if stripe_decline(method).is_some() => {
                intent.status = "requires_payment_method".into();
                intent.last_payment_error = stripe_decline(method);
            }
            "pm_card_delayed" | "pm_card_lost_webhook" => {}
            _ => Self::succeed(&mut intent),
        }
        {
            let mut state = self.lock();
            if let Some(idem) = idem {
                state.idempotency.insert(idem, intent.id.clone());
            }
            state.intents.insert(intent.id.clone(), intent.clone());
        }
        match body.payment_method.as_str() {
            "pm_card_delayed" | "pm_card_lost_webhook" => {
                let sandbox = self.clone();
                let id = intent.id.clone();
                let send_webhook = body.payment_method == "pm_card_delayed";
                tokio::spawn(async move {
                    tokio::time::sleep(outcome_delay).await;
                    let finished = {
                        let mut state = sandbox.lock();
                        state.intents.get_mut(&id).map(|intent| {
                            Self::succeed(intent);
                            intent.clone()
                        })
                    };
                    if let (Some(intent), true) = (finished, send_webhook) {
                        sandbox.emit_intent(&intent, Duration::ZERO);
                    }
                });
            }
            _ => self.emit_intent(&intent, webhook_delay),
        }
        ok(&intent)
    }

    fn capture(&self, id: &str, key: Option<String>, body: CaptureBody) -> Response {
        let captured = {
            let mut state = self.lock();
            let idem = key.map(|k| (format!("capture:{id}"), k));
            if let Some(existing) = idem
                .as_ref()
                .and_then(|k| state.idempotency.get(k))
                .cloned()
            {
                return match state.intents.get(&existing) {
                    Some(intent) => ok(intent),
                    None => error(
                        StatusCode::NOT_FOUND,
                        "resource_missing",
                        "No such payment_intent",
                    ),
                };
            }
            let Some(intent) = state.intents.get_mut(id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "resource_missing",
                    "No such payment_intent",
                );
            };
            if intent.status != "requires_capture" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "payment_intent_unexpected_state",
                    &format!("status is {}", intent.status),
                );
            }
            let amount = body.amount_to_capture.unwrap_or(intent.amount_capturable);
            if amount <= 0 || amount > intent.amount_capturable {
                return error(
                    StatusCode::BAD_REQUEST,
                    "amount_too_large",
                    "amount_to_capture exceeds amount_capturable",
                );
            }
            intent.status = "succeeded".into();
            intent.amount_received = amount;
            intent.amount_capturable = 0;
            let intent = intent.clone();
            if let Some(idem) = idem {
                state.idempotency.insert(idem, intent.id.clone());
            }
            intent
        };
        self.emit_intent(
            &captured,
            Duration::from_millis(self.options.webhook_delay_ms),
        );
        ok(&captured)
    }

    fn cancel(&self, id: &str) -> Response {
        let canceled = {
            let mut state = self.lock();
            let Some(intent) = state.intents.get_mut(id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "resource_missing",
                    "No such payment_intent",
                );
            };
            match intent.status.as_str() {
                "canceled" => return ok(intent),
                "requires_capture" | "requires_payment_method" | "processing" => {
                    intent.status = "canceled".into();
                    intent.amount_capturable = 0;
                    intent.clone()
                }
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "payment_intent_unexpected_state",
                        &format!("status is {other}"),
                    )
                }
            }
        };
        self.emit_intent(
            &canceled,
            Duration::from_millis(self.options.webhook_delay_ms),
        );
        ok(&canceled)
    }

    fn refund(&self, key: Option<String>, body: CreateRefund) -> Response {
        let refund = {
            let mut state = self.lock();
            let idem = key.map(|k| ("refunds".to_string(), k));
            if let Some(existing) = idem
                .as_ref()
                .and_then(|k| state.idempotency.get(k))
                .cloned()
            {
                return match state.refunds.get(&existing) {
                    Some(refund) => ok(refund),
                    None => error(StatusCode::NOT_FOUND, "resource_missing", "No such refund"),
                };
            }
            let Some(intent) = state.intents.get(&body.payment_intent).cloned() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "resource_missing",
                    "No such payment_intent",
                );
            };
            if intent.status != "succeeded" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "charge_not_refundable",
                    "the payment is not captured",
                );
            }
            let refunded: i64 = state
                .refunds
                .values()
                .filter(|r| r.payment_intent == intent.id)
                .map(|r| r.amount)
                .sum();
            let amount = body.amount.unwrap_or(intent.amount_received - refunded);
            if amount <= 0 || refunded + amount > intent.amount_received {
                return error(
                    StatusCode::BAD_REQUEST,
                    "amount_too_large",
                    "refund exceeds the captured amount",
                );
            }
            let refund = RefundObject {
                id: format!("re_{}", uuid::Uuid::now_v7().simple()),
                object: "refund",
                amount,
                currency: intent.currency.clone(),
                payment_intent: intent.id.clone(),
                status: "succeeded".into(),
                metadata: body.metadata,
            };
            if let Some(idem) = idem {
                state.idempotency.insert(idem, refund.id.clone());
            }
            state.refunds.insert(refund.id.clone(), refund.clone());
            refund
        };
        self.emit_refund(&refund);
        ok(&refund)
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "parameter_invalid",
            &e.to_string(),
        ))
    })
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    payment_intent: Option<String>,
}

/// The sandbox's routes (exposed for tests that embed it).
fn routes(sandbox: Sandbox) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let s = warp::any().map(move || sandbox.clone());
    let idem = warp::header::optional::<String>("idempotency-key");
    let body = warp::body::content_length_limit(64 * 1024).and(warp::body::bytes());

    let create = warp::path!("v1" / "payment_intents")
        .and(warp::post())
        .and(s.clone())
        .and(idem)
        .and(body)
        .map(|s: Sandbox, key, body: bytes::Bytes| match parse(&body) {
            Ok(body) => s.create_intent(key, body),
            Err(r) => *r,
        });
    let retrieve = warp::path!("v1" / "payment_intents" / String)
        .and(warp::get())
        .and(s.clone())
        .map(|id: String, s: Sandbox| match s.lock().intents.get(&id) {
            Some(intent) => ok(intent),
            None => error(
                StatusCode::NOT_FOUND,
                "resource_missing",
                "No such payment_intent",
            ),
        });
    let capture = warp::path!("v1" / "payment_intents" / String / "capture")
        .and(warp::post())
        .and(s.clone())
        .and(idem)
        .and(body)
        .map(|id: String, s: Sandbox, key, body: bytes::Bytes| {
            let parsed = if body.is_empty() {
                Ok(CaptureBody::default())
            } else {
                parse(&body)
            };
            match parsed {
                Ok(b) => s.capture(&id, key, b),
                Err(r) => *r,
            }
        });
    let cancel = warp::path!("v1" / "payment_intents" / String / "cancel")
        .and(warp::post())
        .and(s.clone())
        .map(|id: String, s: Sandbox| s.cancel(&id));
    let refunds = warp::path!("v1" / "refunds")
        .and(warp::post())
        .and(s.clone())
        .and(idem)
        .and(body)
        .map(|s: Sandbox, key, body: bytes::Bytes| match parse(&body) {
            Ok(b) => s.refund(key, b),
            Err(r) => *r,
        });
    let events = warp::path!("v1" / "test" / "events")
        .and(warp::get())
        .and(s.clone())
        .and(warp::query::<EventsQuery>())
        .map(|s: Sandbox, q: EventsQuery| {
            let state = s.lock();
            let list: Vec<&Event> = state
                .events
                .iter()
                .filter(|e| {
                    q.payment_intent
                        .as_ref()
                        .is_none_or(|pi| &e.payment_intent == pi)
                })
                .collect();
            ok(&json!({"object": "list", "data": list}))
        });
    let resend = warp::path!("v1" / "test" / "events" / String / "resend")
        .and(warp::post())
        .and(s)
        .and_then(|id: String, s: Sandbox| async move {
            let event = s.lock().events.iter().find(|e| e.id == id).cloned();
            Ok::<_, Infallible>(match event {
                Some(event) => {
                    let delivered = s.deliver(&event).await;
                    ok(&json!({"id": id, "delivered": delivered}))
                }
                None => error(StatusCode::NOT_FOUND, "resource_missing", "No such event"),
            })
        });
    create
        .or(retrieve)
        .unify()
        .or(capture)
        .unify()
        .or(cancel)
        .unify()
        .or(refunds)
        .unify()
        .or(events)
        .unify()
        .or(resend)
        .unify()
        .recover(|_| async {
            Ok::<_, Infallible>(error(
                StatusCode::NOT_FOUND,
                "resource_missing",
                "Unrecognized request URL",
            ))
        })
        .unify()
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, String),
    #[error("http client: {0}")]
    Client(String),
}

/// Serves the sandbox until ctrl-c / SIGTERM.
pub async fn run(
    options: SandboxOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SandboxError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| SandboxError::Client(e.to_string()))?;
    let bind = options.bind;
    let sandbox = Sandbox {
        options: Arc::new(options),
        state: Arc::new(Mutex::new(State::default())),
        http,
    };
    let (addr, server) = warp::serve(routes(sandbox))
        .try_bind_with_graceful_shutdown(bind, shutdown)
        .map_err(|e| SandboxError::Bind(bind, e.to_string()))?;
    println!("psp sandbox listening on http://{addr}");
    tracing::info!(%addr, "psp sandbox listening");
    server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_declining_test_cards_carry_stripes_codes() {
        let insufficient = stripe_decline("pm_card_visa_chargeDeclinedInsufficientFunds")
            .expect("a Stripe test card");
        assert_eq!(insufficient.code, "card_declined");
        assert_eq!(
            insufficient.decline_code.as_deref(),
            Some("insufficient_funds")
        );
        let expired =
            stripe_decline("pm_card_chargeDeclinedExpiredCard").expect("a Stripe test card");
        assert_eq!(expired.code, "expired_card");
        let generic = stripe_decline("pm_card_chargeDeclined").expect("a Stripe test card");
        assert_eq!(generic.decline_code.as_deref(), Some("generic_decline"));
    }

    #[test]
    fn stripes_brand_cards_are_known_and_made_up_ones_are_not() {
        for method in [
            "pm_card_visa",
            "pm_card_mastercard",
            "pm_card_amex",
            "pm_card_declined",
        ] {
            assert!(known_payment_method(method), "{method}");
        }
        for method in [
            "pm_card_chargeDeclinedNope",
            "pm_card_",
            "pm_card_visa_visa",
            "tok_visa",
        ] {
            assert!(!known_payment_method(method), "{method}");
        }
    }
}
