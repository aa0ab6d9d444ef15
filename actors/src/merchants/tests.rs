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
