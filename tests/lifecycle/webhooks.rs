//! PSP webhooks: duplicated and reordered ones add nothing; bad signatures change nothing.

use super::*;

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
