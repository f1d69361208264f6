//! The modulation-mode image codec (`codec-spec.md` §12): fit a latent grid for a shared,
//! meta-learned modulated base; quantize the latents uniformly; entropy-code them per latent
//! channel with the adaptive coder of §5. Rate control moves only the quantization step (the
//! fit does not depend on it), so `--bpp` costs a few cheap re-quantizations.

use crate::base::{self, Base, BaseError, ModSpec};
use crate::codec::{DecodeError, DecodeOptions, EncodeError, Encoded, Progress};
use crate::fit::psnr_u8;
use crate::format::{self, max_abs_for_bits, ModInrFile, QTensor, Step};
use crate::media::Image;
use crate::modulation::{self, fit_latents, LatentFit, ModNet, Packed, Target};

/// Settings of a modulation-mode encode.
#[derive(Debug, Clone)]
pub struct ModEncodeConfig {
    /// The latent fit (steps, learning rate, pixel fraction per step, L2 penalty).
    pub fit: LatentFit,
    /// Quantization step of the latents (ignored with `target_bpp`).
    pub latent_step: f32,
    /// Rate control: aim the real file size at this many bits per pixel.
    pub target_bpp: Option<f64>,
    /// Quantization-aware fine-tuning steps of the latents at the final step size (Adam at
    /// `QAT_LR`, straight-through rounding, same pixel fraction as the fit; 0 = off).
    pub qat_steps: usize,
    /// The modulation base; `None` = the embedded default.
    pub base: Option<Base>,
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
}

impl Default for ModEncodeConfig {
    fn default() -> Self {
        ModEncodeConfig {
            fit: LatentFit::default(),
            latent_step: DEFAULT_LATENT_STEP,
            target_bpp: None,
            qat_steps: DEFAULT_QAT_STEPS,
            base: None,
            seed: 0,
            threads: None,
        }
    }
}

/// Default number of quantization-aware fine-tuning steps.
pub const DEFAULT_QAT_STEPS: usize = 20;
/// Adam learning rate of the quantization-aware fine-tuning.
pub const QAT_LR: f32 = 0.01;

/// Default quantization step of the latents.
pub const DEFAULT_LATENT_STEP: f32 = 0.25;

/// The latent L2 penalty a modulation base was trained with (from its description), if
/// recorded; the encoder uses it by default so encoding matches training.
pub fn trained_l2(b: &Base) -> Option<f32> {
    let v: serde_json::Value = serde_json::from_str(&b.description).ok()?;
    v["config"]["inner"]["l2"].as_f64().map(|x| x as f32)
}

/// The modulated network of a base, or why the base cannot be used.
pub fn mod_net(b: &Base) -> Result<ModNet, String> {
    let spec = b.modulation.ok_or_else(|| {
        format!(
            "base {:016x} is a weight base, not a modulation base",
            b.id()
        )
    })?;
    ModNet::from_flat(
        b.arch,
        usize::from(spec.latent_dim),
        u32::from(spec.cell),
        &b.params,
    )
    .ok_or_else(|| format!("base {:016x}: weight count does not match", b.id()))
}

/// Quantizes node-major latents `z` (`nodes x d`) with step `q` into one tensor per channel.
pub fn quantize(z: &[f32], d: usize, q: f32) -> Vec<QTensor> {
    let step = Step::from_f32(q);
    let qf = step.to_f32();
    (0..d)
        .map(|i| {
            let symbols: Vec<i32> = z
                .iter()
                .skip(i)
                .step_by(d)
                .map(|&v| (v / qf).round().clamp(-32767.0, 32767.0) as i32)
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

/// Node-major latents from the channel tensors (`value = symbol * step`, §12).
pub fn dequantize(channels: &[QTensor]) -> Vec<f32> {
    let d = channels.len();
    let nodes = channels.first().map_or(0, |c| c.symbols.len());
    let mut z = vec![0.0f32; nodes * d];
    for (i, c) in channels.iter().enumerate() {
        for (n, v) in c.dequantize().into_iter().enumerate() {
            z[n * d + i] = v;
        }
    }
    z
}

/// Checks the settings of a latent fit.
pub(crate) fn check_fit(fit: &LatentFit) -> Result<(), EncodeError> {
    let lr_ok = fit.lr.is_finite() && fit.lr > 0.0;
    let frac_ok = fit.frac > 0.0 && fit.frac <= 1.0;
    let l2_ok = fit.l2.is_finite() && fit.l2 >= 0.0;
    if !(lr_ok && frac_ok && l2_ok) {
        return Err(EncodeError::Parameter(
            "latent fit: lr > 0, 0 < fraction <= 1, l2 >= 0".into(),
        ));
    }
    Ok(())
}

/// [`fit_latents`] reporting each step as phase "latents".
pub(crate) fn fit_with_progress(
    net: &ModNet,
    pk: &Packed,
    tgt: &Target<'_>,
    fit: &LatentFit,
    seed: u64,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Vec<f32> {
    let total = fit.steps;
    fit_latents(net, pk, tgt, fit, seed, &mut |s| {
        progress(&Progress {
            step: s,
            total,
            psnr: None,
            phase: "latents",
        })
    })
}

/// The step `choose_q` picks for the fitted latents `z`; then, with `qat_steps > 0`,
/// quantization-aware fine-tuning at that step (phase "quantize", the fit's fraction of the
/// signal per step) and, when `retarget` (a rate target), the step chosen again for the tuned
/// latents. Returns the final latents and step.
pub(crate) fn quantize_latents(
    (net, pk, tgt): (&ModNet, &Packed, &Target<'_>),
    z: Vec<f32>,
    (qat_steps, frac, seed): (usize, f32, u64),
    retarget: bool,
    choose_q: &dyn Fn(&[f32]) -> Result<f32, EncodeError>,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<(Vec<f32>, f32), EncodeError> {
    let mut q = choose_q(&z)?;
    if qat_steps == 0 {
        return Ok((z, q));
    }
    let phase = |step| Progress {
        step,
        total: qat_steps,
        psnr: None,
        phase: "quantize",
    };
    progress(&phase(0));
    let z =
        modulation::finetune_quantized(net, pk, tgt, &z, q, qat_steps, QAT_LR, frac, seed ^ 0x51a7);
    progress(&phase(qat_steps));
    if retarget {
        q = choose_q(&z)?;
    }
    Ok((z, q))
}

/// The finest latent step whose rate `rate(step)` (which falls as the step grows) is at most
/// `target`: bisection of log(step) over `[1e-3, 64]` in 20 halvings; 64 when even that is
/// above the target.
pub(crate) fn bisect_step(
    target: f64,
    rate: impl Fn(f32) -> Result<f64, EncodeError>,
) -> Result<f32, EncodeError> {
    let (mut lo, mut hi) = (1e-3f32.ln(), 64f32.ln());
    if rate(hi.exp())? > target {
        return Ok(hi.exp());
    }
    for _ in 0..20 {
        let mid = 0.5 * (lo + hi);
        if rate(mid.exp())? > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi.exp())
}

fn file_for(img: &Image, b: &Base, spec: ModSpec, channels: Vec<QTensor>) -> ModInrFile {
    ModInrFile {
        width: img.width,
        height: img.height,
        arch: b.arch,
        base_id: b.id(),
        latent_dim: spec.latent_dim,
        cell: spec.cell,
        channels,
    }
}

/// Encodes `img` in modulation mode.
///
/// # Errors
/// [`EncodeError::Parameter`] for an unusable image or base; format errors when the result
/// would not be a valid file.
pub fn encode_modulated(
    img: &Image,
    cfg: &ModEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Encoded, EncodeError> {
    crate::codec::with_threads(cfg.threads, || encode_inner(img, cfg, progress))
}

fn encode_inner(
    img: &Image,
    cfg: &ModEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Encoded, EncodeError> {
    let npx = img.width as usize * img.height as usize;
    if npx == 0 || img.data.len() != npx * usize::from(img.channels) {
        return Err(EncodeError::Parameter("empty or inconsistent image".into()));
    }
    let b = match &cfg.base {
        Some(b) => b.clone(),
        None => base::embedded_modulation()
            .cloned()
            .ok_or_else(|| EncodeError::Parameter("no embedded modulation base".into()))?,
    };
    let spec = b.modulation.ok_or_else(|| {
        EncodeError::Parameter(format!(
            "base {:016x} is a weight base; --mode modulations needs a modulation base",
            b.id()
        ))
    })?;
    if b.is_audio() {
        return Err(EncodeError::Parameter(format!(
            "base {:016x} is an audio modulation base; images need an image one",
            b.id()
        )));
    }
    let net = mod_net(&b).map_err(EncodeError::Parameter)?;
    // The base decides the channels; a gray image is coded as RGB (decodes to RGB).
    let rgb;
    let src = match (img.channels, b.arch.out_channels) {
        (c, o) if c == o => img,
        (1, 3) => {
            rgb = Image {
                width: img.width,
                height: img.height,
                channels: 3,
                data: img.data.iter().flat_map(|&v| [v, v, v]).collect(),
            };
            &rgb
        }
        (c, o) => {
            return Err(EncodeError::Parameter(format!(
                "image has {c} channels, the modulation base {o}{}",
                if img.has_alpha() {
                    crate::codec::ALPHA_HINT
                } else {
                    ""
                }
            )))
        }
    };
    check_fit(&cfg.fit)?;
    let pk = Packed::new(&net);
    let tgt = Target::new(&net, src);
    let z = fit_with_progress(&net, &pk, &tgt, &cfg.fit, cfg.seed, progress);
    let d = net.latent_dim;
    let write = |z: &[f32], q: f32| -> Result<Vec<u8>, EncodeError> {
        Ok(format::write_mod_file(&file_for(
            src,
            &b,
            spec,
            quantize(z, d, q),
        ))?)
    };
    let choose_q = |z: &[f32]| -> Result<f32, EncodeError> {
        let q = match cfg.target_bpp {
            None => {
                if !(cfg.latent_step.is_finite() && cfg.latent_step > 0.0) {
                    return Err(EncodeError::Parameter("latent step must be > 0".into()));
                }
                cfg.latent_step
            }
            Some(t) => {
                if !(t.is_finite() && t > 0.0) {
                    return Err(EncodeError::Parameter("--bpp must be > 0".into()));
                }
                let bpp = |q: f32| -> Result<f64, EncodeError> {
                    Ok(write(z, q)?.len() as f64 * 8.0 / npx as f64)
                };
                bisect_step(t, bpp)?
            }
        };
        Ok(Step::from_f32(q).to_f32())
    };
    let (z, q) = quantize_latents(
        (&net, &pk, &tgt),
        z,
        (cfg.qat_steps, cfg.fit.frac, cfg.seed),
        cfg.target_bpp.is_some(),
        &choose_q,
        progress,
    )?;
    let channels = quantize(&z, d, q);
    let zq = dequantize(&channels);
    let bytes = format::write_mod_file(&file_for(src, &b, spec, channels))?;
    let data = modulation::render(&net, &zq, src.width, src.height);
    let psnr = psnr_u8(&data, &src.data);
    Ok(Encoded {
        bpp: bytes.len() as f64 * 8.0 / npx as f64,
        bytes,
        recon: Image {
            width: src.width,
            height: src.height,
            channels: src.channels,
            data,
        },
        psnr,
    })
}

/// Decodes a modulation-mode file (the caller has checked [`format::is_modulation_file`]).
///
/// # Errors
/// Format errors, a missing or mismatching base, limits.
pub fn decode_modulated(bytes: &[u8], opts: &DecodeOptions) -> Result<Image, DecodeError> {
    let file = format::read_mod_file(bytes, &opts.limits)?;
    let (w, h) = opts.output_size(file.width, file.height)?;
    let b = base::find(file.base_id, &opts.bases)?;
    let spec = ModSpec {
        latent_dim: file.latent_dim,
        cell: file.cell,
    };
    if b.arch != file.arch {
        return Err(BaseError::ArchMismatch {
            id: file.base_id,
            base: b.arch,
            file: file.arch,
        }
        .into());
    }
    if b.modulation != Some(spec) {
        return Err(DecodeError::Parameter(format!(
            "base {:016x} is {}, but the file needs a modulation base with {} latents per \
             {}-pixel cell",
            file.base_id,
            match b.modulation {
                Some(m) => format!(
                    "a modulation base with {} latents per {}-pixel cell",
                    m.latent_dim, m.cell
                ),
                None => "a weight base".into(),
            },
            spec.latent_dim,
            spec.cell
        )));
    }
    let net = mod_net(b).map_err(DecodeError::Parameter)?;
    let per_px = (file.arch.num_params() + net.map.len()) as u64;
    opts.limits.check_render(w, h, per_px)?;
    let z = dequantize(&file.channels);
    let data = modulation::render_scaled(&net, &z, (file.width, file.height), (w, h));
    Ok(Image {
        width: w,
        height: h,
        channels: file.arch.out_channels,
        data,
    })
}
