//! Meta-learning a base (initialisation) for an architecture with Reptile (Nichol et al.):
//! for each task (a random augmented crop of a training image) run `inner_steps` of the
//! encoder's own optimiser (Adam on random minibatches) from the current base, then move the
//! base towards the adapted weights: `base += eps * (adapted - base)`, with `eps` decaying
//! linearly. First-order, so one task costs exactly `inner_steps` training steps.
//!
//! The same machinery trains audio bases ([`AudioMetaConfig`], [`audio_train`]): a task is a
//! random window of a training clip (random time offset, gain and polarity), fitted with the
//! audio encoder's own window target (`audio_codec::WindowTarget`) and full-batch Adam steps.
//!
//! Determinism and resumption: task `i` is drawn from an RNG seeded by `(seed, i)` alone, and
//! the only state is the base weights and the iteration count, so a run interrupted at any
//! checkpoint and resumed gives bit-for-bit the same base as an uninterrupted one (for a given
//! number of threads or not: fitting is thread-count independent, see the `fit` module).

use crate::audio::{Audio, AudioSpec, SampleKind};
use crate::audio_codec::WindowTarget;
use crate::fit::{psnr_u8, FitTarget, Fitter, Signal};
use crate::format::Arch;
use crate::media::Image;
use crate::model::{self, Grid1, Grid2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Hyperparameters of a meta-training run (all recorded in the base's description).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetaConfig {
    /// Outer iterations (one task each).
    pub iterations: usize,
    /// Encoder steps per task.
    pub inner_steps: usize,
    /// Adam learning rate of the inner loop (the encoder's).
    pub inner_lr: f32,
    /// Pixels per inner step.
    pub batch: usize,
    /// Reptile step at the first iteration; decays linearly to `outer_lr_end`.
    pub outer_lr: f32,
    pub outer_lr_end: f32,
    /// Crop sides are drawn uniformly in `crop_min ..= crop_max` (clamped to the image).
    pub crop_min: u32,
    pub crop_max: u32,
    pub seed: u64,
    /// Sparse meta-learning on a shared support: the base and every inner fit keep only the
    /// seeded masks of this density (`codec-spec.md` §4.6.1), so the base is learned for the
    /// support that `inr encode --prune-method seeded --density D` fixes before its first
    /// step. `None`: dense.
    #[serde(default)]
    pub density: Option<f64>,
    /// A **learned** support instead of the seeded one (Meta-Sparse INR): the base starts
    /// dense and its hidden matrices are pruned by magnitude, every [`PRUNE_EVERY`]
    /// iterations, along the cubic schedule from density 1 to `density`, reached after this
    /// fraction of the iterations (0: pruned once, before the first iteration); the inner fits
    /// keep the current support. The support of the result is its non-zero hidden-matrix
    /// weights (`inr encode --prune-method base` keeps exactly those). `None`: seeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_support: Option<f64>,
    /// The base id (16 hex digits) of the starting point, when it is a base file rather than
    /// the random initialisation of `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Meta-SGD, per tensor: learn a learning-rate multiplier for every tensor of the network
    /// alongside the base, by a first-order hypergradient. After each task's inner fit from
    /// `θ_0` to `θ_K`, `h_t = ⟨∇_t L(θ_K), (θ_K − θ_0)_t⟩` (one more minibatch gradient) is the
    /// derivative of the task loss with respect to `ln s_t` to first order (every update of
    /// tensor `t` scales with `s_t`), and `ln s_t` moves by this step against the sign of
    /// `h_t`, within `[ln 1/8, ln 8]`. `None`: no multipliers. The CLI stores them in the
    /// base's description (`"lr_scale"`), where the encoder finds them
    /// (`codec::base_lr_scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_sgd: Option<f32>,
}

/// Bounds of a Meta-SGD learning-rate multiplier (see [`MetaConfig::meta_sgd`]).
pub const LR_SCALE_RANGE: (f32, f32) = (0.125, 8.0);

/// Iterations between two prunings of a learned support (see [`MetaConfig::learned_support`]).
pub const PRUNE_EVERY: usize = 10;

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            iterations: 1000,
            inner_steps: 16,
            inner_lr: 3e-4,
            batch: 16384,
            outer_lr: 0.5,
            outer_lr_end: 0.05,
            crop_min: 192,
            crop_max: 768,
            seed: 0,
            density: None,
            learned_support: None,
            init: None,
            meta_sgd: None,
        }
    }
}

/// Applies one of the 8 symmetries of the square (`d & 4`: transpose, `d & 1`: flip x,
/// `d & 2`: flip y) to a crop `(x0, y0, w, h)` of `img` (the crop's sides are before the
/// transform).
pub fn augmented_crop(img: &Image, x0: u32, y0: u32, w: u32, h: u32, d: u8) -> Image {
    let c = img.channels as usize;
    let (ow, oh) = if d & 4 != 0 { (h, w) } else { (w, h) };
    let mut data = Vec::with_capacity(ow as usize * oh as usize * c);
    for oy in 0..oh {
        for ox in 0..ow {
            let (mut sx, mut sy) = if d & 4 != 0 { (oy, ox) } else { (ox, oy) };
            if d & 1 != 0 {
                sx = w - 1 - sx;
            }
            if d & 2 != 0 {
                sy = h - 1 - sy;
            }
            let p = ((y0 + sy) as usize * img.width as usize + (x0 + sx) as usize) * c;
            data.extend_from_slice(&img.data[p..p + c]);
        }
    }
    Image {
        width: ow,
        height: oh,
        channels: img.channels,
        data,
    }
}

/// The task of iteration `i`: image index, crop and symmetry, from `(seed, i)` only.
pub fn task(images: &[Image], cfg: &MetaConfig, i: usize) -> Image {
    let mut rng =
        ChaCha8Rng::seed_from_u64(cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let img = &images[rng.gen_range(0..images.len())];
    let side = |rng: &mut ChaCha8Rng, n: u32| {
        let hi = cfg.crop_max.min(n).max(1);
        let lo = cfg.crop_min.min(hi).max(1);
        rng.gen_range(lo..=hi)
    };
    let w = side(&mut rng, img.width);
    let h = side(&mut rng, img.height);
    let x0 = rng.gen_range(0..=img.width - w);
    let y0 = rng.gen_range(0..=img.height - h);
    let d: u8 = rng.gen_range(0..8);
    augmented_crop(img, x0, y0, w, h, d)
}

/// Runs `steps` encoder steps on `img` from `init` (on the support `masks`, if not empty);
/// returns the adapted weights and the exact rendered PSNR after them.
#[allow(clippy::too_many_arguments)]
pub fn adapt(
    arch: &Arch,
    img: &Image,
    init: &[f32],
    steps: usize,
    lr: f32,
    batch: usize,
    seed: u64,
    masks: &[Option<Vec<bool>>],
) -> (Vec<f32>, f64) {
    let (p, psnr, _) = adapt_scaled(arch, img, init, (steps, lr, batch), seed, masks, &[], false);
    (p, psnr)
}

/// As [`adapt`], with per-tensor learning-rate multipliers `lr_scale` (empty: 1), and with the
/// Meta-SGD hypergradient per tensor (see [`MetaConfig::meta_sgd`]) when `hyper` (else empty).
#[allow(clippy::too_many_arguments)]
pub fn adapt_scaled(
    arch: &Arch,
    img: &Image,
    init: &[f32],
    inner: (usize, f32, usize),
    seed: u64,
    masks: &[Option<Vec<bool>>],
    lr_scale: &[f32],
    hyper: bool,
) -> (Vec<f32>, f64, Vec<f64>) {
    let grid = Grid2::new(arch, img.width, img.height);
    let sig = Signal {
        grid: &grid,
        target: img.data.iter().map(|&v| model::from_u8(v)).collect(),
        original: &img.data,
    };
    adapt_target_scaled(arch, &sig, init, inner, seed, masks, lr_scale, hyper)
}

/// The inner loop of every meta-training: `steps` encoder steps (Adam, constant `lr`,
/// minibatches of `batch` points) on any fitting target from `init`, with the weights outside
/// the support `masks` held at 0 when it is not empty (as the encoder does); returns the
/// adapted weights and the exact rendered PSNR after them.
#[allow(clippy::too_many_arguments)]
pub fn adapt_target(
    arch: &Arch,
    sig: &dyn FitTarget,
    init: &[f32],
    steps: usize,
    lr: f32,
    batch: usize,
    seed: u64,
    masks: &[Option<Vec<bool>>],
) -> (Vec<f32>, f64) {
    let (p, psnr, _) =
        adapt_target_scaled(arch, sig, init, (steps, lr, batch), seed, masks, &[], false);
    (p, psnr)
}

/// As [`adapt_target`], with per-tensor learning-rate multipliers `lr_scale` (empty: 1), and
/// with the Meta-SGD hypergradient per tensor (see [`MetaConfig::meta_sgd`]) when `hyper`
/// (else empty).
#[allow(clippy::too_many_arguments)]
pub fn adapt_target_scaled(
    arch: &Arch,
    sig: &dyn FitTarget,
    init: &[f32],
    (steps, lr, batch): (usize, f32, usize),
    seed: u64,
    masks: &[Option<Vec<bool>>],
    lr_scale: &[f32],
    hyper: bool,
) -> (Vec<f32>, f64, Vec<f64>) {
    let mut f = Fitter::new(*arch, sig, init.to_vec(), seed);
    f.lr_scale = lr_scale.to_vec();
    if masks.iter().any(Option::is_some) {
        f.masks = masks.to_vec();
        f.apply_masks();
    }
    for _ in 0..steps {
        f.step(batch, lr, None);
    }
    let psnr = f.eval(None);
    let mut h = Vec::new();
    if hyper {
        f.gradient(batch, None);
        let mut off = 0;
        for n in arch.tensor_lens() {
            let r = off..off + n;
            off += n;
            h.push(
                f.grad()[r.clone()]
                    .iter()
                    .zip(&f.params[r.clone()])
                    .zip(&init[r])
                    .map(|((&g, &p), &p0)| f64::from(g) * f64::from(p - p0))
                    .sum(),
            );
        }
    }
    (f.params, psnr, h)
}

/// Sets the weights outside the support `masks` to 0 (a sparse base's start; the inner fits
/// keep them there, so Reptile does too).
pub fn restrict_to_support(arch: &Arch, params: &mut [f32], masks: &[Option<Vec<bool>>]) {
    let kept = crate::fit::masked(arch, params, masks, None);
    params.copy_from_slice(&kept);
}

/// The support of a sparse base: per hidden matrix, its non-zero weights (the form a learned
/// support is stored in; `inr encode --prune-method base` keeps exactly these). Matrices
/// without a zero, and the tensors pruning never touches, get `None`.
pub fn nonzero_support(arch: &Arch, params: &[f32]) -> Vec<Option<Vec<bool>>> {
    crate::fit::base_support_masks(arch, params)
}

/// The seeded support of `density` (`codec-spec.md` §4.6.1).
pub fn seeded_support(arch: &Arch, density: f64) -> Vec<Option<Vec<bool>>> {
    crate::fit::seeded_masks(arch, density)
}

/// The density a learned support has at iteration `i` (see [`MetaConfig::learned_support`]):
/// `d + (1 - d) (1 - t)^3` with `t` the fraction of the schedule done at the last multiple
/// of [`PRUNE_EVERY`].
pub fn learned_density(cfg: &MetaConfig, i: usize) -> f64 {
    let d = cfg.density.unwrap_or(1.0);
    let end = (cfg.learned_support.unwrap_or(0.0).clamp(0.0, 1.0) * cfg.iterations as f64).round();
    if end <= 0.0 {
        return d;
    }
    let t = (((i / PRUNE_EVERY) * PRUNE_EVERY) as f64 / end).min(1.0);
    d + (1.0 - d) * (1.0 - t).powi(3)
}

/// The support the inner fits of iteration `i` keep (empty: dense): the seeded masks of
/// `density`, or for a learned support the largest-magnitude weights of `params` (the base
/// before the iteration) at [`learned_density`], nested in the base's current support.
pub fn support_at(
    arch: &Arch,
    cfg: &MetaConfig,
    params: &[f32],
    i: usize,
) -> Vec<Option<Vec<bool>>> {
    match (cfg.density, cfg.learned_support) {
        (None, _) => Vec::new(),
        (Some(d), None) => seeded_support(arch, d),
        (Some(_), Some(_)) => crate::fit::magnitude_masks(
            arch,
            params,
            &nonzero_support(arch, params),
            learned_density(cfg, i),
            crate::fit::PruneScope::PerLayer,
        ),
    }
}

/// The Reptile update: `base += eps * (adapted - base)`.
pub fn reptile_update(params: &mut [f32], adapted: &[f32], eps: f32) {
    for (p, &a) in params.iter_mut().zip(adapted) {
        *p += eps * (a - *p);
    }
}

/// Mean PSNR after `steps` encoder steps from `init` over `images` (the meta-learning
/// validation metric: "PSNR after k steps"), on the support `masks` if not empty.
pub fn validate(
    arch: &Arch,
    images: &[Image],
    init: &[f32],
    inner: (usize, f32, usize),
    masks: &[Option<Vec<bool>>],
) -> f64 {
    validate_scaled(arch, images, init, inner, masks, &[])
}

/// As [`validate`], with per-tensor learning-rate multipliers (empty: 1).
pub fn validate_scaled(
    arch: &Arch,
    images: &[Image],
    init: &[f32],
    inner: (usize, f32, usize),
    masks: &[Option<Vec<bool>>],
    lr_scale: &[f32],
) -> f64 {
    let sum: f64 = images
        .iter()
        .enumerate()
        .map(|(k, img)| adapt_scaled(arch, img, init, inner, k as u64, masks, lr_scale, false).1)
        .sum();
    sum / images.len().max(1) as f64
}

/// Reptile step size at iteration `i`.
pub fn outer_lr(cfg: &MetaConfig, i: usize) -> f32 {
    let t = i as f32 / cfg.iterations.max(1) as f32;
    cfg.outer_lr + (cfg.outer_lr_end - cfg.outer_lr) * t
}

/// One Reptile iteration `i` on `params` (in place), and with [`MetaConfig::meta_sgd`] one
/// update of the per-tensor learning-rate multipliers `lr_scale` (filled with 1 when empty).
/// Returns the task's PSNR after adaptation.
pub fn iterate(
    arch: &Arch,
    images: &[Image],
    cfg: &MetaConfig,
    params: &mut [f32],
    lr_scale: &mut Vec<f32>,
    i: usize,
) -> f64 {
    let img = task(images, cfg, i);
    let masks = support_at(arch, cfg, params, i);
    restrict_to_support(arch, params, &masks);
    if cfg.meta_sgd.is_some() && lr_scale.is_empty() {
        *lr_scale = vec![1.0; arch.num_tensors()];
    }
    let (adapted, psnr, h) = adapt_scaled(
        arch,
        &img,
        params,
        (cfg.inner_steps, cfg.inner_lr, cfg.batch),
        cfg.seed.wrapping_add(i as u64),
        &masks,
        lr_scale,
        cfg.meta_sgd.is_some(),
    );
    if let Some(beta) = cfg.meta_sgd {
        let (lo, hi) = LR_SCALE_RANGE;
        for (s, &h) in lr_scale.iter_mut().zip(&h) {
            if h != 0.0 {
                *s = (*s * (-beta * h.signum() as f32).exp()).clamp(lo, hi);
            }
        }
    }
    reptile_update(params, &adapted, outer_lr(cfg, i));
    psnr
}

/// Runs iterations `start .. cfg.iterations` on `params`, calling `on_iter(i, params,
/// task_psnr)` after iteration `i`; stops early when it returns `false`. Returns the number of
/// completed iterations.
pub fn train(
    arch: &Arch,
    images: &[Image],
    cfg: &MetaConfig,
    params: &mut [f32],
    start: usize,
    on_iter: &mut dyn FnMut(usize, &[f32], f64) -> bool,
) -> usize {
    let mut lr_scale = Vec::new();
    train_scaled(
        arch,
        images,
        cfg,
        params,
        &mut lr_scale,
        start,
        &mut |i, p, _, psnr| on_iter(i, p, psnr),
    )
}

/// The callback of [`train_scaled`]: `(iteration, base, learning-rate multipliers, task
/// PSNR)`, returning whether to go on.
pub type OnIteration<'a> = dyn FnMut(usize, &[f32], &[f32], f64) -> bool + 'a;

/// As [`train`], with the Meta-SGD learning-rate multipliers `lr_scale` (see
/// [`MetaConfig::meta_sgd`]; the state to resume from, with the base) passed to `on_iter`.
pub fn train_scaled(
    arch: &Arch,
    images: &[Image],
    cfg: &MetaConfig,
    params: &mut [f32],
    lr_scale: &mut Vec<f32>,
    start: usize,
    on_iter: &mut OnIteration<'_>,
) -> usize {
    if images.is_empty() {
        return start;
    }
    for i in start..cfg.iterations {
        let psnr = iterate(arch, images, cfg, params, lr_scale, i);
        if !on_iter(i, params, lr_scale, psnr) {
            return i + 1;
        }
    }
    cfg.iterations.max(start)
}

// ---------------------------------------------------------------------------------------------
// Audio bases.
// ---------------------------------------------------------------------------------------------

/// Hyperparameters of an audio meta-training run (recorded in the base's description).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AudioMetaConfig {
    /// Outer iterations (each averages the updates of `tasks` windows).
    pub iterations: usize,
    /// Windows per outer iteration (fitted in parallel, their Reptile directions averaged
    /// in order).
    pub tasks: usize,
    /// Full-batch encoder steps per window.
    pub inner_steps: usize,
    /// Adam learning rate of the inner loop (the audio encoder's).
    pub inner_lr: f32,
    /// Reptile step at the first iteration; decays linearly to `outer_lr_end`.
    pub outer_lr: f32,
    pub outer_lr_end: f32,
    /// Frames per window (the preset's window at the clips' rate).
    pub window: u32,
    /// Gain drawn log-uniformly in `gain_min ..= gain_max`, then capped so the window's peak
    /// stays within 1; the polarity is flipped with probability 1/2.
    pub gain_min: f32,
    pub gain_max: f32,
    pub seed: u64,
}

impl Default for AudioMetaConfig {
    fn default() -> Self {
        AudioMetaConfig {
            iterations: 2000,
            tasks: 4,
            inner_steps: 16,
            inner_lr: 5e-3,
            outer_lr: 0.5,
            outer_lr_end: 0.05,
            window: 512,
            gain_min: 0.25,
            gain_max: 4.0,
            seed: 0,
        }
    }
}

/// A window of audio to fit: `window * channels` values in [-1, 1], channels interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTask {
    pub samples: Vec<f32>,
    pub channels: u8,
    pub sample_rate: u32,
}

/// The `j`-th window of iteration `i`, from `(seed, i, j)` only: a clip (chosen with
/// probability proportional to its number of window positions), a time offset (any frame),
/// a gain and a polarity. Clips shorter than a window are padded with silence. Every clip must
/// have the network's `out_channels` channels. No clips: a silent mono window.
pub fn audio_task(clips: &[Audio], cfg: &AudioMetaConfig, i: usize, j: usize) -> AudioTask {
    if clips.is_empty() {
        return AudioTask {
            samples: vec![0.0; cfg.window as usize],
            channels: 1,
            sample_rate: 16_000,
        };
    }
    let key = (i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ key ^ 0xA0D1_0000);
    let l = cfg.window.max(1) as u64;
    let starts: Vec<u64> = clips
        .iter()
        .map(|c| c.frames().saturating_sub(l) + 1)
        .collect();
    let total: u64 = starts.iter().sum();
    let mut r = rng.gen_range(0..total.max(1));
    let mut k = 0;
    while k + 1 < clips.len() && r >= starts[k] {
        r -= starts[k];
        k += 1;
    }
    let clip = &clips[k];
    let c = usize::from(clip.spec.channels.max(1));
    let mut samples = vec![0.0f32; l as usize * c];
    let from = r as usize * c;
    let avail = clip.samples.len().saturating_sub(from).min(samples.len());
    samples[..avail].copy_from_slice(&clip.samples[from..from + avail]);
    let (lo, hi) = (
        cfg.gain_min.max(1e-6),
        cfg.gain_max.max(cfg.gain_min.max(1e-6)),
    );
    let mut g = (rng.gen_range(0.0f32..=1.0) * (hi / lo).ln() + lo.ln()).exp();
    let peak = samples.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    if peak > 0.0 && peak * g > 1.0 {
        g = 1.0 / peak;
    }
    if rng.gen::<bool>() {
        g = -g;
    }
    for v in &mut samples {
        *v = (*v * g).clamp(-1.0, 1.0);
    }
    AudioTask {
        samples,
        channels: clip.spec.channels,
        sample_rate: clip.spec.sample_rate,
    }
}

/// Runs `steps` full-batch encoder steps on an audio window from `init`, with the audio
/// encoder's own fitting target; returns the adapted weights and the PSNR (16-bit output,
/// waveform mapped to [0, 1]) after them.
pub fn audio_adapt(
    arch: &Arch,
    task: &AudioTask,
    init: &[f32],
    steps: usize,
    lr: f32,
    seed: u64,
) -> (Vec<f32>, f64) {
    let c = usize::from(task.channels.max(1));
    let frames = task.samples.len() / c;
    let grid = Grid1::new(arch, frames as u32);
    let sig = WindowTarget {
        grid: &grid,
        frames,
        channels: c,
        target: &task.samples,
        spec: AudioSpec {
            sample_rate: task.sample_rate,
            channels: task.channels,
            kind: SampleKind::Int,
            bits_per_sample: 16,
        },
    };
    adapt_target(arch, &sig, init, steps, lr, frames, seed, &[])
}

/// Mean PSNR after `steps` encoder steps from `init` over `tasks` (the validation metric).
pub fn audio_validate(
    arch: &Arch,
    tasks: &[AudioTask],
    init: &[f32],
    steps: usize,
    lr: f32,
) -> f64 {
    let psnrs: Vec<f64> = tasks
        .par_iter()
        .enumerate()
        .map(|(k, t)| audio_adapt(arch, t, init, steps, lr, k as u64).1)
        .collect();
    psnrs.iter().sum::<f64>() / tasks.len().max(1) as f64
}

/// One audio Reptile iteration `i` on `params` (in place): `cfg.tasks` windows adapted in
/// parallel from the same base, then `base += eps * mean(adapted - base)` summed in task order
/// (so the result does not depend on the thread count). Returns the mean task PSNR.
pub fn audio_iterate(
    arch: &Arch,
    clips: &[Audio],
    cfg: &AudioMetaConfig,
    params: &mut [f32],
    i: usize,
) -> f64 {
    let n = cfg.tasks.max(1);
    let base: &[f32] = params;
    let adapted: Vec<(Vec<f32>, f64)> = (0..n)
        .into_par_iter()
        .map(|j| {
            let t = audio_task(clips, cfg, i, j);
            let seed = cfg.seed.wrapping_add((i * n + j) as u64);
            audio_adapt(arch, &t, base, cfg.inner_steps, cfg.inner_lr, seed)
        })
        .collect();
    let mut mean = vec![0.0f32; params.len()];
    for (a, _) in &adapted {
        for (m, &v) in mean.iter_mut().zip(a) {
            *m += v;
        }
    }
    for m in &mut mean {
        *m /= n as f32;
    }
    let t = i as f32 / cfg.iterations.max(1) as f32;
    let eps = cfg.outer_lr + (cfg.outer_lr_end - cfg.outer_lr) * t;
    reptile_update(params, &mean, eps);
    adapted.iter().map(|(_, p)| p).sum::<f64>() / n as f64
}

/// Runs audio iterations `start .. cfg.iterations` on `params`, calling `on_iter(i, params,
/// task_psnr)` after iteration `i`; stops early when it returns `false`. Returns the number of
/// completed iterations.
pub fn audio_train(
    arch: &Arch,
    clips: &[Audio],
    cfg: &AudioMetaConfig,
    params: &mut [f32],
    start: usize,
    on_iter: &mut dyn FnMut(usize, &[f32], f64) -> bool,
) -> usize {
    if clips.is_empty() {
        return start;
    }
    for i in start..cfg.iterations {
        let psnr = audio_iterate(arch, clips, cfg, params, i);
        if !on_iter(i, params, psnr) {
            return i + 1;
        }
    }
    cfg.iterations.max(start)
}

/// The PSNR of a network on an image, without fitting.
pub fn psnr_of(arch: &Arch, params: &[f32], img: &Image) -> f64 {
    psnr_u8(
        &model::render(arch, params, img.width, img.height),
        &img.data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32) -> Image {
        Image {
            width: w,
            height: h,
            channels: 1,
            data: (0..w * h).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn symmetries_are_exact_permutations() {
        let im = img(5, 3);
        let id = augmented_crop(&im, 0, 0, 5, 3, 0);
        assert_eq!(id, im);
        let t = augmented_crop(&im, 0, 0, 5, 3, 4);
        assert_eq!((t.width, t.height), (3, 5));
        // Transposed pixel (x, y) is original (y, x).
        assert_eq!(t.data[3 + 2], im.data[2 * 5 + 1]);
        let fx = augmented_crop(&im, 1, 1, 3, 2, 1);
        assert_eq!(fx.data, vec![8, 7, 6, 13, 12, 11]);
        for d in 0..8 {
            let mut a = augmented_crop(&im, 0, 0, 5, 3, d).data;
            a.sort_unstable();
            let mut b = im.data.clone();
            b.sort_unstable();
            assert_eq!(a, b, "{d}");
        }
    }

    #[test]
    fn tasks_depend_only_on_seed_and_index() {
        let ims = vec![img(40, 30), img(30, 40)];
        let cfg = MetaConfig {
            crop_min: 8,
            crop_max: 24,
            ..MetaConfig::default()
        };
        for i in 0..20 {
            let t = task(&ims, &cfg, i);
            assert_eq!(t, task(&ims, &cfg, i));
            assert!((8..=24).contains(&t.width) && (8..=24).contains(&t.height));
        }
        assert_ne!(task(&ims, &cfg, 1), task(&ims, &cfg, 2));
    }
}
