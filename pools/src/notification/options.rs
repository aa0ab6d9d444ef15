//! `[notification]` and `[notification.smtp]` in config.toml.

use serde::{Deserialize, Serialize};

/// `[notification]`: webhook and e-mail delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationOptions {
    /// Delays before the 2nd, 3rd, … attempt of one delivery (ms). After the last one fails
    /// the notification is dead (and published to `notification.dlq`); attempts per round =
    /// entries + 1.
    pub retry_schedule_ms: Vec<u64>,
    /// Timeout of one webhook request or one SMTP transaction (ms).
    pub request_timeout_ms: u64,
    /// Largest webhook body (bytes) or e-mail text sent; a larger one is dead at once.
    pub max_body_bytes: u64,
    /// Bytes of a webhook response read at most (the rest is discarded).
    pub max_response_bytes: u64,
    /// Deliveries in flight per node at most.
    pub concurrency: usize,
    /// Notifications one delivery round claims at most.
    pub batch: i64,
    /// How often the delivery task looks for due notifications when idle (ms).
    pub poll_interval_ms: u64,
    /// How long a claimed notification stays reserved for the node that claimed it (ms);
    /// after a crash another node takes it over once this passes. Must exceed
    /// `request_timeout_ms`.
    pub claim_lease_ms: u64,
    /// SMTP server for customer e-mails; absent = e-mails off.
    pub smtp: Option<SmtpOptions>,
}

impl Default for NotificationOptions {
    fn default() -> Self {
        Self {
            // 1 min, 5 min, 30 min, 1 h, 2 h, 4 h, 8 h: about 15.6 h over 8 attempts.
            retry_schedule_ms: vec![
                60_000, 300_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000, 28_800_000,
            ],
            request_timeout_ms: 10_000,
            max_body_bytes: 256 * 1024,
            max_response_bytes: 64 * 1024,
            concurrency: 8,
            batch: 100,
            poll_interval_ms: 500,
            claim_lease_ms: 60_000,
            smtp: None,
        }
    }
}

/// `[notification.smtp]`: plain SMTP (no TLS; meant for a local relay).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpOptions {
    /// SMTP relay host.
    pub host: String,
    /// SMTP relay port.
    pub port: u16,
    /// `From:` of customer e-mails.
    pub from: String,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 25,
            from: "payrail <no-reply@payrail.invalid>".into(),
        }
    }
}

impl NotificationOptions {
    /// Attempts of one round (first try included).
    pub fn max_attempts(&self) -> i32 {
        self.retry_schedule_ms.len() as i32 + 1
    }

    /// Delay after the `failed_in_round`-th failed attempt of a round, or `None` when the
    /// notification is dead.
    pub fn retry_delay_ms(&self, failed_in_round: i32) -> Option<u64> {
        let index = usize::try_from(failed_in_round.checked_sub(1)?).ok()?;
        self.retry_schedule_ms.get(index).copied()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.retry_schedule_ms.len() > 50 {
            return Err("notification.retry_schedule_ms: at most 50 entries".into());
        }
        if self
            .retry_schedule_ms
            .iter()
            .any(|d| !(10..=7 * 24 * 3_600_000).contains(d))
        {
            return Err(
                "notification.retry_schedule_ms: each delay allowed 10..=604800000 ms".into(),
            );
        }
        if !(100..=120_000).contains(&self.request_timeout_ms) {
            return Err("notification.request_timeout_ms: allowed 100..=120000".into());
        }
        if !(1_024..=10 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err("notification.max_body_bytes: allowed 1024..=10485760".into());
        }
        if !(0..=10 * 1024 * 1024).contains(&self.max_response_bytes) {
            return Err("notification.max_response_bytes: allowed 0..=10485760".into());
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err("notification.concurrency: allowed 1..=256".into());
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err("notification.batch: allowed 1..=10000".into());
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return Err("notification.poll_interval_ms: allowed 10..=60000".into());
        }
        if self.claim_lease_ms <= self.request_timeout_ms + 1_000 {
            return Err(
                "notification.claim_lease_ms: must exceed request_timeout_ms by more than 1000"
                    .into(),
            );
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.is_empty() || smtp.port == 0 {
                return Err("notification.smtp: host and port (1..=65535) are required".into());
            }
            if smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(format!(
                    "notification.smtp.from: {:?} is not a mailbox (e.g. \"payrail <no-reply@example.com>\")",
                    smtp.from
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_span_hours() {
        let o = NotificationOptions::default();
        assert_eq!(o.validate(), Ok(()));
        assert_eq!(o.max_attempts(), 8);
        let total: u64 = o.retry_schedule_ms.iter().sum();
        assert!(total > 10 * 3_600_000, "{total}");
    }

    #[test]
    fn retry_delays_follow_the_schedule_then_stop() {
        let o = NotificationOptions {
            retry_schedule_ms: vec![100, 200],
            ..Default::default()
        };
        assert_eq!(o.retry_delay_ms(1), Some(100));
        assert_eq!(o.retry_delay_ms(2), Some(200));
        assert_eq!(o.retry_delay_ms(3), None);
        assert_eq!(o.retry_delay_ms(0), None);
        assert_eq!(o.max_attempts(), 3);
    }

    #[test]
    fn bad_values_name_their_key() {
        let o = NotificationOptions {
            claim_lease_ms: 5_000,
            ..Default::default()
        };
        assert!(o.validate().unwrap_err().contains("claim_lease_ms"));
        let o = NotificationOptions {
            smtp: Some(SmtpOptions {
                from: "not a mailbox".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(o.validate().unwrap_err().contains("smtp.from"));
    }
}
