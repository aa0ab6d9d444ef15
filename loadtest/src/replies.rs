//! Reading the node's answers: a request's status and body, and the parts of a payment the
//! scenarios check (its id is safe to put in a URL, its status the one a step leads to).

use crate::report::ErrorKind;
use reqwest::{RequestBuilder, StatusCode};

/// A transport failure's kind.
pub(crate) fn classify(error: &reqwest::Error) -> ErrorKind {
    if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Transport
    }
}

/// The parts of a payment the scenarios look at.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct PaymentReply {
    pub(crate) id: String,
    pub(crate) status: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct ListReply {
    #[allow(dead_code)] // parsed to check the shape of the answer
    data: Vec<serde::de::IgnoredAny>,
}

/// Known payment and refund statuses, as stable labels for [`ErrorKind::UnexpectedStatus`].
const STATUSES: [&str; 7] = [
    "requires_payment_method",
    "requires_capture",
    "processing",
    "succeeded",
    "failed",
    "canceled",
    "pending",
];

pub(crate) fn status_label(status: &str) -> &'static str {
    STATUSES
        .iter()
        .find(|s| **s == status)
        .copied()
        .unwrap_or("other")
}

/// Payment ids go into URL paths: accept only what the node issues (`pay_` + alphanumerics).
pub(crate) fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(crate) fn parse_payment(body: &[u8]) -> Result<PaymentReply, ErrorKind> {
    let payment: PaymentReply = serde_json::from_slice(body).map_err(|_| ErrorKind::Transport)?;
    if safe_id(&payment.id) {
        Ok(payment)
    } else {
        Err(ErrorKind::Transport)
    }
}

/// The payment, if its status is one of `allowed`.
pub(crate) fn payment_in(body: &[u8], allowed: &[&str]) -> Result<PaymentReply, ErrorKind> {
    let payment = parse_payment(body)?;
    if allowed.contains(&payment.status.as_str()) {
        Ok(payment)
    } else {
        Err(ErrorKind::UnexpectedStatus(status_label(&payment.status)))
    }
}

/// Sends `request` and reads the whole body (so the connection goes back to the pool);
/// any status but `expect` is an error.
pub(crate) async fn send(
    request: RequestBuilder,
    expect: StatusCode,
) -> Result<Vec<u8>, ErrorKind> {
    let response = request.send().await.map_err(|e| classify(&e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| classify(&e))?;
    if status == expect {
        Ok(body.to_vec())
    } else {
        Err(ErrorKind::Http(status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_are_checked_for_status_and_a_safe_id() {
        let ok = br#"{"id":"pay_01abc","status":"requires_capture","amount":5}"#;
        assert_eq!(
            payment_in(ok, &["requires_capture"]).unwrap().id,
            "pay_01abc"
        );
        assert_eq!(
            payment_in(ok, &["succeeded"]).unwrap_err(),
            ErrorKind::UnexpectedStatus("requires_capture")
        );
        let odd = br#"{"id":"pay_1","status":"weird"}"#;
        assert_eq!(
            payment_in(odd, &["succeeded"]).unwrap_err(),
            ErrorKind::UnexpectedStatus("other")
        );
        let unsafe_id = br#"{"id":"../merchants","status":"succeeded"}"#;
        assert_eq!(parse_payment(unsafe_id).unwrap_err(), ErrorKind::Transport);
        assert_eq!(
            parse_payment(b"not json").unwrap_err(),
            ErrorKind::Transport
        );
        assert_eq!(
            ErrorKind::UnexpectedStatus("failed").label(),
            "status_failed"
        );
    }
}
