//! Weight sharing: the codebook section of format v2 (§4.7, flag bit 4) and `--kmeans`.

use crate::common;
use common::{assert_flips_and_truncations_are_caught, fix_crc, test_image};
use inr::format::{
    inspect, read_file, write_file, Arch, Codebook, FormatError, InrFile, Limits, QTensor, Step,
    FLAG_CODEBOOK,
};
use inr::{decode, encode_image, DecodeOptions, EncodeConfig, Preset};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

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

/// A random file where tensor t has a codebook of `ks[t]` centroids (`None`: uniform, 8 bits)
/// and, when `masked[t]`, a mask of density 0.5.
fn codebook_file(rng: &mut ChaCha8Rng, ks: &[Option<usize>], masked: &[bool]) -> InrFile {
    let a = arch();
    let lens = a.tensor_lens();
    let (mut tensors, mut masks, mut codebooks) = (Vec::new(), Vec::new(), Vec::new());
    for (t, &n) in lens.iter().enumerate() {
        let keep: Option<Vec<bool>> =
            masked[t].then(|| (0..n).map(|_| rng.gen_bool(0.5)).collect());
        let (bits, cb) = match ks[t] {
            Some(k) => {
                let mut values: BTreeSet<i32> = BTreeSet::new();
                while values.len() < k {
                    values.insert(rng.gen_range(-30000..=30000));
                }
                let cb = Codebook {
                    zero: rng.gen_range(0..k) as u16,
                    values: values.into_iter().collect(),
                };
                (cb.min_bits(), Some(cb))
            }
            None => (8, None),
        };
        let (lo, hi) = cb.as_ref().map_or((-127, 127), Codebook::symbol_range);
        let symbols = (0..n)
            .map(|i| match &keep {
                Some(k) if !k[i] => 0,
                _ => rng.gen_range(lo..=hi),
            })
            .collect();
        tensors.push(QTensor {
            step: Step::from_f32(0.001),
            bits,
            symbols,
        });
        masks.push(keep);
        codebooks.push(cb);
    }
    InrFile {
        width: 40,
        height: 30,
        arch: a,
        bits: tensors.iter().map(|t| t.bits).max().unwrap(),
        tensors,
        base_id: None,
        masks,
        seeded_masks: false,
        base_masks: false,
        codebooks,
    }
}

fn read(b: &[u8]) -> Result<InrFile, FormatError> {
    read_file(b, &Limits::default())
}

const KS: [Option<usize>; 8] = [None, None, Some(16), None, Some(1), None, Some(300), None];
const MASKED: [bool; 8] = [false, false, true, false, false, false, true, false];

#[test]
fn codebooks_survive_the_round_trip_and_define_the_weights() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let f = codebook_file(&mut rng, &KS, &MASKED);
    let bytes = write_file(&f).unwrap();
    assert_eq!(
        u16::from_le_bytes([bytes[6], bytes[7]]) & FLAG_CODEBOOK,
        FLAG_CODEBOOK
    );
    let g = read(&bytes).unwrap();
    assert_eq!(g, f);
    for t in 0..8 {
        let w = g.tensor_weights(t);
        let s = g.tensors[t].step.to_f32();
        match &g.codebooks[t] {
            Some(cb) => {
                for (&x, &v) in w.iter().zip(&g.tensors[t].symbols) {
                    let c = cb.values[(v + i32::from(cb.zero)) as usize];
                    assert_eq!(x.to_bits(), (c as f32 * s).to_bits());
                }
                let distinct: BTreeSet<u32> = w.iter().map(|x| x.to_bits()).collect();
                assert!(distinct.len() <= cb.len());
            }
            None => assert_eq!(w, g.tensors[t].dequantize()),
        }
    }
    let info = inspect(&bytes).unwrap();
    let cbi = info.codebooks.unwrap();
    assert_eq!(cbi.sizes, vec![0, 0, 16, 0, 1, 0, 300, 0]);
    assert_eq!(cbi.section_bytes, 1 + (4 + 32) + (4 + 2) + (4 + 600));
    // Without codebooks the flag stays clear.
    let plain = InrFile {
        seeded_masks: false,
        base_masks: false,
        codebooks: vec![None; 8],
        tensors: f
            .tensors
            .iter()
            .map(|t| QTensor {
                bits: 16,
                ..t.clone()
            })
            .collect(),
        bits: 16,
        ..f.clone()
    };
    let b = write_file(&plain).unwrap();
    assert_eq!(u16::from_le_bytes([b[6], b[7]]) & FLAG_CODEBOOK, 0);
    assert!(inspect(&b).unwrap().codebooks.is_none());
}

#[test]
fn writer_rejects_inconsistent_codebooks() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let f = codebook_file(&mut rng, &KS, &MASKED);
    let with = |edit: &dyn Fn(&mut InrFile)| {
        let mut g = f.clone();
        edit(&mut g);
        write_file(&g)
    };
    // A symbol beyond the codebook.
    let r = with(&|g| {
        let (_, hi) = g.codebooks[2].as_ref().unwrap().symbol_range();
        let kept = g.masks[2]
            .as_ref()
            .unwrap()
            .iter()
            .position(|&k| k)
            .unwrap();
        g.tensors[2].symbols[kept] = hi + 1;
    });
    assert!(
        matches!(r, Err(FormatError::CodebookIndex { tensor: 2, .. })),
        "{r:?}"
    );
    // Centroids out of order, a zero index beyond k, an empty codebook, a non-i16 centroid.
    for edit in [
        &(|g: &mut InrFile| g.codebooks[2].as_mut().unwrap().values.swap(0, 1))
            as &dyn Fn(&mut InrFile),
        &|g: &mut InrFile| g.codebooks[2].as_mut().unwrap().zero = 16,
        &|g: &mut InrFile| g.codebooks[4].as_mut().unwrap().values.clear(),
        &|g: &mut InrFile| g.codebooks[6].as_mut().unwrap().values[299] = 40000,
    ] {
        let r = with(edit);
        assert!(matches!(r, Err(FormatError::Codebook { .. })), "{r:?}");
    }
    // A bit width too narrow for the codebook's symbols.
    let r = with(&|g| g.tensors[6].bits = 4);
    assert!(r.is_err());
    // Codebook list of the wrong length.
    let r = with(&|g| g.codebooks.truncate(3));
    assert!(matches!(r, Err(FormatError::TensorCount { .. })), "{r:?}");
}

#[test]
fn hostile_codebook_sections_give_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let f = codebook_file(
        &mut rng,
        &[None, None, Some(5), None, Some(3), None, None, None],
        &[false; 8],
    );
    let bytes = write_file(&f).unwrap();
    let at = 30 + 4 * 8; // the codebook bitmap (no base reference, no sparsity section)
    assert_eq!(bytes[at], 0b0001_0100);
    // No tensor with a codebook; a bit beyond T cannot exist with T = 8.
    let mut b = bytes.clone();
    b[at] = 0;
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::InvalidField {
            field: "codebook presence bitmap",
            ..
        })
    ));
    // k = 0; zero index = k; a huge k (beyond the file).
    for (off, v, want_truncated) in [(1usize, 0u16, false), (3, 5, false), (1, u16::MAX, true)] {
        let mut b = bytes.clone();
        b[at + off..at + off + 2].copy_from_slice(&v.to_le_bytes());
        fix_crc(&mut b);
        let r = read(&b);
        if want_truncated {
            assert!(matches!(r, Err(FormatError::Truncated { .. })), "{r:?}");
        } else {
            assert!(r.is_err(), "k/zero = {v} accepted");
        }
    }
    // Centroids no longer ascending.
    let mut b = bytes.clone();
    b.swap(at + 5, at + 7);
    b.swap(at + 6, at + 8);
    fix_crc(&mut b);
    assert!(matches!(
        read(&b),
        Err(FormatError::Codebook { tensor: 2, .. })
    ));
    // Every single-byte change and every truncation, CRC fixed: an error or another valid
    // file, never a panic.
    assert_flips_and_truncations_are_caught(&bytes, &f, read, |b| {
        let _ = inspect(b);
    });
}

/// Distinct decoded values of each hidden matrix `W_1 .. W_D` of a file.
fn distinct_hidden_values(f: &InrFile) -> Vec<usize> {
    (2..f.tensors.len())
        .step_by(2)
        .map(|t| {
            let set: BTreeSet<u32> = f.tensor_weights(t).iter().map(|x| x.to_bits()).collect();
            set.len()
        })
        .collect()
}

#[test]
fn kmeans_with_k_centroids_decodes_to_at_most_k_values() {
    let img = test_image(32, 24);
    let mut psnr = Vec::new();
    for (k, density) in [(4usize, None), (6, Some(0.5)), (1000, None)] {
        let cfg = EncodeConfig {
            preset: Preset::Tiny,
            width: Some(24),
            depth: Some(3),
            steps: Some(300),
            kmeans: Some(k),
            density,
            base: inr::BaseChoice::None,
            ..Default::default()
        };
        let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).unwrap();
        let f = read(&e.bytes).unwrap();
        // Exactly the hidden matrices are shared; the first matrix and the biases are not.
        for (t, cb) in f.codebooks.iter().enumerate() {
            assert_eq!(cb.is_some(), t >= 2 && t % 2 == 0, "tensor {t}");
        }
        for (i, n) in distinct_hidden_values(&f).into_iter().enumerate() {
            assert!(n <= k, "k = {k}: matrix {} has {n} distinct values", i + 1);
            if k < 100 {
                assert!(n >= 2, "k = {k}: matrix {} collapsed to {n} value", i + 1);
            }
        }
        if density.is_some() {
            // Pruned weights decode to exactly 0 (their centroid is held at 0).
            for t in (2..f.tensors.len()).step_by(2) {
                let zeros = f.tensor_weights(t).iter().filter(|&&w| w == 0.0).count();
                let n = f.tensors[t].symbols.len();
                assert!(zeros >= n - (0.5 * n as f64).round() as usize, "tensor {t}");
            }
        }
        let dec = decode(&e.bytes, &DecodeOptions::default()).unwrap();
        assert_eq!(dec, e.recon);
        psnr.push(e.psnr);
    }
    // More centroids, better quality; 4 centroids still give a usable image.
    assert!(psnr[0] > 15.0, "{psnr:?}");
    assert!(psnr[2] > psnr[0] + 1.0, "{psnr:?}");
    // Deterministic: the same configuration gives the same bytes.
    let cfg = EncodeConfig {
        preset: Preset::Tiny,
        width: Some(16),
        depth: Some(2),
        steps: Some(100),
        kmeans: Some(8),
        base: inr::BaseChoice::None,
        ..Default::default()
    };
    let a = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).unwrap();
    let b = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).unwrap();
    assert_eq!(a.bytes, b.bytes);
    // Out-of-range k is refused before fitting.
    for bad in [
        EncodeConfig {
            kmeans: Some(1),
            ..cfg.clone()
        },
        EncodeConfig {
            kmeans: Some(5000),
            ..cfg.clone()
        },
    ] {
        assert!(encode_image(&img, &bad, &mut |_: &inr::Progress| {}).is_err());
    }
}

#[test]
fn cli_kmeans_and_l0_flags_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rgb_24x17.png");
    let out = dir.path().join("a.inr");
    let o = assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args([
            "--json", "encode", "--preset", "tiny", "--width", "12", "--depth", "3",
        ])
        .args([
            "--steps",
            "100",
            "--base",
            "none",
            "--kmeans",
            "5",
            "--density",
            "0.5",
        ])
        .args(["--prune-method", "l0", "-o"])
        .arg(&out)
        .arg(&input)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    assert_eq!(v["config"]["kmeans"], 5);
    assert_eq!(v["config"]["prune_method"], "l0");
    let o = assert_cmd::Command::cargo_bin("inr")
        .unwrap()
        .args(["--json", "info"])
        .arg(&out)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&o.get_output().stdout).unwrap();
    let sizes: Vec<u64> = v["info"]["codebooks"]["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 8);
    for (t, &k) in sizes.iter().enumerate() {
        if t >= 2 && t % 2 == 0 {
            assert!((2..=5).contains(&k), "tensor {t}: k = {k}");
        } else {
            assert_eq!(k, 0, "tensor {t}");
        }
    }
    let d = v["weights"]["hidden_density"].as_f64().unwrap();
    assert!(d <= 0.5 + 1e-9, "hidden density {d}");
    // Other modes refuse weight sharing with a clear message.
    for extra in [&["--mode", "grid"][..], &["--mode", "modulations"][..]] {
        let o = assert_cmd::Command::cargo_bin("inr")
            .unwrap()
            .args(["encode", "--kmeans", "4", "-o"])
            .arg(dir.path().join("b.inr"))
            .arg(&input)
            .args(extra)
            .assert()
            .failure();
        let err = String::from_utf8_lossy(&o.get_output().stderr).to_string();
        assert!(err.contains("kmeans"), "{err}");
    }
}

/// `--kmeans K --bpp B`: K is the largest allowed, rate control picks the largest K up to it
/// whose file fits, before the centroids are fine-tuned; the file lands within ±3 % of the
/// target, a lower rate takes fewer centroids, and each matrix has at most K values.
#[test]
fn kmeans_under_a_rate_target_picks_the_number_of_centroids() {
    let img = test_image(64, 48);
    let npx = 64.0 * 48.0;
    let mut got = Vec::new();
    for bpp in [2.0, 3.0] {
        let cfg = EncodeConfig {
            preset: Preset::Tiny,
            width: Some(24),
            depth: Some(3),
            steps: Some(200),
            kmeans: Some(256),
            target_bpp: Some(bpp),
            base: inr::BaseChoice::None,
            ..Default::default()
        };
        let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).unwrap();
        let real = 8.0 * e.bytes.len() as f64 / npx;
        assert!(
            (real - bpp).abs() <= 0.03 * bpp,
            "target {bpp} bpp, got {real}"
        );
        let f = read(&e.bytes).unwrap();
        let most = distinct_hidden_values(&f).into_iter().max().unwrap();
        assert!(most <= 256, "{most} values");
        assert_eq!(
            decode(&e.bytes, &DecodeOptions::default()).unwrap(),
            e.recon
        );
        got.push((most, e.psnr));
    }
    assert!(got[0].0 < got[1].0, "centroids by rate: {got:?}");
    assert!(got[0].1 < got[1].1, "PSNR by rate: {got:?}");
}
