//! The official Stripe SDKs, unmodified, against a real node (issue 26): `stripe` from PyPI
//! and `stripe` from npm, each only with its base address pointed at the node, run Stripe's
//! documented flows (tests/support/stripe_sdk.py and stripe_sdk.cjs, one scenario per run,
//! each with a merchant of its own). What an SDK saw is then checked against payrail's own
//! API and journal: the compatibility layer drove the same runtime.
//!
//! The pinned SDKs are installed by scripts/test.sh; a missing one fails these tests.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCENARIOS: [&str; 10] = [
    "create_and_confirm",
    "idempotent_replay",
    "idempotency_mismatch",
    "partial_capture",
    "refund",
    "cancel",
    "declined_card",
    "auto_pagination",
    "bad_parameter",
    "wrong_key",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where scripts/test.sh installs the npm SDK (`npm install --prefix`).
fn stripe_node_dir() -> PathBuf {
    std::env::var_os("PAYRAIL_STRIPE_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".payrail/stripe-node"))
}

struct Sdk {
    name: &'static str,
    program: &'static str,
    script: &'static str,
}

const PYTHON: Sdk = Sdk {
    name: "python",
    program: "python3",
    script: "tests/support/stripe_sdk.py",
};

const NODE: Sdk = Sdk {
    name: "node",
    program: "node",
    script: "tests/support/stripe_sdk.cjs",
};

/// Runs one scenario; its evidence, or why it failed.
async fn run(sdk: &Sdk, base: &str, key: &str, scenario: &str) -> Result<Value, String> {
    run_with(sdk, base, key, scenario, &[]).await
}

/// [`run`] with more environment for the script.
async fn run_with(
    sdk: &Sdk,
    base: &str,
    key: &str,
    scenario: &str,
    vars: &[(&str, &str)],
) -> Result<Value, String> {
    let child = tokio::process::Command::new(sdk.program)
        .arg(root().join(sdk.script))
        .args([base, key, scenario])
        .env("STRIPE_NODE_DIR", stripe_node_dir())
        .envs(vars.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .map_err(|_| format!("{} {scenario}: no answer in 120 s", sdk.name))?
        .map_err(|e| {
            format!(
                "{} {scenario}: could not start {}: {e}",
                sdk.name, sdk.program
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{} {scenario}: {}\n{stdout}\n{}",
            sdk.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| format!("{} {scenario}: no evidence line in {stdout}", sdk.name))
}

fn ids(evidence: &Value) -> Vec<String> {
    evidence["ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What payrail's own API and journal must show after `scenario`, as (check, held).
async fn cross_checks(
    env: &TestEnv,
    api: &Api,
    key: &str,
    scenario: &str,
    evidence: &Value,
) -> Vec<(String, bool)> {
    let mut checks = Vec::new();
    let ids = ids(evidence);
    let mut payments = Vec::new();
    for id in &ids {
        let reply = api.get_payment(key, id).await;
        checks.push((
            format!("{id} is a payrail payment of the merchant"),
            reply.status == 200,
        ));
        payments.push(reply.body);
    }
    let first = payments.first().cloned().unwrap_or(Value::Null);
    match scenario {
        "create_and_confirm" => {
            checks.push((
                "both payments succeeded in payrail".into(),
                payments.iter().all(|p| p["status"] == "succeeded") && payments.len() == 2,
            ));
            checks.push((
                "receipt_email is payrail's customer_email".into(),
                first["customer_email"] == "buyer@example.com",
            ));
        }
        "idempotent_replay" => {
            let created = eventually(Duration::from_secs(20), || async {
                let events = payment_events(env, &ids[0]);
                let created = events
                    .iter()
                    .filter(|(_, t)| t == "payment.created")
                    .count();
                (events.iter().any(|(_, t)| t == "payment.succeeded")).then_some(created)
            })
            .await;
            checks.push(("journaled one payment.created".into(), created == Some(1)));
        }
        "partial_capture" => checks.push((
            "payrail captured 3000 of 5000".into(),
            first["amount_captured"] == 3000 && first["amount"] == 5000,
        )),
        "refund" => checks.push((
            "payrail refunded 700".into(),
            first["amount_refunded"] == 700 && first["refunds"][0]["id"] == evidence["refund"],
        )),
        "cancel" => checks.push(("payrail canceled it".into(), first["status"] == "canceled")),
        "declined_card" => checks.push((
            "payrail failed it with the decline code".into(),
            first["status"] == "failed" && first["failure_code"] == "insufficient_funds",
        )),
        "auto_pagination" => checks.push((
            "every page's ids were seen once".into(),
            evidence["seen"].as_array().map(Vec::len) == Some(5),
        )),
        "bad_parameter" => checks.push((
            "the error named currency".into(),
            evidence["param"] == "currency",
        )),
        "idempotency_mismatch" => checks.push((
            "the first payment kept its amount".into(),
            first["amount"] == 4100,
        )),
        _ => {}
    }
    checks
}

async fn sdk_scenarios_run_against_a_node(sdk: &Sdk) {
    let env = TestEnv::new(&format!("stripe_{}", sdk.name)).await;
    let (node, sandbox) = node_with_sandbox(&env).await;
    let api = Api::new(&node);
    let mut failures = Vec::new();
    let mut passed = 0;
    for scenario in SCENARIOS {
        let (_, key) = api.merchant(&format!("{}-{scenario}", sdk.name)).await;
        match run(sdk, &node.base, &key, scenario).await {
            Err(failure) => failures.push(failure),
            Ok(evidence) => {
                println!("{evidence}");
                for (check, held) in cross_checks(&env, &api, &key, scenario, &evidence).await {
                    if !held {
                        failures.push(format!("{} {scenario}: {check}: {evidence}", sdk.name));
                    }
                }
                passed += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}\nnode log:\n{}",
        failures.len(),
        SCENARIOS.len(),
        failures.join("\n"),
        node.log_tail()
    );
    assert_eq!(passed, SCENARIOS.len());
    drop(sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_runs_stripes_flows_unchanged_against_a_node() {
    sdk_scenarios_run_against_a_node(&PYTHON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_runs_stripes_flows_unchanged_against_a_node() {
    sdk_scenarios_run_against_a_node(&NODE).await;
}

/// The browser guard's exception is narrow: a form body is taken on the Stripe routes with a
/// Bearer API key only (the dashboard's Basic credentials get 401); the native routes still
/// answer 415, and a Stripe route answers Stripe's error objects with a `Request-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_body_is_taken_only_on_the_stripe_routes_with_a_bearer_key() {
    let env = TestEnv::new("stripe_guard").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (_, key) = api.merchant("StripeGuard").await;
    let client = reqwest::Client::new();
    let post = |path: &str, authorization: String| {
        client
            .post(format!("{}{path}", node.base))
            .header("authorization", authorization)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=500&currency=eur")
    };
    let basic = {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("operator:{ADMIN_TOKEN}"));
        format!("Basic {encoded}")
    };
    let cases = [
        ("/v1/payment_intents", format!("Bearer {key}"), 200),
        ("/v1/payments", format!("Bearer {key}"), 415),
        ("/v1/settlements/run", format!("Bearer {ADMIN_TOKEN}"), 415),
        ("/v1/payment_intents", basic, 401),
    ];
    for (path, authorization, expected) in cases {
        let response = post(path, authorization.clone())
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let request_id = response.headers().get("request-id").cloned();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{path} {}: {body}", &authorization[..6]);
        if expected == 200 {
            assert_eq!(body["object"], "payment_intent", "{body}");
            assert_eq!(body["status"], "requires_payment_method", "{body}");
            assert!(request_id.is_some(), "no Request-Id header");
        }
    }
    let missing = client
        .get(format!("{}/v1/payment_intents/pay_nope", node.base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status().as_u16(), 404);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["param"], "intent", "{body}");
}

/// In a cluster, an SDK pointed at a node that does not own the merchant's partition is
/// served by the owner: the Stripe routes are forwarded like the native ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_is_served_through_a_node_that_does_not_own_the_merchant() {
    let _one = common::cluster::ONE_CLUSTER_AT_A_TIME.lock().await;
    let env = TestEnv::new("stripe_cluster").await;
    // Webhooks to no one: the outcomes the tests need are the processor's synchronous ones.
    let sandbox = SandboxProcess::start(&env, free_port(), &[]);
    let extra = sandbox.node_env();
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cluster = common::cluster::TwoNodes::start(&env, &extra).await;
    // Node a (index 0) does not own the merchant's partition; node b does.
    assert_eq!(cluster.owners[&cluster.partition].0, 1);
    for scenario in ["create_and_confirm", "partial_capture", "refund"] {
        let evidence = run(&PYTHON, &cluster.nodes[0].base, &cluster.key, scenario)
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        let ids = ids(&evidence);
        assert!(!ids.is_empty(), "{scenario}: {evidence}");
        for id in ids {
            let on_owner = cluster.apis[1].get_payment(&cluster.key, &id).await;
            assert_eq!(on_owner.status, 200, "{scenario}: {id} on its owner");
            assert_eq!(
                on_owner.body["status"], "succeeded",
                "{scenario}: {}",
                on_owner.body
            );
        }
    }
    drop(sandbox);
}

/// One webhook as the merchant's endpoint received it.
#[derive(Clone)]
struct Received {
    payload: String,
    stripe_signature: Option<String>,
    payrail_signature: Option<String>,
}

/// A merchant's webhook endpoint on loopback that records what it is sent and answers 200.
fn start_endpoint() -> (String, Arc<Mutex<Vec<Received>>>) {
    use warp::Filter;
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = received.clone();
    let route = warp::path!("hook")
        .and(warp::post())
        .and(warp::header::optional::<String>("stripe-signature"))
        .and(warp::header::optional::<String>("payrail-signature"))
        .and(warp::body::bytes())
        .map(
            move |stripe: Option<String>,
                  payrail: Option<String>,
                  body: warp::hyper::body::Bytes| {
                sink.lock().expect("endpoint lock").push(Received {
                    payload: String::from_utf8_lossy(&body).into_owned(),
                    stripe_signature: stripe,
                    payrail_signature: payrail,
                });
                "ok"
            },
        );
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    (format!("http://{addr}/hook"), received)
}

fn event_types_of(received: &[Received], payment_id: &str) -> Vec<String> {
    received
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.payload).ok())
        .filter(|e| {
            let object = &e["data"]["object"];
            object["id"] == payment_id || object["payment_intent"] == payment_id
        })
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .collect()
}

/// A merchant created with `"webhook_api": "stripe"` receives Stripe event objects, in order
/// per payment, signed in a `Stripe-Signature` header that each official SDK's own verifier
/// (`stripe.Webhook.construct_event`, `stripe.webhooks.constructEvent`) accepts with the
/// merchant's webhook secret, and refuses once the body is altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_format_webhooks_are_verified_by_each_sdks_own_construct_event() {
    let env = TestEnv::new("stripe_webhooks").await;
    let (node, sandbox) = node_with_sandbox(&env).await;
    let api = Api::new(&node);
    let (url, received) = start_endpoint();
    let created = api
        .send(
            reqwest::Method::POST,
            "/v1/merchants",
            Some(ADMIN_TOKEN),
            None,
            Some(
                json!({"name": "StripeHooks", "webhook_url": url, "webhook_api": "stripe"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["webhook_api"], "stripe", "{}", created.body);
    let key = created.body["api_key"]
        .as_str()
        .expect("api_key")
        .to_string();
    let secret = created.body["webhook_secret"]
        .as_str()
        .expect("webhook_secret")
        .to_string();

    let refunded = run(&PYTHON, &node.base, &key, "refund")
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    let captured = run(&PYTHON, &node.base, &key, "partial_capture")
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    let (refunded, captured) = (ids(&refunded)[0].clone(), ids(&captured)[0].clone());

    let expected_refunded = [
        "payment_intent.created",
        "payment_intent.succeeded",
        "refund.created",
        "refund.updated",
    ];
    let expected_captured = [
        "payment_intent.created",
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
    ];
    let subsequence = |types: &[String], expected: &[&str]| {
        let mut wanted = expected.iter().peekable();
        for t in types {
            if wanted.peek() == Some(&&t.as_str()) {
                wanted.next();
            }
        }
        wanted.peek().is_none()
    };
    let all = eventually(Duration::from_secs(30), || {
        let received = received.lock().expect("endpoint lock").clone();
        let done = subsequence(&event_types_of(&received, &refunded), &expected_refunded)
            && subsequence(&event_types_of(&received, &captured), &expected_captured);
        async move { done.then_some(received) }
    })
    .await
    .unwrap_or_else(|| {
        let received = received.lock().expect("endpoint lock").clone();
        panic!(
            "in order per payment: {:?} / {:?}; node log:\n{}",
            event_types_of(&received, &refunded),
            event_types_of(&received, &captured),
            node.log_tail()
        )
    });
    assert!(
        all.iter()
            .all(|r| r.stripe_signature.is_some() && r.payrail_signature.is_none()),
        "every webhook is signed in Stripe-Signature only"
    );

    let hits: Vec<Value> = all
        .iter()
        .map(|r| json!({"payload": r.payload, "signature": r.stripe_signature}))
        .collect();
    let file = env.dir.join("stripe-webhooks.json");
    std::fs::write(&file, serde_json::to_vec(&hits).expect("hits")).expect("write hits");
    let file = file.to_string_lossy().into_owned();
    let sent: Vec<Value> = all
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.payload).expect("a JSON body")["type"].clone())
        .collect();
    for sdk in [&PYTHON, &NODE] {
        let evidence = run_with(
            sdk,
            &node.base,
            &secret,
            "verify_webhooks",
            &[("PAYRAIL_WEBHOOKS_FILE", &file)],
        )
        .await
        .unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(
            evidence["types"],
            Value::Array(sent.clone()),
            "{}: {evidence}",
            sdk.name
        );
        assert_eq!(
            evidence["tampered_refused"], true,
            "{}: {evidence}",
            sdk.name
        );
    }
    drop(sandbox);
}
