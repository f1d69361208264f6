//! Latent-pyramid SIREN ("grid mode", codec-spec §13): the image is a pyramid of
//! single-channel latent grids at strides 1, 2, 4, … 2^(L-1); every pixel reads one value from
//! each grid by bilinear interpolation, and a small per-image SIREN (the header's `Arch` with
//! `coord_dims` = L inputs) maps those L values to the pixel's colour. The encoder fits latents
//! and network jointly under a rate–distortion objective `MSE + λ·bpp`, the rate taken from a
//! Laplace model of the latents (scale learned per level and §5.9 context), first through C3's
//! soft-rounded noise proxy (or plain additive uniform noise), then with straight-through
//! rounding (the recipe of Cool-chic and C3, with sine activations).
//!
//! The network runs on the fused kernels of the `kernel` module (the decoder's inference path,
//! and the training path with the gradient of the first layer's pre-activations, from which
//! the latent gradient follows).
//!
//! Determinism: work is split in fixed bands of rows whatever the thread count; each band's
//! weight gradient goes to its own buffer and the buffers are summed in band order; latent
//! gradients are scattered level by level in a fixed order.

use crate::entropy::{GridContexts, GRID_PRED_TAPS, MAX_GRID_CONTEXTS};
use crate::format::{grid_level_dims, Arch, Upsampling, MAX_GRID_LEVELS};
use crate::kernel::{self, InferScratch, NetShape, TileIo, TrainScratch, TILE};
use crate::model;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows per unit of parallel work (fixed, so results do not depend on the thread count).
pub const BAND: usize = 8;

/// Geometry of the latent pyramid: `(w_l, h_l, offset)` of each level in the flat latent
/// vector (level-major, each level row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pyramid {
    pub width: u32,
    pub height: u32,
    pub levels: Vec<(usize, usize, usize)>,
    pub n_latents: usize,
}

impl Pyramid {
    pub fn new(width: u32, height: u32, n_levels: u8) -> Self {
        let mut levels = Vec::new();
        let mut off = 0;
        for (w, h) in grid_level_dims(width, height, n_levels) {
            let (w, h) = (w as usize, h as usize);
            levels.push((w, h, off));
            off += w * h;
        }
        Pyramid {
            width,
            height,
            levels,
            n_latents: off,
        }
    }
    pub fn n_levels(&self) -> usize {
        self.levels.len()
    }
}

/// Bilinear taps along one axis (§13.5 step 1): output sample `i` reads grid values `i0`, `i1`
/// with weights `1 - f`, `f`.
#[derive(Debug, Clone)]
pub struct Taps {
    pub i0: Vec<u32>,
    pub i1: Vec<u32>,
    pub f: Vec<f32>,
}

impl Taps {
    /// Whether output sample `i` reads grid value `i` alone (weight 1): level 0 rendered at
    /// the coded size. Features and scatter then reduce to copies.
    pub fn is_identity(&self) -> bool {
        self.f.iter().all(|&f| f == 0.0)
            && self.i0.iter().enumerate().all(|(i, &j)| j as usize == i)
    }
}

impl Taps {
    /// Axis coded with `n` samples, rendered with `n_out`, level `level` of `n_grid` values.
    /// Value `j` sits at coded coordinate `(j + 1/2) 2^level - 1/2`; output sample `i` at coded
    /// coordinate `(i + 1/2) n / n_out - 1/2`; positions outside the first and last value are
    /// clamped. Exact integer arithmetic, then one rounding of the fraction.
    pub fn new(n: u32, n_out: u32, n_grid: usize, level: usize) -> Self {
        let s = 1u64 << level;
        let (n, n_out) = (u64::from(n), u64::from(n_out.max(1)));
        let den = 2 * n_out * s;
        let off = n_out * s;
        let mut t = Taps {
            i0: Vec::with_capacity(n_out as usize),
            i1: Vec::with_capacity(n_out as usize),
            f: Vec::with_capacity(n_out as usize),
        };
        let last = n_grid.saturating_sub(1) as u64;
        for i in 0..n_out {
            let num = (2 * i + 1) * n;
            let (i0, i1, f) = if num <= off {
                (0, 0, 0.0)
            } else {
                let d = num - off;
                let j = d / den;
                if j >= last {
                    (last, last, 0.0)
                } else {
                    (j, j + 1, (d % den) as f32 / den as f32)
                }
            };
            t.i0.push(i0 as u32);
            t.i1.push(i1 as u32);
            t.f.push(f);
        }
        t
    }
}

/// Taps of every level along both axes, for one output size.
pub struct Sampler {
    pub pyr: Pyramid,
    pub out_w: usize,
    pub out_h: usize,
    tx: Vec<Taps>,
    ty: Vec<Taps>,
    /// Per level: both axes' taps are the identity.
    ident: Vec<bool>,
    /// With B-spline upsampling (§13.5 step 2b): per level, the x and the y taps.
    cubic: Option<(Vec<Taps4>, Vec<Taps4>)>,
}

/// Four taps per output sample along one axis (§13.5 step 2b, B-spline upsampling): the
/// values `idx` (clamped to the level) and their weights `w`.
#[derive(Debug, Clone)]
pub struct Taps4 {
    pub idx: Vec<[u32; 4]>,
    pub w: Vec<[f32; 4]>,
}

impl Taps4 {
    /// From an axis's bilinear taps (§13.5 step 1: `j0 = i0` and `t = f`): values `j0 − 1 ..=
    /// j0 + 2` clamped to `0 ..= n_grid − 1`, uniform cubic B-spline weights of `t` in binary32,
    /// in the order written (no fused multiply-add).
    pub fn bspline(t: &Taps, n_grid: usize) -> Taps4 {
        let last = n_grid.saturating_sub(1) as i64;
        let idx =
            t.i0.iter()
                .map(|&j| {
                    let c = |k: i64| (i64::from(j) + k).clamp(0, last) as u32;
                    [c(-1), c(0), c(1), c(2)]
                })
                .collect();
        let w = t.f.iter().map(|&f| bspline_weights(f)).collect();
        Taps4 { idx, w }
    }
}

/// §13.5 step 2b: the uniform cubic B-spline weights of fraction `t`, `u = 1 − t`:
/// `u³/6, (3t³ − 6t² + 4)/6, (−3t³ + 3t² + 3t + 1)/6, t³/6`, each operation rounded to binary32
/// in the order written.
#[inline]
pub fn bspline_weights(t: f32) -> [f32; 4] {
    let u = 1.0 - t;
    let t2 = t * t;
    let t3 = t2 * t;
    [
        u * u * u / 6.0,
        (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
        (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
        t3 / 6.0,
    ]
}

impl Sampler {
    pub fn new(pyr: Pyramid, out_w: u32, out_h: u32) -> Self {
        let exps: Vec<usize> = (0..pyr.n_levels()).collect();
        Self::with_strides(pyr, out_w, out_h, &exps)
    }

    /// [`Sampler::new`] with the given upsampling (§13.5).
    pub fn with_upsampling(pyr: Pyramid, out_w: u32, out_h: u32, up: Upsampling) -> Self {
        Self::new(pyr, out_w, out_h).upsampled(up)
    }

    /// This sampler with the given upsampling (§13.5): B-spline taps are derived from the
    /// bilinear ones of every level.
    pub fn upsampled(mut self, up: Upsampling) -> Self {
        self.cubic = (up == Upsampling::BSpline).then(|| {
            let levels = &self.pyr.levels;
            let cx = self
                .tx
                .iter()
                .zip(levels)
                .map(|(t, l)| Taps4::bspline(t, l.0));
            let cy = self
                .ty
                .iter()
                .zip(levels)
                .map(|(t, l)| Taps4::bspline(t, l.1));
            (cx.collect(), cy.collect())
        });
        self
    }

    /// As [`Sampler::new`], with level `l` at stride `2^exps[l]` of the pyramid's own size
    /// instead of `2^l` (the encoder's half-resolution view of a pyramid).
    pub fn with_strides(pyr: Pyramid, out_w: u32, out_h: u32, exps: &[usize]) -> Self {
        let tx: Vec<Taps> = pyr
            .levels
            .iter()
            .zip(exps)
            .map(|(&(wl, _, _), &e)| Taps::new(pyr.width, out_w, wl, e))
            .collect();
        let ty: Vec<Taps> = pyr
            .levels
            .iter()
            .zip(exps)
            .map(|(&(_, hl, _), &e)| Taps::new(pyr.height, out_h, hl, e))
            .collect();
        let ident = tx
            .iter()
            .zip(&ty)
            .map(|(a, b)| a.is_identity() && b.is_identity())
            .collect();
        Sampler {
            pyr,
            out_w: out_w as usize,
            out_h: out_h as usize,
            tx,
            ty,
            ident,
            cubic: None,
        }
    }

    /// Level `l`'s share of output row `y`: for a level with identity taps, copies its row
    /// into `feat` (every weight is 0 or 1, so the bilinear formula gives the value itself) and
    /// returns `None`; else the two latent rows that output row reads, and their y weight.
    fn level_rows<'a>(
        &self,
        lat: &'a [f32],
        l: usize,
        y: usize,
        feat: &mut [f32],
    ) -> Option<(&'a [f32], &'a [f32], f32)> {
        let (wl, _, off) = self.pyr.levels[l];
        if self.ident[l] {
            let row = &lat[off + y * wl..][..self.out_w];
            let n_l = self.pyr.n_levels();
            for (d, &v) in feat.chunks_exact_mut(n_l).zip(row) {
                d[l] = v;
            }
            return None;
        }
        let ty = &self.ty[l];
        let r0 = &lat[off + ty.i0[y] as usize * wl..][..wl];
        let r1 = &lat[off + ty.i1[y] as usize * wl..][..wl];
        Some((r0, r1, ty.f[y]))
    }

    /// Features of output row `y` into `feat`, laid out `[x][L]` (the network's input rows).
    /// §13.5 step 2, operation order normative.
    pub fn row_features(&self, lat: &[f32], y: usize, feat: &mut [f32]) {
        let n_l = self.pyr.n_levels();
        if let Some((cx, cy)) = &self.cubic {
            // §13.5 step 2b: each of the four rows interpolated along x, then those along y.
            for l in 0..n_l {
                let (wl, _, off) = self.pyr.levels[l];
                let (iy, wy) = (&cy[l].idx[y], &cy[l].w[y]);
                let rows = iy.map(|r| &lat[off + r as usize * wl..][..wl]);
                for (x, (ix, wx)) in cx[l].idx.iter().zip(&cx[l].w).enumerate() {
                    let h = rows.map(|r| {
                        wx[0] * r[ix[0] as usize]
                            + wx[1] * r[ix[1] as usize]
                            + wx[2] * r[ix[2] as usize]
                            + wx[3] * r[ix[3] as usize]
                    });
                    feat[x * n_l + l] = wy[0] * h[0] + wy[1] * h[1] + wy[2] * h[2] + wy[3] * h[3];
                }
            }
            return;
        }
        for l in 0..n_l {
            let Some((r0, r1, fy)) = self.level_rows(lat, l, y, feat) else {
                continue;
            };
            let tx = &self.tx[l];
            for x in 0..self.out_w {
                let (a, b, fx) = (tx.i0[x] as usize, tx.i1[x] as usize, tx.f[x]);
                let top = r0[a] + fx * (r0[b] - r0[a]);
                let bot = r1[a] + fx * (r1[b] - r1[a]);
                feat[x * n_l + l] = top + fy * (bot - top);
            }
        }
    }

    /// [`Sampler::row_features`] for the fit, the same values (`==`): each level's two latent
    /// rows are interpolated along x into lane `l` of `st`'s rows only when the output row
    /// reads other latent rows than the row before (so once per `2^l` rows at level `l`, a
    /// row interpolated before being carried over), then all levels are interpolated along y
    /// in one vectorised pass. `st` must be fresh or last used on the same `lat` (any row).
    pub fn row_features_fit(&self, lat: &[f32], y: usize, feat: &mut [f32], st: &mut FitRows) {
        self.row_lanes_fit(lat, y, st);
        st.features(0, self.out_w, feat);
    }

    /// The first half of [`Sampler::row_features_fit`]: readies `st` for output row `y`, whose
    /// features [`FitRows::features`] then gives, a run of columns at a time.
    pub fn row_lanes_fit(&self, lat: &[f32], y: usize, st: &mut FitRows) {
        let n_l = self.pyr.n_levels();
        st.prepare(self.out_w * n_l, n_l);
        if self.cubic.is_some() {
            // B-spline taps (§13.5 step 2b): the row's features in both lanes with y weight 0,
            // so that the lane pass reads them unchanged.
            self.row_features(lat, y, &mut st.a);
            st.b.copy_from_slice(&st.a);
            st.wy.fill(0.0);
            st.rows.fill(None);
            return;
        }
        for l in 0..n_l {
            let (wl, _, off) = self.pyr.levels[l];
            if self.ident[l] {
                let row = &lat[off + y * wl..][..self.out_w];
                for (d, &v) in st.a.chunks_exact_mut(n_l).zip(row) {
                    d[l] = v;
                }
                st.wy[l] = 0.0;
                continue;
            }
            let ty = &self.ty[l];
            let pair = (ty.i0[y], ty.i1[y]);
            if st.rows[l] != Some(pair) {
                let tx = &self.tx[l];
                let lerp_x = |r: u32, dst: &mut [f32]| {
                    let r = &lat[off + r as usize * wl..][..wl];
                    for (x, d) in dst.chunks_exact_mut(n_l).enumerate() {
                        let (a, b, fx) = (tx.i0[x] as usize, tx.i1[x] as usize, tx.f[x]);
                        d[l] = r[a] + fx * (r[b] - r[a]);
                    }
                };
                match st.rows[l] {
                    Some((_, prev_b)) if prev_b == pair.0 => {
                        for (d, s) in st.a.chunks_exact_mut(n_l).zip(st.b.chunks_exact(n_l)) {
                            d[l] = s[l];
                        }
                    }
                    _ => lerp_x(pair.0, &mut st.a),
                }
                lerp_x(pair.1, &mut st.b);
                st.rows[l] = Some(pair);
            }
            st.wy[l] = ty.f[y];
        }
    }

    /// [`Sampler::row_lanes_fit`] for the columns `xs` of a one-row output only (`out_h` = 1,
    /// so every level has one latent row and y weight 0): `st` then holds those columns, from
    /// `xs.start` on, for [`FitRows::features`] (columns counted from `xs.start`).
    fn row_lanes_span(&self, lat: &[f32], xs: std::ops::Range<usize>, st: &mut FitRows) {
        debug_assert_eq!(self.out_h, 1);
        let n_l = self.pyr.n_levels();
        st.prepare(xs.len() * n_l, n_l);
        st.rows.fill(None);
        for l in 0..n_l {
            let (wl, _, off) = self.pyr.levels[l];
            let row = &lat[off..off + wl];
            let lanes = st.a.chunks_exact_mut(n_l);
            if self.ident[l] {
                for (d, &v) in lanes.zip(&row[xs.clone()]) {
                    d[l] = v;
                }
            } else {
                let tx = &self.tx[l];
                for (d, x) in lanes.zip(xs.clone()) {
                    let (a, b, fx) = (tx.i0[x] as usize, tx.i1[x] as usize, tx.f[x]);
                    d[l] = row[a] + fx * (row[b] - row[a]);
                }
            }
            st.wy[l] = 0.0;
        }
    }

    /// The adjoint of [`Sampler::row_lanes_span`]: per level, the first latent the columns
    /// `xs` read and the sums of their feature gradients `g_feat` (`[x][L]` from `xs.start`)
    /// into the latents from there on.
    fn span_adjoint(&self, g_feat: &[f32], xs: std::ops::Range<usize>) -> SpanSums {
        let n_l = self.pyr.n_levels();
        (0..n_l)
            .map(|l| {
                if self.ident[l] {
                    let g = g_feat.chunks_exact(n_l).map(|d| d[l]).collect();
                    return (xs.start, g);
                }
                let tx = &self.tx[l];
                let first = tx.i0[xs.start] as usize;
                let last = tx.i1[xs.end - 1] as usize;
                let mut g = vec![0.0f32; last + 1 - first];
                for (d, x) in g_feat.chunks_exact(n_l).zip(xs.clone()) {
                    let (a, b, fx) = (tx.i0[x] as usize, tx.i1[x] as usize, tx.f[x]);
                    g[a - first] += (1.0 - fx) * d[l];
                    g[b - first] += fx * d[l];
                }
                (first, g)
            })
            .collect()
    }

    /// Adjoint of [`Sampler::row_features`] with B-spline upsampling over all rows (`g_feat`
    /// is `[y][x][L]`; writes every latent of `g_lat`): per level (levels in parallel), each
    /// output row summed along x into one row of sums, which is added into its four latent
    /// rows; rows in order, so the result does not depend on the thread count.
    fn bspline_scatter(&self, g_feat: &[f32], g_lat: &mut [f32]) {
        let Some((cx, cy)) = self.cubic.as_ref() else {
            return;
        };
        let n_l = self.pyr.n_levels();
        let w = self.out_w;
        let parts: Vec<Vec<f32>> = (0..n_l)
            .into_par_iter()
            .map(|l| {
                let (wl, hl, _) = self.pyr.levels[l];
                let mut g = vec![0.0f32; wl * hl];
                let mut s = vec![0.0f32; wl];
                for y in 0..self.out_h {
                    s.fill(0.0);
                    let row = &g_feat[y * w * n_l..][..w * n_l];
                    for x in 0..w {
                        let v = row[x * n_l + l];
                        let (i, ww) = (&cx[l].idx[x], &cx[l].w[x]);
                        for k in 0..4 {
                            s[i[k] as usize] += ww[k] * v;
                        }
                    }
                    for k in 0..4 {
                        let wy = cy[l].w[y][k];
                        if wy == 0.0 {
                            continue;
                        }
                        let r = &mut g[cy[l].idx[y][k] as usize * wl..][..wl];
                        for (d, &v) in r.iter_mut().zip(&s) {
                            *d += wy * v;
                        }
                    }
                }
                g
            })
            .collect();
        g_lat.fill(0.0);
        for (l, g) in parts.into_iter().enumerate() {
            let (_, _, off) = self.pyr.levels[l];
            g_lat[off..off + g.len()].copy_from_slice(&g);
        }
    }

    /// Adjoint of [`Sampler::row_features`] over all rows: `g_feat` is `[y][x][L]`; writes
    /// `g_lat`. Computed as the fit does it: each band of [`BAND`] rows' share separately, then
    /// the shares added in band order.
    pub fn scatter(&self, g_feat: &[f32], g_lat: &mut [f32]) {
        if self.cubic.is_some() {
            return self.bspline_scatter(g_feat, g_lat);
        }
        let row = self.out_w * self.pyr.n_levels();
        let bands: Vec<BandAdjoint> = g_feat
            .par_chunks(BAND * row)
            .enumerate()
            .map(|(b, g)| self.band_adjoint(g, b * BAND))
            .collect();
        self.merge_adjoint(&bands, g_lat);
    }

    /// One band's share of the adjoint of [`Sampler::row_features`]: `g_feat` holds the
    /// feature gradients of the output rows from `y0` on (`[y][x][L]`). Separable, y first:
    /// every output row is added, weighted by its two y weights per level, into two rows of
    /// `[x][L]` sums in one vectorised pass; level `l`'s lane of those is summed along x into
    /// its two latent rows only when the next output row reads other latent rows (or at the
    /// band's end), the second sum carried over when it is the next row's first latent row.
    /// Per level, the result covers only the latent rows the band reads.
    fn band_adjoint(&self, g_feat: &[f32], y0: usize) -> BandAdjoint {
        let w = self.out_w;
        let n_l = self.pyr.n_levels();
        let n_rows = g_feat.len() / (w * n_l);
        let mut parts: Vec<(usize, Vec<f32>)> = Vec::with_capacity(n_l);
        if n_rows == 0 {
            return BandAdjoint { parts };
        }
        for (l, &(wl, _, _)) in self.pyr.levels.iter().enumerate() {
            if self.ident[l] {
                let mut g = vec![0.0f32; n_rows * wl];
                for (d, src) in g.chunks_exact_mut(wl).zip(g_feat.chunks_exact(w * n_l)) {
                    for (d, s) in d.iter_mut().zip(src.chunks_exact(n_l)) {
                        *d = s[l];
                    }
                }
                parts.push((y0, g));
            } else {
                let ty = &self.ty[l];
                let first = ty.i0[y0] as usize;
                let last = ty.i1[y0 + n_rows - 1] as usize;
                parts.push((first, vec![0.0f32; (last + 1 - first) * wl]));
            }
        }
        let mut st = FitRows::default();
        st.prepare(w * n_l, n_l);
        st.a.fill(0.0);
        st.b.fill(0.0);
        let mut w0 = vec![0.0f32; n_l];
        // Sums level `l`'s lane of `st` along x into its rows `rows` of the band's part;
        // `carry` moves the second lane into the first instead of summing it.
        let flush = |st: &mut FitRows, parts: &mut [(usize, Vec<f32>)], l: usize, carry: bool| {
            let Some((ra, rb)) = st.rows[l] else {
                return;
            };
            let (wl, tx) = (self.pyr.levels[l].0, &self.tx[l]);
            let (first, g) = &mut parts[l];
            let mut lane_x = |src: &mut [f32], r: u32| {
                let g = &mut g[(r as usize - *first) * wl..][..wl];
                // Runs of output columns that read the same two values, summed in registers.
                let mut x = 0;
                while x < w {
                    let (a, b) = (tx.i0[x], tx.i1[x]);
                    let (mut sa, mut sb) = (0.0f32, 0.0f32);
                    while x < w && tx.i0[x] == a && tx.i1[x] == b {
                        let (v, fx) = (std::mem::take(&mut src[x * n_l + l]), tx.f[x]);
                        sa += v * (1.0 - fx);
                        sb += v * fx;
                        x += 1;
                    }
                    g[a as usize] += sa;
                    g[b as usize] += sb;
                }
            };
            lane_x(&mut st.a, ra);
            if carry {
                for (d, s) in st.a.chunks_exact_mut(n_l).zip(st.b.chunks_exact_mut(n_l)) {
                    d[l] = std::mem::take(&mut s[l]);
                }
            } else {
                lane_x(&mut st.b, rb);
            }
        };
        for (r, src) in g_feat.chunks_exact(w * n_l).enumerate() {
            let y = y0 + r;
            for (l, w0) in w0.iter_mut().enumerate() {
                if self.ident[l] {
                    (*w0, st.wy[l]) = (0.0, 0.0);
                    continue;
                }
                let ty = &self.ty[l];
                let pair = (ty.i0[y], ty.i1[y]);
                if st.rows[l] != Some(pair) {
                    let carry = st.rows[l].is_some_and(|(_, rb)| rb == pair.0);
                    flush(&mut st, &mut parts, l, carry);
                    st.rows[l] = Some(pair);
                }
                (*w0, st.wy[l]) = (1.0 - ty.f[y], ty.f[y]);
            }
            lane_pass(LanePass::Axpy2 {
                s0: &mut st.a,
                s1: &mut st.b,
                src,
                w0: &w0,
                w1: &st.wy,
            });
        }
        for l in 0..n_l {
            flush(&mut st, &mut parts, l, false);
        }
        BandAdjoint { parts }
    }

    /// Sums band shares (in band order, whatever the thread count) into `g_lat` (every
    /// latent written; levels in parallel).
    fn merge_adjoint(&self, bands: &[BandAdjoint], g_lat: &mut [f32]) {
        // Levels in memory order (a view may list them in another order and leave gaps,
        // which get 0).
        let n_l = self.pyr.n_levels();
        let mut order: Vec<usize> = (0..n_l).collect();
        order.sort_by_key(|&l| self.pyr.levels[l].2);
        let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(n_l);
        let mut rest = g_lat;
        let mut pos = 0;
        for &l in &order {
            let (wl, hl, off) = self.pyr.levels[l];
            let (gap, r) = rest.split_at_mut(off - pos);
            gap.fill(0.0);
            let (a, b) = r.split_at_mut(wl * hl);
            parts.push((l, a));
            rest = b;
            pos = off + wl * hl;
        }
        rest.fill(0.0);
        // Each level in runs of MERGE_CHUNK entries (level 0 holds three quarters of the
        // latents: one task per level left a thread idle), each entry the sum of the bands'
        // values in band order, as one task per level added them.
        let runs: Vec<(usize, usize, &mut [f32])> = parts
            .into_iter()
            .flat_map(|(l, g)| {
                g.chunks_mut(MERGE_CHUNK)
                    .enumerate()
                    .map(move |(i, c)| (l, i * MERGE_CHUNK, c))
            })
            .collect();
        runs.into_par_iter().for_each(|(l, start, g)| {
            g.fill(0.0);
            let wl = self.pyr.levels[l].0;
            let end = start + g.len();
            for band in bands {
                let (first, src) = &band.parts[l];
                let s0 = first * wl;
                let (lo, hi) = (s0.max(start), (s0 + src.len()).min(end));
                if lo < hi {
                    for (d, s) in g[lo - start..hi - start]
                        .iter_mut()
                        .zip(&src[lo - s0..hi - s0])
                    {
                        *d += s;
                    }
                }
            }
        });
    }
}

/// A run of columns' share of a one-row output's latent gradient
/// ([`Sampler::span_adjoint`]): per level, the first latent it touches and the sums from there.
type SpanSums = Vec<(usize, Vec<f32>)>;

/// A band's share of the latent gradient ([`Sampler::band_adjoint`]): per level, the first
/// latent row it touches and the sums over those rows.
struct BandAdjoint {
    parts: Vec<(usize, Vec<f32>)>,
}

/// Latent entries per parallel task of [`Sampler::merge_adjoint`].
const MERGE_CHUNK: usize = 1 << 15;

/// Per-band state of the fit's separable sampling ([`Sampler::row_features_fit`] and the
/// adjoint): two `[x][L]` rows whose lane `l` holds level `l`'s data for the latent rows
/// `rows[l]` (x-interpolated latent rows going forward, y-weighted sums going back), and the
/// current y weights.
#[derive(Debug, Default)]
pub struct FitRows {
    a: Vec<f32>,
    b: Vec<f32>,
    rows: Vec<Option<(u32, u32)>>,
    wy: Vec<f32>,
}

impl FitRows {
    /// Features (`[x][L]`) of the `n` output columns from `x0` of the row readied by
    /// [`Sampler::row_lanes_fit`] into `out[..n * L]`.
    pub fn features(&self, x0: usize, n: usize, out: &mut [f32]) {
        let n_l = self.wy.len();
        let r = x0 * n_l..(x0 + n) * n_l;
        lane_pass(LanePass::Lerp {
            a: &self.a[r.clone()],
            b: &self.b[r],
            wy: &self.wy,
            out: &mut out[..n * n_l],
        });
    }

    /// Sizes the rows for `len` values and `n_l` levels; forgets the rows held if the sizes
    /// change.
    fn prepare(&mut self, len: usize, n_l: usize) {
        if self.a.len() != len || self.rows.len() != n_l {
            self.a = vec![0.0; len];
            self.b = vec![0.0; len];
            self.rows = vec![None; n_l];
            self.wy = vec![0.0; n_l];
        }
    }
}

/// The vectorised y passes of the fit's sampling, on `[x][L]` rows with per-level weights.
enum LanePass<'a> {
    /// `out = a + wy * (b - a)` (§13.5 step 2's y interpolation).
    Lerp {
        a: &'a [f32],
        b: &'a [f32],
        wy: &'a [f32],
        out: &'a mut [f32],
    },
    /// `s0 += w0 * src`, `s1 += w1 * src`.
    Axpy2 {
        s0: &'a mut [f32],
        s1: &'a mut [f32],
        src: &'a [f32],
        w0: &'a [f32],
        w1: &'a [f32],
    },
}

impl<'a> LanePass<'a> {
    /// The same pass on its values from `k` on.
    fn from(self, k: usize) -> Self {
        match self {
            LanePass::Lerp { a, b, wy, out } => LanePass::Lerp {
                a: &a[k..],
                b: &b[k..],
                wy,
                out: &mut out[k..],
            },
            LanePass::Axpy2 {
                s0,
                s1,
                src,
                w0,
                w1,
            } => LanePass::Axpy2 {
                s0: &mut s0[k..],
                s1: &mut s1[k..],
                src: &src[k..],
                w0,
                w1,
            },
        }
    }
}

/// Runs a [`LanePass`]: with AVX-512F or AVX (chosen at run time) on whole blocks of 16
/// values, the rest (or everything, without them) in portable code. No FMA, so every path gives
/// the same bits.
fn lane_pass(mut p: LanePass<'_>) {
    let done = lane_pass_simd(&mut p);
    lane_pass_portable(p.from(done), done);
}

/// The SIMD part of [`lane_pass`]: the values it computed (a multiple of 16, from the start).
fn lane_pass_simd(p: &mut LanePass<'_>) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let wts = match p {
            LanePass::Lerp { wy, .. } => wy,
            LanePass::Axpy2 { w0, .. } => w0,
        };
        if (1..=usize::from(MAX_GRID_LEVELS)).contains(&wts.len()) {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                return unsafe { lane_pass_avx512(p) };
            }
            if std::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU supports AVX, checked just above.
                return unsafe { lane_pass_avx(p) };
            }
        }
    }
    let _ = p;
    0
}

/// Longest [`LanePattern`]: lcm(L, 16) for at most 16 levels L.
#[cfg(target_arch = "x86_64")]
const PATTERN_MAX: usize = 240;

/// The per-level weights of a `[x][L]` row repeated over lcm(L, 16) values (a multiple of
/// 16), so that the weights of the values from any multiple `i` of 8 start at `i % len`.
#[cfg(target_arch = "x86_64")]
struct LanePattern {
    vals: [f32; PATTERN_MAX],
    len: usize,
}

#[cfg(target_arch = "x86_64")]
impl LanePattern {
    /// `wts`: the weights of 1 ..= 16 levels.
    fn new(wts: &[f32]) -> Self {
        let n = wts.len();
        let (mut a, mut b) = (n, 16);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        let len = n / a * 16;
        let mut vals = [0.0; PATTERN_MAX];
        for (j, v) in vals[..len].iter_mut().enumerate() {
            *v = wts[j % n];
        }
        LanePattern { vals, len }
    }

    /// The weights from value `i` on (`i` a multiple of 8; at least 8 of them).
    fn at(&self, i: usize) -> *const f32 {
        self.vals[i % self.len..].as_ptr()
    }
}

/// [`lane_pass_simd`] with AVX-512F intrinsics (written out: auto-vectorised, the 16-value
/// blocks became gathers and scatters across blocks).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lane_pass_avx512(p: &mut LanePass<'_>) -> usize {
    use std::arch::x86_64::*;
    match p {
        LanePass::Lerp { a, b, wy, out } => {
            let n = out.len().min(a.len()).min(b.len());
            let pat = LanePattern::new(wy);
            let k = n / 16 * 16;
            for i in (0..k).step_by(16) {
                // SAFETY: i + 16 <= n, within all three slices; the pattern has 16 values
                // from `at(i)` (its length is a multiple of 16).
                unsafe {
                    let pv = _mm512_loadu_ps(pat.at(i));
                    let av = _mm512_loadu_ps(a.as_ptr().add(i));
                    let bv = _mm512_loadu_ps(b.as_ptr().add(i));
                    let r = _mm512_add_ps(av, _mm512_mul_ps(pv, _mm512_sub_ps(bv, av)));
                    _mm512_storeu_ps(out.as_mut_ptr().add(i), r);
                }
            }
            k
        }
        LanePass::Axpy2 {
            s0,
            s1,
            src,
            w0,
            w1,
        } => {
            let n = src.len().min(s0.len()).min(s1.len());
            let (q0, q1) = (LanePattern::new(w0), LanePattern::new(w1));
            let k = n / 16 * 16;
            for i in (0..k).step_by(16) {
                // SAFETY: i + 16 <= n, within all three slices; 16 pattern values from `at(i)`.
                unsafe {
                    let (p0, p1) = (_mm512_loadu_ps(q0.at(i)), _mm512_loadu_ps(q1.at(i)));
                    let v = _mm512_loadu_ps(src.as_ptr().add(i));
                    let x0 =
                        _mm512_add_ps(_mm512_loadu_ps(s0.as_ptr().add(i)), _mm512_mul_ps(p0, v));
                    let x1 =
                        _mm512_add_ps(_mm512_loadu_ps(s1.as_ptr().add(i)), _mm512_mul_ps(p1, v));
                    _mm512_storeu_ps(s0.as_mut_ptr().add(i), x0);
                    _mm512_storeu_ps(s1.as_mut_ptr().add(i), x1);
                }
            }
            k
        }
    }
}

/// [`lane_pass_simd`] with AVX intrinsics, 8 values at a time (over whole blocks of 16, as
/// the AVX-512 code, so that both leave the same tail).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn lane_pass_avx(p: &mut LanePass<'_>) -> usize {
    use std::arch::x86_64::*;
    match p {
        LanePass::Lerp { a, b, wy, out } => {
            let n = out.len().min(a.len()).min(b.len());
            let pat = LanePattern::new(wy);
            let k = n / 16 * 16;
            for i in (0..k).step_by(8) {
                // SAFETY: i + 8 <= n, within all three slices; 8 pattern values from `at(i)`.
                unsafe {
                    let pv = _mm256_loadu_ps(pat.at(i));
                    let av = _mm256_loadu_ps(a.as_ptr().add(i));
                    let bv = _mm256_loadu_ps(b.as_ptr().add(i));
                    let d = _mm256_sub_ps(bv, av);
                    let r = _mm256_add_ps(av, _mm256_mul_ps(pv, d));
                    _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
                }
            }
            k
        }
        LanePass::Axpy2 {
            s0,
            s1,
            src,
            w0,
            w1,
        } => {
            let n = src.len().min(s0.len()).min(s1.len());
            let (q0, q1) = (LanePattern::new(w0), LanePattern::new(w1));
            let k = n / 16 * 16;
            for i in (0..k).step_by(8) {
                // SAFETY: i + 8 <= n, within all three slices; 8 pattern values from `at(i)`.
                unsafe {
                    let (p0, p1) = (_mm256_loadu_ps(q0.at(i)), _mm256_loadu_ps(q1.at(i)));
                    let v = _mm256_loadu_ps(src.as_ptr().add(i));
                    let x0 =
                        _mm256_add_ps(_mm256_loadu_ps(s0.as_ptr().add(i)), _mm256_mul_ps(p0, v));
                    let x1 =
                        _mm256_add_ps(_mm256_loadu_ps(s1.as_ptr().add(i)), _mm256_mul_ps(p1, v));
                    _mm256_storeu_ps(s0.as_mut_ptr().add(i), x0);
                    _mm256_storeu_ps(s1.as_mut_ptr().add(i), x1);
                }
            }
            k
        }
    }
}

/// [`lane_pass`] in portable code, on values that start at value `from` of their `[x][L]` row
/// (a tail of the SIMD passes), so that value `i` takes level `(from + i) % L`'s weight.
fn lane_pass_portable(p: LanePass<'_>, from: usize) {
    match p {
        LanePass::Lerp { a, b, wy, out } => {
            let n = wy.len();
            for (i, ((o, &a), &b)) in out.iter_mut().zip(a).zip(b).enumerate() {
                *o = a + wy[(from + i) % n] * (b - a);
            }
        }
        LanePass::Axpy2 {
            s0,
            s1,
            src,
            w0,
            w1,
        } => {
            let n = w0.len();
            for (i, ((a, b), &v)) in s0.iter_mut().zip(s1.iter_mut()).zip(src).enumerate() {
                *a += w0[(from + i) % n] * v;
                *b += w1[(from + i) % n] * v;
            }
        }
    }
}

/// Renders the network `arch`/`params` on the latents `lat` (dequantized) at the sampler's
/// output size: 8-bit interleaved samples (§13.5, §8.1). Bit-exact on every machine.
pub fn render(arch: &Arch, params: &[f32], lat: &[f32], sm: &Sampler) -> Vec<u8> {
    render_with(arch, params, lat, sm, model::to_u8)
}

/// The network's outputs of [`render`] before the 8-bit mapping (§13.5 step 3 without §8.1;
/// audio grid segments map them to samples, §14.4).
pub fn render_values(arch: &Arch, params: &[f32], lat: &[f32], sm: &Sampler) -> Vec<f32> {
    render_with(arch, params, lat, sm, |v| v)
}

fn render_with<T: Copy + Default + Send>(
    arch: &Arch,
    params: &[f32],
    lat: &[f32],
    sm: &Sampler,
    map: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    let shape = model::shape_of(arch);
    let mut packed = vec![0.0f32; shape.n_packed];
    shape.pack(params, &mut packed);
    let c = shape.n_out();
    let n_l = sm.pyr.n_levels();
    let w = sm.out_w;
    let mut out = vec![T::default(); w * sm.out_h * c];
    out.par_chunks_mut(w * c).enumerate().for_each_init(
        || {
            (
                InferScratch::new(&shape),
                vec![0.0f32; w * n_l],
                vec![0.0f32; TILE * c],
            )
        },
        |(scratch, feat, y), (row, dst)| {
            sm.row_features(lat, row, feat);
            let mut x0 = 0;
            while x0 < w {
                let rows = TILE.min(w - x0);
                kernel::forward_tile_infer(
                    &shape,
                    &packed,
                    &feat[x0 * n_l..(x0 + rows) * n_l],
                    rows,
                    y,
                    scratch,
                );
                for (d, &v) in dst[x0 * c..(x0 + rows) * c].iter_mut().zip(y.iter()) {
                    *d = map(v);
                }
                x0 += rows;
            }
        },
    );
    out
}

/// Packed weights of the synthesis network for the training kernels.
pub struct Packed {
    pub shape: NetShape,
    w: Vec<f32>,
    wt: Vec<f32>,
}

impl Packed {
    pub fn new(arch: &Arch, params: &[f32]) -> Packed {
        let shape = model::shape_of(arch);
        let mut w = vec![0.0; shape.n_packed];
        let mut wt = vec![0.0; shape.n_packed_t];
        shape.pack(params, &mut w);
        shape.pack_transposed(params, &mut wt);
        Packed { shape, w, wt }
    }
}

/// What a fit's distortion compares the synthesis with: the target samples (interleaved, in
/// [-1, 1]) and, optionally, a weight per sample of its squared error (same layout; the
/// encoder of an image with alpha weights colours by the pixel's opacity squared). A plain
/// slice converts into an unweighted target.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub values: &'a [f32],
    pub weights: Option<&'a [f32]>,
}

impl<'a> From<&'a [f32]> for Target<'a> {
    fn from(values: &'a [f32]) -> Self {
        Target {
            values,
            weights: None,
        }
    }
}

impl<'a> From<&'a Vec<f32>> for Target<'a> {
    fn from(values: &'a Vec<f32>) -> Self {
        Target::from(values.as_slice())
    }
}

/// The weights of an image target with alpha (`c` channels, alpha last, samples in [-1, 1]):
/// each colour sample's squared error weighted by its pixel's opacity squared, `((a + 1) /
/// 2)^2`, alpha's by 1. This is the error of the colours premultiplied by alpha (the metric of
/// images with alpha, `metrics::mse_samples_in`) where the fitted alpha is the target's: hidden
/// colours cost nothing and translucent ones in proportion. `None` for `c` other than 2 or 4.
pub fn alpha_weights(target: &[f32], c: usize) -> Option<Vec<f32>> {
    if !matches!(c, 2 | 4) {
        return None;
    }
    let mut w = vec![1.0f32; target.len()];
    for (wp, tp) in w.chunks_exact_mut(c).zip(target.chunks_exact(c)) {
        let a = ((tp[c - 1] + 1.0) * 0.5).clamp(0.0, 1.0);
        wp[..c - 1].fill(a * a);
    }
    Some(w)
}

/// Forward + backward of the distortion over the whole image at the coded size. `target` is
/// interleaved in [-1, 1]; the loss is the mean squared error in [0, 1] units (a quarter of
/// the [-1, 1] one; each squared error weighted by `target`'s weights, if any). Returns
/// `(loss, gradient of the parameters (real layout), latent gradient)`.
pub fn distortion_grad<'t>(
    params: &[f32],
    pk: &Packed,
    sm: &Sampler,
    lat: &[f32],
    target: impl Into<Target<'t>>,
    g_feat: &mut Vec<f32>,
) -> (f64, Vec<f32>, Vec<f32>) {
    distortion_grad_with(params, pk, sm, lat, target, g_feat, Some(0))
}

/// [`distortion_grad`] with the parameters' gradient only for the layers `grad_from..` (the
/// others' entries are 0), or none at all (returned empty) when `grad_from` is `None`: the fit
/// of a shared synthesis (§13.8) needs only the latents' and at most the output layer's.
pub fn distortion_grad_with<'t>(
    params: &[f32],
    pk: &Packed,
    sm: &Sampler,
    lat: &[f32],
    target: impl Into<Target<'t>>,
    g_feat: &mut Vec<f32>,
    grad_from: Option<usize>,
) -> (f64, Vec<f32>, Vec<f32>) {
    let mut g_lat = Vec::new();
    let (sse, g_params) =
        distortion_grad_into(params, pk, sm, lat, target, g_feat, grad_from, &mut g_lat);
    (sse, g_params, g_lat)
}

/// [`distortion_grad_with`] writing the latent gradient into `g_lat` (resized to the latent
/// count; every entry overwritten), so that a fit reuses one buffer across its steps: a fresh
/// 2 MB zeroed vector per step of a 768x512 fit cost a serial `memset` and page faults, about
/// 5 % of a step on two threads (stop 57).
#[allow(clippy::too_many_arguments)]
pub(crate) fn distortion_grad_into<'t>(
    params: &[f32],
    pk: &Packed,
    sm: &Sampler,
    lat: &[f32],
    target: impl Into<Target<'t>>,
    g_feat: &mut Vec<f32>,
    grad_from: Option<usize>,
    g_lat: &mut Vec<f32>,
) -> (f64, Vec<f32>) {
    let target = target.into();
    let net_grad = grad_from.is_some();
    let shape = &pk.shape;
    let (w, h) = (sm.out_w, sm.out_h);
    let c = shape.n_out();
    let n_l = sm.pyr.n_levels();
    let ip = kernel::input_grad_stride(shape);
    let scale = 0.25 / (w * h * c) as f32;
    let np = shape.n_packed;
    g_feat.resize(h * w * n_l, 0.0);
    let span = SpanArgs {
        shape,
        pk,
        target,
        w,
        scale,
        grad_from,
    };
    let scratch = || {
        (
            TrainScratch::new(shape),
            vec![0.0f32; TILE * ip],
            FitRows::default(),
        )
    };
    // A one-row output's latent sums per run of columns (added in run order below).
    let mut spans: Vec<SpanSums> = Vec::new();
    let parts: Vec<(f64, Vec<f32>, Option<BandAdjoint>)> =
        if h == 1 && w > ROW_SPLIT && sm.cubic.is_none() {
            // One row (an audio segment, §14): its columns in parallel, in runs of ROW_SPLIT (a
            // split fixed by the width, so the sums do not depend on the thread count).
            let runs: Vec<(f64, Vec<f32>, SpanSums)> = g_feat
                .par_chunks_mut(ROW_SPLIT * n_l)
                .enumerate()
                .map_init(scratch, |(scratch, gi, st), (run, gf)| {
                    let mut gp = vec![0.0f32; if net_grad { np } else { 0 }];
                    let x0 = run * ROW_SPLIT;
                    let xs = x0..x0 + gf.len() / n_l;
                    sm.row_lanes_span(lat, xs.clone(), st);
                    let sse = span.run(st, 0, xs.clone(), x0, gf, &mut gp, scratch, gi);
                    (sse, gp, sm.span_adjoint(gf, xs))
                })
                .collect();
            runs.into_iter()
                .map(|(sse, gp, adj)| {
                    spans.push(adj);
                    (sse, gp, None)
                })
                .collect()
        } else {
            g_feat
                .par_chunks_mut(BAND * w * n_l)
                .enumerate()
                .map_init(scratch, |(scratch, gi, rows_st), (band, gf)| {
                    let mut gp = vec![0.0f32; if net_grad { np } else { 0 }];
                    let mut sse = 0.0;
                    for (r, gfr) in gf.chunks_mut(w * n_l).enumerate() {
                        let y = band * BAND + r;
                        sm.row_lanes_fit(lat, y, rows_st);
                        sse += span.run(rows_st, y, 0..w, 0, gfr, &mut gp, scratch, gi);
                    }
                    // The band's latent gradient while its feature gradients are in cache (with
                    // B-spline taps, for all bands at once below).
                    let adj = sm.cubic.is_none().then(|| sm.band_adjoint(gf, band * BAND));
                    (sse, gp, adj)
                })
                .collect()
        };
    let mut g_packed = vec![0.0f32; np];
    let mut sse = 0.0;
    let mut bands = Vec::with_capacity(parts.len());
    for (s, gp, ba) in parts {
        bands.extend(ba);
        sse += s;
        for (a, b) in g_packed.iter_mut().zip(&gp) {
            *a += b;
        }
    }
    let mut g_params = Vec::new();
    if net_grad {
        g_params = vec![0.0f32; params.len()];
        shape.unpack(&g_packed, &mut g_params);
    }
    // Both writers set every entry (no zeroing here).
    g_lat.resize(sm.pyr.n_latents, 0.0);
    if sm.cubic.is_some() {
        sm.bspline_scatter(g_feat, g_lat);
    } else {
        sm.merge_adjoint(&bands, g_lat);
    }
    for run in &spans {
        for (&(_, _, off), (first, g)) in sm.pyr.levels.iter().zip(run) {
            for (d, v) in g_lat[off + first..].iter_mut().zip(g) {
                *d += v;
            }
        }
    }
    (sse * f64::from(scale), g_params)
}

/// Columns per parallel run of a one-row fit (an audio segment): a multiple of [`TILE`].
const ROW_SPLIT: usize = 64 * TILE;

/// What the training kernel needs for runs of one output row (see [`SpanArgs::run`]).
struct SpanArgs<'a> {
    shape: &'a kernel::NetShape,
    pk: &'a Packed,
    target: Target<'a>,
    w: usize,
    scale: f32,
    grad_from: Option<usize>,
}

impl SpanArgs<'_> {
    /// Forward and backward of output row `y`'s columns `xs` (features from `rows_st`, readied
    /// for row `y` from column `st_x0` on), a tile at a time: their feature gradients into
    /// `gfr` (`[x][L]` from `xs.start`), the network's gradient added into `gp` (when not
    /// empty); returns their sum of squared errors.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        rows_st: &FitRows,
        y: usize,
        xs: std::ops::Range<usize>,
        st_x0: usize,
        gfr: &mut [f32],
        gp: &mut [f32],
        scratch: &mut TrainScratch,
        gi: &mut [f32],
    ) -> f64 {
        let n_l = rows_st.wy.len();
        let c = self.shape.n_out();
        let ip = kernel::input_grad_stride(self.shape);
        let mut sse = 0.0;
        let mut x0 = xs.start;
        while x0 < xs.end {
            let rows = TILE.min(xs.end - x0);
            rows_st.features(x0 - st_x0, rows, scratch.input_mut());
            // The latent features' gradient comes straight out of the kernel when its padded
            // stride is the level count, else through `gi`.
            let direct = ip == n_l;
            let at = (x0 - xs.start) * n_l;
            let dst: &mut [f32] = if direct {
                &mut gfr[at..at + rows * n_l]
            } else {
                &mut gi[..]
            };
            let pos = y * self.w + x0;
            let io = TileIo {
                target: &self.target.values[pos * c..(pos + rows) * c],
                weight: self.target.weights.map(|w| &w[pos * c..(pos + rows) * c]),
                rows,
                grad_scale: self.scale,
                grad: (!gp.is_empty()).then_some(&mut gp[..]),
                shift: None,
                gshift: None,
                ginput: Some(dst),
                grad_from: self.grad_from.unwrap_or(0),
            };
            sse += kernel::train_tile_io(self.shape, &self.pk.w, &self.pk.wt, io, scratch);
            if !direct {
                for (rr, src) in gi.chunks_exact(ip).take(rows).enumerate() {
                    gfr[at + rr * n_l..][..n_l].copy_from_slice(&src[..n_l]);
                }
            }
            x0 += rows;
        }
        sse
    }
}

/// Bits of one value `v` (noisy or rounded) under a zero-mean Laplace of scale `b` integrated
/// over `[v - 1/2, v + 1/2]`, with the derivatives with respect to `v` and `ln b`.
#[inline]
pub fn laplace_bits(v: f32, b: f32) -> (f32, f32, f32) {
    const LN2: f32 = std::f32::consts::LN_2;
    let a = v.abs();
    let inv = 1.0 / b;
    if a >= 0.5 {
        // P = 1/2 e^{-(a-1/2)/b} (1 - e^{-1/b})
        let e1 = (-inv).exp();
        let nlp = LN2 + (a - 0.5) * inv - (1.0 - e1).max(1e-30).ln();
        let d_a = inv;
        // d(-ln P)/d ln b = b d/db = (1/b) [1/(e^{1/b} - 1) - (a - 1/2)]
        let d_lnb = inv * (e1 / (1.0 - e1).max(1e-30) - (a - 0.5));
        (nlp / LN2, v.signum() * d_a / LN2, d_lnb / LN2)
    } else {
        // P = 1 - e^{-1/(2b)} cosh(a/b)
        let e = (-0.5 * inv).exp();
        let (ch, sh) = ((a * inv).cosh(), (a * inv).sinh());
        let p = (1.0 - e * ch).max(1e-30);
        let nlp = -p.ln();
        let d_a = e * sh * inv / p;
        let dp_db = -(e * inv * inv) * (0.5 * ch - a * sh);
        let d_lnb = -dp_db * b / p;
        (nlp / LN2, v.signum() * d_a / LN2, d_lnb / LN2)
    }
}

/// The per-scale constants of [`laplace_bits`], so that the fit's rate gradient costs at most
/// one `exp` per latent ([`LaplaceScale::grads`]).
#[derive(Debug, Clone, Copy)]
pub struct LaplaceScale {
    inv: f32,
    /// `e^{-1/(2b)}`.
    eh: f32,
    /// `d(-log2 P)/d ln b` at `|v| = 1/2` on the outer branch, less its `(a - 1/2)` term.
    big_lnb: f32,
}

impl LaplaceScale {
    pub fn new(b: f32) -> Self {
        let inv = 1.0 / b;
        let e1 = (-inv).exp();
        LaplaceScale {
            inv,
            eh: (-0.5 * inv).exp(),
            big_lnb: e1 / (1.0 - e1).max(1e-30),
        }
    }

    /// `(d bits / d v, d bits / d ln b)` of [`laplace_bits`]`(v, b)`, the same formulas with
    /// the per-scale factors hoisted.
    #[inline]
    pub fn grads(&self, v: f32) -> (f32, f32) {
        laplace_grads(v, self.inv, self.eh, self.big_lnb)
    }
}

/// [`LaplaceScale::grads`] from the scale's constants: both branches of [`laplace_bits`] are
/// computed and one is kept (with [`kernel::exp`]), so that loops over it vectorise.
#[inline(always)]
fn laplace_grads(v: f32, inv: f32, eh: f32, big_lnb: f32) -> (f32, f32) {
    const INV_LN2: f32 = 1.0 / std::f32::consts::LN_2;
    let a = v.abs();
    // Inner branch, P = 1 - e^{-1/(2b)} cosh(a/b). With k = e^{-1/(2b)} / (b P):
    // d(-ln P)/da = k sh, and d(-ln P)/d ln b = -(dP/db) b / P = k (ch/2 - a sh). One division
    // for both (and `p < tiny` rather than `max`, which would also test for NaN).
    let ex = kernel::exp(a * inv);
    let rx = 1.0 / ex;
    let (ch, sh) = (0.5 * (ex + rx), 0.5 * (ex - rx));
    let p = 1.0 - eh * ch;
    let k = eh * inv / if p < 1e-30 { 1e-30 } else { p };
    let outer = a >= 0.5;
    let dv = if outer { inv } else { k * sh } * INV_LN2;
    let db = if outer {
        inv * (big_lnb - (a - 0.5))
    } else {
        k * (0.5 * ch - a * sh)
    } * INV_LN2;
    (dv.copysign(v), db)
}

/// Settings of a grid fit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GridFit {
    pub steps: usize,
    /// Rate weight: the loss is `MSE ([0,1] units) + lambda * latent bits per pixel`.
    pub lambda: f32,
    /// Adam learning rate of the latents at the start of the cosine decay; `None` =
    /// [`default_latent_lr`] of `steps`.
    pub lr_latent: Option<f32>,
    /// Adam learning rate of the network (cosine decay).
    pub lr_net: f32,
    /// Which part of the network is fitted (the rest stays at its start and gets no
    /// gradient).
    pub net: NetTraining,
    /// Adam learning rate of the entropy model's log-scales (cosine decay); `None` =
    /// [`default_scale_lr`] of `steps`.
    pub lr_scales: Option<f32>,
    /// Fraction of the steps whose distortion sees the latents with additive uniform noise;
    /// the rest see them rounded (straight-through), while the rate term keeps the noise.
    /// kodim03/07/11, 1,000 steps, λ = 0.005, mean `MSE + λ·bpp` ×1e-3 (before the rate kept
    /// its noise): 0.6 2.88, 0.7 2.44 (with it), 0.8 2.42, 0.9 2.37, 0.95 2.43, 1.0 2.44; with
    /// the rate keeping its noise 0.8 gives 2.36 and 0.9 2.38.
    pub noise_frac: f32,
    /// Soft rounding in the noise steps (C3): distortion and rate see `sr(sr(y) + n)` instead of
    /// `y + n`, at a temperature going linearly from `.0` to `.1`; `None` = plain noise.
    /// kodim03/07/11, 1,000 steps, λ = 0.005, mean change of `MSE + λ·bpp` against plain noise:
    /// 0.3→0.1 −1.7 %, 0.5→0.1 −4.5 %, 0.5→0.2 −4.5 %, 0.8→0.3 −4.4 %, 0.3→0.3 −2.2 %. At
    /// 0.3→0.1: with the rate on `y + n` instead +4.1 %; with Kumaraswamy noise (2→1) +0.3 %;
    /// with the straight-through steps' gradient through `sr` +3.0 %. At 0.5→0.2: λ = 0.002
    /// −4.6 %, λ = 0.015 −4.6 %, 100 steps −2.7 %, 250 steps −1.8 % (`docs/benchmarks.md`, "Soft rounding").
    /// With it, `noise_frac` 0.9 / 0.95 / 1.0 gave −0.8 / −0.7 / −0.5 % against 0.8 (λ = 0.002:
    /// 0.9 −0.4 %); not taken (too small to retune the rate control's tables for).
    pub soft_round: Option<(f32, f32)>,
    /// The §5.9 context set of the rate model (the coder's: the file is coded with it).
    pub contexts: GridContexts,
    /// §13.5 How the latents are upsampled, in the fit and in the file (flag bit 10).
    pub upsampling: Upsampling,
    /// Learn a §5.10 linear predictor per level and centre the rate model on it (the file is
    /// then coded with predicted latents when that is smaller).
    pub predict: bool,
    /// Fraction of the steps before the predictor is switched on (the rate model is
    /// zero-centred until then). Predicting from the first step keeps the latents from
    /// becoming sparse: on kodim15 (300 steps, λ = 0.005) a predictor from step 0 gave 28.66 dB
    /// at 0.302 bpp, from 30 % of the steps 28.53 dB at 0.201, from 50 % 28.47 at 0.194, from
    /// 70 % 28.48 at 0.201, and none 28.47 at 0.224.
    pub pred_warmup: f32,
    /// Steps at half resolution before the `steps` full-resolution ones: levels 1.. against
    /// the image averaged over 2x2 blocks (level 0 stays 0 until the full-resolution steps).
    /// Such a step costs about a quarter of a full one.
    pub coarse_steps: usize,
    /// A budget in full-resolution steps that, when set, replaces `steps` and `coarse_steps`
    /// by the split [`GridFit::schedule`] picks for `lambda` (see [`GridFit::set_budget`]).
    pub budget: Option<usize>,
}

impl Default for GridFit {
    fn default() -> Self {
        GridFit {
            steps: 1000,
            lambda: 0.004,
            lr_latent: None,
            lr_net: 0.01,
            net: NetTraining::All,
            lr_scales: None,
            noise_frac: 0.8,
            soft_round: Some((0.5, 0.2)),
            contexts: GridContexts::Twelve,
            upsampling: Upsampling::Bilinear,
            predict: true,
            pred_warmup: 0.5,
            coarse_steps: 0,
            budget: None,
        }
    }
}

/// What a grid fit trains of the synthesis network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum NetTraining {
    /// Every tensor (a per-image synthesis, §13).
    All,
    /// Only the output layer (its weights and biases), the rest fixed: a shared synthesis
    /// with a per-image output layer (§13.8, flag bit 7).
    Head,
    /// Nothing: a shared synthesis used as it is (§13.8).
    Frozen,
}

impl NetTraining {
    /// The first layer that gets a gradient in a network of `n_layers` linear maps (`None`:
    /// none does).
    pub fn grad_from(self, n_layers: usize) -> Option<usize> {
        match self {
            NetTraining::All => Some(0),
            NetTraining::Head => Some(n_layers.saturating_sub(1)),
            NetTraining::Frozen => None,
        }
    }
}

/// Budgets (in full-resolution steps) below this are spent mostly at half resolution by
/// [`GridFit::set_budget`].
pub const COARSE_BELOW: usize = 150;

impl GridFit {
    /// Fits within a budget of `budget` full-resolution steps, split by [`GridFit::schedule`]
    /// at fitting time (so that a rate search over λ re-splits it).
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = Some(budget);
    }

    /// `(full-resolution steps, half-resolution steps)` of this fit. Without a budget, `steps`
    /// and `coarse_steps`. A budget from [`COARSE_BELOW`] on is all full-resolution steps;
    /// below it, a fraction `f` of it (at least one step) after `4.5 × (1 - f) × budget`
    /// half-resolution ones (about a quarter of the cost each, so the time is about the same).
    /// `f` grows as λ falls (the finest level carries more of a high-rate image): 0.3 from
    /// λ = 0.005 up, 0.7 at 0.002, 0.85 from 0.0008 down, linear in log λ between.
    /// Kodim03/07/11, budget 100, mean `MSE + λ·bpp` ×1e-3 (all at about 5 s per image):
    ///
    /// | λ | plain | f = 0.3 | 0.5 | 0.7 | 0.85 |
    /// |---|---|---|---|---|---|
    /// | 0.03 | 5.37 | 4.99 | 5.10 | 5.15 | |
    /// | 0.005 | 2.96 | 2.69 | 2.73 | 2.83 | |
    /// | 0.002 | 2.16 | 2.11 | 2.07 | 2.03 | |
    /// | 0.0008 | 1.56 | 1.74 | 1.66 | 1.46 | 1.43 |
    ///
    /// At λ = 0.005 and budget 60: 3.66 plain, 2.86 at f = 0.3; at 150: 2.69 and 2.62 (7.5 and
    /// 8.6 s); at 250 (f = 0.4): 2.54 and 2.52; at 1,000 (f = 0.7): 2.36 and 2.32 (50 and 58 s).
    /// A quarter-resolution phase first (levels 2.., 16 steps per full one) did worse: budget
    /// 100 at λ = 0.005, with 30 % or 60 % of the coarse budget there, 2.83 and 2.92.
    pub fn schedule(&self) -> Schedule {
        match self.budget {
            None => Schedule {
                full: self.steps,
                half: self.coarse_steps,
            },
            Some(b) if b >= COARSE_BELOW => Schedule { full: b, half: 0 },
            Some(b) => {
                let f = full_fraction(self.lambda);
                let full = ((b as f32 * f).round() as usize).clamp(1, b.max(1));
                let half = (4.5 * (b - full.min(b)) as f32).ceil() as usize;
                Schedule { full, half }
            }
        }
    }

    /// Steps the fit runs on a pyramid of `n_levels` levels, half-resolution ones included
    /// (a one-level pyramid has no coarse phase).
    pub fn total_steps(&self, n_levels: usize) -> usize {
        let s = self.schedule();
        s.full + if n_levels >= 2 { s.half } else { 0 }
    }

    /// The latents' starting learning rate this fit uses: by default [`default_latent_lr`] of
    /// the full-resolution steps, at most [`coarse_latent_lr`] when there is a half-resolution
    /// phase.
    pub fn latent_lr(&self) -> f32 {
        self.lr_latent.unwrap_or_else(|| {
            let s = self.schedule();
            let lr = default_latent_lr(s.full);
            if s.half > 0 {
                lr.min(coarse_latent_lr(self.lambda))
            } else {
                lr
            }
        })
    }
    /// The settings of a refit: a fit that starts from an earlier fit of the same image
    /// ([`Fitted::into_start`]) at another λ, as a rate or quality search's later fits do.
    /// `tenths` tenths of the full-resolution steps (at least one step; the searches use 3,
    /// or 6 to raise the rate), no half-resolution phase, the predictor on from the first
    /// step, lower learning rates (latents 0.02, network 0.3×, entropy model 0.01) and soft
    /// rounding from 0.3 instead of 0.5 (the latents are already near their integers).
    pub fn refit(&self, tenths: usize) -> GridFit {
        let s = self.schedule();
        GridFit {
            steps: (s.full * tenths / 10).max(1),
            coarse_steps: 0,
            budget: None,
            lr_latent: Some(REFIT_LATENT_LR),
            lr_net: 0.3 * self.lr_net,
            lr_scales: Some(0.01),
            soft_round: self.soft_round.map(|(t0, t1)| (t0.min(0.3).max(t1), t1)),
            pred_warmup: 0.0,
            ..*self
        }
    }

    /// The entropy model's starting learning rate this fit uses.
    pub fn scale_lr(&self) -> f32 {
        self.lr_scales
            .unwrap_or_else(|| default_scale_lr(self.schedule().full))
    }
}

/// The latents' Adam rate of a refit ([`GridFit::refit`]).
pub const REFIT_LATENT_LR: f32 = 0.02;

/// Steps of a fit at each resolution ([`GridFit::schedule`]), half resolution first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub full: usize,
    pub half: usize,
}

/// The fraction of a small budget [`GridFit::schedule`] spends at full resolution at `lambda`.
fn full_fraction(lambda: f32) -> f32 {
    in_log_lambda(&[(0.0008, 0.85), (0.002, 0.7), (0.005, 0.3)], lambda)
}

/// Piecewise linear in log λ through `pts` (λ ascending), constant beyond the ends.
fn in_log_lambda(pts: &[(f32, f32)], lambda: f32) -> f32 {
    let x = lambda.max(1e-12).ln();
    let mut prev: Option<(f32, f32)> = None;
    for &(l, v) in pts {
        if x <= l.ln() {
            return match prev {
                None => v,
                Some((l0, v0)) => v0 + (x - l0.ln()) / (l.ln() - l0.ln()) * (v - v0),
            };
        }
        prev = Some((l, v));
    }
    prev.map_or(0.0, |(_, v)| v)
}

/// The Adam rate of the entropy model's log-scales when none is given: `10 / steps`, between
/// 0.01 (the rate of the presets' 1,000 steps) and 0.1. In a short fit the scales are what
/// keeps the rate high (at 100 steps and λ = 0.005 the files were 2x larger than after 1,000
/// steps). Chosen on kodim03/07/11 like [`default_latent_lr`] (mean `MSE + λ·bpp`, ×1e-3): 100
/// steps 3.44 at 0.01, 3.06 at 0.05, 3.03 at 0.1 and 0.2; 250 steps 2.74 at 0.01, 2.58 at
/// 0.04 and 0.1; 1,000 steps 2.43 at 0.01, 2.44 at 0.02 and 0.05.
pub fn default_scale_lr(steps: usize) -> f32 {
    (10.0 / steps.max(1) as f32).clamp(0.01, 0.1)
}

/// The latents' default Adam rate in a fit with a half-resolution phase (the phase's many
/// cheap steps move the latents further than the full-resolution step count suggests): 0.4
/// (the rate of 100 plain steps) from λ = 0.005 up, 0.2 from 0.002 down, linear in log λ
/// between. Kodim03/07/11, budget 100 ([`GridFit::schedule`]), mean `MSE + λ·bpp` ×1e-3 at
/// 0.4 and 0.2: λ = 0.03 4.99 and 5.03; 0.012 3.61 and 3.60; 0.005 2.69 and 2.67 (0.12: 2.74);
/// 0.002 2.02 and 1.91; 0.0008 1.42 and 1.32 (0.14: 1.40). Only the clear gains (below 0.005)
/// were taken.
pub fn coarse_latent_lr(lambda: f32) -> f32 {
    in_log_lambda(&[(0.002, 0.2), (0.005, 0.4)], lambda)
}

/// The latents' Adam rate when none is given: `40 / steps`, between 0.02 (the rate of 2,000
/// steps; 0.04 at the presets' 1,000) and 0.4. A short fit needs a larger rate to move the
/// latents as far, a long one a smaller rate to settle. Chosen on kodim03/07/11 (λ = 0.005,
/// mean of `MSE + λ·bpp` over the three, ×1e-3): 100 steps: 3.50 at 0.2, 3.44 at 0.4; 250
/// steps: 3.17 at 0.04, 2.78 at 0.1, 2.73 at 0.2, 2.75 at 0.3; 500 steps: 2.59 at 0.04, 2.52 at
/// 0.08, 2.61 at 0.16; 1,000 steps: 2.43 at 0.04, 2.51 at 0.1, 2.66 at 0.2. Stop 43 (the
/// encoder of that time, whole `inr encode --lambda 0.005` runs): 1,000 steps 2.097 at 0.04,
/// 2.095 at 0.025; 2,000 steps 2.153 at 0.04 (the floor until then: worse than 1,000 steps on
/// the mean) and 2.078 at 0.02 (+1.2 / −4.7 / −5.1 % against 0.04 on kodim03 / 07 / 11); on
/// the unseen kodim13–16 2,000 steps at 0.02 are −1.9 % BD-rate against 1,000
/// (`docs/benchmarks.md`).
pub fn default_latent_lr(steps: usize) -> f32 {
    (40.0 / steps.max(1) as f32).clamp(0.02, 0.4)
}

/// Initial synthesis weights: SIREN-style uniform bounds from a seeded RNG, a small output
/// layer and zero output bias.
pub fn init_params(arch: &Arch, seed: u64) -> Vec<f32> {
    let shape = model::shape_of(arch);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = vec![0.0f32; shape.n_params];
    let n_layers = shape.layers.len();
    for (l, ly) in shape.layers.iter().enumerate() {
        let n = ly.n_in as f32;
        let w0 = if l == 0 {
            f32::from(arch.w0_first)
        } else {
            f32::from(arch.w0_hidden)
        };
        let mut bound = (6.0 / n).sqrt() / w0;
        if l == 0 {
            bound *= 0.3;
        }
        if l + 1 == n_layers {
            bound = (6.0 / n).sqrt() * 0.1;
        }
        for v in &mut p[ly.w_off..ly.w_off + ly.n_in * ly.n_out] {
            *v = rng.gen_range(-bound..bound);
        }
        if l + 1 < n_layers {
            for v in &mut p[ly.b_off..ly.b_off + ly.n_out] {
                *v = rng.gen_range(-1.0 / w0..1.0 / w0);
            }
        }
    }
    p
}

/// Values of the §5.10 taps (left, above, above-left, above-right, parent) of element `x` of
/// row `y` of a level with `cols` columns (`v` the level's values, `par` the parent level and
/// its columns); 0 outside the grids.
#[inline]
fn taps_at(
    v: &[f32],
    cols: usize,
    x: usize,
    y: usize,
    par: Option<(&[f32], usize)>,
) -> [f32; GRID_PRED_TAPS] {
    let i = y * cols + x;
    let l = if x > 0 { v[i - 1] } else { 0.0 };
    let (a, al, ar) = if y > 0 {
        let u = i - cols;
        (
            v[u],
            if x > 0 { v[u - 1] } else { 0.0 },
            if x + 1 < cols { v[u + 1] } else { 0.0 },
        )
    } else {
        (0.0, 0.0, 0.0)
    };
    let p = par.map_or(0.0, |(p, pc)| {
        let (px, py) = (x >> 1, y >> 1);
        if px < pc {
            p.get(py * pc + px).copied().unwrap_or(0.0)
        } else {
            0.0
        }
    });
    [l, a, al, ar, p]
}

/// Bits per level of `noisy` under the fit's rate model (the function [`rate_grad`]
/// differentiates): a Laplace of learned scale per level and §5.9 context (contexts from
/// `rounded` magnitudes) integrated over unit bins, centred on the §5.10 prediction from the
/// noisy taps with `coefs`, or on 0.
pub fn rate_bits(
    pyr: &Pyramid,
    lnb: &[f32],
    coefs: Option<&[[f32; GRID_PRED_TAPS]]>,
    noisy: &[f32],
    rounded: &[u32],
    ctxs: GridContexts,
) -> Vec<f64> {
    let table = context_table(ctxs);
    pyr.levels
        .iter()
        .enumerate()
        .map(|(l, &(wl, hl, off))| {
            let q = &rounded[off..off + wl * hl];
            let vals = &noisy[off..off + wl * hl];
            let par = pyr
                .levels
                .get(l + 1)
                .map(|&(pw, ph, po)| (&noisy[po..po + pw * ph], pw));
            let mut bits = 0.0f64;
            for y in 0..hl {
                let cur = &q[y * wl..(y + 1) * wl];
                let up = (y > 0).then(|| &q[(y - 1) * wl..y * wl]);
                for x in 0..wl {
                    let ctx = context_in_rows(cur, up, x, &table);
                    let b = lnb[l * MAX_GRID_CONTEXTS + ctx].exp();
                    let mu: f32 = coefs.map_or(0.0, |c| {
                        taps_at(vals, wl, x, y, par)
                            .iter()
                            .zip(&c[l])
                            .map(|(a, b)| a * b)
                            .sum()
                    });
                    bits += f64::from(laplace_bits(vals[y * wl + x] - mu, b).0);
                }
            }
            bits
        })
        .collect()
}

/// The rate term's gradients for one fitting step over the levels from `from_level` on
/// (the others are left alone, and their `w_mu` must be 0): adds `rate_w * d bits / d latent`
/// to `g_lat` and returns the gradients of the log-scales (per level and context) and of the
/// predictor coefficients (per level; zero without `coefs`). `w_mu` is scratch (one value per
/// latent). Work is split in fixed chunks of rows summed in order, so the result does not
/// depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn rate_grad(
    pyr: &Pyramid,
    from_level: usize,
    lnb: &[f32],
    coefs: Option<&[[f32; GRID_PRED_TAPS]]>,
    noisy: &[f32],
    rounded: &[u32],
    rate_w: f32,
    g_lat: &mut [f32],
    w_mu: &mut [f32],
    ctxs: GridContexts,
) -> (Vec<f32>, Vec<[f32; GRID_PRED_TAPS]>) {
    let n_l = pyr.n_levels();
    let table = context_table(ctxs);
    let mut g_b = vec![0.0f32; n_l * MAX_GRID_CONTEXTS];
    let mut g_c = vec![[0.0f32; GRID_PRED_TAPS]; n_l];
    // Pass 1: each latent's own term; w_mu[i] = rate_w * d bits / d mu_i.
    for (l, &(wl, hl, off)) in pyr.levels.iter().enumerate().skip(from_level) {
        let b: [LaplaceScale; MAX_GRID_CONTEXTS] =
            std::array::from_fn(|c| LaplaceScale::new(lnb[l * MAX_GRID_CONTEXTS + c].exp()));
        let q = &rounded[off..off + wl * hl];
        let vals = &noisy[off..off + wl * hl];
        let par = pyr
            .levels
            .get(l + 1)
            .map(|&(pw, ph, po)| (&noisy[po..po + pw * ph], pw));
        let c = coefs.map(|c| c[l]);
        // One row, or a run of columns of one, as `rate_row` reads it.
        let row_in = |v, left, up, par| RateRowIn {
            v,
            left,
            up,
            par,
            c: c.as_ref(),
            tab: &b,
            rate_w,
        };
        let partial: Vec<([f32; MAX_GRID_CONTEXTS], [f32; GRID_PRED_TAPS])> =
            if hl == 1 && wl > RATE_SPLIT {
                // One wide row (an audio segment's level): runs of RATE_SPLIT columns in parallel,
                // each seeing its left neighbour as the whole row would (so every latent's terms are
                // the row's; only the scale and coefficient sums are added in another order, fixed
                // by the width).
                g_lat[off..off + wl]
                    .par_chunks_mut(RATE_SPLIT)
                    .zip(w_mu[off..off + wl].par_chunks_mut(RATE_SPLIT))
                    .enumerate()
                    .map(|(ci, (g, wm))| {
                        let mut acc = [0.0f32; MAX_GRID_CONTEXTS];
                        let mut acc_c = [0.0f32; GRID_PRED_TAPS];
                        let (x0, n) = (ci * RATE_SPLIT, g.len());
                        let mut rs = RateRow::new(n);
                        let left_q = if x0 > 0 { q[x0 - 1] } else { 0 };
                        context_run(
                            &q[x0..x0 + n],
                            left_q,
                            None,
                            &table,
                            &mut rs.sums,
                            &mut rs.ctx,
                        );
                        let rows = row_in(
                            &vals[x0..x0 + n],
                            if x0 > 0 { vals[x0 - 1] } else { 0.0 },
                            None,
                            par.map(|(p, pw)| &p[(x0 / 2).min(pw)..]),
                        );
                        let out = RateRowOut {
                            g,
                            wm,
                            acc: &mut acc,
                            acc_c: &mut acc_c,
                        };
                        rate_row(&rows, out, &mut rs);
                        (acc, acc_c)
                    })
                    .collect()
            } else {
                let rows_per = 4096usize.div_ceil(wl).max(1);
                g_lat[off..off + wl * hl]
                    .par_chunks_mut(rows_per * wl)
                    .zip(w_mu[off..off + wl * hl].par_chunks_mut(rows_per * wl))
                    .enumerate()
                    .map(|(ci, (g, wm))| {
                        let mut acc = [0.0f32; MAX_GRID_CONTEXTS];
                        let mut acc_c = [0.0f32; GRID_PRED_TAPS];
                        let row0 = ci * rows_per;
                        let mut rs = RateRow::new(wl);
                        for (r, (g, wm)) in g.chunks_mut(wl).zip(wm.chunks_mut(wl)).enumerate() {
                            let y = row0 + r;
                            let cur = &q[y * wl..(y + 1) * wl];
                            let up = (y > 0).then(|| &q[(y - 1) * wl..y * wl]);
                            context_row(cur, up, &table, &mut rs.sums, &mut rs.ctx);
                            let rows = row_in(
                                &vals[y * wl..(y + 1) * wl],
                                0.0,
                                (y > 0).then(|| &vals[(y - 1) * wl..y * wl]),
                                par.and_then(|(p, pc)| p.get((y >> 1) * pc..((y >> 1) + 1) * pc)),
                            );
                            let out = RateRowOut {
                                g,
                                wm,
                                acc: &mut acc,
                                acc_c: &mut acc_c,
                            };
                            rate_row(&rows, out, &mut rs);
                        }
                        (acc, acc_c)
                    })
                    .collect()
            };
        for (p, pc) in &partial {
            for k in 0..MAX_GRID_CONTEXTS {
                g_b[l * MAX_GRID_CONTEXTS + k] += rate_w * p[k];
            }
            for k in 0..GRID_PRED_TAPS {
                g_c[l][k] += rate_w * pc[k];
            }
        }
    }
    let Some(coefs) = coefs else {
        return (g_b, g_c);
    };
    // Pass 2: every latent collects c_k * w_mu of the latents it is tap k of (a gather, so
    // rows are independent).
    for (l, &(wl, hl, off)) in pyr.levels.iter().enumerate().skip(from_level) {
        let c = coefs[l];
        let wm = &w_mu[off..off + wl * hl];
        let child = l.checked_sub(1).map(|k| (pyr.levels[k], coefs[k][4]));
        if hl == 1 && wl > RATE_SPLIT {
            // One wide row: the same gather in runs of columns (one row, no row below; the
            // children are in the one row of the level below).
            g_lat[off..off + wl]
                .par_chunks_mut(RATE_SPLIT)
                .enumerate()
                .for_each(|(ci, g)| {
                    let x0 = ci * RATE_SPLIT;
                    for (i, d) in g.iter_mut().enumerate() {
                        let x = x0 + i;
                        let mut v = 0.0f32;
                        if x + 1 < wl {
                            v += c[0] * wm[x + 1];
                        }
                        if let Some(((cw, _, co), cp)) = child {
                            let mut t = 0.0f32;
                            for cx in [2 * x, 2 * x + 1].into_iter().filter(|&cx| cx < cw) {
                                t += w_mu[co + cx];
                            }
                            v += cp * t;
                        }
                        *d += v;
                    }
                });
            continue;
        }
        // Row-wise slices (the same terms in the same order as latent by latent: c_0 .. c_3,
        // then the four children), so that the loops vectorise.
        g_lat[off..off + wl * hl]
            .par_chunks_mut(wl)
            .enumerate()
            .for_each_init(
                || (vec![0.0f32; wl], vec![0.0f32; wl]),
                |(s, t), (y, g)| {
                    let cur = &wm[y * wl..(y + 1) * wl];
                    s.fill(0.0);
                    for (d, &v) in s.iter_mut().zip(&cur[1..]) {
                        *d += c[0] * v;
                    }
                    if y + 1 < hl {
                        let below = &wm[(y + 1) * wl..(y + 2) * wl];
                        for (d, &v) in s.iter_mut().zip(below) {
                            *d += c[1] * v;
                        }
                        for (d, &v) in s.iter_mut().zip(&below[1..]) {
                            *d += c[2] * v;
                        }
                        for (d, &v) in s[1..].iter_mut().zip(below) {
                            *d += c[3] * v;
                        }
                    }
                    if let Some(((cw, ch, co), cp)) = child {
                        // Children (2x..2x+1, 2y..2y+1) of the level below, if inside it.
                        t.fill(0.0);
                        for cy in [2 * y, 2 * y + 1].into_iter().filter(|&cy| cy < ch) {
                            let row = &w_mu[co + cy * cw..][..cw];
                            for (d, pair) in t.iter_mut().zip(row.chunks(2)) {
                                for &v in pair {
                                    *d += v;
                                }
                            }
                        }
                        for (d, &v) in s.iter_mut().zip(t.iter()) {
                            *d += cp * v;
                        }
                    }
                    for (d, &v) in g.iter_mut().zip(s.iter()) {
                        *d += v;
                    }
                },
            );
    }
    (g_b, g_c)
}

/// Columns per parallel run of the rate term's passes over a level of one wide row.
const RATE_SPLIT: usize = 1 << 14;

/// Scratch of [`rate_row`] for rows of one width.
struct RateRow {
    sums: Vec<u32>,
    ctx: Vec<u8>,
    /// The §5.10 taps of every column (left, above, above-left, above-right, parent).
    taps: [Vec<f32>; GRID_PRED_TAPS],
    d: Vec<f32>,
    inv: Vec<f32>,
    eh: Vec<f32>,
    big: Vec<f32>,
    dv: Vec<f32>,
    db: Vec<f32>,
}

impl RateRow {
    fn new(w: usize) -> Self {
        let z = || vec![0.0f32; w];
        RateRow {
            sums: vec![0; w],
            ctx: vec![0; w],
            taps: std::array::from_fn(|_| z()),
            d: z(),
            inv: z(),
            eh: z(),
            big: z(),
            dv: z(),
            db: z(),
        }
    }
}

/// One level row of noisy latents for [`rate_row`]: the row, the row above (if any) and the
/// parent level's row `y / 2` (if the level has a parent and that row exists).
#[derive(Clone, Copy)]
struct RateRowIn<'a> {
    v: &'a [f32],
    /// The value left of `v[0]` when `v` is a run of columns that does not start the row (0
    /// at a row's start, outside the grid).
    left: f32,
    up: Option<&'a [f32]>,
    par: Option<&'a [f32]>,
    /// The level's predictor coefficients (when predicting), Laplace scales per context, and
    /// the rate weight.
    c: Option<&'a [f32; GRID_PRED_TAPS]>,
    tab: &'a [LaplaceScale; MAX_GRID_CONTEXTS],
    rate_w: f32,
}

/// Where [`rate_row`] writes and adds its results (see there).
struct RateRowOut<'a> {
    g: &'a mut [f32],
    wm: &'a mut [f32],
    acc: &'a mut [f32; MAX_GRID_CONTEXTS],
    acc_c: &'a mut [f32; GRID_PRED_TAPS],
}

/// Pass 1 of [`rate_grad`] on one row whose contexts are in `s.ctx`: for each latent, the
/// derivatives of its bits under `tab[ctx]` centred on its prediction (with `c`) or on 0;
/// adds `rate_w * d bits / d v` to `g`, writes `-rate_w * d bits / d v` to `wm`, and adds
/// `d bits / d ln b` to `acc[ctx]` and `-d bits / d v * tap_k` to `acc_c[k]`, summed over the
/// row in order (the same sums in the same order as latent by latent). Dispatches at run
/// time to AVX-512 or AVX2 builds of the same code (no FMA, so the same bits).
fn rate_row(rows: &RateRowIn<'_>, out: RateRowOut<'_>, s: &mut RateRow) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
            // SAFETY: the CPU supports AVX-512F/VL, checked just above.
            return unsafe { rate_row_avx512(rows, out, s) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { rate_row_avx2(rows, out, s) };
        }
    }
    rate_row_body(rows, out, s)
}

// `rate_row_body` built for each instruction set.
kernel::simd_variants! {
    fn [rate_row_avx2 = "avx2", rate_row_avx512 = "avx512f,avx512vl,avx2"](
        rows: &RateRowIn<'_>,
        out: RateRowOut<'_>,
        s: &mut RateRow,
    ) {
        rate_row_body(rows, out, s)
    }
}

#[inline(always)]
fn rate_row_body(rows: &RateRowIn<'_>, out: RateRowOut<'_>, s: &mut RateRow) {
    let RateRowIn { c, tab, rate_w, .. } = *rows;
    let RateRowOut { g, wm, acc, acc_c } = out;
    let v = rows.v;
    let w = v.len();
    // Residuals from the prediction (taps as in `taps_at`, 0 outside the grids).
    if let Some(c) = c {
        let [tl, ta, tal, tar, tp] = &mut s.taps;
        tl[0] = rows.left;
        tl[1..].copy_from_slice(&v[..w - 1]);
        match rows.up {
            Some(u) => {
                ta.copy_from_slice(u);
                tal[0] = 0.0;
                tal[1..].copy_from_slice(&u[..w - 1]);
                tar[..w - 1].copy_from_slice(&u[1..]);
                tar[w - 1] = 0.0;
            }
            None => {
                ta.fill(0.0);
                tal.fill(0.0);
                tar.fill(0.0);
            }
        }
        tp.fill(0.0);
        if let Some(p) = rows.par {
            for (pair, &pv) in tp.chunks_mut(2).zip(p) {
                pair.fill(pv);
            }
        }
        let (tl, ta, tal, tar, tp, d) = (
            &tl[..w],
            &ta[..w],
            &tal[..w],
            &tar[..w],
            &tp[..w],
            &mut s.d[..w],
        );
        for x in 0..w {
            let mu =
                0.0 + tl[x] * c[0] + ta[x] * c[1] + tal[x] * c[2] + tar[x] * c[3] + tp[x] * c[4];
            d[x] = v[x] - mu;
        }
    } else {
        s.d.copy_from_slice(v);
    }
    for (x, &k) in s.ctx.iter().enumerate() {
        let t = &tab[usize::from(k)];
        s.inv[x] = t.inv;
        s.eh[x] = t.eh;
        s.big[x] = t.big_lnb;
    }
    let (ds, invs, ehs, bigs) = (&s.d[..w], &s.inv[..w], &s.eh[..w], &s.big[..w]);
    let (dvs, dbs) = (&mut s.dv[..w], &mut s.db[..w]);
    for x in 0..w {
        (dvs[x], dbs[x]) = laplace_grads(ds[x], invs[x], ehs[x], bigs[x]);
    }
    let (g, wm, dvs) = (&mut g[..w], &mut wm[..w], &s.dv[..w]);
    for x in 0..w {
        g[x] += rate_w * dvs[x];
        wm[x] = -rate_w * dvs[x];
    }
    for (&k, &db) in s.ctx.iter().zip(&s.db) {
        acc[usize::from(k)] += db;
    }
    if c.is_some() {
        for (a, t) in acc_c.iter_mut().zip(&s.taps) {
            for (&dv, &tv) in s.dv.iter().zip(t) {
                *a += -dv * tv;
            }
        }
    }
}

/// [`context_in_rows`] of every column of `cur` into `ctx` (`sums` is scratch of the same
/// length), row-wise so that it vectorises.
fn context_row(
    cur: &[u32],
    up: Option<&[u32]>,
    table: &ContextTable,
    sums: &mut [u32],
    ctx: &mut [u8],
) {
    context_run(cur, 0, up, table, sums, ctx);
}

/// A context set (§5.9) as a table: the context of the neighbour sum `s` is
/// `table[min(s, 31)]` (every set's last bucket starts at or below 31).
type ContextTable = [u8; 32];

/// The [`ContextTable`] of `ctxs`.
fn context_table(ctxs: GridContexts) -> ContextTable {
    std::array::from_fn(|s| ctxs.bucket(s as u32) as u8)
}

/// [`context_row`] of a run of columns `cur` of a row without a row above, whose left
/// neighbour's magnitude is `left` (0 at the row's start); `up` is only for whole rows.
fn context_run(
    cur: &[u32],
    left: u32,
    up: Option<&[u32]>,
    table: &ContextTable,
    sums: &mut [u32],
    ctx: &mut [u8],
) {
    let w = cur.len();
    sums[0] = 2 * left;
    for (d, &v) in sums[1..].iter_mut().zip(cur) {
        *d = 2 * v;
    }
    if let Some(u) = up {
        for (d, &v) in sums.iter_mut().zip(u) {
            *d += 2 * v;
        }
        for (d, &v) in sums[1..].iter_mut().zip(u) {
            *d += v;
        }
        for (d, &v) in sums[..w - 1].iter_mut().zip(&u[1..]) {
            *d += v;
        }
    }
    // Sums of values capped at 1e4: at most 6e4, no overflow.
    for (c, &s) in ctx.iter_mut().zip(sums.iter()) {
        *c = table[s.min(31) as usize];
    }
}

/// §5.9 context of column `x` of a level row `cur` (rounded magnitudes, the row above `up`
/// if any): the same neighbours and buckets as the coder, but from the whole current grid.
#[inline]
fn context_in_rows(cur: &[u32], up: Option<&[u32]>, x: usize, table: &ContextTable) -> usize {
    let mut s = 0u32;
    if x > 0 {
        s += 2 * cur[x - 1];
    }
    if let Some(u) = up {
        s += 2 * u[x];
        if x > 0 {
            s += u[x - 1];
        }
        if let Some(&r) = u.get(x + 1) {
            s += r;
        }
    }
    usize::from(table[s.min(31) as usize])
}

/// `v.round()` (ties away from zero) without a libm call, so that loops over it vectorise.
#[inline(always)]
fn round_ties_away(v: f32) -> f32 {
    const BIG: f32 = 8_388_608.0; // 2^23: from here on every f32 is an integer.
    let a = v.abs();
    if a.is_nan() || a >= BIG {
        return v; // integers, infinities and NaN
    }
    let t = (a as u32) as f32; // floor, exact below 2^23
    let r = if a - t >= 0.5 { t + 1.0 } else { t };
    r.copysign(v)
}

/// `v.round().abs().min(1e4) as u32` (the magnitude the §5.9 contexts read), vectorisable:
/// capping first gives the same value (and 10^4 for NaN, as before).
#[inline(always)]
fn rounded_magnitude(v: f32) -> u32 {
    let a = v.abs().min(1e4);
    let t = a as u32;
    t + u32::from(a - t as f32 >= 0.5)
}

/// A reduced-resolution view of a pyramid for the coarse phases of a fit: the target averaged
/// over `2^k x 2^k` blocks, and a sampler that reads levels `k..` of the pyramid at strides
/// 1, 2, … of the reduced image, and all-zero stand-ins for levels `0..k` (appended after the
/// latents).
struct CoarseView {
    sm: Sampler,
    target: Vec<f32>,
    /// The target's weights averaged the same way, if it has any (the target is then the
    /// weighted mean of each block).
    weights: Option<Vec<f32>>,
    n_ext: usize,
}

/// `v` (`c` interleaved channels of a `w x h` image) averaged over `2^k x 2^k` blocks.
fn block_means(v: &[f32], w: usize, h: usize, c: usize, k: usize) -> Vec<f32> {
    let f = 1usize << k;
    let (wk, hk) = (w.div_ceil(f), h.div_ceil(f));
    let mut t = vec![0.0f32; wk * hk * c];
    for yk in 0..hk {
        for xk in 0..wk {
            for ch in 0..c {
                let (mut sum, mut n) = (0.0f32, 0.0f32);
                for y in f * yk..(f * yk + f).min(h) {
                    for x in f * xk..(f * xk + f).min(w) {
                        sum += v[(y * w + x) * c + ch];
                        n += 1.0;
                    }
                }
                t[(yk * wk + xk) * c + ch] = sum / n;
            }
        }
    }
    t
}

impl CoarseView {
    fn new(pyr: &Pyramid, target: Target<'_>, c: usize, k: usize, up: Upsampling) -> Self {
        let (w, h) = (pyr.width as usize, pyr.height as usize);
        let f = 1usize << k;
        let (wk, hk) = (w.div_ceil(f), h.div_ceil(f));
        let (t, weights) = match target.weights {
            None => (block_means(target.values, w, h, c, k), None),
            Some(wt) => {
                // Weighted means, so that a sample of weight 0 (a hidden colour) has no say.
                let wv: Vec<f32> = target.values.iter().zip(wt).map(|(v, w)| v * w).collect();
                let (sw, sv) = (block_means(wt, w, h, c, k), block_means(&wv, w, h, c, k));
                let plain = block_means(target.values, w, h, c, k);
                let t = sv
                    .iter()
                    .zip(&sw)
                    .zip(plain)
                    .map(|((&v, &w), p)| if w > 0.0 { v / w } else { p })
                    .collect();
                (t, Some(sw))
            }
        };
        let levels: Vec<(usize, usize, usize)> = (0..k)
            .map(|j| (wk, hk, pyr.n_latents + j * wk * hk))
            .chain(pyr.levels[k..].iter().copied())
            .collect();
        let n_ext = pyr.n_latents + k * wk * hk;
        let exps: Vec<usize> = std::iter::repeat_n(0, k)
            .chain(0..pyr.n_levels() - k)
            .collect();
        let view = Pyramid {
            width: wk as u32,
            height: hk as u32,
            levels,
            n_latents: n_ext,
        };
        CoarseView {
            sm: Sampler::with_strides(view, wk as u32, hk as u32, &exps).upsampled(up),
            target: t,
            weights,
            n_ext,
        }
    }
}

/// Latents per chunk of the fit's parallel per-latent passes; each chunk draws its noise from
/// its own ChaCha8 stream, so the noise does not depend on the thread count.
const NOISE_CHUNK: usize = 1 << 14;

/// `out = lat + U[-1/2, 1/2)` noise, chunk `c` of [`NOISE_CHUNK`] values drawn from stream `c`
/// of a ChaCha8 generator seeded with `key`.
fn add_noise(out: &mut [f32], lat: &[f32], key: u64) {
    out.par_chunks_mut(NOISE_CHUNK)
        .zip(lat.par_chunks(NOISE_CHUNK))
        .enumerate()
        .for_each(|(c, (o, l))| {
            let mut rng = ChaCha8Rng::seed_from_u64(key);
            rng.set_stream(c as u64);
            for (o, &v) in o.iter_mut().zip(l) {
                *o = v + rng.gen_range(-0.5f32..0.5);
            }
        });
}

/// `floor(v)` for |v| up to 10^6 (beyond, the value is clamped first), vectorisable (no libm
/// call): truncation, then one down for negative non-integers.
#[inline(always)]
fn floor_small(v: f32) -> f32 {
    #[allow(clippy::manual_clamp)]
    let c = v.max(-1e6).min(1e6);
    let t = (c as i32) as f32;
    t - f32::from(u8::from(t > c))
}

/// Soft rounding (Agustsson & Theis, as in C3 and Cool-chic) at temperature `t`, written
/// through its fractional part: `floor(v) + 1/2 + c tanh(d / t)` with `d = v - floor(v) - 1/2`
/// and `c = 1 / (2 tanh(1 / 2t))`. Returns the value and `tanh(d / t)` (for the derivative
/// `(1 - tanh²) c / t`). `tanh` from [`kernel::exp`], so every machine gets the same bits.
#[inline(always)]
fn soft_round(v: f32, inv_t: f32, c: f32) -> (f32, f32) {
    let fl = floor_small(v);
    let z = (v - fl - 0.5) * inv_t;
    let th = 1.0 - 2.0 / (kernel::exp(2.0 * z) + 1.0);
    (fl + 0.5 + c * th, th)
}

/// The noise proxy of a fit with soft rounding: `out = sr(sr(lat) + n)` with `n` uniform on
/// [-1/2, 1/2) (drawn as in [`add_noise`]) and `dq` its derivative in `lat`, at temperature
/// `t`. Distortion and rate both see `out`; their gradients are multiplied by `dq`.
fn soft_noise(out: &mut [f32], dq: &mut [f32], lat: &[f32], key: u64, t: f32) {
    add_noise(out, lat, key);
    let inv_t = 1.0 / t;
    let c = 0.5 / (1.0 - 2.0 / (kernel::exp(inv_t) + 1.0)); // 1 / (2 tanh(1 / 2t))
    let k = (c * inv_t) * (c * inv_t);
    out.par_chunks_mut(NOISE_CHUNK)
        .zip(dq.par_chunks_mut(NOISE_CHUNK))
        .zip(lat.par_chunks(NOISE_CHUNK))
        .for_each(|((o, d), l)| soft_chunk(o, d, l, [inv_t, c, k]));
}

/// [`soft_noise`]'s per-latent pass on one chunk (`o` holds `lat + n` on entry). Dispatches at
/// run time to AVX-512 or AVX2 builds of the same code (no FMA, so the same bits).
fn soft_chunk(o: &mut [f32], d: &mut [f32], l: &[f32], ck: [f32; 3]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
            // SAFETY: the CPU supports AVX-512F/VL, checked just above.
            return unsafe { soft_chunk_avx512(o, d, l, ck) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { soft_chunk_avx2(o, d, l, ck) };
        }
    }
    soft_chunk_body(o, d, l, ck)
}

// `soft_chunk_body` built for each instruction set.
kernel::simd_variants! {
    fn [soft_chunk_avx2 = "avx2", soft_chunk_avx512 = "avx512f,avx512vl,avx2"](
        o: &mut [f32],
        d: &mut [f32],
        l: &[f32],
        ck: [f32; 3],
    ) {
        soft_chunk_body(o, d, l, ck)
    }
}

#[inline(always)]
fn soft_chunk_body(o: &mut [f32], d: &mut [f32], l: &[f32], [inv_t, c, k]: [f32; 3]) {
    for ((o, d), &v) in o.iter_mut().zip(d.iter_mut()).zip(l) {
        let n = *o - v;
        let (s, th1) = soft_round(v, inv_t, c);
        let (q, th2) = soft_round(s + n, inv_t, c);
        *o = q;
        *d = k * (1.0 - th1 * th1) * (1.0 - th2 * th2);
    }
}

/// Offset (real layout) of linear map `layer`'s weights: the parameters from there on are
/// that layer's and the later ones'.
pub fn head_offset(arch: &Arch, layer: usize) -> usize {
    arch.tensor_lens().iter().take(2 * layer).sum()
}

/// Result of [`fit`]: network parameters, latents (not yet rounded) and the Laplace scales
/// (per level and context, level-major) the rate model learned.
pub struct Fitted {
    pub params: Vec<f32>,
    pub latents: Vec<f32>,
    pub scales: Vec<f32>,
    /// §5.10 predictor coefficients per level (real numbers); empty without `predict`.
    pub pred_coefs: Vec<[f32; GRID_PRED_TAPS]>,
}

impl Fitted {
    /// The start of a refit ([`GridFit::refit`]) of this fit: its network, entropy model,
    /// predictor and latents.
    pub fn into_start(self) -> GridStart {
        GridStart {
            params: self.params,
            log_scales: self.scales.iter().map(|b| b.ln()).collect(),
            pred_coefs: self.pred_coefs,
            latents: Some(self.latents),
        }
    }
}

/// Fits latents and network to `target` (interleaved, [-1, 1]) at the pyramid's coded size.
/// `progress(step)` is called after every step.
pub fn fit<'t>(
    arch: &Arch,
    pyr: &Pyramid,
    target: impl Into<Target<'t>>,
    cfg: &GridFit,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Fitted {
    fit_from(arch, pyr, target, cfg, seed, None, progress)
}

/// Where a grid fit starts: synthesis parameters (real layout) and the entropy model's
/// log-scales (per level and context, level-major). The latents always start at 0.
#[derive(Debug, Clone, PartialEq)]
pub struct GridStart {
    pub params: Vec<f32>,
    pub log_scales: Vec<f32>,
    /// §5.10 predictor coefficients per level (as real numbers, not fixed point).
    pub pred_coefs: Vec<[f32; GRID_PRED_TAPS]>,
    /// Starting latents (a refit of an earlier fit); `None` = all 0.
    pub latents: Option<Vec<f32>>,
}

/// [`fit`] from `start` instead of the seeded random synthesis and unit scales. A start whose
/// sizes do not match `arch` and the pyramid's level count is ignored (random start).
pub fn fit_from<'t>(
    arch: &Arch,
    pyr: &Pyramid,
    target: impl Into<Target<'t>>,
    cfg: &GridFit,
    seed: u64,
    start: Option<&GridStart>,
    progress: &mut dyn FnMut(usize),
) -> Fitted {
    let target: Target<'_> = target.into();
    let sm = Sampler::with_upsampling(pyr.clone(), pyr.width, pyr.height, cfg.upsampling);
    let n_l = pyr.n_levels();
    let start = start.filter(|s| {
        s.params.len() == model::shape_of(arch).n_params
            && s.log_scales.len() == n_l * MAX_GRID_CONTEXTS
            && s.pred_coefs.len() == n_l
    });
    let mut params = start.map_or_else(|| init_params(arch, seed), |s| s.params.clone());
    let mut lat = start
        .and_then(|s| s.latents.clone())
        .filter(|l| l.len() == pyr.n_latents)
        .unwrap_or_else(|| vec![0.0f32; pyr.n_latents]);
    let mut lnb = start.map_or_else(
        || vec![0.0f32; n_l * MAX_GRID_CONTEXTS],
        |s| s.log_scales.clone(),
    );
    let mut rounded = vec![0u32; pyr.n_latents];
    let grad_from = cfg.net.grad_from(arch.num_tensors() / 2);
    let mut a_net = crate::modulation::Adam::new(
        params.len() - grad_from.map_or(params.len(), |l| head_offset(arch, l)),
    );
    let (lr_latent, lr_scales) = (cfg.latent_lr(), cfg.scale_lr());
    let mut a_b = crate::modulation::Adam::new(n_l * MAX_GRID_CONTEXTS);
    let mut noisy = vec![0.0f32; lat.len()];
    let mut g_feat = Vec::new();
    let mut coefs = start.map_or_else(
        || vec![[0.0f32; GRID_PRED_TAPS]; n_l],
        |s| s.pred_coefs.clone(),
    );
    let mut a_c = crate::modulation::Adam::new(n_l * GRID_PRED_TAPS);
    let mut w_mu = vec![0.0f32; pyr.n_latents];
    let npx = pyr.width as f32 * pyr.height as f32;
    let rate_w = cfg.lambda / npx;
    // Coarse phase: levels 1.. against the half-resolution target (none on a one-level
    // pyramid), then all levels.
    let sched = cfg.schedule();
    let total = cfg.total_steps(n_l);
    let half_end = total - sched.full;
    let noise_steps = half_end + (sched.full as f32 * cfg.noise_frac).round() as usize;
    let pred_from = (total as f32 * cfg.pred_warmup).round() as usize;
    let view = (half_end > 0)
        .then(|| CoarseView::new(pyr, target, arch.out_channels as usize, 1, cfg.upsampling));
    let mut ext = view
        .as_ref()
        .map_or_else(Vec::new, |v| vec![0.0f32; v.n_ext]);
    // Adam state (and step count) per level, so that a level starts fresh when its phase
    // begins; a fit without coarse phases steps them all together, as one Adam.
    let mut a_lat: Vec<crate::modulation::Adam> = pyr
        .levels
        .iter()
        .map(|&(wl, hl, _)| crate::modulation::Adam::new(wl * hl))
        .collect();
    let noise_key = |it: usize, pass: u64| {
        (seed ^ 0x006e_015e)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((it as u64) << 1 | pass)
    };
    let mut dq = if cfg.soft_round.is_some() {
        vec![0.0f32; lat.len()]
    } else {
        Vec::new()
    };
    let mut g_lat = Vec::new();
    for it in 0..total {
        // Levels skipped by this step (0 at full resolution) and the latents it works on.
        let k = usize::from(it < half_end);
        let lo = pyr.levels[k].2;
        let ste = it >= noise_steps;
        if ste {
            noisy[lo..]
                .par_chunks_mut(NOISE_CHUNK)
                .zip(lat[lo..].par_chunks(NOISE_CHUNK))
                .for_each(|(n, l)| {
                    for (n, &v) in n.iter_mut().zip(l) {
                        *n = round_ties_away(v);
                    }
                });
        } else if let Some((t0, t1)) = cfg.soft_round {
            // Temperature from t0 to t1 over the noise steps (the coarse phase at t0).
            let f = it.saturating_sub(half_end) as f32 / (noise_steps - half_end).max(1) as f32;
            let t = t0 + (t1 - t0) * f;
            soft_noise(
                &mut noisy[lo..],
                &mut dq[lo..],
                &lat[lo..],
                noise_key(it, 0),
                t,
            );
        } else {
            add_noise(&mut noisy[lo..], &lat[lo..], noise_key(it, 0));
        }
        let pk = Packed::new(arch, &params);
        let g_net = match view.as_ref().filter(|_| k > 0) {
            Some(v) => {
                ext[lo..noisy.len()].copy_from_slice(&noisy[lo..]);
                let (_, g_net) = distortion_grad_into(
                    &params,
                    &pk,
                    &v.sm,
                    &ext,
                    Target {
                        values: &v.target,
                        weights: v.weights.as_deref(),
                    },
                    &mut g_feat,
                    grad_from,
                    &mut g_lat,
                );
                g_lat.truncate(noisy.len());
                g_net
            }
            None => {
                let (_, g_net) = distortion_grad_into(
                    &params,
                    &pk,
                    &sm,
                    &noisy,
                    target,
                    &mut g_feat,
                    grad_from,
                    &mut g_lat,
                );
                g_net
            }
        };
        if ste {
            // The rate term keeps the noise proxy while the distortion sees rounded latents:
            // rated at the rounded values, a latent at 0 feels no pull back to 0 (the
            // derivative of a symmetric bin is 0 there), so the rate crept up during the
            // straight-through steps. kodim03/07/11, 1,000 steps, λ = 0.005: mean MSE + λ·bpp
            // 2.358e-3 against 2.419e-3 (rated at the latents themselves: 2.371e-3); no
            // change at 100 steps.
            add_noise(&mut noisy, &lat, noise_key(it, 1));
        }
        // Rate: per level and §5.9 context (from the rounded current latents, as the real
        // coder will see them), a Laplace with a learned scale, centred on 0 or (with
        // `cfg.predict`) on the §5.10 prediction from the noisy neighbours.
        rounded[lo..]
            .par_chunks_mut(NOISE_CHUNK)
            .zip(lat[lo..].par_chunks(NOISE_CHUNK))
            .for_each(|(r, l)| {
                for (r, &v) in r.iter_mut().zip(l) {
                    *r = rounded_magnitude(v);
                }
            });
        let pred_on = cfg.predict && it >= pred_from;
        let coefs_now = pred_on.then_some(coefs.as_slice());
        let (g_b, g_c) = rate_grad(
            pyr,
            k,
            &lnb,
            coefs_now,
            &noisy,
            &rounded,
            rate_w,
            &mut g_lat,
            &mut w_mu,
            cfg.contexts,
        );
        if !ste && cfg.soft_round.is_some() {
            // Both terms saw the soft-rounded proxy: back to the latents themselves.
            g_lat[lo..]
                .par_chunks_mut(NOISE_CHUNK)
                .zip(dq[lo..].par_chunks(NOISE_CHUNK))
                .for_each(|(g, d)| {
                    for (g, d) in g.iter_mut().zip(d) {
                        *g *= d;
                    }
                });
        }
        let t = it as f32 / total.max(1) as f32;
        let cos = 0.5 * (1.0 + (std::f32::consts::PI * t).cos());
        let decay = 0.001 + 0.999 * cos;
        for (l, a) in a_lat.iter_mut().enumerate().skip(k) {
            let (wl, hl, off) = pyr.levels[l];
            let r = off..off + wl * hl;
            a.step(&mut lat[r.clone()], &g_lat[r], lr_latent * decay);
        }
        if let Some(l) = grad_from {
            let net_lr = cfg.lr_net * decay * if ste { 0.1 } else { 1.0 };
            let from = head_offset(arch, l);
            a_net.step(&mut params[from..], &g_net[from..], net_lr);
        }
        a_b.step(&mut lnb, &g_b, lr_scales * decay);
        if pred_on {
            let flat: Vec<f32> = g_c.iter().flatten().copied().collect();
            let mut cf: Vec<f32> = coefs.iter().flatten().copied().collect();
            a_c.step(&mut cf, &flat, lr_scales * decay);
            for (c, v) in coefs.iter_mut().zip(cf.chunks_exact(GRID_PRED_TAPS)) {
                c.copy_from_slice(v);
            }
        }
        progress(it + 1);
    }
    Fitted {
        pred_coefs: if cfg.predict { coefs } else { Vec::new() },
        params,
        latents: lat,
        scales: lnb.iter().map(|v| v.exp()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merge of the bands' latent gradients in runs ([`MERGE_CHUNK`]) gives the bits of
    /// the one-task-per-level merge it replaced (each entry summed in band order), on a
    /// pyramid whose finest level spans several runs, with overlapping bands of every level.
    #[test]
    fn merge_in_runs_matches_the_merge_per_level() {
        let pyr = Pyramid::new(400, 260, 4);
        assert!(pyr.levels[0].0 * pyr.levels[0].1 > 3 * MERGE_CHUNK);
        let sm = Sampler::new(pyr.clone(), 400, 260);
        let val = |i: usize| ((i * 2_654_435_761usize) % 1_000) as f32 * 1e-3 - 0.5;
        let mut bands = Vec::new();
        for b in 0..9usize {
            let parts = pyr
                .levels
                .iter()
                .enumerate()
                .map(|(l, &(wl, hl, _))| {
                    // Rows first..first + n, overlapping the next band's by one.
                    let first = (b * hl / 9).min(hl - 1);
                    let n = (hl / 9 + 2).min(hl - first);
                    let v: Vec<f32> = (0..n * wl).map(|i| val(i + 7 * b + 1_000 * l)).collect();
                    (first, v)
                })
                .collect();
            bands.push(BandAdjoint { parts });
        }
        let mut got = vec![f32::NAN; pyr.n_latents];
        sm.merge_adjoint(&bands, &mut got);
        let mut want = vec![0.0f32; pyr.n_latents];
        for (l, &(wl, hl, off)) in pyr.levels.iter().enumerate() {
            let g = &mut want[off..off + wl * hl];
            for band in &bands {
                let (first, src) = &band.parts[l];
                for (d, s) in g[first * wl..][..src.len()].iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    /// Soft rounding: `floor_small` is `floor`; the rounding tends to `round` at low
    /// temperature and to the identity at high; its derivative matches finite differences; the
    /// noise pass gives the same bits on every instruction set and its `dq` is the derivative
    /// of its output.
    #[test]
    fn soft_rounding_and_its_derivative() {
        for v in [
            -3.5f32,
            -2.0,
            -1.25,
            -0.5,
            -1e-7,
            0.0,
            1e-7,
            0.49,
            0.5,
            2.75,
            1e5 + 0.5,
        ] {
            assert_eq!(floor_small(v), v.floor(), "floor({v})");
        }
        let sr = |v: f32, t: f32| {
            let inv = 1.0 / t;
            soft_round(v, inv, 0.5 / (0.5 * inv).tanh())
        };
        for v in [-1.3f32, -0.2, 0.1, 0.4, 0.6, 1.7, 3.2] {
            assert!(
                (sr(v, 0.02).0 - v.round()).abs() < 1e-3,
                "sr({v}) at t = 0.02"
            );
            assert!((sr(v, 20.0).0 - v).abs() < 1e-3, "sr({v}) at t = 20");
            let t = 0.3;
            let (_, th) = sr(v, t);
            let c = 0.5 / (0.5f32 / t).tanh();
            let d = (1.0 - th * th) * c / t;
            let h = 1e-3;
            let fd = (sr(v + h, t).0 - sr(v - h, t).0) / (2.0 * h);
            assert!((d - fd).abs() < 2e-3 * d.max(1.0), "sr'({v}) {d} vs {fd}");
        }
        let lat: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.071)
            .collect();
        let (mut out, mut dq) = (vec![0.0f32; lat.len()], vec![0.0f32; lat.len()]);
        soft_noise(&mut out, &mut dq, &lat, 7, 0.4);
        let mut plain = vec![0.0f32; lat.len()];
        add_noise(&mut plain, &lat, 7);
        let (mut o2, mut d2) = (plain.clone(), vec![0.0f32; lat.len()]);
        let inv_t = 1.0 / 0.4f32;
        let c = 0.5 / (1.0 - 2.0 / (kernel::exp(inv_t) + 1.0));
        soft_chunk_body(
            &mut o2,
            &mut d2,
            &lat,
            [inv_t, c, (c * inv_t) * (c * inv_t)],
        );
        assert_eq!(out, o2, "dispatched and portable soft rounding differ");
        assert_eq!(dq, d2);
        for ((&v, &o), (&p, &d)) in lat.iter().zip(&out).zip(plain.iter().zip(&dq)) {
            let n = p - v;
            let f = |x: f32| sr(sr(x, 0.4).0 + n, 0.4).0;
            let fd = (f(v + 1e-3) - f(v - 1e-3)) / 2e-3;
            assert!((o - f(v)).abs() < 1e-4, "proxy at {v}");
            assert!((d - fd).abs() < 1e-2 * d.max(1.0), "dq at {v}: {d} vs {fd}");
        }
    }

    /// The vectorisable roundings equal `f32::round` (ties away from zero) everywhere that
    /// matters: ties, near-ties, negatives, zeros, large values, the cap, infinities and NaN.
    #[test]
    fn roundings_equal_the_standard_ones() {
        let mut vals = vec![
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.499_999_97,
            -0.499_999_97,
            1e4,
            9_999.5,
            9_999.499,
            1e4 + 0.5,
            3e4,
            -3e4,
            8_388_607.5,
            8_388_608.0,
            1e20,
            -1e20,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        let mut x = -40.0f32;
        while x < 40.0 {
            vals.push(x);
            x += 0.061_3;
        }
        for v in vals {
            assert_eq!(
                round_ties_away(v).to_bits(),
                v.round().to_bits(),
                "round({v})"
            );
            assert_eq!(
                rounded_magnitude(v),
                v.round().abs().min(1e4) as u32,
                "|round({v})|"
            );
        }
        assert!(round_ties_away(f32::NAN).is_nan());
        assert_eq!(
            rounded_magnitude(f32::NAN),
            f32::NAN.round().abs().min(1e4) as u32
        );
    }

    /// The run-time selected y passes of the fit's sampling (AVX-512 or AVX, for any level
    /// count) give the bits of the portable code, tails included.
    #[test]
    fn lane_passes_match_the_portable_code_bit_for_bit() {
        let val = |i: usize, k: usize| ((i * 37 + k * 11) % 29) as f32 * 0.173 - 2.4;
        for n_l in [1usize, 2, 3, 4, 5, 7, 8, 9, 10, 12, 15, 16] {
            for w in [1usize, 3, 7, 16, 37, 53] {
                let len = w * n_l;
                let a: Vec<f32> = (0..len).map(|i| val(i, 1)).collect();
                let b: Vec<f32> = (0..len).map(|i| val(i, 2)).collect();
                let wy: Vec<f32> = (0..n_l).map(|l| val(l, 3) * 0.2).collect();
                let w0: Vec<f32> = wy.iter().map(|v| 1.0 - v).collect();
                let (mut o1, mut o2) = (vec![0.0f32; len], vec![0.0f32; len]);
                lane_pass(LanePass::Lerp {
                    a: &a,
                    b: &b,
                    wy: &wy,
                    out: &mut o1,
                });
                lane_pass_portable(
                    LanePass::Lerp {
                        a: &a,
                        b: &b,
                        wy: &wy,
                        out: &mut o2,
                    },
                    0,
                );
                assert_eq!(o1, o2, "lerp, {n_l} levels, width {w}");
                let (mut s0, mut s1) = (a.clone(), b.clone());
                let (mut t0, mut t1) = (a.clone(), b.clone());
                let src: Vec<f32> = (0..len).map(|i| val(i, 4)).collect();
                lane_pass(LanePass::Axpy2 {
                    s0: &mut s0,
                    s1: &mut s1,
                    src: &src,
                    w0: &w0,
                    w1: &wy,
                });
                lane_pass_portable(
                    LanePass::Axpy2 {
                        s0: &mut t0,
                        s1: &mut t1,
                        src: &src,
                        w0: &w0,
                        w1: &wy,
                    },
                    0,
                );
                assert_eq!((&s0, &s1), (&t0, &t1), "axpy, {n_l} levels, width {w}");
                // The portable code is the formula, lane by lane.
                for i in 0..len {
                    assert_eq!(o2[i], a[i] + wy[i % n_l] * (b[i] - a[i]));
                    assert_eq!(t0[i], a[i] + w0[i % n_l] * src[i]);
                }
            }
        }
    }

    /// The row-wise contexts of the fit's rate term equal the per-latent ones (§5.9), on rows
    /// of width 1, 2 and more, with and without a row above, small values and capped ones, for
    /// both context sets; the tables are the coder's buckets.
    #[test]
    fn row_contexts_equal_per_latent_contexts() {
        for ctxs in [GridContexts::Five, GridContexts::Twelve] {
            let table = context_table(ctxs);
            for s in 0..100_000u32 {
                assert_eq!(
                    usize::from(table[s.min(31) as usize]),
                    ctxs.bucket(s),
                    "{s}"
                );
            }
            assert_eq!(usize::from(table[31]) + 1, ctxs.count());
            row_contexts_with(&table);
        }
    }

    fn row_contexts_with(table: &ContextTable) {
        let vals = [0u32, 1, 0, 2, 5, 0, 0, 3, 10_000, 1, 0, 4, 0, 0, 7];
        for w in [1usize, 2, 3, 8, 15] {
            for shift in 0..4 {
                let cur: Vec<u32> = (0..w).map(|i| vals[(i + shift) % vals.len()]).collect();
                let up: Vec<u32> = (0..w).map(|i| vals[(i * 3 + shift) % vals.len()]).collect();
                for above in [None, Some(up.as_slice())] {
                    let (mut sums, mut ctx) = (vec![0u32; w], vec![0u8; w]);
                    context_row(&cur, above, table, &mut sums, &mut ctx);
                    for (x, &c) in ctx.iter().enumerate() {
                        assert_eq!(
                            usize::from(c),
                            context_in_rows(&cur, above, x, table),
                            "w {w} x {x}"
                        );
                    }
                }
            }
        }
    }
}
