//! The node's connector to a payment service provider (the sandbox speaks its API): HTTP
//! with timeouts, retries with exponential backoff (backon) on 5xx and transport errors,
//! and idempotency keys on every write, so a retried request never acts twice.

use crate::payment::{CaptureMethod, Outcome, Payment};
use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// `[psp]` in config.toml. `Debug` leaves the webhook secret out.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PspOptions {
    /// Base URL of the sandbox processor (channel `sandbox`).
    pub sandbox_url: String,
    /// Shared secret of the PSP's webhook signatures. Set PAYRAIL__PSP__WEBHOOK_SECRET.
    pub webhook_secret: String,
    /// Accepted distance between a webhook's signed timestamp and now (s).
    pub webhook_tolerance_s: i64,
    /// Timeout of one PSP request (ms).
    pub request_timeout_ms: u64,
    /// Attempts per PSP request (first try included).
    pub max_attempts: usize,
    /// First retry delay (ms); doubles per attempt.
    pub retry_base_ms: u64,
    /// A payment still `processing` this long after its last event is resolved by asking the
    /// PSP (ms) — covers lost webhooks.
    pub poll_after_ms: u64,
    /// An authorization not captured within this lapses: the payment expires (ms).
    pub authorization_ttl_ms: u64,
    /// How often the sweeper looks for payments to poll or expire (ms).
    pub sweep_interval_ms: u64,
    /// Payments the sweeper handles per round at most.
    pub sweep_batch: i64,
}

impl std::fmt::Debug for PspOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured: a field added later must be placed here, secret or not.
        let Self {
            sandbox_url,
            webhook_secret: _,
            webhook_tolerance_s,
            request_timeout_ms,
            max_attempts,
            retry_base_ms,
            poll_after_ms,
            authorization_ttl_ms,
            sweep_interval_ms,
            sweep_batch,
        } = self;
        f.debug_struct("PspOptions")
            .field("sandbox_url", sandbox_url)
            .field("webhook_secret", &"<redacted>")
            .field("webhook_tolerance_s", webhook_tolerance_s)
            .field("request_timeout_ms", request_timeout_ms)
            .field("max_attempts", max_attempts)
            .field("retry_base_ms", retry_base_ms)
            .field("poll_after_ms", poll_after_ms)
            .field("authorization_ttl_ms", authorization_ttl_ms)
            .field("sweep_interval_ms", sweep_interval_ms)
            .field("sweep_batch", sweep_batch)
            .finish()
    }
}

impl Default for PspOptions {
    fn default() -> Self {
        Self {
            sandbox_url: "http://127.0.0.1:8090".into(),
            webhook_secret: String::new(),
            webhook_tolerance_s: crate::signature::DEFAULT_TOLERANCE_S,
            request_timeout_ms: 5_000,
            max_attempts: 4,
            retry_base_ms: 100,
            poll_after_ms: 30_000,
            authorization_ttl_ms: 7 * 24 * 3_600_000,
            sweep_interval_ms: 5_000,
            sweep_batch: 200,
        }
    }
}

impl PspOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.sandbox_url.starts_with("http://") || self.sandbox_url.starts_with("https://")) {
            return Err("psp.sandbox_url: must be an http(s) URL".into());
        }
        if self.webhook_secret.len() < 16 {
            return Err("psp.webhook_secret: must be at least 16 characters (set PAYRAIL__PSP__WEBHOOK_SECRET)".into());
        }
        if !(1..=3_600).contains(&self.webhook_tolerance_s) {
            return Err("psp.webhook_tolerance_s: allowed 1..=3600".into());
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err("psp.request_timeout_ms: allowed 100..=60000".into());
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err("psp.max_attempts: allowed 1..=10".into());
        }
        if self.sweep_interval_ms < 100 {
            return Err("psp.sweep_interval_ms: at least 100".into());
        }
        if !(1..=10_000).contains(&self.sweep_batch) {
            return Err("psp.sweep_batch: allowed 1..=10000".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PspError {
    #[error("the processor is unavailable: {0}")]
    Unavailable(String),
    #[error("the processor refused the request: {code}: {message}")]
    Refused { code: String, message: String },
}

impl PspError {
    fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PspPaymentError {
    pub code: String,
    /// Stripe's finer reason of a `card_declined` (`insufficient_funds`, `lost_card`, …).
    #[serde(default)]
    pub decline_code: Option<String>,
    pub message: String,
}

/// The processor's view of a payment.
#[derive(Debug, Clone, Deserialize)]
pub struct PspIntent {
    pub id: String,
    pub status: String,
    pub amount_capturable: i64,
    pub amount_received: i64,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    #[serde(default)]
    pub last_payment_error: Option<PspPaymentError>,
}

impl PspIntent {
    /// What this intent means for the payment.
    pub fn outcome(&self) -> Outcome {
        let reference = Some(self.id.clone());
        match self.status.as_str() {
            "succeeded" => Outcome::Succeeded {
                psp_reference: reference,
                amount_captured: self.amount_received,
            },
            "requires_capture" => Outcome::Authorized {
                psp_reference: reference,
                amount_capturable: self.amount_capturable,
            },
            "canceled" => Outcome::Canceled,
            "requires_payment_method" if self.last_payment_error.is_some() => {
                let error = self.last_payment_error.clone().unwrap_or(PspPaymentError {
                    code: "payment_failed".into(),
                    decline_code: None,
                    message: String::new(),
                });
                // The finer reason when the processor gives one: the payment's
                // `failure_code` is then e.g. `insufficient_funds`, not `card_declined`.
                Outcome::Failed {
                    code: error.decline_code.unwrap_or(error.code),
                    message: error.message,
                }
            }
            _ => Outcome::Processing,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PspRefund {
    pub id: String,
    pub status: String,
    /// The intent refunded; a webhook's refund must name the payment's own.
    #[serde(default)]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
}

/// Cheap, cloneable connector.
#[derive(Clone)]
pub struct PspClient {
    http: reqwest::Client,
    base_url: String,
    options: PspOptions,
}

impl PspClient {
    pub fn new(options: &PspOptions) -> Result<Self, PspError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(options.request_timeout_ms))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| PspError::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            base_url: options.sandbox_url.trim_end_matches('/').to_string(),
            options: options.clone(),
        })
    }

    pub fn options(&self) -> &PspOptions {
        &self.options
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        method: reqwest::Method,
        path: &str,
        idempotency_key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<T, PspError> {
        let attempt = || async {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base_url));
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| PspError::Unavailable(e.to_string()))?;
            let status = response.status();
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(PspError::Unavailable(format!("HTTP {status}")));
            }
            if !status.is_success() {
                let value: serde_json::Value = response.json().await.unwrap_or_default();
                return Err(PspError::Refused {
                    code: value["error"]["code"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_string(),
                    message: value["error"]["message"].as_str().unwrap_or("").to_string(),
                });
            }
            response
                .json::<T>()
                .await
                .map_err(|e| PspError::Unavailable(format!("undecodable answer: {e}")))
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(self.options.retry_base_ms))
                    .with_max_times(self.options.max_attempts.saturating_sub(1))
                    .with_jitter(),
            )
            .when(PspError::retryable)
            .notify(|error, delay| tracing::warn!(%error, ?delay, "PSP request failed; retrying"))
            .await
    }

    /// Creates and confirms the payment at the processor (idempotent per payment).
    pub async fn confirm(
        &self,
        payment: &Payment,
        payment_method: &str,
        capture_method: CaptureMethod,
    ) -> Result<PspIntent, PspError> {
        let body = serde_json::json!({
            "amount": payment.amount,
            "currency": payment.currency.api_code(),
            "payment_method": payment_method,
            "capture_method": capture_method.as_str(),
            "confirm": true,
            "metadata": {"payment_id": payment.id, "merchant_id": payment.merchant_id},
        });
        self.send(
            reqwest::Method::POST,
            "/v1/payment_intents",
            Some(&format!("{}:confirm", payment.id)),
            Some(body),
        )
        .await
    }

    pub async fn retrieve(&self, psp_reference: &str) -> Result<PspIntent, PspError> {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/payment_intents/{psp_reference}"),
            None,
            None,
        )
        .await
    }

    pub async fn capture(
        &self,
        payment: &Payment,
        psp_reference: &str,
        amount: i64,
    ) -> Result<PspIntent, PspError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/payment_intents/{psp_reference}/capture"),
            Some(&format!("{}:capture", payment.id)),
            Some(serde_json::json!({ "amount_to_capture": amount })),
        )
        .await
    }

    pub async fn cancel(
        &self,
        payment: &Payment,
        psp_reference: &str,
    ) -> Result<PspIntent, PspError> {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/payment_intents/{psp_reference}/cancel"),
            Some(&format!("{}:cancel", payment.id)),
            None,
        )
        .await
    }

    pub async fn refund(
        &self,
        payment: &Payment,
        psp_reference: &str,
        refund_id: &str,
        amount: i64,
    ) -> Result<PspRefund, PspError> {
        self.send(
            reqwest::Method::POST,
            "/v1/refunds",
            Some(refund_id),
            Some(serde_json::json!({
                "payment_intent": psp_reference,
                "amount": amount,
                "metadata": {"payment_id": payment.id, "merchant_id": payment.merchant_id, "refund_id": refund_id},
            })),
        )
        .await
    }
}
