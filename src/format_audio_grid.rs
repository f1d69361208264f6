//! Audio grid files (modality 2, flag bit 3, format version 2, `codec-spec.md` §14): a clip
//! cut into segments of `window_len` frames, each segment a one-row latent pyramid and a small
//! synthesis SIREN with the clip's channels as outputs, coded exactly like the body of an
//! image grid file (§13). A child module of [`crate::format`]: it reuses the fixed header, the
//! audio section (§11.2) and the grid body of [`super::grid`]; nothing here imports the model.
//!
//! Layout (§14.1): fixed header (30 bytes: version 2, modality 2, flags exactly `FLAG_GRID`,
//! width = height = 0, `coord_dims` = latent levels L, `out_channels` = C) | audio section
//! (20 bytes, `window_len` = segment length) | payload length | payload: the segments in
//! order, each a flags byte and a §13 grid body | CRC32.

use super::audio::{AudioHeader, AUDIO_SECTION_BYTES, MAX_AUDIO_SYMBOLS, MAX_AUDIO_WORK};
use super::grid::{
    arm_info, check_arm_coding, decode_body, parse_body, take_tables, validate_grid_net,
    write_grid_body, ArmHeader, LevelPredictor, Synthesis, ARM_HEADER_BYTES, FLAG_GRID,
    VERSION_GRID,
};
use super::{
    grid_level_dims, read_payload_and_crc, Arch, FileInfo, FormatError, Limits, QTensor, Reader,
    CODER_ADAPTIVE, CRC_BYTES, HEADER_BYTES, MAGIC, MODALITY_AUDIO, OFF_FLAGS, OFF_MODALITY,
    OFF_VERSION, PAYLOAD_LEN_BYTES,
};
use crate::arm::{Arm, ArmLayout};
use crate::entropy::GridContexts;

/// §14.2 Segment flag bit 0: the segment's latents are predicted (§13.7).
pub const SEGMENT_PREDICTED: u8 = 1;
/// §14.2 Segment flag bit 1 (with bit 0): the predicted stream's five contexts are split by the
/// prediction's fractional part (§5.10, [`GridContexts::FiveSplit`]).
pub const SEGMENT_SPLIT: u8 = 2;
/// §14.2 Segment flag bit 2 (alone): the segment's latents are ARM-coded (§5.11 with the
/// one-row inputs); its ARM header (§13.9) follows the step table.
pub const SEGMENT_ARM: u8 = 4;

/// One segment of an audio grid file (§14.2): the synthesis tensors then the L latent levels
/// (level `l` holds `ceil(n / 2^l)` symbols for a segment of `n` frames), and the predictors
/// when its latents are predicted, or the ARM when they are ARM-coded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridSegment {
    pub tensors: Vec<QTensor>,
    pub predictor: Option<Vec<LevelPredictor>>,
    /// The latent stream's contexts: [`GridContexts::Five`], or [`GridContexts::FiveSplit`]
    /// (segment flag bit 1, predicted segments only).
    pub contexts: GridContexts,
    /// The ARM of ARM-coded latents (segment flag bit 2: no predictor, five contexts, one
    /// layer-1 bias row per latent level).
    pub arm: Option<Arm>,
}

impl GridSegment {
    /// The segment's flags byte (§14.2), after checking that its latent coding is one an
    /// audio segment of `levels` latent levels can have.
    fn flags(&self, levels: usize) -> Result<u8, FormatError> {
        if let Some(arm) = &self.arm {
            check_arm_coding(
                arm,
                self.predictor.is_some(),
                self.contexts,
                levels,
                FormatError::InvalidField {
                    field: "segment latent coding",
                    value: u64::from(SEGMENT_ARM),
                    expected: "an ARM-coded segment (flag bit 2) without predictor or split",
                },
            )?;
            if arm.prior_models {
                return Err(FormatError::InvalidField {
                    field: "segment latent coding",
                    value: u64::from(SEGMENT_ARM),
                    expected: "an ARM with flat models (audio segments have no prior models)",
                });
            }
            return Ok(SEGMENT_ARM);
        }
        match (self.contexts, self.predictor.is_some()) {
            (GridContexts::Five, p) => Ok(u8::from(p) * SEGMENT_PREDICTED),
            (GridContexts::FiveSplit, true) => Ok(SEGMENT_PREDICTED | SEGMENT_SPLIT),
            (c, _) => Err(FormatError::InvalidField {
                field: "segment latent contexts",
                value: c.pred_models() as u64,
                expected: "five, or five split by the prediction's fraction with a predictor",
            }),
        }
    }
}

/// A complete audio grid file in memory (§14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioGridInrFile {
    /// The audio section; `window_len` is the segment length.
    pub audio: AudioHeader,
    /// The synthesis network of every segment: `coord_dims` = latent levels L,
    /// `out_channels` = channels.
    pub arch: Arch,
    /// `ceil(frames / window_len)` segments in order (the last may be shorter).
    pub segments: Vec<GridSegment>,
}

/// True when `bytes` start like an audio grid file: magic, version 2, modality 2 (audio) and
/// flag bit 3 set. Nothing else is validated.
pub fn is_audio_grid_file(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&MAGIC[..])
        && bytes.get(OFF_VERSION) == Some(&VERSION_GRID)
        && bytes.get(OFF_MODALITY) == Some(&MODALITY_AUDIO)
        && bytes
            .get(OFF_FLAGS..OFF_FLAGS + 2)
            .is_some_and(|f| u16::from_le_bytes([f[0], f[1]]) & FLAG_GRID != 0)
}

/// §14.1 The architecture of an audio grid file (and of an audio grid base, §10.5): the grid
/// checks of §13.1 but with 1 ..= 16 outputs.
///
/// # Errors
/// [`FormatError::InvalidField`] naming the first field out of range.
pub fn validate_audio_grid_arch(arch: &Arch, limits: &Limits) -> Result<(), FormatError> {
    validate_grid_net(
        arch,
        limits,
        |c| (1..=super::MAX_AUDIO_CHANNELS).contains(&c),
        "1..=16 (audio channels)",
    )
}

/// §14.3 Field checks before anything is decoded (an encoder runs them before fitting): the audio section, the architecture (grid
/// levels and depth, `out_channels` = C), the sample limit, the coded symbol count (all
/// segments' synthesis parameters and latents) and the rendering work. Returns the latent
/// count of the whole clip.
pub fn check_audio_grid(
    audio: &AudioHeader,
    arch: &Arch,
    limits: &Limits,
) -> Result<u64, FormatError> {
    audio.validate()?;
    validate_audio_grid_arch(arch, limits)?;
    super::audio::check_channels_and_samples(arch, audio, limits)?;
    let n = audio.num_windows();
    let p = arch.num_params_u64();
    // Latents of a segment of `len` frames: sum over levels of ceil(len / 2^l).
    let latents_of = |len: u64| -> u64 {
        (0..arch.coord_dims)
            .map(|l| len.div_ceil(1u64 << l))
            .sum::<u64>()
    };
    let last = audio.window_frames(n.saturating_sub(1)) as u64;
    let latents = n
        .saturating_sub(1)
        .saturating_mul(latents_of(u64::from(audio.window_len)))
        .saturating_add(latents_of(last));
    let symbols = n.saturating_mul(p).saturating_add(latents);
    if symbols > MAX_AUDIO_SYMBOLS {
        return Err(FormatError::LimitExceeded {
            what: "coded symbols (segments x synthesis parameters + latents)",
            value: symbols,
            limit: MAX_AUDIO_SYMBOLS,
        });
    }
    let work = audio
        .frames
        .saturating_mul(p.saturating_add(4 * u64::from(arch.coord_dims)));
    if work > MAX_AUDIO_WORK {
        return Err(FormatError::LimitExceeded {
            what: "decode work (frames x (synthesis parameters + 4 x levels))",
            value: work,
            limit: MAX_AUDIO_WORK,
        });
    }
    Ok(latents)
}

/// §14.2 Level sizes and tensor lengths of a segment of `frames` frames.
fn segment_shape(arch: &Arch, frames: usize) -> (Vec<(u32, u32)>, Vec<usize>) {
    let dims = grid_level_dims(frames as u32, 1, arch.coord_dims);
    let mut lens = arch.tensor_lens();
    lens.extend(dims.iter().map(|&(w, _)| w as usize));
    (dims, lens)
}

/// Bytes a segment of `frames` frames takes in an audio grid file (§14.2: its flags byte and
/// grid body), for an encoder choosing between codings.
///
/// # Errors
/// As [`write_audio_grid_file`].
pub fn audio_grid_segment_bytes(
    arch: &Arch,
    frames: usize,
    seg: &GridSegment,
) -> Result<usize, FormatError> {
    let (dims, lens) = segment_shape(arch, frames);
    seg.flags(dims.len())?;
    let (_, body) = write_grid_body(
        arch,
        &dims,
        &lens,
        &seg.tensors,
        None,
        seg.predictor.as_deref(),
        seg.contexts,
        seg.arm.as_ref().map(|a| (a, ArmLayout::Line)),
        &Limits::default(),
    )?;
    Ok(1 + body.len())
}

/// Serialises an audio grid file (§14), validating it first with [`Limits::default`].
///
/// # Errors
/// [`FormatError::InvalidField`] / [`FormatError::LimitExceeded`] for values a default decoder
/// would reject, [`FormatError::TensorCount`] / [`FormatError::TensorLength`] when a segment's
/// tensors do not match the architecture and its length, [`FormatError::Entropy`] for a symbol
/// outside its tensor's range.
///
/// # Panics
/// Never.
pub fn write_audio_grid_file(f: &AudioGridInrFile) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    check_audio_grid(&f.audio, &f.arch, &limits)?;
    let n = f.audio.num_windows();
    if f.segments.len() as u64 != n {
        return Err(FormatError::InvalidField {
            field: "segments",
            value: f.segments.len() as u64,
            expected: "ceil(frames / window_len) segments",
        });
    }
    let mut payload = Vec::new();
    let mut bits = 0u8;
    for (k, seg) in f.segments.iter().enumerate() {
        let (dims, lens) = segment_shape(&f.arch, f.audio.window_frames(k as u64));
        let seg_flags = seg.flags(dims.len())?;
        let (b, body) = write_grid_body(
            &f.arch,
            &dims,
            &lens,
            &seg.tensors,
            None,
            seg.predictor.as_deref(),
            seg.contexts,
            seg.arm.as_ref().map(|a| (a, ArmLayout::Line)),
            &limits,
        )?;
        bits = bits.max(b);
        payload.push(seg_flags);
        payload.extend_from_slice(&body);
    }
    // Segments are a flags byte and whole words: pad the payload to whole words (§14.1).
    while payload.len() % 4 != 0 {
        payload.push(0);
    }
    super::check_section("payload", payload.len() as u64, &limits)?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| FormatError::PayloadTooLarge {
        len: payload.len() as u64,
    })?;
    let mut out = Vec::with_capacity(
        HEADER_BYTES + AUDIO_SECTION_BYTES + PAYLOAD_LEN_BYTES + payload.len() + CRC_BYTES,
    );
    out.extend_from_slice(&MAGIC);
    out.push(VERSION_GRID);
    out.push(MODALITY_AUDIO);
    out.extend_from_slice(&FLAG_GRID.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    f.arch.write(&mut out);
    out.push(bits);
    out.push(CODER_ADAPTIVE);
    f.audio.write(&mut out);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    super::finish_file(out, &limits)
}

/// A parsed segment: its flags byte's predictor choice and validated body.
struct ParsedSegment<'a> {
    body: super::grid::GridBody<'a>,
    bytes: u64,
    contexts: GridContexts,
}

struct ParsedAudioGrid<'a> {
    audio: AudioHeader,
    arch: Arch,
    bits: u8,
    latents: u64,
    segments: Vec<ParsedSegment<'a>>,
    /// Zero bytes after the last segment (0 ..= 3).
    padding: u64,
}

fn parse_audio_grid<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<ParsedAudioGrid<'a>, FormatError> {
    let (mut r, version) = super::read_prelude(bytes, limits)?;
    let super::FixedHeader {
        modality,
        flags,
        width,
        height,
        arch,
        bits,
        coder,
    } = super::read_fixed_header(&mut r)?;
    if version != VERSION_GRID || modality != MODALITY_AUDIO {
        return Err(FormatError::InvalidField {
            field: "version / modality",
            value: (u64::from(version) << 8) | u64::from(modality),
            expected: "version 2 and modality 2 (audio grid file)",
        });
    }
    if flags & !FLAG_GRID != 0 {
        return Err(FormatError::UnknownFlags {
            flags,
            known: FLAG_GRID,
            version,
        });
    }
    if flags != FLAG_GRID {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "0x0008 (audio grid file); without flag bit 3 this is a windowed audio \
                       file: read it with format::read_audio_file",
        });
    }
    let audio = AudioHeader::read(&mut r)?;
    let payload = read_payload_and_crc(&mut r, bytes)?;
    if width != 0 || height != 0 {
        return Err(FormatError::InvalidField {
            field: "width / height",
            value: u64::from(width.max(height)),
            expected: "0 in an audio file",
        });
    }
    super::validate_bits("bits", bits)?;
    if coder != CODER_ADAPTIVE {
        return Err(FormatError::InvalidField {
            field: "coder",
            value: coder.into(),
            expected: "0 (adaptive frequency model)",
        });
    }
    if payload.len() % 4 != 0 {
        return Err(FormatError::InvalidField {
            field: "payload length",
            value: payload.len() as u64,
            expected: "a multiple of 4 (whole 32-bit words)",
        });
    }
    super::check_section("payload", payload.len() as u64, limits)?;
    let latents = check_audio_grid(&audio, &arch, limits)?;
    // validate_audio_grid bounded the segment count by the symbol limit.
    let n = audio.num_windows();
    let mut g = Reader {
        bytes: payload,
        pos: 0,
    };
    let mut segments = Vec::new();
    let mut max_bits = 0u8;
    for _ in 0..n {
        let start = g.pos;
        let seg_flags = g.u8("segment flags")?;
        if ![
            0,
            SEGMENT_PREDICTED,
            SEGMENT_PREDICTED | SEGMENT_SPLIT,
            SEGMENT_ARM,
        ]
        .contains(&seg_flags)
        {
            return Err(FormatError::InvalidField {
                field: "segment flags",
                value: seg_flags.into(),
                expected: "0, 1, 3 or 4",
            });
        }
        let predicted = seg_flags & SEGMENT_PREDICTED != 0;
        let t = take_tables(&mut g, &arch, Synthesis::Own, predicted)?;
        let (step_bytes, pred_bytes) = (t.step_bytes, t.pred_bytes);
        let arm = if seg_flags == SEGMENT_ARM {
            let levels = usize::from(arch.coord_dims);
            let h = ArmHeader::parse(g.take(ARM_HEADER_BYTES + levels, "ARM header")?, levels)?;
            // Decoding evaluates the ARM once per latent (fewer than 2 per frame).
            let work = audio.frames.saturating_mul(2 * h.params(levels) as u64);
            if work > MAX_AUDIO_WORK {
                return Err(FormatError::LimitExceeded {
                    what: "ARM work (2 x frames x ARM parameters)",
                    value: work,
                    limit: MAX_AUDIO_WORK,
                });
            }
            Some(h)
        } else {
            None
        };
        let len = g.word_len("segment payload length")?;
        let seg_payload = g.take(len as usize, "segment payload")?;
        let (steps, tensor_bits) = super::read_step_table(step_bytes, "tensor bits")?;
        max_bits = tensor_bits.iter().copied().fold(max_bits, u8::max);
        let body = parse_body(
            &arch,
            steps,
            tensor_bits,
            pred_bytes,
            arm,
            seg_payload,
            limits,
        )?;
        segments.push(ParsedSegment {
            body,
            bytes: (g.pos - start) as u64,
            contexts: if seg_flags & SEGMENT_SPLIT != 0 {
                GridContexts::FiveSplit
            } else {
                GridContexts::Five
            },
        });
    }
    // Zero padding to whole words, then nothing.
    let rest = payload.get(g.pos..).unwrap_or(&[]);
    if rest.len() >= 4 || rest.iter().any(|&b| b != 0) {
        return Err(FormatError::PayloadGroups {
            used: g.pos as u64,
            len: payload.len() as u64,
        });
    }
    if max_bits != bits {
        return Err(FormatError::InvalidField {
            field: "bits",
            value: bits.into(),
            expected: "the largest bit width of all segments' step-table entries",
        });
    }
    Ok(ParsedAudioGrid {
        audio,
        arch,
        bits,
        latents,
        segments,
        padding: rest.len() as u64,
    })
}

/// Parses and entropy-decodes an audio grid file (§14.3).
///
/// # Errors
/// Every malformed, truncated, damaged or over-limit input gives a [`FormatError`].
///
/// # Panics
/// Never, for any input.
pub fn read_audio_grid_file(
    bytes: &[u8],
    limits: &Limits,
) -> Result<AudioGridInrFile, FormatError> {
    let p = parse_audio_grid(bytes, limits)?;
    let mut segments = Vec::with_capacity(p.segments.len());
    for (k, s) in p.segments.into_iter().enumerate() {
        let (dims, lens) = segment_shape(&p.arch, p.audio.window_frames(k as u64));
        let (tensors, predictor, arm) =
            decode_body(s.body, &dims, &lens, s.contexts, ArmLayout::Line)?;
        segments.push(GridSegment {
            tensors,
            predictor,
            contexts: s.contexts,
            arm,
        });
    }
    Ok(AudioGridInrFile {
        audio: p.audio,
        arch: p.arch,
        segments,
    })
}

/// Header and section sizes of an audio grid file without entropy decoding (§14.3 without
/// the last step).
pub(super) fn inspect_audio_grid(bytes: &[u8], limits: &Limits) -> Result<FileInfo, FormatError> {
    let p = parse_audio_grid(bytes, limits)?;
    let total = bytes.len() as u64;
    let n_synth = p.arch.num_tensors();
    let mut groups: Vec<super::GroupInfo> = Vec::new();
    let mut latent_stream_bytes = 0u64;
    let mut side = 0u64;
    let mut predicted = 0u64;
    let mut arm_stream_bytes = 0u64;
    for s in &p.segments {
        for gi in super::group_infos(&s.body.groups, &s.body.tensor_bits[..n_synth]) {
            match groups.iter_mut().find(|g| g.bits == gi.bits) {
                Some(g) => {
                    g.bytes += gi.bytes;
                    g.tensors += gi.tensors;
                }
                None => groups.push(gi),
            }
        }
        latent_stream_bytes += s.body.latent_stream.len() as u64;
        let arm_bytes = s.body.arm.as_ref().map_or(0, |(_, st)| st.len() as u64);
        arm_stream_bytes += arm_bytes;
        let pred = s.body.predictor.as_ref().map_or(0, |v| v.len());
        predicted += u64::from(pred > 0);
        let payload: u64 = s
            .body
            .groups
            .iter()
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>()
            + s.body.latent_stream.len() as u64
            + arm_bytes;
        side += s.bytes - payload;
    }
    groups.sort_by_key(|g| g.bits);
    let first = p.segments.first();
    let samples = p.audio.frames.saturating_mul(u64::from(p.audio.channels));
    let duration_s = p.audio.duration_s();
    let payload_bytes: u64 =
        groups.iter().map(|g| g.bytes).sum::<u64>() + latent_stream_bytes + arm_stream_bytes;
    let levels = usize::from(p.arch.coord_dims);
    // The first ARM-coded segment's ARM, with the ARM streams of all segments.
    let arm = p
        .segments
        .iter()
        .find_map(|s| s.body.arm.as_ref())
        .map(|(h, _)| super::ArmInfo {
            stream_bytes: arm_stream_bytes,
            ..arm_info(h, &[], levels)
        });
    let synth_params = p.arch.num_params_u64();
    let n = p.segments.len() as u64;
    Ok(FileInfo {
        version: VERSION_GRID,
        flags: FLAG_GRID,
        base_id: None,
        modality: "audio",
        width: 0,
        height: 0,
        channels: p.arch.out_channels,
        arch: p.arch,
        num_params: synth_params * n + p.latents,
        bits: p.bits,
        coder: CODER_ADAPTIVE,
        num_tensors: first.map_or(0, |s| s.body.steps.len()),
        steps: first.map_or_else(Vec::new, |s| s.body.steps.clone()),
        tensor_bits: first.map_or_else(Vec::new, |s| s.body.tensor_bits.clone()),
        header_bytes: (HEADER_BYTES + AUDIO_SECTION_BYTES) as u64,
        side_info_bytes: PAYLOAD_LEN_BYTES as u64 + side + p.padding,
        payload_bytes,
        groups,
        crc_bytes: CRC_BYTES as u64,
        total_bytes: total,
        bpp: 8.0 * total as f64 / samples.max(1) as f64,
        audio: Some(super::AudioInfo {
            header: p.audio,
            windows: n,
            duration_s,
            kbps: 8.0 * total as f64 / duration_s.max(f64::MIN_POSITIVE) / 1000.0,
        }),
        sparsity: None,
        codebooks: None,
        modulation: None,
        grid: Some(super::GridInfo {
            levels: p.arch.coord_dims,
            level_dims: grid_level_dims(p.audio.window_frames(0) as u32, 1, p.arch.coord_dims),
            latents: p.latents,
            synth_params,
            latent_stream_bytes,
            latent_contexts: GridContexts::Five.count() as u8,
            upsampling: super::Upsampling::Bilinear.name(),
            predictor: (predicted == n && n > 0)
                .then(|| first.and_then(|s| s.body.predictor.clone()))
                .flatten(),
            arm,
        }),
    })
}
