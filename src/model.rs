//! The SIREN model: shapes from a [`format::Arch`], SIREN initialisation, input features
//! (coordinates and Fourier features) and whole-grid evaluation.

use crate::format::Arch;
use crate::kernel::{self, InferScratch, NetShape, TILE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Kernel shape of an architecture.
pub fn shape_of(arch: &Arch) -> NetShape {
    NetShape::new(
        &arch.layer_dims(),
        arch.w0_first as f32,
        arch.w0_hidden as f32,
    )
}

/// SIREN initialisation (Sitzmann et al.): first layer `U(-1/n, 1/n)`, later layers
/// `U(-sqrt(6/n)/w0, sqrt(6/n)/w0)` (n = fan-in); biases `U(-1/sqrt(n), 1/sqrt(n))`
/// as in the reference implementation (PyTorch's default). Seeded ChaCha8 so the same seed gives the same net.
pub fn siren_init(shape: &NetShape, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = vec![0.0f32; shape.n_params];
    for (l, ly) in shape.layers.iter().enumerate() {
        let n = ly.n_in as f32;
        let bound = if l == 0 {
            1.0 / n
        } else {
            let w0 = shape.layers[l - 1].w0.unwrap_or(1.0);
            (6.0 / n).sqrt() / w0
        };
        for v in &mut p[ly.w_off..ly.w_off + ly.n_in * ly.n_out] {
            *v = rng.gen_range(-bound..bound);
        }
        let bb = 1.0 / n.sqrt();
        for v in &mut p[ly.b_off..ly.b_off + ly.n_out] {
            *v = rng.gen_range(-bb..bb);
        }
    }
    p
}

/// Coordinate of pixel centre `i` of `n` along one axis, in (-1, 1): `(2i+1)/n - 1` in f32.
#[inline]
pub fn coord(i: u32, n: u32) -> f32 {
    (2 * i as u64 + 1) as f32 / n as f32 - 1.0
}

/// Per-axis feature table: for each position along an axis of length `n`, the coordinate
/// followed by `sin(pi f_k c)` and `cos(pi f_k c)` for k = 0..pe_freqs, `f_k = base^k`
/// (base = pe_base_milli / 1000, powers by repeated f32 multiplication).
pub fn axis_table(arch: &Arch, n: u32) -> Vec<f32> {
    let per = 1 + 2 * arch.pe_freqs as usize;
    let base = arch.pe_base_milli as f32 / 1000.0;
    let mut freqs = Vec::with_capacity(arch.pe_freqs as usize);
    let mut f = 1.0f32;
    for _ in 0..arch.pe_freqs {
        freqs.push(std::f32::consts::PI * f);
        f *= base;
    }
    let mut t = Vec::with_capacity(per * n as usize);
    for i in 0..n {
        let c = coord(i, n);
        t.push(c);
        for &fr in &freqs {
            let (s, co) = kernel::sincos(fr * c);
            t.push(s);
            t.push(co);
        }
    }
    t
}

/// Input features for the 2-D grid: `[x, y, then for each k: sin_x, cos_x, sin_y, cos_y]`.
pub struct Grid2 {
    pub width: u32,
    pub height: u32,
    per: usize,
    xs: Vec<f32>,
    ys: Vec<f32>,
}

impl Grid2 {
    pub fn new(arch: &Arch, width: u32, height: u32) -> Self {
        Grid2 {
            width,
            height,
            per: 1 + 2 * arch.pe_freqs as usize,
            xs: axis_table(arch, width),
            ys: axis_table(arch, height),
        }
    }
    pub fn n_features(&self) -> usize {
        2 * self.per
    }
    /// Write the features of pixel `idx` (row-major) into `out` (`n_features` long).
    #[inline]
    pub fn features(&self, idx: usize, out: &mut [f32]) {
        let w = self.width as usize;
        let (px, py) = (idx % w, idx / w);
        let fx = &self.xs[px * self.per..(px + 1) * self.per];
        let fy = &self.ys[py * self.per..(py + 1) * self.per];
        out[0] = fx[0];
        out[1] = fy[0];
        for k in 0..(self.per - 1) / 2 {
            out[2 + 4 * k] = fx[1 + 2 * k];
            out[3 + 4 * k] = fx[2 + 2 * k];
            out[4 + 4 * k] = fy[1 + 2 * k];
            out[5 + 4 * k] = fy[2 + 2 * k];
        }
    }
}

/// Map a network output to an 8-bit sample: `clamp(round((y + 1) * 127.5), 0, 255)`.
#[inline]
pub fn to_u8(y: f32) -> u8 {
    ((y + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// Map an 8-bit sample to the network's target range [-1, 1].
#[inline]
pub fn from_u8(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// Evaluate the network on a `width x height` grid; returns interleaved 8-bit samples.
/// Deterministic (inference kernel) and parallel over rows of tiles; the result does not
/// depend on the number of threads.
pub fn render(arch: &Arch, params: &[f32], width: u32, height: u32) -> Vec<u8> {
    let shape = shape_of(arch);
    let grid = Grid2::new(arch, width, height);
    let c = shape.n_out();
    let nf = grid.n_features();
    let n = width as usize * height as usize;
    let mut out = vec![0u8; n * c];
    let mut packed = vec![0.0f32; shape.n_packed];
    shape.pack(params, &mut packed);
    let params = &packed[..];
    // Chunks of 16 tiles per task.
    let chunk_px = TILE * 16;
    out.par_chunks_mut(chunk_px * c).enumerate().for_each_init(
        || {
            (
                InferScratch::new(&shape),
                vec![0.0f32; TILE * nf],
                vec![0.0f32; TILE * c],
            )
        },
        |(scratch, x, y), (ci, dst)| {
            let start = ci * chunk_px;
            let npx = dst.len() / c;
            let mut done = 0;
            while done < npx {
                let rows = TILE.min(npx - done);
                for r in 0..rows {
                    grid.features(start + done + r, &mut x[r * nf..(r + 1) * nf]);
                }
                kernel::forward_tile_infer(&shape, params, x, rows, y, scratch);
                for (d, &v) in dst[done * c..(done + rows) * c].iter_mut().zip(y.iter()) {
                    *d = to_u8(v);
                }
                done += rows;
            }
        },
    );
    out
}

/// Sums of squared errors (8-bit samples, against `original`) of [`render`] for each of
/// `params[0]` (the reference) and the variants `params[1..]`, in one pass over the pixels.
/// A variant is evaluated from the first layer whose parameters differ from the reference's,
/// on the reference's activations there, so a probe of a late layer costs only the layers from
/// it on; every sum equals that of rendering the variant whole (the same operations in the same
/// order, and an exact integer sum).
pub fn render_sse_many(
    arch: &Arch,
    params: &[Vec<f32>],
    width: u32,
    height: u32,
    original: &[u8],
) -> Vec<u64> {
    let Some(reference) = params.first() else {
        return Vec::new();
    };
    let shape = shape_of(arch);
    let grid = Grid2::new(arch, width, height);
    let c = shape.n_out();
    let nf = grid.n_features();
    let n = width as usize * height as usize;
    // The first layer each variant changes (layers.len(): none).
    let from: Vec<usize> = params
        .iter()
        .map(|p| {
            let first = p
                .iter()
                .zip(reference)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            first.map_or(shape.layers.len(), |i| {
                shape
                    .layers
                    .iter()
                    .position(|ly| i < ly.b_off + ly.n_out)
                    .unwrap_or(0)
            })
        })
        .collect();
    let packed: Vec<Vec<f32>> = params
        .iter()
        .map(|p| {
            let mut pk = vec![0.0f32; shape.n_packed];
            shape.pack(p, &mut pk);
            pk
        })
        .collect();
    let chunk_px = TILE * 16;
    let sse_tile = |y: &[f32], orig: &[u8]| -> u64 {
        y.iter()
            .zip(orig)
            .map(|(&v, &o)| {
                let d = i64::from(to_u8(v)) - i64::from(o);
                (d * d) as u64
            })
            .sum()
    };
    let chunks = n.div_ceil(chunk_px);
    (0..chunks)
        .into_par_iter()
        .map_init(
            || {
                let capture: Vec<Vec<f32>> = shape
                    .layers
                    .iter()
                    .map(|ly| vec![0.0f32; TILE * ly.in_stride])
                    .collect();
                (
                    InferScratch::new(&shape),
                    vec![0.0f32; TILE * nf],
                    vec![0.0f32; TILE * c],
                    capture,
                )
            },
            |(scratch, x, y, capture), ci| {
                let mut sums = vec![0u64; params.len()];
                let start = ci * chunk_px;
                let npx = chunk_px.min(n - start);
                let mut done = 0;
                while done < npx {
                    let rows = TILE.min(npx - done);
                    for r in 0..rows {
                        grid.features(start + done + r, &mut x[r * nf..(r + 1) * nf]);
                    }
                    let orig = &original[(start + done) * c..(start + done + rows) * c];
                    kernel::forward_tile_infer_capture(
                        &shape, &packed[0], x, rows, y, scratch, capture,
                    );
                    let ref_sse = sse_tile(&y[..rows * c], orig);
                    sums[0] += ref_sse;
                    for (i, pk) in packed.iter().enumerate().skip(1) {
                        let f = from[i];
                        sums[i] += if f == shape.layers.len() {
                            ref_sse
                        } else {
                            let input: &[f32] = if f == 0 { x } else { &capture[f] };
                            kernel::forward_tile_infer_from(&shape, pk, f, input, rows, y, scratch);
                            sse_tile(&y[..rows * c], orig)
                        };
                    }
                    done += rows;
                }
                sums
            },
        )
        .reduce(
            || vec![0u64; params.len()],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// Input features of one audio window of `len` frames (`coord_dims = 1`, codec-spec §11.7):
/// frame `i` has the coordinate `(2i + 1) / len - 1` followed by its Fourier features, exactly
/// as one axis of [`Grid2`]. A shorter last window keeps the coordinates of a full window.
pub struct Grid1 {
    pub len: u32,
    per: usize,
    table: Vec<f32>,
}

impl Grid1 {
    pub fn new(arch: &Arch, len: u32) -> Self {
        Grid1 {
            len,
            per: 1 + 2 * arch.pe_freqs as usize,
            table: axis_table(arch, len),
        }
    }
    pub fn n_features(&self) -> usize {
        self.per
    }
    /// Write the features of frame `idx` into `out` (`n_features` long).
    #[inline]
    pub fn features(&self, idx: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.table[idx * self.per..(idx + 1) * self.per]);
    }
}

/// Evaluate a window network (real-layout `params`) on the first `frames` frames of `grid`;
/// returns the raw network outputs, `frames * out_channels`, channels interleaved.
/// Single-threaded and deterministic (the inference kernel of codec-spec §8.3).
pub fn render_window(arch: &Arch, params: &[f32], grid: &Grid1, frames: usize) -> Vec<f32> {
    let shape = shape_of(arch);
    let c = shape.n_out();
    let nf = grid.n_features();
    let mut packed = vec![0.0f32; shape.n_packed];
    shape.pack(params, &mut packed);
    let mut scratch = InferScratch::new(&shape);
    let mut x = vec![0.0f32; TILE * nf];
    let mut y = vec![0.0f32; TILE * c];
    let mut out = Vec::with_capacity(frames * c);
    let mut done = 0;
    while done < frames {
        let rows = TILE.min(frames - done);
        for r in 0..rows {
            grid.features(done + r, &mut x[r * nf..(r + 1) * nf]);
        }
        kernel::forward_tile_infer(&shape, &packed, &x, rows, &mut y, &mut scratch);
        out.extend_from_slice(&y[..rows * c]);
        done += rows;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pass over the pixels gives every variant's exact sum of squared errors: variants of
    /// the first layer, a hidden layer, the last layer, several layers and none, on an image
    /// of several chunks with a partial last tile.
    #[test]
    fn render_sse_many_equals_rendering_each_variant() {
        let arch = Arch {
            coord_dims: 2,
            out_channels: 3,
            width: 20,
            depth: 4,
            pe_freqs: 2,
            pe_base_milli: 2000,
            w0_first: 30,
            w0_hidden: 1,
        };
        let shape = shape_of(&arch);
        let (w, h) = (77u32, 29u32);
        let reference = siren_init(&shape, 5);
        let original: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let lens = arch.tensor_lens();
        let nudge = |p: &mut Vec<f32>, tensor: usize| {
            let off: usize = lens[..tensor].iter().sum();
            for (i, v) in p[off..off + lens[tensor]].iter_mut().enumerate() {
                *v += 0.01 * ((i % 7) as f32 - 3.0);
            }
        };
        let mut variants = vec![reference.clone(), reference.clone()];
        for tensors in [&[0usize][..], &[3], &[4, 5], &[lens.len() - 2], &[2, 7]] {
            let mut p = reference.clone();
            for &t in tensors {
                nudge(&mut p, t);
            }
            variants.push(p);
        }
        let got = render_sse_many(&arch, &variants, w, h, &original);
        let want: Vec<u64> = variants
            .iter()
            .map(|p| {
                render(&arch, p, w, h)
                    .iter()
                    .zip(&original)
                    .map(|(&a, &b)| (i64::from(a) - i64::from(b)).pow(2) as u64)
                    .sum()
            })
            .collect();
        assert_eq!(got, want);
        // The variants do differ from the reference.
        assert!(want[2..].iter().all(|&s| s != want[0]), "{want:?}");
    }
}
