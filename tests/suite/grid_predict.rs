//! Predicted latents in grid mode (codec-spec §5.10, §13.7, flag bit 6): the integer
//! predictor, the predicted stream, files that carry a predictor, hostile predictor sections,
//! and the rate model's gradients with a predictor.

use inr::entropy::{
    decode_pred_grids, encode_pred_grids, fraction_class, grid_prediction, grid_prediction_parts,
    grid_residuals, EntropyError, GridContexts, PredShape,
};
use inr::format::{self, FormatError, GridInrFile, LevelPredictor, Limits, FLAG_GRID_PREDICT};
use inr::grid::{self, Pyramid};
use inr::media::Image;
use inr::{decode, encode_grid, DecodeOptions, GridEncodeConfig};

/// The §5.10 examples: floor shift with a half added, clamping, missing neighbours and parent.
#[test]
fn prediction_follows_the_spec_examples() {
    // 3 columns; element 4 is (x 1, y 1): L = g[3], A = g[1], AL = g[0], AR = g[2].
    let g = [10, -20, 30, 7];
    let c = [128, 64, 0, 0, 0]; // 0.5 L + 0.25 A
                                // 128*7 + 64*(-20) = -384; (-384 + 128) >> 8 = -1 (floor of -1.0).
    assert_eq!(grid_prediction(&g, 4, 3, None, &c, 100), -1);
    // Weight 1 (256) reproduces the tap; with weight 1/256: -255 + 128 = -127 -> floor(-0.496)
    // = -1; -129 + 128 = -1 -> -1; -128 + 128 = 0 -> 0; 127 + 128 = 255 -> 0; 128 -> 1.
    assert_eq!(
        grid_prediction(&[0, 0, 0, -383], 4, 3, None, &[256, 0, 0, 0, 0], 1000),
        -383
    );
    let one = [1, 0, 0, 0, 0];
    assert_eq!(grid_prediction(&[0, 0, 0, -255], 4, 3, None, &one, 100), -1);
    assert_eq!(grid_prediction(&[0, 0, 0, -129], 4, 3, None, &one, 100), -1);
    assert_eq!(grid_prediction(&[0, 0, 0, -128], 4, 3, None, &one, 100), 0);
    assert_eq!(grid_prediction(&[0, 0, 0, 127], 4, 3, None, &one, 100), 0);
    assert_eq!(grid_prediction(&[0, 0, 0, 128], 4, 3, None, &one, 100), 1);
    // Clamped to the level's range.
    assert_eq!(
        grid_prediction(&g, 4, 3, None, &[32767, 0, 0, 0, 0], 15),
        15
    );
    assert_eq!(
        grid_prediction(&g, 4, 3, None, &[-32767, 0, 0, 0, 0], 15),
        -15
    );
    // First element: no neighbours; the parent of (0, 0) is parent element 0.
    let parent = [40, 50];
    assert_eq!(
        grid_prediction(&[], 0, 3, Some((&parent, 2)), &[0, 0, 0, 0, 256], 100),
        40
    );
    // Element 2 of a 3-column row is (x 2, y 0): parent (1, 0) = 50; no above-right at the
    // right edge.
    assert_eq!(
        grid_prediction(&[1, 2], 2, 3, Some((&parent, 2)), &[0, 0, 0, 0, 128], 100),
        25
    );
    // A parent position outside the parent grid reads 0.
    assert_eq!(
        grid_prediction(
            &[1, 2, 3, 4],
            4,
            5,
            Some((&parent, 2)),
            &[0, 0, 0, 0, 256],
            100
        ),
        0
    );
    // Above-right exists inside the row: element 3 of 4 columns is (3, 0), element 4 is (0, 1)
    // with A = g[0], AR = g[1].
    assert_eq!(
        grid_prediction(&[3, 5, 0, 0], 4, 4, None, &[0, 0, 0, 256, 0], 100),
        5
    );
    assert_eq!(
        grid_prediction(&[3, 5, 0, 0], 4, 4, None, &[0, 256, 0, 0, 0], 100),
        3
    );
}

/// A smooth ramp in a pyramid: fine level of 21x13 with its parent 11x7.
fn smooth_levels() -> (Vec<i32>, Vec<i32>) {
    let fine: Vec<i32> = (0..13)
        .flat_map(|y| (0..21).map(move |x| (x + 2 * y) / 5 - 4))
        .collect();
    let coarse: Vec<i32> = (0..7)
        .flat_map(|y| (0..11).map(move |x| (2 * x + 4 * y) / 5 - 4))
        .collect();
    (fine, coarse)
}

#[test]
fn predicted_coder_round_trips_and_rejects_damage() {
    let (fine, coarse) = smooth_levels();
    let shapes = [
        PredShape {
            len: coarse.len(),
            cols: 11,
            max_abs: 15,
            res_max_abs: 15,
            coefs: [128, 128, -64, 64, 0],
        },
        PredShape {
            len: fine.len(),
            cols: 21,
            max_abs: 7,
            res_max_abs: 15,
            coefs: [160, 96, 0, 0, 16],
        },
    ];
    let grids = [(&coarse[..], shapes[0]), (&fine[..], shapes[1])];
    let mut streams = Vec::new();
    for ctxs in [
        GridContexts::Five,
        GridContexts::Twelve,
        GridContexts::TwelveSplit,
    ] {
        let bytes = encode_pred_grids(&grids, ctxs).unwrap();
        let back = decode_pred_grids(&bytes, &shapes, ctxs).unwrap();
        assert_eq!(back, vec![coarse.clone(), fine.clone()]);
        streams.push(bytes);
    }
    // The fractional split is another stream of the same values.
    assert_ne!(streams[1], streams[2]);
    let ctxs = GridContexts::Twelve;
    let bytes = encode_pred_grids(&grids, ctxs).unwrap();
    // Residuals of a smooth ramp are smaller than its values.
    let res = grid_residuals(&grids);
    let abs_sum = |v: &[i32]| v.iter().map(|x| x.unsigned_abs()).sum::<u32>();
    assert!(abs_sum(&res[1]) * 2 < abs_sum(&fine), "{:?}", res[1]);
    // A residual outside its alphabet is an encoder error, not a wrong stream.
    let mut tight = shapes;
    tight[1].res_max_abs = 1;
    tight[1].coefs = [-32767, 0, 0, 0, 0];
    assert!(matches!(
        encode_pred_grids(&[(&coarse[..], tight[0]), (&fine[..], tight[1])], ctxs),
        Err(EntropyError::SymbolOutOfRange { .. })
    ));
    // Damage: trailing words, truncation, a zero alphabet, wrong shapes: errors, no panic.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert!(decode_pred_grids(&longer, &shapes, ctxs).is_err());
    assert!(decode_pred_grids(&bytes[..bytes.len() - 4], &shapes, ctxs).is_err());
    let mut zero = shapes;
    zero[0].res_max_abs = 0;
    assert!(matches!(
        decode_pred_grids(&bytes, &zero, ctxs),
        Err(EntropyError::MaxAbsTooLarge { .. })
    ));
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let _ = decode_pred_grids(&b, &shapes, ctxs);
    }
    // Hostile coefficients against the real stream: any result but a panic, and decoded values
    // always inside their range.
    for coefs in [[32767i16; 5], [-32768; 5], [0, 0, 0, 0, -32768]] {
        let mut h = shapes;
        h[1].coefs = coefs;
        if let Ok(v) = decode_pred_grids(&bytes, &h, ctxs) {
            assert!(v[1].iter().all(|x| x.unsigned_abs() <= 7));
        }
    }
}

/// Smooth gradient image (prediction pays off on its latents).
fn smooth_image(w: u32, h: u32) -> Image {
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            for c in 0..3 {
                let v = 0.2 + 0.5 * fx + 0.2 * fy + 0.1 * ((fx * 3.0 + c as f32) * 2.0).sin();
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

fn cfg(steps: usize, lambda: f32, predict: bool) -> GridEncodeConfig {
    let mut c = GridEncodeConfig {
        levels: 5,
        width: 12,
        ..Default::default()
    };
    c.fit.steps = steps;
    c.fit.lambda = lambda;
    c.fit.predict = predict;
    c
}

/// A file with a predictor: the encoder's own (when it chose one) or the plain file recoded
/// with fixed coefficients.
fn predicted_file() -> Vec<u8> {
    let img = smooth_image(48, 32);
    let enc = encode_grid(&img, &cfg(120, 0.0005, true), &mut |_| {}).unwrap();
    let mut f = format::read_grid_file(&enc.bytes, &Limits::default()).unwrap();
    if f.predictor.is_none() {
        f.predictor = Some(vec![
            LevelPredictor {
                coefs: [100, 100, -30, 20, 10],
                res_bits: 16,
            };
            5
        ]);
    }
    format::write_grid_file(&f).unwrap()
}

#[test]
fn predicted_files_round_trip_and_show_their_predictor() {
    let bytes = predicted_file();
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    // Bit 6 (predicted latents) and bit 8 (the twelve latent contexts, the encoder's default).
    assert_eq!(flags, 0x0148);
    let f = format::read_grid_file(&bytes, &Limits::default()).unwrap();
    assert_eq!(
        format::write_grid_file(&f).unwrap(),
        bytes,
        "canonical rewrite"
    );
    // The same latents and network coded plain decode to the same image.
    let plain = GridInrFile {
        predictor: None,
        ..f.clone()
    };
    let plain_bytes = format::write_grid_file(&plain).unwrap();
    let opts = DecodeOptions::default();
    assert_eq!(
        decode(&bytes, &opts).unwrap(),
        decode(&plain_bytes, &opts).unwrap()
    );
    let info = inr::inspect(&bytes).unwrap();
    assert_eq!(info.flags, 0x0148);
    let g = info.grid.unwrap();
    assert_eq!(g.predictor.as_ref().map(Vec::len), Some(5));
    assert_eq!(g.predictor, f.predictor);
    // The plain reader and the modulation reader refuse it, naming the grid reader or flags.
    let e = format::read_file(&bytes, &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("grid"), "{e}");
    assert!(format::read_mod_file(&bytes, &Limits::default()).is_err());
}

#[test]
fn the_encoder_codes_predicted_latents_when_they_are_smaller() {
    let img = smooth_image(64, 48);
    let with = encode_grid(&img, &cfg(160, 0.0005, true), &mut |_| {}).unwrap();
    let f = format::read_grid_file(&with.bytes, &Limits::default()).unwrap();
    let pred = f.predictor.clone().expect("a predictor on smooth latents");
    // Whichever coding the encoder kept is the smaller one.
    let plain = format::write_grid_file(&GridInrFile {
        predictor: None,
        ..f
    })
    .unwrap();
    assert!(
        with.bytes.len() < plain.len(),
        "{} vs {}",
        with.bytes.len(),
        plain.len()
    );
    assert!(pred.iter().any(|p| p.coefs != [0; 5]));
    assert_eq!(
        decode(&with.bytes, &DecodeOptions::default()).unwrap(),
        with.recon
    );
    // Without the predictor the fit learns none and the file is plain.
    let without = encode_grid(&img, &cfg(160, 0.0005, false), &mut |_| {}).unwrap();
    let flags = u16::from_le_bytes([without.bytes[6], without.bytes[7]]);
    assert_eq!(flags, 0x0108);
}

/// Flag bit 8 selects the latent stream's context set (§5.9): the same latents coded with
/// five contexts (the files before it) and with twelve both round-trip, canonically, to the
/// same image; the flag is set exactly for twelve; flipping it (CRC fixed) gives an error or
/// other latents, never a panic.
#[test]
fn the_context_flag_selects_the_latent_contexts() {
    let bytes = predicted_file();
    let twelve = format::read_grid_file(&bytes, &Limits::default()).unwrap();
    assert_eq!(twelve.contexts, GridContexts::Twelve);
    for predictor in [twelve.predictor.clone(), None] {
        let mut files = Vec::new();
        for contexts in [GridContexts::Five, GridContexts::Twelve] {
            let f = GridInrFile {
                predictor: predictor.clone(),
                contexts,
                ..twelve.clone()
            };
            let b = format::write_grid_file(&f).unwrap();
            let flags = u16::from_le_bytes([b[6], b[7]]);
            assert_eq!(
                flags & format::FLAG_GRID_CONTEXTS != 0,
                contexts == GridContexts::Twelve
            );
            let back = format::read_grid_file(&b, &Limits::default()).unwrap();
            assert_eq!(back, f);
            assert_eq!(format::write_grid_file(&back).unwrap(), b, "canonical");
            files.push(b);
        }
        assert_eq!(
            decode(&files[0], &DecodeOptions::default()).unwrap(),
            decode(&files[1], &DecodeOptions::default()).unwrap()
        );
        for b in &files {
            let mut b = b.clone();
            b[7] ^= 1; // flag bit 8
            let body = b.len() - 4;
            let crc = crc32fast::hash(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            if let Ok(f) = format::read_grid_file(&b, &Limits::default()) {
                assert_ne!(f.tensors, twelve.tensors);
            }
        }
    }
}

#[test]
fn every_truncation_and_byte_flip_of_a_predicted_file_is_rejected_without_panic() {
    let bytes = predicted_file();
    let limits = Limits::default();
    for n in 0..bytes.len() {
        assert!(
            format::read_grid_file(&bytes[..n], &limits).is_err(),
            "truncated to {n}"
        );
    }
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            assert!(
                decode(&b, &DecodeOptions::default()).is_err(),
                "flip at {i}"
            );
            let body = b.len() - 4;
            let crc = crc32fast::hash(&b[..body]);
            b[body..].copy_from_slice(&crc.to_le_bytes());
            let _ = decode(&b, &DecodeOptions::default());
            let _ = inr::inspect(&b);
        }
    }
}

/// The predictor section with hostile values and a valid CRC: extreme coefficients decode or
/// fail cleanly; residual widths outside 2..=16 are refused before decoding.
#[test]
fn hostile_predictor_sections_give_errors_not_panics() {
    let bytes = predicted_file();
    let f = format::read_grid_file(&bytes, &Limits::default()).unwrap();
    let n_tensors = f.tensors.len();
    let sec = 30 + 4 * n_tensors;
    let with_crc = |mut b: Vec<u8>| {
        let body = b.len() - 4;
        let crc = crc32fast::hash(&b[..body]);
        b[body..].copy_from_slice(&crc.to_le_bytes());
        b
    };
    for level in 0..5 {
        let e = sec + level * format::PREDICTOR_ENTRY_BYTES;
        for res_bits in [0u8, 1, 17, 255] {
            let mut b = bytes.clone();
            b[e + 10] = res_bits;
            let err = format::read_grid_file(&with_crc(b), &Limits::default()).unwrap_err();
            assert!(
                matches!(err, FormatError::InvalidField { .. }),
                "res_bits {res_bits}: {err}"
            );
        }
        for c in [i16::MIN, i16::MAX, -1] {
            let mut b = bytes.clone();
            for k in 0..5 {
                b[e + 2 * k..e + 2 * k + 2].copy_from_slice(&c.to_le_bytes());
            }
            let b = with_crc(b);
            // Another predictor changes the meaning of the stream: an error or another image.
            let _ = decode(&b, &DecodeOptions::default());
        }
    }
    // Flag bit 6 on a file without the section: the reader finds the structure short.
    let plain = format::write_grid_file(&GridInrFile {
        predictor: None,
        ..f
    })
    .unwrap();
    let mut b = plain.clone();
    b[6] |= FLAG_GRID_PREDICT as u8;
    assert!(format::read_grid_file(&with_crc(b), &Limits::default()).is_err());
}

/// Log-scales and predictor coefficients of a three-level rate model for the gradient tests.
fn rate_model() -> (Vec<f32>, Vec<[f32; 5]>) {
    let lnb = (0..3 * inr::entropy::MAX_GRID_CONTEXTS)
        .map(|i| (i % 4) as f32 * 0.3 - 0.2)
        .collect();
    let coefs = vec![
        [0.3f32, 0.4, -0.1, 0.2, 0.15],
        [0.5, 0.2, 0.05, -0.1, 0.3],
        [0.2, 0.6, -0.2, 0.1, 0.0],
    ];
    (lnb, coefs)
}

/// The rate model's latent, log-scale and coefficient gradients (with a predictor and the
/// parent taps, and zero-centred) against finite differences of [`grid::rate_bits`].
#[test]
fn rate_gradients_with_a_predictor_match_finite_differences() {
    // Rows wide enough for the vectorised loops (37 and 19 columns) and a short one (10).
    let pyr = Pyramid::new(37, 9, 3);
    let n = pyr.n_latents;
    let lat: Vec<f32> = (0..n)
        .map(|i| ((i * 29 % 13) as f32 - 6.0) * 0.37 + 0.05)
        .collect();
    let rounded: Vec<u32> = lat.iter().map(|v| v.round().abs() as u32).collect();
    let (lnb, coefs) = rate_model();
    let total = |z: &[f32], c: &[[f32; 5]]| -> f64 {
        grid::rate_bits(&pyr, &lnb, Some(c), z, &rounded, GridContexts::Twelve)
            .iter()
            .sum()
    };
    let mut g = vec![0.0f32; n];
    let mut w = vec![0.0f32; n];
    let (gb, gc) = grid::rate_grad(
        &pyr,
        0,
        &lnb,
        Some(&coefs),
        &lat,
        &rounded,
        1.0,
        &mut g,
        &mut w,
        GridContexts::Twelve,
    );
    // Log-scale gradients, with and without the predictor.
    let mut g0 = vec![0.0f32; n];
    let (gb0, _) = grid::rate_grad(
        &pyr,
        0,
        &lnb,
        None,
        &lat,
        &rounded,
        1.0,
        &mut g0,
        &mut w,
        GridContexts::Twelve,
    );
    let h = 1e-3f32;
    for (c, gb) in [(Some(coefs.as_slice()), &gb), (None, &gb0)] {
        for i in 0..lnb.len() {
            let (mut a, mut b) = (lnb.clone(), lnb.clone());
            a[i] += h;
            b[i] -= h;
            let bits = |s: &[f32]| -> f64 {
                grid::rate_bits(&pyr, s, c, &lat, &rounded, GridContexts::Twelve)
                    .iter()
                    .sum()
            };
            let fd = (bits(&a) - bits(&b)) / (2.0 * f64::from(h));
            let an = f64::from(gb[i]);
            assert!(
                (fd - an).abs() <= 2e-2 * fd.abs().max(1.0),
                "log-scale {i} (predictor {}): fd {fd} analytic {an}",
                c.is_some()
            );
        }
    }
    for i in 0..n {
        let (mut a, mut b) = (lat.clone(), lat.clone());
        a[i] += h;
        b[i] -= h;
        let bits = |z: &[f32]| -> f64 {
            grid::rate_bits(&pyr, &lnb, None, z, &rounded, GridContexts::Twelve)
                .iter()
                .sum()
        };
        let fd = (bits(&a) - bits(&b)) / (2.0 * f64::from(h));
        let an = f64::from(g0[i]);
        assert!(
            (fd - an).abs() <= 2e-2 * fd.abs().max(1.0),
            "latent {i} without predictor: fd {fd} analytic {an}"
        );
    }
    for i in 0..n {
        let (mut a, mut b) = (lat.clone(), lat.clone());
        a[i] += h;
        b[i] -= h;
        let fd = (total(&a, &coefs) - total(&b, &coefs)) / (2.0 * f64::from(h));
        let an = f64::from(g[i]);
        assert!(
            (fd - an).abs() <= 2e-2 * fd.abs().max(1.0),
            "latent {i}: fd {fd} analytic {an}"
        );
    }
    for l in 0..3 {
        for k in 0..5 {
            let (mut a, mut b) = (coefs.clone(), coefs.clone());
            a[l][k] += h;
            b[l][k] -= h;
            let fd = (total(&lat, &a) - total(&lat, &b)) / (2.0 * f64::from(h));
            let an = f64::from(gc[l][k]);
            assert!(
                (fd - an).abs() <= 2e-2 * fd.abs().max(1.0),
                "coef {l},{k}: fd {fd} analytic {an}"
            );
        }
    }
}

/// A wide one-row pyramid (an audio segment's levels) takes the rate term's column-split
/// passes: its latent, log-scale and coefficient gradients match finite differences of
/// [`grid::rate_bits`] at and around the runs' seams (16,384 columns), the parents' too.
#[test]
fn one_row_rate_gradients_split_by_columns_match_finite_differences() {
    let w = 2 * 16384 + 777;
    let pyr = Pyramid::new(w as u32, 1, 3);
    let n = pyr.n_latents;
    // Small values, where the Laplace's slope depends on the prediction.
    let lat: Vec<f32> = (0..n)
        .map(|i| ((i * 29 % 13) as f32 - 6.0) * 0.11 + 0.02)
        .collect();
    let rounded: Vec<u32> = lat.iter().map(|v| v.round().abs() as u32).collect();
    let (lnb, coefs) = rate_model();
    let total = |z: &[f32], s: &[f32], c: &[[f32; 5]]| -> f64 {
        grid::rate_bits(&pyr, s, Some(c), z, &rounded, GridContexts::Five)
            .iter()
            .sum()
    };
    let mut g = vec![0.0f32; n];
    let mut wm = vec![0.0f32; n];
    let (gb, gc) = grid::rate_grad(
        &pyr,
        0,
        &lnb,
        Some(&coefs),
        &lat,
        &rounded,
        1.0,
        &mut g,
        &mut wm,
        GridContexts::Five,
    );
    let h = 1e-3f32;
    let close = |fd: f64, an: f64, what: String| {
        assert!(
            (fd - an).abs() <= 2e-2 * fd.abs().max(1.0),
            "{what}: fd {fd} analytic {an}"
        );
    };
    let mut idx = Vec::new();
    for &(wl, _, off) in &pyr.levels {
        for x in [
            0,
            1,
            16382,
            16383,
            16384,
            16385,
            32767,
            32768,
            32769,
            wl - 1,
        ] {
            if x < wl {
                idx.push(off + x);
            }
        }
    }
    for &i in &idx {
        let (mut a, mut b) = (lat.clone(), lat.clone());
        a[i] += h;
        b[i] -= h;
        let fd = (total(&a, &lnb, &coefs) - total(&b, &lnb, &coefs)) / (2.0 * f64::from(h));
        close(fd, f64::from(g[i]), format!("latent {i}"));
    }
    for i in 0..lnb.len() {
        let (mut a, mut b) = (lnb.clone(), lnb.clone());
        a[i] += h;
        b[i] -= h;
        let fd = (total(&lat, &a, &coefs) - total(&lat, &b, &coefs)) / (2.0 * f64::from(h));
        // Sums over tens of thousands of latents (in f32 in `rate_bits`): a relative tolerance.
        let an = f64::from(gb[i]);
        assert!(
            (fd - an).abs() <= 2e-2 * fd.abs().max(10.0),
            "log-scale {i}: fd {fd} analytic {an}"
        );
    }
    for l in 0..3 {
        for k in 0..5 {
            let (mut a, mut b) = (coefs.clone(), coefs.clone());
            a[l][k] += h;
            b[l][k] -= h;
            let fd = (total(&lat, &lnb, &a) - total(&lat, &lnb, &b)) / (2.0 * f64::from(h));
            let an = f64::from(gc[l][k]);
            assert!(
                (fd - an).abs() <= 2e-2 * fd.abs().max(10.0),
                "coefficient {l},{k}: fd {fd} analytic {an}"
            );
        }
    }
}

/// §5.10 fractional split (flag bit 11): the spec's examples of `f` and its class; on a grid
/// whose values follow a half-weight predictor (so the prediction's fraction says which way
/// the value rounds) the split stream round-trips and is smaller than the unsplit one; hostile
/// bytes give errors or other values, never a panic.
#[test]
fn the_fractional_split_follows_the_spec_and_pays_on_fractional_predictions() {
    // s = -384, 40, 20 through c_L = 1 and L = s (no other neighbour, no parent).
    let c = [1, 0, 0, 0, 0];
    for (l, pred, f, class) in [(-384, -1, -128, 2), (40, 0, 40, 1), (20, 0, 20, 0)] {
        let (p, fr) = grid_prediction_parts(&[l, 0], 1, 2, None, &c, 1000);
        assert_eq!((p, fr, fraction_class(fr)), (pred, f, class), "s = {l}");
        assert_eq!(grid_prediction(&[l, 0], 1, 2, None, &c, 1000), pred);
    }
    for (f, class) in [
        (0, 0),
        (31, 0),
        (-31, 0),
        (32, 1),
        (-79, 1),
        (80, 2),
        (-128, 2),
        (127, 2),
    ] {
        assert_eq!(fraction_class(f), class, "f = {f}");
    }
    // A clamped prediction has no fraction.
    assert_eq!(
        grid_prediction_parts(&[300, 0], 1, 2, None, &[100, 0, 0, 0, 0], 15),
        (15, 0)
    );
    // Values v = 0.5 L + 0.25 A rounded stochastically (up with the probability of its
    // fraction), with an occasional jump: the prediction's rounding (coefficients 128, 64)
    // loses exactly the part that says which way v went, which the split keeps.
    let (w, h) = (64usize, 48usize);
    let mut g = vec![0i32; w * h];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..w * h {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (x, y) = (i % w, i / w);
        let l = if x > 0 { g[i - 1] } else { 0 };
        let a = if y > 0 { g[i - w] } else { 0 };
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        let jump = if state.is_multiple_of(8) {
            (state >> 32) % 25
        } else {
            12
        } as f64
            - 12.0;
        g[i] = (0.5 * f64::from(l) + 0.25 * f64::from(a) + u + jump).floor() as i32;
    }
    let shape = PredShape {
        len: g.len(),
        cols: w,
        max_abs: 63,
        res_max_abs: 31,
        coefs: [128, 64, 0, 0, 0],
    };
    let grids = [(&g[..], shape)];
    let unsplit = encode_pred_grids(&grids, GridContexts::Twelve).unwrap();
    let split = encode_pred_grids(&grids, GridContexts::TwelveSplit).unwrap();
    assert_eq!(
        decode_pred_grids(&split, &[shape], GridContexts::TwelveSplit).unwrap(),
        vec![g.clone()]
    );
    assert!(
        split.len() * 100 < unsplit.len() * 97,
        "split {} vs unsplit {} (want at least 3 % less)",
        split.len(),
        unsplit.len()
    );
    // Read with the other context set: an error or other values.
    if let Ok(v) = decode_pred_grids(&split, &[shape], GridContexts::Twelve) {
        assert_ne!(v, vec![g.clone()]);
    }
    for i in 0..split.len() {
        let mut b = split.clone();
        b[i] ^= 0x21;
        let _ = decode_pred_grids(&b, &[shape], GridContexts::TwelveSplit);
    }
    assert!(decode_pred_grids(
        &split[..split.len() - 4],
        &[shape],
        GridContexts::TwelveSplit
    )
    .is_err());
}

/// Flag bit 11 in files: set exactly for the split sets (twelve or five contexts), which need
/// predicted latents (the writer refuses them without; the reader refuses bit 11 without bit
/// 6, CRC valid); split files round-trip canonically to the same image as the unsplit file;
/// `inspect` reports 36 models.
#[test]
fn the_fraction_flag_needs_predicted_files() {
    let bytes = predicted_file();
    let f = format::read_grid_file(&bytes, &Limits::default()).unwrap();
    let unsplit = GridInrFile {
        contexts: GridContexts::Twelve,
        ..f.clone()
    };
    let split = GridInrFile {
        contexts: GridContexts::TwelveSplit,
        ..f.clone()
    };
    let (ub, sb) = (
        format::write_grid_file(&unsplit).unwrap(),
        format::write_grid_file(&split).unwrap(),
    );
    let flags = |b: &[u8]| u16::from_le_bytes([b[6], b[7]]);
    assert_eq!(flags(&ub), 0x0148);
    assert_eq!(flags(&sb), 0x0948);
    assert_ne!(ub, sb);
    let back = format::read_grid_file(&sb, &Limits::default()).unwrap();
    assert_eq!(back, split);
    assert_eq!(format::write_grid_file(&back).unwrap(), sb, "canonical");
    let opts = DecodeOptions::default();
    assert_eq!(decode(&sb, &opts).unwrap(), decode(&ub, &opts).unwrap());
    assert_eq!(inr::inspect(&sb).unwrap().grid.unwrap().latent_contexts, 36);
    // The writer refuses the split without a predictor.
    let bad = GridInrFile {
        predictor: None,
        ..split.clone()
    };
    assert!(matches!(
        format::write_grid_file(&bad),
        Err(FormatError::InvalidField { .. })
    ));
    // Five contexts split: flags 0x0848, the same image.
    let five_split = GridInrFile {
        contexts: GridContexts::FiveSplit,
        ..f.clone()
    };
    let fb = format::write_grid_file(&five_split).unwrap();
    assert_eq!(flags(&fb), 0x0848);
    assert_eq!(
        format::read_grid_file(&fb, &Limits::default()).unwrap(),
        five_split
    );
    assert_eq!(decode(&fb, &opts).unwrap(), decode(&ub, &opts).unwrap());
    // Bit 11 on a plain file: refused.
    let mut b = format::write_grid_file(&GridInrFile {
        predictor: None,
        ..unsplit.clone()
    })
    .unwrap();
    b[7] |= 0x08;
    let body = b.len() - 4;
    let crc = crc32fast::hash(&b[..body]);
    b[body..].copy_from_slice(&crc.to_le_bytes());
    let e = format::read_grid_file(&b, &Limits::default()).unwrap_err();
    assert!(matches!(e, FormatError::InvalidField { .. }), "{e}");
    assert!(e.to_string().contains("bit 11"), "{e}");
    // The split file without its flag: an error or other latents.
    let mut b = sb.clone();
    b[7] &= !0x08;
    let body = b.len() - 4;
    let crc = crc32fast::hash(&b[..body]);
    b[body..].copy_from_slice(&crc.to_le_bytes());
    if let Ok(g) = format::read_grid_file(&b, &Limits::default()) {
        assert_ne!(g.tensors, f.tensors);
    }
}
