//! Parsing and validation of request bodies. Every failure names the offending parameter.

use crate::error::ApiError;
use payrail_actors::money::{Currency, MAX_AMOUNT};
use payrail_actors::payment::{CaptureMethod, CreatePayment};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Limits on free-form fields (Stripe's where it has them).
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_LEN: usize = 40;
pub const MAX_METADATA_VALUE_LEN: usize = 500;
pub const MAX_ORDER_NO_LEN: usize = 64;
pub const MAX_CHANNEL_LEN: usize = 32;
pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Parses JSON strictly: wrong types, missing and unknown fields are errors naming the field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::invalid(
            "body_missing",
            "A JSON request body is required",
            None,
        ));
    }
    // Every body of this API is an object. serde would also fill a struct from an array,
    // positionally (`[]` as `{}`, `["x"]` as its first field): found by the API fuzz test.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "body_invalid_json",
            "The request body must be a JSON object",
            None,
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => {
            if deserializer.end().is_err() {
                return Err(ApiError::invalid(
                    "body_invalid_json",
                    "Trailing data after the JSON body",
                    None,
                ));
            }
            Ok(value)
        }
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let message = inner.to_string();
            let backticked = message.split('`').nth(1).map(str::to_string);
            let (code, param) = if inner.is_syntax() || inner.is_eof() {
                ("body_invalid_json", None)
            } else if message.starts_with("missing field") {
                ("parameter_missing", backticked)
            } else if message.starts_with("unknown field") {
                ("parameter_unknown", backticked)
            } else {
                ("parameter_invalid", (path != ".").then_some(path))
            };
            Err(ApiError::invalid(code, message, param.as_deref()))
        }
    }
}

/// A new payment. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentBody {
    /// In the currency's minor unit (cents for USD, yen for JPY).
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    /// ISO 4217 code, any case (`usd`).
    #[schema(pattern = "^[A-Za-z]{3}$")]
    pub currency: String,
    #[serde(default)]
    #[schema(max_length = 254, format = Email)]
    pub customer_email: Option<String>,
    /// The merchant's order number: 1 to 64 printable characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub order_no: Option<String>,
    /// The sales channel, for analytics: `[a-z0-9_-]{1,32}`.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    pub channel: Option<String>,
    /// At most 50 keys of 1 to 40 characters; values at most 500 characters.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// `automatic` (default) or `manual` (capture later).
    #[serde(default)]
    pub capture_method: Option<CaptureMethod>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchantBody {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// http(s) URL notifications are posted to.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The webhooks' format: `payrail` (the default) or `stripe` (Stripe event objects
    /// signed with `Stripe-Signature`, for an integration that verifies with a Stripe SDK).
    #[serde(default)]
    pub webhook_api: Option<payrail_actors::merchants::WebhookApi>,
}

impl CreateMerchantBody {
    pub fn validate(&self) -> Result<(), ApiError> {
        let name = self.name.trim();
        // PostgreSQL's text refuses NUL: a control character here was a 500 (found by the
        // API fuzz test in CI), so it is refused as input, like every other text field.
        if name.is_empty() || name.len() > 200 || !printable(name) {
            return Err(ApiError::invalid(
                "parameter_invalid",
                "name must be 1 to 200 printable characters",
                Some("name"),
            ));
        }
        if let Some(url) = &self.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() > 2048
                || !printable(url)
            {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    "webhook_url must be an http(s) URL of at most 2048 characters",
                    Some("webhook_url"),
                ));
            }
        }
        Ok(())
    }
}

fn printable(s: &str) -> bool {
    s.chars().all(|c| !c.is_control())
}

impl CreatePaymentBody {
    /// Validates and turns the body into a command; `idempotency_key` is attached as is.
    pub fn into_command(self, idempotency_key: Option<String>) -> Result<CreatePayment, ApiError> {
        if self.amount <= 0 || self.amount > MAX_AMOUNT {
            return Err(ApiError::invalid(
                "amount_invalid",
                format!("amount must be a positive integer in minor units, at most {MAX_AMOUNT}"),
                Some("amount"),
            ));
        }
        let currency = Currency::parse(&self.currency)
            .map_err(|e| ApiError::invalid("currency_invalid", e.to_string(), Some("currency")))?;
        if let Some(email) = &self.customer_email {
            let valid = email.len() <= MAX_EMAIL_LEN
                && printable(email)
                && !email.contains(char::is_whitespace)
                && email
                    .split_once('@')
                    .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
            if !valid {
                return Err(ApiError::invalid(
                    "email_invalid",
                    "customer_email is not a valid e-mail address",
                    Some("customer_email"),
                ));
            }
        }
        if let Some(order_no) = &self.order_no {
            if order_no.is_empty() || order_no.len() > MAX_ORDER_NO_LEN || !printable(order_no) {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    format!("order_no must be 1 to {MAX_ORDER_NO_LEN} printable characters"),
                    Some("order_no"),
                ));
            }
        }
        if let Some(channel) = &self.channel {
            let ok = !channel.is_empty()
                && channel.len() <= MAX_CHANNEL_LEN
                && channel
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    format!("channel must be 1 to {MAX_CHANNEL_LEN} characters of [a-z0-9_-]"),
                    Some("channel"),
                ));
            }
        }
        let metadata = self.metadata.unwrap_or_default();
        if metadata.len() > MAX_METADATA_KEYS {
            return Err(ApiError::invalid(
                "parameter_invalid",
                format!("metadata has more than {MAX_METADATA_KEYS} keys"),
                Some("metadata"),
            ));
        }
        for (key, value) in &metadata {
            if key.is_empty()
                || key.len() > MAX_METADATA_KEY_LEN
                || value.len() > MAX_METADATA_VALUE_LEN
                || !printable(key)
                // Values may hold line breaks, as Stripe's do, but never NUL: PostgreSQL's
                // JSONB refuses `\u0000`, so the payment's snapshot could not be written.
                || value.contains('\0')
            {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    format!("metadata keys must be 1 to {MAX_METADATA_KEY_LEN} printable characters and values at most {MAX_METADATA_VALUE_LEN} characters without NUL"),
                    Some(&format!("metadata[{}]", key.chars().take(MAX_METADATA_KEY_LEN).collect::<String>())),
                ));
            }
        }
        let fingerprint = idempotency_key.as_ref().map(|_| {
            let canonical = serde_json::json!({
                "amount": self.amount,
                "currency": currency.code(),
                "customer_email": self.customer_email,
                "order_no": self.order_no,
                "channel": self.channel,
                "metadata": metadata,
                "capture_method": self.capture_method.unwrap_or_default().as_str(),
            });
            hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
        });
        Ok(CreatePayment {
            amount: self.amount,
            currency,
            customer_email: self.customer_email,
            order_no: self.order_no,
            channel: self.channel,
            metadata,
            capture_method: self.capture_method.unwrap_or_default(),
            idempotency_key,
            request_fingerprint: fingerprint,
        })
    }
}

/// Validates an `Idempotency-Key` header value.
pub fn idempotency_key(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(key)
            if !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && key.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(Some(key))
        }
        Some(_) => Err(ApiError::invalid(
            "idempotency_key_invalid",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ),
            Some("Idempotency-Key"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<CreatePayment, ApiError> {
        parse_json::<CreatePaymentBody>(json.as_bytes())?.into_command(Some("k".into()))
    }

    fn merchant(json: &str) -> Result<(), ApiError> {
        parse_json::<CreateMerchantBody>(json.as_bytes())?.validate()
    }

    #[test]
    fn refuses_nul_and_control_characters_postgresql_cannot_store() {
        let err = merchant(r#"{"name":"\u0000=\u0089\u0094"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("name"));
        let err = merchant(r#"{"name":"a","webhook_url":"http://h/\u0000"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("webhook_url"));
        let err = body(r#"{"amount":1,"currency":"eur","metadata":{"k":"a\u0000"}}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("metadata[k]"));
        assert!(merchant(r#"{"name":"Café Ünïcode"}"#).is_ok());
        assert!(body(r#"{"amount":1,"currency":"eur","metadata":{"k":"two\nlines"}}"#).is_ok());
    }

    #[test]
    fn a_webhook_api_other_than_payrail_or_stripe_is_refused_naming_it() {
        let err = merchant(r#"{"name":"a","webhook_api":"soap"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("webhook_api"));
        assert!(merchant(r#"{"name":"a","webhook_api":"stripe"}"#).is_ok());
        assert!(merchant(r#"{"name":"a","webhook_api":"payrail"}"#).is_ok());
    }

    #[test]
    fn accepts_a_minimal_valid_body() {
        let cmd = body(r#"{"amount":1000,"currency":"eur"}"#).unwrap();
        assert_eq!(cmd.amount, 1000);
        assert_eq!(cmd.currency.code(), "EUR");
        assert!(cmd.request_fingerprint.is_some());
    }

    #[test]
    fn names_the_missing_field() {
        let err = body(r#"{"currency":"eur"}"#).unwrap_err();
        assert_eq!(err.code, "parameter_missing");
        assert_eq!(err.param.as_deref(), Some("amount"));
    }

    #[test]
    fn names_the_field_with_the_wrong_type() {
        let err = body(r#"{"amount":"10","currency":"eur"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("amount"));
        let err = body(r#"{"amount":10.5,"currency":"eur"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("amount"));
    }

    #[test]
    fn refuses_unknown_fields_zero_negative_amounts_and_unknown_currencies() {
        assert_eq!(
            body(r#"{"amount":1,"currency":"eur","x":1}"#)
                .unwrap_err()
                .code,
            "parameter_unknown"
        );
        assert_eq!(
            body(r#"{"amount":0,"currency":"eur"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("amount")
        );
        assert_eq!(
            body(r#"{"amount":-5,"currency":"eur"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("amount")
        );
        assert_eq!(
            body(r#"{"amount":5,"currency":"xyz"}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("currency")
        );
        assert_eq!(
            body(r#"{"amount":5,"#).unwrap_err().code,
            "body_invalid_json"
        );
    }

    #[test]
    fn refuses_bodies_that_are_not_objects() {
        for not_an_object in ["[]", r#"[1000,"eur"]"#, "1", r#""x""#, " [ ] "] {
            let err = body(not_an_object).unwrap_err();
            assert_eq!(err.code, "body_invalid_json", "{not_an_object}");
            let err = parse_optional_json::<CancelBody>(not_an_object.as_bytes()).unwrap_err();
            assert_eq!(err.code, "body_invalid_json", "{not_an_object}");
        }
        assert_eq!(body("null").unwrap_err().code, "body_invalid_json");
        assert!(parse_optional_json::<CancelBody>(b" {} ").is_ok());
        assert!(parse_optional_json::<CancelBody>(b" null ").is_ok());
        assert!(parse_optional_json::<CancelBody>(b"").is_ok());
        assert_eq!(
            parse_optional_json::<CancelBody>(b" \n").unwrap_err().code,
            "body_invalid_json"
        );
    }

    #[test]
    fn same_body_gives_same_fingerprint_and_different_body_another() {
        let a = body(r#"{"amount":1000,"currency":"eur","metadata":{"a":"1","b":"2"}}"#).unwrap();
        let b = body(r#"{"currency":"EUR","metadata":{"b":"2","a":"1"},"amount":1000}"#).unwrap();
        let c = body(r#"{"amount":1001,"currency":"eur"}"#).unwrap();
        assert_eq!(a.request_fingerprint, b.request_fingerprint);
        assert_ne!(a.request_fingerprint, c.request_fingerprint);
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// A test payment method of the PSP sandbox, e.g. `pm_card_visa`.
    #[schema(pattern = "^[A-Za-z0-9_]{1,64}$")]
    pub payment_method: String,
    #[serde(default)]
    pub capture_method: Option<CaptureMethod>,
}

impl ConfirmBody {
    pub fn validate(&self) -> Result<(), ApiError> {
        let ok = !self.payment_method.is_empty()
            && self.payment_method.len() <= 64
            && self
                .payment_method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "parameter_invalid",
                "payment_method must be 1 to 64 characters of [A-Za-z0-9_]",
                Some("payment_method"),
            ))
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    #[serde(default)]
    pub amount: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    #[serde(default)]
    pub cancellation_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Checks an optional positive amount.
pub fn optional_amount(amount: Option<i64>) -> Result<(), ApiError> {
    match amount {
        Some(a) if a <= 0 || a > MAX_AMOUNT => Err(ApiError::invalid(
            "amount_invalid",
            format!("amount must be a positive integer in minor units, at most {MAX_AMOUNT}"),
            Some("amount"),
        )),
        _ => Ok(()),
    }
}

/// Checks a short free-text reason.
pub fn optional_reason(reason: &Option<String>, param: &str) -> Result<(), ApiError> {
    match reason {
        Some(r) if r.is_empty() || r.len() > 200 || !printable(r) => Err(ApiError::invalid(
            "parameter_invalid",
            format!("{param} must be 1 to 200 printable characters"),
            Some(param),
        )),
        _ => Ok(()),
    }
}

/// Parses an optional JSON body: none (zero bytes) or `null` (as the document allows) means
/// all defaults. Blanks alone are not JSON and are refused (found by the API fuzz test).
pub fn parse_optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() || body.trim_ascii() == b"null" {
        Ok(T::default())
    } else if body.trim_ascii().is_empty() {
        Err(ApiError::invalid(
            "body_invalid_json",
            "The request body is blank: send a JSON object, or no body",
            None,
        ))
    } else {
        parse_json(body)
    }
}
