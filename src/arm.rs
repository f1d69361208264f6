//! §5.11 The autoregressive context model (ARM) of a grid file's latents, in exact integer
//! arithmetic: a small ReLU network that maps the already coded neighbours of a latent (twelve
//! in its own level, and the co-located latent of the next coarser level) to the mean and the
//! log-scale of its distribution. The mean gives the prediction and its fractional class, the
//! log-scale the context, of the §5.10-style residual coding in [`crate::entropy`].
//!
//! Integer only (no floats), so encoder and decoder agree bit for bit on every machine; this
//! module imports nothing from the model or the fit (the parser must not need them).

/// Causal neighbours of a latent in its own level, `(dx, dy)` in input order: the two rows
/// above (`dx` in `-2..=2`) and the two latents to the left.
pub const ARM_OFFSETS: [(i32, i32); ARM_NEIGHBOURS] = [
    (-1, 0),
    (0, -1),
    (-1, -1),
    (1, -1),
    (-2, 0),
    (-2, -1),
    (2, -1),
    (0, -2),
    (-1, -2),
    (1, -2),
    (-2, -2),
    (2, -2),
];
/// Neighbours in the latent's own level.
pub const ARM_NEIGHBOURS: usize = 12;
/// Inputs of the network: the neighbours, then the parent latent.
pub const ARM_INPUTS: usize = ARM_NEIGHBOURS + 1;
/// Largest hidden width a file may declare.
pub const ARM_MAX_WIDTH: usize = 32;
/// Fractional bits a file may declare (`1..=ARM_MAX_FRAC_BITS`).
pub const ARM_MAX_FRAC_BITS: u8 = 8;
/// Hidden activations are clamped to `0..=ARM_ACT_MAX` (so no product can overflow `i64`).
pub const ARM_ACT_MAX: i64 = 1 << 24;
/// Outputs are clamped to `-ARM_OUT_MAX..=ARM_OUT_MAX` before they are rescaled to 1/256.
pub const ARM_OUT_MAX: i64 = 1 << 30;
/// Contexts chosen by the predicted log-scale.
pub const ARM_SCALE_CONTEXTS: usize = 12;

/// One ARM in fixed point: real weight = integer / 2^`frac_bits`. Layer 1 has one bias vector
/// per latent level (the level's embedding); the output layer has two units, the mean and the
/// natural log of the Laplace scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    /// Hidden width H (`1..=ARM_MAX_WIDTH`).
    pub width: usize,
    /// Fractional bits F of every weight and bias (`1..=ARM_MAX_FRAC_BITS`).
    pub frac_bits: u8,
    /// Levels L the layer-1 biases cover.
    pub levels: usize,
    /// `H x ARM_INPUTS`, row j = the weights into hidden unit j.
    pub w1: Vec<i32>,
    /// `L x H`, row l = level l's layer-1 biases.
    pub b1: Vec<i32>,
    /// `H x H`.
    pub w2: Vec<i32>,
    /// `H`.
    pub b2: Vec<i32>,
    /// `2 x H`: row 0 the mean, row 1 the log-scale.
    pub w3: Vec<i32>,
    /// `2`.
    pub b3: Vec<i32>,
    /// §5.11.1 The latents are coded with the 144 models of the ARM's scale and fraction that
    /// start from Laplace prior counts (image grid files with flag bit 13), instead of 36
    /// models that start flat. Not part of the network: [`Arm::from_tensors`] leaves it off.
    pub prior_models: bool,
}

/// The ARM's output for one latent, both in units of 1/256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArmOut {
    /// The mean, `256 · μ`.
    pub mean: i64,
    /// `256 · ln b` of the Laplace scale b.
    pub log_scale: i64,
}

impl Arm {
    /// Tensor sizes in file order (w1, b1, w2, b2, w3, b3) for `width` and `levels`.
    pub fn tensor_lens(width: usize, levels: usize) -> [usize; 6] {
        [
            width * ARM_INPUTS,
            levels * width,
            width * width,
            width,
            2 * width,
            2,
        ]
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> [&[i32]; 6] {
        [&self.w1, &self.b1, &self.w2, &self.b2, &self.w3, &self.b3]
    }

    /// Builds an ARM from tensors in file order; `None` when a size does not match, or the
    /// width, fractional bits or level count is out of range.
    pub fn from_tensors(
        width: usize,
        frac_bits: u8,
        levels: usize,
        t: Vec<Vec<i32>>,
    ) -> Option<Arm> {
        if width == 0 || width > ARM_MAX_WIDTH || !(1..=ARM_MAX_FRAC_BITS).contains(&frac_bits) {
            return None;
        }
        let lens = Arm::tensor_lens(width, levels);
        if t.len() != 6 || t.iter().zip(lens).any(|(v, n)| v.len() != n) {
            return None;
        }
        let mut it = t.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Some(Arm {
            width,
            frac_bits,
            levels,
            w1: next(),
            b1: next(),
            w2: next(),
            b2: next(),
            w3: next(),
            b3: next(),
            prior_models: false,
        })
    }

    /// This ARM coding with (or without) the prior models of §5.11.1.
    pub fn with_prior_models(mut self, on: bool) -> Arm {
        self.prior_models = on;
        self
    }

    /// Whether the width, fractional bits and tensor sizes are in range and agree (as
    /// [`Arm::from_tensors`] guarantees; the fields are public).
    pub fn is_valid(&self) -> bool {
        (1..=ARM_MAX_WIDTH).contains(&self.width)
            && (1..=ARM_MAX_FRAC_BITS).contains(&self.frac_bits)
            && self
                .tensors()
                .iter()
                .zip(Arm::tensor_lens(self.width, self.levels))
                .all(|(t, n)| t.len() == n)
    }

    /// Number of weights and biases.
    pub fn num_params(&self) -> usize {
        Arm::tensor_lens(self.width, self.levels).iter().sum()
    }

    /// The output for `inputs` (the neighbours in [`ARM_OFFSETS`] order, then the parent) of a
    /// latent of level `level` (`< levels`), §5.11. Exact integer arithmetic.
    ///
    /// # Panics
    /// When the ARM is not [`Arm::is_valid`] or `level >= levels` (the entropy coder checks
    /// both first).
    pub fn eval(&self, level: usize, inputs: &[i64; ARM_INPUTS]) -> ArmOut {
        let h = self.width;
        let f = u32::from(self.frac_bits);
        let mut h1 = [0i64; ARM_MAX_WIDTH];
        let b1 = &self.b1[level * h..(level + 1) * h];
        for (j, a) in h1.iter_mut().enumerate().take(h) {
            let row = &self.w1[j * ARM_INPUTS..(j + 1) * ARM_INPUTS];
            let s: i64 = row
                .iter()
                .zip(inputs)
                .map(|(&w, &x)| i64::from(w) * x)
                .sum::<i64>()
                + i64::from(b1[j]);
            *a = s.clamp(0, ARM_ACT_MAX);
        }
        let mut h2 = [0i64; ARM_MAX_WIDTH];
        for (j, a) in h2.iter_mut().enumerate().take(h) {
            *a = (self.dot(&self.w2[j * h..(j + 1) * h], &h1[..h], self.b2[j]) >> f)
                .clamp(0, ARM_ACT_MAX);
        }
        let out = |c: usize| {
            let o = self.dot(&self.w3[c * h..(c + 1) * h], &h2[..h], self.b3[c]) >> f;
            o.clamp(-ARM_OUT_MAX, ARM_OUT_MAX) << (8 - f)
        };
        ArmOut {
            mean: out(0),
            log_scale: out(1),
        }
    }

    /// `Σ w·x + (b << F)` (inputs and result at scale 2^F · 2^F).
    #[inline]
    fn dot(&self, w: &[i32], x: &[i64], b: i32) -> i64 {
        w.iter()
            .zip(x)
            .map(|(&w, &x)| i64::from(w) * x)
            .sum::<i64>()
            + (i64::from(b) << self.frac_bits)
    }
}

/// How the twelve own-level inputs of §5.11 are laid out; the container says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArmLayout {
    /// Image grids (§13.9): the [`ARM_OFFSETS`] neighbours in the two rows above and to the left.
    #[default]
    Image,
    /// One-row grids (audio grid segments, §14.2): the twelve previous elements `i − 1, …,
    /// i − 12`.
    Line,
}

/// The inputs of element `i` of a grid `g` with `cols` columns (its first `i` elements known):
/// the twelve own-level neighbours of `layout` (0 outside the grid or not yet coded) and the
/// parent, element `(x >> 1, y >> 1)` of `parent` (0 when there is none or that position is
/// outside it), as in §5.10.
#[inline]
pub fn arm_inputs(
    g: &[i32],
    i: usize,
    cols: usize,
    layout: ArmLayout,
    parent: Option<(&[i32], usize)>,
) -> [i64; ARM_INPUTS] {
    let mut x = [0i64; ARM_INPUTS];
    if cols == 0 {
        return x;
    }
    let (cx, cy) = ((i % cols) as i64, (i / cols) as i64);
    match layout {
        ArmLayout::Image => {
            for (slot, &(dx, dy)) in x.iter_mut().zip(&ARM_OFFSETS) {
                let (nx, ny) = (cx + i64::from(dx), cy + i64::from(dy));
                if nx >= 0 && (nx as usize) < cols && ny >= 0 {
                    let j = ny as usize * cols + nx as usize;
                    if j < i {
                        *slot = g.get(j).map_or(0, |&v| i64::from(v));
                    }
                }
            }
        }
        ArmLayout::Line => {
            for (k, slot) in x.iter_mut().take(ARM_NEIGHBOURS).enumerate() {
                if let Some(j) = i.checked_sub(k + 1) {
                    *slot = g.get(j).map_or(0, |&v| i64::from(v));
                }
            }
        }
    }
    x[ARM_NEIGHBOURS] = crate::entropy::grid_parent(parent, cx as usize, cy as usize);
    x
}

/// The context of a latent from its predicted log-scale (1/256 units): ln b from −3 in steps
/// of 1/2, `clamp((log_scale + 768) >> 7, 0, 11)`.
#[inline]
pub fn scale_context(log_scale: i64) -> usize {
    ((log_scale + 768) >> 7).clamp(0, ARM_SCALE_CONTEXTS as i64 - 1) as usize
}

/// The prediction `round(mean)` (ties up, clamped to `-max_abs..=max_abs`) and its fraction
/// `f = mean − 256·pred` in `-128..=127` (0 when clamped), as in §5.10.
#[inline]
pub fn arm_prediction(mean: i64, max_abs: u32) -> (i32, i64) {
    let pred = (mean + 128) >> 8;
    let m = i64::from(max_abs);
    let clamped = pred.clamp(-m, m);
    let frac = if clamped == pred {
        mean - (pred << 8)
    } else {
        0
    };
    (clamped as i32, frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Arm {
        let (h, l) = (2, 2);
        let lens = Arm::tensor_lens(h, l);
        let t: Vec<Vec<i32>> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                (0..n)
                    .map(|i| (i as i32 % 5 - 2) * (k as i32 + 1) * 16)
                    .collect()
            })
            .collect();
        Arm::from_tensors(h, 6, l, t).unwrap()
    }

    #[test]
    fn extreme_inputs_and_weights_do_not_overflow() {
        let mut a = tiny();
        for t in [
            &mut a.w1, &mut a.b1, &mut a.w2, &mut a.b2, &mut a.w3, &mut a.b3,
        ] {
            t.iter_mut().for_each(|w| *w = i32::MAX);
        }
        let o = a.eval(1, &[32767; ARM_INPUTS]);
        assert!(o.mean.abs() <= ARM_OUT_MAX << 7 && o.log_scale.abs() <= ARM_OUT_MAX << 7);
        for t in [&mut a.w1, &mut a.w3] {
            t.iter_mut().for_each(|w| *w = i32::MIN);
        }
        let o = a.eval(0, &[-32767; ARM_INPUTS]);
        assert!(o.mean.abs() <= ARM_OUT_MAX << 7);
    }

    #[test]
    fn inputs_are_causal_and_zero_outside() {
        // 3 columns: element 4 is (1, 1); its left is 3, above 1, above-left 0, above-right 2.
        let g = [1, 2, 3, 4, 5, 6];
        let x = arm_inputs(&g, 4, 3, ArmLayout::Image, Some((&[7, 8], 2)));
        assert_eq!(&x[..4], &[4, 2, 1, 3]);
        assert_eq!(x[4], 0); // (-2, 0) is outside
        assert_eq!(x[ARM_NEIGHBOURS], 7); // parent (0, 0)
                                          // Elements not yet coded (j >= i) read as 0 even when present in the slice.
        let x = arm_inputs(&g, 0, 3, ArmLayout::Image, None);
        assert!(x.iter().all(|&v| v == 0));
        // One row: the previous elements, nearest first, then the parent (x >> 1).
        let line: Vec<i32> = (1..=20).collect();
        let x = arm_inputs(
            &line,
            14,
            line.len(),
            ArmLayout::Line,
            Some((&[9, 8, 7, 6, 5, 4, 3, 2], 8)),
        );
        assert_eq!(
            &x[..ARM_NEIGHBOURS],
            &[14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3]
        );
        assert_eq!(x[ARM_NEIGHBOURS], 2); // parent element 7
        let x = arm_inputs(&line, 2, line.len(), ArmLayout::Line, None);
        assert_eq!(&x[..4], &[2, 1, 0, 0]);
        assert!(x[2..].iter().all(|&v| v == 0));
    }

    #[test]
    fn predictions_and_contexts_follow_the_spec() {
        assert_eq!(arm_prediction(256 + 100, 10), (1, 100));
        assert_eq!(arm_prediction(256 + 128, 10), (2, -128));
        assert_eq!(arm_prediction(-300, 10), (-1, -44));
        assert_eq!(arm_prediction(256 * 50, 10), (10, 0));
        assert_eq!(scale_context(-10_000), 0);
        assert_eq!(scale_context(-768), 0);
        assert_eq!(scale_context(-641), 0);
        assert_eq!(scale_context(-640), 1);
        assert_eq!(scale_context(10_000), ARM_SCALE_CONTEXTS - 1);
    }
}
