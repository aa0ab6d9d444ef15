//! The payment lifecycle over real HTTP with the PSP sandbox, the real broker and
//! PostgreSQL: every test payment method end to end, with the journaled events checked.

mod common;

// The tests, grouped by what they cover; they share the `World` below.
#[path = "lifecycle/capture_cancel.rs"]
mod capture_cancel;
#[path = "lifecycle/confirm.rs"]
mod confirm;
#[path = "lifecycle/listing.rs"]
mod listing;
#[path = "lifecycle/overload.rs"]
mod overload;
#[path = "lifecycle/refunds.rs"]
mod refunds;
#[path = "lifecycle/webhooks.rs"]
mod webhooks;

use common::*;
use serde_json::Value;
use std::time::Duration;

struct World {
    env: TestEnv,
    node: NodeProcess,
    sandbox: SandboxProcess,
    api: Api,
    key: String,
}

async fn world(name: &str, node_extra: &[(&str, &str)], sandbox_args: &[&str]) -> World {
    let env = TestEnv::new(name).await;
    let port = free_port();
    let sandbox = SandboxProcess::start(&env, port, sandbox_args);
    let sandbox_env = sandbox.node_env();
    let mut extra: Vec<(&str, &str)> = sandbox_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    extra.extend_from_slice(&[
        ("PAYRAIL__PSP__POLL_AFTER_MS", "1000"),
        ("PAYRAIL__PSP__SWEEP_INTERVAL_MS", "300"),
        ("PAYRAIL__PSP__RETRY_BASE_MS", "20"),
    ]);
    extra.extend_from_slice(node_extra);
    let node = NodeProcess::start_on(&env, port, &extra).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant(name).await;
    World {
        env,
        node,
        sandbox,
        api,
        key,
    }
}

impl World {
    async fn create(&self, body: &str) -> String {
        let r = self.api.create_payment(&self.key, None, body).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    }

    async fn post(&self, path: &str, body: &str) -> Reply {
        self.api
            .send(
                reqwest::Method::POST,
                path,
                Some(&self.key),
                None,
                Some(body.to_string()),
            )
            .await
    }

    async fn confirm(&self, id: &str, payment_method: &str) -> Reply {
        self.post(
            &format!("/v1/payments/{id}/confirm"),
            &format!(r#"{{"payment_method":"{payment_method}"}}"#),
        )
        .await
    }

    async fn get(&self, id: &str) -> Value {
        let r = self.api.get_payment(&self.key, id).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let found = eventually(timeout, || async {
            let p = self.get(id).await;
            (p["status"] == status).then_some(p)
        })
        .await;
        match found {
            Some(p) => p,
            None => panic!(
                "{id} never reached {status}: {}\n{}",
                self.get(id).await,
                self.node.log_tail()
            ),
        }
    }

    /// Event types of the payment, after giving late webhooks time to arrive.
    async fn events_settled(&self, id: &str) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let events = payment_events(&self.env, id);
        for (i, (sequence, _)) in events.iter().enumerate() {
            assert_eq!(
                *sequence,
                i as u64 + 1,
                "sequence rises by one per event: {events:?}"
            );
        }
        events.into_iter().map(|(_, t)| t).collect()
    }
}
