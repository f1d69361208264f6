//! Constrained L0 sparsity (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks
//! through L0 Regularization"; the constraint form of Gallego-Posada et al. 2022, "Controlled
//! Sparsity via Constrained Optimization").
//!
//! Every prunable weight `w` gets a stochastic gate `z = min(1, max(0, s·(ζ−γ) + γ))`,
//! `s = sigmoid((ln u − ln(1−u) + log α) / β)`, `u ~ U(0, 1)` (the hard-concrete
//! distribution); the network uses `w·z`. The expected density of a group of gates is
//! `mean_i P(z_i ≠ 0) = mean_i sigmoid(log α_i − β ln(−γ/ζ))`. Instead of a hand-tuned L0
//! penalty, a Lagrange multiplier `λ ≥ 0` per group (one per matrix, or one for all) is raised
//! by gradient ascent while the expected density is above the target and reset to 0 once it
//! is reached (dual restarts):
//! the fit minimises `MSE + Σ_g λ_g · (E[density_g] − target)`. At the end the gates are made
//! deterministic and exactly the target count of weights is kept (largest `|w|·ẑ`).

use crate::fit::{magnitude_masks, prunable, PruneScope};
use crate::format::Arch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BETA: f32 = 2.0 / 3.0;
const GAMMA: f32 = -0.1;
const ZETA: f32 = 1.1;
/// Initial `log α`: gates start almost surely open (`P(z = 1)` ≈ 0.8, `P(z ≠ 0)` ≈ 1).
const LOG_ALPHA_INIT: f32 = 3.0;
/// Adam learning rate of `log α`.
const GATE_LR: f32 = 0.02;
/// Step size of the multipliers' gradient ascent, per unit of density excess.
const DUAL_LR: f32 = 2e-3;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `β ln(−γ/ζ)`: the shift between `log α` and the logit of `P(z ≠ 0)`.
fn open_shift() -> f32 {
    BETA * (-GAMMA / ZETA).ln()
}

/// Hard-concrete gates of the prunable tensors of a network, with their multipliers.
#[derive(Debug, Clone)]
pub struct L0Gates {
    /// `(offset, length)` of each gated tensor in the parameter vector.
    spans: Vec<(usize, usize)>,
    /// Constraint group of each gated tensor (index into `lambda`).
    group: Vec<usize>,
    log_alpha: Vec<Vec<f32>>,
    /// The current sample `z` and `dz/d log α`, per gated tensor.
    z: Vec<Vec<f32>>,
    dz: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: u32,
    lambda: Vec<f32>,
    target: f64,
    scope: PruneScope,
    rng: ChaCha8Rng,
    /// Base weights: the gates then scale the residual `w − base`.
    anchor: Option<Vec<f32>>,
}

impl L0Gates {
    /// Gates on the prunable matrices of `arch`, all open, aiming at `target` density; with
    /// `anchor`, on the residuals from it.
    pub fn new(
        arch: &Arch,
        target: f64,
        scope: PruneScope,
        seed: u64,
        anchor: Option<Vec<f32>>,
    ) -> Self {
        let which = prunable(arch);
        let mut spans = Vec::new();
        let mut off = 0;
        for (t, n) in arch.tensor_lens().into_iter().enumerate() {
            if which[t] {
                spans.push((off, n));
            }
            off += n;
        }
        let group: Vec<usize> = match scope {
            PruneScope::PerLayer => (0..spans.len()).collect(),
            PruneScope::Global => vec![0; spans.len()],
        };
        let ng = group.iter().max().map_or(0, |&g| g + 1);
        let per = |x: f32| spans.iter().map(|&(_, n)| vec![x; n]).collect::<Vec<_>>();
        L0Gates {
            log_alpha: per(LOG_ALPHA_INIT),
            z: per(1.0),
            dz: per(0.0),
            m: per(0.0),
            v: per(0.0),
            spans,
            group,
            t: 0,
            lambda: vec![0.0; ng],
            target: target.clamp(0.0, 1.0),
            scope,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x10_9a7e),
            anchor,
        }
    }

    /// Draw fresh gates and multiply the effective weights (their residuals from the anchor)
    /// by them.
    pub fn sample_into(&mut self, eff: &mut [f32]) {
        for (k, &(off, n)) in self.spans.iter().enumerate() {
            for i in 0..n {
                let u: f32 = self.rng.gen_range(1e-6f32..1.0 - 1e-6);
                let s = sigmoid(((u / (1.0 - u)).ln() + self.log_alpha[k][i]) / BETA);
                let sb = s * (ZETA - GAMMA) + GAMMA;
                let (z, dz) = if sb <= 0.0 {
                    (0.0, 0.0)
                } else if sb >= 1.0 {
                    (1.0, 0.0)
                } else {
                    (sb, (ZETA - GAMMA) * s * (1.0 - s) / BETA)
                };
                self.z[k][i] = z;
                self.dz[k][i] = dz;
                let a = self.anchor.as_ref().map_or(0.0, |a| a[off + i]);
                eff[off + i] = a + (eff[off + i] - a) * z;
            }
        }
    }

    /// Expected density of each constraint group.
    pub fn expected_density(&self) -> Vec<f64> {
        let shift = open_shift();
        let mut sum = vec![0.0f64; self.lambda.len()];
        let mut cnt = vec![0usize; self.lambda.len()];
        for (k, la) in self.log_alpha.iter().enumerate() {
            let g = self.group[k];
            sum[g] += la
                .iter()
                .map(|&a| f64::from(sigmoid(a - shift)))
                .sum::<f64>();
            cnt[g] += la.len();
        }
        sum.iter()
            .zip(&cnt)
            .map(|(&s, &c)| if c == 0 { 0.0 } else { s / c as f64 })
            .collect()
    }

    /// Backward through the gates: `grad` (w.r.t. the gated effective weights) becomes the
    /// gradient w.r.t. the latent weights (`g·z`); `log α` takes an Adam step on
    /// `g·w·dz/dlog α + λ_g · dE[density_g]/dlog α`; then each `λ_g` ascends on the
    /// constraint violation `E[density_g] − target` (and stays ≥ 0).
    pub fn backward(&mut self, params: &[f32], grad: &mut [f32]) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.t += 1;
        let bc1 = 1.0 - B1.powi(self.t as i32);
        let bc2 = 1.0 - B2.powi(self.t as i32);
        let a = GATE_LR * bc2.sqrt() / bc1;
        let shift = open_shift();
        let mut group_len = vec![0usize; self.lambda.len()];
        for (k, &(_, n)) in self.spans.iter().enumerate() {
            group_len[self.group[k]] += n;
        }
        for (k, &(off, n)) in self.spans.iter().enumerate() {
            let g_idx = self.group[k];
            let lam = self.lambda[g_idx] / group_len[g_idx].max(1) as f32;
            for i in 0..n {
                let g = grad[off + i];
                let p = sigmoid(self.log_alpha[k][i] - shift);
                let r = params[off + i] - self.anchor.as_ref().map_or(0.0, |a| a[off + i]);
                let ga = g * r * self.dz[k][i] + lam * p * (1.0 - p);
                grad[off + i] = g * self.z[k][i];
                let (m, v) = (&mut self.m[k][i], &mut self.v[k][i]);
                *m = B1 * *m + (1.0 - B1) * ga;
                *v = B2 * *v + (1.0 - B2) * ga * ga;
                self.log_alpha[k][i] -= a * *m / (v.sqrt() + EPS * bc2.sqrt());
            }
        }
        // Dual ascent with restarts (Gallego-Posada et al.): a satisfied constraint resets its
        // multiplier to 0, so that the density does not overshoot while λ unwinds.
        let dens = self.expected_density();
        for (l, d) in self.lambda.iter_mut().zip(dens) {
            *l = if d <= self.target {
                0.0
            } else {
                *l + DUAL_LR * (d - self.target) as f32 / self.target.max(1e-3) as f32
            };
        }
    }

    /// The multipliers (for diagnostics).
    pub fn lambda(&self) -> &[f32] {
        &self.lambda
    }

    /// Ends the stochastic phase: masks keep exactly the target density (per matrix or over
    /// all, as the constraint) of the largest `P(z ≠ 0)·|w|`, and the deterministic gate
    /// `ẑ = min(1, max(0, sigmoid(log α)(ζ−γ) + γ))` is folded into each kept weight whose
    /// gate is open (`ẑ > 0`; a kept weight with a closed gate keeps its latent value).
    /// Returns the masks (as [`magnitude_masks`]); the caller applies them.
    pub fn finish(&self, arch: &Arch, params: &mut [f32]) -> Vec<Option<Vec<bool>>> {
        let shift = open_shift();
        let anchor = |j: usize| self.anchor.as_ref().map_or(0.0, |a| a[j]);
        let mut score = params.to_vec();
        for (k, &(off, n)) in self.spans.iter().enumerate() {
            for i in 0..n {
                let r = params[off + i] - anchor(off + i);
                score[off + i] = sigmoid(self.log_alpha[k][i] - shift) * r.abs();
            }
        }
        let masks = magnitude_masks(arch, &score, &[], self.target, self.scope);
        for (k, &(off, n)) in self.spans.iter().enumerate() {
            for i in 0..n {
                let zh = (sigmoid(self.log_alpha[k][i]) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0);
                if zh > 0.0 {
                    let a = anchor(off + i);
                    params[off + i] = a + (params[off + i] - a) * zh;
                }
            }
        }
        masks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch() -> Arch {
        Arch {
            coord_dims: 2,
            out_channels: 3,
            width: 16,
            depth: 3,
            pe_freqs: 0,
            pe_base_milli: 2000,
            w0_first: 30,
            w0_hidden: 30,
        }
    }

    #[test]
    fn the_multiplier_drives_the_expected_density_to_the_target() {
        let a = arch();
        for scope in [PruneScope::PerLayer, PruneScope::Global] {
            let mut g = L0Gates::new(&a, 0.3, scope, 1, None);
            let n = a.num_params();
            let params: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
                .collect();
            let mut eff = params.clone();
            for _ in 0..3000 {
                eff.copy_from_slice(&params);
                g.sample_into(&mut eff);
                // No data term: only the constraint acts on the gates.
                let mut grad = vec![0.0f32; n];
                g.backward(&params, &mut grad);
                assert!(grad.iter().all(|&x| x == 0.0));
            }
            for d in g.expected_density() {
                // Within 0.08: Adam momentum carries the gates a little past the target after
                // the multiplier resets (the final masks then keep the exact count).
                assert!((d - 0.3).abs() < 0.08, "{scope:?}: E[density] {d}");
            }
            assert!(g.lambda().iter().all(|&l| l >= 0.0));
            // The final masks keep exactly the target count.
            let mut p = params.clone();
            let masks = g.finish(&a, &mut p);
            let kept: usize = masks
                .iter()
                .flatten()
                .map(|m| m.iter().filter(|&&k| k).count())
                .sum();
            let total: usize = masks.iter().flatten().map(Vec::len).sum();
            assert_eq!(kept, (0.3 * total as f64).round() as usize);
        }
    }

    #[test]
    fn gates_scale_the_weights_and_their_gradient() {
        let a = arch();
        let mut g = L0Gates::new(&a, 0.5, PruneScope::PerLayer, 2, None);
        let n = a.num_params();
        let params = vec![0.5f32; n];
        let mut eff = params.clone();
        g.sample_into(&mut eff);
        let mut grad = vec![1.0f32; n];
        g.backward(&params, &mut grad);
        let gated = prunable(&a);
        let mut off = 0;
        for (t, len) in a.tensor_lens().into_iter().enumerate() {
            for i in off..off + len {
                if gated[t] {
                    // eff = w·z and dL/dw = g·z, with z in [0, 1].
                    let z = eff[i] / 0.5;
                    assert!((0.0..=1.0).contains(&z));
                    assert!((grad[i] - z).abs() < 1e-6);
                } else {
                    assert_eq!((eff[i], grad[i]), (0.5, 1.0));
                }
            }
            off += len;
        }
    }
}
