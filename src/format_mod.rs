//! Modulation-mode files (flag bit 2, format version 2, `codec-spec.md` §12): a shared
//! meta-learned base network (a version-2 `.inrb` modulation base, §10.3) and, per image, only
//! a grid of latent vectors. A child module of [`crate::format`] so it shares the reader, the
//! fixed header, the step validation, the payload groups and the payload/CRC tail of the image
//! container; nothing here imports the model.
//!
//! Layout (§12.1): fixed header (30 bytes, version 2, modality 1, flags exactly
//! `FLAG_BASE | FLAG_MODULATIONS`) | base reference (8 bytes) | modulation section (latent_dim
//! u8, cell u8) | channel step table (latent_dim entries of 4 bytes, §4.1) | payload length |
//! payload (one group per distinct channel bit width, ascending, channels in channel order) |
//! CRC32.

use super::audio::{AudioHeader, AudioInfo, MAX_AUDIO_SYMBOLS, MAX_AUDIO_WORK, MODALITY_AUDIO};
use super::{
    group_infos, read_fixed_header, read_payload_and_crc, validate_bits, validate_dims, Arch,
    FileInfo, FixedHeader, FormatError, Limits, QTensor, Step, BASE_REF_BYTES, CODER_ADAPTIVE,
    CRC_BYTES, FLAG_BASE, GROUP_LEN_BYTES, HEADER_BYTES, KNOWN_FLAGS, MAGIC, MODALITY_IMAGE,
    OFF_FLAGS, OFF_MODALITY, OFF_VERSION, PAYLOAD_LEN_BYTES, STEP_BYTES,
};

/// §3.4 Flag bit 2 (version 2): modulation mode (§12). Only valid together with
/// [`FLAG_BASE`]: the file is a latent grid for a modulation base.
pub const FLAG_MODULATIONS: u16 = 1 << 2;
/// §12.1 The flags of every modulation file, exactly: base reference and modulations.
pub const MOD_FLAGS: u16 = FLAG_BASE | FLAG_MODULATIONS;
/// §12.1 The version of every modulation file.
pub const VERSION_MOD: u8 = 2;
/// §12.2 Size of the modulation section (latent_dim u8, cell u8).
pub const MOD_SECTION_BYTES: usize = 2;
/// §12.2 Smallest latent grid spacing in pixels.
pub const MIN_CELL: u8 = 2;

/// A complete modulation-mode file in memory (§12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInrFile {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The architecture of the base network (must equal the base's, §4.5).
    pub arch: Arch,
    /// Id of the modulation base (§10.2).
    pub base_id: u64,
    /// Latent channels per grid node, 1..=255.
    pub latent_dim: u8,
    /// Latent grid spacing in pixels, 2..=255.
    pub cell: u8,
    /// `latent_dim` entries; each has `grid_w * grid_h` symbols ([`mod_grid_dims`]), node
    /// `(gx, gy)` at index `gy * grid_w + gx`.
    pub channels: Vec<QTensor>,
}

/// A complete audio modulation file in memory (§12.7): a clip coded as one row of latent
/// nodes for an audio modulation base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioModInrFile {
    /// The clip (§11.2); its `window_len` is the latent spacing in frames and MUST equal the
    /// base's `cell` (2..=255).
    pub audio: AudioHeader,
    /// The architecture of the base network: `coord_dims` 1, `out_channels` = channels.
    pub arch: Arch,
    /// Id of the audio modulation base (§10.3, modality 2).
    pub base_id: u64,
    /// Latent channels per node, 1..=255.
    pub latent_dim: u8,
    /// `latent_dim` entries of `ceil(frames / cell) + 1` symbols each, node order.
    pub channels: Vec<QTensor>,
}

impl AudioModInrFile {
    /// Latent spacing in frames (the audio section's `window_len`).
    pub fn cell(&self) -> u8 {
        u8::try_from(self.audio.window_len).unwrap_or(0)
    }
}

/// Modulation summary for `inspect` (§12).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModInfo {
    pub latent_dim: u8,
    pub cell: u8,
    pub grid_w: u32,
    pub grid_h: u32,
    /// `latent_dim * grid_w * grid_h`: the number of coded symbols.
    pub latents: u64,
}

/// §12.2 Latent grid size: `(ceil(width / cell) + 1, ceil(height / cell) + 1)`. A `cell` of 0
/// is treated as 1 (never valid in a file); the result saturates instead of overflowing.
pub fn mod_grid_dims(width: u32, height: u32, cell: u8) -> (u32, u32) {
    let c = u32::from(cell.max(1));
    (
        width.div_ceil(c).saturating_add(1),
        height.div_ceil(c).saturating_add(1),
    )
}

/// True when `bytes` start like a modulation-mode file: magic, version 2, modality 1 (image)
/// and flag bit 2 set. Nothing else is validated; use it to choose between
/// [`read_mod_file`] and [`super::read_file`].
pub fn is_modulation_file(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&MAGIC[..])
        && bytes.get(OFF_VERSION) == Some(&VERSION_MOD)
        && bytes.get(OFF_MODALITY) == Some(&MODALITY_IMAGE)
        && bytes
            .get(OFF_FLAGS..OFF_FLAGS + 2)
            .is_some_and(|f| u16::from_le_bytes([f[0], f[1]]) & FLAG_MODULATIONS != 0)
}

/// True when `bytes` start like an audio modulation file (§12.7): magic, version 2,
/// modality 2 and flag bit 2 set. Nothing else is validated.
pub fn is_audio_modulation_file(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&MAGIC[..])
        && bytes.get(OFF_VERSION) == Some(&VERSION_MOD)
        && bytes.get(OFF_MODALITY) == Some(&MODALITY_AUDIO)
        && bytes
            .get(OFF_FLAGS..OFF_FLAGS + 2)
            .is_some_and(|f| u16::from_le_bytes([f[0], f[1]]) & FLAG_MODULATIONS != 0)
}

/// §12.7 The clip, architecture and modulation fields of an audio modulation file against
/// `limits`. Returns the node count.
fn validate_audio_mod_fields(
    audio: &AudioHeader,
    arch: &Arch,
    latent_dim: u8,
    cell: u8,
    limits: &Limits,
) -> Result<u64, FormatError> {
    audio.validate()?;
    super::audio::check_audio_net(arch, audio, limits)?;
    validate_latent_fields(latent_dim, cell)?;
    if audio.window_len != u32::from(cell) {
        return Err(FormatError::InvalidField {
            field: "window length",
            value: audio.window_len.into(),
            expected: "the modulation section's cell in an audio modulation file",
        });
    }
    // frames <= 2^32 - 1 (validated), so neither product overflows.
    let nodes = audio.frames.div_ceil(u64::from(cell)) + 1;
    // The coded-symbol bound of windowed audio (§11.5): 128 MiB of symbols at most.
    let latents = nodes * u64::from(latent_dim);
    if latents > MAX_AUDIO_SYMBOLS {
        return Err(FormatError::LimitExceeded {
            what: "latent count (latent_dim x nodes)",
            value: latents,
            limit: MAX_AUDIO_SYMBOLS,
        });
    }
    let work = audio
        .frames
        .saturating_mul(mod_render_params(arch, latent_dim));
    if work > MAX_AUDIO_WORK {
        return Err(FormatError::LimitExceeded {
            what: "decode work (frames x parameters per frame)",
            value: work,
            limit: MAX_AUDIO_WORK,
        });
    }
    Ok(nodes)
}

/// §12.2: latent_dim >= 1, cell >= 2.
fn validate_latent_fields(latent_dim: u8, cell: u8) -> Result<(), FormatError> {
    if latent_dim == 0 {
        return Err(FormatError::InvalidField {
            field: "latent_dim",
            value: 0,
            expected: "1..=255",
        });
    }
    if cell < MIN_CELL {
        return Err(FormatError::InvalidField {
            field: "cell",
            value: cell.into(),
            expected: "2..=255 pixels or frames",
        });
    }
    Ok(())
}

/// §12.2, §12.5: image size, architecture, modulation fields, latent count and rendering
/// work against `limits`. Returns the grid size.
fn validate_mod_fields(
    width: u32,
    height: u32,
    arch: &Arch,
    latent_dim: u8,
    cell: u8,
    limits: &Limits,
) -> Result<(u32, u32), FormatError> {
    validate_dims(width, height, limits)?;
    arch.validate(limits)?;
    validate_latent_fields(latent_dim, cell)?;
    let (gw, gh) = mod_grid_dims(width, height, cell);
    // <= 255 * 2^32 * 2^32 would overflow: saturate (anything that large exceeds the limit).
    let latents = u64::from(latent_dim)
        .saturating_mul(u64::from(gw))
        .saturating_mul(u64::from(gh));
    if latents > limits.max_params {
        return Err(FormatError::LimitExceeded {
            what: "latent count (latent_dim x grid_w x grid_h)",
            value: latents,
            limit: limits.max_params,
        });
    }
    limits.check_render(width, height, mod_render_params(arch, latent_dim))?;
    Ok((gw, gh))
}

/// §12.5 Parameters per rendered pixel: the network's plus the latent-to-shift map's
/// (`latent_dim * depth * width`).
fn mod_render_params(arch: &Arch, latent_dim: u8) -> u64 {
    // num_params_u64 < 2^41, the map < 2^30: no overflow.
    arch.num_params_u64() + u64::from(latent_dim) * u64::from(arch.depth) * u64::from(arch.width)
}

/// Serialises a modulation file (§12), validating it first with [`Limits::default`].
///
/// # Errors
/// [`FormatError::InvalidField`] / [`FormatError::LimitExceeded`] for values a default decoder
/// would reject (including a channel `bits` outside 2..=16), [`FormatError::TensorCount`] when
/// there are not `latent_dim` channels, [`FormatError::TensorLength`] when a channel does not
/// hold `grid_w * grid_h` symbols, [`FormatError::Entropy`] for a symbol outside its channel's
/// range (the error names the channel).
///
/// # Panics
/// Never.
pub fn write_mod_file(f: &ModInrFile) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    let (gw, gh) = validate_mod_fields(f.width, f.height, &f.arch, f.latent_dim, f.cell, &limits)?;
    let n = (u64::from(gw) * u64::from(gh)) as usize; // <= max_params after validation
    let head = |out: &mut Vec<u8>, bits: u8| {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION_MOD);
        out.push(MODALITY_IMAGE);
        out.extend_from_slice(&MOD_FLAGS.to_le_bytes());
        out.extend_from_slice(&f.width.to_le_bytes());
        out.extend_from_slice(&f.height.to_le_bytes());
        f.arch.write(out);
        out.push(bits);
        out.push(CODER_ADAPTIVE);
    };
    write_mod_body(
        head,
        f.base_id,
        f.latent_dim,
        f.cell,
        &f.channels,
        n,
        &limits,
    )
}

/// Serialises an audio modulation file (§12.7), validating it first with [`Limits::default`].
///
/// # Errors
/// As [`write_mod_file`]; the audio section is checked as §11.2 and its `window_len` must be
/// the cell.
///
/// # Panics
/// Never.
pub fn write_audio_mod_file(f: &AudioModInrFile) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    let cell = f.cell();
    let n = validate_audio_mod_fields(&f.audio, &f.arch, f.latent_dim, cell, &limits)? as usize;
    let head = |out: &mut Vec<u8>, bits: u8| {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION_MOD);
        out.push(MODALITY_AUDIO);
        out.extend_from_slice(&MOD_FLAGS.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        f.arch.write(out);
        out.push(bits);
        out.push(CODER_ADAPTIVE);
        f.audio.write(out);
    };
    write_mod_body(head, f.base_id, f.latent_dim, cell, &f.channels, n, &limits)
}

/// Writes `head` (everything before the base reference, given the header bit width), then
/// the base reference, modulation section, channel step table, payload and CRC of a
/// modulation file whose channels hold `n` symbols each.
fn write_mod_body(
    head: impl FnOnce(&mut Vec<u8>, u8),
    base_id: u64,
    latent_dim: u8,
    cell: u8,
    channels: &[QTensor],
    n: usize,
    limits: &Limits,
) -> Result<Vec<u8>, FormatError> {
    if channels.len() != usize::from(latent_dim) {
        return Err(FormatError::TensorCount {
            expected: latent_dim.into(),
            found: channels.len(),
        });
    }
    for (index, c) in channels.iter().enumerate() {
        c.step.validate()?;
        validate_bits("channel bits", c.bits)?;
        if c.symbols.len() != n {
            return Err(FormatError::TensorLength {
                index,
                expected: n,
                found: c.symbols.len(),
            });
        }
    }
    let channel_bits: Vec<u8> = channels.iter().map(|c| c.bits).collect();
    let bits = channel_bits.iter().copied().max().unwrap_or(0);
    let refs: Vec<&QTensor> = channels.iter().collect();
    let payload = super::write_groups(&refs, limits)?;
    super::check_section("payload", payload.len() as u64, limits)?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| FormatError::PayloadTooLarge {
        len: payload.len() as u64,
    })?;
    let mut out = Vec::with_capacity(
        HEADER_BYTES
            + super::AUDIO_SECTION_BYTES
            + BASE_REF_BYTES
            + MOD_SECTION_BYTES
            + STEP_BYTES * channels.len()
            + PAYLOAD_LEN_BYTES
            + payload.len()
            + CRC_BYTES,
    );
    head(&mut out, bits);
    out.extend_from_slice(&base_id.to_le_bytes());
    out.push(latent_dim);
    out.push(cell);
    for c in channels {
        out.extend_from_slice(&c.step.mantissa.to_le_bytes());
        out.push(c.step.exponent);
        out.push(c.bits);
    }
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    super::finish_file(out, limits)
}

/// A structurally parsed modulation file (CRC verified, all fields validated), payload not
/// decoded.
struct ParsedMod<'a> {
    /// The audio section of an audio modulation file (§12.7), `None` for an image.
    audio: Option<AudioHeader>,
    width: u32,
    height: u32,
    arch: Arch,
    bits: u8,
    base_id: u64,
    latent_dim: u8,
    cell: u8,
    grid: (u32, u32),
    steps: Vec<Step>,
    channel_bits: Vec<u8>,
    /// `(bits, entropy-coded bytes)` per distinct bit width, ascending.
    groups: Vec<(u8, &'a [u8])>,
}

/// §12.5 Decoder steps 1–5 for a modulation file.
fn parse_mod<'a>(bytes: &'a [u8], limits: &Limits) -> Result<ParsedMod<'a>, FormatError> {
    let (mut r, version) = super::read_prelude(bytes, limits)?;
    let FixedHeader {
        modality,
        flags,
        width,
        height,
        arch,
        bits,
        coder,
    } = read_fixed_header(&mut r)?;
    // The layout depends on version, modality and flags: check them before the structure.
    if version != VERSION_MOD {
        return Err(FormatError::InvalidField {
            field: "version",
            value: version.into(),
            expected: "2 (modulation files); a version-1 file is a plain image file: \
                       read it with the image reader (format::read_file)",
        });
    }
    if modality != MODALITY_IMAGE && modality != MODALITY_AUDIO {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: modality.into(),
            expected: "1 (image) or 2 (audio)",
        });
    }
    let known = KNOWN_FLAGS | FLAG_MODULATIONS;
    if flags & !known != 0 {
        return Err(FormatError::UnknownFlags {
            flags,
            known,
            version,
        });
    }
    if flags & FLAG_MODULATIONS == 0 && modality == MODALITY_AUDIO {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: modality.into(),
            expected: "1 (image), or 2 with flag bit 2; this is a windowed audio file: read it \
                       with the audio reader (format::read_audio_file)",
        });
    }
    if flags & FLAG_MODULATIONS == 0 {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "0x0005 (base reference + modulations); without flag bit 2 this is a \
                       plain image file: read it with the image reader (format::read_file)",
        });
    }
    if flags != MOD_FLAGS {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "exactly 0x0005 (base reference + modulations) in a modulation file",
        });
    }
    let audio = if modality == MODALITY_AUDIO {
        Some(AudioHeader::read(&mut r)?)
    } else {
        None
    };
    let base_id = u64::from_le_bytes(r.array::<BASE_REF_BYTES>("base reference")?);
    let latent_dim = r.u8("modulation section")?;
    let cell = r.u8("modulation section")?;
    // <= 255 entries of 4 bytes: bounded by the u8, checked against the bytes present.
    let step_bytes = r.take(usize::from(latent_dim) * STEP_BYTES, "channel step table")?;
    let payload = read_payload_and_crc(&mut r, bytes)?;
    // Semantics (a hostile file can carry a valid CRC, so everything is checked).
    let grid = match &audio {
        None => validate_mod_fields(width, height, &arch, latent_dim, cell, limits)?,
        Some(a) => {
            if width != 0 || height != 0 {
                return Err(FormatError::InvalidField {
                    field: "width/height",
                    value: u64::from(width.max(height)),
                    expected: "0 for audio (the audio section gives the sizes)",
                });
            }
            let nodes = validate_audio_mod_fields(a, &arch, latent_dim, cell, limits)?;
            // nodes * latent_dim <= 2^25 (validated).
            (nodes as u32, 1)
        }
    };
    let (steps, channel_bits) = super::validate_coding(
        bits,
        coder,
        payload.len(),
        step_bytes,
        "channel bits",
        limits,
    )?;
    let groups = super::split_groups(payload, &channel_bits, limits)?;
    Ok(ParsedMod {
        audio,
        width,
        height,
        arch,
        bits,
        base_id,
        latent_dim,
        cell,
        grid,
        steps,
        channel_bits,
        groups,
    })
}

/// Parses and entropy-decodes a modulation file (§12.5).
///
/// # Errors
/// Every malformed, truncated, damaged or over-limit input gives a [`FormatError`]; a plain
/// image file or an audio file is refused with an [`FormatError::InvalidField`] that names the
/// right reader.
///
/// # Panics
/// Never, for any input.
pub fn read_mod_file(bytes: &[u8], limits: &Limits) -> Result<ModInrFile, FormatError> {
    let p = parse_mod(bytes, limits)?;
    if p.audio.is_some() {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: MODALITY_AUDIO.into(),
            expected: "1 (image); this is an audio modulation file: read it with \
                       format::read_audio_mod_file",
        });
    }
    let channels = decode_channels(&p)?;
    Ok(ModInrFile {
        width: p.width,
        height: p.height,
        arch: p.arch,
        base_id: p.base_id,
        latent_dim: p.latent_dim,
        cell: p.cell,
        channels,
    })
}

/// Parses and entropy-decodes an audio modulation file (§12.7).
///
/// # Errors
/// As [`read_mod_file`]; an image modulation file is refused with an
/// [`FormatError::InvalidField`] that names the right reader.
///
/// # Panics
/// Never, for any input.
pub fn read_audio_mod_file(bytes: &[u8], limits: &Limits) -> Result<AudioModInrFile, FormatError> {
    let p = parse_mod(bytes, limits)?;
    let Some(audio) = p.audio else {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: MODALITY_IMAGE.into(),
            expected: "2 (audio); this is an image modulation file: read it with \
                       format::read_mod_file",
        });
    };
    let channels = decode_channels(&p)?;
    Ok(AudioModInrFile {
        audio,
        arch: p.arch,
        base_id: p.base_id,
        latent_dim: p.latent_dim,
        channels,
    })
}

/// §12.5 step 6: the channels of a parsed file.
fn decode_channels(p: &ParsedMod<'_>) -> Result<Vec<QTensor>, FormatError> {
    // grid_w * grid_h * latent_dim <= limits.max_params (validated in `parse_mod`).
    let n = (u64::from(p.grid.0) * u64::from(p.grid.1)) as usize;
    let lens = vec![n; p.channel_bits.len()];
    let symbols = super::decode_groups(&p.groups, &p.channel_bits, &lens)?;
    let channels = p
        .steps
        .iter()
        .copied()
        .zip(p.channel_bits.iter().copied())
        .zip(symbols)
        .map(|((step, bits), symbols)| QTensor {
            step,
            bits,
            symbols,
        })
        .collect();
    let _ = p.bits; // validated: equals the largest channel bit width
    Ok(channels)
}

/// Header and section sizes of a modulation file without entropy decoding (§12.5 steps 1–5).
pub(super) fn inspect_mod(bytes: &[u8], limits: &Limits) -> Result<FileInfo, FormatError> {
    let p = parse_mod(bytes, limits)?;
    let total = bytes.len() as u64;
    let num_tensors = p.steps.len();
    let groups = group_infos(&p.groups, &p.channel_bits);
    let payload_bytes: u64 = groups.iter().map(|g| g.bytes).sum();
    let (grid_w, grid_h) = p.grid;
    let latents = u64::from(p.latent_dim) * u64::from(grid_w) * u64::from(grid_h);
    // Bits per pixel, or per coded sample for audio (§11.6).
    let (pixels, audio_section, audio) = match &p.audio {
        None => (u64::from(p.width) * u64::from(p.height), 0, None),
        Some(a) => {
            let d = a.duration_s();
            (
                a.frames * u64::from(a.channels),
                super::AUDIO_SECTION_BYTES,
                Some(AudioInfo {
                    header: *a,
                    windows: u64::from(grid_w),
                    duration_s: d,
                    kbps: 8.0 * total as f64 / d.max(1e-12) / 1000.0,
                }),
            )
        }
    };
    Ok(FileInfo {
        version: VERSION_MOD,
        flags: MOD_FLAGS,
        base_id: Some(format!("{:016x}", p.base_id)),
        modality: if p.audio.is_some() { "audio" } else { "image" },
        width: p.width,
        height: p.height,
        channels: p.arch.out_channels,
        arch: p.arch,
        num_params: latents,
        bits: p.bits,
        coder: CODER_ADAPTIVE,
        num_tensors,
        steps: p.steps,
        tensor_bits: p.channel_bits,
        header_bytes: (HEADER_BYTES + audio_section) as u64,
        side_info_bytes: (BASE_REF_BYTES
            + MOD_SECTION_BYTES
            + STEP_BYTES * num_tensors
            + PAYLOAD_LEN_BYTES
            + GROUP_LEN_BYTES * groups.len()) as u64,
        payload_bytes,
        groups,
        crc_bytes: CRC_BYTES as u64,
        total_bytes: total,
        bpp: 8.0 * total as f64 / pixels.max(1) as f64,
        audio,
        sparsity: None,
        codebooks: None,
        modulation: Some(ModInfo {
            latent_dim: p.latent_dim,
            cell: p.cell,
            grid_w,
            grid_h,
            latents,
        }),
        grid: None,
    })
}
