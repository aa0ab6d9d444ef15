//! `Api`: an HTTP client bound to one node, with the calls most tests make.

use super::{NodeProcess, ADMIN_TOKEN};
use serde_json::Value;
use std::time::Duration;

/// HTTP client bound to one node.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Api {
    pub fn new(node: &NodeProcess) -> Self {
        Self {
            base: node.base.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        idem: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idem {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, body }
    }

    /// Like `create_payment`, but a connection failure (node down) is `None`, not a panic.
    pub async fn try_create_payment(&self, key: &str, body: &str) -> Option<Reply> {
        let response = self
            .client
            .post(format!("{}/v1/payments", self.base))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.ok()?;
        Some(Reply { status, body })
    }

    /// Creates a merchant; returns (id, api key).
    pub async fn merchant(&self, name: &str) -> (String, String) {
        let r = self
            .send(
                reqwest::Method::POST,
                "/v1/merchants",
                Some(ADMIN_TOKEN),
                None,
                Some(format!(r#"{{"name":"{name}"}}"#)),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        (
            r.body["id"].as_str().expect("merchant id").to_string(),
            r.body["api_key"].as_str().expect("api key").to_string(),
        )
    }

    pub async fn create_payment(&self, key: &str, idem: Option<&str>, body: &str) -> Reply {
        self.send(
            reqwest::Method::POST,
            "/v1/payments",
            Some(key),
            idem,
            Some(body.to_string()),
        )
        .await
    }

    pub async fn get_payment(&self, key: &str, id: &str) -> Reply {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/payments/{id}"),
            Some(key),
            None,
            None,
        )
        .await
    }

    /// The value of one series of the node's `/metrics` (`name{labels}` exactly as
    /// rendered), 0 when absent.
    pub async fn metric_value(&self, series: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Creates whose Idempotency-Key the node's fresh-key filter knew new (look-up skipped).
    pub async fn lookups_skipped(&self) -> f64 {
        self.metric_value(r#"payrail_idempotency_lookups_total{result="skipped"}"#)
            .await
    }

    /// The merchant's `field` (a count or an amount) summed over every currency of the
    /// test's days ([`super::test_days`]): right even when the test crosses UTC midnight.
    pub async fn metric_total(&self, key: &str, field: &str) -> i64 {
        let mut total = 0;
        for day in super::test_days() {
            let reply = self.metrics(key, &day).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if let Some(rows) = reply.body["data"].as_array() {
                total += rows.iter().filter_map(|r| r[field].as_i64()).sum::<i64>();
            }
        }
        total
    }

    pub async fn metrics(&self, key: &str, date: &str) -> Reply {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/analytics/payment-metrics?date={date}"),
            Some(key),
            None,
            None,
        )
        .await
    }
}
