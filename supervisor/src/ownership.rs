//! Which partitions of `payment.events` this node owns.
//!
//! A single node owns every partition, at the epochs it raised at start (0 until then; see
//! `LeaseStore::raise_single_node_epochs`). A cluster node owns the partitions it
//! holds a lease on and has taken over (see the `payrail-cluster` crate and the node's
//! takeover): they are granted here once the node may serve them and revoked before it
//! stops. Everything that asks "do I own p?" goes through this handle.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

/// The lease a cluster node holds on a partition right now: its epoch if the lease is
/// still valid on this node's clock (safety margin included), else `None`.
pub type LeaseCheck = Arc<dyn Fn(i32) -> Option<u64> + Send + Sync>;

/// Owned partitions → the owner epoch their records are written under (see
/// `kafka_journal::fence`).
#[derive(Clone)]
pub struct PartitionOwnership {
    owned: Arc<RwLock<BTreeMap<i32, u64>>>,
    partitions: u32,
    lease: Option<LeaseCheck>,
}

impl fmt::Debug for PartitionOwnership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionOwnership")
            .field("owned", &self.owned())
            .field("partitions", &self.partitions)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

impl PartitionOwnership {
    /// This node owns all `partitions` partitions, at epoch 0 (a single node without
    /// leases; its start raises the epochs with [`PartitionOwnership::grant`]).
    pub fn all(partitions: u32) -> Self {
        Self {
            owned: Arc::new(RwLock::new(
                (0..partitions as i32).map(|p| (p, 0)).collect(),
            )),
            partitions,
            lease: None,
        }
    }

    /// A cluster node: owns nothing until [`PartitionOwnership::grant`]; a write is
    /// acknowledged only while `lease` still reports the epoch it was made under.
    pub fn leased(partitions: u32, lease: LeaseCheck) -> Self {
        Self {
            owned: Arc::new(RwLock::new(BTreeMap::new())),
            partitions,
            lease: Some(lease),
        }
    }

    /// Whether ownership comes from leases (a cluster node).
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// This node serves `partition` from now on, writing under `epoch`.
    pub fn grant(&self, partition: i32, epoch: u64) {
        assert!(
            (0..self.partitions as i32).contains(&partition),
            "partition {partition} out of range"
        );
        self.write().insert(partition, epoch);
    }

    /// This node stops serving `partition`; whether it served it.
    pub fn revoke(&self, partition: i32) -> bool {
        self.write().remove(&partition).is_some()
    }

    /// Whether a write to `partition` made under `epoch` may be acknowledged now: the node
    /// still serves the partition at that epoch and (in a cluster) its lease is still
    /// valid. Called after the journal acknowledged the write: a lease that lapsed in
    /// between may already belong to another node, whose marker may precede the write.
    pub fn may_acknowledge(&self, partition: i32, epoch: u64) -> bool {
        if self.epoch(partition) != Some(epoch) {
            return false;
        }
        match &self.lease {
            None => true,
            Some(lease) => lease(partition) == Some(epoch),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<i32, u64>> {
        match self.owned.write() {
            Ok(owned) => owned,
            Err(poisoned) => poisoned.into_inner(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn a_single_node_owns_every_partition_at_epoch_zero_and_may_always_acknowledge() {
        let ownership = PartitionOwnership::all(3);
        assert_eq!(ownership.owned(), vec![0, 1, 2]);
        assert!(ownership.may_acknowledge(2, 0));
        assert!(!ownership.may_acknowledge(2, 1));
    }

    #[test]
    fn a_leased_node_owns_nothing_until_granted_and_nothing_after_revoked() {
        let ownership = PartitionOwnership::leased(4, Arc::new(|_| Some(7)));
        assert!(ownership.owned().is_empty());
        ownership.grant(1, 7);
        assert_eq!(ownership.epoch(1), Some(7));
        assert!(ownership.may_acknowledge(1, 7));
        assert!(ownership.revoke(1));
        assert!(!ownership.may_acknowledge(1, 7));
        assert!(!ownership.revoke(1));
    }

    #[test]
    fn a_write_is_not_acknowledged_once_the_lease_lapsed_or_moved_to_another_epoch() {
        let lease = Arc::new(AtomicU64::new(3));
        let check = lease.clone();
        let ownership = PartitionOwnership::leased(
            2,
            Arc::new(move |_| match check.load(Ordering::SeqCst) {
                0 => None,
                epoch => Some(epoch),
            }),
        );
        ownership.grant(0, 3);
        assert!(ownership.may_acknowledge(0, 3));
        lease.store(0, Ordering::SeqCst);
        assert!(!ownership.may_acknowledge(0, 3), "lapsed lease");
        lease.store(4, Ordering::SeqCst);
        assert!(
            !ownership.may_acknowledge(0, 3),
            "re-acquired at a higher epoch"
        );
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn granting_a_partition_outside_the_topic_is_a_bug() {
        PartitionOwnership::leased(2, Arc::new(|_| None)).grant(2, 1);
    }
}
