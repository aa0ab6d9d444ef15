//! The payment lifecycle over real HTTP with the PSP sandbox, the real broker and
//! PostgreSQL: every test payment method end to end, with the journaled events checked.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visa_succeeds_and_its_webhook_adds_no_event() {
    let w = world("visa", &[], &[]).await;
    let id = w.create(r#"{"amount":2500,"currency":"eur"}"#).await;
    let r = w.confirm(&id, "pm_card_visa").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["amount_captured"], 2500);
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_card_fails_with_its_code() {
    let w = world("declined", &[], &[]).await;
    let id = w.create(r#"{"amount":900,"currency":"usd"}"#).await;
    let r = w.confirm(&id, "pm_card_declined").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "failed");
    assert_eq!(r.body["failure_code"], "card_declined");
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.failed"]
    );
    let again = w.confirm(&id, "pm_card_visa").await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.body["error"]["payment_status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_capture_then_partial_capture_and_partial_refunds_add_up() {
    let w = world("manual", &[], &[]).await;
    let id = w
        .create(r#"{"amount":1000,"currency":"eur","capture_method":"manual"}"#)
        .await;
    let r = w.confirm(&id, "pm_card_visa").await;
    assert_eq!(r.body["status"], "requires_capture", "{}", r.body);
    assert_eq!(r.body["amount_capturable"], 1000);

    let over = w
        .post(&format!("/v1/payments/{id}/capture"), r#"{"amount":1001}"#)
        .await;
    assert_eq!(over.status, 400, "{}", over.body);
    assert_eq!(over.body["error"]["param"], "amount");
    let captured = w
        .post(&format!("/v1/payments/{id}/capture"), r#"{"amount":600}"#)
        .await;
    assert_eq!(captured.status, 200, "{}", captured.body);
    assert_eq!(captured.body["status"], "succeeded");
    assert_eq!(captured.body["amount_captured"], 600);

    for amount in [200, 300] {
        let refund = w
            .post(
                &format!("/v1/payments/{id}/refunds"),
                &format!(r#"{{"amount":{amount},"reason":"requested_by_customer"}}"#),
            )
            .await;
        assert_eq!(refund.status, 201, "{}", refund.body);
        assert_eq!(refund.body["object"], "refund");
        assert_eq!(refund.body["status"], "succeeded");
        assert_eq!(refund.body["amount"], amount);
    }
    let too_much = w
        .post(&format!("/v1/payments/{id}/refunds"), r#"{"amount":101}"#)
        .await;
    assert_eq!(too_much.status, 400, "{}", too_much.body);
    assert_eq!(too_much.body["error"]["code"], "amount_too_large");
    let rest = w.post(&format!("/v1/payments/{id}/refunds"), "").await;
    assert_eq!(rest.status, 201, "{}", rest.body);
    assert_eq!(rest.body["amount"], 100);

    let payment = w.get(&id).await;
    assert_eq!(payment["amount_captured"], 600);
    assert_eq!(payment["amount_refunded"], 600);
    assert_eq!(payment["refunds"].as_array().unwrap().len(), 3);
    assert_eq!(
        w.events_settled(&id).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.succeeded",
            "refund.created",
            "refund.succeeded",
            "refund.created",
            "refund.succeeded",
            "refund.created",
            "refund.succeeded"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_retried_with_the_same_key_refunds_once() {
    let w = world("refund_idem", &[], &[]).await;
    let id = w.create(r#"{"amount":800,"currency":"eur"}"#).await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "succeeded"
    );
    let path = format!("/v1/payments/{id}/refunds");
    let first = w
        .api
        .send(
            reqwest::Method::POST,
            &path,
            Some(&w.key),
            Some("refund-1"),
            Some(r#"{"amount":300}"#.into()),
        )
        .await;
    let second = w
        .api
        .send(
            reqwest::Method::POST,
            &path,
            Some(&w.key),
            Some("refund-1"),
            Some(r#"{"amount":300}"#.into()),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(w.get(&id).await["amount_refunded"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_retried_with_the_same_key_and_another_amount_is_refused() {
    let w = world("refund_idem_mismatch", &[], &[]).await;
    let id = w.create(r#"{"amount":800,"currency":"eur"}"#).await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "succeeded"
    );
    let path = format!("/v1/payments/{id}/refunds");
    let refund = |amount: &'static str| {
        w.api.send(
            reqwest::Method::POST,
            &path,
            Some(&w.key),
            Some("refund-1"),
            Some(format!(r#"{{"amount":{amount}}}"#)),
        )
    };
    let first = refund("300").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let other = refund("500").await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "idempotency_key_in_use");
    // Nothing changed: one refund of 300.
    let payment = w.get(&id).await;
    assert_eq!(payment["amount_refunded"], 300, "{payment}");
    assert_eq!(payment["refunds"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_card_stays_processing_until_its_webhook_arrives() {
    let w = world(
        "delayed",
        &[("PAYRAIL__PSP__POLL_AFTER_MS", "600000")],
        &["--outcome-delay-ms", "1500"],
    )
    .await;
    let id = w.create(r#"{"amount":1234,"currency":"gbp"}"#).await;
    let r = w.confirm(&id, "pm_card_delayed").await;
    assert_eq!(r.body["status"], "processing", "{}", r.body);
    w.wait_status(&id, "succeeded", Duration::from_secs(15))
        .await;
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_webhook_is_resolved_by_polling_the_psp() {
    let w = world("lost_webhook", &[], &["--outcome-delay-ms", "300"]).await;
    let id = w.create(r#"{"amount":4321,"currency":"eur"}"#).await;
    let r = w.confirm(&id, "pm_card_lost_webhook").await;
    assert_eq!(r.body["status"], "processing", "{}", r.body);
    let reference = r.body["processor_reference"].as_str().unwrap().to_string();
    let payment = w
        .wait_status(&id, "succeeded", Duration::from_secs(20))
        .await;
    assert_eq!(payment["amount_captured"], 4321);
    let sent = reqwest::get(format!(
        "{}/v1/test/events?payment_intent={reference}",
        w.sandbox.base
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(
        sent["data"].as_array().unwrap().len(),
        0,
        "the sandbox sent no webhook"
    );
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psp_errors_are_retried_with_the_same_idempotency_key() {
    let w = world("psp_error", &[], &["--error-count", "2"]).await;
    let id = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let r = w.confirm(&id, "pm_card_psp_error").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(
        w.events_settled(&id).await,
        ["payment.created", "payment.processing", "payment.succeeded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_confirmation_and_of_an_authorization() {
    let w = world("cancel", &[], &[]).await;
    let early = w.create(r#"{"amount":100,"currency":"eur"}"#).await;
    let r = w
        .post(
            &format!("/v1/payments/{early}/cancel"),
            r#"{"cancellation_reason":"abandoned"}"#,
        )
        .await;
    assert_eq!(r.body["status"], "canceled", "{}", r.body);

    let held = w
        .create(r#"{"amount":100,"currency":"eur","capture_method":"manual"}"#)
        .await;
    assert_eq!(
        w.confirm(&held, "pm_card_visa").await.body["status"],
        "requires_capture"
    );
    let r = w.post(&format!("/v1/payments/{held}/cancel"), "").await;
    assert_eq!(r.body["status"], "canceled", "{}", r.body);
    let capture = w.post(&format!("/v1/payments/{held}/capture"), "").await;
    assert_eq!(capture.status, 409, "{}", capture.body);
    assert_eq!(capture.body["error"]["payment_status"], "canceled");
    assert_eq!(
        w.events_settled(&held).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.canceled"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaptured_authorization_expires() {
    let w = world(
        "expire",
        &[("PAYRAIL__PSP__AUTHORIZATION_TTL_MS", "1000")],
        &[],
    )
    .await;
    let id = w
        .create(r#"{"amount":100,"currency":"eur","capture_method":"manual"}"#)
        .await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "requires_capture"
    );
    w.wait_status(&id, "expired", Duration::from_secs(20)).await;
    assert_eq!(
        w.events_settled(&id).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.expired"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_webhooks_add_no_events() {
    let w = world("replayed_webhooks", &[], &[]).await;
    let id = w
        .create(r#"{"amount":1000,"currency":"eur","capture_method":"manual"}"#)
        .await;
    let confirmed = w.confirm(&id, "pm_card_visa").await;
    let reference = confirmed.body["processor_reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        w.post(&format!("/v1/payments/{id}/capture"), "").await.body["status"],
        "succeeded"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = payment_events(&w.env, &id);

    let client = reqwest::Client::new();
    let sent: Value = client
        .get(format!(
            "{}/v1/test/events?payment_intent={reference}",
            w.sandbox.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = sent["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.len() >= 2,
        "authorized and succeeded webhooks were sent: {sent}"
    );
    // Resend them newest first (out of order), twice each (duplicates).
    for event_id in ids.iter().rev().chain(ids.iter().rev()) {
        let r: Value = client
            .post(format!(
                "{}/v1/test/events/{event_id}/resend",
                w.sandbox.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["delivered"], true, "{r}");
    }
    assert_eq!(payment_events(&w.env, &id), before, "no duplicate event");
    assert_eq!(w.get(&id).await["status"], "succeeded");
}

fn signed_event(
    id: &str,
    intent: &str,
    payment_id: &str,
    merchant_id: &str,
    t: i64,
    secret: &str,
) -> (String, String) {
    let body = serde_json::json!({
        "id": id,
        "object": "event",
        "type": "payment_intent.payment_failed",
        "created": t,
        "data": {"object": {
            "id": intent, "object": "payment_intent", "amount": 100, "currency": "eur",
            "status": "requires_payment_method", "amount_capturable": 0, "amount_received": 0,
            "metadata": {"payment_id": payment_id, "merchant_id": merchant_id},
            "last_payment_error": {"code": "card_declined", "message": "forged"}
        }}
    })
    .to_string();
    let header = payrail_actors::signature::header(secret, t, body.as_bytes());
    (body, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stale_or_missing_webhook_signatures_are_refused_and_change_nothing() {
    let w = world(
        "signatures",
        &[("PAYRAIL__PSP__POLL_AFTER_MS", "600000")],
        &["--outcome-delay-ms", "600000"],
    )
    .await;
    let id = w.create(r#"{"amount":100,"currency":"eur"}"#).await;
    let merchant_id = w.get(&id).await["merchant_id"]
        .as_str()
        .unwrap()
        .to_string();
    let confirmed = w.confirm(&id, "pm_card_delayed").await;
    assert_eq!(confirmed.body["status"], "processing");
    let intent = confirmed.body["processor_reference"]
        .as_str()
        .unwrap()
        .to_string();
    let before = payment_events(&w.env, &id);
    let url = format!("{}/webhooks/psp/sandbox", w.node.base);
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();

    let (body, _) = signed_event(
        "evt_missing",
        &intent,
        &id,
        &merchant_id,
        now,
        WEBHOOK_SECRET,
    );
    let missing = client.post(&url).body(body).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 401);

    let (body, header) = signed_event(
        "evt_wrong_secret",
        &intent,
        &id,
        &merchant_id,
        now,
        "whsec_not_the_secret_000",
    );
    let wrong = client
        .post(&url)
        .header("Stripe-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    let (body, header) = signed_event(
        "evt_stale",
        &intent,
        &id,
        &merchant_id,
        now - 301,
        WEBHOOK_SECRET,
    );
    let stale = client
        .post(&url)
        .header("Stripe-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 401);
    let error: Value = stale.json().await.unwrap();
    assert_eq!(error["error"]["code"], "signature_invalid");

    let (body, header) = signed_event(
        "evt_tampered",
        &intent,
        &id,
        &merchant_id,
        now,
        WEBHOOK_SECRET,
    );
    let tampered = client
        .post(&url)
        .header("Stripe-Signature", header)
        .body(body.replace("forged", "forgeD"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status().as_u16(), 401);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        payment_events(&w.env, &id),
        before,
        "refused webhooks journal nothing"
    );
    assert_eq!(w.get(&id).await["status"], "processing");

    // The same event correctly signed is accepted: the refusals above were for the signature.
    let (body, header) = signed_event("evt_good", &intent, &id, &merchant_id, now, WEBHOOK_SECRET);
    let good = client
        .post(&url)
        .header("Stripe-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(good.status().as_u16(), 200);
    assert_eq!(w.get(&id).await["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_payments_are_rebuilt_with_their_state() {
    let w = world(
        "passivation",
        &[("PAYRAIL__ACTORS__PASSIVATE_AFTER_MS", "200")],
        &[],
    )
    .await;
    let id = w
        .create(r#"{"amount":1500,"currency":"eur","capture_method":"manual"}"#)
        .await;
    assert_eq!(
        w.confirm(&id, "pm_card_visa").await.body["status"],
        "requires_capture"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rebuilt = w.get(&id).await;
    assert_eq!(rebuilt["status"], "requires_capture");
    assert_eq!(rebuilt["amount_capturable"], 1500);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let captured = w
        .post(&format!("/v1/payments/{id}/capture"), r#"{"amount":1000}"#)
        .await;
    assert_eq!(captured.status, 200, "{}", captured.body);
    assert_eq!(captured.body["amount_captured"], 1000);
    assert_eq!(
        w.events_settled(&id).await,
        [
            "payment.created",
            "payment.processing",
            "payment.authorized",
            "payment.succeeded"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_the_merchants_payments_newest_first() {
    let w = world("list", &[], &[]).await;
    // Keyed creates get ids derived from their keys, which do not sort by time: the list
    // must still come newest first (6 payments: id order matches by chance 1 time in 720).
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = format!(r#"{{"amount":{},"currency":"eur"}}"#, 100 + i);
        let r = w
            .api
            .create_payment(&w.key, Some(&format!("list-{i}")), &body)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let page = |after: Option<String>| {
        let w = &w;
        async move {
            let query = match after {
                Some(a) => format!("/v1/payments?limit=2&starting_after={a}"),
                None => "/v1/payments?limit=2".to_string(),
            };
            w.api
                .send(reqwest::Method::GET, &query, Some(&w.key), None, None)
                .await
                .body
        }
    };
    let listed = eventually(Duration::from_secs(10), || async {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let body = page(after.clone()).await;
            assert_eq!(body["object"], "list");
            let data = body["data"].as_array().unwrap().clone();
            all.extend(data.iter().map(|p| p["id"].as_str().unwrap().to_string()));
            if body["has_more"] != true {
                break;
            }
            after = all.last().cloned();
        }
        (all == ids).then_some(all)
    })
    .await;
    assert!(
        listed.is_some(),
        "pages list every payment once, newest first"
    );
    let bad = w
        .api
        .send(
            reqwest::Method::GET,
            "/v1/payments?limit=0",
            Some(&w.key),
            None,
            None,
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_the_in_flight_limit_is_refused_at_once_and_records_nothing() {
    // One command at a time, and a confirm that holds its slot while the node retries the
    // failing PSP (3 errors, 400 ms base backoff: about 2.8 s).
    let w = world(
        "overloaded",
        &[
            ("PAYRAIL__ACTORS__MAX_IN_FLIGHT_COMMANDS", "1"),
            ("PAYRAIL__PSP__RETRY_BASE_MS", "400"),
        ],
        &["--error-count", "3"],
    )
    .await;
    let id = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let confirm = {
        let api = Api::new(&w.node);
        let (key, id) = (w.key.clone(), id.clone());
        tokio::spawn(async move {
            api.send(
                reqwest::Method::POST,
                &format!("/v1/payments/{id}/confirm"),
                Some(&key),
                None,
                Some(r#"{"payment_method":"pm_card_psp_error"}"#.to_string()),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let refused = w
        .api
        .create_payment(&w.key, Some("shed-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["code"], "node_overloaded",
        "{}",
        refused.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not after a wait"
    );

    let confirmed = confirm.await.expect("confirm task");
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    assert_eq!(confirmed.body["status"], "succeeded");
    // Nothing was recorded for the refused create: the same key now creates the payment.
    let created = w
        .api
        .create_payment(&w.key, Some("shed-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let records = read_journal(&w.env.brokers, &w.env.topic(), PARTITIONS);
    let creates = records
        .iter()
        .filter(|r| r.headers.get("event_type").map(String::as_str) == Some("payment.created"))
        .count();
    assert_eq!(creates, 2, "the first payment and the retried create only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_past_its_in_flight_quota_is_refused_while_another_is_served() {
    // One command per merchant at a time, ten for the node; A's confirm holds A's slot
    // while the node retries the failing PSP (about 2.8 s).
    let w = world(
        "merchant_quota",
        &[
            ("PAYRAIL__ACTORS__MAX_IN_FLIGHT_COMMANDS", "10"),
            ("PAYRAIL__ACTORS__MAX_IN_FLIGHT_COMMANDS_PER_MERCHANT", "1"),
            ("PAYRAIL__PSP__RETRY_BASE_MS", "400"),
        ],
        &["--error-count", "3"],
    )
    .await;
    let id = w.create(r#"{"amount":700,"currency":"eur"}"#).await;
    let confirm = {
        let api = Api::new(&w.node);
        let (key, id) = (w.key.clone(), id.clone());
        tokio::spawn(async move {
            api.send(
                reqwest::Method::POST,
                &format!("/v1/payments/{id}/confirm"),
                Some(&key),
                None,
                Some(r#"{"payment_method":"pm_card_psp_error"}"#.to_string()),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = w
        .api
        .create_payment(&w.key, Some("quota-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(
        refused.body["error"]["code"], "rate_limit",
        "{}",
        refused.body
    );
    // Another merchant is served meanwhile: A's load does not take the node.
    let (_, other_key) = w.api.merchant("Other").await;
    let other = w
        .api
        .create_payment(&other_key, None, r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(other.status, 201, "{}", other.body);
    assert!(!confirm.is_finished(), "A's confirm still held its slot");

    assert_eq!(confirm.await.expect("confirm task").status, 200);
    let created = w
        .api
        .create_payment(&w.key, Some("quota-1"), r#"{"amount":5,"currency":"eur"}"#)
        .await;
    assert_eq!(
        created.status, 201,
        "nothing was recorded for the refused create: {}",
        created.body
    );
}
