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

use crate::audio::{sample_value, to_sample, AudioSource};
use crate::audio_codec::{output_spec, AudioEncoded, AudioQuality, AudioSink};
use crate::codec::{DecodeError, EncodeError, Progress};
use crate::format::{
    self, Arch, AudioGridInrFile, AudioHeader, GridSegment, Limits, QTensor, MAX_WINDOW_LEN,
};
use crate::grid::{self, GridFit, Pyramid, Sampler};
use crate::grid_codec::{latent_tensors, level_predictors, net_tensors};
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
/// 24 and 45 kbit/s (README, "Audio grid mode").
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
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
}

impl Default for AudioGridEncodeConfig {
    fn default() -> Self {
        AudioGridEncodeConfig {
            fit: GridFit {
                steps: DEFAULT_AUDIO_GRID_STEPS,
                lambda: AUDIO_GRID_PRESET_LAMBDAS[2].1,
                ..GridFit::default()
            },
            levels: 8,
            width: 16,
            depth: 2,
            w0: 2,
            net_bits: vec![5, 6, 7, 8, 10],
            segment: DEFAULT_SEGMENT,
            seed: 0,
            threads: None,
        }
    }
}

impl AudioGridEncodeConfig {
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
    let f = &cfg.fit;
    let finite_pos = |v: f32| v.is_finite() && v > 0.0;
    let valid = finite_pos(f.latent_lr())
        && finite_pos(f.scale_lr())
        && finite_pos(f.lr_net)
        && f.lambda.is_finite()
        && f.lambda >= 0.0
        && (0.0..=1.0).contains(&f.noise_frac)
        && (0.0..=1.0).contains(&f.pred_warmup)
        && f.total_steps(usize::from(cfg.levels)) >= 1;
    if !valid {
        return Err(EncodeError::Parameter(
            "audio grid fit: at least one step, learning rates > 0, lambda >= 0, 0 <= noise \
             fraction and predictor warm-up <= 1"
                .into(),
        ));
    }
    if cfg.net_bits.is_empty() || cfg.net_bits.iter().any(|b| !(2..=16).contains(b)) {
        return Err(EncodeError::Parameter(
            "network bit widths must be in 2..=16".into(),
        ));
    }
    if cfg.segment == 0 || cfg.segment > MAX_WINDOW_LEN {
        return Err(EncodeError::Parameter(format!(
            "segment length must be in 1..={MAX_WINDOW_LEN} frames"
        )));
    }
    Ok(())
}

fn encode_inner(
    src: &mut dyn AudioSource,
    cfg: &AudioGridEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<AudioEncoded, EncodeError> {
    check_config(cfg)?;
    let spec = src.spec();
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
    let total_steps = cfg.fit.total_steps(usize::from(cfg.levels)) * n_seg;
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
                let fitted = grid::fit_from(&arch, &pyr, target, &cfg.fit, seed, None, &mut |_| {
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
                code_segment(&arch, &pyr, &fitted, target, cfg)
            })
            .collect();
        for c in coded {
            segments.push(c?);
        }
    }
    let file = AudioGridInrFile {
        audio: header,
        arch,
        segments,
    };
    let bytes = format::write_audio_grid_file(&file)?;
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
    let duration = header.duration_s();
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

/// Codes a fitted segment: latents rounded, plain or predicted latent coding (whichever is
/// smaller), the network at the bit width of `cfg.net_bits` with the lowest measured
/// `MSE + λ · bits per frame`.
fn code_segment(
    arch: &Arch,
    pyr: &Pyramid,
    fitted: &grid::Fitted,
    target: &[f32],
    cfg: &AudioGridEncodeConfig,
) -> Result<GridSegment, EncodeError> {
    let frames = pyr.width as usize;
    let latents = latent_tensors(pyr, &fitted.latents, 0.0);
    let pred = if fitted.pred_coefs.len() == latents.len() {
        level_predictors(pyr, &latents, &fitted.pred_coefs)
    } else {
        None
    };
    let segment = |net: &[QTensor], predictor: Option<Vec<format::LevelPredictor>>| GridSegment {
        tensors: net.iter().chain(&latents).cloned().collect(),
        predictor,
    };
    let size = |s: &GridSegment| format::audio_grid_segment_bytes(arch, frames, s);
    let mut predicted = None;
    let mut best: Option<(f64, GridSegment)> = None;
    for &bits in &cfg.net_bits {
        let net = net_tensors(arch, &fitted.params, bits);
        let plain = segment(&net, None);
        let mut bytes = size(&plain)?;
        let mut seg = plain;
        // The latent coding choice does not depend on the network: made with the first width.
        let use_pred = match predicted {
            Some(p) => p,
            None => {
                let p = match &pred {
                    Some(p) => {
                        let s = segment(&net, Some(p.clone()));
                        let b = size(&s)?;
                        b < bytes
                    }
                    None => false,
                };
                predicted = Some(p);
                p
            }
        };
        if use_pred {
            seg = segment(&net, pred.clone());
            bytes = size(&seg)?;
        }
        let mse = segment_mse(arch, pyr, &seg, target);
        let cost = mse + f64::from(cfg.fit.lambda) * bytes as f64 * 8.0 / frames.max(1) as f64;
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
    let zero = latent_tensors(pyr, &vec![0.0; fitted.latents.len()], 0.0);
    let bits = cfg.net_bits.iter().copied().max().unwrap_or(8);
    let dc = GridSegment {
        tensors: net_tensors(arch, &flat, bits)
            .into_iter()
            .chain(zero)
            .collect(),
        predictor: None,
    };
    let mse = segment_mse(arch, pyr, &dc, target);
    let cost = mse + f64::from(cfg.fit.lambda) * size(&dc)? as f64 * 8.0 / frames.max(1) as f64;
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
