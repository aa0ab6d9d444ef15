//! The notification pool over real HTTP, the real broker and PostgreSQL: signed webhooks to
//! a receiver in this test (in order per payment, retried, dead, DLQ, resend), and customer
//! e-mails to a real SMTP server (aiosmtpd).

mod common;

use common::*;
use payrail_actors::signature;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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

/// A real SMTP server (tests/support/smtp_sink.py, aiosmtpd) writing what it gets to a file.
struct SmtpSink {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl SmtpSink {
    fn start() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("payrail-it-smtp-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("smtp dir");
        let out = dir.join("smtp.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let child = Command::new("python3")
            .args([script, "--port", &port.to_string(), "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("smtp.log")).expect("smtp log"))
            .spawn()
            .expect("python3 runs tests/support/smtp_sink.py");
        let mut sink = Self { child, port, out };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!(
                    "SMTP sink exited with {status} (is aiosmtpd installed? pip install aiosmtpd): {}",
                    std::fs::read_to_string(dir.join("smtp.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "SMTP sink did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

fn assert_signed(hit: &Hit, secret: &str) {
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        signature::verify(hit.signature.as_deref(), &hit.body, secret, 300, now),
        Ok(()),
        "Payrail-Signature {:?} verifies with the merchant's secret",
        hit.signature
    );
    assert_eq!(
        signature::verify(
            hit.signature.as_deref(),
            &hit.body,
            "whsec_someone_else_0123456789",
            300,
            now
        ),
        Err(signature::SignatureError::Mismatch)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_arrive_in_order_per_payment() {
    // Every payment.processing webhook fails once: the later events of the payment must
    // wait until it is delivered.
    let receiver = Receiver::start(Mode::FailFirstOf("payment.processing".into()));
    let w = world(
        "ntf_order",
        Some(&receiver.url()),
        &[("PAYRAIL__NOTIFICATION__RETRY_SCHEDULE_MS", "[700, 700]")],
    )
    .await;
    let id = w
        .create(r#"{"amount":1000,"currency":"eur","capture_method":"manual"}"#)
        .await;
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{id}/confirm"),
            r#"{"payment_method":"pm_card_visa"}"#,
        )
        .await;
    assert_eq!(r.body["status"], "requires_capture", "{}", r.body);
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{id}/capture"),
            r#"{"amount":600}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refund = w
        .post(
            &w.key,
            &format!("/v1/payments/{id}/refunds"),
            r#"{"amount":250}"#,
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.body);
    let refund_id = refund.body["id"].as_str().unwrap().to_string();
    // A second payment, interleaved on the same merchant.
    let other = w.create(r#"{"amount":300,"currency":"usd"}"#).await;

    let expected = [
        "payment.created",
        "payment.processing",
        "payment.authorized",
        "payment.succeeded",
        "refund.created",
        "refund.succeeded",
    ];
    let data = w
        .wait_notifications(&id, "all webhooks delivered", |d| {
            d.len() == expected.len() && d.iter().all(|n| n["status"] == "delivered")
        })
        .await;
    let types: Vec<&str> = data.iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert_eq!(types, expected);
    for (i, n) in data.iter().enumerate() {
        assert_eq!(n["channel"], "webhook");
        assert_eq!(n["sequence"], i as i64 + 1);
        let attempts = n["attempts"].as_array().unwrap();
        let want = if n["type"] == "payment.processing" {
            2
        } else {
            1
        };
        assert_eq!(attempts.len(), want, "{n}");
        assert_eq!(n["attempt_count"], want);
        assert_eq!(attempts.last().unwrap()["http_status"], 200, "{n}");
        if want == 2 {
            assert_eq!(attempts[0]["http_status"], 500, "{n}");
            assert_eq!(n["last_error"], Value::Null, "{n}");
        }
    }

    let hits = receiver.hits_of(&id);
    for hit in &hits {
        assert_signed(hit, &w.secret);
    }
    // Arrival order: sequence never goes down, and the first (failed) processing attempt is
    // followed by its retry before anything later of the payment.
    let sequences: Vec<i64> = hits
        .iter()
        .map(|h| h.json()["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 2, 3, 4, 5, 6], "{sequences:?}");
    let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [200, 500, 200, 200, 200, 200, 200]);
    assert!(
        hits[2].at.duration_since(hits[1].at) >= Duration::from_millis(650),
        "retry waited for the schedule"
    );
    // Bodies: Stripe-style events with the payment (or refund) as of the event.
    let bodies: Vec<Value> = hits.iter().map(Hit::json).collect();
    assert_eq!(bodies[0]["object"], "event");
    assert_eq!(bodies[0]["type"], "payment.created");
    assert!(bodies[0]["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(
        bodies[0]["data"]["object"]["status"],
        "requires_payment_method"
    );
    assert_eq!(bodies[3]["type"], "payment.authorized");
    assert_eq!(bodies[3]["data"]["object"]["status"], "requires_capture");
    assert_eq!(bodies[3]["data"]["object"]["amount_capturable"], 1000);
    assert_eq!(bodies[4]["data"]["object"]["status"], "succeeded");
    assert_eq!(bodies[4]["data"]["object"]["amount_captured"], 600);
    assert_eq!(bodies[5]["data"]["object"]["object"], "refund");
    assert_eq!(bodies[5]["data"]["object"]["id"], refund_id.as_str());
    assert_eq!(bodies[5]["data"]["object"]["status"], "pending");
    assert_eq!(bodies[6]["data"]["object"]["status"], "succeeded");
    assert_eq!(bodies[6]["data"]["object"]["amount"], 250);
    // Each event id once among the 2xx deliveries.
    let mut delivered: Vec<String> = hits
        .iter()
        .filter(|h| h.status == 200)
        .map(|h| h.json()["id"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 6);

    // The other payment got its own webhook.
    w.wait_notifications(&other, "other payment's webhook", |d| {
        d.len() == 1 && d[0]["status"] == "delivered"
    })
    .await;
    assert_eq!(receiver.hits_of(&other).len(), 1);

    // Another merchant sees none of it and cannot resend it.
    let (_, other_key) = w.api.merchant("intruder").await;
    let r = w
        .notifications(&other_key, &format!("?payment_id={id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 0, "{}", r.body);
    let ntf = data[0]["id"].as_str().unwrap();
    let r = w
        .post(&other_key, &format!("/v1/notifications/{ntf}/resend"), "")
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // A delivered notification is not resent; bad input is a 4xx error object.
    let r = w
        .post(&w.key, &format!("/v1/notifications/{ntf}/resend"), "")
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "notification_unexpected_state");
    let r = w.notifications(&w.key, "?payment_id=nope").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["param"], "payment_id");
    let r = w.notifications(&w.key, "?limit=0").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = w.notifications("sk_test_wrong", "").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = w.notifications(&w.key, "?limit=100").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 7, "{}", r.body);

    // Exactly once: the outbox has one row per event even though the pool's offsets are
    // stored per transaction (no duplicates in the table).
    let pool = w.env.pool().await;
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT event_id FROM notifications GROUP BY event_id, channel HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhooks_are_retried_then_dead_in_the_dlq_and_resend_delivers() {
    let receiver = Receiver::start(Mode::Fail);
    let w = world(
        "ntf_dead",
        Some(&receiver.url()),
        &[("PAYRAIL__NOTIFICATION__RETRY_SCHEDULE_MS", "[300, 600]")],
    )
    .await;
    let id = w.create(r#"{"amount":4200,"currency":"eur"}"#).await;
    let data = w
        .wait_notifications(&id, "the webhook dies", |d| {
            d.len() == 1 && d[0]["status"] == "dead"
        })
        .await;
    let n = &data[0];
    let ntf = n["id"].as_str().unwrap().to_string();
    assert_eq!(n["attempt_count"], 3, "{n}");
    assert_eq!(n["last_error"], "HTTP 500", "{n}");
    assert_eq!(n["next_attempt_at"], Value::Null, "{n}");
    let attempts = n["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{n}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], i as i64 + 1);
        assert_eq!(a["http_status"], 500);
        assert_eq!(a["channel"], "webhook");
    }
    // The retries followed the (shortened) schedule.
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3);
    for hit in &hits {
        assert_signed(hit, &w.secret);
    }
    let gap1 = hits[1].at.duration_since(hits[0].at);
    let gap2 = hits[2].at.duration_since(hits[1].at);
    assert!(gap1 >= Duration::from_millis(280), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(580), "{gap2:?}");
    let pool = w.env.pool().await;
    let recorded: Vec<(i32, Option<i32>, i64)> = sqlx::query_as(
        "SELECT attempt, http_status, duration_ms FROM notification_attempts WHERE notification_id = $1 ORDER BY attempt",
    )
    .bind(&ntf)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recorded.len(), 3);
    assert!(recorded.iter().all(|(_, s, d)| *s == Some(500) && *d >= 0));

    // Published to <namespace>notification.dlq.
    let dlq_topic = format!("{}notification.dlq", w.env.namespace);
    let found = eventually(Duration::from_secs(30), || async {
        let records = read_journal(&w.env.brokers, &dlq_topic, PARTITIONS);
        records
            .into_iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
            .find(|v| v["notification_id"] == ntf.as_str())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "dead notification not in {dlq_topic}\n{}",
            w.node.log_tail()
        )
    });
    assert_eq!(found["payment_id"], id.as_str());
    assert_eq!(found["event_type"], "payment.created");
    assert_eq!(found["attempts"], 3);
    assert_eq!(found["last_error"], "HTTP 500");
    assert_eq!(found["payload"]["data"]["object"]["id"], id.as_str());

    // Fixed receiver + resend: delivered, attempt numbers continue.
    receiver.set_mode(Mode::Ok);
    let r = w
        .post(&w.key, &format!("/v1/notifications/{ntf}/resend"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "pending", "{}", r.body);
    let data = w
        .wait_notifications(&id, "the resent webhook is delivered", |d| {
            d[0]["status"] == "delivered"
        })
        .await;
    let attempts = data[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{}", data[0]);
    assert_eq!(attempts[3]["attempt"], 4);
    assert_eq!(attempts[3]["http_status"], 200);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 4);
    assert_eq!(hits[3].status, 200);
    assert_eq!(
        hits[3].json()["id"],
        hits[0].json()["id"],
        "same event resent"
    );
    assert_signed(&hits[3], &w.secret);
    let r = w
        .post(&w.key, "/v1/notifications/ntf_unknown/resend", "")
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_emails_are_rendered_and_sent_over_smtp() {
    let smtp = SmtpSink::start();
    let port = smtp.port.to_string();
    // No webhook_url: e-mails only.
    let w = world(
        "ntf_email",
        None,
        &[
            ("PAYRAIL__NOTIFICATION__SMTP__HOST", "127.0.0.1"),
            ("PAYRAIL__NOTIFICATION__SMTP__PORT", &port),
            (
                "PAYRAIL__NOTIFICATION__SMTP__FROM",
                "Shop Payments <payments@shop.example>",
            ),
        ],
    )
    .await;
    let id = w
        .create(
            r#"{"amount":2500,"currency":"eur","customer_email":"buyer@example.com","order_no":"A-17"}"#,
        )
        .await;
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{id}/confirm"),
            r#"{"payment_method":"pm_card_visa"}"#,
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{id}/refunds"),
            r#"{"amount":500}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // A payment without customer_email gets no e-mail.
    let silent = w.create(r#"{"amount":100,"currency":"eur"}"#).await;

    let data = w
        .wait_notifications(&id, "e-mails delivered", |d| {
            d.len() == 3 && d.iter().all(|n| n["status"] == "delivered")
        })
        .await;
    let types: Vec<&str> = data.iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["payment.created", "payment.succeeded", "refund.succeeded"]
    );
    assert!(
        data.iter().all(|n| n["channel"] == "email"),
        "no webhooks without webhook_url"
    );
    assert!(data
        .iter()
        .all(|n| n["attempts"].as_array().unwrap().len() == 1
            && n["attempts"][0]["error"] == Value::Null));

    let messages = eventually(Duration::from_secs(10), || async {
        let m = smtp.messages();
        (m.len() >= 3).then_some(m)
    })
    .await
    .expect("three messages at the SMTP server");
    assert_eq!(messages.len(), 3, "{messages:?}");
    for m in &messages {
        assert_eq!(m["mail_from"], "payments@shop.example");
        assert_eq!(m["rcpt_tos"], serde_json::json!(["buyer@example.com"]));
        let content = m["content"].as_str().unwrap();
        assert!(content.contains(&id), "{content}");
        assert!(!content.contains("{{"), "placeholders rendered: {content}");
    }
    let content = |i: usize| messages[i]["content"].as_str().unwrap().to_string();
    assert!(
        content(0).contains("received your payment request for 25.00 EUR"),
        "{}",
        content(0)
    );
    assert!(content(0).contains("order A-17"), "{}", content(0));
    assert!(
        content(1).contains("Subject: ntf_email: payment of 25.00 EUR succeeded"),
        "{}",
        content(1)
    );
    assert!(content(2).contains("5.00 EUR refunded"), "{}", content(2));

    let r = w
        .notifications(&w.key, &format!("?payment_id={silent}"))
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 0, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_journal_notifies_nothing_twice() {
    let receiver = Receiver::start(Mode::Ok);
    let mut w = world("ntf_redeliver", Some(&receiver.url()), &[]).await;
    let a = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{a}/confirm"),
            r#"{"payment_method":"pm_card_visa"}"#,
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    let b = w.create(r#"{"amount":800,"currency":"usd"}"#).await;
    w.wait_notifications(&a, "a's webhooks delivered", |d| {
        d.len() == 3 && d.iter().all(|n| n["status"] == "delivered")
    })
    .await;
    w.wait_notifications(&b, "b's webhook delivered", |d| {
        d.len() == 1 && d[0]["status"] == "delivered"
    })
    .await;
    assert_eq!(receiver.hits().len(), 4);
    w.node.kill9();

    // Redeliver everything: group offsets back to 0, the pool's stored offsets and
    // processed event ids forgotten. Only the pool's own idempotence remains.
    let group = format!("{}payrail.notification", w.env.namespace);
    reset_group_offsets(&w.env.brokers, &group, &w.env.topic(), PARTITIONS);
    let pool = w.env.pool().await;
    for table in ["journal_offsets", "journal_processed_events"] {
        let n = sqlx::query(&format!("DELETE FROM {table} WHERE consumer = $1"))
            .bind(&group)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        assert!(n > 0, "the pool had rows in {table}");
    }
    let events = read_journal(&w.env.brokers, &w.env.topic(), PARTITIONS)
        .iter()
        .filter(|r| r.headers["event_type"] != kafka_journal::fence::OWNER_CHANGED)
        .count();
    assert_eq!(events, 4);
    let extra: Vec<(&str, &str)> = w
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = NodeProcess::start_on(&w.env, w.node.port, &extra).await;
    // Every record, the start markers of both starts included.
    let total = read_journal(&w.env.brokers, &w.env.topic(), PARTITIONS).len() as i64;
    let consumed = eventually(Duration::from_secs(60), || {
        let (pool, group) = (pool.clone(), group.clone());
        async move {
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT sum(next_offset)::BIGINT FROM journal_offsets WHERE consumer = $1",
            )
            .bind(&group)
            .fetch_one(&pool)
            .await
            .unwrap();
            (applied == Some(total)).then_some(())
        }
    })
    .await;
    assert!(
        consumed.is_some(),
        "the pool consumed the journal again\n{}",
        node.log_tail()
    );
    // Give the delivery task several rounds to send anything new.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 4, "one notification per event");
    assert_eq!(receiver.hits().len(), 4, "nothing delivered twice");
}
