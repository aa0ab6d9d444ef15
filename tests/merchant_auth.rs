//! API-key authentication against the real PostgreSQL: a known key is answered from memory
//! after its first lookup, and so is an unknown one (negative cache), so a client retrying
//! with a wrong key does not cost a query per request.

mod common;

use common::*;
use payrail_actors::merchants::MerchantRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_seen_once_is_refused_without_a_query() {
    let env = TestEnv::new("merchant_auth_unknown").await;
    let pool = env.migrated_pool().await;
    let registry = MerchantRegistry::new(pool.clone());
    let wrong = "sk_test_not_a_key_of_anybody";
    let first = registry.authenticate(wrong).await.expect("first lookup");
    assert_eq!(first, None);
    // With the database gone, only an answer from memory can succeed.
    pool.close().await;
    let again = registry.authenticate(wrong).await;
    assert!(
        matches!(again, Ok(None)),
        "the second lookup of an unknown key went to the database: {again:?}"
    );
    let other = registry.authenticate("sk_test_never_seen_before").await;
    assert!(
        other.is_err(),
        "a key never seen must be looked up (and fail on the closed pool): {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_key_authenticates_its_merchant_and_only_it() {
    let env = TestEnv::new("merchant_auth_known").await;
    let pool = env.migrated_pool().await;
    let registry = MerchantRegistry::new(pool.clone());
    let a = registry.create("A", None).await.expect("create A");
    let b = registry.create("B", None).await.expect("create B");
    assert_eq!(
        registry.authenticate(&a.api_key).await.expect("a"),
        Some(a.id.clone())
    );
    assert_eq!(
        registry.authenticate(&b.api_key).await.expect("b"),
        Some(b.id.clone())
    );
    pool.close().await;
    assert_eq!(
        registry
            .authenticate(&a.api_key)
            .await
            .expect("a, from memory"),
        Some(a.id)
    );
}

fn client(last: u8) -> Option<std::net::IpAddr> {
    Some(std::net::IpAddr::from([10, 0, 0, last]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_failed_authentication_budget_is_throttled_without_a_query() {
    use payrail_actors::merchants::{AuthLimits, AuthOutcome};
    let env = TestEnv::new("merchant_auth_throttle").await;
    let pool = env.migrated_pool().await;
    let registry = MerchantRegistry::with_limits(
        pool.clone(),
        AuthLimits {
            failed_per_minute: 5,
        },
    );
    let merchant = registry.create("Shared", None).await.expect("create");
    // The merchant's key, known before the flood, from the flooding address.
    assert_eq!(
        registry
            .authenticate_from(&merchant.api_key, client(1))
            .await
            .expect("known"),
        AuthOutcome::Merchant(merchant.id.clone())
    );
    for n in 0..5 {
        let outcome = registry
            .authenticate_from(&format!("sk_test_random_{n}"), client(1))
            .await
            .expect("lookup");
        assert_eq!(outcome, AuthOutcome::Unknown, "attempt {n}");
    }
    // The budget is spent: the next unknown key is not looked up (the pool is closed, so a
    // lookup would fail), and the answer says when to try again.
    pool.close().await;
    let throttled = registry
        .authenticate_from("sk_test_random_5", client(1))
        .await
        .expect("answered from memory");
    assert!(
        matches!(throttled, AuthOutcome::Throttled(wait) if wait.as_millis() > 0),
        "{throttled:?}"
    );
    // Another address has its own budget (its key is looked up: the closed pool fails it).
    assert!(registry
        .authenticate_from("sk_test_random_6", client(2))
        .await
        .is_err());
    // A key known lately is still served to the throttled address.
    assert_eq!(
        registry
            .authenticate_from(&merchant.api_key, client(1))
            .await
            .expect("from memory"),
        AuthOutcome::Merchant(merchant.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_keys_leaves_the_negative_cache_full_not_empty() {
    let env = TestEnv::new("merchant_auth_flood").await;
    let pool = env.migrated_pool().await;
    let registry = MerchantRegistry::new(pool.clone());
    let first = "sk_test_first_wrong_key";
    assert_eq!(registry.authenticate(first).await.expect("first"), None);
    // 10,000 is the bound: the next 9,999 distinct keys fill it without pushing `first` out.
    for n in 0..9_999 {
        registry
            .authenticate(&format!("sk_test_flood_{n}"))
            .await
            .expect("lookup");
    }
    assert_eq!(registry.unknown_keys_cached().await, 10_000);
    registry
        .authenticate("sk_test_flood_one_more")
        .await
        .expect("lookup");
    assert_eq!(
        registry.unknown_keys_cached().await,
        10_000,
        "full, one entry goes for the new one (the old cache emptied itself at 10k)"
    );
}
