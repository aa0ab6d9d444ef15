//! Which partitions of `payment.events` this node owns.
//!
//! A single node owns every partition. The cluster issue replaces the static assignment
//! with leases; everything that asks "do I own p?" already goes through this handle.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone)]
pub struct PartitionOwnership {
    owned: Arc<RwLock<BTreeSet<i32>>>,
    partitions: u32,
}

impl PartitionOwnership {
    /// This node owns all `partitions` partitions.
    pub fn all(partitions: u32) -> Self {
        Self {
            owned: Arc::new(RwLock::new((0..partitions as i32).collect())),
            partitions,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.owned
            .read()
            .map(|owned| owned.contains(&partition))
            .unwrap_or(false)
    }

    pub fn owned(&self) -> Vec<i32> {
        self.owned
            .read()
            .map(|owned| owned.iter().copied().collect())
            .unwrap_or_default()
    }
}
