//! Merchant registry: creation, API keys (stored as SHA-256 hashes) and authentication.

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
mod recent;
use recent::Recent;

/// Known keys kept in the authentication cache at most, and for how long. A key's merchant
/// is read again once its entry is older than `AUTH_HIT_FRESH`, so a key revoked on any
/// node stops working on every node within it; a key known within `AUTH_HIT_TTL` is
/// re-read even when its client has spent its failed-authentication budget (a merchant
/// sharing an address with a flood of wrong keys keeps working).
const AUTH_CACHE_MAX: usize = 100_000;
const AUTH_HIT_FRESH: Duration = Duration::from_secs(1);
const AUTH_HIT_TTL: Duration = Duration::from_secs(600);
/// Unknown keys remembered at most, and for how long. A client retrying with a wrong key
/// then costs a hash and a map lookup instead of a PostgreSQL query per request. Safe to
/// cache: a key is 256 random bits, so nobody presents it before the merchant exists. Full,
/// the oldest entry goes (one at a time: a flood of random keys cannot empty it).
const AUTH_MISSES_MAX: usize = 10_000;
const AUTH_MISS_TTL: Duration = Duration::from_secs(10);
/// Client addresses whose failed authentications are counted, at most (oldest forgotten).
const AUTH_CLIENTS_MAX: usize = 100_000;
/// The longest an old key may keep working after a roll (`expire_old_in_s`): 7 days.
pub const MAX_ROLLED_KEY_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many failed authentications a client address may make: a bucket of
/// `per_minute` tokens refilled continuously; empty, its unknown keys are refused with
/// [`AuthOutcome::Throttled`] before any lookup.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    pub failed_per_minute: u32,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            failed_per_minute: 60,
        }
    }
}

/// A client's failed-authentication bucket.
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// What an API key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// A merchant's key.
    Merchant(String),
    /// No merchant's key.
    Unknown,
    /// Not looked up: the client failed too often; it may try again after this long.
    Throttled(Duration),
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Serialize)]
pub struct CreatedMerchant {
    pub id: String,
    pub object: &'static str,
    pub name: String,
    /// Shown once, never stored.
    pub api_key: String,
    pub webhook_url: Option<String>,
    /// The webhooks' format: `payrail`, or `stripe` (Stripe event objects).
    pub webhook_api: WebhookApi,
    /// Key of the webhooks' HMAC (`Payrail-Signature`, or `Stripe-Signature` when
    /// `webhook_api` is `stripe`). Shown once; stored as is, because the node signs with it.
    pub webhook_secret: String,
}

/// The format of a merchant's webhooks, chosen at creation (`merchants.webhook_api`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookApi {
    /// payrail's event objects, signed in a `Payrail-Signature` header.
    #[default]
    Payrail,
    /// Stripe event objects (`payment_intent.succeeded`, …), signed in a `Stripe-Signature`
    /// header, for an integration that verifies with a Stripe SDK (issue 26).
    Stripe,
}

impl WebhookApi {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Payrail => "payrail",
            Self::Stripe => "stripe",
        }
    }
}

/// Redacts the API key and the webhook secret, so a stray `{:?}` cannot log them.
impl std::fmt::Debug for CreatedMerchant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedMerchant")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("api_key", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .field("webhook_api", &self.webhook_api)
            .field("webhook_secret", &"<redacted>")
            .finish()
    }
}

/// A new webhook signing secret: `whsec_` + 256 random bits in hex.
pub fn new_webhook_secret() -> String {
    format!("whsec_{}", random_hex(32))
}

/// A new API key, after a roll: `POST /v1/merchants/{id}/roll_api_key`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Serialize)]
pub struct RolledApiKey {
    pub object: &'static str,
    pub merchant_id: String,
    /// The new key. Shown once, never stored.
    pub api_key: String,
    /// The previous key's last 4 characters, to tell which key is going.
    pub previous_key_last4: String,
    /// Unix seconds from which the previous key is refused (the roll's own time when it
    /// was rolled with `expire_old_in_s` 0).
    pub previous_key_expires_at: i64,
}

/// Redacts the new key, so a stray `{:?}` cannot log it.
impl std::fmt::Debug for RolledApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolledApiKey")
            .field("merchant_id", &self.merchant_id)
            .field("api_key", &"<redacted>")
            .field("previous_key_last4", &self.previous_key_last4)
            .field("previous_key_expires_at", &self.previous_key_expires_at)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MerchantError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no merchant {0}")]
    UnknownMerchant(String),
    #[error("an old key may keep working at most {} s after a roll", MAX_ROLLED_KEY_GRACE.as_secs())]
    GraceTooLong,
}

/// A key the registry read from PostgreSQL, remembered.
#[derive(Clone)]
struct KnownKey {
    merchant_id: String,
    /// When it was read.
    read: Instant,
    /// When a rolled key stops working; `None` for a merchant's current key.
    expires: Option<Instant>,
}

impl KnownKey {
    /// Whether it may still authenticate (from memory, too).
    fn unexpired(&self) -> bool {
        self.expires.is_none_or(|at| Instant::now() < at)
    }
}

/// Cheap, cloneable handle to the merchant registry.
#[derive(Clone)]
pub struct MerchantRegistry {
    pool: PgPool,
    /// Hashes of known keys → merchant id, when it was read and, for a rolled key, until when
    /// it works.
    cache: Arc<RwLock<Recent<String, KnownKey>>>,
    /// Hashes of keys no merchant has (negative cache).
    misses: Arc<RwLock<Recent<String, ()>>>,
    /// Failed authentications per client address.
    failures: Arc<std::sync::Mutex<Recent<std::net::IpAddr, Bucket>>>,
    limits: AuthLimits,
}

/// SHA-256 (hex) of an API key. Keys carry 256 random bits, so a fast hash is enough: there
/// is nothing to brute-force that a slow hash would protect.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new secret API key: `sk_test_` + 256 random bits in hex.
fn new_api_key() -> String {
    format!("sk_test_{}", random_hex(32))
}

/// The last 4 characters of a key (ASCII), shown to tell keys apart.
fn last4(api_key: &str) -> String {
    api_key[api_key.len().saturating_sub(4)..].to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl MerchantRegistry {
    pub fn new(pool: PgPool) -> Self {
        Self::with_limits(pool, AuthLimits::default())
    }

    pub fn with_limits(pool: PgPool, limits: AuthLimits) -> Self {
        assert!(
            limits.failed_per_minute > 0,
            "a client may fail at least once a minute"
        );
        Self {
            pool,
            cache: Arc::new(RwLock::new(Recent::new(AUTH_CACHE_MAX, AUTH_HIT_TTL))),
            misses: Arc::new(RwLock::new(Recent::new(AUTH_MISSES_MAX, AUTH_MISS_TTL))),
            // A bucket refills fully within a minute: older ones are as good as new.
            failures: Arc::new(std::sync::Mutex::new(Recent::new(
                AUTH_CLIENTS_MAX,
                Duration::from_secs(60),
            ))),
            limits,
        }
    }

    /// Takes a token for a failed authentication of `client`; `Some(wait)` when it has
    /// none left (nothing taken).
    fn throttled(&self, client: std::net::IpAddr, take: bool) -> Option<Duration> {
        let rate = f64::from(self.limits.failed_per_minute) / 60.0;
        let capacity = f64::from(self.limits.failed_per_minute);
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if failures.get(&client).is_none() {
            let full = Bucket {
                tokens: capacity,
                refilled: now,
            };
            failures.put(client, full);
        }
        let bucket = failures.get_mut(&client)?;
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return Some(Duration::from_secs_f64((1.0 - bucket.tokens) / rate));
        }
        if take {
            bucket.tokens -= 1.0;
        }
        None
    }

    /// What `api_key` presented by `client` is: a known key is answered from memory; an
    /// unknown one costs the client a token of its failed-authentication budget, and once
    /// that is spent, its keys are not looked up (so random keys cannot take the database
    /// pool the projector and the pools share).
    pub async fn authenticate_from(
        &self,
        api_key: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<AuthOutcome, MerchantError> {
        let hash = hash_api_key(api_key);
        let known = self.remembered(&hash).await;
        match known {
            Some(key) if key.read.elapsed() < AUTH_HIT_FRESH => {
                return Ok(AuthOutcome::Merchant(key.merchant_id));
            }
            Some(_) => {} // known lately: read again, whatever the client's budget
            None => {
                if let Some(wait) = client.and_then(|c| self.throttled(c, false)) {
                    return Ok(AuthOutcome::Throttled(wait));
                }
            }
        }
        let outcome = match (self.lookup(hash).await, known) {
            (Ok(Some(id)), _) => AuthOutcome::Merchant(id),
            (Ok(None), _) => AuthOutcome::Unknown,
            // PostgreSQL unreachable: a key known within AUTH_HIT_TTL (and not expired)
            // stays served.
            (Err(_), Some(key)) => AuthOutcome::Merchant(key.merchant_id),
            (Err(error), None) => return Err(error),
        };
        if outcome == AuthOutcome::Unknown {
            if let Some(client) = client {
                self.throttled(client, true);
            }
        }
        Ok(outcome)
    }

    pub async fn create(
        &self,
        name: &str,
        webhook_url: Option<&str>,
    ) -> Result<CreatedMerchant, MerchantError> {
        self.create_with_webhook_api(name, webhook_url, WebhookApi::Payrail)
            .await
    }

    /// A new merchant whose webhooks are in `webhook_api`'s format.
    pub async fn create_with_webhook_api(
        &self,
        name: &str,
        webhook_url: Option<&str>,
        webhook_api: WebhookApi,
    ) -> Result<CreatedMerchant, MerchantError> {
        let id = format!("mer_{}", uuid::Uuid::now_v7().simple());
        let api_key = new_api_key();
        let webhook_secret = new_webhook_secret();
        sqlx::query(
            "INSERT INTO merchants (id, name, api_key_hash, api_key_last4, webhook_url, webhook_secret, webhook_api)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(name)
        .bind(hash_api_key(&api_key))
        .bind(last4(&api_key))
        .bind(webhook_url)
        .bind(&webhook_secret)
        .bind(webhook_api.as_str())
        .execute(&self.pool)
        .await?;
        Ok(CreatedMerchant {
            id,
            object: "merchant",
            name: name.to_string(),
            api_key,
            webhook_url: webhook_url.map(str::to_string),
            webhook_api,
            webhook_secret,
        })
    }

    /// The merchant id an API key belongs to, if any (no client budget).
    pub async fn authenticate(&self, api_key: &str) -> Result<Option<String>, MerchantError> {
        let hash = hash_api_key(api_key);
        match self.remembered(&hash).await {
            Some(key) if key.read.elapsed() < AUTH_HIT_FRESH => Ok(Some(key.merchant_id)),
            // PostgreSQL unreachable: a key known within AUTH_HIT_TTL (and not expired)
            // stays served.
            Some(key) => Ok(self.lookup(hash).await.unwrap_or(Some(key.merchant_id))),
            None => self.lookup(hash).await,
        }
    }

    /// The key of `hash` as last read, unless it is a rolled key past its expiry: such a
    /// key is never answered from memory, not even while PostgreSQL is unreachable.
    async fn remembered(&self, hash: &str) -> Option<KnownKey> {
        self.cache
            .read()
            .await
            .get(hash)
            .filter(|key| key.unexpired())
            .cloned()
    }

    /// Gives merchant `merchant_id` a new API key. The old one keeps working for `grace`
    /// (at most [`MAX_ROLLED_KEY_GRACE`]; zero refuses it at once) and is then refused:
    /// at once on this node, within [`AUTH_HIT_FRESH`] on the others (which read a known
    /// key again that often and then learn its expiry). Keys rolled earlier keep their own
    /// expiries.
    pub async fn roll_api_key(
        &self,
        merchant_id: &str,
        grace: Duration,
    ) -> Result<RolledApiKey, MerchantError> {
        if grace > MAX_ROLLED_KEY_GRACE {
            return Err(MerchantError::GraceTooLong);
        }
        // Bounded by MAX_ROLLED_KEY_GRACE just above: fits easily.
        let grace_ms = i64::try_from(grace.as_millis()).map_err(|_| MerchantError::GraceTooLong)?;
        let api_key = new_api_key();
        let mut tx = self.pool.begin().await?;
        let old: Option<(String, String)> = sqlx::query_as(
            "SELECT api_key_hash, api_key_last4 FROM merchants WHERE id = $1 FOR UPDATE",
        )
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((old_hash, old_last4)) = old else {
            return Err(MerchantError::UnknownMerchant(merchant_id.to_string()));
        };
        let expires_at: i64 = sqlx::query_scalar(
            "INSERT INTO rolled_api_keys (key_hash, merchant_id, last4, expires_at)
             VALUES ($1, $2, $3, now() + $4::BIGINT * interval '1 millisecond')
             RETURNING floor(EXTRACT(EPOCH FROM expires_at))::BIGINT",
        )
        .bind(&old_hash)
        .bind(merchant_id)
        .bind(&old_last4)
        .bind(grace_ms)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE merchants SET api_key_hash = $2, api_key_last4 = $3 WHERE id = $1")
            .bind(merchant_id)
            .bind(hash_api_key(&api_key))
            .bind(last4(&api_key))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // This node reads the old key again at its next use, and so learns its expiry
        // (or, rolled with no grace, that it is nobody's) at once.
        self.cache.write().await.remove(&old_hash);
        Ok(RolledApiKey {
            object: "api_key_roll",
            merchant_id: merchant_id.to_string(),
            api_key,
            previous_key_last4: old_last4,
            previous_key_expires_at: expires_at,
        })
    }

    /// Entries in the negative cache (for tests and metrics).
    pub async fn unknown_keys_cached(&self) -> usize {
        self.misses.read().await.len()
    }

    /// The key's merchant from the negative cache or PostgreSQL; caches the answer.
    async fn lookup(&self, hash: String) -> Result<Option<String>, MerchantError> {
        if self.misses.read().await.get(&hash).is_some() {
            return Ok(None);
        }
        // Taken before the query: PostgreSQL's `now()` is later, so the deadline below is
        // at or before the key's true expiry, never after.
        let asked = Instant::now();
        // A merchant's current key, or a rolled one with the milliseconds it has left.
        let found: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT id, NULL::BIGINT FROM merchants WHERE api_key_hash = $1
             UNION ALL
             SELECT merchant_id, floor(EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT
               FROM rolled_api_keys WHERE key_hash = $1 AND expires_at > now()
             LIMIT 1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let id = found.as_ref().map(|(id, _)| id.clone());
        match found {
            Some((merchant_id, left_ms)) => {
                let expires = left_ms.map(|ms| asked + Duration::from_millis(ms.max(0) as u64));
                let key = KnownKey {
                    merchant_id,
                    read: Instant::now(),
                    expires,
                };
                self.cache.write().await.put(hash, key)
            }
            None => {
                self.cache.write().await.remove(&hash);
                self.misses.write().await.put(hash, ());
            }
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests;
