//! Per-tensor quantization: uniform (choice of step, quantize, dequantize) and weight sharing
//! (1-D k-means centroids, nearest-centroid assignment).
//!
//! A tensor is coded as integer symbols `q` in `[-m, m]`, `m = 2^(bits-1) - 1`, and a step
//! [`Step`] that is exactly representable in f32; the decoder's weight is `q as f32 * step`.

use crate::format::Step;

/// Largest symbol magnitude for a bit width.
pub fn max_symbol(bits: u8) -> i32 {
    (1i32 << (bits - 1)) - 1
}

/// Quantize with a given step, clamping to `[-m, m]`.
pub fn quantize(w: &[f32], step: Step, bits: u8) -> Vec<i32> {
    let s = step.to_f32();
    let m = max_symbol(bits);
    w.iter()
        .map(|&v| ((v / s).round() as i32).clamp(-m, m))
        .collect()
}

/// Quantize-dequantize in place (the "fake quantization" of quantization-aware training).
pub fn fake_quant_into(w: &[f32], step: Step, bits: u8, out: &mut [f32]) {
    let s = step.to_f32();
    let m = max_symbol(bits) as f32;
    for (o, &v) in out.iter_mut().zip(w) {
        *o = (v / s).round().clamp(-m, m) * s;
    }
}

/// Choose the step that minimises the squared quantization error, searching clipping
/// ranges from the full range down to 40% of it. Never returns a zero step.
pub fn choose_step(w: &[f32], bits: u8) -> Step {
    let max_abs = w.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let m = max_symbol(bits) as f32;
    if max_abs == 0.0 || !max_abs.is_finite() {
        return Step::from_f32(1e-3);
    }
    let mut best = (f64::INFINITY, Step::from_f32(max_abs / m));
    for i in 0..=24 {
        let clip = max_abs * (1.0 - 0.025 * i as f32);
        let step = Step::from_f32(clip / m);
        let s = step.to_f32();
        let err: f64 = w
            .iter()
            .map(|&v| {
                let d = (v / s).round().clamp(-m, m) * s - v;
                (d * d) as f64
            })
            .sum();
        if err < best.0 {
            best = (err, step);
        }
    }
    best.1
}

/// 1-D k-means (Lloyd's algorithm) of the finite values of `w` into at most `k` centroids,
/// with Deep Compression's linear initialisation (centroids evenly spaced over
/// `[min, max]`). With `zero`, one centroid is held at exactly 0 (the value of pruned
/// weights) and `k - 1` move. Deterministic; returns the distinct centroids in ascending order
/// (fewer than `k` when `w` has fewer distinct values or clusters empty out); `[0]` for an
/// empty `w`.
pub fn kmeans_1d(w: &[f32], k: usize, zero: bool, iters: usize) -> Vec<f32> {
    let mut s: Vec<f32> = w.iter().copied().filter(|v| v.is_finite()).collect();
    s.sort_by(f32::total_cmp);
    let (Some(&lo), Some(&hi)) = (s.first(), s.last()) else {
        return vec![0.0];
    };
    let free = if zero { k.saturating_sub(1) } else { k.max(1) };
    let mut c: Vec<f64> = (0..free)
        .map(|j| {
            let t = if free > 1 {
                j as f64 / (free - 1) as f64
            } else {
                0.5
            };
            f64::from(lo) + t * (f64::from(hi) - f64::from(lo))
        })
        .collect();
    // Prefix sums of the sorted values: the mean of any interval in O(1).
    let mut prefix = Vec::with_capacity(s.len() + 1);
    prefix.push(0.0f64);
    for &v in &s {
        let last = prefix.last().copied().unwrap_or(0.0);
        prefix.push(last + f64::from(v));
    }
    let fixed = |c: &[f64]| -> Vec<(f64, bool)> {
        let mut all: Vec<(f64, bool)> = c.iter().map(|&v| (v, false)).collect();
        if zero {
            all.push((0.0, true));
        }
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all
    };
    for _ in 0..iters {
        let all = fixed(&c);
        let mut next = Vec::with_capacity(c.len());
        let mut start = 0usize;
        for (j, &(cj, is_fixed)) in all.iter().enumerate() {
            let end = match all.get(j + 1) {
                Some(&(cn, _)) => {
                    let mid = 0.5 * (cj + cn);
                    start + s[start..].partition_point(|&v| f64::from(v) < mid)
                }
                None => s.len(),
            };
            if !is_fixed {
                next.push(if end > start {
                    (prefix[end] - prefix[start]) / (end - start) as f64
                } else {
                    cj
                });
            }
            start = end;
        }
        if next == c {
            break;
        }
        c = next;
    }
    let mut out: Vec<f32> = fixed(&c).into_iter().map(|(v, _)| v as f32).collect();
    out.dedup();
    out
}

/// Index of the centroid of `sorted` (ascending, non-empty) nearest to `x` (ties: the lower).
pub fn nearest(sorted: &[f32], x: f32) -> usize {
    let i = sorted.partition_point(|&c| c < x);
    match (i.checked_sub(1), sorted.get(i)) {
        (Some(p), Some(&n)) => {
            if (x - sorted[p]).abs() <= (n - x).abs() {
                p
            } else {
                i
            }
        }
        (Some(p), None) => p,
        (None, _) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_finds_separated_clusters_and_holds_zero() {
        let mut w = Vec::new();
        for i in 0..100 {
            let e = (i % 7) as f32 * 0.001;
            w.extend([-1.0 + e, 0.5 + e, 2.0 + e]);
        }
        let c = kmeans_1d(&w, 3, false, 50);
        assert_eq!(c.len(), 3);
        for (got, want) in c.iter().zip([-0.997f32, 0.503, 2.003]) {
            assert!((got - want).abs() < 1e-3, "{c:?}");
        }
        let z = kmeans_1d(&w, 4, true, 50);
        assert_eq!(z.len(), 4);
        assert!(z.contains(&0.0), "{z:?}");
        assert!(z.windows(2).all(|p| p[0] < p[1]));
        // Fewer distinct values than centroids.
        assert_eq!(kmeans_1d(&[1.0, 1.0], 8, false, 10), vec![1.0]);
        assert_eq!(kmeans_1d(&[], 8, false, 10), vec![0.0]);
    }

    #[test]
    fn nearest_picks_the_closest_centroid() {
        let c = [-1.0f32, 0.0, 2.0];
        for (x, want) in [
            (-5.0, 0),
            (-0.6, 0),
            (-0.4, 1),
            (0.9, 1),
            (1.1, 2),
            (9.0, 2),
        ] {
            assert_eq!(nearest(&c, x), want, "x = {x}");
        }
    }
    use crate::format::QTensor;

    fn dequantize(q: &[i32], step: Step) -> Vec<f32> {
        QTensor {
            step,
            bits: 16,
            symbols: q.to_vec(),
        }
        .dequantize()
    }

    #[test]
    fn roundtrip_error_is_at_most_half_a_step_inside_the_range() {
        let w: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
        let step = choose_step(&w, 8);
        let q = quantize(&w, step, 8);
        assert!(q.iter().all(|&v| v.abs() <= 127));
        let d = dequantize(&q, step);
        let s = step.to_f32();
        let clipped = w.iter().filter(|v| v.abs() > 127.0 * s).count();
        for (a, b) in w.iter().zip(&d) {
            if a.abs() <= 127.0 * s {
                assert!((a - b).abs() <= 0.5 * s * 1.0001);
            }
        }
        assert!(clipped < 100);
        let mut fq = vec![0.0; w.len()];
        fake_quant_into(&w, step, 8, &mut fq);
        assert_eq!(fq, d);
    }

    #[test]
    fn constant_and_zero_tensors_are_legal() {
        let z = vec![0.0f32; 10];
        let s = choose_step(&z, 6);
        assert!(s.to_f32() > 0.0);
        assert!(quantize(&z, s, 6).iter().all(|&v| v == 0));
        let c = vec![0.3f32; 10];
        let s = choose_step(&c, 6);
        let d = dequantize(&quantize(&c, s, 6), s);
        assert!(d.iter().all(|&v| (v - 0.3).abs() < 0.01));
    }

    /// Squared error of quantizing `w` with `step` (the criterion `choose_step` minimises).
    fn sq_err(w: &[f32], step: Step, bits: u8) -> f64 {
        let d = dequantize(&quantize(w, step, bits), step);
        w.iter()
            .zip(&d)
            .map(|(&a, &b)| {
                let e = f64::from(a) - f64::from(b);
                e * e
            })
            .sum()
    }

    /// Tensors with edge distributions: all zeros, one value, only the extremes `±x`, sparse
    /// spikes, and plain random values at several scales (including huge and subnormal ones).
    fn tensors() -> impl proptest::strategy::Strategy<Value = Vec<f32>> {
        use proptest::prelude::*;
        let scale = prop_oneof![
            Just(1e-40f32), // subnormal
            Just(1e-6f32),
            Just(0.05f32),
            Just(1.0f32),
            Just(1e4f32),
            Just(3e38f32), // near f32::MAX
        ];
        let len = 1usize..300;
        prop_oneof![
            len.clone().prop_map(|n| vec![0.0f32; n]),
            (len.clone(), -1.0f32..1.0, scale.clone()).prop_map(|(n, v, s)| vec![v * s; n]),
            (
                proptest::collection::vec(any::<bool>(), 1..300),
                scale.clone()
            )
                .prop_map(|(signs, s)| signs.iter().map(|&b| if b { s } else { -s }).collect()),
            (proptest::collection::vec(0u8..100, 1..300), scale.clone())
                .prop_map(|(v, s)| v.iter().map(|&x| if x == 0 { s } else { 0.0 }).collect()),
            (proptest::collection::vec(-1.0f32..1.0, 1..300), scale)
                .prop_map(|(v, s)| v.iter().map(|&x| x * s).collect()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Symbols always lie in the bit width's range, whatever the input (NaN and
        /// infinities included), and fake quantization equals dequantize(quantize) on finite
        /// inputs (QAT trains exactly what the decoder reconstructs).
        #[test]
        fn quantize_is_in_range_and_matches_fake_quant(
            w in tensors(),
            specials in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just(f32::NAN),
                    proptest::prelude::Just(f32::INFINITY),
                    proptest::prelude::Just(f32::NEG_INFINITY),
                    proptest::prelude::Just(f32::MAX),
                    proptest::prelude::Just(f32::MIN),
                ],
                0..3,
            ),
            bits in 2u8..=16,
            mantissa in 1u16..=65535,
            exponent in 0u8..=64,
        ) {
            let step = Step { mantissa, exponent };
            let m = max_symbol(bits);
            let q = quantize(&w, step, bits);
            proptest::prop_assert_eq!(q.len(), w.len());
            proptest::prop_assert!(q.iter().all(|v| v.abs() <= m));
            let mut fq = vec![0.0f32; w.len()];
            fake_quant_into(&w, step, bits, &mut fq);
            let d = dequantize(&q, step);
            // Equal values (fake quantization may give -0.0 where the decoder gives +0.0).
            for (a, b) in fq.iter().zip(&d) {
                proptest::prop_assert!(a == b, "{} vs {}", a, b);
            }
            let mut x = w.clone();
            x.extend_from_slice(&specials);
            let q = quantize(&x, step, bits);
            proptest::prop_assert!(q.iter().all(|v| v.abs() <= m));
        }

        /// `choose_step` returns a valid step (positive, finite, in the format's ranges) whose
        /// error is never worse than the full-range step it starts from, and inside the
        /// clipping range every weight is reconstructed within half a step.
        #[test]
        fn chosen_step_is_valid_and_no_worse_than_full_range(w in tensors(), bits in 2u8..=16) {
            let step = choose_step(&w, bits);
            let s = step.to_f32();
            proptest::prop_assert!(s > 0.0 && s.is_finite());
            proptest::prop_assert!(step.mantissa >= 1 && step.exponent <= 64);
            let m = max_symbol(bits);
            let max_abs = w.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            if max_abs > 0.0 {
                let full = Step::from_f32(max_abs / m as f32);
                proptest::prop_assert!(sq_err(&w, step, bits) <= sq_err(&w, full, bits));
            } else {
                proptest::prop_assert!(quantize(&w, step, bits).iter().all(|&v| v == 0));
            }
            let d = dequantize(&quantize(&w, step, bits), step);
            for (&a, &b) in w.iter().zip(&d) {
                if f64::from(a.abs()) <= f64::from(m) * f64::from(s) {
                    // Half a step, plus one ulp of the product for the f32 rounding.
                    let tol = 0.5 * f64::from(s) + f64::from(b.abs()) * f64::from(f32::EPSILON);
                    proptest::prop_assert!(
                        (f64::from(a) - f64::from(b)).abs() <= tol,
                        "{} -> {} (step {})", a, b, s
                    );
                }
            }
        }
    }
}
