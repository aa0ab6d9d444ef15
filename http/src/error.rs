//! The one place where errors become HTTP: `{"error":{"type","code","message","param"}}`.

use payrail_actors::payment::Refusal;
use payrail_actors::CommandError;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// The payment's current status, for refused transitions.
    pub payment_status: Option<&'static str>,
}

/// The body of every 4xx and 5xx answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorResponse<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorObject<'a> {
    /// `invalid_request_error`, `authentication_error`, `idempotency_error`, `api_error`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    kind: &'a str,
    /// Stable, machine-readable: e.g. `parameter_invalid`, `resource_missing`,
    /// `journal_unavailable`.
    #[schema(value_type = String)]
    code: &'a str,
    /// For people; may change.
    #[schema(value_type = String)]
    message: &'a str,
    /// The request field at fault, if one is.
    #[schema(value_type = Option<String>)]
    param: Option<&'a str>,
    /// The payment's current status, when a transition was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    payment_status: Option<&'a str>,
}

impl ApiError {
    pub fn invalid(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message: message.into(),
            param: param.map(str::to_string),
            payment_status: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            code: "invalid_api_key",
            message: message.into(),
            param: None,
            payment_status: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "resource_missing",
            message: message.into(),
            param: None,
            payment_status: None,
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "api_error",
            code,
            message: message.into(),
            param: None,
            payment_status: None,
        }
    }

    /// 429 `rate_limit` (with Retry-After): too many requests of this client or merchant.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: "rate_limit",
            message: message.into(),
            param: None,
            payment_status: None,
        }
    }

    /// A failure of the node's own (a database error, a bug). `detail` goes to the log,
    /// in the request's span (its request id), never to the client: database error text
    /// tells an attacker about the schema and the infrastructure.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "api_error",
            code: "internal_error",
            message:
                "An internal error occurred; the Request-Id header names it in the node's log."
                    .into(),
            param: None,
            payment_status: None,
        }
    }

    pub fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorObject {
                kind: self.kind,
                code: self.code,
                message: &self.message,
                param: self.param.as_deref(),
                payment_status: self.payment_status,
            },
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            // Every 503 here is worth retrying soon (a partition moving, the journal in
            // recovery, a node starting); with the same Idempotency-Key for a command.
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from_static(RETRY_AFTER_S),
            );
        }
        response
    }
}

/// `Retry-After` (seconds) on every 503.
pub const RETRY_AFTER_S: &str = "1";

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::NotFound => Self::not_found("No such payment"),
            CommandError::Refused(Refusal::InvalidAmount { max }) => Self::invalid(
                "amount_invalid",
                format!("amount must be between 1 and {max} minor units"),
                Some("amount"),
            ),
            CommandError::Refused(refusal @ Refusal::AlreadyExists) => Self {
                status: StatusCode::CONFLICT,
                kind: "invalid_request_error",
                code: "payment_unexpected_state",
                message: refusal.to_string(),
                param: None,
                payment_status: None,
            },
            CommandError::Refused(refusal @ Refusal::InvalidState { status, .. }) => Self {
                status: StatusCode::CONFLICT,
                kind: "invalid_request_error",
                code: "payment_unexpected_state",
                message: refusal.to_string(),
                param: None,
                payment_status: Some(status.as_str()),
            },
            CommandError::Refused(refusal @ Refusal::CaptureExceedsAuthorized { .. }) => {
                Self::invalid("amount_too_large", refusal.to_string(), Some("amount"))
            }
            CommandError::Refused(refusal @ Refusal::RefundExceedsCaptured { .. }) => {
                Self::invalid("amount_too_large", refusal.to_string(), Some("amount"))
            }
            CommandError::Refused(Refusal::UnknownRefund) => Self::not_found("No such refund"),
            // Only a PSP webhook sends these, and it answers 200 `ignored` itself.
            CommandError::Refused(refusal @ Refusal::ForeignIntent) => {
                Self::invalid("psp_reference_mismatch", refusal.to_string(), None)
            }
            CommandError::Refused(Refusal::NotFound) => Self::not_found("No such payment"),
            CommandError::IdempotencyMismatch
            | CommandError::Refused(Refusal::IdempotencyMismatch) => Self {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                kind: "idempotency_error",
                code: "idempotency_key_in_use",
                message: "Keys for idempotent requests can only be used with the same parameters they were first used with".into(),
                param: None,
                payment_status: None,
            },
            CommandError::JournalUnavailable(_) => Self::unavailable(
                "journal_unavailable",
                "The payment journal is unavailable; nothing was recorded. Retry with the same Idempotency-Key.",
            ),
            CommandError::JournalOutcomeUnknown(_) | CommandError::SpoolOutcomeUnknown(_) => Self::unavailable(
                "journal_outcome_unknown",
                "The payment journal did not confirm the write; it may or may not have been recorded. Retry with the same Idempotency-Key: a retry never records it twice.",
            ),
            CommandError::PspUnavailable(_) => Self {
                status: StatusCode::BAD_GATEWAY,
                kind: "api_error",
                code: "psp_unavailable",
                message: "The payment processor did not answer; nothing was recorded. Retry the request.".into(),
                param: None,
                payment_status: None,
            },
            CommandError::PspRefused { code, message } => Self {
                status: StatusCode::BAD_REQUEST,
                kind: "invalid_request_error",
                code: "psp_refused",
                message: format!("The payment processor refused the request: {code}: {message}"),
                param: None,
                payment_status: None,
            },
            CommandError::NotReady(reason) => Self::unavailable("node_not_ready", reason),
            CommandError::Overloaded(limit) => Self::unavailable(
                "node_overloaded",
                format!("The node is working on its maximum of {limit} commands; nothing was recorded. Retry with the same Idempotency-Key."),
            ),
            CommandError::MerchantOverloaded(limit) => Self::rate_limited(format!(
                "This merchant has its maximum of {limit} commands in flight; nothing was recorded. Retry with the same Idempotency-Key."
            )),
            CommandError::Timeout => Self::unavailable(
                "timeout",
                "The command did not complete in time. Retry with the same Idempotency-Key.",
            ),
            CommandError::Internal(reason) => Self::internal(reason),
        }
    }
}

/// A request refused before routing (by the guard, or the cluster check of an internal
/// request); [`recover`] answers it with its error object.
#[derive(Debug)]
pub(crate) struct Refused(pub ApiError);

impl warp::reject::Reject for Refused {}

/// Maps warp's own rejections (no route, wrong method, body too large, …) to error objects.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    let error = if let Some(Refused(error)) = rejection.find() {
        error.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found("Unrecognized request URL")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: "body_too_large",
            message: "The request body is too large".into(),
            param: None,
            payment_status: None,
        }
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError {
            status: StatusCode::LENGTH_REQUIRED,
            kind: "invalid_request_error",
            code: "length_required",
            message: "A Content-Length header is required".into(),
            param: None,
            payment_status: None,
        }
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "invalid_request_error",
            code: "method_not_allowed",
            message: "Method not allowed for this URL".into(),
            param: None,
            payment_status: None,
        }
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::invalid("parameter_invalid", "Invalid query string", None)
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
    {
        ApiError::invalid("header_invalid", "A header is missing or invalid", None)
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::invalid(
            "request_invalid",
            "The request could not be processed",
            None,
        )
    };
    Ok(error.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_tells_the_client_nothing_of_its_cause() {
        let detail = r#"error returned from database: relation "merchants" does not exist"#;
        let error = ApiError::internal(detail);
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.code, "internal_error");
        assert!(!error.message.contains("database"), "{}", error.message);
        assert!(!error.message.contains("merchants"), "{}", error.message);
        let from_actor = ApiError::from(CommandError::Internal(detail.into()));
        assert!(
            !from_actor.message.contains("database"),
            "{}",
            from_actor.message
        );
    }
}
