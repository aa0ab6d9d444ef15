//! The API fuzzed from its own OpenAPI document: schemathesis (PyPI) generates invalid, then
//! valid, inputs for every operation against a real node, broker, PostgreSQL and PSP sandbox.
//!
//! Negative phase first: every request is invalid somewhere, so the journal and every read
//! model must be exactly as before, and nothing may answer 5xx. Then the positive phase: no
//! 5xx, every answer documented and matching its schema. Each run is bounded (`--max-time`,
//! and a hard kill by PID); the numbers are printed and the reports kept under
//! `target/test-artifacts/fuzz/`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Fixed, so a failure can be replayed with the same cases.
const SEED: u64 = 20_261_128;

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/fuzz");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

/// Row count and content digest of every table (`None` digest: a table whose rows the node
/// rewrites on its own, e.g. lease renewals, where only the count is compared).
async fn read_models(pool: &sqlx::PgPool) -> BTreeMap<String, (i64, Option<String>)> {
    const LIVE: [&str; 4] = [
        "journal_offsets",
        "partition_leases",
        "cluster_nodes",
        "_sqlx_migrations",
    ];
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut out = BTreeMap::new();
    for table in tables {
        let (rows, digest): (i64, Option<String>) = sqlx::query_as(&format!(
            "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM \"{table}\" t"
        ))
        .fetch_one(pool)
        .await
        .expect("table digest");
        let digest = (!LIVE.contains(&table.as_str())).then(|| digest.unwrap_or_default());
        out.insert(table, (rows, digest));
    }
    out
}

type Snapshot = (usize, BTreeMap<String, (i64, Option<String>)>);

/// The journal's record count and the read models, once they stop moving (consumers and
/// PSP webhooks apply asynchronously).
async fn settled_state(env: &TestEnv, pool: &sqlx::PgPool) -> Snapshot {
    let mut last: Option<Snapshot> = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let journal = read_journal(&env.brokers, &env.topic(), PARTITIONS).len();
        let now = (journal, read_models(pool).await);
        if last.as_ref() == Some(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "the state never settled");
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

/// 5xx answers the node itself counted (`payrail_http_requests_total`), for a cross-check of
/// what schemathesis saw.
async fn server_errors_counted(api: &Api) -> u64 {
    let r = api
        .send(
            reqwest::Method::GET,
            "/metrics",
            Some(ADMIN_TOKEN),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let text = r.body.as_str().expect("metrics text").to_string();
    text.lines()
        .filter(|l| l.starts_with("payrail_http_requests_total{") && l.contains("status=\"5"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Requests with a method the document does not list for the path (schemathesis probes
/// that each path answers them 405), counted together.
const UNDOCUMENTED: &str = "(methods not documented for the path)";

/// What one schemathesis run did.
struct RunReport {
    /// (METHOD route template) → answers by status class.
    by_operation: BTreeMap<String, BTreeMap<String, u64>>,
    /// schemathesis' own verdict (`json` report).
    summary: Value,
    exit_code: Option<i32>,
    output: String,
}

impl RunReport {
    fn total(&self, class: &str) -> u64 {
        self.by_operation
            .values()
            .map(|c| c.get(class).copied().unwrap_or(0))
            .sum()
    }
    fn operations(&self) -> usize {
        self.by_operation
            .keys()
            .filter(|o| o.as_str() != UNDOCUMENTED)
            .count()
    }
    fn cases(&self) -> u64 {
        self.by_operation.values().flat_map(|c| c.values()).sum()
    }
}

/// A schemathesis hook for the negative phase: its fuzzer falls back to a valid case when it
/// cannot make an invalid one, and the coverage phase sends one valid baseline per
/// operation; those are not sent, so every request of the phase is an invalid one. Nor are
/// the coverage phase's cases whose only fault is an extra, undocumented header
/// (`x-schemathesis-unknown-property`, made for operations that document header parameters,
/// e.g. the Stripe routes' `Stripe-Version`): HTTP servers ignore headers they do not know,
/// so such a request is a valid one.
const ONLY_NEGATIVE_CASES: &str = "import schemathesis\n\n\
@schemathesis.hook\n\
def filter_case(context, case):\n    \
return (case.meta is not None and case.meta.generation.mode.is_negative\n        \
and 'x-schemathesis-unknown-property' not in (case.headers or {}))\n";

/// Runs schemathesis against `base` with `config` (a schemathesis.toml), killed by PID if it
/// outlives `max_time_s` by more than a minute.
async fn schemathesis(
    name: &str,
    base: &str,
    config: &str,
    mode: &str,
    phases: &str,
    checks: &str,
    max_time_s: u64,
) -> RunReport {
    let dir = artifacts().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("report dir");
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config).expect("write config");
    let hooks = dir.join("hooks.py");
    std::fs::write(
        &hooks,
        if mode == "negative" {
            ONLY_NEGATIVE_CASES
        } else {
            ""
        },
    )
    .expect("write hooks");
    let log_path = dir.join("output.txt");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config_path)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--url", base])
        .args(["--mode", mode])
        .args(["--phases", phases])
        .args(["--checks", checks])
        .args(["--seed", &SEED.to_string()])
        .args(["--max-time", &max_time_s.to_string()])
        .args(["--workers", "1", "--no-color"])
        .args(["--suppress-health-check", "filter_too_much,too_slow"])
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .args(["--report", "har,json"])
        .arg("--report-har-path")
        .arg(dir.join("requests.har"))
        .arg("--report-json-path")
        .arg(dir.join("report.json"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        // Its cache (.schemathesis/) goes with the reports, not into the checkout.
        .current_dir(&dir)
        .spawn()
        .expect("schemathesis is installed (scripts/test.sh: pip install schemathesis)");
    let deadline = Instant::now() + Duration::from_secs(max_time_s + 60);
    let exit_code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis {name} outlived its time budget; killed");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let read = |file: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("no {file} in {dir:?} ({e}): {output}"));
        serde_json::from_str(&text).expect("report is JSON")
    };
    let har = read("requests.har");
    let mut by_operation: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for entry in har["log"]["entries"].as_array().expect("har entries") {
        let method = entry["request"]["method"].as_str().unwrap_or("?");
        let url = entry["request"]["url"].as_str().unwrap_or("");
        let path = url
            .strip_prefix(base)
            .unwrap_or(url)
            .split('?')
            .next()
            .unwrap_or("");
        let template = payrail_http::openapi::route_template(path);
        let documented = payrail_http::openapi::routes()
            .iter()
            .any(|(m, t)| m == method && t == template);
        let operation = if documented {
            format!("{method} {template}")
        } else {
            UNDOCUMENTED.to_string()
        };
        let status = entry["response"]["status"].as_u64().unwrap_or(0);
        let class = if status == 0 {
            "no answer".to_string()
        } else {
            format!("{}xx", status / 100)
        };
        *by_operation
            .entry(operation)
            .or_default()
            .entry(class)
            .or_default() += 1;
    }
    let summary = read("report.json");
    RunReport {
        by_operation,
        summary,
        exit_code,
        output,
    }
}

fn print_report(name: &str, report: &RunReport) {
    println!(
        "fuzz {name}: {} operations x {} cases; 2xx {} 3xx {} 4xx {} 5xx {} no answer {}; schemathesis: {}",
        report.operations(),
        report.cases(),
        report.total("2xx"),
        report.total("3xx"),
        report.total("4xx"),
        report.total("5xx"),
        report.total("no answer"),
        report.summary["test_cases"]
    );
    for (operation, classes) in &report.by_operation {
        println!("  {operation:<48} {classes:?}");
    }
}

/// A schemathesis.toml: each security scheme gets its own credential, so merchant operations
/// run with merchant A's key and admin operations with the admin token; the PSP signature
/// and the cluster secret are left for schemathesis to make up (every such request must be
/// refused). Path ids of payment operations are pinned to real payments of A, so bodies are
/// validated instead of stopping at 404.
fn config(key: &str, max_examples: u32, pinned: &[(&str, &str)]) -> String {
    let mut toml = format!(
        "[generation]\nmax-examples = {max_examples}\n\n\
         [auth.openapi.merchant_api_key]\nbearer = \"{key}\"\n\n\
         [auth.openapi.admin_token]\nbearer = \"{ADMIN_TOKEN}\"\n"
    );
    for (path, id) in pinned {
        toml.push_str(&format!(
            "\n[[operations]]\ninclude-path = \"{path}\"\nparameters = {{ \"path.id\" = \"{id}\" }}\n"
        ));
    }
    toml
}

async fn new_payment(api: &Api, key: &str, body: &str, confirm: Option<&str>) -> String {
    let created = api.create_payment(key, None, body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    if let Some(method) = confirm {
        let r = api
            .send(
                reqwest::Method::POST,
                &format!("/v1/payments/{id}/confirm"),
                Some(key),
                None,
                Some(format!(r#"{{"payment_method":"{method}"}}"#)),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_operations_never_answer_5xx_and_rejected_requests_change_nothing() {
    let env = TestEnv::new("fuzz").await;
    let (node, sandbox) = node_with_sandbox(&env).await;
    let api = Api::new(&node);
    let (_, key_a) = api.merchant("FuzzA").await;
    let (_, key_b) = api.merchant("FuzzB").await;
    // The merchant whose key the admin operation rolls: not A, whose key the run uses.
    let (merchant_c, _) = api.merchant("FuzzC").await;
    let open = new_payment(&api, &key_a, r#"{"amount":1200,"currency":"eur"}"#, None).await;
    let manual = new_payment(
        &api,
        &key_a,
        r#"{"amount":3400,"currency":"usd","capture_method":"manual","channel":"web"}"#,
        Some("pm_card_visa"),
    )
    .await;
    let paid = new_payment(
        &api,
        &key_a,
        r#"{"amount":5600,"currency":"eur","order_no":"o-1"}"#,
        Some("pm_card_visa"),
    )
    .await;
    let to_cancel = new_payment(&api, &key_a, r#"{"amount":700,"currency":"jpy"}"#, None).await;
    new_payment(&api, &key_b, r#"{"amount":999,"currency":"eur"}"#, None).await;
    // A refund of A's, for the Stripe-compatible `GET /v1/refunds/{id}` (issue 26).
    let refund = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/payments/{paid}/refunds"),
            Some(&key_a),
            None,
            Some(r#"{"amount":100}"#.into()),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.body);
    let refund = refund.body["id"].as_str().expect("refund id").to_string();
    let pinned = [
        ("/v1/payments/{id}", open.as_str()),
        ("/v1/payments/{id}/confirm", open.as_str()),
        ("/v1/payments/{id}/capture", manual.as_str()),
        ("/v1/payments/{id}/cancel", to_cancel.as_str()),
        ("/v1/payments/{id}/refunds", paid.as_str()),
        ("/v1/merchants/{id}/roll_api_key", merchant_c.as_str()),
        ("/v1/payment_intents/{id}", open.as_str()),
        ("/v1/payment_intents/{id}/confirm", open.as_str()),
        ("/v1/payment_intents/{id}/capture", manual.as_str()),
        ("/v1/payment_intents/{id}/cancel", to_cancel.as_str()),
        ("/v1/refunds/{id}", refund.as_str()),
    ];
    let pool = env.pool().await;

    // Negative phase: every case is invalid somewhere.
    let before = settled_state(&env, &pool).await;
    let errors_before = server_errors_counted(&api).await;
    let negative = schemathesis(
        "negative",
        &node.base,
        &config(&key_a, 25, &pinned),
        "negative",
        // Not the stateful phase: its chains send valid requests to set up each step.
        "coverage,fuzzing",
        "not_a_server_error,negative_data_rejection",
        45,
    )
    .await;
    print_report("negative", &negative);
    let after = settled_state(&env, &pool).await;
    println!(
        "fuzz negative: journal records {} before, {} after; {} tables compared",
        before.0,
        after.0,
        before.1.len()
    );
    assert!(
        negative.cases() >= 200,
        "too few cases: {}",
        negative.output
    );
    assert_eq!(negative.total("5xx"), 0, "{}", negative.output);
    assert_eq!(negative.total("no answer"), 0, "{}", negative.output);
    assert_eq!(
        server_errors_counted(&api).await,
        errors_before,
        "the node counted 5xx answers"
    );
    assert_eq!(
        negative.summary["failures"],
        serde_json::json!([]),
        "schemathesis found failures: {}",
        negative.output
    );
    assert_eq!(before.0, after.0, "rejected requests were journaled");
    for (table, state) in &before.1 {
        assert_eq!(
            after.1.get(table),
            Some(state),
            "rejected requests changed table {table}"
        );
    }

    // Positive phase: valid inputs; answers must be documented and match their schemas.
    let positive = schemathesis(
        "positive",
        &node.base,
        &config(&key_a, 20, &pinned),
        "positive",
        "examples,coverage,fuzzing,stateful",
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_schema_conformance,response_headers_conformance,ignored_auth,\
         use_after_free,ensure_resource_availability",
        70,
    )
    .await;
    print_report("positive", &positive);
    assert!(
        positive.cases() >= 200,
        "too few cases: {}",
        positive.output
    );
    assert!(
        positive.total("2xx") > 0,
        "no valid case was accepted: {}",
        positive.output
    );
    assert_eq!(positive.total("5xx"), 0, "{}", positive.output);
    assert_eq!(positive.total("no answer"), 0, "{}", positive.output);
    assert_eq!(
        server_errors_counted(&api).await,
        errors_before,
        "the node counted 5xx answers"
    );
    assert_eq!(
        positive.summary["failures"],
        serde_json::json!([]),
        "schemathesis found failures: {}",
        positive.output
    );
    assert_eq!(positive.exit_code, Some(0), "{}", positive.output);
    drop(sandbox);
}
