//! A bounded map of recent entries, oldest evicted first: the auth caches' store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most `capacity` entries, each forgotten `ttl` after it was put; full, the oldest
/// goes — one entry at a time, never the whole map.
pub(super) struct Recent<K, V> {
    entries: HashMap<K, (V, Instant)>,
    /// Keys in the order they were put, with when (a key put again has a stale older pair).
    order: std::collections::VecDeque<(K, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: std::hash::Hash + Eq + Clone, V> Recent<K, V> {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        assert!(capacity > 0, "a cache holds at least one entry");
        Self {
            entries: HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity,
            ttl,
        }
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(value, _)| value)
    }

    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let ttl = self.ttl;
        self.entries
            .get_mut(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(value, _)| value)
    }

    pub(super) fn put(&mut self, key: K, value: V) {
        let now = Instant::now();
        if self.entries.insert(key.clone(), (value, now)).is_none() {
            while self.entries.len() > self.capacity {
                let Some((oldest, at)) = self.order.pop_front() else {
                    break;
                };
                if self.entries.get(&oldest).is_some_and(|(_, put)| *put == at) {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.order.push_back((key, now));
        // Keys put again leave stale pairs behind: keep the queue within twice the map.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(key, at)| entries.get(key).is_some_and(|(_, put)| put == at));
        }
        debug_assert!(self.entries.len() <= self.capacity);
    }

    pub(super) fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
