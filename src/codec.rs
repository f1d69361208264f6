//! Encoder and decoder: ties media, model, fitting, quantization and the container together.

use crate::base::{self, Base, BaseError};
use crate::fit::{psnr_u8, tensor_bits, FitEvent, Fitter, Phase, QuantSpec, Signal};
use crate::format::{self, Arch, InrFile, Limits, QTensor};
use crate::media::Image;
use crate::model::{self, Grid2};

/// Quality presets, from the smallest file to the best quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Preset {
    /// 8 sine layers x 24, 6-bit weights, 3,000 steps: the smallest files.
    Tiny,
    /// 10 x 32, 6-bit, 2,000 steps.
    Small,
    /// 10 x 44, 6-bit, 3,000 steps of 32k pixels (default).
    Medium,
    /// 10 x 60, 6-bit, 2,000 steps of 32k pixels.
    Large,
    /// 10 x 80, 6-bit, 1,000 steps of 32k pixels: the largest files.
    Huge,
}

/// Everything the encoder needs to know. `Default` gives the `medium` preset.
#[derive(Debug, Clone)]
pub struct EncodeConfig {
    pub preset: Preset,
    /// Hidden width (overrides the preset).
    pub width: Option<usize>,
    /// Number of sine layers (overrides the preset).
    pub depth: Option<usize>,
    /// Quantization bit width (overrides the preset).
    pub bits: Option<u8>,
    /// Fitting steps (overrides the preset).
    pub steps: Option<usize>,
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
    /// Stop the fitting phase early once the exact rendered PSNR reaches this (dB).
    pub target_psnr: Option<f64>,
    /// Fourier features per coordinate (expert).
    pub pe_freqs: Option<u8>,
    /// SIREN w0 of the first layer (expert).
    pub w0: Option<u16>,
    /// Adam learning rate (expert).
    pub lr: Option<f32>,
    /// Pixels per minibatch (expert).
    pub batch: Option<usize>,
    /// Which initialisation fitting starts from.
    pub base: BaseChoice,
}

/// The start of fitting: a meta-learned base (whose id goes into the file, the weights then
/// being coded as residuals from it) or a random SIREN initialisation.
#[derive(Debug, Clone, Default)]
pub enum BaseChoice {
    /// The embedded base for the chosen architecture if this binary has one, else random.
    #[default]
    Default,
    /// Random SIREN initialisation (seeded); the file needs no base to decode.
    None,
    /// This base (its architecture overrides the preset's).
    Custom(Base),
}

impl Default for EncodeConfig {
    fn default() -> Self {
        EncodeConfig {
            preset: Preset::Medium,
            width: None,
            depth: None,
            bits: None,
            steps: None,
            seed: 0,
            threads: None,
            target_psnr: None,
            pe_freqs: None,
            w0: None,
            lr: None,
            batch: None,
            base: BaseChoice::Default,
        }
    }
}

/// Progress reports sent by the encoder.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
    /// PSNR (dB) of the current fit on the training pixels, if measured at this step.
    pub psnr: Option<f64>,
    pub phase: &'static str,
}

/// Result of encoding.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The complete `.inr` file.
    pub bytes: Vec<u8>,
    /// The decoder's reconstruction (bit-identical to what `decode` produces).
    pub recon: Image,
    /// PSNR (dB) of `recon` against the input.
    pub psnr: f64,
    /// 8 x file bytes / pixels.
    pub bpp: f64,
}

/// Options of [`decode`]. `Default` renders at the coded size with [`Limits::default`].
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Render at this size instead of the coded one.
    pub size: Option<(u32, u32)>,
    /// Resource limits checked before allocating or rendering (raise them to decode
    /// unusually large files, lower them for untrusted input).
    pub limits: Limits,
    /// Bases to look for (besides the embedded ones) when a file names one.
    pub bases: Vec<Base>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("invalid parameter: {0}")]
    Parameter(String),
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    /// The audio source could not be read.
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// Writing the decoded audio (or reading a reference clip) failed.
    #[error(transparent)]
    Audio(crate::audio::AudioError),
}

/// Internal parameters a preset expands to.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub arch: Arch,
    pub bits: u8,
    /// Bits of the first layer and of all biases (see `fit::tensor_bits`).
    pub sensitive_bits: u8,
    pub fit: Phase,
    pub qat: Phase,
    /// Initialisation to start from (weights coded as residuals from it).
    pub base: Option<Base>,
}

impl EncodeConfig {
    /// The network architecture the preset and overrides give for `channels` outputs (without
    /// a custom base, whose architecture would replace it).
    ///
    /// # Errors
    /// [`EncodeError::Parameter`] for an out-of-range override.
    pub fn arch(&self, channels: u8) -> Result<Arch, EncodeError> {
        let img = Image {
            width: 1,
            height: 1,
            channels,
            data: vec![0; channels as usize],
        };
        Ok(self.plan_with(&img, false)?.arch)
    }

    /// Expand the preset and the expert overrides into an architecture and schedules.
    pub(crate) fn plan(&self, img: &Image) -> Result<Plan, EncodeError> {
        self.plan_with(img, true)
    }

    fn plan_with(&self, img: &Image, use_base: bool) -> Result<Plan, EncodeError> {
        // (width, depth, bits of hidden matrices, fp32 steps, minibatch pixels)
        let (width, depth, bits, steps, batch) = match self.preset {
            Preset::Tiny => (24, 8, 6, 3000, 1 << 16),
            Preset::Small => (32, 10, 6, 2000, 1 << 16),
            Preset::Medium => (44, 10, 6, 3000, 1 << 15),
            Preset::Large => (60, 10, 6, 2000, 1 << 15),
            Preset::Huge => (80, 10, 6, 1000, 1 << 15),
        };
        let width = self.width.unwrap_or(width);
        let depth = self.depth.unwrap_or(depth);
        let bits = self.bits.unwrap_or(bits);
        let steps = self.steps.unwrap_or(steps);
        if !(1..=1024).contains(&width) {
            return Err(EncodeError::Parameter(format!(
                "width {width} (expected 1..=1024)"
            )));
        }
        if !(1..=64).contains(&depth) {
            return Err(EncodeError::Parameter(format!(
                "depth {depth} (expected 1..=64)"
            )));
        }
        if !(2..=16).contains(&bits) {
            return Err(EncodeError::Parameter(format!(
                "bits {bits} (expected 2..=16)"
            )));
        }
        let mut arch = Arch {
            coord_dims: 2,
            out_channels: img.channels,
            width: width as u16,
            depth: depth as u8,
            pe_freqs: self.pe_freqs.unwrap_or(0),
            pe_base_milli: 2000,
            w0_first: self.w0.unwrap_or(30),
            w0_hidden: 30,
        };
        let base = match &self.base {
            _ if !use_base => None,
            BaseChoice::None => None,
            BaseChoice::Default => base::embedded_for(&arch).cloned(),
            BaseChoice::Custom(b) => {
                if b.arch.out_channels != img.channels {
                    return Err(EncodeError::Parameter(format!(
                        "base {:016x} outputs {} channels, the image has {}",
                        b.id(),
                        b.arch.out_channels,
                        img.channels
                    )));
                }
                arch = b.arch;
                Some(b.clone())
            }
        };
        // Encoders MUST NOT write files the default limits reject (codec-spec §7): refuse
        // before fitting, not after minutes of work.
        let limits = Limits::default();
        arch.validate(&limits).map_err(|e| {
            EncodeError::Parameter(format!(
                "network not codable: {e} (a smaller --width or --depth reduces the \
                 parameter count)"
            ))
        })?;
        limits
            .check_render(img.width, img.height, arch.num_params() as u64)
            .map_err(|e| {
                EncodeError::Parameter(format!(
                    "a default decoder would refuse to render this file ({e}); use a smaller \
                     preset, --width or --depth, or a smaller image"
                ))
            })?;
        let batch = self.batch.unwrap_or(batch);
        let lr = self.lr.unwrap_or(3e-4);
        let qat_steps = (steps / 5).max(1);
        Ok(Plan {
            arch,
            bits,
            sensitive_bits: 14,
            fit: Phase {
                steps,
                lr,
                lr_end_frac: 0.05,
                batch,
                eval_every: 100,
                stop_at_psnr: self.target_psnr,
            },
            qat: Phase {
                steps: qat_steps,
                lr: lr * 0.1,
                lr_end_frac: 0.05,
                batch,
                eval_every: 50,
                stop_at_psnr: None,
            },
            base,
        })
    }
}

/// Encode an image into a complete `.inr` file.
///
/// # Errors
/// [`EncodeError::Parameter`] for an unsupported image or configuration.
pub fn encode_image(
    img: &Image,
    cfg: &EncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Encoded, EncodeError> {
    if img.channels != 1 && img.channels != 3 {
        return Err(EncodeError::Parameter(format!(
            "image has {} channels (expected 1 or 3)",
            img.channels
        )));
    }
    let npx = img.width as usize * img.height as usize;
    if npx == 0 || img.data.len() != npx * img.channels as usize {
        return Err(EncodeError::Parameter("empty or inconsistent image".into()));
    }
    let plan = cfg.plan(img)?;
    let mut run = || encode_with_plan(img, &plan, cfg.seed, progress);
    match cfg.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| EncodeError::Parameter(format!("thread pool: {e}")))?
            .install(run),
        None => run(),
    }
}

fn encode_with_plan(
    img: &Image,
    plan: &Plan,
    seed: u64,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Encoded, EncodeError> {
    let arch = plan.arch;
    let grid = Grid2::new(&arch, img.width, img.height);
    let sig = Signal {
        grid: &grid,
        target: img.data.iter().map(|&v| model::from_u8(v)).collect(),
        original: &img.data,
    };
    let shape = model::shape_of(&arch);
    let init = match &plan.base {
        Some(b) => b.params.clone(),
        None => model::siren_init(&shape, seed),
    };
    let mut fitter = Fitter::new(arch, &sig, init, seed);
    let total = plan.fit.steps + plan.qat.steps;
    fitter.run_phase(&plan.fit, None, 0, total, &mut |e: &FitEvent| {
        progress(&Progress {
            step: e.step,
            total: e.total,
            psnr: e.psnr,
            phase: "fit",
        })
    });
    let tb = tensor_bits(&arch, plan.bits, plan.sensitive_bits);
    let base_params = plan.base.as_ref().map(|b| b.params.as_slice());
    let q = QuantSpec::choose(&arch, &fitter.params, &tb, base_params);
    fitter.reset_optimizer();
    fitter.run_phase(
        &plan.qat,
        Some(&q),
        plan.fit.steps,
        total,
        &mut |e: &FitEvent| {
            progress(&Progress {
                step: e.step,
                total: e.total,
                psnr: e.psnr,
                phase: "quantize",
            })
        },
    );
    // Serialise, then measure exactly what the decoder will produce from the bytes.
    let tensors = q
        .symbols(&arch, &fitter.params)
        .into_iter()
        .zip(q.steps.iter().zip(&q.bits))
        .map(|(symbols, (&step, &bits))| QTensor {
            step,
            bits,
            symbols,
        })
        .collect();
    let max_bits = q.bits.iter().copied().max().unwrap_or(plan.bits);
    let file = InrFile {
        width: img.width,
        height: img.height,
        arch,
        bits: max_bits,
        tensors,
        base_id: plan.base.as_ref().map(Base::id),
    };
    let bytes = format::write_file(&file)?;
    let opts = DecodeOptions {
        bases: plan.base.iter().cloned().collect(),
        ..DecodeOptions::default()
    };
    let recon = decode(&bytes, &opts).map_err(|e| match e {
        DecodeError::Format(f) => EncodeError::Format(f),
        other => EncodeError::Parameter(other.to_string()),
    })?;
    let psnr = psnr_u8(&recon.data, &img.data);
    let bpp = 8.0 * bytes.len() as f64 / npx_f(img);
    Ok(Encoded {
        bytes,
        recon,
        psnr,
        bpp,
    })
}

fn npx_f(img: &Image) -> f64 {
    img.width as f64 * img.height as f64
}

/// Decode a `.inr` file into an image.
///
/// Every limit in `opts.limits` is checked before the matching allocation or work: file size,
/// section sizes, coded pixels and parameters (while parsing), then the output pixels and the
/// rendering work (output pixels x parameters).
///
/// # Errors
/// [`DecodeError::Format`] for a malformed, truncated or corrupted file, and
/// `DecodeError::Format(FormatError::LimitExceeded { .. })` for a file or output size beyond
/// `opts.limits`; [`DecodeError::Parameter`] for an output size with a zero side.
///
/// # Panics
/// Never, for any input.
pub fn decode(bytes: &[u8], opts: &DecodeOptions) -> Result<Image, DecodeError> {
    let file = format::read_file(bytes, &opts.limits)?;
    let (w, h) = opts.size.unwrap_or((file.width, file.height));
    if w == 0 || h == 0 {
        return Err(DecodeError::Parameter(format!(
            "output size {w}x{h} (expected both sides >= 1)"
        )));
    }
    opts.limits
        .check_render(w, h, file.arch.num_params() as u64)?;
    let mut params: Vec<f32> = file.tensors.iter().flat_map(|t| t.dequantize()).collect();
    if let Some(id) = file.base_id {
        // §6.2: w = base + q * step, one f32 addition per weight.
        let b = base::find(id, &opts.bases)?;
        if b.arch != file.arch {
            return Err(BaseError::ArchMismatch {
                id,
                base: b.arch,
                file: file.arch,
            }
            .into());
        }
        for (p, &b) in params.iter_mut().zip(&b.params) {
            *p += b;
        }
    }
    let data = model::render(&file.arch, &params, w, h);
    Ok(Image {
        width: w,
        height: h,
        channels: file.arch.out_channels,
        data,
    })
}

/// Parse the header and section table without decoding the network ([`Limits::default`]).
///
/// # Errors
/// As [`format::inspect`].
pub fn inspect(bytes: &[u8]) -> Result<crate::format::FileInfo, crate::format::FormatError> {
    crate::format::inspect(bytes)
}

/// As [`inspect`], with caller-chosen limits.
///
/// # Errors
/// As [`format::inspect_with`].
pub fn inspect_with(
    bytes: &[u8],
    limits: &Limits,
) -> Result<crate::format::FileInfo, crate::format::FormatError> {
    crate::format::inspect_with(bytes, limits)
}
