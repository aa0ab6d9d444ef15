//! The notification pool over real HTTP, the real broker and PostgreSQL: signed webhooks to
//! a receiver in this test (in order per payment, retried, dead, DLQ, resend), and customer
//! e-mails to a real SMTP server (aiosmtpd).

mod common;

// The tests, grouped by channel and fault; they share the receiver and the `World` below.
#[path = "notifications/email.rs"]
mod email;
#[path = "notifications/redelivery.rs"]
mod redelivery;
#[path = "notifications/webhooks.rs"]
mod webhooks;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warp::Filter;

/// How the receiver answers.
#[derive(Clone, Debug)]
enum Mode {
    Ok,
    /// 500 for everything.
    Fail,
    /// 500 for the first delivery of every event of this type, then 200.
    FailFirstOf(String),
}

/// One request the receiver got, in arrival order.
#[derive(Clone, Debug)]
struct Hit {
    body: Vec<u8>,
    signature: Option<String>,
    status: u16,
    at: Instant,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// A merchant's webhook endpoint, in this test.
#[derive(Clone)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    mode: Arc<Mutex<Mode>>,
    addr: SocketAddr,
}

impl Receiver {
    fn start(mode: Mode) -> Self {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let mode = Arc::new(Mutex::new(mode));
        let (h, m) = (hits.clone(), mode.clone());
        let route = warp::path!("hook")
            .and(warp::post())
            .and(warp::header::optional::<String>("payrail-signature"))
            .and(warp::body::bytes())
            .map(
                move |signature: Option<String>, body: warp::hyper::body::Bytes| {
                    let mut hits = h.lock().unwrap();
                    let event_id = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_string));
                    let event_type = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["type"].as_str().map(str::to_string));
                    let seen_before = hits
                        .iter()
                        .any(|hit| hit.json()["id"].as_str() == event_id.as_deref());
                    let status = match &*m.lock().unwrap() {
                        Mode::Ok => 200,
                        Mode::Fail => 500,
                        Mode::FailFirstOf(t)
                            if event_type.as_deref() == Some(t) && !seen_before =>
                        {
                            500
                        }
                        Mode::FailFirstOf(_) => 200,
                    };
                    hits.push(Hit {
                        body: body.to_vec(),
                        signature,
                        status,
                        at: Instant::now(),
                    });
                    warp::reply::with_status(
                        "ok",
                        warp::http::StatusCode::from_u16(status).unwrap(),
                    )
                },
            );
        let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
        tokio::spawn(server);
        Self { hits, mode, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Hits of one payment (or one of its refunds).
    fn hits_of(&self, payment_id: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| {
                let o = &h.json()["data"]["object"];
                o["id"] == payment_id || o["payment_id"] == payment_id
            })
            .collect()
    }
}

struct World {
    env: TestEnv,
    node: NodeProcess,
    /// The node's environment on top of the test's, for restarts.
    extra: Vec<(String, String)>,
    _sandbox: SandboxProcess,
    api: Api,
    key: String,
    secret: String,
}

async fn world(name: &str, webhook_url: Option<&str>, node_extra: &[(&str, &str)]) -> World {
    let env = TestEnv::new(name).await;
    let port = free_port();
    let sandbox = SandboxProcess::start(&env, port, &[]);
    let sandbox_env = sandbox.node_env();
    let mut extra: Vec<(&str, &str)> = sandbox_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    extra.extend_from_slice(&[
        ("PAYRAIL__PSP__RETRY_BASE_MS", "20"),
        ("PAYRAIL__NOTIFICATION__POLL_INTERVAL_MS", "50"),
        ("PAYRAIL__NOTIFICATION__REQUEST_TIMEOUT_MS", "2000"),
        ("PAYRAIL__NOTIFICATION__CLAIM_LEASE_MS", "5000"),
    ]);
    extra.extend_from_slice(node_extra);
    let node = NodeProcess::start_on(&env, port, &extra).await;
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let api = Api::new(&node);
    let body = match webhook_url {
        Some(url) => serde_json::json!({"name": name, "webhook_url": url}),
        None => serde_json::json!({"name": name}),
    };
    let r = api
        .send(
            reqwest::Method::POST,
            "/v1/merchants",
            Some(ADMIN_TOKEN),
            None,
            Some(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = r.body["webhook_secret"].as_str().expect("webhook_secret");
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 38,
        "{secret}"
    );
    World {
        key: r.body["api_key"].as_str().unwrap().to_string(),
        secret: secret.to_string(),
        env,
        node,
        extra,
        _sandbox: sandbox,
        api,
    }
}

impl World {
    async fn create(&self, body: &str) -> String {
        let r = self.api.create_payment(&self.key, None, body).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    }

    async fn post(&self, key: &str, path: &str, body: &str) -> Reply {
        self.api
            .send(
                reqwest::Method::POST,
                path,
                Some(key),
                None,
                Some(body.to_string()),
            )
            .await
    }

    async fn notifications(&self, key: &str, query: &str) -> Reply {
        self.api
            .send(
                reqwest::Method::GET,
                &format!("/v1/notifications{query}"),
                Some(key),
                None,
                None,
            )
            .await
    }

    /// The payment's notifications once `done` holds for them.
    async fn wait_notifications(
        &self,
        payment_id: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let found = eventually(Duration::from_secs(60), || async {
            let r = self
                .notifications(&self.key, &format!("?payment_id={payment_id}"))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let data = r.body["data"].as_array().cloned().unwrap_or_default();
            done(&data).then_some(data)
        })
        .await;
        match found {
            Some(data) => data,
            None => panic!(
                "{what} never happened: {}\n{}",
                self.notifications(&self.key, &format!("?payment_id={payment_id}"))
                    .await
                    .body,
                self.node.log_tail()
            ),
        }
    }
}
