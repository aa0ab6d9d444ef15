//! Fair share: pure arithmetic the keeper applies each round.

/// Partitions one node should hold: `ceil(partitions / live_nodes)`, with at least one live
/// node counted (this one, even if its own heartbeat failed to show up).
pub fn fair_share(partitions: u32, live_nodes: usize) -> usize {
    let live = live_nodes.max(1);
    usize::try_from(partitions)
        .unwrap_or(usize::MAX)
        .div_ceil(live)
}

/// Which of the `active` partitions (held, not being handed over) to hand over so that
/// `share` remain: the highest-numbered ones, so that every node picks alike.
pub fn extras(active: &[i32], share: usize) -> Vec<i32> {
    let mut sorted = active.to_vec();
    sorted.sort_unstable();
    let keep = share.min(sorted.len());
    sorted.split_off(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn share_rounds_up_and_counts_this_node() {
        assert_eq!(fair_share(6, 2), 3);
        assert_eq!(fair_share(6, 4), 2);
        assert_eq!(fair_share(7, 3), 3);
        assert_eq!(fair_share(6, 0), 6);
    }

    #[test]
    fn extras_are_the_highest_partitions() {
        assert_eq!(extras(&[5, 0, 3, 1], 2), vec![3, 5]);
        assert!(extras(&[1, 2], 3).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn shares_cover_every_partition(partitions in 1u32..200, live in 1usize..50) {
            let share = fair_share(partitions, live);
            prop_assert!(share * live >= partitions as usize);
            prop_assert!(share.saturating_sub(1) * live < partitions as usize);
        }
    }
}
