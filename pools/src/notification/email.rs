//! Customer e-mails: plain-text templates (`actors/templates/email/<event type>.txt`, first
//! line `Subject: …`, then a blank line, then the body) with `{{placeholder}}`s, rendered
//! when the event is consumed and sent over SMTP by the delivery task.

use super::options::SmtpOptions;
use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use payrail_payment::Payment;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Event types that e-mail the customer, with their templates.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "payment.created",
        include_str!("../../templates/email/payment.created.txt"),
    ),
    (
        "payment.succeeded",
        include_str!("../../templates/email/payment.succeeded.txt"),
    ),
    (
        "payment.failed",
        include_str!("../../templates/email/payment.failed.txt"),
    ),
    (
        "refund.succeeded",
        include_str!("../../templates/email/refund.succeeded.txt"),
    ),
];

/// A rendered e-mail, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedEmail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// Formats minor units with the currency's digits: `2500 EUR` → `25.00 EUR`.
pub fn format_amount(minor: i64, payment: &Payment) -> String {
    let digits = u32::from(payment.currency.minor_unit_digits());
    let code = payment.currency.code();
    if digits == 0 {
        return format!("{minor} {code}");
    }
    let scale = 10i64.pow(digits);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$} {code}",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}

/// Keeps placeholder values on one line (no header injection through a subject).
fn one_line(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Renders the template of `event_type` for `payment`, if the event e-mails the customer and
/// the payment has a customer e-mail. `refund_id` names the refund of refund events.
pub fn render(
    event_type: &str,
    payment: &Payment,
    refund_id: Option<&str>,
    merchant_name: &str,
) -> Option<RenderedEmail> {
    let to = payment.customer_email.as_deref()?;
    let template = TEMPLATES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, body)| *body)?;
    let refund = refund_id.and_then(|id| payment.refund(id));
    let values: [(&str, String); 7] = [
        ("merchant_name", merchant_name.to_string()),
        ("payment_id", payment.id.clone()),
        ("amount", format_amount(payment.amount, payment)),
        (
            "order_no",
            payment.order_no.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "failure_message",
            payment
                .failure_message
                .clone()
                .unwrap_or_else(|| "the payment was declined".into()),
        ),
        (
            "refund_amount",
            refund
                .map(|r| format_amount(r.amount, payment))
                .unwrap_or_default(),
        ),
        (
            "refund_id",
            refund.map(|r| r.id.clone()).unwrap_or_default(),
        ),
    ];
    let mut rendered = template.to_string();
    for (key, value) in &values {
        rendered = rendered.replace(&format!("{{{{{key}}}}}"), &one_line(value));
    }
    let (first, text) = rendered.split_once("\n\n")?;
    let subject = first.strip_prefix("Subject: ")?.trim().to_string();
    Some(RenderedEmail {
        to: to.to_string(),
        subject,
        text: text.to_string(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// Will never succeed (bad address, unbuildable message): the notification is dead.
    #[error("e-mail cannot be sent: {0}")]
    Permanent(String),
    /// May succeed later (connection, timeout, 4xx/5xx from the relay).
    #[error("smtp: {0}")]
    Transient(String),
}

/// SMTP client of the delivery task.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(options: &SmtpOptions, timeout: Duration) -> Result<Self, EmailError> {
        let from = options
            .from
            .parse::<Mailbox>()
            .map_err(|e| EmailError::Permanent(format!("notification.smtp.from: {e}")))?;
        // Plain SMTP: meant for a relay on loopback or a private network.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&options.host)
            .port(options.port)
            .timeout(Some(timeout))
            .build();
        Ok(Self { transport, from })
    }

    pub async fn send(&self, email: &RenderedEmail) -> Result<(), EmailError> {
        let to = email
            .to
            .parse::<Mailbox>()
            .map_err(|e| EmailError::Permanent(format!("recipient address: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(email.text.clone())
            .map_err(|e| EmailError::Permanent(e.to_string()))?;
        // A relay's 5xx is retried too: relays answer 5xx for passing conditions as well.
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| EmailError::Transient(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payrail_payment::machine::{Payment, PaymentStatus};
    use payrail_payment::money::Currency;
    use payrail_payment::{CaptureMethod, Refund, RefundStatus};

    fn payment(currency: &str, email: Option<&str>) -> Payment {
        Payment {
            id: "pay_1".into(),
            merchant_id: "mer_1".into(),
            amount: 2500,
            currency: Currency::parse(currency).unwrap(),
            status: PaymentStatus::Succeeded,
            capture_method: CaptureMethod::Automatic,
            payment_method: None,
            amount_capturable: 0,
            amount_captured: 2500,
            amount_refunded: 0,
            refunds: vec![Refund {
                id: "re_1".into(),
                amount: 999,
                status: RefundStatus::Succeeded,
                reason: None,
                created_at_micros: 0,
            }],
            psp_reference: None,
            failure_code: None,
            failure_message: None,
            customer_email: email.map(str::to_string),
            order_no: Some("A-1\r\nBcc: x@y".into()),
            channel: None,
            metadata: Default::default(),
            idempotency_key: None,
            created_at_micros: 0,
            updated_at_micros: 0,
            sequence: 1,
        }
    }

    #[test]
    fn amounts_use_the_currency_digits() {
        assert_eq!(format_amount(2500, &payment("EUR", None)), "25.00 EUR");
        assert_eq!(format_amount(5, &payment("EUR", None)), "0.05 EUR");
        assert_eq!(format_amount(2500, &payment("JPY", None)), "2500 JPY");
        assert_eq!(format_amount(1234, &payment("KWD", None)), "1.234 KWD");
    }

    #[test]
    fn every_template_renders_without_leftover_placeholders() {
        let p = payment("EUR", Some("buyer@example.com"));
        for (event_type, _) in TEMPLATES {
            let email = render(event_type, &p, Some("re_1"), "Shop").unwrap();
            assert_eq!(email.to, "buyer@example.com");
            assert!(!email.subject.is_empty() && !email.subject.contains('\n'));
            assert!(
                !email.text.contains("{{") && !email.subject.contains("{{"),
                "{event_type}: {email:?}"
            );
            assert!(email.text.contains("pay_1"), "{event_type}: {email:?}");
        }
        let refund = render("refund.succeeded", &p, Some("re_1"), "Shop").unwrap();
        assert!(refund.subject.contains("9.99 EUR"), "{refund:?}");
        assert!(!refund.text.contains("\r\nBcc"), "{refund:?}");
    }

    #[test]
    fn no_email_without_address_or_template() {
        assert!(render("payment.created", &payment("EUR", None), None, "Shop").is_none());
        let p = payment("EUR", Some("buyer@example.com"));
        assert!(render("payment.processing", &p, None, "Shop").is_none());
    }
}
