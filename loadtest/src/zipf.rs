//! Which merchant the next request is for: Zipf-distributed over merchant ranks.
//!
//! Merchant `k` (0-based rank) is picked with probability proportional to `1 / (k + 1)^s`.
//! `s = 0` is uniform; `s = 1` is the classic Zipf law (a few merchants carry most traffic).

use rand::Rng;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickerError {
    #[error("there must be at least one merchant")]
    NoMerchants,
    #[error("--skew must be a finite number in 0..={max}, got {got}")]
    BadExponent { got: f64, max: f64 },
}

/// Samples merchant indexes `0..n` from a Zipf distribution by inverting its CDF.
#[derive(Debug, Clone)]
pub struct MerchantPicker {
    /// `cdf[k]` = P(index <= k); the last entry is 1.
    cdf: Vec<f64>,
}

impl MerchantPicker {
    pub fn new(merchants: usize, exponent: f64) -> Result<Self, PickerError> {
        if merchants == 0 {
            return Err(PickerError::NoMerchants);
        }
        let max = crate::limits::MAX_SKEW_EXPONENT;
        if !exponent.is_finite() || !(0.0..=max).contains(&exponent) {
            return Err(PickerError::BadExponent { got: exponent, max });
        }
        let weights: Vec<f64> = (1..=merchants)
            .map(|rank| (rank as f64).powf(-exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let mut cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                running += w / total;
                running
            })
            .collect();
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Ok(Self { cdf })
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// Probability of index `k`.
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf.first().copied().unwrap_or(0.0),
            _ if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    /// The index for a uniform sample `u` in `[0, 1)`; always `< len()`.
    pub fn pick_at(&self, u: f64) -> usize {
        let k = self.cdf.partition_point(|c| *c <= u);
        k.min(self.cdf.len().saturating_sub(1))
    }

    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        self.pick_at(rng.gen::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn frequencies(picker: &MerchantPicker, samples: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0usize; picker.len()];
        for _ in 0..samples {
            counts[picker.pick(&mut rng)] += 1;
        }
        counts.iter().map(|c| *c as f64 / samples as f64).collect()
    }

    #[test]
    fn rejects_no_merchants_and_bad_exponents() {
        assert_eq!(
            MerchantPicker::new(0, 0.0).err(),
            Some(PickerError::NoMerchants)
        );
        for bad in [-0.1, f64::NAN, f64::INFINITY, 10.5] {
            assert!(MerchantPicker::new(10, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn picks_stay_in_bounds_at_the_edges() {
        for s in [0.0, 0.5, 1.0, 3.0, 10.0] {
            let picker = MerchantPicker::new(37, s).unwrap();
            assert_eq!(picker.pick_at(0.0), 0);
            assert!(picker.pick_at(0.999_999_999_999) < 37);
            assert!(picker.pick_at(1.0) < 37, "even a u of exactly 1");
            let total: f64 = (0..37).map(|k| picker.probability(k)).sum();
            assert!((total - 1.0).abs() < 1e-9);
        }
        let one = MerchantPicker::new(1, 1.2).unwrap();
        assert_eq!(one.pick_at(0.7), 0);
    }

    #[test]
    fn exponent_zero_is_uniform() {
        let picker = MerchantPicker::new(20, 0.0).unwrap();
        for k in 0..20 {
            assert!((picker.probability(k) - 0.05).abs() < 1e-12);
        }
        let freq = frequencies(&picker, 200_000, 7);
        for (k, f) in freq.iter().enumerate() {
            // 5 % expected; 200k samples give a standard deviation of ~0.05 percentage points.
            assert!((f - 0.05).abs() < 0.004, "merchant {k}: {f}");
        }
    }

    #[test]
    fn exponent_one_follows_zipf_law() {
        let n = 100;
        let picker = MerchantPicker::new(n, 1.0).unwrap();
        let harmonic: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
        let expected_top = 1.0 / harmonic; // ≈ 0.193
        assert!((picker.probability(0) - expected_top).abs() < 1e-12);
        assert!((picker.probability(1) - expected_top / 2.0).abs() < 1e-12);
        let freq = frequencies(&picker, 200_000, 11);
        assert!((freq[0] - expected_top).abs() < 0.006, "top: {}", freq[0]);
        assert!((freq[1] - expected_top / 2.0).abs() < 0.005);
        let top10: f64 = freq[..10].iter().sum();
        let expected_top10: f64 = (1..=10).map(|k| 1.0 / k as f64).sum::<f64>() / harmonic;
        assert!(
            (top10 - expected_top10).abs() < 0.01,
            "{top10} vs {expected_top10}"
        );
        // Heavier skew concentrates more on the top merchant.
        let heavy = MerchantPicker::new(n, 2.0).unwrap();
        assert!(heavy.probability(0) > 0.6);
    }
}
