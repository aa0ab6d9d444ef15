//! The OpenAPI document's view of the Stripe-compatible routes (one handler in the parent
//! module serves them all): their forms, lists and error object, and one documented
//! operation per route.

use payrail_stripe_compat::objects::{PaymentIntent, Refund};
use serde::Serialize;
use std::collections::BTreeMap;

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
