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

/// One `unsafe fn` per `name = "features"` pair, each the same body compiled with
/// `#[target_feature(enable = features)]` (x86_64 only), for run-time dispatch: the caller
/// checks the features with `is_x86_feature_detected!` before calling one. A pair may add
/// `; const NAME: Type = value`, a constant the body sees in that variant only.
macro_rules! simd_variants {
    (fn [] $($rest:tt)*) => {};
    (fn [$name:ident = $feat:literal $(; const $cn:ident: $ct:ty = $cv:expr)?
         $(, $n:ident = $f:literal $(; const $cn2:ident: $ct2:ty = $cv2:expr)?)* $(,)?]
        ($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name($($a: $t),*) $(-> $r)? {
            $(const $cn: $ct = $cv;)?
            $body
        }
        $crate::kernel::simd_variants!(fn [$($n = $f $(; const $cn2: $ct2 = $cv2)?),*]
            ($($a: $t),*) $(-> $r)? $body);
    };
}
pub(crate) use simd_variants;

/// Rows per tile. Activations of a tile for all layers stay in L2.
pub const TILE: usize = 64;
/// SIMD lanes the packed layout is padded to (8 f32 = one AVX register).
pub const LANES: usize = 8;

#[inline]
fn pad(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// One linear map of the network, with offsets into the flat parameter vectors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec {
    pub n_in: usize,
    pub n_out: usize,
    /// Offsets of `W` and `b` in the real (file) layout.
    pub w_off: usize,
    pub b_off: usize,
    /// `n_out` rounded up to [`LANES`]: the row stride of this layer's output.
    pub out_pad: usize,
    /// Row stride of this layer's input (`n_in` for the first layer, else `pad(n_in)`).
    pub in_stride: usize,
    /// Offsets in the packed layout: `W` as `[n_in][out_pad]`, then `b` as `[out_pad]`.
    pub pw_off: usize,
    pub pb_off: usize,
    /// Offset in the packed transposed layout: `W^T` as `[out_pad][pad(n_in)]`.
    pub pt_off: usize,
    /// SIREN frequency; `None` for the final linear layer.
    pub w0: Option<f32>,
}

/// Shape information for a whole network.
///
/// Kernels work on a *packed* copy of the parameters whose rows are zero-padded to a multiple
/// of `LANES`, so every inner loop runs on whole SIMD registers; padded outputs are
/// `sin(0) = 0` and padded weights receive zero gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct NetShape {
    pub layers: Vec<LayerSpec>,
    pub n_params: usize,
    pub n_packed: usize,
    pub n_packed_t: usize,
}

impl NetShape {
    /// Build from `(in, out)` pairs; all but the last map are sine layers with the given w0s.
    pub fn new(dims: &[(usize, usize)], w0_first: f32, w0_hidden: f32) -> NetShape {
        let mut layers = Vec::with_capacity(dims.len());
        let (mut off, mut poff, mut toff) = (0, 0, 0);
        for (l, &(n_in, n_out)) in dims.iter().enumerate() {
            let w0 = if l + 1 == dims.len() {
                None
            } else if l == 0 {
                Some(w0_first)
            } else {
                Some(w0_hidden)
            };
            let out_pad = pad(n_out);
            layers.push(LayerSpec {
                n_in,
                n_out,
                w_off: off,
                b_off: off + n_in * n_out,
                out_pad,
                in_stride: if l == 0 { n_in } else { pad(n_in) },
                pw_off: poff,
                pb_off: poff + n_in * out_pad,
                pt_off: toff,
                w0,
            });
            off += n_in * n_out + n_out;
            poff += n_in * out_pad + out_pad;
            toff += out_pad * pad(n_in);
        }
        NetShape {
            layers,
            n_params: off,
            n_packed: poff,
            n_packed_t: toff,
        }
    }
    pub fn n_out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.n_out)
    }
    /// Row stride of the per-row shift buffers of the sine layers (modulation mode): the padded
    /// width shared by all sine layers (`None` if they differ).
    pub fn shift_stride(&self) -> Option<usize> {
        let mut it = self
            .layers
            .iter()
            .filter(|l| l.w0.is_some())
            .map(|l| l.out_pad);
        let first = it.next()?;
        it.all(|o| o == first).then_some(first)
    }
    /// Number of sine layers.
    pub fn n_sine(&self) -> usize {
        self.layers.iter().filter(|l| l.w0.is_some()).count()
    }
    /// Largest padded row stride, for scratch sizing.
    pub fn max_stride(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.out_pad.max(pad(l.n_in)))
            .max()
            .unwrap_or(0)
    }

    /// Copy real-layout parameters into the packed layout (padding zeroed).
    pub fn pack(&self, real: &[f32], packed: &mut [f32]) {
        packed.fill(0.0);
        for ly in &self.layers {
            for k in 0..ly.n_in {
                let src = &real[ly.w_off + k * ly.n_out..ly.w_off + (k + 1) * ly.n_out];
                packed[ly.pw_off + k * ly.out_pad..][..ly.n_out].copy_from_slice(src);
            }
            packed[ly.pb_off..][..ly.n_out].copy_from_slice(&real[ly.b_off..][..ly.n_out]);
        }
    }

    /// Write each weight matrix transposed and padded (`[out_pad][pad(n_in)]`).
    pub fn pack_transposed(&self, real: &[f32], packed_t: &mut [f32]) {
        packed_t.fill(0.0);
        for ly in &self.layers {
            let ip = pad(ly.n_in);
            for k in 0..ly.n_in {
                for j in 0..ly.n_out {
                    packed_t[ly.pt_off + j * ip + k] = real[ly.w_off + k * ly.n_out + j];
                }
            }
        }
    }

    /// Copy a packed gradient back to the real layout (dropping the padding).
    pub fn unpack(&self, packed: &[f32], real: &mut [f32]) {
        for ly in &self.layers {
            for k in 0..ly.n_in {
                real[ly.w_off + k * ly.n_out..][..ly.n_out]
                    .copy_from_slice(&packed[ly.pw_off + k * ly.out_pad..][..ly.n_out]);
            }
            real[ly.b_off..][..ly.n_out].copy_from_slice(&packed[ly.pb_off..][..ly.n_out]);
        }
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
    let (mut s, mut c) = ([0.0], [0.0]);
    sincos_block::<1, false>(&[x], &mut s, &mut c);
    (s[0], c[0])
}

/// Elements per block of [`sincos_scaled_slice`] and [`sin_scaled_slice`]: independent
/// values whose polynomial chains are issued step by step across the block (four AVX
/// registers, two AVX-512 ones), so the CPU overlaps them.
const SIN_BLOCK: usize = 32;

/// [`sincos`] of a block of values, each step of its operation sequence issued for the whole
/// block before the next. Without `FMA` these are [`sincos`]'s operations per element, so its
/// bits; with `FMA` every product-and-sum is one fused operation (training only).
#[inline(always)]
fn sincos_block<const N: usize, const FMA: bool>(x: &[f32; N], s: &mut [f32; N], c: &mut [f32; N]) {
    let mut r = [0.0f32; N];
    let mut parity = [0u32; N];
    for i in 0..N {
        let t = madd::<FMA>(x[i], FRAC_1_PI, ROUND_MAGIC);
        let k = t - ROUND_MAGIC;
        parity[i] = t.to_bits() << 31;
        r[i] = madd::<FMA>(-k, PI_B, madd::<FMA>(-k, PI_A, x[i]));
    }
    let mut q = [0.0f32; N];
    for i in 0..N {
        q[i] = r[i] * r[i];
    }
    for i in 0..N {
        let p = madd::<FMA>(q[i], -2.505_210_8e-8, 2.755_731_7e-6);
        let p = madd::<FMA>(q[i], p, -1.984_127e-4);
        let p = madd::<FMA>(q[i], p, 8.333_333e-3);
        let p = madd::<FMA>(q[i], p, -1.666_666_7e-1);
        let sv = madd::<FMA>(r[i] * q[i], p, r[i]);
        s[i] = f32::from_bits(sv.to_bits() ^ parity[i]);
    }
    for i in 0..N {
        let p = madd::<FMA>(q[i], 2.087_675_7e-9, -2.755_731_7e-7);
        let p = madd::<FMA>(q[i], p, 2.480_158_7e-5);
        let p = madd::<FMA>(q[i], p, -1.388_888_9e-3);
        let p = madd::<FMA>(q[i], p, 4.166_666_8e-2);
        let p = madd::<FMA>(q[i], p, -0.5);
        let cv = madd::<FMA>(q[i], p, 1.0);
        c[i] = f32::from_bits(cv.to_bits() ^ parity[i]);
    }
}

/// `v[i] = sin(w0 · v[i])` and `d[i] = w0 · cos(w0 · v[i])` for every `i < v.len()` (`d` at
/// least as long), in blocks of [`SIN_BLOCK`]: the bits of [`sincos`] without `FMA`; with it
/// (the training kernel's FMA builds), within about 1e-7 of them. Blocking and FMA took a
/// 768x512 grid distortion pass from 51.0 to 44.8 ms and a fit from 124.5 to 113.6 s on one
/// thread (AMD EPYC, Zen 1; `docs/benchmarks.md`, "Kernels (criterion)").
#[inline(always)]
pub fn sincos_scaled_slice<const FMA: bool>(v: &mut [f32], d: &mut [f32], w0: f32) {
    let (vb, vr) = v.as_chunks_mut::<SIN_BLOCK>();
    let (db, dr) = d[..vb.len() * SIN_BLOCK + vr.len()].as_chunks_mut::<SIN_BLOCK>();
    for (vb, db) in vb.iter_mut().zip(db.iter_mut()) {
        let mut x = [0.0f32; SIN_BLOCK];
        for i in 0..SIN_BLOCK {
            x[i] = w0 * vb[i];
        }
        let mut c = [0.0f32; SIN_BLOCK];
        sincos_block::<SIN_BLOCK, FMA>(&x, vb, &mut c);
        for i in 0..SIN_BLOCK {
            db[i] = w0 * c[i];
        }
    }
    for (v, d) in vr.iter_mut().zip(dr) {
        let (mut sn, mut cs) = ([0.0], [0.0]);
        sincos_block::<1, FMA>(&[w0 * *v], &mut sn, &mut cs);
        *v = sn[0];
        *d = w0 * cs[0];
    }
}

/// `v[i] = sin(w0 · v[i])` for every `i`: the bits of [`sin`], in blocks of [`SIN_BLOCK`].
#[inline(always)]
pub fn sin_scaled_slice(v: &mut [f32], w0: f32) {
    let (vb, vr) = v.as_chunks_mut::<SIN_BLOCK>();
    for vb in vb.iter_mut() {
        let mut x = [0.0f32; SIN_BLOCK];
        for i in 0..SIN_BLOCK {
            x[i] = w0 * vb[i];
        }
        let mut c = [0.0f32; SIN_BLOCK];
        sincos_block::<SIN_BLOCK, false>(&x, vb, &mut c);
    }
    for v in vr.iter_mut() {
        *v = sin(w0 * *v);
    }
}

/// The training loss of one output sample `y` against its target `t` (in [-1, 1] units), and
/// half its derivative in `y`. Decoders clamp outputs to [-1, 1], so the loss is the squared
/// error of the clamped output, `(clamp(y) − t)²`, continued linearly beyond the bounds: its
/// derivative is `2 (clamp(y) − t)` everywhere. An output past the bound its target sits on
/// (a saturated colour, a transparent or opaque alpha) then costs nothing, and one past a
/// bound its target is not on is pulled back. Inside [-1, 1] this is the plain squared error.
/// On the alpha crops of kodim03/05/07/11 it lowered `MSE + λ·bpp` by 1.6 % for the image's
/// own synthesis and 6 % for the shared one (means; up to 10 %); on RGB Kodak images it is
/// neutral (`docs/benchmarks.md`, "Clamped outputs in the training loss").
#[inline(always)]
pub fn output_loss(y: f32, t: f32) -> (f32, f32) {
    let c = y.clamp(-1.0, 1.0);
    let e = c - t;
    (e * e + 2.0 * e * (y - c), e)
}

/// `e^x` with relative error below 3e-7 for x in [-87, 88] (x is clamped to that range, NaN
/// to -87), computed with a fixed sequence of IEEE-754 f32 and integer operations (no FMA, no
/// table, no libm), branch-free so that loops over it vectorise: the same bits everywhere.
/// Reduction x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6 Taylor polynomial in r, and 2^n
/// built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Not `clamp`, which keeps NaN (and would give garbage exponent bits).
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.666_666_7e-1
                    + r * (4.166_666_8e-2 + r * (8.333_333e-3 + r * 1.388_888_9e-3)))));
    // The low mantissa bits of t hold n + 2^22; 2^n has exponent field n + 127.
    let ni = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    p * f32::from_bits(ni.wrapping_add(127) << 23)
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

#[inline(always)]
fn lanes(s: &[f32]) -> &[f32; LANES] {
    lanes_n::<LANES>(s)
}

#[inline(always)]
fn lanes_n<const L: usize>(s: &[f32]) -> &[f32; L] {
    s[..L].try_into().unwrap_or(&[0.0; L])
}

/// Column-block width of the register-blocked loops for a row stride `ws` (a multiple of
/// [`LANES`]): 16 when it divides `ws` (one AVX-512 register, or two AVX ones), else 8.
/// Blocking changes which sums share a register, never the order of any sum.
#[inline(always)]
fn wide(ws: usize) -> bool {
    ws.is_multiple_of(2 * LANES)
}

/// `out[r, j] = bias[j] + sum_{k < k_n} x[r*xs + k] * w[k*ws + j]` for `j < ws`
/// (`ws` a multiple of [`LANES`]), `r < rows`; out row stride `ws`.
/// Register-blocked: 4 rows x 8 or 16 columns of accumulators; the sum over `k` runs in order, so
/// the result does not depend on the blocking.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm<const FMA: bool, const X512: bool>(
    x: &[f32],
    xs: usize,
    k_n: usize,
    w: &[f32],
    ws: usize,
    bias: Option<&[f32]>,
    rows: usize,
    out: &mut [f32],
) {
    let a = GemmArgs {
        x,
        xs,
        k_n,
        w,
        ws,
        bias,
        rows,
    };
    if wide(ws) {
        #[cfg(target_arch = "x86_64")]
        if X512 {
            // SAFETY: `X512` is only set by `train_tile_avx512` and `forward_infer_avx512`,
            // whose callers checked AVX-512F and FMA.
            let r = unsafe { gemm_rows8_avx512::<FMA>(a, out) };
            let rest = GemmArgs {
                x: &x[r * xs..],
                rows: rows - r,
                ..a
            };
            return gemm_l::<FMA, { 2 * LANES }>(rest, &mut out[r * ws..]);
        }
        gemm_l::<FMA, { 2 * LANES }>(a, out)
    } else {
        gemm_l::<FMA, LANES>(a, out)
    }
}

/// The inputs of [`gemm`].
#[derive(Clone, Copy)]
struct GemmArgs<'a> {
    x: &'a [f32],
    xs: usize,
    k_n: usize,
    w: &'a [f32],
    ws: usize,
    bias: Option<&'a [f32]>,
    rows: usize,
}

/// [`gemm`] with column blocks of `L` lanes (`L` divides `ws`).
#[inline(always)]
fn gemm_l<const FMA: bool, const L: usize>(a: GemmArgs<'_>, out: &mut [f32]) {
    let GemmArgs {
        x,
        xs,
        k_n,
        w,
        ws,
        bias,
        rows,
    } = a;
    let mut r = 0;
    while r + 4 <= rows {
        let xr: [&[f32]; 4] = std::array::from_fn(|i| &x[(r + i) * xs..(r + i) * xs + k_n]);
        for jc in (0..ws).step_by(L) {
            let init = bias.map_or([0.0; L], |b| *lanes_n::<L>(&b[jc..]));
            let mut acc = [init; 4];
            for (k, wrow) in w.chunks_exact(ws).take(k_n).enumerate() {
                let wv = lanes_n::<L>(&wrow[jc..]);
                for i in 0..4 {
                    let a = xr[i][k];
                    for l in 0..L {
                        acc[i][l] = madd::<FMA>(a, wv[l], acc[i][l]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                out[(r + i) * ws + jc..][..L].copy_from_slice(a);
            }
        }
        r += 4;
    }
    while r < rows {
        let xr = &x[r * xs..r * xs + k_n];
        for jc in (0..ws).step_by(L) {
            let mut acc = bias.map_or([0.0; L], |b| *lanes_n::<L>(&b[jc..]));
            for (&a, wrow) in xr.iter().zip(w.chunks_exact(ws)) {
                let wv = lanes_n::<L>(&wrow[jc..]);
                for l in 0..L {
                    acc[l] = madd::<FMA>(a, wv[l], acc[l]);
                }
            }
            out[r * ws + jc..][..L].copy_from_slice(&acc);
        }
        r += 1;
    }
}

/// `gw[k, j] += sum_r x[r*xs + k] * dz[r*ds + j]` for `k < k_n`, `j < ds` (rows in order).
#[inline(always)]
fn outer_acc<const FMA: bool, const X512: bool>(
    x: &[f32],
    xs: usize,
    k_n: usize,
    dz: &[f32],
    ds: usize,
    rows: usize,
    gw: &mut [f32],
) {
    // Blocks of KB x L accumulators: at most 64 values, which stay in registers.
    let mut k = 0;
    if wide(ds) {
        #[cfg(target_arch = "x86_64")]
        if FMA && X512 {
            while k + 8 <= k_n {
                // SAFETY: as in `gemm`; rows `k..k + 8` exist (`k + 8 <= k_n`).
                unsafe { outer_block8_avx512(x, xs, k, dz, ds, rows, gw) };
                k += 8;
            }
        }
        while k + 4 <= k_n {
            outer_block_l::<FMA, 4, { 2 * LANES }>(x, xs, k, dz, ds, rows, gw);
            k += 4;
        }
        while k < k_n {
            outer_block_l::<FMA, 1, { 2 * LANES }>(x, xs, k, dz, ds, rows, gw);
            k += 1;
        }
        return;
    }
    while k + 8 <= k_n {
        outer_block_l::<FMA, 8, LANES>(x, xs, k, dz, ds, rows, gw);
        k += 8;
    }
    while k + 4 <= k_n {
        outer_block_l::<FMA, 4, LANES>(x, xs, k, dz, ds, rows, gw);
        k += 4;
    }
    while k < k_n {
        outer_block_l::<FMA, 1, LANES>(x, xs, k, dz, ds, rows, gw);
        k += 1;
    }
}

/// Rows `k..k + KB` of [`outer_acc`]'s `gw`: `KB` accumulators of `L` lanes (`L` divides
/// `ds`) per column block, summed over the rows in order.
#[inline(always)]
fn outer_block_l<const FMA: bool, const KB: usize, const L: usize>(
    x: &[f32],
    xs: usize,
    k: usize,
    dz: &[f32],
    ds: usize,
    rows: usize,
    gw: &mut [f32],
) {
    for jc in (0..ds).step_by(L) {
        let mut acc: [[f32; L]; KB] =
            std::array::from_fn(|i| *lanes_n::<L>(&gw[(k + i) * ds + jc..]));
        for r in 0..rows {
            let dv = lanes_n::<L>(&dz[r * ds + jc..]);
            let xa: &[f32; KB] = x[r * xs + k..][..KB].try_into().unwrap_or(&[0.0; KB]);
            for i in 0..KB {
                for l in 0..L {
                    acc[i][l] = madd::<FMA>(xa[i], dv[l], acc[i][l]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            gw[(k + i) * ds + jc..][..L].copy_from_slice(a);
        }
    }
}

/// The 8-row blocks of [`gemm_l`] with 16-lane columns, written with AVX-512 intrinsics:
/// 8 independent accumulators per column block (auto-vectorised, 8-row blocks spilled or
/// became gathers). Each output still sums `k` in order with one FMA per term (`FMA`), or
/// one rounded product then one rounded sum (not `FMA`: the decoder's arithmetic, §8), so
/// the bits are those of [`gemm_l`]. Returns the rows done (a multiple of 8); the caller
/// does the rest.
///
/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gemm_rows8_avx512<const FMA: bool>(a: GemmArgs<'_>, out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let (x, xs, k_n, w, ws, bias, rows) = (a.x, a.xs, a.k_n, a.w, a.ws, a.bias, a.rows);
    let blocks = rows / 8;
    // Every access below is within these bounds.
    assert!(ws.is_multiple_of(16) && w.len() >= k_n * ws && bias.is_none_or(|b| b.len() >= ws));
    assert!(
        blocks == 0 || (x.len() >= (blocks * 8 - 1) * xs + k_n && out.len() >= blocks * 8 * ws)
    );
    for rb in 0..blocks {
        let r = rb * 8;
        for jc in (0..ws).step_by(16) {
            let init = match bias {
                // SAFETY: jc + 16 <= ws <= the bias length (asserted above).
                Some(b) => unsafe { _mm512_loadu_ps(b.as_ptr().add(jc)) },
                None => _mm512_setzero_ps(),
            };
            let mut acc = [init; 8];
            for k in 0..k_n {
                // SAFETY: k * ws + jc + 16 <= k_n * ws <= w.len() (asserted above).
                let wv = unsafe { _mm512_loadu_ps(w.as_ptr().add(k * ws + jc)) };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: (r + i) * xs + k < (blocks * 8 - 1) * xs + k_n <= x.len().
                    let xv = _mm512_set1_ps(unsafe { *x.as_ptr().add((r + i) * xs + k) });
                    // Separate intrinsics are never contracted into an FMA.
                    *acc = if FMA {
                        _mm512_fmadd_ps(xv, wv, *acc)
                    } else {
                        _mm512_add_ps(_mm512_mul_ps(xv, wv), *acc)
                    };
                }
            }
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: (r + i) * ws + jc + 16 <= blocks * 8 * ws <= out.len() (asserted).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add((r + i) * ws + jc), *a) };
            }
        }
    }
    blocks * 8
}

/// [`outer_block_l`] for 8 rows of `gw` and 16-lane columns, with AVX-512 intrinsics: 8
/// independent accumulators (auto-vectorised, this block size spilled or became gathers).
/// Every weight gradient still adds the rows in order with one FMA per term: the bits of
/// [`outer_block_l`].
///
/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn outer_block8_avx512(
    x: &[f32],
    xs: usize,
    k: usize,
    dz: &[f32],
    ds: usize,
    rows: usize,
    gw: &mut [f32],
) {
    use std::arch::x86_64::*;
    // Every access below is within these bounds.
    assert!(ds.is_multiple_of(16) && gw.len() >= (k + 8) * ds);
    assert!(rows == 0 || (dz.len() >= rows * ds && x.len() >= (rows - 1) * xs + k + 8));
    for jc in (0..ds).step_by(16) {
        let mut acc: [__m512; 8] = std::array::from_fn(|i| {
            // SAFETY: (k + i) * ds + jc + 16 <= (k + 8) * ds <= gw.len() (asserted above).
            unsafe { _mm512_loadu_ps(gw.as_ptr().add((k + i) * ds + jc)) }
        });
        for r in 0..rows {
            // SAFETY: r * ds + jc + 16 <= rows * ds <= dz.len() (asserted above).
            let dv = unsafe { _mm512_loadu_ps(dz.as_ptr().add(r * ds + jc)) };
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r * xs + k + i < (rows - 1) * xs + k + 8 <= x.len() (asserted above).
                let xv = unsafe { *x.as_ptr().add(r * xs + k + i) };
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(xv), dv, *acc);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_ps(gw.as_mut_ptr().add((k + i) * ds + jc), *a) };
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
        let n = TILE * shape.max_stride();
        InferScratch {
            a: vec![0.0; n],
            b: vec![0.0; n],
        }
    }
}

/// Evaluate up to `TILE` rows of input features `x` (`rows * n_in`) with packed parameters
/// into `y` (`rows * n_out`). Deterministic on every machine (see module docs).
pub fn forward_tile_infer(
    shape: &NetShape,
    packed: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
) {
    forward_tile_infer_shifted(shape, packed, x, rows, y, s, None)
}

/// As [`forward_tile_infer`], with per-row shifts added to the pre-activations of the sine
/// layers (modulation mode): `shift` is laid out `[sine layer][row][stride]` with
/// `stride = shape.shift_stride()` and `TILE` rows per layer; the pre-activation of unit `j` of
/// sine layer `l` at row `r` is `(x W + b)[j] + shift[(l * TILE + r) * stride + j]`.
pub fn forward_tile_infer_shifted(
    shape: &NetShape,
    packed: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
    shift: Option<&[f32]>,
) {
    let io = InferIo {
        from: 0,
        shift,
        capture: None,
    };
    forward_infer_dispatch(shape, packed, x, rows, y, s, io)
}

/// Where an inference pass starts and what else it reads or keeps.
struct InferIo<'a> {
    /// The first layer run; the input `x` is that layer's input (stride `in_stride`).
    from: usize,
    /// See [`forward_tile_infer_shifted`] (only with `from == 0`).
    shift: Option<&'a [f32]>,
    /// `capture[l]` receives the input of every layer `l > from` (`rows * in_stride`).
    capture: Option<&'a mut [Vec<f32>]>,
}

/// As [`forward_tile_infer`], from layer `from` on: `x` is that layer's input (`rows *
/// in_stride`, as [`forward_tile_infer_capture`] keeps it). The outputs are bit-identical to a
/// whole pass whose earlier layers produced `x`: the same operations in the same order.
pub fn forward_tile_infer_from(
    shape: &NetShape,
    packed: &[f32],
    from: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
) {
    let io = InferIo {
        from,
        shift: None,
        capture: None,
    };
    forward_infer_dispatch(shape, packed, x, rows, y, s, io)
}

/// As [`forward_tile_infer`], keeping the input of every layer `l >= 1` in `capture[l]`
/// (`rows * in_stride` values; `capture` has one buffer per layer, each at least that long).
pub fn forward_tile_infer_capture(
    shape: &NetShape,
    packed: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
    capture: &mut [Vec<f32>],
) {
    let io = InferIo {
        from: 0,
        shift: None,
        capture: Some(capture),
    };
    forward_infer_dispatch(shape, packed, x, rows, y, s, io)
}

fn forward_infer_dispatch(
    shape: &NetShape,
    packed: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
    io: InferIo<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX-512F and FMA, checked just above.
            unsafe { forward_infer_avx512(shape, packed, x, rows, y, s, io) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { forward_infer_avx2(shape, packed, x, rows, y, s, io) };
            return;
        }
    }
    forward_infer_generic::<false>(shape, packed, x, rows, y, s, io)
}

// The inference pass compiled for AVX2, and for AVX-512 with the 8-row AVX-512 blocks of
// [`gemm`]. Neither uses an FMA (every product and sum is rounded on its own, as on the
// portable path, so the bits do not depend on the path); AVX-512's variant enables the FMA
// feature only because those blocks' function also serves training.
simd_variants! {
    fn [
        forward_infer_avx2 = "avx2"; const X512: bool = false,
        forward_infer_avx512 = "avx512f,fma"; const X512: bool = true,
    ](
        shape: &NetShape,
        packed: &[f32],
        x: &[f32],
        rows: usize,
        y: &mut [f32],
        s: &mut InferScratch,
        io: InferIo<'_>,
    ) {
        forward_infer_generic::<X512>(shape, packed, x, rows, y, s, io)
    }
}

#[inline(always)]
fn forward_infer_generic<const X512: bool>(
    shape: &NetShape,
    packed: &[f32],
    x: &[f32],
    rows: usize,
    y: &mut [f32],
    s: &mut InferScratch,
    io: InferIo<'_>,
) {
    let InferIo {
        from,
        shift,
        mut capture,
    } = io;
    let (mut cur, mut next) = (&mut s.a, &mut s.b);
    for (l, ly) in shape.layers.iter().enumerate().skip(from) {
        let w = &packed[ly.pw_off..ly.pb_off];
        let b = &packed[ly.pb_off..ly.pb_off + ly.out_pad];
        let input: &[f32] = if l == from { x } else { &cur[..] };
        if let Some(c) = capture.as_deref_mut().filter(|_| l > from) {
            let n = rows * ly.in_stride;
            c[l][..n].copy_from_slice(&input[..n]);
        }
        gemm::<false, X512>(
            input,
            ly.in_stride,
            ly.n_in,
            w,
            ly.out_pad,
            Some(b),
            rows,
            next,
        );
        if let Some(w0) = ly.w0 {
            if let Some(sh) = shift {
                let off = l * TILE * ly.out_pad;
                for (v, &d) in next[..rows * ly.out_pad].iter_mut().zip(&sh[off..]) {
                    *v += d;
                }
            }
            sin_scaled_slice(&mut next[..rows * ly.out_pad], w0);
        } else {
            for (yr, o) in y
                .chunks_exact_mut(ly.n_out)
                .zip(next.chunks_exact(ly.out_pad))
                .take(rows)
            {
                yr.copy_from_slice(&o[..ly.n_out]);
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
}

// ---------------------------------------------------------------------------------------------
// Training

/// Per-thread scratch for [`train_tile`].
pub struct TrainScratch {
    /// Activations: input rows of layer l (l = 0 is the network input, stride `n_in`).
    acts: Vec<Vec<f32>>,
    /// w0 * cos(w0 z) for every sine layer.
    dsin: Vec<Vec<f32>>,
    y: Vec<f32>,
    g_a: Vec<f32>,
    g_b: Vec<f32>,
}

impl TrainScratch {
    pub fn new(shape: &NetShape) -> Self {
        let acts = shape
            .layers
            .iter()
            .map(|l| vec![0.0; TILE * l.in_stride])
            .collect();
        let dsin = shape
            .layers
            .iter()
            .filter(|l| l.w0.is_some())
            .map(|l| vec![0.0; TILE * l.out_pad])
            .collect();
        let m = TILE * shape.max_stride();
        let out_pad = shape.layers.last().map_or(0, |l| l.out_pad);
        TrainScratch {
            acts,
            dsin,
            y: vec![0.0; TILE * out_pad],
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
/// `TrainScratch::input_mut`. `target` is `rows * n_out`. Adds the gradient of
/// `grad_scale * sum((y - target)^2)` to `grad` (packed layout) and returns the tile's sum of
/// squared errors. `packed_t` comes from [`NetShape::pack_transposed`].
#[allow(clippy::too_many_arguments)]
pub fn train_tile(
    shape: &NetShape,
    packed: &[f32],
    packed_t: &[f32],
    target: &[f32],
    rows: usize,
    grad_scale: f32,
    grad: &mut [f32],
    s: &mut TrainScratch,
) -> f64 {
    let io = TileIo {
        target,
        weight: None,
        rows,
        grad_scale,
        grad: Some(grad),
        shift: None,
        gshift: None,
        ginput: None,
        grad_from: 0,
    };
    train_tile_io(shape, packed, packed_t, io, s)
}

/// Inputs and outputs of one training tile beyond the network: targets (and optional weights
/// of their squared errors), the weight gradient
/// (skipped when `None`), per-row sine-layer shifts (layout of [`forward_tile_infer_shifted`])
/// and their gradient (same layout; written, not accumulated), and the gradient of the loss
/// with respect to the network's input rows (`rows` rows of stride `pad(n_in)`, padding
/// lanes 0; written, not accumulated).
pub struct TileIo<'a> {
    pub target: &'a [f32],
    /// Per-sample weights of the squared errors (layout of `target`); `None`: all 1.
    pub weight: Option<&'a [f32]>,
    pub rows: usize,
    pub grad_scale: f32,
    pub grad: Option<&'a mut [f32]>,
    pub shift: Option<&'a [f32]>,
    pub gshift: Option<&'a mut [f32]>,
    pub ginput: Option<&'a mut [f32]>,
    /// The first layer whose weights and biases get a gradient in `grad` (0: all of them); the
    /// layers before it are skipped (their part of `grad` is left as it is).
    pub grad_from: usize,
}

/// Row stride of [`TileIo::ginput`]: the network's input size rounded up to [`LANES`].
pub fn input_grad_stride(shape: &NetShape) -> usize {
    shape.layers.first().map_or(0, |l| pad(l.n_in))
}

/// Forward and backward of one tile with the options of [`TileIo`]; returns the tile's sum
/// of squared errors.
pub fn train_tile_io(
    shape: &NetShape,
    packed: &[f32],
    packed_t: &[f32],
    io: TileIo<'_>,
    s: &mut TrainScratch,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX-512F/VL, AVX2 and FMA, checked just above.
            return unsafe { train_tile_avx512(shape, packed, packed_t, io, s) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { train_tile_avx2(shape, packed, packed_t, io, s) };
        }
    }
    train_tile_generic::<false, false>(shape, packed, packed_t, io, s)
}

// `train_tile_generic` with FMA, built for each instruction set; with AVX-512 its 16-lane
// blocks use the intrinsics kernels below.
simd_variants! {
    fn [
        train_tile_avx2 = "avx2,fma"; const X512: bool = false,
        train_tile_avx512 = "avx512f,avx512vl,avx2,fma"; const X512: bool = true,
    ](
        shape: &NetShape,
        packed: &[f32],
        packed_t: &[f32],
        io: TileIo<'_>,
        s: &mut TrainScratch,
    ) -> f64 {
        train_tile_generic::<true, X512>(shape, packed, packed_t, io, s)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn train_tile_generic<const FMA: bool, const X512: bool>(
    shape: &NetShape,
    packed: &[f32],
    packed_t: &[f32],
    io: TileIo<'_>,
    s: &mut TrainScratch,
) -> f64 {
    let TileIo {
        target,
        weight,
        rows,
        grad_scale,
        mut grad,
        shift,
        mut gshift,
        ginput,
        grad_from,
    } = io;
    let n_layers = shape.layers.len();
    // Forward, storing the input of each layer and the sine derivatives.
    for (l, ly) in shape.layers.iter().enumerate() {
        let w = &packed[ly.pw_off..ly.pb_off];
        let b = &packed[ly.pb_off..ly.pb_off + ly.out_pad];
        let (before, after) = s.acts.split_at_mut(l + 1);
        let input = &before[l];
        if let Some(w0) = ly.w0 {
            let out = &mut after[0];
            gemm::<FMA, X512>(
                input,
                ly.in_stride,
                ly.n_in,
                w,
                ly.out_pad,
                Some(b),
                rows,
                out,
            );
            if let Some(sh) = shift {
                let off = l * TILE * ly.out_pad;
                for (v, &d) in out[..rows * ly.out_pad].iter_mut().zip(&sh[off..]) {
                    *v += d;
                }
            }
            sincos_scaled_slice::<FMA>(&mut out[..rows * ly.out_pad], &mut s.dsin[l], w0);
        } else {
            gemm::<FMA, X512>(
                input,
                ly.in_stride,
                ly.n_in,
                w,
                ly.out_pad,
                Some(b),
                rows,
                &mut s.y,
            );
        }
    }
    // Loss and output gradient (into g_a, stride out_pad, padding zero).
    let last = shape.layers[n_layers - 1];
    let mut sse = 0.0f64;
    for (r, ((g, yr), t)) in s
        .g_a
        .chunks_exact_mut(last.out_pad)
        .zip(s.y.chunks_exact(last.out_pad))
        .zip(target.chunks_exact(last.n_out))
        .take(rows)
        .enumerate()
    {
        g.fill(0.0);
        match weight {
            None => {
                for ((gj, &yv), &tv) in g.iter_mut().zip(yr).zip(t) {
                    let (l, e) = output_loss(yv, tv);
                    sse += l as f64;
                    *gj = 2.0 * grad_scale * e;
                }
            }
            Some(wt) => {
                let wr = &wt[r * last.n_out..(r + 1) * last.n_out];
                for (((gj, &yv), &tv), &wv) in g.iter_mut().zip(yr).zip(t).zip(wr) {
                    let (l, e) = output_loss(yv, tv);
                    sse += (wv * l) as f64;
                    *gj = 2.0 * grad_scale * wv * e;
                }
            }
        }
    }
    // Backward.
    for l in (0..n_layers).rev() {
        let ly = shape.layers[l];
        let op = ly.out_pad;
        if ly.w0.is_some() {
            for (g, &d) in s.g_a[..rows * op].iter_mut().zip(&s.dsin[l]) {
                *g *= d;
            }
        }
        let dz = &s.g_a[..rows * op];
        if ly.w0.is_some() {
            if let Some(gs) = gshift.as_deref_mut() {
                let off = l * TILE * op;
                gs[off..off + rows * op].copy_from_slice(dz);
            }
        }
        if let Some(grad) = grad.as_deref_mut().filter(|_| l >= grad_from) {
            let (gw, gb) = grad[ly.pw_off..ly.pb_off + op].split_at_mut(ly.n_in * op);
            // Summed over the rows in registers, one block of lanes at a time (rows in order).
            for jc in (0..op).step_by(LANES) {
                let mut acc = *lanes(&gb[jc..]);
                for dzr in dz.chunks_exact(op) {
                    let dv = lanes(&dzr[jc..]);
                    for l in 0..LANES {
                        acc[l] += dv[l];
                    }
                }
                gb[jc..jc + LANES].copy_from_slice(&acc);
            }
            outer_acc::<FMA, X512>(&s.acts[l], ly.in_stride, ly.n_in, dz, op, rows, gw);
        }
        let ip = pad(ly.n_in);
        let wt = &packed_t[ly.pt_off..ly.pt_off + op * ip];
        if l > 0 {
            gemm::<FMA, X512>(dz, op, ly.n_out, wt, ip, None, rows, &mut s.g_b);
            std::mem::swap(&mut s.g_a, &mut s.g_b);
        } else if let Some(gi) = ginput {
            gemm::<FMA, X512>(dz, op, ly.n_out, wt, ip, None, rows, &mut gi[..rows * ip]);
            break;
        }
    }
    sse
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-0.5, 0.5) from a linear congruential generator.
    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut rng = seed;
        move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let e = f64::from(exp(x));
            let r = f64::from(x).exp();
            worst = worst.max((e - r).abs() / r);
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1e6), exp(88.0));
        assert_eq!(exp(-1e6), exp(-87.0));
        assert_eq!(exp(f32::NAN), exp(-87.0));
    }

    /// The blocked slices give [`sincos`]'s bits without FMA (the decoder's `sin` too), and
    /// the FMA variant stays within 2e-6 of them (both outputs scaled by w0 = 2), for lengths
    /// that are and are not multiples of the block.
    #[test]
    fn blocked_sincos_matches_the_scalar_one() {
        let mut rnd = lcg(7);
        for n in [0, 1, 31, 32, 33, 100] {
            let x: Vec<f32> = (0..n).map(|_| 40.0 * rnd()).collect();
            let (mut v, mut d) = (x.clone(), vec![0.0; n + 3]);
            sincos_scaled_slice::<false>(&mut v, &mut d, 2.0);
            let mut vs = x.clone();
            sin_scaled_slice(&mut vs, 2.0);
            let (mut vf, mut df) = (x.clone(), vec![0.0; n]);
            sincos_scaled_slice::<true>(&mut vf, &mut df, 2.0);
            for i in 0..n {
                let (sn, cs) = sincos(2.0 * x[i]);
                assert_eq!(v[i].to_bits(), sn.to_bits(), "{n} {i}");
                assert_eq!(d[i].to_bits(), (2.0 * cs).to_bits(), "{n} {i}");
                assert_eq!(vs[i].to_bits(), sin(2.0 * x[i]).to_bits(), "{n} {i}");
                assert!((vf[i] - sn).abs() < 2e-6 && (df[i] - 2.0 * cs).abs() < 4e-6);
            }
            assert!(d[n..].iter().all(|&e| e == 0.0), "writes past v's length");
        }
    }

    #[test]
    fn sincos_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -200.0f32;
        while x < 200.0 {
            let (s, c) = sincos(x);
            let xd = x as f64;
            worst = worst
                .max((s as f64 - xd.sin()).abs())
                .max((c as f64 - xd.cos()).abs());
            x += 0.0137;
        }
        assert!(worst < 1e-6, "worst error {worst}");
    }

    fn tiny_shape() -> NetShape {
        NetShape::new(&[(4, 5), (5, 11), (11, 3)], 3.0, 2.0)
    }

    /// The output loss: the squared error inside [-1, 1]; past the bound its target sits on,
    /// free; past another, linear with the slope at the bound; its derivative continuous.
    #[test]
    fn output_loss_clamps_and_continues_linearly() {
        assert_eq!(
            output_loss(0.3, 0.1),
            ((0.3f32 - 0.1) * (0.3 - 0.1), 0.3 - 0.1)
        );
        assert_eq!(output_loss(1.5, 1.0), (0.0, 0.0));
        assert_eq!(output_loss(-7.0, -1.0), (0.0, 0.0));
        assert_eq!(output_loss(1.5, 0.5), (0.25 + 2.0 * 0.5 * 0.5, 0.5));
        // e = -1, 0.5 past the bound: e² + 2·e·(y − c) = 1 + 2·(−1)·(−0.5) = 2.
        assert_eq!(output_loss(-1.5, 0.0), (2.0, -1.0));
        for (y, t) in [(0.999f32, 0.2f32), (1.001, 0.2), (-1.0, 0.7), (2.0, -0.3)] {
            let h = 1e-3f32;
            let fd = (output_loss(y + h, t).0 - output_loss(y - h, t).0) / (2.0 * h);
            assert!(
                (fd - 2.0 * output_loss(y, t).1).abs() < 1e-2,
                "{y} {t}: {fd}"
            );
        }
    }

    /// Finite differences (in f64 via central differences on f32) against the analytic gradient.
    #[test]
    fn train_tile_gradient_matches_finite_differences() {
        check_gradient(tiny_shape(), 7);
        check_gradient(NetShape::new(&[(2, 9), (9, 9), (9, 3)], 3.0, 2.0), TILE);
    }

    /// The shift gradient of [`train_tile_io`] against finite differences of the shifted
    /// inference, and the weight gradient unchanged by skipping nothing.
    #[test]
    fn shift_gradient_matches_finite_differences() {
        let shape = NetShape::new(&[(4, 5), (5, 5), (5, 3)], 3.0, 2.0);
        let st = shape.shift_stride().unwrap();
        let rows = 6;
        let n_in = 4;
        let mut rnd = lcg(999);
        let params: Vec<f32> = (0..shape.n_params).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * n_in).map(|_| rnd()).collect();
        let t: Vec<f32> = (0..rows * 3).map(|_| rnd()).collect();
        let mut shift = vec![0.0f32; shape.n_sine() * TILE * st];
        for l in 0..shape.n_sine() {
            for r in 0..rows {
                for j in 0..5 {
                    shift[(l * TILE + r) * st + j] = rnd();
                }
            }
        }
        let mut pk = vec![0.0; shape.n_packed];
        shape.pack(&params, &mut pk);
        let loss = |sh: &[f32]| -> f64 {
            let mut s = InferScratch::new(&shape);
            let mut y = vec![0.0; rows * 3];
            forward_tile_infer_shifted(&shape, &pk, &x, rows, &mut y, &mut s, Some(sh));
            y.iter()
                .zip(&t)
                .map(|(&a, &b)| f64::from(output_loss(a, b).0))
                .sum()
        };
        let mut pt = vec![0.0; shape.n_packed_t];
        shape.pack_transposed(&params, &mut pt);
        let mut gs = vec![0.0f32; shift.len()];
        let mut s = TrainScratch::new(&shape);
        s.input_mut()[..rows * n_in].copy_from_slice(&x);
        let io = TileIo {
            target: &t,
            weight: None,
            rows,
            grad_scale: 1.0,
            grad: None,
            shift: Some(&shift),
            gshift: Some(&mut gs),
            ginput: None,
            grad_from: 0,
        };
        let sse = train_tile_io(&shape, &pk, &pt, io, &mut s);
        assert!((sse - loss(&shift)).abs() < 1e-4 * sse.max(1.0));
        for l in 0..shape.n_sine() {
            for r in 0..rows {
                for j in 0..5 {
                    let i = (l * TILE + r) * st + j;
                    let h = 1e-2f32;
                    let mut p = shift.clone();
                    p[i] += h;
                    let lp = loss(&p);
                    p[i] -= 2.0 * h;
                    let fd = (lp - loss(&p)) / (2.0 * h as f64);
                    assert!(
                        (fd - gs[i] as f64).abs() < 2e-3 + 2e-2 * fd.abs(),
                        "shift {l},{r},{j}: fd {fd} analytic {}",
                        gs[i]
                    );
                }
            }
        }
    }

    /// The input gradient of [`train_tile_io`] against finite differences of the inference.
    #[test]
    fn input_gradient_matches_finite_differences() {
        let shape = NetShape::new(&[(5, 9), (9, 9), (9, 3)], 2.0, 2.0);
        let (rows, n_in, ip) = (7, 5, input_grad_stride(&shape));
        assert_eq!(ip, 8);
        let mut rnd = lcg(4242);
        let params: Vec<f32> = (0..shape.n_params).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * n_in).map(|_| rnd()).collect();
        let t: Vec<f32> = (0..rows * 3).map(|_| rnd()).collect();
        let mut pk = vec![0.0; shape.n_packed];
        shape.pack(&params, &mut pk);
        let mut pt = vec![0.0; shape.n_packed_t];
        shape.pack_transposed(&params, &mut pt);
        let loss = |x: &[f32]| -> f64 {
            let mut s = InferScratch::new(&shape);
            let mut y = vec![0.0; rows * 3];
            forward_tile_infer(&shape, &pk, x, rows, &mut y, &mut s);
            y.iter()
                .zip(&t)
                .map(|(&a, &b)| f64::from(output_loss(a, b).0))
                .sum()
        };
        let mut gi = vec![f32::NAN; TILE * ip];
        let mut s = TrainScratch::new(&shape);
        s.input_mut()[..rows * n_in].copy_from_slice(&x);
        let io = TileIo {
            target: &t,
            weight: None,
            rows,
            grad_scale: 1.0,
            grad: None,
            shift: None,
            gshift: None,
            ginput: Some(&mut gi),
            grad_from: 0,
        };
        train_tile_io(&shape, &pk, &pt, io, &mut s);
        for r in 0..rows {
            for k in n_in..ip {
                assert_eq!(gi[r * ip + k], 0.0, "padding lane {k} of row {r}");
            }
            for k in 0..n_in {
                let h = 1e-2f32;
                let mut p = x.clone();
                p[r * n_in + k] += h;
                let lp = loss(&p);
                p[r * n_in + k] -= 2.0 * h;
                let fd = (lp - loss(&p)) / (2.0 * h as f64);
                let a = gi[r * ip + k] as f64;
                assert!(
                    (fd - a).abs() < 2e-3 + 2e-2 * fd.abs(),
                    "input {r},{k}: fd {fd} analytic {a}"
                );
            }
        }
    }

    /// `grad_from` leaves the earlier layers' part of the gradient untouched and gives the
    /// later layers' the bits of the full pass, with the same loss and input gradient.
    #[test]
    fn grad_from_skips_only_the_earlier_layers() {
        let shape = NetShape::new(&[(5, 9), (9, 9), (9, 3)], 2.0, 2.0);
        let rows = 13;
        let mut rnd = lcg(7);
        let params: Vec<f32> = (0..shape.n_params).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * 5).map(|_| rnd()).collect();
        let t: Vec<f32> = (0..rows * 3).map(|_| rnd()).collect();
        let mut pk = vec![0.0; shape.n_packed];
        shape.pack(&params, &mut pk);
        let mut pt = vec![0.0; shape.n_packed_t];
        shape.pack_transposed(&params, &mut pt);
        let ip = input_grad_stride(&shape);
        let run = |from: usize| {
            let mut g = vec![7.0f32; shape.n_packed];
            let mut gi = vec![0.0f32; rows * ip];
            let mut s = TrainScratch::new(&shape);
            s.input_mut()[..rows * 5].copy_from_slice(&x);
            let io = TileIo {
                target: &t,
                weight: None,
                rows,
                grad_scale: 0.5,
                grad: Some(&mut g),
                shift: None,
                gshift: None,
                ginput: Some(&mut gi),
                grad_from: from,
            };
            let sse = train_tile_io(&shape, &pk, &pt, io, &mut s);
            (sse, g, gi)
        };
        let all = run(0);
        for from in 1..3 {
            let part = run(from);
            assert_eq!(part.0.to_bits(), all.0.to_bits());
            assert_eq!(part.2, all.2, "input gradient");
            let split = shape.layers[from].pw_off;
            assert!(part.1[..split].iter().all(|&v| v == 7.0), "from {from}");
            assert_eq!(part.1[split..], all.1[split..], "from {from}");
            assert!(all.1[..split].iter().any(|&v| v != 7.0));
        }
    }

    /// The run-time selected SIMD paths (AVX-512, AVX2 or none) give the same bits as the
    /// portable code for training (with FMA) and inference (without), on layer widths that
    /// take the 16-lane blocks (16, 32), the 8-lane ones (8, 24) and padded ones (3, 11).
    #[test]
    fn simd_paths_match_the_portable_code_bit_for_bit() {
        let shape = NetShape::new(&[(8, 16), (16, 32), (32, 24), (24, 11), (11, 3)], 30.0, 2.0);
        let rows = 61;
        let mut rnd = lcg(99);
        let params: Vec<f32> = (0..shape.n_params).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * 8).map(|_| rnd()).collect();
        let t: Vec<f32> = (0..rows * 3).map(|_| rnd()).collect();
        let mut pk = vec![0.0; shape.n_packed];
        shape.pack(&params, &mut pk);
        let mut pt = vec![0.0; shape.n_packed_t];
        shape.pack_transposed(&params, &mut pt);
        let train = |portable: bool| {
            let mut g = vec![0.0f32; shape.n_packed];
            let mut gi = vec![0.0f32; rows * 8];
            let mut s = TrainScratch::new(&shape);
            s.input_mut()[..rows * 8].copy_from_slice(&x);
            let io = TileIo {
                target: &t,
                weight: None,
                rows,
                grad_scale: 0.7,
                grad: Some(&mut g),
                shift: None,
                gshift: None,
                ginput: Some(&mut gi),
                grad_from: 0,
            };
            let sse = if portable {
                train_tile_generic::<true, false>(&shape, &pk, &pt, io, &mut s)
            } else {
                train_tile_io(&shape, &pk, &pt, io, &mut s)
            };
            (
                sse.to_bits(),
                g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                gi.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(train(false), train(true));
        let infer = |portable: bool| {
            let mut y = vec![0.0f32; rows * 3];
            let mut s = InferScratch::new(&shape);
            if portable {
                forward_infer_generic::<false>(
                    &shape,
                    &pk,
                    &x,
                    rows,
                    &mut y,
                    &mut s,
                    InferIo {
                        from: 0,
                        shift: None,
                        capture: None,
                    },
                );
            } else {
                forward_tile_infer(&shape, &pk, &x, rows, &mut y, &mut s);
            }
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(infer(false), infer(true));
    }

    fn check_gradient(shape: NetShape, rows: usize) {
        let n_in = shape.layers[0].n_in;
        let mut rnd = lcg(12345);
        let params: Vec<f32> = (0..shape.n_params).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * n_in).map(|_| rnd()).collect();
        let t: Vec<f32> = (0..rows * 3).map(|_| rnd()).collect();
        let loss = |p: &[f32]| -> f64 {
            let mut s = InferScratch::new(&shape);
            let mut y = vec![0.0; rows * 3];
            let mut pk = vec![0.0; shape.n_packed];
            shape.pack(p, &mut pk);
            forward_tile_infer(&shape, &pk, &x, rows, &mut y, &mut s);
            y.iter()
                .zip(&t)
                .map(|(&a, &b)| f64::from(output_loss(a, b).0))
                .sum()
        };
        let mut pk = vec![0.0; shape.n_packed];
        shape.pack(&params, &mut pk);
        let mut pt = vec![0.0; shape.n_packed_t];
        shape.pack_transposed(&params, &mut pt);
        let mut gp = vec![0.0; shape.n_packed];
        let mut s = TrainScratch::new(&shape);
        s.input_mut()[..rows * n_in].copy_from_slice(&x);
        let sse = train_tile(&shape, &pk, &pt, &t, rows, 1.0, &mut gp, &mut s);
        let mut grad = vec![0.0; shape.n_params];
        shape.unpack(&gp, &mut grad);
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
