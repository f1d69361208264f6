//! Fused CPU kernels for SIREN networks.
//!
//! Two entry points share one set of tile kernels:
//! - [`forward_tile_infer`]: evaluation used by the decoder (and by the encoder to measure the
//!   decoder's exact output). It never uses fused multiply-add, and its operation order is
//!   fixed, so its results are bit-identical on every IEEE-754 machine whatever SIMD width
//!   the CPU offers (vectorising across independent outputs does not change any rounding).
//! - [`train_tile`]: forward + backward of one tile of rows with every layer kept in cache
//!   ("tiled and fused"), accumulating weight gradients. It may use FMA (selected at run time).
//!
//! Layout: a network is a flat `&[f32]` holding, for each linear map `l`, `W_l` as `[in][out]`
//! row-major followed by `b_l` (`out`), in the order of `format::Arch::tensor_lens`. Sine layers
//! compute `sin(w0 * (x W + b))`; the last map is linear.
//!
//! Matrix products are written in "axpy" form (`out_row += x[r,k] * W[k,:]`), whose inner loop
//! runs over contiguous memory and vectorises without reassociating sums. The backward pass uses
//! a transposed copy of each weight matrix so it has the same form.

/// Rows per tile. Activations of a tile for all layers stay in L2.
pub const TILE: usize = 64;

/// One linear map of the network, with offsets into the flat parameter vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec {
    pub n_in: usize,
    pub n_out: usize,
    pub w_off: usize,
    pub b_off: usize,
    /// SIREN frequency; `None` for the final linear layer.
    pub w0: Option<f32>,
}

/// Shape information for a whole network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetShape {
    pub layers: Vec<LayerSpec>,
    pub n_params: usize,
}

impl NetShape {
    /// Build from `(in, out)` pairs; all but the last map are sine layers with the given w0s.
    pub fn new(dims: &[(usize, usize)], w0_first: f32, w0_hidden: f32) -> NetShape {
        let mut layers = Vec::with_capacity(dims.len());
        let mut off = 0;
        for (l, &(n_in, n_out)) in dims.iter().enumerate() {
            let w0 = if l + 1 == dims.len() {
                None
            } else if l == 0 {
                Some(w0_first)
            } else {
                Some(w0_hidden)
            };
            layers.push(LayerSpec { n_in, n_out, w_off: off, b_off: off + n_in * n_out, w0 });
            off += n_in * n_out + n_out;
        }
        NetShape { layers, n_params: off }
    }
    pub fn n_in(&self) -> usize {
        self.layers.first().map_or(0, |l| l.n_in)
    }
    pub fn n_out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.n_out)
    }
    /// Largest layer width (inputs or outputs), for scratch sizing.
    pub fn max_dim(&self) -> usize {
        self.layers.iter().map(|l| l.n_in.max(l.n_out)).max().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise math

const FRAC_1_PI: f32 = std::f32::consts::FRAC_1_PI;
/// Cody–Waite split of pi: `PI_A` has few mantissa bits so `k * PI_A` is exact for |k| < 2^16.
const PI_A: f32 = 3.140625;
const PI_B: f32 = 9.676_536e-4;
/// 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `sin(x)` and `cos(x)` with absolute error below 2e-7 for |x| < 2^15, computed with a fixed
/// sequence of IEEE-754 f32 operations (no FMA, no table, no libm): the same bits everywhere.
/// Range reduction by pi: x = k*pi + r, |r| <= pi/2, then Taylor polynomials in r and the sign
/// of both flipped when k is odd (the parity is the last mantissa bit of `x/pi + 1.5*2^23`).
#[inline(always)]
pub fn sincos(x: f32) -> (f32, f32) {
    let t = x * FRAC_1_PI + ROUND_MAGIC;
    let k = t - ROUND_MAGIC;
    let parity = t.to_bits() << 31;
    let r = (x - k * PI_A) - k * PI_B;
    let r2 = r * r;
    let s = r
        + r * r2
            * (-1.666_666_7e-1
                + r2 * (8.333_333e-3
                    + r2 * (-1.984_127e-4 + r2 * (2.755_731_7e-6 + r2 * -2.505_210_8e-8))));
    let c = 1.0
        + r2 * (-0.5
            + r2 * (4.166_666_8e-2
                + r2 * (-1.388_888_9e-3
                    + r2 * (2.480_158_7e-5 + r2 * (-2.755_731_7e-7 + r2 * 2.087_675_7e-9)))));
    (f32::from_bits(s.to_bits() ^ parity), f32::from_bits(c.to_bits() ^ parity))
}

/// `sin(x)` alone (same bits as `sincos(x).0`).
#[inline(always)]
pub fn sin(x: f32) -> f32 {
    sincos(x).0
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `out[r,:] = b + x[r,:] W` for `rows` rows.
#[inline(always)]
fn linear<const FMA: bool>(
    x: &[f32],
    n_in: usize,
    w: &[f32],
    b: &[f32],
    n_out: usize,
    rows: usize,
    out: &mut [f32],
) {
    for (xr, o) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)).take(rows) {
        o.copy_from_slice(b);
        for (&a, wk) in xr.iter().zip(w.chunks_exact(n_out)) {
            for (oj, &wj) in o.iter_mut().zip(wk) {
                *oj = madd::<FMA>(a, wj, *oj);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inference

/// Scratch buffers for inference of one tile.
pub struct InferScratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

impl InferScratch {
    pub fn new(shape: &NetShape) -> Self {
        let n = TILE * shape.max_dim();
        InferScratch { a: vec![0.0; n], b: vec![0.0; n] }
    }
}

/// Evaluate up to [`TILE`] rows of input features `x` (`rows * n_in`) into `y` (`rows * n_out`).
/// Deterministic on every machine (see module docs).
pub fn forward_tile_infer(
    shape: &NetShape,
    params: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { forward_infer_avx2(shape, params, x, rows, y, s) };
            return;
        }
    }
    forward_infer_generic(shape, params, x, rows, y, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_infer_avx2(
    shape: &NetShape,
    params: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
) {
    forward_infer_generic(shape, params, x, rows, y, s)
}

#[inline(always)]
fn forward_infer_generic(
    shape: &NetShape,
    params: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
) {
    let n_layers = shape.layers.len();
    let (mut cur, mut next) = (&mut s.a, &mut s.b);
    for (l, ly) in shape.layers.iter().enumerate() {
        let w = &params[ly.w_off..ly.w_off + ly.n_in * ly.n_out];
        let b = &params[ly.b_off..ly.b_off + ly.n_out];
        let input: &[f32] = if l == 0 { x } else { &cur[..] };
        let out: &mut [f32] = if l + 1 == n_layers { &mut y[..] } else { &mut next[..] };
        linear::<false>(input, ly.n_in, w, b, ly.n_out, rows, out);
        if let Some(w0) = ly.w0 {
            for v in out[..rows * ly.n_out].iter_mut() {
                *v = sin(w0 * *v);
            }
            std::mem::swap(&mut cur, &mut next);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Training

/// Per-thread scratch for [`train_tile`].
pub struct TrainScratch {
    /// Activations: input features of layer l (l = 0 is the network input).
    acts: Vec<Vec<f32>>,
    /// w0 * cos(w0 z) for every sine layer.
    dsin: Vec<Vec<f32>>,
    y: Vec<f32>,
    g_a: Vec<f32>,
    g_b: Vec<f32>,
}

impl TrainScratch {
    pub fn new(shape: &NetShape) -> Self {
        let acts = shape.layers.iter().map(|l| vec![0.0; TILE * l.n_in]).collect();
        let dsin = shape
            .layers
            .iter()
            .filter(|l| l.w0.is_some())
            .map(|l| vec![0.0; TILE * l.n_out])
            .collect();
        let m = TILE * shape.max_dim();
        TrainScratch {
            acts,
            dsin,
            y: vec![0.0; TILE * shape.n_out()],
            g_a: vec![0.0; m],
            g_b: vec![0.0; m],
        }
    }
    /// Input feature rows of the next tile (`TILE * n_in`), to be filled by the caller.
    pub fn input_mut(&mut self) -> &mut [f32] {
        &mut self.acts[0]
    }
}

/// Forward and backward on `rows` rows whose features the caller has written with
/// [`TrainScratch::input_mut`]. `target` is `rows * n_out`. Adds the gradient of
/// `grad_scale * sum((y - target)^2)` to `grad` and returns the tile's sum of squared errors.
/// `params_t` holds, for each layer, its weight matrix transposed (`[out][in]`) at the same
/// offsets as in `params` (see [`transpose_weights`]).
pub fn train_tile(
    shape: &NetShape,
    params: &[f32],
    params_t: &[f32],
    target: &[f32],
    rows: usize,
    grad_scale: f32,
    grad: &mut [f32],
    s: &mut TrainScratch,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe {
                train_tile_avx2(shape, params, params_t, target, rows, grad_scale, grad, s)
            };
        }
    }
    train_tile_generic::<false>(shape, params, params_t, target, rows, grad_scale, grad, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn train_tile_avx2(
    shape: &NetShape,
    params: &[f32],
    params_t: &[f32],
    target: &[f32],
    rows: usize,
    grad_scale: f32,
    grad: &mut [f32],
    s: &mut TrainScratch,
) -> f64 {
    train_tile_generic::<true>(shape, params, params_t, target, rows, grad_scale, grad, s)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn train_tile_generic<const FMA: bool>(
    shape: &NetShape,
    params: &[f32],
    params_t: &[f32],
    target: &[f32],
    rows: usize,
    grad_scale: f32,
    grad: &mut [f32],
    s: &mut TrainScratch,
) -> f64 {
    let n_layers = shape.layers.len();
    // Forward, storing inputs of each layer and sine derivatives.
    for (l, ly) in shape.layers.iter().enumerate() {
        let w = &params[ly.w_off..ly.w_off + ly.n_in * ly.n_out];
        let b = &params[ly.b_off..ly.b_off + ly.n_out];
        let (before, after) = s.acts.split_at_mut(l + 1);
        let input = &before[l];
        if let Some(w0) = ly.w0 {
            let out = &mut after[0];
            linear::<FMA>(input, ly.n_in, w, b, ly.n_out, rows, out);
            let d = &mut s.dsin[l];
            for (v, dv) in out[..rows * ly.n_out].iter_mut().zip(d.iter_mut()) {
                let (sn, cs) = sincos(w0 * *v);
                *v = sn;
                *dv = w0 * cs;
            }
        } else {
            linear::<FMA>(input, ly.n_in, w, b, ly.n_out, rows, &mut s.y);
        }
    }
    // Loss and output gradient (into g_a).
    let n_out = shape.n_out();
    let mut sse = 0.0f64;
    for ((g, &yv), &t) in s.g_a[..rows * n_out].iter_mut().zip(&s.y).zip(target) {
        let e = yv - t;
        sse += (e * e) as f64;
        *g = 2.0 * grad_scale * e;
    }
    // Backward.
    for l in (0..n_layers).rev() {
        let ly = shape.layers[l];
        // g_a holds dL/d(out of layer l) (after the sine); make it dL/dz.
        if ly.w0.is_some() {
            for (g, &d) in s.g_a[..rows * ly.n_out].iter_mut().zip(&s.dsin[l]) {
                *g *= d;
            }
        }
        let dz = &s.g_a[..rows * ly.n_out];
        let input = &s.acts[l];
        let (gw, gb) = grad[ly.w_off..ly.b_off + ly.n_out].split_at_mut(ly.n_in * ly.n_out);
        for (xr, dzr) in input.chunks_exact(ly.n_in).zip(dz.chunks_exact(ly.n_out)).take(rows) {
            for (gbj, &d) in gb.iter_mut().zip(dzr) {
                *gbj += d;
            }
            for (&a, gwk) in xr.iter().zip(gw.chunks_exact_mut(ly.n_out)) {
                for (g, &d) in gwk.iter_mut().zip(dzr) {
                    *g = madd::<FMA>(a, d, *g);
                }
            }
        }
        if l > 0 {
            // dL/d(input) = dz W^T, with W^T stored [out][in].
            let wt = &params_t[ly.w_off..ly.w_off + ly.n_in * ly.n_out];
            for (dzr, o) in dz.chunks_exact(ly.n_out).zip(s.g_b.chunks_exact_mut(ly.n_in)).take(rows)
            {
                o.fill(0.0);
                for (&a, wj) in dzr.iter().zip(wt.chunks_exact(ly.n_in)) {
                    for (oj, &w) in o.iter_mut().zip(wj) {
                        *oj = madd::<FMA>(a, w, *oj);
                    }
                }
            }
            std::mem::swap(&mut s.g_a, &mut s.g_b);
        }
    }
    sse
}

/// Write each layer's weight matrix transposed (`[out][in]`) into `dst` at its own offset.
/// Biases are copied unchanged.
pub fn transpose_weights(shape: &NetShape, params: &[f32], dst: &mut [f32]) {
    for ly in &shape.layers {
        let w = &params[ly.w_off..ly.w_off + ly.n_in * ly.n_out];
        let wt = &mut dst[ly.w_off..ly.w_off + ly.n_in * ly.n_out];
        for k in 0..ly.n_in {
            for j in 0..ly.n_out {
                wt[j * ly.n_in + k] = w[k * ly.n_out + j];
            }
        }
        dst[ly.b_off..ly.b_off + ly.n_out].copy_from_slice(&params[ly.b_off..ly.b_off + ly.n_out]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -200.0f32;
        while x < 200.0 {
            let (s, c) = sincos(x);
            let xd = x as f64;
            worst = worst.max((s as f64 - xd.sin()).abs()).max((c as f64 - xd.cos()).abs());
            x += 0.0137;
        }
        assert!(worst < 1e-6, "worst error {worst}");
    }

    fn tiny_shape() -> NetShape {
        NetShape::new(&[(4, 5), (5, 6), (6, 3)], 3.0, 2.0)
    }

    /// Finite differences (in f64 via central differences on f32) against the analytic gradient.
    #[test]
    fn train_tile_gradient_matches_finite_differences() {
        let shape = tiny_shape();
        let mut rng = 12345u64;
        let mut rnd = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let params: Vec<f32> = (0..shape.n_params).map(|_| rnd()).collect();
        let rows = 7;
        let x: Vec<f32> = (0..rows * 4).map(|_| rnd()).collect();
        let t: Vec<f32> = (0..rows * 3).map(|_| rnd()).collect();
        let loss = |p: &[f32]| -> f64 {
            let mut s = InferScratch::new(&shape);
            let mut y = vec![0.0; rows * 3];
            forward_tile_infer(&shape, p, &x, rows, &mut y, &mut s);
            y.iter().zip(&t).map(|(a, b)| ((a - b) as f64).powi(2)).sum()
        };
        let mut pt = vec![0.0; shape.n_params];
        transpose_weights(&shape, &params, &mut pt);
        let mut grad = vec![0.0; shape.n_params];
        let mut s = TrainScratch::new(&shape);
        s.input_mut()[..rows * 4].copy_from_slice(&x);
        let sse = train_tile(&shape, &params, &pt, &t, rows, 1.0, &mut grad, &mut s);
        assert!((sse - loss(&params)).abs() < 1e-4 * sse.max(1.0));
        for i in 0..shape.n_params {
            let h = 1e-2f32;
            let mut p = params.clone();
            p[i] += h;
            let lp = loss(&p);
            p[i] -= 2.0 * h;
            let lm = loss(&p);
            let fd = (lp - lm) / (2.0 * h as f64);
            assert!(
                (fd - grad[i] as f64).abs() < 2e-3 + 2e-2 * fd.abs(),
                "param {i}: fd {fd} analytic {}",
                grad[i]
            );
        }
    }
}
