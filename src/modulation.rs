//! Modulation mode (COIN++-style, `codec-spec.md` §12): one shared, meta-learned SIREN whose
//! sine layers are shifted per pixel by `s = z M`, where `z` is a latent vector and `M` a
//! learned linear map shipped with the base. Per image only a grid of latents is stored.
//!
//! Seams: latents live on the corners of a grid of `cell x cell` pixel cells and are
//! interpolated bilinearly (interpolating `z M` is interpolating `z`, since the map is
//! linear), and the network sees *periodic* coordinates within the cell (a tent wave and
//! `sin/cos(2 pi f t)` with integer frequencies), which are continuous across cell borders.
//! So the decoded image is a continuous function of position: there are no tile borders at
//! all. The cost is that every pixel mixes four latents, which the base learns to use.
//!
//! Encoding fits only the latents (Adam, a few to a few hundred steps) through the fused
//! kernel with per-row shifts; meta-training ([`meta_train_step`]) fits the base and the map
//! with the latents adapted by that same encoder loop (first-order, as in CAVIA).

use crate::format::Arch;
use crate::kernel::{self, InferScratch, NetShape, TileIo, TrainScratch, TILE};
use crate::media::Image;
use crate::model::{self, from_u8, to_u8};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// A modulated network: the SIREN of `arch`, its weights, and the latent-to-shift map.
#[derive(Debug, Clone, PartialEq)]
pub struct ModNet {
    pub arch: Arch,
    pub latent_dim: usize,
    pub cell: u32,
    /// Network weights, real layout (§6.1).
    pub params: Vec<f32>,
    /// `M`, `[latent_dim][n_shift]` row-major; column `l * width + j` is unit `j` of sine
    /// layer `l`.
    pub map: Vec<f32>,
}

impl ModNet {
    /// Number of shifted units: `depth * width`.
    pub fn n_shift(arch: &Arch) -> usize {
        usize::from(arch.depth) * usize::from(arch.width)
    }

    /// SIREN-initialised network and a small random map, from `seed`.
    pub fn init(arch: Arch, latent_dim: usize, cell: u32, seed: u64) -> ModNet {
        let shape = model::shape_of(&arch);
        let params = model::siren_init(&shape, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d61_7073);
        let h = Self::n_shift(&arch);
        let bound = 0.1 / (latent_dim as f32).sqrt();
        let map = (0..latent_dim * h)
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        ModNet {
            arch,
            latent_dim,
            cell,
            params,
            map,
        }
    }

    /// Builds from a base's flat weights: network weights, then the map (§10, v2).
    pub fn from_flat(arch: Arch, latent_dim: usize, cell: u32, flat: &[f32]) -> Option<ModNet> {
        let n = arch.num_params();
        let m = latent_dim * Self::n_shift(&arch);
        if flat.len() != n + m {
            return None;
        }
        Some(ModNet {
            arch,
            latent_dim,
            cell,
            params: flat[..n].to_vec(),
            map: flat[n..].to_vec(),
        })
    }

    /// The weights as stored in a base file: network, then map.
    pub fn flat(&self) -> Vec<f32> {
        let mut v = self.params.clone();
        v.extend_from_slice(&self.map);
        v
    }

    /// Shifts of every node, `nodes x n_shift`, from node-major latents `z` (`nodes x d`):
    /// `S[n][k] = sum_i z[n][i] * M[i][k]`, summed over `i` ascending from 0 (§12.6).
    pub fn node_shifts(&self, z: &[f32]) -> Vec<f32> {
        let d = self.latent_dim;
        let h = Self::n_shift(&self.arch);
        let nodes = z.len() / d.max(1);
        let mut s = vec![0.0f32; nodes * h];
        for (sn, zn) in s.chunks_exact_mut(h).zip(z.chunks_exact(d)) {
            for (&zi, mi) in zn.iter().zip(self.map.chunks_exact(h)) {
                for (a, &m) in sn.iter_mut().zip(mi) {
                    *a += zi * m;
                }
            }
        }
        s
    }
}

/// Position of output pixel `i` of `n_out` along an axis coded with `n_src` pixels: the node
/// to its left/top and its weight `t` towards the next node. With `num = (2i + 1) n_src` and
/// `den = 2 c n_out`: node `num div den`, `t = f32(num mod den) / f32(den)` (§12.6). At the
/// coded size this is `((2i + 1) mod 2c) / 2c`.
#[inline]
pub fn axis_pos(i: u32, n_out: u32, n_src: u32, cell: u32) -> (u32, f32) {
    let num = (2 * u64::from(i) + 1) * u64::from(n_src);
    let den = 2 * u64::from(cell) * u64::from(n_out);
    ((num / den) as u32, (num % den) as f32 / den as f32)
}

/// Periodic features along one axis of length `n`: per position `[tent(t), sin(2 pi f_k t),
/// cos(2 pi f_k t) for k < pe_freqs]`, `tent(t) = 1 - 2|2t - 1|`, `f_k = base^k` (§12.6).
pub fn periodic_table(arch: &Arch, n: u32, n_src: u32, cell: u32) -> Vec<f32> {
    let per = 1 + 2 * arch.pe_freqs as usize;
    let base = arch.pe_base_milli as f32 / 1000.0;
    let mut freqs = Vec::with_capacity(arch.pe_freqs as usize);
    let mut f = 1.0f32;
    for _ in 0..arch.pe_freqs {
        freqs.push(std::f32::consts::TAU * f);
        f *= base;
    }
    let mut t = Vec::with_capacity(per * n as usize);
    for i in 0..n {
        let (_, u) = axis_pos(i, n, n_src, cell);
        t.push(1.0 - 2.0 * (2.0 * u - 1.0).abs());
        for &fr in &freqs {
            let (s, c) = kernel::sincos(fr * u);
            t.push(s);
            t.push(c);
        }
    }
    t
}

/// Grid sizes in nodes: `(ceil(w / c) + 1, ceil(h / c) + 1)`.
pub fn grid_dims(width: u32, height: u32, cell: u32) -> (u32, u32) {
    (width.div_ceil(cell) + 1, height.div_ceil(cell) + 1)
}

/// Features and interpolation positions of a `width x height` image, or of a clip of `width`
/// frames (`height` 1) when the network has one coordinate (audio, §12.7): the grid is then
/// one row of `ceil(frames / cell) + 1` nodes and every frame blends two of them.
pub struct ModGrid {
    pub width: u32,
    pub height: u32,
    pub gw: u32,
    pub gh: u32,
    /// Coordinate dimensions: 2 (image) or 1 (audio).
    dims: usize,
    per: usize,
    xs: Vec<f32>,
    ys: Vec<f32>,
    xi: Vec<(u32, f32)>,
    yi: Vec<(u32, f32)>,
}

impl ModGrid {
    /// Grid of an image coded at its own size.
    pub fn new(net: &ModNet, width: u32, height: u32) -> ModGrid {
        Self::scaled(net, (width, height), (width, height))
    }
    /// Grid rendering `out` pixels from latents coded for an image of `src` pixels.
    pub fn scaled(net: &ModNet, src: (u32, u32), out: (u32, u32)) -> ModGrid {
        let c = net.cell;
        if net.arch.coord_dims == 1 {
            // A clip is rendered at its coded rate only (§12.7), where the features and the
            // fraction of frame x depend on x mod c alone: tables of one cell, O(c) memory.
            return ModGrid {
                width: src.0,
                height: 1,
                gw: src.0.div_ceil(c) + 1,
                gh: 1,
                dims: 1,
                per: 1 + 2 * net.arch.pe_freqs as usize,
                xs: periodic_table(&net.arch, c, c, c),
                ys: Vec::new(),
                xi: (0..c).map(|i| axis_pos(i, c, c, c)).collect(),
                yi: Vec::new(),
            };
        }
        let (gw, gh) = grid_dims(src.0, src.1, net.cell);
        ModGrid {
            width: out.0,
            height: out.1,
            gw,
            gh,
            dims: 2,
            per: 1 + 2 * net.arch.pe_freqs as usize,
            xs: periodic_table(&net.arch, out.0, src.0, c),
            ys: periodic_table(&net.arch, out.1, src.1, c),
            xi: (0..out.0).map(|i| axis_pos(i, out.0, src.0, c)).collect(),
            yi: (0..out.1).map(|i| axis_pos(i, out.1, src.1, c)).collect(),
        }
    }
    pub fn nodes(&self) -> usize {
        self.gw as usize * self.gh as usize
    }
    pub fn n_features(&self) -> usize {
        self.dims * self.per
    }
    /// Features of pixel `(x, y)`, laid out as [`model::Grid2`] does.
    #[inline]
    fn features(&self, x: u32, y: u32, out: &mut [f32]) {
        if self.dims == 1 {
            let ph = (x % (self.xi.len() as u32)) as usize;
            out[..self.per].copy_from_slice(&self.xs[ph * self.per..][..self.per]);
            return;
        }
        let fx = &self.xs[x as usize * self.per..][..self.per];
        let fy = &self.ys[y as usize * self.per..][..self.per];
        out[0] = fx[0];
        out[1] = fy[0];
        for k in 0..(self.per - 1) / 2 {
            out[2 + 4 * k] = fx[1 + 2 * k];
            out[3 + 4 * k] = fx[2 + 2 * k];
            out[4 + 4 * k] = fy[1 + 2 * k];
            out[5 + 4 * k] = fy[2 + 2 * k];
        }
    }
    /// The four nodes of pixel `(x, y)` (`00, 10, 01, 11`) and their weights; in one
    /// dimension the two nodes of frame `x` come first and the last two weights are 0.
    #[inline]
    fn corners(&self, x: u32, y: u32) -> ([usize; 4], [f32; 4], (f32, f32)) {
        if self.dims == 1 {
            let c = self.xi.len() as u32;
            let (n0, tx) = ((x / c) as usize, self.xi[(x % c) as usize].1);
            return (
                [n0, n0 + 1, n0, n0 + 1],
                [1.0 - tx, tx, 0.0, 0.0],
                (tx, 0.0),
            );
        }
        let (jx, tx) = self.xi[x as usize];
        let (jy, ty) = self.yi[y as usize];
        let gw = self.gw as usize;
        let n00 = jy as usize * gw + jx as usize;
        (
            [n00, n00 + 1, n00 + gw, n00 + gw + 1],
            [
                (1.0 - ty) * (1.0 - tx),
                (1.0 - ty) * tx,
                ty * (1.0 - tx),
                ty * tx,
            ],
            (tx, ty),
        )
    }
    /// Writes the shift rows of pixel `(x, y)` at tile row `r` (layout of
    /// [`kernel::forward_tile_infer_shifted`]): `(1-ty)((1-tx) S00 + tx S10) + ty((1-tx) S01 +
    /// tx S11)`, evaluated in that order (§12.6).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn fill_shift(
        &self,
        s: &[f32],
        h: usize,
        width: usize,
        x: u32,
        y: u32,
        r: usize,
        buf: &mut [f32],
        st: usize,
    ) {
        let (n, _, (tx, ty)) = self.corners(x, y);
        if self.dims == 1 {
            // §12.7: `s = (1 - t) S0 + t S1`.
            let (s0, s1) = (&s[n[0] * h..][..h], &s[n[1] * h..][..h]);
            let u = 1.0 - tx;
            for l in 0..h / width {
                let row = &mut buf[(l * TILE + r) * st..][..width];
                let o = l * width;
                for j in 0..width {
                    row[j] = u * s0[o + j] + tx * s1[o + j];
                }
            }
            return;
        }
        let (s00, s10, s01, s11) = (
            &s[n[0] * h..][..h],
            &s[n[1] * h..][..h],
            &s[n[2] * h..][..h],
            &s[n[3] * h..][..h],
        );
        let (ux, uy) = (1.0 - tx, 1.0 - ty);
        for l in 0..h / width {
            let row = &mut buf[(l * TILE + r) * st..][..width];
            let o = l * width;
            for j in 0..width {
                let top = ux * s00[o + j] + tx * s10[o + j];
                let bot = ux * s01[o + j] + tx * s11[o + j];
                row[j] = uy * top + ty * bot;
            }
        }
    }
}

/// Per-thread buffers of the renderers: inference scratch, a tile of `nf` input features, a
/// tile of outputs and a tile of shift rows.
fn render_scratch(shape: &NetShape, nf: usize) -> (InferScratch, Vec<f32>, Vec<f32>, Vec<f32>) {
    let st = shape.shift_stride().unwrap_or(0);
    (
        InferScratch::new(shape),
        vec![0.0f32; TILE * nf],
        vec![0.0f32; TILE * shape.n_out()],
        vec![0.0f32; shape.n_sine() * TILE * st],
    )
}

/// Renders `width x height` from node-major latents `z` (`nodes x latent_dim`). Deterministic
/// (inference kernel, fixed order) and independent of the number of threads.
pub fn render(net: &ModNet, z: &[f32], width: u32, height: u32) -> Vec<u8> {
    render_scaled(net, z, (width, height), (width, height))
}

/// Renders `out` pixels from latents coded for an image of `src` pixels (any output size).
pub fn render_scaled(net: &ModNet, z: &[f32], src: (u32, u32), out: (u32, u32)) -> Vec<u8> {
    let (width, height) = out;
    let shape = model::shape_of(&net.arch);
    let grid = ModGrid::scaled(net, src, out);
    let s = net.node_shifts(z);
    let h = ModNet::n_shift(&net.arch);
    let wd = usize::from(net.arch.width);
    let st = shape.shift_stride().unwrap_or(0);
    let c = shape.n_out();
    let nf = grid.n_features();
    let mut packed = vec![0.0f32; shape.n_packed];
    shape.pack(&net.params, &mut packed);
    let mut img = vec![0u8; width as usize * height as usize * c];
    let w = width as usize;
    img.par_chunks_mut(w * c).enumerate().for_each_init(
        || render_scratch(&shape, nf),
        |(scratch, x, yb, sh), (py, dst)| {
            let py = py as u32;
            let mut done = 0;
            while done < w {
                let rows = TILE.min(w - done);
                for r in 0..rows {
                    let px = (done + r) as u32;
                    grid.features(px, py, &mut x[r * nf..(r + 1) * nf]);
                    grid.fill_shift(&s, h, wd, px, py, r, sh, st);
                }
                kernel::forward_tile_infer_shifted(&shape, &packed, x, rows, yb, scratch, Some(sh));
                for (d, &v) in dst[done * c..(done + rows) * c].iter_mut().zip(yb.iter()) {
                    *d = to_u8(v);
                }
                done += rows;
            }
        },
    );
    img
}

/// Gradients of one pass over (a subset of) an image.
pub struct PassOut {
    /// Sum of squared errors (target scale [-1, 1]) and number of values.
    pub sse: f64,
    pub count: usize,
    /// Gradient of the mean squared error w.r.t. each node's shifts, `nodes x n_shift`.
    pub g_nodes: Vec<f32>,
    /// Gradient w.r.t. the network weights (real layout), when asked for.
    pub g_params: Option<Vec<f32>>,
}

/// The data of one image being fitted.
pub struct Target<'a> {
    pub grid: ModGrid,
    /// `pixels x channels` in [-1, 1].
    pub values: Vec<f32>,
    pub original: &'a [u8],
}

impl<'a> Target<'a> {
    pub fn new(net: &ModNet, img: &'a Image) -> Target<'a> {
        Target {
            grid: ModGrid::new(net, img.width, img.height),
            values: img.data.iter().map(|&v| from_u8(v)).collect(),
            original: &img.data,
        }
    }
}

impl Target<'static> {
    /// A clip for a network with one coordinate: `values` holds `frames x out_channels`
    /// values in [-1, 1], channels interleaved.
    pub fn audio(net: &ModNet, values: Vec<f32>) -> Target<'static> {
        let c = usize::from(net.arch.out_channels).max(1);
        let frames = (values.len() / c) as u32;
        Target {
            grid: ModGrid::new(net, frames, 1),
            values,
            original: &[],
        }
    }
}

/// Frames of a clip coded with `frames` frames: values of frames `start .. start + len`
/// (`len x out_channels`, channels interleaved, unclamped), from node-major latents `z` of the
/// whole clip (`(ceil(frames / cell) + 1) x latent_dim`). Only the shifts of the nodes the
/// range touches are computed, so rendering a long clip in ranges needs memory for one range.
/// Deterministic and independent of the number of threads (§12.7).
pub fn render_audio(net: &ModNet, z: &[f32], frames: u32, start: u32, len: u32) -> Vec<f32> {
    const CHUNK: usize = 4096;
    let shape = model::shape_of(&net.arch);
    let grid = ModGrid::new(net, frames, 1);
    let h = ModNet::n_shift(&net.arch);
    let d = net.latent_dim;
    let wd = usize::from(net.arch.width);
    let st = shape.shift_stride().unwrap_or(0);
    let c = shape.n_out();
    let nf = grid.n_features();
    let cell = net.cell;
    let mut packed = vec![0.0f32; shape.n_packed];
    shape.pack(&net.params, &mut packed);
    let mut out = vec![0.0f32; len as usize * c];
    out.par_chunks_mut(CHUNK * c).enumerate().for_each_init(
        || render_scratch(&shape, nf),
        |(scratch, x, yb, sh), (k, dst)| {
            let a = start + (k * CHUNK) as u32;
            let n = dst.len() / c;
            let n0 = a / cell;
            let n1 = (a + n as u32 - 1) / cell + 1;
            let ls = net.node_shifts(&z[n0 as usize * d..(n1 as usize + 1) * d]);
            let mut done = 0;
            while done < n {
                let rows = TILE.min(n - done);
                for r in 0..rows {
                    // Same phase, node index relative to n0.
                    let px = a + (done + r) as u32 - n0 * cell;
                    grid.features(px, 0, &mut x[r * nf..(r + 1) * nf]);
                    grid.fill_shift(&ls, h, wd, px, 0, r, sh, st);
                }
                kernel::forward_tile_infer_shifted(&shape, &packed, x, rows, yb, scratch, Some(sh));
                dst[done * c..(done + rows) * c].copy_from_slice(&yb[..rows * c]);
                done += rows;
            }
        },
    );
    out
}

/// Packed network weights for the kernels.
pub struct Packed {
    shape: NetShape,
    w: Vec<f32>,
    wt: Vec<f32>,
}

impl Packed {
    pub fn new(net: &ModNet) -> Packed {
        let shape = model::shape_of(&net.arch);
        let mut w = vec![0.0; shape.n_packed];
        let mut wt = vec![0.0; shape.n_packed_t];
        shape.pack(&net.params, &mut w);
        shape.pack_transposed(&net.params, &mut wt);
        Packed { shape, w, wt }
    }
}

/// Frames per band of a clip in [`pass`], rounded down to whole cells (at least one cell).
pub const BAND_FRAMES_1D: u32 = 1024;

/// A band of [`pass`]: a `bw x rows` rectangle of pixels from `(x0, y0)` and the `len` nodes
/// from `lo` it touches.
struct Band {
    x0: u32,
    bw: u32,
    y0: u32,
    rows: u32,
    lo: usize,
    len: usize,
}

impl Band {
    /// Pixel `p` of the band, row-major.
    #[inline]
    fn pixel(&self, p: u32) -> (u32, u32) {
        (self.x0 + p % self.bw, self.y0 + p / self.bw)
    }
}

/// Forward + backward over the pixels of `tgt` (a random `frac` of each band of cell rows when
/// `frac < 1`, drawn from `seed`). Work is split into bands of `cell` pixel rows, each band
/// writes only its own two node rows, and bands are summed in order: deterministic whatever
/// the number of threads.
pub fn pass(
    net: &ModNet,
    pk: &Packed,
    tgt: &Target<'_>,
    shifts: &[f32],
    frac: f32,
    seed: u64,
    weight_grad: bool,
) -> PassOut {
    let shape = &pk.shape;
    let g = &tgt.grid;
    let h = ModNet::n_shift(&net.arch);
    let wd = usize::from(net.arch.width);
    let st = shape.shift_stride().unwrap_or(0);
    let c = shape.n_out();
    let nf = g.n_features();
    let cell = net.cell;
    let gwn = g.gw as usize;
    let (w, hgt) = (g.width, g.height);
    // Bands: `cell` pixel rows of an image (node rows b and b + 1), or about `BAND_FRAMES_1D` frames of
    // a clip (nodes `b K ..= (b + 1) K`).
    let k1 = (BAND_FRAMES_1D / cell).max(1);
    let n_bands = if g.dims == 1 {
        w.div_ceil(k1 * cell) as usize
    } else {
        hgt.div_ceil(cell) as usize
    };
    let band = |b: usize| -> Band {
        if g.dims == 1 {
            let x0 = b as u32 * k1 * cell;
            let lo = b * k1 as usize;
            Band {
                x0,
                bw: (k1 * cell).min(w - x0),
                y0: 0,
                rows: 1,
                lo,
                len: (k1 as usize + 1).min(gwn - lo),
            }
        } else {
            let y0 = b as u32 * cell;
            Band {
                x0: 0,
                bw: w,
                y0,
                rows: (y0 + cell).min(hgt) - y0,
                lo: b * gwn,
                len: 2 * gwn,
            }
        }
    };
    let total: usize = (0..n_bands)
        .map(|b| {
            let bd = band(b);
            let n = (bd.bw * bd.rows) as usize;
            ((n as f32 * frac).ceil() as usize).clamp(1, n)
        })
        .sum();
    let scale = 1.0 / (total * c) as f32;
    let np = shape.n_packed;
    let results: Vec<(f64, Vec<f32>, Option<Vec<f32>>)> = (0..n_bands)
        .into_par_iter()
        .map_init(
            || {
                (
                    TrainScratch::new(shape),
                    vec![0.0f32; TILE * c],
                    vec![0.0f32; shape.n_sine() * TILE * st],
                    vec![0.0f32; shape.n_sine() * TILE * st],
                )
            },
            |(scratch, tg, sh, gs), b| {
                let bd = band(b);
                let n = (bd.bw * bd.rows) as usize;
                let take = ((n as f32 * frac).ceil() as usize).clamp(1, n);
                let mut idx: Vec<u32> = (0..n as u32).collect();
                if take < n {
                    let mut rng = ChaCha8Rng::seed_from_u64(
                        seed ^ (b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    idx.shuffle(&mut rng);
                    idx.truncate(take);
                    idx.sort_unstable();
                }
                let mut gl = vec![0.0f32; bd.len * h];
                let mut gp = weight_grad.then(|| vec![0.0f32; np]);
                let mut sse = 0.0;
                for tile in idx.chunks(TILE) {
                    let rows = tile.len();
                    let x = scratch.input_mut();
                    for (r, &p) in tile.iter().enumerate() {
                        let (px, py) = bd.pixel(p);
                        g.features(px, py, &mut x[r * nf..(r + 1) * nf]);
                        let pi = (py * w + px) as usize;
                        tg[r * c..(r + 1) * c].copy_from_slice(&tgt.values[pi * c..(pi + 1) * c]);
                    }
                    for (r, &p) in tile.iter().enumerate() {
                        let (px, py) = bd.pixel(p);
                        g.fill_shift(shifts, h, wd, px, py, r, sh, st);
                    }
                    let io = TileIo {
                        weight: None,
                        target: tg,
                        rows,
                        grad_scale: scale,
                        grad: gp.as_deref_mut(),
                        shift: Some(sh),
                        gshift: Some(gs),
                        ginput: None,
                        grad_from: 0,
                    };
                    sse += kernel::train_tile_io(shape, &pk.w, &pk.wt, io, scratch);
                    for (r, &p) in tile.iter().enumerate() {
                        let (px, py) = bd.pixel(p);
                        let (nodes, wts, _) = g.corners(px, py);
                        for (&nd, &wt) in nodes.iter().zip(&wts) {
                            let local = nd - bd.lo;
                            let dst = &mut gl[local * h..][..h];
                            for l in 0..h / wd {
                                let src = &gs[(l * TILE + r) * st..][..wd];
                                for (a, &v) in dst[l * wd..][..wd].iter_mut().zip(src) {
                                    *a += wt * v;
                                }
                            }
                        }
                    }
                }
                (sse, gl, gp)
            },
        )
        .collect();
    let mut g_nodes = vec![0.0f32; g.nodes() * h];
    let mut g_packed = weight_grad.then(|| vec![0.0f32; np]);
    let mut sse = 0.0;
    for (b, (s, gl, gp)) in results.into_iter().enumerate() {
        sse += s;
        let bd = band(b);
        for (a, &v) in g_nodes[bd.lo * h..][..bd.len * h].iter_mut().zip(&gl) {
            *a += v;
        }
        if let (Some(acc), Some(gp)) = (g_packed.as_mut(), gp) {
            for (a, v) in acc.iter_mut().zip(gp) {
                *a += v;
            }
        }
    }
    let g_params = g_packed.map(|gp| {
        let mut real = vec![0.0f32; shape.n_params];
        shape.unpack(&gp, &mut real);
        real
    });
    PassOut {
        sse,
        count: total * c,
        g_nodes,
        g_params,
    }
}

/// Latent gradient `gz[n][i] = sum_k M[i][k] G[n][k]` plus the gradient of the penalty
/// `l2 * sum(z^2) / count` (`count` = values in the pass, so it is relative to the MSE).
pub fn latent_grad(net: &ModNet, g_nodes: &[f32], z: &[f32], l2: f32, count: usize) -> Vec<f32> {
    let l2 = l2 / count.max(1) as f32;
    let d = net.latent_dim;
    let h = ModNet::n_shift(&net.arch);
    let mut gz = vec![0.0f32; z.len()];
    for ((gzn, gn), zn) in gz
        .chunks_exact_mut(d)
        .zip(g_nodes.chunks_exact(h))
        .zip(z.chunks_exact(d))
    {
        for (i, (gi, mi)) in gzn.iter_mut().zip(net.map.chunks_exact(h)).enumerate() {
            let dot: f32 = mi.iter().zip(gn).map(|(a, b)| a * b).sum();
            *gi = dot + 2.0 * l2 * zn[i];
        }
    }
    gz
}

/// Map gradient `gM[i][k] = sum_n z[n][i] G[n][k]`, added to `acc`.
pub fn map_grad_acc(net: &ModNet, g_nodes: &[f32], z: &[f32], acc: &mut [f32]) {
    let d = net.latent_dim;
    let h = ModNet::n_shift(&net.arch);
    for (gn, zn) in g_nodes.chunks_exact(h).zip(z.chunks_exact(d)) {
        for (&zi, ai) in zn.iter().zip(acc.chunks_exact_mut(h)) {
            if zi != 0.0 {
                for (a, &g) in ai.iter_mut().zip(gn) {
                    *a += zi * g;
                }
            }
        }
    }
}

/// [`Adam::step`]s of at least this many parameters run in parallel runs of [`ADAM_CHUNK`].
const ADAM_PAR_MIN: usize = 1 << 16;
const ADAM_CHUNK: usize = 1 << 14;

/// Plain Adam.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Adam {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u32,
}

impl Adam {
    pub fn new(n: usize) -> Adam {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }
    pub fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.t += 1;
        let bc1 = 1.0 - B1.powi(self.t as i32);
        let bc2 = 1.0 - B2.powi(self.t as i32);
        let a = lr * bc2.sqrt() / bc1;
        let eps = 1e-8 * bc2.sqrt();
        let run = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *p -= a * *m / (v.sqrt() + eps);
            }
        };
        // Each entry's update stands alone, so runs in parallel give the same bits; a grid
        // fit's latents (half a million on a 768x512 image) were a serial pass per step.
        if p.len() >= ADAM_PAR_MIN {
            p.par_chunks_mut(ADAM_CHUNK)
                .zip(self.m.par_chunks_mut(ADAM_CHUNK))
                .zip(self.v.par_chunks_mut(ADAM_CHUNK))
                .zip(g.par_chunks(ADAM_CHUNK))
                .for_each(|(((p, m), v), g)| run(p, m, v, g));
        } else {
            run(p, &mut self.m, &mut self.v, g);
        }
    }
}

/// Settings of the latent fit (the encoder's inner loop; meta-training uses the same).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatentFit {
    pub steps: usize,
    pub lr: f32,
    /// Fraction of each band's pixels per step.
    pub frac: f32,
    /// L2 penalty on the latents (per value, relative to the mean squared error).
    pub l2: f32,
}

impl Default for LatentFit {
    fn default() -> Self {
        LatentFit {
            steps: 50,
            lr: 0.05,
            frac: 0.25,
            l2: 0.0,
        }
    }
}

/// Learning rate of latent step `s` (0-based): `lr / (1 + s / 100)`. It does not depend on
/// the number of steps, so a longer fit continues a shorter one.
pub fn latent_lr(cfg: &LatentFit, s: usize) -> f32 {
    cfg.lr / (1.0 + s as f32 / 100.0)
}

/// Fits node-major latents for `tgt` from zero with Adam, calling `on_step(step)` after each
/// step, and returns the latents with the lowest measured loss (each step's pass measures the
/// loss before its update, and one more pass measures the final latents when `steps > 0`).
/// Since the schedule does not depend on `steps`, with `frac = 1` more steps never give a
/// higher loss.
pub fn fit_latents(
    net: &ModNet,
    pk: &Packed,
    tgt: &Target<'_>,
    cfg: &LatentFit,
    seed: u64,
    on_step: &mut dyn FnMut(usize),
) -> Vec<f32> {
    let n = tgt.grid.nodes() * net.latent_dim;
    let mut z = vec![0.0f32; n];
    let mut opt = Adam::new(n);
    let mut best: Option<(f64, Vec<f32>)> = None;
    let loss = |out: &PassOut, z: &[f32]| {
        let l2: f64 = z.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        out.sse / out.count as f64 + f64::from(cfg.l2) * l2 / out.count as f64
    };
    for s in 0..=cfg.steps {
        let shifts = net.node_shifts(&z);
        let out = pass(
            net,
            pk,
            tgt,
            &shifts,
            cfg.frac,
            seed.wrapping_add(s as u64),
            false,
        );
        let l = loss(&out, &z);
        if best.as_ref().is_none_or(|(b, _)| l < *b) {
            best = Some((l, z.clone()));
        }
        if s == cfg.steps {
            break;
        }
        let gz = latent_grad(net, &out.g_nodes, &z, cfg.l2, out.count);
        opt.step(&mut z, &gz, latent_lr(cfg, s));
        on_step(s + 1);
    }
    best.map_or(z, |(_, b)| b)
}

/// `z` rounded to multiples of `q` (what the decoder sees for step `q`).
pub fn quantized(z: &[f32], q: f32) -> Vec<f32> {
    z.iter()
        .map(|&v| (v / q).round().clamp(-32767.0, 32767.0) * q)
        .collect()
}

/// Quantization-aware fine-tuning of latents for step `q` (straight-through: the loss and its
/// gradient are taken at the rounded latents, the update applies to the continuous ones).
/// Returns the continuous latents whose rounded version had the lowest measured loss (the
/// input latents count as a candidate, so this never makes the rounded loss worse).
#[allow(clippy::too_many_arguments)]
pub fn finetune_quantized(
    net: &ModNet,
    pk: &Packed,
    tgt: &Target<'_>,
    z0: &[f32],
    q: f32,
    steps: usize,
    lr: f32,
    frac: f32,
    seed: u64,
) -> Vec<f32> {
    let mut z = z0.to_vec();
    let mut opt = Adam::new(z.len());
    let mut best: Option<(f64, Vec<f32>)> = None;
    for s in 0..=steps {
        let zq = quantized(&z, q);
        let shifts = net.node_shifts(&zq);
        let out = pass(
            net,
            pk,
            tgt,
            &shifts,
            frac,
            seed.wrapping_add(s as u64),
            false,
        );
        let l = out.sse / out.count as f64;
        if best.as_ref().is_none_or(|(b, _)| l < *b) {
            best = Some((l, z.clone()));
        }
        if s == steps {
            break;
        }
        let gz = latent_grad(net, &out.g_nodes, &zq, 0.0, out.count);
        opt.step(&mut z, &gz, lr);
    }
    best.map_or(z, |(_, b)| b)
}

/// PSNR of rendered latents against the target image.
pub fn psnr_of(net: &ModNet, z: &[f32], img: &Image) -> f64 {
    crate::fit::psnr_u8(&render(net, z, img.width, img.height), &img.data)
}

/// Meta-training settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModMetaConfig {
    pub iterations: usize,
    /// Crops per outer step.
    pub tasks: usize,
    pub crop_min: u32,
    pub crop_max: u32,
    /// The encoder loop run on each crop (its `steps` are the inner steps).
    pub inner: LatentFit,
    /// Adam learning rate of the base and map, decayed with a cosine to a tenth.
    pub outer_lr: f32,
    /// Uniform noise of this width is added to the adapted latents before the outer gradient
    /// (a stand-in for quantization with that step, so the base learns to tolerate it).
    pub noise: f32,
    pub seed: u64,
}

/// State of a meta-training run (checkpointable).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModMetaState {
    pub iteration: usize,
    pub flat: Vec<f32>,
    pub opt: Adam,
}

/// One outer step `i`: for each of `cfg.tasks` random augmented crops, adapt latents with the
/// encoder loop, then take the gradient of the final loss w.r.t. the network and the map at
/// the adapted latents (first order), and apply Adam. Returns the mean task PSNR (from the
/// final pass's MSE).
pub fn meta_train_step(
    net: &mut ModNet,
    opt: &mut Adam,
    images: &[Image],
    cfg: &ModMetaConfig,
    i: usize,
) -> f64 {
    outer_step(net, opt, cfg, i, |net, pk, rng, _, g| {
        let img = &images[rng.gen_range(0..images.len())];
        let side = |rng: &mut ChaCha8Rng, n: u32| {
            let hi = cfg.crop_max.min(n).max(1);
            let lo = cfg.crop_min.min(hi).max(1);
            rng.gen_range(lo..=hi)
        };
        let cw = side(rng, img.width);
        let ch = side(rng, img.height);
        let x0 = rng.gen_range(0..=img.width - cw);
        let y0 = rng.gen_range(0..=img.height - ch);
        let d: u8 = rng.gen_range(0..8);
        let crop = crate::meta::augmented_crop(img, x0, y0, cw, ch, d);
        let tgt = Target::new(net, &crop);
        task_grad(net, pk, &tgt, cfg, rng, g)
    })
}

/// The outer loop of one meta-training step `i`: for each of `cfg.tasks` tasks, a task RNG
/// from `(seed, i, k)` and `task(net, packed, rng, k, grad)`, which adds its gradient and
/// returns its PSNR; then the outer update. Returns the mean task PSNR.
fn outer_step(
    net: &mut ModNet,
    opt: &mut Adam,
    cfg: &ModMetaConfig,
    i: usize,
    mut task: impl FnMut(&ModNet, &Packed, &mut ChaCha8Rng, usize, &mut [f32]) -> f64,
) -> f64 {
    let pk = Packed::new(net);
    let mut g = vec![0.0f32; net.params.len() + net.map.len()];
    let mut psnr = 0.0;
    for k in 0..cfg.tasks {
        let mut rng = ChaCha8Rng::seed_from_u64(
            cfg.seed ^ ((i * cfg.tasks + k) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        psnr += task(net, &pk, &mut rng, k, &mut g);
    }
    outer_update(net, opt, &g, cfg, i);
    psnr / cfg.tasks.max(1) as f64
}

/// One task of an outer step: adapt latents to `tgt` with the encoder loop, add the first-order
/// gradient of the final loss w.r.t. the network and the map to `g` (network, then map), and
/// return the task's PSNR.
fn task_grad(
    net: &ModNet,
    pk: &Packed,
    tgt: &Target<'_>,
    cfg: &ModMetaConfig,
    rng: &mut ChaCha8Rng,
    g: &mut [f32],
) -> f64 {
    let np = net.params.len();
    let seed = rng.gen::<u64>();
    let mut z = fit_latents(net, pk, tgt, &cfg.inner, seed, &mut |_| {});
    if cfg.noise > 0.0 {
        for v in &mut z {
            *v += cfg.noise * (rng.gen::<f32>() - 0.5);
        }
    }
    let shifts = net.node_shifts(&z);
    let out = pass(net, pk, tgt, &shifts, 1.0, seed ^ 1, true);
    let mse = out.sse / out.count as f64;
    if let Some(gp) = &out.g_params {
        for (a, &b) in g[..np].iter_mut().zip(gp) {
            *a += b;
        }
    }
    map_grad_acc(net, &out.g_nodes, &z, &mut g[np..]);
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

/// The outer Adam step `i` on the network and the map with the summed task gradients `g`.
fn outer_update(net: &mut ModNet, opt: &mut Adam, g: &[f32], cfg: &ModMetaConfig, i: usize) {
    let np = net.params.len();
    let t = i as f32 / cfg.iterations.max(1) as f32;
    let lr = cfg.outer_lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * t).cos()));
    let mut flat = net.flat();
    opt.step(&mut flat, g, lr);
    let (p, m) = flat.split_at(np);
    net.params.copy_from_slice(p);
    net.map.copy_from_slice(m);
}

/// One outer step `i` of an audio modulation base (a network with one coordinate): each task
/// is a random segment of `crop_min ..= crop_max` frames of a clip, with a random gain and
/// polarity ([`crate::meta::audio_task`]); otherwise as [`meta_train_step`]. Every clip must
/// have the network's `out_channels` channels.
pub fn meta_train_step_audio(
    net: &mut ModNet,
    opt: &mut Adam,
    clips: &[crate::audio::Audio],
    cfg: &ModMetaConfig,
    i: usize,
) -> f64 {
    outer_step(net, opt, cfg, i, |net, pk, rng, k, g| {
        let lo = cfg.crop_min.min(cfg.crop_max).max(1);
        let window = rng.gen_range(lo..=cfg.crop_max.max(lo));
        let acfg = crate::meta::AudioMetaConfig {
            window,
            seed: cfg.seed,
            ..Default::default()
        };
        let task = crate::meta::audio_task(clips, &acfg, i, k);
        let tgt = Target::audio(net, task.samples);
        task_grad(net, pk, &tgt, cfg, rng, g)
    })
}

/// Mean PSNR (waveform mapped to [0, 1]) over `clips` (each `frames x out_channels` values in
/// [-1, 1]) after the encoder loop `fit`, rendered exactly (unquantized, unclamped).
pub fn validate_audio(net: &ModNet, clips: &[Vec<f32>], fit: &LatentFit) -> f64 {
    let pk = Packed::new(net);
    let c = usize::from(net.arch.out_channels).max(1);
    let sum: f64 = clips
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let tgt = Target::audio(net, v.clone());
            let z = fit_latents(net, &pk, &tgt, fit, k as u64, &mut |_| {});
            let frames = (v.len() / c) as u32;
            let y = render_audio(net, &z, frames, 0, frames);
            let se: f64 = y
                .iter()
                .zip(v)
                .map(|(&a, &b)| f64::from(a.clamp(-1.0, 1.0) - b).powi(2))
                .sum();
            10.0 * (4.0 / (se / v.len().max(1) as f64).max(1e-12)).log10()
        })
        .sum();
    sum / clips.len().max(1) as f64
}

/// Mean PSNR over `images` after the encoder loop `fit`, rendered exactly (unquantized).
pub fn validate(net: &ModNet, images: &[Image], fit: &LatentFit) -> f64 {
    let pk = Packed::new(net);
    let sum: f64 = images
        .iter()
        .enumerate()
        .map(|(k, img)| {
            let tgt = Target::new(net, img);
            let z = fit_latents(net, &pk, &tgt, fit, k as u64, &mut |_| {});
            psnr_of(net, &z, img)
        })
        .sum();
    sum / images.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adam in parallel chunks (large steps) gives the bits of the serial update, step after
    /// step.
    #[test]
    fn parallel_adam_matches_the_serial_update() {
        let n = ADAM_PAR_MIN + 3 * ADAM_CHUNK + 17;
        let mut p: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
            .collect();
        let mut q = p.clone();
        let mut a = Adam::new(n);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        for t in 1..=3i32 {
            let g: Vec<f32> = (0..n)
                .map(|i| ((i * 13 + t as usize) % 29) as f32 * 0.1 - 1.4)
                .collect();
            a.step(&mut p, &g, 0.01);
            let (b1, b2) = (0.9f32, 0.999f32);
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let s = 0.01 * bc2.sqrt() / bc1;
            for i in 0..n {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                q[i] -= s * m[i] / (v[i].sqrt() + 1e-8 * bc2.sqrt());
            }
            assert!(
                p.iter().zip(&q).all(|(x, y)| x.to_bits() == y.to_bits()),
                "step {t}"
            );
        }
    }
}
