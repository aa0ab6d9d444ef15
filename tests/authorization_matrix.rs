//! The authorization matrix, generated from the route list: every documented route
//! (`payrail_http::openapi::routes()`, with the security scheme the document gives it) ×
//! every kind of credential, against a real node. Protected routes refuse all but their own
//! credential with 401 and an `authentication_error`; merchant B never reads merchant A's
//! objects (404) nor sees A's ids or amounts in any answer.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;

const CLUSTER_SECRET: &str = "authz-matrix-cluster-secret-0123456789";

/// The credentials of one matrix column: an `Authorization` header value (or none), and for
/// the PSP and cluster schemes their own header.
#[derive(Clone)]
struct Credential {
    name: &'static str,
    authorization: Option<String>,
    /// (header, value) sent instead of / besides `Authorization`.
    other: Option<(&'static str, String)>,
    /// Sign the body with the PSP webhook secret.
    psp_signed: bool,
}

impl Credential {
    fn auth(name: &'static str, value: Option<String>) -> Self {
        Self {
            name,
            authorization: value,
            other: None,
            psp_signed: false,
        }
    }
}

/// What a cell must answer.
#[derive(Debug, PartialEq)]
enum Expect {
    /// 401 with an `authentication_error` object.
    Refused,
    /// Authenticated: any answer but 401 (and no 5xx).
    Admitted,
    /// Another merchant's object: 404 and none of A's data.
    NotFound,
}

fn scheme_of(document: &Value, method: &str, template: &str) -> Option<String> {
    let operation = &document["paths"][template][method.to_ascii_lowercase()];
    let security = operation["security"].as_array()?;
    security
        .iter()
        .filter_map(|s| s.as_object()?.keys().next().cloned())
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_credential_as_its_scheme_says() {
    let env = TestEnv::new("authz").await;
    let port = free_port();
    let sandbox = SandboxProcess::start(&env, port, &[]);
    let mut extra: Vec<(String, String)> = sandbox.node_env();
    extra.push(("PAYRAIL__CLUSTER__SECRET".into(), CLUSTER_SECRET.into()));
    // Three columns are unknown keys, one per route: past the default 60 a minute per
    // address they would get 429 instead of the 401 each cell checks.
    extra.push((
        "PAYRAIL__HTTP__FAILED_AUTH_PER_MINUTE".into(),
        "100000".into(),
    ));
    // A's webhooks go to a closed port: dead after two attempts, so A has a notification.
    extra.push((
        "PAYRAIL__NOTIFICATION__RETRY_SCHEDULE_MS".into(),
        "[100]".into(),
    ));
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = NodeProcess::start_on(&env, port, &extra).await;
    let api = Api::new(&node);
    let a = api
        .send(
            reqwest::Method::POST,
            "/v1/merchants",
            Some(ADMIN_TOKEN),
            None,
            Some(format!(
                r#"{{"name":"MatrixA","webhook_url":"http://127.0.0.1:{}/hooks"}}"#,
                free_port()
            )),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let merchant_a = a.body["id"].as_str().unwrap().to_string();
    let key_a = a.body["api_key"].as_str().unwrap().to_string();
    let (merchant_b, key_b) = api.merchant("MatrixB").await;
    // The merchant whose key the admin rolls (A's and B's keys must keep working).
    let (merchant_c, _) = api.merchant("MatrixC").await;

    // A's objects, with amounts that appear nowhere else.
    let a_amounts = [918_273_i64, 827_364];
    let created = api
        .create_payment(
            &key_a,
            None,
            &format!(r#"{{"amount":{},"currency":"eur"}}"#, a_amounts[0]),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let a_open = created.body["id"].as_str().unwrap().to_string();
    let created = api
        .create_payment(
            &key_a,
            None,
            &format!(r#"{{"amount":{},"currency":"eur"}}"#, a_amounts[1]),
        )
        .await;
    let a_paid = created.body["id"].as_str().unwrap().to_string();
    let confirmed = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/payments/{a_paid}/confirm"),
            Some(&key_a),
            None,
            Some(r#"{"payment_method":"pm_card_visa"}"#.into()),
        )
        .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    // A refund of A's (native, so found through the read model by the Stripe route).
    let a_refund = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/payments/{a_paid}/refunds"),
            Some(&key_a),
            None,
            Some(r#"{"amount":1}"#.into()),
        )
        .await;
    assert_eq!(a_refund.status, 201, "{}", a_refund.body);
    let a_refund = a_refund.body["id"].as_str().unwrap().to_string();
    let b_payment = api
        .create_payment(&key_b, None, r#"{"amount":4321,"currency":"eur"}"#)
        .await;
    assert_eq!(b_payment.status, 201);
    // A's ledger entries and a dead notification of A's.
    let a_notification = eventually(std::time::Duration::from_secs(30), || async {
        let entries = api
            .send(
                reqwest::Method::GET,
                &format!("/v1/ledger/entries?payment_id={a_paid}"),
                Some(&key_a),
                None,
                None,
            )
            .await;
        let listed = api
            .send(
                reqwest::Method::GET,
                &format!("/v1/notifications?payment_id={a_paid}"),
                Some(&key_a),
                None,
                None,
            )
            .await;
        let has_entries = entries.status == 200 && entries.body["data"].as_array()?.len() >= 2;
        let dead = listed.body["data"]
            .as_array()?
            .iter()
            .find(|n| n["status"] == "dead")?;
        has_entries.then(|| dead["id"].as_str().unwrap().to_string())
    })
    .await
    .expect("A's ledger entries and a dead notification");

    let unknown_key = format!("sk_test_{}", "0f".repeat(16));
    assert_ne!(unknown_key, key_a);
    let credentials = vec![
        Credential::auth("none", None),
        Credential::auth("malformed: Bearer", Some("Bearer".into())),
        Credential::auth("malformed: Bearer <blank>", Some("Bearer    ".into())),
        Credential::auth("malformed: Basic !!!", Some("Basic !!!".into())),
        Credential::auth("malformed: garbage", Some("garbage".into())),
        Credential::auth(
            "malformed: key without scheme",
            Some(key_a.clone()), // A's real key, but not as a Bearer token
        ),
        Credential::auth("wrong key", Some(format!("Bearer {unknown_key}"))),
        Credential::auth("another merchant's key", Some(format!("Bearer {key_b}"))),
        Credential::auth("merchant's own key", Some(format!("Bearer {key_a}"))),
        Credential::auth("admin token", Some(format!("Bearer {ADMIN_TOKEN}"))),
        Credential::auth("wrong admin token", Some(format!("Bearer {ADMIN_TOKEN}x"))),
        Credential {
            name: "psp signature",
            authorization: None,
            other: None,
            psp_signed: true,
        },
        Credential {
            name: "cluster secret",
            authorization: None,
            other: Some((
                payrail_actors::fallback::CLUSTER_SECRET_HEADER,
                CLUSTER_SECRET.into(),
            )),
            psp_signed: false,
        },
    ];

    let document: Value =
        serde_json::from_str(payrail_http::openapi::document()).expect("document");
    let routes = payrail_http::openapi::routes();
    assert!(routes.len() >= 25, "{routes:?}");
    let client = reqwest::Client::new();
    let mut cells: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut cross_merchant_reads = 0;
    let today = today();
    for (method, template) in routes {
        let scheme = scheme_of(&document, method, template);
        // A's objects in the path and the query.
        let path = match template.as_str() {
            "/v1/payments/{id}/refunds" | "/v1/payments/{id}/capture" => {
                template.replace("{id}", &a_paid)
            }
            t if t.starts_with("/v1/payments/{id}") => t.replace("{id}", &a_open),
            "/v1/payment_intents/{id}/capture" => template.replace("{id}", &a_paid),
            t if t.starts_with("/v1/payment_intents/{id}") => t.replace("{id}", &a_open),
            "/v1/refunds/{id}" => template.replace("{id}", &a_refund),
            "/v1/notifications/{id}/resend" => template.replace("{id}", &a_notification),
            "/v1/settlements/{id}/pay" => template.replace("{id}", "stl_unknown"),
            "/v1/merchants/{id}/roll_api_key" => template.replace("{id}", &merchant_c),
            "/webhooks/psp/{channel}" => template.replace("{channel}", "sandbox"),
            "/v1/ledger/entries" => format!("{template}?payment_id={a_paid}"),
            "/v1/notifications" => format!("{template}?payment_id={a_paid}"),
            t if t.starts_with("/v1/analytics/") => format!("{t}?date={today}"),
            t => t.to_string(),
        };
        // A's objects named by id: B must get 404 there. (`/v1/notifications?payment_id=`
        // is a filter of B's own notifications: an empty list, checked for leaks below.)
        let a_object = template != "/v1/notifications"
            && (path.contains(&a_open)
                || path.contains(&a_paid)
                || path.contains(&a_notification)
                || path.contains(&a_refund));
        // The Stripe-compatible routes take forms (issue 26): valid ones, so that only the
        // credential decides; the refund names A's payment in its body.
        let stripe_form =
            template.starts_with("/v1/payment_intents") || template.starts_with("/v1/refunds");
        let body = match template.as_str() {
            "/webhooks/psp/{channel}" => {
                r#"{"id":"evt_matrix","type":"charge.noop","data":{"object":{}}}"#.to_string()
            }
            // Valid, so that only the credential decides between 404 and an answer.
            "/v1/payments/{id}/confirm" => r#"{"payment_method":"pm_card_visa"}"#.to_string(),
            "/v1/payment_intents" => "amount=100&currency=eur".to_string(),
            "/v1/payment_intents/{id}/confirm" => "payment_method=pm_card_visa".to_string(),
            "/v1/refunds" => format!("payment_intent={a_paid}&amount=1"),
            _ if stripe_form => String::new(),
            _ => "{}".to_string(),
        };
        for credential in &credentials {
            let expect = match (scheme.as_deref(), credential.name) {
                (None, _) => Expect::Admitted,
                (Some("merchant_api_key"), "merchant's own key") => Expect::Admitted,
                (Some("merchant_api_key"), "another merchant's key") if a_object => {
                    Expect::NotFound
                }
                (Some("merchant_api_key"), "another merchant's key") => Expect::Admitted,
                (Some("admin_token"), "admin token") => Expect::Admitted,
                (Some("psp_signature"), "psp signature") => Expect::Admitted,
                (Some("cluster_secret"), "cluster secret") => Expect::Admitted,
                (Some(_), _) => Expect::Refused,
            };
            let mut request = client.request(
                method.parse().expect("method"),
                format!("{}{}", node.base, path),
            );
            if let Some(value) = &credential.authorization {
                request = request.header("Authorization", value);
            }
            if let Some((name, value)) = &credential.other {
                request = request.header(*name, value);
            }
            if credential.psp_signed {
                let t = chrono::Utc::now().timestamp();
                request = request.header(
                    "Stripe-Signature",
                    payrail_actors::signature::header(WEBHOOK_SECRET, t, body.as_bytes()),
                );
            }
            if method == "POST" {
                let content_type = if stripe_form {
                    "application/x-www-form-urlencoded"
                } else {
                    "application/json"
                };
                request = request
                    .header("content-type", content_type)
                    .body(body.clone());
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let ok = match expect {
                Expect::Refused => status == 401 && json["error"]["type"] == "authentication_error",
                Expect::Admitted => status != 401 && status < 500,
                Expect::NotFound => status == 404,
            };
            if credential.name == "another merchant's key" {
                let leaked = text.contains(&a_open)
                    || text.contains(&a_paid)
                    || text.contains(&a_refund)
                    || text.contains(&a_notification)
                    || text.contains(&merchant_a)
                    || a_amounts.iter().any(|a| text.contains(&a.to_string()));
                if leaked {
                    cross_merchant_reads += 1;
                    failures.push(format!(
                        "{method} {path} with B's key shows A's data: {text}"
                    ));
                }
            }
            *cells.entry(format!("{:?}", expect)).or_default() += 1;
            if !ok {
                failures.push(format!(
                    "{method} {template} [{}] with {}: expected {expect:?}, got {status} {text}",
                    scheme.as_deref().unwrap_or("public"),
                    credential.name
                ));
            }
        }
    }
    let total: usize = cells.values().sum();
    println!(
        "authorization matrix: {} routes x {} credentials = {total} cells {cells:?}; {} unexpected; {cross_merchant_reads} cross-merchant reads",
        routes.len(),
        credentials.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cross_merchant_reads, 0);
    assert_eq!(total, routes.len() * credentials.len());
    // B's own data is there where B may read: the refusals above are not blanket 404s.
    let own = api
        .get_payment(&key_b, b_payment.body["id"].as_str().unwrap())
        .await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body["merchant_id"], merchant_b.as_str());
    drop(sandbox);
}
