//! Meta-learning the start of grid-mode fits (a grid base, `codec-spec.md` §10.5) with
//! Reptile: each iteration fits a random augmented crop of a training image with the grid
//! encoder's own fit ([`grid::fit_from`]: latents, synthesis network, entropy model and
//! predictor, at a rate weight λ drawn log-uniformly from the presets' range) from the current
//! start, then moves the start towards the result: `start += eps * (fitted - start)`.
//!
//! The start has three parts: the synthesis network (what a grid base stores and the encoder
//! starts from), and the entropy model's log-scales and the predictor's coefficients, which
//! the inner fits start from during training but which are not shipped (a start for them
//! made fits at small λ worse: see `docs/benchmarks.md`). The latents always start at 0.
//!
//! Determinism and resumption: task `i` (crop, symmetry, λ) is drawn from an RNG seeded by
//! `(seed, i)` alone and a grid fit does not depend on the thread count, so a run resumed from
//! a checkpoint (the three parts and the iteration count) gives bit-for-bit the same start as
//! an uninterrupted one.

use crate::base::Base;
use crate::codec::{BaseChoice, EncodeError};
use crate::format::Arch;
use crate::grid::{self, GridFit, GridStart, Pyramid, Sampler};
use crate::grid_codec::{encode_grid, GridEncodeConfig};
use crate::media::Image;
use crate::meta::{self, MetaConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Hyperparameters of a grid meta-training run (all recorded in the base's description).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GridMetaConfig {
    /// Outer iterations (one task each).
    pub iterations: usize,
    /// Fitting budget of each task in full-resolution steps (as `--steps` of the encoder).
    pub budget: usize,
    /// Range of the tasks' rate weights (drawn log-uniformly).
    pub lambda_min: f32,
    pub lambda_max: f32,
    /// Reptile step at the first iteration; linear to `outer_lr_end` at the last.
    pub outer_lr: f32,
    pub outer_lr_end: f32,
    /// Crop sides are drawn uniformly in `crop_min ..= crop_max` (clamped to the image).
    pub crop_min: u32,
    pub crop_max: u32,
    pub seed: u64,
}

impl Default for GridMetaConfig {
    /// The recipe of the embedded grid base (`bases/README.md`). Chosen on kodim01–09 with
    /// kodim10–12 held out (100-step fits, mean `MSE + λ·bpp` against the random start):
    /// 150 iterations at a constant step of 0.1 gave −1.6 / −1.5 / −1.9 / −7.8 % at
    /// λ = 0.03 / 0.005 / 0.002 / 0.0008; keeping the entropy model and predictor at their
    /// defaults in the inner fits, 300 iterations, gave −0.7 % (0.005) and −6.6 % (0.0008);
    /// with the step falling from 0.2 to 0.02, −1.8 / +0.1 / −4.8 % (0.03 / 0.005 / 0.0008).
    fn default() -> Self {
        GridMetaConfig {
            iterations: 150,
            budget: 100,
            lambda_min: 0.0008,
            lambda_max: 0.03,
            outer_lr: 0.1,
            outer_lr_end: 0.1,
            crop_min: 256,
            crop_max: 256,
            seed: 0,
        }
    }
}

/// The starting point of a run: the encoder's random synthesis (seeded by `seed`), unit
/// scales and a zero predictor, for `arch` (`coord_dims` = levels).
pub fn initial_start(arch: &Arch, seed: u64) -> GridStart {
    let n_l = usize::from(arch.coord_dims);
    GridStart {
        params: grid::init_params(arch, seed),
        log_scales: vec![0.0; n_l * crate::entropy::MAX_GRID_CONTEXTS],
        pred_coefs: vec![[0.0; crate::entropy::GRID_PRED_TAPS]; n_l],
        latents: None,
    }
}

/// Reptile step size at iteration `i`.
fn outer_lr(cfg: &GridMetaConfig, i: usize) -> f32 {
    let t = i as f32 / cfg.iterations.max(1) as f32;
    cfg.outer_lr + (cfg.outer_lr_end - cfg.outer_lr) * t
}

/// The task of iteration `i`: an augmented crop (as [`meta::task`]) and a rate weight, from
/// `(seed, i)` only.
pub fn task(images: &[Image], cfg: &GridMetaConfig, i: usize) -> (Image, f32) {
    let crops = MetaConfig {
        crop_min: cfg.crop_min,
        crop_max: cfg.crop_max,
        seed: cfg.seed,
        ..MetaConfig::default()
    };
    let img = meta::task(images, &crops, i);
    let mut rng = ChaCha8Rng::seed_from_u64(
        cfg.seed ^ 0x6772_6964 ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let (lo, hi) = (
        cfg.lambda_min.max(1e-9).ln(),
        cfg.lambda_max.max(cfg.lambda_min).max(1e-9).ln(),
    );
    let lambda = if hi > lo {
        rng.gen_range(lo..hi).exp()
    } else {
        lo.exp()
    };
    (img, lambda)
}

/// One Reptile iteration `i` on `start` (in place). Returns the task's PSNR (dB) with the
/// fitted latents rounded.
pub fn iterate(
    arch: &Arch,
    images: &[Image],
    cfg: &GridMetaConfig,
    start: &mut GridStart,
    i: usize,
) -> f64 {
    let (img, lambda) = task(images, cfg, i);
    let pyr = Pyramid::new(img.width, img.height, arch.coord_dims);
    let target: Vec<f32> = img.data.iter().map(|&v| crate::model::from_u8(v)).collect();
    let mut fit = GridFit {
        lambda,
        ..GridFit::default()
    };
    fit.set_budget(cfg.budget);
    let seed = cfg.seed.wrapping_add(i as u64);
    let r = grid::fit_from(arch, &pyr, &target, &fit, seed, Some(start), &mut |_| {});
    let eps = outer_lr(cfg, i);
    meta::reptile_update(&mut start.params, &r.params, eps);
    let ln_scales: Vec<f32> = r.scales.iter().map(|s| s.ln()).collect();
    meta::reptile_update(&mut start.log_scales, &ln_scales, eps);
    for (c, f) in start.pred_coefs.iter_mut().zip(&r.pred_coefs) {
        meta::reptile_update(c, f, eps);
    }
    let rounded: Vec<f32> = r.latents.iter().map(|v| v.round()).collect();
    let sm = Sampler::new(pyr, img.width, img.height);
    crate::fit::psnr_u8(&grid::render(arch, &r.params, &rounded, &sm), &img.data)
}

/// Runs iterations `from .. cfg.iterations` on `start`, calling `on_iter(i, start,
/// task_psnr)` after iteration `i`; stops early when it returns `false`. Returns the number of
/// completed iterations.
pub fn train(
    arch: &Arch,
    images: &[Image],
    cfg: &GridMetaConfig,
    start: &mut GridStart,
    from: usize,
    on_iter: &mut dyn FnMut(usize, &GridStart, f64) -> bool,
) -> usize {
    if images.is_empty() {
        return from;
    }
    for i in from..cfg.iterations {
        let psnr = iterate(arch, images, cfg, start, i);
        if !on_iter(i, start, psnr) {
            return i + 1;
        }
    }
    cfg.iterations.max(from)
}

/// Validation of a synthesis start: the grid encoder (the architecture, seed and threads of
/// `arch_of`) at `lambda` with a budget of `budget` steps on every image (real files), from
/// `params` (`None`: the random start). Returns the
/// means of `MSE + λ·bpp` (MSE in [0, 1] units), PSNR (dB) and bits per pixel.
///
/// # Errors
/// An encoder error (an image the grid mode refuses).
pub fn validate(
    images: &[Image],
    arch_of: &GridEncodeConfig,
    params: Option<&[f32]>,
    lambda: f32,
    budget: usize,
) -> Result<(f64, f64, f64), EncodeError> {
    let (mut j, mut p, mut b) = (0.0, 0.0, 0.0);
    for img in images {
        let mut cfg = GridEncodeConfig {
            levels: arch_of.levels,
            width: arch_of.width,
            depth: arch_of.depth,
            w0: arch_of.w0,
            seed: arch_of.seed,
            threads: arch_of.threads,
            ..GridEncodeConfig::default()
        };
        cfg.fit.lambda = lambda;
        cfg.fit.set_budget(budget);
        cfg.base = match params {
            Some(p) => {
                let arch = crate::grid_codec::grid_arch(&cfg, img.channels);
                BaseChoice::Custom(
                    Base::new_grid(arch, p.to_vec(), String::new())
                        .map_err(|e| EncodeError::Parameter(e.to_string()))?,
                )
            }
            None => BaseChoice::None,
        };
        let e = encode_grid(img, &cfg, &mut |_| {})?;
        j += crate::grid_codec::rd_cost(e.psnr, e.bpp, lambda);
        p += e.psnr;
        b += e.bpp;
    }
    let n = images.len().max(1) as f64;
    Ok((j / n, p / n, b / n))
}

/// The encoder's start from a synthesis network alone (unit scales, zero predictor).
pub fn start_of(arch: &Arch, params: Vec<f32>) -> GridStart {
    let n_l = usize::from(arch.coord_dims);
    GridStart {
        params,
        log_scales: vec![0.0; n_l * crate::entropy::MAX_GRID_CONTEXTS],
        pred_coefs: vec![[0.0; crate::entropy::GRID_PRED_TAPS]; n_l],
        latents: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared synthesis networks (§13.8): one network for every image, learned jointly with the
// latents of a mosaic of training crops.
// ---------------------------------------------------------------------------------------------

/// Hyperparameters of `inr meta-train --mode grid-shared` (recorded in the base's description).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharedConfig {
    /// Full-resolution steps of the joint fit.
    pub steps: usize,
    /// Rate weight of the joint fit.
    pub lambda: f32,
    /// Side of the square centre crop taken from every training image (clamped to the image).
    pub crop: u32,
    /// Adam learning rate of the network (cosine decay).
    pub lr_net: f32,
    pub seed: u64,
}

impl Default for SharedConfig {
    /// The recipe of the embedded shared synthesis (`bases/README.md`).
    fn default() -> Self {
        SharedConfig {
            steps: 1000,
            lambda: 0.005,
            crop: 512,
            lr_net: 0.01,
            seed: 0,
        }
    }
}

/// The training mosaic: a centre crop of `crop` x `crop` pixels (each side clamped to the
/// image) of every image, placed in reading order on a grid of `ceil(sqrt(n))` columns of
/// cells of the largest crop's size; the rest of a cell is mid grey. Crops start at multiples
/// of the cell size, so a coarse latent spans at most a few images.
pub fn mosaic(images: &[Image], crop: u32) -> Option<Image> {
    let channels = images.first()?.channels;
    if images.iter().any(|i| i.channels != channels) {
        return None;
    }
    let crops: Vec<Image> = images
        .iter()
        .map(|img| {
            let (w, h) = (crop.min(img.width).max(1), crop.min(img.height).max(1));
            meta::augmented_crop(img, (img.width - w) / 2, (img.height - h) / 2, w, h, 0)
        })
        .collect();
    let cols = (crops.len() as f64).sqrt().ceil().max(1.0) as u32;
    let rows = (crops.len() as u32).div_ceil(cols);
    let cw = crops.iter().map(|c| c.width).max()?;
    let ch = crops.iter().map(|c| c.height).max()?;
    let (w, h) = (cw * cols, ch * rows);
    let c = usize::from(channels);
    let mut data = vec![128u8; w as usize * h as usize * c];
    for (k, cr) in crops.iter().enumerate() {
        let (x0, y0) = ((k as u32 % cols) * cw, (k as u32 / cols) * ch);
        for y in 0..cr.height {
            let src = (y * cr.width) as usize * c;
            let dst = ((y0 + y) * w + x0) as usize * c;
            let n = cr.width as usize * c;
            data[dst..dst + n].copy_from_slice(&cr.data[src..src + n]);
        }
    }
    Some(Image {
        width: w,
        height: h,
        channels,
        data,
    })
}

/// Learns a shared synthesis network for `arch`: one grid fit ([`grid::fit_from`], network
/// and latents together) of the [`mosaic`] of `images`, from `start` (the grid base fits start
/// from, or the seeded random network). The latents are thrown away; the network is the
/// result. `progress(step)` is called after every step. Deterministic for given inputs (a
/// grid fit does not depend on the thread count).
pub fn train_shared(
    arch: &Arch,
    images: &[Image],
    cfg: &SharedConfig,
    start: Option<&[f32]>,
    progress: &mut dyn FnMut(usize),
) -> Option<Vec<f32>> {
    let m = mosaic(images, cfg.crop)?;
    let pyr = Pyramid::new(m.width, m.height, arch.coord_dims);
    let target: Vec<f32> = m.data.iter().map(|&v| crate::model::from_u8(v)).collect();
    let fit = GridFit {
        steps: cfg.steps,
        lambda: cfg.lambda,
        lr_net: cfg.lr_net,
        ..GridFit::default()
    };
    let start = start.map(|p| start_of(arch, p.to_vec()));
    let r = grid::fit_from(
        arch,
        &pyr,
        &target,
        &fit,
        cfg.seed,
        start.as_ref(),
        progress,
    );
    Some(r.params)
}

// ---------------------------------------------------------------------------------------------
// Audio grid bases (§10.5, modality 2): the start of the segment networks of the audio grid
// mode (§14), learned the same way on random crops of training clips.
// ---------------------------------------------------------------------------------------------

/// Hyperparameters of an audio grid meta-training run (recorded in the base's description).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AudioGridMetaConfig {
    /// Outer iterations (one task each).
    pub iterations: usize,
    /// Steps of each task's fit.
    pub budget: usize,
    /// Range of the tasks' rate weights (drawn log-uniformly).
    pub lambda_min: f32,
    pub lambda_max: f32,
    /// Reptile step (constant).
    pub outer_lr: f32,
    /// Frames per task (a random crop of a random clip; the whole clip if shorter).
    pub crop: u32,
    pub seed: u64,
}

impl Default for AudioGridMetaConfig {
    /// The recipe of the embedded audio grid base (`bases/README.md`). Chosen on a time split
    /// of the three shared clips (first two thirds for training, the last third held out,
    /// 200-step encodes, before the λ-dependent latent learning rate): 150 iterations gave a
    /// mean `MSE + λ·bits per frame` of −2.0 / −4.3 / −19.5 % against the random start at
    /// λ = 0.002 / 0.0002 / 0.00001, 300 iterations −3.7 / −4.9 / −18.4 %.
    fn default() -> Self {
        AudioGridMetaConfig {
            iterations: 300,
            budget: 100,
            lambda_min: 0.00001,
            lambda_max: 0.002,
            outer_lr: 0.1,
            crop: 8192,
            seed: 0,
        }
    }
}

/// The task of iteration `i`, from `(seed, i)` only: a crop of `cfg.crop` frames of a random
/// clip (channels interleaved, all clips with the same channel count), scaled by a gain
/// `e^u` (`u` uniform in [−1, 1]) and a random polarity, clamped to [−1, 1]; and a rate
/// weight. Returns the samples, their frame count and λ.
pub fn audio_task(
    clips: &[crate::audio::Audio],
    cfg: &AudioGridMetaConfig,
    i: usize,
) -> (Vec<f32>, usize, f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(
        cfg.seed ^ 0x6175_6467 ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let clip = &clips[rng.gen_range(0..clips.len())];
    let c = usize::from(clip.spec.channels.max(1));
    let frames = clip.samples.len() / c;
    let len = (cfg.crop as usize).clamp(1, frames.max(1));
    let off = rng.gen_range(0..=frames.saturating_sub(len));
    let gain = rng.gen_range(-1.0f32..=1.0).exp();
    let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
    let samples = clip
        .samples
        .get(off * c..(off + len) * c)
        .unwrap_or(&[])
        .iter()
        .map(|&v| (v * gain * sign).clamp(-1.0, 1.0))
        .collect();
    let (lo, hi) = (
        cfg.lambda_min.max(1e-12).ln(),
        cfg.lambda_max.max(cfg.lambda_min).max(1e-12).ln(),
    );
    let lambda = if hi > lo {
        rng.gen_range(lo..hi).exp()
    } else {
        lo.exp()
    };
    (samples, len, lambda)
}

/// One Reptile iteration `i` on the synthesis start `params` (in place): the task's fit from
/// it, then `params += eps * (fitted - params)`. Returns the task's PSNR (dB, waveform mapped
/// to [0, 1]) with the fitted latents rounded.
pub fn iterate_audio(
    arch: &Arch,
    clips: &[crate::audio::Audio],
    cfg: &AudioGridMetaConfig,
    params: &mut [f32],
    i: usize,
) -> f64 {
    let (target, frames, lambda) = audio_task(clips, cfg, i);
    let pyr = Pyramid::new(frames as u32, 1, arch.coord_dims);
    let steps = cfg.budget.max(1);
    // The audio grid encoder's latent learning rate for this λ and step count.
    let fit = GridFit {
        steps,
        lambda,
        lr_latent: Some(crate::audio_grid_codec::latent_lr(lambda, steps)),
        soft_round: None,
        contexts: crate::entropy::GridContexts::Five,
        ..GridFit::default()
    };
    let start = start_of(arch, params.to_vec());
    let seed = cfg.seed.wrapping_add(i as u64);
    let r = grid::fit_from(arch, &pyr, &target, &fit, seed, Some(&start), &mut |_| {});
    meta::reptile_update(params, &r.params, cfg.outer_lr);
    let rounded: Vec<f32> = r.latents.iter().map(|v| v.round()).collect();
    let sm = Sampler::new(pyr, frames as u32, 1);
    let y = grid::render_values(arch, &r.params, &rounded, &sm);
    let se: f64 = y
        .iter()
        .zip(&target)
        .map(|(&a, &b)| (f64::from(a.clamp(-1.0, 1.0)) - f64::from(b)).powi(2))
        .sum();
    let mse = 0.25 * se / target.len().max(1) as f64;
    -10.0 * mse.max(1e-12).log10()
}

/// Runs iterations `from .. cfg.iterations` on `params`, calling `on_iter(i, params,
/// task_psnr)` after iteration `i`; stops early when it returns `false`. Returns the number of
/// completed iterations. Deterministic for a seed, and a run resumed from a checkpoint (the
/// parameters and the iteration count) gives bit-for-bit the same base.
pub fn train_audio(
    arch: &Arch,
    clips: &[crate::audio::Audio],
    cfg: &AudioGridMetaConfig,
    params: &mut [f32],
    from: usize,
    on_iter: &mut dyn FnMut(usize, &[f32], f64) -> bool,
) -> usize {
    if clips.is_empty() {
        return from;
    }
    for i in from..cfg.iterations {
        let psnr = iterate_audio(arch, clips, cfg, params, i);
        if !on_iter(i, params, psnr) {
            return i + 1;
        }
    }
    cfg.iterations.max(from)
}
