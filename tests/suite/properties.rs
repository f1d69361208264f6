//! Property tests of the entropy layer and the step representation on edge distributions.
//!
//! `tests/format.rs` already checks round trips of uniformly random symbols and that garbage
//! never panics; this file adds the distributions real weights and hostile encoders produce:
//! all zeros, one repeated symbol, only the extremes `±max_abs`, sparse spikes, steeply skewed
//! (Laplace-like) tensors, and tensors long enough to trigger the model's count halving
//! (`COUNT_LIMIT / COUNT_INC` = 16384 symbols). It also checks that the coder is deterministic,
//! that the rate estimate is exact and that a damaged canonical stream is always rejected or
//! decodes to the right length (never a panic).

use inr::entropy::{self, COUNT_INC, COUNT_LIMIT, MAX_ABS_LIMIT};
use inr::format::Step;
use proptest::prelude::*;

/// A tensor of `n` symbols in `-m..=m` drawn from one of the edge distributions.
fn tensor(m: i32) -> impl Strategy<Value = Vec<i32>> {
    let n = prop_oneof![4 => 0usize..400, 1 => 17_000usize..20_000];
    let any_sym = -m..=m;
    prop_oneof![
        // All zeros.
        n.clone().prop_map(|n| vec![0; n]),
        // One symbol repeated (any value, extremes included).
        (n.clone(), prop_oneof![Just(m), Just(-m), any_sym.clone()]).prop_map(|(n, v)| vec![v; n]),
        // Only the two extremes.
        (n.clone(), any::<u64>()).prop_map(move |(n, seed)| {
            (0..n)
                .map(|i| if (seed >> (i % 64)) & 1 == 1 { m } else { -m })
                .collect()
        }),
        // Sparse: zeros with rare extreme spikes.
        (n.clone(), 2usize..50).prop_map(move |(n, every)| {
            (0..n)
                .map(|i| match i % every {
                    0 => m,
                    1 if every > 10 => -m,
                    _ => 0,
                })
                .collect()
        }),
        // Skewed: |v| geometric-like, from a deterministic hash of the index.
        (n, any::<u32>()).prop_map(move |(n, seed)| {
            (0..n as u32)
                .map(|i| {
                    let h = (i ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(13);
                    let mag = (h.leading_zeros() as i32).min(m);
                    if h & 1 == 1 {
                        mag
                    } else {
                        -mag
                    }
                })
                .collect()
        }),
    ]
}

/// `max_abs` values: the degenerate 0, the smallest real alphabets, the 6/8-bit ones and the
/// largest (16-bit) one.
fn max_abs() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        Just(2u32),
        Just(31u32),
        Just(127u32),
        1u32..2048,
        Just(MAX_ABS_LIMIT),
    ]
}

fn case() -> impl Strategy<Value = (u32, Vec<Vec<i32>>)> {
    max_abs().prop_flat_map(|m| (Just(m), proptest::collection::vec(tensor(m as i32), 0..4)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Edge distributions round-trip exactly, the rate estimate equals the real size, and
    /// encoding is deterministic (same symbols, same bytes).
    #[test]
    fn edge_distributions_round_trip((m, tensors) in case()) {
        let refs: Vec<&[i32]> = tensors.iter().map(|t| t.as_slice()).collect();
        let bytes = entropy::encode_tensors(&refs, m).unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(&entropy::encode_tensors(&refs, m).unwrap(), &bytes);
        prop_assert_eq!(entropy::estimate_bits(&refs, m).unwrap(), 8 * bytes.len() as u64);
        let lens: Vec<usize> = tensors.iter().map(|t| t.len()).collect();
        prop_assert_eq!(entropy::decode_tensors(&bytes, &lens, m).unwrap(), tensors.clone());
        // With an alphabet of up to 255 symbols (8 bits), one symbol repeated (all zeros included) costs
        // far less than one bit per symbol (learning cost only, about k / (8 ln 2) * ln n
        // bits), also across the count halving.
        let n: usize = lens.iter().sum();
        let first = tensors.iter().flatten().next();
        let constant = tensors.iter().flatten().all(|v| Some(v) == first);
        if constant && n >= 4000 && (1..=127).contains(&m) {
            prop_assert!(8 * bytes.len() < n / 4, "{} bytes for {} constant symbols", bytes.len(), n);
        }
    }

    /// Damage to a canonical stream (one flipped bit, a dropped or an added word) never
    /// panics, and a stream that still decodes gives the requested lengths.
    #[test]
    fn damaged_streams_are_rejected_or_well_formed(
        (m, tensors) in case(),
        flip in any::<usize>(),
        edit in 0u8..3,
    ) {
        let refs: Vec<&[i32]> = tensors.iter().map(|t| t.as_slice()).collect();
        let mut bytes = entropy::encode_tensors(&refs, m).unwrap();
        let lens: Vec<usize> = tensors.iter().map(|t| t.len()).collect();
        match edit {
            0 if !bytes.is_empty() => {
                let bit = flip % (8 * bytes.len());
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            1 if bytes.len() >= 4 => bytes.truncate(bytes.len() - 4),
            _ => bytes.extend_from_slice(&(flip as u32).to_le_bytes()),
        }
        if let Ok(back) = entropy::decode_tensors(&bytes, &lens, m) {
            let got: Vec<usize> = back.iter().map(|t| t.len()).collect();
            prop_assert_eq!(got, lens);
            prop_assert!(back.iter().flatten().all(|v| v.unsigned_abs() <= m));
            // Only the canonical stream of the decoded symbols is accepted.
            let back_refs: Vec<&[i32]> = back.iter().map(|t| t.as_slice()).collect();
            let canon = entropy::encode_tensors(&back_refs, m).unwrap();
            prop_assert!(canon.len() <= bytes.len());
        }
    }

    /// Every valid step converts to a positive, finite f32 exactly equal to
    /// `mantissa * 2^-exponent`, and `from_f32` is idempotent on normalised steps.
    #[test]
    fn steps_are_exact_and_stable(mantissa in 1u16..=65535, exponent in 0u8..=64) {
        let s = Step { mantissa, exponent };
        let x = s.to_f32();
        prop_assert!(x > 0.0 && x.is_finite());
        prop_assert_eq!(f64::from(x), f64::from(mantissa) * (-f64::from(exponent)).exp2());
        let n = Step::from_f32(x);
        prop_assert_eq!(n.to_f32(), x, "{:?} -> {} -> {:?}", s, x, n);
        prop_assert_eq!(Step::from_f32(n.to_f32()), n);
    }

    /// `from_f32` is within 2^-16 relative of any positive input in the representable range.
    #[test]
    fn from_f32_is_close(x in 1e-14f32..65535.0) {
        let s = Step::from_f32(x);
        let rel = ((f64::from(s.to_f32()) - f64::from(x)) / f64::from(x)).abs();
        prop_assert!(rel <= 1.0 / 65536.0, "{} -> {:?} rel {}", x, s, rel);
    }
}

/// The halving threshold this file's long tensors are sized for.
#[test]
fn long_tensors_cross_the_count_halving() {
    assert!(17_000 > (COUNT_LIMIT / COUNT_INC) as usize);
}
