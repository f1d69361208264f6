//! Meta-learned bases: Reptile improves the start, files name their base, bases are checked.

use inr::base::{Base, BaseError};
use inr::media::Image;
use inr::meta::{self, MetaConfig};
use inr::{decode, encode_image, BaseChoice, DecodeError, DecodeOptions, EncodeConfig, Preset};
use rand::{Rng, SeedableRng};

/// A family of smooth random images: sums of a few oriented sinusoids with random
/// frequencies, phases and colours (one per seed).
fn family_image(seed: u64, w: u32, h: u32) -> Image {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let waves: Vec<[f32; 7]> = (0..3)
        .map(|_| {
            [
                rng.gen_range(-4.0..4.0),
                rng.gen_range(-4.0..4.0),
                rng.gen_range(0.0..std::f32::consts::TAU),
                rng.gen_range(-60.0..60.0),
                rng.gen_range(-60.0..60.0),
                rng.gen_range(-60.0..60.0),
                0.0,
            ]
        })
        .collect();
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            for c in 0..3 {
                let v: f32 = waves
                    .iter()
                    .map(|a| a[3 + c] * (a[0] * fx + a[1] * fy + a[2]).sin())
                    .sum();
                data.push((128.0 + v).clamp(0.0, 255.0) as u8);
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

fn tiny_config() -> EncodeConfig {
    EncodeConfig {
        preset: Preset::Tiny,
        width: Some(16),
        depth: Some(3),
        steps: Some(60),
        base: BaseChoice::None,
        ..Default::default()
    }
}

fn meta_cfg(iterations: usize) -> MetaConfig {
    MetaConfig {
        iterations,
        inner_steps: 8,
        inner_lr: 1e-3,
        batch: 1024,
        outer_lr: 0.5,
        outer_lr_end: 0.1,
        crop_min: 24,
        crop_max: 32,
        seed: 7,
        density: None,
        learned_support: None,
        init: None,
        meta_sgd: None,
    }
}

fn train_base(iterations: usize) -> (inr::format::Arch, Vec<f32>, Vec<f32>) {
    let arch = tiny_config().arch(3).expect("arch");
    let train: Vec<Image> = (0..24).map(|s| family_image(s, 32, 32)).collect();
    let shape = inr::bench_api::shape_of(&arch);
    let random = inr::bench_api::siren_init(&shape, 0);
    let mut params = random.clone();
    let cfg = meta_cfg(iterations);
    let done = meta::train(&arch, &train, &cfg, &mut params, 0, &mut |_, _, _| true);
    assert_eq!(done, iterations);
    (arch, random, params)
}

#[test]
fn reptile_improves_psnr_after_k_steps_on_held_out_images() {
    let (arch, random, learned) = train_base(80);
    let held_out: Vec<Image> = (1000..1006).map(|s| family_image(s, 32, 32)).collect();
    for k in [8, 24] {
        let r = meta::validate(&arch, &held_out, &random, (k, 1e-3, 1024), &[]);
        let m = meta::validate(&arch, &held_out, &learned, (k, 1e-3, 1024), &[]);
        assert!(
            m > r + 1.0,
            "after {k} steps: meta init {m:.2} dB, random init {r:.2} dB"
        );
    }
}

#[test]
fn sparse_reptile_learns_a_base_on_the_seeded_support() {
    let arch = tiny_config().arch(3).expect("arch");
    let train: Vec<Image> = (0..24).map(|s| family_image(s, 32, 32)).collect();
    let random = inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), 0);
    let cfg = MetaConfig {
        density: Some(0.4),
        ..meta_cfg(80)
    };
    let mut learned = random.clone();
    meta::train(&arch, &train, &cfg, &mut learned, 0, &mut |_, _, _| true);
    // Exactly the seeded support of the hidden matrices is non-zero (§4.6.1); the rest of
    // the network is dense.
    let mut expect = random.clone();
    meta::restrict_to_support(&arch, &mut expect, &meta::seeded_support(&arch, 0.4));
    let off = arch.tensor_lens()[..2].iter().sum::<usize>();
    let n2 = arch.tensor_lens()[2];
    let zeros = |p: &[f32]| p[off..off + n2].iter().filter(|&&v| v == 0.0).count();
    assert_eq!(zeros(&learned), zeros(&expect));
    assert!((zeros(&expect) as f64 / n2 as f64 - 0.6).abs() < 0.02);
    for (i, (&l, &e)) in learned.iter().zip(&expect).enumerate() {
        assert_eq!(l == 0.0, e == 0.0, "parameter {i}");
    }
    // It beats a random start on the same support after k steps on held-out images.
    let held_out: Vec<Image> = (1000..1006).map(|s| family_image(s, 32, 32)).collect();
    for k in [8, 24] {
        let seeded = meta::seeded_support(&arch, 0.4);
        let r = meta::validate(&arch, &held_out, &expect, (k, 1e-3, 1024), &seeded);
        let m = meta::validate(&arch, &held_out, &learned, (k, 1e-3, 1024), &seeded);
        assert!(
            m > r + 1.0,
            "after {k} steps: sparse meta {m:.2} dB, random sparse {r:.2} dB"
        );
    }
}

#[test]
fn sparse_reptile_learns_its_own_support_by_magnitude() {
    let arch = tiny_config().arch(3).expect("arch");
    let train: Vec<Image> = (0..24).map(|s| family_image(s, 32, 32)).collect();
    let random = inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), 0);
    let cfg = MetaConfig {
        density: Some(0.4),
        learned_support: Some(0.5),
        ..meta_cfg(80)
    };
    // The cubic schedule: dense at first, held between prunings, the target from half on.
    assert_eq!(meta::learned_density(&cfg, 0), 1.0);
    assert_eq!(meta::learned_density(&cfg, 9), 1.0);
    let d20 = 0.4 + 0.6 * (1.0f64 - 20.0 / 40.0).powi(3);
    assert!((meta::learned_density(&cfg, 25) - d20).abs() < 1e-12);
    assert_eq!(meta::learned_density(&cfg, 40), 0.4);
    assert_eq!(meta::learned_density(&cfg, 79), 0.4);
    let one_shot = MetaConfig {
        learned_support: Some(0.0),
        ..cfg.clone()
    };
    assert_eq!(meta::learned_density(&one_shot, 0), 0.4);
    let mut learned = random.clone();
    let mut seen = Vec::new();
    meta::train(&arch, &train, &cfg, &mut learned, 0, &mut |i, p, _| {
        // Supports only shrink: once a weight is 0 it stays 0.
        let support = meta::nonzero_support(&arch, p);
        seen.push((i, support));
        true
    });
    for w in seen.windows(2) {
        let ((_, a), (_, b)) = (&w[0], &w[1]);
        for (ma, mb) in a.iter().zip(b) {
            if let (Some(ka), Some(kb)) = (ma, mb) {
                assert!(ka.iter().zip(kb).all(|(&x, &y)| x || !y), "support grew");
            }
            if ma.is_some() {
                assert!(mb.is_some(), "a pruned matrix became dense");
            }
        }
    }
    // Every hidden matrix keeps exactly round(0.4 n) weights: its largest, not the seeded ones.
    let support = meta::nonzero_support(&arch, &learned);
    let seeded = meta::seeded_support(&arch, 0.4);
    let lens = arch.tensor_lens();
    let mut differs = false;
    for (t, (m, s)) in support.iter().zip(&seeded).enumerate() {
        match (m, s) {
            (Some(k), Some(sk)) => {
                let kept = k.iter().filter(|&&x| x).count();
                assert_eq!(kept, (0.4 * lens[t] as f64).round() as usize, "tensor {t}");
                differs |= k != sk;
            }
            (None, None) => {}
            _ => panic!("tensor {t}: support {m:?} where the seeded one is {s:?}"),
        }
    }
    assert!(differs, "the learned support is the seeded one");
    // On its own support it beats a random start on the seeded support after k steps.
    let held_out: Vec<Image> = (1000..1006).map(|s| family_image(s, 32, 32)).collect();
    let mut expect = random.clone();
    meta::restrict_to_support(&arch, &mut expect, &seeded);
    for k in [8, 24] {
        let r = meta::validate(&arch, &held_out, &expect, (k, 1e-3, 1024), &seeded);
        let m = meta::validate(&arch, &held_out, &learned, (k, 1e-3, 1024), &support);
        assert!(
            m > r + 1.0,
            "after {k} steps: learned sparse {m:.2} dB, random sparse {r:.2} dB"
        );
    }
    // Interrupted after a pruning and resumed from the weights alone: the same base.
    let mut resumed = random.clone();
    let done = meta::train(&arch, &train, &cfg, &mut resumed, 0, &mut |i, _, _| i < 24);
    meta::train(&arch, &train, &cfg, &mut resumed, done, &mut |_, _, _| true);
    assert_eq!(resumed, learned);
}

#[test]
fn interrupted_and_resumed_training_gives_the_same_base() {
    let arch = tiny_config().arch(3).expect("arch");
    let train: Vec<Image> = (0..6).map(|s| family_image(s, 32, 32)).collect();
    let cfg = meta_cfg(6);
    let init = inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), 0);
    let mut straight = init.clone();
    meta::train(&arch, &train, &cfg, &mut straight, 0, &mut |_, _, _| true);
    let mut resumed = init.clone();
    // Stop after iteration index 2 (3 done), as a checkpoint would, then resume at 3.
    let done = meta::train(&arch, &train, &cfg, &mut resumed, 0, &mut |i, _, _| i < 2);
    assert_eq!(done, 3);
    let ckpt = Base::new(arch, resumed, String::new()).expect("base");
    let bytes = ckpt.to_bytes().expect("bytes");
    let mut resumed = Base::from_bytes(&bytes, &Default::default())
        .expect("parse")
        .params;
    meta::train(&arch, &train, &cfg, &mut resumed, done, &mut |_, _, _| true);
    assert_eq!(
        straight.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        resumed.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn a_file_coded_from_a_base_decodes_only_with_that_base() {
    let arch = tiny_config().arch(3).expect("arch");
    let shape = inr::bench_api::shape_of(&arch);
    let base = Base::new(arch, inr::bench_api::siren_init(&shape, 42), "a".into()).expect("b");
    let other = Base::new(arch, inr::bench_api::siren_init(&shape, 43), "b".into()).expect("b");
    let img = family_image(5, 24, 16);
    let cfg = EncodeConfig {
        base: BaseChoice::Custom(base.clone()),
        ..tiny_config()
    };
    let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).expect("encode");
    let info = inr::inspect(&e.bytes).expect("inspect");
    assert_eq!(info.base_id, Some(format!("{:016x}", base.id())));
    assert_eq!(info.version, 2);

    // Without the base: a typed error naming the base's id.
    let err = decode(&e.bytes, &DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::Base(BaseError::Missing { id, .. }) if id == base.id()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("{:016x}", base.id())),
        "{err}"
    );
    // With another base (same architecture, different content, so a different id): refused.
    let wrong = DecodeOptions {
        bases: vec![other],
        ..Default::default()
    };
    assert!(matches!(
        decode(&e.bytes, &wrong),
        Err(DecodeError::Base(BaseError::Missing { .. }))
    ));
    // With the base: exactly the encoder's reconstruction.
    let right = DecodeOptions {
        bases: vec![base.clone()],
        ..Default::default()
    };
    assert_eq!(decode(&e.bytes, &right).expect("decode"), e.recon);

    // The same image coded without a base carries no base reference and decodes alone.
    let plain = encode_image(&img, &tiny_config(), &mut |_: &inr::Progress| {}).expect("enc");
    assert_eq!(inr::inspect(&plain.bytes).expect("inspect").base_id, None);
    assert_eq!(
        decode(&plain.bytes, &DecodeOptions::default()).expect("decode"),
        plain.recon
    );
}

#[test]
fn a_base_of_another_architecture_is_refused() {
    let arch = tiny_config().arch(3).expect("arch");
    let shape = inr::bench_api::shape_of(&arch);
    let base = Base::new(arch, inr::bench_api::siren_init(&shape, 1), String::new()).expect("b");
    let img = family_image(3, 20, 12);
    let cfg = EncodeConfig {
        base: BaseChoice::Custom(base.clone()),
        steps: Some(10),
        ..tiny_config()
    };
    let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).expect("encode");
    // Forge a base with the same id but another architecture: impossible by construction
    // (the id hashes the architecture), so check the id changes with the architecture.
    let wider = inr::format::Arch { width: 17, ..arch };
    let b2 = Base::new(
        wider,
        inr::bench_api::siren_init(&inr::bench_api::shape_of(&wider), 1),
        String::new(),
    )
    .expect("b");
    assert_ne!(b2.id(), base.id());
    let opts = DecodeOptions {
        bases: vec![b2],
        ..Default::default()
    };
    assert!(decode(&e.bytes, &opts).is_err());
}

#[test]
fn presets_with_an_embedded_base_start_from_it() {
    let img = family_image(9, 24, 16);
    let cfg = EncodeConfig {
        preset: Preset::Small,
        steps: Some(20),
        ..Default::default()
    };
    let arch = cfg.arch(3).expect("arch");
    let base = inr::base::embedded_for(&arch).expect("the small preset has an embedded base");
    let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).expect("encode");
    let info = inr::inspect(&e.bytes).expect("inspect");
    assert_eq!(info.base_id, Some(format!("{:016x}", base.id())));
    // The embedded base is found without being passed.
    assert_eq!(
        decode(&e.bytes, &DecodeOptions::default()).expect("decode"),
        e.recon
    );
    // `BaseChoice::None` opts out.
    let none = EncodeConfig {
        base: BaseChoice::None,
        ..cfg
    };
    let e = encode_image(&img, &none, &mut |_: &inr::Progress| {}).expect("encode");
    assert_eq!(inr::inspect(&e.bytes).expect("inspect").base_id, None);
}

/// A file coded from any embedded weight base decodes with no base passed, and the presets
/// use the embedded base of their architecture.
#[test]
fn files_from_every_embedded_weight_base_decode() {
    let img = family_image(4, 24, 16);
    let weight_bases: Vec<&inr::base::Base> = inr::base::embedded()
        .iter()
        .filter(|b| b.kind() == "weight")
        .collect();
    assert!(weight_bases.len() >= 2, "small and medium image bases");
    for b in weight_bases {
        let cfg = EncodeConfig {
            steps: Some(10),
            base: BaseChoice::Custom(b.clone()),
            ..Default::default()
        };
        let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).expect("encode");
        let info = inr::inspect(&e.bytes).expect("inspect");
        assert_eq!(info.base_id, Some(format!("{:016x}", b.id())));
        assert_eq!(
            decode(&e.bytes, &DecodeOptions::default()).expect("decode"),
            e.recon
        );
        assert_eq!(
            inr::base::embedded_for(&b.arch).map(Base::id),
            Some(b.id()),
            "one embedded base per architecture"
        );
    }
}

/// A sparse base of the tiny architecture: its hidden matrices pruned by magnitude to
/// `density` (the support `inr meta-train --support learned` leaves).
fn sparse_base(density: f64, seed: u64) -> Base {
    let arch = tiny_config().arch(3).expect("arch");
    let mut params = inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), seed);
    let cfg = MetaConfig {
        density: Some(density),
        learned_support: Some(0.0),
        ..meta_cfg(1)
    };
    let support = meta::support_at(&arch, &cfg, &params, 0);
    meta::restrict_to_support(&arch, &mut params, &support);
    Base::new(arch, params, format!("sparse {density}")).expect("base")
}

#[test]
fn prune_method_base_keeps_the_bases_support_and_codes_no_mask() {
    let base = sparse_base(0.5, 42);
    let arch = base.arch;
    let support = meta::nonzero_support(&arch, &base.params);
    let img = family_image(5, 48, 40);
    for target in [None, Some(3.0)] {
        let cfg = EncodeConfig {
            base: BaseChoice::Custom(base.clone()),
            prune_method: inr::PruneMethod::Base,
            target_bpp: target,
            steps: Some(120),
            ..tiny_config()
        };
        let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).expect("encode");
        let flags = u16::from_le_bytes([e.bytes[6], e.bytes[7]]);
        assert_eq!(
            flags & 0x0223,
            inr::format::FLAG_BASE | inr::format::FLAG_SPARSE | inr::format::FLAG_BASE_MASKS,
            "flags {flags:#06x}"
        );
        let sp = inr::inspect(&e.bytes)
            .expect("inspect")
            .sparsity
            .expect("masks");
        assert!(sp.from_base && !sp.seeded);
        assert_eq!(sp.mask_stream_bytes, 0);
        assert!((sp.density - 0.5).abs() < 0.01, "density {}", sp.density);
        if let Some(bpp) = target {
            assert!((e.bpp - bpp).abs() <= 0.03 * bpp, "{} bpp for {bpp}", e.bpp);
        }
        // The decoder takes the masks from the base: without it, an error naming it.
        let err = decode(&e.bytes, &DecodeOptions::default()).unwrap_err();
        assert!(
            matches!(err, DecodeError::Base(BaseError::Missing { id, .. }) if id == base.id()),
            "{err:?}"
        );
        let with = DecodeOptions {
            bases: vec![base.clone()],
            ..Default::default()
        };
        assert_eq!(decode(&e.bytes, &with).expect("decode"), e.recon);
        // The coded network is zero exactly off the base's support.
        let file = inr::format::read_file_with_base(
            &e.bytes,
            &inr::format::Limits::default(),
            Some(&base.params),
        )
        .expect("read");
        assert_eq!(file.masks, support);
        for (m, t) in file.masks.iter().zip(&file.tensors) {
            if let Some(keep) = m {
                assert!(keep.iter().zip(&t.symbols).all(|(&k, &s)| k || s == 0));
            }
        }
    }
    // A dense base, no base, or another density: refused before fitting.
    let dense = Base::new(
        arch,
        inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), 1),
        "d".into(),
    )
    .expect("base");
    for (b, density) in [
        (BaseChoice::Custom(dense), None),
        (BaseChoice::None, None),
        (BaseChoice::Custom(base.clone()), Some(0.3)),
    ] {
        let cfg = EncodeConfig {
            base: b,
            prune_method: inr::PruneMethod::Base,
            density,
            ..tiny_config()
        };
        let r = encode_image(&img, &cfg, &mut |_: &inr::Progress| {});
        assert!(
            matches!(r, Err(inr::EncodeError::Parameter(_))),
            "{:?}",
            r.err()
        );
    }
}

#[test]
fn meta_sgd_raises_learning_rates_that_are_too_small_and_resumes_exactly() {
    let arch = tiny_config().arch(3).expect("arch");
    let train: Vec<Image> = (0..6).map(|s| family_image(s, 32, 32)).collect();
    let init = inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), 0);
    // An inner rate far too small: lowering the loss means raising every multiplier.
    let cfg = MetaConfig {
        inner_lr: 1e-6,
        meta_sgd: Some(0.05),
        ..meta_cfg(20)
    };
    let (mut params, mut scale) = (init.clone(), Vec::new());
    meta::train_scaled(
        &arch,
        &train,
        &cfg,
        &mut params,
        &mut scale,
        0,
        &mut |_, _, _, _| true,
    );
    assert_eq!(scale.len(), arch.num_tensors());
    let (lo, hi) = meta::LR_SCALE_RANGE;
    assert!(scale.iter().all(|&s| (lo..=hi).contains(&s)), "{scale:?}");
    let raised = scale.iter().filter(|&&s| s > 1.0).count();
    assert!(
        raised * 4 >= scale.len() * 3,
        "only {raised} raised: {scale:?}"
    );
    // Interrupted and resumed from the base and the multipliers: the same result.
    let (mut p2, mut s2) = (init.clone(), Vec::new());
    let done = meta::train_scaled(
        &arch,
        &train,
        &cfg,
        &mut p2,
        &mut s2,
        0,
        &mut |i, _, _, _| i < 7,
    );
    meta::train_scaled(
        &arch,
        &train,
        &cfg,
        &mut p2,
        &mut s2,
        done,
        &mut |_, _, _, _| true,
    );
    assert_eq!((p2, s2), (params, scale.clone()));
    // Multipliers change what an inner fit does; all ones are no multipliers at all.
    let img = family_image(99, 24, 24);
    let inner = (10, 1e-3, 1024);
    let plain = meta::adapt_scaled(&arch, &img, &init, inner, 1, &[], &[], false);
    let ones = vec![1.0; arch.num_tensors()];
    let same = meta::adapt_scaled(&arch, &img, &init, inner, 1, &[], &ones, false);
    let scaled = meta::adapt_scaled(&arch, &img, &init, inner, 1, &[], &scale, true);
    assert_eq!(plain.0, same.0);
    assert_ne!(plain.0, scaled.0);
    assert_eq!(scaled.2.len(), arch.num_tensors());
    // Without Meta-SGD no multipliers are made.
    let mut s3 = Vec::new();
    let mut p3 = init;
    meta::train_scaled(
        &arch,
        &train,
        &meta_cfg(2),
        &mut p3,
        &mut s3,
        0,
        &mut |_, _, _, _| true,
    );
    assert!(s3.is_empty());
}

#[test]
fn the_encoder_uses_a_bases_learning_rate_multipliers_when_asked() {
    let arch = tiny_config().arch(3).expect("arch");
    let params = inr::bench_api::siren_init(&inr::bench_api::shape_of(&arch), 3);
    let img = family_image(8, 24, 16);
    let encode_with = |description: String| {
        let base = Base::new(arch, params.clone(), description).expect("base");
        let cfg = EncodeConfig {
            base: BaseChoice::Custom(base.clone()),
            base_lr_scale: true,
            ..tiny_config()
        };
        let e = encode_image(&img, &cfg, &mut |_: &inr::Progress| {}).expect("encode");
        let with = DecodeOptions {
            bases: vec![base],
            ..Default::default()
        };
        assert_eq!(decode(&e.bytes, &with).expect("decode"), e.recon);
        // Without the opt-in the multipliers are not used.
        let off = EncodeConfig {
            base_lr_scale: false,
            ..cfg
        };
        let e0 = encode_image(&img, &off, &mut |_: &inr::Progress| {}).expect("encode");
        (e.psnr, e0.psnr)
    };
    let n = arch.num_tensors();
    let (plain, _) = encode_with("plain".into());
    let lr = |v: Vec<f32>| serde_json::json!({ "lr_scale": v }).to_string();
    // Multipliers of 1 change nothing; others change the fit (only when asked for);
    // malformed ones are ignored.
    assert_eq!(encode_with(lr(vec![1.0; n])), (plain, plain));
    let (with, without) = encode_with(lr(vec![4.0; n]));
    assert_ne!(with, plain);
    assert_eq!(without, plain);
    assert_eq!(encode_with(lr(vec![4.0; n - 1])), (plain, plain));
    assert_eq!(encode_with(lr(vec![100.0; n])), (plain, plain));
}
