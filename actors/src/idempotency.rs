//! A merchant's idempotency keys in memory: creates in flight (with the callers waiting on
//! them) and settled keys (with the first response), bounded per merchant.
//!
//! Pure bookkeeping, no I/O: the merchant actor decides when to read PostgreSQL.

use crate::error::CommandError;
use crate::messages::Reply;
use crate::payment::PaymentView;
use std::collections::{HashMap, VecDeque};

pub enum IdempotencyEntry {
    /// The create is being journaled; these callers wait for its outcome.
    Pending {
        fingerprint: String,
        payment_id: String,
        waiters: Vec<Reply>,
    },
    /// The first response, replayed to every later request with the same key and body.
    Done {
        fingerprint: String,
        response: Box<PaymentView>,
        /// Everything this key's create journaled lies before this offset. Evicting the
        /// entry raises the merchant's `memory_complete_from` to it, so a later snapshot
        /// read of the key waits for the projector only as far as needed to see it.
        journaled_before: i64,
    },
}

pub struct IdempotencyCache {
    entries: HashMap<String, IdempotencyEntry>,
    /// Settled keys in insertion order, to bound the cache.
    settled_order: VecDeque<String>,
    capacity: usize,
}

impl IdempotencyCache {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "idempotency cache capacity must be positive");
        Self {
            entries: HashMap::new(),
            settled_order: VecDeque::new(),
            capacity,
        }
    }

    /// Answers `reply` from memory if the key is there (replayed, refused as a mismatch,
    /// or queued behind the create in flight); gives `reply` back if the key is unknown.
    pub fn answer(&mut self, key: &str, fingerprint: &str, reply: Reply) -> Option<Reply> {
        match self.entries.get_mut(key) {
            Some(IdempotencyEntry::Pending {
                fingerprint: first,
                waiters,
                ..
            }) => {
                if first == fingerprint {
                    waiters.push(reply);
                } else {
                    let _ = reply.send(Err(CommandError::IdempotencyMismatch));
                }
                None
            }
            Some(IdempotencyEntry::Done {
                fingerprint: first,
                response,
                ..
            }) => {
                let _ = reply.send(if first == fingerprint {
                    Ok(PaymentView::clone(response))
                } else {
                    Err(CommandError::IdempotencyMismatch)
                });
                None
            }
            None => Some(reply),
        }
    }

    /// Starts a create under `key`; `reply` is its first waiter.
    pub fn begin(&mut self, key: String, fingerprint: String, payment_id: String, reply: Reply) {
        debug_assert!(!self.entries.contains_key(&key), "a key begins once");
        self.entries.insert(
            key,
            IdempotencyEntry::Pending {
                fingerprint,
                payment_id,
                waiters: vec![reply],
            },
        );
    }

    pub fn has_pending(&self) -> bool {
        self.entries
            .values()
            .any(|e| matches!(e, IdempotencyEntry::Pending { .. }))
    }

    /// Keys whose create in flight is `payment_id`'s.
    pub fn pending_for(&self, payment_id: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|(key, entry)| match entry {
                IdempotencyEntry::Pending { payment_id: p, .. } if p == payment_id => {
                    Some(key.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Answers every waiter of `key`'s create. A success is remembered (`journaled_before`:
    /// an offset past its records); a failure forgets the key, so a retry reads its
    /// history again (and, being keyed, converges on the same payment id).
    /// Returns the offset to raise `memory_complete_from` to, if an eviction needs it.
    pub fn settle(
        &mut self,
        key: String,
        result: Result<PaymentView, CommandError>,
        journaled_before: i64,
    ) -> Option<i64> {
        let Some(IdempotencyEntry::Pending {
            fingerprint,
            waiters,
            ..
        }) = self.entries.remove(&key)
        else {
            return None;
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        match result {
            Ok(response) => self.remember(key, fingerprint, response, journaled_before),
            Err(_) => None,
        }
    }

    /// Caches a settled key. Returns the highest `journaled_before` of the keys evicted.
    pub fn remember(
        &mut self,
        key: String,
        fingerprint: String,
        response: PaymentView,
        journaled_before: i64,
    ) -> Option<i64> {
        self.entries.insert(
            key.clone(),
            IdempotencyEntry::Done {
                fingerprint,
                response: Box::new(response),
                journaled_before,
            },
        );
        self.settled_order.push_back(key);
        let mut raised = None;
        while self.settled_order.len() > self.capacity {
            let Some(old) = self.settled_order.pop_front() else {
                break;
            };
            if let Some(IdempotencyEntry::Done {
                journaled_before, ..
            }) = self.entries.get(&old)
            {
                raised = raised.max(Some(*journaled_before));
                self.entries.remove(&old);
            }
        }
        debug_assert!(self.settled_order.len() <= self.capacity);
        raised
    }
}
