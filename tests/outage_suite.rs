//! The journal-outage suite (issue 10, "Must show"): a private tansu broker is killed
//! (SIGKILL, then restarted) or hung (SIGSTOP, then SIGCONT) under a mixed load of
//! keyed creates, confirms, captures and refunds, against a real `payrail node`, the PSP
//! sandbox and PostgreSQL, all on loopback. The ledger pool is slowed on purpose, so it
//! lags when the outage starts, and witnesses per-payment order.
//!
//! Every request is timed from when the paced schedule made it due, and its errors are
//! counted by when it was answered (so a stalled worker's backlog is not hidden).
//!
//! Shown and asserted: no 5xx or transport error answered from 1.5 s after a killed broker
//! died to the end of the run (switch back and replay included); with a hung broker, none
//! for a request due from 1.5 s after the breaker opened, and only 503 `timeout` or
//! `journal_outcome_unknown` (counted, printed) for commands whose append met the hung
//! broker before; analytics of a payment made during the outage counted while the broker is
//! still down (how soon is printed); after
//! recovery, every acknowledged command's event in the journal (independent client), every
//! payment's events in sequence 1..n with one event per sequence, the spool empty, the
//! pools caught up, `payrail audit` clean (the ledger balances), and no event applied out
//! of order by the slowed pool. Printed: requests/s, p50/p99 before vs during the outage,
//! the time from the broker's death to the breaker opening.
//!
//! All three (killed broker, hung broker, node SIGKILLed during the outage) run in the
//! test command at the size below (about 2 minutes). The issue's size:
//! `PAYRAIL_OUTAGE_MS=60000 cargo test --release --test outage_suite -- --nocapture
//! --test-threads 1`.
//!
//! Environment (defaults are the CI size):
//! - `PAYRAIL_OUTAGE_MS` (12000; the issue's size: 60000): how long the broker is down;
//! - `PAYRAIL_OUTAGE_RATE` (200 in release, 100 in a debug build): requests per second offered;
//! - `PAYRAIL_OUTAGE_WARMUP_MS` (6000), `PAYRAIL_OUTAGE_AFTER_MS` (5000): load before the
//!   outage and after the broker returns.

mod common;

use common::broker::PrivateBroker;
use common::chaos::*;
use common::lifecycle_load::*;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shipped default: a shorter one makes tansu 0.6, just restarted, time out producer-id
/// requests again and again (docs/DECISIONS.md, "Journal fallback").
const PRODUCE_TIMEOUT_MS: u64 = 5000;
const WORKERS: usize = 48;
/// Requests per second offered by default: the issue's 200 in a release build; 60 in a
/// debug build (the test command's). Timed from the due moment, a debug node at 100 req/s
/// was saturated while spooling (every request of the outage over 1 s late, a backlog it
/// never worked off) — a saturated node measures the machine, not the fallback
/// (BENCHMARKS.md has the release run at 200 req/s).
const DEFAULT_RATE: u64 = if cfg!(debug_assertions) { 60 } else { 200 };
/// The suite's two tests run one at a time: they measure latencies on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Kill,
    Stop,
    /// The broker killed, and the node killed (SIGKILL) and restarted during the outage.
    KillWithNodeCrash,
}

async fn outage_under_load(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let outage = Duration::from_millis(env_u64("PAYRAIL_OUTAGE_MS", 12_000));
    let rate = env_u64("PAYRAIL_OUTAGE_RATE", DEFAULT_RATE).max(1);
    let warmup = Duration::from_millis(env_u64("PAYRAIL_OUTAGE_WARMUP_MS", 6_000));
    let after = Duration::from_millis(env_u64("PAYRAIL_OUTAGE_AFTER_MS", 5_000));
    let label = match fault {
        Fault::Kill => "outage_kill",
        Fault::Stop => "outage_stop",
        Fault::KillWithNodeCrash => "outage_crash",
    };

    let mut env = TestEnv::new(label).await;
    let broker_dir = env.dir.join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let mut broker = PrivateBroker::start(&broker_dir, free_port());
    env.brokers = broker.brokers();
    let port = free_port();
    let sandbox = SandboxProcess::start(&env, port, &[]);
    let mut extra: Vec<(String, String)> = sandbox.node_env();
    for (k, v) in [
        (
            "PAYRAIL__JOURNAL__PRODUCE_TIMEOUT_MS",
            PRODUCE_TIMEOUT_MS.to_string(),
        ),
        ("PAYRAIL__JOURNAL__ADMIN_TIMEOUT_MS", "2000".to_string()),
        (
            "PAYRAIL__SUPERVISOR__BREAKER_COOL_DOWN_MS",
            "500".to_string(),
        ),
        ("PAYRAIL__ACTORS__FAULT_INJECTION", "true".to_string()),
        ("PAYRAIL__ACTORS__FAULT_SLOW_POOL", "ledger".to_string()),
        ("PAYRAIL__ACTORS__FAULT_SLOW_POOL_DELAY_MS", "3".to_string()),
        ("PAYRAIL__DATABASE__MAX_CONNECTIONS", "24".to_string()),
    ] {
        extra.push((k.to_string(), v));
    }
    let extra_ref: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut node = NodeProcess::start_on(&env, port, &extra_ref).await;
    let api = Api::new(&node);
    let merchants = Arc::new(merchants_covering_partitions(&api, &env, 6, "out").await);
    let (_, probe_key) = api.merchant("outage-probe").await;
    let client = load_client(Duration::from_secs(10));
    let expected_partitions =
        partitions_by_consumer(&consumers(&client, &node.base).await.expect("consumers"));

    let load = Load::new(rate);
    let bases = Arc::new(vec![node.base.clone()]);
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(worker(load.clone(), bases.clone(), merchants.clone(), i)))
        .collect();

    tokio::time::sleep(warmup).await;
    let died_at = load.started.elapsed();
    let died = Instant::now();
    match fault {
        Fault::Kill | Fault::KillWithNodeCrash => broker.kill9(),
        Fault::Stop => broker.pause(),
    }
    // The breaker's reaction, seen from outside.
    let mut breaker_open_after = None;
    while died.elapsed() < Duration::from_secs(10) {
        let status = api
            .send(
                reqwest::Method::GET,
                "/v1/admin/journal",
                Some(ADMIN_TOKEN),
                None,
                None,
            )
            .await;
        if status.body["breaker"]
            .as_str()
            .is_some_and(|b| b != "closed")
        {
            breaker_open_after = Some(died.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Read models stay live: a payment made mid-outage reaches analytics.
    tokio::time::sleep(outage / 2 - died.elapsed().min(outage / 2)).await;
    let probe = api
        .create_payment(
            &probe_key,
            Some("probe"),
            r#"{"amount":700,"currency":"eur"}"#,
        )
        .await;
    assert!(probe.status == 201, "probe create: {}", probe.body);
    // From the acknowledgement: the payment is made when the client hears so.
    let probe_at = Instant::now();
    let probe_at_run = load.started.elapsed();
    let visible = eventually(Duration::from_secs(10), || async {
        (api.metric_total(&probe_key, "created_count").await == 1).then_some(())
    })
    .await;
    let probe_visible_after = probe_at.elapsed();

    // The node dies during the outage and comes back with the broker still down: every
    // payment acknowledged before is readable with (at least) its acknowledged state.
    let mut node_down = None;
    let mut read_back = 0usize;
    if fault == Fault::KillWithNodeCrash {
        tokio::time::sleep((outage * 7 / 10).saturating_sub(died.elapsed())).await;
        let down_at = load.started.elapsed();
        node.kill9();
        let acknowledged = load.acknowledged();
        node = NodeProcess::start_on(&env, port, &extra_ref).await;
        let up_at = load.started.elapsed();
        node_down = Some((down_at, up_at));
        let ready = api
            .send(reqwest::Method::GET, "/readyz", None, None, None)
            .await;
        assert_eq!(ready.body["journal"], "fallback", "{}", ready.body);
        let by_payment = merchant_keys(&merchants, &observed_merchants(&load));
        read_back = check_readable(&api, &acknowledged, &by_payment).await;
    }

    tokio::time::sleep(outage.saturating_sub(died.elapsed())).await;
    let returned_at = load.started.elapsed();
    match fault {
        Fault::Kill | Fault::KillWithNodeCrash => broker.restart(),
        Fault::Stop => broker.resume(),
    }
    tokio::time::sleep(after).await;
    // tansu 0.6 may panic in its idempotent-producer check on requests it held while
    // stopped (docs/DECISIONS.md, "Journal"); its storage is dead until it restarts, as an
    // operator would restart it. The node keeps spooling meanwhile; printed, not hidden.
    let broker_crashed = broker_panic(&broker_dir);
    if let Some(panic) = &broker_crashed {
        eprintln!(
            "outage ({fault:?}): the broker panicked after the fault and is restarted: {panic}"
        );
        broker.restart();
    }
    load.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("a load worker panicked");
    }
    let ended_at = load.started.elapsed();

    // Recovery: the spool replayed, the pools caught up.
    let recovery = Instant::now();
    let replayed = eventually(Duration::from_secs(240), || async {
        spool_drained(&client, &node.base).await.ok()
    })
    .await;
    assert!(
        replayed.is_some(),
        "spool not replayed: {}",
        node.log_tail()
    );
    let replayed_after = recovery.elapsed();
    let caught_up = wait_caught_up(
        &client,
        &node.base,
        &expected_partitions,
        Duration::from_secs(180),
    )
    .await;
    assert!(caught_up.is_ok(), "pools did not catch up: {caught_up:?}");

    let observed = load.take_observed();
    let grace = Duration::from_millis(1500);
    let before: Vec<&Sample> = observed
        .samples
        .iter()
        .filter(|s| s.at >= Duration::from_secs(2) && s.at < died_at)
        .collect();
    let during: Vec<&Sample> = observed
        .samples
        .iter()
        .filter(|s| s.at >= died_at && s.at < returned_at)
        .collect();
    // The node's own restart (KillWithNodeCrash) is not the journal's outage: requests
    // sent while it was down, or in flight when it died, are left out of the 5xx count.
    let in_node_restart =
        |s: &Sample| node_down.is_some_and(|(down, up)| s.at < up && s.at + s.latency >= down);
    let after_grace: Vec<&Sample> = during
        .iter()
        .copied()
        .filter(|s| s.at >= died_at + grace && !in_node_restart(s))
        .collect();
    // Which requests must not fail. A killed broker: every one answered from 1.5 s after it
    // died to the end of the run (the switch back and the replay included), whenever it
    // was due. A hung broker is noticed only when appends time out (README, "When the
    // journal is down"): a command whose append started before the breaker opened waits
    // for it and may answer 503 `timeout` (past `actors.command_timeout_ms`) or
    // `journal_outcome_unknown` — counted and printed; every request due from 1.5 s after
    // the breaker opened must succeed.
    let breaker_opened = died_at + breaker_open_after.unwrap_or_default();
    let must_succeed = |s: &Sample| {
        !in_node_restart(s)
            && match fault {
                Fault::Stop => s.at >= breaker_opened + grace,
                Fault::Kill | Fault::KillWithNodeCrash => s.at + s.latency >= died_at + grace,
            }
    };
    let answered_late: Vec<&Sample> = observed
        .samples
        .iter()
        .filter(|s| must_succeed(s))
        .collect();
    let mut early_errors: BTreeMap<(u16, Option<String>), usize> = BTreeMap::new();
    for s in &observed.samples {
        if s.at + s.latency >= died_at + grace && !must_succeed(s) && s.status >= 500 {
            *early_errors.entry((s.status, s.code.clone())).or_insert(0) += 1;
        }
    }
    let server_errors = answered_late.iter().filter(|s| s.status >= 500).count();
    let late_errors: Vec<(Duration, u16, Option<&str>)> = answered_late
        .iter()
        .filter(|s| s.status >= 500)
        .map(|s| (s.at + s.latency - died_at, s.status, s.code.as_deref()))
        .take(5)
        .collect();
    let transport_errors = answered_late.iter().filter(|s| s.status == 0).count();
    let errors_in_grace = observed
        .samples
        .iter()
        .filter(|s| {
            let answered = s.at + s.latency;
            answered >= died_at && answered < died_at + grace && !(200..500).contains(&s.status)
        })
        .count();
    let (p50_before, p99_before, max_before, n_before) = percentiles(&before);
    let (p50_during, p99_during, max_during, n_during) = percentiles(&during);
    let (p50_steady, p99_steady, max_steady, _) = percentiles(&after_grace);
    let over_1s = during
        .iter()
        .filter(|s| s.latency > Duration::from_secs(1))
        .count();
    let statuses: BTreeMap<u16, usize> =
        observed.samples.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.status).or_insert(0) += 1;
            m
        });
    let offered_window = (died_at - Duration::from_secs(2)).as_secs_f64().max(0.001);
    eprintln!(
        "outage ({fault:?}, {outage:?}): before {:.0} req/s p50 {p50_before:?} p99 {p99_before:?} max {max_before:?} (n {n_before}); during {:.0} req/s p50 {p50_during:?} p99 {p99_during:?} max {max_during:?} (n {n_during}, {over_1s} over 1 s); during after the first 1.5 s p50 {p50_steady:?} p99 {p99_steady:?} max {max_steady:?}; breaker open {breaker_open_after:?} after the broker died; analytics of a payment made mid-outage visible after {probe_visible_after:?}; errors answered in the first 1.5 s: {errors_in_grace}; 5xx of commands whose append met the hung broker: {early_errors:?}; 5xx where none may be: {server_errors} (first, since the death: {late_errors:?}); transport errors after: {transport_errors}; statuses {statuses:?}; run {ended_at:?}; broker restarted after its own panic: {}; spool replayed {replayed_after:?} after the load stopped",
        n_before as f64 / offered_window,
        n_during as f64 / (returned_at - died_at).as_secs_f64(),
        broker_crashed.is_some(),
    );
    assert!(breaker_open_after.is_some(), "the breaker never opened");
    assert_eq!(
        server_errors, 0,
        "no 5xx once the breaker was open (hung) or 1.5 s after the death (killed): {late_errors:?} {statuses:?}"
    );
    assert_eq!(transport_errors, 0, "no timeouts or resets: {statuses:?}");
    assert!(
        early_errors.keys().all(|(status, code)| *status == 503
            && matches!(code.as_deref(), Some("timeout" | "journal_outcome_unknown"))),
        "appends that met the hung broker answer only 503 timeout or journal_outcome_unknown: {early_errors:?}"
    );
    assert!(n_during > 0, "the load ran during the outage");
    assert!(
        visible.is_some(),
        "analytics never counted the mid-outage payment"
    );
    // Read models stay live during the outage: the probe counted before the broker came
    // back. How fast is printed, not asserted (a debug build on 2 cores shared with the
    // broker, PostgreSQL and the load: 1.3-3.6 s at 100 req/s, BENCHMARKS.md has release).
    assert!(
        probe_at_run + probe_visible_after < returned_at,
        "analytics counted the mid-outage payment only after the broker returned ({probe_visible_after:?} after it was acknowledged)"
    );

    // Every acknowledged command is in the journal; every payment in sequence order.
    let acknowledged_commands = assert_every_acknowledged_step_journaled(
        &env.brokers,
        &env.topic(),
        PARTITIONS,
        &observed.acknowledged,
    );
    eprintln!(
        "outage ({fault:?}): {} payments, {acknowledged_commands} acknowledged commands, all journaled in order; {read_back} payments read back after the node's restart during the outage (node down {node_down:?})",
        observed.acknowledged.len()
    );

    let (clean, differences, output) = audit(&env);
    assert!(clean, "audit: {differences:?}\n{output}");
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    let out_of_order = log
        .lines()
        .filter(|l| l.contains("applied out of order"))
        .count();
    let witnessed = log
        .lines()
        .filter(|l| l.contains("order witness summary"))
        .count();
    assert_eq!(
        out_of_order, 0,
        "the slowed ledger applied events out of order"
    );
    assert!(
        witnessed > 0,
        "the order witness saw the slowed pool's events"
    );
    drop(sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_an_outage_under_load_serves_every_acknowledged_payment() {
    outage_under_load(Fault::KillWithNodeCrash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_broker_under_load_loses_nothing_and_answers_no_5xx() {
    outage_under_load(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_broker_under_load_loses_nothing_and_answers_no_5xx() {
    outage_under_load(Fault::Stop).await;
}
