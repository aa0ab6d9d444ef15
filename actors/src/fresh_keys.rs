//! [`FreshKeys`]: per owned partition, a Bloom filter of every idempotency key the partition
//! holds, so a create with a new key skips its look-up in PostgreSQL (issue 25, lead 1).
//!
//! A Bloom filter has no false negatives: "not in the filter" means the key was never
//! inserted. The filter answers only once it holds
//! - every key in `idempotency_keys` once the snapshot projector has applied the partition up
//!   to this node's produced offset at the time the load began: at start-up and after a
//!   takeover that offset is the journal's end or the takeover's marker (as a new merchant
//!   actor's `memory_complete_from`), so every earlier owner's key is there; and
//! - every key a merchant actor of this node began since the partition's supervisor started
//!   ([`FreshKeys::insert`] before the create is journaled or spooled).
//!
//! Until then (loading, waiting for the projector, the journal fallback active, a load that
//! failed) and when a partition holds more keys than the filter was sized for, every key is
//! looked up as before. A possible hit (a key seen, or a false positive, ~1 % at capacity)
//! is looked up too. The filter lives as long as the partition's supervisor: a partition
//! that moves away and back starts a new one.

use crate::runtime::Runtime;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{info, warn};

/// Bits per key at capacity, and hash functions: ~0.8 % false positives at capacity.
const BITS_PER_KEY: usize = 10;
const HASHES: u64 = 7;
/// Keys read per page while loading.
const LOAD_PAGE: i64 = 10_000;
/// Between two tries of a load that could not start or failed.
const LOAD_RETRY: Duration = Duration::from_secs(1);

const IDLE: u8 = 0;
const LOADING: u8 = 1;
const READY: u8 = 2;
const OFF: u8 = 3;

/// One partition's filter of idempotency keys. Shared by the partition supervisor and its
/// merchant actors.
pub struct FreshKeys {
    partition: i32,
    state: AtomicU8,
    bits: Box<[AtomicU64]>,
    /// Keys inserted (repeats included); past `capacity` the filter turns itself off.
    inserted: AtomicUsize,
    capacity: usize,
}

impl FreshKeys {
    /// A filter for `capacity` keys (`actors.fresh_key_filter_capacity`, ~1.25 bytes each);
    /// 0: no filter, every key is looked up.
    pub fn new(partition: i32, capacity: usize) -> Arc<Self> {
        let words = (capacity * BITS_PER_KEY).div_ceil(64);
        Arc::new(Self {
            partition,
            state: AtomicU8::new(if capacity == 0 { OFF } else { IDLE }),
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            inserted: AtomicUsize::new(0),
            capacity,
        })
    }

    /// Records `key` of `merchant_id` as existing. Called before its create is journaled,
    /// whatever the filter's state, so a load running now cannot miss it.
    pub fn insert(&self, merchant_id: &str, key: &str) {
        if self.bits.is_empty() {
            return;
        }
        for (word, mask) in self.positions(merchant_id, key) {
            self.bits[word].fetch_or(mask, Ordering::AcqRel);
        }
        if self.inserted.fetch_add(1, Ordering::AcqRel) + 1 > self.capacity
            && self.state.swap(OFF, Ordering::AcqRel) != OFF
        {
            info!(
                partition = self.partition,
                capacity = self.capacity,
                "fresh-key filter off: the partition holds more keys than it was sized for; every new key is looked up"
            );
        }
    }

    /// `true` only when `key` of `merchant_id` certainly has no create in this partition,
    /// so its look-up can be skipped. The first call starts the load.
    pub fn definitely_new(
        self: &Arc<Self>,
        runtime: &Arc<Runtime>,
        merchant_id: &str,
        key: &str,
    ) -> bool {
        match self.state.load(Ordering::Acquire) {
            READY => self
                .positions(merchant_id, key)
                .any(|(word, mask)| self.bits[word].load(Ordering::Acquire) & mask == 0),
            IDLE => {
                if self
                    .state
                    .compare_exchange(IDLE, LOADING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    tokio::spawn(load(Arc::downgrade(self), runtime.clone()));
                }
                false
            }
            _ => false,
        }
    }

    /// Whether the filter answers (for tests and metrics).
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// The filter's bits for one key: (word index, mask), by double hashing.
    fn positions(&self, merchant_id: &str, key: &str) -> impl Iterator<Item = (usize, u64)> {
        let m = (self.bits.len() * 64) as u64;
        let h1 = hash(0, merchant_id, key);
        // Odd, so the HASHES probes differ even when h2 is a multiple of m's factors.
        let h2 = hash(1, merchant_id, key) | 1;
        (0..HASHES).map(move |i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % m;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }
}

fn hash(seed: u8, merchant_id: &str, key: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    merchant_id.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

/// Fills the filter from PostgreSQL once the snapshots hold every earlier owner's key, then
/// lets it answer. Ends when the filter is dropped (the partition stopped).
async fn load(filter: Weak<FreshKeys>, runtime: Arc<Runtime>) {
    let Some(partition) = filter.upgrade().map(|f| f.partition) else {
        return;
    };
    let bound = runtime.produced_offset(partition);
    loop {
        if filter.upgrade().is_none() {
            return;
        }
        let settled = runtime.fallback.is_end_known(partition)
            && !runtime.fallback.is_active(partition)
            && runtime.snapshots_reached(partition, bound).await;
        if settled {
            match read_keys(&filter, &runtime, partition).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => {
                    warn!(partition, %error, "loading the fresh-key filter failed; retrying")
                }
            }
        }
        tokio::time::sleep(LOAD_RETRY).await;
    }
}

/// Inserts every key of the partition's merchants; `Ok(true)` once the filter answers (or
/// was turned off), `Ok(false)` when it was dropped meanwhile.
async fn read_keys(
    filter: &Weak<FreshKeys>,
    runtime: &Runtime,
    partition: i32,
) -> Result<bool, sqlx::Error> {
    let pool = &runtime.pool;
    let merchants: Vec<String> = sqlx::query_scalar("SELECT id FROM merchants")
        .fetch_all(pool)
        .await?
        .into_iter()
        .filter(|id: &String| runtime.partition_of(id) == partition)
        .collect();
    let mut after = (String::new(), String::new());
    let mut loaded = 0usize;
    loop {
        let page: Vec<(String, String)> = sqlx::query_as(
            "SELECT merchant_id, idempotency_key FROM idempotency_keys
             WHERE merchant_id = ANY($1) AND (merchant_id, idempotency_key) > ($2, $3)
             ORDER BY merchant_id, idempotency_key LIMIT $4",
        )
        .bind(&merchants)
        .bind(&after.0)
        .bind(&after.1)
        .bind(LOAD_PAGE)
        .fetch_all(pool)
        .await?;
        let Some(filter) = filter.upgrade() else {
            return Ok(false);
        };
        for (merchant_id, key) in &page {
            filter.insert(merchant_id, key);
        }
        loaded += page.len();
        if filter.state.load(Ordering::Acquire) == OFF {
            return Ok(true);
        }
        let full = page.len() as i64 == LOAD_PAGE;
        match page.into_iter().last() {
            Some(last) if full => after = last,
            _ => {
                // Only from LOADING: an insert past capacity may have turned it off.
                let _ = filter.state.compare_exchange(
                    LOADING,
                    READY,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                info!(partition, keys = loaded, "fresh-key filter ready");
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(capacity: usize) -> Arc<FreshKeys> {
        let filter = FreshKeys::new(0, capacity);
        filter.state.store(READY, Ordering::Release);
        filter
    }

    fn new_here(filter: &FreshKeys, merchant_id: &str, key: &str) -> bool {
        filter
            .positions(merchant_id, key)
            .any(|(word, mask)| filter.bits[word].load(Ordering::Acquire) & mask == 0)
    }

    #[test]
    fn an_inserted_key_is_never_taken_as_new() {
        let filter = ready(10_000);
        for i in 0..10_000 {
            filter.insert("mer_a", &format!("key-{i}"));
        }
        for i in 0..10_000 {
            assert!(!new_here(&filter, "mer_a", &format!("key-{i}")), "key-{i}");
        }
    }

    #[test]
    fn at_capacity_few_new_keys_are_taken_as_seen() {
        let filter = ready(10_000);
        for i in 0..10_000 {
            filter.insert("mer_a", &format!("key-{i}"));
        }
        let false_positives = (0..10_000)
            .filter(|i| !new_here(&filter, "mer_a", &format!("other-{i}")))
            .count();
        assert!(
            false_positives < 300,
            "{false_positives} of 10,000 (expected ~1 %)"
        );
    }

    #[test]
    fn the_same_key_of_another_merchant_is_another_key() {
        let filter = ready(1_000);
        filter.insert("mer_a", "order-1");
        assert!(new_here(&filter, "mer_b", "order-1"));
    }

    #[test]
    fn past_its_capacity_the_filter_turns_off() {
        let filter = ready(100);
        for i in 0..101 {
            filter.insert("mer_a", &format!("key-{i}"));
        }
        assert_eq!(filter.state.load(Ordering::Acquire), OFF);
        assert!(!filter.is_ready());
    }

    #[test]
    fn a_filter_of_capacity_zero_is_off_and_holds_nothing() {
        let filter = FreshKeys::new(0, 0);
        filter.insert("mer_a", "k");
        assert_eq!(filter.state.load(Ordering::Acquire), OFF);
        assert!(filter.bits.is_empty());
    }
}
