//! Signed PSP webhooks abused against a real node: bad, stale (past and future), malformed,
//! tampered, oversized, unknown-channel and replayed (in sequence and concurrently) inputs.
//! Each refused one changes nothing: the payment's journaled events, its status and the
//! webhook de-duplication table are as before. A replayed event is applied once.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const TOLERANCE_S: i64 = 60;
const MAX_BODY_BYTES: usize = 4096;

fn event(id: &str, intent: &str, payment_id: &str, merchant_id: &str) -> String {
    serde_json::json!({
        "id": id,
        "object": "event",
        "type": "payment_intent.payment_failed",
        "data": {"object": {
            "id": intent, "object": "payment_intent", "amount": 100, "currency": "eur",
            "status": "requires_payment_method", "amount_capturable": 0, "amount_received": 0,
            "metadata": {"payment_id": payment_id, "merchant_id": merchant_id},
            "last_payment_error": {"code": "card_declined", "message": "abuse"}
        }}
    })
    .to_string()
}

fn sign(t: i64, body: &str) -> String {
    payrail_actors::signature::header(WEBHOOK_SECRET, t, body.as_bytes())
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    channel: &str,
    signature: Option<&str>,
    body: String,
) -> (u16, Value) {
    let mut request = client
        .post(format!("{base}/webhooks/psp/{channel}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    let response = request.send().await.expect("webhook sent");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn webhook_rows(pool: &sqlx::PgPool) -> Vec<(String, bool)> {
    sqlx::query_as("SELECT event_id, processed FROM psp_webhook_events ORDER BY event_id")
        .fetch_all(pool)
        .await
        .expect("psp_webhook_events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abused_webhooks_change_nothing_and_a_replay_is_applied_once() {
    let env = TestEnv::new("webhook_abuse").await;
    let port = free_port();
    // The sandbox never sends its own outcome for pm_card_delayed within the test.
    let sandbox = SandboxProcess::start(&env, port, &["--outcome-delay-ms", "600000"]);
    let mut extra = sandbox.node_env();
    extra.extend([
        ("PAYRAIL__PSP__POLL_AFTER_MS".into(), "600000".into()),
        (
            "PAYRAIL__PSP__WEBHOOK_TOLERANCE_S".into(),
            TOLERANCE_S.to_string(),
        ),
        (
            "PAYRAIL__HTTP__MAX_BODY_BYTES".into(),
            MAX_BODY_BYTES.to_string(),
        ),
    ]);
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = NodeProcess::start_on(&env, port, &extra).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("WebhookAbuse").await;
    let created = api
        .create_payment(&key, None, r#"{"amount":100,"currency":"eur"}"#)
        .await;
    let id = created.body["id"].as_str().expect("id").to_string();
    let confirmed = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/payments/{id}/confirm"),
            Some(&key),
            None,
            Some(r#"{"payment_method":"pm_card_delayed"}"#.into()),
        )
        .await;
    assert_eq!(confirmed.body["status"], "processing", "{}", confirmed.body);
    let intent = confirmed.body["processor_reference"]
        .as_str()
        .expect("the payment's intent")
        .to_string();
    let pool = env.pool().await;
    let before_events = payment_events(&env, &id);
    let before_rows = webhook_rows(&pool).await;
    let client = reqwest::Client::new();
    let base = node.base.as_str();
    let now = chrono::Utc::now().timestamp();

    // (case, channel, signature header, body, expected status)
    let good = event("evt_abuse_good", &intent, &id, &merchant_id);
    let mut oversized_event: Value =
        serde_json::from_str(&event("evt_big", &intent, &id, &merchant_id)).expect("event json");
    oversized_event["data"]["object"]["padding"] = "x".repeat(MAX_BODY_BYTES).into();
    let oversized = oversized_event.to_string();
    let stale_body = event("evt_stale", &intent, &id, &merchant_id);
    let future_body = event("evt_future", &intent, &id, &merchant_id);
    let tampered_body = event("evt_tampered", &intent, &id, &merchant_id);
    let wrong_secret = event("evt_wrong_secret", &intent, &id, &merchant_id);
    let cases: Vec<(&str, &str, Option<String>, String, u16)> = vec![
        ("no signature", "sandbox", None, good.clone(), 401),
        (
            "wrong secret",
            "sandbox",
            Some(payrail_actors::signature::header(
                "whsec_not_the_secret_000",
                now,
                wrong_secret.as_bytes(),
            )),
            wrong_secret.clone(),
            401,
        ),
        (
            "stale timestamp",
            "sandbox",
            Some(sign(now - TOLERANCE_S - 5, &stale_body)),
            stale_body.clone(),
            401,
        ),
        (
            "future timestamp",
            "sandbox",
            Some(sign(now + TOLERANCE_S + 5, &future_body)),
            future_body.clone(),
            401,
        ),
        (
            "body changed after signing",
            "sandbox",
            Some(sign(now, &tampered_body)),
            tampered_body.replace("card_declined", "card_Declined"),
            401,
        ),
        (
            "malformed: garbage",
            "sandbox",
            Some("garbage".into()),
            good.clone(),
            401,
        ),
        (
            "malformed: empty",
            "sandbox",
            Some(String::new()),
            good.clone(),
            401,
        ),
        (
            "malformed: no v1",
            "sandbox",
            Some(format!("t={now}")),
            good.clone(),
            401,
        ),
        (
            "malformed: no t",
            "sandbox",
            Some(format!("v1={}", "ab".repeat(32))),
            good.clone(),
            401,
        ),
        (
            "malformed: t not a number",
            "sandbox",
            Some(format!("t=soon,v1={}", "ab".repeat(32))),
            good.clone(),
            401,
        ),
        (
            "malformed: v1 not hex",
            "sandbox",
            Some(format!("t={now},v1=zz")),
            good.clone(),
            401,
        ),
        (
            "unknown channel",
            "stripe",
            Some(sign(now, &good)),
            good.clone(),
            404,
        ),
        (
            "oversized body",
            "sandbox",
            Some(sign(now, &oversized)),
            oversized.clone(),
            413,
        ),
    ];
    assert!(oversized.len() > MAX_BODY_BYTES);
    for (case, channel, signature, body, expected) in &cases {
        let (status, answer) =
            post(&client, base, channel, signature.as_deref(), body.clone()).await;
        assert_eq!(status, *expected, "{case}: {answer}");
        assert!(
            answer["error"]["type"].is_string(),
            "{case}: an error object, got {answer}"
        );
        if *expected == 401 {
            assert_eq!(answer["error"]["type"], "authentication_error", "{case}");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        payment_events(&env, &id),
        before_events,
        "refused webhooks journal nothing"
    );
    assert_eq!(
        webhook_rows(&pool).await,
        before_rows,
        "nor are they recorded"
    );
    let still = api.get_payment(&key, &id).await;
    assert_eq!(still.body["status"], "processing");

    // Correctly signed, but for another intent whose metadata names this payment (the
    // metadata is the sender's to write): received, and it changes nothing.
    let foreign = event("evt_foreign_intent", "pi_someone_else", &id, &merchant_id);
    let (status, answer) = post(
        &client,
        base,
        "sandbox",
        Some(&sign(now, &foreign)),
        foreign,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["ignored"].is_string(), "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        payment_events(&env, &id),
        before_events,
        "a foreign intent journals nothing"
    );
    assert_eq!(
        api.get_payment(&key, &id).await.body["status"],
        "processing"
    );
    println!(
        "webhook abuse: {} refused cases, journal unchanged ({} events of the payment)",
        cases.len(),
        before_events.len()
    );

    // Replays: the same event, re-sent as is, re-signed later, and five at once.
    let (status, first) = post(
        &client,
        base,
        "sandbox",
        Some(&sign(now, &good)),
        good.clone(),
    )
    .await;
    assert_eq!(
        (status, &first["received"]),
        (200, &Value::Bool(true)),
        "{first}"
    );
    assert!(first.get("duplicate").is_none(), "{first}");
    let (status, again) = post(
        &client,
        base,
        "sandbox",
        Some(&sign(now, &good)),
        good.clone(),
    )
    .await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &Value::Bool(true)),
        "{again}"
    );
    let resigned = sign(chrono::Utc::now().timestamp() + 1, &good);
    let (status, again) = post(&client, base, "sandbox", Some(&resigned), good.clone()).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &Value::Bool(true)),
        "{again}"
    );
    let burst = futures::future::join_all((0..5).map(|_| {
        let signature = sign(now, &good);
        let body = good.clone();
        let client = client.clone();
        async move { post(&client, base, "sandbox", Some(&signature), body).await }
    }))
    .await;
    for (status, answer) in &burst {
        assert_eq!(*status, 200, "{answer}");
    }
    // A second event id for the same outcome: received, but the payment is already failed.
    let other = event("evt_abuse_other", &intent, &id, &merchant_id);
    let (status, answer) = post(&client, base, "sandbox", Some(&sign(now, &other)), other).await;
    assert_eq!(status, 200, "{answer}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = payment_events(&env, &id);
    let new: Vec<&String> = after[before_events.len()..]
        .iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(&after[..before_events.len()], &before_events[..]);
    assert_eq!(
        new.len(),
        1,
        "one transition for the replayed outcome: {new:?}"
    );
    assert_eq!(api.get_payment(&key, &id).await.body["status"], "failed");
    let rows = webhook_rows(&pool).await;
    assert_eq!(
        rows.iter().filter(|(e, _)| e == "evt_abuse_good").count(),
        1,
        "{rows:?}"
    );
    println!(
        "webhook abuse: event replayed 8 times (2 re-sent, 1 re-signed, 5 concurrent) and a second id: {} journaled transition ({:?})",
        new.len(),
        new
    );
    drop(sandbox);
}
