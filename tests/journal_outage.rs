//! With the broker down, creates fail fast with 503 and journal nothing; when it is back,
//! the same request (same idempotency key) succeeds. Uses a private tansu broker so that
//! stopping it does not disturb other tests.

mod common;

use common::broker::PrivateBroker;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_within_the_timeout_journals_nothing_and_recovers() {
    let mut env = TestEnv::new("outage").await;
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = PrivateBroker::start(&broker_dir, free_port());
    env.brokers = broker.brokers();
    let node = NodeProcess::start(
        &env,
        &[
            ("PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS", "2000"),
            ("PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS", "500"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Outage").await;
    let body = r#"{"amount":4200,"currency":"eur"}"#;
    let first = api.create_payment(&key, Some("before-outage"), body).await;
    assert_eq!(first.status, 201, "{}", first.body);

    broker.kill9();
    let started = Instant::now();
    let refused = api.create_payment(&key, Some("during-outage"), body).await;
    let elapsed = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    // Refused by the open breaker (all brokers down), or the append itself failed.
    assert!(
        ["journal_unavailable", "journal_outcome_unknown"]
            .contains(&refused.body["error"]["code"].as_str().unwrap_or("")),
        "{}",
        refused.body
    );
    assert!(elapsed < Duration::from_secs(10), "503 took {elapsed:?}");
    let ready = api
        .send(reqwest::Method::GET, "/readyz", None, None, None)
        .await;
    assert_eq!(
        ready.status, 503,
        "not ready without the journal: {}",
        ready.body
    );
    assert_eq!(ready.body["journal"], false);
    assert_eq!(ready.body["database"], true);

    broker.restart();
    let journal = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    let created = created_for(&journal, &merchant_id);
    assert_eq!(
        created.len(),
        1,
        "only the acknowledged payment is journaled"
    );

    // The client retries with the same key once the journal is back.
    let retried = eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let key = key.clone();
        async move {
            let r = api.create_payment(&key, Some("during-outage"), body).await;
            (r.status == 201).then_some(r.body)
        }
    })
    .await;
    assert!(
        retried.is_some(),
        "creates succeed again after the broker is back: {}",
        node.log_tail()
    );
    let journal = read_journal(&env.brokers, &env.topic(), PARTITIONS);
    assert_eq!(created_for(&journal, &merchant_id).len(), 2);
}
