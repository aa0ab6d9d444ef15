//! Epoch fencing: every reader ignores a record whose owner epoch is below the highest epoch
//! it has already seen in that partition.
//!
//! Each record carries the epoch of the lease its writer held (header `owner_epoch`;
//! absent = 0, a record from before leases). A node that takes a partition raises the epoch
//! and first appends a `partition.owner_changed` marker. A zombie — the old owner, paused
//! past its lease — may still get an append in after the marker; that record carries the
//! old epoch, so every reader that passed the marker ignores it, and the zombie, whose lease
//! was no longer valid, never acknowledged it. The fence is pure and per partition; each
//! reader keeps one per partition and persists it with its position (`journal_offsets`).

use crate::consumer::ConsumedRecord;

/// Event type of the marker a new owner appends before anything else.
pub const OWNER_CHANGED: &str = "partition.owner_changed";

/// The `node_id` of a single node's start marker (a single node has no cluster id).
pub const SINGLE_NODE_ID: &str = "single-node";

/// Payload of a `partition.owner_changed` marker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerChanged {
    pub partition: i32,
    pub epoch: u64,
    /// The node that took the partition.
    pub node_id: String,
}

/// The marker a new owner of `partition` appends under `epoch` before anything else.
pub fn owner_changed_marker(
    producer: &crate::JournalProducer,
    topic: &str,
    partition: i32,
    epoch: u64,
    node_id: &str,
) -> Result<crate::producer::OutgoingRecord, crate::producer::JournalError> {
    let envelope = crate::envelope::Envelope {
        event_id: uuid::Uuid::now_v7(),
        event_type: OWNER_CHANGED.to_string(),
        schema_version: 1,
        payment_id: String::new(),
        merchant_id: String::new(),
        sequence: 0,
        occurred_at_micros: crate::envelope::now_micros(),
        correlation_id: None,
        payload: OwnerChanged {
            partition,
            epoch,
            node_id: node_id.to_string(),
        },
    };
    producer.record(topic, partition, epoch, &envelope)
}

/// What a reader does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceVerdict {
    /// A domain record of a current epoch: apply it.
    Apply,
    /// An owner-change marker: raises the fence; nothing to apply.
    Marker,
    /// Written under an epoch already superseded in this partition: ignore it.
    Fenced,
}

/// The highest owner epoch seen so far in one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochFence {
    highest: u64,
}

impl EpochFence {
    /// Resumes a fence persisted with a reader's position.
    pub fn at(highest: u64) -> Self {
        Self { highest }
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Judges `record` (the next one of its partition, in offset order) and raises the
    /// fence to its epoch when it is admitted.
    pub fn admit(&mut self, record: &ConsumedRecord) -> FenceVerdict {
        let verdict = self.judge(record.owner_epoch, record.is_owner_change());
        debug_assert!(verdict == FenceVerdict::Fenced || self.highest == record.owner_epoch);
        verdict
    }

    fn judge(&mut self, epoch: u64, marker: bool) -> FenceVerdict {
        if epoch < self.highest {
            return FenceVerdict::Fenced;
        }
        self.highest = epoch;
        if marker {
            FenceVerdict::Marker
        } else {
            FenceVerdict::Apply
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(offset: i64, epoch: u64, marker: bool) -> ConsumedRecord {
        ConsumedRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            event_type: Some(
                if marker {
                    OWNER_CHANGED
                } else {
                    "payment.created"
                }
                .into(),
            ),
            event_id: None,
            content_type: None,
            value: Vec::new(),
            timestamp_ms: None,
            owner_epoch: epoch,
        }
    }

    #[test]
    fn a_zombie_append_after_the_marker_is_fenced() {
        let mut fence = EpochFence::default();
        assert_eq!(fence.admit(&record(0, 1, false)), FenceVerdict::Apply);
        assert_eq!(fence.admit(&record(1, 2, true)), FenceVerdict::Marker);
        assert_eq!(fence.admit(&record(2, 1, false)), FenceVerdict::Fenced);
        assert_eq!(fence.admit(&record(3, 2, false)), FenceVerdict::Apply);
        assert_eq!(fence.highest(), 2);
    }

    #[test]
    fn records_without_an_epoch_apply_until_a_lease_was_taken() {
        let mut fence = EpochFence::default();
        assert_eq!(fence.admit(&record(0, 0, false)), FenceVerdict::Apply);
        assert_eq!(fence.admit(&record(1, 1, true)), FenceVerdict::Marker);
        assert_eq!(fence.admit(&record(2, 0, false)), FenceVerdict::Fenced);
    }

    #[test]
    fn a_resumed_fence_keeps_its_epoch() {
        let mut fence = EpochFence::at(3);
        assert_eq!(fence.admit(&record(9, 2, false)), FenceVerdict::Fenced);
        assert_eq!(fence.admit(&record(10, 3, false)), FenceVerdict::Apply);
    }

    proptest! {
        /// Whatever the interleaving, an applied record is never below an epoch seen
        /// before it, the fence never goes down, and markers never apply.
        #[test]
        fn the_fence_never_lowers_and_applies_nothing_below_it(
            log in proptest::collection::vec((0u64..5, any::<bool>()), 0..64)
        ) {
            let mut fence = EpochFence::default();
            let mut seen_max = 0;
            for (i, (epoch, marker)) in log.iter().enumerate() {
                let before = fence.highest();
                let verdict = fence.admit(&record(i as i64, *epoch, *marker));
                prop_assert!(fence.highest() >= before);
                match verdict {
                    FenceVerdict::Apply => prop_assert!(*epoch >= seen_max && !marker),
                    FenceVerdict::Marker => prop_assert!(*epoch >= seen_max && *marker),
                    FenceVerdict::Fenced => prop_assert!(*epoch < seen_max),
                }
                seen_max = seen_max.max(*epoch);
                prop_assert_eq!(fence.highest(), seen_max);
            }
        }
    }
}
