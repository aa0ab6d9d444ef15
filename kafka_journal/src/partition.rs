//! Stable key → partition mapping.
//!
//! Every node must agree on the partition of a merchant without talking to each other, on
//! any platform and any version of payrail. We use Kafka's own default partitioner
//! (murmur2, seed `0x9747b28c`, sign bit masked) so that the mapping is also the one any
//! Kafka client in another language would compute for the same key.

/// Kafka's murmur2 hash of `data` (as in `org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions` partitions: `(murmur2(key) & 0x7fffffff) % n`.
///
/// # Panics
/// Never for a valid configuration: `partitions` is validated to be ≥ 1 at start-up, and
/// the assertion documents that invariant.
pub fn partition_for(key: &[u8], partitions: u32) -> i32 {
    assert!(partitions > 0, "partition count must be positive");
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    (positive % partitions) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Vectors from Apache Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafkas_reference_vectors() {
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    proptest! {
        #[test]
        fn partition_is_always_in_range(key in proptest::collection::vec(any::<u8>(), 0..64), n in 1u32..512) {
            let p = partition_for(&key, n);
            prop_assert!(p >= 0 && (p as u32) < n);
        }

        #[test]
        fn partition_is_deterministic(key in "[a-z0-9_]{1,40}", n in 1u32..64) {
            prop_assert_eq!(partition_for(key.as_bytes(), n), partition_for(key.as_bytes(), n));
        }
    }
}
