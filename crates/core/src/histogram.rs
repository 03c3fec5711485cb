//! Latency histograms with a stated error: bucket `i` holds values in `(1.1^(i-1), 1.1^i]`
//! microseconds (bucket 0: up to 1 µs). A percentile read from the buckets is the upper bound of
//! the bucket it falls in: never below the true value and at most 10 % above it. Buckets are
//! plain counts, so histograms of several instances and minutes add up.

const GROWTH: f64 = 1.1;
/// 1.1^300 µs is far beyond any request; larger values share the last bucket.
pub const MAX_BUCKET: i64 = 300;

/// The bucket of a latency in microseconds.
pub fn bucket(micros: u64) -> i64 {
    if micros <= 1 {
        return 0;
    }
    let b = ((micros as f64).ln() / GROWTH.ln()).ceil();
    // Guard against rounding at exact powers: the value must not exceed the bucket's bound.
    #[allow(clippy::cast_possible_truncation, reason = "bounded by MAX_BUCKET")]
    let mut i = (b as i64).clamp(0, MAX_BUCKET);
    while i < MAX_BUCKET && upper_micros(i) < micros as f64 {
        i += 1;
    }
    i
}

/// The largest latency (µs) bucket `i` holds.
pub fn upper_micros(i: i64) -> f64 {
    #[allow(clippy::cast_possible_truncation, reason = "bounded by MAX_BUCKET")]
    GROWTH.powi(i.clamp(0, MAX_BUCKET) as i32)
}

/// The `q` quantile (0 < q ≤ 1) of `(bucket, count)` pairs, in microseconds: the upper bound of
/// the bucket holding the ⌈q·n⌉-th smallest value. `None` without values.
pub fn quantile_micros(buckets: &[(i64, i64)], q: f64) -> Option<f64> {
    let mut sorted: Vec<(i64, i64)> = buckets.iter().copied().filter(|(_, c)| *c > 0).collect();
    sorted.sort_unstable();
    let total: i64 = sorted.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, reason = "a rank within the total")]
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as i64).max(1);
    let mut seen = 0;
    for (b, c) in sorted {
        seen += c;
        if seen >= rank {
            return Some(upper_micros(b));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lies_within_its_bucket_and_the_bound_is_at_most_10_percent_above() {
        for v in [2u64, 3, 10, 999, 1_000, 1_001, 12_345, 250_000, 60_000_000] {
            let b = bucket(v);
            assert!(upper_micros(b) >= v as f64, "{v}");
            assert!(b == 0 || upper_micros(b - 1) < v as f64, "{v}");
            assert!(upper_micros(b) <= v as f64 * 1.1 + 1e-9, "{v}");
        }
    }

    #[test]
    fn quantiles_come_from_the_ranked_bucket() {
        // 95 fast (1 ms) and 5 slow (100 ms): p50 is fast, p95 fast, p96 slow.
        let h = vec![(bucket(1_000), 95), (bucket(100_000), 5)];
        let p = |q| quantile_micros(&h, q).unwrap_or(0.0);
        assert!((1_000.0..=1_100.0).contains(&p(0.5)));
        assert!((1_000.0..=1_100.0).contains(&p(0.95)));
        assert!((100_000.0..=110_000.0).contains(&p(0.96)));
        assert_eq!(quantile_micros(&[], 0.5), None);
    }
}
