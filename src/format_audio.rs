//! Audio files (modality 2, format version 2): the audio section and the windowed layout of
//! `codec-spec.md` §11. A child module of [`crate::format`] so it shares the reader, the
//! validators and the payload-group code of the image container; nothing here imports the
//! model.
//!
//! Layout (§11.1): fixed header (30 bytes, version 2, modality 2, width = height = 0,
//! `coord_dims` 1, `out_channels` = channels) | audio section (§11.2, 20 bytes) | step table
//! (T entries, shared by all windows, §11.3) | base reference (8 bytes, only with flag bit 0,
//! §11.10) | payload length | payload (one group per distinct bit width; inside a group the
//! tensors of window 0, then window 1, …, §11.4) | CRC32.

use super::{
    group_bits, max_abs_for_bits, validate_bits, validate_header_bits, Arch, FormatError, Limits,
    Reader, Step, BASE_REF_BYTES, CODER_ADAPTIVE, CRC_BYTES, FLAG_BASE, GROUP_LEN_BYTES,
    HEADER_BYTES, MAGIC, PAYLOAD_LEN_BYTES, STEP_BYTES,
};
use crate::entropy::{self, EntropyError};

/// §3.2 The version that introduced audio (and the version every audio file carries).
pub const VERSION_AUDIO: u8 = 2;
/// §3.3 Modality code for audio.
pub const MODALITY_AUDIO: u8 = 2;
/// §11.2 Size of the audio section.
pub const AUDIO_SECTION_BYTES: usize = 20;
/// §11.2 Largest channel count.
pub const MAX_AUDIO_CHANNELS: u8 = 16;
/// §11.2 Largest sample rate (Hz).
pub const MAX_SAMPLE_RATE: u32 = 4_000_000;
/// §11.2 Largest window length (frames).
pub const MAX_WINDOW_LEN: u32 = 1 << 20;
/// §11.2 Largest number of frames (WAV cannot hold more anyway).
pub const MAX_AUDIO_FRAMES: u64 = u32::MAX as u64;
/// §11.1 Flags an audio file may carry: the base reference (bit 0, §11.10).
pub const AUDIO_KNOWN_FLAGS: u16 = FLAG_BASE;
/// §11.5 Largest number of coded symbols of a whole file (windows x parameters per window):
/// the decoder holds them as `i32`, so this bounds its memory at 128 MiB.
pub const MAX_AUDIO_SYMBOLS: u64 = 1 << 25;
/// §11.5 Largest window feature table, window length x input features (64 MiB of f32).
pub const MAX_WINDOW_FEATURES: u64 = 1 << 24;
/// §11.5 Largest rendering work, frames x parameters per window (as for images).
pub const MAX_AUDIO_WORK: u64 = 1 << 40;

/// §11.2 How samples are stored in the original (and the decoded) WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SampleKind {
    /// Signed integer PCM (8-bit WAV is unsigned on disk; the codec sees it as signed).
    Int,
    /// IEEE-754 binary32.
    Float,
}

impl SampleKind {
    fn code(self) -> u8 {
        match self {
            SampleKind::Int => 0,
            SampleKind::Float => 1,
        }
    }
}

/// §11.2 The audio section: what the decoder needs to restore the WAV file and the window
/// layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AudioHeader {
    /// Samples per second per channel, 1..=[`MAX_SAMPLE_RATE`].
    pub sample_rate: u32,
    /// 1..=[`MAX_AUDIO_CHANNELS`]; equals the network's `out_channels` (channels are coded
    /// jointly: one network with C outputs per window).
    pub channels: u8,
    pub sample_kind: SampleKind,
    /// 8, 16, 24 or 32 for [`SampleKind::Int`]; 32 for [`SampleKind::Float`].
    pub bits_per_sample: u8,
    /// Frames (samples per channel), 1..=[`MAX_AUDIO_FRAMES`].
    pub frames: u64,
    /// Frames per window, 1..=[`MAX_WINDOW_LEN`]; the last window may be shorter.
    pub window_len: u32,
}

impl AudioHeader {
    /// Number of windows: `ceil(frames / window_len)` (0 if `window_len` is 0).
    pub fn num_windows(&self) -> u64 {
        if self.window_len == 0 {
            return 0;
        }
        self.frames.div_ceil(u64::from(self.window_len))
    }

    /// Frames of window `w` (the last one may be shorter).
    pub fn window_frames(&self, w: u64) -> usize {
        let l = u64::from(self.window_len);
        let start = w.saturating_mul(l);
        self.frames.saturating_sub(start).min(l) as usize
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames as f64 / f64::from(self.sample_rate.max(1))
    }

    /// Checks every field (§11.2).
    ///
    /// # Errors
    /// [`FormatError::InvalidField`] for a value outside its range.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |field, value: u64, expected| {
            Err(FormatError::InvalidField {
                field,
                value,
                expected,
            })
        };
        if self.sample_rate == 0 || self.sample_rate > MAX_SAMPLE_RATE {
            return bad("sample rate", self.sample_rate.into(), "1..=4000000 Hz");
        }
        if self.channels == 0 || self.channels > MAX_AUDIO_CHANNELS {
            return bad("channels", self.channels.into(), "1..=16");
        }
        match (self.sample_kind, self.bits_per_sample) {
            (SampleKind::Int, 8 | 16 | 24 | 32) | (SampleKind::Float, 32) => {}
            (_, b) => {
                return bad(
                    "bits per sample",
                    b.into(),
                    "8, 16, 24 or 32 for integer samples; 32 for float samples",
                )
            }
        }
        if self.frames == 0 || self.frames > MAX_AUDIO_FRAMES {
            return bad("frame count", self.frames, "1..=4294967295");
        }
        if self.window_len == 0 || self.window_len > MAX_WINDOW_LEN {
            return bad(
                "window length",
                self.window_len.into(),
                "1..=1048576 frames",
            );
        }
        Ok(())
    }

    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sample_rate.to_le_bytes());
        out.push(self.channels);
        out.push(self.sample_kind.code());
        out.push(self.bits_per_sample);
        out.push(0); // reserved
        out.extend_from_slice(&self.frames.to_le_bytes());
        out.extend_from_slice(&self.window_len.to_le_bytes());
    }

    pub(super) fn read(r: &mut Reader<'_>) -> Result<AudioHeader, FormatError> {
        let sample_rate = r.u32("audio section")?;
        let channels = r.u8("audio section")?;
        let kind = r.u8("audio section")?;
        let bits_per_sample = r.u8("audio section")?;
        let reserved = r.u8("audio section")?;
        let frames = u64::from_le_bytes(r.array("audio section")?);
        let window_len = r.u32("audio section")?;
        let sample_kind = match kind {
            0 => SampleKind::Int,
            1 => SampleKind::Float,
            k => {
                return Err(FormatError::InvalidField {
                    field: "sample format",
                    value: k.into(),
                    expected: "0 (integer PCM) or 1 (IEEE float)",
                })
            }
        };
        if reserved != 0 {
            return Err(FormatError::InvalidField {
                field: "audio section reserved byte",
                value: reserved.into(),
                expected: "0",
            });
        }
        Ok(AudioHeader {
            sample_rate,
            channels,
            sample_kind,
            bits_per_sample,
            frames,
            window_len,
        })
    }
}

/// A complete audio `.inr` file in memory (§11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioInrFile {
    pub audio: AudioHeader,
    /// The architecture of every window network: `coord_dims` 1, `out_channels` = channels.
    pub arch: Arch,
    /// Header bit width: the maximum of `tensor_bits`.
    pub bits: u8,
    /// One step per tensor of the window network, shared by all windows (§11.3).
    pub steps: Vec<Step>,
    /// One bit width per tensor, shared by all windows.
    pub tensor_bits: Vec<u8>,
    /// All symbols, window after window; each window holds its tensors in file order (§6.1),
    /// so window `w` is `symbols[w * P .. (w + 1) * P]` with `P = arch.num_params()`.
    /// With a base these are the quantized residuals from the base's weights.
    pub symbols: Vec<i32>,
    /// The audio base (§10.4) every window is a residual from (flag bit 0, §11.10): its id, or
    /// `None` for weights coded as they are.
    pub base_id: Option<u64>,
}

impl AudioInrFile {
    /// Dequantized parameters of window `w` (§6.2) without the base term (for a file with a
    /// base reference: the residuals `q * step`), or `None` if `w` is out of range.
    pub fn window_params(&self, w: usize) -> Option<Vec<f32>> {
        let p = self.arch.num_params();
        let syms = self
            .symbols
            .get(w.checked_mul(p)?..w.checked_add(1)?.checked_mul(p)?)?;
        let mut out = Vec::with_capacity(p);
        let mut off = 0;
        for (&n, step) in self.arch.tensor_lens().iter().zip(&self.steps) {
            let s = step.to_f32();
            out.extend(syms.get(off..off + n)?.iter().map(|&q| q as f32 * s));
            off += n;
        }
        Some(out)
    }
}

/// Audio summary for `inspect` (§11.6).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AudioInfo {
    #[serde(flatten)]
    pub header: AudioHeader,
    pub windows: u64,
    pub duration_s: f64,
    /// `8 * file bytes / duration / 1000`.
    pub kbps: f64,
}

/// §11.5, §12.7: the network of an audio file has one coordinate and the clip's channel count
/// as outputs, the generic ranges and parameter limit, and the clip fits the sample limit.
pub(super) fn check_audio_net(
    arch: &Arch,
    audio: &AudioHeader,
    limits: &Limits,
) -> Result<(), FormatError> {
    if arch.coord_dims != 1 {
        return Err(FormatError::InvalidField {
            field: "coord_dims",
            value: arch.coord_dims.into(),
            expected: "1 (audio)",
        });
    }
    check_channels_and_samples(arch, audio, limits)?;
    arch.validate_net(limits)
}

/// §11.5, §14.3: the network's outputs are the audio section's channels, and the clip fits
/// the sample limit.
pub(super) fn check_channels_and_samples(
    arch: &Arch,
    audio: &AudioHeader,
    limits: &Limits,
) -> Result<(), FormatError> {
    if arch.out_channels != audio.channels {
        return Err(FormatError::InvalidField {
            field: "out_channels",
            value: arch.out_channels.into(),
            expected: "the channel count of the audio section",
        });
    }
    let samples = audio.frames.saturating_mul(u64::from(audio.channels));
    if samples > limits.max_samples {
        return Err(FormatError::LimitExceeded {
            what: "audio samples (frames x channels)",
            value: samples,
            limit: limits.max_samples,
        });
    }
    Ok(())
}

/// §11.5 checks of the architecture of an audio file (in addition to the generic ranges).
fn validate_audio_arch(
    arch: &Arch,
    audio: &AudioHeader,
    limits: &Limits,
) -> Result<(), FormatError> {
    check_audio_net(arch, audio, limits)?;
    let p = arch.num_params_u64();
    let symbols = audio.num_windows().saturating_mul(p);
    if symbols > MAX_AUDIO_SYMBOLS {
        return Err(FormatError::LimitExceeded {
            what: "coded parameters (windows x parameters per window)",
            value: symbols,
            limit: MAX_AUDIO_SYMBOLS,
        });
    }
    let table = u64::from(audio.window_len).saturating_mul(arch.in_features() as u64);
    if table > MAX_WINDOW_FEATURES {
        return Err(FormatError::LimitExceeded {
            what: "window feature table (window length x input features)",
            value: table,
            limit: MAX_WINDOW_FEATURES,
        });
    }
    let work = audio.frames.saturating_mul(p);
    if work > MAX_AUDIO_WORK {
        return Err(FormatError::LimitExceeded {
            what: "decode work (frames x parameters per window)",
            value: work,
            limit: MAX_AUDIO_WORK,
        });
    }
    Ok(())
}

/// Lengths of the tensors of group `bits` over all windows, window after window (§11.4).
fn audio_group_lens(tensor_bits: &[u8], lens: &[usize], windows: usize, bits: u8) -> Vec<usize> {
    let per: Vec<usize> = tensor_bits
        .iter()
        .zip(lens)
        .filter(|&(&b, _)| b == bits)
        .map(|(_, &n)| n)
        .collect();
    let mut out = Vec::with_capacity(per.len().saturating_mul(windows));
    for _ in 0..windows {
        out.extend_from_slice(&per);
    }
    out
}

/// Serialises an audio file (§11), validating it first.
///
/// # Errors
/// [`FormatError::InvalidField`] / [`FormatError::LimitExceeded`] for values a default decoder
/// would reject, [`FormatError::TensorCount`] / [`FormatError::TensorLength`] when steps, bits
/// or symbols do not match the architecture and window count, [`FormatError::Entropy`] for a
/// symbol outside its tensor's range.
///
/// # Panics
/// Never.
pub fn write_audio_file(f: &AudioInrFile) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    f.audio.validate()?;
    validate_audio_arch(&f.arch, &f.audio, &limits)?;
    validate_bits("bits", f.bits)?;
    let lens = f.arch.tensor_lens();
    if f.steps.len() != lens.len() || f.tensor_bits.len() != lens.len() {
        return Err(FormatError::TensorCount {
            expected: lens.len(),
            found: f.steps.len().min(f.tensor_bits.len()),
        });
    }
    for (&s, &b) in f.steps.iter().zip(&f.tensor_bits) {
        s.validate()?;
        validate_bits("tensor bits", b)?;
    }
    validate_header_bits(f.bits, &f.tensor_bits)?;
    let windows = f.audio.num_windows() as usize; // <= MAX_AUDIO_SYMBOLS after validation
    let p = f.arch.num_params();
    if f.symbols.len() != windows * p {
        return Err(FormatError::TensorLength {
            index: 0,
            expected: windows * p,
            found: f.symbols.len(),
        });
    }
    let mut payload = Vec::new();
    for b in group_bits(&f.tensor_bits) {
        let mut refs: Vec<&[i32]> = Vec::new();
        for w in 0..windows {
            let mut off = w * p;
            for (&n, &tb) in lens.iter().zip(&f.tensor_bits) {
                if tb == b {
                    refs.push(f.symbols.get(off..off + n).unwrap_or(&[]));
                }
                off += n;
            }
        }
        let group = entropy::encode_tensors(&refs, max_abs_for_bits(b))?;
        let len = u32::try_from(group.len()).map_err(|_| FormatError::PayloadTooLarge {
            len: group.len() as u64,
        })?;
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&group);
    }
    let payload_len = u32::try_from(payload.len()).map_err(|_| FormatError::PayloadTooLarge {
        len: payload.len() as u64,
    })?;
    let mut out = Vec::with_capacity(
        HEADER_BYTES + AUDIO_SECTION_BYTES + STEP_BYTES * lens.len() + 8 + payload.len(),
    );
    out.extend_from_slice(&MAGIC);
    out.push(VERSION_AUDIO);
    out.push(MODALITY_AUDIO);
    let flags = if f.base_id.is_some() { FLAG_BASE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // width: 0 for audio (§11.1)
    out.extend_from_slice(&0u32.to_le_bytes()); // height: 0 for audio
    f.arch.write(&mut out);
    out.push(f.bits);
    out.push(CODER_ADAPTIVE);
    f.audio.write(&mut out);
    for (s, &b) in f.steps.iter().zip(&f.tensor_bits) {
        out.extend_from_slice(&s.mantissa.to_le_bytes());
        out.push(s.exponent);
        out.push(b);
    }
    if let Some(id) = f.base_id {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

struct ParsedAudio<'a> {
    audio: AudioHeader,
    arch: Arch,
    bits: u8,
    steps: Vec<Step>,
    tensor_bits: Vec<u8>,
    base_id: Option<u64>,
    groups: Vec<(u8, &'a [u8])>,
}

/// Structure, CRC and field validation of an audio file (§11.5 steps 1–5).
fn parse_audio<'a>(bytes: &'a [u8], limits: &Limits) -> Result<ParsedAudio<'a>, FormatError> {
    let (mut r, version) = super::read_prelude(bytes, limits)?;
    if version != VERSION_AUDIO {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let super::FixedHeader {
        modality,
        flags,
        width,
        height,
        arch,
        bits,
        coder,
    } = super::read_fixed_header(&mut r)?;
    let audio = AudioHeader::read(&mut r)?;
    let num_tensors = arch.num_tensors();
    let step_bytes = r.take(num_tensors * STEP_BYTES, "step table")?;
    // The flags decide the layout (§11.1): checked before reading what follows the steps.
    if flags & super::FLAG_MODULATIONS != 0
        && flags & !(AUDIO_KNOWN_FLAGS | super::FLAG_MODULATIONS) == 0
    {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "0 or 1 in a windowed audio file; flag bit 2 marks an audio modulation \
                       file: read it with format::read_audio_mod_file",
        });
    }
    if flags == super::FLAG_GRID {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "0 or 1 in a windowed audio file; flag bit 3 marks an audio grid file: \
                       read it with format::read_audio_grid_file",
        });
    }
    if flags & !AUDIO_KNOWN_FLAGS != 0 {
        return Err(FormatError::UnknownFlags {
            flags,
            known: AUDIO_KNOWN_FLAGS,
            version: VERSION_AUDIO,
        });
    }
    let base_id = if flags & FLAG_BASE != 0 {
        Some(u64::from_le_bytes(
            r.array::<BASE_REF_BYTES>("base reference")?,
        ))
    } else {
        None
    };
    let payload = super::read_payload_and_crc(&mut r, bytes)?;
    let payload_len = payload.len() as u32; // read from a u32 field: exact
    if modality != MODALITY_AUDIO {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: modality.into(),
            expected: "2 (audio)",
        });
    }
    if width != 0 || height != 0 {
        return Err(FormatError::InvalidField {
            field: "width/height",
            value: u64::from(width.max(height)),
            expected: "0 for audio (the audio section gives the sizes)",
        });
    }
    audio.validate()?;
    validate_audio_arch(&arch, &audio, limits)?;
    validate_bits("bits", bits)?;
    if coder != CODER_ADAPTIVE {
        return Err(FormatError::InvalidField {
            field: "coder",
            value: coder.into(),
            expected: "0 (adaptive frequency model)",
        });
    }
    if !payload_len.is_multiple_of(4) {
        return Err(FormatError::InvalidField {
            field: "payload length",
            value: payload_len.into(),
            expected: "a multiple of 4 (whole 32-bit words)",
        });
    }
    let mut steps = Vec::with_capacity(num_tensors);
    let mut tensor_bits = Vec::with_capacity(num_tensors);
    for c in step_bytes.chunks_exact(STEP_BYTES) {
        let &[lo, hi, exponent, tb] = c else {
            continue;
        };
        let s = Step {
            mantissa: u16::from_le_bytes([lo, hi]),
            exponent,
        };
        s.validate()?;
        validate_bits("tensor bits", tb)?;
        steps.push(s);
        tensor_bits.push(tb);
    }
    validate_header_bits(bits, &tensor_bits)?;
    let mut g = Reader {
        bytes: payload,
        pos: 0,
    };
    let mut groups = Vec::new();
    for b in group_bits(&tensor_bits) {
        let len = g.u32("payload group length")?;
        if len % 4 != 0 {
            return Err(FormatError::InvalidField {
                field: "payload group length",
                value: len.into(),
                expected: "a multiple of 4 (whole 32-bit words)",
            });
        }
        groups.push((b, g.take(len as usize, "payload group")?));
    }
    if g.pos != payload.len() {
        return Err(FormatError::PayloadGroups {
            used: g.pos as u64,
            len: payload.len() as u64,
        });
    }
    Ok(ParsedAudio {
        audio,
        arch,
        bits,
        steps,
        tensor_bits,
        base_id,
        groups,
    })
}

/// Parses and entropy-decodes an audio file (§11.5).
///
/// # Errors
/// Every malformed, truncated, damaged or over-limit input gives a [`FormatError`].
///
/// # Panics
/// Never, for any input.
pub fn read_audio_file(bytes: &[u8], limits: &Limits) -> Result<AudioInrFile, FormatError> {
    let p = parse_audio(bytes, limits)?;
    let lens = p.arch.tensor_lens();
    let windows = p.audio.num_windows() as usize; // bounded by MAX_AUDIO_SYMBOLS
    let np = p.arch.num_params();
    let mut symbols = vec![0i32; windows * np];
    for &(b, group) in &p.groups {
        let glens = audio_group_lens(&p.tensor_bits, &lens, windows, b);
        let decoded = entropy::decode_tensors(group, &glens, max_abs_for_bits(b))?;
        let mut it = decoded.into_iter();
        for w in 0..windows {
            let mut off = w * np;
            for (&n, &tb) in lens.iter().zip(&p.tensor_bits) {
                if tb == b {
                    let t = it.next().ok_or(EntropyError::InvalidData { at: 0 })?;
                    match symbols.get_mut(off..off + n) {
                        Some(dst) if t.len() == n => dst.copy_from_slice(&t),
                        _ => return Err(EntropyError::InvalidData { at: 0 }.into()),
                    }
                }
                off += n;
            }
        }
    }
    Ok(AudioInrFile {
        audio: p.audio,
        arch: p.arch,
        bits: p.bits,
        steps: p.steps,
        tensor_bits: p.tensor_bits,
        symbols,
        base_id: p.base_id,
    })
}

/// Header and section sizes of an audio file without entropy decoding (§11.6).
pub(super) fn inspect_audio(bytes: &[u8]) -> Result<super::FileInfo, FormatError> {
    let p = parse_audio(bytes, &Limits::default())?;
    let total = bytes.len() as u64;
    let num_tensors = p.steps.len();
    let groups = super::group_infos(&p.groups, &p.tensor_bits);
    let payload_bytes: u64 = groups.iter().map(|g| g.bytes).sum();
    let samples = p.audio.frames.saturating_mul(u64::from(p.audio.channels));
    let duration_s = p.audio.duration_s();
    Ok(super::FileInfo {
        version: VERSION_AUDIO,
        flags: if p.base_id.is_some() { FLAG_BASE } else { 0 },
        base_id: p.base_id.map(|id| format!("{id:016x}")),
        sparsity: None,
        codebooks: None,
        modulation: None,
        grid: None,
        modality: "audio",
        width: 0,
        height: 0,
        channels: p.arch.out_channels,
        arch: p.arch,
        num_params: p.arch.num_params_u64(),
        bits: p.bits,
        coder: CODER_ADAPTIVE,
        num_tensors,
        steps: p.steps,
        tensor_bits: p.tensor_bits,
        header_bytes: (HEADER_BYTES + AUDIO_SECTION_BYTES) as u64,
        side_info_bytes: (STEP_BYTES * num_tensors
            + if p.base_id.is_some() {
                BASE_REF_BYTES
            } else {
                0
            }
            + PAYLOAD_LEN_BYTES
            + GROUP_LEN_BYTES * groups.len()) as u64,
        payload_bytes,
        groups,
        crc_bytes: CRC_BYTES as u64,
        total_bytes: total,
        // For audio: bits per coded sample (all channels).
        bpp: 8.0 * total as f64 / samples.max(1) as f64,
        audio: Some(AudioInfo {
            header: p.audio,
            windows: p.audio.num_windows(),
            duration_s,
            kbps: 8.0 * total as f64 / duration_s.max(f64::MIN_POSITIVE) / 1000.0,
        }),
    })
}
