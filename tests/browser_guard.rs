//! A page elsewhere cannot make an operator's browser run a state-changing admin route with
//! the dashboard's Basic credentials (issue 23): the cross-site "simple" requests a browser
//! sends without a preflight — form posts (urlencoded, text/plain, multipart) with an empty
//! body, or any request carrying a foreign `Origin` / `Sec-Fetch-Site: cross-site` — are
//! refused before routing, against a real node, and the settlement they aimed at does not
//! happen. The same request from the node's own origin runs it.

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn basic() -> String {
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{ADMIN_TOKEN}"));
    format!("Basic {credentials}")
}

/// (case, headers sent, expected status).
type Attack = (&'static str, Vec<(&'static str, &'static str)>, u16);

async fn settlements(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM settlements")
        .fetch_one(pool)
        .await
        .expect("settlements")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_post_runs_no_settlement_and_a_same_origin_one_does() {
    let env = TestEnv::new("browser_guard").await;
    let (node, sandbox) = node_with_sandbox(&env).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("BrowserGuard").await;

    // A captured payment, so that a settlement run has something to settle.
    let created = api
        .create_payment(&key, None, r#"{"amount":2500,"currency":"eur"}"#)
        .await;
    let id = created.body["id"].as_str().expect("id").to_string();
    let confirmed = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/payments/{id}/confirm"),
            Some(&key),
            None,
            Some(r#"{"payment_method":"pm_card_visa"}"#.into()),
        )
        .await;
    assert_eq!(confirmed.body["status"], "succeeded", "{}", confirmed.body);
    let pool = env.pool().await;
    let item = eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        let merchant_id = merchant_id.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM settlement_items WHERE merchant_id = $1")
                    .bind(&merchant_id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n > 0).then_some(n)
        }
    })
    .await;
    assert!(item.is_some(), "the settlement pool never took the capture");

    let client = reqwest::Client::new();
    let url = format!("{}/v1/settlements/run", node.base);
    let attacks: Vec<Attack> = vec![
        (
            "urlencoded form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            415,
        ),
        (
            "text/plain form",
            vec![("content-type", "text/plain;charset=UTF-8")],
            415,
        ),
        (
            "multipart form",
            vec![("content-type", "multipart/form-data; boundary=----x")],
            415,
        ),
        (
            "foreign origin, JSON",
            vec![
                ("content-type", "application/json"),
                ("origin", "https://evil.example"),
            ],
            403,
        ),
        ("null origin", vec![("origin", "null")], 403),
        (
            "cross-site fetch",
            vec![("sec-fetch-site", "cross-site")],
            403,
        ),
    ];
    for (case, headers, expected) in &attacks {
        let mut request = client.post(&url).header("authorization", basic());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, *expected, "{case}: {body}");
        assert!(
            body["error"]["code"].is_string(),
            "{case}: an error object, got {body}"
        );
    }
    // The notification resend and settlement pay routes take no body: guarded all the same.
    for path in [
        "/v1/settlements/stl_x/pay",
        "/v1/notifications/ntf_x/resend",
    ] {
        let response = client
            .post(format!("{}{path}", node.base))
            .header("authorization", basic())
            .header("content-type", "text/plain")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 415, "{path}");
    }
    assert_eq!(
        settlements(&pool).await,
        0,
        "no refused request ran a settlement"
    );

    // From the node's own origin (what the dashboard sends), the run happens.
    let response = client
        .post(&url)
        .header("authorization", basic())
        .header("origin", node.base.as_str())
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{body}");
    assert_eq!(settlements(&pool).await, 1, "{body}");
    drop(sandbox);
}
