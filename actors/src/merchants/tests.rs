use super::*;

#[test]
fn api_key_hash_is_stable_hex_sha256() {
    assert_eq!(
        hash_api_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn webhook_secrets_are_random_and_redacted_in_debug() {
    let a = new_webhook_secret();
    assert!(a.starts_with("whsec_") && a.len() == 6 + 64, "{a}");
    assert_ne!(a, new_webhook_secret());
    let m = CreatedMerchant {
        id: "mer_1".into(),
        object: "merchant",
        name: "n".into(),
        api_key: "sk_test_secret".into(),
        webhook_url: None,
        webhook_api: WebhookApi::Payrail,
        webhook_secret: a.clone(),
    };
    let debug = format!("{m:?}");
    assert!(
        !debug.contains(&a) && !debug.contains("sk_test_secret"),
        "{debug}"
    );
}

#[test]
fn a_full_cache_forgets_its_oldest_entry_only() {
    let mut recent: Recent<u32, ()> = Recent::new(3, Duration::from_secs(60));
    for key in 0..3 {
        recent.put(key, ());
    }
    recent.put(3, ());
    assert_eq!(recent.len(), 3);
    assert!(recent.get(&0).is_none(), "the oldest went");
    for key in 1..=3 {
        assert!(recent.get(&key).is_some(), "{key} stayed");
    }
}

#[test]
fn a_flood_of_new_keys_keeps_the_cache_at_its_bound() {
    let mut recent: Recent<u64, ()> = Recent::new(100, Duration::from_secs(60));
    for key in 0..10_000 {
        recent.put(key, ());
        assert!(recent.len() <= 100);
    }
    assert_eq!(recent.len(), 100);
    assert!(recent.get(&9_999).is_some() && recent.get(&9_900).is_some());
    assert!(recent.order.len() <= 200, "{}", recent.order.len());
}

#[test]
fn an_entry_put_again_is_not_evicted_by_its_stale_place() {
    let mut recent: Recent<u32, u32> = Recent::new(2, Duration::from_secs(60));
    recent.put(1, 10);
    recent.put(2, 20);
    recent.put(1, 11); // 1 is now the newest
    recent.put(3, 30); // 2 goes, not 1
    assert_eq!(recent.get(&1), Some(&11));
    assert!(recent.get(&2).is_none());
    assert_eq!(recent.get(&3), Some(&30));
}

#[test]
fn entries_expire_after_their_ttl() {
    let mut recent: Recent<u32, ()> = Recent::new(2, Duration::from_millis(0));
    recent.put(1, ());
    assert!(recent.get(&1).is_none());
}
