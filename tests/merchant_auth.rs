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
