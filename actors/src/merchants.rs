//! Merchant registry: creation, API keys (stored as SHA-256 hashes) and authentication.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// Entries kept in the authentication cache at most; the cache is cleared when full.
const AUTH_CACHE_MAX: usize = 100_000;
/// Unknown keys remembered at most, and for how long. A client retrying with a wrong key
/// then costs a hash and a map lookup instead of a PostgreSQL query per request. Safe to
/// cache: a key is 256 random bits, so nobody presents it before the merchant exists.
const AUTH_MISSES_MAX: usize = 10_000;
const AUTH_MISS_TTL: Duration = Duration::from_secs(10);

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Serialize)]
pub struct CreatedMerchant {
    pub id: String,
    pub object: &'static str,
    pub name: String,
    /// Shown once, never stored.
    pub api_key: String,
    pub webhook_url: Option<String>,
    /// Key of the `Payrail-Signature` HMAC on webhooks. Shown once; stored as is, because
    /// the node signs with it.
    pub webhook_secret: String,
}

/// Redacts the API key and the webhook secret, so a stray `{:?}` cannot log them.
impl std::fmt::Debug for CreatedMerchant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedMerchant")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("api_key", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &"<redacted>")
            .finish()
    }
}

/// A new webhook signing secret: `whsec_` + 256 random bits in hex.
pub fn new_webhook_secret() -> String {
    format!("whsec_{}", random_hex(32))
}

#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Cheap, cloneable handle to the merchant registry.
#[derive(Clone)]
pub struct MerchantRegistry {
    pool: PgPool,
    cache: Arc<RwLock<HashMap<String, String>>>,
    /// Hashes of keys no merchant has, with when they were looked up (negative cache).
    misses: Arc<RwLock<HashMap<String, Instant>>>,
}

/// SHA-256 (hex) of an API key. Keys carry 256 random bits, so a fast hash is enough: there
/// is nothing to brute-force that a slow hash would protect.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl MerchantRegistry {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Arc::new(RwLock::new(HashMap::new())),
            misses: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    pub async fn create(
        &self,
        name: &str,
        webhook_url: Option<&str>,
    ) -> Result<CreatedMerchant, MerchantError> {
        let id = format!("mer_{}", uuid::Uuid::now_v7().simple());
        let api_key = format!("sk_test_{}", random_hex(32));
        let last4 = api_key[api_key.len() - 4..].to_string();
        let webhook_secret = new_webhook_secret();
        sqlx::query(
            "INSERT INTO merchants (id, name, api_key_hash, api_key_last4, webhook_url, webhook_secret)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(hash_api_key(&api_key))
        .bind(&last4)
        .bind(webhook_url)
        .bind(&webhook_secret)
        .execute(&self.pool)
        .await?;
        Ok(CreatedMerchant {
            id,
            object: "merchant",
            name: name.to_string(),
            api_key,
            webhook_url: webhook_url.map(str::to_string),
            webhook_secret,
        })
    }

    /// The merchant id an API key belongs to, if any.
    pub async fn authenticate(&self, api_key: &str) -> Result<Option<String>, MerchantError> {
        let hash = hash_api_key(api_key);
        if let Some(id) = self.cache.read().await.get(&hash) {
            return Ok(Some(id.clone()));
        }
        if self
            .misses
            .read()
            .await
            .get(&hash)
            .is_some_and(|at| at.elapsed() < AUTH_MISS_TTL)
        {
            return Ok(None);
        }
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM merchants WHERE api_key_hash = $1")
                .bind(&hash)
                .fetch_optional(&self.pool)
                .await?;
        match &id {
            Some(id) => {
                let mut cache = self.cache.write().await;
                if cache.len() >= AUTH_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hash, id.clone());
            }
            None => {
                let mut misses = self.misses.write().await;
                if misses.len() >= AUTH_MISSES_MAX {
                    misses.retain(|_, at| at.elapsed() < AUTH_MISS_TTL);
                    if misses.len() >= AUTH_MISSES_MAX {
                        misses.clear();
                    }
                }
                misses.insert(hash, Instant::now());
            }
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
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
            webhook_secret: a.clone(),
        };
        let debug = format!("{m:?}");
        assert!(
            !debug.contains(&a) && !debug.contains("sk_test_secret"),
            "{debug}"
        );
    }
}
