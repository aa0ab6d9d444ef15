//! API key roll (issue 23): `POST /v1/merchants/{id}/roll_api_key` gives a merchant a new
//! key; the old one works until its expiry (`expire_old_in_s`, default 0: refused at once)
//! and is then refused on every node within 2 s — against a real node and the real
//! PostgreSQL, and, for "every node" and "PostgreSQL unreachable", against registries (each
//! a node's key cache) sharing one database.

mod common;

use common::*;
use payrail_actors::merchants::{MerchantRegistry, MAX_ROLLED_KEY_GRACE};
use std::time::{Duration, Instant};

/// How long after its expiry an old key may still be accepted, on any node.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

async fn roll(api: &Api, merchant_id: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    api.send(
        reqwest::Method::POST,
        &format!("/v1/merchants/{merchant_id}/roll_api_key"),
        token,
        None,
        body.map(str::to_string),
    )
    .await
}

/// A merchant-authenticated read: 200 with a working key, 401 with a refused one.
async fn list_status(api: &Api, key: &str) -> u16 {
    api.send(reqwest::Method::GET, "/v1/payments", Some(key), None, None)
        .await
        .status
}

async fn rolled_rows(env: &TestEnv, merchant_id: &str) -> i64 {
    let pool = env.pool().await;
    let rows = sqlx::query_scalar("SELECT count(*) FROM rolled_api_keys WHERE merchant_id = $1")
        .bind(merchant_id)
        .fetch_one(&pool)
        .await
        .expect("count rolled keys");
    pool.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_key_is_new_shown_once_and_works() {
    let env = TestEnv::new("key_roll_new").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, old_key) = api.merchant("Roller").await;
    let rolled = roll(&api, &merchant_id, Some(ADMIN_TOKEN), None).await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    let new_key = rolled.body["api_key"]
        .as_str()
        .expect("api_key")
        .to_string();
    assert!(
        new_key.starts_with("sk_test_") && new_key != old_key,
        "{new_key}"
    );
    assert_eq!(rolled.body["merchant_id"], merchant_id.as_str());
    assert_eq!(
        rolled.body["previous_key_last4"],
        &old_key[old_key.len() - 4..]
    );
    let created = api
        .create_payment(&new_key, None, r#"{"amount":1000,"currency":"eur"}"#)
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["merchant_id"], merchant_id.as_str());
    // Stored hashed: the new key appears nowhere in the database's merchants row.
    let pool = env.pool().await;
    let stored: String = sqlx::query_scalar(
        "SELECT id || name || api_key_hash || api_key_last4 FROM merchants WHERE id = $1",
    )
    .bind(&merchant_id)
    .fetch_one(&pool)
    .await
    .expect("merchant row");
    assert!(!stored.contains(&new_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_key_works_until_its_expiry_and_is_refused_within_2_s_after() {
    let env = TestEnv::new("key_roll_grace").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, old_key) = api.merchant("Graceful").await;
    assert_eq!(list_status(&api, &old_key).await, 200);
    let rolled = roll(
        &api,
        &merchant_id,
        Some(ADMIN_TOKEN),
        Some(r#"{"expire_old_in_s":3}"#),
    )
    .await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    let rolled_at = Instant::now();
    let new_key = rolled.body["api_key"]
        .as_str()
        .expect("api_key")
        .to_string();
    let expires_at = rolled.body["previous_key_expires_at"]
        .as_i64()
        .expect("previous_key_expires_at");
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now + 2..=now + 3).contains(&expires_at),
        "{expires_at} vs now {now}"
    );
    // Both keys work during the grace period (to 2 s of its 3).
    while rolled_at.elapsed() < Duration::from_secs(2) {
        assert_eq!(list_status(&api, &old_key).await, 200, "old key in grace");
        assert_eq!(list_status(&api, &new_key).await, 200, "new key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refused within 2 s of the expiry, and from then on.
    let refused = eventually(Duration::from_secs(3) + REFUSED_WITHIN, || async {
        (list_status(&api, &old_key).await == 401).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "old key still accepted {:?} after the roll (grace 3 s)",
        rolled_at.elapsed()
    );
    assert!(rolled_at.elapsed() <= Duration::from_secs(3) + REFUSED_WITHIN);
    for _ in 0..5 {
        assert_eq!(list_status(&api, &old_key).await, 401);
    }
    assert_eq!(list_status(&api, &new_key).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_old_key_is_refused_at_once() {
    let env = TestEnv::new("key_roll_default").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, old_key) = api.merchant("Abrupt").await;
    // Known to the node's key cache just before the roll.
    assert_eq!(list_status(&api, &old_key).await, 200);
    let rolled = roll(&api, &merchant_id, Some(ADMIN_TOKEN), None).await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    let refused = api
        .send(
            reqwest::Method::GET,
            "/v1/payments",
            Some(&old_key),
            None,
            None,
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.body["error"]["type"], "authentication_error");
    let new_key = rolled.body["api_key"].as_str().expect("api_key");
    assert_eq!(list_status(&api, new_key).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_key_cannot_roll_a_key() {
    let env = TestEnv::new("key_roll_merchant").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("SelfRoller").await;
    for (token, body) in [
        (Some(key.as_str()), None),
        (Some(key.as_str()), Some(r#"{"expire_old_in_s":60}"#)),
        (None, None),
    ] {
        let refused = roll(&api, &merchant_id, token, body).await;
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(refused.body.get("api_key").is_none(), "{}", refused.body);
    }
    assert_eq!(list_status(&api, &key).await, 200, "the key is unchanged");
    assert_eq!(rolled_rows(&env, &merchant_id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_expire_old_in_s_is_refused_and_changes_nothing() {
    let env = TestEnv::new("key_roll_bad_input").await;
    let node = NodeProcess::start(&env, &[]).await;
    let api = Api::new(&node);
    let (merchant_id, key) = api.merchant("Careful").await;
    let too_long = format!(
        r#"{{"expire_old_in_s":{}}}"#,
        MAX_ROLLED_KEY_GRACE.as_secs() + 1
    );
    for body in [
        too_long.as_str(),
        r#"{"expire_old_in_s":-1}"#,
        r#"{"expire_old_in_s":1.5}"#,
        r#"{"expire_old_in_s":"60"}"#,
        r#"{"expire_old_in_s":18446744073709551616}"#,
        r#"{"expire_old":60}"#,
        r#"[60]"#,
        r#"{"expire_old_in_s":"#,
    ] {
        let refused = roll(&api, &merchant_id, Some(ADMIN_TOKEN), Some(body)).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert_eq!(
            refused.body["error"]["type"], "invalid_request_error",
            "{body}: {}",
            refused.body
        );
        assert!(refused.body.get("api_key").is_none(), "{}", refused.body);
    }
    let unknown = roll(&api, "mer_nobody", Some(ADMIN_TOKEN), None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(list_status(&api, &key).await, 200, "the key is unchanged");
    assert_eq!(rolled_rows(&env, &merchant_id).await, 0);
    // The bound itself is accepted.
    let longest = format!(
        r#"{{"expire_old_in_s":{}}}"#,
        MAX_ROLLED_KEY_GRACE.as_secs()
    );
    let rolled = roll(&api, &merchant_id, Some(ADMIN_TOKEN), Some(&longest)).await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_refuses_the_old_key_within_2_s_of_its_expiry() {
    let env = TestEnv::new("key_roll_other_node").await;
    let pool = env.migrated_pool().await;
    let rolling = MerchantRegistry::new(pool.clone());
    let other = MerchantRegistry::new(pool.clone());
    let merchant = rolling.create("Spread", None).await.expect("create");
    // The other node knows the key (from memory for the next second).
    assert_eq!(
        other.authenticate(&merchant.api_key).await.expect("known"),
        Some(merchant.id.clone())
    );
    let grace = Duration::from_secs(2);
    let rolled = rolling
        .roll_api_key(&merchant.id, grace)
        .await
        .expect("roll");
    let rolled_at = Instant::now();
    while rolled_at.elapsed() < grace - Duration::from_millis(300) {
        assert_eq!(
            other.authenticate(&merchant.api_key).await.expect("old"),
            Some(merchant.id.clone()),
            "refused before its expiry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = loop {
        if other
            .authenticate(&merchant.api_key)
            .await
            .expect("old")
            .is_none()
        {
            break rolled_at.elapsed();
        }
        assert!(
            rolled_at.elapsed() < grace + REFUSED_WITHIN + Duration::from_secs(1),
            "the other node still accepts the old key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused <= grace + REFUSED_WITHIN,
        "refused {refused:?} after the roll"
    );
    assert_eq!(
        other.authenticate(&rolled.api_key).await.expect("new"),
        Some(merchant.id.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_twice_keeps_each_old_key_to_its_own_expiry() {
    let env = TestEnv::new("key_roll_twice").await;
    let pool = env.migrated_pool().await;
    let registry = MerchantRegistry::new(pool.clone());
    let merchant = registry.create("Twice", None).await.expect("create");
    let first = registry
        .roll_api_key(&merchant.id, Duration::from_secs(3600))
        .await
        .expect("first roll");
    let second = registry
        .roll_api_key(&merchant.id, Duration::ZERO)
        .await
        .expect("second roll");
    // The original key keeps its hour; the first rolled key was refused at once.
    assert_eq!(
        registry.authenticate(&merchant.api_key).await.expect("a"),
        Some(merchant.id.clone())
    );
    assert_eq!(
        registry.authenticate(&first.api_key).await.expect("b"),
        None
    );
    assert_eq!(
        registry.authenticate(&second.api_key).await.expect("c"),
        Some(merchant.id.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_old_key_is_not_served_from_memory_while_postgresql_is_unreachable() {
    let env = TestEnv::new("key_roll_pg_down").await;
    let pool = env.migrated_pool().await;
    let registry = MerchantRegistry::new(pool.clone());
    let merchant = registry.create("Offline", None).await.expect("create");
    let grace = Duration::from_secs(2);
    registry
        .roll_api_key(&merchant.id, grace)
        .await
        .expect("roll");
    let rolled_at = Instant::now();
    // Read once after the roll: the node now knows the key's expiry.
    assert_eq!(
        registry.authenticate(&merchant.api_key).await.expect("old"),
        Some(merchant.id.clone())
    );
    pool.close().await;
    // Within its grace and past the 1 s re-read, it is served from memory...
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(rolled_at.elapsed() < grace);
    assert_eq!(
        registry
            .authenticate(&merchant.api_key)
            .await
            .expect("served from memory"),
        Some(merchant.id.clone())
    );
    // ...and past its expiry it is not, PostgreSQL or not.
    tokio::time::sleep(grace.saturating_sub(rolled_at.elapsed()) + Duration::from_millis(100))
        .await;
    let after = registry.authenticate(&merchant.api_key).await;
    assert!(
        !matches!(after, Ok(Some(_))),
        "an expired key was served from memory: {after:?}"
    );
}
