//! Modulation mode (codec-spec §12): round trips, base checks, step monotonicity, rate
//! control, meta-learning, determinism. Tiny networks and images so it runs in seconds.

use inr::base::{Base, BaseError, ModSpec};
use inr::format::Arch;
use inr::media::Image;
use inr::modulation::{self, Adam, LatentFit, ModMetaConfig, ModNet, Packed, Target};
use inr::{decode, encode_modulated, DecodeError, DecodeOptions, ModEncodeConfig};

fn arch() -> Arch {
    Arch {
        coord_dims: 2,
        out_channels: 3,
        width: 16,
        depth: 2,
        pe_freqs: 2,
        pe_base_milli: 2000,
        w0_first: 30,
        w0_hidden: 30,
    }
}

/// Smooth colour waves plus a little texture: a family whose frequencies depend on `seed % 4`
/// and whose phase on `seed`.
fn image(w: u32, h: u32, seed: u32) -> Image {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    let s = (seed % 4) as f32;
    let phase = seed as f32 * 0.7;
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            for c in 0..3 {
                let v = 0.5
                    + 0.3
                        * ((fx * (2.0 + s) + c as f32) * 3.0 + phase).sin()
                        * (fy * (3.0 + 0.5 * s)).cos()
                    + 0.1 * ((x * 7 + y * 13 + c * 5 + seed) % 11) as f32 / 11.0;
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

fn base_of(net: &ModNet) -> Base {
    let spec = ModSpec {
        latent_dim: net.latent_dim as u8,
        cell: net.cell as u8,
    };
    Base::new_modulation(net.arch, spec, net.flat(), "test".into()).unwrap()
}

fn trained_net() -> ModNet {
    let mut net = ModNet::init(arch(), 6, 8, 3);
    let imgs: Vec<Image> = (0..4).map(|k| image(48, 40, k)).collect();
    let cfg = cfg(150);
    let mut opt = Adam::new(net.params.len() + net.map.len());
    for i in 0..cfg.iterations {
        modulation::meta_train_step(&mut net, &mut opt, &imgs, &cfg, i);
    }
    net
}

fn cfg(iterations: usize) -> ModMetaConfig {
    ModMetaConfig {
        iterations,
        tasks: 2,
        crop_min: 16,
        crop_max: 32,
        inner: LatentFit {
            steps: 5,
            lr: 0.05,
            frac: 1.0,
            l2: 0.0,
        },
        outer_lr: 3e-3,
        noise: 0.1,
        seed: 11,
    }
}

fn enc_cfg(b: &Base) -> ModEncodeConfig {
    ModEncodeConfig {
        fit: LatentFit {
            steps: 20,
            lr: 0.05,
            frac: 1.0,
            l2: 0.0,
        },
        latent_step: 0.1,
        base: Some(b.clone()),
        ..ModEncodeConfig::default()
    }
}

#[test]
fn round_trip_is_exact_deterministic_and_resolution_free() {
    let net = ModNet::init(arch(), 4, 8, 1);
    let b = base_of(&net);
    let img = image(37, 21, 0); // not a multiple of the cell
    let e1 = encode_modulated(&img, &enc_cfg(&b), &mut |_| {}).unwrap();
    let e2 = encode_modulated(&img, &enc_cfg(&b), &mut |_| {}).unwrap();
    assert_eq!(e1.bytes, e2.bytes, "same input and flags, same bytes");
    assert!(inr::format::is_modulation_file(&e1.bytes));
    let opts = DecodeOptions {
        bases: vec![b.clone()],
        ..DecodeOptions::default()
    };
    let d = decode(&e1.bytes, &opts).unwrap();
    assert_eq!(
        d, e1.recon,
        "decoder output equals the encoder's reconstruction"
    );
    // Another size renders (resolution-free) and is not the same picture scaled badly.
    let big = decode(
        &e1.bytes,
        &DecodeOptions {
            size: Some((74, 42)),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(
        (big.width, big.height, big.data.len()),
        (74, 42, 74 * 42 * 3)
    );
    // Thread count does not change the bytes.
    let mut c1 = enc_cfg(&b);
    c1.threads = Some(1);
    let mut c3 = enc_cfg(&b);
    c3.threads = Some(3);
    assert_eq!(
        encode_modulated(&img, &c1, &mut |_| {}).unwrap().bytes,
        encode_modulated(&img, &c3, &mut |_| {}).unwrap().bytes
    );
}

#[test]
fn decoding_needs_the_right_base() {
    let net = ModNet::init(arch(), 4, 8, 1);
    let b = base_of(&net);
    let img = image(24, 24, 2);
    let e = encode_modulated(&img, &enc_cfg(&b), &mut |_| {}).unwrap();
    // No base given: a typed error naming the id.
    match decode(&e.bytes, &DecodeOptions::default()) {
        Err(DecodeError::Base(BaseError::Missing { id, .. })) => assert_eq!(id, b.id()),
        other => panic!("expected a missing-base error, got {other:?}"),
    }
    // Another base (other weights, so another id) does not help.
    let other = base_of(&ModNet::init(arch(), 4, 8, 2));
    let opts = DecodeOptions {
        bases: vec![other],
        ..DecodeOptions::default()
    };
    assert!(matches!(
        decode(&e.bytes, &opts),
        Err(DecodeError::Base(BaseError::Missing { .. }))
    ));
    // A weight base cannot be used for modulation encoding.
    let wb = Base::new(arch(), net.params.clone(), "weights".into()).unwrap();
    let mut c = enc_cfg(&b);
    c.base = Some(wb);
    assert!(encode_modulated(&img, &c, &mut |_| {}).is_err());
}

#[test]
fn more_latent_steps_never_give_a_worse_psnr() {
    let net = trained_net();
    let pk = Packed::new(&net);
    let img = image(40, 32, 7);
    let tgt = Target::new(&net, &img);
    let mut last = f64::NEG_INFINITY;
    for steps in [0, 3, 10, 30, 60] {
        let fit = LatentFit {
            steps,
            lr: 0.05,
            frac: 1.0,
            l2: 0.0,
        };
        let z = modulation::fit_latents(&net, &pk, &tgt, &fit, 0, &mut |_| {});
        let p = modulation::psnr_of(&net, &z, &img);
        assert!(p >= last - 1e-9, "{steps} steps: {p} < {last}");
        last = p;
    }
}

#[test]
fn meta_learning_beats_the_initial_network_on_held_out_images() {
    let init = ModNet::init(arch(), 6, 8, 3);
    let net = trained_net();
    let held: Vec<Image> = (10..13).map(|k| image(40, 40, k)).collect();
    let fit = LatentFit {
        steps: 5,
        lr: 0.05,
        frac: 1.0,
        l2: 0.0,
    };
    let before = modulation::validate(&init, &held, &fit);
    let after = modulation::validate(&net, &held, &fit);
    eprintln!("meta: before {before:.2} dB, after {after:.2} dB");
    assert!(
        after > before + 1.0,
        "before {before:.2} dB, after {after:.2} dB"
    );
}

#[test]
fn bpp_target_lands_within_tolerance() {
    let net = trained_net();
    let b = base_of(&net);
    let img = image(64, 64, 4);
    // The rates reachable by moving the step: from the coarsest to a fine one.
    let mut c = enc_cfg(&b);
    c.latent_step = 0.02;
    let fine = encode_modulated(&img, &c, &mut |_| {}).unwrap().bpp;
    let target = 0.6 * fine;
    c.target_bpp = Some(target);
    let e = encode_modulated(&img, &c, &mut |_| {}).unwrap();
    assert!(
        (e.bpp - target).abs() <= inr::RATE_TOLERANCE * target,
        "{} bpp for a target of {target}",
        e.bpp
    );
}

#[test]
fn decoded_images_have_no_cell_seams() {
    let net = trained_net();
    let b = base_of(&net);
    let img = image(64, 64, 5);
    let e = encode_modulated(&img, &enc_cfg(&b), &mut |_| {}).unwrap();
    let r = inr::metrics::seam_ratio(&e.recon, net.cell).unwrap();
    // The metric does see seams: the same picture with each cell shifted by a per-cell offset.
    let mut blocky = e.recon.clone();
    for y in 0..64usize {
        for x in 0..64usize {
            let off = if (x / 8 + y / 8) % 2 == 0 { 12 } else { 0 };
            for k in 0..3 {
                let v = &mut blocky.data[(y * 64 + x) * 3 + k];
                *v = v.saturating_add(off);
            }
        }
    }
    let rb = inr::metrics::seam_ratio(&blocky, net.cell).unwrap();
    let ro = inr::metrics::seam_ratio(&img, net.cell).unwrap();
    let r5 = inr::metrics::seam_ratio(&e.recon, 5).unwrap();
    eprintln!(
        "seam ratio: decoded {r:.3} (at period 5: {r5:.3}), original {ro:.3}, blocky {rb:.3}"
    );
    // Tile seams of 12 levels are plainly detected; the decoded image stays far below that.
    // (This tiny 2x16 network shows some excess at cell borders; the shipped base on kodim15
    // measures 0.98 at its cell period against 0.99-1.00 at other periods: docs/benchmarks.md.)
    assert!(rb > 1.6, "blocky {rb}");
    assert!(r < 1.3, "decoded {r}");
}

#[test]
fn meta_training_resumes_bit_for_bit() {
    let imgs: Vec<Image> = (0..3).map(|k| image(32, 24, k)).collect();
    let cfg = cfg(6);
    let run = |net: &mut ModNet, opt: &mut Adam, range: std::ops::Range<usize>| {
        for i in range {
            modulation::meta_train_step(net, opt, &imgs, &cfg, i);
        }
    };
    let mut a = ModNet::init(arch(), 4, 8, 5);
    let mut oa = Adam::new(a.params.len() + a.map.len());
    run(&mut a, &mut oa, 0..6);
    // Interrupted after 3 iterations, state saved as JSON (as the checkpoint is), resumed.
    let mut b = ModNet::init(arch(), 4, 8, 5);
    let mut ob = Adam::new(b.params.len() + b.map.len());
    run(&mut b, &mut ob, 0..3);
    let st = modulation::ModMetaState {
        iteration: 3,
        flat: b.flat(),
        opt: ob,
    };
    let text = serde_json::to_string(&st).unwrap();
    let st: modulation::ModMetaState = serde_json::from_str(&text).unwrap();
    let mut b = ModNet::from_flat(arch(), 4, 8, &st.flat).unwrap();
    let mut ob = st.opt;
    run(&mut b, &mut ob, st.iteration..6);
    assert_eq!(a.flat(), b.flat());
}

/// The latent and map gradients of a pass (shift gradients scattered to the four nodes of
/// every pixel, then through the map) against finite differences of the loss.
#[test]
fn latent_and_map_gradients_match_finite_differences() {
    let net = ModNet::init(arch(), 3, 4, 9);
    let pk = Packed::new(&net);
    let img = image(13, 9, 3);
    let tgt = Target::new(&net, &img);
    let nodes = tgt.grid.nodes();
    let z: Vec<f32> = (0..nodes * 3)
        .map(|i| ((i * 37 % 17) as f32 / 17.0 - 0.5) * 0.6)
        .collect();
    let loss = |net: &ModNet, z: &[f32]| -> f64 {
        let out = modulation::pass(net, &pk, &tgt, &net.node_shifts(z), 1.0, 0, false);
        out.sse / out.count as f64
    };
    let out = modulation::pass(&net, &pk, &tgt, &net.node_shifts(&z), 1.0, 0, false);
    let gz = modulation::latent_grad(&net, &out.g_nodes, &z, 0.0, out.count);
    let mut gm = vec![0.0f32; net.map.len()];
    modulation::map_grad_acc(&net, &out.g_nodes, &z, &mut gm);
    let h = 1e-3f32;
    for i in (0..z.len()).step_by(5) {
        let (mut zp, mut zm) = (z.clone(), z.clone());
        zp[i] += h;
        zm[i] -= h;
        let fd = (loss(&net, &zp) - loss(&net, &zm)) / (2.0 * h as f64);
        assert!(
            (fd - gz[i] as f64).abs() < 1e-4 + 2e-2 * fd.abs(),
            "latent {i}: fd {fd} analytic {}",
            gz[i]
        );
    }
    for i in (0..gm.len()).step_by(7) {
        let (mut np, mut nm) = (net.clone(), net.clone());
        np.map[i] += h;
        nm.map[i] -= h;
        let fd = (loss(&np, &z) - loss(&nm, &z)) / (2.0 * h as f64);
        assert!(
            (fd - gm[i] as f64).abs() < 1e-4 + 2e-2 * fd.abs(),
            "map {i}: fd {fd} analytic {}",
            gm[i]
        );
    }
}
