//! The grid-mode audio codec (`codec-spec.md` §14): the image grid mode (§13) on a clip laid
//! out as one row. A clip is cut into segments of `segment` frames; each segment is a
//! one-row pyramid of latents (level `l` has one value every `2^l` frames) and a small
//! synthesis SIREN that maps the latents, linearly interpolated at each frame, to the
//! clip's channel values (channels coded jointly). The encoder fits latents and network
//! under `MSE + λ · bits per frame` with the image grid fit ([`grid::fit_from`]), rounds the
//! latents, quantizes the network at the best of a few bit widths and entropy-codes both with
//! the image grid coder (context-adaptive latents, optionally predicted).
//!
//! Segments are independent: they are fitted and coded in parallel, a group of as many as
//! there are threads at a time, so encoding memory is bounded by that group, and the decoder
//! renders and emits them in order. Files do not depend on the thread count.

use crate::arm::ArmLayout;
use crate::arm_fit::ArmFit;
use crate::audio::{sample_value, to_sample, AudioSource};
use crate::audio_codec::{output_spec, AudioEncoded, AudioQuality, AudioSink};
use crate::base::Base;
use crate::codec::{BaseChoice, DecodeError, EncodeError, Progress};
use crate::entropy::GridContexts;
use crate::format::{
    self, Arch, AudioGridInrFile, AudioHeader, GridSegment, Limits, QTensor, MAX_WINDOW_LEN,
};
use crate::grid::{self, GridFit, GridStart, Pyramid, Sampler};
use crate::grid_codec::{best_arm, latent_tensors, level_predictors, net_tensors};
use crate::metrics::AudioDistortion;
use rayon::prelude::*;
use std::sync::Mutex;

/// Default segment length in frames (16.4 s at 16 kHz): a segment pays for its own synthesis
/// network (about 400 bytes), so longer is cheaper; it bounds the encoder's memory.
pub const DEFAULT_SEGMENT: u32 = 1 << 18;

/// Default fitting steps of an audio grid encode.
pub const DEFAULT_AUDIO_GRID_STEPS: usize = 200;

/// Rate weights of the audio grid presets (λ of `MSE + λ · bits per frame`, MSE in [0, 1]
/// units), smallest file first. On the shared 16 kHz speech clip they give about 5, 8, 12,
/// 24 and 45 kbit/s (`docs/audio.md`, "Audio grid mode").
pub const AUDIO_GRID_PRESET_LAMBDAS: [(&str, f32); 5] = [
    ("tiny", 0.002),
    ("small", 0.0006),
    ("medium", 0.0002),
    ("large", 0.00005),
    ("huge", 0.00001),
];

/// Settings of an audio grid-mode encode.
#[derive(Debug, Clone)]
pub struct AudioGridEncodeConfig {
    /// The fit (λ, steps, learning rates); as the image grid mode's.
    pub fit: GridFit,
    /// Latent levels L (one value every 1, 2, …, 2^(L-1) frames).
    pub levels: u8,
    /// Hidden width and number of sine layers of the synthesis network.
    pub width: u16,
    pub depth: u8,
    /// SIREN w0 of every sine layer.
    pub w0: u16,
    /// Bit widths tried for the network tensors of each segment; the encoder keeps the one
    /// with the lowest `MSE + λ · bits per frame` of the decoded segment.
    pub net_bits: Vec<u8>,
    /// Frames per segment, 1 ..= 2^20.
    pub segment: u32,
    /// Rate control: the real file size at most this many kbit/s, within
    /// [`crate::RATE_TOLERANCE`] below it when a fit lands there (λ from a table of measured
    /// rates, then at most five refits along log rate over log λ); `fit.lambda`
    /// is then ignored.
    pub target_kbps: Option<f64>,
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
    /// Where every segment's synthesis network starts: the embedded audio grid base (§10.5)
    /// for the architecture if this binary has one (else random), the seeded random
    /// initialisation, or an audio grid base from `inr meta-train --modality audio --mode
    /// grid`, whose architecture then replaces `levels`, `width`, `depth` and `w0`. A mono
    /// base (the embedded one is mono) starts a clip of several channels with its output layer
    /// copied to every channel. Encoder-only: files never depend on a base.
    pub base: BaseChoice,
    /// The ARM fit of each segment's latents (§5.11 with one-row inputs; segments of at least
    /// 2^15 latents; default [`AUDIO_ARM_FIT`]), coded with it when that is smallest; `None`
    /// never fits one.
    pub arm: Option<ArmFit>,
}

impl Default for AudioGridEncodeConfig {
    fn default() -> Self {
        AudioGridEncodeConfig {
            fit: GridFit {
                steps: DEFAULT_AUDIO_GRID_STEPS,
                lambda: AUDIO_GRID_PRESET_LAMBDAS[2].1,
                // Plain noise: soft rounding (the image default) was not measured enough on
                // audio (speech and trumpet clips at the default λ: +6 % / +8 % rate for
                // +0.69 / +0.43 dB).
                soft_round: None,
                // Audio grid files code their latents with the five contexts of §5.9.
                contexts: GridContexts::Five,
                ..GridFit::default()
            },
            levels: 8,
            width: 16,
            depth: 2,
            w0: 2,
            net_bits: vec![5, 6, 7, 8, 10],
            segment: DEFAULT_SEGMENT,
            target_kbps: None,
            seed: 0,
            threads: None,
            base: BaseChoice::Default,
            arm: Some(AUDIO_ARM_FIT),
        }
    }
}

impl AudioGridEncodeConfig {
    /// The configuration an encode of `channels` channels runs with and the synthesis start
    /// of its fits (see [`AudioGridEncodeConfig::base`]).
    ///
    /// # Errors
    /// [`EncodeError::Parameter`] for a base that is not an audio grid base for `channels`
    /// channels or for one.
    pub fn resolve_base(
        &self,
        channels: u8,
    ) -> Result<(AudioGridEncodeConfig, Option<Base>), EncodeError> {
        let mut eff = self.clone();
        let base = match &self.base {
            BaseChoice::None => None,
            // A clip of several channels without a base of its own starts from the mono base
            // (see `start_params`).
            BaseChoice::Default => crate::base::embedded_audio_grid_for(&self.arch(channels))
                .or_else(|| crate::base::embedded_audio_grid_for(&self.arch(1)))
                .cloned(),
            BaseChoice::Custom(b) => {
                if !b.grid_audio {
                    return Err(EncodeError::Parameter(format!(
                        "base {:016x} is {} base; audio --mode grid starts from an audio grid \
                         base (codec-spec §10.5, made by `inr meta-train --modality audio --mode \
                         grid`)",
                        b.id(),
                        b.a_kind()
                    )));
                }
                if b.arch.out_channels != channels && b.arch.out_channels != 1 {
                    return Err(EncodeError::Parameter(format!(
                        "audio grid base {:016x} is for {} channel(s), the clip has {channels} \
                         (a mono base starts a clip of any channel count)",
                        b.id(),
                        b.arch.out_channels
                    )));
                }
                eff.levels = b.arch.coord_dims;
                eff.width = b.arch.width;
                eff.depth = b.arch.depth;
                eff.w0 = b.arch.w0_first;
                if b.arch != eff.arch(b.arch.out_channels) {
                    return Err(EncodeError::Parameter(format!(
                        "audio grid base {:016x} has architecture {:?}; this encoder uses one \
                         w0 for every layer",
                        b.id(),
                        b.arch
                    )));
                }
                Some(b.clone())
            }
        };
        Ok((eff, base))
    }

    /// The id of the base the fits of a clip of `channels` channels start from, if any.
    pub fn start_id(&self, channels: u8) -> Option<u64> {
        self.resolve_base(channels).ok()?.1.map(|b| b.id())
    }

    /// The synthesis network for `channels` outputs.
    pub fn arch(&self, channels: u8) -> Arch {
        Arch {
            coord_dims: self.levels,
            out_channels: channels,
            width: self.width,
            depth: self.depth,
            pe_freqs: 0,
            pe_base_milli: 1000,
            w0_first: self.w0,
            w0_hidden: self.w0,
        }
    }
}

/// Encodes the clip of `src` in grid mode (§14).
///
/// # Errors
/// [`EncodeError::Parameter`] for bad settings, [`EncodeError::Audio`] when the source cannot
/// be read, format errors for a clip beyond the format's limits (checked before fitting).
pub fn encode_audio_grid(
    src: &mut dyn AudioSource,
    cfg: &AudioGridEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<AudioEncoded, EncodeError> {
    crate::codec::with_threads(cfg.threads, || encode_inner(src, cfg, progress))
}

fn check_config(cfg: &AudioGridEncodeConfig) -> Result<(), EncodeError> {
    crate::grid_codec::check_fit(&cfg.fit, &cfg.net_bits)?;
    if cfg.fit.total_steps(usize::from(cfg.levels)) == 0 {
        return Err(EncodeError::Parameter(
            "audio grid fit: at least one step".into(),
        ));
    }
    if cfg.segment == 0 || cfg.segment > MAX_WINDOW_LEN {
        return Err(EncodeError::Parameter(format!(
            "segment length must be in 1..={MAX_WINDOW_LEN} frames"
        )));
    }
    Ok(())
}

/// The synthesis weights every segment's fit starts from: the base's, with a mono base's
/// output layer copied to every channel of a clip of several (each channel starts as the mono
/// network's output; they part as the fit goes on: channels of a clip are mostly alike).
fn start_params(base: &Base, channels: u8) -> Vec<f32> {
    let from = usize::from(base.arch.out_channels);
    let to = usize::from(channels);
    if from == to {
        return base.params.clone();
    }
    debug_assert_eq!(from, 1, "resolve_base admits mono bases only");
    let lens = base.arch.tensor_lens();
    let (w_last, b_last) = (lens[lens.len() - 2], lens[lens.len() - 1]);
    let head = base.params.len() - w_last - b_last;
    let mut p = base.params[..head].to_vec();
    // W_D is [width][1] row-major (§6.1): each row's value repeated `to` times; then b_D.
    for &v in &base.params[head..] {
        p.extend(std::iter::repeat_n(v, to));
    }
    p
}

fn encode_inner(
    src: &mut dyn AudioSource,
    cfg: &AudioGridEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<AudioEncoded, EncodeError> {
    check_config(cfg)?;
    let spec = src.spec();
    let (cfg, base) = &cfg.resolve_base(spec.channels)?;
    let start = base.as_ref().map(|b| {
        let arch = cfg.arch(spec.channels);
        crate::grid_meta::start_of(&arch, start_params(b, spec.channels))
    });
    let start = start.as_ref();
    let frames = src.frames();
    let header = AudioHeader {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        sample_kind: spec.kind,
        bits_per_sample: spec.bits_per_sample,
        frames,
        window_len: cfg.segment,
    };
    let arch = cfg.arch(spec.channels);
    let limits = Limits::default();
    // Refuse up front what a default decoder would reject (sizes, symbols, work).
    format::check_audio_grid(&header, &arch, &limits)?;
    let n_seg = header.num_windows() as usize;
    let duration = header.duration_s();
    let bytes = match cfg.target_kbps {
        None => code_clip(src, cfg, start, &header, &arch, cfg.fit.lambda, progress)?,
        Some(t) => {
            if !(t.is_finite() && t > 0.0) {
                return Err(EncodeError::Parameter("--kbps must be > 0".into()));
            }
            let per_sample = t * 1000.0 / (f64::from(spec.sample_rate) * f64::from(spec.channels));
            let mut lambda = lambda_for_bits(per_sample);
            let mut tried: Vec<(f32, Vec<u8>)> = Vec::new();
            let lo = t * (1.0 - crate::RATE_TOLERANCE);
            for _ in 0..RATE_FITS {
                let b = code_clip(src, cfg, start, &header, &arch, lambda, progress)?;
                let kbps = crate::metrics::kbps(b.len() as u64, duration);
                crate::codec::dbg_rc(format_args!(
                    "audio fit {}: lambda {lambda:.3e} -> {kbps:.3} kbit/s (target {t})",
                    tried.len()
                ));
                tried.push((lambda, b));
                if (lo..=t).contains(&kbps) {
                    break;
                }
                let pts: Vec<(f32, f64)> = tried
                    .iter()
                    .map(|(l, b)| (*l, crate::metrics::kbps(b.len() as u64, duration)))
                    .collect();
                match next_lambda(&pts, t) {
                    Some(l) => lambda = l,
                    None => break,
                }
            }
            pick_for_rate(tried, duration, t)
        }
    };
    // Quality of what the decoder renders from these bytes.
    let out_spec = output_spec(&header);
    let mut dist = AudioDistortion::default();
    let c = u64::from(spec.channels);
    let mut reference = Vec::new();
    decode_audio_grid_stream(&bytes, &limits, &mut |_, start, s| {
        src.read(start, (s.len() as u64 / c) as usize, &mut reference)?;
        for (&x, &y) in reference.iter().zip(s) {
            dist.add(f64::from(x), sample_value(&out_spec, y));
        }
        Ok(())
    })
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
        windows: n_seg as u64,
        base_id: None,
    })
}

/// Most fits of a rate search.
const RATE_FITS: usize = 6;

/// Rates of the audio grid mode (bits per coded sample) at rate weights λ, measured on the
/// shared 16 kHz speech clip with the default settings and the embedded base (the presets'
/// points): where rate control starts.
const RATE_TABLE: [(f32, f64); 5] = [
    (0.002, 0.314),
    (0.0006, 0.442),
    (0.0002, 0.749),
    (0.00005, 1.498),
    (0.00001, 2.786),
];

/// λ for `bits` bits per sample, log-linear in the table (its end slopes beyond it).
fn lambda_for_bits(bits: f64) -> f32 {
    let t = &RATE_TABLE;
    let b = bits.max(1e-6).ln();
    let i = (0..t.len() - 1)
        .find(|&i| b <= t[i + 1].1.ln())
        .unwrap_or(t.len() - 2);
    let (l0, b0) = (f64::from(t[i].0).ln(), t[i].1.ln());
    let (l1, b1) = (f64::from(t[i + 1].0).ln(), t[i + 1].1.ln());
    let l = l0 + (b - b0) * (l1 - l0) / (b1 - b0);
    (l.clamp(-30.0, 5.0).exp() as f32).max(1e-12)
}

/// The next λ of the rate search from the tried `(λ, kbit/s)` points, in log λ against log
/// rate, aimed a little below the target so that the file lands inside the band; `None` when
/// it would repeat a tried λ (a fit is deterministic, so a repeat cannot land elsewhere).
/// With tried rates on both sides of the target, between the largest λ over it and the
/// smallest λ at or under it (regula falsi; the bracket is taken by λ, not by rate, so a
/// rate that is not monotone in λ still narrows it; a crossed bracket is bisected). Else from
/// the tried λ nearest the target's side along the slope of the two rates closest to it (the
/// table's, about -0.4, after one fit), by at most a factor e^3.
fn next_lambda(tried: &[(f32, f64)], target: f64) -> Option<f32> {
    let pts: Vec<(f64, f64)> = tried
        .iter()
        .map(|&(l, k)| (f64::from(l).ln(), k.max(1e-9).ln()))
        .collect();
    let aim = (target * (1.0 - crate::RATE_TOLERANCE / 2.0)).ln();
    let y = target.ln();
    // Over the target: λ too small; the largest such λ is the bracket's low end.
    let lo = pts
        .iter()
        .filter(|p| p.1 > y)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let hi = pts
        .iter()
        .filter(|p| p.1 <= y)
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let l = match (lo, hi) {
        (Some(&(l0, y0)), Some(&(l1, y1))) => {
            if l0 < l1 && y0 - y1 > 1e-9 {
                let t = ((aim - y0) / (y1 - y0)).clamp(0.05, 0.95);
                l0 + t * (l1 - l0)
            } else {
                // Crossed (the rate rose with λ somewhere between): halve the gap.
                0.5 * (l0 + l1)
            }
        }
        _ => {
            // All on one side: step on from the tried λ nearest the target's side (the largest
            // λ when every rate is above it, the smallest when below), by at least a factor
            // e^0.15 so that noise in the rate cannot stall the search.
            let all_above = hi.is_none();
            let (l0, y0) = pts.iter().copied().max_by(|a, b| {
                if all_above {
                    a.0.total_cmp(&b.0)
                } else {
                    b.0.total_cmp(&a.0)
                }
            })?;
            let mut slope = -0.4;
            let mut by: Vec<(f64, f64)> = pts.clone();
            by.sort_by(|a, b| (a.1 - y).abs().total_cmp(&(b.1 - y).abs()));
            if let (Some(&(la, ya)), Some(&(lb, yb))) = (by.first(), by.get(1)) {
                if (lb - la).abs() > 1e-6 {
                    let s = (yb - ya) / (lb - la);
                    if s < -0.05 {
                        slope = s.max(-2.0);
                    }
                }
            }
            let step = ((aim - y0) / slope).clamp(-3.0, 3.0);
            let min = if all_above { 0.15 } else { -0.15 };
            l0 + if all_above {
                step.max(min)
            } else {
                step.min(min)
            }
        }
    };
    let next = (l.exp() as f32).max(1e-12);
    // f32 λ within 0.1 % of a tried one: the same fit, or one the noise decides.
    let repeat = tried.iter().any(|&(t, _)| ((next / t).ln()).abs() < 1e-3);
    (!repeat).then_some(next)
}

/// The file a rate search keeps: of those at or under the target, the largest (the best
/// quality: the rate only falls as λ grows); if none fits, the smallest.
fn pick_for_rate(tried: Vec<(f32, Vec<u8>)>, duration: f64, target: f64) -> Vec<u8> {
    let kbps = |b: &Vec<u8>| crate::metrics::kbps(b.len() as u64, duration);
    let (fit, over): (Vec<_>, Vec<_>) = tried.into_iter().partition(|(_, b)| kbps(b) <= target);
    let pick = if fit.is_empty() {
        over.into_iter().min_by_key(|(_, b)| b.len())
    } else {
        fit.into_iter().max_by_key(|(_, b)| b.len())
    };
    pick.map(|p| p.1).unwrap_or_default()
}

/// The latents' starting learning rate of an audio grid fit of `steps` steps at rate weight
/// `lambda` (when not set): the image grid mode's ([`grid::default_latent_lr`], 0.2 at 200 steps,
/// at least 0.04) down to λ = 0.0002, growing as λ falls below it, `(0.0002 / λ)^0.46` times (2x at
/// 0.00005, 4x at 0.00001), at most 1. At high rates the latents must grow further than the image
/// rate lets them in a short fit. Measured on the three shared clips at 200 steps (kbit/s, PSNR dB
/// at 0.2 / 0.4 / 0.8): λ = 0.00005 speech 21.78, 45.95 / 23.83, 46.86 / 26.34, 47.57, Brahms
/// 28.86, 44.61 / 28.75, 45.51 / 31.97, 46.05, trumpet 33.30, 45.36 / 33.11, 46.34 / 37.90, 46.99;
/// λ = 0.00001 speech 32.49, 47.70 / 36.35, 50.39 / 44.79, 52.28; at λ = 0.0002 and above, 0.4 and
/// 0.8 were within about ±0.4 dB of 0.2 at equal rate, in both directions.
pub fn latent_lr(lambda: f32, steps: usize) -> f32 {
    // At least 0.04, the image rule's floor before stop 43: its lower rate above 1,000 steps
    // was measured on images only.
    let base = grid::default_latent_lr(steps).max(0.04);
    let factor = (0.0002 / lambda.max(1e-12)).powf(0.46).clamp(1.0, 4.0);
    (base * factor).min(1.0)
}

/// Fits and codes every segment of the clip at rate weight `lambda`; returns the file.
fn code_clip(
    src: &mut dyn AudioSource,
    cfg: &AudioGridEncodeConfig,
    start: Option<&GridStart>,
    header: &AudioHeader,
    arch: &Arch,
    lambda: f32,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Vec<u8>, EncodeError> {
    let arch = *arch;
    let fit = GridFit {
        lambda,
        lr_latent: cfg.fit.lr_latent.or(Some(latent_lr(lambda, cfg.fit.steps))),
        ..cfg.fit
    };
    let n_seg = header.num_windows() as usize;
    let total_steps = fit.total_steps(usize::from(cfg.levels)) * n_seg;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let progress = Mutex::new(progress);
    let group = rayon::current_num_threads().max(1);
    let mut segments = Vec::with_capacity(n_seg);
    let mut buf = Vec::new();
    for g0 in (0..n_seg).step_by(group) {
        let g1 = (g0 + group).min(n_seg);
        let mut targets = Vec::with_capacity(g1 - g0);
        for k in g0..g1 {
            let n = header.window_frames(k as u64);
            src.read(k as u64 * u64::from(cfg.segment), n, &mut buf)?;
            targets.push((k, n, buf.clone()));
        }
        let coded: Vec<Result<GridSegment, EncodeError>> = targets
            .par_iter()
            .map(|(k, n, target)| {
                let pyr = Pyramid::new(*n as u32, 1, cfg.levels);
                let seed = cfg.seed.wrapping_add(*k as u64);
                let fitted = grid::fit_from(&arch, &pyr, target, &fit, seed, start, &mut |_| {
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if d.is_multiple_of(10) || d == total_steps {
                        if let Ok(mut p) = progress.lock() {
                            p(&Progress {
                                step: d,
                                total: total_steps,
                                psnr: None,
                                phase: "fit",
                            });
                        }
                    }
                });
                code_segment(
                    &arch,
                    &pyr,
                    &fitted,
                    target,
                    lambda,
                    &cfg.net_bits,
                    cfg.arm.as_ref(),
                )
            })
            .collect();
        for c in coded {
            segments.push(c?);
        }
    }
    let file = AudioGridInrFile {
        audio: *header,
        arch,
        segments,
    };
    Ok(format::write_audio_grid_file(&file)?)
}

/// Network parameters and latents of a segment, dequantized (§13.3).
fn dequantized(arch: &Arch, seg: &GridSegment) -> (Vec<f32>, Vec<f32>) {
    let t = arch.num_tensors().min(seg.tensors.len());
    let params = seg.tensors[..t]
        .iter()
        .flat_map(|q| q.dequantize())
        .collect();
    let lat = seg.tensors[t..]
        .iter()
        .flat_map(|q| q.dequantize())
        .collect();
    (params, lat)
}

/// Mean squared error in [0, 1] units of the decoded segment against `target`.
fn segment_mse(arch: &Arch, pyr: &Pyramid, seg: &GridSegment, target: &[f32]) -> f64 {
    let (params, lat) = dequantized(arch, seg);
    let sm = Sampler::new(pyr.clone(), pyr.width, 1);
    let y = grid::render_values(arch, &params, &lat, &sm);
    let sse: f64 = y
        .iter()
        .zip(target)
        .map(|(&a, &b)| {
            let d = f64::from(a.clamp(-1.0, 1.0)) - f64::from(b);
            d * d
        })
        .sum();
    0.25 * sse / target.len().max(1) as f64
}

/// How a segment's latents are coded (§14.2 segment flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LatentCoding {
    Plain,
    /// Predicted (§5.10) with the five contexts, unsplit or split by the fraction.
    Predicted(GridContexts),
    /// ARM-coded (§5.11, one-row inputs).
    Arm,
}

/// Fewest latents of a segment for which the encoder fits an ARM (a segment of about 16,400
/// frames, 1 s at 16 kHz): its section (about 320 bytes at width 12 on the shared clips) must
/// be outweighed by what it saves, which on those 2–3 s clips at the default λ was 5–27 % of
/// the latent stream (`docs/audio.md`, "ARM-coded segments"); the encoder keeps it only when
/// the segment is smaller with it.
const AUDIO_ARM_MIN_LATENTS: usize = 1 << 15;

/// The ARM fit of audio segments: twice the image fit's steps (2,400) on a quarter of its
/// minibatch (1,024 latents). On the three shared clips' medium files it gave 0.3–3.4 %
/// smaller latent streams than the image fit's 1,200 steps of 4,096, in about half the time
/// (0.7 s against 1.1–1.5 s per segment on two busy cores); 1,200 steps of 1,024 and 600
/// of 2,048 were 0.4–7 % larger (`docs/audio.md`, "ARM-coded segments").
pub const AUDIO_ARM_FIT: ArmFit = ArmFit {
    width: 12,
    steps: 2400,
    batch: 1024,
    lr: 1e-2,
    seed: 0x41_524d,
    prior_models: false,
};

/// Codes a fitted segment: latents rounded, coded plain, predicted or with an ARM fitted by
/// `arm_fit` (whichever is smallest), the network at the bit width of `net_bits` with the
/// lowest measured `MSE + λ · bits per frame`.
fn code_segment(
    arch: &Arch,
    pyr: &Pyramid,
    fitted: &grid::Fitted,
    target: &[f32],
    lambda: f32,
    net_bits: &[u8],
    arm_fit: Option<&ArmFit>,
) -> Result<GridSegment, EncodeError> {
    let frames = pyr.width as usize;
    let latents = latent_tensors(pyr, &fitted.latents, 0.0, 0.0);
    let pred = if fitted.pred_coefs.len() == latents.len() {
        level_predictors(pyr, &latents, &fitted.pred_coefs)
    } else {
        None
    };
    let arm = match arm_fit {
        Some(af) => best_arm(pyr, &latents, af, ArmLayout::Line, AUDIO_ARM_MIN_LATENTS)?,
        None => None,
    };
    let segment = |net: &[QTensor], coding: LatentCoding| GridSegment {
        tensors: net.iter().chain(&latents).cloned().collect(),
        predictor: match coding {
            LatentCoding::Predicted(_) => pred.clone(),
            _ => None,
        },
        contexts: match coding {
            LatentCoding::Predicted(c) => c,
            _ => GridContexts::Five,
        },
        arm: match coding {
            LatentCoding::Arm => arm.clone(),
            _ => None,
        },
    };
    let size = |s: &GridSegment| format::audio_grid_segment_bytes(arch, frames, s);
    // The latent coding: plain, predicted with the five contexts (unsplit or split by the
    // prediction's fraction, §5.10) or ARM-coded; the smallest. It does not depend on the
    // network, so it is chosen with the first width, as its bytes over the plain coding's:
    // a segment's sections add up (§14.2), so every width's size is its plain size plus
    // that, and the latents are ARM-coded or predicted only once here.
    let mut chosen: Option<(LatentCoding, isize)> = None;
    let mut best: Option<(f64, GridSegment)> = None;
    for &bits in net_bits {
        let net = net_tensors(arch, &fitted.params, bits);
        let plain = size(&segment(&net, LatentCoding::Plain))?;
        let (coding, extra) = match chosen {
            Some(ce) => ce,
            None => {
                let mut cands = Vec::new();
                if pred.is_some() {
                    cands.push(LatentCoding::Predicted(GridContexts::Five));
                    cands.push(LatentCoding::Predicted(GridContexts::FiveSplit));
                }
                if arm.is_some() {
                    cands.push(LatentCoding::Arm);
                }
                let mut least = (LatentCoding::Plain, plain);
                for c in cands {
                    let b = size(&segment(&net, c))?;
                    if b < least.1 {
                        least = (c, b);
                    }
                }
                let ce = (least.0, least.1 as isize - plain as isize);
                chosen = Some(ce);
                ce
            }
        };
        let seg = segment(&net, coding);
        let bytes = plain.saturating_add_signed(extra);
        let mse = segment_mse(arch, pyr, &seg, target);
        let cost = mse + f64::from(lambda) * bytes as f64 * 8.0 / frames.max(1) as f64;
        if best.as_ref().is_none_or(|b| cost < b.0) {
            best = Some((cost, seg));
        }
    }
    // The constant candidate: zero latents and a network that outputs each channel's mean
    // (only the last bias is nonzero). Silent or DC segments are coded exactly and cheaply;
    // a fit from random weights only approaches them.
    let c = usize::from(arch.out_channels);
    let mut means = vec![0.0f64; c];
    for (i, &v) in target.iter().enumerate() {
        means[i % c] += f64::from(v);
    }
    let mut flat = vec![0.0f32; fitted.params.len()];
    let n = flat.len();
    for (k, m) in means.iter().enumerate() {
        flat[n - c + k] = (m / frames.max(1) as f64) as f32;
    }
    let zero = latent_tensors(pyr, &vec![0.0; fitted.latents.len()], 0.0, 0.0);
    let bits = net_bits.iter().copied().max().unwrap_or(8);
    let dc = GridSegment {
        tensors: net_tensors(arch, &flat, bits)
            .into_iter()
            .chain(zero)
            .collect(),
        predictor: None,
        contexts: GridContexts::Five,
        arm: None,
    };
    let mse = segment_mse(arch, pyr, &dc, target);
    let cost = mse + f64::from(lambda) * size(&dc)? as f64 * 8.0 / frames.max(1) as f64;
    if best.as_ref().is_none_or(|b| cost < b.0) {
        best = Some((cost, dc));
    }
    best.map(|b| b.1)
        .ok_or_else(|| EncodeError::Parameter("no network bit width".into()))
}

/// Segments rendered per parallel block when decoding.
const DECODE_SEGMENTS: usize = 4;

/// Decodes an audio grid file (the caller has checked [`format::is_audio_grid_file`])
/// segment by segment into `sink` (§14.4): consecutive blocks of stored samples, channels
/// interleaved, in order. Memory: the decoded symbols plus a few segments of samples.
///
/// # Errors
/// Format errors and limits, and whatever `sink` returns.
pub fn decode_audio_grid_stream(
    bytes: &[u8],
    limits: &Limits,
    sink: &mut AudioSink<'_>,
) -> Result<AudioHeader, DecodeError> {
    let file = format::read_audio_grid_file(bytes, limits)?;
    let h = file.audio;
    let spec = output_spec(&h);
    let arch = file.arch;
    let n = file.segments.len();
    for b0 in (0..n).step_by(DECODE_SEGMENTS) {
        let b1 = (b0 + DECODE_SEGMENTS).min(n);
        let blocks: Vec<Vec<crate::audio::Sample>> = (b0..b1)
            .into_par_iter()
            .map(|k| {
                let frames = h.window_frames(k as u64) as u32;
                let (params, lat) = dequantized(&arch, &file.segments[k]);
                let pyr = Pyramid::new(frames, 1, arch.coord_dims);
                let sm = Sampler::new(pyr, frames, 1);
                grid::render_values(&arch, &params, &lat, &sm)
                    .into_iter()
                    .map(|v| to_sample(&spec, v))
                    .collect()
            })
            .collect();
        sink(&h, b0 as u64 * u64::from(h.window_len), &blocks.concat())?;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §6.1/§8.3 forward pass of a synthesis network (weights `[in][out]` row-major), written
    /// out here so the check does not share the encoder's code.
    fn forward(arch: &Arch, p: &[f32], x: &[f32]) -> Vec<f32> {
        let lens = arch.tensor_lens();
        let (mut at, mut h) = (0, x.to_vec());
        for l in 0..=usize::from(arch.depth) {
            let n_in = h.len();
            let n_out = lens[2 * l] / n_in;
            let (w, b) = (&p[at..at + n_in * n_out], &p[at + n_in * n_out..][..n_out]);
            at += n_in * n_out + n_out;
            let w0 = if l == 0 {
                arch.w0_first
            } else {
                arch.w0_hidden
            } as f32;
            h = (0..n_out)
                .map(|o| {
                    let z = (0..n_in).fold(b[o], |s, i| s + h[i] * w[i * n_out + o]);
                    if l < usize::from(arch.depth) {
                        (w0 * z).sin()
                    } else {
                        z
                    }
                })
                .collect();
        }
        assert_eq!(at, p.len());
        h
    }

    #[test]
    fn the_rate_search_brackets_by_lambda_and_never_repeats_a_fit() {
        // Speech at --kbps 6 (a measured trace): the rate rose with λ between the two fits
        // over the target, and a bracket taken by rate (the closest rates on either side)
        // kept proposing 8.648e-4, the third fit's λ, for the last four fits.
        let tried = [(1.394e-3f32, 4.752), (8.081e-4, 6.096), (8.648e-4, 6.181)];
        let l = next_lambda(&tried, 6.0);
        assert!(
            l.is_some_and(|l| l > 8.648e-4 * 1.001 && l < 1.394e-3),
            "{l:?}"
        );
        // Monotone: strictly inside the bracket.
        let l = next_lambda(&[(1e-3, 5.0), (5e-4, 7.0)], 6.0);
        assert!(l.is_some_and(|l| l > 5e-4 && l < 1e-3), "{l:?}");
        // A crossed bracket (the largest λ over the target above the smallest under it) is
        // bisected in log λ; when that midpoint was already fitted there is nothing to gain.
        let mid = (2e-3f32 * 1e-3).sqrt();
        let l = next_lambda(&[(1e-3, 5.0), (2e-3, 6.5)], 6.0);
        assert!(l.is_some_and(|l| (l / mid - 1.0).abs() < 1e-5), "{l:?}");
        assert_eq!(
            next_lambda(&[(1e-3, 5.0), (2e-3, 6.5), (mid, 6.2)], 6.0),
            None
        );
        // One side only: λ grows while every rate is over the target, falls while under.
        assert!(next_lambda(&[(1e-3, 9.0)], 6.0).is_some_and(|l| l > 1e-3));
        assert!(next_lambda(&[(1e-3, 3.0)], 6.0).is_some_and(|l| l < 1e-3));
        assert_eq!(next_lambda(&[], 6.0), None);
    }

    #[test]
    fn audio_latent_rates_keep_the_old_floor_of_the_image_rule() {
        // The image rule goes below 0.04 above 1,000 steps; audio was not measured there.
        assert!(grid::default_latent_lr(4000) < 0.04);
        assert_eq!(latent_lr(0.001, 4000), 0.04);
        assert_eq!(latent_lr(0.001, 200), grid::default_latent_lr(200));
        assert_eq!(
            latent_lr(0.00005, 4000),
            0.04 * (0.0002f32 / 0.00005).powf(0.46)
        );
    }

    #[test]
    fn a_mono_base_starts_every_channel_as_the_mono_network() {
        let cfg = AudioGridEncodeConfig::default();
        let mono = cfg.arch(1);
        let params: Vec<f32> = (0..mono.num_params())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 60.0)
            .collect();
        let base = Base::new_audio_grid(mono, params, String::new()).unwrap();
        for channels in [1u8, 2, 5] {
            let wide = start_params(&base, channels);
            assert_eq!(wide.len(), cfg.arch(channels).num_params());
            for k in 0..4 {
                let x: Vec<f32> = (0..usize::from(mono.coord_dims))
                    .map(|i| ((i + 3 * k) as f32 * 0.37).sin())
                    .collect();
                let y = forward(&mono, &base.params, &x);
                let yw = forward(&cfg.arch(channels), &wide, &x);
                assert_eq!(yw, vec![y[0]; usize::from(channels)]);
            }
        }
        // The default start of a clip of several channels is the embedded mono base; a custom
        // mono base is accepted for any channel count, a stereo one only for stereo clips.
        let embedded = crate::base::embedded_audio_grid_for(&mono).expect("embedded base");
        assert_eq!(cfg.start_id(2), Some(embedded.id()));
        let custom = |b: &Base| AudioGridEncodeConfig {
            base: BaseChoice::Custom(b.clone()),
            ..AudioGridEncodeConfig::default()
        };
        assert_eq!(custom(&base).start_id(3), Some(base.id()));
        let stereo =
            Base::new_audio_grid(cfg.arch(2), start_params(&base, 2), String::new()).unwrap();
        assert!(custom(&stereo).resolve_base(2).is_ok());
        let e = custom(&stereo).resolve_base(3).unwrap_err();
        assert!(e.to_string().contains("2 channel(s)"), "{e}");
    }
}
