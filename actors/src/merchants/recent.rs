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
