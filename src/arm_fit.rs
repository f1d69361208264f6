//! Fitting a §5.11 ARM to a grid file's final integer latents (encoder only): a float ReLU
//! network of the [`Arm`] shape trained by Adam on minibatches to minimise the latents' bits
//! under the Laplace it predicts, then rounded to fixed point at the fractional bit count
//! whose real coded size (ARM and stream) is smallest.

use crate::arm::{arm_inputs, Arm, ARM_INPUTS, ARM_MAX_WIDTH};
use crate::entropy::ArmShape;
use crate::grid::laplace_bits;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Settings of an ARM fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmFit {
    /// Hidden width H.
    pub width: usize,
    /// Adam steps.
    pub steps: usize,
    /// Latents per step.
    pub batch: usize,
    /// Adam learning rate at the start of the cosine decay.
    pub lr: f32,
    pub seed: u64,
    /// Code the latents with the prior models of §5.11.1 when they are smaller (image grid
    /// files; audio segments have no prior models).
    pub prior_models: bool,
}

impl Default for ArmFit {
    fn default() -> Self {
        ArmFit {
            width: 12,
            steps: 1200,
            batch: 4096,
            lr: 1e-2,
            seed: 0x41_524d,
            prior_models: true,
        }
    }
}

/// A latent's training example: its inputs, level and value.
#[derive(Clone, Copy)]
struct Sample {
    x: [f32; ARM_INPUTS],
    level: u16,
    v: f32,
}

/// Float parameters in [`Arm::tensors`] order, concatenated.
struct Net {
    h: usize,
    levels: usize,
    p: Vec<f32>,
}

impl Net {
    fn offsets(&self) -> [usize; 7] {
        let lens = Arm::tensor_lens(self.h, self.levels);
        let mut o = [0; 7];
        for k in 0..6 {
            o[k + 1] = o[k] + lens[k];
        }
        o
    }

    fn init(h: usize, levels: usize, rng: &mut ChaCha8Rng, log_scale: f32) -> Net {
        let mut n = Net {
            h,
            levels,
            p: vec![0.0; Arm::tensor_lens(h, levels).iter().sum()],
        };
        let o = n.offsets();
        let a1 = (6.0 / ARM_INPUTS as f32).sqrt();
        let a2 = (6.0 / h as f32).sqrt();
        for w in &mut n.p[o[0]..o[1]] {
            *w = rng.gen_range(-a1..a1);
        }
        for w in &mut n.p[o[2]..o[3]] {
            *w = rng.gen_range(-a2..a2);
        }
        for w in &mut n.p[o[4]..o[5]] {
            *w = rng.gen_range(-0.01..0.01);
        }
        n.p[o[5] + 1] = log_scale;
        n
    }

    /// Bits of sample `s` and (when `g` is given) their gradient added into `g`.
    fn step(&self, s: &Sample, g: Option<&mut [f32]>) -> f32 {
        let (h, o) = (self.h, self.offsets());
        let p = &self.p;
        let lvl = usize::from(s.level);
        let mut z1 = [0f32; ARM_MAX_WIDTH];
        let mut z2 = [0f32; ARM_MAX_WIDTH];
        for j in 0..h {
            let w = &p[o[0] + j * ARM_INPUTS..][..ARM_INPUTS];
            let mut a = p[o[1] + lvl * h + j];
            for (w, x) in w.iter().zip(&s.x) {
                a += w * x;
            }
            z1[j] = a.max(0.0);
        }
        for j in 0..h {
            let w = &p[o[2] + j * h..][..h];
            let mut a = p[o[3] + j];
            for (w, x) in w.iter().zip(&z1[..h]) {
                a += w * x;
            }
            z2[j] = a.max(0.0);
        }
        let out = |c: usize| {
            let w = &p[o[4] + c * h..][..h];
            p[o[5] + c] + w.iter().zip(&z2[..h]).map(|(w, x)| w * x).sum::<f32>()
        };
        let (mu, lb) = (out(0), out(1));
        let lbc = lb.clamp(-4.0, 7.0);
        let (bits, dv, dlb) = laplace_bits(s.v - mu, lbc.exp());
        let Some(g) = g else {
            return bits;
        };
        let d = [-dv, if lb == lbc { dlb } else { 0.0 }];
        let mut g2 = [0f32; ARM_MAX_WIDTH];
        for c in 0..2 {
            g[o[5] + c] += d[c];
            let w = &p[o[4] + c * h..][..h];
            let gw = &mut g[o[4] + c * h..][..h];
            for j in 0..h {
                gw[j] += d[c] * z2[j];
                g2[j] += d[c] * w[j];
            }
        }
        let mut g1 = [0f32; ARM_MAX_WIDTH];
        for j in 0..h {
            if z2[j] <= 0.0 {
                continue;
            }
            let gj = g2[j];
            g[o[3] + j] += gj;
            let w = &p[o[2] + j * h..][..h];
            let gw = &mut g[o[2] + j * h..][..h];
            for k in 0..h {
                gw[k] += gj * z1[k];
                g1[k] += gj * w[k];
            }
        }
        for j in 0..h {
            if z1[j] <= 0.0 {
                continue;
            }
            let gj = g1[j];
            g[o[1] + lvl * h + j] += gj;
            let gw = &mut g[o[0] + j * ARM_INPUTS..][..ARM_INPUTS];
            for (gw, x) in gw.iter_mut().zip(&s.x) {
                *gw += gj * x;
            }
        }
        bits
    }

    /// Rounded to fixed point with `frac_bits` (`None` only outside the ARM's ranges).
    fn quantize(&self, frac_bits: u8) -> Option<Arm> {
        let o = self.offsets();
        let sc = f32::from(1u16 << frac_bits);
        let t: Vec<Vec<i32>> = (0..6)
            .map(|k| {
                self.p[o[k]..o[k + 1]]
                    .iter()
                    .map(|&w| (w * sc).round().clamp(-32767.0, 32767.0) as i32)
                    .collect()
            })
            .collect();
        Arm::from_tensors(self.h, frac_bits, self.levels, t)
    }
}

/// The training example of element `i` of grid `k` of `grids` (coding order, each one's
/// parent the grid before it).
fn sample(grids: &[(&[i32], ArmShape)], k: usize, i: usize) -> Sample {
    let (g, s) = grids[k];
    let parent = k.checked_sub(1).map(|j| (grids[j].0, grids[j].1.cols));
    let xi = arm_inputs(g, i, s.cols, s.layout, parent);
    Sample {
        x: xi.map(|v| v.clamp(-32767, 32767) as f32),
        level: s.level as u16,
        v: g[i] as f32,
    }
}

/// Fits an ARM of `cfg.width` to `grids` (coding order, [`ArmShape::level`] below `levels`)
/// and returns the float network's quantised forms for fractional bits 4..=7 (the caller
/// keeps the one whose file is smallest). `None` when there are no latents.
pub fn fit_arm(grids: &[(&[i32], ArmShape)], levels: usize, cfg: &ArmFit) -> Option<Vec<Arm>> {
    // Examples are drawn by their index among all latents (grid `k` holds `ends[k-1]..ends[k]`)
    // and built when drawn, so memory does not grow with the image.
    let ends: Vec<usize> = grids
        .iter()
        .scan(0usize, |a, g| {
            *a += g.0.len();
            Some(*a)
        })
        .collect();
    let n = ends.last().copied().unwrap_or(0);
    if n == 0
        || cfg.width == 0
        || cfg.width > ARM_MAX_WIDTH
        || levels == 0
        || grids
            .iter()
            .any(|g| g.1.level >= levels || g.0.len() != g.1.len)
    {
        return None;
    }
    // Latents whose thirteen inputs are all 0 (most of the finest level at low rates) share
    // their inputs: their gradient is exact, once per level and value, weighted by the count.
    // Minibatches are drawn from the others ("hard" latents), weighted by their number.
    // Classified in parallel runs of each grid, then gathered in order: the hard latents in
    // coding order, the trivial ones counted exactly (in integers: a count in `f32` stopped at
    // 2^24, which a grid of a 50 Mpx image can pass).
    const RUN: usize = 1 << 14;
    let runs: Vec<(usize, usize)> = grids
        .iter()
        .enumerate()
        .flat_map(|(k, g)| (0..g.0.len()).step_by(RUN).map(move |i| (k, i)))
        .collect();
    type Classified = (Vec<((usize, i32), u64)>, Vec<(u8, u32)>);
    let classified: Vec<Classified> = runs
        .par_iter()
        .map(|&(k, i0)| {
            let (g, s) = grids[k];
            let parent = k.checked_sub(1).map(|j| (grids[j].0, grids[j].1.cols));
            let mut counts: std::collections::BTreeMap<(usize, i32), u64> = Default::default();
            let mut hard = Vec::new();
            for (i, &v) in g.iter().enumerate().skip(i0).take(RUN) {
                if arm_inputs(g, i, s.cols, s.layout, parent)
                    .iter()
                    .all(|&x| x == 0)
                {
                    *counts.entry((s.level, v)).or_default() += 1;
                } else {
                    hard.push((k as u8, i as u32));
                }
            }
            (counts.into_iter().collect(), hard)
        })
        .collect();
    let mut trivial: std::collections::BTreeMap<(usize, i32), u64> = Default::default();
    let mut hard: Vec<(u8, u32)> = Vec::new();
    for (counts, h) in classified {
        for (key, c) in counts {
            *trivial.entry(key).or_default() += c;
        }
        hard.extend(h);
    }
    let trivial: Vec<(Sample, f32)> = trivial
        .into_iter()
        .map(|((level, v), c)| {
            let c = c as f32;
            let s = Sample {
                x: [0.0; ARM_INPUTS],
                level: level as u16,
                v: v as f32,
            };
            (s, c)
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let sum_abs: f64 = grids
        .iter()
        .flat_map(|g| g.0.iter())
        .map(|&v| f64::from(v).abs())
        .sum();
    let mean_abs = (sum_abs / n as f64) as f32;
    let mut net = Net::init(cfg.width, levels, &mut rng, (mean_abs + 0.1).ln());
    let np = net.p.len();
    let (mut m, mut v) = (vec![0f32; np], vec![0f32; np]);
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let batch = cfg.batch.max(1).min(hard.len());
    let hard_weight = if batch == 0 {
        0.0
    } else {
        hard.len() as f32 / batch as f32
    };
    const CHUNK: usize = 512;
    // Each step's minibatch is drawn while the step before computes its gradient (the draws
    // depend only on the generator, which nothing else in the loop uses).
    let draw = |idx: &mut [(u8, u32)], rng: &mut ChaCha8Rng| {
        for i in idx.iter_mut() {
            *i = hard[rng.gen_range(0..hard.len())];
        }
    };
    let mut idx = vec![(0u8, 0u32); batch];
    let mut next = idx.clone();
    if cfg.steps > 0 {
        draw(&mut idx, &mut rng);
    }
    for step in 0..cfg.steps {
        let (parts, ()) = rayon::join(
            || -> Vec<Vec<f32>> {
                idx.par_chunks(CHUNK)
                    .map(|c| {
                        let mut g = vec![0f32; np];
                        for &(k, i) in c {
                            net.step(&sample(grids, k.into(), i as usize), Some(&mut g));
                        }
                        g
                    })
                    .collect()
            },
            || {
                if step + 1 < cfg.steps {
                    draw(&mut next, &mut rng);
                }
            },
        );
        std::mem::swap(&mut idx, &mut next);
        let mut g = vec![0f32; np];
        for part in &parts {
            for (a, b) in g.iter_mut().zip(part) {
                *a += hard_weight * b;
            }
        }
        let mut gt = vec![0f32; np];
        for (s, c) in &trivial {
            gt.iter_mut().for_each(|x| *x = 0.0);
            net.step(s, Some(&mut gt));
            for (a, b) in g.iter_mut().zip(&gt) {
                *a += c * b;
            }
        }
        let t = step as f32 / cfg.steps.max(1) as f32;
        let lr = 1e-4 + (cfg.lr - 1e-4) * 0.5 * (1.0 + (std::f32::consts::PI * t).cos());
        let (c1, c2) = (
            1.0 - b1.powi(step as i32 + 1),
            1.0 - b2.powi(step as i32 + 1),
        );
        for k in 0..np {
            let gk = g[k] / n as f32;
            m[k] = b1 * m[k] + (1.0 - b1) * gk;
            v[k] = b2 * v[k] + (1.0 - b2) * gk * gk;
            net.p[k] -= lr * (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
        }
    }
    let arms: Vec<Arm> = (4..=7).filter_map(|f| net.quantize(f)).collect();
    (!arms.is_empty()).then_some(arms)
}
