//! Sparsity: the mask section of format v2 (§4.6, §5.8), pruning during fitting and rate
//! control (`--bpp`).

use crate::common;
use common::{assert_flips_and_truncations_are_caught, fix_crc, test_image};
use inr::entropy::{self, MaskShape};
use inr::format::{
    base_support, inspect, read_file, read_file_with_base, seed_hash, seeded_mask,
    seeded_threshold, write_file, Arch, FormatError, InrFile, Limits, QTensor, Step, FLAG_BASE,
    FLAG_BASE_MASKS, FLAG_SEEDED_MASKS, FLAG_SPARSE, VERSION, VERSION_2,
};
use inr::{decode, encode_image, DecodeOptions, EncodeConfig, Preset, PruneMethod, PruneScope};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn arch() -> Arch {
    Arch {
        coord_dims: 2,
        out_channels: 3,
        width: 12,
        depth: 3,
        pe_freqs: 0,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    }
}

/// A random file whose tensor t has mask density `dens[t]` (`None` = unmasked).
fn sparse_file(rng: &mut ChaCha8Rng, a: Arch, dens: &[Option<f64>]) -> InrFile {
    let lens = a.tensor_lens();
    assert_eq!(lens.len(), dens.len());
    let mut tensors = Vec::new();
    let mut masks = Vec::new();
    for (&n, &d) in lens.iter().zip(dens) {
        let bits = 6;
        let keep: Option<Vec<bool>> = d.map(|d| (0..n).map(|_| rng.gen_bool(d)).collect());
        let symbols = (0..n)
            .map(|i| match &keep {
                Some(k) if !k[i] => 0,
                _ => rng.gen_range(-31..=31),
            })
            .collect();
        tensors.push(QTensor {
            step: Step::from_f32(0.01),
            bits,
            symbols,
        });
        masks.push(keep);
    }
    InrFile {
        width: 40,
        height: 30,
        arch: a,
        bits: 6,
        tensors,
        masks,
        seeded_masks: false,
        base_masks: false,
        codebooks: Vec::new(),
        base_id: None,
    }
}

fn read(b: &[u8]) -> Result<InrFile, FormatError> {
    read_file(b, &Limits::default())
}

#[test]
fn masks_survive_the_round_trip_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a = arch();
    for dens in [
        [
            None,
            None,
            Some(0.5),
            None,
            Some(0.1),
            None,
            Some(0.9),
            None,
        ],
        [
            Some(0.3),
            Some(0.7),
            Some(0.0),
            Some(1.0),
            Some(0.02),
            None,
            None,
            Some(0.5),
        ],
    ] {
        let f = sparse_file(&mut rng, a, &dens);
        let bytes = write_file(&f).unwrap();
        assert_eq!(bytes[4], VERSION_2);
        assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), FLAG_SPARSE);
        let back = read(&bytes).unwrap();
        assert_eq!(back, f, "masks and symbols must come back bit for bit");
        let info = inspect(&bytes).unwrap();
        assert_eq!(info.version, 2);
        let sp = info.sparsity.expect("sparsity info");
        let kept: u64 = f
            .masks
            .iter()
            .flatten()
            .map(|m| m.iter().filter(|&&k| k).count() as u64)
            .sum();
        assert_eq!(sp.kept_values, kept);
        assert_eq!(
            sp.masked_tensors,
            dens.iter().filter(|d| d.is_some()).count()
        );
        // Kept symbols only: the payload shrinks with the density.
        assert!(
            info.total_bytes
                == info.header_bytes
                    + info.side_info_bytes
                    + sp.section_bytes
                    + info.payload_bytes
                    + info.crc_bytes
        );
    }
}

#[test]
fn files_without_masks_stay_version_1() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let f = sparse_file(&mut rng, arch(), &[None; 8]);
    let bytes = write_file(&f).unwrap();
    assert_eq!((bytes[4], bytes[6], bytes[7]), (VERSION, 0, 0));
    assert!(inspect(&bytes).unwrap().sparsity.is_none());
    // All-`None` masks are the same file as no masks.
    let g = InrFile {
        masks: Vec::new(),
        ..f.clone()
    };
    assert_eq!(write_file(&g).unwrap(), bytes);
}

#[test]
fn fully_pruned_layers_and_constant_tensors_are_legal() {
    let a = arch();
    let lens = a.tensor_lens();
    // Every tensor pruned to nothing: all payload groups are empty streams.
    let tensors: Vec<QTensor> = lens
        .iter()
        .map(|&n| QTensor {
            step: Step::from_f32(0.5),
            bits: 8,
            symbols: vec![0; n],
        })
        .collect();
    let f = InrFile {
        width: 5,
        height: 5,
        arch: a,
        bits: 8,
        tensors: tensors.clone(),
        masks: lens.iter().map(|&n| Some(vec![false; n])).collect(),
        base_id: None,
        seeded_masks: false,
        base_masks: false,
        codebooks: Vec::new(),
    };
    let bytes = write_file(&f).unwrap();
    assert_eq!(read(&bytes).unwrap(), f);
    let info = inspect(&bytes).unwrap();
    assert_eq!(info.payload_bytes, 0);
    assert_eq!(info.sparsity.unwrap().density, 0.0);
    let img = decode(&bytes, &DecodeOptions::default()).unwrap();
    assert_eq!(img.data.len(), 5 * 5 * 3);

    // One pruned layer, constant tensors (all 7, all kept) elsewhere, a constant mask.
    let mut g = f.clone();
    for (t, q) in g.tensors.iter_mut().enumerate() {
        if t != 2 {
            q.symbols.iter_mut().for_each(|s| *s = 7);
        }
    }
    g.masks = lens
        .iter()
        .enumerate()
        .map(|(t, &n)| match t {
            2 => Some(vec![false; n]),
            4 => Some(vec![true; n]),
            _ => None,
        })
        .collect();
    let bytes = write_file(&g).unwrap();
    assert_eq!(read(&bytes).unwrap(), g);
    decode(&bytes, &DecodeOptions::default()).unwrap();
}

#[test]
fn writer_rejects_inconsistent_masks() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut f = sparse_file(
        &mut rng,
        arch(),
        &[None, None, Some(0.5), None, None, None, None, None],
    );
    let pruned = f.masks[2]
        .as_ref()
        .unwrap()
        .iter()
        .position(|&k| !k)
        .unwrap();
    f.tensors[2].symbols[pruned] = 1;
    assert!(matches!(
        write_file(&f),
        Err(FormatError::MaskedNonZero { tensor: 2, index, value: 1 }) if index == pruned
    ));
    f.tensors[2].symbols[pruned] = 0;
    f.masks[2].as_mut().unwrap().pop();
    assert!(matches!(
        write_file(&f),
        Err(FormatError::MaskLength { index: 2, .. })
    ));
    f.masks.truncate(3);
    assert!(matches!(
        write_file(&f),
        Err(FormatError::TensorCount { .. })
    ));
}

#[test]
fn hostile_sparsity_sections_give_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let f = sparse_file(
        &mut rng,
        arch(),
        &[None, None, Some(0.4), None, Some(0.6), None, None, None],
    );
    let bytes = write_file(&f).unwrap();
    let t = arch().num_tensors();
    let bitmap_at = 30 + 4 * t;
    // Bitmap without a masked tensor (T = 8: one byte, no bit beyond T exists).
    let mut b = bytes.clone();
    b[bitmap_at] = 0;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField {
            field: "mask presence bitmap",
            ..
        })
    ));
    // Version 1 with the sparse flag, unknown v2 flag bits.
    let mut b = bytes.clone();
    b[4] = 1;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::UnknownFlags { flags: 2, .. })
    ));
    let mut b = bytes.clone();
    b[6] |= 64; // bit 3 is the grid mode (§13), bit 4 codebooks (§4.7), bit 5 seeded masks
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::UnknownFlags { flags: 66, .. })
    ));
    // Flag bit 2 selects the modulation layout (§12): refused by name.
    let mut b = bytes.clone();
    b[6] |= 4;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField { field: "flags", .. })
    ));
    // Mask stream length not a multiple of 4 / beyond the file.
    let len_at = bitmap_at + 1;
    let mut b = bytes.clone();
    b[len_at] ^= 1;
    fix_crc(&mut b);
    assert!(read(&b).is_err());
    let mut b = bytes.clone();
    b[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(read(&b), Err(FormatError::Truncated { .. })));
    // Every single-byte change and every truncation, with a fixed CRC: an error or (rarely)
    // another valid file, never a panic; changes inside the mask stream are caught by the
    // canonical-stream check unless they decode to another valid stream.
    assert_flips_and_truncations_are_caught(&bytes, &f, read, |b| {
        let _ = inspect(b);
    });
}

#[test]
fn mask_coding_approaches_the_binary_entropy_and_uses_structure() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let h = |d: f64| -(d * d.log2() + (1.0 - d) * (1.0 - d).log2());
    let (rows, cols) = (64usize, 64usize);
    let n = rows * cols;
    for d in [0.1f64, 0.3, 0.5] {
        let m: Vec<bool> = (0..n).map(|_| rng.gen_bool(d)).collect();
        let bytes = entropy::encode_masks(&[(&m, cols)]).unwrap();
        let back = entropy::decode_masks(&bytes, &[MaskShape { len: n, cols }]).unwrap();
        assert_eq!(back, vec![m.clone()]);
        let bits = 8.0 * bytes.len() as f64;
        let ideal = h(d) * n as f64;
        assert!(
            bits < 1.06 * ideal + 64.0,
            "d={d}: {bits} bits vs H={ideal}"
        );
        // CSR relative indices with 5-bit gaps (Deep Compression) cost more per kept weight.
        let kept = m.iter().filter(|&&k| k).count() as f64;
        let (entries, _) = entropy::csr_relative_index_entries(&m, 5);
        assert!(bits / kept < 5.0 * entries as f64 / kept, "d={d}");
    }
    // Row-structured mask (whole input rows pruned, 30 % kept): far below H(0.3) per element.
    let m: Vec<bool> = (0..n).map(|i| (i / cols) % 10 < 3).collect();
    let bytes = entropy::encode_masks(&[(&m, cols)]).unwrap();
    assert!(8.0 * (bytes.len() as f64) < 0.2 * h(0.3) * n as f64);
    // CSR entries: gaps up to 31 need no filler, a gap of 32 needs one.
    let mut m = vec![false; 100];
    m[30] = true; // gap 31
    m[62] = true; // gap 32: one filler
    assert_eq!(entropy::csr_relative_index_entries(&m, 5), (3, 1));
}

#[test]
fn pruning_reaches_the_exact_density_and_decodes_to_the_reconstruction() {
    let img = test_image(32, 24);
    for (scope, method) in [
        (PruneScope::PerLayer, PruneMethod::Magnitude),
        (PruneScope::Global, PruneMethod::Magnitude),
        (PruneScope::PerLayer, PruneMethod::L0),
        (PruneScope::Global, PruneMethod::L0),
        (PruneScope::PerLayer, PruneMethod::Seeded),
    ] {
        let cfg = EncodeConfig {
            preset: Preset::Tiny,
            width: Some(24),
            depth: Some(3),
            steps: Some(300),
            density: Some(0.3),
            prune_scope: scope,
            prune_method: method,
            ..Default::default()
        };
        let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).unwrap();
        let f = read(&e.bytes).unwrap();
        let lens = f.arch.tensor_lens();
        // Zero symbols in W_1..W_D: at least the pruned ones (kept ones may round to 0).
        let (mut zeros, mut total) = (0usize, 0usize);
        for t in (2..lens.len()).step_by(2) {
            let z = f.tensors[t].symbols.iter().filter(|&&s| s == 0).count();
            if scope == PruneScope::PerLayer {
                let pruned = lens[t] - (0.3 * lens[t] as f64).round() as usize;
                assert!(z >= pruned, "tensor {t}: {z} zeros < {pruned} pruned");
            }
            zeros += z;
            total += lens[t];
        }
        let pruned = total - (0.3 * total as f64).round() as usize;
        assert!(zeros >= pruned, "{zeros} zeros < {pruned} pruned");
        // When the mask section is used, it holds exactly the target density.
        if let Some(sp) = inspect(&e.bytes).unwrap().sparsity {
            let kept = (0.3 * sp.masked_values as f64).round() as u64;
            assert!(
                sp.kept_values.abs_diff(kept) <= 3,
                "{} vs {kept}",
                sp.kept_values
            );
        }
        if method == PruneMethod::Seeded {
            // The support is the seeded one and costs one threshold per matrix (§4.6.1).
            assert!(f.seeded_masks);
            let sp = inspect(&e.bytes).unwrap().sparsity.unwrap();
            assert!(sp.seeded);
            assert_eq!(sp.section_bytes, 1 + 4 * sp.masked_tensors as u64);
            for (t, m) in f.masks.iter().enumerate() {
                if let Some(keep) = m {
                    assert!(seeded_threshold(t, keep).is_some(), "tensor {t}");
                }
            }
        }
        let dec = decode(&e.bytes, &DecodeOptions::default()).unwrap();
        assert_eq!(dec, e.recon);
        assert!(e.psnr > 18.0, "psnr {}", e.psnr);
    }
}

/// A random file whose tensors `t` with `taus[t] = Some(tau)` carry the seeded mask of `tau`.
fn seeded_file(rng: &mut ChaCha8Rng, taus: &[Option<u32>]) -> InrFile {
    let a = arch();
    let lens = a.tensor_lens();
    let dens: Vec<Option<f64>> = taus.iter().map(|t| t.map(|_| 0.5)).collect();
    let mut f = sparse_file(rng, a, &dens);
    for (t, (&tau, &n)) in taus.iter().zip(&lens).enumerate() {
        if let Some(tau) = tau {
            let keep = seeded_mask(t, n, tau);
            for (s, &k) in f.tensors[t].symbols.iter_mut().zip(&keep) {
                if !k {
                    *s = 0;
                } else if *s == 0 {
                    *s = 1;
                }
            }
            f.masks[t] = Some(keep);
        }
    }
    f.seeded_masks = true;
    f
}

#[test]
fn seeded_mask_hash_matches_the_spec_test_vectors() {
    // codec-spec.md §4.6.1 (computed there by an independent implementation).
    assert_eq!(seed_hash(0, 0), 0xE220_A839);
    assert_eq!(seed_hash(2, 7), 0x7756_B8A5);
    assert_eq!(seed_hash(4, 1000), 0x57D3_5235);
    // Lower thresholds give nested masks; the kept fraction follows the threshold.
    let n = 20_000;
    let (lo, hi) = (
        seeded_mask(2, n, u32::MAX / 4),
        seeded_mask(2, n, u32::MAX / 2),
    );
    assert!(lo.iter().zip(&hi).all(|(&a, &b)| !a || b));
    let frac = lo.iter().filter(|&&k| k).count() as f64 / n as f64;
    assert!((frac - 0.25).abs() < 0.02, "{frac}");
    // A threshold reproduces exactly the masks of its form, and only those.
    assert_eq!(
        seeded_threshold(2, &lo).map(|t| seeded_mask(2, n, t)),
        Some(lo.clone())
    );
    let mut other = lo.clone();
    let first_pruned = other.iter().position(|&k| !k).unwrap();
    let first_kept = other.iter().position(|&k| k).unwrap();
    other.swap(first_pruned, first_kept);
    assert_eq!(seeded_threshold(2, &other), None);
    assert_eq!(seeded_threshold(2, &[false; 50]), Some(0));
}

#[test]
fn seeded_masks_round_trip_and_cost_four_bytes_per_tensor() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // A half-kept matrix, a fully pruned one, an all-kept one, a bias at a quarter.
    let all = seeded_threshold(6, &vec![true; arch().tensor_lens()[6]]).unwrap();
    let taus = [
        None,
        None,
        Some(u32::MAX / 2),
        None,
        Some(0),
        Some(u32::MAX / 4),
        Some(all),
        None,
    ];
    let f = seeded_file(&mut rng, &taus);
    let bytes = write_file(&f).unwrap();
    let g = read(&bytes).unwrap();
    assert_eq!(g, f);
    assert_eq!(
        write_file(&g).unwrap(),
        bytes,
        "rewriting changes the bytes"
    );
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    assert_eq!(flags, FLAG_SPARSE | FLAG_SEEDED_MASKS);
    let sp = inspect(&bytes).unwrap().sparsity.unwrap();
    assert!(sp.seeded);
    assert_eq!(
        (sp.masked_tensors, sp.section_bytes, sp.mask_stream_bytes),
        (4, 1 + 16, 0)
    );
    // The same masks through the mask stream cost more.
    let streamed = write_file(&InrFile {
        seeded_masks: false,
        ..f.clone()
    })
    .unwrap();
    assert!(
        streamed.len() > bytes.len(),
        "{} vs {}",
        streamed.len(),
        bytes.len()
    );
    assert_eq!(read(&streamed).unwrap().masks, f.masks);
    // A mask of another form cannot be written as seeded.
    let mut bad = f.clone();
    if let Some(Some(keep)) = bad.masks.get_mut(2) {
        let p = keep.iter().position(|&k| !k).unwrap();
        let k = keep.iter().position(|&k| k).unwrap();
        keep.swap(p, k);
        bad.tensors[2].symbols[k] = 0;
        bad.tensors[2].symbols[p] = 1;
    }
    assert!(matches!(
        write_file(&bad),
        Err(FormatError::MaskNotSeeded { tensor: 2 })
    ));
}

#[test]
fn hostile_seeded_sections_give_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let taus = [
        None,
        None,
        Some(1 << 31),
        None,
        Some(3 << 30),
        None,
        None,
        None,
    ];
    let f = seeded_file(&mut rng, &taus);
    let bytes = write_file(&f).unwrap();
    // Flag bit 5 without bit 1.
    let plain = write_file(&sparse_file(&mut rng, arch(), &[None; 8])).unwrap();
    let mut b = plain.clone();
    b[6] |= 32;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField { field: "flags", .. })
    ));
    // A presence bit beyond T (T = 8 here, so none exists in a one-byte bitmap): drop a
    // tensor's bit instead, leaving a threshold too many before the payload length.
    let bitmap_at = 30 + 4 * arch().num_tensors();
    let mut b = bytes.clone();
    b[bitmap_at] &= !(1 << 4);
    fix_crc(&mut b);
    assert!(read(&b).is_err());
    // Every single-byte change and every truncation: an error or another valid file.
    assert_flips_and_truncations_are_caught(&bytes, &f, read, |b| {
        let _ = inspect(b);
    });
}

#[test]
fn bpp_target_lands_within_three_percent() {
    let img = test_image(48, 40);
    let methods = [PruneMethod::Magnitude, PruneMethod::Seeded];
    for (bpp, method) in [2.0, 3.0].into_iter().flat_map(|b| methods.map(|m| (b, m))) {
        let cfg = EncodeConfig {
            preset: Preset::Tiny,
            width: Some(24),
            depth: Some(3),
            steps: Some(300),
            target_bpp: Some(bpp),
            prune_method: method,
            ..Default::default()
        };
        let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).unwrap();
        if method == PruneMethod::Seeded {
            assert!(
                read(&e.bytes).unwrap().seeded_masks
                    || inspect(&e.bytes).unwrap().sparsity.is_none()
            );
        }
        let real = 8.0 * e.bytes.len() as f64 / (48.0 * 40.0);
        assert_eq!(real, e.bpp);
        assert!(
            (real - bpp).abs() <= 0.03 * bpp,
            "target {bpp} bpp, file {real} bpp"
        );
        let dec = decode(&e.bytes, &DecodeOptions::default()).unwrap();
        assert_eq!(dec, e.recon);
        assert!(e.psnr > 18.0, "psnr {}", e.psnr);
    }
    let bad = EncodeConfig {
        target_bpp: Some(1.0),
        target_psnr: Some(30.0),
        ..Default::default()
    };
    assert!(encode_image(&img, &bad, &mut |_: &inr::Progress| {}).is_err());
}

/// Under a rate target from a random start the width is the one the byte budget buys (about
/// 1.3 hidden weights per byte, a multiple of 8); a given width, or a base, keeps its own.
#[test]
fn a_rate_target_from_a_random_start_picks_the_width() {
    use inr::width_for_rate;
    // A Kodak image (768x512, 10 layers) at 0.125 / 0.25 / 0.5 bpp: the best widths measured
    // on the training images at 1,000 steps were 32, 40 and 56–60.
    assert_eq!(width_for_rate(6_144, 10), 32);
    assert_eq!(width_for_rate(12_288, 10), 40);
    assert_eq!(width_for_rate(24_576, 10), 56);
    assert_eq!(width_for_rate(0, 10), 8);
    assert_eq!(width_for_rate(u64::MAX, 10), 256);
    let img = test_image(48, 40);
    let cfg = EncodeConfig {
        preset: Preset::Tiny,
        depth: Some(3),
        steps: Some(100),
        target_bpp: Some(3.0),
        base: inr::BaseChoice::None,
        ..Default::default()
    };
    let width_of = |cfg: &EncodeConfig| {
        let e = encode_image(&img, cfg, &mut |_: &inr::Progress| {}).unwrap();
        assert!((e.bpp - 3.0).abs() <= 0.03 * 3.0, "bpp {}", e.bpp);
        read(&e.bytes).unwrap().arch.width
    };
    // 720 bytes, two hidden matrices: sqrt(1.3 · 720 / 2) = 21.6, so 24 (the tiny preset's
    // own width is also 24, so a second budget asks for another one: 240 bytes, 12.5, so 16).
    assert_eq!(usize::from(width_of(&cfg)), width_for_rate(720, 3));
    let low = EncodeConfig {
        target_bpp: Some(1.0),
        ..cfg.clone()
    };
    let e = encode_image(&img, &low, &mut |_: &inr::Progress| {}).unwrap();
    assert_eq!(usize::from(read(&e.bytes).unwrap().arch.width), 16);
    assert_eq!(width_for_rate(240, 3), 16);
    // Without an image, `arch` reports the preset's width.
    assert_eq!(low.arch(3).unwrap().width, 24);
    let given = EncodeConfig {
        width: Some(12),
        ..cfg.clone()
    };
    assert_eq!(width_of(&given), 12);
}

#[test]
fn cli_density_and_bpp_flags_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rgb_24x17.png");
    let out = dir.path().join("a.inr");
    assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args([
            "encode", "--preset", "tiny", "--width", "12", "--depth", "3", "--steps", "100",
        ])
        .args(["--density", "0.25", "--prune-scope", "global", "-o"])
        .arg(&out)
        .arg(&input)
        .assert()
        .success();
    let o = assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "info"])
        .arg(&out)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    let d = v["weights"]["hidden_density"].as_f64().unwrap();
    assert!(d <= 0.25 + 1e-9, "hidden density {d}");
    // Rate control and an explicit density together: the density is fixed, steps move.
    let out2 = dir.path().join("b.inr");
    let o = assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args([
            "--json", "encode", "--preset", "tiny", "--width", "12", "--depth", "3",
        ])
        .args(["--steps", "100", "--density", "1", "--bpp", "8", "-o"])
        .arg(&out2)
        .arg(&input)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    let bpp = v["bpp"].as_f64().unwrap();
    assert!((bpp - 8.0).abs() <= 0.24, "bpp {bpp}");
}

#[test]
fn pruning_and_rate_control_from_a_base_code_residuals() {
    let img = test_image(32, 24);
    let cfg = EncodeConfig {
        preset: Preset::Tiny,
        width: Some(16),
        depth: Some(3),
        steps: Some(300),
        ..Default::default()
    };
    let arch = cfg.arch(3).unwrap();
    let shape = inr::bench_api::shape_of(&arch);
    let base = inr::base::Base::new(arch, inr::bench_api::siren_init(&shape, 42), "t".into())
        .expect("base");
    let opts = DecodeOptions {
        bases: vec![base.clone()],
        ..Default::default()
    };
    for method in [PruneMethod::Magnitude, PruneMethod::L0] {
        let e = encode_image(
            &img,
            &EncodeConfig {
                density: Some(0.3),
                prune_method: method,
                base: inr::BaseChoice::Custom(base.clone()),
                ..cfg.clone()
            },
            &mut |_: &inr::Progress| {},
        )
        .unwrap();
        let f = read(&e.bytes).unwrap();
        assert_eq!(f.base_id, Some(base.id()));
        // At least 70 % of each hidden matrix has residual 0, i.e. decodes to the base weight.
        let lens = f.arch.tensor_lens();
        for t in (2..lens.len()).step_by(2) {
            let z = f.tensors[t].symbols.iter().filter(|&&s| s == 0).count();
            let pruned = lens[t] - (0.3 * lens[t] as f64).round() as usize;
            assert!(
                z >= pruned,
                "{method:?} tensor {t}: {z} zeros < {pruned} pruned"
            );
        }
        assert_eq!(decode(&e.bytes, &opts).unwrap(), e.recon);
        assert!(decode(&e.bytes, &DecodeOptions::default()).is_err());
        // (A random base: the pruned weights keep random values, so the band is lower.)
        assert!(e.psnr > 15.0, "{method:?}: psnr {}", e.psnr);
    }
    // Rate control from the base lands in the band too.
    let img = test_image(48, 40);
    let e = encode_image(
        &img,
        &EncodeConfig {
            target_bpp: Some(3.0),
            base: inr::BaseChoice::Custom(base.clone()),
            ..cfg.clone()
        },
        &mut |_: &inr::Progress| {},
    )
    .unwrap();
    assert_eq!(read(&e.bytes).unwrap().base_id, Some(base.id()));
    assert!((e.bpp - 3.0).abs() <= 0.03 * 3.0, "bpp {}", e.bpp);
    assert_eq!(decode(&e.bytes, &opts).unwrap(), e.recon);
}

#[test]
fn an_unreachable_high_rate_never_clips_the_weights() {
    // A tiny network cannot spend 40 bpp: rate control makes the steps finer only as far as
    // the bit widths (at most 16) allow, so quality never falls below the in-band file.
    // (One width for all matrices: with the per-matrix allocation this network's 3 bpp file
    // is 614 bytes at 33.33 dB, better than the in-band 722-byte one at 33.22 dB, and rate
    // control keeps the smaller, better file, so there is no in-band file to compare with.)
    let img = test_image(48, 40);
    let run = |bpp: f64| {
        let cfg = EncodeConfig {
            preset: Preset::Tiny,
            width: Some(12),
            depth: Some(3),
            steps: Some(300),
            density: Some(1.0),
            target_bpp: Some(bpp),
            base: inr::BaseChoice::None,
            bit_allocation: inr::BitAllocation::Uniform,
            ..Default::default()
        };
        encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).unwrap()
    };
    let (ok, high) = (run(3.0), run(40.0));
    assert!(
        high.bpp < 40.0 && high.bpp > ok.bpp,
        "{} vs {}",
        high.bpp,
        ok.bpp
    );
    assert!(
        high.psnr >= ok.psnr - 0.2,
        "{} dB vs {} dB",
        high.psnr,
        ok.psnr
    );
}

/// A sparse base of `arch()` (random non-zero weights, the hidden matrices `W_1`, `W_2` at
/// about half density, `W_3` dense) and a file coded from it with its support as masks.
fn base_masks_file(rng: &mut ChaCha8Rng) -> (InrFile, Vec<f32>) {
    let a = arch();
    let lens = a.tensor_lens();
    let mut base = Vec::new();
    for (t, &n) in lens.iter().enumerate() {
        for _ in 0..n {
            let v: f32 = rng.gen_range(0.1..1.0) * if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
            base.push(if (t == 2 || t == 4) && rng.gen_bool(0.5) {
                0.0
            } else {
                v
            });
        }
    }
    // One pruned weight is -0.0: zero too (§4.6.2).
    let first_zero = lens[..2].iter().sum::<usize>()
        + base[lens[..2].iter().sum::<usize>()..]
            .iter()
            .position(|&v| v == 0.0)
            .unwrap();
    base[first_zero] = -0.0;
    let support = base_support(&a, &base);
    let mut f = sparse_file(rng, a, &[None; 8]);
    f.masks = (0..lens.len())
        .map(|t| (t == 2 || t == 4).then(|| support[t].clone()))
        .collect();
    for (t, m) in f.masks.iter().enumerate() {
        if let Some(keep) = m {
            for (s, &k) in f.tensors[t].symbols.iter_mut().zip(keep) {
                if !k {
                    *s = 0;
                }
            }
        }
    }
    f.base_masks = true;
    f.base_id = Some(0x0123_4567_89ab_cdef);
    (f, base)
}

#[test]
fn base_masks_round_trip_with_the_base_only() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (f, base) = base_masks_file(&mut rng);
    let bytes = write_file(&f).unwrap();
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    assert_eq!(flags, FLAG_BASE | FLAG_SPARSE | FLAG_BASE_MASKS);
    let limits = Limits::default();
    // Without the base's weights: a typed error naming the base.
    let err = read(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::BaseMasksNeedBase {
                id: 0x0123_4567_89ab_cdef
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0123456789abcdef"), "{err}");
    let g = read_file_with_base(&bytes, &limits, Some(&base)).unwrap();
    assert_eq!(g, f);
    assert_eq!(
        write_file(&g).unwrap(),
        bytes,
        "rewriting changes the bytes"
    );
    // Inspection needs no base: the counts give the density; 4 bytes per masked tensor.
    let sp = inspect(&bytes).unwrap().sparsity.unwrap();
    assert!(sp.from_base && !sp.seeded);
    let kept: u64 = f
        .masks
        .iter()
        .flatten()
        .map(|m| m.iter().filter(|&&k| k).count() as u64)
        .sum();
    assert_eq!(
        (sp.masked_tensors, sp.section_bytes, sp.kept_values),
        (2, 1 + 8, kept)
    );
    // The same masks through the mask stream cost more.
    let streamed = write_file(&InrFile {
        base_masks: false,
        ..f.clone()
    })
    .unwrap();
    assert!(
        streamed.len() > bytes.len(),
        "{} vs {}",
        streamed.len(),
        bytes.len()
    );
    assert!(read(&streamed).is_ok(), "the streamed form needs no base");
    // Another base: one weight more or less in a support breaks its count.
    for delta in [0.0f32, 0.5] {
        let mut other = base.clone();
        let off = arch().tensor_lens()[..2].iter().sum::<usize>();
        let i = other[off..]
            .iter()
            .position(|&v| (v == 0.0) == (delta != 0.0))
            .unwrap();
        other[off + i] = delta;
        assert!(matches!(
            read_file_with_base(&bytes, &limits, Some(&other)),
            Err(FormatError::InvalidField {
                field: "mask count",
                ..
            })
        ));
    }
    assert!(matches!(
        read_file_with_base(&bytes, &limits, Some(&base[1..])),
        Err(FormatError::InvalidField {
            field: "base weight count",
            ..
        })
    ));
    // The writer needs a base reference, and base masks are not seeded ones.
    for bad in [
        InrFile {
            base_id: None,
            ..f.clone()
        },
        InrFile {
            seeded_masks: true,
            ..f.clone()
        },
    ] {
        assert!(matches!(
            write_file(&bad),
            Err(FormatError::InvalidField { .. })
        ));
    }
}

#[test]
fn hostile_base_mask_sections_give_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let (f, base) = base_masks_file(&mut rng);
    let bytes = write_file(&f).unwrap();
    let limits = Limits::default();
    // Flag bit 9 without bit 0, or with bit 5.
    let plain = write_file(&sparse_file(
        &mut rng,
        arch(),
        &[None, None, Some(0.5), None, None, None, None, None],
    ))
    .unwrap();
    for (extra, on) in [(FLAG_BASE_MASKS, &plain), (FLAG_SEEDED_MASKS, &bytes)] {
        let mut b = on.clone();
        let flags = u16::from_le_bytes([b[6], b[7]]) | extra | FLAG_BASE_MASKS;
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        fix_crc(&mut b);
        assert!(
            matches!(
                read_file_with_base(&b, &limits, Some(&base)),
                Err(FormatError::InvalidField { field: "flags", .. })
            ),
            "flags {flags:#06x}"
        );
    }
    // Every single-byte change and every truncation: an error or another valid file.
    assert_flips_and_truncations_are_caught(
        &bytes,
        &f,
        |b| read_file_with_base(b, &limits, Some(&base)),
        |b| {
            let _ = inspect(b);
            let _ = read(b);
        },
    );
}
