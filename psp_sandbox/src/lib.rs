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
//!
//! Split by concern: this file holds the sandbox's state and operations; [`methods`] the
//! table of test payment methods, [`objects`] the wire objects, [`routes`] the HTTP routes.

mod methods;
mod objects;
mod routes;

pub use methods::{STRIPE_DECLINING, STRIPE_SUCCEEDING};

use methods::{known_payment_method, stripe_decline};
use objects::{CaptureBody, CreateIntent, CreateRefund, Event, Intent, PaymentError, RefundObject};
use payrail_signature as signature;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

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

#[derive(Default)]
pub(crate) struct State {
    pub(crate) intents: HashMap<String, Intent>,
    refunds: HashMap<String, RefundObject>,
    /// (endpoint, idempotency key) → resource id.
    idempotency: HashMap<(String, String), String>,
    /// 500s already answered per idempotency key (pm_card_psp_error).
    errors_answered: HashMap<String, u32>,
    pub(crate) events: Vec<Event>,
}

#[derive(Clone)]
pub(crate) struct Sandbox {
    options: Arc<SandboxOptions>,
    state: Arc<Mutex<State>>,
    http: reqwest::Client,
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    warp::reply::with_status(
        warp::reply::json(
            &json!({"error": {"type": "invalid_request_error", "code": code, "message": message}}),
        ),
        status,
    )
    .into_response()
}

pub(crate) fn ok(value: &impl Serialize) -> Response {
    warp::reply::json(value).into_response()
}

impl Sandbox {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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

    pub(crate) async fn deliver(&self, event: &Event) -> bool {
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

    pub(crate) fn create_intent(&self, key: Option<String>, body: CreateIntent) -> Response {
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

    pub(crate) fn capture(&self, id: &str, key: Option<String>, body: CaptureBody) -> Response {
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

    pub(crate) fn cancel(&self, id: &str) -> Response {
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

    pub(crate) fn refund(&self, key: Option<String>, body: CreateRefund) -> Response {
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
    let (addr, server) = warp::serve(routes::routes(sandbox))
        .try_bind_with_graceful_shutdown(bind, shutdown)
        .map_err(|e| SandboxError::Bind(bind, e.to_string()))?;
    println!("psp sandbox listening on http://{addr}");
    tracing::info!(%addr, "psp sandbox listening");
    server.await;
    Ok(())
}
