//! §5.11 / §13.9: latents coded with an autoregressive context model (ARM, flag bit 12).

use inr::arm::{Arm, ArmLayout, ARM_INPUTS};
use inr::arm_fit::{fit_arm, ArmFit};
use inr::entropy::{self, ArmShape, GridContexts};
use inr::format::{self, max_abs_for_bits, GridInrFile, Limits, FLAG_GRID_ARM};
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

#[test]
fn arm_files_round_trip_canonically_and_decode_as_the_plain_file() {
    let (bytes, f, plain) = arm_file();
    let back = format::read_grid_file(&bytes, &Limits::default()).unwrap();
    assert_eq!(back, f);
    assert_eq!(format::write_grid_file(&back).unwrap(), bytes, "canonical");
    let opts = DecodeOptions::default();
    assert_eq!(
        decode(&bytes, &opts).unwrap(),
        decode(&plain, &opts).unwrap()
    );
    let info = inr::inspect(&bytes).unwrap();
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
    for case in 0..6 {
        let levels = 1 + case % 3;
        let width = 1 + case * 3;
        let lens = Arm::tensor_lens(width, levels);
        let t: Vec<Vec<i32>> = lens
            .iter()
            .map(|&n| (0..n).map(|_| rng.gen_range(-300..300)).collect())
            .collect();
        let arm = Arm::from_tensors(width, 1 + (case % 8) as u8, levels, t).unwrap();
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
    assert_eq!(a.recon, b.recon, "the same fit, coded two ways");
    let flags_b = u16::from_le_bytes([b.bytes[6], b.bytes[7]]);
    assert_eq!(flags_b & FLAG_GRID_ARM, 0);
}
