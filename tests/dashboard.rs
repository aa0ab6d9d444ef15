//! The operators' surface on a real node (real broker and PostgreSQL): `GET /v1/admin/status`,
//! `payrail status`, and the `/dashboard` page in headless Chromium while load runs.

#[path = "common/browser.rs"]
mod browser;
mod common;

use common::{free_port, Api, NodeProcess, TestEnv, ADMIN_TOKEN, PARTITIONS};
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEAD_LETTER_ERROR: &str = "dashboard test: poison record";

async fn status(api: &Api, token: Option<&str>) -> (u16, Value) {
    let mut request = api.client.get(format!("{}/v1/admin/status", api.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("status request");
    let code = response.status().as_u16();
    (code, response.json().await.expect("status JSON"))
}

fn consumer_names(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = status["consumers"]["data"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| c["name"].as_str().expect("consumer name").to_string())
        .collect();
    names.sort();
    names
}

/// Parks one dead letter for the node's ledger consumer, as a poison record would.
async fn park_dead_letter(env: &TestEnv, status: &Value) -> String {
    let consumer = consumer_names(status)
        .into_iter()
        .find(|n| n.ends_with("ledger"))
        .expect("a ledger consumer");
    sqlx::query(
        "INSERT INTO journal_dead_letters (consumer, topic, partition, record_offset, event_id, error, value, event_type)
         VALUES ($1, $2, 1, 42, $3, $4, '\\x00ff'::bytea, 'payment.succeeded')",
    )
    .bind(&consumer)
    .bind(env.topic())
    .bind(uuid::Uuid::now_v7())
    .bind(DEAD_LETTER_ERROR)
    .execute(&env.pool().await)
    .await
    .expect("dead letter");
    consumer
}

fn payrail_status(
    env: &TestEnv,
    port: u16,
    args: &[&str],
    extra: &[(&str, &str)],
) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payrail"))
        .arg("status")
        .args(args)
        .envs(env.node_env(port))
        .envs(extra.iter().copied())
        .output()
        .expect("run payrail status");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_and_cli_report_the_node_and_need_the_admin_token() {
    let env = TestEnv::new("status").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);

    let (code, body) = status(&api, None).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(status(&api, Some("wrong-token-0123456789")).await.0, 401);

    let (code, before) = status(&api, Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{before}");
    assert_eq!(before["object"], "node_status");
    assert_eq!(before["node_id"], Value::Null, "a single node has no id");
    assert_eq!(before["ready"], true, "{before}");
    assert_eq!(before["reasons"], serde_json::json!([]));
    assert_eq!(before["journal"]["state"], "ok");
    assert_eq!(before["journal"]["breaker"], "closed");
    assert_eq!(before["spool"]["rows"], 0);
    assert!(before["spool"]["max_rows"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(before["partitions"]["count"], PARTITIONS);
    assert_eq!(before["partitions"]["owned"], PARTITIONS);
    assert_eq!(
        before["partitions"]["owners"].as_array().map(Vec::len),
        Some(PARTITIONS as usize)
    );
    assert_eq!(before["consumers"]["error"], Value::Null);
    let names = consumer_names(&before);
    assert!(names.len() >= 4, "snapshots and the pools: {names:?}");
    assert!(
        names.iter().all(|n| n.starts_with(&env.namespace)),
        "{names:?}"
    );
    assert_eq!(before["dead_letters"]["total"], 0);
    assert_eq!(before["dead_letters"]["recent"], serde_json::json!([]));
    let text = before.to_string();
    assert!(!text.contains(ADMIN_TOKEN) && !text.contains(&env.database_url));

    let consumer = park_dead_letter(&env, &before).await;
    let (_, after) = status(&api, Some(ADMIN_TOKEN)).await;
    let dead = &after["dead_letters"];
    assert_eq!(dead["total"], 1, "{dead}");
    assert_eq!(dead["pending"], 1, "{dead}");
    let counted: Vec<&Value> = dead["by_consumer"]
        .as_array()
        .expect("by_consumer")
        .iter()
        .filter(|c| c["total"] == 1)
        .collect();
    assert_eq!(counted.len(), 1, "{dead}");
    assert_eq!(counted[0]["consumer"], consumer.as_str());
    let letter = &dead["recent"][0];
    assert_eq!(letter["consumer"], consumer.as_str());
    assert_eq!(letter["partition"], 1);
    assert_eq!(letter["offset"], 42);
    assert_eq!(letter["event_type"], "payment.succeeded");
    assert_eq!(letter["error"], DEAD_LETTER_ERROR);
    assert!(letter["created_at"].is_string(), "{letter}");

    // The CLI finds the node from http.bind and the token from PAYRAIL__HTTP__ADMIN_TOKEN.
    let (code, out, err) = payrail_status(&env, node.port, &[], &[]);
    assert_eq!(code, 0, "{out}{err}");
    for expected in [
        "ready     yes",
        "journal   ok",
        "breaker   closed (0 transitions)",
        "single node (not clustered)",
        "Partitions (owned here: 3 of 3)",
        "Dead letters (total 1, not replayed 1)",
        DEAD_LETTER_ERROR,
    ] {
        assert!(out.contains(expected), "{expected:?} missing in:\n{out}");
    }
    for name in &names {
        assert!(out.contains(name.as_str()), "{name} missing in:\n{out}");
    }
    println!("payrail status:\n{out}");

    let (code, out, err) = payrail_status(&env, node.port, &["--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).expect("only JSON on stdout (logs on stderr)");
    assert_eq!(json["object"], "node_status");
    assert_eq!(json["ready"], true);
    assert_eq!(json["dead_letters"]["total"], 1);

    // Unreachable, and refused: exit 2.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = payrail_status(&env, node.port, &["--url", &nobody], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unreachable"), "{err}");
    let (code, _, err) = payrail_status(
        &env,
        node.port,
        &[],
        &[("PAYRAIL__HTTP__ADMIN_TOKEN", "not-the-admin-token-0123")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_needs_credentials_and_serves_only_its_own_files() {
    let env = TestEnv::new("dashboard_auth").await;
    let node = NodeProcess::start(&env, &[]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = |path: &str| format!("{}{path}", node.base);

    for path in [
        "/dashboard",
        "/dashboard/dashboard.js",
        "/dashboard/dashboard.css",
    ] {
        let refused = client.get(url(path)).send().await.expect("request");
        assert_eq!(refused.status().as_u16(), 401, "{path}");
        let challenge = refused.headers()["www-authenticate"]
            .to_str()
            .expect("ascii");
        assert!(
            challenge.starts_with("Basic realm=\"payrail admin\""),
            "{challenge}"
        );
        let body: Value = refused.json().await.expect("JSON error body");
        assert_eq!(body["error"]["type"], "authentication_error");

        let wrong = client
            .get(url(path))
            .basic_auth("admin", Some("wrong-token-0123456789"))
            .send()
            .await
            .expect("request");
        assert_eq!(wrong.status().as_u16(), 401, "{path}");
    }

    for (path, content_type) in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ] {
        let served = client
            .get(url(path))
            .basic_auth("anyone", Some(ADMIN_TOKEN))
            .send()
            .await
            .expect("request");
        assert_eq!(served.status().as_u16(), 200, "{path}");
        let headers = served.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(content_type),
            "{path}: {headers:?}"
        );
        let csp = headers["content-security-policy"].to_str().expect("ascii");
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        let body = served.text().await.expect("body");
        assert!(!body.contains("://"), "{path} names an external URL");
    }
    // The Basic credentials open the admin API too (the page's fetches rely on it).
    let status = client
        .get(url("/v1/admin/status"))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("request");
    assert_eq!(status.status().as_u16(), 200);
}

/// Values the dashboard shows, read from the DOM by id / data-testid.
const SNAPSHOT: &str = r#"(() => {
  if (document.getElementById("error-banner") === null) return null; // not loaded yet
  const t = (id) => document.getElementById(id).textContent;
  const rows = (testid) => [...document.querySelectorAll(`[data-testid=${testid}]`)];
  return {
    creates: t("creates-per-second"), requests: t("requests-per-second"),
    p50: t("latency-p50-ms"), p95: t("latency-p95-ms"), p99: t("latency-p99-ms"),
    ready: t("ready"), breaker: t("breaker"), journal: t("journal-state"),
    owned: t("partitions-owned"), count: t("partitions-count"),
    partition_rows: rows("partition-row").length,
    lag: rows("lag-row").map((r) => r.dataset.consumer).sort(),
    dead_section: document.querySelector("[data-testid=dead-letters]") !== null,
    dead_total: t("dead-letters-total"),
    dead_rows: rows("dead-letter-row").map((r) => r.textContent),
    updated: t("last-updated"),
    banner_hidden: document.getElementById("error-banner").hidden, banner: t("error-banner"),
    href: location.href,
  };
})()"#;

fn number(snapshot: &Value, key: &str) -> Option<f64> {
    snapshot[key].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_node_live_in_headless_chromium() {
    let env = TestEnv::new("dashboard").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("dashboard").await;
    let (_, initial) = status(&api, Some(ADMIN_TOKEN)).await;
    let names = consumer_names(&initial);
    park_dead_letter(&env, &initial).await;

    // Load for a bounded time: 4 clients creating payments back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicU64::new(0));
    let load_deadline = Instant::now() + Duration::from_secs(25);
    let started = Instant::now();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (api, key, stop, created) = (api.clone(), key.clone(), stop.clone(), created.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < load_deadline {
                if let Some(reply) = api
                    .try_create_payment(&key, r#"{"amount":1000,"currency":"eur"}"#)
                    .await
                {
                    if reply.status == 201 {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // The load's own rate, sampled every 100 ms: the page's creates/s is checked against
    // the fastest second of it.
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let sampler = {
        let (samples, created, stop) = (samples.clone(), created.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < load_deadline {
                let now = (Instant::now(), created.load(Ordering::Relaxed));
                samples.lock().expect("samples").push(now);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The page authenticates with the URL's credentials; Chromium answers the Basic
    // challenge with them and sends them with the page's same-origin fetches.
    let page_url = format!(
        "http://admin:{ADMIN_TOKEN}@127.0.0.1:{}/dashboard",
        node.port
    );
    let mut browser = browser::Browser::open(&page_url, &env.dir).await;

    let mut seen = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        seen = browser.eval(SNAPSHOT).await;
        if number(&seen, "creates").is_some_and(|n| n > 0.0) && number(&seen, "p99").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let load_rate = created.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let fastest_second = {
        let samples = samples.lock().expect("samples");
        samples
            .iter()
            .enumerate()
            .filter_map(|(i, (at, n))| {
                let (later_at, later_n) = samples[i..]
                    .iter()
                    .find(|(t, _)| t.duration_since(*at) >= Duration::from_millis(900))?;
                Some((later_n - n) as f64 / later_at.duration_since(*at).as_secs_f64())
            })
            .fold(0.0, f64::max)
    };
    println!(
        "dashboard while loaded: {seen:#}\nload: {load_rate:.1} creates/s on average, \
         {fastest_second:.1} in its fastest second"
    );
    let creates = number(&seen, "creates").unwrap_or(0.0);
    assert!(creates > 0.0, "creates/s while load runs: {seen}");
    assert!(
        creates <= 2.0 * fastest_second + 5.0,
        "{creates} creates/s shown, {fastest_second:.1}/s made in the fastest second"
    );
    assert!(
        number(&seen, "requests").is_some_and(|r| r >= creates),
        "{seen}"
    );
    let (p50, p95, p99) = (
        number(&seen, "p50").expect("p50"),
        number(&seen, "p95").expect("p95"),
        number(&seen, "p99").expect("p99"),
    );
    assert!(
        0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= 10_000.0,
        "{seen}"
    );
    assert_eq!(seen["banner_hidden"], true, "a poll failed: {seen}");
    assert_eq!(seen["ready"], "ready");
    assert_eq!(seen["breaker"], "closed");
    assert_eq!(seen["journal"], "ok");
    assert_eq!(seen["owned"], PARTITIONS.to_string());
    assert_eq!(seen["count"], PARTITIONS.to_string());
    assert_eq!(seen["partition_rows"], PARTITIONS);
    assert_eq!(
        seen["lag"],
        serde_json::json!(names),
        "one lag row per consumer"
    );
    assert_eq!(seen["dead_section"], true);
    assert_eq!(seen["dead_total"], "1");
    let dead_rows = seen["dead_rows"].as_array().expect("dead-letter rows");
    assert_eq!(dead_rows.len(), 1, "{seen}");
    assert!(dead_rows[0]
        .as_str()
        .is_some_and(|r| r.contains(DEAD_LETTER_ERROR)));
    assert_ne!(seen["updated"], "never");
    assert!(
        !seen["href"].as_str().unwrap_or("").contains(ADMIN_TOKEN),
        "the page's URL keeps no credentials: {seen}"
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &png).expect("screenshot");
    println!("dashboard screenshot: {}", path.display());

    // The page is live: once the load stops, creates/s falls to 0.
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    sampler.await.expect("sampler");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut idle = Value::Null;
    while Instant::now() < deadline {
        idle = browser.eval(SNAPSHOT).await;
        if number(&idle, "creates") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        number(&idle, "creates"),
        Some(0.0),
        "after the load: {idle}"
    );
    drop(browser);

    // The token travelled in Authorization headers only, never in a logged URL.
    let log = std::fs::read_to_string(&node.log).expect("node log");
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the admin token is in the node's log"
    );
}
