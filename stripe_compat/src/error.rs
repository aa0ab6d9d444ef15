//! Stripe's error object, `{"error":{"type","code","decline_code","message","param"}}`, with
//! the HTTP status each SDK maps to its own error class: 400/404 `invalid_request_error`
//! (InvalidRequestError), 400 `idempotency_error` (IdempotencyError), 401
//! `authentication_error` (AuthenticationError), 402 `card_error` (CardError), 429
//! `rate_limit_error`, 5xx `api_error` (APIError).

use crate::objects::PaymentIntent;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    AuthenticationError,
    CardError,
    IdempotencyError,
    RateLimitError,
    ApiError,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StripeError {
    /// The HTTP status of the answer.
    #[serde(skip)]
    pub status: u16,
    #[serde(rename = "type")]
    pub kind: ErrorType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The intent a card error is about, as Stripe includes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<Box<PaymentIntent>>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a StripeError,
}

impl StripeError {
    fn new(status: u16, kind: ErrorType, code: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: code.map(str::to_string),
            decline_code: None,
            message: message.into(),
            param: None,
            payment_intent: None,
        }
    }

    /// 400 `invalid_request_error` about the request as a whole.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, ErrorType::InvalidRequestError, None, message)
    }

    /// 400 `invalid_request_error` naming `param`.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                400,
                ErrorType::InvalidRequestError,
                Some("parameter_invalid"),
                message,
            )
        }
    }

    pub fn missing_param(param: &str) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                400,
                ErrorType::InvalidRequestError,
                Some("parameter_missing"),
                format!("Missing required param: {param}."),
            )
        }
    }

    pub fn unknown_param(param: &str) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                400,
                ErrorType::InvalidRequestError,
                Some("parameter_unknown"),
                format!("Received unknown parameter: {param}"),
            )
        }
    }

    /// A parameter Stripe has and payrail does not implement: refused rather than ignored,
    /// so nothing a merchant sends is silently dropped.
    pub fn unsupported_param(param: &str, why: &str) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                400,
                ErrorType::InvalidRequestError,
                Some("parameter_unsupported"),
                format!("payrail's Stripe-compatible API does not support `{param}`: {why}"),
            )
        }
    }

    /// 404 `resource_missing`: `param` is `intent` or `id` as in Stripe. Unlike Stripe's,
    /// the message does not repeat the id: an answer to another merchant's id then holds
    /// nothing of it (the authorization matrix checks every answer for the other's ids).
    pub fn no_such(object: &str, param: &str) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                404,
                ErrorType::InvalidRequestError,
                Some("resource_missing"),
                format!("No such {object}"),
            )
        }
    }

    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(401, ErrorType::AuthenticationError, None, message)
    }

    pub fn idempotency() -> Self {
        Self::new(
            400,
            ErrorType::IdempotencyError,
            Some("idempotency_key_in_use"),
            "Keys for idempotent requests can only be used with the same parameters they were \
             first used with. Try using a key other than the one used in the original request.",
        )
    }

    /// 400 `payment_intent_unexpected_state`: a transition the intent's status refuses.
    pub fn unexpected_state(message: impl Into<String>) -> Self {
        Self::new(
            400,
            ErrorType::InvalidRequestError,
            Some("payment_intent_unexpected_state"),
            message,
        )
    }

    /// 402 `card_error`: the payment method was declined while the request waited.
    pub fn card(intent: PaymentIntent) -> Self {
        let (code, decline_code, message) = match &intent.last_payment_error {
            Some(e) => (e.code.clone(), e.decline_code.clone(), e.message.clone()),
            None => (
                "card_declined".into(),
                None,
                "Your card was declined.".into(),
            ),
        };
        Self {
            status: 402,
            kind: ErrorType::CardError,
            code: Some(code),
            decline_code,
            message,
            param: None,
            payment_intent: Some(Box::new(intent)),
        }
    }

    /// 5xx `api_error`, or 429 `rate_limit_error`, with payrail's code and message.
    pub fn server(status: u16, code: &str, message: impl Into<String>) -> Self {
        let kind = if status == 429 {
            ErrorType::RateLimitError
        } else {
            ErrorType::ApiError
        };
        Self::new(status, kind, Some(code), message)
    }

    /// Renames the parameter an error names (payrail's `customer_email` is Stripe's
    /// `receipt_email`).
    pub fn with_param(mut self, param: Option<&str>) -> Self {
        self.param = param.map(str::to_string);
        self
    }

    /// Translates one of payrail's own error objects (`status`, `type`, `code`, `message`,
    /// `param`), so the SDKs see Stripe's codes: a refused transition (409) becomes 400
    /// `payment_intent_unexpected_state`, an idempotency mismatch (422) 400
    /// `idempotency_error`; the rest keep their status and type.
    pub fn from_payrail(
        status: u16,
        kind: &str,
        code: &str,
        message: &str,
        param: Option<&str>,
    ) -> Self {
        match (status, kind) {
            (_, "idempotency_error") => Self::idempotency(),
            (409, _) => Self::unexpected_state(message),
            (401, _) => Self::authentication(message),
            (429, _) | (500..=599, _) => Self::server(status, code, message),
            _ => Self {
                param: param.map(str::to_string),
                ..Self::new(status, ErrorType::InvalidRequestError, Some(code), message)
            },
        }
    }

    /// The answer's body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body { error: self }).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_stripes_error_object() {
        let e = StripeError::missing_param("amount");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"type": "invalid_request_error", "code": "parameter_missing",
                "message": "Missing required param: amount.", "param": "amount"}})
        );
        assert_eq!(e.status, 400);
    }

    #[test]
    fn payrail_errors_map_onto_the_status_each_sdk_expects() {
        let cases = [
            (
                (409, "invalid_request_error", "payment_unexpected_state"),
                (400, ErrorType::InvalidRequestError),
            ),
            (
                (422, "idempotency_error", "idempotency_key_in_use"),
                (400, ErrorType::IdempotencyError),
            ),
            (
                (401, "authentication_error", "invalid_api_key"),
                (401, ErrorType::AuthenticationError),
            ),
            (
                (404, "invalid_request_error", "resource_missing"),
                (404, ErrorType::InvalidRequestError),
            ),
            (
                (400, "invalid_request_error", "amount_invalid"),
                (400, ErrorType::InvalidRequestError),
            ),
            (
                (429, "rate_limit_error", "rate_limit"),
                (429, ErrorType::RateLimitError),
            ),
            (
                (502, "api_error", "psp_unavailable"),
                (502, ErrorType::ApiError),
            ),
            (
                (503, "api_error", "journal_unavailable"),
                (503, ErrorType::ApiError),
            ),
        ];
        for ((status, kind, code), (want_status, want_kind)) in cases {
            let e = StripeError::from_payrail(status, kind, code, "m", Some("amount"));
            assert_eq!(
                (e.status, e.kind),
                (want_status, want_kind),
                "{status} {code}"
            );
        }
    }

    #[test]
    fn a_card_error_carries_the_decline_code_and_the_intent() {
        let intent = crate::objects::tests::intent_with_failure("insufficient_funds");
        let e = StripeError::card(intent);
        assert_eq!(e.status, 402);
        let body = e.body();
        assert_eq!(body["error"]["type"], "card_error");
        assert_eq!(body["error"]["code"], "card_declined");
        assert_eq!(body["error"]["decline_code"], "insufficient_funds");
        assert_eq!(
            body["error"]["payment_intent"]["status"],
            "requires_payment_method"
        );
    }
}
