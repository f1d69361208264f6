//! Meta-learning a base (initialisation) for an architecture with Reptile (Nichol et al.):
//! for each task (a random augmented crop of a training image) run `inner_steps` of the
//! encoder's own optimiser (Adam on random minibatches) from the current base, then move the
//! base towards the adapted weights: `base += eps * (adapted - base)`, with `eps` decaying
//! linearly. First-order, so one task costs exactly `inner_steps` training steps.
//!
//! Determinism and resumption: task `i` is drawn from an RNG seeded by `(seed, i)` alone, and
//! the only state is the base weights and the iteration count, so a run interrupted at any
//! checkpoint and resumed gives bit-for-bit the same base as an uninterrupted one (for a given
//! number of threads or not: fitting is thread-count independent, see [`crate::fit`]).

use crate::fit::{psnr_u8, Fitter, Signal};
use crate::format::Arch;
use crate::media::Image;
use crate::model::{self, Grid2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
}

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

/// Runs `steps` encoder steps on `img` from `init`; returns the adapted weights and the exact
/// rendered PSNR after them.
pub fn adapt(
    arch: &Arch,
    img: &Image,
    init: &[f32],
    steps: usize,
    lr: f32,
    batch: usize,
    seed: u64,
) -> (Vec<f32>, f64) {
    let grid = Grid2::new(arch, img.width, img.height);
    let sig = Signal {
        grid: &grid,
        target: img.data.iter().map(|&v| model::from_u8(v)).collect(),
        original: &img.data,
    };
    let mut f = Fitter::new(*arch, &sig, init.to_vec(), seed);
    for _ in 0..steps {
        f.step(batch, lr, None);
    }
    let psnr = f.eval(None);
    (f.params, psnr)
}

/// Mean PSNR after `steps` encoder steps from `init` over `images` (the meta-learning
/// validation metric: "PSNR after k steps").
pub fn validate(
    arch: &Arch,
    images: &[Image],
    init: &[f32],
    steps: usize,
    lr: f32,
    batch: usize,
) -> f64 {
    let sum: f64 = images
        .iter()
        .enumerate()
        .map(|(k, img)| adapt(arch, img, init, steps, lr, batch, k as u64).1)
        .sum();
    sum / images.len().max(1) as f64
}

/// Reptile step size at iteration `i`.
pub fn outer_lr(cfg: &MetaConfig, i: usize) -> f32 {
    let t = i as f32 / cfg.iterations.max(1) as f32;
    cfg.outer_lr + (cfg.outer_lr_end - cfg.outer_lr) * t
}

/// One Reptile iteration `i` on `params` (in place). Returns the task's PSNR after adaptation.
pub fn iterate(
    arch: &Arch,
    images: &[Image],
    cfg: &MetaConfig,
    params: &mut [f32],
    i: usize,
) -> f64 {
    let img = task(images, cfg, i);
    let (adapted, psnr) = adapt(
        arch,
        &img,
        params,
        cfg.inner_steps,
        cfg.inner_lr,
        cfg.batch,
        cfg.seed.wrapping_add(i as u64),
    );
    let eps = outer_lr(cfg, i);
    for (p, a) in params.iter_mut().zip(adapted) {
        *p += eps * (a - *p);
    }
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
    if images.is_empty() {
        return start;
    }
    for i in start..cfg.iterations {
        let psnr = iterate(arch, images, cfg, params, i);
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
