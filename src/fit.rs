//! Per-signal fitting: Adam on random minibatches with a cosine learning-rate schedule,
//! keep-the-best weights, and quantization-aware fine-tuning (straight-through estimator).
//!
//! Determinism: a minibatch is split into fixed chunks of [`CHUNK`] pixels whatever the
//! number of threads; each chunk's gradient goes to its own buffer and the buffers are summed
//! in chunk order, so the same seed gives the same weights on 1 or 64 threads.

use crate::format::{self, Arch, Codebook, Step};
use crate::kernel::{self, NetShape, TrainScratch, TILE};
use crate::model::{self, Grid2};
use crate::quant;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Pixels per gradient chunk (the unit of parallel work and of deterministic summation).
pub const CHUNK: usize = 4096;

/// What a [`Fitter`] fits: `n_points` samples (pixels, audio frames), each with
/// `n_features` network inputs and `n_out` target values, plus the exact quality (dB) of a
/// network as the decoder renders it (used to keep the best weights). Implemented by
/// [`Signal`] (images) and by the audio windows of `audio_codec`.
pub trait FitTarget: Sync {
    fn n_points(&self) -> usize;
    fn n_features(&self) -> usize;
    /// Write the features of point `idx` into `out` (`n_features` long).
    fn features(&self, idx: usize, out: &mut [f32]);
    /// The `n_out` target values of point `idx`.
    fn target(&self, idx: usize) -> &[f32];
    /// PSNR (dB) of the decoder's output for real-layout `params` against the original.
    fn eval(&self, arch: &Arch, params: &[f32]) -> f64;
    /// [`FitTarget::eval`] of each of `params` (equal results; an implementation may share
    /// the work of variants of `params[0]`).
    fn eval_many(&self, arch: &Arch, params: &[Vec<f32>]) -> Vec<f64> {
        params.iter().map(|p| self.eval(arch, p)).collect()
    }
}

/// The signal being fitted: features come from `grid`, targets are in [-1, 1].
pub struct Signal<'a> {
    pub grid: &'a Grid2,
    /// `n_pixels * channels`, interleaved.
    pub target: Vec<f32>,
    /// Original 8-bit samples, for exact PSNR of the rendered network.
    pub original: &'a [u8],
}

impl FitTarget for Signal<'_> {
    fn n_points(&self) -> usize {
        self.grid.width as usize * self.grid.height as usize
    }
    fn n_features(&self) -> usize {
        self.grid.n_features()
    }
    #[inline]
    fn features(&self, idx: usize, out: &mut [f32]) {
        self.grid.features(idx, out)
    }
    #[inline]
    fn target(&self, idx: usize) -> &[f32] {
        let c = self.target.len() / self.n_points().max(1);
        &self.target[idx * c..(idx + 1) * c]
    }
    fn eval(&self, arch: &Arch, params: &[f32]) -> f64 {
        let img = model::render(arch, params, self.grid.width, self.grid.height);
        psnr_u8(&img, self.original)
    }
    fn eval_many(&self, arch: &Arch, params: &[Vec<f32>]) -> Vec<f64> {
        let (w, h) = (self.grid.width, self.grid.height);
        model::render_sse_many(arch, params, w, h, self.original)
            .into_iter()
            .map(|sse| psnr_of_sse(sse as f64, self.original.len()))
            .collect()
    }
}

/// Schedule of one fitting phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub steps: usize,
    pub lr: f32,
    /// Final learning rate as a fraction of `lr` (cosine decay).
    pub lr_end_frac: f32,
    /// Pixels per step (the whole image when larger than it).
    pub batch: usize,
    /// Evaluate the exact rendered PSNR every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Stop as soon as an evaluation reaches this PSNR (evaluations then run from the start).
    pub stop_at_psnr: Option<f64>,
    /// Roll back and halve the rate when the loss jumps (`DivergenceGuard`; the image weight
    /// mode's fitting phases, where it was measured).
    pub guard: bool,
    /// Steps over which the learning rate rises linearly from `lr / warmup` to `lr` (0 = none).
    pub warmup: usize,
}

/// Quantization applied in the forward pass (QAT): a step and a bit width per tensor, fixed
/// during the phase.
#[derive(Debug, Clone)]
pub struct QuantSpec {
    pub steps: Vec<Step>,
    pub bits: Vec<u8>,
    /// Weights of the meta-learned base: when set, the quantized quantity is the residual
    /// `w - base` and the effective weight is `base + q * step` (spec §6.2).
    pub base: Option<Vec<f32>>,
    /// Weight sharing (§4.7): per tensor, `Some(codebook)` quantizes each value to the nearest
    /// centroid `c · step` (in the residual domain with a base) and codes the centroid's index;
    /// empty or `None` = uniform. Filled by [`Fitter::finish_shared`].
    pub codebooks: Vec<Option<Codebook>>,
}

/// Bit width of each tensor under the mixed-precision rule: the first linear map (whose
/// errors are multiplied by `w0_first` and shift every frequency of the network) and all
/// biases (phases of every sine) get `sensitive_bits`; the other weight matrices `bits`.
/// These tensors hold a few hundred values, so their extra precision costs almost nothing.
pub fn tensor_bits(arch: &Arch, bits: u8, sensitive_bits: u8) -> Vec<u8> {
    (0..arch.tensor_lens().len())
        .map(|t| {
            if t < 2 || t % 2 == 1 {
                sensitive_bits.max(bits)
            } else {
                bits
            }
        })
        .collect()
}

impl QuantSpec {
    /// Choose a step per tensor from the current weights (or from their residuals from
    /// `base`).
    pub fn choose(arch: &Arch, params: &[f32], bits: &[u8], base: Option<&[f32]>) -> Self {
        let resid: Vec<f32>;
        let params = match base {
            Some(b) => {
                resid = params.iter().zip(b).map(|(&p, &b)| p - b).collect();
                &resid[..]
            }
            None => params,
        };
        let mut off = 0;
        let steps = arch
            .tensor_lens()
            .iter()
            .zip(bits)
            .map(|(&n, &b)| {
                let s = quant::choose_step(&params[off..off + n], b);
                off += n;
                s
            })
            .collect();
        QuantSpec {
            steps,
            bits: bits.to_vec(),
            base: base.map(<[f32]>::to_vec),
            codebooks: Vec::new(),
        }
    }

    /// The codebook of tensor `t`, if it has one.
    fn codebook(&self, t: usize) -> Option<&Codebook> {
        self.codebooks.get(t).and_then(Option::as_ref)
    }
    /// Fake-quantize `params` into `out` (exactly the weights the decoder will use).
    pub fn apply(&self, arch: &Arch, params: &[f32], out: &mut [f32]) {
        let resid: Vec<f32>;
        let src = match &self.base {
            Some(b) => {
                resid = params.iter().zip(b).map(|(&p, &b)| p - b).collect();
                &resid[..]
            }
            None => params,
        };
        let mut off = 0;
        for (t, ((&n, &s), &b)) in arch
            .tensor_lens()
            .iter()
            .zip(&self.steps)
            .zip(&self.bits)
            .enumerate()
        {
            match self.codebook(t) {
                Some(cb) => {
                    let (values, st) = centroid_values(cb, s);
                    for (o, &w) in out[off..off + n].iter_mut().zip(&src[off..off + n]) {
                        *o = values[quant::nearest(&values, w / st)] * st;
                    }
                }
                None => quant::fake_quant_into(&src[off..off + n], s, b, &mut out[off..off + n]),
            }
            off += n;
        }
        if let Some(b) = &self.base {
            for (o, &b) in out.iter_mut().zip(b) {
                *o += b;
            }
        }
    }

    /// The quantized symbols of every tensor (of the residuals when a base is set); for a
    /// tensor with a codebook, the nearest centroid's index minus the codebook's zero index.
    pub fn symbols(&self, arch: &Arch, params: &[f32]) -> Vec<Vec<i32>> {
        let mut off = 0;
        arch.tensor_lens()
            .iter()
            .zip(self.steps.iter().zip(&self.bits))
            .enumerate()
            .map(|(t, (&n, (&step, &bits)))| {
                let w = &params[off..off + n];
                let r: Vec<f32> = match &self.base {
                    Some(b) => w
                        .iter()
                        .zip(&b[off..off + n])
                        .map(|(&p, &b)| p - b)
                        .collect(),
                    None => w.to_vec(),
                };
                off += n;
                match self.codebook(t) {
                    Some(cb) => {
                        let (values, st) = centroid_values(cb, step);
                        r.iter()
                            .map(|&x| quant::nearest(&values, x / st) as i32 - i32::from(cb.zero))
                            .collect()
                    }
                    None => quant::quantize(&r, step, bits),
                }
            })
            .collect()
    }
}

/// The centroids of `cb` as f32 step multiples (ascending, as the codebook) and the step.
fn centroid_values(cb: &Codebook, step: Step) -> (Vec<f32>, f32) {
    (cb.values.iter().map(|&v| v as f32).collect(), step.to_f32())
}

// ---------------------------------------------------------------------------------------------
// Weight sharing (Deep Compression): per matrix, k centroids from 1-D k-means (linear init);
// every weight is assigned to a centroid once, then the centroids are fine-tuned with the
// summed ("shared") gradient of their weights while the assignments stay fixed.
// ---------------------------------------------------------------------------------------------

/// Centroids of one tensor under training.
#[derive(Debug, Clone)]
struct SharedTensor {
    t: usize,
    off: usize,
    /// Centroid index of each element.
    assign: Vec<u16>,
    /// Centroid values (residual domain with a base), ascending at the start.
    centroids: Vec<f32>,
    /// A centroid held at 0 (the value of pruned weights), not trained.
    fixed: Option<usize>,
    m: Vec<f32>,
    v: Vec<f32>,
    t_adam: u32,
}

/// Shared-weight state of a [`Fitter`]: see [`Fitter::share_weights`].
#[derive(Debug, Clone, Default)]
pub struct SharedWeights {
    tensors: Vec<SharedTensor>,
}

impl SharedWeights {
    /// Overwrite the shared tensors' effective weights with their centroids (+ base).
    fn write_eff(&self, eff: &mut [f32], base: Option<&[f32]>) {
        for st in &self.tensors {
            for (i, &a) in st.assign.iter().enumerate() {
                let b = base.map_or(0.0, |b| b[st.off + i]);
                eff[st.off + i] = b + st.centroids[usize::from(a)];
            }
        }
    }

    /// Adam step of the centroids on the summed gradient of their elements; the elements'
    /// own gradient is cleared (their assignment is fixed, so the latent weights do not move).
    fn update(&mut self, grad: &mut [f32], lr: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        for st in &mut self.tensors {
            let mut g = vec![0.0f32; st.centroids.len()];
            for (i, &a) in st.assign.iter().enumerate() {
                g[usize::from(a)] += grad[st.off + i];
                grad[st.off + i] = 0.0;
            }
            st.t_adam += 1;
            let bc1 = 1.0 - B1.powi(st.t_adam as i32);
            let bc2 = 1.0 - B2.powi(st.t_adam as i32);
            let a = lr * bc2.sqrt() / bc1;
            for (j, &gj) in g.iter().enumerate() {
                if st.fixed == Some(j) {
                    continue;
                }
                st.m[j] = B1 * st.m[j] + (1.0 - B1) * gj;
                st.v[j] = B2 * st.v[j] + (1.0 - B2) * gj * gj;
                st.centroids[j] -= a * st.m[j] / (st.v[j].sqrt() + EPS * bc2.sqrt());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pruning (gradual magnitude pruning, Zhu & Gupta 2017). Self-contained: a per-tensor mask
// that `Fitter` applies after every Adam update; `codec` stores it in the sparsity section.
// ---------------------------------------------------------------------------------------------

/// How the pruning masks are found during fitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneMethod {
    /// Gradual magnitude pruning (Zhu & Gupta): cubic schedule from dense to the target.
    Magnitude,
    /// Hard-concrete L0 gates (Louizos et al.) whose expected density a Lagrange multiplier
    /// drives to the target; then exactly the target count is kept.
    L0,
    /// A fixed pseudo-random support that the decoder regenerates from one threshold per
    /// tensor (`codec-spec.md` §4.6.1), so the file spends no bits on the mask. The encoder
    /// fixes it before the first step (a schedule, if one is given, removes weights in hash
    /// order). The prune scope does not apply (every tensor keeps the same fraction).
    Seeded,
    /// The support of a sparse base (`inr meta-train --density D --support learned`): its
    /// non-zero hidden-matrix weights, fixed before the first step. The file stores one kept
    /// count per matrix and the decoder takes the masks from the base (`codec-spec.md`
    /// §4.6.2), so the mask costs nothing. The density is the base's.
    Base,
}

/// How a target density is shared among the prunable tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum PruneScope {
    /// Every prunable tensor keeps the same fraction of its weights.
    PerLayer,
    /// One magnitude threshold over all prunable tensors (same total kept count).
    Global,
}

/// `params − anchor` (a copy of `params` without an anchor): what pruning ranks and codes.
pub fn residual(params: &[f32], anchor: Option<&[f32]>) -> Vec<f32> {
    match anchor {
        Some(a) => params.iter().zip(a).map(|(&p, &a)| p - a).collect(),
        None => params.to_vec(),
    }
}

/// `params` with the pruned weights at 0, or at their anchor value (residual 0).
pub fn masked(
    arch: &Arch,
    params: &[f32],
    masks: &[Option<Vec<bool>>],
    anchor: Option<&[f32]>,
) -> Vec<f32> {
    let mut p = params.to_vec();
    let mut off = 0;
    for (n, m) in arch.tensor_lens().into_iter().zip(masks) {
        if let Some(keep) = m {
            for (i, &k) in keep.iter().enumerate() {
                if !k {
                    p[off + i] = anchor.map_or(0.0, |a| a[off + i]);
                }
            }
        }
        off += n;
    }
    p
}

/// Tensors pruning may touch: the weight matrices `W_1 .. W_D`. The first matrix (few
/// weights, each shifting every frequency of the network) and the biases stay dense.
pub fn prunable(arch: &Arch) -> Vec<bool> {
    (0..arch.num_tensors())
        .map(|t| t >= 2 && t % 2 == 0)
        .collect()
}

/// `density` clamped into `0..=1` (NaN: 1, nothing pruned).
fn unit_density(density: f64) -> f64 {
    if density.is_nan() {
        1.0
    } else {
        density.clamp(0.0, 1.0)
    }
}

/// Masks keeping the `round(density * n)` largest-magnitude weights of every prunable tensor
/// (per layer) or of all of them together (global). Weights already pruned by `prev` stay
/// pruned (they are 0, the smallest magnitude); ties break by position, so the result is
/// deterministic. Non-prunable tensors get `None`. `density` is clamped into `0..=1`.
pub fn magnitude_masks(
    arch: &Arch,
    params: &[f32],
    prev: &[Option<Vec<bool>>],
    density: f64,
    scope: PruneScope,
) -> Vec<Option<Vec<bool>>> {
    let density = unit_density(density);
    let lens = arch.tensor_lens();
    let which = prunable(arch);
    let mut offs = Vec::with_capacity(lens.len());
    let mut off = 0;
    for &n in &lens {
        offs.push(off);
        off += n;
    }
    let was_kept = |t: usize, i: usize| match prev.get(t) {
        Some(Some(k)) => k.get(i).copied().unwrap_or(true),
        _ => true,
    };
    // (magnitude, tensor, index), largest first; pruned ones count as 0.
    let ranked = |ts: &[usize]| {
        let mut v: Vec<(f32, usize, usize)> = ts
            .iter()
            .flat_map(|&t| (0..lens[t]).map(move |i| (t, i)))
            .map(|(t, i)| {
                let a = if was_kept(t, i) {
                    params[offs[t] + i].abs()
                } else {
                    0.0
                };
                (a, t, i)
            })
            .collect();
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        v
    };
    let mut masks: Vec<Option<Vec<bool>>> = lens
        .iter()
        .zip(&which)
        .map(|(&n, &w)| w.then(|| vec![false; n]))
        .collect();
    let groups: Vec<Vec<usize>> = match scope {
        PruneScope::PerLayer => (0..lens.len())
            .filter(|&t| which[t])
            .map(|t| vec![t])
            .collect(),
        PruneScope::Global => vec![(0..lens.len()).filter(|&t| which[t]).collect()],
    };
    for g in groups {
        let total: usize = g.iter().map(|&t| lens[t]).sum();
        let keep = (density * total as f64).round() as usize;
        for &(_, t, i) in ranked(&g).iter().take(keep) {
            if let Some(Some(m)) = masks.get_mut(t) {
                m[i] = true;
            }
        }
    }
    masks
}

/// Seeded masks (`codec-spec.md` §4.6.1) keeping about `round(density * n)` elements of every
/// prunable tensor: those whose [`format::seed_hash`] is below the `(k+1)`-th smallest hash of
/// the tensor (fewer only when hashes tie). Masks of decreasing density are nested.
/// Non-prunable tensors get `None`; `density` is clamped into `0..=1`.
pub fn seeded_masks(arch: &Arch, density: f64) -> Vec<Option<Vec<bool>>> {
    let density = unit_density(density);
    arch.tensor_lens()
        .into_iter()
        .zip(prunable(arch))
        .enumerate()
        .map(|(t, (n, p))| {
            p.then(|| {
                let k = (density * n as f64).round() as usize;
                if k >= n {
                    return vec![true; n];
                }
                let mut h: Vec<u32> = (0..n).map(|i| format::seed_hash(t, i)).collect();
                let (_, &mut tau, _) = h.select_nth_unstable(k);
                format::seeded_mask(t, n, tau)
            })
        })
        .collect()
}

/// The support of a sparse base (`codec-spec.md` §4.6.2) as masks: for every prunable tensor
/// with a zero weight in `base`, its non-zero weights; `None` elsewhere.
pub fn base_support_masks(arch: &Arch, base: &[f32]) -> Vec<Option<Vec<bool>>> {
    format::base_support(arch, base)
        .into_iter()
        .zip(prunable(arch))
        .map(|(keep, p)| (p && keep.iter().any(|&k| !k)).then_some(keep))
        .collect()
}

/// Masks of `method` at `density`: [`seeded_masks`] for [`PruneMethod::Seeded`], else
/// [`magnitude_masks`] of `params` (what rate control uses for L0 too, once its gates are
/// gone).
pub fn method_masks(
    method: PruneMethod,
    arch: &Arch,
    params: &[f32],
    prev: &[Option<Vec<bool>>],
    density: f64,
    scope: PruneScope,
) -> Vec<Option<Vec<bool>>> {
    match method {
        PruneMethod::Seeded => seeded_masks(arch, density),
        PruneMethod::Magnitude | PruneMethod::L0 | PruneMethod::Base => {
            magnitude_masks(arch, params, prev, density, scope)
        }
    }
}

/// Cubic density schedule of gradual magnitude pruning: dense until `start`, then
/// `d(s) = target + (1 - target) (1 - (s - start) / (end - start))^3`, updated every `every`
/// steps, reaching `target` at step `end` and keeping it (fine-tuning) afterwards.
#[derive(Debug, Clone)]
pub struct PruneSchedule {
    pub target: f64,
    pub start: usize,
    pub end: usize,
    pub every: usize,
    pub scope: PruneScope,
    /// Magnitude schedule (uses `every`) or L0 gates from `start` to `end`.
    pub method: PruneMethod,
}

impl PruneSchedule {
    /// The density to prune to before step `s`, if the masks change at this step.
    pub fn density_at(&self, s: usize) -> Option<f64> {
        if s < self.start || s > self.end {
            return None;
        }
        let every = self.every.max(1);
        if s != self.end && !(s - self.start).is_multiple_of(every) {
            return None;
        }
        let span = self.end.saturating_sub(self.start).max(1) as f64;
        let frac = ((s - self.start) as f64 / span).min(1.0);
        Some(self.target + (1.0 - self.target) * (1.0 - frac).powi(3))
    }
}

/// Events reported while fitting.
pub struct FitEvent {
    pub step: usize,
    pub total: usize,
    /// Exact PSNR of the rendered network, when just measured.
    pub psnr: Option<f64>,
}

/// PSNR in dB of 8-bit data (peak 255, one MSE over all samples).
pub fn psnr_u8(a: &[u8], b: &[u8]) -> f64 {
    // Exact: every term and partial sum is an integer below 2^53.
    let sse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    psnr_of_sse(sse, a.len())
}

/// PSNR (dB) of 8-bit samples from their sum of squared errors over `n` samples.
fn psnr_of_sse(sse: f64, n: usize) -> f64 {
    if sse == 0.0 {
        return f64::INFINITY;
    }
    let mse = sse / n as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Optimiser state and scratch for one signal.
pub struct Fitter<'a> {
    pub arch: Arch,
    shape: NetShape,
    sig: &'a dyn FitTarget,
    /// Latent (full-precision) parameters.
    pub params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    t: u32,
    /// Effective (possibly fake-quantized) weights, real layout.
    eff: Vec<f32>,
    packed: Vec<f32>,
    packed_t: Vec<f32>,
    /// Per-chunk gradients (packed layout).
    grads: Vec<Vec<f32>>,
    /// Summed gradient, real layout.
    grad: Vec<f32>,
    order: Vec<u32>,
    cursor: usize,
    rng: ChaCha8Rng,
    /// Pruning masks, one entry per tensor (`Some(keep)` for a pruned tensor), or empty. A
    /// pruned weight is held at exactly 0: it and its Adam moments are zeroed after every
    /// update (so it contributes nothing forward and receives no update backward).
    pub masks: Vec<Option<Vec<bool>>>,
    /// Gradual magnitude pruning applied by [`Fitter::run_phase`] (phase-relative steps).
    pub prune: Option<PruneSchedule>,
    /// Weight sharing under fine-tuning ([`Fitter::share_weights`]): the shared tensors'
    /// effective weights are their centroids, whatever the quantization passed to a step.
    pub shared: Option<SharedWeights>,
    /// Hard-concrete L0 gates while [`PruneMethod::L0`] pruning is in its stochastic phase.
    pub gates: Option<crate::l0::L0Gates>,
    /// The base the weights are coded as residuals from, when pruning from a base: pruning
    /// ranks `|w − base|`, a pruned weight is held at its base value (residual 0) and the
    /// L0 gates act on the residual.
    pub anchor: Option<Vec<f32>>,
    /// Per-tensor multipliers of the learning rate (Meta-SGD-style, per tensor rather than
    /// per parameter; see `meta::MetaConfig::meta_sgd`), or empty for 1 everywhere.
    pub lr_scale: Vec<f32>,
    /// How many times a diverging fit was rolled back and its learning rate halved (see
    /// `DivergenceGuard`), over every phase run so far.
    pub backoffs: u32,
}

/// Recovery from a diverging fit. A sine network trained near the largest stable learning rate
/// can leave its basin in a few steps and never come back (kodim05, 10x56 from a random
/// start, `--bpp 0.5`, 1,000 steps at 1e-3: 14.42 dB, where 6e-4 gave 23.55), or jump out of
/// it and settle lower (at 1.05e-3 its minibatch MSE went from 0.054 to 0.14 in ten steps
/// around step 115, took 130 steps to come back, and the file ended at 22.04 dB). The guard
/// follows the minibatch MSE (an exponential average over about ten steps, and its lowest
/// value), keeps the optimiser state (weights, Adam moments and step) at the phase's start and
/// every [`Self::EVERY`] steps while the average is near its lowest and, when the average rises
/// above [`Self::RISE`] times its lowest value (or the loss is not finite), restores that state
/// and halves the learning rate for the rest of the phase. In a phase's first
/// [`Self::SETTLE`] steps only a rise above [`Self::EARLY_RISE`] counts, and the lowest value
/// restarts after them: a phase that starts on a re-chosen support rises for a while and comes
/// back by itself. A fit whose loss never jumps is untouched (the same steps, the same bytes).
struct DivergenceGuard {
    ema: f64,
    floor: f64,
    /// Parameters, Adam moments and step count of the last healthy snapshot.
    snap: (Vec<f32>, Vec<f32>, Vec<f32>, u32),
    seen: usize,
    lr_mult: f32,
    backoffs: u32,
}

impl DivergenceGuard {
    /// A guard whose first snapshot is the state before the phase's first step.
    fn new(f: &Fitter<'_>) -> Self {
        Self {
            ema: f64::NAN,
            floor: f64::INFINITY,
            snap: (f.params.clone(), f.m.clone(), f.v.clone(), f.t),
            seen: 0,
            lr_mult: 1.0,
            backoffs: 0,
        }
    }

    /// Steps between snapshots.
    const EVERY: usize = 25;
    /// Rise of the averaged loss over its lowest value that counts as divergence.
    const RISE: f64 = 1.5;
    /// Steps at the start of a phase that are held to [`Self::EARLY_RISE`] instead; the
    /// lowest value restarts from the average at their end.
    const SETTLE: usize = 25;
    /// Rise that counts as divergence in a phase's first [`Self::SETTLE`] steps.
    const EARLY_RISE: f64 = 4.0;
    /// Most halvings of the learning rate in one phase.
    const MAX_BACKOFFS: u32 = 6;

    fn watch(&mut self, f: &mut Fitter<'_>, mse: f64) {
        self.seen += 1;
        self.ema = if self.ema.is_nan() {
            mse
        } else {
            0.9 * self.ema + 0.1 * mse
        };
        // Early in a phase only a large rise counts, and the lowest value is measured afresh
        // after it: a phase that starts on a re-chosen support rises for tens of steps and
        // comes back by itself (kodim03, `--bpp 0.125`: the average 1.8x its lowest value at
        // step 3 and still 2x at step 26; rolled back and halved, the file lost 0.4–0.7 dB).
        let rise = if self.seen <= Self::SETTLE {
            Self::EARLY_RISE
        } else {
            Self::RISE
        };
        let diverged = !mse.is_finite() || self.ema > rise * self.floor;
        if diverged {
            if self.backoffs < Self::MAX_BACKOFFS {
                let (p, m, v, t) = &self.snap;
                f.params.copy_from_slice(p);
                f.m.copy_from_slice(m);
                f.v.copy_from_slice(v);
                f.t = *t;
                if std::env::var_os("INR_RC_DEBUG").is_some() {
                    eprintln!(
                        "fit: divergence at step {} (loss average {:.3e}, lowest {:.3e}): rolled back to step {t}, rate x{}",
                        self.seen, self.ema, self.floor, self.lr_mult * 0.5
                    );
                }
                self.lr_mult *= 0.5;
                self.backoffs += 1;
                f.backoffs += 1;
                // Measure afresh from the restored state.
                self.ema = f64::NAN;
                self.floor = f64::INFINITY;
            }
            return;
        }
        self.floor = if self.seen == Self::SETTLE {
            self.ema
        } else {
            self.floor.min(self.ema)
        };
        if self.seen.is_multiple_of(Self::EVERY) && self.ema <= 1.2 * self.floor {
            let (p, m, v, t) = &mut self.snap;
            p.copy_from_slice(&f.params);
            m.copy_from_slice(&f.m);
            v.copy_from_slice(&f.v);
            *t = f.t;
        }
    }
}

impl<'a> Fitter<'a> {
    pub fn new(arch: Arch, sig: &'a dyn FitTarget, init: Vec<f32>, seed: u64) -> Self {
        let shape = model::shape_of(&arch);
        let n = shape.n_params;
        let (n_packed, n_packed_t) = (shape.n_packed, shape.n_packed_t);
        let npx = sig.n_points();
        Fitter {
            arch,
            shape,
            sig,
            params: init,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            eff: vec![0.0; n],
            packed: vec![0.0; n_packed],
            packed_t: vec![0.0; n_packed_t],
            grads: Vec::new(),
            grad: vec![0.0; n],
            order: (0..npx as u32).collect(),
            cursor: npx,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x05ee_df17),
            masks: Vec::new(),
            prune: None,
            shared: None,
            gates: None,
            anchor: None,
            lr_scale: Vec::new(),
            backoffs: 0,
        }
    }

    /// Start weight sharing on the tensors `which[t]`: `k` centroids per tensor from 1-D
    /// k-means of its kept values (residuals from `base` if given); a masked tensor gets one
    /// more centroid held at 0 for its pruned elements (so `k` in all). Each element is
    /// assigned to its nearest centroid; later steps train the centroids only.
    pub fn share_weights(&mut self, k: usize, which: &[bool], base: Option<&[f32]>) {
        let mut tensors = Vec::new();
        let mut off = 0;
        for (t, n) in self.arch.tensor_lens().into_iter().enumerate() {
            if which.get(t).copied().unwrap_or(false) {
                let r: Vec<f32> = (0..n)
                    .map(|i| self.params[off + i] - base.map_or(0.0, |b| b[off + i]))
                    .collect();
                let keep = self.masks.get(t).and_then(Option::as_ref);
                let kept: Vec<f32> = match keep {
                    Some(keep) => r
                        .iter()
                        .zip(keep)
                        .filter(|(_, &k)| k)
                        .map(|(&v, _)| v)
                        .collect(),
                    None => r.clone(),
                };
                let centroids = quant::kmeans_1d(&kept, k, keep.is_some(), 100);
                let fixed = keep.and_then(|_| centroids.iter().position(|&c| c == 0.0));
                let assign = r
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| match (keep, fixed) {
                        (Some(keep), Some(z)) if !keep[i] => z as u16,
                        _ => quant::nearest(&centroids, v) as u16,
                    })
                    .collect();
                let kc = centroids.len();
                tensors.push(SharedTensor {
                    t,
                    off,
                    assign,
                    centroids,
                    fixed,
                    m: vec![0.0; kc],
                    v: vec![0.0; kc],
                    t_adam: 0,
                });
            }
            off += n;
        }
        self.shared = Some(SharedWeights { tensors });
    }

    /// End weight sharing: each trained codebook becomes an integer codebook (§4.7) in `q`
    /// (centroids as multiples of a step of about 1/16383 of the largest centroid, equal
    /// integers merged, index bit width as small as the codebook allows), and the latent
    /// weights are set to their centroids, so that `q` reproduces exactly the fine-tuned
    /// network.
    pub fn finish_shared(&mut self, q: &mut QuantSpec) {
        let Some(sh) = self.shared.take() else { return };
        let nt = self.arch.tensor_lens().len();
        q.codebooks.resize(nt, None);
        for st in sh.tensors {
            let max_abs = st.centroids.iter().fold(0.0f32, |a, &c| a.max(c.abs()));
            let step = if max_abs > 0.0 && max_abs.is_finite() {
                Step::from_f32(max_abs / 16383.0)
            } else {
                Step::from_f32(1e-3)
            };
            let s = step.to_f32();
            let ints: Vec<i32> = st
                .centroids
                .iter()
                .map(|&c| ((c / s).round() as i32).clamp(-32767, 32767))
                .collect();
            let mut values = ints.clone();
            values.sort_unstable();
            values.dedup();
            let zero = values
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.unsigned_abs())
                .map_or(0, |(i, _)| i as u16);
            let cb = Codebook { zero, values };
            for (i, &a) in st.assign.iter().enumerate() {
                let b = q.base.as_ref().map_or(0.0, |b| b[st.off + i]);
                self.params[st.off + i] = b + ints[usize::from(a)] as f32 * s;
            }
            q.steps[st.t] = step;
            q.bits[st.t] = cb.min_bits();
            q.codebooks[st.t] = Some(cb);
        }
        self.apply_masks();
    }

    /// Prune to `density` with the masks of `method` (see [`method_masks`]; magnitudes of the
    /// residuals from the anchor if set) and apply them.
    pub fn prune_to(&mut self, method: PruneMethod, density: f64, scope: PruneScope) {
        let r = residual(&self.params, self.anchor.as_deref());
        self.masks = method_masks(method, &self.arch, &r, &self.masks, density, scope);
        self.apply_masks();
    }

    /// Hold the pruned weights at 0 (at their anchor value with an anchor) and zero their
    /// Adam moments.
    pub fn apply_masks(&mut self) {
        let mut off = 0;
        for (n, m) in self.arch.tensor_lens().into_iter().zip(&self.masks) {
            if let Some(keep) = m {
                for (i, &k) in keep.iter().enumerate() {
                    if !k {
                        self.params[off + i] = self.anchor.as_ref().map_or(0.0, |a| a[off + i]);
                        self.m[off + i] = 0.0;
                        self.v[off + i] = 0.0;
                    }
                }
            }
            off += n;
        }
    }

    fn n_pixels(&self) -> usize {
        self.order.len()
    }

    /// Next minibatch of pixel indices: consecutive slices of a fresh random permutation per
    /// epoch, so every pixel is visited once per epoch.
    fn next_batch(&mut self, batch: usize) -> Vec<u32> {
        let n = self.n_pixels();
        if batch >= n {
            return self.order.clone();
        }
        let mut out = Vec::with_capacity(batch);
        while out.len() < batch {
            if self.cursor >= n {
                self.order.shuffle(&mut self.rng);
                self.cursor = 0;
            }
            let take = (batch - out.len()).min(n - self.cursor);
            out.extend_from_slice(&self.order[self.cursor..self.cursor + take]);
            self.cursor += take;
        }
        out
    }

    /// One Adam step on a minibatch, with `quant` applied in the forward pass if given
    /// (straight-through: the gradient w.r.t. the fake-quantized weights updates the latent
    /// ones). Returns the minibatch mean squared error in the [-1, 1] target scale.
    pub fn step(&mut self, batch: usize, lr: f32, quant: Option<&QuantSpec>) -> f64 {
        let mse = self.gradient(batch, quant);
        if let Some(sh) = &mut self.shared {
            sh.update(&mut self.grad, lr);
        }
        if let Some(g) = &mut self.gates {
            g.backward(&self.params, &mut self.grad);
        }
        self.adam(lr);
        mse
    }

    /// The loss gradient on the next minibatch of `batch` points into `self.grad` (real
    /// layout; [`Fitter::grad`] reads it), without an update; returns the minibatch MSE.
    pub fn gradient(&mut self, batch: usize, quant: Option<&QuantSpec>) -> f64 {
        let idx = self.next_batch(batch);
        self.effective(quant);
        if let Some(g) = &mut self.gates {
            g.sample_into(&mut self.eff);
        }
        self.shape.pack(&self.eff, &mut self.packed);
        self.shape.pack_transposed(&self.eff, &mut self.packed_t);
        let n_chunks = idx.len().div_ceil(CHUNK);
        let np = self.shape.n_packed;
        if self.grads.len() < n_chunks {
            self.grads.resize_with(n_chunks, || vec![0.0; np]);
        }
        let c = self.shape.n_out();
        let nf = self.sig.n_features();
        let scale = 1.0 / (idx.len() * c) as f32;
        let (shape, eff, eff_t, sig) = (&self.shape, &self.packed, &self.packed_t, self.sig);
        let sse: f64 = self.grads[..n_chunks]
            .par_iter_mut()
            .zip(idx.par_chunks(CHUNK))
            .map_init(
                || (TrainScratch::new(shape), vec![0.0f32; TILE * c]),
                |(scratch, tgt), (g, chunk)| {
                    g.fill(0.0);
                    let mut sse = 0.0;
                    for tile in chunk.chunks(TILE) {
                        let rows = tile.len();
                        let x = scratch.input_mut();
                        for (r, &p) in tile.iter().enumerate() {
                            sig.features(p as usize, &mut x[r * nf..(r + 1) * nf]);
                            tgt[r * c..(r + 1) * c].copy_from_slice(sig.target(p as usize));
                        }
                        sse += kernel::train_tile(shape, eff, eff_t, tgt, rows, scale, g, scratch);
                    }
                    sse
                },
            )
            .collect::<Vec<f64>>()
            .iter()
            .sum();
        // Sum chunk gradients in order (deterministic), into grads[0].
        let (first, rest) = self.grads.split_at_mut(1);
        for g in &rest[..n_chunks - 1] {
            for (a, &b) in first[0].iter_mut().zip(g) {
                *a += b;
            }
        }
        self.shape.unpack(&first[0], &mut self.grad);
        sse / (idx.len() * c) as f64
    }

    /// The gradient of the last [`Fitter::gradient`] or [`Fitter::step`] (real layout).
    pub fn grad(&self) -> &[f32] {
        &self.grad
    }

    fn adam(&mut self, lr: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.t += 1;
        let bc1 = 1.0 - B1.powi(self.t as i32);
        let bc2 = 1.0 - B2.powi(self.t as i32);
        let a = lr * bc2.sqrt() / bc1;
        let mut off = 0;
        for (t, n) in self.arch.tensor_lens().into_iter().enumerate() {
            let a = a * self.lr_scale.get(t).copied().unwrap_or(1.0);
            let r = off..off + n;
            off += n;
            for (((p, m), v), &g) in self.params[r.clone()]
                .iter_mut()
                .zip(&mut self.m[r.clone()])
                .zip(&mut self.v[r.clone()])
                .zip(&self.grad[r])
            {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *p -= a * *m / (v.sqrt() + EPS * bc2.sqrt());
            }
        }
        self.apply_masks();
    }

    /// Reset Adam's moments (between phases).
    pub fn reset_optimizer(&mut self) {
        self.m.fill(0.0);
        self.v.fill(0.0);
        self.t = 0;
    }

    /// Exact PSNR of the network as the decoder renders it (quantized if `quant` is given).
    pub fn eval(&mut self, quant: Option<&QuantSpec>) -> f64 {
        self.effective(quant);
        self.sig.eval(&self.arch, &self.eff)
    }

    /// The effective weights of the current parameters into `self.eff`: fake-quantized by
    /// `quant` if given, the shared tensors' centroids if weight sharing is on.
    fn effective(&mut self, quant: Option<&QuantSpec>) {
        match quant {
            Some(q) => q.apply(&self.arch, &self.params, &mut self.eff),
            None => self.eff.copy_from_slice(&self.params),
        }
        if let Some(sh) = &self.shared {
            sh.write_eff(&mut self.eff, quant.and_then(|q| q.base.as_deref()));
        }
    }

    /// Exact PSNR of other weights `params` (same layout), e.g. a pruning candidate.
    pub fn eval_params(&mut self, params: &[f32], quant: Option<&QuantSpec>) -> f64 {
        match quant {
            Some(q) => q.apply(&self.arch, params, &mut self.eff),
            None => self.eff.copy_from_slice(params),
        }
        self.sig.eval(&self.arch, &self.eff)
    }

    /// [`Fitter::eval_params`] of `params` under each of `quants`, in one pass when the
    /// target can share it (the first quantization is the reference the others vary).
    pub fn eval_params_many(&mut self, params: &[f32], quants: &[QuantSpec]) -> Vec<f64> {
        let effs: Vec<Vec<f32>> = quants
            .iter()
            .map(|q| {
                let mut e = vec![0.0f32; params.len()];
                q.apply(&self.arch, params, &mut e);
                e
            })
            .collect();
        self.sig.eval_many(&self.arch, &effs)
    }

    /// Run a phase; keeps and restores the latent weights with the best exact PSNR
    /// (measured every `eval_every` steps in the second half of the phase, and at the end).
    /// Returns the best PSNR.
    pub fn run_phase(
        &mut self,
        ph: &Phase,
        quant: Option<&QuantSpec>,
        step0: usize,
        total: usize,
        on_event: &mut dyn FnMut(&FitEvent),
    ) -> f64 {
        let mut best: Option<(f64, Vec<f32>, Option<SharedWeights>)> = None;
        let mut guard = ph.guard.then(|| DivergenceGuard::new(self));
        for s in 0..ph.steps {
            // Gradual pruning: the weights kept as "best" must carry the final mask, so
            // keep-best and early stopping only start once the schedule has ended.
            let mut mask_final = true;
            if let Some(p) = self.prune.clone() {
                match p.method {
                    PruneMethod::Magnitude | PruneMethod::Seeded | PruneMethod::Base => {
                        if let Some(d) = p.density_at(s) {
                            self.prune_to(p.method, d, p.scope);
                        }
                    }
                    PruneMethod::L0 => {
                        if s == p.start {
                            let seed = self.rng.gen();
                            self.gates = Some(crate::l0::L0Gates::new(
                                &self.arch,
                                p.target,
                                p.scope,
                                seed,
                                self.anchor.clone(),
                            ));
                        }
                        if s == p.end {
                            if let Some(g) = self.gates.take() {
                                self.masks = g.finish(&self.arch, &mut self.params);
                                self.apply_masks();
                            }
                        }
                    }
                }
                mask_final = s >= p.end;
            }
            let prog = s as f32 / ph.steps.max(1) as f32;
            let cosine = 0.5 * (1.0 + (std::f32::consts::PI * prog).cos());
            let mult = guard.as_ref().map_or(1.0, |g| g.lr_mult);
            let ramp = if s < ph.warmup {
                (s + 1) as f32 / ph.warmup as f32
            } else {
                1.0
            };
            let lr = ph.lr * mult * ramp * (ph.lr_end_frac + (1.0 - ph.lr_end_frac) * cosine);
            let mse = self.step(ph.batch, lr, quant);
            // Only a fixed problem is guarded: while masks move, gates sample or centroids
            // are shared, a rising loss is expected.
            if let Some(g) = guard
                .as_mut()
                .filter(|_| self.prune.is_none() && self.gates.is_none() && self.shared.is_none())
            {
                g.watch(self, mse);
            }
            let last = s + 1 == ph.steps;
            let eval_now = last
                || (mask_final
                    && ph.eval_every > 0
                    && (s + 1) % ph.eval_every == 0
                    && (2 * (s + 1) >= ph.steps || ph.stop_at_psnr.is_some()));
            let mut psnr = None;
            if eval_now {
                let p = self.eval(quant);
                psnr = Some(p);
                if mask_final && best.as_ref().is_none_or(|(b, _, _)| p > *b) {
                    best = Some((p, self.params.clone(), self.shared.clone()));
                }
            }
            on_event(&FitEvent {
                step: step0 + s + 1,
                total,
                psnr,
            });
            if mask_final && matches!((psnr, ph.stop_at_psnr), (Some(p), Some(t)) if p >= t) {
                break;
            }
        }
        match best {
            Some((p, w, sh)) => {
                self.params = w;
                self.shared = sh;
                p
            }
            None => self.eval(quant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch() -> Arch {
        Arch {
            coord_dims: 2,
            out_channels: 3,
            width: 10,
            depth: 3,
            pe_freqs: 0,
            pe_base_milli: 2000,
            w0_first: 30,
            w0_hidden: 30,
        }
    }

    /// A `w`x`h` RGB test image: a sine wave along the samples.
    fn wave(w: u32, h: u32) -> Vec<u8> {
        (0..w * h * 3)
            .map(|i| (128.0 + 90.0 * ((i % 37) as f32 * 0.3).sin()) as u8)
            .collect()
    }

    fn signal<'a>(grid: &'a Grid2, data: &'a [u8]) -> Signal<'a> {
        Signal {
            grid,
            target: data.iter().map(|&v| model::from_u8(v)).collect(),
            original: data,
        }
    }

    /// Runs `test` on a `w`x`h` wave image and SIREN initial weights of `a` from `seed`.
    fn on_wave(a: &Arch, w: u32, h: u32, seed: u64, test: impl FnOnce(&Signal<'_>, Vec<f32>)) {
        let data = wave(w, h);
        let grid = Grid2::new(a, w, h);
        let sig = signal(&grid, &data);
        test(&sig, model::siren_init(&model::shape_of(a), seed));
    }

    fn kept(m: &Option<Vec<bool>>) -> usize {
        m.as_ref().map_or(0, |k| k.iter().filter(|&&k| k).count())
    }

    #[test]
    fn magnitude_masks_hit_the_exact_density_and_keep_the_largest() {
        let a = arch();
        let lens = a.tensor_lens();
        let n: usize = lens.iter().sum();
        // Distinct magnitudes; tensor 4 gets much larger weights than tensor 2.
        let params: Vec<f32> = (0..n)
            .map(|i| {
                let s = if i % 3 == 0 { -1.0 } else { 1.0 };
                s * (1.0 + (i * 7919 % 1000) as f32) * 1e-3
            })
            .collect();
        let mut params = params;
        let off4: usize = lens[..4].iter().sum();
        for v in &mut params[off4..off4 + lens[4]] {
            *v *= 100.0;
        }
        for d in [0.0, 0.1, 0.37, 1.0] {
            let m = magnitude_masks(&a, &params, &[], d, PruneScope::PerLayer);
            for (t, (mt, &len)) in m.iter().zip(&lens).enumerate() {
                if prunable(&a)[t] {
                    assert_eq!(kept(mt), (d * len as f64).round() as usize, "t={t} d={d}");
                } else {
                    assert!(mt.is_none());
                }
            }
            // The kept weights are the largest of their tensor.
            let off2: usize = lens[..2].iter().sum();
            if let Some(k) = &m[2] {
                let w = &params[off2..off2 + lens[2]];
                let min_kept = w
                    .iter()
                    .zip(k)
                    .filter(|p| *p.1)
                    .map(|p| p.0.abs())
                    .fold(f32::INFINITY, f32::min);
                let max_pruned = w
                    .iter()
                    .zip(k)
                    .filter(|p| !*p.1)
                    .map(|p| p.0.abs())
                    .fold(0.0, f32::max);
                assert!(d == 0.0 || d == 1.0 || min_kept >= max_pruned);
            }
        }
        // Global: one threshold, so the large tensor keeps everything first.
        let g = magnitude_masks(&a, &params, &[], 0.3, PruneScope::Global);
        let total: usize = (0..lens.len())
            .filter(|&t| prunable(&a)[t])
            .map(|t| lens[t])
            .sum();
        let all: usize = g.iter().map(kept).sum();
        assert_eq!(all, (0.3 * total as f64).round() as usize);
        assert_eq!(kept(&g[4]), all.min(lens[4]));
        // Already pruned weights stay pruned even if large.
        let prev = magnitude_masks(&a, &params, &[], 0.5, PruneScope::PerLayer);
        let mut p2 = params.clone();
        for v in &mut p2[off4..off4 + lens[4]] {
            *v = 5.0;
        }
        let again = magnitude_masks(&a, &p2, &prev, 0.5, PruneScope::PerLayer);
        assert_eq!(again, prev);
    }

    #[test]
    fn shared_centroids_are_fine_tuned_by_the_summed_gradient() {
        let a = Arch {
            width: 16,
            ..arch()
        };
        on_wave(&a, 24, 16, 3, |sig, init| {
            let mut f = Fitter::new(a, sig, init, 3);
            for _ in 0..300 {
                f.step(1 << 16, 1e-3, None);
            }
            let tb = tensor_bits(&a, 8, 14);
            let mut q = QuantSpec::choose(&a, &f.params, &tb, None);
            f.share_weights(4, &prunable(&a), None);
            let before = f.eval(Some(&q));
            let assignments = |f: &Fitter<'_>| {
                f.shared.as_ref().map(|s| {
                    s.tensors
                        .iter()
                        .map(|t| t.assign.clone())
                        .collect::<Vec<_>>()
                })
            };
            let assign = assignments(&f);
            assert!(assign.is_some(), "no shared weights after share_weights");
            f.reset_optimizer();
            for _ in 0..150 {
                f.step(1 << 16, 1e-3, Some(&q));
            }
            let after = f.eval(Some(&q));
            assert!(
                after > before + 0.3,
                "fine-tuning {before:.2} -> {after:.2} dB"
            );
            // Assignments stay fixed; only the centroids move.
            assert_eq!(assignments(&f), assign);
            // The integer codebooks reproduce the fine-tuned network.
            f.finish_shared(&mut q);
            assert!(f.shared.is_none());
            let exact = f.eval(Some(&q));
            assert!((exact - after).abs() < 0.05, "{after:.3} vs {exact:.3} dB");
            for (t, cb) in q.codebooks.iter().enumerate() {
                assert_eq!(cb.is_some(), prunable(&a)[t]);
                if let Some(cb) = cb {
                    assert!(cb.len() <= 4 && q.bits[t] == cb.min_bits());
                }
            }
        });
    }

    #[test]
    fn a_diverging_fit_is_rolled_back_and_a_stable_one_is_untouched() {
        let a = Arch {
            width: 32,
            depth: 4,
            ..arch()
        };
        on_wave(&a, 32, 24, 5, |sig, init| {
            let phase = |lr: f32| Phase {
                steps: 300,
                lr,
                lr_end_frac: 1.0,
                batch: 1 << 16,
                eval_every: 0,
                stop_at_psnr: None,
                guard: true,
                warmup: 0,
            };
            // A stable rate: no rollback, the same weights as plain steps.
            let mut f = Fitter::new(a, sig, init.clone(), 5);
            let stable = f.run_phase(&phase(3e-4), None, 0, 0, &mut |_: &FitEvent| {});
            assert_eq!(f.backoffs, 0);
            let mut g = Fitter::new(a, sig, init, 5);
            for _ in 0..300 {
                g.step(1 << 16, 3e-4, None);
            }
            assert_eq!(f.params, g.params);
            // Then far too large a rate from the fitted state: plain steps leave the basin, the
            // guarded phase rolls back and goes on at a smaller rate.
            let lr = 0.01;
            f.reset_optimizer();
            let guarded = f.run_phase(&phase(lr), None, 0, 0, &mut |_: &FitEvent| {});
            g.reset_optimizer();
            for _ in 0..300 {
                g.step(1 << 16, lr, None);
            }
            let wild = g.eval(None);
            assert!(f.backoffs > 0, "no rollback: {guarded:.2} dB");
            assert!(
                guarded > stable - 3.0 && wild < stable - 10.0,
                "guarded {guarded:.2}, unguarded {wild:.2}, before {stable:.2} dB"
            );
        });
    }

    #[test]
    fn the_guard_lets_an_early_transient_pass_but_not_a_later_rise() {
        on_wave(&arch(), 16, 12, 3, |sig, init| {
            let mut f = Fitter::new(arch(), sig, init, 3);
            let feed = |f: &mut Fitter<'_>, losses: &[f64]| {
                let mut g = DivergenceGuard::new(f);
                for &l in losses {
                    g.watch(f, l);
                }
                g.backoffs
            };
            // A phase on a re-chosen support: 2x for its first 40 steps, then back down.
            let transient: Vec<f64> = (0..200)
                .map(|s| match s {
                    0 => 1.0,
                    1..=40 => 2.0,
                    _ => 2.0 * 0.99f64.powi(s - 40),
                })
                .collect();
            assert_eq!(feed(&mut f, &transient), 0);
            // The same 2x rise after the phase has settled is a divergence.
            let later: Vec<f64> = (0..200).map(|s| if s < 100 { 1.0 } else { 2.0 }).collect();
            assert!(feed(&mut f, &later) > 0);
            // So is a large rise at once, and a loss that is not finite.
            let wild: Vec<f64> = (0..20).map(|s| if s == 0 { 1.0 } else { 10.0 }).collect();
            assert!(feed(&mut f, &wild) > 0);
            assert!(feed(&mut f, &[1.0, f64::NAN]) > 0);
        });
    }

    #[test]
    fn a_warmup_ramps_the_rate_linearly_then_keeps_it() {
        on_wave(&arch(), 16, 12, 9, |sig, init| {
            let ph = Phase {
                steps: 6,
                lr: 1e-3,
                lr_end_frac: 1.0,
                batch: 1 << 16,
                eval_every: 0,
                stop_at_psnr: None,
                guard: false,
                warmup: 4,
            };
            let mut f = Fitter::new(arch(), sig, init.clone(), 9);
            f.run_phase(&ph, None, 0, 0, &mut |_: &FitEvent| {});
            let mut g = Fitter::new(arch(), sig, init.clone(), 9);
            for lr in [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3] {
                g.step(1 << 16, lr, None);
            }
            assert_eq!(f.params, g.params);
            // Without the ramp the first steps are full-size: other weights.
            let mut h = Fitter::new(arch(), sig, init, 9);
            h.run_phase(
                &Phase {
                    warmup: 0,
                    ..ph.clone()
                },
                None,
                0,
                0,
                &mut |_: &FitEvent| {},
            );
            assert_ne!(f.params, h.params);
        });
    }

    #[test]
    fn cubic_schedule_goes_from_dense_to_target() {
        let s = PruneSchedule {
            target: 0.2,
            start: 10,
            end: 50,
            every: 10,
            scope: PruneScope::PerLayer,
            method: PruneMethod::Magnitude,
        };
        assert_eq!(s.density_at(5), None);
        assert_eq!(s.density_at(10), Some(1.0));
        assert_eq!(s.density_at(15), None);
        let d30 = s.density_at(30).unwrap();
        assert!((d30 - (0.2 + 0.8 * 0.125)).abs() < 1e-12);
        assert_eq!(s.density_at(50), Some(0.2));
        assert_eq!(s.density_at(51), None);
    }
}
