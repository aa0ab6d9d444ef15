//! `GET /metrics` on a real node (real broker and PostgreSQL): the counts it reports agree
//! with what the test did, and it needs the admin token.
//!
//! Each test collects every check that failed and reports them together, so one broken
//! build shows every family that stopped being recorded.

mod common;

use common::{Api, NodeProcess, TestEnv, ADMIN_TOKEN, PARTITIONS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once("=\"")?;
                            Some((k.to_string(), v.trim_end_matches('"').to_string()))
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Some((name, labels, value))
        })
        .collect()
}

/// One scrape, parsed.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
    }

    /// The first sample of `name` with these labels (others may differ).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).next()
    }

    /// The sum over every sample of `name` with these labels (e.g. over partitions).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }
}

async fn scrape(api: &Api) -> Scrape {
    let response = api
        .client
        .get(format!("{}/metrics", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("metrics text");
    let samples = parse(&text);
    Scrape { text, samples }
}

/// Scrapes until `ok` holds or `timeout` passes; returns the last scrape.
async fn scrape_until(api: &Api, timeout: Duration, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(api).await;
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that failed, reported together at the end.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    fn eq(&mut self, what: &str, got: Option<f64>, want: f64) {
        self.check(
            got == Some(want),
            format!("{what}: got {got:?}, want {want}"),
        );
    }

    fn at_least(&mut self, what: &str, got: Option<f64>, want: f64) {
        self.check(
            got.is_some_and(|g| g >= want),
            format!("{what}: got {got:?}, want >= {want}"),
        );
    }

    fn finish(self, scrape: &Scrape) {
        assert!(
            self.0.is_empty(),
            "{} failed checks:\n{}\n--- last scrape ---\n{}",
            self.0.len(),
            self.0.join("\n"),
            scrape.text
        );
    }
}

async fn post(api: &Api, key: &str, path: &str) -> common::Reply {
    api.send(
        reqwest::Method::POST,
        path,
        Some(key),
        None,
        Some("{}".into()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_requests_made_and_need_the_admin_token() {
    let env = TestEnv::new("metrics").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("metrics").await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let reply = api
            .create_payment(
                &key,
                Some(&format!("m-{n}")),
                r#"{"amount":100,"currency":"eur"}"#,
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        ids.push(reply.body["id"].as_str().expect("id").to_string());
    }
    for _ in 0..2 {
        let reply = api
            .create_payment(&key, None, r#"{"amount":-1,"currency":"eur"}"#)
            .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
    }
    // A capture before any confirm is refused by the payment; a cancel is accepted.
    let refused = post(&api, &key, &format!("/v1/payments/{}/capture", ids[0])).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let canceled = post(&api, &key, &format!("/v1/payments/{}/cancel", ids[1])).await;
    assert_eq!(canceled.status, 200, "{}", canceled.body);

    let unauthorized = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("scrape");
    assert_eq!(
        unauthorized.status().as_u16(),
        401,
        "/metrics needs the admin token"
    );

    // 7 created + 1 canceled = 8 events each pool applies.
    let analytics = format!("{}payrail.analytics", env.namespace);
    let delay = "payrail_consumer_apply_delay_seconds_count";
    let s = scrape_until(&api, Duration::from_secs(20), |s| {
        s.sum(delay, &[("consumer", &analytics)]) >= 8.0
    })
    .await;
    let mut c = Checks::default();
    let post_payments = [("method", "POST"), ("route", "/v1/payments")];
    c.eq(
        "201 creates",
        s.value(
            "payrail_http_requests_total",
            &[post_payments[0], post_payments[1], ("status", "201")],
        ),
        7.0,
    );
    c.eq(
        "400 creates",
        s.value(
            "payrail_http_requests_total",
            &[post_payments[0], post_payments[1], ("status", "400")],
        ),
        2.0,
    );
    c.eq(
        "create latency samples",
        s.value(
            "payrail_http_request_duration_seconds_count",
            &post_payments,
        ),
        9.0,
    );
    c.at_least(
        "journal appends",
        s.value(
            "payrail_journal_append_duration_seconds_count",
            &[("outcome", "ok")],
        ),
        8.0,
    );
    c.eq(
        "breaker",
        s.value("payrail_journal_breaker_state", &[]),
        0.0,
    );
    c.eq(
        "partitions owned",
        s.value("payrail_partitions_owned", &[]),
        f64::from(PARTITIONS),
    );
    c.eq(
        "spool rows",
        s.value("payrail_spool_rows", &[("partition", "0")]),
        0.0,
    );

    // Command latency by kind and outcome (invalid bodies never reach the actors).
    let cmd = "payrail_command_duration_seconds_count";
    let create_ok = [("command", "create"), ("outcome", "accepted")];
    c.eq("creates accepted", s.value(cmd, &create_ok), 7.0);
    let create_refused = [("command", "create"), ("outcome", "refused")];
    c.eq("creates refused", s.value(cmd, &create_refused), 0.0);
    let capture_refused = [("command", "capture"), ("outcome", "refused")];
    c.eq("captures refused", s.value(cmd, &capture_refused), 1.0);
    let cancel_ok = [("command", "cancel"), ("outcome", "accepted")];
    c.eq("cancels accepted", s.value(cmd, &cancel_ok), 1.0);
    c.check(
        s.value("payrail_command_duration_seconds_sum", &create_ok)
            .is_some_and(|sum| sum > 0.0),
        "create latency sum > 0",
    );

    // Live actors (passivation is 60 s by default: none has stopped).
    let live = "payrail_actors_live";
    c.at_least("live payments", s.value(live, &[("kind", "payment")]), 7.0);
    c.eq(
        "live merchants",
        s.value(live, &[("kind", "merchant")]),
        1.0,
    );
    c.eq(
        "live partition supervisors",
        s.value(live, &[("kind", "partition")]),
        f64::from(PARTITIONS),
    );

    // Append-to-apply delay per consumer and partition; lag gauges of assigned partitions.
    let applied = s.sum(delay, &[("consumer", &analytics)]);
    c.check(applied >= 8.0, format!("analytics applied {applied} of 8"));
    let assigned = s.sum(
        "payrail_consumer_partition_assigned",
        &[("consumer", &analytics)],
    );
    c.eq(
        "analytics partitions assigned",
        Some(assigned),
        f64::from(PARTITIONS),
    );

    // Dead letters: none, and the gauge says so.
    let pending = [("consumer", analytics.as_str()), ("state", "pending")];
    c.eq(
        "dead letters pending",
        s.value("payrail_dead_letters", &pending),
        0.0,
    );

    // PostgreSQL pool: the test env sets database.max_connections = 8.
    let open = s.sum("payrail_db_connections", &[]);
    c.check(open >= 1.0, format!("db connections {open}"));
    c.eq(
        "db connections max",
        s.value("payrail_db_connections_max", &[]),
        8.0,
    );
    c.check(
        s.value("payrail_db_acquire_wait_seconds", &[]).is_some(),
        "db acquire wait sampled",
    );
    c.finish(&s);
}

/// Supervisor restarts and give-ups, passivations and dead letters, forced with the
/// node's fault injection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_restarts_give_ups_passivations_and_dead_letters() {
    let env = TestEnv::new("metrics_faults").await;
    let node = NodeProcess::start(
        &env,
        &[
            ("PAYRAIL__ACTORS__FAULT_INJECTION", "true"),
            ("PAYRAIL__ACTORS__PASSIVATE_AFTER_MS", "1000"),
            ("PAYRAIL__SUPERVISOR__RESTART__MAX_RESTARTS", "2"),
            ("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_BASE_MS", "50"),
            ("PAYRAIL__SUPERVISOR__RESTART__BACKOFF_MAX_MS", "50"),
            ("PAYRAIL__JOURNAL__WORKER_MAX_ATTEMPTS", "2"),
            ("PAYRAIL__JOURNAL__WORKER_RETRY_BASE_MS", "10"),
        ],
    )
    .await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("faults").await;
    let fault = |f: &str| {
        format!(r#"{{"amount":500,"currency":"eur","metadata":{{"payrail_fault":"{f}"}}}}"#)
    };
    // A record the analytics pool fails on every attempt: dead-lettered once.
    let dead = api
        .create_payment(&key, Some("dead"), &fault("fail_in_pool_analytics"))
        .await;
    assert_eq!(dead.status, 201, "{}", dead.body);
    // A record the ledger pool's worker panics on once: one restart of that consumer.
    let panics = api
        .create_payment(&key, Some("panics"), &fault("panic_in_pool_ledger"))
        .await;
    assert_eq!(panics.status, 201, "{}", panics.body);
    // A payment whose actor panics on every cancel: 2 restarts, then the merchant gives up.
    let poison = api
        .create_payment(&key, Some("poison"), &fault("panic_always_on_cancel"))
        .await;
    assert_eq!(poison.status, 201, "{}", poison.body);
    let poison_id = poison.body["id"].as_str().expect("id").to_string();
    let mut cancels = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&api, &key, &format!("/v1/payments/{poison_id}/cancel")).await;
        assert!(
            r.status >= 500,
            "a panicking cancel: {} {}",
            r.status,
            r.body
        );
        cancels += 1;
        let ready = api
            .send(reqwest::Method::GET, "/readyz", None, None, None)
            .await;
        if ready.status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no give-up after {cancels} cancels"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let analytics = format!("{}payrail.analytics", env.namespace);
    let ledger = format!("consumer:{}payrail.ledger", env.namespace);
    let passivations = "payrail_actor_passivations_total";
    let s = scrape_until(&api, Duration::from_secs(30), |s| {
        s.value("payrail_dead_letters_total", &[("consumer", &analytics)]) == Some(1.0)
            && s.value(passivations, &[("kind", "merchant")]) >= Some(1.0)
            && s.value("payrail_actors_live", &[("kind", "merchant")]) == Some(0.0)
            && s.value(
                "payrail_supervisor_restarts_total",
                &[("supervisor", &ledger)],
            ) == Some(1.0)
    })
    .await;
    let mut c = Checks::default();
    let merchant = [("supervisor", "merchant")];
    c.eq(
        "payment actor restarts",
        s.value("payrail_supervisor_restarts_total", &merchant),
        2.0,
    );
    c.eq(
        "payment actor give-ups",
        s.value("payrail_supervisor_give_ups_total", &merchant),
        1.0,
    );
    c.eq(
        "ledger worker restarts",
        s.value(
            "payrail_supervisor_restarts_total",
            &[("supervisor", &ledger)],
        ),
        1.0,
    );
    let cancel_error = [("command", "cancel"), ("outcome", "error")];
    c.eq(
        "cancels that failed",
        s.value("payrail_command_duration_seconds_count", &cancel_error),
        f64::from(cancels),
    );
    c.eq(
        "dead letters counted",
        s.value("payrail_dead_letters_total", &[("consumer", &analytics)]),
        1.0,
    );
    let pending = [("consumer", analytics.as_str()), ("state", "pending")];
    c.eq(
        "dead letters pending",
        s.value("payrail_dead_letters", &pending),
        1.0,
    );
    // Idle for 1 s: the two healthy payments passivate, then their merchant.
    c.at_least(
        "payment passivations",
        s.value(passivations, &[("kind", "payment")]),
        2.0,
    );
    c.at_least(
        "merchant passivations",
        s.value(passivations, &[("kind", "merchant")]),
        1.0,
    );
    c.eq(
        "live payments after passivation",
        s.value("payrail_actors_live", &[("kind", "payment")]),
        0.0,
    );
    c.eq(
        "live merchants after passivation",
        s.value("payrail_actors_live", &[("kind", "merchant")]),
        0.0,
    );
    c.finish(&s);
}

/// Issue 23: the `method` label is one of the methods the API knows or `other`; a client
/// sending made-up methods does not mint a series per method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_share_one_label_value() {
    let env = TestEnv::new("metrics_methods").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    for n in 0..20 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{n}").as_bytes())
            .expect("a valid method token");
        let reply = api.send(method, "/v1/payments", None, None, None).await;
        assert!(reply.status >= 400, "{} {}", reply.status, reply.body);
    }
    let s = scrape_until(&api, Duration::from_secs(10), |s| {
        s.sum("payrail_http_requests_total", &[("method", "other")]) >= 20.0
    })
    .await;
    let minted: Vec<&String> = s
        .samples
        .iter()
        .filter_map(|(_, labels, _)| labels.get("method"))
        .filter(|m| m.starts_with("MADEUP"))
        .collect();
    assert!(minted.is_empty(), "label values minted: {minted:?}");
    assert!(
        s.sum("payrail_http_requests_total", &[("method", "other")]) >= 20.0,
        "{}",
        s.text
    );
}
