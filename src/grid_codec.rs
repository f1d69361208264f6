//! The grid-mode image codec (`codec-spec.md` §13): fit a latent pyramid and a small SIREN
//! jointly under a rate–distortion objective, round the latents, quantize the network per
//! tensor, and entropy-code everything with the adaptive coder of §5 (one "tensor" per latent
//! level). Nothing is shared between files: no base is needed to decode.

use crate::codec::{DecodeError, DecodeOptions, EncodeError, Encoded, Progress};
use crate::fit::psnr_u8;
use crate::format::{self, max_abs_for_bits, Arch, GridInrFile, Limits, QTensor, Step};
use crate::grid::{self, GridFit, Pyramid, Sampler};
use crate::media::Image;
use crate::quant;

/// Settings of a grid-mode encode.
#[derive(Debug, Clone)]
pub struct GridEncodeConfig {
    pub fit: GridFit,
    /// Latent levels L (strides 1 ..= 2^(L-1)).
    pub levels: u8,
    /// Hidden width and number of sine layers of the synthesis network.
    pub width: u16,
    pub depth: u8,
    /// SIREN w0 of every sine layer.
    pub w0: u16,
    /// Bit widths tried for the network tensors; the encoder keeps the one with the lowest
    /// `MSE + lambda * bpp` measured on the decoder's output and the real file size.
    pub net_bits: Vec<u8>,
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
}

impl Default for GridEncodeConfig {
    fn default() -> Self {
        GridEncodeConfig {
            fit: GridFit::default(),
            levels: DEFAULT_LEVELS,
            width: 16,
            depth: 2,
            w0: 2,
            net_bits: vec![8, 10, 12],
            seed: 0,
            threads: None,
        }
    }
}

/// Default number of latent levels.
pub const DEFAULT_LEVELS: u8 = 8;

/// Rate weights of the grid presets, from the smallest file to the best quality (see the
/// README's grid-mode table for the rates they give on Kodak).
pub const GRID_PRESET_LAMBDAS: [(&str, f32); 5] = [
    ("tiny", 0.03),
    ("small", 0.012),
    ("medium", 0.005),
    ("large", 0.002),
    ("huge", 0.0008),
];

/// The synthesis network of a configuration for `channels` outputs.
pub fn grid_arch(cfg: &GridEncodeConfig, channels: u8) -> Arch {
    Arch {
        coord_dims: cfg.levels,
        out_channels: channels,
        width: cfg.width,
        depth: cfg.depth,
        pe_freqs: 0,
        pe_base_milli: 1000,
        w0_first: cfg.w0,
        w0_hidden: cfg.w0,
    }
}

/// Latent tensors: each level rounded to integers (step 1), with the smallest bit width
/// that holds its largest magnitude.
fn latent_tensors(pyr: &Pyramid, lat: &[f32]) -> Vec<QTensor> {
    let step = Step::from_f32(1.0);
    pyr.levels
        .iter()
        .map(|&(wl, hl, off)| {
            let symbols: Vec<i32> = lat[off..off + wl * hl]
                .iter()
                .map(|&v| v.round().clamp(-32767.0, 32767.0) as i32)
                .collect();
            let m = symbols.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
            let bits = (2..=16u8).find(|&b| m <= max_abs_for_bits(b)).unwrap_or(16);
            QTensor {
                step,
                bits,
                symbols,
            }
        })
        .collect()
}

fn net_tensors(arch: &Arch, params: &[f32], bits: u8) -> Vec<QTensor> {
    let mut off = 0;
    arch.tensor_lens()
        .into_iter()
        .map(|n| {
            let w = &params[off..off + n];
            off += n;
            let step = quant::choose_step(w, bits);
            QTensor {
                step,
                bits,
                symbols: quant::quantize(w, step, bits),
            }
        })
        .collect()
}

/// Network parameters and latents of a file, dequantized (§13.3).
fn dequantized(f: &GridInrFile) -> (Vec<f32>, Vec<f32>) {
    let t = f.arch.num_tensors();
    let params = f.tensors[..t].iter().flat_map(|q| q.dequantize()).collect();
    let lat = f.tensors[t..].iter().flat_map(|q| q.dequantize()).collect();
    (params, lat)
}

/// Encodes `img` in grid mode.
///
/// # Errors
/// [`EncodeError::Parameter`] for bad settings; [`EncodeError::Format`] when the image is too
/// large for a default decoder in this mode (latent count, rendering work).
pub fn encode_grid(
    img: &Image,
    cfg: &GridEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Encoded, EncodeError> {
    crate::codec::with_threads(cfg.threads, || encode_inner(img, cfg, progress))
}

fn encode_inner(
    img: &Image,
    cfg: &GridEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Encoded, EncodeError> {
    let npx = img.width as usize * img.height as usize;
    if npx == 0 || img.data.len() != npx * usize::from(img.channels) {
        return Err(EncodeError::Parameter("empty or inconsistent image".into()));
    }
    let f = &cfg.fit;
    let finite_pos = |v: f32| v.is_finite() && v > 0.0;
    let valid = finite_pos(f.lr_latent)
        && finite_pos(f.lr_net)
        && f.lambda.is_finite()
        && f.lambda >= 0.0
        && (0.0..=1.0).contains(&f.noise_frac);
    if !valid {
        return Err(EncodeError::Parameter(
            "grid fit: learning rates > 0, lambda >= 0, 0 <= noise fraction <= 1".into(),
        ));
    }
    if cfg.net_bits.is_empty() || cfg.net_bits.iter().any(|b| !(2..=16).contains(b)) {
        return Err(EncodeError::Parameter(
            "network bit widths must be in 2..=16".into(),
        ));
    }
    let arch = grid_arch(cfg, img.channels);
    // Refuse up front what a default decoder would reject (levels, size, latent count, work).
    format::grid_tensor_lens(img.width, img.height, &arch, &Limits::default())?;
    let pyr = Pyramid::new(img.width, img.height, cfg.levels);
    let target: Vec<f32> = img.data.iter().map(|&v| crate::model::from_u8(v)).collect();
    let total = f.steps;
    let fitted = grid::fit(&arch, &pyr, &target, f, cfg.seed, &mut |s| {
        if s % 10 == 0 || s == total {
            progress(&Progress {
                step: s,
                total,
                psnr: None,
                phase: "fit",
            })
        }
    });
    let latents = latent_tensors(&pyr, &fitted.latents);
    let sm = Sampler::new(pyr.clone(), img.width, img.height);
    // Keep the network bit width with the best measured MSE + lambda * bpp.
    let mut best: Option<(f64, Vec<u8>, Vec<u8>, f64)> = None;
    for &bits in &cfg.net_bits {
        let mut tensors = net_tensors(&arch, &fitted.params, bits);
        tensors.extend(latents.iter().cloned());
        let file = GridInrFile {
            width: img.width,
            height: img.height,
            arch,
            tensors,
        };
        let bytes = format::write_grid_file(&file)?;
        let (params, lat) = dequantized(&file);
        let data = grid::render(&arch, &params, &lat, &sm);
        let psnr = psnr_u8(&data, &img.data);
        let mse = 10f64.powf(-psnr / 10.0);
        let bpp = bytes.len() as f64 * 8.0 / npx as f64;
        let cost = mse + f64::from(f.lambda) * bpp;
        if best.as_ref().is_none_or(|b| cost < b.0) {
            best = Some((cost, bytes, data, psnr));
        }
    }
    let Some((_, bytes, data, psnr)) = best else {
        return Err(EncodeError::Parameter("no network bit width".into()));
    };
    Ok(Encoded {
        bpp: bytes.len() as f64 * 8.0 / npx as f64,
        bytes,
        recon: Image {
            width: img.width,
            height: img.height,
            channels: img.channels,
            data,
        },
        psnr,
    })
}

/// Decodes a grid-mode file (the caller has checked [`format::is_grid_file`]).
///
/// # Errors
/// Format errors and limits.
pub fn decode_grid(bytes: &[u8], opts: &DecodeOptions) -> Result<Image, DecodeError> {
    let file = format::read_grid_file(bytes, &opts.limits)?;
    let (w, h) = opts.size.unwrap_or((file.width, file.height));
    if w == 0 || h == 0 {
        return Err(DecodeError::Parameter(format!(
            "output size {w}x{h} (expected both sides >= 1)"
        )));
    }
    let per_px = file.arch.num_params() as u64 + 4 * u64::from(file.arch.coord_dims);
    opts.limits.check_render(w, h, per_px)?;
    let (params, lat) = dequantized(&file);
    let pyr = Pyramid::new(file.width, file.height, file.arch.coord_dims);
    let sm = Sampler::new(pyr, w, h);
    let data = grid::render(&file.arch, &params, &lat, &sm);
    Ok(Image {
        width: w,
        height: h,
        channels: file.arch.out_channels,
        data,
    })
}
