//! Which partitions of `payment.events` this node owns.
//!
//! A single node owns every partition. The cluster issue replaces the static assignment
//! with leases; everything that asks "do I own p?" already goes through this handle.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Owned partitions → the owner epoch their records are written under (see
/// `kafka_journal::fence`).
#[derive(Debug, Clone)]
pub struct PartitionOwnership {
    owned: Arc<RwLock<BTreeMap<i32, u64>>>,
    partitions: u32,
}

impl PartitionOwnership {
    /// This node owns all `partitions` partitions, at epoch 0 (a single node without
    /// leases).
    pub fn all(partitions: u32) -> Self {
        Self {
            owned: Arc::new(RwLock::new(
                (0..partitions as i32).map(|p| (p, 0)).collect(),
            )),
            partitions,
        }
    }

    /// The epoch this node writes `partition` under, if it owns it.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.owned
            .read()
            .ok()
            .and_then(|owned| owned.get(&partition).copied())
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.owned
            .read()
            .map(|owned| owned.contains_key(&partition))
            .unwrap_or(false)
    }

    pub fn owned(&self) -> Vec<i32> {
        self.owned
            .read()
            .map(|owned| owned.keys().copied().collect())
            .unwrap_or_default()
    }
}
