//! The modulation-mode audio codec (`codec-spec.md` §12.7): a clip is one row of latent
//! vectors, one node every `cell` frames, for a shared meta-learned audio modulation base
//! (`inr meta-train --modality audio --mode modulations`). Only the latents are fitted (Adam
//! through the fused kernel, the image modulation mode's loop), quantized uniformly and
//! entropy-coded per latent channel. Every frame blends its two nodes linearly and the network
//! sees periodic features of the phase within the cell, so there are no window borders.
//!
//! Rate control moves only the quantization step, as for images. The whole clip is fitted in
//! memory (samples, latents and their Adam state; the format's bound of 2^25 latents, §12.7,
//! caps a clip at 2^25 / latent_dim nodes: 35 minutes at 16 kHz for 32 latents per 32 frames);
//! decoding renders and emits a block of [`DECODE_BLOCK`] frames at a time.

use crate::audio::{sample_value, to_sample, AudioSource};
use crate::audio_codec::{output_spec, AudioEncoded, AudioQuality, AudioSink};
use crate::base::{self, Base, BaseError};
use crate::codec::{DecodeError, EncodeError, Progress};
use crate::format::{self, AudioHeader, AudioModInrFile, Limits, Step};
use crate::metrics::AudioDistortion;
use crate::mod_codec::{
    check_fit, dequantize, fit_with_progress, mod_net, quantize, quantize_latents,
};
use crate::modulation::{self, LatentFit, ModNet, Packed, Target};

/// Frames rendered per decoded block (bounds the decoder's sample memory).
pub const DECODE_BLOCK: u32 = 1 << 16;

/// Settings of an audio modulation-mode encode.
#[derive(Debug, Clone)]
pub struct AudioModEncodeConfig {
    /// The latent fit (steps, learning rate, fraction of the frames per step, L2 penalty).
    pub fit: LatentFit,
    /// Quantization step of the latents (ignored with `target_kbps`).
    pub latent_step: f32,
    /// Rate control: aim the real file size at this many kbit/s.
    pub target_kbps: Option<f64>,
    /// Quantization-aware fine-tuning steps at the final step (0 = off).
    pub qat_steps: usize,
    /// The audio modulation base; `None` = the embedded one for the clip's channel count.
    pub base: Option<Base>,
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
}

impl Default for AudioModEncodeConfig {
    fn default() -> Self {
        AudioModEncodeConfig {
            fit: LatentFit {
                frac: 1.0,
                ..LatentFit::default()
            },
            latent_step: crate::mod_codec::DEFAULT_LATENT_STEP,
            target_kbps: None,
            qat_steps: crate::mod_codec::DEFAULT_QAT_STEPS,
            base: None,
            seed: 0,
            threads: None,
        }
    }
}

/// The audio modulation base `b` as a network, or why it cannot code `channels` channels.
fn audio_mod_net(b: &Base, channels: u8) -> Result<ModNet, String> {
    if b.modulation.is_none() || !b.is_audio() {
        return Err(format!(
            "base {:016x} is not an audio modulation base (train one with `inr meta-train \
             --modality audio --mode modulations`)",
            b.id()
        ));
    }
    if b.arch.out_channels != channels {
        return Err(format!(
            "base {:016x} is for {} channel(s), the clip has {channels}",
            b.id(),
            b.arch.out_channels
        ));
    }
    mod_net(b)
}

/// Encodes the clip of `src` in modulation mode.
///
/// # Errors
/// [`EncodeError::Parameter`] for an unusable base or setting or a clip beyond the format's
/// latent limit, [`EncodeError::Audio`] when the source cannot be read, format errors when
/// the result would not be a valid file.
pub fn encode_audio_modulated(
    src: &mut dyn AudioSource,
    cfg: &AudioModEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<AudioEncoded, EncodeError> {
    crate::codec::with_threads(cfg.threads, || encode_inner(src, cfg, progress))
}

fn encode_inner(
    src: &mut dyn AudioSource,
    cfg: &AudioModEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<AudioEncoded, EncodeError> {
    let spec = src.spec();
    let b = match &cfg.base {
        Some(b) => b.clone(),
        None => base::embedded_audio_modulation(spec.channels)
            .cloned()
            .ok_or_else(|| {
                EncodeError::Parameter(format!(
                    "no embedded audio modulation base for {} channel(s) (pass --base \
                     FILE.inrb from `inr meta-train --modality audio --mode modulations`)",
                    spec.channels
                ))
            })?,
    };
    let net = audio_mod_net(&b, spec.channels).map_err(EncodeError::Parameter)?;
    check_fit(&cfg.fit)?;
    let frames = src.frames();
    let header = AudioHeader {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        sample_kind: spec.kind,
        bits_per_sample: spec.bits_per_sample,
        frames,
        window_len: net.cell,
    };
    // Validate the clip against the format's limits before reading or fitting anything: an
    // all-zero file of the right shape must be writable.
    let nodes = frames.div_ceil(u64::from(net.cell)).saturating_add(1);
    let limits = Limits::default();
    let max = format::MAX_AUDIO_SYMBOLS;
    if frames == 0 || nodes.saturating_mul(net.latent_dim as u64) > max {
        return Err(EncodeError::Parameter(format!(
            "clip of {frames} frames: modulation mode holds 1 ..= {} frames with this base",
            (max / net.latent_dim.max(1) as u64).saturating_sub(1) * u64::from(net.cell)
        )));
    }
    let file_for = |channels| AudioModInrFile {
        audio: header,
        arch: b.arch,
        base_id: b.id(),
        latent_dim: latent_dim_u8(&net),
        channels,
    };
    let d = net.latent_dim;
    format::write_audio_mod_file(&file_for(quantize(&vec![0.0; nodes as usize * d], d, 1.0)))?;
    let mut values = Vec::new();
    src.read(0, frames as usize, &mut values)?;
    let tgt = Target::audio(&net, values);
    let pk = Packed::new(&net);
    let z = fit_with_progress(&net, &pk, &tgt, &cfg.fit, cfg.seed, progress);
    let duration = header.duration_s();
    let write = |z: &[f32], q: f32| -> Result<Vec<u8>, EncodeError> {
        Ok(format::write_audio_mod_file(&file_for(quantize(z, d, q)))?)
    };
    let choose_q = |z: &[f32]| -> Result<f32, EncodeError> {
        let q = match cfg.target_kbps {
            None => {
                if !(cfg.latent_step.is_finite() && cfg.latent_step > 0.0) {
                    return Err(EncodeError::Parameter("latent step must be > 0".into()));
                }
                cfg.latent_step
            }
            Some(t) => {
                if !(t.is_finite() && t > 0.0) {
                    return Err(EncodeError::Parameter("--kbps must be > 0".into()));
                }
                let kbps = |q: f32| -> Result<f64, EncodeError> {
                    Ok(crate::metrics::kbps(write(z, q)?.len() as u64, duration))
                };
                crate::mod_codec::bisect_step(t, kbps)?
            }
        };
        Ok(Step::from_f32(q).to_f32())
    };
    let (z, q) = quantize_latents(
        (&net, &pk, &tgt),
        z,
        (cfg.qat_steps, cfg.fit.frac, cfg.seed),
        cfg.target_kbps.is_some(),
        &choose_q,
        progress,
    )?;
    let bytes = write(&z, q)?;
    // Quality of what the decoder renders from these bytes.
    let out_spec = output_spec(&header);
    let mut dist = AudioDistortion::default();
    let c = usize::from(spec.channels);
    decode_audio_mod_stream(
        &bytes,
        &limits,
        std::slice::from_ref(&b),
        &mut |_, start, s| {
            let at = start as usize * c;
            for (&x, &y) in tgt.values[at..at + s.len()].iter().zip(s) {
                dist.add(f64::from(x), sample_value(&out_spec, y));
            }
            Ok(())
        },
    )
    .map_err(|e| EncodeError::Parameter(format!("re-decoding the file failed: {e}")))?;
    Ok(AudioEncoded {
        quality: AudioQuality {
            psnr: dist.psnr(),
            snr: dist.snr(),
            kbps: crate::metrics::kbps(bytes.len() as u64, duration),
            duration_s: duration,
            frames,
        },
        bytes,
        windows: nodes,
        base_id: Some(b.id()),
    })
}

/// The latent dimension of `net` as stored in a file (1..=255 for any valid base).
fn latent_dim_u8(net: &ModNet) -> u8 {
    u8::try_from(net.latent_dim).unwrap_or(0)
}

/// Decodes an audio modulation file (the caller has checked
/// [`format::is_audio_modulation_file`]) block by block into `sink`, looking its base up in
/// `bases` first, then among the embedded ones.
///
/// # Errors
/// Format errors, a missing base (named by id) or one that is not this file's audio
/// modulation base, and whatever `sink` returns.
pub fn decode_audio_mod_stream(
    bytes: &[u8],
    limits: &Limits,
    bases: &[Base],
    sink: &mut AudioSink<'_>,
) -> Result<AudioHeader, DecodeError> {
    let file = format::read_audio_mod_file(bytes, limits)?;
    let h = file.audio;
    let b = base::find(file.base_id, bases)?;
    if b.modulation.is_none() || !b.is_audio() {
        return Err(BaseError::WrongKind {
            id: file.base_id,
            found: b.kind(),
            expected: "audio modulation",
        }
        .into());
    }
    if b.arch != file.arch {
        return Err(BaseError::ArchMismatch {
            id: file.base_id,
            base: b.arch,
            file: file.arch,
        }
        .into());
    }
    let spec = b.modulation.unwrap_or(base::ModSpec {
        latent_dim: 0,
        cell: 0,
    });
    if spec.latent_dim != file.latent_dim || spec.cell != file.cell() {
        return Err(DecodeError::Parameter(format!(
            "base {:016x} has {} latents per {}-frame cell, the file {} per {}",
            file.base_id,
            spec.latent_dim,
            spec.cell,
            file.latent_dim,
            file.cell()
        )));
    }
    let net = mod_net(b).map_err(DecodeError::Parameter)?;
    let z = dequantize(&file.channels);
    let out = output_spec(&h);
    // frames <= 2^32 - 1 (validated by the reader).
    let frames = h.frames as u32;
    let mut start = 0u32;
    while start < frames {
        let len = DECODE_BLOCK.min(frames - start);
        let y = modulation::render_audio(&net, &z, frames, start, len);
        let samples: Vec<_> = y.into_iter().map(|v| to_sample(&out, v)).collect();
        sink(&h, u64::from(start), &samples)?;
        start += len;
    }
    Ok(h)
}
