//! Webhooks: signed and in order per payment, retried, dead in the DLQ, and resent.

use super::*;
use payrail_actors::signature;

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
