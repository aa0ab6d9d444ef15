//! `pools_catch_up_after_node_and_broker_fault_cycles` and its audits between the cycles.

use super::*;
use std::time::Instant;

fn median(sorted: &[Duration]) -> Duration {
    percentile(sorted, 50.0)
}

struct CycleResult {
    series: &'static str,
    cycle: u64,
    catch_up: Result<Duration, String>,
    audit: (bool, Option<u64>),
    note: String,
}

/// Pauses the load, waits for the keys in flight and the pools, audits, resumes.
async fn audit_between_cycles(
    env: &TestEnv,
    control: &LoadControl,
    client: &reqwest::Client,
    base: &str,
    expected: &BTreeMap<String, BTreeSet<i64>>,
) -> (bool, Option<u64>, String) {
    control.pause();
    let drained = control.drained(Duration::from_secs(120)).await;
    let caught = wait_caught_up(client, base, expected, Duration::from_secs(20)).await;
    let result = if drained && caught.is_ok() {
        audit(env)
    } else {
        (
            false,
            None,
            format!("not audited: drained={drained} caught_up={caught:?}"),
        )
    };
    control.resume();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_catch_up_after_node_and_broker_fault_cycles() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cycles = env_u64("PAYRAIL_FAULT_CYCLES", 2);
    let stop_ms = env_u64("PAYRAIL_FAULT_STOP_MS", 8000);
    let bound = Duration::from_millis(env_u64("PAYRAIL_FAULT_CATCH_UP_MS", 15_000));
    let seed = env_u64("PAYRAIL_FAULT_SEED", 1);
    // How long a catch-up is watched at most (a stall is reported as "not caught up").
    let measure = Duration::from_millis(env_u64("PAYRAIL_FAULT_MEASURE_MS", 60_000));
    let clients = 2;

    let (env, broker, mut node) = setup("fault_cycles").await;
    let base = node.base.clone();
    let port = node.port;
    let merchants = merchants(&base, &env, 2, "Cycle").await;
    let merchant_count = merchants.len();
    let expected = expected_consumers(&base).await;

    // Light load: about 10 keyed creates a second, endless until stopped.
    let run = format!("c{seed}");
    let make_key: Arc<dyn Fn(usize) -> KeySpec + Send + Sync> =
        Arc::new(move |i| KeySpec::new(i, merchant_count, &run, 0));
    let control = LoadControl::new(Duration::from_millis(100));
    let load = tokio::spawn(run_keyed_load(
        vec![base.clone()],
        merchants.clone(),
        clients,
        None,
        make_key,
        control.clone(),
        PER_KEY_DEADLINE,
        REQUEST_TIMEOUT,
        seed,
    ));
    let client = load_client(Duration::from_secs(10));
    let extra = node_extra();
    let mut results = Vec::new();

    for cycle in 1..=cycles {
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.kill9();
        let end = Instant::now(); // the restart starts at once: the fault ends here
        node = LoggedNode::start_on(&env, port, &as_refs(&extra)).await;
        let ready = end.elapsed();
        let catch_up = wait_caught_up(&client, &base, &expected, measure)
            .await
            .map(|d| d + ready);
        let (clean, diffs, out) =
            audit_between_cycles(&env, &control, &client, &base, &expected).await;
        println!(
            "fault-cycles: node_sigkill {cycle}: ready {} ms, caught up {:?}, audit clean={clean} differences={diffs:?}",
            ms(ready),
            catch_up.as_ref().map(|d| ms(*d))
        );
        if !clean {
            println!("{out}");
        }
        results.push(CycleResult {
            series: "node_sigkill",
            cycle,
            catch_up,
            audit: (clean, diffs),
            note: format!("ready after {} ms", ms(ready)),
        });
    }

    for cycle in 1..=cycles {
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.pause();
        tokio::time::sleep(Duration::from_millis(stop_ms)).await;
        broker.resume();
        let catch_up = wait_caught_up(&client, &base, &expected, measure).await;
        let (clean, diffs, out) =
            audit_between_cycles(&env, &control, &client, &base, &expected).await;
        println!(
            "fault-cycles: broker_sigstop {cycle} ({stop_ms} ms): caught up {:?}, audit clean={clean} differences={diffs:?}",
            catch_up.as_ref().map(|d| ms(*d))
        );
        if !clean {
            println!("{out}");
        }
        results.push(CycleResult {
            series: "broker_sigstop",
            cycle,
            catch_up,
            audit: (clean, diffs),
            note: format!("stopped {stop_ms} ms"),
        });
    }

    control.stop();
    let outcomes = load.await.expect("load task");
    let unacknowledged = outcomes
        .values()
        .filter(|(_, o)| o.payment_id.is_none())
        .count();
    let (events, _) = journal_events(&env.brokers, &env.topic());
    let (by_key, _) = journal_creates(&events);
    let forked = by_key.values().filter(|ids| ids.len() > 1).count();

    let mut problems = Vec::new();
    for series in ["node_sigkill", "broker_sigstop"] {
        let mut times: Vec<Duration> = results
            .iter()
            .filter(|r| r.series == series)
            .filter_map(|r| r.catch_up.as_ref().ok().copied())
            .collect();
        times.sort();
        let stalled = results
            .iter()
            .filter(|r| r.series == series && r.catch_up.is_err())
            .count();
        let audits_clean = results
            .iter()
            .filter(|r| r.series == series && r.audit.0)
            .count();
        println!(
            "fault-cycles: {series} cycles={cycles} caught_up_max_ms={} caught_up_median_ms={} not_caught_up_in_{}s={stalled} over_{}ms={} audits_clean={audits_clean}/{cycles} (audit after every cycle, load paused)",
            ms(times.last().copied().unwrap_or_default()),
            ms(median(&times)),
            measure.as_secs(),
            ms(bound),
            times.iter().filter(|t| **t > bound).count(),
        );
        for r in results.iter().filter(|r| r.series == series) {
            match &r.catch_up {
                Ok(t) if *t <= bound => {}
                other => problems.push(format!(
                    "{} {} ({}): catch-up {other:?} > {bound:?}",
                    r.series, r.cycle, r.note
                )),
            }
            if !r.audit.0 {
                problems.push(format!(
                    "{} {}: audit not clean ({:?} differences)",
                    r.series, r.cycle, r.audit.1
                ));
            }
        }
    }
    println!(
        "fault-cycles: keys={} unacknowledged={unacknowledged} keys_with_two_ids_in_journal={forked}",
        outcomes.len()
    );
    assert_eq!(
        unacknowledged, 0,
        "every key of the light load acknowledged"
    );
    assert_eq!(forked, 0, "one payment id per key in the journal");
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\nnode log tail:\n{}",
        problems.len(),
        problems.join("\n"),
        node.log_tail(40)
    );
}
