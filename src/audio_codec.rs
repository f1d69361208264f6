//! Audio encoder and decoder (`codec-spec.md` §11): the clip is cut into windows of
//! `window_len` frames and each window is stored as its own small 1-D SIREN (time ->
//! C channel values, channels coded jointly), all windows sharing one architecture, one step
//! table and the entropy-coded payload of the image codec.
//!
//! Encoding makes three streamed passes over the source, a block of [`BLOCK_WINDOWS`] windows
//! at a time (memory: one block of samples plus the weights of all windows):
//! 1. fit every window in full precision (windows in parallel with rayon);
//! 2. choose one quantization step per tensor from the weights of all windows, then
//!    quantization-aware fine-tuning of every window with those steps, and quantize;
//! 3. write the file, decode it exactly as the decoder does and measure SNR / PSNR.
//!
//! Each window's fit depends only on its samples, the seed and the initial weights, so the
//! bytes do not depend on the number of threads. The initial weights are a meta-learned audio
//! base ([`AudioEncodeConfig::base`], codec-spec §10.4) when one matches the architecture and
//! window length: every window then starts from the base and the file codes the quantized
//! residuals `W - W_base` and the base's id (flag bit 0, §11.10), as image files do.

use std::sync::Arc;

use rayon::prelude::*;

use crate::audio::{sample_value, to_sample, AudioError, AudioSource, AudioSpec, Sample};
use crate::base::{self, Base, BaseError};
use crate::codec::{BaseChoice, DecodeError, EncodeError, Preset, Progress};
use crate::fit::{tensor_bits, FitTarget, Fitter, Phase, QuantSpec};
use crate::format::{self, Arch, AudioHeader, AudioInrFile, Limits, Step};
use crate::metrics::AudioDistortion;
use crate::model::{self, Grid1};
use crate::quant;

/// Windows fitted (and decoded) per block; bounds the samples held in memory.
pub const BLOCK_WINDOWS: usize = 64;

/// Everything the audio encoder needs to know. `Default` gives the `medium` preset.
#[derive(Debug, Clone)]
pub struct AudioEncodeConfig {
    pub preset: Preset,
    /// Hidden width (overrides the preset).
    pub width: Option<usize>,
    /// Number of sine layers (overrides the preset).
    pub depth: Option<usize>,
    /// Bits of the hidden weight matrices (overrides the preset).
    pub bits: Option<u8>,
    /// Full-precision fitting steps per window (overrides the preset).
    pub steps: Option<usize>,
    /// Frames per window (overrides the preset, which scales it with the sample rate).
    pub window: Option<u32>,
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
    /// Fourier features of the time coordinate (expert).
    pub pe_freqs: Option<u8>,
    /// SIREN w0 of the first layer (expert; default from the window length).
    pub w0: Option<u16>,
    /// Adam learning rate (expert).
    pub lr: Option<f32>,
    /// Initial weights of every window network (real layout, `arch.num_params()` values),
    /// coded as they are; `None` = SIREN initialisation from `seed`. Used only when no base is
    /// in use (see `base`).
    pub init: Option<Arc<Vec<f32>>>,
    /// The meta-learned audio base (§10.4) to start from and code residuals against:
    /// `Default` = the embedded base whose architecture and window length equal the preset's
    /// (if any; else `init` / random), `None` = never a base, `Custom` = this audio base (its
    /// architecture and window length replace the preset's).
    pub base: BaseChoice,
}

impl Default for AudioEncodeConfig {
    fn default() -> Self {
        AudioEncodeConfig {
            preset: Preset::Medium,
            width: None,
            depth: None,
            bits: None,
            steps: None,
            window: None,
            seed: 0,
            threads: None,
            pe_freqs: None,
            w0: None,
            lr: None,
            init: None,
            base: BaseChoice::Default,
        }
    }
}

/// Result of encoding audio.
#[derive(Debug, Clone)]
pub struct AudioEncoded {
    /// The complete `.inr` file.
    pub bytes: Vec<u8>,
    /// Quality of the decoder's output (decoded from `bytes`) against the input.
    pub quality: AudioQuality,
    pub windows: u64,
    /// The id of the base the windows are residuals from (§11.10), if any.
    pub base_id: Option<u64>,
}

/// Distortion and rate of a decoded clip.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AudioQuality {
    /// PSNR in dB with the waveform mapped from [-1, 1] to [0, 1] (COIN++ convention).
    pub psnr: f64,
    /// Signal-to-noise ratio in dB.
    pub snr: f64,
    /// `8 * file bytes / duration / 1000`.
    pub kbps: f64,
    pub duration_s: f64,
    pub frames: u64,
}

/// Internal parameters a preset expands to.
#[derive(Debug, Clone)]
struct AudioPlan {
    arch: Arch,
    window: u32,
    bits: u8,
    sensitive_bits: u8,
    fit: Phase,
    qat: Phase,
    /// The base every window starts from and is a residual from.
    base: Option<Base>,
}

impl AudioEncodeConfig {
    /// The architecture and window length the preset and overrides give for `spec` (without
    /// a base, whose architecture would replace them): what `inr meta-train --modality audio`
    /// trains for.
    ///
    /// # Errors
    /// [`EncodeError::Parameter`] for an out-of-range override.
    pub fn arch_and_window(&self, spec: &AudioSpec) -> Result<(Arch, u32), EncodeError> {
        let p = AudioEncodeConfig {
            base: BaseChoice::None,
            ..self.clone()
        }
        .plan(spec)?;
        Ok((p.arch, p.window))
    }

    fn plan(&self, spec: &AudioSpec) -> Result<AudioPlan, EncodeError> {
        let mut plan = self.plan_no_base(spec)?;
        let base = match &self.base {
            BaseChoice::None => None,
            BaseChoice::Default => base::embedded_audio_for(&plan.arch, plan.window).cloned(),
            BaseChoice::Custom(b) => {
                let Some(bw) = b.audio_window else {
                    return Err(EncodeError::Parameter(format!(
                        "base {:016x} is an image base; audio needs an audio base \
                         (inr meta-train --modality audio)",
                        b.id()
                    )));
                };
                if self.window.is_some_and(|w| w != bw) {
                    return Err(EncodeError::Parameter(format!(
                        "base {:016x} was trained for windows of {bw} frames (expected \
                         --window {bw} or none)",
                        b.id()
                    )));
                }
                if b.arch.out_channels != spec.channels {
                    return Err(EncodeError::Parameter(format!(
                        "base {:016x} outputs {} channel(s), the clip has {}",
                        b.id(),
                        b.arch.out_channels,
                        spec.channels
                    )));
                }
                plan.arch = b.arch;
                plan.window = bw;
                plan.fit.batch = bw as usize;
                plan.qat.batch = bw as usize;
                Some(b.clone())
            }
        };
        plan.base = base;
        Ok(plan)
    }

    fn plan_no_base(&self, spec: &AudioSpec) -> Result<AudioPlan, EncodeError> {
        // (width, depth, hidden bits, steps, window frames at 16 kHz). Chosen from a few runs
        // on the shared speech clip (notes/audio.md): at equal rate, small 2-layer networks on
        // short windows beat wider or deeper ones on long windows; 300 full-batch steps at
        // lr 5e-3 are as good as 600.
        let (width, depth, bits, steps, window16k): (usize, usize, u8, usize, u32) =
            match self.preset {
                Preset::Tiny => (8, 2, 6, 300, 2048),
                Preset::Small => (8, 2, 6, 300, 1024),
                Preset::Medium => (8, 2, 6, 300, 512),
                Preset::Large => (12, 2, 6, 250, 512),
                Preset::Huge => (16, 2, 6, 250, 384),
            };
        let width = self.width.unwrap_or(width);
        let depth = self.depth.unwrap_or(depth);
        let bits = self.bits.unwrap_or(bits);
        let steps = self.steps.unwrap_or(steps);
        let param = |m: String| Err(EncodeError::Parameter(m));
        if !(1..=1024).contains(&width) {
            return param(format!("width {width} (expected 1..=1024)"));
        }
        if !(1..=64).contains(&depth) {
            return param(format!("depth {depth} (expected 1..=64)"));
        }
        if !(2..=16).contains(&bits) {
            return param(format!("bits {bits} (expected 2..=16)"));
        }
        if steps == 0 {
            return param("steps 0 (expected >= 1)".into());
        }
        // Same duration per window at every sample rate, by default.
        let window = match self.window {
            Some(w) => w,
            None => ((u64::from(window16k) * u64::from(spec.sample_rate)).div_ceil(16_000))
                .clamp(16, 1 << 16) as u32,
        };
        if !(1..=format::MAX_WINDOW_LEN).contains(&window) {
            return param(format!(
                "window {window} (expected 1..={} frames)",
                format::MAX_WINDOW_LEN
            ));
        }
        // A window of L frames spans L/2 cycles at the Nyquist rate; with coordinates in
        // (-1, 1) the first layer's sin(w0 x) spans w0/pi cycles. On the speech clip w0 near
        // 100-150 beat both 0.15 L and lower values for L = 512..2048 (e.g. L = 2048: 33.6 dB
        // with w0 = 150 vs 31.5 dB with 307); small windows are capped at L/4.
        let w0_default = (window / 4).clamp(1, 120) as u16;
        let arch = Arch {
            coord_dims: 1,
            out_channels: spec.channels,
            width: width as u16,
            depth: depth as u8,
            pe_freqs: self.pe_freqs.unwrap_or(0),
            pe_base_milli: 2000,
            w0_first: self.w0.unwrap_or(w0_default),
            w0_hidden: 30,
        };
        let lr = self.lr.unwrap_or(5e-3);
        let batch = window as usize;
        Ok(AudioPlan {
            arch,
            window,
            bits,
            sensitive_bits: 12,
            fit: Phase {
                steps,
                lr,
                lr_end_frac: 0.05,
                batch,
                eval_every: 50,
                stop_at_psnr: None,
                guard: false,
                warmup: 0,
            },
            qat: Phase {
                steps: (steps / 5).max(1),
                lr: lr * 0.1,
                lr_end_frac: 0.05,
                batch,
                eval_every: 25,
                stop_at_psnr: None,
                guard: false,
                warmup: 0,
            },
            base: None,
        })
    }
}

/// One window as a fitting target (also the task of audio meta-training, `crate::meta`).
pub(crate) struct WindowTarget<'a> {
    pub grid: &'a Grid1,
    pub frames: usize,
    pub channels: usize,
    /// `frames * channels` values in [-1, 1], channels interleaved.
    pub target: &'a [f32],
    /// The sample format the exact PSNR is measured in.
    pub spec: AudioSpec,
}

impl FitTarget for WindowTarget<'_> {
    fn n_points(&self) -> usize {
        self.frames
    }
    fn n_features(&self) -> usize {
        self.grid.n_features()
    }
    #[inline]
    fn features(&self, idx: usize, out: &mut [f32]) {
        self.grid.features(idx, out)
    }
    #[inline]
    fn target(&self, idx: usize) -> &[f32] {
        &self.target[idx * self.channels..(idx + 1) * self.channels]
    }
    fn eval(&self, arch: &Arch, params: &[f32]) -> f64 {
        let y = model::render_window(arch, params, self.grid, self.frames);
        let mut d = AudioDistortion::default();
        for (&v, &x) in y.iter().zip(self.target) {
            d.add(
                f64::from(x),
                sample_value(&self.spec, to_sample(&self.spec, v)),
            );
        }
        d.psnr()
    }
}

fn progress_event(done: usize, total: usize, phase: &'static str) -> Progress {
    Progress {
        step: done,
        total,
        psnr: None,
        phase,
    }
}

/// Encode audio read from `src` into a complete `.inr` file (§11).
///
/// # Errors
/// [`EncodeError::Parameter`] for an unsupported configuration, [`EncodeError::Audio`] when
/// the source cannot be read, [`EncodeError::Format`] for a clip the format cannot hold.
pub fn encode_audio(
    src: &mut dyn AudioSource,
    cfg: &AudioEncodeConfig,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<AudioEncoded, EncodeError> {
    let spec = src.spec();
    let plan = cfg.plan(&spec)?;
    let header = AudioHeader {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        sample_kind: spec.kind,
        bits_per_sample: spec.bits_per_sample,
        frames: src.frames(),
        window_len: plan.window,
    };
    header.validate()?;
    let shape = model::shape_of(&plan.arch);
    let init = match (&plan.base, &cfg.init) {
        (Some(b), _) => b.params.clone(),
        (None, Some(w)) if w.len() == shape.n_params => w.as_ref().clone(),
        (None, Some(w)) => {
            return Err(EncodeError::Parameter(format!(
                "initial weights have {} values (expected {} for this architecture)",
                w.len(),
                shape.n_params
            )))
        }
        (None, None) => model::siren_init(&shape, cfg.seed),
    };
    crate::codec::with_threads(cfg.threads, || {
        encode_with_plan(src, &plan, &header, &init, cfg.seed, progress)
    })
}

/// Fit (and with `quant`, fine-tune quantized) every window of one block, in parallel;
/// returns the latent weights of each window in order.
#[allow(clippy::too_many_arguments)]
fn fit_block(
    plan: &AudioPlan,
    header: &AudioHeader,
    spec: &AudioSpec,
    grid: &Grid1,
    samples: &[f32],
    first_window: u64,
    starts: Vec<Vec<f32>>,
    quant: Option<&QuantSpec>,
    seed: u64,
) -> Vec<Vec<f32>> {
    let c = usize::from(spec.channels);
    let l = plan.window as usize;
    starts
        .into_par_iter()
        .enumerate()
        .map(|(i, start)| {
            let w = first_window + i as u64;
            let frames = header.window_frames(w);
            let off = i * l * c;
            let sig = WindowTarget {
                grid,
                frames,
                channels: c,
                target: &samples[off..off + frames * c],
                spec: *spec,
            };
            let wseed = seed ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut f = Fitter::new(plan.arch, &sig, start, wseed);
            let ph = if quant.is_some() {
                &plan.qat
            } else {
                &plan.fit
            };
            let psnr = f.run_phase(ph, quant, 0, ph.steps, &mut |_| {});
            let mut params = f.params;
            // A window the network renders worse than silence (digital silence, or a pause
            // with faint noise) is coded as silence: an all-zero last layer outputs exactly
            // 0 and costs almost nothing to entropy-code.
            // With a base the effective last layer is `base + q * step`, so the candidate is
            // measured as the decoder will render it.
            match quant {
                Some(q) if q.base.is_some() => {
                    let mut cand = params.clone();
                    cand[last_layer_start(&plan.arch)..].fill(0.0);
                    let mut eff = vec![0.0; cand.len()];
                    q.apply(&plan.arch, &cand, &mut eff);
                    if sig.eval(&plan.arch, &eff) >= psnr {
                        params = cand;
                    }
                }
                Some(_) => {
                    let mut silent = AudioDistortion::default();
                    for &x in sig.target {
                        silent.add(f64::from(x), 0.0);
                    }
                    if silent.psnr() >= psnr {
                        params[last_layer_start(&plan.arch)..].fill(0.0);
                    }
                }
                None => {}
            }
            params
        })
        .collect()
}

/// Bit width per tensor for audio windows: the first linear map (`W_0`, `b_0`: the
/// frequencies and phases of the first sine, multiplied by `w0_first`) gets `sensitive_bits`;
/// the other biases `bits + 3` (at least 9, at most `sensitive_bits`), the other weight
/// matrices `bits`. On the speech clip (tiny preset) 9-bit instead of 12-bit hidden biases
/// saved 3.5 % of the rate at equal PSNR, while 10-bit first-layer tensors cost 0.7–1.8 dB.
fn audio_tensor_bits(arch: &Arch, bits: u8, sensitive_bits: u8) -> Vec<u8> {
    let bias_bits = (bits + 3).max(9).min(sensitive_bits.max(bits));
    tensor_bits(arch, bits, sensitive_bits)
        .into_iter()
        .enumerate()
        .map(|(t, b)| match t {
            0 | 1 => sensitive_bits.max(bits),
            t if t % 2 == 1 => bias_bits,
            _ => b,
        })
        .collect()
}

/// Offset of the last linear map (weights, then bias) in the real parameter layout.
fn last_layer_start(arch: &Arch) -> usize {
    let lens = arch.tensor_lens();
    lens[..lens.len().saturating_sub(2)].iter().sum()
}

fn encode_with_plan(
    src: &mut dyn AudioSource,
    plan: &AudioPlan,
    header: &AudioHeader,
    init: &[f32],
    seed: u64,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<AudioEncoded, EncodeError> {
    let spec = src.spec();
    let arch = plan.arch;
    let grid = Grid1::new(&arch, plan.window);
    let windows = header.num_windows() as usize;
    let np = arch.num_params();
    let l = u64::from(plan.window);
    let total = 2 * windows;
    let mut buf = Vec::new();
    let read_block = |src: &mut dyn AudioSource, b0: usize, b1: usize, buf: &mut Vec<f32>| {
        let start = b0 as u64 * l;
        let end = (b1 as u64 * l).min(header.frames);
        src.read(start, (end - start) as usize, buf)
    };
    // Pass 1: full-precision fits.
    let mut params: Vec<f32> = Vec::with_capacity(windows * np);
    for b0 in (0..windows).step_by(BLOCK_WINDOWS) {
        let b1 = (b0 + BLOCK_WINDOWS).min(windows);
        read_block(src, b0, b1, &mut buf)?;
        let starts = vec![init.to_vec(); b1 - b0];
        for p in fit_block(
            plan, header, &spec, &grid, &buf, b0 as u64, starts, None, seed,
        ) {
            params.extend_from_slice(&p);
        }
        progress(&progress_event(b1, total, "fit"));
    }
    // One step per tensor, from all windows' weights.
    let lens = arch.tensor_lens();
    let tb = audio_tensor_bits(&arch, plan.bits, plan.sensitive_bits);
    let mut steps: Vec<Step> = Vec::with_capacity(lens.len());
    let base = plan.base.as_ref().map(|b| b.params.as_slice());
    let mut off = 0;
    for (&n, &b) in lens.iter().zip(&tb) {
        let mut vals = Vec::with_capacity(n * windows);
        for w in 0..windows {
            let p = &params[w * np + off..w * np + off + n];
            match base {
                // §6.2: the residuals from the base are quantized.
                Some(bp) => vals.extend(p.iter().zip(&bp[off..off + n]).map(|(&p, &b)| p - b)),
                None => vals.extend_from_slice(p),
            }
        }
        steps.push(quant::choose_step(&vals, b));
        off += n;
    }
    let q = QuantSpec {
        steps: steps.clone(),
        bits: tb.clone(),
        base: base.map(<[f32]>::to_vec),
        codebooks: Vec::new(),
    };
    // Pass 2: quantization-aware fine-tuning, then quantization.
    let mut symbols: Vec<i32> = Vec::with_capacity(windows * np);
    for b0 in (0..windows).step_by(BLOCK_WINDOWS) {
        let b1 = (b0 + BLOCK_WINDOWS).min(windows);
        read_block(src, b0, b1, &mut buf)?;
        let starts = (b0..b1)
            .map(|w| params[w * np..(w + 1) * np].to_vec())
            .collect();
        for p in fit_block(
            plan,
            header,
            &spec,
            &grid,
            &buf,
            b0 as u64,
            starts,
            Some(&q),
            seed,
        ) {
            for t in q.symbols(&arch, &p) {
                symbols.extend(t);
            }
        }
        progress(&progress_event(windows + b1, total, "quantize"));
    }
    let max_bits = tb.iter().copied().max().unwrap_or(plan.bits);
    let file = AudioInrFile {
        audio: *header,
        arch,
        bits: max_bits,
        steps,
        tensor_bits: tb,
        symbols,
        base_id: plan.base.as_ref().map(Base::id),
    };
    let bytes = format::write_audio_file(&file)?;
    // Pass 3: measure exactly what the decoder produces from the bytes.
    let bases: Vec<Base> = plan.base.iter().cloned().collect();
    let quality =
        eval_audio_with(&bytes, src, &Limits::default(), &bases).map_err(|e| match e {
            DecodeError::Format(f) => EncodeError::Format(f),
            DecodeError::Audio(a) => EncodeError::Audio(a),
            other => EncodeError::Parameter(other.to_string()),
        })?;
    Ok(AudioEncoded {
        bytes,
        quality,
        windows: windows as u64,
        base_id: file.base_id,
    })
}

/// The output format of a decoded audio file.
pub fn output_spec(h: &AudioHeader) -> AudioSpec {
    AudioSpec {
        sample_rate: h.sample_rate,
        channels: h.channels,
        kind: h.sample_kind,
        bits_per_sample: h.bits_per_sample,
    }
}

/// Receives decoded audio: the header, the first frame of the block and its stored samples.
pub type AudioSink<'a> = dyn FnMut(&AudioHeader, u64, &[Sample]) -> Result<(), DecodeError> + 'a;

/// Decode an audio `.inr` file window by window (§11.7, §11.8): `sink(first_frame, samples)`
/// receives consecutive blocks of stored samples (channels interleaved) in order. Memory:
/// the decoded symbols plus one block of samples. Windows of a block are rendered in
/// parallel; the output does not depend on the number of threads. A file coded from a base
/// (§11.10) is decoded with the embedded base of that id; see [`decode_audio_stream_with`]
/// to supply others.
///
/// # Errors
/// [`DecodeError::Format`] for a malformed, damaged or over-limit file (including an image
/// file), [`DecodeError::Base`] when the file names a base this decoder lacks (the error
/// names the id) or one that does not match it, and whatever `sink` returns.
pub fn decode_audio_stream(
    bytes: &[u8],
    limits: &Limits,
    sink: &mut AudioSink<'_>,
) -> Result<AudioHeader, DecodeError> {
    decode_audio_stream_with(bytes, limits, &[], sink)
}

/// The base of an audio file (§11.10): found by id among `bases` and the embedded ones; it
/// MUST be an audio base with the file's architecture and window length.
fn audio_base<'a>(
    file: &format::AudioInrFile,
    bases: &'a [Base],
) -> Result<Option<&'a Base>, DecodeError> {
    let Some(id) = file.base_id else {
        return Ok(None);
    };
    let b = base::find(id, bases)?;
    if b.audio_window.is_none() {
        return Err(BaseError::WrongKind {
            id,
            found: b.kind(),
            expected: "audio",
        }
        .into());
    }
    if b.arch != file.arch {
        return Err(BaseError::ArchMismatch {
            id,
            base: b.arch,
            file: file.arch,
        }
        .into());
    }
    if b.audio_window != Some(file.audio.window_len) {
        return Err(DecodeError::Format(format::FormatError::InvalidField {
            field: "window length",
            value: file.audio.window_len.into(),
            expected: "the window length of the file's audio base",
        }));
    }
    Ok(Some(b))
}

/// As [`decode_audio_stream`], looking a file's base up in `bases` first, then among the
/// embedded ones.
///
/// # Errors
/// As [`decode_audio_stream`].
pub fn decode_audio_stream_with(
    bytes: &[u8],
    limits: &Limits,
    bases: &[Base],
    sink: &mut AudioSink<'_>,
) -> Result<AudioHeader, DecodeError> {
    if format::is_audio_modulation_file(bytes) {
        return crate::audio_mod_codec::decode_audio_mod_stream(bytes, limits, bases, sink);
    }
    if format::is_audio_grid_file(bytes) {
        return crate::audio_grid_codec::decode_audio_grid_stream(bytes, limits, sink);
    }
    let file = format::read_audio_file(bytes, limits)?;
    let base = audio_base(&file, bases)?;
    let h = file.audio;
    let spec = output_spec(&h);
    let grid = Grid1::new(&file.arch, h.window_len);
    let windows = h.num_windows() as usize;
    for b0 in (0..windows).step_by(BLOCK_WINDOWS) {
        let b1 = (b0 + BLOCK_WINDOWS).min(windows);
        let blocks: Vec<Vec<Sample>> = (b0..b1)
            .into_par_iter()
            .map(|w| {
                let mut params = file.window_params(w).unwrap_or_default();
                if let Some(b) = base {
                    // §6.2: w = base + q * step, one f32 addition per weight.
                    for (p, &b) in params.iter_mut().zip(&b.params) {
                        *p += b;
                    }
                }
                let y = model::render_window(&file.arch, &params, &grid, h.window_frames(w as u64));
                y.into_iter().map(|v| to_sample(&spec, v)).collect()
            })
            .collect();
        let flat: Vec<Sample> = blocks.concat();
        sink(&h, b0 as u64 * u64::from(h.window_len), &flat)?;
    }
    Ok(h)
}

/// Decode a whole audio file into memory: the header and the stored samples.
///
/// # Errors
/// As [`decode_audio_stream`].
pub fn decode_audio(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(AudioHeader, Vec<Sample>), DecodeError> {
    decode_audio_with(bytes, limits, &[])
}

/// As [`decode_audio`], looking a file's base up in `bases` first, then among the embedded
/// ones.
///
/// # Errors
/// As [`decode_audio_stream`].
pub fn decode_audio_with(
    bytes: &[u8],
    limits: &Limits,
    bases: &[Base],
) -> Result<(AudioHeader, Vec<Sample>), DecodeError> {
    let mut out = Vec::new();
    let h = decode_audio_stream_with(bytes, limits, bases, &mut |_, _, s| {
        out.extend_from_slice(s);
        Ok(())
    })?;
    Ok((h, out))
}

/// Decode `bytes` and compare the result with `reference`, block by block (bounded memory):
/// PSNR (waveform mapped to [0, 1]), SNR and the rate from the real file size.
///
/// # Errors
/// As [`decode_audio_stream`]; [`DecodeError::Parameter`] when the reference does not have
/// the coded channel count and length.
pub fn eval_audio(
    bytes: &[u8],
    reference: &mut dyn AudioSource,
    limits: &Limits,
) -> Result<AudioQuality, DecodeError> {
    eval_audio_with(bytes, reference, limits, &[])
}

/// As [`eval_audio`], looking a file's base up in `bases` first, then among the embedded
/// ones.
///
/// # Errors
/// As [`eval_audio`].
pub fn eval_audio_with(
    bytes: &[u8],
    reference: &mut dyn AudioSource,
    limits: &Limits,
    bases: &[Base],
) -> Result<AudioQuality, DecodeError> {
    let h = if format::is_audio_modulation_file(bytes) {
        format::read_audio_mod_file(bytes, limits).map(|f| f.audio)
    } else if format::is_audio_grid_file(bytes) {
        format::read_audio_grid_file(bytes, limits).map(|f| f.audio)
    } else {
        format::read_audio_file(bytes, limits).map(|f| f.audio)
    }
    .map_err(DecodeError::Format)?;
    let rs = reference.spec();
    if rs.channels != h.channels || reference.frames() != h.frames {
        return Err(DecodeError::Parameter(format!(
            "the reference has {} channel(s) and {} frames, the .inr file {} and {} \
             (expected the same clip)",
            rs.channels,
            reference.frames(),
            h.channels,
            h.frames
        )));
    }
    let spec = output_spec(&h);
    let mut d = AudioDistortion::default();
    let mut buf = Vec::new();
    let c = u64::from(h.channels);
    decode_audio_stream_with(bytes, limits, bases, &mut |_, start, s| {
        reference.read(start, (s.len() as u64 / c) as usize, &mut buf)?;
        for (&x, &y) in buf.iter().zip(s) {
            d.add(f64::from(x), sample_value(&spec, y));
        }
        Ok(())
    })?;
    let duration_s = h.duration_s();
    Ok(AudioQuality {
        psnr: d.psnr(),
        snr: d.snr(),
        kbps: crate::metrics::kbps(bytes.len() as u64, duration_s),
        duration_s,
        frames: h.frames,
    })
}

impl From<AudioError> for DecodeError {
    fn from(e: AudioError) -> Self {
        DecodeError::Audio(e)
    }
}
