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
//!
//! A marker that was spooled during a journal outage reaches the journal only with the
//! replay, so a zombie's late append can land *before* it; [`VoidFences`] covers that case:
//! ranges a takeover in fallback voided, kept in PostgreSQL and read by every reader.

use crate::record::ConsumedRecord;
pub use crate::record::OWNER_CHANGED;

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

/// Ranges of a partition that a takeover through the spool voided: a record written under
/// an epoch below `epoch` at an offset at or past `from` takes effect nowhere.
///
/// A takeover during a journal outage spools its owner-change marker; the marker reaches
/// the journal only with the replay, so a write the previous owner left in doubt on a hung
/// broker can land *before* it, unfenced by the marker, beside the command the new owner
/// decided without it (issue 22). Every record the previous owner may have written at or
/// past `from` was either spooled (and is journaled again, under the new epoch, by the
/// replay) or never acknowledged, so the rule drops only writes nobody was told about.
/// The fences are kept in PostgreSQL ([`crate::offsets::load_void_fences`]), written in the
/// takeover's transaction before the new owner decides anything, and read by every reader
/// in the transaction that applies a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoidFences {
    /// `(epoch, from)` pairs, as written; few per partition (one per takeover in fallback).
    fences: Vec<(u64, i64)>,
}

impl VoidFences {
    pub fn new(fences: Vec<(u64, i64)>) -> Self {
        Self { fences }
    }

    /// Whether a record written under `epoch` at `offset` was voided.
    pub fn voids(&self, epoch: u64, offset: i64) -> bool {
        self.fences
            .iter()
            .any(|(above, from)| epoch < *above && offset >= *from)
    }

    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }
}

impl EpochFence {
    /// [`EpochFence::admit`] for a reader that also knows the partition's voided ranges: a
    /// voided record is fenced and does not raise the fence.
    pub fn admit_unless_voided(
        &mut self,
        record: &ConsumedRecord,
        voided: &VoidFences,
    ) -> FenceVerdict {
        if voided.voids(record.owner_epoch, record.offset) {
            return FenceVerdict::Fenced;
        }
        self.admit(record)
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

    #[test]
    fn a_late_write_that_lands_before_a_spooled_marker_is_voided() {
        // The previous owner (epoch 1) journaled 0..5; a takeover in fallback voided epoch
        // < 2 from offset 5. Its late write lands at 5, the replay re-stamps the spooled
        // records with epoch 2 (6, 7), then the marker (8).
        let voided = VoidFences::new(vec![(2, 5)]);
        let mut fence = EpochFence::default();
        assert_eq!(
            fence.admit_unless_voided(&record(4, 1, false), &voided),
            FenceVerdict::Apply
        );
        assert_eq!(
            fence.admit_unless_voided(&record(5, 1, false), &voided),
            FenceVerdict::Fenced
        );
        assert_eq!(
            fence.highest(),
            1,
            "a voided record does not raise the fence"
        );
        assert_eq!(
            fence.admit_unless_voided(&record(6, 2, false), &voided),
            FenceVerdict::Apply
        );
        assert_eq!(
            fence.admit_unless_voided(&record(8, 2, true), &voided),
            FenceVerdict::Marker
        );
    }

    #[test]
    fn void_fences_keep_every_takeover() {
        let voided = VoidFences::new(vec![(2, 5), (3, 9)]);
        assert!(voided.voids(1, 6), "the first takeover's range");
        assert!(!voided.voids(2, 6), "the first takeover's own records");
        assert!(
            voided.voids(2, 9),
            "the second takeover voids the first's late writes"
        );
        assert!(!voided.voids(1, 4), "below every range");
        assert!(VoidFences::default().is_empty());
    }

    proptest! {
        /// A record is voided exactly when some fence covers it, whatever the order of the
        /// fences; a voided record never applies.
        #[test]
        fn a_voided_record_never_applies(
            fences in proptest::collection::vec((1u64..5, 0i64..20), 0..4),
            log in proptest::collection::vec((0u64..5, any::<bool>()), 0..32)
        ) {
            let voided = VoidFences::new(fences.clone());
            let mut fence = EpochFence::default();
            for (i, (epoch, marker)) in log.iter().enumerate() {
                let offset = i as i64;
                let covered = fences.iter().any(|(e, f)| epoch < e && offset >= *f);
                prop_assert_eq!(voided.voids(*epoch, offset), covered);
                let verdict = fence.admit_unless_voided(&record(offset, *epoch, *marker), &voided);
                if covered {
                    prop_assert_eq!(verdict, FenceVerdict::Fenced);
                }
            }
        }
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
