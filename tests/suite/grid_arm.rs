//! §5.11 / §13.9: latents coded with an autoregressive context model (ARM, flag bit 12).

use inr::arm::{Arm, ArmLayout, ARM_INPUTS};
use inr::arm_fit::{fit_arm, ArmFit};
use inr::entropy::{self, ArmShape, GridContexts};
use inr::format::{
    self, max_abs_for_bits, GridInrFile, Limits, FLAG_GRID_ARM, FLAG_GRID_ARM_PRIOR,
};
use inr::media::Image;
use inr::{decode, encode_grid, DecodeOptions, GridEncodeConfig};
use rand::{Rng, SeedableRng};

/// A textured image: smooth ramps and a pseudo-random texture, so that the latents have
/// structure for an ARM and detail to code.
fn texture(w: u32, h: u32, seed: u64) -> Image {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            for c in 0..3 {
                let v = 0.3
                    + 0.4 * fx * fy
                    + 0.15 * ((fx * 9.0 + c as f32) * (1.0 + 4.0 * fy)).sin()
                    + 0.08 * rng.gen_range(-1.0f32..1.0);
                data.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    Image {
        width: w,
        height: h,
        channels: 3,
        data,
    }
}

fn cfg(steps: usize, lambda: f32) -> GridEncodeConfig {
    let mut c = GridEncodeConfig {
        levels: 5,
        width: 12,
        ..Default::default()
    };
    c.fit.steps = steps;
    c.fit.lambda = lambda;
    c
}

const TINY_ARM: ArmFit = ArmFit {
    width: 4,
    steps: 60,
    batch: 256,
    lr: 1e-2,
    seed: 7,
    prior_models: false,
};

/// A small grid file's latents recoded with a tiny ARM fitted to them.
fn arm_file() -> (Vec<u8>, GridInrFile, Vec<u8>) {
    let img = texture(48, 40, 1);
    let enc = encode_grid(&img, &cfg(80, 0.0005), &mut |_| {}).unwrap();
    let f = format::read_grid_file(&enc.bytes, &Limits::default()).unwrap();
    let plain = GridInrFile {
        predictor: None,
        contexts: GridContexts::Five,
        ..f.clone()
    };
    let dims = format::grid_level_dims(f.width, f.height, f.arch.coord_dims);
    let n = dims.len();
    let levels = &f.tensors[f.tensors.len() - n..];
    let grids: Vec<(&[i32], ArmShape)> = (0..n)
        .rev()
        .map(|l| {
            let t = &levels[l];
            let s = ArmShape {
                len: t.symbols.len(),
                cols: dims[l].0 as usize,
                max_abs: max_abs_for_bits(t.bits),
                res_max_abs: 0,
                level: l,
                layout: ArmLayout::Image,
            };
            (t.symbols.as_slice(), s)
        })
        .collect();
    let arm = fit_arm(&grids, n, &TINY_ARM).unwrap().swap_remove(2);
    let with = GridInrFile {
        arm: Some(arm),
        ..plain.clone()
    };
    let bytes = format::write_grid_file(&with).unwrap();
    (bytes, with, format::write_grid_file(&plain).unwrap())
}

fn fix_crc(b: &mut [u8]) {
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

/// Checks that `bytes` reads back to `f`, is the writer's output for it (canonical) and decodes
/// to the image of `plain` (the same latents coded without an ARM); returns its inspection.
fn round_trips_as_the_plain_file(bytes: &[u8], f: &GridInrFile, plain: &[u8]) -> format::FileInfo {
    let back = format::read_grid_file(bytes, &Limits::default()).unwrap();
    assert_eq!(&back, f);
    assert_eq!(format::write_grid_file(&back).unwrap(), bytes, "canonical");
    let opts = DecodeOptions::default();
    assert_eq!(decode(bytes, &opts).unwrap(), decode(plain, &opts).unwrap());
    inr::inspect(bytes).unwrap()
}

#[test]
fn arm_files_round_trip_canonically_and_decode_as_the_plain_file() {
    let (bytes, f, plain) = arm_file();
    let info = round_trips_as_the_plain_file(&bytes, &f, &plain);
    assert_eq!(info.flags, 0x1008);
    let g = info.grid.unwrap();
    let a = g.arm.expect("ARM info");
    assert_eq!(
        (a.width, a.params as usize),
        (4, f.arm.as_ref().unwrap().num_params())
    );
    assert_eq!(a.res_bits.len(), 5);
    assert_eq!(info.total_bytes, bytes.len() as u64);
}

#[test]
fn the_arm_stream_round_trips_random_grids_and_refuses_garbage() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for case in 0..8 {
        let levels = 1 + case % 3;
        let width = 1 + case * 3;
        let lens = Arm::tensor_lens(width, levels);
        let t: Vec<Vec<i32>> = lens
            .iter()
            .map(|&n| (0..n).map(|_| rng.gen_range(-300..300)).collect())
            .collect();
        // Odd cases code with the prior models of §5.11.1.
        let arm = Arm::from_tensors(width, 1 + (case % 8) as u8, levels, t)
            .unwrap()
            .with_prior_models(case % 2 == 1);
        let dims: Vec<(usize, usize)> = (0..levels).map(|l| (9 >> l, 7 >> l)).collect();
        let vals: Vec<Vec<i32>> = dims
            .iter()
            .map(|&(w, h)| (0..w * h).map(|_| rng.gen_range(-20..=20)).collect())
            .collect();
        let grids: Vec<(&[i32], ArmShape)> = (0..levels)
            .rev()
            .map(|l| {
                let s = ArmShape {
                    len: vals[l].len(),
                    cols: dims[l].0,
                    max_abs: 31,
                    res_max_abs: 0,
                    level: l,
                    layout: ArmLayout::Image,
                };
                (vals[l].as_slice(), s)
            })
            .collect();
        let (bits, stream) = entropy::encode_arm_grids_fitted(&grids, &arm).unwrap();
        let shapes: Vec<ArmShape> = grids
            .iter()
            .zip(&bits)
            .map(|(g, &b)| ArmShape {
                res_max_abs: max_abs_for_bits(b),
                ..g.1
            })
            .collect();
        let back = entropy::decode_arm_grids(&stream, &shapes, &arm).unwrap();
        let want: Vec<Vec<i32>> = grids.iter().map(|g| g.0.to_vec()).collect();
        assert_eq!(back, want, "case {case}");
        // Damaged streams are errors or other values, never a panic; truncated ones errors.
        for k in 0..stream.len() {
            let mut bad = stream.clone();
            bad[k] ^= 0x5a;
            let _ = entropy::decode_arm_grids(&bad, &shapes, &arm);
        }
        for n in (0..stream.len()).step_by(4) {
            assert!(entropy::decode_arm_grids(&stream[..n], &shapes, &arm).is_err());
        }
        // A level the ARM lacks is refused.
        let mut far = shapes.clone();
        far[0].level = levels;
        assert!(entropy::decode_arm_grids(&stream, &far, &arm).is_err());
    }
    assert_eq!(ARM_INPUTS, 13);
}

#[test]
fn hostile_arm_headers_and_truncations_give_errors() {
    let (bytes, f, _) = arm_file();
    let limits = Limits::default();
    for n in 0..bytes.len() {
        assert!(
            format::read_grid_file(&bytes[..n], &limits).is_err(),
            "prefix {n}"
        );
    }
    // The ARM header follows the fixed header and the step table.
    let at = format::HEADER_BYTES + format::STEP_BYTES * f.tensors.len();
    let cases: [(usize, u8, &str); 4] = [
        (at, 0, "ARM width"),
        (at, 33, "ARM width"),
        (at + 1, 0, "ARM fractional bits"),
        (at + 1, 9, "ARM fractional bits"),
    ];
    for (pos, v, what) in cases {
        let mut b = bytes.clone();
        b[pos] = v;
        fix_crc(&mut b);
        let e = format::read_grid_file(&b, &limits).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
    // Flag bit 12 with the predictor or context flags is refused.
    for extra in [format::FLAG_GRID_PREDICT, format::FLAG_GRID_CONTEXTS] {
        let mut b = bytes.clone();
        let flags = u16::from_le_bytes([b[6], b[7]]) | extra;
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        fix_crc(&mut b);
        let e = format::read_grid_file(&b, &limits).unwrap_err();
        assert!(e.to_string().contains("flag bit 12"), "{e}");
    }
    // Every byte of the ARM header and of the payload flipped (CRC fixed): no panic.
    for pos in at..bytes.len() - 4 {
        let mut b = bytes.clone();
        b[pos] ^= 0xa5;
        fix_crc(&mut b);
        let _ = decode(&b, &DecodeOptions::default());
    }
    // The writer refuses an ARM with a predictor, or with another level count.
    let mut bad = f.clone();
    bad.contexts = GridContexts::Twelve;
    assert!(format::write_grid_file(&bad).is_err());
    let mut bad = f.clone();
    if let Some(a) = bad.arm.as_mut() {
        a.levels += 1;
        a.b1.extend(vec![0; a.width]);
    }
    assert!(format::write_grid_file(&bad).is_err());
    // An ARM whose public fields disagree (a width beyond 32, a short tensor, no fractional
    // bits) is an error of the writer and of the coder, not a panic.
    let breaks: [fn(&mut Arm); 3] = [
        |a| a.width = 40,
        |a| {
            a.w2.pop();
        },
        |a| a.frac_bits = 0,
    ];
    for broken in breaks {
        let mut bad = f.clone();
        let a = bad.arm.as_mut().unwrap();
        broken(a);
        assert!(!a.is_valid());
        let a = a.clone();
        assert!(format::write_grid_file(&bad).is_err());
        let g = [0i32; 6];
        let s = ArmShape {
            len: 6,
            cols: 3,
            max_abs: 7,
            res_max_abs: 7,
            level: 0,
            layout: ArmLayout::Image,
        };
        assert!(entropy::encode_arm_grids(&[(&g[..], s)], &a).is_err());
    }
    assert_eq!(
        u16::from_le_bytes([bytes[6], bytes[7]]) & FLAG_GRID_ARM,
        FLAG_GRID_ARM
    );
}

/// On an image large enough for it, the encoder fits an ARM and keeps it when the file is
/// smaller; the file decodes to the reported reconstruction, the same as without the ARM.
#[test]
fn the_encoder_keeps_an_arm_only_when_it_is_smaller() {
    let img = texture(400, 336, 2); // 183k latents at 5 levels: above the encoder's minimum
    let mut with = cfg(40, 0.002);
    with.arm = Some(ArmFit {
        steps: 300,
        ..Default::default()
    });
    let without = GridEncodeConfig {
        arm: None,
        ..with.clone()
    };
    let a = encode_grid(&img, &with, &mut |_| {}).unwrap();
    let b = encode_grid(&img, &without, &mut |_| {}).unwrap();
    // On this texture the ARM pays for its weights.
    assert!(
        a.bytes.len() < b.bytes.len(),
        "{} >= {}",
        a.bytes.len(),
        b.bytes.len()
    );
    assert_eq!(
        decode(&a.bytes, &DecodeOptions::default()).unwrap(),
        a.recon
    );
    let flags = u16::from_le_bytes([a.bytes[6], a.bytes[7]]);
    assert_eq!(flags & FLAG_GRID_ARM, FLAG_GRID_ARM);
    // ... with the prior models of §5.11.1, smaller here than the flat ones.
    assert_eq!(flags & FLAG_GRID_ARM_PRIOR, FLAG_GRID_ARM_PRIOR);
    let f = format::read_grid_file(&a.bytes, &Limits::default()).unwrap();
    let mut flat = f.clone();
    flat.arm = flat.arm.map(|a| a.with_prior_models(false));
    let flat = format::write_grid_file(&flat).unwrap();
    assert!(
        flat.len() > a.bytes.len(),
        "{} <= {}",
        flat.len(),
        a.bytes.len()
    );
    assert_eq!(a.recon, b.recon, "the same fit, coded two ways");
    let flags_b = u16::from_le_bytes([b.bytes[6], b.bytes[7]]);
    assert_eq!(flags_b & FLAG_GRID_ARM, 0);
}

/// An ARM whose output is the same for every latent: mean `mean / 256`, log-scale
/// `log_scale / 256` (all weights 0, the output biases set; F = 8).
fn constant_arm(levels: usize, mean: i32, log_scale: i32) -> Arm {
    let lens = Arm::tensor_lens(2, levels);
    let mut t: Vec<Vec<i32>> = lens.iter().map(|&n| vec![0; n]).collect();
    t[5] = vec![mean, log_scale];
    Arm::from_tensors(2, 8, levels, t).unwrap()
}

/// §5.11.1: latents drawn from the Laplace the ARM predicts code in fewer bytes with the prior
/// models than with the flat ones (a short grid, where the flat models spend most on learning
/// the shape), both streams decode to the latents, and with the mean's fraction the prior's
/// centre moves with it.
#[test]
fn prior_models_code_latents_of_the_predicted_laplace_in_fewer_bytes() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for (mean, ln_b) in [(0.0f64, 0.0f64), (0.3, 0.5), (-0.4, 1.2), (0.1, -0.6)] {
        let b = ln_b.exp();
        let vals: Vec<i32> = (0..600)
            .map(|_| {
                let u: f64 = rng.gen_range(-0.5..0.5);
                let x = mean - b * u.signum() * (1.0 - 2.0 * u.abs()).ln();
                (x.round() as i32).clamp(-60, 60)
            })
            .collect();
        let s = ArmShape {
            len: vals.len(),
            cols: 30,
            max_abs: 63,
            res_max_abs: 0,
            level: 0,
            layout: ArmLayout::Image,
        };
        let flat = constant_arm(1, (mean * 256.0) as i32, (ln_b * 256.0) as i32);
        let prior = flat.clone().with_prior_models(true);
        let grids = [(&vals[..], s)];
        let (bf, sf) = entropy::encode_arm_grids_fitted(&grids, &flat).unwrap();
        let (bp, sp) = entropy::encode_arm_grids_fitted(&grids, &prior).unwrap();
        assert!(
            sp.len() < sf.len(),
            "mean {mean}, ln b {ln_b}: {} >= {}",
            sp.len(),
            sf.len()
        );
        for ((stream, bits), arm) in [(&sf, &bf), (&sp, &bp)].into_iter().zip([&flat, &prior]) {
            let shape = ArmShape {
                res_max_abs: max_abs_for_bits(bits[0]),
                ..s
            };
            let back = entropy::decode_arm_grids(stream, &[shape], arm).unwrap();
            assert_eq!(back, vec![vals.clone()]);
        }
        // The flat decoder does not read the prior stream as these latents (nor as anything:
        // it is a different code).
        let shape = ArmShape {
            res_max_abs: max_abs_for_bits(bp[0]),
            ..s
        };
        assert_ne!(
            entropy::decode_arm_grids(&sp, &[shape], &flat).ok(),
            Some(vec![vals.clone()])
        );
    }
}

/// Files with the prior models (flag bit 13) round trip canonically and decode as the plain
/// file; bit 13 without bit 12, or with a residual wider than 12 bits, is refused; an audio
/// segment cannot carry them; the coder refuses residuals the prior models cannot hold.
#[test]
fn prior_model_files_round_trip_and_hostile_ones_are_refused() {
    let (flat_bytes, f, plain) = arm_file();
    let mut f = f;
    f.arm = f.arm.map(|a| a.with_prior_models(true));
    let bytes = format::write_grid_file(&f).unwrap();
    let limits = Limits::default();
    let info = round_trips_as_the_plain_file(&bytes, &f, &plain);
    assert!(f.arm.as_ref().unwrap().prior_models);
    assert_eq!(info.flags, 0x3008);
    assert!(info.grid.unwrap().arm.unwrap().prior_models);
    assert!(
        !inr::inspect(&flat_bytes)
            .unwrap()
            .grid
            .unwrap()
            .arm
            .unwrap()
            .prior_models
    );
    // Bit 13 on a file without an ARM, or a residual width of 13 bits with it: refused.
    let set_flags = |b: &mut Vec<u8>, flags: u16| {
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        fix_crc(b);
    };
    let mut b = plain.clone();
    let flags = u16::from_le_bytes([b[6], b[7]]) | FLAG_GRID_ARM_PRIOR;
    set_flags(&mut b, flags);
    let e = format::read_grid_file(&b, &limits).unwrap_err();
    assert!(e.to_string().contains("flag bit 13"), "{e}");
    let at = format::HEADER_BYTES + format::STEP_BYTES * f.tensors.len();
    let mut b = bytes.clone();
    b[at + 3] = 13; // level 0's residual bit width
    fix_crc(&mut b);
    let e = format::read_grid_file(&b, &limits).unwrap_err();
    assert!(e.to_string().contains("residual bits"), "{e}");
    // The same header without bit 13 passes that check (and fails later, or decodes).
    let mut b2 = b.clone();
    set_flags(&mut b2, 0x1008);
    if let Err(e) = format::read_grid_file(&b2, &limits) {
        assert!(!e.to_string().contains("residual bits"), "{e}");
    }
    // Every payload byte flipped (CRC fixed): no panic.
    for pos in at..bytes.len() - 4 {
        let mut b = bytes.clone();
        b[pos] ^= 0x3c;
        fix_crc(&mut b);
        let _ = decode(&b, &DecodeOptions::default());
    }
    // A residual of 2048 needs 13 bits: the coder refuses it with the prior models only.
    let vals = [2048i32, 0, 0, 0];
    let s = ArmShape {
        len: 4,
        cols: 2,
        max_abs: 4095,
        res_max_abs: 0,
        level: 0,
        layout: ArmLayout::Image,
    };
    let arm = constant_arm(1, 0, 0);
    assert!(entropy::encode_arm_grids_fitted(&[(&vals[..], s)], &arm).is_ok());
    assert!(
        entropy::encode_arm_grids_fitted(&[(&vals[..], s)], &arm.with_prior_models(true)).is_err()
    );
}
