//! `keyed_creates_survive_a_fault_schedule` and its schedule of broker, node and PostgreSQL faults.

use super::*;
use std::time::Instant;

/// The schedule of the main test: one fault after another, each followed by recovery
/// (node ready again, then `settle`). Returns each fault's window.
async fn fault_schedule(
    env: &TestEnv,
    broker: &mut PrivateBroker,
    node: &mut LoggedNode,
    settle: Duration,
) -> Vec<FaultWindow> {
    let client = load_client(Duration::from_secs(5));
    let base = node.base.clone();
    let extra = node_extra();
    let broker_dir = env.dir.join("broker");
    let recover = |what: &'static str| {
        let client = client.clone();
        let base = base.clone();
        let broker_dir = broker_dir.clone();
        async move {
            let ready = wait_ready(&client, &base, Duration::from_secs(120)).await;
            if let Some(panic) = broker_panic(&broker_dir) {
                panic!("the broker panicked after {what} (ready={ready}): {panic}");
            }
            assert!(ready, "node not ready 120 s after {what}");
            tokio::time::sleep(settle).await;
        }
    };
    let mut windows = Vec::new();
    tokio::time::sleep(settle).await; // load before the first fault

    // 1. Broker hung (SIGSTOP) for longer than the produce timeout, then SIGCONT.
    let stop = Duration::from_millis(PRODUCE_TIMEOUT_MS * 5 / 2);
    let start = Instant::now();
    broker.pause();
    tokio::time::sleep(stop).await;
    broker.resume();
    windows.push(FaultWindow {
        name: "broker_sigstop".into(),
        start,
        end: Instant::now(),
        note: format!(
            "stopped {} ms (produce timeout {PRODUCE_TIMEOUT_MS} ms)",
            ms(stop)
        ),
    });
    recover("broker SIGCONT").await;

    // 2. Broker SIGKILL, down for a while, restarted on the same port and store.
    let start = Instant::now();
    broker.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    windows.push(FaultWindow {
        name: "broker_sigkill".into(),
        start,
        end: Instant::now(),
        note: "down 3 s, restarted on the same port and store".into(),
    });
    recover("broker restart").await;

    // 3. Node SIGKILL mid-load, restarted at once on the same port.
    let start = Instant::now();
    let port = node.port;
    node.kill9();
    if let Some(panic) = broker_panic(&broker_dir) {
        panic!("the broker panicked before the node restart: {panic}");
    }
    let restarted = Instant::now();
    *node = LoggedNode::start_on(env, port, &as_refs(&extra)).await;
    windows.push(FaultWindow {
        name: "node_sigkill".into(),
        start,
        end: Instant::now(),
        note: format!(
            "restarted on port {port}, ready after {} ms",
            ms(restarted.elapsed())
        ),
    });
    recover("node restart").await;

    // 4. PostgreSQL backends of the test database terminated, three times.
    let start = Instant::now();
    let db = database_name(&env.database_url);
    let mut killed = Vec::new();
    for _ in 0..3 {
        killed.push(terminate_backends(&database_url(), &db).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(
        killed.iter().sum::<u64>() > 0,
        "pg_terminate_backend found no backend of {db} to kill"
    );
    windows.push(FaultWindow {
        name: "pg_terminate_backend".into(),
        start,
        end: Instant::now(),
        note: format!("backends killed per round: {killed:?}"),
    });
    recover("pg_terminate_backend").await;

    // 5. Payment actor panics: every key with `panics` carries panic_on_create, all along
    //    the run (see KeySpec::new); reported separately.

    // 6. Pool worker panics: every key with `pool_panics` carries panic_in_pool_analytics,
    //    all along the run: the analytics worker panics once on its create record and is
    //    restarted after its backoff; the audit (analytics rollups against the journal)
    //    and the catch-up check prove each such record was applied exactly once.
    windows
}

/// Occurrences of `needle` in every node log of the test directory.
fn node_log_count(dir: &std::path::Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("node-"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|text| text.matches(needle).count())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_creates_survive_a_fault_schedule() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let keys = env_u64("PAYRAIL_FAULT_KEYS", 1000) as usize;
    let clients = env_u64("PAYRAIL_FAULT_CLIENTS", 8) as usize;
    let merchant_count = env_u64("PAYRAIL_FAULT_MERCHANTS", 5) as usize;
    let load_ms = env_u64("PAYRAIL_FAULT_LOAD_MS", 25_000);
    let seed = env_u64("PAYRAIL_FAULT_SEED", 1);
    let panic_every = 50;
    assert!(keys > 0 && clients > 0 && merchant_count > 0);

    let (env, mut broker, mut node) = setup("fault_suite").await;
    let base = node.base.clone();
    let merchants = merchants(&base, &env, merchant_count, "Chaos").await;
    let merchant_count = merchants.len();
    let expected = expected_consumers(&base).await;

    let run = format!("s{seed}");
    let make_key: Arc<dyn Fn(usize) -> KeySpec + Send + Sync> = {
        let run = run.clone();
        Arc::new(move |i| KeySpec::new(i, merchant_count, &run, panic_every))
    };
    let control = LoadControl::new(Duration::from_micros(load_ms * 1000 / keys as u64));
    let load = tokio::spawn(run_keyed_load(
        vec![base.clone()],
        merchants.clone(),
        clients,
        Some(keys),
        make_key.clone(),
        control.clone(),
        PER_KEY_DEADLINE,
        REQUEST_TIMEOUT,
        seed,
    ));
    let started = Instant::now();
    let windows = fault_schedule(&env, &mut broker, &mut node, Duration::from_secs(3)).await;
    let faults_took = started.elapsed();
    let released_during_faults = control.started_keys().min(keys);
    control.unpace();
    let outcomes = load.await.expect("load task");
    let load_took = started.elapsed();
    println!(
        "fault-suite: faults took {} ms; {released_during_faults} of {keys} keys started during them; load took {} ms",
        ms(faults_took),
        ms(load_took)
    );

    let client = load_client(Duration::from_secs(30));
    let caught = wait_caught_up(&client, &base, &expected, Duration::from_secs(60)).await;
    println!("fault-suite: pools caught up after the load: {caught:?}");

    // Faults and what they hit.
    for w in &windows {
        let hit = w.keys_in_flight(outcomes.values().map(|(_, o)| o));
        println!(
            "fault-suite: fault {} {} ms, {hit} keys in flight; {}",
            w.name,
            ms(w.end - w.start),
            w.note
        );
    }
    let mut failures_by_kind: BTreeMap<String, u32> = BTreeMap::new();
    for (_, o) in outcomes.values() {
        for (k, n) in &o.failures {
            *failures_by_kind.entry(k.clone()).or_insert(0) += n;
        }
    }
    println!("fault-suite: non-2xx tries by kind: {failures_by_kind:?}");

    // Acknowledged: every key got a 2xx.
    assert_eq!(outcomes.len(), keys, "every key was tried");
    let unacknowledged: Vec<_> = outcomes
        .values()
        .filter(|(_, o)| o.payment_id.is_none())
        .map(|(s, o)| (s.idempotency_key.clone(), o.failures.clone()))
        .collect();
    let acknowledged = keys - unacknowledged.len();
    let panicking = outcomes.values().filter(|(s, _)| s.panics).count();
    let panicked_503 = outcomes
        .values()
        .filter(|(s, o)| s.panics && o.attempts > 1)
        .count();

    // Responses: a replay of every key answers the same id.
    let mut replay_mismatch = Vec::new();
    let replay_client = load_client(REQUEST_TIMEOUT);
    let mut rng = Rng::new(seed);
    for (spec, outcome) in outcomes.values() {
        let Some(id) = &outcome.payment_id else {
            continue;
        };
        let again = create_until_acknowledged(
            &replay_client,
            &base,
            &merchants[spec.merchant].api_key,
            spec,
            Duration::from_secs(30),
            &mut rng,
        )
        .await;
        if again.payment_id.as_ref() != Some(id) {
            replay_mismatch.push((spec.idempotency_key.clone(), id.clone(), again.payment_id));
        }
    }

    // Journal: `payment.created` grouped by (merchant, key), independent reader.
    let (events, journal_records) = journal_events(&env.brokers, &env.topic());
    let (by_key, created_records) = journal_creates(&events);
    let mut journal_dups = Vec::new();
    let mut journal_missing = Vec::new();
    let mut ours = BTreeSet::new();
    for (spec, outcome) in outcomes.values() {
        let merchant = &merchants[spec.merchant];
        let k = (merchant.id.clone(), spec.idempotency_key.clone());
        ours.insert(k.clone());
        let ids = by_key.get(&k).cloned().unwrap_or_default();
        match (&outcome.payment_id, ids.len()) {
            (_, n) if n > 1 => journal_dups.push((spec.idempotency_key.clone(), ids)),
            (Some(id), 1) if !ids.contains(id) => {
                journal_dups.push((spec.idempotency_key.clone(), ids))
            }
            (Some(_), 0) => journal_missing.push(spec.idempotency_key.clone()),
            _ => {}
        }
    }
    let strangers: Vec<_> = by_key
        .keys()
        .filter(|k| !ours.contains(*k) && k.1 != "warm-up")
        .collect();
    let distinct_payments: usize = by_key.values().map(BTreeSet::len).sum();

    // List API: per merchant, paging with starting_after.
    let mut list_dups = 0usize;
    let mut list_missing = 0usize;
    let mut list_extra = 0usize;
    let mut listed_total = 0usize;
    for (m, merchant) in merchants.iter().enumerate() {
        let want: BTreeSet<String> = outcomes
            .values()
            .filter(|(s, _)| s.merchant == m)
            .filter_map(|(_, o)| o.payment_id.clone())
            .chain([merchant.warm_up.clone()])
            .collect();
        let listed = list_all(&client, &base, &merchant.api_key).await;
        listed_total += listed.len();
        let set: BTreeSet<String> = listed.iter().cloned().collect();
        list_dups += listed.len() - set.len();
        list_missing += want.difference(&set).count();
        list_extra += set.difference(&want).count();
    }

    // Lost: every acknowledged id readable, with the key's amount.
    let mut lost = Vec::new();
    for (spec, outcome) in outcomes.values() {
        let Some(id) = &outcome.payment_id else {
            continue;
        };
        let r = client
            .get(format!("{base}/v1/payments/{id}"))
            .bearer_auth(&merchants[spec.merchant].api_key)
            .send()
            .await;
        let ok = match r {
            Ok(r) if r.status().as_u16() == 200 => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|b| b["id"] == id.as_str() && b["amount"] == spec.amount),
            _ => false,
        };
        if !ok {
            lost.push((spec.idempotency_key.clone(), id.clone()));
        }
    }

    // Latency: first try → first 2xx.
    let mut latencies: Vec<Duration> = outcomes
        .values()
        .filter_map(|(_, o)| o.time_to_2xx())
        .collect();
    latencies.sort();
    let attempts: u64 = outcomes.values().map(|(_, o)| o.attempts as u64).sum();

    let (audit_clean, audit_diffs, audit_out) = audit(&env);
    for line in audit_out.lines().filter(|l| l.starts_with("difference:")) {
        println!("fault-suite: audit {line}");
    }
    let duplicated = journal_dups.len() + replay_mismatch.len() + list_dups;
    println!(
        "fault-suite: journal {journal_records} records, {created_records} payment.created records, {distinct_payments} distinct payments; list {listed_total} entries; {panicking} keys with panic_on_create ({panicked_503} needed a retry); {attempts} tries in all"
    );
    println!(
        "fault-suite: keys={keys} acknowledged={acknowledged} duplicated={duplicated} lost={} p50_first_2xx_ms={} p99_first_2xx_ms={} max_first_2xx_ms={} audit_differences={} clients={clients} merchants={merchant_count} faults={}",
        lost.len() + journal_missing.len() + list_missing,
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        audit_diffs.map(|d| d.to_string()).unwrap_or_else(|| "?".into()),
        windows.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(",") + ",payment_actor_panic,pool_worker_panic",
    );

    assert!(
        unacknowledged.is_empty(),
        "{} keys never acknowledged: {:?}\n{}",
        unacknowledged.len(),
        &unacknowledged[..unacknowledged.len().min(10)],
        node.log_tail(40)
    );
    for w in &windows {
        assert!(
            w.keys_in_flight(outcomes.values().map(|(_, o)| o)) > 0,
            "fault {} hit no key in flight (raise PAYRAIL_FAULT_LOAD_MS)",
            w.name
        );
    }
    assert!(
        panicking > 0 && panicked_503 > 0,
        "payment actor panics were injected ({panicking} keys, {panicked_503} retried)"
    );
    let pool_panicking = outcomes.values().filter(|(s, _)| s.pool_panics).count();
    let pool_panics_seen = node_log_count(&env.dir, "injected fault: panic_in_pool_analytics");
    println!(
        "fault-suite: pool worker panics: {pool_panicking} keys with panic_in_pool_analytics, {pool_panics_seen} worker panics in the node logs"
    );
    assert!(
        pool_panicking > 0 && pool_panics_seen > 0,
        "pool worker panics were injected ({pool_panicking} keys, {pool_panics_seen} seen)"
    );
    assert!(
        replay_mismatch.is_empty(),
        "a replayed key answered another id: {:?}",
        &replay_mismatch[..replay_mismatch.len().min(10)]
    );
    assert!(
        journal_dups.is_empty(),
        "keys with more than one payment id in the journal: {:?}",
        &journal_dups[..journal_dups.len().min(10)]
    );
    assert!(
        journal_missing.is_empty(),
        "acknowledged keys without payment.created in the journal: {:?}",
        &journal_missing[..journal_missing.len().min(10)]
    );
    assert!(
        strangers.is_empty(),
        "payment.created for keys no client sent: {strangers:?}"
    );
    assert_eq!(
        (list_dups, list_missing, list_extra),
        (0, 0, 0),
        "list API: (duplicate entries, acknowledged ids missing, ids nobody acknowledged)"
    );
    assert!(
        lost.is_empty(),
        "acknowledged payments not readable: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        caught.is_ok(),
        "pools not caught up 60 s after the load (issue 9 item 6?): {caught:?}"
    );
    assert!(audit_clean, "payrail audit found differences:\n{audit_out}");
}
