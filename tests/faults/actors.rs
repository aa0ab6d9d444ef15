//! Payment actors: a panic while creating or after the append, passivation and the bound on
//! live actors, lose nothing.

use super::*;
use std::time::{Duration, Instant};

/// The defect: a payment actor that failed while creating left its key pending, so the
/// caller and every retry waited for the command timeout. Now the waiters are answered at
/// once (retryable), and the retry after the backoff creates the payment, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_actor_that_panics_while_creating_answers_at_once_and_the_retry_succeeds() {
    let (env, node) = fault_injecting_node(
        "faults_panic_create",
        &[
            ("PAYRAIL__ACTORS__COMMAND_TIMEOUT_MS", "8000"),
            ("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_BASE_MS", "200"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Panics").await;
    let body = r#"{"amount":700,"currency":"eur","metadata":{"payrail_fault":"panic_on_create"}}"#;
    let started = Instant::now();
    let first = api.create_payment(&key, Some("boom"), body).await;
    let took = started.elapsed();
    assert_eq!(first.status, 503, "{}", first.body);
    assert!(
        took < Duration::from_secs(3),
        "answered at once, took {took:?}"
    );

    let created = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let key = key.clone();
        async move {
            let r = api.create_payment(&key, Some("boom"), body).await;
            (r.status == 201 || r.status == 200).then_some(r.body)
        }
    })
    .await
    .unwrap_or_else(|| panic!("the retry succeeds: {}", node.log_tail()));
    let payment_id = created["id"].as_str().expect("id").to_string();
    let creates: Vec<_> = journal_events(&env.brokers, &env.topic())
        .into_iter()
        .filter(|e| e.merchant_id == merchant_id && matches!(e.payload, PaymentEvent::Created(_)))
        .map(|e| e.payment_id)
        .collect();
    assert_eq!(creates, vec![payment_id], "created once");
    assert_eq!(
        readyz(&api).await.status,
        200,
        "one panic is within the intensity"
    );
}

/// A panic after the append (mid-command): the caller hears "outcome unknown", the command
/// took effect exactly once, and the payment is rebuilt from the journal with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_after_the_append_loses_nothing_and_forks_nothing() {
    let (env, node) = fault_injecting_node(
        "faults_panic_after_append",
        &[("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_BASE_MS", "200")],
    )
    .await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("MidCommand").await;
    let body = r#"{"amount":900,"currency":"eur","metadata":{"payrail_fault":"panic_after_append_on_cancel"}}"#;
    let created = api.create_payment(&key, Some("mid"), body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();

    let first = cancel(&api, &key, &id).await;
    assert_eq!(first.status, 503, "{}", first.body);
    assert_eq!(first.body["error"]["code"], "journal_outcome_unknown");

    let canceled = eventually(Duration::from_secs(10), || {
        let api = api.clone();
        let key = key.clone();
        let id = id.clone();
        async move {
            let r = api.get_payment(&key, &id).await;
            (r.status == 200).then_some(r.body)
        }
    })
    .await
    .unwrap_or_else(|| panic!("readable after the restart: {}", node.log_tail()));
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    let again = cancel(&api, &key, &id).await;
    // Cancel is idempotent on a canceled payment: answered, and nothing new journaled.
    assert!(again.status < 500, "{}", again.body);
    assert_eq!(again.body["status"], "canceled", "{}", again.body);
    let events = payment_events(&env, &id);
    assert_eq!(
        events,
        vec![
            (1, "payment.created".to_string()),
            (2, "payment.canceled".to_string())
        ]
    );
}

/// The defect: a payment actor that passivated with `stop()` dropped a message queued
/// behind its idle check, and its caller got 500 "actor stopped". Now an idle actor is
/// retired through its merchant, which holds new messages until it has stopped. With a
/// passivation time as short as the gaps between commands, every command is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_drops_no_command() {
    let env = TestEnv::new("faults_passivation").await;
    let node = NodeProcess::start(&env, &[("PAYRAIL__ACTORS__PASSIVATE_AFTER_MS", "10")]).await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("Passivating").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = api
            .create_payment(
                &key,
                Some(&format!("p-{i}")),
                r#"{"amount":300,"currency":"eur"}"#,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].as_str().expect("id").to_string());
    }
    // Gaps around the passivation time, so idle checks, passivation requests and reads
    // interleave.
    let readers = (0..1u64).map(|reader| {
        let api = api.clone();
        let key = key.clone();
        let ids = ids.clone();
        async move {
            let mut failures = Vec::new();
            for round in 0..300u64 {
                let id = &ids[((round + reader) % 4) as usize];
                let r = api.get_payment(&key, id).await;
                if r.status != 200 {
                    failures.push((r.status, r.body.to_string()));
                }
                // Gaps around the passivation time.
                tokio::time::sleep(Duration::from_millis(5 + (round * 7 + reader * 5) % 15)).await;
            }
            failures
        }
    });
    let failures: Vec<_> = futures::future::join_all(readers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 300 reads failed: {failures:?}",
        failures.len()
    );
}

/// The live payment actors and the evictions so far, from the node's `/metrics`.
async fn live_and_evicted(api: &Api) -> (f64, f64) {
    (
        api.metric_value(r#"payrail_actors_live{kind="payment"}"#)
            .await,
        api.metric_value(r#"payrail_actor_evictions_total{kind="payment"}"#)
            .await,
    )
}

/// Memory by count (issue 25): past `actors.max_live_payments` the least recently active
/// payment actors passivate at once, whatever their idle time (60 s here, so none idles out),
/// and an evicted payment answers again with its state, rebuilt from its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_payments_stay_within_their_bound_and_evicted_ones_answer_again() {
    const MAX_LIVE: f64 = 100.0;
    let env = TestEnv::new("faults_live_bound").await;
    let node = NodeProcess::start(&env, &[("PAYRAIL__ACTORS__MAX_LIVE_PAYMENTS", "100")]).await;
    let api = Api::new(&node);
    let (_merchant_id, key) = api.merchant("Bounded").await;
    let mut payments = Vec::new();
    for batch in 0..20u64 {
        let creates = (0..8u64).map(|i| {
            let (api, key) = (api.clone(), key.clone());
            let amount = 100 + batch * 8 + i;
            async move {
                let body = format!(r#"{{"amount":{amount},"currency":"eur"}}"#);
                let r = api
                    .create_payment(&key, Some(&format!("bound-{amount}")), &body)
                    .await;
                (r, amount)
            }
        });
        for (r, amount) in futures::future::join_all(creates).await {
            assert_eq!(r.status, 201, "{}", r.body);
            payments.push((r.body["id"].as_str().expect("id").to_string(), amount));
        }
    }
    let settled = |live: f64, evicted: f64| live <= MAX_LIVE && evicted >= 60.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut live, mut evicted) = live_and_evicted(&api).await;
    while !settled(live, evicted) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (live, evicted) = live_and_evicted(&api).await;
    }
    assert!(
        settled(live, evicted),
        "160 payments, bound 100: {live} live, {evicted} evicted"
    );
    // Every payment answers with its own amount: the evicted ones are rebuilt, which
    // evicts others in turn.
    for (id, amount) in &payments {
        let r = api.get_payment(&key, id).await;
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        assert_eq!(r.body["amount"].as_u64(), Some(*amount), "{id}: {}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut live_after, mut evicted_after) = live_and_evicted(&api).await;
    while live_after > MAX_LIVE && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        (live_after, evicted_after) = live_and_evicted(&api).await;
    }
    assert!(live_after <= MAX_LIVE, "{live_after} live after the reads");
    assert!(
        evicted_after >= evicted + 60.0,
        "reading the 60 evicted payments evicts as many others: {evicted} then {evicted_after}"
    );
}
