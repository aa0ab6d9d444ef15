//! The merchant API against a real node, the real broker and the real PostgreSQL.

mod common;

use common::*;
use kafka_journal::codec::{Codec, CodecKind};
use kafka_journal::Envelope;
use payrail_actors::payment::PaymentEvent;
use reqwest::Method;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_payment_is_in_the_journal_with_key_and_headers_when_201_arrives() {
    let env = TestEnv::new("journal_before_201").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Acme").await;

    let reply = api
        .create_payment(&key, None, r#"{"amount":1250,"currency":"eur","order_no":"A-1","channel":"web","metadata":{"cart":"42"}}"#)
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["status"], "requires_payment_method");
    assert_eq!(reply.body["amount"], 1250);
    assert_eq!(reply.body["currency"], "eur");
    assert_eq!(reply.body["merchant_id"], merchant_id.as_str());
    let payment_id = reply.body["id"].as_str().unwrap().to_string();

    // Read right after the 201, without waiting: persist-then-reply means it is there.
    let records = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    let created = created_for(&records, &merchant_id);
    assert_eq!(
        created.len(),
        1,
        "exactly one payment.created for the merchant"
    );
    let record = &created[0];
    let expected_partition = kafka_journal::partition_for(merchant_id.as_bytes(), PARTITIONS);
    assert_eq!(
        record.partition, expected_partition,
        "explicit partition = murmur2(merchant) % n"
    );
    for header in ["event_type", "event_id", "schema_version", "content_type"] {
        assert!(
            record.headers.contains_key(header),
            "missing header {header}"
        );
    }
    let codec = CodecKind::from_content_type(&record.headers["content_type"]).unwrap();
    let envelope: Envelope<PaymentEvent> = codec.decode(&record.value).unwrap();
    assert_eq!(envelope.payment_id, payment_id);
    assert_eq!(envelope.merchant_id, merchant_id);
    assert_eq!(envelope.sequence, 1);
    assert_eq!(envelope.event_type, "payment.created");
    assert_eq!(envelope.event_id.to_string(), record.headers["event_id"]);
    assert_eq!(
        envelope.event_id.get_version_num(),
        7,
        "event ids are UUIDv7"
    );
    let PaymentEvent::Created(created) = envelope.payload else {
        panic!("first event is payment.created")
    };
    assert_eq!(created.amount, 1250);
    assert_eq!(created.currency.code(), "EUR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_payment_and_hides_other_merchants_payments() {
    let env = TestEnv::new("get_and_isolation").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_, key_a) = api.merchant("A").await;
    let (_, key_b) = api.merchant("B").await;
    let created = api
        .create_payment(&key_a, None, r#"{"amount":500,"currency":"usd"}"#)
        .await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap();

    let own = api.get_payment(&key_a, id).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body, created.body);

    let other = api.get_payment(&key_b, id).await;
    assert_eq!(other.status, 404, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "resource_missing");

    let missing = api
        .get_payment(&key_a, "pay_0000000000000000000000000000000")
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_replays_refuses_mismatch_and_creates_one_payment_for_concurrent_duplicates() {
    let env = TestEnv::new("idempotency").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Idem").await;
    let body = r#"{"amount":700,"currency":"gbp","order_no":"I-1"}"#;

    let first = api.create_payment(&key, Some("key-replay"), body).await;
    assert_eq!(first.status, 201);
    let replay = api.create_payment(&key, Some("key-replay"), body).await;
    assert_eq!(replay.status, 201);
    assert_eq!(
        replay.body, first.body,
        "same key + same body replays the first response"
    );

    let mismatch = api
        .create_payment(
            &key,
            Some("key-replay"),
            r#"{"amount":701,"currency":"gbp","order_no":"I-1"}"#,
        )
        .await;
    assert_eq!(mismatch.status, 422, "{}", mismatch.body);
    assert_eq!(mismatch.body["error"]["type"], "idempotency_error");

    let concurrent = futures::future::join_all((0..20).map(|_| {
        let api = api.clone();
        let key = key.clone();
        async move { api.create_payment(&key, Some("key-concurrent"), body).await }
    }))
    .await;
    let ids: HashSet<String> = concurrent
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "20 concurrent requests with one key create one payment"
    );

    let created = created_for(
        &read_journal(&env.brokers, &env.topic(), PARTITIONS),
        &merchant_id,
    );
    assert_eq!(
        created.len(),
        2,
        "one event for key-replay, one for key-concurrent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_survives_a_node_restart() {
    let env = TestEnv::new("idempotency_restart").await;
    let mut node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Idem2").await;
    let body = r#"{"amount":900,"currency":"eur"}"#;
    let first = api.create_payment(&key, Some("restart-key"), body).await;
    assert_eq!(first.status, 201);
    node.kill9();

    let node = NodeProcess::start_on(&env, node.port, &[]).await;
    let api = Api::new(&node);
    let replay = api.create_payment(&key, Some("restart-key"), body).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body["id"], first.body["id"]);
    let mismatch = api
        .create_payment(
            &key,
            Some("restart-key"),
            r#"{"amount":901,"currency":"eur"}"#,
        )
        .await;
    assert_eq!(mismatch.status, 422);
    let created = created_for(
        &read_journal(&env.brokers, &env.topic(), PARTITIONS),
        &merchant_id,
    );
    assert_eq!(created.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_evicted_from_the_merchant_cache_still_replay() {
    let env = TestEnv::new("idempotency_evicted").await;
    // A cache of two keys per merchant: the first keys are evicted by the later ones and
    // must then be answered from their snapshots. The snapshot projector is made slow (it
    // waits up to 1 s per fetch), so a replay right after the eviction finds the snapshot
    // only if the node waits for the projector to reach the evicted create.
    let node = NodeProcess::start(
        &env,
        &[
            ("PAYRAIL__ACTORS__IDEMPOTENCY_CACHE_PER_MERCHANT", "2"),
            ("PAYRAIL__JOURNAL__FETCH_WAIT_MAX_MS", "1000"),
            ("PAYRAIL__JOURNAL__FETCH_MIN_BYTES", "1000000"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Evicted").await;
    let body = r#"{"amount":700,"currency":"usd"}"#;
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = api
            .create_payment(&key, Some(&format!("evict-{i}")), body)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].clone());
    }
    for (i, id) in ids.iter().enumerate() {
        let replay = api
            .create_payment(&key, Some(&format!("evict-{i}")), body)
            .await;
        assert_eq!(replay.status, 201, "{}", replay.body);
        assert_eq!(&replay.body["id"], id, "key evict-{i} replays its payment");
    }
    let mismatch = api
        .create_payment(&key, Some("evict-0"), r#"{"amount":701,"currency":"usd"}"#)
        .await;
    assert_eq!(mismatch.status, 422, "{}", mismatch.body);
    let created = created_for(
        &read_journal(&env.brokers, &env.topic(), PARTITIONS),
        &merchant_id,
    );
    assert_eq!(
        created.len(),
        6,
        "one payment per key, none for the replays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_only_the_pools_named_in_pools_run() {
    let env = TestEnv::new("pools_run").await;
    let node = NodeProcess::start(&env, &[("PAYRAIL__POOLS__RUN", "[analytics]")]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("OnlyAnalytics").await;
    let r = api
        .create_payment(&key, Some("only-1"), r#"{"amount":250,"currency":"EUR"}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut names: Vec<String> = consumer_list(&api)
        .await
        .iter()
        .filter_map(|c| c["name"].as_str())
        .map(|n| n.rsplit('.').next().unwrap_or(n).to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["analytics", "snapshots"]);
    // The pool it runs works: the create shows up in the merchant's metrics.
    let counted = eventually(Duration::from_secs(20), || async {
        (api.metric_total(&key, "created_count").await == 1).then_some(())
    })
    .await;
    assert!(counted.is_some(), "analytics counted the payment");
}

/// `GET /v1/admin/consumers` as the admin: the node's consumers.
async fn consumer_list(api: &Api) -> Vec<Value> {
    let r = api
        .send(
            Method::GET,
            "/v1/admin/consumers",
            Some(ADMIN_TOKEN),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"].as_array().cloned().unwrap_or_default()
}

fn assert_error_object(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let error = &reply.body["error"];
    assert!(error["type"].is_string(), "error.type in {}", reply.body);
    assert!(error["code"].is_string(), "error.code in {}", reply.body);
    assert!(
        error["message"].is_string(),
        "error.message in {}",
        reply.body
    );
    assert!(
        error.get("param").is_some(),
        "error.param in {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_error_objects_and_journals_nothing() {
    let env = TestEnv::new("bad_input").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Strict").await;

    let cases: &[(&str, Option<&str>)] = &[
        ("{\"amount\": 100, \"currency\": ", None),
        ("not json at all", None),
        ("", None),
        (r#"{"currency":"eur"}"#, Some("amount")),
        (r#"{"amount":100}"#, Some("currency")),
        (r#"{"amount":"100","currency":"eur"}"#, Some("amount")),
        (r#"{"amount":10.5,"currency":"eur"}"#, Some("amount")),
        (r#"{"amount":100,"currency":7}"#, Some("currency")),
        (r#"{"amount":0,"currency":"eur"}"#, Some("amount")),
        (r#"{"amount":-100,"currency":"eur"}"#, Some("amount")),
        (r#"{"amount":100,"currency":"xyz"}"#, Some("currency")),
        (
            r#"{"amount":100,"currency":"eur","surprise":true}"#,
            Some("surprise"),
        ),
        (
            r#"{"amount":100,"currency":"eur","customer_email":"nope"}"#,
            Some("customer_email"),
        ),
        (
            r#"{"amount":100,"currency":"eur","metadata":{"k":1}}"#,
            Some("metadata.k"),
        ),
        (
            r#"{"amount":100,"currency":"eur","metadata":{"k":"a\u0000b"}}"#,
            Some("metadata[k]"),
        ),
    ];
    for (body, param) in cases {
        let reply = api.create_payment(&key, None, body).await;
        assert_error_object(&reply, 400);
        if let Some(param) = param {
            assert_eq!(reply.body["error"]["param"], *param, "param for {body}");
        }
    }

    let huge = format!(
        r#"{{"amount":100,"currency":"eur","order_no":"{}"}}"#,
        "x".repeat(200_000)
    );
    assert_error_object(&api.create_payment(&key, None, &huge).await, 413);

    let valid = r#"{"amount":100,"currency":"eur"}"#;
    assert_error_object(&api.create_payment("sk_test_wrong", None, valid).await, 401);
    let no_key = api
        .send(Method::POST, "/v1/payments", None, None, Some(valid.into()))
        .await;
    assert_error_object(&no_key, 401);
    let bad_idem = api
        .create_payment(&key, Some(&"k".repeat(300)), valid)
        .await;
    assert_error_object(&bad_idem, 400);

    let no_admin = api
        .send(
            Method::POST,
            "/v1/merchants",
            None,
            None,
            Some(r#"{"name":"x"}"#.into()),
        )
        .await;
    assert_error_object(&no_admin, 401);
    let wrong_admin = api
        .send(
            Method::POST,
            "/v1/merchants",
            Some("not-the-admin-token"),
            None,
            Some(r#"{"name":"x"}"#.into()),
        )
        .await;
    assert_error_object(&wrong_admin, 401);
    let merchant_key_as_admin = api
        .send(
            Method::POST,
            "/v1/merchants",
            Some(&key),
            None,
            Some(r#"{"name":"x"}"#.into()),
        )
        .await;
    assert_error_object(&merchant_key_as_admin, 401);
    // PostgreSQL's text refuses NUL: this name was a 500 (the API fuzz test found it in CI).
    for body in [
        r#"{"name":"\u0000=\u0089"}"#,
        r#"{"name":"x","webhook_url":"http://h/\u0000"}"#,
    ] {
        let control = api
            .send(
                Method::POST,
                "/v1/merchants",
                Some(ADMIN_TOKEN),
                None,
                Some(body.into()),
            )
            .await;
        assert_error_object(&control, 400);
    }
    let bad_date = api.metrics(&key, "2026-13-45").await;
    assert_error_object(&bad_date, 400);

    let pool = env.pool().await;
    let merchants: i64 = sqlx::query_scalar("SELECT count(*) FROM merchants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(merchants, 1, "refused admin calls created no merchant");
    // Only the node's start markers (one per partition), no payment event.
    let journaled: Vec<_> = read_journal(&env.brokers, &env.topic(), PARTITIONS)
        .into_iter()
        .filter(|r| r.headers["event_type"] != kafka_journal::fence::OWNER_CHANGED)
        .collect();
    assert!(
        journaled.is_empty(),
        "bad input journaled {} records",
        journaled.len()
    );
    let _ = merchant_id;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_consumers_shows_every_pool_catching_up_with_its_append_to_apply_delays() {
    let env = TestEnv::new("consumer_lag").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);

    let anonymous = api
        .send(Method::GET, "/v1/admin/consumers", None, None, None)
        .await;
    assert_error_object(&anonymous, 401);
    let (_, key) = api.merchant("lag").await;
    let as_merchant = api
        .send(Method::GET, "/v1/admin/consumers", Some(&key), None, None)
        .await;
    assert_error_object(&as_merchant, 401);

    const PAYMENTS: u64 = 5;
    for i in 0..PAYMENTS {
        let r = api
            .create_payment(
                &key,
                Some(&format!("lag-{i}")),
                r#"{"amount":100,"currency":"EUR"}"#,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // Every consumer of the node reaches the broker's high watermark and has counted each
    // record in its delay histogram: the creates and the node's start markers (one per
    // partition).
    let records = read_journal(&env.brokers, &env.topic(), PARTITIONS).len() as u64;
    assert_eq!(
        records,
        PAYMENTS + u64::from(PARTITIONS),
        "creates and markers"
    );
    let names = [
        "snapshots",
        "analytics",
        "ledger",
        "settlement",
        "notification",
    ];
    let consumers = eventually(Duration::from_secs(30), || async {
        let data = consumer_list(&api).await;
        let done = data.len() == names.len()
            && data.iter().all(|c| {
                c["lag_records"] == 0
                    && c["lag_ms"]["counts"]
                        .as_array()
                        .map(|counts| counts.iter().filter_map(Value::as_u64).sum::<u64>())
                        == Some(records)
            });
        done.then_some(data)
    })
    .await
    .expect("every consumer caught up and counted every record");
    for name in names {
        let c = consumers
            .iter()
            .find(|c| c["name"].as_str().is_some_and(|n| n.ends_with(name)))
            .unwrap_or_else(|| panic!("consumer {name} in {consumers:?}"));
        let partitions = c["partitions"].as_array().expect("partitions");
        let high: i64 = partitions
            .iter()
            .map(|p| p["high_watermark"].as_i64().expect("high watermark"))
            .sum();
        assert_eq!(
            high, records as i64,
            "{name}: the journal holds the 5 records and the markers"
        );
        assert!(
            c["lag_ms"]["max_ms"].as_u64().expect("max") < 30_000,
            "{name}: a delay within the test's time"
        );
    }
}
